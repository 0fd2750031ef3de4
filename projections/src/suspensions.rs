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
//!
//! The view keeps of each event only what the report reads ([`Step`]: its
//! id, time, type, date, days and reason codes), its strings once in the
//! view's names, as the caseload keeps its case events: a correction is
//! applied to the event with the fields not kept blank (a suspension's
//! override reason; property test
//! `tests::steps_follow_corrections_as_whole_events_do`).

use std::collections::BTreeMap;

use casebook_engine::domain::{academic_year, SUSPENSION_DAYS_LIMIT};
use casebook_engine::event::{CaseEvent, PermanentExclusionIssued, SuspensionIssued};
use casebook_engine::RecordedEvent;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::{self, academic_year_label, Name, Names, Reading, Steps, Term};
use crate::Projection;

/// The suspensions projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Suspensions {
    kept: Steps<What>,
}

/// What the report reads of one event: 64 bytes, and an allocation of 4
/// bytes a further reason code when it gives any (one in eight of the
/// demo's suspensions gives one; most give none), where the event kept
/// whole (`facts::Kept`) took 80 and its payload's bytes (field names,
/// the codes and dates as text, an override reason).
type Step = facts::Step<What>;

const _: () = assert!(std::mem::size_of::<Step>() == 64);

/// An event's type and the fields of it the report reads, each reason
/// code as its place in the view's names. Not `Copy`: the further reason
/// codes are a list (up to two by the rules of today, any number in a
/// log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum What {
    Suspension {
        start_date: NaiveDate,
        days: f64,
        reason_code: Name,
        additional_reason_codes: Box<[Name]>,
    },
    PermanentExclusion {
        effective_date: NaiveDate,
        reason_code: Name,
        additional_reason_codes: Box<[Name]>,
    },
}

impl Reading for What {
    fn of(e: &CaseEvent, names: &mut Names) -> Option<What> {
        Some(match e {
            CaseEvent::SuspensionIssued(s) => What::Suspension {
                start_date: s.start_date,
                days: s.days,
                reason_code: names.name(&s.reason_code),
                additional_reason_codes: codes(&s.additional_reason_codes, names),
            },
            CaseEvent::PermanentExclusionIssued(p) => What::PermanentExclusion {
                effective_date: p.effective_date,
                reason_code: names.name(&p.reason_code),
                additional_reason_codes: codes(&p.additional_reason_codes, names),
            },
            _ => return None,
        })
    }

    /// The event of this type with the fields kept, the other (a
    /// suspension's override reason) blank.
    fn event(&self, names: &Names) -> CaseEvent {
        let text = |name: Name| names.get(name).to_string();
        let texts = |more: &[Name]| more.iter().map(|n| text(*n)).collect();
        match self {
            What::Suspension {
                start_date,
                days,
                reason_code,
                additional_reason_codes,
            } => CaseEvent::SuspensionIssued(SuspensionIssued {
                days: *days,
                reason_code: text(*reason_code),
                additional_reason_codes: texts(additional_reason_codes),
                start_date: *start_date,
                override_reason: None,
            }),
            What::PermanentExclusion {
                effective_date,
                reason_code,
                additional_reason_codes,
            } => CaseEvent::PermanentExclusionIssued(PermanentExclusionIssued {
                reason_code: text(*reason_code),
                additional_reason_codes: texts(additional_reason_codes),
                effective_date: *effective_date,
            }),
        }
    }

    fn names(&self) -> impl Iterator<Item = Name> + '_ {
        let (main, more) = match self {
            What::Suspension {
                reason_code,
                additional_reason_codes,
                ..
            }
            | What::PermanentExclusion {
                reason_code,
                additional_reason_codes,
                ..
            } => (*reason_code, additional_reason_codes),
        };
        std::iter::once(main).chain(more.iter().copied())
    }
}

/// `more` as places in `names`.
fn codes(more: &[String], names: &mut Names) -> Box<[Name]> {
    more.iter().map(|c| names.name(c)).collect()
}

impl Step {
    /// What the report reads of this step.
    fn read<'a>(&self, names: &'a Names) -> Read<'a> {
        let (kind, date) = match self.what {
            What::Suspension {
                start_date, days, ..
            } => (Removal::Suspension { days }, start_date),
            What::PermanentExclusion { effective_date, .. } => {
                (Removal::PermanentExclusion, effective_date)
            }
        };
        Read {
            event_id: self.event_id,
            kind,
            date,
            reason_codes: self.what.names().map(|n| names.get(n)).collect(),
        }
    }
}

/// What the report reads of one event: its id, whether a suspension (and
/// of how many days) or a permanent exclusion, its date (a suspension's
/// start, an exclusion's effective date) and its reason codes, the main
/// one first.
#[derive(Clone, Debug, PartialEq)]
struct Read<'a> {
    event_id: Uuid,
    kind: Removal,
    date: NaiveDate,
    reason_codes: Vec<&'a str>,
}

/// A suspension of `days`, or a permanent exclusion.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Removal {
    Suspension { days: f64 },
    PermanentExclusion,
}

impl Projection for Suspensions {
    const NAME: &'static str = "suspensions";
    /// 3: each event kept as what the report reads of it (`Step`), its
    /// reason codes in the view's names.
    const VERSION: u32 = 3;

    fn apply(&mut self, e: &RecordedEvent, _corrected_at: Option<u64>) {
        self.kept.apply(e);
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
        report_of(year, self.kept.reads(|s, names| s.read(names)))
    }
}

/// The report for `year` of each pupil's reference and what it reads of
/// their events, in stream order.
fn report_of<'a, R: Iterator<Item = Read<'a>>>(
    year: i32,
    pupils: impl Iterator<Item = (String, R)>,
) -> SuspensionReport {
    let mut report_pupils = Vec::new();
    let mut totals = SuspensionTotals::default();
    for (pupil, reads) in pupils {
        let mut terms: BTreeMap<Term, TermTally> = BTreeMap::new();
        let mut reason_codes: Vec<String> = Vec::new();
        let mut exclusions = Vec::new();
        let mut note_codes = |codes: &[&str]| {
            for code in codes {
                if !reason_codes.iter().any(|c| c == code) {
                    reason_codes.push(code.to_string());
                }
            }
        };
        for read in reads {
            if academic_year(read.date) != year {
                continue;
            }
            match read.kind {
                Removal::Suspension { days } => {
                    let term = terms.entry(Term::of(read.date)).or_default();
                    term.suspensions += 1;
                    term.days += days;
                    note_codes(&read.reason_codes);
                }
                Removal::PermanentExclusion => {
                    terms
                        .entry(Term::of(read.date))
                        .or_default()
                        .permanent_exclusion = true;
                    note_codes(&read.reason_codes);
                    exclusions.push(PermanentExclusion {
                        event_id: read.event_id,
                        effective_date: read.date,
                        reason_codes: read.reason_codes.iter().map(|c| c.to_string()).collect(),
                    });
                }
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
        report_pupils.push(PupilSuspensions {
            pupil,
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
    report_pupils.sort_by(|a, b| {
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
        pupils: report_pupils,
        totals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{
        damaged, folded, generated_log, pick, read_back, same_as_whole, steps_checkpoint,
        valid_date, whole_events, Line,
    };
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const PUPILS: [&str; 2] = ["P1", "P2"];

    /// The academic years the reports are asked for: before, and the two
    /// the generated dates fall in.
    const YEARS: [i32; 3] = [2024, 2025, 2026];

    fn code() -> impl Strategy<Value = Value> {
        pick(vec![json!("PA"), json!("VA"), json!("DM"), json!("PD")])
    }

    fn date() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => valid_date(700),
            1 => Just(json!("2025-02-30")),
            1 => Just(json!(20251001)),
        ]
    }

    fn event() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            4 => (
                pick(vec![json!(0.5), json!(1.0), json!(2.5), json!(5.0), json!(12.0)]),
                code(),
                prop::collection::vec(code(), 0..3),
                valid_date(700),
                proptest::option::of(Just(json!("Days at a previous school counted twice"))),
            )
                .prop_map(|(days, code, more, start, over)| {
                    let mut data = json!({"days": days, "reason_code": code,
                        "additional_reason_codes": more, "start_date": start});
                    if let Some(over) = over {
                        data["override_reason"] = over;
                    }
                    ("SuspensionIssued", data)
                }),
            2 => (code(), prop::collection::vec(code(), 0..3), valid_date(700)).prop_map(
                |(code, more, d)| (
                    "PermanentExclusionIssued",
                    json!({"reason_code": code, "additional_reason_codes": more,
                        "effective_date": d})
                )
            ),
            1 => Just(("SanctionIssued", json!({"kind": "isolation", "reason": "Synthetic"}))),
            1 => Just(("ParentContacted", json!({"method": "phone", "summary": "told"}))),
            1 => Just((
                "PupilRegistered",
                json!({"name": "Synthetic Pupil", "date_of_birth": "2012-05-01",
                    "year_group": 9, "class": "9A"})
            )),
        ]
    }

    /// A change that applies or does not, to a field of the two types
    /// (and of others, and of the registration).
    fn change() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            pick(vec![
                json!(1.5),
                json!(0.5),
                json!(20.0),
                json!("two"),
                Value::Null
            ])
            .prop_map(|v| ("days", v)),
            date().prop_map(|v| ("start_date", v)),
            date().prop_map(|v| ("effective_date", v)),
            prop_oneof![code(), Just(json!(3)), Just(Value::Null)].prop_map(|v| ("reason_code", v)),
            pick(vec![
                json!(["DM"]),
                json!([]),
                json!(["PD", "PD", "VA"]),
                json!("DM"),
                json!([4])
            ])
            .prop_map(|v| ("additional_reason_codes", v)),
            pick(vec![Value::Null, json!("Counted twice"), json!(5)])
                .prop_map(|v| ("override_reason", v)),
            Just(("kind", json!("detention"))),
            Just(("summary", json!("other"))),
            Just(("class", json!("9B"))),
            Just(("pupil", json!("P9"))),
        ]
    }

    fn line() -> impl Strategy<Value = Line> {
        crate::facts::testing::line(PUPILS.len(), event(), change())
    }

    /// The types the view read before `VERSION` 3 (its `reads`), kept
    /// here so that a type `What::of` drops shows.
    fn whole_reads(e: &CaseEvent) -> bool {
        matches!(
            e,
            CaseEvent::SuspensionIssued(_) | CaseEvent::PermanentExclusionIssued(_)
        )
    }

    /// What the report took of a whole event before `VERSION` 3.
    fn whole_way(event: &CaseEvent, event_id: Uuid) -> Option<Read<'_>> {
        match event {
            CaseEvent::SuspensionIssued(s) => Some(Read {
                event_id,
                kind: Removal::Suspension { days: s.days },
                date: s.start_date,
                reason_codes: std::iter::once(s.reason_code.as_str())
                    .chain(s.additional_reason_codes.iter().map(String::as_str))
                    .collect(),
            }),
            CaseEvent::PermanentExclusionIssued(p) => Some(Read {
                event_id,
                kind: Removal::PermanentExclusion,
                date: p.effective_date,
                reason_codes: std::iter::once(p.reason_code.as_str())
                    .chain(p.additional_reason_codes.iter().map(String::as_str))
                    .collect(),
            }),
            _ => None,
        }
    }

    /// The fields of `e` the view keeps, by name, as JSON.
    fn kept_fields(e: &CaseEvent) -> Value {
        let mut data = e.data_json();
        if let Value::Object(fields) = &mut data {
            fields.remove("override_reason");
        }
        json!({"type": e.type_name(), "data": data})
    }

    proptest! {
        /// Events kept as what the report reads of them, corrected with
        /// their other fields blank, hold what the same events kept whole
        /// (`facts::Tracker`, the view's form before `VERSION` 3),
        /// corrected whole, hold of them, whatever the corrections change
        /// and whether or not they apply, and make the same reports; the
        /// view reads back from its checkpoint as it was, with the same
        /// reports.
        #[test]
        fn steps_follow_corrections_as_whole_events_do(
            lines in prop::collection::vec(line(), 0..40),
        ) {
            let (slim, whole) = folded::<Suspensions>(&generated_log(&PUPILS, &lines), whole_reads);
            same_as_whole(&slim.kept, &whole, kept_fields)?;
            let events = whole_events(&whole);
            for stream in whole.pupils.keys() {
                let pupil = &slim.kept.pupils[stream];
                // What the report takes of each: as it took it of the
                // whole event.
                let read: Vec<Option<Read>> =
                    pupil.steps.iter().map(|s| Some(s.read(&slim.kept.names))).collect();
                let whole_read: Vec<Option<Read>> =
                    events[stream].iter().map(|(e, k)| whole_way(e, k.event_id)).collect();
                prop_assert_eq!(read, whole_read);
            }
            let back = read_back(&slim);
            prop_assert_eq!(&back, &slim);
            for year in YEARS {
                // The report: as the whole events' reads make it.
                let reference = report_of(
                    year,
                    whole.pupils.iter().map(|(stream, facts)| {
                        (
                            facts.card.pupil(*stream),
                            events[stream].iter().filter_map(|(e, k)| whole_way(e, k.event_id)),
                        )
                    }),
                );
                prop_assert_eq!(slim.report(year), reference);
                prop_assert_eq!(back.report(year), slim.report(year));
            }
        }

        /// Whatever bytes stand for a checkpoint, reading it does not
        /// panic, and a view read from them reports without panicking.
        #[test]
        fn any_checkpoint_bytes_are_read_or_refused_without_panic(
            lines in prop::collection::vec(line(), 0..12),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let view: Suspensions = folded(&generated_log(&PUPILS, &lines), |_| false).0;
            if let Some(read) = damaged(&view, at, byte) {
                for year in YEARS {
                    let _ = read.report(year);
                }
            }
        }
    }

    /// A checkpoint that lists a string twice, or whose steps name a
    /// place past the list (a further reason code among them), is
    /// refused; the same checkpoint without the fault is read.
    #[test]
    fn checkpoints_naming_strings_they_do_not_list_are_refused() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum WhatForm {
            Suspension {
                start_date: &'static str,
                days: f64,
                reason_code: u32,
                additional_reason_codes: Vec<u32>,
            },
            PermanentExclusion {
                effective_date: &'static str,
                reason_code: u32,
                additional_reason_codes: Vec<u32>,
            },
        }
        let at = 1_760_000_000_000_000i64;
        let checkpoint = |names: Vec<&str>, more: u32| {
            let steps = vec![
                (
                    Uuid::from_u128(1),
                    at,
                    WhatForm::Suspension {
                        start_date: "2025-10-06",
                        days: 2.5,
                        reason_code: 1,
                        additional_reason_codes: vec![],
                    },
                ),
                (
                    Uuid::from_u128(2),
                    at,
                    WhatForm::PermanentExclusion {
                        effective_date: "2026-01-12",
                        reason_code: 1,
                        additional_reason_codes: vec![more],
                    },
                ),
            ];
            steps_checkpoint(names, steps)
        };
        let read = |bytes: Vec<u8>| rmp_serde::from_slice::<Suspensions>(&bytes);
        let good = read(checkpoint(vec!["PA", "DM"], 2)).unwrap();
        let report = good.report(2025);
        assert_eq!(report.pupils[0].reason_codes, ["PA", "DM"]);
        assert_eq!(report.pupils[0].days, 2.5);
        assert_eq!(
            report.pupils[0].permanent_exclusions[0].reason_codes,
            ["PA", "DM"]
        );
        let past = read(checkpoint(vec!["PA", "DM"], 3)).unwrap_err();
        assert!(past.to_string().contains("past the list"), "{past}");
        let twice = read(checkpoint(vec!["PA", "PA"], 2)).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let none = read(checkpoint(vec!["PA", "DM"], 0)).unwrap_err();
        assert!(none.to_string().contains("zero"), "{none}");
    }
}
