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
//!   [`suspensions`], [`force`], [`interventions`], [`reintegration`].
//!
//! School-wide views keep the *facts* they read, as corrected (see
//! [`facts`]), and aggregate at query time. Queries that depend on "today"
//! (overdue reviews, the academic year) take the date as an argument, so a
//! report is reproducible with `--today`.
//!
//! Architecture Invariant: `apply` is a pure fold: no I/O, no clock, no
//! randomness. Replaying the same log gives the same state, whether in one
//! pass or resumed from a snapshot (property-tested in `tests/it`).
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
pub mod reintegration;
pub mod runner;
pub mod summary;
pub mod suspensions;

use casebook_engine::RecordedEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use attendance::Attendance;
pub use audit::AuditTrail;
pub use behaviour::{Behaviour, BehaviourDimension};
pub use caseload::Caseload;
pub use chronology::Chronology;
pub use error::ProjectionError;
pub use force::ForceLog;
pub use interventions::Interventions;
pub use reintegration::Reintegration;
pub use runner::{
    audit_of, chronology_of, load_one, load_projection, read_pupil, rebuild, RebuildReport,
    SchoolViews,
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
    fn apply(&mut self, event: &RecordedEvent);

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
];
