//! How long an append waits while the segment index does its housekeeping
//! (id spills, stream-list spills, table growth): appends of 1,024 events
//! one after another, each durable before the next, to a new segment log,
//! every append's latency taken; beside it, in the same run and on the same
//! disk, the same groups written raw (`RawSegmentLog`: frames, one write,
//! one `fdatasync`, no index), whose longest write is what the disk itself
//! adds. The append's own work is the difference.
//!
//! Run with `cargo bench --bench append_stalls`. The events (demo-like
//! incidents, each group spread over 16 streams of a school of 24,000) and
//! their count are set by `CASEBOOK_STALL_EVENTS` (default 4,500,000: two
//! spills of the id table and two of the stream lists; ~1.3 GB a log, both
//! logs in a temporary directory under `CASEBOOK_STALL_DIR` or the system's)
//! and `CASEBOOK_STALL_STREAMS`. docs/performance.md ("Session au") has
//! measured runs. Timings stay out of the test suite: this is a benchmark.
//! It allocates with mimalloc and takes `casebook`'s memory settings
//! (src/memory.rs: transparent huge pages off, freed memory returned after
//! 10 ms); until session aw it kept mimalloc's defaults, under which some
//! appends waited 5–20 ms for the kernel to fault in a huge page, which
//! `casebook` never asks for (docs/performance.md, "Session aw"). The
//! engine's appends include sealing each event (encoding and the chain
//! hash), which the raw writes were given done: the difference in p50 is
//! mostly that; a stall is an append far longer than the raw write's
//! longest.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../src/memory.rs"]
mod memory;

use std::time::{Duration, Instant};

use casebook_engine::envelope::{NewEvent, StreamId};
use casebook_engine::event::{CaseEvent, IncidentRecorded, IncidentRole};
use casebook_engine::store::segment::raw::RawSegmentLog;
use casebook_engine::store::segment::{SegmentOptions, SegmentStore};
use casebook_engine::store::sled_raw::RawChain;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion};
use chrono::Utc;
use uuid::Uuid;

/// Events an append.
const GROUP: u64 = 1_024;
/// Streams an append's events are spread over.
const STREAMS_A_GROUP: u64 = 16;
/// An append longer than this is listed.
const LISTED: Duration = Duration::from_millis(20);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn incident(n: u64) -> CaseEvent {
    CaseEvent::IncidentRecorded(IncidentRecorded {
        category: "verbal_abuse_adult".into(),
        severity: (n % 5) as u8 + 1,
        location: "corridor".into(),
        description: format!("Shouted at a member of staff (synthetic incident {n}); calmed with a time-out and returned to lesson."),
        role: IncidentRole::Perpetrator,
        participants: vec![],
        class: Some("9B".into()),
        site: Some("Main".into()),
    })
}

/// The `g`th group's appends: 16 streams of `streams`, 64 events each.
fn group(g: u64, streams: u64) -> Vec<AppendRequest> {
    let per = GROUP / STREAMS_A_GROUP;
    (0..STREAMS_A_GROUP)
        .map(|j| {
            let k = g * STREAMS_A_GROUP + j;
            let stream = StreamId(Uuid::from_u128(u128::from(k * 7_919 % streams + 1)));
            let events = (0..per)
                .map(|i| {
                    NewEvent::new(&incident(k * per + i), Utc::now(), "S017").expect("encodes")
                })
                .collect();
            AppendRequest {
                stream,
                expected: ExpectedVersion::Any,
                events,
            }
        })
        .collect()
}

/// Latencies, in ms: p50, p99, the longest, and those over [`LISTED`].
struct Latencies {
    ms: Vec<f64>,
}

impl Latencies {
    /// The `q` quantile (0 to 1); NaN when there are none.
    fn at(&self, q: f64) -> f64 {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let last = sorted.len().saturating_sub(1);
        sorted
            .get((last as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn over(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        let listed = LISTED.as_secs_f64() * 1e3;
        self.ms
            .iter()
            .copied()
            .enumerate()
            .filter(move |(_, ms)| *ms > listed)
    }

    fn row(&self, what: &str) -> String {
        let (n, sum) = self
            .over()
            .fold((0, 0.0), |(n, s), (_, ms)| (n + 1, s + ms));
        format!(
            "{what:<16} {:>8.2} {:>8.2} {:>9.1} {:>5} {:>10.0} {:>9.2}",
            self.at(0.5),
            self.at(0.99),
            self.at(1.0),
            n,
            sum,
            self.ms.iter().sum::<f64>() / 1e3,
        )
    }
}

/// The groups written raw: each sealed (untimed), then written and synced.
fn raw_groups(dir: &std::path::Path, groups: u64, streams: u64) -> Latencies {
    let mut raw = RawSegmentLog::open(dir).expect("raw log opens");
    let mut chain = RawChain::default();
    let mut ms = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let mut batch = Vec::with_capacity(GROUP as usize);
        for request in group(g, streams) {
            for new in &request.events {
                batch.push(chain.seal(request.stream, new, Utc::now()).expect("seals"));
            }
        }
        let started = Instant::now();
        raw.write_batch(&batch).expect("raw write");
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Latencies { ms }
}

fn main() {
    // First thing in `main` (`casebook` does it earlier, at load, before
    // the runtime's first allocation): huge pages stay off for every
    // later fault, and mimalloc maps no more memory asking for them.
    memory::tune_memory();
    let events = env_or("CASEBOOK_STALL_EVENTS", 4_500_000);
    let streams = env_or("CASEBOOK_STALL_STREAMS", 24_000).max(1);
    let groups = events.div_ceil(GROUP).max(1);
    let tmp = match std::env::var_os("CASEBOOK_STALL_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    eprintln!(
        "append_stalls: {} appends of {GROUP} events ({STREAMS_A_GROUP} streams of {streams} each), raw then the engine, in {}",
        groups,
        tmp.path().display()
    );

    let raw = raw_groups(&tmp.path().join("raw"), groups, streams);

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store =
        SegmentStore::open_with(&tmp.path().join("engine"), true, SegmentOptions::default())
            .expect("store opens");
    let log = store.log("school-stalls").expect("log opens");
    let mut ms = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let requests = group(g, streams);
        let started = Instant::now();
        rt.block_on(log.append_atomic(requests)).expect("append");
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let engine = Latencies { ms };
    drop((log, store));

    println!("appends of {GROUP} events, {groups} of each, ms:");
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>5} {:>10} {:>9}",
        "", "p50", "p99", "longest", "> 20", "> 20 sum", "in all s"
    );
    println!("{}", raw.row("raw write+sync"));
    println!("{}", engine.row("engine append"));
    let listed: Vec<String> = engine
        .over()
        .map(|(i, ms)| format!("{}: {ms:.0}", (i as u64 + 1) * GROUP))
        .collect();
    println!(
        "engine appends over 20 ms (after how many events: ms): {}",
        if listed.is_empty() {
            "none".to_string()
        } else {
            listed.join(", ")
        }
    );
    println!(
        "longest_vs_raw_longest: {:.2}  p99_vs_raw_p99: {:.2}",
        engine.at(1.0) / raw.at(1.0),
        engine.at(0.99) / raw.at(0.99)
    );
}
