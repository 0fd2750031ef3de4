//! Intervention outcomes: per kind of intervention (mentoring, social
//! skills, ...), how many started, how many ended with which outcome, how
//! many sessions were delivered and attended; and the interventions still
//! running.
//!
//! Sessions and ends attach to the latest intervention of that id in the
//! pupil's stream. A session for an id never started is counted in
//! `unmatched_sessions` rather than guessed into a kind; an end for an id
//! never started (or already ended) is ignored.
//!
//! The view keeps of each event only what the report reads ([`Step`]: its
//! id, time, type and the intervention id, kind, staff, sessions planned,
//! whether a session was attended, the outcome), its strings once in the
//! view's names, as the caseload keeps its case events: a correction is
//! applied to the event with the fields not kept blank (a start's goal, a
//! session's notes; property test
//! `tests::steps_follow_corrections_as_whole_events_do`).

use std::collections::BTreeMap;

use casebook_engine::event::{
    CaseEvent, InterventionEnded, InterventionOutcome, InterventionSessionDelivered,
    InterventionStarted,
};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::facts::{self, percent, Name, Names, Reading, Steps};
use crate::Projection;

/// The interventions projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Interventions {
    kept: Steps<What>,
}

/// What the report reads of one event: 48 bytes, where the event kept
/// whole (`facts::Kept`) took 80 and its payload's bytes (a start's goal,
/// a session's notes).
type Step = facts::Step<What>;

const _: () = assert!(std::mem::size_of::<Step>() == 48);

/// An event's type and the fields of it the report reads, each string as
/// its place in the view's names.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum What {
    Started {
        intervention: Name,
        kind: Name,
        staff: Option<Name>,
        sessions_planned: Option<u32>,
    },
    Session {
        intervention: Name,
        attended: bool,
    },
    Ended {
        intervention: Name,
        outcome: InterventionOutcome,
    },
}

impl Reading for What {
    fn of(e: &CaseEvent, names: &mut Names) -> Option<What> {
        Some(match e {
            CaseEvent::InterventionStarted(i) => What::Started {
                intervention: names.name(&i.intervention),
                kind: names.name(&i.kind),
                staff: i.staff.as_deref().map(|s| names.name(s)),
                sessions_planned: i.sessions_planned,
            },
            CaseEvent::InterventionSessionDelivered(s) => What::Session {
                intervention: names.name(&s.intervention),
                attended: s.attended,
            },
            CaseEvent::InterventionEnded(e) => What::Ended {
                intervention: names.name(&e.intervention),
                outcome: e.outcome,
            },
            _ => return None,
        })
    }

    /// The event of this type with the fields kept, the others (a start's
    /// goal, a session's notes) blank.
    fn event(&self, names: &Names) -> CaseEvent {
        let text = |name: Name| names.get(name).to_string();
        match *self {
            What::Started {
                intervention,
                kind,
                staff,
                sessions_planned,
            } => CaseEvent::InterventionStarted(InterventionStarted {
                intervention: text(intervention),
                kind: text(kind),
                goal: String::new(),
                sessions_planned,
                staff: staff.map(text),
            }),
            What::Session {
                intervention,
                attended,
            } => CaseEvent::InterventionSessionDelivered(InterventionSessionDelivered {
                intervention: text(intervention),
                attended,
                notes: None,
            }),
            What::Ended {
                intervention,
                outcome,
            } => CaseEvent::InterventionEnded(InterventionEnded {
                intervention: text(intervention),
                outcome,
            }),
        }
    }

    fn names(&self) -> impl Iterator<Item = Name> + '_ {
        let (a, b, c) = match *self {
            What::Started {
                intervention,
                kind,
                staff,
                ..
            } => (intervention, Some(kind), staff),
            What::Session { intervention, .. } | What::Ended { intervention, .. } => {
                (intervention, None, None)
            }
        };
        std::iter::once(a).chain(b).chain(c)
    }
}

impl Step {
    /// What the report reads of this step.
    fn read<'a>(&self, names: &'a Names) -> Read<'a> {
        match self.what {
            What::Started {
                intervention,
                kind,
                staff,
                sessions_planned,
            } => Read::Started {
                intervention: names.get(intervention),
                kind: names.get(kind),
                staff: staff.map(|s| names.get(s)),
                sessions_planned,
                started_at: self.occurred_at,
            },
            What::Session {
                intervention,
                attended,
            } => Read::Session {
                intervention: names.get(intervention),
                attended,
            },
            What::Ended {
                intervention,
                outcome,
            } => Read::Ended {
                intervention: names.get(intervention),
                outcome,
            },
        }
    }
}

/// What the report reads of one event: a start's intervention id, kind,
/// staff, sessions planned and time; a session's intervention id and
/// whether it was attended; an end's intervention id and outcome.
#[derive(Clone, Debug, PartialEq)]
enum Read<'a> {
    Started {
        intervention: &'a str,
        kind: &'a str,
        staff: Option<&'a str>,
        sessions_planned: Option<u32>,
        started_at: DateTime<Utc>,
    },
    Session {
        intervention: &'a str,
        attended: bool,
    },
    Ended {
        intervention: &'a str,
        outcome: InterventionOutcome,
    },
}

impl Projection for Interventions {
    const NAME: &'static str = "interventions";
    /// 3: each event kept as what the report reads of it (`Step`), its
    /// strings in the view's names.
    const VERSION: u32 = 3;

    fn apply(&mut self, e: &RecordedEvent, _corrected_at: Option<u64>) {
        self.kept.apply(e);
    }
}

/// `report interventions --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterventionReport {
    /// One row per kind, in kind order.
    pub kinds: Vec<KindOutcomes>,
    /// Interventions still running, oldest first.
    pub open: Vec<RunningIntervention>,
    /// Sessions recorded for an intervention id never started.
    pub unmatched_sessions: u64,
}

/// Outcomes of one kind of intervention.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindOutcomes {
    pub kind: String,
    pub started: u64,
    pub open: u64,
    pub ended: Outcomes,
    pub sessions_delivered: u64,
    pub sessions_attended: u64,
    /// `sessions_attended / sessions_delivered` in %.
    pub attendance_pct: Option<f64>,
}

/// How many interventions ended with each outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub achieved: u64,
    pub partly_achieved: u64,
    pub not_achieved: u64,
    pub withdrawn: u64,
}

impl Outcomes {
    fn count(&mut self, outcome: InterventionOutcome) {
        match outcome {
            InterventionOutcome::Achieved => self.achieved += 1,
            InterventionOutcome::PartlyAchieved => self.partly_achieved += 1,
            InterventionOutcome::NotAchieved => self.not_achieved += 1,
            InterventionOutcome::Withdrawn => self.withdrawn += 1,
        }
    }
}

/// An intervention still running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningIntervention {
    pub pupil: String,
    pub intervention: String,
    pub kind: String,
    pub staff: Option<String>,
    pub started_at: DateTime<Utc>,
    pub sessions_planned: Option<u32>,
    pub sessions_delivered: u64,
    pub sessions_attended: u64,
}

/// One intervention of one pupil, folded from its events.
struct Run<'a> {
    intervention: &'a str,
    kind: &'a str,
    staff: Option<&'a str>,
    started_at: DateTime<Utc>,
    sessions_planned: Option<u32>,
    delivered: u64,
    attended: u64,
    outcome: Option<InterventionOutcome>,
}

/// The latest intervention of `id` in a pupil's runs.
fn latest(runs: &[Run], id: &str) -> Option<usize> {
    runs.iter().rposition(|r| r.intervention == id)
}

impl Interventions {
    /// Outcomes by kind and the interventions still running.
    pub fn report(&self) -> InterventionReport {
        report_of(self.kept.reads(|s, names| s.read(names)))
    }
}

/// The report of each pupil's reference and what it reads of their
/// events, in stream order.
fn report_of<'a, R: Iterator<Item = Read<'a>>>(
    pupils: impl Iterator<Item = (String, R)>,
) -> InterventionReport {
    let mut kinds: BTreeMap<&str, KindOutcomes> = BTreeMap::new();
    let mut open = Vec::new();
    let mut unmatched_sessions = 0;
    for (pupil, reads) in pupils {
        let mut runs: Vec<Run> = Vec::new();
        for read in reads {
            match read {
                Read::Started {
                    intervention,
                    kind,
                    staff,
                    sessions_planned,
                    started_at,
                } => runs.push(Run {
                    intervention,
                    kind,
                    staff,
                    started_at,
                    sessions_planned,
                    delivered: 0,
                    attended: 0,
                    outcome: None,
                }),
                Read::Session {
                    intervention,
                    attended,
                } => match latest(&runs, intervention).and_then(|i| runs.get_mut(i)) {
                    Some(run) => {
                        run.delivered += 1;
                        run.attended += u64::from(attended);
                    }
                    None => unmatched_sessions += 1,
                },
                Read::Ended {
                    intervention,
                    outcome,
                } => {
                    if let Some(run) = latest(&runs, intervention)
                        .and_then(|i| runs.get_mut(i))
                        .filter(|r| r.outcome.is_none())
                    {
                        run.outcome = Some(outcome);
                    }
                }
            }
        }
        for run in runs {
            let k = kinds.entry(run.kind).or_insert_with(|| KindOutcomes {
                kind: run.kind.to_string(),
                ..KindOutcomes::default()
            });
            k.started += 1;
            k.sessions_delivered += run.delivered;
            k.sessions_attended += run.attended;
            match run.outcome {
                Some(outcome) => k.ended.count(outcome),
                None => {
                    k.open += 1;
                    open.push(RunningIntervention {
                        pupil: pupil.clone(),
                        intervention: run.intervention.to_string(),
                        kind: run.kind.to_string(),
                        staff: run.staff.map(str::to_string),
                        started_at: run.started_at,
                        sessions_planned: run.sessions_planned,
                        sessions_delivered: run.delivered,
                        sessions_attended: run.attended,
                    });
                }
            }
        }
    }
    let kinds = kinds
        .into_values()
        .map(|mut k| {
            k.attendance_pct = percent(k.sessions_attended, k.sessions_delivered);
            k
        })
        .collect();
    open.sort_by(|a, b| {
        (a.started_at, &a.pupil, &a.intervention).cmp(&(b.started_at, &b.pupil, &b.intervention))
    });
    InterventionReport {
        kinds,
        open,
        unmatched_sessions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{
        damaged, folded, generated_log, pick, read_back, same_as_whole, steps_checkpoint, test_id,
        whole_events, Line,
    };
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use uuid::Uuid;

    const PUPILS: [&str; 2] = ["P1", "P2"];

    fn event() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            3 => (
                test_id("iv"),
                pick(vec![json!("mentoring"), json!("literacy"), json!("social_skills")]),
                proptest::option::of(test_id("S")),
                proptest::option::of(0u32..12),
            )
                .prop_map(|(i, k, staff, planned)| {
                    let mut data = json!({"intervention": i, "kind": k, "goal": "Settle in class"});
                    if let Some(staff) = staff {
                        data["staff"] = staff;
                    }
                    if let Some(planned) = planned {
                        data["sessions_planned"] = json!(planned);
                    }
                    ("InterventionStarted", data)
                }),
            4 => (test_id("iv"), any::<bool>(), proptest::option::of(Just(json!("Synthetic note"))))
                .prop_map(|(i, attended, notes)| {
                    let mut data = json!({"intervention": i, "attended": attended});
                    if let Some(notes) = notes {
                        data["notes"] = notes;
                    }
                    ("InterventionSessionDelivered", data)
                }),
            2 => (
                test_id("iv"),
                pick(vec![json!("achieved"), json!("partly_achieved"), json!("not_achieved"),
                    json!("withdrawn")]),
            )
                .prop_map(|(i, o)| ("InterventionEnded", json!({"intervention": i, "outcome": o}))),
            1 => Just(("ParentContacted", json!({"method": "phone", "summary": "told"}))),
            1 => Just(("CaseOpened", json!({"case_type": "pastoral", "summary": "Synthetic"}))),
            1 => Just((
                "PupilRegistered",
                json!({"name": "Synthetic Pupil", "date_of_birth": "2012-05-01",
                    "year_group": 9, "class": "9A"})
            )),
        ]
    }

    /// A change that applies or does not, to a field of the three types
    /// (and of others, and of the registration).
    fn change() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            prop_oneof![test_id("iv"), Just(json!(7))].prop_map(|v| ("intervention", v)),
            pick(vec![json!("literacy"), json!("nurture"), Value::Null]).prop_map(|v| ("kind", v)),
            pick(vec![json!("other"), json!(false)]).prop_map(|v| ("goal", v)),
            pick(vec![
                json!(3),
                json!(0),
                json!(-1),
                Value::Null,
                json!("six")
            ])
            .prop_map(|v| ("sessions_planned", v)),
            prop_oneof![test_id("S"), Just(Value::Null), Just(json!(7))].prop_map(|v| ("staff", v)),
            pick(vec![json!(true), json!(false), json!("yes"), Value::Null])
                .prop_map(|v| ("attended", v)),
            pick(vec![json!("Arrived late"), Value::Null, json!(3)]).prop_map(|v| ("notes", v)),
            pick(vec![
                json!("withdrawn"),
                json!("achieved"),
                json!("unknown"),
                json!(3)
            ])
            .prop_map(|v| ("outcome", v)),
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
            CaseEvent::InterventionStarted(_)
                | CaseEvent::InterventionSessionDelivered(_)
                | CaseEvent::InterventionEnded(_)
        )
    }

    /// What the report took of a whole event before `VERSION` 3.
    fn whole_way(event: &CaseEvent, occurred_at: DateTime<Utc>) -> Option<Read<'_>> {
        match event {
            CaseEvent::InterventionStarted(i) => Some(Read::Started {
                intervention: &i.intervention,
                kind: &i.kind,
                staff: i.staff.as_deref(),
                sessions_planned: i.sessions_planned,
                started_at: occurred_at,
            }),
            CaseEvent::InterventionSessionDelivered(s) => Some(Read::Session {
                intervention: &s.intervention,
                attended: s.attended,
            }),
            CaseEvent::InterventionEnded(e) => Some(Read::Ended {
                intervention: &e.intervention,
                outcome: e.outcome,
            }),
            _ => None,
        }
    }

    /// The fields of `e` the view keeps, by name, as JSON.
    fn kept_fields(e: &CaseEvent) -> Value {
        let mut data = e.data_json();
        if let Value::Object(fields) = &mut data {
            fields.retain(|k, _| !matches!(k.as_str(), "goal" | "notes"));
        }
        json!({"type": e.type_name(), "data": data})
    }

    proptest! {
        /// Events kept as what the report reads of them, corrected with
        /// their other fields blank, hold what the same events kept whole
        /// (`facts::Tracker`, the view's form before `VERSION` 3),
        /// corrected whole, hold of them, whatever the corrections change
        /// and whether or not they apply, and make the same report; the
        /// view reads back from its checkpoint as it was, with the same
        /// report.
        #[test]
        fn steps_follow_corrections_as_whole_events_do(
            lines in prop::collection::vec(line(), 0..40),
        ) {
            let (slim, whole) = folded::<Interventions>(&generated_log(&PUPILS, &lines), whole_reads);
            same_as_whole(&slim.kept, &whole, kept_fields)?;
            let events = whole_events(&whole);
            for stream in whole.pupils.keys() {
                let pupil = &slim.kept.pupils[stream];
                // What the report takes of each: as it took it of the
                // whole event.
                let read: Vec<Option<Read>> =
                    pupil.steps.iter().map(|s| Some(s.read(&slim.kept.names))).collect();
                let whole_read: Vec<Option<Read>> =
                    events[stream].iter().map(|(e, k)| whole_way(e, k.occurred_at)).collect();
                prop_assert_eq!(read, whole_read);
            }
            // The report: as the whole events' reads make it.
            let reference = report_of(whole.pupils.iter().map(|(stream, facts)| {
                (
                    facts.card.pupil(*stream),
                    events[stream].iter().filter_map(|(e, k)| whole_way(e, k.occurred_at)),
                )
            }));
            prop_assert_eq!(slim.report(), reference);
            let back = read_back(&slim);
            prop_assert_eq!(&back, &slim);
            prop_assert_eq!(back.report(), slim.report());
        }

        /// Whatever bytes stand for a checkpoint, reading it does not
        /// panic, and a view read from them reports without panicking.
        #[test]
        fn any_checkpoint_bytes_are_read_or_refused_without_panic(
            lines in prop::collection::vec(line(), 0..12),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let view: Interventions = folded(&generated_log(&PUPILS, &lines), |_| false).0;
            if let Some(read) = damaged(&view, at, byte) {
                let _ = read.report();
            }
        }
    }

    /// A checkpoint that lists a string twice, or whose steps name a
    /// place past the list (a start's staff among them), is refused; the
    /// same checkpoint without the fault is read.
    #[test]
    fn checkpoints_naming_strings_they_do_not_list_are_refused() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum WhatForm {
            Started {
                intervention: u32,
                kind: u32,
                staff: Option<u32>,
                sessions_planned: Option<u32>,
            },
            Session {
                intervention: u32,
                attended: bool,
            },
        }
        let at = 1_760_000_000_000_000i64;
        let checkpoint = |names: Vec<&str>, staff: u32| {
            let steps = vec![
                (
                    Uuid::from_u128(1),
                    at,
                    WhatForm::Started {
                        intervention: 1,
                        kind: 2,
                        staff: Some(staff),
                        sessions_planned: Some(6),
                    },
                ),
                (
                    Uuid::from_u128(2),
                    at,
                    WhatForm::Session {
                        intervention: 1,
                        attended: true,
                    },
                ),
            ];
            steps_checkpoint(names, steps)
        };
        let read = |bytes: Vec<u8>| rmp_serde::from_slice::<Interventions>(&bytes);
        let good = read(checkpoint(vec!["iv0", "mentoring", "S1"], 3)).unwrap();
        let report = good.report();
        assert_eq!(report.open[0].staff.as_deref(), Some("S1"));
        assert_eq!(report.kinds[0].sessions_attended, 1);
        let past = read(checkpoint(vec!["iv0", "mentoring", "S1"], 4)).unwrap_err();
        assert!(past.to_string().contains("past the list"), "{past}");
        let twice = read(checkpoint(vec!["iv0", "mentoring", "iv0"], 3)).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let none = read(checkpoint(vec!["iv0", "mentoring", "S1"], 0)).unwrap_err();
        assert!(none.to_string().contains("zero"), "{none}");
    }
}
