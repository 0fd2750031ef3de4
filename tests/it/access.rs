//! Roles and the access log (docs/security.md): the role × command matrix
//! through the real binary, single-user mode, unknown actors, the last
//! admin, and the engine's own filtering when called directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use casebook_engine::access::{
    role_granted, staff_registered, AccessError, Actor, Guarded, Role, View,
};
use casebook_engine::envelope::{NewEvent, StreamId};
use casebook_engine::event::CaseEvent;
use casebook_engine::import::{event_from_json, ImportPlan};
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion};
use casebook_engine::StoredEvent;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::cli::{line, Casebook, Run};

/// Registers ADM1 as the first admin of `school`'s empty staff directory
/// (the bootstrap single-user mode allows) and returns them as an actor.
pub(crate) async fn first_admin(guarded: &mut Guarded, school: &str, now: DateTime<Utc>) -> Actor {
    guarded
        .change_directory(
            &Actor::single_user("ADM1"),
            staff_registered("ADM1", "Admin", &[Role::Admin]),
            now,
        )
        .await
        .unwrap();
    guarded.directory().actor(Some("ADM1"), school).unwrap()
}

/// One member of staff per role.
const STAFF: &[(&str, &str)] = &[
    ("DSL1", "dsl"),
    ("DEP1", "deputy_dsl"),
    ("PAS1", "pastoral"),
    ("KW1", "keyworker"),
    ("TEA1", "teacher"),
    ("AUD1", "auditor"),
    ("ADM1", "admin"),
];

/// Every stored event of the default school, read straight from the store
/// (the binary has exited, so the store is free).
fn all_events(cb: &Casebook) -> Vec<StoredEvent> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let log = crate::cli::open_log(&cb.data(), "default");
        let mut out = Vec::new();
        loop {
            let page = log
                .read_all(out.len() as u64 + 1, 10_000)
                .await
                .expect("read");
            if page.is_empty() {
                break;
            }
            out.extend(page);
        }
        out
    })
}

fn refusals_by_staff(cb: &Casebook) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in all_events(cb) {
        if e.event_type == "AccessRefused" {
            if let Ok(CaseEvent::AccessRefused(r)) = e.case_event() {
                *out.entry(r.staff).or_default() += 1;
            }
        }
    }
    out
}

/// A school with an admin, one member of staff per role, pupil P1 (whose
/// keyworker is KW1, with a safeguarding concern and an incident) and P2
/// (nobody's caseload).
fn school() -> Casebook {
    let cb = Casebook::new();
    cb.run(&["init", "--admin", "ADM1", "--name", "Office Admin"])
        .ok();
    for (staff, role) in STAFF.iter().filter(|(s, _)| *s != "ADM1") {
        cb.run(&[
            "--as",
            "ADM1",
            "staff",
            "add",
            staff,
            "--name",
            "Staff Member",
            "--role",
            role,
        ])
        .ok();
    }
    let lines = [
        line(
            "PupilRegistered",
            "P1",
            "2025-09-03T08:30:00Z",
            json!({"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}),
        ),
        line(
            "PupilRegistered",
            "P2",
            "2025-09-03T08:30:00Z",
            json!({"name": "Bo Testpupil", "date_of_birth": "2012-06-01", "year_group": 9}),
        ),
        line(
            "CaseOpened",
            "P1",
            "2025-09-10T09:00:00Z",
            json!({"case_type": "pastoral", "summary": "Support"}),
        ),
        line(
            "KeyworkerAssigned",
            "P1",
            "2025-09-10T09:05:00Z",
            json!({"staff": "KW1"}),
        ),
        line(
            "ConcernRaised",
            "P1",
            "2025-09-11T09:00:00Z",
            json!({"category": "neglect", "summary": "Arrives hungry"}),
        ),
        line(
            "IncidentRecorded",
            "P1",
            "2025-09-12T10:00:00Z",
            json!({"category": "disruption", "severity": 2, "location": "classroom", "description": "Talking"}),
        ),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    cb.run_stdin(&["--as", "DSL1", "import", "-"], &text).ok();
    cb
}

/// One command of the matrix: its arguments for a given staff reference,
/// and the roles that may run it (from docs/security.md, written out here
/// independently of the code).
struct Case {
    name: &'static str,
    args: fn(&str, &str) -> Vec<String>,
    allowed: &'static [&'static str],
}

fn record(t: &str, pupil: &str, data: Value) -> Vec<String> {
    vec![
        "record".into(),
        t.into(),
        "--pupil".into(),
        pupil.into(),
        "--data".into(),
        data.to_string(),
    ]
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

const ALL: &[&str] = &[
    "dsl",
    "deputy_dsl",
    "pastoral",
    "keyworker",
    "teacher",
    "auditor",
    "admin",
];

fn matrix() -> Vec<Case> {
    vec![
        Case {
            name: "record PupilRegistered (registration)",
            args: |staff, _| {
                record(
                    "PupilRegistered",
                    &format!("N-{staff}"),
                    json!({"name": "New Testpupil", "date_of_birth": "2013-01-01", "year_group": 8}),
                )
            },
            allowed: &["dsl", "deputy_dsl", "pastoral", "admin"],
        },
        Case {
            name: "record ConcernRaised (safeguarding, any member of staff)",
            args: |_, _| {
                record(
                    "ConcernRaised",
                    "P1",
                    json!({"category": "emotional", "summary": "Seemed withdrawn"}),
                )
            },
            allowed: &[
                "dsl",
                "deputy_dsl",
                "pastoral",
                "keyworker",
                "teacher",
                "admin",
            ],
        },
        Case {
            name: "record SafeguardingDecisionMade (safeguarding)",
            args: |_, _| {
                record(
                    "SafeguardingDecisionMade",
                    "P1",
                    json!({"decision": "monitor", "rationale": "Watch and review"}),
                )
            },
            allowed: &["dsl", "deputy_dsl"],
        },
        Case {
            name: "record IncidentRecorded (behaviour)",
            args: |_, _| {
                record(
                    "IncidentRecorded",
                    "P1",
                    json!({"category": "disruption", "severity": 1, "location": "corridor", "description": "Running"}),
                )
            },
            allowed: &["dsl", "deputy_dsl", "pastoral", "keyworker", "teacher"],
        },
        Case {
            name: "record RewardIssued (behaviour)",
            args: |_, _| {
                record(
                    "RewardIssued",
                    "P1",
                    json!({"kind": "merit", "reason": "Helped a classmate"}),
                )
            },
            allowed: &["pastoral", "keyworker", "teacher"],
        },
        Case {
            name: "record PlanAgreed (pastoral)",
            args: |staff, _| {
                record(
                    "PlanAgreed",
                    "P1",
                    json!({"plan": format!("PLAN-{staff}"), "kind": "pastoral_support", "review_due": "2026-12-01"}),
                )
            },
            allowed: &["dsl", "deputy_dsl", "pastoral", "keyworker"],
        },
        Case {
            name: "record PlanAgreed for a pupil on nobody's caseload",
            args: |staff, _| {
                record(
                    "PlanAgreed",
                    "P2",
                    json!({"plan": format!("PLAN-{staff}"), "kind": "pastoral_support", "review_due": "2026-12-01"}),
                )
            },
            allowed: &["dsl", "deputy_dsl", "pastoral"],
        },
        Case {
            name: "record AttendanceMarked (attendance)",
            args: |staff, _| {
                let day = 10 + STAFF.iter().position(|(s, _)| *s == staff).unwrap_or(0);
                record(
                    "AttendanceMarked",
                    "P1",
                    json!({"date": format!("2025-11-{day}"), "session": "am", "code": "/"}),
                )
            },
            allowed: &["teacher", "admin"],
        },
        Case {
            name: "import",
            args: |_, file| s(&["import", file]),
            allowed: &["dsl", "admin"],
        },
        Case {
            name: "timeline of P1 (keyworker's own caseload)",
            args: |_, _| s(&["timeline", "P1", "--purpose", "matrix test"]),
            allowed: &[
                "dsl",
                "deputy_dsl",
                "pastoral",
                "keyworker",
                "teacher",
                "auditor",
            ],
        },
        Case {
            name: "timeline of P2 (not on the keyworker's caseload)",
            args: |_, _| s(&["timeline", "P2", "--purpose", "matrix test"]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "teacher", "auditor"],
        },
        Case {
            name: "audit of P1",
            args: |_, _| s(&["audit", "P1", "--purpose", "matrix test"]),
            allowed: &["dsl", "deputy_dsl", "auditor"],
        },
        Case {
            name: "caseload (whole school)",
            args: |_, _| s(&["caseload"]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "auditor"],
        },
        Case {
            name: "caseload --keyworker SELF",
            args: |staff, _| s(&["caseload", "--keyworker", staff]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "keyworker", "auditor"],
        },
        Case {
            name: "report behaviour",
            args: |_, _| s(&["report", "behaviour"]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "teacher", "auditor"],
        },
        Case {
            name: "report suspensions",
            args: |_, _| s(&["report", "suspensions"]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "auditor", "admin"],
        },
        Case {
            name: "report force",
            args: |_, _| s(&["report", "force"]),
            allowed: &["dsl", "deputy_dsl", "pastoral", "auditor"],
        },
        Case {
            name: "verify",
            args: |_, _| s(&["verify"]),
            allowed: ALL,
        },
        Case {
            name: "rebuild",
            args: |_, _| s(&["rebuild"]),
            allowed: &["dsl", "deputy_dsl", "admin"],
        },
        Case {
            name: "staff list",
            args: |_, _| s(&["staff", "list"]),
            allowed: &["dsl", "deputy_dsl", "auditor", "admin"],
        },
        Case {
            name: "staff add",
            args: |staff, _| {
                s(&[
                    "staff",
                    "add",
                    &format!("NEW-{staff}"),
                    "--name",
                    "New Starter",
                    "--role",
                    "teacher",
                ])
            },
            allowed: &["admin"],
        },
        Case {
            name: "staff grant",
            args: |_, _| s(&["staff", "grant", "TEA1", "auditor"]),
            // Only the first admin's grant succeeds; see the run below.
            allowed: &["admin"],
        },
    ]
}

#[test]
fn every_role_against_every_command() {
    let cb = school();
    let import_file = cb.path().join("one.jsonl");
    let import_line = json!({"type": "IncidentRecorded", "pupil": "P1", "occurred_at": "2025-09-15T10:00:00Z",
        "actor": "LEFT01", "data": {"category": "defiance", "severity": 2, "location": "hall", "description": "Refused to move"}});
    std::fs::write(&import_file, format!("{import_line}\n")).expect("write import file");
    let file = import_file.to_string_lossy().to_string();

    let before = refusals_by_staff(&cb);
    let mut expected_refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut table = String::new();
    for case in matrix() {
        table.push_str(&format!("{:55}", case.name));
        for (staff, role) in STAFF {
            let mut args = vec!["--as".to_string(), staff.to_string()];
            args.extend((case.args)(staff, &file));
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let run: Run = cb.run(&argv);
            let allowed = case.allowed.contains(role);
            let expected = if allowed { 0 } else { 2 };
            table.push_str(if allowed { " Y" } else { " -" });
            if run.code != expected {
                failures.push(format!(
                    "{} as {staff} ({role}): exit {} (expected {expected})\nstderr: {}",
                    case.name, run.code, run.stderr
                ));
                continue;
            }
            if !allowed {
                *expected_refusals.entry(staff.to_string()).or_default() += 1;
                let message = format!("{staff} ({role}) may not ");
                if !run.stderr.contains(&message) {
                    failures.push(format!(
                        "{} as {staff}: refusal message lacks {message:?}: {}",
                        case.name, run.stderr
                    ));
                }
            }
        }
        table.push('\n');
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("matrix (Y = allowed):\n{table}");

    // Every refusal was logged, under the member of staff refused.
    let after = refusals_by_staff(&cb);
    for (staff, _) in STAFF {
        let logged =
            after.get(*staff).copied().unwrap_or(0) - before.get(*staff).copied().unwrap_or(0);
        let expected = expected_refusals.get(*staff).copied().unwrap_or(0);
        assert_eq!(logged, expected, "AccessRefused events logged for {staff}");
    }

    // The import kept the line's actor, who is not registered staff.
    let audit = cb
        .run(&["--as", "AUD1", "--format", "json", "audit", "P1"])
        .ok()
        .json();
    let actors: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors.contains(&"LEFT01"), "{actors:?}");
    // Refused reads are in the access log the audit shows, with the reason.
    let refused: Vec<&Value> = audit["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["refused"].is_string())
        .collect();
    assert!(
        refused
            .iter()
            .any(|a| a["who"] == "ADM1" && a["view"] == "read the timeline of P1"),
        "{refused:?}"
    );
    // Granted reads too, with their purpose.
    assert!(audit["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["who"] == "TEA1"
            && a["view"] == "timeline"
            && a["purpose"] == "matrix test"
            && a["refused"].is_null()));
    // And the whole log, directory and access log included, verifies.
    cb.run(&["--as", "AUD1", "verify"]).ok();
}

/// The entries of `timeline --format json` as (type, safeguarding).
fn timeline_types(cb: &Casebook, staff: &str, pupil: &str) -> Vec<(String, bool)> {
    let doc = cb
        .run(&["--as", staff, "--format", "json", "timeline", pupil])
        .ok()
        .json();
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["safeguarding"] == true,
            )
        })
        .collect()
}

#[test]
fn timelines_show_each_role_what_it_may_read() {
    let cb = school();
    let dsl = timeline_types(&cb, "DSL1", "P1");
    assert!(dsl.iter().any(|(t, _)| t == "ConcernRaised"), "{dsl:?}");
    let auditor = timeline_types(&cb, "AUD1", "P1");
    assert_eq!(auditor, dsl);
    for staff in ["PAS1", "KW1", "TEA1"] {
        let seen = timeline_types(&cb, staff, "P1");
        assert!(!seen.iter().any(|(_, sg)| *sg), "{staff} saw {seen:?}");
        assert!(
            seen.iter().any(|(t, _)| t == "IncidentRecorded"),
            "{seen:?}"
        );
    }
    // A teacher reads behaviour only (and who the pupil is).
    let teacher = timeline_types(&cb, "TEA1", "P1");
    assert!(
        teacher
            .iter()
            .all(|(t, _)| t == "PupilRegistered" || t == "IncidentRecorded"),
        "{teacher:?}"
    );
    // Pastoral staff see the case work a teacher does not.
    let pastoral = timeline_types(&cb, "PAS1", "P1");
    assert!(pastoral.iter().any(|(t, _)| t == "KeyworkerAssigned"));
}

#[test]
fn an_empty_directory_keeps_single_user_behaviour() {
    let cb = Casebook::new();
    cb.run(&["init"]).ok();
    let out = cb.run(&["staff", "list"]).ok();
    assert!(out.stdout.contains("single-user mode"), "{}", out.stdout);
    cb.run(&[
        "--as",
        "ANYONE",
        "record",
        "PupilRegistered",
        "--pupil",
        "P1",
        "--data",
        r#"{"name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}"#,
    ])
    .ok();
    cb.run(&[
        "--as",
        "ANYONE",
        "record",
        "SafeguardingDecisionMade",
        "--pupil",
        "P1",
        "--data",
        r#"{"decision": "monitor", "rationale": "Review in a week"}"#,
    ])
    .ok();
    // Reads need no --as and see everything; they are still logged.
    let doc = cb.run(&["--format", "json", "timeline", "P1"]).ok().json();
    assert_eq!(doc["entries"].as_array().unwrap().len(), 2);
    let audit = cb.run(&["--format", "json", "audit", "P1"]).ok().json();
    let who: Vec<&str> = audit["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["who"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["unidentified", "unidentified"]);
    cb.run(&["caseload"]).ok();
    cb.run(&["report", "force"]).ok();
    cb.run(&["verify"]).ok();
    assert!(refusals_by_staff(&cb).is_empty());
}

#[test]
fn an_unknown_or_missing_actor_is_refused_and_logged() {
    let cb = school();
    let out = cb.run(&["--as", "NOBODY", "timeline", "P1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("\"NOBODY\" is not in the staff directory"),
        "{}",
        out.stderr
    );
    let out = cb.run(&["timeline", "P1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--as STAFF"), "{}", out.stderr);
    let out = cb.run(&["--as", "NOBODY", "verify"]);
    assert_eq!(out.code, 2);
    let refusals = refusals_by_staff(&cb);
    assert_eq!(refusals.get("NOBODY"), Some(&2));
    assert_eq!(refusals.get("unidentified"), Some(&1));
    // The refused read of P1 is in P1's access log.
    let audit = cb
        .run(&["--as", "DSL1", "--format", "json", "audit", "P1"])
        .ok()
        .json();
    assert!(audit["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["who"] == "NOBODY" && a["refused"] == "not in the staff directory"));
}

#[test]
fn the_last_admin_cannot_be_revoked_and_roles_are_checked() {
    let cb = school();
    let out = cb.run(&["--as", "ADM1", "staff", "revoke", "ADM1", "admin"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("last admin"), "{}", out.stderr);
    let out = cb.run(&[
        "--as", "ADM1", "staff", "add", "X1", "--name", "Somebody", "--role", "wizard",
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown role"), "{}", out.stderr);
    let out = cb.run(&[
        "--as", "ADM1", "staff", "add", "DSL1", "--name", "Again", "--role", "dsl",
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("already registered"), "{}", out.stderr);
    let out = cb.run(&["--as", "ADM1", "staff", "grant", "NOBODY", "dsl"]);
    assert_eq!(out.code, 2);
    // With a second admin, the first may step down; then ADM1 is refused.
    cb.run(&["--as", "ADM1", "staff", "grant", "DSL1", "admin"])
        .ok();
    cb.run(&["--as", "ADM1", "staff", "revoke", "ADM1", "admin"])
        .ok();
    let out = cb.run(&["--as", "ADM1", "staff", "list"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ADM1 (no role) may not list the staff directory"),
        "{}",
        out.stderr
    );
    let list = cb
        .run(&["--as", "DSL1", "--format", "json", "staff", "list"])
        .ok()
        .json();
    let dsl = list["staff"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["staff"] == "DSL1")
        .unwrap()
        .clone();
    assert_eq!(dsl["roles"], json!(["dsl", "admin"]));
    // A second bootstrap is refused once the directory is in use.
    let out = cb.run(&["--as", "DSL1", "init", "--admin", "ZED"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    cb.run(&["--as", "AUD1", "verify"]).ok();
}

#[test]
fn directory_and_access_events_cannot_be_imported_or_recorded() {
    let cb = school();
    for t in [
        "StaffRegistered",
        "RoleGranted",
        "AccessRefused",
        "RecordViewed",
    ] {
        let out = cb.run(&["--as", "DSL1", "record", t, "--pupil", "P1", "--data", "{}"]);
        assert_eq!(out.code, 2, "{t}: {}", out.stderr);
        assert!(out.stderr.contains("cannot be"), "{t}: {}", out.stderr);
    }
}

/// The engine filters and refuses on its own: no CLI involved.
#[tokio::test]
async fn the_engine_withholds_safeguarding_entries_from_a_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), true).unwrap();
    let log: Arc<dyn EventStore> = store.log("default").unwrap();
    let now = Utc::now();
    let mut guarded = Guarded::open(log.clone(), "default").await.unwrap();
    let admin = first_admin(&mut guarded, "default", now).await;
    for (staff, role) in [("DSL1", Role::Dsl), ("TEA1", Role::Teacher)] {
        guarded
            .change_directory(&admin, staff_registered(staff, "Staff", &[role]), now)
            .await
            .unwrap();
    }
    let dsl = guarded.directory().actor(Some("DSL1"), "default").unwrap();
    let teacher = guarded.directory().actor(Some("TEA1"), "default").unwrap();
    let event = |t: &str, data: Value| {
        let e = event_from_json(t, data).unwrap();
        NewEvent::new(&e, now, "DSL1").unwrap()
    };
    let stream = StreamId::for_pupil("default", "P1");
    let request = AppendRequest {
        stream,
        expected: ExpectedVersion::Any,
        events: vec![
            event(
                "PupilRegistered",
                json!({"pupil": "P1", "name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}),
            ),
            event(
                "ConcernRaised",
                json!({"category": "neglect", "summary": "Arrives hungry"}),
            ),
            event(
                "IncidentRecorded",
                json!({"category": "disruption", "severity": 2, "location": "classroom", "description": "Talking"}),
            ),
        ],
    };
    guarded
        .append_for_pupil(&dsl, "P1", request, now)
        .await
        .unwrap();

    let seen = guarded
        .read_pupil(&teacher, "P1", View::Timeline, Some("lesson".into()), now)
        .await
        .unwrap();
    let types: Vec<&str> = seen.case.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["PupilRegistered", "IncidentRecorded"]);
    assert_eq!(seen.withheld, 1);
    assert!(
        seen.access.is_empty(),
        "a teacher does not read the access log"
    );
    let full = guarded
        .read_pupil(&dsl, "P1", View::Audit, None, now)
        .await
        .unwrap();
    assert_eq!(full.case.len(), 3);
    assert_eq!(full.access.len(), 2, "the teacher's read and this one");

    // A teacher may not write safeguarding detail, even straight through
    // the engine; the refusal is in P1's access stream.
    let refused = guarded
        .append_for_pupil(
            &teacher,
            "P1",
            AppendRequest {
                stream,
                expected: ExpectedVersion::Any,
                events: vec![event(
                    "SafeguardingDecisionMade",
                    json!({"decision": "monitor", "rationale": "Review"}),
                )],
            },
            now,
        )
        .await;
    match refused {
        Err(AccessError::Denied(d)) => {
            assert_eq!(d.staff, "TEA1");
            assert_eq!(
                d.to_string(),
                "TEA1 (teacher) may not record SafeguardingDecisionMade for P1: only dsl, deputy_dsl may"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(log.stream_version(stream).await.unwrap(), 3);
    let access = casebook_engine::store::read_whole_stream(
        log.as_ref(),
        StreamId::for_access_log("default", "P1"),
    )
    .await
    .unwrap();
    assert_eq!(access.last().unwrap().event_type, "AccessRefused");
    // A teacher may not read the audit trail either.
    assert!(matches!(
        guarded
            .read_pupil(&teacher, "P1", View::Audit, None, now)
            .await,
        Err(AccessError::Denied(_))
    ));
    // Granting a role takes effect in the fold.
    guarded
        .change_directory(&admin, role_granted("TEA1", Role::Auditor), now)
        .await
        .unwrap();
    let teacher = guarded.directory().actor(Some("TEA1"), "default").unwrap();
    let all = guarded
        .read_pupil(&teacher, "P1", View::Audit, None, now)
        .await
        .unwrap();
    assert_eq!(all.case.len(), 3);
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
}

#[test]
fn permission_is_checked_before_validation() {
    let cb = school();
    // GHOST is not registered: a permitted actor would get a validation
    // error; a refused one learns nothing of the record.
    let out = cb.run(&[
        "--as",
        "TEA1",
        "record",
        "SafeguardingDecisionMade",
        "--pupil",
        "GHOST",
        "--data",
        r#"{"decision": "monitor", "rationale": "Review"}"#,
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("TEA1 (teacher) may not record"),
        "{}",
        out.stderr
    );
    let out = cb.run(&[
        "--as",
        "DSL1",
        "record",
        "SafeguardingDecisionMade",
        "--pupil",
        "GHOST",
        "--data",
        r#"{"decision": "monitor", "rationale": "Review"}"#,
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not registered"), "{}", out.stderr);
    // Reads too: a refused reader is not told whether the record exists.
    let out = cb.run(&["--as", "ADM1", "timeline", "GHOST"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("ADM1 (admin) may not read the timeline of GHOST"),
        "{}",
        out.stderr
    );
    let out = cb.run(&["--as", "DSL1", "timeline", "GHOST"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no record for pupil"), "{}", out.stderr);
}

mod directory_fold {
    use std::collections::{BTreeMap, BTreeSet};

    use casebook_engine::access::{
        role_granted, role_revoked, staff_registered, AccessError, Directory, Role,
    };
    use chrono::Utc;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Register(usize, Vec<Role>),
        Grant(usize, Role),
        Revoke(usize, Role),
    }

    fn role() -> impl Strategy<Value = Role> {
        (0..Role::ALL.len()).prop_map(|i| Role::ALL[i])
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, proptest::collection::vec(role(), 0..3))
                .prop_map(|(s, r)| Op::Register(s, r)),
            (0..4usize, role()).prop_map(|(s, r)| Op::Grant(s, r)),
            (0..4usize, role()).prop_map(|(s, r)| Op::Revoke(s, r)),
        ]
    }

    proptest! {
        /// Whatever is asked, in any order: the directory's rules keep an
        /// admin once anyone is registered, and the fold holds exactly the
        /// accepted changes.
        #[test]
        fn an_admin_always_remains(ops in proptest::collection::vec(op(), 0..40)) {
            let names = ["S0", "S1", "S2", "S3"];
            let mut dir = Directory::default();
            let mut model: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
            for op in ops {
                let event = match &op {
                    Op::Register(s, roles) => staff_registered(names[*s], "Staff", roles),
                    Op::Grant(s, r) => role_granted(names[*s], *r),
                    Op::Revoke(s, r) => role_revoked(names[*s], *r),
                };
                if dir.check(&event).is_ok() {
                    dir.apply(&event, Utc::now());
                    match op {
                        Op::Register(s, roles) => {
                            model.insert(names[s].to_string(), roles.into_iter().collect());
                        }
                        Op::Grant(s, r) => {
                            model.get_mut(names[s]).unwrap().insert(r);
                        }
                        Op::Revoke(s, r) => {
                            model.get_mut(names[s]).unwrap().remove(&r);
                        }
                    }
                }
                if !dir.is_empty() {
                    prop_assert!(dir.members().any(|m| m.roles.contains(&Role::Admin)));
                }
                let folded: BTreeMap<String, BTreeSet<Role>> =
                    dir.members().map(|m| (m.staff.clone(), m.roles.clone())).collect();
                prop_assert_eq!(&folded, &model);
                for name in names {
                    let resolved = dir.actor(Some(name), "default");
                    match model.get(name) {
                        _ if model.is_empty() => prop_assert!(resolved.unwrap().unrestricted),
                        Some(roles) => prop_assert_eq!(&resolved.unwrap().roles, roles),
                        None => {
                            let unknown = matches!(resolved, Err(AccessError::UnknownStaff { .. }));
                            prop_assert!(unknown);
                        }
                    }
                }
            }
        }
    }
}

/// The privacy commands (issue 6 items 4-7) against every role, on a sealed
/// store: erase, hold and retention for dsl and admin; export and transfer
/// for dsl and deputy_dsl; everyone else refused with exit 2 and the
/// refusal logged; an unknown actor refused too.
#[test]
fn every_role_against_the_privacy_commands() {
    let cb = Casebook::new();
    let key = cb.path().join("master.key");
    std::fs::write(&key, "42".repeat(32)).expect("key file");
    let key = key.to_string_lossy().to_string();
    let run = |staff: &str, args: &[&str]| -> Run {
        let mut argv = vec!["--key-file", key.as_str(), "--as", staff];
        argv.extend_from_slice(args);
        cb.run(&argv)
    };
    // The school and the one records are transferred to, each with the
    // same staff directory.
    for school in ["default", "urn-2"] {
        let init = [
            "--key-file",
            &key,
            "--school",
            school,
            "init",
            "--admin",
            "ADM1",
        ];
        cb.run(&init).ok();
        for (staff, role) in STAFF.iter().filter(|(s, _)| *s != "ADM1") {
            let add = [
                "--school",
                school,
                "staff",
                "add",
                staff,
                "--name",
                "Staff Member",
                "--role",
                role,
            ];
            run("ADM1", &add).ok();
        }
    }
    // One pupil per (command, role) that may change it, so an allowed
    // erasure never takes away what a later case needs.
    let mut next = 0;
    let mut register = || {
        next += 1;
        let pupil = format!("Q{next}");
        run(
            "DSL1",
            &[
                "record",
                "PupilRegistered",
                "--pupil",
                &pupil,
                "--data",
                r#"{"name": "Wren Sampleton", "date_of_birth": "1990-01-01", "year_group": 11}"#,
            ],
        )
        .ok();
        pupil
    };
    let bundle_dir = tempfile::tempdir().expect("temp dir");
    let erase_hold: &[&str] = &["dsl", "admin"];
    let export_transfer: &[&str] = &["dsl", "deputy_dsl"];
    let before = refusals_by_staff(&cb);
    let mut expected_refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut check = |name: &str, staff: &str, role: &str, allowed: bool, got: Run| {
        let expected = if allowed { 0 } else { 2 };
        if got.code != expected {
            failures.push(format!(
                "{name} as {staff} ({role}): exit {} (expected {expected})\nstdout: {}\nstderr: {}",
                got.code, got.stdout, got.stderr
            ));
        } else if !allowed {
            if !got.stderr.contains(&format!("{staff} ({role}) may not")) {
                failures.push(format!("{name} as {staff}: message {}", got.stderr));
            }
            // Counted in the default school's log (a refused transfer-in is
            // logged in the receiving school's).
            if name != "transfer-in" {
                *expected_refusals.entry(staff.to_string()).or_default() += 1;
            }
        }
    };
    for (staff, role) in STAFF {
        let may_erase = erase_hold.contains(role);
        let may_move = export_transfer.contains(role);
        let p = register();
        check(
            "hold",
            staff,
            role,
            may_erase,
            run(staff, &["hold", &p, "--reason", "Litigation"]),
        );
        if may_erase {
            check(
                "hold --lift",
                staff,
                role,
                true,
                run(staff, &["hold", &p, "--reason", "Settled", "--lift"]),
            );
        } else {
            // Lifting needs a hold in force: applied by the DSL first.
            run("DSL1", &["hold", &p, "--reason", "Litigation"]).ok();
            check(
                "hold --lift",
                staff,
                role,
                false,
                run(staff, &["hold", &p, "--reason", "Settled", "--lift"]),
            );
        }
        let p = register();
        check(
            "erase",
            staff,
            role,
            may_erase,
            run(staff, &["erase", &p, "--reason", "Retention ended"]),
        );
        check(
            "retention",
            staff,
            role,
            may_erase,
            run(staff, &["retention", "--today", "2026-12-01"]),
        );
        let p = register();
        check(
            "export --for subject",
            staff,
            role,
            may_move,
            run(staff, &["export", &p, "--for", "subject"]),
        );
        let bundle = bundle_dir.path().join(format!("{staff}.json"));
        let bundle_s = bundle.to_string_lossy().to_string();
        check(
            "transfer-out",
            staff,
            role,
            may_move,
            run(
                staff,
                &["transfer-out", &p, "--to", "urn-2", "--out", &bundle_s],
            ),
        );
        // transfer-in, at school urn-2 (whose directory is in use, so it is
        // checked), of a bundle the DSL made.
        let q = register();
        let made = run(
            "DSL1",
            &["transfer-out", &q, "--to", "urn-2", "--out", &bundle_s],
        )
        .ok();
        let transfer_key = made
            .stdout
            .lines()
            .find_map(|l| l.split("bundle): ").nth(1))
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        check(
            "transfer-in",
            staff,
            role,
            may_move,
            run(
                staff,
                &[
                    "--school",
                    "urn-2",
                    "transfer-in",
                    &bundle_s,
                    "--transfer-key",
                    &transfer_key,
                ],
            ),
        );
        // retention --apply last: it may erase pupils of earlier cases.
        check(
            "retention --apply",
            staff,
            role,
            may_erase,
            run(staff, &["retention", "--today", "2026-12-01", "--apply"]),
        );
    }
    // An unknown member of staff is refused for each of them.
    for args in [
        &["erase", "Q1", "--reason", "x"][..],
        &["hold", "Q1", "--reason", "x"][..],
        &["retention"][..],
        &["export", "Q1", "--for", "subject"][..],
        &["transfer-out", "Q1", "--to", "urn-2"][..],
    ] {
        let got = run("NOBODY", args);
        assert_eq!(got.code, 2, "{args:?} as NOBODY: {}", got.stderr);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let after = refusals_by_staff(&cb);
    for (staff, n) in expected_refusals {
        let logged =
            after.get(&staff).copied().unwrap_or(0) - before.get(&staff).copied().unwrap_or(0);
        assert!(
            logged >= n,
            "{staff}: {n} refusals expected in the log, {logged} found"
        );
    }
    run("AUD1", &["verify"]).ok();
}

/// A staff change and a pupil's entries whose ids this process minted are
/// appended on a segment store opened with its event ids left in the index
/// snapshot (as `record` and `staff` open it) without reading them; an
/// entry with an id the caller chose is looked up among them, in place in
/// the snapshot (a few ids: docs/storage.md, "Ids looked up in place"),
/// so that append does not read them either.
#[tokio::test]
async fn minted_appends_through_the_access_layer_leave_the_event_ids_on_disk() {
    use casebook_engine::store::segment::{SegmentOptions, SegmentStore};
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let open = |event_ids_at_open: bool| {
        let options = SegmentOptions {
            snapshot_min_events: 1,
            event_ids_at_open,
            ..SegmentOptions::default()
        };
        SegmentStore::open_with(dir.path(), true, options)
            .unwrap()
            .log("default")
            .unwrap()
    };
    let entry = |t: &str, data: Value| {
        let e = event_from_json(t, data).unwrap();
        NewEvent::new(&e, now, "ADM1").unwrap()
    };
    let stream = StreamId::for_pupil("default", "P1");
    let request = |events: Vec<NewEvent>| AppendRequest {
        stream,
        expected: ExpectedVersion::Any,
        events,
    };
    let incident = || {
        entry(
            "IncidentRecorded",
            json!({"category": "disruption", "severity": 2, "location": "classroom", "description": "Talking"}),
        )
    };
    {
        let log = open(true);
        let mut guarded = Guarded::open(log.clone(), "default").await.unwrap();
        let admin = first_admin(&mut guarded, "default", now).await;
        let registered = entry(
            "PupilRegistered",
            json!({"pupil": "P1", "name": "Ada Testpupil", "date_of_birth": "2012-05-01", "year_group": 9}),
        );
        guarded
            .append_for_pupil(&admin, "P1", request(vec![registered]), now)
            .await
            .unwrap();
    }
    let log = open(false);
    assert!(log.opened_from_snapshot().is_some());
    let mut guarded = Guarded::open(log.clone(), "default").await.unwrap();
    let admin = guarded.directory().actor(Some("ADM1"), "default").unwrap();
    guarded
        .change_directory(&admin, staff_registered("DSL1", "Staff", &[Role::Dsl]), now)
        .await
        .unwrap();
    let dsl = guarded.directory().actor(Some("DSL1"), "default").unwrap();
    guarded
        .append_minted_for_pupil(&dsl, "P1", request(vec![incident()]), now)
        .await
        .unwrap();
    assert!(!log.event_ids_held(), "a minted append read the event ids");
    // An import's plan: of minted ids (no line carried an `id`), appended
    // without reading the ids; of a few given ids, looked up in the
    // snapshot in place (docs/storage.md, "Ids looked up in place").
    let plan = |minted| ImportPlan {
        requests: vec![request(vec![incident()])],
        events: 1,
        duplicates: 0,
        minted,
        ..ImportPlan::default()
    };
    guarded
        .append_import(&admin, plan(true), now)
        .await
        .unwrap();
    assert!(
        !log.event_ids_held(),
        "an import of minted ids read the event ids"
    );
    guarded
        .append_import(&admin, plan(false), now)
        .await
        .unwrap();
    assert!(
        !log.event_ids_held(),
        "an import of a given id read the event ids"
    );
    guarded
        .append_for_pupil(&dsl, "P1", request(vec![incident()]), now)
        .await
        .unwrap();
    assert!(
        !log.event_ids_held(),
        "an append of a given id read the event ids"
    );
    let stored = log.read_stream(stream, 1, 10).await.unwrap();
    assert_eq!(stored.len(), 5);
}
