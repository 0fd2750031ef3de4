//! The timeline's read path (issue 4): `Guarded::read_pupil_events` (each
//! payload decoded once, register marks by the direct reader) folded by
//! `Chronology::build_owned`, on sled and on the segment log, and sled's
//! `read_stream` (runs of consecutive positions read with one range scan),
//! checked against the straightforward path on random logs: the stored
//! events of each stream read by position from `read_all`, and
//! `Guarded::read_pupil` + `RecordedEvent::from_stored` +
//! `Chronology::build` + `serde_json::to_value`, for every role; and the
//! JSON text `Timeline::write_json_pretty` writes against
//! `serde_json::to_string_pretty` of that value.

use std::sync::Arc;

use casebook_engine::access::{staff_registered, Actor, Guarded, Role, View};
use casebook_engine::envelope::{NewEvent, StreamId};
use casebook_engine::event::CaseEvent;
use casebook_engine::store::segment::SegmentStore;
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::{
    read_whole_stream, visit_whole_stream, AppendRequest, EventStore, ExpectedVersion,
    StreamVisitor,
};
use casebook_engine::upcast::decode_payload;
use casebook_engine::{EventRef, RecordedEvent, StoreError, StoredEvent};
use casebook_projections::chronology::{Chronology, Timeline};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const SCHOOL: &str = "default";
const PUPILS: &[&str] = &["P1", "P2", "P3"];

/// One step of a random log: `count` events of one kind for one pupil,
/// appended together (consecutive positions) or one by one.
#[derive(Clone, Debug)]
struct Step {
    pupil: usize,
    kind: u8,
    count: usize,
    together: bool,
    /// Which earlier entry of the pupil a correction names.
    target: usize,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..PUPILS.len(),
        0u8..8,
        1usize..5,
        any::<bool>(),
        0usize..64,
    )
        .prop_map(|(pupil, kind, count, together, target)| Step {
            pupil,
            kind,
            count,
            together,
            target,
        })
}

/// Register codes: known ones, an unknown one, ones JSON escapes.
const CODES: &[&str] = &["/", "\\", "N", "Y3", "Q\"9", "é"];

fn event(t: &str, data: Value, occurred: DateTime<Utc>, actor: &str) -> NewEvent {
    let e = CaseEvent::from_type_and_data(t, data).unwrap_or_else(|e| panic!("{t}: {e}"));
    NewEvent::new(&e, occurred, actor).unwrap()
}

/// The `n`-th event of a step (ids of the pupil's earlier entries in
/// `earlier`).
fn step_event(s: &Step, n: usize, earlier: &[Uuid], occurred: DateTime<Utc>) -> NewEvent {
    let day = occurred.date_naive();
    match s.kind {
        0 => event(
            "IncidentRecorded",
            json!({"category": "disruption", "severity": 1 + (n % 3), "location": "classroom", "description": format!("Talking {n}")}),
            occurred,
            "TEA1",
        ),
        1 => event(
            "ConcernRaised",
            json!({"category": "neglect", "summary": format!("Arrives hungry {n}")}),
            occurred,
            "DSL1",
        ),
        2 => event(
            "AttendanceMarked",
            json!({"date": day, "session": if n.is_multiple_of(2) { "am" } else { "pm" }, "code": CODES[(s.target + n) % CODES.len()]}),
            occurred,
            "TEA1",
        ),
        3 => event(
            "KeyworkerAssigned",
            json!({"staff": if n.is_multiple_of(2) { "TEA2" } else { "DSL1" }}),
            occurred,
            "DSL1",
        ),
        4 if !earlier.is_empty() => {
            let target = earlier[(s.target + n) % earlier.len()];
            // Fields of several types: applied where the target has them,
            // listed as not applied where it does not.
            let changes = match n % 3 {
                0 => json!({"summary": format!("Corrected {n}")}),
                1 => json!({"severity": 3}),
                _ => json!({"staff": "TEA2"}),
            };
            event(
                "EntryCorrected",
                json!({"event": target, "changes": changes, "reason": "typo"}),
                occurred,
                "DSL1",
            )
        }
        7 => {
            // A payload that does not decode: withheld from those who may
            // not read everything, an error for those who may.
            let mut bad = event(
                "ParentContacted",
                json!({"method": "phone", "summary": format!("Call {n}")}),
                occurred,
                "TEA1",
            );
            bad.payload = vec![0xc1, 0xff, 0x00];
            bad
        }
        5 => event(
            "SafeguardingDecisionMade",
            json!({"decision": "monitor", "rationale": format!("Review {n}")}),
            occurred,
            "DSL1",
        ),
        _ => event(
            "RecordViewed",
            json!({"pupil": "P1", "view": "timeline"}),
            occurred,
            "TEA1",
        ),
    }
}

/// What `visit_stream` hands over, owned.
struct Collect(Vec<StoredEvent>);

impl StreamVisitor for Collect {
    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError> {
        self.0.push(event.to_stored());
        Ok(())
    }
}

/// Writes a random log: every pupil registered, then the steps.
async fn write_log(log: &Arc<dyn EventStore>, steps: &[Step]) {
    let start: DateTime<Utc> = "2025-09-01T08:00:00Z".parse().unwrap();
    let mut earlier: Vec<Vec<Uuid>> = vec![Vec::new(); PUPILS.len()];
    for (i, pupil) in PUPILS.iter().enumerate() {
        let e = event(
            "PupilRegistered",
            json!({"pupil": pupil, "name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}),
            start,
            "ADM1",
        );
        earlier[i].push(e.event_id);
        append(log, StreamId::for_pupil(SCHOOL, pupil), vec![e]).await;
    }
    for (k, s) in steps.iter().enumerate() {
        let pupil = PUPILS[s.pupil];
        // Occurrence times go back and forth, so the chronology's order
        // differs from the stream's.
        let occurred = start + Duration::hours(((k * 37) % 23) as i64 + k as i64);
        let stream = if s.kind == 6 {
            StreamId::for_access_log(SCHOOL, pupil)
        } else {
            StreamId::for_pupil(SCHOOL, pupil)
        };
        let events: Vec<NewEvent> = (0..s.count)
            .map(|n| step_event(s, n, &earlier[s.pupil], occurred))
            .collect();
        if s.kind != 6 {
            earlier[s.pupil].extend(events.iter().map(|e| e.event_id));
        }
        if s.together {
            append(log, stream, events).await;
        } else {
            for e in events {
                append(log, stream, vec![e]).await;
            }
        }
    }
}

async fn append(log: &Arc<dyn EventStore>, stream: StreamId, events: Vec<NewEvent>) {
    log.append(AppendRequest {
        stream,
        expected: ExpectedVersion::Any,
        events,
    })
    .await
    .unwrap();
}

/// A stream's events the slow way: the whole log by position, filtered.
async fn by_position(log: &dyn EventStore, stream: StreamId) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = log.read_all(from, 7).await.unwrap();
        if page.is_empty() {
            return out;
        }
        from = page.last().unwrap().position + 1;
        out.extend(page.into_iter().filter(|e| e.stream == stream));
    }
}

/// The staff directory: an admin, a DSL and two teachers (TEA2 the
/// keyworker of some pupils).
async fn staff(guarded: &mut Guarded, now: DateTime<Utc>) -> Vec<Actor> {
    let admin = crate::access::first_admin(guarded, SCHOOL, now).await;
    for (s, role) in [
        ("DSL1", Role::Dsl),
        ("TEA1", Role::Teacher),
        ("TEA2", Role::Teacher),
        ("AUD1", Role::Auditor),
    ] {
        guarded
            .change_directory(&admin, staff_registered(s, "Staff", &[role]), now)
            .await
            .unwrap();
    }
    ["ADM1", "DSL1", "TEA1", "TEA2", "AUD1"]
        .iter()
        .map(|s| guarded.directory().actor(Some(s), SCHOOL).unwrap())
        .collect()
}

async fn check(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(&dir.path().join("sled"), true).unwrap();
    check_log(sled.log(SCHOOL).unwrap(), &steps).await;
    // The default backend, whose reads (and the envelope decoding under
    // them) the timeline bench times.
    let segment = SegmentStore::open(&dir.path().join("segment"), true).unwrap();
    check_log(segment.log(SCHOOL).unwrap(), &steps).await;
}

async fn check_log(log: Arc<dyn EventStore>, steps: &[Step]) {
    write_log(&log, steps).await;
    let now = Utc::now();

    // sled's read_stream against the log read by position, whole and
    // from every version in small pages.
    for pupil in PUPILS {
        for stream in [
            StreamId::for_pupil(SCHOOL, pupil),
            StreamId::for_access_log(SCHOOL, pupil),
        ] {
            let expected = by_position(log.as_ref(), stream).await;
            assert_eq!(
                read_whole_stream(log.as_ref(), stream).await.unwrap(),
                expected
            );
            // The same events handed over borrowed (`visit_stream`).
            let mut whole = Collect(Vec::new());
            visit_whole_stream(log.as_ref(), stream, &mut whole)
                .await
                .unwrap();
            assert_eq!(whole.0, expected);
            for from in 1..=expected.len() as u64 + 1 {
                let mut visited = Collect(Vec::new());
                let n = log
                    .visit_stream(stream, from, 3, &mut visited)
                    .await
                    .unwrap();
                assert_eq!(n, visited.0.len());
                let page = log.read_stream(stream, from, 3).await.unwrap();
                assert_eq!(visited.0, page, "{pupil} visited from version {from}");
                let want: Vec<StoredEvent> = expected
                    .iter()
                    .skip(from as usize - 1)
                    .take(3)
                    .cloned()
                    .collect();
                assert_eq!(page, want, "{pupil} from version {from}");
            }
        }
    }

    // The timeline through the engine, for every role, against the
    // straightforward fold.
    let mut guarded = Guarded::open(log.clone(), SCHOOL).await.unwrap();
    let mut actors = vec![Actor::single_user("ADM1")];
    let single = actors.clone();
    for actor in &single {
        compare(&guarded, actor, now).await;
    }
    actors = staff(&mut guarded, now).await;
    for actor in &actors {
        compare(&guarded, actor, now).await;
    }
}

async fn compare(guarded: &Guarded, actor: &Actor, now: DateTime<Utc>) {
    let as_of_times: [Option<DateTime<Utc>>; 2] = [None, Some(now - Duration::days(1))];
    for pupil in PUPILS.iter().chain(&["NOBODY"]) {
        for safeguarding_only in [false, true] {
            for as_of in as_of_times {
                let fast = guarded
                    .read_pupil_events(actor, pupil, View::Timeline, None, now)
                    .await;
                let slow = guarded
                    .read_pupil(actor, pupil, View::Timeline, None, now)
                    .await;
                let (fast, slow) = match (fast, slow) {
                    (Ok(f), Ok(s)) => (f, s),
                    (Err(f), Err(s)) => {
                        assert_eq!(f.to_string(), s.to_string());
                        continue;
                    }
                    // A shown entry that does not decode: the error names it.
                    (Err(f), Ok(s)) => {
                        let bad = s
                            .case
                            .iter()
                            .find(|e| e.case_event().is_err())
                            .unwrap_or_else(|| panic!("{pupil}: {f}"));
                        assert!(
                            f.to_string()
                                .contains(&format!("position {}", bad.position)),
                            "{f}"
                        );
                        continue;
                    }
                    (f, s) => panic!("{pupil} as {}: {f:?} vs {s:?}", actor.staff),
                };
                assert_eq!(fast.withheld, slow.withheld);
                assert_eq!(fast.keyworker, slow.keyworker);
                let decoded: Vec<RecordedEvent> = slow
                    .case
                    .iter()
                    .map(|s| RecordedEvent::from_stored(s).unwrap())
                    .collect();
                assert_eq!(fast.case, decoded);
                // Each payload as serde decodes it (no direct reader).
                for (r, s) in decoded.iter().zip(&slow.case) {
                    let by_serde = decode_payload(&s.event_type, s.schema, &s.payload).unwrap();
                    assert_eq!(r.event, by_serde);
                }
                let want = serde_json::to_value(Chronology::build(
                    pupil,
                    &decoded,
                    as_of,
                    safeguarding_only,
                ))
                .unwrap();
                // The text `--format json` prints, written directly.
                let mut text = Vec::new();
                Timeline::build_owned(pupil, fast.case.clone(), as_of, safeguarding_only)
                    .write_json_pretty(&mut text);
                assert_eq!(
                    String::from_utf8(text).unwrap(),
                    serde_json::to_string_pretty(&want).unwrap(),
                    "{pupil} as {}",
                    actor.staff
                );
                let got = Chronology::build_owned(pupil, fast.case, as_of, safeguarding_only)
                    .into_json()
                    .unwrap();
                assert_eq!(got, want, "{pupil} as {}", actor.staff);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_timeline_read_path_equals_the_straightforward_one(
        steps in proptest::collection::vec(step(), 0..30)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(steps));
    }
}

/// A run of consecutive positions that has lost an event in the middle is
/// reported as an index pointing at a missing event, never skipped.
#[tokio::test]
async fn a_stream_is_read_whole_across_runs_and_single_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), true).unwrap();
    let log: Arc<dyn EventStore> = store.log(SCHOOL).unwrap();
    let steps = vec![
        Step {
            pupil: 0,
            kind: 0,
            count: 4,
            together: true,
            target: 0,
        },
        Step {
            pupil: 1,
            kind: 2,
            count: 1,
            together: true,
            target: 0,
        },
        Step {
            pupil: 0,
            kind: 1,
            count: 1,
            together: true,
            target: 0,
        },
        Step {
            pupil: 1,
            kind: 2,
            count: 2,
            together: false,
            target: 0,
        },
        Step {
            pupil: 0,
            kind: 4,
            count: 3,
            together: true,
            target: 1,
        },
    ];
    write_log(&log, &steps).await;
    let stream = StreamId::for_pupil(SCHOOL, "P1");
    let events = read_whole_stream(log.as_ref(), stream).await.unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 4, 5, 6, 7, 9, 12, 13, 14]);
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=9).collect::<Vec<_>>());
}

proptest! {
    /// The timeline's hand-written times are chrono's serde output, byte
    /// for byte: whole seconds, milli-, micro- and nanoseconds, leap
    /// seconds, and years chrono formats itself.
    #[test]
    fn timeline_times_are_written_as_chrono_writes_them(
        days in -800_000i64..3_700_000,
        second in 0u32..86_400,
        nanos in prop_oneof![
            Just(0u32),
            (0u32..1_000).prop_map(|m| m * 1_000_000),
            (0u32..1_000_000).prop_map(|u| u * 1_000),
            0u32..2_000_000_000,
        ],
    ) {
        let date = chrono::NaiveDate::from_num_days_from_ce_opt(days as i32).unwrap();
        // chrono accepts a leap second (nanos >= 1e9) only at second 59.
        let second = if nanos >= 1_000_000_000 { second - second % 60 + 59 } else { second };
        let Some(time) = chrono::NaiveTime::from_num_seconds_from_midnight_opt(second, nanos) else {
            return Ok(());
        };
        let t = DateTime::<Utc>::from_naive_utc_and_offset(date.and_time(time), Utc);
        prop_assert_eq!(
            casebook_projections::chronology::timestamp_json(t),
            serde_json::to_value(t).unwrap()
        );
    }
}

/// `casebook timeline --format json` of demo pupils (every event type the
/// demo writes, prose with quotes and accents, register marks) is the text
/// serde_json's pretty printer writes for the same document, with and
/// without the filters.
#[test]
fn the_json_the_timeline_prints_is_serde_jsons_pretty_text() {
    let cb = crate::cli::Casebook::new();
    cb.run(&["demo", "--pupils", "3"]).ok();
    for pupil in ["P00001", "P00002", "P00003"] {
        for extra in [
            &[][..],
            &["--safeguarding-only"][..],
            &["--no-register-marks"][..],
        ] {
            let mut args = vec!["timeline", pupil, "--format", "json"];
            args.extend_from_slice(extra);
            let run = cb.run(&args).ok();
            let doc = run.json();
            assert!(doc["entries"].is_array(), "{pupil} {extra:?}");
            assert_eq!(
                run.stdout,
                format!("{}\n", serde_json::to_string_pretty(&doc).unwrap()),
                "{pupil} {extra:?}"
            );
        }
    }
}
