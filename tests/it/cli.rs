//! The contract (CONTRACT.md) end to end: the real `casebook` binary on a
//! temporary store, as a script or a member of staff would use it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

pub struct Casebook {
    dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }
}

/// Runs `command` with `input` on its standard input.
fn piped(mut command: Command, input: &str) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn casebook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    Run::from(child.wait_with_output().expect("wait"))
}

impl Casebook {
    pub fn new() -> Casebook {
        Casebook {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_casebook"));
        // The store goes before the command: after `record`, `--data` is
        // the event's JSON (CONTRACT.md).
        c.arg("--data")
            .arg(self.data())
            .args(args)
            .env_remove("CASEBOOK_DATA")
            .env_remove("CASEBOOK_DATABASE_URL")
            .env_remove("CASEBOOK_SCHOOL")
            .env_remove("CASEBOOK_ACTOR")
            .env_remove("CASEBOOK_ENGINE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run casebook"))
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        piped(self.command(args), input)
    }

    pub fn import(&self, lines: &[Value]) -> Run {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.run_stdin(&["import", "-"], &text)
    }

    /// (events, head) from `verify --format json`: the store's content
    /// fingerprint.
    pub fn fingerprint(&self) -> (u64, String) {
        let v = self.run(&["verify", "--format", "json"]).ok().json();
        assert_eq!(v["ok"], true, "{v}");
        (
            v["events"].as_u64().unwrap(),
            v["head"].as_str().unwrap().to_string(),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The log of `school` in the store at `dir`, whichever embedded engine
/// wrote it (the binary must have exited: the store takes one process).
pub fn open_log(
    dir: &Path,
    school: &str,
) -> std::sync::Arc<dyn casebook_engine::store::EventStore> {
    use casebook_engine::store::embedded::{open_log, Engine};
    open_log(dir, school, Engine::Sled, false).expect("open the store")
}

pub fn line(t: &str, pupil: &str, at: &str, data: Value) -> Value {
    json!({"type": t, "pupil": pupil, "occurred_at": at, "actor": "S017", "data": data})
}

fn register(pupil: &str) -> Value {
    line(
        "PupilRegistered",
        pupil,
        "2025-09-03T08:30:00Z",
        json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9, "class": "9B", "site": "Main"}),
    )
}

/// `r` is an import that reports `events` imported and `duplicates` skipped.
fn assert_imported(r: &Run, events: usize, duplicates: usize) {
    let want = format!("imported {events} events ({duplicates} duplicates)");
    assert!(r.stdout.trim_end().ends_with(&want), "{}", r.stdout);
}

/// A small case history for P1042 and P2001.
fn history() -> Vec<Value> {
    vec![
        register("P1042"),
        register("P2001"),
        line(
            "CaseOpened",
            "P1042",
            "2025-09-10T09:00:00Z",
            json!({"case_type": "behaviour", "summary": "Repeated disruption"}),
        ),
        line(
            "KeyworkerAssigned",
            "P1042",
            "2025-09-10T09:05:00Z",
            json!({"staff": "S020"}),
        ),
        line(
            "IncidentRecorded",
            "P1042",
            "2025-09-15T10:20:00Z",
            json!({"category": "verbal_abuse_adult", "severity": 3, "location": "corridor", "description": "Shouted at a member of staff",
                   "role": "perpetrator", "participants": [{"pupil": "P2001", "role": "witness"}]}),
        ),
        line(
            "PlanAgreed",
            "P1042",
            "2025-09-20T09:00:00Z",
            json!({"plan": "BSP-1", "kind": "behaviour_support", "review_due": "2025-10-20"}),
        ),
        line(
            "ConcernRaised",
            "P1042",
            "2025-09-12T11:00:00Z",
            json!({"category": "neglect", "summary": "Arrives hungry most days"}),
        ),
        line(
            "SafeguardingDecisionMade",
            "P1042",
            "2025-09-12T15:00:00Z",
            json!({"decision": "early_help", "rationale": "Family open to support"}),
        ),
    ]
}

#[test]
fn init_is_idempotent() {
    let cb = Casebook::new();
    cb.run(&["init"]).ok();
    cb.run(&["init"]).ok();
    assert_eq!(cb.fingerprint().0, 0);
}

#[test]
fn import_reports_counts_and_reimport_is_idempotent() {
    let cb = Casebook::new();
    let lines: Vec<Value> = history()
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            l["id"] = json!(format!("00000000-0000-4000-8000-{:012}", i + 1));
            l
        })
        .collect();
    let r = cb.import(&lines).ok();
    assert_imported(&r, 8, 0);
    let before = cb.fingerprint();
    let r = cb.import(&lines).ok();
    assert_imported(&r, 0, 8);
    assert_eq!(cb.fingerprint(), before);
    // Same id, different content: refused, nothing written.
    let mut changed = lines[2].clone();
    changed["data"]["summary"] = json!("Something else");
    let r = cb.import(&[changed]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("line 1:") && r.stderr.contains("different content"),
        "{}",
        r.stderr
    );
    assert_eq!(cb.fingerprint(), before);
}

/// Each kind of bad input: exit 2, `line N: ...` naming what is wrong, and
/// the store exactly as it was.
/// `casebook import` keeps a file's lines in chunks of the lines the
/// planner looks up at once (`PREFETCH_LINES`) and plans them chunk by
/// chunk: a pupil's state, ids and duplicates carry across the chunks as
/// within one, and an error in a later chunk names its line and writes
/// nothing of the earlier ones.
#[test]
fn an_import_longer_than_a_chunk_plans_across_the_chunks() {
    let chunk = casebook_engine::import::PREFETCH_LINES;
    let contact = |i: usize, summary: &str| {
        let mut l = line(
            "ParentContacted",
            "P1042",
            "2025-09-10T09:00:00Z",
            json!({"method": "phone", "summary": summary}),
        );
        l["id"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        l
    };
    let mut lines = vec![register("P1042")];
    lines.extend((1..chunk + 200).map(|i| contact(i, "Called home")));
    // The second chunk repeats a line of the first: a duplicate.
    lines.push(contact(10, "Called home"));
    let cb = Casebook::new();
    let r = cb.import(&lines).ok();
    assert_imported(&r, chunk + 200, 1);
    let (events, _) = cb.fingerprint();
    assert_eq!(events, (chunk + 200) as u64);
    // The same id with other content, in the second chunk: refused at its
    // line, nothing of the file written.
    let fresh = Casebook::new();
    fresh.run(&["init"]).ok();
    let before = fresh.fingerprint();
    let last = lines.len();
    lines[last - 1] = contact(10, "Called home again");
    let r = fresh.import(&lines);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("line {last}:")) && r.stderr.contains("different content"),
        "{}",
        r.stderr
    );
    assert_eq!(fresh.fingerprint(), before);
}

/// `casebook import` reads and parses lines on a thread of its own while
/// it plans the first school's: what it reports is still what a parse of
/// every line and then a plan of each school in name order reports, and a
/// refused file writes nothing.
#[test]
fn an_import_reports_what_a_parse_then_a_plan_in_school_order_reports() {
    let chunk = casebook_engine::import::PREFETCH_LINES;
    let contact = |pupil: &str, school: Option<&str>| {
        let mut l = line(
            "ParentContacted",
            pupil,
            "2025-09-10T09:00:00Z",
            json!({"method": "phone", "summary": "Called home"}),
        );
        if let Some(s) = school {
            l["school"] = json!(s);
        }
        l.to_string()
    };
    let in_school = |mut l: Value, school: &str| {
        l["school"] = json!(school);
        l.to_string()
    };
    let import = |cb: &Casebook, lines: &[String]| {
        cb.run_stdin(&["import", "-"], &format!("{}\n", lines.join("\n")))
    };
    let cb = Casebook::new();
    cb.run(&["init"]).ok();
    let before = cb.fingerprint();

    // A pupil never registered on line 1 (planned, and refused, long
    // before the end is read), then a line that is not JSON: the line that
    // cannot be read is what is reported.
    let mut lines: Vec<String> = (0..chunk * 8).map(|_| contact("P9", None)).collect();
    lines.push("{\"type\": \"ParentContacted\", ".into());
    let r = import(&cb, &lines);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("line {}:", lines.len())) && !r.stderr.contains("line 1:"),
        "{}",
        r.stderr
    );
    assert_eq!(cb.fingerprint(), before);
    // A school named only in the lines, over more than a chunk, then the
    // bad line: refused, and no log made for that school.
    let mut named: Vec<String> = (0..chunk + 1)
        .map(|_| contact("P9", Some("gamma")))
        .collect();
    named.push(lines[lines.len() - 1].clone());
    let r = import(&cb, &named);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("line {}:", named.len())),
        "{}",
        r.stderr
    );
    assert!(
        !cb.data().join("logs").join("gamma").exists(),
        "a log was made for gamma"
    );
    // Without it, the unregistered pupil on line 1.
    lines.pop();
    let r = import(&cb, &lines);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("line 1:"), "{}", r.stderr);
    assert_eq!(cb.fingerprint(), before);

    // Two schools: zeta, the command's (`--school zeta`), whose lines come
    // first and are planned as they are read, and whose pupil is not
    // registered; and alpha, named in its lines, whose contact is with
    // `alpha_pupil`. Zeta's lines fill the first chunk read.
    let import = |cb: &Casebook, lines: &[String]| {
        cb.run_stdin(
            &["--school", "zeta", "import", "-"],
            &format!("{}\n", lines.join("\n")),
        )
    };
    let two_schools = |alpha_pupil: &str| {
        let mut lines: Vec<String> = (0..chunk + 1).map(|_| contact("P1", None)).collect();
        lines.push(in_school(register("P1"), "alpha"));
        lines.push(contact(alpha_pupil, Some("alpha")));
        lines
    };
    // Both fail: alpha's error is the one reported (name order).
    let lines = two_schools("P2");
    let r = import(&cb, &lines);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("line {}:", lines.len())) && r.stderr.contains("P2"),
        "{}",
        r.stderr
    );
    let events = |school: &str| {
        let v = cb
            .run(&["--school", school, "verify", "--format", "json"])
            .ok()
            .json();
        v["events"].as_u64().unwrap()
    };
    assert_eq!((events("alpha"), events("zeta")), (0, 0));
    // Only zeta's fails: zeta's is reported.
    let r = import(&cb, &two_schools("P1"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("line 1:"), "{}", r.stderr);
    assert_eq!((events("alpha"), events("zeta")), (0, 0));
    // Both valid, over more than one chunk: both schools written.
    let mut lines = vec![in_school(register("P1"), "zeta")];
    lines.extend((0..chunk + 5).map(|_| contact("P1", Some("zeta"))));
    lines.push(in_school(register("P1"), "alpha"));
    lines.push(contact("P1", Some("alpha")));
    let r = import(&cb, &lines).ok();
    assert_imported(&r, chunk + 8, 0);
    assert_eq!((events("alpha"), events("zeta")), (2, chunk as u64 + 6));
    assert_eq!(cb.fingerprint(), before);
}

#[test]
fn bad_input_is_refused_whole_and_writes_nothing() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let before = cb.fingerprint();
    let good = line(
        "ParentContacted",
        "P1042",
        "2025-09-16T12:00:00Z",
        json!({"method": "phone", "summary": "Discussed the incident"}),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed JSON",
            "{\"type\": \"ParentContacted\", ".into(),
            "line 2:",
        ),
        (
            "unknown type",
            line("Teleported", "P1042", "2025-09-16T12:00:00Z", json!({})).to_string(),
            "unknown event type",
        ),
        (
            "missing field",
            line(
                "ParentContacted",
                "P1042",
                "2025-09-16T12:00:00Z",
                json!({"method": "phone"}),
            )
            .to_string(),
            "summary",
        ),
        (
            "wrong type",
            line(
                "IncidentRecorded",
                "P1042",
                "2025-09-16T12:00:00Z",
                json!({"category": "x", "severity": "high", "location": "x", "description": "x"}),
            )
            .to_string(),
            "severity",
        ),
        (
            "severity out of range",
            line(
                "IncidentRecorded",
                "P1042",
                "2025-09-16T12:00:00Z",
                json!({"category": "x", "severity": 9, "location": "x", "description": "x"}),
            )
            .to_string(),
            "severity",
        ),
        (
            "date format",
            line(
                "ParentContacted",
                "P1042",
                "16/09/2025 12:00",
                json!({"method": "phone", "summary": "x"}),
            )
            .to_string(),
            "occurred_at",
        ),
        (
            "future",
            line(
                "ParentContacted",
                "P1042",
                "2099-01-01T00:00:00Z",
                json!({"method": "phone", "summary": "x"}),
            )
            .to_string(),
            "future",
        ),
        (
            "invalid transition",
            line(
                "InterventionSessionDelivered",
                "P1042",
                "2025-09-16T12:00:00Z",
                json!({"intervention": "INT-404", "attended": true}),
            )
            .to_string(),
            "INT-404",
        ),
        (
            "unregistered pupil",
            line(
                "ParentContacted",
                "P9999",
                "2025-09-16T12:00:00Z",
                json!({"method": "phone", "summary": "x"}),
            )
            .to_string(),
            "registered",
        ),
        (
            "attendance code",
            line(
                "AttendanceMarked",
                "P1042",
                "2025-09-16T08:40:00Z",
                json!({"date": "2025-09-16", "session": "am", "code": "Q9"}),
            )
            .to_string(),
            "Q9",
        ),
        (
            "second registration",
            register("P1042").to_string(),
            "registered",
        ),
    ];
    for (what, bad, needle) in cases {
        let input = format!("{good}\n{bad}\n{good}\n");
        let r = cb.run_stdin(&["import", "-"], &input);
        assert_eq!(r.code, 2, "{what}: exit code\nstderr: {}", r.stderr);
        assert!(
            r.stderr.contains("line 2:"),
            "{what}: stderr should name line 2: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(needle),
            "{what}: stderr should mention {needle:?}: {}",
            r.stderr
        );
        assert_eq!(cb.fingerprint(), before, "{what}: the store changed");
    }
}

#[test]
fn suspensions_past_45_days_in_a_year_are_refused() {
    let cb = Casebook::new();
    cb.import(&[register("P3001")]).ok();
    let susp = |days: f64, start: &str| {
        line(
            "SuspensionIssued",
            "P3001",
            &format!("{start}T09:00:00Z"),
            json!({"days": days, "reason_code": "PD", "start_date": start}),
        )
    };
    cb.import(&[
        susp(20.0, "2025-10-01"),
        susp(20.0, "2025-11-03"),
        susp(5.0, "2026-01-12"),
    ])
    .ok();
    let before = cb.fingerprint();
    let r = cb.import(&[susp(0.5, "2026-02-02")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("line 1:") && r.stderr.contains("45"),
        "{}",
        r.stderr
    );
    assert_eq!(cb.fingerprint(), before);
    // A new academic year starts a new count.
    cb.import(&[susp(1.0, "2026-09-15")]).ok();
    // Half days only.
    let r = cb.import(&[susp(0.3, "2026-09-20")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // The report shows the year's total against the limit.
    let v = cb
        .run(&[
            "report",
            "suspensions",
            "--today",
            "2026-03-01",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert!(
        v.to_string().contains("P3001") && v.to_string().contains("45"),
        "{v}"
    );
}

#[test]
fn record_appends_one_event_and_needs_an_actor() {
    let cb = Casebook::new();
    cb.import(&[register("P1042")]).ok();
    let r = cb.run(&[
        "record",
        "ParentContacted",
        "--pupil",
        "P1042",
        "--data",
        r#"{"method":"phone","summary":"Called home"}"#,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--as"), "{}", r.stderr);
    cb.run(&[
        "record",
        "ParentContacted",
        "--pupil",
        "P1042",
        "--as",
        "S005",
        "--data",
        r#"{"method":"phone","summary":"Called home"}"#,
        "--occurred-at",
        "2025-09-18T16:00:00Z",
    ])
    .ok();
    assert_eq!(cb.fingerprint().0, 2);
    let r = cb.run(&[
        "record",
        "ParentContacted",
        "--pupil",
        "P1042",
        "--as",
        "S005",
        "--data",
        r#"{"method":"phone"}"#,
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("summary"), "{}", r.stderr);
    assert_eq!(cb.fingerprint().0, 2, "a refused record writes nothing");
    // The store in the environment works as well.
    let r = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .env("CASEBOOK_DATA", cb.data())
        .args([
            "record",
            "RewardIssued",
            "--pupil",
            "P1042",
            "--as",
            "S005",
            "--data",
            r#"{"kind":"merit","reason":"Helped a peer"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(cb.fingerprint().0, 3);
}

#[test]
fn timeline_is_ordered_by_occurrence_and_honours_as_of() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let v = cb
        .run(&["timeline", "P1042", "--as", "S001", "--format", "json"])
        .ok()
        .json();
    assert_eq!(v["pupil"], "P1042");
    assert_eq!(v["as_of"], Value::Null);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    for key in [
        "position",
        "event_id",
        "type",
        "occurred_at",
        "recorded_at",
        "actor",
        "summary",
        "data",
    ] {
        assert!(
            entries[0].get(key).is_some(),
            "entry lacks {key}: {}",
            entries[0]
        );
    }
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "ordered by occurred_at");
    // The concern (12 Sep) comes before the incident (15 Sep) although it was imported later.
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let concern = types.iter().position(|t| *t == "ConcernRaised").unwrap();
    let incident = types.iter().position(|t| *t == "IncidentRecorded").unwrap();
    assert!(concern < incident);

    // Safeguarding only.
    let v = cb
        .run(&[
            "timeline",
            "P1042",
            "--safeguarding-only",
            "--format",
            "json",
        ])
        .ok()
        .json();
    let types: Vec<String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, vec!["ConcernRaised", "SafeguardingDecisionMade"]);

    // As of a time before a later recording: that recording is left out.
    let cut = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(20));
    cb.import(&[line(
        "ParentContacted",
        "P1042",
        "2025-09-11T12:00:00Z",
        json!({"method": "phone", "summary": "Late entry"}),
    )])
    .ok();
    let now = cb
        .run(&["timeline", "P1042", "--format", "json"])
        .ok()
        .json();
    let then = cb
        .run(&["timeline", "P1042", "--as-of", &cut, "--format", "json"])
        .ok()
        .json();
    assert_eq!(now["entries"].as_array().unwrap().len(), 8);
    assert_eq!(then["entries"].as_array().unwrap().len(), 7);
    assert!(then["as_of"].is_string());
}

#[test]
fn a_correction_shows_corrected_data_and_keeps_the_original() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let v = cb
        .run(&["timeline", "P1042", "--format", "json"])
        .ok()
        .json();
    let incident = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "IncidentRecorded")
        .unwrap()
        .clone();
    let id = incident["event_id"].as_str().unwrap().to_string();
    let cut = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(20));
    cb.import(&[line(
        "EntryCorrected",
        "P1042",
        "2025-09-16T09:00:00Z",
        json!({"event": id, "changes": {"location": "classroom"}, "reason": "Location recorded wrongly"}),
    )])
    .ok();
    let v = cb
        .run(&["timeline", "P1042", "--format", "json"])
        .ok()
        .json();
    let corrected = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(corrected["data"]["location"], "classroom");
    let corrections = corrected["corrections"]
        .as_array()
        .expect("corrections listed");
    assert_eq!(corrections.len(), 1);
    assert!(
        corrections[0].to_string().contains("corridor"),
        "original kept: {}",
        corrections[0]
    );
    // As of before the correction: the original, uncorrected.
    let then = cb
        .run(&["timeline", "P1042", "--as-of", &cut, "--format", "json"])
        .ok()
        .json();
    let original = then["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(original["data"]["location"], "corridor");
    // A correction must name an event of the same pupil.
    let r = cb.import(&[line(
        "EntryCorrected",
        "P2001",
        "2025-09-16T09:00:00Z",
        json!({"event": id, "changes": {"location": "x"}, "reason": "wrong pupil"}),
    )]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn timeline_renders_csv_markdown_and_html() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let csv = cb
        .run(&["timeline", "P1042", "--format", "csv"])
        .ok()
        .stdout;
    assert!(csv.lines().next().unwrap().contains("occurred_at"));
    assert_eq!(csv.lines().count(), 8);
    let md = cb.run(&["timeline", "P1042", "--format", "md"]).ok().stdout;
    assert!(md.starts_with("# Chronology of P1042"));
    let html = cb
        .run(&["timeline", "P1042", "--format", "html"])
        .ok()
        .stdout;
    assert!(
        html.starts_with("<!doctype html>") && html.contains("</html>") && html.contains("P1042")
    );
    let text = cb.run(&["timeline", "P1042"]).ok().stdout;
    assert!(text.contains("IncidentRecorded"));
    // Register marks can be left out of a chronology.
    cb.import(&[line(
        "AttendanceMarked",
        "P1042",
        "2025-09-16T08:40:00Z",
        json!({"date": "2025-09-16", "session": "am", "code": "/"}),
    )])
    .ok();
    let all = cb
        .run(&["timeline", "P1042", "--format", "json"])
        .ok()
        .json();
    let some = cb
        .run(&[
            "timeline",
            "P1042",
            "--no-register-marks",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 8);
    assert_eq!(some["entries"].as_array().unwrap().len(), 7);
}

#[test]
fn reading_a_record_is_written_to_the_access_log_and_shown_by_audit() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    cb.run(&[
        "timeline",
        "P1042",
        "--as",
        "S001",
        "--purpose",
        "strategy meeting",
    ])
    .ok();
    let v = cb
        .run(&["audit", "P1042", "--as", "A900", "--format", "json"])
        .ok()
        .json();
    let text = v.to_string();
    assert!(
        text.contains("S001") && text.contains("strategy meeting"),
        "the timeline view is in the access log: {v}"
    );
    assert!(
        text.contains("A900"),
        "the audit view itself is logged: {v}"
    );
    // Every event with its hash.
    let hashes = text.matches("\"hash\"").count();
    assert!(hashes >= 7, "{v}");
    // Views are in the chain: verify counts them.
    let (events, _) = cb.fingerprint();
    assert_eq!(events, 8 + 2);
}

#[test]
fn caseload_flags_overdue_reviews_against_today() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let v = cb
        .run(&["caseload", "--today", "2025-10-01", "--format", "json"])
        .ok()
        .json();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(c["pupil"], "P1042");
    assert_eq!(c["keyworker"], "S020");
    assert_eq!(c["next_review_due"], "2025-10-20");
    assert_eq!(c["overdue"], false);
    for key in [
        "case_types",
        "open_plans",
        "open_interventions",
        "last_activity",
    ] {
        assert!(c.get(key).is_some(), "case lacks {key}: {c}");
    }
    let v = cb
        .run(&["caseload", "--today", "2025-11-01", "--format", "json"])
        .ok()
        .json();
    assert_eq!(v["cases"][0]["overdue"], true);
    let v = cb
        .run(&["caseload", "--keyworker", "S999", "--format", "json"])
        .ok()
        .json();
    assert_eq!(v["cases"].as_array().unwrap().len(), 0);
}

#[test]
fn reports_print_text_and_json() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    for by in ["category", "location", "class", "site", "week"] {
        let v = cb
            .run(&["report", "behaviour", "--by", by, "--format", "json"])
            .ok()
            .json();
        assert!(v.to_string().contains('1'), "{by}: {v}");
        cb.run(&["report", "behaviour", "--by", by]).ok();
    }
    cb.run(&[
        "report",
        "attendance",
        "--today",
        "2025-12-01",
        "--format",
        "json",
    ])
    .ok()
    .json();
    cb.run(&[
        "report",
        "attendance",
        "--persistent",
        "--today",
        "2025-12-01",
    ])
    .ok();
    cb.run(&["report", "suspensions", "--today", "2025-12-01"])
        .ok();
    for r in ["force", "interventions", "reintegration"] {
        cb.run(&["report", r, "--format", "json"]).ok().json();
    }
}

#[test]
fn verify_reports_tampering_with_exit_1() {
    for engine in ["sled", "segment"] {
        let cb = Casebook::new();
        cb.run(&["--engine", engine, "init"]).ok();
        cb.import(&history()).ok();
        let r = cb.run(&["verify"]).ok();
        assert!(r.stdout.starts_with("ok: 8 events, head "), "{}", r.stdout);
        // One byte of position 5's stored body changed behind the engine's
        // back (on segment files with the frame checksum recomputed, as a
        // deliberate edit would).
        tamper_body(&cb.data(), engine, 5);
        let r = cb.run(&["verify"]);
        assert_eq!(r.code, 1, "{engine}: {}", r.stdout);
        assert!(r.stdout.contains("position 5"), "{engine}: {}", r.stdout);
        let r = cb.run(&["verify", "--format", "json"]);
        assert_eq!(r.code, 1);
        let v = r.json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"][0]["position"], 5);
    }
}

/// Flips a bit in the stored body of the event at `position` of the
/// default school, straight in the store's files.
fn tamper_body(dir: &Path, engine: &str, position: u64) {
    let flip = |v: &mut Vec<u8>| {
        let n = v.len();
        v[n - 40] ^= 0x01; // in the body, before the 32-byte hash
    };
    if engine == "sled" {
        let db = sled::open(dir).unwrap();
        let tree = db.open_tree("log/default").unwrap();
        let mut key = vec![b'e'];
        key.extend_from_slice(&position.to_be_bytes());
        let mut v = tree.get(&key).unwrap().unwrap().to_vec();
        flip(&mut v);
        tree.insert(key, v).unwrap();
        db.flush().unwrap();
        return;
    }
    use casebook_engine::store::segment::frame::{decode_frame, encode_frame};
    let seg = dir.join("logs/default/00000000000000000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut at = 0;
    loop {
        let (meta, value, len) = decode_frame(&bytes[at..]).unwrap();
        if meta.position == position {
            let mut value = value.to_vec();
            flip(&mut value);
            let mut forged = Vec::new();
            encode_frame(&mut forged, &meta, &value);
            bytes[at..at + len].copy_from_slice(&forged);
            break;
        }
        at += len;
    }
    std::fs::write(&seg, bytes).unwrap();
}

#[test]
fn store_errors_exit_3() {
    let cb = Casebook::new();
    let r = cb.run(&["verify"]);
    assert_eq!(r.code, 3, "a missing store is a store error: {}", r.stderr);
    cb.run(&["init"]).ok();
    // Another process holding the store.
    let _held = open_log(&cb.data(), "default");
    let r = cb.run(&["verify"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_and_global_flags_go_anywhere() {
    let cb = Casebook::new();
    cb.run(&["init"]).ok();
    assert_eq!(cb.run(&["no-such-command"]).code, 2);
    assert_eq!(cb.run(&["caseload", "--today", "yesterday"]).code, 2);
    assert_eq!(cb.run(&["caseload", "--format", "html"]).code, 2);
    // --format before the command name works as well as after.
    let r = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args(["--format", "json", "--data"])
        .arg(cb.data())
        .arg("verify")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0));
    assert!(serde_json::from_slice::<Value>(&r.stdout).is_ok());
}

#[test]
fn rebuild_gives_the_same_views() {
    let cb = Casebook::new();
    cb.import(&history()).ok();
    let before = cb
        .run(&["caseload", "--today", "2025-10-01", "--format", "json"])
        .ok()
        .stdout;
    cb.run(&["rebuild"]).ok();
    let after = cb
        .run(&["caseload", "--today", "2025-10-01", "--format", "json"])
        .ok()
        .stdout;
    assert_eq!(before, after);
    cb.run(&["rebuild", "caseload"]).ok();
    assert_eq!(cb.run(&["rebuild", "no-such-projection"]).code, 2);
}

#[test]
fn demo_writes_a_school_that_verifies() {
    let cb = Casebook::new();
    let r = cb.run(&["demo", "--pupils", "30", "--seed", "7"]).ok();
    assert!(r.stdout.contains("PupilRegistered"), "{}", r.stdout);
    let (events, _) = cb.fingerprint();
    assert!(
        events > 30 * 300,
        "a school year of attendance marks: {events}"
    );
    // A demo refuses to write into a school that has data, and years it
    // cannot simulate.
    assert_eq!(cb.run(&["demo", "--pupils", "5"]).code, 2);
    assert_eq!(
        cb.run(&["--school", "old", "demo", "--pupils", "5", "--year", "1960"])
            .code,
        2
    );
    assert_eq!(
        cb.run(&["--school", "future", "demo", "--pupils", "5", "--year", "2090"])
            .code,
        2
    );
    let _ = cb.path();
}

/// The commands answer the same whether the store's index is read from its
/// snapshot (written at every close here) or rebuilt from every frame
/// (`CASEBOOK_FULL_OPEN_SCAN`), and the store verifies both ways. The
/// caseload and the reports open with the event ids left in the snapshot:
/// a correction recorded after the demo sends their catch-up to look its
/// entry up by id, which reads them. They also open keeping only where
/// each group of positions starts (`sparse_index`): the log after a checkpoint
/// is read in order from a group's start, a correction's entry found by
/// walking its group's frames.
#[test]
fn commands_answer_the_same_from_the_index_snapshot() {
    let cb = Casebook::new();
    let attempt = |env: (&str, &str), args: &[&str]| {
        let out = cb
            .command(args)
            .env("CASEBOOK_SNAPSHOT_MIN_EVENTS", "1")
            .env(env.0, env.1)
            .output()
            .expect("run casebook");
        Run::from(out)
    };
    let run = |env: (&str, &str), args: &[&str]| attempt(env, args).ok();
    let snapshot = ("CASEBOOK_UNUSED", "");
    let full = ("CASEBOOK_FULL_OPEN_SCAN", "1");
    // The year the report below is pinned to (`--today 2026-07-17`), not
    // the last complete one before the day the test runs.
    run(
        snapshot,
        &["demo", "--pupils", "12", "--seed", "3", "--year", "2025"],
    );
    let index = cb.data().join("logs").join("default").join("index");
    assert!(index.exists(), "no index snapshot after the demo");
    let timeline = run(snapshot, &["timeline", "P00004", "--format", "json"]).json();
    let mark = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "AttendanceMarked" && e["data"]["code"] == "/")
        .expect("a present mark")["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let correction =
        json!({"event": mark, "changes": {"code": "O"}, "reason": "register corrected"});
    let report = [
        "report",
        "attendance",
        "--format",
        "json",
        "--today",
        "2026-07-17",
    ];
    let unauthorised = |doc: serde_json::Value| {
        doc["pupils"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pupil"] == "P00004")
            .expect("P00004 listed")["unauthorised"]
            .as_u64()
            .unwrap()
    };
    let before = unauthorised(run(snapshot, &report).json());
    run(
        snapshot,
        &[
            "record",
            "EntryCorrected",
            "--pupil",
            "P00004",
            "--as",
            "S001",
            "--data",
            &correction.to_string(),
        ],
    );
    assert_eq!(unauthorised(run(snapshot, &report).json()), before + 1);
    // A `record --id` looks its id up among the stored ones, which an open
    // that left them in the snapshot reads then: the same line again is a
    // duplicate, and the id of a stored entry with other content is
    // refused, as on an open that read them.
    let incident = json!({"category": "verbal_abuse_pupil", "severity": 2,
        "location": "hall", "description": "synthetic entry"})
    .to_string();
    let record_with_id = |id: &str| {
        attempt(
            snapshot,
            &[
                "record",
                "IncidentRecorded",
                "--pupil",
                "P00004",
                "--as",
                "S001",
                "--occurred-at",
                "2026-07-10T10:00:00Z",
                "--id",
                id,
                "--data",
                &incident,
            ],
        )
    };
    let own = "01900000-0000-7000-8000-00000000c0de";
    assert!(record_with_id(own).ok().stdout.starts_with("recorded"));
    let again = record_with_id(own).ok();
    assert!(
        again.stdout.starts_with("already recorded"),
        "{}",
        again.stdout
    );
    let taken = record_with_id(&mark);
    assert_eq!(taken.code, 2, "{}", taken.stderr);
    assert!(taken.stderr.contains("already stored"), "{}", taken.stderr);
    // An import opens reading only too: lines without an `id` are appended
    // with ids the planner minted, without reading the stored ones; a file
    // with ids reads them when they are looked up (the second run of it is
    // all duplicates); a legal hold records its one event with a minted id.
    let import = |text: &str| {
        let mut command = cb.command(&["import", "-", "--as", "S001"]);
        command.env("CASEBOOK_SNAPSHOT_MIN_EVENTS", "1");
        let done = piped(command, text);
        assert_eq!(done.code, 0, "{}", done.stderr);
        done
    };
    let line = |pupil: &str, id: Option<&str>| {
        let mut l = json!({"type": "AttendanceMarked", "pupil": pupil,
            "occurred_at": "2026-07-20T09:00:00Z", "actor": "S001",
            "data": {"date": "2026-07-20", "session": "pm", "code": "/"}});
        if let Some(id) = id {
            l["id"] = json!(id);
        }
        format!("{l}\n")
    };
    let minted = line("P00001", None) + &line("P00002", None);
    assert!(import(&minted)
        .stdout
        .contains("imported 2 events (0 duplicates)"));
    let given = line("P00003", Some("01900000-0000-7000-8000-00000000c0d1"));
    assert!(import(&given)
        .stdout
        .contains("imported 1 events (0 duplicates)"));
    assert!(import(&given)
        .stdout
        .contains("imported 0 events (1 duplicates)"));
    run(
        snapshot,
        &[
            "hold",
            "P00005",
            "--reason",
            "synthetic hold",
            "--as",
            "S001",
        ],
    );
    let behaviour = [
        "report",
        "behaviour",
        "--format",
        "json",
        "--today",
        "2026-07-17",
    ];
    // A retention run's listing (every pupil due by 2060, none erased)
    // reads the log in order; the staff list reads its stream.
    let retention = [
        "retention",
        "--format",
        "json",
        "--today",
        "2060-01-01",
        "--as",
        "S001",
    ];
    let compared: [&[&str]; 6] = [
        &["timeline", "P00004", "--format", "json"],
        &["caseload", "--format", "json", "--today", "2026-07-17"],
        &report,
        &behaviour,
        &retention,
        &["staff", "list", "--format", "json"],
    ];
    for args in compared {
        let a = run(snapshot, args).json();
        let b = run(full, args).json();
        assert_eq!(a, b, "{args:?}");
    }
    assert_eq!(
        run(snapshot, &retention).json()["pupils"]
            .as_array()
            .map(Vec::len),
        Some(12)
    );
    // A subject-access export, but for the time it was made.
    let export = |env| {
        let mut doc = run(
            env,
            &["export", "P00004", "--as", "S001", "--format", "json"],
        )
        .json();
        doc.as_object_mut()
            .expect("an object")
            .remove("generated_at");
        doc
    };
    assert_eq!(export(snapshot), export(full));
    // A rebuild from the snapshot, then the views it wrote, against a
    // rebuild from every frame.
    let mut rebuilt = Vec::new();
    for env in [snapshot, full] {
        assert!(run(env, &["rebuild"]).stdout.starts_with("rebuilt"));
        rebuilt.push([&report, &behaviour].map(|args| run(snapshot, args).json()));
    }
    assert_eq!(rebuilt[0], rebuilt[1]);
    for env in [snapshot, full] {
        let v = run(env, &["verify", "--format", "json"]).json();
        assert_eq!(v["ok"], true, "{v}");
    }
    // A damaged snapshot: a note on stderr, the same answer, and the next
    // command (after the snapshot was written again) has no note.
    let args = ["timeline", "P00004", "--format", "json"];
    let before = run(snapshot, &args);
    let mut bytes = std::fs::read(&index).unwrap();
    // A byte of the id hashes' seed (bytes 52..60): a timeline leaves the
    // ids in the file, so only the checksum of the header and the
    // directory sees it.
    bytes[55] ^= 1;
    std::fs::write(&index, &bytes).unwrap();
    let noted = run(snapshot, &args);
    assert!(
        noted.stderr.contains("index snapshot") && noted.stderr.contains("checksum mismatch"),
        "{}",
        noted.stderr
    );
    assert_eq!(noted.json(), before.json());
    let after = run(snapshot, &args);
    assert!(!after.stderr.contains("index snapshot"), "{}", after.stderr);
}

/// The `AnonHugePages` of a running `casebook import -` waiting on its
/// input, in kB, once its main thread has slept on it for 100 ms; with
/// `thp` it is run with `MIMALLOC_ALLOW_THP=1` (mimalloc's own switch,
/// which keeps huge pages).
#[cfg(target_os = "linux")]
fn huge_pages_of_a_waiting_import(cb: &Casebook, thp: bool) -> u64 {
    let mut command = cb.command(&["import", "-", "--as", "S001"]);
    if thp {
        command.env("MIMALLOC_ALLOW_THP", "1");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn casebook");
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let sleeping = || {
        std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| s.rsplit(") ").next().map(|rest| rest.starts_with('S')))
            .unwrap_or(false)
    };
    let (mut asleep, started) = (0, std::time::Instant::now());
    while asleep < 5 && started.elapsed() < std::time::Duration::from_secs(20) {
        asleep = if sleeping() { asleep + 1 } else { 0 };
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rollup = std::fs::read_to_string(proc.join("smaps_rollup")).unwrap_or_default();
    drop(child.stdin.take());
    child.wait().expect("wait for casebook");
    assert!(asleep >= 5, "the import never waited on its input");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("AnonHugePages in smaps_rollup")
}

/// A command starts without transparent huge pages: the allocator's
/// options are set when the program is loaded, before the Rust runtime's
/// first allocation (src/main.rs); set from `main`, they came after it,
/// and every command started with 4 MiB of huge pages resident. The same
/// import with mimalloc's own switch on shows what the check measures:
/// where the machine gives that one huge pages, the check could fail.
#[cfg(target_os = "linux")]
#[test]
fn a_command_starts_without_huge_pages() {
    let cb = Casebook::new();
    cb.run(&["demo", "--pupils", "2"]).ok();
    assert_eq!(huge_pages_of_a_waiting_import(&cb, false), 0);
    if huge_pages_of_a_waiting_import(&cb, true) == 0 {
        eprintln!("note: this machine gave no huge pages even when asked; the check above could not have failed here");
    }
}

/// `casebook timeline P | head`: when the reader goes away the command ends
/// quietly (SIGPIPE), never with a panic on the broken pipe.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::io::Read;
    let cb = Casebook::new();
    cb.run(&["demo", "--pupils", "3"]).ok();
    // A pupil's whole timeline as JSON is far larger than a pipe's buffer.
    let mut child = cb
        .command(&["timeline", "P00001", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn casebook");
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("first byte");
    // The read end is dropped here: later writes get EPIPE.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(first[0], b'{');
}

/// A day's register for a school of more than `known::MIN_PUPILS` pupils
/// saves the import planner's facts checkpoint, and the next day's starts
/// every pupil from it: the same refusal as without it (a session marked
/// twice); a damaged checkpoint is named in a note, not used, and
/// replaced by the import's own.
#[test]
fn a_days_register_starts_from_the_facts_the_last_one_saved() {
    use casebook_engine::known;
    let cb = Casebook::new();
    let pupils: Vec<String> = (1..=known::MIN_PUPILS + 44)
        .map(|n| format!("R{n:04}"))
        .collect();
    let registered: Vec<Value> = pupils.iter().map(|p| register(p)).collect();
    assert_imported(&cb.import(&registered).ok(), pupils.len(), 0);
    let day = |date: &str| -> Vec<Value> {
        pupils
            .iter()
            .map(|p| {
                line(
                    "AttendanceMarked",
                    p,
                    &format!("{date}T08:45:00Z"),
                    json!({"date": date, "session": "am", "code": "/"}),
                )
            })
            .collect()
    };
    let first = cb.import(&day("2025-11-10")).ok();
    assert_imported(&first, pupils.len(), 0);
    assert!(!first.stderr.contains("note:"), "{}", first.stderr);
    let saved = stored_checkpoint(&cb, known::CHECKPOINT).expect("the checkpoint saved");
    assert!(known::decode(&saved).is_ok());
    // The same day again: every session is marked already, in the
    // checkpoint's facts.
    let again = cb.import(&day("2025-11-10"));
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("line 1:") && again.stderr.contains("is already marked"),
        "{}",
        again.stderr
    );
    let second = cb.import(&day("2025-11-11")).ok();
    assert_imported(&second, pupils.len(), 0);
    assert!(!second.stderr.contains("note:"), "{}", second.stderr);
    // Damaged: not used, said once, and replaced.
    let mut damaged = stored_checkpoint(&cb, known::CHECKPOINT).expect("the checkpoint saved");
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let log = open_log(&cb.data(), "default");
    crate::block_on(log.save_checkpoint(known::CHECKPOINT, damaged)).expect("save");
    drop(log);
    let third = cb.import(&day("2025-11-12")).ok();
    assert_imported(&third, pupils.len(), 0);
    assert_eq!(third.stderr.matches("note:").count(), 1, "{}", third.stderr);
    assert!(
        third
            .stderr
            .contains("the facts checkpoint was not used (its checksum does not match its bytes)"),
        "{}",
        third.stderr
    );
    let fourth = cb.import(&day("2025-11-13")).ok();
    assert!(!fourth.stderr.contains("note:"), "{}", fourth.stderr);
    let (events, _) = cb.fingerprint();
    assert_eq!(events, 5 * pupils.len() as u64);
}

/// The checkpoint `name` of the default school's log (the binary must
/// have exited).
fn stored_checkpoint(cb: &Casebook, name: &str) -> Option<Vec<u8>> {
    let log = open_log(&cb.data(), "default");
    crate::block_on(log.load_checkpoint(name)).expect("read the checkpoint")
}
