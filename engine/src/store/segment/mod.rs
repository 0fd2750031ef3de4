//! The segment backend: casebook's own embedded log, append-only segment
//! files and an in-memory index (the KurrentDB/TigerBeetle way). A
//! hash-chained, append-only log needs no B-tree or LSM tree under it.
//!
//! Layout of a store directory (byte for byte in docs/storage.md):
//!
//! ```text
//! DIR/segment-store                      marker: "casebook segment store <format>\n"
//! DIR/casebook.lock                      the process lock (shared with sled)
//! DIR/logs/<school>/<first position, 20 digits>.seg
//! DIR/logs/<school>/head                 the head watermark
//! DIR/logs/<school>/index                the index snapshot (snapshot.rs)
//! DIR/logs/<school>/checkpoints/<hex of name>
//! ```
//!
//! A segment is a sequence of frames ([`frame`]); each frame holds one
//! event's value exactly as sled stores it, so hashes and `verify` are the
//! same on every backend. One writer thread per log group-commits: all
//! frames of a group go into one buffer, one `pwrite` at the end of the
//! current segment, one `fdatasync`, and only then into the index readers
//! use, so a read never sees an event that is not durable. (A large group
//! goes into the index while the disk writes it back, under the index's
//! write lock, which is held until its `fdatasync` has returned:
//! [`LARGE_GROUP_EVENTS`].)
//!
//! Architecture Invariant: the index in memory is derived from the segment
//! files only (rebuilt on open, or read from the index snapshot a clean
//! close wrote from it: [`snapshot`], checked against the segments and
//! ignored when it does not match); the segment files are never
//! rewritten, only appended to, and truncated only at an unacknowledged
//! torn tail.

mod copy_in;
mod dense;
pub mod frame;
mod ids;
mod locs;
pub mod raw;
mod snapshot;
mod sorted_ids;
mod streams;

pub use snapshot::{FULL_SCAN_ENV, SNAPSHOT_FILE};

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use self::dense::MAX_POSITIONS;
use self::frame::{decode_frame, encode_frame, FrameMeta, SeqReader};
use self::ids::Ids;
use self::locs::{Locations, Span};
use self::sorted_ids::SortedIds;
use self::streams::Streams;
use super::sled::{validate_school, ProcessLock};
use super::{
    AfterSeal, AppendRequest, Appended, ChainVerifier, CheckpointReader, CheckpointWriter, Commit,
    Committed, ContentCheck, EventStore, GroupBytes, GroupStage, Head, IdsChecked, InStream,
    Presealed, Problems, Reply, Sealed, SealedSink, Seen, StreamVisitor, VerifyReport,
    MAX_READ_PAGE,
};
use crate::envelope::{split_value, EventRef, Hash, StoredEvent, StreamId, GENESIS_HASH};
use crate::error::StoreError;

/// On-disk format written by this build; a store with a newer one is
/// refused.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the marker file that makes a directory a segment store.
pub const MARKER_FILE: &str = "segment-store";
const MARKER_PREFIX: &str = "casebook segment store ";
/// Directory of the school logs.
pub const LOGS_DIR: &str = "logs";
/// A log's checkpoints directory.
const CHECKPOINT_DIR: &str = "checkpoints";
/// A log's head watermark file.
const WATERMARK_FILE: &str = "head";
/// Segment file suffix.
const SEGMENT_SUFFIX: &str = ".seg";

/// Size at which the writer starts a new segment (before the next group;
/// a segment can exceed it by one group).
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Events one group commit gathers at most from separate appends. A single
/// larger append (an import) is still one group of its own. No B-tree
/// memory to bound here (cf. sled's 1,024): the group's buffer is about
/// 430 bytes an event.
pub const MAX_GROUP_EVENTS: usize = 8_192;

/// Zero bytes the writer writes ahead of a small group when the segment
/// must grow, so that the next groups overwrite space that is already
/// written and their `fdatasync` flushes data only: no size change, so no
/// journal commit (the fsync ceiling `casebook bench` measures). A group of
/// more than [`PREALLOC_MAX_GROUP`] bytes (an import) just extends the file;
/// its one size change is shared by thousands of events. The zeros after
/// the last group are cut at clean close and on open; a frame's `len` is
/// never 0, so readers stop there.
pub const PREALLOC_BYTES: u64 = 1024 * 1024;
/// Largest group that preallocates ([`PREALLOC_BYTES`]).
pub const PREALLOC_MAX_GROUP: usize = 64 * 1024;
static ZEROS: [u8; PREALLOC_BYTES as usize] = [0; PREALLOC_BYTES as usize];

/// Segments written in bulk (a group of [`LARGE_GROUP_EVENTS`] or more
/// went into them: an import's batches, a large atomic append, or many
/// appends that came together) that stay in the page cache: the current
/// one and the newest closed ones, 1 GiB at the default segment size. As
/// the writer rolls past them, older segments written in bulk since the
/// log was opened are dropped from the page cache
/// ([`drop_from_page_cache`]): their bytes are durable, and a bulk write
/// of gigabytes no longer grows the page cache by as much. On
/// this machine kind, memory touched for the first time past what the
/// host holds for the machine costs about 16 µs a 4 KB page against 1.4
/// (docs/performance.md, "Session ax"): a 30M-event import spent 0.4–0.6
/// µs an event copying into fresh page cache, 0.06 with this.
pub const BULK_CACHED_SEGMENTS: usize = 4;

/// Advises the kernel to drop `file`'s pages from the page cache (advice
/// only: a failure changes nothing). Only for bytes already durable:
/// their clean pages are dropped, and read from the disk when next asked
/// for.
pub(crate) fn drop_from_page_cache(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: advice about an open descriptor's file; no memory of
        // this process is read or written.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// The closed segments of `cached` (written in bulk, oldest first) past
/// the newest [`BULK_CACHED_SEGMENTS`] − 1, taken out to be dropped from
/// the page cache: with the current segment, the newest
/// [`BULK_CACHED_SEGMENTS`] stay. The writer's rule and the raw ceiling's.
pub(crate) fn past_bulk_cache<T>(
    cached: &mut std::collections::VecDeque<T>,
) -> std::collections::vec_deque::Drain<'_, T> {
    let past = cached.len().saturating_sub(BULK_CACHED_SEGMENTS - 1);
    cached.drain(..past)
}

/// Pending appends waiting for the writer (back-pressure).
pub const MAX_PENDING_COMMITS: usize = 1_024;

/// How often, at most, the writer refreshes the head watermark (and at
/// clean close). Not per group: it is a guard against silent loss, not
/// part of durability.
pub const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Longest checkpoint name (it becomes a hex file name).
pub const MAX_CHECKPOINT_NAME: usize = 100;

/// Events appended since the last index snapshot (or since none) before
/// a clean close writes a new one; at least an eighth of the snapshot's
/// head too, so that a large log is not rewritten for every few appends
/// (but never more than [`SNAPSHOT_TAIL_MOST`]).
pub const SNAPSHOT_MIN_EVENTS: u64 = 65_536;
/// Events after the last index snapshot from which a clean close writes
/// a new one whatever the snapshot's head ([`SNAPSHOT_MIN_EVENTS`] still
/// first): every open scans the frames after the snapshot, about 0.35 µs
/// an event, so at an eighth of the head a log of 9.9M events could make
/// every command that opens it scan 1.2M events (0.4–0.5 s, after an
/// import of 1.2M lines; 0.02 s once the import's close wrote the
/// snapshot, which took it 0–2.7 s longer: docs/performance.md, "Session
/// bf").
pub const SNAPSHOT_TAIL_MOST: u64 = 1 << 18;
/// Overrides [`SNAPSHOT_MIN_EVENTS`] (a whole number of events; 1 writes a
/// snapshot at a clean close once an eighth of the last snapshot's head,
/// or [`SNAPSHOT_TAIL_MOST`] events if fewer, followed it, and with no
/// snapshot yet at the first clean close after an append).
pub const SNAPSHOT_MIN_EVENTS_ENV: &str = "CASEBOOK_SNAPSHOT_MIN_EVENTS";

/// Ids the index's table holds before the writer spills them: it writes
/// them, sorted, to a run in a file of its own (12 bytes an id, unlinked
/// at once, so it lives only as long as the log is open), and looks them
/// up there from then on (a filter and a block directory in memory, about
/// 2 bytes an id, against 14–19 in the table, which holds about 25 MB at
/// this size). At [`ids::MERGE_AT`] runs a thread of the writer's merges
/// them all into one ([`Writer::merge_ids`]).
///
/// The most a table of 2^21 buckets holds (hashbrown fills seven eighths
/// of its buckets) less one group, so that groups of up to
/// [`MAX_GROUP_EVENTS`] never grow the table past them: 1,826,816 ids.
/// (One atomic append of more, such as `casebook import` of a larger
/// file, is one group, and the table grows to take all of its ids.) At
/// 2^21 ids (sessions v to z) the group before the spill grew it to 2^22
/// buckets, 21 MB instead of 10.5, built beside the old one
/// (`Writer::grow_ids_ahead`), and the open that indexes every frame
/// sized it so too (docs/performance.md, "Session aa").
pub const SPILL_IDS: usize = (1 << 21) / 8 * 7 - MAX_GROUP_EVENTS;

/// Most events after an import planner's look-up of a batch's ids that
/// the writer tests the batch's ids against instead of looking them up
/// ([`Committed::absent_after`]): usually one batch (the one written while
/// the next was planned); past this, every id is looked up.
const ABSENT_AFTER_MOST: u64 = 1 << 16;

/// Most events after the look-up, for each event of the append, that the
/// writer tests its ids against: past this, building the bitmap
/// ([`Committed::absent_after`]) would cost more than the look-ups it
/// saves (a few nanoseconds an event after it, against about a hundred a
/// look-up in tables of megabytes).
const ABSENT_AFTER_PER_EVENT: u64 = 16;

/// Stream positions the index holds in memory (the versions indexed after
/// its file's: 4 bytes each, 8 MB at this size) before the writer spills
/// them: it writes every stream's list up to the log's head, the file's
/// positions and those in memory, to a file of its own (unlinked at once;
/// on a thread of its own: `Writer::spill_streams`), and reads the lists
/// there from then on ([`streams::ListSpill`]). The next spill waits
/// for this many, or a quarter of the positions in the file if more, so
/// that what the spills write stays within about five times the log's
/// positions (4 bytes each) however long the session.
pub const SPILL_STREAMS: usize = 1 << 21;

/// When the writer, and an open that indexes frames, spill what the index
/// holds: the event ids once the table holds `ids` ([`SPILL_IDS`]), the
/// stream positions once `streams` are held in memory ([`SPILL_STREAMS`]).
/// Each is doubled after a spill of it that failed, so that a failing
/// spill is not tried again at every group.
#[derive(Clone, Copy, Debug)]
struct Spills {
    ids: usize,
    streams: usize,
    /// Runs of ids at which the writer merges them ([`ids::MERGE_AT`];
    /// after a merge that failed, [`ids::MAX_RUNS`] more than it merged).
    merge_at: usize,
    /// Frames of a group an open's scan keeps before it reads the group
    /// twice instead ([`PENDING_MOST`]).
    pending: usize,
}

impl Spills {
    const DEFAULT: Spills = Spills {
        ids: SPILL_IDS,
        streams: SPILL_STREAMS,
        merge_at: ids::MERGE_AT,
        pending: PENDING_MOST,
    };

    fn of(options: &SegmentOptions) -> Spills {
        Spills {
            ids: options.spill_ids,
            streams: options.spill_streams,
            ..Spills::DEFAULT
        }
    }
}

/// Options of a segment store (tests shrink the segment size and the
/// snapshot threshold).
#[derive(Clone, Copy, Debug)]
pub struct SegmentOptions {
    pub segment_bytes: u64,
    /// [`SNAPSHOT_MIN_EVENTS`] (default: that, or
    /// [`SNAPSHOT_MIN_EVENTS_ENV`]).
    pub snapshot_min_events: u64,
    /// [`SNAPSHOT_TAIL_MOST`] (tests lower it).
    pub snapshot_tail_most: u64,
    /// Whether an open reads the log's index snapshot; `false` rebuilds
    /// the index from every frame of every segment (default: `true`,
    /// unless [`FULL_SCAN_ENV`] is set).
    pub read_snapshot: bool,
    /// Whether an open from the snapshot reads the event ids too (about
    /// 14 bytes an event, more than half of the index; on a thread of
    /// their own beside the rest). `false` leaves them in the file until
    /// first needed (an append, a look-up by id, `verify`): for a command
    /// that only reads by pupil or by position, such as the caseload or a
    /// report. Default `true`.
    pub event_ids_at_open: bool,
    /// Whether an open from the snapshot holds every position's location
    /// (about 2 bytes an event; default `true`). `false` keeps only where
    /// each group of 64 positions starts (about 0.07 bytes an event), for
    /// a command that reads the log in order, a few streams, or nothing
    /// (the caseload, the reports, a timeline): reads in position order
    /// walk a group's frames from
    /// its start, so do the first [`SPARSE_WALKS`] groups of streams
    /// read and of a look-up by id's candidates, and past those, or at
    /// `verify`, every location is read from the snapshot
    /// ([`locations_ready`]); a close that writes the snapshot copies the
    /// old one's lengths instead ([`snapshot::Lens::Copied`]).
    pub locations_at_open: bool,
    /// [`SPILL_IDS`] (tests lower it).
    pub spill_ids: usize,
    /// [`SPILL_STREAMS`] (tests lower it).
    pub spill_streams: usize,
    /// [`snapshot::BESIDE_BYTES`] (tests lower it).
    pub snapshot_beside_bytes: u64,
    /// [`ids::GROW_APART_FROM`] (tests lower it).
    pub grow_apart_from: usize,
    /// [`IN_PLACE_LEAST`]: while the ids are left in the snapshot, at
    /// least this many of its blocks are read by look-ups in place, all
    /// look-ups together, before one reads them whole
    /// ([`IN_PLACE_READS`] times the section's blocks if more:
    /// [`in_place_budget`]). 0: none is, every first look-up reads them
    /// (tests of that reading; the bench's baseline).
    pub ids_in_place_least: u64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            snapshot_min_events: std::env::var(SNAPSHOT_MIN_EVENTS_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(SNAPSHOT_MIN_EVENTS),
            snapshot_tail_most: SNAPSHOT_TAIL_MOST,
            read_snapshot: std::env::var_os(FULL_SCAN_ENV).is_none(),
            event_ids_at_open: true,
            locations_at_open: true,
            spill_ids: SPILL_IDS,
            spill_streams: SPILL_STREAMS,
            snapshot_beside_bytes: snapshot::BESIDE_BYTES,
            grow_apart_from: ids::GROW_APART_FROM,
            ids_in_place_least: IN_PLACE_LEAST,
        }
    }
}

fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(during, e)
}

fn corrupt(path: &Path, offset: Option<u64>, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        location: match offset {
            Some(o) => format!("{} at byte {o}", path.display()),
            None => path.display().to_string(),
        },
        what: what.into(),
    }
}

/// fsyncs a directory (after creating, renaming or removing in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory"))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename,
/// fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_with(path, &mut |out| out.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes, streamed through a buffer (the
/// bytes are never all in memory). When `write` or the disk fails, the
/// temporary file is removed and `path` is left as it was.
fn write_atomic_with(
    path: &Path,
    write: &mut (dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + Send),
) -> Result<(), StoreError> {
    replace_file(path, true, write)
}

/// Writes a temporary file and renames it over `path`; with `sync`, the
/// file is fsynced before the rename and the directory after it (durable
/// and atomic). Without, the rename still replaces the file whole for
/// every reader, but after a machine crash the new file may be empty or
/// partial: only for files whose reader checks them and can do without
/// them (the index snapshot).
fn replace_file(
    path: &Path,
    sync: bool,
    write: &mut (dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + Send),
) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let file = File::create(&tmp).map_err(io("write file"))?;
    let mut out = std::io::BufWriter::with_capacity(CHECKPOINT_WRITE_BUFFER, file);
    let written = write(&mut out)
        .and_then(|()| {
            out.into_inner()
                .map_err(std::io::IntoInnerError::into_error)
        })
        .and_then(|f| if sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io("write file", e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io("rename file", e));
    }
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Bytes buffered between a streamed file's writes.
const CHECKPOINT_WRITE_BUFFER: usize = 256 * 1024;

/// Whether `dir` holds a segment store.
pub fn is_segment_store(dir: &Path) -> bool {
    dir.join(MARKER_FILE).exists()
}

/// The marker's text for `version`.
fn marker_text(version: u32) -> String {
    format!("{MARKER_PREFIX}{version}\n")
}

fn read_marker(dir: &Path) -> Result<u32, StoreError> {
    let path = dir.join(MARKER_FILE);
    let text = std::fs::read(&path).map_err(io("read store marker"))?;
    let bad = || {
        corrupt(
            &path,
            None,
            "the store marker is damaged (expected \"casebook segment store <version>\")",
        )
    };
    let text = std::str::from_utf8(&text).map_err(|_| bad())?;
    text.trim_end()
        .strip_prefix(MARKER_PREFIX)
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(bad)
}

// ---- the store ------------------------------------------------------------

/// An embedded casebook store on segment files: a directory holding any
/// number of school logs.
pub struct SegmentStore {
    path: PathBuf,
    options: SegmentOptions,
    logs: Mutex<HashMap<String, Arc<SegmentLog>>>,
    /// Logs being filled by `casebook copy`: recovered once, then kept up
    /// to date page by page (copy_in.rs).
    copies: Mutex<HashMap<String, copy_in::Copying>>,
    lock: Arc<ProcessLock>,
}

impl SegmentStore {
    /// Opens the store at `dir`, creating it when `create` is true.
    pub fn open(dir: &Path, create: bool) -> Result<Arc<SegmentStore>, StoreError> {
        SegmentStore::open_with(dir, create, SegmentOptions::default())
    }

    /// [`SegmentStore::open`] with options.
    pub fn open_with(
        dir: &Path,
        create: bool,
        options: SegmentOptions,
    ) -> Result<Arc<SegmentStore>, StoreError> {
        // A spill at 0 would spill at every group, and doubling 0 after a
        // failure would stay 0.
        let options = SegmentOptions {
            spill_ids: options.spill_ids.max(1),
            spill_streams: options.spill_streams.max(1),
            ..options
        };
        let text = dir.display().to_string();
        if dir.join("db").exists() || dir.join("conf").exists() {
            return Err(StoreError::Io {
                during: "open",
                source: format!(
                    "{text} holds a sled store, not a segment store; open it with the sled backend"
                )
                .into(),
            });
        }
        let marked = is_segment_store(dir);
        if !create && !marked {
            return Err(StoreError::Io {
                during: "open",
                source: format!(
                    "no casebook segment store at {text} (run `casebook init` or `casebook demo` first, or pass --data)"
                )
                .into(),
            });
        }
        if create {
            std::fs::create_dir_all(dir).map_err(io("create store"))?;
        }
        let lock = Arc::new(ProcessLock::acquire(dir)?);
        if is_segment_store(dir) {
            let found = read_marker(dir)?;
            if found > FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        } else {
            if dir.join(LOGS_DIR).exists() {
                return Err(corrupt(
                    dir,
                    None,
                    "segment logs without the store marker (segment-store); restore it from a backup",
                ));
            }
            write_atomic(
                &dir.join(MARKER_FILE),
                marker_text(FORMAT_VERSION).as_bytes(),
            )?;
        }
        if !dir.join(LOGS_DIR).exists() {
            // The directory entry must be durable before any segment in it
            // is acknowledged.
            std::fs::create_dir_all(dir.join(LOGS_DIR)).map_err(io("create store"))?;
            sync_dir(dir)?;
        }
        Ok(Arc::new(SegmentStore {
            path: dir.to_path_buf(),
            options,
            logs: Mutex::new(HashMap::new()),
            copies: Mutex::new(HashMap::new()),
            lock,
        }))
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log of `school`, created on first use: one `SegmentLog` (one
    /// writer) per school per process.
    pub fn log(&self, school: &str) -> Result<Arc<SegmentLog>, StoreError> {
        validate_school(school)?;
        let mut logs = self.logs.lock().map_err(|_| StoreError::WriterStopped)?;
        if let Some(log) = logs.get(school) {
            return Ok(log.clone());
        }
        let dir = self.path.join(LOGS_DIR).join(school);
        // From here on the log's writer owns its files.
        self.copies
            .lock()
            .map_err(|_| StoreError::WriterStopped)?
            .remove(school);
        let log = Arc::new(SegmentLog::open(
            &dir,
            school,
            self.options,
            self.lock.clone(),
        )?);
        logs.insert(school.to_string(), log.clone());
        Ok(log)
    }

    /// The schools that have a log in this store.
    pub fn schools(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.path.join(LOGS_DIR))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|s| validate_school(s).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Bytes the store's files hold.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        fn walk(dir: &Path) -> std::io::Result<u64> {
            let mut total = 0;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                total += if meta.is_dir() {
                    walk(&entry.path())?
                } else {
                    meta.len()
                };
            }
            Ok(total)
        }
        walk(&self.path).map_err(io("size"))
    }
}

// ---- the index ------------------------------------------------------------

/// Where a frame is: segment number (index into the log's segments), byte
/// offset, length (the index keeps about 2 bytes a position: [`Locations`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    offset: u64,
    len: u32,
    seg: u32,
}

/// Events to read, in order: each one's position and where its frame is,
/// and the segments they lie in, each held once (a handle a frame was an
/// atomic count up and down for every event of a timeline).
#[derive(Default)]
struct Wanted {
    frames: Vec<(u64, Loc)>,
    segments: Vec<(u32, Arc<Segment>)>,
}

impl Wanted {
    fn with_capacity(frames: usize) -> Wanted {
        Wanted {
            frames: Vec::with_capacity(frames),
            segments: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    /// Adds position `p`, whose frame is at `loc` in `seg`.
    fn push(&mut self, p: u64, loc: Loc, seg: &Arc<Segment>) {
        if !self.segments.iter().rev().any(|(n, _)| *n == loc.seg) {
            self.segments.push((loc.seg, seg.clone()));
        }
        self.frames.push((p, loc));
    }

    /// Segment number `n`, held when a frame in it was pushed.
    fn segment(&self, n: u32) -> Option<&Segment> {
        self.segments
            .iter()
            .rev()
            .find(|(m, _)| *m == n)
            .map(|(_, seg)| &**seg)
    }
}

/// The in-memory index of a log: rebuilt from the segments on open.
struct Index {
    /// Where each position's frame is.
    locs: Locations,
    /// Per stream, its positions by version (`[v - 1]`); a position fits
    /// a `u32` (`max_events`). Those of the snapshot stay in its file.
    streams: Streams,
    /// Event id fingerprints by position, and positions by fingerprint:
    /// the snapshot's in its file, those indexed since in a table.
    ids: Ids,
    /// Pairs of positions (earlier, later) whose ids share a fingerprint,
    /// pushed since they were last checked: the same id twice (a log that
    /// is corrupt) or two ids (almost never). An open reads both frames of
    /// each ([`check_shared`]); the writer and a copy checked their ids
    /// against the frames before pushing them.
    shared: Vec<(u32, u32)>,
    /// The event ids of the snapshot the log was opened from, while they
    /// are still only in the file: `ids` is then empty, and the ids of the
    /// frames indexed after the snapshot wait here ([`read_later_ids`]).
    later: Option<Box<LaterIds>>,
    head_hash: Hash,
    /// Most events the log may hold ([`MAX_POSITIONS`]; lower in tests).
    max_events: u64,
}

/// A snapshot's event ids not read yet ([`snapshot::LaterIds`]), with
/// what they must be checked against when they are.
struct LaterIds {
    snapshot: snapshot::LaterIds,
    /// The frames the open read to check the snapshot: each position and
    /// the event id its frame holds.
    spots: Vec<(u64, Uuid)>,
    /// The event ids of the frames after the snapshot's head, in order.
    tail: Vec<Uuid>,
    /// The snapshot's ids as looked up in place ([`LaterIds::sorted`]),
    /// once made; `None` if they cannot be (a snapshot of format 5, or a
    /// directory of their blocks that failed its checks).
    in_place: std::sync::OnceLock<Option<SortedIds>>,
    /// A look-up in place found something wrong (a block changed, a
    /// frame misfiled, a read that failed): the ids are read whole from
    /// then on ([`ids_ready`], which finds the damage).
    in_place_failed: AtomicBool,
    /// Blocks of the snapshot's ids read by look-ups in place so far (by
    /// the writer's, one an id), against [`in_place_budget`].
    looked_up: AtomicU64,
    /// The fewest of them allowed ([`SegmentOptions::ids_in_place_least`]).
    least: u64,
}

/// Fewest blocks of its ids a log whose ids are still in the snapshot
/// reads there in place ([`in_place_budget`]). The budget reaches it at
/// 32,768 events and passes it after, so it matters only for snapshots
/// below the least a close writes ([`SNAPSHOT_MIN_EVENTS`]): tests', and
/// those of a lower `CASEBOOK_SNAPSHOT_MIN_EVENTS`.
const IN_PLACE_LEAST: u64 = 256;

/// How many times its blocks the look-ups in place may read the
/// snapshot's ids section, all together, before the next look-up reads
/// them whole ([`in_place_budget`]).
const IN_PLACE_READS: u64 = 2;

/// Most ids after the snapshot for which the writer looks a group's ids up
/// in place ([`Writer::looks_up_in_place`]): past a group's first
/// [`TAIL_SCANS`] look-ups it puts them in a map (about 40 bytes an id;
/// 1 << 20 of them, four times what the close's rule lets follow a
/// snapshot across commands: more only after a large import of minted ids
/// in the same open, whose ids are then read instead).
const IN_PLACE_TAIL_MOST: usize = 1 << 20;

/// Blocks of the ids section a log of `head` events whose ids are still
/// in the snapshot reads there in place, all look-ups together, before
/// the next look-up reads the ids whole ([`ids_ready`]): a look-up in
/// place of a batch of ids reads each block they fall in once (256 pairs,
/// 3 KB, checked against its CRC-32 and its fence), a reading of them all
/// reads every block once and also puts every id in a table (12 bytes an
/// event read, about 2 an event held; docs/performance.md, "Session bi",
/// has what each costs). At most [`IN_PLACE_READS`] times the section's
/// blocks, or `least` ([`IN_PLACE_LEAST`]) if more; none when `least` is
/// 0 (tests, and the bench's baseline: every look-up reads the ids first,
/// as before session bh).
fn in_place_budget(head: u64, least: u64) -> u64 {
    match least {
        0 => 0,
        _ => least.max(IN_PLACE_READS * head.div_ceil(sorted_ids::BLOCK_PAIRS as u64)),
    }
}

impl LaterIds {
    fn new(snapshot: snapshot::LaterIds, spots: Vec<(u64, Uuid)>, least: u64) -> LaterIds {
        LaterIds {
            least,
            snapshot,
            spots,
            tail: Vec::new(),
            in_place: std::sync::OnceLock::new(),
            in_place_failed: AtomicBool::new(false),
            looked_up: AtomicU64::new(0),
        }
    }

    /// The snapshot's ids to look up in place ([`SortedIds::in_place`]):
    /// made at the first call from the directory of their blocks, and
    /// checked then against the frames the open read (each listed under
    /// its own id's fingerprint at its position), as a reading of them
    /// all checks them ([`later_ids`]). `None` for a snapshot without the
    /// directory (format 5), one that fails a check, or after a look-up
    /// found a block changed.
    fn sorted(&self) -> Option<&SortedIds> {
        if self.in_place_failed.load(Ordering::Relaxed) {
            return None;
        }
        self.in_place
            .get_or_init(|| {
                let sorted = self.snapshot.in_place().ok()??;
                let hasher = self.snapshot.hasher();
                let mut at = Vec::new();
                for (p, id) in &self.spots {
                    at.clear();
                    let fp = std::hash::BuildHasher::hash_one(&hasher, id);
                    sorted.positions(fp, &mut at).ok()?;
                    if !at.iter().any(|&q| u64::from(q) == *p) {
                        return None;
                    }
                }
                Some(sorted)
            })
            .as_ref()
    }

    /// Whether any look-up in place is left in the budget of a log of
    /// `head` events ([`in_place_budget`]).
    fn budget_left(&self, head: u64) -> bool {
        self.looked_up.load(Ordering::Relaxed) < in_place_budget(head, self.least)
    }

    /// Whether `n` more blocks may be read in place in a log of `head`
    /// events ([`in_place_budget`]); if so they are counted.
    fn take_budget(&self, n: usize, head: u64) -> bool {
        let budget = in_place_budget(head, self.least);
        self.looked_up
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |done| {
                done.checked_add(n as u64).filter(|&now| now <= budget)
            })
            .is_ok()
    }

    /// The look-up in place of `ids` in `sorted` ([`LaterIds::sorted`]):
    /// their fingerprints, each with its id, in order, and the blocks of
    /// the section they fall in ([`SortedIds::blocks_of`]).
    fn in_file_plan(&self, sorted: &SortedIds, ids: &[Uuid]) -> InFile {
        let hasher = self.snapshot.hasher();
        let mut wanted: Vec<(u64, Uuid)> = ids
            .iter()
            .map(|id| (std::hash::BuildHasher::hash_one(&hasher, id), *id))
            .collect();
        wanted.sort_unstable();
        let blocks = sorted.blocks_of(wanted.iter().map(|&(fp, _)| fp));
        InFile { wanted, blocks }
    }

    /// Adds to `out` the positions that may hold each id of `plan` (its
    /// [`LaterIds::in_file_plan`]): those the snapshot lists under its
    /// fingerprint, looked up in place in `sorted` ([`LaterIds::sorted`]),
    /// each block once. A block found changed stops the look-ups in place
    /// for good.
    fn in_file(
        &self,
        sorted: &SortedIds,
        plan: &InFile,
        out: &mut Vec<(u32, Uuid)>,
    ) -> Result<(), String> {
        let mut at = Vec::new();
        if let Err(e) = sorted.positions_of(&plan.wanted, &plan.blocks, &mut at) {
            self.in_place_failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
        out.extend(at.into_iter().map(|(id, p)| (p, id)));
        Ok(())
    }

    /// The first position after the snapshot in a log of `head` events:
    /// the frames of `tail` hold the ids of the positions from it on.
    fn first_after(&self, head: u64) -> u64 {
        head - self.tail.len() as u64 + 1
    }

    /// Adds to `out` the positions after the snapshot, in a log of `head`
    /// events, whose frames hold one of `ids`, in one pass over them.
    fn in_tail(&self, head: u64, ids: &[Uuid], out: &mut Vec<(u32, Uuid)>) {
        let first = self.first_after(head);
        let wanted: std::collections::HashSet<&Uuid> = ids.iter().collect();
        for (p, id) in (first..).zip(&self.tail) {
            if wanted.contains(id) {
                out.push((p as u32, *id));
            }
        }
    }

    /// The ids after the snapshot, in a log of `head` events, and their
    /// positions: what the writer's look-ups in place of a group test
    /// ([`stored_in_place`]).
    fn tail_positions(&self, head: u64) -> HashMap<Uuid, u64, IdHash> {
        let first = self.first_after(head);
        let mut map = HashMap::with_capacity_and_hasher(self.tail.len(), IdHash::default());
        for (id, p) in self.tail.iter().zip(first..) {
            map.entry(*id).or_insert(p);
        }
        map
    }
}

/// A look-up in place of a batch of ids ([`LaterIds::in_file_plan`]).
struct InFile {
    /// Each id with its fingerprint, in order.
    wanted: Vec<(u64, Uuid)>,
    /// The blocks they fall in, each once, in order.
    blocks: Vec<usize>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            locs: Locations::default(),
            streams: Streams::default(),
            ids: Ids::default(),
            shared: Vec::new(),
            later: None,
            head_hash: Hash::default(),
            max_events: MAX_POSITIONS,
        }
    }
}

/// Hashing for the index's 16-byte keys (event ids, stream ids): a folded
/// 128-bit multiply per 8 bytes with per-process random keys (seeded from
/// std's `RandomState`), in place of SipHash, which cost about a tenth of
/// the import's CPU. The keys keep an input that a user chose (ids in an
/// import file) from being steered into one bucket. Also the school-wide
/// views' tables of pupils (`casebook_projections::pupil_map`).
#[derive(Clone)]
pub struct IdHash {
    seed: u64,
    /// Tests: every key hashes alike, so that every event id shares one
    /// fingerprint (the paths that tell such ids apart, which real ids
    /// reach with a probability of 2^-64).
    #[cfg(test)]
    collide: bool,
}

impl Default for IdHash {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x6361_7365_626f_6f6b);
            h.finish() | 1
        });
        IdHash::with_seed(seed)
    }
}

impl IdHash {
    /// Hashing with a given seed (an index snapshot's, so that its ids
    /// read back into the buckets they were written from).
    pub(crate) fn with_seed(seed: u64) -> IdHash {
        IdHash {
            seed: seed | 1,
            #[cfg(test)]
            collide: false,
        }
    }

    /// Tests: hashing under which every key has one hash.
    #[cfg(test)]
    pub(crate) fn colliding() -> IdHash {
        IdHash {
            collide: true,
            ..IdHash::with_seed(1)
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            state: self.seed,
            #[cfg(test)]
            collide: self.collide,
        }
    }
}

/// See [`IdHash`].
pub struct IdHasher {
    state: u64,
    #[cfg(test)]
    collide: bool,
}

impl IdHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let m = u128::from(self.state ^ word) * u128::from(K);
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0x5eed;
        }
        // One more round so the last word's high bits reach the low bits
        // hashbrown uses for the bucket.
        let m = u128::from(self.state) * u128::from(0xa076_1d64_78bd_642fu64);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

impl Index {
    fn head(&self) -> u64 {
        self.locs.len() as u64
    }

    fn stream_version(&self, stream: &StreamId) -> u64 {
        self.streams.version(stream)
    }

    /// Adds the next frame; `Err` says which invariant it breaks. One
    /// probe of the id map and one of the stream map per frame (the writer
    /// pushes every event it commits under the index's write lock).
    fn push(&mut self, meta: &FrameMeta, loc: Loc, hash: Hash) -> Result<(), String> {
        let expected = self.head() + 1;
        if meta.position != expected {
            return Err(format!(
                "frame says position {} where position {expected} is next (events missing or reordered)",
                meta.position
            ));
        }
        let position = match u32::try_from(meta.position) {
            Ok(p) if meta.position <= self.max_events => p,
            _ => {
                return Err(format!(
                    "position {} is past the most events a log can hold ({})",
                    meta.position, self.max_events
                ))
            }
        };
        let slot = self.streams.slot(meta.stream);
        let have = slot.version();
        if meta.version != have + 1 {
            return Err(format!(
                "stream {} version {} follows version {have} (versions must be gapless)",
                meta.stream, meta.version
            ));
        }
        let step = self.locs.check(loc)?;
        match &mut self.later {
            Some(later) => later.tail.push(meta.event_id),
            None => {
                if let Some(earlier) = self.ids.push(meta.event_id, position) {
                    self.shared.push((earlier, position));
                }
            }
        }
        slot.push(position);
        self.locs.push(loc, step);
        self.head_hash = hash;
        Ok(())
    }
}

/// One segment file.
struct Segment {
    path: PathBuf,
    file: File,
}

/// The state for a reader: refused once the writer has stopped with the
/// index holding what is not durable ([`State::unsynced`]), or with the
/// lock poisoned.
fn read_state(state: &RwLock<State>) -> Result<RwLockReadGuard<'_, State>, StoreError> {
    match state.read() {
        Ok(state) if !state.unsynced => Ok(state),
        _ => Err(StoreError::WriterStopped),
    }
}

/// What readers share with the writer.
struct State {
    index: Index,
    segments: Vec<Arc<Segment>>,
    /// The snapshot's frame lengths while the index keeps only where each
    /// group starts ([`locations_ready`]).
    later_locs: Option<snapshot::LaterLocs>,
    /// Why the snapshot's event ids were not used when they were read
    /// ([`ids_ready`]), or its frame lengths when a sparse index read them
    /// ([`locations_ready`]), until handed out.
    ids_note: Option<String>,
    /// The snapshot's ids or frame lengths were not used: the close
    /// replaces it even if few events were appended.
    snapshot_stale: bool,
    /// A reading of the snapshot's ids failed ([`ids_ready`]: they could
    /// not be read or indexed from the segments, or the log holds an id
    /// twice): the close does not copy them into a new snapshot, it reads
    /// them again first (and writes none if that fails).
    ids_refused: bool,
    /// A group's fdatasync failed after the writer had put the group in
    /// the index ([`LARGE_GROUP_EVENTS`]): the index holds events that are
    /// not durable, and every read is refused until the store is reopened
    /// ([`read_state`]).
    unsynced: bool,
    /// Drawn at the open: names this log in what a look-up of its ids saw
    /// ([`Seen`]), so that it is never taken for another log's.
    token: Uuid,
}

impl State {
    /// Adds where position `p` lies to `wanted`, for [`read_runs`].
    /// Callers ask only for positions the index holds (1..=head): an
    /// error here is a bug, not damage.
    fn want(&self, wanted: &mut Wanted, p: u64) -> Result<(), StoreError> {
        let found = locate(&self.index, &self.segments, p)?;
        debug_assert!(found.is_some(), "position {p} is not indexed");
        let (loc, seg) =
            found.ok_or_else(|| StoreError::Internal(format!("position {p} is not indexed")))?;
        wanted.push(p, loc, seg);
        Ok(())
    }

    /// Where each of `positions` lies, in their order ([`State::want`]).
    fn wanted(&self, positions: impl Iterator<Item = u64>) -> Result<Wanted, StoreError> {
        let mut wanted = Wanted::with_capacity(positions.size_hint().0);
        for p in positions {
            self.want(&mut wanted, p)?;
        }
        Ok(wanted)
    }

    /// Where the positions of `pieces` ([`State::in_groups`]) lie, in a
    /// sparse index: each group read and walked once for the positions in
    /// it (a pupil's events an import or the demo wrote together). The
    /// pieces may be taken under an earlier lock: a group's start never
    /// moves, and its end only grows.
    fn wanted_list(&self, pieces: Vec<(Option<Span>, &[u32])>) -> Result<Wanted, StoreError> {
        let mut wanted = Wanted::with_capacity(pieces.iter().map(|(_, p)| p.len()).sum());
        let mut buf = Vec::new();
        for (span, these) in pieces {
            let unheld = || StoreError::Internal(format!("position {} is not indexed", these[0]));
            let (span, seg) = span
                .and_then(|span| Some((span, self.segments.get(span.seg as usize)?)))
                .ok_or_else(unheld)?;
            let mut i = 0;
            walk_span(seg, span, &mut buf, |q, loc, _| {
                if these.get(i).is_some_and(|&p| u64::from(p) == q) {
                    wanted.push(q, loc, seg);
                    i += 1;
                }
                Ok(these.get(i).is_some_and(|&next| u64::from(next) > q))
            })?;
            if let Some(p) = these.get(i) {
                return Err(StoreError::Internal(format!("position {p} is not indexed")));
            }
        }
        Ok(wanted)
    }

    /// `positions` cut where the group that holds them changes (or where
    /// they stop ascending), each piece with the span of its group
    /// ([`Locations::spans`]); `None` for a position the index does not
    /// hold.
    fn in_groups<'p>(&self, positions: &'p [u32]) -> Vec<(Option<Span>, &'p [u32])> {
        let span_of = |p: u32| {
            let p = u64::from(p);
            self.index.locs.spans(p, p).into_iter().next()
        };
        let mut out = Vec::new();
        let mut rest = positions;
        while let Some(&p) = rest.first() {
            let span = span_of(p);
            let mut n = 1;
            while span.is_some()
                && rest
                    .get(n)
                    .is_some_and(|&q| q > rest[n - 1] && span_of(q) == span)
            {
                n += 1;
            }
            let (these, after) = rest.split_at(n);
            out.push((span, these));
            rest = after;
        }
        out
    }

    /// The spans that hold positions `from..=last` ([`Locations::spans`]),
    /// each with its segment.
    fn spans(&self, from: u64, last: u64) -> Result<Vec<(Span, Arc<Segment>)>, StoreError> {
        self.index
            .locs
            .spans(from, last)
            .into_iter()
            .map(|span| {
                let seg = self.segments.get(span.seg as usize).ok_or_else(|| {
                    StoreError::Internal(format!("segment {} is not held", span.seg))
                })?;
                Ok((span, seg.clone()))
            })
            .collect()
    }
}

/// The events at positions `from..=last`, read from `spans` (which hold
/// them: [`Locations::spans`]) and walked from each span's start: how
/// `read_all` reads a sparse index. Each frame read is checked to be the
/// position its place says.
fn read_spans(
    spans: Vec<(Span, Arc<Segment>)>,
    from: u64,
    last: u64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::with_capacity(usize::try_from(last + 1 - from).unwrap_or(0));
    let mut buf = Vec::new();
    for (span, seg) in spans {
        walk_span(&seg, span, &mut buf, |q, loc, bytes| {
            // The walk stops at `last`.
            if q >= from {
                out.push(decode_at(&seg, loc.offset, bytes, q)?.0);
            }
            Ok(q < last)
        })?;
    }
    if out.len() as u64 != last + 1 - from {
        return Err(StoreError::Internal(format!(
            "{} events found of positions {from}..={last}",
            out.len()
        )));
    }
    Ok(out)
}

/// Where position `p`'s frame is, and its segment (`None` for a position
/// the index does not hold).
fn locate<'a>(
    index: &Index,
    segments: &'a [Arc<Segment>],
    p: u64,
) -> Result<Option<(Loc, &'a Arc<Segment>)>, StoreError> {
    let loc = frame_loc(&index.locs, p, |n| segments.get(n as usize).map(|s| &**s))?;
    Ok(loc.and_then(|loc| Some((loc, segments.get(loc.seg as usize)?))))
}

/// Where position `p`'s frame is: from the locations, or, in a sparse
/// index ([`Locations::sparse`]), found by reading the frames of its group
/// from the group's start in `segment(n)`.
fn frame_loc<'a>(
    locs: &Locations,
    p: u64,
    segment: impl Fn(u32) -> Option<&'a Segment>,
) -> Result<Option<Loc>, StoreError> {
    if !locs.is_sparse() {
        return Ok(locs.at(p));
    }
    let Some(span) = locs.spans(p, p).into_iter().next() else {
        return Ok(None);
    };
    let Some(seg) = segment(span.seg) else {
        return Ok(None);
    };
    let mut found = None;
    walk_span(seg, span, &mut Vec::new(), |q, loc, _| {
        if q == p {
            found = Some(loc);
        }
        Ok(q < p)
    })?;
    Ok(found)
}

/// Reads the frames of `span` from `seg` into `buf` (grown, never
/// shrunk) and hands each to `each`, in order: its position, where it is
/// and its bytes, until `each` answers `false`. The frames are walked by
/// their lengths from the span's start: a length that cannot be a frame's,
/// or that runs past the span, is an index that disagrees with the log.
fn walk_span(
    seg: &Segment,
    span: Span,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(u64, Loc, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let len = usize::try_from(span.end.saturating_sub(span.start))
        .map_err(|_| StoreError::Internal("a span past the address space".into()))?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let bytes = &mut buf[..len];
    seg.file
        .read_exact_at(bytes, span.start)
        .map_err(io("read"))?;
    let (mut at, mut q) = (0usize, span.first);
    while at < len {
        let total = frame::frame_len(&bytes[at..])
            .map(|n| n as usize + frame::PREFIX_LEN)
            .filter(|t| frame::FRAME_LENS.contains(t) && at + t <= len)
            .ok_or_else(|| {
                corrupt(
                    &seg.path,
                    Some(span.start + at as u64),
                    format!("no frame of position {q} where the index places one; run `casebook verify`, and remove the log's `index` file to rebuild the index from the segments"),
                )
            })?;
        let loc = Loc {
            offset: span.start + at as u64,
            len: total as u32,
            seg: span.seg,
        };
        if !each(q, loc, &bytes[at..at + total])? {
            break;
        }
        at += total;
        q += 1;
    }
    Ok(())
}

/// Makes the index hold every position's location again after an open
/// that kept only where each group starts ([`SegmentOptions::locations_at_open`]):
/// the snapshot's from its file, each checked against the groups kept, and
/// those of the frames indexed after it walked from their groups' starts.
/// Should the snapshot's no longer be readable or match, every frame's is
/// walked. Done under the write lock, once in a process: past the walks
/// allowed ([`SPARSE_WALKS`] groups or more) for streams read and for the
/// candidates of look-ups by id, at `verify`, or before the close writes
/// a snapshot when the old one's lengths cannot be copied (since session
/// bh they are: [`Writer::lens_after`]). (Until session an also at the
/// first look-up by id, and at the writer's first group that is not of
/// minted ids: those now walk their candidates' groups.)
fn locations_ready(state: &RwLock<State>) -> Result<(), StoreError> {
    if !read_state(state)?.index.locs.is_sparse() {
        return Ok(());
    }
    let mut guard = state.write().map_err(|_| StoreError::WriterStopped)?;
    let state = &mut *guard;
    if state.unsynced {
        return Err(StoreError::WriterStopped);
    }
    let sparse = &state.index.locs;
    if !sparse.is_sparse() {
        return Ok(());
    }
    let from_file = state.later_locs.as_ref().map(|later| later.read());
    let full = match from_file {
        Some(Ok(mut full)) => match walk_into(&mut full, sparse, &state.segments) {
            Ok(()) if full.same_groups(sparse) => Ok(full),
            Ok(()) => Err("its frame lengths are not those of its group table".to_string()),
            Err(e) => Err(format!("the frames after it could not be added: {e}")),
        },
        Some(Err(why)) => Err(why),
        None => Ok(walk_all(sparse, &state.segments)?),
    };
    // The snapshot's lengths not usable (an open that keeps only the
    // groups' starts does not read them, format 5): every frame is walked
    // instead, said once, and the close writes a new snapshot.
    state.index.locs = match full {
        Ok(full) => full,
        Err(why) => {
            let full = walk_all(&state.index.locs, &state.segments)?;
            state.ids_note = Some(format!(
                "the frame lengths could not be used ({why}); every frame was walked instead"
            ));
            state.snapshot_stale = true;
            full
        }
    };
    state.later_locs = None;
    Ok(())
}

/// Every location of `sparse`, each frame walked from its group's start.
fn walk_all(sparse: &Locations, segments: &[Arc<Segment>]) -> Result<Locations, StoreError> {
    let mut full = Locations::default();
    walk_into(&mut full, sparse, segments)?;
    if !full.same_groups(sparse) {
        return Err(StoreError::Internal(
            "the locations walked do not match the index's groups".into(),
        ));
    }
    Ok(full)
}

/// Adds to `full` the locations of the positions `sparse` holds after it,
/// walked from their groups' starts ([`walk_locs`]).
fn walk_into(
    full: &mut Locations,
    sparse: &Locations,
    segments: &[Arc<Segment>],
) -> Result<(), StoreError> {
    let from = full.len() as u64 + 1;
    walk_locs(sparse, segments, from, |_, loc, seg| {
        full.push_checked(loc)
            .map_err(|e| corrupt(&seg.path, Some(loc.offset), e))
    })
}

/// Hands `each` the location of every position `sparse` holds from
/// `from` on, in order, each frame walked from its group's start,
/// [`WALK_POSITIONS`] at a time.
fn walk_locs(
    sparse: &Locations,
    segments: &[Arc<Segment>],
    from: u64,
    mut each: impl FnMut(u64, Loc, &Segment) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let last = sparse.len() as u64;
    let mut buf = Vec::new();
    let mut next = from;
    while next <= last {
        let to = last.min(next + WALK_POSITIONS - 1);
        for span in sparse.spans(next, to) {
            let seg = segments
                .get(span.seg as usize)
                .ok_or_else(|| StoreError::Internal(format!("segment {} is not held", span.seg)))?;
            walk_span(seg, span, &mut buf, |q, loc, _| {
                // A span starts at its group's start: only the next
                // position is handed on.
                if q == next {
                    each(q, loc, seg)?;
                    next += 1;
                }
                Ok(q < to)
            })?;
        }
        if next != to + 1 {
            return Err(StoreError::Internal(format!(
                "{} locations walked of {to}",
                next - 1
            )));
        }
    }
    Ok(())
}

/// Positions [`walk_into`] reads at once (16 groups: a few hundred KB of
/// frames of a few hundred bytes).
const WALK_POSITIONS: u64 = 1_024;

/// The event at position `p` (which the index holds), read from its
/// frame, with where that frame is.
fn event_at<'a>(
    index: &Index,
    segments: &'a [Arc<Segment>],
    p: u64,
) -> Result<(StoredEvent, Loc, &'a Segment), StoreError> {
    let (loc, seg) = locate(index, segments, p)?
        .ok_or_else(|| StoreError::Internal(format!("position {p} is not indexed")))?;
    Ok((read_event(seg, loc, p)?, loc, seg))
}

/// The position of the stored event with id `id`: one of the index's
/// candidates for it ([`IdMap::candidates`]), each read to compare the id
/// itself (almost always there is none, or one that holds it).
fn stored_at(
    index: &Index,
    segments: &[Arc<Segment>],
    id: &Uuid,
) -> Result<Option<u64>, StoreError> {
    let candidates = index.ids.candidates(id).map_err(unreadable_ids)?;
    let listed = |held: &Uuid, p: u32| index.ids.holds(held, u64::from(p)).map_err(unreadable_ids);
    first_holding(index, segments, candidates, id, listed)
}

/// The position of the stored event with id `id` in a log whose ids are
/// still in the snapshot ([`Index::later`]): looked up there in place
/// ([`SortedIds::positions`]), each candidate's frame read to compare the id
/// itself (one that holds another id must hold one with the same
/// fingerprint), and among the ids after it, `tail`
/// ([`LaterIds::tail_positions`]). Whatever fails stops the look-ups in
/// place: the next group reads the ids ([`ids_ready`]), which finds what
/// is wrong.
fn stored_in_place(
    index: &Index,
    segments: &[Arc<Segment>],
    later: &LaterIds,
    tail: Tail<'_>,
    id: &Uuid,
) -> Result<Option<u64>, StoreError> {
    let Some(sorted) = later.in_place.get().and_then(Option::as_ref) else {
        return Err(StoreError::Internal(
            "the index's event ids are neither read nor looked up in place".into(),
        ));
    };
    let hasher = later.snapshot.hasher();
    let fp = hasher.hash_one(id);
    let looked_up = || -> Result<Option<u64>, StoreError> {
        // One id: the block or two its fingerprint can be in.
        let mut at = Vec::new();
        sorted.positions(fp, &mut at).map_err(unreadable_ids)?;
        let listed = |held: &Uuid, _| Ok(hasher.hash_one(held) == fp);
        match first_holding(index, segments, at, id, listed)? {
            Some(p) => Ok(Some(p)),
            None => Ok(match tail {
                Tail::Map(map) => map.get(id).copied(),
                Tail::Scan => {
                    let mut found = Vec::new();
                    later.in_tail(index.head(), std::slice::from_ref(id), &mut found);
                    found.first().map(|&(p, _)| u64::from(p))
                }
            }),
        }
    };
    looked_up().inspect_err(|_| later.in_place_failed.store(true, Ordering::Relaxed))
}

/// How [`stored_in_place`] looks among the ids after the snapshot.
enum Tail<'a> {
    /// One by one.
    Scan,
    /// In a map of them ([`LaterIds::tail_positions`]).
    Map(&'a HashMap<Uuid, u64, IdHash>),
}

/// The first of the positions `candidates` whose frame holds `id`; a
/// candidate whose frame holds another id must be `listed` there (its
/// id's fingerprint the one the index lists it under), or the index is
/// corrupt.
fn first_holding(
    index: &Index,
    segments: &[Arc<Segment>],
    candidates: impl IntoIterator<Item = u32>,
    id: &Uuid,
    listed: impl Fn(&Uuid, u32) -> Result<bool, StoreError>,
) -> Result<Option<u64>, StoreError> {
    for p in candidates {
        let (event, loc, seg) = event_at(index, segments, u64::from(p))?;
        if event.event_id == *id {
            return Ok(Some(u64::from(p)));
        }
        if !listed(&event.event_id, p)? {
            return Err(corrupt(
                &seg.path,
                Some(loc.offset),
                format!("the index's event id entry for position {p} does not match the frame there; run `casebook verify`, and remove the log's `index` file to rebuild the index from the segments"),
            ));
        }
    }
    Ok(None)
}

/// An error reading the index's event ids from a file of them (the
/// snapshot's, or a spilled run).
fn unreadable_ids(e: String) -> StoreError {
    StoreError::Internal(format!("the index's event ids: {e}"))
}

/// Of pairs of positions whose ids share a fingerprint ([`Index::shared`]),
/// the first whose two frames hold one id, and that id; each frame's id
/// read with `id_at`. `None` when every pair holds two ids.
fn repeated_id<E>(
    pairs: Vec<(u32, u32)>,
    mut id_at: impl FnMut(u64) -> Result<Uuid, E>,
) -> Result<Option<(u32, u32, Uuid)>, E> {
    for (a, b) in pairs {
        let id = id_at(u64::from(a))?;
        if id_at(u64::from(b))? == id {
            return Ok(Some((a, b, id)));
        }
    }
    Ok(None)
}

/// Reads both frames of each pair of positions the index found sharing an
/// id fingerprint ([`Index::shared`]): the same id at two positions is a
/// corrupt log; two ids are fine.
fn check_shared(index: &mut Index, segments: &[Arc<Segment>]) -> Result<(), StoreError> {
    let pairs = std::mem::take(&mut index.shared);
    let index = &*index;
    let Some((a, b, id)) = repeated_id(pairs, |p| {
        event_at(index, segments, p).map(|(event, ..)| event.event_id)
    })?
    else {
        return Ok(());
    };
    let (loc, seg) = locate(index, segments, u64::from(b))?
        .ok_or_else(|| StoreError::Internal(format!("position {b} is not indexed")))?;
    Err(corrupt(
        &seg.path,
        Some(loc.offset),
        format!("event id {id} is already stored at position {a}"),
    ))
}

/// Reads the frames of each group of positions whose ids share a
/// fingerprint ([`Ids::sharing_groups`]), each once: one id at two
/// positions of a group is a corrupt log, named at the later one.
fn check_groups(
    index: &Index,
    segments: &[Arc<Segment>],
    groups: Vec<Vec<u32>>,
) -> Result<(), StoreError> {
    for group in groups {
        let mut seen: HashMap<Uuid, u32> = HashMap::with_capacity(group.len());
        for p in group {
            let (event, loc, seg) = event_at(index, segments, u64::from(p))?;
            if let Some(first) = seen.insert(event.event_id, p) {
                return Err(corrupt(
                    &seg.path,
                    Some(loc.offset),
                    format!(
                        "event id {} is already stored at position {first}",
                        event.event_id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Reads the frame at `loc` and decodes it as position `position`; a frame
/// of another length than `loc` says is an index that disagrees with the log.
fn read_event(seg: &Segment, loc: Loc, position: u64) -> Result<StoredEvent, StoreError> {
    let mut buf = vec![0u8; loc.len as usize];
    seg.file
        .read_exact_at(&mut buf, loc.offset)
        .map_err(io("read"))?;
    let (event, len) = decode_at(seg, loc.offset, &buf, position)?;
    if len != buf.len() {
        return Err(corrupt(
            &seg.path,
            Some(loc.offset),
            format!(
                "the frame of position {position} is {len} bytes where the index says {}",
                buf.len()
            ),
        ));
    }
    Ok(event)
}

/// Reads position `p` of a log being opened.
fn read_at(rec: &Recovered, dir: &Path, p: u64) -> Result<StoredEvent, StoreError> {
    match locate(&rec.index, &rec.segments, p)? {
        Some((loc, seg)) => read_event(seg, loc, p),
        None => Err(corrupt(
            dir,
            None,
            format!("the index holds no frame for position {p}"),
        )),
    }
}

/// Decodes the frame at the start of `bytes` (from `offset` of `seg`) as
/// position `position`; returns the event and the frame length.
fn decode_at(
    seg: &Segment,
    offset: u64,
    bytes: &[u8],
    position: u64,
) -> Result<(StoredEvent, usize), StoreError> {
    let (meta, value, len) =
        decode_frame(bytes).map_err(|e| corrupt(&seg.path, Some(offset), e.to_string()))?;
    if meta.position != position {
        return Err(corrupt(
            &seg.path,
            Some(offset),
            format!(
                "frame says position {} where the index has position {position}",
                meta.position
            ),
        ));
    }
    let event = super::sled::decode_event_at(position, value)
        .map_err(|e| corrupt(&seg.path, Some(offset), e.to_string()))?;
    Ok((event, len))
}

// ---- the watermark --------------------------------------------------------

/// position (u64 LE) || hash (32) || CRC-32 of those 40 bytes (u32 LE).
const WATERMARK_LEN: usize = 44;

fn encode_watermark(position: u64, hash: &Hash) -> [u8; WATERMARK_LEN] {
    let mut v = [0u8; WATERMARK_LEN];
    v[..8].copy_from_slice(&position.to_le_bytes());
    v[8..40].copy_from_slice(hash);
    let crc = crc32fast::hash(&v[..40]);
    v[40..].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Decodes a watermark file's bytes (`None` for an empty file). Public for
/// the decoder fuzz tests.
pub fn decode_watermark(bytes: &[u8]) -> Result<Option<(u64, Hash)>, crate::error::CodecError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = |what: &str| crate::error::CodecError::Field {
        field: "watermark",
        what: what.to_string(),
    };
    if bytes.len() != WATERMARK_LEN {
        return Err(bad("wrong length"));
    }
    let mut p = [0u8; 8];
    p.copy_from_slice(&bytes[..8]);
    let position = u64::from_le_bytes(p);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..40]);
    if encode_watermark(position, &hash) != bytes {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some((position, hash)))
}

// ---- opening a log: recovery ---------------------------------------------

/// The segment files of a log directory, by first position.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("open log"))? {
        let entry = entry.map_err(io("open log"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return Err(corrupt(
                &entry.path(),
                None,
                "segment file name is not a 20-digit position",
            ));
        }
        let first: u64 = stem
            .parse()
            .map_err(|_| corrupt(&entry.path(), None, "segment file name out of range"))?;
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn segment_name(first_position: u64) -> String {
    format!("{first_position:020}{SEGMENT_SUFFIX}")
}

/// Cuts `file` to `len` bytes and makes the new size durable.
fn cut_to(file: &File, len: u64, during: &'static str) -> Result<(), StoreError> {
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(io(during))
}

/// Creates a new, empty segment and makes its existence durable.
fn create_segment(dir: &Path, first_position: u64) -> Result<Segment, StoreError> {
    let path = dir.join(segment_name(first_position));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("create segment"))?;
    file.sync_all().map_err(io("create segment"))?;
    sync_dir(dir)?;
    Ok(Segment { path, file })
}

/// A log rebuilt from its segments.
struct Recovered {
    index: Index,
    segments: Vec<Arc<Segment>>,
    /// Where the last segment's acknowledged data ends.
    end: u64,
    /// Bytes after `end` to cut (an unacknowledged torn group, or zeros
    /// the writer preallocated).
    torn: u64,
    /// Whether those bytes are all zeros (preallocated space the last
    /// group did not reach, or a torn group whose pages never reached the
    /// disk): nothing was being written there.
    torn_zero: bool,
    /// The head of the index snapshot the index started from (`None`:
    /// rebuilt from every segment).
    snapshot_head: Option<u64>,
    /// Why the log's index snapshot was not used, when it had one.
    snapshot_rejected: Option<String>,
    /// The snapshot's frame lengths, when the index keeps only where each
    /// group starts ([`SegmentOptions::locations_at_open`]).
    later_locs: Option<snapshot::LaterLocs>,
}

/// Whether every byte of `seg` from `from` to `file_len` is zero.
fn zero_from(seg: &Segment, from: u64, file_len: u64) -> Result<bool, StoreError> {
    let mut buf = vec![0u8; 1024 * 1024];
    let mut o = from;
    while o < file_len {
        let n = ((file_len - o) as usize).min(buf.len());
        seg.file
            .read_exact_at(&mut buf[..n], o)
            .map_err(io("open log"))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        o += n as u64;
    }
    Ok(true)
}

/// Frames a scan indexes before it sizes the id table for the rest of the
/// log from their bytes per frame.
const SIZING_SAMPLE: u64 = 65_536;

/// Scans one segment from byte `from` (the start of a group), pushing
/// every frame of a complete group into `index`. Returns the offset after the last complete group and, if the
/// scan stopped at damage, its offset and description. `rest` is the bytes
/// from `from` to the end of the last segment: after [`SIZING_SAMPLE`]
/// frames the id table is given room for as many more frames as `rest`
/// holds at the bytes per frame seen (at most `spill_ids`), so that it
/// does not grow during the scan (a growth rehashes every id, each read
/// at random). Once the table holds `spills.ids` ids they are spilled to
/// a run in a file of their own, as the writer spills them
/// ([`Ids::spill_in_place`]; best effort: after a spill that failed, not
/// before the table holds twice as many, as the writer does), and the
/// stream lists likewise once `spills.streams` positions are held in
/// memory ([`Streams::spill_due`]), so that a scan of a long log holds no
/// more of either than an open log does.
fn scan_segment(
    seg: &Segment,
    seg_no: u32,
    index: &mut Index,
    from: u64,
    rest: u64,
    spills: &mut Spills,
) -> Result<(u64, Option<(u64, String)>), StoreError> {
    let first = index.head();
    let mut sized = false;
    let file_len = seg.file.metadata().map_err(io("open log"))?.len();
    let mut reader = SeqReader::new(&seg.file, file_len);
    let mut offset = from;
    let mut group_end = from;
    let mut pending: Vec<(FrameMeta, Loc, Hash)> = Vec::new();
    // Frames of the group being read that are counted, not kept: a group
    // of more than `PENDING_MOST` frames (an import's) is read to its end
    // first, then again from its start into the index.
    let mut counted = 0u64;
    while offset < file_len {
        let bytes = reader
            .at(offset, frame::PREFIX_LEN + frame::MAX_FRAME)
            .map_err(io("open log"))?;
        let (meta, value, len) = match decode_frame(bytes) {
            Ok(f) => f,
            Err(e) => return Ok((group_end, Some((offset, e.to_string())))),
        };
        let hash = split_value(value)
            .map(|(_, h)| h)
            .map_err(|e| corrupt(&seg.path, Some(offset), e.to_string()))?;
        let expected = index.head() + pending.len() as u64 + counted + 1;
        if meta.position != expected {
            return Err(corrupt(
                &seg.path,
                Some(offset),
                format!(
                    "frame says position {} where position {expected} is next (events missing or reordered)",
                    meta.position
                ),
            ));
        }
        if counted > 0 || pending.len() >= spills.pending {
            counted += pending.len() as u64 + 1;
            pending = Vec::new();
        } else {
            pending.push((
                meta,
                Loc {
                    offset,
                    len: len as u32,
                    seg: seg_no,
                },
                hash,
            ));
        }
        offset += len as u64;
        if meta.group_end {
            if counted > 0 {
                push_group(&mut reader, seg, seg_no, index, group_end, offset)?;
                counted = 0;
            }
            for (m, loc, h) in pending.drain(..) {
                index
                    .push(&m, loc, h)
                    .map_err(|what| corrupt(&seg.path, Some(loc.offset), what))?;
            }
            group_end = offset;
            let frames = index.head() - first;
            if !sized && frames >= SIZING_SAMPLE {
                sized = true;
                let per_frame = ((group_end - from) / frames).max(1);
                let more = (rest.saturating_sub(group_end - from) / per_frame)
                    .min(index.max_events.saturating_sub(index.head()));
                let room = spills.ids.saturating_sub(index.ids.table_len());
                index.ids.reserve(((more + more / 16) as usize).min(room));
            }
            if index.later.is_none() && index.ids.table_len() >= spills.ids {
                let spilled = seg.path.parent().map(|dir| index.ids.spill_in_place(dir));
                if !matches!(spilled, Some(Ok(()))) {
                    spills.ids = spills.ids.saturating_mul(2);
                }
            }
            if index.streams.spill_due(spills.streams) {
                let streams = &index.streams;
                let spilled = seg
                    .path
                    .parent()
                    .map(|dir| streams.spill(dir, index.head()));
                match spilled {
                    Some(Ok(spilled)) => {
                        // Nothing is indexed between the spill and this.
                        let replaced = index.streams.install(spilled);
                        debug_assert!(replaced.is_some(), "the lists changed under a spill");
                        if replaced.is_none() {
                            spills.streams = index.streams.tails().saturating_mul(2);
                        }
                    }
                    _ => spills.streams = streams.tails().saturating_mul(2),
                }
            }
        }
    }
    Ok((group_end, None))
}

/// Frames of one commit group an open's scan keeps until it reaches the
/// group's end (each ~100 bytes: its metadata, place and hash). A larger
/// group is read to its end first, counting its frames, and then again
/// from its start into the index ([`push_group`]): an open after an import
/// of 1.2M lines into a 9.9M-event log peaked at 248 MB (that group's
/// frames, about 125 MB in a `Vec` that doubled as it grew), now at 60 MB
/// (docs/performance.md, "Session bf").
const PENDING_MOST: usize = 1 << 16;

/// Indexes the frames of the whole group from `start` to `end` of `seg`,
/// read to its end before ([`scan_segment`]): each is read again, and one
/// that no longer decodes, or that does not end where the group did, is
/// a log changed while it was opened, reported as corrupt.
fn push_group(
    reader: &mut SeqReader<'_>,
    seg: &Segment,
    seg_no: u32,
    index: &mut Index,
    start: u64,
    end: u64,
) -> Result<(), StoreError> {
    let mut offset = start;
    while offset < end {
        let bytes = reader
            .at(offset, frame::PREFIX_LEN + frame::MAX_FRAME)
            .map_err(io("open log"))?;
        let changed = |what: String| {
            corrupt(
                &seg.path,
                Some(offset),
                format!("{what} (the group changed while the log was opened)"),
            )
        };
        let (meta, value, len) = decode_frame(bytes).map_err(|e| changed(e.to_string()))?;
        let (_, hash) = split_value(value).map_err(|e| changed(e.to_string()))?;
        if meta.group_end != (offset + len as u64 == end) {
            return Err(changed("the group's end moved".into()));
        }
        let loc = Loc {
            offset,
            len: len as u32,
            seg: seg_no,
        };
        index
            .push(&meta, loc, hash)
            .map_err(|what| corrupt(&seg.path, Some(offset), what))?;
        offset += len as u64;
    }
    Ok(())
}

/// Whether a valid frame of a position from `first` on starts anywhere in
/// `seg` after `bad` (then the damage is not a torn tail).
fn valid_frame_after(seg: &Segment, bad: u64, first: u64) -> Result<bool, StoreError> {
    let file_len = seg.file.metadata().map_err(io("open log"))?.len();
    let most = first + file_len / frame::FRAME_OVERHEAD as u64 + 1;
    let mut reader = SeqReader::new(&seg.file, file_len);
    let mut o = bad + 1;
    while o + (frame::PREFIX_LEN + frame::MIN_LEN) as u64 <= file_len {
        let bytes = reader
            .at(o, frame::PREFIX_LEN + frame::MAX_FRAME)
            .map_err(io("open log"))?;
        if frame::plausible_frame(bytes, first..most) {
            return Ok(true);
        }
        o += 1;
    }
    Ok(false)
}

fn recover(
    dir: &Path,
    read_snapshot: bool,
    open: snapshot::OpenWith,
    spills: Spills,
) -> Result<Recovered, StoreError> {
    recover_at_most(dir, MAX_POSITIONS, read_snapshot, open, spills)
}

/// [`recover`] into an index that holds at most `max_events` (a log with
/// more is reported corrupt, not cut).
///
/// When the log's index snapshot (`snapshot.rs`) is whole and matches the
/// segment files (the segments it covers hold exactly its lengths, the
/// last at least, and the frame at its head carries its head hash), the
/// index starts from it and only the frames after it are scanned;
/// otherwise every segment is scanned from its first byte.
fn recover_at_most(
    dir: &Path,
    max_events: u64,
    read_snapshot: bool,
    open: snapshot::OpenWith,
    mut spills: Spills,
) -> Result<Recovered, StoreError> {
    let ids_now = open.ids_now;
    let names = list_segments(dir)?;
    if names.is_empty() {
        let index = Index {
            head_hash: GENESIS_HASH,
            max_events,
            ..Index::default()
        };
        return Ok(Recovered {
            index,
            segments: vec![Arc::new(create_segment(dir, 1)?)],
            end: 0,
            torn: 0,
            torn_zero: true,
            snapshot_head: None,
            snapshot_rejected: None,
            later_locs: None,
        });
    }
    let mut opened = Vec::with_capacity(names.len());
    for (first, path) in names {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open segment"))?;
        let len = file.metadata().map_err(io("open log"))?.len();
        opened.push((first, Segment { path, file }, len));
    }
    let (snapshot, snapshot_rejected) = if read_snapshot {
        match usable_snapshot(dir, &opened, max_events, open) {
            Ok(s) => (s, None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let snapshot_head = snapshot.as_ref().map(|(index, ..)| index.head());
    // The snapshot's last segment is scanned from where it ended; the
    // segments before it not at all.
    let (mut index, resume, later_locs) = match snapshot {
        Some((index, covers, later_locs)) => {
            let last = covers.len() - 1;
            (index, Some((last, covers[last].len)), later_locs)
        }
        None => (
            Index {
                head_hash: GENESIS_HASH,
                max_events,
                ..Index::default()
            },
            None,
            None,
        ),
    };
    let count = opened.len();
    let file_lens: Vec<u64> = opened.iter().map(|(_, _, len)| *len).collect();
    let mut segments = Vec::with_capacity(count);
    let mut end = 0;
    let mut torn = 0;
    let mut torn_zero = true;
    for (i, (first, seg, file_len)) in opened.into_iter().enumerate() {
        let last = i + 1 == count;
        let from = match resume {
            Some((r, _)) if i < r => {
                segments.push(Arc::new(seg));
                continue;
            }
            Some((r, len)) if i == r => len,
            _ => {
                let next = index.head() + 1;
                if first != next {
                    return Err(corrupt(
                        &seg.path,
                        None,
                        format!(
                            "segment starts at position {first} but the log before it ends at position {}",
                            next - 1
                        ),
                    ));
                }
                0
            }
        };
        let rest = file_lens[i..].iter().sum::<u64>().saturating_sub(from);
        let (group_end, damage) =
            scan_segment(&seg, i as u32, &mut index, from, rest, &mut spills)?;
        if !last {
            if let Some((at, what)) = damage {
                return Err(corrupt(&seg.path, Some(at), format!("{what} (damage before the log's tail: acknowledged events are affected; restore from a backup)")));
            }
            if group_end != file_len || group_end == 0 {
                return Err(corrupt(
                    &seg.path,
                    Some(group_end),
                    "a segment that is not the last ends inside a commit group or is empty",
                ));
            }
        } else {
            if let Some((at, what)) = &damage {
                if !zero_from(&seg, *at, file_len)?
                    && valid_frame_after(&seg, *at, index.head() + 1)?
                {
                    return Err(corrupt(
                        &seg.path,
                        Some(*at),
                        format!("{what}, and valid frames follow it: acknowledged events are damaged; restore from a backup"),
                    ));
                }
            }
            end = group_end;
            torn = file_len - group_end;
            torn_zero = zero_from(&seg, group_end, file_len)?;
        }
        segments.push(Arc::new(seg));
    }
    if index.later.is_none() && !index.ids.runs().is_empty() {
        // Ids spilled during the scan: the positions that share a
        // fingerprint, found in one merged pass over the runs and the
        // table (each spill only sorted its own), each group's frames
        // read once. The table's pairs are among them.
        let groups = index
            .ids
            .sharing_groups()
            .map_err(|e| unreadable_ids(e.to_string()))?;
        index.shared.clear();
        check_groups(&index, &segments, groups)?;
    }
    check_shared(&mut index, &segments)?;
    let (mut snapshot_head, mut snapshot_rejected) = (snapshot_head, snapshot_rejected);
    if ids_now {
        // Ids the snapshot holds that fail a check: as if it had none (the
        // ids are then indexed from the segments, and the close writes a
        // new snapshot).
        if let Some(why) = read_later_ids(&mut index, &segments, dir)? {
            (snapshot_head, snapshot_rejected) = (None, Some(why));
        }
    }
    Ok(Recovered {
        index,
        segments,
        end,
        torn,
        torn_zero,
        snapshot_head,
        snapshot_rejected,
        later_locs,
    })
}

/// The log's index snapshot, if it is whole and matches `segments` (first
/// position, file length, and size of each): every segment it covers
/// but the last exactly as long as it says, the last at least as long,
/// and the frame at its head holding its head hash. Anything else and the
/// index is rebuilt from the segments (nothing is refused here: the
/// snapshot is derived data; the watermark guards against loss). Its
/// event ids are left in the file ([`Index::later`]), and checked against
/// the frames read here when they are read.
/// A usable snapshot's index, the segments it covers, and where its frame
/// lengths are if the index keeps only where each group starts.
type Usable = (
    Index,
    Vec<snapshot::SnapSegment>,
    Option<snapshot::LaterLocs>,
);

fn usable_snapshot(
    dir: &Path,
    segments: &[(u64, Segment, u64)],
    max_events: u64,
    open: snapshot::OpenWith,
) -> Result<Option<Usable>, String> {
    let Some(loaded) = snapshot::load(dir, max_events, open)? else {
        return Ok(None);
    };
    let snapshot::Loaded {
        mut index,
        segments: covers,
        ids,
        locs,
    } = loaded;
    let covered = covers.len();
    if covered == 0 || covered > segments.len() {
        return Err(format!(
            "it covers {covered} segments, the log has {}",
            segments.len()
        ));
    }
    for (i, (snap, (first, _, file_len))) in covers.iter().zip(segments).enumerate() {
        let whole = if i + 1 == covered {
            *file_len >= snap.len
        } else {
            *file_len == snap.len
        };
        if snap.first != *first || !whole {
            return Err(format!(
                "segment {} is not the one it describes (first position {first}, {file_len} bytes)",
                i + 1
            ));
        }
    }
    let head = index.head();
    // The head frame carries the head hash; it and up to SPOT_CHECKS
    // frames spread over the log are where the snapshot says, with the
    // stream version it lists for them (and, once read, the id).
    let checks = SPOT_CHECKS.min(head);
    let mut spots = Vec::with_capacity(checks as usize + 1);
    for i in 0..=checks {
        let p = if i == checks {
            head
        } else {
            1 + i * (head - 1) / checks.max(1)
        };
        let read = || -> Result<StoredEvent, String> {
            let segment = |n: u32| segments.get(n as usize).map(|(_, seg, _)| seg);
            let loc = frame_loc(&index.locs, p, segment)
                .map_err(|e| e.to_string())?
                .ok_or("no location")?;
            let seg = segment(loc.seg).ok_or("no segment")?;
            read_event(seg, loc, p).map_err(|e| e.to_string())
        };
        let ev = read().map_err(|e| format!("the frame at position {p}: {e}"))?;
        let v = ev.version;
        let listed = index
            .streams
            .positions(&ev.stream, v.saturating_sub(1), v)
            .map_err(|e| format!("the frame at position {p}: {e}"))?
            .filter(|_| v > 0)
            .and_then(|list| list.first().map(|&q| u64::from(q)));
        if listed != Some(p) || (p == head && ev.hash != index.head_hash) {
            return Err(format!(
                "the frame at position {p} is not the event it lists there"
            ));
        }
        spots.push((p, ev.event_id));
    }
    index.later = Some(Box::new(LaterIds::new(ids, spots, open.in_place_least)));
    Ok(Some((index, covers, locs)))
}

/// Reads the event ids an open left in the snapshot ([`Index::later`])
/// into `index` ([`later_ids`], then [`install_ids`]). `Ok(None)` when
/// nothing was left, or the ids were read from the snapshot; else why
/// they were indexed from the segments instead, for a note.
fn read_later_ids(
    index: &mut Index,
    segments: &[Arc<Segment>],
    dir: &Path,
) -> Result<Option<String>, StoreError> {
    match later_ids(index, segments, dir)? {
        Some(read) => install_ids(index, segments, read),
        None => Ok(None),
    }
}

/// The event ids an open left in the snapshot ([`Index::later`]), read
/// and checked as the open would have checked them: the frames it read
/// hold ids with the fingerprints listed at their positions, and two
/// positions listed under one fingerprint hold two ids, each with that
/// fingerprint. Ids that fail a check are not used: the ids are indexed
/// from the segments instead, as an open without the snapshot would, and
/// the reason is returned for a note. Changes nothing (readers go on
/// meanwhile); `None` when nothing was left.
fn later_ids(
    index: &Index,
    segments: &[Arc<Segment>],
    dir: &Path,
) -> Result<Option<ReadIds>, StoreError> {
    let Some(later) = &index.later else {
        return Ok(None);
    };
    let checked = || -> Result<Ids, String> {
        let (sorted, shared) = later.snapshot.read()?;
        let ids = Ids::with_base(sorted, later.snapshot.hasher());
        let holding = |p: u64, id: &Uuid| match ids.holds(id, p)? {
            true => Ok(()),
            false => Err(format!(
                "the frame at position {p} is not the event it lists there"
            )),
        };
        for (p, id) in &later.spots {
            holding(*p, id)?;
        }
        let repeated = repeated_id(shared, |p| {
            let (ev, ..) = event_at(index, segments, p).map_err(|e| e.to_string())?;
            holding(p, &ev.event_id)?;
            Ok::<_, String>(ev.event_id)
        })?;
        if let Some((a, b, _)) = repeated {
            return Err(format!("it lists one event id at positions {a} and {b}"));
        }
        Ok(ids)
    };
    let why = match checked() {
        Ok(ids) => return Ok(Some(ReadIds { ids, note: None })),
        Err(why) => why,
    };
    // Only the ids of this scan are kept; its stream lists are spilled to
    // files of their own as it goes (freed with it) rather than held, as
    // any full scan's are.
    let open = snapshot::OpenWith::ids(true);
    let rec = recover_at_most(dir, index.max_events, false, open, Spills::DEFAULT)?;
    if (rec.index.head(), rec.index.head_hash) != (index.head(), index.head_hash) {
        return Err(StoreError::Internal(format!(
            "the log's segments end at position {} but its index at {}",
            rec.index.head(),
            index.head()
        )));
    }
    Ok(Some(ReadIds {
        ids: rec.index.ids,
        note: Some(format!(
            "its event ids were not used ({why}); they were indexed from the segments"
        )),
    }))
}

/// Event ids read by [`later_ids`].
struct ReadIds {
    ids: Ids,
    /// Why the snapshot's were not used: then `ids` were indexed from the
    /// segments, every frame's (each checked against the others), not
    /// only those up to the snapshot's head.
    note: Option<String>,
}

/// Puts the ids [`later_ids`] read into `index`: those of the snapshot,
/// then the ids of the frames indexed after it (one of them already
/// stored is a corrupt log, as at an open); or those indexed from the
/// segments, every frame's. Returns why the snapshot's were not used, if
/// they were not. On an error nothing is kept (the next caller reads them
/// again, and on a corrupt log is refused again).
fn install_ids(
    index: &mut Index,
    segments: &[Arc<Segment>],
    read: ReadIds,
) -> Result<Option<String>, StoreError> {
    let Some(later) = index.later.take() else {
        return Err(StoreError::Internal(
            "the index's event ids were read twice".into(),
        ));
    };
    index.ids = read.ids;
    if read.note.is_some() {
        return Ok(read.note);
    }
    let first = later.first_after(index.head());
    let mut in_file = Vec::new();
    let mut listed = Ok(());
    for (p, id) in (first..).zip(&later.tail) {
        // Positions fit a u32 (`max_events`, checked by the push that
        // indexed the frame).
        let p = p as u32;
        if let Some(earlier) = index.ids.push(*id, p) {
            index.shared.push((earlier, p));
        }
        // One of the snapshot's ids again: the filter stops almost every
        // other id without a read.
        in_file.clear();
        if let Err(e) = index.ids.in_base_into(id, &mut in_file) {
            listed = Err(unreadable_ids(e));
            break;
        }
        index.shared.extend(in_file.iter().map(|&q| (q, p)));
    }
    let checked = listed.and_then(|()| check_shared(index, segments));
    if checked.is_err() {
        index.ids = Ids::default();
        index.shared.clear();
        index.later = Some(later);
    }
    checked.map(|()| None)
}

/// Makes sure the log's index holds its event ids ([`Index::later`]): the
/// first caller to need them reads them under `loader` (one reader at a
/// time) and the read lock, so that reads go on meanwhile, and takes the
/// write lock only to put them in; the writer, the one thread that
/// changes the index, waits for them (it calls this before every group).
/// A note on why the snapshot's ids were not used is kept for
/// [`SegmentLog::take_snapshot_rejection`].
fn ids_ready(state: &RwLock<State>, loader: &Mutex<()>, dir: &Path) -> Result<(), StoreError> {
    // The ids' checks read frames by position: in a sparse index each by
    // walking its group (the snapshot's spot checks, 64 frames, and the
    // rare pairs that share a fingerprint); a look-up's candidates are
    // counted as walks by its caller ([`SegmentLog::find_events`]).
    let stopped = || StoreError::WriterStopped;
    let pending = || -> Result<bool, StoreError> { Ok(read_state(state)?.index.later.is_some()) };
    if !pending()? {
        return Ok(());
    }
    let _one = loader.lock().map_err(|_| stopped())?;
    if !pending()? {
        return Ok(());
    }
    let read = {
        let state = read_state(state)?;
        later_ids(&state.index, &state.segments, dir)
    };
    let mut guard = state.write().map_err(|_| stopped())?;
    let state = &mut *guard;
    let installed = match read {
        Ok(Some(read)) => install_ids(&mut state.index, &state.segments, read),
        Ok(None) => return Ok(()),
        Err(e) => Err(e),
    };
    let note = installed.inspect_err(|_| state.ids_refused = true)?;
    if note.is_some() {
        state.ids_note = note;
        state.snapshot_stale = true;
    }
    Ok(())
}

/// Groups of 64 frames a sparse index reads to find the positions of
/// streams asked for before it reads every location
/// ([`SegmentLog::locations_for`]): at least this many (about 20 MB read
/// from the page cache), and up to an eighth of the log's groups
/// ([`WALK_SHARE`]), against every location read at once (2 bytes an event
/// held; ~25 ms at 10M events).
const SPARSE_WALKS: u64 = 1_024;

/// The share of a log's groups a sparse index may walk: 1 in this many.
const WALK_SHARE: u64 = 8;

/// Groups a sparse index of `groups` walks for streams before it reads
/// every location: [`SPARSE_WALKS`], or an eighth of them if more.
fn walk_budget(groups: usize) -> u64 {
    SPARSE_WALKS.max(groups as u64 / WALK_SHARE)
}

/// Frames besides the head's an open checks against an index snapshot.
const SPOT_CHECKS: u64 = 64;

// ---- the log --------------------------------------------------------------

/// One school's log in a segment store.
pub struct SegmentLog {
    _lock: Arc<ProcessLock>,
    school: String,
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    head_rx: watch::Receiver<u64>,
    sender: Option<mpsc::Sender<Commit>>,
    writer: Option<JoinHandle<()>>,
    snapshot_head: Option<u64>,
    snapshot_rejected: Mutex<Option<String>>,
    clock: Arc<WriterClock>,
    /// One reader of the snapshot's event ids at a time ([`ids_ready`]).
    ids_loader: Arc<Mutex<()>>,
    /// Groups walked so far to find streams' positions
    /// ([`SegmentLog::locations_for`]).
    walked: AtomicU64,
    /// Events the log was told are coming ([`EventStore::expect_appends`]),
    /// less those the writer has committed since; shared with the writer.
    expected: Arc<AtomicU64>,
    /// Bytes of the id tables grown apart that their threads hold
    /// ([`ids::Growth`]); shared with the writer.
    growing_bytes: Arc<AtomicUsize>,
    /// Tests: what the writer does at the fdatasync after a large group's
    /// pushes ([`SyncHooks`]).
    #[cfg(test)]
    sync_hooks: Arc<SyncHooks>,
}

impl SegmentLog {
    fn open(
        dir: &Path,
        school: &str,
        options: SegmentOptions,
        lock: Arc<ProcessLock>,
    ) -> Result<SegmentLog, StoreError> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir.join(CHECKPOINT_DIR)).map_err(io("open log"))?;
        if created {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let open = snapshot::OpenWith {
            ids_now: options.event_ids_at_open,
            beside_bytes: options.snapshot_beside_bytes,
            locations: options.locations_at_open,
            in_place_least: options.ids_in_place_least,
        };
        let rec = recover(dir, options.read_snapshot, open, Spills::of(&options))?;
        let head = rec.index.head();
        // The watermark, checked before anything is cut.
        let wm_path = dir.join(WATERMARK_FILE);
        let wm_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wm_path)
            .map_err(io("open watermark"))?;
        let mut wm_bytes = Vec::new();
        {
            use std::io::Read;
            (&wm_file)
                .read_to_end(&mut wm_bytes)
                .map_err(io("read watermark"))?;
        }
        let watermark = decode_watermark(&wm_bytes).map_err(|_| {
            corrupt(
                &wm_path,
                None,
                "the head watermark is damaged; run `casebook verify` and compare its head with your records",
            )
        })?;
        if let Some((position, hash)) = watermark {
            if position > head {
                return Err(corrupt(
                    dir,
                    None,
                    format!("events have been lost: the log had acknowledged position {position} but now ends at {head}; restore from a backup"),
                ));
            }
            if position > 0 {
                let ev = read_at(&rec, dir, position)?;
                if ev.hash != hash {
                    return Err(corrupt(
                        dir,
                        None,
                        format!("the event at position {position} is not the one that was acknowledged there"),
                    ));
                }
            }
        }
        let last = rec
            .segments
            .last()
            .cloned()
            .ok_or(StoreError::WriterStopped)?;
        if rec.torn > 0 {
            cut_to(&last.file, rec.end, "cut torn tail")?;
        }
        let recorded_us = if head == 0 {
            i64::MIN
        } else {
            read_at(&rec, dir, head)?.recorded_at.timestamp_micros()
        };
        let hash = rec.index.head_hash;
        let snapshot_head = rec.snapshot_head;
        let snapshot_rejected = Mutex::new(rec.snapshot_rejected);
        let state = Arc::new(RwLock::new(State {
            index: rec.index,
            segments: rec.segments,
            later_locs: rec.later_locs,
            ids_note: None,
            snapshot_stale: false,
            ids_refused: false,
            unsynced: false,
            token: Uuid::now_v7(),
        }));
        let (head_tx, head_rx) = watch::channel(head);
        let (sender, receiver) = mpsc::channel(MAX_PENDING_COMMITS);
        let clock = Arc::new(WriterClock::default());
        let ids_loader = Arc::new(Mutex::new(()));
        let expected = Arc::new(AtomicU64::new(0));
        let growing_bytes = Arc::new(AtomicUsize::new(0));
        #[cfg(test)]
        let sync_hooks = Arc::new(SyncHooks::default());
        let writer = Writer {
            dir: dir.to_path_buf(),
            state: state.clone(),
            segment: last,
            end: rec.end,
            bulk_written: false,
            bulk_cached: std::collections::VecDeque::new(),
            allocated: rec.end,
            segment_bytes: options.segment_bytes.max(1),
            position: head,
            hash,
            last_recorded_us: recorded_us,
            head_tx,
            buf: Vec::new(),
            sealed: Vec::new(),
            sealed_bytes: GroupBytes::default(),
            watermark: wm_file,
            watermark_at: Instant::now(),
            watermark_position: watermark.map_or(0, |(p, _)| p),
            // Counted from the snapshot read, or from this open when
            // snapshots were not to be read (so that a full scan by choice
            // does not rewrite a good snapshot at every close); from 0
            // when there was none usable.
            snapshot_head: match snapshot_head {
                Some(h) => h,
                None if !options.read_snapshot => head,
                None => 0,
            },
            snapshot_min_events: options.snapshot_min_events,
            snapshot_tail_most: options.snapshot_tail_most,
            spills: Spills::of(&options),
            clock: clock.clone(),
            ids_loader: ids_loader.clone(),
            expected: expected.clone(),
            growing_bytes: growing_bytes.clone(),
            spilling: None,
            lists_spilling: None,
            merging: None,
            merge_stop: Arc::new(AtomicBool::new(false)),
            growing: None,
            let_go: Vec::new(),
            grow_apart_from: options.grow_apart_from,
            growth_failed_at: 0,
            #[cfg(test)]
            sync_hooks: sync_hooks.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("casebook-segment-writer-{school}"))
            .spawn(move || writer.run(receiver))
            .map_err(io("start writer"))?;
        Ok(SegmentLog {
            _lock: lock,
            school: school.to_string(),
            dir: dir.to_path_buf(),
            state,
            head_rx,
            sender: Some(sender),
            writer: Some(handle),
            snapshot_head,
            snapshot_rejected,
            clock,
            ids_loader,
            walked: AtomicU64::new(0),
            expected,
            growing_bytes,
            #[cfg(test)]
            sync_hooks,
        })
    }

    /// Why the log's index snapshot was not used at open, when it had one
    /// that did not match (damaged, partial, another log's…); the index
    /// was then rebuilt from the segments. Handed out once, for a note.
    ///
    /// Also why the snapshot's event ids, read after the open when first
    /// needed ([`Index::later`]), or its frame lengths, read when a sparse
    /// index first needs every location (format 5), were not used, once
    /// that has happened.
    pub fn take_snapshot_rejection(&self) -> Option<String> {
        if let Some(why) = self.snapshot_rejected.lock().ok()?.take() {
            return Some(why);
        }
        self.state.write().ok()?.ids_note.take()
    }

    /// Whether the index holds the log's event ids yet: not after an open
    /// from the index snapshot until an append, a look-up by id, `verify`
    /// or a copy needs them (they stay in the snapshot file until then).
    pub fn event_ids_held(&self) -> bool {
        self.state
            .read()
            .map(|s| s.index.later.is_none())
            .unwrap_or(false)
    }

    /// The head of the index snapshot this log's index was read from when
    /// it was opened; `None` when it was rebuilt from every segment (no
    /// usable snapshot, or [`FULL_SCAN_ENV`] set).
    pub fn opened_from_snapshot(&self) -> Option<u64> {
        self.snapshot_head
    }

    /// Where the writer's time went since the log was opened (groups
    /// committed so far; a group in progress is not counted yet).
    pub fn writer_times(&self) -> WriterTimes {
        self.clock.read()
    }

    /// The school this log belongs to.
    pub fn school(&self) -> &str {
        &self.school
    }

    /// The log's directory (its segments, watermark and checkpoints).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Approximate bytes the in-memory index holds, from the capacities of
    /// its tables (locations, stream lists, the event id fingerprints and
    /// their hash table with its control bytes, and the table of a growth
    /// of it on a thread of its own): what the log costs in memory beyond
    /// the page cache.
    pub fn index_bytes(&self) -> u64 {
        let Ok(state) = self.state.read() else {
            return 0;
        };
        let ix = &state.index;
        let locs = ix.locs.allocated_bytes();
        let streams = ix.streams.allocated_bytes();
        let ids = ix.ids.allocated_bytes();
        let growing = self.growing_bytes.load(Ordering::Relaxed);
        (locs + streams + ids + growing) as u64
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        read_state(&self.state)
    }

    /// Readies the index to locate the positions of a stream that lie in
    /// `walks` groups, of the `groups` a sparse index
    /// ([`SegmentOptions::locations_at_open`]) holds: it finds them by
    /// reading those groups' frames (about 64 each) until [`SPARSE_WALKS`]
    /// groups, or an eighth of the log's ([`WALK_SHARE`]), have been read
    /// for the streams a log is asked for (the staff list an access check
    /// reads, the entries a rebuild's corrections name), then holds every
    /// location ([`locations_ready`]).
    fn locations_for(&self, walks: usize, groups: usize) -> Result<(), StoreError> {
        let walks = walks as u64;
        if self.walked.fetch_add(walks, Ordering::Relaxed) + walks > walk_budget(groups) {
            locations_ready(&self.state)?;
        }
        Ok(())
    }

    /// Before `streams` are read whole (an import's planner visiting its
    /// lines' pupils): a sparse index whose walks could not find them
    /// (their events fill more groups, at the least, than are left to
    /// walk: a day's register for the whole school) reads every location
    /// at once, rather than walking groups until it must.
    fn locations_for_streams(&self, streams: &[StreamId]) -> Result<(), StoreError> {
        let from_first: Vec<(StreamId, u64)> = streams.iter().map(|s| (*s, 1)).collect();
        self.locations_for_tails(&from_first)
    }

    /// [`SegmentLog::locations_for_streams`] of streams read from a
    /// version on (`(stream, from)`): only their events from there count.
    fn locations_for_tails(&self, streams: &[(StreamId, u64)]) -> Result<(), StoreError> {
        let (events, groups) = {
            let state = self.read()?;
            if !state.index.locs.is_sparse() {
                return Ok(());
            }
            let index = &state.index;
            let events: u64 = streams
                .iter()
                .map(|(s, from)| (index.streams.version(s) + 1).saturating_sub((*from).max(1)))
                .sum();
            (events, index.locs.groups())
        };
        let walked = self.walked.load(Ordering::Relaxed);
        if walked + events / locs::GROUP > walk_budget(groups) {
            locations_ready(&self.state)?;
        }
        Ok(())
    }

    /// Where the events of `stream` from `from_version` on are, at most
    /// `max` (and [`MAX_READ_PAGE`]), and the version of the first;
    /// `None` for a stream with no events. The page `read_stream` and
    /// `visit_stream` read.
    fn stream_page(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Option<(u64, Wanted)>, StoreError> {
        let max = max.min(MAX_READ_PAGE);
        // Where the versions are is taken under the index's lock; those in
        // the snapshot's file are read after it is let go.
        let (start, versions) = {
            let state = self.read()?;
            let streams = &state.index.streams;
            let len = streams.version(&stream);
            let start = (from_version.max(1) - 1).min(len);
            let end = start.saturating_add(max as u64).min(len);
            (start, streams.versions(&stream, start, end))
        };
        let Some(versions) = versions else {
            return Ok(None);
        };
        Ok(Some((start + 1, self.wanted_in(versions)?)))
    }

    /// Where the versions of each of `streams` that has events are, taken
    /// under the index's lock (those in the snapshot's file are read
    /// after it is let go, by [`SegmentLog::wanted_in`]); repeated
    /// streams once, in the order asked.
    fn versions_of(
        &self,
        streams: &[StreamId],
    ) -> Result<Vec<(StreamId, streams::Versions)>, StoreError> {
        let state = self.read()?;
        Ok(super::each_once(streams)
            .filter_map(|s| Some((s, state.index.streams.versions(&s, 0, u64::MAX)?)))
            .collect())
    }

    /// Where the events of `versions` are: their positions read (those in
    /// a file without the index's lock), then located under it.
    fn wanted_in(&self, versions: streams::Versions) -> Result<Wanted, StoreError> {
        let list = versions.read()?;
        let positions = || list.iter().map(|&p| u64::from(p));
        let (pieces, groups) = {
            let state = self.read()?;
            if !state.index.locs.is_sparse() {
                return state.wanted(positions());
            }
            (state.in_groups(&list), state.index.locs.groups())
        };
        self.locations_for(pieces.len(), groups)?;
        let state = self.read()?;
        match state.index.locs.is_sparse() {
            true => state.wanted_list(pieces),
            // Every location read since (here, or for another read).
            false => state.wanted(positions()),
        }
    }

    fn checkpoint_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if name.len() > MAX_CHECKPOINT_NAME {
            return Err(StoreError::Limit {
                what: "bytes in a checkpoint name",
                count: name.len(),
                limit: MAX_CHECKPOINT_NAME,
            });
        }
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        Ok(self.dir.join(CHECKPOINT_DIR).join(format!("c{hex}")))
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        // Close the queue and wait for the writer (it records the
        // watermark), so a reopen in the same process finds it done.
        self.sender.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

// ---- the writer -------------------------------------------------------------

/// Where the segment writer's time went since the log was opened: the
/// steps of every commit group, each timed with the monotonic clock
/// ([`SegmentLog::writer_times`]; `casebook bench` reports them for its
/// import). A step's time is wall time on the writer's thread, so it
/// includes any wait for the processor as well as for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterTimes {
    /// Groups committed (written and fdatasynced).
    pub groups: u64,
    /// Events in those groups.
    pub events: u64,
    /// Of those events, the ones written as their caller sealed them
    /// ahead (`Presealed`: the import pipeline's batches), which the
    /// writer checked but did not encode and hash again.
    pub presealed: u64,
    /// Checking and sealing the group's appends (versions, ids, envelope,
    /// chain hash: `GroupStage::stage`).
    pub stage_ns: u64,
    /// Framing the sealed events (frame header, CRC-32) into the buffer
    /// written.
    pub frame_ns: u64,
    /// The group's `pwrite` (with the zeros written ahead, and the roll to
    /// a new segment when one is full).
    pub write_ns: u64,
    /// The group's `fdatasync`; for a group put in the index while the
    /// disk writes it back ([`LARGE_GROUP_EVENTS`]), starting its
    /// writeback and then waiting for the `fdatasync` after the pushes.
    pub sync_ns: u64,
    /// Publishing the group: the id table grown ahead when it must, and
    /// every frame put in the index under its write lock (for a group of
    /// [`LARGE_GROUP_EVENTS`], while the disk writes it back; the wait
    /// for its `fdatasync` after them is `sync_ns`). (Answering the
    /// group's appends comes after its times are counted, so that an
    /// append's caller finds its group counted.)
    pub publish_ns: u64,
    /// The processor time the writer's thread used for those steps (user
    /// and system, `CLOCK_THREAD_CPUTIME_ID`): unlike the wall times, it
    /// does not count waiting for the disk or for a core.
    pub cpu_ns: u64,
}

impl WriterTimes {
    /// The steps' total: the time the writer was busy with groups.
    pub fn busy_ns(&self) -> u64 {
        self.stage_ns + self.frame_ns + self.write_ns + self.sync_ns + self.publish_ns
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &WriterTimes) {
        *self = self.zip(other, u64::saturating_add);
    }

    /// What was added between `earlier` and `self`.
    pub fn since(&self, earlier: &WriterTimes) -> WriterTimes {
        self.zip(earlier, u64::saturating_sub)
    }

    /// Every field, in declaration order.
    fn fields(&self) -> [u64; 9] {
        [
            self.groups,
            self.events,
            self.presealed,
            self.stage_ns,
            self.frame_ns,
            self.write_ns,
            self.sync_ns,
            self.publish_ns,
            self.cpu_ns,
        ]
    }

    fn from_fields(
        [groups, events, presealed, stage_ns, frame_ns, write_ns, sync_ns, publish_ns, cpu_ns]: [u64;
            9],
    ) -> WriterTimes {
        WriterTimes {
            groups,
            events,
            presealed,
            stage_ns,
            frame_ns,
            write_ns,
            sync_ns,
            publish_ns,
            cpu_ns,
        }
    }

    /// `f` of each field of `self` and the same field of `other`.
    fn zip(&self, other: &WriterTimes, f: impl Fn(u64, u64) -> u64) -> WriterTimes {
        let (a, b) = (self.fields(), other.fields());
        WriterTimes::from_fields(std::array::from_fn(|i| f(a[i], b[i])))
    }
}

/// [`WriterTimes`] as the writer adds to them and readers copy them.
#[derive(Default)]
struct WriterClock([AtomicU64; 9]);

impl WriterClock {
    fn add(&self, t: &WriterTimes) {
        for (sum, n) in self.0.iter().zip(t.fields()) {
            sum.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn read(&self) -> WriterTimes {
        WriterTimes::from_fields(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// Nanoseconds since `t` (saturating; the monotonic clock).
fn ns_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The processor time the calling thread has used, in nanoseconds (0 where
/// the clock cannot be read).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The frame header of a group's sealed event; `group_end` on the group's
/// last. The writer frames the group with it and, once the group is
/// durable, tells the index where each frame is with it.
fn frame_meta(sealed: &Sealed, group_end: bool) -> FrameMeta {
    let e = &sealed.event;
    FrameMeta {
        group_end,
        position: e.position,
        stream: e.stream,
        version: e.version,
        event_id: e.event_id,
    }
}

/// Why [`Writer::snapshot_now`] wrote no snapshot.
#[derive(Debug, PartialEq, Eq)]
enum Unwritten {
    /// The ids or the frame lengths left in the old snapshot could not be
    /// copied from it ([`snapshot::LaterIds::copy_merged`],
    /// [`snapshot::LaterLocs::copy_lens`]): read them, then write again.
    NotCopied(snapshot::Uncopied),
    /// Anything else (the write itself failed, or nothing to write from).
    Other,
}

struct Writer {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    segment: Arc<Segment>,
    /// Durable end of the current segment.
    end: u64,
    /// Whether a group of [`LARGE_GROUP_EVENTS`] or more went into the
    /// current segment.
    bulk_written: bool,
    /// Closed segments written in bulk, oldest first, that are still in
    /// the page cache ([`BULK_CACHED_SEGMENTS`]).
    bulk_cached: std::collections::VecDeque<Arc<Segment>>,
    /// Length of the current segment file: `end` plus zeros written ahead
    /// ([`PREALLOC_BYTES`]).
    allocated: u64,
    segment_bytes: u64,
    position: u64,
    hash: Hash,
    last_recorded_us: i64,
    head_tx: watch::Sender<u64>,
    /// The group's frames, reused from group to group. Where each frame
    /// is follows from the sealed events (`FRAME_OVERHEAD` + its bytes):
    /// the index is told from them, not from a list of its own.
    buf: Vec<u8>,
    /// The buffers a group is sealed into ([`GroupStage::with_buffers`]),
    /// reused from group to group.
    sealed: Vec<Sealed>,
    sealed_bytes: GroupBytes,
    watermark: File,
    watermark_at: Instant,
    watermark_position: u64,
    /// Head of the index snapshot on disk (0: none usable).
    snapshot_head: u64,
    snapshot_min_events: u64,
    snapshot_tail_most: u64,
    spills: Spills,
    /// Where the time goes, shared with the log ([`WriterTimes`]).
    clock: Arc<WriterClock>,
    ids_loader: Arc<Mutex<()>>,
    /// Events its callers said are coming ([`EventStore::expect_appends`]),
    /// less those committed since: what the id table is grown for.
    expected: Arc<AtomicU64>,
    /// Bytes of the id tables grown apart that their threads hold; shared
    /// with the log ([`SegmentLog::index_bytes`]).
    growing_bytes: Arc<AtomicUsize>,
    /// The spill of the id table on a thread of its own, if one was
    /// started and not yet ended here ([`Writer::spill_ids`]).
    spilling: Option<InFlight>,
    /// The spill of the stream lists on a thread of its own, if one was
    /// started and not yet ended here ([`Writer::spill_streams`]).
    lists_spilling: Option<InFlight>,
    /// The merge of the runs of ids on a thread of its own, if one was
    /// started and not yet ended here ([`Writer::merge_ids`]).
    merging: Option<InFlight>,
    /// Set at the close: a merge in flight stops ([`ids::Merge::write`]).
    merge_stop: Arc<AtomicBool>,
    /// The growth of the id table on a thread of its own, if one was
    /// started and not yet ended here ([`Writer::grow_ids_ahead`]).
    growing: Option<Growing>,
    /// Growths told to stop (their table frozen for a spill) whose
    /// threads may still run: joined once ended, and at the close.
    let_go: Vec<Growing>,
    /// [`SegmentOptions::grow_apart_from`].
    grow_apart_from: usize,
    /// The room of the table whose last growth apart failed (0: none;
    /// set back at a spill, which starts a new table).
    growth_failed_at: usize,
    /// Tests: what it does at the fdatasync after a large group's pushes.
    #[cfg(test)]
    sync_hooks: Arc<SyncHooks>,
}

/// A spill of the ids still running when the new table holds this part
/// of a spill's ids ([`Spills::ids`]) is waited for ([`Writer::spill_ids`]);
/// one of the stream lists, once this part of the positions it takes were
/// added since it began ([`Writer::spill_streams`]).
const SPILL_WAIT_PARTS: usize = 4;

/// What a spill's thread ends with: why it failed, if it did (the table
/// still frozen, or the lists as they were).
type SpillEnd = Result<(), String>;

/// The nice value of a merge's thread ([`yield_to_appends`]).
///
/// 0 in the unit tests, which run beside many others and wait for the
/// merges: in a CI run beside a release build and another test run
/// (session bi), a merge did not end within
/// `a_merge_of_the_runs_of_ids_that_fails_leaves_them_as_they_were`'s 60
/// s (12 runs left unmerged), and passed at once when retried; at 19 the
/// thread gets about 1.5% of a core's share beside each busy thread at 0.
#[cfg(target_os = "linux")]
const MERGE_NICE: libc::c_int = if cfg!(test) { 0 } else { 19 };

/// Lowers the calling thread's scheduling priority to [`MERGE_NICE`], so
/// that a merge of the runs of ids, which the writer does not wait for,
/// runs on what the appends leave of the processors rather than beside
/// them (an import keeps both cores of a small machine busy). Best
/// effort: where it cannot be set, the thread runs as any other.
fn yield_to_appends() {
    // SAFETY: `gettid` and `setpriority` take no pointers; on Linux a
    // thread's nice value is its own, so this changes this thread only.
    #[cfg(target_os = "linux")]
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, MERGE_NICE);
    }
}

/// What a spill on a thread of its own writes ([`Writer::spawn_spill`]).
#[derive(Clone, Copy, Debug)]
enum SpillOf {
    /// The id table's run ([`Writer::spill_ids`]).
    Ids,
    /// The stream lists' file ([`Writer::spill_streams`]).
    Lists,
    /// The runs of ids merged into one ([`Writer::merge_ids`]).
    Merge,
}

impl SpillOf {
    fn thread_name(self) -> &'static str {
        match self {
            SpillOf::Ids => "casebook-id-spill",
            SpillOf::Lists => "casebook-list-spill",
            SpillOf::Merge => "casebook-id-merge",
        }
    }
}

/// A spill on a thread of its own that the writer has not ended yet
/// ([`Writer::start_spill`], [`Writer::end_spill`]).
struct InFlight {
    handle: JoinHandle<SpillEnd>,
    /// How much the index holds of what it spills ([`Writer::held`])
    /// when the writer waits for it rather than go on: for a spill, a
    /// quarter more than as it began ([`SPILL_WAIT_PARTS`]); for a merge,
    /// [`ids::MAX_RUNS`] more runs (and [`ids::MOST_RUNS`] at least).
    wait_at: usize,
    /// What it takes: the ids of a full table, the stream positions, or
    /// the runs merged.
    taking: usize,
}

/// A growth of the id table on a thread of its own ([`grow_apart`]).
struct Growing {
    handle: JoinHandle<Result<ids::Growth, String>>,
    /// The room of the table it grows.
    from_room: usize,
    /// Set when the writer lets go of it (the table was frozen for a
    /// spill) or closes: it stops at its next slice.
    stop: Arc<AtomicBool>,
}

impl Growing {
    /// Tells its thread to stop, and waits for it.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

/// Builds `growth` ([`ids::Growth`]) on a thread of its own: the id
/// table's fingerprints are copied under the read lock a slice at a time
/// ([`ids::GROWTH_SLICE`]) and put in without it. `Err` once `stop` is set
/// ([`Growing::stop`]), or the table it is built from was replaced.
fn grow_apart(
    state: &RwLock<State>,
    mut growth: ids::Growth,
    stop: &AtomicBool,
) -> Result<ids::Growth, String> {
    let mut fps = Vec::with_capacity(ids::GROWTH_SLICE);
    while !growth.built_apart() {
        if stop.load(Ordering::Relaxed) {
            return Err("a growth of the id table let go of".into());
        }
        read_state(state)
            .map_err(|e| e.to_string())?
            .index
            .ids
            .growth_slice(&growth, ids::GROWTH_SLICE, &mut fps)?;
        if fps.is_empty() {
            return Err("the id table holds fewer ids than it grows for".into());
        }
        growth.fill(&fps)?;
    }
    Ok(growth)
}

/// Writes `spill` (begun under the index's lock) to a file in `dir`, the
/// streams' tails taken under the read lock a slice at a time
/// ([`streams::SPILL_SLICE`]) and written without it.
fn write_list_spill(
    state: &RwLock<State>,
    spill: streams::ListSpill,
    dir: &Path,
) -> Result<streams::Spilled, StoreError> {
    spill.write_slices(dir, |spill| {
        spill.take(&read_state(state)?.index.streams, streams::SPILL_SLICE)
    })
}

/// The index's write lock for a thread other than the writer (a spill of
/// the ids or of the stream lists): tried every 100 µs rather than waited
/// for at once, for up to 50 ms, since a waiting writer of a `RwLock`
/// holds back every reader that comes after it, and the segment writer
/// holds the read lock through a group's checks (milliseconds). Only the
/// segment writer and these spills take the write lock, each time
/// briefly, so the lock is free between the writer's groups.
fn write_between_readers(
    state: &RwLock<State>,
) -> Result<std::sync::RwLockWriteGuard<'_, State>, String> {
    let poisoned = |_| "the index's lock is poisoned".to_string();
    let started = Instant::now();
    loop {
        match state.try_write() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => return Err(poisoned(e)),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        if started.elapsed() >= Duration::from_millis(50) {
            return state.write().map_err(poisoned);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The next commit for the writer: after a large group (`spin`), waited
/// for a little while awake first ([`WRITER_SPIN`]), then asleep.
fn next_commit(receiver: &mut mpsc::Receiver<Commit>, spin: bool) -> Option<Commit> {
    if !spin {
        return receiver.blocking_recv();
    }
    let started = Instant::now();
    loop {
        match receiver.try_recv() {
            Ok(commit) => return Some(commit),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if started.elapsed() >= WRITER_SPIN {
            return receiver.blocking_recv();
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

const WRITER_SPIN: Duration = Duration::from_micros(100);

/// Events from which a group is an import's batch (1,024) rather than
/// single or concurrent appends, and the writer treats it so:
/// - it waits awake for the next commit after it ([`next_commit`]): the
///   pipeline hands the next batch over a few microseconds after the
///   answer, while the callers of small appends need the core to make the
///   next ones;
/// - it puts the group in the index while the disk writes it: the group's
///   writeback is started (`sync_file_range`) before its pushes, and its
///   fdatasync follows them, the index's write lock held until it has
///   returned, so that no reader sees an event before it is durable. A
///   small group is synced first and indexed after (a single append
///   would wait longer, not less, with its pushes first), and so is a
///   group written as it is sealed ([`STREAMED_GROUP_EVENTS`]: one large
///   atomic append), whose fdatasync can take a second, which readers
///   would then wait for.
const LARGE_GROUP_EVENTS: usize = 512;

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Commit>) {
        let mut failed = false;
        let mut spin = false;
        while let Some(first) = next_commit(&mut receiver, spin) {
            if failed {
                first.reply.send(Err(StoreError::WriterStopped));
                continue;
            }
            #[cfg(test)]
            self.sync_hooks.busy.store(true, Ordering::SeqCst);
            let group = super::next_group(first, &mut receiver, MAX_GROUP_EVENTS);
            let events: usize = group
                .iter()
                .flat_map(|c| &c.requests)
                .map(|r| r.events.len())
                .sum();
            spin = events >= LARGE_GROUP_EVENTS;
            let committed = self.commit_group(group, events);
            self.trim_buffers();
            if committed {
                self.growth_ended();
                self.spill_ids();
                self.merge_ids();
                self.spill_streams();
            }
            if !committed {
                // fsyncgate: after a failed write or fdatasync the kernel
                // may have dropped the dirty pages; never retry and pretend.
                // Refuse appends until the log is reopened and recovered.
                failed = true;
            }
            if self.position > self.watermark_position
                && self.watermark_at.elapsed() >= WATERMARK_INTERVAL
            {
                self.record_watermark(false);
            }
            #[cfg(test)]
            self.sync_hooks.busy.store(false, Ordering::SeqCst);
        }
        // A spill of the ids still running is waited for: the snapshot
        // sorts every id; and one of the stream lists, which would install
        // its file after the log is closed.
        // A merge still running is stopped: the snapshot merges every id
        // anyway, and the runs stay as they are.
        // So is a growth of the id table.
        self.merge_stop.store(true, Ordering::Relaxed);
        if let Some(growing) = self.growing.take() {
            growing.stop();
        }
        for growing in self.let_go.drain(..) {
            growing.stop();
        }
        self.end_spill(SpillOf::Ids);
        self.end_spill(SpillOf::Merge);
        self.end_spill(SpillOf::Lists);
        if !failed && self.position > self.watermark_position {
            self.record_watermark(true);
        }
        if !failed {
            // Best effort: a closed segment ends at its last group. Zeros
            // left by a failure here are cut by the next open.
            if self.cut_preallocated().is_ok() {
                self.write_snapshot();
            }
        }
    }

    /// At a clean close: writes the index snapshot when enough events were
    /// appended since the last one ([`SNAPSHOT_MIN_EVENTS`], and an eighth
    /// of its head or [`SNAPSHOT_TAIL_MOST`], the smaller), or its event
    /// ids were found unusable. Best effort:
    /// the snapshot is derived data, and a failure leaves the old one (or
    /// none), which the next open checks against the segments anyway.
    fn write_snapshot(&mut self) {
        let due = self.snapshot_head.saturating_add(
            self.snapshot_min_events
                .max((self.snapshot_head / 8).min(self.snapshot_tail_most)),
        );
        let stale = match self.state.read() {
            Ok(state) => state.snapshot_stale,
            Err(_) => return,
        };
        if self.position == 0 || (self.position < due && !stale) {
            return;
        }
        // Ids still in the snapshot this one replaces (an open that only
        // read, and appended only minted ids: a timeline's `RecordViewed`,
        // or an import of lines without ids) are copied from its file
        // into the new one, merged with the ids appended after it,
        // without being read into the index
        // (`snapshot::LaterIds::copy_merged`). If that fails (their
        // section no longer matches its checksum, or cannot be read),
        // they are read as at any first use (checked, and indexed from
        // the segments if unusable) and the snapshot is written from
        // them; if they cannot be, the old snapshot stays and the next
        // open scans the frames after it again.
        let copies = match self.state.read() {
            Ok(state) => {
                !state.ids_refused
                    && state
                        .index
                        .later
                        .as_ref()
                        .is_some_and(|later| !later.snapshot.read_ahead())
            }
            Err(_) => return,
        };
        if !copies && ids_ready(&self.state, &self.ids_loader, &self.dir).is_err() {
            return;
        }
        // A snapshot records every frame's length. A sparse index still
        // opened from a snapshot copies that one's lengths from its file
        // and walks only the frames after it ([`Writer::lens_after`]);
        // any other reads every location first. Either copy that fails
        // (its section does not match its checksum, or cannot be read)
        // is read as at any first use, and the snapshot written again.
        let mut tail = self.lens_after();
        if tail.is_none() && locations_ready(&self.state).is_err() {
            return;
        }
        // Each section at most once: both may fail (the lengths are
        // copied first).
        for _ in 0..3 {
            let ready = match self.snapshot_now(tail.as_deref()) {
                Err(Unwritten::NotCopied(snapshot::Uncopied::Ids)) => {
                    ids_ready(&self.state, &self.ids_loader, &self.dir)
                }
                Err(Unwritten::NotCopied(snapshot::Uncopied::Lengths)) => {
                    #[cfg(test)]
                    self.sync_hooks.lens_refused.store(true, Ordering::Relaxed);
                    tail = None;
                    locations_ready(&self.state)
                }
                _ => return,
            };
            if ready.is_err() {
                return;
            }
        }
    }

    /// The lengths of the frames after the snapshot a sparse index was
    /// opened from, walked from their groups, in order, while that
    /// snapshot's lengths are still in its file ([`State::later_locs`]):
    /// the close then copies those ([`snapshot::Lens::Copied`]) instead of
    /// reading every location into the index first (2 bytes an event held,
    /// 60 MB at 30M events). `None` when the index holds every location,
    /// or the frames cannot be walked.
    fn lens_after(&self) -> Option<Vec<u32>> {
        let state = self.state.read().ok()?;
        let later = state.later_locs.as_ref()?;
        let locs = &state.index.locs;
        if !locs.is_sparse() {
            return None;
        }
        let from = later.head() + 1;
        let mut lens =
            Vec::with_capacity((locs.len() as u64).saturating_sub(later.head()) as usize);
        walk_locs(locs, &state.segments, from, |_, loc, _| {
            lens.push(loc.len);
            Ok(())
        })
        .ok()?;
        Some(lens)
    }

    /// Writes the index snapshot (best effort: [`Unwritten`] says why it
    /// was not), the lengths of a sparse index copied from the snapshot
    /// it was opened from and `tail` ([`Writer::lens_after`]).
    fn snapshot_now(&mut self, tail: Option<&[u32]>) -> Result<(), Unwritten> {
        let Ok(state) = self.state.read() else {
            return Err(Unwritten::Other);
        };
        let lens = match (state.index.locs.is_sparse(), &state.later_locs, tail) {
            (false, ..) => snapshot::Lens::Held,
            (true, Some(from), Some(tail)) => snapshot::Lens::Copied { from, tail },
            // A sparse index has no lengths to write else
            // ([`locations_ready`]).
            (true, ..) => return Err(Unwritten::Other),
        };
        let Some(segments) = state.index.locs.segments() else {
            return Err(Unwritten::Other);
        };
        let path = self.dir.join(snapshot::SNAPSHOT_FILE);
        // Not fsynced: the snapshot is checked when read and can be done
        // without, and syncing ~20 bytes an event would make the close
        // that writes it wait for the disk (seconds at 10M events).
        let written = replace_file(&path, false, &mut |out| {
            snapshot::encode(&state.index, &segments, lens, out)
        });
        match written {
            Ok(()) => {
                #[cfg(test)]
                if matches!(lens, snapshot::Lens::Copied { .. }) {
                    self.sync_hooks.lens_copied.store(true, Ordering::Relaxed);
                }
                self.snapshot_head = self.position;
                Ok(())
            }
            Err(e) => match snapshot::not_copied(&e) {
                Some(what) => Err(Unwritten::NotCopied(what)),
                None => Err(Unwritten::Other),
            },
        }
    }

    /// After a group: once the index holds [`SPILL_STREAMS`] stream
    /// positions in memory (or a quarter of those in its file, if more),
    /// writes every list to a file of its own and reads them there from
    /// then on ([`streams::Streams::install`]).
    ///
    /// The file is written on a thread of its own (since session au; the
    /// writer appended nothing while it was written before, 0.2–0.4 s at
    /// 8–16M events): the lists up to the log's head are taken under the
    /// read lock a slice of streams at a time ([`streams::ListSpill`]) and
    /// written without it, while the writer goes on adding positions after
    /// that head, and the thread installs the file under the write lock,
    /// keeping in memory only the positions added since. One spill at a
    /// time: once a quarter as many more positions are held as the spill
    /// in flight takes ([`SPILL_WAIT_PARTS`], as for the ids), the writer
    /// waits for it, so that memory holds at most a quarter (and a group)
    /// more positions than a spill takes (about 2 MB more at the default, at least
    /// 2,097,152 positions; a spill takes 0.1–0.3 s at 10M events, while
    /// an import adds at most about 300,000). A spill that fails leaves
    /// the lists as they were and the next waits for twice as many.
    fn spill_streams(&mut self) {
        if !self.spill_may_begin(SpillOf::Lists) {
            return;
        }
        let (spill, held) = match self.state.read() {
            Ok(state) => {
                let streams = &state.index.streams;
                if !streams.spill_due(self.spills.streams) {
                    return;
                }
                (streams.begin_spill(state.index.head()), streams.tails())
            }
            Err(_) => return,
        };
        // The tails and the file the spill replaces are freed outside the
        // lock.
        self.start_spill(
            SpillOf::Lists,
            (held.saturating_add(held / SPILL_WAIT_PARTS), held),
            move |state, dir| write_list_spill(state, spill, dir).map_err(|e| e.to_string()),
            |state, spilled| match state.index.streams.install(spilled) {
                Some(replaced) => (Ok(()), Some(replaced)),
                None => (
                    Err("the stream lists changed while they were spilled".to_string()),
                    None,
                ),
            },
        );
        #[cfg(test)]
        if self.sync_hooks.list_spill_joined.load(Ordering::Relaxed) {
            self.end_spill(SpillOf::Lists);
        }
    }

    /// The spill of `of` in flight, if any.
    fn in_flight(&mut self, of: SpillOf) -> &mut Option<InFlight> {
        match of {
            SpillOf::Ids => &mut self.spilling,
            SpillOf::Lists => &mut self.lists_spilling,
            SpillOf::Merge => &mut self.merging,
        }
    }

    /// What the index holds in memory of what a spill of `of` writes: the
    /// ids in the table (none while they are still in the snapshot), or
    /// the stream positions; none if the lock is poisoned.
    fn held(&self, of: SpillOf) -> usize {
        let Ok(state) = self.state.read() else {
            return 0;
        };
        match of {
            SpillOf::Ids if state.index.later.is_none() => state.index.ids.table_len(),
            SpillOf::Ids => 0,
            SpillOf::Lists => state.index.streams.tails(),
            SpillOf::Merge => state.index.ids.runs().len(),
        }
    }

    /// Whether a spill of `of` may begin: none is in flight, or the one in
    /// flight has ended, or the index holds as much as it is waited for at
    /// ([`InFlight::wait_at`]), and the writer ended it here (waiting for
    /// it if it still ran). `false` while it runs on.
    fn spill_may_begin(&mut self, of: SpillOf) -> bool {
        let (wait_at, finished) = match self.in_flight(of) {
            None => return true,
            Some(s) => (s.wait_at, s.handle.is_finished()),
        };
        if !finished && self.held(of) < wait_at {
            return false;
        }
        self.end_spill(of);
        true
    }

    /// [`Writer::spawn_spill`], kept in flight until [`Writer::end_spill`];
    /// `(wait_at, taking)`: how much the index holds of what it spills
    /// when the writer waits for it ([`InFlight::wait_at`]), and what it
    /// takes.
    fn start_spill<W: Send + 'static, R>(
        &mut self,
        of: SpillOf,
        (wait_at, taking): (usize, usize),
        write: impl FnOnce(&RwLock<State>, &Path) -> Result<W, String> + Send + 'static,
        install: impl FnOnce(&mut State, W) -> (SpillEnd, R) + Send + 'static,
    ) {
        match self.spawn_spill(of, write, install) {
            Ok(handle) => {
                *self.in_flight(of) = Some(InFlight {
                    handle,
                    wait_at,
                    taking,
                })
            }
            Err(_) => self.spill_failed(of, taking),
        }
    }

    /// Waits for the spill of `of` in flight, if any, and takes up its
    /// failure ([`Writer::spill_failed`]).
    fn end_spill(&mut self, of: SpillOf) {
        let Some(spill) = self.in_flight(of).take() else {
            return;
        };
        if !matches!(spill.handle.join(), Ok(Ok(()))) {
            self.spill_failed(of, spill.taking);
        } else if let SpillOf::Merge = of {
            self.spills.merge_at = ids::MERGE_AT;
        }
    }

    /// A spill of `taking` that failed: the next waits for twice as many.
    /// A spill of the ids also takes the frozen table back into the table
    /// ([`Ids::thaw`], rebuilt under the write lock: a failure's cost, not
    /// a spill's); the stream lists are as they were.
    fn spill_failed(&mut self, of: SpillOf, taking: usize) {
        match of {
            SpillOf::Ids => {
                if let Ok(mut state) = self.state.write() {
                    state.index.ids.thaw();
                }
                self.spills.ids = taking.saturating_mul(2);
            }
            SpillOf::Lists => self.spills.streams = taking.saturating_mul(2),
            // The runs are as they were; the next merge waits for as many
            // more runs as a merge begins at.
            SpillOf::Merge => self.spills.merge_at = taking.saturating_add(ids::MAX_RUNS),
        }
    }

    /// Starts a spill on a thread of its own: `write` (with the index's
    /// state, to take its read lock as it needs, and the log's directory),
    /// then `install` of what it wrote under the write lock, taken between
    /// readers ([`write_between_readers`]). What `install` gives back to
    /// free (what the spill replaced, or what it wrote when refused) is
    /// freed after the lock is let go.
    fn spawn_spill<W: Send + 'static, R>(
        &self,
        of: SpillOf,
        write: impl FnOnce(&RwLock<State>, &Path) -> Result<W, String> + Send + 'static,
        install: impl FnOnce(&mut State, W) -> (SpillEnd, R) + Send + 'static,
    ) -> std::io::Result<JoinHandle<SpillEnd>> {
        let (state, dir) = (self.state.clone(), self.dir.clone());
        #[cfg(test)]
        let hooks = self.sync_hooks.clone();
        std::thread::Builder::new()
            .name(of.thread_name().into())
            .spawn(move || -> SpillEnd {
                if let SpillOf::Merge = of {
                    yield_to_appends();
                }
                #[cfg(test)]
                hooks.at_spill(of)?;
                let written = write(&state, &dir)?;
                let mut guard = write_between_readers(&state)?;
                let (ended, to_free) = install(&mut guard, written);
                drop(guard);
                drop(to_free);
                ended
            })
    }

    /// Once the index's id table holds [`SPILL_IDS`] ids, writes them,
    /// sorted, to a run in a file of its own and from then on looks them
    /// up there, keeping a filter and a block directory of them
    /// ([`sorted_ids`]), whose block checksums are taken from the ids as
    /// written, not as read back ([`ids::Spill::write`]).
    ///
    /// The run is written on a thread of its own (since session at; the
    /// writer appended nothing while it was written before): the table is
    /// frozen under the write lock ([`Ids::freeze`]) and looked up as
    /// before, a new one takes the appends meanwhile, and the spill's
    /// thread puts the run in its place under the write lock
    /// ([`Ids::install`]). One spill at a time: once the new table holds
    /// a quarter of a spill's ids ([`SPILL_WAIT_PARTS`]) before the last
    /// spill has ended, the writer waits for it, so that the two tables
    /// together hold at most a quarter more than one (a spill takes
    /// 0.13–0.21 s, while an import adds at most 210,000 ids). A spill
    /// writes the table's ids only; the runs are merged apart
    /// ([`Writer::merge_ids`]). What a
    /// spill replaced is freed by its thread. Best
    /// effort: after a run that could not be written, the frozen table is
    /// taken back into the table ([`Ids::thaw`]) and the next spill waits
    /// for twice as many ids.
    fn spill_ids(&mut self) {
        // Checked under the read lock (only this thread adds ids), so that
        // the write lock is taken only for a spill.
        if !self.spill_may_begin(SpillOf::Ids) || self.held(SpillOf::Ids) < self.spills.ids {
            return;
        }
        let spill = match self.state.write() {
            Ok(mut state) => state.index.ids.freeze(),
            Err(_) => return,
        };
        let Some(spill) = spill else {
            return;
        };
        // A growth of the table just frozen is of no use: told to stop,
        // not waited for (its thread ends at its next slice). A failure
        // of one was the frozen table's: the new one may grow apart.
        if let Some(growing) = self.growing.take() {
            growing.stop.store(true, Ordering::Relaxed);
            self.let_go.push(growing);
        }
        self.growth_failed_at = 0;
        // The new table is empty; the frozen table is freed outside the
        // lock.
        self.start_spill(
            SpillOf::Ids,
            (self.spills.ids / SPILL_WAIT_PARTS, self.spills.ids),
            move |_, dir| spill.write(dir).map(|run| (spill, run)),
            |state, (spill, run)| match state.index.ids.install(&spill, run) {
                Ok(replaced) => (Ok(()), (spill, Ok(replaced))),
                Err(run) => (
                    Err("the ids changed while they were spilled".to_string()),
                    (spill, Err(run)),
                ),
            },
        );
    }

    /// After a group: once [`ids::MERGE_AT`] runs of ids are held, merges
    /// them all into one run on a thread of its own ([`Ids::begin_merge`],
    /// [`ids::Merge::write`]), which puts it in their place under the write
    /// lock ([`Ids::install_merge`]) and frees them.
    ///
    /// Until session av a spill that found that many runs merged them with
    /// the table's ids itself, and the writer waited for that spill once
    /// the new table held a quarter of a spill's ids. A merge rewrites
    /// every id of the log, so that wait grew with it: 0.9–1.1 s at 16.9M
    /// ids under a sustained import, every ninth spill. The merges keep
    /// that schedule (9 runs, where that spill merged 8 and the table);
    /// the spills now
    /// only write the table, and go on adding runs after those being
    /// merged; the writer waits for a merge only once [`ids::MOST_RUNS`]
    /// are held and [`ids::MAX_RUNS`] were added since it began (every
    /// look-up probes each run's filter). The close stops a merge still
    /// running (the snapshot merges every id anyway). A merge that fails
    /// leaves the runs as they were, and the next begins once
    /// [`ids::MAX_RUNS`] more runs are held than it merged.
    fn merge_ids(&mut self) {
        if !self.spill_may_begin(SpillOf::Merge) {
            return;
        }
        let merge = match self.state.read() {
            Ok(state) => state.index.ids.begin_merge(self.spills.merge_at),
            Err(_) => return,
        };
        let Some(merge) = merge else {
            return;
        };
        let runs = merge.len();
        let stop = self.merge_stop.clone();
        // Waited for once MOST_RUNS runs are held and MAX_RUNS more were
        // added since it began (a merge begun late, after one that
        // failed, is not waited for at once). The runs it replaces are
        // freed by its thread, outside the lock.
        self.start_spill(
            SpillOf::Merge,
            (ids::MOST_RUNS.max(runs.saturating_add(ids::MAX_RUNS)), runs),
            move |_, dir| merge.write(dir, &stop).map(|run| (merge, run)),
            |state, (merge, run)| match state.index.ids.install_merge(&merge, run) {
                Ok(replaced) => (Ok(()), (merge, Ok(replaced))),
                Err(run) => (
                    Err("the runs of ids changed while they were merged".to_string()),
                    (merge, Err(run)),
                ),
            },
        );
    }

    /// Makes room in the index's id table for `adding` more ids before
    /// they are pushed, when the table would otherwise grow inside the
    /// push: a table twice the size is filled under the read lock, so that
    /// reads go on meanwhile, and only the swap takes the write lock. (A
    /// table growing in place rehashes every id under the write lock: tens
    /// of ms at 2M ids, every read of the school waiting.) Only this thread
    /// changes the index of an open log, so nothing is pushed between the
    /// fill and the swap (and the swap checks it).
    ///
    /// `then`: ids expected after these ([`EventStore::expect_appends`]).
    /// A table grown is grown for them too, up to what the table holds
    /// before it is spilled ([`SPILL_IDS`] and a group): one rebuild for a
    /// whole import, not one at every doubling.
    ///
    /// A table of room for [`ids::GROW_APART_FROM`] ids or more that would
    /// grow by doubling (no appends were announced, or a table is frozen
    /// for its spill) grows apart instead, on a thread of its own ([`grow_apart`]), begun
    /// once a group would fill more than three quarters of its room
    /// ([`Ids::begin_growth`]):
    /// the writer goes on pushing into it meanwhile, and puts the new table
    /// in once the thread has ended, first putting in it what it pushed
    /// since ([`Ids::catch_up`], under the read lock). It waits for the
    /// thread only when a group would find the table full. Until session
    /// aw the writer built every growth itself, and appends waited for it:
    /// up to 90 ms at 917,504 ids (119 ms in session av's runs), once
    /// before the first spill and once after every spill, for appends that
    /// do not say how many are coming (docs/performance.md, "Session aw").
    ///
    /// `announced`: the group is of events a caller said are coming. It
    /// begins no growth apart (the last group of an import, `then` 0,
    /// would otherwise begin one for appends that may never come, and hold
    /// a table of twice the room as the import ends: 10 MB at 10M events,
    /// "Session ay"), unless a table is frozen for its spill, or the table
    /// would then have no room for a whole group more: the first group
    /// nobody announced always fits, and begins the growth with the room
    /// the import left (less than a quarter: the groups after it wait for
    /// the growth's thread, not for a growth on this one, if they fill
    /// that room first).
    fn grow_ids_ahead(&mut self, adding: usize, then: usize, announced: bool) {
        if self.growing.is_some() && self.ids_full_for(adding) {
            self.end_growth();
        }
        self.growth_ended();
        let bigger = {
            let Ok(state) = self.state.read() else {
                return;
            };
            if state.index.later.is_some() {
                // The ids are still in the snapshot.
                return;
            }
            let ids = &state.index.ids;
            // The most the table holds before it is spilled.
            let most = self.spills.ids.saturating_add(MAX_GROUP_EVENTS);
            let room = most.saturating_sub(ids.table_len().saturating_add(adding));
            // While a table is frozen for its spill, the new one grows by
            // doubling, not at once for the events expected: the two
            // tables are held together until the spill ends.
            let frozen = ids.is_frozen();
            let then = if frozen { 0 } else { then.min(room) };
            if !ids.table_full_for(adding) {
                let ahead = frozen
                    || !announced
                    || ids.table_full_for(adding.saturating_add(MAX_GROUP_EVENTS));
                let growth = match (then, &self.growing) {
                    (0, None) if ahead && ids.table_capacity() != self.growth_failed_at => {
                        ids.begin_growth(adding, self.grow_apart_from, most)
                    }
                    _ => None,
                };
                drop(state);
                if let Some(growth) = growth {
                    self.start_growth(growth);
                }
                return;
            }
            ids.bigger_table(adding.saturating_add(then))
        };
        let old = match self.state.write() {
            Ok(mut state) => state.index.ids.replace_table(bigger),
            Err(_) => return,
        };
        // The old table is freed here, outside the lock.
        drop(old);
    }

    /// Whether the id table has no room for `adding` more ids (and holds
    /// them, not the snapshot).
    fn ids_full_for(&self, adding: usize) -> bool {
        self.state
            .read()
            .is_ok_and(|s| s.index.later.is_none() && s.index.ids.table_full_for(adding))
    }

    /// Puts in the growth of the id table in flight once its thread has
    /// ended ([`Writer::end_growth`]): before a group's pushes, and after
    /// each group, so that the old table is not held beside the new one
    /// longer than a group.
    fn growth_ended(&mut self) {
        if self
            .growing
            .as_ref()
            .is_some_and(|g| g.handle.is_finished())
        {
            self.end_growth();
        }
        // Those let go of, once ended (at most one a spill).
        if self.let_go.iter().any(|g| g.handle.is_finished()) {
            let (ended, running) = std::mem::take(&mut self.let_go)
                .into_iter()
                .partition(|g| g.handle.is_finished());
            self.let_go = running;
            for growing in ended {
                let _ = growing.handle.join();
            }
        }
    }

    /// Starts `growth` on a thread of its own ([`grow_apart`]). Where no
    /// thread can be started the table grows here when it must, as before
    /// (as after a growth that failed).
    fn start_growth(&mut self, growth: ids::Growth) {
        let from_room = growth.grown_from();
        let growth = growth.counted_in(self.growing_bytes.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (state, stopped) = (self.state.clone(), stop.clone());
        #[cfg(test)]
        let hooks = self.sync_hooks.clone();
        let thread = std::thread::Builder::new()
            .name("casebook-id-growth".into())
            .spawn(move || {
                #[cfg(test)]
                hooks.at_growth()?;
                grow_apart(&state, growth, &stopped)
            });
        match thread {
            Ok(handle) => {
                self.growing = Some(Growing {
                    handle,
                    stop,
                    from_room,
                })
            }
            Err(_) => self.growth_failed_at = from_room,
        }
    }

    /// Waits for the growth of the id table in flight, if any; brings it
    /// up to date under the read lock ([`Ids::catch_up`]) and puts it in
    /// under the write lock ([`Ids::install_growth`]). A growth that
    /// failed (its thread's error, or a table since replaced: taken back
    /// after a spill that failed) is dropped, and none begins again for
    /// that table at that room: the table grows here when it must, as
    /// before. (A spill takes a growth of the table it freezes away
    /// itself, [`Writer::spill_ids`].)
    fn end_growth(&mut self) {
        let Some(growing) = self.growing.take() else {
            return;
        };
        let Ok(Ok(mut growth)) = growing.handle.join() else {
            // None begins again for a table of that room: it grows here
            // once a group would find it full.
            self.growth_failed_at = growing.from_room;
            return;
        };
        let caught_up = match self.state.read() {
            Ok(state) => state.index.ids.catch_up(&mut growth),
            Err(_) => false,
        };
        if !caught_up {
            return;
        }
        let replaced = match self.state.write() {
            Ok(mut state) => state.index.ids.install_growth(growth),
            Err(_) => return,
        };
        #[cfg(test)]
        if replaced.is_ok() {
            self.sync_hooks
                .growths_installed
                .fetch_add(1, Ordering::Relaxed);
        }
        // The old table (or a growth refused) is freed here, outside the
        // lock.
        drop(replaced);
    }

    /// Frees the group buffers when the last group was far larger than
    /// usual (one large atomic append), instead of keeping them for the
    /// next: what a usual group needs is kept, up to [`KEPT_GROUP_BUFFER`].
    fn trim_buffers(&mut self) {
        if self.buf.capacity() > KEPT_GROUP_BUFFER {
            self.buf = Vec::new();
        }
        if self.sealed_bytes.capacity() > KEPT_GROUP_BUFFER {
            self.sealed_bytes = GroupBytes::default();
            self.sealed = Vec::new();
        }
    }

    /// Cuts the zeros written ahead of the current segment's end.
    fn cut_preallocated(&mut self) -> Result<(), StoreError> {
        if self.allocated > self.end {
            cut_to(&self.segment.file, self.end, "cut preallocated space")?;
            self.allocated = self.end;
        }
        Ok(())
    }

    /// Records the durable head in the watermark file. A failure loses
    /// nothing (it only weakens the next open's check).
    fn record_watermark(&mut self, sync: bool) {
        let bytes = encode_watermark(self.position, &self.hash);
        if self.watermark.write_all_at(&bytes, 0).is_ok() {
            if sync {
                let _ = self.watermark.sync_data();
            }
            self.watermark_position = self.position;
        }
        self.watermark_at = Instant::now();
    }

    /// Commits `group`, of `group_events` events.
    fn commit_group(&mut self, group: Vec<Commit>, group_events: usize) -> bool {
        let now_us = Utc::now().timestamp_micros();
        let recorded_us = now_us.max(self.last_recorded_us);
        let recorded_at =
            DateTime::<Utc>::from_timestamp_micros(recorded_us).unwrap_or_else(Utc::now);
        self.buf.clear();
        // Each staged append's reply, result and requests (handed back with
        // the answer: `Reply::send_back`).
        let mut staged: Vec<(Reply, Vec<Appended>, Vec<AppendRequest>)> = Vec::new();
        let mut times = WriterTimes::default();
        let cpu_started = thread_cpu_ns();
        let started = Instant::now();
        // The first group after an open from the snapshot reads its ids,
        // unless every id of it was minted by its caller (a logged read on
        // an open that only reads): those are pushed after the snapshot's
        // and checked against them when the ids are read.
        let minted = group.iter().all(|c| c.minted);
        let ready = match minted || self.looks_up_in_place(&group) {
            true => Ok(()),
            false => ids_ready(&self.state, &self.ids_loader, &self.dir),
        };
        if let Err(e) = ready {
            // Each append is told (a corrupt log as corrupt); the next
            // group tries again.
            let each = || match &e {
                StoreError::Corrupt { location, what } => StoreError::Corrupt {
                    location: location.clone(),
                    what: what.clone(),
                },
                e => StoreError::Io {
                    during: "read the index's event ids",
                    source: e.to_string().into(),
                },
            };
            for c in group {
                c.reply.send_back(Err(each()), c.requests);
            }
            return true;
        }
        // A large group's frames are written a piece at a time on a thread
        // of their own while the rest of it is sealed ([`Pieces`]), when it
        // goes at the end of the current segment (no roll first).
        let segment = self.segment.clone();
        let (stage, pieces) =
            if group_events >= STREAMED_GROUP_EVENTS && self.end < self.segment_bytes {
                let base = self.end;
                // One append alone in its group: its written bytes are let
                // go as it is sealed (should it be refused, the group is
                // empty; with others, the group is framed again whole).
                let let_go = group.len() == 1;
                std::thread::scope(|scope| {
                    let mut pieces = Pieces::start(scope, &segment.file, base, let_go);
                    let stage = self.stage_group(group, recorded_at, &mut staged, pieces.as_mut());
                    #[cfg(test)]
                    if let Some(p) = &pieces {
                        self.sync_hooks
                            .let_go
                            .fetch_max(p.let_go_below, Ordering::Relaxed);
                    }
                    (stage, pieces.map(Pieces::finish))
                })
            } else {
                (
                    self.stage_group(group, recorded_at, &mut staged, None),
                    None,
                )
            };
        let Some(stage) = stage else {
            return false;
        };
        let (framed, streamed) = match pieces {
            None => (0, 0),
            Some(PiecesDone::Written { framed, bytes }) => (framed, bytes),
            // Pieces of an append refused part-way through its sealing:
            // cut off, and the group written whole below.
            Some(PiecesDone::Void) => {
                self.cut_back();
                (0, 0)
            }
            Some(PiecesDone::Failed(e)) => {
                self.cut_back();
                (self.sealed, self.sealed_bytes) = (stage.sealed, stage.bytes);
                super::fail_group(staged.into_iter().map(|(reply, ..)| reply), &e);
                return false;
            }
        };
        times.stage_ns = ns_since(started);
        let started = Instant::now();
        let (position, hash) = (stage.position, stage.hash);
        let (recorded_floor_us, presealed) = (stage.recorded_floor_us, stage.adopted);
        if stage.sealed.is_empty() {
            (self.sealed, self.sealed_bytes) = (stage.sealed, stage.bytes);
            return true;
        }
        // Room for the group's frames at once, up to a piece: grown by
        // doubling instead, a large append (an import of a million lines)
        // would copy its frames about once more and fault in about twice
        // their memory.
        let frames_len = stage.bytes.len() + stage.sealed.len() * frame::FRAME_OVERHEAD;
        self.buf
            .reserve(frames_len.min(GROUP_PIECE + frame::MAX_FRAME));
        let mut piece_ns = 0;
        let written = match framed {
            0 => self.begin_group(),
            _ => Ok(()),
        }
        .and_then(|()| self.frame_group(&stage, framed, streamed, &mut piece_ns));
        (self.sealed, self.sealed_bytes) = (stage.sealed, stage.bytes);
        times.frame_ns = ns_since(started).saturating_sub(piece_ns);
        // The group's length: the pieces written and the last, framed.
        let group_len = written.as_ref().map_or(0, |w| w + self.buf.len());
        // A large group is written back while it is indexed; one written
        // as it was sealed is synced first (readers are not held for its
        // long fdatasync).
        let beside = (LARGE_GROUP_EVENTS..STREAMED_GROUP_EVENTS).contains(&self.sealed.len());
        let result = written.and_then(|w| self.end_group(w, group_len, &mut times, beside));
        times.write_ns += piece_ns;
        if let Err(e) = result {
            super::fail_group(staged.into_iter().map(|(reply, ..)| reply), &e);
            return false;
        }
        let started = Instant::now();
        // The events still expected after this group: the table is grown
        // for them too, once, instead of doubling as they come.
        let group = self.sealed.len();
        let expected = self.expected.load(Ordering::Relaxed);
        let then = usize::try_from(expected.saturating_sub(group as u64)).unwrap_or(usize::MAX);
        self.grow_ids_ahead(group, then, expected > 0);
        let lock = self.state.clone();
        let Ok(mut state) = lock.write() else {
            if beside {
                let _ = self.sync_group();
            }
            for (reply, ..) in staged {
                reply.send(Err(StoreError::WriterStopped));
            }
            return false;
        };
        let pushed = self.push_group(&mut state, group_len);
        let mut sync_ns = 0;
        if beside {
            // The group was written back while it was indexed; until it
            // is known durable, the lock keeps every reader from it.
            let waited = Instant::now();
            let synced = self.sync_group();
            sync_ns = ns_since(waited);
            if let Err(e) = synced {
                // What the index now holds past the durable end is not on
                // disk: no reader may see it (`State::unsynced`).
                state.unsynced = true;
                drop(state);
                super::fail_group(staged.into_iter().map(|(reply, ..)| reply), &e);
                return false;
            }
        }
        drop(state);
        if let Err(what) = pushed {
            for (reply, ..) in staged {
                reply.send(Err(StoreError::Internal(what.clone())));
            }
            return false;
        }
        self.end += group_len as u64;
        self.bulk_written |= group >= LARGE_GROUP_EVENTS;
        self.position = position;
        self.hash = hash;
        self.last_recorded_us = recorded_floor_us;
        self.head_tx.send_replace(position);
        // Less expected now (a caller's new figure, stored meanwhile,
        // is left as it is); nothing to count down for most groups.
        if expected > 0 {
            let _ = self.expected.compare_exchange(
                expected,
                expected.saturating_sub(group as u64),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        // The group's times are added before it is answered, so that
        // whoever waits for the answer finds them counted.
        times.publish_ns = ns_since(started).saturating_sub(sync_ns);
        times.sync_ns += sync_ns;
        times.cpu_ns = thread_cpu_ns().saturating_sub(cpu_started);
        times.groups = 1;
        times.events = self.sealed.len() as u64;
        times.presealed = presealed as u64;
        self.clock.add(&times);
        for (reply, appended, requests) in staged {
            reply.send_back(Ok(appended), requests);
        }
        true
    }

    /// Puts the group's frames, written at the segment's end and
    /// `group_len` bytes long, in the index. `Err` (a bug: the writer
    /// checked the group, versions and ids, and wrote it where the
    /// segment's frames end) says what the index refused; the group is
    /// then on disk but not acknowledged, and the writer stops: a reopen
    /// indexes it from the segment.
    fn push_group(&self, state: &mut State, group_len: usize) -> Result<(), String> {
        let base = self.end;
        let seg_no = (state.segments.len() - 1) as u32;
        let last = self.sealed.len() - 1;
        // The head's hash, the group's last event's: its bytes are held
        // (those of the events written as the group was sealed may not be).
        let hash = self.sealed[last].hash(&self.sealed_bytes);
        // Each frame follows the one before it in the group.
        let mut start = 0u64;
        for (i, sealed) in self.sealed.iter().enumerate() {
            if i % ids::PREFETCH_IDS == 0 && state.index.later.is_none() {
                // The pushes' table memory, fetched together (the table
                // they go to only: not the files' filters, which the
                // group's check probed already).
                let ids = &state.index.ids;
                let next = self.sealed[i..].iter().take(ids::PREFETCH_IDS);
                ids.prefetch_pushes(next.map(|s| ids.fingerprint(&s.event.event_id)));
            }
            let meta = frame_meta(sealed, i == last);
            let len = frame::FRAME_OVERHEAD + sealed.range.len();
            let loc = Loc {
                offset: base + start,
                len: len as u32,
                seg: seg_no,
            };
            start += len as u64;
            if let Err(what) = state.index.push(&meta, loc, hash) {
                debug_assert!(false, "the index refused a written frame: {what}");
                return Err(format!(
                    "the index refused the frame just written at offset {} of {} ({what}); it is on disk but was not acknowledged: reopen the store",
                    loc.offset,
                    self.segment.path.display()
                ));
            }
        }
        debug_assert_eq!(start, group_len as u64, "the frames fill the group");
        // The group's ids were each read and compared where the index had
        // their fingerprint (`stored_position`): a fingerprint shared here
        // is two ids.
        state.index.shared.clear();
        Ok(())
    }

    /// The fdatasync of a group whose writeback `end_group` started
    /// ([`LARGE_GROUP_EVENTS`]). On error, cuts the segment back to its
    /// last durable end (best effort).
    fn sync_group(&mut self) -> Result<(), StoreError> {
        #[cfg(test)]
        self.sync_hooks.at_sync();
        let result = self.segment.file.sync_data().map_err(io("fdatasync"));
        #[cfg(test)]
        let result = match self.sync_hooks.fail.swap(false, Ordering::Relaxed) {
            true => Err(io("fdatasync")(std::io::Error::other(
                "an fdatasync failure made by a test",
            ))),
            false => result,
        };
        if result.is_err() {
            self.cut_back();
        }
        result
    }

    /// Whether the ids of `group` are looked up in place in the snapshot
    /// that still holds the log's ([`LaterIds::sorted`]) rather than read
    /// first: the ids it will look up, an estimate, fit the budget of
    /// look-ups in place ([`in_place_budget`], where they are counted as
    /// a block read each: the writer looks its ids up one at a time),
    /// and the ids after the snapshot are at most [`IN_PLACE_TAIL_MOST`]
    /// (the group's look-ups put them in a map). Every id of an append
    /// that its caller minted is looked up by none (as in a group of
    /// minted ids alone: checked against the snapshot's when the ids are
    /// read); of one whose caller looked its ids up in this log
    /// ([`IdsChecked`]) and that the events stored since let the writer
    /// test ([`absent_after_within`]), those it did not, and about one in
    /// 32 of the rest (those whose fingerprint's bit an event stored since
    /// set: [`Committed::absent_after`]); of any other append, every one.
    fn looks_up_in_place(&self, group: &[Commit]) -> bool {
        let Ok(state) = self.state.read() else {
            return false;
        };
        let Some(later) = &state.index.later else {
            return false;
        };
        let head = state.index.head();
        if later.tail.len() > IN_PLACE_TAIL_MOST {
            return false;
        }
        let looked_up: usize = group
            .iter()
            .filter(|c| !c.minted)
            .map(|c| {
                let events = c.requests.iter().map(|r| r.events.len()).sum::<usize>();
                match &c.checked {
                    Some(checked)
                        if checked.seen.log() == state.token
                            && checked.made_of(&c.requests, events)
                            && absent_after_within(head, checked.seen.through(), events)
                            && head - checked.seen.through() <= later.tail.len() as u64 =>
                    {
                        checked.unchecked.len() + events / 32 + 1
                    }
                    _ => events,
                }
            })
            .sum();
        later.take_budget(looked_up, head) && later.sorted().is_some()
    }

    /// Checks each append of `group` against the log and the group so far
    /// and seals it onto the group (`staged`: each staged append's reply,
    /// result and requests; a refused one is answered here). `pieces`, if
    /// any, is shown the sealed events after each request and told after
    /// each append how many stay sealed. `None` if the index's lock is
    /// poisoned (every append answered).
    fn stage_group(
        &mut self,
        group: Vec<Commit>,
        recorded_at: DateTime<Utc>,
        staged: &mut Vec<(Reply, Vec<Appended>, Vec<AppendRequest>)>,
        mut pieces: Option<&mut Pieces<'_>>,
    ) -> Option<GroupStage> {
        let state = self.state.clone();
        let Ok(state) = state.read() else {
            for c in group {
                c.reply.send(Err(StoreError::WriterStopped));
            }
            return None;
        };
        // The index numbers positions up to `max_events`: a group past it
        // is refused here, before anything is written.
        let mut stage = GroupStage::new(self.position, self.hash)
            .with_buffers(
                std::mem::take(&mut self.sealed),
                std::mem::take(&mut self.sealed_bytes),
            )
            .with_value_limit(frame::MAX_FRAME - frame::META_LEN)
            .with_position_limit(state.index.max_events)
            .with_recorded_floor(self.last_recorded_us);
        let mut committed = SegmentCommitted::of(&state);
        for mut commit in group {
            committed.minted = commit.minted;
            let after = AfterSeal {
                hand_back: commit.hand_back.as_ref(),
                sealed: pieces.as_deref_mut().map(|p| p as &mut dyn SealedSink),
                stop: None,
                checked: commit.checked.as_ref(),
            };
            let result = stage.stage_presealed(
                &mut commit.requests,
                commit.presealed.as_mut(),
                &mut committed,
                recorded_at,
                after,
            );
            if let Some(p) = pieces.as_deref_mut() {
                p.kept(stage.sealed.len());
            }
            // A caller that sealed a prefix only seals its next append from
            // where this one ends: told now, before the write (it is only
            // adopted where the log then is). A refused append's caller is
            // told nothing (the sender dropped).
            if let Some(staged) = commit.presealed.as_mut().and_then(|p| p.staged.take()) {
                if result.is_ok() {
                    let _ = staged.send(Head {
                        position: stage.position,
                        hash: stage.hash,
                    });
                }
            }
            match result {
                Ok(appended) => staged.push((commit.reply, appended, commit.requests)),
                Err(e) => commit.reply.send_back(Err(e), commit.requests),
            }
        }
        Some(stage)
    }

    /// Frames the group's sealed events into the group buffer, the last
    /// with the group-end flag, writing the buffer a piece at a time when
    /// it holds more than [`GROUP_PIECE`] bytes (the fdatasync after the
    /// last piece makes them durable together; a group cut short by a
    /// crash has no group end, as a torn single write, and is cut off at
    /// open), so that a large group is not held twice, as sealed bytes and
    /// as frames. Starts at sealed event `from`, `written` bytes into the
    /// group (what [`Pieces`] wrote while the group was sealed). Returns
    /// the bytes written in pieces, `written` included; the last piece is
    /// left in the buffer. `piece_ns`: time spent writing pieces.
    fn frame_group(
        &mut self,
        stage: &GroupStage,
        from: usize,
        mut written: usize,
        piece_ns: &mut u64,
    ) -> Result<usize, StoreError> {
        let last = stage.sealed.len() - 1;
        for (i, sealed) in stage.sealed.iter().enumerate().skip(from) {
            if self.buf.len() >= GROUP_PIECE {
                let piece = Instant::now();
                let result = self.write_piece(written);
                *piece_ns += ns_since(piece);
                result?;
                written += self.buf.len();
                self.buf.clear();
            }
            let meta = frame_meta(sealed, i == last);
            encode_frame(&mut self.buf, &meta, &stage.bytes[sealed.range.clone()]);
        }
        Ok(written)
    }

    /// Rolls to a new segment when the current one is full: where the
    /// next group goes.
    fn begin_group(&mut self) -> Result<(), StoreError> {
        if self.end >= self.segment_bytes {
            // A segment that is not the last ends at its last group.
            self.cut_preallocated()?;
            let seg = Arc::new(create_segment(&self.dir, self.position + 1)?);
            self.state
                .write()
                .map_err(|_| StoreError::WriterStopped)?
                .segments
                .push(seg.clone());
            let closed = std::mem::replace(&mut self.segment, seg);
            if std::mem::take(&mut self.bulk_written) {
                self.bulk_cached.push_back(closed);
            }
            for old in past_bulk_cache(&mut self.bulk_cached) {
                drop_from_page_cache(&old.file);
                #[cfg(test)]
                if let Ok(mut dropped) = self.sync_hooks.dropped.lock() {
                    dropped.push(old.path.clone());
                }
            }
            self.end = 0;
            self.allocated = 0;
        }
        Ok(())
    }

    /// Writes the group buffer, a piece of a large group that is not its
    /// last, `at` bytes into the group. On error, cuts the segment back to
    /// its last durable end (best effort).
    fn write_piece(&mut self, at: usize) -> Result<(), StoreError> {
        let written = self
            .segment
            .file
            .write_all_at(&self.buf, self.end + at as u64)
            .map_err(io("append"));
        if written.is_err() {
            self.cut_back();
        }
        written
    }

    /// Writes the group buffer (the group's last piece, `at` bytes into a
    /// group of `len` bytes) at the end of the segment, then fdatasyncs the
    /// group, or with `beside` only starts its writeback (`sync_group`
    /// follows). On error, cuts the segment back to its
    /// last durable end (best effort).
    fn end_group(
        &mut self,
        at: usize,
        len: usize,
        times: &mut WriterTimes,
        beside: bool,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let file = &self.segment.file;
        let need = self.end + len as u64;
        // Grow by zeros ahead of a small group, within the segment size.
        let ahead = if need > self.allocated && len <= PREALLOC_MAX_GROUP {
            PREALLOC_BYTES.min(self.segment_bytes.saturating_sub(need))
        } else {
            0
        };
        let written = file
            .write_all_at(&self.buf, self.end + at as u64)
            .and_then(|()| match ahead {
                0 => Ok(()),
                n => file.write_all_at(&ZEROS[..n as usize], need),
            })
            .map_err(io("append"));
        times.write_ns = ns_since(started);
        let started = Instant::now();
        let result = written.and_then(|()| match beside {
            true => {
                start_write_back(file, self.end, len);
                Ok(())
            }
            false => file.sync_data().map_err(io("fdatasync")),
        });
        times.sync_ns = ns_since(started);
        match result {
            Ok(()) => self.allocated = self.allocated.max(need + ahead),
            Err(_) => self.cut_back(),
        }
        result
    }

    /// Cuts the segment back to its last durable end after a failed write
    /// (best effort: a reopen cuts a group without its end anyway).
    fn cut_back(&mut self) {
        let _ = self.segment.file.set_len(self.end);
        self.allocated = self.end;
    }
}

/// Tests: what the writer does at the fdatasync after a large group's
/// pushes ([`LARGE_GROUP_EVENTS`]), the index's write lock held.
#[cfg(test)]
#[derive(Default)]
struct SyncHooks {
    /// The next such fdatasync fails.
    fail: AtomicBool,
    /// The most bytes of a group [`Pieces`] let go of (the offset below
    /// which they were let go), over the groups written as sealed.
    let_go: std::sync::atomic::AtomicUsize,
    /// At the next such fdatasync the writer says so on the first channel
    /// and waits for a word on the second.
    gate: Gate,
    /// The next spill of the ids says so on the first channel and waits
    /// for a word on the second before it writes its run.
    spill_gate: Gate,
    /// The next spill of the ids fails (as a run that cannot be written).
    spill_fail: AtomicBool,
    /// The next spill of the stream lists says so on the first channel
    /// and waits for a word on the second before it takes any list.
    list_spill_gate: Gate,
    /// The next spill of the stream lists fails (as a file that cannot be
    /// written).
    list_spill_fail: AtomicBool,
    /// The next merge of the runs of ids says so on the first channel and
    /// waits for a word on the second before it writes its run.
    merge_gate: Gate,
    /// The next merge of the runs of ids fails (as a run that cannot be
    /// written).
    merge_fail: AtomicBool,
    /// A snapshot was written with the frame lengths copied from the old
    /// one ([`snapshot::Lens::Copied`]).
    lens_copied: AtomicBool,
    /// A copy of the old snapshot's frame lengths was refused
    /// ([`snapshot::Uncopied::Lengths`]).
    lens_refused: AtomicBool,
    /// The next growth of the id table apart says so on the first
    /// channel and waits for a word on the second before it copies any
    /// fingerprint.
    growth_gate: Gate,
    /// Every growth of the id table apart fails while it is set.
    growth_fail: AtomicBool,
    /// Growths of the id table apart begun (their threads started).
    growths_begun: std::sync::atomic::AtomicUsize,
    /// Growths of the id table apart put in.
    growths_installed: std::sync::atomic::AtomicUsize,
    /// The segments dropped from the page cache
    /// ([`BULK_CACHED_SEGMENTS`]), in order.
    dropped: Mutex<Vec<PathBuf>>,
    /// The writer waits for each spill of the stream lists as soon as it
    /// has begun it (as it did before they were spilled on a thread of
    /// their own): where a test counts what the writer holds.
    list_spill_joined: AtomicBool,
    /// The writer is at a group, from taking it to the end of what it
    /// does after (spills begun, and joined with `list_spill_joined`):
    /// an append's answer comes while it is still set
    /// ([`index_tests::writer_settled`]).
    busy: AtomicBool,
}

/// Tests: where a thread says it has got to (the first channel) and
/// waits for a word to go on (the second), once.
#[cfg(test)]
type Gate = Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>;

#[cfg(test)]
impl SyncHooks {
    fn at_sync(&self) {
        Self::pass(&self.gate);
    }

    /// Says so on a gate set, and waits for the word to go on.
    fn pass(gate: &Gate) {
        let gate = gate.lock().ok().and_then(|mut g| g.take());
        if let Some((reached, release)) = gate {
            let _ = reached.send(());
            let _ = release.recv();
        }
    }

    /// At a growth of the id table apart, before it copies anything:
    /// `Err` when it is to fail.
    fn at_growth(&self) -> Result<(), String> {
        self.growths_begun.fetch_add(1, Ordering::Relaxed);
        Self::pass(&self.growth_gate);
        match self.growth_fail.load(Ordering::Relaxed) {
            true => Err("a growth made to fail".into()),
            false => Ok(()),
        }
    }

    /// At a spill, before it writes anything (the ids' run, or takes any
    /// of the stream lists): `Err` when it is to fail.
    fn at_spill(&self, of: SpillOf) -> Result<(), String> {
        let (gate, fail) = match of {
            SpillOf::Ids => (&self.spill_gate, &self.spill_fail),
            SpillOf::Lists => (&self.list_spill_gate, &self.list_spill_fail),
            SpillOf::Merge => (&self.merge_gate, &self.merge_fail),
        };
        Self::pass(gate);
        match fail.swap(false, Ordering::Relaxed) {
            true => Err("a spill failed (test)".into()),
            false => Ok(()),
        }
    }
}

/// The committed log as the segment writer sees it while staging a group:
/// the in-memory index (read-locked for the group), and the segments to
/// read an id from when its fingerprint is in the index.
struct SegmentCommitted<'a> {
    index: &'a Index,
    segments: &'a [Arc<Segment>],
    /// The log's token ([`State::token`]).
    log: Uuid,
    /// The append being staged is of ids its caller minted
    /// ([`Commit::minted`]).
    minted: bool,
    /// The ids after the snapshot that still holds the log's, and their
    /// positions, put in a map once the group has looked [`TAIL_SCANS`]
    /// ids up in place ([`stored_in_place`]), and how many it has.
    tail: Option<HashMap<Uuid, u64, IdHash>>,
    tail_scans: usize,
}

/// Look-ups in place of a group that scan the ids after the snapshot one
/// by one ([`SegmentCommitted::tail`]) before it puts them in a map: a
/// scan compares 16 bytes an id (0.3 ms for the 262,144 a snapshot lets
/// follow it), the map takes about 40 bytes an id to build.
const TAIL_SCANS: usize = 8;

/// Whether [`Committed::absent_after`] tests an append of `events` events
/// against the ids stored after a look-up that saw the log through
/// `through`, the log now at `head`: at most [`ABSENT_AFTER_MOST`] of
/// them, and [`ABSENT_AFTER_PER_EVENT`] for each event of the append.
fn absent_after_within(head: u64, through: u64, events: usize) -> bool {
    let most = ABSENT_AFTER_MOST.min((events as u64).saturating_mul(ABSENT_AFTER_PER_EVENT));
    through <= head && head - through <= most
}

impl<'a> SegmentCommitted<'a> {
    /// The log as `state` holds it.
    fn of(state: &'a State) -> SegmentCommitted<'a> {
        SegmentCommitted {
            index: &state.index,
            segments: &state.segments,
            log: state.token,
            minted: false,
            tail: None,
            tail_scans: 0,
        }
    }
}

impl Committed for SegmentCommitted<'_> {
    fn committed_version(&mut self, stream: StreamId) -> Result<u64, StoreError> {
        Ok(self.index.stream_version(&stream))
    }

    /// While the snapshot still holds the ids, an id of an append not
    /// minted by its caller is looked up there in place (the writer chose
    /// to: [`Writer::looks_up_in_place`]), and among the ids after
    /// it; a minted one is not looked up (its append is checked against
    /// the snapshot's ids when they are read).
    fn stored_position(&mut self, event_id: Uuid) -> Result<Option<u64>, StoreError> {
        match &self.index.later {
            None => stored_at(self.index, self.segments, &event_id),
            Some(_) if self.minted => Ok(None),
            Some(later) => {
                let head = self.index.head();
                self.tail_scans += 1;
                let tail = match self.tail_scans > TAIL_SCANS {
                    true => Tail::Map(self.tail.get_or_insert_with(|| later.tail_positions(head))),
                    false => Tail::Scan,
                };
                stored_in_place(self.index, self.segments, later, tail, &event_id)
            }
        }
    }

    /// A bitmap of the fingerprints of the ids after what `seen` saw of
    /// this log (the table's, and the frozen table's while it spills:
    /// [`Ids::fps_after`]), when there are at most [`ABSENT_AFTER_MOST`]
    /// of them, and at most [`ABSENT_AFTER_PER_EVENT`] for each event of
    /// the append: usually the batch written while the caller planned. An
    /// id whose fingerprint's bit is clear is none of theirs. One bit a
    /// fingerprint in about 32, not the runs' Bloom filter
    /// (`sorted_ids::Filter`: 16 bits an id, 8 set for each): this set, a
    /// batch or two, is built anew for every append, and one bit is the
    /// cheapest to set and test; about one id in 32 is looked up for
    /// nothing.
    fn absent_after(&mut self, seen: Seen, events: usize) -> Option<super::AbsentAfter> {
        let index = self.index;
        let (head, through) = (index.head(), seen.through());
        if seen.log() != self.log || !absent_after_within(head, through, events) {
            return None;
        }
        let mut fps = Vec::with_capacity((head - through) as usize);
        let held = match &index.later {
            None => index.ids.fps_after(u32::try_from(through).ok()?, &mut fps),
            // The ids after the snapshot, in order: those after `through`.
            Some(later) => {
                let after = later.tail.len().checked_sub((head - through) as usize)?;
                let hasher = index.ids.hasher();
                fps.extend(later.tail[after..].iter().map(|id| hasher.hash_one(id)));
                true
            }
        };
        // One fingerprint for each event after it, or none is ruled out.
        if !held || fps.len() as u64 != head - through {
            return None;
        }
        // About 32 bits a fingerprint: one id in 32 or fewer is looked up
        // again for nothing.
        let bits = (fps.len() * 32).next_power_of_two().max(64);
        let mask = bits as u64 - 1;
        let mut words = vec![0u64; bits / 64];
        for fp in fps {
            words[((fp & mask) / 64) as usize] |= 1 << (fp % 64);
        }
        let hasher = index.ids.hasher().clone();
        Some(Box::new(move |id: &Uuid| {
            let fp = std::hash::BuildHasher::hash_one(&hasher, id) & mask;
            words[(fp / 64) as usize] & (1 << (fp % 64)) == 0
        }))
    }

    /// The memory of the ids' look-ups, fetched together
    /// ([`Ids::prefetch`]).
    fn ahead<'e>(&mut self, ids: impl Iterator<Item = &'e Uuid>) {
        if self.index.later.is_none() {
            let map = &self.index.ids;
            map.prefetch(ids.map(|id| map.fingerprint(id)));
        }
    }
}

/// Reads the frames `wanted` (as [`read_runs`], each header CRC-checked
/// and checked against `asked`) and notes the position of each whose
/// event id is one of `ids`; nothing else of a frame is decoded.
fn ids_in_runs(
    buf: &mut Vec<u8>,
    wanted: &Wanted,
    asked: Asked<'_>,
    ids: &[Uuid],
    found: &mut HashMap<Uuid, u64>,
) -> Result<(), StoreError> {
    let mut i = 0;
    for_each_run(buf, wanted, |seg, frames, run| {
        let mut at = 0usize;
        for &(p, loc) in frames {
            let bytes = &run[at..];
            let (meta, _, len) = decode_frame(bytes)
                .map_err(|e| corrupt(&seg.path, Some(loc.offset), e.to_string()))?;
            if meta.position != p {
                // The error a read of the frame gives.
                decode_at(seg, loc.offset, bytes, p)?;
            }
            asked.check(i, meta.stream, meta.version, meta.event_id, (seg, loc, p))?;
            if ids.contains(&meta.event_id) {
                found.insert(meta.event_id, p);
            }
            i += 1;
            at += len;
        }
        Ok(())
    })
}

/// Hands each run of `wanted` (position, where, segment) that lies back to
/// back in one segment to `each`, read with one `pread` into `buf`: the
/// run's frames and their bytes, in order. `buf` is only grown, never
/// zeroed again (the `pread` fills what is read), so a buffer kept between
/// calls costs nothing to reuse.
fn for_each_run(
    buf: &mut Vec<u8>,
    wanted: &Wanted,
    mut each: impl FnMut(&Segment, &[(u64, Loc)], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let frames = &wanted.frames;
    let mut i = 0;
    while i < frames.len() {
        let (p, first) = frames[i];
        let seg = wanted.segment(first.seg).ok_or_else(|| {
            StoreError::Internal(format!("position {p}: its segment is not held"))
        })?;
        let mut end = first.offset + first.len as u64;
        let mut j = i + 1;
        while j < frames.len() && frames[j].1.seg == first.seg && frames[j].1.offset == end {
            end += frames[j].1.len as u64;
            j += 1;
        }
        let len = (end - first.offset) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let run = &mut buf[..len];
        seg.file
            .read_exact_at(run, first.offset)
            .map_err(io("read"))?;
        each(seg, &frames[i..j], run)?;
        i = j;
    }
    Ok(())
}

/// Reads the frames `wanted` (position, where, segment), in order: one
/// `pread` for each run of frames that lie back to back in one segment (a
/// page of `read_all` is usually one read, and so is a pupil's stream when
/// it was imported in one piece).
/// Each frame is checked against what the read `asked` for.
fn read_runs(wanted: Wanted, asked: Asked<'_>) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::with_capacity(wanted.len());
    for_each_run(&mut Vec::new(), &wanted, |seg, frames, run| {
        let mut at = 0usize;
        for &(p, loc) in frames {
            let (event, len) = decode_at(seg, loc.offset, &run[at..], p)?;
            asked.check(
                out.len(),
                event.stream,
                event.version,
                event.event_id,
                (seg, loc, p),
            )?;
            at += len;
            out.push(event);
        }
        Ok(())
    })?;
    Ok(out)
}

/// What a read asked the index for, checked against each frame it reads:
/// the index's stream lists and id map may come from an index snapshot,
/// and must never hand over another stream's events or another id's.
#[derive(Clone, Copy)]
enum Asked<'a> {
    /// Positions (`read_all`): the frame's position is checked, as always.
    Positions,
    /// A stream's versions, from the given one on, one a frame.
    Stream(StreamId, u64),
    /// Frames whose ids have these ids' fingerprints under this hashing,
    /// one a frame, in the frames' order (a frame may hold another id
    /// with the same fingerprint: the caller keeps those that match).
    Ids(&'a [Uuid], &'a IdHash),
}

impl Asked<'_> {
    /// Whether the `i`th frame read (of `stream`, `version`, `event_id`,
    /// at `position` in `seg` at `loc`) is the one asked for.
    fn check(
        &self,
        i: usize,
        stream: StreamId,
        version: u64,
        event_id: Uuid,
        (seg, loc, position): (&Segment, Loc, u64),
    ) -> Result<(), StoreError> {
        let what = match *self {
            Asked::Stream(s, first) if (stream, version) != (s, first + i as u64) => "stream",
            Asked::Ids(ids, hash)
                if ids.get(i).map(|id| hash.hash_one(id)) != Some(hash.hash_one(event_id)) =>
            {
                "event id"
            }
            _ => return Ok(()),
        };
        Err(corrupt(
            &seg.path,
            Some(loc.offset),
            format!("the index's {what} entry for position {position} does not match the frame there; run `casebook verify`, and remove the log's `index` file to rebuild the index from the segments"),
        ))
    }
}

/// Largest group buffer the writer keeps from one group to the next (a
/// full group of [`MAX_GROUP_EVENTS`] events of ~300 bytes is ~2.5 MB).
const KEPT_GROUP_BUFFER: usize = 8 << 20;

/// Most bytes of a group's frames held before they are written: a larger
/// group (one large atomic append) is written in pieces of about this size,
/// then fdatasync'd once.
const GROUP_PIECE: usize = 8 << 20;

/// Events in a group from which its frames are written as it is sealed
/// ([`Pieces`]): the size from which an append's events are handed back
/// too ([`super::HAND_BACK_EVENTS`]); far above a pipelined import's
/// batches, which are written whole.
const STREAMED_GROUP_EVENTS: usize = super::HAND_BACK_EVENTS;

/// A large group's frames, written a piece at a time on a thread of its
/// own while the writer seals the rest of the group: the sealing (the
/// chain hash, serial) and the copying into the page cache each took
/// about half of a large import's write. Each piece is framed from events
/// already sealed but the newest (the group's last frame, which carries
/// its end, is framed after the group is sealed, with the rest), written
/// after the ones before it in the group, and its write-back started
/// (`sync_file_range`, so that the fdatasync after the last piece has
/// less left to wait for). Nothing is durable, or acknowledged, before
/// that fdatasync, as for a group written at once; a crash before it
/// leaves a group without its end, cut off at open.
struct Pieces<'scope> {
    /// Pieces to write: (offset in the group, frames).
    to_write: std::sync::mpsc::SyncSender<(u64, Vec<u8>)>,
    /// Buffers written, for the next pieces.
    written: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::ScopedJoinHandle<'scope, Result<(), StoreError>>,
    /// Sealed events framed into pieces so far.
    framed: usize,
    /// Bytes of those frames.
    bytes: usize,
    /// An append whose events were framed was refused while sealing (its
    /// sealed events cut off): what was written is void.
    void: bool,
    /// The group is one append: the bytes of the events written may be
    /// let go ([`SealedSink::sealed`]), as a refusal leaves nothing of the
    /// group to frame again.
    let_go: bool,
    /// The offset in the group below which its bytes were let go.
    let_go_below: usize,
}

/// What came of a group's [`Pieces`].
enum PiecesDone {
    /// `framed` events in `bytes` bytes written from the group's start.
    Written { framed: usize, bytes: usize },
    /// Written, but void: the group's start must be cut back to.
    Void,
    /// A write failed (the group's start must be cut back to).
    Failed(StoreError),
}

/// Pieces in flight between the writer and the thread that writes them.
const PIECES_AHEAD: usize = 2;

/// Bytes of sealed events framed into one piece of a group written as it
/// is sealed: with the pieces in flight, a few MB more than the group's
/// sealed bytes (pieces of [`GROUP_PIECE`] held up to ~30 MB more).
const STREAMED_PIECE: usize = 2 << 20;

/// Bytes of a group's written events [`Pieces`] lets go of at a time (one
/// append alone in its group): the bytes after them, fewer than a piece
/// and a request, move to the buffer's start.
const LET_GO_BYTES: usize = if cfg!(test) { 1 << 20 } else { 16 << 20 };

impl<'scope> Pieces<'scope> {
    /// Starts the thread that writes pieces into `file` from `base` on;
    /// `None` if it cannot be started (the group is then written whole).
    fn start(
        scope: &'scope std::thread::Scope<'scope, '_>,
        file: &'scope File,
        base: u64,
        let_go: bool,
    ) -> Option<Pieces<'scope>> {
        let (to_write, pieces) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(PIECES_AHEAD);
        let (give_back, written) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("casebook-pieces".into())
            .spawn_scoped(scope, move || {
                for (at, piece) in pieces {
                    file.write_all_at(&piece, base + at).map_err(io("append"))?;
                    start_write_back(file, base + at, piece.len());
                    let _ = give_back.send(piece);
                }
                Ok(())
            })
            .ok()?;
        Some(Pieces {
            to_write,
            written,
            thread,
            framed: 0,
            bytes: 0,
            void: false,
            let_go,
            let_go_below: 0,
        })
    }

    /// After an append was staged: `sealed` events stay on the group.
    fn kept(&mut self, sealed: usize) {
        if sealed < self.framed {
            self.void = true;
        }
    }

    /// Stops the thread once it has written every piece sent.
    fn finish(self) -> PiecesDone {
        drop(self.to_write);
        let result = match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(StoreError::Internal(
                "the thread writing a group's pieces stopped".into(),
            )),
        };
        match result {
            Err(e) => PiecesDone::Failed(e),
            Ok(()) if self.void => PiecesDone::Void,
            Ok(()) => PiecesDone::Written {
                framed: self.framed,
                bytes: self.bytes,
            },
        }
    }
}

impl SealedSink for Pieces<'_> {
    fn sealed(&mut self, sealed: &[Sealed], bytes: &GroupBytes) -> Option<usize> {
        self.frame_pieces(sealed, bytes);
        // What was framed is written or in flight, never read again.
        let written = self
            .framed
            .checked_sub(1)
            .map(|last| sealed[last].range.end)?;
        if !self.let_go || self.void || written - bytes.front() < LET_GO_BYTES {
            return None;
        }
        self.let_go_below = written;
        Some(written)
    }
}

impl Pieces<'_> {
    /// Frames the sealed events but the newest into pieces of about
    /// [`STREAMED_PIECE`] bytes and sends them to be written.
    fn frame_pieces(&mut self, sealed: &[Sealed], bytes: &GroupBytes) {
        // Not the newest: the group's last frame is framed with its end.
        let ready = sealed.len().saturating_sub(1);
        while !self.void && ready > self.framed {
            let from = sealed[self.framed].range.start;
            if sealed[ready - 1].range.end - from < STREAMED_PIECE {
                return;
            }
            // About a piece's bytes of them (a large request is cut).
            let n = sealed[self.framed..ready]
                .partition_point(|s| s.range.end - from <= STREAMED_PIECE)
                .max(1);
            let events = &sealed[self.framed..self.framed + n];
            let mut piece = self.written.try_recv().unwrap_or_default();
            piece.clear();
            piece.reserve_exact(
                events.iter().map(|s| s.range.len()).sum::<usize>() + n * frame::FRAME_OVERHEAD,
            );
            for s in events {
                encode_frame(&mut piece, &frame_meta(s, false), &bytes[s.range.clone()]);
            }
            let len = piece.len();
            // A thread that stopped on a failed write is heard from at
            // `finish`.
            if self.to_write.send((self.bytes as u64, piece)).is_err() {
                return;
            }
            self.framed += n;
            self.bytes += len;
        }
    }
}

/// Starts writing `len` bytes of `file` from `at` back to disk without
/// waiting (Linux `sync_file_range`; advice only: the fdatasync that
/// follows is what makes them durable).
fn start_write_back(file: &File, at: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; it reads no
        // memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                at as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

/// Largest read buffer a thread keeps between [`visit_runs`] calls (a
/// pupil's record is ~120 KB).
const KEPT_READ_BUFFER: usize = 1 << 20;

thread_local! {
    /// The read buffer of [`visit_runs`], kept between reads: a fresh one
    /// each time was zeroed, and first touches of fresh allocator pages
    /// fault.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`read_runs`] handing each event to `visit`, borrowed from the read
/// buffer when its bytes are the encoder's own forms
/// ([`EventRef::decode_plain`]); any other bytes are decoded as
/// [`read_runs`] decodes them (the same event, or the same error). Returns
/// how many events were visited.
/// `asked` as for [`read_runs`], checked against each frame's header.
fn visit_runs(
    wanted: &Wanted,
    asked: Asked<'_>,
    visit: &mut dyn StreamVisitor,
) -> Result<usize, StoreError> {
    READ_BUFFER.with(|kept| match kept.try_borrow_mut() {
        Ok(mut buf) => {
            let done = visit_runs_in(&mut buf, wanted, asked, visit);
            if buf.capacity() > KEPT_READ_BUFFER {
                *buf = Vec::new();
            }
            done
        }
        // A visit that reads again on this thread: a buffer of its own.
        Err(_) => visit_runs_in(&mut Vec::new(), wanted, asked, visit),
    })
}

fn visit_runs_in(
    buf: &mut Vec<u8>,
    wanted: &Wanted,
    asked: Asked<'_>,
    visit: &mut dyn StreamVisitor,
) -> Result<usize, StoreError> {
    visit.expect(wanted.len());
    let mut i = 0;
    for_each_run(buf, wanted, |seg, frames, run| {
        let mut at = 0usize;
        for &(p, loc) in frames {
            let bytes = &run[at..];
            let (meta, value, len) = decode_frame(bytes)
                .map_err(|e| corrupt(&seg.path, Some(loc.offset), e.to_string()))?;
            if meta.position == p {
                asked.check(i, meta.stream, meta.version, meta.event_id, (seg, loc, p))?;
            }
            match EventRef::decode_plain(value) {
                // The event as its header says (checked above).
                Some(e)
                    if meta.position == p
                        && e.position == p
                        && (e.stream, e.version, e.event_id)
                            == (meta.stream, meta.version, meta.event_id) =>
                {
                    visit.visit(&e)?
                }
                // Anything else as `decode_at` reads it, and checked as
                // `read_runs` checks it: its event or its error.
                _ => {
                    let (event, _) = decode_at(seg, loc.offset, bytes, p)?;
                    asked.check(
                        i,
                        event.stream,
                        event.version,
                        event.event_id,
                        (seg, loc, p),
                    )?;
                    visit.visit(&event.as_event_ref())?;
                }
            }
            i += 1;
            at += len;
        }
        Ok(())
    })?;
    Ok(wanted.len())
}

// ---- reads ---------------------------------------------------------------------

/// Candidates for a look-up of event ids: each position whose id may be
/// one asked (and which), the groups of the index's locations, what the
/// look-up saw, and the hashing of the fingerprints the positions were
/// found under.
type Candidates = (Vec<(u32, Uuid)>, usize, Seen, IdHash);

impl SegmentLog {
    /// The events of `candidates` that hold the ids they were found for,
    /// and what the look-up saw.
    fn events_of(
        &self,
        (found, groups, seen, hash): Candidates,
    ) -> Result<(HashMap<Uuid, StoredEvent>, Option<Seen>), StoreError> {
        // In a sparse index each candidate's frame is found by walking its
        // group: past the walks allowed (a file whose ids are all stored
        // already), every location is read first.
        if !found.is_empty() {
            self.locations_for(found.len(), groups)?;
        }
        let (found, wanted): (Vec<Uuid>, Wanted) = {
            let state = self.read()?;
            let mut ids = Vec::with_capacity(found.len());
            let mut wanted = Wanted::with_capacity(found.len());
            for (p, id) in found {
                ids.push(id);
                state.want(&mut wanted, u64::from(p))?;
            }
            (ids, wanted)
        };
        // Each event carries the id the index found it under, or (almost
        // never) another with its fingerprint, left out; one id at two
        // positions is a corrupt log.
        let mut events = HashMap::with_capacity(found.len());
        for (e, id) in read_runs(wanted, Asked::Ids(&found, &hash))?
            .into_iter()
            .zip(&found)
        {
            if e.event_id != *id {
                continue;
            }
            let position = e.position;
            if let Some(other) = events.insert(e.event_id, e) {
                let (first, again) = (other.position.min(position), other.position.max(position));
                return Err(StoreError::Corrupt {
                    location: self.dir.display().to_string(),
                    what: format!(
                        "event id {} is already stored at position {first}, and again at {again}; run `casebook verify`",
                        other.event_id
                    ),
                });
            }
        }
        Ok((events, Some(seen)))
    }

    /// Stops the look-ups of ids in place ([`LaterIds::sorted`]).
    fn stop_in_place(&self) -> Result<(), StoreError> {
        if let Some(later) = &self.read()?.index.later {
            later.in_place_failed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// [`Candidates`] for `ids` looked up in place in the snapshot that
    /// still holds the log's ids ([`LaterIds::in_file`],
    /// [`LaterIds::in_tail`]), while the
    /// look-ups in place stay within their budget ([`in_place_budget`]);
    /// `None` when the ids are to be read first instead.
    fn in_place_candidates(&self, ids: &[Uuid]) -> Result<Option<Candidates>, StoreError> {
        let state = self.read()?;
        let Some(later) = &state.index.later else {
            return Ok(None);
        };
        let head = state.index.head();
        if !later.budget_left(head) {
            return Ok(None);
        }
        let Some(sorted) = later.sorted() else {
            return Ok(None);
        };
        let plan = later.in_file_plan(sorted, ids);
        if !later.take_budget(plan.blocks.len(), head) {
            return Ok(None);
        }
        let mut found = Vec::new();
        if later.in_file(sorted, &plan, &mut found).is_err() {
            // A block changed: the ids are read whole, which finds why.
            return Ok(None);
        }
        later.in_tail(head, ids, &mut found);
        found.sort_unstable();
        found.dedup();
        let seen = Seen::new(state.token, head);
        Ok(Some((
            found,
            state.index.locs.groups(),
            seen,
            later.snapshot.hasher(),
        )))
    }

    /// [`Candidates`] for `ids` from the index's ids, read first if they
    /// are still in the snapshot ([`ids_ready`]).
    fn candidates(&self, ids: &[Uuid]) -> Result<Candidates, StoreError> {
        ids_ready(&self.state, &self.ids_loader, &self.dir)?;
        let (found, groups, seen, hash) = {
            let state = self.read()?;
            // Usually none is stored (a fresh import): look each up, and
            // drop repeats among the few found.
            let map = &state.index.ids;
            let mut found: Vec<(u32, Uuid)> = Vec::new();
            let mut at = Vec::new();
            for chunk in ids.chunks(ids::PREFETCH_IDS) {
                map.prefetch(chunk.iter().map(|id| map.fingerprint(id)));
                for id in chunk {
                    at.clear();
                    map.candidates_into(id, &mut at).map_err(unreadable_ids)?;
                    found.extend(at.iter().map(|&p| (p, *id)));
                }
            }
            found.sort_unstable();
            found.dedup();
            let seen = Seen::new(state.token, state.index.head());
            let hash = state.index.ids.hasher().clone();
            (found, state.index.locs.groups(), seen, hash)
        };
        Ok((found, groups, seen, hash))
    }
}

#[async_trait]
impl EventStore for SegmentLog {
    async fn append_atomic(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        super::submit(self.sender.as_ref(), requests).await
    }

    async fn append_presealed(&self, presealed: Presealed) -> Result<Vec<Appended>, StoreError> {
        let (requests, sealing, checked) = presealed.into_parts();
        super::submit_with(
            self.sender.as_ref(),
            requests,
            Some(sealing),
            false,
            checked,
        )
        .await
    }

    async fn append_atomic_checked(
        &self,
        requests: Vec<AppendRequest>,
        checked: IdsChecked,
    ) -> Result<Vec<Appended>, StoreError> {
        super::submit_with(self.sender.as_ref(), requests, None, false, Some(checked)).await
    }

    async fn append_atomic_minted(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        super::submit_with(self.sender.as_ref(), requests, None, true, None).await
    }

    fn seals_ahead(&self) -> bool {
        true
    }

    fn expect_appends(&self, events: u64) {
        self.expected.store(events, Ordering::Relaxed);
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self.stream_page(stream, from_version, max)? {
            Some((first, wanted)) => read_runs(wanted, Asked::Stream(stream, first)),
            None => Ok(Vec::new()),
        }
    }

    async fn visit_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
        visit: &mut dyn StreamVisitor,
    ) -> Result<usize, StoreError> {
        match self.stream_page(stream, from_version, max)? {
            Some((first, wanted)) => visit_runs(&wanted, Asked::Stream(stream, first), visit),
            None => Ok(0),
        }
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let max = max.min(MAX_READ_PAGE);
        let from = from_position.max(1);
        // Where the page's frames are, taken under the index's lock and
        // read after it is let go: each frame's location, or, in a sparse
        // index, the spans of groups that hold them.
        let (last, page) = {
            let state = self.read()?;
            let head = state.index.head();
            if from > head || max == 0 {
                return Ok(Vec::new());
            }
            let last = head.min(from + max as u64 - 1);
            let page = match state.index.locs.is_sparse() {
                false => Ok(state.wanted(from..=last)?),
                true => Err(state.spans(from, last)?),
            };
            (last, page)
        };
        match page {
            Ok(wanted) => read_runs(wanted, Asked::Positions),
            Err(spans) => read_spans(spans, from, last),
        }
    }

    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError> {
        Ok(self.read()?.index.stream_version(&stream))
    }

    /// [`EventStore::find_events_checked`], without what it saw.
    async fn find_events(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
        Ok(self.find_events_checked(ids).await?.0)
    }

    /// One index lookup under one lock for the whole batch (the import
    /// planner's prefetch), which also reads the head ([`Seen`]): every
    /// event up to it is in the index. Only the ids whose fingerprints the
    /// log holds are read, and those frames compared with the ids asked.
    /// The candidates' frames are located under a second lock: a sparse
    /// index may read every location between the two (past its walks),
    /// and a position, once indexed, never moves.
    async fn find_events_checked(
        &self,
        ids: &[Uuid],
    ) -> Result<(HashMap<Uuid, StoredEvent>, Option<Seen>), StoreError> {
        // A few ids, while the snapshot still holds them, are looked up
        // there in place; else every id is read first. A frame that does
        // not hold an id with the fingerprint the snapshot lists it under
        // stops the look-ups in place, and the ids are read (which finds
        // the snapshot wrong, and indexes them from the segments).
        if let Some(candidates) = self.in_place_candidates(ids)? {
            match self.events_of(candidates) {
                Ok(found) => return Ok(found),
                Err(_) => self.stop_in_place()?,
            }
        }
        let candidates = self.candidates(ids)?;
        self.events_of(candidates)
    }

    /// One stream at a time, each lent from the read buffer as
    /// `visit_stream` lends it.
    async fn will_read_streams(&self, streams: &[StreamId]) -> Result<(), StoreError> {
        self.locations_for_streams(streams)
    }

    /// Each stream from its first event ([`EventStore::visit_streams_from`]).
    async fn visit_streams(
        &self,
        streams: &[StreamId],
        visit: &mut dyn StreamVisitor,
    ) -> Result<(), StoreError> {
        let whole: Vec<(StreamId, u64)> = streams.iter().map(|s| (*s, 1)).collect();
        self.visit_streams_from(&whole, visit).await
    }

    async fn will_read_streams_from(&self, streams: &[(StreamId, u64)]) -> Result<(), StoreError> {
        self.locations_for_tails(streams)
    }

    async fn visit_streams_from(
        &self,
        streams: &[(StreamId, u64)],
        visit: &mut dyn StreamVisitor,
    ) -> Result<(), StoreError> {
        self.locations_for_tails(streams)?;
        let wanted: Vec<(StreamId, u64, streams::Versions)> = {
            let state = self.read()?;
            let mut seen = std::collections::HashSet::new();
            streams
                .iter()
                .filter(|(s, _)| seen.insert(*s))
                .filter_map(|&(s, from)| {
                    let from = from.max(1);
                    let versions = state.index.streams.versions(&s, from - 1, u64::MAX)?;
                    Some((s, from, versions))
                })
                .collect()
        };
        for (stream, from, versions) in wanted {
            visit_runs(
                &self.wanted_in(versions)?,
                Asked::Stream(stream, from),
                visit,
            )?;
        }
        Ok(())
    }

    /// Every event of each stream, from one index pass under one lock;
    /// streams the log does not hold cost a lookup and nothing else.
    async fn read_streams(
        &self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, Vec<StoredEvent>>, StoreError> {
        self.locations_for_streams(streams)?;
        let wanted: Vec<(StreamId, Wanted)> = self
            .versions_of(streams)?
            .into_iter()
            .map(|(s, v)| Ok((s, self.wanted_in(v)?)))
            .collect::<Result<_, StoreError>>()?;
        let mut found = HashMap::with_capacity(wanted.len());
        for (stream, locs) in wanted {
            found.insert(stream, read_runs(locs, Asked::Stream(stream, 1))?);
        }
        Ok(found)
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self.find_events(&[event_id]).await?.remove(&event_id))
    }

    /// While the event ids are still in the snapshot, each id is looked
    /// for among the frames of its stream (read through the stream index,
    /// each frame's header checked and its id compared, nothing decoded),
    /// so that a command that only reads (a view catching up on a
    /// correction) does not read every id for a few; an id not there is
    /// looked up by id (which reads them).
    async fn positions_in_streams(
        &self,
        wanted: &[InStream],
    ) -> Result<HashMap<Uuid, u64>, StoreError> {
        let mut found = HashMap::with_capacity(wanted.len());
        let mut elsewhere = Vec::new();
        if self.event_ids_held() {
            elsewhere.extend(wanted.iter().map(|w| w.id));
        } else {
            // Per stream: its ids, and the highest version any may be below.
            let mut by_stream: HashMap<StreamId, (u64, Vec<Uuid>)> = HashMap::new();
            for w in wanted {
                let (below, ids) = by_stream.entry(w.stream).or_insert((0, Vec::new()));
                *below = (*below).max(w.below);
                ids.push(w.id);
            }
            let mut buf = Vec::new();
            for (stream, (below, ids)) in by_stream {
                // Newest first, in pages that double from 16 frames: the
                // entry a correction names is usually a recent one.
                let mut end =
                    below.min(self.read()?.index.stream_version(&stream).saturating_add(1));
                let mut size = 16u64;
                while end > 1 && ids.iter().any(|id| !found.contains_key(id)) {
                    let from = end.saturating_sub(size).max(1);
                    let Some((first, page)) =
                        self.stream_page(stream, from, (end - from) as usize)?
                    else {
                        break;
                    };
                    let asked = Asked::Stream(stream, first);
                    ids_in_runs(&mut buf, &page, asked, &ids, &mut found)?;
                    end = from;
                    size = (size * 2).min(MAX_READ_PAGE as u64);
                }
                elsewhere.extend(ids.iter().filter(|id| !found.contains_key(id)));
            }
        }
        if !elsewhere.is_empty() {
            for (id, e) in self.find_events(&elsewhere).await? {
                found.insert(id, e.position);
            }
        }
        Ok(found)
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let state = self.read()?;
        Ok(Head {
            position: state.index.head(),
            hash: state.index.head_hash,
        })
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.checkpoint_path(name)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read checkpoint", e)),
        }
    }

    /// The checkpoint's file, read as its bytes are asked for. A checkpoint
    /// is replaced by a rename (`write_atomic_with`), so the file opened
    /// here stays whole while it is read.
    async fn open_checkpoint(&self, name: &str) -> Result<Option<CheckpointReader>, StoreError> {
        let path = self.checkpoint_path(name)?;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read checkpoint", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("read checkpoint", e))?
            .len();
        Ok(Some(CheckpointReader {
            len,
            bytes: Box::new(file),
        }))
    }

    async fn save_checkpoint(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.checkpoint_path(name)?;
        write_atomic(&path, &bytes)
    }

    /// Streamed to the checkpoint's file: the bytes are never all in memory.
    async fn save_checkpoint_with(
        &self,
        name: &str,
        _size_hint: usize,
        write: CheckpointWriter<'_>,
    ) -> Result<(), StoreError> {
        let path = self.checkpoint_path(name)?;
        write_atomic_with(&path, write)
    }

    async fn clear_checkpoints(&self) -> Result<(), StoreError> {
        let dir = self.dir.join(CHECKPOINT_DIR);
        for entry in std::fs::read_dir(&dir).map_err(io("clear checkpoints"))? {
            let entry = entry.map_err(io("clear checkpoints"))?;
            std::fs::remove_file(entry.path()).map_err(io("clear checkpoints"))?;
        }
        sync_dir(&dir)
    }

    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let from = self.verify_from()?;
        self.verify_against(from, progress)
    }
}

/// What a verify checks the log against, taken under one lock: the head
/// and its hash, each segment with where the index holds its frames to,
/// and the index's entries held in files (the id runs, the stream lists'
/// file): sums of those never cover positions past the head.
struct VerifyFrom {
    head: u64,
    head_hash: Hash,
    /// Each segment, and where its frames the index holds end: it is read
    /// that far, not to the file's end, where the writer may be cutting
    /// back the pieces of a large append it refused (read there, they
    /// would vanish under the read).
    segments: Vec<(Arc<Segment>, u64)>,
    runs: Vec<Arc<sorted_ids::SortedIds>>,
    streams: Streams,
}

impl SegmentLog {
    /// [`VerifyFrom`], the event ids read first if they are still only in
    /// the snapshot.
    fn verify_from(&self) -> Result<VerifyFrom, StoreError> {
        ids_ready(&self.state, &self.ids_loader, &self.dir)?;
        // Every frame's location is checked against the index.
        locations_ready(&self.state)?;
        let state = self.read()?;
        let ends = state.index.locs.segment_ends(state.segments.len());
        let segments: Vec<(Arc<Segment>, u64)> = state.segments.iter().cloned().zip(ends).collect();
        Ok(VerifyFrom {
            head: state.index.head(),
            head_hash: state.index.head_hash,
            segments,
            runs: state.index.ids.runs().to_vec(),
            streams: state.index.streams.filed_only(),
        })
    }

    /// Verifies the log up to `from`'s head against it.
    fn verify_against(
        &self,
        from: VerifyFrom,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let VerifyFrom {
            head,
            head_hash,
            segments,
            runs,
            streams,
        } = from;
        let mut v = ChainVerifier::new();
        // Two checks run on threads of their own, a batch of frames at a
        // time, while this thread reads, decodes and links the frames: the
        // index checks (hash-map probes at random places, under one read
        // lock a batch) and the content hashes (BLAKE3 of every frame's
        // value, most of a verify's processor time).
        let state = self.state.clone();
        let (index_problems, content_problems, checked_here) = std::thread::scope(|scope| {
            let (batches, received) = std::sync::mpsc::sync_channel(4);
            let checker =
                scope.spawn(move || check_index_batches(&state, &runs, streams, received));
            // Two batches queued (~300 KB each): the hashing is the slower
            // side, so more would only hold more memory. Hashed batches come
            // back to be filled again: their memory is reused, and freed by
            // this thread, which allocated it.
            let (values, to_hash) = std::sync::mpsc::sync_channel(2);
            let (give_back, given_back) = std::sync::mpsc::channel();
            let hasher = scope.spawn(move || check_content(to_hash, give_back));
            let mut checks = Checks {
                batches,
                batch: Vec::with_capacity(VERIFY_BATCH),
                values,
                hashing: Values::default(),
                given_back,
                content: ContentCheck::default(),
            };
            let read = read_and_link(&segments, head, &mut v, &mut checks, progress);
            let checked_here = checks.finish();
            let index = checker.join().unwrap_or(Err(StoreError::WriterStopped));
            let content = hasher.join().map_err(|_| StoreError::WriterStopped);
            read?;
            Ok::<_, StoreError>((index?, content?, checked_here))
        })?;
        v.absorb(content_problems);
        v.absorb(checked_here);
        v.absorb(index_problems);
        progress(v.events());
        let last = v.expected_position().saturating_sub(1);
        if last != head {
            v.problem(
                last.min(head) + 1,
                format!("the index says the log ends at position {head}, the files at {last}"),
            );
        } else if head > 0 && v.last_hash() != head_hash {
            v.problem(head, "head hash differs from the last event's hash");
        }
        Ok(v.finish())
    }
}

/// Reads every frame of `segments` (each as far as the index holds its
/// frames) up to `head` in order, checks each
/// (CRC, [`ChainVerifier::check_links`], the frame header against the
/// event) and hands it to `checks`. Stops at the first frame that cannot be
/// read (a problem) or when a checker has stopped.
fn read_and_link(
    segments: &[(Arc<Segment>, u64)],
    head: u64,
    v: &mut ChainVerifier,
    checks: &mut Checks,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), StoreError> {
    let mut position = 0u64;
    for (seg_no, (seg, indexed)) in segments.iter().enumerate() {
        if position >= head {
            break;
        }
        // A file shorter than the index says stops the reading early,
        // which is then reported (the files end before the index does).
        let on_disk = seg.file.metadata().map_err(io("verify"))?.len();
        let file_len = on_disk.min(*indexed);
        let mut reader = SeqReader::new(&seg.file, file_len);
        let mut offset = 0u64;
        while offset < file_len && position < head {
            let bytes = reader
                .at(offset, frame::PREFIX_LEN + frame::MAX_FRAME)
                .map_err(io("verify"))?;
            let (meta, value, len) = match decode_frame(bytes) {
                Ok(f) => f,
                Err(e) => {
                    let at = format!("{} at byte {offset}: {e}", seg.path.display());
                    v.problem(position + 1, at);
                    return Ok(());
                }
            };
            position = meta.position;
            let linked = v.check_links(meta.position, value);
            if let Some(event) = &linked {
                if (event.stream, event.version, event.event_id)
                    != (meta.stream, meta.version, meta.event_id)
                {
                    v.problem(
                        meta.position,
                        "frame header disagrees with the stored event (stream, version or id)",
                    );
                }
            }
            let here = Loc {
                offset,
                len: len as u32,
                seg: seg_no as u32,
            };
            let prev_hash = linked.map(|e| e.prev_hash);
            if !checks.push(meta, here, prev_hash, value) {
                return Ok(());
            }
            offset += len as u64;
            if v.events().is_multiple_of(4096) {
                progress(v.events());
            }
        }
        // Past a segment before the last one nothing is written (the
        // writer cut it to its frames when it moved on).
        if seg_no + 1 < segments.len() && on_disk > *indexed {
            let at = format!(
                "{} at byte {indexed}: {} bytes after the last frame the index holds of it",
                seg.path.display(),
                on_disk - indexed
            );
            v.problem(position + 1, at);
        }
    }
    Ok(())
}

/// Where `verify` hands frames to its two checker threads.
struct Checks {
    batches: std::sync::mpsc::SyncSender<Vec<(FrameMeta, Loc)>>,
    batch: Vec<(FrameMeta, Loc)>,
    values: std::sync::mpsc::SyncSender<Values>,
    hashing: Values,
    given_back: std::sync::mpsc::Receiver<Values>,
    /// The content hashes this thread checked itself.
    content: ContentCheck,
}

impl Checks {
    /// Adds a frame for the index checks and, if it was decoded
    /// (`prev_hash`), its value for the content hash. `false` when a
    /// checker has stopped.
    fn push(&mut self, meta: FrameMeta, here: Loc, prev_hash: Option<Hash>, value: &[u8]) -> bool {
        if let Some(prev_hash) = prev_hash {
            self.hashing.push(meta.position, prev_hash, value);
            if self.hashing.each.len() == HASH_BATCH {
                let full = std::mem::take(&mut self.hashing);
                match self.values.try_send(full) {
                    // Refilled: a batch the hashing thread gave back, if any.
                    Ok(()) => self.hashing = self.given_back.try_recv().unwrap_or_default(),
                    // The hashing thread is behind (it is the slower side):
                    // this thread hashes the batch itself rather than wait,
                    // and refills it.
                    Err(std::sync::mpsc::TrySendError::Full(mut full)) => {
                        full.check(&mut self.content);
                        self.hashing = full;
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return false,
                }
            }
        }
        self.batch.push((meta, here));
        if self.batch.len() == VERIFY_BATCH {
            let full = std::mem::replace(&mut self.batch, Vec::with_capacity(VERIFY_BATCH));
            if self.batches.send(full).is_err() {
                return false;
            }
        }
        true
    }

    /// Hands over what is left; the checkers stop once they have checked
    /// it. Returns the problems of the content hashes checked here.
    fn finish(self) -> Problems {
        let _ = self.batches.send(self.batch);
        let _ = self.values.send(self.hashing);
        self.content.finish()
    }
}

/// Frames a verify hands to its index checker at a time.
const VERIFY_BATCH: usize = 4096;

/// Frames' values a verify hands to its content-hash checker at a time.
const HASH_BATCH: usize = 1024;

/// Frames' values for [`check_content`]: their bytes one after another,
/// and each one's position, the hash it links to and its end in `bytes`.
#[derive(Default)]
struct Values {
    bytes: Vec<u8>,
    each: Vec<(u64, Hash, usize)>,
}

impl Values {
    /// Checks every value's content hash, and empties the batch.
    fn check(&mut self, check: &mut ContentCheck) {
        let mut start = 0;
        for &(position, prev_hash, end) in &self.each {
            check.check(position, &prev_hash, &self.bytes[start..end]);
            start = end;
        }
        self.bytes.clear();
        self.each.clear();
    }

    fn push(&mut self, position: u64, prev_hash: Hash, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.each.push((position, prev_hash, self.bytes.len()));
    }
}

/// The content-hash checks of `verify` ([`ContentCheck`]), batch by batch.
/// Each batch, emptied, goes back through `give_back`.
fn check_content(
    batches: std::sync::mpsc::Receiver<Values>,
    give_back: std::sync::mpsc::Sender<Values>,
) -> Problems {
    let mut check = ContentCheck::default();
    for mut batch in batches {
        batch.check(&mut check);
        // The verify may have finished reading: then the batch is freed here.
        let _ = give_back.send(batch);
    }
    check.finish()
}

/// Positions whose entries in files `verify` sums together ([`FileSums`]).
const SUM_BLOCK: u64 = 1 << 16;

/// An id's entry for [`FileSums`]: its fingerprint and position.
fn id_entry(fp: u64, p: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&fp.to_le_bytes());
    e[8..].copy_from_slice(&p.to_le_bytes());
    e
}

/// A stream list's entry for [`FileSums`]: the stream, the version, the
/// position.
fn stream_entry(stream: &StreamId, version: u64, p: u64) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..16].copy_from_slice(stream.0.as_bytes());
    e[16..24].copy_from_slice(&version.to_le_bytes());
    e[24..].copy_from_slice(&p.to_le_bytes());
    e
}

/// `verify`'s check of index entries held in files (the snapshot's ids and
/// stream lists, spilled runs of ids, spilled stream lists) without a
/// table of them by position: for each block of [`SUM_BLOCK`] positions,
/// the sum of a keyed hash of each entry the files list, and the same sum
/// of what the frames hold. The hash is SipHash-1-3 under a key drawn for
/// each verify (std's `RandomState`), of the entry as a whole (its bytes,
/// the position among them): no file can be made to match frames it does
/// not (a hash keyed only after the entry was folded into one word could:
/// two entries folding alike match under every key). Equal sums then mean
/// equal entries but for a chance of about 2^-64 a block; a block whose
/// sums differ is checked position by position, its frames read again
/// ([`FileSums::misfiled`]). `N`: an entry's bytes.
struct FileSums<'a, const N: usize> {
    /// Each entry the files list, with its position.
    entries: Entries<'a, N>,
    /// The last position the files hold (each of 1..=len once).
    len: u64,
    key: std::collections::hash_map::RandomState,
    listed: Vec<u64>,
    found: Vec<u64>,
}

/// Hands each entry of the files, with its position, to its argument.
type Entries<'a, const N: usize> =
    Box<dyn Fn(&mut dyn FnMut(u64, [u8; N])) -> Result<(), StoreError> + 'a>;

impl<'a, const N: usize> FileSums<'a, N> {
    /// The sums of the `len` entries `entries` gives (`what` names them
    /// in the error when they are not `len`); `None` when `len` is 0.
    fn of(len: u64, what: &str, entries: Entries<'a, N>) -> Result<Option<Self>, StoreError> {
        if len == 0 {
            return Ok(None);
        }
        let blocks = len.div_ceil(SUM_BLOCK) as usize;
        let mut sums = FileSums {
            entries,
            len,
            key: std::collections::hash_map::RandomState::new(),
            listed: vec![0; blocks],
            found: vec![0; blocks],
        };
        let mut count = 0u64;
        (sums.entries)(&mut |p, entry| {
            if let Some(block) = block_of(len, p) {
                let h = mix(&sums.key, entry);
                sums.listed[block] = sums.listed[block].wrapping_add(h);
            }
            count += 1;
        })?;
        // Every position 1..=len once (checked when each file was read or
        // written).
        if count != len {
            return Err(StoreError::Internal(format!(
                "the index's {what} list {count} positions of {len}"
            )));
        }
        Ok(Some(sums))
    }

    /// Adds the entry the frame at `p` holds; `false` when `p` is not the
    /// files'.
    fn add(&mut self, entry: [u8; N], p: u64) -> bool {
        let Some(block) = block_of(self.len, p) else {
            return false;
        };
        self.found[block] = self.found[block].wrapping_add(mix(&self.key, entry));
        true
    }

    /// The positions of every block whose sums differ where the files list
    /// another entry than the frame's (`frame`: the entry a frame holds):
    /// a few blocks at a time, the files read once for each few (each
    /// listed entry kept as its keyed hash, 8 bytes), the blocks' frames
    /// read again (headers only). A frame that cannot be read is left to
    /// the chain check, which reports it.
    fn misfiled(
        &self,
        state: &RwLock<State>,
        frame: impl Fn(&State, &FrameMeta) -> [u8; N],
    ) -> Result<Vec<u64>, StoreError> {
        let bad: Vec<usize> = (0..self.listed.len())
            .filter(|&b| self.listed[b] != self.found[b])
            .collect();
        let mut misfiled = Vec::new();
        let mut buf = Vec::new();
        for few in bad.chunks(MISFILED_BLOCKS_AT_ONCE) {
            let mut listed: HashMap<usize, Vec<u64>> = few
                .iter()
                .map(|&b| (b, vec![0; SUM_BLOCK as usize]))
                .collect();
            (self.entries)(&mut |p, entry| {
                if let Some(at) = block_of(self.len, p).and_then(|b| listed.get_mut(&b)) {
                    at[((p - 1) % SUM_BLOCK) as usize] = mix(&self.key, entry);
                }
            })?;
            for &b in few {
                let first = b as u64 * SUM_BLOCK + 1;
                let last = (first + SUM_BLOCK - 1).min(self.len);
                let state = read_state(state)?;
                let wanted = state.wanted(first..=last)?;
                let listed = &listed[&b];
                for_each_run(&mut buf, &wanted, |_, frames, run| {
                    let mut at = 0usize;
                    for &(p, loc) in frames {
                        // The next frame starts where its location says.
                        if let Ok((meta, ..)) = decode_frame(&run[at..]) {
                            let entry = listed[((p - 1) % SUM_BLOCK) as usize];
                            if meta.position == p && entry != mix(&self.key, frame(&state, &meta)) {
                                misfiled.push(p);
                            }
                        }
                        at += loc.len as usize;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(misfiled)
    }
}

/// Position `p`'s block of [`SUM_BLOCK`], if it is one of `1..=len`.
fn block_of(len: u64, p: u64) -> Option<usize> {
    (1..=len)
        .contains(&p)
        .then(|| ((p - 1) / SUM_BLOCK) as usize)
}

/// The keyed hash of an entry: its bytes in one write.
fn mix<const N: usize>(key: &std::collections::hash_map::RandomState, entry: [u8; N]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = key.build_hasher();
    h.write(&entry);
    h.finish()
}

/// The sums of the ids held in files (the snapshot's, spilled runs).
fn id_sums(runs: &[Arc<sorted_ids::SortedIds>]) -> Result<Option<FileSums<'_, 16>>, StoreError> {
    let len = runs.last().map_or(0, |r| r.last());
    let entries = Box::new(move |put: &mut dyn FnMut(u64, [u8; 16])| {
        for pair in runs.iter().flat_map(|r| r.pairs()) {
            let (fp, p) = pair.map_err(unreadable_ids)?;
            put(u64::from(p), id_entry(fp, u64::from(p)));
        }
        Ok(())
    });
    FileSums::of(len, "event ids", entries)
}

/// The sums of the stream lists held in `streams`' file (no tails).
fn stream_sums(streams: Streams) -> Result<Option<FileSums<'static, 32>>, StoreError> {
    let len = streams.filed_head();
    let entries = Box::new(move |put: &mut dyn FnMut(u64, [u8; 32])| {
        streams.for_each(true, |stream, positions| {
            for (v, &p) in (1u64..).zip(positions) {
                put(u64::from(p), stream_entry(stream, v, u64::from(p)));
            }
            Ok(())
        })
    });
    FileSums::of(len, "stream lists", entries)
}

/// Blocks of positions [`FileSums::misfiled`] checks at a time.
const MISFILED_BLOCKS_AT_ONCE: usize = 16;

/// Checks each `(position, stream, version)` of `pending` against the
/// stream lists, whose file holds the version (the writer spilled it there
/// during the verify), and empties it: the versions pending of each stream
/// read with one read of the file, where they are taken under the index's
/// lock and the file read after it. A list that cannot be read is a
/// problem at each of its frames.
fn check_spilled_versions(
    state: &RwLock<State>,
    pending: &mut Vec<(u64, StreamId, u64)>,
    problems: &mut Problems,
) -> Result<(), StoreError> {
    pending.sort_unstable_by_key(|&(_, stream, v)| (stream, v));
    for of_stream in pending.chunk_by(|a, b| a.1 == b.1) {
        let (stream, low) = (of_stream[0].1, of_stream[0].2);
        let high = of_stream[of_stream.len() - 1].2;
        let versions = {
            let state = read_state(state)?;
            state.index.streams.versions(&stream, low - 1, high)
        };
        let listed = versions.map(streams::Versions::read).transpose();
        for &(position, _, v) in of_stream {
            match &listed {
                Ok(Some(list))
                    if list.get((v - low) as usize).map(|&p| u64::from(p)) == Some(position) => {}
                Ok(_) => problems.push(position, || {
                    format!("stream index for version {v} is wrong")
                }),
                Err(e) => problems.push(position, || format!("stream index cannot be read: {e}")),
            }
        }
    }
    pending.clear();
    Ok(())
}

/// The index checks of `verify`: each frame's position, stream version and
/// event id entries must point at it.
fn check_index_batches(
    state: &RwLock<State>,
    runs: &[Arc<sorted_ids::SortedIds>],
    streams: Streams,
    batches: std::sync::mpsc::Receiver<Vec<(FrameMeta, Loc)>>,
) -> Result<Problems, StoreError> {
    let mut problems = Problems::default();
    // The ids in files are summed a block of positions at a time, where a
    // look-up in a file would read a block of it for every frame.
    let mut sums = id_sums(runs)?;
    // So are the stream lists in a file; those indexed since are looked up
    // in memory.
    let mut stream_sums = stream_sums(streams)?;
    let mut at = Vec::new();
    // Frames whose version the writer spilled to a file since `streams`
    // was taken: looked up there after each batch, without the lock.
    let mut spilled: Vec<(u64, StreamId, u64)> = Vec::new();
    for batch in batches {
        check_spilled_versions(state, &mut spilled, &mut problems)?;
        let state = read_state(state)?;
        let ix = &state.index;
        for (i, &(meta, here)) in batch.iter().enumerate() {
            if i % ids::PREFETCH_IDS == 0 {
                // The id table's probes are at random places (most of this
                // thread's time was their two cache misses): the memory
                // of the next ones fetched together.
                let next = batch[i..].iter().take(ids::PREFETCH_IDS);
                ix.ids
                    .prefetch_table(next.map(|(m, _)| ix.ids.fingerprint(&m.event_id)));
            }
            if meta.position == 0 || ix.locs.at(meta.position) != Some(here) {
                problems.push(meta.position, || {
                    "the position index does not point at this frame"
                });
            }
            let summed = stream_sums.as_mut().is_some_and(|s| {
                let entry = stream_entry(&meta.stream, meta.version, meta.position);
                s.add(entry, meta.position)
            });
            if !summed {
                // The versions after the file's are in memory, or, spilled
                // by the writer since this verify took the file's lists, in
                // the file it spilled them to.
                let (stream, v) = (&meta.stream, meta.version);
                match ix.streams.in_memory(stream, v) {
                    Some(p) if u64::from(p) == meta.position => {}
                    None if v > 0 && ix.streams.version(stream) >= v => {
                        spilled.push((meta.position, *stream, v));
                    }
                    _ => problems.push(meta.position, || {
                        format!("stream index for version {v} is wrong")
                    }),
                }
            }
            let fp = ix.ids.fingerprint(&meta.event_id);
            if sums
                .as_mut()
                .is_some_and(|s| s.add(id_entry(fp, meta.position), meta.position))
            {
                continue;
            }
            at.clear();
            ix.ids
                .candidates_into(&meta.event_id, &mut at)
                .map_err(unreadable_ids)?;
            if !at.iter().any(|&q| u64::from(q) == meta.position) {
                problems.push(meta.position, || "event id index does not point here");
            }
        }
    }
    if let Some(sums) = sums {
        let frame = |state: &State, meta: &FrameMeta| {
            id_entry(state.index.ids.fingerprint(&meta.event_id), meta.position)
        };
        for p in sums.misfiled(state, frame)? {
            problems.push(p, || "event id index does not point here");
        }
    }
    check_spilled_versions(state, &mut spilled, &mut problems)?;
    if let Some(sums) = stream_sums {
        let frame =
            |_: &State, meta: &FrameMeta| stream_entry(&meta.stream, meta.version, meta.position);
        for p in sums.misfiled(state, frame)? {
            problems.push(p, || "stream index does not list this frame at its version");
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod index_tests {
    use super::frame::{le_u32, le_u64};
    use super::snapshot::OpenWith;
    use super::*;

    fn meta(position: u64, stream: u8, version: u64, id: u128) -> FrameMeta {
        FrameMeta {
            group_end: true,
            position,
            stream: StreamId(Uuid::from_u128(u128::from(stream))),
            version,
            event_id: Uuid::from_u128(id),
        }
    }

    fn loc(position: u64) -> Loc {
        Loc {
            offset: (position - 1) * 100,
            len: 100,
            seg: 0,
        }
    }

    /// `Index::push` refuses a frame that breaks position or version
    /// order, and a refused frame changes nothing (every check comes
    /// before any change, with one probe of each map). An id whose
    /// fingerprint is held already is pushed, and the pair of positions
    /// kept for the frames to be compared (`check_shared`).
    #[test]
    fn a_refused_push_leaves_the_index_unchanged() {
        let mut ix = Index::default();
        ix.push(&meta(1, 1, 1, 10), loc(1), [1; 32]).unwrap();
        ix.push(&meta(2, 2, 1, 11), loc(2), [2; 32]).unwrap();
        ix.push(&meta(3, 1, 2, 12), loc(3), [3; 32]).unwrap();
        let snapshot = |ix: &Index| {
            let streams = ix.streams.to_vec();
            let mut ids: Vec<_> = ix.ids.iter().collect();
            ids.sort();
            (ix.locs.to_vec(), streams, ids, ix.head_hash)
        };
        let before = snapshot(&ix);
        let refused = [
            meta(5, 3, 1, 20), // position gap
            meta(4, 1, 4, 20), // version gap in a stream
            meta(4, 3, 2, 20), // a new stream not starting at 1
        ];
        for m in refused {
            assert!(ix.push(&m, loc(4), [9; 32]).is_err(), "{m:?}");
            assert!(snapshot(&ix) == before, "{m:?} changed the index");
        }
        // A sound frame at the wrong place: not where the frames before it
        // end, or not at the start of a new segment.
        let misplaced = [loc(5), Loc { seg: 1, ..loc(2) }];
        for l in misplaced {
            assert!(ix.push(&meta(4, 3, 1, 13), l, [9; 32]).is_err(), "{l:?}");
            assert!(snapshot(&ix) == before, "{l:?} changed the index");
            assert_eq!(ix.ids.only(&Uuid::from_u128(13)), None);
        }
        assert_eq!(ix.streams.version(&StreamId(Uuid::from_u128(3))), 0);
        ix.push(&meta(4, 3, 1, 13), loc(4), [4; 32]).unwrap();
        assert_eq!(ix.head(), 4);
        assert_eq!(ix.stream_version(&StreamId(Uuid::from_u128(1))), 2);
        assert_eq!(ix.stream_version(&StreamId(Uuid::from_u128(3))), 1);
        assert_eq!(ix.ids.only(&Uuid::from_u128(13)), Some(4));
        assert_eq!(ix.head_hash, [4; 32]);
        assert!(ix.shared.is_empty());
        // The id of position 2 again: pushed, and the pair kept.
        ix.push(&meta(5, 2, 2, 11), loc(5), [5; 32]).unwrap();
        assert_eq!(ix.shared, vec![(2, 5)]);
    }

    /// An index full to `max_events` refuses the next frame, unchanged.
    #[test]
    fn a_full_index_refuses_the_next_push() {
        let mut ix = Index {
            max_events: 2,
            ..Index::default()
        };
        ix.push(&meta(1, 1, 1, 10), loc(1), [1; 32]).unwrap();
        ix.push(&meta(2, 1, 2, 11), loc(2), [2; 32]).unwrap();
        let err = ix.push(&meta(3, 1, 3, 12), loc(3), [3; 32]).unwrap_err();
        assert!(err.contains("most events"), "{err}");
        assert_eq!(ix.head(), 2);
        assert_eq!(ix.ids.only(&Uuid::from_u128(12)), None);
        assert_eq!(ix.stream_version(&StreamId(Uuid::from_u128(1))), 2);
    }

    fn new_event(id: u128) -> crate::envelope::NewEvent {
        crate::envelope::NewEvent {
            event_id: Uuid::from_u128(id),
            occurred_at: Utc::now(),
            actor: "tester".into(),
            correlation_id: None,
            causation_id: None,
            event_type: "Noted".into(),
            schema: 1,
            payload: vec![0x90],
        }
    }

    fn request(ids: impl IntoIterator<Item = u128>) -> AppendRequest {
        AppendRequest {
            stream: StreamId(Uuid::from_u128(1)),
            expected: super::super::ExpectedVersion::Any,
            events: ids.into_iter().map(new_event).collect(),
        }
    }

    /// A new segment store in a temporary directory, a current-thread
    /// runtime, and the store's log of `school-a`.
    fn fresh_log() -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
    ) {
        fresh_log_with(SegmentOptions::default())
    }

    /// [`fresh_log`] with `options`.
    fn fresh_log_with(
        options: SegmentOptions,
    ) -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
    ) {
        let (dir, rt) = dir_and_runtime();
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        (dir, rt, store, log)
    }

    /// The writer counts each committed group and its events, and times
    /// its steps, before it answers the group's appends (so each append's
    /// caller finds its group counted); a refused append is not counted.
    #[test]
    fn the_writer_counts_its_groups_and_events() {
        let (_dir, rt, _store, log) = fresh_log();
        assert_eq!(log.writer_times(), WriterTimes::default());
        rt.block_on(log.append_atomic(vec![request(1..4)])).unwrap();
        let first = log.writer_times();
        assert_eq!((first.groups, first.events), (1, 3));
        assert!(first.busy_ns() > 0 && first.sync_ns <= first.busy_ns());
        assert!(thread_cpu_ns() > 0, "the thread's processor clock reads");
        // A repeated id is refused: nothing written, nothing counted.
        assert!(rt.block_on(log.append_atomic(vec![request(2..3)])).is_err());
        rt.block_on(log.append_atomic(vec![request(10..12)]))
            .unwrap();
        let both = log.writer_times().since(&first);
        assert_eq!((both.groups, both.events), (1, 2));
        let mut sum = first;
        sum.add(&both);
        assert_eq!(sum, log.writer_times());
        assert_eq!(
            both.busy_ns(),
            both.stage_ns + both.frame_ns + both.write_ns + both.sync_ns + both.publish_ns
        );
    }

    /// While the writer waits for a large group's fdatasync, the group is
    /// in the index but no reader can see it: a reader asking for the
    /// head then waits for the index's lock, and gets the head after the
    /// group only once the fdatasync has returned.
    #[test]
    fn no_reader_sees_a_large_group_before_its_fdatasync_returns() {
        let (_dir, rt, _store, log) = fresh_log();
        rt.block_on(log.append_atomic(vec![request(1..4)])).unwrap();
        let (reached_tx, reached) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *log.sync_hooks.gate.lock().unwrap() = Some((reached_tx, release_rx));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let appender = {
            let log = log.clone();
            let events = 100..100 + LARGE_GROUP_EVENTS as u128;
            std::thread::spawn(move || runtime().block_on(log.append_atomic(vec![request(events)])))
        };
        // The writer has pushed the group and waits at its fdatasync.
        reached.recv().unwrap();
        let (told, heads) = std::sync::mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let head = runtime().block_on(log.head()).map(|h| h.position);
                let _ = told.send(head);
            })
        };
        match heads.recv_timeout(Duration::from_millis(200)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("a reader got past the writer before the fdatasync: {other:?}"),
        }
        release.send(()).unwrap();
        let after = 3 + LARGE_GROUP_EVENTS as u64;
        assert_eq!(heads.recv().unwrap().unwrap(), after);
        reader.join().unwrap();
        assert_eq!(appender.join().unwrap().unwrap().len(), 1);
        assert_eq!(rt.block_on(log.head()).unwrap().position, after);
    }

    /// A large group is put in the index while the disk writes it back,
    /// and its fdatasync follows under the index's write lock
    /// ([`LARGE_GROUP_EVENTS`]). When that fdatasync fails, the append is
    /// an I/O error naming it, no read sees the group (every read is
    /// refused until the store is reopened: the index holds what is not
    /// durable), later appends are refused, and a reopen finds the log as
    /// it was before the group. A small group is synced before it is
    /// indexed, as before, and so is a group written as it is sealed
    /// ([`STREAMED_GROUP_EVENTS`]).
    #[test]
    fn a_large_group_whose_fdatasync_fails_is_never_read() {
        let (dir, rt, store, log) = fresh_log();
        let large = |from: u128| request(from..from + LARGE_GROUP_EVENTS as u128);
        rt.block_on(log.append_atomic(vec![request(1..4)])).unwrap();
        rt.block_on(log.append_atomic(vec![large(1_000)])).unwrap();
        log.sync_hooks.fail.store(true, Ordering::Relaxed);
        rt.block_on(log.append_atomic(vec![request(4..5)])).unwrap();
        assert!(
            log.sync_hooks.fail.load(Ordering::Relaxed),
            "a small group is synced first"
        );
        let streamed = STREAMED_GROUP_EVENTS as u128;
        let mut elsewhere = request(100_000..100_000 + streamed);
        elsewhere.stream = StreamId(Uuid::from_u128(2));
        rt.block_on(log.append_atomic(vec![elsewhere])).unwrap();
        assert!(
            log.sync_hooks.fail.load(Ordering::Relaxed),
            "a group written as it is sealed is synced first"
        );
        // Stream 1's events; the log's head also counts stream 2's.
        let in_stream = 4 + LARGE_GROUP_EVENTS as u64;
        let head = in_stream + streamed as u64;
        let stream = StreamId(Uuid::from_u128(1));
        assert_eq!(
            rt.block_on(log.read_stream(stream, 1, 10_000))
                .unwrap()
                .len() as u64,
            in_stream
        );
        match rt.block_on(log.append_atomic(vec![large(5_000)])) {
            Err(e @ StoreError::Io { .. }) => {
                assert!(e.to_string().contains("fdatasync"), "{e}")
            }
            other => panic!("expected the failed fdatasync, got {other:?}"),
        }
        let refused = |what: &str, r: Result<usize, StoreError>| match r {
            Err(StoreError::WriterStopped) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        };
        refused(
            "a stream's read",
            rt.block_on(log.read_stream(stream, 1, 10_000))
                .map(|v| v.len()),
        );
        refused(
            "a read by position",
            rt.block_on(log.read_all(head + 1, 10)).map(|v| v.len()),
        );
        refused(
            "a look-up by id",
            rt.block_on(log.find_event(Uuid::from_u128(5_000)))
                .map(|e| e.map_or(0, |_| 1)),
        );
        refused(
            "a stream's version",
            rt.block_on(log.stream_version(stream)).map(|v| v as usize),
        );
        refused("verify", rt.block_on(log.verify(&|_| {})).map(|_| 0));
        refused(
            "an append",
            rt.block_on(log.append_atomic(vec![request(6..7)]))
                .map(|v| v.len()),
        );
        refused(
            "the head",
            rt.block_on(log.head()).map(|h| h.position as usize),
        );
        assert_eq!(
            *log.watch_head().borrow(),
            head,
            "the head watched is durable"
        );
        drop((log, store));
        let store = SegmentStore::open(dir.path(), false).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(rt.block_on(log.head()).unwrap().position, head);
        assert_eq!(
            rt.block_on(log.read_stream(stream, 1, 10_000))
                .unwrap()
                .len() as u64,
            in_stream
        );
        assert!(rt
            .block_on(log.find_event(Uuid::from_u128(5_000)))
            .unwrap()
            .is_none());
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        rt.block_on(log.append_atomic(vec![large(5_000)])).unwrap();
        assert_eq!(
            rt.block_on(log.head()).unwrap().position,
            head + LARGE_GROUP_EVENTS as u64
        );
    }

    /// One append alone in a group written as it is sealed lets go of its
    /// written events' bytes as it is sealed ([`LET_GO_BYTES`]): refused
    /// part-way (its last event past the value limit), nothing of it is
    /// kept; taken, every event of it reads back, and the log verifies and
    /// reopens the same.
    #[test]
    fn a_large_append_alone_lets_go_of_its_written_bytes() {
        let (dir, rt, store, log) = fresh_log();
        rt.block_on(log.append_atomic(vec![request(1..4)])).unwrap();
        // 100 streams' requests (sealed pieces are framed between them).
        let n = STREAMED_GROUP_EVENTS as u128 + 1_000;
        let large = || -> Vec<AppendRequest> {
            (0..100u128)
                .map(|k| AppendRequest {
                    stream: StreamId(Uuid::from_u128(100 + k)),
                    ..request(10_000 + k * n / 100..10_000 + (k + 1) * n / 100)
                })
                .collect()
        };
        let mut refused = large();
        let last = refused.last_mut().unwrap().events.last_mut().unwrap();
        last.actor = "x".repeat(frame::MAX_FRAME);
        match rt.block_on(log.append_atomic(refused)) {
            Err(StoreError::Limit { .. }) => {}
            other => panic!("expected the value limit, got {:?}", other.map(|a| a.len())),
        }
        // The refusal is answered before the writer is done with the
        // group: the next append's answer comes after.
        rt.block_on(log.append_atomic(vec![request(4..5)])).unwrap();
        let let_go = || log.sync_hooks.let_go.swap(0, Ordering::Relaxed);
        assert!(let_go() >= 2 * LET_GO_BYTES, "let go as it was sealed");
        assert_eq!(rt.block_on(log.head()).unwrap().position, 4);
        let taken = large();
        let ids: Vec<Uuid> = taken
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| e.event_id)
            .collect();
        rt.block_on(log.append_atomic(taken)).unwrap();
        assert!(let_go() >= 2 * LET_GO_BYTES, "let go as it was sealed");
        let read = |log: &SegmentLog| {
            let mut all = Vec::new();
            loop {
                let page = rt
                    .block_on(log.read_all(all.len() as u64 + 1, 10_000))
                    .unwrap();
                if page.is_empty() {
                    return all;
                }
                all.extend(page);
            }
        };
        let all = read(&log);
        assert_eq!(all.len() as u128, 4 + n);
        let got: Vec<Uuid> = all[4..].iter().map(|e| e.event_id).collect();
        assert_eq!(got, ids);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        // The head's hash is the last event's.
        assert_eq!(
            rt.block_on(log.head()).unwrap().hash,
            all[all.len() - 1].hash
        );
        drop((log, store));
        let store = SegmentStore::open(dir.path(), false).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(read(&log), all);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        rt.block_on(log.append_atomic(vec![request(5..6)])).unwrap();
        assert_eq!(rt.block_on(log.head()).unwrap().position, 5 + n as u64);
    }

    /// Reads check the frames the index points them at: an index whose
    /// stream lists or id map disagree with the log (as a hand-made index
    /// snapshot could) gives a corruption error naming the segment, never
    /// another stream's events or another id's event.
    #[test]
    fn reads_refuse_frames_the_index_misfiled() {
        use crate::store::StreamVisitor;
        struct Count(usize);
        impl StreamVisitor for Count {
            fn visit(&mut self, _: &crate::envelope::EventRef<'_>) -> Result<(), StoreError> {
                self.0 += 1;
                Ok(())
            }
        }
        let (_dir, rt, _store, log) = fresh_log();
        let a = StreamId(Uuid::from_u128(1));
        let b = StreamId(Uuid::from_u128(2));
        let mut second = request(4..7);
        second.stream = b;
        rt.block_on(log.append_atomic(vec![request(1..4), second]))
            .unwrap();
        // Sound: every read agrees.
        assert_eq!(rt.block_on(log.read_stream(a, 1, 10)).unwrap().len(), 3);
        {
            let mut state = log.state.write().unwrap();
            let ix = &mut state.index;
            ix.streams.swap_for_test(a, b);
            let (i1, i2) = (Uuid::from_u128(1), Uuid::from_u128(2));
            let (p1, p2) = (ix.ids.only(&i1).unwrap(), ix.ids.only(&i2).unwrap());
            ix.ids.swap_for_test(p1, p2);
        }
        let named = |r: Result<usize, StoreError>| match r {
            Err(StoreError::Corrupt { location, what }) => {
                assert!(location.contains(".seg"), "{location}");
                assert!(what.contains("does not match the frame"), "{what}");
            }
            other => panic!("expected a corruption error, got {other:?}"),
        };
        named(rt.block_on(log.read_stream(a, 1, 10)).map(|v| v.len()));
        named(rt.block_on(log.read_stream(b, 2, 10)).map(|v| v.len()));
        named(rt.block_on(log.visit_stream(a, 1, 10, &mut Count(0))));
        named(rt.block_on(log.read_streams(&[b])).map(|m| m.len()));
        named(
            rt.block_on(log.find_event(Uuid::from_u128(1)))
                .map(|e| e.map_or(0, |_| 1)),
        );
        named(
            rt.block_on(log.find_events(&[Uuid::from_u128(2)]))
                .map(|m| m.len()),
        );
        // Reads by position do not go through the stream lists or ids.
        assert_eq!(rt.block_on(log.read_all(1, 10)).unwrap().len(), 6);
        // The writer reads the frame where the index has an id's
        // fingerprint before it calls the id stored or new: here it finds
        // another id there, whose own fingerprint the index does not hold
        // at that position, and refuses the append, writing nothing.
        match rt.block_on(log.append_atomic(vec![request(1..2)])) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("does not match the frame"), "{what}")
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        assert_eq!(rt.block_on(log.head()).unwrap().position, 6);
    }

    /// Ids 1 and 2 in a snapshot (written at the close), and a frame at
    /// position 3 after it that repeats id 1; the log's directory.
    fn log_with_a_repeated_id(rt: &tokio::runtime::Runtime, dir: &Path) -> PathBuf {
        let (store, log) = open_log(dir, true, 1);
        rt.block_on(log.append_atomic(vec![request(1..3)])).unwrap();
        let log_dir = log.dir().to_path_buf();
        drop((log, store));
        repeat_the_first_id_at_position_3(&log_dir);
        log_dir
    }

    /// Flips the bits of the first fingerprint of the ids' section of the
    /// snapshot at `path`, which lists `ids` ids (the pairs end 32 bytes
    /// before the directory of their blocks, the file's end).
    fn flip_the_first_fingerprint(path: &Path, ids: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        let blocks = snapshot::id_blocks_bytes(ids).unwrap();
        file.write_all_at(&[0xA5; 8], len - blocks - 32 - 12 * ids)
            .unwrap();
    }

    /// Writes, after the head of the log in `log_dir` (two events of
    /// stream 1), a third frame that repeats position 1's id, sealed and
    /// framed as the writer would.
    fn repeat_the_first_id_at_position_3(log_dir: &Path) {
        let rec = recover(log_dir, false, OpenWith::ids(true), Spills::DEFAULT).unwrap();
        let stream = StreamId(Uuid::from_u128(1));
        let (_, bytes) = crate::envelope::StoredEvent::seal(
            &new_event(1),
            stream,
            3,
            3,
            Utc::now(),
            rec.index.head_hash,
        )
        .unwrap();
        let meta = FrameMeta {
            group_end: true,
            position: 3,
            stream,
            version: 3,
            event_id: Uuid::from_u128(1),
        };
        let mut frame = Vec::new();
        encode_frame(&mut frame, &meta, &bytes);
        let last = rec.segments.last().unwrap();
        last.file.write_all_at(&frame, rec.end).unwrap();
        last.file.sync_data().unwrap();
    }

    /// A log whose frames hold one id at two positions (frames sound,
    /// chain whole: written by something other than casebook's writer) is
    /// refused at open, naming both positions: the index only saw two
    /// positions with one fingerprint, and the open reads both frames.
    #[test]
    fn an_open_refuses_a_log_holding_one_id_twice() {
        let (_dir, rt, store, log) = fresh_log();
        rt.block_on(log.append_atomic(vec![request(1..3)])).unwrap();
        let log_dir = log.dir().to_path_buf();
        drop(log);
        drop(store);
        assert!(
            recover(&log_dir, false, OpenWith::ids(true), Spills::DEFAULT)
                .unwrap()
                .index
                .shared
                .is_empty()
        );
        repeat_the_first_id_at_position_3(&log_dir);
        // A scan that spills its ids after every group finds the repeat
        // across its runs too.
        let every_group = Spills {
            ids: 1,
            streams: 1,
            ..Spills::DEFAULT
        };
        for (read_snapshot, spill) in [
            (false, Spills::DEFAULT),
            (true, Spills::DEFAULT),
            (false, every_group),
        ] {
            match recover(&log_dir, read_snapshot, OpenWith::ids(true), spill) {
                Err(StoreError::Corrupt { location, what }) => {
                    assert!(location.contains(".seg"), "{location}");
                    assert!(
                        what.contains("event id 00000000-0000-0000-0000-000000000001 is already stored at position 1"),
                        "{what}"
                    );
                }
                other => panic!("expected Corrupt, got {:?}", other.map(|r| r.index.head())),
            }
        }
    }

    /// Once the id table holds `spill_ids` ids the writer writes them to
    /// a run in a file of its own and looks them up there: the table stays
    /// small, every id is found where it is, one stored (in a run or in
    /// the table) is refused as a repeat, `verify` finds nothing wrong,
    /// and no file of the runs is left in the log's directory.
    #[test]
    fn ids_spilled_to_runs_are_found_and_refused_again() {
        let (dir, rt) = dir_and_runtime();
        let options = SegmentOptions {
            spill_ids: 700,
            snapshot_min_events: u64::MAX,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        let mut tables = Vec::new();
        for start in (1..=3_000u128).step_by(250) {
            rt.block_on(log.append_atomic(vec![request(start..start + 250)]))
                .unwrap();
            let state = log.state.read().unwrap();
            let ids = &state.index.ids;
            assert_eq!(ids.len() as u128, start + 249);
            tables.push(ids.table_len());
        }
        // Spilled at 750, 1_500, 2_250 and 3_000, each after the append
        // that filled the table was answered (the table then still full,
        // or already spilled): the next found it empty but for its own.
        for (i, n) in tables.iter().enumerate() {
            let full = 250 * (i % 3 + 1);
            assert!(*n == full || (full == 750 && *n == 0), "{tables:?}");
        }
        let spilled = || {
            let state = log.state.read().unwrap();
            let runs = state.index.ids.runs();
            runs.last().map(|r| (runs.len(), r.last()))
        };
        let waited = Instant::now();
        while spilled() != Some((4, 3_000)) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(spilled(), Some((4, 3_000)));
        rt.block_on(log.append_atomic(vec![request(3_001..3_101)]))
            .unwrap();
        let ids: Vec<Uuid> = (1..=3_100u128).map(Uuid::from_u128).collect();
        let found = rt.block_on(log.find_events(&ids)).unwrap();
        assert_eq!(found.len(), 3_100);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(found[id].position, i as u64 + 1);
        }
        let absent: Vec<Uuid> = (5_000..9_000u128).map(Uuid::from_u128).collect();
        assert!(rt.block_on(log.find_events(&absent)).unwrap().is_empty());
        let report = refused_again_and_verified(&rt, &log, [1u128, 1_499, 3_000, 3_050]);
        assert_eq!(report.events, 3_100);
        let log_dir = log.dir().to_path_buf();
        drop((log, store));
        let names: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with(".tmp") || n.contains("ids")),
            "{names:?}"
        );
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        match rt.block_on(log.append_atomic(vec![request(3_050..3_051)])) {
            Err(StoreError::DuplicateEventId {
                position: 3_050, ..
            }) => {}
            other => panic!("expected DuplicateEventId at 3050, got {other:?}"),
        }
        let found = rt.block_on(log.find_event(Uuid::from_u128(2_999))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(2_999));
    }

    /// A batch whose ids a look-up found absent through a position
    /// (`find_events_checked`, the import planner's) is still refused an
    /// id stored after that position: the writer tests the batch's ids
    /// against the ids after it (`Committed::absent_after`: a bitmap of
    /// their fingerprints, which passes almost every other id without a
    /// look-up), and looks up those that may be there. Once the ids after
    /// it are in a run of ids in a file, the test is not made and every
    /// id is looked up: refused all the same.
    #[test]
    fn ids_checked_by_a_look_up_are_refused_when_stored_after_it() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            spill_ids: 300,
            snapshot_min_events: u64::MAX,
            ..SegmentOptions::default()
        });
        rt.block_on(log.append_atomic(vec![request(1..101)]))
            .unwrap();
        let ids: Vec<Uuid> = (200..210u128).map(Uuid::from_u128).collect();
        let (found, seen) = rt.block_on(log.find_events_checked(&ids)).unwrap();
        assert!(found.is_empty());
        let seen = seen.expect("the segment engine says what it saw");
        assert_eq!(seen.through(), 100);
        // After the look-up, another append stores one of its ids.
        rt.block_on(log.append_atomic(vec![to_stream(2, 205..206)]))
            .unwrap();
        {
            let state = log.state.read().unwrap();
            let mut committed = SegmentCommitted::of(&state);
            let absent = committed
                .absent_after(seen, 10)
                .expect("the table holds position 101");
            assert!(!absent(&Uuid::from_u128(205)));
            let passed = (1_000..2_000u128)
                .filter(|&i| absent(&Uuid::from_u128(i)))
                .count();
            assert!(passed > 900, "{passed} of 1,000 other ids passed");
            let past = Seen::new(state.token, 102);
            assert!(committed.absent_after(past, 10).is_none(), "past the head");
            let other = Seen::new(Uuid::from_u128(1), 100);
            assert!(committed.absent_after(other, 10).is_none(), "another log");
            let small = committed.absent_after(seen, 0);
            assert!(
                small.is_none(),
                "more events after it than an empty append's worth"
            );
        }
        let batch = || vec![to_stream(3, 200..210)];
        let checked = IdsChecked::new(seen, vec![], &batch());
        match rt.block_on(log.append_atomic_checked(vec![to_stream(3, 200..210)], checked.clone()))
        {
            Err(StoreError::DuplicateEventId { position: 101, .. }) => {}
            other => panic!("expected DuplicateEventId at 101, got {other:?}"),
        }
        // Ids absent everywhere are stored.
        let fresh = vec![to_stream(3, 300..310)];
        let checked_fresh = IdsChecked::new(Seen::new(seen.log(), 101), vec![], &fresh);
        rt.block_on(log.append_atomic_checked(fresh, checked_fresh))
            .unwrap();
        // The ids after position 100 spilled to a run (300 a spill).
        for start in (1_000..1_400u128).step_by(100) {
            rt.block_on(log.append_atomic(vec![to_stream(4, start..start + 100)]))
                .unwrap();
        }
        let in_runs = || {
            log.state
                .read()
                .unwrap()
                .index
                .ids
                .runs()
                .last()
                .map(|r| r.last())
        };
        let waited = Instant::now();
        while in_runs() < Some(111) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(in_runs() >= Some(111), "{:?}", in_runs());
        {
            let state = log.state.read().unwrap();
            let mut committed = SegmentCommitted::of(&state);
            assert!(committed.absent_after(seen, 10).is_none());
        }
        match rt.block_on(log.append_atomic_checked(batch(), checked)) {
            Err(StoreError::DuplicateEventId { position: 101, .. }) => {}
            other => panic!("expected DuplicateEventId at 101, got {other:?}"),
        }
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever is appended between an import's look-up of a batch's
        /// ids and the batch's checked append (ids of the batch among
        /// them or not, the id table spilled to runs and merged
        /// meanwhile), the checked append does what a plain one does: it
        /// is refused if one of its ids is stored, and stored otherwise,
        /// ids it says were minted (not looked up) included; no id is
        /// ever stored twice (`verify`).
        #[test]
        fn a_checked_append_is_refused_exactly_when_a_plain_one_would_be(
            first in proptest::collection::vec(1..400u128, 0..120),
            rounds in proptest::collection::vec(
                (
                    proptest::collection::vec(1..400u128, 1..30),
                    proptest::collection::vec(proptest::collection::vec(1..400u128, 1..40), 0..4),
                    proptest::collection::vec(proptest::prelude::any::<bool>(), 30),
                ),
                1..6,
            ),
        ) {
            let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
                spill_ids: 60,
                snapshot_min_events: u64::MAX,
                ..SegmentOptions::default()
            });
            let mut stored = std::collections::HashSet::new();
            let distinct = |ids: &[u128]| {
                let mut seen = std::collections::HashSet::new();
                ids.iter().copied().filter(|i| seen.insert(*i)).collect::<Vec<u128>>()
            };
            // An append of `ids` (one stream each, in turn), as the model
            // says it goes: refused if one is stored.
            let mut stream = 10u128;
            let mut append = |ids: &[u128], checked: Option<IdsChecked>, stored: &mut std::collections::HashSet<u128>| {
                stream += 1;
                let requests = vec![to_stream(stream, ids.iter().copied())];
                let done = match checked {
                    Some(c) => rt.block_on(log.append_atomic_checked(requests, c)),
                    None => rt.block_on(log.append_atomic(requests)),
                };
                let repeat = ids.iter().any(|i| stored.contains(i));
                match (&done, repeat) {
                    (Ok(_), false) => stored.extend(ids.iter().copied()),
                    (Err(StoreError::DuplicateEventId { .. }), true) => {}
                    other => panic!("{ids:?}: {other:?}"),
                }
            };
            let first = distinct(&first);
            if !first.is_empty() {
                append(&first, None, &mut stored);
            }
            for (batch, between, minted) in rounds {
                let batch = distinct(&batch);
                let asked: Vec<Uuid> = batch.iter().map(|&i| Uuid::from_u128(i)).collect();
                let (found, seen) = rt.block_on(log.find_events_checked(&asked)).unwrap();
                let seen = seen.expect("the segment engine says what it saw");
                // The planner drops the lines it found stored; of the rest,
                // some it minted (never looked up).
                let kept: Vec<u128> = batch
                    .iter()
                    .copied()
                    .filter(|i| !found.contains_key(&Uuid::from_u128(*i)))
                    .collect();
                for ids in between {
                    let ids = distinct(&ids);
                    append(&ids, None, &mut stored);
                }
                if kept.is_empty() {
                    continue;
                }
                let unchecked: Vec<u32> = (0..kept.len() as u32)
                    .filter(|&k| minted[k as usize])
                    .collect();
                let requests = vec![to_stream(9, kept.iter().copied())];
                let checked = IdsChecked::new(seen, unchecked, &requests);
                append(&kept, Some(checked), &mut stored);
            }
            let report = rt.block_on(log.verify(&|_| {})).unwrap();
            proptest::prop_assert!(report.ok, "{:?}", report.problems);
            proptest::prop_assert_eq!(report.events as usize, stored.len());
        }
    }

    /// A fresh log whose writer spills its id table at 500 ids, writing
    /// a snapshot at a close after `snapshot_min_events`.
    fn spilling_at_500(
        snapshot_min_events: u64,
    ) -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
    ) {
        fresh_log_with(SegmentOptions {
            spill_ids: 500,
            snapshot_min_events,
            ..SegmentOptions::default()
        })
    }

    /// Holds the next thread that passes `gate` there: says when it is
    /// there, and lets it go on at a word.
    fn hold_at(gate: &Gate) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (reached_tx, reached) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *gate.lock().unwrap() = Some((reached_tx, release_rx));
        (reached, release)
    }

    /// Holds the next spill of the ids at its gate ([`hold_at`]).
    fn hold_next_spill(
        log: &SegmentLog,
    ) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        hold_at(&log.sync_hooks.spill_gate)
    }

    /// Appends ids 1..=500 to a log of [`spilling_at_500`], whose spill
    /// of them is then held at its gate; returns the word that lets it
    /// go on.
    fn spill_held_at_500(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
    ) -> std::sync::mpsc::Sender<()> {
        let (reached, release) = hold_next_spill(log);
        for start in [1u128, 251] {
            rt.block_on(log.append_atomic(vec![request(start..start + 250)]))
                .unwrap();
        }
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        release
    }

    /// Appends `ids` on a thread of its own; says whether it was stored.
    fn append_on_a_thread(
        log: &Arc<SegmentLog>,
        ids: std::ops::Range<u128>,
    ) -> std::sync::mpsc::Receiver<bool> {
        requests_on_a_thread(log, vec![request(ids)])
    }

    /// Appends `requests` atomically on a thread of its own; says whether
    /// they were stored.
    fn requests_on_a_thread(
        log: &Arc<SegmentLog>,
        requests: Vec<AppendRequest>,
    ) -> std::sync::mpsc::Receiver<bool> {
        let (told, answered) = std::sync::mpsc::channel();
        let log = log.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let stored = rt.block_on(log.append_atomic(requests)).is_ok();
            // Let go of the log first: a test that closes it next is then
            // the last to hold it, and its close waits for the writer.
            drop(log);
            let _ = told.send(stored);
        });
        answered
    }

    /// The writer spills the id table on a thread of its own: while the
    /// run is written (held back here), appends go on and are answered,
    /// the frozen table's ids and the new table's are found and refused
    /// as repeats, and `verify` passes; once written, the run takes the
    /// frozen table's place. A close waits for a spill in flight.
    #[test]
    fn the_writer_spills_its_ids_while_appends_go_on() {
        let (dir, rt, store, log) = spilling_at_500(1);
        let release = spill_held_at_500(&rt, &log);
        // The table of 500 is frozen and its spill waits at the gate; the
        // new table takes 100 (fewer than the 125 at which the writer
        // would wait for the spill), answered while the spill waits (a
        // writer that spilled on its own thread would not answer: failed
        // after 10 s, not hung).
        let answered = append_on_a_thread(&log, 501..601);
        assert!(answered.recv_timeout(Duration::from_secs(10)).unwrap());
        let held = || {
            let state = log.state.read().unwrap();
            let ids = &state.index.ids;
            (
                ids.is_frozen(),
                ids.runs().len(),
                ids.table_len(),
                ids.len(),
            )
        };
        assert_eq!(held(), (true, 0, 100, 600));
        let all: Vec<Uuid> = (1..=600u128).map(Uuid::from_u128).collect();
        let found = rt.block_on(log.find_events(&all)).unwrap();
        assert_eq!(found.len(), 600);
        for (i, id) in all.iter().enumerate() {
            assert_eq!(found[id].position, i as u64 + 1);
        }
        refused_again_and_verified(&rt, &log, [1u128, 333, 500, 501, 600]);
        release.send(()).unwrap();
        let waited = Instant::now();
        while held().0 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(held(), (false, 1, 100, 600));
        refused_again_and_verified(&rt, &log, [1u128, 500, 501, 600]);
        // Full again: the next spill starts (held at the gate), and the
        // close waits for it before it writes the snapshot of every id.
        let (reached, release) = hold_next_spill(&log);
        rt.block_on(log.append_atomic(vec![request(601..1_001)]))
            .unwrap();
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        let log_dir = log.dir().to_path_buf();
        let closer = std::thread::spawn(move || drop((log, store)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!closer.is_finished(), "the close waits for the spill");
        release.send(()).unwrap();
        closer.join().unwrap();
        let names: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(1_000));
        let all: Vec<Uuid> = (1..=1_000u128).map(Uuid::from_u128).collect();
        assert_eq!(rt.block_on(log.find_events(&all)).unwrap().len(), 1_000);
        refused_again_and_verified(&rt, &log, [1u128, 750, 1_000]);
    }

    /// Once the new table holds a quarter of a spill's ids while the
    /// spill is still running, the writer waits for it: the next append
    /// is answered only after the spill has ended.
    #[test]
    fn a_spill_still_running_is_waited_for_once_the_new_table_holds_a_quarter() {
        let (_dir, rt, _store, log) = spilling_at_500(u64::MAX);
        let release = spill_held_at_500(&rt, &log);
        // 130 ids: at least 125, a quarter of 500. This append is
        // answered; the writer then waits for the spill.
        rt.block_on(log.append_atomic(vec![request(501..631)]))
            .unwrap();
        let answered = append_on_a_thread(&log, 631..641);
        match answered.recv_timeout(Duration::from_millis(200)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("an append was answered while the writer waited: {other:?}"),
        }
        release.send(()).unwrap();
        assert!(answered.recv_timeout(Duration::from_secs(10)).unwrap());
        let state = log.state.read().unwrap();
        let ids = &state.index.ids;
        assert_eq!(
            (
                ids.is_frozen(),
                ids.runs().len(),
                ids.table_len(),
                ids.len()
            ),
            (false, 1, 140, 640)
        );
        drop(state);
        refused_again_and_verified(&rt, &log, [1u128, 500, 630, 640]);
    }

    /// A spill of the ids that fails on its thread leaves every id found
    /// and refused: the frozen table is taken back into the table after
    /// the writer's next group, and the next spill waits for twice as
    /// many ids.
    #[test]
    fn a_spill_that_fails_on_its_thread_takes_the_table_back() {
        let (_dir, rt, _store, log) = spilling_at_500(u64::MAX);
        log.sync_hooks.spill_fail.store(true, Ordering::Relaxed);
        for start in (1..=750u128).step_by(250) {
            rt.block_on(log.append_atomic(vec![request(start..start + 250)]))
                .unwrap();
        }
        let held = || {
            let state = log.state.read().unwrap();
            let ids = &state.index.ids;
            (ids.is_frozen(), ids.runs().len(), ids.table_len())
        };
        // The failure is taken up after a group that ends once the
        // spill's thread has: an append refused (a stored id) is a group.
        let waited = Instant::now();
        while held() != (false, 0, 750) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
            let again = rt.block_on(log.append_atomic(vec![request(1..2)]));
            assert!(matches!(again, Err(StoreError::DuplicateEventId { .. })));
        }
        assert_eq!(held(), (false, 0, 750));
        assert!(!log.sync_hooks.spill_fail.load(Ordering::Relaxed));
        refused_again_and_verified(&rt, &log, [1u128, 500, 501, 750]);
        // Not spilled again before 1,000 ids (twice 500).
        rt.block_on(log.append_atomic(vec![request(751..1_000)]))
            .unwrap();
        rt.block_on(log.append_atomic(vec![request(1_000..1_101)]))
            .unwrap();
        let waited = Instant::now();
        while held().1 == 0 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            held(),
            (false, 1, 0),
            "the table of 1,100 spilled once full"
        );
        let all: Vec<Uuid> = (1..=1_100u128).map(Uuid::from_u128).collect();
        assert_eq!(rt.block_on(log.find_events(&all)).unwrap().len(), 1_100);
        refused_again_and_verified(&rt, &log, [1u128, 999, 1_100]);
    }

    /// The ids end to end through every place they can be held: spilled
    /// to runs, merged into one run from `MERGE_AT` on, written at the close
    /// into the snapshot (its ids, the runs' and the table's merged), the
    /// snapshot read at the next open, spilled to runs again after it.
    /// Every id is refused as a repeat wherever it is held, every id is
    /// found, and `verify` passes at each step.
    #[test]
    fn ids_through_runs_a_merge_and_the_snapshot_stay_found_and_refused() {
        let (dir, rt) = dir_and_runtime();
        let open = |spill_ids: usize| {
            let options = SegmentOptions {
                spill_ids,
                snapshot_min_events: 1,
                ..SegmentOptions::default()
            };
            let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
            let log = store.log("school-a").unwrap();
            (store, log)
        };
        let settled = |log: &SegmentLog, len: u64| {
            // The spill after the last append is the writer's next act, and
            // a merge of the runs may still run on its thread.
            let waited = Instant::now();
            loop {
                let state = log.state.read().unwrap();
                let ids = &state.index.ids;
                let last = ids.runs().last().map_or(0, |r| r.last());
                let merged = ids.runs().len() < ids::MAX_RUNS;
                if ids.len() as u64 == len
                    && ((last == len && merged) || waited.elapsed().as_secs() > 10)
                {
                    let first = ids.runs().first().map(|r| (r.first(), r.last()));
                    return (ids.runs().len(), first, last, ids.table_len());
                }
                drop(state);
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let check = |log: &SegmentLog, len: u128| {
            let ids: Vec<Uuid> = (1..=len).map(Uuid::from_u128).collect();
            let found = rt.block_on(log.find_events(&ids)).unwrap();
            assert_eq!(found.len() as u128, len);
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(found[id].position, i as u64 + 1);
            }
            refused_again_and_verified(&rt, log, (1..=len).step_by(331).chain([len]));
        };
        // 24 appends of 250, a spill after every second: once MERGE_AT
        // runs are held (after the 18th append, or the 19th, which ends
        // the 9th spill first), a merge of those 9 leaves one run from
        // position 1, and the 3 spills' runs after it (as when the ninth
        // spill merged 8 runs with its table).
        let (store, log) = open(500);
        for start in (1..=6_000u128).step_by(250) {
            rt.block_on(log.append_atomic(vec![request(start..start + 250)]))
                .unwrap();
        }
        let (runs, first, last, table) = settled(&log, 6_000);
        assert_eq!((runs, first, last, table), (4, Some((0, 4_500)), 6_000, 0));
        check(&log, 6_000);
        drop((log, store));
        // The close wrote the snapshot of all 6,000.
        let (store, log) = open(500);
        assert_eq!(log.opened_from_snapshot(), Some(6_000));
        check(&log, 6_000);
        for start in (6_001..=7_000u128).step_by(250) {
            rt.block_on(log.append_atomic(vec![request(start..start + 250)]))
                .unwrap();
        }
        let (runs, first, last, table) = settled(&log, 7_000);
        assert_eq!((runs, first, last, table), (3, Some((0, 6_000)), 7_000, 0));
        rt.block_on(log.append_atomic(vec![request(7_001..7_101)]))
            .unwrap();
        check(&log, 7_100);
        drop((log, store));
        let (_store, log) = open(500);
        assert_eq!(log.opened_from_snapshot(), Some(7_100));
        check(&log, 7_100);
    }

    /// A log whose writer spills its ids every 100, and a group of 100
    /// new ids (`k`-th, from 0): each group's spill begins after it, and
    /// the one before it is ended first (a whole table's ids were added
    /// since it began).
    fn spilling_at_100() -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
    ) {
        fresh_log_with(SegmentOptions {
            spill_ids: 100,
            snapshot_min_events: 1,
            ..SegmentOptions::default()
        })
    }

    fn hundred(k: u128) -> Vec<AppendRequest> {
        vec![request(k * 100 + 1..k * 100 + 101)]
    }

    /// How long [`runs_up_to`], [`runs_settled`] and [`lists_filed_up_to`]
    /// wait at most for the spills and merges on their threads (the merges
    /// at nice 19): each
    /// returns as soon as they have ended, so the bound only matters on a
    /// machine so loaded that a merge waited 10 s for a core or the disk
    /// (once in a CI run beside a release build, session ay).
    const SETTLE_WAIT: Duration = Duration::from_secs(60);

    /// The runs of ids the index holds: how many, and the positions the
    /// first covers.
    fn runs_held(log: &SegmentLog) -> (usize, Option<(u64, u64)>) {
        let state = log.state.read().unwrap();
        let runs = state.index.ids.runs();
        (runs.len(), runs.first().map(|r| (r.first(), r.last())))
    }

    /// Waits (up to [`SETTLE_WAIT`]) until fewer than `MAX_RUNS` runs of ids are held
    /// and the last covers `head`: the merges and spills have ended.
    fn runs_settled(log: &SegmentLog, head: u64) -> (usize, Option<(u64, u64)>) {
        let waited = Instant::now();
        loop {
            let done = {
                let state = log.state.read().unwrap();
                let runs = state.index.ids.runs();
                runs.len() < ids::MAX_RUNS && runs.last().map(|r| r.last()) == Some(head)
            };
            if done || waited.elapsed() > SETTLE_WAIT {
                return runs_held(log);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every id of the first `groups` [`hundred`]s is found at its
    /// position.
    fn hundreds_found(rt: &tokio::runtime::Runtime, log: &SegmentLog, groups: u128) {
        all_found(rt, log, groups * 100);
    }

    /// Ids 1..=n, each found at its position.
    fn all_found(rt: &tokio::runtime::Runtime, log: &SegmentLog, n: u128) {
        let all: Vec<Uuid> = (1..=n).map(Uuid::from_u128).collect();
        let found = rt.block_on(log.find_events(&all)).unwrap();
        assert_eq!(found.len(), all.len());
        for id in &all {
            assert_eq!(u128::from(found[id].position), id.as_u128());
        }
    }

    /// Waits (up to [`SETTLE_WAIT`]) until the last run of ids covers `head` (the
    /// spill after the group that ends there has put its run in); the
    /// runs then held.
    fn runs_up_to(log: &SegmentLog, head: u64) -> (usize, Option<(u64, u64)>) {
        let waited = Instant::now();
        loop {
            let done = {
                let state = log.state.read().unwrap();
                state.index.ids.runs().last().map(|r| r.last()) == Some(head)
            };
            if done || waited.elapsed() > SETTLE_WAIT {
                return runs_held(log);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Appends `each(k)` for `k` in `ks`, one after another, on a thread
    /// of its own; says once all are stored (the thread has let go of the
    /// log).
    fn appends_on_a_thread(
        log: &Arc<SegmentLog>,
        ks: std::ops::Range<u128>,
        each: fn(u128) -> Vec<AppendRequest>,
    ) -> (std::sync::mpsc::Receiver<()>, JoinHandle<()>) {
        let (told, answered) = std::sync::mpsc::channel();
        let log = log.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            for k in ks {
                rt.block_on(log.append_atomic(each(k))).unwrap();
            }
            drop(log);
            let _ = told.send(());
        });
        (answered, handle)
    }

    /// A log of [`spilling_at_100`] with its first ten [`hundred`]s: after
    /// the ninth or the tenth, `MERGE_AT` runs (or ten, as the tenth's
    /// spill may have ended), and the merge they begin is held at its
    /// gate; returns the word that lets it go on.
    fn merge_held_after_ten() -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (dir, rt, store, log) = spilling_at_100();
        let (reached, release) = hold_at(&log.sync_hooks.merge_gate);
        for k in 0..10 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
        }
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        (dir, rt, store, log, release)
    }

    /// The writer merges its runs of ids on a thread of its own. While
    /// the merge is held before it writes anything, appends are answered
    /// and their spills add runs after those being merged, every id is
    /// found and refused as a repeat, and `verify` passes; once
    /// `MOST_RUNS` runs are held (and `MAX_RUNS` more than it merges:
    /// 17 or 18),
    /// the writer waits for the merge. Once it has ended, one run from
    /// position 1 takes the merged runs' place, and the close's snapshot
    /// holds every id.
    #[test]
    fn the_writer_merges_its_runs_of_ids_while_appends_go_on() {
        let (dir, rt, store, log, release) = merge_held_after_ten();
        // Groups 10 to 14 are answered while it is held, each spilled
        // after those being merged, every id found and refused as a
        // repeat (by the writer, which does not wait below MOST_RUNS).
        for k in 10..15 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
        }
        assert_eq!(runs_up_to(&log, 1_500), (15, Some((0, 100))));
        hundreds_found(&rt, &log, 15);
        refused_again_and_verified(&rt, &log, [1u128, 750, 1_500]);
        // Group 15 too, and its spill makes MOST_RUNS runs, none merged.
        rt.block_on(log.append_atomic(hundred(15))).unwrap();
        assert_eq!(runs_up_to(&log, 1_600), (ids::MOST_RUNS, Some((0, 100))));
        hundreds_found(&rt, &log, 16);
        // The writer waits for the merge at 17 or 18 runs (it began with 9
        // or 10), after group 16, 17 or 18 as each group's spill ends:
        // group 19 is not answered until it is let go.
        let (answered, appending) = appends_on_a_thread(&log, 16..20, hundred);
        assert!(answered.recv_timeout(Duration::from_millis(300)).is_err());
        release.send(()).unwrap();
        answered.recv_timeout(Duration::from_secs(10)).unwrap();
        appending.join().unwrap();
        // The runs merged, then (MERGE_AT being held again) the merged
        // run with those after it: one run from position 1, and the
        // spills' runs after it.
        let (runs, first) = runs_settled(&log, 2_000);
        let merged = first.unwrap();
        assert_eq!(merged.0, 0);
        assert!(merged.1 >= 1_700, "{merged:?}");
        assert_eq!(runs, 1 + (2_000 - merged.1 as usize) / 100);
        hundreds_found(&rt, &log, 20);
        refused_again_and_verified(&rt, &log, [1u128, 801, 2_000]);
        drop((log, store));
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(2_000));
        hundreds_found(&rt, &log, 20);
        drop((log, store));
    }

    /// A close while a merge of the runs of ids is still running stops
    /// it: the close ends, and its snapshot holds every id.
    #[test]
    fn a_close_stops_a_merge_of_the_runs_of_ids() {
        let (dir, rt, store, log, release) = merge_held_after_ten();
        // The close, on a thread: it waits for the merge, held at its gate.
        let (closing, closed) = std::sync::mpsc::channel();
        let closer = std::thread::spawn(move || {
            drop((log, store));
            let _ = closing.send(());
        });
        assert!(closed.recv_timeout(Duration::from_millis(100)).is_err());
        release.send(()).unwrap();
        closed.recv_timeout(Duration::from_secs(10)).unwrap();
        closer.join().unwrap();
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(1_000));
        hundreds_found(&rt, &log, 10);
        refused_again_and_verified(&rt, &log, [1u128, 450, 1_000]);
        drop((log, store));
    }

    /// A merge of the runs of ids that fails on its thread leaves them as
    /// they were, every id found; the next waits for as many more runs as
    /// that one merged, and one that succeeds brings the next back to
    /// `MERGE_AT`.
    #[test]
    fn a_merge_of_the_runs_of_ids_that_fails_leaves_them_as_they_were() {
        let (_dir, rt, _store, log) = spilling_at_100();
        log.sync_hooks.merge_fail.store(true, Ordering::Relaxed);
        // The merge begun after group 8 or 9 (of 9 or 10 runs) fails.
        for k in 0..10 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
        }
        // No merge replaces the runs while fewer than 17 are held.
        for k in 10..16 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
            let held = runs_up_to(&log, (k as u64 + 1) * 100);
            assert_eq!(held, (k as usize + 1, Some((0, 100))));
        }
        hundreds_found(&rt, &log, 16);
        refused_again_and_verified(&rt, &log, [1u128, 999, 1_600]);
        // At 17 or 18 runs a merge begins (by the end of group 18), and
        // succeeds.
        for k in 16..19 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
        }
        let (runs, first) = runs_settled(&log, 1_900);
        let merged = first.unwrap();
        assert!(merged.0 == 0 && merged.1 >= 1_700, "{merged:?}");
        assert!(runs <= 3, "{runs}");
        // The next merge begins at MERGE_AT again.
        for k in 19..28 {
            rt.block_on(log.append_atomic(hundred(k))).unwrap();
        }
        let (runs, first) = runs_settled(&log, 2_800);
        assert!(runs < ids::MAX_RUNS, "{runs}");
        assert!(first.unwrap().1 > merged.1, "{first:?}");
        hundreds_found(&rt, &log, 28);
        refused_again_and_verified(&rt, &log, [1u128, 1_650, 2_800]);
    }

    /// Appends of 10 new ids each (ids `10k + 1..=10k + 10` for `k` in
    /// `ks`).
    fn tens(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
        ks: std::ops::Range<u128>,
    ) -> Result<(), StoreError> {
        for k in ks {
            rt.block_on(log.append_atomic(ten(k)))?;
        }
        Ok(())
    }

    /// The append of ids `10k + 1..=10k + 10`.
    fn ten(k: u128) -> Vec<AppendRequest> {
        vec![request(k * 10 + 1..k * 10 + 11)]
    }

    /// The id table's length and room.
    fn table_of(log: &SegmentLog) -> (usize, usize) {
        let state = log.state.read().unwrap();
        (
            state.index.ids.table_len(),
            state.index.ids.table_capacity(),
        )
    }

    /// The writer grows an id table of room for `grow_apart_from` ids or
    /// more apart from it, on a thread of its own, once it would hold
    /// three quarters of its room. While that growth is held before it
    /// copies anything, appends are answered and pushed into the table as
    /// it is, which does not grow; the group that would find it full waits
    /// for the growth; once it is let go, the table has twice the room and
    /// every id is found and refused as a repeat.
    #[test]
    fn the_writer_grows_its_id_table_apart_while_appends_go_on() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            grow_apart_from: 400,
            ..SegmentOptions::default()
        });
        let (reached, release) = hold_at(&log.sync_hooks.growth_gate);
        // Smaller tables grow where they are, until one of room for 400 or
        // more would hold more than three quarters of it with the next
        // group: its growth begins before that group is answered.
        let mut k = 0;
        let (len, room) = loop {
            tens(&rt, &log, k..k + 1).unwrap();
            k += 1;
            let (len, room) = table_of(&log);
            if room >= 400 && 4 * len > 3 * room {
                break (len, room);
            }
            assert!(k < 200, "no growth apart began");
        };
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        // Appends go on while the growth is held, into the table as it is.
        let fit = ((room - len) / 10) as u128;
        assert!(fit >= 2, "{len} of {room}");
        tens(&rt, &log, k..k + fit).unwrap();
        k += fit;
        assert_eq!(table_of(&log), (len + 10 * fit as usize, room));
        // The group that would find the table full waits for the growth.
        let (answered, appending) = appends_on_a_thread(&log, k..k + 1, ten);
        assert!(answered.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(table_of(&log).1, room, "not grown where it is");
        let installed = &log.sync_hooks.growths_installed;
        assert_eq!(installed.load(Ordering::Relaxed), 0);
        release.send(()).unwrap();
        answered.recv_timeout(Duration::from_secs(10)).unwrap();
        appending.join().unwrap();
        k += 1;
        assert_eq!(table_of(&log), (10 * k as usize, 2 * room));
        assert_eq!(installed.load(Ordering::Relaxed), 1, "the growth put in");
        all_found(&rt, &log, 10 * k);
        refused_again_and_verified(&rt, &log, [1u128, 10 * k / 2, 10 * k]);
    }

    /// A growth of the id table apart that fails leaves the table as it
    /// is, and none begins again for a table of that room: the writer
    /// grows it where it is once a group would find it full. Once growths
    /// no longer fail, the next is put in; every id is found throughout.
    #[test]
    fn a_growth_of_the_id_table_apart_that_fails_leaves_it_to_the_writer() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            grow_apart_from: 400,
            ..SegmentOptions::default()
        });
        let hooks = &log.sync_hooks;
        hooks.growth_fail.store(true, Ordering::Relaxed);
        let mut rooms = Vec::new();
        for k in 0..400 {
            tens(&rt, &log, k..k + 1).unwrap();
            rooms.push(table_of(&log).1);
        }
        rooms.dedup();
        // Grown where it is at each doubling, past 448 (the first table
        // that grows apart) too: 14, 28, ... 7,168.
        assert_eq!(rooms.last(), Some(&7_168), "{rooms:?}");
        assert!(rooms.len() >= 10, "{rooms:?}");
        for pair in rooms.windows(2) {
            assert_eq!(pair[1], 2 * pair[0], "{rooms:?}");
        }
        // One growth apart began for each table of room for 448 or more
        // once three quarters full, not one at every group after: 448,
        // 896, 1,792 and 3,584 (the table of 7,168 holds 4,000).
        assert_eq!(hooks.growths_begun.load(Ordering::Relaxed), 4);
        assert_eq!(hooks.growths_installed.load(Ordering::Relaxed), 0);
        all_found(&rt, &log, 4_000);
        // Growths no longer fail: the next (begun past 5,376 of 7,168) is
        // put in after a group once its thread has ended, and at the
        // latest before the group that would fill the table.
        hooks.growth_fail.store(false, Ordering::Relaxed);
        let mut k = 400;
        while hooks.growths_installed.load(Ordering::Relaxed) == 0 {
            assert!(k < 717, "not put in before the table was full");
            tens(&rt, &log, k..k + 1).unwrap();
            k += 1;
        }
        assert_eq!(hooks.growths_begun.load(Ordering::Relaxed), 5);
        assert_eq!(table_of(&log).1, 14_336);
        all_found(&rt, &log, 10 * k);
        refused_again_and_verified(&rt, &log, [1u128, 2_000, 10 * k]);
    }

    /// A failed growth apart keeps the table it was for from growing
    /// apart again, not the table a spill starts after it: that one grows
    /// apart once three quarters full, and its growth is put in.
    #[test]
    fn after_a_spill_the_new_id_table_grows_apart_again() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            grow_apart_from: 400,
            spill_ids: 500,
            ..SegmentOptions::default()
        });
        let hooks = &log.sync_hooks;
        hooks.growth_fail.store(true, Ordering::Relaxed);
        // The table of 448 fails to grow apart, grows where it is, and is
        // spilled at 500.
        tens(&rt, &log, 0..51).unwrap();
        assert_eq!(hooks.growths_begun.load(Ordering::Relaxed), 1);
        assert_eq!(table_of(&log).0, 10);
        hooks.growth_fail.store(false, Ordering::Relaxed);
        // The new table grows apart once it holds three quarters of 448.
        let mut k = 51;
        while hooks.growths_installed.load(Ordering::Relaxed) == 0 {
            assert!(k < 51 + 45, "the new table never grew apart");
            tens(&rt, &log, k..k + 1).unwrap();
            k += 1;
        }
        assert_eq!(hooks.growths_begun.load(Ordering::Relaxed), 2);
        all_found(&rt, &log, 10 * k);
    }

    /// The path of the segment the writer writes into now.
    fn current_segment(log: &SegmentLog) -> PathBuf {
        let state = log.state.read().unwrap();
        state.segments.last().unwrap().path.clone()
    }

    /// A log written in bulk (groups of [`LARGE_GROUP_EVENTS`] or more)
    /// keeps its newest [`BULK_CACHED_SEGMENTS`] segments in the page
    /// cache and drops older ones written in bulk as the writer rolls past
    /// them, oldest first; segments written by small groups only are
    /// never dropped; every event reads back, and the log verifies.
    #[test]
    fn segments_written_in_bulk_leave_the_page_cache_behind_the_writer() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            segment_bytes: 16 * 1024,
            ..SegmentOptions::default()
        });
        let current = || current_segment(&log);
        // Small groups: several segments, none written in bulk.
        tens(&rt, &log, 0..40).unwrap();
        let small: Vec<PathBuf> = {
            let state = log.state.read().unwrap();
            state.segments.iter().map(|s| s.path.clone()).collect()
        };
        assert!(
            small.len() > BULK_CACHED_SEGMENTS,
            "{} segments",
            small.len()
        );
        // Each bulk group is larger than a segment: one segment each.
        let mut bulk: Vec<PathBuf> = Vec::new();
        let mut next = 401u128;
        for _ in 0..7 {
            let n = LARGE_GROUP_EVENTS as u128;
            rt.block_on(log.append_atomic(vec![request(next..next + n)]))
                .unwrap();
            next += n;
            let at = current();
            if bulk.last() != Some(&at) {
                bulk.push(at);
            }
        }
        assert!(bulk.len() >= 6, "{} segments written in bulk", bulk.len());
        let dropped = log.sync_hooks.dropped.lock().unwrap().clone();
        // The current segment and the newest closed ones stay.
        let kept = BULK_CACHED_SEGMENTS;
        assert_eq!(dropped, bulk[..bulk.len() - kept].to_vec());
        all_found(&rt, &log, next - 1);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
    }

    /// A group written in bulk whose fdatasync fails leaves nothing it
    /// wrote dropped from the page cache: only segments closed after
    /// their last group's fdatasync are dropped, the failed group's
    /// segment is the current one (cut back), and once the writer has
    /// stopped nothing more is dropped. A reopen finds every event
    /// acknowledged before it, in the segments dropped too.
    #[test]
    fn a_group_written_in_bulk_whose_fdatasync_fails_drops_nothing_unsynced() {
        let (dir, rt, store, log) = fresh_log_with(SegmentOptions {
            segment_bytes: 16 * 1024,
            ..SegmentOptions::default()
        });
        let n = LARGE_GROUP_EVENTS as u128;
        let mut next = 1u128;
        for _ in 0..6 {
            rt.block_on(log.append_atomic(vec![request(next..next + n)]))
                .unwrap();
            next += n;
        }
        let acknowledged = next - 1;
        let before = log.sync_hooks.dropped.lock().unwrap().clone();
        assert!(!before.is_empty(), "segments written in bulk were dropped");
        log.sync_hooks.fail.store(true, Ordering::Relaxed);
        match rt.block_on(log.append_atomic(vec![request(next..next + n)])) {
            Err(e @ StoreError::Io { .. }) => assert!(e.to_string().contains("fdatasync"), "{e}"),
            other => panic!("expected the failed fdatasync, got {other:?}"),
        }
        let failed_in = current_segment(&log);
        let dropped = log.sync_hooks.dropped.lock().unwrap().clone();
        assert!(
            !dropped.contains(&failed_in),
            "the segment of the failed group was dropped"
        );
        // The roll into the failed group's segment closed a durable one:
        // at most that one more was dropped.
        assert!(dropped.starts_with(&before) && dropped.len() <= before.len() + 1);
        assert!(rt
            .block_on(log.append_atomic(vec![request(next..next + 1)]))
            .is_err());
        assert_eq!(*log.sync_hooks.dropped.lock().unwrap(), dropped);
        drop((log, store));
        let store = SegmentStore::open(dir.path(), false).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(
            u128::from(rt.block_on(log.head()).unwrap().position),
            acknowledged
        );
        all_found(&rt, &log, acknowledged);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
    }

    /// A fresh log (its directory, a runtime, the store and the log), and
    /// a gate of its held at: the word that its thread got there, and
    /// the sender of the word to go on ([`hold_at`]).
    type HeldLog = (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    );

    /// A fresh log whose id tables grow apart from room for 200 ids, and
    /// the gate its next growth's thread says it has started at and waits
    /// to go on at ([`hold_at`]).
    fn growing_apart_held() -> HeldLog {
        let (dir, rt, store, log) = fresh_log_with(SegmentOptions {
            grow_apart_from: 200,
            ..SegmentOptions::default()
        });
        let (reached, release) = hold_at(&log.sync_hooks.growth_gate);
        (dir, rt, store, log, reached, release)
    }

    /// The table of a growth of the id table on a thread of its own is
    /// counted in [`SegmentLog::index_bytes`] while the thread holds it,
    /// and as the index's own table once the writer has put it in.
    #[test]
    fn index_bytes_count_a_table_grown_apart() {
        // The growth held before it copies anything, so that it is not
        // put in after the group it began before.
        let (_dir, rt, _store, log, reached, release) = growing_apart_held();
        let hooks = &log.sync_hooks;
        // Appends until the group that began the growth (the table's own
        // state, not the thread's count, which comes when the thread
        // runs): a group more than fits before the table is full would
        // wait for the growth held at its gate.
        let mut k = 0;
        loop {
            tens(&rt, &log, k..k + 1).unwrap();
            k += 1;
            let (len, room) = table_of(&log);
            if room >= 200 && 4 * len > 3 * room {
                break;
            }
            assert!(k < 100, "no growth began");
        }
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(log.growing_bytes.load(Ordering::Relaxed), 0);
        release.send(()).unwrap();
        // Nothing is appended meanwhile: the growth is not put in.
        let waited = Instant::now();
        while log.growing_bytes.load(Ordering::Relaxed) == 0 {
            assert!(waited.elapsed() < Duration::from_secs(10), "no table made");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(hooks.growths_installed.load(Ordering::Relaxed), 0);
        let tables = || {
            let state = log.state.read().unwrap();
            let ix = &state.index;
            (ix.locs.allocated_bytes() + ix.streams.allocated_bytes() + ix.ids.allocated_bytes())
                as u64
        };
        let growing = log.growing_bytes.load(Ordering::Relaxed) as u64;
        let (_, room) = table_of(&log);
        // Twice the table's room: at least 5 bytes a bucket for as many.
        assert!(
            growing >= 2 * room as u64 * 5,
            "{growing} bytes for room {room}"
        );
        assert_eq!(log.index_bytes(), tables() + growing);
        let ids_before = log.state.read().unwrap().index.ids.allocated_bytes();
        while hooks.growths_installed.load(Ordering::Relaxed) == 0 {
            tens(&rt, &log, k..k + 1).unwrap();
            k += 1;
            assert!(k < 1_000, "the growth was not put in");
        }
        assert_eq!(log.growing_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(log.index_bytes(), tables());
        let ids_after = log.state.read().unwrap().index.ids.allocated_bytes();
        // The grown table is the index's own now, in the old one's place.
        assert!(ids_after > ids_before && ids_after as u64 >= growing);
        all_found(&rt, &log, k * 10);
    }

    /// A growth apart of a table that is frozen for a spill before the
    /// growth has copied anything is dropped: the spill's new table grows
    /// as any, and every id is found.
    #[test]
    fn a_growth_apart_of_a_table_since_spilled_is_dropped() {
        let (_dir, rt, _store, log) = fresh_log_with(SegmentOptions {
            grow_apart_from: 200,
            spill_ids: 200,
            ..SegmentOptions::default()
        });
        let (reached, release) = hold_at(&log.sync_hooks.growth_gate);
        // The growth begins before the group that takes the table to 170
        // of 224 (three quarters: 168); the spill after the group that
        // ends at 200 freezes it, and the next group finds a new table,
        // empty: the growth is told to stop, not waited for.
        let (answered, appending) = appends_on_a_thread(&log, 0..21, ten);
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        answered.recv_timeout(Duration::from_secs(10)).unwrap();
        appending.join().unwrap();
        assert_eq!(table_of(&log).0, 10);
        release.send(()).unwrap();
        tens(&rt, &log, 21..60).unwrap();
        all_found(&rt, &log, 600);
        refused_again_and_verified(&rt, &log, [1u128, 190, 600]);
    }

    /// An open that indexes every frame spills the id table as it scans
    /// (here after every 700 ids): the table stays small, every id is a
    /// candidate at its position, ids sharing a fingerprint across runs
    /// and the table are found by the scan's merged pass as one group,
    /// and nothing is left in the log's directory.
    #[test]
    fn a_scan_spills_its_ids_and_finds_them_all() {
        let (dir, rt) = dir_and_runtime();
        let options = SegmentOptions {
            snapshot_min_events: u64::MAX,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        for start in (1..=3_000u128).step_by(100) {
            rt.block_on(log.append_atomic(vec![request(start..start + 100)]))
                .unwrap();
        }
        let log_dir = log.dir().to_path_buf();
        drop((log, store));
        let rec = recover(
            &log_dir,
            false,
            OpenWith::ids(true),
            Spills {
                ids: 700,
                ..Spills::DEFAULT
            },
        )
        .unwrap();
        let ids = &rec.index.ids;
        assert_eq!(ids.len(), 3_000);
        assert_eq!(ids.runs().len(), 4, "spilled at 700, 1_400, 2_100, 2_800");
        assert_eq!(ids.table_len(), 200);
        for p in 1..=3_000u32 {
            assert_eq!(ids.only(&Uuid::from_u128(u128::from(p))), Some(p));
        }
        assert!(rec.index.shared.is_empty());
        // Every id with one fingerprint: the merged pass pairs them all.
        let mut colliding = Ids::with_hasher(IdHash::colliding());
        for p in 1..=5u32 {
            colliding.push(Uuid::from_u128(u128::from(p)), p);
            if p % 2 == 0 {
                assert!(colliding.spill_in_place(&log_dir).is_ok());
            }
        }
        assert_eq!(
            colliding.sharing_groups().unwrap(),
            vec![vec![1, 2, 3, 4, 5]]
        );
        let names: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
    }

    /// An open's scan keeps at most `Spills::pending` frames of a group;
    /// a longer group is read to its end, then again from its start into
    /// the index: the same index as a scan that keeps each group whole,
    /// whatever the limit; a longer group torn anywhere (the log's last)
    /// is cut whole, as before, and the groups before it kept.
    #[test]
    fn a_group_longer_than_the_scan_keeps_is_read_again_into_the_same_index() {
        let (_dir, rt, store, log) = fresh_log_with(SegmentOptions {
            snapshot_min_events: u64::MAX,
            ..SegmentOptions::default()
        });
        let mut next = 1u128;
        for n in [1u128, 5, 2, 9, 3, 4, 12] {
            rt.block_on(log.append_atomic(vec![request(next..next + n)]))
                .unwrap();
            next += n;
        }
        let log_dir = log.dir().to_path_buf();
        drop((log, store));
        let events = (next - 1) as u32;
        // The log opened by a scan that keeps at most `pending` frames.
        let recovered = |pending: usize| {
            recover(
                &log_dir,
                false,
                OpenWith::ids(true),
                Spills {
                    pending,
                    ..Spills::DEFAULT
                },
            )
            .unwrap()
        };
        let summary = |pending: usize| {
            let rec = recovered(pending);
            let index = &rec.index;
            let ids: Vec<Option<u32>> = (1..=events)
                .map(|p| index.ids.only(&Uuid::from_u128(u128::from(p))))
                .collect();
            (
                index.head(),
                index.head_hash,
                index.locs.to_vec(),
                index.locs.groups(),
                ids,
                rec.end,
                rec.torn,
            )
        };
        let whole = summary(usize::MAX);
        assert_eq!(whole.0, u64::from(events));
        for pending in [0, 1, 2, 3, 4, 8, 11, 12, 13] {
            assert_eq!(summary(pending), whole, "at most {pending} frames kept");
        }
        // The last group (12 frames) cut inside: the 24 events before it.
        let seg = list_segments(&log_dir).unwrap().pop().unwrap().1;
        let full = std::fs::read(&seg).unwrap();
        let last_start = whole.2[24].offset as usize;
        for cut in [last_start + 1, last_start + 100, full.len() - 1] {
            std::fs::write(&seg, &full[..cut]).unwrap();
            for pending in [usize::MAX, 3] {
                let rec = recovered(pending);
                assert_eq!(rec.index.head(), 24, "cut at {cut}, {pending} kept");
                assert_eq!(rec.end, last_start as u64);
                assert_eq!(rec.index.locs.to_vec(), whole.2[..24].to_vec());
            }
        }
    }

    /// Appends each of `ids` (id i was stored at position i) again, each
    /// refused as a repeat naming its position, then verifies the log,
    /// which must pass.
    fn refused_again_and_verified(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
        ids: impl IntoIterator<Item = u128>,
    ) -> VerifyReport {
        for again in ids {
            match rt.block_on(log.append_atomic(vec![request(again..again + 1)])) {
                Err(StoreError::DuplicateEventId { position, .. }) => {
                    assert_eq!(position as u128, again)
                }
                other => panic!("expected DuplicateEventId at {again}, got {other:?}"),
            }
        }
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        assert!(report.ok, "{:?}", report.problems);
        report
    }

    /// Verifies `log`, which must pass.
    fn assert_verifies(rt: &tokio::runtime::Runtime, log: &SegmentLog) {
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        assert!(report.ok, "{:?}", report.problems);
    }

    /// A temporary directory and a current-thread runtime.
    fn dir_and_runtime() -> (tempfile::TempDir, tokio::runtime::Runtime) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (dir, rt)
    }

    /// A store of `school-a` in `dir` with these snapshot settings; the
    /// event ids of a snapshot are left in the file until first needed,
    /// the snapshot's checksum and stream lists read on threads of their
    /// own however small it is (as a large one is).
    fn open_log(
        dir: &Path,
        read_snapshot: bool,
        snapshot_min_events: u64,
    ) -> (Arc<SegmentStore>, Arc<SegmentLog>) {
        let options = SegmentOptions {
            snapshot_min_events,
            read_snapshot,
            event_ids_at_open: false,
            snapshot_beside_bytes: 0,
            // The ids' first use reads them (none looked up in place:
            // `index_tests::ids_looked_up_in_place`).
            ids_in_place_least: 0,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir, true, options).unwrap();
        let log = store.log("school-a").unwrap();
        (store, log)
    }

    /// The index snapshot of `school-a`'s log in the store `dir`.
    fn snapshot_of_school_a(dir: &Path) -> PathBuf {
        dir.join(LOGS_DIR)
            .join("school-a")
            .join(snapshot::SNAPSHOT_FILE)
    }

    /// A store of `school-a` in `dir` whose opens leave the event ids in
    /// the snapshot (every location held, or only the groups' starts) and
    /// look up to `least` of them there in place.
    fn open_in_place(
        dir: &Path,
        least: u64,
        locations: bool,
    ) -> (Arc<SegmentStore>, Arc<SegmentLog>) {
        let options = SegmentOptions {
            snapshot_min_events: 1,
            event_ids_at_open: false,
            locations_at_open: locations,
            ids_in_place_least: least,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir, true, options).unwrap();
        let log = store.log("school-a").unwrap();
        (store, log)
    }

    /// Format 6: an open that left the ids in the snapshot looks a few up
    /// there in place, with the directory of their blocks, without reading
    /// them: a look-up by id finds those of the snapshot and those after
    /// it, and not an absent one; an append of given ids refuses one
    /// stored in the snapshot or after it, and takes new ones, with or
    /// without the caller's look-up ([`IdsChecked`]); the close copies the
    /// section, and the next open finds every id in place, and reading
    /// them (an open for appends; `verify`). Past the budget of look-ups
    /// in place ([`in_place_budget`]), the next reads them whole.
    #[test]
    fn ids_looked_up_in_place() {
        for locations in [true, false] {
            let (dir, rt) = dir_and_runtime();
            log_with_snapshot_and_tail(&rt, dir.path());
            let (store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, locations);
            assert_eq!(log.opened_from_snapshot(), Some(5));
            let position = |log: &SegmentLog, id: u128| {
                rt.block_on(log.find_event(Uuid::from_u128(id)))
                    .unwrap()
                    .map(|e| e.position)
            };
            assert_eq!(position(&log, 3), Some(3));
            assert_eq!(position(&log, 7), Some(7));
            assert_eq!(position(&log, 99), None);
            for (id, at) in [(2, 2), (6, 6)] {
                match rt.block_on(log.append_atomic(vec![request(id..id + 1)])) {
                    Err(StoreError::DuplicateEventId { position, .. }) => assert_eq!(position, at),
                    other => panic!("expected DuplicateEventId at {at}, got {other:?}"),
                }
            }
            rt.block_on(log.append_atomic(vec![request(8..9)])).unwrap();
            // Looked up by the caller, then appended: the writer tests
            // them against what was stored since (the minted 9).
            let (found, seen) = rt
                .block_on(log.find_events_checked(&[Uuid::from_u128(10), Uuid::from_u128(9)]))
                .unwrap();
            assert!(found.is_empty());
            let seen = seen.expect("the segment engine says what it saw");
            assert_eq!(seen.through(), 8);
            rt.block_on(log.append_minted(request(9..10))).unwrap();
            let repeat = vec![to_stream(2, 9..10)];
            let checked = IdsChecked::new(seen, vec![], &repeat);
            match rt.block_on(log.append_atomic_checked(repeat, checked)) {
                Err(StoreError::DuplicateEventId { position: 9, .. }) => {}
                other => panic!("expected DuplicateEventId at 9, got {other:?}"),
            }
            let fresh = vec![to_stream(2, 10..11)];
            let checked = IdsChecked::new(seen, vec![], &fresh);
            rt.block_on(log.append_atomic_checked(fresh, checked))
                .unwrap();
            assert_eq!(position(&log, 10), Some(10));
            assert!(!log.event_ids_held(), "locations: {locations}");
            drop((log, store));

            // The close copied the section with 6..=10 merged in.
            let (store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, locations);
            assert_eq!(log.opened_from_snapshot(), Some(10));
            for id in 1..=10 {
                let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
                assert_eq!(found.map(|e| e.position), Some(id as u64));
            }
            assert!(!log.event_ids_held());
            assert_eq!(log.take_snapshot_rejection(), None);
            drop((log, store));
            // A budget of two block reads: the two ids of one look-up
            // read their block once, the third id's look-up it again, and
            // the fourth's reads the ids whole.
            let (store, log) = open_in_place(dir.path(), 2, locations);
            for ids in [&[1u128, 2][..], &[3]] {
                let ids: Vec<Uuid> = ids.iter().map(|&i| Uuid::from_u128(i)).collect();
                assert_eq!(rt.block_on(log.find_events(&ids)).unwrap().len(), ids.len());
            }
            assert!(
                !log.event_ids_held(),
                "two block reads are within the budget"
            );
            assert!(rt
                .block_on(log.find_event(Uuid::from_u128(4)))
                .unwrap()
                .is_some());
            assert!(
                log.event_ids_held(),
                "a third block read is past the budget"
            );
            assert_verifies(&rt, &log);
            drop((log, store));
            let store = SegmentStore::open(dir.path(), false).unwrap();
            let log = store.log("school-a").unwrap();
            assert_eq!(log.opened_from_snapshot(), Some(10));
            assert!(log.event_ids_held());
            assert_eq!(position(&log, 10), Some(10));
        }
    }

    /// Looked up in place, a block of the ids' section changed after the
    /// snapshot was written, or the directory of the blocks, is not used:
    /// the ids are read whole, which finds a changed section (its
    /// checksum) and indexes them from the segments, with the reason; a
    /// changed directory alone leaves the section read as sound. One id
    /// stored twice (a minted id repeating one of the snapshot) is found
    /// by a look-up of that id as a corrupt log.
    #[test]
    fn ids_looked_up_in_place_are_checked() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let path = snapshot_of_school_a(dir.path());
        let sound = std::fs::read(&path).unwrap();
        let blocks = snapshot::id_blocks_bytes(5).unwrap() as usize;
        let ids_end = sound.len() - blocks;
        for (what, at) in [
            ("a pair", ids_end - 32 - 12 * 3 + 2),
            ("a block's fence", ids_end + 8 + 1),
            ("a block's CRC-32", ids_end + 8 + 9),
        ] {
            let mut bytes = sound.clone();
            bytes[at] ^= 0x21;
            std::fs::write(&path, &bytes).unwrap();
            let (_store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
            assert_eq!(log.opened_from_snapshot(), Some(5), "{what}");
            let found = rt.block_on(log.find_event(Uuid::from_u128(4))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(4), "{what}");
            assert!(log.event_ids_held(), "{what}: read whole");
            let why = log.take_snapshot_rejection();
            match what {
                "a pair" => assert!(
                    why.as_deref()
                        .is_some_and(|w| w.contains("the ids' section: checksum mismatch")),
                    "{what}: {why:?}"
                ),
                _ => assert_eq!(why, None, "{what}"),
            }
        }
        std::fs::write(&path, &sound).unwrap();
        let (_store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        rt.block_on(log.append_minted(request(2..3))).unwrap();
        match rt.block_on(log.find_event(Uuid::from_u128(2))) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("is already stored at position 2"), "{what}")
            }
            other => panic!("expected a corrupt log, got {other:?}"),
        }
        assert!(!log.event_ids_held());
    }

    /// A close that writes the snapshot from an index that keeps only
    /// where each group starts copies the old snapshot's frame lengths
    /// from its file and walks only the frames after it: the snapshot is,
    /// byte for byte, the one a close that held every location writes.
    /// Lengths changed in the old file are not copied (their checksum):
    /// every location is read, the frames walked, and the snapshot is the
    /// same again.
    #[test]
    fn a_sparse_close_copies_the_frame_lengths() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let path = snapshot_of_school_a(dir.path());
        let old = std::fs::read(&path).unwrap();
        // A close of an open that writes the snapshot (2 events follow
        // it), with the old one put back first: whether it copied the
        // lengths, and the snapshot written.
        let close = |bytes: &[u8], locations: bool| {
            std::fs::write(&path, bytes).unwrap();
            let (store, log) = open_in_place(dir.path(), 0, locations);
            assert_eq!(log.opened_from_snapshot(), Some(5));
            let hooks = log.sync_hooks.clone();
            drop((log, store));
            let copied = hooks.lens_copied.load(Ordering::Relaxed);
            let refused = hooks.lens_refused.load(Ordering::Relaxed);
            (copied, refused, std::fs::read(&path).unwrap())
        };
        let (copied, refused, sparse) = close(&old, false);
        assert!(copied && !refused);
        let (copied, refused, full) = close(&old, true);
        assert!(!copied && !refused);
        assert_eq!(sparse, full);
        assert_eq!(u64::from_le_bytes(full[12..20].try_into().unwrap()), 7);
        // Position 2's length (after the header and one segment).
        let mut changed = old.clone();
        changed[64 + 16 + 4] ^= 0x01;
        let (copied, refused, walked) = close(&changed, false);
        assert!(!copied && refused);
        assert_eq!(walked, full);
        // A pair of the ids' section changed too: both copies refused,
        // each section read, and the snapshot written.
        let pairs_at = old.len() - snapshot::id_blocks_bytes(5).unwrap() as usize - 32 - 12 * 5;
        changed[pairs_at + 3] ^= 0x01;
        let (copied, refused, walked) = close(&changed, false);
        assert!(!copied && refused);
        assert_eq!(walked, full);
        let (_store, log) = open_in_place(dir.path(), 0, true);
        assert_eq!(log.opened_from_snapshot(), Some(7));
        assert_verifies(&rt, &log);
    }

    /// A snapshot of format 5 (no directory of its ids' blocks) is read as
    /// before: opened from, its ids read whole at their first look-up, no
    /// note; the close writes format 6.
    #[test]
    fn a_snapshot_of_format_5_has_its_ids_read_whole() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let path = snapshot_of_school_a(dir.path());
        let v6 = std::fs::read(&path).unwrap();
        // Format 5: without the directory of the ids' blocks, its version,
        // and the checksum over the header, the segments and the directory
        // (the layout of `a_byte_changed_anywhere_in_the_snapshot_is_…`).
        let ids_end = v6.len() - snapshot::id_blocks_bytes(5).unwrap() as usize;
        let mut v5 = v6[..ids_end].to_vec();
        v5[8..12].copy_from_slice(&5u32.to_le_bytes());
        let (lens_at, dir_at) = (64 + 16, 64 + 16 + 20 + 32 + 20);
        let dir_sum_at = ids_end - 32 - 8 - 5 * 12 - 32;
        let mut sum = blake3::Hasher::new();
        sum.update(&v5[..lens_at]);
        sum.update(&v5[dir_at..dir_sum_at]);
        v5[dir_sum_at..dir_sum_at + 32].copy_from_slice(sum.finalize().as_bytes());
        std::fs::write(&path, &v5).unwrap();
        let (store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        assert_eq!(log.opened_from_snapshot(), Some(5));
        assert!(!log.event_ids_held());
        let found = rt.block_on(log.find_event(Uuid::from_u128(3))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(3));
        assert!(log.event_ids_held(), "no directory: read whole");
        assert_eq!(log.take_snapshot_rejection(), None);
        drop((log, store));
        let written = std::fs::read(&path).unwrap();
        assert_eq!(le_u32(&written[8..12]), 6);
        assert_eq!(le_u64(&written[12..20]), 7);
    }

    /// A block of the ids' section changed after the snapshot was written,
    /// in a log of many blocks, one that no spot check reads: look-ups of
    /// ids in other blocks go on in place; the first that reads it finds
    /// it against its CRC-32 and stops the look-ups in place. A reader's
    /// look-up then reads the ids (their checksum refuses them: indexed
    /// from the segments, with the note) and finds the id; the writer's
    /// refuses the append that met it, and the next append reads the ids
    /// and is refused as a repeat of the stored id.
    /// A batch of ids looked up in place reads each block of the section
    /// they fall in once, and is counted so against the budget: every id
    /// of a log of 30,000 events (118 blocks) twice, in two batches,
    /// stays in place (236 block reads of 256), and so does one id more;
    /// a batch that falls in more blocks than are left reads the ids
    /// whole, though some budget was left.
    #[test]
    fn a_batch_past_what_is_left_of_the_budget_reads_the_ids() {
        let (dir, rt) = dir_and_runtime();
        let head = 30_000u128;
        {
            let (store, log) = open_log(dir.path(), true, 1);
            rt.block_on(log.append_atomic(vec![request(1..head + 1)]))
                .unwrap();
            drop((log, store));
        }
        let (_store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        assert_eq!(in_place_budget(head as u64, IN_PLACE_LEAST), 256);
        let ids =
            |range: std::ops::Range<u128>| -> Vec<Uuid> { range.map(Uuid::from_u128).collect() };
        for round in 0..2 {
            let found = rt.block_on(log.find_events(&ids(1..head + 1))).unwrap();
            assert_eq!(found.len(), head as usize, "round {round}");
            assert!(!log.event_ids_held(), "round {round}: 118 block reads each");
        }
        assert_eq!(rt.block_on(log.find_events(&ids(7..8))).unwrap().len(), 1);
        assert!(!log.event_ids_held(), "one block more: 237 of 256");
        // 64 ids spread over the log fall in far more than 19 blocks.
        let spread: Vec<Uuid> = (0..64).map(|k| Uuid::from_u128(1 + k * 467)).collect();
        assert_eq!(rt.block_on(log.find_events(&spread)).unwrap().len(), 64);
        assert!(log.event_ids_held(), "past what was left: read whole");
    }

    #[test]
    fn a_changed_block_is_found_by_the_look_up_that_reads_it() {
        let (dir, rt) = dir_and_runtime();
        let head = 30_000u64;
        let path = {
            let (store, log) = open_log(dir.path(), true, 1);
            rt.block_on(log.append_atomic(vec![request(1..u128::from(head) + 1)]))
                .unwrap();
            let path = log.dir().join(snapshot::SNAPSHOT_FILE);
            drop((log, store));
            path
        };
        let sound = std::fs::read(&path).unwrap();
        assert_eq!(le_u64(&sound[12..20]), head);
        let hasher = IdHash::with_seed(le_u64(&sound[52..60]));
        let fp = |p: u64| hasher.hash_one(Uuid::from_u128(u128::from(p)));
        let ids_end = sound.len() - snapshot::id_blocks_bytes(head).unwrap() as usize;
        let pairs_at = ids_end - 32 - 12 * head as usize;
        let blocks = head.div_ceil(256) as usize;
        let fence = |b: usize| le_u64(&sound[ids_end + 8 + 12 * b..]);
        // The spot checks' frames: the head and 64 spread from position 1.
        let spots: Vec<u64> = (0..64)
            .map(|k| 1 + k * (head - 1) / 64)
            .chain([head])
            .map(fp)
            .collect();
        // A block (not the last) whose fingerprints, its ends included, no
        // spot check has.
        let b = (1..blocks - 1)
            .find(|&b| {
                !spots
                    .iter()
                    .any(|&f| (fence(b)..=fence(b + 1)).contains(&f))
            })
            .expect("a block no spot check reads");
        let pair = |i: usize| {
            let at = pairs_at + 12 * i;
            (le_u64(&sound[at..]), u64::from(le_u32(&sound[at + 8..])))
        };
        let (target_fp, target) = pair(b * 256 + 5);
        assert!(fence(b) < target_fp && target_fp < fence(b + 1));
        let elsewhere = pair((b + 2) % blocks * 256 + 7).1;
        let mut changed = sound.clone();
        changed[pairs_at + 12 * (b * 256 + 10) + 8] ^= 0x40;

        std::fs::write(&path, &changed).unwrap();
        let (store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        let position = |id: u64| {
            rt.block_on(log.find_event(Uuid::from_u128(u128::from(id))))
                .unwrap()
                .map(|e| e.position)
        };
        assert_eq!(position(elsewhere), Some(elsewhere));
        assert!(!log.event_ids_held());
        assert_eq!(position(target), Some(target));
        assert!(log.event_ids_held());
        let why = log.take_snapshot_rejection();
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("the ids' section: checksum mismatch")),
            "{why:?}"
        );
        drop((log, store));

        std::fs::write(&path, &changed).unwrap();
        let (_store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        let again = |id: u64| {
            rt.block_on(log.append_atomic(vec![request(u128::from(id)..u128::from(id) + 1)]))
        };
        match again(elsewhere) {
            Err(StoreError::DuplicateEventId { position, .. }) => assert_eq!(position, elsewhere),
            other => panic!("expected DuplicateEventId, got {other:?}"),
        }
        match again(target) {
            Err(StoreError::Internal(what)) => assert!(what.contains("event ids"), "{what}"),
            other => panic!("expected the look-up's failure, got {other:?}"),
        }
        assert!(!log.event_ids_held());
        match again(target) {
            Err(StoreError::DuplicateEventId { position, .. }) => assert_eq!(position, target),
            other => panic!("expected DuplicateEventId, got {other:?}"),
        }
        assert!(log.event_ids_held());
    }

    /// The ids' section of another log's snapshot of as many events (with
    /// the directory of its blocks: both match their checksums) is not
    /// looked up in place: the frames the open read for its spot checks
    /// are not listed in it, so the ids are read whole, refused by the same
    /// check, and indexed from the segments, with the reason; every id is
    /// found.
    #[test]
    fn another_logs_ids_are_not_looked_up_in_place() {
        let (dir, rt) = dir_and_runtime();
        let (other, _) = dir_and_runtime();
        let snapshot_of = |dir: &Path, ids: std::ops::Range<u128>| {
            let (store, log) = open_log(dir, true, 1);
            rt.block_on(log.append_atomic(vec![request(ids)])).unwrap();
            let path = log.dir().join(snapshot::SNAPSHOT_FILE);
            drop((log, store));
            path
        };
        let path = snapshot_of(dir.path(), 1..6);
        let foreign = std::fs::read(snapshot_of(other.path(), 101..106)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), foreign.len());
        // The ids' section (count, pairs, checksum) and the directory of
        // their blocks, to the end.
        let from = bytes.len() - snapshot::id_blocks_bytes(5).unwrap() as usize - 32 - 8 - 5 * 12;
        bytes[from..].copy_from_slice(&foreign[from..]);
        std::fs::write(&path, &bytes).unwrap();
        let (_store, log) = open_in_place(dir.path(), IN_PLACE_LEAST, true);
        assert_eq!(log.opened_from_snapshot(), Some(5));
        for id in 1..6u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64));
        }
        assert!(log.event_ids_held());
        let why = log.take_snapshot_rejection();
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("is not the event it lists there")),
            "{why:?}"
        );
    }

    /// Ids 1..=5 in the snapshot (written at the close), 6 and 7 appended
    /// after it by an open that neither read nor rewrote it, so that the
    /// next open from the snapshot indexes them from the segment.
    fn log_with_snapshot_and_tail(rt: &tokio::runtime::Runtime, dir: &Path) {
        let (store, log) = open_log(dir, true, 1);
        rt.block_on(log.append_atomic(vec![request(1..6)])).unwrap();
        drop((log, store));
        let (store, log) = open_log(dir, false, u64::MAX);
        rt.block_on(log.append_atomic(vec![request(6..8)])).unwrap();
        drop((log, store));
    }

    /// The versions `read_stream` gives of stream `s`.
    fn versions_read(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
        s: u128,
        from: u64,
        max: usize,
    ) -> Vec<u64> {
        let stream = StreamId(Uuid::from_u128(s));
        let read = rt.block_on(log.read_stream(stream, from, max)).unwrap();
        read.iter().map(|e| e.version).collect()
    }

    /// The `k`th (from 0) of a run of groups of 60 events: 50 to one of
    /// three long streams (1 + k % 3), 10 to a stream of its own
    /// (100 + k).
    fn group_of_60(k: u128) -> Vec<AppendRequest> {
        let base = 1 + k * 60;
        vec![
            to_stream(1 + k % 3, base..base + 50),
            to_stream(100 + k, base + 50..base + 60),
        ]
    }

    /// Appends to stream `s` the events of `ids`, interleaved by the caller
    /// with other streams' so that lists span blocks and positions.
    fn to_stream(s: u128, ids: impl IntoIterator<Item = u128>) -> AppendRequest {
        AppendRequest {
            stream: StreamId(Uuid::from_u128(s)),
            ..request(ids)
        }
    }

    /// A log whose snapshot lists stream 1 with 2,600 versions (three
    /// blocks of a list), streams 2 and 3 with 4 each, and after it (an
    /// open that left the snapshot as it was) 5 more events of stream 1, 2
    /// of stream 3 and one of a new stream 4.
    fn log_with_long_lists(rt: &tokio::runtime::Runtime, dir: &Path) {
        let (store, log) = open_log(dir, true, 1);
        for k in 0..13u128 {
            let base = 1 + k * 200;
            let mut group = vec![to_stream(1, base..base + 200)];
            if k < 4 {
                group.push(to_stream(2 + (k % 2), 10_000 + k * 2..10_002 + k * 2));
            }
            rt.block_on(log.append_atomic(group)).unwrap();
        }
        drop((log, store));
        let (store, log) = open_log(dir, true, u64::MAX);
        rt.block_on(log.append_atomic(vec![
            to_stream(1, 20_000..20_005),
            to_stream(3, 20_005..20_007),
            to_stream(4, 30_000..30_001),
        ]))
        .unwrap();
        drop((log, store));
    }

    /// Options of the sparse-index tests: segments of 64 KiB (a few
    /// hundred frames each), the ids left in the snapshot.
    fn sparse_options(locations_at_open: bool, snapshot_min_events: u64) -> SegmentOptions {
        SegmentOptions {
            segment_bytes: 64 << 10,
            snapshot_min_events,
            event_ids_at_open: false,
            locations_at_open,
            ..SegmentOptions::default()
        }
    }

    fn open_sparse_test(
        dir: &Path,
        options: SegmentOptions,
    ) -> (Arc<SegmentStore>, Arc<SegmentLog>) {
        let store = SegmentStore::open_with(dir, true, options).unwrap();
        let log = store.log("school-a").unwrap();
        (store, log)
    }

    /// 1,800 events in about ten segments (groups of 60: 50 to one of
    /// streams 1 to 3, 10 to a stream of their own) in the snapshot,
    /// written at the close, and 300 after it, appended by an open that
    /// left the snapshot as it was.
    fn log_for_sparse_reads(rt: &tokio::runtime::Runtime, dir: &Path) {
        let (store, log) = open_sparse_test(dir, sparse_options(true, 1));
        for k in 0..30u128 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        drop((log, store));
        let (store, log) = open_sparse_test(dir, sparse_options(true, u64::MAX));
        for k in 30..35u128 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        drop((log, store));
    }

    fn is_sparse(log: &SegmentLog) -> bool {
        log.state.read().unwrap().index.locs.is_sparse()
    }

    /// A log opened from its snapshot keeping only where each group of
    /// positions starts answers as one that holds every location: pages
    /// in position order from anywhere (inside a group, across segments,
    /// across the snapshot's head, past the log's), a few streams by
    /// walking their groups, and once more is asked every location read
    /// from the snapshot and the frames after it; an append of minted ids
    /// keeps it sparse, and it verifies.
    #[test]
    fn a_sparse_index_reads_as_a_whole_one() {
        let (dir, rt) = dir_and_runtime();
        log_for_sparse_reads(&rt, dir.path());
        let (store, whole) = open_sparse_test(dir.path(), sparse_options(true, u64::MAX));
        assert_eq!(whole.opened_from_snapshot(), Some(1_800));
        assert!(!is_sparse(&whole));
        let all = rt.block_on(whole.read_all(1, 10_000)).unwrap();
        assert_eq!(all.len(), 2_100);
        let streams: Vec<u128> = vec![1, 2, 3, 100, 117, 134];
        let by_stream = |log: &SegmentLog, s: u128| {
            rt.block_on(log.read_stream(StreamId(Uuid::from_u128(s)), 1, 10_000))
                .unwrap()
        };
        let whole_streams: Vec<_> = streams.iter().map(|&s| by_stream(&whole, s)).collect();
        // The groups that hold each stream's events (a group of 64
        // positions, cut where a segment starts).
        let groups: Vec<usize> = whole_streams
            .iter()
            .map(|events| {
                let state = whole.state.read().unwrap();
                let mut starts: Vec<u64> = events
                    .iter()
                    .map(|e| state.index.locs.spans(e.position, e.position)[0].start)
                    .collect();
                starts.dedup();
                starts.len()
            })
            .collect();
        drop((whole, store));

        let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
        assert_eq!(sparse.opened_from_snapshot(), Some(1_800));
        assert!(is_sparse(&sparse));
        let head = rt.block_on(sparse.head()).unwrap();
        assert_eq!((head.position, head.hash), (2_100, all[2_099].hash));
        let pages: [(u64, usize); 11] = [
            (1, 1),
            (1, 10_000),
            (63, 1),
            (64, 2),
            (65, 130),
            (333, 777),
            (1_790, 20),
            (1_801, 64),
            (2_099, 5),
            (2_100, 1),
            (2_101, 5),
        ];
        let check_pages = |log: &SegmentLog| {
            for (from, max) in pages {
                let read = rt.block_on(log.read_all(from, max)).unwrap();
                let start = (from as usize - 1).min(all.len());
                let end = (start + max).min(all.len());
                assert_eq!(read, all[start..end], "from {from}, at most {max}");
            }
        };
        check_pages(&sparse);
        assert!(is_sparse(&sparse), "pages in order keep it sparse");
        // Streams 100, 117 and 134 (10 events each) and 1 (500, in ten
        // runs of 50): found by walking their groups, each group once.
        let walked = |log: &SegmentLog| log.walked.load(Ordering::Relaxed);
        for (i, &s) in [100u128, 117, 134, 1].iter().enumerate() {
            let at = streams.iter().position(|&t| t == s).unwrap();
            let before = walked(&sparse);
            assert_eq!(by_stream(&sparse, s), whole_streams[at], "stream {s}");
            assert_eq!(walked(&sparse) - before, groups[at] as u64, "stream {s}");
            assert!(is_sparse(&sparse), "after {} streams", i + 1);
        }
        assert!((10..=20).contains(&groups[0]), "{groups:?}");
        // Past the groups a sparse index walks: every location is read.
        sparse.walked.store(SPARSE_WALKS - 1, Ordering::Relaxed);
        assert_eq!(by_stream(&sparse, 2), whole_streams[1]);
        assert!(!is_sparse(&sparse), "every location read");
        assert_eq!(by_stream(&sparse, 3), whole_streams[2]);
        check_pages(&sparse);
        assert_verifies(&rt, &sparse);
        drop((sparse, store));

        // Streams read whole together (an import's planner): walked while
        // their events fit in the groups left to walk; past that, every
        // location is read first, no group walked.
        let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
        let id = |s: u128| StreamId(Uuid::from_u128(s));
        let together = |log: &SegmentLog, of: &[u128]| {
            let of: Vec<StreamId> = of.iter().map(|&s| id(s)).collect();
            rt.block_on(log.read_streams(&of)).unwrap()
        };
        sparse.walked.store(SPARSE_WALKS - 10, Ordering::Relaxed);
        let few = together(&sparse, &[100, 117]);
        assert_eq!(few[&id(100)], whole_streams[3]);
        assert_eq!(few[&id(117)], whole_streams[4]);
        assert!(is_sparse(&sparse), "two short streams walked");
        let walked_before = walked(&sparse);
        // Streams 1 and 2: 1,000 events, at least 15 groups.
        let many = together(&sparse, &[1, 2]);
        assert_eq!(many[&id(1)], whole_streams[0]);
        assert_eq!(many[&id(2)], whole_streams[1]);
        assert!(!is_sparse(&sparse), "every location read first");
        assert_eq!(walked(&sparse), walked_before, "no group walked");
        drop((sparse, store));

        // Minted ids: appended without the ids or every location; the
        // frames after the snapshot walked when the locations are read.
        let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
        rt.block_on(sparse.append_atomic_minted(vec![to_stream(7, 50_000..50_070)]))
            .unwrap();
        assert!(is_sparse(&sparse));
        let added = rt.block_on(sparse.read_all(2_050, 200)).unwrap();
        assert_eq!(added.len(), 121);
        assert_eq!(added[..51], all[2_049..]);
        let seven = by_stream(&sparse, 7);
        assert_eq!(seven[..], added[51..]);
        assert!(is_sparse(&sparse));
        // A look-up by id finds its candidate by walking the candidate's
        // group (one walk); the index stays sparse. So does an append of
        // ids the caller gave, whose stored one is refused.
        let walks = walked(&sparse);
        assert_eq!(
            rt.block_on(sparse.find_event(seven[3].event_id))
                .unwrap()
                .as_ref(),
            Some(&seven[3])
        );
        assert_eq!(
            rt.block_on(sparse.find_event(Uuid::from_u128(999_999)))
                .unwrap(),
            None
        );
        assert!(
            is_sparse(&sparse),
            "a look-up by id walks its candidate's group"
        );
        assert_eq!(walked(&sparse), walks + 1);
        let mut again = to_stream(7, 60_000..60_002);
        again.events[1].event_id = seven[3].event_id;
        assert!(matches!(
            rt.block_on(sparse.append_atomic(vec![again])),
            Err(StoreError::DuplicateEventId { .. })
        ));
        rt.block_on(sparse.append_atomic(vec![to_stream(7, 60_000..60_002)]))
            .unwrap();
        assert!(is_sparse(&sparse));
        // Past the walks allowed, a look-up reads every location first.
        sparse.walked.store(u64::MAX / 2, Ordering::Relaxed);
        assert_eq!(
            rt.block_on(sparse.find_event(seven[4].event_id))
                .unwrap()
                .as_ref(),
            Some(&seven[4])
        );
        assert!(!is_sparse(&sparse), "past the walks, every location read");
        assert_eq!(
            rt.block_on(sparse.read_all(1, 10_000)).unwrap()[..2_100],
            all[..]
        );
        drop((sparse, store));
        let (store, whole) = open_sparse_test(dir.path(), sparse_options(true, u64::MAX));
        assert_eq!(
            rt.block_on(whole.read_all(2_101, 100)).unwrap()[..70],
            added[51..]
        );
        assert_verifies(&rt, &whole);
        drop((whole, store));
        // `verify` on a sparse index reads every location first.
        let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
        assert!(is_sparse(&sparse));
        assert_verifies(&rt, &sparse);
        assert!(!is_sparse(&sparse));
        drop((sparse, store));
    }

    /// Pages read in position order from a sparse index while the writer
    /// appends (minted ids: the index stays sparse) are each a run of the
    /// log as it then was, up to its head at most; at the end the log
    /// reads, sparse and whole, as a full open's.
    #[test]
    fn a_sparse_index_reads_pages_while_the_writer_appends() {
        let (dir, rt) = dir_and_runtime();
        log_for_sparse_reads(&rt, dir.path());
        let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let writer = sparse.clone();
        let appends = rt.spawn(async move {
            for k in 0..40u128 {
                let ids = 60_000 + k * 37..60_000 + (k + 1) * 37;
                writer
                    .append_atomic_minted(vec![to_stream(200 + k % 5, ids)])
                    .await
                    .unwrap();
            }
        });
        let mut pages = 0;
        while !appends.is_finished() || pages < 50 {
            let head = rt.block_on(sparse.head()).unwrap().position;
            let from = 1 + (pages * 97 + head * 13) % head;
            let page = rt.block_on(sparse.read_all(from, 300)).unwrap();
            assert!(!page.is_empty(), "from {from}");
            for (i, e) in page.iter().enumerate() {
                assert_eq!(e.position, from + i as u64);
            }
            pages += 1;
        }
        rt.block_on(appends).unwrap();
        assert!(is_sparse(&sparse), "minted appends keep it sparse");
        let read = rt.block_on(sparse.read_all(1, 10_000)).unwrap();
        assert_eq!(read.len(), 2_100 + 40 * 37);
        drop((sparse, store));
        let (store, whole) = open_sparse_test(dir.path(), sparse_options(true, u64::MAX));
        assert_eq!(rt.block_on(whole.read_all(1, 10_000)).unwrap(), read);
        assert_verifies(&rt, &whole);
        drop((whole, store));
    }

    /// A sparse index whose snapshot's lengths changed in the file (an
    /// open that keeps only the groups' starts does not read them, format
    /// 5; their checksum refuses them when a read first needs every
    /// location) walks every frame for its locations instead, and answers
    /// the same: lengths no frame has, and two frames' lengths swapped
    /// (lengths a frame can have, the groups the same).
    #[test]
    fn a_sparse_index_whose_snapshot_changed_walks_the_frames() {
        let (dir, rt) = dir_and_runtime();
        log_for_sparse_reads(&rt, dir.path());
        let (store, whole) = open_sparse_test(dir.path(), sparse_options(true, u64::MAX));
        // Every stream: every frame read by its own location.
        let streams: Vec<u128> = (1..=3).chain(100..135).collect();
        let read_streams = |log: &SegmentLog| {
            streams
                .iter()
                .map(|&s| {
                    rt.block_on(log.read_stream(StreamId(Uuid::from_u128(s)), 1, 10_000))
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let want = read_streams(&whole);
        let locations = |log: &SegmentLog| log.state.read().unwrap().index.locs.to_vec();
        let whole_locations = locations(&whole);
        drop((whole, store));
        for damage in [Some(0u8), Some(0x41), None] {
            let (store, sparse) = open_sparse_test(dir.path(), sparse_options(false, u64::MAX));
            assert!(is_sparse(&sparse));
            // Over the lengths of positions 100 to 199, in the file the
            // open holds: magic, version, head, hash, seed (60 bytes),
            // the segments' count and entries, then a length a position.
            let path = dir
                .path()
                .join(LOGS_DIR)
                .join("school-a")
                .join(snapshot::SNAPSHOT_FILE);
            let bytes = std::fs::read(&path).unwrap();
            let nseg = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as u64;
            let lengths = 64 + 16 * nseg;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let len_at = |p: u64| (lengths + 4 * (p - 1)) as usize;
            match damage {
                Some(byte) => file.write_all_at(&[byte; 400], len_at(100) as u64).unwrap(),
                None => {
                    // The first two neighbours of unlike lengths from 100 on.
                    let p = (100..1_700)
                        .find(|&p| {
                            bytes[len_at(p)..len_at(p) + 4]
                                != bytes[len_at(p + 1)..len_at(p + 1) + 4]
                        })
                        .unwrap();
                    let mut two = bytes[len_at(p)..len_at(p) + 8].to_vec();
                    two.rotate_left(4);
                    file.write_all_at(&two, len_at(p) as u64).unwrap();
                }
            }
            drop(file);
            sparse.walked.store(u64::MAX / 2, Ordering::Relaxed);
            let read = read_streams(&sparse);
            assert!(!is_sparse(&sparse));
            assert!(locations(&sparse) == whole_locations, "{damage:?}");
            assert_eq!(read, want, "lengths written over with {damage:?}");
            drop((sparse, store));
            // The snapshot as it was, for the next round.
            std::fs::write(&path, &bytes).unwrap();
        }
    }

    /// A snapshot's stream lists stay in its file: a log opened from it
    /// reads them in place (pages across blocks, with the versions after
    /// the snapshot from memory) and answers as a log that indexed every
    /// frame; the next snapshot, written from both, opens the same again.
    #[test]
    fn stream_lists_are_read_in_place_and_answer_as_a_full_scan() {
        let (dir, rt) = dir_and_runtime();
        log_with_long_lists(&rt, dir.path());
        let lists = |read_snapshot: bool| {
            let (store, log) = open_log(dir.path(), read_snapshot, u64::MAX);
            let (all, filed, head) = {
                let ix = &log.state.read().unwrap().index;
                (ix.streams.to_vec(), ix.streams.filed_head(), ix.head())
            };
            assert_eq!(filed > 0, read_snapshot);
            let s1 = StreamId(Uuid::from_u128(1));
            let mut pages = Vec::new();
            for (from, n) in [
                (1, 1),
                (1_020, 10),
                (1_024, 1_025),
                (2_599, 7),
                (2_606, 3),
                (9_999, 1),
            ] {
                let read = rt.block_on(log.read_stream(s1, from, n)).unwrap();
                pages.push(
                    read.iter()
                        .map(|e| (e.version, e.position))
                        .collect::<Vec<_>>(),
                );
            }
            let report = rt.block_on(log.verify(&|_| {})).unwrap();
            assert!(report.ok, "{:?}", report.problems);
            drop((log, store));
            ((all, pages), filed, head)
        };
        let (scanned, _, head) = lists(false);
        assert_eq!(scanned.0.len(), 4);
        assert_eq!(scanned.0[0].1.len(), 2_605);
        let sizes: Vec<usize> = scanned.1.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 10, 1_025, 7, 0, 0]);
        let (from_file, filed, _) = lists(true);
        assert_eq!(from_file, scanned);
        assert_eq!(filed, head - 8, "the tail is indexed from the segment");
        // A close that writes a new snapshot (an eighth of the last one's
        // events appended since) reads the old one's lists.
        let (store, log) = open_log(dir.path(), true, 1);
        rt.block_on(log.append_atomic(vec![to_stream(2, 40_000..40_400)]))
            .unwrap();
        drop((log, store));
        let (scanned, _, head) = lists(false);
        let (from_file, filed, _) = lists(true);
        assert_eq!(from_file, scanned);
        assert_eq!(filed, head, "the second snapshot covers every event");
    }

    /// A verify whose stream lists were taken before the writer spilled
    /// the versions it checks finds them in the spilled file: a sound log
    /// passes, and lists swapped after the spill are named at every frame.
    #[test]
    fn verify_finds_versions_the_writer_spilled_during_it() {
        let (dir, rt) = dir_and_runtime();
        let options = SegmentOptions {
            spill_streams: 1_500,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        let group = vec![to_stream(1, 1..601), to_stream(2, 601..1_201)];
        rt.block_on(log.append_atomic(group)).unwrap();
        let (from, from_again) = (log.verify_from().unwrap(), log.verify_from().unwrap());
        assert_eq!(from.streams.filed_head(), 0, "every version in memory");
        // 1,800 in memory: the writer spills them after answering.
        rt.block_on(log.append_atomic(vec![to_stream(1, 1_201..1_801)]))
            .unwrap();
        let spilled = || log.state.read().unwrap().index.streams.filed_head();
        for _ in 0..1_000 {
            if spilled() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(spilled(), 1_800);
        let report = log.verify_against(from, &|_| {}).unwrap();
        assert!(report.ok, "{:?}", report.problems);
        assert_eq!(report.events, 1_200);
        let [s1, s2] = [1, 2].map(|s| StreamId(Uuid::from_u128(s)));
        log.state
            .write()
            .unwrap()
            .index
            .streams
            .swap_for_test(s1, s2);
        let report = log.verify_against(from_again, &|_| {}).unwrap();
        let named = &report.problems[..crate::store::MAX_REPORTED_PROBLEMS];
        assert!(named
            .iter()
            .all(|p| p.what.contains("stream index for version")));
        let rest = &report.problems[crate::store::MAX_REPORTED_PROBLEMS].what;
        assert_eq!(rest, "1100 further problems not listed");
    }

    /// The writer spills the stream positions it holds in memory once they
    /// reach `spill_streams` (or a quarter of those in its file): every
    /// list then reads from the spilled file and the versions after it,
    /// reads and `verify` answer as a full scan does, misfiled lists are
    /// still named, and the close's snapshot (written from the spilled
    /// file) opens the same lists again.
    #[test]
    fn stream_lists_spilled_by_the_writer_answer_as_a_full_scan() {
        let (dir, rt, store, log) = log_spilling_lists_at_300();
        log.sync_hooks
            .list_spill_joined
            .store(true, Ordering::Relaxed);
        let mut most_held = 0;
        for k in 0..40u128 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
            let streams = &log.state.read().unwrap().index.streams;
            most_held = most_held.max(streams.tails());
        }
        let (spilled, filed, held) = {
            let ix = &log.state.read().unwrap().index;
            (
                ix.streams.to_vec(),
                ix.streams.filed_head(),
                ix.streams.tails(),
            )
        };
        assert!(filed > 1_500, "spilled up to {filed}");
        assert_eq!(filed + held as u64, 2_400);
        assert!(most_held < 600 + 60, "held {most_held} positions at most");
        let read = versions_read(&rt, &log, 1, 100, 500);
        assert_eq!(
            read,
            (100..=599).collect::<Vec<_>>(),
            "stream 1 holds 700 versions"
        );
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        // Two streams of 10 versions, in the spilled file, swap lists.
        let [s100, s101] = [100, 101].map(|s| StreamId(Uuid::from_u128(s)));
        swapped_are_reported(&rt, &log, s100, s101, &|| {});
        drop((log, store));
        for read_snapshot in [false, true] {
            let (store, log) = open_log(dir.path(), read_snapshot, u64::MAX);
            assert_eq!(log.opened_from_snapshot().is_some(), read_snapshot);
            assert_eq!(log.state.read().unwrap().index.streams.to_vec(), spilled);
            drop((log, store));
        }
    }

    /// A log whose writer spills its stream lists once 300 positions are
    /// in memory, and writes a snapshot at every close.
    fn log_spilling_lists_at_300() -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<SegmentStore>,
        Arc<SegmentLog>,
    ) {
        fresh_log_with(SegmentOptions {
            snapshot_min_events: 1,
            spill_streams: 300,
            ..SegmentOptions::default()
        })
    }

    /// [`log_spilling_lists_at_300`], whose next spill of the lists says
    /// so on the first channel and waits for a word on the second before
    /// it takes any list.
    fn lists_spilling_at_300() -> HeldLog {
        let (dir, rt, store, log) = log_spilling_lists_at_300();
        let (reached, release) = hold_at(&log.sync_hooks.list_spill_gate);
        (dir, rt, store, log, reached, release)
    }

    /// Every stream's positions after the first `groups` of
    /// [`group_of_60`], sorted by stream (an event's position is its id).
    fn lists_of_groups(groups: u128) -> Vec<(StreamId, Vec<u32>)> {
        let mut lists = std::collections::BTreeMap::<StreamId, Vec<u32>>::new();
        for k in 0..groups {
            for r in group_of_60(k) {
                let positions = r.events.iter().map(|e| e.event_id.as_u128() as u32);
                lists.entry(r.stream).or_default().extend(positions);
            }
        }
        lists.into_iter().collect()
    }

    /// Appends [`group_of_60`] `k` on a thread of its own; says whether it
    /// was stored.
    fn group_on_a_thread(log: &Arc<SegmentLog>, k: u128) -> std::sync::mpsc::Receiver<bool> {
        requests_on_a_thread(log, group_of_60(k))
    }

    /// Waits (up to [`SETTLE_WAIT`]) for the stream lists' file to list
    /// every position up to `head`.
    fn lists_filed_up_to(log: &SegmentLog, head: u64) {
        let filed = || log.state.read().unwrap().index.streams.filed_head();
        let started = Instant::now();
        while filed() != head && started.elapsed() < SETTLE_WAIT {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(filed(), head);
    }

    /// The writer spills its stream lists on a thread of its own. While
    /// that spill is held before it takes any list, appends are answered
    /// and every list reads whole; once a quarter as many more positions
    /// are held as the spill takes, the writer waits for it. Once it has
    /// ended, the file lists exactly the versions up to the head it began
    /// at and memory those after, and reads, `verify` and the close's
    /// snapshot answer as before.
    #[test]
    fn the_writer_spills_its_stream_lists_while_appends_go_on() {
        let (dir, rt, store, log, reached, release) = lists_spilling_at_300();
        // Five groups of 60: the spill begins at 300 and is held.
        for k in 0..5 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        rt.block_on(log.append_atomic(group_of_60(5))).unwrap();
        {
            let streams = &log.state.read().unwrap().index.streams;
            assert_eq!((streams.filed_head(), streams.tails()), (0, 360));
            assert_eq!(streams.to_vec(), lists_of_groups(6));
        }
        // Stream 1 holds the 50 of groups 0 and 3.
        assert_eq!(
            versions_read(&rt, &log, 1, 0, 1_000),
            (1..=100).collect::<Vec<_>>()
        );
        // 120 added since the spill began, more than a quarter of its 300:
        // the writer answers group 6, then waits for the spill, so group 7
        // is not answered until it is let go.
        assert!(group_on_a_thread(&log, 6)
            .recv_timeout(Duration::from_secs(10))
            .unwrap());
        let seventh = group_on_a_thread(&log, 7);
        assert!(seventh.recv_timeout(Duration::from_millis(300)).is_err());
        release.send(()).unwrap();
        assert!(seventh.recv_timeout(Duration::from_secs(10)).unwrap());
        lists_filed_up_to(&log, 300);
        let whole = lists_of_groups(8);
        {
            let streams = &log.state.read().unwrap().index.streams;
            assert_eq!(streams.tails(), 180);
            assert_eq!(streams.to_vec(), whole);
            let mut filed = Vec::new();
            streams
                .for_each(true, |s, p| {
                    filed.push((*s, p.to_vec()));
                    Ok(())
                })
                .unwrap();
            filed.sort_by_key(|(s, _)| *s);
            assert_eq!(filed, lists_of_groups(5));
        }
        // Versions 51..=150 of stream 1 span the file and memory.
        assert_eq!(
            versions_read(&rt, &log, 1, 51, 1_000),
            (51..=150).collect::<Vec<_>>()
        );
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        drop((log, store));
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert!(log.opened_from_snapshot().is_some());
        assert_eq!(log.state.read().unwrap().index.streams.to_vec(), whole);
        drop((log, store));
    }

    /// A spill of the stream lists that fails on its thread leaves the
    /// lists as they were, and the next waits for twice as many positions.
    #[test]
    fn a_spill_of_the_stream_lists_that_fails_leaves_them_as_they_were() {
        let (_dir, rt, _store, log, reached, release) = lists_spilling_at_300();
        let hooks = &log.sync_hooks;
        hooks.list_spill_fail.store(true, Ordering::Relaxed);
        hooks.list_spill_joined.store(true, Ordering::Relaxed);
        release.send(()).unwrap();
        let held = |log: &SegmentLog| {
            let streams = &log.state.read().unwrap().index.streams;
            (streams.filed_head(), streams.tails())
        };
        for k in 0..5 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        // Joined at once: the failure is known before the next group is
        // written, and nothing was spilled at 300.
        for k in 5..10 {
            assert_eq!(held(&log), (0, 60 * k as usize));
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        // Spilled at twice the 300 held (after the answer to group 9).
        lists_filed_up_to(&log, 600);
        assert_eq!(held(&log), (600, 0));
        let state = log.state.read().unwrap();
        assert_eq!(state.index.streams.to_vec(), lists_of_groups(10));
        drop(state);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
    }

    /// An open that indexes every frame spills the stream lists as it
    /// scans, as the writer does once `spill_streams` positions (or a
    /// quarter of those in its file) are in memory: it spills where the
    /// writer would, and the lists (some in the file, some in memory),
    /// reads across the two and `verify` answer as they did for the open
    /// that held every position in memory.
    #[test]
    fn an_open_that_scans_every_frame_spills_the_stream_lists() {
        let (dir, rt) = dir_and_runtime();
        let (store, log) = open_log(dir.path(), false, u64::MAX);
        // 41 groups of 60: the scan spills at 300, 600, 900, 1,200, 1,500
        // (a quarter of the file's then 375), 1,920 (then 480) and 2,400,
        // and holds the last group's 60 in memory.
        for k in 0..41u128 {
            rt.block_on(log.append_atomic(group_of_60(k))).unwrap();
        }
        let whole = {
            let streams = &log.state.read().unwrap().index.streams;
            assert_eq!(streams.filed_head(), 0, "every position in memory");
            streams.to_vec()
        };
        drop((log, store));
        let options = SegmentOptions {
            read_snapshot: false,
            snapshot_min_events: u64::MAX,
            spill_streams: 300,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        {
            let streams = &log.state.read().unwrap().index.streams;
            let (filed, held) = (streams.filed_head(), streams.tails());
            assert_eq!((filed, held), (2_400, 60));
            assert_eq!(streams.to_vec(), whole);
        }
        // Stream 2's versions 651..=700 are the group held in memory.
        let read = versions_read(&rt, &log, 2, 600, 200);
        assert_eq!(read, (600..=700).collect::<Vec<_>>());
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
        let [s100, s139] = [100, 139].map(|s| StreamId(Uuid::from_u128(s)));
        swapped_are_reported(&rt, &log, s100, s139, &|| {});
    }

    /// Every position of `stream`, by version, as the index lists them.
    fn positions_of(log: &SegmentLog, stream: StreamId) -> Vec<u32> {
        let state = log.state.read().unwrap();
        state
            .index
            .streams
            .all(&stream)
            .unwrap()
            .unwrap_or_default()
    }

    /// Waits (10 s at most) until the writer has done what it does after
    /// its last group: an append is answered before the writer begins
    /// (and, with `list_spill_joined`, ends) the spills that group made
    /// due, which a test that then changes the index by hand would race.
    pub(super) fn writer_settled(log: &SegmentLog) {
        let waited = Instant::now();
        while log.sync_hooks.busy.load(Ordering::SeqCst)
            && waited.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Swaps two streams' lists and checks that `verify` names exactly the
    /// frames of both, each once, `meanwhile` running while they are
    /// swapped; swapped back, `verify` passes.
    fn swapped_are_reported(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
        a: StreamId,
        b: StreamId,
        meanwhile: &dyn Fn(),
    ) {
        // A spill of the lists the last append began would otherwise
        // copy them while they are swapped.
        writer_settled(log);
        let mut expected: Vec<u64> = positions_of(log, a)
            .iter()
            .chain(&positions_of(log, b))
            .map(|&p| u64::from(p))
            .collect();
        expected.sort();
        assert!(
            expected.len() <= crate::store::MAX_REPORTED_PROBLEMS,
            "every frame named"
        );
        log.state.write().unwrap().index.streams.swap_for_test(a, b);
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        let mut at: Vec<u64> = report
            .problems
            .iter()
            .filter(|p| p.what.contains("stream index"))
            .map(|p| p.position)
            .collect();
        at.sort();
        assert_eq!(at, expected, "{:?}", report.problems);
        assert_eq!(report.problems.len(), expected.len());
        meanwhile();
        log.state.write().unwrap().index.streams.swap_for_test(a, b);
        assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
    }

    /// Stream lists in the file that do not match the frames are reported
    /// by `verify` at exactly those frames, and refused by reads; bytes of
    /// a list changed after the open are refused, never used.
    #[test]
    fn stream_lists_in_the_file_are_checked_by_verify_and_reads() {
        let (dir, rt) = dir_and_runtime();
        log_with_long_lists(&rt, dir.path());
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        let [s1, s2, s3] = [1, 2, 3].map(|s| StreamId(Uuid::from_u128(s)));
        let positions = |s| positions_of(&log, s);
        let (p2, p3) = (positions(s2), positions(s3));
        assert_eq!((p2.len(), p3.len()), (4, 6), "{p2:?} {p3:?}");
        // Streams 2 (in the file) and 3 (in the file and in memory): the
        // file's frames of both are found by the sums, stream 3's frames
        // after the snapshot by the look-ups in memory; reads refuse them.
        swapped_are_reported(
            &rt,
            &log,
            s2,
            s3,
            &|| match rt.block_on(log.read_stream(s3, 1, 10)) {
                Err(StoreError::Corrupt { what, .. }) => {
                    assert!(what.contains("does not match"), "{what}")
                }
                other => panic!("expected a corruption error, got {other:?}"),
            },
        );
        // Stream 3 and stream 4 (in memory only): stream 3's frames in the
        // file are found by the sums, its frames after the snapshot and
        // stream 4's by the look-ups in memory.
        swapped_are_reported(&rt, &log, s3, StreamId(Uuid::from_u128(4)), &|| {});
        // Stream 1's second block changed in the file after the open.
        let path = dir
            .path()
            .join(LOGS_DIR)
            .join("school-a")
            .join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let p1 = positions(s1);
        let needle: Vec<u8> = p1[1_024..1_028]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        let at = bytes
            .windows(16)
            .position(|w| w == needle.as_slice())
            .unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            rt.block_on(log.read_stream(s1, 1, 1_000)).unwrap().len(),
            1_000
        );
        match rt.block_on(log.read_stream(s1, 1_500, 10)) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("changed after the open"), "{what}")
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        assert!(rt.block_on(log.verify(&|_| {})).is_err());
        drop((log, store));
    }

    /// An open from the index snapshot leaves the event ids in the file
    /// (the index is smaller, and reads by position or stream do not need
    /// them); the first append reads them, with the ids of the frames
    /// after the snapshot: each id, in the snapshot or after it, is then
    /// refused again and found where it is, and the log verifies.
    #[test]
    fn an_open_from_the_snapshot_reads_the_event_ids_when_first_needed() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(5));
        assert!(!log.event_ids_held());
        let without = log.index_bytes();
        let all = rt.block_on(log.read_all(1, 10)).unwrap();
        assert_eq!(all.len(), 7);
        assert!(!log.event_ids_held(), "a read by position read the ids");
        // Positions of ids named with their stream: the stream is read,
        // not the ids; one not there is looked up by id, which reads them.
        let stream = StreamId(Uuid::from_u128(1));
        let at = |stream, below, id| InStream {
            stream,
            below,
            id: Uuid::from_u128(id),
        };
        // Below the stream's end, and below a version past it.
        let mut wanted: Vec<InStream> = (1..7u128).map(|i| at(stream, 7, i)).collect();
        wanted.push(at(stream, u64::MAX, 7));
        let found = rt.block_on(log.positions_in_streams(&wanted)).unwrap();
        let expected: HashMap<Uuid, u64> =
            (1..8u128).map(|i| (Uuid::from_u128(i), i as u64)).collect();
        assert_eq!(found, expected);
        assert!(
            !log.event_ids_held(),
            "the ids were read for ids in their streams"
        );
        // Named below a version it is not below, then with another
        // stream: each is looked up by id, which reads the ids.
        let not_below = [at(stream, 3, 4)];
        let found = rt.block_on(log.positions_in_streams(&not_below)).unwrap();
        assert_eq!(found.get(&Uuid::from_u128(4)), Some(&4));
        assert!(
            log.event_ids_held(),
            "the ids were not read for an id not below"
        );
        drop((log, store));
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        let elsewhere = [at(StreamId(Uuid::from_u128(2)), u64::MAX, 3)];
        let found = rt.block_on(log.positions_in_streams(&elsewhere)).unwrap();
        assert_eq!(found.get(&Uuid::from_u128(3)), Some(&3));
        assert!(log.event_ids_held());
        for (again, position) in [(2u128, 2u64), (6, 6), (7, 7)] {
            match rt.block_on(log.append_atomic(vec![request(again..again + 1)])) {
                Err(StoreError::DuplicateEventId { position: p, .. }) => {
                    assert_eq!(p, position)
                }
                other => panic!("expected DuplicateEventId at {position}, got {other:?}"),
            }
        }
        assert!(log.event_ids_held());
        assert!(log.index_bytes() > without);
        assert_eq!(log.take_snapshot_rejection(), None);
        rt.block_on(log.append_atomic(vec![request(8..9)])).unwrap();
        for id in 1..9u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64));
        }
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        drop((log, store));
        // A look-up by id reads them too.
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert!(!log.event_ids_held());
        let found = rt.block_on(log.find_event(Uuid::from_u128(7))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(7));
        assert!(log.event_ids_held());
        drop((log, store));
        // An open for appends (the default) reads them with the rest.
        let store = SegmentStore::open(dir.path(), false).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(5));
        assert!(log.event_ids_held());
        let found = rt.block_on(log.find_event(Uuid::from_u128(7))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(7));
    }

    /// Format 6. An open that holds every location and leaves the ids in
    /// a large snapshot takes the lengths' checksum on a thread of its
    /// own, while the open's thread reads the frame lengths and a third
    /// the stream lists (it never reads the ids then): a byte changed
    /// anywhere before the ids is refused by such an open, by one of a
    /// small snapshot (one thread), and by one for appends, and the index
    /// is rebuilt from the segments. An open that keeps only the groups'
    /// starts, for appends or not, refuses a byte changed in the header,
    /// the directory or the lists, and opens from a snapshot whose frame
    /// lengths changed (it does not read them): `verify`, which needs
    /// every location, finds them changed, says so, and walks the
    /// frames. A byte changed in the ids' section (or their checksum) is
    /// refused by an open for appends, and by the others at the ids'
    /// first use, which then indexes them from the segments. One in the
    /// directory of the ids' blocks is read by none of them (only by a
    /// look-up in place).
    #[test]
    fn a_byte_changed_anywhere_in_the_snapshot_is_refused_by_either_open() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(5));
        let path = log.dir().join(snapshot::SNAPSHOT_FILE);
        drop((log, store));
        let sound = std::fs::read(&path).unwrap();
        let total = sound.len();
        // Format 6: the header 64 bytes, one segment (16), 5 lengths (4
        // each) and their checksum, one stream's list (5 × 4), the
        // directory (one run: 4 + 28; one group: 8 + 4; one stream: 8 +
        // 20; one block's CRC-32: 8 + 4) and its checksum, the ids (8 + 5
        // × 12) and theirs, the directory of their blocks (one: 8 + 12)
        // and its checksum.
        let (lens_at, lists_at, dir_at) = (64 + 16, 64 + 16 + 20 + 32, 64 + 16 + 20 + 32 + 20);
        let ids_end = total - 8 - 12 - 32;
        let ids_at = ids_end - 32 - 8 - 5 * 12;
        assert_eq!(ids_at, dir_at + 32 + 12 + 28 + 12 + 32);
        // (what, where, whether an open that keeps only the groups'
        // starts reads it)
        let places = [
            ("the head", 12, true),
            ("the head hash", 20, true),
            ("a segment's length", 64 + 8, true),
            ("a frame's length", lens_at + 4, false),
            ("the frame lengths' checksum", lists_at - 1, false),
            ("a stream's position", lists_at + 9, true),
            ("the group table's run", dir_at + 4 + 21, true),
            ("the group table's group", dir_at + 32 + 8, true),
            ("a stream's id", dir_at + 32 + 12 + 8 + 3, true),
            ("a stream's count", dir_at + 32 + 12 + 8 + 16, true),
            ("a list block's CRC-32", dir_at + 32 + 12 + 28 + 8 + 1, true),
            ("the checksum before the ids", ids_at - 1, true),
            ("the count of ids", ids_at, true),
            ("an id's fingerprint", ids_at + 8 + 12 + 3, true),
            ("the last id's position", ids_end - 32 - 1, true),
            ("the ids' checksum", ids_end - 1, true),
            ("the ids' first block's fence", ids_end + 8 + 2, true),
            ("the ids' first block's CRC-32", ids_end + 8 + 8, true),
            ("the checksum of the ids' blocks", total - 1, true),
        ];
        // Reading only with the threads, reading only on one thread, and
        // for appends, each holding every location; reading only and for
        // appends keeping only the groups' starts.
        let opens = [
            (false, 0, true),
            (false, u64::MAX, true),
            (true, 0, true),
            (false, 0, false),
            (true, 0, false),
        ];
        let open = |ids_at_open: bool, beside: u64, locations: bool| {
            let options = SegmentOptions {
                snapshot_min_events: u64::MAX,
                event_ids_at_open: ids_at_open,
                snapshot_beside_bytes: beside,
                locations_at_open: locations,
                ids_in_place_least: 0,
                ..SegmentOptions::default()
            };
            let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
            let log = store.log("school-a").unwrap();
            (store, log)
        };
        for (what, at, read_sparse) in places {
            for (ids_at_open, beside, locations) in opens {
                let mut bytes = sound.clone();
                bytes[at] ^= 0x10;
                std::fs::write(&path, &bytes).unwrap();
                let (store, log) = open(ids_at_open, beside, locations);
                let case = format!("{what} (byte {at}), ids read at open: {ids_at_open}, threads from {beside} bytes, every location: {locations}");
                // An open that leaves the ids in the file reads none of
                // their section: it opens from the snapshot, and the
                // section's checksum refuses them at their first use (a
                // look-up by id), which indexes them from the segments
                // instead. The frame lengths, which an open that keeps
                // only the groups' starts does not read: refused when a
                // read first needs every location (`verify`), every frame
                // walked instead.
                // The directory of the ids' blocks is read by a look-up
                // in place alone (none here: `ids_in_place_least` 0, and
                // `index_tests::ids_looked_up_in_place`): every open uses
                // the snapshot, and its ids are read whole, as sound.
                if at >= ids_end {
                    assert_eq!(log.opened_from_snapshot(), Some(5), "{case}");
                    let found = rt.block_on(log.find_event(Uuid::from_u128(3))).unwrap();
                    assert_eq!(found.map(|e| e.position), Some(3), "{case}");
                    assert!(log.event_ids_held(), "{case}");
                    assert_eq!(log.take_snapshot_rejection(), None, "{case}");
                    drop((log, store));
                    continue;
                }
                let refused_later = match (at >= ids_at && !ids_at_open, !locations && !read_sparse)
                {
                    (true, _) => Some("the ids' section: checksum mismatch"),
                    (false, true) => Some("frame lengths"),
                    (false, false) => None,
                };
                if let Some(note) = refused_later {
                    assert_eq!(log.opened_from_snapshot(), Some(5), "{case}");
                    assert_eq!(log.take_snapshot_rejection(), None, "{case}");
                    let found = rt.block_on(log.find_event(Uuid::from_u128(3))).unwrap();
                    assert_eq!(found.map(|e| e.position), Some(3), "{case}");
                    // The lengths are read when every location is needed
                    // (`verify`; a look-up by id walks its candidate's
                    // group).
                    if note == "frame lengths" {
                        assert_eq!(log.take_snapshot_rejection(), None, "{case}");
                        assert_verifies(&rt, &log);
                    }
                    let why = log.take_snapshot_rejection();
                    assert!(
                        why.as_deref().is_some_and(|w| w.contains(note)),
                        "{case}: {why:?}"
                    );
                } else {
                    assert_eq!(log.opened_from_snapshot(), None, "{case}");
                    let why = log.take_snapshot_rejection();
                    assert!(why.is_some(), "{case}: no note");
                    if at == ids_at - 1 {
                        assert!(
                            why.as_deref().unwrap().contains("checksum mismatch"),
                            "{case}: {why:?}"
                        );
                    }
                }
                let all = rt.block_on(log.read_all(1, 10)).unwrap();
                let ids: Vec<u128> = all.iter().map(|e| e.event_id.as_u128()).collect();
                assert_eq!(ids, (1..8).collect::<Vec<u128>>(), "{case}");
                drop((log, store));
            }
        }
        // The sound file is used by each, and a stream is read from it.
        std::fs::write(&path, &sound).unwrap();
        for (ids_at_open, beside, locations) in opens {
            let (store, log) = open(ids_at_open, beside, locations);
            assert_eq!(log.opened_from_snapshot(), Some(5));
            assert_eq!(log.take_snapshot_rejection(), None);
            let stream = rt.block_on(log.read_stream(StreamId(Uuid::from_u128(1)), 1, 10));
            assert_eq!(stream.unwrap().len(), 7);
            let found = rt.block_on(log.find_event(Uuid::from_u128(3))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(3));
            assert_eq!(log.take_snapshot_rejection(), None);
            drop((log, store));
        }
    }

    /// On an open that left the ids in the snapshot, positions of ids
    /// named with their stream are found by the frames' headers, each
    /// checked as a stream read checks it: a stream index that points at
    /// another stream's frames is refused as corrupt, not answered.
    #[test]
    fn positions_in_streams_refuses_frames_the_index_misfiled() {
        let (dir, rt) = dir_and_runtime();
        let (store, log) = open_log(dir.path(), true, 1);
        let (a, b) = (StreamId(Uuid::from_u128(1)), StreamId(Uuid::from_u128(2)));
        let mut second = request(4..7);
        second.stream = b;
        rt.block_on(log.append_atomic(vec![request(1..4), second]))
            .unwrap();
        drop((log, store));
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        assert!(!log.event_ids_held());
        let wanted = [
            InStream {
                stream: a,
                below: 4,
                id: Uuid::from_u128(2),
            },
            InStream {
                stream: b,
                below: 4,
                id: Uuid::from_u128(5),
            },
        ];
        let found = rt.block_on(log.positions_in_streams(&wanted)).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[&Uuid::from_u128(2)], found[&Uuid::from_u128(5)]),
            (2, 5)
        );
        {
            let mut state = log.state.write().unwrap();
            let ix = &mut state.index;
            ix.streams.swap_for_test(a, b);
        }
        match rt.block_on(log.positions_in_streams(&wanted)) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("stream entry"), "{what}")
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        assert!(!log.event_ids_held());
    }

    /// Ids found in their stream on an open that left the ids in the
    /// snapshot, newest first in pages that double (16, 32, 64, …
    /// frames): at the stream's first and last versions and between,
    /// one past a page's edge, and an id not stored (read by id).
    #[test]
    fn positions_in_streams_pages_down_a_long_stream() {
        let (dir, rt) = dir_and_runtime();
        let (store, log) = open_log(dir.path(), true, 1);
        rt.block_on(log.append_atomic(vec![request(1..201)]))
            .unwrap();
        drop((log, store));
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        let stream = StreamId(Uuid::from_u128(1));
        let wanted: Vec<InStream> = [1u128, 2, 136, 137, 152, 153, 185, 200, 500]
            .iter()
            .map(|&i| InStream {
                stream,
                below: 201,
                id: Uuid::from_u128(i),
            })
            .collect();
        let found = rt.block_on(log.positions_in_streams(&wanted)).unwrap();
        let expected: HashMap<Uuid, u64> = [1u128, 2, 136, 137, 152, 153, 185, 200]
            .iter()
            .map(|&i| (Uuid::from_u128(i), i as u64))
            .collect();
        assert_eq!(found, expected);
    }

    /// An append of ids its caller minted (a logged read) on an open that
    /// left the ids in the snapshot: written without reading them; the
    /// next append of a caller's own ids reads them with the minted one
    /// after them (a repeat of it is refused). A minted id that repeats a
    /// stored one (never expected: 74 random bits) is taken, and found as
    /// a corrupt log when the ids are read, at every use after.
    #[test]
    fn an_append_of_minted_ids_does_not_read_the_event_ids() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (store, log) = open_log(dir.path(), true, u64::MAX);
        let done = rt.block_on(log.append_minted(request(8..9))).unwrap();
        assert_eq!(done.first_position, 8);
        assert!(!log.event_ids_held());
        match rt.block_on(log.append_atomic(vec![request(8..9)])) {
            Err(StoreError::DuplicateEventId { position: 8, .. }) => {}
            other => panic!("expected DuplicateEventId at 8, got {other:?}"),
        }
        assert!(log.event_ids_held());
        drop((log, store));
        // A minted id that repeats position 2's.
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        rt.block_on(log.append_minted(request(2..3))).unwrap();
        assert!(!log.event_ids_held());
        match rt.block_on(log.find_event(Uuid::from_u128(2))) {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(what.contains("is already stored at position 2"), "{what}")
            }
            other => panic!("expected a corrupt log, got {other:?}"),
        }
        assert!(matches!(
            rt.block_on(log.append_atomic(vec![request(20..21)])),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// An atomic append of minted ids (an import whose lines carry no
    /// `id`) on an open that left the ids in the snapshot: written
    /// without reading them, every request's events where an atomic
    /// append puts them; the next append of a caller's own ids reads them
    /// with the minted ones after them, and a repeat of one is refused.
    #[test]
    fn an_atomic_append_of_minted_ids_does_not_read_the_event_ids() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        let done = rt
            .block_on(log.append_atomic_minted(vec![to_stream(2, 8..10), to_stream(3, 10..11)]))
            .unwrap();
        assert_eq!(
            done.iter()
                .map(|a| (a.first_position, a.last_version))
                .collect::<Vec<_>>(),
            vec![(8, 2), (10, 1)]
        );
        assert!(!log.event_ids_held());
        match rt.block_on(log.append_atomic(vec![to_stream(4, 9..10)])) {
            Err(StoreError::DuplicateEventId { position: 9, .. }) => {}
            other => panic!("expected DuplicateEventId at 9, got {other:?}"),
        }
        assert!(log.event_ids_held());
        let found = rt.block_on(log.find_event(Uuid::from_u128(10))).unwrap();
        assert_eq!(found.map(|e| (e.position, e.version)), Some((10, 1)));
    }

    /// A clean close writes a new snapshot once `snapshot_tail_most`
    /// events follow the last one, though an eighth of its head is more;
    /// with fewer after it, the old one stays.
    #[test]
    fn a_close_writes_the_snapshot_once_its_tail_reaches_the_most() {
        let (dir, rt) = dir_and_runtime();
        let open = || {
            let options = SegmentOptions {
                snapshot_min_events: 1,
                snapshot_tail_most: 4,
                ..SegmentOptions::default()
            };
            let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
            let log = store.log("school-a").unwrap();
            (store, log)
        };
        let (store, log) = open();
        rt.block_on(log.append_atomic(vec![request(1..101)]))
            .unwrap();
        drop((log, store));
        // Three after the snapshot of 100: an eighth is 12, the most 4.
        let (store, log) = open();
        assert_eq!(log.opened_from_snapshot(), Some(100));
        rt.block_on(log.append_atomic(vec![request(101..104)]))
            .unwrap();
        drop((log, store));
        let (store, log) = open();
        assert_eq!(log.opened_from_snapshot(), Some(100), "written for 3");
        rt.block_on(log.append_atomic(vec![request(104..105)]))
            .unwrap();
        drop((log, store));
        let (_store, log) = open();
        assert_eq!(log.opened_from_snapshot(), Some(104), "not written for 4");
        let found = rt.block_on(log.find_event(Uuid::from_u128(104))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(104));
    }

    /// An open that left the ids in the snapshot and appended only minted
    /// ids writes a new snapshot at its close once enough was appended
    /// after the old one (here: any), reading the ids for it; the next
    /// open starts from it.
    #[test]
    fn a_close_after_minted_appends_writes_the_snapshot_when_due() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (store, log) = open_log(dir.path(), true, 1);
        rt.block_on(log.append_minted(request(8..9))).unwrap();
        assert!(!log.event_ids_held());
        drop((log, store));
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(8));
        let found = rt.block_on(log.find_event(Uuid::from_u128(8))).unwrap();
        assert_eq!(found.map(|e| e.position), Some(8));
    }

    /// A close of a log opened with its ids left in the snapshot, and
    /// due to write the next one, copies them into it merged with the ids
    /// appended after it (`snapshot::LaterIds::copy_merged`), without
    /// reading them into the index: the ids' section it writes is, byte
    /// for byte, the one written by a close that had read them (a look-up
    /// by id first), its header names the seed the old snapshot's
    /// fingerprints were taken under (one of its own here, not this
    /// process's), and the next open uses its ids and finds each at its
    /// position. An id section changed after the open is not copied (its
    /// checksum): the close reads the ids instead, indexes them from the
    /// segments, and writes a snapshot as good.
    #[test]
    fn a_close_copies_the_ids_left_in_the_snapshot() {
        let seed = IdHash::with_seed(0x5eed).seed();
        let written = |read_first: bool, changed: bool| {
            let (dir, rt) = dir_and_runtime();
            // Ids 1..=5 in a snapshot fingerprinted under `seed`, 6 and 7
            // appended after it by an open that neither read nor rewrote
            // it.
            let (store, log) = open_log(dir.path(), true, 1);
            log.state.write().unwrap().index.ids = Ids::with_hasher(IdHash::with_seed(seed));
            rt.block_on(log.append_atomic(vec![request(1..6)])).unwrap();
            drop((log, store));
            let (store, log) = open_log(dir.path(), false, u64::MAX);
            rt.block_on(log.append_atomic(vec![request(6..8)])).unwrap();
            drop((log, store));
            let (store, log) = open_log(dir.path(), true, 1);
            rt.block_on(log.append_minted(request(8..10))).unwrap();
            if read_first {
                let found = rt.block_on(log.find_event(Uuid::from_u128(3))).unwrap();
                assert_eq!(found.map(|e| e.position), Some(3));
            }
            let path = log.dir().join(snapshot::SNAPSHOT_FILE);
            if changed {
                flip_the_first_fingerprint(&path, 5);
            }
            let state = log.state.clone();
            drop((log, store));
            // Whether the close read the ids into the index.
            let read = state.read().unwrap().index.later.is_none();
            assert_eq!(read, read_first || changed);
            let bytes = std::fs::read(&path).unwrap();
            // The header's seed (after the magic, the version, the head
            // and its hash), and the ids' section: their count, 9 pairs
            // and the checksum.
            let named = u64::from_le_bytes(bytes[52..60].try_into().unwrap());
            let ids = bytes[bytes.len() - (8 + 12 * 9 + 32)..].to_vec();
            let (_store, log) = open_log(dir.path(), true, u64::MAX);
            assert_eq!(log.opened_from_snapshot(), Some(9));
            for id in 1..10u128 {
                let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
                assert_eq!(found.map(|e| e.position), Some(id as u64));
            }
            assert_eq!(log.take_snapshot_rejection(), None);
            assert!(rt.block_on(log.verify(&|_| {})).unwrap().ok);
            (named, ids)
        };
        let (named, copied) = written(false, false);
        assert_eq!(named, seed);
        assert_eq!((named, copied), written(true, false));
        // Indexed from the segments, under this process's seed.
        let (named, _) = written(false, true);
        assert_eq!(named, IdHash::default().seed());
    }

    /// A log whose ids were refused at a use in this session (one id
    /// stored twice) gets no new snapshot from its close, due as it is:
    /// the ids are not copied into one (the next reading would refuse
    /// them too), they are read again, refused again, and the old
    /// snapshot stays as it was.
    #[test]
    fn a_close_after_the_ids_were_refused_copies_nothing() {
        let (dir, rt) = dir_and_runtime();
        let log_dir = log_with_a_repeated_id(&rt, dir.path());
        let path = log_dir.join(snapshot::SNAPSHOT_FILE);
        let before = std::fs::read(&path).unwrap();
        let (store, log) = open_log(dir.path(), true, 1);
        assert_eq!(log.opened_from_snapshot(), Some(2));
        assert!(rt.block_on(log.find_event(Uuid::from_u128(2))).is_err());
        rt.block_on(log.append_minted(request(9..10))).unwrap();
        drop((log, store));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// The snapshot's ids changed in place between the open (which left
    /// them in the file) and their first use: the change is seen (their
    /// section's checksum), they are not used, and the ids are indexed
    /// from the segments, with the reason.
    #[test]
    fn ids_changed_after_the_open_are_not_used() {
        let (dir, rt) = dir_and_runtime();
        log_with_snapshot_and_tail(&rt, dir.path());
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(5));
        flip_the_first_fingerprint(&log.dir().join(snapshot::SNAPSHOT_FILE), 5);
        for id in 1..8u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64));
        }
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(why.contains("the ids' section: checksum mismatch"), "{why}");
    }

    /// A frame after the snapshot that repeats an id of the snapshot: an
    /// open that reads the ids refuses the log; one that leaves them in
    /// the file takes the log (it has not read the ids); every use of the ids
    /// is refused as a corrupt log, naming the id and where it is first
    /// stored, each time (nothing half read is kept), and nothing is
    /// written.
    #[test]
    fn a_repeated_id_after_the_snapshot_is_refused_when_the_ids_are_read() {
        let (dir, rt) = dir_and_runtime();
        log_with_a_repeated_id(&rt, dir.path());
        // An open that reads the ids refuses the log, as without the
        // snapshot.
        let eager = SegmentStore::open(dir.path(), false)
            .and_then(|store| store.log("school-a"))
            .err();
        assert!(
            matches!(&eager, Some(StoreError::Corrupt { what, .. }) if what.contains("is already stored at position 1")),
            "{eager:?}"
        );
        let (_store, log) = open_log(dir.path(), true, u64::MAX);
        assert_eq!(log.opened_from_snapshot(), Some(2));
        assert!(!log.event_ids_held());
        let refused = |what: Result<(), StoreError>| match what {
            Err(StoreError::Corrupt { location, what }) => {
                assert!(location.contains(".seg"), "{location}");
                assert!(
                    what.contains("event id 00000000-0000-0000-0000-000000000001 is already stored at position 1"),
                    "{what}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        };
        for _ in 0..2 {
            refused(
                rt.block_on(log.append_atomic(vec![request(9..10)]))
                    .map(|_| ()),
            );
            assert!(!log.event_ids_held());
        }
        refused(rt.block_on(log.find_event(Uuid::from_u128(2))).map(|_| ()));
        refused(rt.block_on(log.verify(&|_| {})).map(|_| ()));
        assert_eq!(rt.block_on(log.head()).unwrap().position, 3);
    }

    /// Ids that share a fingerprint (here every id, under a hashing that
    /// gives every key one hash) are told apart by reading their frames:
    /// appends of new ids are taken and a repeated one refused, reads by id
    /// find each, and an open takes the log (two ids, not one id twice)
    /// from its segments and from its index snapshot.
    #[test]
    fn ids_sharing_a_fingerprint_are_told_apart_by_their_frames() {
        let (_dir, rt, store, log) = fresh_log();
        log.state.write().unwrap().index.ids = Ids::with_hasher(IdHash::colliding());
        rt.block_on(log.append_atomic(vec![request(1..4)])).unwrap();
        rt.block_on(log.append_atomic(vec![request(4..6)])).unwrap();
        {
            let state = log.state.read().unwrap();
            let mut all: Vec<u32> = state.index.ids.candidates(&Uuid::from_u128(9)).unwrap();
            all.sort_unstable();
            assert_eq!(all, vec![1, 2, 3, 4, 5], "every id shares one fingerprint");
            assert!(state.index.shared.is_empty(), "the writer checked them");
        }
        for id in 1..6u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64));
        }
        assert!(rt
            .block_on(log.find_event(Uuid::from_u128(9)))
            .unwrap()
            .is_none());
        let found = rt
            .block_on(log.find_events(&[
                Uuid::from_u128(4),
                Uuid::from_u128(9),
                Uuid::from_u128(2),
            ]))
            .unwrap();
        let mut at: Vec<(u128, u64)> = found
            .values()
            .map(|e| (e.event_id.as_u128(), e.position))
            .collect();
        at.sort_unstable();
        assert_eq!(at, vec![(2, 2), (4, 4)]);
        match rt.block_on(log.append_atomic(vec![request(3..4)])) {
            Err(StoreError::DuplicateEventId { position: 3, .. }) => {}
            other => panic!("expected DuplicateEventId at 3, got {other:?}"),
        }
        // An open pairs every position with an earlier one of its
        // fingerprint and reads both frames: two ids, so the log opens.
        let segments = log.state.read().unwrap().segments.clone();
        let mut ix = Index {
            ids: Ids::with_hasher(IdHash::colliding()),
            ..Index::default()
        };
        for e in rt.block_on(log.read_all(1, 10)).unwrap() {
            let meta = FrameMeta {
                group_end: true,
                position: e.position,
                stream: e.stream,
                version: e.version,
                event_id: e.event_id,
            };
            let loc = log.state.read().unwrap().index.locs.at(e.position).unwrap();
            ix.push(&meta, loc, e.hash).unwrap();
        }
        assert_eq!(ix.shared.len(), 4);
        check_shared(&mut ix, &segments).unwrap();
        assert!(ix.shared.is_empty());
        drop(store);
    }

    /// `verify` compares the index with every frame (on its checker
    /// thread): a sound index passes; an index with two streams' lists and
    /// two ids swapped is reported at exactly those frames, and a log of
    /// more frames than a checker batch is checked whole.
    #[test]
    fn verify_reports_every_frame_the_index_misfiled() {
        let (_dir, rt, _store, log) = fresh_log();
        let b = StreamId(Uuid::from_u128(2));
        let mut second = request(5_001..5_004);
        second.stream = b;
        rt.block_on(log.append_atomic(vec![request(1..5_001), second]))
            .unwrap();
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        assert!(report.ok, "{:?}", report.problems);
        assert_eq!(report.events, 5_003);
        {
            let mut state = log.state.write().unwrap();
            let ix = &mut state.index;
            // Stream b's versions 1..3 now say positions 1..3 (stream a's),
            // and ids 4_500 and 4_501 point at each other's frames.
            let lb = ix.streams.all(&b).unwrap().unwrap();
            ix.streams.replace(b, vec![1, 2, 3]);
            ix.ids.swap_for_test(4_500, 4_501);
            assert_eq!(lb, vec![5_001, 5_002, 5_003]);
        }
        let report = rt.block_on(log.verify(&|_| {})).unwrap();
        assert!(!report.ok);
        let mut at: Vec<(u64, bool)> = report
            .problems
            .iter()
            .map(|p| (p.position, p.what.contains("event id")))
            .collect();
        at.dedup();
        assert_eq!(
            at,
            vec![
                (4_500, true),
                (4_501, true),
                (5_001, false),
                (5_002, false),
                (5_003, false)
            ],
            "{:?}",
            report.problems
        );
    }

    /// The id map is grown ahead of the pushes that would fill it (a copy
    /// under the read lock, then a swap): across many growths every id
    /// stays found at its position, and no push grows the map itself.
    #[test]
    fn ids_survive_the_id_map_growing_ahead_of_the_pushes() {
        let (_dir, rt, _store, log) = fresh_log();
        let mut next = 1u128;
        let mut capacities = Vec::new();
        while next <= 5_000 {
            let end = (next + 300).min(5_001);
            rt.block_on(log.append_atomic(vec![request(next..end)]))
                .unwrap();
            next = end;
            let state = log.state.read().unwrap();
            assert!(state.index.ids.table_capacity() >= state.index.ids.table_len());
            capacities.push(state.index.ids.table_capacity());
        }
        capacities.dedup();
        assert!(
            capacities.len() >= 4,
            "the map grew several times: {capacities:?}"
        );
        for id in 1..=5_000u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64), "id {id}");
        }
    }

    /// The id table's capacity after each of `groups` appends of 300 new
    /// ids to `log`, from id `from`.
    fn capacities_over(
        rt: &tokio::runtime::Runtime,
        log: &SegmentLog,
        from: u128,
        groups: u128,
    ) -> Vec<usize> {
        (0..groups)
            .map(|g| {
                let first = from + g * 300;
                rt.block_on(log.append_atomic(vec![request(first..first + 300)]))
                    .unwrap();
                let state = log.state.read().unwrap();
                assert!(state.index.ids.table_capacity() >= state.index.ids.table_len());
                state.index.ids.table_capacity()
            })
            .collect()
    }

    /// Told how many events an import brings ([`EventStore::expect_appends`]),
    /// the writer grows its id table once, at the first group, for them
    /// all, instead of at every doubling; every id is found where it was
    /// put; and once the expected events are committed, a later group
    /// grows the table as before (by doubling).
    #[test]
    fn a_log_told_of_an_import_grows_its_id_table_once() {
        let (_dir, rt, _store, log) = fresh_log();
        log.expect_appends(6_000);
        let mut told = capacities_over(&rt, &log, 1, 20);
        assert!(
            told[0] >= 6_000,
            "room for all at the first group: {told:?}"
        );
        told.dedup();
        assert_eq!(told.len(), 1, "grown once: {told:?}");
        assert_eq!(log.expected.load(Ordering::Relaxed), 0, "all committed");
        // Past what was expected: grown as any log's, twice the room.
        let before = told[0];
        let after = capacities_over(&rt, &log, 6_001, 30);
        let last = *after.last().unwrap();
        assert!(
            last > before && last <= 4 * before,
            "{before} then {after:?}"
        );
        for id in 1..=15_000u128 {
            let found = rt.block_on(log.find_event(Uuid::from_u128(id))).unwrap();
            assert_eq!(found.map(|e| e.position), Some(id as u64), "id {id}");
        }
        // Not told: the same appends grow the table at each doubling.
        let (_dir, rt, _store, log) = fresh_log();
        let mut untold = capacities_over(&rt, &log, 1, 20);
        untold.dedup();
        assert!(untold.len() >= 4, "grown several times: {untold:?}");
    }

    /// An import that said how many events it brings ends with no growth
    /// of the id table begun for appends that may never come, though its
    /// last group leaves the table more than three quarters full (it
    /// began one, and held its table of twice the room, until session ay);
    /// the first group nobody announced begins it, with the room the
    /// import left, and it is put in. An announced group that would leave
    /// no room for a whole group more begins it as before. Every id is
    /// found throughout.
    #[test]
    fn an_import_told_ends_without_a_growth_begun_for_appends_to_come() {
        // A growth's thread says so at its gate as it starts.
        let (_dir, rt, _store, log, reached, release) = growing_apart_held();
        let hooks = &log.sync_hooks;
        log.expect_appends(45_000);
        let told = capacities_over(&rt, &log, 1, 150);
        let (len, room) = table_of(&log);
        assert_eq!(len, 45_000);
        assert!(4 * len > 3 * room, "{len} of {room}: {told:?}");
        assert!(room - len >= 300 + MAX_GROUP_EVENTS, "{len} of {room}");
        assert!(
            reached.recv_timeout(Duration::from_millis(500)).is_err(),
            "a growth began in the import"
        );
        assert_eq!(hooks.growths_begun.load(Ordering::Relaxed), 0);
        // The first append nobody announced: a growth begins, and is put
        // in by the time a group would find the table full.
        capacities_over(&rt, &log, 45_001, 1);
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        release.send(()).unwrap();
        let after = capacities_over(&rt, &log, 45_301, 45);
        assert!(*after.last().unwrap() >= 2 * room, "{room} then {after:?}");
        assert_eq!(
            hooks.growths_installed.load(Ordering::Relaxed),
            1,
            "the growth apart put in, not a growth where it is"
        );
        all_found(&rt, &log, 58_800);
        // An import whose last group leaves no room for a whole group
        // more begins the growth in it, as any group did before.
        let (_dir, rt, _store, log, reached, release) = growing_apart_held();
        log.expect_appends(50_100);
        capacities_over(&rt, &log, 1, 167);
        let (len, room) = table_of(&log);
        assert!(room - len < MAX_GROUP_EVENTS, "{len} of {room}");
        reached.recv_timeout(Duration::from_secs(10)).unwrap();
        release.send(()).unwrap();
        all_found(&rt, &log, 50_100);
    }

    /// However many events a caller says are coming, the table is grown
    /// for no more than it holds before its ids are spilled to a run
    /// (`spill_ids` and a group): a figure too large costs no memory past
    /// that.
    #[test]
    fn an_expectation_grows_the_id_table_no_further_than_a_spill() {
        let (dir, rt) = dir_and_runtime();
        let options = SegmentOptions {
            spill_ids: 2_000,
            ..SegmentOptions::default()
        };
        let store = SegmentStore::open_with(dir.path(), true, options).unwrap();
        let log = store.log("school-a").unwrap();
        log.expect_appends(u64::MAX);
        let capacities = capacities_over(&rt, &log, 1, 3);
        let most = (2_000 + MAX_GROUP_EVENTS) * 2;
        assert!(
            capacities.iter().all(|&c| c >= 300 && c <= most),
            "{capacities:?} against {most}"
        );
    }

    /// A group larger than the writer keeps buffers for (one atomic append
    /// of ~10 MB) is written whole, its buffers are let go, and the groups
    /// after it are written and read back as usual.
    #[test]
    fn a_group_past_the_kept_buffer_size_is_written_and_the_next_too() {
        let (dir, rt, store, log) = fresh_log();
        let mut big = request(1..10_001);
        for e in &mut big.events {
            // MessagePack `bin 16` of 1,000 bytes.
            e.payload = [0xc5, 0x03, 0xe8].into_iter().chain([7u8; 1_000]).collect();
        }
        rt.block_on(log.append_atomic(vec![big])).unwrap();
        assert!(
            store.size_on_disk().unwrap() > KEPT_GROUP_BUFFER as u64,
            "the group was larger than the kept buffer"
        );
        rt.block_on(log.append_atomic(vec![request(10_001..10_003)]))
            .unwrap();
        let head = rt.block_on(log.head()).unwrap();
        assert_eq!(head.position, 10_002);
        let first = rt.block_on(log.read_all(1, 10_000)).unwrap();
        assert_eq!(first.len(), 10_000);
        assert!(first.iter().all(|e| e.payload.len() == 1_003));
        let rest = rt.block_on(log.read_all(10_001, 10)).unwrap();
        let ids: Vec<u128> = rest.iter().map(|e| e.event_id.as_u128()).collect();
        assert_eq!(ids, [10_001, 10_002]);
        drop(log);
        drop(store);
        let store = SegmentStore::open(dir.path(), true).unwrap();
        let log = store.log("school-a").unwrap();
        assert_eq!(
            rt.block_on(log.head()).unwrap(),
            head,
            "durable across a reopen"
        );
    }

    /// A log at its most events refuses an append that would pass it with
    /// `Limit`, before anything is written (the writer never pushes a
    /// durable frame the index cannot take); a rebuild of a log longer
    /// than the index can hold is an error, not a panic.
    #[test]
    fn a_log_at_its_most_events_refuses_before_writing() {
        let (_dir, rt, store, log) = fresh_log();
        log.state.write().unwrap().index.max_events = 3;
        rt.block_on(log.append_atomic(vec![request(1..3)])).unwrap();
        let size = store.size_on_disk().unwrap();
        match rt.block_on(log.append_atomic(vec![request(3..5)])) {
            Err(StoreError::Limit {
                count: 4, limit: 3, ..
            }) => {}
            other => panic!("expected Limit, got {other:?}"),
        }
        assert_eq!(store.size_on_disk().unwrap(), size, "nothing written");
        assert_eq!(rt.block_on(log.head()).unwrap().position, 2);
        // One more fits exactly.
        rt.block_on(log.append_atomic(vec![request(3..4)])).unwrap();
        assert_eq!(rt.block_on(log.head()).unwrap().position, 3);
        assert_eq!(
            rt.block_on(log.find_event(Uuid::from_u128(3)))
                .unwrap()
                .map(|e| e.position),
            Some(3)
        );
        let log_dir = log.dir().to_path_buf();
        drop(log);
        drop(store);
        let open = OpenWith::ids(true);
        assert!(recover_at_most(&log_dir, 3, true, open, Spills::DEFAULT).is_ok());
        match recover_at_most(&log_dir, 2, true, open, Spills::DEFAULT) {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("expected Corrupt, got {:?}", other.map(|r| r.index.head())),
        }
    }

    /// `copy_in` refuses events past the index's most events with
    /// `Limit`, before writing them.
    #[test]
    fn a_copy_past_the_most_events_is_refused_before_writing() {
        let (dir, rt) = dir_and_runtime();
        let events = {
            let store = SegmentStore::open(&dir.path().join("from"), true).unwrap();
            let log = store.log("school-a").unwrap();
            rt.block_on(log.append_atomic(vec![request(1..5)])).unwrap();
            rt.block_on(log.read_all(1, 10)).unwrap()
        };
        assert_eq!(events.len(), 4);
        let store = SegmentStore::open(&dir.path().join("to"), true).unwrap();
        store.copy_in("school-b", &events[..3]).unwrap();
        store
            .copies
            .lock()
            .unwrap()
            .get_mut("school-b")
            .unwrap()
            .index
            .max_events = 3;
        let size = store.size_on_disk().unwrap();
        match store.copy_in("school-b", &events[3..]) {
            Err(StoreError::Limit {
                count: 4, limit: 3, ..
            }) => {}
            other => panic!("expected Limit, got {other:?}"),
        }
        assert_eq!(store.size_on_disk().unwrap(), size, "nothing written");
        assert_eq!(store.stored_head("school-b").unwrap(), 3);
    }
}
