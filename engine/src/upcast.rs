//! Upcasting: payloads written at an older schema are converted, on read,
//! to the current shape by a chain of upcasters, one step per schema.
//!
//! Architecture Invariant: stored bytes are never rewritten. Upcasting
//! happens on every read of an old payload, so the hash chain keeps
//! covering exactly what was written.

use crate::envelope::MAX_PAYLOAD_BYTES;
use crate::error::CodecError;
use crate::event::{CaseEvent, CURRENT_SCHEMA};

/// One step: converts `event_type`'s payload `data` from `from_schema` to
/// `from_schema + 1`.
pub struct Upcaster {
    pub event_type: &'static str,
    pub from_schema: u32,
    pub upcast: fn(&mut serde_json::Map<String, serde_json::Value>) -> Result<(), String>,
}

/// The chain. Schema 1 payloads of types with no step here are already in
/// their current shape.
pub static UPCASTERS: &[Upcaster] = &[];

/// Decodes a stored payload, upcasting it when its schema is older.
pub fn decode_payload(event_type: &str, schema: u32, bytes: &[u8]) -> Result<CaseEvent, CodecError> {
    let err = |what: String| CodecError::Payload { event_type: event_type.to_string(), schema, what };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(err(format!("payload of {} bytes is over the limit", bytes.len())));
    }
    if schema == CURRENT_SCHEMA {
        let event: CaseEvent = rmp_serde::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        if event.type_name() != event_type {
            return Err(err(format!("payload holds a {}", event.type_name())));
        }
        return Ok(event);
    }
    if schema == 0 || schema > CURRENT_SCHEMA {
        return Err(err(format!("unknown schema (this casebook reads 1..={CURRENT_SCHEMA})")));
    }
    let mut value: serde_json::Value = rmp_serde::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    let data = value
        .get_mut("data")
        .and_then(|d| d.as_object_mut())
        .ok_or_else(|| err("payload has no data object".into()))?;
    for s in schema..CURRENT_SCHEMA {
        for step in UPCASTERS.iter().filter(|u| u.event_type == event_type && u.from_schema == s) {
            (step.upcast)(data).map_err(|what| err(format!("upcasting from schema {s}: {what}")))?;
        }
    }
    let event: CaseEvent = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
    if event.type_name() != event_type {
        return Err(err(format!("payload holds a {}", event.type_name())));
    }
    Ok(event)
}
