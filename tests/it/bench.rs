//! `casebook bench`: the JSON document has every figure of the issue, each
//! a positive finite number, and each ratio is the quotient of its figures.
//! No timing is asserted (speed lives in docs/performance.md, not in tests).

use std::process::{Command, Stdio};

use serde_json::Value;

pub(crate) const FIGURES: &[&str] = &[
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
];

pub(crate) const RATIOS: &[(&str, &str, &str)] = &[
    ("import_vs_raw", "import_ev_s", "raw_backend_batched_ev_s"),
    ("single_vs_fsync", "append_single_ev_s", "fsync_per_s"),
    (
        "concurrent_vs_single",
        "append_concurrent_ev_s",
        "append_single_ev_s",
    ),
    ("replay_vs_raw", "replay_ev_s", "raw_scan_decode_ev_s"),
];

pub(crate) fn number(doc: &Value, key: &str) -> f64 {
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

#[test]
fn bench_json_has_every_figure_and_consistent_ratios() {
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
            "--dir",
        ])
        .arg(tmp.path())
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
    assert_eq!(doc["events"], 2000, "{doc}");
    assert_eq!(doc["writers"], 8, "{doc}");
    assert_eq!(doc["backend"], "sled", "{doc}");
    assert!(number(&doc, "timeline_p99_us") >= number(&doc, "timeline_p50_us"));
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
