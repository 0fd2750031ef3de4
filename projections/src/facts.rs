//! What school-wide views keep about each pupil: the pupil's registration
//! and the events a view reads, each *as corrected*.
//!
//! Why facts and not running totals: an `EntryCorrected` may change any
//! field of an earlier entry (an incident's category, a suspension's days, a
//! register mark's code), and a pupil's registration may be corrected too
//! (their class). Keeping the corrected facts and aggregating at query time
//! makes every report follow every correction with no undo logic, and the
//! facts a view reads are small next to the log (register marks, the one
//! large kind, are packed by [`crate::attendance`]).
//!
//! Corrections are applied with [`casebook_engine::domain::apply_changes`],
//! the same function the command side checks them with, in stream order,
//! each to the entry as the previous ones left it. A correction that does not
//! apply (it names an entry of another stream or one this view does not
//! keep, or its changes no longer fit the type) leaves the entry as it was,
//! as the engine's own `CaseState` does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use casebook_engine::domain::apply_changes;
use casebook_engine::event::{CaseEvent, EntryCorrected, PupilRegistered};
use casebook_engine::{RecordedEvent, StreamId};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pupil_map::PupilMap;

/// Makes room in `list` for one more item: when it is full, `step` more
/// until it holds `until`, then as much again as it holds. The school-wide
/// views keep lists per pupil that all grow together with the log; at
/// double (what `Vec` does) about a quarter of their memory is room never
/// used, and steps of one size leave less, with no more freed blocks the
/// allocator cannot reuse (growing by a quarter instead made the process
/// larger: docs/performance.md, "Session i"). Past `until` the list
/// doubles, so the copying stays linear however long a log makes one list.
pub(crate) fn make_room<T>(list: &mut Vec<T>, step: usize, until: usize) {
    if list.len() == list.capacity() {
        list.reserve_exact(if list.len() < until { step } else { list.len() });
    }
}

/// One event a view keeps, with the envelope fields reports show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub event_id: Uuid,
    pub position: u64,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// Who recorded it.
    pub actor: String,
    /// The payload as corrected.
    pub event: CaseEvent,
}

impl Tracked {
    pub fn new(e: &RecordedEvent) -> Tracked {
        Tracked {
            event_id: e.event_id,
            position: e.position,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            actor: e.actor.clone(),
            event: e.event.clone(),
        }
    }

    /// Whether this is `e` as [`Tracked::new`] would keep it: the same
    /// envelope fields and payload.
    fn is(&self, e: &RecordedEvent) -> bool {
        self.event_id == e.event_id
            && self.position == e.position
            && self.occurred_at == e.occurred_at
            && self.recorded_at == e.recorded_at
            && self.actor == e.actor
            && self.event == e.event
    }
}

/// `original` with `changes` applied, or `None` when they do not apply. The
/// type never changes: `apply_changes` refuses that, and this checks again
/// because a view files entries by type.
pub fn corrected(
    original: &CaseEvent,
    changes: &serde_json::Map<String, serde_json::Value>,
) -> Option<CaseEvent> {
    apply_changes(original, changes)
        .ok()
        .filter(|new| new.type_name() == original.type_name())
}

thread_local! {
    /// The registration a view on this thread kept last
    /// ([`PupilCard::register`]), for the next view that folds the same
    /// event to share.
    static LAST_REGISTRATION: RefCell<Option<Arc<Tracked>>> = const { RefCell::new(None) };
}

/// `e` as a card keeps it: the registration the last card registered on
/// this thread when that is `e` (a rebuild folds each event into every
/// view in turn, so the seven views' cards of a pupil share one copy),
/// else a new one, which the next view may share.
fn shared_registration(e: &RecordedEvent) -> Arc<Tracked> {
    LAST_REGISTRATION.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some(kept) if kept.is(e) => Arc::clone(kept),
            _ => {
                let kept = Arc::new(Tracked::new(e));
                *last = Some(Arc::clone(&kept));
                kept
            }
        }
    })
}

/// A pupil's registration as corrected (class, site and year for reports).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PupilCard {
    /// Behind a pointer: every school-wide view keeps a card per pupil in
    /// its map, which holds room for more values than it holds (a
    /// `BTreeMap`'s nodes room for eleven until session bj, a
    /// [`PupilMap`]'s `Vec` of entries since); 8 bytes each there
    /// instead of a 232-byte `Tracked` (in a 9.9M-event rebuild the seven
    /// maps' nodes were 51 MB). Shared: the views that
    /// fold the same registration hold one copy of it and its strings
    /// (~400 bytes a pupil), until a correction names it, when each view
    /// corrects its own copy. The checkpoint form is the same as a box's.
    registration: Option<Arc<Tracked>>,
}

impl PupilCard {
    /// Takes the stream's first `PupilRegistered`. A second one cannot be
    /// recorded; if a log holds one anyway, the first is who the stream is.
    pub(crate) fn register(&mut self, e: &RecordedEvent) {
        if self.registration.is_none() {
            self.registration = Some(shared_registration(e));
        }
    }

    /// Applies `c` if it names the registration; returns whether it did.
    /// The registration is copied first only when the changes apply.
    pub(crate) fn correct(&mut self, c: &EntryCorrected) -> bool {
        let Some(r) = self.registration.as_mut() else {
            return false;
        };
        if r.event_id != c.event {
            return false;
        }
        if let Some(new) = corrected(&r.event, &c.changes) {
            Arc::make_mut(r).event = new;
        }
        true
    }

    pub fn registered(&self) -> Option<&PupilRegistered> {
        match self.registration.as_ref().map(|r| &r.event) {
            Some(CaseEvent::PupilRegistered(p)) => Some(p),
            _ => None,
        }
    }

    /// The school's reference for the pupil. A stream whose registration is
    /// missing (a log older than the rule) is named by its stream id, so its
    /// entries still show up somewhere a person can find them.
    pub fn pupil(&self, stream: StreamId) -> String {
        match self.registered() {
            Some(p) if !p.pupil.is_empty() => p.pupil.clone(),
            _ => format!("stream:{stream}"),
        }
    }

    pub fn class(&self) -> Option<&str> {
        self.registered().and_then(|p| p.class.as_deref())
    }

    pub fn site(&self) -> Option<&str> {
        self.registered().and_then(|p| p.site.as_deref())
    }

    pub fn year_group(&self) -> Option<u8> {
        self.registered().map(|p| p.year_group)
    }

    pub fn sen(&self) -> Option<bool> {
        self.registered().and_then(|p| p.sen)
    }
}

/// One event a view keeps, compactly: the envelope fields reports show,
/// the actor shared with every other event of the same actor on this
/// thread, and the payload as the log stores it (MessagePack with field
/// names, `encode_payload`), decoded when a report reads it
/// ([`Kept::event`]). 80 bytes and the payload's (60 to 250 in a demo
/// school), where a [`Tracked`] was 232 bytes and an allocation for the
/// actor and for each string of the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    pub event_id: Uuid,
    pub position: u64,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// Who recorded it.
    pub actor: Arc<str>,
    payload: Payload,
}

/// Bytes reserved for a kept event's payload before it is encoded.
const PAYLOAD_ROOM: usize = 256;

/// A kept event's payload: its bytes, or the event itself in the case,
/// never met, of an event that does not encode.
#[derive(Clone, Debug, PartialEq)]
enum Payload {
    Packed(Box<[u8]>),
    Plain(Box<CaseEvent>),
}

impl Payload {
    /// The event's bytes as the log's payload encoding writes them
    /// (MessagePack with field names), whatever their size: a correction
    /// may make an event larger than a payload the log takes, and its
    /// checkpoint must read back as the same kept event.
    fn of(event: &CaseEvent) -> Payload {
        // Room for most payloads at once, as `encode_payload` gives it:
        // grown from nothing, the allocations on the way left the rebuild
        // of an 8.2M-event store 10 MB larger (219 MB against 209).
        let mut bytes = Vec::with_capacity(PAYLOAD_ROOM);
        match rmp_serde::encode::write_named(&mut bytes, event) {
            Ok(()) => Payload::Packed(bytes.into_boxed_slice()),
            Err(_) => Payload::Plain(Box::new(event.clone())),
        }
    }
}

thread_local! {
    /// The actors of the events kept on this thread, each once (staff
    /// references: a school has a few hundred). Emptied if it ever holds
    /// [`ACTORS_KEPT`], so that it stays small whatever a log holds.
    static ACTORS: RefCell<std::collections::HashMap<Box<str>, Arc<str>>> =
        RefCell::new(std::collections::HashMap::new());
}

/// See [`ACTORS`].
const ACTORS_KEPT: usize = 4_096;

/// `actor`, shared with the events of the same actor kept before.
fn shared_actor(actor: &str) -> Arc<str> {
    ACTORS.with(|actors| {
        let mut actors = actors.borrow_mut();
        if let Some(kept) = actors.get(actor) {
            return Arc::clone(kept);
        }
        if actors.len() >= ACTORS_KEPT {
            actors.clear();
        }
        let kept: Arc<str> = Arc::from(actor);
        actors.insert(actor.into(), Arc::clone(&kept));
        kept
    })
}

impl Kept {
    pub fn new(e: &RecordedEvent) -> Kept {
        Kept {
            event_id: e.event_id,
            position: e.position,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            actor: shared_actor(&e.actor),
            payload: Payload::of(&e.event),
        }
    }

    /// The payload, as corrected. `None` only if its bytes do not decode,
    /// which they always do: they were encoded here, or checked when a
    /// checkpoint was read.
    pub fn event(&self) -> Option<CaseEvent> {
        match &self.payload {
            Payload::Packed(bytes) => rmp_serde::from_slice(bytes).ok(),
            Payload::Plain(event) => Some((**event).clone()),
        }
    }

    /// Applies `c`, which names this entry, if its changes fit the type.
    fn correct(&mut self, c: &EntryCorrected) {
        if let Some(new) = self.event().and_then(|e| corrected(&e, &c.changes)) {
            self.payload = Payload::of(&new);
        }
    }
}

/// The checkpoint form of a kept event: `(event id, position, occurred at,
/// recorded at, actor, payload)`, the times as microseconds since 1970 and
/// the payload as its bytes (`bin`), checked when read: a payload that
/// does not decode makes the checkpoint unreadable (the view is rebuilt).
impl Serialize for Kept {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let encoded;
        let bytes: &[u8] = match &self.payload {
            Payload::Packed(bytes) => bytes,
            Payload::Plain(event) => {
                encoded = rmp_serde::to_vec_named(event).map_err(serde::ser::Error::custom)?;
                &encoded
            }
        };
        let mut t = serializer.serialize_tuple(6)?;
        t.serialize_element(&self.event_id)?;
        t.serialize_element(&self.position)?;
        t.serialize_element(&self.occurred_at.timestamp_micros())?;
        t.serialize_element(&self.recorded_at.timestamp_micros())?;
        t.serialize_element(&*self.actor)?;
        t.serialize_element(&Bin(bytes))?;
        t.end()
    }
}

/// Bytes serialized as `bin`, not as a list of numbers.
pub(crate) struct Bin<'a>(pub(crate) &'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Kept {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Kept, D::Error> {
        deserializer.deserialize_tuple(6, KeptVisitor)
    }
}

struct KeptVisitor;

impl<'de> serde::de::Visitor<'de> for KeptVisitor {
    type Value = Kept;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a kept event (id, position, times, actor, payload)")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Kept, A::Error> {
        use serde::de::Error;
        let event_id: Uuid = field(&mut seq, 0)?;
        let position: u64 = field(&mut seq, 1)?;
        let time = |us: i64| {
            DateTime::<Utc>::from_timestamp_micros(us)
                .ok_or_else(|| A::Error::custom(format!("time {us} out of range")))
        };
        let occurred_at = time(field(&mut seq, 2)?)?;
        let recorded_at = time(field(&mut seq, 3)?)?;
        let actor: std::borrow::Cow<'de, str> = field(&mut seq, 4)?;
        let payload: BinBuf = field(&mut seq, 5)?;
        // Checked here, so that a report never meets a payload it cannot
        // read.
        rmp_serde::from_slice::<CaseEvent>(&payload.0)
            .map_err(|e| A::Error::custom(format!("the payload of {event_id}: {e}")))?;
        Ok(Kept {
            event_id,
            position,
            occurred_at,
            recorded_at,
            actor: shared_actor(&actor),
            payload: Payload::Packed(payload.0.into_boxed_slice()),
        })
    }
}

/// Field `i` of a kept event's tuple.
fn field<'de, T: Deserialize<'de>, A: serde::de::SeqAccess<'de>>(
    seq: &mut A,
    i: usize,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| serde::de::Error::invalid_length(i, &"6 fields"))
}

/// A `bin` read back, borrowed or not.
struct BinBuf(Vec<u8>);

impl<'de> Deserialize<'de> for BinBuf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<BinBuf, D::Error> {
        deserializer.deserialize_byte_buf(BinVisitor)
    }
}

struct BinVisitor;

impl serde::de::Visitor<'_> for BinVisitor {
    type Value = BinBuf;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BinBuf, E> {
        Ok(BinBuf(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BinBuf, E> {
        Ok(BinBuf(v))
    }
}

/// A string of a view's [`Names`]: its place in the list, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Name(NonZeroU32);

/// Every string a view's kept events have named (the behaviour view's
/// categories, locations, classes, sites and participants' references;
/// the caseload's staff, plan and intervention ids and kinds; the
/// interventions view's intervention ids, kinds and staff; the
/// suspensions view's reason codes), listed
/// once each in the order first met, with an index from string to place:
/// a school has a few dozen categories and a few hundred staff, where each
/// event kept whole held its own copies. A string a correction
/// replaced stays listed (the log holds it anyway); the list grows with
/// the distinct strings of the log, not with its events.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    list: Vec<Box<str>>,
    index: HashMap<Box<str>, Name>,
}

/// Two tables are the same when they list the same strings in the same
/// order; the index is derived from the list.
impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        self.list == other.list
    }
}

impl Names {
    pub(crate) fn name(&mut self, s: &str) -> Name {
        if let Some(name) = self.index.get(s) {
            return *name;
        }
        match u32::try_from(self.list.len() + 1)
            .ok()
            .and_then(NonZeroU32::new)
        {
            Some(place) => {
                self.list.push(s.into());
                self.index.insert(s.into(), Name(place));
                Name(place)
            }
            // 2^32 - 1 distinct strings would take more memory than any
            // machine running casebook has; past them, the last is shared.
            None => Name(NonZeroU32::MAX),
        }
    }

    pub(crate) fn get(&self, name: Name) -> &str {
        // Every name was given here or checked when a checkpoint was read.
        self.list.get(name.0.get() as usize - 1).map_or("", |s| s)
    }

    pub(crate) fn knows(&self, name: Name) -> bool {
        name.0.get() as usize <= self.list.len()
    }

    /// The strings, in order: a checkpoint's form of the table.
    pub(crate) fn list(&self) -> &[Box<str>] {
        &self.list
    }

    /// The table of a checkpoint's list; refused when it lists a string
    /// twice (its places would not be one string's).
    pub(crate) fn from_list(list: Vec<Box<str>>) -> Result<Names, String> {
        let mut names = Names::default();
        for s in list {
            if names.index.contains_key(&s) {
                return Err("the names list a string twice".into());
            }
            names.name(&s);
        }
        Ok(names)
    }
}

/// One event a view keeps as what it reads of it: its id, when it
/// happened, and `what` (the view's own form of its type and the fields
/// it reads; [`crate::reintegration`], [`crate::caseload`],
/// [`crate::interventions`], [`crate::suspensions`]). Its checkpoint form
/// is `(event id, occurred at, what)`, the time as microseconds since
/// 1970; one out of chrono's range makes the checkpoint unreadable (the
/// view is then rebuilt).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Step<W> {
    pub(crate) event_id: Uuid,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) what: W,
}

impl<W: Serialize> Serialize for Step<W> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            &self.event_id,
            self.occurred_at.timestamp_micros(),
            &self.what,
        )
            .serialize(serializer)
    }
}

impl<'de, W: Deserialize<'de>> Deserialize<'de> for Step<W> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Step<W>, D::Error> {
        let (event_id, micros, what) = <(Uuid, i64, W)>::deserialize(deserializer)?;
        let occurred_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| {
            serde::de::Error::custom(format!("event {event_id}: time {micros} out of range"))
        })?;
        Ok(Step {
            event_id,
            occurred_at,
            what,
        })
    }
}

/// A view's own form of what it reads of an event (its `What`), its
/// strings as places in the view's [`Names`].
pub(crate) trait Reading: Sized {
    /// What the view reads of `e`, if it reads `e`'s type (by type only,
    /// so that a correction never moves an entry in or out).
    fn of(e: &CaseEvent, names: &mut Names) -> Option<Self>;
    /// The event of this type with the fields kept, the others blank:
    /// what a correction is applied to (field by field, so the blanks
    /// change neither whether it applies nor what it makes of the fields
    /// kept; each view's property test checks this against whole events).
    fn event(&self, names: &Names) -> CaseEvent;
    /// The places in the view's names it holds (a checkpoint's check
    /// that each is listed).
    fn names(&self) -> impl Iterator<Item = Name> + '_;
}

/// The events a view keeps as what it reads of them ([`Step`]s of its
/// [`Reading`]), by stream with the pupil's card, in stream order, as
/// corrected; their strings once in `names`. The caseload, interventions,
/// reintegration and suspensions views.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Steps<W> {
    pub(crate) names: Names,
    pub(crate) pupils: PupilMap<StepsOf<W>>,
}

impl<W> Default for Steps<W> {
    fn default() -> Self {
        Steps {
            names: Names::default(),
            pupils: PupilMap::new(),
        }
    }
}

/// One pupil's registration and kept events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepsOf<W> {
    pub(crate) card: PupilCard,
    pub(crate) steps: Vec<Step<W>>,
}

impl<W> Default for StepsOf<W> {
    fn default() -> Self {
        StepsOf {
            card: PupilCard::default(),
            steps: Vec::new(),
        }
    }
}

impl<W: Reading> Steps<W> {
    /// Folds one event: a registration into the pupil's card, a
    /// correction into the entry it names (applied to the event as
    /// [`Reading::event`] gives it, kept when it applies and reads as the
    /// same type), an event of a type the view reads as a new step.
    pub(crate) fn apply(&mut self, e: &RecordedEvent) {
        match &e.event {
            CaseEvent::PupilRegistered(_) => self.pupils.or_default(e.stream).card.register(e),
            CaseEvent::EntryCorrected(c) => {
                let Some(pupil) = self.pupils.get_mut(&e.stream) else {
                    return;
                };
                let Some(step) =
                    corrected_entry(&mut pupil.card, &mut pupil.steps, c, |s| s.event_id)
                else {
                    return;
                };
                if let Some(what) = corrected(&step.what.event(&self.names), &c.changes)
                    .and_then(|new| W::of(&new, &mut self.names))
                {
                    step.what = what;
                }
            }
            other => {
                if let Some(what) = W::of(other, &mut self.names) {
                    let steps = &mut self.pupils.or_default(e.stream).steps;
                    // A pupil's events of one view are none to a few
                    // dozen a year.
                    make_room(steps, 4, 256);
                    steps.push(Step {
                        event_id: e.event_id,
                        occurred_at: e.occurred_at,
                        what,
                    });
                }
            }
        }
    }

    /// Each pupil's reference, in stream order, with what `read` makes of
    /// each of their steps, in stream order: a report's input.
    pub(crate) fn reads<'a, R: 'a>(
        &'a self,
        read: impl Fn(&'a Step<W>, &'a Names) -> R + Copy + 'a,
    ) -> impl Iterator<Item = (String, impl Iterator<Item = R> + 'a)> + 'a {
        self.pupils.iter().map(move |(stream, p)| {
            let steps = p.steps.iter().map(move |s| read(s, &self.names));
            (p.card.pupil(*stream), steps)
        })
    }

    /// The kept events of a checkpoint's `names` and `pupils`; refused
    /// when the names list a string twice or a step names a place past
    /// them (the view is then rebuilt).
    pub(crate) fn from_parts(
        names: Vec<Box<str>>,
        pupils: PupilMap<StepsOf<W>>,
    ) -> Result<Steps<W>, String> {
        let names = Names::from_list(names)?;
        for pupil in pupils.values() {
            for step in &pupil.steps {
                if !step.what.names().all(|n| names.knows(n)) {
                    return Err(format!(
                        "event {} names a string past the list",
                        step.event_id
                    ));
                }
            }
        }
        Ok(Steps { names, pupils })
    }
}

/// The checkpoint form: a map of `names` (the strings, in order; absent
/// in a view whose steps name none, read as none) and `pupils` (by
/// stream: the card and the steps).
impl<W: Serialize> Serialize for Steps<W> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form<'a, W> {
            names: &'a [Box<str>],
            pupils: &'a PupilMap<StepsOf<W>>,
        }
        Form {
            names: self.names.list(),
            pupils: &self.pupils,
        }
        .serialize(serializer)
    }
}

impl<'de, W: Deserialize<'de> + Reading> Deserialize<'de> for Steps<W> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Steps<W>, D::Error> {
        #[derive(Deserialize)]
        #[serde(bound = "W: Deserialize<'de>")]
        struct Form<W> {
            #[serde(default)]
            names: Vec<Box<str>>,
            pupils: PupilMap<StepsOf<W>>,
        }
        let form = Form::<W>::deserialize(deserializer)?;
        Steps::from_parts(form.names, form.pupils).map_err(serde::de::Error::custom)
    }
}

/// The entry of a pupil's `entries` that the correction `c` (in the
/// pupil's own stream: a correction names an entry of the same pupil)
/// changes, when it is not the pupil's registration (which `card` then
/// takes): the first whose id, by `id`, is the one corrected.
pub(crate) fn corrected_entry<'a, T>(
    card: &mut PupilCard,
    entries: &'a mut [T],
    c: &EntryCorrected,
    id: impl Fn(&T) -> Uuid,
) -> Option<&'a mut T> {
    if card.correct(c) {
        return None;
    }
    entries.iter_mut().find(|t| id(t) == c.event)
}

/// One pupil's facts in one view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PupilFacts {
    pub card: PupilCard,
    /// The events the view reads, in stream order, as corrected.
    pub events: Vec<Kept>,
}

/// The facts of every pupil for a view that reads the event types `reads`
/// accepts. Keyed by stream; reports sort by pupil reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    pub pupils: PupilMap<PupilFacts>,
}

impl Tracker {
    /// Folds one event. `reads` picks the event types the view keeps (by
    /// type only, so that a correction never moves an entry in or out).
    pub fn apply(&mut self, e: &RecordedEvent, reads: fn(&CaseEvent) -> bool) {
        match &e.event {
            // Access-log entries live in their own streams and are no part
            // of any school-wide view.
            CaseEvent::RecordViewed(_) => {}
            CaseEvent::PupilRegistered(_) => self.pupils.or_default(e.stream).card.register(e),
            CaseEvent::EntryCorrected(c) => {
                // Only the correcting stream is searched: a correction names
                // an entry of the same pupil.
                if let Some(facts) = self.pupils.get_mut(&e.stream) {
                    if let Some(t) =
                        corrected_entry(&mut facts.card, &mut facts.events, c, |t| t.event_id)
                    {
                        t.correct(c);
                    }
                }
            }
            other if reads(other) => {
                let events = &mut self.pupils.or_default(e.stream).events;
                // A pupil's events of one view are a few to a few dozen
                // a year.
                make_room(events, 4, 256);
                events.push(Kept::new(e));
            }
            _ => {}
        }
    }

    /// Every kept event with its pupil's card, pupil by pupil.
    pub fn events(&self) -> impl Iterator<Item = (StreamId, &PupilCard, &Kept)> + '_ {
        self.pupils
            .iter()
            .flat_map(|(s, f)| f.events.iter().map(move |t| (*s, &f.card, t)))
    }
}

/// `2025/26` for the academic year starting in September 2025.
pub fn academic_year_label(year: i32) -> String {
    format!("{year}/{:02}", year.saturating_add(1).rem_euclid(100))
}

/// A school term, as the governing-board thresholds count suspension days.
/// Spring is taken as 1 January to 31 March: Easter moves, and a fixed
/// boundary keeps reports reproducible (DOMAIN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    Autumn,
    Spring,
    Summer,
}

impl Term {
    pub fn of(date: NaiveDate) -> Term {
        match date.month() {
            9..=12 => Term::Autumn,
            1..=3 => Term::Spring,
            _ => Term::Summer,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Term::Autumn => "autumn",
            Term::Spring => "spring",
            Term::Summer => "summer",
        }
    }
}

/// `part / whole` as a percentage with one decimal, `None` when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> Option<f64> {
    if whole == 0 {
        return None;
    }
    Some((part as f64 * 1000.0 / whole as f64).round() / 10.0)
}

/// Helpers of the views' tests: generated logs, the whole-event
/// reference, damaged and hand-written checkpoints.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::collections::BTreeMap;

    /// The event `position` of a generated log, in `pupil`'s stream, its id
    /// the position: for the views' property tests.
    pub(crate) fn generated(
        pupil: &str,
        position: u64,
        at: DateTime<Utc>,
        event_type: &str,
        data: serde_json::Value,
    ) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: StreamId::for_pupil("s", pupil),
            version: position,
            event_id: Uuid::from_u128(u128::from(position)),
            occurred_at: at,
            recorded_at: at,
            actor: "S1".into(),
            correlation_id: None,
            causation_id: None,
            schema: casebook_engine::event::CURRENT_SCHEMA,
            hash: [0; 32],
            event: CaseEvent::from_type_and_data(event_type, data).unwrap(),
        }
    }

    /// One entry of a generated log: its pupil (an index into the log's
    /// pupils), day and type and data, or a correction of the pupil's `n`-th
    /// event so far (past the end: an id no event has). For the views'
    /// property tests.
    #[derive(Clone, Debug)]
    pub(crate) enum Line {
        Event(usize, u16, &'static str, serde_json::Value),
        Correct(usize, usize, serde_json::Value),
    }

    /// The events of `lines`, the pupils named by `pupils`, the days counted
    /// from 1 September 2025 (corrections on that day).
    pub(crate) fn generated_log(pupils: &[&str], lines: &[Line]) -> Vec<RecordedEvent> {
        let start = DateTime::parse_from_rfc3339("2025-09-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut ids: Vec<Vec<Uuid>> = vec![Vec::new(); pupils.len()];
        let mut events = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let position = n as u64 + 1;
            let (pupil, e) = match line {
                Line::Event(p, day, t, data) => {
                    let at = start + chrono::Duration::days(i64::from(*day));
                    (*p, generated(pupils[*p], position, at, t, data.clone()))
                }
                Line::Correct(p, n, changes) => {
                    let id = ids[*p]
                        .get(*n)
                        .copied()
                        .unwrap_or(Uuid::from_u128(u128::MAX));
                    let data =
                        serde_json::json!({"event": id, "changes": changes, "reason": "typo"});
                    (
                        *p,
                        generated(pupils[*p], position, start, "EntryCorrected", data),
                    )
                }
            };
            ids[pupil].push(e.event_id);
            events.push(e);
        }
        events
    }

    /// Lines of a log of `pupils` pupils: events of `event` on days 0 to 299,
    /// and corrections of `changes` (one to two fields of `one`) of each
    /// pupil's first ten events.
    pub(crate) fn line(
        pupils: usize,
        event: impl proptest::strategy::Strategy<Value = (&'static str, serde_json::Value)>,
        one: impl proptest::strategy::Strategy<Value = (&'static str, serde_json::Value)>,
    ) -> impl proptest::strategy::Strategy<Value = Line> {
        use proptest::prelude::*;
        let changes = prop::collection::vec(one, 1..3).prop_map(|kvs| {
            serde_json::Value::Object(kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        });
        prop_oneof![
            3 => (0..pupils, 0u16..300, event)
                .prop_map(|(p, day, (t, data))| Line::Event(p, day, t, data)),
            2 => (0..pupils, 0usize..10, changes)
                .prop_map(|(p, n, changes)| Line::Correct(p, n, changes)),
        ]
    }

    /// `events` folded by a view and by a [`Tracker`] keeping the events
    /// `reads` accepts whole (the views' form before `VERSION` 3), for the
    /// views' tests to compare.
    pub(crate) fn folded<V: crate::Projection + Default>(
        events: &[RecordedEvent],
        reads: fn(&CaseEvent) -> bool,
    ) -> (V, Tracker) {
        let mut view = V::default();
        let mut whole = Tracker::default();
        for e in events {
            view.apply(e, None);
            whole.apply(e, reads);
        }
        (view, whole)
    }

    /// `view`'s checkpoint with its byte `at` (modulo its length) made
    /// `byte`, read back: `None` when refused.
    pub(crate) fn damaged<V: Serialize + serde::de::DeserializeOwned>(
        view: &V,
        at: usize,
        byte: u8,
    ) -> Option<V> {
        let mut bytes = rmp_serde::to_vec_named(view).unwrap();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        rmp_serde::from_slice::<V>(&bytes).ok()
    }

    /// One of `values`.
    pub(crate) fn pick(
        values: Vec<serde_json::Value>,
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        proptest::sample::select(values)
    }

    /// One of three ids of the form `{prefix}{0..3}`.
    pub(crate) fn test_id(
        prefix: &'static str,
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::strategy::Strategy;
        (0u8..3).prop_map(move |n| serde_json::json!(format!("{prefix}{n}")))
    }

    /// Checks a view's kept steps against the same events kept whole: the
    /// same pupils with the same cards, each pupil's events (ids and times)
    /// in the same order, and of each the fields `kept` picks of the event its
    /// step gives back ([`Reading::event`]) equal to those of the whole event.
    pub(crate) fn same_as_whole<W: Reading>(
        slim: &Steps<W>,
        whole: &Tracker,
        kept: impl Fn(&CaseEvent) -> serde_json::Value,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert_eq;
        let streams: Vec<_> = slim.pupils.keys().collect();
        prop_assert_eq!(streams, whole.pupils.keys().collect::<Vec<_>>());
        for (stream, facts) in &whole.pupils {
            let pupil = &slim.pupils[stream];
            prop_assert_eq!(&pupil.card, &facts.card);
            let ids: Vec<_> = pupil
                .steps
                .iter()
                .map(|s| (s.event_id, s.occurred_at))
                .collect();
            let whole_ids: Vec<_> = facts
                .events
                .iter()
                .map(|k| (k.event_id, k.occurred_at))
                .collect();
            prop_assert_eq!(ids, whole_ids);
            let fields: Vec<_> = pupil
                .steps
                .iter()
                .map(|s| kept(&s.what.event(&slim.names)))
                .collect();
            let whole_fields: Vec<_> = facts
                .events
                .iter()
                .map(|k| kept(&k.event().unwrap()))
                .collect();
            prop_assert_eq!(fields, whole_fields);
        }
        Ok(())
    }

    /// A checkpoint of a [`Steps`] view written by hand, for the refusal
    /// tests: `names`, and one pupil (no registration) whose steps are
    /// `(event id, microseconds since 1970, what)`.
    pub(crate) fn steps_checkpoint<W: Serialize>(
        names: Vec<&str>,
        steps: Vec<(Uuid, i64, W)>,
    ) -> Vec<u8> {
        #[derive(Serialize)]
        struct PupilForm<W> {
            card: PupilCard,
            steps: Vec<(Uuid, i64, W)>,
        }
        #[derive(Serialize)]
        struct ViewForm<'a, W> {
            names: Vec<&'a str>,
            pupils: BTreeMap<StreamId, PupilForm<W>>,
        }
        let card = PupilCard::default();
        let pupils = BTreeMap::from([(StreamId::for_pupil("s", "P1"), PupilForm { card, steps })]);
        rmp_serde::to_vec_named(&ViewForm { names, pupils }).unwrap()
    }

    /// A date of the `days` from 1 September 2025, as a JSON string.
    pub(crate) fn valid_date(
        days: u16,
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::strategy::Strategy;
        (0..days).prop_map(|d| {
            let day =
                NaiveDate::from_ymd_opt(2025, 9, 1).unwrap() + chrono::Duration::days(d.into());
            serde_json::json!(day.to_string())
        })
    }

    /// `view` written to its checkpoint form and read back.
    pub(crate) fn read_back<V: Serialize + serde::de::DeserializeOwned>(view: &V) -> V {
        rmp_serde::from_slice(&rmp_serde::to_vec_named(view).unwrap()).unwrap()
    }

    /// Each pupil's whole events of `whole`, decoded, with the kept form
    /// they came from (for its id and time).
    pub(crate) fn whole_events(whole: &Tracker) -> BTreeMap<StreamId, Vec<(CaseEvent, &Kept)>> {
        whole
            .pupils
            .iter()
            .map(|(stream, facts)| {
                let events = facts
                    .events
                    .iter()
                    .map(|k| (k.event().unwrap(), k))
                    .collect();
                (*stream, events)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn recorded(position: u64, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        let at = DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        testing::generated("P1", position, at, event_type, data)
    }

    fn registration(position: u64, class: &str) -> RecordedEvent {
        recorded(
            position,
            "PupilRegistered",
            json!({"pupil": "P1", "name": "Ada Testpupil", "date_of_birth": "2012-05-01",
                "year_group": 9, "class": class}),
        )
    }

    /// The views folding one registration share one copy of it; a
    /// correction one view applies copies it first, so the others keep
    /// theirs; a different event, even under the same id, is never shared.
    #[test]
    fn cards_share_a_registration_until_one_is_corrected() {
        let e = registration(1, "9A");
        let (mut a, mut b) = (PupilCard::default(), PupilCard::default());
        a.register(&e);
        b.register(&e);
        let (ra, rb) = (a.registration.as_ref(), b.registration.as_ref());
        assert!(Arc::ptr_eq(ra.unwrap(), rb.unwrap()));
        let c = match recorded(
            2,
            "EntryCorrected",
            json!({"event": e.event_id, "changes": {"class": "9B"}, "reason": "moved"}),
        )
        .event
        {
            CaseEvent::EntryCorrected(c) => c,
            other => panic!("{other:?}"),
        };
        assert!(a.correct(&c));
        assert_eq!(a.class(), Some("9B"));
        assert_eq!(b.class(), Some("9A"));
        // Same id and position, other content: its own copy.
        let mut other = PupilCard::default();
        other.register(&registration(1, "9C"));
        assert_eq!(other.class(), Some("9C"));
        assert_eq!(b.class(), Some("9A"));
        // A card read back from a checkpoint is the same card.
        let bytes = rmp_serde::to_vec(&b).unwrap();
        assert_eq!(rmp_serde::from_slice::<PupilCard>(&bytes).unwrap(), b);
    }

    fn incident(position: u64, actor: &str, category: &str) -> RecordedEvent {
        let mut e = recorded(
            position,
            "IncidentRecorded",
            json!({"category": category, "severity": 2, "location": "corridor",
                "description": "Refused a reasonable instruction (synthetic).",
                "role": "perpetrator", "class": "9E", "site": "Main"}),
        );
        e.actor = actor.into();
        e
    }

    /// A kept event gives back the event it kept, shares its actor with
    /// the others of that actor, reads back from its checkpoint form as it
    /// was, and takes a correction as the event itself would.
    #[test]
    fn a_kept_event_is_the_event_compactly() {
        let e = incident(7, "S017", "defiance");
        let kept = Kept::new(&e);
        assert_eq!(kept.event(), Some(e.event.clone()));
        assert_eq!(
            (
                kept.event_id,
                kept.position,
                kept.occurred_at,
                kept.recorded_at
            ),
            (e.event_id, e.position, e.occurred_at, e.recorded_at)
        );
        assert_eq!(&*kept.actor, "S017");
        let other = Kept::new(&incident(8, "S017", "other"));
        assert!(Arc::ptr_eq(&kept.actor, &other.actor));
        let bytes = rmp_serde::to_vec_named(&vec![kept.clone(), other.clone()]).unwrap();
        let back: Vec<Kept> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, vec![kept.clone(), other]);
        let c = EntryCorrected {
            event: e.event_id,
            changes: json!({"category": "bullying"}).as_object().unwrap().clone(),
            reason: "mistyped".into(),
        };
        let mut fixed = kept.clone();
        fixed.correct(&c);
        assert_eq!(fixed.event(), corrected(&e.event, &c.changes));
        assert_eq!(
            fixed.event(),
            Kept::new(&incident(7, "S017", "bullying")).event()
        );
        // A correction that does not apply leaves it; one of another entry
        // is not its.
        let mut same = kept.clone();
        let bad = EntryCorrected {
            changes: json!({"severity": "high"}).as_object().unwrap().clone(),
            ..c.clone()
        };
        same.correct(&bad);
        assert_eq!(same, kept);
        let elsewhere = EntryCorrected {
            event: Uuid::from_u128(99),
            ..c
        };
        let mut card = PupilCard::default();
        let entries = std::slice::from_mut(&mut same);
        assert!(corrected_entry(&mut card, entries, &elsewhere, |k| k.event_id).is_none());
        assert!(corrected_entry(&mut card, entries, &bad, |k| k.event_id).is_some());
        // A correction may make an event larger than a payload the log
        // takes: kept as bytes still, it reads back from a checkpoint as
        // the same kept event.
        let long = EntryCorrected {
            event: e.event_id,
            changes: json!({"description": "x".repeat(40_000), "location": "y".repeat(40_000)})
                .as_object()
                .unwrap()
                .clone(),
            reason: "longer".into(),
        };
        let mut large = kept.clone();
        large.correct(&long);
        match large.event() {
            Some(CaseEvent::IncidentRecorded(i)) => {
                assert_eq!((i.description.len(), i.location.len()), (40_000, 40_000))
            }
            other => panic!("{other:?}"),
        }
        assert!(casebook_engine::envelope::encode_payload(&large.event().unwrap()).is_err());
        assert!(matches!(large.payload, Payload::Packed(_)));
        let bytes = rmp_serde::to_vec_named(&large).unwrap();
        assert_eq!(rmp_serde::from_slice::<Kept>(&bytes).unwrap(), large);
        // The checkpoint form is the tuple, the payload its bytes as the
        // log stores them; bytes that are not a payload are refused.
        let tuple = |payload: &[u8]| {
            let at = e.occurred_at.timestamp_micros();
            rmp_serde::to_vec(&(e.event_id, 7u64, at, at, "S017", Bin(payload))).unwrap()
        };
        let payload = casebook_engine::envelope::encode_payload(&e.event).unwrap();
        let read: Kept = rmp_serde::from_slice(&tuple(&payload)).unwrap();
        assert_eq!(read, kept);
        let refused = rmp_serde::from_slice::<Kept>(&tuple(b"not a payload"));
        assert!(refused.unwrap_err().to_string().contains("the payload of"));
    }

    proptest::proptest! {
        /// Whatever bytes stand for a kept event's payload in a
        /// checkpoint, reading it does not panic, and what is read gives
        /// its event back: a payload that does not decode is refused.
        #[test]
        fn any_payload_bytes_are_read_or_refused_without_panic(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let good = rmp_serde::to_vec_named(&Kept::new(&incident(3, "S1", "x"))).unwrap();
            let mut changed = good.clone();
            let i = at % changed.len();
            changed[i] = byte;
            // The tuple of a kept event, with `payload` as its payload.
            let forged = rmp_serde::to_vec_named(
                &(Uuid::from_u128(1), 3u64, 0i64, 0i64, "S1", Bin(&payload)),
            )
            .unwrap();
            for bytes in [good, changed, forged] {
                if let Ok(kept) = rmp_serde::from_slice::<Kept>(&bytes) {
                    proptest::prop_assert!(kept.event().is_some());
                }
            }
        }
    }
}
