//! Who may do what: staff roles, the permission matrix, the staff
//! directory, and [`Guarded`], the access-checked way to read and append.
//!
//! The policy is documented in `docs/security.md` (the role × command
//! matrix, with its sources); [`permits`] is that table in code. Every read
//! of a pupil's record and every append made through [`Guarded`] takes an
//! [`Actor`]; a refusal is an [`AccessError::Denied`] and is itself written
//! to the log as an `AccessRefused` event.
//!
//! The staff directory is a stream of the school's log
//! ([`StreamId::for_directory`]): `StaffRegistered`, `RoleGranted`,
//! `RoleRevoked`, plus the refusals that concern no pupil. Its fold is
//! [`Directory`]. A school whose directory is empty runs in single-user mode
//! (every actor may do everything, as before the directory existed); the
//! first `StaffRegistered` must name an `admin`, and the last admin cannot
//! lose the role, so once the directory is in use it stays in use.
//!
//! Architecture Invariant: [`permits`] is pure (no I/O, no clock); the
//! facts it needs about a pupil (their keyworker, the entry a correction
//! names) arrive inside the [`Action`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{EventRef, NewEvent, RecordedEvent, StoredEvent, StreamId};
use crate::error::{CodecError, StoreError};
use crate::event::{
    AccessRefused, CaseEvent, RecordViewed, RoleGranted, RoleRevoked, SanctionKind, StaffRegistered,
};
use crate::store::{
    read_whole_stream, visit_whole_stream, AppendRequest, Appended, EventStore, ExpectedVersion,
    StreamVisitor,
};

/// The event types of the staff directory stream.
pub const DIRECTORY_TYPES: &[&str] = &["StaffRegistered", "RoleGranted", "RoleRevoked"];

/// The event types of the access log (pupils' access streams, and the
/// directory stream for refusals that concern no pupil).
pub const ACCESS_LOG_TYPES: &[&str] = &["RecordViewed", "AccessRefused"];

/// Whether events of this type belong to no pupil's case (access log or
/// staff directory): school-wide views skip them.
pub fn is_non_case_type(event_type: &str) -> bool {
    DIRECTORY_TYPES.contains(&event_type) || ACCESS_LOG_TYPES.contains(&event_type)
}

/// Who the actor is logged as when nobody said (single-user mode).
pub const UNIDENTIFIED: &str = "unidentified";

/// A staff role (`docs/security.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Designated safeguarding lead.
    Dsl,
    /// Deputy DSL: the same access as the DSL.
    DeputyDsl,
    /// Pastoral staff (heads of year, pastoral managers).
    Pastoral,
    /// Keyworker: their own caseload.
    Keyworker,
    /// Class and subject teachers: behaviour.
    Teacher,
    /// Reads everything, writes nothing (but the access log of its reads).
    Auditor,
    /// Manages the staff directory; MIS sync and office work.
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Dsl,
        Role::DeputyDsl,
        Role::Pastoral,
        Role::Keyworker,
        Role::Teacher,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dsl => "dsl",
            Role::DeputyDsl => "deputy_dsl",
            Role::Pastoral => "pastoral",
            Role::Keyworker => "keyworker",
            Role::Teacher => "teacher",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; the roles are {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// Who is acting: a member of staff and the roles they hold now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub staff: String,
    pub roles: BTreeSet<Role>,
    /// Single-user mode (the directory is empty): nothing is checked.
    pub unrestricted: bool,
}

impl Actor {
    /// A registered member of staff with their roles.
    pub fn new(staff: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Actor {
        Actor {
            staff: staff.into(),
            roles: roles.into_iter().collect(),
            unrestricted: false,
        }
    }

    /// The actor of a store with no staff directory: may do everything.
    pub fn single_user(staff: impl Into<String>) -> Actor {
        Actor {
            staff: staff.into(),
            roles: BTreeSet::new(),
            unrestricted: true,
        }
    }

    /// `dsl, auditor` (or `no role`).
    pub fn roles_text(&self) -> String {
        if self.unrestricted {
            return "single-user mode".into();
        }
        if self.roles.is_empty() {
            return "no role".into();
        }
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How an entry of a pupil's record is classed for reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadClass {
    /// `PupilRegistered`: who the pupil is.
    Registration,
    /// Safeguarding events and safeguarding cases (`CaseEvent::is_safeguarding`).
    Safeguarding,
    /// Incidents, force, sanctions, suspensions, exclusions, restorative and
    /// reintegration meetings, rewards.
    Behaviour,
    /// Everything else: cases, plans, interventions, attendance, contacts.
    Pastoral,
}

/// The read class of an event. A correction is classed by the entry it
/// corrects; this function, which sees one event, classes it `Pastoral`.
pub fn read_class(event: &CaseEvent) -> ReadClass {
    use CaseEvent as E;
    if event.is_safeguarding() {
        return ReadClass::Safeguarding;
    }
    match event {
        E::PupilRegistered(_) => ReadClass::Registration,
        E::IncidentRecorded(_)
        | E::ReasonableForceUsed(_)
        | E::SanctionIssued(_)
        | E::SuspensionIssued(_)
        | E::PermanentExclusionIssued(_)
        | E::RestorativeMeetingHeld(_)
        | E::ReintegrationMeetingHeld(_)
        | E::ReintegrationCompleted(_)
        | E::RewardIssued(_) => ReadClass::Behaviour,
        _ => ReadClass::Pastoral,
    }
}

/// The entry a correction names, as the permission check needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Corrected {
    /// Who recorded the original entry.
    pub author: String,
    pub class: ReadClass,
}

/// What an actor asks to do. Pupil actions carry the facts the matrix
/// needs: the pupil's current keyworker, the entry a correction names.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Read a pupil's chronology (`timeline`).
    ReadTimeline {
        pupil: String,
        keyworker: Option<String>,
    },
    /// Read a pupil's audit trail with its access log (`audit`).
    ReadAudit { pupil: String },
    /// Record one event on a pupil's record.
    Record {
        pupil: String,
        keyworker: Option<String>,
        event: Box<CaseEvent>,
        corrects: Option<Corrected>,
    },
    /// Import JSONL (each line keeps its own `actor`).
    Import,
    /// Open cases (`caseload`); `keyworker` is the `--keyworker` filter.
    Caseload { keyworker: Option<String> },
    /// A school report by name (`behaviour`, `attendance`, `suspensions`,
    /// `force`, `interventions`, `reintegration`).
    Report { name: String },
    /// Check the hash chain (counts and hashes only; no personal data).
    Verify,
    /// Rebuild the projections (derived data).
    Rebuild,
    /// Fill the store with a synthetic school.
    Demo,
    /// Create the store (idempotent).
    Init,
    /// Register staff, grant and revoke roles.
    ManageStaff,
    /// List the staff directory.
    ListStaff,
    /// Crypto-shred a pupil's record (`erase`).
    Erase { pupil: String },
    /// Subject-access export of a pupil's record.
    Export { pupil: String },
    /// Transfer a pupil's file to or from another school.
    Transfer { pupil: String },
    /// List or apply retention.
    Retention,
}

impl Action {
    /// The pupil the action concerns, if any (refusals are logged to that
    /// pupil's access stream).
    pub fn pupil(&self) -> Option<&str> {
        match self {
            Action::ReadTimeline { pupil, .. }
            | Action::ReadAudit { pupil }
            | Action::Record { pupil, .. }
            | Action::Erase { pupil }
            | Action::Export { pupil }
            | Action::Transfer { pupil } => Some(pupil),
            _ => None,
        }
    }

    fn keyworker(&self) -> Option<&str> {
        match self {
            Action::ReadTimeline { keyworker, .. }
            | Action::Record { keyworker, .. }
            | Action::Caseload { keyworker } => keyworker.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ReadTimeline { pupil, .. } => write!(f, "read the timeline of {pupil}"),
            Action::ReadAudit { pupil } => write!(f, "read the audit trail of {pupil}"),
            Action::Record { pupil, event, .. } => {
                write!(f, "record {} for {pupil}", event.type_name())
            }
            Action::Import => f.write_str("import events"),
            Action::Caseload { keyworker: None } => f.write_str("see the school's caseload"),
            Action::Caseload { keyworker: Some(k) } => write!(f, "see the caseload of {k}"),
            Action::Report { name } => write!(f, "see the {name} report"),
            Action::Verify => f.write_str("verify the log"),
            Action::Rebuild => f.write_str("rebuild the projections"),
            Action::Demo => f.write_str("generate a demo school"),
            Action::Init => f.write_str("initialise the store"),
            Action::ManageStaff => f.write_str("manage the staff directory"),
            Action::ListStaff => f.write_str("list the staff directory"),
            Action::Erase { pupil } => write!(f, "erase the record of {pupil}"),
            Action::Export { pupil } => write!(f, "export the record of {pupil}"),
            Action::Transfer { pupil } => write!(f, "transfer the record of {pupil}"),
            Action::Retention => f.write_str("apply retention"),
        }
    }
}

/// Whether a role may read entries of a class. `own` = the pupil is on the
/// actor's own caseload (they are the pupil's keyworker).
pub fn role_may_read(role: Role, class: ReadClass, own: bool) -> bool {
    match role {
        Role::Dsl | Role::DeputyDsl | Role::Auditor => true,
        Role::Pastoral => class != ReadClass::Safeguarding,
        Role::Keyworker => own && class != ReadClass::Safeguarding,
        Role::Teacher => matches!(class, ReadClass::Registration | ReadClass::Behaviour),
        Role::Admin => false,
    }
}

/// Whether `actor` may read entries of `class`; `own` = the pupil is on
/// the actor's caseload. Single-user mode reads everything.
pub fn may_read(actor: &Actor, class: ReadClass, own: bool) -> bool {
    actor.unrestricted || actor.roles.iter().any(|&r| role_may_read(r, class, own))
}

/// Whether `role` may record `event` (the "Recorded by" lines of
/// `docs/events.md`, with `deputy_dsl` as `dsl` and keyworkers limited to
/// their own caseload, except for raising and escalating a concern, which
/// every member of staff may do for any pupil: KCSIE part one).
fn role_may_record(
    role: Role,
    staff: &str,
    event: &CaseEvent,
    own: bool,
    corrects: Option<&Corrected>,
) -> bool {
    use CaseEvent as E;
    use Role::*;
    let dsl = matches!(role, Dsl | DeputyDsl);
    let pastoral = role == Pastoral;
    let kw = role == Keyworker && own;
    let teacher = role == Teacher;
    let admin = role == Admin;
    match event {
        E::PupilRegistered(_) => admin || dsl || pastoral,
        E::ReferralReceived(_) => dsl || pastoral,
        E::CaseOpened(c) => {
            if c.case_type == crate::event::CaseType::Safeguarding {
                dsl
            } else {
                dsl || pastoral || kw
            }
        }
        E::KeyworkerAssigned(_) => dsl || pastoral || admin,
        E::ConcernRaised(_) | E::ConcernEscalated(_) => {
            dsl || pastoral || role == Keyworker || teacher || admin
        }
        E::SafeguardingDecisionMade(_) | E::ExternalReferralMade(_) => dsl,
        E::IncidentRecorded(_) | E::ReasonableForceUsed(_) => teacher || kw || pastoral || dsl,
        E::SanctionIssued(s) => {
            pastoral
                || (teacher && matches!(s.kind, SanctionKind::Detention | SanctionKind::ReportCard))
        }
        E::SuspensionIssued(_) | E::PermanentExclusionIssued(_) => pastoral || admin,
        E::InterventionStarted(_)
        | E::InterventionSessionDelivered(_)
        | E::InterventionEnded(_)
        | E::ReintegrationMeetingHeld(_)
        | E::ReintegrationCompleted(_) => kw || pastoral,
        E::PlanAgreed(_) | E::PlanReviewed(_) => pastoral || kw || dsl,
        E::RestorativeMeetingHeld(_) => pastoral || kw || teacher,
        E::AttendanceMarked(_) => teacher || admin,
        E::RewardIssued(_) => teacher || kw || pastoral,
        E::AbsenceFollowedUp(_) => pastoral || admin || kw,
        E::AlternativeProvisionArranged(_) => pastoral || admin,
        E::ParentContacted(_) => dsl || pastoral || kw || teacher || admin,
        E::AgencyLiaison(_) => dsl || pastoral || kw,
        E::EntryCorrected(_) => match corrects {
            Some(c) if c.class == ReadClass::Safeguarding => dsl,
            Some(c) => dsl || pastoral || admin || (c.author == staff && role != Auditor),
            None => dsl || pastoral || admin,
        },
        E::CaseClosed(_) => dsl || pastoral || kw,
        // Access log and directory: written by casebook, never recorded.
        _ => false,
    }
}

/// Whether one role permits the action. `own` = the action's keyworker is
/// the actor.
fn role_may(role: Role, staff: &str, action: &Action, own: bool) -> bool {
    use Role::*;
    let dsl = matches!(role, Dsl | DeputyDsl);
    match action {
        Action::ReadTimeline { .. } => role_may_read(role, ReadClass::Registration, own),
        Action::ReadAudit { .. } => dsl || role == Auditor,
        Action::Record {
            event, corrects, ..
        } => role_may_record(role, staff, event, own, corrects.as_ref()),
        Action::Import => matches!(role, Admin | Dsl),
        Action::Caseload { .. } => {
            dsl || matches!(role, Pastoral | Auditor) || (role == Keyworker && own)
        }
        Action::Report { name } => {
            dsl || matches!(role, Pastoral | Auditor)
                || match name.as_str() {
                    "behaviour" => role == Teacher,
                    "attendance" | "suspensions" => role == Admin,
                    _ => false,
                }
        }
        Action::Verify | Action::Init => true,
        Action::Rebuild => dsl || role == Admin,
        Action::Demo | Action::ManageStaff => role == Admin,
        Action::ListStaff => dsl || matches!(role, Admin | Auditor),
        Action::Erase { .. } | Action::Retention => matches!(role, Dsl | Admin),
        Action::Export { .. } | Action::Transfer { .. } => dsl,
    }
}

/// A refusal: who, what, why. Displayed as
/// `STAFF (roles) may not ACTION: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{staff} ({roles}) may not {action}: {reason}")]
pub struct AccessDenied {
    pub staff: String,
    pub roles: String,
    pub action: String,
    pub pupil: Option<String>,
    pub reason: String,
}

/// Checks `action` against the actor's roles (`docs/security.md`).
pub fn permits(actor: &Actor, action: &Action) -> Result<(), AccessDenied> {
    if actor.unrestricted {
        return Ok(());
    }
    let own = action.keyworker() == Some(actor.staff.as_str());
    if actor
        .roles
        .iter()
        .any(|&r| role_may(r, &actor.staff, action, own))
    {
        return Ok(());
    }
    let reason = if actor.roles.is_empty() {
        "they hold no role in the staff directory".to_string()
    } else if actor.roles.contains(&Role::Keyworker)
        && !own
        && role_may(Role::Keyworker, &actor.staff, action, true)
    {
        format!(
            "{} is not on {}'s caseload (keyworkers act for their own caseload only)",
            action.pupil().unwrap_or("the pupil"),
            actor.staff
        )
    } else {
        let who: Vec<String> = Role::ALL
            .into_iter()
            .filter_map(|r| {
                if role_may(r, &actor.staff, action, false) {
                    Some(r.as_str().to_string())
                } else if role_may(r, &actor.staff, action, true) {
                    Some(format!("{r} (own caseload)"))
                } else {
                    None
                }
            })
            .collect();
        if who.is_empty() {
            "no role may".to_string()
        } else {
            format!("only {} may", who.join(", "))
        }
    };
    Err(AccessDenied {
        staff: actor.staff.clone(),
        roles: actor.roles_text(),
        action: action.to_string(),
        pupil: action.pupil().map(str::to_string),
        reason,
    })
}

/// Why an access-checked operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The matrix refuses it (logged as `AccessRefused`).
    #[error(transparent)]
    Denied(AccessDenied),
    /// `--as` names nobody in the directory (logged as `AccessRefused`).
    #[error("{staff:?} is not in the staff directory of school {school:?}: only registered staff may use this store (see `casebook staff list`)")]
    UnknownStaff { staff: String, school: String },
    /// The directory is in use and nobody said who is acting.
    #[error("school {school:?} has a staff directory, so every command must say who is acting: pass --as STAFF or set CASEBOOK_ACTOR")]
    NoActor { school: String },
    /// A directory change breaks a rule (nothing written).
    #[error("staff directory: {0}")]
    Directory(String),
    /// The pupil has no record.
    #[error("no record for pupil {pupil:?} in this school")]
    UnknownPupil { pupil: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::error::CodecError> for AccessError {
    fn from(e: crate::error::CodecError) -> AccessError {
        AccessError::Store(StoreError::Codec(e))
    }
}

impl AccessError {
    /// True when the store failed (exit 3) rather than the request being
    /// refused (exit 2).
    pub fn is_store_failure(&self) -> bool {
        matches!(self, AccessError::Store(e) if e.is_store_failure())
    }
}

/// One member of staff as the directory holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaffMember {
    pub staff: String,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub registered_at: DateTime<Utc>,
}

/// The fold of a school's directory stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    members: BTreeMap<String, StaffMember>,
}

impl Directory {
    /// Folds one event of the directory stream (refusals are ignored).
    pub fn apply(&mut self, event: &CaseEvent, at: DateTime<Utc>) {
        match event {
            CaseEvent::StaffRegistered(s) => {
                self.members.insert(
                    s.staff.clone(),
                    StaffMember {
                        staff: s.staff.clone(),
                        name: s.name.clone(),
                        roles: s.roles.iter().copied().collect(),
                        registered_at: at,
                    },
                );
            }
            CaseEvent::RoleGranted(g) => {
                if let Some(m) = self.members.get_mut(&g.staff) {
                    m.roles.insert(g.role);
                }
            }
            CaseEvent::RoleRevoked(r) => {
                if let Some(m) = self.members.get_mut(&r.staff) {
                    m.roles.remove(&r.role);
                }
            }
            _ => {}
        }
    }

    /// True when nobody is registered: single-user mode.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, staff: &str) -> Option<&StaffMember> {
        self.members.get(staff)
    }

    /// Every member, by reference.
    pub fn members(&self) -> impl Iterator<Item = &StaffMember> {
        self.members.values()
    }

    fn admins(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.roles.contains(&Role::Admin))
            .count()
    }

    /// The directory's rules for a new directory event: the first member
    /// is an admin; a reference is registered once; a role is granted once
    /// and revoked only when held; the last admin keeps the role.
    pub fn check(&self, event: &CaseEvent) -> Result<(), AccessError> {
        let bad = |m: String| Err(AccessError::Directory(m));
        crate::domain::validate_fields(event).map_err(|e| AccessError::Directory(e.to_string()))?;
        match event {
            CaseEvent::StaffRegistered(s) => {
                if self.members.contains_key(&s.staff) {
                    return bad(format!("{} is already registered", s.staff));
                }
                if self.is_empty() && !s.roles.contains(&Role::Admin) {
                    return bad(format!(
                        "the first member of staff registered must be an admin \
                         (`casebook init --admin {}`)",
                        s.staff
                    ));
                }
                Ok(())
            }
            CaseEvent::RoleGranted(g) => match self.members.get(&g.staff) {
                None => bad(format!(
                    "{} is not registered (`casebook staff add`)",
                    g.staff
                )),
                Some(m) if m.roles.contains(&g.role) => {
                    bad(format!("{} already holds the role {}", g.staff, g.role))
                }
                Some(_) => Ok(()),
            },
            CaseEvent::RoleRevoked(r) => match self.members.get(&r.staff) {
                None => bad(format!("{} is not registered", r.staff)),
                Some(m) if !m.roles.contains(&r.role) => {
                    bad(format!("{} does not hold the role {}", r.staff, r.role))
                }
                Some(_) if r.role == Role::Admin && self.admins() == 1 => bad(format!(
                    "{} is the last admin; grant admin to someone else first",
                    r.staff
                )),
                Some(_) => Ok(()),
            },
            other => bad(format!(
                "{} is not a staff-directory event",
                other.type_name()
            )),
        }
    }

    /// The actor `staff` names. Single-user mode (empty directory): an
    /// unrestricted actor, `unidentified` when nobody is named.
    pub fn actor(&self, staff: Option<&str>, school: &str) -> Result<Actor, AccessError> {
        if self.is_empty() {
            return Ok(Actor::single_user(staff.unwrap_or(UNIDENTIFIED)));
        }
        let Some(staff) = staff else {
            return Err(AccessError::NoActor {
                school: school.to_string(),
            });
        };
        match self.members.get(staff) {
            Some(m) => Ok(Actor::new(staff, m.roles.iter().copied())),
            None => Err(AccessError::UnknownStaff {
                staff: staff.to_string(),
                school: school.to_string(),
            }),
        }
    }
}

/// The keyworker of a pupil: the staff of the last `KeyworkerAssigned`,
/// with corrections of its `staff` applied. `events` in stream order.
pub fn keyworker_of<'a>(events: impl IntoIterator<Item = (Uuid, &'a CaseEvent)>) -> Option<String> {
    let mut assigned: Vec<(Uuid, String)> = Vec::new();
    for (id, event) in events {
        match event {
            CaseEvent::KeyworkerAssigned(k) => assigned.push((id, k.staff.clone())),
            CaseEvent::EntryCorrected(c) => {
                if let Some(serde_json::Value::String(s)) = c.changes.get("staff") {
                    if let Some(a) = assigned.iter_mut().find(|(i, _)| *i == c.event) {
                        a.1 = s.clone();
                    }
                }
            }
            _ => {}
        }
    }
    assigned.pop().map(|(_, s)| s)
}

/// Which view of a pupil's record is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Timeline,
    Audit,
    Export,
}

impl View {
    pub fn as_str(self) -> &'static str {
        match self {
            View::Timeline => "timeline",
            View::Audit => "audit",
            View::Export => "export",
        }
    }
}

/// What an access-checked read of a pupil's record returns.
#[derive(Clone, Debug)]
pub struct PupilRecord {
    /// The case stream, in stream order, without the entries the actor may
    /// not see.
    pub case: Vec<StoredEvent>,
    /// The access stream (views and refusals), for readers of the audit
    /// trail; empty for everyone else. Includes this read.
    pub access: Vec<StoredEvent>,
    /// How many case entries were withheld from this actor.
    pub withheld: usize,
    pub keyworker: Option<String>,
}

/// [`PupilRecord`] with the case entries decoded
/// ([`Guarded::read_pupil_events`]).
#[derive(Clone, Debug)]
pub struct PupilEvents {
    /// The case stream, in stream order, decoded, without the entries the
    /// actor may not see.
    pub case: Vec<RecordedEvent>,
    /// As [`PupilRecord::access`].
    pub access: Vec<StoredEvent>,
    /// How many case entries were withheld from this actor.
    pub withheld: usize,
    pub keyworker: Option<String>,
}

/// A checked read: the case entries with their decoding and which of
/// them the actor may see.
struct CheckedRead {
    stored: Vec<StoredEvent>,
    decoded: Vec<Result<CaseEvent, CodecError>>,
    /// Per entry, whether it is shown; `None` when every entry is.
    visible: Option<Vec<bool>>,
    access: Vec<StoredEvent>,
    withheld: usize,
    keyworker: Option<String>,
}

impl CheckedRead {
    /// The visible entries with their decoding, each moved once.
    fn shown(
        stored: Vec<StoredEvent>,
        decoded: Vec<Result<CaseEvent, CodecError>>,
        visible: Option<Vec<bool>>,
    ) -> impl Iterator<Item = (StoredEvent, Result<CaseEvent, CodecError>)> {
        let mut visible = visible.map(Vec::into_iter);
        stored
            .into_iter()
            .zip(decoded)
            .filter(move |_| match &mut visible {
                Some(v) => v.next().unwrap_or(false),
                None => true,
            })
    }
}

/// What the access check of a read says ([`Guarded::check_read`]).
struct Checked {
    /// Per entry, whether it is shown; `None` when every entry is.
    visible: Option<Vec<bool>>,
    access: Vec<StoredEvent>,
    withheld: usize,
    keyworker: Option<String>,
}

/// A case stream read by [`Guarded::read_pupil_events`]: each event with
/// its payload decoded, until one does not decode.
#[derive(Default)]
struct Decoding {
    case: Vec<RecordedEvent>,
    undecodable: bool,
}

impl StreamVisitor for Decoding {
    fn expect(&mut self, events: usize) {
        self.case.reserve(events);
    }

    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError> {
        if self.undecodable {
            return Ok(());
        }
        match event.case_event() {
            Ok(e) => self.case.push(event.recorded(e)),
            Err(_) => self.undecodable = true,
        }
        Ok(())
    }
}

/// A school's log behind the permission matrix: every read of a pupil and
/// every append takes an [`Actor`]; refusals are logged.
pub struct Guarded {
    store: Arc<dyn EventStore>,
    school: String,
    directory: Directory,
    directory_version: u64,
}

fn corrupt(s: &StoredEvent, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        location: format!("position {}", s.position),
        what: e.to_string(),
    }
}

impl Guarded {
    /// Reads the school's directory stream.
    pub async fn open(store: Arc<dyn EventStore>, school: &str) -> Result<Guarded, StoreError> {
        let stored = read_whole_stream(store.as_ref(), StreamId::for_directory(school)).await?;
        let mut directory = Directory::default();
        for s in &stored {
            let event = s.case_event().map_err(|e| corrupt(s, e))?;
            directory.apply(&event, s.recorded_at);
        }
        Ok(Guarded {
            store,
            school: school.to_string(),
            directory,
            directory_version: stored.last().map(|s| s.version).unwrap_or(0),
        })
    }

    /// The unguarded log (for callers that checked an action already, e.g.
    /// `verify` or a school-wide report).
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn school(&self) -> &str {
        &self.school
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Resolves who is acting. An unknown or missing actor (once the
    /// directory is in use) is refused and the refusal logged, naming
    /// `attempted`.
    pub async fn actor(
        &self,
        staff: Option<&str>,
        attempted: &Action,
        now: DateTime<Utc>,
    ) -> Result<Actor, AccessError> {
        match self.directory.actor(staff, &self.school) {
            Ok(a) => Ok(a),
            Err(e) => {
                // A name too long or odd to log is logged as unidentified.
                let who = staff
                    .filter(|s| {
                        !s.trim().is_empty()
                            && s.chars().count() <= crate::import::MAX_REF_LEN
                            && !s.chars().any(char::is_control)
                    })
                    .unwrap_or(UNIDENTIFIED);
                let reason = match &e {
                    AccessError::NoActor { .. } => "nobody said who is acting".to_string(),
                    _ => "not in the staff directory".to_string(),
                };
                self.log_refusal(who, attempted, reason, None, now).await?;
                Err(e)
            }
        }
    }

    /// Checks `action` for `actor`; a refusal is logged (with `purpose`,
    /// for a read) and returned as [`AccessError::Denied`].
    pub async fn check(
        &self,
        actor: &Actor,
        action: &Action,
        purpose: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), AccessError> {
        match permits(actor, action) {
            Ok(()) => Ok(()),
            Err(denied) => {
                self.log_refusal(
                    &actor.staff,
                    action,
                    denied.reason.clone(),
                    purpose.map(str::to_string),
                    now,
                )
                .await?;
                Err(AccessError::Denied(denied))
            }
        }
    }

    async fn log_refusal(
        &self,
        staff: &str,
        action: &Action,
        reason: String,
        purpose: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let pupil = action.pupil().map(str::to_string);
        let stream = match &pupil {
            Some(p) => StreamId::for_access_log(&self.school, p),
            None => StreamId::for_directory(&self.school),
        };
        let event = CaseEvent::AccessRefused(AccessRefused {
            staff: staff.to_string(),
            action: action.to_string(),
            pupil,
            reason,
            purpose,
        });
        let new = NewEvent::new(&event, now, staff)?;
        self.store
            .append_minted(AppendRequest {
                stream,
                expected: ExpectedVersion::Any,
                events: vec![new],
            })
            .await?;
        Ok(())
    }

    /// Reads a pupil's record for `actor`: checks the view, logs the read
    /// (`RecordViewed`, before the access stream is read, so an audit shows
    /// itself), and withholds the entries the actor may not see.
    pub async fn read_pupil(
        &self,
        actor: &Actor,
        pupil: &str,
        view: View,
        purpose: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<PupilRecord, AccessError> {
        let read = self
            .read_checked(actor, pupil, view, purpose, now, true)
            .await?;
        Ok(PupilRecord {
            withheld: read.withheld,
            case: CheckedRead::shown(read.stored, read.decoded, read.visible)
                .map(|(s, _)| s)
                .collect(),
            access: read.access,
            keyworker: read.keyworker,
        })
    }

    /// [`Guarded::read_pupil`] with the visible case entries decoded, each
    /// payload decoded once (the same decoding the access check used):
    /// what the timeline folds. An entry the actor may see whose payload
    /// cannot be decoded is an error naming its position (after the read
    /// was logged, as with `read_pupil` and a later decode).
    pub async fn read_pupil_events(
        &self,
        actor: &Actor,
        pupil: &str,
        view: View,
        purpose: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<PupilEvents, AccessError> {
        // The timeline does not show the access log: not read for it.
        let with_access = view != View::Timeline;
        // Each payload decoded from the bytes as read, without an owned
        // envelope first. A payload that does not decode sends the read the
        // general way below (nothing logged yet), which withholds or reports
        // it.
        let stream = StreamId::for_pupil(&self.school, pupil);
        let mut read = Decoding::default();
        visit_whole_stream(self.store.as_ref(), stream, &mut read).await?;
        if !read.undecodable {
            let mut case = read.case;
            let entries: Vec<(Uuid, Option<&CaseEvent>)> =
                case.iter().map(|r| (r.event_id, Some(&r.event))).collect();
            let checked = self
                .check_read(actor, pupil, view, purpose, now, with_access, &entries)
                .await?;
            drop(entries);
            if let Some(visible) = checked.visible {
                let mut shown = visible.into_iter();
                case.retain(|_| shown.next().unwrap_or(false));
            }
            return Ok(PupilEvents {
                withheld: checked.withheld,
                case,
                access: checked.access,
                keyworker: checked.keyworker,
            });
        }
        let read = self
            .read_checked(actor, pupil, view, purpose, now, with_access)
            .await?;
        // Sized up front (a collect into `Result` grows as it goes, moving
        // every event again).
        let mut case = Vec::with_capacity(read.stored.len() - read.withheld);
        for (s, e) in CheckedRead::shown(read.stored, read.decoded, read.visible) {
            match e {
                Ok(e) => case.push(RecordedEvent::from_parts(s, e)),
                Err(err) => return Err(AccessError::Store(corrupt(&s, err))),
            }
        }
        Ok(PupilEvents {
            withheld: read.withheld,
            case,
            access: read.access,
            keyworker: read.keyworker,
        })
    }

    async fn read_checked(
        &self,
        actor: &Actor,
        pupil: &str,
        view: View,
        purpose: Option<String>,
        now: DateTime<Utc>,
        with_access: bool,
    ) -> Result<CheckedRead, AccessError> {
        let stored = read_whole_stream(
            self.store.as_ref(),
            StreamId::for_pupil(&self.school, pupil),
        )
        .await?;
        let decoded: Vec<Result<CaseEvent, CodecError>> =
            stored.iter().map(StoredEvent::case_event).collect();
        let entries: Vec<(Uuid, Option<&CaseEvent>)> = stored
            .iter()
            .zip(&decoded)
            .map(|(s, e)| (s.event_id, e.as_ref().ok()))
            .collect();
        let checked = self
            .check_read(actor, pupil, view, purpose, now, with_access, &entries)
            .await?;
        drop(entries);
        Ok(CheckedRead {
            withheld: checked.withheld,
            stored,
            decoded,
            visible: checked.visible,
            access: checked.access,
            keyworker: checked.keyworker,
        })
    }

    /// The access check of a read of `pupil`'s case stream, given each
    /// entry's id and decoding (`None`: it does not decode): checks the
    /// view, logs the read (`RecordViewed`, before the access stream is
    /// read, so an audit shows itself), reads the access stream when
    /// `with_access` and the actor may, and says which entries are shown.
    #[allow(clippy::too_many_arguments)]
    async fn check_read(
        &self,
        actor: &Actor,
        pupil: &str,
        view: View,
        purpose: Option<String>,
        now: DateTime<Utc>,
        with_access: bool,
        entries: &[(Uuid, Option<&CaseEvent>)],
    ) -> Result<Checked, AccessError> {
        let keyworker = keyworker_of(entries.iter().filter_map(|&(id, e)| e.map(|e| (id, e))));
        let action = match view {
            View::Timeline => Action::ReadTimeline {
                pupil: pupil.to_string(),
                keyworker: keyworker.clone(),
            },
            View::Audit => Action::ReadAudit {
                pupil: pupil.to_string(),
            },
            View::Export => Action::Export {
                pupil: pupil.to_string(),
            },
        };
        // Checked before the pupil's existence is told: a refused actor
        // learns nothing, not even whether the record exists.
        self.check(actor, &action, purpose.as_deref(), now).await?;
        if entries.is_empty() {
            return Err(AccessError::UnknownPupil {
                pupil: pupil.to_string(),
            });
        }
        let viewed = CaseEvent::RecordViewed(RecordViewed {
            pupil: pupil.to_string(),
            view: view.as_str().to_string(),
            purpose,
        });
        self.store
            .append_minted(AppendRequest {
                stream: StreamId::for_access_log(&self.school, pupil),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::new(&viewed, now, actor.staff.clone())?],
            })
            .await?;
        let access = if with_access
            && permits(
                actor,
                &Action::ReadAudit {
                    pupil: pupil.to_string(),
                },
            )
            .is_ok()
        {
            read_whole_stream(
                self.store.as_ref(),
                StreamId::for_access_log(&self.school, pupil),
            )
            .await?
        } else {
            Vec::new()
        };
        let own = keyworker.as_deref() == Some(actor.staff.as_str());
        let may = |class: ReadClass| may_read(actor, class, own);
        let total = entries.len();
        let visible = if actor.unrestricted {
            // Single-user mode reads every class: nothing to withhold.
            None
        } else {
            // Classes of every entry; a correction takes its target's class.
            let mut class_of: HashMap<Uuid, ReadClass> = HashMap::with_capacity(total);
            let mut visible: Vec<bool> = Vec::with_capacity(total);
            for &(id, e) in entries {
                let class = match e {
                    Some(CaseEvent::EntryCorrected(c)) => class_of
                        .get(&c.event)
                        .copied()
                        .unwrap_or(ReadClass::Safeguarding),
                    Some(e) => read_class(e),
                    // An entry that cannot be decoded is shown to those who
                    // may read everything (the audit trail lists the damage).
                    None => ReadClass::Safeguarding,
                };
                class_of.insert(id, class);
                visible.push(may(class));
            }
            Some(visible)
        };
        let shown = visible
            .as_ref()
            .map_or(total, |v| v.iter().filter(|&&seen| seen).count());
        Ok(Checked {
            withheld: total - shown,
            visible,
            access,
            keyworker,
        })
    }

    /// Appends events to one pupil's case stream for `actor`, checking each
    /// event against the matrix (with the pupil's keyworker and, for a
    /// correction, the entry it names). All or nothing: the first refusal
    /// is logged and nothing is written.
    pub async fn append_for_pupil(
        &self,
        actor: &Actor,
        pupil: &str,
        request: AppendRequest,
        now: DateTime<Utc>,
    ) -> Result<Appended, AccessError> {
        self.check_pupil_append(actor, pupil, &request, now).await?;
        Ok(self.store.append(request).await?)
    }

    /// [`Guarded::append_for_pupil`] of events whose ids this process
    /// minted (UUID v7: a `record` without `--id`), appended with
    /// [`EventStore::append_minted`], so that a store opened without its
    /// event ids (the segment engine's reading-only open) need not read
    /// them for the append.
    pub async fn append_minted_for_pupil(
        &self,
        actor: &Actor,
        pupil: &str,
        request: AppendRequest,
        now: DateTime<Utc>,
    ) -> Result<Appended, AccessError> {
        self.check_pupil_append(actor, pupil, &request, now).await?;
        Ok(self.store.append_minted(request).await?)
    }

    /// What both appends for a pupil check: the stream is the pupil's, and
    /// `actor` may record each event after the ones before it.
    async fn check_pupil_append(
        &self,
        actor: &Actor,
        pupil: &str,
        request: &AppendRequest,
        now: DateTime<Utc>,
    ) -> Result<(), AccessError> {
        if request.stream != StreamId::for_pupil(&self.school, pupil) {
            return Err(AccessError::Directory(format!(
                "internal: append for pupil {pupil} names another stream"
            )));
        }
        if !actor.unrestricted {
            let mut known = self.entries(request.stream).await?;
            for new in &request.events {
                let event =
                    crate::upcast::decode_payload(&new.event_type, new.schema, &new.payload)?;
                let action = record_action(pupil, &known, event.clone());
                self.check(actor, &action, None, now).await?;
                known.push((new.event_id, new.actor.clone(), event));
            }
        }
        Ok(())
    }

    /// Checks that `actor` may record `event` for `pupil`, before the
    /// event is validated or planned (so a refused actor learns nothing of
    /// the record from validation errors). The refusal is logged.
    /// [`Guarded::append_for_pupil`] checks again when appending.
    pub async fn check_record(
        &self,
        actor: &Actor,
        pupil: &str,
        event: &CaseEvent,
        now: DateTime<Utc>,
    ) -> Result<(), AccessError> {
        if actor.unrestricted {
            return Ok(());
        }
        let known = self
            .entries(StreamId::for_pupil(&self.school, pupil))
            .await?;
        let action = record_action(pupil, &known, event.clone());
        self.check(actor, &action, None, now).await
    }

    /// A case stream's decodable entries: (id, author, event).
    async fn entries(&self, stream: StreamId) -> Result<Vec<Entry>, StoreError> {
        let stored = read_whole_stream(self.store.as_ref(), stream).await?;
        Ok(stored
            .iter()
            .filter_map(|s| {
                s.case_event()
                    .ok()
                    .map(|e| (s.event_id, s.actor.clone(), e))
            })
            .collect())
    }

    /// An import: checks [`Action::Import`] once, then appends the plan's
    /// requests atomically, through [`EventStore::append_atomic_minted`]
    /// when every id was minted by the planner
    /// ([`crate::import::ImportPlan::minted`]). Each event keeps the actor
    /// its line names, registered or not.
    pub async fn append_import(
        &self,
        actor: &Actor,
        plan: crate::import::ImportPlan,
        now: DateTime<Utc>,
    ) -> Result<Vec<Appended>, AccessError> {
        self.check(actor, &Action::Import, None, now).await?;
        Ok(plan.append_to(self.store.as_ref()).await?)
    }

    /// Appends a directory event for `actor` (checked as
    /// [`Action::ManageStaff`], except the bootstrap: the first admin's
    /// registration into an empty directory), after the directory's rules.
    pub async fn change_directory(
        &mut self,
        actor: &Actor,
        event: CaseEvent,
        now: DateTime<Utc>,
    ) -> Result<Appended, AccessError> {
        if !self.directory.is_empty() {
            self.check(actor, &Action::ManageStaff, None, now).await?;
        }
        self.directory.check(&event)?;
        // Its id is minted here (`NewEvent::new`): a staff change does not
        // read the stored event ids (`append_minted`).
        let new = NewEvent::new(&event, now, actor.staff.clone())?;
        let done = self
            .store
            .append_minted(AppendRequest {
                stream: StreamId::for_directory(&self.school),
                expected: if self.directory_version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(self.directory_version)
                },
                events: vec![new],
            })
            .await?;
        self.directory.apply(&event, now);
        self.directory_version = done.last_version;
        Ok(done)
    }
}

/// An entry of a case stream: (event id, author, event).
type Entry = (Uuid, String, CaseEvent);

/// The [`Action::Record`] of `event` after the entries `known`: the
/// pupil's keyworker, and for a correction the author and class of the
/// entry it names (a correction of a correction takes the original's).
fn record_action(pupil: &str, known: &[Entry], event: CaseEvent) -> Action {
    let keyworker = keyworker_of(known.iter().map(|(i, _, e)| (*i, e)));
    let corrects = match &event {
        CaseEvent::EntryCorrected(c) => {
            let mut classes: HashMap<Uuid, ReadClass> = HashMap::new();
            for (i, _, e) in known {
                let class = match e {
                    CaseEvent::EntryCorrected(x) => classes
                        .get(&x.event)
                        .copied()
                        .unwrap_or(ReadClass::Safeguarding),
                    e => read_class(e),
                };
                classes.insert(*i, class);
            }
            known
                .iter()
                .find(|(i, _, _)| *i == c.event)
                .map(|(i, a, _)| Corrected {
                    author: a.clone(),
                    class: classes.get(i).copied().unwrap_or(ReadClass::Safeguarding),
                })
        }
        _ => None,
    };
    Action::Record {
        pupil: pupil.to_string(),
        keyworker,
        event: Box::new(event),
        corrects,
    }
}

/// Builds a `StaffRegistered` (convenience for callers).
pub fn staff_registered(staff: &str, name: &str, roles: &[Role]) -> CaseEvent {
    CaseEvent::StaffRegistered(StaffRegistered {
        staff: staff.to_string(),
        name: name.to_string(),
        roles: roles.to_vec(),
    })
}

/// Builds a `RoleGranted`.
pub fn role_granted(staff: &str, role: Role) -> CaseEvent {
    CaseEvent::RoleGranted(RoleGranted {
        staff: staff.to_string(),
        role,
    })
}

/// Builds a `RoleRevoked`.
pub fn role_revoked(staff: &str, role: Role) -> CaseEvent {
    CaseEvent::RoleRevoked(RoleRevoked {
        staff: staff.to_string(),
        role,
    })
}
