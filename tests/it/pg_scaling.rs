//! Throughput figures for docs/scaling.md (ignored: a measurement, not a
//! check). Run in release:
//!
//! ```text
//! cargo nextest run --release -p casebook --test it --run-ignored only \
//!     -E 'test(/pg_scaling_figures/)' --no-capture
//! ```
//!
//! One run measures, on the same machine and cluster: engine appends on
//! sled and on PostgreSQL (64 tasks appending single events, group commit),
//! the raw multi-row INSERT ceiling into the same table, and 1, 10 and 100
//! schools appending at once (the same total work split over the schools,
//! and one appender per school).

use std::sync::Arc;
use std::time::Instant;

use casebook_engine::envelope::{StoredEvent, GENESIS_HASH};
use casebook_engine::store::postgres::PostgresStore;
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion};
use chrono::Utc;

use crate::conformance::{contact, pupil};

const TASKS: u32 = 64;
const PER_TASK: u32 = 100;

/// `tasks` tasks per log, each appending `per_task` single events to its
/// own stream. Returns events per second over all logs.
async fn appends(logs: &[Arc<dyn EventStore>], tasks: u32, per_task: u32) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for log in logs {
        for t in 0..tasks {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for n in 0..per_task {
                    log.append(AppendRequest {
                        stream: pupil(t),
                        expected: ExpectedVersion::Exact(n as u64),
                        events: vec![contact(n)],
                    })
                    .await
                    .expect("append");
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let events = logs.len() as f64 * tasks as f64 * per_task as f64;
    events / started.elapsed().as_secs_f64()
}

fn sealed(count: u64) -> Vec<StoredEvent> {
    let mut hash = GENESIS_HASH;
    let now = Utc::now();
    (1..=count)
        .map(|p| {
            let (e, _) = StoredEvent::seal(
                &contact(p as u32),
                pupil(((p - 1) % 500) as u32),
                p,
                (p - 1) / 500 + 1,
                now,
                hash,
            )
            .expect("seal");
            hash = e.hash;
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release, figures go to docs/scaling.md"]
async fn pg_scaling_figures() {
    let Some(db) = crate::pg::test_db() else {
        return;
    };
    let total = TASKS * PER_TASK;

    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path(), true).unwrap();
    let sled_log: Arc<dyn EventStore> = sled.log("bench").unwrap();
    let sled_rate = appends(&[sled_log], TASKS, PER_TASK).await;
    println!(
        "sled engine appends, 1 school, {TASKS} tasks, {total} events: {sled_rate:.0} events/s"
    );

    let store = PostgresStore::connect(&db.url, true).await.unwrap();
    let log: Arc<dyn EventStore> = store.log("bench").unwrap();
    let pg_rate = appends(&[log], TASKS, PER_TASK).await;
    println!(
        "postgres engine appends, 1 school, {TASKS} tasks, {total} events: {pg_rate:.0} events/s"
    );

    for batch in [64usize, 1_000] {
        let school = format!("raw-{batch}");
        let events = sealed(total as u64);
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            store.raw_insert_batch(&school, chunk).await.unwrap();
        }
        let rate = events.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "postgres raw multi-row INSERT ceiling, batches of {batch}, one transaction per batch: {rate:.0} events/s"
        );
        let report = store.log(&school).unwrap().verify(&|_| {}).await.unwrap();
        assert!(report.ok, "the raw rows are a valid log: {report:?}");
    }

    for schools in [1u32, 10, 100] {
        let logs: Vec<Arc<dyn EventStore>> = (0..schools)
            .map(|s| store.log(&format!("scale-{schools}-{s}")).unwrap() as Arc<dyn EventStore>)
            .collect();
        // The same total work whatever the number of schools.
        let tasks = (TASKS / schools).max(1);
        let per_task = total / (tasks * schools);
        let rate = appends(&logs, tasks, per_task).await;
        println!(
            "postgres engine appends, {schools} schools at once, {tasks} tasks each, {} events: {rate:.0} events/s",
            tasks * per_task * schools
        );
    }

    // One appender per school: if schools contended (one lock for all),
    // the total would stay at the one-school figure.
    drop(store);
    for schools in [1u32, 10, 100] {
        // A fresh store per run: the previous runs' connections are closed.
        let store = PostgresStore::connect(&db.url, true).await.unwrap();
        let logs: Vec<Arc<dyn EventStore>> = (0..schools)
            .map(|s| store.log(&format!("solo-{schools}-{s}")).unwrap() as Arc<dyn EventStore>)
            .collect();
        let rate = appends(&logs, 1, 100).await;
        println!(
            "postgres engine appends, {schools} schools at once, 1 task each, {} events: {rate:.0} events/s ({:.0} per school)",
            100 * schools,
            rate / schools as f64
        );
    }
}
