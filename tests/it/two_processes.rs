//! Two processes, one store (issue 7): while one process has the
//! store open, another gets "store at PATH is in use by process N" with
//! exit 3 — never a panic, never a damaged store — and the store works
//! normally once the first process is gone (even killed with SIGKILL).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::cli::{line, Casebook};

pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `casebook-torture hold` on the store at `dir` (its engine
/// detected; `engine` if it does not exist yet) and waits until it has it
/// open. Returns the child and its pid.
pub fn hold_store(dir: &std::path::Path, engine: &str) -> (Killed, u32) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_casebook-torture"))
            .args(["hold", "--engine", engine, "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn casebook-torture hold"),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("read ready line");
    let pid: u32 = first
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("holder did not start: {first:?}"));
    assert_eq!(pid, child.0.id());
    (child, pid)
}

#[test]
fn a_second_process_is_told_which_process_holds_the_store() {
    for engine in ["segment", "sled"] {
        held_store(engine);
    }
}

fn held_store(engine: &str) {
    let cb = Casebook::new();
    cb.run(&["--engine", engine, "init"]).ok();
    let register = line(
        "PupilRegistered",
        "P1042",
        "2025-09-03T08:30:00Z",
        json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
    );
    cb.import(std::slice::from_ref(&register)).ok();
    let before = cb.fingerprint();
    let (mut holder, pid) = hold_store(&cb.data(), engine);
    let expected = format!(
        "store at {} is in use by process {pid}",
        cb.data().display()
    );
    for args in [
        &["verify"][..],
        &["init"][..],
        &["caseload"][..],
        &["--as", "S017", "import", "-"][..],
    ] {
        let r = cb.run_stdin(args, "");
        assert_eq!(r.code, 3, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(&expected), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        println!(
            "two_processes ({engine}): {args:?} while held: exit 3, {}",
            r.stderr.trim()
        );
    }
    // The first process dies without closing anything.
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    assert_eq!(cb.fingerprint(), before, "the store is intact");
    cb.import(&[line(
        "ParentContacted",
        "P1042",
        "2025-09-10T12:00:00Z",
        json!({"method": "phone", "summary": "Introductory call"}),
    )])
    .ok();
    assert_eq!(cb.fingerprint().0, before.0 + 1);
}
