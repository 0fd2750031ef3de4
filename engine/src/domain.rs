//! The command side: what may be recorded on a pupil's case, judged against
//! the pupil's current state.
//!
//! `CaseState` is a pure fold of one pupil's case stream; `decide` checks a
//! command against it and returns the events to append, or a `DomainError`
//! naming the field and what is wrong. `validate_fields` holds the checks
//! that need no state (ranges, lengths, codes); `apply_changes` turns an
//! `EntryCorrected` into the corrected entry, for `decide` and for the
//! projections that show corrected data.
//!
//! Architecture Invariant: no I/O and no clock. `now` arrives with the
//! command, so the same stream and command always get the same answer.
//!
//! Architecture Invariant: `apply` after each accepted `decide` is exactly
//! how the import validates a file: later lines are judged against the state
//! the earlier lines produce. `apply` is infallible and never refuses; it
//! folds whatever the log holds, because the log is the truth. (One
//! caller's error stops it: a correction folded into a state that holds
//! facts only, see `CaseState`.)

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::codes::{self, ATTENDANCE_CODES};
use crate::event::{
    AttendanceMarked, CaseEvent, EntryCorrected, IncidentRecorded, PlanKind, SanctionKind, Session,
    SuspensionIssued,
};
use crate::import::MAX_REF_LEN;

/// How far `occurred_at` may lie after the engine's clock. Staff laptops and
/// tablets drift by a minute or two; a record typed on a fast clock is not a
/// claim about the future, but anything later is a typo (2062 for 2026).
pub const FUTURE_TOLERANCE_MINUTES: i64 = 5;

/// Longest label (category, location, method, agency, kind, staff name in a
/// list). Labels are grouped on in reports; 200 characters holds any honest
/// label and stops prose being pasted into a column.
pub const MAX_SHORT_TEXT_CHARS: usize = 200;

/// Longest prose field (description, summary, rationale, notes). 20,000
/// characters is about eight pages, more than any single entry needs, and
/// keeps an entry inside the 64 KiB payload limit of the envelope even in
/// multi-byte scripts.
pub const MAX_PROSE_CHARS: usize = 20_000;

/// National Curriculum years run from Reception (0) to Year 13; special
/// schools and some sixth forms keep pupils on roll into a Year 14.
pub const MAX_YEAR_GROUP: u8 = 14;

/// Highest incident severity (1 = minor, 5 = most serious).
pub const MAX_SEVERITY: u8 = 5;

/// Statutory limit on suspension days in one school year (DfE guidance).
pub const SUSPENSION_DAYS_LIMIT: f64 = 45.0;

/// The census takes up to three reasons per suspension or exclusion: the
/// main one plus two more.
pub const MAX_ADDITIONAL_REASON_CODES: usize = 2;

/// Longest recorded use of reasonable force, in minutes. A hold or a
/// seclusion longer than a school day (about eight hours) is a typo.
pub const MAX_FORCE_MINUTES: u32 = 480;

/// Most people in one list (incident participants, restorative meeting
/// participants, reintegration attendees): two classes' worth. An incident
/// involving a whole year group is recorded per pupil, not as one list.
pub const MAX_PARTICIPANTS: usize = 60;

/// Most sessions an intervention can plan: one a session for a whole school
/// year (380 sessions) with some room.
pub const MAX_SESSIONS_PLANNED: u32 = 400;

/// Alternative provision is counted in sessions; a week has ten.
pub const MAX_SESSIONS_PER_WEEK: u32 = 10;

/// Most points one reward may carry. Points schemes award single or double
/// digits; a thousand is a typo, and bounding it keeps totals sane.
pub const MAX_REWARD_POINTS: u32 = 1_000;

/// Earliest plausible date in a record. Records kept under a legal hold
/// (e.g. for the child sexual abuse inquiry) may concern pupils born long
/// ago, but none before 1950; older dates are typos (0025 for 2025).
pub const EARLIEST_PLAUSIBLE_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1950, 1, 1) {
    Some(d) => d,
    None => panic!("impossible constant date"),
};

/// How many days after today a date in a record may lie. Plan reviews,
/// alternative provision and planned register marks are set ahead, but no
/// statutory cycle is longer than a year (an EHCP annual review); later
/// dates are typos.
pub const MAX_DAYS_AHEAD: u64 = 400;

/// The academic year a date falls in, named by the calendar year of its
/// 1 September (2025 = 1 Sep 2025 to 31 Aug 2026).
pub fn academic_year(date: NaiveDate) -> i32 {
    if date.month() >= 9 {
        date.year()
    } else {
        date.year() - 1
    }
}

/// Why a command was refused. Every message names the field (as
/// `data.<field>` of the import line) or the rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// A field's value breaks a rule; `field` is its path, e.g.
    /// `data.severity` or `data.participants[1].pupil`.
    #[error("{field}: {what}")]
    Field { field: String, what: String },
    /// An event that needs an earlier one the record does not hold (a
    /// reintegration with nothing to return from).
    #[error("{event_type}: {what}")]
    Sequence {
        event_type: &'static str,
        what: String,
    },
    /// Something other than `PupilRegistered` arrived for a pupil with no
    /// record yet.
    #[error("pupil is not registered: record PupilRegistered before {event_type}")]
    NotRegistered { event_type: &'static str },
    /// A second `PupilRegistered` for the same pupil.
    #[error("pupil {pupil:?} is already registered")]
    AlreadyRegistered { pupil: String },
    /// An event that does not belong in a case stream (e.g. `RecordViewed`).
    #[error(
        "{event_type} is not a case event: casebook writes it itself, to the pupil's access stream or the school's staff directory"
    )]
    NotACaseEvent { event_type: &'static str },
    #[error(
        "occurred_at {} is in the future (the engine's clock says {}; \
         {FUTURE_TOLERANCE_MINUTES} minutes of clock difference are allowed)",
        rfc3339(.occurred_at),
        rfc3339(.now)
    )]
    InFuture {
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error(
        "occurred_at {} is before {EARLIEST_PLAUSIBLE_DATE}; check the year",
        rfc3339(.occurred_at)
    )]
    TooOld { occurred_at: DateTime<Utc> },
    /// The 45-day yearly limit, passed without an override reason.
    #[error(
        "data.days: {days} more days would bring the pupil's suspensions in {year}/{next:02} to \
         {total} school days, past the statutory limit of {SUSPENSION_DAYS_LIMIT} \
         ({already} already recorded); give data.override_reason to record it anyway",
        next = (year + 1) % 100,
        total = already + days
    )]
    SuspensionLimit { year: i32, already: f64, days: f64 },
    /// A correction would leave an entry of the pupil's record breaking a
    /// rule: the corrected entry itself, or a later one that relied on it.
    #[error(
        "data.changes: with this correction, {which} {event_type} {entry} \
         would be refused: {source}"
    )]
    CorrectionBreaks {
        entry: Uuid,
        event_type: &'static str,
        /// `"the corrected"` or `"the later entry"`.
        which: &'static str,
        source: Box<DomainError>,
    },
}

/// A time as the import line writes it, to the second.
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl DomainError {
    fn field(field: impl Into<String>, what: impl Into<String>) -> DomainError {
        DomainError::Field {
            field: field.into(),
            what: what.into(),
        }
    }

    /// The path of the field at fault, when one field is.
    pub fn field_path(&self) -> Option<&str> {
        match self {
            DomainError::Field { field, .. } => Some(field),
            DomainError::InFuture { .. } | DomainError::TooOld { .. } => Some("occurred_at"),
            DomainError::SuspensionLimit { .. } => Some("data.days"),
            DomainError::CorrectionBreaks { .. } => Some("data.changes"),
            _ => None,
        }
    }

    /// Re-roots a field error of a corrected entry under `data.changes`, so
    /// the message points at the correction line the user wrote.
    fn in_changes(self) -> DomainError {
        match self {
            DomainError::Field { field, what } => {
                let field = match field.strip_prefix("data.") {
                    Some(rest) => format!("data.changes.{rest}"),
                    None => field,
                };
                DomainError::Field { field, what }
            }
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------
// Stateless checks
// ---------------------------------------------------------------------------

fn chars_at_most(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    // A sealed field (crate::seal) was checked in the clear before sealing.
    if crate::seal::is_sealed(value) {
        return Ok(());
    }
    let n = value.chars().count();
    if n > max {
        return Err(DomainError::field(
            field,
            format!("must be at most {max} characters, got {n}"),
        ));
    }
    Ok(())
}

/// A required text field: not blank, at most `max` characters.
fn text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::field(field, "must not be empty"));
    }
    chars_at_most(field, value, max)
}

/// An optional text field: when given, not blank (leave it out instead) and
/// at most `max` characters.
fn optional_text(field: &str, value: Option<&String>, max: usize) -> Result<(), DomainError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(DomainError::field(
            field,
            "must not be blank when given (leave the field out instead)",
        )),
        Some(v) => chars_at_most(field, v, max),
        None => Ok(()),
    }
}

/// A reference to a pupil, a member of staff, or an id the school chose:
/// short, no control characters (references end up in file names and
/// reports).
fn reference(field: &str, value: &str) -> Result<(), DomainError> {
    text(field, value, MAX_REF_LEN)?;
    if value.chars().any(char::is_control) {
        return Err(DomainError::field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn short(field: &str, value: &str) -> Result<(), DomainError> {
    text(field, value, MAX_SHORT_TEXT_CHARS)
}

fn prose(field: &str, value: &str) -> Result<(), DomainError> {
    text(field, value, MAX_PROSE_CHARS)
}

fn plausible_date(field: &str, date: NaiveDate) -> Result<(), DomainError> {
    if date < EARLIEST_PLAUSIBLE_DATE {
        return Err(DomainError::field(
            field,
            format!("{date} is before {EARLIEST_PLAUSIBLE_DATE}; check the year"),
        ));
    }
    Ok(())
}

/// A list of names (meeting participants, attendees): at least one, at most
/// [`MAX_PARTICIPANTS`], each a non-empty label.
fn names(field: &str, list: &[String]) -> Result<(), DomainError> {
    if list.is_empty() {
        return Err(DomainError::field(field, "must name at least one person"));
    }
    if list.len() > MAX_PARTICIPANTS {
        return Err(DomainError::field(
            field,
            format!(
                "must name at most {MAX_PARTICIPANTS} people, got {}",
                list.len()
            ),
        ));
    }
    for (i, name) in list.iter().enumerate() {
        short(&format!("{field}[{i}]"), name)?;
    }
    Ok(())
}

/// Census reason codes: the main one plus at most two more, each a known
/// code, none repeated.
fn reason_codes(main: &str, additional: &[String]) -> Result<(), DomainError> {
    let known = |field: &str, code: &str| match codes::reason_code(code) {
        Some(_) => Ok(()),
        None => Err(DomainError::field(
            field,
            format!(
                "{code:?} is not a DfE census reason code (the codes are listed in docs/events.md)"
            ),
        )),
    };
    known("data.reason_code", main)?;
    if additional.len() > MAX_ADDITIONAL_REASON_CODES {
        return Err(DomainError::field(
            "data.additional_reason_codes",
            format!(
                "the census takes at most {} reasons, \
                 so at most {MAX_ADDITIONAL_REASON_CODES} here, got {}",
                MAX_ADDITIONAL_REASON_CODES + 1,
                additional.len()
            ),
        ));
    }
    for (i, code) in additional.iter().enumerate() {
        let field = format!("data.additional_reason_codes[{i}]");
        known(&field, code)?;
        if code == main {
            return Err(DomainError::field(
                field,
                format!("{code:?} repeats data.reason_code"),
            ));
        }
        if additional[..i].contains(code) {
            return Err(DomainError::field(
                field,
                format!("{code:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_incident(i: &IncidentRecorded) -> Result<(), DomainError> {
    short("data.category", &i.category)?;
    if !(1..=MAX_SEVERITY).contains(&i.severity) {
        return Err(DomainError::field(
            "data.severity",
            format!("must be 1 to {MAX_SEVERITY}, got {}", i.severity),
        ));
    }
    short("data.location", &i.location)?;
    prose("data.description", &i.description)?;
    if i.participants.len() > MAX_PARTICIPANTS {
        return Err(DomainError::field(
            "data.participants",
            format!(
                "at most {MAX_PARTICIPANTS} other pupils, got {} \
                 (record a larger incident per pupil)",
                i.participants.len()
            ),
        ));
    }
    for (n, p) in i.participants.iter().enumerate() {
        let field = format!("data.participants[{n}].pupil");
        reference(&field, &p.pupil)?;
        if i.participants[..n].iter().any(|q| q.pupil == p.pupil) {
            return Err(DomainError::field(
                field,
                format!("{:?} is listed twice", p.pupil),
            ));
        }
    }
    optional_text("data.class", i.class.as_ref(), MAX_SHORT_TEXT_CHARS)?;
    optional_text("data.site", i.site.as_ref(), MAX_SHORT_TEXT_CHARS)
}

fn check_suspension(s: &SuspensionIssued) -> Result<(), DomainError> {
    let halves = s.days * 2.0;
    if !s.days.is_finite() || s.days <= 0.0 || halves.fract() != 0.0 {
        return Err(DomainError::field(
            "data.days",
            format!(
                "must be a positive number of school days in steps of 0.5 \
                 (a lunchtime is half a day), got {}",
                s.days
            ),
        ));
    }
    if s.days > SUSPENSION_DAYS_LIMIT {
        return Err(DomainError::field(
            "data.days",
            format!(
                "one suspension cannot pass the yearly limit of \
                 {SUSPENSION_DAYS_LIMIT} school days, got {}",
                s.days
            ),
        ));
    }
    reason_codes(&s.reason_code, &s.additional_reason_codes)?;
    plausible_date("data.start_date", s.start_date)?;
    optional_text(
        "data.override_reason",
        s.override_reason.as_ref(),
        MAX_PROSE_CHARS,
    )
}

/// The checks that need no state and no clock: required fields present and
/// not blank, lengths, ranges, DfE codes, plausible dates. `decide` runs
/// them on every event, and on the corrected form of every correction.
pub fn validate_fields(event: &CaseEvent) -> Result<(), DomainError> {
    use CaseEvent as E;
    let max_short = MAX_SHORT_TEXT_CHARS;
    match event {
        E::PupilRegistered(p) => {
            reference("data.pupil", &p.pupil)?;
            short("data.name", &p.name)?;
            plausible_date("data.date_of_birth", p.date_of_birth)?;
            if p.year_group > MAX_YEAR_GROUP {
                return Err(DomainError::field(
                    "data.year_group",
                    format!(
                        "must be 0 (Reception) to {MAX_YEAR_GROUP}, got {}",
                        p.year_group
                    ),
                ));
            }
            optional_text("data.class", p.class.as_ref(), max_short)?;
            optional_text("data.site", p.site.as_ref(), max_short)?;
            optional_text("data.sex", p.sex.as_ref(), max_short)?;
            if let Some(upn) = &p.upn {
                // A UPN is a check letter and twelve digits (a temporary UPN
                // ends in a letter); anything else is another id in the wrong column.
                let ok = crate::seal::is_sealed(upn)
                    || upn.chars().count() == 13 && upn.chars().all(|c| c.is_ascii_alphanumeric());
                if !ok {
                    return Err(DomainError::field(
                        "data.upn",
                        format!("a UPN is 13 letters and digits, got {upn:?}"),
                    ));
                }
            }
            Ok(())
        }
        E::ReferralReceived(r) => {
            short("data.source", &r.source)?;
            prose("data.reason", &r.reason)
        }
        E::CaseOpened(c) => prose("data.summary", &c.summary),
        E::KeyworkerAssigned(k) => reference("data.staff", &k.staff),
        E::ConcernRaised(c) => {
            short("data.category", &c.category)?;
            prose("data.summary", &c.summary)
        }
        E::ConcernEscalated(c) => {
            reference("data.to", &c.to)?;
            prose("data.reason", &c.reason)
        }
        E::SafeguardingDecisionMade(d) => prose("data.rationale", &d.rationale),
        E::ExternalReferralMade(r) => {
            short("data.agency", &r.agency)?;
            prose("data.reason", &r.reason)?;
            optional_text("data.reference", r.reference.as_ref(), max_short)
        }
        E::IncidentRecorded(i) => check_incident(i),
        E::ReasonableForceUsed(f) => {
            // Often more than one member of staff: a label, not one reference.
            short("data.staff", &f.staff)?;
            prose("data.reason", &f.reason)?;
            short("data.hold", &f.hold)?;
            if f.duration_minutes > MAX_FORCE_MINUTES {
                return Err(DomainError::field(
                    "data.duration_minutes",
                    format!(
                        "must be at most {MAX_FORCE_MINUTES} minutes, got {}",
                        f.duration_minutes
                    ),
                ));
            }
            // "none" is an answer; a blank is not (s.93A wants injuries recorded).
            prose("data.injuries", &f.injuries)
        }
        E::SanctionIssued(s) => prose("data.reason", &s.reason),
        E::SuspensionIssued(s) => check_suspension(s),
        E::PermanentExclusionIssued(p) => {
            reason_codes(&p.reason_code, &p.additional_reason_codes)?;
            plausible_date("data.effective_date", p.effective_date)
        }
        E::InterventionStarted(i) => {
            reference("data.intervention", &i.intervention)?;
            short("data.kind", &i.kind)?;
            prose("data.goal", &i.goal)?;
            if let Some(n) = i.sessions_planned {
                if n == 0 || n > MAX_SESSIONS_PLANNED {
                    return Err(DomainError::field(
                        "data.sessions_planned",
                        format!("must be 1 to {MAX_SESSIONS_PLANNED}, got {n}"),
                    ));
                }
            }
            if let Some(staff) = &i.staff {
                reference("data.staff", staff)?;
            }
            Ok(())
        }
        E::InterventionSessionDelivered(s) => {
            reference("data.intervention", &s.intervention)?;
            optional_text("data.notes", s.notes.as_ref(), MAX_PROSE_CHARS)
        }
        E::InterventionEnded(e) => reference("data.intervention", &e.intervention),
        E::PlanAgreed(p) => {
            reference("data.plan", &p.plan)?;
            plausible_date("data.review_due", p.review_due)
        }
        E::PlanReviewed(p) => {
            reference("data.plan", &p.plan)?;
            prose("data.outcome", &p.outcome)?;
            match p.next_review_due {
                Some(d) => plausible_date("data.next_review_due", d),
                None => Ok(()),
            }
        }
        E::RestorativeMeetingHeld(r) => {
            names("data.participants", &r.participants)?;
            prose("data.agreement", &r.agreement)
        }
        E::ReintegrationMeetingHeld(r) => {
            names("data.attendees", &r.attendees)?;
            prose("data.agreed_support", &r.agreed_support)
        }
        E::ReintegrationCompleted(r) => prose("data.outcome", &r.outcome),
        E::AttendanceMarked(a) => {
            if codes::attendance_code(&a.code).is_none() {
                return Err(DomainError::field(
                    "data.code",
                    format!(
                        "{:?} is not a DfE attendance code \
                         (the codes are listed in docs/events.md)",
                        a.code
                    ),
                ));
            }
            plausible_date("data.date", a.date)
        }
        E::RewardIssued(r) => {
            short("data.kind", &r.kind)?;
            prose("data.reason", &r.reason)?;
            match r.points {
                Some(p) if p > MAX_REWARD_POINTS => Err(DomainError::field(
                    "data.points",
                    format!("must be at most {MAX_REWARD_POINTS}, got {p}"),
                )),
                _ => Ok(()),
            }
        }
        E::AbsenceFollowedUp(a) => {
            plausible_date("data.date", a.date)?;
            short("data.method", &a.method)?;
            prose("data.outcome", &a.outcome)
        }
        E::AlternativeProvisionArranged(a) => {
            short("data.provider", &a.provider)?;
            plausible_date("data.start_date", a.start_date)?;
            prose("data.reason", &a.reason)?;
            match a.sessions_per_week {
                Some(n) if n == 0 || n > MAX_SESSIONS_PER_WEEK => Err(DomainError::field(
                    "data.sessions_per_week",
                    format!("must be 1 to {MAX_SESSIONS_PER_WEEK} (two sessions a day), got {n}"),
                )),
                _ => Ok(()),
            }
        }
        E::ParentContacted(p) => {
            short("data.method", &p.method)?;
            prose("data.summary", &p.summary)
        }
        E::AgencyLiaison(a) => {
            short("data.agency", &a.agency)?;
            prose("data.summary", &a.summary)
        }
        E::EntryCorrected(c) => {
            if c.changes.is_empty() {
                return Err(DomainError::field(
                    "data.changes",
                    "must name at least one field to change",
                ));
            }
            prose("data.reason", &c.reason)
        }
        E::CaseClosed(c) => prose("data.outcome", &c.outcome),
        E::PupilErased(e) => prose("data.reason", &e.reason),
        E::LegalHoldApplied(h) => prose("data.reason", &h.reason),
        E::LegalHoldLifted(h) => prose("data.reason", &h.reason),
        E::TransferredOut(t) => reference("data.to", &t.to),
        E::TransferredIn(t) => {
            reference("data.from", &t.from)?;
            reference("data.from_pupil", &t.from_pupil)?;
            short("data.head_hash", &t.head_hash)?;
            short("data.signer", &t.signer)
        }
        E::RecordViewed(r) => {
            reference("data.pupil", &r.pupil)?;
            short("data.view", &r.view)?;
            optional_text("data.purpose", r.purpose.as_ref(), MAX_PROSE_CHARS)
        }
        E::StaffRegistered(s) => {
            reference("data.staff", &s.staff)?;
            short("data.name", &s.name)?;
            if s.roles.is_empty() {
                return Err(DomainError::field(
                    "data.roles",
                    "must name at least one role",
                ));
            }
            Ok(())
        }
        E::RoleGranted(r) => reference("data.staff", &r.staff),
        E::RoleRevoked(r) => reference("data.staff", &r.staff),
        E::AccessRefused(a) => {
            reference("data.staff", &a.staff)?;
            short("data.action", &a.action)?;
            if let Some(p) = &a.pupil {
                reference("data.pupil", p)?;
            }
            prose("data.reason", &a.reason)?;
            optional_text("data.purpose", a.purpose.as_ref(), MAX_PROSE_CHARS)
        }
    }
}

/// The one date an event carries about the world, with its field name.
fn event_date(event: &CaseEvent) -> Option<(&'static str, NaiveDate)> {
    use CaseEvent as E;
    match event {
        E::PupilRegistered(p) => Some(("data.date_of_birth", p.date_of_birth)),
        E::SuspensionIssued(s) => Some(("data.start_date", s.start_date)),
        E::PermanentExclusionIssued(p) => Some(("data.effective_date", p.effective_date)),
        E::PlanAgreed(p) => Some(("data.review_due", p.review_due)),
        E::PlanReviewed(p) => p.next_review_due.map(|d| ("data.next_review_due", d)),
        E::AttendanceMarked(a) => Some(("data.date", a.date)),
        E::AbsenceFollowedUp(a) => Some(("data.date", a.date)),
        E::AlternativeProvisionArranged(a) => Some(("data.start_date", a.start_date)),
        _ => None,
    }
}

/// Dates judged against today: a birth date cannot be in the future; other
/// dates may be set ahead, but not past [`MAX_DAYS_AHEAD`].
fn check_dates(event: &CaseEvent, today: NaiveDate) -> Result<(), DomainError> {
    let Some((field, date)) = event_date(event) else {
        return Ok(());
    };
    if matches!(event, CaseEvent::PupilRegistered(_)) {
        if date > today {
            return Err(DomainError::field(
                field,
                format!("{date} is in the future"),
            ));
        }
        return Ok(());
    }
    // As for times: the bound is worked out only for a date after today.
    if date <= today {
        return Ok(());
    }
    if let Some(latest) = today.checked_add_days(Days::new(MAX_DAYS_AHEAD)) {
        if date > latest {
            return Err(DomainError::field(
                field,
                format!("{date} is more than {MAX_DAYS_AHEAD} days ahead; check the year"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Corrections
// ---------------------------------------------------------------------------

/// The entry `original` as corrected by `changes`: each key replaces that
/// field of the original's `data` (`null` clears an optional field), and the
/// result must still read as the same event type. Checks the shape only;
/// `decide` also runs [`validate_fields`] and the state rules on the result.
///
/// Corrections apply in stream order, each to the entry as the previous ones
/// left it. Refused: an empty `changes`, a key that is not a field of the
/// original type, a `PupilRegistered`'s `pupil` (it names the stream),
/// correcting a correction, and values of the wrong type.
pub fn apply_changes(
    original: &CaseEvent,
    changes: &Map<String, Value>,
) -> Result<CaseEvent, DomainError> {
    let event_type = original.type_name();
    match original {
        CaseEvent::EntryCorrected(_) => {
            return Err(DomainError::field(
                "data.event",
                "names a correction; correct the original entry instead \
                 (its corrections apply in order)",
            ))
        }
        e if !e.is_case_event() => {
            return Err(DomainError::field(
                "data.event",
                "names an access-log or staff-directory entry, which cannot be corrected",
            ))
        }
        _ => {}
    }
    if changes.is_empty() {
        return Err(DomainError::field(
            "data.changes",
            "must name at least one field to change",
        ));
    }
    let fields = original.data_fields();
    for key in changes.keys() {
        if !fields.contains(&key.as_str()) {
            return Err(DomainError::field(
                format!("data.changes.{key}"),
                format!(
                    "{event_type} has no field {key:?}; its fields are {}",
                    fields.join(", ")
                ),
            ));
        }
        if key == "pupil" && matches!(original, CaseEvent::PupilRegistered(_)) {
            return Err(DomainError::field(
                "data.changes.pupil",
                "a pupil's reference names their record and cannot be corrected",
            ));
        }
    }
    let mut data = match original.data_json() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (key, value) in changes {
        data.insert(key.clone(), value.clone());
    }
    let corrected =
        CaseEvent::from_type_and_data(event_type, Value::Object(data)).map_err(|e| {
            match e.path {
                Some(path) => DomainError::field(format!("data.changes.{path}"), e.message),
                None => DomainError::field("data.changes", e.message),
            }
        })?;
    if corrected.type_name() != event_type {
        return Err(DomainError::field(
            "data.changes",
            format!("would turn the {event_type} into another type"),
        ));
    }
    Ok(corrected)
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// One register mark, held in eight bytes instead of a whole `CaseEvent`:
/// marks are most of a pupil's stream (380 a year), and the import holds a
/// state for every pupil it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    date: NaiveDate,
    session: Session,
    /// Index into [`ATTENDANCE_CODES`].
    code: u8,
}

impl Mark {
    fn from_event(a: &AttendanceMarked) -> Option<Mark> {
        let code = codes::attendance_code_index(&a.code)?;
        Some(Mark {
            date: a.date,
            session: a.session,
            code: u8::try_from(code).ok()?,
        })
    }

    fn to_event(self) -> CaseEvent {
        let code = ATTENDANCE_CODES
            .get(usize::from(self.code))
            .map_or("", |c| c.code);
        CaseEvent::AttendanceMarked(AttendanceMarked {
            date: self.date,
            session: self.session,
            code: code.to_string(),
        })
    }
}

/// The effective (as corrected) content of one entry of the stream.
#[derive(Clone, Debug)]
enum Content {
    Mark(Mark),
    Event(Box<CaseEvent>),
}

impl Content {
    fn new(event: &CaseEvent) -> Content {
        match event {
            CaseEvent::AttendanceMarked(a) => match Mark::from_event(a) {
                Some(m) => Content::Mark(m),
                None => Content::Event(Box::new(event.clone())),
            },
            other => Content::Event(Box::new(other.clone())),
        }
    }

    /// [`Content::new`] of an event the caller gives up (kept, not copied).
    fn from_owned(event: CaseEvent) -> Content {
        match event {
            CaseEvent::AttendanceMarked(ref a) => match Mark::from_event(a) {
                Some(m) => Content::Mark(m),
                None => Content::Event(Box::new(event)),
            },
            other => Content::Event(Box::new(other)),
        }
    }

    fn event(&self) -> Cow<'_, CaseEvent> {
        match self {
            Content::Mark(m) => Cow::Owned(m.to_event()),
            Content::Event(e) => Cow::Borrowed(e),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    id: Uuid,
    content: Content,
}

/// Which sessions of one academic year are marked: bit `2 * day + session`,
/// `day` counted from 1 September (at most 366 days, so 732 bits).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Register([u64; 12]);

impl Register {
    /// The academic year of `date`, and the word and bit of its session.
    /// The day is counted from the date's ordinal, not by building
    /// 1 September and subtracting (a register mark's every fold and check
    /// asks): 1 September is day 243 of the year counted from 0 (244 in a
    /// leap year), and 1 September to 31 December is 122 days.
    fn slot(date: NaiveDate, session: Session) -> (i32, usize, u64) {
        let year = academic_year(date);
        let ordinal0 = date.ordinal0() as usize;
        let day = if year == date.year() {
            ordinal0 - 243 - usize::from(date.leap_year())
        } else {
            122 + ordinal0
        };
        let bit = day * 2 + usize::from(session == Session::Pm);
        (year, bit / 64, 1u64 << (bit % 64))
    }
}

/// Review state of an agreed plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PlanStatus {
    kind: PlanKind,
    /// `None` once a review ended the plan.
    review_due: Option<NaiveDate>,
}

/// An agreed plan that has not ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenPlan<'a> {
    pub plan: &'a str,
    pub kind: PlanKind,
    pub review_due: NaiveDate,
}

/// What the rules need to know, derived from the effective entries in stream
/// order. Rebuilt from the entries when a correction changes one.
///
/// Kept in the import planner's facts checkpoint ([`crate::known`]) as
/// MessagePack, its fields in this order: a change to them, or to what
/// [`Facts::absorb`] makes of an event, must bump `known::FORMAT`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Facts {
    pupil: Option<Box<str>>,
    /// Intervention id -> still running.
    interventions: BTreeMap<Box<str>, bool>,
    plans: BTreeMap<Box<str>, PlanStatus>,
    /// (academic year, suspension days).
    suspension_days: Vec<(i32, f64)>,
    permanent_exclusion: Option<NaiveDate>,
    /// A suspension, exclusion, isolation or internal exclusion, or
    /// alternative provision: something a reintegration returns from.
    removed: bool,
    reintegration_meeting: bool,
    /// (academic year, marked sessions).
    registers: Vec<(i32, Register)>,
    /// Under a legal hold (`LegalHoldApplied` not yet lifted).
    held: bool,
    /// `PupilErased` recorded: nothing more may be.
    erased: bool,
}

impl Facts {
    fn suspension_days(&self, year: i32) -> f64 {
        self.suspension_days
            .iter()
            .filter(|(y, _)| *y == year)
            .map(|(_, d)| d)
            .sum()
    }

    fn is_marked(&self, date: NaiveDate, session: Session) -> bool {
        let (year, word, mask) = Register::slot(date, session);
        match self.registers.iter().find(|(y, _)| *y == year) {
            Some((_, reg)) => reg.0.get(word).is_some_and(|w| w & mask != 0),
            None => false,
        }
    }

    fn absorb_mark(&mut self, date: NaiveDate, session: Session) {
        let (year, word, mask) = Register::slot(date, session);
        let i = match self.registers.iter().position(|(y, _)| *y == year) {
            Some(i) => i,
            None => {
                self.registers.push((year, Register::default()));
                self.registers.len() - 1
            }
        };
        if let Some(w) = self
            .registers
            .get_mut(i)
            .and_then(|(_, r)| r.0.get_mut(word))
        {
            *w |= mask;
        }
    }

    fn absorb(&mut self, event: &CaseEvent) {
        use CaseEvent as E;
        match event {
            E::PupilRegistered(p) if self.pupil.is_none() => {
                self.pupil = Some(p.pupil.as_str().into());
            }
            E::SanctionIssued(s) => {
                if matches!(
                    s.kind,
                    SanctionKind::Isolation | SanctionKind::InternalExclusion
                ) {
                    self.removed = true;
                }
            }
            E::SuspensionIssued(s) => {
                let year = academic_year(s.start_date);
                match self.suspension_days.iter_mut().find(|(y, _)| *y == year) {
                    Some((_, d)) => *d += s.days,
                    None => self.suspension_days.push((year, s.days)),
                }
                self.removed = true;
            }
            E::PermanentExclusionIssued(p) => {
                self.permanent_exclusion.get_or_insert(p.effective_date);
                self.removed = true;
            }
            E::AlternativeProvisionArranged(_) => self.removed = true,
            E::InterventionStarted(i) => {
                self.interventions
                    .insert(i.intervention.as_str().into(), true);
            }
            E::InterventionEnded(i) => {
                if let Some(running) = self.interventions.get_mut(i.intervention.as_str()) {
                    *running = false;
                }
            }
            E::PlanAgreed(p) => {
                let status = PlanStatus {
                    kind: p.kind,
                    review_due: Some(p.review_due),
                };
                self.plans.insert(p.plan.as_str().into(), status);
            }
            E::PlanReviewed(p) => {
                if let Some(status) = self.plans.get_mut(p.plan.as_str()) {
                    status.review_due = p.next_review_due;
                }
            }
            E::ReintegrationMeetingHeld(_) => self.reintegration_meeting = true,
            E::AttendanceMarked(a) => self.absorb_mark(a.date, a.session),
            E::LegalHoldApplied(_) => self.held = true,
            E::LegalHoldLifted(_) => self.held = false,
            E::PupilErased(_) => self.erased = true,
            _ => {}
        }
    }

    /// The rules that depend on what the record already holds.
    fn check(&self, event: &CaseEvent) -> Result<(), DomainError> {
        use CaseEvent as E;
        let Some(pupil) = self.pupil.as_deref() else {
            return match event {
                E::PupilRegistered(_) => Ok(()),
                other => Err(DomainError::NotRegistered {
                    event_type: other.type_name(),
                }),
            };
        };
        if self.erased {
            return Err(DomainError::Sequence {
                event_type: event.type_name(),
                what: format!("pupil {pupil:?} was erased; nothing more can be recorded"),
            });
        }
        match event {
            E::PupilRegistered(_) => Err(DomainError::AlreadyRegistered {
                pupil: pupil.to_string(),
            }),
            E::PupilErased(_) if self.held => Err(DomainError::Sequence {
                event_type: "PupilErased",
                what: format!(
                    "pupil {pupil:?} is under a legal hold; lift it (casebook hold --lift) before erasing"
                ),
            }),
            E::LegalHoldApplied(_) if self.held => Err(DomainError::Sequence {
                event_type: "LegalHoldApplied",
                what: format!("pupil {pupil:?} is already under a legal hold"),
            }),
            E::LegalHoldLifted(_) if !self.held => Err(DomainError::Sequence {
                event_type: "LegalHoldLifted",
                what: format!("pupil {pupil:?} is not under a legal hold"),
            }),
            E::IncidentRecorded(i) => match i.participants.iter().position(|p| p.pupil == pupil) {
                Some(n) => Err(DomainError::field(
                    format!("data.participants[{n}].pupil"),
                    format!("{pupil:?} is this pupil; record their own part in data.role"),
                )),
                None => Ok(()),
            },
            E::SuspensionIssued(s) => {
                let year = academic_year(s.start_date);
                let already = self.suspension_days(year);
                let overridden = s
                    .override_reason
                    .as_deref()
                    .is_some_and(|r| !r.trim().is_empty());
                if already + s.days > SUSPENSION_DAYS_LIMIT && !overridden {
                    return Err(DomainError::SuspensionLimit {
                        year,
                        already,
                        days: s.days,
                    });
                }
                Ok(())
            }
            E::PermanentExclusionIssued(_) => match self.permanent_exclusion {
                Some(date) => Err(DomainError::field(
                    "data.effective_date",
                    format!("the pupil is already permanently excluded (effective {date})"),
                )),
                None => Ok(()),
            },
            E::InterventionStarted(i) => match self.interventions.get(i.intervention.as_str()) {
                Some(true) => Err(DomainError::field(
                    "data.intervention",
                    format!(
                        "intervention {:?} is already running for this pupil",
                        i.intervention
                    ),
                )),
                Some(false) => Err(DomainError::field(
                    "data.intervention",
                    format!(
                        "intervention {:?} has ended; ids are unique within a pupil, \
                         so give the new one a new id",
                        i.intervention
                    ),
                )),
                None => Ok(()),
            },
            E::InterventionSessionDelivered(s) => {
                self.running_intervention(&s.intervention, NO_MORE_SESSIONS)
            }
            E::InterventionEnded(e) => self.running_intervention(&e.intervention, NO_SECOND_END),
            E::PlanAgreed(p) => match self.plans.get(p.plan.as_str()) {
                Some(PlanStatus {
                    review_due: Some(_),
                    ..
                }) => Err(DomainError::field(
                    "data.plan",
                    format!(
                        "plan {:?} is already agreed and has not ended; \
                         record a PlanReviewed instead",
                        p.plan
                    ),
                )),
                _ => Ok(()),
            },
            E::PlanReviewed(p) => match self.plans.get(p.plan.as_str()) {
                None => Err(DomainError::field(
                    "data.plan",
                    format!("no plan {:?} has been agreed for this pupil", p.plan),
                )),
                Some(PlanStatus {
                    review_due: None, ..
                }) => Err(DomainError::field(
                    "data.plan",
                    format!(
                        "plan {:?} ended at an earlier review (next_review_due null)",
                        p.plan
                    ),
                )),
                Some(_) => Ok(()),
            },
            E::ReintegrationMeetingHeld(_) if !self.removed => {
                Err(sequence(event, NOTHING_TO_RETURN_FROM))
            }
            E::ReintegrationCompleted(_) if !self.reintegration_meeting => {
                Err(sequence(event, NO_MEETING_YET))
            }
            E::AttendanceMarked(a) if self.is_marked(a.date, a.session) => Err(DomainError::field(
                "data.session",
                format!(
                    "the {} session of {} is already marked for this pupil; \
                     correct that mark with EntryCorrected instead",
                    session_name(a.session),
                    a.date
                ),
            )),
            _ => Ok(()),
        }
    }

    fn running_intervention(&self, id: &str, after_end: &str) -> Result<(), DomainError> {
        match self.interventions.get(id) {
            Some(true) => Ok(()),
            Some(false) => Err(DomainError::field(
                "data.intervention",
                format!("intervention {id:?} has ended; {after_end}"),
            )),
            None => Err(DomainError::field(
                "data.intervention",
                format!("no intervention {id:?} has been started for this pupil"),
            )),
        }
    }
}

/// Why a reintegration meeting is refused with no removal before it.
const NOTHING_TO_RETURN_FROM: &str = "needs something to return from: no suspension, permanent \
    exclusion, isolation, internal exclusion or alternative provision is recorded for this pupil";
/// Why reintegration cannot complete yet.
const NO_MEETING_YET: &str =
    "cannot complete before a ReintegrationMeetingHeld is recorded for this pupil";

fn sequence(event: &CaseEvent, what: &str) -> DomainError {
    DomainError::Sequence {
        event_type: event.type_name(),
        what: what.to_string(),
    }
}

/// Why a session cannot go on an ended intervention.
const NO_MORE_SESSIONS: &str = "no further sessions can be recorded on it";
/// Why an ended intervention cannot end again.
const NO_SECOND_END: &str = "it cannot end twice";

fn session_name(s: Session) -> &'static str {
    match s {
        Session::Am => "am",
        Session::Pm => "pm",
    }
}

/// One pupil's case, as far as `decide` needs it: the pupil's entries
/// (as corrected, register marks packed small) and the facts the rules ask
/// about.
///
/// A state may hold the facts of its first events without their entries
/// ([`CaseState::apply_facts_only`], [`CaseState::forget_entries`]):
/// every rule but a correction's asks only the facts, and an import holds
/// a state for every pupil it touches, whose entries would grow with the
/// pupil's whole history (32 bytes an event). Such a state is
/// *incomplete* until [`CaseState::complete`] is given those events
/// again: `decide` refuses a correction on it, and folding a correction
/// into it is a caller's error that stops the process (its facts would
/// otherwise be wrong). [`CaseState::has_event`] and
/// [`CaseState::event`] see only the entries it holds.
#[derive(Clone, Debug, Default)]
pub struct CaseState {
    version: u64,
    /// Leading events of the stream held as facts only: `entries` holds
    /// those after them (0 in a complete state).
    facts_only: u64,
    /// Every entry in stream order (after the `facts_only` first), with
    /// its content as corrected. An entry is found by id by scanning from
    /// the newest ([`CaseState::position_of`]): only corrections look one
    /// up, and each of them re-reads every entry anyway (the facts are
    /// re-derived), so an index by id (a hash insert for every folded
    /// event, 5% of an import's planning) bought no order of growth.
    entries: Vec<Entry>,
    facts: Facts,
}

impl CaseState {
    pub fn new() -> CaseState {
        CaseState::default()
    }

    /// Folds one event of the pupil's case stream into the state. Pure and
    /// infallible: a correction the fold cannot apply (the log is older than
    /// the rules) leaves the original content in place.
    ///
    /// # Panics
    ///
    /// On a correction folded into a state that is not complete (see
    /// [`CaseState`]): a caller's error, never the log's.
    pub fn apply(&mut self, event_id: Uuid, event: &CaseEvent) {
        self.absorb(event);
        self.keep(event_id, Content::new(event));
    }

    /// [`CaseState::apply`] of an event the caller gives up: the same fold,
    /// the event kept as it is instead of copied.
    pub fn apply_owned(&mut self, event_id: Uuid, event: CaseEvent) {
        self.absorb(&event);
        self.keep(event_id, Content::from_owned(event));
    }

    /// Folds one stored event into the facts without keeping its entry
    /// (see [`CaseState`]): what an import needs of a pupil's history to
    /// judge every line but a correction. Only while no entry is held
    /// (every event before it folded this way, or forgotten), and never a
    /// correction, which is applied to its entry: `false`, the state
    /// unchanged, and the caller folds the stream with
    /// [`CaseState::apply`] and then [`CaseState::forget_entries`].
    pub fn apply_facts_only(&mut self, event: &CaseEvent) -> bool {
        if !self.entries.is_empty() || matches!(event, CaseEvent::EntryCorrected(_)) {
            return false;
        }
        self.absorb(event);
        self.facts_only += 1;
        true
    }

    /// Lets go of every entry, keeping the facts (see [`CaseState`]). Only
    /// of a state folded from stored events: [`CaseState::complete`] is
    /// given them again, and an entry planned but not yet stored could not
    /// be.
    pub fn forget_entries(&mut self) {
        self.entries = Vec::new();
        self.facts_only = self.version;
    }

    /// The state's version and facts: what the import planner's facts
    /// checkpoint keeps of it ([`crate::known`]).
    pub(crate) fn known(&self) -> (u64, &Facts) {
        (self.version, &self.facts)
    }

    /// [`CaseState::known`], taken.
    pub(crate) fn into_known(self) -> (u64, Facts) {
        (self.version, self.facts)
    }

    /// The state of a stream's first `version` events, held as facts only
    /// (incomplete, see [`CaseState`]), from what [`CaseState::known`]
    /// gave of a state at that version.
    pub(crate) fn from_known(version: u64, facts: Facts) -> CaseState {
        CaseState {
            version,
            facts_only: version,
            entries: Vec::new(),
            facts,
        }
    }

    /// Leading events held as facts only (0 in a complete state): those
    /// [`CaseState::complete`] needs again.
    pub fn facts_only_events(&self) -> u64 {
        self.facts_only
    }

    /// Whether every entry is held: nothing was folded as facts only or
    /// forgotten, or [`CaseState::complete`] has given it back.
    pub fn is_complete(&self) -> bool {
        self.facts_only == 0
    }

    /// Makes an incomplete state complete: `stored` are the stream's
    /// events from version 1 (more may follow; only the first
    /// [`CaseState::facts_only_events`] are read), folded with their
    /// entries (corrections applied), and the entries held since are
    /// folded again after them, which gives the same facts (they were
    /// judged on those facts; none is a correction, which would have
    /// needed this first). `false`, the state unchanged, when `stored`
    /// holds fewer events than that.
    pub fn complete(&mut self, stored: impl IntoIterator<Item = (Uuid, CaseEvent)>) -> bool {
        if self.facts_only == 0 {
            return true;
        }
        let wanted = usize::try_from(self.facts_only).unwrap_or(usize::MAX);
        let mut full = CaseState::new();
        for (id, event) in stored.into_iter().take(wanted) {
            full.apply_owned(id, event);
        }
        if full.version != self.facts_only {
            return false;
        }
        for entry in std::mem::take(&mut self.entries) {
            full.absorb(&entry.content.event());
            full.keep(entry.id, entry.content);
        }
        *self = full;
        true
    }

    /// Stores the folded event's entry (after [`CaseState::absorb`]).
    fn keep(&mut self, id: Uuid, content: Content) {
        self.entries.push(Entry { id, content });
        debug_assert_eq!(
            self.facts_only + self.entries.len() as u64,
            self.version,
            "one entry per folded event"
        );
    }

    /// The part of [`CaseState::apply`] before the entry is stored: the
    /// version and the facts (or the correction).
    fn absorb(&mut self, event: &CaseEvent) {
        self.version += 1;
        if let CaseEvent::EntryCorrected(c) = event {
            self.apply_correction(c);
        } else {
            self.facts.absorb(event);
        }
    }

    /// Index in `entries` of the newest entry with this id.
    fn position_of(&self, event_id: Uuid) -> Option<usize> {
        self.entries.iter().rposition(|e| e.id == event_id)
    }

    /// Needs a complete state (the facts are re-derived from every
    /// entry): `decide` refuses a correction on any other, and the import
    /// planner folds a stream that holds one with its entries.
    fn apply_correction(&mut self, c: &EntryCorrected) {
        // A caller's error, never the log's or the user's (see
        // `CaseState`): stopping is better than facts derived from part
        // of the record.
        assert!(
            self.is_complete(),
            "a correction folded into a state that holds facts only"
        );
        let Some(entry) = self
            .position_of(c.event)
            .and_then(|i| self.entries.get_mut(i))
        else {
            return;
        };
        let Ok(corrected) = apply_changes(&entry.content.event(), &c.changes) else {
            return;
        };
        entry.content = Content::new(&corrected);
        self.facts = self.replay(None).1;
    }

    /// Re-derives the facts from the entries in order, optionally with one
    /// entry's content replaced, checking each entry's rules first. Returns
    /// the first entry that breaks a rule (index and error) and the facts.
    fn replay(&self, replace: Option<(Uuid, &CaseEvent)>) -> (Option<(usize, DomainError)>, Facts) {
        let mut facts = Facts::default();
        let mut first = None;
        for (i, entry) in self.entries.iter().enumerate() {
            let content = match replace {
                Some((id, event)) if id == entry.id => Cow::Borrowed(event),
                _ => entry.content.event(),
            };
            if matches!(*content, CaseEvent::EntryCorrected(_)) || !content.is_case_event() {
                continue;
            }
            if first.is_none() {
                if let Err(e) = facts.check(&content) {
                    first = Some((i, e));
                }
            }
            facts.absorb(&content);
        }
        (first, facts)
    }

    /// Number of events folded (the stream's version).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `PupilErased` was recorded.
    pub fn is_erased(&self) -> bool {
        self.facts.erased
    }

    /// Whether the record is under a legal hold.
    pub fn is_held(&self) -> bool {
        self.facts.held
    }

    /// Whether the stream has its `PupilRegistered`.
    pub fn is_registered(&self) -> bool {
        self.facts.pupil.is_some()
    }

    /// The pupil's reference, from `PupilRegistered`.
    pub fn pupil(&self) -> Option<&str> {
        self.facts.pupil.as_deref()
    }

    /// Whether the stream holds an event with this id (among the entries
    /// held: all of them in a complete state).
    pub fn has_event(&self, event_id: Uuid) -> bool {
        self.position_of(event_id).is_some()
    }

    /// The entry with this id, as corrected. Borrowed for most entries;
    /// register marks are stored packed and are rebuilt on the way out.
    /// Among the entries held: all of them in a complete state.
    pub fn event(&self, event_id: Uuid) -> Option<Cow<'_, CaseEvent>> {
        let i = self.position_of(event_id)?;
        self.entries.get(i).map(|e| e.content.event())
    }

    /// Suspension days whose suspensions start in `academic_year` (see
    /// [`academic_year`]), as corrected.
    pub fn suspension_days(&self, academic_year: i32) -> f64 {
        self.facts.suspension_days(academic_year)
    }

    /// Ids of interventions started and not yet ended, in id order.
    pub fn open_interventions(&self) -> impl Iterator<Item = &str> + '_ {
        self.facts
            .interventions
            .iter()
            .filter(|(_, running)| **running)
            .map(|(id, _)| &**id)
    }

    /// Plans agreed and not ended by a review, in id order, with the date
    /// their next review is due.
    pub fn open_plans(&self) -> impl Iterator<Item = OpenPlan<'_>> + '_ {
        self.facts.plans.iter().filter_map(|(plan, s)| {
            s.review_due.map(|review_due| OpenPlan {
                plan,
                kind: s.kind,
                review_due,
            })
        })
    }

    /// Whether a permanent exclusion is recorded.
    pub fn is_permanently_excluded(&self) -> bool {
        self.facts.permanent_exclusion.is_some()
    }

    /// Whether the register holds a mark for this date and session.
    pub fn is_marked(&self, date: NaiveDate, session: Session) -> bool {
        self.facts.is_marked(date, session)
    }

    /// Checks a correction: it names an entry of this pupil, its changes
    /// give a valid entry, and the record read with it still keeps every
    /// rule it kept without it.
    fn check_correction(&self, c: &EntryCorrected, today: NaiveDate) -> Result<(), DomainError> {
        let Some(original) = self.event(c.event) else {
            return Err(DomainError::field(
                "data.event",
                format!(
                    "no entry {} in this pupil's record; \
                     a correction names an earlier entry of the same pupil",
                    c.event
                ),
            ));
        };
        let corrected = apply_changes(&original, &c.changes)?;
        if corrected == *original {
            return Err(DomainError::field(
                "data.changes",
                "every value equals the entry's current value; there is nothing to correct",
            ));
        }
        validate_fields(&corrected).map_err(DomainError::in_changes)?;
        check_dates(&corrected, today).map_err(DomainError::in_changes)?;
        let Some((i, error)) = self.replay(Some((c.event, &corrected))).0 else {
            return Ok(());
        };
        // A rule the record already broke without this correction (a log
        // older than the rule) is not this correction's fault.
        if self
            .replay(None)
            .0
            .is_some_and(|(j, e)| j == i && e == error)
        {
            return Ok(());
        }
        let (entry, which, event_type) = match self.entries.get(i) {
            Some(e) if e.id == c.event => (e.id, "the corrected", corrected.type_name()),
            Some(e) => (e.id, "the later entry", e.content.event().type_name()),
            None => (c.event, "the corrected", corrected.type_name()),
        };
        Err(DomainError::CorrectionBreaks {
            entry,
            event_type,
            which,
            source: Box::new(error),
        })
    }
}

/// Recording one event on a pupil's case.
#[derive(Clone, Debug)]
pub struct Record {
    pub event: CaseEvent,
    pub occurred_at: DateTime<Utc>,
    /// The engine's clock at the time of the command (for the future check).
    pub now: DateTime<Utc>,
}

/// What a member of staff asks the engine to do.
#[derive(Clone, Debug)]
pub enum Command {
    Record(Record),
}

/// Validates `command` against `state` and returns the events to append.
/// Fold them into the state with [`CaseState::apply`] before deciding the
/// next command of the same pupil.
pub fn decide(state: &CaseState, command: &Command) -> Result<Vec<CaseEvent>, DomainError> {
    decide_owned(state, command.clone()).map(Iterator::collect)
}

/// The events [`decide_owned`] gives, in order (one, for every command
/// there is), without a list allocated for them.
pub type Decided = std::iter::Once<CaseEvent>;

/// [`decide`] for a command the caller gives up: the same checks, and the
/// command's own event moved into the answer instead of copied (the
/// import's path, one event a line).
pub fn decide_owned(state: &CaseState, command: Command) -> Result<Decided, DomainError> {
    check(state, &command)?;
    match command {
        Command::Record(r) => Ok(std::iter::once(r.event)),
    }
}

/// Every rule [`decide`] applies to `command` against `state`.
fn check(state: &CaseState, command: &Command) -> Result<(), DomainError> {
    match command {
        Command::Record(r) => {
            if !r.event.is_case_event() {
                return Err(DomainError::NotACaseEvent {
                    event_type: r.event.type_name(),
                });
            }
            // The bound is worked out only for a time after `now` (at or
            // before it, the time is within it): most records are of the past.
            if r.occurred_at > r.now
                && r.now
                    .checked_add_signed(TimeDelta::minutes(FUTURE_TOLERANCE_MINUTES))
                    .is_some_and(|latest| r.occurred_at > latest)
            {
                return Err(DomainError::InFuture {
                    occurred_at: r.occurred_at,
                    now: r.now,
                });
            }
            if r.occurred_at.date_naive() < EARLIEST_PLAUSIBLE_DATE {
                return Err(DomainError::TooOld {
                    occurred_at: r.occurred_at,
                });
            }
            validate_fields(&r.event)?;
            let today = r.now.date_naive();
            check_dates(&r.event, today)?;
            match &r.event {
                CaseEvent::EntryCorrected(_) if state.is_erased() => {
                    return Err(DomainError::Sequence {
                        event_type: "EntryCorrected",
                        what: "the pupil was erased; nothing more can be recorded".into(),
                    })
                }
                CaseEvent::EntryCorrected(c) => {
                    if !state.is_registered() {
                        return Err(DomainError::NotRegistered {
                            event_type: r.event.type_name(),
                        });
                    }
                    if !state.is_complete() {
                        // A caller's error, never the user's: a correction
                        // is judged against every entry.
                        return Err(DomainError::Sequence {
                            event_type: "EntryCorrected",
                            what: "internal: the pupil's earlier entries were not read; \
                                   nothing was recorded"
                                .into(),
                        });
                    }
                    state.check_correction(c, today)?;
                }
                other => state.facts.check(other)?,
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register's slot by ordinal is the day counted from 1 September
    /// of the date's academic year, for every date of 1990 to 2110.
    #[test]
    fn a_register_slot_counts_the_days_from_1_september() {
        let mut date = NaiveDate::from_ymd_opt(1990, 1, 1).expect("date");
        let end = NaiveDate::from_ymd_opt(2111, 1, 1).expect("date");
        while date < end {
            let year = academic_year(date);
            let first = NaiveDate::from_ymd_opt(year, 9, 1).expect("date");
            let day = (date - first).num_days();
            assert!((0..366).contains(&day), "{date}");
            for (session, pm) in [(Session::Am, 0), (Session::Pm, 1)] {
                let bit = day as usize * 2 + pm;
                assert_eq!(
                    Register::slot(date, session),
                    (year, bit / 64, 1u64 << (bit % 64)),
                    "{date} {session:?}"
                );
            }
            date = date.succ_opt().expect("date");
        }
    }
}
