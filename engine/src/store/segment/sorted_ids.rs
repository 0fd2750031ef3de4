//! The event ids of an index snapshot, left in the file and looked up
//! there: [`SortedIds`].
//!
//! The snapshot lists every id as its 64-bit fingerprint and position,
//! sorted by fingerprint (then position). A log opened from it keeps in
//! memory only what finds a fingerprint in the file: a Bloom filter over
//! the fingerprints (16 bits an id), the first fingerprint of each block
//! of [`BLOCK_PAIRS`] pairs and each block's CRC-32 (12 bytes a block):
//! about 2 bytes an id, against 14–19 for the id table ([`super::ids`]),
//! which now holds only the ids appended after the snapshot.
//!
//! A look-up of an id that is not stored (every id of an import) costs the
//! filter's probe, one cache line; one the filter passes (a stored id, or
//! about one new id in a thousand) reads the block or two its fingerprint
//! can be in with one `pread`, checks the block's CRC-32 against the one
//! taken when the section was first read (so bytes changed after that are
//! refused, never trusted), and scans it.
//!
//! Building one reads the whole section once and checks it as an open
//! checks the rest of the snapshot: sorted, every position 1..=n exactly
//! once, at most [`MAX_SHARING`] positions under one fingerprint (each
//! pair of those is handed back for the caller to read both frames, as
//! the id table's shared fingerprints are). A snapshot's section can also
//! be looked up in place, unread, with the fences and CRC-32s the file
//! lists for its blocks ([`SortedIds::in_place`], [`BlockSums`]): no
//! filter, and each block checked as it is read.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes of one `(fingerprint, position)` pair.
pub(super) const PAIR: usize = 12;
/// Pairs in a block: what a look-up reads and a CRC-32 covers.
pub(super) const BLOCK_PAIRS: usize = 256;
pub(super) const BLOCK_BYTES: usize = BLOCK_PAIRS * PAIR;
/// Blocks read at once when the whole section is read.
const BLOCKS_AT_ONCE: usize = 256;
/// How many pairs ahead [`SortedIds::read`] asks for the memory that
/// marks a position seen ([`Sorting::prefetch`]).
const SEEN_AHEAD: usize = 16;
/// Most positions whose ids may share one fingerprint (ids share a 64-bit
/// fingerprint with a probability of 2^-64 a pair; more than this is a
/// damaged or crafted section, and the ids are indexed from the segments).
pub(super) const MAX_SHARING: usize = 8;

/// Bits of the filter an id: about 0.1% of absent ids pass (10 bits: about
/// 1%). Each that passes costs a `pread` of a block and its CRC-32, ~3 µs,
/// in every run it passes: at 10M events (five runs) the writer's and the
/// planner's look-ups of an import's ids spent ~0.12 µs an event more at
/// 10 bits (docs/performance.md, "Session af"), for 6.5 MB less memory
/// there.
const FILTER_BITS: usize = 16;
/// The salts of a split-block Bloom filter (Apache Parquet's): one bit is
/// set in each 32-bit word of a 256-bit block.
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// A split-block Bloom filter of fingerprints: each lands in one 256-bit
/// block (chosen by its high 32 bits) and sets one bit in each of the
/// block's eight words (chosen by its low 32 bits and a salt): a look-up
/// reads one cache line. At 16 bits an id (about 16 ids a block) a block's
/// word has each bit set with a probability of about 0.4, so an absent id
/// passes with one of about 0.4^8, 0.07%; at 10 bits, about 1%.
struct Filter {
    words: Vec<[u32; 8]>,
}

impl Filter {
    fn with_keys(n: u64) -> Filter {
        let blocks = (n as usize)
            .saturating_mul(FILTER_BITS)
            .div_ceil(256)
            .max(1);
        Filter {
            words: vec![[0; 8]; blocks],
        }
    }

    fn block(&self, fp: u64) -> usize {
        (((fp >> 32) * self.words.len() as u64) >> 32) as usize
    }

    fn bits(fp: u64) -> [u32; 8] {
        let key = fp as u32;
        SALT.map(|s| 1u32 << (key.wrapping_mul(s) >> 27))
    }

    fn insert(&mut self, fp: u64) {
        let i = self.block(fp);
        let bits = Filter::bits(fp);
        for (w, b) in self.words[i].iter_mut().zip(bits) {
            *w |= b;
        }
    }

    /// The address of the block `fp` lands in (a prefetch hint).
    fn line(&self, fp: u64) -> usize {
        &self.words[self.block(fp)] as *const [u32; 8] as usize
    }

    fn may_hold(&self, fp: u64) -> bool {
        let block = &self.words[self.block(fp)];
        block.iter().zip(Filter::bits(fp)).all(|(w, b)| w & b != 0)
    }

    fn allocated_bytes(&self) -> usize {
        self.words.capacity() * 32
    }
}

/// The fence (first fingerprint) and CRC-32 of each block of
/// [`BLOCK_PAIRS`] pairs of a section, taken from its bytes as they are
/// written, in pieces of any size: the snapshot's directory of its ids
/// (format 6), what [`SortedIds::in_place`] looks them up with.
#[derive(Default)]
pub(super) struct BlockSums {
    /// Bytes of the current block so far.
    in_block: usize,
    crc: crc32fast::Hasher,
    /// The current block's first bytes (its fence once 8 are in).
    first: [u8; 8],
    pub fences: Vec<u64>,
    pub sums: Vec<u32>,
}

impl BlockSums {
    /// The next bytes of the pairs.
    pub(super) fn add(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.in_block < 8 {
                let n = (8 - self.in_block).min(bytes.len());
                self.first[self.in_block..self.in_block + n].copy_from_slice(&bytes[..n]);
            }
            let take = (BLOCK_BYTES - self.in_block).min(bytes.len());
            self.crc.update(&bytes[..take]);
            self.in_block += take;
            bytes = &bytes[take..];
            if self.in_block == BLOCK_BYTES {
                self.end_block();
            }
        }
    }

    fn end_block(&mut self) {
        let crc = std::mem::take(&mut self.crc);
        self.fences.push(u64::from_le_bytes(self.first));
        self.sums.push(crc.finalize());
        self.in_block = 0;
    }

    /// Ends the last block (short) if any; `Err` if the bytes were not
    /// whole pairs.
    pub(super) fn finish(mut self) -> Result<(Vec<u64>, Vec<u32>), String> {
        if !self.in_block.is_multiple_of(PAIR) {
            return Err("the ids' bytes end inside a pair".into());
        }
        if self.in_block > 0 {
            self.end_block();
        }
        Ok((self.fences, self.sums))
    }
}

/// Why [`read_checked_blocks`] gave nothing.
pub(super) enum BlockRead {
    Io(std::io::Error),
    /// The `n`th block read does not match its CRC-32 (or has none).
    Changed(usize),
}

/// Reads `bytes.len()` bytes of `file` from `offset` with one `pread`,
/// blocks of `block_bytes` (the last may be shorter), and checks each
/// against its CRC-32 in `crcs`, taken when the bytes were first read or
/// written: a section of an index file read in place (the snapshot's
/// ids, a spilled run, the stream lists).
pub(super) fn read_checked_blocks(
    file: &File,
    offset: u64,
    bytes: &mut [u8],
    block_bytes: usize,
    crcs: &[u32],
) -> Result<(), BlockRead> {
    file.read_exact_at(bytes, offset).map_err(BlockRead::Io)?;
    for (i, block) in bytes.chunks(block_bytes).enumerate() {
        if crcs.get(i) != Some(&crc32fast::hash(block)) {
            return Err(BlockRead::Changed(i));
        }
    }
    Ok(())
}

pub(super) fn pair_at(bytes: &[u8]) -> (u64, u32) {
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[..8]);
    let mut p = [0u8; 4];
    p.copy_from_slice(&bytes[8..PAIR]);
    (u64::from_le_bytes(fp), u32::from_le_bytes(p))
}

/// The bytes of a pair as the snapshot stores them.
pub(super) fn pair_bytes(fp: u64, p: u32) -> [u8; PAIR] {
    let mut b = [0u8; PAIR];
    b[..8].copy_from_slice(&fp.to_le_bytes());
    b[8..].copy_from_slice(&p.to_le_bytes());
    b
}

/// A snapshot's ids section, or a run of ids spilled from the id table,
/// checked, and looked up in place.
pub(super) struct SortedIds {
    file: File,
    /// Where the first pair is.
    at: u64,
    /// The position before the first it holds.
    first: u64,
    /// Pairs: one for each position first+1..=first+n.
    n: u64,
    /// The fingerprint of each block's first pair.
    fences: Vec<u64>,
    /// Each block's CRC-32, taken when the section was checked, or read
    /// with the fences from the snapshot's directory of its ids.
    sums: Vec<u32>,
    /// `None` for a section looked up in place from that directory
    /// ([`SortedIds::in_place`]): each block's order and first
    /// fingerprint are then checked as it is read.
    filter: Option<Filter>,
}

impl std::fmt::Debug for SortedIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedIds").field("n", &self.n).finish()
    }
}

/// Checks a section's pairs as they are read or written, and gathers what
/// [`SortedIds`] keeps: give it every pair in order, then
/// [`Sorting::finish`].
pub(super) struct Sorting {
    /// Whether positions under one fingerprint are bounded by
    /// [`MAX_SHARING`] and handed back as pairs (a file read from disk),
    /// or were checked against the frames already (a run written).
    bound_sharing: bool,
    first: u64,
    n: u64,
    count: u64,
    prev: Option<(u64, u32)>,
    /// Positions under the fingerprint of the last pair.
    run: Vec<u32>,
    shared: Vec<(u32, u32)>,
    seen: Vec<u64>,
    fences: Vec<u64>,
    /// Each block's CRC-32, taken over its bytes at once
    /// ([`Sorting::sum_blocks`]; 12 bytes a pair is the CRC's slowest
    /// path).
    sums: Vec<u32>,
    in_block: usize,
    filter: Filter,
}

impl Sorting {
    /// For a section of `n` pairs, of positions 1..=n.
    pub(super) fn new(n: u64) -> Sorting {
        Sorting::after(0, n)
    }

    /// For `n` pairs of positions first+1..=first+n.
    pub(super) fn after(first: u64, n: u64) -> Sorting {
        let blocks = (n as usize).div_ceil(BLOCK_PAIRS);
        Sorting {
            bound_sharing: true,
            first,
            n,
            count: 0,
            prev: None,
            run: Vec::new(),
            shared: Vec::new(),
            seen: vec![0; (n as usize).div_ceil(64)],
            fences: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
            in_block: 0,
            filter: Filter::with_keys(n),
        }
    }

    /// Adds the CRC-32 of each block of `bytes`, the pairs just given to
    /// [`Sorting::add`] (from a block's start: whole blocks, the last of
    /// the section possibly short). Whoever gives the pairs gives their
    /// bytes here too, before [`Sorting::finish`].
    pub(super) fn sum_blocks(&mut self, bytes: &[u8]) {
        self.sums
            .extend(bytes.chunks(BLOCK_BYTES).map(crc32fast::hash));
    }

    /// Asks for the memory where position `p` is marked seen, a few pairs
    /// before [`Sorting::add`] marks it: the positions of a sorted section
    /// come in no order, and the marks of millions do not fit a core's
    /// cache.
    #[inline]
    fn prefetch(&self, p: u32) {
        let i = u64::from(p).wrapping_sub(self.first + 1) / 64;
        if let Some(word) = usize::try_from(i).ok().and_then(|i| self.seen.get(i)) {
            super::ids::prefetch_line(word as *const u64 as usize);
        }
    }

    /// The next pair; `Err` says what is wrong with the section.
    pub(super) fn add(&mut self, fp: u64, p: u32) -> Result<(), String> {
        let Some(i) = u64::from(p)
            .checked_sub(self.first + 1)
            .filter(|&i| i < self.n)
        else {
            return Err(format!("ids: position {p} out of range"));
        };
        let i = i as usize;
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.seen[word] & bit != 0 {
            return Err(format!("ids: position {p} is listed twice"));
        }
        self.seen[word] |= bit;
        match self.prev {
            Some(prev) if (fp, p) <= prev => {
                return Err(format!("ids: position {p} is out of order"));
            }
            Some((prev_fp, _)) if prev_fp == fp && self.bound_sharing => {
                if self.run.len() >= MAX_SHARING {
                    return Err(format!(
                        "ids: more than {MAX_SHARING} positions share a fingerprint"
                    ));
                }
                self.shared.extend(self.run.iter().map(|&q| (q, p)));
                self.run.push(p);
            }
            _ => {
                self.run.clear();
                self.run.push(p);
            }
        }
        self.prev = Some((fp, p));
        if self.in_block == 0 {
            self.fences.push(fp);
        }
        self.in_block += 1;
        if self.in_block == BLOCK_PAIRS {
            self.in_block = 0;
        }
        self.filter.insert(fp);
        self.count += 1;
        Ok(())
    }

    /// The section, whose first pair is at byte `at` of `file`, and the
    /// pairs of positions that share a fingerprint (lower, higher).
    pub(super) fn finish(
        self,
        file: File,
        at: u64,
    ) -> Result<(SortedIds, Vec<(u32, u32)>), String> {
        if self.count != self.n {
            return Err(format!("ids: {} ids for {} positions", self.count, self.n));
        }
        let sums = self.sums;
        if sums.len() != self.fences.len() {
            return Err(format!(
                "ids: {} block checksums for {} blocks",
                sums.len(),
                self.fences.len()
            ));
        }
        Ok((
            SortedIds {
                file,
                at,
                first: self.first,
                n: self.n,
                fences: self.fences,
                sums,
                filter: Some(self.filter),
            },
            self.shared,
        ))
    }
}

impl SortedIds {
    /// Reads and checks the `n` pairs from byte `at` of `file`, adding
    /// every byte to `sum` if given (all of them, even after a pair that
    /// fails a check: the caller compares the checksum first).
    pub(super) fn read(
        file: File,
        at: u64,
        n: u64,
        mut sum: Option<&mut blake3::Hasher>,
    ) -> Result<(SortedIds, Vec<(u32, u32)>), String> {
        let mut sorting = Sorting::new(n);
        let mut buf =
            vec![0u8; BLOCK_BYTES * BLOCKS_AT_ONCE.min((n as usize).div_ceil(BLOCK_PAIRS))];
        let (mut offset, mut left) = (at, n);
        let mut refused = None;
        while left > 0 {
            let take = left.min((BLOCK_PAIRS * BLOCKS_AT_ONCE) as u64);
            let bytes = &mut buf[..take as usize * PAIR];
            file.read_exact_at(bytes, offset)
                .map_err(|e| format!("cannot read: {e}"))?;
            if let Some(sum) = sum.as_deref_mut() {
                sum.update(bytes);
            }
            if refused.is_none() {
                for (j, pair) in bytes.chunks_exact(PAIR).enumerate() {
                    let ahead = (j + SEEN_AHEAD) * PAIR;
                    if let Some(next) = bytes.get(ahead..ahead + PAIR) {
                        sorting.prefetch(pair_at(next).1);
                    }
                    let (fp, p) = pair_at(pair);
                    if let Err(e) = sorting.add(fp, p) {
                        refused = Some(e);
                        break;
                    }
                }
                // Whole blocks (this read starts at one), the last
                // possibly short.
                sorting.sum_blocks(bytes);
            }
            offset += bytes.len() as u64;
            left -= take;
        }
        match refused {
            Some(e) => Err(e),
            None => sorting.finish(file, at),
        }
    }

    /// A snapshot's section of `n` pairs (positions 1..=n) from byte `at`
    /// of `file`, looked up in place with the fingerprint of each block's
    /// first pair and each block's CRC-32 as the snapshot's directory of
    /// its ids lists them (format 6), read by its caller against their
    /// checksum: nothing of the pairs is read to make it, and it holds no
    /// filter (every look-up reads the block or two its fingerprint can
    /// be in). Of the checks [`SortedIds::read`] makes, a look-up makes
    /// those its blocks allow: each block read matches its CRC-32, its
    /// pairs are in order, and its first fingerprint is its fence; that
    /// every position is listed once is left to a reading of the whole
    /// section (docs/storage.md, "Ids looked up in place").
    pub(super) fn in_place(
        file: File,
        at: u64,
        n: u64,
        fences: Vec<u64>,
        sums: Vec<u32>,
    ) -> Result<SortedIds, String> {
        let blocks = n.div_ceil(BLOCK_PAIRS as u64);
        if fences.len() as u64 != blocks || sums.len() as u64 != blocks {
            return Err(format!(
                "{} fences and {} CRC-32s for {blocks} blocks of ids",
                fences.len(),
                sums.len()
            ));
        }
        if fences.windows(2).any(|w| w[0] > w[1]) {
            return Err("the blocks of ids are out of order".into());
        }
        Ok(SortedIds {
            file,
            at,
            first: 0,
            n,
            fences,
            sums,
            filter: None,
        })
    }

    /// Ids held: one for each position first+1..=first+len.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.n
    }

    /// The position before the first it holds.
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// The last position it holds (its first when it holds none).
    pub(super) fn last(&self) -> u64 {
        self.first + self.n
    }

    /// A run of the pairs `pairs` (sorted by fingerprint, then position;
    /// positions first+1..=first+n) written to a file of its own in `dir`
    /// that no name points at (`O_TMPFILE`, or a random name unlinked at
    /// once: `tempfile::tempfile_in`), so it lives as long as the run and
    /// a crash leaves nothing behind. Not synced (the ids are in the
    /// segments; the run lives only in this process). The block checksums
    /// are taken from the pairs as written. Any number of positions may
    /// share a fingerprint here ([`MAX_SHARING`] bounds what a file read
    /// from disk may list): the writer checked every id against the
    /// frames before it was indexed, and a scan that spills checks its
    /// runs' shared fingerprints in one merged pass at its end
    /// (`Ids::sharing_groups`).
    pub(super) fn write_run(
        dir: &std::path::Path,
        first: u64,
        n: u64,
        pairs: impl FnOnce(&mut dyn FnMut(u64, u32) -> std::io::Result<()>) -> std::io::Result<()>,
    ) -> Result<SortedIds, String> {
        use std::io::Write;
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| format!("cannot create a file for a run of ids: {e}"))?;
        let mut sorting = Sorting::after(first, n);
        sorting.bound_sharing = false;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        // A block's bytes gathered, for its CRC-32, then written.
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        pairs(&mut |fp, p| {
            sorting.add(fp, p).map_err(std::io::Error::other)?;
            block.extend_from_slice(&pair_bytes(fp, p));
            if block.len() == BLOCK_BYTES {
                sorting.sum_blocks(&block);
                out.write_all(&block)?;
                block.clear();
            }
            Ok(())
        })
        .and_then(|()| {
            sorting.sum_blocks(&block);
            out.write_all(&block)?;
            out.flush()
        })
        .map_err(|e| format!("cannot write a run of ids: {e}"))?;
        drop(out);
        Ok(sorting.finish(file, 0)?.0)
    }

    /// Bytes the pairs of blocks `blocks` take.
    fn blocks_len(&self, blocks: &std::ops::Range<usize>) -> usize {
        let first = (blocks.start * BLOCK_PAIRS) as u64;
        let last = ((blocks.end * BLOCK_PAIRS) as u64).min(self.n);
        last.saturating_sub(first) as usize * PAIR
    }

    /// The pairs of blocks `blocks`, read into the front of `buf` (at
    /// least [`SortedIds::blocks_len`] long) with one `pread`, each block
    /// checked against the CRC-32 taken when the section was.
    fn read_blocks<'b>(
        &self,
        blocks: std::ops::Range<usize>,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], String> {
        let bytes = &mut buf[..self.blocks_len(&blocks)];
        let offset = self.at + (blocks.start * BLOCK_BYTES) as u64;
        let crcs = self.sums.get(blocks).unwrap_or_default();
        match read_checked_blocks(&self.file, offset, bytes, BLOCK_BYTES, crcs) {
            Ok(()) => Ok(bytes),
            Err(BlockRead::Io(e)) => {
                Err(format!("cannot read the index snapshot's event ids: {e}"))
            }
            Err(BlockRead::Changed(_)) => {
                Err("the index snapshot's event ids changed after they were checked".into())
            }
        }
    }

    /// The address of the filter's block for `fp`, for a prefetch (of
    /// itself, without a filter: a section looked up in place, which the
    /// id table's look-ups never reach).
    pub(super) fn filter_line(&self, fp: u64) -> usize {
        match &self.filter {
            Some(filter) => filter.line(fp),
            None => self as *const SortedIds as usize,
        }
    }

    /// Whether the filter lets `fp` through (a stored fingerprint always;
    /// without a filter, every one).
    pub(super) fn may_hold(&self, fp: u64) -> bool {
        self.n > 0 && self.filter.as_ref().is_none_or(|f| f.may_hold(fp))
    }

    /// The blocks that may list fingerprint `fp`: those whose first
    /// fingerprint is at most `fp`, from the last that starts below it
    /// (its end may hold `fp` too).
    fn blocks_for(&self, fp: u64) -> std::ops::Range<usize> {
        let hi = self.fences.partition_point(|&f| f <= fp);
        let lo = self.fences.partition_point(|&f| f < fp).saturating_sub(1);
        lo..hi
    }

    /// Adds to `out` every position listed under fingerprint `fp`.
    pub(super) fn positions(&self, fp: u64, out: &mut Vec<u32>) -> Result<(), String> {
        if !self.may_hold(fp) {
            return Ok(());
        }
        let mut buf = [0u8; BLOCK_BYTES];
        for b in self.blocks_for(fp) {
            let block = self.read_looked_up(b..b + 1, &mut buf)?;
            for pair in block.chunks_exact(PAIR) {
                let (f, p) = pair_at(pair);
                if f == fp {
                    out.push(p);
                } else if f > fp {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The blocks [`SortedIds::positions`] reads for the fingerprints
    /// `fps` (in ascending order), each once, in order: what
    /// [`SortedIds::positions_of`] reads for them.
    pub(super) fn blocks_of(&self, fps: impl IntoIterator<Item = u64>) -> Vec<usize> {
        let mut blocks: Vec<usize> = Vec::new();
        for fp in fps {
            if !self.may_hold(fp) {
                continue;
            }
            for b in self.blocks_for(fp) {
                if blocks.last().is_none_or(|&last| last < b) {
                    blocks.push(b);
                }
            }
        }
        blocks
    }

    /// [`SortedIds::positions`] of many fingerprints in one pass: adds to
    /// `out` (tag, position) for every position listed under the
    /// fingerprint of each of `wanted` (fingerprint, tag), which is in
    /// ascending order of fingerprint, reading the blocks `blocks` (their
    /// [`SortedIds::blocks_of`]) once each, neighbours in one `pread`,
    /// with the checks `positions` makes of each block. A batch of ids
    /// that falls in a few thousand of a large section's blocks costs a
    /// read of each of those, not of one or two for every id.
    pub(super) fn positions_of<T: Copy>(
        &self,
        wanted: &[(u64, T)],
        blocks: &[usize],
        out: &mut Vec<(T, u32)>,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; BLOCK_BYTES * blocks.len().min(BLOCKS_AT_ONCE)];
        let mut i = 0;
        while i < blocks.len() {
            // A run of neighbouring blocks, read at once.
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 && j - i < BLOCKS_AT_ONCE {
                j += 1;
            }
            let bytes = self.read_looked_up(blocks[i]..blocks[j - 1] + 1, &mut buf)?;
            for block in bytes.chunks(BLOCK_BYTES) {
                // The block's pairs and the fingerprints wanted, both in
                // order, merged.
                let first = pair_at(block).0;
                let mut w = wanted.partition_point(|&(fp, _)| fp < first);
                for pair in block.chunks_exact(PAIR) {
                    let (fp, p) = pair_at(pair);
                    while wanted.get(w).is_some_and(|&(f, _)| f < fp) {
                        w += 1;
                    }
                    if w == wanted.len() {
                        break;
                    }
                    for &(_, tag) in wanted[w..].iter().take_while(|&&(f, _)| f == fp) {
                        out.push((tag, p));
                    }
                }
            }
            i = j;
        }
        Ok(())
    }

    /// [`SortedIds::read_blocks`] for a look-up: each block of a section
    /// looked up in place (no filter) also checked
    /// ([`SortedIds::check_block`]).
    fn read_looked_up<'b>(
        &self,
        blocks: std::ops::Range<usize>,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], String> {
        let bytes = self.read_blocks(blocks.clone(), buf)?;
        if self.filter.is_none() {
            for (b, block) in blocks.zip(bytes.chunks(BLOCK_BYTES)) {
                self.check_block(b, block)?;
            }
        }
        Ok(bytes)
    }

    /// Block `b` of a section looked up in place ([`SortedIds::in_place`]):
    /// its pairs in order, the first under the block's fence, its
    /// positions in range.
    fn check_block(&self, b: usize, block: &[u8]) -> Result<(), String> {
        let wrong = |what: &str| Err(format!("the index snapshot's event ids: block {b} {what}"));
        let mut prev: Option<(u64, u32)> = None;
        for pair in block.chunks_exact(PAIR) {
            let (fp, p) = pair_at(pair);
            if p == 0 || u64::from(p) > self.n {
                return wrong("lists a position out of range");
            }
            match prev {
                None if Some(&fp) != self.fences.get(b) => {
                    return wrong("does not start at its fence")
                }
                Some(prev) if (fp, p) <= prev => return wrong("is out of order"),
                _ => {}
            }
            prev = Some((fp, p));
        }
        Ok(())
    }

    /// Every pair in order, read a few hundred blocks at a time, each
    /// block checked against its CRC-32.
    pub(super) fn pairs(&self) -> Pairs<'_> {
        Pairs {
            ids: self,
            buf: Vec::new(),
            next_block: 0,
            at: 0,
            failed: false,
        }
    }

    /// Bytes allocated for the filter, the fences and the sums.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.filter.as_ref().map_or(0, Filter::allocated_bytes)
            + self.fences.capacity() * 8
            + self.sums.capacity() * 4
    }
}

/// [`SortedIds::pairs`].
pub(super) struct Pairs<'a> {
    ids: &'a SortedIds,
    buf: Vec<u8>,
    /// The block after those in `buf`.
    next_block: usize,
    /// The next pair's byte in `buf`.
    at: usize,
    failed: bool,
}

impl Pairs<'_> {
    fn refill(&mut self) -> Result<(), String> {
        let mut buf = std::mem::take(&mut self.buf);
        let read = self.read_next(&mut buf);
        self.buf = buf;
        self.at = 0;
        read.map(|_| ())
    }
}

impl Iterator for Pairs<'_> {
    type Item = Result<(u64, u32), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.at == self.buf.len() {
            if self.next_block >= self.ids.sums.len() {
                return None;
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let pair = pair_at(&self.buf[self.at..self.at + PAIR]);
        self.at += PAIR;
        Some(Ok(pair))
    }
}

/// A section of sorted pairs read a chunk at a time: what [`CopyMerge`]
/// copies from.
pub(super) trait Chunks {
    /// Reads the next pairs, whole and in order, into `buf` (replacing
    /// what it held); `false` at the end.
    fn read_next(&mut self, buf: &mut Vec<u8>) -> Result<bool, String>;
}

impl Chunks for Pairs<'_> {
    /// A few hundred blocks, each checked against its CRC-32.
    fn read_next(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
        let ids = self.ids;
        if self.next_block >= ids.sums.len() {
            return Ok(false);
        }
        let blocks = self.next_block..ids.sums.len().min(self.next_block + BLOCKS_AT_ONCE);
        buf.resize(ids.blocks_len(&blocks), 0);
        ids.read_blocks(blocks.clone(), buf)?;
        self.next_block = blocks.end;
        Ok(true)
    }
}

/// The pairs of a sorted section merged with pairs from elsewhere (the id
/// table's, put in order), written as bytes: each run of the section's
/// pairs between two of the others is handed on as it was read, found by
/// a binary search, so that a few pairs merged into millions cost a copy
/// of the millions, not a comparison and a call each (the close that
/// writes an index snapshot: docs/storage.md, "The ids copied, not read").
pub(super) struct CopyMerge<C> {
    old: C,
    buf: Vec<u8>,
    /// The next pair's byte in `buf`.
    at: usize,
    ended: bool,
}

impl<C: Chunks> CopyMerge<C> {
    pub(super) fn new(old: C) -> CopyMerge<C> {
        CopyMerge {
            old,
            buf: Vec::new(),
            at: 0,
            ended: false,
        }
    }

    /// Hands `out` the section's next pairs while `before` holds for them
    /// (it holds for a prefix of what is left, as "less than" a pair does
    /// over sorted pairs), up to the first for which it does not.
    fn copy_while(
        &mut self,
        before: impl Fn((u64, u32)) -> bool,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        loop {
            if self.at == self.buf.len() {
                if self.ended
                    || !self
                        .old
                        .read_next(&mut self.buf)
                        .map_err(std::io::Error::other)?
                {
                    self.ended = true;
                    self.buf.clear();
                    self.at = 0;
                    return Ok(());
                }
                self.at = 0;
            }
            let rest = &self.buf[self.at..];
            let n = rest.len() / PAIR;
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if before(pair_at(&rest[mid * PAIR..])) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if lo > 0 {
                out(&rest[..lo * PAIR])?;
                self.at += lo * PAIR;
            }
            if lo < n {
                return Ok(());
            }
        }
    }

    /// Hands `out`, in order, `new` (sorted) merged with the section's
    /// pairs below `upper` (a fingerprint's bound; `None`: all that are
    /// left). A pair of the section comes before one of `new` with the
    /// same fingerprint and a higher position, as it does in order.
    pub(super) fn merge(
        &mut self,
        new: &[(u64, u32)],
        upper: Option<u128>,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        for &pair in new {
            self.copy_while(|q| q < pair, out)?;
            out(&pair_bytes(pair.0, pair.1))?;
        }
        match upper {
            Some(upper) => self.copy_while(|q| u128::from(q.0) < upper, out),
            None => self.copy_while(|_| true, out),
        }
    }

    /// The source, once every pair was handed on.
    pub(super) fn into_inner(self) -> C {
        self.old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Pairs handed out in chunks of the given numbers of pairs (then one
    /// at a time).
    struct InChunks {
        bytes: Vec<u8>,
        sizes: Vec<usize>,
        at: usize,
        next: usize,
    }

    impl Chunks for InChunks {
        fn read_next(&mut self, buf: &mut Vec<u8>) -> Result<bool, String> {
            if self.at == self.bytes.len() {
                return Ok(false);
            }
            let n = self.sizes.get(self.next).copied().unwrap_or(1) * PAIR;
            self.next += 1;
            let end = (self.at + n).min(self.bytes.len());
            buf.clear();
            buf.extend_from_slice(&self.bytes[self.at..end]);
            self.at = end;
            Ok(true)
        }
    }

    proptest::proptest! {
        /// A sorted section in chunks of any sizes, merged with sorted
        /// pairs of later positions (some of them sharing fingerprints
        /// with the section's) in passes bounded anywhere: the bytes
        /// handed on are those of the sorted pairs of both, each once.
        #[test]
        fn a_copy_merge_hands_on_the_sorted_pairs_of_both(
            old_fps in proptest::collection::vec(
                proptest::prop_oneof![0u64..6, proptest::prelude::any::<u64>()], 0..300),
            new_fps in proptest::collection::vec(
                proptest::prop_oneof![0u64..6, proptest::prelude::any::<u64>()], 0..100),
            sizes in proptest::collection::vec(1usize..40, 0..30),
            mut cuts in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..4),
            to_the_end in proptest::prelude::any::<bool>(),
        ) {
            let numbered = |fps: &[u64], first: u32| {
                let mut pairs: Vec<(u64, u32)> = fps.iter().copied().zip(first..).collect();
                pairs.sort_unstable();
                pairs
            };
            let old = numbered(&old_fps, 1);
            let new = numbered(&new_fps, old_fps.len() as u32 + 1);
            let mut all: Vec<(u64, u32)> = old.iter().chain(&new).copied().collect();
            all.sort_unstable();
            let bytes = old.iter().flat_map(|&(fp, p)| pair_bytes(fp, p)).collect();
            let mut copy = CopyMerge::new(InChunks { bytes, sizes, at: 0, next: 0 });
            let mut out = Vec::new();
            let mut put = |b: &[u8]| {
                out.extend_from_slice(b);
                Ok(())
            };
            cuts.sort_unstable();
            let mut from = 0;
            for cut in cuts {
                let upper = u128::from(cut);
                let to = from + new[from..].partition_point(|&(fp, _)| u128::from(fp) < upper);
                copy.merge(&new[from..to], Some(upper), &mut put).unwrap();
                from = to;
            }
            let last = to_the_end.then_some(1u128 << 64);
            copy.merge(&new[from..], last, &mut put).unwrap();
            let got: Vec<(u64, u32)> = out.chunks_exact(PAIR).map(pair_at).collect();
            proptest::prop_assert_eq!(out.len() % PAIR, 0);
            proptest::prop_assert_eq!(got, all);
        }
    }

    /// The fences and CRC-32s of `pairs`' blocks, from their bytes
    /// handed over in pieces of `sizes` (then the rest at once).
    fn block_sums(pairs: &[(u64, u32)], sizes: &[usize]) -> (Vec<u64>, Vec<u32>) {
        let bytes: Vec<u8> = pairs
            .iter()
            .flat_map(|&(fp, p)| pair_bytes(fp, p))
            .collect();
        let mut sums = BlockSums::default();
        let mut rest = &bytes[..];
        for &size in sizes {
            let (piece, after) = rest.split_at(size.min(rest.len()));
            sums.add(piece);
            rest = after;
        }
        sums.add(rest);
        sums.finish().unwrap()
    }

    /// A section looked up in place with `pairs`' fences and CRC-32s.
    fn in_place(pairs: &[(u64, u32)], fences: Vec<u64>, sums: Vec<u32>) -> SortedIds {
        let (f, at) = section(pairs);
        SortedIds::in_place(f.reopen().unwrap(), at, pairs.len() as u64, fences, sums).unwrap()
    }

    proptest::proptest! {
        /// The fences and CRC-32s taken from a section's bytes in pieces
        /// of any sizes are those a reading of the section takes, and
        /// looked up in place with them every pair is found.
        #[test]
        fn block_sums_in_any_pieces_are_those_a_reading_takes(
            n in 0u32..1_500,
            sizes in proptest::collection::vec(0usize..5_000, 0..20),
        ) {
            let pairs = sorted(n);
            let (fences, sums) = block_sums(&pairs, &sizes);
            let (whole, _) = read(&pairs).unwrap();
            proptest::prop_assert_eq!(&fences, &whole.fences);
            proptest::prop_assert_eq!(&sums, &whole.sums);
            let ids = in_place(&pairs, fences, sums);
            let mut at = Vec::new();
            for &(fp, p) in &pairs {
                at.clear();
                ids.positions(fp, &mut at).unwrap();
                proptest::prop_assert_eq!(&at, &[p]);
            }
        }
    }

    proptest::proptest! {
        /// Fingerprints looked up in place at once
        /// ([`SortedIds::positions_of`]) find what a look-up of each alone
        /// finds (runs of positions sharing a fingerprint, across blocks'
        /// ends, included), with each block they fall in read once.
        #[test]
        fn fingerprints_at_once_find_what_each_alone_finds(
            n in 1u32..2_000,
            runs in proptest::collection::vec((0usize..2_000, 1usize..600), 0..4),
            asked in proptest::collection::vec((0usize..2_000, proptest::bool::ANY), 0..300),
        ) {
            let mut pairs = sorted(n);
            let len = pairs.len();
            for &(start, run) in &runs {
                let fp = pairs[start % len].0;
                for pair in pairs.iter_mut().skip(start % len).take(run) {
                    pair.0 = fp;
                }
            }
            pairs.sort_unstable();
            let (fences, sums) = block_sums(&pairs, &[]);
            let ids = in_place(&pairs, fences, sums);
            // Stored fingerprints, and others (almost surely absent).
            let mut wanted: Vec<(u64, usize)> = asked
                .iter()
                .enumerate()
                .map(|(tag, &(i, stored))| {
                    let fp = pairs[i % len].0;
                    (if stored { fp } else { mix(fp) }, tag)
                })
                .collect();
            wanted.sort_unstable();
            let blocks = ids.blocks_of(wanted.iter().map(|w| w.0));
            proptest::prop_assert!(blocks.windows(2).all(|w| w[0] < w[1]));
            let mut at = Vec::new();
            ids.positions_of(&wanted, &blocks, &mut at).unwrap();
            for &(fp, tag) in &wanted {
                let mut alone = Vec::new();
                ids.positions(fp, &mut alone).unwrap();
                alone.sort_unstable();
                let mut together: Vec<u32> =
                    at.iter().filter(|a| a.0 == tag).map(|a| a.1).collect();
                together.sort_unstable();
                proptest::prop_assert_eq!(together, alone);
                // Each of its blocks among those read.
                for b in ids.blocks_for(fp) {
                    proptest::prop_assert!(blocks.binary_search(&b).is_ok());
                }
            }
        }
    }

    /// Looked up in place, positions that share a fingerprint across a
    /// block's end are all found; a block out of order, or not starting
    /// at its fence, is refused though its CRC-32 matches; a directory
    /// of too few blocks, or out of order, makes none.
    #[test]
    fn a_section_in_place_checks_each_block_it_reads() {
        let mut pairs = sorted(3_000);
        let shared = pairs[BLOCK_PAIRS - 1].0;
        pairs[BLOCK_PAIRS].0 = shared;
        pairs.sort_unstable();
        let (fences, sums) = block_sums(&pairs, &[]);
        let ids = in_place(&pairs, fences.clone(), sums.clone());
        let mut at = Vec::new();
        ids.positions(shared, &mut at).unwrap();
        let mut want: Vec<u32> = pairs
            .iter()
            .filter(|q| q.0 == shared)
            .map(|q| q.1)
            .collect();
        want.sort_unstable();
        at.sort_unstable();
        assert_eq!(at, want);

        // Two pairs of the third block swapped, its CRC-32 taken after.
        let mut swapped = pairs.clone();
        swapped.swap(2 * BLOCK_PAIRS + 5, 2 * BLOCK_PAIRS + 6);
        let (s_fences, s_sums) = block_sums(&swapped, &[]);
        let ids = in_place(&swapped, s_fences, s_sums);
        let e = ids
            .positions(swapped[2 * BLOCK_PAIRS + 5].0, &mut at)
            .unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        assert!(
            many_at_once(&ids, &swapped[2 * BLOCK_PAIRS..2 * BLOCK_PAIRS + 1])
                .unwrap_err()
                .contains("out of order")
        );
        at.clear();
        ids.positions(pairs[10].0, &mut at).unwrap();
        assert_eq!(at, [pairs[10].1]);

        // The fourth block's fence one below its first fingerprint.
        let mut moved = fences.clone();
        moved[3] -= 1;
        let ids = in_place(&pairs, moved, sums.clone());
        let e = ids
            .positions(pairs[3 * BLOCK_PAIRS + 1].0, &mut at)
            .unwrap_err();
        assert!(e.contains("fence"), "{e}");
        assert!(
            many_at_once(&ids, &pairs[3 * BLOCK_PAIRS + 1..3 * BLOCK_PAIRS + 3])
                .unwrap_err()
                .contains("fence")
        );
        many_at_once(&ids, &pairs[..2 * BLOCK_PAIRS]).unwrap();

        let (f, at) = section(&pairs);
        let n = pairs.len() as u64;
        let file = || f.reopen().unwrap();
        let short = SortedIds::in_place(file(), at, n, fences[1..].to_vec(), sums[1..].to_vec());
        assert!(short.is_err());
        let mut disordered = fences.clone();
        disordered.swap(1, 2);
        assert!(SortedIds::in_place(file(), at, n, disordered, sums).is_err());
    }

    /// More blocks than one read takes ([`BLOCKS_AT_ONCE`]) are read in
    /// runs of at most that many, into a buffer of that size: every
    /// fingerprint of a section of 274 blocks, at once, is found.
    #[test]
    fn a_look_up_of_more_blocks_than_one_read_takes_reads_them_in_runs() {
        let pairs = sorted((BLOCKS_AT_ONCE * BLOCK_PAIRS + 4_500) as u32);
        let (fences, sums) = block_sums(&pairs, &[]);
        assert!(fences.len() > BLOCKS_AT_ONCE);
        let ids = in_place(&pairs, fences, sums);
        many_at_once(&ids, &pairs).unwrap();
        // Every other block: runs of one.
        let every_other: Vec<(u64, u32)> = pairs.iter().step_by(2 * BLOCK_PAIRS).copied().collect();
        many_at_once(&ids, &every_other).unwrap();
    }

    /// The fingerprints of `pairs` looked up at once
    /// ([`SortedIds::positions_of`]): each found at its position.
    fn many_at_once(ids: &SortedIds, pairs: &[(u64, u32)]) -> Result<(), String> {
        let wanted: Vec<(u64, usize)> = pairs.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
        let mut at = Vec::new();
        ids.positions_of(&wanted, &ids.blocks_of(pairs.iter().map(|p| p.0)), &mut at)?;
        let at: std::collections::HashSet<(usize, u32)> = at.into_iter().collect();
        for (i, p) in pairs.iter().enumerate() {
            assert!(at.contains(&(i, p.1)));
        }
        Ok(())
    }

    fn section(pairs: &[(u64, u32)]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"front").unwrap();
        for &(fp, p) in pairs {
            f.write_all(&pair_bytes(fp, p)).unwrap();
        }
        f.flush().unwrap();
        (f, 5)
    }

    fn read(pairs: &[(u64, u32)]) -> Result<(SortedIds, Vec<(u32, u32)>), String> {
        let (f, at) = section(pairs);
        SortedIds::read(f.reopen().unwrap(), at, pairs.len() as u64, None)
    }

    fn mix(i: u64) -> u64 {
        let m = u128::from(i ^ 0x5151) * 0x9e37_79b9_7f4a_7c15;
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn sorted(n: u32) -> Vec<(u64, u32)> {
        let mut pairs: Vec<(u64, u32)> = (1..=n).map(|p| (mix(u64::from(p)), p)).collect();
        pairs.sort_unstable();
        pairs
    }

    #[test]
    fn every_listed_fingerprint_is_found_at_its_positions() {
        let mut pairs = sorted(3_000);
        // Three positions share one fingerprint, across a block's end.
        let shared = pairs[BLOCK_PAIRS - 1].0;
        pairs[BLOCK_PAIRS].0 = shared;
        pairs[BLOCK_PAIRS + 1].0 = shared;
        pairs.sort_unstable();
        let (ids, mut pairs_shared) = read(&pairs).unwrap();
        assert_eq!(ids.len(), 3_000);
        for &(fp, p) in &pairs {
            let mut out = Vec::new();
            ids.positions(fp, &mut out).unwrap();
            assert!(out.contains(&p), "{p}");
        }
        let mut out = Vec::new();
        ids.positions(shared, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        let mut under: Vec<u32> = out.clone();
        under.sort_unstable();
        pairs_shared.sort_unstable();
        let (a, b, c) = (under[0], under[1], under[2]);
        assert_eq!(pairs_shared, vec![(a, b), (a, c), (b, c)]);
        // Absent fingerprints: almost all stopped by the filter, none found.
        let mut passed = 0;
        for i in 10_000..30_000u64 {
            let fp = mix(i);
            passed += usize::from(ids.may_hold(fp));
            let mut out = Vec::new();
            ids.positions(fp, &mut out).unwrap();
            assert!(out.is_empty());
        }
        // About 0.1% at 16 bits an id (10 bits let ~1%, about 180, pass).
        assert!(passed < 80, "{passed} of 20000 absent passed the filter");
        // Below the first and above the last.
        let mut out = Vec::new();
        ids.positions(0, &mut out).unwrap();
        ids.positions(u64::MAX, &mut out).unwrap();
        assert!(out.is_empty());
        let all: Vec<(u64, u32)> = ids.pairs().collect::<Result<_, _>>().unwrap();
        assert_eq!(all, pairs);
        assert!(ids.allocated_bytes() < 3_000 * 9 / 4);
    }

    #[test]
    fn a_section_out_of_order_or_incomplete_is_refused() {
        let pairs = sorted(600);
        let mut swapped = pairs.clone();
        swapped.swap(10, 11);
        assert!(read(&swapped).unwrap_err().contains("out of order"));
        let mut twice = pairs.clone();
        twice[20].1 = twice[21].1;
        assert!(read(&twice).unwrap_err().contains("listed twice"));
        let mut past = pairs.clone();
        past[3].1 = 601;
        assert!(read(&past).unwrap_err().contains("out of range"));
        let (f, at) = section(&pairs[..599]);
        let err = SortedIds::read(f.reopen().unwrap(), at, 600, None).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let mut crowd: Vec<(u64, u32)> = (1..=600).map(|p| (7, p)).collect();
        crowd.sort_unstable();
        assert!(read(&crowd).unwrap_err().contains("share a fingerprint"));
        let (empty, shared) = read(&[]).unwrap();
        assert!(shared.is_empty() && empty.pairs().next().is_none());
        let mut out = Vec::new();
        empty.positions(5, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn bytes_changed_after_the_check_are_refused() {
        let pairs = sorted(1_000);
        let (f, at) = section(&pairs);
        let (ids, _) = SortedIds::read(f.reopen().unwrap(), at, 1_000, None).unwrap();
        let (fp, _) = pairs[300];
        // Another position written over the pair, in place.
        let file = f.reopen().unwrap();
        let b = pair_bytes(fp, 999);
        file.write_all_at(&b, at + 300 * PAIR as u64).unwrap();
        let err = ids.positions(fp, &mut Vec::new()).unwrap_err();
        assert!(err.contains("changed after"), "{err}");
        let err = ids.pairs().find_map(Result::err).unwrap();
        assert!(err.contains("changed after"), "{err}");
    }
}
