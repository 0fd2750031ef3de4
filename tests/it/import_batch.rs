//! The batched import planner (`Planner::add_many`, which prefetches ids
//! and streams with `find_events` / `read_streams`) plans exactly what the
//! one-line-at-a-time planner (`Planner::add`) plans: the same requests and
//! counts, or the same first error, for random line sequences with
//! duplicate ids within the import and ids already stored.

use std::collections::HashSet;
use std::sync::Arc;

use casebook_engine::envelope::StreamId;
use casebook_engine::import::{parse_line, ImportLine, Planner};
use casebook_engine::store::{EventStore, ExpectedVersion};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const SCHOOL: &str = "test-school";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

/// One generated line: which pupil, what kind of event, a variant of its
/// content, and how its id is chosen.
#[derive(Clone, Debug)]
struct Op {
    pupil: u8,
    kind: u8,
    variant: u8,
    id: IdChoice,
}

#[derive(Clone, Debug)]
enum IdChoice {
    /// No id: the planner makes one.
    None,
    /// A fresh id.
    Fresh,
    /// Repeats an earlier line of this import exactly (a duplicate, skipped).
    RepeatLine(usize),
    /// An earlier line's id with this line's content (refused unless equal).
    ReuseId(usize),
    /// Repeats a stored line exactly (skipped).
    RepeatStored(usize),
    /// A stored line's id with this line's content (refused unless equal).
    ReuseStored(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let id = prop_oneof![
        2 => Just(IdChoice::None),
        4 => Just(IdChoice::Fresh),
        1 => any::<usize>().prop_map(IdChoice::RepeatLine),
        1 => any::<usize>().prop_map(IdChoice::ReuseId),
        1 => any::<usize>().prop_map(IdChoice::RepeatStored),
        1 => any::<usize>().prop_map(IdChoice::ReuseStored),
    ];
    (0u8..5, 0u8..4, 0u8..6, id).prop_map(|(pupil, kind, variant, id)| Op {
        pupil,
        kind,
        variant,
        id,
    })
}

/// The JSON of an import line (without id).
fn content(pupil: u8, kind: u8, variant: u8) -> Value {
    let pupil = format!("P{pupil:04}");
    let (t, at, data) = match kind {
        0 => (
            "PupilRegistered",
            "2025-09-03T08:30:00Z".to_string(),
            json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": format!("9{variant}"), "site": "Main"}),
        ),
        1 => (
            "ParentContacted",
            format!("2025-10-0{}T09:00:00Z", 1 + variant % 5),
            json!({"method": "phone", "summary": format!("call {variant}")}),
        ),
        // A session can be marked once: repeats are refused.
        2 => (
            "AttendanceMarked",
            format!("2025-11-0{}T08:45:00Z", 3 + variant % 3),
            json!({"date": format!("2025-11-0{}", 3 + variant % 3), "session": "am", "code": "/"}),
        ),
        // 20 days each: the third in a year passes the 45-day limit.
        _ => (
            "SuspensionIssued",
            format!("2025-12-0{}T10:00:00Z", 1 + variant % 5),
            json!({"days": 20.0 + f64::from(variant % 2) / 2.0, "reason_code": "PD", "start_date": format!("2025-12-0{}", 1 + variant % 5)}),
        ),
    };
    json!({"type": t, "pupil": pupil, "occurred_at": at, "actor": "S017", "data": data})
}

fn with_id(mut line: Value, id: Option<Uuid>) -> Value {
    if let Some(id) = id {
        line["id"] = json!(id);
    }
    line
}

/// The stored prefix: pupils 0 and 1 registered, a contact for pupil 0.
fn stored_lines() -> Vec<Value> {
    vec![
        with_id(content(0, 0, 0), Some(Uuid::from_u128(1))),
        with_id(content(1, 0, 1), Some(Uuid::from_u128(2))),
        with_id(content(0, 1, 2), Some(Uuid::from_u128(3))),
    ]
}

/// The import's lines from the ops.
fn lines(ops: &[Op]) -> Vec<ImportLine> {
    let stored = stored_lines();
    let mut out: Vec<Value> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        let own = content(o.pupil, o.kind, o.variant);
        let fresh = Uuid::from_u128(1_000 + i as u128);
        let line = match o.id {
            IdChoice::None => own,
            IdChoice::Fresh => with_id(own, Some(fresh)),
            IdChoice::RepeatLine(j) if i > 0 => out[j % i].clone(),
            IdChoice::ReuseId(j) if i > 0 => {
                let id = out[j % i]["id"]
                    .as_str()
                    .map(|s| Uuid::parse_str(s).unwrap());
                with_id(own, id.or(Some(fresh)))
            }
            IdChoice::RepeatLine(_) | IdChoice::ReuseId(_) => with_id(own, Some(fresh)),
            IdChoice::RepeatStored(j) => stored[j % stored.len()].clone(),
            IdChoice::ReuseStored(j) => {
                let id = stored[j % stored.len()]["id"].as_str().unwrap();
                with_id(own, Some(Uuid::parse_str(id).unwrap()))
            }
        };
        out.push(line);
    }
    out.iter()
        .enumerate()
        .map(|(i, l)| parse_line(i + 1, &l.to_string()).expect("generated lines parse"))
        .collect()
}

/// A plan with the planner-made ids blanked (they are fresh UUIDs each run).
type Normal = (
    Vec<(
        StreamId,
        ExpectedVersion,
        Vec<(Option<Uuid>, String, Vec<u8>)>,
    )>,
    usize,
    usize,
);

fn normalize(plan: casebook_engine::import::ImportPlan, line_ids: &HashSet<Uuid>) -> Normal {
    let requests = plan
        .requests
        .into_iter()
        .map(|r| {
            let events = r
                .events
                .into_iter()
                .map(|e| {
                    let id = line_ids.contains(&e.event_id).then_some(e.event_id);
                    (
                        id,
                        format!("{} {} {}", e.event_type, e.actor, e.occurred_at),
                        e.payload,
                    )
                })
                .collect();
            (r.stream, r.expected, events)
        })
        .collect();
    (requests, plan.events, plan.duplicates)
}

async fn one_by_one(log: &dyn EventStore, lines: Vec<ImportLine>) -> Result<Normal, String> {
    let ids: HashSet<Uuid> = lines.iter().filter_map(|l| l.id).collect();
    let mut planner = Planner::new(log, SCHOOL, now());
    for l in lines {
        planner.add(l).await.map_err(|e| e.to_string())?;
    }
    Ok(normalize(planner.finish(), &ids))
}

async fn batched(
    log: &dyn EventStore,
    lines: Vec<ImportLine>,
    cuts: &[usize],
) -> Result<Normal, String> {
    let ids: HashSet<Uuid> = lines.iter().filter_map(|l| l.id).collect();
    let mut planner = Planner::new(log, SCHOOL, now());
    // Successive add_many calls: each is its own prefetch batch, so the
    // batches' seams fall at random lines.
    let mut rest = lines;
    for cut in cuts {
        let at = (*cut).min(rest.len());
        let tail = rest.split_off(at);
        planner.add_many(rest).await.map_err(|e| e.to_string())?;
        rest = tail;
    }
    planner.add_many(rest).await.map_err(|e| e.to_string())?;
    Ok(normalize(planner.finish(), &ids))
}

fn store_with_prefix(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Arc<dyn EventStore> {
    rt.block_on(async {
        let store = casebook_engine::store::sled::SledStore::open(dir, true).expect("open store");
        let log: Arc<dyn EventStore> = store.log(SCHOOL).expect("open log");
        let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
        for (i, l) in stored_lines().iter().enumerate() {
            planner
                .add(parse_line(i + 1, &l.to_string()).unwrap())
                .await
                .expect("valid prefix");
        }
        log.append_atomic(planner.finish().requests)
            .await
            .expect("append prefix");
        log
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batched_planner_plans_exactly_as_one_line_at_a_time(
        ops in proptest::collection::vec(op(), 0..40),
        cuts in proptest::collection::vec(0usize..12, 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = store_with_prefix(dir.path(), &rt);
        let single = rt.block_on(one_by_one(log.as_ref(), lines(&ops)));
        let batch = rt.block_on(batched(log.as_ref(), lines(&ops), &cuts));
        prop_assert_eq!(&single, &batch);
    }
}

/// The generator reaches every outcome the property is about (so the
/// property cannot pass by only ever seeing one kind of sequence).
#[test]
fn the_generated_sequences_cover_skips_refusals_and_plans() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = store_with_prefix(dir.path(), &rt);
    let o = |pupil, kind, variant, id| Op {
        pupil,
        kind,
        variant,
        id,
    };
    /// The lines, and (events, duplicates) or a part of the error.
    type Case = (Vec<Op>, Result<(usize, usize), &'static str>);
    let cases: Vec<Case> = vec![
        // A stored line repeated, an import line repeated: both skipped.
        (
            vec![
                o(2, 0, 0, IdChoice::Fresh),
                o(0, 0, 0, IdChoice::RepeatStored(0)),
                o(2, 1, 0, IdChoice::Fresh),
                o(0, 0, 0, IdChoice::RepeatLine(1)),
                o(0, 1, 4, IdChoice::None),
            ],
            Ok((3, 2)),
        ),
        // A stored id with other content.
        (
            vec![o(0, 1, 1, IdChoice::ReuseStored(2))],
            Err("is already stored (position 2) with different content"),
        ),
        // An import id with other content.
        (
            vec![
                o(2, 0, 0, IdChoice::Fresh),
                o(2, 1, 0, IdChoice::ReuseId(0)),
            ],
            Err("line 2: field id:"),
        ),
        // A pupil neither stored nor registered in the file.
        (
            vec![o(3, 1, 0, IdChoice::Fresh)],
            Err("line 1: field pupil:"),
        ),
        // Registered in the store: registering again is refused.
        (vec![o(1, 0, 3, IdChoice::Fresh)], Err("line 1:")),
    ];
    for (ops, want) in cases {
        let single = rt.block_on(one_by_one(log.as_ref(), lines(&ops)));
        let batch = rt.block_on(batched(log.as_ref(), lines(&ops), &[]));
        assert_eq!(single, batch, "{ops:?}");
        match (want, single) {
            (Ok((events, duplicates)), Ok(plan)) => {
                assert_eq!((plan.1, plan.2), (events, duplicates), "{ops:?}")
            }
            (Err(text), Err(e)) => assert!(e.contains(text), "{ops:?}: {e}"),
            (want, got) => panic!("{ops:?}: wanted {want:?}, got {got:?}"),
        }
    }
}
