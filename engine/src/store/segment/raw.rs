//! The raw segment writer and reader: the benchmark's ceiling for the
//! segment backend (`casebook bench --backend segment`), like
//! `sled_raw.rs` for sled.
//!
//! [`RawSegmentLog`] writes already-sealed envelopes as the engine's frames
//! (docs/storage.md), one `pwrite` + one `fdatasync` per batch, rolling
//! segments at the engine's size and dropping older ones from the page
//! cache as the engine does for a bulk write: exactly the I/O of one
//! engine group, and nothing else (no queue, no checks, no index).
//! [`scan_decode`] is the read ceiling: every frame of a log directory,
//! checksum checked and fully decoded.
//!
//! Not a store: it checks nothing and must never write a real log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{decode_frame, encode_frame, FrameMeta, SeqReader, MAX_FRAME, PREFIX_LEN};
use super::{
    create_segment, drop_from_page_cache, list_segments, past_bulk_cache, DEFAULT_SEGMENT_BYTES,
};
use crate::envelope::{RecordedEvent, StoredEvent};
use crate::error::StoreError;
use crate::store::sled_raw::RawEnvelope;

/// Segment files written without the engine.
pub struct RawSegmentLog {
    dir: PathBuf,
    file: File,
    end: u64,
    buf: Vec<u8>,
    /// Closed segments still in the page cache, oldest first: dropped
    /// from it as the engine's writer drops segments written in bulk
    /// ([`super::BULK_CACHED_SEGMENTS`]; every batch here is one).
    cached: std::collections::VecDeque<File>,
}

impl RawSegmentLog {
    /// Creates `dir` and its first segment.
    pub fn open(dir: &Path) -> Result<RawSegmentLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create log", e))?;
        let seg = create_segment(dir, 1)?;
        Ok(RawSegmentLog {
            dir: dir.to_path_buf(),
            file: seg.file,
            end: 0,
            buf: Vec::new(),
            cached: std::collections::VecDeque::new(),
        })
    }

    /// Writes `events` as one group (frames, one write, one fdatasync).
    pub fn write_batch(&mut self, events: &[RawEnvelope]) -> Result<(), StoreError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        if self.end >= DEFAULT_SEGMENT_BYTES {
            let closed = std::mem::replace(
                &mut self.file,
                create_segment(&self.dir, first.position)?.file,
            );
            self.cached.push_back(closed);
            for old in past_bulk_cache(&mut self.cached) {
                drop_from_page_cache(&old);
            }
            self.end = 0;
        }
        self.buf.clear();
        let n = events.len();
        for (i, e) in events.iter().enumerate() {
            let meta = FrameMeta {
                group_end: i + 1 == n,
                position: e.position,
                stream: e.stream,
                version: e.version,
                event_id: e.event_id,
            };
            encode_frame(&mut self.buf, &meta, &e.bytes);
        }
        self.file
            .write_all_at(&self.buf, self.end)
            .map_err(|e| StoreError::io("append", e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", e))?;
        self.end += self.buf.len() as u64;
        Ok(())
    }
}

/// Reads every frame of the log in `dir` in order, checks its checksum and
/// decodes the event fully (envelope and payload), calling `each`. Returns
/// the number of events.
pub fn scan_decode(dir: &Path, mut each: impl FnMut(&RecordedEvent)) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for (_, path) in list_segments(dir)? {
        let file = File::open(&path).map_err(|e| StoreError::io("read", e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("read", e))?
            .len();
        let mut reader = SeqReader::new(&file, len);
        let mut offset = 0u64;
        while offset < len {
            let corrupt = |what: String| StoreError::Corrupt {
                location: format!("{} at byte {offset}", path.display()),
                what,
            };
            let bytes = reader
                .at(offset, PREFIX_LEN + MAX_FRAME)
                .map_err(|e| StoreError::io("read", e))?;
            if bytes.len() >= 4 && bytes[..4] == [0; 4] {
                // Zeros the writer preallocated: the segment's data ends.
                break;
            }
            let (_, value, flen) = decode_frame(bytes).map_err(|e| corrupt(e.to_string()))?;
            let stored = StoredEvent::decode(value).map_err(|e| corrupt(e.to_string()))?;
            let recorded =
                RecordedEvent::from_stored(&stored).map_err(|e| corrupt(e.to_string()))?;
            each(&recorded);
            n += 1;
            offset += flen as u64;
        }
    }
    Ok(n)
}
