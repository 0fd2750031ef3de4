//! The retention view: for every pupil, what `casebook retention` needs to
//! say when their record may be erased under the school's retention
//! schedule ([`RULES`], the IRMS Information Management Toolkit for
//! Schools; docs/security.md): the date of birth every period runs from
//! (as corrected), whether the pupil has SEN, which kinds of record the
//! log holds for them, and whether the record is under a legal hold or
//! erased already.
//!
//! Kept incrementally like every school-wide view, so that a retention
//! run reads its checkpoint and the events since instead of the whole log
//! (a 9.9M-event store: about 2 s a run before, against 0.02–0.15 s).
//!
//! The record kinds are by event type (a case's and a plan's by their
//! kind too), never by a correction: a correction does not move a record
//! in or out of a kind. A register mark makes a record pastoral
//! only once the pupil has some other event before it in the log, as the
//! whole-log scan this view replaced counted it.

use casebook_engine::event::{CaseEvent, CaseType, PlanKind, SAFEGUARDING_TYPES};
use casebook_engine::RecordedEvent;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::pupil_map::PupilMap;
use crate::Projection;

/// A retention rule: record kind, years after the date of birth, source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub record: &'static str,
    pub years: u32,
    pub source: &'static str,
}

/// The retention schedule (docs/security.md). Every period runs from the
/// pupil's date of birth. A record's kinds are kept as bits in this order
/// ([`RetentionFacts::kinds`]).
pub const RULES: &[Rule] = &[
    Rule {
        record: "safeguarding",
        years: 25,
        source: "IRMS Information Management Toolkit for Schools: child protection records, DOB + 25 years",
    },
    Rule {
        record: "send",
        years: 31,
        source: "IRMS Toolkit: SEN files and EHCP, DOB + 31 years",
    },
    Rule {
        record: "behaviour",
        years: 25,
        source: "IRMS Toolkit: pupil record (secondary), DOB + 25 years",
    },
    Rule {
        record: "pastoral",
        years: 25,
        source: "IRMS Toolkit: pupil record (secondary), DOB + 25 years",
    },
];

/// A record with nothing but its registration is kept as a pupil record:
/// date of birth + 25 years.
const PUPIL_RECORD_YEARS: u32 = 25;

const SAFEGUARDING: u8 = 1 << 0;
const SEND: u8 = 1 << 1;
const BEHAVIOUR: u8 = 1 << 2;
const PASTORAL: u8 = 1 << 3;

/// The record kind an event belongs to, as a bit of [`RULES`]'s order;
/// `None` for the events that belong to none (registration, corrections,
/// erasure, holds, transfers, access-log entries). A case's kind and an
/// EHCP are in their fields; every other event's kind is its type's
/// ([`kind_of_type`]).
///
/// The view keeps each stream's kinds as they were when its events were
/// folded: a change here changes what a checkpoint means, so it must come
/// with a new [`Retention::VERSION`] (the checkpoints are then folded
/// again). `kinds_by_type_are_pinned` lists every type's kind so that no
/// change goes unnoticed; `casebook retention --apply` also reads each
/// pupil's own record again before it erases it.
fn kind(event: &CaseEvent) -> Option<u8> {
    match event {
        CaseEvent::CaseOpened(c) => Some(match c.case_type {
            CaseType::Safeguarding => SAFEGUARDING,
            CaseType::Send => SEND,
            _ => PASTORAL,
        }),
        CaseEvent::PlanAgreed(p) if p.kind == PlanKind::Ehcp => Some(SEND),
        other => kind_of_type(other.type_name()),
    }
}

/// The record kind of an event of type `event_type` whose fields do not
/// say it (see [`kind`]).
fn kind_of_type(event_type: &str) -> Option<u8> {
    if SAFEGUARDING_TYPES.contains(&event_type) {
        return Some(SAFEGUARDING);
    }
    match event_type {
        "IncidentRecorded"
        | "ReasonableForceUsed"
        | "SanctionIssued"
        | "SuspensionIssued"
        | "PermanentExclusionIssued"
        | "RewardIssued"
        | "ReintegrationMeetingHeld"
        | "ReintegrationCompleted"
        | "RestorativeMeetingHeld"
        | "AlternativeProvisionArranged" => Some(BEHAVIOUR),
        "PupilRegistered" | "EntryCorrected" | "PupilErased" | "LegalHoldApplied"
        | "LegalHoldLifted" | "TransferredIn" | "TransferredOut" | "RecordViewed" => None,
        _ => Some(PASTORAL),
    }
}

/// What the view keeps of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionFacts {
    /// The pupil's reference, from the registration.
    pub pupil: String,
    /// The registration's event id: the entry a correction of the date of
    /// birth or of SEN names.
    registration: Option<Uuid>,
    /// `None` until the pupil is registered: such a stream is not listed.
    pub date_of_birth: Option<NaiveDate>,
    pub sen: bool,
    /// Bits of the record kinds, in [`RULES`]'s order.
    kinds: u8,
    pub held: bool,
    pub erased: bool,
}

impl RetentionFacts {
    /// The rules of the record kinds the log holds for the pupil (SEN
    /// counts as a SEND record), in [`RULES`]'s order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static Rule> + '_ {
        let kinds = self.kinds | if self.sen { SEND } else { 0 };
        RULES
            .iter()
            .enumerate()
            .filter(move |(i, _)| kinds & (1 << i) != 0)
            .map(|(_, r)| r)
    }
}

/// The retention projection: every stream's [`RetentionFacts`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// By stream: a run lists the pupils in this order.
    pupils: PupilMap<RetentionFacts>,
}

impl Projection for Retention {
    const NAME: &'static str = "retention";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &RecordedEvent, _corrected_at: Option<u64>) {
        match &e.event {
            // The access log is no part of a pupil's record.
            CaseEvent::RecordViewed(_) => return,
            CaseEvent::AttendanceMarked(_) => {
                if let Some(p) = self.pupils.get_mut(&e.stream) {
                    p.kinds |= PASTORAL;
                }
                return;
            }
            _ => {}
        }
        let p = self.pupils.or_default(e.stream);
        match &e.event {
            CaseEvent::PupilRegistered(r) => {
                p.pupil.clone_from(&r.pupil);
                p.registration = Some(e.event_id);
                p.date_of_birth = Some(r.date_of_birth);
                p.sen = r.sen == Some(true);
            }
            CaseEvent::EntryCorrected(c) if Some(c.event) == p.registration => {
                if let Some(d) = c
                    .changes
                    .get("date_of_birth")
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse().ok())
                {
                    p.date_of_birth = Some(d);
                }
                if let Some(sen) = c.changes.get("sen") {
                    p.sen = sen.as_bool() == Some(true);
                }
            }
            CaseEvent::LegalHoldApplied(_) => p.held = true,
            CaseEvent::LegalHoldLifted(_) => p.held = false,
            CaseEvent::PupilErased(_) => p.erased = true,
            _ => {}
        }
        if let Some(k) = kind(&e.event) {
            p.kinds |= k;
        }
    }
}

/// One pupil's retention: when each record kind's period ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    pub pupil: String,
    pub date_of_birth: NaiveDate,
    /// Each record kind the log holds for the pupil and the day its period
    /// ends, in [`RULES`]'s order.
    pub ends: Vec<(&'static str, NaiveDate)>,
    /// The latest of `ends` (date of birth + 25 years with none).
    pub end: NaiveDate,
    /// `erased`, `kept` (the period has not ended by `today`), `held` (it
    /// has, under a legal hold) or `due`.
    pub status: &'static str,
}

/// `d` plus `years`; 29 February's periods end on 1 March.
pub fn add_years(d: NaiveDate, years: u32) -> NaiveDate {
    d.with_year(d.year() + years as i32)
        .or_else(|| {
            d.succ_opt()
                .and_then(|n| n.with_year(n.year() + years as i32))
        })
        .unwrap_or(NaiveDate::MAX)
}

impl Retention {
    /// Every registered pupil's retention as of `today`, in stream order.
    pub fn report(&self, today: NaiveDate) -> Vec<Due> {
        self.pupils
            .values()
            .filter_map(|p| {
                let dob = p.date_of_birth?;
                let ends: Vec<(&'static str, NaiveDate)> = p
                    .kinds()
                    .map(|r| (r.record, add_years(dob, r.years)))
                    .collect();
                let end = ends
                    .iter()
                    .map(|(_, d)| *d)
                    .max()
                    .unwrap_or_else(|| add_years(dob, PUPIL_RECORD_YEARS));
                let status = if p.erased {
                    "erased"
                } else if end > today {
                    "kept"
                } else if p.held {
                    "held"
                } else {
                    "due"
                };
                Some(Due {
                    pupil: p.pupil.clone(),
                    date_of_birth: dob,
                    ends,
                    end,
                    status,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{damaged, generated, read_back};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fold(events: &[(&str, u64, &str, serde_json::Value)]) -> Retention {
        let mut view = Retention::default();
        for (pupil, position, event_type, data) in events {
            view.apply(
                &generated(pupil, *position, at(), event_type, data.clone()),
                None,
            );
        }
        view
    }

    fn registration(pupil: &str, dob: &str, sen: bool) -> serde_json::Value {
        json!({"pupil": pupil, "name": "Ada Testpupil", "date_of_birth": dob,
            "year_group": 9, "sen": sen})
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// Each record kind ends at its own rule's age; the record ends with
    /// the latest; a pupil with nothing but a registration is kept as a
    /// pupil record, and SEN at registration is a SEND record.
    #[test]
    fn each_kind_of_record_ends_by_its_rule() {
        let view = fold(&[
            (
                "P1",
                1,
                "PupilRegistered",
                registration("P1", "2010-03-04", false),
            ),
            (
                "P1",
                2,
                "IncidentRecorded",
                json!({"category": "verbal_abuse_adult", "severity": 2,
                "location": "hall", "description": "test"}),
            ),
            (
                "P1",
                3,
                "ConcernRaised",
                json!({"category": "neglect", "summary": "test"}),
            ),
            (
                "P2",
                4,
                "PupilRegistered",
                registration("P2", "2011-01-01", true),
            ),
            (
                "P3",
                5,
                "PupilRegistered",
                registration("P3", "2012-02-29", false),
            ),
        ]);
        let report = view.report(date("2040-01-01"));
        assert_eq!(report.len(), 3);
        let by = |p: &str| report.iter().find(|d| d.pupil == p).unwrap().clone();
        let p1 = by("P1");
        assert_eq!(
            p1.ends,
            vec![
                ("safeguarding", date("2035-03-04")),
                ("behaviour", date("2035-03-04"))
            ]
        );
        assert_eq!((p1.end, p1.status), (date("2035-03-04"), "due"));
        let p2 = by("P2");
        assert_eq!(p2.ends, vec![("send", date("2042-01-01"))]);
        assert_eq!(p2.status, "kept");
        // 29 February: the period ends on 1 March.
        let p3 = by("P3");
        assert_eq!((p3.ends.len(), p3.end), (0, date("2037-03-01")));
    }

    /// A correction of the registration's date of birth or SEN moves the
    /// periods; a legal hold keeps a record whose period ended until it is
    /// lifted; an erased record is listed as erased.
    #[test]
    fn corrections_holds_and_erasure_are_followed() {
        let registered = generated(
            "P1",
            1,
            at(),
            "PupilRegistered",
            registration("P1", "2010-03-04", false),
        );
        let mut view = Retention::default();
        view.apply(&registered, None);
        let correct = |position, changes| {
            generated(
                "P1",
                position,
                at(),
                "EntryCorrected",
                json!({"event": registered.event_id, "changes": changes, "reason": "typo"}),
            )
        };
        view.apply(&correct(2, json!({"date_of_birth": "2009-03-04"})), None);
        let d = &view.report(date("2034-03-04"))[0];
        assert_eq!((d.end, d.status), (date("2034-03-04"), "due"));
        view.apply(&correct(3, json!({"sen": true})), None);
        let d = &view.report(date("2034-03-04"))[0];
        assert_eq!((d.end, d.status), (date("2040-03-04"), "kept"));
        let step = |view: &mut Retention, position, event_type, reason| {
            let e = generated(
                "P1",
                position,
                at(),
                event_type,
                json!({ "reason": reason }),
            );
            view.apply(&e, None);
        };
        step(&mut view, 4, "LegalHoldApplied", "claim");
        assert_eq!(view.report(date("2041-01-01"))[0].status, "held");
        step(&mut view, 5, "LegalHoldLifted", "settled");
        assert_eq!(view.report(date("2041-01-01"))[0].status, "due");
        step(&mut view, 6, "PupilErased", "retention period ended");
        assert_eq!(view.report(date("2041-01-01"))[0].status, "erased");
    }

    /// A register mark makes a record pastoral once the pupil has another
    /// event before it, not before; access-log entries make no record.
    #[test]
    fn register_marks_count_after_the_pupils_first_other_event() {
        let mark = json!({"date": "2026-01-05", "session": "am", "code": "/"});
        let view = fold(&[
            ("P1", 1, "AttendanceMarked", mark.clone()),
            (
                "P1",
                2,
                "PupilRegistered",
                registration("P1", "2010-03-04", false),
            ),
            (
                "P2",
                3,
                "PupilRegistered",
                registration("P2", "2010-03-04", false),
            ),
            ("P2", 4, "AttendanceMarked", mark),
        ]);
        let report = view.report(date("2030-01-01"));
        assert_eq!(report[0].ends.len() + report[1].ends.len(), 1);
        let p2 = report.iter().find(|d| d.pupil == "P2").unwrap();
        assert_eq!(p2.ends, vec![("pastoral", date("2035-03-04"))]);
    }

    /// A log of registrations (with and without SEN, a 29 February
    /// among them), a record of each kind, register marks, corrections
    /// of the date of birth and of SEN, holds and erasures.
    fn any_log() -> impl Strategy<Value = Vec<(usize, u8)>> {
        prop::collection::vec((0..3usize, 0..9u8), 0..30)
    }

    fn events_of(lines: &[(usize, u8)]) -> Vec<RecordedEvent> {
        let pupils = ["P0", "P1", "P2"];
        let mut registered: [Option<Uuid>; 3] = [None; 3];
        let mut events = Vec::new();
        for (n, (p, what)) in lines.iter().enumerate() {
            let (pupil, position) = (pupils[*p], n as u64 + 1);
            let (t, data) = match what {
                0 => (
                    "PupilRegistered",
                    registration(
                        pupil,
                        ["2010-03-04", "2012-02-29", "2011-09-01"][*p],
                        *p == 1,
                    ),
                ),
                1 => (
                    "IncidentRecorded",
                    json!({"category": "verbal_abuse_adult", "severity": 2,
                    "location": "hall", "description": "test"}),
                ),
                2 => (
                    "ConcernRaised",
                    json!({"category": "neglect", "summary": "test"}),
                ),
                3 => (
                    "AttendanceMarked",
                    json!({"date": "2026-01-05", "session": "am", "code": "/"}),
                ),
                4 => (
                    "EntryCorrected",
                    json!({"event": registered[*p].unwrap_or(Uuid::nil()),
                    "changes": {"date_of_birth": "2009-12-31"}, "reason": "typo"}),
                ),
                5 => (
                    "EntryCorrected",
                    json!({"event": registered[*p].unwrap_or(Uuid::nil()),
                    "changes": {"sen": true}, "reason": "typo"}),
                ),
                6 => ("LegalHoldApplied", json!({"reason": "claim"})),
                7 => ("LegalHoldLifted", json!({"reason": "settled"})),
                _ => ("PupilErased", json!({"reason": "retention period ended"})),
            };
            let e = generated(pupil, position, at(), t, data);
            if t == "PupilRegistered" {
                registered[*p] = Some(e.event_id);
            }
            events.push(e);
        }
        events
    }

    fn log_of(lines: &[(usize, u8)]) -> Retention {
        let mut view = Retention::default();
        for e in events_of(lines) {
            view.apply(&e, None);
        }
        view
    }

    proptest! {
        /// The view reads back from its checkpoint as it was, with the same
        /// report, on any log of the events it reads.
        #[test]
        fn the_view_reads_back_from_its_checkpoint(lines in any_log()) {
            let view = log_of(&lines);
            let back = read_back(&view);
            prop_assert_eq!(&back, &view);
            prop_assert_eq!(back.report(date("2040-01-01")), view.report(date("2040-01-01")));
        }

        /// Whatever bytes stand for a checkpoint, reading it does not
        /// panic, and a view read from them reports without panicking.
        #[test]
        fn any_checkpoint_bytes_are_read_or_refused_without_panic(
            lines in any_log(),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            if let Some(read) = damaged(&log_of(&lines), at, byte) {
                let _ = read.report(date("2040-01-01"));
                let _ = read.report(NaiveDate::MAX);
            }
        }
    }

    /// Every event type's record kind, written out: a change to the kinds
    /// fails here, and must come with a new `Retention::VERSION` (see
    /// [`kind`]). A case's and an EHCP's kind, from their fields, below.
    #[test]
    fn kinds_by_type_are_pinned() {
        use casebook_engine::event::EVENT_TYPES;
        let pinned: &[(&str, Option<u8>)] = &[
            ("PupilRegistered", None),
            ("ReferralReceived", Some(SAFEGUARDING)),
            ("CaseOpened", Some(PASTORAL)),
            ("KeyworkerAssigned", Some(PASTORAL)),
            ("ConcernRaised", Some(SAFEGUARDING)),
            ("ConcernEscalated", Some(SAFEGUARDING)),
            ("SafeguardingDecisionMade", Some(SAFEGUARDING)),
            ("ExternalReferralMade", Some(SAFEGUARDING)),
            ("IncidentRecorded", Some(BEHAVIOUR)),
            ("ReasonableForceUsed", Some(BEHAVIOUR)),
            ("SanctionIssued", Some(BEHAVIOUR)),
            ("SuspensionIssued", Some(BEHAVIOUR)),
            ("PermanentExclusionIssued", Some(BEHAVIOUR)),
            ("InterventionStarted", Some(PASTORAL)),
            ("InterventionSessionDelivered", Some(PASTORAL)),
            ("InterventionEnded", Some(PASTORAL)),
            ("PlanAgreed", Some(PASTORAL)),
            ("PlanReviewed", Some(PASTORAL)),
            ("RestorativeMeetingHeld", Some(BEHAVIOUR)),
            ("ReintegrationMeetingHeld", Some(BEHAVIOUR)),
            ("ReintegrationCompleted", Some(BEHAVIOUR)),
            ("AttendanceMarked", Some(PASTORAL)),
            ("RewardIssued", Some(BEHAVIOUR)),
            ("AbsenceFollowedUp", Some(PASTORAL)),
            ("AlternativeProvisionArranged", Some(BEHAVIOUR)),
            ("ParentContacted", Some(PASTORAL)),
            ("AgencyLiaison", Some(SAFEGUARDING)),
            ("EntryCorrected", None),
            ("CaseClosed", Some(PASTORAL)),
            ("PupilErased", None),
            ("LegalHoldApplied", None),
            ("LegalHoldLifted", None),
            ("TransferredIn", None),
            ("TransferredOut", None),
            ("RecordViewed", None),
        ];
        let missing: Vec<&&str> = EVENT_TYPES
            .iter()
            .filter(|t| !pinned.iter().any(|(p, _)| p == *t))
            .collect();
        let pinned_kinds: Vec<(&str, Option<u8>)> = pinned
            .iter()
            .filter(|(t, _)| EVENT_TYPES.contains(t))
            .map(|(t, _)| (*t, kind_of_type(t)))
            .collect();
        let expected: Vec<(&str, Option<u8>)> = pinned
            .iter()
            .copied()
            .filter(|(t, _)| EVENT_TYPES.contains(t))
            .collect();
        assert_eq!(pinned_kinds, expected);
        // Every type the log can hold that is not a case event makes no
        // record: the runner does not even decode them.
        for t in EVENT_TYPES {
            if casebook_engine::access::is_non_case_type(t) {
                continue;
            }
            assert!(
                pinned.iter().any(|(p, _)| p == t),
                "{t}: give its record kind above (and bump Retention::VERSION if it changes one): {missing:?}"
            );
        }
        // A case's kind and an EHCP's, from their fields.
        let case = |case_type: &str| {
            CaseEvent::from_type_and_data(
                "CaseOpened",
                json!({"case_type": case_type, "summary": "test"}),
            )
            .unwrap()
        };
        assert_eq!(kind(&case("safeguarding")), Some(SAFEGUARDING));
        assert_eq!(kind(&case("send")), Some(SEND));
        assert_eq!(kind(&case("behaviour")), Some(PASTORAL));
        let plan = |kind: &str| {
            CaseEvent::from_type_and_data(
                "PlanAgreed",
                json!({"plan": "p1", "kind": kind, "review_due": "2026-02-01"}),
            )
            .unwrap()
        };
        assert_eq!(kind(&plan("ehcp")), Some(SEND));
        assert_eq!(kind(&plan("early_help")), Some(PASTORAL));
    }

    /// The kinds' bits are in [`RULES`]'s order.
    #[test]
    fn rules_are_in_the_order_of_the_kinds_bits() {
        let names: Vec<&str> = RULES.iter().map(|r| r.record).collect();
        assert_eq!(names, ["safeguarding", "send", "behaviour", "pastoral"]);
        for (bit, record) in [
            (SAFEGUARDING, "safeguarding"),
            (SEND, "send"),
            (BEHAVIOUR, "behaviour"),
            (PASTORAL, "pastoral"),
        ] {
            let facts = RetentionFacts {
                kinds: bit,
                ..RetentionFacts::default()
            };
            let kinds: Vec<&str> = facts.kinds().map(|r| r.record).collect();
            assert_eq!(kinds, [record]);
        }
    }

    /// A correction of another entry than the registration leaves the date
    /// of birth and SEN alone; SEN corrected to false is no SEND record; an
    /// erased record is listed as erased even when held; pupils come in
    /// the order of their streams.
    #[test]
    fn only_the_registrations_corrections_count_and_erasure_comes_first() {
        let p1 = generated(
            "P1",
            1,
            at(),
            "PupilRegistered",
            registration("P1", "2010-03-04", true),
        );
        let p2 = generated(
            "P2",
            2,
            at(),
            "PupilRegistered",
            registration("P2", "2010-03-04", false),
        );
        let incident = generated(
            "P1",
            3,
            at(),
            "IncidentRecorded",
            json!({"category": "verbal_abuse_adult",
            "severity": 2, "location": "hall", "description": "test"}),
        );
        let mut view = Retention::default();
        for e in [&p1, &p2, &incident] {
            view.apply(e, None);
        }
        let correct = |position, event: Uuid, changes| {
            generated(
                "P1",
                position,
                at(),
                "EntryCorrected",
                json!({"event": event, "changes": changes, "reason": "typo"}),
            )
        };
        view.apply(
            &correct(
                4,
                incident.event_id,
                json!({"date_of_birth": "2001-01-01", "sen": false}),
            ),
            None,
        );
        let d = |view: &Retention| {
            view.report(date("2040-01-01"))
                .into_iter()
                .find(|d| d.pupil == "P1")
                .unwrap()
        };
        assert_eq!(
            (d(&view).date_of_birth, d(&view).end),
            (date("2010-03-04"), date("2041-03-04"))
        );
        view.apply(&correct(5, p1.event_id, json!({"sen": false})), None);
        assert_eq!(d(&view).ends, vec![("behaviour", date("2035-03-04"))]);
        view.apply(
            &generated(
                "P1",
                6,
                at(),
                "LegalHoldApplied",
                json!({"reason": "claim"}),
            ),
            None,
        );
        view.apply(
            &generated("P1", 7, at(), "PupilErased", json!({"reason": "x"})),
            None,
        );
        assert_eq!(d(&view).status, "erased");
        let order: Vec<String> = view
            .report(date("2040-01-01"))
            .into_iter()
            .map(|d| d.pupil)
            .collect();
        let mut by_stream = [(p1.stream, "P1"), (p2.stream, "P2")];
        by_stream.sort();
        assert_eq!(
            order,
            by_stream
                .iter()
                .map(|(_, p)| p.to_string())
                .collect::<Vec<_>>()
        );
    }

    proptest! {
        /// A pupil's own stream folded alone gives the facts the whole
        /// log's fold gives that pupil (what `retention --apply` reads
        /// again before it erases).
        #[test]
        fn a_stream_folded_alone_gives_its_facts(lines in any_log()) {
            let whole = log_of(&lines);
            for (stream, facts) in &whole.pupils {
                let mut alone = Retention::default();
                for e in events_of(&lines).iter().filter(|e| e.stream == *stream) {
                    alone.apply(e, None);
                }
                prop_assert_eq!(alone.pupils.get(stream), Some(facts));
            }
        }
    }
}
