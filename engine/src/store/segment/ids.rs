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
//! events) costs a lookup as before, and no read.

use hashbrown::hash_table::{Entry, HashTable};
use std::hash::BuildHasher;
use uuid::Uuid;

use super::dense::Chunked;
use super::IdHash;

/// Pairs [`IdMap::load`] takes at a time.
const LOAD_BATCH: usize = 256;

/// Ids whose table memory is fetched at once ([`IdMap::prefetch`]): the
/// lines of 512 ids (two each, 64 KiB) stay in a core's L2 cache until
/// their look-ups or pushes use them.
pub(super) const PREFETCH_IDS: usize = 512;

/// Bytes of one table entry (a position).
const ENTRY: usize = std::mem::size_of::<u32>();

/// A hint to fetch the cache line holding `addr` ([`IdMap::prefetch`]).
#[inline(always)]
fn prefetch_line(addr: usize) {
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
        debug_assert_eq!(position as usize, self.by_position.len() + 1);
        let fp = self.fingerprint(&id);
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
        let n = by_position.len();
        for i in 0..n {
            if i % PREFETCH_IDS == 1 {
                // The slots of the next ids, fetched together (the table
                // has a full bucket to find its layout by from the first).
                let next = i..n.min(i + PREFETCH_IDS);
                prefetch_in(&table, next.map(|j| by_position[j]));
            }
            table.insert_unique(by_position[i], i as u32 + 1, rehash(by_position));
        }
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

    /// Hands `each` every `(fingerprint, position)` in the table's bucket
    /// order: what an index snapshot stores, so that the next open fills a
    /// table of the same capacity and seed front to back
    /// ([`IdMap::load`]). The fingerprints are read at random places,
    /// [`LOAD_BATCH`] at a time so that their cache misses overlap.
    pub(super) fn in_table_order<E>(
        &self,
        mut each: impl FnMut(u64, u32) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut positions = self.table.iter().copied().peekable();
        let mut batch: Vec<u32> = Vec::with_capacity(LOAD_BATCH);
        let mut fps: Vec<u64> = Vec::with_capacity(LOAD_BATCH);
        while positions.peek().is_some() {
            batch.clear();
            batch.extend(positions.by_ref().take(LOAD_BATCH));
            // Only loads, each independent of the others: their misses
            // overlap.
            fps.clear();
            fps.extend(batch.iter().map(|&p| self.by_position[p as usize - 1]));
            for (fp, p) in fps.iter().zip(&batch) {
                each(*fp, *p)?;
            }
        }
        Ok(())
    }

    /// [`IdMap::in_table_order`], collected (tests).
    #[cfg(test)]
    pub(super) fn table_order(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(self.len());
        let _ = self.in_table_order(|fp, p| -> Result<(), ()> {
            out.push((fp, p));
            Ok(())
        });
        out
    }

    /// The map of `n` positions from its `(fingerprint, position)` pairs,
    /// inserted in their order into a table of room for `capacity` (any
    /// order gives the same map; [`IdMap::in_table_order`]'s fills the
    /// table front to back, and only the fingerprints land at random
    /// places). `Err` says what is wrong: a position out of range, a
    /// position listed twice (so another without an id), pairs beyond
    /// `n`. Two positions may share a fingerprint (see the module's
    /// documentation): each such pair (lower, higher) is returned beside
    /// the map, for the caller to read both frames.
    pub(super) fn load(
        hasher: IdHash,
        n: usize,
        capacity: usize,
        pairs: impl Iterator<Item = Result<(u64, u32), String>>,
    ) -> Result<(IdMap, Vec<(u32, u32)>), String> {
        // Filled with a value that is not zero, so the slots are written
        // (and their pages mapped) here: zeroed memory would map the
        // shared zero page on the reads below, and each first write would
        // then copy it, with a TLB flush across the threads (an open of
        // 8.2M events took 0.15–0.25 s longer that way). Every slot is set
        // again from the pairs.
        let mut by_position = Chunked::filled(n, u64::MAX);
        // Which positions were given a fingerprint (any value is one).
        let mut given = vec![0u64; n.div_ceil(64)];
        let mut table = HashTable::with_capacity(capacity.max(n));
        let mut pairs = pairs.peekable();
        let mut batch: Vec<(u64, u32)> = Vec::with_capacity(LOAD_BATCH);
        let mut touched = 0u64;
        let mut count = 0usize;
        let mut shared = Vec::new();
        while pairs.peek().is_some() {
            batch.clear();
            for pair in pairs.by_ref().take(LOAD_BATCH) {
                let (fp, p) = pair?;
                if p == 0 || p as usize > n {
                    return Err(format!("ids: position {p} out of range"));
                }
                batch.push((fp, p));
            }
            // Read the slots the batch writes before writing them, all at
            // once: independent loads the processor overlaps, where each
            // write in turn would wait for its cache line.
            for &(_, p) in &batch {
                touched ^= by_position.get(p as usize - 1).copied().unwrap_or(0);
            }
            for &(fp, p) in &batch {
                let i = p as usize - 1;
                let (word, bit) = (i / 64, 1u64 << (i % 64));
                if given[word] & bit != 0 {
                    return Err(format!("ids: position {p} is listed twice"));
                }
                given[word] |= bit;
                by_position.set(i, fp);
                if let Some(q) = insert(&mut table, &by_position, fp, p) {
                    shared.push((q.min(p), q.max(p)));
                }
                count += 1;
            }
        }
        std::hint::black_box(touched);
        if count != n {
            return Err(format!("ids: {count} ids for {n} positions"));
        }
        Ok((
            IdMap {
                by_position,
                table,
                hasher,
            },
            shared,
        ))
    }

    /// Bytes allocated for the fingerprints and the table.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.by_position.allocated_bytes() + self.table.allocation_size()
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_loaded_map_checks_its_pairs() {
        let mut m = IdMap::default();
        for p in 1..=300u32 {
            assert_eq!(m.push(id(p), p), None);
        }
        let order: Vec<(u64, u32)> = m.table_order();
        let (loaded, shared) = IdMap::load(
            m.hasher().clone(),
            300,
            m.capacity(),
            order.iter().map(|&e| Ok(e)),
        )
        .unwrap();
        assert!(shared.is_empty());
        assert_eq!(loaded.capacity(), m.capacity());
        let mut again: Vec<(u64, u32)> = loaded.table_order();
        let mut order = order;
        again.sort();
        order.sort();
        assert_eq!(again, order);
        assert!(loaded.iter().eq(m.iter()));
        for p in 1..=300u32 {
            assert_eq!(loaded.only(&id(p)), Some(p));
        }
        let fp = |i: u32| m.fingerprint(&id(i));
        let load = |pairs: Vec<(u32, u32)>| {
            let pairs = pairs.into_iter().map(|(i, p)| Ok((fp(i), p)));
            IdMap::load(m.hasher().clone(), 300, 0, pairs)
        };
        let all = || (1..=300u32).map(|p| (p, p)).collect::<Vec<_>>();
        // A position twice, one missing, one out of range.
        let mut twice = all();
        twice[5] = (400, 9);
        let err = load(twice).err().unwrap();
        assert!(err.contains("position 9 is listed twice"), "{err}");
        let err = load(all()[1..].to_vec()).err().unwrap();
        assert!(err.contains("299 ids for 300 positions"), "{err}");
        let mut past = all();
        past.push((301, 301));
        assert!(load(past).err().unwrap().contains("out of range"));
        assert!(load(vec![(1, 0)]).err().unwrap().contains("out of range"));
        // Two positions may share a fingerprint: both are candidates, and
        // a push of that id names one of them.
        let mut shared = all();
        shared[299] = (3, 300);
        let (mut loaded, pairs) = load(shared).unwrap();
        assert_eq!(pairs, vec![(3, 300)]);
        let mut both: Vec<u32> = loaded.candidates(&id(3)).collect();
        both.sort_unstable();
        assert_eq!(both, vec![3, 300]);
        assert!(loaded.holds(&id(3), 300));
        assert!(!loaded.holds(&id(300), 300));
        assert!(loaded.push(id(3), 301).is_some());
        assert_eq!(loaded.candidates(&id(3)).count(), 3);
        assert_eq!(loaded.push(id(301), 302), None);
    }
}
