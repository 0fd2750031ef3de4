//! The `EventStore` trait every backend implements, the types of its
//! requests and answers, catch-up subscriptions and the backend-independent
//! part of `verify`.
//!
//! Architecture Invariant: a backend acknowledges an append only after its
//! events are durable, and its reads never return an event that is not yet
//! durable. Subscriptions therefore never deliver an event a crash could
//! take back.
//!
//! Architecture Invariant: positions are gapless from 1 per log, versions
//! gapless from 1 per stream, and every event's `prev_hash` is the hash of
//! the event before it in the log. `verify` checks all three.

pub mod embedded;
pub mod postgres;
pub mod segment;
pub mod sled;
pub mod sled_raw;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::envelope::{
    chain_hash, split_value, EventRef, Hash, NewEvent, StoredEvent, StreamId, GENESIS_HASH,
};
use crate::error::StoreError;
pub use segment::IdHash;

/// What the caller expects the stream's version to be before its append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (its last event's version).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` (0 = no events) satisfies the expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Which log a look-up of event ids saw, and through which position
/// ([`EventStore::find_events_checked`]): none of the ids it did not find
/// is stored at that position or before it. The log is named by a token
/// its open drew, so that what was seen of one log is never taken for
/// another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    log: Uuid,
    through: u64,
}

impl Seen {
    pub(crate) fn new(log: Uuid, through: u64) -> Seen {
        Seen { log, through }
    }

    /// The log's token.
    pub fn log(&self) -> Uuid {
        self.log
    }

    /// The position through which the look-up saw the log.
    pub fn through(&self) -> u64 {
        self.through
    }
}

/// What a look-up of an append's event ids found before the append
/// ([`EventStore::find_events_checked`], made by the import planner): no
/// event of the log it saw, at a position up to the one it saw it
/// through, has the id of any of the append's events but those
/// `unchecked` lists (by their index among the append's events, request
/// after request), whose ids were never looked up (ids minted while
/// planning). A writer handed one looks up, among all its events, every
/// unchecked id and every id that one of the events after that position
/// may have; it leaves out only what the look-up already did, so an id is
/// stored at most once whatever happened since (docs/storage.md, "Ids
/// checked by the planner"). Made only by this crate, for the requests it
/// was made of: handed with other requests (other ids, or the same in
/// another order), or to another log, it is not used and every id is
/// looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdsChecked {
    seen: Seen,
    unchecked: Vec<u32>,
    /// The requests' events.
    events: usize,
    /// [`ids_digest`] of the requests' ids, in order.
    digest: u64,
}

/// A digest of the event ids of `requests`, in order: what binds an
/// [`IdsChecked`] to the requests it was made of (a safeguard against a
/// caller's mistake, not against an adversary: a caller of the engine
/// can append any id it likes anyway).
fn ids_digest(requests: &[AppendRequest]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // The ids' own hashing (the process's seed: the same on both sides).
    let mut h = segment::IdHash::default().build_hasher();
    for e in requests.iter().flat_map(|r| &r.events) {
        e.event_id.hash(&mut h);
    }
    h.finish()
}

impl IdsChecked {
    /// For `requests` as they are: `unchecked` (indices among their
    /// events) in increasing order.
    pub(crate) fn new(seen: Seen, unchecked: Vec<u32>, requests: &[AppendRequest]) -> IdsChecked {
        let events = requests.iter().map(|r| r.events.len()).sum();
        debug_assert!(unchecked.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(unchecked.last().is_none_or(|&i| (i as usize) < events));
        IdsChecked {
            seen,
            unchecked,
            events,
            digest: ids_digest(requests),
        }
    }

    /// Whether it was made of `requests` (of `events` events), and
    /// answers for one of their ids at least.
    fn made_of(&self, requests: &[AppendRequest], events: usize) -> bool {
        self.events == events
            && self.unchecked.len() < events
            && self.digest == ids_digest(requests)
    }

    /// Whether the append's `i`th event's id was looked up.
    fn is_checked(&self, i: usize) -> bool {
        u32::try_from(i).is_ok_and(|i| self.unchecked.binary_search(&i).is_err())
    }
}

/// Events for one stream, appended together.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Where an append's events landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub stream: StreamId,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// The last durable event of a log (position 0 and the genesis hash when
/// the log is empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub position: u64,
    pub hash: Hash,
}

/// One problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub position: u64,
    pub what: String,
}

/// The outcome of `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events: u64,
    pub head: String,
    pub problems: Vec<Problem>,
}

/// How many problems `verify` lists before it only counts. The first one is
/// what an auditor needs; a hundred is enough to see a pattern.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// Largest page a read returns; callers page with `from`.
pub const MAX_READ_PAGE: usize = 10_000;

/// Upper bound on the events of one atomic append (one import). Bounds the
/// memory of a batch: about 1 KiB an event in flight.
pub const MAX_EVENTS_PER_APPEND: usize = 2_000_000;

/// Writes a checkpoint's bytes ([`EventStore::save_checkpoint_with`]).
pub type CheckpointWriter<'a> =
    &'a mut (dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + Send);

/// A stored checkpoint opened for reading ([`EventStore::open_checkpoint`]).
pub struct CheckpointReader {
    /// Its size in bytes.
    pub len: u64,
    /// Its bytes, from the first.
    pub bytes: Box<dyn std::io::Read + Send>,
}

/// A school's event log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one stream. Returns once they are durable.
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        let mut done = self.append_atomic(vec![request]).await?;
        done.pop().ok_or(StoreError::WriterStopped)
    }

    /// Appends to several streams as one unit: all are stored, or none (an
    /// import). Every expected version is checked before anything is written.
    async fn append_atomic(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError>;

    /// [`EventStore::append_atomic`] of the requests `presealed` holds,
    /// their events already sealed by the caller ([`Presealed::seal`], the
    /// import pipeline) at the head it expects: a backend whose writer
    /// finds its head there stores those bytes instead of sealing the
    /// events again, and otherwise seals them as any append. The outcome,
    /// the checks and the stored bytes are those of `append_atomic` with
    /// the presealed `recorded_at`. The default appends the requests.
    async fn append_presealed(&self, presealed: Presealed) -> Result<Vec<Appended>, StoreError> {
        self.append_atomic(presealed.into_requests()).await
    }

    /// [`EventStore::append_atomic`] of requests whose ids the caller
    /// looked up with [`EventStore::find_events_checked`] and found absent
    /// (`checked`, the import planner's): a backend may leave out its own
    /// look-up of those ids among the events the look-up saw, and looks up
    /// the rest as for any append. The outcome is that of `append_atomic`.
    /// The default is `append_atomic`.
    async fn append_atomic_checked(
        &self,
        requests: Vec<AppendRequest>,
        checked: IdsChecked,
    ) -> Result<Vec<Appended>, StoreError> {
        let _ = checked;
        self.append_atomic(requests).await
    }

    /// Whether [`EventStore::append_presealed`] can use what a caller
    /// sealed ahead (a caller that cannot gain by it does not seal ahead).
    fn seals_ahead(&self) -> bool {
        false
    }

    /// Tells the store that about `events` more events are coming in
    /// appends after this call (a batched import's remaining lines), so
    /// that it can make room for them at once instead of growing as they
    /// come. Only a hint: nothing is reserved or promised, a later call
    /// replaces it, and a wrong figure costs memory or time, never
    /// correctness. By default nothing; the segment engine sizes its id
    /// table for them (docs/storage.md, "The id table grown for an
    /// import").
    fn expect_appends(&self, events: u64) {
        let _ = events;
    }

    /// [`EventStore::append_atomic`] of events whose ids this process
    /// minted ([`Uuid::now_v7`]: 74 random bits), as
    /// [`EventStore::append_minted`] is of one request: an import whose
    /// lines carry no `id` ([`ImportPlan::minted`]). The default is
    /// `append_atomic`.
    ///
    /// [`ImportPlan::minted`]: crate::import::ImportPlan::minted
    async fn append_atomic_minted(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_atomic(requests).await
    }

    /// [`EventStore::append`] of events whose ids this process minted
    /// ([`NewEvent::new`]: UUID v7, 74 random bits), such as the access
    /// log's `RecordViewed`: everything is checked as for `append` but
    /// that the ids are not looked up among the stored ones. The segment
    /// engine uses this while its event ids are still in its index
    /// snapshot (an open that only reads), so that a logged read does
    /// not read them; a repeat (never expected) is found, as a corrupt
    /// log, when the ids are next read. One request of
    /// [`EventStore::append_atomic_minted`], as `append` is of
    /// `append_atomic`.
    async fn append_minted(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        let mut done = self.append_atomic_minted(vec![request]).await?;
        done.pop().ok_or(StoreError::WriterStopped)
    }

    /// Up to `max` events of `stream` from `from_version` (1 = the first).
    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// [`EventStore::read_stream`] handing each event to `visit` in turn,
    /// borrowed, instead of returning them: the same events in the same
    /// order (a backend may lend them from its read buffer, without an owned
    /// envelope each; the per-pupil reads decode each payload from it).
    /// Returns how many events were visited; stops at the first error of
    /// `visit`, and returns it.
    async fn visit_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
        visit: &mut dyn StreamVisitor,
    ) -> Result<usize, StoreError> {
        let events = self.read_stream(stream, from_version, max).await?;
        visit.expect(events.len());
        for s in &events {
            visit.visit(&s.as_event_ref())?;
        }
        Ok(events.len())
    }

    /// Up to `max` events of the log from `from_position` (1 = the first).
    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The stream's current version (0 when it has no events).
    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError>;

    /// The event with this id, if stored.
    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError>;

    /// The stored events with these ids, by id; ids not stored are absent.
    /// Repeated ids are looked up once. The batched form of
    /// [`EventStore::find_event`] (the import planner's prefetch calls it
    /// through [`EventStore::find_events_checked`]); a backend with round
    /// trips answers it in a few queries.
    async fn find_events(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
        let mut found = HashMap::new();
        let mut asked = std::collections::HashSet::new();
        for id in ids {
            if asked.insert(*id) {
                if let Some(e) = self.find_event(*id).await? {
                    found.insert(*id, e);
                }
            }
        }
        Ok(found)
    }

    /// [`EventStore::find_events`], and which log the look-up saw through
    /// which position ([`Seen`]): none of `ids` missing from the answer is
    /// stored at a position up to it. `None` when the backend cannot tell
    /// (the default), and then nothing is skipped on its strength
    /// ([`IdsChecked`]). A store that wraps another forwards both this and
    /// [`EventStore::append_atomic_checked`] to it, or neither.
    async fn find_events_checked(
        &self,
        ids: &[Uuid],
    ) -> Result<(HashMap<Uuid, StoredEvent>, Option<Seen>), StoreError> {
        Ok((self.find_events(ids).await?, None))
    }

    /// Where each of these events is, by id, each looked for first in the
    /// stream named with it, below the version named with it (a
    /// correction names an earlier entry of its own pupil); ids not found
    /// there are looked up by id; ids not stored are absent. The default
    /// looks every one up by id ([`EventStore::find_events`]); the segment
    /// engine, while its event ids are still in its index snapshot (an
    /// open that only reads), reads the streams instead of the ids,
    /// newest first.
    async fn positions_in_streams(
        &self,
        wanted: &[InStream],
    ) -> Result<HashMap<Uuid, u64>, StoreError> {
        let ids: Vec<Uuid> = wanted.iter().map(|w| w.id).collect();
        Ok(self
            .find_events(&ids)
            .await?
            .into_iter()
            .map(|(id, e)| (id, e.position))
            .collect())
    }

    /// [`EventStore::read_streams`] handed to `visit` instead of returned:
    /// the events of each of these streams that has any, in version order,
    /// one stream after another (each event names its stream). Repeated
    /// streams are visited once. An error from `visit` stops the read. The
    /// import planner folds its pupils' histories with it. The default
    /// visits one stream at a time ([`visit_whole_stream`]), so that it
    /// holds one stream's events at most; the segment log lends them from
    /// its read buffer, and PostgreSQL reads the streams asked in one
    /// query per 4,096 streams.
    async fn visit_streams(
        &self,
        streams: &[StreamId],
        visit: &mut dyn StreamVisitor,
    ) -> Result<(), StoreError> {
        for stream in each_once(streams) {
            visit_whole_stream(self, stream, visit).await?;
        }
        Ok(())
    }

    /// [`EventStore::visit_streams`] of each stream from a version on: the
    /// events of each `(stream, from)` from version `from` (1: all of
    /// them), in version order, one stream after another; a stream with
    /// none from there is not visited. Repeated streams are visited once,
    /// from the first version named with them. The import planner folds
    /// its pupils' histories with it from where its facts checkpoint
    /// leaves each (`crate::known`). The default visits one stream at a
    /// time ([`visit_stream_from`]).
    async fn visit_streams_from(
        &self,
        streams: &[(StreamId, u64)],
        visit: &mut dyn StreamVisitor,
    ) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for &(stream, from) in streams {
            if seen.insert(stream) {
                visit_stream_from(self, stream, from, visit).await?;
            }
        }
        Ok(())
    }

    /// [`EventStore::will_read_streams`] for reads from a version on
    /// ([`EventStore::visit_streams_from`]): only the events from each
    /// `from` will be read. The default tells `will_read_streams` of the
    /// streams read from their first event.
    async fn will_read_streams_from(&self, streams: &[(StreamId, u64)]) -> Result<(), StoreError> {
        let whole: Vec<StreamId> = streams
            .iter()
            .filter(|(_, from)| *from <= 1)
            .map(|(s, _)| *s)
            .collect();
        self.will_read_streams(&whole).await
    }

    /// Told before `streams` are read whole, a slice at a time (the import
    /// planner folding its lines' pupils): a store that finds streams'
    /// events more cheaply for a few than for many may make ready for all
    /// of them at once. The segment log with a sparse index reads every
    /// location when their events fill more groups than it walks for
    /// (`SegmentOptions::locations_at_open`). The default does nothing.
    async fn will_read_streams(&self, streams: &[StreamId]) -> Result<(), StoreError> {
        let _ = streams;
        Ok(())
    }

    /// Every event of each of these streams, in version order, by stream;
    /// streams with no events are absent. Repeated streams are read once.
    /// The batched form of [`read_whole_stream`] (the import planner's
    /// prefetch): for bounded sets of pupils' streams, never the whole log.
    async fn read_streams(
        &self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, Vec<StoredEvent>>, StoreError> {
        let mut found = HashMap::new();
        for stream in each_once(streams) {
            let events = read_whole_stream(self, stream).await?;
            if !events.is_empty() {
                found.insert(stream, events);
            }
        }
        Ok(found)
    }

    /// The last durable event.
    async fn head(&self) -> Result<Head, StoreError>;

    /// Notified with the durable head position after every commit.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// A projection checkpoint by name.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// [`EventStore::load_checkpoint`] as a reader, so that a caller may
    /// decode the bytes as they are read instead of holding them all. A
    /// store may read them from disk as they are asked for (the segment
    /// store does: a large school's attendance checkpoint is tens of MB);
    /// by default they are `load_checkpoint`'s bytes, read from memory.
    async fn open_checkpoint(&self, name: &str) -> Result<Option<CheckpointReader>, StoreError> {
        Ok(self
            .load_checkpoint(name)
            .await?
            .map(|bytes| CheckpointReader {
                len: bytes.len() as u64,
                bytes: Box::new(std::io::Cursor::new(bytes)),
            }))
    }

    /// The first `n` bytes of a checkpoint (all of it if it is shorter) and
    /// its whole size, without reading the rest where the store can (the
    /// segment store reads them from the file, PostgreSQL sends only
    /// them): what a load that decides whether to decode a checkpoint
    /// looks at (`projections::runner`, a view brought along another's
    /// fold). By default, the first bytes of `open_checkpoint`'s reader.
    async fn checkpoint_prefix(
        &self,
        name: &str,
        n: usize,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        use std::io::Read as _;
        let Some(checkpoint) = self.open_checkpoint(name).await? else {
            return Ok(None);
        };
        let mut prefix = Vec::with_capacity(n.min(1 << 16));
        checkpoint
            .bytes
            .take(n as u64)
            .read_to_end(&mut prefix)
            .map_err(|e| StoreError::io("read checkpoint", e))?;
        Ok(Some((prefix, checkpoint.len)))
    }

    /// Stores a checkpoint durably (outside the hash chain: checkpoints are
    /// derived data and can always be rebuilt from the log).
    async fn save_checkpoint(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError>;

    /// [`EventStore::save_checkpoint`] of the bytes `write` writes (about
    /// `size_hint` of them). A store may stream them to disk instead of
    /// holding them all (the segment store does: a checkpoint at millions
    /// of events is hundreds of MB). When `write` fails, the checkpoint
    /// stored before is left as it was.
    async fn save_checkpoint_with(
        &self,
        name: &str,
        size_hint: usize,
        write: CheckpointWriter<'_>,
    ) -> Result<(), StoreError> {
        let mut bytes = Vec::with_capacity(size_hint);
        write(&mut bytes).map_err(|e| StoreError::io("encode checkpoint", e))?;
        self.save_checkpoint(name, bytes).await
    }

    /// Removes every checkpoint (a full rebuild follows).
    async fn clear_checkpoints(&self) -> Result<(), StoreError>;

    /// Recomputes the hash chain and checks positions, versions and indexes.
    /// `progress` is called with the number of events checked so far.
    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError>;
}

/// Whether this thread may block in place: it runs on a multi-threaded
/// tokio runtime (a single-threaded one has no thread to drive the store's
/// I/O meanwhile). The import planner's fold on two threads and a view
/// rebuild's read-ahead ask it.
pub fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Reads a whole stream, page by page. For a pupil's record (bounded by one
/// pupil's history), never for the whole log.
pub async fn read_whole_stream<S: EventStore + ?Sized>(
    store: &S,
    stream: StreamId,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    loop {
        let from = out.len() as u64 + 1;
        let page = store.read_stream(stream, from, MAX_READ_PAGE).await?;
        let done = page.len() < MAX_READ_PAGE;
        if out.is_empty() {
            // The first page (often the whole record) as read, not copied.
            out = page;
        } else {
            out.extend(page);
        }
        if done {
            return Ok(out);
        }
    }
}

/// What [`EventStore::visit_stream`] hands a stream's events to.
pub trait StreamVisitor: Send {
    /// How many events this page holds, before the first is visited (a
    /// capacity hint; a backend that does not know says nothing).
    fn expect(&mut self, _events: usize) {}

    /// The next event, in stream order. An error stops the read.
    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError>;
}

/// An event looked for by id in a stream
/// ([`EventStore::positions_in_streams`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InStream {
    pub stream: StreamId,
    /// The event is of a version below this one (a correction's entry
    /// comes before the correction); `u64::MAX` when not known.
    pub below: u64,
    pub id: Uuid,
}

/// The events `read_streams` `found` of `streams`, handed to `visit` stream
/// after stream in the order asked, each once: [`EventStore::visit_streams`]
/// for a backend that reads a batch of streams at once.
pub(crate) fn visit_found(
    streams: &[StreamId],
    found: &HashMap<StreamId, Vec<StoredEvent>>,
    visit: &mut dyn StreamVisitor,
) -> Result<(), StoreError> {
    for stream in each_once(streams) {
        if let Some(events) = found.get(&stream) {
            visit.expect(events.len());
            for e in events {
                visit.visit(&e.as_event_ref())?;
            }
        }
    }
    Ok(())
}

/// `streams` without repeats, in the order asked.
pub(crate) fn each_once(streams: &[StreamId]) -> impl Iterator<Item = StreamId> + '_ {
    let mut seen = std::collections::HashSet::new();
    streams.iter().copied().filter(move |s| seen.insert(*s))
}

/// [`read_whole_stream`] through [`EventStore::visit_stream`]: every event
/// of a stream handed to `visit` in order, page by page.
pub async fn visit_whole_stream<S: EventStore + ?Sized>(
    store: &S,
    stream: StreamId,
    visit: &mut dyn StreamVisitor,
) -> Result<(), StoreError> {
    visit_stream_from(store, stream, 1, visit).await
}

/// [`visit_whole_stream`] from version `from` on (1: every event).
pub async fn visit_stream_from<S: EventStore + ?Sized>(
    store: &S,
    stream: StreamId,
    from: u64,
    visit: &mut dyn StreamVisitor,
) -> Result<(), StoreError> {
    let mut next = from.max(1);
    loop {
        let n = store
            .visit_stream(stream, next, MAX_READ_PAGE, visit)
            .await?;
        next += n as u64;
        if n < MAX_READ_PAGE {
            return Ok(());
        }
    }
}

/// The refusal of an append or copy that would take a log to position
/// `last`, past the `limit` events its index can hold.
pub(crate) fn past_most_events(last: u64, limit: u64) -> StoreError {
    StoreError::Limit {
        what: "events in a school's log",
        count: usize::try_from(last).unwrap_or(usize::MAX),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

/// A catch-up subscription: every event from a position, then live events
/// as they become durable, with no gap or duplicate at the seam.
///
/// It reads by position from the store itself and uses the head watch only
/// as a wake-up, so a missed notification can delay but never lose an event.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    next_position: u64,
    buffer: std::collections::VecDeque<StoredEvent>,
    head: watch::Receiver<u64>,
}

/// Subscribes to `store` from `from_position` (1 = the whole log).
pub fn subscribe(store: Arc<dyn EventStore>, from_position: u64) -> Subscription {
    let head = store.watch_head();
    Subscription {
        store,
        next_position: from_position.max(1),
        buffer: Default::default(),
        head,
    }
}

impl Subscription {
    /// The next event, waiting for one if the subscriber is caught up.
    /// `Ok(None)` when the store closed.
    pub async fn next(&mut self) -> Result<Option<StoredEvent>, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                debug_assert_eq!(event.position, self.next_position);
                self.next_position = event.position + 1;
                return Ok(Some(event));
            }
            // Mark the current head as seen before reading, so a commit that
            // lands after this read still wakes us.
            let _ = self.head.borrow_and_update();
            let page = self.store.read_all(self.next_position, 1024).await?;
            if page.is_empty() {
                if self.head.changed().await.is_err() {
                    return Ok(None);
                }
                continue;
            }
            if page[0].position != self.next_position {
                return Err(StoreError::Corrupt {
                    location: format!("position {}", self.next_position),
                    what: format!("read returned position {} instead", page[0].position),
                });
            }
            self.buffer.extend(page);
        }
    }

    /// The position the next event will have.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }
}

/// The backend-independent half of `verify`: fed every stored value in key
/// order, it checks gaplessness, the chain, and per-stream versions. The
/// backend adds its own index checks through [`ChainVerifier::problem`].
pub struct ChainVerifier {
    expected_position: u64,
    prev_hash: Hash,
    stream_versions: HashMap<StreamId, u64>,
    problems: Problems,
    events: u64,
}

/// What the chain checks read of a stored event (its key fields, the hash
/// it links to and its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Links {
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl Links {
    fn of(e: &StoredEvent) -> Links {
        Links::of_ref(&e.as_event_ref())
    }

    fn of_ref(e: &EventRef<'_>) -> Links {
        Links {
            position: e.position,
            stream: e.stream,
            version: e.version,
            event_id: e.event_id,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// The problem of a value whose hash is not its content's.
const ALTERED: &str = "hash does not match the event's content (event altered)";

/// Whether `value`'s trailing hash is BLAKE3 of `prev_hash` and its body.
fn content_matches(prev_hash: &Hash, value: &[u8]) -> bool {
    split_value(value).is_ok_and(|(body, hash)| chain_hash(prev_hash, body) == hash)
}

/// The content hashes of a verify checked apart from the rest of its
/// checks (on a thread of their own: they are most of a verify's
/// processor time, and each event's is independent of every other's once
/// its `prev_hash` is known). Fed values with the `prev_hash` each links
/// to ([`ChainVerifier::check_links`]); its problems go to
/// [`ChainVerifier::absorb`].
#[derive(Debug, Default)]
pub struct ContentCheck {
    problems: Problems,
}

impl ContentCheck {
    /// Checks the value stored at `position`.
    pub fn check(&mut self, position: u64, prev_hash: &Hash, value: &[u8]) {
        if !content_matches(prev_hash, value) {
            self.problems.push(position, || ALTERED);
        }
    }

    pub fn finish(self) -> Problems {
        self.problems
    }
}

/// The problems a verify found: the first [`MAX_REPORTED_PROBLEMS`]
/// listed, all of them counted. A backend's checker on another thread
/// keeps its own and hands it to [`ChainVerifier::absorb`].
#[derive(Debug, Default)]
pub struct Problems {
    listed: Vec<Problem>,
    count: u64,
}

impl Problems {
    /// Records a problem at `position` (`what` is only built while the
    /// list has room).
    pub fn push<S: Into<String>>(&mut self, position: u64, what: impl FnOnce() -> S) {
        self.count += 1;
        if self.listed.len() < MAX_REPORTED_PROBLEMS {
            self.listed.push(Problem {
                position,
                what: what().into(),
            });
        }
    }
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            expected_position: 1,
            prev_hash: GENESIS_HASH,
            stream_versions: HashMap::new(),
            problems: Problems::default(),
            events: 0,
        }
    }

    /// Records a problem at `position`.
    pub fn problem(&mut self, position: u64, what: impl Into<String>) {
        self.problems.push(position, || what);
    }

    /// Adds the problems a checker found apart (listed while the list has
    /// room, all counted).
    pub fn absorb(&mut self, other: Problems) {
        let unlisted = other.count - other.listed.len() as u64;
        for p in other.listed {
            self.problems.push(p.position, || p.what);
        }
        self.problems.count += unlisted;
    }

    /// Checks the value stored under `key_position`. Returns the decoded
    /// event when it could be decoded, for the backend's index checks.
    pub fn check(&mut self, key_position: u64, value: &[u8]) -> Option<StoredEvent> {
        let event = self.decoded(key_position, value)?;
        let links = Links::of(&event);
        self.link(key_position, &links, Some(value));
        Some(event)
    }

    /// [`ChainVerifier::check`] but for the content hash, which the caller
    /// checks ([`ContentCheck`], on another thread) against the returned
    /// links' `prev_hash`; the problems it finds are the same, and in the
    /// same order once [`ChainVerifier::finish`] sorts them. The value is
    /// read in place where it is in the encoder's own forms.
    pub fn check_links(&mut self, key_position: u64, value: &[u8]) -> Option<Links> {
        let links = match EventRef::decode_plain(value) {
            Some(e) => {
                self.position_checked(key_position);
                Links::of_ref(&e)
            }
            None => Links::of(&self.decoded(key_position, value)?),
        };
        self.link(key_position, &links, None);
        Some(links)
    }

    /// Counts the value and checks its key's place in the log.
    fn position_checked(&mut self, key_position: u64) {
        self.events += 1;
        if key_position != self.expected_position {
            if key_position > self.expected_position {
                let missing = key_position - self.expected_position;
                self.problem(
                    self.expected_position,
                    format!(
                        "event missing: positions {}..{} are absent ({missing} events)",
                        self.expected_position,
                        key_position - 1
                    ),
                );
            } else {
                self.problem(key_position, "position out of order or duplicated");
            }
        }
        self.expected_position = key_position + 1;
    }

    /// The value decoded, after its key's place is checked; on
    /// a failure, the problem is recorded and the chain resumes from the
    /// value's trailing hash, if any, so one damaged event is reported
    /// once, not at every later one.
    fn decoded(&mut self, key_position: u64, value: &[u8]) -> Option<StoredEvent> {
        self.position_checked(key_position);
        match StoredEvent::decode(value) {
            Ok(e) => Some(e),
            Err(e) => {
                self.problem(key_position, format!("event cannot be decoded: {e}"));
                if let Ok((_, hash)) = split_value(value) {
                    self.prev_hash = hash;
                }
                None
            }
        }
    }

    /// The checks of a decoded event against the ones before it: its
    /// position, its link to the previous hash, the content hash of
    /// `value` (when it is checked here) and its stream's version.
    fn link(&mut self, key_position: u64, event: &Links, value: Option<&[u8]>) {
        if event.position != key_position {
            self.problem(
                key_position,
                format!("event stored under position {key_position} says it is position {} (moved or reordered)",
                    event.position),
            );
        }
        if event.prev_hash != self.prev_hash {
            self.problem(key_position, "prev_hash does not match the previous event's hash (chain broken: an event before it was changed, removed or inserted)");
        }
        if value.is_some_and(|value| !content_matches(&event.prev_hash, value)) {
            self.problem(key_position, ALTERED);
        }
        let last = self
            .stream_versions
            .get(&event.stream)
            .copied()
            .unwrap_or(0);
        if event.version != last + 1 {
            self.problem(
                key_position,
                format!(
                    "stream {} version {} follows version {last} (versions must be gapless)",
                    event.stream, event.version
                ),
            );
        }
        self.stream_versions
            .insert(event.stream, event.version.max(last));
        self.prev_hash = event.hash;
    }

    /// Number of events whose values were checked.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Number of distinct streams seen.
    pub fn streams(&self) -> usize {
        self.stream_versions.len()
    }

    /// The hash of the last event checked.
    pub fn last_hash(&self) -> Hash {
        self.prev_hash
    }

    /// The position after the last one checked.
    pub fn expected_position(&self) -> u64 {
        self.expected_position
    }

    pub fn finish(self) -> VerifyReport {
        let Problems {
            listed: mut problems,
            count,
        } = self.problems;
        problems.sort_by_key(|p| p.position);
        if count > problems.len() as u64 {
            let more = count - problems.len() as u64;
            problems.push(Problem {
                position: 0,
                what: format!("{more} further problems not listed"),
            });
        }
        VerifyReport {
            ok: problems.is_empty(),
            events: self.events,
            head: crate::envelope::hex(&self.prev_hash),
            problems,
        }
    }
}

/// Where a log's writer answers one append.
pub(crate) struct Reply(oneshot::Sender<Answer>);

/// A writer's answer to one append, and the append's requests when the
/// writer hands them back ([`Reply::send_back`]): they are dropped by the
/// waiting task, so their memory is freed off the writer's thread, usually
/// by the thread that allocated it (a free from another thread costs both
/// threads more, and the writer is the import's busiest). The segment
/// writer hands them back with every answer except after a failed write.
pub(crate) struct Answer {
    result: Result<Vec<Appended>, StoreError>,
    spent: Vec<AppendRequest>,
}

impl Reply {
    /// Answers the append (the writer drops its requests).
    pub fn send(self, result: Result<Vec<Appended>, StoreError>) {
        self.send_back(result, Vec::new());
    }

    /// Answers the append and hands its requests back to the caller.
    pub fn send_back(self, result: Result<Vec<Appended>, StoreError>, spent: Vec<AppendRequest>) {
        // A caller that stopped waiting has nothing to be told.
        let _ = self.0.send(Answer { result, spent });
    }
}

/// One append handed to a log's writer (sled's writer thread, PostgreSQL's
/// writer task), which group-commits what is queued.
pub(crate) struct Commit {
    pub requests: Vec<AppendRequest>,
    /// The requests' events as the caller sealed them ahead
    /// ([`EventStore::append_presealed`]); only the segment writer uses it.
    pub presealed: Option<Sealing>,
    /// Every event id was minted by this process
    /// ([`EventStore::append_minted`]); only the segment writer uses it.
    pub minted: bool,
    /// What the caller's look-up of the ids found
    /// ([`EventStore::append_atomic_checked`]); the segment and PostgreSQL
    /// writers use it.
    pub checked: Option<IdsChecked>,
    /// Where a large append's events go back to the caller as soon as they
    /// are sealed ([`HandBack`]); only the segment writer uses it.
    pub hand_back: Option<HandBack>,
    pub reply: Reply,
}

/// Where the writer hands back a large append's events, request by
/// request, once it has sealed them, while it goes on sealing, writing and
/// syncing the rest: the waiting caller frees them on its own thread as
/// they come, so the append's events and their sealed bytes are not all
/// held at once (an import of a million lines held both: ~210 and ~360
/// bytes an event). Small appends are answered with their requests whole
/// ([`Reply::send_back`]).
pub(crate) type HandBack = tokio::sync::mpsc::UnboundedSender<Vec<NewEvent>>;

/// Events in one append from which the writer hands them back as it
/// seals them ([`HandBack`]): far above a pipelined import's batches
/// (1,024) and any group of single appends.
pub(crate) const HAND_BACK_EVENTS: usize = 65_536;

/// Hands `requests` to the writer behind `sender` and waits for its answer:
/// the append path every backend with a group-committing writer shares.
pub(crate) async fn submit(
    sender: Option<&mpsc::Sender<Commit>>,
    requests: Vec<AppendRequest>,
) -> Result<Vec<Appended>, StoreError> {
    submit_with(sender, requests, None, false, None).await
}

/// [`submit`] with the requests' events sealed ahead by the caller, with
/// ids it minted, or with ids it looked up.
pub(crate) async fn submit_with(
    sender: Option<&mpsc::Sender<Commit>>,
    requests: Vec<AppendRequest>,
    presealed: Option<Sealing>,
    minted: bool,
    checked: Option<IdsChecked>,
) -> Result<Vec<Appended>, StoreError> {
    if requests.is_empty() {
        // An atomic append of nothing is done: no group, no write.
        return Ok(Vec::new());
    }
    let sender = sender.ok_or(StoreError::WriterStopped)?;
    let (reply, mut answer) = oneshot::channel();
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let (hand_back, mut handed_back) = match events >= HAND_BACK_EVENTS {
        true => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    sender
        .send(Commit {
            requests,
            presealed,
            minted,
            checked,
            hand_back,
            reply: Reply(reply),
        })
        .await
        .map_err(|_| StoreError::WriterStopped)?;
    // A large append's events come back as they are sealed: freed here
    // while the writer goes on.
    let answer = match handed_back.as_mut() {
        Some(rx) => loop {
            tokio::select! {
                Some(events) = rx.recv() => drop(events),
                answer = &mut answer => break answer,
            }
        },
        None => answer.await,
    };
    let Answer { result, spent } = answer.map_err(|_| StoreError::WriterStopped)?;
    drop(spent);
    result
}

/// A writer's next group: `first` and whatever else is already queued, up
/// to `max_events` events (a single larger append is a group of its own).
pub(crate) fn next_group(
    first: Commit,
    receiver: &mut mpsc::Receiver<Commit>,
    max_events: usize,
) -> Vec<Commit> {
    let count = |c: &Commit| c.requests.iter().map(|r| r.events.len()).sum::<usize>();
    let mut events = count(&first);
    let mut group = vec![first];
    while events < max_events {
        match receiver.try_recv() {
            Ok(c) => {
                events += count(&c);
                group.push(c);
            }
            Err(_) => break,
        }
    }
    group
}

/// Answers every staged append of a group whose write failed: `DiskFull`
/// stays `DiskFull` (its own message and exit code), anything else is an
/// I/O error naming what failed. None of them was acknowledged.
pub(crate) fn fail_group(staged: impl IntoIterator<Item = Reply>, e: &StoreError) {
    let disk_full = matches!(e, StoreError::DiskFull { .. });
    let text = e.to_string();
    for reply in staged {
        reply.send(Err(if disk_full {
            StoreError::DiskFull { during: "append" }
        } else {
            StoreError::Io {
                during: "append",
                source: text.clone().into(),
            }
        }));
    }
}

/// What a writer reads of its committed log while it checks a group: the
/// part of staging that differs between backends.
pub(crate) trait Committed {
    /// The committed version of `stream` (0 when it has no events).
    fn committed_version(&mut self, stream: StreamId) -> Result<u64, StoreError>;
    /// The position of the stored event with this id, if there is one.
    fn stored_position(&mut self, event_id: Uuid) -> Result<Option<u64>, StoreError>;
    /// Told of the next ids [`Committed::stored_position`] will be asked
    /// for ([`LOOKUP_AHEAD`] at a time), so that it can fetch what their
    /// look-ups read together; by default nothing.
    fn ahead<'e>(&mut self, ids: impl Iterator<Item = &'e Uuid>) {
        let _ = ids;
    }
    /// A test of ids against the committed events after what `seen` saw
    /// (of this log, through a position), for an append of `events`
    /// events: `true` only for an id none of them has (`false`: one may
    /// have it, look it up). `None` (the default) when it cannot be made
    /// (`seen` is of another log, ...) or would cost more than the
    /// look-ups it saves, and every id is looked up ([`IdsChecked`]).
    fn absent_after(&mut self, seen: Seen, events: usize) -> Option<AbsentAfter> {
        let _ = (seen, events);
        None
    }
}

/// [`Committed::absent_after`]'s test.
pub(crate) type AbsentAfter = Box<dyn Fn(&Uuid) -> bool>;

/// Ids a writer tells its [`Committed`] of at a time, ahead of their
/// look-ups.
pub(crate) const LOOKUP_AHEAD: usize = 512;

/// A group's sealed bytes, one event's after another, each addressed by
/// its offset in the group ([`Sealed::range`]). A writer that has written
/// a prefix of them lets it go ([`GroupBytes::let_go_below`]), so that one
/// large atomic append (an import of a million lines) does not hold every
/// event's bytes until its end; only the bytes from `front` on are held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupBytes {
    /// Offset in the group of `held[0]`.
    front: usize,
    held: Vec<u8>,
}

impl GroupBytes {
    /// Offset in the group of the first byte held.
    pub fn front(&self) -> usize {
        self.front
    }

    /// The group's length: where the next event's bytes go.
    pub fn len(&self) -> usize {
        self.front + self.held.len()
    }

    /// Empty, from the group's start, keeping the buffer.
    pub fn clear(&mut self) {
        self.front = 0;
        self.held.clear();
    }

    /// The buffer's capacity.
    pub fn capacity(&self) -> usize {
        self.held.capacity()
    }

    pub fn reserve_exact(&mut self, more: usize) {
        self.held.reserve_exact(more);
    }

    pub fn try_reserve(&mut self, more: usize) -> Result<(), std::collections::TryReserveError> {
        self.held.try_reserve(more)
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
    }

    /// The buffer the group's next bytes are appended to (at [`GroupBytes::len`]).
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.held
    }

    /// Cuts the group back to `len` bytes. Below the bytes held, the group
    /// goes on from `len` with none held (what was let go below it was
    /// written; what was let go above it is void with the events cut).
    pub fn truncate(&mut self, len: usize) {
        match len.checked_sub(self.front) {
            Some(held) => self.held.truncate(held),
            None => {
                self.held.clear();
                self.front = len;
            }
        }
    }

    /// The group's bytes in `range`, `None` where any were let go.
    pub fn get(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        let start = range.start.checked_sub(self.front)?;
        let end = range.end.checked_sub(self.front)?;
        self.held.get(start..end)
    }

    /// Lets go of the group's bytes below offset `at` (written, never read
    /// again): the bytes held after them move to the buffer's start, which
    /// the group's next bytes then fill again.
    pub fn let_go_below(&mut self, at: usize) {
        let n = at.saturating_sub(self.front).min(self.held.len());
        self.held.drain(..n);
        self.front += n;
    }
}

impl std::ops::Index<std::ops::Range<usize>> for GroupBytes {
    type Output = [u8];

    /// # Panics
    ///
    /// Where any byte of `range` was let go: a writer reads only the bytes
    /// of events it has not written.
    fn index(&self, range: std::ops::Range<usize>) -> &[u8] {
        match self.get(range.clone()) {
            Some(bytes) => bytes,
            None => panic!(
                "bytes {range:?} of a group are not held (from {} on)",
                self.front
            ),
        }
    }
}

/// One event sealed by [`GroupStage::stage`]: where it landed, and where
/// in the group's buffer ([`GroupStage::bytes`]) the exact bytes every
/// backend stores for it (envelope body `||` hash) are.
pub(crate) struct Sealed {
    pub event: SealedEvent,
    pub range: std::ops::Range<usize>,
}

impl Sealed {
    /// The event's hash: the last 32 bytes of its stored bytes in `bytes`
    /// (the buffer `range` is in), not kept twice (an import of a million
    /// events holds a million of these at once).
    pub fn hash(&self, bytes: &GroupBytes) -> Hash {
        let mut hash = Hash::default();
        let tail = self.range.end.saturating_sub(crate::envelope::HASH_LEN)..self.range.end;
        match bytes.get(tail) {
            Some(tail) => hash.copy_from_slice(tail),
            None => debug_assert!(false, "a sealed event's range is in its buffer"),
        }
        hash
    }
}

/// What a backend indexes of a sealed event beside its bytes (the rest of
/// the envelope is in the bytes; no copy of actor, type or payload).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SealedEvent {
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

impl SealedEvent {
    /// The fixed fields of an event already stored.
    pub fn of(e: &StoredEvent) -> SealedEvent {
        SealedEvent {
            position: e.position,
            stream: e.stream,
            version: e.version,
            event_id: e.event_id,
            recorded_at: e.recorded_at,
        }
    }
}

/// An atomic append's events sealed by the caller ahead of its commit, at
/// the head the caller expects the log to have then ([`Presealed::seal`]):
/// the import pipeline seals batch k+1, continuing batch k's chain, while
/// the writer is still writing batch k, so that the writer, the import's
/// bottleneck, need not encode and hash it.
///
/// Nothing of it is trusted beyond what it was made from: the writer
/// checks the append exactly as any other, then adopts these bytes only if
/// its head is `head`, `recorded_at` keeps the log's times in order, and
/// every sealed event is the request's event at the position and version
/// the writer would give it; otherwise it seals the events itself. Only
/// [`Presealed::seal`] makes one, with the code every append is sealed by,
/// and it holds the requests it sealed: the bytes cannot be handed to the
/// writer with other events.
pub struct Presealed {
    requests: Vec<AppendRequest>,
    sealing: Sealing,
    /// What a look-up of the requests' ids found ([`IdsChecked`]); boxed,
    /// so that a presealed append stays about the size it was.
    checked: Option<Box<IdsChecked>>,
}

/// What [`Presealed::seal`] made of its requests.
pub(crate) struct Sealing {
    head: Head,
    recorded_us: i64,
    sealed: Vec<Sealed>,
    bytes: GroupBytes,
    /// The head after the events sealed (all of them, or a prefix).
    end: Head,
    /// Every event of the requests is sealed, not a prefix
    /// ([`Presealed::seal_until`]).
    complete: bool,
    /// Told the log's head once the writer has staged the append (checked
    /// and sealed, not yet written), for a caller that sealed a prefix only
    /// and seals the next append ahead from where this one will end
    /// ([`Presealed::staged_head`]).
    pub staged: Option<tokio::sync::oneshot::Sender<Head>>,
}

impl std::fmt::Debug for Presealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presealed")
            .field("head", &self.sealing.head.position)
            .field("events", &self.sealing.sealed.len())
            .field("end", &self.sealing.end.position)
            .finish()
    }
}

impl Presealed {
    /// Seals `requests` as the next append after `head`, recorded at
    /// `recorded_at`, taking each stream's version from its request's
    /// expected version. Hands the requests back when an expectation does
    /// not name a version (`Any`) or the events cannot be sealed: the
    /// append then goes the usual way.
    pub fn seal(
        head: Head,
        recorded_at: chrono::DateTime<chrono::Utc>,
        requests: Vec<AppendRequest>,
    ) -> Result<Presealed, Vec<AppendRequest>> {
        Presealed::seal_until(head, recorded_at, requests, &mut || false)
    }

    /// [`Presealed::seal`], stopping at the first event before which
    /// `stop` says so (asked every [`STOP_EVERY`] events, before the first
    /// too): a prefix of the events is sealed, possibly none, and the
    /// writer seals the rest onto it when it adopts the prefix, at the same
    /// `recorded_at`, so that what is stored is what a whole seal stores.
    /// The import pipeline seals the next batch until the batch in flight
    /// is acknowledged, then hands the rest to the writer, which would
    /// otherwise idle while the pipeline seals.
    pub fn seal_until(
        head: Head,
        recorded_at: chrono::DateTime<chrono::Utc>,
        mut requests: Vec<AppendRequest>,
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<Presealed, Vec<AppendRequest>> {
        match Sealing::of(head, recorded_at, &mut requests, stop) {
            Some(sealing) => Ok(Presealed {
                requests,
                sealing,
                checked: None,
            }),
            None => Err(requests),
        }
    }

    /// With what a look-up of its ids found (the import pipeline's
    /// [`EventStore::find_events_checked`]): handed to the writer with it,
    /// as [`EventStore::append_atomic_checked`] hands it.
    pub(crate) fn with_checked(mut self, checked: Option<IdsChecked>) -> Presealed {
        self.checked = checked.map(Box::new);
        self
    }

    /// Whether every event is sealed (not only a prefix).
    pub fn is_complete(&self) -> bool {
        self.sealing.complete
    }

    /// How many events, from the first, are sealed.
    pub fn sealed_events(&self) -> usize {
        self.sealing.sealed.len()
    }

    /// Where the log's head will be once this is written, as soon as the
    /// writer has staged it (checked and sealed, before its write): the
    /// receiver gets it then, or is dropped unanswered if the writer
    /// refuses the append or cannot tell (a store that does not adopt
    /// presealed events). For an append sealed in part, whose end only the
    /// writer knows ([`Presealed::end`] is where the prefix ends).
    pub fn staged_head(&mut self) -> tokio::sync::oneshot::Receiver<Head> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sealing.staged = Some(tx);
        rx
    }

    /// The requests it sealed.
    pub fn requests(&self) -> &[AppendRequest] {
        &self.requests
    }

    /// The requests, to append without what was sealed ahead.
    pub fn into_requests(self) -> Vec<AppendRequest> {
        self.requests
    }

    /// The head it was sealed after: where the log must be when it is
    /// written for the writer to store these bytes.
    pub fn head(&self) -> Head {
        self.sealing.head
    }

    /// The log's head once this is written, if it is sealed whole; the
    /// head after its sealed prefix otherwise ([`Presealed::is_complete`]).
    pub fn end(&self) -> Head {
        self.sealing.end
    }

    /// The time its events are recorded at.
    pub fn recorded_at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_micros(self.sealing.recorded_us).unwrap_or_default()
    }

    /// The requests and what was sealed of them, for a writer.
    pub(crate) fn into_parts(self) -> (Vec<AppendRequest>, Sealing, Option<IdsChecked>) {
        (self.requests, self.sealing, self.checked.map(|c| *c))
    }
}

impl Sealing {
    fn of(
        head: Head,
        recorded_at: chrono::DateTime<chrono::Utc>,
        requests: &mut [AppendRequest],
        stop: &mut dyn FnMut() -> bool,
    ) -> Option<Sealing> {
        let mut expected = Expected(HashMap::with_capacity_and_hasher(
            requests.len(),
            IdHash::default(),
        ));
        for r in requests.iter() {
            let version = match r.expected {
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::Any => return None,
            };
            expected.0.entry(r.stream).or_insert(version);
        }
        // Sealed only: the writer checks the append (ids, versions,
        // limits) when it commits it, whether it adopts these bytes or not.
        let mut stage = GroupStage::new(head.position, head.hash);
        let events: usize = requests.iter().map(|r| r.events.len()).sum();
        stage.sealed.reserve_exact(events);
        stage.bytes.reserve_exact(
            requests
                .iter()
                .flat_map(|r| &r.events)
                .map(|e| crate::envelope::body_capacity(&e.actor, &e.event_type, &e.payload))
                .sum(),
        );
        // No hand-back: the requests stay whole (`&mut` is `seal`'s, for
        // the writer's hand-back).
        let (_, _, position, hash) = stage
            .seal(
                requests,
                &mut expected,
                recorded_at,
                requests.len(),
                AfterSeal {
                    stop: Some(stop),
                    ..AfterSeal::default()
                },
            )
            .ok()?;
        Some(Sealing {
            head,
            recorded_us: recorded_at.timestamp_micros(),
            complete: stage.sealed.len() == events,
            sealed: stage.sealed,
            bytes: stage.bytes,
            end: Head { position, hash },
            staged: None,
        })
    }
}

/// The versions an append expects its streams at, as the committed log
/// [`Presealed::seal`] seals against (no id is stored: the writer checks
/// the ids when it commits).
struct Expected(HashMap<StreamId, u64, IdHash>);

impl Committed for Expected {
    fn committed_version(&mut self, stream: StreamId) -> Result<u64, StoreError> {
        Ok(self.0.get(&stream).copied().unwrap_or(0))
    }

    fn stored_position(&mut self, _: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// What `r`, its stream at version `base` before it, appended when its
/// last event took position `last_position`; notes the stream's new
/// version in `versions`.
fn appended_to(
    r: &AppendRequest,
    base: u64,
    last_position: u64,
    versions: &mut HashMap<StreamId, u64, IdHash>,
) -> Appended {
    let n = r.events.len() as u64;
    versions.insert(r.stream, base + n);
    Appended {
        stream: r.stream,
        first_version: base + 1,
        last_version: base + n,
        first_position: last_position + 1 - n,
        last_position,
    }
}

/// What [`GroupStage::adopt`] put on a group: the answers, the streams'
/// new versions, the new head (position, hash) and how many events were
/// adopted as sealed ahead.
type Adopted = (
    Vec<Appended>,
    HashMap<StreamId, u64, IdHash>,
    u64,
    Hash,
    usize,
);

/// What [`GroupStage::stage_presealed`] does after sealing each request of
/// an append (nothing by default).
#[derive(Default)]
pub(crate) struct AfterSeal<'a> {
    /// Sends the request's events back to the caller ([`HandBack`]),
    /// leaving the request empty.
    pub hand_back: Option<&'a HandBack>,
    /// Is shown the group's sealed events so far ([`SealedSink`]).
    pub sealed: Option<&'a mut dyn SealedSink>,
    /// Asked before every [`STOP_EVERY`]th event (the first included)
    /// whether to stop sealing there: [`Presealed::seal_until`] seals a
    /// prefix of an append, the rest left to the writer. What was sealed
    /// is then a prefix of the events (the answers name only the requests
    /// sealed whole); only a caller that seals ahead uses it.
    pub stop: Option<&'a mut dyn FnMut() -> bool>,
    /// What the caller's look-up of the append's ids found
    /// ([`IdsChecked`]): the ids it found absent are looked up only among
    /// the events after it ([`Committed::absent_after`]).
    pub checked: Option<&'a IdsChecked>,
}

/// How often, in events, sealing asks [`AfterSeal::stop`] whether to stop.
pub(crate) const STOP_EVERY: usize = 16;

/// Shown a group's sealed events as they are sealed (the segment writer
/// writes a large group's frames while it seals the rest).
pub(crate) trait SealedSink {
    /// The group's sealed events so far and the buffer their bytes are in,
    /// after a request was sealed. Events an append sealed are cut off
    /// again if a later one of it cannot be sealed: what was shown of them
    /// is then void (the group's `sealed` is shorter than shown). Returns
    /// the offset in the group below which its bytes were written and may
    /// be let go ([`GroupBytes::let_go_below`]), if any.
    fn sealed(&mut self, sealed: &[Sealed], bytes: &GroupBytes) -> Option<usize>;
}

/// A commit group being checked and sealed by a writer, every backend
/// alike: the chain so far, the versions and ids its earlier appends took,
/// and the sealed events to write.
///
/// Architecture Invariant: an append that fails any check stages nothing,
/// and a staged append's positions, versions and `prev_hash` continue
/// exactly from the appends staged before it in the same group.
pub(crate) struct GroupStage {
    pub position: u64,
    pub hash: Hash,
    versions: HashMap<StreamId, u64, IdHash>,
    ids: HashSet<Uuid, IdHash>,
    /// Largest stored value a backend can hold (segment frames are bounded).
    value_limit: Option<usize>,
    /// Most events the log may hold (the segment index numbers positions
    /// with a `u32`).
    position_limit: Option<u64>,
    pub sealed: Vec<Sealed>,
    /// The sealed events' stored bytes, one after another (one buffer per
    /// group: sealing allocates nothing per event).
    pub bytes: GroupBytes,
    /// The latest `recorded_at` (µs) in the log so far, with the group's
    /// appends: a presealed append recorded before it is sealed again.
    pub recorded_floor_us: i64,
    /// Events of this group adopted as their callers sealed them.
    pub adopted: usize,
}

impl GroupStage {
    /// A group that continues the log after `position`, whose event hashed
    /// to `hash`.
    pub fn new(position: u64, hash: Hash) -> GroupStage {
        GroupStage {
            position,
            hash,
            versions: HashMap::default(),
            ids: HashSet::default(),
            value_limit: None,
            position_limit: None,
            sealed: Vec::new(),
            bytes: GroupBytes::default(),
            recorded_floor_us: i64::MIN,
            adopted: 0,
        }
    }

    /// Continues a log whose latest `recorded_at` is `us` (µs).
    pub fn with_recorded_floor(mut self, us: i64) -> GroupStage {
        self.recorded_floor_us = us;
        self
    }

    /// Seals into `sealed` and `bytes` (emptied first): a writer hands the
    /// buffers of its last group back, so that a group of the usual size
    /// allocates nothing for them.
    pub fn with_buffers(mut self, mut sealed: Vec<Sealed>, mut bytes: GroupBytes) -> GroupStage {
        sealed.clear();
        bytes.clear();
        self.sealed = sealed;
        self.bytes = bytes;
        self
    }

    /// Refuses an append with an event whose stored bytes exceed `limit`.
    pub fn with_value_limit(mut self, limit: usize) -> GroupStage {
        self.value_limit = Some(limit);
        self
    }

    /// Refuses an append that would take the log past `limit` events.
    pub fn with_position_limit(mut self, limit: u64) -> GroupStage {
        self.position_limit = Some(limit);
        self
    }

    /// The version of `stream` after the appends of `earlier` (this
    /// append's requests so far), else after the group so far.
    fn version_after(
        &self,
        earlier: &HashMap<StreamId, u64, IdHash>,
        committed: &mut impl Committed,
        stream: StreamId,
    ) -> Result<u64, StoreError> {
        match earlier.get(&stream) {
            Some(v) => Ok(*v),
            None => self.version(committed, stream),
        }
    }

    /// Refuses a stored event of `len` bytes past the value limit.
    fn check_value_len(&self, len: usize) -> Result<(), StoreError> {
        match self.value_limit {
            Some(limit) if len > limit => Err(StoreError::Limit {
                what: "bytes in one stored event",
                count: len,
                limit,
            }),
            _ => Ok(()),
        }
    }

    fn version(&self, committed: &mut impl Committed, stream: StreamId) -> Result<u64, StoreError> {
        match self.versions.get(&stream) {
            Some(v) => Ok(*v),
            None => committed.committed_version(stream),
        }
    }

    /// Checks one append completely against the committed log and the
    /// group so far, then seals its events onto the group.
    pub fn stage(
        &mut self,
        requests: &mut [AppendRequest],
        committed: &mut impl Committed,
        recorded_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.stage_presealed(requests, None, committed, recorded_at, AfterSeal::default())
    }

    /// [`GroupStage::stage`], adopting `presealed` as the append's sealed
    /// events when it continues the group exactly as sealing would
    /// ([`Presealed`]); otherwise sealing them at `recorded_at`. The checks,
    /// the outcome and, for the same `recorded_at`, the bytes are the same
    /// either way.
    ///
    /// `after`: what is done after each request is sealed here (not when
    /// adopted): its events handed back, the group's sealed events shown
    /// to a caller ([`AfterSeal`]).
    pub fn stage_presealed(
        &mut self,
        requests: &mut [AppendRequest],
        presealed: Option<&mut Sealing>,
        committed: &mut impl Committed,
        recorded_at: chrono::DateTime<chrono::Utc>,
        after: AfterSeal<'_>,
    ) -> Result<Vec<Appended>, StoreError> {
        let total: usize = requests.iter().map(|r| r.events.len()).sum();
        if total > MAX_EVENTS_PER_APPEND {
            return Err(StoreError::Limit {
                what: "events in one append",
                count: total,
                limit: MAX_EVENTS_PER_APPEND,
            });
        }
        if let Some(limit) = self.position_limit {
            let last = self.position.saturating_add(total as u64);
            if last > limit {
                return Err(past_most_events(last, limit));
            }
        }
        // Pass 1: check, without staging anything.
        let mut local: HashMap<StreamId, u64, IdHash> =
            HashMap::with_capacity_and_hasher(requests.len(), IdHash::default());
        let mut local_ids: HashSet<Uuid, IdHash> =
            HashSet::with_capacity_and_hasher(total, IdHash::default());
        // The ids the caller found absent through a position need looking
        // up only among the events after it: each is tested against those
        // first, and looked up only if one of them may have it.
        let checked = after
            .checked
            .filter(|c| c.made_of(requests, total))
            .and_then(|c| {
                let absent = committed.absent_after(c.seen, total)?;
                Some(move |i: usize, id: &Uuid| c.is_checked(i) && absent(id))
            });
        // Each event's index among the append's, and which of the next
        // `LOOKUP_AHEAD` to look up (each tested once), when some may not
        // be; without a check every id is looked up, as before.
        let mut n = 0;
        let mut look_up: Vec<bool> = Vec::new();
        for r in requests.iter() {
            if r.events.is_empty() {
                return Err(StoreError::EmptyAppend { stream: r.stream });
            }
            let actual = self.version_after(&local, committed, r.stream)?;
            if !r.expected.admits(actual) {
                return Err(StoreError::WrongExpectedVersion {
                    stream: r.stream,
                    expected: r.expected,
                    actual,
                });
            }
            local.insert(r.stream, actual + r.events.len() as u64);
            for (i, e) in r.events.iter().enumerate() {
                if i % LOOKUP_AHEAD == 0 {
                    let next = r.events[i..].iter().take(LOOKUP_AHEAD);
                    match &checked {
                        None => committed.ahead(next.map(|e| &e.event_id)),
                        Some(skip) => {
                            look_up.clear();
                            look_up.extend(next.zip(n..).map(|(e, k)| !skip(k, &e.event_id)));
                            let next = r.events[i..].iter().zip(&look_up);
                            committed.ahead(next.filter(|(_, &w)| w).map(|(e, _)| &e.event_id));
                        }
                    }
                }
                if self.ids.contains(&e.event_id) || !local_ids.insert(e.event_id) {
                    return Err(StoreError::DuplicateInAppend {
                        event_id: e.event_id,
                    });
                }
                if checked.is_none() || look_up[i % LOOKUP_AHEAD] {
                    if let Some(position) = committed.stored_position(e.event_id)? {
                        return Err(StoreError::DuplicateEventId {
                            event_id: e.event_id,
                            position,
                        });
                    }
                }
                n += 1;
            }
        }
        // Pass 2: seal onto the group. Encoding cannot fail for events that
        // passed `NewEvent::new`; should it, nothing of this append is kept
        // (the events it sealed are cut off again).
        let (staged_before, bytes_before) = (self.sealed.len(), self.bytes.len());
        self.sealed.reserve(total);
        let adopted = match presealed {
            Some(p) => {
                let us = p.recorded_us;
                self.adopt(requests, p, committed, recorded_at, local.len())?
                    .map(|done| (done, us))
            }
            None => None,
        };
        let (appended, cur, pos, h) = match adopted {
            Some(((appended, cur, pos, h, adopted), us)) => {
                self.adopted += adopted;
                self.recorded_floor_us = self.recorded_floor_us.max(us);
                (appended, cur, pos, h)
            }
            None => match self.seal(requests, committed, recorded_at, local.len(), after) {
                Ok(done) => {
                    self.recorded_floor_us =
                        self.recorded_floor_us.max(recorded_at.timestamp_micros());
                    done
                }
                Err(e) => {
                    self.sealed.truncate(staged_before);
                    self.bytes.truncate(bytes_before);
                    return Err(e);
                }
            },
        };
        if self.ids.is_empty() {
            self.ids = local_ids;
        } else {
            self.ids.extend(local_ids);
        }
        self.versions.extend(cur);
        self.position = pos;
        self.hash = h;
        Ok(appended)
    }

    /// Pass 2 of [`GroupStage::stage_presealed`] for a presealed append:
    /// its sealed events, put onto the group, when `p` continues the group
    /// (head, time) and holds exactly the events sealing would make, at the
    /// same positions and versions, followed, when `p` sealed a prefix only,
    /// by the rest sealed here at `p`'s `recorded_at` (so that the append's
    /// bytes are those of a whole seal); `None` (nothing put on) otherwise.
    /// Also returns how many events were adopted. Refuses, as sealing does,
    /// an event past the value limit (nothing put on).
    fn adopt(
        &mut self,
        requests: &[AppendRequest],
        p: &mut Sealing,
        committed: &mut impl Committed,
        recorded_at: chrono::DateTime<chrono::Utc>,
        streams: usize,
    ) -> Result<Option<Adopted>, StoreError> {
        let continues = p.head.position == self.position
            && p.head.hash == self.hash
            && p.recorded_us >= self.recorded_floor_us
            && p.recorded_us <= recorded_at.timestamp_micros();
        let at = chrono::DateTime::from_timestamp_micros(p.recorded_us);
        let (true, Some(at)) = (continues, at) else {
            return Ok(None);
        };
        let (bytes_before, sealed_before) = (self.bytes.len(), self.sealed.len());
        let result = self.adopt_and_seal(requests, p, committed, at, streams);
        if !matches!(result, Ok(Some(_))) {
            // Nothing of it stays on the group.
            self.bytes.truncate(bytes_before);
            self.sealed.truncate(sealed_before);
        }
        result
    }

    /// [`GroupStage::adopt`] once `p` is known to continue the group: puts
    /// its prefix on, then seals the rest at `at`; the caller cuts the
    /// group back unless this returns `Ok(Some(_))`.
    fn adopt_and_seal(
        &mut self,
        requests: &[AppendRequest],
        p: &mut Sealing,
        committed: &mut impl Committed,
        at: chrono::DateTime<chrono::Utc>,
        streams: usize,
    ) -> Result<Option<Adopted>, StoreError> {
        let mut appended = Vec::with_capacity(requests.len());
        let mut cur: HashMap<StreamId, u64, IdHash> =
            HashMap::with_capacity_and_hasher(streams, IdHash::default());
        let mut pos = self.position;
        // How many of `p`'s sealed events were checked (`put_prefix` may
        // take them all).
        let (mut checked, prefix) = (0, p.sealed.len());
        // Until the prefix ends, its events are checked; from there the
        // rest is sealed onto it, continuing its chain.
        let mut in_prefix = true;
        let mut h = p.end.hash;
        for r in requests {
            let base = self.version_after(&cur, committed, r.stream)?;
            for (i, e) in r.events.iter().enumerate() {
                pos += 1;
                let version = base + 1 + i as u64;
                if in_prefix {
                    if let Some(s) = p.sealed.get(checked) {
                        checked += 1;
                        let same = s.event.position == pos
                            && s.event.stream == r.stream
                            && s.event.version == version
                            && s.event.event_id == e.event_id
                            && s.event.recorded_at.timestamp_micros() == p.recorded_us;
                        if !same {
                            return Ok(None);
                        }
                        self.check_value_len(s.range.len())?;
                        continue;
                    }
                    // The prefix ends before this event: it must end
                    // where `p` says, and `p` must say it is a prefix.
                    if p.complete || !self.put_prefix(p, pos - 1) {
                        return Ok(None);
                    }
                    in_prefix = false;
                }
                h = self.seal_one(e, r.stream, pos, version, at, h)?;
            }
            appended.push(appended_to(r, base, pos, &mut cur));
        }
        // Every event was in the prefix: nothing more of `p`.
        if in_prefix && (checked < prefix || !self.put_prefix(p, pos)) {
            return Ok(None);
        }
        Ok(Some((appended, cur, pos, h, prefix)))
    }

    /// Seals `e` onto the group at `position` and `version` of `stream`,
    /// after `prev`; returns its hash. Refuses an event past the value
    /// limit (its bytes left on the group: the caller cuts the group back).
    fn seal_one(
        &mut self,
        e: &NewEvent,
        stream: StreamId,
        position: u64,
        version: u64,
        recorded_at: chrono::DateTime<chrono::Utc>,
        prev: Hash,
    ) -> Result<Hash, StoreError> {
        let start = self.bytes.len();
        let hash = crate::envelope::seal_into(
            self.bytes.tail(),
            e,
            stream,
            position,
            version,
            recorded_at,
            prev,
        )?;
        let len = self.bytes.len() - start;
        self.check_value_len(len)?;
        self.sealed.push(Sealed {
            event: SealedEvent {
                position,
                stream,
                version,
                event_id: e.event_id,
                recorded_at,
            },
            range: start..start + len,
        });
        Ok(hash)
    }

    /// Puts `p`'s sealed events on the group if they end at `position`, as
    /// `p` says (its end and its last event's hash); false otherwise
    /// (nothing put on).
    ///
    /// On a group with no bytes yet (an import's batch is a group of its
    /// own) the buffers themselves are taken, not copied: `p` is left with
    /// the group's empty ones and no sealed events, so that it is never
    /// adopted again once it had sealed any (its end no longer follows
    /// from what it holds).
    fn put_prefix(&mut self, p: &mut Sealing, position: u64) -> bool {
        let ends = p.end.position == position
            && p.sealed.last().map_or(p.head.hash, |s| s.hash(&p.bytes)) == p.end.hash;
        if !ends {
            return false;
        }
        // A group with no bytes has no sealed events either.
        if self.bytes.len() == 0 && self.sealed.is_empty() && p.bytes.front() == 0 {
            std::mem::swap(&mut self.bytes, &mut p.bytes);
            std::mem::swap(&mut self.sealed, &mut p.sealed);
            return true;
        }
        let offset = self.bytes.len();
        let Some(prefix) = p.bytes.get(0..p.bytes.len()) else {
            return false;
        };
        self.bytes.extend_from_slice(prefix);
        self.sealed.extend(p.sealed.iter().map(|s| Sealed {
            event: s.event,
            range: s.range.start + offset..s.range.end + offset,
        }));
        true
    }

    /// Pass 2 of [`GroupStage::stage`]: seals the checked `requests` onto
    /// `self.sealed`, continuing the group's chain. Returns what was
    /// appended, the streams' new versions and the new head; the caller
    /// cuts `self.sealed` and `self.bytes` back on error.
    #[allow(clippy::type_complexity)]
    fn seal(
        &mut self,
        requests: &mut [AppendRequest],
        committed: &mut impl Committed,
        recorded_at: chrono::DateTime<chrono::Utc>,
        streams: usize,
        mut after: AfterSeal<'_>,
    ) -> Result<(Vec<Appended>, HashMap<StreamId, u64, IdHash>, u64, Hash), StoreError> {
        let mut appended = Vec::with_capacity(requests.len());
        let mut pos = self.position;
        let mut h = self.hash;
        let mut cur: HashMap<StreamId, u64, IdHash> =
            HashMap::with_capacity_and_hasher(streams, IdHash::default());
        // Room for every event's bytes at once (each is sealed within its
        // bound), so that a large append's buffer is not grown by doubling:
        // copied about once more, and twice its memory faulted in. Asked
        // for, not demanded: an append too large to hold (refused below by
        // the value limit, one event past it) grows as before instead of
        // failing the allocation here.
        let room = requests
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| crate::envelope::body_capacity(&e.actor, &e.event_type, &e.payload))
            .fold(0usize, usize::saturating_add);
        let _ = self.bytes.try_reserve(room);
        let mut count = 0usize;
        for r in requests {
            let base = self.version_after(&cur, committed, r.stream)?;
            for (i, e) in r.events.iter().enumerate() {
                if count.is_multiple_of(STOP_EVERY) {
                    if let Some(stop) = after.stop.as_mut() {
                        if stop() {
                            return Ok((appended, cur, pos, h));
                        }
                    }
                }
                count += 1;
                pos += 1;
                h = self.seal_one(e, r.stream, pos, base + 1 + i as u64, recorded_at, h)?;
            }
            appended.push(appended_to(r, base, pos, &mut cur));
            if let Some(back) = after.hand_back {
                // A caller that stopped waiting frees nothing: dropped here.
                let _ = back.send(std::mem::take(&mut r.events));
            }
            if let Some(sink) = after.sealed.as_mut() {
                if let Some(written) = sink.sealed(&self.sealed, &self.bytes) {
                    self.bytes.let_go_below(written);
                }
            }
        }
        Ok((appended, cur, pos, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{NewEvent, StoredEvent};

    /// An empty committed log.
    struct Empty;

    impl Committed for Empty {
        fn committed_version(&mut self, _: StreamId) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn stored_position(&mut self, _: Uuid) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
    }

    fn event(id: u128, payload_len: usize) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(id),
            occurred_at: chrono::Utc::now(),
            actor: "tester".into(),
            correlation_id: None,
            causation_id: None,
            event_type: "Noted".into(),
            schema: 1,
            payload: vec![0xc0; payload_len],
        }
    }

    fn request(stream: u128, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest {
            stream: StreamId(Uuid::from_u128(stream)),
            expected: ExpectedVersion::Any,
            events,
        }
    }

    /// A committed log that records what it is told ahead and asked; with
    /// `after`, it can test ids against the events after a position
    /// ([`Committed::absent_after`]): those of `after.1` may be there.
    #[derive(Default)]
    struct Recording {
        told: Vec<Uuid>,
        asked: Vec<Uuid>,
        after: Option<(Seen, Vec<Uuid>)>,
        tested_after: Vec<Seen>,
    }

    impl Committed for Recording {
        fn committed_version(&mut self, _: StreamId) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn stored_position(&mut self, id: Uuid) -> Result<Option<u64>, StoreError> {
            assert!(
                self.told.contains(&id),
                "{id} asked before it was told ahead"
            );
            self.asked.push(id);
            Ok(None)
        }
        fn ahead<'e>(&mut self, ids: impl Iterator<Item = &'e Uuid>) {
            let before = self.told.len();
            self.told.extend(ids);
            assert!(self.told.len() - before <= LOOKUP_AHEAD);
        }
        fn absent_after(&mut self, seen: Seen, _: usize) -> Option<AbsentAfter> {
            self.tested_after.push(seen);
            let (at, maybe) = self.after.clone()?;
            assert_eq!(at, seen);
            Some(Box::new(move |id| !maybe.contains(id)))
        }
    }

    /// An append whose ids a look-up found absent through a position
    /// ([`IdsChecked`]) has looked up only the ids that look-up does not
    /// answer for: those it never looked up (its `unchecked`), and those
    /// an event after that position may have; the others are neither told
    /// ahead nor asked for. Made of other requests, or answering for none
    /// of their ids, or handed to a log that cannot test the events after
    /// the position (another log's), every id is looked up.
    #[test]
    fn ids_a_look_up_found_absent_are_looked_up_only_where_it_did_not_look() {
        let long = LOOKUP_AHEAD as u128 + 100;
        let requests = vec![
            request(1, (1..=long).map(|i| event(i, 8)).collect()),
            request(2, (10_000..10_005).map(|i| event(i, 8)).collect()),
        ];
        let all: Vec<Uuid> = requests
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        let id = |i: u128| Uuid::from_u128(i);
        // Events 4 and 10_002 (indices 3 and long + 2) were not looked up;
        // 7 and 10_004 may be among the events after position 40.
        let seen = Seen::new(Uuid::from_u128(77), 40);
        let checked = IdsChecked::new(seen, vec![3, long as u32 + 2], &requests);
        let stage_with = |checked: &IdsChecked, mut log: Recording| {
            let after = AfterSeal {
                checked: Some(checked),
                ..AfterSeal::default()
            };
            GroupStage::new(0, Hash::default())
                .stage_presealed(
                    &mut requests.clone(),
                    None,
                    &mut log,
                    chrono::Utc::now(),
                    after,
                )
                .unwrap();
            log
        };
        let testing = || Recording {
            after: Some((seen, vec![id(7), id(10_004)])),
            ..Recording::default()
        };
        let log = stage_with(&checked, testing());
        let wanted = vec![id(4), id(7), id(10_002), id(10_004)];
        assert_eq!(log.asked, wanted);
        assert_eq!(log.told, wanted);
        assert_eq!(log.tested_after, vec![seen]);
        // Made of other requests (another number of events, or the same
        // number with other ids): every id.
        let fewer = IdsChecked::new(seen, vec![3], &requests[..1]);
        let mut swapped = requests.clone();
        swapped[1].events[0].event_id = id(20_000);
        let other = IdsChecked::new(seen, vec![3], &swapped);
        // Or none of whose ids was looked up.
        let none = IdsChecked::new(seen, (0..all.len() as u32).collect(), &requests);
        for made in [fewer, other, none] {
            let log = stage_with(&made, testing());
            assert_eq!(log.asked, all);
            assert!(log.tested_after.is_empty());
        }
        // A log that cannot test what came after: every id.
        let log = stage_with(&checked, Recording::default());
        assert_eq!(log.asked, all);
        assert_eq!(log.tested_after, vec![seen]);
    }

    /// Every id a group's check looks up was told ahead, in order, at
    /// most [`LOOKUP_AHEAD`] at a time, in streams longer than that too.
    #[test]
    fn the_committed_log_is_told_the_ids_ahead_of_their_look_ups() {
        let long = LOOKUP_AHEAD as u128 * 2 + 3;
        let requests = vec![
            request(1, (1..=long).map(|i| event(i, 8)).collect()),
            request(2, (10_000..10_005).map(|i| event(i, 8)).collect()),
        ];
        let mut stage = GroupStage::new(0, Hash::default());
        let mut log = Recording::default();
        stage
            .stage_presealed(
                &mut requests.clone(),
                None,
                &mut log,
                chrono::Utc::now(),
                AfterSeal::default(),
            )
            .unwrap();
        let all: Vec<Uuid> = requests
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        assert_eq!(log.asked, all);
        assert_eq!(log.told, all);
    }

    /// A group whose sink lets go of its sealed bytes as they are shown
    /// ([`GroupBytes::let_go_below`]) seals the same events, ranges and
    /// chain as one that keeps them, holds only the bytes after what was
    /// let go, and, cut back by a refused append below what it let go of,
    /// goes on from where the kept events end.
    #[test]
    fn a_group_that_lets_go_of_its_bytes_seals_the_same() {
        struct LetGo(usize);
        impl SealedSink for LetGo {
            fn sealed(&mut self, sealed: &[Sealed], bytes: &GroupBytes) -> Option<usize> {
                // All but the newest request's last event.
                let at = sealed.len().checked_sub(2).map(|i| sealed[i].range.end)?;
                self.0 = self.0.max(bytes.len() - bytes.front());
                Some(at)
            }
        }
        let now = chrono::Utc::now();
        let appends = || -> Vec<Vec<AppendRequest>> {
            (0..6u128)
                .map(|a| {
                    (0..4u128)
                        .map(|r| {
                            request(
                                a * 4 + r,
                                (0..5).map(|e| event(a * 100 + r * 10 + e, 40)).collect(),
                            )
                        })
                        .collect()
                })
                .collect()
        };
        let mut kept = GroupStage::new(0, Hash::default());
        let mut let_go = GroupStage::new(0, Hash::default()).with_value_limit(400);
        let mut sink = LetGo(0);
        for (a, mut requests) in appends().into_iter().enumerate() {
            let mut same = requests.clone();
            kept.stage(&mut same, &mut Empty, now).unwrap();
            let after = AfterSeal {
                sealed: Some(&mut sink),
                ..AfterSeal::default()
            };
            let_go
                .stage_presealed(&mut requests, None, &mut Empty, now, after)
                .unwrap();
            assert_eq!(let_go.hash, kept.hash, "append {a}");
            assert_eq!(let_go.bytes.len(), kept.bytes.len());
        }
        let last = kept.sealed.last().unwrap().range.clone();
        assert_eq!(let_go.bytes[last.clone()], kept.bytes[last]);
        assert!(let_go.bytes.front() > 0);
        // A request's events and the one before them, of 120.
        let most = kept.sealed.iter().map(|s| s.range.len()).max().unwrap();
        assert!(
            sink.0 <= 6 * most,
            "held {} of {}",
            sink.0,
            kept.bytes.len()
        );
        let ranges = |s: &GroupStage| s.sealed.iter().map(|s| s.range.clone()).collect::<Vec<_>>();
        assert_eq!(ranges(&let_go), ranges(&kept));
        // Refused part-way (its last event past the limit), after its
        // first requests were shown and let go of: cut back to before it.
        let (len, hash) = (let_go.bytes.len(), let_go.hash);
        let mut refused: Vec<AppendRequest> = (0..3u128)
            .map(|r| {
                request(
                    90 + r,
                    (0..5).map(|e| event(9_000 + r * 10 + e, 40)).collect(),
                )
            })
            .collect();
        refused[2].events[4] = event(9_999, 1_000);
        let after = AfterSeal {
            sealed: Some(&mut sink),
            ..AfterSeal::default()
        };
        assert!(let_go
            .stage_presealed(&mut refused, None, &mut Empty, now, after)
            .is_err());
        assert_eq!((let_go.bytes.len(), let_go.hash), (len, hash));
        let mut next = [request(99, vec![event(10_000, 40)])];
        let mut same = next.clone();
        let_go.stage(&mut next, &mut Empty, now).unwrap();
        kept.stage(&mut same, &mut Empty, now).unwrap();
        assert_eq!(ranges(&let_go), ranges(&kept));
        assert_eq!(let_go.hash, kept.hash);
        let last = kept.sealed.last().unwrap().range.clone();
        assert_eq!(let_go.bytes[last.clone()], kept.bytes[last]);
    }

    /// An append refused part-way through sealing (its second event is
    /// past the value limit) leaves nothing in the group's buffer: the
    /// appends around it are sealed back to back, their bytes decode to
    /// their events, and the chain runs from the first to the last.
    #[test]
    fn a_refused_append_leaves_nothing_in_the_group_buffer() {
        let now = chrono::Utc::now();
        let mut stage = GroupStage::new(0, Hash::default())
            .with_buffers(
                Vec::new(),
                GroupBytes {
                    front: 0,
                    held: b"left from the last group".to_vec(),
                },
            )
            .with_value_limit(400);
        stage
            .stage(
                &mut [request(1, vec![event(1, 10), event(2, 10)])],
                &mut Empty,
                now,
            )
            .unwrap();
        match stage.stage(
            &mut [request(2, vec![event(3, 10), event(4, 1_000)])],
            &mut Empty,
            now,
        ) {
            Err(StoreError::Limit { limit: 400, .. }) => {}
            other => panic!("expected Limit, got {other:?}"),
        }
        stage
            .stage(&mut [request(3, vec![event(5, 10)])], &mut Empty, now)
            .unwrap();

        let mut end = 0;
        let mut prev = Hash::default();
        let mut seen = Vec::new();
        for (i, s) in stage.sealed.iter().enumerate() {
            assert_eq!(s.range.start, end, "sealed back to back");
            end = s.range.end;
            let stored = StoredEvent::decode(&stage.bytes[s.range.clone()]).unwrap();
            assert_eq!(stored.position, i as u64 + 1);
            assert_eq!(stored.event_id, s.event.event_id);
            assert_eq!(stored.prev_hash, prev, "the chain continues");
            assert_eq!(stored.hash, s.hash(&stage.bytes));
            prev = stored.hash;
            seen.push(stored.event_id.as_u128());
        }
        assert_eq!(seen, [1, 2, 5]);
        assert_eq!(end, stage.bytes.len(), "nothing after the last event");
        assert_eq!((stage.position, stage.hash), (3, prev));
    }

    /// Requests that expect their streams new (what `Presealed::seal` needs).
    fn fresh(stream: u128, ids: std::ops::Range<u128>) -> AppendRequest {
        AppendRequest {
            expected: ExpectedVersion::NoStream,
            ..request(stream, ids.map(|i| event(i, 10 + i as usize)).collect())
        }
    }

    /// A group with one append already staged (so that the head is not the
    /// log's first), and the head it leaves.
    fn group_after_one(
        first: &[AppendRequest],
        recorded_at: chrono::DateTime<chrono::Utc>,
    ) -> (GroupStage, Head) {
        let mut stage = GroupStage::new(0, Hash::default());
        stage
            .stage(&mut first.to_vec(), &mut Empty, recorded_at)
            .unwrap();
        let head = Head {
            position: stage.position,
            hash: stage.hash,
        };
        (stage, head)
    }

    /// `requests` staged at `at` (with what was sealed of them ahead, if
    /// any) on a group after `first` (staged at `t`): the group and the
    /// answers.
    fn staged_after(
        first: &[AppendRequest],
        t: chrono::DateTime<chrono::Utc>,
        requests: &[AppendRequest],
        presealed: Option<&mut Sealing>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> (GroupStage, Vec<Appended>) {
        let (mut stage, _) = group_after_one(first, t);
        let appended = stage
            .stage_presealed(
                &mut requests.to_vec(),
                presealed,
                &mut Empty,
                at,
                AfterSeal::default(),
            )
            .unwrap();
        (stage, appended)
    }

    /// An append sealed ahead at the group's head is adopted: the group's
    /// bytes, sealed events, head and answers are exactly those of staging
    /// it; sealed ahead anywhere else, at another time or for other events,
    /// it is sealed again, with the same outcome as if it had never been
    /// sealed ahead.
    #[test]
    fn a_presealed_append_is_adopted_only_where_it_continues_the_group() {
        let t = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let later = t + chrono::Duration::milliseconds(5);
        let first = [fresh(1, 1..3)];
        let requests = [fresh(2, 10..14), fresh(3, 20..21)];
        let seal = |head, at, requests: &[AppendRequest]| {
            Presealed::seal(head, at, requests.to_vec()).map(|p| p.sealing)
        };
        let staged = |presealed: Option<&mut Sealing>, at| {
            let (stage, appended) = staged_after(&first, t, &requests, presealed, at);
            let events: Vec<_> = stage
                .sealed
                .iter()
                .map(|s| (s.event.position, s.hash(&stage.bytes), s.range.clone()))
                .collect();
            (stage.adopted, stage.bytes, events, appended, stage.hash)
        };
        let (_, head) = group_after_one(&first, t);
        let (adopted, bytes, events, appended, hash) = staged(None, later);
        assert_eq!(adopted, 0);

        // At the head, recorded when the group is: adopted, the same bytes.
        let ahead = Presealed::seal(head, later, requests.to_vec()).unwrap();
        assert_eq!(ahead.end(), Head { position: 7, hash });
        let ids = |r: &[AppendRequest]| -> Vec<Uuid> {
            r.iter()
                .flat_map(|r| r.events.iter().map(|e| e.event_id))
                .collect()
        };
        assert_eq!(ids(ahead.requests()), ids(&requests));
        let mut ahead = ahead.sealing;
        let got = staged(Some(&mut ahead), later);
        assert_eq!(got.0, 5, "every event adopted");
        assert_eq!(
            (&got.1, &got.2, &got.3, got.4),
            (&bytes, &events, &appended, hash)
        );
        // Recorded before the group began: adopted, its own time kept.
        let mut early = seal(head, t, &requests).unwrap();
        let got = staged(Some(&mut early), later);
        assert_eq!(got.0, 5);
        assert_eq!(got.3, appended);
        assert_ne!(got.1, bytes, "recorded at the time it was sealed");

        // Not adopted: sealed again at the group's time, as if never ahead.
        let other_hash = Head {
            hash: [7; 32],
            ..head
        };
        let other_position = Head {
            position: head.position + 1,
            ..head
        };
        let mut other_ids = requests.clone();
        other_ids[1].events[0].event_id = Uuid::from_u128(99);
        let refused = [
            ("another hash", seal(other_hash, later, &requests)),
            ("another position", seal(other_position, later, &requests)),
            (
                "recorded after the group began",
                seal(head, later + chrono::Duration::microseconds(1), &requests),
            ),
            ("other events", seal(head, later, &other_ids)),
            ("fewer events", seal(head, later, &requests[..1])),
        ];
        for (what, p) in refused {
            let got = staged(Some(&mut p.unwrap()), later);
            assert_eq!(got.0, 0, "{what}: not adopted");
            assert_eq!(
                (got.1, got.2, got.3, got.4),
                (bytes.clone(), events.clone(), appended.clone(), hash),
                "{what}"
            );
        }
        // Recorded before the log's latest time: sealed again.
        let (mut stage, _) = group_after_one(&first, t);
        stage.recorded_floor_us = later.timestamp_micros();
        stage
            .stage_presealed(
                &mut requests.clone(),
                Some(&mut early),
                &mut Empty,
                later,
                AfterSeal::default(),
            )
            .unwrap();
        assert_eq!(stage.adopted, 0, "recorded before the log's latest time");
        // An expectation without a version cannot be sealed ahead.
        let any = vec![request(4, vec![event(30, 1)])];
        let back = Presealed::seal(head, later, any.clone()).unwrap_err();
        assert_eq!(ids(&back), ids(&any), "the requests handed back");
    }

    /// On a group with no bytes yet (an import's batch, a group of its
    /// own) an append sealed ahead, whole or in part, is adopted by taking
    /// its buffer, not copying it: the group's bytes, sealed events,
    /// answers and head are exactly those of staging it there without, and
    /// the sealing, left with the group's empty buffer, is never adopted
    /// again (sealed afresh, with the same outcome).
    #[test]
    fn a_group_with_no_bytes_takes_the_buffer_sealed_ahead() {
        let t = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let requests = [fresh(2, 10..30), fresh(3, 40..55)];
        let head = Head {
            position: 0,
            hash: Hash::default(),
        };
        let stage_with = |presealed: Option<&mut Sealing>| {
            let mut stage = GroupStage::new(0, Hash::default());
            let appended = stage
                .stage_presealed(
                    &mut requests.to_vec(),
                    presealed,
                    &mut Empty,
                    t,
                    AfterSeal::default(),
                )
                .unwrap();
            let events: Vec<_> = stage
                .sealed
                .iter()
                .map(|s| (s.event.position, s.hash(&stage.bytes), s.range.clone()))
                .collect();
            let ptr = stage.bytes.held.as_ptr();
            (
                stage.adopted,
                stage.bytes,
                events,
                appended,
                stage.hash,
                ptr,
            )
        };
        let (adopted, bytes, events, appended, hash, _) = stage_with(None);
        assert_eq!(adopted, 0);
        // Stops at its `n`th ask: 1 stops before any event, 2 within the
        // first request, 3 never (sealed whole).
        for n in [1, 2, 3] {
            let mut asked = 0;
            let mut stop = || {
                asked += 1;
                asked == n
            };
            let mut p = Presealed::seal_until(head, t, requests.to_vec(), &mut stop)
                .unwrap()
                .sealing;
            let ahead = p.sealed.len();
            let buffer = p.bytes.held.as_ptr();
            let got = stage_with(Some(&mut p));
            assert_eq!(got.0, ahead, "n = {n}: the events sealed ahead adopted");
            assert_eq!(
                (&got.1, &got.2, &got.3, got.4),
                (&bytes, &events, &appended, hash),
                "n = {n}"
            );
            if ahead > 0 {
                assert_eq!(got.5, buffer, "n = {n}: the buffer taken, not copied");
                assert!(p.sealed.is_empty() && p.bytes.len() == 0, "n = {n}");
                let again = stage_with(Some(&mut p));
                assert_eq!(again.0, 0, "n = {n}: not adopted twice");
                assert_eq!(
                    (&again.1, &again.2, &again.3, again.4),
                    (&bytes, &events, &appended, hash),
                    "n = {n}"
                );
            }
        }
    }

    /// An append sealed ahead in part (its sealing stopped at each point it
    /// asks whether to stop, within a request and between them) is
    /// adopted where it continues the group, and the writer seals the rest
    /// at the same `recorded_at`: the group's bytes, sealed events, answers
    /// and head are exactly those of staging the whole append then. A
    /// prefix sealed anywhere else, or of other events, is sealed again
    /// from the start, with the same outcome; an event of the rest past the
    /// value limit refuses the append and leaves the group as it was.
    #[test]
    fn a_prefix_sealed_ahead_is_adopted_and_the_rest_sealed_at_its_time() {
        let t = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let later = t + chrono::Duration::milliseconds(5);
        let first = [fresh(1, 1..3)];
        // 20, 15 and 13 events: sealing asks before events 0, 16 and 32
        // (the second ask within the first request, the third within the
        // second).
        let requests = [fresh(2, 10..30), fresh(3, 40..55), fresh(4, 60..73)];
        let events = 48;
        // Stops at its `n`th ask (never for `n` past the asks).
        let prefix = |head, at, requests: &[AppendRequest], n: usize| {
            let mut asked = 0;
            let mut stop = || {
                asked += 1;
                asked == n
            };
            Presealed::seal_until(head, at, requests.to_vec(), &mut stop).unwrap()
        };
        let staged = |requests: &[AppendRequest], presealed: Option<&mut Sealing>, at| {
            let (stage, appended) = staged_after(&first, t, requests, presealed, at);
            let events: Vec<_> = stage
                .sealed
                .iter()
                .map(|s| {
                    let e = s.event;
                    (
                        e.position,
                        e.version,
                        e.recorded_at,
                        s.hash(&stage.bytes),
                        s.range.clone(),
                    )
                })
                .collect();
            (
                stage.adopted,
                stage.bytes,
                events,
                appended,
                stage.hash,
                stage.position,
            )
        };
        let (_, head) = group_after_one(&first, t);
        for (at, group_at) in [(later, later), (t, later)] {
            // Staged whole at the time it was sealed ahead (the group's,
            // or before it).
            let (_, bytes, sealed, appended, hash, position) = staged(&requests, None, at);
            assert_eq!(position, head.position + events as u64);
            for (n, sealed_ahead) in [(1, 0), (2, 16), (3, 32), (4, events)] {
                let mut p = prefix(head, at, &requests, n);
                assert_eq!(p.sealed_events(), sealed_ahead, "stopped at ask {n}");
                assert_eq!(p.is_complete(), sealed_ahead == events);
                assert_eq!(p.end().position, head.position + sealed_ahead as u64);
                let got = staged(&requests, Some(&mut p.sealing), group_at);
                assert_eq!(got.0, sealed_ahead, "adopted, stopped at ask {n}");
                assert_eq!(
                    (&got.1, &got.2, &got.3, got.4, got.5),
                    (&bytes, &sealed, &appended, hash, position),
                    "stopped at ask {n}, sealed at {at}"
                );
            }
        }

        // Not adopted: sealed again at the group's time, as if never ahead.
        let whole = staged(&requests, None, later);
        let mut other_ids = requests.clone();
        other_ids[0].events[3].event_id = Uuid::from_u128(99);
        let other_hash = Head {
            hash: [7; 32],
            ..head
        };
        for (what, mut p) in [
            ("another hash", prefix(other_hash, later, &requests, 2)),
            ("other events", prefix(head, later, &other_ids, 3)),
            (
                "recorded after the group began",
                prefix(
                    head,
                    later + chrono::Duration::microseconds(1),
                    &requests,
                    2,
                ),
            ),
        ] {
            let got = staged(&requests, Some(&mut p.sealing), later);
            assert_eq!(got.0, 0, "{what}: not adopted");
            assert_eq!(
                (&got.1, &got.2, &got.3, got.4),
                (&whole.1, &whole.2, &whole.3, whole.4),
                "{what}"
            );
        }

        // An event of the rest past the value limit: refused, the group
        // as it was, as when the writer seals the whole append.
        let mut large = requests.clone();
        large[2].events[0].payload = vec![0xc0; 600];
        let mut p = prefix(head, later, &large, 2);
        assert_eq!(p.sealed_events(), 16);
        for presealed in [Some(&mut p.sealing), None] {
            let (mut stage_limited, _) = group_after_one(&first, t);
            stage_limited.value_limit = Some(500);
            let before = (
                stage_limited.bytes.clone(),
                stage_limited.sealed.len(),
                stage_limited.position,
                stage_limited.hash,
            );
            let err = stage_limited
                .stage_presealed(
                    &mut large.to_vec(),
                    presealed,
                    &mut Empty,
                    later,
                    AfterSeal::default(),
                )
                .unwrap_err();
            assert!(matches!(err, StoreError::Limit { .. }), "{err:?}");
            assert_eq!(
                (
                    stage_limited.bytes.clone(),
                    stage_limited.sealed.len(),
                    stage_limited.position,
                    stage_limited.hash
                ),
                before,
                "nothing of the refused append stays"
            );
            assert_eq!(stage_limited.adopted, 0);
        }
    }

    /// With a hand-back, each request's events come back in order once
    /// sealed, the requests are left empty, and what is staged is what
    /// staging without one gives; a caller shown the sealed events after
    /// each request sees the group so far, as it ends up.
    #[test]
    fn a_handed_back_append_is_staged_the_same_and_its_events_come_back() {
        let requests = vec![fresh(1, 1..4), fresh(2, 10..12)];
        let at = chrono::Utc::now();
        let mut plain = GroupStage::new(0, Hash::default());
        let a = plain
            .stage_presealed(
                &mut requests.clone(),
                None,
                &mut Empty,
                at,
                AfterSeal::default(),
            )
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut handed = GroupStage::new(0, Hash::default());
        let mut given = requests.clone();
        struct Shown(Vec<(usize, Vec<u8>)>);
        impl SealedSink for Shown {
            fn sealed(&mut self, sealed: &[Sealed], bytes: &GroupBytes) -> Option<usize> {
                self.0.push((sealed.len(), bytes[0..bytes.len()].to_vec()));
                None
            }
        }
        let mut shown = Shown(Vec::new());
        let after = AfterSeal {
            hand_back: Some(&tx),
            sealed: Some(&mut shown),
            ..AfterSeal::default()
        };
        let b = handed
            .stage_presealed(&mut given, None, &mut Empty, at, after)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(plain.bytes, handed.bytes);
        assert_eq!(shown.0.iter().map(|s| s.0).collect::<Vec<_>>(), vec![3, 5]);
        for (n, bytes) in &shown.0 {
            assert_eq!(bytes[..], handed.bytes[0..handed.sealed[n - 1].range.end]);
        }
        assert!(given.iter().all(|r| r.events.is_empty()));
        let ids = |events: &[NewEvent]| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
        let mut back = Vec::new();
        while let Ok(events) = rx.try_recv() {
            back.push(ids(&events));
        }
        let sent: Vec<_> = requests.iter().map(|r| ids(&r.events)).collect();
        assert_eq!(back, sent);
    }

    /// A sealed log of `n` events over three streams, as stored values.
    fn sealed_log(n: usize) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_HASH;
        let mut versions = [0u64; 3];
        (0..n)
            .map(|i| {
                let s = i % 3;
                versions[s] += 1;
                let (sealed, value) = StoredEvent::seal(
                    &event(i as u128 + 1, 5 + i % 40),
                    StreamId(Uuid::from_u128(s as u128 + 1)),
                    i as u64 + 1,
                    versions[s],
                    chrono::Utc::now(),
                    prev,
                )
                .unwrap();
                prev = sealed.hash;
                value
            })
            .collect()
    }

    /// Damage done to a stored log before it is verified.
    #[derive(Clone, Debug)]
    enum Damage {
        /// Byte `at` (modulo its length) of value `i` xor `with`.
        Flip { i: usize, at: usize, with: u8 },
        /// Value `i` replaced by value `j`.
        Copy { i: usize, j: usize },
        /// Value `i` left out.
        Drop { i: usize },
        /// Value `i` cut to `len` bytes (modulo its length).
        Cut { i: usize, len: usize },
    }

    fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<usize>(), any::<usize>(), 1..=255u8).prop_map(|(i, at, with)| Damage::Flip {
                i,
                at,
                with
            }),
            (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Damage::Copy { i, j }),
            any::<usize>().prop_map(|i| Damage::Drop { i }),
            (any::<usize>(), any::<usize>()).prop_map(|(i, len)| Damage::Cut { i, len }),
        ]
    }

    /// Problems as a sorted list, for reports whose problems of one
    /// position may be listed in another order.
    fn sorted(report: VerifyReport) -> (bool, u64, String, Vec<(u64, String)>) {
        let mut problems: Vec<_> = report
            .problems
            .into_iter()
            .map(|p| (p.position, p.what))
            .collect();
        problems.sort();
        (report.ok, report.events, report.head, problems)
    }

    proptest::proptest! {
        /// The content hashes checked apart (`check_links` + `ContentCheck`,
        /// as the segment engine's verify does) find what `check` finds,
        /// whatever was done to the log.
        #[test]
        fn content_checked_apart_finds_what_check_finds(
            n in 1usize..40,
            damages in proptest::collection::vec(damage(), 0..4),
        ) {
            let mut log: Vec<(u64, Vec<u8>)> = sealed_log(n)
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i as u64 + 1, v))
                .collect();
            for d in damages {
                if log.is_empty() {
                    break;
                }
                let len = log.len();
                match d {
                    Damage::Flip { i, at, with } => {
                        let v = &mut log[i % len].1;
                        // A value cut to nothing has no byte to flip.
                        if !v.is_empty() {
                            let at = at % v.len();
                            v[at] ^= with;
                        }
                    }
                    Damage::Copy { i, j } => log[i % len].1 = log[j % len].1.clone(),
                    Damage::Drop { i } => {
                        log.remove(i % len);
                    }
                    Damage::Cut { i, len: cut } => {
                        let v = &mut log[i % len].1;
                        v.truncate(cut % v.len().max(1));
                    }
                }
            }
            let mut whole = ChainVerifier::new();
            let (mut linked, mut content) = (ChainVerifier::new(), ContentCheck::default());
            for (position, value) in &log {
                whole.check(*position, value);
                if let Some(links) = linked.check_links(*position, value) {
                    content.check(*position, &links.prev_hash, value);
                }
            }
            linked.absorb(content.finish());
            proptest::prop_assert_eq!(sorted(whole.finish()), sorted(linked.finish()));
        }
    }
}
