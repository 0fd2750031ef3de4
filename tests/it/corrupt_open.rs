//! Corrupt store on open (issue 7): every file of a store — sled's `db`,
//! `conf` and snapshots, casebook's head watermark and lock file — is
//! truncated or garbled in turn, and `casebook verify` run on it. Each case
//! must end in one of:
//!
//! - exit 3, with a message naming the damaged file and suggesting
//!   `casebook verify`;
//! - exit 1, `verify` itself reporting the damage;
//! - exit 0 with exactly the same events and head (the damage was harmless,
//!   e.g. the lock file, which only names the holding process);
//!
//! and never a panic or a store that verifies with different content.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::{line, Casebook};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn files(dir: &Path, prefix: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), &prefix.join(e.file_name()), out);
        } else {
            out.push(prefix.join(e.file_name()));
        }
    }
}

const DAMAGES: &[&str] = &[
    "emptied",
    "truncated to half",
    "truncated by 7 bytes",
    "first 64 bytes garbled",
    "middle 64 bytes garbled",
    "last 16 bytes garbled",
];

fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let garble = |b: &mut [u8]| b.iter_mut().for_each(|x| *x ^= 0x5a);
    match how {
        "emptied" => bytes.clear(),
        "truncated to half" => bytes.truncate(n / 2),
        "truncated by 7 bytes" => bytes.truncate(n.saturating_sub(7)),
        "first 64 bytes garbled" => garble(&mut bytes[..n.min(64)]),
        "middle 64 bytes garbled" => garble(&mut bytes[n / 2..(n / 2 + 64).min(n)]),
        _ => garble(&mut bytes[n.saturating_sub(16)..]),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_files_give_exit_3_naming_the_file_never_a_panic() {
    let pristine = Casebook::new();
    let mut lines = vec![line(
        "PupilRegistered",
        "P1042",
        "2025-09-03T08:30:00Z",
        json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
    )];
    for n in 0..200 {
        lines.push(line(
            "ParentContacted",
            "P1042",
            "2025-09-10T12:00:00Z",
            json!({"method": "phone", "summary": format!("Call number {n}")}),
        ));
    }
    // sled's own files are damaged here (the segment engine's damage
    // cases are in `segment` and `segment_tamper`).
    pristine.run(&["--engine", "sled", "init"]).ok();
    pristine.import(&lines).ok();
    let before = pristine.fingerprint();
    let mut names = Vec::new();
    files(&pristine.data(), Path::new(""), &mut names);
    names.sort();
    assert!(names.iter().any(|n| n == Path::new("db")), "{names:?}");
    assert!(names.iter().any(|n| n == Path::new("conf")), "{names:?}");
    let (mut refused, mut reported, mut harmless) = (0, 0, 0);
    for name in &names {
        for how in DAMAGES {
            let cb = Casebook::new();
            copy_dir(&pristine.data(), &cb.data());
            damage(&cb.data().join(name), how);
            let r = cb.run(&["verify", "--format", "json"]);
            let what = format!("{} {how}", name.display());
            assert!(
                !r.stderr.contains("panicked"),
                "{what}: panic\n{}",
                r.stderr
            );
            match r.code {
                3 => {
                    let file = name.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(
                        r.stderr.contains(&file),
                        "{what}: the message should name {file}: {}",
                        r.stderr
                    );
                    assert!(
                        r.stderr.contains("casebook verify"),
                        "{what}: the message should suggest `casebook verify`: {}",
                        r.stderr
                    );
                    refused += 1;
                }
                1 => {
                    assert_eq!(r.json()["ok"], false, "{what}");
                    reported += 1;
                }
                0 => {
                    assert_eq!(
                        cb.fingerprint(),
                        before,
                        "{what}: verified with other content"
                    );
                    harmless += 1;
                }
                code => panic!("{what}: exit {code}\n{}", r.stderr),
            }
            println!(
                "corrupt-open {what}: exit {} {}",
                r.code,
                r.stderr.lines().next().unwrap_or("")
            );
        }
    }
    println!(
        "corrupt-open: {} files x {} damages: {refused} refused on open (exit 3), {reported} reported by verify (exit 1), {harmless} harmless",
        names.len(),
        DAMAGES.len()
    );
    assert!(refused > 0);
}
