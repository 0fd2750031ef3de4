//! The bad-input corpus (tests/data/bad/, issue 7): every file is run through
//! the real `casebook import` on a store already holding events; each must
//! exit 2 with a message naming the line (and field), and leave the store's
//! head exactly as it was. The expected fragments are the table in
//! tests/data/bad/README.md, so the documentation and the test cannot drift.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::{line, Casebook};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad")
}

/// (file, expected fragment) rows of the README's table.
fn table() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(corpus_dir().join("README.md")).expect("README");
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let unquote = |c: &str| {
                c.trim_matches(|ch| ch == '|' || ch == ' ' || ch == '`')
                    .to_string()
            };
            (unquote(cells[0]), unquote(cells[cells.len() - 1]))
        })
        .collect()
}

fn store_with_events() -> Casebook {
    let cb = Casebook::new();
    let register = |pupil: &str| {
        line(
            "PupilRegistered",
            pupil,
            "2025-09-03T08:30:00Z",
            json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
        )
    };
    cb.import(&[
        register("P1042"),
        register("P2001"),
        line(
            "ParentContacted",
            "P1042",
            "2025-09-10T12:00:00Z",
            json!({"method": "phone", "summary": "Introductory call"}),
        ),
    ])
    .ok();
    cb
}

#[track_caller]
fn refused(cb: &Casebook, file: &Path, fragment: &str, before: &(u64, String)) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let r = cb.run(&["--as", "S017", "import", file.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{name}: exit code\nstderr: {}", r.stderr);
    assert!(
        r.stderr.contains(fragment),
        "{name}: message should contain {fragment:?}: {}",
        r.stderr
    );
    assert_eq!(&cb.fingerprint(), before, "{name}: the store changed");
    println!("corpus {name}: exit 2, {}", r.stderr.trim());
}

#[test]
fn every_corpus_file_is_refused_with_its_line_and_leaves_the_store_unchanged() {
    let rows = table();
    let files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    assert!(rows.len() >= 15, "README table has {} rows", rows.len());
    for f in &files {
        assert!(
            rows.iter().any(|(n, _)| n == f),
            "{f} has no row in tests/data/bad/README.md"
        );
    }
    let cb = store_with_events();
    let before = cb.fingerprint();
    assert_eq!(before.0, 3);
    for (file, fragment) in &rows {
        refused(&cb, &corpus_dir().join(file), fragment, &before);
    }
    println!("corpus: {} files refused", rows.len());
    // The store still takes good input afterwards.
    let r = cb.import(&[line(
        "ParentContacted",
        "P2001",
        "2025-09-20T12:00:00Z",
        json!({"method": "phone", "summary": "Follow-up"}),
    )]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(cb.fingerprint().0, 4);
}

#[test]
fn a_ten_megabyte_single_line_is_refused_without_writing() {
    let cb = store_with_events();
    let before = cb.fingerprint();
    let file = cb.path().join("ten_mb_line.jsonl");
    let mut text = String::from(
        r#"{"type":"IncidentRecorded","pupil":"P1042","occurred_at":"2025-09-16T10:20:00Z","actor":"S017","data":{"category":"verbal_abuse_adult","severity":2,"location":"corridor","description":""#,
    );
    let target = 10 * 1024 * 1024;
    text.push_str(&"x".repeat(target - text.len() - 3));
    text.push_str("\"}}");
    assert_eq!(text.len(), target);
    std::fs::write(&file, format!("{text}\n")).unwrap();
    refused(
        &cb,
        &file,
        &format!("line 1: line is {target} bytes, over the limit"),
        &before,
    );
}
