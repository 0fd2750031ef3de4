//! `casebook bench --backend postgres`: the same figures and ratios as on
//! sled, measured in scratch databases that are dropped afterwards. No
//! timing is asserted.

use std::process::{Command, Stdio};

use crate::bench::run_bench;
use crate::pg::{admin, test_db};

#[test]
fn bench_on_postgres_reports_every_figure_and_drops_its_scratch_databases() {
    let Some(db) = test_db() else { return };
    let (doc, _tmp) = run_bench(&["--backend", "postgres", "--database-url", &db.url]);
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
