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
//!
//! The view keeps of each case event only what the caseload reads
//! ([`Step`]: its id, time, type and the case type, staff, plan or
//! intervention it names), its strings once in the view's names, as the
//! behaviour view keeps its incidents: a correction is applied to the event
//! with the fields not kept blank (property test
//! `tests::steps_fold_to_the_case_whole_events_fold_to`).

use std::collections::{BTreeMap, BTreeSet};

use casebook_engine::event::{
    CaseClosed, CaseEvent, CaseOpened, CaseType, InterventionEnded, InterventionOutcome,
    InterventionStarted, KeyworkerAssigned, PlanAgreed, PlanKind, PlanReviewed,
};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::facts::{self, Name, Names, Reading, Steps, StepsOf};
use crate::pupil_map::PupilMap;
use crate::Projection;

/// The caseload projection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caseload {
    kept: Steps<What>,
    last_activity: PupilMap<DateTime<Utc>>,
}

/// One pupil's registration and case events, in stream order, as
/// corrected.
type Pupil = StepsOf<What>;

/// What the caseload reads of one case event: 40 bytes, where the event
/// kept whole (`facts::Kept`) took ~230 (a case's summary, a review's
/// outcome, an intervention's goal).
type Step = facts::Step<What>;

const _: () = assert!(std::mem::size_of::<Step>() == 40);

/// A case event's type and the fields of it the caseload reads, each
/// string as its place in the view's names.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum What {
    Opened {
        case_type: CaseType,
    },
    Closed,
    Keyworker {
        staff: Name,
    },
    PlanAgreed {
        plan: Name,
        kind: PlanKind,
        review_due: NaiveDate,
    },
    PlanReviewed {
        plan: Name,
        next_review_due: Option<NaiveDate>,
    },
    InterventionStarted {
        intervention: Name,
        kind: Name,
    },
    InterventionEnded {
        intervention: Name,
    },
}

impl Reading for What {
    fn of(e: &CaseEvent, names: &mut Names) -> Option<What> {
        Some(match e {
            CaseEvent::CaseOpened(c) => What::Opened {
                case_type: c.case_type,
            },
            CaseEvent::CaseClosed(_) => What::Closed,
            CaseEvent::KeyworkerAssigned(k) => What::Keyworker {
                staff: names.name(&k.staff),
            },
            CaseEvent::PlanAgreed(p) => What::PlanAgreed {
                plan: names.name(&p.plan),
                kind: p.kind,
                review_due: p.review_due,
            },
            CaseEvent::PlanReviewed(r) => What::PlanReviewed {
                plan: names.name(&r.plan),
                next_review_due: r.next_review_due,
            },
            CaseEvent::InterventionStarted(i) => What::InterventionStarted {
                intervention: names.name(&i.intervention),
                kind: names.name(&i.kind),
            },
            CaseEvent::InterventionEnded(i) => What::InterventionEnded {
                intervention: names.name(&i.intervention),
            },
            _ => return None,
        })
    }

    /// The event of this type with the fields kept, the others blank (an
    /// ended intervention's outcome: the first of its values).
    fn event(&self, names: &Names) -> CaseEvent {
        let text = |name: Name| names.get(name).to_string();
        match *self {
            What::Opened { case_type } => CaseEvent::CaseOpened(CaseOpened {
                case_type,
                summary: String::new(),
            }),
            What::Closed => CaseEvent::CaseClosed(CaseClosed {
                outcome: String::new(),
            }),
            What::Keyworker { staff } => {
                CaseEvent::KeyworkerAssigned(KeyworkerAssigned { staff: text(staff) })
            }
            What::PlanAgreed {
                plan,
                kind,
                review_due,
            } => CaseEvent::PlanAgreed(PlanAgreed {
                plan: text(plan),
                kind,
                review_due,
            }),
            What::PlanReviewed {
                plan,
                next_review_due,
            } => CaseEvent::PlanReviewed(PlanReviewed {
                plan: text(plan),
                outcome: String::new(),
                next_review_due,
            }),
            What::InterventionStarted { intervention, kind } => {
                CaseEvent::InterventionStarted(InterventionStarted {
                    intervention: text(intervention),
                    kind: text(kind),
                    goal: String::new(),
                    sessions_planned: None,
                    staff: None,
                })
            }
            What::InterventionEnded { intervention } => {
                CaseEvent::InterventionEnded(InterventionEnded {
                    intervention: text(intervention),
                    outcome: InterventionOutcome::Achieved,
                })
            }
        }
    }

    fn names(&self) -> impl Iterator<Item = Name> + '_ {
        let (a, b) = match *self {
            What::Opened { .. } | What::Closed => (None, None),
            What::Keyworker { staff } => (Some(staff), None),
            What::PlanAgreed { plan, .. } | What::PlanReviewed { plan, .. } => (Some(plan), None),
            What::InterventionStarted { intervention, kind } => (Some(intervention), Some(kind)),
            What::InterventionEnded { intervention } => (Some(intervention), None),
        };
        a.into_iter().chain(b)
    }
}

/// The checkpoint: a map of `names` (the strings, in order), `pupils` (by
/// stream: the card and the steps) and `last_activity` (by stream).
impl Serialize for Caseload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form<'a> {
            names: &'a [Box<str>],
            pupils: &'a PupilMap<Pupil>,
            last_activity: &'a PupilMap<DateTime<Utc>>,
        }
        Form {
            names: self.kept.names.list(),
            pupils: &self.kept.pupils,
            last_activity: &self.last_activity,
        }
        .serialize(serializer)
    }
}

/// Refuses a checkpoint listing a string twice or naming a place past its
/// list (the view is then rebuilt).
impl<'de> Deserialize<'de> for Caseload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Caseload, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Form {
            names: Vec<Box<str>>,
            pupils: PupilMap<Pupil>,
            last_activity: PupilMap<DateTime<Utc>>,
        }
        let form = Form::deserialize(deserializer)?;
        Ok(Caseload {
            kept: Steps::from_parts(form.names, form.pupils).map_err(D::Error::custom)?,
            last_activity: form.last_activity,
        })
    }
}

impl Projection for Caseload {
    const NAME: &'static str = "caseload";
    /// 3: each case event kept as what the caseload reads of it (`Step`),
    /// its strings in the view's names.
    const VERSION: u32 = 3;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        match event.event {
            CaseEvent::RecordViewed(_) => return,
            CaseEvent::AttendanceMarked(_) => {}
            _ => {
                let latest = self
                    .last_activity
                    .or_insert_with(event.stream, || event.occurred_at);
                *latest = (*latest).max(event.occurred_at);
            }
        }
        self.kept.apply(event);
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
#[derive(Debug, Default, PartialEq)]
struct CaseFold {
    open: BTreeSet<CaseType>,
    opened_at: Option<DateTime<Utc>>,
    keyworker: Option<String>,
    plans: BTreeMap<String, (PlanKind, NaiveDate)>,
    interventions: BTreeMap<String, (String, DateTime<Utc>)>,
}

impl CaseFold {
    fn of(pupil: &Pupil, names: &Names) -> CaseFold {
        let mut f = CaseFold::default();
        let text = |name: Name| names.get(name).to_string();
        for step in &pupil.steps {
            match step.what {
                What::Opened { case_type } => {
                    if f.open.is_empty() {
                        f.opened_at = Some(step.occurred_at);
                    }
                    f.open.insert(case_type);
                }
                What::Closed => {
                    f.open.clear();
                    f.opened_at = None;
                }
                What::Keyworker { staff } => f.keyworker = Some(text(staff)),
                What::PlanAgreed {
                    plan,
                    kind,
                    review_due,
                } => {
                    f.plans.insert(text(plan), (kind, review_due));
                }
                What::PlanReviewed {
                    plan,
                    next_review_due,
                } => {
                    let plan = text(plan);
                    match (f.plans.get_mut(&plan), next_review_due) {
                        (Some(p), Some(next)) => p.1 = next,
                        (Some(_), None) => {
                            f.plans.remove(&plan);
                        }
                        (None, _) => {}
                    }
                }
                What::InterventionStarted { intervention, kind } => {
                    f.interventions
                        .insert(text(intervention), (text(kind), step.occurred_at));
                }
                What::InterventionEnded { intervention } => {
                    f.interventions.remove(names.get(intervention));
                }
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
            .kept
            .pupils
            .iter()
            .filter_map(|(stream, p)| {
                let f = CaseFold::of(p, &self.kept.names);
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
                    pupil: p.card.pupil(*stream),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{
        damaged, folded, generated_log, pick, read_back, same_as_whole, test_id, valid_date, Line,
    };
    use crate::facts::PupilCard;
    use casebook_engine::StreamId;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use uuid::Uuid;

    const PUPILS: [&str; 2] = ["P1", "P2"];
    const EIGHT: [&str; 8] = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"];

    fn event() -> impl Strategy<Value = (&'static str, Value)> {
        let case_type = pick(vec![json!("pastoral"), json!("behaviour"), json!("send")]);
        let plan_kind = pick(vec![json!("early_help"), json!("ehcp")]);
        prop_oneof![
            case_type.prop_map(|t| (
                "CaseOpened",
                json!({"case_type": t, "summary": "Synthetic"})
            )),
            Just(("CaseClosed", json!({"outcome": "resolved"}))),
            test_id("S").prop_map(|s| ("KeyworkerAssigned", json!({"staff": s}))),
            (test_id("plan"), plan_kind, valid_date(200)).prop_map(|(p, k, d)| (
                "PlanAgreed",
                json!({"plan": p, "kind": k, "review_due": d})
            )),
            (
                test_id("plan"),
                prop_oneof![valid_date(200), Just(Value::Null)]
            )
                .prop_map(|(p, d)| (
                    "PlanReviewed",
                    json!({"plan": p, "outcome": "progress", "next_review_due": d})
                )),
            (
                test_id("iv"),
                pick(vec![json!("mentoring"), json!("literacy")]),
                proptest::option::of(test_id("S"))
            )
                .prop_map(|(i, k, staff)| {
                    let mut data = json!({"intervention": i, "kind": k, "goal": "settle",
                        "sessions_planned": 6});
                    if let Some(staff) = staff {
                        data["staff"] = staff;
                    }
                    ("InterventionStarted", data)
                }),
            (
                test_id("iv"),
                pick(vec![json!("withdrawn"), json!("partly_achieved")])
            )
                .prop_map(|(i, o)| (
                    "InterventionEnded",
                    json!({"intervention": i, "outcome": o})
                )),
            Just((
                "ParentContacted",
                json!({"method": "phone", "summary": "told"})
            )),
            Just((
                "PupilRegistered",
                json!({"name": "Synthetic Pupil", "date_of_birth": "2012-05-01", "year_group": 9})
            )),
        ]
    }

    /// A change that applies or does not, to a field of the types.
    fn change() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            pick(vec![json!("safeguarding"), json!("nurture")]).prop_map(|v| ("case_type", v)),
            pick(vec![json!("other"), json!(["a"])]).prop_map(|v| ("summary", v)),
            pick(vec![
                json!("moved"),
                json!("achieved"),
                json!("unknown"),
                json!(3)
            ])
            .prop_map(|v| ("outcome", v)),
            prop_oneof![test_id("S"), Just(json!(7))].prop_map(|v| ("staff", v)),
            prop_oneof![test_id("plan"), Just(Value::Null)].prop_map(|v| ("plan", v)),
            pick(vec![json!("ehcp"), json!("mentoring"), json!("nope")]).prop_map(|v| ("kind", v)),
            prop_oneof![valid_date(200), Just(json!("2025-13-01"))].prop_map(|v| ("review_due", v)),
            prop_oneof![valid_date(200), Just(Value::Null), Just(json!("soon"))]
                .prop_map(|v| ("next_review_due", v)),
            test_id("iv").prop_map(|v| ("intervention", v)),
            pick(vec![json!("other"), json!(false)]).prop_map(|v| ("goal", v)),
            pick(vec![json!(3), json!(-1)]).prop_map(|v| ("sessions_planned", v)),
            prop_oneof![test_id("S"), Just(Value::Null)].prop_map(|v| ("staff", v)),
            Just(("class", json!("9B"))),
        ]
    }

    fn line() -> impl Strategy<Value = Line> {
        crate::facts::testing::line(PUPILS.len(), event(), change())
    }

    /// The types the caseload read before `VERSION` 3.
    fn whole_reads(e: &CaseEvent) -> bool {
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

    /// The case as the caseload folded it from whole events before
    /// `VERSION` 3.
    fn whole_fold(events: &[crate::facts::Kept]) -> CaseFold {
        let mut f = CaseFold::default();
        for t in events {
            match t.event().unwrap() {
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
                CaseEvent::KeyworkerAssigned(k) => f.keyworker = Some(k.staff),
                CaseEvent::PlanAgreed(p) => {
                    f.plans.insert(p.plan, (p.kind, p.review_due));
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
                        .insert(i.intervention, (i.kind, t.occurred_at));
                }
                CaseEvent::InterventionEnded(e) => {
                    f.interventions.remove(&e.intervention);
                }
                _ => {}
            }
        }
        f
    }

    /// The fields of `e` the caseload keeps, by name, as JSON.
    fn kept_fields(e: &CaseEvent) -> Value {
        let mut data = e.data_json();
        if let Value::Object(fields) = &mut data {
            fields.retain(|k, _| match k.as_str() {
                "summary" | "outcome" | "goal" | "sessions_planned" => false,
                "staff" => matches!(e, CaseEvent::KeyworkerAssigned(_)),
                _ => true,
            });
        }
        json!({"type": e.type_name(), "data": data})
    }

    proptest! {
        /// Case events kept as what the caseload reads of them, corrected
        /// with their other fields blank, fold to the case the same events
        /// kept whole (`facts::Tracker`, the view's form before `VERSION`
        /// 3), corrected whole, folded to, whatever the corrections change
        /// and whether or not they apply; the view reads back from its
        /// checkpoint as it was, with the same caseload.
        #[test]
        fn steps_fold_to_the_case_whole_events_fold_to(
            lines in prop::collection::vec(line(), 0..40),
        ) {
            let (slim, whole) = folded::<Caseload>(&generated_log(&PUPILS, &lines), whole_reads);
            same_as_whole(&slim.kept, &whole, kept_fields)?;
            for (stream, facts) in &whole.pupils {
                let pupil = &slim.kept.pupils[stream];
                prop_assert_eq!(CaseFold::of(pupil, &slim.kept.names), whole_fold(&facts.events));
            }
            let back = read_back(&slim);
            prop_assert_eq!(&back, &slim);
            let today = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
            for keyworker in [None, Some("S1")] {
                prop_assert_eq!(back.cases(today, keyworker), slim.cases(today, keyworker));
            }
        }

        /// The checkpoint's bytes are those of its form with each map a
        /// `BTreeMap` (what the view kept until session bj), whatever
        /// order the pupils were folded in.
        #[test]
        fn the_checkpoint_is_the_bytes_of_its_form_in_btree_maps(
            lines in prop::collection::vec(
                crate::facts::testing::line(EIGHT.len(), event(), change()),
                0..24,
            ),
        ) {
            use std::collections::BTreeMap;
            #[derive(Serialize)]
            struct Form<'a> {
                names: &'a [Box<str>],
                pupils: BTreeMap<StreamId, &'a Pupil>,
                last_activity: BTreeMap<StreamId, &'a DateTime<Utc>>,
            }
            let view: Caseload = folded(&generated_log(&EIGHT, &lines), |_| false).0;
            let form = Form {
                names: view.kept.names.list(),
                pupils: view.kept.pupils.iter().map(|(k, v)| (*k, v)).collect(),
                last_activity: view.last_activity.iter().map(|(k, v)| (*k, v)).collect(),
            };
            prop_assert_eq!(
                rmp_serde::to_vec_named(&view).unwrap(),
                rmp_serde::to_vec_named(&form).unwrap()
            );
        }

        /// Whatever bytes stand for a checkpoint, reading it does not
        /// panic, and a view read from them reports without panicking.
        #[test]
        fn any_checkpoint_bytes_are_read_or_refused_without_panic(
            lines in prop::collection::vec(line(), 0..12),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let view: Caseload = folded(&generated_log(&PUPILS, &lines), |_| false).0;
            if let Some(read) = damaged(&view, at, byte) {
                let _ = read.cases(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(), None);
            }
        }
    }

    /// A checkpoint that lists a string twice, or whose steps name a
    /// place past the list (an intervention's kind among them), is
    /// refused; the same checkpoint without the fault is read.
    #[test]
    fn checkpoints_naming_strings_they_do_not_list_are_refused() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum WhatForm {
            Opened { case_type: CaseType },
            InterventionStarted { intervention: u32, kind: u32 },
        }
        #[derive(Serialize)]
        struct PupilForm {
            card: PupilCard,
            steps: Vec<(Uuid, i64, WhatForm)>,
        }
        #[derive(Serialize)]
        struct ViewForm<'a> {
            names: Vec<&'a str>,
            pupils: BTreeMap<StreamId, PupilForm>,
            last_activity: BTreeMap<StreamId, DateTime<Utc>>,
        }
        let stream = StreamId::for_pupil("s", "P1");
        let at = 1_760_000_000_000_000i64;
        let checkpoint = |names: Vec<&str>, kind: u32| {
            let steps = vec![
                (
                    Uuid::from_u128(1),
                    at,
                    WhatForm::Opened {
                        case_type: CaseType::Pastoral,
                    },
                ),
                (
                    Uuid::from_u128(2),
                    at,
                    WhatForm::InterventionStarted {
                        intervention: 1,
                        kind,
                    },
                ),
            ];
            let card = PupilCard::default();
            let pupils = BTreeMap::from([(stream, PupilForm { card, steps })]);
            let last_activity = BTreeMap::new();
            rmp_serde::to_vec_named(&ViewForm {
                names,
                pupils,
                last_activity,
            })
            .unwrap()
        };
        let read = |bytes: Vec<u8>| rmp_serde::from_slice::<Caseload>(&bytes);
        let today = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let good = read(checkpoint(vec!["iv0", "mentoring"], 2)).unwrap();
        let case = &good.cases(today, None).cases[0];
        assert_eq!(case.open_interventions[0].kind, "mentoring");
        let past = read(checkpoint(vec!["iv0", "mentoring"], 3)).unwrap_err();
        assert!(past.to_string().contains("past the list"), "{past}");
        let twice = read(checkpoint(vec!["iv0", "iv0"], 2)).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }
}
