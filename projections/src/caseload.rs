//! The caseload: pupils with an open case, their keyworker, open plans and
//! when the next review is due.
//!
//! A pupil has an open case from a `CaseOpened` until a `CaseClosed`; a
//! `CaseClosed` closes every open case type of the pupil (it carries no
//! type). Several case types may be open at once. The keyworker is the
//! latest `KeyworkerAssigned`. A plan is open from `PlanAgreed` until a
//! `PlanReviewed` with no next review date; an intervention from
//! `InterventionStarted` until `InterventionEnded`. A review or end of a plan
//! or intervention that was never started is ignored.
//!
//! `last_activity` is the latest `occurred_at` of the pupil's case events,
//! leaving out register marks: a daily mark is not casework, and counting it
//! would make every pupil look active every day.
//!
//! `overdue` is judged against the `today` the query is given, never the
//! clock, so a report can be reproduced.

use std::collections::{BTreeMap, BTreeSet};

use casebook_engine::event::{CaseEvent, CaseType, PlanKind};
use casebook_engine::{RecordedEvent, StreamId};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::facts::{PupilFacts, Tracker};
use crate::Projection;

/// The caseload projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Caseload {
    facts: Tracker,
    last_activity: BTreeMap<StreamId, DateTime<Utc>>,
}

fn reads(e: &CaseEvent) -> bool {
    matches!(
        e,
        CaseEvent::CaseOpened(_)
            | CaseEvent::CaseClosed(_)
            | CaseEvent::KeyworkerAssigned(_)
            | CaseEvent::PlanAgreed(_)
            | CaseEvent::PlanReviewed(_)
            | CaseEvent::InterventionStarted(_)
            | CaseEvent::InterventionEnded(_)
    )
}

impl Projection for Caseload {
    const NAME: &'static str = "caseload";
    /// 2: the case events are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        match event.event {
            CaseEvent::RecordViewed(_) => return,
            CaseEvent::AttendanceMarked(_) => {}
            _ => {
                let latest = self
                    .last_activity
                    .entry(event.stream)
                    .or_insert(event.occurred_at);
                *latest = (*latest).max(event.occurred_at);
            }
        }
        self.facts.apply(event, reads);
    }
}

/// `caseload --format json`: `{"cases": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseloadReport {
    pub cases: Vec<OpenCase>,
}

/// One pupil with an open case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenCase {
    pub pupil: String,
    pub keyworker: Option<String>,
    /// Open case types, in a fixed order (`pastoral`, `behaviour`,
    /// `safeguarding`, `attendance`, `send`).
    pub case_types: Vec<CaseType>,
    /// When the earliest case still open was opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// Open plans, soonest review first.
    pub open_plans: Vec<OpenPlan>,
    /// The earliest review due among the open plans.
    pub next_review_due: Option<NaiveDate>,
    /// The next review is due before `today`.
    pub overdue: bool,
    pub open_interventions: Vec<OpenIntervention>,
    pub last_activity: Option<DateTime<Utc>>,
}

/// A plan agreed and not ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenPlan {
    pub plan: String,
    pub kind: PlanKind,
    pub review_due: NaiveDate,
}

/// An intervention started and not ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenIntervention {
    pub intervention: String,
    pub kind: String,
    pub started_at: DateTime<Utc>,
}

/// A pupil's case as far as the caseload goes, folded from their facts.
#[derive(Default)]
struct CaseFold {
    open: BTreeSet<CaseType>,
    opened_at: Option<DateTime<Utc>>,
    keyworker: Option<String>,
    plans: BTreeMap<String, (PlanKind, NaiveDate)>,
    interventions: BTreeMap<String, (String, DateTime<Utc>)>,
}

impl CaseFold {
    fn of(facts: &PupilFacts) -> CaseFold {
        let mut f = CaseFold::default();
        for t in &facts.events {
            // Always decodes (`Kept::event`).
            let Some(event) = t.event() else {
                continue;
            };
            match &event {
                CaseEvent::CaseOpened(c) => {
                    if f.open.is_empty() {
                        f.opened_at = Some(t.occurred_at);
                    }
                    f.open.insert(c.case_type);
                }
                CaseEvent::CaseClosed(_) => {
                    f.open.clear();
                    f.opened_at = None;
                }
                CaseEvent::KeyworkerAssigned(k) => f.keyworker = Some(k.staff.clone()),
                CaseEvent::PlanAgreed(p) => {
                    f.plans.insert(p.plan.clone(), (p.kind, p.review_due));
                }
                CaseEvent::PlanReviewed(r) => match (f.plans.get_mut(&r.plan), r.next_review_due) {
                    (Some(plan), Some(next)) => plan.1 = next,
                    (Some(_), None) => {
                        f.plans.remove(&r.plan);
                    }
                    (None, _) => {}
                },
                CaseEvent::InterventionStarted(i) => {
                    f.interventions
                        .insert(i.intervention.clone(), (i.kind.clone(), t.occurred_at));
                }
                CaseEvent::InterventionEnded(e) => {
                    f.interventions.remove(&e.intervention);
                }
                _ => {}
            }
        }
        f
    }
}

impl Caseload {
    /// Open cases as of `today`, optionally only `keyworker`'s: overdue
    /// first, then by next review (cases with no open plan last), then by
    /// pupil.
    pub fn cases(&self, today: NaiveDate, keyworker: Option<&str>) -> CaseloadReport {
        let mut cases: Vec<OpenCase> = self
            .facts
            .pupils
            .iter()
            .filter_map(|(stream, facts)| {
                let f = CaseFold::of(facts);
                if f.open.is_empty() {
                    return None;
                }
                if keyworker.is_some() && f.keyworker.as_deref() != keyworker {
                    return None;
                }
                let mut open_plans: Vec<OpenPlan> = f
                    .plans
                    .into_iter()
                    .map(|(plan, (kind, review_due))| OpenPlan {
                        plan,
                        kind,
                        review_due,
                    })
                    .collect();
                open_plans.sort_by(|a, b| (a.review_due, &a.plan).cmp(&(b.review_due, &b.plan)));
                let next_review_due = open_plans.first().map(|p| p.review_due);
                Some(OpenCase {
                    pupil: facts.card.pupil(*stream),
                    keyworker: f.keyworker,
                    case_types: f.open.into_iter().collect(),
                    opened_at: f.opened_at,
                    overdue: next_review_due.is_some_and(|d| d < today),
                    next_review_due,
                    open_plans,
                    open_interventions: f
                        .interventions
                        .into_iter()
                        .map(|(intervention, (kind, started_at))| OpenIntervention {
                            intervention,
                            kind,
                            started_at,
                        })
                        .collect(),
                    last_activity: self.last_activity.get(stream).copied(),
                })
            })
            .collect();
        cases.sort_by(|a, b| {
            let key = |c: &OpenCase| (!c.overdue, c.next_review_due.is_none(), c.next_review_due);
            key(a).cmp(&key(b)).then_with(|| a.pupil.cmp(&b.pupil))
        });
        CaseloadReport { cases }
    }
}
