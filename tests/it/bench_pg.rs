//! `casebook bench --backend postgres`: the same figures and ratios as on
//! sled, measured in scratch databases that are dropped afterwards. No
//! timing is asserted.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::bench::{number, FIGURES, RATIOS};
use crate::pg::{admin, test_db};

#[test]
fn bench_on_postgres_reports_every_figure_and_drops_its_scratch_databases() {
    let Some(db) = test_db() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args([
            "bench",
            "--backend",
            "postgres",
            "--database-url",
            &db.url,
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
    assert_eq!(doc["backend"], "postgres", "{doc}");
    assert_eq!(doc["events"], 2000, "{doc}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let left: Vec<String> = runtime.block_on(async {
        admin(&db.url)
            .await
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'casebook_bench%'",
                &[],
            )
            .await
            .expect("list databases")
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert!(left.is_empty(), "scratch databases left behind: {left:?}");
}

#[test]
fn bench_on_postgres_without_a_url_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args(["bench", "--backend", "postgres", "--events", "1000"])
        .env_remove("CASEBOOK_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run casebook bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
}
