//! The raw sled writer and reader: the benchmark's ceiling for the embedded
//! backend (`casebook bench`, docs/performance.md).
//!
//! [`RawSledLog`] writes already-sealed envelopes straight into a sled tree
//! with the engine's key layout (`e`, `s`, `i` entries and `mhead`, see
//! docs/storage.md), one `Batch` + one `flush` + one `fdatasync` per batch —
//! exactly the I/O the engine's writer does per group, and nothing else: no
//! queue, no version or id checks, no chain. [`scan_decode`] is the read
//! ceiling: a key-order scan of the `e` entries and a full decode of each.
//!
//! Not a store: it checks nothing and must never be used to write a real
//! log. It exists so that the bench can say how close the engine comes to
//! its backend.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sled::{cache_bytes, e_key, encode_head, i_key, open_data_file, s_key, HEAD_KEY};
use crate::envelope::{Hash, NewEvent, RecordedEvent, StoredEvent, StreamId, GENESIS_HASH};
use crate::error::{CodecError, StoreError};

/// One sealed envelope, with the index fields the keys need.
#[derive(Clone, Debug)]
pub struct RawEnvelope {
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
    pub hash: Hash,
    /// The exact stored value (`body || hash`).
    pub bytes: Vec<u8>,
}

/// Seals events one after another into [`RawEnvelope`]s as the engine
/// would store them in a new log: positions from 1, each stream's versions
/// from 1, each event chained to the one before it. For the raw ceilings,
/// which write them without the engine (`casebook bench`, the
/// `append_stalls` bench).
#[derive(Debug)]
pub struct RawChain {
    position: u64,
    prev: Hash,
    versions: HashMap<StreamId, u64>,
}

impl Default for RawChain {
    fn default() -> Self {
        RawChain {
            position: 0,
            prev: GENESIS_HASH,
            versions: HashMap::new(),
        }
    }
}

impl RawChain {
    /// `new` sealed as the next event of the log, in `stream`.
    pub fn seal(
        &mut self,
        stream: StreamId,
        new: &NewEvent,
        recorded_at: DateTime<Utc>,
    ) -> Result<RawEnvelope, CodecError> {
        let version = self.versions.get(&stream).map_or(1, |v| v + 1);
        let position = self.position + 1;
        let (sealed, bytes) =
            StoredEvent::seal(new, stream, position, version, recorded_at, self.prev)?;
        self.versions.insert(stream, version);
        (self.position, self.prev) = (position, sealed.hash);
        Ok(RawEnvelope {
            position,
            stream,
            version,
            event_id: new.event_id,
            hash: sealed.hash,
            bytes,
        })
    }

    /// The last position sealed (0: none).
    pub fn position(&self) -> u64 {
        self.position
    }
}

/// A sled database and one log tree, written without the engine.
pub struct RawSledLog {
    db: sled::Db,
    tree: sled::Tree,
    data_file: std::fs::File,
}

impl RawSledLog {
    /// Opens (creating) a sled database at `dir` with the engine's cache
    /// size and a tree named like the engine's log of `school`.
    pub fn open(dir: &Path, school: &str) -> Result<RawSledLog, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes())
            .open()
            .map_err(|e| StoreError::io("open", e))?;
        let tree = db
            .open_tree(format!("log/{school}"))
            .map_err(|e| StoreError::io("open log", e))?;
        let data_file = open_data_file(dir)?;
        Ok(RawSledLog {
            db,
            tree,
            data_file,
        })
    }

    /// Writes `events` as one batch (with the head record of the last),
    /// flushes and fdatasyncs: durable on return, like an engine group.
    pub fn write_batch(&self, events: &[RawEnvelope], recorded_us: i64) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for e in events {
            batch.insert(&e_key(e.position), e.bytes.as_slice());
            batch.insert(&s_key(e.stream, e.version), &e.position.to_be_bytes());
            batch.insert(&i_key(e.event_id), &e.position.to_be_bytes());
        }
        batch.insert(
            HEAD_KEY,
            &encode_head(last.position, &last.hash, recorded_us)[..],
        );
        self.tree
            .apply_batch(batch)
            .map_err(|e| StoreError::io("append", e))?;
        self.db.flush().map_err(|e| StoreError::io("flush", e))?;
        self.data_file
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", e))
    }

    /// The tree, for [`scan_decode`].
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Bytes sled reports for the database.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(|e| StoreError::io("size", e))
    }
}

/// Scans every `e` entry of a log tree in key order and decodes it fully
/// (envelope and payload, as a projection needs it), calling `each` with
/// the decoded event. Returns the number of events. The read ceiling of a
/// replay: no paging, no projection.
pub fn scan_decode(
    tree: &sled::Tree,
    mut each: impl FnMut(&RecordedEvent),
) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for item in tree.scan_prefix(b"e") {
        let (k, v) = item.map_err(|e| StoreError::io("read", e))?;
        let corrupt = |what: String| StoreError::Corrupt {
            location: format!("key {:?}", k.as_ref()),
            what,
        };
        let stored = StoredEvent::decode(&v).map_err(|e| corrupt(e.to_string()))?;
        let recorded = RecordedEvent::from_stored(&stored).map_err(|e| corrupt(e.to_string()))?;
        each(&recorded);
        n += 1;
    }
    Ok(n)
}
