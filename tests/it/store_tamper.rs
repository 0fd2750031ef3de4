//! Tamper evidence: any change to the log made behind the engine's back —
//! an altered byte, a removed, reordered or inserted event, a damaged head —
//! is reported by `verify` (or on open) at the right position.

use std::path::Path;
use std::sync::Arc;

use casebook_engine::envelope::{StoredEvent, StreamId};
use casebook_engine::store::sled::{SledLog, SledStore};
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion, VerifyReport};
use casebook_engine::StoreError;
use proptest::prelude::*;

use crate::conformance::contact;

const EVENTS: u64 = 24;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A log of `EVENTS` events over three pupils.
async fn filled(dir: &Path) -> Arc<SledLog> {
    let store = SledStore::open(dir, true).expect("open");
    let log = store.log("tamper").expect("log");
    for n in 0..EVENTS as u32 {
        let stream = StreamId::for_pupil("tamper", &format!("P{}", n % 3));
        log.append(AppendRequest {
            stream,
            expected: ExpectedVersion::Any,
            events: vec![contact(n)],
        })
        .await
        .expect("append");
    }
    log
}

fn e_key(p: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&p.to_be_bytes());
    k
}

async fn verify(log: &SledLog) -> VerifyReport {
    log.verify(&|_| {}).await.expect("verify runs")
}

fn first_problem(r: &VerifyReport) -> u64 {
    assert!(!r.ok, "tampering went undetected: {r:?}");
    r.problems[0].position
}

#[test]
fn an_untouched_log_verifies() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let r = verify(&log).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.events, EVENTS);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Flipping any bits of any byte of any stored event is reported at
    /// that event's position.
    #[test]
    fn a_changed_byte_is_reported_at_its_position(p in 1..=EVENTS, offset in any::<prop::sample::Index>(), mask in 1u8..=255) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path()).await;
            let tree = log.raw_tree();
            let mut value = tree.get(e_key(p)).unwrap().unwrap().to_vec();
            let i = offset.index(value.len());
            value[i] ^= mask;
            tree.insert(e_key(p), value).unwrap();
            let r = verify(&log).await;
            prop_assert_eq!(first_problem(&r), p, "{:?}", r);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Removing any event is reported where the gap starts.
    #[test]
    fn a_removed_event_is_reported_where_the_gap_starts(p in 1..=EVENTS) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path()).await;
            log.raw_tree().remove(e_key(p)).unwrap();
            let r = verify(&log).await;
            prop_assert_eq!(first_problem(&r), p, "{:?}", r);
            Ok(())
        })?;
    }

    /// Swapping any two neighbouring events is reported at the first.
    #[test]
    fn swapped_events_are_reported(p in 1..EVENTS) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path()).await;
            let tree = log.raw_tree();
            let a = tree.get(e_key(p)).unwrap().unwrap();
            let b = tree.get(e_key(p + 1)).unwrap().unwrap();
            tree.insert(e_key(p), b).unwrap();
            tree.insert(e_key(p + 1), a).unwrap();
            let r = verify(&log).await;
            prop_assert_eq!(first_problem(&r), p, "{:?}", r);
            Ok(())
        })?;
    }

    /// An event's bytes copied over a later one are reported there.
    #[test]
    fn a_duplicated_event_is_reported(p in 1..EVENTS, gap in 1..EVENTS) {
        let q = (p + gap).min(EVENTS);
        prop_assume!(q > p);
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path()).await;
            let tree = log.raw_tree();
            let copy = tree.get(e_key(p)).unwrap().unwrap();
            tree.insert(e_key(q), copy).unwrap();
            let r = verify(&log).await;
            prop_assert_eq!(first_problem(&r), q, "{:?}", r);
            Ok(())
        })?;
    }

    /// A well-formed, correctly chained event inserted at any position (the
    /// later ones shifted up) is reported where the chain breaks.
    #[test]
    fn an_inserted_event_is_reported(p in 2..=EVENTS) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path()).await;
            let tree = log.raw_tree();
            for q in (p..=EVENTS).rev() {
                let v = tree.get(e_key(q)).unwrap().unwrap();
                tree.insert(e_key(q + 1), v).unwrap();
            }
            let prev = StoredEvent::decode(&tree.get(e_key(p - 1)).unwrap().unwrap()).unwrap();
            let stream = StreamId::for_pupil("tamper", "P9");
            let (_, bytes) = StoredEvent::seal(&contact(999), stream, p, 1, prev.recorded_at, prev.hash).unwrap();
            tree.insert(e_key(p), bytes).unwrap();
            let r = verify(&log).await;
            let first = first_problem(&r);
            prop_assert!(first == p || first == p + 1, "reported at {}: {:?}", first, r);
            Ok(())
        })?;
    }
}

#[test]
fn damaged_head_is_reported_on_open() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let log = filled(dir.path()).await;
        // Lose the last event, as a torn tail would.
        log.raw_tree().remove(e_key(EVENTS)).unwrap();
        log.raw_tree().flush().unwrap();
    });
    let store = SledStore::open(dir.path(), false).expect("store opens");
    match store.log("tamper") {
        Err(StoreError::Corrupt { what, .. }) => {
            assert!(what.contains("head says position"), "{what}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a damaged log was opened without complaint"),
    }
}

#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path(), true).unwrap());
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert("casebook/format", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(dir.path(), false) {
        Err(StoreError::UnsupportedFormat {
            found: 99,
            supported,
        }) => assert!(supported < 99),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a store from the future was opened"),
    }
}

#[test]
fn opening_a_missing_store_without_create_is_an_error_not_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    assert!(SledStore::open(&missing, false).is_err());
    assert!(!missing.join("db").exists());
}

/// sled can recover damaged files as an empty or shorter database without
/// an error. The head watermark makes that a refusal on open, never a
/// store that verifies as "ok: 0 events".
#[test]
fn a_store_that_lost_acknowledged_events_is_refused_on_open() {
    for damage in [
        "truncate to 1000 bytes",
        "empty the file",
        "garble the middle",
    ] {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            drop(filled(dir.path()).await);
        });
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        match damage {
            "truncate to 1000 bytes" => bytes.truncate(1000),
            "empty the file" => bytes.clear(),
            _ => {
                let mid = bytes.len() / 3;
                for b in &mut bytes[mid..mid + 64] {
                    *b ^= 0xff;
                }
            }
        }
        std::fs::write(&db, bytes).unwrap();
        let opened = SledStore::open(dir.path(), false).and_then(|s| s.log("tamper").map(|_| ()));
        match opened {
            Err(StoreError::Corrupt { what, .. }) => {
                assert!(
                    what.contains("lost") || what.contains("gone"),
                    "{damage}: {what}"
                )
            }
            Err(other) => panic!("{damage}: unexpected error {other}"),
            Ok(()) => panic!("{damage}: a store that lost its events opened without complaint"),
        }
    }
}

#[test]
fn an_intact_store_reopens_past_its_watermark() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        drop(filled(dir.path()).await);
        let log = SledStore::open(dir.path(), false)
            .unwrap()
            .log("tamper")
            .unwrap();
        assert_eq!(log.head().await.unwrap().position, EVENTS);
        assert!(verify(&log).await.ok);
    });
}

/// The sample size of [`a_large_seeded_sample_of_flipped_bytes_is_always_reported`]:
/// `CASEBOOK_TAMPER_CASES` random flips (default 5,000) on top of every
/// byte of three events; `CASEBOOK_TAMPER_ALL=1` flips every byte of every
/// event instead of the random sample.
fn tamper_cases() -> u64 {
    crate::crash::env_count("CASEBOOK_TAMPER_CASES", 5_000)
}

/// Flips bytes of stored event values through sled's raw API, one case at a
/// time (restored after each), and checks `verify` reports a problem at the
/// changed event's position every time.
#[test]
fn a_large_seeded_sample_of_flipped_bytes_is_always_reported() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let tree = log.raw_tree();
        let originals: Vec<Vec<u8>> = (1..=EVENTS)
            .map(|p| tree.get(e_key(p)).unwrap().unwrap().to_vec())
            .collect();
        let mut rng = crate::crash::Rng(0x7a3b_e11d);
        let mut cases: Vec<(u64, usize, u8)> = Vec::new();
        let every_byte_of: Vec<u64> = if std::env::var("CASEBOOK_TAMPER_ALL").is_ok() {
            (1..=EVENTS).collect()
        } else {
            vec![1, EVENTS / 2, EVENTS]
        };
        for &p in &every_byte_of {
            for i in 0..originals[p as usize - 1].len() {
                cases.push((p, i, 1 + rng.below(255) as u8));
            }
        }
        if std::env::var("CASEBOOK_TAMPER_ALL").is_err() {
            for _ in 0..tamper_cases() {
                let p = 1 + rng.below(EVENTS);
                let i = rng.below(originals[p as usize - 1].len() as u64) as usize;
                cases.push((p, i, 1 + rng.below(255) as u8));
            }
        }
        let mut detected = 0u64;
        for &(p, i, mask) in &cases {
            let original = &originals[p as usize - 1];
            let mut value = original.clone();
            value[i] ^= mask;
            tree.insert(e_key(p), value).unwrap();
            let r = verify(&log).await;
            assert!(
                !r.ok,
                "flip of byte {i} of position {p} (mask {mask:#x}) undetected"
            );
            assert_eq!(
                r.problems[0].position, p,
                "flip of byte {i} of position {p} reported elsewhere: {r:?}"
            );
            detected += 1;
            tree.insert(e_key(p), original.clone()).unwrap();
        }
        assert!(verify(&log).await.ok, "restored log verifies");
        println!(
            "tamper: {detected} of {} byte flips detected at the right position",
            cases.len()
        );
    });
}

/// Every removal, neighbour swap and duplication of an event in the log,
/// one at a time (restored after each), is reported at the right position.
#[test]
fn every_removal_swap_and_duplication_is_reported() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path()).await;
        let tree = log.raw_tree();
        let get = |p: u64| tree.get(e_key(p)).unwrap().unwrap();
        let mut cases = 0;
        for p in 1..=EVENTS {
            let v = get(p);
            tree.remove(e_key(p)).unwrap();
            assert_eq!(first_problem(&verify(&log).await), p, "removal of {p}");
            tree.insert(e_key(p), v).unwrap();
            cases += 1;
        }
        for p in 1..EVENTS {
            let (a, b) = (get(p), get(p + 1));
            tree.insert(e_key(p), b.clone()).unwrap();
            tree.insert(e_key(p + 1), a.clone()).unwrap();
            assert_eq!(first_problem(&verify(&log).await), p, "swap of {p}");
            tree.insert(e_key(p), a).unwrap();
            tree.insert(e_key(p + 1), b).unwrap();
            cases += 1;
        }
        for p in 1..EVENTS {
            for q in p + 1..=EVENTS {
                let original = get(q);
                tree.insert(e_key(q), get(p)).unwrap();
                assert_eq!(
                    first_problem(&verify(&log).await),
                    q,
                    "copy of {p} over {q}"
                );
                tree.insert(e_key(q), original).unwrap();
                cases += 1;
            }
        }
        assert!(verify(&log).await.ok);
        println!("tamper: {cases} removals, swaps and duplications detected at the right position");
    });
}
