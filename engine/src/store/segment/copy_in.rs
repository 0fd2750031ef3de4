//! `casebook copy` into a segment store: a verified log's events written
//! as frames byte for byte (positions, versions and hashes kept), into a
//! school's log that is not open for appends in this process. The next
//! open of the log recovers it from the segments like any other.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use super::frame::{encode_frame, FrameMeta};
use super::{create_segment, io, recover, sync_dir, SegmentStore, CHECKPOINT_DIR, LOGS_DIR};
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

    /// How many events `school`'s log holds, read from its segments
    /// without opening the log for appends (0 when it has none).
    pub fn stored_head(&self, school: &str) -> Result<u64, StoreError> {
        validate_school(school)?;
        self.refuse_if_open(school)?;
        let dir = self.path.join(LOGS_DIR).join(school);
        if !dir.exists() {
            return Ok(0);
        }
        Ok(recover(&dir)?.index.head())
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
        let logs = self.path.join(LOGS_DIR);
        let dir = logs.join(school);
        let created = !dir.exists();
        std::fs::create_dir_all(dir.join(CHECKPOINT_DIR)).map_err(io("copy"))?;
        if created {
            sync_dir(&logs)?;
        }
        let rec = recover(&dir)?;
        if rec.torn > 0 {
            return Err(refused(
                school,
                "the log ends in an unfinished commit group; open it once (any command) to recover it before copying into it".into(),
            ));
        }
        let mut position = rec.index.head();
        let mut hash = rec.index.head_hash;
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        let mut buf = Vec::new();
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
            let version = versions
                .get(&e.stream)
                .copied()
                .unwrap_or_else(|| rec.index.stream_version(&e.stream));
            if e.version != version + 1 {
                return Err(refused(
                    school,
                    format!(
                        "event at position {} has version {} of its stream, which is at version {version}",
                        e.position, e.version
                    ),
                ));
            }
            if rec.index.ids.contains_key(&e.event_id) || !ids.insert(e.event_id) {
                return Err(refused(
                    school,
                    format!(
                        "event at position {} repeats event id {}",
                        e.position, e.event_id
                    ),
                ));
            }
            let bytes = e.encode()?;
            encode_frame(
                &mut buf,
                &FrameMeta {
                    group_end: i + 1 == events.len(),
                    position: e.position,
                    stream: e.stream,
                    version: e.version,
                    event_id: e.event_id,
                },
                &bytes,
            );
            versions.insert(e.stream, e.version);
            position = e.position;
            hash = e.hash;
        }
        let (file, offset) = match rec.segments.last() {
            Some(seg) if rec.end < self.options.segment_bytes => (&seg.file, rec.end),
            _ => {
                let seg = create_segment(&dir, events[0].position)?;
                let file = seg.file;
                file.write_all_at(&buf, 0).map_err(io("copy"))?;
                return file.sync_data().map_err(io("fdatasync"));
            }
        };
        file.write_all_at(&buf, offset).map_err(io("copy"))?;
        file.sync_data().map_err(io("fdatasync"))
    }
}
