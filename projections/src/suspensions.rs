//! Suspensions and permanent exclusions against the statutory limits.
//!
//! A suspension counts in the academic year (and term) of its
//! `start_date`; a permanent exclusion in those of its `effective_date`.
//! Per pupil and year: how many suspensions, how many days, the days left
//! of the 45-day yearly limit (negative past it, which only an override
//! reason allows), and every permanent exclusion.
//!
//! Per term (autumn September–December, spring January–March, summer
//! April–August; see [`Term`]) the governing board's duty follows the
//! pupil's suspension days in that term (DfE statutory guidance,
//! DOMAIN.md):
//!
//! | days in the term | band | the board |
//! | --- | --- | --- |
//! | up to 5 | `representations` | must consider parents' representations; cannot reinstate |
//! | more than 5, up to 15 | `meeting_on_request` | must meet to consider reinstatement if parents ask (within 50 school days) |
//! | more than 15, or any permanent exclusion | `reinstatement` | must consider reinstatement within 15 school days |

use std::collections::BTreeMap;

use casebook_engine::domain::{academic_year, SUSPENSION_DAYS_LIMIT};
use casebook_engine::event::CaseEvent;
use casebook_engine::RecordedEvent;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::{academic_year_label, Term, Tracker};
use crate::Projection;

/// The suspensions projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Suspensions {
    facts: Tracker,
}

fn reads(e: &CaseEvent) -> bool {
    matches!(
        e,
        CaseEvent::SuspensionIssued(_) | CaseEvent::PermanentExclusionIssued(_)
    )
}

impl Projection for Suspensions {
    const NAME: &'static str = "suspensions";
    /// 2: the events are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        self.facts.apply(event, reads);
    }
}

/// The governing board's duty for a pupil's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardBand {
    /// Up to 5 days: consider representations; cannot reinstate.
    Representations,
    /// 6 to 15 days: meet if the parents ask.
    MeetingOnRequest,
    /// Over 15 days or a permanent exclusion: consider reinstatement within
    /// 15 school days.
    Reinstatement,
}

impl BoardBand {
    pub fn of(days: f64, permanent_exclusion: bool) -> BoardBand {
        if permanent_exclusion || days > 15.0 {
            BoardBand::Reinstatement
        } else if days > 5.0 {
            BoardBand::MeetingOnRequest
        } else {
            BoardBand::Representations
        }
    }

    /// What the board must do, in words.
    pub fn duty(self) -> &'static str {
        match self {
            BoardBand::Representations => {
                "must consider parents' representations; cannot reinstate"
            }
            BoardBand::MeetingOnRequest => {
                "must meet to consider reinstatement if the parents ask (within 50 school days)"
            }
            BoardBand::Reinstatement => "must consider reinstatement within 15 school days",
        }
    }
}

/// `report suspensions --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuspensionReport {
    pub academic_year: i32,
    pub label: String,
    pub limit_days: f64,
    /// Pupils with a suspension or permanent exclusion in the year, most
    /// days first.
    pub pupils: Vec<PupilSuspensions>,
    pub totals: SuspensionTotals,
}

/// One pupil's year.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PupilSuspensions {
    pub pupil: String,
    pub suspensions: u64,
    pub days: f64,
    /// Days left of the yearly limit (negative when past it).
    pub remaining_days: f64,
    pub over_limit: bool,
    /// Every census reason code given, first seen first.
    pub reason_codes: Vec<String>,
    /// Terms with a suspension or permanent exclusion, in term order.
    pub terms: Vec<TermPosition>,
    pub permanent_exclusions: Vec<PermanentExclusion>,
    /// The strictest band of any term.
    pub board: BoardBand,
}

/// A pupil's position in one term.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TermPosition {
    pub term: Term,
    pub suspensions: u64,
    pub days: f64,
    pub permanent_exclusion: bool,
    pub board: BoardBand,
    pub duty: String,
}

/// A permanent exclusion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermanentExclusion {
    pub event_id: Uuid,
    pub effective_date: NaiveDate,
    pub reason_codes: Vec<String>,
}

/// The school's year.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SuspensionTotals {
    pub pupils: u64,
    pub suspensions: u64,
    pub days: f64,
    pub permanent_exclusions: u64,
    pub pupils_over_limit: u64,
}

#[derive(Default)]
struct TermTally {
    suspensions: u64,
    days: f64,
    permanent_exclusion: bool,
}

impl Suspensions {
    /// Every pupil's suspensions and exclusions in `year` (named by its
    /// September: 2025 = 2025/26).
    pub fn report(&self, year: i32) -> SuspensionReport {
        let mut pupils = Vec::new();
        let mut totals = SuspensionTotals::default();
        for (stream, facts) in &self.facts.pupils {
            let mut terms: BTreeMap<Term, TermTally> = BTreeMap::new();
            let mut reason_codes: Vec<String> = Vec::new();
            let mut exclusions = Vec::new();
            let mut note_codes = |main: &str, more: &[String]| {
                for code in std::iter::once(main).chain(more.iter().map(String::as_str)) {
                    if !reason_codes.iter().any(|c| c == code) {
                        reason_codes.push(code.to_string());
                    }
                }
            };
            for t in &facts.events {
                // Always decodes (`Kept::event`).
                let Some(event) = t.event() else {
                    continue;
                };
                match &event {
                    CaseEvent::SuspensionIssued(s) if academic_year(s.start_date) == year => {
                        let term = terms.entry(Term::of(s.start_date)).or_default();
                        term.suspensions += 1;
                        term.days += s.days;
                        note_codes(&s.reason_code, &s.additional_reason_codes);
                    }
                    CaseEvent::PermanentExclusionIssued(p)
                        if academic_year(p.effective_date) == year =>
                    {
                        terms
                            .entry(Term::of(p.effective_date))
                            .or_default()
                            .permanent_exclusion = true;
                        note_codes(&p.reason_code, &p.additional_reason_codes);
                        let mut codes = vec![p.reason_code.clone()];
                        codes.extend(p.additional_reason_codes.iter().cloned());
                        exclusions.push(PermanentExclusion {
                            event_id: t.event_id,
                            effective_date: p.effective_date,
                            reason_codes: codes,
                        });
                    }
                    _ => {}
                }
            }
            if terms.is_empty() {
                continue;
            }
            let terms: Vec<TermPosition> = terms
                .into_iter()
                .map(|(term, t)| {
                    let board = BoardBand::of(t.days, t.permanent_exclusion);
                    TermPosition {
                        term,
                        suspensions: t.suspensions,
                        days: t.days,
                        permanent_exclusion: t.permanent_exclusion,
                        board,
                        duty: board.duty().to_string(),
                    }
                })
                .collect();
            let suspensions: u64 = terms.iter().map(|t| t.suspensions).sum();
            let days: f64 = terms.iter().map(|t| t.days).sum();
            let board = terms
                .iter()
                .map(|t| t.board)
                .max()
                .unwrap_or(BoardBand::Representations);
            let over_limit = days > SUSPENSION_DAYS_LIMIT;
            totals.pupils += 1;
            totals.suspensions += suspensions;
            totals.days += days;
            totals.permanent_exclusions += exclusions.len() as u64;
            totals.pupils_over_limit += u64::from(over_limit);
            pupils.push(PupilSuspensions {
                pupil: facts.card.pupil(*stream),
                suspensions,
                days,
                remaining_days: SUSPENSION_DAYS_LIMIT - days,
                over_limit,
                reason_codes,
                terms,
                permanent_exclusions: exclusions,
                board,
            });
        }
        pupils.sort_by(|a, b| {
            b.days
                .total_cmp(&a.days)
                .then_with(|| {
                    b.permanent_exclusions
                        .len()
                        .cmp(&a.permanent_exclusions.len())
                })
                .then_with(|| a.pupil.cmp(&b.pupil))
        });
        SuspensionReport {
            academic_year: year,
            label: academic_year_label(year),
            limit_days: SUSPENSION_DAYS_LIMIT,
            pupils,
            totals,
        }
    }
}
