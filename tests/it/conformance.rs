//! The storage conformance suite: the promises every `EventStore` backend
//! keeps, written once and run against each backend through a `Backend`
//! factory. A new backend adds one `conformance_suite!` line.

use std::sync::Arc;

use casebook_engine::envelope::{NewEvent, StreamId, GENESIS_HASH};
use casebook_engine::event::{CaseEvent, ParentContacted};
use casebook_engine::store::{self, AppendRequest, EventStore, ExpectedVersion};
use casebook_engine::StoreError;
use chrono::{TimeZone, Utc};

/// Opens a fresh, empty log for one test; `reopen` gives the same log after
/// the previous handle is dropped (a restart).
pub trait Backend {
    fn fresh() -> Self;
    fn open(&self) -> Arc<dyn EventStore>;
    /// False when the backend cannot run here (the reason is printed).
    fn available() -> bool {
        true
    }
}

pub struct SledBackend {
    dir: tempfile::TempDir,
}

impl Backend for SledBackend {
    fn fresh() -> Self {
        SledBackend {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn open(&self) -> Arc<dyn EventStore> {
        let store = casebook_engine::store::sled::SledStore::open(self.dir.path(), true)
            .expect("open store");
        store.log("test-school").expect("open log")
    }
}

pub struct SegmentBackend {
    dir: tempfile::TempDir,
}

impl Backend for SegmentBackend {
    fn fresh() -> Self {
        SegmentBackend {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn open(&self) -> Arc<dyn EventStore> {
        let store = casebook_engine::store::segment::SegmentStore::open(self.dir.path(), true)
            .expect("open store");
        store.log("test-school").expect("open log")
    }
}

/// A fresh database on a throwaway cluster (see `pg.rs`).
pub struct PgBackend {
    db: crate::pg::TestDb,
}

impl Backend for PgBackend {
    fn fresh() -> Self {
        PgBackend {
            db: crate::pg::test_db().expect("checked by available()"),
        }
    }
    fn open(&self) -> Arc<dyn EventStore> {
        let store = crate::pg::sync(casebook_engine::store::postgres::PostgresStore::connect(
            &self.db.url,
            true,
        ))
        .expect("connect");
        store.log("test-school").expect("open log")
    }
    fn available() -> bool {
        crate::pg::server_available()
    }
}

pub fn contact(n: u32) -> NewEvent {
    let event = CaseEvent::ParentContacted(ParentContacted {
        method: "phone".into(),
        summary: format!("call number {n}"),
    });
    let at =
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + chrono::Duration::minutes(n as i64);
    NewEvent::new(&event, at, "S017").expect("encode")
}

pub fn pupil(n: u32) -> StreamId {
    StreamId::for_pupil("test-school", &format!("P{n:04}"))
}

fn req(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream,
        expected,
        events,
    }
}

pub async fn append_assigns_gapless_positions_and_versions<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    let a = s
        .append(req(
            pupil(1),
            ExpectedVersion::NoStream,
            vec![contact(1), contact(2)],
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            a.first_position,
            a.last_position,
            a.first_version,
            a.last_version
        ),
        (1, 2, 1, 2)
    );
    let c = s
        .append(req(pupil(2), ExpectedVersion::Any, vec![contact(3)]))
        .await
        .unwrap();
    assert_eq!((c.first_position, c.first_version), (3, 1));
    let d = s
        .append(req(pupil(1), ExpectedVersion::Exact(2), vec![contact(4)]))
        .await
        .unwrap();
    assert_eq!((d.first_position, d.first_version), (4, 3));
    let all = s.read_all(1, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let one = s.read_stream(pupil(1), 1, 100).await.unwrap();
    assert_eq!(
        one.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(one[2].position, 4);
    assert_eq!(s.stream_version(pupil(1)).await.unwrap(), 3);
    assert_eq!(s.stream_version(pupil(9)).await.unwrap(), 0);
}

pub async fn wrong_expected_version_is_refused_and_writes_nothing<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    s.append(req(pupil(1), ExpectedVersion::NoStream, vec![contact(1)]))
        .await
        .unwrap();
    let err = s
        .append(req(pupil(1), ExpectedVersion::NoStream, vec![contact(2)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 1, .. }),
        "{err}"
    );
    let err = s
        .append(req(pupil(1), ExpectedVersion::Exact(5), vec![contact(3)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err}"
    );
    assert_eq!(s.head().await.unwrap().position, 1);
}

pub async fn atomic_append_is_all_or_nothing<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    s.append(req(pupil(1), ExpectedVersion::NoStream, vec![contact(1)]))
        .await
        .unwrap();
    let before = s.head().await.unwrap();
    // The second request's expectation fails: the first must not be written.
    let err = s
        .append_atomic(vec![
            req(pupil(2), ExpectedVersion::NoStream, vec![contact(2)]),
            req(pupil(1), ExpectedVersion::NoStream, vec![contact(3)]),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongExpectedVersion { .. }));
    assert_eq!(s.head().await.unwrap(), before);
    assert_eq!(s.stream_version(pupil(2)).await.unwrap(), 0);
}

pub async fn duplicate_event_id_is_refused<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    let e = contact(1);
    s.append(req(pupil(1), ExpectedVersion::Any, vec![e.clone()]))
        .await
        .unwrap();
    let err = s
        .append(req(pupil(2), ExpectedVersion::Any, vec![e.clone()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { position: 1, .. }),
        "{err}"
    );
    let err = s
        .append(req(
            pupil(3),
            ExpectedVersion::Any,
            vec![contact(5), contact(5)],
        ))
        .await;
    // contact(5) twice has two different ids (fresh v7), so this succeeds;
    // the same NewEvent twice in one append must not.
    assert!(err.is_ok());
    let twice = contact(6);
    let err = s
        .append(req(
            pupil(3),
            ExpectedVersion::Any,
            vec![twice.clone(), twice],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateInAppend { .. }), "{err}");
    assert!(s.find_event(e.event_id).await.unwrap().is_some());
    // An append of minted ids is an append: a new id is taken, and with
    // the ids at hand (every backend here; the segment engine's open for
    // appends) a repeat is refused as any other.
    let minted = contact(7);
    let done = s
        .append_minted(req(
            pupil(4),
            ExpectedVersion::NoStream,
            vec![minted.clone()],
        ))
        .await
        .unwrap();
    assert_eq!(done.first_version, 1);
    let err = s
        .append_minted(req(pupil(5), ExpectedVersion::Any, vec![e.clone()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { position: 1, .. }),
        "{err}"
    );
    assert!(s.find_event(minted.event_id).await.unwrap().is_some());
}

pub async fn chain_links_every_event_to_the_previous<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    for n in 0..5 {
        s.append(req(pupil(n % 2), ExpectedVersion::Any, vec![contact(n)]))
            .await
            .unwrap();
    }
    let all = s.read_all(1, 100).await.unwrap();
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert_eq!(s.head().await.unwrap().hash, all[4].hash);
    let report = s.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 5);
}

pub async fn recorded_at_never_decreases<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    for n in 0..20 {
        s.append(req(pupil(n), ExpectedVersion::Any, vec![contact(n)]))
            .await
            .unwrap();
    }
    let all = s.read_all(1, 100).await.unwrap();
    for w in all.windows(2) {
        assert!(w[1].recorded_at >= w[0].recorded_at);
    }
}

pub async fn acknowledged_events_survive_reopen<B: Backend>() {
    let b = B::fresh();
    let head = {
        let s = b.open();
        for n in 0..10 {
            s.append(req(pupil(n % 3), ExpectedVersion::Any, vec![contact(n)]))
                .await
                .unwrap();
        }
        s.head().await.unwrap()
    };
    let s = b.open();
    assert_eq!(s.head().await.unwrap(), head);
    let a = s
        .append(req(pupil(1), ExpectedVersion::Any, vec![contact(99)]))
        .await
        .unwrap();
    assert_eq!(a.first_position, 11);
    assert!(s.verify(&|_| {}).await.unwrap().ok);
}

pub async fn concurrent_appends_are_group_committed_without_gaps<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    let mut tasks = Vec::new();
    for w in 0..32u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10u32 {
                s.append(req(
                    pupil(w),
                    ExpectedVersion::Exact(n as u64),
                    vec![contact(n)],
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = s.read_all(1, 1000).await.unwrap();
    assert_eq!(all.len(), 320);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1);
    }
    for w in 0..32 {
        assert_eq!(s.stream_version(pupil(w)).await.unwrap(), 10);
    }
    assert!(s.verify(&|_| {}).await.unwrap().ok);
}

pub async fn subscription_catches_up_then_goes_live<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    for n in 0..5 {
        s.append(req(pupil(1), ExpectedVersion::Any, vec![contact(n)]))
            .await
            .unwrap();
    }
    let mut sub = store::subscribe(s.clone(), 3);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 5..25 {
                s.append(req(pupil(2), ExpectedVersion::Any, vec![contact(n)]))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 23 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .expect("subscription stalled")
            .unwrap()
            .expect("store closed");
        seen.push(e.position);
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        (3..=25).collect::<Vec<_>>(),
        "no gap or duplicate at the seam"
    );
}

pub async fn checkpoints_round_trip_outside_the_chain<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    s.append(req(pupil(1), ExpectedVersion::Any, vec![contact(1)]))
        .await
        .unwrap();
    assert_eq!(s.load_checkpoint("caseload").await.unwrap(), None);
    s.save_checkpoint("caseload", vec![1, 2, 3]).await.unwrap();
    assert_eq!(
        s.load_checkpoint("caseload").await.unwrap(),
        Some(vec![1, 2, 3])
    );
    assert!(
        s.verify(&|_| {}).await.unwrap().ok,
        "checkpoints are not events"
    );
    s.clear_checkpoints().await.unwrap();
    assert_eq!(s.load_checkpoint("caseload").await.unwrap(), None);
}

/// `checkpoint_prefix` gives a checkpoint's first bytes (all of them when
/// it is shorter) and its whole size, `None` for a checkpoint not stored,
/// on every backend alike.
pub async fn a_checkpoints_first_bytes_come_with_its_size<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    assert_eq!(s.checkpoint_prefix("caseload", 16).await.unwrap(), None);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    s.save_checkpoint("caseload", bytes.clone()).await.unwrap();
    for n in [0, 1, 256, 299_999, 300_000, 1 << 20] {
        let (first, len) = s.checkpoint_prefix("caseload", n).await.unwrap().unwrap();
        assert_eq!(len, 300_000, "{n}");
        assert!(first == bytes[..n.min(bytes.len())], "the first {n} bytes");
    }
    assert_eq!(s.checkpoint_prefix("other", 16).await.unwrap(), None);
}

/// An atomic append of no requests is done at once: nothing written, an
/// empty answer, and the log usable after it (every backend alike).
pub async fn an_empty_atomic_append_writes_nothing_and_succeeds<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    assert!(s.append_atomic(vec![]).await.unwrap().is_empty());
    assert_eq!(s.head().await.unwrap().position, 0);
    s.append(req(pupil(1), ExpectedVersion::Any, vec![contact(1)]))
        .await
        .unwrap();
    assert!(s.append_atomic(vec![]).await.unwrap().is_empty());
    assert_eq!(s.head().await.unwrap().position, 1);
}

/// The bytes of a checkpoint read through `open_checkpoint`, checked
/// against the size it reports.
async fn read_opened(s: &dyn EventStore, name: &str) -> Option<Vec<u8>> {
    let mut opened = s.open_checkpoint(name).await.unwrap()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut opened.bytes, &mut bytes).unwrap();
    assert_eq!(opened.len, bytes.len() as u64, "{name}: its reported size");
    Some(bytes)
}

/// A checkpoint written by `save_checkpoint_with` (streamed on the
/// segment store) reads back whole, through `load_checkpoint` and
/// `open_checkpoint` (read from disk as it is asked for on the segment
/// store), and survives a reopen; a writer that fails part-way leaves the
/// checkpoint stored before as it was.
pub async fn streamed_checkpoints_replace_whole_or_not_at_all<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    // Larger than the segment store's write buffer, so it is written in
    // several pieces.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let mut write = |out: &mut dyn std::io::Write| {
        for piece in big.chunks(7_000) {
            out.write_all(piece)?;
        }
        Ok(())
    };
    s.save_checkpoint_with("caseload", 1_000, &mut write)
        .await
        .unwrap();
    assert!(s.load_checkpoint("caseload").await.unwrap() == Some(big.clone()));
    assert!(read_opened(&*s, "caseload").await == Some(big.clone()));
    assert!(s.open_checkpoint("other").await.unwrap().is_none());
    // A checkpoint opened for reading is read whole even if another is
    // written over it meanwhile (the runner decodes a large one as it
    // reads it).
    let mut opened = s.open_checkpoint("caseload").await.unwrap().unwrap();
    let mut first = vec![0; 1_000];
    std::io::Read::read_exact(&mut opened.bytes, &mut first).unwrap();
    s.save_checkpoint("caseload", vec![5; 10]).await.unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut opened.bytes, &mut rest).unwrap();
    first.extend(rest);
    assert!(first == big, "a checkpoint read while it was replaced");
    assert_eq!(read_opened(&*s, "caseload").await, Some(vec![5; 10]));
    s.save_checkpoint_with("caseload", 1_000, &mut write)
        .await
        .unwrap();

    let mut failing = |out: &mut dyn std::io::Write| {
        out.write_all(&[9; 300_000])?;
        Err(std::io::Error::other("the encoder gave up"))
    };
    assert!(s
        .save_checkpoint_with("caseload", 1_000, &mut failing)
        .await
        .is_err());
    assert!(
        s.load_checkpoint("caseload").await.unwrap() == Some(big.clone()),
        "the failed write left the checkpoint as it was"
    );
    drop(s);
    let s = b.open();
    assert!(s.load_checkpoint("caseload").await.unwrap() == Some(big.clone()));
    assert!(read_opened(&*s, "caseload").await == Some(big));
}

pub async fn payloads_decode_to_the_recorded_event<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    let e = contact(7);
    s.append(req(pupil(1), ExpectedVersion::Any, vec![e.clone()]))
        .await
        .unwrap();
    let stored = s.find_event(e.event_id).await.unwrap().unwrap();
    assert!(e.same_content_as(&stored));
    match stored.case_event().unwrap() {
        CaseEvent::ParentContacted(p) => assert_eq!(p.summary, "call number 7"),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn old_schema_payloads_are_stored_unchanged_and_upcast_on_read<B: Backend>() {
    let b = B::fresh();
    let s = b.open();
    // A schema-1 SuspensionIssued (sessions, not days), as an old casebook wrote it.
    let payload =
        include_bytes!("../data/fixtures/schema1/suspension_issued.payload.msgpack").to_vec();
    let old = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        occurred_at: Utc.with_ymd_and_hms(2019, 11, 4, 9, 0, 0).unwrap(),
        actor: "S0001".into(),
        correlation_id: None,
        causation_id: None,
        event_type: "SuspensionIssued".into(),
        schema: 1,
        payload: payload.clone(),
    };
    s.append(req(pupil(1), ExpectedVersion::NoStream, vec![old.clone()]))
        .await
        .unwrap();
    let stored = s.find_event(old.event_id).await.unwrap().unwrap();
    assert_eq!(stored.schema, 1, "the stored schema is never rewritten");
    assert_eq!(
        stored.payload, payload,
        "the stored bytes are never rewritten"
    );
    match stored.case_event().unwrap() {
        CaseEvent::SuspensionIssued(x) => assert_eq!(x.days, 2.5),
        other => panic!("unexpected {other:?}"),
    }
    assert!(s.verify(&|_| {}).await.unwrap().ok);
}

pub async fn batched_lookups_agree_with_single_lookups<B: Backend>() {
    use std::collections::HashMap;
    let b = B::fresh();
    let s = b.open();
    // Three pupils with a few events each, appended in interleaved appends
    // so that a stream's events are not adjacent in the log.
    let mut stored_ids = Vec::new();
    for round in 0..3u32 {
        for p in 1..=3u32 {
            let e = contact(round * 10 + p);
            stored_ids.push(e.event_id);
            s.append(req(pupil(p), ExpectedVersion::Any, vec![e]))
                .await
                .unwrap();
        }
    }
    // More ids than one lookup statement holds (postgres::LOOKUP_CHUNK),
    // with stored ids at the start, middle and end, repeats, and missing ids.
    let over = casebook_engine::store::postgres::LOOKUP_CHUNK + 100;
    let mut ids: Vec<uuid::Uuid> = vec![stored_ids[0], stored_ids[0]];
    ids.extend((0..over).map(|_| uuid::Uuid::now_v7()));
    ids.insert(over / 2, stored_ids[4]);
    ids.extend(stored_ids.iter().copied());
    ids.push(stored_ids[8]);
    let batched = s.find_events(&ids).await.unwrap();
    let mut single = HashMap::new();
    for id in &ids {
        if let Some(e) = s.find_event(*id).await.unwrap() {
            single.insert(*id, e);
        }
    }
    assert_eq!(batched.len(), stored_ids.len(), "every stored id, once");
    assert_eq!(batched, single);
    for id in &stored_ids {
        assert_eq!(batched[id].event_id, *id);
    }
    assert!(s.find_events(&[]).await.unwrap().is_empty());
    assert!(s
        .find_events(&[uuid::Uuid::now_v7()])
        .await
        .unwrap()
        .is_empty());
    // Positions by stream and id: each stored id in its own stream below
    // the stream's end, one named with another pupil's stream, one below
    // its own version, and one not stored.
    let mut wanted: Vec<store::InStream> = stored_ids
        .iter()
        .enumerate()
        .map(|(i, id)| store::InStream {
            stream: pupil(i as u32 % 3 + 1),
            below: 4,
            id: *id,
        })
        .collect();
    wanted[4].stream = pupil(3);
    wanted[7].below = 1;
    wanted.push(store::InStream {
        stream: pupil(1),
        below: u64::MAX,
        id: uuid::Uuid::now_v7(),
    });
    let positions = s.positions_in_streams(&wanted).await.unwrap();
    let expected: HashMap<uuid::Uuid, u64> =
        single.iter().map(|(id, e)| (*id, e.position)).collect();
    assert_eq!(positions, expected);

    // Streams: stored ones at the start, middle and end of more than one
    // statement's worth, repeats, and streams with no events.
    let mut streams = vec![pupil(1), pupil(1)];
    streams.extend((100..100 + over as u32).map(pupil));
    streams.insert(over / 2, pupil(2));
    streams.push(pupil(3));
    streams.push(pupil(2));
    let batched = s.read_streams(&streams).await.unwrap();
    let mut single = HashMap::new();
    for stream in &streams {
        let events = store::read_whole_stream(s.as_ref(), *stream).await.unwrap();
        if !events.is_empty() {
            single.insert(*stream, events);
        }
    }
    assert_eq!(batched.len(), 3, "only streams with events");
    assert_eq!(batched, single);
    for p in 1..=3u32 {
        let versions: Vec<u64> = batched[&pupil(p)].iter().map(|e| e.version).collect();
        assert_eq!(versions, vec![1, 2, 3], "in version order");
        assert!(batched[&pupil(p)].iter().all(|e| e.stream == pupil(p)));
    }
    assert!(s.read_streams(&[]).await.unwrap().is_empty());
    assert!(s.read_streams(&[pupil(9999)]).await.unwrap().is_empty());

    // `visit_streams` hands on the same events, each stream's together,
    // in version order, repeated streams once.
    struct Gather(Vec<(StreamId, u64, uuid::Uuid, u64)>);
    impl store::StreamVisitor for Gather {
        fn visit(&mut self, e: &casebook_engine::envelope::EventRef<'_>) -> Result<(), StoreError> {
            self.0.push((e.stream, e.version, e.event_id, e.position));
            Ok(())
        }
    }
    let mut visited = Gather(Vec::new());
    s.visit_streams(&streams, &mut visited).await.unwrap();
    let mut runs: Vec<StreamId> = visited.0.iter().map(|v| v.0).collect();
    runs.dedup();
    assert_eq!(runs.len(), 3, "each stream once, its events together");
    let mut by_stream: HashMap<StreamId, Vec<(u64, uuid::Uuid, u64)>> = HashMap::new();
    for (stream, version, id, position) in visited.0 {
        by_stream
            .entry(stream)
            .or_default()
            .push((version, id, position));
    }
    let expected: HashMap<StreamId, Vec<(u64, uuid::Uuid, u64)>> = batched
        .iter()
        .map(|(s, events)| {
            (
                *s,
                events
                    .iter()
                    .map(|e| (e.version, e.event_id, e.position))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(by_stream, expected);
    let mut none = Gather(Vec::new());
    s.visit_streams(&[pupil(9999)], &mut none).await.unwrap();
    assert!(none.0.is_empty());
    // `visit_streams_from`: each stream from the version named with it,
    // in the order asked, repeats once (from their first naming), a
    // stream with nothing from there (or none at all) not visited.
    let asked = [
        (pupil(3), 1),
        (pupil(1), 2),
        (pupil(2), 4),
        (pupil(9999), 1),
        (pupil(1), 1),
        (pupil(2), 3),
    ];
    let mut from = Gather(Vec::new());
    s.visit_streams_from(&asked, &mut from).await.unwrap();
    let got: Vec<(StreamId, u64)> = from.0.iter().map(|v| (v.0, v.1)).collect();
    assert_eq!(
        got,
        vec![
            (pupil(3), 1),
            (pupil(3), 2),
            (pupil(3), 3),
            (pupil(1), 2),
            (pupil(1), 3),
        ]
    );
    for (stream, version, id, position) in &from.0 {
        assert!(
            by_stream[stream].contains(&(*version, *id, *position)),
            "the stored event"
        );
    }
    // Every stream from its first event: as `visit_streams`.
    let whole: Vec<(StreamId, u64)> = streams.iter().map(|s| (*s, 1)).collect();
    let mut all = Gather(Vec::new());
    s.visit_streams_from(&whole, &mut all).await.unwrap();
    let mut again = Gather(Vec::new());
    s.visit_streams(&streams, &mut again).await.unwrap();
    assert_eq!(all.0, again.0);
    // An error from the visitor stops the read and is the read's.
    struct StopAt(usize);
    impl store::StreamVisitor for StopAt {
        fn visit(&mut self, _: &casebook_engine::envelope::EventRef<'_>) -> Result<(), StoreError> {
            self.0 = self.0.checked_sub(1).expect("no event after the error");
            match self.0 {
                0 => Err(StoreError::Corrupt {
                    location: "the visitor".into(),
                    what: "stop here".into(),
                }),
                _ => Ok(()),
            }
        }
    }
    let mut stop = StopAt(5);
    let err = s.visit_streams(&streams, &mut stop).await.unwrap_err();
    assert!(err.to_string().contains("stop here"), "{err}");
    assert_eq!(stop.0, 0, "no event after the error");
}

/// The school-wide views find the entry a correction names through the
/// store's index (the projection runner's lookup of each page's
/// corrections' targets): the attendance view keeps register marks by
/// position, and a correction appended after its checkpoint still moves
/// the mark it names, whether the view resumes from the checkpoint or is
/// rebuilt.
pub async fn views_find_a_corrected_mark_through_the_store<B: Backend>() {
    use casebook_engine::event::{AttendanceMarked, EntryCorrected, Session};
    use casebook_projections::rebuild;
    use casebook_projections::runner::SchoolViews;

    let b = B::fresh();
    let s = b.open();
    let at = Utc.with_ymd_and_hms(2025, 9, 1, 9, 0, 0).unwrap();
    let marks: Vec<NewEvent> = (0..10u32)
        .map(|i| {
            let event = CaseEvent::AttendanceMarked(AttendanceMarked {
                date: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap()
                    + chrono::Duration::days(i64::from(i / 2)),
                session: if i % 2 == 0 { Session::Am } else { Session::Pm },
                code: if i == 9 { "O" } else { "/" }.into(),
            });
            NewEvent::new(&event, at, "S017").expect("encode")
        })
        .collect();
    let absent = marks[9].event_id;
    s.append(req(pupil(1), ExpectedVersion::NoStream, marks))
        .await
        .unwrap();
    let no_progress = |_: u64, _: u64| {};
    let before = SchoolViews::load(&*s, &no_progress).await.unwrap();
    let p = &before.attendance.report(2025, false).pupils[0];
    assert_eq!((p.possible_sessions, p.unauthorised), (10, 1));
    assert!(p.persistent);

    let mut changes = serde_json::Map::new();
    changes.insert("code".into(), serde_json::json!("X"));
    let correction = CaseEvent::EntryCorrected(EntryCorrected {
        event: absent,
        changes,
        reason: "On roll elsewhere".into(),
    });
    let correction = NewEvent::new(&correction, at, "S017").expect("encode");
    s.append(req(pupil(1), ExpectedVersion::Exact(10), vec![correction]))
        .await
        .unwrap();
    let after = SchoolViews::load(&*s, &no_progress).await.unwrap();
    assert!(after.restarted.is_empty(), "{:?}", after.restarted);
    let p = &after.attendance.report(2025, false).pupils[0];
    assert_eq!(
        (p.possible_sessions, p.unauthorised, p.not_possible),
        (9, 0, 1),
        "the correction found its mark"
    );
    assert!(!p.persistent);

    rebuild(&*s, None, &no_progress).await.unwrap();
    let rebuilt = SchoolViews::load(&*s, &no_progress).await.unwrap();
    assert_eq!(
        rebuilt.attendance.report(2025, false),
        after.attendance.report(2025, false)
    );
}

/// An atomic append of more events than the writer hands back whole
/// (the segment writer returns a large append's events to the caller
/// request by request as it seals them): it lands whole, in order, each
/// stream gapless, the chain verified; and a large append that fails its
/// checks writes nothing.
pub async fn a_large_atomic_append_lands_whole<B: Backend>() {
    const PUPILS: u32 = 100;
    const EACH: u32 = 700; // 70,000 events, above 65,536
    let b = B::fresh();
    let s = b.open();
    s.append(req(pupil(0), ExpectedVersion::NoStream, vec![contact(0)]))
        .await
        .unwrap();
    let requests = |first_expected: ExpectedVersion| {
        (1..=PUPILS)
            .map(|p| {
                let expected = match p {
                    PUPILS => first_expected,
                    _ => ExpectedVersion::NoStream,
                };
                req(
                    pupil(p),
                    expected,
                    (0..EACH).map(|i| contact(p * EACH + i)).collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    // The last request's expectation fails: nothing is written.
    let err = s
        .append_atomic(requests(ExpectedVersion::Exact(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err}"
    );
    assert_eq!(s.head().await.unwrap().position, 1);
    let wanted = requests(ExpectedVersion::NoStream);
    let ids: Vec<_> = wanted
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    let appended = s.append_atomic(wanted).await.unwrap();
    assert_eq!(appended.len(), PUPILS as usize);
    for (i, a) in appended.iter().enumerate() {
        let first = 2 + i as u64 * u64::from(EACH);
        assert_eq!(
            (
                a.stream,
                a.first_position,
                a.last_position,
                a.first_version,
                a.last_version
            ),
            (
                pupil(i as u32 + 1),
                first,
                first + u64::from(EACH) - 1,
                1,
                u64::from(EACH)
            )
        );
    }
    let total = 1 + u64::from(PUPILS * EACH);
    assert_eq!(s.head().await.unwrap().position, total);
    let mut read = Vec::new();
    let mut from = 2;
    while from <= total {
        let page = s.read_all(from, 10_000).await.unwrap();
        from += page.len() as u64;
        read.extend(page.into_iter().map(|e| e.event_id));
    }
    assert_eq!(read, ids, "every event, in the order appended");
    assert_eq!(
        s.stream_version(pupil(PUPILS)).await.unwrap(),
        u64::from(EACH)
    );
    let report = s.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.events, total);
}

macro_rules! conformance_suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        if !<$backend as Backend>::available() {
                            return;
                        }
                        super::$name::<$backend>().await;
                    }
                };
            }
            case!(append_assigns_gapless_positions_and_versions);
            case!(wrong_expected_version_is_refused_and_writes_nothing);
            case!(atomic_append_is_all_or_nothing);
            case!(duplicate_event_id_is_refused);
            case!(chain_links_every_event_to_the_previous);
            case!(recorded_at_never_decreases);
            case!(acknowledged_events_survive_reopen);
            case!(concurrent_appends_are_group_committed_without_gaps);
            case!(subscription_catches_up_then_goes_live);
            case!(checkpoints_round_trip_outside_the_chain);
            case!(streamed_checkpoints_replace_whole_or_not_at_all);
            case!(a_checkpoints_first_bytes_come_with_its_size);
            case!(an_empty_atomic_append_writes_nothing_and_succeeds);
            case!(payloads_decode_to_the_recorded_event);
            case!(old_schema_payloads_are_stored_unchanged_and_upcast_on_read);
            case!(batched_lookups_agree_with_single_lookups);
            case!(views_find_a_corrected_mark_through_the_store);
            case!(a_large_atomic_append_lands_whole);
        }
    };
}

conformance_suite!(sled, SledBackend);
conformance_suite!(pg, PgBackend);
conformance_suite!(segment, SegmentBackend);
