//! The audit trail: every event of a pupil's record in stream order, exactly
//! as stored (never as corrected: corrections appear as the entries they
//! are), with who recorded it, when, and its place in the hash chain; plus
//! the access log (who viewed the record, when, which view and why).
//!
//! Built from stored events rather than decoded ones because an auditor
//! needs `prev_hash`, and because a payload that no longer decodes must
//! still be listed (with `decode_error`) rather than make the trail
//! unreadable: the trail is where such damage has to be visible.

use casebook_engine::envelope::hex;
use casebook_engine::event::CaseEvent;
use casebook_engine::StoredEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::summary::summary;

/// A pupil's audit trail (`audit --format json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditTrail {
    pub pupil: String,
    /// Every event of the case stream, in stream order.
    pub events: Vec<AuditEntry>,
    /// Every view of the record, oldest first.
    pub access_log: Vec<AccessEntry>,
}

/// One stored event of the pupil's case stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub position: u64,
    pub version: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload schema as stored (upcast on read).
    pub schema: u32,
    /// Who recorded it.
    pub actor: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// BLAKE3 hash of this event, hex.
    pub hash: String,
    /// Hash of the event before it in the school's log, hex.
    pub prev_hash: String,
    pub summary: String,
    /// The payload as recorded (not as corrected); `null` if it cannot be
    /// decoded.
    pub data: Value,
    /// Why the payload could not be decoded, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

/// One view of the pupil's record, or one refused attempt on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub position: u64,
    pub event_id: Uuid,
    /// Who viewed the record.
    pub who: String,
    /// When the view was recorded.
    pub viewed_at: DateTime<Utc>,
    /// What was read: `timeline`, `audit`, `export`, ...
    pub view: String,
    /// Why, as the viewer gave it.
    pub purpose: Option<String>,
    /// Set when the reading was refused: why (`AccessRefused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl AuditTrail {
    /// Builds the trail from the pupil's case stream and access stream (each
    /// in stream order, as `read_stream` returns them).
    pub fn build(pupil: &str, case: &[StoredEvent], access: &[StoredEvent]) -> AuditTrail {
        let events = case
            .iter()
            .map(|s| {
                let (summary, data, decode_error) = match s.case_event() {
                    Ok(e) => (summary(&e), e.data_json(), None),
                    Err(err) => (
                        format!("{} (payload cannot be decoded)", s.event_type),
                        Value::Null,
                        Some(err.to_string()),
                    ),
                };
                AuditEntry {
                    position: s.position,
                    version: s.version,
                    event_id: s.event_id,
                    event_type: s.event_type.clone(),
                    schema: s.schema,
                    actor: s.actor.clone(),
                    occurred_at: s.occurred_at,
                    recorded_at: s.recorded_at,
                    correlation_id: s.correlation_id,
                    causation_id: s.causation_id,
                    hash: hex(&s.hash),
                    prev_hash: hex(&s.prev_hash),
                    summary,
                    data,
                    decode_error,
                }
            })
            .collect();
        let access_log = access
            .iter()
            .map(|s| {
                // Only `RecordViewed` belongs in an access stream; anything
                // else found there is listed by its type rather than hidden.
                let (view, purpose, refused) = match s.case_event() {
                    Ok(CaseEvent::RecordViewed(v)) => (v.view, v.purpose, None),
                    Ok(CaseEvent::AccessRefused(r)) => (r.action, r.purpose, Some(r.reason)),
                    Ok(other) => (other.type_name().to_string(), None, None),
                    Err(_) => (
                        format!("{} (payload cannot be decoded)", s.event_type),
                        None,
                        None,
                    ),
                };
                AccessEntry {
                    position: s.position,
                    event_id: s.event_id,
                    who: s.actor.clone(),
                    viewed_at: s.recorded_at,
                    view,
                    purpose,
                    refused,
                }
            })
            .collect();
        AuditTrail {
            pupil: pupil.to_string(),
            events,
            access_log,
        }
    }
}
