//! `casebook bench --backend segment`: the segment backend
//! (`engine/src/store/segment/`) under the same phases as sled (see
//! `bench.rs`).
//!
//! The ceiling (`raw_backend_batched_ev_s`) is `RawSegmentLog`: the same
//! sealed envelopes written as the engine's frames, one write + one
//! fdatasync per batch, no queue, checks or index. `raw_scan_decode_ev_s`
//! is `segment::raw::scan_decode` over the engine's log directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use casebook_engine::store::segment::raw::{scan_decode, RawSegmentLog};
use casebook_engine::store::segment::{
    SegmentLog, SegmentOptions, SegmentStore, WriterTimes, LOGS_DIR, SNAPSHOT_FILE,
};
use casebook_engine::store::sled_raw::RawEnvelope;
use casebook_engine::store::EventStore;

use crate::bench::{Backend, Engine, RawWriter, Reopened};
use crate::Failure;

/// The segment backend of `casebook bench`.
pub(crate) struct Segment;

struct SegmentEngine {
    dir: PathBuf,
    _store: Arc<SegmentStore>,
    log: Arc<SegmentLog>,
}

struct SegmentRaw(Mutex<RawSegmentLog>);

#[async_trait]
impl Backend for Segment {
    fn name(&self) -> &'static str {
        "segment"
    }

    /// 280 bytes an event of log, the index snapshot (~19) and the views'
    /// and facts' checkpoints (~10): 8.4 GB, 0.58 GB and about 0.3 GB at
    /// 30M events (docs/performance.md, "How to run").
    fn disk_needed_per_event(&self) -> Option<u64> {
        Some(330)
    }

    async fn open_engine(&self, dir: &Path, school: &str) -> Result<Box<dyn Engine>, Failure> {
        let (engine, _) = open_timed(dir, school, true, SegmentOptions::default())?;
        Ok(Box::new(engine))
    }

    async fn open_raw(&self, dir: &Path, school: &str) -> Result<Box<dyn RawWriter>, Failure> {
        let raw = RawSegmentLog::open(&dir.join("logs").join(school))?;
        Ok(Box::new(SegmentRaw(Mutex::new(raw))))
    }

    async fn reopen(
        &self,
        engine: Box<dyn Engine>,
        dir: &Path,
        school: &str,
    ) -> Result<(Box<dyn Engine>, Option<Reopened>), Failure> {
        let snapshot = dir.join(LOGS_DIR).join(school).join(SNAPSHOT_FILE);
        tokio::task::block_in_place(|| {
            // The close: the writer's last act writes the index snapshot.
            let started = Instant::now();
            drop(engine);
            let close_ms = ms(started);
            let snapshot_bytes = std::fs::metadata(&snapshot).ok().map(|m| m.len());
            // The baseline: the index rebuilt from every frame.
            let full = SegmentOptions {
                read_snapshot: false,
                ..SegmentOptions::default()
            };
            let (scanned, open_full_scan_ms) = open_timed(dir, school, false, full)?;
            drop(scanned);
            // An open that leaves the event ids in the snapshot but holds
            // every location (no CLI command opens so since session an:
            // the full index's open without the ids).
            let reading_only = SegmentOptions {
                event_ids_at_open: false,
                ..SegmentOptions::default()
            };
            let (engine, open_reading_only_ms) = open_timed(dir, school, false, reading_only)?;
            let index_bytes_reading_only = engine.log.index_bytes();
            let from_snapshot = engine.log.opened_from_snapshot().is_some();
            Ok((
                Box::new(engine) as Box<dyn Engine>,
                Some(Reopened {
                    close_ms,
                    open_full_scan_ms,
                    open_reading_only_ms,
                    index_bytes_reading_only,
                    from_snapshot,
                    snapshot_bytes,
                }),
            ))
        })
    }

    async fn open_sparse(
        &self,
        engine: Box<dyn Engine>,
        dir: &Path,
        school: &str,
    ) -> Result<(Box<dyn Engine>, Option<(f64, u64)>), Failure> {
        tokio::task::block_in_place(|| {
            drop(engine);
            // The event ids and the locations stay in the snapshot (but
            // where each group of 64 starts).
            let sparse_index = SegmentOptions {
                event_ids_at_open: false,
                locations_at_open: false,
                ..SegmentOptions::default()
            };
            let (engine, open_ms) = open_timed(dir, school, false, sparse_index)?;
            let bytes = engine.log.index_bytes();
            Ok((Box::new(engine) as Box<dyn Engine>, Some((open_ms, bytes))))
        })
    }

    async fn open_ids_left(
        &self,
        engine: Box<dyn Engine>,
        dir: &Path,
        school: &str,
        in_place: bool,
    ) -> Result<(Box<dyn Engine>, bool), Failure> {
        tokio::task::block_in_place(|| {
            drop(engine);
            let defaults = SegmentOptions::default();
            let options = SegmentOptions {
                event_ids_at_open: false,
                locations_at_open: false,
                ids_in_place_least: match in_place {
                    true => defaults.ids_in_place_least,
                    false => 0,
                },
                ..defaults
            };
            let (engine, _) = open_timed(dir, school, false, options)?;
            let left = engine.log.opened_from_snapshot().is_some() && !engine.log.event_ids_held();
            Ok((Box::new(engine) as Box<dyn Engine>, left))
        })
    }

    async fn open_for_appends(
        &self,
        engine: Box<dyn Engine>,
        dir: &Path,
        school: &str,
    ) -> Result<(Box<dyn Engine>, Option<f64>), Failure> {
        tokio::task::block_in_place(|| {
            drop(engine);
            let (engine, open_ms) = open_timed(dir, school, false, SegmentOptions::default())?;
            Ok((Box::new(engine) as Box<dyn Engine>, Some(open_ms)))
        })
    }
}

/// The segment engine of `school` in `dir`, opened with `options`, and how
/// long the open took (ms).
fn open_timed(
    dir: &Path,
    school: &str,
    create: bool,
    options: SegmentOptions,
) -> Result<(SegmentEngine, f64), Failure> {
    let started = Instant::now();
    let store = SegmentStore::open_with(dir, create, options)?;
    let log = store.log(school)?;
    let open_ms = ms(started);
    Ok((
        SegmentEngine {
            dir: dir.to_path_buf(),
            _store: store,
            log,
        },
        open_ms,
    ))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[async_trait]
impl Engine for SegmentEngine {
    fn log(&self) -> Arc<dyn EventStore> {
        self.log.clone()
    }

    async fn raw_scan_decode(&self) -> Result<u64, Failure> {
        let mut sum = 0u64;
        let n = scan_decode(self.log.dir(), |e| sum = sum.wrapping_add(e.version))?;
        std::hint::black_box(sum);
        Ok(n)
    }

    async fn disk_bytes(&self) -> Result<u64, Failure> {
        allocated_bytes(&self.dir)
            .map_err(|e| Failure::Store(format!("cannot size {}: {e}", self.dir.display())))
    }

    fn index_bytes(&self) -> Option<u64> {
        Some(self.log.index_bytes())
    }

    fn writer_times(&self) -> Option<WriterTimes> {
        Some(self.log.writer_times())
    }

    fn event_ids_held(&self) -> Option<bool> {
        Some(self.log.event_ids_held())
    }
}

#[async_trait]
impl RawWriter for SegmentRaw {
    async fn write_batch(&self, events: &[RawEnvelope], _recorded_us: i64) -> Result<(), Failure> {
        let mut raw = self
            .0
            .lock()
            .map_err(|_| Failure::Store("bench: raw writer poisoned".into()))?;
        Ok(raw.write_batch(events)?)
    }
}

/// Bytes allocated on disk under `dir` (blocks, as for sled).
fn allocated_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            allocated_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}
