//! Upcasting: payloads written at an older schema are converted, on read,
//! to the current shape by a chain of upcasters, one step per schema.
//!
//! Architecture Invariant: stored bytes are never rewritten. Upcasting
//! happens on every read of an old payload, so the hash chain keeps
//! covering exactly what was written.
//!
//! Each step works on the payload's `data` as a JSON object, so that a step
//! is written against the old shape as data, not against a Rust type that
//! has since changed. Stored fixtures of schema-1 bytes
//! (`tests/data/fixtures/schema1/`) and the tests in `tests/it/domain.rs`
//! keep every step honest. The history is in `docs/events.md`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::envelope::MAX_PAYLOAD_BYTES;
use crate::error::CodecError;
use crate::event::{CaseEvent, CURRENT_SCHEMA};

/// Deepest nesting a payload may have. A case event's data nests three
/// levels (data, participants, one participant) and a correction's
/// `changes` a few more; 32 leaves room for any honest payload, and stops a
/// crafted one from recursing through the stack while it is decoded.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// One step: converts `event_type`'s payload `data` from `from_schema` to
/// `from_schema + 1`.
pub struct Upcaster {
    pub event_type: &'static str,
    pub from_schema: u32,
    pub upcast: fn(&mut Map<String, Value>) -> Result<(), String>,
}

/// The chain. Schema 1 payloads of types with no step here are already in
/// their current shape.
pub static UPCASTERS: &[Upcaster] = &[
    Upcaster {
        event_type: "IncidentRecorded",
        from_schema: 1,
        upcast: incident_recorded_1_to_2,
    },
    Upcaster {
        event_type: "SuspensionIssued",
        from_schema: 1,
        upcast: suspension_issued_1_to_2,
    },
];

/// `IncidentRecorded` 1 -> 2. Schema 1 listed the other pupils of a shared
/// incident as a flat `others: [REF, ...]`, with no role for anyone, so
/// tagging the incident one way tagged every linked pupil the same way.
/// Schema 2 records each pupil's own role. Nothing in schema 1 says who did
/// what, so every role becomes `involved`, the one role that claims nothing;
/// a DSL corrects roles with `EntryCorrected` where the record shows them.
fn incident_recorded_1_to_2(data: &mut Map<String, Value>) -> Result<(), String> {
    let others = match data.remove("others") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "others: expected a list of pupil references, got {other}"
            ))
        }
    };
    let mut participants = Vec::with_capacity(others.len());
    for (i, pupil) in others.into_iter().enumerate() {
        match pupil {
            Value::String(pupil) => {
                let mut p = Map::new();
                p.insert("pupil".into(), Value::String(pupil));
                p.insert("role".into(), Value::String("involved".into()));
                participants.push(Value::Object(p));
            }
            other => {
                return Err(format!(
                    "others[{i}]: expected a pupil reference, got {other}"
                ))
            }
        }
    }
    if !participants.is_empty() {
        data.insert("participants".into(), Value::Array(participants));
    }
    data.insert("role".into(), Value::String("involved".into()));
    Ok(())
}

/// `SuspensionIssued` 1 -> 2. Schema 1 counted length as the census does,
/// in half-day `sessions` (an integer), and called the code `reason`.
/// Schema 2 counts school `days` (sessions / 2, so steps of 0.5, as the
/// statutory guidance and the 45-day limit are written) and names the code
/// `reason_code`, next to the two further census reasons it can now hold.
fn suspension_issued_1_to_2(data: &mut Map<String, Value>) -> Result<(), String> {
    let sessions = match data.remove("sessions") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("sessions: expected a whole number, got {n}"))?,
        Some(other) => return Err(format!("sessions: expected a whole number, got {other}")),
        None => return Err("sessions: missing".into()),
    };
    // u64 -> f64 is exact below 2^53; a suspension is a few dozen sessions,
    // and anything huge is refused by the domain's limits, not here.
    let days = serde_json::Number::from_f64(sessions as f64 / 2.0)
        .ok_or_else(|| format!("sessions: {sessions} is not a number of days"))?;
    let reason = data
        .remove("reason")
        .ok_or_else(|| "reason: missing".to_string())?;
    data.insert("days".into(), Value::Number(days));
    data.insert("reason_code".into(), reason);
    Ok(())
}

/// Reads MessagePack with the nesting limit of [`MAX_PAYLOAD_DEPTH`].
fn from_msgpack<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_PAYLOAD_DEPTH);
    T::deserialize(&mut de).map_err(|e| e.to_string())
}

/// Decodes a stored payload, upcasting it when its schema is older. Never
/// panics, whatever the bytes.
pub fn decode_payload(
    event_type: &str,
    schema: u32,
    bytes: &[u8],
) -> Result<CaseEvent, CodecError> {
    let err = |what: String| CodecError::Payload {
        event_type: event_type.to_string(),
        schema,
        what,
    };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(err(format!(
            "payload of {} bytes is over the limit",
            bytes.len()
        )));
    }
    if schema == CURRENT_SCHEMA {
        let event: CaseEvent = from_msgpack(bytes).map_err(err)?;
        if event.type_name() != event_type {
            return Err(err(format!("payload holds a {}", event.type_name())));
        }
        return Ok(event);
    }
    if schema == 0 || schema > CURRENT_SCHEMA {
        return Err(err(format!(
            "unknown schema (this casebook reads 1..={CURRENT_SCHEMA})"
        )));
    }
    let mut value: Value = from_msgpack(bytes).map_err(err)?;
    // Check the type before any step runs: a step only understands its own
    // type's old shape.
    match value.get("type").and_then(Value::as_str) {
        Some(t) if t == event_type => {}
        Some(t) => return Err(err(format!("payload holds a {t}"))),
        None => return Err(err("payload has no type".into())),
    }
    let data = value
        .get_mut("data")
        .and_then(|d| d.as_object_mut())
        .ok_or_else(|| err("payload has no data object".into()))?;
    for s in schema..CURRENT_SCHEMA {
        for step in UPCASTERS
            .iter()
            .filter(|u| u.event_type == event_type && u.from_schema == s)
        {
            (step.upcast)(data)
                .map_err(|what| err(format!("upcasting from schema {s}: {what}")))?;
        }
    }
    let event: CaseEvent = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
    if event.type_name() != event_type {
        return Err(err(format!("payload holds a {}", event.type_name())));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(event_type: &str, data: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&json!({"type": event_type, "data": data})).unwrap_or_default()
    }

    #[test]
    fn an_odd_number_of_sessions_becomes_half_days() {
        let bytes = v1(
            "SuspensionIssued",
            json!({"sessions": 3, "reason": "PD", "start_date": "2019-11-04"}),
        );
        match decode_payload("SuspensionIssued", 1, &bytes) {
            Ok(CaseEvent::SuspensionIssued(s)) => {
                assert_eq!(s.days, 1.5);
                assert_eq!(s.reason_code, "PD");
            }
            other => panic!("expected a suspension, got {other:?}"),
        }
    }

    #[test]
    fn old_shapes_with_wrong_types_are_errors_not_panics() {
        let cases = [
            v1(
                "SuspensionIssued",
                json!({"sessions": -2, "reason": "PD", "start_date": "2019-11-04"}),
            ),
            v1(
                "SuspensionIssued",
                json!({"sessions": 2.5, "reason": "PD", "start_date": "2019-11-04"}),
            ),
            v1(
                "SuspensionIssued",
                json!({"reason": "PD", "start_date": "2019-11-04"}),
            ),
            v1(
                "IncidentRecorded",
                json!({"category": "x", "severity": 2, "location": "x",
                       "description": "x", "others": "P1"}),
            ),
            v1(
                "IncidentRecorded",
                json!({"category": "x", "severity": 2, "location": "x",
                       "description": "x", "others": [7]}),
            ),
        ];
        for bytes in cases {
            let event_type = if bytes.windows(4).any(|w| w == b"Susp") {
                "SuspensionIssued"
            } else {
                "IncidentRecorded"
            };
            assert!(decode_payload(event_type, 1, &bytes).is_err());
        }
    }

    #[test]
    fn a_payload_of_another_type_is_refused_before_upcasting() {
        let bytes = v1(
            "ParentContacted",
            json!({"method": "phone", "summary": "x"}),
        );
        let e = decode_payload("SuspensionIssued", 1, &bytes)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(e.is_err_and(|e| e.contains("payload holds a ParentContacted")));
    }

    #[test]
    fn deeply_nested_bytes_are_refused_not_recursed() {
        // 10,000 nested one-element arrays: a crafted payload, well inside
        // the size limit.
        let mut bytes = vec![0x91u8; 10_000];
        bytes.push(0xc0);
        assert!(decode_payload("IncidentRecorded", 1, &bytes).is_err());
        assert!(decode_payload("IncidentRecorded", CURRENT_SCHEMA, &bytes).is_err());
    }
}
