//! Tamper evidence on the segment engine, as `store_tamper` shows it on
//! sled: every byte changed behind the engine's back is caught.
//!
//! - A changed byte anywhere in a frame, checksum left as it was (bit rot,
//!   a careless edit): the store refuses to open, naming the segment file
//!   (damage before the tail, or a tail shorter than the watermark that a
//!   clean close leaves).
//! - A changed byte in an event's stored bytes with the frame's checksum
//!   recomputed (a deliberate edit by someone who read docs/storage.md):
//!   the store opens and `verify` reports the problem at that event's
//!   position — the hash chain, not the checksum, is the evidence.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use casebook_engine::envelope::StreamId;
use casebook_engine::store::segment::frame::{decode_frame, encode_frame};
use casebook_engine::store::segment::SegmentStore;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion, VerifyReport};
use casebook_engine::StoreError;

use crate::conformance::contact;

const EVENTS: u64 = 24;
const SCHOOL: &str = "tamper";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A closed store of `EVENTS` single appends over three pupils; returns its
/// only segment file and each frame's (offset, length).
fn filled(dir: &Path) -> (PathBuf, Vec<(u64, usize)>) {
    runtime().block_on(async {
        let store = SegmentStore::open(dir, true).expect("open");
        let log = store.log(SCHOOL).expect("log");
        for n in 0..EVENTS as u32 {
            log.append(AppendRequest {
                stream: StreamId::for_pupil(SCHOOL, &format!("P{}", n % 3)),
                expected: ExpectedVersion::Any,
                events: vec![contact(n)],
            })
            .await
            .expect("append");
        }
    });
    let seg = dir
        .join("logs")
        .join(SCHOOL)
        .join("00000000000000000001.seg");
    let bytes = std::fs::read(&seg).expect("segment");
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let (_, _, len) = decode_frame(&bytes[at..]).expect("an intact frame");
        frames.push((at as u64, len));
        at += len;
    }
    assert_eq!(frames.len() as u64, EVENTS);
    (seg, frames)
}

/// Opens the store and verifies it; `Err` when the open itself refused.
fn open_and_verify(dir: &Path) -> Result<VerifyReport, StoreError> {
    runtime().block_on(async {
        let store = SegmentStore::open(dir, false)?;
        let log = store.log(SCHOOL)?;
        log.verify(&|_| {}).await
    })
}

fn cases() -> u64 {
    crate::crash::env_count("CASEBOOK_TAMPER_CASES", 5_000) / 5
}

/// Flips with the checksum left alone: the open refuses, naming the file.
#[test]
fn segment_tamper_a_flipped_byte_refuses_the_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, frames) = filled(dir.path());
    let original = std::fs::read(&seg).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let mut rng = crate::crash::Rng(0x05e6_7a3b);
    let mut refused = 0;
    let total = cases();
    for _ in 0..total {
        let (offset, len) = frames[rng.below(EVENTS) as usize];
        let at = offset + rng.below(len as u64);
        let mask = 1 + rng.below(255) as u8;
        let byte = original[at as usize] ^ mask;
        file.write_all_at(&[byte], at).unwrap();
        match open_and_verify(dir.path()) {
            Err(StoreError::Corrupt { location, .. }) => {
                assert!(
                    location.contains(".seg") || location.ends_with("logs/tamper"),
                    "{location}"
                );
                refused += 1;
            }
            Ok(r) => panic!("byte {at} (mask {mask:#x}) changed without a refusal: {r:?}"),
            Err(e) => panic!("byte {at} (mask {mask:#x}): unexpected error {e}"),
        }
        file.write_all_at(&original[at as usize..at as usize + 1], at)
            .unwrap();
    }
    let r = open_and_verify(dir.path()).expect("the restored store opens");
    assert!(r.ok, "{r:?}");
    println!("segment tamper: {refused} of {total} flipped bytes refused on open");
}

/// Flips inside an event's stored bytes with the checksum recomputed: the
/// chain reports the event's position.
#[test]
fn segment_tamper_a_rewritten_frame_is_reported_by_verify_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, frames) = filled(dir.path());
    let original = std::fs::read(&seg).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let mut rng = crate::crash::Rng(0x07a3_b5e6);
    let mut detected = 0;
    let mut refused = 0;
    let total = cases();
    for _ in 0..total {
        let p = 1 + rng.below(EVENTS);
        let (offset, len) = frames[p as usize - 1];
        let frame = &original[offset as usize..offset as usize + len];
        let (meta, value, _) = decode_frame(frame).unwrap();
        let mut value = value.to_vec();
        let i = rng.below(value.len() as u64) as usize;
        value[i] ^= 1 + rng.below(255) as u8;
        let mut forged = Vec::new();
        encode_frame(&mut forged, &meta, &value);
        assert_eq!(forged.len(), len);
        file.write_all_at(&forged, offset).unwrap();
        match open_and_verify(dir.path()) {
            Ok(r) => {
                assert!(!r.ok, "a forged byte {i} of position {p} went undetected");
                assert_eq!(r.problems[0].position, p, "{r:?}");
                detected += 1;
            }
            // Only the head event can be refused on open: the watermark a
            // clean close leaves pins its hash, and the open decodes it.
            Err(StoreError::Corrupt { .. }) if p == EVENTS => refused += 1,
            Err(e) => panic!("position {p}: unexpected error {e}"),
        }
        file.write_all_at(frame, offset).unwrap();
    }
    assert!(open_and_verify(dir.path()).expect("restored").ok);
    println!(
        "segment tamper: {total} forged frames (checksum recomputed): {detected} reported by verify at their position, {refused} refused on open"
    );
}
