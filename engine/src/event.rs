//! The case events: what can happen on a pupil's case record.
//!
//! `CaseEvent` is the one payload type of the log. It is serde-tagged
//! adjacently (`{"type": ..., "data": {...}}`) so that the JSONL import line
//! and the JSON output share one shape. Every variant wraps a struct with
//! `deny_unknown_fields`: a misspelt field in a school's export is refused
//! with its name rather than silently dropped.
//!
//! Variants are named in the past tense: they record what happened. The
//! catalogue with meanings, roles and readers is `docs/events.md`; keep the
//! two in step.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload schema each event type is written at today. Older payloads
/// are brought up to these by the upcasters in [`crate::upcast`].
pub const CURRENT_SCHEMA: u32 = 2;

macro_rules! case_events {
    ($( $(#[$doc:meta])* $variant:ident($data:ident) ),+ $(,)?) => {
        /// One thing that happened on a pupil's case record.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        #[non_exhaustive]
        pub enum CaseEvent {
            $( $(#[$doc])* $variant($data), )+
        }

        /// Every event type name, in catalogue order.
        pub const EVENT_TYPES: &[&str] = &[ $( stringify!($variant), )+ ];

        impl CaseEvent {
            /// The type name, as written in JSONL and in the envelope.
            pub fn type_name(&self) -> &'static str {
                match self { $( CaseEvent::$variant(_) => stringify!($variant), )+ }
            }

            /// Every field name the variant's `data` may hold, optional ones
            /// included, as serde reads them. Read from the derived
            /// `Deserialize`, so a field added to a struct appears here with
            /// no list to keep in step.
            pub fn data_fields(&self) -> &'static [&'static str] {
                match self { $( CaseEvent::$variant(_) => struct_fields::<$data>(), )+ }
            }

            /// Builds an event from its type name and its `data` object,
            /// reading the variant's struct directly so that an error names
            /// the field at fault (`severity`, `participants[0].role`). The
            /// tagged-enum route loses that path.
            pub fn from_type_and_data(
                event_type: &str,
                data: serde_json::Value,
            ) -> Result<CaseEvent, DataError> {
                match event_type {
                    $( stringify!($variant) => serde_path_to_error::deserialize::<_, $data>(data)
                        .map(CaseEvent::$variant)
                        .map_err(DataError::from_serde), )+
                    other => Err(DataError {
                        path: None,
                        message: format!("unknown event type {other:?}"),
                    }),
                }
            }

            /// [`CaseEvent::from_type_and_data`] read straight from the
            /// JSON text of `data`, with no path tracked and no
            /// `serde_json::Value` built: `None` for anything it does not
            /// read (the caller then reads the line the general way, for
            /// the error).
            pub fn from_type_and_text(event_type: &str, data: &str) -> Option<CaseEvent> {
                match event_type {
                    $( stringify!($variant) => serde_json::from_str::<$data>(data)
                        .ok()
                        .map(CaseEvent::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

case_events! {
    /// First event of every pupil stream: who the pupil is.
    PupilRegistered(PupilRegistered),
    /// A referral into pastoral or safeguarding support arrived.
    ReferralReceived(ReferralReceived),
    /// A case of one type was opened for the pupil.
    CaseOpened(CaseOpened),
    /// A member of staff became the pupil's keyworker.
    KeyworkerAssigned(KeyworkerAssigned),
    /// A safeguarding or welfare concern was raised (safeguarding).
    ConcernRaised(ConcernRaised),
    /// A concern was passed to the DSL or another member of staff (safeguarding).
    ConcernEscalated(ConcernEscalated),
    /// The DSL decided what to do about a concern, and why (safeguarding).
    SafeguardingDecisionMade(SafeguardingDecisionMade),
    /// A referral was made to an outside agency (safeguarding).
    ExternalReferralMade(ExternalReferralMade),
    /// A behaviour incident; this pupil's role in it is recorded per pupil.
    IncidentRecorded(IncidentRecorded),
    /// A use of reasonable force (Education and Inspections Act 2006 s.93A).
    ReasonableForceUsed(ReasonableForceUsed),
    /// A sanction below suspension.
    SanctionIssued(SanctionIssued),
    /// A suspension (fixed-period exclusion) by the headteacher.
    SuspensionIssued(SuspensionIssued),
    /// A permanent exclusion by the headteacher.
    PermanentExclusionIssued(PermanentExclusionIssued),
    /// An intervention (mentoring, social skills, ...) began.
    InterventionStarted(InterventionStarted),
    /// One session of an intervention took place (or was missed).
    InterventionSessionDelivered(InterventionSessionDelivered),
    /// An intervention ended, with its outcome.
    InterventionEnded(InterventionEnded),
    /// A plan was agreed, with its first review date.
    PlanAgreed(PlanAgreed),
    /// A plan was reviewed; no next date means the plan ended.
    PlanReviewed(PlanReviewed),
    /// A restorative meeting was held.
    RestorativeMeetingHeld(RestorativeMeetingHeld),
    /// A reintegration meeting after a suspension or removal.
    ReintegrationMeetingHeld(ReintegrationMeetingHeld),
    /// Reintegration finished.
    ReintegrationCompleted(ReintegrationCompleted),
    /// One register mark (one session) with its DfE code.
    AttendanceMarked(AttendanceMarked),
    /// A reward or positive point.
    RewardIssued(RewardIssued),
    /// An absence was followed up with the family.
    AbsenceFollowedUp(AbsenceFollowedUp),
    /// Alternative provision was arranged.
    AlternativeProvisionArranged(AlternativeProvisionArranged),
    /// Parents or carers were contacted.
    ParentContacted(ParentContacted),
    /// Contact with an outside agency (social care, CAMHS, police, ...).
    AgencyLiaison(AgencyLiaison),
    /// A correction of an earlier entry; the original stays in the log.
    EntryCorrected(EntryCorrected),
    /// The case was closed.
    CaseClosed(CaseClosed),
    /// Somebody viewed the pupil's record (access log; lives in the pupil's
    /// access stream, not in the case stream).
    RecordViewed(RecordViewed),
    /// A member of staff joined the school's staff directory (directory
    /// stream; see `docs/security.md`).
    StaffRegistered(StaffRegistered),
    /// A member of staff was given a role (directory stream).
    RoleGranted(RoleGranted),
    /// A role was taken from a member of staff (directory stream).
    RoleRevoked(RoleRevoked),
    /// Somebody was refused an action (access log: the pupil's access stream
    /// when the action concerned a pupil, the directory stream otherwise).
    AccessRefused(AccessRefused),
    /// The pupil's personal data was erased: their data keys destroyed
    /// (`casebook erase`, or `retention --apply`).
    PupilErased(PupilErased),
    /// The record is under a legal hold: it must not be erased.
    LegalHoldApplied(LegalHoldApplied),
    /// A legal hold ended.
    LegalHoldLifted(LegalHoldLifted),
    /// The record was sent to another school (`casebook transfer-out`).
    TransferredOut(TransferredOut),
    /// The record arrived from another school (`casebook transfer-in`),
    /// with what proved it.
    TransferredIn(TransferredIn),
}

/// Why `data` does not read as an event of the given type.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{message}", path.as_deref().map(|p| format!("{p}: ")).unwrap_or_default())]
pub struct DataError {
    /// Path of the field at fault inside `data` (`severity`,
    /// `participants[0].role`); `None` when the object as a whole is wrong
    /// (a missing field, whose name is in the message).
    pub path: Option<String>,
    pub message: String,
}

impl DataError {
    fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> DataError {
        let path = e.path().to_string();
        let path = if path == "." || path.is_empty() {
            None
        } else {
            Some(path)
        };
        DataError {
            path,
            message: e.into_inner().to_string(),
        }
    }
}

/// The field names a derived `Deserialize` of a struct asks for: a
/// deserializer that only records the `fields` handed to
/// `deserialize_struct` and then stops.
fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only structs are introspected"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The error is the expected way out: the deserializer never builds a value.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// Safeguarding events: visible in full to the DSL and auditors only, and
/// the ones `timeline --safeguarding-only` keeps.
pub const SAFEGUARDING_TYPES: &[&str] = &[
    "ReferralReceived",
    "ConcernRaised",
    "ConcernEscalated",
    "SafeguardingDecisionMade",
    "ExternalReferralMade",
    "AgencyLiaison",
];

impl CaseEvent {
    /// Whether the event belongs in a pupil's case stream. The access log
    /// (`RecordViewed`, `AccessRefused`) and the staff directory
    /// (`StaffRegistered`, `RoleGranted`, `RoleRevoked`) are written by
    /// casebook itself to their own streams, never recorded or imported.
    pub fn is_case_event(&self) -> bool {
        !matches!(
            self,
            CaseEvent::RecordViewed(_)
                | CaseEvent::AccessRefused(_)
                | CaseEvent::StaffRegistered(_)
                | CaseEvent::RoleGranted(_)
                | CaseEvent::RoleRevoked(_)
        )
    }

    /// Whether the event belongs in a safeguarding chronology.
    pub fn is_safeguarding(&self) -> bool {
        match self {
            CaseEvent::CaseOpened(c) => c.case_type == CaseType::Safeguarding,
            other => SAFEGUARDING_TYPES.contains(&other.type_name()),
        }
    }

    /// The variant's fields as a JSON object (the `data` of the contract).
    pub fn data_json(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => {
                m.remove("data").unwrap_or(serde_json::Value::Null)
            }
            // A derived Serialize of an adjacently tagged enum always yields an
            // object; anything else would be a serde bug, shown rather than hidden.
            Ok(other) => other,
            Err(e) => serde_json::Value::String(format!("<unserialisable: {e}>")),
        }
    }
}

/// Kinds of case a pupil can have open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseType {
    Pastoral,
    Behaviour,
    Safeguarding,
    Attendance,
    Send,
}

impl CaseType {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseType::Pastoral => "pastoral",
            CaseType::Behaviour => "behaviour",
            CaseType::Safeguarding => "safeguarding",
            CaseType::Attendance => "attendance",
            CaseType::Send => "send",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PupilRegistered {
    /// The school's reference for the pupil (UPN or MIS id). Filled from the
    /// import line's `pupil`; may be left out of `data`.
    #[serde(default)]
    pub pupil: String,
    pub name: String,
    #[serde(with = "date_text")]
    pub date_of_birth: NaiveDate,
    /// National Curriculum year: 0 = Reception, 1..=13.
    pub year_group: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    /// `female` / `male` / other text as the MIS holds it (reports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<String>,
    /// Eligible for free school meals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsm: Option<bool>,
    /// Has special educational needs (SEN support or EHCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sen: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralReceived {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseOpened {
    pub case_type: CaseType,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyworkerAssigned {
    pub staff: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcernRaised {
    pub category: String,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcernEscalated {
    pub to: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SafeguardingDecision {
    Monitor,
    EarlyHelp,
    ReferSocialCare,
    ReferPolice,
    NoFurtherAction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeguardingDecisionMade {
    pub decision: SafeguardingDecision,
    pub rationale: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalReferralMade {
    pub agency: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A pupil's part in a (possibly shared) incident.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IncidentRole {
    Perpetrator,
    Target,
    Witness,
    #[default]
    Involved,
}

/// Another pupil in a shared incident, with their own role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub pupil: String,
    #[serde(default)]
    pub role: IncidentRole,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentRecorded {
    pub category: String,
    /// 1 (minor) to 5 (most serious).
    pub severity: u8,
    pub location: String,
    pub description: String,
    /// This pupil's role; the others' roles are in `participants`.
    #[serde(default)]
    pub role: IncidentRole,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonableForceUsed {
    pub staff: String,
    pub reason: String,
    pub hold: String,
    pub duration_minutes: u32,
    pub injuries: String,
    pub parent_informed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanctionKind {
    Detention,
    Isolation,
    InternalExclusion,
    ReportCard,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanctionIssued {
    pub kind: SanctionKind,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspensionIssued {
    /// School days, in steps of 0.5 (a lunchtime counts as half a day).
    pub days: f64,
    /// DfE census reason code (the main reason).
    pub reason_code: String,
    /// Up to two further census reason codes (the census takes three).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_reason_codes: Vec<String>,
    #[serde(with = "date_text")]
    pub start_date: NaiveDate,
    /// Why a suspension past the 45-day yearly limit is recorded anyway
    /// (e.g. days at a previous school were counted twice). Required to pass
    /// the limit; recorded for the auditor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermanentExclusionIssued {
    pub reason_code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_reason_codes: Vec<String>,
    #[serde(with = "date_text")]
    pub effective_date: NaiveDate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionStarted {
    /// The school's id for this intervention, unique within the pupil.
    pub intervention: String,
    pub kind: String,
    pub goal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_planned: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionSessionDelivered {
    pub intervention: String,
    pub attended: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionOutcome {
    Achieved,
    PartlyAchieved,
    NotAchieved,
    Withdrawn,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionEnded {
    pub intervention: String,
    pub outcome: InterventionOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    BehaviourSupport,
    PositiveHandling,
    RiskAssessment,
    EarlyHelp,
    PastoralSupport,
    Ehcp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAgreed {
    pub plan: String,
    pub kind: PlanKind,
    #[serde(with = "date_text")]
    pub review_due: NaiveDate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanReviewed {
    pub plan: String,
    pub outcome: String,
    /// `None` (JSON `null`) when the review ends the plan.
    #[serde(serialize_with = "date_text::serialize_option")]
    pub next_review_due: Option<NaiveDate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestorativeMeetingHeld {
    pub participants: Vec<String>,
    pub agreement: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReintegrationMeetingHeld {
    pub attendees: Vec<String>,
    pub agreed_support: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReintegrationCompleted {
    pub outcome: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Session {
    Am,
    Pm,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceMarked {
    #[serde(with = "date_text")]
    pub date: NaiveDate,
    pub session: Session,
    /// DfE attendance code (see [`crate::codes`]).
    pub code: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardIssued {
    pub kind: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceFollowedUp {
    #[serde(with = "date_text")]
    pub date: NaiveDate,
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternativeProvisionArranged {
    pub provider: String,
    #[serde(with = "date_text")]
    pub start_date: NaiveDate,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_per_week: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentContacted {
    pub method: String,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyLiaison {
    pub agency: String,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryCorrected {
    /// `event_id` of the corrected event (same pupil).
    pub event: Uuid,
    /// New values for some of the corrected event's `data` fields.
    pub changes: serde_json::Map<String, serde_json::Value>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseClosed {
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordViewed {
    /// The pupil whose record was read.
    pub pupil: String,
    /// What was read: `timeline`, `audit`, `export`, ...
    pub view: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffRegistered {
    /// The member of staff's reference (what `--as` names).
    pub staff: String,
    pub name: String,
    /// The roles given on registration (at least one).
    pub roles: Vec<crate::access::Role>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGranted {
    pub staff: String,
    pub role: crate::access::Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRevoked {
    pub staff: String,
    pub role: crate::access::Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRefused {
    /// Who was refused, as they named themselves (registered or not).
    pub staff: String,
    /// What they tried, in words (`read the timeline of P001`).
    pub action: String,
    /// The pupil concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pupil: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// The purpose the reader gave, for a refused read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PupilErased {
    /// Why (e.g. "retention period ended"); kept in the clear, so no
    /// personal data here.
    pub reason: String,
    /// The data keys destroyed (key ids: this stream's id, plus the sending
    /// school's stream id for a record that arrived by transfer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldApplied {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldLifted {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferredOut {
    /// The receiving school.
    pub to: String,
    /// The bundle's id (in its signed statement).
    pub bundle: Uuid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferredIn {
    /// The sending school and the pupil's reference there.
    pub from: String,
    pub from_pupil: String,
    /// The sending log's head the bundle was signed at.
    pub head_position: u64,
    pub head_hash: String,
    /// Hex BLAKE3 digest of the sender's Ed25519 public key.
    pub signer: String,
    /// How many events were imported.
    pub events: u64,
    /// The data key the imported sealed fields use (the sender's stream id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
}

/// A date's text as payloads write it (`2026-09-15`), for the years 0 to
/// 9999 (`None` for others): what the timeline's direct writer shows.
pub use date_text::ascii as date_ascii;

/// Dates in payloads are written as chrono writes them (`2026-09-15`, the
/// text of its `Debug`), but for the years 0 to 9999 straight from the
/// digits instead of through the formatting machinery and a `String`: every
/// event's date is encoded once per import line. Other years go through
/// chrono itself.
pub(crate) mod date_text {
    use chrono::{Datelike, NaiveDate};
    use serde::{Serialize, Serializer};

    /// The date's text, for the years 0 to 9999. (`#[inline]`: the
    /// timeline's writer calls it from another crate, once per mark.)
    #[inline]
    pub fn ascii(d: &NaiveDate) -> Option<[u8; 10]> {
        let y = d.year();
        if !(0..=9999).contains(&y) {
            return None;
        }
        let (y, m, day) = (y as u32, d.month(), d.day());
        let digit = |n: u32| b'0' + (n % 10) as u8;
        Some([
            digit(y / 1000),
            digit(y / 100),
            digit(y / 10),
            digit(y),
            b'-',
            digit(m / 10),
            digit(m),
            b'-',
            digit(day / 10),
            digit(day),
        ])
    }

    /// The date of `YYYY-MM-DD` (ASCII digits, nothing else), without
    /// chrono's general parser; `None` for any other text, which chrono
    /// parses (every date the fast path reads, chrono reads the same).
    pub(crate) fn parse_plain(text: &str) -> Option<NaiveDate> {
        parse_plain_bytes(text.as_bytes().try_into().ok()?)
    }

    /// [`parse_plain`] of ten bytes (any bytes: `None` unless they are
    /// `YYYY-MM-DD`).
    pub(crate) fn parse_plain_bytes(b: &[u8; 10]) -> Option<NaiveDate> {
        if b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let mut digits = [0u32; 8];
        for (d, &c) in digits
            .iter_mut()
            .zip(b[..4].iter().chain(&b[5..7]).chain(&b[8..]))
        {
            if !c.is_ascii_digit() {
                return None;
            }
            *d = u32::from(c - b'0');
        }
        let [y0, y1, y2, y3, m0, m1, d0, d1] = digits;
        let year = (y0 * 1000 + y1 * 100 + y2 * 10 + y3) as i32;
        NaiveDate::from_ymd_opt(year, m0 * 10 + m1, d0 * 10 + d1)
    }

    /// As chrono's `Deserialize` of `NaiveDate` (the same visitor: a
    /// string, parsed; its errors and expectation text), with
    /// [`parse_plain`] first.
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<NaiveDate, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NaiveDate;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a formatted date string")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<NaiveDate, E> {
                match parse_plain(value) {
                    Some(d) => Ok(d),
                    None => value.parse().map_err(E::custom),
                }
            }
        }
        d.deserialize_str(Visitor)
    }

    pub(super) fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        match ascii(d).as_ref().map(|b| std::str::from_utf8(b)) {
            Some(Ok(text)) => s.serialize_str(text),
            _ => d.serialize(s),
        }
    }

    pub(super) fn serialize_option<S: Serializer>(
        d: &Option<NaiveDate>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        struct Date<'a>(&'a NaiveDate);
        impl Serialize for Date<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize(self.0, s)
            }
        }
        match d {
            Some(d) => s.serialize_some(&Date(d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What chrono's own `Deserialize` makes of `value`, as text.
    fn chrono_reads(value: &serde_json::Value) -> String {
        format!("{:?}", serde_json::from_value::<NaiveDate>(value.clone()))
    }

    /// What the payloads' date fields make of `value`, as text.
    fn fields_read(value: &serde_json::Value) -> String {
        format!(
            "{:?}",
            date_text::deserialize(value.clone()).map_err(|e: serde_json::Error| e)
        )
    }

    #[test]
    fn dates_that_are_not_strings_are_refused_as_chrono_refuses_them() {
        for v in [
            serde_json::json!(12),
            serde_json::json!(null),
            serde_json::json!([1]),
        ] {
            assert_eq!(fields_read(&v), chrono_reads(&v));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Dates in payloads are read as chrono reads them: the same date,
        /// or the same error, whatever the text.
        #[test]
        fn dates_are_read_as_chrono_reads_them(
            text in prop_oneof![
                "[0-9]{4}-[0-9]{2}-[0-9]{2}",
                "[0-9]{4}-[01][0-9]-[0-3][0-9]",
                "[ +-]?[0-9 ]{1,6}-[0-9 ]{1,3}-[0-9 ]{1,3} ?",
                ".{0,12}",
            ],
        ) {
            let v = serde_json::Value::String(text.clone());
            prop_assert_eq!(fields_read(&v), chrono_reads(&v));
            let mp = rmp_serde::to_vec(&text).unwrap();
            let ours = date_text::deserialize(&mut rmp_serde::Deserializer::new(&mp[..]));
            let theirs: Result<NaiveDate, _> = rmp_serde::from_slice(&mp);
            prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }

        /// The fast date text is chrono's, for every date chrono holds.
        #[test]
        fn dates_are_written_as_chrono_writes_them(days in -100_000_000i32..100_000_000) {
            let Some(d) = NaiveDate::from_num_days_from_ce_opt(days) else {
                return Ok(());
            };
            if let Some(b) = date_text::ascii(&d) {
                prop_assert_eq!(std::str::from_utf8(&b).unwrap(), d.to_string());
            }
            let mut fast = Vec::new();
            date_text::serialize(&d, &mut rmp_serde::Serializer::new(&mut fast)).unwrap();
            prop_assert_eq!(fast, rmp_serde::to_vec(&d).unwrap());
            let json = date_text::serialize(&d, serde_json::value::Serializer).unwrap();
            prop_assert_eq!(json, serde_json::to_value(d).unwrap());
            let text = d.to_string();
            prop_assert_eq!(date_text::parse_plain(&text).or_else(|| text.parse().ok()), Some(d));
            for o in [Some(d), None] {
                let mut fast = Vec::new();
                date_text::serialize_option(&o, &mut rmp_serde::Serializer::new(&mut fast)).unwrap();
                prop_assert_eq!(fast, rmp_serde::to_vec(&o).unwrap());
            }
        }
    }
}
