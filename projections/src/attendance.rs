//! Attendance and persistent absence, per pupil per academic year.
//!
//! Every register mark counts by its code's category
//! ([`casebook_engine::codes`]): present and approved education off site
//! count as attending; authorised and unauthorised absences as missed; a
//! "not possible" mark counts for nothing. Possible sessions are the
//! attending plus the missed ones. A pupil is **persistently absent** when
//! they missed 10 % or more of their possible sessions, **severely absent**
//! at 50 % or more (DfE definitions; DOMAIN.md). The academic year is the
//! year of the mark's `date`, 1 September to 31 August.
//!
//! Marks are the one fact a school holds in bulk (two a day per pupil), so
//! this view keeps them packed: per pupil, one `(date, session) -> (event
//! id, code)` map. The event id is what a correction names; the map key
//! makes a session count once even if a log holds two marks for it (the
//! later one stands, as a re-taken register would).

use std::collections::BTreeMap;

use casebook_engine::codes::{attendance_code, AttendanceCategory};
use casebook_engine::event::{AttendanceMarked, CaseEvent, EntryCorrected, Session};
use casebook_engine::{RecordedEvent, StreamId};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::{academic_year_label, corrected, percent, PupilCard};
use crate::Projection;

/// The attendance projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attendance {
    pupils: BTreeMap<StreamId, Register>,
}

/// One pupil's register marks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Register {
    card: PupilCard,
    #[serde(with = "packed")]
    marks: BTreeMap<(NaiveDate, Session), Mark>,
}

/// A mark's event id and code.
#[derive(Clone, Debug, PartialEq)]
struct Mark(Uuid, String);

/// The checkpoint form of a pupil's marks: a list of `(day number, pm,
/// event id, code)` tuples. Register marks are most of a school's log, so
/// their checkpoint form matters: no field names, and a day number instead
/// of a date string to parse (about 27 bytes a mark instead of 50).
mod packed {
    use std::collections::BTreeMap;

    use casebook_engine::event::Session;
    use chrono::{Datelike, NaiveDate};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    use super::Mark;

    type Packed = (i32, bool, Uuid, String);

    pub fn serialize<S: Serializer>(
        marks: &BTreeMap<(NaiveDate, Session), Mark>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(marks.iter().map(|((date, session), Mark(id, code))| {
            (date.num_days_from_ce(), *session == Session::Pm, id, code)
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<(NaiveDate, Session), Mark>, D::Error> {
        let packed: Vec<Packed> = Vec::deserialize(deserializer)?;
        packed
            .into_iter()
            .map(|(day, pm, id, code)| {
                let date = NaiveDate::from_num_days_from_ce_opt(day)
                    .ok_or_else(|| D::Error::custom(format!("day number {day} out of range")))?;
                let session = if pm { Session::Pm } else { Session::Am };
                Ok(((date, session), Mark(id, code)))
            })
            .collect()
    }
}

impl Register {
    fn correct(&mut self, c: &EntryCorrected) {
        let Some((&key, mark)) = self.marks.iter().find(|(_, m)| m.0 == c.event) else {
            return;
        };
        let original = CaseEvent::AttendanceMarked(AttendanceMarked {
            date: key.0,
            session: key.1,
            code: mark.1.clone(),
        });
        if let Some(CaseEvent::AttendanceMarked(new)) = corrected(&original, &c.changes) {
            let id = mark.0;
            self.marks.remove(&key);
            self.marks
                .insert((new.date, new.session), Mark(id, new.code));
        }
    }
}

impl Projection for Attendance {
    const NAME: &'static str = "attendance";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &RecordedEvent) {
        match &event.event {
            CaseEvent::PupilRegistered(_) => self
                .pupils
                .entry(event.stream)
                .or_default()
                .card
                .register(event),
            CaseEvent::AttendanceMarked(a) => {
                self.pupils
                    .entry(event.stream)
                    .or_default()
                    .marks
                    .insert((a.date, a.session), Mark(event.event_id, a.code.clone()));
            }
            CaseEvent::EntryCorrected(c) => {
                if let Some(register) = self.pupils.get_mut(&event.stream) {
                    if !register.card.correct(c) {
                        register.correct(c);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `report attendance --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttendanceReport {
    /// The academic year, named by its September (2025 = 2025/26).
    pub academic_year: i32,
    /// `2025/26`.
    pub label: String,
    /// Only persistently (or severely) absent pupils were listed.
    pub persistent_only: bool,
    /// Pupils with marks in the year, most absent first.
    pub pupils: Vec<PupilAttendance>,
    /// The whole school's figures, whatever the filter.
    pub summary: AttendanceSummary,
}

/// One pupil's year.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PupilAttendance {
    pub pupil: String,
    pub class: Option<String>,
    pub year_group: Option<u8>,
    pub possible_sessions: u64,
    /// Sessions attended: present, or at approved education off site.
    pub present: u64,
    /// Of `present`, sessions at approved education off site.
    pub approved_offsite: u64,
    pub authorised: u64,
    pub unauthorised: u64,
    /// Marks that are not possible sessions (not counted).
    pub not_possible: u64,
    /// Marks whose code casebook does not know (not counted).
    pub unrecognised: u64,
    /// `present / possible` in %, one decimal; `null` with no possible session.
    pub attendance_pct: Option<f64>,
    /// `(authorised + unauthorised) / possible` in %.
    pub absence_pct: Option<f64>,
    /// Missed 10 % or more of possible sessions.
    pub persistent: bool,
    /// Missed 50 % or more of possible sessions.
    pub severe: bool,
}

/// The school's year at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttendanceSummary {
    pub pupils: u64,
    pub possible_sessions: u64,
    pub present: u64,
    pub attendance_pct: Option<f64>,
    pub persistent: u64,
    pub severe: u64,
}

impl PupilAttendance {
    fn count(&mut self, code: &str) {
        match attendance_code(code).map(|c| c.category) {
            Some(AttendanceCategory::Present) => self.present += 1,
            Some(AttendanceCategory::ApprovedOffsite) => {
                self.present += 1;
                self.approved_offsite += 1;
            }
            Some(AttendanceCategory::Authorised) => self.authorised += 1,
            Some(AttendanceCategory::Unauthorised) => self.unauthorised += 1,
            Some(AttendanceCategory::NotPossible) => self.not_possible += 1,
            None => self.unrecognised += 1,
        }
    }

    fn finish(&mut self) {
        let missed = self.authorised + self.unauthorised;
        self.possible_sessions = self.present + missed;
        self.attendance_pct = percent(self.present, self.possible_sessions);
        self.absence_pct = percent(missed, self.possible_sessions);
        // Whole numbers, so 10 % is 10 % exactly, not a float near it.
        self.persistent = self.possible_sessions > 0 && missed * 10 >= self.possible_sessions;
        self.severe = self.possible_sessions > 0 && missed * 2 >= self.possible_sessions;
    }
}

impl Attendance {
    /// Each pupil's attendance in `academic_year`; with `persistent_only`,
    /// only pupils missing 10 % or more.
    pub fn report(&self, academic_year: i32, persistent_only: bool) -> AttendanceReport {
        let first = NaiveDate::from_ymd_opt(academic_year, 9, 1);
        let last = NaiveDate::from_ymd_opt(academic_year.saturating_add(1), 8, 31);
        let mut pupils = Vec::new();
        let mut summary = AttendanceSummary::default();
        if let (Some(first), Some(last)) = (first, last) {
            for (stream, register) in &self.pupils {
                let mut year = register
                    .marks
                    .range((first, Session::Am)..=(last, Session::Pm))
                    .peekable();
                if year.peek().is_none() {
                    continue;
                }
                let mut p = PupilAttendance {
                    pupil: register.card.pupil(*stream),
                    class: register.card.class().map(str::to_string),
                    year_group: register.card.year_group(),
                    ..PupilAttendance::default()
                };
                for (_, Mark(_, code)) in year {
                    p.count(code);
                }
                p.finish();
                summary.pupils += 1;
                summary.possible_sessions += p.possible_sessions;
                summary.present += p.present;
                summary.persistent += u64::from(p.persistent);
                summary.severe += u64::from(p.severe);
                if !persistent_only || p.persistent {
                    pupils.push(p);
                }
            }
        }
        summary.attendance_pct = percent(summary.present, summary.possible_sessions);
        pupils.sort_by(|a, b| {
            let missed = |p: &PupilAttendance| p.absence_pct.unwrap_or(0.0);
            missed(b)
                .total_cmp(&missed(a))
                .then_with(|| a.pupil.cmp(&b.pupil))
        });
        AttendanceReport {
            academic_year,
            label: academic_year_label(academic_year),
            persistent_only,
            pupils,
            summary,
        }
    }
}
