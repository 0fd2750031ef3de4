//! The reintegration tracker: removals from lessons or school (suspension,
//! permanent exclusion, isolation, internal exclusion, alternative
//! provision) and whether a reintegration meeting followed, and was
//! completed; and the pupils still awaiting a meeting.
//!
//! A pupil's removals group into **episodes** in stream order: removals
//! recorded before any meeting belong to one episode (a meeting after two
//! back-to-back suspensions covers both); a removal after the episode's
//! meeting starts a new one. A meeting attaches to the open episode; a
//! `ReintegrationCompleted` to the episode whose meeting it follows. An
//! episode with a permanent exclusion and no meeting is reported as
//! `permanently_excluded`, not as awaiting a meeting: the pupil has left
//! unless the governing board reinstates them.
//!
//! The view keeps of each event only what the report reads ([`Step`]: its
//! id, time, type and dates or days), as the behaviour view keeps its
//! incidents: a correction is applied to the event with the fields not
//! kept blank (property test
//! `tests::steps_follow_corrections_as_whole_events_do`).

use casebook_engine::event::{
    AlternativeProvisionArranged, CaseEvent, PermanentExclusionIssued, ReintegrationCompleted,
    ReintegrationMeetingHeld, SanctionIssued, SanctionKind, SuspensionIssued,
};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::{self, Name, Names, Reading, Steps};
use crate::Projection;

/// The reintegration projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reintegration {
    kept: Steps<What>,
}

/// What the report reads of one event: 48 bytes, where the event kept
/// whole (`facts::Kept`) took ~230 (a sanction's reason, a meeting's
/// attendees and agreed support, a suspension's reason codes).
type Step = facts::Step<What>;

/// An event's type and the fields of it the report reads. Every sanction
/// is kept, a detention too: a correction may make it an isolation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum What {
    Suspension { start_date: NaiveDate, days: f64 },
    PermanentExclusion { effective_date: NaiveDate },
    Sanction { kind: SanctionKind },
    AlternativeProvision { start_date: NaiveDate },
    Meeting,
    Completed,
}

/// Its steps name no strings: the names stay empty (and a checkpoint
/// written before [`Steps`] was shared, without them, reads as such).
impl Reading for What {
    fn of(e: &CaseEvent, _names: &mut Names) -> Option<What> {
        Some(match e {
            CaseEvent::SuspensionIssued(s) => What::Suspension {
                start_date: s.start_date,
                days: s.days,
            },
            CaseEvent::PermanentExclusionIssued(p) => What::PermanentExclusion {
                effective_date: p.effective_date,
            },
            CaseEvent::SanctionIssued(s) => What::Sanction { kind: s.kind },
            CaseEvent::AlternativeProvisionArranged(a) => What::AlternativeProvision {
                start_date: a.start_date,
            },
            CaseEvent::ReintegrationMeetingHeld(_) => What::Meeting,
            CaseEvent::ReintegrationCompleted(_) => What::Completed,
            _ => return None,
        })
    }

    /// The event of this type with the fields kept, the others blank.
    fn event(&self, _names: &Names) -> CaseEvent {
        match *self {
            What::Suspension { start_date, days } => {
                CaseEvent::SuspensionIssued(SuspensionIssued {
                    days,
                    reason_code: String::new(),
                    additional_reason_codes: Vec::new(),
                    start_date,
                    override_reason: None,
                })
            }
            What::PermanentExclusion { effective_date } => {
                CaseEvent::PermanentExclusionIssued(PermanentExclusionIssued {
                    reason_code: String::new(),
                    additional_reason_codes: Vec::new(),
                    effective_date,
                })
            }
            What::Sanction { kind } => CaseEvent::SanctionIssued(SanctionIssued {
                kind,
                reason: String::new(),
            }),
            What::AlternativeProvision { start_date } => {
                CaseEvent::AlternativeProvisionArranged(AlternativeProvisionArranged {
                    provider: String::new(),
                    start_date,
                    reason: String::new(),
                    sessions_per_week: None,
                })
            }
            What::Meeting => CaseEvent::ReintegrationMeetingHeld(ReintegrationMeetingHeld {
                attendees: Vec::new(),
                agreed_support: String::new(),
            }),
            What::Completed => CaseEvent::ReintegrationCompleted(ReintegrationCompleted {
                outcome: String::new(),
            }),
        }
    }

    fn names(&self) -> impl Iterator<Item = Name> + '_ {
        std::iter::empty()
    }
}

impl Step {
    /// The removal this step records, if it records one.
    fn removal(&self) -> Option<Removal> {
        let (kind, date, days) = match self.what {
            What::Suspension { start_date, days } => {
                (RemovalKind::Suspension, start_date, Some(days))
            }
            What::PermanentExclusion { effective_date } => {
                (RemovalKind::PermanentExclusion, effective_date, None)
            }
            What::Sanction { kind } => match kind {
                SanctionKind::Isolation => {
                    (RemovalKind::Isolation, self.occurred_at.date_naive(), None)
                }
                SanctionKind::InternalExclusion => (
                    RemovalKind::InternalExclusion,
                    self.occurred_at.date_naive(),
                    None,
                ),
                SanctionKind::Detention | SanctionKind::ReportCard => return None,
            },
            What::AlternativeProvision { start_date } => {
                (RemovalKind::AlternativeProvision, start_date, None)
            }
            What::Meeting | What::Completed => return None,
        };
        Some(Removal {
            kind,
            event_id: self.event_id,
            date,
            days,
        })
    }

    /// What the report reads of this step.
    fn read(&self) -> Read {
        Read {
            removal: self.removal(),
            meeting: self.what == What::Meeting,
            completed: self.what == What::Completed,
            occurred_at: self.occurred_at,
        }
    }
}

/// What the report reads of one event: the removal it records, whether it
/// is a reintegration meeting or a completion, and when it happened.
#[derive(Clone, Debug, PartialEq)]
struct Read {
    removal: Option<Removal>,
    meeting: bool,
    completed: bool,
    occurred_at: DateTime<Utc>,
}

impl Projection for Reintegration {
    const NAME: &'static str = "reintegration";
    /// 3: each event kept as what the report reads of it (`Step`).
    const VERSION: u32 = 3;

    fn apply(&mut self, e: &RecordedEvent, _corrected_at: Option<u64>) {
        self.kept.apply(e);
    }
}

/// What a pupil was removed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalKind {
    Suspension,
    PermanentExclusion,
    Isolation,
    InternalExclusion,
    AlternativeProvision,
}

/// One removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    pub kind: RemovalKind,
    pub event_id: Uuid,
    /// Start date (suspension, alternative provision), effective date
    /// (permanent exclusion) or the day of the sanction.
    pub date: NaiveDate,
    /// Suspension days.
    pub days: Option<f64>,
}

/// Where an episode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeStatus {
    AwaitingMeeting,
    MeetingHeld,
    Completed,
    PermanentlyExcluded,
}

/// Removals and the reintegration that followed them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub pupil: String,
    pub status: EpisodeStatus,
    pub removals: Vec<Removal>,
    pub meeting_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A pupil whose latest removal has no reintegration meeting yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Awaiting {
    pub pupil: String,
    /// The date of the latest removal.
    pub since: NaiveDate,
    pub removals: u64,
}

/// `report reintegration --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReintegrationReport {
    /// Every episode, oldest first removal first.
    pub episodes: Vec<Episode>,
    /// Pupils awaiting a meeting, longest waiting first.
    pub awaiting: Vec<Awaiting>,
    pub totals: ReintegrationTotals,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReintegrationTotals {
    pub episodes: u64,
    pub awaiting_meeting: u64,
    pub meeting_held: u64,
    pub completed: u64,
    pub permanently_excluded: u64,
}

impl Reintegration {
    /// Every episode and the pupils awaiting a meeting.
    pub fn report(&self) -> ReintegrationReport {
        report_of(self.kept.reads(|s, _| s.read()))
    }
}

/// The report of each pupil's reference and what it reads of their
/// events, in stream order.
fn report_of<R: Iterator<Item = Read>>(
    pupils: impl Iterator<Item = (String, R)>,
) -> ReintegrationReport {
    let mut episodes: Vec<Episode> = Vec::new();
    for (pupil, reads) in pupils {
        let mut mine: Vec<Episode> = Vec::new();
        for read in reads {
            if let Some(r) = read.removal {
                match mine.last_mut() {
                    Some(open) if open.meeting_at.is_none() => open.removals.push(r),
                    _ => mine.push(Episode {
                        pupil: pupil.clone(),
                        status: EpisodeStatus::AwaitingMeeting,
                        removals: vec![r],
                        meeting_at: None,
                        completed_at: None,
                    }),
                }
                continue;
            }
            let Some(last) = mine.last_mut() else {
                continue;
            };
            if read.meeting && last.meeting_at.is_none() {
                last.meeting_at = Some(read.occurred_at);
            } else if read.completed && last.meeting_at.is_some() && last.completed_at.is_none() {
                last.completed_at = Some(read.occurred_at);
            }
        }
        episodes.extend(mine);
    }
    for e in &mut episodes {
        e.status = match (e.meeting_at, e.completed_at) {
            (_, Some(_)) => EpisodeStatus::Completed,
            (Some(_), None) => EpisodeStatus::MeetingHeld,
            (None, None)
                if e.removals
                    .iter()
                    .any(|r| r.kind == RemovalKind::PermanentExclusion) =>
            {
                EpisodeStatus::PermanentlyExcluded
            }
            (None, None) => EpisodeStatus::AwaitingMeeting,
        };
    }
    let first = |e: &Episode| e.removals.first().map(|r| r.date);
    episodes.sort_by(|a, b| (first(a), &a.pupil).cmp(&(first(b), &b.pupil)));

    let mut awaiting: Vec<Awaiting> = episodes
        .iter()
        .filter(|e| e.status == EpisodeStatus::AwaitingMeeting)
        .filter_map(|e| {
            Some(Awaiting {
                pupil: e.pupil.clone(),
                since: e.removals.iter().map(|r| r.date).max()?,
                removals: e.removals.len() as u64,
            })
        })
        .collect();
    awaiting.sort_by(|a, b| (a.since, &a.pupil).cmp(&(b.since, &b.pupil)));

    let mut totals = ReintegrationTotals {
        episodes: episodes.len() as u64,
        ..ReintegrationTotals::default()
    };
    for e in &episodes {
        match e.status {
            EpisodeStatus::AwaitingMeeting => totals.awaiting_meeting += 1,
            EpisodeStatus::MeetingHeld => totals.meeting_held += 1,
            EpisodeStatus::Completed => totals.completed += 1,
            EpisodeStatus::PermanentlyExcluded => totals.permanently_excluded += 1,
        }
    }
    ReintegrationReport {
        episodes,
        awaiting,
        totals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{damaged, folded, generated_log, read_back, valid_date, Line};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const PUPILS: [&str; 2] = ["P1", "P2"];

    fn date() -> impl Strategy<Value = Value> {
        prop_oneof![
            valid_date(400),
            Just(json!("2025-02-30")),
            Just(json!(20251001)),
        ]
    }

    fn kind() -> impl Strategy<Value = Value> {
        prop::sample::select(vec![
            "detention",
            "isolation",
            "internal_exclusion",
            "report_card",
            "nap",
        ])
        .prop_map(|k| json!(k))
    }

    fn event() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            (prop::sample::select(vec![0.5, 1.0, 2.5, 5.0]), valid_date(400)).prop_map(|(days, start)| (
                "SuspensionIssued",
                json!({"days": days, "reason_code": "PD", "start_date": start})
            )),
            valid_date(400).prop_map(|d| (
                "PermanentExclusionIssued",
                json!({"reason_code": "PA", "effective_date": d})
            )),
            kind().prop_filter("a kind", |k| k != "nap").prop_map(|k| (
                "SanctionIssued",
                json!({"kind": k, "reason": "Synthetic reason"})
            )),
            valid_date(400).prop_map(|d| (
                "AlternativeProvisionArranged",
                json!({"provider": "Synthetic AP", "start_date": d, "reason": "r", "sessions_per_week": 3})
            )),
            Just((
                "ReintegrationMeetingHeld",
                json!({"attendees": ["S001", "parent"], "agreed_support": "mentor"})
            )),
            Just(("ReintegrationCompleted", json!({"outcome": "settled"}))),
            Just(("ParentContacted", json!({"method": "phone", "summary": "told"}))),
            Just((
                "PupilRegistered",
                json!({"name": "Synthetic Pupil", "date_of_birth": "2012-05-01",
                    "year_group": 9, "class": "9A"})
            )),
        ]
    }

    /// A change that applies or does not, to a field of the six types.
    fn change() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            prop::sample::select(vec![json!(1.5), json!(0.5), json!("two"), Value::Null])
                .prop_map(|v| ("days", v)),
            date().prop_map(|v| ("start_date", v)),
            date().prop_map(|v| ("effective_date", v)),
            kind().prop_map(|v| ("kind", v)),
            Just(("reason", json!("other"))),
            Just(("reason_code", json!("VA"))),
            Just(("additional_reason_codes", json!(["DM"]))),
            Just(("override_reason", Value::Null)),
            Just(("provider", json!("Other AP"))),
            prop::sample::select(vec![json!(2), json!(-1)]).prop_map(|v| ("sessions_per_week", v)),
            prop::sample::select(vec![json!(["S002"]), json!("S002")])
                .prop_map(|v| ("attendees", v)),
            Just(("agreed_support", json!("none"))),
            Just(("outcome", json!("moved"))),
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
            CaseEvent::SuspensionIssued(_)
                | CaseEvent::PermanentExclusionIssued(_)
                | CaseEvent::SanctionIssued(_)
                | CaseEvent::AlternativeProvisionArranged(_)
                | CaseEvent::ReintegrationMeetingHeld(_)
                | CaseEvent::ReintegrationCompleted(_)
        )
    }

    /// What the report took of a whole event before `VERSION` 3: the
    /// removal it records, whether it is a meeting, whether a completion.
    fn whole_way(event: &CaseEvent, event_id: Uuid, occurred_at: DateTime<Utc>) -> Read {
        let removal = match event {
            CaseEvent::SuspensionIssued(s) => {
                Some((RemovalKind::Suspension, s.start_date, Some(s.days)))
            }
            CaseEvent::PermanentExclusionIssued(p) => {
                Some((RemovalKind::PermanentExclusion, p.effective_date, None))
            }
            CaseEvent::SanctionIssued(s) => match s.kind {
                SanctionKind::Isolation => {
                    Some((RemovalKind::Isolation, occurred_at.date_naive(), None))
                }
                SanctionKind::InternalExclusion => Some((
                    RemovalKind::InternalExclusion,
                    occurred_at.date_naive(),
                    None,
                )),
                SanctionKind::Detention | SanctionKind::ReportCard => None,
            },
            CaseEvent::AlternativeProvisionArranged(a) => {
                Some((RemovalKind::AlternativeProvision, a.start_date, None))
            }
            _ => None,
        };
        Read {
            removal: removal.map(|(kind, date, days)| Removal {
                kind,
                event_id,
                date,
                days,
            }),
            meeting: matches!(event, CaseEvent::ReintegrationMeetingHeld(_)),
            completed: matches!(event, CaseEvent::ReintegrationCompleted(_)),
            occurred_at,
        }
    }

    /// A checkpoint written before the views shared `facts::Steps`
    /// (`pupils` only, no `names`) reads as the same view.
    #[test]
    fn checkpoints_without_names_read_as_before() {
        let lines = [
            Line::Event(
                0,
                3,
                "SuspensionIssued",
                json!({"days": 2.0, "reason_code": "PD", "start_date": "2025-09-10"}),
            ),
            Line::Event(
                0,
                9,
                "ReintegrationMeetingHeld",
                json!({"attendees": ["S001"], "agreed_support": "mentor"}),
            ),
            Line::Correct(0, 0, json!({"days": 1.5})),
        ];
        let view: Reintegration = folded(&generated_log(&PUPILS, &lines), |_| false).0;
        #[derive(serde::Serialize)]
        struct Before<'a> {
            pupils: &'a std::collections::BTreeMap<casebook_engine::StreamId, facts::StepsOf<What>>,
        }
        let bytes = rmp_serde::to_vec_named(&Before {
            pupils: &view
                .kept
                .pupils
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        })
        .unwrap();
        let read: Reintegration = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(read, view);
        assert_eq!(read.report().episodes[0].removals[0].days, Some(1.5));
    }

    proptest! {
        /// Events kept as what the report reads of them, corrected with
        /// their other fields blank, hold what the same events kept whole
        /// (`facts::Tracker`, the view's form before `VERSION` 3),
        /// corrected whole, hold of them, whatever the corrections change
        /// and whether or not they apply; the view reads back from its
        /// checkpoint as it was, with the same report.
        #[test]
        fn steps_follow_corrections_as_whole_events_do(
            lines in prop::collection::vec(line(), 0..40),
        ) {
            let (slim, whole) = folded::<Reintegration>(&generated_log(&PUPILS, &lines), whole_reads);
            let streams: Vec<_> = slim.kept.pupils.keys().collect();
            prop_assert_eq!(streams, whole.pupils.keys().collect::<Vec<_>>());
            for (stream, facts) in &whole.pupils {
                let pupil = &slim.kept.pupils[stream];
                prop_assert_eq!(&pupil.card, &facts.card);
                let kept: Vec<(Uuid, DateTime<Utc>, Option<What>)> = pupil
                    .steps
                    .iter()
                    .map(|s| (s.event_id, s.occurred_at, Some(s.what)))
                    .collect();
                let reference: Vec<(Uuid, DateTime<Utc>, Option<What>)> = facts
                    .events
                    .iter()
                    .map(|k| (k.event_id, k.occurred_at, k.event().as_ref().and_then(|e| What::of(e, &mut Names::default()))))
                    .collect();
                prop_assert_eq!(kept, reference);
                // What the report takes of each: as it took it of the
                // whole event.
                let read: Vec<_> = pupil.steps.iter().map(Step::read).collect();
                let whole_read: Vec<_> = facts
                    .events
                    .iter()
                    .map(|k| whole_way(&k.event().unwrap(), k.event_id, k.occurred_at))
                    .collect();
                prop_assert_eq!(read, whole_read);
            }
            // The report: as the whole events' reads make it.
            let reference = report_of(whole.pupils.iter().map(|(stream, facts)| {
                (
                    facts.card.pupil(*stream),
                    facts
                        .events
                        .iter()
                        .map(|k| whole_way(&k.event().unwrap(), k.event_id, k.occurred_at)),
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
            let view: Reintegration = folded(&generated_log(&PUPILS, &lines), |_| false).0;
            if let Some(read) = damaged(&view, at, byte) {
                let _ = read.report();
            }
        }
    }
}
