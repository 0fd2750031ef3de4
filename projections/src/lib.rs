//! casebook-projections: folds over the log.
//!
//! Every view of casebook is a fold of events into state. Two kinds exist:
//!
//! - **Per-pupil views** fold one pupil's stream on demand, because a
//!   pupil's history is small and must be exact at the moment it is read:
//!   the chronology ([`chronology`]) and the audit trail ([`audit`]).
//! - **School-wide views** implement [`Projection`] and are kept
//!   incrementally by the [`runner`]: it feeds all of them in one pass over
//!   the log, stores a checkpoint per view in the store and resumes from it
//!   after a restart: [`caseload`], [`behaviour`], [`attendance`],
//!   [`suspensions`], [`force`], [`interventions`], [`reintegration`],
//!   [`retention`].
//!
//! School-wide views keep the *facts* they read, as corrected (see
//! [`facts`]), and aggregate at query time. Queries that depend on "today"
//! (overdue reviews, the academic year) take the date as an argument, so a
//! report is reproducible with `--today`.
//!
//! Architecture Invariant: `apply` is a pure fold: no I/O, no clock, no
//! randomness. Replaying the same log gives the same state, whether in one
//! pass or resumed from a snapshot (property-tested in `tests/it`). (The
//! views' tables of pupils hash under a seed drawn once a process; no order
//! of theirs is ever seen: [`pupil_map`].)
//!
//! Architecture Invariant: no event sequence makes a projection panic. The
//! log holds what the rules of its day allowed; a projection tolerates odd
//! but stored sequences (a review of an unknown plan, a correction of an
//! entry it never saw) by leaving its state as it was.
//!
//! Architecture Invariant: this crate knows nothing of the CLI. It returns
//! serializable report structs whose JSON is the contract's shape.

pub mod attendance;
pub mod audit;
pub mod behaviour;
pub mod caseload;
pub mod chronology;
pub mod error;
pub mod facts;
pub mod force;
pub mod interventions;
pub mod pretty;
pub mod pupil_map;
pub mod reintegration;
pub mod retention;
pub mod runner;
pub mod summary;
pub mod suspensions;

use std::collections::HashMap;

use casebook_engine::event::CaseEvent;
use casebook_engine::RecordedEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

pub use attendance::Attendance;
pub use audit::AuditTrail;
pub use behaviour::{Behaviour, BehaviourDimension};
pub use caseload::Caseload;
pub use chronology::Chronology;
pub use error::ProjectionError;
pub use force::ForceLog;
pub use interventions::Interventions;
pub use reintegration::Reintegration;
pub use retention::Retention;
pub use runner::{
    audit_of, chronology_of, load_one, load_one_sharing, load_projection, read_pupil, rebuild,
    Loaded, NotSaved, RebuildReport, SchoolViews, CHECKPOINT_BYTES_PER_EVENT,
    CHECKPOINT_READ_WHOLE, SHARE_BYTES_PER_EVENT, SHARE_FOLD_FROM,
};
pub use summary::summary;
pub use suspensions::Suspensions;

/// A school-wide view kept incrementally: a fold over the school's log.
///
/// The state is serialized into the store as a checkpoint (MessagePack with
/// field names), so it must round-trip through `Serialize`/`Deserialize`
/// exactly; the runner resumes from it instead of replaying the log.
pub trait Projection: Send + Default + Serialize + DeserializeOwned {
    /// The checkpoint's name in the store, and the name `rebuild` takes.
    const NAME: &'static str;
    /// Bump when `apply` or the state's shape changes meaning: a checkpoint
    /// written by another version is thrown away and the view rebuilt.
    const VERSION: u32;
    /// Folds one event, in log order. Pure: no I/O, clock or randomness.
    ///
    /// `corrected_at`: when `event` is an `EntryCorrected`, the position in
    /// the log of the entry it names, if the log holds it (the caller looks
    /// it up: [`Targets`]). A view that keeps entries by position rather
    /// than by event id finds the corrected one with it; others ignore it.
    fn apply(&mut self, event: &RecordedEvent, corrected_at: Option<u64>);

    /// About how many bytes the checkpoint of this state takes: the
    /// runner reserves them at once instead of growing the buffer by
    /// doubling (a large view's checkpoint would otherwise hold up to twice
    /// its size at the peak). Only a hint; 0 lets the buffer grow.
    fn checkpoint_size_hint(&self) -> usize {
        0
    }
}

/// The names of the school-wide projections, in the order the runner feeds
/// them. `rebuild` accepts any of them.
pub const PROJECTION_NAMES: &[&str] = &[
    Caseload::NAME,
    Behaviour::NAME,
    Attendance::NAME,
    Suspensions::NAME,
    ForceLog::NAME,
    Interventions::NAME,
    Reintegration::NAME,
    Retention::NAME,
];

/// Where the entries that corrections name are in the log, by event id:
/// what [`Projection::apply`] is given as `corrected_at`. The runner fills
/// one for each page of the log it folds, from the store's index
/// ([`casebook_engine::EventStore::find_events`] of the page's corrections'
/// targets); a fold of events held in memory fills it from them
/// ([`Targets::of`]).
#[derive(Clone, Debug, Default)]
pub struct Targets(HashMap<Uuid, u64>);

impl Targets {
    /// Every one of `events`, by id.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Targets {
        Targets(
            events
                .into_iter()
                .map(|e| (e.event_id, e.position))
                .collect(),
        )
    }

    /// Notes where the event `id` is.
    pub fn insert(&mut self, id: Uuid, position: u64) {
        self.0.insert(id, position);
    }

    /// When `event` is a correction, the position of the entry it names,
    /// if known here.
    pub fn corrected_by(&self, event: &RecordedEvent) -> Option<u64> {
        match &event.event {
            CaseEvent::EntryCorrected(c) => self.0.get(&c.event).copied(),
            _ => None,
        }
    }
}

/// Folds `events` into `view` in order, the corrections' targets looked up
/// among `log` (which holds them, and may hold more: the whole log a view
/// resumed part-way is folded from).
pub fn fold_in<'a, P: Projection>(
    view: &mut P,
    events: impl IntoIterator<Item = &'a RecordedEvent>,
    log: &Targets,
) {
    for e in events {
        view.apply(e, log.corrected_by(e));
    }
}
