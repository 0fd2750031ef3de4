//! The import planner's facts checkpoint: what the rules know of each
//! pupil ([`crate::domain`]'s facts), at a version of the pupil's stream,
//! kept between imports so that the next import folds each pupil's
//! history from there instead of from its first event.
//!
//! A day's register for a whole school is one line a pupil, and each line
//! is judged against the facts of the pupil's whole history: without this
//! checkpoint every such import decodes and folds every event of the log
//! (9.9M events for a trust of 24,000 pupils). An import that looks up
//! at least [`MIN_PUPILS`] pupils' stored records at once
//! ([`crate::import::Planner::with_known_facts`]) reads the checkpoint,
//! starts each of its pupils there, and once its events are durable saves
//! the facts it ends with, those of pupils it did not touch kept as they
//! were.
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

/// Pupils whose stored records a planner looks up at once before it
/// reads the checkpoint (and saves one): an import of a few lines never
/// reads it.
pub const MIN_PUPILS: usize = 256;

/// The checkpoint as stored, between [`MAGIC`] and the checksum: a
/// MessagePack array of the format, each pupil's stream, the version its
/// facts are at and the facts (sorted by stream), and the anchor (the
/// log's head when it was saved: position and hash), in that order, so
/// that the pupils are written as an import finishes its plan and the
/// anchor once the plan is durable ([`Gathered`]).
type Body = (u32, Vec<(Uuid, u64, Facts)>, u64, Hash);

/// Each pupil's facts at a version of its stream, read from the
/// checkpoint and checked ([`load`]).
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

    /// Puts back the facts of `stream`'s state, folded to its stored
    /// version after [`KnownFacts::take`] gave where to start, when no
    /// plan took the pupil (its lines were all duplicates): they are
    /// saved with the plan's, as they would have been had the import not
    /// read it.
    pub(crate) fn put_back(&mut self, stream: StreamId, state: CaseState) {
        let (version, facts) = state.into_known();
        if version > 0 {
            self.pupils.insert(stream, (version, facts));
        }
    }

    /// The checkpoint's bytes but its anchor: the facts of `planned`
    /// (each pupil's state as a plan leaves it, at the version its events
    /// will take it to) and those held here of every other pupil.
    pub(crate) fn gather<'a>(
        &'a self,
        planned: impl Iterator<Item = (StreamId, &'a CaseState)>,
    ) -> Result<Gathered, String> {
        let mut pupils: Vec<(Uuid, u64, &Facts)> = planned
            .map(|(stream, state)| {
                let (version, facts) = state.known();
                (stream.0, version, facts)
            })
            .filter(|(_, version, _)| *version > 0)
            .collect();
        let mut seen: std::collections::HashSet<Uuid> = pupils.iter().map(|p| p.0).collect();
        pupils.extend(
            self.pupils
                .iter()
                .filter(|(stream, _)| seen.insert(stream.0))
                .map(|(stream, (version, facts))| (stream.0, *version, facts)),
        );
        // The same facts give the same bytes.
        pupils.sort_unstable_by_key(|(stream, _, _)| *stream);
        let mut bytes = MAGIC.to_vec();
        // The array of four, and its first two: the anchor follows at
        // the save.
        bytes.push(0x94);
        write(&mut bytes, &FORMAT)?;
        write(&mut bytes, &pupils)?;
        Ok(Gathered {
            pupils: pupils.len(),
            bytes,
        })
    }
}

/// `value` written after `out`'s bytes, as MessagePack.
fn write(out: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<(), String> {
    rmp_serde::encode::write(out, value).map_err(|e| e.to_string())
}

/// The facts an import gathered to save ([`KnownFacts::gather`]): the
/// checkpoint's bytes but its anchor, which [`save`] writes once the
/// plan is durable.
#[derive(Debug)]
pub struct Gathered {
    pupils: usize,
    bytes: Vec<u8>,
}

impl Gathered {
    /// Pupils held.
    pub fn len(&self) -> usize {
        self.pupils
    }

    pub fn is_empty(&self) -> bool {
        self.pupils == 0
    }

    /// The checkpoint's bytes, anchored at `(position, hash)`.
    fn anchored(mut self, position: u64, hash: Hash) -> Result<Vec<u8>, String> {
        write(&mut self.bytes, &position)?;
        write(&mut self.bytes, &hash)?;
        let sum = blake3::hash(&self.bytes);
        self.bytes.extend_from_slice(sum.as_bytes());
        Ok(self.bytes)
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
    facts.gather(std::iter::empty())?.anchored(position, hash)
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
    let body = &head[MAGIC.len()..];
    let (format, listed, position, hash): Body = match rmp_serde::from_slice(body) {
        Ok(decoded) => decoded,
        // Another layout: named by its format, when that much reads.
        Err(e) => {
            return Err(match stored_format(body) {
                Some(format) if format != FORMAT => {
                    format!("it is of format {format}, this build reads {FORMAT}")
                }
                _ => format!("it does not decode ({e})"),
            })
        }
    };
    if format != FORMAT {
        return Err(format!(
            "it is of format {format}, this build reads {FORMAT}"
        ));
    }
    let mut pupils = HashMap::with_capacity(listed.len());
    for (stream, version, facts) in listed {
        if version == 0 || version > position {
            return Err(format!(
                "it holds a pupil at version {version}, past its anchor at position {position}"
            ));
        }
        if pupils.insert(StreamId(stream), (version, facts)).is_some() {
            return Err("it holds a pupil twice".into());
        }
    }
    Ok((KnownFacts { pupils }, position, hash))
}

/// The format number that leads a checkpoint's array, whatever its
/// length, if it reads as one.
fn stored_format(body: &[u8]) -> Option<u32> {
    use serde::Deserialize as _;
    let (&first, rest) = body.split_first()?;
    if !(0x90..=0x9f).contains(&first) {
        return None;
    }
    u32::deserialize(&mut rmp_serde::Deserializer::from_read_ref(rest)).ok()
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

/// Saves the facts an import gathered as the checkpoint, anchored at the
/// log's head now. Called once the events the facts were planned with are
/// durable: every version in them is then at or before the head.
pub async fn save(store: &dyn EventStore, facts: Gathered) -> Result<(), StoreError> {
    let head = store.head().await?;
    let bytes = facts
        .anchored(head.position, head.hash)
        .map_err(|e| StoreError::Internal(format!("checkpoint {CHECKPOINT}: {e}")))?;
    store.save_checkpoint(CHECKPOINT, bytes).await
}

/// Saves `facts`, read from a checkpoint, as the checkpoint again,
/// anchored at the log's head now.
pub async fn save_known(store: &dyn EventStore, facts: &KnownFacts) -> Result<(), StoreError> {
    let gathered = facts
        .gather(std::iter::empty())
        .map_err(|e| StoreError::Internal(format!("checkpoint {CHECKPOINT}: {e}")))?;
    save(store, gathered).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse_line;

    /// A pupil's state after a registration, a suspension, a plan, an
    /// intervention and two marks.
    fn state() -> CaseState {
        let lines = [
            r#"{"type":"PupilRegistered","pupil":"P0001","occurred_at":"2025-09-03T08:30:00Z","actor":"S017","data":{"name":"Ada Testpupil","date_of_birth":"2012-05-01","year_group":9,"class":"9B","site":"Main"}}"#,
            r#"{"type":"SuspensionIssued","pupil":"P0001","occurred_at":"2025-12-01T10:00:00Z","actor":"S017","data":{"days":2.5,"reason_code":"PD","start_date":"2025-12-02"}}"#,
            r#"{"type":"PlanAgreed","pupil":"P0001","occurred_at":"2025-12-08T10:00:00Z","actor":"S017","data":{"plan":"PSP-1","kind":"pastoral_support","review_due":"2026-01-08"}}"#,
            r#"{"type":"InterventionStarted","pupil":"P0001","occurred_at":"2025-12-09T10:00:00Z","actor":"S017","data":{"intervention":"INT-1","kind":"mentoring","goal":"Attend every lesson"}}"#,
            r#"{"type":"AttendanceMarked","pupil":"P0001","occurred_at":"2025-12-10T08:45:00Z","actor":"S017","data":{"date":"2025-12-10","session":"am","code":"/"}}"#,
            r#"{"type":"AttendanceMarked","pupil":"P0001","occurred_at":"2025-12-10T13:10:00Z","actor":"S017","data":{"date":"2025-12-10","session":"pm","code":"N"}}"#,
        ];
        let mut state = CaseState::new();
        for (i, text) in lines.iter().enumerate() {
            let line = parse_line(i + 1, text).expect("a valid line");
            state.apply(Uuid::from_u128(i as u128 + 1), &line.event);
        }
        state
    }

    /// The checkpoint's bytes for one pupil are pinned: a change to the
    /// facts' fields or their encoding changes them, and must come with a
    /// new [`FORMAT`] (so that a checkpoint of the old layout is refused,
    /// not misread). The bytes read back as the same facts.
    #[test]
    fn the_checkpoint_layout_is_pinned_to_its_format() {
        let state = state();
        let stream = StreamId(Uuid::from_u128(0xfeed));
        let gathered = KnownFacts::default()
            .gather(std::iter::once((stream, &state)))
            .expect("gathered");
        assert_eq!(gathered.len(), 1);
        let bytes = gathered.anchored(6, [9; 32]).expect("anchored");
        let body: String = bytes[..bytes.len() - 32]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            body,
            PINNED,
            "the facts checkpoint's layout changed: bump known::FORMAT (now {FORMAT}) and pin the new bytes"
        );
        let (mut read, position, hash) = decode(&bytes).expect("decodes");
        assert_eq!((position, hash, read.len()), (6, [9; 32], 1));
        let back = read.take(&stream).expect("the pupil");
        assert_eq!(back.known(), state.known());
        assert_eq!(back.facts_only_events(), 6, "held as facts only");
    }

    /// `body` between the magic and a valid checksum: a checkpoint whose
    /// bytes the decoder itself meets.
    fn checksummed(body: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(body);
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        bytes
    }

    proptest::proptest! {
        /// Any body under a valid checksum (the decoder itself, not the
        /// checksum, meets the bytes) is read or refused, never a panic.
        #[test]
        fn any_checksummed_body_is_read_or_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            lead in 0x90u8..=0x9f,
        ) {
            for body in [body.clone(), [vec![lead], body].concat()] {
                let _ = decode(&checksummed(&body));
            }
        }
    }

    /// A checkpoint of another format is refused by its format number,
    /// whether its layout reads as this one's or not; one whose bytes do
    /// not read is named as such.
    #[test]
    fn a_checkpoint_of_another_format_is_named_by_it() {
        let mut same_layout = encode(&KnownFacts::default(), 3, [1; 32]).expect("encoded");
        same_layout.truncate(same_layout.len() - 32);
        same_layout[MAGIC.len() + 1] = 2;
        let cases: [(Vec<u8>, &str); 3] = [
            (
                checksummed(&same_layout[MAGIC.len()..]),
                "it is of format 2, this build reads 1",
            ),
            // Five fields, the first a format 7.
            (
                checksummed(&[0x95, 7, 0x90, 1, 2, 3]),
                "it is of format 7, this build reads 1",
            ),
            (checksummed(&[0x94, 0xc1]), "it does not decode"),
        ];
        for (bytes, why) in cases {
            match decode(&bytes) {
                Err(e) => assert!(e.contains(why), "{why}: {e}"),
                Ok(_) => panic!("{why}: decoded"),
            }
        }
    }

    /// `CBFACTS\0`, then `[1, [[stream, 6, facts]], 6, hash]`: the facts
    /// `["P0001", {"INT-1": true}, {"PSP-1": ["pastoral_support",
    /// "2026-01-08"]}, [[2025, 2.5]], nil, true, false, [[2025, the
    /// register's 12 words]], false, false]`.
    const PINNED: &str = "434246414354530094019193c4100000000000000000000000000000feed069aa5503030303181a5494e542d31c381a55053502d3192b0706173746f72616c5f737570706f7274aa323032362d30312d30389192cd07e9cb4004000000000000c0c3c29192cd07e99c000000cd03000000000000000000c2c206dc00200909090909090909090909090909090909090909090909090909090909090909";
}
