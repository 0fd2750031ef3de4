//! `casebook bench`: the JSON document has every figure of the issue, each
//! a positive finite number, and each ratio is the quotient of its figures.
//! No timing is asserted (speed lives in docs/performance.md, not in tests).

use std::process::{Command, Stdio};

use serde_json::Value;

const FIGURES: &[&str] = &[
    "fsync_per_s",
    "raw_backend_batched_ev_s",
    "import_ev_s",
    "append_single_ev_s",
    "append_concurrent_ev_s",
    "replay_ev_s",
    "raw_scan_decode_ev_s",
    "timeline_p50_us",
    "timeline_p99_us",
    "peak_rss_mb",
    "disk_bytes_per_event",
    "payload_bytes_per_event",
    "verify_ev_s",
    "chain_hash_ev_s",
];

const RATIOS: &[(&str, &str, &str)] = &[
    ("import_vs_raw", "import_ev_s", "raw_backend_batched_ev_s"),
    ("single_vs_fsync", "append_single_ev_s", "fsync_per_s"),
    (
        "concurrent_vs_single",
        "append_concurrent_ev_s",
        "append_single_ev_s",
    ),
    ("replay_vs_raw", "replay_ev_s", "raw_scan_decode_ev_s"),
    ("verify_vs_raw", "verify_ev_s", "raw_scan_decode_ev_s"),
    (
        "chain_hash_vs_raw",
        "chain_hash_ev_s",
        "raw_backend_batched_ev_s",
    ),
    ("import_vs_chain_hash", "import_ev_s", "chain_hash_ev_s"),
];

fn number(doc: &Value, key: &str) -> f64 {
    let v = doc
        .get(key)
        .unwrap_or_else(|| panic!("key {key} missing from {doc}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {doc}"));
    assert!(
        v.is_finite() && v > 0.0,
        "{key} = {v} is not positive and finite"
    );
    v
}

/// Runs `casebook bench --events 2000 --writers 8 --format json` with
/// `extra` arguments in a temporary directory, checks every figure is a
/// positive finite number and every ratio the quotient of its figures, and
/// returns the document and the directory (which must end up empty).
pub(crate) fn run_bench(extra: &[&str]) -> (Value, tempfile::TempDir) {
    run_bench_with(extra, &[])
}

/// [`run_bench`] with environment variables set for the run.
pub(crate) fn run_bench_with(extra: &[&str], env: &[(&str, &str)]) -> (Value, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args([
            "bench",
            "--events",
            "2000",
            "--writers",
            "8",
            "--format",
            "json",
        ])
        .args(extra)
        .arg("--dir")
        .arg(tmp.path())
        .env_remove("CASEBOOK_DATABASE_URL")
        .env_remove("CASEBOOK_SNAPSHOT_MIN_EVENTS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run casebook bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    for key in FIGURES {
        number(&doc, key);
    }
    for (ratio, num, den) in RATIOS {
        let r = number(&doc, ratio);
        let q = number(&doc, num) / number(&doc, den);
        assert!(
            (r - q).abs() <= 1e-9 * q.abs().max(1.0),
            "{ratio} = {r}, but {num} / {den} = {q}"
        );
    }
    (doc, tmp)
}

/// The default backend is the segment engine; sled, the engine of older
/// stores, is measured too.
#[test]
fn bench_runs_on_sled() {
    let (doc, tmp) = run_bench(&["--backend", "sled"]);
    assert_eq!(doc["backend"], "sled", "{doc}");
    assert_eq!(doc["events"], 2000, "{doc}");
    assert!(doc["index_mb"].is_null(), "sled's index is on disk: {doc}");
    for key in [
        "open_ms",
        "open_full_scan_ms",
        "open_reading_only_ms",
        "index_mb_reading_only",
        "open_sparse_ms",
        "index_mb_sparse",
        "register_open_ms",
        "register_index_mb",
        "close_ms",
        "snapshot_mb",
    ] {
        assert!(doc[key].is_null(), "{key} on sled: {doc}");
    }
    // The planner's time is measured on every backend, the writer's steps
    // only where the engine keeps them (the segment writer).
    number(&doc, "import_planner_us_per_event");
    assert!(doc.get("import_writer_busy_share").is_none(), "{doc}");
    // sled seals each append on its own writer: nothing is sealed ahead.
    assert_eq!(
        doc["import_sealing_ahead_us_per_event"].as_f64(),
        Some(0.0),
        "{doc}"
    );
    assert!(doc.get("single_writer_busy_us").is_none(), "{doc}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("read dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

/// `--no-seal-ahead`: the same import with every batch sealed by the
/// writer, for comparing the two with one binary.
#[test]
fn bench_without_sealing_ahead_has_the_writer_seal_every_batch() {
    let (doc, _tmp) = run_bench(&["--no-seal-ahead"]);
    assert_eq!(doc["seal_ahead"], false, "{doc}");
    assert_eq!(
        doc["import_sealing_ahead_us_per_event"].as_f64(),
        Some(0.0),
        "{doc}"
    );
    assert_eq!(
        doc["import_writer_presealed_share"].as_f64(),
        Some(0.0),
        "{doc}"
    );
    number(&doc, "import_writer_stage_us_per_event");
}

/// `--seal-whole`: every batch sealed ahead whole on the importing thread,
/// as before the writer sealed what was left once the batch in flight was
/// answered: the writer, alone with the import, writes every event as
/// sealed ahead.
#[test]
fn bench_sealing_whole_batches_has_every_event_written_as_sealed_ahead() {
    let (doc, _tmp) = run_bench(&["--seal-whole"]);
    assert_eq!(doc["seal_whole"], true, "{doc}");
    assert!(
        number(&doc, "import_sealing_ahead_us_per_event") > 0.0,
        "{doc}"
    );
    assert_eq!(number(&doc, "import_writer_presealed_share"), 1.0, "{doc}");
}

#[test]
fn bench_json_has_every_figure_and_consistent_ratios() {
    let (doc, tmp) = run_bench(&[]);
    assert_eq!(doc["events"], 2000, "{doc}");
    assert_eq!(doc["writers"], 8, "{doc}");
    assert_eq!(doc["backend"], "segment", "{doc}");
    assert!(number(&doc, "timeline_p99_us") >= number(&doc, "timeline_p50_us"));
    // The hash chain alone was timed over every event of a run this small
    // (the first 2^20 of a larger one).
    assert_eq!(doc["chain_hash_events"], 2000, "{doc}");
    // Each phase's own peak, in the order run: on Linux the kernel's peak
    // is reset as each phase starts (the figures are the phases' own, not
    // the run's so far); the run's peak is the largest reading.
    let peaks = doc["phase_peak_rss_mb"].as_array().expect("phase peaks");
    let phases: Vec<&str> = peaks.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(phases.len(), 15, "{doc}");
    assert_eq!(phases[2], "engine import", "{doc}");
    // The scan and the replay read through the open a rebuild makes.
    assert_eq!(
        phases[4], "close and open the store again (as a rebuild, the caseload and a timeline)",
        "{doc}"
    );
    assert_eq!(phases[6], "replay (rebuild of every projection)", "{doc}");
    // A day's register for every pupil imported into the populated
    // store: one line a pupil, each judged against the pupil's record;
    // last, the afternoon's (from the facts checkpoint, with 256 pupils
    // or more).
    assert!(
        phases[11].starts_with("a day's register for every pupil"),
        "{doc}"
    );
    assert!(phases[12].starts_with("the afternoon's register"), "{doc}");
    // Look-ups by id (none here: no snapshot below its threshold).
    assert!(phases[13].starts_with("look-ups of 16 stored ids"), "{doc}");
    assert!(doc["id_lookup_first_ms"].is_null(), "{doc}");
    assert!(doc["id_batch_lookup_ms"].is_null(), "{doc}");
    // Last, the hash chain alone, apart from the raw ceiling's writes.
    assert_eq!(phases[14], "the hash chain alone, on one thread", "{doc}");
    assert_eq!(doc["register_import_lines"], doc["pupils"], "{doc}");
    assert!(number(&doc, "register_import_ms") > 0.0, "{doc}");
    assert!(number(&doc, "register_again_ms") > 0.0, "{doc}");
    #[cfg(target_os = "linux")]
    assert_eq!(doc["phase_peaks_own"], true, "{doc}");
    let run_peak = number(&doc, "peak_rss_mb");
    let highest = peaks
        .iter()
        .filter_map(|p| p["peak_rss_mb"].as_f64())
        .fold(0.0, f64::max);
    assert!(highest > 0.0 && highest <= run_peak, "{doc}");
    // The segment engine's in-memory index, a part of the peak.
    let index_mb = number(&doc, "index_mb");
    assert!(
        index_mb > 0.0 && index_mb < number(&doc, "peak_rss_mb"),
        "{doc}"
    );
    // The store closed and opened again after the import: both opens
    // timed, the ratio theirs; 2,000 events are below the snapshot
    // threshold, so no snapshot was written and the second open scanned
    // the frames too.
    let ratio = number(&doc, "open_ms") / number(&doc, "open_full_scan_ms");
    assert!(
        (number(&doc, "open_vs_full_scan") - ratio).abs() < 1e-9,
        "{doc}"
    );
    number(&doc, "close_ms");
    // Where the import's time went: the planner's time and the segment
    // writer's steps, per event; the writer's busy time is its steps'
    // sum, in at least one group per batch of 1,024.
    number(&doc, "import_planner_us_per_event");
    number(&doc, "import_planner_busy_share");
    let steps: f64 = ["stage", "frame", "write", "sync", "publish"]
        .iter()
        .map(|k| number(&doc, &format!("import_writer_{k}_us_per_event")))
        .sum();
    let busy = number(&doc, "import_writer_busy_us_per_event");
    assert!((steps - busy).abs() <= 1e-9 * busy, "{doc}");
    assert!(number(&doc, "import_writer_groups") >= 2.0, "{doc}");
    // The pipeline sealed batches ahead until the batch in flight was
    // answered, the writer the rest: how much of each is timing, but
    // every event was written once, sealed by one or the other.
    let share_of = |key: &str| doc[key].as_f64().unwrap_or(-1.0);
    assert!(
        (0.0..=1.0).contains(&share_of("import_writer_presealed_share")),
        "{doc}"
    );
    assert!(
        share_of("import_sealing_ahead_us_per_event") >= 0.0,
        "{doc}"
    );
    assert!(share_of("import_waiting_us_per_event") >= 0.0, "{doc}");
    assert_eq!(doc["seal_ahead"], true, "{doc}");
    assert_eq!(doc["seal_whole"], false, "{doc}");
    // Processor time an event: the bench's thread and the writer's add up
    // to the import's; the raw ceiling's is its own.
    let cpu = number(&doc, "import_main_cpu_us_per_event")
        + number(&doc, "import_writer_cpu_us_per_event");
    let total = number(&doc, "import_cpu_us_per_event");
    assert!((cpu - total).abs() <= 1e-6 * total, "{doc}");
    number(&doc, "raw_cpu_us_per_event");
    // The bounds those costs put on import_vs_raw: the writer's serial
    // busy time, and the cores' processor time.
    let raw = number(&doc, "raw_backend_batched_ev_s");
    let writer_cap = 1e6 / busy / raw;
    assert!(
        (number(&doc, "import_writer_cap_vs_raw") - writer_cap).abs() <= 1e-9 * writer_cap,
        "{doc}"
    );
    let cpu_cap = number(&doc, "cores") * 1e6 / total / raw;
    assert!(
        (number(&doc, "import_cpu_cap_vs_raw") - cpu_cap).abs() <= 1e-6 * cpu_cap,
        "{doc}"
    );
    number(&doc, "import_writer_busy_share");
    let sync_share = number(&doc, "import_writer_sync_share");
    assert!(sync_share < 1.0, "{doc}");
    assert_eq!(doc["open_from_snapshot"], false, "{doc}");
    assert!(doc["snapshot_mb"].is_null(), "{doc}");
    // A single append's time beside the probe's fdatasync, and the
    // writer's part of it (one group an append).
    assert_eq!(
        number(&doc, "single_writer_groups"),
        number(&doc, "single_appends"),
        "{doc}"
    );
    let single_us = number(&doc, "single_us");
    assert!((single_us - 1e6 / number(&doc, "append_single_ev_s")).abs() <= 1e-6 * single_us);
    let busy = number(&doc, "single_writer_busy_us");
    let parts = number(&doc, "single_writer_sync_us") + number(&doc, "single_writer_other_us");
    assert!((busy - parts).abs() <= 1e-6 * busy, "{doc}");
    number(&doc, "fsync_us");
    // The appends ran in rounds: a slice of single appends beside as many
    // fdatasyncs of the probe, then a slice of the concurrent writers'; each
    // rate is that of the rounds together.
    number(&doc, "fsync_per_s_at_start");
    let rounds = doc["append_rounds"].as_array().expect("append_rounds");
    assert!(rounds.len() > 1, "{doc}");
    let sum = |key: &str| rounds.iter().map(|r| number(r, key)).sum::<f64>();
    for r in rounds {
        assert_eq!(number(r, "fsyncs"), number(r, "single_appends"), "{r}");
    }
    assert_eq!(
        sum("single_appends"),
        number(&doc, "single_appends"),
        "{doc}"
    );
    assert_eq!(
        sum("concurrent_appends"),
        number(&doc, "concurrent_appends"),
        "{doc}"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs();
    for (rate, count, seconds) in [
        ("fsync_per_s", "fsyncs", "fsync_s"),
        ("append_single_ev_s", "single_appends", "single_s"),
        (
            "append_concurrent_ev_s",
            "concurrent_appends",
            "concurrent_s",
        ),
    ] {
        assert!(
            close(number(&doc, rate), sum(count) / sum(seconds)),
            "{rate}: {doc}"
        );
    }
    // The temporary store is removed afterwards.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("read dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_refuses_bad_arguments_with_exit_2() {
    for args in [
        &["bench", "--events", "10"][..],
        &["bench", "--writers", "0"][..],
        &["bench", "--format", "csv"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run casebook bench");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The timeline's fast JSON path (`Chronology::into_json`, which moves each
/// entry's data instead of copying it) gives exactly the document serde
/// gives, corrections included.
#[test]
fn chronology_into_json_equals_its_serde_document() {
    use casebook_cli::demo::{generate, DemoOptions};
    use casebook_engine::envelope::{NewEvent, StoredEvent, StreamId, GENESIS_HASH};
    use casebook_engine::RecordedEvent;
    use casebook_projections::Chronology;

    let opts = DemoOptions {
        pupils: 40,
        seed: 7,
        academic_year: 2024,
        school: "bench".into(),
    };
    let mut corrected = 0;
    for pupil in generate(&opts) {
        let stream = StreamId::for_pupil("bench", &pupil.reference);
        let mut prev = GENESIS_HASH;
        let events: Vec<RecordedEvent> = pupil
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut new =
                    NewEvent::new(&e.event, e.occurred_at, e.actor.clone()).expect("encode");
                new.event_id = e.event_id;
                let n = i as u64 + 1;
                let (stored, _) =
                    StoredEvent::seal(&new, stream, n, n, e.occurred_at, prev).expect("seal");
                prev = stored.hash;
                RecordedEvent::from_stored(&stored).expect("decode")
            })
            .collect();
        for safeguarding_only in [false, true] {
            let chronology = Chronology::build(&pupil.reference, &events, None, safeguarding_only);
            corrected += chronology
                .entries
                .iter()
                .filter(|e| !e.corrections.is_empty())
                .count();
            let expected = serde_json::to_value(&chronology).expect("serde");
            let fast = chronology.into_json().expect("into_json");
            assert_eq!(fast, expected, "pupil {}", pupil.reference);
        }
    }
    assert!(
        corrected > 0,
        "the demo pupils had no corrected entry; the test would not cover corrections"
    );
}

/// With the snapshot threshold lowered (`CASEBOOK_SNAPSHOT_MIN_EVENTS`),
/// the close after the import writes the index snapshot and the rest of
/// the run reads the store opened from it: every figure as before, the
/// snapshot's size reported, and an open that leaves the event ids in the
/// snapshot holds a smaller index, and one that leaves the locations in it
/// too (as the caseload and the reports do) a smaller one still.
#[test]
fn bench_reopens_from_the_index_snapshot() {
    let (doc, tmp) = run_bench_with(&[], &[("CASEBOOK_SNAPSHOT_MIN_EVENTS", "1")]);
    assert_eq!(doc["open_from_snapshot"], true, "{doc}");
    let snapshot_mb = number(&doc, "snapshot_mb");
    assert!(
        snapshot_mb < number(&doc, "index_mb"),
        "the snapshot is larger than the index: {doc}"
    );
    number(&doc, "open_ms");
    number(&doc, "open_full_scan_ms");
    number(&doc, "open_reading_only_ms");
    let reading_only = number(&doc, "index_mb_reading_only");
    assert!(
        reading_only > 0.0 && reading_only < 0.5 * number(&doc, "index_mb"),
        "{doc}"
    );
    // The open in order keeps a group's start where the other keeps each
    // position's location (2 bytes an event of the 2,000 here, ~4 KB).
    number(&doc, "open_sparse_ms");
    let sparse_index = number(&doc, "index_mb_sparse");
    assert!(sparse_index > 0.0 && sparse_index < reading_only, "{doc}");
    // The registers run in the open `casebook import` makes (the ids and
    // the locations left in the snapshot), not in the timelines' open.
    number(&doc, "register_open_ms");
    let register_index = number(&doc, "register_index_mb");
    assert!(
        register_index > 0.0 && register_index < reading_only,
        "the registers' open holds the index of an open that reads little: {doc}"
    );
    // Look-ups by id with the ids left in the snapshot: in place, and
    // reading them all at the first (each found, or the run fails).
    let first = number(&doc, "id_lookup_first_ms");
    let reading = number(&doc, "id_lookup_reading_ms");
    number(&doc, "id_lookup_next_us");
    assert!(
        (number(&doc, "id_lookup_vs_reading") - first / reading).abs() < 1e-9,
        "{doc}"
    );
    // A batch of absent ids at once, in place, against a reading of every
    // id and the batch's look-ups in its table (the bench itself fails
    // the run unless the batch stayed in place and found none).
    assert_eq!(number(&doc, "id_batch"), 4096.0, "{doc}");
    let batch = number(&doc, "id_batch_lookup_ms");
    let batch_reading = number(&doc, "id_batch_reading_ms");
    assert!(batch > 0.0, "{doc}");
    assert!(
        (number(&doc, "id_batch_vs_reading") - batch / batch_reading).abs() < 1e-9,
        "{doc}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("read dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}
