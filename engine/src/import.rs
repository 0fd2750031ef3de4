//! JSONL import (CONTRACT.md): parsing lines, validating them against each
//! pupil's state as earlier lines leave it, and planning one atomic append.
//!
//! Architecture Invariant: nothing is written until every line has been
//! parsed and validated. `plan` only reads; the caller appends the plan's
//! requests with `append_atomic`, so an import is all-or-nothing per log.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{decide_owned, CaseState, Command, DomainError, Record};
use crate::envelope::{encode_payload, NewEvent, StoredEvent, StreamId};
use crate::error::StoreError;
use crate::event::{CaseEvent, CURRENT_SCHEMA, EVENT_TYPES};
use crate::store::segment::IdHash;
use crate::store::{
    may_block_in_place, read_whole_stream, visit_stream_from, AppendRequest, Appended, EventStore,
    ExpectedVersion, Head, IdsChecked, Presealed, Seen, MAX_EVENTS_PER_APPEND,
};

/// The planner's maps, keyed by event ids and stream ids (16 random or
/// hashed bytes): the segment index's hasher in place of SipHash.
type IdMap<K, V> = HashMap<K, V, IdHash>;
type IdSet<K> = HashSet<K, IdHash>;

/// Longest accepted line. A case entry with a long description is a few KB;
/// 1 MiB leaves room for any honest record and stops a runaway line (a file
/// with no newlines) from being buffered whole.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Longest free-text field (a description, summary or rationale) in an
/// import line's `data`. A long incident write-up is a few KB; 64 KiB keeps
/// a pasted document or a runaway cell out of the permanent record.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// Most lines one import may hold. An import is one atomic append, so this
/// is the store's bound on one append ([`MAX_EVENTS_PER_APPEND`]), which
/// bounds the memory of a batch in flight.
pub const MAX_EVENTS_PER_IMPORT: usize = MAX_EVENTS_PER_APPEND;

/// Lines [`Planner::add_many`] looks up stored state for at once: one
/// batched id lookup and one batched stream read per this many lines. Bounds
/// the prefetched events held in memory (the streams of at most this many
/// pupils).
pub const PREFETCH_LINES: usize = 4_096;

/// Longest pupil reference or staff reference (UPNs are 13 characters; MIS
/// ids are shorter).
pub const MAX_REF_LEN: usize = 64;

/// One parsed import line.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportLine {
    /// 1-based line number in the input.
    pub line: usize,
    pub pupil: String,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub id: Option<Uuid>,
    pub school: Option<String>,
    pub event: CaseEvent,
}

/// Why an import (or a `record`) was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
    #[error("line {line}: {source}")]
    Domain {
        line: usize,
        #[source]
        source: DomainError,
    },
    #[error("line {line}: {source}")]
    Store {
        line: usize,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Write(StoreError),
}

impl ImportError {
    fn line(line: usize, what: impl Into<String>) -> ImportError {
        ImportError::Line {
            line,
            what: what.into(),
        }
    }

    /// True when the store failed (exit 3) rather than the input (exit 2).
    pub fn is_store_failure(&self) -> bool {
        match self {
            ImportError::Store { source, .. } | ImportError::Write(source) => {
                source.is_store_failure()
            }
            _ => false,
        }
    }
}

/// A line's fields as written, with its `data` as `D`: a
/// `serde_json::Value`, or its text (`&RawValue`, [`plain_line`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine<D> {
    #[serde(rename = "type")]
    event_type: String,
    pupil: String,
    occurred_at: String,
    actor: String,
    data: D,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    school: Option<String>,
}

/// The line's fields and its typed event, read straight from the text
/// (no `serde_json::Value` of `data` built, no path tracked), for a line
/// the general reading would accept with nothing more to check in `data`:
/// an importable type; a `data` object of at most [`MAX_FIELD_BYTES`] bytes
/// of text (so no string in it is longer); with no `\u` escape and no
/// sealed prefix, nor the prefix in the pupil (the other escapes stand for
/// characters the prefix does not hold, so a string with the prefix would
/// show it in the text: the event can hold none). `None` for any other
/// line, and for a line this reading refuses (a duplicate key, say): the
/// general reading then reads it, to the same event or with its error.
fn plain_line(text: &str) -> Option<(RawLine<&serde_json::value::RawValue>, CaseEvent)> {
    let p = RawLine::<&serde_json::value::RawValue>::deserialize(
        &mut serde_json::Deserializer::from_str(text),
    )
    .ok()?;
    let data = p.data.get();
    let plain = data.len() <= MAX_FIELD_BYTES
        && data.starts_with('{')
        && !data.contains("\\u")
        && !data.contains(crate::seal::SEALED_PREFIX)
        && !p.pupil.contains(crate::seal::SEALED_PREFIX)
        && not_importable(&p.event_type).is_none();
    if !plain {
        return None;
    }
    let event = CaseEvent::from_type_and_text(&p.event_type, data)?;
    Some((p, event))
}

/// Why a line may not hold `event_type`; `None` for a type an import
/// may hold.
fn not_importable(event_type: &str) -> Option<String> {
    if !EVENT_TYPES.contains(&event_type) {
        return Some(format!(
            "unknown event type {event_type:?} (the types are listed in docs/events.md)"
        ));
    }
    if event_type == "RecordViewed" {
        return Some("RecordViewed is written by casebook itself when a record is read; it cannot be imported".into());
    }
    if crate::access::DIRECTORY_TYPES.contains(&event_type) || event_type == "AccessRefused" {
        return Some(format!("{event_type} is written by casebook itself (staff directory and access log; see `casebook staff`); it cannot be imported or recorded"));
    }
    None
}

fn check_ref(line: usize, field: &str, value: &str) -> Result<(), ImportError> {
    if value.trim().is_empty() {
        return Err(ImportError::line(
            line,
            format!("field {field}: must not be empty"),
        ));
    }
    if value.chars().count() > MAX_REF_LEN {
        return Err(ImportError::line(
            line,
            format!("field {field}: longer than {MAX_REF_LEN} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ImportError::line(
            line,
            format!("field {field}: contains a control character"),
        ));
    }
    Ok(())
}

/// Refuses any string in `data` longer than [`MAX_FIELD_BYTES`], naming its
/// path (`data.description`).
fn check_field_sizes(
    line: usize,
    path: &str,
    value: &serde_json::Value,
) -> Result<(), ImportError> {
    match oversized(value) {
        None => Ok(()),
        Some((below, len)) => Err(ImportError::line(
            line,
            format!(
                "field {path}{below}: {len} bytes, over the limit of {MAX_FIELD_BYTES} bytes for one field"
            ),
        )),
    }
}

/// The path below `value` (`.description`, `[2].note`) of its first string
/// longer than [`MAX_FIELD_BYTES`], and that string's length. The path is
/// built only for the string found, not for every field of every line.
fn oversized(value: &serde_json::Value) -> Option<(String, usize)> {
    match value {
        serde_json::Value::String(s) if s.len() > MAX_FIELD_BYTES => Some((String::new(), s.len())),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| oversized(v).map(|(below, len)| (format!("[{i}]{below}"), len))),
        serde_json::Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| oversized(v).map(|(below, len)| (format!(".{k}{below}"), len))),
        _ => None,
    }
}

/// True when a key or string anywhere in `value` contains `text`.
fn mentions(value: &serde_json::Value, text: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains(text),
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, text)),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(text) || mentions(v, text)),
        _ => false,
    }
}

/// Parses an RFC 3339 time, naming the field on failure.
pub fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "field {field}: {text:?} is not an RFC 3339 time like 2026-09-15T10:20:00Z ({e})"
            )
        })
}

/// Builds a typed event from a type name and its `data`, naming the
/// offending field (`data.severity: invalid type ...`) on failure.
pub fn event_from_json(event_type: &str, data: serde_json::Value) -> Result<CaseEvent, String> {
    if let Some(why) = not_importable(event_type) {
        return Err(why);
    }
    if !data.is_object() {
        return Err("field data: must be an object".into());
    }
    CaseEvent::from_type_and_data(event_type, data).map_err(|e| match e.path {
        Some(path) => format!("field data.{path}: {}", e.message),
        None => format!("{event_type}: {}", e.message),
    })
}

/// Parses one JSONL line. `line` is 1-based.
pub fn parse_line(line: usize, text: &str) -> Result<ImportLine, ImportError> {
    if text.len() > MAX_LINE_BYTES {
        return Err(ImportError::line(
            line,
            format!(
                "line is {} bytes, over the limit of {MAX_LINE_BYTES}",
                text.len()
            ),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some((raw, event)) = plain_line(text) {
        // The checks of the general reading below, in its order; those on
        // `data` hold already.
        check_ref(line, "pupil", &raw.pupil)?;
        check_ref(line, "actor", &raw.actor)?;
        let occurred_at =
            parse_time("occurred_at", &raw.occurred_at).map_err(|w| ImportError::line(line, w))?;
        return finish_line(line, raw, occurred_at, event, false);
    }
    parse_line_general(line, text)
}

/// [`parse_line`] of a line (past its length check and byte order mark)
/// the general way: `data` read into a `serde_json::Value`, checked, then
/// read into the event. Every line [`plain_line`] reads goes here to the
/// same [`ImportLine`] (a test holds the two equal); public for that test.
#[doc(hidden)]
pub fn parse_line_general(line: usize, text: &str) -> Result<ImportLine, ImportError> {
    // Read without tracking where in the line the reader is (a fifth of
    // the read's time); only a line that fails is read again, tracked, to
    // name the field at fault. The same reader either way, so the same
    // lines are read, to the same values or the same error.
    let mut raw = match RawLine::<serde_json::Value>::deserialize(
        &mut serde_json::Deserializer::from_str(text),
    ) {
        Ok(raw) => raw,
        Err(_) => {
            let de = &mut serde_json::Deserializer::from_str(text);
            let e = match serde_path_to_error::deserialize::<_, RawLine<serde_json::Value>>(de) {
                Err(e) => e,
                Ok(_) => {
                    return Err(ImportError::line(
                        line,
                        "internal: the line read once and not twice",
                    ))
                }
            };
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(if inner.is_syntax() || inner.is_eof() || path == "." {
                ImportError::line(line, format!("{inner}"))
            } else {
                ImportError::line(line, format!("field {path}: {inner}"))
            });
        }
    };
    check_ref(line, "pupil", &raw.pupil)?;
    check_ref(line, "actor", &raw.actor)?;
    check_field_sizes(line, "data", &raw.data)?;
    // The typed event's text (below) holds no string that is not in the
    // line's `data` or its pupil (filled into `PupilRegistered`), but for
    // field names and labels, none of which holds the sealed prefix: so a
    // line that does not mention it anywhere there cannot hold it, and is
    // spared writing its event out again as JSON text.
    let maybe_sealed = raw.pupil.contains(crate::seal::SEALED_PREFIX)
        || mentions(&raw.data, crate::seal::SEALED_PREFIX);
    let occurred_at =
        parse_time("occurred_at", &raw.occurred_at).map_err(|w| ImportError::line(line, w))?;
    let data = std::mem::take(&mut raw.data);
    let event = event_from_json(&raw.event_type, data).map_err(|w| ImportError::line(line, w))?;
    finish_line(line, raw, occurred_at, event, maybe_sealed)
}

/// The rest of [`parse_line`] once the line's event is read: the checks
/// of the event against the line, then the line. `maybe_sealed`: whether
/// the line's `data` or pupil mentions the sealed prefix.
fn finish_line<D>(
    line: usize,
    raw: RawLine<D>,
    occurred_at: DateTime<Utc>,
    mut event: CaseEvent,
    maybe_sealed: bool,
) -> Result<ImportLine, ImportError> {
    if let CaseEvent::PupilRegistered(p) = &mut event {
        if p.pupil.is_empty() {
            p.pupil = raw.pupil.clone();
        } else if p.pupil != raw.pupil {
            return Err(ImportError::line(
                line,
                format!(
                    "field data.pupil: {:?} differs from the line's pupil {:?}",
                    p.pupil, raw.pupil
                ),
            ));
        }
    }
    if matches!(
        event,
        CaseEvent::PupilErased(_) | CaseEvent::TransferredOut(_) | CaseEvent::TransferredIn(_)
    ) {
        return Err(ImportError::line(
            line,
            format!(
                "field type: {} is written by casebook itself (erase, transfer-out, transfer-in), not imported",
                event.type_name()
            ),
        ));
    }
    if maybe_sealed
        && event
            .data_json()
            .to_string()
            .contains(crate::seal::SEALED_PREFIX)
    {
        return Err(ImportError::line(
            line,
            format!(
                "field data: text containing {:?} is reserved for sealed fields",
                crate::seal::SEALED_PREFIX
            ),
        ));
    }
    if let Some(s) = &raw.school {
        crate::store::sled::validate_school(s)
            .map_err(|e| ImportError::line(line, format!("field school: {e}")))?;
    }
    Ok(ImportLine {
        line,
        pupil: raw.pupil,
        occurred_at,
        actor: raw.actor,
        id: raw.id,
        school: raw.school,
        event,
    })
}

/// What an import will write to one school's log.
#[derive(Debug, Default)]
pub struct ImportPlan {
    /// One request per pupil stream, each expecting the version it was
    /// validated against.
    pub requests: Vec<AppendRequest>,
    /// Events to write.
    pub events: usize,
    /// Lines skipped because their `id` is already stored with the same
    /// content (or repeated earlier in the same import).
    pub duplicates: usize,
    /// No line carried an `id`: every event's id was minted here
    /// ([`Uuid::now_v7`]), so the plan may be appended with
    /// [`EventStore::append_atomic_minted`], which does not look the ids
    /// up among the stored ones (the segment engine then leaves them in
    /// its index snapshot: an import of a day's register into a store of
    /// millions of events does not read millions of ids).
    pub minted: bool,
    /// What the planner's look-ups of the lines' ids found
    /// ([`IdsChecked`]), when the store could tell: the plan is appended
    /// with [`EventStore::append_atomic_checked`], whose writer does not
    /// look those ids up again among the events the look-ups saw.
    /// Made of `requests` as planned: with other requests it is not used.
    pub checked: Option<IdsChecked>,
    /// The facts checkpoint to save once the plan is durable
    /// ([`crate::known::save`]): every pupil's facts as the plan leaves
    /// them, and those of the checkpoint read that the import did not
    /// touch. Only of a planner [`Planner::with_known_facts`] that read
    /// the checkpoint (an import that folded [`crate::known::MIN_PUPILS`]
    /// stored pupils at once).
    pub known: Option<crate::known::Gathered>,
    /// Why the stored facts checkpoint was not used, when it was not (said
    /// once to the user; the import read every pupil's whole history).
    pub known_note: Option<String>,
}

impl ImportPlan {
    /// Appends the plan's requests atomically to `store`, through
    /// [`EventStore::append_atomic_minted`] when every id was minted here
    /// ([`ImportPlan::minted`]), else through
    /// [`EventStore::append_atomic_checked`] with what the planner's
    /// look-ups found ([`ImportPlan::checked`]) when the store told it.
    pub async fn append_to(self, store: &dyn EventStore) -> Result<Vec<Appended>, StoreError> {
        match (self.minted, self.checked) {
            (true, _) => store.append_atomic_minted(self.requests).await,
            (false, Some(checked)) => store.append_atomic_checked(self.requests, checked).await,
            (false, None) => store.append_atomic(self.requests).await,
        }
    }
}

/// The refusal of a line whose id is stored with other content (or in
/// another pupil's stream).
fn stored_elsewhere(line: usize, id: Uuid, stored: &StoredEvent) -> ImportError {
    ImportError::line(
        line,
        format!(
            "field id: {id} is already stored (position {}) with different content",
            stored.position
        ),
    )
}

/// Validates lines for one school's log against the stored state and the
/// earlier lines, and returns what to append. Reads only.
pub struct Planner<'a> {
    store: &'a dyn EventStore,
    school: String,
    now: DateTime<Utc>,
    pupils: IdMap<StreamId, PupilPlan>,
    order: Vec<StreamId>,
    /// Each id of an earlier line: its line, its pupil ([`PupilPlan::index`]
    /// in `order`) and where its event is in that pupil's plan
    /// (`PupilPlan::events`). 32 bytes an id in the table, not 48 with the
    /// stream itself: an import of a million lines with ids holds a
    /// million of these.
    ids: IdMap<Uuid, EarlierId>,
    duplicates: usize,
    events: usize,
    /// A line carried an `id` (see [`ImportPlan::minted`]).
    given_ids: bool,
    sealer: Option<&'a dyn crate::seal::PayloadSealer>,
    prefetch: Prefetch,
    /// What a [`Pipeline`] batch continues from: the batch still in
    /// flight (empty for a plain planner).
    carry: Carry,
    /// Lines whose id is one of the in-flight batch's, skipped as
    /// duplicates for now; [`Pipeline::plan`] checks each against the store
    /// once that batch is durable, exactly as a fresh planner would.
    deferred: Vec<Deferred>,
    /// The facts checkpoint ([`Planner::with_known_facts`]).
    known: Known,
    /// Why the stored checkpoint was not used ([`ImportPlan::known_note`]).
    known_note: Option<String>,
    /// Through which position the store's look-ups of the lines' ids saw
    /// the log ([`IdsChecked`]).
    checked: Checked,
}

/// Through which position a planner's look-ups of its lines' ids saw the
/// log: the earliest of them, so that every id looked up and not found is
/// absent up to it ([`EventStore::find_events_checked`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Checked {
    /// No look-up yet.
    #[default]
    NotYet,
    Saw(Seen),
    /// A look-up that could not say (a backend that does not tell, a
    /// line's id looked up alone), or look-ups of two logs.
    Unknown,
}

impl Checked {
    fn saw(&mut self, seen: Option<Seen>) {
        *self = match (*self, seen) {
            (Checked::NotYet, Some(s)) => Checked::Saw(s),
            (Checked::Saw(a), Some(s)) if a.log() == s.log() => {
                Checked::Saw(if s.through() < a.through() { s } else { a })
            }
            _ => Checked::Unknown,
        };
    }
}

/// Where a planner is with the facts checkpoint ([`crate::known`]).
enum Known {
    /// Not asked for.
    Off,
    /// Asked for, not read yet: read at the first look-up that folds
    /// [`crate::known::MIN_PUPILS`] stored pupils.
    Unread,
    /// Read (what was usable of it, taken out pupil by pupil as they are
    /// folded); what is left is gathered with the plan's at the end.
    Read(crate::known::KnownFacts),
}

/// The state one [`Pipeline`] batch leaves for the next while it is being
/// written: its pupils (state and the version the batch will leave them
/// at) and its lines' ids. Only the batch in flight is carried; whatever
/// the next batch does not use is dropped once it is planned (those
/// events are durable by then, and read from the store when needed).
#[derive(Default)]
struct Carry {
    pupils: IdMap<StreamId, PupilPlan>,
    ids: IdMap<Uuid, EarlierId>,
}

/// Where a planner holds the event of an id an earlier line gave: the
/// line, the pupil's place in the planner's `order`, and the event's in
/// the pupil's plan (a plan holds at most `MAX_EVENTS_PER_APPEND`
/// events, a planner as many pupils).
type EarlierId = (usize, u32, u32);

/// A line [`Planner::add_now`] could not judge without a store read, with
/// its event (built once: its id or sealed payload may be random).
struct Waiting {
    line: ImportLine,
    new: NewEvent,
    lookup: Lookup,
}

/// The store read a [`Waiting`] line needs.
enum Lookup {
    /// The stored event of this id, if any.
    Id(Uuid),
    /// The stored events of the line's pupil.
    Stream,
    /// The entries of the line's pupil's stored events, for a correction
    /// (the pupil's state holds their facts only: [`read_folded`]).
    Entries,
}

/// A line whose id the in-flight batch holds (see [`Planner::deferred`]).
struct Deferred {
    line: usize,
    id: Uuid,
    stream: StreamId,
    new: NewEvent,
}

/// Stored state looked up in batches ahead of the lines that need it
/// ([`Planner::add_many`]). An id or stream not asked for is looked up one
/// at a time, as [`Planner::add`] always did.
#[derive(Default)]
struct Prefetch {
    /// Ids asked for; `found` holds those that are stored.
    ids: IdSet<Uuid>,
    found: HashMap<Uuid, StoredEvent>,
    /// Streams asked for; `folded` holds the state of those that have any
    /// events, folded as they were read (taken out when the pupil is first
    /// planned).
    streams: IdSet<StreamId>,
    folded: HashMap<StreamId, Folded>,
    /// The stream of each line of the batch, in order (derived once), and
    /// how many lines from it on are of the same stream (the room its
    /// pupil's plan is given at its first event of the batch, instead of
    /// growing by doubling).
    line_streams: Vec<(StreamId, usize)>,
}

struct PupilPlan {
    /// The pupil's place in its planner's `order` (set again when a
    /// carried plan is taken up by the next batch's planner).
    index: u32,
    state: CaseState,
    base_version: u64,
    events: Vec<NewEvent>,
    /// Which of `events` have an id minted here (a line without `id`, an
    /// event `decide` added), not looked up ([`IdsChecked`]).
    unchecked: Vec<u32>,
}

/// A pupil's stored stream as the planner keeps it once read: the state
/// and the stream's version, or why a stored event could not be read
/// (reported at the first line that needs the pupil, as a fold there
/// would).
type Folded = Result<(CaseState, u64), StoreError>;

/// Each stream's state to fold on from, taken from the facts checkpoint
/// (see [`read_folded`]).
type Starts = HashMap<StreamId, CaseState>;

/// Stored events the prefetch reads at once, about: it reads the streams
/// of a batch's pupils a slice at a time, each slice folded and let go
/// before the next is read, so that what it holds is about this many
/// events (or one stream, if longer; twice that when the streams are
/// visited in two halves on two threads, [`PARALLEL_FOLD_STREAMS`]) and
/// not the history of the batch's [`PREFETCH_LINES`] pupils (at 820
/// events a pupil, 4,096 pupils' streams were 3.4M events, ~1 GB).
const PREFETCH_EVENTS: usize = 32_768;

/// Streams in the prefetch's first slice. Each later slice is sized by
/// the longest stream visited so far, and at most twice the one before
/// it (a batch whose first pupils are new says nothing of the others).
const FIRST_SLICE_STREAMS: usize = 64;

/// The decoded payload of the stored event at `position`, for a fold: a
/// payload that does not decode is a damaged log, named by position.
fn stored_case_event(
    position: u64,
    decoded: Result<CaseEvent, crate::error::CodecError>,
) -> Result<CaseEvent, StoreError> {
    decoded.map_err(|e| StoreError::Corrupt {
        location: format!("position {position}"),
        what: e.to_string(),
    })
}

/// The streams of `streams` that hold events, each folded for the planner
/// as it is visited ([`EventStore::visit_streams`]): into the facts only
/// ([`CaseState::apply_facts_only`]), which is all the rules ask of a
/// pupil's history but for a correction, or, for the streams in
/// `keep_entries` (pupils with a correction line to judge), with every
/// entry. An import of a day's register for the whole school holds a
/// state for every pupil: with the entries, 32 bytes for every event of
/// their history. A slice of streams at a time: each
/// slice sized to hold about [`PREFETCH_EVENTS`] events by the longest
/// stream visited so far, and at most twice the one before. A stream met
/// holding a correction while folded as facts only is visited again, in a
/// second pass of the same kind, folded with its entries and then let go
/// of them.
///
/// `batched`: through `visit_streams_from`; otherwise each stream on its
/// own (`visit_stream`, the planner's one-line-at-a-time reads, which do
/// not depend on the batched look-ups).
///
/// `starts`: streams whose facts the planner's checkpoint holds at a
/// version ([`crate::known`]), folded on from there: only their events
/// after it are read. One whose events after it hold a correction is
/// folded again from its first event, as a stream folded from there
/// would be.
async fn read_folded(
    store: &dyn EventStore,
    streams: &[StreamId],
    keep_entries: &IdSet<StreamId>,
    batched: bool,
    starts: Starts,
) -> Result<HashMap<StreamId, Folded>, StoreError> {
    let tails: Vec<(StreamId, u64)> = streams
        .iter()
        .map(|s| (*s, starts.get(s).map_or(1, |state| state.version() + 1)))
        .collect();
    store.will_read_streams_from(&tails).await?;
    let mut fold = FoldVisitor::new(keep_entries, batched, streams.len());
    fold.starts = starts;
    match batched && tails.len() >= PARALLEL_FOLD_STREAMS && may_block_in_place() {
        true => fold.visit_halves(store, &tails)?,
        false => fold.visit_slices(store, &tails).await?,
    }
    // The streams with no event after their checkpointed version.
    for (stream, state) in std::mem::take(&mut fold.starts) {
        let version = state.version();
        fold.folded.insert(stream, Ok((state, version)));
    }
    let again: Vec<(StreamId, u64)> = std::mem::take(&mut fold.again)
        .into_iter()
        .map(|s| (s, 1))
        .collect();
    fold.second_pass = true;
    fold.visit_slices(store, &again).await?;
    Ok(fold.folded)
}

/// Streams from which [`read_folded`]'s first pass is folded on two
/// threads, each half of them on one ([`FoldVisitor::visit_halves`]):
/// decoding and folding a day's register's pupils' histories (8.2M events
/// for 10,001 pupils) is nearly all of that import's time, on one core
/// of two. Below this, a thread is not worth starting.
const PARALLEL_FOLD_STREAMS: usize = 2 * FIRST_SLICE_STREAMS;

/// Folds the events [`EventStore::visit_streams`] hands it, stream by
/// stream, as [`read_folded`] says.
struct FoldVisitor<'k> {
    folded: HashMap<StreamId, Folded>,
    /// Streams folded with their entries, kept.
    keep_entries: &'k IdSet<StreamId>,
    /// Visited through `visit_streams` (else one stream at a time).
    batched: bool,
    /// Streams met holding a correction in the first pass (a correction
    /// is applied to the entry it names).
    again: Vec<StreamId>,
    /// The second pass: every stream folded with its entries, then let
    /// go of them.
    second_pass: bool,
    /// The stream being visited.
    visiting: Option<Visiting>,
    /// Events of the longest stream visited.
    longest: u64,
    /// The states streams are folded on from (see [`read_folded`]), each
    /// taken out when its stream's first event is visited.
    starts: Starts,
}

/// A stream [`FoldVisitor`] is visiting: its state so far and version, or
/// why it stopped folding it.
struct Visiting {
    stream: StreamId,
    /// The version of its first event visited.
    first: u64,
    version: u64,
    /// Folded with every entry (kept, or let go at the end).
    entries: bool,
    state: Result<CaseState, Stopped>,
}

enum Stopped {
    /// A correction, in a stream folded as facts only: visited again.
    Correction,
    /// A stored event that does not decode.
    Unreadable(StoreError),
}

/// Starts `work` on a thread of its own ("casebook-fold", in `runtime`'s
/// context: [`FoldVisitor::visit_halves`]).
fn on_fold_thread<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    runtime: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = T> + Send + 'scope,
) -> std::io::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    let runtime = runtime.clone();
    std::thread::Builder::new()
        .name("casebook-fold".into())
        .spawn_scoped(scope, move || {
            let _entered = runtime.enter();
            runtime.block_on(work)
        })
}

/// What a thread of [`on_fold_thread`] gave, once it has ended (its panic
/// goes on here), or why it could not be started.
fn joined<T>(
    thread: std::io::Result<std::thread::ScopedJoinHandle<'_, T>>,
) -> Result<T, StoreError> {
    match thread {
        Ok(thread) => Ok(thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
        Err(e) => Err(StoreError::io(
            "start a thread to read pupils' histories",
            e,
        )),
    }
}

impl<'k> FoldVisitor<'k> {
    /// A visitor of the first pass, with room for `streams` states.
    fn new(keep_entries: &'k IdSet<StreamId>, batched: bool, streams: usize) -> FoldVisitor<'k> {
        FoldVisitor {
            folded: HashMap::with_capacity(streams),
            keep_entries,
            batched,
            again: Vec::new(),
            second_pass: false,
            visiting: None,
            longest: 1,
            starts: Starts::default(),
        }
    }

    /// [`FoldVisitor::visit_slices`] of each half of `streams` on a thread
    /// of its own ([`on_fold_thread`]), the second with a visitor of its
    /// own, whose streams are then filed here after this one's: the same
    /// streams filed, the same states (each stream is folded alone), and
    /// the streams to visit again in the same order as one visitor's. The
    /// first error in stream order is returned (the first half's, if both
    /// failed). Blocks in place (a multi-threaded runtime's) while this
    /// thread waits for the two: a `block_on` on this thread, whose own
    /// `block_on` awaits the caller's other futures (the planner's look-up
    /// of the batch's ids, joined with this read), took the wake-ups
    /// meant for them; on PostgreSQL, where that look-up awaits the
    /// server, the import then waited for ever (session bi). A thread
    /// that cannot be started fails the read (the line that needs a pupil
    /// then reads it alone).
    fn visit_halves(
        &mut self,
        store: &dyn EventStore,
        streams: &[(StreamId, u64)],
    ) -> Result<(), StoreError> {
        let (first, second) = streams.split_at(streams.len() / 2);
        let mut other = FoldVisitor {
            second_pass: self.second_pass,
            longest: self.longest,
            ..FoldVisitor::new(self.keep_entries, self.batched, second.len())
        };
        for (stream, _) in second {
            if let Some(state) = self.starts.remove(stream) {
                other.starts.insert(*stream, state);
            }
        }
        let runtime = tokio::runtime::Handle::current();
        let (mine, theirs) = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let theirs = on_fold_thread(scope, &runtime, async {
                    let done = other.visit_slices(store, second).await;
                    (done, other)
                });
                let mine = on_fold_thread(scope, &runtime, self.visit_slices(store, first));
                (joined(mine), joined(theirs))
            })
        });
        mine??;
        let (theirs, other) = theirs?;
        theirs?;
        self.folded.extend(other.folded);
        self.starts.extend(other.starts);
        self.again.extend(other.again);
        self.longest = self.longest.max(other.longest);
        Ok(())
    }

    /// Visits `streams` (each from the version named with it) a slice at a
    /// time, filing each stream.
    async fn visit_slices(
        &mut self,
        store: &dyn EventStore,
        streams: &[(StreamId, u64)],
    ) -> Result<(), StoreError> {
        let (mut at, mut slice) = (0, FIRST_SLICE_STREAMS);
        while at < streams.len() {
            let end = streams.len().min(at + slice);
            if self.batched {
                store.visit_streams_from(&streams[at..end], self).await?;
            } else {
                for &(stream, from) in &streams[at..end] {
                    visit_stream_from(store, stream, from, self).await?;
                }
            }
            self.finish();
            let by_longest = PREFETCH_EVENTS / usize::try_from(self.longest).unwrap_or(usize::MAX);
            slice = by_longest.clamp(1, (2 * slice).min(PREFETCH_LINES));
            at = end;
        }
        Ok(())
    }

    /// Files the stream being visited.
    fn finish(&mut self) {
        let Some(v) = self.visiting.take() else {
            return;
        };
        self.longest = self.longest.max(v.version + 1 - v.first);
        match v.state {
            Ok(mut state) => {
                if self.second_pass && !self.keep_entries.contains(&v.stream) {
                    state.forget_entries();
                }
                self.folded.insert(v.stream, Ok((state, v.version)));
            }
            Err(Stopped::Unreadable(e)) => {
                self.folded.insert(v.stream, Err(e));
            }
            Err(Stopped::Correction) => self.again.push(v.stream),
        }
    }
}

impl crate::store::StreamVisitor for FoldVisitor<'_> {
    fn visit(&mut self, e: &crate::envelope::EventRef<'_>) -> Result<(), StoreError> {
        let (next, first) = match &self.visiting {
            Some(v) if v.stream == e.stream => (v.version + 1, false),
            _ => {
                self.finish();
                let entries = self.second_pass || self.keep_entries.contains(&e.stream);
                // Folded on from the checkpoint's state, or from nothing.
                let state = match self.starts.remove(&e.stream) {
                    Some(state) => state,
                    None => CaseState::new(),
                };
                let version = state.version();
                self.visiting = Some(Visiting {
                    stream: e.stream,
                    first: version + 1,
                    version,
                    entries,
                    state: Ok(state),
                });
                (version + 1, true)
            }
        };
        // A stream's events from the version asked (1, or after its
        // checkpointed facts), one after another, each stream once:
        // anything else is a damaged store (the planner then reads each
        // line's pupil on its own, and says what is wrong there).
        if e.version != next || (first && self.folded.contains_key(&e.stream)) {
            return Err(StoreError::Corrupt {
                location: format!("position {}", e.position),
                what: format!(
                    "a stream read in a batch gave version {} where {next} was due",
                    e.version
                ),
            });
        }
        let Some(v) = self.visiting.as_mut() else {
            return Ok(());
        };
        v.version = e.version;
        let Ok(state) = v.state.as_mut() else {
            return Ok(());
        };
        match stored_case_event(e.position, e.case_event()) {
            Ok(event) if v.entries => state.apply_owned(e.event_id, event),
            Ok(event) => {
                if !state.apply_facts_only(&event) {
                    v.state = Err(Stopped::Correction);
                }
            }
            Err(e) => v.state = Err(Stopped::Unreadable(e)),
        }
        Ok(())
    }
}

impl<'a> Planner<'a> {
    pub fn new(store: &'a dyn EventStore, school: &str, now: DateTime<Utc>) -> Planner<'a> {
        Planner {
            store,
            school: school.to_string(),
            now,
            pupils: IdMap::default(),
            order: Vec::new(),
            ids: IdMap::default(),
            duplicates: 0,
            events: 0,
            given_ids: false,
            sealer: None,
            prefetch: Prefetch::default(),
            carry: Carry::default(),
            deferred: Vec::new(),
            known: Known::Off,
            known_note: None,
            checked: Checked::NotYet,
        }
    }

    /// Folds each pupil's stored history on from the store's facts
    /// checkpoint ([`crate::known`]), read at the first look-up that folds
    /// [`crate::known::MIN_PUPILS`] stored pupils at once (a day's
    /// register for a school; an import of a few lines never reads it),
    /// and gathers the checkpoint to save once the plan is durable
    /// ([`ImportPlan::known`]). The plan is the same with or without it.
    pub fn with_known_facts(mut self) -> Planner<'a> {
        self.known = Known::Unread;
        self
    }

    /// Reads the facts checkpoint if it is due ([`Planner::with_known_facts`])
    /// before `streams` are folded, and takes out the states those not in
    /// `keep_entries` start from.
    async fn known_starts(
        &mut self,
        streams: &[StreamId],
        keep_entries: &IdSet<StreamId>,
    ) -> Starts {
        if matches!(self.known, Known::Unread) && streams.len() >= crate::known::MIN_PUPILS {
            let read = match crate::known::load(self.store).await {
                Ok(crate::known::Loaded::Usable(facts)) => facts,
                Ok(crate::known::Loaded::None) => Default::default(),
                Ok(crate::known::Loaded::Unusable(why)) => {
                    self.known_note = Some(format!("the facts checkpoint was not used ({why}); every pupil's history was read, and the import saves a new one"));
                    Default::default()
                }
                Err(e) => {
                    self.known_note = Some(format!("the facts checkpoint could not be read ({e}); every pupil's history was read, and the import saves a new one"));
                    Default::default()
                }
            };
            self.known = Known::Read(read);
        }
        let Known::Read(facts) = &mut self.known else {
            return Starts::default();
        };
        let mut starts = Starts::default();
        if facts.is_empty() {
            return starts;
        }
        for stream in streams {
            if keep_entries.contains(stream) {
                // Judged against every entry: folded from its first.
                facts.pupils.remove(stream);
            } else if let Some(state) = facts.take(stream) {
                starts.insert(*stream, state);
            }
        }
        starts
    }

    /// Seals personal-data fields with `sealer` before encoding each event
    /// (see [`crate::seal`]).
    pub fn with_sealer(mut self, sealer: &'a dyn crate::seal::PayloadSealer) -> Planner<'a> {
        self.sealer = Some(sealer);
        self
    }

    /// The payload of `event` as stored: sealed when a sealer is set.
    fn payload(
        sealer: Option<&dyn crate::seal::PayloadSealer>,
        line: usize,
        stream: StreamId,
        event_id: Uuid,
        event: &CaseEvent,
    ) -> Result<Vec<u8>, ImportError> {
        let sealed;
        let event = match sealer {
            // Most events (register marks) have nothing to seal.
            Some(s) if !crate::seal::sealed_fields(event.type_name()).is_empty() => {
                sealed = s
                    .seal_event(stream, event_id, event)
                    .map_err(|e| ImportError::line(line, e.to_string()))?;
                &sealed
            }
            _ => event,
        };
        encode_payload(event).map_err(|e| ImportError::line(line, e.to_string()))
    }

    /// True when [`Planner::pupil`] has what it needs without the store:
    /// the pupil's state is planned, carried or its stream prefetched.
    fn pupil_ready(&self, stream: &StreamId) -> bool {
        self.pupils.contains_key(stream)
            || self.carry.pupils.contains_key(stream)
            || self.prefetch.streams.contains(stream)
    }

    /// The pupil's plan: planned or carried, or made on first use from the
    /// prefetch's folded state of the stored stream. The caller has made
    /// sure it is ready ([`Planner::pupil_ready`]: [`Planner::add_to`]
    /// reads a stream not prefetched into the prefetch).
    fn pupil(&mut self, line: usize, stream: StreamId) -> Result<&mut PupilPlan, ImportError> {
        // Planned already for every line of a pupil but its first in the
        // batch: then one look-up.
        let vacant = match self.pupils.entry(stream) {
            std::collections::hash_map::Entry::Occupied(planned) => return Ok(planned.into_mut()),
            std::collections::hash_map::Entry::Vacant(vacant) => vacant,
        };
        let mut plan = match self.carry.pupils.remove(&stream) {
            Some(carried) => carried,
            None => {
                if !self.prefetch.streams.contains(&stream) {
                    return Err(ImportError::line(line, "internal: pupil stream not read"));
                }
                let (state, base_version) = match self.prefetch.folded.remove(&stream) {
                    Some(folded) => folded.map_err(|source| ImportError::Store { line, source })?,
                    // A stream with no events: a new pupil.
                    None => (CaseState::new(), 0),
                };
                PupilPlan {
                    index: 0,
                    state,
                    base_version,
                    events: Vec::new(),
                    unchecked: Vec::new(),
                }
            }
        };
        // At most `MAX_EVENTS_PER_APPEND` pupils with events a plan.
        plan.index = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
        self.order.push(stream);
        Ok(vacant.insert(plan))
    }

    /// Validates one line and adds it to the plan.
    pub async fn add(&mut self, l: ImportLine) -> Result<(), ImportError> {
        let stream = StreamId::for_pupil(&self.school, &l.pupil);
        self.add_to(l, stream).await
    }

    /// [`Planner::add`] of a line whose pupil's stream is `stream`: the
    /// synchronous [`Planner::add_now`], with the store read it asks for
    /// (an id not prefetched, a pupil's stream not prefetched, or, for a
    /// correction, the entries of a pupil held as facts only) done here
    /// and kept, then `add_now` again with the same event.
    async fn add_to(&mut self, l: ImportLine, stream: StreamId) -> Result<(), ImportError> {
        match self.add_now(l, stream, None, 0)? {
            None => Ok(()),
            Some(waiting) => self.resume(waiting, stream).await,
        }
    }

    /// The rest of [`Planner::add_to`] for a line that waits on a store
    /// read.
    async fn resume(
        &mut self,
        mut waiting: Box<Waiting>,
        stream: StreamId,
    ) -> Result<(), ImportError> {
        loop {
            let line = waiting.line.line;
            match waiting.lookup {
                Lookup::Id(id) => {
                    let fetched = self
                        .store
                        .find_event(id)
                        .await
                        .map_err(|source| ImportError::Store { line, source })?;
                    // A look-up that does not say through where it saw the
                    // log (`add`, which does not prefetch, or a prefetch
                    // that failed): the writer looks up every id of the
                    // batch.
                    self.checked.saw(None);
                    self.prefetch.ids.insert(id);
                    if let Some(stored) = fetched {
                        self.prefetch.found.insert(id, stored);
                    }
                }
                Lookup::Stream => {
                    // Folded as the prefetch folds it, with its entries
                    // for a correction.
                    let mut keep = IdSet::default();
                    if matches!(waiting.line.event, CaseEvent::EntryCorrected(_)) {
                        keep.insert(stream);
                    }
                    let folded =
                        read_folded(self.store, &[stream], &keep, false, Starts::default())
                            .await
                            .map_err(|source| ImportError::Store { line, source })?;
                    self.prefetch.streams.insert(stream);
                    self.prefetch.folded.extend(folded);
                }
                Lookup::Entries => {
                    // The pupil's state holds the facts of its stored
                    // events but not their entries, which a correction is
                    // judged against: read them again, for this pupil.
                    let store_error = |source| ImportError::Store { line, source };
                    let stored = read_whole_stream(self.store, stream)
                        .await
                        .map_err(store_error)?;
                    let plan = self.pupil(line, stream)?;
                    let wanted =
                        usize::try_from(plan.state.facts_only_events()).unwrap_or(usize::MAX);
                    let events = stored
                        .iter()
                        .take(wanted)
                        .map(|s| Ok((s.event_id, stored_case_event(s.position, s.case_event())?)))
                        .collect::<Result<Vec<_>, StoreError>>()
                        .map_err(store_error)?;
                    if !plan.state.complete(events) {
                        return Err(store_error(StoreError::Corrupt {
                            location: format!("the stream of line {line}'s pupil"),
                            what: format!(
                                "holds {} events, fewer than the {wanted} read before",
                                stored.len()
                            ),
                        }));
                    }
                }
            }
            let Waiting { line, new, .. } = *waiting;
            waiting = match self.add_now(line, stream, Some(new), 0)? {
                None => return Ok(()),
                Some(w) => w,
            };
        }
    }

    /// Validates one line and adds it to the plan when everything it needs
    /// is in memory (the plan, the batch in flight, the prefetch): `None`.
    /// Otherwise the line and its event come back with the store read
    /// wanted, and [`Planner::add_to`] calls again with `new` once that is
    /// in the prefetch; nothing was changed in between, so the line is
    /// judged exactly as if the read had been done where it is needed. Not
    /// async, so the bulk of [`Planner::add_many`]'s lines are not moved
    /// through a future's state. `run`: the lines from this one on of the
    /// same pupil, the room its plan is given if this is its first event
    /// of the batch (0: none asked for).
    fn add_now(
        &mut self,
        mut l: ImportLine,
        stream: StreamId,
        new: Option<NewEvent>,
        run: usize,
    ) -> Result<Option<Box<Waiting>>, ImportError> {
        self.given_ids |= l.id.is_some();
        let new = match new {
            Some(new) => new,
            None => {
                let event_id = l.id.unwrap_or_else(Uuid::now_v7);
                NewEvent {
                    event_id,
                    occurred_at: l.occurred_at,
                    // The line's own actor is not needed again.
                    actor: std::mem::take(&mut l.actor),
                    correlation_id: None,
                    causation_id: None,
                    event_type: l.event.type_name().into(),
                    schema: CURRENT_SCHEMA,
                    payload: Self::payload(self.sealer, l.line, stream, event_id, &l.event)?,
                }
            }
        };
        if let Some(id) = l.id {
            if let Some(&(first_line, earlier, at)) = self.ids.get(&id) {
                let earlier_stream = self.order.get(earlier as usize).copied();
                let earlier = earlier_stream
                    .and_then(|s| self.pupils.get(&s))
                    .and_then(|p| p.events.get(at as usize));
                if earlier == Some(&new) && earlier_stream == Some(stream) {
                    self.duplicates += 1;
                    return Ok(None);
                }
                return Err(ImportError::line(
                    l.line,
                    format!("field id: {id} was used on line {first_line} with different content"),
                ));
            }
            if self.carry.ids.contains_key(&id) {
                // Written by the batch in flight: a duplicate if that event
                // has the same content, else refused; decided against the
                // store once it is durable (`Pipeline::plan`). Either way
                // this line adds nothing, so the lines after it plan the same.
                self.duplicates += 1;
                self.deferred.push(Deferred {
                    line: l.line,
                    id,
                    stream,
                    new,
                });
                return Ok(None);
            }
            if !self.prefetch.ids.contains(&id) {
                return Ok(Some(Box::new(Waiting {
                    line: l,
                    new,
                    lookup: Lookup::Id(id),
                })));
            }
            if let Some(stored) = self.prefetch.found.get(&id) {
                if stored.stream == stream && new.same_content_as(stored) {
                    self.duplicates += 1;
                    return Ok(None);
                }
                return Err(stored_elsewhere(l.line, id, stored));
            }
        }
        if !self.pupil_ready(&stream) {
            return Ok(Some(Box::new(Waiting {
                line: l,
                new,
                lookup: Lookup::Stream,
            })));
        }
        let now = self.now;
        let sealer = self.sealer;
        let plan = self.pupil(l.line, stream)?;
        if matches!(l.event, CaseEvent::EntryCorrected(_)) && !plan.state.is_complete() {
            return Ok(Some(Box::new(Waiting {
                line: l,
                new,
                lookup: Lookup::Entries,
            })));
        }
        let command = Command::Record(Record {
            event: l.event,
            occurred_at: l.occurred_at,
            now,
        });
        let events = decide_owned(&plan.state, command).map_err(|source| match source {
            // Name the field: the pupil reference is what is wrong (or
            // its PupilRegistered line is missing from the file).
            DomainError::NotRegistered { .. } => {
                ImportError::line(l.line, format!("field pupil: {:?}: {source}", l.pupil))
            }
            source => ImportError::Domain {
                line: l.line,
                source,
            },
        })?;
        let count = events.len();
        let mut first = Some(new);
        for event in events {
            // The first event is the line's own (its id looked up, or
            // minted if it has none); any further one copies its envelope
            // with a new (minted) id, type and payload.
            let minted = first.is_none() || l.id.is_none();
            let new = match first.take() {
                Some(new) => new,
                None => {
                    let mut next = plan
                        .events
                        .last()
                        .cloned()
                        .ok_or_else(|| ImportError::line(l.line, "internal: event missing"))?;
                    next.event_id = Uuid::now_v7();
                    next.event_type = event.type_name().into();
                    next.payload = Self::payload(sealer, l.line, stream, next.event_id, &event)?;
                    next
                }
            };
            plan.state.apply_owned(new.event_id, event);
            if plan.events.is_empty() {
                plan.events.reserve(run);
            }
            if minted {
                // A plan holds at most `MAX_EVENTS_PER_APPEND` events.
                plan.unchecked.push(plan.events.len() as u32);
            }
            plan.events.push(new);
        }
        let (last, index) = (plan.events.len().checked_sub(1), plan.index);
        self.events += count;
        if let (Some(id), Some(at)) = (l.id, last) {
            // A plan holds at most `MAX_EVENTS_PER_APPEND` events.
            self.ids.insert(id, (l.line, index, at as u32));
        }
        Ok(None)
    }

    /// Validates lines in order and adds them to the plan, exactly as
    /// [`Planner::add`] one by one would (same plan, same first error), but
    /// looks up the stored events of the lines' ids and the stored streams
    /// of their pupils in batches of [`PREFETCH_LINES`] lines: one batched
    /// id look-up and the streams visited a slice at a time
    /// ([`read_folded`]) per batch, instead of one or two reads per line.
    pub async fn add_many(
        &mut self,
        lines: impl IntoIterator<Item = ImportLine>,
    ) -> Result<(), ImportError> {
        // A `Vec` (every caller's) is taken as it is, not moved line by
        // line into chunks: each line is moved once, into `add_now`.
        let lines: Vec<ImportLine> = lines.into_iter().collect();
        let mut lines = lines.into_iter();
        loop {
            let n = lines.len().min(PREFETCH_LINES);
            if n == 0 {
                return Ok(());
            }
            self.prefetch(&lines.as_slice()[..n]).await;
            let streams = std::mem::take(&mut self.prefetch.line_streams);
            for (stream, run) in streams {
                // `n` lines are left: one for each stream.
                let Some(l) = lines.next() else { break };
                if let Some(waiting) = self.add_now(l, stream, None, run)? {
                    // A store read (an id or stream the prefetch could not
                    // look up): the rest of `add_to`, from that read on.
                    self.resume(waiting, stream).await?;
                }
            }
        }
    }

    /// Looks up, in one batch each, the stored events of `lines`' ids and
    /// the stored streams of their pupils that `add` would otherwise read
    /// one at a time. A failed lookup is dropped: `add` then reads one at a
    /// time and reports the failure at the line that needs it, as before.
    async fn prefetch(&mut self, lines: &[ImportLine]) {
        // Earlier batches' leftovers are no longer needed (bounded memory),
        // but the facts of the pupils read and not planned.
        self.put_back_unplanned();
        self.prefetch = Prefetch::default();
        let mut ids = Vec::with_capacity(lines.len());
        let mut streams = Vec::new();
        let mut seen_ids = IdSet::with_capacity_and_hasher(lines.len(), IdHash::default());
        let mut seen_streams = IdSet::default();
        let mut keep_entries = IdSet::default();
        let mut line_streams = Vec::with_capacity(lines.len());
        let mut last: Option<(&str, StreamId, bool)> = None;
        for l in lines {
            if let Some(id) = l.id {
                if !self.ids.contains_key(&id)
                    && !self.carry.ids.contains_key(&id)
                    && seen_ids.insert(id)
                {
                    ids.push(id);
                }
            }
            // A file usually holds a pupil's lines together: derive each
            // run's stream, and whether it is stored, once.
            let (stream, stored, first) = match last {
                Some((pupil, stream, stored)) if pupil == l.pupil => (stream, stored, false),
                _ => {
                    let stream = StreamId::for_pupil(&self.school, &l.pupil);
                    let stored = !self.pupils.contains_key(&stream)
                        && !self.carry.pupils.contains_key(&stream);
                    (stream, stored, true)
                }
            };
            last = Some((&l.pupil, stream, stored));
            line_streams.push((stream, 1));
            if stored && first && seen_streams.insert(stream) {
                streams.push(stream);
            }
            if stored && matches!(l.event, CaseEvent::EntryCorrected(_)) {
                // Judged against every entry: read with them.
                keep_entries.insert(stream);
            }
        }
        // Each line's run: the lines from it on of the same stream.
        let mut after = None;
        for (stream, run) in line_streams.iter_mut().rev() {
            if let Some((next, next_run)) = after {
                if next == *stream {
                    *run += next_run;
                }
            }
            after = Some((*stream, *run));
        }
        self.prefetch.line_streams = line_streams;
        // Room for this batch's ids at once, not by doubling.
        self.ids.reserve(ids.len());
        let starts = match streams.is_empty() {
            true => Starts::default(),
            false => self.known_starts(&streams, &keep_entries).await,
        };
        let store = self.store;
        let find = async {
            match ids.is_empty() {
                true => Ok((HashMap::new(), None)),
                false => store.find_events_checked(&ids).await,
            }
        };
        let read = async {
            match streams.is_empty() {
                true => Ok(HashMap::new()),
                false => read_folded(store, &streams, &keep_entries, true, starts).await,
            }
        };
        let (found, folded) = tokio::join!(find, read);
        if let Ok((found, seen)) = found {
            // What this batch's look-up saw (none made, nothing to say).
            if !ids.is_empty() {
                self.checked.saw(seen);
            }
            self.prefetch.ids = seen_ids;
            self.prefetch.found = found;
        }
        if let Ok(folded) = folded {
            self.prefetch.streams = seen_streams;
            self.prefetch.folded = folded;
        }
    }

    /// Puts the pupils the prefetch read and no line planned (every line
    /// of theirs a duplicate) back among the facts checkpoint's, folded to
    /// their stored versions: taken out to start their folds
    /// ([`Planner::known_starts`]), they were left out of the checkpoint
    /// the import saves, and the next import read each of their whole
    /// histories again (a re-run of a file already imported, 20,000
    /// lines on a store of 32.1M events: 3.6–9.1 s on a checkpoint
    /// without them, 0.36 s on one with them; docs/performance.md,
    /// "Session bi").
    fn put_back_unplanned(&mut self) {
        let Known::Read(facts) = &mut self.known else {
            return;
        };
        for (stream, folded) in self.prefetch.folded.drain() {
            if let Ok((state, version)) = folded {
                if state.version() == version {
                    facts.put_back(stream, state);
                }
            }
        }
    }

    /// The validated plan.
    pub fn finish(mut self) -> ImportPlan {
        self.put_back_unplanned();
        let (events, duplicates, minted) = (self.events, self.duplicates, !self.given_ids);
        let known = std::mem::replace(&mut self.known, Known::Off);
        let known_note = self.known_note.take();
        let (requests, carry, checked) = self.finish_batch();
        // Every pupil planned, at the version the plan leaves it (its
        // stored events and the plan's, folded as a read of them would).
        let (known, known_note) = match known {
            Known::Read(facts) => {
                let planned = carry
                    .pupils
                    .iter()
                    .filter(|(_, p)| p.state.version() == p.base_version)
                    .map(|(stream, p)| (*stream, &p.state));
                match facts.gather(planned) {
                    Ok(gathered) => (Some(gathered), known_note),
                    Err(e) => (
                        None,
                        Some(format!("the facts checkpoint could not be written ({e}); the next import reads every pupil's history")),
                    ),
                }
            }
            Known::Off | Known::Unread => (None, known_note),
        };
        ImportPlan {
            requests,
            events,
            duplicates,
            minted,
            checked,
            known,
            known_note,
        }
    }
}

impl Planner<'_> {
    /// The batch's requests, one per pupil with events, in the order the
    /// pupils first came, each expecting the version it was validated
    /// against; and the state the next batch continues from: every pupil
    /// of this batch at the version its request leaves it, and this
    /// batch's ids.
    fn finish_batch(mut self) -> (Vec<AppendRequest>, Carry, Option<IdsChecked>) {
        let mut requests = Vec::new();
        // The events whose ids were not looked up, by their index among
        // the batch's.
        let mut unchecked = Vec::new();
        let mut offset = 0u32;
        for stream in &self.order {
            let Some(p) = self.pupils.get_mut(stream) else {
                continue;
            };
            let minted = std::mem::take(&mut p.unchecked);
            if p.events.is_empty() {
                continue;
            }
            unchecked.extend(minted.iter().map(|&i| offset + i));
            // At most `MAX_EVENTS_PER_APPEND` events a batch.
            offset += p.events.len() as u32;
            let events = std::mem::take(&mut p.events);
            let expected = if p.base_version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(p.base_version)
            };
            p.base_version += events.len() as u64;
            requests.push(AppendRequest {
                stream: *stream,
                expected,
                events,
            });
        }
        let carry = Carry {
            pupils: self.pupils,
            ids: self.ids,
        };
        let checked = match self.checked {
            Checked::Saw(seen) => Some(IdsChecked::new(seen, unchecked, &requests)),
            Checked::NotYet | Checked::Unknown => None,
        };
        (requests, carry, checked)
    }
}

/// The append of the batch in flight.
type AppendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Appended>, StoreError>> + Send + 'a>>;

struct InFlight<'a> {
    append: AppendFuture<'a>,
    events: usize,
    duplicates: usize,
}

/// One batch planned by [`Pipeline::plan`], ready for [`Pipeline::submit`].
pub struct Batch {
    appends: Appends,
    /// What the planner's look-ups of its ids found ([`IdsChecked`]).
    checked: Option<IdsChecked>,
    events: usize,
    duplicates: usize,
    carry: Carry,
}

/// A batch's requests, sealed ahead or not.
enum Appends {
    Plain(Vec<AppendRequest>),
    /// Sealed ahead, at the head the batch before it leaves.
    Presealed(Presealed),
}

impl Appends {
    fn requests(&self) -> &[AppendRequest] {
        match self {
            Appends::Plain(requests) => requests,
            Appends::Presealed(p) => p.requests(),
        }
    }

    fn into_requests(self) -> Vec<AppendRequest> {
        match self {
            Appends::Plain(requests) => requests,
            Appends::Presealed(p) => p.into_requests(),
        }
    }
}

impl Batch {
    /// Events the batch writes.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Lines of the batch skipped as duplicates.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// What the batch appends, one request per pupil stream.
    pub fn requests(&self) -> &[AppendRequest] {
        self.appends.requests()
    }
}

/// `requests` sealed as the next append after `head`, recorded now but
/// never before `last` (the batch sealed before them), until `stop` says
/// so (the writer seals the rest), or as they are when they cannot be
/// sealed ahead.
fn seal_at(
    head: Head,
    last: Option<DateTime<Utc>>,
    requests: Vec<AppendRequest>,
    stop: &mut dyn FnMut() -> bool,
) -> Appends {
    let now = Utc::now();
    let recorded_at = last.map_or(now, |last| now.max(last));
    match Presealed::seal_until(head, recorded_at, requests, stop) {
        Ok(p) => Appends::Presealed(p),
        Err(requests) => Appends::Plain(requests),
    }
}

/// Whether the batch in flight has been answered (polled once, without
/// waiting; its answer kept in `acked`), or none is in flight: when
/// sealing ahead stops.
fn answered(
    in_flight: &mut Option<InFlight<'_>>,
    acked: &mut Option<Result<Vec<Appended>, StoreError>>,
) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    poll_answer(in_flight, acked, &mut cx);
    acked.is_some() || in_flight.is_none()
}

/// Polls the batch in flight, if any and not yet answered, keeping its
/// answer in `acked` once it comes.
fn poll_answer(
    in_flight: &mut Option<InFlight<'_>>,
    acked: &mut Option<Result<Vec<Appended>, StoreError>>,
    cx: &mut std::task::Context<'_>,
) {
    if acked.is_some() {
        return;
    }
    if let Some(f) = in_flight.as_mut() {
        if let Poll::Ready(answer) = f.append.as_mut().poll(cx) {
            *acked = Some(answer);
        }
    }
}

/// Where the next batch is sealed ahead: the head the batch before it
/// leaves, known when that batch was sealed whole, else told by the
/// writer once it has staged that batch.
enum Ahead {
    At(Head),
    Staged(tokio::sync::oneshot::Receiver<Head>),
}

/// Polls `fut` to its end, polling the batch in flight beside it (its
/// answer kept in `acked`): the batch reaches the writer's queue even when
/// the queue was full at its submission, and its answer is taken as soon
/// as it comes.
async fn beside_in_flight<F: Future>(
    fut: F,
    in_flight: &mut Option<InFlight<'_>>,
    acked: &mut Option<Result<Vec<Appended>, StoreError>>,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        poll_answer(in_flight, acked, cx);
        fut.as_mut().poll(cx)
    })
    .await
}

/// A batched, durable import in which each batch is validated while the
/// batch before it is being sealed, written and fdatasync'd by the store's
/// writer: the work of a series of serial imports (one [`Planner`] and one
/// `append_atomic` per batch), with the planning of batch k+1 overlapping
/// the write of batch k.
///
/// Exactly as serial: batch k+1 is validated against what batch k will
/// have written (its pupils' state and stream versions, its ids) and
/// against the store for everything else; it is handed to the writer only
/// once batch k is acknowledged, so at most one batch is in flight and a
/// batch that fails (a version conflict with a concurrent writer, a write
/// error) is reported before anything after it is written. A line of
/// batch k+1 repeating an id of batch k is checked against the stored
/// event once batch k is durable, and the first error of a batch is the
/// one a fresh planner would report, at the same line. A batch expects
/// the versions its predecessor leaves, so a concurrent append to one of
/// its pupils in between fails the batch cleanly (nothing of it written).
///
/// Memory: the lines and requests of two batches, the state of the pupils
/// of the batch in flight and its ids; state is dropped once the next
/// batch no longer needs it.
///
/// Sealing ahead: on a store that can use it ([`EventStore::seals_ahead`],
/// the segment engine), batch k+1's events are also sealed on the caller's
/// thread while batch k is written ([`Presealed`]: encoded and hashed,
/// continuing the chain where batch k will leave it), until batch k is
/// answered: from then on the writer would wait, so it gets the batch with
/// what was sealed of it (a prefix of its events) and seals the rest
/// itself, at the prefix's `recorded_at`. The writer adopts a prefix only
/// if its log is where the pipeline expected, and seals every event itself
/// otherwise: what is stored is the same either way, but for
/// `recorded_at`, which is the time the batch was sealed ahead (before it
/// was submitted) instead of the time its group began. Where a batch
/// sealed in part leaves the log, the writer tells once it has staged it
/// ([`Presealed::staged_head`]), and the next batch is sealed ahead from
/// there. Once the batch before it is acknowledged, a batch not sealed
/// where the log then is (the first, or another writer appended in
/// between) is handed to the writer unsealed, and the batches after it are
/// sealed ahead again ([`Pipeline::sealing_whole_batches`]: every batch
/// sealed whole here instead, as before).
///
/// Dropping a pipeline does not take back a batch already submitted (the
/// writer has it, as with any append whose caller went away): call
/// [`Pipeline::flush`] to learn its outcome. After an error, the pipeline
/// carries nothing and the next batch is planned against the store.
pub struct Pipeline<'a> {
    store: &'a dyn EventStore,
    school: String,
    now: DateTime<Utc>,
    sealer: Option<&'a dyn crate::seal::PayloadSealer>,
    /// The state of the batch in flight (or last acknowledged).
    carry: Carry,
    in_flight: Option<InFlight<'a>>,
    events: u64,
    duplicates: u64,
    /// Time spent planning ([`Pipeline::planning`]).
    planning: std::time::Duration,
    /// Time spent sealing ahead ([`Pipeline::sealing_ahead`]).
    sealing: std::time::Duration,
    /// Time spent waiting for the writer ([`Pipeline::waiting`]).
    waiting: std::time::Duration,
    /// Whether batches are sealed ahead: the store can use them.
    seal_ahead: bool,
    /// Whether a batch is sealed ahead whole, however long the writer has
    /// been idle ([`Pipeline::sealing_whole_batches`]).
    seal_whole: bool,
    /// Where the next batch is sealed ahead: the head the batch before it
    /// leaves, if it was sealed (in whole or in part).
    ahead: Option<Ahead>,
    /// Batches submitted sealed ahead.
    sealed_ahead: u64,
    /// The `recorded_at` of the last batch sealed ahead (the next is never
    /// earlier).
    ahead_recorded: Option<DateTime<Utc>>,
}

impl<'a> Pipeline<'a> {
    pub fn new(store: &'a dyn EventStore, school: &str, now: DateTime<Utc>) -> Pipeline<'a> {
        Pipeline {
            store,
            school: school.to_string(),
            now,
            sealer: None,
            carry: Carry::default(),
            in_flight: None,
            events: 0,
            duplicates: 0,
            planning: std::time::Duration::ZERO,
            sealing: std::time::Duration::ZERO,
            waiting: std::time::Duration::ZERO,
            seal_ahead: store.seals_ahead(),
            seal_whole: false,
            ahead: None,
            sealed_ahead: 0,
            ahead_recorded: None,
        }
    }

    /// Wall time spent sealing batches ahead on the caller's thread (see
    /// the type's documentation), summed over the batches planned so far.
    pub fn sealing_ahead(&self) -> std::time::Duration {
        self.sealing
    }

    /// Wall time spent waiting for the store's writer, summed over the
    /// batches so far: for where a batch in flight leaves the log (when it
    /// was sealed in part), for its answer (when it comes after the next
    /// batch is planned and sealed as far as it goes), and in
    /// [`Pipeline::flush`].
    pub fn waiting(&self) -> std::time::Duration {
        self.waiting
    }

    /// Never seals batches ahead: each is sealed by the store's writer, as
    /// any append (for measuring the import without it).
    pub fn without_sealing_ahead(mut self) -> Pipeline<'a> {
        self.seal_ahead = false;
        self
    }

    /// Seals each batch ahead whole, as the pipeline did before it learnt
    /// to stop when the batch in flight is answered: the writer then waits
    /// while the pipeline seals the rest (for measuring the difference).
    pub fn sealing_whole_batches(mut self) -> Pipeline<'a> {
        self.seal_whole = true;
        self
    }

    /// Batches submitted sealed ahead so far (the store's writer adopts
    /// them where the log is as expected).
    pub fn batches_sealed_ahead(&self) -> u64 {
        self.sealed_ahead
    }

    /// Wall time spent validating batches ([`Planner::add_many`], with the
    /// store reads it makes), summed over the batches planned so far: with
    /// the store's writer timings, where an import's time goes.
    pub fn planning(&self) -> std::time::Duration {
        self.planning
    }

    /// Tells the store that about `events` more lines are coming in this
    /// pipeline's batches (an import of known size: its whole size at the
    /// start), so that it makes room for their events at once instead of
    /// growing as they come ([`EventStore::expect_appends`]). A hint: what
    /// is stored does not depend on it, and a later call replaces it.
    pub fn expect_events(&self, events: u64) {
        self.store.expect_appends(events);
    }

    /// Seals personal-data fields with `sealer` ([`Planner::with_sealer`]).
    pub fn with_sealer(mut self, sealer: &'a dyn crate::seal::PayloadSealer) -> Pipeline<'a> {
        self.sealer = Some(sealer);
        self
    }

    /// Validates `lines` as the next batch while the batch in flight is
    /// written, then waits for that batch to be durable. Returns the plan
    /// of `lines` (not yet submitted), or the first error: the batch in
    /// flight's write error first, else the first line of `lines` a fresh
    /// [`Planner`] would refuse once that batch is written.
    pub async fn plan(
        &mut self,
        lines: impl IntoIterator<Item = ImportLine>,
    ) -> Result<Batch, ImportError> {
        let mut planner = Planner::new(self.store, &self.school, self.now);
        planner.sealer = self.sealer;
        planner.carry = std::mem::take(&mut self.carry);
        let ahead = self.ahead.take();
        let mut in_flight = self.in_flight.take();
        let mut acked = None;
        let started = std::time::Instant::now();
        let planned = beside_in_flight(planner.add_many(lines), &mut in_flight, &mut acked).await;
        self.planning += started.elapsed();
        let deferred = std::mem::take(&mut planner.deferred);
        let mut sealing = std::time::Duration::ZERO;
        let planned = match planned {
            Ok(()) => {
                let (events, duplicates) = (planner.events, planner.duplicates);
                let (requests, carry, checked) = planner.finish_batch();
                // Sealed ahead where the batch in flight leaves the log,
                // while it is written: until its answer comes, when the
                // writer would otherwise idle, and the rest is the
                // writer's to seal.
                let head = match ahead {
                    Some(Ahead::At(head)) => Some(head),
                    Some(Ahead::Staged(staged)) => {
                        let started = std::time::Instant::now();
                        let head = beside_in_flight(staged, &mut in_flight, &mut acked).await;
                        self.waiting += started.elapsed();
                        head.ok()
                    }
                    None => None,
                };
                let appends = match head {
                    Some(head) if self.seal_ahead => {
                        let started = std::time::Instant::now();
                        let whole = self.seal_whole;
                        let mut stop = || !whole && answered(&mut in_flight, &mut acked);
                        let appends = seal_at(head, self.ahead_recorded, requests, &mut stop);
                        sealing += started.elapsed();
                        appends
                    }
                    _ => Appends::Plain(requests),
                };
                Ok(Batch {
                    appends,
                    checked,
                    events,
                    duplicates,
                    carry,
                })
            }
            Err(e) => Err(e),
        };
        let acked = match (acked, in_flight) {
            (Some(answer), Some(f)) => Some((answer, f.events, f.duplicates)),
            (None, Some(f)) => {
                let started = std::time::Instant::now();
                let answer = f.append.await;
                self.waiting += started.elapsed();
                Some((answer, f.events, f.duplicates))
            }
            (_, None) => None,
        };
        if let Some((acked, events, duplicates)) = acked {
            acked.map_err(ImportError::Write)?;
            self.events += events as u64;
            self.duplicates += duplicates as u64;
        }
        // The ids repeated from the batch just acknowledged, in line order;
        // all come before `planned`'s error, if any.
        for d in deferred {
            let stored =
                self.store
                    .find_event(d.id)
                    .await
                    .map_err(|source| ImportError::Store {
                        line: d.line,
                        source,
                    })?;
            match stored {
                Some(s) if s.stream == d.stream && d.new.same_content_as(&s) => {}
                Some(s) => return Err(stored_elsewhere(d.line, d.id, &s)),
                None => {
                    return Err(ImportError::line(
                        d.line,
                        format!("internal: id {} of the previous batch is not stored", d.id),
                    ))
                }
            }
        }
        let mut batch = planned?;
        if self.seal_ahead {
            // Nothing is in flight now: the log's head is where this batch
            // goes (unless another writer appends first; the writer checks).
            // A batch not sealed there (the first, or the log moved) is
            // handed to the writer to seal there, none of it sealed here
            // (the writer is idle): it tells where it leaves the log, and
            // the batches after it are sealed ahead again. (Sealing whole
            // batches, it is sealed there, whole.)
            let started = std::time::Instant::now();
            if let Ok(head) = self.store.head().await {
                let sealed_there =
                    matches!(&batch.appends, Appends::Presealed(p) if p.head() == head);
                if !sealed_there {
                    let requests = batch.appends.into_requests();
                    let whole = self.seal_whole;
                    batch.appends = seal_at(head, self.ahead_recorded, requests, &mut || !whole);
                    sealing += started.elapsed();
                }
            }
        }
        self.sealing += sealing;
        Ok(batch)
    }

    /// Hands `batch` to the store's writer and returns without waiting for
    /// it to be durable (the next [`Pipeline::plan`] or
    /// [`Pipeline::flush`] waits). Waits first for any batch still in
    /// flight, so batches are written in order, one at a time. Batches are
    /// meant to alternate `plan`, `submit`: a batch planned before its
    /// predecessor was submitted did not see it, and the store refuses it
    /// (version or id conflict) rather than write it twice.
    pub async fn submit(&mut self, mut batch: Batch) -> Result<(), ImportError> {
        self.flush().await?;
        // The next batch is sealed ahead where this one leaves the log:
        // known now if it is sealed whole, else once the writer has
        // staged it.
        self.ahead = match &mut batch.appends {
            Appends::Presealed(p) => {
                self.ahead_recorded = Some(p.recorded_at());
                Some(match p.is_complete() {
                    true => Ahead::At(p.end()),
                    false => Ahead::Staged(p.staged_head()),
                })
            }
            Appends::Plain(_) => None,
        };
        if batch.requests().is_empty() {
            self.duplicates += batch.duplicates as u64;
            self.carry = batch.carry;
            return Ok(());
        }
        let mut append = match (batch.appends, batch.checked) {
            (Appends::Presealed(p), checked) => {
                self.sealed_ahead += 1;
                self.store.append_presealed(p.with_checked(checked))
            }
            (Appends::Plain(requests), Some(checked)) => {
                self.store.append_atomic_checked(requests, checked)
            }
            (Appends::Plain(requests), None) => self.store.append_atomic(requests),
        };
        // Poll once: the store takes the batch now (a writer thread's
        // queue), and writes it while the caller plans the next one.
        let first = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(Err(e)) => return Err(ImportError::Write(e)),
            Poll::Ready(Ok(_)) => {
                self.events += batch.events as u64;
                self.duplicates += batch.duplicates as u64;
            }
            Poll::Pending => {
                self.in_flight = Some(InFlight {
                    append,
                    events: batch.events,
                    duplicates: batch.duplicates,
                })
            }
        }
        self.carry = batch.carry;
        Ok(())
    }

    /// [`Pipeline::plan`] then [`Pipeline::submit`].
    pub async fn push(
        &mut self,
        lines: impl IntoIterator<Item = ImportLine>,
    ) -> Result<(), ImportError> {
        let batch = self.plan(lines).await?;
        self.submit(batch).await
    }

    /// Waits until the batch in flight, if any, is durable.
    pub async fn flush(&mut self) -> Result<(), ImportError> {
        if let Some(f) = self.in_flight.take() {
            let started = std::time::Instant::now();
            let acked = f.append.await;
            self.waiting += started.elapsed();
            if acked.is_err() {
                // Nothing of it was written: its state is not the store's.
                self.carry = Carry::default();
            }
            acked.map_err(ImportError::Write)?;
            self.events += f.events as u64;
            self.duplicates += f.duplicates as u64;
        }
        Ok(())
    }

    /// Events of acknowledged (durable) batches.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Lines of acknowledged batches skipped as duplicates.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::{SegmentOptions, SegmentStore};

    /// The `"id"` member of a line with `id`, if any.
    fn id_member(id: Option<u128>) -> String {
        id.map_or(String::new(), |i| {
            format!(r#""id":"{}","#, Uuid::from_u128(i))
        })
    }

    /// Line `n`: `pupil` registered, with `id` as its `id` if any.
    fn register(n: usize, pupil: &str, id: Option<u128>) -> ImportLine {
        let id = id_member(id);
        let text = format!(
            r#"{{{id}"type":"PupilRegistered","pupil":"{pupil}","occurred_at":"2025-09-03T08:30:00Z","actor":"S017","data":{{"name":"Ada Testpupil","date_of_birth":"2012-05-01","year_group":9,"class":"9B","site":"Main"}}}}"#
        );
        parse_line(n, &text).expect("a valid line")
    }

    /// Line `n`: `pupil`'s attendance mark `code` on `day` of December
    /// 2025, in the afternoon if `pm`, with `id` as its `id` if any.
    fn mark_of(
        n: usize,
        pupil: &str,
        id: Option<u128>,
        (day, pm): (u32, bool),
        code: &str,
    ) -> ImportLine {
        let session = if pm { "pm" } else { "am" };
        let id = id_member(id);
        let text = format!(
            r#"{{{id}"type":"AttendanceMarked","pupil":"{pupil}","occurred_at":"2025-12-{day:02}T09:00:00Z","actor":"S017","data":{{"date":"2025-12-{day:02}","session":"{session}","code":"{code}"}}}}"#
        );
        parse_line(n, &text).expect("a valid line")
    }

    /// [`mark_of`] of pupil P0001, present (`/`).
    fn mark(n: usize, id: Option<u128>, day: u32, pm: bool) -> ImportLine {
        mark_of(n, "P0001", id, (day, pm), "/")
    }

    /// A new segment store in a temporary directory (kept while the
    /// first value lives), a runtime to drive it, and the planners' `now`.
    fn scratch() -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        std::sync::Arc<SegmentStore>,
        DateTime<Utc>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = SegmentStore::open_with(dir.path(), true, SegmentOptions::default()).unwrap();
        let now = "2026-01-10T12:00:00Z".parse().unwrap();
        (dir, rt, store, now)
    }

    /// A line repeating an earlier line's id is a duplicate only with the
    /// same pupil and the same content, whichever pupils were planned
    /// between them (the planner finds the earlier event by the pupil's
    /// place in its order); the same id and content for another pupil, or
    /// other content, is refused naming the earlier line.
    #[test]
    fn a_repeated_id_is_a_duplicate_only_for_the_same_pupil_and_content() {
        let (_dir, rt, store, now) = scratch();
        let log = store.log("school-a").unwrap();
        // Marks of 1 December, each with an id.
        let marked = |n, pupil, id, code| mark_of(n, pupil, Some(id), (1, false), code);
        let plan = |lines: Vec<ImportLine>| {
            let mut planner = Planner::new(log.as_ref(), "school-a", now);
            rt.block_on(planner.add_many(lines))
                .map(|()| planner.finish())
        };
        let pupils = || {
            vec![
                register(1, "P0001", None),
                register(2, "P0002", None),
                register(3, "P0003", None),
            ]
        };
        // P0002's mark, then P0003's and P0001's, then P0002's again.
        let mut lines = pupils();
        lines.push(marked(4, "P0002", 7, "/"));
        lines.push(marked(5, "P0003", 8, "/"));
        lines.push(marked(6, "P0001", 9, "/"));
        lines.push(marked(7, "P0002", 7, "/"));
        let done = plan(lines).unwrap();
        assert_eq!((done.events, done.duplicates), (6, 1));
        // The same id and content for P0001: refused at its line.
        let mut lines = pupils();
        lines.push(marked(4, "P0002", 7, "/"));
        lines.push(marked(5, "P0001", 7, "/"));
        match plan(lines) {
            Err(e) => assert!(
                e.to_string().contains("line 5")
                    && e.to_string()
                        .contains("was used on line 4 with different content"),
                "{e}"
            ),
            Ok(_) => panic!("an id given to two pupils was planned"),
        }
        // The same id and pupil with another code: refused too.
        let mut lines = pupils();
        lines.push(marked(4, "P0002", 7, "/"));
        lines.push(marked(5, "P0002", 7, "N"));
        assert!(plan(lines).is_err());
    }

    /// The planner's look-ups of its lines' ids answer for them through
    /// the head they saw (`IdsChecked`); the ids it minted (lines
    /// without `id`) are named as not looked up, by their index among the
    /// plan's events, and the writer looks those up itself.
    #[test]
    fn a_plan_names_the_ids_its_look_ups_answer_for_and_those_it_minted() {
        let (_dir, rt, store, now) = scratch();
        let log = store.log("school-a").unwrap();
        let mut planner = Planner::new(log.as_ref(), "school-a", now);
        rt.block_on(planner.add_many(vec![register(1, "P0001", Some(1))]))
            .unwrap();
        let plan = planner.finish();
        let seen = |through| {
            let (_, seen) = rt.block_on(log.find_events_checked(&[])).unwrap();
            Seen::new(seen.unwrap().log(), through)
        };
        assert_eq!(
            plan.checked,
            Some(IdsChecked::new(seen(0), vec![], &plan.requests))
        );
        rt.block_on(plan.append_to(log.as_ref())).unwrap();

        let mut planner = Planner::new(log.as_ref(), "school-a", now);
        let lines = vec![
            mark(1, Some(2), 1, false),
            mark(2, None, 1, true),
            mark(3, Some(3), 2, false),
            mark(4, None, 2, true),
        ];
        rt.block_on(planner.add_many(lines)).unwrap();
        let plan = planner.finish();
        assert_eq!(
            plan.checked,
            Some(IdsChecked::new(seen(1), vec![1, 3], &plan.requests))
        );
        assert_eq!(plan.requests[0].events.len(), 4);
        let done = rt.block_on(plan.append_to(log.as_ref())).unwrap();
        assert_eq!(done[0].last_position, 5);

        // Every id of a file without ids is minted: the plan is appended
        // as minted, and none of its ids was looked up.
        let mut planner = Planner::new(log.as_ref(), "school-a", now);
        rt.block_on(planner.add_many(vec![mark(1, None, 3, false)]))
            .unwrap();
        let plan = planner.finish();
        assert!(plan.minted);
        assert_eq!(plan.checked, None);
    }
}
