//! Crypto-shredding, erasure, legal hold, retention, subject-access export
//! and CP-file transfer, through the real binary (docs/security.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use casebook_engine::envelope::StreamId;
use casebook_engine::seal::{Keyring, SecretKey};
use serde_json::Value;

/// A temporary store with (or without) a master key file.
struct Store {
    dir: tempfile::TempDir,
    keyed: bool,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

const MASTER: [u8; 32] = [0x5a; 32];

impl Store {
    fn new(keyed: bool) -> Store {
        let dir = tempfile::tempdir().expect("temp dir");
        let hex: String = MASTER.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("master.key"), hex).expect("write master key");
        Store { dir, keyed }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn run_as(&self, actor: &str, args: &[&str]) -> Out {
        let mut c = Command::new(env!("CARGO_BIN_EXE_casebook"));
        c.arg("--data").arg(self.data());
        if self.keyed {
            c.arg("--key-file").arg(self.dir.path().join("master.key"));
        }
        c.args(["--as", actor])
            .args(args)
            .env_remove("CASEBOOK_DATA")
            .env_remove("CASEBOOK_DATABASE_URL")
            .env_remove("CASEBOOK_SCHOOL")
            .env_remove("CASEBOOK_ACTOR")
            .env_remove("CASEBOOK_KEY_FILE")
            .env_remove("CASEBOOK_MASTER_KEY")
            .env_remove("CASEBOOK_TRANSFER_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = c.output().expect("run casebook");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_as("dsl.jones", args)
    }

    fn record(&self, ty: &str, pupil: &str, data: &str, at: &str) {
        self.run(&[
            "record",
            ty,
            "--pupil",
            pupil,
            "--data",
            data,
            "--occurred-at",
            at,
        ])
        .ok();
    }

    fn register(&self, pupil: &str, name: &str, dob: &str) {
        self.record(
            "PupilRegistered",
            pupil,
            &format!(r#"{{"name":"{name}","date_of_birth":"{dob}","year_group":9}}"#),
            "2024-09-02T09:00:00Z",
        );
    }

    fn key_of(&self, pupil: &str) -> Option<SecretKey> {
        let ring = Keyring::open(&self.data(), "default", SecretKey::from_bytes(MASTER));
        ring.get(StreamId::for_pupil("default", pupil))
            .expect("key file readable")
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

const NAME: &str = "Zephyrine Quillfeather";
const DESCRIPTION: &str = "pushed a classmate beside the xylophonic marmalade gate";

fn seed(s: &Store) {
    s.register("P1", NAME, "2000-03-04");
    s.register("P2", "Barnaby Thistlewood", "2010-05-06");
    s.record(
        "IncidentRecorded",
        "P1",
        &format!(
            r#"{{"category":"bullying","severity":3,"location":"yard","description":"{DESCRIPTION}","role":"perpetrator","participants":[{{"pupil":"P2","role":"target"}}]}}"#
        ),
        "2025-01-02T10:00:00Z",
    );
    s.record(
        "ConcernRaised",
        "P1",
        r#"{"category":"neglect","summary":"arrived hungry, said the quokka-shaped lunchbox was empty"}"#,
        "2025-01-03T10:00:00Z",
    );
}

#[test]
fn privacy_control_plaintext_store_holds_the_text_in_its_files() {
    // The search below is the one the sealed tests rely on: without a
    // master key (v1 behaviour) it does find the plaintext.
    let s = Store::new(false);
    seed(&s);
    s.run(&["report", "behaviour"]).ok();
    assert!(!files_containing(&s.data(), DESCRIPTION.as_bytes()).is_empty());
    assert!(!s.data().join("keys").exists());
    let erase = s.run(&["erase", "P1", "--reason", "test"]);
    assert_eq!(
        erase.code, 2,
        "erase without a key is refused: {}",
        erase.stderr
    );
    assert!(erase.stderr.contains("sealed store"), "{}", erase.stderr);
}

#[test]
fn privacy_sealed_fields_never_reach_the_files_and_erasure_leaves_nothing() {
    let s = Store::new(true);
    seed(&s);
    // Readers see the plaintext; checkpointed views are written too.
    let tl = s.run(&["timeline", "P1"]).ok();
    assert!(tl.stdout.contains(NAME), "{}", tl.stdout);
    let tl_json = s.run(&["--format", "json", "timeline", "P1"]).ok().json();
    assert_eq!(
        tl_json["entries"][1]["data"]["description"].as_str(),
        Some(DESCRIPTION)
    );
    s.run(&["report", "behaviour"]).ok();
    s.run(&["caseload"]).ok();
    for text in [NAME, DESCRIPTION, "quokka-shaped"] {
        assert_eq!(
            files_containing(&s.data(), text.as_bytes()),
            Vec::<PathBuf>::new(),
            "{text:?} stored in the clear"
        );
    }
    let key = s.key_of("P1").expect("P1 has a data key");
    let key_file = std::fs::read(
        s.data()
            .join("keys/default")
            .join(format!("{}.key", StreamId::for_pupil("default", "P1"))),
    )
    .expect("key file");
    assert!(
        files_containing(&s.data(), key.bytes()).is_empty(),
        "raw key on disk"
    );

    s.run(&["erase", "P1", "--reason", "retention period ended"])
        .ok();
    // Reopen: verify reads every event and the whole chain still holds.
    let v = s.run(&["verify"]).ok();
    assert!(v.stdout.starts_with("ok:"), "{}", v.stdout);
    for text in [NAME, DESCRIPTION, "quokka-shaped"] {
        assert!(files_containing(&s.data(), text.as_bytes()).is_empty());
    }
    assert!(files_containing(&s.data(), key.bytes()).is_empty());
    assert!(
        files_containing(&s.data(), &key_file[4..]).is_empty(),
        "wrapped key left"
    );
    assert!(s.key_of("P1").is_none());
    // Readers show the erasure; the other pupil is untouched; counts remain.
    let tl = s.run(&["--format", "json", "timeline", "P1"]).ok().json();
    let text = tl.to_string();
    assert!(!text.contains("Zephyrine"));
    assert!(
        text.contains("[erased on ") && text.contains("retention period ended"),
        "{text}"
    );
    assert!(s.run(&["timeline", "P2"]).ok().stdout.contains("Barnaby"));
    let report = s
        .run(&["--format", "json", "report", "behaviour"])
        .ok()
        .json();
    assert_eq!(report["incidents"], 1, "{report}");
    // Nothing more can be recorded for an erased pupil.
    let late = s.run(&[
        "record",
        "ParentContacted",
        "--pupil",
        "P1",
        "--data",
        r#"{"method":"phone","summary":"x"}"#,
    ]);
    assert_eq!(late.code, 2, "{}", late.stderr);
    // Without the master key the sealed store refuses to write in the clear.
    let unkeyed = Store {
        dir: tempfile::tempdir().expect("temp dir"),
        keyed: false,
    };
    let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .arg("--data")
        .arg(s.data())
        .args(["--as", "x", "record", "ParentContacted", "--pupil", "P2"])
        .args(["--data", r#"{"method":"phone","summary":"x"}"#])
        .env_remove("CASEBOOK_KEY_FILE")
        .env_remove("CASEBOOK_MASTER_KEY")
        .env_remove("CASEBOOK_DATA")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    drop(unkeyed);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no master key"));
}

#[test]
fn privacy_legal_hold_blocks_erasure_until_lifted() {
    let s = Store::new(true);
    seed(&s);
    s.run(&["hold", "P1", "--reason", "IICSA legal hold"]).ok();
    let refused = s.run(&["erase", "P1", "--reason", "x"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("legal hold"), "{}", refused.stderr);
    assert!(s.key_of("P1").is_some(), "key kept while held");
    s.run(&["hold", "P1", "--reason", "inquiry closed", "--lift"])
        .ok();
    s.run(&["erase", "P1", "--reason", "x"]).ok();
    assert!(s.key_of("P1").is_none());
}

#[test]
fn privacy_retention_lists_by_record_type_and_applies_except_held() {
    let s = Store::new(true);
    // P1: born 2000, safeguarding + behaviour: ends 2025-03-04.
    seed(&s);
    // P3: born 2000 with SEN: kept until 2031.
    s.record(
        "PupilRegistered",
        "P3",
        r#"{"name":"Cordelia Wimbleton","date_of_birth":"2000-01-01","year_group":9,"sen":true}"#,
        "2024-09-02T09:00:00Z",
    );
    // P4: born 2000, held.
    s.register("P4", "Ignatius Pemberton", "2000-02-02");
    s.run(&["hold", "P4", "--reason", "IICSA"]).ok();
    let list = s
        .run(&["--format", "json", "--today", "2026-01-01", "retention"])
        .ok()
        .json();
    let pupils = list["pupils"].as_array().expect("pupils");
    let status = |p: &str| {
        pupils
            .iter()
            .find(|x| x["pupil"] == p)
            .map(|x| x["status"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(status("P1").as_deref(), Some("due"), "{list}");
    assert_eq!(status("P4").as_deref(), Some("held"));
    assert_eq!(status("P3"), None, "SEND record kept to DOB + 31");
    assert_eq!(status("P2"), None, "born 2010");
    let p1 = pupils.iter().find(|x| x["pupil"] == "P1").expect("P1");
    let types: Vec<&str> = p1["by_record_type"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t["record"].as_str())
        .collect();
    assert!(types.contains(&"safeguarding") && types.contains(&"behaviour"));
    s.run(&["--today", "2026-01-01", "retention", "--apply"])
        .ok();
    assert!(s.key_of("P1").is_none(), "due record erased");
    assert!(s.key_of("P4").is_some(), "held record kept");
    assert!(s.key_of("P3").is_some());
    s.run(&["verify"]).ok();
    // At 2031-01-02 the SEND record's period has ended too.
    let later = s
        .run(&["--format", "json", "--today", "2031-01-02", "retention"])
        .ok()
        .json();
    assert!(later["pupils"]
        .as_array()
        .expect("pupils")
        .iter()
        .any(|x| x["pupil"] == "P3" && x["status"] == "due"));
}

/// `retention --apply` erases no one its view lists as due unless the
/// pupil's own record, read again, says so too: a view whose checkpoint
/// says otherwise (here written by hand at the log's head: a date of birth
/// the log never held) erases nobody, and says why; rebuilt, it lists the
/// record as kept.
#[test]
fn privacy_retention_apply_reads_each_record_again_before_erasing() {
    use casebook_engine::envelope::NewEvent;
    use casebook_engine::event::CaseEvent;
    use casebook_engine::RecordedEvent;
    use casebook_projections::runner::encode_checkpoint;
    use casebook_projections::{Projection, Retention};
    let s = Store::new(true);
    // Born 2015: kept until 2040.
    s.register("P5", "Perpetua Quillfeather", "2015-05-05");
    let log = crate::cli::open_log(&s.data(), "default");
    let head = crate::block_on(log.head()).expect("head");
    let registered = crate::block_on(log.read_all(1, 10)).expect("read")[0].clone();
    // The view as a checkpoint folded from a registration born 2000 says.
    let event = CaseEvent::from_type_and_data(
        "PupilRegistered",
        serde_json::json!({"pupil": "P5", "name": "x", "date_of_birth": "2000-05-05", "year_group": 9}),
    )
    .expect("event");
    let mut stored = registered;
    let new = NewEvent::new(&event, stored.occurred_at, "S1").expect("new");
    stored.payload = new.payload;
    let mut view = Retention::default();
    view.apply(&RecordedEvent::from_parts(stored, event), None);
    let bytes = encode_checkpoint(&view, head.position, head.hash).expect("encode");
    crate::block_on(log.save_checkpoint(Retention::NAME, bytes)).expect("save");
    drop(log);
    let listed = s
        .run(&["--format", "json", "--today", "2026-01-01", "retention"])
        .ok()
        .json();
    assert_eq!(listed["pupils"][0]["status"], "due", "{listed}");
    let applied = s
        .run(&[
            "--format",
            "json",
            "--today",
            "2026-01-01",
            "retention",
            "--apply",
        ])
        .ok();
    assert!(
        applied.stderr.contains("P5 not erased") && applied.stderr.contains("says kept"),
        "{}",
        applied.stderr
    );
    assert_eq!(applied.json()["erased"], serde_json::json!([]));
    assert!(s.key_of("P5").is_some(), "the record was not erased");
    s.run(&["rebuild", "retention"]).ok();
    let rebuilt = s
        .run(&["--format", "json", "--today", "2026-01-01", "retention"])
        .ok()
        .json();
    assert_eq!(rebuilt["pupils"], serde_json::json!([]), "{rebuilt}");
}

#[test]
fn privacy_subject_access_export_withholds_the_other_pupil() {
    let s = Store::new(true);
    seed(&s);
    s.record(
        "IncidentRecorded",
        "P1",
        r#"{"category":"fighting","severity":2,"location":"canteen","description":"Barnaby Thistlewood and P1 argued; Barnaby walked off","role":"involved","participants":[{"pupil":"P2","role":"involved"}]}"#,
        "2025-01-04T10:00:00Z",
    );
    let json = s
        .run(&["--format", "json", "export", "P1", "--for", "subject"])
        .ok();
    let doc = json.json();
    assert!(!json.stdout.contains("Barnaby"), "{}", json.stdout);
    assert!(!json.stdout.contains("Thistlewood"));
    assert!(!json.stdout.contains("\"P2\""));
    assert!(
        json.stdout.contains(NAME),
        "the subject's own data is given"
    );
    assert!(json.stdout.contains(DESCRIPTION));
    let redactions = doc["redactions"].as_array().expect("manifest");
    assert!(redactions
        .iter()
        .any(|r| r["field"] == "data.participants[0].pupil" && r["type"] == "IncidentRecorded"));
    assert!(redactions.iter().any(|r| r["field"] == "data.description"));
    assert!(redactions
        .iter()
        .all(|r| r["reason"].as_str().is_some_and(|t| !t.is_empty())));
    let html = s
        .run(&["--format", "html", "export", "P1", "--for", "subject"])
        .ok();
    assert!(html.stdout.starts_with("<!DOCTYPE html>"));
    assert!(!html.stdout.contains("Barnaby"));
    assert!(html.stdout.contains("Redactions"));
    // The export is logged as a reading of the record.
    let audit = s.run(&["--format", "json", "audit", "P1"]).ok().json();
    assert!(audit.to_string().contains("\"export\""), "{audit}");
}

/// Sends P1 from a school-`default` store to a new store as school `b`:
/// (receiver, bundle path, transfer key).
fn send(s: &Store) -> (Store, PathBuf, String) {
    let bundle = s.dir.path().join("p1.cbt.json");
    let out = s
        .run(&[
            "transfer-out",
            "P1",
            "--to",
            "b",
            "--out",
            bundle.to_str().expect("utf-8 path"),
        ])
        .ok();
    let key = out
        .stdout
        .lines()
        .find_map(|l| l.split("bundle): ").nth(1))
        .expect("transfer key printed")
        .trim()
        .to_string();
    assert!(out.stdout.contains("signer fingerprint: "));
    (Store::new(true), bundle, key)
}

#[test]
fn privacy_transfer_moves_the_sealed_record_with_proof_and_provenance() {
    let s = Store::new(true);
    seed(&s);
    let (b, bundle, key) = send(&s);
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    assert!(!text.contains("Zephyrine") && !text.contains("xylophonic"));
    let got = b.run(&[
        "--school",
        "b",
        "transfer-in",
        bundle.to_str().expect("utf-8 path"),
        "--transfer-key",
        &key,
    ]);
    let got = got.ok();
    assert!(got.stdout.contains("verified"), "{}", got.stdout);
    let tl = b
        .run(&["--school", "b", "--format", "json", "timeline", "P1"])
        .ok()
        .json();
    let t = tl.to_string();
    assert!(t.contains(NAME) && t.contains(DESCRIPTION), "{t}");
    assert!(t.contains("TransferredIn"));
    b.run(&["--school", "b", "verify"]).ok();
    let sent = s.run(&["--format", "json", "timeline", "P1"]).ok().json();
    assert!(sent.to_string().contains("TransferredOut"));
    // Erasure at the receiver destroys the received key too.
    b.run(&["--school", "b", "erase", "P1", "--reason", "left"])
        .ok();
    let after = b
        .run(&["--school", "b", "--format", "json", "timeline", "P1"])
        .ok()
        .json();
    assert!(!after.to_string().contains("Zephyrine"), "{after}");
    assert!(files_containing(&b.data(), NAME.as_bytes()).is_empty());
}

#[test]
fn privacy_transfer_refuses_an_altered_bundle_and_writes_nothing() {
    let s = Store::new(true);
    seed(&s);
    let (b, bundle, key) = send(&s);
    let original = std::fs::read(&bundle).expect("bundle");
    let text = String::from_utf8(original.clone()).expect("utf-8");
    // Places to flip: inside an event's bytes, inside the signed statement,
    // inside the signature.
    let in_events = text.find("\"events\": [").expect("events") + 40;
    let in_statement = text.find("head_hash").expect("statement") + 20;
    let in_signature = text.find("\"signature\": \"").expect("signature") + 20;
    for (at, what) in [
        (in_events, "event"),
        (in_statement, "MAC"),
        (in_signature, "signature"),
    ] {
        let mut bytes = original.clone();
        // Swap one base64/hex letter for another, keeping the JSON valid.
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = s.dir.path().join("tampered.json");
        std::fs::write(&tampered, &bytes).expect("write");
        let out = b.run(&[
            "--school",
            "b",
            "transfer-in",
            tampered.to_str().expect("utf-8 path"),
            "--transfer-key",
            &key,
        ]);
        assert_eq!(out.code, 2, "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains("transfer bundle refused") && out.stderr.contains(what),
            "{what}: {}",
            out.stderr
        );
    }
    let wrong = "11".repeat(32);
    let out = b.run(&[
        "--school",
        "b",
        "transfer-in",
        bundle.to_str().expect("utf-8 path"),
        "--transfer-key",
        &wrong,
    ]);
    assert_eq!(out.code, 2);
    // Nothing was written: not even the store.
    assert!(!b.data().exists());
}

#[test]
fn privacy_sealed_import_stays_idempotent() {
    // Sealing is deterministic (synthetic nonce), so an import run twice
    // finds its lines already stored instead of conflicting.
    let s = Store::new(true);
    let file = s.dir.path().join("lines.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"id":"0190a000-0000-7000-8000-000000000001","type":"PupilRegistered","pupil":"P9","occurred_at":"2024-09-02T09:00:00Z","actor":"S1","data":{"name":"Octavia Fernsby","date_of_birth":"2012-04-05","year_group":7}}"#,
            "\n",
            r#"{"id":"0190a000-0000-7000-8000-000000000002","type":"ParentContacted","pupil":"P9","occurred_at":"2024-09-03T09:00:00Z","actor":"S1","data":{"method":"phone","summary":"spoke about the lost trombone"}}"#,
            "\n"
        ),
    )
    .expect("write lines");
    let path = file.to_str().expect("utf-8 path");
    let first = s.run(&["import", path]).ok();
    assert!(
        first.stdout.contains("imported 2 events (0 duplicates)"),
        "{}",
        first.stdout
    );
    let again = s.run(&["import", path]).ok();
    assert!(
        again.stdout.contains("imported 0 events (2 duplicates)"),
        "{}",
        again.stdout
    );
    assert!(files_containing(&s.data(), b"lost trombone").is_empty());
    assert!(files_containing(&s.data(), b"Octavia").is_empty());
    // The system events are not importable.
    let erased = s.dir.path().join("erased.jsonl");
    std::fs::write(
        &erased,
        r#"{"type":"PupilErased","pupil":"P9","occurred_at":"2024-09-04T09:00:00Z","actor":"S1","data":{"reason":"x"}}"#,
    )
    .expect("write line");
    let out = s.run(&["import", erased.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("written by casebook itself"),
        "{}",
        out.stderr
    );
}

#[test]
fn privacy_text_posing_as_a_sealed_field_is_refused() {
    let s = Store::new(true);
    s.register("P1", NAME, "2000-03-04");
    let out = s.run(&[
        "record",
        "ParentContacted",
        "--pupil",
        "P1",
        "--data",
        r#"{"method":"phone","summary":"sealed:v1:AAAA"}"#,
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("reserved"), "{}", out.stderr);
}
