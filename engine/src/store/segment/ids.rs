//! The segment index's event ids: [`IdMap`], every id by position and a
//! hash table of positions keyed by the ids they hold.
//!
//! A map from id to position keeps each 16-byte id in its bucket, and a
//! map holds half to seven-eighths of its buckets full: 24–48 bytes an
//! event. Here the ids are kept once, in position order (16 bytes an
//! event, no slack beyond one chunk), and the table holds only 4-byte
//! positions (5 bytes a bucket with its control byte): 22–27 bytes an
//! event. A lookup compares the id at a candidate position only when the
//! table's 7-bit tag matches, so looking up an id that is not stored (an
//! import of new events) costs what it did; finding a stored id costs one
//! more memory read.

use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};
use uuid::Uuid;

use super::dense::Chunked;
use super::IdHash;

/// Pairs [`IdMap::load`] takes at a time.
const LOAD_BATCH: usize = 256;

/// The position in `table` holding `id` (the table holds positions; an
/// entry matches when `by_position` has `id` there).
fn find(
    table: &HashTable<u32>,
    by_position: &Chunked<Uuid>,
    hasher: &IdHash,
    id: &Uuid,
) -> Option<u32> {
    table
        .find(hasher.hash_one(id), |&p| {
            by_position.get(p as usize - 1) == Some(id)
        })
        .copied()
}

/// Puts `position` into `table` as the holder of `id` (`by_position` may
/// not have it yet); `Err` holds the position that already holds `id`.
fn insert(
    table: &mut HashTable<u32>,
    by_position: &Chunked<Uuid>,
    hasher: &IdHash,
    id: Uuid,
    position: u32,
) -> Result<(), u32> {
    match table.entry(
        hasher.hash_one(id),
        |&p| by_position.get(p as usize - 1) == Some(&id),
        rehash(by_position, hasher),
    ) {
        Entry::Occupied(o) => Err(*o.get()),
        Entry::Vacant(v) => {
            v.insert(position);
            Ok(())
        }
    }
}

/// The hash of the id a table entry's position holds, for the table's
/// growth.
fn rehash<'a>(by_position: &'a Chunked<Uuid>, hasher: &'a IdHash) -> impl Fn(&u32) -> u64 + 'a {
    move |&p| hasher.hash_one(by_position[p as usize - 1])
}

/// Event ids by position, and their positions by id.
pub(super) struct IdMap {
    /// `by_position[p - 1]` is the id of position p.
    by_position: Chunked<Uuid>,
    /// Positions, found by the hash of the id they hold.
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

    /// Ids held: one for each position 1..=len.
    pub(super) fn len(&self) -> usize {
        self.by_position.len()
    }

    /// Ids the table holds before it must grow.
    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The position holding `id`.
    pub(super) fn get(&self, id: &Uuid) -> Option<u32> {
        find(&self.table, &self.by_position, &self.hasher, id)
    }

    /// Adds `id` as the id of the next position (`len() + 1`, which the
    /// caller has checked is `position`); `Err` holds the position that
    /// already holds it.
    pub(super) fn push(&mut self, id: Uuid, position: u32) -> Result<(), u32> {
        debug_assert_eq!(position as usize, self.by_position.len() + 1);
        insert(
            &mut self.table,
            &self.by_position,
            &self.hasher,
            id,
            position,
        )?;
        self.by_position.push(id);
        Ok(())
    }

    /// A table of room for `capacity` ids holding every position this
    /// holds, for [`IdMap::replace_table`]: built while readers go on.
    pub(super) fn bigger_table(&self, capacity: usize) -> HashTable<u32> {
        let mut table = HashTable::with_capacity(capacity.max(self.len()));
        let by_position = &self.by_position;
        let hasher = &self.hasher;
        for i in 0..by_position.len() {
            let id = &by_position[i];
            table.insert_unique(
                hasher.hash_one(id),
                i as u32 + 1,
                rehash(by_position, hasher),
            );
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
        self.table
            .reserve(additional, rehash(&self.by_position, &self.hasher));
    }

    /// Hands `each` every `(id, position)` in the table's bucket order:
    /// what an index snapshot stores, so that the next open fills a table
    /// of the same capacity and seed front to back ([`IdMap::load`]). The
    /// ids are read at random places, [`LOAD_BATCH`] at a time so that
    /// their cache misses overlap.
    pub(super) fn in_table_order<E>(
        &self,
        mut each: impl FnMut(&Uuid, u32) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut positions = self.table.iter().copied().peekable();
        let mut batch: Vec<u32> = Vec::with_capacity(LOAD_BATCH);
        let mut ids: Vec<Uuid> = Vec::with_capacity(LOAD_BATCH);
        while positions.peek().is_some() {
            batch.clear();
            batch.extend(positions.by_ref().take(LOAD_BATCH));
            // Only loads, each independent of the others: their misses
            // overlap.
            ids.clear();
            ids.extend(batch.iter().map(|&p| self.by_position[p as usize - 1]));
            for (id, p) in ids.iter().zip(&batch) {
                each(id, *p)?;
            }
        }
        Ok(())
    }

    /// [`IdMap::in_table_order`], collected (tests).
    #[cfg(test)]
    pub(super) fn table_order(&self) -> Vec<(Uuid, u32)> {
        let mut out = Vec::with_capacity(self.len());
        let _ = self.in_table_order(|id, p| -> Result<(), ()> {
            out.push((*id, p));
            Ok(())
        });
        out
    }

    /// The map of `n` positions from its `(id, position)` pairs, inserted
    /// in their order into a table of room for `capacity` (any order gives
    /// the same map; [`IdMap::in_table_order`]'s fills the table front to
    /// back, and only the ids land at random places). `Err` says what is
    /// wrong: a position out of range, an id held twice, a position
    /// without an id (so another listed twice), pairs beyond `n`.
    pub(super) fn load(
        hasher: IdHash,
        n: usize,
        capacity: usize,
        pairs: impl Iterator<Item = Result<(Uuid, u32), String>>,
    ) -> Result<IdMap, String> {
        // Slots not yet given an id hold the nil id; a position listed
        // twice leaves another slot nil (checked at the end).
        let mut by_position = Chunked::filled(n, Uuid::nil());
        let mut table = HashTable::with_capacity(capacity.max(n));
        let mut pairs = pairs.peekable();
        let mut batch: Vec<(Uuid, u32)> = Vec::with_capacity(LOAD_BATCH);
        let mut touched = 0u64;
        while pairs.peek().is_some() {
            batch.clear();
            for pair in pairs.by_ref().take(LOAD_BATCH) {
                let (id, p) = pair?;
                if p == 0 || p as usize > n {
                    return Err(format!("ids: position {p} out of range"));
                }
                batch.push((id, p));
            }
            // Read the slots the batch writes before writing them, all at
            // once: independent loads the processor overlaps, where each
            // write in turn would wait for its cache line.
            for &(_, p) in &batch {
                touched ^= by_position
                    .get(p as usize - 1)
                    .map_or(0, |u| u.as_u64_pair().0);
            }
            for &(id, p) in &batch {
                insert(&mut table, &by_position, &hasher, id, p)
                    .map_err(|q| format!("event id {id} is held by positions {q} and {p}"))?;
                by_position.set(p as usize - 1, id);
            }
        }
        std::hint::black_box(touched);
        if table.len() != n {
            return Err(format!("ids: {} ids for {n} positions", table.len()));
        }
        // n distinct ids went into n slots: a slot still nil (other than
        // one whose id is the nil id) means a position was listed twice.
        let nil = Uuid::nil();
        let held_nil = find(&table, &by_position, &hasher, &nil);
        for i in 0..n {
            if by_position[i] == nil && held_nil != Some(i as u32 + 1) {
                return Err(format!(
                    "ids: position {} has no id (another is listed twice)",
                    i + 1
                ));
            }
        }
        Ok(IdMap {
            by_position,
            table,
            hasher,
        })
    }

    /// Bytes allocated for the ids and the table.
    pub(super) fn allocated_bytes(&self) -> usize {
        self.by_position.allocated_bytes() + self.table.allocation_size()
    }

    /// Every `(id, position)`, in position order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (Uuid, u32)> + '_ {
        (0..self.by_position.len()).map(|i| (self.by_position[i], i as u32 + 1))
    }

    /// Gives positions `a` and `b` each other's ids (tests: an index that
    /// disagrees with the log).
    #[cfg(test)]
    pub(super) fn swap_for_test(&mut self, a: u32, b: u32) {
        let mut ids: Vec<Uuid> = self.iter().map(|(id, _)| id).collect();
        ids.swap(a as usize - 1, b as usize - 1);
        let mut map = IdMap::with_hasher(self.hasher.clone());
        for (i, id) in ids.into_iter().enumerate() {
            if map.push(id, i as u32 + 1).is_err() {
                unreachable!("the ids were unique before the swap");
            }
        }
        *self = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> Uuid {
        Uuid::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    #[test]
    fn ids_are_found_at_their_positions_and_repeats_refused() {
        let mut m = IdMap::default();
        for p in 1..=5_000u32 {
            m.push(id(p), p).unwrap();
        }
        assert_eq!(m.push(id(17), 5_001), Err(17));
        assert_eq!(m.len(), 5_000);
        for p in 1..=5_000u32 {
            assert_eq!(m.get(&id(p)), Some(p));
        }
        assert_eq!(m.get(&id(5_001)), None);
        assert_eq!(m.iter().nth(16), Some((id(17), 17)));
        // A bigger table finds the same.
        let cap = m.capacity() * 2;
        let table = m.bigger_table(cap);
        m.replace_table(table);
        assert!(m.capacity() >= cap);
        m.reserve(cap);
        assert!(m.capacity() >= 5_000 + cap);
        for p in (1..=5_000u32).step_by(7) {
            assert_eq!(m.get(&id(p)), Some(p));
        }
        assert_eq!(m.iter().count(), 5_000);
    }

    #[test]
    fn a_loaded_map_checks_its_pairs() {
        let mut m = IdMap::default();
        for p in 1..=300u32 {
            m.push(id(p), p).unwrap();
        }
        let order: Vec<(Uuid, u32)> = m.table_order();
        let loaded = IdMap::load(
            m.hasher().clone(),
            300,
            m.capacity(),
            order.iter().map(|&e| Ok(e)),
        )
        .unwrap();
        assert_eq!(loaded.capacity(), m.capacity());
        let mut again: Vec<(Uuid, u32)> = loaded.table_order();
        let mut order = order;
        again.sort();
        order.sort();
        assert_eq!(again, order);
        assert!(loaded.iter().eq(m.iter()));
        for p in 1..=300u32 {
            assert_eq!(loaded.get(&id(p)), Some(p));
        }
        let load = |pairs: Vec<(u32, u32)>| {
            let pairs = pairs.into_iter().map(|(i, p)| Ok((id(i), p)));
            IdMap::load(m.hasher().clone(), 300, 0, pairs)
                .err()
                .unwrap()
        };
        let all = || (1..=300u32).map(|p| (p, p)).collect::<Vec<_>>();
        // A position twice, one missing, one out of range, an id twice.
        let mut twice = all();
        twice[5] = (400, 9);
        let err = load(twice);
        assert!(err.contains("position 6 has no id"), "{err}");
        assert!(load(all()[1..].to_vec()).contains("299 ids for 300 positions"));
        let mut past = all();
        past.push((301, 301));
        assert!(load(past).contains("out of range"));
        assert!(load(vec![(1, 0)]).contains("out of range"));
        let mut id_twice = all();
        id_twice[299] = (3, 300);
        let err = load(id_twice);
        assert!(err.contains("held by positions 3 and 300"), "{err}");
        // The nil id is an id like any other; a position listed twice
        // beside it is still found.
        let nil_at_7 = || {
            let mut pairs: Vec<(Uuid, u32)> = (1..=300u32).map(|p| (id(p), p)).collect();
            pairs[6].0 = Uuid::nil();
            pairs
        };
        let loaded =
            IdMap::load(m.hasher().clone(), 300, 0, nil_at_7().into_iter().map(Ok)).unwrap();
        assert_eq!(loaded.get(&Uuid::nil()), Some(7));
        let mut pairs = nil_at_7();
        pairs[9].1 = 11;
        let err = IdMap::load(m.hasher().clone(), 300, 0, pairs.into_iter().map(Ok))
            .err()
            .unwrap();
        assert!(err.contains("position 10 has no id"), "{err}");
    }
}
