//! [`PupilMap`]: a school-wide view's state per pupil, keyed by stream,
//! looked up by hash and always read in stream order.
//!
//! A view looks its pupil up for nearly every event it folds (a register
//! mark, a concern, a review). In a `BTreeMap` of a large school that is a
//! walk down the tree, a cache miss a level: 60–73 ns a look-up at 2,400
//! pupils, 200–320 at 73,000 and 400–470 at 240,000 on this machine kind
//! (docs/performance.md, "Session bj"). So the map is an `IndexMap`: the
//! entries one after another in a `Vec`, found through a hash table of
//! their places (hashed as the engine's index hashes its keys, [`IdHash`]:
//! a folded multiplication per 8 bytes under a seed drawn once a process),
//! 9–10, 35–41 and 83–85 ns a look-up. A `HashMap` holding the entries in
//! its own slots was faster still (7–8, 24–32, 45–58 ns) but at 240,000
//! pupils, whose table is then about half full, held 45% more than the
//! `BTreeMap` (48.6 MB against 33.6 for 96-byte entries); the `IndexMap`
//! holds less than either (28.4). Everything that reads the map in order
//! (a report, a checkpoint) sorts its entries by stream first: what a
//! report shows and the bytes of a checkpoint are the same as a
//! `BTreeMap`'s, whatever order the pupils arrived in and whatever the
//! table's seed.
//!
//! Architecture Invariant: no order of the table is ever seen. The only
//! ways to visit more than one entry ([`PupilMap::iter`], [`PupilMap::keys`],
//! [`PupilMap::values`], `Debug`, `Serialize`) go in stream order, so the
//! fold stays a pure function of the log (`lib.rs`).

use casebook_engine::store::IdHash;
use casebook_engine::StreamId;
use indexmap::IndexMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Per-pupil state keyed by stream (see the module's doc).
#[derive(Clone)]
pub struct PupilMap<V> {
    table: IndexMap<StreamId, V, IdHash>,
}

impl<V> Default for PupilMap<V> {
    fn default() -> Self {
        PupilMap {
            table: IndexMap::default(),
        }
    }
}

impl<V> PupilMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `pupils` without growing.
    pub fn with_capacity(pupils: usize) -> Self {
        PupilMap {
            table: IndexMap::with_capacity_and_hasher(pupils, IdHash::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn get(&self, stream: &StreamId) -> Option<&V> {
        self.table.get(stream)
    }

    pub fn get_mut(&mut self, stream: &StreamId) -> Option<&mut V> {
        self.table.get_mut(stream)
    }

    /// The pupil's entry, made with `V::default()` if they have none.
    pub fn or_default(&mut self, stream: StreamId) -> &mut V
    where
        V: Default,
    {
        self.table.entry(stream).or_default()
    }

    /// The pupil's entry, made with `make()` if they have none.
    pub fn or_insert_with(&mut self, stream: StreamId, make: impl FnOnce() -> V) -> &mut V {
        self.table.entry(stream).or_insert_with(make)
    }

    /// Sets the pupil's entry; the one it replaces, if any.
    pub fn insert(&mut self, stream: StreamId, value: V) -> Option<V> {
        self.table.insert(stream, value)
    }

    /// Every entry, in stream order.
    pub fn iter(&self) -> std::vec::IntoIter<(&StreamId, &V)> {
        let mut entries: Vec<(&StreamId, &V)> = self.table.iter().collect();
        entries.sort_unstable_by_key(|&(stream, _)| *stream);
        entries.into_iter()
    }

    /// Every stream, in order.
    pub fn keys(&self) -> impl Iterator<Item = &StreamId> + '_ {
        self.iter().map(|(stream, _)| stream)
    }

    /// Every entry's value, in stream order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, value)| value)
    }
}

impl<'a, V> IntoIterator for &'a PupilMap<V> {
    type Item = (&'a StreamId, &'a V);
    type IntoIter = std::vec::IntoIter<(&'a StreamId, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V> std::ops::Index<&StreamId> for PupilMap<V> {
    type Output = V;

    /// Panics when the pupil has no entry, as `BTreeMap`'s index does
    /// (tests only: the views look up with `get`).
    fn index(&self, stream: &StreamId) -> &V {
        &self.table[stream]
    }
}

impl<V: PartialEq> PartialEq for PupilMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl<V: Eq> Eq for PupilMap<V> {}

impl<V: std::fmt::Debug> std::fmt::Debug for PupilMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map in stream order: the bytes a `BTreeMap` of the same entries
/// gives.
impl<V: Serialize> Serialize for PupilMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// A map in any order; a stream listed twice keeps its last value, as a
/// `BTreeMap` does.
impl<'de, V: Deserialize<'de>> Deserialize<'de> for PupilMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = PupilMap<V>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of pupils by stream")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<PupilMap<V>, A::Error> {
                // The length the bytes claim is not trusted: room for at
                // most a mebibyte of entries up front (as serde sizes its
                // own maps), the table growing past it as entries arrive.
                let most = (1 << 20) / std::mem::size_of::<(StreamId, V)>().max(1);
                let claimed = entries.size_hint().unwrap_or(0);
                let mut map = PupilMap::with_capacity(claimed.min(most));
                while let Some((stream, value)) = entries.next_entry()? {
                    map.insert(stream, value);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn stream(n: u128) -> StreamId {
        StreamId(Uuid::from_u128(n))
    }

    proptest! {
        /// Whatever the order the pupils arrive in, the map reads, prints
        /// and serializes as a `BTreeMap` of the same entries does, and
        /// reads back from those bytes to the same map.
        #[test]
        fn reads_and_serializes_as_a_btree_map(
            entries in proptest::collection::vec((any::<u128>(), any::<u32>()), 0..200),
            again in proptest::collection::vec(0usize..200, 0..50),
        ) {
            let mut ours = PupilMap::new();
            let mut theirs = BTreeMap::new();
            let writes = entries
                .iter()
                .copied()
                .chain(again.iter().filter_map(|&i| entries.get(i).map(|&(k, v)| (k, v ^ 1))));
            for (k, v) in writes {
                prop_assert_eq!(ours.insert(stream(k), v), theirs.insert(stream(k), v));
            }
            prop_assert_eq!(ours.len(), theirs.len());
            prop_assert!(ours.iter().eq(theirs.iter()));
            prop_assert!(ours.keys().eq(theirs.keys()));
            prop_assert!(ours.values().eq(theirs.values()));
            prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
            let bytes = rmp_serde::to_vec(&ours).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&theirs).unwrap());
            let back: PupilMap<u32> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &ours);
            for (k, v) in &theirs {
                prop_assert_eq!(ours.get(k), Some(v));
                prop_assert_eq!(&ours[k], v);
            }
            prop_assert_eq!(ours.get(&stream(u128::MAX - 7)), theirs.get(&stream(u128::MAX - 7)));
        }
    }

    /// Bytes that claim four billion entries and hold none are refused,
    /// without room made for what they claim.
    #[test]
    fn a_length_the_bytes_do_not_hold_is_refused() {
        let bytes = [0xdf, 0xff, 0xff, 0xff, 0xff];
        // A kilobyte a value: room for what the bytes claim would be 4 TiB.
        type Big = ([u64; 32], [u64; 32], [u64; 32], [u64; 32]);
        let read: Result<PupilMap<Big>, _> = rmp_serde::from_slice(&bytes);
        assert!(read.is_err());
    }

    /// A map whose serialized form lists a stream twice keeps the last
    /// value, as a `BTreeMap` read from the same bytes does.
    #[test]
    fn a_stream_listed_twice_keeps_its_last_value() {
        // A MessagePack map of two entries, both for stream 1.
        let mut bytes = vec![0x82];
        for value in [7u8, 9] {
            bytes.extend(rmp_serde::to_vec(&stream(1)).unwrap());
            bytes.push(value);
        }
        let ours: PupilMap<u8> = rmp_serde::from_slice(&bytes).unwrap();
        let theirs: BTreeMap<StreamId, u8> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            ours.iter().collect::<Vec<_>>(),
            theirs.iter().collect::<Vec<_>>()
        );
        assert_eq!(ours.get(&stream(1)), Some(&9));
    }
}
