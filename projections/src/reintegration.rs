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

use casebook_engine::event::{CaseEvent, SanctionKind};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::Tracker;
use crate::Projection;

/// The reintegration projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reintegration {
    facts: Tracker,
}

fn reads(e: &CaseEvent) -> bool {
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

impl Projection for Reintegration {
    const NAME: &'static str = "reintegration";
    /// 2: the events are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        self.facts.apply(event, reads);
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

/// The removal an event records, if it records one.
fn removal(event: &CaseEvent, event_id: Uuid, occurred_at: DateTime<Utc>) -> Option<Removal> {
    let (kind, date, days) = match event {
        CaseEvent::SuspensionIssued(s) => (RemovalKind::Suspension, s.start_date, Some(s.days)),
        CaseEvent::PermanentExclusionIssued(p) => {
            (RemovalKind::PermanentExclusion, p.effective_date, None)
        }
        CaseEvent::SanctionIssued(s) => match s.kind {
            SanctionKind::Isolation => (RemovalKind::Isolation, occurred_at.date_naive(), None),
            SanctionKind::InternalExclusion => (
                RemovalKind::InternalExclusion,
                occurred_at.date_naive(),
                None,
            ),
            SanctionKind::Detention | SanctionKind::ReportCard => return None,
        },
        CaseEvent::AlternativeProvisionArranged(a) => {
            (RemovalKind::AlternativeProvision, a.start_date, None)
        }
        _ => return None,
    };
    Some(Removal {
        kind,
        event_id,
        date,
        days,
    })
}

impl Reintegration {
    /// Every episode and the pupils awaiting a meeting.
    pub fn report(&self) -> ReintegrationReport {
        let mut episodes: Vec<Episode> = Vec::new();
        for (stream, facts) in &self.facts.pupils {
            let pupil = facts.card.pupil(*stream);
            let mut mine: Vec<Episode> = Vec::new();
            for t in &facts.events {
                // Always decodes (`Kept::event`).
                let Some(event) = t.event() else {
                    continue;
                };
                if let Some(r) = removal(&event, t.event_id, t.occurred_at) {
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
                match &event {
                    CaseEvent::ReintegrationMeetingHeld(_) if last.meeting_at.is_none() => {
                        last.meeting_at = Some(t.occurred_at);
                    }
                    CaseEvent::ReintegrationCompleted(_)
                        if last.meeting_at.is_some() && last.completed_at.is_none() =>
                    {
                        last.completed_at = Some(t.occurred_at);
                    }
                    _ => {}
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
}
