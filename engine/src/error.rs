//! Error types of the engine's boundaries: encoding (`CodecError`) and
//! storage (`StoreError`). Domain refusals live in [`crate::domain`].
//! Each variant says what was wrong and where (stream, position).

use uuid::Uuid;

use crate::envelope::StreamId;
use crate::store::ExpectedVersion;

/// Bytes that could not be encoded or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("value of {len} bytes is too short to hold an envelope and its hash")]
    Truncated { len: usize },
    #[error("field {field}: {what}")]
    Field { field: &'static str, what: String },
    #[error("payload of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("{event_type} at schema {schema}: {what}")]
    Payload {
        event_type: String,
        schema: u32,
        what: String,
    },
}

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("stream {stream}: expected version {expected}, but the stream is at version {actual}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("event id {event_id} is already stored at position {position}")]
    DuplicateEventId { event_id: Uuid, position: u64 },
    #[error("event id {event_id} appears twice in one append")]
    DuplicateInAppend { event_id: Uuid },
    #[error("append to stream {stream} has no events")]
    EmptyAppend { stream: StreamId },
    #[error("{what} ({count}) is over the limit of {limit}")]
    Limit {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("store I/O error during {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store is corrupt at {location}: {what} (run `casebook verify` for a full report)")]
    Corrupt { location: String, what: String },
    #[error("store format version {found} is newer than this casebook understands (up to {supported}); upgrade casebook")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("store at {path} is in use by {}", in_use_by(*.pid))]
    InUse { path: String, pid: Option<u32> },
    #[error("the disk holding the store is full (during {during}); a write that fails this way is not acknowledged, and nothing acknowledged is lost. Free space, then reopen the store (`casebook verify` checks it)")]
    DiskFull { during: &'static str },
    #[error("invalid school id {school:?}: {what}")]
    InvalidSchool { school: String, what: String },
    #[error("the log's writer stopped after an earlier write failure; reopen the store")]
    WriterStopped,
    /// A broken invariant of casebook's own (a bug), not damage on disk.
    #[error("internal error: {0} (a bug in casebook, not damage to the store)")]
    Internal(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl StoreError {
    pub fn io(
        during: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        if is_disk_full(&source) {
            return StoreError::DiskFull { during };
        }
        StoreError::Io {
            during,
            source: Box::new(source),
        }
    }

    /// True when the store itself failed (I/O, corruption) rather than the
    /// request being refused. The CLI maps these to exit code 3.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Corrupt { .. }
                | StoreError::UnsupportedFormat { .. }
                | StoreError::InUse { .. }
                | StoreError::DiskFull { .. }
                | StoreError::WriterStopped
                | StoreError::Internal(_)
                | StoreError::Codec(_)
        )
    }
}

fn in_use_by(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another casebook process".into(),
    }
}

/// Whether an I/O error (plain, or wrapped by sled) is ENOSPC.
pub(crate) fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let io = e
        .downcast_ref::<std::io::Error>()
        .or_else(|| match e.downcast_ref::<sled::Error>() {
            Some(sled::Error::Io(io)) => Some(io),
            _ => None,
        });
    if let Some(io) = io {
        if io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull {
            return true;
        }
    }
    e.to_string().contains("No space left on device")
}
