//! `casebook bench`: a self-contained benchmark in a temporary directory.
//!
//! One run measures every figure of docs/performance.md on the machine it
//! runs on, each next to its own ceiling measured in the same run:
//!
//! - `fsync_per_s`: 512-byte writes to a file, each followed by
//!   `fdatasync` — the most durable single writes the filesystem allows;
//!   sampled for 2 s at the start (`fsync_per_s_at_start`), and in slices
//!   interleaved with the single appends, as many fdatasyncs before each
//!   slice of single appends as it holds: `fsync_per_s` is the interleaved rate,
//!   the ceiling at the moments the single appends ran (the disk may be
//!   shared, and its rate drifts);
//! - `raw_backend_batched_ev_s`: the same sealed envelopes the engine
//!   stores, written straight to the backend with the engine's key layout,
//!   in batches of the engine's group size, each made durable the way the
//!   engine does it — the ceiling of the import;
//! - `chain_hash_ev_s`: the log's hash chain alone (BLAKE3 of each event's
//!   previous hash and body, `envelope::chain_hash`), in a phase of its
//!   own, the last: the demo school's first [`CHAIN_HASH_EVENTS`] events
//!   (the first the raw ceiling wrote), sealed as it sealed them, untimed,
//!   and hashed again one after another on one thread: each event's hash
//!   needs the one before it, so no import of this format, on any number
//!   of cores, runs faster than this (`chain_hash_vs_raw`, and
//!   `import_vs_chain_hash`);
//! - `import_ev_s`: validation (`import::Planner`) + durable append of
//!   demo-like events in batches of the same size, pipelined
//!   (`import::Pipeline`): batch k+1 is validated while the writer thread
//!   seals, writes and fdatasyncs batch k; the clock runs from the first
//!   batch planned to the last one durable (lines generated untimed,
//!   between stretches of 8 batches with nothing in flight);
//! - `append_single_ev_s`, `append_concurrent_ev_s`: one event per
//!   append, each awaited (durable), by one writer and by W tasks on
//!   different pupils (group commit), in 5 rounds: a slice of the single
//!   appends right after as many probe fdatasyncs, then a slice of every
//!   writer's appends (each round kept in the JSON's `append_rounds`);
//! - `replay_ev_s`: `casebook rebuild` of every school-wide projection from
//!   the log, against `raw_scan_decode_ev_s` (backend scan + full decode);
//! - `timeline_p50_us`, `timeline_p99_us`: `chronology_of` + the JSON
//!   document of `casebook timeline` for 1,000 random pupils;
//! - `verify_ev_s`: `casebook verify` of the whole log (chain, content
//!   hashes, index), and `verify_vs_raw` against `raw_scan_decode_ev_s`;
//! - `register_import_lines`, `register_import_ms`: a day's register
//!   for every pupil of the populated store, imported as `casebook import`
//!   imports a file (the phase's peak: what it holds of their history),
//!   which saves the planner's facts checkpoint (`casebook_engine::known`)
//!   when it folds 256 pupils or more; the store closed and opened first
//!   as `casebook import` opens it (`register_open_ms`, and the index it
//!   holds, `register_index_mb`), untimed;
//! - `register_again_ms`: last, the same day's afternoon register, whose
//!   planner starts each pupil from that checkpoint (with fewer pupils,
//!   as the first: every history read again), in an open of its own as a
//!   second `casebook import` would be;
//! - `peak_rss_mb` (VmHWM; each phase's own in `phase_peak_rss_mb`),
//!   `disk_bytes_per_event`, `payload_bytes_per_event`, and the ratios.
//!
//! Events come from the demo generator (`demo.rs`): a school year, pupil by
//! pupil, cut at N events. Generating them is never timed.
//!
//! Backends plug in through [`Backend`]: open a fresh engine store, open a
//! raw ceiling writer, scan + decode raw.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use casebook_engine::envelope::{
    chain_hash, encode_payload, Hash, NewEvent, StreamId, GENESIS_HASH, HASH_LEN,
};
use casebook_engine::event::{AttendanceMarked, CaseEvent, Session, CURRENT_SCHEMA};
use casebook_engine::import::{ImportError, ImportLine, Pipeline, Planner};
use casebook_engine::store::segment::{thread_cpu_ns, WriterTimes};
use casebook_engine::store::sled::{SledLog, SledStore, MAX_GROUP_EVENTS};
use casebook_engine::store::sled_raw::{scan_decode, RawChain, RawEnvelope, RawSledLog};
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion};
use chrono::Utc;
use clap::ValueEnum;
use serde_json::{json, Map, Value};

use crate::demo::{default_academic_year, generate, DemoEvent, DemoOptions, DemoPupil};
use crate::run::Ctx;
use crate::{Failure, Format};

/// Events per import batch and per raw batch: the engine's group size, so
/// the import and its ceiling write the same batches.
pub const BATCH_EVENTS: usize = MAX_GROUP_EVENTS;

/// Import batches generated (untimed) ahead of each timed stretch of the
/// pipelined import (each stretch's last batch is planned in it and handed
/// to the writer as the next stretch begins, so no timed stretch starts or
/// ends with the pipeline empty). The lines held ahead
/// are the bench's own memory, not the engine's: 8 batches hold ~2 MB,
/// where 32 (until session aq) held 8.6 MB of the import phase's peak.
const PIPELINE_BATCHES: usize = 8;

/// Rounds of the append phases: each a slice of the single appends after as
/// many probe fdatasyncs, then a slice of every concurrent writer's appends.
const APPEND_ROUNDS: usize = 5;

/// Timelines read (random pupils, with repetition when there are fewer).
const TIMELINE_READS: usize = 1_000;

/// The 512-byte record of the fsync loop.
const FSYNC_RECORD: usize = 512;

/// Bounds of `--events`.
const MIN_EVENTS: u64 = 1_000;
const MAX_EVENTS: u64 = 100_000_000;

/// Backends `bench` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// The embedded sled store.
    Sled,
    /// PostgreSQL (`--database-url`): scratch databases, dropped at the end
    /// (`bench_pg.rs`).
    Postgres,
    /// casebook's own segment log (`bench_segment.rs`).
    Segment,
}

/// What `casebook bench` was asked.
pub(crate) struct BenchArgs {
    pub events: u64,
    pub writers: usize,
    pub batch_events: Option<usize>,
    pub backend: BenchBackend,
    pub dir: Option<PathBuf>,
    /// Whether the import pipeline seals batches ahead (where the engine
    /// can use them).
    pub seal_ahead: bool,
    /// Whether it seals each batch ahead whole, not only until the batch
    /// in flight is answered.
    pub seal_whole: bool,
}

// ---- backends ---------------------------------------------------------------

/// A backend under test: how to open a fresh engine store and a raw ceiling
/// writer in `dir`. A second backend adds an implementation.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// About how many bytes a run needs under `--dir` an event, at its
    /// most (the raw copy is deleted before the engine's import: the
    /// engine's log, its index snapshot, the views' checkpoints): checked
    /// against the free space before anything is written
    /// ([`check_room`]). `None` where the run's data is elsewhere (a
    /// server's).
    fn disk_needed_per_event(&self) -> Option<u64>;
    /// A fresh, empty engine store in `dir` and its log of `school`.
    async fn open_engine(&self, dir: &Path, school: &str) -> Result<Box<dyn Engine>, Failure>;
    /// A fresh raw writer in `dir` (a directory of its own).
    async fn open_raw(&self, dir: &Path, school: &str) -> Result<Box<dyn RawWriter>, Failure>;
    /// Removes what the run left outside its temporary directory.
    async fn finish(&self) -> Result<(), Failure> {
        Ok(())
    }
    /// Closes `engine` (opened in `dir` by `open_engine`, no other handle
    /// to it left) and opens it again, timed, where opening costs something
    /// that grows with the log (the segment engine's index): see
    /// [`Reopened`]. The engine returned is opened as a command that only
    /// reads opens it (`casebook rebuild`, the caseload, the reports). On
    /// sled and PostgreSQL: `engine` as it is, `None`.
    async fn reopen(
        &self,
        engine: Box<dyn Engine>,
        _dir: &Path,
        _school: &str,
    ) -> Result<(Box<dyn Engine>, Option<Reopened>), Failure> {
        Ok((engine, None))
    }
    /// Closes `engine` (from [`Backend::reopen`]) and opens it as a
    /// rebuild, the caseload, the reports and a timeline do, timed: the
    /// open (ms) and the index it holds (bytes). On sled and PostgreSQL:
    /// `engine` as it is, `None`.
    async fn open_sparse(
        &self,
        engine: Box<dyn Engine>,
        _dir: &Path,
        _school: &str,
    ) -> Result<(Box<dyn Engine>, Option<(f64, u64)>), Failure> {
        Ok((engine, None))
    }
    /// Closes `engine` and opens it as `casebook record` and `import` do,
    /// the event ids left in the index snapshot: looked up there in place
    /// (a few), or, not `in_place`, read whole at their first look-up (the
    /// way before session bh). `true` when they are left in it (the
    /// segment engine, opened from a snapshot). On sled and PostgreSQL:
    /// `engine` as it is, `false`.
    async fn open_ids_left(
        &self,
        engine: Box<dyn Engine>,
        _dir: &Path,
        _school: &str,
        _in_place: bool,
    ) -> Result<(Box<dyn Engine>, bool), Failure> {
        Ok((engine, false))
    }
    /// Closes `engine` (from [`Backend::open_sparse`]) and opens it as a
    /// command that appends does, timed (ms). On sled and PostgreSQL:
    /// `engine` as it is, `None`.
    async fn open_for_appends(
        &self,
        engine: Box<dyn Engine>,
        _dir: &Path,
        _school: &str,
    ) -> Result<(Box<dyn Engine>, Option<f64>), Failure> {
        Ok((engine, None))
    }
}

/// An engine store under test.
#[async_trait]
pub(crate) trait Engine: Send + Sync {
    fn log(&self) -> Arc<dyn EventStore>;
    /// Scans the whole log straight from the backend and decodes every
    /// event fully (envelope and payload); returns the count.
    async fn raw_scan_decode(&self) -> Result<u64, Failure>;
    /// Bytes the store occupies on disk.
    async fn disk_bytes(&self) -> Result<u64, Failure>;
    /// Bytes the engine's in-memory index takes, where it has one (the
    /// segment engine; sled and PostgreSQL keep theirs on disk).
    fn index_bytes(&self) -> Option<u64> {
        None
    }
    /// Where the engine's writer spent its time so far, where it keeps
    /// that (the segment engine).
    fn writer_times(&self) -> Option<WriterTimes> {
        None
    }
    /// Whether the index holds the log's event ids (read from the
    /// snapshot, or never left there), where it can leave them (the
    /// segment engine).
    fn event_ids_held(&self) -> Option<bool> {
        None
    }
}

/// The segment engine closed and opened again after the import: the close
/// (which writes the index snapshot), an open that rebuilds the index from
/// every frame (the baseline), and an open that reads the snapshot as a
/// command that only reads does (the event ids left in it); after it, an
/// open as a rebuild, the caseload, the reports and a timeline open
/// ([`Backend::open_sparse`]), which the scan and the replay use, and the
/// timelines and appends use an open that reads the ids too
/// ([`Backend::open_for_appends`], `open_ms`).
pub(crate) struct Reopened {
    pub close_ms: f64,
    pub open_full_scan_ms: f64,
    pub open_reading_only_ms: f64,
    /// The index that open holds.
    pub index_bytes_reading_only: u64,
    /// Whether it read the snapshot (a run of fewer events than the
    /// snapshot threshold writes none).
    pub from_snapshot: bool,
    pub snapshot_bytes: Option<u64>,
}

/// The raw ceiling writer.
#[async_trait]
pub(crate) trait RawWriter: Send + Sync {
    /// Writes one batch durably, the way the engine commits one group.
    async fn write_batch(&self, events: &[RawEnvelope], recorded_us: i64) -> Result<(), Failure>;
}

fn backend(which: BenchBackend, database_url: Option<&str>) -> Result<Box<dyn Backend>, Failure> {
    Ok(match which {
        BenchBackend::Sled => Box::new(Sled),
        BenchBackend::Postgres => Box::new(crate::bench_pg::Postgres::new(database_url)?),
        BenchBackend::Segment => Box::new(crate::bench_segment::Segment),
    })
}

struct Sled;

struct SledEngine {
    dir: PathBuf,
    _store: Arc<SledStore>,
    log: Arc<SledLog>,
}

struct SledRaw(RawSledLog);

#[async_trait]
impl Backend for Sled {
    fn name(&self) -> &'static str {
        "sled"
    }

    /// An estimate above what was measured under the store after an
    /// import: 1,059 bytes an event at 100k (session ay), 1,162 at 1M
    /// (session az). No 10M run was made on sled (docs/performance.md,
    /// "How to run").
    fn disk_needed_per_event(&self) -> Option<u64> {
        Some(1_300)
    }

    async fn open_engine(&self, dir: &Path, school: &str) -> Result<Box<dyn Engine>, Failure> {
        let store = SledStore::open(dir, true)?;
        let log = store.log(school)?;
        Ok(Box::new(SledEngine {
            dir: dir.to_path_buf(),
            _store: store,
            log,
        }))
    }

    async fn open_raw(&self, dir: &Path, school: &str) -> Result<Box<dyn RawWriter>, Failure> {
        Ok(Box::new(SledRaw(RawSledLog::open(dir, school)?)))
    }
}

#[async_trait]
impl Engine for SledEngine {
    fn log(&self) -> Arc<dyn EventStore> {
        self.log.clone()
    }

    async fn raw_scan_decode(&self) -> Result<u64, Failure> {
        let mut sum = 0u64;
        let n = scan_decode(self.log.raw_tree(), |e| sum = sum.wrapping_add(e.version))?;
        std::hint::black_box(sum);
        Ok(n)
    }

    async fn disk_bytes(&self) -> Result<u64, Failure> {
        dir_bytes(&self.dir)
    }
}

#[async_trait]
impl RawWriter for SledRaw {
    async fn write_batch(&self, events: &[RawEnvelope], recorded_us: i64) -> Result<(), Failure> {
        Ok(self.0.write_batch(events, recorded_us)?)
    }
}

/// Bytes allocated on disk under `dir` (blocks, not apparent sizes).
fn dir_bytes(dir: &Path) -> Result<u64, Failure> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::Store(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Failure::Store(format!("{}: {e}", dir.display())))?;
        let meta = entry
            .metadata()
            .map_err(|e| Failure::Store(format!("{}: {e}", entry.path().display())))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

// ---- the workload -----------------------------------------------------------

/// The demo school, pupil by pupil, cut into batches of events.
struct Source {
    pupils: Box<dyn Iterator<Item = DemoPupil> + Send>,
    current: Option<(String, std::vec::IntoIter<DemoEvent>)>,
}

impl Source {
    fn new(opts: &DemoOptions) -> Source {
        Source {
            pupils: Box::new(generate(opts)),
            current: None,
        }
    }

    /// Up to `max` further events, with their pupil's reference.
    fn take(&mut self, max: usize) -> Vec<(String, DemoEvent)> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            if let Some((pupil, events)) = &mut self.current {
                if let Some(e) = events.next() {
                    out.push((pupil.clone(), e));
                    continue;
                }
            }
            match self.pupils.next() {
                Some(p) => self.current = Some((p.reference, p.events.into_iter())),
                None => break,
            }
        }
        out
    }

    /// The next whole pupil after the events taken so far.
    fn next_pupil(&mut self) -> Option<DemoPupil> {
        self.current = None;
        self.pupils.next()
    }
}

fn new_event(e: &DemoEvent) -> Result<NewEvent, Failure> {
    Ok(NewEvent {
        event_id: e.event_id,
        occurred_at: e.occurred_at,
        actor: e.actor.clone(),
        correlation_id: None,
        causation_id: None,
        event_type: e.event.type_name().into(),
        schema: CURRENT_SCHEMA,
        payload: encode_payload(&e.event).map_err(|e| Failure::Store(e.to_string()))?,
    })
}

/// Events one append of a pupil's stream, in order: (stream, version, event).
type Appends = Vec<(StreamId, u64, NewEvent)>;

fn appends_of(school: &str, pupil: &DemoPupil, max: usize) -> Result<Appends, Failure> {
    let stream = StreamId::for_pupil(school, &pupil.reference);
    pupil
        .events
        .iter()
        .take(max)
        .enumerate()
        .map(|(i, e)| Ok((stream, i as u64, new_event(e)?)))
        .collect()
}

async fn append_all(log: &dyn EventStore, appends: Appends) -> Result<u64, Failure> {
    let mut n = 0;
    for (stream, before, event) in appends {
        let expected = if before == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(before)
        };
        log.append(AppendRequest {
            stream,
            expected,
            events: vec![event],
        })
        .await?;
        n += 1;
    }
    Ok(n)
}

/// A demo event the engine refused: the bench's own error, or the store's.
fn refused(err: ImportError) -> Failure {
    match err {
        ImportError::Write(e) => Failure::from(e),
        err => Failure::Store(format!(
            "internal error: the engine refused a demo event: {err}"
        )),
    }
}

/// A session's register for every pupil, imported as `casebook import`
/// imports a file: one planner on the facts checkpoint, one atomic
/// append, then the checkpoint saved. The events planned.
async fn import_register(
    log: &dyn EventStore,
    school: &str,
    pupils: &[String],
    academic_year: i32,
    session: Session,
) -> Result<usize, Failure> {
    let register = register_lines(pupils, academic_year, Utc::now(), session);
    let mut planner = Planner::new(log, school, Utc::now()).with_known_facts();
    planner.add_many(register).await.map_err(refused)?;
    let mut plan = planner.finish();
    let (known, lines) = (plan.known.take(), plan.events);
    plan.append_to(log).await?;
    if let Some(known) = known {
        casebook_engine::known::save(log, known).await?;
    }
    Ok(lines)
}

/// A register mark (present, for `session`) for each of `pupils` on the
/// day after the last school day of `academic_year` (the demo's year,
/// whose sessions are all marked): at 08:45, or `now` if that is earlier.
fn register_lines(
    pupils: &[String],
    academic_year: i32,
    now: chrono::DateTime<Utc>,
    session: Session,
) -> Vec<ImportLine> {
    let last = crate::demo::school_days(academic_year)
        .last()
        .copied()
        .unwrap_or_else(|| now.date_naive());
    let day = last.succ_opt().unwrap_or(last);
    let at = day
        .and_hms_opt(8, 45, 0)
        .map_or(now, |t| t.and_utc())
        .min(now);
    pupils
        .iter()
        .enumerate()
        .map(|(i, pupil)| ImportLine {
            line: i + 1,
            pupil: pupil.clone(),
            occurred_at: at,
            actor: "S001".into(),
            id: None,
            school: None,
            event: CaseEvent::AttendanceMarked(AttendanceMarked {
                date: day,
                session,
                code: "/".into(),
            }),
        })
        .collect()
}

// ---- measurements -------------------------------------------------------------

fn per_s(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

/// Stored ids the bench looks up one at a time ([`id_lookups`]).
const ID_LOOKUPS: usize = 16;

/// Ids, none of them stored, the bench looks up at once ([`id_lookups`]):
/// as many as an import's planner looks up at once
/// (`import::PREFETCH_LINES`).
const ID_BATCH: usize = casebook_engine::import::PREFETCH_LINES;

/// Look-ups by id timed by [`id_lookups`].
struct IdLookups {
    /// The first look-up in place: the directory of the ids' blocks read
    /// and checked, the spot checks, its block and its frame.
    first_ms: f64,
    /// The median of the others, each alone.
    next_us: f64,
    /// The first look-up on an open that reads every id at it.
    reading_ms: f64,
    /// After the look-ups in place, [`ID_BATCH`] ids none of which is
    /// stored, looked up at once, in place (each block of the snapshot's
    /// ids they fall in read once).
    batch_ms: f64,
    /// The same batch on the open that read every id (after its first
    /// look-up, which read them).
    batch_read_ms: f64,
}

/// Looks each of `ids` up alone ([`EventStore::find_events`]) on an open
/// that leaves the ids in the snapshot and looks them up there in place,
/// then the first again on an open that reads them all at their first
/// look-up; each must be found. `None` where the backend has no such open
/// (sled, PostgreSQL) or there is no snapshot.
async fn id_lookups(
    backend: &dyn Backend,
    engine: Box<dyn Engine>,
    dir: &Path,
    school: &str,
    ids: &[uuid::Uuid],
) -> Result<(Box<dyn Engine>, Option<IdLookups>), Failure> {
    let (engine, left) = backend.open_ids_left(engine, dir, school, true).await?;
    if !left || ids.is_empty() {
        return Ok((engine, None));
    }
    let log = engine.log();
    let mut times = Vec::with_capacity(ids.len());
    for id in ids {
        let started = Instant::now();
        let found = log.find_events(std::slice::from_ref(id)).await?;
        times.push(started.elapsed());
        if !found.contains_key(id) {
            return Err(Failure::Store(format!(
                "bench: stored event {id} not found"
            )));
        }
    }
    let batch: Vec<uuid::Uuid> = (0..ID_BATCH).map(|_| uuid::Uuid::now_v7()).collect();
    let (batch_ms, found) = timed_ms(log.find_events(&batch)).await;
    absent(found?)?;
    if engine.event_ids_held() != Some(false) {
        return Err(Failure::Store(
            "bench: the batch of ids was not looked up in place".into(),
        ));
    }
    drop(log);
    let (engine, _) = backend.open_ids_left(engine, dir, school, false).await?;
    let log = engine.log();
    let started = Instant::now();
    let found = log.find_events(&ids[..1]).await?;
    let reading = started.elapsed();
    if !found.contains_key(&ids[0]) {
        return Err(Failure::Store(format!(
            "bench: stored event {} not found",
            ids[0]
        )));
    }
    let (batch_read_ms, found) = timed_ms(log.find_events(&batch)).await;
    absent(found?)?;
    drop(log);
    let first_ms = times[0].as_secs_f64() * 1e3;
    let mut next = times[1..].to_vec();
    next.sort_unstable();
    Ok((
        engine,
        Some(IdLookups {
            first_ms,
            next_us: percentile_us(&next, 0.5),
            reading_ms: reading.as_secs_f64() * 1e3,
            batch_ms,
            batch_read_ms,
        }),
    ))
}

/// What `work` gives, and how long it took (ms).
async fn timed_ms<T>(work: impl std::future::Future<Output = T>) -> (f64, T) {
    let started = Instant::now();
    let out = work.await;
    (started.elapsed().as_secs_f64() * 1e3, out)
}

/// Refuses a look-up of fresh ids that found one stored.
fn absent(
    found: std::collections::HashMap<uuid::Uuid, casebook_engine::envelope::StoredEvent>,
) -> Result<(), Failure> {
    match found.keys().next() {
        None => Ok(()),
        Some(id) => Err(Failure::Store(format!(
            "bench: a fresh id, {id}, was found stored"
        ))),
    }
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

fn io_failure(what: &str, e: std::io::Error) -> Failure {
    Failure::Store(format!("bench: {what}: {e}"))
}

/// 512-byte writes, each followed by fdatasync, for about a second: the
/// most durable single writes per second this filesystem allows.
///
/// The file is written out and synced first, then overwritten record by
/// record, so each fdatasync persists data only (no size change to
/// journal) — as a store writing into preallocated segments does.
fn fsync_loop(dir: &Path) -> Result<f64, Failure> {
    let mut probe = FsyncProbe::create(dir)?;
    let (n, took) = probe.run(50_000, Duration::from_secs(2))?;
    Ok(per_s(n, took))
}

/// A file of preallocated 512-byte records, each write of one followed by
/// `fdatasync`: data only, no size change (what a single append into a
/// preallocated segment does). Removed on drop.
struct FsyncProbe {
    path: PathBuf,
    file: std::fs::File,
    next: u64,
}

impl FsyncProbe {
    const RECORDS: u64 = 8_192;

    fn create(dir: &Path) -> Result<FsyncProbe, Failure> {
        use std::os::unix::fs::FileExt;
        let path = dir.join("fsync-probe");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_failure("fsync probe", e))?;
        let whole = vec![0u8; FSYNC_RECORD * Self::RECORDS as usize];
        file.write_all_at(&whole, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_failure("fsync probe", e))?;
        Ok(FsyncProbe {
            path,
            file,
            next: 0,
        })
    }

    /// Writes and fdatasyncs records until `max` are done or `budget` has
    /// passed (at least 50, or `max` when fewer); returns how many, and
    /// how long they took.
    fn run(&mut self, max: u64, budget: Duration) -> Result<(u64, Duration), Failure> {
        use std::os::unix::fs::FileExt;
        let record = [0x5au8; FSYNC_RECORD];
        let started = Instant::now();
        let mut n = 0u64;
        while n < max && (n < 50 || started.elapsed() < budget) {
            let at = (self.next % Self::RECORDS) * FSYNC_RECORD as u64;
            self.file
                .write_all_at(&record, at)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| io_failure("fsync probe", e))?;
            self.next += 1;
            n += 1;
        }
        Ok((n, started.elapsed()))
    }
}

impl Drop for FsyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Current and peak resident memory (VmRSS, VmHWM), in MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Peak resident memory of this process so far, in MB: the kernel's
/// (VmHWM), and the peaks it held before [`phase`] reset it.
fn peak_rss_mb() -> f64 {
    let now = rss_mb().1;
    PEAKS.lock().map_or(now, |p| p.run.max(now))
}

/// The run's memory peaks: [`phase`] resets the kernel's peak
/// (`/proc/self/clear_refs`, `5`), so that [`done`] reads the phase's own;
/// the largest of every reading is the run's (`peak_rss_mb`). Where the
/// reset is refused, each phase's peak is the process's so far, as
/// `peak_rss_mb` always was (`phase_peaks_own` says which).
struct Peaks {
    run: f64,
    phase: String,
    phases: Vec<(String, f64)>,
    own: bool,
}

static PEAKS: std::sync::Mutex<Peaks> = std::sync::Mutex::new(Peaks {
    run: 0.0,
    phase: String::new(),
    phases: Vec::new(),
    own: true,
});

/// Each phase's peak (MB), in the order run, and whether they are the
/// phases' own.
fn phase_peaks() -> (Vec<(String, f64)>, bool) {
    PEAKS
        .lock()
        .map_or((Vec::new(), false), |p| (p.phases.clone(), p.own))
}

fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// A small deterministic generator for picking pupils.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % n.max(1) as u64) as usize
    }
}

fn phase(what: &str) -> Instant {
    eprintln!("bench: {what}…");
    let peak = rss_mb().1;
    if let Ok(mut p) = PEAKS.lock() {
        // The peak since the last reading (the phase before, and what ran
        // between), kept before the kernel's is reset.
        p.run = p.run.max(peak);
        p.phase = what.to_string();
        if std::fs::write("/proc/self/clear_refs", "5").is_err() {
            p.own = false;
        }
    }
    Instant::now()
}

fn done(started: Instant, detail: String) {
    let (rss, peak) = rss_mb();
    if let Ok(mut p) = PEAKS.lock() {
        p.run = p.run.max(peak);
        let name = std::mem::take(&mut p.phase);
        p.phases.push((name, peak));
    }
    eprintln!(
        "bench:   done in {:.1}s: {detail} (RSS {rss:.0} MB, peak {peak:.0} MB in this phase)",
        started.elapsed().as_secs_f64()
    );
}

// ---- the run ----------------------------------------------------------------

/// Room a run needs beside its events' bytes (the fsync probe's file,
/// the registers, the appends). The raw ceiling's copy is deleted before
/// the engine's import, so the bytes an event cover it.
const DISK_SLACK_BYTES: u64 = 64 << 20;

/// Free bytes for an unprivileged writer on the filesystem that holds
/// `dir` (`statvfs`: `f_bavail × f_frsize`, through `fs2`, which the
/// engine already uses for its file locks), or `None` where that cannot
/// be read.
fn free_bytes(dir: &Path) -> Option<u64> {
    fs2::available_space(dir).ok()
}

/// Refuses a run of `events` that would fill the disk under `dir`
/// (`free` bytes free there) part-way, minutes in: about `per_event`
/// bytes an event and [`DISK_SLACK_BYTES`] more are needed. A free space
/// that cannot be read refuses nothing.
fn check_room(
    events: u64,
    per_event: u64,
    free: Option<u64>,
    dir: &Path,
    backend: &str,
) -> Result<(), Failure> {
    let needed = events
        .saturating_mul(per_event)
        .saturating_add(DISK_SLACK_BYTES);
    match free {
        Some(free) if free < needed => Err(Failure::BadInput(format!(
            "bench: --events {events} on the {backend} engine needs about {} free under {} \
             (about {per_event} bytes an event: the log, its index and the views' checkpoints); \
             {} is free there. Give --dir on a larger disk, or fewer --events",
            disk_size(needed),
            dir.display(),
            disk_size(free)
        ))),
        _ => Ok(()),
    }
}

/// `bytes` for a message: in GB to two places, in MB below 1 GB.
fn disk_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b => format!("{:.0} MB", b as f64 / 1e6),
    }
}

pub(crate) async fn run(ctx: &mut Ctx, args: BenchArgs) -> Result<(), Failure> {
    let format = ctx.formats("bench", &[Format::Text, Format::Json])?;
    if !(MIN_EVENTS..=MAX_EVENTS).contains(&args.events) {
        return Err(Failure::BadInput(format!(
            "--events {}: must be between {MIN_EVENTS} and {MAX_EVENTS}",
            args.events
        )));
    }
    if !(1..=4096).contains(&args.writers) {
        return Err(Failure::BadInput(format!(
            "--writers {}: must be between 1 and 4096",
            args.writers
        )));
    }
    let n = args.events;
    let w = args.writers;
    let batch_events = args.batch_events.unwrap_or(BATCH_EVENTS);
    if !(1..=MAX_GROUP_EVENTS * 16).contains(&batch_events) {
        return Err(Failure::BadInput(format!(
            "--batch-events {batch_events}: must be between 1 and {}",
            MAX_GROUP_EVENTS * 16
        )));
    }
    let school = ctx.school.clone();
    let backend = backend(args.backend, ctx.database_url())?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if let Some(per_event) = backend.disk_needed_per_event() {
        check_room(n, per_event, free_bytes(&parent), &parent, backend.name())?;
    }
    let tmp = tempfile::Builder::new()
        .prefix("casebook-bench-")
        .tempdir_in(&parent)
        .map_err(|e| io_failure(&format!("temporary directory in {}", parent.display()), e))?;
    let load_before = load_average();
    let run_started = Instant::now();

    // The demo school: about 420 events a pupil; generous in pupils (the
    // generator is lazy), plus those of the append phases.
    let single_events = (n / 100).clamp(50, 1_000) as usize;
    let per_writer = (n / (w as u64 * 20)).clamp(10, 200) as usize;
    let opts = DemoOptions {
        pupils: (n / 250) as usize + 1 + w + single_events / 10 + 16,
        seed: 42,
        academic_year: default_academic_year(ctx.today),
        school: school.clone(),
    };
    eprintln!(
        "bench: {n} events, {w} writers, batches of {batch_events}, backend {}, in {}",
        backend.name(),
        tmp.path().display()
    );

    // fsync ceiling.
    let t = phase("fsync loop (512-byte appends + fdatasync)");
    let fsync_per_s = fsync_loop(tmp.path())?;
    done(t, format!("{fsync_per_s:.0} fdatasyncs/s"));

    // Raw backend ceiling: the same envelopes, sealed outside the timer.
    let t = phase("raw backend batched writes");
    let raw_dir = tmp.path().join("raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| io_failure("raw dir", e))?;
    // `raw_cpu_us`: the raw writer's processor time an event (it writes on
    // this thread).
    let (raw_ev_s, payload_bytes, case_payload_bytes, raw_cpu_us) = {
        let raw = backend.open_raw(&raw_dir, &school).await?;
        let mut source = Source::new(&opts);
        let mut chain = RawChain::default();
        let mut timed = Duration::ZERO;
        let mut cpu_ns = 0u64;
        let mut bytes = 0u64;
        let mut case_bytes = 0u64;
        while chain.position() < n {
            let want = batch_events.min((n - chain.position()) as usize);
            let chunk = source.take(want);
            if chunk.is_empty() {
                break;
            }
            let recorded_at = Utc::now();
            let (batch, payloads) = seal_chunk(&mut chain, &school, &chunk, recorded_at)?;
            case_bytes += payloads;
            bytes += batch.iter().map(|s| s.bytes.len() as u64).sum::<u64>();
            let (started, cpu) = (Instant::now(), thread_cpu_ns());
            raw.write_batch(&batch, recorded_at.timestamp_micros())
                .await?;
            timed += started.elapsed();
            cpu_ns += thread_cpu_ns().saturating_sub(cpu);
        }
        if chain.position() < n {
            return Err(Failure::Store(format!(
                "bench: the demo school gave only {} of {n} events",
                chain.position()
            )));
        }
        (
            per_s(n, timed),
            bytes as f64 / n as f64,
            case_bytes as f64 / n as f64,
            cpu_ns as f64 / 1e3 / n as f64,
        )
    };
    let _ = std::fs::remove_dir_all(&raw_dir);
    done(t, format!("{raw_ev_s:.0} events/s"));

    // Import through the engine: validation + durable append of every
    // event, batch by batch, through `import::Pipeline`: batch k+1 is
    // validated (`Planner` work) on this thread while the store's writer
    // thread seals, writes and fdatasyncs batch k. The lines are generated
    // untimed, PIPELINE_BATCHES batches at a time. Each round's clock stops
    // once its last batch is planned and the batch before it is durable
    // (`Pipeline::plan` waits for it): nothing is in flight while the next
    // round is generated, so nothing timed overlaps untimed work; the next
    // round starts by handing that planned batch to the writer while its
    // first batch is planned, as an import that never paused would. (Until
    // session ag each round ended with the pipeline flushed, which left the
    // writer idle while each round's first batch was planned, and this
    // thread idle while its last was written: about 1 ms a round, ~5% of
    // the import's time at 1M events, that no real import pays.)
    let t = phase("engine import");
    let engine_dir = tmp.path().join("engine");
    let engine = backend.open_engine(&engine_dir, &school).await?;
    let log = engine.log();
    let mut source = Source::new(&opts);
    let mut pupils: Vec<String> = Vec::new();
    let mut generated = 0u64;
    let mut timed = Duration::ZERO;
    let mut main_cpu_ns = 0u64;
    let mut line = 0usize;
    let now = Utc::now();
    let mut next_report = n / 10;
    let writer_before = engine.writer_times();
    let mut pipeline = Pipeline::new(log.as_ref(), &school, now);
    if !args.seal_ahead {
        pipeline = pipeline.without_sealing_ahead();
    }
    if args.seal_whole {
        pipeline = pipeline.sealing_whole_batches();
    }
    // An import of known size, as the demo's (its whole size, at the
    // start): the store sizes its id table once for it.
    pipeline.expect_events(n);
    // A round's last batch, planned and not yet handed to the writer.
    let mut pending = None;
    while generated < n {
        let mut batches: Vec<Vec<ImportLine>> = Vec::with_capacity(PIPELINE_BATCHES);
        while batches.len() < PIPELINE_BATCHES && generated < n {
            let want = batch_events.min((n - generated) as usize);
            let chunk = source.take(want);
            if chunk.is_empty() {
                break;
            }
            generated += chunk.len() as u64;
            batches.push(
                chunk
                    .into_iter()
                    .map(|(pupil, e)| {
                        line += 1;
                        if pupils.last() != Some(&pupil) {
                            pupils.push(pupil.clone());
                        }
                        ImportLine {
                            line,
                            pupil,
                            occurred_at: e.occurred_at,
                            actor: e.actor,
                            id: Some(e.event_id),
                            school: None,
                            event: e.event,
                        }
                    })
                    .collect(),
            );
        }
        if batches.is_empty() {
            break;
        }
        let (started, cpu) = (Instant::now(), thread_cpu_ns());
        if let Some(batch) = pending.take() {
            pipeline.submit(batch).await.map_err(refused)?;
        }
        let last = batches.pop();
        for lines in batches {
            pipeline.push(lines).await.map_err(refused)?;
        }
        if let Some(lines) = last {
            pending = Some(pipeline.plan(lines).await.map_err(refused)?);
        }
        timed += started.elapsed();
        main_cpu_ns += thread_cpu_ns().saturating_sub(cpu);
        if pipeline.events() >= next_report && pipeline.events() < n {
            eprintln!("bench:   {}/{n} events imported", pipeline.events());
            next_report += n / 10;
        }
    }
    // The last round's last batch, written.
    let (started, cpu) = (Instant::now(), thread_cpu_ns());
    if let Some(batch) = pending.take() {
        pipeline.submit(batch).await.map_err(refused)?;
    }
    pipeline.flush().await.map_err(refused)?;
    timed += started.elapsed();
    main_cpu_ns += thread_cpu_ns().saturating_sub(cpu);
    let imported = pipeline.events();
    let (planning, sealing, waiting) = (
        pipeline.planning(),
        pipeline.sealing_ahead(),
        pipeline.waiting(),
    );
    drop(pipeline);
    let import_ev_s = per_s(imported, timed);
    let split = ImportSplit {
        timed,
        planning,
        sealing,
        waiting,
        main_cpu_ns,
        raw_cpu_us,
        raw_ev_s,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        events: imported,
        writer: writer_before
            .zip(engine.writer_times())
            .map(|(before, after)| after.since(&before)),
    };
    eprintln!("bench:   {}", split.describe());
    let disk_bytes = engine.disk_bytes().await?;
    let index_mb = engine.index_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
    if let Some(mb) = index_mb {
        eprintln!("bench:   segment index: {mb:.1} MB in memory (from table capacities)");
    }
    done(t, format!("{import_ev_s:.0} events/s"));

    // The appends' events (pupils after the imported ones), made now so
    // that the generator's plan of the whole school (a few bytes for every
    // event of every pupil) is not held through the phases after.
    let mut single: Appends = Vec::new();
    while single.len() < single_events {
        let p = source
            .next_pupil()
            .ok_or_else(|| Failure::Store("bench: the demo school ran out of pupils".into()))?;
        single.extend(appends_of(&school, &p, single_events - single.len())?);
    }
    let mut jobs = Vec::with_capacity(w);
    for _ in 0..w {
        let p = source
            .next_pupil()
            .ok_or_else(|| Failure::Store("bench: the demo school ran out of pupils".into()))?;
        jobs.push(appends_of(&school, &p, per_writer)?.into_iter());
    }
    drop(source);

    // Close and open again: what every command pays to open the store,
    // here with the event ids left in the snapshot but every location
    // held (`open_reading_only_ms`; no CLI command opens so since session
    // an, when every command that leaves the ids keeps only the groups'
    // starts: kept as the full index's open without the ids).
    drop(log);
    let t = phase("close and open the store again (as a command that only reads)");
    let (engine, reopened) = backend.reopen(engine, &engine_dir, &school).await?;
    match &reopened {
        Some(r) => done(
            t,
            format!(
                "close {:.0} ms, open {:.0} ms ({}, index {:.1} MB), full-scan open {:.0} ms",
                r.close_ms,
                r.open_reading_only_ms,
                if r.from_snapshot {
                    "index snapshot"
                } else {
                    "no snapshot: too few events"
                },
                r.index_bytes_reading_only as f64 / (1024.0 * 1024.0),
                r.open_full_scan_ms
            ),
        ),
        None => done(t, "nothing to measure on this backend".into()),
    }
    // Close and open again as `casebook rebuild`, the caseload, the
    // reports and a timeline do (the locations left in the snapshot too,
    // but where each group of 64 starts): a phase of its own, whose
    // memory the reading-only open's threads would otherwise add to. The
    // scan and the replay read through it.
    let t = phase("close and open the store again (as a rebuild, the caseload and a timeline)");
    let (engine, sparse_index) = backend.open_sparse(engine, &engine_dir, &school).await?;
    match sparse_index {
        Some((ms, bytes)) => done(
            t,
            format!(
                "open {ms:.0} ms (index {:.2} MB)",
                bytes as f64 / (1024.0 * 1024.0)
            ),
        ),
        None => done(t, "nothing to measure on this backend".into()),
    }
    let log = engine.log();

    // Replay: raw scan + decode, then a cold rebuild of every projection.
    let t = phase("raw scan + decode");
    let started = Instant::now();
    let scanned = engine.raw_scan_decode().await?;
    let raw_scan_decode_ev_s = per_s(scanned, started.elapsed());
    done(t, format!("{raw_scan_decode_ev_s:.0} events/s"));
    let t = phase("replay (rebuild of every projection)");
    let started = Instant::now();
    let report = casebook_projections::rebuild(log.as_ref(), None, &|_, _| {})
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    let replay_ev_s = per_s(report.events, started.elapsed());
    done(t, format!("{replay_ev_s:.0} events/s"));

    // Close and open again as a command that appends does (every
    // timeline appends its `RecordViewed`).
    drop(log);
    let t = phase("close and open the store again (as a command that appends)");
    let (engine, open_ms) = backend
        .open_for_appends(engine, &engine_dir, &school)
        .await?;
    match open_ms {
        Some(ms) => done(t, format!("open {ms:.0} ms")),
        None => done(t, "nothing to measure on this backend".into()),
    }
    let log = engine.log();

    // Timelines of random pupils, as `casebook timeline` reads them: the
    // command's own read path (bench_timeline.rs), its access-log append
    // timed apart.
    let t = phase("timelines of 1,000 random pupils");
    let mut pick = Pick(7);
    let picked: Vec<&str> = (0..TIMELINE_READS)
        .map(|_| pupils[pick.below(pupils.len())].as_str())
        .collect();
    let times = crate::bench_timeline::timelines(log.clone(), &school, &picked, now).await?;
    let entries = times.entries;
    let (mut reads, mut with_log) = (times.reads, times.with_log);
    reads.sort();
    with_log.sort();
    let timeline_p50_us = percentile_us(&reads, 0.50);
    let timeline_p99_us = percentile_us(&reads, 0.99);
    done(
        t,
        format!(
            "p50 {timeline_p50_us:.0} µs, p99 {timeline_p99_us:.0} µs, {:.0} entries a timeline",
            entries as f64 / TIMELINE_READS as f64
        ),
    );

    // `casebook verify`: every event read again, its chain, content hash
    // and index entries checked, against the raw scan + decode (the read
    // and decode a verify cannot do without). On the store as the
    // timelines opened it (a command that appends: the event ids read).
    let t = phase("verify (chain, content hashes, index)");
    let started = Instant::now();
    let verified = log
        .verify(&|_| {})
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    let verify_ev_s = per_s(verified.events, started.elapsed());
    if !verified.ok {
        let first = verified.problems.first();
        return Err(Failure::Store(format!(
            "bench: verify found problems in the log just written (first at position {}: {})",
            first.map_or(0, |p| p.position),
            first.map_or("", |p| p.what.as_str()),
        )));
    }
    done(t, format!("{verify_ev_s:.0} events/s"));

    // One writer, one event per append, each durable before the next; and
    // W writers on different pupils at once (group commit). Both run in
    // APPEND_ROUNDS rounds, each round a slice of the single appends right
    // after as many fdatasyncs of the probe, then a slice of every
    // concurrent writer's appends: the disk's rate drifts (a shared disk,
    // by several times within minutes), so each figure is set against its
    // ceiling at the same moments, not against a sample taken seconds away.
    let t = phase(&format!(
        "single and concurrent ({w} writers) appends, in {APPEND_ROUNDS} rounds beside as many fdatasyncs"
    ));
    // Round r's share of n: the slices differ by at most one.
    let share = |n: usize, r: usize| n * (r + 1) / APPEND_ROUNDS - n * r / APPEND_ROUNDS;
    let single_events = single.len();
    let mut single = single.into_iter();
    let mut probe = FsyncProbe::create(tmp.path())?;
    let (mut syncs, mut syncing) = (0u64, Duration::ZERO);
    let (mut single_count, mut single_time) = (0u64, Duration::ZERO);
    let (mut concurrent_count, mut concurrent_time) = (0u64, Duration::ZERO);
    let mut rounds = Vec::with_capacity(APPEND_ROUNDS);
    // The writer's steps for the single appends, summed over the slices.
    let mut single_writer: Option<WriterTimes> = engine.writer_times().map(|_| Default::default());
    for r in 0..APPEND_ROUNDS {
        let slice: Appends = single.by_ref().take(share(single_events, r)).collect();
        let (n, took) = probe.run(slice.len() as u64, Duration::from_secs(2))?;
        let before = engine.writer_times();
        let started = Instant::now();
        let count = append_all(log.as_ref(), slice).await?;
        let single_took = started.elapsed();
        if let (Some(sum), Some(before), Some(after)) =
            (single_writer.as_mut(), before, engine.writer_times())
        {
            sum.add(&after.since(&before));
        }
        let started = Instant::now();
        let tasks: Vec<_> = jobs
            .iter_mut()
            .map(|job| {
                let log = log.clone();
                let slice: Appends = job.by_ref().take(share(per_writer, r)).collect();
                tokio::spawn(async move { append_all(log.as_ref(), slice).await })
            })
            .collect();
        let mut together = 0u64;
        for task in tasks {
            together += task
                .await
                .map_err(|e| Failure::Store(format!("bench: a writer task failed: {e}")))??;
        }
        let together_took = started.elapsed();
        rounds.push(json!({
            "fsyncs": n,
            "fsync_s": took.as_secs_f64(),
            "single_appends": count,
            "single_s": single_took.as_secs_f64(),
            "concurrent_appends": together,
            "concurrent_s": together_took.as_secs_f64(),
        }));
        (syncs, syncing) = (syncs + n, syncing + took);
        (single_count, single_time) = (single_count + count, single_time + single_took);
        (concurrent_count, concurrent_time) =
            (concurrent_count + together, concurrent_time + together_took);
    }
    drop(probe);
    let fsync_at_start = fsync_per_s;
    let fsync_per_s = per_s(syncs, syncing);
    let append_single_ev_s = per_s(single_count, single_time);
    // A single append's cost beside the probe's fdatasync: the writer's
    // steps an append, and what is left of the append's time (the hand-off
    // to the writer thread and back).
    let single_split = single_writer.map(|w| {
        let n = single_count.max(1) as f64;
        let us = |ns: u64| ns as f64 / 1e3 / n;
        json!({
            "single_us": 1e6 / append_single_ev_s.max(f64::MIN_POSITIVE),
            "fsync_us": 1e6 / fsync_per_s.max(f64::MIN_POSITIVE),
            "single_writer_busy_us": us(w.busy_ns()),
            "single_writer_sync_us": us(w.sync_ns),
            "single_writer_other_us": us(w.busy_ns().saturating_sub(w.sync_ns)),
            "single_writer_groups": w.groups,
        })
    });
    let append_concurrent_ev_s = per_s(concurrent_count, concurrent_time);
    done(
        t,
        format!("single {append_single_ev_s:.0} events/s beside {fsync_per_s:.0} fdatasyncs/s, concurrent {append_concurrent_ev_s:.0} events/s"),
    );

    // A day's register for every pupil of the populated store, imported
    // as `casebook import` imports a file (one planner, one atomic
    // append): each line is judged against its pupil's stored record, so
    // the planner reads every pupil's history; what it holds for them is
    // this phase's peak. The store is closed and opened as `casebook
    // import` opens it (the ids and the locations left in the snapshot),
    // untimed: the import is timed, in the phase of its open.
    drop(log);
    let t = phase(&format!(
        "a day's register for every pupil ({} lines) into the populated store",
        pupils.len()
    ));
    let (engine, register_open) = backend.open_sparse(engine, &engine_dir, &school).await?;
    let log = engine.log();
    let started = Instant::now();
    let register_import_lines = import_register(
        log.as_ref(),
        &school,
        &pupils,
        opts.academic_year,
        Session::Am,
    )
    .await?;
    let register_import_ms = started.elapsed().as_secs_f64() * 1e3;
    done(t, format!("{register_import_ms:.0} ms"));

    // The afternoon's: each pupil's facts from the checkpoint the
    // morning's import saved, only the events after it read; in an open of
    // its own, as a second `casebook import` runs.
    drop(log);
    let t = phase(&format!(
        "the afternoon's register ({} lines), from the facts checkpoint",
        pupils.len()
    ));
    let (engine, _) = backend.open_sparse(engine, &engine_dir, &school).await?;
    let log = engine.log();
    let started = Instant::now();
    import_register(
        log.as_ref(),
        &school,
        &pupils,
        opts.academic_year,
        Session::Pm,
    )
    .await?;
    let register_again_ms = started.elapsed().as_secs_f64() * 1e3;
    done(t, format!("{register_again_ms:.0} ms"));

    // Look-ups by id as `casebook record --id` and an import of a file
    // with ids make them, on an open that leaves the ids in the snapshot:
    // looked up there in place, and (the baseline) read whole at the
    // first look-up; each in an open of its own.
    let picks: Vec<uuid::Uuid> = {
        let mut pick = Pick(11);
        let mut ids = Vec::with_capacity(ID_LOOKUPS);
        for _ in 0..ID_LOOKUPS {
            let p = 1 + pick.below(imported as usize) as u64;
            if let Some(e) = log.read_all(p, 1).await?.into_iter().next() {
                ids.push(e.event_id);
            }
        }
        ids
    };
    drop(log);
    let t = phase(&format!(
        "look-ups of {} stored ids, one at a time (as `record --id`), in place and reading every id",
        picks.len()
    ));
    let (engine, lookups) =
        id_lookups(backend.as_ref(), engine, &engine_dir, &school, &picks).await?;
    match &lookups {
        Some(l) => done(
            t,
            format!(
                "the first {:.2} ms, the others {:.0} µs (p50), {ID_BATCH} absent ids at once {:.1} ms; the first reading every id {:.1} ms, then the {ID_BATCH} {:.1} ms",
                l.first_ms, l.next_us, l.batch_ms, l.reading_ms, l.batch_read_ms
            ),
        ),
        None => done(t, "nothing to measure on this backend".into()),
    }
    let log = engine.log();

    // The log's hash chain alone, on one thread, over the demo school's
    // first events sealed as the raw ceiling sealed them: a phase of its
    // own, last: hashed between the raw ceiling's writes, it may slow
    // them (their medians 3% lower in 10 alternated pairs at 1M, within
    // the runs' spread but in the direction that flatters
    // `import_vs_raw`).
    let t = phase("the hash chain alone, on one thread");
    let hashes = time_hash_chain(&opts, &school, n, batch_events)?;
    done(
        t,
        format!(
            "{:.0} events/s over {} events",
            hashes.ev_s(),
            hashes.events
        ),
    );

    let peak_rss_mb = peak_rss_mb();
    let disk_bytes_per_event = disk_bytes as f64 / imported.max(1) as f64;
    let figures = Figures {
        fsync_per_s,
        raw_backend_batched_ev_s: raw_ev_s,
        import_ev_s,
        append_single_ev_s,
        append_concurrent_ev_s,
        replay_ev_s,
        raw_scan_decode_ev_s,
        timeline_p50_us,
        timeline_p99_us,
        peak_rss_mb,
        disk_bytes_per_event,
        payload_bytes_per_event: payload_bytes,
    };
    let mut doc = figures.to_json();
    let (peaks, own_peaks) = phase_peaks();
    let extra = json!({
        "phase_peak_rss_mb": peaks
            .iter()
            .map(|(phase, mb)| json!({"phase": phase, "peak_rss_mb": mb}))
            .collect::<Vec<_>>(),
        "phase_peaks_own": own_peaks,
        "events": imported,
        "fsync_per_s_at_start": fsync_at_start,
        "append_rounds": rounds,
        "writers": w,
        "backend": backend.name(),
        "sled_cache_mb": casebook_engine::store::sled::cache_bytes() / (1024 * 1024),
        "casebook_version": env!("CARGO_PKG_VERSION"),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "pupils": pupils.len(),
        "register_import_lines": register_import_lines,
        "register_import_ms": register_import_ms,
        "register_again_ms": register_again_ms,
        "register_open_ms": register_open.map(|(ms, _)| ms),
        "register_index_mb": register_open.map(|(_, bytes)| bytes as f64 / (1024.0 * 1024.0)),
        "batch_events": batch_events,
        "seal_ahead": args.seal_ahead,
        "seal_whole": args.seal_whole,
        "single_appends": single_count,
        "concurrent_appends": concurrent_count,
        "timeline_reads": TIMELINE_READS,
        "verify_ev_s": verify_ev_s,
        "verify_vs_raw": verify_ev_s / raw_scan_decode_ev_s,
        "timeline_with_access_log_p50_us": percentile_us(&with_log, 0.50),
        "timeline_with_access_log_p99_us": percentile_us(&with_log, 0.99),
        "case_payload_bytes_per_event": case_payload_bytes,
        "index_mb": index_mb,
        "close_ms": reopened.as_ref().map(|r| r.close_ms),
        "open_ms": open_ms,
        "open_full_scan_ms": reopened.as_ref().map(|r| r.open_full_scan_ms),
        "open_reading_only_ms": reopened.as_ref().map(|r| r.open_reading_only_ms),
        "index_mb_reading_only": reopened
            .as_ref()
            .map(|r| r.index_bytes_reading_only as f64 / (1024.0 * 1024.0)),
        "open_sparse_ms": sparse_index.map(|(ms, _)| ms),
        "index_mb_sparse": sparse_index.map(|(_, bytes)| bytes as f64 / (1024.0 * 1024.0)),
        "open_vs_full_scan": reopened
            .as_ref()
            .zip(open_ms)
            .map(|(r, ms)| ms / r.open_full_scan_ms),
        "open_from_snapshot": reopened.as_ref().map(|r| r.from_snapshot),
        "snapshot_mb": reopened
            .as_ref()
            .and_then(|r| r.snapshot_bytes)
            .map(|b| b as f64 / (1024.0 * 1024.0)),
        "elapsed_s": run_started.elapsed().as_secs_f64(),
    });
    let mut extra = extra;
    if let Value::Object(e) = &mut extra {
        let l = lookups.as_ref();
        e.insert("id_lookup_first_ms".into(), json!(l.map(|l| l.first_ms)));
        e.insert("id_lookup_next_us".into(), json!(l.map(|l| l.next_us)));
        e.insert(
            "id_lookup_reading_ms".into(),
            json!(l.map(|l| l.reading_ms)),
        );
        e.insert(
            "id_lookup_vs_reading".into(),
            json!(l.map(|l| l.first_ms / l.reading_ms)),
        );
        e.insert("id_batch".into(), json!(l.map(|_| ID_BATCH)));
        e.insert("id_batch_lookup_ms".into(), json!(l.map(|l| l.batch_ms)));
        e.insert(
            "id_batch_reading_ms".into(),
            json!(l.map(|l| l.reading_ms + l.batch_read_ms)),
        );
        e.insert(
            "id_batch_vs_reading".into(),
            json!(l.map(|l| l.batch_ms / (l.reading_ms + l.batch_read_ms))),
        );
        let chain_ev_s = hashes.ev_s();
        e.insert("chain_hash_ev_s".into(), json!(chain_ev_s));
        e.insert("chain_hash_events".into(), json!(hashes.events));
        e.insert(
            "chain_hash_vs_raw".into(),
            json!(ImportSplit::share(chain_ev_s, raw_ev_s)),
        );
        e.insert(
            "import_vs_chain_hash".into(),
            json!(ImportSplit::share(import_ev_s, chain_ev_s)),
        );
    }
    if let (Value::Object(e), Value::Object(s)) = (&mut extra, split.to_json()) {
        e.extend(s);
    }
    if let (Value::Object(e), Some(Value::Object(s))) = (&mut extra, single_split) {
        e.extend(s);
    }
    if let (Value::Object(m), Value::Object(e)) = (&mut doc, extra) {
        m.extend(e);
    }
    drop(log);
    drop(engine);
    backend.finish().await?;
    drop(tmp);
    match format {
        Format::Json => {
            let text =
                serde_json::to_string_pretty(&doc).map_err(|e| Failure::Store(e.to_string()))?;
            println!("{text}");
        }
        _ => print!("{}", figures.table(&doc)),
    }
    Ok(())
}

/// Where the import's time went: the planner's validation (on the
/// bench's thread) and the store writer's steps (on its own thread), per
/// event, beside the import's timed wall time. The two overlap (batch k+1
/// is planned while batch k is written), so the import can go no faster
/// than the busier of the two; `import_writer_busy_share` near 1 says the
/// writer is what it waits on, and `import_writer_sync_share` how much of
/// the writer's time is the disk's `fdatasync`.
struct ImportSplit {
    timed: Duration,
    planning: Duration,
    /// Sealing batches ahead on the bench's thread (`Pipeline::sealing_ahead`).
    sealing: Duration,
    /// Waiting on the bench's thread for the writer (`Pipeline::waiting`).
    waiting: Duration,
    /// The processor time of the bench's thread (planning, submitting) in
    /// the timed stretches.
    main_cpu_ns: u64,
    /// The raw ceiling writer's processor time an event.
    raw_cpu_us: f64,
    /// The raw ceiling (`raw_backend_batched_ev_s`).
    raw_ev_s: f64,
    /// Cores the process may use.
    cores: usize,
    events: u64,
    writer: Option<WriterTimes>,
}

impl ImportSplit {
    /// The two bounds the import's own costs put on `import_vs_raw`,
    /// however well its threads overlap: the writer's busy time is serial
    /// (one group after another), so the import is at most 1 / busy events
    /// a second; and all its processor time shares the cores, so it is at
    /// most cores / cpu. Each as a fraction of the raw ceiling.
    fn caps_vs_raw(&self, w: &WriterTimes) -> (f64, f64) {
        let per_s = |us: f64| if us > 0.0 { 1e6 / us } else { 0.0 };
        let busy = self.us(w.busy_ns());
        (
            Self::share(per_s(busy), self.raw_ev_s),
            Self::share(self.cores as f64 * per_s(self.cpu_us(w)), self.raw_ev_s),
        )
    }

    /// The import's processor time an event: this thread's and the
    /// writer's.
    fn cpu_us(&self, w: &WriterTimes) -> f64 {
        self.us(self.main_cpu_ns.saturating_add(w.cpu_ns))
    }

    /// The writer's busy time as a share of the timed import.
    fn writer_busy_share(&self, w: &WriterTimes) -> f64 {
        Self::share(w.busy_ns() as f64 / 1e9, self.timed.as_secs_f64())
    }

    /// The share of the import's events the writer stored as sealed ahead.
    fn presealed_share(w: &WriterTimes) -> f64 {
        Self::share(w.presealed as f64, w.events as f64)
    }

    /// Microseconds an event of `ns` nanoseconds in all.
    fn us(&self, ns: u64) -> f64 {
        ns as f64 / 1e3 / self.events.max(1) as f64
    }

    fn share(part: f64, whole: f64) -> f64 {
        if whole > 0.0 {
            part / whole
        } else {
            0.0
        }
    }

    fn planner_us(&self) -> f64 {
        self.us(duration_ns(self.planning))
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "import_planner_us_per_event".into(),
            json!(self.planner_us()),
        );
        m.insert(
            "import_planner_busy_share".into(),
            json!(Self::share(
                self.planning.as_secs_f64(),
                self.timed.as_secs_f64()
            )),
        );
        m.insert(
            "import_sealing_ahead_us_per_event".into(),
            json!(self.us(duration_ns(self.sealing))),
        );
        m.insert(
            "import_waiting_us_per_event".into(),
            json!(self.us(duration_ns(self.waiting))),
        );
        m.insert(
            "import_main_cpu_us_per_event".into(),
            json!(self.us(self.main_cpu_ns)),
        );
        m.insert("raw_cpu_us_per_event".into(), json!(self.raw_cpu_us));
        if let Some(w) = &self.writer {
            let put = |m: &mut Map<String, Value>, k: &str, ns: u64| {
                m.insert(
                    format!("import_writer_{k}_us_per_event"),
                    json!(self.us(ns)),
                );
            };
            put(&mut m, "stage", w.stage_ns);
            put(&mut m, "frame", w.frame_ns);
            put(&mut m, "write", w.write_ns);
            put(&mut m, "sync", w.sync_ns);
            put(&mut m, "publish", w.publish_ns);
            put(&mut m, "busy", w.busy_ns());
            put(&mut m, "cpu", w.cpu_ns);
            m.insert("import_cpu_us_per_event".into(), json!(self.cpu_us(w)));
            m.insert(
                "import_writer_busy_share".into(),
                json!(self.writer_busy_share(w)),
            );
            m.insert(
                "import_writer_sync_share".into(),
                json!(Self::share(w.sync_ns as f64, w.busy_ns() as f64)),
            );
            m.insert("import_writer_groups".into(), json!(w.groups));
            m.insert(
                "import_writer_presealed_share".into(),
                json!(Self::presealed_share(w)),
            );
            let (writer_cap, cpu_cap) = self.caps_vs_raw(w);
            m.insert("import_writer_cap_vs_raw".into(), json!(writer_cap));
            m.insert("import_cpu_cap_vs_raw".into(), json!(cpu_cap));
        }
        Value::Object(m)
    }

    /// One line for the progress output.
    fn describe(&self) -> String {
        let timed = self.timed.as_secs_f64();
        let mut out = format!(
            "where the import's {timed:.2} s went: planning {:.2} s ({:.2} µs an event), sealing ahead {:.2} s ({:.2} µs an event), waiting for the writer {:.2} s ({:.2} µs an event)",
            self.planning.as_secs_f64(),
            self.planner_us(),
            self.sealing.as_secs_f64(),
            self.us(duration_ns(self.sealing)),
            self.waiting.as_secs_f64(),
            self.us(duration_ns(self.waiting)),
        );
        if let Some(w) = &self.writer {
            out.push_str(&format!(
                "; writer busy {:.2} s ({:.0}% of the import; {:.0}% of the events written as sealed ahead; µs an event: stage {:.2}, frame {:.2}, write {:.2}, fdatasync {:.2}, publish {:.2}) in {} groups",
                w.busy_ns() as f64 / 1e9,
                100.0 * self.writer_busy_share(w),
                100.0 * Self::presealed_share(w),
                self.us(w.stage_ns),
                self.us(w.frame_ns),
                self.us(w.write_ns),
                self.us(w.sync_ns),
                self.us(w.publish_ns),
                w.groups,
            ));
            out.push_str(&format!(
                "; processor time µs an event: this thread {:.2} + writer {:.2} = {:.2}, against the raw ceiling's {:.2}",
                self.us(self.main_cpu_ns),
                self.us(w.cpu_ns),
                self.cpu_us(w),
                self.raw_cpu_us,
            ));
            let (writer_cap, cpu_cap) = self.caps_vs_raw(w);
            out.push_str(&format!(
                "; so import_vs_raw can be at most {writer_cap:.2} (the writer's busy time, serial) and {cpu_cap:.2} ({} cores' processor time)",
                self.cores
            ));
        }
        out
    }
}

/// Events whose hash chain is timed alone
/// ([`ChainHashes`]): about 0.35 s of hashing here, and the same cost an
/// event as over the whole log (it depends only on the bodies' lengths).
/// Timed a batch at a time (the last batch cut to the count): with
/// `--batch-events 1` the clock's two reads an event (a few tens of
/// nanoseconds) count against the chain.
const CHAIN_HASH_EVENTS: u64 = 1 << 20;

/// The log's hash chain computed again, alone, on one thread, over the
/// demo school's first [`CHAIN_HASH_EVENTS`] events as the raw ceiling
/// sealed them: the serial
/// bound on any import's rate, a ceiling of `import_ev_s` (each event's
/// hash is BLAKE3 of the
/// previous hash and the event's body, which holds the previous hash too,
/// so no two events of a log can be hashed at once).
struct ChainHashes {
    /// Events to hash at most ([`CHAIN_HASH_EVENTS`] in a run).
    cap: u64,
    /// The last hash computed.
    prev: Hash,
    /// Events hashed, and the time their hashes took.
    events: u64,
    timed: Duration,
}

impl ChainHashes {
    /// Nothing hashed yet; at most `cap` events will be.
    fn new(cap: u64) -> ChainHashes {
        ChainHashes {
            cap,
            prev: GENESIS_HASH,
            events: 0,
            timed: Duration::ZERO,
        }
    }

    /// Hashes `batch` (the next events sealed, in order) after the events
    /// before it, timed, until `cap` have been hashed;
    /// then checks, untimed, that the chain ends on the last sealed hash
    /// it reached (the hashes timed are the log's).
    fn time(&mut self, batch: &[RawEnvelope]) -> Result<(), Failure> {
        let left = usize::try_from(self.cap.saturating_sub(self.events)).unwrap_or(usize::MAX);
        let batch = &batch[..left.min(batch.len())];
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        for sealed in batch {
            // The stored value is `body ‖ hash`.
            let body = &sealed.bytes[..sealed.bytes.len().saturating_sub(HASH_LEN)];
            self.prev = chain_hash(&self.prev, body);
        }
        self.timed += started.elapsed();
        self.events += batch.len() as u64;
        match batch.last() {
            Some(last) if last.hash == self.prev => Ok(()),
            _ => Err(Failure::Store(format!(
                "bench: the hash chain computed again does not match the sealed chain at or before position {}",
                batch.last().map_or(0, |s| s.position)
            ))),
        }
    }

    /// Events a second.
    fn ev_s(&self) -> f64 {
        per_s(self.events, self.timed)
    }
}

/// `chunk` sealed as the next events of `chain`, recorded at
/// `recorded_at`, as the raw ceiling writes them, and their payloads'
/// bytes.
fn seal_chunk(
    chain: &mut RawChain,
    school: &str,
    chunk: &[(String, DemoEvent)],
    recorded_at: chrono::DateTime<Utc>,
) -> Result<(Vec<RawEnvelope>, u64), Failure> {
    let mut batch = Vec::with_capacity(chunk.len());
    let mut case_bytes = 0;
    for (pupil, e) in chunk {
        let stream = StreamId::for_pupil(school, pupil);
        let new = new_event(e)?;
        case_bytes += new.payload.len() as u64;
        let sealed = chain
            .seal(stream, &new, recorded_at)
            .map_err(|e| Failure::Store(e.to_string()))?;
        batch.push(sealed);
    }
    Ok((batch, case_bytes))
}

/// [`ChainHashes`] over the demo school's first events (at most `n`, as
/// the raw ceiling wrote them: the same generator and options), sealed
/// `batch_events` at a time as the raw ceiling sealed them, untimed.
fn time_hash_chain(
    opts: &DemoOptions,
    school: &str,
    n: u64,
    batch_events: usize,
) -> Result<ChainHashes, Failure> {
    let mut hashes = ChainHashes::new(CHAIN_HASH_EVENTS.min(n));
    let mut source = Source::new(opts);
    let mut chain = RawChain::default();
    while hashes.events < hashes.cap {
        // The last batch is cut to the count by `time`.
        let chunk = source.take(batch_events);
        if chunk.is_empty() {
            break;
        }
        let (batch, _) = seal_chunk(&mut chain, school, &chunk, Utc::now())?;
        hashes.time(&batch)?;
    }
    Ok(hashes)
}

/// Nanoseconds of `d`, saturated.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The figures of one run.
struct Figures {
    fsync_per_s: f64,
    raw_backend_batched_ev_s: f64,
    import_ev_s: f64,
    append_single_ev_s: f64,
    append_concurrent_ev_s: f64,
    replay_ev_s: f64,
    raw_scan_decode_ev_s: f64,
    timeline_p50_us: f64,
    timeline_p99_us: f64,
    peak_rss_mb: f64,
    disk_bytes_per_event: f64,
    payload_bytes_per_event: f64,
}

impl Figures {
    fn import_vs_raw(&self) -> f64 {
        self.import_ev_s / self.raw_backend_batched_ev_s
    }
    fn single_vs_fsync(&self) -> f64 {
        self.append_single_ev_s / self.fsync_per_s
    }
    fn concurrent_vs_single(&self) -> f64 {
        self.append_concurrent_ev_s / self.append_single_ev_s
    }
    fn replay_vs_raw(&self) -> f64 {
        self.replay_ev_s / self.raw_scan_decode_ev_s
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: f64| {
            m.insert(k.to_string(), json!(v));
        };
        put("fsync_per_s", self.fsync_per_s);
        put("raw_backend_batched_ev_s", self.raw_backend_batched_ev_s);
        put("import_ev_s", self.import_ev_s);
        put("append_single_ev_s", self.append_single_ev_s);
        put("append_concurrent_ev_s", self.append_concurrent_ev_s);
        put("replay_ev_s", self.replay_ev_s);
        put("raw_scan_decode_ev_s", self.raw_scan_decode_ev_s);
        put("timeline_p50_us", self.timeline_p50_us);
        put("timeline_p99_us", self.timeline_p99_us);
        put("peak_rss_mb", self.peak_rss_mb);
        put("disk_bytes_per_event", self.disk_bytes_per_event);
        put("payload_bytes_per_event", self.payload_bytes_per_event);
        put("import_vs_raw", self.import_vs_raw());
        put("single_vs_fsync", self.single_vs_fsync());
        put("concurrent_vs_single", self.concurrent_vs_single());
        put("replay_vs_raw", self.replay_vs_raw());
        Value::Object(m)
    }

    /// The text table: each figure, its unit, and the target.
    fn table(&self, doc: &Value) -> String {
        let yes = |ok: bool| if ok { "met" } else { "NOT met" };
        let rows: Vec<(&str, String, String)> = vec![
            (
                "fsync_per_s",
                format!("{:.0}", self.fsync_per_s),
                "ceiling of (c)".into(),
            ),
            (
                "raw_backend_batched_ev_s",
                format!("{:.0}", self.raw_backend_batched_ev_s),
                "ceiling of (b)".into(),
            ),
            (
                "import_ev_s",
                format!("{:.0}", self.import_ev_s),
                format!(">= 250000: {}", yes(self.import_ev_s >= 250_000.0)),
            ),
            (
                "append_single_ev_s",
                format!("{:.0}", self.append_single_ev_s),
                String::new(),
            ),
            (
                "append_concurrent_ev_s",
                format!("{:.0}", self.append_concurrent_ev_s),
                String::new(),
            ),
            (
                "replay_ev_s",
                format!("{:.0}", self.replay_ev_s),
                format!(
                    ">= 1000000 or ratio >= 0.7: {}",
                    yes(self.replay_ev_s >= 1e6 || self.replay_vs_raw() >= 0.7)
                ),
            ),
            (
                "raw_scan_decode_ev_s",
                format!("{:.0}", self.raw_scan_decode_ev_s),
                "ceiling of (e)".into(),
            ),
            (
                "timeline_p50_us",
                format!("{:.0}", self.timeline_p50_us),
                String::new(),
            ),
            (
                "timeline_p99_us",
                format!("{:.0}", self.timeline_p99_us),
                format!("< 1000: {}", yes(self.timeline_p99_us < 1000.0)),
            ),
            (
                "peak_rss_mb",
                format!("{:.1}", self.peak_rss_mb),
                format!("<= 200 (at 1M events): {}", yes(self.peak_rss_mb <= 200.0)),
            ),
            (
                "disk_bytes_per_event",
                format!("{:.0}", self.disk_bytes_per_event),
                format!(
                    "<= 1.5 x payload: {}",
                    yes(self.disk_bytes_per_event <= 1.5 * self.payload_bytes_per_event)
                ),
            ),
            (
                "payload_bytes_per_event",
                format!("{:.0}", self.payload_bytes_per_event),
                "stored envelope (body + hash)".into(),
            ),
            (
                "import_vs_raw",
                format!("{:.2}", self.import_vs_raw()),
                format!(">= 0.8: {}", yes(self.import_vs_raw() >= 0.8)),
            ),
            (
                "single_vs_fsync",
                format!("{:.2}", self.single_vs_fsync()),
                format!(">= 0.8: {}", yes(self.single_vs_fsync() >= 0.8)),
            ),
            (
                "concurrent_vs_single",
                format!("{:.2}", self.concurrent_vs_single()),
                format!(">= 10: {}", yes(self.concurrent_vs_single() >= 10.0)),
            ),
            (
                "replay_vs_raw",
                format!("{:.2}", self.replay_vs_raw()),
                format!(
                    ">= 0.7 (or replay >= 1M/s): {}",
                    yes(self.replay_vs_raw() >= 0.7 || self.replay_ev_s >= 1e6)
                ),
            ),
        ];
        let mut out = String::new();
        let get = |k: &str| doc.get(k).map(|v| v.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "casebook bench: {} events, {} writers, backend {}, casebook {}, {} cores, load average {} before, {} after\n\n",
            get("events"),
            get("writers"),
            get("backend").trim_matches('"'),
            get("casebook_version").trim_matches('"'),
            get("cores"),
            get("load_average_before"),
            get("load_average_after"),
        ));
        out.push_str(&format!(
            "{:<26} {:>12}  {}\n",
            "figure", "value", "target / note"
        ));
        for (k, v, note) in rows {
            out.push_str(&format!("{k:<26} {v:>12}  {note}\n"));
        }
        let us = |k: &str| doc.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        out.push_str(&format!(
            "\ntimeline with its access-log append: p50 {:.0} µs, p99 {:.0} µs\nfsync: {:.0}/s at start (2 s), {:.0}/s beside the single appends (fsync_per_s)\n",
            us("timeline_with_access_log_p50_us"),
            us("timeline_with_access_log_p99_us"),
            us("fsync_per_s_at_start"),
            us("fsync_per_s"),
        ));
        out.push_str(&format!(
            "verify: {:.0} events/s, {:.2} of the raw scan + decode\n",
            us("verify_ev_s"),
            us("verify_vs_raw"),
        ));
        if doc.get("import_cpu_cap_vs_raw").is_some() {
            out.push_str(&format!(
                "import: {:.2} µs of processor time an event (planning {:.2}, writer {:.2}; the raw ceiling {:.2}), the writer busy {:.0}% of the import's time: import_vs_raw can be at most {:.2} (the writer's serial busy time) and {:.2} (the cores' processor time)\n",
                us("import_cpu_us_per_event"),
                us("import_main_cpu_us_per_event"),
                us("import_writer_cpu_us_per_event"),
                us("raw_cpu_us_per_event"),
                100.0 * us("import_writer_busy_share"),
                us("import_writer_cap_vs_raw"),
                us("import_cpu_cap_vs_raw"),
            ));
        }
        if doc.get("chain_hash_ev_s").is_some() {
            out.push_str(&format!(
                "the hash chain alone, on one thread: {:.0} events/s over {:.0} events, {:.2}× the raw ceiling; the import ran at {:.2} of it (no import of this format is faster: each event's hash needs the one before)\n",
                us("chain_hash_ev_s"),
                us("chain_hash_events"),
                us("chain_hash_vs_raw"),
                us("import_vs_chain_hash"),
            ));
        }
        if doc.get("register_again_ms").is_some() {
            out.push_str(&format!(
                "a day's register for {:.0} pupils: {:.0} ms reading every pupil's history (and saving the facts checkpoint, with 256 pupils or more), the afternoon's {:.0} ms (from that checkpoint)\n",
                us("register_import_lines"),
                us("register_import_ms"),
                us("register_again_ms"),
            ));
        }
        if doc.get("id_lookup_first_ms").is_some_and(|v| !v.is_null()) {
            out.push_str(&format!(
                "a look-up by id on an open that leaves the ids in the snapshot (`record --id`): the first {:.2} ms in place, the next {:.0} µs, against {:.1} ms reading every id first; {:.0} absent ids at once (an import's batch) {:.1} ms in place, against {:.1} ms reading every id and then looking them up\n",
                us("id_lookup_first_ms"),
                us("id_lookup_next_us"),
                us("id_lookup_reading_ms"),
                us("id_batch"),
                us("id_batch_lookup_ms"),
                us("id_batch_reading_ms"),
            ));
        }
        if doc.get("open_ms").is_some_and(|v| !v.is_null()) {
            out.push_str(&format!(
                "open of the populated store: {:.0} ms ({:.2} of the {:.0} ms of an open that rebuilds the index from every frame), {:.0} ms and an index of {:.1} MB (against {:.1}) for a command that only reads, {:.0} ms and {:.2} MB for one that keeps where each group starts (a rebuild, the caseload, a timeline); close {:.0} ms\n",
                us("open_ms"),
                us("open_vs_full_scan"),
                us("open_full_scan_ms"),
                us("open_reading_only_ms"),
                us("index_mb_reading_only"),
                us("index_mb"),
                us("open_sparse_ms"),
                us("index_mb_sparse"),
                us("close_ms"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};

    use super::{check_room, disk_size, free_bytes, Backend, DISK_SLACK_BYTES};
    use crate::Failure;

    /// A run that would fill the disk part-way is refused before it
    /// writes anything, naming the events, the engine, the directory and
    /// both sizes; one that fits, or whose free space cannot be read, is
    /// not. The segment engine's estimate is its measured bytes an event
    /// with a margin; sled's is above the one figure measured.
    #[test]
    fn a_run_too_large_for_the_disk_is_refused_first() {
        let dir = std::path::Path::new("/big/disk");
        let per = crate::bench_segment::Segment
            .disk_needed_per_event()
            .unwrap();
        assert!((300..400).contains(&per), "{per}");
        assert!(super::Sled.disk_needed_per_event().unwrap() > 1_059);
        let needed = 30_000_000 * per + DISK_SLACK_BYTES;
        match check_room(30_000_000, per, Some(needed - 1), dir, "segment") {
            Err(Failure::BadInput(m)) => {
                for part in [
                    "--events 30000000",
                    "segment engine",
                    "/big/disk",
                    &format!("{} free under", disk_size(needed)),
                    &format!("{} is free there", disk_size(needed - 1)),
                    "--dir",
                ] {
                    assert!(m.contains(part), "{part:?} not in {m}");
                }
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(check_room(30_000_000, per, Some(needed), dir, "segment").is_ok());
        assert!(check_room(30_000_000, per, None, dir, "segment").is_ok());
        // The largest run asked for does not overflow the estimate.
        assert!(check_room(u64::MAX, u64::MAX, Some(u64::MAX - 1), dir, "sled").is_err());
        // Sizes a message can tell apart, small or large.
        assert_eq!(disk_size(95_000_000), "95 MB");
        assert_eq!(disk_size(100_000_000), "100 MB");
        assert_eq!(disk_size(33_064_000_000), "33.06 GB");
        let here = tempfile::tempdir().unwrap();
        assert!(free_bytes(here.path()).is_some());
        assert_eq!(free_bytes(&here.path().join("not-there")), None);
    }

    /// The hash chain is timed over exactly its first `cap` events, the
    /// batch that reaches it cut there, and each batch's chain is checked
    /// against the sealed hashes: a sealed hash that is not the chain's is
    /// refused, naming the batch's last position.
    #[test]
    fn the_hash_chain_is_timed_over_its_first_events_and_checked() {
        use casebook_engine::envelope::{NewEvent, StreamId};
        use casebook_engine::store::sled_raw::RawChain;
        let stream = StreamId::for_pupil("school", "P1");
        let mut chain = RawChain::default();
        let sealed: Vec<_> = (0..10u128)
            .map(|i| {
                let new = NewEvent {
                    event_id: uuid::Uuid::from_u128(i + 1),
                    occurred_at: chrono::DateTime::UNIX_EPOCH,
                    actor: "S1".into(),
                    correlation_id: None,
                    causation_id: None,
                    event_type: "PupilRegistered".into(),
                    schema: 1,
                    payload: vec![0x80],
                };
                chain
                    .seal(stream, &new, chrono::DateTime::UNIX_EPOCH)
                    .unwrap()
            })
            .collect();
        let mut hashes = super::ChainHashes::new(7);
        for batch in sealed.chunks(3) {
            hashes.time(batch).unwrap();
        }
        assert_eq!(hashes.events, 7);
        assert_eq!(hashes.prev, sealed[6].hash);
        assert!(hashes.ev_s() > 0.0);
        // A chain that does not end on the sealed hash is refused.
        let mut wrong = sealed[..3].to_vec();
        wrong[2].hash[0] ^= 1;
        let mut fresh = super::ChainHashes::new(10);
        match fresh.time(&wrong) {
            Err(Failure::Store(m)) => assert!(m.contains("position 3"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The text table says the two registers' times, and leaves the line
    /// out of a document without them.
    #[test]
    fn the_text_table_names_both_registers() {
        let figures = super::Figures {
            fsync_per_s: 1.0,
            raw_backend_batched_ev_s: 1.0,
            import_ev_s: 1.0,
            append_single_ev_s: 1.0,
            append_concurrent_ev_s: 1.0,
            replay_ev_s: 1.0,
            raw_scan_decode_ev_s: 1.0,
            timeline_p50_us: 1.0,
            timeline_p99_us: 1.0,
            peak_rss_mb: 1.0,
            disk_bytes_per_event: 1.0,
            payload_bytes_per_event: 1.0,
        };
        let doc = serde_json::json!({
            "register_import_lines": 2423,
            "register_import_ms": 183.1,
            "register_again_ms": 13.7,
        });
        let text = figures.table(&doc);
        assert!(
            text.contains("a day's register for 2423 pupils: 183 ms reading every pupil's history")
                && text.contains("the afternoon's 14 ms (from that checkpoint)"),
            "{text}"
        );
        assert!(!figures
            .table(&serde_json::json!({}))
            .contains("a day's register"));
    }

    /// A phase's peak is its own: memory touched and given back before it
    /// starts does not count in it, though it counts in the run's.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_phase_peak_leaves_out_what_was_freed_before_it() {
        const MB: usize = 1024 * 1024;
        let layout = Layout::from_size_align(256 * MB, 4096).unwrap();
        // Straight from the system allocator, so that the free gives the
        // pages back at once (an mmap of its own).
        // SAFETY: the layout has a non-zero size; the block is written
        // within it and freed once, with the same layout.
        unsafe {
            let block = System.alloc(layout);
            assert!(!block.is_null());
            for at in (0..layout.size()).step_by(4096) {
                block.add(at).write_volatile(1);
            }
            System.dealloc(block, layout);
        }
        let t = super::phase("a test phase");
        super::done(t, "nothing".into());
        let (peaks, own) = super::phase_peaks();
        assert!(own, "the kernel's peak could not be reset");
        let (name, peak) = peaks.last().unwrap().clone();
        assert_eq!(name, "a test phase");
        let run = super::peak_rss_mb();
        assert!(run - peak > 200.0, "phase {peak:.0} MB, run {run:.0} MB");
    }
}
