//! The timeline phase of `casebook bench`: `casebook timeline --format json`
//! of random pupils, timed through the command's own read path
//! (`views::timeline_doc` over `Guarded` over the per-pupil reader that
//! opens sealed fields), with the durable `RecordViewed` append that every
//! read makes timed apart.
//!
//! The append happens inside `Guarded::read_pupil_events`; the log under
//! the reader is wrapped in [`AppendClock`], which adds up the time spent
//! in appends. A timeline's figure is its whole time less that; the whole
//! time is the `timeline_with_access_log_*` figure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use casebook_engine::access::{Action, Guarded};
use casebook_engine::store::{
    AppendRequest, Appended, EventStore, Head, Presealed, StreamVisitor, VerifyReport,
};
use casebook_engine::{StoreError, StoredEvent, StreamId};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::views::{timeline_doc, timeline_json, TimelineFilter};
use crate::Failure;

/// The staff the bench reads as (the store has no directory: single-user
/// mode, where every actor may read everything, as on a fresh store).
const BENCH_STAFF: &str = "S001";

/// Latencies of one timeline phase.
pub(crate) struct TimelineTimes {
    /// Each read without its access-log append.
    pub reads: Vec<Duration>,
    /// Each read with it: the command's whole read path.
    pub with_log: Vec<Duration>,
    /// Entries shown, over all reads.
    pub entries: usize,
}

/// Reads the timeline of each pupil of `pupils` in turn, as
/// `casebook timeline PUPIL --format json` does.
pub(crate) async fn timelines(
    log: Arc<dyn EventStore>,
    school: &str,
    pupils: &[&str],
    now: DateTime<Utc>,
) -> Result<TimelineTimes, Failure> {
    let clock = Arc::new(AppendClock::new(log));
    let reader = crate::privacy::reader_with_ring(clock.clone(), None);
    let guarded = Guarded::open(reader, school)
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    let filter = TimelineFilter {
        safeguarding_only: false,
        no_register_marks: false,
    };
    let mut out = TimelineTimes {
        reads: Vec::with_capacity(pupils.len()),
        with_log: Vec::with_capacity(pupils.len()),
        entries: 0,
    };
    // The document's bytes, one buffer for every read.
    let mut json = Vec::new();
    for pupil in pupils {
        let action = Action::ReadTimeline {
            pupil: pupil.to_string(),
            keyworker: None,
        };
        let actor = guarded
            .actor(Some(BENCH_STAFF), &action, now)
            .await
            .map_err(crate::staff::access_failure)?;
        let appends_before = clock.spent();
        let started = Instant::now();
        let (doc, _withheld) = timeline_doc(
            &guarded,
            &actor,
            pupil,
            None,
            &filter,
            Some("benchmark".into()),
            now,
        )
        .await?;
        timeline_json(&doc, &mut json);
        std::hint::black_box(&json);
        let whole = started.elapsed();
        let appending = clock.spent().saturating_sub(appends_before);
        out.entries += doc.entries.len();
        out.reads.push(whole.saturating_sub(appending));
        out.with_log.push(whole);
    }
    Ok(out)
}

/// A log that adds up the time its appends take, and counts the calls of
/// its `read_stream` (the privacy reader's test checks that a page is read
/// once).
pub(crate) struct AppendClock {
    inner: Arc<dyn EventStore>,
    spent: Mutex<Duration>,
    page_reads: std::sync::atomic::AtomicUsize,
}

impl AppendClock {
    pub(crate) fn new(inner: Arc<dyn EventStore>) -> AppendClock {
        AppendClock {
            inner,
            spent: Mutex::new(Duration::ZERO),
            page_reads: Default::default(),
        }
    }

    /// `append`, its time added to the time spent in appends.
    async fn timed<T>(&self, append: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let done = append.await;
        *self.spent.lock().unwrap_or_else(|e| e.into_inner()) += started.elapsed();
        done
    }

    /// Time spent in appends so far.
    pub(crate) fn spent(&self) -> Duration {
        *self.spent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls of `read_stream` so far.
    #[cfg(test)]
    pub(crate) fn page_reads(&self) -> usize {
        self.page_reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl EventStore for AppendClock {
    async fn append_atomic(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.timed(self.inner.append_atomic(requests)).await
    }

    async fn append_presealed(&self, presealed: Presealed) -> Result<Vec<Appended>, StoreError> {
        self.timed(self.inner.append_presealed(presealed)).await
    }

    async fn append_atomic_minted(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.timed(self.inner.append_atomic_minted(requests)).await
    }

    fn seals_ahead(&self) -> bool {
        self.inner.seals_ahead()
    }

    fn expect_appends(&self, events: u64) {
        self.inner.expect_appends(events)
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.page_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_stream(stream, from_version, max).await
    }

    async fn visit_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
        visit: &mut dyn StreamVisitor,
    ) -> Result<usize, StoreError> {
        self.inner
            .visit_stream(stream, from_version, max, visit)
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_all(from_position, max).await
    }

    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.find_event(event_id).await
    }

    async fn positions_in_streams(
        &self,
        wanted: &[casebook_engine::store::InStream],
    ) -> Result<std::collections::HashMap<Uuid, u64>, StoreError> {
        self.inner.positions_in_streams(wanted).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, bytes).await
    }

    async fn clear_checkpoints(&self) -> Result<(), StoreError> {
        self.inner.clear_checkpoints().await
    }

    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        self.inner.verify(progress).await
    }
}
