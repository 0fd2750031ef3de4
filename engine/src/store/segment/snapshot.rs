//! The index snapshot: a log's in-memory index written to
//! `logs/<school>/index` when the log closes, so that the next open reads
//! it (front to back) and scans only the frames
//! written after it, instead of reading, checking and indexing every frame
//! of every segment (about 0.45 s a million events, most of it hash-map
//! inserts at random places). About 20 bytes an event.
//!
//! The snapshot is derived data, never the only copy of anything: a
//! snapshot that is missing, damaged, of another format, or that does not
//! match the segment files is ignored and the index is rebuilt from the
//! segments as before (and a new snapshot written at the next clean close).
//! Format (all integers little-endian; byte for byte in docs/storage.md):
//!
//! ```text
//! magic "CBSEGIX1" · version u32 · head u64 · head hash [32] · id seed u64
//! segments u32 · per segment: first position u64, length u64
//! per position 1..=head: its frame's length u32 (frames follow each other
//! from byte 0 of each segment, so offsets and segments follow)
//! streams u64 · per stream: id [16], count u32, its positions u32 × count
//! BLAKE3 of every byte before it [32]
//! ids u64 (= head) · per id, sorted by fingerprint then position:
//!   fingerprint u64, position u32
//! BLAKE3 of the ids' section (their count and pairs) [32]
//! ```
//!
//! Each section has its own checksum (format 4): an open that leaves the
//! ids in the file reads and hashes only what comes before them, and the
//! ids' bytes are hashed when they are first read.
//!
//! An id is kept as its fingerprint, its 64-bit hash under the seed
//! ([`super::ids::IdMap`]). Sorted, they are looked up in the file
//! ([`SortedIds`]) instead of read into the id table: a log opened from
//! the snapshot holds a filter and a block directory for them (about 2
//! bytes an id) and a table of only the ids appended after it.

use std::io::Write;
use std::os::unix::fs::FileExt;

use std::path::Path;

use uuid::Uuid;

use super::locs::Locations;
use super::sorted_ids::{pair_bytes, SortedIds, PAIR};
use super::streams::{AtInFile, Streams, LIST_BLOCK};
use super::{frame, IdHash, Index};
use crate::envelope::{Hash, StreamId};
use crate::error::StoreError;

/// The snapshot's file name in a log directory.
pub const SNAPSHOT_FILE: &str = "index";
/// Set (to anything) to ignore snapshots on open and rebuild every index
/// from the segments, checking every frame (the behaviour before
/// snapshots).
pub const FULL_SCAN_ENV: &str = "CASEBOOK_FULL_OPEN_SCAN";

const MAGIC: &[u8; 8] = b"CBSEGIX1";
/// 4 since session aj: a checksum for what comes before the ids and one
/// for the ids (3, since session v, had one checksum over the whole file,
/// so an open that leaves the ids in the file still read and hashed them:
/// 60% of the file at 10M events; the ids sorted by fingerprint and
/// looked up in the file since 3; 2, since session l, listed them in the
/// order of the id table's buckets, read into a table; 1 held the 16-byte
/// ids). A build ignores a snapshot of another version and rebuilds the
/// index from the segments once.
const VERSION: u32 = 4;

/// Bytes of the header before the head (magic, version), and with it.
const HEAD_END: u64 = 8 + 4 + 8;

/// A segment as the snapshot saw it: its first position and the length
/// of its frames (the log's acknowledged end, for the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SnapSegment {
    pub first: u64,
    pub len: u64,
}

/// A snapshot read back: the index up to `index.head()` and the segments
/// it covers.
pub(super) struct Loaded {
    pub index: Index,
    pub segments: Vec<SnapSegment>,
    /// The event ids, read when first needed.
    pub ids: LaterIds,
    /// Where the frame lengths are, when the open kept only where each
    /// group of positions starts ([`OpenWith::locations`]).
    pub locs: Option<LaterLocs>,
}

/// Bytes gathered into blocks of [`BLOCK`], each hashed and written whole
/// (BLAKE3 hashes a large block several chunks at a time; 16-byte updates
/// cost it several times more).
struct Blocks<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
}

/// Bytes hashed and written, or read and hashed, at once.
const BLOCK: usize = 1 << 20;
/// Bytes read and hashed at once by [`checksum`], beside the open's own
/// reading (BLAKE3 hashes such a block many chunks at a time).
const CHECKSUM_BLOCK: usize = 256 << 10;
/// The size of snapshot from which an open that leaves the ids in the
/// file takes the checksum, and reads the stream lists, on threads of
/// their own (about 400,000 events): below it one thread is as quick
/// (2.0 ms at 100,000 events against 2.3 with the threads), and a process
/// that started the threads held ~8 MB more in the phases after (the
/// bench at 100,000 events: memory the allocator keeps after threads end,
/// until its delayed purge).
pub const BESIDE_BYTES: u64 = 8 << 20;

/// How an open reads the snapshot.
#[derive(Clone, Copy, Debug)]
pub(super) struct OpenWith {
    /// The ids read at once, on a thread of their own beside the rest (an
    /// open for appends); else left in the file until first needed
    /// ([`LaterIds`]).
    pub ids_now: bool,
    /// Leaving the ids in the file, from this size of file the checksum
    /// and the stream lists are taken on threads of their own
    /// ([`BESIDE_BYTES`]; tests lower it).
    pub beside_bytes: u64,
    /// Every position's location held ([`Locations`]'s 2 bytes a
    /// position); else only where each group of 64 starts
    /// ([`Locations::sparse`]), the lengths left in the file until a
    /// read needs them ([`LaterLocs`]).
    pub locations: bool,
}

impl OpenWith {
    /// With or without the ids, every location, threads from
    /// [`BESIDE_BYTES`].
    pub const fn ids(ids_now: bool) -> OpenWith {
        OpenWith {
            ids_now,
            beside_bytes: BESIDE_BYTES,
            locations: true,
        }
    }
}

/// A snapshot's frame lengths, left in the file by an open that kept only
/// where each group of positions starts ([`OpenWith::locations`]), read
/// when a read first needs every location ([`LaterLocs::read`]). The
/// file stays open, so a snapshot written over it (a new file renamed
/// into place) does not change what is read; the open checked the
/// section's checksum, and the locations read are checked against the
/// groups the open kept.
pub(super) struct LaterLocs {
    file: std::fs::File,
    /// Where the lengths start, and the file's size.
    at: u64,
    total: u64,
    /// The snapshot's head: one length for each position 1..=head.
    head: u64,
    segments: Vec<SnapSegment>,
    /// The open's sum of the lengths ([`load_locations`]): those read
    /// again must be the same.
    sum: u64,
}

impl LaterLocs {
    /// The snapshot's positions' locations, every one held.
    pub(super) fn read(&self) -> Result<Locations, String> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| format!("cannot open: {e}"))?;
        let stop = self.at.saturating_add(self.head.saturating_mul(4));
        let mut r = Reading::at(file, self.at, self.total, stop);
        let mut index = Index::default();
        let sum = load_locations(&mut r, &self.segments, self.head, &mut index, true)?;
        if sum != self.sum {
            return Err("the frame lengths are not those the open read".into());
        }
        Ok(index.locs)
    }
}

impl Blocks<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BLOCK {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        self.hasher.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// Writes the snapshot of `index` (whose locations span `segments`) to
/// `out`.
pub(super) fn encode(
    index: &Index,
    segments: &[SnapSegment],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut w = Blocks {
        out,
        buf: Vec::with_capacity(BLOCK + 64),
        hasher: blake3::Hasher::new(),
    };
    let head = index.head();
    w.put(MAGIC)?;
    w.put(&VERSION.to_le_bytes())?;
    w.put(&head.to_le_bytes())?;
    w.put(&index.head_hash)?;
    w.put(&index.ids.hasher().seed().to_le_bytes())?;
    w.put(&(segments.len() as u32).to_le_bytes())?;
    for s in segments {
        w.put(&s.first.to_le_bytes())?;
        w.put(&s.len.to_le_bytes())?;
    }
    for len in index.locs.lens() {
        w.put(&len.to_le_bytes())?;
    }
    w.put(&(index.streams.len() as u64).to_le_bytes())?;
    // The lists in a file (the snapshot's the log was opened from, or one
    // the writer spilled) are read from it, one at a time.
    index
        .streams
        .for_each(false, |stream, positions| {
            let mut put = |bytes: &[u8]| {
                w.put(bytes)
                    .map_err(|e| StoreError::io("write the index snapshot", e))
            };
            put(stream.0.as_bytes())?;
            put(&(positions.len() as u32).to_le_bytes())?;
            for p in positions {
                put(&p.to_le_bytes())?;
            }
            Ok(())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // The checksum of all before the ids; the ids' own after them.
    w.flush_block()?;
    let rest = std::mem::take(&mut w.hasher).finalize();
    w.out.write_all(rest.as_bytes())?;
    w.put(&(index.ids.len() as u64).to_le_bytes())?;
    index.ids.sorted_pairs(|fp, p| w.put(&pair_bytes(fp, p)))?;
    w.flush_block()?;
    let ids = w.hasher.finalize();
    w.out.write_all(ids.as_bytes())
}

/// The snapshot file read front to back in blocks of [`BLOCK`]. An open
/// for appends, or one of a snapshot under [`OpenWith::beside_bytes`],
/// reads all before the ids on one reading, every byte before their
/// checksum hashed as its block is read (an open for appends then checks
/// the ids' checksum with [`checksum`]). Above that size an open that
/// leaves the ids in the file hashes nothing here: its own reading stops
/// where the frame lengths end, another reads the stream lists up to the
/// checksum, and [`checksum`] hashes all before it.
struct Reading {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Next unread byte of `buf`, and the end of what it holds.
    at: usize,
    end: usize,
    /// File offset of `buf[end]`.
    file_at: u64,
    /// Bytes handed out so far.
    read: u64,
    /// Bytes in the file (bounds every count before anything is
    /// allocated for it).
    total: u64,
    /// Where reading stops: the end of the file, or, once the header has
    /// said where they start, the ids (read by [`load_ids`]).
    stop: u64,
    /// Hashes every byte read before `hashed_end`, when this reading
    /// takes the checksum.
    hasher: Option<blake3::Hasher>,
    /// Where the bytes the checksum covers end (the checksum before the
    /// ids).
    hashed_end: u64,
}

impl Reading {
    /// Reads `file` from byte `from` to `stop` (of its `total`), hashing
    /// nothing: positioned reads, so that readings of one file through
    /// handles of their own go on side by side.
    fn at(file: std::fs::File, from: u64, total: u64, stop: u64) -> Reading {
        Reading {
            file,
            buf: vec![0; BLOCK],
            at: 0,
            end: 0,
            file_at: from,
            read: from,
            total,
            stop,
            hasher: None,
            hashed_end: 0,
        }
    }

    /// Moves what is left to the front of the buffer and reads the next
    /// block after it.
    fn refill(&mut self) -> Result<(), String> {
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        let want = (self.stop.saturating_sub(self.file_at) as usize).min(self.buf.len() - self.end);
        let block = &mut self.buf[self.end..self.end + want];
        self.file
            .read_exact_at(block, self.file_at)
            .map_err(|e| format!("cannot read: {e}"))?;
        // Hash up to the checksum.
        let hashed_end = self.hashed_end;
        if let Some(hasher) = self.hasher.as_mut() {
            if self.file_at < hashed_end {
                let n = ((hashed_end - self.file_at) as usize).min(want);
                hasher.update(&block[..n]);
            }
        }
        self.file_at += want as u64;
        self.end += want;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        if self.end - self.at < N {
            self.refill()?;
            if self.end - self.at < N {
                return Err(format!("the file ends inside {what}"));
            }
        }
        let mut b = [0u8; N];
        b.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        self.read += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }
    /// Reads `u32`s one after another, handing each to `each`, until it
    /// answers `Ok(false)` (that one read too) or fails: [`Reading::u32`]
    /// in a loop, taking the buffered ones at once (a snapshot holds two
    /// an event).
    fn u32s_while(
        &mut self,
        what: &str,
        mut each: impl FnMut(u32) -> Result<bool, String>,
    ) -> Result<(), String> {
        loop {
            if self.end - self.at < 4 {
                self.refill()?;
                if self.end - self.at < 4 {
                    return Err(format!("the file ends inside {what}"));
                }
            }
            let held = &self.buf[self.at..self.end];
            let mut used = 0;
            let mut more = true;
            for b in held.chunks_exact(4) {
                used += 4;
                if !each(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))? {
                    more = false;
                    break;
                }
            }
            self.at += used;
            self.read += used as u64;
            if !more {
                return Ok(());
            }
        }
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }
    /// Checks that `count` entries of `size` bytes fit in what is left.
    fn fits(&self, count: u64, size: u64, what: &str) -> Result<(), String> {
        let left = self.total.saturating_sub(self.read);
        if count.checked_mul(size).is_none_or(|n| n > left) {
            return Err(format!("{what}: {count} entries do not fit in the file"));
        }
        Ok(())
    }
}

/// Positions 1..=head seen so far (a bit each).
struct Seen {
    head: u64,
    bits: Vec<u64>,
}

impl Seen {
    fn new(head: u64) -> Seen {
        Seen {
            head,
            bits: vec![0; (head as usize).div_ceil(64)],
        }
    }

    fn mark(&mut self, p: u32, what: &str) -> Result<(), String> {
        let i = u64::from(p);
        if i == 0 || i > self.head {
            return Err(format!("{what}: position {i} out of range"));
        }
        let (w, bit) = (((i - 1) / 64) as usize, 1u64 << ((i - 1) % 64));
        if self.bits[w] & bit != 0 {
            return Err(format!("{what}: position {i} appears twice"));
        }
        self.bits[w] |= bit;
        Ok(())
    }
}

/// Reads the snapshot in `dir`. `Ok(None)` when there is none; `Err` says
/// why the one there cannot be used (the caller then rebuilds the index).
/// Everything is checked that can be without the segments: the checksum,
/// every count against the file's size, positions in range, every
/// position in exactly one stream, versions and locations in order; the
/// caller checks the segments and the last frame. The ids are checked
/// when they are read ([`LaterIds::read`]: every position exactly one id).
///
/// `open.ids_now`: the ids are read at once, on a thread of their own
/// while this one reads the rest (an open for appends); else they are
/// left in the file until first needed ([`LaterIds`]).
pub(super) fn load(dir: &Path, max_events: u64, open: OpenWith) -> Result<Option<Loaded>, String> {
    let ids_now = open.ids_now;
    let path = dir.join(SNAPSHOT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let total = file
        .metadata()
        .map_err(|e| format!("cannot size: {e}"))?
        .len();
    if total < 32 + HEAD_END {
        return Err("too short".into());
    }
    // Where the ids' section starts (their count, then the pairs) and the
    // checksum of all before them: from the head, read ahead here so that
    // the reading below hashes exactly what that checksum covers (it
    // reads the header again, and names its faults in order).
    let mut head_bytes = [0u8; 8];
    file.read_exact_at(&mut head_bytes, HEAD_END - 8)
        .map_err(|e| format!("cannot read: {e}"))?;
    let sections = |head: u64| {
        let ids_at = head
            .checked_mul(PAIR as u64)
            .and_then(|n| n.checked_add(8 + 32))
            .and_then(|n| total.checked_sub(n))?;
        Some((ids_at, ids_at.checked_sub(32)?))
    };
    let mut r = Reading {
        hasher: Some(blake3::Hasher::new()),
        hashed_end: sections(u64::from_le_bytes(head_bytes)).map_or(0, |(_, sum_at)| sum_at),
        ..Reading::at(file, 0, total, total)
    };
    if &r.bytes::<8>("magic")? != MAGIC {
        return Err("not an index snapshot".into());
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(format!(
            "snapshot format {version}, this build reads {VERSION}"
        ));
    }
    let head = r.u64("head")?;
    if head > max_events {
        return Err(format!("head {head} past the most events a log holds"));
    }
    let head_hash: Hash = r.bytes::<32>("head hash")?;
    let seed = r.u64("seed")?;
    // The ids are the file's last section, with a checksum of their own;
    // the checksum of everything before them comes before them
    // (`sum_at`). An open that leaves the ids in the file until first
    // needed ([`LaterIds`]) reads and hashes only what comes before them:
    // for a small file on this thread; from `open.beside_bytes` it reads
    // only the frame lengths here, while a thread of its own hashes all
    // before the ids ([`checksum`]) and another reads the stream lists
    // ([`load_rest`]). An open for appends reads the ids on a thread of
    // their own, from where they start, while this one reads the rest,
    // then checks the ids' checksum.
    let Some((ids_at, sum_at)) = sections(head) else {
        return Err(format!("too short for {head} ids"));
    };
    if ids_at < HEAD_END {
        return Err(format!("too short for {head} ids"));
    }
    let ids_file = r
        .file
        .try_clone()
        .map_err(|e| format!("cannot open: {e}"))?;
    let ids_sum_at = total - 32;
    let read_ids = || load_ids(&ids_file, ids_at, head, None);
    let check = || checksum(&ids_file, 0, sum_at);
    // The index the rest is read into: every location, or where each
    // group of them starts.
    let blank = || Index {
        head_hash,
        max_events,
        locs: match open.locations {
            true => Locations::default(),
            false => Locations::sparse(),
        },
        ..Index::default()
    };
    // The rest read and hashed in turn and its checksum checked, on this
    // thread; with `ids`, the ids' checksum after it.
    let inline = |r: &mut Reading, ids: bool| {
        let rest = load_rest(r, &path, head, blank(), seed, sum_at)?;
        let stored = r.bytes::<32>("the checksum")?;
        match r.hasher.take().map(|h| h.finalize()) {
            Some(hash) if hash.as_bytes() == &stored => {}
            _ => return Err("checksum mismatch".to_string()),
        }
        if ids {
            checksum(&r.file, ids_at, ids_sum_at).map_err(|e| format!("the ids' section: {e}"))?;
        }
        Ok(rest)
    };
    let (rest, ahead) = match ids_now {
        false if total < open.beside_bytes => (inline(&mut r, false), None),
        false => {
            r.stop = sum_at;
            r.hasher = None;
            let (rest, sum) = beside("snapshot checksum", check, || {
                load_rest(&mut r, &path, head, blank(), seed, sum_at)
            });
            (rest.and_then(|rest| sum.map(|()| rest)), None)
        }
        true => {
            let (rest, ids) = beside("snapshot ids", read_ids, || inline(&mut r, true));
            (rest, Some(ids))
        }
    };
    let (index, segments, (locs_at, sum)) = rest?;
    let locs = match index.locs.is_sparse() {
        true => Some(LaterLocs {
            file: ids_file
                .try_clone()
                .map_err(|e| format!("cannot open: {e}"))?,
            at: locs_at,
            sum,
            total,
            head,
            segments: segments.clone(),
        }),
        false => None,
    };
    Ok(Some(Loaded {
        index,
        locs,
        segments,
        ids: LaterIds {
            file: ids_file,
            at: ids_at,
            head,
            seed,
            sum_at: ids_sum_at,
            ahead: std::sync::Mutex::new(ahead),
        },
    }))
}

/// Runs `side` on a thread of its own, named `name`, while `main` runs on
/// this one, and returns both results, `main`'s to be looked at first (a
/// damaged file's findings named in the order one thread reading it
/// front to back would find them). Without a thread (none could be
/// started), `side` runs after `main` on this one, if `main` succeeded.
fn beside<T, U: Send>(
    name: &str,
    side: impl Fn() -> Result<U, String> + Sync,
    main: impl FnOnce() -> Result<T, String>,
) -> (Result<T, String>, Result<U, String>) {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, &side)
            .ok();
        let main = main();
        let side = match thread {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(format!("the {name} thread failed"))),
            None if main.is_ok() => side(),
            None => Err("not read".into()),
        };
        (main, side)
    })
}

/// A snapshot's event ids: read by the open (an open for appends), or
/// left in the file by the open and read, with their section's checksum
/// checked, only when first needed: an append, a look-up by id,
/// `verify`, a copy. Read, they stay in the file ([`SortedIds`]), and the
/// index keeps their filter and block directory. The file stays open, so
/// a snapshot written over it (a new file renamed into place) does not
/// change what is read; each block's CRC-32 is checked as a look-up reads
/// it.
pub(super) struct LaterIds {
    file: std::fs::File,
    /// Where the section (count, pairs) starts.
    at: u64,
    /// The snapshot's head: one id for each position 1..=head.
    head: u64,
    /// The seed the fingerprints were taken with.
    seed: u64,
    /// Where the section's checksum is (the file's last 32 bytes).
    sum_at: u64,
    /// The ids read already (an open for appends reads them beside the
    /// rest of the file), until taken.
    ahead: std::sync::Mutex<Option<Result<IdsRead, String>>>,
}

/// The ids of a snapshot and the pairs of positions that share a
/// fingerprint ([`SortedIds::read`]).
type IdsRead = (SortedIds, Vec<(u32, u32)>);

impl LaterIds {
    /// The hashing the fingerprints were taken with.
    pub(super) fn hasher(&self) -> IdHash {
        IdHash::with_seed(self.seed)
    }

    /// The ids and the pairs of positions that share a fingerprint
    /// ([`SortedIds::read`]), or why the section can no longer be used.
    pub(super) fn read(&self) -> Result<IdsRead, String> {
        if let Some(read) = self.ahead.lock().ok().and_then(|mut a| a.take()) {
            return read;
        }
        let mut sum = blake3::Hasher::new();
        let read = load_ids(&self.file, self.at, self.head, Some(&mut sum));
        // The checksum first: a fault the pairs' checks found in bytes
        // that do not match it is damage, and said so.
        let mut stored = [0u8; 32];
        self.file
            .read_exact_at(&mut stored, self.sum_at)
            .map_err(|e| format!("cannot read: {e}"))?;
        if sum.finalize().as_bytes() != &stored {
            return Err("the ids' section: checksum mismatch".into());
        }
        read
    }
}

/// The snapshot's ids (from byte `at`: count, pairs), read and checked
/// ([`SortedIds::read`]), every byte added to `sum` if given (every one
/// of them, even after a check fails: the caller compares the checksum
/// first); they are looked up later through a handle of their own on the
/// file.
fn load_ids(
    file: &std::fs::File,
    at: u64,
    head: u64,
    mut sum: Option<&mut blake3::Hasher>,
) -> Result<IdsRead, String> {
    let mut header = [0u8; 8];
    file.read_exact_at(&mut header, at)
        .map_err(|e| format!("cannot read: {e}"))?;
    if let Some(sum) = sum.as_deref_mut() {
        sum.update(&header);
    }
    let nids = u64::from_le_bytes(header);
    if nids != head {
        return Err(format!("{nids} ids for {head} positions"));
    }
    let own = file.try_clone().map_err(|e| format!("cannot open: {e}"))?;
    SortedIds::read(own, at + 8, head, sum)
}

/// What [`load_rest`] reads: the index, the segments, and where the frame
/// lengths start with their sum ([`load_locations`]).
type Rest = (Index, Vec<SnapSegment>, (u64, u64));

/// The rest of the snapshot after its seed: segments, locations, streams,
/// which must end where the checksum before the ids begins (`sum_at`),
/// read into `index` (empty); also where the frame lengths start. The
/// checksums and the ids are not read here.
fn load_rest(
    r: &mut Reading,
    path: &Path,
    head: u64,
    mut index: Index,
    seed: u64,
    sum_at: u64,
) -> Result<Rest, String> {
    let nseg = u64::from(r.u32("segments")?);
    r.fits(nseg, 16, "segments")?;
    let mut segments = Vec::with_capacity(nseg as usize);
    for _ in 0..nseg {
        let first = r.u64("segment")?;
        let len = r.u64("segment")?;
        segments.push(SnapSegment { first, len });
    }
    // The frame lengths (4 bytes a position) and, after them, the stream
    // lists. An open that takes the checksum here (an open for appends,
    // whose ids are read beside it) reads and hashes them in turn. Else
    // each is read by a thread of its own (the lists through a handle of
    // their own, from where the lengths end), the lengths' findings named
    // first when both fail, as when one thread read them in turn.
    r.fits(head, 4, "locations")?;
    let locs_at = r.read;
    // Only a sparse index reads its lengths again, checked by their sum.
    let summed = index.locs.is_sparse();
    let streams_at = r.read + 4 * head;
    let (locs_sum, (lists, crcs)) = match r.hasher.is_some() {
        true => {
            let sum = load_locations(r, &segments, head, &mut index, summed)?;
            (sum, load_streams(r, head, sum_at)?)
        }
        false => {
            // Nothing to hash: this reading ends with the lengths.
            r.stop = r.stop.min(streams_at);
            let lists_file = r
                .file
                .try_clone()
                .map_err(|e| format!("cannot open: {e}"))?;
            let total = r.total;
            let read_lists = || {
                let file = lists_file
                    .try_clone()
                    .map_err(|e| format!("cannot open: {e}"))?;
                let mut reading = Reading::at(file, streams_at, total, sum_at);
                load_streams(&mut reading, head, sum_at)
            };
            let (locations, streams) = beside("snapshot streams", read_lists, || {
                load_locations(r, &segments, head, &mut index, summed)
            });
            (locations?, streams?)
        }
    };
    let own = r
        .file
        .try_clone()
        .map_err(|e| format!("cannot open: {e}"))?;
    index.streams = Streams::from_file(
        own,
        path.to_path_buf(),
        head,
        IdHash::with_seed(seed),
        lists,
        crcs,
    )?;
    Ok((index, segments, (locs_at, locs_sum)))
}

/// The frame lengths ([`load_rest`]), read by `r` from where they start,
/// into `index`'s locations; with `summed`, returns a sum of them
/// ([`sum_lens`]; else 0): a sparse index's lengths read again are
/// checked with it ([`LaterLocs::read`]).
fn load_locations(
    r: &mut Reading,
    segments: &[SnapSegment],
    head: u64,
    index: &mut Index,
    summed: bool,
) -> Result<u64, String> {
    let mut sum = 0u64;
    // Frame after frame from byte 0 of each segment, each segment from
    // its first position to its length.
    let mut p = 0u64;
    // A segment's frames, gathered and added [`ADD_FRAMES`] at a time
    // ([`Locations::push_frames`]), and where the first of them is.
    let mut pending: Vec<u32> = Vec::with_capacity(ADD_FRAMES);
    let mut pending_at = 0u64;
    for (seg, s) in segments.iter().enumerate() {
        if s.first != p + 1 || s.len == 0 {
            return Err(format!("segment {seg} does not start after the one before"));
        }
        let seg = seg as u32;
        let mut offset = 0u64;
        r.u32s_while("locations", |len| {
            p += 1;
            if p > head {
                return Err("the segments hold more frames than the head".into());
            }
            if !frame::FRAME_LENS.contains(&(len as usize)) {
                return Err(format!("position {p}: no frame is {len} bytes long"));
            }
            if pending.is_empty() {
                pending_at = offset;
            }
            pending.push(len);
            if pending.len() == ADD_FRAMES {
                if summed {
                    sum = sum_lens(sum, &pending);
                }
                index.locs.push_frames(seg, &pending, pending_at)?;
                pending.clear();
            }
            offset += u64::from(len);
            Ok(offset < s.len)
        })?;
        if summed {
            sum = sum_lens(sum, &pending);
        }
        index.locs.push_frames(seg, &pending, pending_at)?;
        pending.clear();
        if offset != s.len {
            return Err(format!("segment {seg} does not end where its frames do"));
        }
    }
    if p != head {
        return Err(format!("the segments hold {p} frames of {head}"));
    }
    Ok(sum)
}

/// `sum` carried over `lens`: any change of one of them, or of their
/// order, changes it (almost always).
fn sum_lens(sum: u64, lens: &[u32]) -> u64 {
    lens.iter().fold(sum, |sum, &len| {
        sum.wrapping_mul(0x0000_0100_0000_01B3)
            .wrapping_add(u64::from(len))
    })
}

/// Frames a snapshot's open gathers before adding them to the locations.
const ADD_FRAMES: usize = 4096;

/// Each stream with where its list starts in the file, and the CRC-32 of
/// every block of every list ([`Streams::from_file`]).
type StreamLists = (Vec<(StreamId, AtInFile)>, Vec<u32>);

/// The stream lists ([`load_rest`]), read by `r` from where they start:
/// every position in exactly one stream, each stream's positions
/// increasing, and the lists must end where the checksum before the ids
/// begins (`sum_at`). The lists stay in the file ([`Streams`]): returned
/// are where each starts and the CRC-32 of each of its blocks.
fn load_streams(r: &mut Reading, head: u64, sum_at: u64) -> Result<StreamLists, String> {
    let nstreams = r.u64("streams")?;
    r.fits(nstreams, 20, "streams")?;
    let mut seen = Seen::new(head);
    let mut lists = Vec::with_capacity(nstreams as usize);
    // A CRC-32 a block: at most one a stream and one for every block's
    // worth of positions (both counts checked against the file's size).
    let mut crcs = Vec::with_capacity((nstreams + head / LIST_BLOCK as u64) as usize);
    let mut block = Vec::with_capacity(LIST_BLOCK * 4);
    let mut listed = 0u64;
    for _ in 0..nstreams {
        let stream = StreamId(Uuid::from_bytes(r.bytes::<16>("stream")?));
        let count = r.u32("stream")?;
        if count == 0 {
            return Err("a stream is empty".into());
        }
        r.fits(u64::from(count), 4, "stream positions")?;
        listed += u64::from(count);
        let (at, crc_at) = (r.read, crcs.len() as u32);
        let (mut prev, mut left) = (0u32, count);
        r.u32s_while("stream positions", |p| {
            if p <= prev {
                return Err("a stream's positions are not increasing".into());
            }
            seen.mark(p, "streams")?;
            prev = p;
            left -= 1;
            block.extend_from_slice(&p.to_le_bytes());
            if block.len() == LIST_BLOCK * 4 || left == 0 {
                crcs.push(crc32fast::hash(&block));
                block.clear();
            }
            Ok(left > 0)
        })?;
        lists.push((stream, AtInFile { at, count, crc_at }));
    }
    if listed != head {
        return Err(format!("streams list {listed} positions of {head}"));
    }
    // The checksum, then the ids (read by `load_ids`): it must start
    // where the streams end.
    if r.read != sum_at {
        return Err("the streams do not end where the checksum before the ids begins".into());
    }
    Ok((lists, crcs))
}

/// Hashes bytes `from..to` of `file` and checks them against the 32
/// bytes at `to` (a section and its checksum), a block of
/// [`CHECKSUM_BLOCK`] at a time with positioned reads (beside the open's
/// own reading of the file, through a handle of its own).
fn checksum(file: &std::fs::File, from: u64, to: u64) -> Result<(), String> {
    let mut hasher = blake3::Hasher::new();
    hash_range(file, from, to, &mut hasher)?;
    let mut stored = [0u8; 32];
    file.read_exact_at(&mut stored, to)
        .map_err(|e| format!("cannot read: {e}"))?;
    if hasher.finalize().as_bytes() != &stored {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// Adds bytes `from..to` of `file` to `hasher`.
fn hash_range(
    file: &std::fs::File,
    from: u64,
    to: u64,
    hasher: &mut blake3::Hasher,
) -> Result<(), String> {
    let mut buf = vec![0u8; CHECKSUM_BLOCK.min(to.saturating_sub(from) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHECKSUM_BLOCK);
        let block = &mut buf[..n];
        file.read_exact_at(block, at)
            .map_err(|e| format!("cannot read: {e}"))?;
        hasher.update(block);
        at += n as u64;
    }
    Ok(())
}
