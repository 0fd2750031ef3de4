//! Per stream, the positions of its versions: [`Streams`].
//!
//! The positions an index snapshot lists stay in its file (session w):
//! the index keeps, for each stream, where its list starts in the file and
//! how many versions it holds there, and in memory only the positions
//! indexed after the snapshot (the stream's **tail**). A stream's list in
//! the file is read with one positioned read of the blocks of
//! [`LIST_BLOCK`] positions that cover what is asked, each block checked
//! against the CRC-32 taken when the open read and checked the whole file:
//! bytes changed after the open are refused as an error, never used. Until
//! then every list was read into memory at open (4 bytes an event, 40 MB
//! at 10M events, for a timeline that reads one pupil's).
//!
//! Versions are gapless and a stream's positions increase, so the versions
//! in the file are exactly the stream's positions up to the snapshot's
//! head, and the tail's are those after it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sorted_ids::{read_checked_blocks, BlockRead};
use super::{corrupt, IdHash};
use crate::envelope::StreamId;
use crate::error::StoreError;

/// Positions of a list in the file checked as one block (4 KB): a stream
/// of a few hundred versions (a pupil's case) is one block, one read.
pub(super) const LIST_BLOCK: usize = 1_024;

/// One stream's positions: versions `1..=file.count` in the file, the
/// rest in `tail`.
#[derive(Clone, Debug, Default)]
struct List {
    file: AtInFile,
    /// Positions of the versions after the file's, in order.
    tail: Vec<u32>,
}

/// The snapshot file whose lists the index reads in place.
#[derive(Debug)]
struct Filed {
    file: File,
    path: PathBuf,
    /// Per block of each list in the file, its CRC-32 as the open read it.
    crcs: Vec<u32>,
    /// The snapshot's head: the file lists every position up to it.
    head: u64,
}

/// Where a list is in the file: its first position's offset, its versions
/// there (0: none), its first block's CRC-32 among [`Filed::crcs`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AtInFile {
    pub at: u64,
    pub count: u32,
    pub crc_at: u32,
}

impl List {
    /// Versions listed in the file.
    fn filed(&self) -> u64 {
        u64::from(self.file.count)
    }

    /// The stream's last version: those in the file and those after.
    fn version(&self) -> u64 {
        self.filed() + self.tail.len() as u64
    }
}

impl Filed {
    /// Appends the positions of versions `start + 1 ..= end` of the list
    /// at `list` (`end <= list.count`) to `out`: one read of the blocks
    /// that hold them, each checked against its CRC-32. Bytes changed, or
    /// a file cut short, after the open are refused as corrupt.
    fn read(
        &self,
        list: AtInFile,
        start: u64,
        end: u64,
        out: &mut Vec<u32>,
    ) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        let block = LIST_BLOCK as u64;
        let (first, last) = (start / block, (end - 1) / block);
        let from = first * block;
        let to = ((last + 1) * block).min(u64::from(list.count));
        let mut bytes = vec![0u8; ((to - from) * 4) as usize];
        let offset = list.at + from * 4;
        let crc_at = list.crc_at as usize + first as usize;
        let crcs = self.crcs.get(crc_at..).unwrap_or_default();
        match read_checked_blocks(&self.file, offset, &mut bytes, LIST_BLOCK * 4, crcs) {
            Ok(()) => {}
            Err(BlockRead::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(
                    &self.path,
                    Some(offset),
                    "the file ends inside a stream list (cut short after the open checked it)",
                ))
            }
            Err(BlockRead::Io(e)) => {
                return Err(StoreError::io("read the index snapshot's stream lists", e))
            }
            Err(BlockRead::Changed(i)) => {
                return Err(corrupt(
                    &self.path,
                    Some(offset + (i * LIST_BLOCK * 4) as u64),
                    "a stream list changed after the open checked the index snapshot",
                ))
            }
        }
        let skip = ((start - from) * 4) as usize;
        let take = ((end - start) * 4) as usize;
        out.extend(
            bytes[skip..skip + take]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(())
    }
}

/// A range of a stream's versions, taken under the index's lock: where
/// those in the file are, and a copy of those in memory.
pub(super) struct Versions {
    in_file: Option<(Arc<Filed>, AtInFile)>,
    /// The versions (`start + 1 ..= end`) to read from the file.
    range: (u64, u64),
    tail: Vec<u32>,
}

impl Versions {
    /// The positions, those in the file read now (without the index's
    /// lock: a read that waits for the disk does not hold up the writer).
    pub(super) fn read(self) -> Result<Vec<u32>, StoreError> {
        let (start, end) = self.range;
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize + self.tail.len());
        if let Some((file, list)) = &self.in_file {
            file.read(*list, start, end, &mut out)?;
        }
        out.extend_from_slice(&self.tail);
        Ok(out)
    }
}

/// A stream's place in [`Streams`] ([`Streams::slot`]).
pub(super) struct Slot<'a> {
    entry: Entry<'a, StreamId, List>,
    tails: &'a mut usize,
}

/// What [`Streams::install`] replaced, freed when dropped.
pub(super) struct Replaced {
    _tails: Vec<Vec<u32>>,
    _file: Option<Arc<Filed>>,
}

/// Every list written to a file of its own, up to a head
/// ([`Streams::spill`], [`ListSpill`]), for [`Streams::install`].
pub(super) struct Spilled {
    file: File,
    /// What errors name it by (it has no name).
    path: PathBuf,
    /// Each stream, where its list is in the file, and how many of its
    /// versions there were taken from its tail.
    lists: Vec<(StreamId, AtInFile, u32)>,
    crcs: Vec<u32>,
    /// The last position the file lists: it lists every position up to
    /// it, and none after.
    head: u64,
    /// The file the lists were read from ([`Streams::filed`] then).
    replaces: Option<Arc<Filed>>,
}

/// A spill of every list's versions up to a head, begun under the
/// index's lock ([`Streams::begin_spill`]) and written a slice of streams
/// at a time: each slice's tails copied under the lock
/// ([`ListSpill::take`]), then written without it
/// ([`ListSpill::write_taken`]), so that the writer goes on adding
/// positions (after the head) and readers go on reading meanwhile. Only
/// the writer adds to the lists, and only one spill is in flight, so the
/// versions up to the head, and the file they began in, stay put.
pub(super) struct ListSpill {
    head: u64,
    /// The lists' file when the spill began.
    from: Option<Arc<Filed>>,
    /// Every stream when the spill began (a stream added after holds no
    /// position up to the head), in the order they are written.
    streams: Vec<StreamId>,
    /// How many of `streams` were taken.
    next: usize,
    /// The slice taken and not yet written: each stream, where its list
    /// was in `from`, and how many of `copied` are its.
    taken: Vec<(StreamId, AtInFile, u32)>,
    copied: Vec<u32>,
    out: Option<std::io::BufWriter<File>>,
    path: PathBuf,
    lists: Vec<(StreamId, AtInFile, u32)>,
    crcs: Vec<u32>,
    /// Bytes written.
    at: u64,
    /// One list at a time, and its bytes.
    positions: Vec<u32>,
    bytes: Vec<u8>,
}

/// Streams whose tails a spill copies under one hold of the index's lock
/// ([`ListSpill::take`]): about 0.1 ms of copying for a school's pupils.
pub(super) const SPILL_SLICE: usize = 1_024;

/// Positions after which a spill's slice ends early, however few streams
/// it has taken ([`ListSpill::take`]): a tail of millions (one stream's
/// import) is copied under the lock a stream at a time, not with a
/// thousand others.
const SPILL_SLICE_POSITIONS: usize = 1 << 16;

fn same_file(a: &Option<Arc<Filed>>, b: &Option<Arc<Filed>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl ListSpill {
    /// Copies the versions up to the head of the next `n` streams' tails
    /// from `streams` (the index's, under its lock), fewer once
    /// [`SPILL_SLICE_POSITIONS`] are copied; `true` while streams are left
    /// to take.
    pub(super) fn take(&mut self, streams: &Streams, n: usize) -> Result<bool, StoreError> {
        let changed =
            |what: &str| StoreError::Internal(format!("a spill of the stream lists: {what}"));
        if !same_file(&streams.filed, &self.from) {
            return Err(changed("their file changed under it"));
        }
        let end = self.next.saturating_add(n).min(self.streams.len());
        let head = self.head;
        while self.next < end && self.copied.len() < SPILL_SLICE_POSITIONS {
            let stream = self.streams[self.next];
            let list = streams
                .lists
                .get(&stream)
                .ok_or_else(|| changed("a stream left the index"))?;
            let k = list.tail.partition_point(|&p| u64::from(p) <= head);
            self.copied.extend_from_slice(&list.tail[..k]);
            let k = u32::try_from(k).map_err(|_| changed("a tail past u32"))?;
            self.taken.push((stream, list.file, k));
            self.next += 1;
        }
        Ok(self.next < self.streams.len())
    }

    /// Writes the lists taken (each stream's versions in the old file,
    /// read now, and those copied from its tail) to the spill's file in
    /// `dir`, made at the first slice: a file no name points at (as the
    /// id table's runs are: nothing is left after a crash; not synced,
    /// the positions are in the segments).
    fn write_taken(&mut self, dir: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        let spill = |e| StoreError::io("spill the index's stream lists", e);
        if self.out.is_none() {
            let file = tempfile::tempfile_in(dir).map_err(spill)?;
            self.path = dir.join("(stream lists spilled from the index)");
            self.out = Some(std::io::BufWriter::with_capacity(1 << 20, file));
        }
        let ListSpill {
            from,
            taken,
            copied,
            out: Some(out),
            lists,
            crcs,
            at,
            positions,
            bytes,
            ..
        } = self
        else {
            return Ok(());
        };
        let mut of_tails = copied.as_slice();
        for (stream, old, k) in taken.drain(..) {
            positions.clear();
            if old.count > 0 {
                let from = from
                    .as_ref()
                    .ok_or_else(|| StoreError::Internal("a filed list without a file".into()))?;
                from.read(old, 0, u64::from(old.count), positions)?;
            }
            let (Some(tail), Some(rest)) = (of_tails.get(..k as usize), of_tails.get(k as usize..))
            else {
                return Err(StoreError::Internal(
                    "a spill of the stream lists lost a tail it copied".into(),
                ));
            };
            of_tails = rest;
            positions.extend_from_slice(tail);
            let crc_at = u32::try_from(crcs.len())
                .map_err(|_| StoreError::Internal("too many stream list blocks".into()))?;
            for block in positions.chunks(LIST_BLOCK) {
                bytes.clear();
                bytes.extend(block.iter().flat_map(|p| p.to_le_bytes()));
                crcs.push(crc32fast::hash(bytes));
                out.write_all(bytes).map_err(spill)?;
            }
            let count = u32::try_from(positions.len())
                .map_err(|_| StoreError::Internal("a stream list past u32".into()))?;
            lists.push((
                stream,
                AtInFile {
                    at: *at,
                    count,
                    crc_at,
                },
                k,
            ));
            *at += u64::from(count) * 4;
        }
        copied.clear();
        Ok(())
    }

    /// Writes the whole spill to a file in `dir`, a slice at a time:
    /// `take` takes the next slice ([`ListSpill::take`], under the lock
    /// its caller holds the lists by), which is then written
    /// ([`ListSpill::write_taken`]), until no stream is left.
    pub(super) fn write_slices(
        mut self,
        dir: &Path,
        mut take: impl FnMut(&mut ListSpill) -> Result<bool, StoreError>,
    ) -> Result<Spilled, StoreError> {
        loop {
            let more = take(&mut self)?;
            self.write_taken(dir)?;
            if !more {
                return self.finish();
            }
        }
    }

    /// The file written, once every stream was taken and written.
    fn finish(self) -> Result<Spilled, StoreError> {
        if self.next < self.streams.len() || !self.taken.is_empty() {
            return Err(StoreError::Internal(
                "a spill of the stream lists finished before every list was written".into(),
            ));
        }
        let out = self.out.ok_or_else(|| {
            StoreError::Internal("a spill of the stream lists wrote no file".into())
        })?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io("spill the index's stream lists", e.into_error()))?;
        Ok(Spilled {
            file,
            path: self.path,
            lists: self.lists,
            crcs: self.crcs,
            head: self.head,
            replaces: self.from,
        })
    }
}

impl Slot<'_> {
    /// The stream's last version (0: no events).
    pub(super) fn version(&self) -> u64 {
        match &self.entry {
            Entry::Occupied(o) => o.get().version(),
            Entry::Vacant(_) => 0,
        }
    }

    /// Adds `position` as the stream's next version.
    pub(super) fn push(self, position: u32) {
        *self.tails += 1;
        match self.entry {
            Entry::Occupied(mut o) => o.get_mut().tail.push(position),
            Entry::Vacant(v) => {
                v.insert(List {
                    tail: vec![position],
                    ..List::default()
                });
            }
        }
    }
}

/// Every stream's positions by version (version v is the `v - 1`th).
#[derive(Debug)]
pub(super) struct Streams {
    lists: HashMap<StreamId, List, IdHash>,
    filed: Option<Arc<Filed>>,
    /// Positions held in memory (every list's tail).
    tails: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Streams::with_hasher(IdHash::default(), 0)
    }
}

impl Streams {
    pub(super) fn with_hasher(hasher: IdHash, capacity: usize) -> Streams {
        Streams {
            lists: HashMap::with_capacity_and_hasher(capacity, hasher),
            filed: None,
            tails: 0,
        }
    }

    /// The streams of a snapshot whose lists stay in `file` (at `path`),
    /// with the CRC-32 of each block of every list (each checked, and
    /// refused if empty, as the file was read). `Err` when a stream is
    /// listed twice or its blocks' CRC-32s are not all there.
    pub(super) fn from_file(
        file: File,
        path: PathBuf,
        head: u64,
        hasher: IdHash,
        lists: Vec<(StreamId, AtInFile)>,
        crcs: Vec<u32>,
    ) -> Result<Streams, String> {
        let mut streams = Streams::with_hasher(hasher, lists.len());
        for (stream, at) in lists {
            let blocks = (at.count as usize).div_ceil(LIST_BLOCK);
            if (at.crc_at as usize).saturating_add(blocks) > crcs.len() {
                return Err("a stream's blocks are not all checked".into());
            }
            let list = List {
                file: at,
                tail: Vec::new(),
            };
            if streams.lists.insert(stream, list).is_some() {
                return Err("a stream is listed twice".into());
            }
        }
        streams.filed = Some(Arc::new(Filed {
            file,
            path,
            crcs,
            head,
        }));
        Ok(streams)
    }

    /// The last position the file lists (0: no file).
    pub(super) fn filed_head(&self) -> u64 {
        self.filed.as_ref().map_or(0, |f| f.head)
    }

    /// The lists in the file without the tails, sharing the file (for a
    /// reader that must not hold the index while it reads them all).
    pub(super) fn filed_only(&self) -> Streams {
        let mut lists =
            HashMap::with_capacity_and_hasher(self.lists.len(), self.lists.hasher().clone());
        lists.extend(
            self.lists
                .iter()
                .filter(|(_, l)| l.filed() > 0)
                .map(|(s, l)| {
                    let list = List {
                        file: l.file,
                        tail: Vec::new(),
                    };
                    (*s, list)
                }),
        );
        Streams {
            lists,
            filed: self.filed.clone(),
            tails: 0,
        }
    }

    /// Streams held.
    pub(super) fn len(&self) -> usize {
        self.lists.len()
    }

    /// The stream's last version (0: no events).
    pub(super) fn version(&self, stream: &StreamId) -> u64 {
        self.lists.get(stream).map_or(0, List::version)
    }

    /// The stream's place, to check its version and add to it with one
    /// look-up ([`Slot`]).
    pub(super) fn slot(&mut self, stream: StreamId) -> Slot<'_> {
        Slot {
            entry: self.lists.entry(stream),
            tails: &mut self.tails,
        }
    }

    /// Positions held in memory, those indexed after the file's.
    pub(super) fn tails(&self) -> usize {
        self.tails
    }

    /// Whether the lists are due to be spilled ([`Streams::spill`]): once
    /// `at_least` positions are held in memory, or a quarter of those in
    /// the file if more, so that what the spills write stays within about
    /// five times the log's positions however long the session.
    pub(super) fn spill_due(&self, at_least: usize) -> bool {
        let quarter = usize::try_from(self.filed_head() / 4).unwrap_or(usize::MAX);
        self.tails >= at_least.max(quarter)
    }

    /// Begins a spill of every list's versions up to `head` (every
    /// position indexed so far: the log's head), to be written a slice at
    /// a time ([`ListSpill`]) and installed ([`Streams::install`]).
    pub(super) fn begin_spill(&self, head: u64) -> ListSpill {
        let blocks = usize::try_from(head).unwrap_or(usize::MAX) / LIST_BLOCK;
        ListSpill {
            head,
            from: self.filed.clone(),
            streams: self.lists.keys().copied().collect(),
            next: 0,
            taken: Vec::new(),
            copied: Vec::new(),
            out: None,
            path: PathBuf::new(),
            lists: Vec::with_capacity(self.lists.len()),
            crcs: Vec::with_capacity(self.lists.len().saturating_add(blocks)),
            at: 0,
            positions: Vec::new(),
            bytes: Vec::with_capacity(LIST_BLOCK * 4),
        }
    }

    /// Every list, the file's positions and the tail's, written to a file
    /// of its own in `dir` at once ([`ListSpill`], a slice after another:
    /// an open's scan, which adds nothing meanwhile). `head` is the log's
    /// head, the last position the lists hold.
    pub(super) fn spill(&self, dir: &Path, head: u64) -> Result<Spilled, StoreError> {
        self.begin_spill(head)
            .write_slices(dir, |spill| spill.take(self, SPILL_SLICE))
    }

    /// Reads the versions up to the spill's head from `spilled` from now
    /// on, and keeps in memory only those after it. Gives back what it
    /// replaces (the tails' versions up to the head, and the file read
    /// before) to be freed after the index's lock is let go; `None`
    /// (nothing changed) unless the lists are still as the spill found
    /// them up to its head: the same file, every stream it wrote, each
    /// with as many versions in the old file as it read there, and each
    /// tail holding as many up to the head as it copied (only the writer
    /// adds to a tail, and only after its end, so those are the ones it
    /// copied) and none after them.
    pub(super) fn install(&mut self, spilled: Spilled) -> Option<Replaced> {
        if !same_file(&self.filed, &spilled.replaces) {
            return None;
        }
        let head = spilled.head;
        let after_head = |p: &u32| u64::from(*p) > head;
        let mut taken = 0usize;
        for (stream, at, k) in &spilled.lists {
            let list = self.lists.get(stream)?;
            let k = *k as usize;
            let kept = list.tail.get(..k)?;
            if u64::from(list.file.count) + k as u64 != u64::from(at.count)
                || kept.last().is_some_and(after_head)
                || list.tail.get(k).is_some_and(|p| !after_head(p))
            {
                return None;
            }
            taken = taken.checked_add(k)?;
        }
        let tails_left = self.tails.checked_sub(taken)?;
        let mut tails = Vec::with_capacity(spilled.lists.len());
        for (stream, at, k) in spilled.lists {
            let Some(list) = self.lists.get_mut(&stream) else {
                continue;
            };
            list.file = at;
            let k = k as usize;
            if k == 0 {
                continue;
            }
            let rest = match list.tail.len() > k {
                true => list.tail.split_off(k),
                false => Vec::new(),
            };
            tails.push(std::mem::replace(&mut list.tail, rest));
        }
        let file = self.filed.replace(Arc::new(Filed {
            file: spilled.file,
            path: spilled.path,
            crcs: spilled.crcs,
            head,
        }));
        self.tails = tails_left;
        Some(Replaced {
            _tails: tails,
            _file: file,
        })
    }

    /// Adds `position` as the stream's next version.
    #[cfg(test)]
    pub(super) fn push(&mut self, stream: StreamId, position: u32) {
        self.slot(stream).push(position);
    }

    /// Where the positions of versions `start + 1 ..= end` (clamped to the
    /// stream's) are, to be read after the index's lock is let go
    /// ([`Versions::read`]); `None` for a stream with no events.
    pub(super) fn versions(&self, stream: &StreamId, start: u64, end: u64) -> Option<Versions> {
        let list = self.lists.get(stream)?;
        let filed = list.filed();
        let end = end.min(filed + list.tail.len() as u64);
        let start = start.min(end);
        let in_file = match &self.filed {
            Some(file) if start < end.min(filed) => Some((Arc::clone(file), list.file)),
            _ => None,
        };
        let (from, to) = (start.max(filed) - filed, end.max(filed) - filed);
        Some(Versions {
            in_file,
            range: (start, end.min(filed)),
            tail: list.tail[from as usize..to as usize].to_vec(),
        })
    }

    /// The positions of versions `start + 1 ..= end` (clamped to the
    /// stream's), read from the file where they are there; `None` for a
    /// stream with no events.
    pub(super) fn positions(
        &self,
        stream: &StreamId,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<u32>>, StoreError> {
        self.versions(stream, start, end)
            .map(Versions::read)
            .transpose()
    }

    /// Every position of the stream, by version (tests).
    #[cfg(test)]
    pub(super) fn all(&self, stream: &StreamId) -> Result<Option<Vec<u32>>, StoreError> {
        self.positions(stream, 0, u64::MAX)
    }

    /// The position of `version` when memory holds it (a version after the
    /// snapshot's); `None` when the stream has no such version in memory.
    pub(super) fn in_memory(&self, stream: &StreamId, version: u64) -> Option<u32> {
        let list = self.lists.get(stream)?;
        let i = version.checked_sub(list.filed() + 1)?;
        list.tail.get(usize::try_from(i).ok()?).copied()
    }

    /// Each stream and its positions, by version, in no set order (one
    /// list in memory at a time): the file's and the tail's, or with
    /// `filed_only` those in the file (what `verify` sums), skipping
    /// streams with none there.
    pub(super) fn for_each(
        &self,
        filed_only: bool,
        mut each: impl FnMut(&StreamId, &[u32]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for (stream, list) in &self.lists {
            if filed_only && list.filed() == 0 {
                continue;
            }
            buf.clear();
            if let (Some(file), true) = (&self.filed, list.filed() > 0) {
                file.read(list.file, 0, list.filed(), &mut buf)?;
            }
            if !filed_only {
                buf.extend_from_slice(&list.tail);
            }
            each(stream, &buf)?;
        }
        Ok(())
    }

    /// Bytes allocated: the map (entry and control byte a bucket, its
    /// capacity in 7/8 of its buckets), the tails and the CRC-32s.
    pub(super) fn allocated_bytes(&self) -> usize {
        let tails: usize = self.lists.values().map(|l| l.tail.capacity() * 4).sum();
        let buckets = self.lists.capacity() / 7 * 8;
        let map = buckets * (std::mem::size_of::<(StreamId, List)>() + 1);
        let crcs = self.filed.as_ref().map_or(0, |f| f.crcs.capacity() * 4);
        tails + map + crcs
    }

    /// Tests: replaces a stream's positions (a stream with none in a file).
    #[cfg(test)]
    pub(super) fn replace(&mut self, stream: StreamId, positions: Vec<u32>) {
        let list = self.lists.entry(stream).or_default();
        assert_eq!(list.filed(), 0, "only for lists in memory");
        self.tails = self.tails - list.tail.len() + positions.len();
        list.tail = positions;
    }

    /// Tests: swaps two streams' lists (where they are in the file too).
    #[cfg(test)]
    pub(super) fn swap_for_test(&mut self, a: StreamId, b: StreamId) {
        let la = self.lists.remove(&a).expect("stream a");
        let lb = self.lists.remove(&b).expect("stream b");
        self.lists.insert(a, lb);
        self.lists.insert(b, la);
    }

    /// Tests: every stream and its positions, sorted by stream.
    #[cfg(test)]
    pub(super) fn to_vec(&self) -> Vec<(StreamId, Vec<u32>)> {
        let mut all = Vec::new();
        self.for_each(false, |s, p| {
            all.push((*s, p.to_vec()));
            Ok(())
        })
        .expect("lists readable");
        all.sort_by_key(|(s, _)| *s);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use uuid::Uuid;

    /// `lists` (each stream's filed count and tail length) written to a
    /// file as a snapshot lays them out, with positions numbered in order;
    /// the streams read in place, and every stream's positions.
    fn filed(lists: &[(u32, u32)]) -> (Streams, Vec<Vec<u32>>, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let (mut at, mut next) = (0u64, 1u32);
        let (mut dir, mut crcs, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &(count, _)) in lists.iter().enumerate() {
            let positions: Vec<u32> = (next..next + count).collect();
            next += count;
            let bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
            file.write_all(&[0; 3]).unwrap(); // not aligned to anything
            at += 3;
            let crc_at = crcs.len() as u32;
            crcs.extend(bytes.chunks(LIST_BLOCK * 4).map(crc32fast::hash));
            file.write_all(&bytes).unwrap();
            if count > 0 {
                let at = AtInFile { at, count, crc_at };
                dir.push((StreamId(Uuid::from_u128(i as u128)), at));
            }
            at += bytes.len() as u64;
            all.push(positions);
        }
        let own = file.reopen().unwrap();
        let path = file.path().to_path_buf();
        let mut streams = Streams::from_file(
            own,
            path,
            u64::from(next - 1),
            IdHash::with_seed(7),
            dir,
            crcs,
        )
        .unwrap();
        for (i, &(_, tail)) in lists.iter().enumerate() {
            for _ in 0..tail {
                streams.push(StreamId(Uuid::from_u128(i as u128)), next);
                all[i].push(next);
                next += 1;
            }
        }
        (streams, all, file)
    }

    proptest! {
        /// Any range of versions of a stream, in the file, in memory or
        /// both, across blocks or not, is the stream's positions there;
        /// versions and every list read whole agree.
        #[test]
        fn any_range_reads_the_positions_of_those_versions(
            lists in proptest::collection::vec((0u32..3_000, 0u32..40), 1..5),
            ranges in proptest::collection::vec(
                prop_oneof![(0u64..3_100, 0u64..2_100), (0u64..2, 0u64..2)],
                1..20,
            ),
        ) {
            let (streams, all, _file) = filed(&lists);
            for (i, expected) in all.iter().enumerate() {
                let s = StreamId(Uuid::from_u128(i as u128));
                prop_assert_eq!(streams.version(&s), expected.len() as u64);
                let whole = streams.all(&s).unwrap();
                prop_assert_eq!(whole.as_ref(), (!expected.is_empty()).then_some(expected));
                for &(start, n) in &ranges {
                    let got = streams.positions(&s, start, start + n).unwrap().unwrap_or_default();
                    let a = (start as usize).min(expected.len());
                    let b = ((start + n) as usize).min(expected.len());
                    prop_assert_eq!(&got[..], &expected[a..b]);
                }
                let v = expected.len() as u64;
                let filed = lists[i].0 as u64;
                prop_assert_eq!(streams.in_memory(&s, v), (v > filed).then(|| expected[v as usize - 1]));
            }
            let mut n = 0;
            streams.for_each(false, |s, p| {
                let i = s.0.as_u128() as usize;
                assert_eq!(p, &all[i][..]);
                n += 1;
                Ok(())
            }).unwrap();
            prop_assert_eq!(n, all.iter().filter(|a| !a.is_empty()).count());
        }
    }

    proptest! {
        /// A spill taken a slice at a time, while positions after its
        /// head are added to its streams and to new ones, installs a file
        /// of exactly the versions up to its head: every list reads whole
        /// before and after, and memory keeps only the versions after it.
        #[test]
        fn a_spill_taken_in_slices_while_positions_are_added_keeps_every_list(
            lists in proptest::collection::vec((0u32..3_000, 0u32..40), 1..6),
            slices in proptest::collection::vec(1usize..4, 1..6),
            added in proptest::collection::vec((0usize..8, 1u32..30), 0..12),
        ) {
            let sid = |i: usize| StreamId(Uuid::from_u128(i as u128));
            let (mut streams, mut all, _file) = filed(&lists);
            let head = all.iter().map(Vec::len).sum::<usize>() as u64;
            let dir = tempfile::tempdir().unwrap();
            let mut spill = streams.begin_spill(head);
            let (mut next, mut adds) = (head as u32 + 1, added.iter());
            for &n in slices.iter().cycle() {
                let more = spill.take(&streams, n).unwrap();
                spill.write_taken(dir.path()).unwrap();
                if let Some(&(i, count)) = adds.next() {
                    let i = i.min(all.len());
                    if i == all.len() {
                        all.push(Vec::new());
                    }
                    for _ in 0..count {
                        streams.push(sid(i), next);
                        all[i].push(next);
                        next += 1;
                    }
                }
                if !more {
                    break;
                }
            }
            let before = streams.to_vec();
            let spilled = spill.finish().unwrap();
            prop_assert!(streams.install(spilled).is_some());
            prop_assert_eq!(streams.filed_head(), head);
            prop_assert_eq!(streams.tails() as u64, u64::from(next - 1) - head);
            prop_assert_eq!(streams.to_vec(), before);
            for (i, expected) in all.iter().enumerate() {
                let whole = streams.all(&sid(i)).unwrap().unwrap_or_default();
                prop_assert_eq!(&whole, expected);
            }
            let mut in_file = 0;
            streams.for_each(true, |s, p| {
                let upto: Vec<u32> = all[s.0.as_u128() as usize]
                    .iter()
                    .copied()
                    .filter(|&p| u64::from(p) <= head)
                    .collect();
                assert_eq!(p, &upto[..]);
                in_file += p.len();
                Ok(())
            }).unwrap();
            prop_assert_eq!(in_file as u64, head);
        }
    }

    /// Every stream `i` of `all` reads its positions whole.
    fn each_reads_whole(streams: &Streams, all: &[Vec<u32>]) {
        for (i, expected) in all.iter().enumerate() {
            let s = StreamId(Uuid::from_u128(i as u128));
            assert_eq!(&streams.all(&s).unwrap().unwrap(), expected);
        }
    }

    /// Two spills begun from the same lists: once one is installed, the
    /// other is refused, both as it is taken (its lists' file is gone)
    /// and as it is installed, and the lists stay as the first left them.
    #[test]
    fn a_spill_of_lists_since_replaced_is_refused() {
        let (mut streams, all, _file) = filed(&[(1_500, 20), (30, 5)]);
        let dir = tempfile::tempdir().unwrap();
        let head = 1_555;
        let (first, mut second, mut third) = (
            streams.spill(dir.path(), head).unwrap(),
            streams.begin_spill(head),
            streams.begin_spill(head),
        );
        assert!(third.take(&streams, 1).unwrap(), "one stream of two taken");
        third.write_taken(dir.path()).unwrap();
        assert!(!third.take(&streams, 1).unwrap());
        third.write_taken(dir.path()).unwrap();
        assert!(streams.install(first).is_some());
        assert!(matches!(
            second.take(&streams, SPILL_SLICE),
            Err(StoreError::Internal(_))
        ));
        assert!(streams.install(third.finish().unwrap()).is_none());
        assert_eq!((streams.filed_head(), streams.tails()), (head, 0));
        each_reads_whole(&streams, &all);
    }

    /// A slice ends once it has copied [`SPILL_SLICE_POSITIONS`], however
    /// few streams it took: of two streams of 70,000 positions in memory,
    /// one slice takes one; the spill still writes every list whole.
    #[test]
    fn a_slice_ends_once_it_has_copied_enough_positions() {
        let (mut streams, all, _file) = filed(&[(10, 70_000), (0, 70_000), (3, 5)]);
        let dir = tempfile::tempdir().unwrap();
        let head = all.iter().map(Vec::len).sum::<usize>() as u64;
        let mut first = true;
        let spilled = streams
            .begin_spill(head)
            .write_slices(dir.path(), |spill| {
                let more = spill.take(&streams, SPILL_SLICE)?;
                if std::mem::take(&mut first) {
                    assert!(more);
                    let big = spill.taken.iter().filter(|(_, _, k)| *k == 70_000).count();
                    assert_eq!(big, 1, "one long tail a slice");
                }
                Ok(more)
            })
            .unwrap();
        assert!(streams.install(spilled).is_some());
        assert_eq!((streams.filed_head(), streams.tails()), (head, 0));
        each_reads_whole(&streams, &all);
    }

    /// A byte of a block changed after the CRC-32s were taken: reads of
    /// that block are refused as corrupt, naming the file; others go on.
    #[test]
    fn a_block_changed_after_the_open_is_refused() {
        let (streams, all, file) = filed(&[(2_500, 2)]);
        let s = StreamId(Uuid::from_u128(0));
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[3 + LIST_BLOCK * 4 + 5] ^= 0x40; // the second block
        std::fs::write(file.path(), &bytes).unwrap();
        assert_eq!(
            streams.positions(&s, 0, 1_024).unwrap().unwrap(),
            all[0][..1_024]
        );
        assert_eq!(
            streams.positions(&s, 2_048, 2_502).unwrap().unwrap(),
            all[0][2_048..]
        );
        match streams.positions(&s, 1_000, 1_100) {
            Err(StoreError::Corrupt { location, what }) => {
                assert!(
                    location.contains(&file.path().display().to_string()),
                    "{location}"
                );
                assert!(what.contains("changed after the open"), "{what}");
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        assert!(streams.all(&s).is_err());
    }
}
