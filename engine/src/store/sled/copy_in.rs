//! Writing already sealed events into a sled log unchanged, for
//! `casebook copy` from another backend: positions, times and hashes are
//! kept, so the copy verifies and ends at the same head.
//!
//! This bypasses the writer (which assigns positions and hashes), so it
//! works only on a log that is not open in this process, and only after
//! the log's current head: every page must continue the chain exactly.

use super::*;

impl SledStore {
    /// The head position of `school`'s log read from disk, without opening
    /// the log (0 when it has no events).
    pub fn stored_head(&self, school: &str) -> Result<u64, StoreError> {
        validate_school(school)?;
        let tree = self
            .db
            .open_tree(format!("{LOG_TREE_PREFIX}{school}"))
            .map_err(|e| StoreError::io("open log", e))?;
        Ok(recover_head(&tree, school)?.0)
    }

    /// Appends sealed events (positions from the head on, each chained to
    /// the one before) to `school`'s log in one batch and flushes. Refuses
    /// when the log is open in this process or the events do not continue
    /// its head.
    pub fn copy_in(&self, school: &str, events: &[StoredEvent]) -> Result<(), StoreError> {
        validate_school(school)?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        if self
            .logs
            .lock()
            .map_err(|_| StoreError::WriterStopped)?
            .contains_key(school)
        {
            return Err(StoreError::InUse {
                path: format!(
                    "{} (log {school:?} is open for appends)",
                    self.path.display()
                ),
                pid: Some(std::process::id()),
            });
        }
        let tree = self
            .db
            .open_tree(format!("{LOG_TREE_PREFIX}{school}"))
            .map_err(|e| StoreError::io("open log", e))?;
        let (mut position, mut hash, _) = recover_head(&tree, school)?;
        let mut batch = sled::Batch::default();
        for e in events {
            if e.position != position + 1 || e.prev_hash != hash {
                return Err(StoreError::Io {
                    during: "copy",
                    source: format!(
                        "school {school:?}: event at position {} does not continue the log's head (position {position})",
                        e.position
                    )
                    .into(),
                });
            }
            let bytes = e.encode()?;
            batch.insert(&e_key(e.position), bytes);
            batch.insert(&s_key(e.stream, e.version), &e.position.to_be_bytes());
            batch.insert(&i_key(e.event_id), &e.position.to_be_bytes());
            position = e.position;
            hash = e.hash;
        }
        batch.insert(
            HEAD_KEY,
            &encode_head(position, &hash, last.recorded_at.timestamp_micros())[..],
        );
        tree.apply_batch(batch)
            .map_err(|e| StoreError::io("copy", e))?;
        self.db.flush().map_err(|e| StoreError::io("flush", e))?;
        Watermark::open(&self.path, school)?.record(position, &hash);
        Ok(())
    }
}
