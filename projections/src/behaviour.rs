//! Behaviour trends: incident counts by category, location, class, site or
//! ISO week.
//!
//! Each `IncidentRecorded` in a pupil's stream counts once. The class and
//! site are the incident's own when it names them, else the pupil's
//! registered class and site (as corrected), else `(none)`. Weeks are ISO
//! weeks (`2025-W38`) of `occurred_at` in UTC. `pupils` counts the distinct
//! pupils of a group: the recording pupil and every listed participant.
//!
//! The view keeps of each incident only what its report reads ([`Incident`]:
//! the date, severity, category, location, class, site and participants'
//! references, each string once for the whole view in [`Names`]), not the
//! whole payload: incidents are the view's one large kind (98,109 on the
//! demo's 8.2M-event store, ~440 bytes each kept whole, 56 here). A
//! correction is applied to the incident as the view keeps it, with the
//! fields it does not keep (the description, the roles) blank: changes
//! apply field by field (`apply_changes` reads the event's fields, puts the
//! changed ones over them and reads the type back), so whether a correction
//! applies, and what it makes of the fields kept, does not depend on the
//! fields left out (property test
//! `tests::incidents_kept_slim_follow_corrections_as_whole_ones_do`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use casebook_engine::domain::academic_year;
use casebook_engine::event::{CaseEvent, EntryCorrected, IncidentRecorded, Participant};
use casebook_engine::RecordedEvent;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::{corrected, corrected_entry, make_room, Name, Names, PupilCard};
use crate::pupil_map::PupilMap;
use crate::Projection;

/// The group label of incidents with no class or site anywhere.
pub const NONE_LABEL: &str = "(none)";

/// The behaviour projection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Behaviour {
    names: Names,
    pupils: PupilMap<Pupil>,
}

/// One pupil's registration and incidents, in stream order, as corrected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Pupil {
    card: PupilCard,
    incidents: Vec<Incident>,
}

/// What the report reads of one incident, as corrected: 56 bytes.
#[derive(Clone, Debug, PartialEq)]
struct Incident {
    /// Corrections name it.
    event_id: Uuid,
    /// The day of `occurred_at`, in UTC.
    date: NaiveDate,
    severity: u8,
    category: Name,
    location: Name,
    class: Option<Name>,
    site: Option<Name>,
    /// The other pupils' references.
    participants: Box<[Name]>,
}

impl Incident {
    fn new(event_id: Uuid, date: NaiveDate, i: &IncidentRecorded, names: &mut Names) -> Incident {
        Incident {
            event_id,
            date,
            severity: i.severity,
            category: names.name(&i.category),
            location: names.name(&i.location),
            class: i.class.as_deref().map(|c| names.name(c)),
            site: i.site.as_deref().map(|s| names.name(s)),
            participants: i
                .participants
                .iter()
                .map(|p| names.name(&p.pupil))
                .collect(),
        }
    }

    /// The incident as an event: the fields kept, and the others (the
    /// description, the roles) blank.
    fn event(&self, names: &Names) -> IncidentRecorded {
        let text = |name: Name| names.get(name).to_string();
        IncidentRecorded {
            category: text(self.category),
            severity: self.severity,
            location: text(self.location),
            description: String::new(),
            role: Default::default(),
            participants: self
                .participants
                .iter()
                .map(|p| Participant {
                    pupil: text(*p),
                    role: Default::default(),
                })
                .collect(),
            class: self.class.map(text),
            site: self.site.map(text),
        }
    }

    /// Applies `c`, which names this incident, if its changes apply.
    fn correct(&mut self, c: &EntryCorrected, names: &mut Names) {
        let kept = CaseEvent::IncidentRecorded(self.event(names));
        if let Some(CaseEvent::IncidentRecorded(new)) = corrected(&kept, &c.changes) {
            *self = Incident::new(self.event_id, self.date, &new, names);
        }
    }
}

/// The checkpoint form of an incident: `(event id, date, severity,
/// category, location, class, site, participants)`, the date as its day
/// count from 1 January of year 1, that day being 1
/// (`num_days_from_ce`), and each string as its place in the view's names.
type IncidentForm = (
    Uuid,
    i32,
    u8,
    Name,
    Name,
    Option<Name>,
    Option<Name>,
    Vec<Name>,
);

impl Serialize for Incident {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            &self.event_id,
            self.date.num_days_from_ce(),
            self.severity,
            self.category,
            self.location,
            self.class,
            self.site,
            &*self.participants,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Incident {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Incident, D::Error> {
        let (event_id, days, severity, category, location, class, site, participants) =
            IncidentForm::deserialize(deserializer)?;
        let date = NaiveDate::from_num_days_from_ce_opt(days).ok_or_else(|| {
            serde::de::Error::custom(format!("incident {event_id}: day {days} is no date"))
        })?;
        Ok(Incident {
            event_id,
            date,
            severity,
            category,
            location,
            class,
            site,
            participants: participants.into_boxed_slice(),
        })
    }
}

/// The checkpoint: a map of `names` (the strings, in order) and `pupils`
/// (by stream: the card and the incidents).
impl Serialize for Behaviour {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Form<'a> {
            names: &'a [Box<str>],
            pupils: &'a PupilMap<Pupil>,
        }
        Form {
            names: self.names.list(),
            pupils: &self.pupils,
        }
        .serialize(serializer)
    }
}

/// Refuses a checkpoint listing a string twice or naming a place past its
/// list (the view is then rebuilt), so that every name read back is one
/// the report finds.
impl<'de> Deserialize<'de> for Behaviour {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Behaviour, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Form {
            names: Vec<Box<str>>,
            pupils: PupilMap<Pupil>,
        }
        let form = Form::deserialize(deserializer)?;
        let names = Names::from_list(form.names).map_err(D::Error::custom)?;
        for pupil in form.pupils.values() {
            for i in &pupil.incidents {
                let listed = [i.category, i.location]
                    .into_iter()
                    .chain(i.class)
                    .chain(i.site)
                    .chain(i.participants.iter().copied())
                    .all(|n| names.knows(n));
                if !listed {
                    return Err(D::Error::custom(format!(
                        "incident {} names a string past the list",
                        i.event_id
                    )));
                }
            }
        }
        Ok(Behaviour {
            names,
            pupils: form.pupils,
        })
    }
}

impl Projection for Behaviour {
    const NAME: &'static str = "behaviour";
    /// 3: each incident kept as what the report reads of it, its strings
    /// in the view's names.
    const VERSION: u32 = 3;

    fn apply(&mut self, e: &RecordedEvent, _corrected_at: Option<u64>) {
        match &e.event {
            CaseEvent::PupilRegistered(_) => self.pupils.or_default(e.stream).card.register(e),
            CaseEvent::EntryCorrected(c) => {
                // Only the correcting stream is searched: a correction names
                // an entry of the same pupil.
                if let Some(pupil) = self.pupils.get_mut(&e.stream) {
                    if let Some(i) =
                        corrected_entry(&mut pupil.card, &mut pupil.incidents, c, |i| i.event_id)
                    {
                        i.correct(c, &mut self.names);
                    }
                }
            }
            CaseEvent::IncidentRecorded(i) => {
                let incidents = &mut self.pupils.or_default(e.stream).incidents;
                // A pupil's incidents are a few to a few dozen a year.
                make_room(incidents, 4, 256);
                incidents.push(Incident::new(
                    e.event_id,
                    e.occurred_at.date_naive(),
                    i,
                    &mut self.names,
                ));
            }
            _ => {}
        }
    }
}

/// What incidents are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BehaviourDimension {
    Category,
    Location,
    Class,
    Site,
    Week,
}

impl BehaviourDimension {
    pub const ALL: &'static [BehaviourDimension] = &[
        BehaviourDimension::Category,
        BehaviourDimension::Location,
        BehaviourDimension::Class,
        BehaviourDimension::Site,
        BehaviourDimension::Week,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BehaviourDimension::Category => "category",
            BehaviourDimension::Location => "location",
            BehaviourDimension::Class => "class",
            BehaviourDimension::Site => "site",
            BehaviourDimension::Week => "week",
        }
    }
}

impl FromStr for BehaviourDimension {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BehaviourDimension::ALL
            .iter()
            .copied()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!("unknown dimension {s:?}; use category, location, class, site or week")
            })
    }
}

/// `report behaviour --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BehaviourReport {
    pub by: BehaviourDimension,
    /// The academic year counted, or `null` for every year.
    pub academic_year: Option<i32>,
    /// Incidents counted.
    pub incidents: u64,
    /// One row per group: most incidents first (by week: in week order).
    pub groups: Vec<BehaviourGroup>,
}

/// Incidents of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BehaviourGroup {
    pub key: String,
    pub incidents: u64,
    /// Distinct pupils involved (recording pupil and participants).
    pub pupils: u64,
    /// Incidents of severity 4 or 5.
    pub serious: u64,
}

#[derive(Default)]
struct Tally {
    incidents: u64,
    pupils: BTreeSet<String>,
    serious: u64,
}

impl Behaviour {
    /// Incident counts by `by`, for one academic year (by the incident's
    /// date) or, with `None`, for all.
    pub fn by(&self, by: BehaviourDimension, academic_year_filter: Option<i32>) -> BehaviourReport {
        let mut groups: BTreeMap<String, Tally> = BTreeMap::new();
        let mut total = 0;
        let name = |n: Name| self.names.get(n);
        for (stream, p) in &self.pupils {
            let pupil = p.card.pupil(*stream);
            for i in &p.incidents {
                if academic_year_filter.is_some_and(|y| academic_year(i.date) != y) {
                    continue;
                }
                let key = match by {
                    BehaviourDimension::Category => name(i.category).to_string(),
                    BehaviourDimension::Location => name(i.location).to_string(),
                    BehaviourDimension::Class => i
                        .class
                        .map(name)
                        .or(p.card.class())
                        .unwrap_or(NONE_LABEL)
                        .to_string(),
                    BehaviourDimension::Site => i
                        .site
                        .map(name)
                        .or(p.card.site())
                        .unwrap_or(NONE_LABEL)
                        .to_string(),
                    BehaviourDimension::Week => {
                        let w = i.date.iso_week();
                        format!("{:04}-W{:02}", w.year(), w.week())
                    }
                };
                let tally = groups.entry(key).or_default();
                tally.incidents += 1;
                total += 1;
                if i.severity >= 4 {
                    tally.serious += 1;
                }
                tally.pupils.insert(pupil.clone());
                tally
                    .pupils
                    .extend(i.participants.iter().map(|n| name(*n).to_string()));
            }
        }
        let mut rows: Vec<BehaviourGroup> = groups
            .into_iter()
            .map(|(key, t)| BehaviourGroup {
                key,
                incidents: t.incidents,
                pupils: t.pupils.len() as u64,
                serious: t.serious,
            })
            .collect();
        // A trend reads in time order; the other groupings read as a league
        // table. `groups` is already in key order, and the sort is stable.
        if by != BehaviourDimension::Week {
            rows.sort_by_key(|r| std::cmp::Reverse(r.incidents));
        }
        BehaviourReport {
            by,
            academic_year: academic_year_filter,
            incidents: total,
            groups: rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testing::{damaged, folded, generated, read_back};
    use crate::facts::Tracker;
    use casebook_engine::StreamId;
    use chrono::{DateTime, Duration, Utc};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const PUPILS: [&str; 3] = ["P1", "P2", "P3"];

    /// One step of a generated log.
    #[derive(Clone, Debug)]
    enum Step {
        Register {
            pupil: usize,
            class: Option<u8>,
        },
        Incident {
            pupil: usize,
            day: u16,
            data: Value,
        },
        /// Corrects the `target`-th event of the pupil's stream so far
        /// (past the end: an id no event has).
        Correct {
            pupil: usize,
            target: usize,
            changes: Value,
        },
        Sanction {
            pupil: usize,
        },
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec!["disruption", "bullying", "corridor", "9A", ""])
                .prop_map(|s| json!(s)),
            "[a-z]{1,6}".prop_map(|s| json!(s)),
        ]
    }

    fn participants() -> impl Strategy<Value = Value> {
        prop::collection::vec(
            (
                prop::sample::select(PUPILS.to_vec()),
                prop::sample::select(vec!["target", "witness", "involved"]),
            ),
            0..3,
        )
        .prop_map(|ps| {
            json!(ps
                .into_iter()
                .map(|(p, r)| json!({"pupil": p, "role": r}))
                .collect::<Vec<_>>())
        })
    }

    fn incident_data() -> impl Strategy<Value = Value> {
        (
            text(),
            1u8..=5,
            text(),
            "[a-z ]{0,30}",
            participants(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(
                |(category, severity, location, description, ps, class, site)| {
                    let mut data = json!({"category": category, "severity": severity,
                    "location": location, "description": description, "role": "perpetrator",
                    "participants": ps});
                    if let Some(class) = class {
                        data["class"] = class;
                    }
                    if let Some(site) = site {
                        data["site"] = site;
                    }
                    data
                },
            )
    }

    /// Changes that apply and changes that do not: wrong types, values out
    /// of range, unknown fields and roles, fields of other types.
    fn changes() -> impl Strategy<Value = Value> {
        let one = prop_oneof![
            text().prop_map(|v| ("category", v)),
            text().prop_map(|v| ("location", v)),
            text().prop_map(|v| ("description", v)),
            text().prop_map(|v| ("class", v)),
            text().prop_map(|v| ("site", v)),
            Just(("class", Value::Null)),
            Just(("site", Value::Null)),
            (0u16..300).prop_map(|v| ("severity", json!(v))),
            Just(("severity", json!("high"))),
            Just(("category", json!(3))),
            participants().prop_map(|v| ("participants", v)),
            Just((
                "participants",
                json!([{"pupil": "P2", "role": "bystander"}])
            )),
            Just(("participants", json!("P2"))),
            prop::sample::select(vec!["target", "victim"]).prop_map(|r| ("role", json!(r))),
            Just(("weather", json!("rain"))),
            Just(("year_group", json!(9))),
        ];
        prop::collection::vec(one, 1..3).prop_map(|kvs| {
            Value::Object(kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        })
    }

    fn step() -> impl Strategy<Value = Step> {
        let pupil = 0..PUPILS.len();
        prop_oneof![
            1 => (pupil.clone(), proptest::option::of(0u8..3))
                .prop_map(|(pupil, class)| Step::Register { pupil, class }),
            4 => (pupil.clone(), 0u16..800, incident_data())
                .prop_map(|(pupil, day, data)| Step::Incident { pupil, day, data }),
            3 => (pupil.clone(), 0usize..6, changes())
                .prop_map(|(pupil, target, changes)| Step::Correct { pupil, target, changes }),
            1 => pupil.prop_map(|pupil| Step::Sanction { pupil }),
        ]
    }

    /// The log of `steps`, each event in its pupil's stream.
    fn log(steps: &[Step]) -> Vec<RecordedEvent> {
        let start = DateTime::parse_from_rfc3339("2025-06-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut ids: Vec<Vec<Uuid>> = vec![Vec::new(); PUPILS.len()];
        let mut events = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            let position = n as u64 + 1;
            let (pupil, at, event_type, data) = match s {
                Step::Register { pupil, class } => {
                    let mut data = json!({"pupil": PUPILS[*pupil], "name": "Synthetic Pupil",
                        "date_of_birth": "2012-05-01", "year_group": 9});
                    if let Some(c) = class {
                        data["class"] = json!(format!("9{c}"));
                    }
                    (*pupil, start, "PupilRegistered", data)
                }
                Step::Incident { pupil, day, data } => (
                    *pupil,
                    start + Duration::days(i64::from(*day)),
                    "IncidentRecorded",
                    data.clone(),
                ),
                Step::Correct {
                    pupil,
                    target,
                    changes,
                } => {
                    let id = ids[*pupil]
                        .get(*target)
                        .copied()
                        .unwrap_or(Uuid::from_u128(u128::MAX));
                    let data = json!({"event": id, "changes": changes, "reason": "typo"});
                    (*pupil, start, "EntryCorrected", data)
                }
                Step::Sanction { pupil } => (
                    *pupil,
                    start,
                    "SanctionIssued",
                    json!({"kind": "detention", "reason": "late"}),
                ),
            };
            let e = generated(PUPILS[pupil], position, at, event_type, data);
            ids[pupil].push(e.event_id);
            events.push(e);
        }
        events
    }

    /// `i` with the fields the view does not keep blank.
    fn blank(i: &IncidentRecorded) -> IncidentRecorded {
        IncidentRecorded {
            description: String::new(),
            role: Default::default(),
            participants: i
                .participants
                .iter()
                .map(|p| Participant {
                    pupil: p.pupil.clone(),
                    role: Default::default(),
                })
                .collect(),
            ..i.clone()
        }
    }

    /// The report from whole events (`facts::Tracker`'s), the plain way,
    /// as the view made it before `VERSION` 3.
    fn reference(whole: &Tracker, by: BehaviourDimension, year: Option<i32>) -> BehaviourReport {
        let mut groups: BTreeMap<String, (u64, BTreeSet<String>, u64)> = BTreeMap::new();
        for (stream, card, kept) in whole.events() {
            let Some(CaseEvent::IncidentRecorded(i)) = kept.event() else {
                continue;
            };
            let date = kept.occurred_at.date_naive();
            if year.is_some_and(|y| academic_year(date) != y) {
                continue;
            }
            let or_card = |own: Option<String>, card: Option<&str>| {
                own.or(card.map(String::from))
                    .unwrap_or(NONE_LABEL.to_string())
            };
            let key = match by {
                BehaviourDimension::Category => i.category.clone(),
                BehaviourDimension::Location => i.location.clone(),
                BehaviourDimension::Class => or_card(i.class.clone(), card.class()),
                BehaviourDimension::Site => or_card(i.site.clone(), card.site()),
                BehaviourDimension::Week => {
                    let w = date.iso_week();
                    format!("{:04}-W{:02}", w.year(), w.week())
                }
            };
            let (incidents, pupils, serious) = groups.entry(key).or_default();
            *incidents += 1;
            *serious += u64::from(i.severity >= 4);
            pupils.insert(card.pupil(stream));
            pupils.extend(i.participants.iter().map(|p| p.pupil.clone()));
        }
        let mut rows: Vec<BehaviourGroup> = groups
            .into_iter()
            .map(|(key, (incidents, pupils, serious))| BehaviourGroup {
                key,
                incidents,
                pupils: pupils.len() as u64,
                serious,
            })
            .collect();
        if by != BehaviourDimension::Week {
            rows.sort_by_key(|r| std::cmp::Reverse(r.incidents));
        }
        BehaviourReport {
            by,
            academic_year: year,
            incidents: rows.iter().map(|r| r.incidents).sum(),
            groups: rows,
        }
    }

    proptest! {
        /// Incidents kept slim, corrected with their other fields blank,
        /// hold what the same incidents kept whole (`facts::Tracker`, the
        /// view's form before `VERSION` 3), corrected whole, hold of
        /// them, whatever the corrections change and whether or not they
        /// apply; every report is the one made from the whole events; the
        /// view reads back from its checkpoint as it was.
        #[test]
        fn incidents_kept_slim_follow_corrections_as_whole_ones_do(
            steps in prop::collection::vec(step(), 0..40),
        ) {
            let (slim, whole) = folded::<Behaviour>(&log(&steps), |e| matches!(e, CaseEvent::IncidentRecorded(_)));
            let streams: Vec<_> = slim.pupils.keys().collect();
            prop_assert_eq!(streams, whole.pupils.keys().collect::<Vec<_>>());
            for (stream, facts) in &whole.pupils {
                let pupil = &slim.pupils[stream];
                prop_assert_eq!(&pupil.card, &facts.card);
                let kept: Vec<(Uuid, NaiveDate, IncidentRecorded)> = pupil
                    .incidents
                    .iter()
                    .map(|i| (i.event_id, i.date, i.event(&slim.names)))
                    .collect();
                let reference: Vec<(Uuid, NaiveDate, IncidentRecorded)> = facts
                    .events
                    .iter()
                    .map(|k| match k.event() {
                        Some(CaseEvent::IncidentRecorded(i)) => {
                            (k.event_id, k.occurred_at.date_naive(), blank(&i))
                        }
                        other => panic!("kept {other:?}"),
                    })
                    .collect();
                prop_assert_eq!(kept, reference);
            }
            let back = read_back(&slim);
            prop_assert_eq!(&back, &slim);
            for by in BehaviourDimension::ALL {
                for year in [None, Some(2024), Some(2025)] {
                    let report = slim.by(*by, year);
                    prop_assert_eq!(&report, &reference(&whole, *by, year));
                    prop_assert_eq!(back.by(*by, year), report);
                }
            }
        }

        /// Whatever bytes stand for a checkpoint, reading it does not
        /// panic, and a view read from them reports without panicking.
        #[test]
        fn any_checkpoint_bytes_are_read_or_refused_without_panic(
            steps in prop::collection::vec(step(), 0..12),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let view: Behaviour = folded(&log(&steps), |_| false).0;
            if let Some(read) = damaged(&view, at, byte) {
                for by in BehaviourDimension::ALL {
                    let _ = read.by(*by, None);
                }
            }
        }
    }

    /// A checkpoint that lists a string twice, or whose incidents name a
    /// place past the list, is refused; the same checkpoint without the
    /// fault is read.
    #[test]
    fn checkpoints_naming_strings_they_do_not_list_are_refused() {
        let id = Uuid::from_u128(1);
        let stream = StreamId::for_pupil("s", "P1");
        // The checkpoint's form with every place as a plain number.
        type Form = (Uuid, i32, u8, u32, u32, Option<u32>, Option<u32>, Vec<u32>);
        #[derive(Serialize)]
        struct PupilForm {
            card: PupilCard,
            incidents: Vec<Form>,
        }
        #[derive(Serialize)]
        struct ViewForm<'a> {
            names: Vec<&'a str>,
            pupils: BTreeMap<StreamId, PupilForm>,
        }
        let checkpoint = |names: Vec<&str>, participant: u32| {
            let incidents = vec![(id, 739_000, 2, 1, 2, None, None, vec![participant])];
            let card = PupilCard::default();
            let pupils = BTreeMap::from([(stream, PupilForm { card, incidents })]);
            rmp_serde::to_vec_named(&ViewForm { names, pupils }).unwrap()
        };
        let read = |bytes: Vec<u8>| rmp_serde::from_slice::<Behaviour>(&bytes);
        let good = read(checkpoint(vec!["defiance", "corridor", "P2"], 3)).unwrap();
        let report = good.by(BehaviourDimension::Category, None);
        assert_eq!((report.incidents, report.groups[0].pupils), (1, 2));
        let past = read(checkpoint(vec!["defiance", "corridor", "P2"], 4)).unwrap_err();
        assert!(past.to_string().contains("past the list"), "{past}");
        let twice = read(checkpoint(vec!["defiance", "corridor", "defiance"], 3)).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let none = read(checkpoint(vec!["defiance", "corridor", "P2"], 0)).unwrap_err();
        assert!(none.to_string().contains("zero"), "{none}");
    }
}
