//! The segment index's per-position tables: [`Chunked`], a vector that
//! grows by fixed chunks (no copying, at most one chunk of slack).

/// Entries per chunk of a [`Chunked`] unless it says otherwise (the first
/// chunk grows up to it by doubling, so a small log stays small).
const CHUNK: usize = 1 << 16;

/// Most positions a log's index holds: stream lists number positions with
/// a `u32`.
pub(super) const MAX_POSITIONS: u64 = u32::MAX as u64;

/// A push-only vector kept in chunks of `N` entries ([`CHUNK`] unless
/// given): growing never copies what is stored, and the slack is at most
/// one chunk (a doubling `Vec` carries up to its length again, and copies
/// it all at each step). A table of small entries takes a smaller `N`
/// where a chunk's slack would weigh against what it holds.
#[derive(Clone, Debug)]
pub(super) struct Chunked<T, const N: usize = CHUNK> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T, const N: usize> Default for Chunked<T, N> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T, const N: usize> Chunked<T, N> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / N)?.get(i % N)
    }

    /// The last entry.
    pub(super) fn last(&self) -> Option<&T> {
        self.chunks.last()?.last()
    }

    #[inline]
    pub(super) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < N => c.push(value),
            _ => self.push_in_new_chunk(value),
        }
        self.len += 1;
    }

    /// Pushes each of `values` in turn, as [`Chunked::push`] would (the
    /// same entries in the same chunks, the first grown by doubling), a
    /// chunk's worth at a time.
    pub(super) fn extend_from_slice(&mut self, mut values: &[T])
    where
        T: Copy,
    {
        while !values.is_empty() {
            let chunk = match self.chunks.last_mut() {
                Some(c) if c.len() < N => c,
                _ => {
                    let c = self.new_chunk();
                    self.chunks.push(c);
                    continue;
                }
            };
            let n = values.len().min(N - chunk.len());
            let want = chunk.len() + n;
            if want > chunk.capacity() {
                // As pushing one at a time grows the first chunk: by
                // doubling (from 4), up to a chunk (`want` is at most one).
                let grown = want.next_power_of_two().max(4).min(N);
                chunk.reserve_exact(grown - chunk.len());
            }
            chunk.extend_from_slice(&values[..n]);
            self.len += n;
            values = &values[n..];
        }
    }

    /// [`Chunked::push`] when the last chunk is full (or there is none).
    #[cold]
    fn push_in_new_chunk(&mut self, value: T) {
        let mut c = self.new_chunk();
        c.push(value);
        self.chunks.push(c);
    }

    /// The next chunk, empty: the first grows by doubling; later ones are
    /// whole from the start.
    fn new_chunk(&self) -> Vec<T> {
        match self.chunks.is_empty() {
            true => Vec::new(),
            false => Vec::with_capacity(N),
        }
    }

    /// Bytes allocated for the entries and the chunk list.
    pub(super) fn allocated_bytes(&self) -> usize {
        let entries: usize = self.chunks.iter().map(Vec::capacity).sum();
        entries * std::mem::size_of::<T>() + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }

    /// Every entry, in order (an index snapshot's group table; tests).
    /// The values in order, a chunk at a time (no index arithmetic).
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }

    pub(super) fn to_vec(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.chunks.iter().flatten().cloned().collect()
    }
}

impl<T, const N: usize> std::ops::Index<usize> for Chunked<T, N> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / N][i % N]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the first chunk, entries keep their places and their values.
    #[test]
    fn chunked_holds_entries_across_chunks() {
        let mut c: Chunked<u64> = Chunked::default();
        assert_eq!(c.last(), None);
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
        assert_eq!(c.last(), Some(&((n as u64 - 1) * 3)));
        assert_eq!(c.to_vec(), (0..n as u64).map(|i| i * 3).collect::<Vec<_>>());
        // The same entries pushed in slices of every size across the
        // chunks' edges: the same vector, the same chunks.
        for step in [1, 7, CHUNK - 1, CHUNK, CHUNK + 3, n] {
            let mut e: Chunked<u64> = Chunked::default();
            let all: Vec<u64> = (0..n as u64).map(|i| i * 3).collect();
            for slice in all.chunks(step) {
                e.extend_from_slice(slice);
            }
            e.extend_from_slice(&[]);
            assert_eq!(e.len(), n, "step {step}");
            assert_eq!(e.to_vec(), all, "step {step}");
            assert_eq!(e.allocated_bytes(), c.allocated_bytes(), "step {step}");
        }
        // Three chunks of exactly CHUNK entries each.
        assert!(c.allocated_bytes() >= 3 * CHUNK * 8);
        assert!(c.allocated_bytes() < 3 * CHUNK * 8 + 1024);
    }
}
