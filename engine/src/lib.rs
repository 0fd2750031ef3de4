//! casebook-engine: the event log of casebook.
//!
//! It owns the envelope and hash chain ([`envelope`]), the storage backends
//! behind the [`store::EventStore`] trait, the case events ([`event`]), DfE
//! reference data ([`codes`]), upcasting of old payloads ([`upcast`]) and the
//! command side: validating what may be recorded against a pupil's current
//! state ([`domain`]).
//!
//! Architecture Invariant: the engine knows nothing of projections or the
//! CLI. Dependencies point one way: cli -> projections -> engine.

pub mod access;
pub mod codes;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod event;
pub mod import;
pub mod known;
pub mod seal;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod upcast;

pub use envelope::{EventRef, NewEvent, RecordedEvent, StoredEvent, StreamId};
pub use error::{CodecError, StoreError};
pub use event::CaseEvent;
pub use store::{
    AppendRequest, Appended, EventStore, ExpectedVersion, IdsChecked, Presealed, Seen,
};
