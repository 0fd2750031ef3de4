//! The projection boundary's errors: what went wrong while reading the log
//! into views, and where (position, projection, pupil).

use casebook_engine::{CodecError, StoreError};

/// Why a view could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed (I/O, corruption, closed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored payload does not decode as any known event. Never skipped:
    /// a view that silently left out an entry would be wrong without saying.
    #[error("event at position {position} ({event_type}) cannot be decoded: {source} (run `casebook verify`)")]
    Decode {
        position: u64,
        event_type: String,
        #[source]
        source: CodecError,
    },
    /// The store returned an event other than the one asked for.
    #[error("the log is not gapless: expected position {expected}, read position {found} (run `casebook verify`)")]
    Gap { expected: u64, found: u64 },
    /// The head says the log reaches further than the events it returns.
    #[error("the log's head is at position {head}, but position {position} cannot be read (run `casebook verify`)")]
    Missing { position: u64, head: u64 },
    /// The log no longer holds the event the views were built up to: the
    /// store was replaced or restored while they were in memory.
    #[error("the log no longer holds the event at position {position} these views were built from; load them again")]
    LogChanged { position: u64 },
    /// `rebuild` was asked for a projection that does not exist.
    #[error("unknown projection {name:?}; the projections are {known}")]
    UnknownProjection { name: String, known: String },
    /// A view's state could not be encoded into its checkpoint.
    #[error("cannot encode the checkpoint of {projection}: {what}")]
    Checkpoint {
        projection: &'static str,
        what: String,
    },
    /// No case record exists for this pupil reference.
    #[error("no record for pupil {pupil:?} in this school")]
    UnknownPupil { pupil: String },
}

impl ProjectionError {
    /// True when the store or its contents failed (exit code 3), as opposed
    /// to a request naming something that does not exist (exit code 2).
    pub fn is_store_failure(&self) -> bool {
        match self {
            ProjectionError::Store(e) => e.is_store_failure(),
            ProjectionError::Decode { .. }
            | ProjectionError::Gap { .. }
            | ProjectionError::Missing { .. }
            | ProjectionError::LogChanged { .. }
            | ProjectionError::Checkpoint { .. } => true,
            ProjectionError::UnknownProjection { .. } | ProjectionError::UnknownPupil { .. } => {
                false
            }
        }
    }
}
