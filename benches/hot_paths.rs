//! Criterion benches of the engine's hot pieces: sealing (encode + hash) and
//! decoding an envelope, the chain hash alone, and payload decoding. Run
//! with `cargo bench --bench hot_paths`; compare runs on the same machine.

use casebook_engine::envelope::{chain_hash, NewEvent, StoredEvent, StreamId, GENESIS_HASH};
use casebook_engine::event::{CaseEvent, IncidentRecorded, IncidentRole};
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

criterion_group!(benches, envelope);
criterion_main!(benches);
