//! Behaviour trends: incident counts by category, location, class, site or
//! ISO week.
//!
//! Each `IncidentRecorded` in a pupil's stream counts once. The class and
//! site are the incident's own when it names them, else the pupil's
//! registered class and site (as corrected), else `(none)`. Weeks are ISO
//! weeks (`2025-W38`) of `occurred_at` in UTC. `pupils` counts the distinct
//! pupils of a group: the recording pupil and every listed participant.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use casebook_engine::domain::academic_year;
use casebook_engine::event::CaseEvent;
use casebook_engine::RecordedEvent;
use chrono::Datelike;
use serde::{Deserialize, Serialize};

use crate::facts::Tracker;
use crate::Projection;

/// The group label of incidents with no class or site anywhere.
pub const NONE_LABEL: &str = "(none)";

/// The behaviour projection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    facts: Tracker,
}

fn reads(e: &CaseEvent) -> bool {
    matches!(e, CaseEvent::IncidentRecorded(_))
}

impl Projection for Behaviour {
    const NAME: &'static str = "behaviour";
    /// 2: the incidents are kept compactly (`facts::Kept`), in a checkpoint as
    /// tuples with their payloads as bytes.
    const VERSION: u32 = 2;

    fn apply(&mut self, event: &RecordedEvent, _corrected_at: Option<u64>) {
        self.facts.apply(event, reads);
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
        for (stream, facts) in &self.facts.pupils {
            let pupil = facts.card.pupil(*stream);
            for t in &facts.events {
                // Always decodes (`Kept::event`).
                let Some(event) = t.event() else {
                    continue;
                };
                let CaseEvent::IncidentRecorded(i) = &event else {
                    continue;
                };
                let date = t.occurred_at.date_naive();
                if academic_year_filter.is_some_and(|y| academic_year(date) != y) {
                    continue;
                }
                let key = match by {
                    BehaviourDimension::Category => i.category.clone(),
                    BehaviourDimension::Location => i.location.clone(),
                    BehaviourDimension::Class => i
                        .class
                        .as_deref()
                        .or(facts.card.class())
                        .unwrap_or(NONE_LABEL)
                        .to_string(),
                    BehaviourDimension::Site => i
                        .site
                        .as_deref()
                        .or(facts.card.site())
                        .unwrap_or(NONE_LABEL)
                        .to_string(),
                    BehaviourDimension::Week => {
                        let w = date.iso_week();
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
                    .extend(i.participants.iter().map(|p| p.pupil.clone()));
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
