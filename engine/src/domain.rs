//! The command side: what may be recorded on a pupil's case, judged against
//! the pupil's current state.
//!
//! `CaseState` is a pure fold of one pupil's case stream; `decide` checks a
//! command against it and returns the events to append, or a `DomainError`
//! naming what is wrong. Nothing here does I/O or reads a clock: `now` comes
//! in with the command.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use uuid::Uuid;

use crate::event::CaseEvent;

/// The academic year a date falls in, named by the calendar year of its
/// 1 September (2025 = 1 Sep 2025 to 31 Aug 2026).
pub fn academic_year(date: NaiveDate) -> i32 {
    if date.month() >= 9 {
        date.year()
    } else {
        date.year() - 1
    }
}

/// One pupil's case, as far as `decide` needs it.
#[derive(Clone, Debug, Default)]
pub struct CaseState {
    version: u64,
}

impl CaseState {
    pub fn new() -> CaseState {
        CaseState::default()
    }

    /// Folds one event of the pupil's case stream into the state.
    pub fn apply(&mut self, _event_id: Uuid, _event: &CaseEvent) {
        self.version += 1;
    }

    /// Number of events folded (the stream's version).
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// Recording one event on a pupil's case.
#[derive(Clone, Debug)]
pub struct Record {
    pub event: CaseEvent,
    pub occurred_at: DateTime<Utc>,
    /// The engine's clock at the time of the command (for the future check).
    pub now: DateTime<Utc>,
}

/// What a member of staff asks the engine to do.
#[derive(Clone, Debug)]
pub enum Command {
    Record(Record),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    #[error("field {field}: {what}")]
    Field { field: String, what: String },
}

/// Validates `command` against `state` and returns the events to append.
pub fn decide(_state: &CaseState, command: &Command) -> Result<Vec<CaseEvent>, DomainError> {
    match command {
        Command::Record(r) => Ok(vec![r.event.clone()]),
    }
}
