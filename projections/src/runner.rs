//! The runner: keeps the school-wide projections up to date from the log,
//! and reads per-pupil views from a pupil's streams.
//!
//! **One pass, many views.** [`SchoolViews::load`] loads each projection's
//! checkpoint, reads the log once from the oldest checkpoint's position,
//! page by page ([`PAGE_EVENTS`] at a time; never the whole log in memory),
//! feeds every event to each projection that has not yet seen it, and saves
//! a checkpoint per projection. On a multi-threaded runtime the pages are
//! read on a thread of their own, a few pages ahead of the fold, which
//! decodes and folds them on the caller's thread in the same order. A
//! command that shows one view loads that projection ([`load_one`]): its
//! checkpoint, then the events after it; the others are caught up when
//! they are next loaded, or, when the view stands far behind the head, in
//! the same pass ([`SHARE_FOLD_FROM`]).
//!
//! **Checkpoints** are stored in the store under the projection's `NAME`
//! (`save_checkpoint_with`, streamed), outside the hash chain: they are derived data and
//! can always be rebuilt. A checkpoint is MessagePack (with field names) of
//! `{format, name, version, position, hash, state}`: the projection's
//! `VERSION`, the position of the last event folded, that event's hash and
//! the state. A projection starts again from zero when its checkpoint is
//! missing, was written by another `VERSION`, cannot be decoded, or does
//! not match the log (its position is past the head, or the event there has
//! another hash: the store was replaced or restored from an older copy).
//!
//! **Errors, not gaps.** A stored payload that cannot be decoded stops the
//! run with [`ProjectionError::Decode`] naming its position: skipping it
//! would leave a view silently wrong. Access-log entries (`RecordViewed`)
//! are skipped by type without decoding; they belong to no school-wide view.
//!
//! Checkpoints are saved once a run has caught up, not during it: a run
//! interrupted half-way repeats its work next time, which costs time but
//! never correctness. For the same reason a checkpoint the store refuses
//! (a full disk) is said ([`NotSaved`]), not an error, except in a
//! rebuild, whose work is the checkpoints.

use std::fmt;

use casebook_engine::envelope::Hash;
use casebook_engine::error::StoreError;
use casebook_engine::event::CaseEvent;
use casebook_engine::store::{may_block_in_place, read_whole_stream, EventStore, Head, InStream};
use casebook_engine::{RecordedEvent, StoredEvent, StreamId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::attendance::Attendance;
use crate::audit::AuditTrail;
use crate::behaviour::Behaviour;
use crate::caseload::Caseload;
use crate::chronology::Chronology;
use crate::error::ProjectionError;
use crate::force::ForceLog;
use crate::interventions::Interventions;
use crate::reintegration::Reintegration;
use crate::retention::Retention;
use crate::suspensions::Suspensions;
use crate::{Projection, Targets, PROJECTION_NAMES};

/// Events read from the log per page. Bounds the runner's memory for
/// decoded events (a few MB, with the pages read ahead) whatever the log's
/// size, while keeping the number of store round trips small. Not larger:
/// the segment store reads a page into buffers of its own, and buffers of
/// more than about half a MB cost page faults on every page (4,096 events
/// a page made the read twice as slow).
pub const PAGE_EVENTS: usize = 1_024;

/// Version of the checkpoint wrapper itself (not of any projection).
const CHECKPOINT_FORMAT: u32 = 1;

/// Progress callback: `(position reached, head position)`.
pub type Progress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// Every school-wide view, caught up with the log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchoolViews {
    pub caseload: Caseload,
    pub behaviour: Behaviour,
    pub attendance: Attendance,
    pub suspensions: Suspensions,
    pub force: ForceLog,
    pub interventions: Interventions,
    pub reintegration: Reintegration,
    pub retention: Retention,
    /// Position of the last event folded (0 for an empty log).
    pub position: u64,
    /// Projections that started from zero in this load, and why.
    pub restarted: Vec<Restart>,
    /// Checkpoints the store refused in this load or catch-up (the views
    /// are caught up all the same).
    pub not_saved: Vec<NotSaved>,
    /// Hash of the event at `position`, to check the log on catch-up.
    hash: Hash,
}

/// A projection that started from zero instead of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub projection: &'static str,
    pub reason: RestartReason,
}

/// A checkpoint the store refused (a full disk, a failed write) in a
/// load that returned its views all the same: a checkpoint is derived
/// data, and the next load folds again the events since the one stored
/// before (docs/storage.md, "Checkpoints"). A rebuild, whose work is the
/// checkpoints, fails instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotSaved {
    pub projection: &'static str,
    /// The store's error, as it says it.
    pub reason: String,
}

/// A view loaded on its own ([`load_one`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<P> {
    pub view: P,
    /// Why it started from zero, if it did.
    pub restarted: Option<Restart>,
    /// Its checkpoint, if the store refused it.
    pub not_saved: Option<NotSaved>,
    /// The other school-wide views brought along its fold from zero
    /// ([`load_one`]), and why each had no usable checkpoint.
    pub others_restarted: Vec<Restart>,
}

/// What a fold does when the store refuses a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saving {
    /// The run fails: a rebuild, whose work is the checkpoints.
    Required,
    /// The views are kept and the refusal returned ([`NotSaved`]).
    BestEffort,
}

/// Why a projection started from zero.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// No checkpoint stored yet (a new store, or after `clear_checkpoints`).
    NoCheckpoint,
    /// A rebuild was asked for.
    Rebuild,
    /// The checkpoint was written by another version of the projection.
    VersionChanged { stored: u32, current: u32 },
    /// The checkpoint's bytes do not decode.
    Unreadable(String),
    /// The checkpoint is of events this log does not hold.
    NotInLog { position: u64 },
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartReason::NoCheckpoint => f.write_str("no checkpoint yet"),
            RestartReason::Rebuild => f.write_str("rebuild requested"),
            RestartReason::VersionChanged { stored, current } => write!(
                f,
                "checkpoint is of version {stored}, this casebook has version {current}"
            ),
            RestartReason::Unreadable(why) => write!(f, "checkpoint cannot be read: {why}"),
            RestartReason::NotInLog { position } => write!(
                f,
                "checkpoint at position {position} does not match the log (store replaced or restored?)"
            ),
        }
    }
}

/// What `rebuild` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// The projections rebuilt.
    pub projections: Vec<String>,
    /// Events read from the log.
    pub events: u64,
    /// The position the projections now stand at.
    pub position: u64,
}

#[derive(Serialize)]
struct CheckpointOut<'a, P> {
    format: u32,
    name: &'a str,
    version: u32,
    position: u64,
    hash: Hash,
    state: &'a P,
}

/// The checkpoint without its state: read first, so that a checkpoint of
/// another version is recognised as such rather than as undecodable.
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct CheckpointHeader {
    format: u32,
    name: String,
    version: u32,
}

/// The header of checkpoint bytes laid out as [`write_checkpoint`] writes
/// them: a map whose first three entries are `format`, `name` and
/// `version`, in any order, read without looking at the rest. `None` for
/// any other layout, which [`decode_checkpoint`] then reads with serde.
///
/// serde finds the three fields wherever they are, but to do so it walks
/// every entry of the map, the state's included (rmp-serde skips a value
/// by decoding it): that was half the time of loading a large checkpoint
/// (`casebook report attendance` on a store of 8.2M events).
fn leading_header(bytes: &[u8]) -> Option<CheckpointHeader> {
    leading(bytes).map(|(header, _)| header)
}

/// The header of a checkpoint laid out as [`write_checkpoint`] writes it
/// and the position it was folded up to, read from its first bytes (the
/// position is the fourth entry, after the header's three) without
/// decoding its state: what a load that would fold other views beside its
/// own looks at before it restores one ([`load_one`]). `None` for any
/// other layout, or bytes too short.
fn leading_position(bytes: &[u8]) -> Option<(CheckpointHeader, u64)> {
    let (header, mut r) = leading(bytes)?;
    match r.str()? {
        "position" => Some((header, r.uint()?)),
        _ => None,
    }
}

/// [`leading_header`], and a reader at the entry after it.
fn leading(bytes: &[u8]) -> Option<(CheckpointHeader, casebook_engine::envelope::MsgReader<'_>)> {
    let mut r = casebook_engine::envelope::MsgReader::new(bytes);
    if r.map_len()? < 3 {
        return None;
    }
    let (mut format, mut name, mut version) = (None, None, None);
    for _ in 0..3 {
        let slot = match r.str()? {
            "format" => &mut format,
            "version" => &mut version,
            "name" if name.is_none() => {
                name = Some(r.str()?.to_string());
                continue;
            }
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(u32::try_from(r.uint()?).ok()?);
    }
    Some((
        CheckpointHeader {
            format: format?,
            name: name?,
            version: version?,
        },
        r,
    ))
}

#[derive(Deserialize)]
struct CheckpointIn<P> {
    position: u64,
    hash: Hash,
    state: P,
}

/// Encodes `state`, folded up to `position` (whose event has `hash`), as the
/// checkpoint bytes the runner stores.
pub fn encode_checkpoint<P: Projection>(
    state: &P,
    position: u64,
    hash: Hash,
) -> Result<Vec<u8>, ProjectionError> {
    let mut bytes = Vec::with_capacity(state.checkpoint_size_hint());
    write_checkpoint(&mut bytes, state, position, hash)?;
    Ok(bytes)
}

/// Bytes [`write_checkpoint`] gathers before each write to its output.
const CHECKPOINT_CHUNK: usize = 64 * 1024;

/// [`encode_checkpoint`] written to `out` as it is encoded.
///
/// The encoder writes each marker and value on its own (a few bytes, tens
/// of millions of writes for a large school's views): it writes them into
/// a buffer of this function's own type, which the compiler inlines, and
/// `out` is written [`CHECKPOINT_CHUNK`] bytes at a time. Through `out`
/// itself, each write was a call through two `dyn Write`s, a sixth of a
/// rebuild's time on the thread that folds and saves.
pub fn write_checkpoint<P: Projection>(
    out: &mut dyn std::io::Write,
    state: &P,
    position: u64,
    hash: Hash,
) -> Result<(), ProjectionError> {
    use std::io::Write as _;
    let failed = |what: String| ProjectionError::Checkpoint {
        projection: P::NAME,
        what,
    };
    let mut chunks = std::io::BufWriter::with_capacity(CHECKPOINT_CHUNK, out);
    rmp_serde::encode::write_named(
        &mut chunks,
        &CheckpointOut {
            format: CHECKPOINT_FORMAT,
            name: P::NAME,
            version: P::VERSION,
            position,
            hash,
            state,
        },
    )
    .map_err(|e| failed(e.to_string()))?;
    // The last bytes, and the output's error if it fails now (a buffer
    // dropped unflushed would lose both).
    chunks.flush().map_err(|e| failed(e.to_string()))
}

/// Decodes checkpoint bytes into the state, its position and that
/// position's hash, or says why they cannot be used.
pub fn decode_checkpoint<P: Projection>(bytes: &[u8]) -> Result<(P, u64, Hash), RestartReason> {
    let Some(header) = leading_header(bytes) else {
        return decode_whole(bytes);
    };
    check_header::<P>(&header)?;
    let full: CheckpointIn<P> =
        rmp_serde::from_slice(bytes).map_err(|e| RestartReason::Unreadable(e.to_string()))?;
    Ok((full.state, full.position, full.hash))
}

/// [`decode_checkpoint`] of the bytes `input` reads, decoded as they are
/// read, so that a checkpoint laid out as [`write_checkpoint`] writes it
/// is never in memory whole. Its header is looked for in `input`'s first
/// buffer ([`leading_header`]); a checkpoint of any other layout is read
/// whole and decoded as [`decode_checkpoint`] does. A failed read is
/// reported as an unreadable checkpoint; the runner, which tells the
/// store's failures apart, watches its reader ([`Slot::restore`]).
///
/// Decoding from a reader costs more than from memory (each string and
/// byte string is copied out of the reader's buffer through
/// `Read::read_to_end`), so the runner streams only checkpoints larger
/// than [`CHECKPOINT_READ_WHOLE`].
pub fn read_checkpoint<P: Projection, R: std::io::BufRead>(
    mut input: R,
) -> Result<(P, u64, Hash), RestartReason> {
    let unreadable = |e: &dyn fmt::Display| RestartReason::Unreadable(e.to_string());
    let Some(header) = leading_header(input.fill_buf().map_err(|e| unreadable(&e))?) else {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(|e| unreadable(&e))?;
        return decode_whole(&bytes);
    };
    check_header::<P>(&header)?;
    let full: CheckpointIn<P> = rmp_serde::from_read(input).map_err(|e| unreadable(&e))?;
    Ok((full.state, full.position, full.hash))
}

/// A checkpoint whose header does not lead its bytes, decoded whole.
fn decode_whole<P: Projection>(bytes: &[u8]) -> Result<(P, u64, Hash), RestartReason> {
    let header = rmp_serde::from_slice::<CheckpointHeader>(bytes)
        .map_err(|e| RestartReason::Unreadable(e.to_string()))?;
    check_header::<P>(&header)?;
    let full: CheckpointIn<P> =
        rmp_serde::from_slice(bytes).map_err(|e| RestartReason::Unreadable(e.to_string()))?;
    Ok((full.state, full.position, full.hash))
}

/// Whether a checkpoint with `header` is one of `P` that this build reads.
fn check_header<P: Projection>(header: &CheckpointHeader) -> Result<(), RestartReason> {
    if header.format != CHECKPOINT_FORMAT || header.name != P::NAME {
        return Err(RestartReason::Unreadable(format!(
            "checkpoint format {} of {:?}, expected format {CHECKPOINT_FORMAT} of {:?}",
            header.format,
            header.name,
            P::NAME
        )));
    }
    if header.version != P::VERSION {
        return Err(RestartReason::VersionChanged {
            stored: header.version,
            current: P::VERSION,
        });
    }
    Ok(())
}

/// Bytes of a checkpoint's front enough for its position
/// ([`leading_position`]): the map's marker, the header (a name of at most
/// `MAX_CHECKPOINT_NAME`, 100 bytes) and the position.
const CHECKPOINT_PEEK: usize = 256;

/// Bytes of a checkpoint read from the store at a time while it is
/// decoded ([`Slot::restore`]).
const CHECKPOINT_READ: usize = 64 * 1024;

/// The largest checkpoint the runner reads whole before decoding it; a
/// larger one is decoded as it is read ([`read_checkpoint`]). Read whole,
/// a checkpoint costs its size in memory beside the state decoded from
/// it; streamed, it costs more time to decode: `casebook caseload` on a
/// 24,000-pupil store (an 11.5 MB checkpoint) took 8% more processor
/// time streamed, for 6-8 MB less at its peak, and `casebook report
/// attendance` (35.6 MB) 0.50 against 0.49 s, for 12-20 MB less
/// (docs/performance.md, "Session ak").
pub const CHECKPOINT_READ_WHOLE: u64 = 16 << 20;

/// A checkpoint as the runner reads it: the store's reader, watched (a
/// checkpoint the store fails to read, the disk and not the bytes, is the
/// store's failure, not a checkpoint to rebuild), in a buffer of
/// [`CHECKPOINT_READ`] bytes.
type CheckpointInput = std::io::BufReader<Watched<Box<dyn std::io::Read + Send>>>;

/// A projection as the runner drives it, whatever its type.
trait Feed: Send {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn feed(&mut self, event: &RecordedEvent, corrected_at: Option<u64>);
    fn reset(&mut self);
    /// About how many bytes [`Feed::write_checkpoint`] writes.
    fn checkpoint_size_hint(&self) -> usize;
    fn write_checkpoint(
        &self,
        out: &mut dyn std::io::Write,
        position: u64,
        hash: Hash,
    ) -> Result<(), ProjectionError>;
    /// Restores the checkpoint of `bytes`.
    fn restore(&mut self, bytes: &[u8]) -> Result<(u64, Hash), RestartReason>;
    /// Restores the checkpoint `input` reads, decoded as it is read.
    fn restore_from(&mut self, input: &mut CheckpointInput) -> Result<(u64, Hash), RestartReason>;
}

impl<P: Projection> Feed for P {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn version(&self) -> u32 {
        P::VERSION
    }

    fn feed(&mut self, event: &RecordedEvent, corrected_at: Option<u64>) {
        self.apply(event, corrected_at);
    }

    fn reset(&mut self) {
        *self = P::default();
    }

    fn checkpoint_size_hint(&self) -> usize {
        Projection::checkpoint_size_hint(self)
    }

    fn write_checkpoint(
        &self,
        out: &mut dyn std::io::Write,
        position: u64,
        hash: Hash,
    ) -> Result<(), ProjectionError> {
        write_checkpoint(out, self, position, hash)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(u64, Hash), RestartReason> {
        let (state, position, hash) = decode_checkpoint::<P>(bytes)?;
        *self = state;
        Ok((position, hash))
    }

    fn restore_from(&mut self, input: &mut CheckpointInput) -> Result<(u64, Hash), RestartReason> {
        let (state, position, hash) = read_checkpoint::<P, _>(input)?;
        *self = state;
        Ok((position, hash))
    }
}

/// Where a projection stands in a run.
#[derive(Clone, Copy, Debug)]
struct Mark {
    /// The position of the last event it folded.
    position: u64,
    /// That event's hash.
    hash: Hash,
    /// Whether its checkpoint must be written.
    dirty: bool,
}

/// Bytes of checkpoint that folding one event of the log again is worth
/// ([`Slot::worth_saving`]): a view restored from its checkpoint writes
/// it again only once the events folded since then, times this, reach
/// the checkpoint's size. Folding an event again (reading, decoding,
/// folding: ~0.33 µs, `casebook bench`'s replay at ~3M events a second)
/// costs about what writing 85 bytes of checkpoint does (35.6 MB in
/// ~0.14 s, measured on the attendance checkpoint of a 24,000-pupil
/// store), so a command re-folds at most about a third of what writing
/// the checkpoint would cost, instead of writing it after every event
/// (a timeline's own access-log entry is one).
pub const CHECKPOINT_BYTES_PER_EVENT: u64 = 256;

/// One projection in a run: where it stands and whether its checkpoint
/// must be written.
struct Slot<'a> {
    feed: &'a mut dyn Feed,
    at: Mark,
    /// The checkpoint it was restored from: its position and size in
    /// bytes (`None`: it starts from zero, or its state is kept in memory
    /// by its caller, and every run that moves it saves it).
    restored: Option<(u64, usize)>,
    /// A view brought along another's fold ([`load_one`]): whatever
    /// stops its checkpoint from being saved is said ([`NotSaved`]), never
    /// the run's error, as the command shows another view.
    companion: bool,
}

impl<'a> Slot<'a> {
    fn fresh(feed: &'a mut dyn Feed) -> Slot<'a> {
        feed.reset();
        Slot {
            feed,
            at: Mark {
                position: 0,
                hash: casebook_engine::envelope::GENESIS_HASH,
                dirty: true,
            },
            restored: None,
            companion: false,
        }
    }

    /// Whether its checkpoint is written at the end of the run: when it
    /// moved, and, if it was restored from a checkpoint, once re-folding
    /// the events since that checkpoint costs more than a part of
    /// writing it again ([`CHECKPOINT_BYTES_PER_EVENT`]). A checkpoint
    /// not written loses nothing: the events after it are in the log, and
    /// the next load folds them again from it.
    fn worth_saving(&self) -> bool {
        match self.restored {
            _ if !self.at.dirty => false,
            None => true,
            Some((position, bytes)) => {
                let since = self.at.position.saturating_sub(position);
                since.saturating_mul(CHECKPOINT_BYTES_PER_EVENT) >= bytes as u64
            }
        }
    }

    /// Loads the slot's checkpoint; on any doubt starts it from zero and
    /// says why.
    async fn restore(
        &mut self,
        store: &dyn EventStore,
        head: Head,
    ) -> Result<Option<Restart>, ProjectionError> {
        match self.restore_if(store, head, None).await? {
            Restored::Checkpoint | Restored::Declined => Ok(None),
            Restored::Restarted(restart) => Ok(Some(restart)),
        }
    }

    /// [`Slot::restore`], but first, when `wanted` is given, asks it
    /// whether a checkpoint folded up to a position (read from the
    /// checkpoint's first bytes, [`leading_position`], which the store
    /// reads without the rest: [`EventStore::checkpoint_prefix`]) and of
    /// a size in bytes is worth decoding; when it says no, the slot stays
    /// at zero, [`Restored::Declined`]. A checkpoint whose position cannot
    /// be read so is decoded, and its caller looks at where it stands.
    async fn restore_if(
        &mut self,
        store: &dyn EventStore,
        head: Head,
        wanted: Option<&(dyn Fn(u64, u64) -> bool + Sync)>,
    ) -> Result<Restored, ProjectionError> {
        let name = self.feed.name();
        let restart = |reason| {
            Ok(Restored::Restarted(Restart {
                projection: name,
                reason,
            }))
        };
        if let Some(wanted) = wanted {
            match store.checkpoint_prefix(name, CHECKPOINT_PEEK).await? {
                None => return restart(RestartReason::NoCheckpoint),
                Some((first, len)) => {
                    // A checkpoint of this build's view only: any other
                    // is read on, and restarts the view with its reason.
                    let declined = leading_position(&first).is_some_and(|(header, position)| {
                        header.format == CHECKPOINT_FORMAT
                            && header.name == name
                            && header.version == self.feed.version()
                            && !wanted(position, len)
                    });
                    if declined {
                        return Ok(Restored::Declined);
                    }
                }
            }
        }
        let Some(checkpoint) = store.open_checkpoint(name).await? else {
            return restart(RestartReason::NoCheckpoint);
        };
        let mut watched = Watched {
            inner: checkpoint.bytes,
            failed: None,
        };
        let restored = if checkpoint.len <= CHECKPOINT_READ_WHOLE {
            use std::io::Read as _;
            // Room for every byte and one more, so that the read that
            // finds the end needs no growth.
            let mut bytes = Vec::with_capacity(usize::try_from(checkpoint.len).unwrap_or(0) + 1);
            match watched.read_to_end(&mut bytes) {
                Ok(_) => self.feed.restore(&bytes),
                Err(e) => Err(RestartReason::Unreadable(e.to_string())),
            }
        } else {
            let mut input = std::io::BufReader::with_capacity(CHECKPOINT_READ, watched);
            let restored = self.feed.restore_from(&mut input);
            watched = input.into_inner();
            restored
        };
        if let Some(e) = watched.failed {
            self.feed.reset();
            return Err(StoreError::io("read checkpoint", e).into());
        }
        let (position, hash) = match restored {
            Ok(at) => at,
            Err(reason) => {
                self.feed.reset();
                return restart(reason);
            }
        };
        if position > 0 && !holds(store, position, hash, head).await? {
            self.feed.reset();
            return restart(RestartReason::NotInLog { position });
        }
        self.at = Mark {
            position,
            hash,
            dirty: false,
        };
        self.restored = Some((
            position,
            usize::try_from(checkpoint.len).unwrap_or(usize::MAX),
        ));
        Ok(Restored::Checkpoint)
    }
}

/// What [`Slot::restore_if`] did.
enum Restored {
    /// The slot stands at its checkpoint.
    Checkpoint,
    /// The slot starts from zero, for this reason.
    Restarted(Restart),
    /// The checkpoint was not wanted: the slot starts from zero.
    Declined,
}

/// Whether the log holds the event at `position` with `hash`.
async fn holds(
    store: &dyn EventStore,
    position: u64,
    hash: Hash,
    head: Head,
) -> Result<bool, ProjectionError> {
    if position > head.position {
        return Ok(false);
    }
    let page = store.read_all(position, 1).await?;
    Ok(page
        .first()
        .is_some_and(|e| e.position == position && e.hash == hash))
}

/// Reads the log from the oldest slot's position up to `head`, feeding each
/// event to every slot that has not seen it, then writes the checkpoint of
/// every slot that restarted, or moved far enough past the checkpoint it
/// was restored from ([`Slot::worth_saving`]). Returns the number of
/// events read.
///
/// **Pipelined.** When the log is longer than one page and the runtime has
/// threads to spare (a multi-threaded tokio runtime), the pages after the
/// first are read on a thread of their own, at most [`PAGES_AHEAD`] pages
/// ahead, while this thread decodes and folds them ([`fold_read_ahead`]).
/// The fold sees exactly the events, in the order, of a fold that reads
/// each page itself; an error stops the run where that fold would have
/// stopped (the first in log order), with the same events folded, and
/// nothing is saved after it; progress is reported after each page.
async fn fold_and_save(
    store: &dyn EventStore,
    slots: &mut [Slot<'_>],
    head: Head,
    progress: &Progress<'_>,
    saving: Saving,
) -> Result<(u64, Vec<NotSaved>), ProjectionError> {
    let Some(start) = slots.iter().map(|s| s.at.position).min() else {
        return Ok((0, Vec::new()));
    };
    let mut next = start + 1;
    progress(start, head.position);
    let mut read_ahead = may_block_in_place();
    while next <= head.position {
        if read_ahead && next > start + 1 {
            // More than a page: the rest is read ahead.
            match tokio::task::block_in_place(|| {
                fold_read_ahead(store, slots, next, head, progress)
            }) {
                Some(done) => {
                    next = done?;
                    break;
                }
                // No thread to read ahead: page by page, as the first.
                None => read_ahead = false,
            }
        }
        let page = read_page(store, next, head).await?;
        fold_page(slots, page, &mut next, &mut Vec::new())?;
        progress(next - 1, head.position);
    }
    let not_saved = save(store, slots, saving).await?;
    Ok((next - start - 1, not_saved))
}

/// Pages read ahead of the fold: enough to ride out an uneven page, few
/// enough that the pages in flight stay a few MB.
const PAGES_AHEAD: usize = 4;

/// Folds the log from `next` to `head` into the slots, the pages read by a
/// thread of their own (at most [`PAGES_AHEAD`] ahead) and folded on this
/// one; returns the position after the last event folded. The fold stays on
/// the caller's thread, where the states were made (their memory, and the
/// checkpoints', stays in one allocator heap).
///
/// The reader sends the pages in order, and its error, if any, as its last
/// message, so the fold meets errors in log order. On a fold error the
/// channel closes and the reader stops at its next page. `None`, with
/// nothing folded, when no thread could be started for the reader.
fn fold_read_ahead(
    store: &dyn EventStore,
    slots: &mut [Slot<'_>],
    mut next: u64,
    head: Head,
    progress: &Progress<'_>,
) -> Option<Result<u64, ProjectionError>> {
    let runtime = tokio::runtime::Handle::current();
    let (pages, received) = std::sync::mpsc::sync_channel(PAGES_AHEAD);
    // The folded pages' envelopes, back to the reader, which frees them.
    let (give_back, given_back) = std::sync::mpsc::channel::<Vec<Spent>>();
    std::thread::scope(|scope| {
        // Owned here: dropped when the fold returns, on an error too, which
        // stops the reader (its `send` fails) before the scope joins it.
        let received = received;
        let mut reading = next;
        let reader = std::thread::Builder::new()
            .name("casebook-read-ahead".into())
            .spawn_scoped(scope, move || {
                while reading <= head.position {
                    while let Ok(spent) = given_back.try_recv() {
                        drop(spent);
                    }
                    let page = runtime.block_on(read_page(store, reading, head));
                    let failed = page.is_err();
                    if let Ok(page) = &page {
                        reading += page.events.len() as u64;
                    }
                    if pages.send(page).is_err() || failed {
                        return;
                    }
                }
            });
        if reader.is_err() {
            return None;
        }
        let mut fold = || {
            while next <= head.position {
                // The reader stops sending only after an error or the head.
                let page = received.recv().map_err(|_| ProjectionError::Missing {
                    position: next,
                    head: head.position,
                })??;
                let mut spent = Vec::with_capacity(page.events.len());
                fold_page(slots, page, &mut next, &mut spent)?;
                // Once the reader has stopped, the last pages' envelopes are
                // freed here.
                let _ = give_back.send(spent);
                progress(next - 1, head.position);
            }
            Ok(next)
        };
        Some(fold())
    })
}

/// A page of the log, and where the entries its corrections name are.
struct Page {
    events: Vec<StoredEvent>,
    targets: Targets,
}

/// The page of the log from `next` (at most [`PAGE_EVENTS`], not past the
/// head); an error when the store has none although the head says there is
/// more.
async fn read_page(store: &dyn EventStore, next: u64, head: Head) -> Result<Page, ProjectionError> {
    let want = usize::try_from(head.position - next + 1).unwrap_or(usize::MAX);
    let events = store.read_all(next, want.min(PAGE_EVENTS)).await?;
    if events.is_empty() {
        // The head said there is more; a store that cannot produce it
        // is damaged, and a view built from part of the log would lie.
        return Err(ProjectionError::Missing {
            position: next,
            head: head.position,
        });
    }
    let targets = correction_targets(store, &events).await?;
    Ok(Page { events, targets })
}

/// Where the entries named by `page`'s corrections are in the log, looked
/// up in one batch, each first in the correction's own stream, below the
/// correction (a correction names an earlier entry of its own pupil;
/// [`EventStore::positions_in_streams`]). Corrections are rare: most pages
/// have none, and cost a scan of their types. A correction whose payload
/// does not decode is left out here; the fold meets it and stops there.
async fn correction_targets(
    store: &dyn EventStore,
    page: &[StoredEvent],
) -> Result<Targets, ProjectionError> {
    let mut targets = Targets::default();
    let named: Vec<InStream> = page
        .iter()
        // An upcast changes a payload's data, never its type
        // (docs/events.md, "Schema history and upcasters").
        .filter(|e| e.event_type == CORRECTION_TYPE)
        .filter_map(|e| match e.case_event() {
            Ok(CaseEvent::EntryCorrected(c)) => Some(InStream {
                stream: e.stream,
                below: e.version,
                id: c.event,
            }),
            _ => None,
        })
        .collect();
    if named.is_empty() {
        return Ok(targets);
    }
    for (id, position) in store.positions_in_streams(&named).await? {
        targets.insert(id, position);
    }
    Ok(targets)
}

/// The stored type of `EntryCorrected`.
const CORRECTION_TYPE: &str = "EntryCorrected";

/// A checkpoint's output or input that keeps the first error it returned:
/// the encoder and the decoder turn an I/O error into their own, and the
/// runner must tell a failing disk from a failing encoding or bytes that
/// do not decode.
struct Watched<T> {
    inner: T,
    failed: Option<std::io::Error>,
}

impl<T> Watched<T> {
    fn watch<R>(&mut self, result: std::io::Result<R>) -> std::io::Result<R> {
        result.inspect_err(|e| {
            if self.failed.is_none() && e.kind() != std::io::ErrorKind::Interrupted {
                self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

impl<R: std::io::Read> std::io::Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let result = self.inner.read(buf);
        self.watch(result)
    }
}

impl<W: std::io::Write> std::io::Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(buf);
        self.watch(result)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let result = self.inner.write_all(buf);
        self.watch(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.inner.flush();
        self.watch(result)
    }
}

/// What is left of a folded event's envelope: its actor, type and payload,
/// allocated by the thread that read the page. The read-ahead fold hands
/// them back to that thread to free: a free from another thread costs both
/// threads more, and it was about a third of the fold thread's CPU.
type Spent = (String, String, Vec<u8>);

/// Feeds a page read from `*next` to every slot that has not seen its
/// events, and moves those slots to the page's end; `*next` follows the
/// events folded, and `spent` gets what is left of their envelopes. On an
/// error, the page's events before it are folded and no slot has moved.
fn fold_page(
    slots: &mut [Slot<'_>],
    page: Page,
    next: &mut u64,
    spent: &mut Vec<Spent>,
) -> Result<(), ProjectionError> {
    // The page's events stay where they are (an envelope is 248 bytes, and
    // moving each out of the page, then into a `RecordedEvent`, was a tenth
    // of a replay's fold thread in memory copies): each event's actor
    // moves into the decoded event, its type and payload are held beside
    // it (no copy of any of them), and all three go to `spent` once every
    // projection has folded it.
    let mut last = None;
    let Page {
        mut events,
        targets,
    } = page;
    for stored in &mut events {
        let (position, hash) = (stored.position, stored.hash);
        if position != *next {
            return Err(ProjectionError::Gap {
                expected: *next,
                found: position,
            });
        }
        let event_type = std::mem::take(&mut stored.event_type);
        let payload = std::mem::take(&mut stored.payload);
        // Access-log and staff-directory entries belong to no school-wide
        // view: skipped by type, before paying for a decode.
        let actor = if casebook_engine::access::is_non_case_type(&event_type) {
            std::mem::take(&mut stored.actor)
        } else {
            let event = match casebook_engine::envelope::decode_case_event(
                &event_type,
                stored.schema,
                &payload,
            ) {
                Ok(event) => event,
                Err(source) => {
                    return Err(ProjectionError::Decode {
                        position,
                        event_type,
                        source,
                    })
                }
            };
            let event = RecordedEvent::taken_from(stored, event);
            let corrected_at = targets.corrected_by(&event);
            for slot in slots.iter_mut().filter(|s| s.at.position < position) {
                slot.feed.feed(&event, corrected_at);
            }
            event.actor
        };
        spent.push((actor, event_type, payload));
        last = Some((position, hash));
        *next += 1;
    }
    // Every slot behind the page's end has now folded up to it.
    if let Some((position, hash)) = last {
        for slot in slots.iter_mut().filter(|s| s.at.position < position) {
            slot.at = Mark {
                position,
                hash,
                dirty: true,
            };
        }
    }
    Ok(())
}

/// Writes the checkpoint of every slot [`Slot::worth_saving`]: that
/// restarted, or moved far enough past the checkpoint it was restored
/// from.
/// Each is encoded straight into the store's file where the store streams
/// it (`save_checkpoint_with`): at 10M events the largest is a few hundred
/// MB that would otherwise be held in memory beside the states.
async fn save(
    store: &dyn EventStore,
    slots: &mut [Slot<'_>],
    saving: Saving,
) -> Result<Vec<NotSaved>, ProjectionError> {
    let mut not_saved = Vec::new();
    for slot in slots.iter_mut().filter(|s| s.worth_saving()) {
        let (name, size_hint) = (slot.feed.name(), slot.feed.checkpoint_size_hint());
        let mut encoding = None;
        let saved = {
            let (position, hash) = (slot.at.position, slot.at.hash);
            // Moved in as `&mut`: a `&mut dyn Feed` is `Send`, a shared one
            // would not be.
            let (feed, failed) = (&mut *slot.feed, &mut encoding);
            let mut write = move |out: &mut dyn std::io::Write| {
                let mut out = Watched {
                    inner: out,
                    failed: None,
                };
                let written = feed.write_checkpoint(&mut out, position, hash);
                match (written, out.failed) {
                    (Ok(()), _) => Ok(()),
                    // The disk failed under the encoder: the store reports
                    // it (a full disk as `DiskFull`).
                    (Err(_), Some(disk)) => Err(disk),
                    (Err(e), None) => {
                        let what = e.to_string();
                        *failed = Some(e);
                        Err(std::io::Error::other(what))
                    }
                }
            };
            store
                .save_checkpoint_with(name, size_hint, &mut write)
                .await
        };
        // An encoding failure is reported as one (a bug, whatever the
        // run); the disk's as the store's. A view brought along another's
        // fold leaves either to its own command.
        if slot.companion {
            if let Err(error) = saved {
                not_saved.push(NotSaved {
                    projection: name,
                    reason: encoding.map_or(error.to_string(), |e| e.to_string()),
                });
            }
            continue;
        }
        if let Some(e) = encoding {
            return Err(e);
        }
        match saved {
            Ok(()) => {}
            // The disk's refusal (space, a failed write, a database that
            // takes no writes from this role); anything else is a bug or
            // damage, and fails the run as before.
            Err(error @ (StoreError::DiskFull { .. } | StoreError::Io { .. }))
                if saving == Saving::BestEffort =>
            {
                not_saved.push(NotSaved {
                    projection: name,
                    reason: error.to_string(),
                })
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(not_saved)
}

fn decode(stored: &StoredEvent) -> Result<RecordedEvent, ProjectionError> {
    RecordedEvent::from_stored(stored).map_err(|source| ProjectionError::Decode {
        position: stored.position,
        event_type: stored.event_type.clone(),
        source,
    })
}

impl SchoolViews {
    /// Every projection, in [`PROJECTION_NAMES`] order.
    fn feeds(&mut self) -> [&mut dyn Feed; 8] {
        let feeds: [&mut dyn Feed; 8] = [
            &mut self.caseload,
            &mut self.behaviour,
            &mut self.attendance,
            &mut self.suspensions,
            &mut self.force,
            &mut self.interventions,
            &mut self.reintegration,
            &mut self.retention,
        ];
        debug_assert!(feeds
            .iter()
            .map(|f| f.name())
            .eq(PROJECTION_NAMES.iter().copied()));
        feeds
    }

    /// Every projection as a slot starting from zero.
    fn slots(&mut self) -> Vec<Slot<'_>> {
        self.feeds().into_iter().map(Slot::fresh).collect()
    }

    /// Loads every school-wide view: from its checkpoint where one is
    /// usable, then catching all of them up in one pass over the rest of
    /// the log, then saving their checkpoints.
    pub async fn load(
        store: &dyn EventStore,
        progress: &Progress<'_>,
    ) -> Result<SchoolViews, ProjectionError> {
        let head = store.head().await?;
        let mut views = SchoolViews::default();
        let mut restarted = Vec::new();
        let (_, not_saved) = {
            let mut slots = views.slots();
            for slot in &mut slots {
                restarted.extend(slot.restore(store, head).await?);
            }
            fold_and_save(store, &mut slots, head, progress, Saving::BestEffort).await?
        };
        views.position = head.position;
        views.hash = head.hash;
        views.restarted = restarted;
        views.not_saved = not_saved;
        Ok(views)
    }

    /// Folds the events appended since this value was loaded (or last
    /// caught up), and saves the checkpoints. For a process that keeps the
    /// views in memory.
    pub async fn catch_up(
        &mut self,
        store: &dyn EventStore,
        progress: &Progress<'_>,
    ) -> Result<u64, ProjectionError> {
        let head = store.head().await?;
        if self.position > 0 && !holds(store, self.position, self.hash, head).await? {
            return Err(ProjectionError::LogChanged {
                position: self.position,
            });
        }
        let (position, hash) = (self.position, self.hash);
        // The views whose checkpoint the store refused last time are
        // saved again now, new events or not; a refusal is forgotten only
        // once its view is saved.
        let refused = std::mem::take(&mut self.not_saved);
        let (read, not_saved) = {
            let mut slots = self.slots_at(position, hash);
            for slot in &mut slots {
                if refused.iter().any(|n| n.projection == slot.feed.name()) {
                    slot.at.dirty = true;
                }
            }
            fold_and_save(store, &mut slots, head, progress, Saving::BestEffort).await
        }
        .inspect_err(|_| self.not_saved = refused)?;
        self.not_saved = not_saved;
        self.position = head.position.max(position);
        self.hash = if read > 0 { head.hash } else { hash };
        Ok(read)
    }

    /// The slots of views already standing at `position`.
    fn slots_at(&mut self, position: u64, hash: Hash) -> Vec<Slot<'_>> {
        self.feeds()
            .into_iter()
            .map(|feed| Slot {
                feed,
                at: Mark {
                    position,
                    hash,
                    dirty: false,
                },
                restored: None,
                companion: false,
            })
            .collect()
    }
}

/// Rebuilds the school-wide projections from the start of the log: all of
/// them, or only the one named `only` (any of [`PROJECTION_NAMES`]).
pub async fn rebuild(
    store: &dyn EventStore,
    only: Option<&str>,
    progress: &Progress<'_>,
) -> Result<RebuildReport, ProjectionError> {
    if let Some(name) = only {
        if !PROJECTION_NAMES.contains(&name) {
            return Err(ProjectionError::UnknownProjection {
                name: name.to_string(),
                known: PROJECTION_NAMES.join(", "),
            });
        }
    }
    let head = store.head().await?;
    if only.is_none() {
        // Also drops checkpoints of projections this build no longer has.
        store.clear_checkpoints().await?;
    }
    let mut views = SchoolViews::default();
    let mut slots: Vec<Slot<'_>> = views
        .slots()
        .into_iter()
        .filter(|s| match only {
            Some(name) => name == s.feed.name(),
            None => true,
        })
        .collect();
    let (events, _) = fold_and_save(store, &mut slots, head, progress, Saving::Required).await?;
    Ok(RebuildReport {
        projections: slots.iter().map(|s| s.feed.name().to_string()).collect(),
        events,
        position: head.position,
    })
}

/// Loads one projection on its own: from its checkpoint, caught up, its
/// checkpoint saved. For a projection outside [`SchoolViews`] (a school's
/// own, or one under development).
pub async fn load_projection<P: Projection>(
    store: &dyn EventStore,
    progress: &Progress<'_>,
) -> Result<P, ProjectionError> {
    load_one(store, progress).await.map(|loaded| loaded.view)
}

/// [`load_projection`], saying whether the projection started from zero
/// and why, and whether the store refused its checkpoint (the view is
/// returned all the same: [`NotSaved`]). What a command that shows one
/// view loads: its own checkpoint, then the events after it.
///
/// **The others alongside, when the fold is long.** When the view is
/// one of [`SchoolViews`] and stands [`SHARE_FOLD_FROM`] events or more
/// behind the head (the first report after `casebook demo` or a large
/// import), each other school-wide view that lacks most of the same
/// events is folded in the same pass and its checkpoint saved, so that
/// the next command that shows it does not read those events again: a
/// view whose checkpoint stands no further behind this view's position
/// than this view stands behind the head (the pass then reads at most
/// twice what this view needs), and is worth bringing up (the events it
/// lacks, times [`SHARE_BYTES_PER_EVENT`], reach its checkpoint's size:
/// [`worth_bringing`]); a view with no usable checkpoint counts as
/// standing at zero, and why it starts from zero is returned
/// ([`Loaded::others_restarted`]). Each position is read from the
/// checkpoint's first bytes ([`EventStore::checkpoint_prefix`]), so a
/// view declined is not decoded. The views brought along cost their
/// checkpoints' decoding, their folds and their memory until this view is
/// returned; what stops one's checkpoint from being saved is left to its
/// own command. Nearer the head, only this view's checkpoint is read (the
/// attendance checkpoint alone is ~26 MB at 1M events: loading every view
/// for the caseload read ~40 MB it did not show).
pub async fn load_one<P: Projection>(
    store: &dyn EventStore,
    progress: &Progress<'_>,
) -> Result<Loaded<P>, ProjectionError> {
    load_one_sharing(store, progress, SHARE_FOLD_FROM).await
}

/// Events behind the head from which [`load_one`] folds the other
/// school-wide views beside the one it loads: at about 3M events a second,
/// 65,536 events are ~20 ms of reading and decoding, against a few
/// milliseconds to look at the seven other checkpoints' first bytes.
pub const SHARE_FOLD_FROM: u64 = 1 << 16;

/// Bytes of checkpoint that reading and decoding one event of the log is
/// worth when [`load_one`] decides whether to bring another view along: a
/// view brought along costs the decoding of its checkpoint now, on top of
/// the one its own command will do anyway, and saves that command reading
/// and decoding the events it lacks. On a store of 9.9M events (24,000
/// pupils), a rebuild read and decoded about 0.27 µs an event, and a
/// command's decoding of its checkpoint took 6-12 ns a byte (7.8 MB for
/// the force log, 36 MB for attendance): about 32 bytes an event.
/// Measured with 256 (the rule for writing a checkpoint again), the first
/// command after 240,000 imported register marks brought along every view
/// and took 1.7-1.9 s against 0.4 s, and the eight commands 3.3 s against
/// 3.0 (docs/performance.md, "Session bf").
pub const SHARE_BYTES_PER_EVENT: u64 = 32;

/// Whether [`load_one`], whose view stands at `from` with the log's head
/// at `head`, brings along a view whose checkpoint stands at `position`
/// and is `len` bytes: when the pass, reading from that view's position
/// on, reads at most twice the events the shown view needs
/// (`from - position <= head - from`), and reading the events it lacks
/// again in its own command would cost more than decoding its checkpoint
/// once more now ([`SHARE_BYTES_PER_EVENT`]).
fn worth_bringing(position: u64, len: u64, from: u64, head: u64) -> bool {
    let behind = head.saturating_sub(from);
    position >= from.saturating_sub(behind)
        && head
            .saturating_sub(position)
            .saturating_mul(SHARE_BYTES_PER_EVENT)
            >= len
}

/// [`load_one`], folding the other school-wide views alongside from
/// `share_from` events behind the head instead of [`SHARE_FOLD_FROM`]
/// (`u64::MAX`: never).
pub async fn load_one_sharing<P: Projection>(
    store: &dyn EventStore,
    progress: &Progress<'_>,
    share_from: u64,
) -> Result<Loaded<P>, ProjectionError> {
    let head = store.head().await?;
    let mut state = P::default();
    let mut others = SchoolViews::default();
    let mut others_restarted = Vec::new();
    let (restarted, not_saved) = {
        let mut slot = Slot::fresh(&mut state);
        let restarted = slot.restore(store, head).await?;
        let from = slot.at.position;
        let mut slots = vec![slot];
        if head.position.saturating_sub(from) >= share_from && PROJECTION_NAMES.contains(&P::NAME) {
            let end = head.position;
            let wanted = move |position, len| worth_bringing(position, len, from, end);
            for feed in others.feeds() {
                if feed.name() == P::NAME {
                    continue;
                }
                let mut other = Slot::fresh(feed);
                other.companion = true;
                // A view this command does not show: a checkpoint the
                // store fails to read is left for its own command to say.
                let taken = match other.restore_if(store, head, Some(&wanted)).await {
                    Ok(Restored::Declined) | Err(_) => false,
                    Ok(Restored::Restarted(why)) => {
                        let taken = wanted(0, 0);
                        if taken {
                            others_restarted.push(why);
                        }
                        taken
                    }
                    Ok(Restored::Checkpoint) => {
                        let len = other.restored.map_or(0, |(_, bytes)| bytes as u64);
                        wanted(other.at.position, len)
                    }
                };
                if taken {
                    slots.push(other);
                } else {
                    other.feed.reset();
                }
            }
        }
        let (_, not_saved) =
            fold_and_save(store, &mut slots, head, progress, Saving::BestEffort).await?;
        (
            restarted,
            not_saved.into_iter().find(|n| n.projection == P::NAME),
        )
    };
    Ok(Loaded {
        view: state,
        restarted,
        not_saved,
        others_restarted,
    })
}

/// The decoded events of `pupil`'s case stream, in stream order. An error
/// when the pupil has no record, or when a payload cannot be decoded.
pub async fn read_pupil(
    store: &dyn EventStore,
    school: &str,
    pupil: &str,
) -> Result<Vec<RecordedEvent>, ProjectionError> {
    let stored = read_whole_stream(store, StreamId::for_pupil(school, pupil)).await?;
    if stored.is_empty() {
        return Err(ProjectionError::UnknownPupil {
            pupil: pupil.to_string(),
        });
    }
    stored.iter().map(decode).collect()
}

/// The pupil's chronology (see [`Chronology::build`]).
pub async fn chronology_of(
    store: &dyn EventStore,
    school: &str,
    pupil: &str,
    as_of: Option<DateTime<Utc>>,
    safeguarding_only: bool,
) -> Result<Chronology, ProjectionError> {
    let events = read_pupil(store, school, pupil).await?;
    Ok(Chronology::build(pupil, &events, as_of, safeguarding_only))
}

/// The pupil's audit trail with access log (see [`AuditTrail::build`]).
/// Payloads that cannot be decoded are listed, not refused: the audit trail
/// is where an auditor must see them.
pub async fn audit_of(
    store: &dyn EventStore,
    school: &str,
    pupil: &str,
) -> Result<AuditTrail, ProjectionError> {
    let case = read_whole_stream(store, StreamId::for_pupil(school, pupil)).await?;
    if case.is_empty() {
        return Err(ProjectionError::UnknownPupil {
            pupil: pupil.to_string(),
        });
    }
    let access = read_whole_stream(store, StreamId::for_access_log(school, pupil)).await?;
    Ok(AuditTrail::build(pupil, &case, &access))
}

#[cfg(test)]
mod tests {
    use super::{CaseEvent, Watched, CORRECTION_TYPE};
    use casebook_engine::testing::Full;
    use uuid::Uuid;

    /// A test view whose state is a list of numbers.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Numbers(Vec<u64>);

    impl crate::Projection for Numbers {
        const NAME: &'static str = "numbers";
        const VERSION: u32 = 1;
        fn apply(&mut self, _: &casebook_engine::RecordedEvent, _: Option<u64>) {}
    }

    /// `write_checkpoint` gathers the encoder's writes into chunks: the
    /// bytes are those of the encoder writing straight to the output, and a
    /// full disk under a chunk (the first, a later one, or the last,
    /// written by the final flush) is an error whose kind the output keeps.
    #[test]
    fn a_checkpoint_written_in_chunks_is_the_encoding_and_reports_a_full_disk() {
        use super::{write_checkpoint, CheckpointOut, CHECKPOINT_CHUNK, CHECKPOINT_FORMAT};
        use crate::Projection;
        // About five chunks of numbers (9 bytes each in MessagePack).
        let state = Numbers(
            (0..(5 * CHECKPOINT_CHUNK / 9) as u64)
                .map(|i| i << 33)
                .collect(),
        );
        let hash = [3u8; 32];
        let mut direct = Vec::new();
        rmp_serde::encode::write_named(
            &mut direct,
            &CheckpointOut {
                format: CHECKPOINT_FORMAT,
                name: Numbers::NAME,
                version: Numbers::VERSION,
                position: 7,
                hash,
                state: &state,
            },
        )
        .unwrap();
        assert!(direct.len() > 4 * CHECKPOINT_CHUNK);
        let mut chunked = Vec::new();
        write_checkpoint(&mut chunked, &state, 7, hash).unwrap();
        assert_eq!(chunked, direct);
        for room in [0, 100, 2 * CHECKPOINT_CHUNK + 5, direct.len() - 1] {
            let mut disk = Full { room };
            let mut out = Watched {
                inner: &mut disk,
                failed: None,
            };
            let written = write_checkpoint(&mut out, &state, 7, hash);
            assert!(written.is_err(), "room {room}");
            let kept = out.failed.expect("the disk's error is kept");
            assert_eq!(kept.kind(), std::io::ErrorKind::StorageFull, "room {room}");
        }
        let mut disk = Full { room: direct.len() };
        write_checkpoint(&mut disk, &state, 7, hash).unwrap();
        assert_eq!(disk.room, 0);
    }

    /// The encoder turns a failed write into an error of its own; the
    /// checkpoint's output keeps the disk's, with its kind, so that a full
    /// disk is reported as one (`save`).
    #[test]
    fn a_disk_error_under_the_encoder_is_kept_with_its_kind() {
        let mut disk = Full { room: 100 };
        let mut out = Watched {
            inner: &mut disk,
            failed: None,
        };
        let encoded = rmp_serde::encode::write(&mut out, &vec![7u32; 1_000]);
        assert!(encoded.is_err());
        let kept = out.failed.expect("the disk's error is kept");
        assert_eq!(kept.kind(), std::io::ErrorKind::StorageFull);

        let mut roomy = Full { room: 1 << 20 };
        let mut out = Watched {
            inner: &mut roomy,
            failed: None,
        };
        rmp_serde::encode::write(&mut out, &vec![7u32; 1_000]).unwrap();
        assert!(out.failed.is_none());
    }

    /// The position a checkpoint stands at is read from its first bytes
    /// when it is laid out as `write_checkpoint` writes it, and not
    /// otherwise.
    #[test]
    fn a_checkpoints_position_is_read_from_its_first_bytes() {
        use super::{encode_checkpoint, leading_position, CheckpointHeader, CHECKPOINT_FORMAT};
        use crate::Projection;
        let header = CheckpointHeader {
            format: CHECKPOINT_FORMAT,
            name: Numbers::NAME.to_string(),
            version: Numbers::VERSION,
        };
        for (n, position) in [(0u64, 0u64), (3, 1), (70_000, 9_876_543_210)] {
            let bytes = encode_checkpoint(&Numbers((0..n).collect()), position, [7; 32]).unwrap();
            let read = leading_position(&bytes);
            assert_eq!(read, Some((header.clone(), position)), "{n} numbers");
            // The first bytes are enough: the state comes after.
            assert_eq!(leading_position(&bytes[..64]), read);
            assert_eq!(leading_position(&bytes[..20]), None, "cut in the header");
        }
        // Another layout: not read so (the caller decodes it).
        #[derive(serde::Serialize)]
        struct Reordered<'a> {
            format: u32,
            name: &'a str,
            version: u32,
            hash: [u8; 32],
            position: u64,
        }
        let bytes = rmp_serde::to_vec_named(&Reordered {
            format: CHECKPOINT_FORMAT,
            name: Numbers::NAME,
            version: Numbers::VERSION,
            hash: [0; 32],
            position: 4,
        })
        .unwrap();
        assert_eq!(leading_position(&bytes), None);
        assert_eq!(leading_position(b"not a checkpoint"), None);
        assert_eq!(leading_position(&[]), None);
    }

    /// A view comes along a fold from `from` when the pass, started at the
    /// view's position, reads at most twice what the shown view needs,
    /// and the events the view lacks, at `SHARE_BYTES_PER_EVENT` bytes
    /// each, reach its checkpoint's size.
    #[test]
    fn a_view_comes_along_when_the_fold_covers_it_and_it_is_worth_it() {
        use super::{worth_bringing, SHARE_BYTES_PER_EVENT as B};
        let (from, head) = (100_000, 160_000);
        assert!(worth_bringing(from, 0, from, head), "no bytes: always");
        assert!(worth_bringing(from, 60_000 * B, from, head));
        assert!(!worth_bringing(from, 60_000 * B + 1, from, head));
        assert!(worth_bringing(head - 10, 10 * B, from, head));
        assert!(!worth_bringing(head - 10, 10 * B + 1, from, head));
        assert!(!worth_bringing(head, 1, from, head), "at the head");
        // Behind the shown view: as far back as it is behind the head.
        assert!(worth_bringing(40_000, 0, from, head));
        assert!(!worth_bringing(39_999, 0, from, head));
        assert!(worth_bringing(40_000, 120_000 * B, from, head));
        assert!(!worth_bringing(0, 0, from, head), "from zero: too far");
        assert!(
            worth_bringing(0, 0, 80_000, head),
            "from zero: half the log"
        );
        assert!(worth_bringing(0, 0, 0, head), "from the start");
        assert!(worth_bringing(5, u64::MAX, 0, u64::MAX), "no overflow");
    }

    /// The header read from the front of a checkpoint is the one serde
    /// finds; a checkpoint laid out otherwise (here: its position first,
    /// or a header field twice) is read by serde, with the same answers as
    /// before; a checkpoint of another version or name is told apart.
    #[test]
    fn the_header_is_read_from_the_front_or_else_by_serde() {
        use super::{
            decode_checkpoint, encode_checkpoint, leading_header, CheckpointHeader, RestartReason,
            CHECKPOINT_FORMAT,
        };
        use crate::Projection;
        let hash = [5u8; 32];
        for n in [0u64, 1, 100, 70_000] {
            let bytes = encode_checkpoint(&Numbers((0..n).collect()), 9, hash).unwrap();
            let serde: CheckpointHeader = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(leading_header(&bytes), Some(serde));
            let (state, position, got) = decode_checkpoint::<Numbers>(&bytes).unwrap();
            assert_eq!((state.0.len() as u64, position, got), (n, 9, hash));
        }
        #[derive(serde::Serialize)]
        struct Reordered<'a> {
            position: u64,
            hash: [u8; 32],
            format: u32,
            name: &'a str,
            version: u32,
            state: Vec<u64>,
        }
        let mut other = Reordered {
            position: 4,
            hash,
            format: CHECKPOINT_FORMAT,
            name: Numbers::NAME,
            version: Numbers::VERSION,
            state: vec![1, 2, 3],
        };
        let bytes = rmp_serde::to_vec_named(&other).unwrap();
        assert_eq!(leading_header(&bytes), None);
        let (state, position, _) = decode_checkpoint::<Numbers>(&bytes).unwrap();
        assert_eq!((state.0, position), (vec![1, 2, 3], 4));
        other.version = 7;
        let bytes = rmp_serde::to_vec_named(&other).unwrap();
        assert!(matches!(
            decode_checkpoint::<Numbers>(&bytes),
            Err(RestartReason::VersionChanged {
                stored: 7,
                current: 1
            })
        ));
        // The first three entries, one of them twice: serde's reading
        // (refused as a duplicate field).
        let mut twice = vec![0x84];
        for (key, value) in [("format", 1u8), ("version", 1), ("version", 1)] {
            twice.push(0xa0 | key.len() as u8);
            twice.extend_from_slice(key.as_bytes());
            twice.push(value);
        }
        twice.extend_from_slice(&[0xa4, b'n', b'a', b'm', b'e', 0xa7]);
        twice.extend_from_slice(b"numbers");
        assert_eq!(leading_header(&twice), None);
        assert!(matches!(
            decode_checkpoint::<Numbers>(&twice),
            Err(RestartReason::Unreadable(_))
        ));
        // The name twice, likewise.
        let mut names = vec![0x83];
        for key in ["name", "name"] {
            names.push(0xa0 | key.len() as u8);
            names.extend_from_slice(key.as_bytes());
            names.push(0xa7);
            names.extend_from_slice(b"numbers");
        }
        names.extend_from_slice(&[0xa7, b'v', b'e', b'r', b's', b'i', b'o', b'n', 1]);
        assert_eq!(leading_header(&names), None);
        assert!(decode_checkpoint::<Numbers>(&names).is_err());
        // Another view's checkpoint.
        let mut bytes = encode_checkpoint(&Numbers(vec![1]), 9, hash).unwrap();
        let at = bytes.windows(7).position(|w| w == b"numbers").unwrap();
        bytes[at] = b'N';
        assert!(matches!(
            decode_checkpoint::<Numbers>(&bytes),
            Err(RestartReason::Unreadable(_))
        ));
    }

    proptest::proptest! {
        /// Whatever the bytes, the front read does not panic, and what it
        /// finds is what serde finds, when serde can read the bytes at all.
        #[test]
        fn the_front_read_of_any_bytes_agrees_with_serde(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cut in 0usize..200,
        ) {
            use super::{encode_checkpoint, leading_header, CheckpointHeader};
            let good = encode_checkpoint(&Numbers(vec![1, 2, 3]), 9, [0; 32]).unwrap();
            for bytes in [bytes.clone(), good[..cut.min(good.len())].to_vec(), {
                let mut mixed = good.clone();
                let at = cut % mixed.len();
                mixed.splice(at..at, bytes.iter().copied());
                mixed
            }] {
                if let Some(front) = leading_header(&bytes) {
                    if let Ok(serde) = rmp_serde::from_slice::<CheckpointHeader>(&bytes) {
                        proptest::prop_assert_eq!(front, serde);
                    }
                }
            }
        }
    }

    #[test]
    fn the_correction_type_is_the_stored_type_of_entry_corrected() {
        let c = CaseEvent::EntryCorrected(casebook_engine::event::EntryCorrected {
            event: Uuid::nil(),
            changes: serde_json::Map::new(),
            reason: String::new(),
        });
        assert_eq!(c.type_name(), CORRECTION_TYPE);
    }
}
