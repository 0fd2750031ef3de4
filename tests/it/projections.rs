//! Projections: the chronology and the school reports say what a DSL, a
//! keyworker or a school leader needs them to say; every fold replays to the
//! same state however it is cut; and the runner gives the same views after a
//! restart as after a full rebuild.

use std::collections::HashMap;
use std::sync::Arc;

use casebook_engine::envelope::{NewEvent, StreamId};
use casebook_engine::event::CaseEvent;
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::{AppendRequest, EventStore, ExpectedVersion};
use casebook_engine::RecordedEvent;
use casebook_projections::attendance::Attendance;
use casebook_projections::behaviour::{Behaviour, BehaviourDimension};
use casebook_projections::caseload::Caseload;
use casebook_projections::chronology::Chronology;
use casebook_projections::force::ForceLog;
use casebook_projections::interventions::Interventions;
use casebook_projections::reintegration::{EpisodeStatus, Reintegration};
use casebook_projections::retention::Retention;
use casebook_projections::runner::{
    decode_checkpoint, encode_checkpoint, RestartReason, SchoolViews,
};
use casebook_projections::suspensions::{BoardBand, Suspensions};
use casebook_projections::{
    audit_of, chronology_of, fold_in, rebuild, Projection, ProjectionError, Targets,
    CHECKPOINT_BYTES_PER_EVENT, CHECKPOINT_READ_WHOLE, PROJECTION_NAMES, SHARE_BYTES_PER_EVENT,
    SHARE_FOLD_FROM,
};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const SCHOOL: &str = "test-school";

fn ev(event_type: &str, data: Value) -> CaseEvent {
    CaseEvent::from_type_and_data(event_type, data).unwrap_or_else(|e| panic!("{event_type}: {e}"))
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn register(pupil: &str, class: &str) -> CaseEvent {
    ev(
        "PupilRegistered",
        json!({"pupil": pupil, "name": format!("Pupil {pupil}"), "date_of_birth": "2012-05-01",
               "year_group": 8, "class": class, "site": "North"}),
    )
}

fn correction(event: Uuid, changes: Value, reason: &str) -> CaseEvent {
    ev(
        "EntryCorrected",
        json!({"event": event, "changes": changes, "reason": reason}),
    )
}

/// A school log built in memory: `RecordedEvent`s as the store would hand
/// them to a projection, with positions, versions and a `recorded_at` that
/// only moves forward.
#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    versions: HashMap<StreamId, u64>,
}

impl Log {
    /// Records `event` on `pupil`'s case, happening at `occurred`, written
    /// one minute after the previous entry of the log.
    fn add(&mut self, pupil: &str, occurred: &str, event: CaseEvent) -> Uuid {
        let recorded = self
            .events
            .last()
            .map(|e| e.recorded_at + Duration::minutes(1))
            .unwrap_or_else(|| at("2025-09-01T08:00:00Z"));
        self.add_recorded(pupil, at(occurred), recorded, event)
    }

    fn add_recorded(
        &mut self,
        pupil: &str,
        occurred: DateTime<Utc>,
        recorded: DateTime<Utc>,
        event: CaseEvent,
    ) -> Uuid {
        let stream = match event {
            CaseEvent::RecordViewed(_) => StreamId::for_access_log(SCHOOL, pupil),
            _ => StreamId::for_pupil(SCHOOL, pupil),
        };
        let version = self.versions.entry(stream).or_default();
        *version += 1;
        let position = self.events.len() as u64 + 1;
        let event_id = Uuid::from_u128(position as u128);
        self.events.push(RecordedEvent {
            position,
            stream,
            version: *version,
            event_id,
            occurred_at: occurred,
            recorded_at: recorded,
            actor: "S001".into(),
            correlation_id: None,
            causation_id: None,
            schema: casebook_engine::event::CURRENT_SCHEMA,
            hash: [position as u8; 32],
            event,
        });
        event_id
    }

    /// The events of `pupil`'s case stream.
    fn case(&self, pupil: &str) -> Vec<RecordedEvent> {
        let stream = StreamId::for_pupil(SCHOOL, pupil);
        self.events
            .iter()
            .filter(|e| e.stream == stream)
            .cloned()
            .collect()
    }

    fn fold<P: Projection>(&self) -> P {
        let mut p = P::default();
        fold_in(&mut p, &self.events, &Targets::of(&self.events));
        p
    }
}

// ---------------------------------------------------------------------------
// Chronology
// ---------------------------------------------------------------------------

mod chronology {
    use super::*;

    #[test]
    fn entries_are_ordered_by_when_they_happened_then_by_position() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let late = log.add(
            "P1",
            "2025-10-03T10:00:00Z",
            ev(
                "ParentContacted",
                json!({"method": "phone", "summary": "Called mum"}),
            ),
        );
        // Written down later, happened earlier: goes before `late`.
        let early = log.add(
            "P1",
            "2025-10-01T09:00:00Z",
            ev(
                "ConcernRaised",
                json!({"category": "neglect", "summary": "Hungry at breakfast club"}),
            ),
        );
        // Same moment as `early`, recorded after it: after it.
        let same = log.add(
            "P1",
            "2025-10-01T09:00:00Z",
            ev(
                "ConcernEscalated",
                json!({"to": "S002", "reason": "Second sighting"}),
            ),
        );
        let c = Chronology::build("P1", &log.case("P1"), None, false);
        let ids: Vec<Uuid> = c.entries.iter().skip(1).map(|e| e.event_id).collect();
        assert_eq!(ids, vec![early, same, late]);
    }

    #[test]
    fn as_of_leaves_out_what_was_recorded_later_corrections_included() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let concern = log.add_recorded(
            "P1",
            at("2026-02-20T10:00:00Z"),
            at("2026-02-20T12:00:00Z"),
            ev(
                "ConcernRaised",
                json!({"category": "neglect", "summary": "Unwashed uniform"}),
            ),
        );
        // Happened before the as-of time but was only written down after it.
        log.add_recorded(
            "P1",
            at("2026-02-25T10:00:00Z"),
            at("2026-03-05T09:00:00Z"),
            ev(
                "ConcernRaised",
                json!({"category": "online_safety", "summary": "Late disclosure"}),
            ),
        );
        log.add_recorded(
            "P1",
            at("2026-03-06T09:00:00Z"),
            at("2026-03-06T09:00:00Z"),
            correction(
                concern,
                json!({"category": "emotional_abuse"}),
                "DSL reclassified",
            ),
        );

        let as_of = at("2026-03-03T00:00:00Z");
        let then = Chronology::build("P1", &log.case("P1"), Some(as_of), false);
        assert_eq!(then.as_of, Some(as_of));
        assert_eq!(
            then.entries.len(),
            2,
            "registration and the first concern only"
        );
        let entry = &then.entries[1];
        assert_eq!(entry.event_id, concern);
        assert_eq!(entry.data["category"], "neglect", "as it read on 3 March");
        assert!(entry.corrections.is_empty());

        let now = Chronology::build("P1", &log.case("P1"), None, false);
        assert_eq!(now.entries.len(), 3);
        assert_eq!(now.entries[1].data["category"], "emotional_abuse");
    }

    #[test]
    fn a_correction_shows_the_corrected_data_and_keeps_the_original_visible() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let incident = log.add(
            "P1",
            "2025-11-12T10:20:00Z",
            ev("IncidentRecorded", json!({"category": "verbal_abuse_adult", "severity": 3,
                "location": "corridor", "description": "Swore at a teacher", "role": "perpetrator"})),
        );
        let first = log.add(
            "P1",
            "2025-11-13T09:00:00Z",
            correction(
                incident,
                json!({"severity": 4}),
                "Head of year reviewed CCTV",
            ),
        );
        log.add(
            "P1",
            "2025-11-14T09:00:00Z",
            correction(
                incident,
                json!({"severity": 2, "location": "canteen"}),
                "Wrong incident form",
            ),
        );

        let c = Chronology::build("P1", &log.case("P1"), None, false);
        assert_eq!(
            c.entries.len(),
            2,
            "corrections are not entries of their own"
        );
        let entry = &c.entries[1];
        assert_eq!(entry.data["severity"], 2);
        assert_eq!(entry.data["location"], "canteen");
        assert_eq!(
            entry.summary,
            "Incident (verbal_abuse_adult, severity 2) in canteen — perpetrator"
        );
        assert_eq!(entry.corrections.len(), 2);
        let c1 = &entry.corrections[0];
        assert_eq!(c1.event_id, first);
        assert_eq!(c1.original["severity"], 3, "the value as first recorded");
        assert_eq!(c1.changes["severity"], 4);
        assert_eq!(c1.reason, "Head of year reviewed CCTV");
        assert_eq!(c1.actor, "S001");
        assert!(c1.applied);
        let c2 = &entry.corrections[1];
        assert_eq!(
            c2.original["severity"], 4,
            "each correction keeps what it replaced"
        );
        assert_eq!(c2.original["location"], "corridor");
    }

    /// The first corrections of a record are found by a scan of its
    /// entries, later ones through a map of them (built at the
    /// seventeenth): either way each names its entry, an entry corrected
    /// by way of the scan and again by way of the map keeps both, and one
    /// naming nothing stays an entry of its own, before the map and after
    /// it.
    #[test]
    fn many_corrections_each_find_their_entry() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let incidents: Vec<Uuid> = (0..30)
            .map(|i| {
                log.add(
                    "P1",
                    &format!("2025-10-{:02}T10:00:00Z", i + 1),
                    ev(
                        "IncidentRecorded",
                        json!({"category": "disruption", "severity": 1,
                        "location": "classroom", "description": format!("Incident {i}"),
                        "role": "perpetrator"}),
                    ),
                )
            })
            .collect();
        // A correction of an event that is not in the record.
        let orphan = |log: &mut Log, at: &str, id: u128| {
            log.add(
                "P1",
                at,
                correction(Uuid::from_u128(id), json!({"severity": 5}), "names nothing"),
            )
        };
        let orphan_early = orphan(&mut log, "2025-11-01T09:00:00Z", 998);
        // 24 more corrections: incidents 0..24 in turn (0..15 found by the
        // scan, the rest through the map); incident 3, found by the scan,
        // is corrected again through the map.
        for (n, i) in (0..24).enumerate() {
            log.add(
                "P1",
                &format!("2025-11-02T09:{n:02}:00Z"),
                correction(incidents[i], json!({"severity": 2}), "reviewed"),
            );
        }
        log.add(
            "P1",
            "2025-11-03T09:00:00Z",
            correction(incidents[3], json!({"severity": 4}), "reviewed again"),
        );
        // An incident recorded after the map was built, then corrected.
        let later = log.add(
            "P1",
            "2025-11-03T10:00:00Z",
            ev(
                "IncidentRecorded",
                json!({"category": "disruption", "severity": 1,
                "location": "corridor", "description": "Later incident", "role": "perpetrator"}),
            ),
        );
        log.add(
            "P1",
            "2025-11-03T11:00:00Z",
            correction(later, json!({"severity": 3}), "reviewed"),
        );
        let orphan_late = orphan(&mut log, "2025-11-04T09:00:00Z", 999);

        let c = Chronology::build("P1", &log.case("P1"), None, false);
        let entries: HashMap<Uuid, _> = c.entries.iter().map(|e| (e.event_id, e)).collect();
        assert_eq!(
            c.entries.len(),
            1 + 31 + 2,
            "registration, incidents, two orphans"
        );
        for (i, id) in incidents.iter().enumerate() {
            let e = entries[id];
            let (severity, corrected) = match i {
                3 => (4, 2),
                0..24 => (2, 1),
                _ => (1, 0),
            };
            assert_eq!(e.data["severity"], severity, "incident {i}");
            assert_eq!(e.corrections.len(), corrected, "incident {i}");
        }
        assert_eq!(
            entries[&incidents[3]].corrections[1].original["severity"],
            2
        );
        assert_eq!(entries[&later].data["severity"], 3);
        assert_eq!(entries[&later].corrections.len(), 1);
        assert!(entries.contains_key(&orphan_early));
        assert!(entries.contains_key(&orphan_late));
    }

    #[test]
    fn a_correction_naming_nothing_in_the_record_stays_visible() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let orphan = log.add(
            "P1",
            "2025-09-02T08:00:00Z",
            correction(Uuid::from_u128(999), json!({"summary": "x"}), "typo"),
        );
        let c = Chronology::build("P1", &log.case("P1"), None, false);
        assert_eq!(c.entries.last().map(|e| e.event_id), Some(orphan));
    }

    #[test]
    fn safeguarding_only_keeps_safeguarding_entries() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        log.add(
            "P1",
            "2025-09-02T08:00:00Z",
            ev(
                "CaseOpened",
                json!({"case_type": "safeguarding", "summary": "Disclosure"}),
            ),
        );
        log.add(
            "P1",
            "2025-09-02T09:00:00Z",
            ev(
                "CaseOpened",
                json!({"case_type": "behaviour", "summary": "Disruption"}),
            ),
        );
        log.add(
            "P1",
            "2025-09-03T08:00:00Z",
            ev(
                "SafeguardingDecisionMade",
                json!({"decision": "refer_social_care", "rationale": "Risk of harm"}),
            ),
        );
        log.add(
            "P1",
            "2025-09-04T08:00:00Z",
            ev(
                "RewardIssued",
                json!({"kind": "merit", "reason": "Homework"}),
            ),
        );
        let c = Chronology::build("P1", &log.case("P1"), None, true);
        let types: Vec<&str> = c.entries.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["CaseOpened", "SafeguardingDecisionMade"]);
        assert!(c.entries.iter().all(|e| e.safeguarding));
    }

    #[test]
    fn timeline_json_has_the_contract_shape() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let c = Chronology::build("P1", &log.case("P1"), None, false);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["pupil"], "P1");
        assert_eq!(v["as_of"], Value::Null);
        let entry = v["entries"][0].as_object().unwrap();
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
            assert!(entry.contains_key(key), "entry lacks {key}: {entry:?}");
        }
        assert_eq!(entry["type"], "PupilRegistered");
        assert_eq!(entry["data"]["class"], "8A");
    }
}

// ---------------------------------------------------------------------------
// Caseload
// ---------------------------------------------------------------------------

mod caseload {
    use super::*;

    fn school() -> Log {
        let mut log = Log::default();
        for (p, kw, review) in [("P1", "S010", "2026-03-01"), ("P2", "S011", "2026-02-01")] {
            log.add(p, "2025-09-01T08:00:00Z", register(p, "8A"));
            log.add(
                p,
                "2025-09-10T08:00:00Z",
                ev(
                    "CaseOpened",
                    json!({"case_type": "pastoral", "summary": "Friendship issues"}),
                ),
            );
            log.add(
                p,
                "2025-09-10T08:05:00Z",
                ev("KeyworkerAssigned", json!({"staff": kw})),
            );
            log.add(
                p,
                "2025-09-11T08:00:00Z",
                ev(
                    "PlanAgreed",
                    json!({"plan": "PSP-1", "kind": "pastoral_support", "review_due": review}),
                ),
            );
        }
        // P3's case was opened and closed: not on the caseload.
        log.add("P3", "2025-09-01T08:00:00Z", register("P3", "8B"));
        log.add(
            "P3",
            "2025-09-10T08:00:00Z",
            ev(
                "CaseOpened",
                json!({"case_type": "attendance", "summary": "Lates"}),
            ),
        );
        log.add(
            "P3",
            "2025-12-10T08:00:00Z",
            ev("CaseClosed", json!({"outcome": "Improved"})),
        );
        log
    }

    #[test]
    fn a_review_is_overdue_only_once_its_date_has_passed() {
        let log = school();
        let caseload: Caseload = log.fold();
        let on_the_day = caseload.cases(date("2026-03-01"), Some("S010"));
        assert_eq!(on_the_day.cases.len(), 1);
        assert!(!on_the_day.cases[0].overdue, "due today is not overdue");
        let next_day = caseload.cases(date("2026-03-02"), Some("S010"));
        assert!(next_day.cases[0].overdue);
        assert_eq!(next_day.cases[0].next_review_due, Some(date("2026-03-01")));
    }

    #[test]
    fn overdue_cases_come_first_and_closed_cases_are_gone() {
        let log = school();
        let caseload: Caseload = log.fold();
        let report = caseload.cases(date("2026-02-15"), None);
        let pupils: Vec<&str> = report.cases.iter().map(|c| c.pupil.as_str()).collect();
        assert_eq!(pupils, vec!["P2", "P1"]);
        assert!(report.cases[0].overdue);
        assert!(!report.cases[1].overdue);
        let v = serde_json::to_value(&report).unwrap();
        let case = v["cases"][0].as_object().unwrap();
        for key in [
            "pupil",
            "keyworker",
            "case_types",
            "open_plans",
            "next_review_due",
            "overdue",
            "open_interventions",
            "last_activity",
        ] {
            assert!(case.contains_key(key), "case lacks {key}");
        }
        assert_eq!(v["cases"][0]["open_plans"][0]["review_due"], "2026-02-01");
        assert_eq!(v["cases"][0]["case_types"][0], "pastoral");
    }

    #[test]
    fn a_review_moves_the_date_and_a_final_review_ends_the_plan() {
        let mut log = school();
        log.add(
            "P2",
            "2026-02-01T10:00:00Z",
            ev(
                "PlanReviewed",
                json!({"plan": "PSP-1", "outcome": "Going well", "next_review_due": "2026-04-01"}),
            ),
        );
        // A review of a plan that was never agreed changes nothing.
        log.add(
            "P2",
            "2026-02-02T10:00:00Z",
            ev(
                "PlanReviewed",
                json!({"plan": "NOPE", "outcome": "?", "next_review_due": null}),
            ),
        );
        let caseload: Caseload = log.fold();
        let p2 = caseload
            .cases(date("2026-03-02"), Some("S011"))
            .cases
            .remove(0);
        assert_eq!(p2.next_review_due, Some(date("2026-04-01")));
        assert!(!p2.overdue);
        assert_eq!(p2.last_activity, Some(at("2026-02-02T10:00:00Z")));

        log.add(
            "P2",
            "2026-04-01T10:00:00Z",
            ev(
                "PlanReviewed",
                json!({"plan": "PSP-1", "outcome": "Met", "next_review_due": null}),
            ),
        );
        let caseload: Caseload = log.fold();
        let p2 = caseload
            .cases(date("2026-05-01"), Some("S011"))
            .cases
            .remove(0);
        assert!(p2.open_plans.is_empty());
        assert_eq!(p2.next_review_due, None);
        assert!(!p2.overdue);
    }
}

// ---------------------------------------------------------------------------
// Attendance
// ---------------------------------------------------------------------------

mod attendance {
    use super::*;

    /// Marks `codes` on consecutive sessions from 1 September 2025.
    fn marks(log: &mut Log, pupil: &str, codes: &[&str]) -> Vec<Uuid> {
        let start = date("2025-09-01");
        codes
            .iter()
            .enumerate()
            .map(|(i, code)| {
                let day = start + Duration::days(i as i64 / 2);
                let session = if i % 2 == 0 { "am" } else { "pm" };
                log.add(
                    pupil,
                    "2025-09-01T09:00:00Z",
                    ev(
                        "AttendanceMarked",
                        json!({"date": day, "session": session, "code": code}),
                    ),
                )
            })
            .collect()
    }

    fn repeat(code: &'static str, n: usize) -> Vec<&'static str> {
        vec![code; n]
    }

    #[test]
    fn persistent_from_ten_percent_missed_severe_from_fifty() {
        let mut log = Log::default();
        for p in ["P1", "P2", "P3"] {
            log.add(p, "2025-09-01T08:00:00Z", register(p, "8A"));
        }
        // P1: 20 possible, 2 missed = exactly 10 %: persistent. An approved
        // trip (V) counts as present; not-possible marks (X, #) count for
        // nothing.
        let mut p1 = [repeat("/", 17), vec!["V", "O", "I"], vec!["X", "#"]].concat();
        p1.rotate_left(3);
        marks(&mut log, "P1", &p1);
        // P2: 20 possible, 1 missed: not persistent.
        marks(&mut log, "P2", &[repeat("/", 19), vec!["N"]].concat());
        // P3: 10 possible, 5 missed = 50 %: severe.
        marks(&mut log, "P3", &[repeat("\\", 5), repeat("G", 5)].concat());

        let attendance: Attendance = log.fold();
        let report = attendance.report(2025, false);
        let by: HashMap<&str, _> = report
            .pupils
            .iter()
            .map(|p| (p.pupil.as_str(), p))
            .collect();
        let p1 = by["P1"];
        assert_eq!(
            (p1.possible_sessions, p1.present, p1.approved_offsite),
            (20, 18, 1)
        );
        assert_eq!((p1.authorised, p1.unauthorised, p1.not_possible), (1, 1, 2));
        assert_eq!(p1.attendance_pct, Some(90.0));
        assert!(p1.persistent && !p1.severe);
        assert!(!by["P2"].persistent);
        assert!(by["P3"].persistent && by["P3"].severe);
        assert_eq!(report.summary.persistent, 2);
        assert_eq!(report.summary.severe, 1);
        assert_eq!(report.pupils[0].pupil, "P3", "most absent first");

        let persistent = attendance.report(2025, true);
        let names: Vec<&str> = persistent.pupils.iter().map(|p| p.pupil.as_str()).collect();
        assert_eq!(names, vec!["P3", "P1"]);
        assert!(
            attendance.report(2024, false).pupils.is_empty(),
            "another year"
        );
    }

    #[test]
    fn a_corrected_mark_counts_under_its_corrected_code() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let ids = marks(&mut log, "P1", &[repeat("/", 9), vec!["O"]].concat());
        let before: Attendance = log.fold();
        assert!(before.report(2025, false).pupils[0].persistent);
        log.add(
            "P1",
            "2025-09-08T09:00:00Z",
            correction(ids[9], json!({"code": "X"}), "Pupil was on roll elsewhere"),
        );
        let after: Attendance = log.fold();
        let p1 = &after.report(2025, false).pupils[0];
        assert_eq!(
            (p1.possible_sessions, p1.unauthorised, p1.not_possible),
            (9, 0, 1)
        );
        assert!(!p1.persistent);
    }
}

// ---------------------------------------------------------------------------
// Suspensions, behaviour, force, interventions, reintegration
// ---------------------------------------------------------------------------

mod reports {
    use super::*;

    fn suspend(days: f64, start: &str) -> CaseEvent {
        ev(
            "SuspensionIssued",
            json!({"days": days, "reason_code": "PD", "start_date": start}),
        )
    }

    #[test]
    fn suspension_days_total_by_the_academic_year_of_their_start_date() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "9A"));
        log.add("P1", "2025-10-01T08:00:00Z", suspend(3.0, "2025-10-01"));
        let spring = log.add("P1", "2026-01-12T08:00:00Z", suspend(2.5, "2026-01-12"));
        // 31 August is the last day of 2025/26; 1 September starts 2026/27.
        log.add("P1", "2026-08-31T08:00:00Z", suspend(1.0, "2026-08-31"));
        log.add("P1", "2026-09-07T08:00:00Z", suspend(4.0, "2026-09-07"));

        let suspensions: Suspensions = log.fold();
        let y25 = suspensions.report(2025);
        assert_eq!(y25.label, "2025/26");
        let p1 = &y25.pupils[0];
        assert_eq!((p1.suspensions, p1.days, p1.remaining_days), (3, 6.5, 38.5));
        assert!(!p1.over_limit);
        let terms: Vec<(&str, f64)> = p1.terms.iter().map(|t| (t.term.as_str(), t.days)).collect();
        assert_eq!(
            terms,
            vec![("autumn", 3.0), ("spring", 2.5), ("summer", 1.0)]
        );
        assert!(p1
            .terms
            .iter()
            .all(|t| t.board == BoardBand::Representations));
        let y26 = suspensions.report(2026);
        assert_eq!(y26.pupils[0].days, 4.0);

        // A correction of the days counts as corrected.
        log.add(
            "P1",
            "2026-01-13T08:00:00Z",
            correction(spring, json!({"days": 5.5}), "Letter said five and a half"),
        );
        let suspensions: Suspensions = log.fold();
        let p1 = &suspensions.report(2025).pupils[0];
        assert_eq!(p1.days, 9.5);
        let spring = p1
            .terms
            .iter()
            .find(|t| t.term.as_str() == "spring")
            .unwrap();
        assert_eq!(
            spring.board,
            BoardBand::MeetingOnRequest,
            "5.5 days is more than 5"
        );
    }

    #[test]
    fn governing_board_bands_follow_the_days_in_a_term_and_any_permanent_exclusion() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "9A"));
        log.add("P1", "2025-09-15T08:00:00Z", suspend(15.0, "2025-09-15"));
        log.add("P2", "2025-09-01T08:00:00Z", register("P2", "9A"));
        log.add("P2", "2025-09-15T08:00:00Z", suspend(10.0, "2025-09-15"));
        log.add("P2", "2025-11-15T08:00:00Z", suspend(5.5, "2025-11-15"));
        log.add("P3", "2025-09-01T08:00:00Z", register("P3", "9A"));
        log.add(
            "P3",
            "2026-05-04T08:00:00Z",
            ev(
                "PermanentExclusionIssued",
                json!({"reason_code": "PA", "effective_date": "2026-05-04"}),
            ),
        );
        let suspensions: Suspensions = log.fold();
        let report = suspensions.report(2025);
        let band = |p: &str| report.pupils.iter().find(|x| x.pupil == p).unwrap().board;
        assert_eq!(
            band("P1"),
            BoardBand::MeetingOnRequest,
            "15 days is not more than 15"
        );
        assert_eq!(
            band("P2"),
            BoardBand::Reinstatement,
            "15.5 days in the autumn term"
        );
        assert_eq!(band("P3"), BoardBand::Reinstatement);
        assert_eq!(report.totals.permanent_exclusions, 1);
        let p3 = report.pupils.iter().find(|x| x.pupil == "P3").unwrap();
        assert_eq!(
            p3.permanent_exclusions[0].effective_date,
            date("2026-05-04")
        );
    }

    #[test]
    fn incidents_count_by_the_incident_class_or_else_the_pupils_class() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        log.add("P2", "2025-09-01T08:00:00Z", register("P2", "8B"));
        let incident = |class: Option<&str>| {
            let mut data = json!({"category": "disruption", "severity": 2, "location": "classroom",
                                  "description": "Talking over the teacher"});
            if let Some(class) = class {
                data["class"] = json!(class);
            }
            ev("IncidentRecorded", data)
        };
        log.add("P1", "2025-09-15T10:00:00Z", incident(None));
        log.add("P1", "2025-09-16T10:00:00Z", incident(Some("Set 3 maths")));
        log.add("P2", "2025-09-22T10:00:00Z", incident(None));
        let behaviour: Behaviour = log.fold();
        let by_class = behaviour.by(BehaviourDimension::Class, None);
        let rows: Vec<(&str, u64)> = by_class
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.incidents))
            .collect();
        assert_eq!(rows, vec![("8A", 1), ("8B", 1), ("Set 3 maths", 1)]);
        let by_week = behaviour.by(BehaviourDimension::Week, Some(2025));
        let rows: Vec<(&str, u64)> = by_week
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.incidents))
            .collect();
        assert_eq!(rows, vec![("2025-W38", 2), ("2025-W39", 1)]);
        assert_eq!(
            behaviour.by(BehaviourDimension::Category, None).groups[0].pupils,
            2
        );
    }

    #[test]
    fn force_without_parents_informed_is_flagged() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let force = |informed: bool| {
            ev(
                "ReasonableForceUsed",
                json!({"staff": "S003", "reason": "Fighting", "hold": "guide",
                "duration_minutes": 2, "injuries": "none", "parent_informed": informed}),
            )
        };
        log.add("P1", "2025-09-15T10:00:00Z", force(true));
        log.add("P1", "2025-09-16T10:00:00Z", force(false));
        let report = ForceLog::report(&log.fold(), None);
        assert_eq!(report.total, 2);
        assert_eq!(report.parent_not_informed, 1);
        assert!(report.uses[1]
            .flags
            .iter()
            .any(|f| f == "parent not informed"));
        assert!(report.uses[0]
            .flags
            .iter()
            .all(|f| f != "parent not informed"));
    }

    #[test]
    fn intervention_outcomes_by_kind() {
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        let start = |id: &str, kind: &str| {
            ev(
                "InterventionStarted",
                json!({"intervention": id, "kind": kind, "goal": "Calmer mornings"}),
            )
        };
        let session = |id: &str, attended: bool| {
            ev(
                "InterventionSessionDelivered",
                json!({"intervention": id, "attended": attended}),
            )
        };
        log.add("P1", "2025-09-10T08:00:00Z", start("I1", "mentoring"));
        log.add("P1", "2025-09-11T08:00:00Z", session("I1", true));
        log.add("P1", "2025-09-12T08:00:00Z", session("I1", false));
        log.add(
            "P1",
            "2025-10-10T08:00:00Z",
            ev(
                "InterventionEnded",
                json!({"intervention": "I1", "outcome": "achieved"}),
            ),
        );
        log.add("P1", "2025-10-11T08:00:00Z", start("I2", "mentoring"));
        log.add("P1", "2025-10-12T08:00:00Z", session("GHOST", true));
        let report = Interventions::report(&log.fold());
        let k = &report.kinds[0];
        assert_eq!((k.started, k.open, k.ended.achieved), (2, 1, 1));
        assert_eq!((k.sessions_delivered, k.sessions_attended), (2, 1));
        assert_eq!(k.attendance_pct, Some(50.0));
        assert_eq!(report.open[0].intervention, "I2");
        assert_eq!(report.unmatched_sessions, 1);
    }

    #[test]
    fn pupils_awaiting_a_reintegration_meeting_are_listed() {
        let mut log = Log::default();
        for p in ["P1", "P2"] {
            log.add(p, "2025-09-01T08:00:00Z", register(p, "8A"));
            log.add(p, "2025-10-01T08:00:00Z", suspend(2.0, "2025-10-01"));
        }
        log.add(
            "P1",
            "2025-10-03T08:00:00Z",
            ev(
                "ReintegrationMeetingHeld",
                json!({"attendees": ["S001", "parent"], "agreed_support": "Daily check-in"}),
            ),
        );
        log.add(
            "P1",
            "2025-11-03T08:00:00Z",
            ev("ReintegrationCompleted", json!({"outcome": "Settled"})),
        );
        let report = Reintegration::report(&log.fold());
        let status: Vec<(&str, EpisodeStatus)> = report
            .episodes
            .iter()
            .map(|e| (e.pupil.as_str(), e.status))
            .collect();
        assert_eq!(
            status,
            vec![
                ("P1", EpisodeStatus::Completed),
                ("P2", EpisodeStatus::AwaitingMeeting)
            ]
        );
        assert_eq!(report.awaiting.len(), 1);
        assert_eq!(report.awaiting[0].pupil, "P2");
        assert_eq!(report.awaiting[0].since, date("2025-10-01"));
    }
}

// ---------------------------------------------------------------------------
// Replay determinism (property tests)
// ---------------------------------------------------------------------------

/// One step of an arbitrary school log: any event type, for one of a few
/// pupils, including sequences the rules refuse today but an old log may
/// hold (events before registration, reviews of unknown plans, corrections
/// of entries of other pupils or of nothing).
#[derive(Clone, Debug)]
enum Step {
    Event {
        pupil: u8,
        kind: u8,
        a: u8,
        b: u8,
        day: u16,
    },
    Correct {
        pupil: u8,
        target: usize,
        value: u8,
    },
    View {
        pupil: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..4, 0u8..20, any::<u8>(), any::<u8>(), 0u16..700)
            .prop_map(|(pupil, kind, a, b, day)| Step::Event { pupil, kind, a, b, day }),
        2 => (0u8..4, any::<usize>(), any::<u8>())
            .prop_map(|(pupil, target, value)| Step::Correct { pupil, target, value }),
        1 => (0u8..4).prop_map(|pupil| Step::View { pupil }),
    ]
}

const CODES: &[&str] = &[
    "/", "\\", "L", "V", "I", "M", "O", "N", "G", "X", "#", "Y3", "H",
];

/// The event a `Step::Event` stands for.
fn step_event(pupil: &str, kind: u8, a: u8, b: u8, day: NaiveDate) -> CaseEvent {
    let id = format!("X{}", a % 3);
    let case_type = [
        "pastoral",
        "behaviour",
        "safeguarding",
        "attendance",
        "send",
    ][usize::from(a % 5)];
    let outcome = ["achieved", "partly_achieved", "not_achieved", "withdrawn"][usize::from(b % 4)];
    let session = ["am", "pm"][usize::from(b % 2)];
    let sanction = [
        "detention",
        "isolation",
        "internal_exclusion",
        "report_card",
    ][usize::from(a % 4)];
    match kind {
        0 => register(pupil, ["7A", "8B", "9C"][usize::from(a % 3)]),
        1 => ev(
            "CaseOpened",
            json!({"case_type": case_type, "summary": "s"}),
        ),
        2 => ev("CaseClosed", json!({"outcome": "done"})),
        3 => ev("KeyworkerAssigned", json!({"staff": format!("S{}", a % 3)})),
        4 => ev(
            "PlanAgreed",
            json!({"plan": id, "kind": "behaviour_support", "review_due": day}),
        ),
        5 => ev(
            "PlanReviewed",
            json!({"plan": id, "outcome": "ok",
                 "next_review_due": match b % 3 { 0 => Value::Null, _ => json!(day) }}),
        ),
        6 => ev(
            "IncidentRecorded",
            json!({"category": format!("c{}", a % 4), "severity": 1 + b % 5,
                 "location": format!("l{}", b % 3), "description": "d",
                 "participants": match a % 2 { 0 => json!([]), _ => json!([{"pupil": "Q9", "role": "target"}]) }}),
        ),
        7 => ev(
            "AttendanceMarked",
            json!({"date": day, "session": session,
                 "code": CODES[usize::from(a) % CODES.len()]}),
        ),
        8 => ev(
            "SuspensionIssued",
            json!({"days": f64::from(1 + a % 20) / 2.0, "reason_code": "PD", "start_date": day}),
        ),
        9 => ev(
            "PermanentExclusionIssued",
            json!({"reason_code": "PA", "effective_date": day}),
        ),
        10 => ev(
            "ReasonableForceUsed",
            json!({"staff": "S1", "reason": "r", "hold": "h",
                  "duration_minutes": a, "injuries": "none", "parent_informed": b % 2 != 1}),
        ),
        11 => ev(
            "InterventionStarted",
            json!({"intervention": id, "kind": format!("k{}", b % 2), "goal": "g"}),
        ),
        12 => ev(
            "InterventionSessionDelivered",
            json!({"intervention": id, "attended": b % 2 != 1}),
        ),
        13 => ev(
            "InterventionEnded",
            json!({"intervention": id, "outcome": outcome}),
        ),
        14 => ev("SanctionIssued", json!({"kind": sanction, "reason": "r"})),
        15 => ev(
            "ReintegrationMeetingHeld",
            json!({"attendees": ["S1"], "agreed_support": "s"}),
        ),
        16 => ev("ReintegrationCompleted", json!({"outcome": "o"})),
        17 => ev(
            "AlternativeProvisionArranged",
            json!({"provider": "AP1", "start_date": day, "reason": "r"}),
        ),
        18 => ev(
            "ConcernRaised",
            json!({"category": "neglect", "summary": "s"}),
        ),
        _ => ev(
            "ParentContacted",
            json!({"method": "phone", "summary": "s"}),
        ),
    }
}

/// Changes that fit the target's type (or, for `value % 5 == 0`, a field it
/// does not have: a correction that cannot apply).
fn changes_for(target: &CaseEvent, value: u8, day: NaiveDate) -> Value {
    match (value % 5, target) {
        (0, _) => json!({"no_such_field": 1}),
        (_, CaseEvent::PupilRegistered(_)) => json!({"class": format!("C{}", value % 3)}),
        (_, CaseEvent::IncidentRecorded(_)) => {
            json!({"severity": 1 + value % 5, "location": "yard"})
        }
        (_, CaseEvent::AttendanceMarked(_)) => {
            json!({"code": CODES[usize::from(value) % CODES.len()], "date": day})
        }
        (_, CaseEvent::SuspensionIssued(_)) => json!({"days": f64::from(value % 30) / 2.0}),
        (_, CaseEvent::PlanAgreed(_)) => json!({"review_due": day}),
        (_, CaseEvent::CaseOpened(_)) => json!({"case_type": "safeguarding"}),
        (_, CaseEvent::KeyworkerAssigned(_)) => json!({"staff": "S9"}),
        (_, CaseEvent::InterventionStarted(_)) => json!({"kind": "renamed"}),
        (_, CaseEvent::ReasonableForceUsed(_)) => json!({"parent_informed": value % 2 != 1}),
        (_, CaseEvent::SanctionIssued(_)) => json!({"kind": "isolation"}),
        _ => json!({"no_such_field": 1}),
    }
}

/// Builds a log from steps. Occurred times wander (entries are often
/// written down late); recorded times only move forward.
fn build_log(steps: &[Step]) -> Log {
    let mut log = Log::default();
    let base = Utc.with_ymd_and_hms(2025, 9, 1, 8, 0, 0).unwrap();
    let first_day = date("2025-09-01");
    for (i, s) in steps.iter().enumerate() {
        let recorded = base + Duration::minutes(i as i64);
        match s {
            Step::Event {
                pupil,
                kind,
                a,
                b,
                day,
            } => {
                let name = format!("P{pupil}");
                let day = first_day + Duration::days(i64::from(*day));
                let hours = if a % 2 == 0 { *a } else { *b };
                let occurred = base + Duration::hours(i64::from(hours));
                let event = step_event(&name, *kind, *a, *b, day);
                log.add_recorded(&name, occurred, recorded, event);
            }
            Step::Correct {
                pupil,
                target,
                value,
            } => {
                if log.events.is_empty() {
                    continue;
                }
                let target = &log.events[target % log.events.len()];
                let target_id = target.event_id;
                let day = first_day + Duration::days(i64::from(*value) * 3);
                let changes = changes_for(&target.event, *value, day);
                let event = correction(target_id, changes, "fix");
                log.add_recorded(&format!("P{pupil}"), recorded, recorded, event);
            }
            Step::View { pupil } => {
                let name = format!("P{pupil}");
                let event = ev("RecordViewed", json!({"pupil": name, "view": "timeline"}));
                log.add_recorded(&name, recorded, recorded, event);
            }
        }
    }
    log
}

/// Folds `events[..split]`, passes the state through its checkpoint
/// encoding (as a restart does), then folds the rest.
fn fold_through_checkpoint<P: Projection + PartialEq + std::fmt::Debug>(
    events: &[RecordedEvent],
    split: usize,
) -> P {
    let log = Targets::of(events);
    let mut first = P::default();
    fold_in(&mut first, &events[..split], &log);
    let bytes = encode_checkpoint(&first, split as u64, [7; 32]).expect("encode");
    let (mut resumed, position, hash) = decode_checkpoint::<P>(&bytes).expect("decode");
    assert_eq!((position, hash), (split as u64, [7; 32]));
    assert_eq!(resumed, first, "{} survives its checkpoint", P::NAME);
    fold_in(&mut resumed, &events[split..], &log);
    resumed
}

fn assert_replays<P: Projection + PartialEq + std::fmt::Debug>(log: &Log, split: usize) {
    let once: P = log.fold();
    let again: P = log.fold();
    assert_eq!(
        once,
        again,
        "{} folds the same log to the same state",
        P::NAME
    );
    let resumed: P = fold_through_checkpoint(&log.events, split);
    assert_eq!(
        once,
        resumed,
        "{} resumed from a snapshot at {split}",
        P::NAME
    );
}

/// Every report of every view, as JSON: what a user would see.
fn reports(views: &SchoolViews, today: NaiveDate) -> Value {
    json!({
        "caseload": views.caseload.cases(today, None),
        "behaviour": BehaviourDimension::ALL.iter().map(|d| views.behaviour.by(*d, None)).collect::<Vec<_>>(),
        "attendance": [views.attendance.report(2025, false), views.attendance.report(2026, false)],
        "suspensions": [views.suspensions.report(2025), views.suspensions.report(2026)],
        "force": views.force.report(None),
        "interventions": views.interventions.report(),
        "reintegration": views.reintegration.report(),
        "retention": [views.retention.report(today), views.retention.report(NaiveDate::MAX)],
    })
}

fn fold_views(events: &[RecordedEvent]) -> SchoolViews {
    let log = Targets::of(events);
    let mut v = SchoolViews::default();
    for e in events {
        let corrected_at = log.corrected_by(e);
        v.caseload.apply(e, corrected_at);
        v.behaviour.apply(e, corrected_at);
        v.attendance.apply(e, corrected_at);
        v.suspensions.apply(e, corrected_at);
        v.force.apply(e, corrected_at);
        v.interventions.apply(e, corrected_at);
        v.reintegration.apply(e, corrected_at);
        v.retention.apply(e, corrected_at);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Folding all at once, folding in two halves through a checkpoint, and
    /// folding again all give the same state, for every projection, on any
    /// sequence of events (odd ones included, never a panic).
    #[test]
    fn every_projection_replays_to_the_same_state(
        steps in proptest::collection::vec(step(), 0..120),
        cut in any::<prop::sample::Index>(),
    ) {
        let log = build_log(&steps);
        let split = cut.index(log.events.len() + 1);
        assert_replays::<Caseload>(&log, split);
        assert_replays::<Behaviour>(&log, split);
        assert_replays::<Attendance>(&log, split);
        assert_replays::<Suspensions>(&log, split);
        assert_replays::<ForceLog>(&log, split);
        assert_replays::<Interventions>(&log, split);
        assert_replays::<Reintegration>(&log, split);
        assert_replays::<Retention>(&log, split);
        // The reports are built without panicking, whatever the log holds.
        let _ = reports(&fold_views(&log.events), date("2026-03-01"));
        for p in 0..4 {
            let pupil = format!("P{p}");
            let events = log.case(&pupil);
            let c = Chronology::build(&pupil, &events, None, false);
            prop_assert_eq!(&c, &Chronology::build(&pupil, &events, None, false));
            // Every event but the corrections that found their entry shows.
            prop_assert!(c.entries.len() <= events.len());
            let half = Chronology::build(&pupil, &events, Some(at("2025-09-01T08:30:00Z")), false);
            prop_assert!(half.entries.iter().all(|e| e.recorded_at <= at("2025-09-01T08:30:00Z")));
            prop_assert!(half.entries.windows(2).all(|w| (w[0].occurred_at, w[0].position) <= (w[1].occurred_at, w[1].position)));
        }
    }
}

// ---------------------------------------------------------------------------
// The runner against the sled store
// ---------------------------------------------------------------------------

mod runner {
    use super::*;

    fn open(dir: &std::path::Path) -> Arc<dyn EventStore> {
        let store = SledStore::open(dir, true).expect("open store");
        store.log(SCHOOL).expect("open log")
    }

    fn no_progress(_: u64, _: u64) {}

    /// `load_one_sharing` of `P` (sharing from `share` events behind the
    /// head; `load_one` is `SHARE_FOLD_FROM`), and the progress it
    /// reported, `(position reached, head)`: its first is where its pass
    /// started.
    async fn load_watched<P: Projection>(
        store: &dyn EventStore,
        share: u64,
    ) -> (casebook_projections::Loaded<P>, Vec<(u64, u64)>) {
        let seen = std::sync::Mutex::new(Vec::new());
        let loaded = casebook_projections::load_one_sharing::<P>(
            store,
            &|done, head| seen.lock().unwrap().push((done, head)),
            share,
        )
        .await
        .unwrap();
        (loaded, seen.into_inner().unwrap())
    }

    /// Where the view `name` is in `PROJECTION_NAMES`.
    fn index_of(name: &str) -> usize {
        PROJECTION_NAMES.iter().position(|n| *n == name).unwrap()
    }

    /// Appends the log's events to the store, one append each, in log
    /// order.
    async fn append(store: &dyn EventStore, events: &[RecordedEvent]) {
        for e in events {
            // Same ids as the in-memory log, so its corrections still name
            // their entries.
            let mut new = NewEvent::new(&e.event, e.occurred_at, e.actor.clone()).unwrap();
            new.event_id = e.event_id;
            store
                .append(AppendRequest {
                    stream: e.stream,
                    expected: ExpectedVersion::Any,
                    events: vec![new],
                })
                .await
                .unwrap();
        }
    }

    /// Everything in the store, decoded: what a pure fold of the same log
    /// sees.
    async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
        let stored = store.read_all(1, 1_000_000).await.unwrap();
        stored
            .iter()
            .map(|s| RecordedEvent::from_stored(s).unwrap())
            .collect()
    }

    fn sample_log() -> Log {
        let steps: Vec<Step> = (0..90u16)
            .map(|i| Step::Event {
                pupil: (i % 4) as u8,
                kind: if i < 4 { 0 } else { (i % 20) as u8 },
                a: (i * 7 % 256) as u8,
                b: (i * 13 % 256) as u8,
                day: i * 3,
            })
            .collect();
        build_log(&steps)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_resumes_from_checkpoints_and_matches_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let (first, second) = log.events.split_at(50);
        let today = date("2026-03-01");
        {
            let store = open(dir.path());
            append(&*store, first).await;
            let views = SchoolViews::load(&*store, &no_progress).await.unwrap();
            assert_eq!(views.position, 50);
            assert_eq!(
                views.restarted.len(),
                PROJECTION_NAMES.len(),
                "first load builds all"
            );
            assert!(views
                .restarted
                .iter()
                .all(|r| r.reason == RestartReason::NoCheckpoint));
            append(&*store, second).await;
        }
        // A new process: the views resume from their checkpoints.
        let store = open(dir.path());
        let seen = std::sync::Mutex::new(Vec::new());
        let resumed = SchoolViews::load(&*store, &|done, head| {
            seen.lock().unwrap().push((done, head))
        })
        .await
        .unwrap();
        assert!(resumed.restarted.is_empty(), "{:?}", resumed.restarted);
        let total = log.events.len() as u64;
        assert_eq!(resumed.position, total);
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.first(),
            Some(&(50, total)),
            "resumed at the checkpoint, not at 0"
        );
        assert_eq!(seen.last(), Some(&(total, total)));

        let pure = fold_views(&all_events(&*store).await);
        assert_eq!(reports(&resumed, today), reports(&pure, today));

        let report = rebuild(&*store, None, &no_progress).await.unwrap();
        assert_eq!(report.events, total);
        assert_eq!(report.projections.len(), PROJECTION_NAMES.len());
        let rebuilt = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert!(rebuilt.restarted.is_empty());
        assert_eq!(reports(&rebuilt, today), reports(&resumed, today));
    }

    /// `load_one` (what `caseload` and each `report` load) reads and saves
    /// only its own projection's checkpoint, resumes from it, and gives the
    /// view that loading every view gives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_view_loads_and_saves_only_its_own_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let (first, second) = log.events.split_at(50);
        let today = date("2026-03-01");
        let store = open(dir.path());
        append(&*store, first).await;
        let casebook_projections::Loaded {
            view: caseload,
            restarted,
            ..
        } = casebook_projections::load_one::<Caseload>(&*store, &no_progress)
            .await
            .unwrap();
        assert_eq!(
            restarted.map(|r| (r.projection, r.reason)),
            Some(("caseload", RestartReason::NoCheckpoint))
        );
        assert_eq!(
            caseload.cases(today, None),
            fold_views(&all_events(&*store).await)
                .caseload
                .cases(today, None)
        );
        for name in PROJECTION_NAMES {
            let saved = store.load_checkpoint(name).await.unwrap().is_some();
            assert_eq!(saved, *name == "caseload", "checkpoint of {name}");
        }
        append(&*store, second).await;
        let (resumed, seen) = load_watched::<Attendance>(&*store, SHARE_FOLD_FROM).await;
        assert!(resumed.restarted.is_some(), "attendance had no checkpoint");
        assert_eq!(seen.first().map(|s| s.0), Some(0));
        let (caseload, seen) = load_watched::<Caseload>(&*store, SHARE_FOLD_FROM).await;
        assert!(caseload.restarted.is_none(), "{:?}", caseload.restarted);
        let total = log.events.len() as u64;
        assert_eq!(
            seen.first(),
            Some(&(50, total)),
            "resumed at its checkpoint"
        );
        let all = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert_eq!(
            caseload.view.cases(today, None),
            all.caseload.cases(today, None)
        );
        assert_eq!(
            resumed.view.report(2025, false),
            all.attendance.report(2025, false)
        );
    }

    /// A view's stored checkpoint: the position it stands at (`None` for
    /// one that does not decode) and its bytes (`None`: no checkpoint).
    type Stored = Option<(Option<u64>, Vec<u8>)>;

    /// Each view's stored checkpoint, in `PROJECTION_NAMES` order.
    async fn checkpoints(store: &dyn EventStore) -> Vec<Stored> {
        fn at<P: Projection>(bytes: &[u8]) -> Option<u64> {
            decode_checkpoint::<P>(bytes).ok().map(|d| d.1)
        }
        let mut all = Vec::new();
        for name in PROJECTION_NAMES {
            all.push(store.load_checkpoint(name).await.unwrap().map(|bytes| {
                let at = match *name {
                    "caseload" => at::<Caseload>(&bytes),
                    "behaviour" => at::<Behaviour>(&bytes),
                    "attendance" => at::<Attendance>(&bytes),
                    "suspensions" => at::<Suspensions>(&bytes),
                    "force" => at::<ForceLog>(&bytes),
                    "interventions" => at::<Interventions>(&bytes),
                    "reintegration" => at::<Reintegration>(&bytes),
                    "retention" => at::<Retention>(&bytes),
                    other => panic!("a view this test does not know: {other}"),
                };
                (at, bytes)
            }));
        }
        all
    }

    /// What `load_one_sharing` of `shown`, sharing, leaves in the
    /// checkpoints `before`, with the log's head at `head`, by the rules
    /// the runner documents, and the position its pass starts from: the
    /// shown view's checkpoint written again once the events after it,
    /// at `CHECKPOINT_BYTES_PER_EVENT` bytes each, reach its size; each
    /// other view taken when the pass, started at its position (0 when it
    /// has no usable checkpoint), reads at most twice what the shown view
    /// needs and the events it lacks, at `SHARE_BYTES_PER_EVENT` bytes
    /// each, reach its checkpoint's size, and then written at the head.
    fn shared_fold(
        before: &[Stored],
        shown: &str,
        head: u64,
    ) -> (Vec<Stored>, u64, Vec<&'static str>) {
        let i = index_of(shown);
        let (Some(from), shown_len) = before[i]
            .as_ref()
            .map_or((Some(0), 0), |(at, bytes)| (*at, bytes.len() as u64))
        else {
            panic!("the shown view's checkpoint does not decode")
        };
        let reach = from.saturating_sub(head - from);
        let mut start = from;
        let mut brought = Vec::new();
        let after = before
            .iter()
            .zip(PROJECTION_NAMES)
            .map(|(c, name)| {
                let (at, len) = match c {
                    Some((Some(at), bytes)) => (*at, bytes.len() as u64),
                    _ => (0, 0),
                };
                let moved = if *name == shown {
                    c.is_none() || (head - from) * CHECKPOINT_BYTES_PER_EVENT >= shown_len
                } else {
                    at >= reach && (head - at) * SHARE_BYTES_PER_EVENT >= len
                };
                if !moved {
                    return c.clone();
                }
                if *name != shown {
                    start = start.min(at);
                    brought.push(*name);
                }
                Some((Some(head), Vec::new()))
            })
            .collect();
        (after, start, brought)
    }

    /// Checks the checkpoints `now` against those `shared_fold` expects
    /// (a checkpoint written again only by its position).
    fn assert_shared(now: &[Stored], expected: &[Stored], what: &str) {
        for ((now, expected), name) in now.iter().zip(expected).zip(PROJECTION_NAMES) {
            match expected {
                Some((at, bytes)) if bytes.is_empty() => {
                    assert_eq!(
                        now.as_ref().map(|c| c.0),
                        Some(*at),
                        "{what}: {name} brought"
                    )
                }
                other => assert_eq!(now, other, "{what}: {name} left as it was"),
            }
        }
    }

    /// `load_one` of a view that stands far behind the head (the first
    /// report after a demo or a large import) folds, in the same pass, the
    /// other school-wide views that lack most of the same events and are
    /// worth bringing up, from where they stand; a view standing further
    /// back than the shown one stands behind the head, or whose checkpoint
    /// is unreadable when zero is that far, is left as it was; nearer the
    /// head only the view moves. The pass starts at the furthest view it
    /// takes; a view rebuilt from zero says why; what each checkpoint
    /// then holds is a fold of the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_fold_brings_along_the_views_that_would_fold_the_same_events() {
        use casebook_projections::load_one_sharing;
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let today = date("2026-03-01");
        let store = open(dir.path());
        let share = 16;
        // From nothing: every view comes along, each said to have had no
        // checkpoint.
        append(&*store, &log.events[..40]).await;
        let loaded = load_one_sharing::<Caseload>(&*store, &no_progress, share)
            .await
            .unwrap();
        assert_eq!(
            loaded.restarted.map(|r| r.reason),
            Some(RestartReason::NoCheckpoint)
        );
        assert_eq!(loaded.others_restarted.len(), PROJECTION_NAMES.len() - 1);
        assert!(loaded
            .others_restarted
            .iter()
            .all(|r| r.reason == RestartReason::NoCheckpoint && r.projection != "caseload"));
        let now = checkpoints(&*store).await;
        assert!(
            now.iter()
                .all(|c| c.as_ref().map(|c| c.0) == Some(Some(40))),
            "every view brought along"
        );
        let views = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert!(views.restarted.is_empty(), "{:?}", views.restarted);
        assert_eq!(
            reports(&views, today),
            reports(&fold_views(&all_events(&*store).await), today)
        );
        // Fewer events behind than `share`: the view alone.
        append(&*store, &log.events[40..50]).await;
        let before = checkpoints(&*store).await;
        let loaded = load_one_sharing::<Caseload>(&*store, &no_progress, share)
            .await
            .unwrap();
        assert!(loaded.others_restarted.is_empty());
        let caseload = index_of("caseload");
        let mut expected = before.clone();
        expected[caseload] = checkpoints(&*store).await[caseload].clone();
        assert_eq!(
            checkpoints(&*store).await,
            expected,
            "only the caseload moves"
        );
        // Behaviour moves on alone; retention's checkpoint is spoilt.
        append(&*store, &log.events[50..70]).await;
        load_one_sharing::<Behaviour>(&*store, &no_progress, u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            checkpoints(&*store).await[index_of("behaviour")]
                .as_ref()
                .map(|c| c.0),
            Some(Some(70)),
            "the test needs behaviour's checkpoint written at 70"
        );
        store
            .save_checkpoint("retention", b"not a checkpoint".to_vec())
            .await
            .unwrap();
        // Behaviour, 20 behind: views at 40 are too far back (30), and so
        // is zero for retention's; what stands at 50 or later may come.
        append(&*store, &log.events[70..90]).await;
        let before = checkpoints(&*store).await;
        let (expected, start, brought) = shared_fold(&before, "behaviour", 90);
        assert!(
            brought.len() < PROJECTION_NAMES.len() - 1,
            "the test needs views left behind: {brought:?}"
        );
        let (loaded, seen) = load_watched::<Behaviour>(&*store, share).await;
        assert!(
            loaded.others_restarted.is_empty(),
            "{:?}",
            loaded.others_restarted
        );
        assert_eq!(seen.first().map(|s| s.0), Some(start));
        assert_shared(&checkpoints(&*store).await, &expected, "behaviour at 70");
        // Attendance, from its checkpoint at 40, 50 behind: everything is
        // within reach, retention from zero (and said to be unreadable);
        // what is worth it comes along, behaviour (at the head) does not.
        let before = checkpoints(&*store).await;
        assert_eq!(
            before[index_of("attendance")].as_ref().map(|c| c.0),
            Some(Some(40))
        );
        let (expected, start, brought) = shared_fold(&before, "attendance", 90);
        // Every view is within reach here: some are taken, and some (their
        // checkpoints larger than 32 bytes for each event they lack) not.
        assert!(
            brought.contains(&"retention") && brought.len() >= 2,
            "{brought:?}"
        );
        assert!(brought.len() < PROJECTION_NAMES.len() - 2, "{brought:?}");
        assert!(!brought.contains(&"behaviour"));
        let (loaded, seen) = load_watched::<Attendance>(&*store, share).await;
        assert_eq!(seen.first().map(|s| s.0), Some(start));
        assert_eq!(start, 0, "retention from zero");
        assert_eq!(
            loaded
                .others_restarted
                .iter()
                .map(|r| (
                    r.projection,
                    matches!(r.reason, RestartReason::Unreadable(_))
                ))
                .collect::<Vec<_>>(),
            vec![("retention", true)]
        );
        assert_shared(&checkpoints(&*store).await, &expected, "attendance at 40");
        // What every checkpoint holds is the fold of the log.
        let pure = fold_views(&all_events(&*store).await);
        assert_eq!(
            loaded.view.report(2025, false),
            pure.attendance.report(2025, false)
        );
        let views = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert!(views.restarted.is_empty(), "{:?}", views.restarted);
        assert_eq!(reports(&views, today), reports(&pure, today));
        // A checkpoint of another version, at the head: not declined by
        // its position, but rebuilt in a pass from zero, saying why.
        #[derive(serde::Serialize)]
        struct Older<'a> {
            format: u32,
            name: &'a str,
            version: u32,
            position: u64,
            hash: [u8; 32],
            state: Vec<u8>,
        }
        let older = rmp_serde::to_vec_named(&Older {
            format: 1,
            name: "force",
            version: 0,
            position: 90,
            hash: [0; 32],
            state: Vec::new(),
        })
        .unwrap();
        store.save_checkpoint("force", older).await.unwrap();
        store
            .save_checkpoint("caseload", b"not a checkpoint".to_vec())
            .await
            .unwrap();
        let loaded = load_one_sharing::<Caseload>(&*store, &no_progress, share)
            .await
            .unwrap();
        assert!(
            loaded
                .others_restarted
                .iter()
                .any(|r| r.projection == "force"
                    && r.reason
                        == RestartReason::VersionChanged {
                            stored: 0,
                            current: ForceLog::VERSION
                        }),
            "{:?}",
            loaded.others_restarted
        );
        let views = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert!(views.restarted.is_empty(), "{:?}", views.restarted);
        assert_eq!(reports(&views, today), reports(&pure, today));
    }

    /// A view brought along another's fold whose checkpoint the store
    /// refuses, even as by a bug, leaves the command that shows the other
    /// view alone: it is shown and its own checkpoint saved; the refused
    /// ones are left to their own commands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_brought_along_whose_checkpoint_is_refused_fails_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let today = date("2026-03-01");
        let store = open(dir.path());
        append(&*store, &log.events[..40]).await;
        let mut picky = Faulty::new(&store, 7);
        picky.saves_only = Some("caseload");
        let loaded = casebook_projections::load_one_sharing::<Caseload>(&picky, &no_progress, 16)
            .await
            .unwrap();
        assert!(loaded.not_saved.is_none(), "{:?}", loaded.not_saved);
        assert_eq!(loaded.others_restarted.len(), PROJECTION_NAMES.len() - 1);
        assert_eq!(
            loaded.view.cases(today, None),
            fold_views(&all_events(&*store).await)
                .caseload
                .cases(today, None)
        );
        let saved: Vec<bool> = checkpoints(&*store)
            .await
            .iter()
            .map(Option::is_some)
            .collect();
        let only_caseload: Vec<bool> = PROJECTION_NAMES.iter().map(|n| *n == "caseload").collect();
        assert_eq!(saved, only_caseload);
    }

    /// A view restored from its checkpoint writes it again only once the
    /// events after it reach one for every `CHECKPOINT_BYTES_PER_EVENT`
    /// bytes of it; until then each load folds them again from it, with
    /// the answers of a fold of the whole log. A view loaded with every
    /// other (`SchoolViews::load`) keeps the same rule, and a rebuild
    /// always writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_is_written_again_only_once_enough_events_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let today = date("2026-03-01");
        let store = open(dir.path());
        let first = 10;
        append(&*store, &log.events[..first]).await;
        casebook_projections::load_one::<Caseload>(&*store, &no_progress)
            .await
            .unwrap();
        let saved = store.load_checkpoint("caseload").await.unwrap().unwrap();
        let at = at_of::<Caseload>;
        assert_eq!(at(&saved), first as u64);
        // Events after the checkpoint that are not yet worth writing it
        // again for, and the one that is.
        let due = (saved.len() as u64).div_ceil(CHECKPOINT_BYTES_PER_EVENT) as usize;
        assert!(due > 1, "a checkpoint of {} bytes", saved.len());
        assert!(
            first + due < log.events.len(),
            "the sample log is too short for a checkpoint of {} bytes",
            saved.len()
        );
        for n in [1, due - 1] {
            let end = first + n;
            let have = store.head().await.unwrap().position as usize;
            append(&*store, &log.events[have..end]).await;
            let casebook_projections::Loaded {
                view: caseload,
                restarted,
                ..
            } = casebook_projections::load_one::<Caseload>(&*store, &no_progress)
                .await
                .unwrap();
            assert!(restarted.is_none(), "{restarted:?}");
            assert_eq!(
                caseload.cases(today, None),
                fold_views(&all_events(&*store).await)
                    .caseload
                    .cases(today, None),
                "{n} events after the checkpoint"
            );
            let now = store.load_checkpoint("caseload").await.unwrap().unwrap();
            assert_eq!(now, saved, "written again {n} events after it");
        }
        // The same for every view loaded at once: each is at `first` or
        // was written from nothing here (no checkpoint).
        let views = SchoolViews::load(&*store, &no_progress).await.unwrap();
        let head = (first + due - 1) as u64;
        assert_eq!(views.position, head);
        let now = store.load_checkpoint("caseload").await.unwrap().unwrap();
        assert_eq!(now, saved, "written again by the load of every view");
        // One more event: now worth writing.
        append(&*store, &log.events[first + due - 1..first + due]).await;
        casebook_projections::load_one::<Caseload>(&*store, &no_progress)
            .await
            .unwrap();
        let now = store.load_checkpoint("caseload").await.unwrap().unwrap();
        assert_eq!(at(&now), head + 1, "not written {due} events after it");
        // A rebuild writes whatever moved.
        let behaviour = store.load_checkpoint("behaviour").await.unwrap().unwrap();
        assert_eq!(at_of::<Behaviour>(&behaviour), head);
        rebuild(&*store, None, &no_progress).await.unwrap();
        let behaviour = store.load_checkpoint("behaviour").await.unwrap().unwrap();
        assert_eq!(at_of::<Behaviour>(&behaviour), head + 1);
    }

    /// A checkpoint larger than `CHECKPOINT_READ_WHOLE` is decoded as it
    /// is read, not read whole first: a view restored so is the view
    /// restored from the same bytes in memory, and the fold of the whole
    /// log, for every built-in view.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_checkpoint_is_decoded_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = sample_log();
        let today = date("2026-03-01");
        let store = open(dir.path());
        let half = log.events.len() / 2;
        append(&*store, &log.events[..half]).await;
        SchoolViews::load(&*store, &no_progress).await.unwrap();
        append(&*store, &log.events[half..]).await;
        let folded = fold_views(&all_events(&*store).await);
        for len in [None, Some(CHECKPOINT_READ_WHOLE + 1)] {
            let mut large = Faulty::new(&store, 7);
            large.checkpoint_len = len;
            let casebook_projections::Loaded {
                view: caseload,
                restarted,
                ..
            } = casebook_projections::load_one::<Caseload>(&large, &no_progress)
                .await
                .unwrap();
            assert!(restarted.is_none(), "{len:?}: {restarted:?}");
            assert_eq!(
                caseload.cases(today, None),
                folded.caseload.cases(today, None),
                "{len:?}"
            );
            let views = SchoolViews::load(&large, &no_progress).await.unwrap();
            assert!(views.restarted.is_empty(), "{len:?}: {:?}", views.restarted);
            assert_eq!(
                serde_json::to_value(views.attendance.report(2025, false)).unwrap(),
                serde_json::to_value(folded.attendance.report(2025, false)).unwrap(),
                "{len:?}"
            );
            assert_eq!(
                serde_json::to_value(views.behaviour.by(BehaviourDimension::Category, None))
                    .unwrap(),
                serde_json::to_value(folded.behaviour.by(BehaviourDimension::Category, None))
                    .unwrap(),
                "{len:?}"
            );
        }
    }

    /// A checkpoint the store fails to read (the disk, not its bytes) is
    /// the store's failure, reported as such, whether it is read whole or
    /// decoded as it is read; it is not taken for a damaged checkpoint and
    /// the view rebuilt over it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_the_store_fails_to_read_is_an_error_not_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&*store, &sample_log().events).await;
        casebook_projections::load_one::<Caseload>(&*store, &no_progress)
            .await
            .unwrap();
        let saved = store.load_checkpoint("caseload").await.unwrap().unwrap();
        for len in [None, Some(CHECKPOINT_READ_WHOLE + 1)] {
            for after in [0, 10, saved.len() / 2, saved.len() - 1] {
                let mut failing = Faulty::new(&store, 7);
                failing.checkpoint_len = len;
                failing.checkpoint_fails_after = Some(after);
                let err = casebook_projections::load_one::<Caseload>(&failing, &no_progress)
                    .await
                    .err();
                assert!(
                    matches!(&err, Some(ProjectionError::Store(e)) if e.to_string().contains("injected")),
                    "{len:?}, failing after {after} bytes: {err:?}"
                );
            }
        }
        let now = store.load_checkpoint("caseload").await.unwrap().unwrap();
        assert_eq!(now, saved, "the checkpoint was written over");
    }

    /// A checkpoint the store refuses (a full disk) does not cost a
    /// command its view: `load_one` and `SchoolViews::load` return what a
    /// fold of the log gives and say what was not saved; nothing is
    /// written; a rebuild, whose work is the checkpoints, fails; with room
    /// again the next load saves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_the_store_refuses_leaves_the_views_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&*store, &sample_log().events).await;
        let today = date("2026-03-01");
        let folded = reports(&fold_views(&all_events(&*store).await), today);
        let mut full = Faulty::new(&store, 7);
        full.refuse_saves = true;
        let loaded = casebook_projections::load_one::<Caseload>(&full, &no_progress)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(loaded.view.cases(today, None)).unwrap(),
            folded["caseload"]
        );
        let not_saved = loaded.not_saved.expect("the refusal said");
        assert_eq!(not_saved.projection, "caseload");
        assert!(not_saved.reason.contains("full"), "{not_saved:?}");
        let views = SchoolViews::load(&full, &no_progress).await.unwrap();
        assert_eq!(reports(&views, today), folded);
        let refused: Vec<&str> = views.not_saved.iter().map(|n| n.projection).collect();
        assert_eq!(refused, PROJECTION_NAMES);
        for name in PROJECTION_NAMES {
            assert!(
                store.load_checkpoint(name).await.unwrap().is_none(),
                "{name}"
            );
        }
        let err = rebuild(&full, None, &no_progress).await.err();
        assert!(
            matches!(&err, Some(ProjectionError::Store(e)) if e.to_string().contains("full")),
            "{err:?}"
        );
        // Any other refusal (a bug, damage) fails the command, as before.
        let mut buggy = Faulty::new(&store, 7);
        buggy.refuse_as_bug = true;
        let err = casebook_projections::load_one::<Caseload>(&buggy, &no_progress)
            .await
            .err();
        assert!(
            matches!(&err, Some(ProjectionError::Store(e)) if e.to_string().contains("a test's")),
            "{err:?}"
        );
        // The disk fills while a checkpoint is written (the stores that
        // stream it to a file): the same.
        let mut filling = Faulty::new(&store, 7);
        filling.room_for = Some(100);
        let loaded = casebook_projections::load_one::<Caseload>(&filling, &no_progress)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(loaded.view.cases(today, None)).unwrap(),
            folded["caseload"]
        );
        assert!(loaded.not_saved.expect("said").reason.contains("full"));
        assert!(store.load_checkpoint("caseload").await.unwrap().is_none());
        // A process that keeps the views: a catch-up whose saves are
        // refused moves on and says so; the next one, with room again,
        // saves the views refused, new events or not.
        let mut kept = SchoolViews::load(&*store, &no_progress).await.unwrap();
        assert!(kept.not_saved.is_empty());
        let contact = CaseEvent::from_type_and_data(
            "ParentContacted",
            json!({"method": "phone", "summary": "called home"}),
        )
        .unwrap();
        for _ in 0..5 {
            let new = NewEvent::new(&contact, at("2026-02-02T10:00:00Z"), "S1").unwrap();
            store
                .append(AppendRequest {
                    stream: StreamId::for_pupil(SCHOOL, "P1"),
                    expected: ExpectedVersion::Any,
                    events: vec![new],
                })
                .await
                .unwrap();
        }
        let head = store.head().await.unwrap();
        assert_eq!(kept.catch_up(&full, &no_progress).await.unwrap(), 5);
        assert_eq!(kept.position, head.position);
        assert_eq!(kept.not_saved.len(), PROJECTION_NAMES.len());
        let stored = store.load_checkpoint("caseload").await.unwrap().unwrap();
        assert_eq!(
            at_of::<Caseload>(&stored),
            head.position - 5,
            "refused: the one before stays"
        );
        assert_eq!(kept.catch_up(&*store, &no_progress).await.unwrap(), 0);
        assert!(kept.not_saved.is_empty(), "{:?}", kept.not_saved);
        let stored = store.load_checkpoint("caseload").await.unwrap().unwrap();
        assert_eq!(
            at_of::<Caseload>(&stored),
            head.position,
            "saved once there was room"
        );
        let again = casebook_projections::load_one::<Caseload>(&*store, &no_progress)
            .await
            .unwrap();
        assert!(again.not_saved.is_none());
        assert!(again.restarted.is_none());
    }

    fn at_of<P: Projection>(bytes: &[u8]) -> u64 {
        decode_checkpoint::<P>(bytes).unwrap().1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_of_another_version_or_unreadable_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&*store, &sample_log().events).await;
        let good = SchoolViews::load(&*store, &no_progress).await.unwrap();

        // A checkpoint an older casebook wrote: same wrapper, version 0.
        let old = rmp_serde::to_vec_named(&json!({
            "format": 1,
            "name": "caseload",
            "version": 0,
            "position": 3,
            "hash": vec![0u8; 32],
            "state": null,
        }))
        .unwrap();
        store.save_checkpoint("caseload", old).await.unwrap();
        store
            .save_checkpoint("attendance", b"not a checkpoint".to_vec())
            .await
            .unwrap();

        let again = SchoolViews::load(&*store, &no_progress).await.unwrap();
        let reasons: HashMap<&str, &RestartReason> = again
            .restarted
            .iter()
            .map(|r| (r.projection, &r.reason))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(
            reasons["caseload"],
            &RestartReason::VersionChanged {
                stored: 0,
                current: Caseload::VERSION
            }
        );
        assert!(matches!(
            reasons["attendance"],
            RestartReason::Unreadable(_)
        ));
        let today = date("2026-03-01");
        assert_eq!(reports(&again, today), reports(&good, today));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rebuilding_one_projection_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&*store, &sample_log().events).await;
        SchoolViews::load(&*store, &no_progress).await.unwrap();
        let before = store.load_checkpoint("behaviour").await.unwrap();
        let report = rebuild(&*store, Some("caseload"), &no_progress)
            .await
            .unwrap();
        assert_eq!(report.projections, vec!["caseload".to_string()]);
        assert_eq!(store.load_checkpoint("behaviour").await.unwrap(), before);
        let err = rebuild(&*store, Some("timetable"), &no_progress)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProjectionError::UnknownProjection { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("caseload, behaviour"), "{err}");
        assert!(!err.is_store_failure());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undecodable_payload_is_an_error_naming_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&*store, &sample_log().events[..5]).await;
        let mut bad =
            NewEvent::new(&register("P7", "7A"), at("2025-09-01T08:00:00Z"), "S001").unwrap();
        bad.payload = vec![0xc1, 0xff, 0x00];
        store
            .append(AppendRequest {
                stream: StreamId::for_pupil(SCHOOL, "P7"),
                expected: ExpectedVersion::Any,
                events: vec![bad],
            })
            .await
            .unwrap();
        let err = SchoolViews::load(&*store, &no_progress).await.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Decode { position: 6, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("position 6"), "{err}");
        assert!(err.is_store_failure());
        // The audit trail still lists it, for the auditor to see.
        let trail = audit_of(&*store, SCHOOL, "P7").await.unwrap();
        assert!(trail.events[0].decode_error.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeline_and_audit_read_one_pupil_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut log = Log::default();
        log.add("P1", "2025-09-01T08:00:00Z", register("P1", "8A"));
        log.add("P2", "2025-09-01T08:00:00Z", register("P2", "8A"));
        log.add(
            "P1",
            "2025-09-02T08:00:00Z",
            ev(
                "ConcernRaised",
                json!({"category": "neglect", "summary": "Hungry"}),
            ),
        );
        log.add(
            "P1",
            "2025-09-03T08:00:00Z",
            ev(
                "RecordViewed",
                json!({"pupil": "P1", "view": "timeline", "purpose": "strategy meeting"}),
            ),
        );
        append(&*store, &log.events).await;

        let c = chronology_of(&*store, SCHOOL, "P1", None, false)
            .await
            .unwrap();
        assert_eq!(
            c.entries.len(),
            2,
            "the access log is not part of the chronology"
        );
        let trail = audit_of(&*store, SCHOOL, "P1").await.unwrap();
        assert_eq!(trail.events.len(), 2);
        assert_eq!(
            trail.events[0].prev_hash,
            "0".repeat(64),
            "first event of the log"
        );
        let all = store.read_all(1, 10).await.unwrap();
        assert_eq!(
            trail.events[1].prev_hash,
            casebook_engine::envelope::hex(&all[1].hash),
            "P1's second entry follows P2's registration in the chain"
        );
        assert_eq!(trail.access_log.len(), 1);
        assert_eq!(trail.access_log[0].view, "timeline");
        assert_eq!(
            trail.access_log[0].purpose.as_deref(),
            Some("strategy meeting")
        );
        let err = chronology_of(&*store, SCHOOL, "NOBODY", None, false)
            .await
            .unwrap_err();
        assert!(matches!(err, ProjectionError::UnknownPupil { .. }));
    }

    // -----------------------------------------------------------------------
    // The pipelined fold: pages read ahead on this task, folded on a thread
    // -----------------------------------------------------------------------

    /// A store that hands the runner pages of `page` events (so a small log
    /// is many pages, and the fold thread runs) and can be told to damage
    /// one of them.
    struct Faulty {
        inner: Arc<dyn EventStore>,
        page: usize,
        /// The payload of the event at this position does not decode.
        corrupt: Option<u64>,
        /// `read_all` of a page holding this position fails.
        fail_read: Option<u64>,
        /// The event at this position is left out of its page.
        drop: Option<u64>,
        /// `read_all` from this position on returns nothing.
        empty_from: Option<u64>,
        /// Pages returned.
        reads: std::sync::atomic::AtomicUsize,
        /// The size `open_checkpoint` reports for every checkpoint, in
        /// place of its own (so that a small one is decoded as a large
        /// one is, as it is read).
        checkpoint_len: Option<u64>,
        /// A checkpoint's reader fails after this many bytes.
        checkpoint_fails_after: Option<usize>,
        /// Every checkpoint is refused as on a full disk.
        refuse_saves: bool,
        /// Every checkpoint is refused as by a bug of the store's.
        refuse_as_bug: bool,
        /// Every checkpoint but this one is refused as by a bug.
        saves_only: Option<&'static str>,
        /// A checkpoint's writer runs out of room after this many bytes,
        /// as a store that streams it to a file does on a full disk.
        room_for: Option<usize>,
    }

    /// A checkpoint's bytes, read a few at a time, failing after `fail_at`.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        fail_at: usize,
    }

    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at >= self.fail_at {
                return Err(std::io::Error::other("injected checkpoint read failure"));
            }
            let end = self.bytes.len().min(self.fail_at).min(self.at + 1_000);
            let n = buf.len().min(end - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Faulty {
        /// How the store refuses the checkpoint `name`, if it does
        /// (`refuse_saves`, `refuse_as_bug`, `saves_only`).
        fn refusal(&self, name: &str) -> Option<casebook_engine::StoreError> {
            if self.refuse_saves {
                return Some(casebook_engine::StoreError::DiskFull {
                    during: "save a checkpoint",
                });
            }
            (self.refuse_as_bug || self.saves_only.is_some_and(|only| only != name))
                .then(|| casebook_engine::StoreError::Internal("a test's".into()))
        }

        fn new(inner: &Arc<dyn EventStore>, page: usize) -> Faulty {
            Faulty {
                inner: inner.clone(),
                page,
                corrupt: None,
                fail_read: None,
                drop: None,
                empty_from: None,
                reads: Default::default(),
                checkpoint_len: None,
                checkpoint_fails_after: None,
                refuse_saves: false,
                refuse_as_bug: false,
                saves_only: None,
                room_for: None,
            }
        }
    }

    #[async_trait::async_trait]
    impl EventStore for Faulty {
        async fn append_atomic(
            &self,
            requests: Vec<AppendRequest>,
        ) -> Result<Vec<casebook_engine::Appended>, casebook_engine::StoreError> {
            self.inner.append_atomic(requests).await
        }

        async fn read_stream(
            &self,
            stream: StreamId,
            from_version: u64,
            max: usize,
        ) -> Result<Vec<casebook_engine::StoredEvent>, casebook_engine::StoreError> {
            self.inner.read_stream(stream, from_version, max).await
        }

        async fn read_all(
            &self,
            from: u64,
            max: usize,
        ) -> Result<Vec<casebook_engine::StoredEvent>, casebook_engine::StoreError> {
            if self.empty_from.is_some_and(|p| from >= p) {
                return Ok(Vec::new());
            }
            let mut page = self.inner.read_all(from, max.min(self.page)).await?;
            if let Some(p) = self.fail_read {
                if page.iter().any(|e| e.position == p) {
                    return Err(casebook_engine::StoreError::Io {
                        during: "read",
                        source: "injected failure".into(),
                    });
                }
            }
            for e in &mut page {
                if Some(e.position) == self.corrupt {
                    e.payload = vec![0xc1, 0xff, 0x00];
                }
            }
            page.retain(|e| Some(e.position) != self.drop);
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(page)
        }

        async fn stream_version(
            &self,
            stream: StreamId,
        ) -> Result<u64, casebook_engine::StoreError> {
            self.inner.stream_version(stream).await
        }

        async fn find_event(
            &self,
            event_id: Uuid,
        ) -> Result<Option<casebook_engine::StoredEvent>, casebook_engine::StoreError> {
            self.inner.find_event(event_id).await
        }

        async fn head(&self) -> Result<casebook_engine::store::Head, casebook_engine::StoreError> {
            self.inner.head().await
        }

        fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.watch_head()
        }

        async fn load_checkpoint(
            &self,
            name: &str,
        ) -> Result<Option<Vec<u8>>, casebook_engine::StoreError> {
            self.inner.load_checkpoint(name).await
        }

        async fn open_checkpoint(
            &self,
            name: &str,
        ) -> Result<Option<casebook_engine::store::CheckpointReader>, casebook_engine::StoreError>
        {
            let Some(bytes) = self.inner.load_checkpoint(name).await? else {
                return Ok(None);
            };
            Ok(Some(casebook_engine::store::CheckpointReader {
                len: self.checkpoint_len.unwrap_or(bytes.len() as u64),
                bytes: Box::new(Trickle {
                    fail_at: self.checkpoint_fails_after.unwrap_or(usize::MAX),
                    bytes,
                    at: 0,
                }),
            }))
        }

        async fn save_checkpoint(
            &self,
            name: &str,
            bytes: Vec<u8>,
        ) -> Result<(), casebook_engine::StoreError> {
            match self.refusal(name) {
                Some(e) => Err(e),
                None => self.inner.save_checkpoint(name, bytes).await,
            }
        }

        async fn save_checkpoint_with(
            &self,
            name: &str,
            size_hint: usize,
            write: casebook_engine::store::CheckpointWriter<'_>,
        ) -> Result<(), casebook_engine::StoreError> {
            match self.room_for {
                Some(left) => match write(&mut casebook_engine::testing::Full { room: left }) {
                    Ok(()) => panic!("the checkpoint fits in {left} bytes: give it less"),
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                        Err(casebook_engine::StoreError::DiskFull {
                            during: "write a checkpoint",
                        })
                    }
                    Err(e) => Err(casebook_engine::StoreError::io("write a checkpoint", e)),
                },
                None => match self.refusal(name) {
                    Some(e) => Err(e),
                    None => {
                        self.inner
                            .save_checkpoint_with(name, size_hint, write)
                            .await
                    }
                },
            }
        }

        async fn clear_checkpoints(&self) -> Result<(), casebook_engine::StoreError> {
            self.inner.clear_checkpoints().await
        }

        async fn verify(
            &self,
            progress: &(dyn Fn(u64) + Send + Sync),
        ) -> Result<casebook_engine::store::VerifyReport, casebook_engine::StoreError> {
            self.inner.verify(progress).await
        }
    }

    /// A projection that keeps every event it is fed: what the runner
    /// feeds, in the order it feeds it.
    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Seen {
        events: Vec<(u64, Uuid)>,
    }

    impl Projection for Seen {
        const NAME: &'static str = "seen-by-test";
        const VERSION: u32 = 1;

        fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
            self.events.push((event.position, event.event_id));
        }
    }

    /// `(position, id)` of every case event in the store: what a fold must
    /// see, once each, in this order.
    async fn case_events(store: &dyn EventStore) -> Vec<(u64, Uuid)> {
        store
            .read_all(1, 1_000_000)
            .await
            .unwrap()
            .iter()
            .filter(|e| !casebook_engine::access::is_non_case_type(&e.event_type))
            .map(|e| (e.position, e.event_id))
            .collect()
    }

    /// The progress the runner reports on pages of `page` events from 0,
    /// up to `last` (the end of the last page folded).
    fn page_ends(page: u64, last: u64) -> Vec<(u64, u64)> {
        Vec::new()
            .into_iter()
            .chain(std::iter::once(0))
            .chain((1..).map(|k| k * page).take_while(|&e| e < last))
            .chain((last > 0).then_some(last))
            .map(|p| (p, 0))
            .collect()
    }

    async fn all_checkpoints(store: &dyn EventStore) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        for name in PROJECTION_NAMES {
            out.push(store.load_checkpoint(name).await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipelined_fold_sees_every_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = sample_log();
        append(&*store, &log.events).await;
        let total = log.events.len() as u64;
        let expected = case_events(&*store).await;
        // In one page (no fold thread), as the reference.
        rebuild(&*store, None, &no_progress).await.unwrap();
        let one_page = all_checkpoints(&*store).await;
        let today = date("2026-03-01");
        let pure = reports(&fold_views(&all_events(&*store).await), today);
        for page in [1, 2, 7, 64] {
            let faulty = Faulty::new(&store, page);
            let seen = std::sync::Mutex::new(Vec::new());
            let got: Seen = casebook_projections::load_projection(&faulty, &|done, head| {
                assert_eq!(head, total);
                seen.lock().unwrap().push((done, 0));
            })
            .await
            .unwrap();
            assert_eq!(got.events, expected, "page of {page}");
            assert_eq!(
                seen.into_inner().unwrap(),
                page_ends(page as u64, total),
                "progress after each page, page of {page}"
            );
            let reads = faulty.reads.load(std::sync::atomic::Ordering::Relaxed);
            assert!(reads >= (total as usize).div_ceil(page), "{reads}");
            // Every view, and its checkpoint byte for byte.
            let report = rebuild(&faulty, None, &no_progress).await.unwrap();
            assert_eq!(report.events, total);
            assert_eq!(all_checkpoints(&*store).await, one_page, "page of {page}");
            store.clear_checkpoints().await.unwrap();
            let views = SchoolViews::load(&faulty, &no_progress).await.unwrap();
            assert_eq!(reports(&views, today), pure, "page of {page}");
        }
    }

    /// On a single-threaded runtime the pages are read in turn: the same
    /// events, the same progress, the same errors.
    #[tokio::test(flavor = "current_thread")]
    async fn without_threads_to_spare_the_fold_reads_each_page_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = sample_log();
        append(&*store, &log.events).await;
        let total = log.events.len() as u64;
        let expected = case_events(&*store).await;
        let faulty = Faulty::new(&store, 7);
        let seen = std::sync::Mutex::new(Vec::new());
        let got: Seen = casebook_projections::load_projection(&faulty, &|done, _| {
            seen.lock().unwrap().push((done, 0))
        })
        .await
        .unwrap();
        assert_eq!(got.events, expected);
        assert_eq!(seen.into_inner().unwrap(), page_ends(7, total));
        let mut faulty = Faulty::new(&store, 7);
        faulty.corrupt = Some(expected[50].0);
        let err = rebuild(&faulty, None, &no_progress).await.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Decode { position, .. } if position == expected[50].0),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipelined_fold_stops_at_the_first_damaged_page_and_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = sample_log();
        append(&*store, &log.events).await;
        let total = log.events.len() as u64;
        let expected = case_events(&*store).await;
        let page = 7u64;
        // A case event well into the log: pages of it are read ahead.
        let (bad, _) = expected[50];
        let run = |faulty: Faulty| async move {
            let seen = std::sync::Mutex::new(Vec::new());
            let result = rebuild(&faulty, None, &|done, _| {
                seen.lock().unwrap().push((done, 0))
            })
            .await;
            (result, seen.into_inner().unwrap())
        };

        // A payload that does not decode.
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.corrupt = Some(bad);
        let (result, seen) = run(faulty).await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Decode { position, .. } if position == bad),
            "{err}"
        );
        assert_eq!(seen, page_ends(page, (bad - 1) / page * page));
        assert_eq!(
            all_checkpoints(&*store).await,
            vec![None; PROJECTION_NAMES.len()]
        );

        // A read that fails.
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.fail_read = Some(bad);
        let (result, seen) = run(faulty).await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Store(_)) && err.to_string().contains("injected"),
            "{err}"
        );
        assert_eq!(seen, page_ends(page, (bad - 1) / page * page));
        assert_eq!(
            all_checkpoints(&*store).await,
            vec![None; PROJECTION_NAMES.len()]
        );

        // Both: the earlier one is reported, as a fold in one thread would.
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.corrupt = Some(bad);
        faulty.fail_read = Some(bad + 2 * page);
        let err = run(faulty).await.0.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Decode { position, .. } if position == bad),
            "{err}"
        );
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.corrupt = Some(bad + 2 * page);
        faulty.fail_read = Some(bad);
        let err = run(faulty).await.0.unwrap_err();
        assert!(matches!(err, ProjectionError::Store(_)), "{err}");

        // An event left out, and a log that ends before its head.
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.drop = Some(bad);
        let err = run(faulty).await.0.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Gap { expected, found } if expected == bad && found == bad + 1),
            "{err}"
        );
        let mut faulty = Faulty::new(&store, page as usize);
        faulty.empty_from = Some(bad);
        let err = run(faulty).await.0.unwrap_err();
        // The first page that starts at or after it is empty.
        let empty = (bad - 1).div_ceil(page) * page + 1;
        assert!(
            matches!(err, ProjectionError::Missing { position, head } if position == empty && head == total),
            "{err}"
        );
        assert_eq!(
            all_checkpoints(&*store).await,
            vec![None; PROJECTION_NAMES.len()]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_catch_up_stopped_by_an_error_has_folded_what_one_thread_would_have() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = sample_log();
        append(&*store, &log.events[..3]).await;
        let mut views = SchoolViews::load(&*store, &no_progress).await.unwrap();
        append(&*store, &log.events[3..]).await;
        let events = all_events(&*store).await;
        let bad = case_events(&*store).await[60].0;
        let mut faulty = Faulty::new(&store, 5);
        faulty.corrupt = Some(bad);
        let err = views.catch_up(&faulty, &no_progress).await.unwrap_err();
        assert!(
            matches!(err, ProjectionError::Decode { position, .. } if position == bad),
            "{err}"
        );
        // Every event before the bad one is folded (those of its page too),
        // none after it, none twice.
        let today = date("2026-03-01");
        let before = fold_views(&events[..(bad - 1) as usize]);
        assert_eq!(reports(&views, today), reports(&before, today));
        assert_eq!(views.position, 3, "the views did not move");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        /// However the log is cut by restarts, the views after resuming
        /// from checkpoints equal the views of a full rebuild.
        #[test]
        fn resumed_views_equal_rebuilt_views(
            steps in proptest::collection::vec(step(), 1..60),
            cut in any::<prop::sample::Index>(),
        ) {
            let log = build_log(&steps);
            let split = cut.index(log.events.len() + 1);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let today = date("2026-03-01");
                {
                    let store = open(dir.path());
                    append(&*store, &log.events[..split]).await;
                    SchoolViews::load(&*store, &no_progress).await.unwrap();
                    append(&*store, &log.events[split..]).await;
                }
                let store = open(dir.path());
                let resumed = SchoolViews::load(&*store, &no_progress).await.unwrap();
                rebuild(&*store, None, &no_progress).await.unwrap();
                let rebuilt = SchoolViews::load(&*store, &no_progress).await.unwrap();
                assert_eq!(reports(&resumed, today), reports(&rebuilt, today));
                let pure = fold_views(&all_events(&*store).await);
                assert_eq!(reports(&resumed, today), reports(&pure, today));
            });
        }
    }
}
