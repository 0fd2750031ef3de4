//! The segment index's event ids: [`IdMap`], a 64-bit fingerprint of
//! every position's id and a hash table of positions keyed by them.
//!
//! A map from id to position keeps each 16-byte id in its bucket, and a
//! map holds half to seven-eighths of its buckets full: 24–48 bytes an
//! event. Sessions h to k kept the ids once, in position order (16 bytes
//! an event), with a table of 4-byte positions (5 bytes a bucket with its
//! control byte): 22–27 bytes an event. Here each position keeps only the
//! id's fingerprint, its 64-bit hash under the map's seed, which is also
//! the table's hash: 14–19 bytes an event, and a table grows without
//! hashing anything again.
//!
//! A fingerprint names an id only almost surely: two ids share one with a
//! probability of 2^-64 (about three chances in a million that any two of
//! ten million ids do). So the map answers with *candidates*, the
//! positions whose ids have the asked id's fingerprint (almost always none
//! or one), and whoever needs certainty reads the id in the frame there:
//! [`super::SegmentLog::find_events`] compares the frames it reads anyway,
//! the writer reads the frame before refusing an id as stored, and an open
//! that indexed two positions with one fingerprint reads both frames
//! ([`super::Index::shared`]). An id that is not stored (an import of new
//! events) costs a lookup as before, and no read; the writer leaves out
//! most of its own look-ups of the ids an import's planner has just looked
//! up ([`Ids::fps_after`], `SegmentCommitted::absent_after`).

use hashbrown::hash_table::{Entry, HashTable};
use std::hash::BuildHasher;
use uuid::Uuid;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::dense::Chunked;
use super::sorted_ids::{pair_bytes, Chunks, CopyMerge, SortedIds};
use super::IdHash;

/// Ids whose table memory is fetched at once ([`IdMap::prefetch`]): the
/// lines of 512 ids (two each, 64 KiB) stay in a core's L2 cache until
/// their look-ups or pushes use them.
pub(super) const PREFETCH_IDS: usize = 512;

/// Bytes of one table entry (a position).
const ENTRY: usize = std::mem::size_of::<u32>();

/// A hint to fetch the cache line holding `addr` ([`IdMap::prefetch`]).
#[inline(always)]
pub(super) fn prefetch_line(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch loads nothing into the program and cannot fault,
    // whatever the address; SSE (which has it) is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// [`IdMap::prefetch`] in `table`.
fn prefetch_in(table: &HashTable<u32>, fps: impl Iterator<Item = u64>) {
    let Some((ctrl, mask)) = layout(table) else {
        return;
    };
    for fp in fps {
        let i = probe_start(fp, mask);
        prefetch_line(ctrl.wrapping_add(i));
        prefetch_line(ctrl.wrapping_sub((i + 1) * ENTRY));
    }
}

/// The bucket where hashbrown's probe for hash `fp` starts, in a table
/// of `mask + 1` buckets.
fn probe_start(fp: u64, mask: usize) -> usize {
    fp as usize & mask
}

/// Where `table`'s control bytes start and its bucket mask, from one full
/// bucket's address ([`IdMap::prefetch`]); `None` while it is empty.
fn layout(table: &HashTable<u32>) -> Option<(usize, usize)> {
    let i = table.iter_buckets().next()?;
    let entry = table.get_bucket(i)? as *const u32 as usize;
    Some((entry + (i + 1) * ENTRY, table.num_buckets() - 1))
}

/// The fingerprint a table entry's position holds, for the table's growth.
fn rehash(by_position: &Chunked<u64>) -> impl Fn(&u32) -> u64 + '_ {
    move |&p| by_position[p as usize - 1]
}

/// Puts positions `first..first + n` into `table`, the fingerprint of
/// position `first + i` being `fp(i)`, the slots of the next ids fetched
/// together ahead ([`PREFETCH_IDS`]; the table has a full bucket to find
/// its layout by from the first); `rehash` is the table's hasher, should
/// it grow.
fn fill(
    table: &mut HashTable<u32>,
    n: usize,
    first: u32,
    fp: impl Fn(usize) -> u64,
    rehash: impl Fn(&u32) -> u64,
) {
    for i in 0..n {
        if i % PREFETCH_IDS == 1 {
            let next = i..n.min(i + PREFETCH_IDS);
            prefetch_in(table, next.map(&fp));
        }
        table.insert_unique(fp(i), first + i as u32, &rehash);
    }
}

/// Where [`IdMap::serial`]s come from.
static MAP_SERIALS: AtomicU64 = AtomicU64::new(1);

/// Puts `position`, whose id has fingerprint `fp`, into `table` (entries
/// already there are found through `by_position`); returns a position
/// already holding `fp`, if any. One probe where the fingerprint is new
/// (every id but almost never): the entry's own slot takes the position.
fn insert(
    table: &mut HashTable<u32>,
    by_position: &Chunked<u64>,
    fp: u64,
    position: u32,
) -> Option<u32> {
    match table.entry(
        fp,
        |&p| by_position.get(p as usize - 1) == Some(&fp),
        rehash(by_position),
    ) {
        Entry::Vacant(v) => {
            v.insert(position);
            None
        }
        Entry::Occupied(o) => {
            let earlier = *o.get();
            table.insert_unique(fp, position, rehash(by_position));
            Some(earlier)
        }
    }
}

/// Event id fingerprints by position, and positions by fingerprint.
pub(super) struct IdMap {
    /// `by_position[p - 1]` is the fingerprint of position p's id.
    by_position: Chunked<u64>,
    /// Positions, found by the fingerprint of the id they hold.
    table: HashTable<u32>,
    hasher: IdHash,
    /// This map's own number, never another's: a table grown apart from
    /// it ([`Growth`]) is put in only here.
    serial: u64,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap::with_hasher(IdHash::default())
    }
}

impl IdMap {
    pub(super) fn with_hasher(hasher: IdHash) -> IdMap {
        IdMap {
            by_position: Chunked::default(),
            table: HashTable::new(),
            hasher,
            serial: MAP_SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(super) fn hasher(&self) -> &IdHash {
        &self.hasher
    }

    /// The fingerprint of `id` in this map.
    pub(super) fn fingerprint(&self, id: &Uuid) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Ids held: one for each position 1..=len.
    pub(super) fn len(&self) -> usize {
        self.by_position.len()
    }

    /// The fingerprints of positions 1..=len, in order.
    fn fps(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_position.iter().copied()
    }

    /// Adds to `out` the fingerprints of positions `from + 1..=to` (those
    /// held of them).
    fn fps_into(&self, from: usize, to: usize, out: &mut Vec<u64>) {
        out.extend((from..to.min(self.len())).map(|i| self.by_position[i]));
    }

    /// Ids the table holds before it must grow.
    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The positions whose ids have `id`'s fingerprint, in no order: where
    /// `id` is, if it is stored, and (almost never) others. An id that is
    /// not stored (the common lookup: every id of a fresh import) costs one
    /// probe; all positions of a fingerprint are walked only when one is
    /// found.
    pub(super) fn candidates(&self, id: &Uuid) -> impl Iterator<Item = u32> + '_ {
        let fp = self.fingerprint(id);
        let holds = move |p: &u32| self.by_position.get(*p as usize - 1) == Some(&fp);
        self.table
            .find(fp, holds)
            .is_some()
            .then(|| self.table.iter_hash(fp).copied().filter(move |p| holds(p)))
            .into_iter()
            .flatten()
    }

    /// Whether position `position` holds an id with `id`'s fingerprint
    /// (the index agrees with a frame there that holds `id`).
    pub(super) fn holds(&self, id: &Uuid, position: u64) -> bool {
        let Some(i) = (position as usize).checked_sub(1) else {
            return false;
        };
        self.by_position.get(i) == Some(&self.fingerprint(id))
    }

    /// Adds `id` as the id of the next position (`len() + 1`, which the
    /// caller has checked is `position`). Returns an earlier position
    /// whose id has the same fingerprint, if there is one: the same id
    /// stored twice, or (almost never) another id; the caller tells which
    /// by reading the frames.
    pub(super) fn push(&mut self, id: Uuid, position: u32) -> Option<u32> {
        let fp = self.fingerprint(&id);
        self.push_fp(fp, position)
    }

    /// [`IdMap::push`] of an id whose fingerprint is `fp`.
    fn push_fp(&mut self, fp: u64, position: u32) -> Option<u32> {
        debug_assert_eq!(position as usize, self.by_position.len() + 1);
        let shared = insert(&mut self.table, &self.by_position, fp, position);
        self.by_position.push(fp);
        shared
    }

    /// Asks the processor to fetch, ahead of the look-ups or pushes of
    /// these fingerprints, the table's memory those will touch first: the
    /// control bytes where each fingerprint's probe starts and the entry
    /// slot beside them. A group or batch of ids would otherwise wait for
    /// those cache lines one id after another (the table is far larger
    /// than the cache); fetched together, their misses overlap.
    ///
    /// Only a hint: the addresses follow hashbrown's layout (entry `i` at
    /// `ctrl - (i + 1) * size_of::<u32>()`, the probe of hash `h` starting
    /// at control byte `h & (buckets - 1)`), found from one full bucket's
    /// address; were that layout to change, the fetches would be wasted,
    /// never wrong (a prefetch reads nothing into the program and cannot
    /// fault). The test `prefetch_addresses_follow_the_table_layout`
    /// checks the layout.
    pub(super) fn prefetch(&self, fps: impl Iterator<Item = u64>) {
        prefetch_in(&self.table, fps);
    }

    /// Where the table's control bytes start and its bucket mask
    /// ([`layout`]).
    #[cfg(test)]
    fn layout(&self) -> Option<(usize, usize)> {
        layout(&self.table)
    }

    /// A table of room for `capacity` ids holding every position this
    /// holds, for [`IdMap::replace_table`]: built while readers go on.
    pub(super) fn bigger_table(&self, capacity: usize) -> HashTable<u32> {
        let mut table = HashTable::with_capacity(capacity.max(self.len()));
        let by_position = &self.by_position;
        fill(
            &mut table,
            by_position.len(),
            1,
            |i| by_position[i],
            rehash(by_position),
        );
        table
    }

    /// Puts in a table from [`IdMap::bigger_table`] made from this map,
    /// returning the old one to free; a table made before the map last
    /// changed (it would miss ids) is returned instead, and the map keeps
    /// its own.
    pub(super) fn replace_table(&mut self, table: HashTable<u32>) -> HashTable<u32> {
        if table.len() != self.table.len() {
            debug_assert!(false, "a stale id table");
            return table;
        }
        std::mem::replace(&mut self.table, table)
    }

    /// Makes room for `additional` more ids without growing.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, rehash(&self.by_position));
    }

    /// Bytes allocated for the fingerprints and the table.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.by_position.allocated_bytes() + self.table.allocation_size()
    }

    /// A map of `first`'s positions, then `then`'s after them (both
    /// fingerprinted alike): [`Ids::thaw`].
    fn joined(first: &IdMap, then: &IdMap) -> IdMap {
        let mut map = IdMap::with_hasher(first.hasher.clone());
        map.table = HashTable::with_capacity(first.len() + then.len());
        for fp in first.fps().chain(then.fps()) {
            map.push_fp(fp, map.len() as u32 + 1);
        }
        map
    }

    /// Every `(fingerprint, position)`, in position order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        (0..self.by_position.len()).map(|i| (self.by_position[i], i as u32 + 1))
    }

    /// The position of `id` when exactly one position has its
    /// fingerprint (tests, where no two ids share one).
    #[cfg(test)]
    pub(super) fn only(&self, id: &Uuid) -> Option<u32> {
        let mut found = self.candidates(id);
        let first = found.next();
        assert!(found.next().is_none(), "two positions share a fingerprint");
        first
    }

    /// Gives positions `a` and `b` each other's ids (tests: an index that
    /// disagrees with the log).
    #[cfg(test)]
    pub(super) fn swap_for_test(&mut self, a: u32, b: u32) {
        let mut fps: Vec<u64> = self.iter().map(|(fp, _)| fp).collect();
        fps.swap(a as usize - 1, b as usize - 1);
        let mut table = HashTable::new();
        let mut by_position = Chunked::default();
        for (i, fp) in fps.into_iter().enumerate() {
            by_position.push(fp);
            table.insert_unique(fp, i as u32 + 1, rehash(&by_position));
        }
        self.by_position = by_position;
        self.table = table;
    }
}

/// Ids a pass of [`Ids::sorted_bytes`] puts in order at a time (2 MB).
const PASS_PAIRS: usize = 1 << 17;

/// The most buckets, 2^BUCKET_BITS, the table's pairs are placed in when
/// they are put in order ([`Ids::merged`]): 2^17 counts, 0.5 MB. With
/// the counts, a pass of [`PASS_PAIRS`] holds less than the comparison
/// sort of twice as many did before it (docs/performance.md, "Session
/// as").
const BUCKET_BITS: u32 = 17;

/// Runs of ids in files at which they are merged into one: by the
/// writer on a thread of its own ([`Ids::begin_merge`]), while its spills
/// go on adding runs after them; by an open that scans every frame in the
/// spill that finds this many ([`Ids::spill_in_place`]).
pub(super) const MAX_RUNS: usize = 8;

/// Runs of ids at which the writer merges them all into one
/// ([`Ids::begin_merge`]): the ids of 9 spills, as when the spill that
/// found [`MAX_RUNS`] merged them with its table's (until session av).
pub(super) const MERGE_AT: usize = MAX_RUNS + 1;

/// Runs of ids at which the writer waits for the merge in flight (once
/// [`MAX_RUNS`] more were added since it began): a look-up probes every
/// run's filter, so their number stays near this while merges succeed
/// and are slower than the spills after them (a spill's run may be put
/// in while the writer waits: one more). After a merge that fails the
/// runs are left as they are, and the next merge begins at [`MAX_RUNS`]
/// more.
pub(super) const MOST_RUNS: usize = 2 * MAX_RUNS;

/// A table of room for this many ids or more grows apart from it, on a
/// thread of its own ([`Ids::begin_growth`]); a smaller one grows where it
/// is (a copy of at most 57,344 positions: about a millisecond).
pub(super) const GROW_APART_FROM: usize = 1 << 16;

/// A growth apart begins once the table would hold more than three
/// quarters of its room ([`Ids::begin_growth`]): the last quarter is what
/// the writer pushes while it runs before it waits for it.
const GROW_AHEAD_PARTS: usize = 4;

/// Fingerprints a growth apart copies under the index's read lock at a
/// time ([`Ids::growth_slice`]): 128 KiB, a few microseconds.
pub(super) const GROWTH_SLICE: usize = 1 << 14;

/// A table twice the size of the ids' table, built apart from it on a
/// thread of its own ([`Ids::begin_growth`]) while the writer goes on
/// pushing into the table: filled with the positions the table held as
/// it began, a slice of fingerprints at a time ([`Ids::growth_slice`],
/// [`Growth::fill`]), then brought up to date and put in the table's
/// place by the writer ([`Ids::catch_up`], [`Ids::install_growth`]).
pub(super) struct Growth {
    /// The map it is built from ([`IdMap::serial`]).
    serial: u64,
    /// Ids it is made with room for.
    room: usize,
    /// Positions 1..=built are in it.
    built: usize,
    /// Positions the map held as it began: built apart up to there.
    until: usize,
    table: HashTable<u32>,
    /// Where its table's bytes are counted while it holds one (the log's
    /// [`super::SegmentLog::index_bytes`]), and how many are counted
    /// there now.
    counted: Option<(Arc<AtomicUsize>, usize)>,
}

/// Its table's bytes are no longer counted once it is dropped, or put in
/// the ids' table's place (which counts them then).
impl Drop for Growth {
    fn drop(&mut self) {
        if let Some((bytes, n)) = self.counted.take() {
            bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Growth {
    /// Counts its table's bytes in `bytes` from now on, as they change,
    /// until it is dropped or put in ([`Ids::install_growth`]).
    pub(super) fn counted_in(mut self, bytes: Arc<AtomicUsize>) -> Growth {
        self.counted = Some((bytes, 0));
        self.recount();
        self
    }

    /// Counts its table's bytes again where they are counted.
    fn recount(&mut self) {
        let now = self.table_bytes();
        if let Some((bytes, n)) = &mut self.counted {
            if now >= *n {
                bytes.fetch_add(now - *n, Ordering::Relaxed);
            } else {
                bytes.fetch_sub(*n - now, Ordering::Relaxed);
            }
            *n = now;
        }
    }

    /// Bytes of its table (0 before it made one).
    fn table_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    /// Whether every position held as it began is in it.
    pub(super) fn built_apart(&self) -> bool {
        self.built >= self.until
    }

    /// Puts in the positions after those built, whose fingerprints are
    /// `fps` ([`Ids::growth_slice`]); the table is made at the first.
    /// Never grows the table (its hasher would need every fingerprint):
    /// `Err` when it has no room for them.
    pub(super) fn fill(&mut self, fps: &[u64]) -> Result<(), String> {
        if self.table.capacity() < self.room {
            self.table = HashTable::with_capacity(self.room);
            self.recount();
        }
        if self.table.capacity() - self.table.len() < fps.len() {
            return Err("a table grown apart has no room left".into());
        }
        // Room for them all: hashbrown calls the hasher only to grow a
        // table that has none left.
        fill(
            &mut self.table,
            fps.len(),
            self.built as u32 + 1,
            |i| fps[i],
            |_| unreachable!("a table grown apart grew"),
        );
        self.built += fps.len();
        Ok(())
    }

    /// Ids the table it builds holds before it must grow.
    #[cfg(test)]
    pub(super) fn room(&self) -> usize {
        self.room
    }

    /// The room of the table it grows (half its own: [`Ids::begin_growth`]).
    pub(super) fn grown_from(&self) -> usize {
        self.room / 2
    }
}

/// A log's event ids: those of the index snapshot it was opened from and
/// those the writer spilled since, each in a file ([`SortedIds`]: a filter
/// and a block directory in memory, about 2 bytes an id), then those
/// indexed since in an [`IdMap`] (14–19 bytes an id), which numbers them
/// from 1 after the files'. While the writer spills a full table on a
/// thread of its own ([`Ids::freeze`]), that table is **frozen** between
/// the files and a new one: looked up as it was, and added to no more.
pub(super) struct Ids {
    /// Runs of consecutive positions: the first from position 1, each
    /// after the one before it.
    runs: Vec<Arc<SortedIds>>,
    /// Positions after the runs', numbered from 1 (`p - base_len`), held
    /// while they are written to a run ([`Ids::freeze`]).
    frozen: Option<Arc<IdMap>>,
    /// Positions after those, numbered from 1 (`p - tail_base`).
    tail: IdMap,
}

/// A frozen table's spill ([`Ids::freeze`]): what a thread of its own
/// needs to write its run ([`Spill::write`]) while the table serves
/// look-ups and a new one takes the appends.
pub(super) struct Spill {
    frozen: Arc<IdMap>,
    /// The runs merged into this one, all of them: an open's scan that
    /// finds [`MAX_RUNS`] held ([`Ids::spill_in_place`]); none for the
    /// writer's spills.
    merging: Vec<Arc<SortedIds>>,
    /// Positions held in files before the frozen table's.
    base: u32,
}

/// Pairs a merge writes between two looks at whether it is to stop
/// ([`Merge::write`]): about a millisecond's work.
const STOP_CHECK_PAIRS: u32 = 1 << 16;

/// A merge of runs on a thread of its own ([`Ids::begin_merge`]): the
/// runs held as it began, the first ones, merged into one run
/// ([`Merge::write`]) that takes their place ([`Ids::install_merge`]).
pub(super) struct Merge {
    runs: Vec<Arc<SortedIds>>,
}

impl Merge {
    /// Writes the run of every id of the merged runs, sorted, as one run
    /// of their positions ([`SortedIds::write_run`]; the runs held are
    /// from position 1 on): their pairs merged as they are read, nothing
    /// of them held in memory but a block each. Stops with an error once
    /// `stop` is set (the log's close).
    pub(super) fn write(
        &self,
        dir: &std::path::Path,
        stop: &AtomicBool,
    ) -> Result<SortedIds, String> {
        let (Some(first), Some(last)) = (self.runs.first(), self.runs.last()) else {
            return Err("no runs of ids to merge".into());
        };
        let (first, last) = (first.first(), last.last());
        // The positions of a table (here empty) would come after the runs'.
        let base = u32::try_from(last).map_err(|_| "a run of ids past u32 positions")?;
        if stop.load(Ordering::Relaxed) {
            return Err("stopped: the log is closing".into());
        }
        let mut written = 0u32;
        SortedIds::write_run(dir, first, last - first, |each| {
            merged(
                &IdMap::default(),
                base,
                &self.runs,
                PASS_PAIRS,
                &mut |fp, p| {
                    written = written.wrapping_add(1);
                    if written.is_multiple_of(STOP_CHECK_PAIRS) && stop.load(Ordering::Relaxed) {
                        return Err(std::io::Error::other("stopped: the log is closing"));
                    }
                    each(fp, p)
                },
            )
        })
    }

    /// Runs it merges.
    pub(super) fn len(&self) -> usize {
        self.runs.len()
    }
}

impl Spill {
    /// Writes the run ([`SortedIds::write_run`]): the frozen table's ids,
    /// and those of the runs it merges.
    pub(super) fn write(&self, dir: &std::path::Path) -> Result<SortedIds, String> {
        let first = if self.merging.is_empty() {
            u64::from(self.base)
        } else {
            0
        };
        let n = u64::from(self.base) + self.frozen.len() as u64 - first;
        SortedIds::write_run(dir, first, n, |each| {
            merged(&self.frozen, self.base, &self.merging, PASS_PAIRS, each)
        })
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::from_map(IdMap::default())
    }
}

impl Ids {
    #[cfg(test)]
    pub(super) fn with_hasher(hasher: IdHash) -> Ids {
        Ids::from_map(IdMap::with_hasher(hasher))
    }

    /// Every id in the table.
    pub(super) fn from_map(map: IdMap) -> Ids {
        Ids {
            runs: Vec::new(),
            frozen: None,
            tail: map,
        }
    }

    /// The ids of a snapshot, left in its file, fingerprinted with
    /// `hasher` (the snapshot's seed).
    pub(super) fn with_base(base: SortedIds, hasher: IdHash) -> Ids {
        Ids {
            runs: vec![Arc::new(base)],
            frozen: None,
            tail: IdMap::with_hasher(hasher),
        }
    }

    /// Positions held in files: 1..=base_len.
    fn base_len(&self) -> u32 {
        // A log's positions fit a u32 (`max_events`, checked as indexed).
        self.runs.last().map_or(0, |r| r.last() as u32)
    }

    /// Positions held in files and in the frozen table: the table's are
    /// after them.
    fn tail_base(&self) -> u32 {
        self.base_len() + self.frozen.as_ref().map_or(0, |f| f.len() as u32)
    }

    /// The runs of ids held in files, in position order.
    pub(super) fn runs(&self) -> &[Arc<SortedIds>] {
        &self.runs
    }

    pub(super) fn hasher(&self) -> &IdHash {
        self.tail.hasher()
    }

    pub(super) fn fingerprint(&self, id: &Uuid) -> u64 {
        self.tail.fingerprint(id)
    }

    /// Ids held: one for each position 1..=len.
    pub(super) fn len(&self) -> usize {
        self.tail_base() as usize + self.tail.len()
    }

    /// Adds to `out` the positions whose ids have `id`'s fingerprint
    /// ([`IdMap::candidates`]), the table's then the others'.
    pub(super) fn candidates_into(&self, id: &Uuid, out: &mut Vec<u32>) -> Result<(), String> {
        let base = self.tail_base();
        out.extend(self.tail.candidates(id).map(|r| r + base));
        self.in_base_into(id, out)
    }

    /// [`Ids::candidates_into`], collected.
    pub(super) fn candidates(&self, id: &Uuid) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        self.candidates_into(id, &mut out)?;
        Ok(out)
    }

    /// Adds to `out` the positions held before the table's (in files, and
    /// in the frozen table) whose ids have `id`'s fingerprint.
    pub(super) fn in_base_into(&self, id: &Uuid, out: &mut Vec<u32>) -> Result<(), String> {
        if let Some(frozen) = &self.frozen {
            let base = self.base_len();
            out.extend(frozen.candidates(id).map(|r| r + base));
        }
        let fp = self.fingerprint(id);
        for run in &self.runs {
            run.positions(fp, out)?;
        }
        Ok(())
    }

    /// Adds to `out` the fingerprints of the ids of positions after
    /// `through`, in order, when the tables hold them all (the frozen one
    /// and the one after it); `false`, adding nothing, when some are in a
    /// run of ids in a file (or `through` is past the last position).
    pub(super) fn fps_after(&self, through: u32, out: &mut Vec<u64>) -> bool {
        let base = self.base_len();
        if through < base || through as usize > self.len() {
            return false;
        }
        if let Some(frozen) = &self.frozen {
            let from = (through - base) as usize;
            frozen.fps_into(from, frozen.len(), out);
        }
        let tail_base = self.tail_base();
        let from = through.saturating_sub(tail_base) as usize;
        self.tail.fps_into(from, self.tail.len(), out);
        true
    }

    /// Whether position `position` holds an id with `id`'s fingerprint.
    pub(super) fn holds(&self, id: &Uuid, position: u64) -> Result<bool, String> {
        let tail_base = u64::from(self.tail_base());
        if position > tail_base {
            return Ok(self.tail.holds(id, position - tail_base));
        }
        let base = u64::from(self.base_len());
        if let (Some(frozen), true) = (&self.frozen, position > base) {
            return Ok(frozen.holds(id, position - base));
        }
        let Some(run) = self.runs.iter().find(|r| position <= r.last()) else {
            return Ok(false);
        };
        let mut out = Vec::new();
        run.positions(self.fingerprint(id), &mut out)?;
        Ok(out.iter().any(|&p| u64::from(p) == position))
    }

    /// Adds `id` as the id of the next position ([`IdMap::push`]);
    /// returns an earlier position *of the table* with its fingerprint:
    /// the caller looks before the table ([`Ids::in_base_into`]) where it
    /// must.
    pub(super) fn push(&mut self, id: Uuid, position: u32) -> Option<u32> {
        let base = self.tail_base();
        debug_assert!(position > base);
        self.tail
            .push(id, position - base)
            .map(|earlier| earlier + base)
    }

    /// [`IdMap::prefetch`] of the table, and of the blocks of the files'
    /// filters that look-ups of these fingerprints will probe.
    pub(super) fn prefetch(&self, fps: impl Iterator<Item = u64>) {
        if self.runs.is_empty() && self.frozen.is_none() {
            return self.tail.prefetch(fps);
        }
        let fps: Vec<u64> = fps.collect();
        for run in &self.runs {
            for &fp in &fps {
                prefetch_line(run.filter_line(fp));
            }
        }
        if let Some(frozen) = &self.frozen {
            frozen.prefetch(fps.iter().copied());
        }
        self.tail.prefetch(fps.into_iter());
    }

    /// [`IdMap::prefetch`] of the table that takes the pushes (not the
    /// frozen one's, nor the files' filters, which a push does not touch).
    pub(super) fn prefetch_pushes(&self, fps: impl Iterator<Item = u64>) {
        self.tail.prefetch(fps);
    }

    /// [`IdMap::prefetch`] of the tables only (`verify`, which does not
    /// look up the ids held in files).
    pub(super) fn prefetch_table(&self, fps: impl Iterator<Item = u64>) {
        match &self.frozen {
            Some(frozen) => {
                let fps: Vec<u64> = fps.collect();
                frozen.prefetch(fps.iter().copied());
                self.tail.prefetch(fps.into_iter());
            }
            None => self.tail.prefetch(fps),
        }
    }

    /// Whether the table must grow to take `adding` more ids.
    pub(super) fn table_full_for(&self, adding: usize) -> bool {
        self.tail.len().saturating_add(adding) > self.tail.capacity()
    }

    /// [`IdMap::bigger_table`] for `adding` more ids (twice the room, as
    /// the table's own growth would give).
    pub(super) fn bigger_table(&self, adding: usize) -> HashTable<u32> {
        let wanted = self.tail.len().saturating_add(adding);
        self.tail
            .bigger_table(wanted.max(self.tail.capacity().saturating_mul(2)))
    }

    /// [`IdMap::replace_table`].
    pub(super) fn replace_table(&mut self, table: HashTable<u32>) -> HashTable<u32> {
        self.tail.replace_table(table)
    }

    /// [`IdMap::reserve`].
    pub(super) fn reserve(&mut self, additional: usize) {
        self.tail.reserve(additional);
    }

    /// A growth of the table apart from it ([`Growth`]), when one is due:
    /// the table has room for `from` ids or more and would hold, with
    /// `adding` more, more than three quarters of its room
    /// ([`GROW_AHEAD_PARTS`]), yet not more than its room (a table that
    /// must grow at once grows where it is, [`Ids::bigger_table`]), and it
    /// has room for fewer than `most`, the most it holds before it is
    /// spilled. Made with twice the room, as the table's own growth would
    /// give.
    pub(super) fn begin_growth(&self, adding: usize, from: usize, most: usize) -> Option<Growth> {
        let (len, room) = (self.tail.len(), self.tail.capacity());
        let due = len.saturating_add(adding);
        if room < from.max(1) || room >= most || due <= room - room / GROW_AHEAD_PARTS || due > room
        {
            return None;
        }
        Some(Growth {
            serial: self.tail.serial,
            room: room.saturating_mul(2),
            built: 0,
            until: len,
            table: HashTable::new(),
            counted: None,
        })
    }

    /// Puts in `out` (cleared first) the fingerprints of `growth`'s next
    /// slice, up to `most` of them. `Err` once the table it is built from
    /// was replaced (frozen for a spill, or taken back after one).
    pub(super) fn growth_slice(
        &self,
        growth: &Growth,
        most: usize,
        out: &mut Vec<u64>,
    ) -> Result<(), String> {
        if growth.serial != self.tail.serial {
            return Err("the id table was replaced while it grew".into());
        }
        out.clear();
        let to = growth.until.min(growth.built.saturating_add(most));
        self.tail.fps_into(growth.built, to, out);
        Ok(())
    }

    /// Brings a growth built apart up to date: the positions pushed since
    /// it began are put in it. `false`, and nothing done, when it was built
    /// from a table since replaced, or not built yet.
    pub(super) fn catch_up(&self, growth: &mut Growth) -> bool {
        let len = self.tail.len();
        if growth.serial != self.tail.serial || !growth.built_apart() || growth.built > len {
            return false;
        }
        let (by_position, built) = (&self.tail.by_position, growth.built);
        fill(
            &mut growth.table,
            len - built,
            built as u32 + 1,
            |i| by_position[built + i],
            rehash(by_position),
        );
        growth.built = len;
        // Grown if it had no room left for the positions pushed since.
        growth.recount();
        true
    }

    /// Puts `growth`'s table in the table's place, returning the old one
    /// to free. A growth of another table, or not brought up to date
    /// ([`Ids::catch_up`]), is handed back and nothing changes.
    pub(super) fn install_growth(&mut self, mut growth: Growth) -> Result<HashTable<u32>, Growth> {
        let len = self.tail.len();
        if growth.serial != self.tail.serial || growth.built != len || growth.table.len() != len {
            return Err(growth);
        }
        let old = self.tail.replace_table(std::mem::take(&mut growth.table));
        // Its bytes are the table's from here: no longer counted apart
        // (the caller holds the index's write lock, so no reader of
        // `index_bytes` sees them counted twice or not at all).
        drop(growth);
        Ok(old)
    }

    /// Ids in the table (those after the files').
    pub(super) fn table_len(&self) -> usize {
        self.tail.len()
    }

    /// Ids the table holds before it must grow.
    pub(super) fn table_capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Bytes allocated for the table, and for the files' filters and
    /// directories.
    pub(super) fn allocated_bytes(&self) -> usize {
        let runs: usize = self.runs.iter().map(|r| r.allocated_bytes()).sum();
        let frozen = self.frozen.as_ref().map_or(0, |f| f.allocated_bytes());
        self.tail.allocated_bytes() + frozen + runs
    }

    /// Spills the table where it is, for an open that scans every frame
    /// (which indexes nothing meanwhile): [`Ids::freeze`], [`Spill::write`]
    /// and [`Ids::install`] one after another, the writer's spill without
    /// its thread. A run that cannot be written leaves the table as it
    /// was ([`Ids::thaw`], which takes the table back whole).
    pub(super) fn spill_in_place(&mut self, dir: &std::path::Path) -> Result<(), String> {
        let spill = self
            .freeze_merging(self.runs.len() >= MAX_RUNS)
            .ok_or("a table of ids is being spilled already")?;
        let installed = spill.write(dir).and_then(|run| {
            self.install(&spill, run)
                .map_err(|_| "a stale run of ids".into())
        });
        if installed.is_err() {
            drop(spill);
            self.thaw();
        }
        installed.map(drop)
    }

    /// Freezes the table for a spill on a thread of its own: the table
    /// is kept, looked up as before, while a new one takes the ids pushed
    /// after it, until [`Ids::install`] puts in the run [`Spill::write`]
    /// makes of it (or [`Ids::thaw`] takes it back). `None` while a table
    /// is frozen already. The run holds the table's ids only: the runs
    /// before it are merged apart ([`Ids::begin_merge`]).
    pub(super) fn freeze(&mut self) -> Option<Spill> {
        self.freeze_merging(false)
    }

    /// [`Ids::freeze`]; with `merge`, the run merges every run held with
    /// the table's ids and replaces them (an open that scans every frame,
    /// which indexes nothing while it spills).
    fn freeze_merging(&mut self, merge: bool) -> Option<Spill> {
        if self.frozen.is_some() {
            return None;
        }
        let empty = IdMap::with_hasher(self.tail.hasher().clone());
        let frozen = Arc::new(std::mem::replace(&mut self.tail, empty));
        self.frozen = Some(frozen.clone());
        let merging = match merge {
            true => self.runs.clone(),
            false => Vec::new(),
        };
        Some(Spill {
            frozen,
            merging,
            base: self.base_len(),
        })
    }

    /// Puts in the run [`Spill::write`] made of the frozen table `spill`
    /// froze, in its place (and in the runs' it merged), returning what it
    /// replaces, to free. A spill of another table, or a run that does not
    /// cover its positions, is refused and nothing changes.
    pub(super) fn install(
        &mut self,
        spill: &Spill,
        run: SortedIds,
    ) -> Result<Vec<Arc<SortedIds>>, SortedIds> {
        let frozen = match &self.frozen {
            Some(frozen) if Arc::ptr_eq(frozen, &spill.frozen) => frozen,
            _ => return Err(run),
        };
        let merging = !spill.merging.is_empty();
        let first = if merging { 0 } else { self.base_len() };
        let last = u64::from(self.base_len()) + frozen.len() as u64;
        // Refused, not asserted: this runs under the index's write lock.
        if run.first() != u64::from(first) || run.last() != last || spill.base != self.base_len() {
            return Err(run);
        }
        self.frozen = None;
        let old = match merging {
            true => std::mem::take(&mut self.runs),
            false => Vec::new(),
        };
        self.runs.push(Arc::new(run));
        Ok(old)
    }

    /// A merge of every run held into one, for a thread of its own
    /// ([`Merge::write`]), once `at_least` (the writer's: [`MERGE_AT`] or
    /// more) and at least two are held; `None` before. Look-ups go on in
    /// the runs as they are, and spills go on adding runs after them,
    /// until [`Ids::install_merge`] puts the merged run in their place.
    pub(super) fn begin_merge(&self, at_least: usize) -> Option<Merge> {
        (self.runs.len() >= at_least.max(2)).then(|| Merge {
            runs: self.runs.clone(),
        })
    }

    /// Puts in the run [`Merge::write`] made of `merge`'s runs, in their
    /// place, returning them, to free. Refused, and nothing changes,
    /// unless the runs it merged are still the first runs held and the
    /// run covers exactly their positions.
    pub(super) fn install_merge(
        &mut self,
        merge: &Merge,
        run: SortedIds,
    ) -> Result<Vec<Arc<SortedIds>>, SortedIds> {
        let k = merge.runs.len();
        let same = k > 0
            && self.runs.len() >= k
            && self
                .runs
                .iter()
                .zip(&merge.runs)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let first = merge.runs.first().map_or(0, |r| r.first());
        let last = merge.runs.last().map_or(0, |r| r.last());
        // Refused, not asserted: this runs under the index's write lock.
        if !same || run.first() != first || run.last() != last {
            return Err(run);
        }
        Ok(self.runs.splice(..k, [Arc::new(run)]).collect())
    }

    /// Takes the frozen table back into the table, as if it had not been
    /// frozen (a spill that failed): the table is rebuilt from both
    /// tables' fingerprints. Nothing to do when none is frozen.
    pub(super) fn thaw(&mut self) {
        let Some(frozen) = self.frozen.take() else {
            return;
        };
        let hasher = self.tail.hasher().clone();
        let tail = std::mem::replace(&mut self.tail, IdMap::with_hasher(hasher.clone()));
        self.tail = match Arc::try_unwrap(frozen) {
            Ok(frozen) if tail.len() == 0 => frozen,
            Ok(frozen) => IdMap::joined(&frozen, &tail),
            Err(frozen) => IdMap::joined(&frozen, &tail),
        };
    }

    /// Whether a table is frozen ([`Ids::freeze`]).
    pub(super) fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Hands `out` the bytes of every `(fingerprint, position)`, sorted
    /// (what an index snapshot stores), in runs: with the ids of one file
    /// and the table's (a log opened from its snapshot), the file's pairs
    /// between two of the table's are copied as read ([`merged_bytes`]);
    /// otherwise one pair at a time ([`Ids::sorted_pairs_by`]).
    pub(super) fn sorted_bytes(
        &self,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.sorted_bytes_by(PASS_PAIRS, out)
    }

    /// [`Ids::sorted_bytes`], sorting about `pass_pairs` of the table at a
    /// time.
    fn sorted_bytes_by(
        &self,
        pass_pairs: usize,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        match (self.runs.as_slice(), &self.frozen) {
            ([run], None) => {
                let mut old = CopyMerge::new(run.pairs());
                merged_bytes(&self.tail, self.base_len(), &mut old, pass_pairs, out)
            }
            _ => self.sorted_pairs_by(pass_pairs, |fp, p| out(&pair_bytes(fp, p))),
        }
    }

    /// Hands `each` every `(fingerprint, position)`, sorted, putting about
    /// `pass_pairs` of the table in order at a time.
    fn sorted_pairs_by(
        &self,
        pass_pairs: usize,
        mut each: impl FnMut(u64, u32) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.merged(&self.runs, pass_pairs, &mut each)
    }

    /// [`merged`] of the table (after the files' positions) and `runs`.
    fn merged(
        &self,
        runs: &[Arc<SortedIds>],
        pass_pairs: usize,
        each: &mut dyn FnMut(u64, u32) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if self.frozen.is_some() {
            // Only a table being spilled is put in order beside files
            // (`Spill::write`); the writer ends a spill before anything
            // else sorts the ids.
            return Err(std::io::Error::other(
                "the ids are being spilled: sorted once the spill ends",
            ));
        }
        merged(&self.tail, self.base_len(), runs, pass_pairs, each)
    }

    /// Every group of two or more positions whose ids share a
    /// fingerprint, each in increasing order, wherever they are held: one
    /// merged pass over the files and the table. A scan that spilled its
    /// ids finds them here (its runs were written without looking for
    /// them), for the open to read each group's frames once
    /// (`check_groups`): linear in the positions, however many share one
    /// fingerprint (pairs of them would be quadratic).
    pub(super) fn sharing_groups(&self) -> std::io::Result<Vec<Vec<u32>>> {
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut group: Vec<u32> = Vec::new();
        let mut last = None;
        self.merged(&self.runs, PASS_PAIRS, &mut |fp, p| {
            if last != Some(fp) {
                if group.len() > 1 {
                    groups.push(std::mem::take(&mut group));
                }
                group.clear();
                last = Some(fp);
            }
            group.push(p);
            Ok(())
        })?;
        if group.len() > 1 {
            groups.push(group);
        }
        Ok(groups)
    }

    /// Every `(fingerprint, position)`, in position order (tests).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let mut all: Vec<(u64, u32)> = Vec::new();
        for run in &self.runs {
            all.extend(run.pairs().map(Result::unwrap));
        }
        all.sort_unstable_by_key(|&(_, p)| p);
        let base = self.base_len();
        if let Some(frozen) = &self.frozen {
            all.extend(frozen.iter().map(move |(fp, r)| (fp, r + base)));
        }
        let base = self.tail_base();
        all.extend(self.tail.iter().map(move |(fp, r)| (fp, r + base)));
        all.into_iter()
    }

    /// The position of `id` when exactly one position has its
    /// fingerprint (tests).
    #[cfg(test)]
    pub(super) fn only(&self, id: &Uuid) -> Option<u32> {
        let found = self.candidates(id).unwrap();
        assert!(found.len() <= 1, "two positions share a fingerprint");
        found.first().copied()
    }

    /// [`IdMap::swap_for_test`] (an index with every id in the table).
    #[cfg(test)]
    pub(super) fn swap_for_test(&mut self, a: u32, b: u32) {
        assert!(self.runs.is_empty(), "swap in a table only");
        self.tail.swap_for_test(a, b);
    }
}

/// The pairs of `runs` (sorted in their files) merged with `table`'s
/// (numbered from `base + 1`, put in order by [`table_passes`]).
fn merged(
    table: &IdMap,
    base: u32,
    runs: &[Arc<SortedIds>],
    pass_pairs: usize,
    each: &mut dyn FnMut(u64, u32) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut files: Vec<_> = runs.iter().map(|r| r.pairs().peekable()).collect();
    table_passes(table, base, pass_pairs, &mut |part, upper| {
        if files.is_empty() {
            // Nothing to merge (a spill's run, or every id in the
            // table): the table's pairs alone.
            for &(fp, p) in part {
                each(fp, p)?;
            }
            return Ok(());
        }
        let mut table = part.iter().copied().peekable();
        loop {
            // The least next pair of the files' (below this pass's
            // bound) and the table's.
            let mut least: Option<((u64, u32), Option<usize>)> = table.peek().map(|&t| (t, None));
            for (i, file) in files.iter_mut().enumerate() {
                match file.peek() {
                    Some(Ok(pair))
                        if u128::from(pair.0) < upper && least.is_none_or(|(l, _)| *pair < l) =>
                    {
                        least = Some((*pair, Some(i)));
                    }
                    Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
                    _ => {}
                }
            }
            let Some((pair, from)) = least else {
                return Ok(());
            };
            match from {
                Some(i) => files[i].next(),
                None => table.next().map(Ok),
            };
            each(pair.0, pair.1)?;
        }
    })
}

/// The bytes of the pairs of `old` (a sorted section: a snapshot's ids,
/// or a run) merged with `table`'s (numbered from `base + 1`, put in
/// order by [`table_passes`]), handed to `out` in runs ([`CopyMerge`]).
fn merged_bytes(
    table: &IdMap,
    base: u32,
    old: &mut CopyMerge<impl Chunks>,
    pass_pairs: usize,
    out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    table_passes(table, base, pass_pairs, &mut |part, upper| {
        old.merge(part, Some(upper), out)
    })
}

/// What [`table_passes`] hands each pass's sorted pairs and bound to.
type Pass<'a> = &'a mut dyn FnMut(&[(u64, u32)], u128) -> std::io::Result<()>;

/// Hands `pass` `table`'s pairs (numbered from `base + 1`) in order, about
/// `pass_pairs` at a time by ranges of fingerprints, so that what is held
/// at once stays small: each pass's pairs, sorted, and the bound its
/// fingerprints are under (the last pass's: 2^64).
///
/// Fingerprints are hashes, so they spread evenly over their range: a
/// pass takes those in its share of the range, and within it each
/// pair goes straight to its place among smaller shares (a counting
/// sort: one read of the table's fingerprints to count them all, then
/// one a pass to place them), leaving only pairs that share a bucket
/// (a few) to sort.
fn table_passes(
    table: &IdMap,
    base: u32,
    pass_pairs: usize,
    pass: Pass<'_>,
) -> std::io::Result<()> {
    let n = table.len();
    let passes = n.div_ceil(pass_pairs.max(1)).max(1);
    // Buckets a pass's pairs are placed by: a power of two, about one
    // a pair, and all the passes' together at most 2^BUCKET_BITS (the
    // counts, 4 bytes each) unless the passes alone are more.
    let room = ((1usize << BUCKET_BITS) / passes).max(1);
    let sub = n
        .div_ceil(passes)
        .next_power_of_two()
        .trailing_zeros()
        .min(room.ilog2());
    let mask = (1usize << sub) - 1;
    // A fingerprint's bucket among them all (its pass: the bucket's
    // top bits), by its place in the range of fingerprints: in order.
    let buckets = (passes as u128) << sub;
    let key = |fp: u64| ((u128::from(fp) * buckets) >> 64) as usize;
    // The pairs in each bucket, across the passes.
    let mut counts = vec![0u32; passes << sub];
    for fp in table.fps() {
        counts[key(fp)] += 1;
    }
    let per_pass = |k: usize| &counts[k << sub..(k + 1) << sub];
    let largest = (0..passes)
        .map(|k| per_pass(k).iter().map(|&c| c as usize).sum::<usize>())
        .max()
        .unwrap_or(0);
    // Fingerprints from `bound(k)` up to `bound(k + 1)` in pass k: the
    // least whose `key` is in the pass.
    let bound = |k: usize| ((k as u128) << 64).div_ceil(passes as u128);
    let mut part: Vec<(u64, u32)> = vec![(0, 0); largest];
    // Where each bucket of the pass places its next pair.
    let mut next: Vec<u32> = Vec::with_capacity(1 << sub);
    for k in 0..passes {
        let upper = bound(k + 1);
        next.clear();
        let mut at = 0u32;
        for &c in per_pass(k) {
            next.push(at);
            at += c;
        }
        let mut position = base;
        for fp in table.fps() {
            position += 1;
            let b = key(fp);
            if b >> sub == k {
                let slot = &mut next[b & mask];
                part[*slot as usize] = (fp, position);
                *slot += 1;
            }
        }
        let part = &mut part[..at as usize];
        for (&end, &c) in next.iter().zip(per_pass(k)) {
            if c > 1 {
                part[(end - c) as usize..end as usize].sort_unstable();
            }
        }
        pass(part, upper)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u32) -> Uuid {
        Uuid::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    #[test]
    fn ids_are_found_at_their_positions_and_repeats_named() {
        let mut m = IdMap::default();
        for p in 1..=5_000u32 {
            assert_eq!(m.push(id(p), p), None);
        }
        assert_eq!(m.len(), 5_000);
        for p in 1..=5_000u32 {
            assert_eq!(m.only(&id(p)), Some(p));
            assert!(m.holds(&id(p), u64::from(p)));
            assert!(!m.holds(&id(p), u64::from(p) + 1));
        }
        assert_eq!(m.only(&id(5_001)), None);
        assert!(!m.holds(&id(1), 0));
        assert_eq!(m.iter().nth(16), Some((m.fingerprint(&id(17)), 17)));
        // A bigger table finds the same, without hashing an id again.
        let cap = m.capacity() * 2;
        let table = m.bigger_table(cap);
        m.replace_table(table);
        assert!(m.capacity() >= cap);
        m.reserve(cap);
        assert!(m.capacity() >= 5_000 + cap);
        for p in (1..=5_000u32).step_by(7) {
            assert_eq!(m.only(&id(p)), Some(p));
        }
        assert_eq!(m.iter().count(), 5_000);
        // An id pushed again is added, and the earlier position named: the
        // caller reads both frames to tell a repeat from another id.
        assert_eq!(m.push(id(17), 5_001), Some(17));
        let mut both: Vec<u32> = m.candidates(&id(17)).collect();
        both.sort_unstable();
        assert_eq!(both, vec![17, 5_001]);
    }

    /// The writer spills at `SPILL_IDS` ids: the table holds them and a
    /// group more in 2^21 buckets (10.5 MB), and neither its growth ahead
    /// nor the full-scan open's sizing makes one of 2^22 (21 MB).
    #[test]
    fn spill_ids_and_a_group_fit_a_table_of_2_21_buckets() {
        use super::super::{MAX_GROUP_EVENTS, SPILL_IDS};
        let mut m = IdMap::default();
        m.reserve(SPILL_IDS + MAX_GROUP_EVENTS);
        assert_eq!(m.table.num_buckets(), 1 << 21);
        // The writer's growth ahead doubles a table of 2^20 buckets...
        let mut ids = Ids::default();
        ids.reserve((1 << 20) / 8 * 7);
        assert_eq!(ids.tail.table.num_buckets(), 1 << 20);
        assert!(ids.table_full_for(ids.table_capacity() + 1));
        let bigger = ids.bigger_table(ids.table_capacity() + 1);
        assert_eq!(bigger.num_buckets(), 1 << 21);
        // ...to the room the spill needs, and no further.
        assert!(bigger.capacity() >= SPILL_IDS + MAX_GROUP_EVENTS);
    }

    #[test]
    fn prefetch_addresses_follow_the_table_layout() {
        let mut m = IdMap::default();
        assert!(m.layout().is_none(), "an empty table has no full bucket");
        m.prefetch([1u64, 2, 3].into_iter());
        for p in 1..=3_000u32 {
            m.push(id(p), p);
        }
        let (ctrl, mask) = m.layout().unwrap();
        assert_eq!(mask + 1, m.table.num_buckets());
        // Every full bucket's entry is where the layout puts it.
        let mut full = 0;
        for i in m.table.iter_buckets() {
            let at = m.table.get_bucket(i).unwrap() as *const u32 as usize;
            assert_eq!(at, ctrl - (i + 1) * ENTRY, "bucket {i}");
            full += 1;
        }
        assert_eq!(full, 3_000);
        // Where a fingerprint's probe starts: most ids sit in the group
        // of buckets their probe starts at (hashbrown's groups are 16 or
        // 8 buckets wide; a full group moves an id on).
        let near = (1..=3_000u32)
            .filter(|&p| {
                let fp = m.fingerprint(&id(p));
                let start = probe_start(fp, mask);
                m.table
                    .find_bucket_index(fp, |&q| q == p)
                    .is_some_and(|b| (b.wrapping_sub(start) & mask) < 16)
            })
            .count();
        assert!(
            near > 2_700,
            "{near} of 3000 ids in their probe's first group"
        );
        m.prefetch((1..=3_000u32).map(|p| m.fingerprint(&id(p))));
    }

    /// The `(fingerprint, position)` pairs of `ids` (positions 1..) under
    /// `hasher`, sorted.
    fn sorted_pairs_of(hasher: &IdHash, ids: &[u128]) -> Vec<(u64, u32)> {
        let mut pairs: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (hasher.hash_one(Uuid::from_u128(id)), i as u32 + 1))
            .collect();
        pairs.sort_unstable();
        pairs
    }

    /// A table of more ids than a pass holds, and more than the buckets
    /// it places them by ([`BUCKET_BITS`]), some of them sharing a
    /// fingerprint: its pairs come out as a plain sort of them all.
    #[test]
    fn a_large_table_comes_out_as_a_sort_of_its_pairs() {
        let hasher = IdHash::with_seed(7);
        let mut all: Vec<u128> = (0..300_000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        // Ids pushed twice share a fingerprint; each keeps its position.
        all.extend_from_within(1_000..1_100);
        let mut ids = Ids::with_hasher(hasher.clone());
        for (i, &id) in all.iter().enumerate() {
            ids.push(Uuid::from_u128(id), i as u32 + 1);
        }
        for pass in [1 << 15, PASS_PAIRS, usize::MAX] {
            let out = pairs_by(&ids, pass);
            assert_eq!(out, sorted_pairs_of(&hasher, &all), "pass_pairs {pass}");
        }
    }

    /// `base`'s ids in a snapshot's file, as the ids of a log opened from
    /// it (fingerprinted under `seed`), and a directory for its runs.
    fn ids_over(
        base: &[u128],
        seed: u64,
    ) -> (IdHash, tempfile::TempDir, tempfile::NamedTempFile, Ids) {
        let hasher = IdHash::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let (f, sorted) = file_ids(&hasher, base);
        let ids = Ids::with_base(sorted, hasher.clone());
        (hasher, dir, f, ids)
    }

    /// The ids of a snapshot's file in a temporary file: the sorted pairs
    /// of `ids` (positions 1..) under `hasher`.
    fn file_ids(hasher: &IdHash, ids: &[u128]) -> (tempfile::NamedTempFile, SortedIds) {
        use std::io::Write;
        let pairs = sorted_pairs_of(hasher, ids);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for &(fp, p) in &pairs {
            f.write_all(&pair_bytes(fp, p)).unwrap();
        }
        f.flush().unwrap();
        let n = ids.len() as u64;
        let (sorted, _) = SortedIds::read(f.reopen().unwrap(), 0, n, None).unwrap();
        (f, sorted)
    }

    /// Each of `all` (the id of position `i + 1`) is a candidate at its
    /// position, and only where an id of the same fingerprint is.
    fn found_everywhere(ids: &Ids, all: &[u128]) -> Result<(), TestCaseError> {
        prop_assert_eq!(ids.len(), all.len());
        for (i, &id) in all.iter().enumerate() {
            let p = i as u32 + 1;
            let id = Uuid::from_u128(id);
            let at = ids.candidates(&id).unwrap();
            prop_assert!(at.contains(&p));
            let fp = ids.fingerprint(&id);
            for q in at {
                let other = Uuid::from_u128(all[q as usize - 1]);
                prop_assert_eq!(ids.fingerprint(&other), fp);
            }
            prop_assert!(ids.holds(&id, u64::from(p)).unwrap());
        }
        Ok(())
    }

    /// Every `(fingerprint, position)` of `ids`, sorted about `pass`
    /// pairs of the table at a time ([`Ids::sorted_pairs_by`]).
    fn pairs_by(ids: &Ids, pass: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        ids.sorted_pairs_by(pass, |fp, p| {
            out.push((fp, p));
            Ok(())
        })
        .unwrap();
        out
    }

    /// The pairs of the bytes [`Ids::sorted_bytes_by`] hands on.
    fn bytes_by(ids: &Ids, pass: usize) -> Vec<(u64, u32)> {
        use super::super::sorted_ids::{pair_at, PAIR};
        let mut bytes = Vec::new();
        ids.sorted_bytes_by(pass, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(bytes.len() % PAIR, 0);
        bytes.chunks_exact(PAIR).map(pair_at).collect()
    }

    /// A growth of `ids`' table due now, whatever it holds: as many more
    /// ids as fill it exactly are said to be coming.
    fn growth_of(ids: &Ids) -> Option<Growth> {
        let room = ids.tail.capacity();
        ids.begin_growth(room.saturating_sub(ids.table_len()), 1, usize::MAX)
    }

    proptest! {
        /// Whatever the split between the snapshot's file, the runs
        /// spilled after it (merged into one once there are MAX_RUNS) and
        /// the table, and however many passes sort the table, the pairs
        /// come out sorted, each position once with its own id's
        /// fingerprint, as pairs and as the bytes a snapshot stores (the
        /// snapshot's file copied in runs when it is the only one: half
        /// the cases); and each id is a candidate at its position,
        /// wherever it is held.
        #[test]
        fn the_files_and_the_table_merge_sorted(
            base in proptest::collection::vec(any::<u128>(), 0..200),
            spills in prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(
                    proptest::collection::vec(any::<u128>(), 0..40), 0..12),
            ],
            tail in proptest::collection::vec(any::<u128>(), 0..200),
            pass in 1usize..64,
            seed in any::<u64>(),
        ) {
            let (hasher, dir, _f, mut ids) = ids_over(&base, seed);
            let mut all: Vec<u128> = base.clone();
            for chunk in spills.iter().chain([&tail]) {
                for &id in chunk {
                    all.push(id);
                    ids.push(Uuid::from_u128(id), all.len() as u32);
                }
                if !std::ptr::eq(chunk, &tail) {
                    prop_assert!(ids.spill_in_place(dir.path()).is_ok());
                    prop_assert_eq!(ids.table_len(), 0);
                    prop_assert!(ids.runs().len() <= MAX_RUNS);
                }
            }
            prop_assert_eq!(ids.len(), all.len());
            prop_assert_eq!(pairs_by(&ids, pass), sorted_pairs_of(&hasher, &all));
            prop_assert_eq!(bytes_by(&ids, pass), sorted_pairs_of(&hasher, &all));
            for (i, &id) in all.iter().enumerate() {
                let p = i as u32 + 1;
                let id = Uuid::from_u128(id);
                prop_assert!(ids.candidates(&id).unwrap().contains(&p));
                prop_assert!(ids.holds(&id, u64::from(p)).unwrap());
            }
            // Nothing is left in the directory: the runs' files are unlinked.
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }

        /// The writer's spill on a thread of its own: a table frozen
        /// ([`Ids::freeze`]) while ids are pushed after it, its run written
        /// ([`Spill::write`]) and put in ([`Ids::install`]), or the table
        /// taken back ([`Ids::thaw`]), or spilled the old way (merging at
        /// [`MAX_RUNS`]), in any order; and the writer's merge of the runs
        /// ([`Ids::begin_merge`]) begun, held across steps, then put in
        /// ([`Ids::install_merge`], refused if the runs it merged were
        /// replaced meanwhile) or dropped (a merge that failed): at every
        /// step each id is a candidate at its position (and nowhere else
        /// but where an id of the same fingerprint is), and the pairs come
        /// out as a sort of them all.
        #[test]
        fn a_frozen_table_is_found_while_it_is_spilled_and_after(
            base in proptest::collection::vec(any::<u128>(), 0..100),
            steps in proptest::collection::vec(
                (proptest::collection::vec(any::<u128>(), 0..40),
                 proptest::collection::vec(any::<u128>(), 0..20),
                 0u8..3, (0u8..4, 0u8..4)), 0..14),
            seed in any::<u64>(),
        ) {
            let (hasher, dir, _f, mut ids) = ids_over(&base, seed);
            let mut all: Vec<u128> = base.clone();
            // A merge step: 1 begins one (if none is in flight), 2 puts
            // it in (or has it refused, the runs it merged replaced
            // meanwhile), 3 drops it (a merge that failed); anything else
            // leaves it as it is.
            let merge_step = |ids: &mut Ids,
                              merging: &mut Option<Merge>,
                              step: u8,
                              all: &[u128]|
             -> Result<(), TestCaseError> {
                match (step, merging.take()) {
                    (1, None) => *merging = ids.begin_merge(2),
                    (2, Some(m)) => {
                        let runs: Vec<Arc<SortedIds>> = ids.runs().to_vec();
                        let last = m.runs.last().map(|r| r.last());
                        let run = m.write(dir.path(), &AtomicBool::new(false)).unwrap();
                        match ids.install_merge(&m, run) {
                            Ok(replaced) => {
                                prop_assert_eq!(replaced.len(), m.len());
                                prop_assert_eq!(ids.runs().len(), runs.len() + 1 - m.len());
                                let first = &ids.runs()[0];
                                prop_assert_eq!((first.first(), Some(first.last())), (0, last));
                            }
                            Err(_) => {
                                prop_assert_eq!(ids.runs().len(), runs.len());
                                for (a, b) in ids.runs().iter().zip(&runs) {
                                    prop_assert!(Arc::ptr_eq(a, b));
                                }
                            }
                        }
                        found_everywhere(ids, all)?;
                    }
                    (3, Some(m)) => drop(m),
                    (_, m) => *merging = m,
                }
                Ok(())
            };
            let mut merging: Option<Merge> = None;
            for (chunk, during, how, (merge, merge_frozen)) in &steps {
                merge_step(&mut ids, &mut merging, *merge, &all)?;
                for &id in chunk {
                    all.push(id);
                    ids.push(Uuid::from_u128(id), all.len() as u32);
                }
                if how % 3 == 0 {
                    prop_assert!(ids.spill_in_place(dir.path()).is_ok());
                    found_everywhere(&ids, &all)?;
                    continue;
                }
                let spill = ids.freeze().unwrap();
                prop_assert!(ids.is_frozen());
                prop_assert!(ids.freeze().is_none());
                prop_assert!(ids.spill_in_place(dir.path()).is_err());
                prop_assert!(ids.sorted_bytes(&mut |_| Ok(())).is_err());
                prop_assert_eq!(ids.table_len(), 0);
                for &id in during {
                    all.push(id);
                    ids.push(Uuid::from_u128(id), all.len() as u32);
                }
                found_everywhere(&ids, &all)?;
                // A merge begun, put in or dropped while a table is frozen.
                merge_step(&mut ids, &mut merging, *merge_frozen, &all)?;
                let runs_before = ids.runs().len();
                if how % 3 == 1 {
                    let run = spill.write(dir.path()).unwrap();
                    let replaced = ids.install(&spill, run).unwrap();
                    prop_assert!(!ids.is_frozen());
                    prop_assert_eq!(ids.table_len(), during.len());
                    // The writer's spill merges nothing.
                    prop_assert!(replaced.is_empty());
                    prop_assert_eq!(ids.runs().len(), runs_before + 1);
                } else {
                    drop(spill);
                    ids.thaw();
                    prop_assert!(!ids.is_frozen());
                    prop_assert_eq!(ids.runs().len(), runs_before);
                    prop_assert_eq!(ids.table_len(), ids.len() - ids.base_len() as usize);
                }
                found_everywhere(&ids, &all)?;
            }
            prop_assert_eq!(pairs_by(&ids, PASS_PAIRS), sorted_pairs_of(&hasher, &all));
            drop((ids, merging));
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    proptest! {
        /// Growths of the table apart from it ([`Ids::begin_growth`]),
        /// filled a slice at a time while ids are pushed, then brought up
        /// to date and put in ([`Ids::catch_up`], [`Ids::install_growth`]),
        /// with the table frozen, spilled or taken back between: at every
        /// step each id is found at its position; a growth put in holds
        /// every id with room to spare; one of a table since replaced is
        /// refused, and one not brought up to date too, nothing changed.
        /// The bytes of the table a growth holds are counted apart while
        /// it holds it, and no longer once it is put in or dropped.
        #[test]
        fn a_table_grown_apart_finds_every_id(
            base in proptest::collection::vec(any::<u128>(), 0..50),
            steps in proptest::collection::vec(
                (proptest::collection::vec(any::<u128>(), 0..300), 0u8..6, 1usize..400),
                0..16),
            seed in any::<u64>(),
        ) {
            let (hasher, dir, _f, mut ids) = ids_over(&base, seed);
            let mut all: Vec<u128> = base.clone();
            // A growth in flight, and whether its table was replaced since
            // it began.
            let mut growth: Option<(Growth, bool)> = None;
            let counted = Arc::new(AtomicUsize::new(0));
            let mut fps = Vec::new();
            for (chunk, step, slice) in &steps {
                for &id in chunk {
                    all.push(id);
                    ids.push(Uuid::from_u128(id), all.len() as u32);
                }
                match (step, growth.take()) {
                    (0, None) => {
                        growth = growth_of(&ids).map(|g| (g.counted_in(counted.clone()), false))
                    }
                    // One slice more.
                    (1, Some((mut g, stale))) => {
                        let sliced = ids.growth_slice(&g, *slice, &mut fps);
                        prop_assert_eq!(sliced.is_err(), stale);
                        if sliced.is_ok() {
                            prop_assert!(fps.len() <= *slice);
                            g.fill(&fps).unwrap();
                        }
                        growth = Some((g, stale));
                    }
                    // Built to its end, brought up to date and put in.
                    (2, Some((mut g, stale))) => {
                        while !g.built_apart() && !stale {
                            ids.growth_slice(&g, *slice, &mut fps).unwrap();
                            prop_assert!(!fps.is_empty());
                            g.fill(&fps).unwrap();
                        }
                        let (len, capacity) = (ids.table_len(), ids.table_capacity());
                        if !stale && g.until < len {
                            // Not brought up to date: refused.
                            g = ids.install_growth(g).err().unwrap();
                        }
                        prop_assert_eq!(ids.catch_up(&mut g), !stale);
                        match ids.install_growth(g) {
                            Ok(old) => {
                                prop_assert!(!stale);
                                prop_assert_eq!(old.len(), len);
                                prop_assert!(ids.table_capacity() >= len);
                            }
                            Err(_) => {
                                prop_assert!(stale);
                                prop_assert_eq!(ids.table_capacity(), capacity);
                            }
                        }
                    }
                    // The table frozen and spilled: a growth begun is stale.
                    (3, g) => {
                        let spill = ids.freeze().unwrap();
                        let run = spill.write(dir.path()).unwrap();
                        ids.install(&spill, run).unwrap();
                        growth = g.map(|(g, _)| (g, true));
                    }
                    // The table frozen and taken back: the same table if
                    // nothing was pushed meanwhile, else a new one, where a
                    // growth begun is stale.
                    (4, g) => {
                        drop(ids.freeze().unwrap());
                        let during = slice % 3;
                        for i in 0..during {
                            all.push(u128::MAX - i as u128);
                            ids.push(Uuid::from_u128(u128::MAX - i as u128), all.len() as u32);
                        }
                        ids.thaw();
                        growth = g.map(|(g, stale)| (g, stale || during > 0));
                    }
                    (_, g) => growth = g,
                }
                prop_assert_eq!(
                    counted.load(Ordering::Relaxed),
                    growth.as_ref().map_or(0, |(g, _)| g.table_bytes())
                );
                found_everywhere(&ids, &all)?;
            }
            prop_assert_eq!(pairs_by(&ids, PASS_PAIRS), sorted_pairs_of(&hasher, &all));
        }
    }

    /// A growth is due once the table would hold more than three quarters
    /// of its room, not past its room (it then grows where it is), not for
    /// a table smaller than asked, nor one of room for the most it holds
    /// before a spill; it has twice the table's room.
    #[test]
    fn a_growth_apart_is_due_in_the_last_quarter_of_the_room() {
        let mut ids = Ids::default();
        for i in 1..=60u32 {
            ids.push(Uuid::from_u128(u128::from(i)), i);
        }
        let (len, room) = (ids.table_len(), ids.table_capacity());
        let fits = room - len;
        let last_quarter = room - room / GROW_AHEAD_PARTS;
        assert!(len < last_quarter, "{len} of {room}");
        let due = |adding: usize, from: usize, most: usize| {
            ids.begin_growth(adding, from, most).map(|g| g.room())
        };
        assert_eq!(due(fits, 1, usize::MAX), Some(2 * room));
        assert_eq!(
            due(fits + 1, 1, usize::MAX),
            None,
            "full: grown where it is"
        );
        assert_eq!(due(last_quarter.saturating_sub(len), 1, usize::MAX), None);
        assert_eq!(due(last_quarter + 1 - len, 1, usize::MAX), Some(2 * room));
        assert_eq!(due(fits, room + 1, usize::MAX), None, "too small");
        assert_eq!(due(fits, room, room), None, "spilled before it is full");
        assert_eq!(due(fits, room, room + 1), Some(2 * room));
    }

    /// A growth of a table since frozen is refused at each step: its next
    /// slice, its bringing up to date, and its putting in.
    #[test]
    fn a_growth_of_a_table_since_frozen_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::default();
        for i in 1..=100u32 {
            ids.push(Uuid::from_u128(u128::from(i)), i);
        }
        let mut built = growth_of(&ids).unwrap();
        let mut fps = Vec::new();
        while !built.built_apart() {
            ids.growth_slice(&built, 7, &mut fps).unwrap();
            built.fill(&fps).unwrap();
        }
        let mut begun = growth_of(&ids).unwrap();
        let spill = ids.freeze().unwrap();
        ids.install(&spill, spill.write(dir.path()).unwrap())
            .unwrap();
        // The new table holds as many ids as the grown one: only the
        // serial tells them apart.
        for i in 101..=200u32 {
            ids.push(Uuid::from_u128(u128::from(i)), i);
        }
        assert_eq!(ids.table_len(), 100);
        assert!(ids.growth_slice(&begun, 7, &mut fps).is_err());
        assert!(!ids.catch_up(&mut begun));
        assert!(!ids.catch_up(&mut built));
        let capacity = ids.table_capacity();
        assert!(ids.install_growth(built).is_err());
        assert_eq!(ids.table_capacity(), capacity);
        let all: Vec<u128> = (1..=200).collect();
        found_everywhere(&ids, &all).unwrap();
    }

    /// A merge's run is refused, and nothing changes, once the runs it
    /// merged are no longer the first held: another merge put its run in
    /// their place (and spills added runs after it).
    #[test]
    fn a_merge_of_runs_since_replaced_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::default();
        let mut p = 0u32;
        let mut spill = |ids: &mut Ids, n: u32| {
            for _ in 0..n {
                p += 1;
                ids.push(id(p), p);
            }
            ids.spill_in_place(dir.path()).unwrap();
        };
        for _ in 0..3 {
            spill(&mut ids, 10);
        }
        assert!(ids.begin_merge(4).is_none());
        let stale = ids.begin_merge(3).unwrap();
        let merge = ids.begin_merge(3).unwrap();
        let replaced = ids.install_merge(
            &merge,
            merge.write(dir.path(), &AtomicBool::new(false)).unwrap(),
        );
        assert_eq!(replaced.map(|r| r.len()).ok(), Some(3));
        spill(&mut ids, 10);
        spill(&mut ids, 10);
        let runs: Vec<Arc<SortedIds>> = ids.runs().to_vec();
        assert_eq!(runs.len(), 3);
        assert!(ids
            .install_merge(
                &stale,
                stale.write(dir.path(), &AtomicBool::new(false)).unwrap()
            )
            .is_err());
        assert!(ids.runs().iter().zip(&runs).all(|(a, b)| Arc::ptr_eq(a, b)));
        for q in 1..=50u32 {
            assert_eq!(ids.only(&id(q)), Some(q));
        }
        // A run of other positions than the merged runs' is refused too.
        let merge = ids.begin_merge(3).unwrap();
        let other = Merge {
            runs: ids.runs()[..2].to_vec(),
        };
        assert!(ids
            .install_merge(
                &merge,
                other.write(dir.path(), &AtomicBool::new(false)).unwrap()
            )
            .is_err());
        assert!(ids
            .install_merge(
                &merge,
                merge.write(dir.path(), &AtomicBool::new(false)).unwrap()
            )
            .is_ok());
        assert_eq!(ids.runs().len(), 1);
        for q in 1..=50u32 {
            assert_eq!(ids.only(&id(q)), Some(q));
        }
    }

    /// A merge told to stop writes no run.
    #[test]
    fn a_merge_told_to_stop_writes_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::default();
        for p in 1..=20u32 {
            ids.push(id(p), p);
            if p % 10 == 0 {
                ids.spill_in_place(dir.path()).unwrap();
            }
        }
        let merge = ids.begin_merge(2).unwrap();
        assert!(merge.write(dir.path(), &AtomicBool::new(true)).is_err());
        let run = merge.write(dir.path(), &AtomicBool::new(false)).unwrap();
        assert_eq!((run.first(), run.last()), (0, 20));
    }

    /// A run made of another table than the one frozen, or for another
    /// spill, is refused and nothing changes.
    #[test]
    fn a_run_of_another_frozen_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Ids::default();
        let mut b = Ids::default();
        for p in 1..=100u32 {
            a.push(id(p), p);
            b.push(id(p), p);
        }
        let spill_a = a.freeze().unwrap();
        let spill_b = b.freeze().unwrap();
        let run_b = spill_b.write(dir.path()).unwrap();
        assert!(a.install(&spill_b, run_b).is_err());
        assert!(a.is_frozen());
        for p in 1..=100u32 {
            assert_eq!(a.only(&id(p)), Some(p));
        }
        let run_a = spill_a.write(dir.path()).unwrap();
        assert!(a.install(&spill_a, run_a).is_ok());
        assert!(!a.is_frozen());
        assert_eq!(a.runs().len(), 1);
        // A second install of the same spill finds no table frozen.
        let run_again = spill_a.write(dir.path()).unwrap();
        assert!(a.install(&spill_a, run_again).is_err());
        assert_eq!(a.runs().len(), 1);
    }
}
