//! Soak (issue 7): a bounded randomized workload — single, batched and
//! concurrent appends, imports, reads, a live subscription, projection
//! rebuilds and catch-ups, store close and reopen — checking the log's
//! invariants after every step:
//!
//! - the head is the last acknowledged event (position and hash);
//! - a random stream reads back gapless, in version order, with exactly
//!   the acknowledged events; a random range of the log reads back gapless;
//! - the subscription has delivered a prefix of the log, each event exactly
//!   once, in order (and all of it whenever the store is closed);
//! - views caught up incrementally equal views rebuilt from scratch;
//! - `verify` passes (every 25 steps and at every reopen).
//!
//! Duration: `CASEBOOK_SOAK_SECS` (default 60, what CI runs; an hour is a
//! long run). Seed: `CASEBOOK_SOAK_SEED`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use casebook_engine::envelope::{NewEvent, StreamId};
use casebook_engine::import::{parse_line, Planner};
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::{subscribe, AppendRequest, Appended, EventStore, ExpectedVersion};
use casebook_projections::{rebuild, SchoolViews};
use chrono::{TimeZone, Utc};
use uuid::Uuid;

use crate::crash::{env_count, Rng};

const SCHOOL: &str = "soak";

fn event(rng: &mut Rng, n: u64) -> NewEvent {
    let line = match rng.below(3) {
        0 => format!(
            r#"{{"type":"ParentContacted","pupil":"P1","occurred_at":"2026-03-02T09:00:00Z","actor":"S017","data":{{"method":"phone","summary":"soak call {n}"}}}}"#
        ),
        1 => format!(
            r#"{{"type":"IncidentRecorded","pupil":"P1","occurred_at":"2026-03-02T09:00:00Z","actor":"S017","data":{{"category":"verbal_abuse_adult","severity":{},"location":"corridor","description":"soak incident {n}"}}}}"#,
            1 + rng.below(5)
        ),
        _ => format!(
            r#"{{"type":"AttendanceMarked","pupil":"P1","occurred_at":"2026-03-02T09:00:00Z","actor":"S017","data":{{"date":"2026-03-02","session":"am","code":"{}"}}}}"#,
            ["/", "N", "I", "M"][rng.below(4) as usize]
        ),
    };
    let parsed = parse_line(1, &line).expect("valid line");
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    NewEvent::new(&parsed.event, at, "S017").expect("encode")
}

/// What the test knows was acknowledged.
#[derive(Default)]
struct Model {
    /// (event id, stream) by position - 1.
    log: Vec<(Uuid, StreamId)>,
    /// Event ids of each stream in version order.
    streams: HashMap<StreamId, Vec<Uuid>>,
    hash: Option<[u8; 32]>,
}

impl Model {
    fn acked(&mut self, requests: &[AppendRequest], done: &[Appended]) {
        for (r, a) in requests.iter().zip(done) {
            assert_eq!(
                a.first_version,
                self.streams.get(&r.stream).map_or(0, |v| v.len() as u64) + 1,
                "versions are gapless"
            );
            for (i, e) in r.events.iter().enumerate() {
                let p = a.first_position + i as u64;
                if self.log.len() < p as usize {
                    self.log.resize(p as usize, (Uuid::nil(), r.stream));
                }
                self.log[p as usize - 1] = (e.event_id, r.stream);
                self.streams.entry(r.stream).or_default().push(e.event_id);
            }
        }
    }
}

struct Open {
    _store: Arc<SledStore>,
    log: Arc<dyn EventStore>,
    seen: Arc<Mutex<Vec<(u64, Uuid)>>>,
    subscriber: tokio::task::JoinHandle<()>,
}

async fn open(dir: &Path, seen: Arc<Mutex<Vec<(u64, Uuid)>>>) -> Open {
    let store = SledStore::open(dir, true).expect("open");
    let log: Arc<dyn EventStore> = store.log(SCHOOL).expect("log");
    let from = seen.lock().unwrap().len() as u64 + 1;
    let mut sub = subscribe(log.clone(), from);
    let sink = seen.clone();
    let subscriber = tokio::spawn(async move {
        while let Ok(Some(e)) = sub.next().await {
            sink.lock().unwrap().push((e.position, e.event_id));
        }
    });
    Open {
        _store: store,
        log,
        seen,
        subscriber,
    }
}

/// The subscription so far is a prefix of the log: every event once, in
/// order.
fn check_subscription(seen: &[(u64, Uuid)], model: &Model) {
    assert!(seen.len() <= model.log.len());
    for (i, (p, id)) in seen.iter().enumerate() {
        assert_eq!(
            *p,
            i as u64 + 1,
            "subscription delivered out of order or twice"
        );
        assert_eq!(
            *id, model.log[i].0,
            "subscription delivered another event at {p}"
        );
    }
}

async fn check(o: &Open, model: &Model, rng: &mut Rng) {
    let head = o.log.head().await.unwrap();
    assert_eq!(
        head.position,
        model.log.len() as u64,
        "head is the last acknowledged event"
    );
    if let Some(h) = model.hash {
        assert_eq!(head.hash, h);
    }
    if !model.streams.is_empty() {
        let keys: Vec<&StreamId> = model.streams.keys().collect();
        let s = *keys[rng.below(keys.len() as u64) as usize];
        let events = casebook_engine::store::read_whole_stream(o.log.as_ref(), s)
            .await
            .unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(
            &ids, &model.streams[&s],
            "stream {s} reads back as acknowledged"
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1);
        }
        let from = 1 + rng.below(head.position);
        let page = o.log.read_all(from, 500).await.unwrap();
        for (i, e) in page.iter().enumerate() {
            assert_eq!(e.position, from + i as u64);
            assert_eq!(e.event_id, model.log[e.position as usize - 1].0);
        }
    }
    check_subscription(&o.seen.lock().unwrap(), model);
}

async fn append(o: &Open, model: &mut Model, requests: Vec<AppendRequest>) {
    let done = o.log.append_atomic(requests.clone()).await.expect("append");
    model.acked(&requests, &done);
    model.hash = Some(o.log.head().await.unwrap().hash);
}

#[test]
fn a_randomized_workload_keeps_every_invariant() {
    let secs = env_count("CASEBOOK_SOAK_SECS", 60);
    let seed = env_count("CASEBOOK_SOAK_SEED", 0x50a6);
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut counts: HashMap<&str, u64> = HashMap::new();
    let steps = rt.block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut o = open(&store_dir, seen.clone()).await;
        let mut model = Model::default();
        let mut views: Option<SchoolViews> = None;
        let mut pupils = 0u64;
        let mut step = 0u64;
        let mut n = 0u64;
        while Instant::now() < deadline {
            step += 1;
            let op = rng.below(100);
            let name = match op {
                0..=29 => {
                    n += 1;
                    let stream = StreamId::for_pupil(SCHOOL, &format!("P{}", rng.below(40)));
                    let e = event(&mut rng, n);
                    append(&o, &mut model, vec![AppendRequest { stream, expected: ExpectedVersion::Any, events: vec![e] }]).await;
                    "single append"
                }
                30..=44 => {
                    let mut requests = Vec::new();
                    let mut used = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        let stream = StreamId::for_pupil(SCHOOL, &format!("P{}", rng.below(40)));
                        if used.contains(&stream) {
                            continue;
                        }
                        used.push(stream);
                        let version = model.streams.get(&stream).map_or(0, |v| v.len() as u64);
                        let events = (0..1 + rng.below(30)).map(|_| { n += 1; event(&mut rng, n) }).collect();
                        requests.push(AppendRequest {
                            stream,
                            expected: if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) },
                            events,
                        });
                    }
                    append(&o, &mut model, requests).await;
                    "atomic batch"
                }
                45..=59 => {
                    let mut tasks = Vec::new();
                    for w in 0..2 + rng.below(6) {
                        let stream = StreamId::for_pupil(SCHOOL, &format!("C{w}"));
                        n += 1;
                        let req = AppendRequest { stream, expected: ExpectedVersion::Any, events: vec![event(&mut rng, n)] };
                        let log = o.log.clone();
                        tasks.push(tokio::spawn(async move {
                            let done = log.append_atomic(vec![req.clone()]).await.expect("concurrent append");
                            (req, done)
                        }));
                    }
                    let mut results = Vec::new();
                    for t in tasks {
                        results.push(t.await.unwrap());
                    }
                    // Acknowledged in position order for the model.
                    results.sort_by_key(|(_, d)| d[0].first_position);
                    for (req, done) in results {
                        model.acked(&[req], &done);
                    }
                    model.hash = Some(o.log.head().await.unwrap().hash);
                    "concurrent appends"
                }
                60..=69 => {
                    pupils += 1;
                    let pupil = format!("R{pupils}");
                    let mut lines = vec![format!(
                        r#"{{"type":"PupilRegistered","pupil":"{pupil}","occurred_at":"2025-09-03T08:30:00Z","actor":"S017","data":{{"name":"Test Pupil","date_of_birth":"2012-05-01","year_group":9,"class":"9B","site":"Main"}}}}"#
                    )];
                    for k in 0..rng.below(20) {
                        lines.push(format!(
                            r#"{{"type":"ParentContacted","pupil":"{pupil}","occurred_at":"2025-09-10T09:{:02}:00Z","actor":"S017","data":{{"method":"phone","summary":"import {k}"}}}}"#,
                            k % 60
                        ));
                    }
                    let requests = {
                        let mut planner = Planner::new(o.log.as_ref(), SCHOOL, Utc::now());
                        for (i, l) in lines.iter().enumerate() {
                            planner.add(parse_line(i + 1, l).unwrap()).await.expect("valid import");
                        }
                        planner.finish().requests
                    };
                    append(&o, &mut model, requests).await;
                    "import"
                }
                70..=79 => {
                    // Reads are checked below, after every step.
                    "read"
                }
                80..=86 => {
                    let v = match views.take() {
                        None => SchoolViews::load(o.log.as_ref(), &|_, _| {}).await.expect("load views"),
                        Some(mut v) => {
                            v.catch_up(o.log.as_ref(), &|_, _| {}).await.expect("catch up");
                            v
                        }
                    };
                    assert_eq!(v.position, model.log.len() as u64);
                    views = Some(v);
                    "views catch up"
                }
                87..=91 => {
                    let report = rebuild(o.log.as_ref(), None, &|_, _| {}).await.expect("rebuild");
                    assert_eq!(report.position, model.log.len() as u64);
                    let fresh = SchoolViews::load(o.log.as_ref(), &|_, _| {}).await.expect("load");
                    if let Some(mut v) = views.take() {
                        v.catch_up(o.log.as_ref(), &|_, _| {}).await.expect("catch up");
                        assert_eq!(v.caseload, fresh.caseload, "caseload: incremental = rebuilt");
                        assert_eq!(v.behaviour, fresh.behaviour, "behaviour: incremental = rebuilt");
                        assert_eq!(v.attendance, fresh.attendance, "attendance: incremental = rebuilt");
                        assert_eq!(v.suspensions, fresh.suspensions);
                        assert_eq!(v.force, fresh.force);
                        assert_eq!(v.interventions, fresh.interventions);
                        assert_eq!(v.reintegration, fresh.reintegration);
                    }
                    views = Some(fresh);
                    "projection rebuild"
                }
                _ => {
                    // Let the subscription catch up, then close and reopen.
                    let target = model.log.len();
                    let wait = Instant::now() + Duration::from_secs(120);
                    while o.seen.lock().unwrap().len() < target {
                        assert!(Instant::now() < wait, "subscription stalled");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    check_subscription(&o.seen.lock().unwrap(), &model);
                    o.subscriber.abort();
                    let _ = (&mut o.subscriber).await;
                    drop(o);
                    o = open(&store_dir, seen.clone()).await;
                    let report = o.log.verify(&|_| {}).await.unwrap();
                    assert!(report.ok, "{report:?}");
                    "close and reopen"
                }
            };
            *counts.entry(name).or_default() += 1;
            check(&o, &model, &mut rng).await;
            if step.is_multiple_of(25) {
                let report = o.log.verify(&|_| {}).await.unwrap();
                assert!(report.ok, "step {step}: {report:?}");
                assert_eq!(report.events, model.log.len() as u64);
            }
        }
        o.subscriber.abort();
        println!("soak: {} events in the log", model.log.len());
        step
    });
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!("soak: {steps} steps in {secs} s (seed {seed:#x}), invariants checked after each: {counts:?}");
    assert!(steps > 0);
}
