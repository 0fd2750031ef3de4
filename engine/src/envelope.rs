//! The envelope: what the log stores around each payload, its byte encoding
//! and the BLAKE3 hash chain.
//!
//! A stored value is `body || hash`, where `body` is the MessagePack array of
//! [`Body`] (every envelope field except `hash`, `prev_hash` included) and
//! `hash = BLAKE3(prev_hash || body)`. Verification therefore hashes the exact
//! stored bytes; nothing depends on re-encoding being canonical. The layout is
//! documented byte for byte in `docs/storage.md`.
//!
//! Architecture Invariant: the body encoding is append-only. New fields go at
//! the end of [`Body`] behind a new store format version; existing fields
//! never change meaning, or old chains would stop verifying.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CodecError;
use crate::event::{CaseEvent, CURRENT_SCHEMA};

/// A BLAKE3 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first event of every log.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// Length of the hash that trails every stored value.
pub const HASH_LEN: usize = 32;

/// Upper bound on one encoded payload. A case entry is prose written by a
/// person; 64 KiB is a long report. Bounding it bounds a batch's memory and
/// stops one bad line from bloating the log.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Hex form of a hash, as printed by `verify` and `audit`.
pub fn hex(hash: &Hash) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Identifies one stream (one pupil's case record, or one pupil's access
/// log) inside a school's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub Uuid);

/// Namespace of casebook's UUID v5 stream ids (a fixed random UUID).
const STREAM_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_3c2e_8b4a_4f5e_9a0c_2b7d_e1f4_a953);

impl StreamId {
    /// The case stream of `pupil` in `school`: UUID v5 of both, so imports
    /// need no lookup and two schools' pupils never share a stream.
    pub fn for_pupil(school: &str, pupil: &str) -> StreamId {
        Self::derive("case", school, pupil)
    }

    /// The access-log stream of `pupil` in `school` (who viewed the record).
    pub fn for_access_log(school: &str, pupil: &str) -> StreamId {
        Self::derive("access", school, pupil)
    }

    /// The staff-directory stream of `school` (staff, roles, and refusals
    /// that concern no pupil). See `docs/security.md`.
    pub fn for_directory(school: &str) -> StreamId {
        Self::derive("directory", school, "")
    }

    fn derive(kind: &str, school: &str, pupil: &str) -> StreamId {
        // NUL cannot occur in a validated school id or pupil reference, so
        // the concatenation is unambiguous. Built on the stack when short
        // (every real name is).
        let len = kind.len() + school.len() + pupil.len() + 2;
        let mut short = [0u8; 192];
        let name: std::borrow::Cow<'_, [u8]> = match short.get_mut(..len) {
            Some(buf) => {
                let (k, rest) = buf.split_at_mut(kind.len());
                k.copy_from_slice(kind.as_bytes());
                let (s, rest) = rest.split_at_mut(1 + school.len());
                s[1..].copy_from_slice(school.as_bytes());
                rest[1..].copy_from_slice(pupil.as_bytes());
                std::borrow::Cow::Borrowed(buf)
            }
            None => std::borrow::Cow::Owned(format!("{kind}\0{school}\0{pupil}").into_bytes()),
        };
        StreamId(Uuid::new_v5(&STREAM_NAMESPACE, &name))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An event on its way into the log: everything the caller decides. The
/// store adds position, version, `recorded_at` and the hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// The type's name: borrowed for casebook's own types (no allocation
    /// for each event planned), owned for a name read from elsewhere.
    pub event_type: std::borrow::Cow<'static, str>,
    pub schema: u32,
    /// MessagePack of the [`CaseEvent`] at `schema` (see [`encode_payload`]).
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// Encodes `event` at the current schema with a fresh UUID v7 id.
    pub fn new(
        event: &CaseEvent,
        occurred_at: DateTime<Utc>,
        actor: impl Into<String>,
    ) -> Result<NewEvent, CodecError> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            occurred_at,
            actor: actor.into(),
            correlation_id: None,
            causation_id: None,
            event_type: event.type_name().into(),
            schema: CURRENT_SCHEMA,
            payload: encode_payload(event)?,
        })
    }

    /// Same content as a stored event (the import's idempotency test): the
    /// id, stream-independent fields and payload bytes all match.
    pub fn same_content_as(&self, stored: &StoredEvent) -> bool {
        self.event_id == stored.event_id
            && self.occurred_at == stored.occurred_at
            && self.actor == stored.actor
            && self.event_type == stored.event_type
            && self.schema == stored.schema
            && self.payload == stored.payload
    }
}

/// Bytes an encoded payload is given room for before [`encode_payload`]
/// writes it: more than the demo's commonest non-register payloads (about
/// 100 to 200 bytes).
const PAYLOAD_ROOM: usize = 256;

/// Encodes a payload at the current schema: MessagePack with field names, so
/// that old payloads stay readable by name when fields are added or renamed.
pub fn encode_payload(event: &CaseEvent) -> Result<Vec<u8>, CodecError> {
    let bytes = match encode_plain_payload(event) {
        Some(bytes) => bytes,
        None => {
            // Room for most payloads at once, where growing from empty
            // would reallocate six times on the way to a few hundred bytes.
            let mut out = Vec::with_capacity(PAYLOAD_ROOM);
            rmp_serde::encode::write_named(&mut out, event)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            out
        }
    };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(bytes)
}

/// The payload of the commonest event, an `AttendanceMarked` whose date is
/// in the years 0 to 9999, written directly: byte for byte what
/// `rmp_serde::to_vec_named` writes for it (`{"type": "AttendanceMarked",
/// "data": {"date", "session", "code"}}`, every length in its smallest
/// form), without serde's per-field dispatch; the mirror of
/// [`decode_plain_payload`]. `None` for any other event, which rmp-serde
/// encodes. A property test holds the two equal.
fn encode_plain_payload(event: &CaseEvent) -> Option<Vec<u8>> {
    use crate::event::Session;
    let CaseEvent::AttendanceMarked(m) = event else {
        return None;
    };
    let date = crate::event::date_text::ascii(&m.date)?;
    if u32::try_from(m.code.len()).is_err() {
        return None;
    }
    let session = match m.session {
        Session::Am => "am",
        Session::Pm => "pm",
    };
    // 57 bytes of keys, type name and date, plus the code and its length.
    let mut out = Vec::with_capacity(64 + m.code.len());
    out.extend_from_slice(MARK_HEAD);
    out.extend_from_slice(&date);
    out.extend_from_slice(MARK_SESSION);
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(MARK_CODE);
    mp_str(&mut out, &m.code);
    Some(out)
}

/// What comes before a register mark's date, all fixed: the map of two,
/// its "type", the data's map of three and the date's key and length.
const MARK_HEAD: &[u8] = b"\x82\xa4type\xb0AttendanceMarked\xa4data\x83\xa4date\xaa";
/// Between a mark's date and its session: the session's key and length.
const MARK_SESSION: &[u8] = b"\xa7session\xa2";
/// Between a mark's session and its code: the code's key.
const MARK_CODE: &[u8] = b"\xa4code";

/// An event as the log holds it: the full envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Gapless from 1 within the school's log.
    pub position: u64,
    pub stream: StreamId,
    /// Gapless from 1 within the stream.
    pub version: u64,
    pub event_id: Uuid,
    /// When it happened, as the user says.
    pub occurred_at: DateTime<Utc>,
    /// When the engine stored it; never decreases along the log.
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub event_type: String,
    pub schema: u32,
    pub payload: Vec<u8>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// The hashed part of a stored value, in its on-disk field order. Encoded by
/// rmp-serde as a MessagePack array (see docs/storage.md).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Body<'a> {
    position: u64,
    stream: Uuid,
    version: u64,
    event_id: Uuid,
    occurred_at_us: i64,
    recorded_at_us: i64,
    #[serde(borrow)]
    actor: std::borrow::Cow<'a, str>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    schema: u32,
    #[serde(with = "serde_bytes", borrow)]
    payload: std::borrow::Cow<'a, [u8]>,
    #[serde(with = "serde_bytes")]
    prev_hash: Hash,
}

/// Room for one stored value (`body || hash`) whose variable fields are
/// these: the fixed fields take at most 163 bytes of MessagePack, so the
/// value is encoded without growing its buffer.
pub(crate) fn body_capacity(actor: &str, event_type: &str, payload: &[u8]) -> usize {
    192 + actor.len() + event_type.len() + payload.len() + HASH_LEN
}

impl<'a> Body<'a> {
    /// The body of `new` sealed at `position`/`version` after `prev_hash`,
    /// borrowing its strings and payload.
    fn of_new(
        new: &'a NewEvent,
        stream: StreamId,
        position: u64,
        version: u64,
        recorded_at: DateTime<Utc>,
        prev_hash: Hash,
    ) -> Body<'a> {
        Body {
            position,
            stream: stream.0,
            version,
            event_id: new.event_id,
            occurred_at_us: new.occurred_at.timestamp_micros(),
            recorded_at_us: recorded_at.timestamp_micros(),
            actor: new.actor.as_str().into(),
            correlation_id: new.correlation_id,
            causation_id: new.causation_id,
            event_type: std::borrow::Cow::Borrowed(&*new.event_type),
            schema: new.schema,
            payload: new.payload.as_slice().into(),
            prev_hash,
        }
    }
}

/// The stored value of `new` sealed at `position`/`version` after
/// `prev_hash` (`body || hash`) and its hash: the bytes of
/// [`StoredEvent::seal`], encoded straight from the new event (no copy of
/// its strings or payload) into one buffer of the right size (reserved by
/// [`seal_into`]).
pub fn seal_bytes(
    new: &NewEvent,
    stream: StreamId,
    position: u64,
    version: u64,
    recorded_at: DateTime<Utc>,
    prev_hash: Hash,
) -> Result<(Hash, Vec<u8>), CodecError> {
    let mut bytes = Vec::new();
    let hash = seal_into(
        &mut bytes,
        new,
        stream,
        position,
        version,
        recorded_at,
        prev_hash,
    )?;
    Ok((hash, bytes))
}

/// [`seal_bytes`] appended to `out` (a writer's buffer for a whole group,
/// so that sealing an event allocates nothing); returns the hash. On an
/// error `out` is left as it was.
pub fn seal_into(
    out: &mut Vec<u8>,
    new: &NewEvent,
    stream: StreamId,
    position: u64,
    version: u64,
    recorded_at: DateTime<Utc>,
    prev_hash: Hash,
) -> Result<Hash, CodecError> {
    let start = out.len();
    out.reserve(body_capacity(&new.actor, &new.event_type, &new.payload));
    let body = Body::of_new(new, stream, position, version, recorded_at, prev_hash);
    if let Err(e) = body.encode_into(out) {
        out.truncate(start);
        return Err(e);
    }
    let hash = chain_hash(&prev_hash, &out[start..]);
    out.extend_from_slice(&hash);
    Ok(hash)
}

impl Body<'_> {
    /// Appends the body's MessagePack to `out`: byte for byte what
    /// `rmp_serde::encode::write(out, self)` writes (an array of the fields
    /// in order, every integer and length in its smallest form, ids and
    /// hashes as `bin`), written directly. A property test holds the two
    /// equal.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let long = |n: usize| u32::try_from(n).is_err();
        if long(self.actor.len()) || long(self.event_type.len()) || long(self.payload.len()) {
            // Beyond MessagePack's lengths: whatever rmp-serde does.
            return rmp_serde::encode::write(out, self)
                .map_err(|e| CodecError::Encode(e.to_string()));
        }
        out.push(0x90 | 13);
        mp_uint(out, self.position);
        mp_bin(out, self.stream.as_bytes());
        mp_uint(out, self.version);
        mp_bin(out, self.event_id.as_bytes());
        mp_sint(out, self.occurred_at_us);
        mp_sint(out, self.recorded_at_us);
        mp_str(out, &self.actor);
        mp_opt_uuid(out, self.correlation_id);
        mp_opt_uuid(out, self.causation_id);
        mp_str(out, &self.event_type);
        mp_uint(out, u64::from(self.schema));
        mp_bin(out, &self.payload);
        mp_bin(out, &self.prev_hash);
        Ok(())
    }
}

impl<'a> Body<'a> {
    /// The body, when `bytes` is exactly an array of its 13 fields in the
    /// forms rmp-serde writes and reads back to the same values (integers
    /// of any width, ids and hashes as `bin`, strings as `str`), with
    /// nothing after it; `None` for anything else, which the caller hands
    /// to rmp-serde. What it returns is what `rmp_serde::from_slice` gives
    /// for the same bytes (a property test holds the two equal), without
    /// serde's per-field dispatch: this was a third of a timeline's read.
    fn decode_plain(bytes: &'a [u8]) -> Option<Body<'a>> {
        let mut r = MsgReader::new(bytes);
        if r.byte()? != 0x90 | 13 {
            return None;
        }
        let body = Body {
            position: r.uint()?,
            stream: r.uuid()?,
            version: r.uint()?,
            event_id: r.uuid()?,
            occurred_at_us: r.sint()?,
            recorded_at_us: r.sint()?,
            actor: std::borrow::Cow::Borrowed(r.str()?),
            correlation_id: r.opt_uuid()?,
            causation_id: r.opt_uuid()?,
            event_type: std::borrow::Cow::Borrowed(r.str()?),
            schema: u32::try_from(r.uint()?).ok()?,
            payload: std::borrow::Cow::Borrowed(r.bin()?),
            prev_hash: r.bin()?.try_into().ok()?,
        };
        (r.at == bytes.len()).then_some(body)
    }
}

/// Decodes (and upcasts) a stored event's payload, given its type and
/// schema: [`StoredEvent::case_event`] for a caller that holds those
/// fields apart from an envelope (the runner's fold, which takes the
/// strings out of each envelope of a page it folds in place).
pub fn decode_case_event(
    event_type: &str,
    schema: u32,
    payload: &[u8],
) -> Result<CaseEvent, CodecError> {
    if let Some(event) = decode_plain_payload(event_type, schema, payload) {
        return Ok(event);
    }
    crate::upcast::decode_payload(event_type, schema, payload)
}

/// The payload of the commonest event, a current-schema `AttendanceMarked`
/// (most of a pupil's record), when `bytes` are what [`encode_payload`]
/// writes for one: `{"type": "AttendanceMarked", "data": {"date",
/// "session", "code"}}`, its date `YYYY-MM-DD`, every byte fixed but the
/// date's, the session's and the code (of any string width). `None` for any
/// other payload, which [`crate::upcast::decode_payload`] decodes. What it
/// returns is what that gives for the same bytes (a property test holds the
/// two equal), without serde's dispatch on every key.
fn decode_plain_payload(event_type: &str, schema: u32, bytes: &[u8]) -> Option<CaseEvent> {
    use crate::event::{AttendanceMarked, Session};
    const TYPE: &str = "AttendanceMarked";
    if schema != CURRENT_SCHEMA || bytes.len() > MAX_PAYLOAD_BYTES {
        // `decode_payload` reads the other schemas, and refuses a payload
        // over the limit.
        return None;
    }
    if event_type != TYPE {
        return decode_frequent_payload(event_type, bytes);
    }
    // The encoder's bytes around the date, the session and the code are
    // fixed: compared whole rather than read key by key.
    let rest = bytes.strip_prefix(MARK_HEAD)?;
    let (date, rest) = rest.split_first_chunk::<10>()?;
    let date = crate::event::date_text::parse_plain_bytes(date)?;
    let rest = rest.strip_prefix(MARK_SESSION)?;
    let (session, rest) = rest.split_first_chunk::<2>()?;
    let session = match session {
        b"am" => Session::Am,
        b"pm" => Session::Pm,
        _ => return None,
    };
    let mut r = MsgReader::new(rest.strip_prefix(MARK_CODE)?);
    let code = r.str()?.to_string();
    (r.at == r.bytes.len()).then_some(CaseEvent::AttendanceMarked(AttendanceMarked {
        date,
        session,
        code,
    }))
}

/// The payload of the most frequent events after the register marks (a
/// reward, incident without other pupils, absence follow-up, parent
/// contact or sanction), current schema, when `bytes` is exactly what
/// [`encode_payload`] writes for one: `{"type": T, "data": {...}}`, the
/// fields in their declared order, optional ones present or left out as
/// rmp-serde writes them, enums as their snake_case names. `None` for
/// anything else, which [`crate::upcast::decode_payload`] decodes; what it
/// returns is what that gives for the same bytes (a property test holds the
/// two equal, damaged bytes included).
fn decode_frequent_payload(event_type: &str, bytes: &[u8]) -> Option<CaseEvent> {
    use crate::event::{
        AbsenceFollowedUp, IncidentRecorded, IncidentRole, ParentContacted, RewardIssued,
        SanctionIssued, SanctionKind,
    };
    // `decode_plain_payload` has refused a payload over the limit.
    let mut r = MsgReader::new(bytes);
    let key = |r: &mut MsgReader<'_>, name: &str| (r.str_bytes()? == name.as_bytes()).then_some(());
    let text = |r: &mut MsgReader<'_>| r.str().map(str::to_string);
    (r.byte()? == 0x82).then_some(())?;
    key(&mut r, "type")?;
    key(&mut r, event_type)?;
    key(&mut r, "data")?;
    // The data's fields: a fixmap.
    let fields = match r.byte()? {
        b @ 0x80..=0x8f => b & 0x0f,
        _ => return None,
    };
    let event = match (event_type, fields) {
        ("RewardIssued", 2 | 3) => {
            key(&mut r, "kind")?;
            let kind = text(&mut r)?;
            key(&mut r, "reason")?;
            let reason = text(&mut r)?;
            let points = if fields == 3 {
                key(&mut r, "points")?;
                Some(u32::try_from(r.uint()?).ok()?)
            } else {
                None
            };
            CaseEvent::RewardIssued(RewardIssued {
                kind,
                reason,
                points,
            })
        }
        ("IncidentRecorded", 5..=7) => {
            key(&mut r, "category")?;
            let category = text(&mut r)?;
            key(&mut r, "severity")?;
            let severity = u8::try_from(r.uint()?).ok()?;
            key(&mut r, "location")?;
            let location = text(&mut r)?;
            key(&mut r, "description")?;
            let description = text(&mut r)?;
            key(&mut r, "role")?;
            let role = match r.str_bytes()? {
                b"perpetrator" => IncidentRole::Perpetrator,
                b"target" => IncidentRole::Target,
                b"witness" => IncidentRole::Witness,
                b"involved" => IncidentRole::Involved,
                _ => return None,
            };
            // `participants` (left out when empty) goes to rmp-serde; `class`
            // and `site` are each there or not.
            let mut left = fields - 5;
            let mut class = None;
            let mut site = None;
            let at = r.at;
            if left > 0 && r.str_bytes()? == b"class" {
                class = Some(text(&mut r)?);
                left -= 1;
            } else {
                r.at = at;
            }
            if left > 0 {
                key(&mut r, "site")?;
                site = Some(text(&mut r)?);
                left -= 1;
            }
            (left == 0).then_some(())?;
            CaseEvent::IncidentRecorded(IncidentRecorded {
                category,
                severity,
                location,
                description,
                role,
                participants: Vec::new(),
                class,
                site,
            })
        }
        ("AbsenceFollowedUp", 3) => {
            key(&mut r, "date")?;
            let date = crate::event::date_text::parse_plain(r.str()?)?;
            key(&mut r, "method")?;
            let method = text(&mut r)?;
            key(&mut r, "outcome")?;
            let outcome = text(&mut r)?;
            CaseEvent::AbsenceFollowedUp(AbsenceFollowedUp {
                date,
                method,
                outcome,
            })
        }
        ("ParentContacted", 2) => {
            key(&mut r, "method")?;
            let method = text(&mut r)?;
            key(&mut r, "summary")?;
            let summary = text(&mut r)?;
            CaseEvent::ParentContacted(ParentContacted { method, summary })
        }
        ("SanctionIssued", 2) => {
            key(&mut r, "kind")?;
            let kind = match r.str_bytes()? {
                b"detention" => SanctionKind::Detention,
                b"isolation" => SanctionKind::Isolation,
                b"internal_exclusion" => SanctionKind::InternalExclusion,
                b"report_card" => SanctionKind::ReportCard,
                _ => return None,
            };
            key(&mut r, "reason")?;
            let reason = text(&mut r)?;
            CaseEvent::SanctionIssued(SanctionIssued { kind, reason })
        }
        _ => return None,
    };
    (r.at == bytes.len()).then_some(event)
}

/// A reader of the few MessagePack forms casebook reads by hand (those
/// [`Body::decode_plain`] accepts, and the head of a projection's
/// checkpoint): each method reads one value from where the last stopped,
/// or gives `None` for another form, or bytes that end early.
pub struct MsgReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> MsgReader<'a> {
    pub fn new(bytes: &'a [u8]) -> MsgReader<'a> {
        MsgReader { bytes, at: 0 }
    }

    /// The length of a map of any width.
    pub fn map_len(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(u64::from(b & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |v, &b| v << 8 | u64::from(b)),
        )
    }

    /// A non-negative integer in an unsigned form.
    pub fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// A signed integer: an unsigned form up to `i64::MAX`, or a negative
    /// fixint or signed form.
    fn sint(&mut self) -> Option<i64> {
        let at = self.at;
        match self.byte()? {
            b @ 0xe0..=0xff => Some(i64::from(b as i8)),
            0xd0 => Some(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Some(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Some(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Some(self.be(8)? as i64),
            _ => {
                self.at = at;
                i64::try_from(self.uint()?).ok()
            }
        }
    }

    /// A `bin` of any width.
    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(n).ok()?)
    }

    /// A `str` of any width holding UTF-8.
    pub fn str(&mut self) -> Option<&'a str> {
        utf8(self.str_bytes()?)
    }

    /// The bytes of a `str` of any width, UTF-8 or not (for comparing with
    /// a known text: equal bytes are that text).
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => u64::from(b & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(n).ok()?)
    }

    /// An id: a `bin` of 16 bytes.
    fn uuid(&mut self) -> Option<Uuid> {
        Some(Uuid::from_bytes(self.bin()?.try_into().ok()?))
    }

    /// `nil`, or an id.
    fn opt_uuid(&mut self) -> Option<Option<Uuid>> {
        if self.bytes.get(self.at) == Some(&0xc0) {
            self.at += 1;
            return Some(None);
        }
        self.uuid().map(Some)
    }
}

/// `bytes` as text when they are UTF-8 (`std::str::from_utf8(bytes).ok()`):
/// ASCII, which nearly every string of a record is (actors, type names,
/// dates, codes, keys), is recognised by `is_ascii`, a word at a time;
/// `from_utf8`'s checks of short strings were a sixteenth of a timeline.
fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every byte is below 0x80, and ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// MessagePack unsigned integer, smallest form (rmp's `write_uint`).
fn mp_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v < 256 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65_536 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 4_294_967_296 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// MessagePack signed integer, smallest form (rmp's `write_sint`: a
/// non-negative value is written as unsigned).
fn mp_sint(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        mp_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= -128 {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= -32_768 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= -2_147_483_648 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// MessagePack `str` (fixstr, str8, str16 or str32). The caller bounds the
/// length to `u32`.
fn mp_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65_536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// MessagePack `bin` (bin8, bin16 or bin32). The caller bounds the length
/// to `u32`.
fn mp_bin(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n < 256 {
        out.extend_from_slice(&[0xc4, n as u8]);
    } else if n < 65_536 {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

/// An optional id: `nil`, or its 16 bytes as `bin`.
fn mp_opt_uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        None => out.push(0xc0),
        Some(id) => mp_bin(out, id.as_bytes()),
    }
}

/// `BLAKE3(prev_hash || body)`.
pub fn chain_hash(prev_hash: &Hash, body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(prev_hash);
    h.update(body);
    *h.finalize().as_bytes()
}

impl StoredEvent {
    /// Seals a new event at `position`/`version` after `prev_hash`: computes
    /// the hash and returns the event with the exact bytes to store.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        new: &NewEvent,
        stream: StreamId,
        position: u64,
        version: u64,
        recorded_at: DateTime<Utc>,
        prev_hash: Hash,
    ) -> Result<(StoredEvent, Vec<u8>), CodecError> {
        let (hash, bytes) = seal_bytes(new, stream, position, version, recorded_at, prev_hash)?;
        let event = StoredEvent {
            position,
            stream,
            version,
            event_id: new.event_id,
            occurred_at: new.occurred_at,
            recorded_at,
            actor: new.actor.clone(),
            correlation_id: new.correlation_id,
            causation_id: new.causation_id,
            event_type: new.event_type.to_string(),
            schema: new.schema,
            payload: new.payload.clone(),
            prev_hash,
            hash,
        };
        Ok((event, bytes))
    }

    fn encode_body(&self) -> Result<Vec<u8>, CodecError> {
        let body = Body {
            position: self.position,
            stream: self.stream.0,
            version: self.version,
            event_id: self.event_id,
            occurred_at_us: self.occurred_at.timestamp_micros(),
            recorded_at_us: self.recorded_at.timestamp_micros(),
            actor: self.actor.as_str().into(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            event_type: self.event_type.as_str().into(),
            schema: self.schema,
            payload: self.payload.as_slice().into(),
            prev_hash: self.prev_hash,
        };
        let mut bytes =
            Vec::with_capacity(body_capacity(&self.actor, &self.event_type, &self.payload));
        body.encode_into(&mut bytes)?;
        Ok(bytes)
    }

    /// The stored bytes of this event (`body || hash`), as `seal` produced
    /// them. Used to copy a log between backends unchanged.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut bytes = self.encode_body()?;
        bytes.extend_from_slice(&self.hash);
        Ok(bytes)
    }

    /// Decodes stored bytes. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<StoredEvent, CodecError> {
        let (body, hash) = split_value(bytes)?;
        // The encoder's own forms are read directly; anything else (another
        // encoder's forms, damage) goes through rmp-serde, which decides.
        let b: Body<'_> = match Body::decode_plain(body) {
            Some(b) => b,
            None => rmp_serde::from_slice(body).map_err(|e| CodecError::Decode(e.to_string()))?,
        };
        let ts = |us: i64, field: &'static str| {
            DateTime::<Utc>::from_timestamp_micros(us).ok_or_else(|| CodecError::Field {
                field,
                what: format!("timestamp {us} out of range"),
            })
        };
        Ok(StoredEvent {
            position: b.position,
            stream: StreamId(b.stream),
            version: b.version,
            event_id: b.event_id,
            occurred_at: ts(b.occurred_at_us, "occurred_at")?,
            recorded_at: ts(b.recorded_at_us, "recorded_at")?,
            actor: b.actor.into_owned(),
            correlation_id: b.correlation_id,
            causation_id: b.causation_id,
            event_type: b.event_type.into_owned(),
            schema: b.schema,
            payload: b.payload.into_owned(),
            prev_hash: b.prev_hash,
            hash,
        })
    }

    /// Decodes the payload, upcasting it to the current schema.
    pub fn case_event(&self) -> Result<CaseEvent, CodecError> {
        decode_case_event(&self.event_type, self.schema, &self.payload)
    }
}

/// A stored event borrowed from the bytes it was read from: what
/// [`StoredEvent`] holds, with the actor, type and payload left in place (the
/// per-pupil reads decode each payload from it without building an owned
/// envelope first; see [`crate::store::EventStore::visit_stream`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRef<'a> {
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor: &'a str,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub event_type: &'a str,
    pub schema: u32,
    pub payload: &'a [u8],
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl StoredEvent {
    /// This event, borrowed.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            position: self.position,
            stream: self.stream,
            version: self.version,
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: &self.actor,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            event_type: &self.event_type,
            schema: self.schema,
            payload: &self.payload,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl<'a> EventRef<'a> {
    /// The stored bytes `bytes` read in place, when they are exactly the
    /// encoder's own forms (the ones [`StoredEvent::decode`] reads without
    /// rmp-serde) with timestamps in range: then it is what
    /// `StoredEvent::decode` gives, borrowed. `None` for any other bytes,
    /// which the caller decodes with `StoredEvent::decode` (and its errors).
    pub fn decode_plain(bytes: &'a [u8]) -> Option<EventRef<'a>> {
        let (body, hash) = split_value(bytes).ok()?;
        let b = Body::decode_plain(body)?;
        let (std::borrow::Cow::Borrowed(actor), std::borrow::Cow::Borrowed(event_type)) =
            (b.actor, b.event_type)
        else {
            return None;
        };
        let std::borrow::Cow::Borrowed(payload) = b.payload else {
            return None;
        };
        Some(EventRef {
            position: b.position,
            stream: StreamId(b.stream),
            version: b.version,
            event_id: b.event_id,
            occurred_at: DateTime::<Utc>::from_timestamp_micros(b.occurred_at_us)?,
            recorded_at: DateTime::<Utc>::from_timestamp_micros(b.recorded_at_us)?,
            actor,
            correlation_id: b.correlation_id,
            causation_id: b.causation_id,
            event_type,
            schema: b.schema,
            payload,
            prev_hash: b.prev_hash,
            hash,
        })
    }

    /// The owned event.
    pub fn to_stored(&self) -> StoredEvent {
        StoredEvent {
            position: self.position,
            stream: self.stream,
            version: self.version,
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: self.actor.to_string(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            event_type: self.event_type.to_string(),
            schema: self.schema,
            payload: self.payload.to_vec(),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }

    /// Decodes the payload, upcasting it to the current schema: as
    /// [`StoredEvent::case_event`].
    pub fn case_event(&self) -> Result<CaseEvent, CodecError> {
        decode_case_event(self.event_type, self.schema, self.payload)
    }

    /// The event with its payload decoded as `event`, the actor copied once:
    /// [`RecordedEvent::from_parts`] without the owned envelope.
    pub fn recorded(&self, event: CaseEvent) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            stream: self.stream,
            version: self.version,
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: self.actor.to_string(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            schema: self.schema,
            hash: self.hash,
            event,
        }
    }
}

/// Splits a stored value into `(body, hash)`.
pub fn split_value(bytes: &[u8]) -> Result<(&[u8], Hash), CodecError> {
    if bytes.len() <= HASH_LEN {
        return Err(CodecError::Truncated { len: bytes.len() });
    }
    let (body, tail) = bytes.split_at(bytes.len() - HASH_LEN);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(tail);
    Ok((body, hash))
}

/// A stored event with its payload decoded: what projections fold over.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream: StreamId,
    pub version: u64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub schema: u32,
    pub hash: Hash,
    pub event: CaseEvent,
}

impl RecordedEvent {
    /// A stored event and its already decoded payload, moved together
    /// (no copy of the envelope's strings).
    pub fn from_parts(mut stored: StoredEvent, event: CaseEvent) -> RecordedEvent {
        Self::taken_from(&mut stored, event)
    }

    /// [`RecordedEvent::from_parts`] of an envelope left where it lies
    /// (in a page being folded): its actor taken out, its other fields
    /// copied, so that the 248-byte envelope is not moved.
    #[inline]
    pub fn taken_from(stored: &mut StoredEvent, event: CaseEvent) -> RecordedEvent {
        RecordedEvent {
            position: stored.position,
            stream: stored.stream,
            version: stored.version,
            event_id: stored.event_id,
            occurred_at: stored.occurred_at,
            recorded_at: stored.recorded_at,
            actor: std::mem::take(&mut stored.actor),
            correlation_id: stored.correlation_id,
            causation_id: stored.causation_id,
            schema: stored.schema,
            hash: stored.hash,
            event,
        }
    }

    /// Decodes (and upcasts) the payload of a stored event.
    pub fn from_stored(stored: &StoredEvent) -> Result<RecordedEvent, CodecError> {
        Ok(RecordedEvent {
            position: stored.position,
            stream: stored.stream,
            version: stored.version,
            event_id: stored.event_id,
            occurred_at: stored.occurred_at,
            recorded_at: stored.recorded_at,
            actor: stored.actor.clone(),
            correlation_id: stored.correlation_id,
            causation_id: stored.causation_id,
            schema: stored.schema,
            hash: stored.hash,
            event: stored.case_event()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frequent_event;
    use proptest::prelude::*;

    /// A register mark whose payload is over [`MAX_PAYLOAD_BYTES`] (a code
    /// of 70,000 bytes, written by hand: the encoder refuses it) is not
    /// read by the direct decoder, since `decode_payload` refuses it.
    #[test]
    fn an_oversized_register_mark_is_refused_as_decode_payload_refuses_it() {
        let event = CaseEvent::AttendanceMarked(crate::event::AttendanceMarked {
            date: chrono::NaiveDate::from_ymd_opt(2026, 9, 7).unwrap(),
            session: crate::event::Session::Am,
            code: "/".repeat(70_000),
        });
        let bytes = rmp_serde::to_vec_named(&event).unwrap();
        assert!(bytes.len() > MAX_PAYLOAD_BYTES);
        assert!(crate::upcast::decode_payload("AttendanceMarked", CURRENT_SCHEMA, &bytes).is_err());
        assert_eq!(
            decode_plain_payload("AttendanceMarked", CURRENT_SCHEMA, &bytes),
            None
        );
    }

    /// The stored value as it was encoded before `seal_bytes`: the body
    /// through `rmp_serde::to_vec`, then the hash appended.
    fn reference_value(
        new: &NewEvent,
        stream: StreamId,
        position: u64,
        version: u64,
        recorded_at: DateTime<Utc>,
        prev_hash: Hash,
    ) -> Vec<u8> {
        let body = Body::of_new(new, stream, position, version, recorded_at, prev_hash);
        let mut bytes = rmp_serde::to_vec(&body).unwrap();
        let hash = chain_hash(&prev_hash, &bytes);
        bytes.extend_from_slice(&hash);
        bytes
    }

    fn time(us: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_micros(us).unwrap()
    }

    /// Integers of every MessagePack width, edges included.
    fn uint() -> impl Strategy<Value = u64> {
        prop_oneof![
            proptest::sample::select(vec![
                0,
                127,
                128,
                255,
                256,
                65_535,
                65_536,
                4_294_967_295,
                4_294_967_296,
                u64::MAX,
            ]),
            0u64..300,
            60_000u64..70_000,
            4_294_960_000u64..4_294_970_000,
            any::<u64>(),
        ]
    }

    /// Microsecond times of every MessagePack width, negative ones too.
    fn micros() -> impl Strategy<Value = i64> {
        prop_oneof![
            proptest::sample::select(vec![
                -62_000_000_000_000_000,
                -2_147_483_649,
                -2_147_483_648,
                -32_769,
                -32_768,
                -129,
                -128,
                -33,
                -32,
                -1,
                0,
                127,
                128,
                250_000_000_000_000_000,
            ]),
            -300i64..300,
            -70_000i64..70_000,
            -2_147_490_000i64..-2_147_480_000,
            -5_000_000_000i64..5_000_000_000,
            -62_000_000_000_000_000i64..250_000_000_000_000_000,
        ]
    }

    prop_compose! {
        fn new_event()(
            id in any::<u128>(),
            occurred in micros(),
            actor in prop_oneof![".{0,40}", "[a-z]{28,36}", "[a-z]{250,300}"],
            correlation in proptest::option::of(any::<u128>()),
            causation in proptest::option::of(any::<u128>()),
            event_type in "[A-Za-z]{0,40}",
            schema in prop_oneof![0u32..300, 65_530u32..65_540, any::<u32>()],
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 65_530..65_540),
            ],
        ) -> NewEvent {
            NewEvent {
                event_id: Uuid::from_u128(id),
                occurred_at: time(occurred),
                actor,
                correlation_id: correlation.map(Uuid::from_u128),
                causation_id: causation.map(Uuid::from_u128),
                event_type: event_type.into(),
                schema,
                payload,
            }
        }
    }

    /// `bytes` damaged at `at` by `kind`: 0 flips bits of one byte, 1
    /// truncates, 2 appends `byte`, 3 overwrites one byte with it.
    fn damaged(bytes: &[u8], at: proptest::sample::Index, byte: u8, kind: u8) -> Vec<u8> {
        let mut damaged = bytes.to_vec();
        let i = at.index(damaged.len());
        match kind {
            0 => damaged[i] ^= byte.max(1),
            1 => damaged.truncate(i),
            2 => damaged.push(byte),
            _ => damaged[i] = byte,
        }
        damaged
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `utf8` accepts exactly what `std::str::from_utf8` accepts, as the
        /// same text: ASCII, other UTF-8 (a character of 2, 3 or 4 bytes
        /// among ASCII), and bytes that are not UTF-8 at any place.
        #[test]
        fn utf8_is_from_utf8(
            text in "[ -~]{0,40}",
            other in prop::sample::select(vec!["é", "€", "𝄞", "\u{7f}", "\u{80}", "\u{10ffff}"]),
            at in any::<prop::sample::Index>(),
            junk in any::<Vec<u8>>(),
            byte in 0x80u8..=0xff,
        ) {
            let mut bytes = text.as_bytes().to_vec();
            prop_assert_eq!(utf8(&bytes), Some(text.as_str()));
            let i = at.index(bytes.len() + 1);
            let mut mixed = bytes.clone();
            mixed.splice(i..i, other.bytes());
            prop_assert_eq!(utf8(&mixed), std::str::from_utf8(&mixed).ok());
            prop_assert!(utf8(&mixed).is_some());
            bytes.insert(i, byte);
            prop_assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes).ok());
            // A byte of 0x80 or more alone among ASCII is never UTF-8.
            prop_assert!(utf8(&bytes).is_none());
            prop_assert_eq!(utf8(&junk), std::str::from_utf8(&junk).ok());
        }

        /// `seal_bytes` (and `seal`, `encode`) give exactly the bytes the
        /// body's serde encoding gives, and they decode back.
        #[test]
        fn sealed_bytes_are_the_serde_encoding_of_the_body(
            new in new_event(),
            stream in any::<u128>(),
            position in uint(),
            version in uint(),
            recorded in micros(),
            prev in any::<[u8; 32]>(),
        ) {
            let stream = StreamId(Uuid::from_u128(stream));
            let recorded_at = time(recorded);
            let expected = reference_value(&new, stream, position, version, recorded_at, prev);
            let (hash, bytes) = seal_bytes(&new, stream, position, version, recorded_at, prev).unwrap();
            prop_assert_eq!(&bytes, &expected);
            prop_assert_eq!(&bytes[bytes.len() - HASH_LEN..], &hash[..]);
            let (stored, sealed) = StoredEvent::seal(&new, stream, position, version, recorded_at, prev).unwrap();
            prop_assert_eq!(&sealed, &expected);
            prop_assert_eq!(stored.hash, hash);
            prop_assert_eq!(&stored.encode().unwrap(), &expected);
            let decoded = StoredEvent::decode(&bytes).unwrap();
            prop_assert_eq!(decoded, stored);
        }

        /// `Body::decode_plain` reads the encoder's bytes as rmp-serde does,
        /// and whatever it accepts of damaged bytes (a byte changed, cut
        /// short, one added) it reads as rmp-serde does too.
        #[test]
        fn plain_body_decoding_is_rmp_serde_decoding(
            new in new_event(),
            stream in any::<u128>(),
            position in uint(),
            version in uint(),
            recorded in micros(),
            prev in any::<[u8; 32]>(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            damage in 0u8..4,
        ) {
            let stream = StreamId(Uuid::from_u128(stream));
            let (_, bytes) = seal_bytes(&new, stream, position, version, time(recorded), prev).unwrap();
            let body = &bytes[..bytes.len() - HASH_LEN];
            let plain = Body::decode_plain(body);
            prop_assert!(plain.is_some());
            let serde: Body<'_> = rmp_serde::from_slice(body).unwrap();
            prop_assert_eq!(plain, Some(serde));
            let damaged = damaged(body, at, byte, damage);
            if let Some(plain) = Body::decode_plain(&damaged) {
                let serde: Result<Body<'_>, _> = rmp_serde::from_slice(&damaged);
                prop_assert_eq!(Some(plain), serde.ok());
            }
        }

        /// `EventRef::decode_plain` reads the encoder's bytes as
        /// `StoredEvent::decode` does, borrowed; of damaged bytes, whatever
        /// it accepts `StoredEvent::decode` reads the same. Its payload
        /// decodes as the owned event's does.
        #[test]
        fn borrowed_decoding_is_stored_event_decoding(
            new in new_event(),
            stream in any::<u128>(),
            position in uint(),
            version in uint(),
            recorded in micros(),
            prev in any::<[u8; 32]>(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            damage in 0u8..4,
        ) {
            let stream = StreamId(Uuid::from_u128(stream));
            let (_, bytes) = seal_bytes(&new, stream, position, version, time(recorded), prev).unwrap();
            let owned = StoredEvent::decode(&bytes).unwrap();
            let borrowed = EventRef::decode_plain(&bytes);
            prop_assert_eq!(borrowed, Some(owned.as_event_ref()));
            let borrowed = borrowed.unwrap();
            prop_assert_eq!(&borrowed.to_stored(), &owned);
            prop_assert_eq!(
                format!("{:?}", borrowed.case_event()),
                format!("{:?}", owned.case_event())
            );
            if let Ok(event) = owned.case_event() {
                prop_assert_eq!(
                    borrowed.recorded(event.clone()),
                    RecordedEvent::from_parts(owned.clone(), event)
                );
            }
            let damaged = damaged(&bytes, at, byte, damage);
            if let Some(plain) = EventRef::decode_plain(&damaged) {
                let owned = StoredEvent::decode(&damaged);
                prop_assert_eq!(Some(plain.to_stored()), owned.ok());
            }
        }

        /// An `AttendanceMarked` payload is read directly as
        /// `decode_payload` reads it; of damaged ones, whatever the direct
        /// reader accepts, `decode_payload` reads the same.
        #[test]
        fn plain_payload_decoding_is_decode_payload(
            days in -1_000i32..4_000_000,
            pm in any::<bool>(),
            code in prop_oneof!["[/\\\\A-Z#]", ".{0,40}"],
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            damage in 0u8..4,
        ) {
            use crate::event::{AttendanceMarked, Session};
            let Some(date) = chrono::NaiveDate::from_num_days_from_ce_opt(days) else {
                return Ok(());
            };
            let event = CaseEvent::AttendanceMarked(AttendanceMarked {
                date,
                session: if pm { Session::Pm } else { Session::Am },
                code,
            });
            let bytes = encode_payload(&event).unwrap();
            let plain = decode_plain_payload("AttendanceMarked", CURRENT_SCHEMA, &bytes);
            let serde = crate::upcast::decode_payload("AttendanceMarked", CURRENT_SCHEMA, &bytes).unwrap();
            prop_assert_eq!(&serde, &event);
            if (0..=9999).contains(&chrono::Datelike::year(&date)) {
                prop_assert_eq!(plain.as_ref(), Some(&event));
            }
            prop_assert_eq!(decode_plain_payload("AttendanceMarked", 1, &bytes), None);
            prop_assert_eq!(decode_plain_payload("IncidentRecorded", CURRENT_SCHEMA, &bytes), None);
            let damaged = damaged(&bytes, at, byte, damage);
            if let Some(plain) = decode_plain_payload("AttendanceMarked", CURRENT_SCHEMA, &damaged) {
                let serde = crate::upcast::decode_payload("AttendanceMarked", CURRENT_SCHEMA, &damaged);
                prop_assert_eq!(Some(plain), serde.ok());
            }
        }

        /// A reward, incident, absence follow-up, parent contact or
        /// sanction is read directly as `decode_payload` reads it (any text,
        /// points, severity, role, optional field; an incident with other
        /// pupils goes to rmp-serde); of damaged ones, whatever the direct
        /// reader accepts, `decode_payload` reads the same.
        #[test]
        fn frequent_payload_decoding_is_decode_payload(
            event in frequent_event(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            damage in 0u8..4,
            other_type in any::<bool>(),
        ) {
            let bytes = encode_payload(&event).unwrap();
            let name = event.type_name();
            let serde = crate::upcast::decode_payload(name, CURRENT_SCHEMA, &bytes).unwrap();
            prop_assert_eq!(&serde, &event);
            let plain = decode_plain_payload(name, CURRENT_SCHEMA, &bytes);
            let shared = matches!(&event, CaseEvent::IncidentRecorded(i) if !i.participants.is_empty());
            let old_date = matches!(&event, CaseEvent::AbsenceFollowedUp(a)
                if !(0..=9999).contains(&chrono::Datelike::year(&a.date)));
            if shared || old_date {
                prop_assert_eq!(plain, None);
            } else {
                prop_assert_eq!(plain.as_ref(), Some(&event));
            }
            prop_assert_eq!(decode_plain_payload(name, 1, &bytes), None);
            let wrong = if other_type { "ParentContacted" } else { "RewardIssued" };
            if wrong != name {
                prop_assert_eq!(decode_plain_payload(wrong, CURRENT_SCHEMA, &bytes), None);
            }
            let damaged = damaged(&bytes, at, byte, damage);
            for t in [name, wrong] {
                if let Some(plain) = decode_plain_payload(t, CURRENT_SCHEMA, &damaged) {
                    let serde = crate::upcast::decode_payload(t, CURRENT_SCHEMA, &damaged);
                    prop_assert_eq!(Some(plain), serde.ok());
                }
            }
        }

        /// `encode_payload` writes an `AttendanceMarked` directly, byte
        /// for byte what rmp-serde writes (any date, session and code:
        /// dates outside the years 0 to 9999 and every other event go to
        /// rmp-serde itself).
        #[test]
        fn plain_payload_encoding_is_rmp_serde(
            days in prop_oneof![-1_000_000i32..4_000_000, 0i32..3_700_000],
            pm in any::<bool>(),
            code in prop_oneof!["[/\\\\A-Z#]", ".{0,40}", ".{30,300}"],
            long in 0usize..70_000,
        ) {
            use crate::event::{AttendanceMarked, Session};
            let Some(date) = chrono::NaiveDate::from_num_days_from_ce_opt(days) else {
                return Ok(());
            };
            for code in [code.clone(), "x".repeat(long)] {
                let event = CaseEvent::AttendanceMarked(AttendanceMarked {
                    date,
                    session: if pm { Session::Pm } else { Session::Am },
                    code,
                });
                let serde = rmp_serde::to_vec_named(&event).unwrap();
                if let Some(plain) = encode_plain_payload(&event) {
                    prop_assert_eq!(&plain, &serde);
                } else {
                    prop_assert!(!(0..=9999).contains(&chrono::Datelike::year(&date)));
                }
                match encode_payload(&event) {
                    Ok(bytes) => prop_assert_eq!(&bytes, &serde),
                    Err(CodecError::TooLarge { len, .. }) => {
                        prop_assert_eq!(len, serde.len());
                        prop_assert!(serde.len() > MAX_PAYLOAD_BYTES);
                    }
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
            let other = CaseEvent::AbsenceFollowedUp(crate::event::AbsenceFollowedUp {
                date,
                method: "phone".into(),
                outcome: code,
            });
            prop_assert_eq!(encode_plain_payload(&other), None);
        }

        /// Stream ids are UUID v5 of `kind NUL school NUL pupil`, however
        /// long the names (short ones are built on the stack).
        #[test]
        fn stream_ids_are_v5_of_the_joined_names(school in ".{0,120}", pupil in ".{0,120}") {
            for (kind, id) in [
                ("case", StreamId::for_pupil(&school, &pupil)),
                ("access", StreamId::for_access_log(&school, &pupil)),
            ] {
                let name = format!("{kind}\0{school}\0{pupil}");
                prop_assert_eq!(id.0, Uuid::new_v5(&STREAM_NAMESPACE, name.as_bytes()));
            }
            let name = format!("directory\0{school}\0");
            prop_assert_eq!(StreamId::for_directory(&school).0, Uuid::new_v5(&STREAM_NAMESPACE, name.as_bytes()));
        }
    }

    /// The committed schema-1 fixtures, sealed again from their own fields,
    /// give their committed bytes: the encoder has not changed.
    #[test]
    fn resealing_the_committed_fixtures_gives_their_bytes() {
        let fixtures: [&[u8]; 2] = [
            include_bytes!("../../tests/data/fixtures/schema1/incident_recorded.stored.bin"),
            include_bytes!("../../tests/data/fixtures/schema1/suspension_issued.stored.bin"),
        ];
        for bytes in fixtures {
            let stored = StoredEvent::decode(bytes).unwrap();
            let new = NewEvent {
                event_id: stored.event_id,
                occurred_at: stored.occurred_at,
                actor: stored.actor.clone(),
                correlation_id: stored.correlation_id,
                causation_id: stored.causation_id,
                event_type: stored.event_type.clone().into(),
                schema: stored.schema,
                payload: stored.payload.clone(),
            };
            let (hash, value) = seal_bytes(
                &new,
                stored.stream,
                stored.position,
                stored.version,
                stored.recorded_at,
                stored.prev_hash,
            )
            .unwrap();
            assert_eq!(value, bytes);
            assert_eq!(hash, stored.hash);
        }
    }
}
