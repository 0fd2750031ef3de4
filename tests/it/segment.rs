//! The segment backend's own promises (engine/src/store/segment/), beyond
//! the conformance suite: recovery of a torn tail at every byte, refusal of
//! damaged acknowledged data (never a truncation, never a panic), segment
//! rolling, the process lock, atomic checkpoints, the store marker, and a
//! model-based property test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use casebook_engine::envelope::StreamId;
use casebook_engine::store::segment::{
    SegmentLog, SegmentOptions, SegmentStore, MARKER_FILE, SNAPSHOT_MIN_EVENTS,
};
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion, StreamVisitor};
use casebook_engine::StoreError;
use casebook_engine::{EventRef, NewEvent, StoredEvent};
use proptest::prelude::*;

use crate::conformance::{contact, pupil};
use crate::rt;

const SCHOOL: &str = "test-school";

fn open(dir: &Path) -> Result<Arc<SegmentLog>, StoreError> {
    SegmentStore::open(dir, true)?.log(SCHOOL)
}

fn open_small(dir: &Path, segment_bytes: u64) -> Result<Arc<SegmentLog>, StoreError> {
    open_with(dir, segment_bytes, SNAPSHOT_MIN_EVENTS)
}

fn open_with(
    dir: &Path,
    segment_bytes: u64,
    snapshot_min_events: u64,
) -> Result<Arc<SegmentLog>, StoreError> {
    open_options(
        dir,
        SegmentOptions {
            segment_bytes,
            snapshot_min_events,
            ..SegmentOptions::default()
        },
    )
}

fn open_options(dir: &Path, options: SegmentOptions) -> Result<Arc<SegmentLog>, StoreError> {
    SegmentStore::open_with(dir, true, options)?.log(SCHOOL)
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("logs").join(SCHOOL)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(log_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

async fn append_n(log: &dyn EventStore, stream: u32, first: u32, n: u32) {
    log.append(AppendRequest {
        stream: pupil(stream),
        expected: ExpectedVersion::Any,
        events: (first..first + n).map(contact).collect(),
    })
    .await
    .expect("append");
}

async fn positions(log: &dyn EventStore) -> Vec<u64> {
    log.read_all(1, 10_000)
        .await
        .expect("read_all")
        .iter()
        .map(|e| e.position)
        .collect()
}

fn corrupt_location(e: StoreError) -> String {
    match e {
        StoreError::Corrupt { location, .. } => location,
        other => panic!("expected a corruption error, got {other}"),
    }
}

/// What `visit_stream` hands over, owned, or its error's text.
struct Collect(Vec<StoredEvent>);

impl StreamVisitor for Collect {
    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError> {
        self.0.push(event.to_stored());
        Ok(())
    }
}

async fn visited(
    log: &dyn EventStore,
    stream: StreamId,
    from: u64,
    max: usize,
) -> Result<Vec<StoredEvent>, String> {
    let mut c = Collect(Vec::new());
    let n = log
        .visit_stream(stream, from, max, &mut c)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(n, c.0.len());
    Ok(c.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// `visit_stream` (frames read in place) hands over what `read_stream`
    /// returns, page by page, across segments and in runs and single
    /// frames; with a byte of a segment changed under the open log, the
    /// same events or the same error.
    #[test]
    fn a_visited_stream_is_the_read_stream_even_when_damaged(
        groups in prop::collection::vec((0u32..3, 1u32..5), 1..12),
        flip in any::<prop::sample::Index>(),
        byte in 1u8..=255,
        max in 1usize..6,
    ) {
        let rt = rt();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        rt.block_on(async {
            let log = open_small(dir, 1_500).unwrap();
            let mut n = 0;
            for &(stream, count) in &groups {
                append_n(log.as_ref(), stream, n, count).await;
                n += count;
            }
            let compare = |log: Arc<SegmentLog>| async move {
                for stream in (0..3).map(pupil) {
                    let version = log.stream_version(stream).await.unwrap();
                    for from in 1..=version + 1 {
                        let read = log.read_stream(stream, from, max).await.map_err(|e| e.to_string());
                        let seen = visited(log.as_ref(), stream, from, max).await;
                        assert_eq!(seen, read, "from {from}, max {max}");
                    }
                }
            };
            compare(log.clone()).await;
            // A byte changed under the open log (reads pread the file).
            let files = segments(dir);
            let sizes: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).collect();
            let total: u64 = sizes.iter().sum();
            let mut at = flip.index(total as usize) as u64;
            let mut i = 0;
            while at >= sizes[i] {
                at -= sizes[i];
                i += 1;
            }
            let mut bytes = std::fs::read(&files[i]).unwrap();
            bytes[at as usize] ^= byte;
            std::fs::write(&files[i], &bytes).unwrap();
            compare(log).await;
        });
    }
}

/// Cuts the last segment at every byte offset inside the last group (and
/// appends zeros or garbage after some cuts): reopening always shows the
/// earlier complete groups exactly (or everything, when the bytes written
/// still hold the whole last group), never part of a group; verify passes
/// and appends continue.
///
/// What is expected follows from the bytes written, not from the cut
/// alone: a cut one byte short of the end followed by garbage whose first
/// byte happens to be the byte cut off (1 run in 256: the last byte is
/// the event's hash) is the whole group and garbage after it. Until
/// session ai the test expected three events there and so failed about
/// once in 256 runs; the last pass now writes that case on purpose.
#[test]
fn torn_tail_at_every_offset_keeps_exactly_the_complete_groups() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    rt.block_on(async {
        let log = open(dir).unwrap();
        append_n(log.as_ref(), 1, 1, 2).await;
        append_n(log.as_ref(), 2, 3, 1).await;
    });
    let seg = segments(dir).pop().unwrap();
    let wm_path = log_dir(dir).join("head");
    // The watermark as a crash after the first groups may leave it.
    let watermark = std::fs::read(&wm_path).unwrap();
    let short = std::fs::metadata(&seg).unwrap().len();
    rt.block_on(async {
        let log = open(dir).unwrap();
        append_n(log.as_ref(), 1, 10, 3).await;
    });
    let full = std::fs::read(&seg).unwrap();
    assert!(full.len() as u64 > short);
    let mut garbage_seed = 0x1234_5678u32;
    // The last pass: the whole group, then garbage that starts with
    // something other than zeros (a torn next group's first bytes).
    let cuts = (short as usize..=full.len()).chain([full.len() + 1]);
    for pass in cuts {
        let cut = pass.min(full.len());
        let mut bytes = full[..cut].to_vec();
        match pass % 3 {
            _ if pass > full.len() => bytes.extend_from_slice(&[0xa5; 64]),
            1 => bytes.extend_from_slice(&[0u8; 64]),
            2 => bytes.extend((0..64).map(|_| {
                garbage_seed = garbage_seed
                    .wrapping_mul(1_103_515_245)
                    .wrapping_add(12_345);
                (garbage_seed >> 16) as u8
            })),
            _ => {}
        }
        let whole = bytes.starts_with(&full);
        std::fs::write(&seg, &bytes).unwrap();
        std::fs::write(&wm_path, &watermark).unwrap();
        rt.block_on(async {
            let log = open(dir).unwrap_or_else(|e| panic!("open after a cut at {cut}: {e}"));
            let want: Vec<u64> = if whole {
                (1..=6).collect()
            } else {
                (1..=3).collect()
            };
            assert_eq!(
                positions(log.as_ref()).await,
                want,
                "cut at {cut} of {} bytes, {} written (the first groups end at {short}), the index from the snapshot of head {:?} ({:?})",
                full.len(),
                bytes.len(),
                log.opened_from_snapshot(),
                log.take_snapshot_rejection()
            );
            let report = log.verify(&|_| {}).await.unwrap();
            assert!(report.ok, "cut at {cut}: {:?}", report.problems);
            if cut % 17 == 0 || cut == short as usize || cut == full.len() {
                let next = want.len() as u64 + 1;
                let a = log
                    .append(AppendRequest {
                        stream: pupil(3),
                        expected: ExpectedVersion::Any,
                        events: vec![contact(100)],
                    })
                    .await
                    .unwrap();
                assert_eq!(a.first_position, next, "cut at {cut}");
                assert!(log.verify(&|_| {}).await.unwrap().ok);
            }
        });
        // The tail was cut back to whole groups (or the append after it).
        let len = std::fs::metadata(&seg).unwrap().len() as usize;
        let kept = if whole { full.len() } else { short as usize };
        assert!(len >= kept, "cut at {cut}: whole groups cut");
    }
}

/// A flipped byte in an acknowledged frame with valid frames after it is
/// corruption, not a torn tail: open is refused naming the file and the
/// byte offset, and nothing is truncated.
#[test]
fn damage_before_the_tail_refuses_open_and_truncates_nothing() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    rt.block_on(async {
        let log = open(dir).unwrap();
        for i in 0..4 {
            append_n(log.as_ref(), i, i * 10, 2).await;
        }
    });
    let seg = segments(dir).pop().unwrap();
    let good = std::fs::read(&seg).unwrap();
    for at in [0usize, 3, 9, 30, 100, good.len() / 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&seg, &bad).unwrap();
        let e = open(dir)
            .err()
            .unwrap_or_else(|| panic!("flip at {at} opened"));
        assert!(e.is_store_failure());
        let location = corrupt_location(e);
        assert!(
            location.contains("00000000000000000001.seg") && location.contains("at byte"),
            "{location}"
        );
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            bad,
            "flip at {at}: file changed"
        );
    }
    // Damage in the last frame looks like a torn tail, but the watermark
    // (written at the clean close) says it was acknowledged: refused.
    let mut bad = good.clone();
    let last = bad.len() - 5;
    bad[last] ^= 0x01;
    std::fs::write(&seg, &bad).unwrap();
    let e = open(dir).err().expect("a damaged acknowledged tail opened");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    assert_eq!(std::fs::read(&seg).unwrap(), bad);
    // Restored, the store opens and verifies.
    std::fs::write(&seg, &good).unwrap();
    rt.block_on(async {
        let log = open(dir).unwrap();
        assert_eq!(positions(log.as_ref()).await.len(), 8);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}

/// With a tiny segment size the writer rolls to new segments; a reopen
/// reads across them, verify passes and appends continue in the last one.
#[test]
fn segments_roll_and_reopen_across_them() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let written = rt.block_on(async {
        let log = open_small(dir, 1_000).unwrap();
        for i in 0..20u32 {
            append_n(log.as_ref(), i % 3, i * 10, 1 + i % 3).await;
        }
        log.read_all(1, 10_000).await.unwrap()
    });
    let segs = segments(dir);
    assert!(segs.len() >= 5, "only {} segments", segs.len());
    for (i, p) in segs.iter().enumerate().skip(1) {
        let first: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(first > 1, "segment {i} is named {}", p.display());
    }
    rt.block_on(async {
        let log = open_small(dir, 1_000).unwrap();
        assert_eq!(log.read_all(1, 10_000).await.unwrap(), written);
        let stream = log.read_stream(pupil(1), 1, 1000).await.unwrap();
        assert_eq!(
            stream.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=stream.len() as u64).collect::<Vec<_>>()
        );
        assert!(stream.len() > 5);
        // Each stream, its frames in every segment among the others'.
        for s in 0..3 {
            let want: Vec<StoredEvent> = written
                .iter()
                .filter(|e| e.stream == pupil(s))
                .cloned()
                .collect();
            assert_eq!(log.read_stream(pupil(s), 1, 1000).await.unwrap(), want);
            assert_eq!(visited(log.as_ref(), pupil(s), 1, 1000).await, Ok(want));
        }
        // A page of read_all that spans segments.
        let page = log.read_all(3, 30).await.unwrap();
        assert_eq!(page[..], written[2..32]);
        for e in &written {
            assert_eq!(log.find_event(e.event_id).await.unwrap().as_ref(), Some(e));
        }
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        append_n(log.as_ref(), 1, 900, 2).await;
        assert_eq!(log.head().await.unwrap().position, written.len() as u64 + 2);
    });
    // A segment other than the last one damaged: refused.
    let first = &segments(dir)[0];
    let mut bytes = std::fs::read(first).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 3);
    std::fs::write(first, &bytes).unwrap();
    let location = corrupt_location(open_small(dir, 1_000).err().expect("opened"));
    assert!(location.contains("00000000000000000001.seg"), "{location}");
}

/// A second open while the store is open is refused with the holder's pid.
#[test]
fn a_second_open_is_refused_while_the_store_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(tmp.path(), true).unwrap();
    let _log = store.log(SCHOOL).unwrap();
    match SegmentStore::open(tmp.path(), true) {
        Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        Err(e) => panic!("expected in use, got {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
    drop(_log);
    drop(store);
    SegmentStore::open(tmp.path(), false).expect("reopen after close");
}

/// Checkpoints are whole files replaced atomically; a leftover temporary
/// file of an interrupted save changes nothing; clear removes them all.
#[test]
fn checkpoints_are_replaced_atomically() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let log = open(tmp.path()).unwrap();
        log.save_checkpoint("caseload/v1", b"one".to_vec())
            .await
            .unwrap();
        log.save_checkpoint("caseload/v1", b"two".to_vec())
            .await
            .unwrap();
        let cp = log_dir(tmp.path()).join("checkpoints");
        let names: Vec<String> = std::fs::read_dir(&cp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // An interrupted save leaves only its temporary file.
        std::fs::write(cp.join(format!(".tmp-{}", names[0])), b"half").unwrap();
        assert_eq!(
            log.load_checkpoint("caseload/v1").await.unwrap(),
            Some(b"two".to_vec())
        );
        assert_eq!(log.load_checkpoint("other").await.unwrap(), None);
        log.clear_checkpoints().await.unwrap();
        assert_eq!(log.load_checkpoint("caseload/v1").await.unwrap(), None);
        assert!(log.save_checkpoint(&"x".repeat(101), vec![]).await.is_err());
    });
}

/// The marker: a newer format is refused, a damaged marker is corruption,
/// and sled and segment stores refuse to open each other's directories.
#[test]
fn store_marker_guards_format_and_backend() {
    let tmp = tempfile::tempdir().unwrap();
    drop(SegmentStore::open(tmp.path(), true).unwrap());
    let marker = tmp.path().join(MARKER_FILE);
    std::fs::write(&marker, "casebook segment store 2\n").unwrap();
    assert!(matches!(
        SegmentStore::open(tmp.path(), false).err(),
        Some(StoreError::UnsupportedFormat {
            found: 2,
            supported: 1
        })
    ));
    std::fs::write(&marker, "garbage").unwrap();
    assert!(matches!(
        SegmentStore::open(tmp.path(), false).err(),
        Some(StoreError::Corrupt { .. })
    ));
    std::fs::write(&marker, "casebook segment store 1\n").unwrap();
    let e = casebook_engine::store::sled::SledStore::open(tmp.path(), true)
        .err()
        .expect("sled opened a segment store");
    assert!(e.to_string().contains("segment store"), "{e}");
    let sled_dir = tempfile::tempdir().unwrap();
    drop(casebook_engine::store::sled::SledStore::open(sled_dir.path(), true).unwrap());
    let e = SegmentStore::open(sled_dir.path(), true)
        .err()
        .expect("segment opened a sled store");
    assert!(e.to_string().contains("sled store"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert!(SegmentStore::open(empty.path(), false).is_err());
    assert!(!empty.path().join(MARKER_FILE).exists());
}

// ---- property tests -----------------------------------------------------------

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    Right,
    Wrong,
}

#[derive(Clone, Debug)]
struct Op {
    stream: u32,
    expect: Expect,
    events: u32,
    /// Reuse the id of an earlier stored event (index into the model).
    duplicate: Option<usize>,
    /// Submit together with the next op as one atomic append.
    atomic_with_next: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0u32..4,
        prop_oneof![
            Just(Expect::Any),
            Just(Expect::NoStream),
            Just(Expect::Right),
            Just(Expect::Wrong)
        ],
        1u32..4,
        prop::option::weighted(0.15, 0usize..1000),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(stream, expect, events, duplicate, atomic_with_next)| Op {
            stream,
            expect,
            events,
            duplicate,
            atomic_with_next,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random appends (batches, expected versions, duplicate ids) against a
    /// simple model, then a reopen: the log is exactly the model.
    #[test]
    fn random_appends_match_a_model_and_survive_reopen(ops in prop::collection::vec(op(), 1..24)) {
        let rt = rt();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Model: stored (stream, version, event id), in log order.
        let mut model: Vec<(StreamId, u64, uuid::Uuid)> = Vec::new();
        let mut counter = 0u32;
        rt.block_on(async {
            let log = open_small(dir, 2_000).unwrap();
            let mut i = 0;
            while i < ops.len() {
                let mut group = vec![ops[i].clone()];
                while group.last().unwrap().atomic_with_next && i + 1 < ops.len() {
                    i += 1;
                    group.push(ops[i].clone());
                }
                i += 1;
                // Build the requests and predict the outcome.
                let mut versions = std::collections::HashMap::new();
                let mut ok = true;
                let mut seen = std::collections::HashSet::new();
                let mut requests = Vec::new();
                let mut staged = Vec::new();
                for o in &group {
                    let stream = pupil(o.stream);
                    let current = *versions.entry(stream).or_insert_with(|| {
                        model.iter().filter(|(s, _, _)| *s == stream).count() as u64
                    });
                    let expected = match o.expect {
                        Expect::Any => ExpectedVersion::Any,
                        Expect::NoStream => ExpectedVersion::NoStream,
                        Expect::Right => ExpectedVersion::Exact(current),
                        Expect::Wrong => ExpectedVersion::Exact(current + 7),
                    };
                    ok &= expected.admits(current);
                    let mut events = Vec::new();
                    for k in 0..o.events {
                        counter += 1;
                        let mut e = contact(counter);
                        if k == 0 {
                            if let Some(d) = o.duplicate {
                                if !model.is_empty() {
                                    e.event_id = model[d % model.len()].2;
                                    ok = false;
                                }
                            }
                        }
                        ok &= seen.insert(e.event_id);
                        staged.push((stream, current + 1 + k as u64, e.event_id));
                        events.push(e);
                    }
                    versions.insert(stream, current + o.events as u64);
                    requests.push(AppendRequest { stream, expected, events });
                }
                let result = log.append_atomic(requests).await;
                assert_eq!(result.is_ok(), ok, "{group:?}: {result:?}");
                if ok {
                    model.extend(staged);
                }
            }
        });
        rt.block_on(async {
            let log = open_small(dir, 2_000).unwrap();
            let all = log.read_all(1, 10_000).await.unwrap();
            let got: Vec<_> = all.iter().map(|e| (e.stream, e.version, e.event_id)).collect();
            assert_eq!(got, model);
            assert_eq!(
                all.iter().map(|e| e.position).collect::<Vec<_>>(),
                (1..=model.len() as u64).collect::<Vec<_>>()
            );
            for s in 0..4 {
                let n = model.iter().filter(|(st, _, _)| *st == pupil(s)).count() as u64;
                assert_eq!(log.stream_version(pupil(s)).await.unwrap(), n);
            }
            assert!(log.verify(&|_| {}).await.unwrap().ok);
        });
    }

    /// Any bytes as a segment file: open never panics; when it opens, the
    /// log verifies.
    #[test]
    fn random_segment_bytes_never_panic_on_open(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        prefix_valid in any::<bool>(),
    ) {
        let rt = rt();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut content = Vec::new();
        if prefix_valid {
            rt.block_on(async {
                let log = open(dir).unwrap();
                append_n(log.as_ref(), 1, 1, 2).await;
            });
            content = std::fs::read(&segments(dir)[0]).unwrap();
            std::fs::remove_file(log_dir(dir).join("head")).unwrap();
        } else {
            drop(open(dir).unwrap());
        }
        content.extend_from_slice(&bytes);
        std::fs::write(&segments(dir)[0], &content).unwrap();
        if let Ok(log) = open(dir) {
            rt.block_on(async {
                assert!(log.verify(&|_| {}).await.unwrap().ok);
                if prefix_valid {
                    assert!(log.head().await.unwrap().position >= 2);
                }
            });
        }
    }
}

proptest! {
    /// Any bytes as a head watermark: decoded or refused, never a panic.
    #[test]
    fn watermark_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        let _ = casebook_engine::store::segment::decode_watermark(&bytes);
    }
}

/// Another process holding the store: refused with its pid; usable once
/// it is gone (killed with SIGKILL: the kernel drops the flock).
#[test]
fn another_process_holding_the_store_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, pid) = crate::two_processes::hold_store(tmp.path(), "segment");
    match SegmentStore::open(tmp.path(), false) {
        Err(StoreError::InUse { pid: Some(p), .. }) => assert_eq!(p, pid),
        Err(e) => panic!("expected in use, got {e}"),
        Ok(_) => panic!("opened a store held by another process"),
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    let rt = rt();
    rt.block_on(async {
        let log = SegmentStore::open(tmp.path(), false)
            .unwrap()
            .log("torture")
            .unwrap();
        append_n(log.as_ref(), 1, 1, 1).await;
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}

/// Small groups write into zeros preallocated ahead of them (so their
/// fdatasync changes no file size); the zeros are cut at clean close, and
/// after a crash (simulated: zeros after the last group) on the next open,
/// with every event kept, verify passing and appends continuing.
#[test]
fn preallocated_zeros_are_cut_at_close_and_after_a_crash() {
    use casebook_engine::store::segment::PREALLOC_BYTES;
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let written = rt.block_on(async {
        let log = open(dir).unwrap();
        for i in 0..20u32 {
            append_n(log.as_ref(), i % 4, i, 1).await;
        }
        let seg = segments(dir).pop().unwrap();
        let open_len = std::fs::metadata(&seg).unwrap().len();
        assert!(
            open_len >= PREALLOC_BYTES,
            "no space written ahead while open: {open_len} bytes"
        );
        log.read_all(1, 10_000).await.unwrap()
    });
    let seg = segments(dir).pop().unwrap();
    let closed = std::fs::read(&seg).unwrap();
    assert!(
        (closed.len() as u64) < PREALLOC_BYTES / 4,
        "zeros left after close: {} bytes",
        closed.len()
    );
    // The segment ends where its last frame does: walked by their
    // lengths, the frames reach its end exactly, and each is one of the
    // events written (a zero length, preallocated space, is none). Its
    // last byte is the last of an event's hash, zero one time in 256, so
    // it says nothing (this test failed on that once, session ak).
    let mut at = 0;
    let mut frames = 0;
    while at < closed.len() {
        let len = u32::from_le_bytes(closed[at..at + 4].try_into().unwrap()) as usize;
        assert!(len >= 82, "a frame of {len} bytes at {at}: zeros left");
        at += 8 + len;
        frames += 1;
    }
    assert_eq!(at, closed.len(), "the last frame runs past the end");
    assert_eq!(frames, written.len(), "frames in the closed segment");
    // A crash leaves the zeros in place.
    let mut crashed = closed.clone();
    crashed.resize(closed.len() + PREALLOC_BYTES as usize, 0);
    std::fs::write(&seg, &crashed).unwrap();
    rt.block_on(async {
        let log = open(dir).unwrap();
        assert_eq!(log.read_all(1, 10_000).await.unwrap(), written);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        append_n(log.as_ref(), 9, 500, 2).await;
        assert_eq!(positions(log.as_ref()).await.len(), written.len() + 2);
    });
    let after = std::fs::read(&seg).unwrap();
    assert!(after.len() > closed.len() && after.len() < closed.len() + 4096);
    assert_eq!(
        after[..closed.len()],
        closed[..],
        "acknowledged bytes changed"
    );
}

/// Events of [`large_append`]: above the size whose frames the writer
/// writes as it seals the rest.
const LARGE_PUPILS: u32 = 100;
const LARGE_EACH: u32 = 700;

/// A 70,000-event atomic append over 100 pupils; `refused`: its last
/// event is past the frame limit, so that it is refused when that event
/// is sealed, after the others were.
fn large_append(refused: bool) -> Vec<AppendRequest> {
    let mut requests: Vec<AppendRequest> = (1..=LARGE_PUPILS)
        .map(|p| AppendRequest {
            stream: pupil(p),
            expected: ExpectedVersion::Any,
            events: (0..LARGE_EACH)
                .map(|i| contact(p * LARGE_EACH + i))
                .collect(),
        })
        .collect();
    if refused {
        if let Some(e) = requests.last_mut().and_then(|r| r.events.last_mut()) {
            e.actor = "x".repeat(2 << 20);
        }
    }
    requests
}

/// The log at `dir`, reopened, holds `written` and verifies.
fn reopens_with(rt: &tokio::runtime::Runtime, dir: &Path, written: &[StoredEvent]) {
    rt.block_on(async {
        let log = open(dir).unwrap();
        assert_eq!(log.read_all(1, 200_000).await.unwrap(), written);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}

/// A large atomic append is written a piece at a time while the rest of
/// it is sealed. One refused part-way through its sealing (its last event
/// is past the frame limit), after pieces of it were written: the segment
/// is cut back to where the log ended, nothing of the append is read, the
/// next appends land right after, and the log verifies and reopens with
/// the same events. The same append without the oversized event lands
/// whole.
#[test]
fn a_large_append_refused_while_sealing_leaves_no_pieces_behind() {
    use casebook_engine::store::segment::PREALLOC_BYTES;
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let written = rt.block_on(async {
        let log = open(dir).unwrap();
        append_n(log.as_ref(), 0, 0, 3).await;
        let err = log.append_atomic(large_append(true)).await.unwrap_err();
        assert!(matches!(err, StoreError::Limit { .. }), "{err}");
        assert_eq!(positions(log.as_ref()).await, vec![1, 2, 3]);
        // The writer answers the refused append before it cuts its pieces
        // off; the next append is written after that.
        append_n(log.as_ref(), 0, 3, 2).await;
        assert_eq!(positions(log.as_ref()).await, vec![1, 2, 3, 4, 5]);
        let seg = segments(dir).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        assert!(
            len < PREALLOC_BYTES + 4096,
            "{len} bytes in the segment (pieces left behind)"
        );
        log.append_atomic(large_append(false)).await.unwrap();
        assert_eq!(
            log.head().await.unwrap().position,
            5 + u64::from(LARGE_PUPILS * LARGE_EACH)
        );
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        log.read_all(1, 100_000).await.unwrap()
    });
    reopens_with(&rt, dir, &written);
}

/// Small appends racing a large one, refused or not: the writer may group
/// them with it (the large one's frames written as it is sealed). Every
/// small append lands where it is told, a refused large append leaves
/// nothing (its pieces void, the group's other appends written whole),
/// and the log verifies and reopens with the same events.
#[test]
fn small_appends_beside_a_large_one_land_whether_it_is_refused_or_not() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let written = rt.block_on(async {
        let log = open(dir).unwrap();
        let mut expected = 0u64;
        for (round, refused) in [true, false, true].into_iter().enumerate() {
            // Small appends queued before the large one (so that the writer
            // may take it into a group after them) and after it.
            let mut small = Vec::new();
            let mut big = None;
            for w in 0..40u32 {
                if w == 20 {
                    tokio::task::yield_now().await;
                    let log = log.clone();
                    let requests = large_append(refused);
                    big = Some(tokio::spawn(
                        async move { log.append_atomic(requests).await },
                    ));
                }
                let log = log.clone();
                let n = 1_000_000 + round as u32 * 1_000 + w * 10;
                small.push(tokio::spawn(async move {
                    let events: Vec<NewEvent> = (n..n + 3).map(contact).collect();
                    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                    let a = log
                        .append(AppendRequest {
                            stream: pupil(500 + w),
                            expected: ExpectedVersion::Any,
                            events,
                        })
                        .await
                        .expect("a small append lands");
                    (a.first_position, ids)
                }));
            }
            for task in small {
                let (first, ids) = task.await.unwrap();
                let got = log.read_all(first, 3).await.unwrap();
                let got: Vec<_> = got.iter().map(|e| e.event_id).collect();
                assert_eq!(got, ids, "a small append is where it was told");
                expected += 3;
            }
            match big.expect("spawned").await.unwrap() {
                Ok(_) if !refused => expected += u64::from(LARGE_PUPILS * LARGE_EACH),
                Err(StoreError::Limit { .. }) if refused => {}
                other => panic!("round {round}: {:?}", other.map(|a| a.len())),
            }
            assert_eq!(log.head().await.unwrap().position, expected);
        }
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        log.read_all(1, 200_000).await.unwrap()
    });
    reopens_with(&rt, dir, &written);
}

/// `copy` into a segment log that a crashed writer left with preallocated
/// zeros: the zeros are cut (not refused as an unfinished group, not left
/// inside the log), also when the copy rolls to a new segment.
#[test]
fn copy_into_a_log_with_preallocated_zeros() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (tmp.path().join("src"), tmp.path().join("dst"));
    let events = rt.block_on(async {
        let log = open(&src_dir).unwrap();
        for i in 0..30u32 {
            append_n(log.as_ref(), i % 5, i * 3, 1 + i % 2).await;
        }
        log.read_all(1, 10_000).await.unwrap()
    });
    let half = events.len() / 2;
    {
        let store = SegmentStore::open_with(
            &dst_dir,
            true,
            SegmentOptions {
                segment_bytes: 2_000,
                ..SegmentOptions::default()
            },
        )
        .unwrap();
        store.copy_in(SCHOOL, &events[..half]).unwrap();
    }
    let last = segments(&dst_dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.resize(bytes.len() + 100_000, 0);
    std::fs::write(&last, &bytes).unwrap();
    {
        let store = SegmentStore::open_with(
            &dst_dir,
            true,
            SegmentOptions {
                segment_bytes: 2_000,
                ..SegmentOptions::default()
            },
        )
        .unwrap();
        store.copy_in(SCHOOL, &events[half..]).unwrap();
    }
    assert!(segments(&dst_dir).len() > 1);
    rt.block_on(async {
        let log = open_small(&dst_dir, 2_000).unwrap();
        assert_eq!(log.read_all(1, 10_000).await.unwrap(), events);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}

// ---- the index snapshot -------------------------------------------------------

/// Everything the index answers, read through the log: every event by
/// `read_all`, each stream by `read_stream` and `stream_version`, each id
/// by `find_event`, and the head.
async fn index_answers(
    log: &SegmentLog,
    streams: u32,
) -> (
    Vec<StoredEvent>,
    Vec<(u64, Vec<StoredEvent>)>,
    Vec<Option<u64>>,
    u64,
) {
    let all = log.read_all(1, 100_000).await.unwrap();
    let mut per_stream = Vec::new();
    for s in 0..streams {
        let stream = pupil(s);
        per_stream.push((
            log.stream_version(stream).await.unwrap(),
            log.read_stream(stream, 1, 100_000).await.unwrap(),
        ));
    }
    let mut found = Vec::new();
    for e in &all {
        found.push(
            log.find_event(e.event_id)
                .await
                .unwrap()
                .map(|f| f.position),
        );
    }
    let head = log.head().await.unwrap().position;
    (all, per_stream, found, head)
}

fn snapshot_path(dir: &Path) -> PathBuf {
    log_dir(dir).join("index")
}

/// A log closed with enough appends writes its index snapshot; the next
/// open reads the index from it (and scans nothing), and answers every
/// read, every id and every version exactly as an index rebuilt from the
/// segments does; an id it holds is still refused as a duplicate, and the
/// chain verifies.
#[test]
fn a_snapshot_opens_the_same_index_as_a_full_scan() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    rt.block_on(async {
        let log = open_with(dir, 1_500, 1).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        for i in 0..40u32 {
            append_n(log.as_ref(), i % 7, i * 10, 1 + i % 4).await;
        }
    });
    assert!(segments(dir).len() >= 3, "the log did not roll");
    assert!(snapshot_path(dir).exists(), "no snapshot written at close");
    let from_snapshot = rt.block_on(async {
        let log = open_with(dir, 1_500, 1).unwrap();
        let head = log.head().await.unwrap().position;
        assert_eq!(log.opened_from_snapshot(), Some(head));
        let answers = index_answers(&log, 8).await;
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        // An id the snapshot holds is a duplicate.
        let dup = log
            .append(AppendRequest {
                stream: pupil(9),
                expected: ExpectedVersion::Any,
                events: vec![{
                    let mut e = contact(7_777);
                    e.event_id = answers.0[5].event_id;
                    e
                }],
            })
            .await;
        assert!(
            matches!(dup, Err(StoreError::DuplicateEventId { .. })),
            "{dup:?}"
        );
        answers
    });
    // Snapshots switched off: a full scan, the same answers, and the
    // snapshot is not rewritten at close (nothing was appended).
    let before = std::fs::read(snapshot_path(dir)).unwrap();
    let scanned = rt.block_on(async {
        let options = SegmentOptions {
            segment_bytes: 1_500,
            snapshot_min_events: 1,
            read_snapshot: false,
            event_ids_at_open: true,
            ..SegmentOptions::default()
        };
        let log = SegmentStore::open_with(dir, true, options)
            .unwrap()
            .log(SCHOOL)
            .unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        index_answers(&log, 8).await
    });
    assert_eq!(from_snapshot, scanned);
    assert_eq!(std::fs::read(snapshot_path(dir)).unwrap(), before);
    // The ids left in the snapshot until first needed: the same answers
    // (the look-ups by id read them), and the snapshot is not rewritten.
    let later = rt.block_on(async {
        let options = SegmentOptions {
            segment_bytes: 1_500,
            snapshot_min_events: 1,
            event_ids_at_open: false,
            ..SegmentOptions::default()
        };
        let log = SegmentStore::open_with(dir, true, options)
            .unwrap()
            .log(SCHOOL)
            .unwrap();
        assert!(log.opened_from_snapshot().is_some());
        assert!(!log.event_ids_held());
        index_answers(&log, 8).await
    });
    assert_eq!(from_snapshot, later);
    assert_eq!(std::fs::read(snapshot_path(dir)).unwrap(), before);
    // Keeping only where each group starts, from the snapshot's group
    // table across its segments (format 5): the same answers, first in
    // order and by stream (walking groups), then by id (every location
    // read from the snapshot's lengths), and no note.
    let sparse = rt.block_on(async {
        let options = SegmentOptions {
            segment_bytes: 1_500,
            snapshot_min_events: 1,
            event_ids_at_open: false,
            locations_at_open: false,
            ..SegmentOptions::default()
        };
        let log = open_options(dir, options).unwrap();
        assert!(log.opened_from_snapshot().is_some());
        let answers = index_answers(&log, 8).await;
        assert_eq!(log.take_snapshot_rejection(), None);
        answers
    });
    assert_eq!(from_snapshot, sparse);
    assert_eq!(std::fs::read(snapshot_path(dir)).unwrap(), before);
    std::fs::remove_file(snapshot_path(dir)).unwrap();
    let rebuilt = rt.block_on(async {
        let log = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        index_answers(&log, 8).await
    });
    assert_eq!(from_snapshot, rebuilt);
    assert!(from_snapshot
        .1
        .iter()
        .all(|(v, evs)| *v == evs.len() as u64));
}

/// A snapshot behind the log (appends after it, below the threshold, and
/// a segment roll after it) is used, and the frames after it are scanned:
/// the same answers as a full rebuild; a torn group after it is cut as
/// without a snapshot.
#[test]
fn a_snapshot_behind_the_log_is_used_and_the_rest_scanned() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let at_snapshot = rt.block_on(async {
        let log = open_with(dir, 1_500, 1).unwrap();
        for i in 0..20u32 {
            append_n(log.as_ref(), i % 5, i * 10, 1 + i % 3).await;
        }
        log.head().await.unwrap().position
    });
    let segments_then = segments(dir).len();
    rt.block_on(async {
        let log = open_with(dir, 1_500, 1_000_000).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(at_snapshot));
        for i in 20..45u32 {
            append_n(log.as_ref(), i % 6, i * 10, 1 + i % 3).await;
        }
    });
    assert!(
        segments(dir).len() > segments_then,
        "no roll after the snapshot"
    );
    // A torn group at the end: a frame's first bytes.
    let last = segments(dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let closed_len = bytes.len();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&last, &bytes).unwrap();
    let used = rt.block_on(async {
        let log = open_with(dir, 1_500, 1_000_000).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(at_snapshot));
        assert!(log.head().await.unwrap().position > at_snapshot);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        index_answers(&log, 8).await
    });
    assert_eq!(std::fs::metadata(&last).unwrap().len() as usize, closed_len);
    std::fs::remove_file(snapshot_path(dir)).unwrap();
    let rebuilt = rt.block_on(async {
        let log = open_with(dir, 1_500, 1_000_000).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        index_answers(&log, 8).await
    });
    assert_eq!(used, rebuilt);
}

/// A snapshot that is damaged, cut short, of another log, or that covers
/// more than the segments hold is not used: the index is rebuilt from the
/// segments with the same answers; and events lost after a snapshot are
/// still refused (by the watermark), not opened from the snapshot.
#[test]
fn a_damaged_or_foreign_snapshot_is_ignored_and_loss_still_refused() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let other = tmp.path().join("other");
    for (d, salt) in [(dir, 0u32), (other.as_path(), 1)] {
        rt.block_on(async {
            let log = open_with(d, 1_500, 1).unwrap();
            for i in 0..20u32 {
                // The same frame sizes in both logs, other events.
                append_n(log.as_ref(), i % 5, 10 + i * 10 + salt, 1 + i % 3).await;
            }
        });
    }
    let good = std::fs::read(snapshot_path(dir)).unwrap();
    let expected = rt.block_on(async {
        let log = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS).unwrap();
        assert!(log.opened_from_snapshot().is_some());
        assert_eq!(log.take_snapshot_rejection(), None);
        index_answers(&log, 6).await
    });
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let foreign = std::fs::read(snapshot_path(&other)).unwrap();
    assert_eq!(foreign.len(), good.len(), "the two logs differ in shape");
    for (what, bytes) in [
        ("a flipped byte", flipped),
        ("cut short", good[..good.len() - 10].to_vec()),
        ("another log's", foreign),
        ("empty", Vec::new()),
    ] {
        std::fs::write(snapshot_path(dir), &bytes).unwrap();
        rt.block_on(async {
            let log = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS).unwrap();
            assert_eq!(log.opened_from_snapshot(), None, "{what}");
            let why = log.take_snapshot_rejection();
            assert!(why.is_some(), "{what}: no reason given");
            assert_eq!(log.take_snapshot_rejection(), None, "{what}: given twice");
            assert_eq!(index_answers(&log, 6).await, expected, "{what}");
        });
    }
    // A snapshot of the format before id fingerprints (version 1, whose
    // pairs held the ids): ignored, with the reason, and the index rebuilt.
    let mut v1 = good.clone();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(snapshot_path(dir), &v1).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(
            why.contains("snapshot format 1, this build reads 5"),
            "{why}"
        );
        assert_eq!(index_answers(&log, 6).await, expected);
    });
    // Acknowledged events lost from the last segment: the snapshot no
    // longer matches, and the full scan's watermark check refuses.
    std::fs::write(snapshot_path(dir), &good).unwrap();
    let last = segments(dir).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len / 2).unwrap();
    let err = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS)
        .err()
        .expect("opened");
    assert!(err.to_string().contains("lost"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any bytes as the snapshot file: the log opens (never a panic) with
    /// the index its segments give, whether it holds every location or
    /// only where each group starts (`locations_at_open`); the latter opens
    /// from a snapshot whose frame lengths alone changed, which it does not
    /// read, and walks the frames when it needs every location.
    #[test]
    fn random_snapshot_bytes_never_panic_and_change_nothing(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        mode in 0u8..4,
        sparse in any::<bool>(),
    ) {
        let rt = rt();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let expected = rt.block_on(async {
            let log = open_with(dir, 1_500, 1).unwrap();
            for i in 0..12u32 {
                append_n(log.as_ref(), i % 4, i * 10, 1 + i % 3).await;
            }
            index_answers(&log, 5).await
        });
        let good = std::fs::read(snapshot_path(dir)).unwrap();
        let bytes = match mode {
            0 => {
                let mut b = good.clone();
                for (at, x) in &flips {
                    let i = at.index(b.len());
                    b[i] ^= x;
                }
                b
            }
            1 => good[..cut.index(good.len())].to_vec(),
            // Flips in the frame lengths and their checksum only.
            3 => {
                let (lens_at, lists_at, ..) = snapshot_sections(&good);
                let mut b = good.clone();
                for (at, x) in &flips {
                    b[lens_at + at.index(lists_at - lens_at)] ^= x;
                }
                b
            }
            _ => {
                let mut b = good[..cut.index(good.len())].to_vec();
                b.extend_from_slice(&garbage);
                b
            }
        };
        let unchanged = bytes == good;
        // Only the frame lengths or their checksum changed: an open that
        // keeps only where each group starts does not read them (format
        // 5); `verify`, which needs every location, reads them, finds
        // them changed, says so, and walks the frames instead.
        let (lens_at, lists_at, ..) = snapshot_sections(&good);
        let only_in = |range: std::ops::Range<usize>| {
            !unchanged
                && bytes.len() == good.len()
                && (0..good.len()).all(|i| bytes[i] == good[i] || range.contains(&i))
        };
        let lengths_only = only_in(lens_at..lists_at);
        // Only the directory of the ids' blocks changed: no open reads it
        // (a look-up in place does, refuses it, and reads the ids whole).
        let id_blocks_only = only_in(ids_end(&good)..good.len());
        std::fs::write(snapshot_path(dir), &bytes).unwrap();
        let (answers, used, note, verified) = rt.block_on(async {
            let options = SegmentOptions {
                segment_bytes: 1_500,
                snapshot_min_events: SNAPSHOT_MIN_EVENTS,
                locations_at_open: !sparse,
                ..SegmentOptions::default()
            };
            let log = open_options(dir, options).unwrap();
            let used = log.opened_from_snapshot();
            let answers = index_answers(&log, 5).await;
            // `verify` needs every location: a sparse index reads the
            // lengths then.
            let verified = log.verify(&|_| {}).await.map(|r| r.ok).ok();
            (answers, used, log.take_snapshot_rejection(), verified)
        });
        prop_assert_eq!(answers, expected);
        prop_assert_eq!(verified, Some(true));
        prop_assert_eq!(
            used.is_some(),
            unchanged || (sparse && lengths_only) || id_blocks_only
        );
        if sparse && lengths_only {
            prop_assert!(note.is_some_and(|n| n.contains("frame lengths")));
        }
    }
}

/// Damage to a frame the snapshot covers: the open (which reads only the
/// snapshot's head frame and 64 frames spread over the log) succeeds, but
/// reading the frame and `verify` fail naming the segment file, and a
/// full-scan open refuses as ever.
#[test]
fn damage_under_a_snapshot_is_found_by_reads_and_verify() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1).unwrap();
        for i in 0..100u32 {
            append_n(log.as_ref(), i % 5, i * 10, 1 + i % 3).await;
        }
        assert!(log.head().await.unwrap().position > 129);
    });
    // A byte inside the frame of position 2 (the open's spot checks read
    // positions 1, 1 + (head - 1) / 64, ... and the head).
    let first = segments(dir)[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let second = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    bytes[second + 60] ^= 0x20;
    std::fs::write(&first, &bytes).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert!(log.opened_from_snapshot().is_some());
        let read = log.read_all(1, 10_000).await.expect_err("read the damage");
        assert!(
            corrupt_location(read).contains(&format!("00000000000000000001.seg at byte {second}")),
            "the read does not name the frame"
        );
        match log.verify(&|_| {}).await {
            Ok(report) => assert!(!report.ok, "verify passed over the damage"),
            Err(e) => assert!(e.to_string().contains(".seg"), "{e}"),
        }
    });
    let options = SegmentOptions {
        segment_bytes: 1 << 30,
        read_snapshot: false,
        ..SegmentOptions::default()
    };
    let full = SegmentStore::open_with(dir, true, options).and_then(|s| s.log(SCHOOL));
    assert!(
        corrupt_location(full.err().expect("opened")).contains("00000000000000000001.seg"),
        "the full scan did not name the segment"
    );
}

/// Sorts an index snapshot's `(fingerprint, position)` pairs again (the
/// format keeps them sorted by fingerprint, then position; they end 32
/// bytes before the directory of their blocks) and puts a checksum over
/// the result.
fn resort_ids_and_rehash(bytes: &mut [u8], head: usize) {
    let pairs = ids_end(bytes) - 32 - 12 * head;
    let mut sorted: Vec<(u64, u32)> = bytes[pairs..pairs + 12 * head]
        .chunks_exact(12)
        .map(|b| {
            let fp = u64::from_le_bytes(b[..8].try_into().unwrap());
            (fp, u32::from_le_bytes(b[8..].try_into().unwrap()))
        })
        .collect();
    sorted.sort_unstable();
    for (b, (fp, p)) in bytes[pairs..pairs + 12 * head]
        .chunks_exact_mut(12)
        .zip(sorted)
    {
        b[..8].copy_from_slice(&fp.to_le_bytes());
        b[8..].copy_from_slice(&p.to_le_bytes());
    }
    rehash(bytes);
}

/// Where the ids' section of an index snapshot (format 6,
/// docs/storage.md) ends, its checksum included: the directory of its
/// blocks of 256 pairs follows (their count, 12 bytes a block, and its
/// checksum) to the file's end.
fn ids_end(bytes: &[u8]) -> usize {
    let head = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    bytes.len() - (8 + 12 * head.div_ceil(256) + 32)
}

/// Where the sections of an index snapshot (format 6, docs/storage.md)
/// start: the frame lengths, the stream lists, the directory, the
/// directory's checksum and the ids' section.
fn snapshot_sections(bytes: &[u8]) -> (usize, usize, usize, usize, usize) {
    let head = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let segments = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as usize;
    let lens_at = 64 + 16 * segments;
    let lists_at = lens_at + 4 * head + 32;
    let dir_at = lists_at + 4 * head;
    let ids_at = ids_end(bytes) - 32 - 12 * head - 8;
    (lens_at, lists_at, dir_at, ids_at - 32, ids_at)
}

/// Recomputes an index snapshot's checksums after an edit (what a
/// hand-made snapshot would do): the frame lengths' (right after them),
/// the directory's (over the header, the segments and the directory,
/// before the ids' count), the ids' own (over their count and pairs), and
/// the directory of the ids' blocks (each block's first fingerprint and
/// CRC-32, and its checksum, the last 32 bytes).
fn rehash(bytes: &mut [u8]) {
    let (lens_at, lists_at, dir_at, sum_at, ids_at) = snapshot_sections(bytes);
    let lens = blake3::hash(&bytes[lens_at..lists_at - 32]);
    bytes[lists_at - 32..lists_at].copy_from_slice(lens.as_bytes());
    let mut directory = blake3::Hasher::new();
    directory.update(&bytes[..lens_at]);
    directory.update(&bytes[dir_at..sum_at]);
    let directory = directory.finalize();
    bytes[sum_at..ids_at].copy_from_slice(directory.as_bytes());
    let end = ids_end(bytes) - 32;
    let ids = blake3::hash(&bytes[ids_at..end]);
    bytes[end..end + 32].copy_from_slice(ids.as_bytes());
    let mut blocks = Vec::new();
    for block in bytes[ids_at + 8..end].chunks(12 * 256) {
        blocks.extend_from_slice(&block[..8]);
        blocks.extend_from_slice(&crc32fast::hash(block).to_le_bytes());
    }
    let at = end + 32 + 8;
    bytes[at..at + blocks.len()].copy_from_slice(&blocks);
    let listed = blake3::hash(&bytes[end + 32..at + blocks.len()]);
    bytes[at + blocks.len()..].copy_from_slice(listed.as_bytes());
}

/// The snapshot's sorted ids with positions swapped in pairs (each pair
/// keeps its fingerprint, so the section stays sorted, and the file is
/// rehashed), and, alone in the second block, two fingerprints changed so
/// that `fp ^ p·K` stays the same for the pair (what a sum keyed only
/// after folding the pair into one word could not tell from the truth):
/// none is a spot the open
/// checks, so the log opens from it; `verify`, which sums the ids the
/// file lists and the frames hold a block of 65,536 positions at a time,
/// reports exactly those frames, in the first block and the second; a
/// sound snapshot passes.
#[test]
fn verify_reports_ids_the_snapshot_lists_at_other_positions() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1).unwrap();
        for i in 0..70u32 {
            append_n(log.as_ref(), i % 4, 1_000 + 1_000 * i, 1_000).await;
        }
    });
    let sound = rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(70_000));
        log.verify(&|_| {}).await.unwrap()
    });
    assert!(sound.ok, "{:?}", sound.problems);
    let mut bytes = std::fs::read(snapshot_path(dir)).unwrap();
    let head = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let pairs = ids_end(&bytes) - 32 - 12 * head;
    let at = |i: usize| pairs + 12 * i;
    let position =
        |b: &[u8], i: usize| u32::from_le_bytes(b[at(i) + 8..at(i) + 12].try_into().unwrap());
    let mut index_of = vec![0usize; head + 1];
    for i in 0..head {
        index_of[position(&bytes, i) as usize] = i;
    }
    for (a, b) in [(100u32, 200u32), (300, 400)] {
        let (i, j) = (index_of[a as usize], index_of[b as usize]);
        bytes[at(i) + 8..at(i) + 12].copy_from_slice(&b.to_le_bytes());
        bytes[at(j) + 8..at(j) + 12].copy_from_slice(&a.to_le_bytes());
    }
    let fp_at = |b: &[u8], i: usize| u64::from_le_bytes(b[at(i)..at(i) + 8].try_into().unwrap());
    // In the second block, alone.
    let (i, j) = (index_of[66_000], index_of[67_000]);
    let (fa, fb) = (fp_at(&bytes, i), fp_at(&bytes, j));
    let k = |p: u64| p.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (fa2, fb2) = (fb ^ k(67_000) ^ k(66_000), fa ^ k(66_000) ^ k(67_000));
    bytes[at(i)..at(i) + 8].copy_from_slice(&fa2.to_le_bytes());
    bytes[at(j)..at(j) + 8].copy_from_slice(&fb2.to_le_bytes());
    resort_ids_and_rehash(&mut bytes, head);
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(70_000));
        let report = log.verify(&|_| {}).await.unwrap();
        let at: Vec<u64> = report
            .problems
            .iter()
            .filter(|p| p.what.contains("event id"))
            .map(|p| p.position)
            .collect();
        assert_eq!(
            at,
            vec![100, 200, 300, 400, 66_000, 67_000],
            "{:?}",
            report.problems
        );
        assert_eq!(report.problems.len(), 6, "{:?}", report.problems);
    });
}

/// Offsets of an index snapshot's stream entries in its directory (each:
/// the offset of its 16-byte id and its count), from the format in
/// docs/storage.md.
fn snapshot_streams(bytes: &[u8]) -> Vec<(usize, u32)> {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let (_, _, dir_at, _, _) = snapshot_sections(bytes);
    let runs = u32_at(dir_at) as usize;
    let mut at = dir_at + 4 + 28 * runs;
    at += 8 + 4 * u64_at(at) as usize;
    let streams = u64_at(at);
    at += 8;
    let mut out = Vec::new();
    for _ in 0..streams {
        out.push((at, u32_at(at + 16)));
        at += 20;
    }
    out
}

/// A snapshot edited by hand, its checksum recomputed: two pupils' stream
/// lists swapped. The open's checks or the reads' catch it: no read ever
/// hands one pupil's events over as another's. (Here the open's spot
/// checks catch it; the reads' own checks are tested in
/// `store::segment::index_tests::reads_refuse_frames_the_index_misfiled`.)
#[test]
fn a_hand_made_snapshot_never_mixes_pupils_up() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 30 pupils with 8 events each, and two more with 5 each (the pair
    // to swap), so that the open's spot checks may miss them.
    let expected = rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1).unwrap();
        for round in 0..8u32 {
            for p in 0..32u32 {
                if p < 30 || round < 5 {
                    append_n(log.as_ref(), p, round * 100 + p, 1).await;
                }
            }
        }
        let mut per = Vec::new();
        for p in 0..32u32 {
            per.push(log.read_stream(pupil(p), 1, 100).await.unwrap());
        }
        per
    });
    let mut bytes = std::fs::read(snapshot_path(dir)).unwrap();
    let fives: Vec<usize> = snapshot_streams(&bytes)
        .into_iter()
        .filter(|&(_, count)| count == 5)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(fives.len(), 2);
    let (x, y) = (fives[0], fives[1]);
    let (idx, idy) = (bytes[x..x + 16].to_vec(), bytes[y..y + 16].to_vec());
    bytes[x..x + 16].copy_from_slice(&idy);
    bytes[y..y + 16].copy_from_slice(&idx);
    rehash(&mut bytes);
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        for (p, want) in expected.iter().enumerate() {
            match log.read_stream(pupil(p as u32), 1, 100).await {
                Ok(got) => assert_eq!(&got, want, "pupil {p}"),
                Err(e) => assert!(
                    log.opened_from_snapshot().is_some() && matches!(e, StoreError::Corrupt { .. }),
                    "pupil {p}: {e}"
                ),
            }
        }
    });
}

/// 100 appends of 20 events to four pupils in turn (2,000 events, ids
/// from 1,000), in one segment, the log closed with its index snapshot.
fn two_thousand_events_with_a_snapshot(rt: &tokio::runtime::Runtime, dir: &Path) {
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1).unwrap();
        for i in 0..100u32 {
            append_n(log.as_ref(), i % 4, 1_000 + 20 * i, 20).await;
        }
    });
}

/// An open that keeps only where each group of positions starts reads
/// the snapshot's directory and its stream lists, not its frame lengths
/// (format 5). A list's block changed where the open's spot checks do not
/// read: refused by its CRC-32, the index rebuilt, the same answers. A
/// group table edited by hand, its checksums recomputed, one group's start
/// moved: an open that holds every location refuses it against the
/// lengths; one that keeps only the groups' starts cannot tell, and then
/// every read answers what the log holds or fails as corrupt, never with
/// other events.
#[test]
fn a_sparse_open_checks_the_lists_and_never_reads_a_moved_group() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_thousand_events_with_a_snapshot(&rt, dir);
    let sparse = SegmentOptions {
        segment_bytes: 1 << 30,
        snapshot_min_events: SNAPSHOT_MIN_EVENTS,
        event_ids_at_open: false,
        locations_at_open: false,
        ..SegmentOptions::default()
    };
    let expected = rt.block_on(async {
        let log = open_options(dir, sparse).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(2_000));
        index_answers(&log, 4).await
    });
    let good = std::fs::read(snapshot_path(dir)).unwrap();
    let (_, lists_at, dir_at, _, _) = snapshot_sections(&good);
    // The tenth position of the first list (each list is 500 positions,
    // one block of its own).
    let mut bytes = good.clone();
    bytes[lists_at + 4 * 9] ^= 0x01;
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        let log = open_options(dir, sparse).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(why.contains("CRC-32"), "{why}");
        assert_eq!(index_answers(&log, 4).await, expected);
    });
    // The group table: one run (4 + 28 bytes), then the groups' count and
    // their starts; the sixth group's start moved 40 bytes on.
    let mut bytes = good.clone();
    let groups = dir_at + 4 + 28;
    assert_eq!(
        u64::from_le_bytes(bytes[groups..groups + 8].try_into().unwrap()),
        2_000u64.div_ceil(64)
    );
    let sixth = groups + 8 + 4 * 5;
    let start = u32::from_le_bytes(bytes[sixth..sixth + 4].try_into().unwrap());
    bytes[sixth..sixth + 4].copy_from_slice(&(start + 40).to_le_bytes());
    rehash(&mut bytes);
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(why.contains("group table"), "{why}");
        assert_eq!(index_answers(&log, 4).await, expected);
    });
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        // (Here the open's spot checks read a frame of the sixth group,
        // find it is not where the table says, and rebuild the index.)
        let log = open_options(dir, sparse).unwrap();
        if log.opened_from_snapshot().is_none() {
            let why = log.take_snapshot_rejection().expect("no reason given");
            assert!(why.contains("where the index places one"), "{why}");
        }
        let (all, per_stream, _, _) = &expected;
        match log.read_all(1, 100_000).await {
            Ok(got) => assert_eq!(&got, all),
            Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
        }
        for (s, (_, want)) in per_stream.iter().enumerate() {
            match log.read_stream(pupil(s as u32), 1, 100_000).await {
                Ok(got) => assert_eq!(&got, want, "pupil {s}"),
                Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
        }
        for e in all {
            match log.find_event(e.event_id).await {
                Ok(found) => assert_eq!(found.map(|f| f.position), Some(e.position)),
                Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
        }
    });
}

/// A snapshot edited by hand, its checksum recomputed, that lists one
/// position under another's id fingerprint (ids are kept as 64-bit
/// fingerprints, docs/storage.md), at positions the open's spot checks do
/// not read: the open reads both frames of the pair, finds the one whose
/// id the snapshot does not hold there, ignores the snapshot with the
/// reason, and indexes the segments; every id is then found where it is,
/// and an append repeating one is refused.
#[test]
fn a_snapshot_listing_one_fingerprint_twice_is_checked_against_the_frames() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_thousand_events_with_a_snapshot(&rt, dir);
    let mut bytes = std::fs::read(snapshot_path(dir)).unwrap();
    let head = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    assert_eq!(head, 2_000);
    // The (fingerprint u64, position u32) pairs end 32 bytes before the
    // directory of their blocks. Positions 7 and 23: the spot checks read
    // 1, 32, 63, … of 2,000.
    let pairs = ids_end(&bytes) - 32 - 12 * head;
    let at = |i: usize| pairs + 12 * i;
    let position =
        |b: &[u8], i: usize| u32::from_le_bytes(b[at(i) + 8..at(i) + 12].try_into().unwrap());
    let pair_of = |p: u32| (0..head).find(|&i| position(&bytes, i) == p).unwrap();
    let (i, j) = (pair_of(7), pair_of(23));
    let fp = bytes[at(i)..at(i) + 8].to_vec();
    bytes[at(j)..at(j) + 8].copy_from_slice(&fp);
    resort_ids_and_rehash(&mut bytes, head);
    std::fs::write(snapshot_path(dir), &bytes).unwrap();
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(
            why.contains("position 23 is not the event it lists there"),
            "{why}"
        );
        for e in log.read_all(1, 10_000).await.unwrap() {
            let found = log.find_event(e.event_id).await.unwrap();
            assert_eq!(found.map(|f| f.position), Some(e.position));
        }
        let seventh = log.read_all(7, 1).await.unwrap().remove(0);
        let again = AppendRequest {
            stream: seventh.stream,
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_id: seventh.event_id,
                occurred_at: seventh.occurred_at,
                actor: seventh.actor.clone(),
                correlation_id: None,
                causation_id: None,
                event_type: seventh.event_type.clone().into(),
                schema: seventh.schema,
                payload: seventh.payload.clone(),
            }],
        };
        match log.append_atomic(vec![again]).await {
            Err(StoreError::DuplicateEventId { position: 7, .. }) => {}
            other => panic!("expected DuplicateEventId at 7, got {other:?}"),
        }
    });
    // An open that leaves the ids in the file until first needed uses the
    // snapshot; the first look-up by id reads them, finds the pair, and
    // indexes the ids from the segments, with the reason; the close then
    // replaces the snapshot (nothing was appended), and the next open
    // reads it without a note.
    let lazy = SegmentOptions {
        segment_bytes: 1 << 30,
        snapshot_min_events: SNAPSHOT_MIN_EVENTS,
        event_ids_at_open: false,
        ..SegmentOptions::default()
    };
    rt.block_on(async {
        let log = SegmentStore::open_with(dir, false, lazy)
            .unwrap()
            .log(SCHOOL)
            .unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(2_000));
        assert_eq!(log.take_snapshot_rejection(), None);
        assert!(!log.event_ids_held());
        let all = log.read_all(1, 10_000).await.unwrap();
        for e in &all {
            let found = log.find_event(e.event_id).await.unwrap();
            assert_eq!(found.map(|f| f.position), Some(e.position));
        }
        let why = log.take_snapshot_rejection().expect("no reason given");
        assert!(
            why.contains("position 23 is not the event it lists there")
                && why.contains("indexed from the segments"),
            "{why}"
        );
    });
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(2_000));
        assert_eq!(log.take_snapshot_rejection(), None);
    });
}

/// A segment the snapshot covers that is no longer what it says (grown,
/// or renamed to another first position): the snapshot is not used, and
/// the open refuses exactly as a full scan does.
#[test]
fn a_covered_segment_that_changed_is_refused_as_without_a_snapshot() {
    let rt = rt();
    for change in ["grown", "renamed"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        rt.block_on(async {
            let log = open_with(dir, 1_500, 1).unwrap();
            for i in 0..30u32 {
                append_n(log.as_ref(), i % 5, i * 10, 1 + i % 3).await;
            }
        });
        let segs = segments(dir);
        assert!(segs.len() >= 3, "{change}: no roll");
        match change {
            "grown" => {
                let mut bytes = std::fs::read(&segs[0]).unwrap();
                bytes.extend_from_slice(&[9; 40]);
                std::fs::write(&segs[0], &bytes).unwrap();
            }
            _ => {
                let name = segs[1].file_name().unwrap().to_str().unwrap();
                let first: u64 = name.trim_end_matches(".seg").parse().unwrap();
                std::fs::rename(
                    &segs[1],
                    log_dir(dir).join(format!("{:020}.seg", first + 1)),
                )
                .unwrap();
            }
        }
        let err = open_with(dir, 1_500, SNAPSHOT_MIN_EVENTS)
            .err()
            .unwrap_or_else(|| panic!("{change}: opened"));
        assert!(matches!(err, StoreError::Corrupt { .. }), "{change}: {err}");
    }
}

/// Appends after a snapshot into the segment it ends in (no roll), then a
/// torn group and preallocated zeros there: the open uses the snapshot,
/// scans from where it ends, cuts the torn bytes, and answers as a full
/// rebuild does.
#[test]
fn a_torn_tail_in_the_snapshots_own_segment_is_cut() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let at_snapshot = rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1).unwrap();
        for i in 0..15u32 {
            append_n(log.as_ref(), i % 4, i * 10, 1 + i % 3).await;
        }
        log.head().await.unwrap().position
    });
    rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1_000_000).unwrap();
        for i in 15..25u32 {
            append_n(log.as_ref(), i % 4, i * 10, 1 + i % 3).await;
        }
    });
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "the log rolled");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let closed = bytes.len();
    bytes.extend_from_slice(&[150, 0, 0, 0, 7, 7, 7, 7, 1]);
    bytes.resize(bytes.len() + 4096, 0);
    std::fs::write(&segs[0], &bytes).unwrap();
    let used = rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1_000_000).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(at_snapshot));
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        index_answers(&log, 5).await
    });
    assert_eq!(std::fs::metadata(&segs[0]).unwrap().len() as usize, closed);
    std::fs::remove_file(snapshot_path(dir)).unwrap();
    let rebuilt = rt.block_on(async {
        let log = open_with(dir, 1 << 30, 1_000_000).unwrap();
        index_answers(&log, 5).await
    });
    assert_eq!(used, rebuilt);
    assert!(used.3 > at_snapshot);
}

/// `casebook copy` into a log that has an index snapshot (a copy resumed
/// after the log was opened and closed): the copy starts from the
/// snapshot's index and appends after it, and the log opens from the
/// snapshot with every copied event.
#[test]
fn copy_into_a_log_with_a_snapshot() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (tmp.path().join("src"), tmp.path().join("dst"));
    let events = rt.block_on(async {
        let log = open(&src_dir).unwrap();
        for i in 0..40u32 {
            append_n(log.as_ref(), i % 5, i * 3, 1 + i % 2).await;
        }
        log.read_all(1, 10_000).await.unwrap()
    });
    let half = events.len() / 2;
    let options = SegmentOptions {
        segment_bytes: 2_000,
        snapshot_min_events: 1,
        ..SegmentOptions::default()
    };
    SegmentStore::open_with(&dst_dir, true, options)
        .unwrap()
        .copy_in(SCHOOL, &events[..half])
        .unwrap();
    // Opened and closed: the snapshot is written.
    rt.block_on(async {
        let log = open_with(&dst_dir, 2_000, 1).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        assert_eq!(log.head().await.unwrap().position, half as u64);
    });
    assert!(snapshot_path(&dst_dir).exists());
    SegmentStore::open_with(&dst_dir, true, options)
        .unwrap()
        .copy_in(SCHOOL, &events[half..])
        .unwrap();
    rt.block_on(async {
        let log = open_with(&dst_dir, 2_000, SNAPSHOT_MIN_EVENTS).unwrap();
        assert_eq!(log.opened_from_snapshot(), Some(half as u64));
        assert_eq!(log.read_all(1, 10_000).await.unwrap(), events);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}

/// Every event of the log by position, and of each of `streams` streams
/// by version, page by page (a read returns at most a page), and the
/// position each event's id is found at.
async fn every_answer(
    log: &SegmentLog,
    streams: u32,
) -> (Vec<StoredEvent>, Vec<Vec<StoredEvent>>, Vec<Option<u64>>) {
    let mut all: Vec<StoredEvent> = Vec::new();
    loop {
        let page = log.read_all(all.len() as u64 + 1, 10_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let mut per_stream = Vec::new();
    for s in 0..streams {
        let mut events: Vec<StoredEvent> = Vec::new();
        loop {
            let page = log
                .read_stream(pupil(s), events.len() as u64 + 1, 10_000)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        per_stream.push(events);
    }
    let ids: Vec<uuid::Uuid> = all.iter().map(|e| e.event_id).collect();
    let found = log.find_events(&ids).await.unwrap();
    let found = ids
        .iter()
        .map(|id| found.get(id).map(|e| e.position))
        .collect();
    (all, per_stream, found)
}

/// One atomic append of more frames than the writer holds at once (a piece,
/// 8 MiB) is written piece by piece and fdatasync'd once: every event
/// reads back where it was written, by position, stream and id, the chain
/// verifies, the segment holds the group's frames, and the index rebuilt
/// from the segment by a full scan answers as the one written.
#[test]
fn a_group_larger_than_a_piece_reads_back_from_every_piece() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let streams = 4u32;
    let per_stream = 20_000u32;
    let written = rt.block_on(async {
        let log = open(dir).unwrap();
        append_n(log.as_ref(), 9, 0, 3).await;
        let requests = (0..streams)
            .map(|s| AppendRequest {
                stream: pupil(s),
                expected: ExpectedVersion::NoStream,
                events: (s * per_stream..(s + 1) * per_stream)
                    .map(contact)
                    .collect(),
            })
            .collect();
        log.append_atomic(requests).await.expect("the large append");
        append_n(log.as_ref(), 9, 100, 2).await;
        assert_eq!(
            log.head().await.unwrap().position,
            3 + u64::from(streams * per_stream) + 2
        );
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        every_answer(&log, streams).await
    });
    // More than two pieces of frames in the one segment.
    let segs = segments(dir);
    assert_eq!(segs.len(), 1);
    let bytes = std::fs::metadata(&segs[0]).unwrap().len();
    assert!(bytes > 2 * 8 * 1024 * 1024, "{bytes} bytes");
    let scanned = rt.block_on(async {
        let options = SegmentOptions {
            read_snapshot: false,
            ..SegmentOptions::default()
        };
        let log = open_options(dir, options).unwrap();
        assert_eq!(log.opened_from_snapshot(), None);
        assert!(log.verify(&|_| {}).await.unwrap().ok);
        every_answer(&log, streams).await
    });
    assert_eq!(written, scanned);
    let (all, per_stream_events, found) = written;
    assert_eq!(all.len() as u64, 3 + u64::from(streams * per_stream) + 2);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64 + 1));
    for (s, events) in per_stream_events.iter().enumerate() {
        assert_eq!(events.len(), per_stream as usize, "stream {s}");
        assert!(events
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64 + 1));
    }
    assert!(found
        .iter()
        .enumerate()
        .all(|(i, p)| *p == Some(i as u64 + 1)));
    // A crash after the first piece reached the disk and before the group
    // was acknowledged: the segment cut 9 MiB into the large group, no
    // snapshot or watermark past the small append before it (here: none).
    // Open cuts the frames without a group end; the small append stays,
    // whole.
    let first_group_end = {
        let first = std::fs::read(&segs[0]).unwrap();
        // The large group starts where the small append before it ends:
        // after the log's third event's frame, whose last bytes are its
        // hash.
        let hash = &all[2].hash;
        let at = first
            .windows(hash.len())
            .position(|w| w == hash)
            .expect("the third event's frame");
        at + hash.len()
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap();
    file.set_len((first_group_end + 9 * 1024 * 1024) as u64)
        .unwrap();
    drop(file);
    std::fs::write(log_dir(dir).join("head"), b"").unwrap();
    let _ = std::fs::remove_file(snapshot_path(dir));
    rt.block_on(async {
        let log = open(dir).unwrap();
        assert_eq!(log.head().await.unwrap().position, 3);
        assert_eq!(log.read_all(1, 10).await.unwrap(), all[..3].to_vec());
        assert!(log.verify(&|_| {}).await.unwrap().ok);
    });
}
