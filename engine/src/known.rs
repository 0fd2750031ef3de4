//! The import planner's facts checkpoint: what the rules know of each
//! pupil ([`crate::domain`]'s facts), at a version of the pupil's stream,
//! kept between imports so that the next import folds each pupil's
//! history from there instead of from its first event.
//!
//! A day's register for a whole school is one line a pupil, and each line
//! is judged against the facts of the pupil's whole history: without this
//! checkpoint every such import decodes and folds every event of the log
//! (9.9M events for a trust of 24,000 pupils). An import that folds at
//! least [`MIN_PUPILS`] stored pupils ([`crate::import::Planner::with_known_facts`])
//! reads the checkpoint, starts each of its pupils there, and once its
//! events are durable saves the facts it ends with, those of pupils it did
//! not touch kept as they were.
//!
//! What the checkpoint holds is checked before it is used, and never
//! trusted past that:
//!
//! - its bytes under a BLAKE3 checksum, its layout under a format number
//!   ([`FORMAT`], bumped when the facts or their fold change);
//! - an anchor: the log's head (position and hash) when it was saved. The
//!   event at that position must still carry that hash, so the log up to
//!   there is the one the facts were folded from (the hash chain); every
//!   pupil's version in the checkpoint is of events at or before it.
//!
//! Anything else (a checkpoint from another log, a log restored from an
//! older backup, a damaged file, an older format) is not used: the import
//! says why once and folds every pupil from its first event, as it would
//! without one, and its save replaces the checkpoint.
//!
//! A pupil whose history after its checkpointed version holds a
//! correction is folded again from its first event (a correction re-derives
//! the facts from every entry); so is a pupil with a correction line in
//! the import. Nothing here is personal data beyond what the log holds in
//! the clear: pupil and plan references, dates, counts (no sealed field
//! feeds the facts; `crate::seal::sealed_fields`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{CaseState, Facts};
use crate::envelope::{Hash, StreamId};
use crate::store::EventStore;
use crate::StoreError;

/// The checkpoint's name in the store (`EventStore::save_checkpoint`).
pub const CHECKPOINT: &str = "import-facts";

/// The first bytes of the checkpoint.
const MAGIC: &[u8; 8] = b"CBFACTS\0";

/// The checkpoint's layout, and the facts' fold: bumped when either
/// changes, so that a checkpoint written by another build is not used.
pub const FORMAT: u32 = 1;

/// Stored pupils a planner folds in one look-up before it reads the
/// checkpoint (and saves one): an import of a few lines never reads it.
pub const MIN_PUPILS: usize = 256;

/// The checkpoint as stored, between [`MAGIC`] and the checksum.
#[derive(Deserialize)]
struct Body {
    format: u32,
    /// The anchor: the log's head when it was saved.
    position: u64,
    hash: Hash,
    /// Each pupil's stream, the version its facts are at, and the facts.
    pupils: Vec<(Uuid, u64, Facts)>,
}

/// [`Body`] as written, of borrowed facts.
#[derive(Serialize)]
struct BodyOut<'a> {
    format: u32,
    position: u64,
    hash: Hash,
    pupils: Vec<(Uuid, u64, &'a Facts)>,
}

/// Each pupil's facts at a version of its stream, read from the
/// checkpoint and checked ([`load`]), or gathered by an import to save
/// ([`save`]).
#[derive(Debug, Default)]
pub struct KnownFacts {
    pub(crate) pupils: HashMap<StreamId, (u64, Facts)>,
}

impl KnownFacts {
    /// Pupils held.
    pub fn len(&self) -> usize {
        self.pupils.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pupils.is_empty()
    }

    /// The state `stream`'s facts start from, taken out, and its version.
    pub(crate) fn take(&mut self, stream: &StreamId) -> Option<CaseState> {
        let (version, facts) = self.pupils.remove(stream)?;
        Some(CaseState::from_known(version, facts))
    }

    /// Files `state`'s facts for `stream` (replacing any).
    pub(crate) fn put(&mut self, stream: StreamId, state: CaseState) {
        let (version, facts) = state.into_known();
        if version > 0 {
            self.pupils.insert(stream, (version, facts));
        }
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No checkpoint is stored.
    None,
    /// A checkpoint that may be used.
    Usable(KnownFacts),
    /// A checkpoint that may not, and why (said once to the user; the
    /// import folds every pupil from its first event).
    Unusable(String),
}

/// The checkpoint's bytes for `facts`, anchored at the log's head
/// `(position, hash)`.
pub fn encode(facts: &KnownFacts, position: u64, hash: Hash) -> Result<Vec<u8>, String> {
    let mut pupils: Vec<(Uuid, u64, &Facts)> = facts
        .pupils
        .iter()
        .map(|(s, (v, f))| (s.0, *v, f))
        .collect();
    // The same facts give the same bytes.
    pupils.sort_unstable_by_key(|(s, _, _)| *s);
    let body = BodyOut {
        format: FORMAT,
        position,
        hash,
        pupils,
    };
    let mut bytes = MAGIC.to_vec();
    rmp_serde::encode::write(&mut bytes, &body).map_err(|e| e.to_string())?;
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    Ok(bytes)
}

/// The facts in checkpoint `bytes` and their anchor, or why they cannot be
/// used. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<(KnownFacts, u64, Hash), String> {
    let Some(body_end) = bytes.len().checked_sub(32) else {
        return Err("it is shorter than its checksum".into());
    };
    let (head, sum) = bytes.split_at(body_end);
    if !head.starts_with(MAGIC) {
        return Err("it is not a facts checkpoint".into());
    }
    if blake3::hash(head).as_bytes()[..] != sum[..] {
        return Err("its checksum does not match its bytes".into());
    }
    let body: Body = rmp_serde::from_slice(&head[MAGIC.len()..])
        .map_err(|e| format!("it does not decode ({e})"))?;
    if body.format != FORMAT {
        return Err(format!(
            "it is of format {}, this build reads {FORMAT}",
            body.format
        ));
    }
    let mut pupils = HashMap::with_capacity(body.pupils.len());
    for (stream, version, facts) in body.pupils {
        if version == 0 || version > body.position {
            return Err(format!(
                "it holds a pupil at version {version}, past its anchor at position {}",
                body.position
            ));
        }
        if pupils.insert(StreamId(stream), (version, facts)).is_some() {
            return Err("it holds a pupil twice".into());
        }
    }
    Ok((KnownFacts { pupils }, body.position, body.hash))
}

/// The stored checkpoint, checked against `store`'s log (see the module's
/// doc). A store that fails to read it is an error; anything wrong with
/// the checkpoint itself is [`Loaded::Unusable`].
pub async fn load(store: &dyn EventStore) -> Result<Loaded, StoreError> {
    let Some(bytes) = store.load_checkpoint(CHECKPOINT).await? else {
        return Ok(Loaded::None);
    };
    let (facts, position, hash) = match decode(&bytes) {
        Ok(decoded) => decoded,
        Err(why) => return Ok(Loaded::Unusable(why)),
    };
    let head = store.head().await?;
    if position > head.position {
        return Ok(Loaded::Unusable(format!(
            "it was saved at position {position}, past the log's head at {}",
            head.position
        )));
    }
    let anchored = match position {
        0 => facts.is_empty(),
        _ => store
            .read_all(position, 1)
            .await?
            .first()
            .is_some_and(|e| e.position == position && e.hash == hash),
    };
    if !anchored {
        return Ok(Loaded::Unusable(format!(
            "the log's event at position {position} is not the one it was saved after"
        )));
    }
    Ok(Loaded::Usable(facts))
}

/// Saves `facts` as the checkpoint, anchored at the log's head now. Called
/// once the events the facts were planned with are durable: every version
/// in `facts` is then at or before the head.
pub async fn save(store: &dyn EventStore, facts: &KnownFacts) -> Result<(), StoreError> {
    let head = store.head().await?;
    let bytes = encode(facts, head.position, head.hash)
        .map_err(|e| StoreError::Internal(format!("checkpoint {CHECKPOINT}: {e}")))?;
    store.save_checkpoint(CHECKPOINT, bytes).await
}
