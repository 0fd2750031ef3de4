//! The chronology: a pupil's timeline, and with `safeguarding_only` the
//! safeguarding chronology a DSL reads before a strategy meeting.
//!
//! Folded on demand from the pupil's case stream. Its JSON is the contract's
//! `timeline --format json`: `{"pupil", "as_of", "entries": [...]}`.
//!
//! - **Order.** Entries are ordered by `occurred_at` (when it happened, as
//!   the user says), then by `position` (the order the school learnt of it),
//!   so two entries of the same moment keep their recording order.
//! - **As of.** `as_of` answers "what did the school know at T": every event
//!   recorded after T is left out before anything else happens, corrections
//!   included, so an entry shows as it read at T. The filter is on
//!   `recorded_at`, never `occurred_at`: a concern that happened in January
//!   but was written down in March was not known in February.
//! - **Corrections.** An `EntryCorrected` is not an entry of its own: it
//!   shows on the entry it corrects, whose `data` and `summary` are the
//!   corrected ones, with a `corrections` list holding, for each correction
//!   in stream order, the values it replaced (`original`), the new values,
//!   the reason, who made it and when. Read oldest first, the list gives
//!   back every earlier version of the entry. A correction that could not
//!   be applied (its changes no longer fit the entry) is listed with
//!   `applied: false` and leaves the data as it was. A correction naming no
//!   earlier entry of this pupil is shown as an entry of its own, so that
//!   nothing in the record is ever hidden from a reader.
//! - **Safeguarding only.** Keeps entries whose corrected content is a
//!   safeguarding event (`CaseEvent::is_safeguarding`).

use std::collections::HashMap;

use casebook_engine::event::{CaseEvent, EntryCorrected};
use casebook_engine::RecordedEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::facts::corrected;
use crate::summary::summary;

/// A pupil's chronology (`timeline --format json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chronology {
    pub pupil: String,
    /// The `--as-of` time the chronology was read at; `null` for now.
    pub as_of: Option<DateTime<Utc>>,
    pub entries: Vec<ChronologyEntry>,
}

/// One entry of the chronology.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChronologyEntry {
    pub position: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// Who recorded it.
    pub actor: String,
    /// One human line, from the corrected data.
    pub summary: String,
    /// Whether the entry belongs in the safeguarding chronology.
    pub safeguarding: bool,
    /// The event's fields, as corrected.
    pub data: Value,
    /// The corrections applied to this entry, oldest first. Absent when
    /// there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<Correction>,
}

/// One correction of an entry, with what it replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// The `EntryCorrected` event.
    pub event_id: Uuid,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    /// Who made the correction.
    pub actor: String,
    pub reason: String,
    /// The values of the changed fields before this correction (`null`
    /// where an optional field was absent).
    pub original: Map<String, Value>,
    /// The new values, as the correction gave them.
    pub changes: Map<String, Value>,
    /// False when the changes no longer fit the entry and were not applied.
    pub applied: bool,
}

impl Chronology {
    /// Folds the pupil's case-stream events (any order; they are put in
    /// stream order first) into the chronology.
    pub fn build(
        pupil: &str,
        events: &[RecordedEvent],
        as_of: Option<DateTime<Utc>>,
        safeguarding_only: bool,
    ) -> Chronology {
        let mut known: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| known_at(e, as_of))
            .filter(|e| !matches!(e.event, CaseEvent::RecordViewed(_)))
            .cloned()
            .collect();
        // Corrections apply in stream order; the log's position order is it.
        known.sort_by_key(|e| e.position);
        fold(pupil, known, as_of, safeguarding_only).into_chronology()
    }

    /// [`Chronology::build`] of events the caller no longer needs: the same
    /// chronology, without copying each payload and actor.
    pub fn build_owned(
        pupil: &str,
        events: Vec<RecordedEvent>,
        as_of: Option<DateTime<Utc>>,
        safeguarding_only: bool,
    ) -> Chronology {
        Timeline::build_owned(pupil, events, as_of, safeguarding_only).into_chronology()
    }
}

/// A chronology before it is rendered: each entry's corrected content still
/// an event. [`Timeline::into_chronology`] gives the [`Chronology`];
/// [`Timeline::write_json_pretty`] writes its JSON document directly.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    pub pupil: String,
    pub as_of: Option<DateTime<Utc>>,
    pub entries: Vec<TimelineEntry>,
}

/// An entry of a [`Timeline`]: a [`ChronologyEntry`] whose `data`,
/// `summary` and `safeguarding` are still its corrected event.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    pub position: u64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    /// The event, as corrected.
    pub content: CaseEvent,
    pub corrections: Vec<Correction>,
}

impl TimelineEntry {
    /// The entry's `type`.
    pub fn event_type(&self) -> &'static str {
        self.content.type_name()
    }
}

impl Timeline {
    /// [`Chronology::build_owned`] before rendering.
    pub fn build_owned(
        pupil: &str,
        mut events: Vec<RecordedEvent>,
        as_of: Option<DateTime<Utc>>,
        safeguarding_only: bool,
    ) -> Timeline {
        // Corrections apply in stream order; the log's position order is it
        // (a stream as read is in it already: nothing is moved then).
        if !events.is_sorted_by_key(|e| e.position) {
            events.sort_by_key(|e| e.position);
        }
        // Filtered in the fold: each event is moved once, into its entry.
        fold(pupil, events, as_of, safeguarding_only)
    }

    /// The chronology: each entry's summary and data rendered.
    pub fn into_chronology(self) -> Chronology {
        let entries = self
            .entries
            .into_iter()
            .map(|e| ChronologyEntry {
                position: e.position,
                event_id: e.event_id,
                event_type: e.content.type_name().to_string(),
                occurred_at: e.occurred_at,
                recorded_at: e.recorded_at,
                actor: e.actor,
                summary: summary(&e.content),
                safeguarding: e.content.is_safeguarding(),
                data: e.content.data_json(),
                corrections: e.corrections,
            })
            .collect();
        Chronology {
            pupil: self.pupil,
            as_of: self.as_of,
            entries,
        }
    }

    /// Appends the JSON document of `timeline --format json` to `out`, as
    /// `serde_json::to_string_pretty` writes `into_chronology().into_json()`,
    /// byte for byte, without building either (the timeline's hot path:
    /// `crate::pretty` writes each entry's data from the event itself).
    pub fn write_json_pretty(&self, out: &mut Vec<u8>) {
        use crate::pretty::{newline, write_str, write_u64};
        // Each entry's summary, when it is built here.
        let mut scratch = String::new();
        // The times of each kind, each keeping the date it wrote last.
        let (mut occurred, mut recorded) = (Stamps::default(), Stamps::default());
        // About what an entry takes (470 bytes a register mark), so that a
        // new buffer is not grown and copied again and again.
        out.reserve(64 + self.entries.len() * 512);
        // Keys in serde_json's order (sorted), as the `Value` holds them.
        out.extend_from_slice(b"{\n  \"as_of\": ");
        match self.as_of {
            Some(t) => recorded.write(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\n  \"entries\": [");
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"\n    {\n      \"actor\": ");
            write_str(out, &e.actor);
            if !e.corrections.is_empty() {
                out.extend_from_slice(b",\n      \"corrections\": ");
                write_value_at(out, 3, &e.corrections);
            }
            out.extend_from_slice(b",\n      \"data\": ");
            write_data(out, &e.content);
            out.extend_from_slice(b",\n      \"event_id\": \"");
            out.extend_from_slice(
                e.event_id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            );
            out.extend_from_slice(b"\",\n      \"occurred_at\": ");
            occurred.write(out, e.occurred_at);
            out.extend_from_slice(b",\n      \"position\": ");
            write_u64(out, e.position);
            out.extend_from_slice(b",\n      \"recorded_at\": ");
            recorded.write(out, e.recorded_at);
            out.extend_from_slice(b",\n      \"safeguarding\": ");
            out.extend_from_slice(if e.content.is_safeguarding() {
                b"true" as &[u8]
            } else {
                b"false"
            });
            out.extend_from_slice(b",\n      \"summary\": ");
            write_summary(out, &e.content, &mut scratch);
            out.extend_from_slice(b",\n      \"type\": \"");
            out.extend_from_slice(e.content.type_name().as_bytes());
            out.push(b'"');
            newline(out, 2);
            out.push(b'}');
        }
        if !self.entries.is_empty() {
            newline(out, 1);
        }
        out.extend_from_slice(b"],\n  \"pupil\": ");
        write_str(out, &self.pupil);
        out.extend_from_slice(b"\n}");
    }
}

/// Writes an entry's `data` (at nesting 3) as `to_value` of it would be
/// written: an `AttendanceMarked` (most of a record) directly, anything
/// else through [`crate::pretty`].
fn write_data(out: &mut Vec<u8>, content: &CaseEvent) {
    use crate::pretty::{newline, write_str};
    if let CaseEvent::AttendanceMarked(a) = content {
        if let Some(date) = casebook_engine::event::date_ascii(&a.date) {
            // Keys in order: code, date, session.
            out.push(b'{');
            newline(out, 4);
            out.extend_from_slice(b"\"code\": ");
            write_str(out, &a.code);
            out.push(b',');
            newline(out, 4);
            out.extend_from_slice(b"\"date\": \"");
            out.extend_from_slice(&date);
            out.push(b'"');
            out.push(b',');
            newline(out, 4);
            out.extend_from_slice(match a.session {
                casebook_engine::event::Session::Am => b"\"session\": \"am\"",
                casebook_engine::event::Session::Pm => b"\"session\": \"pm\"",
            });
            newline(out, 3);
            out.push(b'}');
            return;
        }
    }
    if write_frequent_data(out, content) {
        return;
    }
    let start = out.len();
    if crate::pretty::write_field(out, 3, content, "data").is_err() {
        out.truncate(start);
        write_value_at(out, 3, &content.data_json());
    }
}

/// Writes the `data` (at nesting 3) of the most frequent entries after the
/// register marks (rewards, incidents, absence follow-ups, parent contacts,
/// sanctions) directly, keys in order, as [`write_data`]'s general path
/// writes them; `false` (and nothing written) for any other event or a date
/// it does not write as `YYYY-MM-DD`.
fn write_frequent_data(out: &mut Vec<u8>, content: &CaseEvent) -> bool {
    use crate::pretty::{newline, write_str, write_u64};
    use crate::summary::{incident_role, sanction_kind};
    // `"key": ` on a new line of the object (after a comma unless first).
    fn key(out: &mut Vec<u8>, first: bool, key: &str) {
        if !first {
            out.push(b',');
        }
        newline(out, 4);
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\": ");
    }
    match content {
        CaseEvent::RewardIssued(r) => {
            out.push(b'{');
            key(out, true, "kind");
            write_str(out, &r.kind);
            if let Some(points) = r.points {
                key(out, false, "points");
                write_u64(out, u64::from(points));
            }
            key(out, false, "reason");
            write_str(out, &r.reason);
        }
        CaseEvent::IncidentRecorded(i) => {
            out.push(b'{');
            key(out, true, "category");
            write_str(out, &i.category);
            if let Some(class) = &i.class {
                key(out, false, "class");
                write_str(out, class);
            }
            key(out, false, "description");
            write_str(out, &i.description);
            key(out, false, "location");
            write_str(out, &i.location);
            if !i.participants.is_empty() {
                key(out, false, "participants");
                out.push(b'[');
                for (n, p) in i.participants.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    newline(out, 5);
                    out.push(b'{');
                    newline(out, 6);
                    out.extend_from_slice(b"\"pupil\": ");
                    write_str(out, &p.pupil);
                    out.push(b',');
                    newline(out, 6);
                    out.extend_from_slice(b"\"role\": \"");
                    out.extend_from_slice(incident_role(p.role).as_bytes());
                    out.push(b'"');
                    newline(out, 5);
                    out.push(b'}');
                }
                newline(out, 4);
                out.push(b']');
            }
            key(out, false, "role");
            out.push(b'"');
            out.extend_from_slice(incident_role(i.role).as_bytes());
            out.push(b'"');
            key(out, false, "severity");
            write_u64(out, u64::from(i.severity));
            if let Some(site) = &i.site {
                key(out, false, "site");
                write_str(out, site);
            }
        }
        CaseEvent::AbsenceFollowedUp(a) => {
            let Some(date) = casebook_engine::event::date_ascii(&a.date) else {
                return false;
            };
            out.push(b'{');
            key(out, true, "date");
            out.push(b'"');
            out.extend_from_slice(&date);
            out.push(b'"');
            key(out, false, "method");
            write_str(out, &a.method);
            key(out, false, "outcome");
            write_str(out, &a.outcome);
        }
        CaseEvent::ParentContacted(p) => {
            out.push(b'{');
            key(out, true, "method");
            write_str(out, &p.method);
            key(out, false, "summary");
            write_str(out, &p.summary);
        }
        CaseEvent::SanctionIssued(s) => {
            out.push(b'{');
            key(out, true, "kind");
            out.push(b'"');
            out.extend_from_slice(sanction_kind(s.kind).as_bytes());
            out.push(b'"');
            key(out, false, "reason");
            write_str(out, &s.reason);
        }
        _ => return false,
    }
    newline(out, 3);
    out.push(b'}');
    true
}

/// Writes an entry's `summary` as a JSON string: an `AttendanceMarked`'s
/// (most of a record) straight into `out`, the frequent others' built in
/// `scratch`, without a `String` each; anything else by [`summary`].
fn write_summary(out: &mut Vec<u8>, content: &CaseEvent, scratch: &mut String) {
    match content {
        CaseEvent::AttendanceMarked(a) => {
            if !crate::summary::write_attendance_summary_json(a, out) {
                scratch.clear();
                crate::summary::attendance_summary(a, scratch);
                crate::pretty::write_str(out, scratch);
            }
        }
        _ => {
            scratch.clear();
            if crate::summary::frequent_summary(content, scratch) {
                crate::pretty::write_str(out, scratch);
            } else {
                crate::pretty::write_str(out, &summary(content));
            }
        }
    }
}

/// Writes `value` at nesting `level` as its `to_value` would be written;
/// through the `Value` when [`crate::pretty`] cannot write it directly.
fn write_value_at<T: Serialize + ?Sized>(out: &mut Vec<u8>, level: usize, value: &T) {
    let start = out.len();
    if crate::pretty::write(out, level, value).is_ok() {
        return;
    }
    out.truncate(start);
    let v = serde_json::to_value(value)
        .unwrap_or_else(|e| Value::String(format!("<unserialisable: {e}>")));
    // A `Value` has string keys and serde_json's numbers only: written.
    let _ = crate::pretty::write(out, level, &v);
}

/// Applies correction `c` (the event `e`, by `actor`) to the entry it
/// names: its content as corrected, when the changes apply, and the
/// correction listed with the values it replaced.
fn apply_correction(
    target: &mut TimelineEntry,
    e: &RecordedEvent,
    c: &EntryCorrected,
    actor: String,
) {
    let original = replaced_values(&target.content, &c.changes);
    let new = corrected(&target.content, &c.changes);
    let applied = new.is_some();
    if let Some(new) = new {
        target.content = new;
    }
    target.corrections.push(Correction {
        event_id: e.event_id,
        position: e.position,
        recorded_at: e.recorded_at,
        actor,
        reason: c.reason.clone(),
        original,
        changes: c.changes.clone(),
        applied,
    });
}

/// Corrections of one record found by a scan of its entries before
/// [`fold`] builds a map from event id to entry: a scan compares a 16-byte
/// id an entry, where the map hashed and inserted every entry (130,000
/// instructions, a twentieth of the read of a 540-entry timeline with one
/// correction).
const SCAN_CORRECTIONS: usize = 16;

/// The chronology of the events given in position order, those known at
/// `as_of` (and not `RecordViewed`). Each event is moved once, into its
/// entry.
fn fold(
    pupil: &str,
    events: Vec<RecordedEvent>,
    as_of: Option<DateTime<Utc>>,
    safeguarding_only: bool,
) -> Timeline {
    // The entries on their way: each one's current content and its
    // corrections so far. Room for them all, the upper bound.
    let mut building: Vec<TimelineEntry> = Vec::with_capacity(events.len());
    // Entry of each event id, built at correction number
    // `SCAN_CORRECTIONS + 1` (most records have none or a few, each found
    // by a scan of the entries more cheaply than a map of all of them is
    // built; an id names one event of a log, and were one repeated the
    // later entry would be found, as inserting in order and a scan from
    // the end both give).
    let mut index: Option<HashMap<Uuid, usize>> = None;
    let mut corrections = 0usize;
    for e in events {
        if !known_at(&e, as_of) || matches!(e.event, CaseEvent::RecordViewed(_)) {
            continue;
        }
        if let CaseEvent::EntryCorrected(c) = &e.event {
            corrections += 1;
            let entry = match &mut index {
                None if corrections <= SCAN_CORRECTIONS => {
                    building.iter().rposition(|b| b.event_id == c.event)
                }
                index => index
                    .get_or_insert_with(|| {
                        let mut index = HashMap::with_capacity(building.capacity());
                        for (i, b) in building.iter().enumerate() {
                            index.insert(b.event_id, i);
                        }
                        index
                    })
                    .get(&c.event)
                    .copied(),
            };
            if let Some(i) = entry {
                apply_correction(&mut building[i], &e, c, e.actor.clone());
                continue;
            }
            // Names nothing earlier in this record: shown as itself.
        }
        if let Some(index) = &mut index {
            index.insert(e.event_id, building.len());
        }
        building.push(TimelineEntry {
            position: e.position,
            event_id: e.event_id,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            actor: e.actor,
            content: e.event,
            corrections: Vec::new(),
        });
    }

    let mut entries = building;
    if safeguarding_only {
        entries.retain(|b| b.content.is_safeguarding());
    }
    if !entries.is_sorted_by_key(|e| (e.occurred_at, e.position)) {
        entries.sort_by_key(|e| (e.occurred_at, e.position));
    }
    Timeline {
        pupil: pupil.to_string(),
        as_of,
        entries,
    }
}

impl Chronology {
    /// The JSON document of `timeline --format json`: the same value as
    /// `serde_json::to_value(&self)`, built by moving each entry's `data`
    /// into the document instead of copying it (the timeline's hot path:
    /// copying every entry's data again was a fifth of a timeline's time).
    pub fn into_json(self) -> Result<Value, serde_json::Error> {
        let Chronology {
            pupil,
            as_of,
            entries,
        } = self;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            out.push(entry_json(entry)?);
        }
        let mut doc = serde_json::to_value(Chronology {
            pupil,
            as_of,
            entries: Vec::new(),
        })?;
        if let Value::Object(fields) = &mut doc {
            fields.insert("entries".into(), Value::Array(out));
        }
        Ok(doc)
    }
}

/// An entry's JSON object, as `serde_json::to_value` gives it, built field
/// by field: `data` moved, the times written by [`timestamp_json`].
fn entry_json(entry: ChronologyEntry) -> Result<Value, serde_json::Error> {
    let ChronologyEntry {
        position,
        event_id,
        event_type,
        occurred_at,
        recorded_at,
        actor,
        summary,
        safeguarding,
        data,
        corrections,
    } = entry;
    let mut fields = Map::new();
    fields.insert("position".into(), Value::from(position));
    fields.insert(
        "event_id".into(),
        Value::String(event_id.hyphenated().to_string()),
    );
    fields.insert("type".into(), Value::String(event_type));
    fields.insert("occurred_at".into(), timestamp_json(occurred_at));
    fields.insert("recorded_at".into(), timestamp_json(recorded_at));
    fields.insert("actor".into(), Value::String(actor));
    fields.insert("summary".into(), Value::String(summary));
    fields.insert("safeguarding".into(), Value::Bool(safeguarding));
    fields.insert("data".into(), data);
    if !corrections.is_empty() {
        fields.insert("corrections".into(), serde_json::to_value(&corrections)?);
    }
    Ok(Value::Object(fields))
}

/// A time as chrono's serde writes it (RFC 3339, `Z`, as many fractional
/// digits as needed: none, 3, 6 or 9), without its per-character
/// formatter: two of these per timeline entry were a third of the
/// document's cost. Years outside 0..=9999 go through chrono.
pub fn timestamp_json(t: DateTime<Utc>) -> Value {
    use chrono::Datelike;
    if !(0..=9999).contains(&t.year()) {
        return Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    }
    let mut b = Vec::with_capacity(32);
    write_timestamp(&mut b, t);
    // The quotes off; only ASCII digits and punctuation were written.
    Value::String(String::from_utf8(b[1..b.len() - 1].to_vec()).unwrap_or_default())
}

/// Writes `t` as a JSON string, as [`timestamp_json`]'s value is written.
fn write_timestamp(b: &mut Vec<u8>, t: DateTime<Utc>) {
    Stamps::default().write(b, t);
}

/// Writes times as [`write_timestamp`] does, keeping the text of the last
/// one's date and second: a timeline's times fall on few days (two
/// register marks a day) and its times of recording often in one second
/// (an import's), and finding a time's calendar date (chrono's
/// conversions) was most of writing it; a timeline writes two times an
/// entry.
#[derive(Default)]
struct Stamps {
    /// The day (from 1970-01-01) whose `YYYY-MM-DD` `date` holds.
    day: Option<i64>,
    date: [u8; 10],
    /// The second (from 1970, not a leap second) whose `"YYYY-MM-DDTHH:MM:SS`
    /// `text` holds.
    second: Option<i64>,
    text: [u8; 20],
}

/// `00` to `99`, two bytes each.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

impl Stamps {
    fn write(&mut self, b: &mut Vec<u8>, t: DateTime<Utc>) {
        let secs = t.timestamp();
        // A leap second is nanosecond >= 1e9 and shows as second 60.
        let nanos = t.timestamp_subsec_nanos();
        let (leap, nanos) = match nanos.checked_sub(1_000_000_000) {
            Some(n) => (true, n),
            None => (false, nanos),
        };
        if leap || self.second != Some(secs) {
            let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
            let day = secs.div_euclid(86_400);
            if self.day != Some(day) {
                // Years 0 to 9999 as `YYYY-MM-DD`; chrono writes the others.
                let Some(date) = casebook_engine::event::date_ascii(&t.date_naive()) else {
                    crate::pretty::write_str(
                        b,
                        &t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    );
                    return;
                };
                self.date = date;
                self.day = Some(day);
            }
            let of_day = secs.rem_euclid(86_400) as u32;
            let second = of_day % 60 + u32::from(leap);
            let [h1, h2] = two(of_day / 3600);
            let [n1, n2] = two(of_day / 60 % 60);
            let [s1, s2] = two(second);
            self.text[0] = b'"';
            self.text[1..11].copy_from_slice(&self.date);
            self.text[11..].copy_from_slice(&[b'T', h1, h2, b':', n1, n2, b':', s1, s2]);
            // A leap second's text is not kept: the next time of the same
            // `secs` is second 59 of its minute.
            self.second = (!leap).then_some(secs);
        }
        // The fraction, as chrono writes it: none, or 3, 6 or 9 digits.
        let (digits, value) = if nanos == 0 {
            (0, 0)
        } else if nanos % 1_000_000 == 0 {
            (3, nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            (6, nanos / 1_000)
        } else {
            (9, nanos)
        };
        // `"…` `.digits` `Z"`, the digits two at a time from the last.
        let mut tail = [0u8; 32];
        tail[..20].copy_from_slice(&self.text);
        let mut value = value as usize;
        let mut at = 21 + digits;
        while at > 22 {
            at -= 2;
            let pair = value % 100 * 2;
            tail[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
            value /= 100;
        }
        if at == 22 {
            tail[21] = b'0' + value as u8;
        }
        tail[20] = b'.';
        let end = if digits == 0 { 20 } else { 21 + digits };
        tail[end..end + 2].copy_from_slice(b"Z\"");
        b.extend_from_slice(&tail[..end + 2]);
    }
}

/// Whether the school knew of `e` at `as_of` (always, without one).
fn known_at(e: &RecordedEvent, as_of: Option<DateTime<Utc>>) -> bool {
    match as_of {
        Some(t) => e.recorded_at <= t,
        None => true,
    }
}

/// The current values of the fields `changes` names (`null` for a field
/// the entry does not hold).
fn replaced_values(content: &CaseEvent, changes: &Map<String, Value>) -> Map<String, Value> {
    let data = content.data_json();
    changes
        .keys()
        .map(|k| (k.clone(), data.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use casebook_engine::event::{AttendanceMarked, Session};
    use casebook_engine::testing::frequent_event;
    use proptest::prelude::*;

    /// The fold as it was written before its index was built lazily: every
    /// entry looked up by id (the last entry with that id), nothing filtered
    /// but `as_of` and `RecordViewed`.
    fn reference_fold(
        events: &[RecordedEvent],
        as_of: Option<DateTime<Utc>>,
    ) -> Vec<TimelineEntry> {
        let mut building: Vec<TimelineEntry> = Vec::new();
        for e in events {
            if !known_at(e, as_of) || matches!(e.event, CaseEvent::RecordViewed(_)) {
                continue;
            }
            if let CaseEvent::EntryCorrected(c) = &e.event {
                if let Some(i) = building.iter().rposition(|b| b.event_id == c.event) {
                    apply_correction(&mut building[i], e, c, e.actor.clone());
                    continue;
                }
            }
            building.push(TimelineEntry {
                position: e.position,
                event_id: e.event_id,
                occurred_at: e.occurred_at,
                recorded_at: e.recorded_at,
                actor: e.actor.clone(),
                content: e.event.clone(),
                corrections: Vec::new(),
            });
        }
        building.sort_by_key(|e| (e.occurred_at, e.position));
        building
    }

    proptest! {
        /// The fold (its id index built at the first correction) gives the
        /// entries of the reference fold, with corrections of entries, of
        /// corrections, of unknown ids, repeated ids and `as_of` cuts.
        #[test]
        fn the_fold_is_the_reference_fold(
            steps in proptest::collection::vec((0u8..4, 0usize..12, 0usize..8, any::<bool>()), 0..40),
            cut in proptest::option::of(0i64..40),
        ) {
            use casebook_engine::event::{EntryCorrected, ParentContacted, RecordViewed};
            use casebook_engine::envelope::StreamId;
            let start: DateTime<Utc> = "2026-03-02T09:00:00Z".parse().unwrap();
            let ids: Vec<Uuid> = (0..8u128).map(Uuid::from_u128).collect();
            let mut events = Vec::new();
            for (k, &(kind, target, id, repeat)) in steps.iter().enumerate() {
                let event = match kind {
                    0 | 1 => CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: format!("Call {k}"),
                    }),
                    2 => {
                        let mut changes = serde_json::Map::new();
                        changes.insert("summary".into(), Value::String(format!("Fixed {k}")));
                        CaseEvent::EntryCorrected(EntryCorrected {
                            event: Uuid::from_u128(target as u128 % 10),
                            changes,
                            reason: "typo".into(),
                        })
                    }
                    _ => CaseEvent::RecordViewed(RecordViewed {
                        pupil: "P1".into(),
                        view: "timeline".into(),
                        purpose: None,
                    }),
                };
                events.push(RecordedEvent {
                    position: k as u64 + 1,
                    stream: StreamId::for_pupil("default", "P1"),
                    version: k as u64 + 1,
                    event_id: if repeat { ids[id] } else { Uuid::from_u128(1_000 + k as u128) },
                    occurred_at: start + chrono::Duration::minutes(((k * 7) % 11) as i64),
                    recorded_at: start + chrono::Duration::minutes(k as i64),
                    actor: format!("S{k:03}"),
                    correlation_id: None,
                    causation_id: None,
                    schema: casebook_engine::event::CURRENT_SCHEMA,
                    hash: [0; 32],
                    event,
                });
            }
            let as_of = cut.map(|m| start + chrono::Duration::minutes(m));
            let got = Timeline::build_owned("P1", events.clone(), as_of, false);
            prop_assert_eq!(got.entries, reference_fold(&events, as_of));
        }
    }

    /// Every code of the DfE's table, in either session, on dates of four
    /// digits and beyond them: a mark's summary (its tail built once a code
    /// and session) is what `summary` gives, as `write_str` writes it.
    #[test]
    fn every_register_code_summary_is_written_as_summary_gives_it() {
        let mut scratch = String::new();
        for code in casebook_engine::codes::ATTENDANCE_CODES {
            for session in [Session::Am, Session::Pm] {
                for date in [
                    chrono::NaiveDate::from_ymd_opt(2026, 9, 15).unwrap(),
                    chrono::NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap(),
                ] {
                    let event = CaseEvent::AttendanceMarked(AttendanceMarked {
                        date,
                        session,
                        code: code.code.to_string(),
                    });
                    let mut direct = Vec::new();
                    write_summary(&mut direct, &event, &mut scratch);
                    let mut via_summary = Vec::new();
                    crate::pretty::write_str(&mut via_summary, &summary(&event));
                    assert_eq!(
                        String::from_utf8(direct).unwrap(),
                        String::from_utf8(via_summary).unwrap(),
                        "code {:?}",
                        code.code
                    );
                }
            }
        }
    }

    proptest! {
        /// An `AttendanceMarked`'s data is written directly as its
        /// `data_json` is written, for every date, session and code.
        #[test]
        fn attendance_data_is_written_as_its_value_is(
            days in -1_000i32..4_000_000,
            pm in any::<bool>(),
            code in prop_oneof!["[/\\\\A-Z#]", "[A-Z][0-9]", ".{0,20}"],
        ) {
            let Some(date) = chrono::NaiveDate::from_num_days_from_ce_opt(days) else {
                return Ok(());
            };
            let event = CaseEvent::AttendanceMarked(AttendanceMarked {
                date,
                session: if pm { Session::Pm } else { Session::Am },
                code,
            });
            let mut direct = Vec::new();
            write_data(&mut direct, &event);
            let mut via_value = Vec::new();
            write_value_at(&mut via_value, 3, &event.data_json());
            prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(via_value).unwrap());
            let mut scratch = "left over".to_string();
            let mut direct = Vec::new();
            write_summary(&mut direct, &event, &mut scratch);
            let mut via_summary = Vec::new();
            crate::pretty::write_str(&mut via_summary, &summary(&event));
            prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(via_summary).unwrap());
        }

        /// The rewards, incidents, absence follow-ups, parent contacts and
        /// sanctions written directly (data and summary) are what the
        /// general path writes: `data_json` through the `Value` and through
        /// `crate::pretty`, `summary` by `format!`, for any text (quotes,
        /// control characters, unusual whitespace, long prose), points,
        /// severity, role, participants and date (years outside 0..=9999
        /// fall back).
        #[test]
        fn frequent_entries_are_written_as_the_general_path_writes_them(
            event in frequent_event(),
        ) {
            let mut direct = Vec::new();
            write_data(&mut direct, &event);
            let mut via_value = Vec::new();
            write_value_at(&mut via_value, 3, &event.data_json());
            let mut via_pretty = Vec::new();
            crate::pretty::write_field(&mut via_pretty, 3, &event, "data").unwrap();
            let direct = String::from_utf8(direct).unwrap();
            prop_assert_eq!(&direct, &String::from_utf8(via_value).unwrap());
            prop_assert_eq!(&direct, &String::from_utf8(via_pretty).unwrap());
            let mut scratch = "left over".to_string();
            let mut direct = Vec::new();
            write_summary(&mut direct, &event, &mut scratch);
            let mut via_summary = Vec::new();
            crate::pretty::write_str(&mut via_summary, &summary(&event));
            prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(via_summary).unwrap());
        }

        /// Times are written as chrono's serde writes them, leap seconds
        /// and years outside 0..=9999 included.
        #[test]
        fn times_are_written_as_chrono_writes_them(
            secs in prop_oneof![
                -62_167_219_200i64..253_402_300_800,
                -8_334_601_228_800i64..8_210_266_876_799,
                proptest::sample::select(vec![-62_167_219_200i64, -62_167_219_201, 253_402_300_799, 253_402_300_800, -1, 0, 59, 86_399]),
            ],
            nanos in prop_oneof![
                Just(0u32),
                (0u32..1_000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1_000),
                0u32..2_000_000_000,
            ],
        ) {
            let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) else {
                return Ok(());
            };
            let mut direct = Vec::new();
            write_timestamp(&mut direct, t);
            prop_assert_eq!(String::from_utf8(direct).unwrap(), serde_json::to_string(&t).unwrap());
        }

        /// Times written one after another by one `Stamps` (which keeps
        /// the last date) are written as each alone: on the same day, on
        /// the days either side, across years and out of range.
        #[test]
        fn times_written_in_turn_keep_no_stale_date(
            times in proptest::collection::vec(
                (
                    prop_oneof![Just(0i64), -2i64..=2, -400i64..=400, -4_000_000i64..4_000_000],
                    // -1: the second before's again (with another fraction).
                    prop_oneof![0i64..86_400, Just(-1i64)],
                    prop_oneof![
                        Just(0u32),
                        (0u32..1_000).prop_map(|n| n * 1_000_000),
                        (0u32..1_000_000).prop_map(|n| n * 1_000),
                        0u32..2_000_000_000,
                    ],
                ),
                1..40,
            ),
            base in prop_oneof![
                -719_528i64..2_932_897,
                proptest::sample::select(vec![-719_528i64, -719_529, 2_932_896, 2_932_897, 0, -1]),
            ],
        ) {
            let mut stamps = Stamps::default();
            let mut day = base;
            let mut last_of_day = 0;
            for (step, of_day, nanos) in times {
                let of_day = match of_day {
                    -1 => last_of_day,
                    _ => {
                        day += step;
                        of_day
                    }
                };
                last_of_day = of_day;
                let Some(t) = DateTime::<Utc>::from_timestamp(day * 86_400 + of_day, nanos) else {
                    continue;
                };
                let mut kept = Vec::new();
                stamps.write(&mut kept, t);
                prop_assert_eq!(String::from_utf8(kept).unwrap(), serde_json::to_string(&t).unwrap());
            }
        }
    }
}
