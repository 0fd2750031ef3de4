//! `casebook copy` into a segment store: a verified log's events written
//! as frames byte for byte (positions, versions and hashes kept), into a
//! school's log that is not open for appends in this process. The next
//! open of the log recovers it from the segments like any other.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::frame::{encode_frame, FrameMeta};
use super::{
    create_segment, cut_to, io, recover, stored_at, sync_dir, Index, Loc, Segment, SegmentStore,
    CHECKPOINT_DIR, LOGS_DIR,
};
use crate::envelope::{StoredEvent, StreamId};
use crate::error::StoreError;
use crate::store::sled::validate_school;

fn refused(school: &str, what: String) -> StoreError {
    StoreError::Io {
        during: "copy",
        source: format!("school {school:?}: {what}").into(),
    }
}

impl SegmentStore {
    /// A log that is open for appends in this process is written only by
    /// its writer.
    fn refuse_if_open(&self, school: &str) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// The copy state of `school`'s log: the one cached by an earlier
    /// call, or recovered from its segments (once per copy, not per page).
    fn copying(&self, school: &str) -> Result<Copying, StoreError> {
        if let Some(c) = self
            .copies
            .lock()
            .map_err(|_| StoreError::WriterStopped)?
            .remove(school)
        {
            return Ok(c);
        }
        let logs = self.path.join(LOGS_DIR);
        let dir = logs.join(school);
        let created = !dir.exists();
        std::fs::create_dir_all(dir.join(CHECKPOINT_DIR)).map_err(io("copy"))?;
        if created {
            sync_dir(&logs)?;
        }
        // A copy checks every event id it adds against the log's.
        let rec = recover(
            &dir,
            self.options.read_snapshot,
            super::snapshot::OpenWith::ids(true),
            super::Spills::of(&self.options),
        )?;
        let Some(last) = rec.segments.last() else {
            return Err(refused(school, "the log has no segment".into()));
        };
        Ok(Copying {
            file: last.file.try_clone().map_err(io("copy"))?,
            seg: rec.segments.len() as u32 - 1,
            end: rec.end,
            torn: rec.torn,
            torn_zero: rec.torn_zero,
            index: rec.index,
            segments: rec.segments,
            dir,
        })
    }

    fn keep(&self, school: &str, c: Copying) -> Result<(), StoreError> {
        self.copies
            .lock()
            .map_err(|_| StoreError::WriterStopped)?
            .insert(school.to_string(), c);
        Ok(())
    }

    /// How many events `school`'s log holds, read from its segments
    /// without opening the log for appends (0 when it has none).
    pub fn stored_head(&self, school: &str) -> Result<u64, StoreError> {
        validate_school(school)?;
        self.refuse_if_open(school)?;
        if !self.path.join(LOGS_DIR).join(school).exists() {
            return Ok(0);
        }
        let c = self.copying(school)?;
        let head = c.index.head();
        self.keep(school, c)?;
        Ok(head)
    }

    /// Appends already-sealed events of `school` exactly as they are: each
    /// must continue the log's head (position and `prev_hash`), its
    /// stream's version, and carry an id the log does not hold. One write
    /// and one fdatasync for the page; all of it or (after a crash) none.
    pub fn copy_in(&self, school: &str, events: &[StoredEvent]) -> Result<(), StoreError> {
        validate_school(school)?;
        if events.is_empty() {
            return Ok(());
        }
        self.refuse_if_open(school)?;
        // On any error the state is dropped, and a later call recovers it
        // from the files again.
        let mut c = self.copying(school)?;
        if c.torn > 0 && c.torn_zero {
            // Zeros a writer preallocated before it stopped: cut them, so a
            // segment this copy rolls past ends at its last group.
            cut_to(&c.file, c.end, "copy")?;
            c.torn = 0;
        }
        if c.torn > 0 {
            return Err(refused(
                school,
                "the log ends in an unfinished commit group; open it once (any command) to recover it before copying into it".into(),
            ));
        }
        if c.end >= self.options.segment_bytes {
            let seg = Arc::new(create_segment(&c.dir, events[0].position)?);
            c.file = seg.file.try_clone().map_err(io("copy"))?;
            c.segments.push(seg);
            c.seg += 1;
            c.end = 0;
        }
        let mut position = c.index.head();
        let mut hash = c.index.head_hash;
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        let mut buf = Vec::new();
        let mut frames = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if e.position != position + 1 || e.prev_hash != hash {
                return Err(refused(
                    school,
                    format!(
                        "event at position {} does not continue the log's head (position {position})",
                        e.position
                    ),
                ));
            }
            if e.position > c.index.max_events {
                return Err(crate::store::past_most_events(
                    e.position,
                    c.index.max_events,
                ));
            }
            let version = versions
                .get(&e.stream)
                .copied()
                .unwrap_or_else(|| c.index.stream_version(&e.stream));
            if e.version != version + 1 {
                return Err(refused(
                    school,
                    format!(
                        "event at position {} has version {} of its stream, which is at version {version}",
                        e.position, e.version
                    ),
                ));
            }
            if !ids.insert(e.event_id) || stored_at(&c.index, &c.segments, &e.event_id)?.is_some() {
                return Err(refused(
                    school,
                    format!(
                        "event at position {} repeats event id {}",
                        e.position, e.event_id
                    ),
                ));
            }
            let bytes = e.encode()?;
            let meta = FrameMeta {
                group_end: i + 1 == events.len(),
                position: e.position,
                stream: e.stream,
                version: e.version,
                event_id: e.event_id,
            };
            let start = buf.len();
            let len = encode_frame(&mut buf, &meta, &bytes);
            frames.push((meta, start, len, e.hash));
            versions.insert(e.stream, e.version);
            position = e.position;
            hash = e.hash;
        }
        c.file.write_all_at(&buf, c.end).map_err(io("copy"))?;
        c.file.sync_data().map_err(io("fdatasync"))?;
        for (meta, start, len, hash) in frames {
            let loc = Loc {
                offset: c.end + start as u64,
                len: len as u32,
                seg: c.seg,
            };
            c.index
                .push(&meta, loc, hash)
                .map_err(|what| refused(school, what))?;
        }
        // Each id was read and compared where the index had its
        // fingerprint: a fingerprint shared here is two ids.
        c.index.shared.clear();
        c.end += buf.len() as u64;
        self.keep(school, c)
    }
}

/// A log being filled by `casebook copy`, between pages: its index, and
/// where its last segment ends.
pub(super) struct Copying {
    dir: PathBuf,
    pub(super) index: Index,
    /// The log's segments, to read an id from where the index has its
    /// fingerprint.
    segments: Vec<Arc<Segment>>,
    file: File,
    seg: u32,
    end: u64,
    torn: u64,
    torn_zero: bool,
}
