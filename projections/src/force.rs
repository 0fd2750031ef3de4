//! The reasonable-force log: every recorded use of force (Education and
//! Inspections Act 2006 s.93A), oldest first, with the two things an
//! inspector checks first flagged: parents not informed, and the record not
//! written the same day (DfE guidance from September 2025). "The same day"
//! compares the UTC dates of `occurred_at` and `recorded_at`.

use casebook_engine::domain::academic_year;
use casebook_engine::event::CaseEvent;
use casebook_engine::RecordedEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::Tracker;
use crate::Projection;

/// The reasonable-force projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForceLog {
    facts: Tracker,
}

fn reads(e: &CaseEvent) -> bool {
    matches!(e, CaseEvent::ReasonableForceUsed(_))
}

impl Projection for ForceLog {
    const NAME: &'static str = "force";
    /// 2: the uses of force are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        self.facts.apply(event, reads);
    }
}

/// `report force --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForceReport {
    /// The academic year listed, or `null` for all.
    pub academic_year: Option<i32>,
    pub uses: Vec<ForceUse>,
    pub total: u64,
    pub parent_not_informed: u64,
    pub not_recorded_same_day: u64,
}

/// One use of force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForceUse {
    pub pupil: String,
    /// Whether the pupil has SEN, from their registration (the guidance
    /// asks for it); `null` when not recorded.
    pub sen: Option<bool>,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
    pub staff: String,
    pub hold: String,
    pub duration_minutes: u32,
    pub reason: String,
    pub injuries: String,
    pub parent_informed: bool,
    pub recorded_same_day: bool,
    /// What needs following up, in words (empty when nothing does).
    pub flags: Vec<String>,
}

impl ForceLog {
    /// Every use of force, oldest first; for one academic year (by the date
    /// it happened) or, with `None`, all.
    pub fn report(&self, year: Option<i32>) -> ForceReport {
        let mut uses: Vec<ForceUse> = self
            .facts
            .events()
            .filter_map(|(stream, card, t)| {
                // Always decodes (`Kept::event`).
                let event = t.event()?;
                let CaseEvent::ReasonableForceUsed(f) = &event else {
                    return None;
                };
                if year.is_some_and(|y| academic_year(t.occurred_at.date_naive()) != y) {
                    return None;
                }
                let same_day = t.recorded_at.date_naive() == t.occurred_at.date_naive();
                let mut flags = Vec::new();
                if !f.parent_informed {
                    flags.push("parent not informed".to_string());
                }
                if !same_day {
                    flags.push("not recorded the same day".to_string());
                }
                Some(ForceUse {
                    pupil: card.pupil(stream),
                    sen: card.sen(),
                    event_id: t.event_id,
                    occurred_at: t.occurred_at,
                    recorded_at: t.recorded_at,
                    recorded_by: t.actor.to_string(),
                    staff: f.staff.clone(),
                    hold: f.hold.clone(),
                    duration_minutes: f.duration_minutes,
                    reason: f.reason.clone(),
                    injuries: f.injuries.clone(),
                    parent_informed: f.parent_informed,
                    recorded_same_day: same_day,
                    flags,
                })
            })
            .collect();
        uses.sort_by(|a, b| {
            (a.occurred_at, &a.pupil, a.event_id).cmp(&(b.occurred_at, &b.pupil, b.event_id))
        });
        ForceReport {
            academic_year: year,
            total: uses.len() as u64,
            parent_not_informed: uses.iter().filter(|u| !u.parent_informed).count() as u64,
            not_recorded_same_day: uses.iter().filter(|u| !u.recorded_same_day).count() as u64,
            uses,
        }
    }
}
