//! The batched import planner (`Planner::add_many`, which prefetches ids
//! and streams with `find_events` / `read_streams`) plans exactly what the
//! one-line-at-a-time planner (`Planner::add`) plans: the same requests and
//! counts, or the same first error, for random line sequences with
//! duplicate ids within the import and ids already stored.
//!
//! The pipelined import (`import::Pipeline`, each batch validated while the
//! one before it is written) stores exactly what a series of serial
//! imports (one fresh `Planner` + `append_atomic` per batch) stores, and
//! stops at the same first error; a concurrent writer's conflicting append
//! fails the batch it conflicts with, writing nothing of it.

use std::collections::HashSet;
use std::sync::Arc;

use casebook_engine::envelope::StreamId;
use casebook_engine::import::{parse_line, ImportError, ImportLine, Pipeline, Planner};
use casebook_engine::store::embedded::{open_log, Engine};
use casebook_engine::store::{EventStore, ExpectedVersion, Presealed};
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
    let store = casebook_engine::store::sled::SledStore::open(dir, true).expect("open store");
    with_prefix(store.log(SCHOOL).expect("open log"), rt)
}

/// `log` with the stored prefix appended.
fn with_prefix(log: Arc<dyn EventStore>, rt: &tokio::runtime::Runtime) -> Arc<dyn EventStore> {
    rt.block_on(async {
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
        let rt = crate::rt();
        let dir = tempfile::tempdir().unwrap();
        let log = store_with_prefix(dir.path(), &rt);
        let single = rt.block_on(one_by_one(log.as_ref(), lines(&ops)));
        let batch = rt.block_on(batched(log.as_ref(), lines(&ops), &cuts));
        prop_assert_eq!(&single, &batch);
        // With no prefetch, add_many takes the store-read path for every
        // line that needs one, in the middle of its synchronous loop.
        let unfetched = NoPrefetch(log.clone());
        let slow = rt.block_on(batched(&unfetched, lines(&ops), &cuts));
        prop_assert_eq!(&single, &slow);
    }
}

/// The generator reaches every outcome the property is about (so the
/// property cannot pass by only ever seeing one kind of sequence).
#[test]
fn the_generated_sequences_cover_skips_refusals_and_plans() {
    let rt = crate::rt();
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

// ---- the pipelined import ---------------------------------------------------

/// A segment store holding the stored prefix.
fn segment_with_prefix(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Arc<dyn EventStore> {
    let store = casebook_engine::store::segment::SegmentStore::open(dir, true).expect("open store");
    with_prefix(store.log(SCHOOL).expect("open log"), rt)
}

/// A log under test, changed in one way: [`Wrapped::SlowAppends`], whose
/// appends reach the store only after a pause, or [`Wrapped::NoPrefetch`],
/// whose batched look-ups (`find_events`, `read_streams`) fail, so
/// `Planner::add_many` judges every line whose id or pupil it has not seen
/// through the store reads of its slow path (`resume`), one at a time.
enum Wrapped {
    SlowAppends(Arc<dyn EventStore>),
    NoPrefetch(Arc<dyn EventStore>),
    /// Notes the events of each `visit_streams_from` call, and counts the
    /// `read_stream` calls made through it.
    CountsVisits(
        Arc<dyn EventStore>,
        std::sync::Mutex<Vec<usize>>,
        std::sync::atomic::AtomicUsize,
    ),
}

use Wrapped::{CountsVisits, NoPrefetch, SlowAppends};

impl Wrapped {
    fn inner(&self) -> &dyn EventStore {
        match self {
            SlowAppends(log) | NoPrefetch(log) | CountsVisits(log, ..) => log.as_ref(),
        }
    }
}

/// Counts the events a visit hands on.
struct Counted<'a> {
    visit: &'a mut dyn casebook_engine::store::StreamVisitor,
    events: usize,
}

impl casebook_engine::store::StreamVisitor for Counted<'_> {
    fn expect(&mut self, events: usize) {
        self.visit.expect(events)
    }
    fn visit(
        &mut self,
        event: &casebook_engine::envelope::EventRef<'_>,
    ) -> Result<(), casebook_engine::StoreError> {
        self.events += 1;
        self.visit.visit(event)
    }
}

#[async_trait::async_trait]
impl EventStore for Wrapped {
    async fn append_atomic(
        &self,
        requests: Vec<casebook_engine::store::AppendRequest>,
    ) -> Result<Vec<casebook_engine::store::Appended>, casebook_engine::StoreError> {
        if let SlowAppends(_) = self {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.inner().append_atomic(requests).await
    }
    async fn append_presealed(
        &self,
        presealed: casebook_engine::Presealed,
    ) -> Result<Vec<casebook_engine::store::Appended>, casebook_engine::StoreError> {
        if let SlowAppends(_) = self {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.inner().append_presealed(presealed).await
    }
    fn seals_ahead(&self) -> bool {
        // The slow appends go the way the segment engine's do: sealed ahead
        // by the pipeline; the look-ups that fail keep the default.
        matches!(self, SlowAppends(_)) && self.inner().seals_ahead()
    }
    fn expect_appends(&self, events: u64) {
        self.inner().expect_appends(events)
    }
    async fn find_events(
        &self,
        ids: &[Uuid],
    ) -> Result<
        std::collections::HashMap<Uuid, casebook_engine::envelope::StoredEvent>,
        casebook_engine::StoreError,
    > {
        match self {
            NoPrefetch(_) => Err(no_batch()),
            SlowAppends(log) | CountsVisits(log, ..) => log.find_events(ids).await,
        }
    }
    async fn read_streams(
        &self,
        streams: &[StreamId],
    ) -> Result<
        std::collections::HashMap<StreamId, Vec<casebook_engine::envelope::StoredEvent>>,
        casebook_engine::StoreError,
    > {
        match self {
            NoPrefetch(_) => Err(no_batch()),
            SlowAppends(log) | CountsVisits(log, ..) => log.read_streams(streams).await,
        }
    }
    /// Each stream from its first event (what `visit_streams_from` is
    /// asked, below).
    async fn visit_streams(
        &self,
        streams: &[StreamId],
        visit: &mut dyn casebook_engine::store::StreamVisitor,
    ) -> Result<(), casebook_engine::StoreError> {
        let whole: Vec<(StreamId, u64)> = streams.iter().map(|s| (*s, 1)).collect();
        self.visit_streams_from(&whole, visit).await
    }
    async fn visit_streams_from(
        &self,
        streams: &[(StreamId, u64)],
        visit: &mut dyn casebook_engine::store::StreamVisitor,
    ) -> Result<(), casebook_engine::StoreError> {
        match self {
            NoPrefetch(_) => Err(no_batch()),
            SlowAppends(log) => log.visit_streams_from(streams, visit).await,
            CountsVisits(log, calls, _) => {
                let mut counted = Counted { visit, events: 0 };
                let done = log.visit_streams_from(streams, &mut counted).await;
                calls.lock().unwrap().push(counted.events);
                done
            }
        }
    }
    async fn read_stream(
        &self,
        stream: StreamId,
        from: u64,
        max: usize,
    ) -> Result<Vec<casebook_engine::envelope::StoredEvent>, casebook_engine::StoreError> {
        if let CountsVisits(_, _, reads) = self {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner().read_stream(stream, from, max).await
    }
    async fn read_all(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<casebook_engine::envelope::StoredEvent>, casebook_engine::StoreError> {
        self.inner().read_all(from, max).await
    }
    async fn stream_version(&self, stream: StreamId) -> Result<u64, casebook_engine::StoreError> {
        self.inner().stream_version(stream).await
    }
    async fn find_event(
        &self,
        id: Uuid,
    ) -> Result<Option<casebook_engine::envelope::StoredEvent>, casebook_engine::StoreError> {
        self.inner().find_event(id).await
    }
    async fn head(&self) -> Result<casebook_engine::store::Head, casebook_engine::StoreError> {
        self.inner().head().await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner().watch_head()
    }
    async fn load_checkpoint(
        &self,
        name: &str,
    ) -> Result<Option<Vec<u8>>, casebook_engine::StoreError> {
        self.inner().load_checkpoint(name).await
    }
    async fn save_checkpoint(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), casebook_engine::StoreError> {
        self.inner().save_checkpoint(name, bytes).await
    }
    async fn clear_checkpoints(&self) -> Result<(), casebook_engine::StoreError> {
        self.inner().clear_checkpoints().await
    }
    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<casebook_engine::store::VerifyReport, casebook_engine::StoreError> {
        self.inner().verify(progress).await
    }
}

fn no_batch() -> casebook_engine::StoreError {
    casebook_engine::StoreError::Io {
        during: "batched look-up",
        source: "refused by the test".into(),
    }
}

/// The lines cut into batches of the given sizes (the last takes the rest).
fn batches(lines: Vec<ImportLine>, sizes: &[usize]) -> Vec<Vec<ImportLine>> {
    let mut out = Vec::new();
    let mut rest = lines;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let tail = rest.split_off((*size).min(rest.len()));
        out.push(rest);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// A stored log with the planner-made ids blanked.
type Log = Vec<(StreamId, u64, Option<Uuid>, String, Vec<u8>)>;

async fn stored_log(log: &dyn EventStore, line_ids: &HashSet<Uuid>) -> Log {
    log.read_all(1, 100_000)
        .await
        .expect("read log")
        .into_iter()
        .map(|e| {
            (
                e.stream,
                e.version,
                line_ids.contains(&e.event_id).then_some(e.event_id),
                format!("{} {} {}", e.event_type, e.actor, e.occurred_at),
                e.payload,
            )
        })
        .collect()
}

/// What an import of batches left: the stored log, (events, duplicates)
/// acknowledged, and the first error.
type Outcome = (Log, (u64, u64), Option<String>);

/// One fresh planner and one `append_atomic` per batch, stopping at the
/// first error.
async fn serial(log: &dyn EventStore, batches: Vec<Vec<ImportLine>>) -> Outcome {
    let ids: HashSet<Uuid> = batches.iter().flatten().filter_map(|l| l.id).collect();
    let (mut events, mut duplicates) = (0, 0);
    let mut error = None;
    for lines in batches {
        let mut planner = Planner::new(log, SCHOOL, now());
        if let Err(e) = planner.add_many(lines).await {
            error = Some(e.to_string());
            break;
        }
        let plan = planner.finish();
        if !plan.requests.is_empty() {
            if let Err(e) = log.append_atomic(plan.requests).await {
                error = Some(ImportError::Write(e).to_string());
                break;
            }
        }
        events += plan.events as u64;
        duplicates += plan.duplicates as u64;
    }
    (stored_log(log, &ids).await, (events, duplicates), error)
}

async fn pipelined(log: &dyn EventStore, batches: Vec<Vec<ImportLine>>) -> Outcome {
    let ids: HashSet<Uuid> = batches.iter().flatten().filter_map(|l| l.id).collect();
    let mut pipeline = Pipeline::new(log, SCHOOL, now());
    // The import's size, as the demo and the bench say it: only the
    // store's id table is sized by it, never what is stored.
    pipeline.expect_events(batches.iter().map(|b| b.len() as u64).sum());
    let mut error = None;
    for lines in batches {
        if let Err(e) = pipeline.push(lines).await {
            error = Some(e.to_string());
            break;
        }
    }
    if error.is_none() {
        if let Err(e) = pipeline.flush().await {
            error = Some(e.to_string());
        }
    }
    let counts = (pipeline.events(), pipeline.duplicates());
    (stored_log(log, &ids).await, counts, error)
}

fn both(ops: &[Op], sizes: &[usize]) -> (Outcome, Outcome) {
    let rt = crate::rt();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let serial_log = segment_with_prefix(a.path(), &rt);
    let pipe_log = segment_with_prefix(b.path(), &rt);
    let s = rt.block_on(serial(serial_log.as_ref(), batches(lines(ops), sizes)));
    // The pipeline's appends start late, so each batch is planned before
    // the one in flight is written (a read of the store would miss it).
    let slow = SlowAppends(pipe_log);
    let p = rt.block_on(pipelined(&slow, batches(lines(ops), sizes)));
    // Sealed ahead or not, every batch continues the chain.
    let report = rt.block_on(slow.verify(&|_| {})).unwrap();
    assert!(
        report.ok,
        "the pipelined log verifies: {:?}",
        report.problems
    );
    (s, p)
}

/// Mostly valid lines (pupils already stored, contacts and marks, fresh or
/// repeated ids), so that imports run over many batches before any error.
fn mostly_valid_op() -> impl Strategy<Value = Op> {
    let id = prop_oneof![
        2 => Just(IdChoice::None),
        6 => Just(IdChoice::Fresh),
        1 => any::<usize>().prop_map(IdChoice::RepeatLine),
        1 => any::<usize>().prop_map(IdChoice::RepeatStored),
    ];
    (0u8..2, 1u8..3, 0u8..6, id, 0u8..40).prop_map(|(pupil, kind, variant, id, odd)| match odd {
        // Now and then a line that may be refused.
        0 => Op {
            pupil: 2,
            kind: 1,
            variant,
            id: IdChoice::ReuseId(variant as usize),
        },
        1 => Op {
            pupil,
            kind: 3,
            variant,
            id: IdChoice::Fresh,
        },
        _ => Op {
            pupil,
            kind: if kind == 2 && variant % 2 == 0 {
                1
            } else {
                kind
            },
            variant,
            id,
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pipelined_import_stores_exactly_what_serial_batches_store(
        ops in prop_oneof![
            proptest::collection::vec(op(), 0..48),
            proptest::collection::vec(mostly_valid_op(), 0..48),
        ],
        sizes in proptest::collection::vec(1usize..8, 0..12),
    ) {
        let (s, p) = both(&ops, &sizes);
        prop_assert_eq!(s, p);
    }
}

/// The cases the property is about, each reached on purpose: a pupil and
/// its ids spanning batches, an id of the batch in flight repeated (skipped)
/// or reused with other content (refused at its line, the batch before it
/// stored), a refusal in a later batch.
#[test]
fn pipelined_import_covers_ids_and_pupils_across_batches() {
    let o = |pupil, kind, variant, id| Op {
        pupil,
        kind,
        variant,
        id,
    };
    /// Lines, batch sizes, and (events, duplicates) or a part of the error.
    type Case = (Vec<Op>, Vec<usize>, Result<(u64, u64), &'static str>);
    let cases: Vec<Case> = vec![
        // Pupil 2 spans three batches; line 4 repeats line 2 (in flight).
        (
            vec![
                o(2, 0, 0, IdChoice::Fresh),
                o(2, 1, 0, IdChoice::Fresh),
                o(2, 1, 1, IdChoice::Fresh),
                o(2, 1, 0, IdChoice::RepeatLine(1)),
                o(2, 1, 2, IdChoice::None),
            ],
            vec![2, 1, 1],
            Ok((4, 1)),
        ),
        // Line 3 reuses line 2's id (in flight) with other content.
        (
            vec![
                o(2, 0, 0, IdChoice::Fresh),
                o(2, 1, 0, IdChoice::Fresh),
                o(2, 1, 1, IdChoice::ReuseId(1)),
            ],
            vec![2],
            Err("line 3: field id: 00000000-0000-0000-0000-0000000003e9 is already stored (position 5) with different content"),
        ),
        // The second batch marks a session the first one marked.
        (
            vec![
                o(0, 2, 0, IdChoice::Fresh),
                o(1, 1, 0, IdChoice::Fresh),
                o(0, 2, 3, IdChoice::Fresh),
            ],
            vec![2],
            Err("line 3:"),
        ),
    ];
    for (ops, sizes, want) in cases {
        let (s, p) = both(&ops, &sizes);
        assert_eq!(s, p, "{ops:?}");
        match (want, p) {
            (Ok(counts), (_, got, None)) => assert_eq!(got, counts, "{ops:?}"),
            (Err(text), (_, _, Some(e))) => assert!(e.contains(text), "{ops:?}: {e}"),
            (want, got) => panic!("{ops:?}: wanted {want:?}, got {got:?}"),
        }
    }
}

/// A concurrent writer's append to a pupil of the pipelined import: the
/// batch that expected the pupil's earlier version fails, nothing of it is
/// written, and everything acknowledged before it stays.
#[test]
fn a_concurrent_append_fails_the_pipelined_batch_cleanly() {
    let rt = crate::rt();
    let o = |pupil, kind, variant| Op {
        pupil,
        kind,
        variant,
        id: IdChoice::Fresh,
    };
    let ops = vec![o(2, 0, 0), o(2, 1, 0), o(2, 1, 1), o(2, 1, 2)];
    let contact = |line: usize, variant: u8| {
        let l = with_id(
            content(2, 1, variant),
            Some(Uuid::from_u128(9_000 + line as u128)),
        );
        parse_line(line, &l.to_string()).unwrap()
    };
    for conflict_in_flight in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = segment_with_prefix(dir.path(), &rt);
        let mut b = batches(lines(&ops), &[2]).into_iter();
        let (first, second) = (b.next().unwrap(), b.next().unwrap());
        rt.block_on(async {
            let before = log.head().await.unwrap().position;
            let mut pipeline = Pipeline::new(log.as_ref(), SCHOOL, now());
            let one = pipeline.plan(first).await.unwrap();
            let other = async {
                // Another writer appends to pupil 2 after the pipeline's
                // batch was validated.
                let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
                planner.add(contact(1, 5)).await.unwrap();
                log.append_atomic(planner.finish().requests).await
            };
            if conflict_in_flight {
                // Pupil 2 is new: the other writer registers it first.
                let l = with_id(content(2, 0, 4), Some(Uuid::from_u128(9_999)));
                let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
                planner
                    .add(parse_line(1, &l.to_string()).unwrap())
                    .await
                    .unwrap();
                log.append_atomic(planner.finish().requests).await.unwrap();
                // The first batch fails: reported by `submit` if the store
                // answered at once, else by planning the second batch.
                let err = match pipeline.submit(one).await {
                    Err(e) => e,
                    Ok(()) => match pipeline.plan(second).await {
                        Ok(_) => panic!("the conflicting batch was written"),
                        Err(e) => e,
                    },
                };
                assert!(
                    matches!(&err, ImportError::Write(e) if e.to_string().contains("expected")),
                    "{err}"
                );
                assert_eq!(pipeline.events(), 0);
                // Only the other writer's event was stored.
                assert_eq!(log.head().await.unwrap().position, before + 1);
            } else {
                pipeline.submit(one).await.unwrap();
                let two = pipeline.plan(second).await.unwrap();
                assert_eq!(pipeline.events(), 2, "the first batch is acknowledged");
                other.await.unwrap();
                let err = match pipeline.submit(two).await {
                    Ok(()) => pipeline.flush().await.err(),
                    Err(e) => Some(e),
                };
                let err = err.expect("the conflicting batch was written");
                assert!(
                    matches!(&err, ImportError::Write(e) if e.to_string().contains("expected")),
                    "{err}"
                );
                assert_eq!(pipeline.events(), 2);
                // The first batch and the other writer's event; nothing of
                // the second batch.
                let head = log.head().await.unwrap().position;
                assert_eq!(head, before + 3);
                let stored = log.read_all(before + 1, 10).await.unwrap();
                assert!(stored
                    .iter()
                    .all(|e| e.event_id.as_u128() < 1_002 || e.event_id.as_u128() >= 9_000));
            }
        });
    }
}

/// On the segment engine the pipeline seals each batch ahead, where the
/// batch before it leaves the log, and the writer stores those bytes.
/// Sealing whole batches, every event of an import alone is written as
/// sealed ahead; sealing until the batch in flight is answered (the
/// default), a prefix of each batch, the writer sealing the rest, so how
/// much depends on timing, and what is stored does not. When another
/// writer's append moves the log in between, the writer seals the batch
/// itself (nothing of it is lost or written twice), the pipeline seals
/// the next batch again where the log then is, and the log verifies, its
/// `recorded_at` in order and one time for each batch's events.
#[test]
fn the_pipeline_seals_ahead_and_the_writer_falls_back_when_the_log_moved() {
    let rt = crate::rt();
    // Pupil 2 registered, then contacts for pupils 0 to 2: batches of 2.
    let mut ops = vec![Op {
        pupil: 2,
        kind: 0,
        variant: 0,
        id: IdChoice::Fresh,
    }];
    for i in 0..11u8 {
        ops.push(Op {
            pupil: i % 3,
            kind: 1,
            variant: i % 5,
            id: IdChoice::Fresh,
        });
    }
    // Another writer registers a pupil the import does not touch.
    let foreign = |n: u8| {
        let l = with_id(
            content(3 + n, 0, 0),
            Some(Uuid::from_u128(9_000 + u128::from(n))),
        );
        parse_line(1, &l.to_string()).unwrap()
    };
    // When the other writer appends: never, between two batches planned
    // and submitted back to back (the batch in flight sealed ahead of it),
    // or before the first batch is submitted (after it was sealed ahead).
    for (when, whole) in ["never", "in flight", "before submit"]
        .into_iter()
        .flat_map(|when| [(when, true), (when, false)])
    {
        let dir = tempfile::tempdir().unwrap();
        let store = casebook_engine::store::segment::SegmentStore::open(dir.path(), true).unwrap();
        let segment = store.log(SCHOOL).unwrap();
        let log = with_prefix(segment.clone(), &rt);
        let before = segment.writer_times();
        let (foreign_events, sealed_ahead) = rt.block_on(async {
            let other = |n| {
                let log = log.clone();
                async move {
                    let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
                    planner.add(foreign(n)).await.unwrap();
                    log.append_atomic(planner.finish().requests).await.unwrap();
                }
            };
            let mut pipeline = Pipeline::new(log.as_ref(), SCHOOL, now());
            if whole {
                pipeline = pipeline.sealing_whole_batches();
            }
            let mut foreign_events = 0;
            for (k, lines) in batches(lines(&ops), &[2; 6]).into_iter().enumerate() {
                let batch = pipeline.plan(lines).await.unwrap();
                if k == 0 && when == "before submit" {
                    other(0).await;
                    foreign_events += 1;
                }
                pipeline.submit(batch).await.unwrap();
                if k == 2 && when == "in flight" {
                    other(1).await;
                    foreign_events += 1;
                }
            }
            pipeline.flush().await.unwrap();
            assert_eq!(pipeline.events(), ops.len() as u64);
            let sealed_ahead = pipeline.batches_sealed_ahead();
            // Nothing in flight: the pipeline reads the head again and
            // seals ahead once more, whatever happened before.
            let more = vec![parse_line(
                100,
                &with_id(content(0, 1, 3), Some(Uuid::from_u128(1_099))).to_string(),
            )
            .unwrap()];
            pipeline.push(more).await.unwrap();
            pipeline.flush().await.unwrap();
            assert_eq!(pipeline.batches_sealed_ahead(), sealed_ahead + 1, "{when}");
            (foreign_events, sealed_ahead)
        });
        let written = segment.writer_times().since(&before);
        // The imported lines, the other writer's events and the last line.
        assert_eq!(
            written.events,
            ops.len() as u64 + foreign_events + 1,
            "{when}"
        );
        match when {
            // Sealed in part: as much as was sealed before the batch in
            // flight was answered (or none, for a batch sealed where the
            // log is, the writer idle).
            _ if !whole => {
                assert_eq!(sealed_ahead, 6, "{when}");
                assert!(written.presealed <= ops.len() as u64 + 1, "{when}");
            }
            // Batch 4 was sealed ahead where batch 3 would leave the log,
            // but the other writer's event was seen once batch 3 was
            // acknowledged: batch 4 was sealed again, there, before it was
            // submitted, and every batch was written as sealed ahead.
            "never" | "in flight" => {
                assert_eq!(sealed_ahead, 6, "{when}");
                assert_eq!(written.presealed, ops.len() as u64 + 1, "{when}");
            }
            // Batch 1 was submitted sealed ahead of the other writer's
            // event, and sealed again by the writer; batch 2 was sealed
            // again once batch 1 was acknowledged, and the rest ahead.
            _ => {
                assert_eq!(sealed_ahead, 6, "{when}");
                assert_eq!(written.presealed, ops.len() as u64 - 2 + 1, "{when}");
            }
        }
        rt.block_on(async {
            let report = log.verify(&|_| {}).await.unwrap();
            assert!(report.ok, "{when}: {:?}", report.problems);
            let all = log.read_all(1, 100).await.unwrap();
            assert_eq!(all.len(), 3 + ops.len() + foreign_events as usize + 1);
            assert!(
                all.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at),
                "{when}: recorded_at in log order"
            );
            // Each batch (an atomic append) is recorded at one time, the
            // part the writer sealed too.
            let imported: Vec<_> = all
                .iter()
                .filter(|e| (1_000..1_099).contains(&e.event_id.as_u128()))
                .collect();
            assert_eq!(imported.len(), ops.len(), "{when}");
            for (k, batch) in imported.chunks(2).enumerate() {
                assert_eq!(
                    batch[0].recorded_at,
                    batch[batch.len() - 1].recorded_at,
                    "{when}, whole {whole}: batch {k} at one time"
                );
            }
            let imported: HashSet<Uuid> = all
                .iter()
                .map(|e| e.event_id)
                .filter(|id| (1_000..1_100).contains(&id.as_u128()))
                .collect();
            assert_eq!(imported.len(), ops.len() + 1, "{when}: every line once");
        });
    }
}

/// A batch sealed in part (here none of it: its batch in flight was
/// answered before sealing began): the segment writer tells where the log
/// will be once it is written as soon as it has staged it, before the
/// write (the pipeline seals the next batch ahead from there), and tells
/// nothing of an append it refuses.
#[test]
fn the_segment_writer_tells_where_a_batch_sealed_in_part_leaves_the_log() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = casebook_engine::store::segment::SegmentStore::open(dir.path(), true).unwrap();
    let log = store.log(SCHOOL).unwrap();
    rt.block_on(async {
        let requests = async {
            let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
            for (i, l) in stored_lines().into_iter().enumerate() {
                planner
                    .add(parse_line(i + 1, &l.to_string()).unwrap())
                    .await
                    .unwrap();
            }
            planner.finish().requests
        };
        let batch = requests.await;
        let same = batch.clone();
        let events: usize = batch.iter().map(|r| r.events.len()).sum();
        assert!(events > 1, "a batch of several events");
        let head = log.head().await.unwrap();
        let mut p = Presealed::seal_until(head, now(), batch, &mut || true).unwrap();
        assert_eq!((p.sealed_events(), p.is_complete()), (0, false));
        assert_eq!(p.end(), head, "nothing sealed: the prefix ends at the head");
        let staged = p.staged_head();
        log.append_presealed(p).await.unwrap();
        let told = staged.await.expect("told where the batch leaves the log");
        let now_head = log.head().await.unwrap();
        assert_eq!(told, now_head);
        assert_eq!(told.position, head.position + events as u64);

        // The same batch again: refused (its pupils are no longer new), and
        // nothing told.
        let mut again = Presealed::seal_until(told, now(), same, &mut || true).unwrap();
        let staged = again.staged_head();
        assert!(log.append_presealed(again).await.is_err());
        assert!(staged.await.is_err(), "nothing told of a refused append");
        assert_eq!(log.head().await.unwrap(), now_head);
    });
}

/// `parse_line` reads a line once, untracked, and only a line that fails
/// again to name the field at fault; the sealed-prefix check writes the
/// event out as text only for a line that mentions the prefix. Each refusal
/// names its line and field as before, wherever in the line the fault is,
/// and a good line reads the same whether or not it looks like one.
#[test]
fn parse_line_names_the_field_at_fault_and_refuses_sealed_text() {
    let line = |text: &str| parse_line(7, text);
    let err = |text: &str| match line(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    };
    let head = r#""pupil":"P1","occurred_at":"2026-09-15T10:20:00Z","actor":"S1""#;
    let incident = |participants: &str| {
        format!(
            r#"{{"type":"IncidentRecorded",{head},"data":{{"category":"disruption","severity":2,"location":"hall","description":"x","participants":{participants}}}}}"#
        )
    };
    // Where the line itself is wrong: the field, from the tracked reading.
    let e = err(&format!(
        r#"{{"type":"ParentContacted",{head},"dat":{{}}}}"#
    ));
    assert!(e.starts_with("line 7: field dat: unknown field"), "{e}");
    let e = err(r#"{"type":"ParentContacted","pupil":5}"#);
    assert!(e.starts_with("line 7: field pupil: invalid type"), "{e}");
    let e = err(r#"{"type":"ParentContacted","pupil":"P1",}"#);
    assert!(e.starts_with("line 7: trailing comma"), "{e}");
    let e = err(r#"{"type":"ParentContacted","pupil":"P1""#);
    assert!(e.starts_with("line 7: EOF while parsing"), "{e}");
    // An over-long string, named by its path however deep it is.
    let long = "y".repeat(casebook_engine::import::MAX_FIELD_BYTES + 1);
    let e = err(&incident(&format!(r#"[{{"pupil":"P2","role":"{long}"}}]"#)));
    assert!(
        e.starts_with("line 7: field data.participants[0].role: 65537 bytes, over the limit"),
        "{e}"
    );
    // The sealed prefix, in a value however deep, or in PupilRegistered's
    // pupil (filled from the line's).
    let e = err(&format!(
        r#"{{"type":"ParentContacted",{head},"data":{{"method":"phone","summary":"see sealed:v1:AAAA"}}}}"#
    ));
    assert!(e.contains("reserved for sealed fields"), "{e}");
    let e = err(&incident(r#"[{"pupil":"sealed:v1:P2","role":"target"}]"#));
    assert!(e.contains("reserved for sealed fields"), "{e}");
    let e = err(
        r#"{"type":"PupilRegistered","pupil":"sealed:v1:X","occurred_at":"2026-09-15T10:20:00Z","actor":"S1","data":{"name":"A B","date_of_birth":"2015-01-02","year_group":5}}"#,
    );
    assert!(
        e.contains("reserved for sealed fields") || e.contains("field pupil"),
        "{e}"
    );
    // Types casebook writes itself, refused by name whichever way the
    // line is read.
    let e = err(&format!(
        r#"{{"type":"RecordViewed",{head},"data":{{"purpose":"x"}}}}"#
    ));
    assert!(
        e.starts_with("line 7: RecordViewed is written by casebook itself"),
        "{e}"
    );
    let e = err(&format!(
        r#"{{"type":"StaffRegistered",{head},"data":{{"staff":"S1","name":"A B"}}}}"#
    ));
    assert!(e.contains("it cannot be imported or recorded"), "{e}");
    // A prefix cut short, or split over two fields, is text like any other.
    let ok = line(&format!(
        r#"{{"type":"ParentContacted",{head},"data":{{"method":"sealed:v1","summary":":AAAA sealed:v2:"}}}}"#
    ))
    .unwrap();
    assert_eq!(ok.event.type_name(), "ParentContacted");
    assert_eq!(ok.line, 7);
    assert_eq!(ok.pupil, "P1");
}

/// `parse_line` reads most lines straight to their event (`plain_line`:
/// no `serde_json::Value` of `data`, no path tracked) and the rest the
/// general way. For every line of a demo school year, and for variants of
/// each that the straight reading must leave to the general one (a `\u`
/// escape, the sealed prefix written out or escaped, a repeated key, a
/// number given as text, an over-long string, a `data` that is not an
/// object), the result is exactly the general reading's: the same line,
/// or the same error.
#[test]
fn reading_a_line_straight_to_its_event_is_the_general_reading() {
    use casebook_cli::demo::{generate, DemoOptions};
    use casebook_engine::import::parse_line_general;

    let opts = DemoOptions {
        pupils: 30,
        seed: 11,
        academic_year: 2024,
        school: "read".into(),
    };
    let same = |n: usize, text: &str| {
        let fast = parse_line(n, text).map_err(|e| e.to_string());
        let general = parse_line_general(n, text).map_err(|e| e.to_string());
        assert_eq!(fast, general, "line {n}: {text}");
        fast.is_ok()
    };
    let (mut lines, mut accepted, mut refused) = (0usize, 0usize, 0usize);
    let mut types = HashSet::new();
    for pupil in generate(&opts) {
        for e in &pupil.events {
            types.insert(e.event.type_name());
            let data = e.event.data_json();
            let line = json!({
                "type": e.event.type_name(),
                "pupil": pupil.reference,
                "occurred_at": e.occurred_at.to_rfc3339(),
                "actor": e.actor,
                "data": data,
                "id": e.event_id,
            });
            let text = line.to_string();
            lines += 1;
            assert!(same(lines, &text), "a demo line is refused: {text}");
            let mut variants = Vec::new();
            // The first string of `data` (if any) changed four ways, and
            // the whole `data` changed three.
            let first = data
                .as_object()
                .and_then(|m| m.iter().find(|(_, v)| v.is_string()))
                .map(|(k, _)| k.clone());
            if let Some(k) = &first {
                for s in [
                    "A\u{e9}\u{2014}b \\ \"q\" /".to_string(),
                    "sealed:v1:AAAA".to_string(),
                    "x".repeat(casebook_engine::import::MAX_FIELD_BYTES + 1),
                ] {
                    let mut l = line.clone();
                    l["data"][k] = json!(s);
                    variants.push(l.to_string());
                }
                // The prefix behind a `\u` escape: not in the text as
                // written.
                let mut l = line.clone();
                l["data"][k] = json!("SEALED");
                variants.push(
                    l.to_string()
                        .replace("\"SEALED\"", "\"\\u0073ealed:v1:AAAA\""),
                );
                // The key twice.
                let text_data = data.to_string();
                let needle = format!("{}:", json!(k));
                let twice = text_data.replacen(&needle, &format!("{needle}\"other\",{needle}"), 1);
                variants.push(text.replacen(&text_data, &twice, 1));
            }
            let mut l = line.clone();
            l["data"] = json!([1, 2]);
            variants.push(l.to_string());
            if let Some(m) = data.as_object() {
                if let Some((k, _)) = m.iter().find(|(_, v)| v.is_number()) {
                    let mut l = line.clone();
                    l["data"][k] = json!("3");
                    variants.push(l.to_string());
                }
            }
            for v in variants {
                lines += 1;
                if same(lines, &v) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    assert!(lines > 10_000, "{lines}");
    assert!(types.len() >= 20, "{types:?}");
    assert!(accepted > 1_000 && refused > 1_000, "{accepted} {refused}");
}

// ---- pupils' stored histories -------------------------------------------------

/// Pupils of [`stored_histories_are_read_a_slice_at_a_time_and_corrections_read_their_entries`],
/// each registered with [`MARK_DAYS`] days of marks.
const HISTORY_PUPILS: usize = 300;
const MARK_DAYS: u64 = 60;

/// An import line of pupil `pupil` (`H0000`...), at 09:00 on `day`.
fn history_line(pupil: usize, t: &str, day: &str, data: Value, id: u128) -> Value {
    json!({"type": t, "pupil": format!("H{pupil:04}"), "occurred_at": format!("{day}T09:00:00Z"),
           "actor": "S017", "data": data, "id": Uuid::from_u128(id)})
}

fn parsed(lines: &[Value]) -> Vec<ImportLine> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| parse_line(i + 1, &l.to_string()).expect("valid line"))
        .collect()
}

fn mark_day(day: u64) -> String {
    (chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap() + chrono::Days::new(day)).to_string()
}

/// Id of pupil `p`'s mark of `day` (am, or pm).
fn mark_id(p: usize, day: u64, pm: bool) -> u128 {
    (p as u128) * 1_000 + 2 + u128::from(day) * 2 + u128::from(pm)
}

/// Pupil `p`'s stored history: registration, a mark for both sessions of
/// [`MARK_DAYS`] days; pupil 0 two suspensions of 20 days (ids 900,001
/// and 900,002); pupils 1 and [`HISTORY_PUPILS`] − 1 a correction of
/// their first mark (their streams are then folded with every entry; the
/// last pupil's in the second of the two halves a multi-threaded
/// runtime folds on two threads).
fn stored_history() -> Vec<Value> {
    let mut lines = Vec::new();
    for p in 0..HISTORY_PUPILS {
        lines.push(history_line(
            p,
            "PupilRegistered",
            "2025-09-01",
            json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}),
            (p as u128) * 1_000 + 1,
        ));
        for day in 0..MARK_DAYS {
            for (pm, session) in [(false, "am"), (true, "pm")] {
                lines.push(history_line(
                    p,
                    "AttendanceMarked",
                    &mark_day(day),
                    json!({"date": mark_day(day), "session": session, "code": "/"}),
                    mark_id(p, day, pm),
                ));
            }
        }
    }
    for (id, start) in [(900_001, "2025-10-01"), (900_002, "2025-11-03")] {
        lines.push(history_line(
            0,
            "SuspensionIssued",
            start,
            json!({"days": 20.0, "reason_code": "PD", "start_date": start}),
            id,
        ));
    }
    for (p, id) in [(1, 900_003), (HISTORY_PUPILS - 1, 900_004)] {
        lines.push(correction_line(
            p,
            mark_id(p, 0, false),
            json!({"code": "L"}),
            id,
        ));
    }
    lines
}

fn correction_line(pupil: usize, of: u128, changes: Value, id: u128) -> Value {
    history_line(
        pupil,
        "EntryCorrected",
        "2025-12-01",
        json!({"event": Uuid::from_u128(of), "changes": changes, "reason": "Recorded wrongly"}),
        id,
    )
}

fn suspension_line(days: f64, id: u128) -> Value {
    history_line(
        0,
        "SuspensionIssued",
        "2025-12-01",
        json!({"days": days, "reason_code": "PD", "start_date": "2025-12-01"}),
        id,
    )
}

/// The import planner folds each pupil's stored history into the facts
/// only (no entry kept for each stored event), reading the streams of a
/// batch's pupils a slice at a time; a correction line reads its pupil's
/// entries then and is judged against every one of them, and the lines
/// after it against the corrected facts. The same through `add`,
/// `add_many` and the pipeline, on every engine.
#[test]
fn stored_histories_are_read_a_slice_at_a_time_and_corrections_read_their_entries() {
    let rt = crate::rt();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let logs: Vec<(&str, Arc<dyn EventStore>)> = vec![
        (
            "segment",
            casebook_engine::store::segment::SegmentStore::open(dirs.0.path(), true)
                .expect("open store")
                .log(SCHOOL)
                .expect("open log"),
        ),
        (
            "sled",
            casebook_engine::store::sled::SledStore::open(dirs.1.path(), true)
                .expect("open store")
                .log(SCHOOL)
                .expect("open log"),
        ),
    ];
    // A new mark for every pupil (all of them read), a correction of each
    // kind, and lines after a correction.
    let every_pupil: Vec<Value> = (0..HISTORY_PUPILS)
        .map(|p| {
            let day = mark_day(MARK_DAYS);
            history_line(
                p,
                "AttendanceMarked",
                &day,
                json!({"date": day, "session": "am", "code": "/"}),
                2_000_000 + p as u128,
            )
        })
        .collect();
    type Case = (&'static str, Vec<Value>, Result<usize, &'static str>);
    let cases: Vec<Case> = vec![
        ("a mark for every pupil", every_pupil, Ok(HISTORY_PUPILS)),
        (
            "30 days for the first suspension: 50 in the year",
            vec![correction_line(
                0,
                900_001,
                json!({"days": 30.0}),
                3_000_001,
            )],
            Err("line 1: data.changes: with this correction, the later entry SuspensionIssued"),
        ),
        (
            "a mark moved onto a session already marked",
            vec![correction_line(
                0,
                mark_id(0, 0, false),
                json!({"date": mark_day(1)}),
                3_000_002,
            )],
            Err("is already marked for this pupil"),
        ),
        (
            "22 days, then 3.5 more: 45.5",
            vec![
                correction_line(0, 900_001, json!({"days": 22.0}), 3_000_003),
                suspension_line(3.5, 3_000_004),
            ],
            Err("line 2: data.days: 3.5 more days would bring"),
        ),
        (
            "22 days, then 3 more: 45",
            vec![
                correction_line(0, 900_001, json!({"days": 22.0}), 3_000_005),
                suspension_line(3.0, 3_000_006),
            ],
            Ok(2),
        ),
        (
            "a correction of a stream that holds one, and a second of the same entry",
            vec![
                correction_line(1, mark_id(1, 1, true), json!({"code": "M"}), 3_000_007),
                correction_line(1, mark_id(1, 0, false), json!({"code": "I"}), 3_000_008),
            ],
            Ok(2),
        ),
        (
            "a correction of an entry planned in the same file, twice",
            vec![
                suspension_line(1.0, 3_000_009),
                correction_line(0, 3_000_009, json!({"days": 5.0}), 3_000_010),
                correction_line(0, 3_000_009, json!({"days": 6.0}), 3_000_011),
            ],
            Err("line 3: data.changes: with this correction, the corrected SuspensionIssued"),
        ),
    ];
    for (engine, log_arc) in &logs {
        let log = log_arc.as_ref();
        rt.block_on(async {
            let mut planner = Planner::new(log, SCHOOL, now());
            planner
                .add_many(parsed(&stored_history()))
                .await
                .expect("valid history");
            log.append_atomic(planner.finish().requests)
                .await
                .expect("append history");
        });
        for (what, lines, want) in &cases {
            let lines = parsed(lines);
            let single = rt.block_on(one_by_one(log, lines.clone()));
            let counting =
                CountsVisits(Arc::clone(log_arc), Default::default(), Default::default());
            let batch = rt.block_on(batched(&counting, lines.clone(), &[]));
            assert_eq!(single, batch, "{engine}: {what}");
            // The streams were read a slice at a time, each slice about
            // 32,768 events or fewer and at most twice the one before;
            // on a multi-threaded runtime, 300 streams are folded in two
            // halves on two threads (64, then the other 86, in each half:
            // 4 slices, and the streams of pupils 1 and 299, which hold a
            // correction, again, one from each half); the streams of the
            // pupils of correction lines were read with their entries,
            // none again on its own.
            let CountsVisits(_, calls, reads) = counting else {
                unreachable!()
            };
            let calls = calls.into_inner().unwrap();
            if *what == "a mark for every pupil" {
                let corrected = 1 + 2 * MARK_DAYS as usize + 1;
                let stored = stored_history().len() + 2 * corrected;
                assert_eq!(calls.len(), 5, "{engine}: {calls:?}");
                assert_eq!(
                    calls.iter().sum::<usize>(),
                    stored,
                    "{engine}: every stream once, pupils 1 and 299's twice"
                );
            }
            assert!(
                calls.iter().all(|&n| n <= 32_768 + 200),
                "{engine}: {calls:?}"
            );
            assert_eq!(
                reads.into_inner(),
                0,
                "{engine}: {what}: a stream read on its own"
            );
            match (want, &single) {
                (Ok(events), Ok(plan)) => assert_eq!(plan.1, *events, "{engine}: {what}"),
                (Err(text), Err(e)) => assert!(e.contains(text), "{engine}: {what}: {e}"),
                (want, got) => panic!("{engine}: {what}: wanted {want:?}, got {got:?}"),
            }
        }
        // The pipeline: the correction's batch is planned while the batch
        // before it (every pupil, pupil 0 among them) is being written.
        // Pupil 1, whose stored stream holds a correction, is folded with
        // its entries and let go of them in the first batch, and carried:
        // its correction in the third batch reads them again.
        let batches = vec![
            parsed(&cases[0].1),
            parsed(&cases[4].1),
            parsed(&[correction_line(
                1,
                mark_id(1, 2, false),
                json!({"code": "M"}),
                3_000_013,
            )]),
            parsed(&[correction_line(
                0,
                900_001,
                json!({"days": 23.0}),
                3_000_012,
            )]),
        ];
        let (_, counts, error) = rt.block_on(pipelined(log, batches));
        assert_eq!(counts, (HISTORY_PUPILS as u64 + 3, 0), "{engine}");
        let error = error.expect("the fourth batch refused");
        assert!(
            error.contains(
                "line 1: data.changes: with this correction, the later entry SuspensionIssued"
            ),
            "{engine}: {error}"
        );
        let head = rt.block_on(log.head()).expect("head").position;
        let history = stored_history().len();
        assert_eq!(head as usize, history + HISTORY_PUPILS + 3, "{engine}");
        // Lines without an `id`: the plan's ids are all minted, and it is
        // appended as such (`append_atomic_minted`); one line with an id
        // and the plan is not.
        let day = mark_day(MARK_DAYS);
        let register: Vec<Value> = (0..HISTORY_PUPILS)
            .map(|p| {
                let mut line = history_line(
                    p,
                    "AttendanceMarked",
                    &day,
                    json!({"date": day, "session": "pm", "code": "/"}),
                    0,
                );
                line.as_object_mut().unwrap().remove("id");
                line
            })
            .collect();
        rt.block_on(async {
            let mut planner = Planner::new(log, SCHOOL, now());
            planner.add_many(parsed(&register)).await.expect("valid");
            let plan = planner.finish();
            assert!(plan.minted, "{engine}");
            assert_eq!(plan.events, HISTORY_PUPILS, "{engine}");
            let mut with_id = Planner::new(log, SCHOOL, now());
            let mut lines = parsed(&register);
            lines[7].id = Some(Uuid::from_u128(4_000_000));
            with_id.add_many(lines).await.expect("valid");
            assert!(!with_id.finish().minted, "{engine}");
            log.append_atomic_minted(plan.requests)
                .await
                .expect("append");
        });
        let after = rt.block_on(log.head()).expect("head").position;
        assert_eq!(after, head + HISTORY_PUPILS as u64, "{engine}");
    }
}

// ---- the facts checkpoint ---------------------------------------------------

/// Pupils besides the generated ones, so that an import folds
/// `known::MIN_PUPILS` stored pupils at once and reads the checkpoint.
const FILLERS: u32 = casebook_engine::known::MIN_PUPILS as u32;

/// One line of a generated pupil (0..5), with its id: `kind` 0..=3 as
/// [`content`] (register marks also on 10 November, the fillers'
/// marked day before the checkpoint), 4 a correction of the stored or earlier suspension or mark
/// `targets[variant]` (a suspension cut to one day, which makes room
/// under the 45-day limit; a mark made an absence).
fn known_line(pupil: u8, kind: u8, variant: u8, id: Uuid, targets: &[(Uuid, bool)]) -> Value {
    let mut line = match kind {
        2 if variant % 4 == 3 => {
            json!({"type": "AttendanceMarked", "pupil": format!("P{pupil:04}"),
            "occurred_at": "2025-11-10T08:45:00Z", "actor": "S017",
            "data": {"date": "2025-11-10", "session": if variant < 4 { "am" } else { "pm" }, "code": "/"}})
        }
        4 if !targets.is_empty() => {
            let (target, suspension) = targets[variant as usize % targets.len()];
            let changes = match suspension {
                true => json!({"days": 1.0}),
                false => json!({"code": "N"}),
            };
            json!({"type": "EntryCorrected", "pupil": format!("P{pupil:04}"),
                "occurred_at": "2026-01-05T09:00:00Z", "actor": "S017",
                "data": {"event": target, "changes": changes, "reason": "entered wrongly"}})
        }
        _ => content(pupil, kind.min(3), variant),
    };
    line["id"] = json!(id);
    line
}

/// Every filler pupil's line: its registration, or its mark on `date`.
fn filler_lines(date: Option<&str>, first_id: u128) -> Vec<Value> {
    (0..FILLERS)
        .map(|n| {
            let pupil = format!("F{n:04}");
            let mut line = match date {
                None => json!({"type": "PupilRegistered", "pupil": pupil,
                    "occurred_at": "2025-09-03T08:30:00Z", "actor": "S017",
                    "data": {"name": "Filler Testpupil", "date_of_birth": "2012-05-01",
                        "year_group": 9, "class": "9F", "site": "Main"}}),
                Some(date) => json!({"type": "AttendanceMarked", "pupil": pupil,
                    "occurred_at": format!("{date}T08:45:00Z"), "actor": "S017",
                    "data": {"date": date, "session": "am", "code": "/"}}),
            };
            line["id"] = json!(Uuid::from_u128(first_id + u128::from(n)));
            line
        })
        .collect()
}

/// Each generated op as a line (ids from `first_id`); the suspensions and
/// marks among them join `targets` for later corrections.
fn known_ops(ops: &[(u8, u8, u8)], first_id: u128, targets: &mut Vec<(Uuid, bool)>) -> Vec<Value> {
    ops.iter()
        .enumerate()
        .map(|(i, &(pupil, kind, variant))| {
            let id = Uuid::from_u128(first_id + i as u128);
            let line = known_line(pupil, kind, variant, id, targets);
            match line["type"].as_str() {
                Some("SuspensionIssued") => targets.push((id, true)),
                Some("AttendanceMarked") => targets.push((id, false)),
                _ => {}
            }
            line
        })
        .collect()
}

/// Stores each line on its own, those refused left out: a history with
/// its refusals skipped.
async fn store_each(log: &dyn EventStore, lines: &[Value]) {
    for l in parsed(lines) {
        let mut planner = Planner::new(log, SCHOOL, now());
        if planner.add(l).await.is_ok() {
            log.append_atomic(planner.finish().requests)
                .await
                .expect("append a valid line");
        }
    }
}

/// The lines planned by one planner, with or without the facts
/// checkpoint; the plan's facts and note besides.
async fn planned(
    log: &dyn EventStore,
    lines: Vec<ImportLine>,
    known: bool,
) -> (
    Result<Normal, String>,
    Option<casebook_engine::known::Gathered>,
    Option<String>,
) {
    let ids: HashSet<Uuid> = lines.iter().filter_map(|l| l.id).collect();
    let mut planner = Planner::new(log, SCHOOL, now());
    if known {
        planner = planner.with_known_facts();
    }
    if let Err(e) = planner.add_many(lines).await {
        return (Err(e.to_string()), None, None);
    }
    let mut plan = planner.finish();
    let (facts, note) = (plan.known.take(), plan.known_note.take());
    (Ok(normalize(plan, &ids)), facts, note)
}

/// The events a visit of the planner's look-ups handed on, in all.
fn events_visited(counting: Wrapped) -> usize {
    let CountsVisits(_, calls, _) = counting else {
        unreachable!()
    };
    calls.into_inner().unwrap().iter().sum()
}

fn generated_op() -> impl Strategy<Value = (u8, u8, u8)> {
    (0u8..5, 1u8..5, 0u8..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// An import whose planner starts its pupils from the facts checkpoint
    /// plans exactly what one that folds every pupil from its first event
    /// plans (the same requests, or the same first error), whatever was
    /// stored before the checkpoint and after it: marks of the
    /// checkpoint's own day, suspensions up to the 45-day limit, and
    /// corrections of either, before or after it (a correction after it
    /// is folded again from the pupil's first event). And it reads fewer
    /// events: the fillers' histories not at all.
    #[test]
    fn a_planner_on_the_facts_checkpoint_plans_as_one_without(
        before in proptest::collection::vec(generated_op(), 0..24),
        after in proptest::collection::vec(generated_op(), 0..16),
        probe in proptest::collection::vec(generated_op(), 0..12),
        engine in prop_oneof![Just(Engine::Segment), Just(Engine::Sled)],
    ) {
        let rt = crate::rt();
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), SCHOOL, engine, true).expect("open log");
        let mut targets = Vec::new();
        let (single, with) = rt.block_on(async {
            // Every pupil registered, then the history before.
            let mut first = filler_lines(None, 10_000);
            first.extend((0..5u8).map(|p| known_line(p, 0, p, Uuid::from_u128(20_000 + u128::from(p)), &[])));
            let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
            planner.add_many(parsed(&first)).await.expect("registrations");
            log.append_atomic(planner.finish().requests).await.expect("append registrations");
            store_each(log.as_ref(), &known_ops(&before, 30_000, &mut targets)).await;
            // The day the checkpoint is saved after: every pupil marked.
            let mut day = filler_lines(Some("2025-11-10"), 40_000);
            day.extend((0..5u8).map(|p| known_line(p, 1, p, Uuid::from_u128(50_000 + u128::from(p)), &[])));
            let mut planner = Planner::new(log.as_ref(), SCHOOL, now()).with_known_facts();
            let saved = match planner.add_many(parsed(&day)).await {
                Ok(()) => {
                    let mut plan = planner.finish();
                    let facts = plan.known.take().expect("a checkpoint to save");
                    assert_eq!(facts.len(), FILLERS as usize + 5);
                    assert_eq!(plan.known_note, None);
                    log.append_atomic(plan.requests).await.expect("append the day");
                    casebook_engine::known::save(log.as_ref(), facts).await.expect("save");
                    true
                }
                Err(_) => false,
            };
            store_each(log.as_ref(), &known_ops(&after, 60_000, &mut targets)).await;
            // The probe: a second day for every filler, then the generated
            // lines, planned both ways.
            let mut lines = filler_lines(Some("2025-11-11"), 70_000);
            lines.extend(known_ops(&probe, 80_000, &mut targets));
            let without = CountsVisits(Arc::clone(&log), Default::default(), Default::default());
            let (single, _, _) = planned(&without, parsed(&lines), false).await;
            let with_known = CountsVisits(Arc::clone(&log), Default::default(), Default::default());
            let (with, facts, note) = planned(&with_known, parsed(&lines), true).await;
            assert_eq!(note, None, "the checkpoint is usable");
            let (read_without, read_with) = (events_visited(without), events_visited(with_known));
            if saved {
                // Each filler's two stored events read without it, none
                // with it.
                assert!(read_with + 2 * FILLERS as usize <= read_without, "{read_with} against {read_without}");
            }
            if let (Ok(_), Some(facts)) = (&with, facts) {
                assert_eq!(facts.len(), FILLERS as usize + 5, "every pupil's facts, old and new");
            }
            (single, with)
        });
        prop_assert_eq!(single, with);
    }
}

/// A file imported again, every line a duplicate, leaves every pupil's
/// facts in the checkpoint it saves: the pupils read to start their folds
/// and planned by no line are put back (until session bi they were left
/// out, and the next import read each of their whole histories). The
/// next import then reads none of them.
#[test]
fn a_file_imported_again_keeps_every_pupils_facts_in_the_checkpoint() {
    for engine in [Engine::Segment, Engine::Sled] {
        let rt = crate::rt();
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), SCHOOL, engine, true).expect("open log");
        rt.block_on(async {
            let import = |lines: Vec<Value>| {
                let log = Arc::clone(&log);
                async move {
                    let mut planner = Planner::new(log.as_ref(), SCHOOL, now()).with_known_facts();
                    planner.add_many(parsed(&lines)).await.expect("valid lines");
                    let mut plan = planner.finish();
                    let facts = plan.known.take();
                    let duplicates = plan.duplicates;
                    if !plan.requests.is_empty() {
                        log.append_atomic(plan.requests).await.expect("append");
                    }
                    if let Some(facts) = &facts {
                        assert_eq!(facts.len(), FILLERS as usize, "{engine:?}");
                    }
                    if let Some(facts) = facts {
                        casebook_engine::known::save(log.as_ref(), facts)
                            .await
                            .expect("save");
                    }
                    duplicates
                }
            };
            import(filler_lines(None, 10_000)).await;
            // Sixteen days of every pupil's marks (the planner's first
            // batch of `PREFETCH_LINES`), and one pupil's mark on a
            // seventeenth (its second batch, before which the first's
            // pupils are put back).
            let days: Vec<String> = [
                3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 17, 18, 19, 20, 21, 24, 25,
            ]
            .iter()
            .map(|d| format!("2025-11-{d:02}"))
            .collect();
            let mut file: Vec<Value> = days[..16]
                .iter()
                .enumerate()
                .flat_map(|(i, d)| filler_lines(Some(d), 40_000 + 1_000 * i as u128))
                .collect();
            assert_eq!(file.len(), casebook_engine::import::PREFETCH_LINES);
            file.push(filler_lines(Some(&days[16]), 60_000).swap_remove(0));
            assert_eq!(import(file.clone()).await, 0);
            assert_eq!(import(file.clone()).await, file.len(), "{engine:?}");
            // The next day: every pupil started from the checkpoint.
            let counting = CountsVisits(Arc::clone(&log), Default::default(), Default::default());
            let (next, _, note) = planned(
                &counting,
                parsed(&filler_lines(Some("2025-11-26"), 70_000)),
                true,
            )
            .await;
            assert!(next.is_ok() && note.is_none(), "{engine:?}: {note:?}");
            assert_eq!(events_visited(counting), 0, "{engine:?}");
        });
    }
}

/// A facts checkpoint is used only when it holds together and belongs to
/// the log: a damaged one, one anchored at an event the log does not hold
/// there, or one past the log's head is not used, the import says why
/// (`ImportPlan::known_note`) and plans as it would without one, and
/// what it saves after is usable again.
#[test]
fn a_facts_checkpoint_that_is_not_the_logs_is_not_used() {
    use casebook_engine::known::{self, Loaded};
    let rt = crate::rt();
    let dir = tempfile::tempdir().unwrap();
    let log = casebook_engine::store::segment::SegmentStore::open(dir.path(), true)
        .expect("open store")
        .log(SCHOOL)
        .expect("open log");
    rt.block_on(async {
        let mut planner = Planner::new(log.as_ref(), SCHOOL, now());
        planner
            .add_many(parsed(&filler_lines(None, 1_000)))
            .await
            .expect("registrations");
        log.append_atomic(planner.finish().requests)
            .await
            .expect("append");
        assert!(matches!(
            known::load(log.as_ref()).await.unwrap(),
            Loaded::None
        ));
        // No checkpoint yet: no note, and the facts gathered to save.
        let mut planner = Planner::new(log.as_ref(), SCHOOL, now()).with_known_facts();
        planner
            .add_many(parsed(&filler_lines(Some("2025-11-10"), 2_000)))
            .await
            .expect("a valid day");
        let mut plan = planner.finish();
        assert_eq!(plan.known_note, None);
        let facts = plan.known.take().expect("facts to save");
        assert_eq!(facts.len(), FILLERS as usize);
        log.append_atomic(plan.requests)
            .await
            .expect("append the day");
        known::save(log.as_ref(), facts).await.expect("save");
        let Loaded::Usable(read) = known::load(log.as_ref()).await.unwrap() else {
            panic!("the checkpoint just saved is usable");
        };
        assert_eq!(read.len(), FILLERS as usize);

        let good = log
            .load_checkpoint(known::CHECKPOINT)
            .await
            .unwrap()
            .unwrap();
        let (facts, position, hash) = known::decode(&good).expect("decodes");
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        let mut other_hash = hash;
        other_hash[0] ^= 1;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (flipped, "checksum does not match"),
            (good[..good.len() - 1].to_vec(), "checksum does not match"),
            (
                b"not a checkpoint at all, not one bit of it".to_vec(),
                "not a facts checkpoint",
            ),
            (
                known::encode(&facts, position, other_hash).unwrap(),
                "is not the one it was saved after",
            ),
            (
                known::encode(&facts, position + 10, hash).unwrap(),
                "past the log's head",
            ),
        ];
        let day = || parsed(&filler_lines(Some("2025-11-11"), 3_000));
        let (without, _, _) = planned(log.as_ref(), day(), false).await;
        for (bytes, why) in cases {
            log.save_checkpoint(known::CHECKPOINT, bytes).await.unwrap();
            match known::load(log.as_ref()).await.unwrap() {
                Loaded::Unusable(reason) => assert!(reason.contains(why), "{why}: {reason}"),
                other => panic!("{why}: {other:?}"),
            }
            let (with, facts, note) = planned(log.as_ref(), day(), true).await;
            assert_eq!(with, without, "{why}");
            assert!(note.is_some_and(|n| n.contains(why)), "{why}");
            // What it gathered is every pupil's, from its first event.
            let facts = facts.expect("facts to save");
            assert_eq!(facts.len(), FILLERS as usize, "{why}");
        }
        // Saved again, it is usable again.
        known::save_known(log.as_ref(), &read).await.unwrap();
        assert!(matches!(
            known::load(log.as_ref()).await.unwrap(),
            Loaded::Usable(_)
        ));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes, `known::decode` answers without panicking; a
    /// valid checkpoint with any byte changed is refused.
    #[test]
    fn facts_checkpoint_bytes_never_panic(
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        use casebook_engine::known;
        let _ = known::decode(&noise);
        let mut with_magic = b"CBFACTS\0".to_vec();
        with_magic.extend_from_slice(&noise);
        let _ = known::decode(&with_magic);
        let empty = known::encode(&known::KnownFacts::default(), 3, [7; 32]).unwrap();
        prop_assert!(known::decode(&empty).is_ok());
        let mut changed = empty.clone();
        let i = at % changed.len();
        changed[i] ^= flip;
        prop_assert!(known::decode(&changed).is_err());
    }
}
