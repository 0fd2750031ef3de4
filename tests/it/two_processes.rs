//! Two processes, one sled store (issue 7): while one process has the
//! store open, another gets "store at PATH is in use by process N" with
//! exit 3 — never a panic, never a damaged store — and the store works
//! normally once the first process is gone (even killed with SIGKILL).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::cli::{line, Casebook};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `casebook-torture hold` on the store and waits until it has it
/// open. Returns the child and its pid.
fn hold(cb: &Casebook) -> (Killed, u32) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_casebook-torture"))
            .args(["hold", "--dir"])
            .arg(cb.data())
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
    let cb = Casebook::new();
    cb.run(&["init"]).ok();
    let register = line(
        "PupilRegistered",
        "P1042",
        "2025-09-03T08:30:00Z",
        json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
    );
    cb.import(std::slice::from_ref(&register)).ok();
    let before = cb.fingerprint();
    let (mut holder, pid) = hold(&cb);
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
            "two_processes: {args:?} while held: exit 3, {}",
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
