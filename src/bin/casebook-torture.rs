//! casebook-torture: the child process of the crash tests (tests/it/crash.rs)
//! and the holder of the two-process test (tests/it/two_processes.rs).
//!
//! `casebook-torture child --dir DIR --seed N [--max-sleep-us N] [--engine
//! sled|segment] [--large-every N]` appends to the school `torture` of the
//! embedded store at DIR (sled unless told) forever, in a seeded random
//! mix of single appends, atomic multi-stream batches, concurrent writers
//! and imports (parsed and planned by the importer), and with
//! `--large-every N` about one operation in N a 70,000-event atomic
//! append, and reports on stdout:
//!
//! ```text
//! begin TAG ID,ID,...            before an append is submitted
//! ack TAG POS:HASH:ID ...        after it was acknowledged (durable)
//! ```
//!
//! Each line is written whole and flushed before the next operation, so
//! the parent that kills it (SIGKILL) knows exactly what was acknowledged.
//!
//! `casebook-torture hold --dir DIR [--engine E]` opens the store, prints
//! `ready PID` and sleeps until killed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casebook_engine::envelope::{hex, NewEvent, StreamId};
use casebook_engine::import::{parse_line, Planner};
use casebook_engine::store::embedded::{self, Engine};
use casebook_engine::store::{AppendRequest, Appended, EventStore, ExpectedVersion};
use casebook_engine::StoreError;
use chrono::{TimeZone, Utc};
use uuid::Uuid;

/// The school the torture runs write to.
const SCHOOL: &str = "torture";

/// splitmix64: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Out(Mutex<std::io::Stdout>);

impl Out {
    /// Writes one whole line and flushes it.
    fn line(&self, text: String) {
        let out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = out.lock();
        let _ = out.write_all(format!("{text}\n").as_bytes());
        let _ = out.flush();
    }
}

fn contact(seed: u64, n: u64) -> NewEvent {
    let line = format!(
        r#"{{"type":"ParentContacted","pupil":"P1","occurred_at":"2026-03-02T09:00:00Z","actor":"S017","data":{{"method":"phone","summary":"torture call {seed}-{n}"}}}}"#
    );
    let parsed = parse_line(1, &line).expect("a valid line");
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    NewEvent::new(&parsed.event, at, "S017").expect("encode")
}

/// Submits one atomic append and reports it before and after.
async fn append(
    log: &dyn EventStore,
    out: &Out,
    tag: String,
    requests: Vec<AppendRequest>,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = requests
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    out.line(format!(
        "begin {tag} {}",
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    let done: Vec<Appended> = log.append_atomic(requests).await?;
    let mut parts = Vec::new();
    for a in &done {
        let events = log
            .read_all(
                a.first_position,
                (a.last_position - a.first_position + 1) as usize,
            )
            .await?;
        for e in events {
            parts.push(format!("{}:{}:{}", e.position, hex(&e.hash), e.event_id));
        }
    }
    out.line(format!("ack {tag} {}", parts.join(" ")));
    Ok(())
}

fn stream(rng: &mut Rng) -> StreamId {
    StreamId::for_pupil(SCHOOL, &format!("P{}", rng.below(24)))
}

/// The torture school's log in the store at `dir` (its engine detected
/// when it exists, else the named one).
fn open_log(dir: &std::path::Path, engine: &str) -> Result<Arc<dyn EventStore>, String> {
    let engine = match engine {
        "sled" => Engine::Sled,
        "segment" => Engine::Segment,
        other => return Err(format!("--engine {other}: expected sled or segment")),
    };
    embedded::open_log(dir, SCHOOL, engine, true).map_err(|e| e.to_string())
}

/// Events of a large atomic append (`--large-every`): above the size from
/// which the segment writer writes a group's frames while it seals the
/// rest, and hands the events back as it seals them.
const LARGE_EVENTS: u64 = 70_000;

async fn child(
    dir: PathBuf,
    engine: String,
    seed: u64,
    max_sleep_us: u64,
    large_every: u64,
) -> Result<(), String> {
    let log = open_log(&dir, &engine)?;
    let out = Arc::new(Out(Mutex::new(std::io::stdout())));
    out.line(format!("ready {}", std::process::id()));
    let mut rng = Rng(seed);
    let mut n: u64 = 0;
    let mut imports: u64 = 0;
    loop {
        n += 1;
        let tag = format!("{seed}-{n}");
        if large_every > 0 && rng.below(large_every) == 0 {
            // One large atomic append over ten streams.
            let requests = (0..10u64)
                .map(|s| AppendRequest {
                    stream: StreamId::for_pupil(SCHOOL, &format!("L{seed}-{n}-{s}")),
                    expected: ExpectedVersion::NoStream,
                    events: (0..LARGE_EVENTS / 10)
                        .map(|i| contact(seed, n * 100_000 + s * 10_000 + i))
                        .collect(),
                })
                .collect();
            append(log.as_ref(), &out, tag, requests)
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        match rng.below(10) {
            // Single appends.
            0..=3 => {
                let req = AppendRequest {
                    stream: stream(&mut rng),
                    expected: ExpectedVersion::Any,
                    events: vec![contact(seed, n)],
                };
                append(log.as_ref(), &out, tag, vec![req])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // One atomic append over several streams (sometimes large).
            4 | 5 => {
                let streams = 1 + rng.below(4);
                let per = if rng.below(5) == 0 {
                    200
                } else {
                    1 + rng.below(20)
                };
                let mut requests = Vec::new();
                let mut used = Vec::new();
                for s in 0..streams {
                    let st = StreamId::for_pupil(SCHOOL, &format!("B{seed}-{n}-{s}"));
                    used.push(st);
                    requests.push(AppendRequest {
                        stream: st,
                        expected: ExpectedVersion::NoStream,
                        events: (0..per).map(|i| contact(seed, n * 1000 + i)).collect(),
                    });
                }
                append(log.as_ref(), &out, tag, requests)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // Concurrent writers: their appends share group commits.
            6..=8 => {
                let writers = 2 + rng.below(6);
                let mut tasks = Vec::new();
                for w in 0..writers {
                    let log = log.clone();
                    let out = out.clone();
                    let count = 1 + rng.below(5);
                    let req = AppendRequest {
                        stream: stream(&mut rng),
                        expected: ExpectedVersion::Any,
                        events: (0..count)
                            .map(|i| contact(seed, n * 1000 + w * 10 + i))
                            .collect(),
                    };
                    let tag = format!("{tag}.{w}");
                    tasks.push(tokio::spawn(async move {
                        append(log.as_ref(), &out, tag, vec![req]).await
                    }));
                }
                for t in tasks {
                    t.await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                }
            }
            // An import: lines parsed and planned like `casebook import`.
            _ => {
                imports += 1;
                let pupil = format!("T{seed}-{imports}");
                let mut lines = vec![format!(
                    r#"{{"type":"PupilRegistered","pupil":"{pupil}","occurred_at":"2025-09-03T08:30:00Z","actor":"S017","id":"{}","data":{{"name":"Test Pupil","date_of_birth":"2012-05-01","year_group":9,"class":"9B","site":"Main"}}}}"#,
                    Uuid::now_v7()
                )];
                for k in 0..(1 + rng.below(30)) {
                    lines.push(format!(
                        r#"{{"type":"ParentContacted","pupil":"{pupil}","occurred_at":"2025-09-10T09:{:02}:00Z","actor":"S017","id":"{}","data":{{"method":"phone","summary":"import call {k}"}}}}"#,
                        k % 60,
                        Uuid::now_v7()
                    ));
                }
                let requests = {
                    let mut planner = Planner::new(log.as_ref(), SCHOOL, Utc::now());
                    for (i, l) in lines.iter().enumerate() {
                        let parsed = parse_line(i + 1, l).map_err(|e| e.to_string())?;
                        planner.add(parsed).await.map_err(|e| e.to_string())?;
                    }
                    planner.finish().requests
                };
                append(log.as_ref(), &out, tag, requests)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        if max_sleep_us > 0 {
            tokio::time::sleep(Duration::from_micros(rng.below(max_sleep_us))).await;
        }
    }
}

fn hold(dir: PathBuf, engine: &str) -> Result<(), String> {
    let _log = open_log(&dir, engine)?;
    println!("ready {}", std::process::id());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value")),
        None => default.ok_or_else(|| format!("{name} is required")),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = (|| -> Result<(), String> {
        let dir: PathBuf = arg(&args, "--dir", None)?;
        let engine: String = arg(&args, "--engine", Some("sled".to_string()))?;
        match args.get(1).map(String::as_str) {
            Some("child") => {
                let seed: u64 = arg(&args, "--seed", Some(1))?;
                let sleep: u64 = arg(&args, "--max-sleep-us", Some(0))?;
                let large: u64 = arg(&args, "--large-every", Some(0))?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(child(dir, engine, seed, sleep, large))
            }
            Some("hold") => hold(dir, &engine),
            _ => Err(
                "usage: casebook-torture child|hold --dir DIR [--engine sled|segment] [--seed N] [--max-sleep-us N] [--large-every N]".into(),
            ),
        }
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("casebook-torture: {e}");
            std::process::ExitCode::from(3)
        }
    }
}
