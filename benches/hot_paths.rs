//! Criterion benches of the engine's hot pieces: sealing (encode + hash) and
//! decoding an envelope, the chain hash alone, payload encoding and
//! decoding, folding one pupil's demo year into the school-wide projections
//! and into a chronology, `decide`, and reading an import line. Run with
//! `cargo bench --bench hot_paths`; compare runs on the same machine. The
//! end-to-end figures are `casebook bench` (docs/performance.md).

use casebook_cli::demo::{generate, DemoOptions};
use casebook_engine::domain::{decide, CaseState, Command, Record};
use casebook_engine::envelope::{chain_hash, NewEvent, StoredEvent, StreamId, GENESIS_HASH};
use casebook_engine::event::{CaseEvent, IncidentRecorded, IncidentRole};
use casebook_engine::RecordedEvent;
use casebook_projections::{
    Attendance, Behaviour, Caseload, Chronology, Projection, Suspensions, Targets,
};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn incident() -> CaseEvent {
    CaseEvent::IncidentRecorded(IncidentRecorded {
        category: "verbal_abuse_adult".into(),
        severity: 3,
        location: "corridor".into(),
        description: "Shouted at a member of staff after being asked to move to class; calmed with a time-out and returned to lesson.".into(),
        role: IncidentRole::Perpetrator,
        participants: vec![],
        class: Some("9B".into()),
        site: Some("Main".into()),
    })
}

fn envelope(c: &mut Criterion) {
    let at = Utc
        .with_ymd_and_hms(2025, 9, 15, 10, 20, 0)
        .single()
        .expect("valid time");
    let new = NewEvent::new(&incident(), at, "S017").expect("encode");
    let stream = StreamId::for_pupil("bench", "P1042");
    let (_, bytes) = StoredEvent::seal(&new, stream, 1, 1, at, GENESIS_HASH).expect("seal");
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal (encode + blake3)", |b| {
        b.iter(|| StoredEvent::seal(black_box(&new), stream, 7, 3, at, GENESIS_HASH).expect("seal"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| StoredEvent::decode(black_box(&bytes)).expect("decode"))
    });
    g.bench_function("chain_hash", |b| {
        b.iter(|| chain_hash(black_box(&GENESIS_HASH), black_box(&bytes)))
    });
    let stored = StoredEvent::decode(&bytes).expect("decode");
    g.bench_function("payload decode", |b| {
        b.iter(|| black_box(&stored).case_event().expect("payload"))
    });
    g.bench_function("payload encode", |b| {
        let e = incident();
        b.iter(|| casebook_engine::envelope::encode_payload(black_box(&e)).expect("encode"))
    });
    g.finish();
}

/// One demo pupil's school year, sealed and decoded as the log returns it.
fn demo_year() -> Vec<RecordedEvent> {
    let opts = DemoOptions {
        pupils: 20,
        seed: 42,
        academic_year: 2024,
        school: "bench".into(),
    };
    let pupil = generate(&opts)
        .max_by_key(|p| p.events.len())
        .expect("a demo pupil");
    let stream = StreamId::for_pupil("bench", &pupil.reference);
    let mut prev = GENESIS_HASH;
    pupil
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut new = NewEvent::new(&e.event, e.occurred_at, e.actor.clone()).expect("encode");
            new.event_id = e.event_id;
            let n = i as u64 + 1;
            let (stored, _) =
                StoredEvent::seal(&new, stream, n, n, e.occurred_at, prev).expect("seal");
            prev = stored.hash;
            RecordedEvent::from_stored(&stored).expect("decode")
        })
        .collect()
}

fn folds(c: &mut Criterion) {
    let year = demo_year();
    let log = Targets::of(&year);
    let mut g = c.benchmark_group("fold one pupil's year");
    g.throughput(Throughput::Elements(year.len() as u64));
    g.bench_function(
        "school-wide projections (caseload, behaviour, attendance, suspensions)",
        |b| {
            b.iter(|| {
                let mut caseload = Caseload::default();
                let mut behaviour = Behaviour::default();
                let mut attendance = Attendance::default();
                let mut suspensions = Suspensions::default();
                for e in &year {
                    let corrected_at = log.corrected_by(e);
                    caseload.apply(e, corrected_at);
                    behaviour.apply(e, corrected_at);
                    attendance.apply(e, corrected_at);
                    suspensions.apply(e, corrected_at);
                }
                black_box((caseload, behaviour, attendance, suspensions))
            })
        },
    );
    g.bench_function("chronology (timeline)", |b| {
        b.iter(|| Chronology::build("P00001", black_box(&year), None, false))
    });
    let chronology = Chronology::build("P00001", &year, None, false);
    g.bench_function("timeline document: serde_json::to_value", |b| {
        b.iter(|| serde_json::to_value(black_box(&chronology)).expect("json"))
    });
    g.bench_function("timeline document: Chronology::into_json", |b| {
        b.iter_batched(
            || chronology.clone(),
            |c| c.into_json().expect("json"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("case state (what decide reads)", |b| {
        b.iter(|| {
            let mut state = CaseState::new();
            for e in &year {
                state.apply(e.event_id, &e.event);
            }
            black_box(state)
        })
    });
    g.finish();

    // decide: the pupil's last event against the state of all before it.
    let (last, before) = year.split_last().expect("events");
    let mut state = CaseState::new();
    for e in before {
        state.apply(e.event_id, &e.event);
    }
    let command = Command::Record(Record {
        event: last.event.clone(),
        occurred_at: last.occurred_at,
        now: last.occurred_at + chrono::Duration::days(1),
    });
    let mut g = c.benchmark_group("domain");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decide (one event, a year's state)", |b| {
        b.iter(|| decide(black_box(&state), black_box(&command)).expect("valid"))
    });
    g.finish();
}

/// Reading one import line (`casebook import`): an incident and a register
/// mark, through `parse_line` (straight to the event where nothing more
/// need be checked) and through the general reading it falls back to.
fn import_lines(c: &mut Criterion) {
    use casebook_engine::import::{parse_line, parse_line_general};
    let incident = serde_json::json!({
        "type": "IncidentRecorded", "pupil": "P1042", "occurred_at": "2025-09-15T10:20:00Z",
        "actor": "S017", "id": "00000000-0000-4000-8000-000000000001",
        "data": incident().data_json(),
    })
    .to_string();
    let mark = r#"{"type":"AttendanceMarked","pupil":"P1042","occurred_at":"2025-09-15T13:15:00Z","actor":"S002","data":{"date":"2025-09-15","session":"pm","code":"\\"}}"#;
    let mut g = c.benchmark_group("import line");
    g.throughput(Throughput::Elements(1));
    for (name, text) in [("incident", incident.as_str()), ("register mark", mark)] {
        g.bench_function(format!("{name}: parse_line"), |b| {
            b.iter(|| parse_line(1, black_box(text)).expect("line"))
        });
        g.bench_function(format!("{name}: general reading"), |b| {
            b.iter(|| parse_line_general(1, black_box(text)).expect("line"))
        });
    }
    g.finish();
}

criterion_group!(benches, envelope, folds, import_lines);
criterion_main!(benches);
