//! The segment index's per-position table: [`Chunked`], a vector that
//! grows by fixed chunks (no copying, at most one chunk of slack).

/// Entries per chunk of a [`Chunked`] (the first chunk grows up to it by
/// doubling, so a small log stays small).
const CHUNK: usize = 1 << 16;

/// Most positions a log's index holds: stream lists number positions with
/// a `u32`.
pub(super) const MAX_POSITIONS: u64 = u32::MAX as u64;

/// A push-only vector kept in chunks of [`CHUNK`] entries: growing never
/// copies what is stored, and the slack is at most one chunk (a doubling
/// `Vec` carries up to its length again, and copies it all at each step).
#[derive(Clone, Debug)]
pub(super) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// Entry `i` and the one after it (if any), with one chunk lookup
    /// when both are in one chunk.
    #[inline]
    pub(super) fn get_pair(&self, i: usize) -> Option<(&T, Option<&T>)> {
        let chunk = self.chunks.get(i / CHUNK)?;
        let j = i % CHUNK;
        let first = chunk.get(j)?;
        let next = match chunk.get(j + 1) {
            Some(n) => Some(n),
            None => self.get(i + 1),
        };
        Some((first, next))
    }

    #[inline]
    pub(super) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(value),
            _ => self.push_in_new_chunk(value),
        }
        self.len += 1;
    }

    /// [`Chunked::push`] when the last chunk is full (or there is none).
    #[cold]
    fn push_in_new_chunk(&mut self, value: T) {
        // The first chunk grows by doubling; later ones are whole.
        let mut c = match self.chunks.is_empty() {
            true => Vec::new(),
            false => Vec::with_capacity(CHUNK),
        };
        c.push(value);
        self.chunks.push(c);
    }

    /// Bytes allocated for the entries and the chunk list.
    pub(super) fn allocated_bytes(&self) -> usize {
        let entries: usize = self.chunks.iter().map(Vec::capacity).sum();
        entries * std::mem::size_of::<T>() + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }

    #[cfg(test)]
    pub(super) fn to_vec(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.chunks.iter().flatten().cloned().collect()
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the first chunk, entries keep their places and their values.
    #[test]
    fn chunked_holds_entries_across_chunks() {
        let mut c = Chunked::default();
        let n = CHUNK * 2 + 17;
        for i in 0..n {
            c.push(i as u64 * 3);
        }
        assert_eq!(c.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, n - 1] {
            assert_eq!(c[i], i as u64 * 3);
            assert_eq!(c.get(i), Some(&(i as u64 * 3)));
        }
        assert_eq!(c.get(n), None);
        let at = |i: usize| c.get_pair(i).map(|(a, b)| (*a, b.copied()));
        assert_eq!(at(0), Some((0, Some(3))));
        assert_eq!(at(CHUNK - 1), Some((c[CHUNK - 1], Some(c[CHUNK]))));
        assert_eq!(at(n - 1), Some((c[n - 1], None)));
        assert_eq!(at(n), None);
        assert_eq!(c.to_vec(), (0..n as u64).map(|i| i * 3).collect::<Vec<_>>());
        // Three chunks of exactly CHUNK entries each.
        assert!(c.allocated_bytes() >= 3 * CHUNK * 8);
        assert!(c.allocated_bytes() < 3 * CHUNK * 8 + 1024);
    }
}
