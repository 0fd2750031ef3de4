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
//! Format 6 (all integers little-endian; byte for byte in docs/storage.md):
//!
//! ```text
//! magic "CBSEGIX1" · version u32 · head u64 · head hash [32] · id seed u64
//! segments u32 · per segment: first position u64, length u64
//! per position 1..=head: its frame's length u32 (frames follow each other
//! from byte 0 of each segment, so offsets and segments follow)
//! BLAKE3 of the lengths [32]
//! per stream, in the directory's order: its positions u32 × count
//! the directory:
//!   runs u32 · per run: first position u64, segment u32, start u64, end u64
//!   groups u64 · per group of 64 positions: its first frame's offset
//!     from its run's start u32
//!   streams u64 · per stream: id [16], count u32
//!   blocks u64 · per block of 1,024 positions of each list: CRC-32 u32
//! BLAKE3 of the header, the segments and the directory [32]
//! ids u64 (= head) · per id, sorted by fingerprint then position:
//!   fingerprint u64, position u32
//! BLAKE3 of the ids' section (their count and pairs) [32]
//! the directory of the ids' blocks (format 6; not in 5, also read):
//!   blocks u64 · per block of 256 pairs: its first fingerprint u64,
//!   CRC-32 u32
//! BLAKE3 of the directory of the ids' blocks [32]
//! ```
//!
//! Every open reads the header and the directory, checked by their
//! checksum, and the lists, each block checked by its CRC-32 (format 5):
//! an open that keeps only where each group of positions starts reads no
//! more (about 8 bytes a group and 24 a stream, and 4 bytes a position of
//! lists), the lengths read, with their checksum, when a read first needs
//! every location. An open that holds every location reads the lengths
//! too and checks the lists' positions. An open that leaves the ids in the
//! file reads nothing of them; their bytes are hashed when they are first
//! read.
//!
//! An id is kept as its fingerprint, its 64-bit hash under the seed
//! ([`super::ids::IdMap`]). Sorted, they are looked up in the file
//! ([`SortedIds`]) instead of read into the id table: a log opened from
//! the snapshot holds a filter and a block directory for them (about 2
//! bytes an id) and a table of only the ids appended after it. Until they
//! are read, a few are looked up in place with the directory of their
//! blocks the file holds ([`LaterIds::in_place`], format 6).

use std::io::Write;
use std::os::unix::fs::FileExt;

use std::path::Path;

use uuid::Uuid;

use super::frame::{self, le_u32, le_u64};
use super::locs::{Locations, SnapRun};
use super::sorted_ids::{BlockSums, Chunks, CopyMerge, SortedIds, BLOCK_PAIRS, PAIR};
use super::streams::{AtInFile, Streams, LIST_BLOCK};
use super::{IdHash, Index};
use crate::envelope::{Hash, StreamId};
use crate::error::StoreError;

/// The snapshot's file name in a log directory.
pub const SNAPSHOT_FILE: &str = "index";
/// Set (to anything) to ignore snapshots on open and rebuild every index
/// from the segments, checking every frame (the behaviour before
/// snapshots).
pub const FULL_SCAN_ENV: &str = "CASEBOOK_FULL_OPEN_SCAN";

const MAGIC: &[u8; 8] = b"CBSEGIX1";
/// 5 since session an: the stream lists' counts, the CRC-32s of their
/// blocks and the locations' group table in a directory of their own with
/// its own checksum, the lengths with theirs, so that an open that keeps
/// only where each group starts reads no length and checks the lists by
/// their CRC-32s alone (4, since session aj, had a checksum before the ids
/// and one of their own, each stream's count before its list; 3, since
/// session v, one checksum over the whole file, the ids sorted by
/// fingerprint and looked up in the file since; 2, since session l,
/// listed them in the order of the id table's buckets, read into a table;
/// 1 held the 16-byte ids). 6 since session bh: a directory of the ids'
/// blocks after their checksum (each block's first fingerprint and
/// CRC-32, and a checksum of their own), so that a few ids are looked up
/// in place without reading the section ([`LaterIds::in_place`]). This
/// build reads 5 too (its ids then read whole at their first use), and
/// ignores a snapshot of any other version, rebuilding the index from the
/// segments once.
const VERSION: u32 = 6;
/// The format before [`VERSION`], read as well: no directory of the ids.
const VERSION_WITHOUT_ID_BLOCKS: u32 = 5;

/// Bytes of the directory of the ids' blocks (format 6) of a snapshot of
/// `head` positions: their count, a fence and a CRC-32 a block of
/// [`BLOCK_PAIRS`] pairs, and its BLAKE3.
pub(super) fn id_blocks_bytes(head: u64) -> Option<u64> {
    head.div_ceil(BLOCK_PAIRS as u64)
        .checked_mul(12)?
        .checked_add(8 + 32)
}

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

/// Bytes gathered into blocks of [`BLOCK`], each written whole and, while
/// `hasher` is set, hashed (BLAKE3 hashes a large block several chunks
/// at a time; 16-byte updates cost it several times more).
struct Blocks<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    hasher: Option<blake3::Hasher>,
}

/// Bytes hashed and written, or read and hashed, at once.
const BLOCK: usize = 1 << 20;
/// Bytes read and hashed at once by [`checksum`], beside the open's own
/// reading (BLAKE3 hashes such a block many chunks at a time).
const CHECKSUM_BLOCK: usize = 256 << 10;
/// The size of snapshot from which an open that leaves the ids in the
/// file and holds every location takes the lengths' checksum, and reads
/// the stream lists, on threads of their own (about 400,000 events): below it one thread is as quick
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
    /// Leaving the ids in the file and holding every location, from this
    /// size of file the lengths' checksum and the stream lists are taken
    /// on threads of their own ([`BESIDE_BYTES`]; tests lower it).
    pub beside_bytes: u64,
    /// Every position's location held ([`Locations`]'s 2 bytes a
    /// position); else only where each group of 64 starts
    /// ([`Locations::sparse`]), the lengths left in the file until a
    /// read needs them ([`LaterLocs`]).
    pub locations: bool,
    /// Fewest ids looked up in place while they are left in the file
    /// (`SegmentOptions::ids_in_place_least`).
    pub in_place_least: u64,
}

impl OpenWith {
    /// With or without the ids, every location, threads from
    /// [`BESIDE_BYTES`].
    pub const fn ids(ids_now: bool) -> OpenWith {
        OpenWith {
            ids_now,
            beside_bytes: BESIDE_BYTES,
            locations: true,
            in_place_least: 0,
        }
    }
}

/// A snapshot's frame lengths: read by an open that holds every location,
/// or left in the file by one that kept only where each group of
/// positions starts ([`OpenWith::locations`]) and read when a read first
/// needs every location ([`LaterLocs::read`]). The file stays open, so a
/// snapshot written over it (a new file renamed into place) does not
/// change what is read. They are checked against their own checksum when
/// read, and the locations they give against the group table (by the
/// open, or by `locations_ready` against the groups it kept).
pub(super) struct LaterLocs {
    file: std::fs::File,
    /// Where the lengths start, where their checksum is (right after
    /// them), and the file's size.
    at: u64,
    sum_at: u64,
    total: u64,
    /// The snapshot's head: one length for each position 1..=head.
    head: u64,
    segments: Vec<SnapSegment>,
}

impl LaterLocs {
    /// The snapshot's positions' locations, every one held, the lengths
    /// checked against their checksum (the caller checks them against
    /// the groups it kept).
    pub(super) fn read(&self) -> Result<Locations, String> {
        self.read_with(true)
    }

    /// [`LaterLocs::read`], the checksum taken as the lengths are read
    /// when `hashed` (else by a thread of its own: [`checksum`]).
    fn read_with(&self, hashed: bool) -> Result<Locations, String> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| format!("cannot open: {e}"))?;
        let mut r = Reading::at(file, self.at, self.total, self.sum_at);
        if hashed {
            r.hasher = Some(blake3::Hasher::new());
            r.hashed_end = self.sum_at;
        }
        let mut locs = Locations::default();
        load_locations(&mut r, &self.segments, self.head, &mut locs)?;
        if let Some(hasher) = r.hasher.take() {
            sum_matches(&r.file, self.sum_at, hasher)
                .map_err(|e| format!("the frame lengths: {e}"))?;
        }
        Ok(locs)
    }

    /// The snapshot's head: it holds a length for each position up to it.
    pub(super) fn head(&self) -> u64 {
        self.head
    }

    /// Hands `out` the bytes of the lengths as they are read, a block of
    /// [`BLOCK`] at a time, against their checksum, taken as they are
    /// read and compared at their end: lengths that do not match it, or
    /// cannot be read, give a [`NotCopied`] error (of
    /// [`Uncopied::Lengths`]), and the snapshot being written is not
    /// used; an error of `out` (the write) is passed on as it is. Nothing
    /// else is checked of them here: that they give the group table is
    /// checked when the next snapshot's lengths are read (docs/storage.md,
    /// "The frame lengths copied, not read").
    pub(super) fn copy_lens(
        &self,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let not_copied = |e: String| std::io::Error::other(NotCopied(Uncopied::Lengths, e));
        let len = self.sum_at.checked_sub(self.at);
        if len != self.head.checked_mul(4) {
            return Err(not_copied("not as long as the head's lengths".into()));
        }
        let mut unread = Unread {
            file: &self.file,
            at: self.at,
            left: len.unwrap_or_default(),
            chunk: BLOCK as u64,
            what: "frame lengths",
            sum: blake3::Hasher::new(),
            failed: None,
        };
        let mut buf = Vec::with_capacity(BLOCK);
        while unread.read_next(&mut buf).map_err(not_copied)? {
            out(&buf)?;
        }
        sum_matches(&self.file, self.sum_at, unread.sum)
            .map_err(|e| not_copied(format!("the frame lengths: {e}")))
    }
}

/// Where [`encode`] takes the frame lengths from.
#[derive(Clone, Copy)]
pub(super) enum Lens<'a> {
    /// The index holds every location.
    Held,
    /// The index keeps only where each group starts: the lengths of the
    /// snapshot it was opened from, copied from its file
    /// ([`LaterLocs::copy_lens`]), then those of the frames after it,
    /// walked from their groups.
    Copied {
        from: &'a LaterLocs,
        tail: &'a [u32],
    },
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
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&self.buf);
        }
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is gathered, and hashes what follows with `next`
    /// (nothing: `None`); returns the hasher of what came before.
    fn hash_with(
        &mut self,
        next: Option<blake3::Hasher>,
    ) -> std::io::Result<Option<blake3::Hasher>> {
        self.flush_block()?;
        Ok(std::mem::replace(&mut self.hasher, next))
    }
}

/// Writes the snapshot of `index` (whose locations span `segments`) to
/// `out` (format 5, docs/storage.md): the header and the segments, the
/// frame lengths and their checksum, the stream lists, the directory
/// (the group table, each stream's count, the lists' blocks' CRC-32s)
/// and the checksum of the header, the segments and the directory, the
/// ids and theirs.
pub(super) fn encode(
    index: &Index,
    segments: &[SnapSegment],
    lens: Lens<'_>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut w = Blocks {
        out,
        buf: Vec::with_capacity(BLOCK + 64),
        hasher: Some(blake3::Hasher::new()),
    };
    let head = index.head();
    w.put(MAGIC)?;
    w.put(&VERSION.to_le_bytes())?;
    w.put(&head.to_le_bytes())?;
    w.put(&index.head_hash)?;
    // The ids' fingerprints are taken under the seed of the snapshot
    // they are still in, if any.
    let seed = match &index.later {
        Some(later) => later.snapshot.hasher().seed(),
        None => index.ids.hasher().seed(),
    };
    w.put(&seed.to_le_bytes())?;
    w.put(&(segments.len() as u32).to_le_bytes())?;
    for s in segments {
        w.put(&s.first.to_le_bytes())?;
        w.put(&s.len.to_le_bytes())?;
    }
    // The header's hashing goes on over the directory, after the lists.
    let directory = w.hash_with(Some(blake3::Hasher::new()))?;
    match lens {
        Lens::Held => {
            for len in index.locs.lens() {
                w.put(&len.to_le_bytes())?;
            }
        }
        Lens::Copied { from, tail } => {
            if from.head + tail.len() as u64 != head {
                return Err(std::io::Error::other(format!(
                    "{} frame lengths for {head} positions",
                    from.head + tail.len() as u64
                )));
            }
            from.copy_lens(&mut |bytes| w.put(bytes))?;
            for len in tail {
                w.put(&len.to_le_bytes())?;
            }
        }
    }
    if let Some(lens) = w.hash_with(None)? {
        w.out.write_all(lens.finalize().as_bytes())?;
    }
    // The lists in a file (the snapshot's the log was opened from, or one
    // the writer spilled) are read from it, one at a time; each list's
    // blocks of `LIST_BLOCK` positions are CRC-32'd as they are written.
    let mut listed: Vec<(StreamId, u32)> = Vec::with_capacity(index.streams.len());
    let mut crcs: Vec<u32> = Vec::new();
    let mut block: Vec<u8> = Vec::with_capacity(LIST_BLOCK * 4);
    index
        .streams
        .for_each(false, |stream, positions| {
            listed.push((*stream, positions.len() as u32));
            for chunk in positions.chunks(LIST_BLOCK) {
                block.clear();
                for p in chunk {
                    block.extend_from_slice(&p.to_le_bytes());
                }
                crcs.push(crc32fast::hash(&block));
                w.put(&block)
                    .map_err(|e| StoreError::io("write the index snapshot", e))?;
            }
            Ok(())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    w.hash_with(directory)?;
    let (runs, bases) = index.locs.group_table();
    w.put(&(runs.len() as u32).to_le_bytes())?;
    for r in &runs {
        w.put(&r.first.to_le_bytes())?;
        w.put(&r.seg.to_le_bytes())?;
        w.put(&r.base.to_le_bytes())?;
        w.put(&r.end.to_le_bytes())?;
    }
    w.put(&(bases.len() as u64).to_le_bytes())?;
    for b in &bases {
        w.put(&b.to_le_bytes())?;
    }
    w.put(&(listed.len() as u64).to_le_bytes())?;
    for (stream, count) in &listed {
        w.put(stream.0.as_bytes())?;
        w.put(&count.to_le_bytes())?;
    }
    w.put(&(crcs.len() as u64).to_le_bytes())?;
    for crc in &crcs {
        w.put(&crc.to_le_bytes())?;
    }
    // The directory's checksum (with the header's); the ids' own after
    // them.
    if let Some(directory) = w.hash_with(Some(blake3::Hasher::new()))? {
        w.out.write_all(directory.finalize().as_bytes())?;
    }
    // The ids, each block's fence and CRC-32 taken as they are written.
    let n = match &index.later {
        None => index.ids.len() as u64,
        Some(_) => head,
    };
    w.put(&n.to_le_bytes())?;
    let mut blocks = BlockSums::default();
    let mut put = |bytes: &[u8]| {
        blocks.add(bytes);
        w.put(bytes)
    };
    match &index.later {
        None => index.ids.sorted_bytes(&mut put)?,
        Some(later) => {
            let first = later.first_after(head);
            later.snapshot.copy_merged(&later.tail, first, &mut put)?;
        }
    }
    if let Some(ids) = w.hash_with(Some(blake3::Hasher::new()))? {
        w.out.write_all(ids.finalize().as_bytes())?;
    }
    // The directory of the ids' blocks, and its checksum.
    let (fences, sums) = blocks.finish().map_err(std::io::Error::other)?;
    if fences.len() as u64 != head.div_ceil(BLOCK_PAIRS as u64) {
        return Err(std::io::Error::other(format!(
            "{} blocks of ids for {head} positions",
            fences.len()
        )));
    }
    w.put(&(fences.len() as u64).to_le_bytes())?;
    for (fence, sum) in fences.iter().zip(&sums) {
        w.put(&fence.to_le_bytes())?;
        w.put(&sum.to_le_bytes())?;
    }
    if let Some(blocks) = w.hash_with(None)? {
        w.out.write_all(blocks.finalize().as_bytes())?;
    }
    Ok(())
}

/// A section of the snapshot file read front to back in blocks of
/// [`BLOCK`], with positioned reads (so that readings of one file through
/// handles of their own go on side by side), every byte before
/// `hashed_end` hashed as its block is read when `hasher` is set: the
/// directory ([`read_directory`]), the frame lengths ([`load_locations`];
/// their checksum taken here, or by [`checksum`] on a thread of its own)
/// and the stream lists ([`check_lists`]).
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
    /// `n` bytes at once (at most a block), from the buffer.
    fn slice(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        if self.end - self.at < n {
            self.refill()?;
            if self.end - self.at < n {
                return Err(format!("the file ends inside {what}"));
            }
        }
        let at = self.at;
        self.at += n;
        self.read += n as u64;
        Ok(&self.buf[at..at + n])
    }
    /// `n` `u32`s one after another (the caller has checked that they
    /// fit in the file).
    fn u32s(&mut self, n: usize, what: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(n);
        if n > 0 {
            self.u32s_while(what, |v| {
                out.push(v);
                Ok(out.len() < n)
            })?;
        }
        Ok(out)
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

/// The header and the directory of a snapshot (format 5), which every
/// open reads and checks first, and where its other sections are.
struct Directory {
    head: u64,
    head_hash: Hash,
    seed: u64,
    segments: Vec<SnapSegment>,
    /// The sparse table of the group table ([`Locations::sparse_from`]).
    groups: Locations,
    /// Each stream, where its list starts and its first block's CRC-32.
    lists: Vec<(StreamId, AtInFile)>,
    /// The CRC-32 of every block of every list, in the lists' order.
    crcs: Vec<u32>,
    /// Where the frame lengths start, where their checksum is (after
    /// them), where the stream lists start (after it), and where the ids'
    /// section starts (after the directory's checksum).
    lens_at: u64,
    lens_sum_at: u64,
    lists_at: u64,
    ids_at: u64,
    /// Where the ids' section ends (after its checksum): the directory of
    /// its blocks follows when `id_blocks` (format 6) to the file's end.
    ids_end: u64,
    id_blocks: bool,
}

/// The header's bytes: magic, version, head, head hash, id seed, the
/// number of segments.
const HEADER: u64 = 8 + 4 + 8 + 32 + 8 + 4;

/// Reads and checks the header, the segments and the directory of the
/// snapshot `file` of `total` bytes against their checksum: every count
/// against the file's size, the sections' sizes against the head, the
/// group table ([`Locations::sparse_from`]) against the segments, each
/// stream listed once with at least one position, the lists together
/// listing `head` positions, a CRC-32 for each of their blocks. Reads
/// nothing of the frame lengths, the lists or the ids.
fn read_directory(file: &std::fs::File, total: u64, max_events: u64) -> Result<Directory, String> {
    if total < HEADER + 32 + 32 + 8 + 32 {
        return Err("too short".into());
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| format!("cannot read: {e}"))?;
    if &header[..8] != MAGIC {
        return Err("not an index snapshot".into());
    }
    let version = le_u32(&header[8..]);
    if version != VERSION && version != VERSION_WITHOUT_ID_BLOCKS {
        return Err(format!(
            "snapshot format {version}, this build reads {VERSION_WITHOUT_ID_BLOCKS} and {VERSION}"
        ));
    }
    let head = le_u64(&header[12..]);
    if head > max_events {
        return Err(format!("head {head} past the most events a log holds"));
    }
    let mut head_hash: Hash = [0u8; 32];
    head_hash.copy_from_slice(&header[20..52]);
    let seed = le_u64(&header[52..]);
    let nseg = u64::from(le_u32(&header[60..]));
    // The sections' places, from the head and the number of segments:
    // lengths (4 bytes a position) and their checksum, lists (4 bytes a
    // position), the directory up to its checksum, the ids (count, 12
    // bytes a position) and theirs.
    let places = || {
        let blocks = match version {
            VERSION => id_blocks_bytes(head)?,
            _ => 0,
        };
        let ids_end = total.checked_sub(blocks)?;
        let ids_at = ids_end.checked_sub(head.checked_mul(PAIR as u64)?.checked_add(8 + 32)?)?;
        let dir_sum_at = ids_at.checked_sub(32)?;
        let lens_at = HEADER.checked_add(nseg.checked_mul(16)?)?;
        let lens_sum_at = lens_at.checked_add(head.checked_mul(4)?)?;
        let lists_at = lens_sum_at.checked_add(32)?;
        let dir_at = lists_at.checked_add(head.checked_mul(4)?)?;
        (dir_at <= dir_sum_at).then_some((
            lens_at,
            lens_sum_at,
            lists_at,
            dir_at,
            dir_sum_at,
            ids_at,
            ids_end,
        ))
    };
    let Some((lens_at, lens_sum_at, lists_at, dir_at, dir_sum_at, ids_at, ids_end)) = places()
    else {
        return Err(format!(
            "too short for {head} positions and {nseg} segments"
        ));
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header);
    let mut seg_bytes = vec![0u8; (lens_at - HEADER) as usize];
    file.read_exact_at(&mut seg_bytes, HEADER)
        .map_err(|e| format!("cannot read: {e}"))?;
    hasher.update(&seg_bytes);
    let segments: Vec<SnapSegment> = seg_bytes
        .chunks_exact(16)
        .map(|b| SnapSegment {
            first: le_u64(b),
            len: le_u64(&b[8..]),
        })
        .collect();
    // The directory, hashed as it is read, from where the lists end to
    // its checksum.
    let own = file.try_clone().map_err(|e| format!("cannot open: {e}"))?;
    let mut r = Reading {
        hasher: Some(hasher),
        hashed_end: dir_sum_at,
        ..Reading::at(own, dir_at, total, dir_sum_at)
    };
    let nruns = u64::from(r.u32("runs")?);
    r.fits(nruns, 28, "runs")?;
    let mut runs = Vec::with_capacity(nruns as usize);
    for _ in 0..nruns {
        let first = r.u64("run")?;
        let seg = r.u32("run")?;
        let base = r.u64("run")?;
        let end = r.u64("run")?;
        runs.push(SnapRun {
            first,
            seg,
            base,
            end,
        });
    }
    let ngroups = r.u64("groups")?;
    r.fits(ngroups, 4, "groups")?;
    let bases = r.u32s(ngroups as usize, "groups")?;
    let nstreams = r.u64("streams")?;
    r.fits(nstreams, 20, "streams")?;
    let mut lists = Vec::with_capacity(nstreams as usize);
    let (mut listed, mut blocks) = (0u64, 0u64);
    for _ in 0..nstreams {
        let stream = StreamId(Uuid::from_bytes(r.bytes::<16>("stream")?));
        let count = r.u32("stream")?;
        if count == 0 {
            return Err("a stream is empty".into());
        }
        let at = lists_at + 4 * listed;
        listed += u64::from(count);
        if listed > head {
            return Err(format!("the streams list more than {head} positions"));
        }
        let crc_at = u32::try_from(blocks).map_err(|_| "too many blocks of lists".to_string())?;
        lists.push((stream, AtInFile { at, count, crc_at }));
        blocks += u64::from(count).div_ceil(LIST_BLOCK as u64);
    }
    if listed != head {
        return Err(format!("streams list {listed} positions of {head}"));
    }
    let ncrcs = r.u64("the lists' CRC-32s")?;
    if ncrcs != blocks {
        return Err(format!("{ncrcs} CRC-32s for {blocks} blocks of lists"));
    }
    r.fits(ncrcs, 4, "the lists' CRC-32s")?;
    let crcs = r.u32s(ncrcs as usize, "the lists' CRC-32s")?;
    if r.read != dir_sum_at {
        return Err("the directory does not end where its checksum begins".into());
    }
    let hasher = r.hasher.take().unwrap_or_default();
    sum_matches(file, dir_sum_at, hasher)?;
    let groups =
        Locations::sparse_from(&runs, &bases, head).map_err(|e| format!("the group table: {e}"))?;
    if groups.segments().as_deref() != Some(&segments[..]) {
        return Err("the group table does not span the segments".into());
    }
    Ok(Directory {
        head,
        head_hash,
        seed,
        segments,
        groups,
        lists,
        crcs,
        lens_at,
        lens_sum_at,
        lists_at,
        ids_at,
        ids_end,
        id_blocks: version == VERSION,
    })
}

/// Reads the snapshot in `dir`. `Ok(None)` when there is none; `Err` says
/// why the one there cannot be used (the caller then rebuilds the index).
/// Every open reads and checks the header and the directory
/// ([`read_directory`]) and every block of the stream lists against its
/// CRC-32 ([`check_lists`]). An open that holds every location
/// ([`OpenWith::locations`]) also reads the frame lengths against their
/// checksum and the group table, and checks the lists' positions: in
/// range, increasing, every position in exactly one stream. One that keeps
/// only the groups' starts reads no length: they are read, against their
/// checksum, when a read first needs every location ([`LaterLocs`]). The
/// caller checks the segments and the last frame. The ids are checked
/// when they are read ([`LaterIds::read`]: every position exactly one id).
///
/// `open.ids_now`: the ids are read at once, on a thread of their own
/// while this one reads the rest (an open for appends); else they are
/// left in the file until first needed ([`LaterIds`]).
pub(super) fn load(dir: &Path, max_events: u64, open: OpenWith) -> Result<Option<Loaded>, String> {
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
    let d = read_directory(&file, total, max_events)?;
    let handle = || file.try_clone().map_err(|e| format!("cannot open: {e}"));
    let read_ids = || load_ids(&handle()?, d.ids_at, d.head, None);
    let lists = |full: bool| check_lists(handle()?, &d, total, full);
    // An open for appends: the ids' checksum taken on this thread after
    // the rest, while a thread of its own reads them.
    let ids_sum = || {
        checksum(&handle()?, d.ids_at, d.ids_end - 32).map_err(|e| format!("the ids' section: {e}"))
    };
    let lens = LaterLocs {
        file: handle()?,
        at: d.lens_at,
        sum_at: d.lens_sum_at,
        total,
        head: d.head,
        segments: d.segments.clone(),
    };
    // Every location from the lengths, hashed here or not (when a thread
    // of its own takes their checksum), checked against the group table.
    let lengths = |hashed: bool| -> Result<Locations, String> {
        let locs = lens.read_with(hashed)?;
        if !locs.same_groups(&d.groups) {
            return Err("the group table is not the frame lengths'".into());
        }
        Ok(locs)
    };
    let (locs, ahead) = match (open.locations, open.ids_now) {
        // Only the groups' starts: the lists' blocks checked, the lengths
        // left in the file.
        (false, false) => (lists(false).map(|()| None), None),
        (false, true) => {
            let (checked, ids) = beside("snapshot ids", read_ids, || {
                lists(false)?;
                ids_sum()
            });
            (checked.map(|()| None), Some(ids))
        }
        (true, true) => {
            let (locs, ids) = beside("snapshot ids", read_ids, || {
                let locs = lengths(true)?;
                lists(true)?;
                ids_sum().map(|()| Some(locs))
            });
            (locs, Some(ids))
        }
        (true, false) if total < open.beside_bytes => (
            lengths(true).and_then(|l| lists(true).map(|()| Some(l))),
            None,
        ),
        (true, false) => {
            // The lengths read here, the lists by a thread of their own,
            // the lengths' checksum by another; the lengths' findings
            // named first, then the lists', then the checksum's.
            let check = || checksum(&handle()?, d.lens_at, d.lens_sum_at);
            let (locs, sum) = beside("snapshot checksum", check, || {
                let (locs, listed) = beside("snapshot streams", || lists(true), || lengths(false));
                let locs = locs?;
                listed.map(|()| Some(locs))
            });
            (
                locs.and_then(|l| {
                    sum.map_err(|e| format!("the frame lengths: {e}"))
                        .map(|()| l)
                }),
                None,
            )
        }
    };
    let locs = locs?;
    // An open that kept only the groups' starts reads the lengths later.
    let later_locs = locs.is_none().then_some(lens);
    let streams = Streams::from_file(
        handle()?,
        path.to_path_buf(),
        d.head,
        IdHash::with_seed(d.seed),
        d.lists,
        d.crcs,
    )?;
    let index = Index {
        head_hash: d.head_hash,
        max_events,
        locs: locs.unwrap_or(d.groups),
        streams,
        ..Index::default()
    };
    Ok(Some(Loaded {
        index,
        locs: later_locs,
        segments: d.segments,
        ids: LaterIds {
            file: handle()?,
            at: d.ids_at,
            head: d.head,
            seed: d.seed,
            sum_at: d.ids_end - 32,
            blocks_at: d.id_blocks.then_some(d.ids_end),
            total,
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
    /// Where the section's checksum is.
    sum_at: u64,
    /// Where the directory of the section's blocks is, when the snapshot
    /// has one (format 6; it ends at the file's end, `total`).
    blocks_at: Option<u64>,
    total: u64,
    /// The ids read already (an open for appends reads them beside the
    /// rest of the file), until taken.
    ahead: std::sync::Mutex<Option<Result<IdsRead, String>>>,
}

/// Pairs a copy of a section not read before reads at once
/// ([`LaterIds::copy_merged`]): 768 KiB.
const COPY_PAIRS: u64 = 1 << 16;

/// A section of the snapshot file read front to back for a copy, a chunk
/// at a time, each byte added to its checksum
/// ([`LaterIds::copy_merged`], [`LaterLocs::copy_lens`]).
struct Unread<'a> {
    file: &'a std::fs::File,
    /// The next byte to read.
    at: u64,
    /// Bytes not read yet.
    left: u64,
    /// Bytes read at once (whole pairs, for the ids).
    chunk: u64,
    /// What the section holds, for an error.
    what: &'static str,
    sum: blake3::Hasher,
    /// Why a read failed (then the copy did).
    failed: Option<String>,
}

impl Chunks for Unread<'_> {
    fn read_next(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
        if self.left == 0 {
            return Ok(false);
        }
        let n = self.left.min(self.chunk);
        buf.resize(n as usize, 0);
        if let Err(e) = self.file.read_exact_at(buf, self.at) {
            let e = format!("cannot read the index snapshot's {}: {e}", self.what);
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.sum.update(buf);
        self.at += n;
        self.left -= n;
        Ok(true)
    }
}

/// What made [`LaterIds::copy_merged`] copy nothing usable (the section
/// did not match its checksum or count, or could not be read), as
/// opposed to a write that failed: the close then reads the ids as any
/// first use does ([`not_copied`]).
#[derive(Debug)]
pub(super) struct NotCopied(Uncopied, String);

/// The section of the old snapshot a copy failed to read ([`NotCopied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Uncopied {
    Ids,
    Lengths,
}

impl std::fmt::Display for NotCopied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0 {
            Uncopied::Ids => "ids",
            Uncopied::Lengths => "frame lengths",
        };
        write!(f, "the {what} were not copied: {}", self.1)
    }
}

impl std::error::Error for NotCopied {}

/// Which copy from the old snapshot `e`, a failed write of a snapshot,
/// failed at ([`NotCopied`]), if it failed at one.
pub(super) fn not_copied(e: &StoreError) -> Option<Uncopied> {
    match e {
        StoreError::Io { source, .. } => source
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            .and_then(|e| e.downcast_ref::<NotCopied>())
            .map(|n| n.0),
        _ => None,
    }
}

/// The ids of a snapshot and the pairs of positions that share a
/// fingerprint ([`SortedIds::read`]).
type IdsRead = (SortedIds, Vec<(u32, u32)>);

impl LaterIds {
    /// The hashing the fingerprints were taken with.
    pub(super) fn hasher(&self) -> IdHash {
        IdHash::with_seed(self.seed)
    }

    /// Whether the open read the ids already (beside the rest of the
    /// file), for [`LaterIds::read`] to take.
    pub(super) fn read_ahead(&self) -> bool {
        self.ahead.lock().is_ok_and(|a| a.is_some())
    }

    /// Hands `out` the bytes of this section's pairs merged, in order,
    /// with those of `tail`, the ids of the positions from `first` on
    /// (fingerprinted as this section's): what the next snapshot's section
    /// holds. The section is copied as it is read, in runs between the
    /// tail's pairs ([`CopyMerge`]), without the checks a read makes
    /// ([`LaterIds::read`]: an index is not built from it), but against
    /// its count and its checksum, taken as it is read and compared at its
    /// end: a section that does not match them, or cannot be read, gives
    /// a [`NotCopied`] error, and the snapshot being written is not used;
    /// an error of `out` (the write) is passed on as it is. The checksum
    /// (BLAKE3, not keyed) finds bytes damaged since they were written,
    /// not a section made to match it: the checks a reading makes are
    /// made when the next snapshot's ids are first read, on these bytes
    /// (docs/storage.md, "The ids copied, not read").
    pub(super) fn copy_merged(
        &self,
        tail: &[Uuid],
        first: u64,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let not_copied = |e: String| std::io::Error::other(NotCopied(Uncopied::Ids, e));
        let hasher = self.hasher();
        let mut pairs = Vec::with_capacity(tail.len());
        for (id, p) in tail.iter().zip(first..) {
            let p = u32::try_from(p)
                .map_err(|_| not_copied(format!("position {p} past the index's")))?;
            pairs.push((std::hash::BuildHasher::hash_one(&hasher, id), p));
        }
        pairs.sort_unstable();
        let unread = self.unread().map_err(not_copied)?;
        let mut copy = CopyMerge::new(unread);
        let merged = copy.merge(&pairs, None, out);
        let unread = copy.into_inner();
        // What the section's reading refused is named as not copied; what
        // `out` refused (the write) is passed on as it is.
        if let Some(e) = unread.failed {
            return Err(not_copied(e));
        }
        merged?;
        sum_matches(&self.file, self.sum_at, unread.sum)
            .map_err(|e| not_copied(format!("the ids' section: {e}")))
    }

    /// The section, to be looked up in place with the directory of its
    /// blocks ([`SortedIds::in_place`]): the directory read whole and
    /// checked against its checksum, its blocks as many as the head's
    /// pairs fill, the section's count the head. `Ok(None)` for a snapshot
    /// without one (format 5). The section's own checksum is not taken
    /// (that reads every pair): each block a look-up reads is checked
    /// against its CRC-32 (docs/storage.md, "Ids looked up in place").
    pub(super) fn in_place(&self) -> Result<Option<SortedIds>, String> {
        let Some(at) = self.blocks_at else {
            return Ok(None);
        };
        let len = self.total.saturating_sub(at);
        if Some(len) != id_blocks_bytes(self.head) {
            return Err("the directory of the ids' blocks is not its size".into());
        }
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut bytes, at)
            .map_err(|e| format!("cannot read the directory of the ids' blocks: {e}"))?;
        let (listed, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(listed).as_bytes() != sum {
            return Err("the directory of the ids' blocks: checksum mismatch".into());
        }
        let blocks = le_u64(listed);
        if blocks != self.head.div_ceil(BLOCK_PAIRS as u64) {
            return Err(format!(
                "{blocks} blocks of ids for {} positions",
                self.head
            ));
        }
        let (fences, sums) = listed[8..]
            .chunks_exact(12)
            .map(|b| (le_u64(b), le_u32(&b[8..])))
            .unzip();
        ids_count(&self.file, self.at, self.head)?;
        let own = self
            .file
            .try_clone()
            .map_err(|e| format!("cannot open: {e}"))?;
        SortedIds::in_place(own, self.at + 8, self.head, fences, sums).map(Some)
    }

    /// The section's pairs, not read yet ([`LaterIds::copy_merged`]).
    fn unread(&self) -> Result<Unread<'_>, String> {
        let header = ids_count(&self.file, self.at, self.head)?;
        let mut sum = blake3::Hasher::new();
        sum.update(&header);
        Ok(Unread {
            file: &self.file,
            at: self.at + 8,
            left: self.head * PAIR as u64,
            chunk: COPY_PAIRS * PAIR as u64,
            what: "event ids",
            sum,
            failed: None,
        })
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
        sum_matches(&self.file, self.sum_at, sum).map_err(|e| format!("the ids' section: {e}"))?;
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
    let header = ids_count(file, at, head)?;
    if let Some(sum) = sum.as_deref_mut() {
        sum.update(&header);
    }
    let own = file.try_clone().map_err(|e| format!("cannot open: {e}"))?;
    SortedIds::read(own, at + 8, head, sum)
}

/// The count of ids that starts the ids' section at byte `at` of `file`,
/// as its bytes, checked to be `head` (one id a position).
fn ids_count(file: &std::fs::File, at: u64, head: u64) -> Result<[u8; 8], String> {
    let mut header = [0u8; 8];
    file.read_exact_at(&mut header, at)
        .map_err(|e| format!("cannot read: {e}"))?;
    let nids = u64::from_le_bytes(header);
    if nids != head {
        return Err(format!("{nids} ids for {head} positions"));
    }
    Ok(header)
}

/// The frame lengths, read by `r` from where they start, into `locs`
/// (empty, every location held): frame after frame from byte 0 of each
/// segment, each a length a frame can have, the segments' frames ending
/// where the segments do and numbering `head`.
fn load_locations(
    r: &mut Reading,
    segments: &[SnapSegment],
    head: u64,
    locs: &mut Locations,
) -> Result<(), String> {
    r.fits(head, 4, "locations")?;
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
                locs.push_frames(seg, &pending, pending_at)?;
                pending.clear();
            }
            offset += u64::from(len);
            Ok(offset < s.len)
        })?;
        locs.push_frames(seg, &pending, pending_at)?;
        pending.clear();
        if offset != s.len {
            return Err(format!("segment {seg} does not end where its frames do"));
        }
    }
    if p != head {
        return Err(format!("the segments hold {p} frames of {head}"));
    }
    Ok(())
}

/// Frames a snapshot's open gathers before adding them to the locations.
const ADD_FRAMES: usize = 4096;

/// Reads the stream lists of `d` (from where they start, in the
/// directory's order) and checks every block of [`LIST_BLOCK`] positions
/// against its CRC-32 in the directory. With `full` (an open that holds
/// every location, whose lists are the writer's to build on), also that
/// each stream's positions increase and that every position 1..=head is
/// listed once. The lists stay in the file ([`Streams`]); a read checks
/// the blocks it reads against the same CRC-32s, and the positions it
/// gets ([`Streams`]'s reads; the frames' streams and positions).
fn check_lists(file: std::fs::File, d: &Directory, total: u64, full: bool) -> Result<(), String> {
    let end = d.lists_at + 4 * d.head;
    let mut r = Reading::at(file, d.lists_at, total, end);
    let mut seen = full.then(|| Seen::new(d.head));
    for (i, (_, at)) in d.lists.iter().enumerate() {
        let (mut left, mut crc_at) = (at.count as usize, at.crc_at as usize);
        let mut prev = 0u32;
        while left > 0 {
            let n = left.min(LIST_BLOCK);
            let block = r.slice(n * 4, "stream positions")?;
            if d.crcs.get(crc_at) != Some(&crc32fast::hash(block)) {
                return Err(format!("stream {i}'s list does not match its CRC-32"));
            }
            if let Some(seen) = seen.as_mut() {
                for b in block.chunks_exact(4) {
                    let p = le_u32(b);
                    if p <= prev {
                        return Err("a stream's positions are not increasing".into());
                    }
                    seen.mark(p, "streams")?;
                    prev = p;
                }
            }
            left -= n;
            crc_at += 1;
        }
    }
    Ok(())
}

/// Hashes bytes `from..to` of `file` and checks them against the 32
/// bytes at `to` (a section and its checksum), a block of
/// [`CHECKSUM_BLOCK`] at a time with positioned reads (beside the open's
/// own reading of the file, through a handle of its own).
fn checksum(file: &std::fs::File, from: u64, to: u64) -> Result<(), String> {
    let mut hasher = blake3::Hasher::new();
    hash_range(file, from, to, &mut hasher)?;
    sum_matches(file, to, hasher)
}

/// Checks what `hasher` hashed against the 32 bytes at `at` of `file` (a
/// section's checksum).
fn sum_matches(file: &std::fs::File, at: u64, hasher: blake3::Hasher) -> Result<(), String> {
    let mut stored = [0u8; 32];
    file.read_exact_at(&mut stored, at)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::sorted_ids::{pair_at, pair_bytes};
    use std::hash::BuildHasher;

    /// A file holding, from byte 3, an ids section of `n` ids (positions
    /// 1..=n) fingerprinted under `seed`: the count, the sorted pairs and
    /// their checksum, then the directory of their blocks and its own.
    fn section(n: u32, seed: u64) -> (tempfile::NamedTempFile, LaterIds) {
        use std::io::Write;
        let hasher = IdHash::with_seed(seed);
        let mut pairs: Vec<(u64, u32)> = (1..=n)
            .map(|p| (hasher.hash_one(Uuid::from_u128(u128::from(p))), p))
            .collect();
        pairs.sort_unstable();
        let mut bytes = u64::from(n).to_le_bytes().to_vec();
        bytes.extend(pairs.iter().flat_map(|&(fp, p)| pair_bytes(fp, p)));
        let sum = blake3::hash(&bytes);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"abc").unwrap();
        f.write_all(&bytes).unwrap();
        f.write_all(sum.as_bytes()).unwrap();
        let mut blocks = BlockSums::default();
        blocks.add(&bytes[8..]);
        let (fences, sums) = blocks.finish().unwrap();
        let mut directory = (fences.len() as u64).to_le_bytes().to_vec();
        for (fence, sum) in fences.iter().zip(&sums) {
            directory.extend_from_slice(&fence.to_le_bytes());
            directory.extend_from_slice(&sum.to_le_bytes());
        }
        directory.extend_from_slice(blake3::hash(&directory).as_bytes());
        f.write_all(&directory).unwrap();
        f.flush().unwrap();
        let sum_at = 3 + bytes.len() as u64;
        let later = LaterIds {
            file: f.reopen().unwrap(),
            at: 3,
            head: u64::from(n),
            seed,
            sum_at,
            blocks_at: Some(sum_at + 32),
            total: sum_at + 32 + directory.len() as u64,
            ahead: std::sync::Mutex::new(None),
        };
        (f, later)
    }

    fn copied(later: &LaterIds, tail: &[Uuid], first: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        later.copy_merged(tail, first, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    fn is_not_copied(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|e| e.is::<NotCopied>())
    }

    /// A section of more pairs than one read takes ([`COPY_PAIRS`]),
    /// copied with the ids after it: the sorted pairs of them all under
    /// the section's seed. A byte changed in its second read, or a count
    /// that is not its head, is not copied ([`NotCopied`]); a write that
    /// fails is passed on as it is.
    #[test]
    fn a_copied_section_holds_the_sorted_pairs_of_all_under_its_seed() {
        let n = COPY_PAIRS as u32 + 4_465;
        let seed = 0x00c0_ffee;
        let (f, later) = section(n, seed);
        let tail: Vec<Uuid> = (n + 1..=n + 3_000)
            .map(|p| Uuid::from_u128(u128::from(p)))
            .collect();
        let hasher = IdHash::with_seed(seed);
        let mut all: Vec<(u64, u32)> = (1..=n + 3_000)
            .map(|p| (hasher.hash_one(Uuid::from_u128(u128::from(p))), p))
            .collect();
        all.sort_unstable();
        let out = copied(&later, &tail, u64::from(n) + 1).unwrap();
        let got: Vec<(u64, u32)> = out.chunks_exact(PAIR).map(pair_at).collect();
        assert_eq!(got, all);

        let mut failing = |_: &[u8]| Err(std::io::Error::other("disk full"));
        let e = later
            .copy_merged(&tail, u64::from(n) + 1, &mut failing)
            .unwrap_err();
        assert!(!is_not_copied(&e), "{e}");

        // A byte of a pair in the second read, changed.
        let at = 3 + 8 + (COPY_PAIRS + 10) * PAIR as u64 + 2;
        f.as_file().write_all_at(&[0x5a], at).unwrap();
        let e = copied(&later, &tail, u64::from(n) + 1).unwrap_err();
        assert!(is_not_copied(&e), "{e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");

        let (_f, mut later) = section(10, seed);
        later.head = 11;
        let e = copied(&later, &[], 12).unwrap_err();
        assert!(is_not_copied(&e), "{e}");
    }

    /// A section looked up in place with the directory of its blocks
    /// (format 6) finds every id at its position and no other, reads only
    /// the blocks it needs (a changed block refuses the look-ups that read
    /// it, not the others), and is not made from a directory that does not
    /// match its checksum, or of a section whose count is not the head's,
    /// or from a snapshot without one (format 5).
    #[test]
    fn a_section_is_looked_up_in_place_with_the_directory_of_its_blocks() {
        let n = 5_000;
        let seed = 0x00c0_ffee;
        let (f, later) = section(n, seed);
        let hasher = IdHash::with_seed(seed);
        let fp = |p: u32| hasher.hash_one(Uuid::from_u128(u128::from(p)));
        let sorted = later.in_place().unwrap().expect("format 6");
        let mut at = Vec::new();
        for p in (1..=n).step_by(7).chain([n]) {
            at.clear();
            sorted.positions(fp(p), &mut at).unwrap();
            assert_eq!(at, [p]);
        }
        at.clear();
        sorted.positions(fp(n + 1), &mut at).unwrap();
        assert!(at.is_empty());

        // A byte of the pair at index 300 (the second block), changed.
        let mut pairs: Vec<(u64, u32)> = (1..=n).map(|p| (fp(p), p)).collect();
        pairs.sort_unstable();
        f.as_file()
            .write_all_at(&[0x5a], 3 + 8 + 300 * PAIR as u64 + 9)
            .unwrap();
        let (in_second, in_first) = (pairs[301].1, pairs[3].1);
        let e = sorted.positions(fp(in_second), &mut at).unwrap_err();
        assert!(e.contains("changed"), "{e}");
        at.clear();
        sorted.positions(fp(in_first), &mut at).unwrap();
        assert_eq!(at, [in_first]);

        // The directory: a fence changed.
        let (f, later) = section(n, seed);
        let fence_at = later.blocks_at.unwrap() + 8 + 12 + 1;
        f.as_file().write_all_at(&[0x77], fence_at).unwrap();
        let e = later.in_place().expect_err("refused");
        assert!(e.contains("checksum mismatch"), "{e}");

        let (_f, mut later) = section(n, seed);
        later.head = u64::from(n) - 1;
        assert!(later.in_place().is_err());
        let (_f, mut later) = section(n, seed);
        later.blocks_at = None;
        assert!(later.in_place().unwrap().is_none());
    }
}
