//! Intervention outcomes: per kind of intervention (mentoring, social
//! skills, ...), how many started, how many ended with which outcome, how
//! many sessions were delivered and attended; and the interventions still
//! running.
//!
//! Sessions and ends attach to the latest intervention of that id in the
//! pupil's stream. A session for an id never started is counted in
//! `unmatched_sessions` rather than guessed into a kind; an end for an id
//! never started (or already ended) is ignored.

use std::collections::BTreeMap;

use casebook_engine::event::{CaseEvent, InterventionOutcome};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::facts::{percent, Tracker};
use crate::Projection;

/// The interventions projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interventions {
    facts: Tracker,
}

fn reads(e: &CaseEvent) -> bool {
    matches!(
        e,
        CaseEvent::InterventionStarted(_)
            | CaseEvent::InterventionSessionDelivered(_)
            | CaseEvent::InterventionEnded(_)
    )
}

impl Projection for Interventions {
    const NAME: &'static str = "interventions";
    /// 2: the events are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        self.facts.apply(event, reads);
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
struct Run {
    intervention: String,
    kind: String,
    staff: Option<String>,
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
        let mut kinds: BTreeMap<String, KindOutcomes> = BTreeMap::new();
        let mut open = Vec::new();
        let mut unmatched_sessions = 0;
        for (stream, facts) in &self.facts.pupils {
            let mut runs: Vec<Run> = Vec::new();
            for t in &facts.events {
                // Always decodes (`Kept::event`).
                let Some(event) = t.event() else {
                    continue;
                };
                match &event {
                    CaseEvent::InterventionStarted(i) => runs.push(Run {
                        intervention: i.intervention.clone(),
                        kind: i.kind.clone(),
                        staff: i.staff.clone(),
                        started_at: t.occurred_at,
                        sessions_planned: i.sessions_planned,
                        delivered: 0,
                        attended: 0,
                        outcome: None,
                    }),
                    CaseEvent::InterventionSessionDelivered(s) => {
                        match latest(&runs, &s.intervention).and_then(|i| runs.get_mut(i)) {
                            Some(run) => {
                                run.delivered += 1;
                                run.attended += u64::from(s.attended);
                            }
                            None => unmatched_sessions += 1,
                        }
                    }
                    CaseEvent::InterventionEnded(e) => {
                        if let Some(run) = latest(&runs, &e.intervention)
                            .and_then(|i| runs.get_mut(i))
                            .filter(|r| r.outcome.is_none())
                        {
                            run.outcome = Some(e.outcome);
                        }
                    }
                    _ => {}
                }
            }
            for run in runs {
                let k = kinds
                    .entry(run.kind.clone())
                    .or_insert_with(|| KindOutcomes {
                        kind: run.kind.clone(),
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
                            pupil: facts.card.pupil(*stream),
                            intervention: run.intervention,
                            kind: run.kind,
                            staff: run.staff,
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
            (a.started_at, &a.pupil, &a.intervention).cmp(&(
                b.started_at,
                &b.pupil,
                &b.intervention,
            ))
        });
        InterventionReport {
            kinds,
            open,
            unmatched_sessions,
        }
    }
}
