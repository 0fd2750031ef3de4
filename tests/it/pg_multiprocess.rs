//! Several OS processes appending to one school on one PostgreSQL database:
//! the head row lock must keep positions gapless and the chain correct
//! across processes, and every acknowledged append must be stored once.
//!
//! The children are this test binary run again on the ignored
//! `pg_multiprocess_child` test, told by environment variables what to do;
//! each prints `ACK <event id>` for every append the store acknowledged.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use casebook_engine::store::postgres::PostgresStore;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion, MAX_READ_PAGE};

use crate::conformance::{contact, pupil};

const PROCESSES: u32 = 4;
const TASKS: u32 = 16;
const EVENTS_PER_TASK: u32 = 25;
const SCHOOL: &str = "multi-process";
const CHILD_URL: &str = "CASEBOOK_PG_CHILD_URL";
const CHILD_ID: &str = "CASEBOOK_PG_CHILD_ID";

/// Child mode only (run by the test below with the variables set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of pg_multiprocess_appends_stay_gapless"]
async fn pg_multiprocess_child() {
    let url = std::env::var(CHILD_URL).expect("run by pg_multiprocess_appends_stay_gapless");
    let id: u32 = std::env::var(CHILD_ID).unwrap().parse().unwrap();
    let work = async {
        let store = PostgresStore::connect(&url, false).await.expect("connect");
        let log: Arc<dyn EventStore> = store.log(SCHOOL).expect("log");
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let stream = pupil(id * TASKS + t);
                for n in 0..EVENTS_PER_TASK {
                    let event = contact(n);
                    let event_id = event.event_id;
                    log.append(AppendRequest {
                        stream,
                        expected: ExpectedVersion::Exact(n as u64),
                        events: vec![event],
                    })
                    .await
                    .expect("append");
                    println!("ACK {event_id}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    };
    tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .expect("child timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_multiprocess_appends_stay_gapless() {
    let Some(db) = crate::pg::test_db() else {
        return;
    };
    let store = PostgresStore::connect(&db.url, true).await.expect("init");
    let exe = std::env::current_exe().expect("test binary");
    let mut children = Vec::new();
    for id in 0..PROCESSES {
        let child = Command::new(&exe)
            .args([
                "--exact",
                "pg_multiprocess::pg_multiprocess_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, &db.url)
            .env(CHILD_ID, id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        children.push(Kill(Some(child)));
    }
    let mut acked: HashMap<uuid::Uuid, u32> = HashMap::new();
    for mut child in children {
        let output = tokio::task::block_in_place(|| {
            child
                .0
                .take()
                .unwrap()
                .wait_with_output()
                .expect("child output")
        });
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout.lines() {
            // libtest's "test ... " announcement shares the first line.
            if let Some((_, id)) = line.split_once("ACK ") {
                *acked
                    .entry(id.trim().parse().expect("event id"))
                    .or_default() += 1;
            }
        }
    }
    let expected = (PROCESSES * TASKS * EVENTS_PER_TASK) as usize;
    assert_eq!(acked.len(), expected, "every append was acknowledged");
    assert!(
        acked.values().all(|n| *n == 1),
        "no event id acknowledged twice"
    );
    let log = store.log(SCHOOL).unwrap();
    let mut stored: HashMap<uuid::Uuid, u32> = HashMap::new();
    let mut next = 1;
    loop {
        let page = log.read_all(next, MAX_READ_PAGE).await.unwrap();
        for e in &page {
            assert_eq!(e.position, next, "positions are gapless");
            next += 1;
            *stored.entry(e.event_id).or_default() += 1;
        }
        if page.len() < MAX_READ_PAGE {
            break;
        }
    }
    assert_eq!(next - 1, expected as u64);
    for id in acked.keys() {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, expected as u64);
}

/// Kills a child still running when the test fails.
struct Kill(Option<std::process::Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
