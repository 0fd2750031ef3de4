//! Decoders fuzzed without nightly (issue 7): proptest feeds arbitrary bytes
//! and mutated valid encodings to every decoder of bytes from disk — the
//! envelope, payloads and their upcasters, the store's head record and
//! watermark, projection checkpoints, the schema-1 fixtures — and arbitrary
//! and mutated lines to the JSONL importer (parser and planner). Each must
//! return a typed error or a value, never panic.
//!
//! Cases per target: `CASEBOOK_FUZZ_CASES` (default 2,000; the long run in
//! docs/storage.md used more). Each target prints how many cases it ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use casebook_engine::envelope::{RecordedEvent, StoredEvent};
use casebook_engine::event::EVENT_TYPES;
use casebook_engine::import::{parse_line, Planner};
use casebook_engine::store::sled::{
    decode_event_at, decode_head_record, decode_watermark, SledStore,
};
use casebook_engine::store::EventStore;
use casebook_engine::upcast::decode_payload;
use casebook_projections::runner::{decode_checkpoint, encode_checkpoint, read_checkpoint};
use casebook_projections::{
    fold_in, Attendance, Behaviour, Caseload, ForceLog, Interventions, Projection, Reintegration,
    Suspensions, Targets,
};
use chrono::Utc;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;

use crate::cli::{line, Casebook};

fn cases() -> u32 {
    crate::crash::env_count("CASEBOOK_FUZZ_CASES", 2_000) as u32
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// Valid material, made once per test process from a real store.
struct Corpus {
    values: Vec<Vec<u8>>,
    payloads: Vec<(String, u32, Vec<u8>)>,
    checkpoints: Vec<Vec<u8>>,
    lines: Vec<String>,
    heads: Vec<Vec<u8>>,
    watermarks: Vec<Vec<u8>>,
}

fn import_lines() -> Vec<serde_json::Value> {
    let reg = |p: &str| {
        line(
            "PupilRegistered",
            p,
            "2025-09-03T08:30:00Z",
            json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
        )
    };
    vec![
        reg("P1042"),
        reg("P2001"),
        line(
            "CaseOpened",
            "P1042",
            "2025-09-10T09:00:00Z",
            json!({"case_type": "behaviour", "summary": "Repeated disruption"}),
        ),
        line(
            "KeyworkerAssigned",
            "P1042",
            "2025-09-10T09:05:00Z",
            json!({"staff": "S020"}),
        ),
        line(
            "IncidentRecorded",
            "P1042",
            "2025-09-15T10:20:00Z",
            json!({"category": "verbal_abuse_adult", "severity": 3, "location": "corridor", "description": "Shouted at a member of staff", "role": "perpetrator", "participants": [{"pupil": "P2001", "role": "witness"}]}),
        ),
        line(
            "PlanAgreed",
            "P1042",
            "2025-09-20T09:00:00Z",
            json!({"plan": "BSP-1", "kind": "behaviour_support", "review_due": "2025-10-20"}),
        ),
        line(
            "AttendanceMarked",
            "P1042",
            "2025-09-16T08:40:00Z",
            json!({"date": "2025-09-16", "session": "am", "code": "N"}),
        ),
        line(
            "SuspensionIssued",
            "P2001",
            "2025-10-01T09:00:00Z",
            json!({"days": 2.0, "reason_code": "PD", "start_date": "2025-10-01"}),
        ),
        line(
            "ConcernRaised",
            "P1042",
            "2025-09-12T11:00:00Z",
            json!({"category": "neglect", "summary": "Arrives hungry most days"}),
        ),
        line(
            "ParentContacted",
            "P2001",
            "2025-09-16T12:00:00Z",
            json!({"method": "phone", "summary": "Discussed the incident"}),
        ),
    ]
}

fn checkpoint_of<P: Projection>(events: &[RecordedEvent], out: &mut Vec<Vec<u8>>) {
    let mut p = P::default();
    out.push(encode_checkpoint(&p, 0, [0; 32]).unwrap());
    fold_in(&mut p, events, &Targets::of(events));
    out.push(encode_checkpoint(&p, events.len() as u64, [7; 32]).unwrap());
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let cb = Casebook::new();
        let lines = import_lines();
        // The corpus takes sled's raw records (head, watermark) too.
        cb.run(&["--engine", "sled", "init"]).ok();
        cb.import(&lines).ok();
        let store = SledStore::open(&cb.data(), false).unwrap();
        let log = store.log("default").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stored = rt.block_on(log.read_all(1, 1000)).unwrap();
        let tree = log.raw_tree();
        let mut values = Vec::new();
        let mut heads = Vec::new();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            match k.first() {
                Some(b'e') => values.push(v.to_vec()),
                Some(b'm') => heads.push(v.to_vec()),
                _ => {}
            }
        }
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures/schema1");
        let mut payloads: Vec<(String, u32, Vec<u8>)> = stored
            .iter()
            .map(|e| (e.event_type.clone(), e.schema, e.payload.clone()))
            .collect();
        for (t, f) in [
            ("IncidentRecorded", "incident_recorded"),
            ("SuspensionIssued", "suspension_issued"),
        ] {
            payloads.push((
                t.into(),
                1,
                std::fs::read(fixtures.join(format!("{f}.payload.msgpack"))).unwrap(),
            ));
            values.push(std::fs::read(fixtures.join(format!("{f}.stored.bin"))).unwrap());
        }
        let recorded: Vec<RecordedEvent> = stored
            .iter()
            .map(|e| RecordedEvent::from_stored(e).unwrap())
            .collect();
        let mut checkpoints = Vec::new();
        checkpoint_of::<Caseload>(&recorded, &mut checkpoints);
        checkpoint_of::<Behaviour>(&recorded, &mut checkpoints);
        checkpoint_of::<Attendance>(&recorded, &mut checkpoints);
        checkpoint_of::<Suspensions>(&recorded, &mut checkpoints);
        checkpoint_of::<ForceLog>(&recorded, &mut checkpoints);
        checkpoint_of::<Interventions>(&recorded, &mut checkpoints);
        checkpoint_of::<Reintegration>(&recorded, &mut checkpoints);
        let watermarks = vec![std::fs::read(cb.data().join("heads/default")).unwrap()];
        drop(log);
        drop(store);
        drop(cb);
        Corpus {
            values,
            payloads,
            checkpoints,
            lines: lines.iter().map(|l| l.to_string()).collect(),
            heads,
            watermarks,
        }
    })
}

/// Up to 8 edits: flip, set, insert, delete a byte, or truncate.
fn mutations() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..5), 1..8)
}

fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, byte, op) in edits {
        if bytes.is_empty() {
            bytes.push(*byte);
            continue;
        }
        let i = at.index(bytes.len());
        match op {
            0 => bytes[i] ^= byte | 1,
            1 => bytes[i] = *byte,
            2 => bytes.insert(i, *byte),
            3 => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
    }
    bytes
}

/// `len` bytes expanded from `seed` (splitmix64): as arbitrary as a
/// proptest byte vector, far cheaper per case, reproducible from the seed.
fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = crate::crash::Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text from `seed`: JSON punctuation, digits, letters, field names,
/// control characters and multi-byte characters, mixed.
fn seeded_text(seed: u64, len: usize) -> String {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        " ",
        "0",
        "1",
        "9",
        "-",
        ".",
        "e",
        "a",
        "Z",
        "\\",
        "\\u0000",
        "\n",
        "\t",
        "\u{0}",
        "é",
        "💥",
        "\u{feff}",
        "null",
        "true",
        "false",
        "\"type\"",
        "\"data\"",
        "\"pupil\"",
        "\"occurred_at\"",
        "\"actor\"",
        "\"id\"",
        "\"school\"",
        "2025-09-16T12:00:00Z",
        "\"IncidentRecorded\"",
        "\"PupilRegistered\"",
        "\"severity\"",
        "18446744073709551616",
        "1e999",
    ];
    let mut rng = crate::crash::Rng(seed);
    (0..len)
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

/// Arbitrary bytes, or a mutated valid sample from `samples`.
fn input(samples: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u64>(), 0usize..512).prop_map(|(seed, len)| seeded_bytes(seed, len)),
        (any::<Index>(), mutations())
            .prop_map(move |(i, m)| mutate(samples[i.index(samples.len())].clone(), &m)),
    ]
}

static TOTAL: AtomicU64 = AtomicU64::new(0);

fn counted(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
    TOTAL.fetch_add(1, Ordering::Relaxed);
}

fn report(name: &str, counter: &AtomicU64) {
    println!(
        "fuzz {name}: {} cases, no panic",
        counter.load(Ordering::Relaxed)
    );
}

#[test]
fn envelope_decoding_never_panics() {
    static N: AtomicU64 = AtomicU64::new(0);
    proptest!(config(), |(bytes in input(&corpus().values), position in 0u64..40)| {
        counted(&N);
        let _ = StoredEvent::decode(&bytes);
        if let Ok(e) = decode_event_at(position, &bytes) {
            // A decoded event's payload goes through the upcasters too.
            let _ = e.case_event();
            let _ = RecordedEvent::from_stored(&e);
        }
    });
    report("envelope", &N);
}

#[test]
fn payload_decoding_and_upcasting_never_panic() {
    static N: AtomicU64 = AtomicU64::new(0);
    static PAYLOADS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let payloads = PAYLOADS.get_or_init(|| corpus().payloads.iter().map(|p| p.2.clone()).collect());
    proptest!(config(), |(bytes in input(payloads), t in any::<Index>(), schema in 0u32..5, own_type in any::<bool>(), which in any::<Index>())| {
        counted(&N);
        let (sample_type, sample_schema, _) = &corpus().payloads[which.index(corpus().payloads.len())];
        let (event_type, schema) = if own_type {
            (sample_type.as_str(), *sample_schema)
        } else {
            (EVENT_TYPES[t.index(EVENT_TYPES.len())], schema)
        };
        let _ = decode_payload(event_type, schema, &bytes);
    });
    report("payload", &N);
}

#[test]
fn store_metadata_decoding_never_panics() {
    static N: AtomicU64 = AtomicU64::new(0);
    proptest!(config(), |(head in input(&corpus().heads), mark in input(&corpus().watermarks))| {
        counted(&N);
        let _ = decode_head_record(&head);
        let _ = decode_watermark(&mark);
    });
    report("head record and watermark", &N);
}

/// A checkpoint's bytes decoded from memory (`decode_checkpoint`) and as
/// they are read through a buffer of `buffer` bytes (`read_checkpoint`,
/// as the runner reads a large checkpoint): never a panic, and the same
/// answer, the same state or a refusal both ways.
fn decoded_both_ways<P: Projection + PartialEq + std::fmt::Debug>(bytes: &[u8], buffer: usize) {
    let whole = decode_checkpoint::<P>(bytes);
    let read = read_checkpoint::<P, _>(std::io::BufReader::with_capacity(buffer, bytes));
    match (whole, read) {
        (Ok(whole), Ok(read)) => assert_eq!(whole, read, "{}", P::NAME),
        (Err(_), Err(_)) => {}
        (whole, read) => panic!(
            "{}: decoded from memory {:?}, as read {:?}",
            P::NAME,
            whole.map(|w| w.1),
            read.map(|r| r.1)
        ),
    }
}

#[test]
fn checkpoint_decoding_never_panics() {
    static N: AtomicU64 = AtomicU64::new(0);
    proptest!(config(), |(bytes in input(&corpus().checkpoints), small in any::<bool>())| {
        counted(&N);
        // A buffer too small for the header takes the path of a checkpoint
        // laid out otherwise (read whole); a large one, the streamed path.
        let buffer = if small { 16 } else { 64 * 1024 };
        decoded_both_ways::<Caseload>(&bytes, buffer);
        decoded_both_ways::<Behaviour>(&bytes, buffer);
        decoded_both_ways::<Attendance>(&bytes, buffer);
        decoded_both_ways::<Suspensions>(&bytes, buffer);
        decoded_both_ways::<ForceLog>(&bytes, buffer);
        decoded_both_ways::<Interventions>(&bytes, buffer);
        decoded_both_ways::<Reintegration>(&bytes, buffer);
    });
    report("checkpoints", &N);
}

#[test]
fn the_importer_never_panics_on_any_line() {
    static N: AtomicU64 = AtomicU64::new(0);
    static LINES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        corpus()
            .lines
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect()
    });
    let cb = crate::cli::Casebook::new();
    cb.import(&import_lines()).ok();
    let log = crate::cli::open_log(&cb.data(), "default");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    proptest!(config(), |(bytes in input(lines), seed in any::<u64>(), len in 0usize..120)| {
        let text = seeded_text(seed, len);
        counted(&N);
        for candidate in [String::from_utf8_lossy(&bytes).into_owned(), text] {
            match parse_line(7, &candidate) {
                Ok(parsed) => {
                    let mut planner = Planner::new(log.as_ref(), "default", Utc::now());
                    let _ = rt.block_on(planner.add(parsed));
                    let _ = planner.finish();
                }
                Err(e) => prop_assert!(e.to_string().starts_with("line 7: "), "{}", e),
            }
        }
    });
    report("importer lines", &N);
}
