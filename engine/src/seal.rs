//! Crypto-shredding: personal-data fields of payloads sealed with a key per
//! pupil, so that destroying the key erases the data while the hash chain,
//! which covers the ciphertext, still verifies.
//!
//! - A pupil's **data key** is 32 random bytes. It is never written to disk
//!   in the clear: the key file `keys/<school>/<key id>.key` in the store
//!   directory holds it wrapped (ChaCha20-Poly1305) by the store's
//!   **master key**, which comes from a key file or the environment and is
//!   never stored in the store directory.
//! - A **sealed field** is a string `sealed:v1:<base64url>` whose bytes are
//!   `0x01 ‖ key id (16) ‖ event id (16) ‖ nonce (12) ‖ ciphertext+tag`;
//!   the associated data is `key id ‖ event id`. Because a sealed field is
//!   still a string, payload types, upcasters and old (plaintext) stores are
//!   unchanged. Byte-for-byte layout: `docs/storage.md`.
//! - The nonce is synthetic (SIV-style): a keyed BLAKE3 of key id, event id,
//!   field path and plaintext under a key derived from the data key. The
//!   same plaintext of the same field of the same event seals to the same
//!   bytes (an import run twice stays idempotent); different plaintexts get
//!   different nonces, so a nonce is never reused with another message.
//! - Which fields are sealed per event type: [`sealed_fields`], listed in
//!   `docs/security.md`.
//!
//! Architecture Invariant: sealing happens before the envelope is encoded;
//! stored bytes are never rewritten. Erasure destroys a key file, nothing in
//! the log.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::StreamId;
use crate::event::CaseEvent;

/// Prefix of every sealed field.
pub const SEALED_PREFIX: &str = "sealed:v1:";
/// Format byte of a sealed field's bytes.
const SEALED_FORMAT: u8 = 0x01;
/// Magic at the start of a key file.
const KEY_FILE_MAGIC: &[u8; 4] = b"CBK1";
/// Length of a key file: magic, nonce, wrapped key and tag.
pub const KEY_FILE_LEN: usize = 4 + 12 + 32 + 16;

/// Why sealing, unsealing or key handling failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The master key given is not 32 bytes of hex or base64.
    #[error("master key: {0}")]
    BadMasterKey(String),
    /// A key file that the master key does not open.
    #[error("key file {path}: the master key does not open it (wrong master key, or the file is damaged)")]
    WrongMasterKey { path: String },
    #[error("key file {path}: {what}")]
    Io { path: String, what: String },
    #[error("cannot seal {field}: {what}")]
    Seal { field: String, what: String },
}

impl SealError {
    fn io(path: &Path, e: impl std::fmt::Display) -> SealError {
        SealError::Io {
            path: path.display().to_string(),
            what: e.to_string(),
        }
    }
}

/// 32 secret bytes, zeroed when dropped.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Volatile writes so the zeroing is not optimised away.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// 32 bytes from the operating system's random source.
    pub fn random() -> Result<SecretKey, SealError> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).map_err(|e| SealError::Io {
            path: "<random source>".into(),
            what: e.to_string(),
        })?;
        Ok(SecretKey(k))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// The raw bytes (tests search the store for them; transfer wraps them).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A master key written as 64 hex digits or base64 (standard or URL-safe)
    /// of 32 bytes; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<SecretKey, SealError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| SealError::BadMasterKey(e.to_string()))?
        } else {
            STANDARD
                .decode(t)
                .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
                .map_err(|_| {
                    SealError::BadMasterKey(
                        "expected 64 hex digits or base64 of 32 bytes".to_string(),
                    )
                })?
        };
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            SealError::BadMasterKey(format!("expected 32 bytes, got {}", bytes.len()))
        })?;
        Ok(SecretKey(arr))
    }

    /// A master key file: 32 raw bytes, or the text form of [`Self::parse`].
    pub fn from_file(path: &Path) -> Result<SecretKey, SealError> {
        let bytes = fs::read(path).map_err(|e| SealError::io(path, e))?;
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes);
            return Ok(SecretKey(k));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            SealError::BadMasterKey(format!("{}: neither 32 raw bytes nor text", path.display()))
        })?;
        SecretKey::parse(text)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

/// Something that seals an event's personal-data fields before it is
/// encoded (the import planner calls it).
pub trait PayloadSealer: Send + Sync {
    /// `event` with the fields of [`sealed_fields`] sealed under the key of
    /// `key_id`, bound to `event_id`.
    fn seal_event(
        &self,
        key_id: StreamId,
        event_id: Uuid,
        event: &CaseEvent,
    ) -> Result<CaseEvent, SealError>;
}

/// The personal-data fields of each event type: names, free text written
/// about people. Categorical fields (codes, categories, locations, dates,
/// staff references, pupil references) stay in the clear because reports
/// count by them. Kept in step with `docs/security.md`.
pub fn sealed_fields(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "PupilRegistered" => &["name", "upn"],
        "ReferralReceived" => &["reason"],
        "CaseOpened" => &["summary"],
        "ConcernRaised" => &["summary"],
        "ConcernEscalated" => &["reason"],
        "SafeguardingDecisionMade" => &["rationale"],
        "ExternalReferralMade" => &["reason", "reference"],
        "IncidentRecorded" => &["description"],
        "ReasonableForceUsed" => &["reason", "injuries"],
        "SanctionIssued" => &["reason"],
        "SuspensionIssued" => &["override_reason"],
        "InterventionStarted" => &["goal"],
        "InterventionSessionDelivered" => &["notes"],
        "PlanReviewed" => &["outcome"],
        "RestorativeMeetingHeld" => &["participants", "agreement"],
        "ReintegrationMeetingHeld" => &["attendees", "agreed_support"],
        "ReintegrationCompleted" => &["outcome"],
        "RewardIssued" => &["reason"],
        "AbsenceFollowedUp" => &["outcome"],
        "AlternativeProvisionArranged" => &["reason"],
        "ParentContacted" => &["summary"],
        "AgencyLiaison" => &["summary"],
        "EntryCorrected" => &["reason"],
        "CaseClosed" => &["outcome"],
        _ => &[],
    }
}

/// Every field name sealed in some event type: the keys of an
/// `EntryCorrected`'s `changes` that are sealed.
fn sealed_anywhere(field: &str) -> bool {
    crate::event::EVENT_TYPES
        .iter()
        .any(|t| sealed_fields(t).contains(&field))
}

/// Whether a string is a sealed field.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

fn ad(key_id: StreamId, event_id: Uuid) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..16].copy_from_slice(key_id.0.as_bytes());
    a[16..].copy_from_slice(event_id.as_bytes());
    a
}

/// Seals one string (a no-op for a string already sealed).
pub fn seal_text(
    key: &SecretKey,
    key_id: StreamId,
    event_id: Uuid,
    field: &str,
    plaintext: &str,
) -> Result<String, SealError> {
    if is_sealed(plaintext) {
        return Ok(plaintext.to_string());
    }
    let nonce_key = blake3::derive_key("casebook 2026 seal v1 synthetic nonce", key.bytes());
    let mut h = blake3::Hasher::new_keyed(&nonce_key);
    h.update(key_id.0.as_bytes());
    h.update(event_id.as_bytes());
    h.update(field.as_bytes());
    h.update(&[0]);
    h.update(plaintext.as_bytes());
    let digest = h.finalize();
    let nonce = &digest.as_bytes()[..12];
    let a = ad(key_id, event_id);
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &a,
            },
        )
        .map_err(|e| SealError::Seal {
            field: field.to_string(),
            what: e.to_string(),
        })?;
    let mut blob = Vec::with_capacity(1 + 32 + 12 + ct.len());
    blob.push(SEALED_FORMAT);
    blob.extend_from_slice(&a);
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&ct);
    Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(blob)))
}

/// The parts of a sealed field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedParts {
    pub key_id: StreamId,
    pub event_id: Uuid,
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

/// Parses the base64 part of a sealed field (after the prefix).
pub fn parse_sealed(b64: &str) -> Option<SealedParts> {
    let blob = URL_SAFE_NO_PAD.decode(b64).ok()?;
    if blob.len() < 1 + 32 + 12 + 16 || blob[0] != SEALED_FORMAT {
        return None;
    }
    let key_id = StreamId(Uuid::from_slice(&blob[1..17]).ok()?);
    let event_id = Uuid::from_slice(&blob[17..33]).ok()?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&blob[33..45]);
    Some(SealedParts {
        key_id,
        event_id,
        nonce,
        ciphertext: blob[45..].to_vec(),
    })
}

/// Opens a sealed field with its key; `None` if it does not open.
pub fn open_parts(key: &SecretKey, p: &SealedParts) -> Option<String> {
    let a = ad(p.key_id, p.event_id);
    let pt = key
        .cipher()
        .decrypt(
            Nonce::from_slice(&p.nonce),
            Payload {
                msg: &p.ciphertext,
                aad: &a,
            },
        )
        .ok()?;
    String::from_utf8(pt).ok()
}

/// What a reader knows about a key.
#[derive(Clone, Debug)]
pub enum KeyState {
    Key(SecretKey),
    /// Destroyed; the text shown in place of each sealed field.
    Erased(String),
    /// Not available (no master key configured, or no key file).
    Unavailable,
}

/// Text shown in place of a field that cannot be opened.
pub const UNAVAILABLE_TEXT: &str = "[sealed: no key available]";

/// Replaces every sealed field inside `text` (whole or embedded in a
/// longer string, such as a summary line) by its plaintext or the key's
/// erasure text.
pub fn unseal_text(text: &str, resolve: &mut dyn FnMut(StreamId) -> KeyState) -> String {
    if !text.contains(SEALED_PREFIX) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(SEALED_PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + SEALED_PREFIX.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        let b64 = &after[..end];
        let shown = match parse_sealed(b64) {
            Some(parts) => match resolve(parts.key_id) {
                KeyState::Key(k) => {
                    open_parts(&k, &parts).unwrap_or_else(|| "[sealed: does not open]".into())
                }
                KeyState::Erased(t) => t,
                KeyState::Unavailable => UNAVAILABLE_TEXT.to_string(),
            },
            // A sealed field cut short (a summary line shortened it).
            None => "[sealed]".to_string(),
        };
        out.push_str(&shown);
        rest = &after[end..];
        // A shortened summary ends with an ellipsis right after the cut.
        if let Some(r) = rest.strip_prefix('…') {
            rest = r;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces sealed fields in every string of a JSON document.
pub fn unseal_json(doc: &mut Value, resolve: &mut dyn FnMut(StreamId) -> KeyState) {
    match doc {
        Value::String(s) if s.contains(SEALED_PREFIX) => *s = unseal_text(s, resolve),
        Value::Array(a) => a.iter_mut().for_each(|v| unseal_json(v, resolve)),
        Value::Object(m) => m.values_mut().for_each(|v| unseal_json(v, resolve)),
        _ => {}
    }
}

/// Every key id named by a sealed field inside a JSON document.
pub fn key_ids_in(doc: &Value, out: &mut Vec<StreamId>) {
    match doc {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(at) = rest.find(SEALED_PREFIX) {
                let after = &rest[at + SEALED_PREFIX.len()..];
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(after.len());
                if let Some(p) = parse_sealed(&after[..end]) {
                    if !out.contains(&p.key_id) {
                        out.push(p.key_id);
                    }
                }
                rest = &after[end..];
            }
        }
        Value::Array(a) => a.iter().for_each(|v| key_ids_in(v, out)),
        Value::Object(m) => m.values().for_each(|v| key_ids_in(v, out)),
        _ => {}
    }
}

/// Seals the listed fields of `event` (strings, and strings inside arrays).
pub fn seal_event_with(
    key: &SecretKey,
    key_id: StreamId,
    event_id: Uuid,
    event: &CaseEvent,
) -> Result<CaseEvent, SealError> {
    let fields = sealed_fields(event.type_name());
    if fields.is_empty() {
        return Ok(event.clone());
    }
    let mut data = event.data_json();
    let Value::Object(map) = &mut data else {
        return Ok(event.clone());
    };
    for f in fields {
        if let Some(v) = map.get_mut(*f) {
            seal_value(key, key_id, event_id, f, v)?;
        }
    }
    if let CaseEvent::EntryCorrected(_) = event {
        if let Some(Value::Object(changes)) = map.get_mut("changes") {
            for (k, v) in changes.iter_mut() {
                if sealed_anywhere(k) {
                    seal_value(key, key_id, event_id, &format!("changes.{k}"), v)?;
                }
            }
        }
    }
    CaseEvent::from_type_and_data(event.type_name(), data).map_err(|e| SealError::Seal {
        field: event.type_name().to_string(),
        what: e.to_string(),
    })
}

fn seal_value(
    key: &SecretKey,
    key_id: StreamId,
    event_id: Uuid,
    field: &str,
    v: &mut Value,
) -> Result<(), SealError> {
    match v {
        Value::String(s) => *s = seal_text(key, key_id, event_id, field, s)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::String(s) = item {
                    *s = seal_text(key, key_id, event_id, &format!("{field}[{i}]"), s)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `event` with every sealed field opened (or replaced by the erasure text).
pub fn unseal_event(
    event: &CaseEvent,
    resolve: &mut dyn FnMut(StreamId) -> KeyState,
) -> Result<CaseEvent, SealError> {
    let mut data = event.data_json();
    let mut before = Vec::new();
    key_ids_in(&data, &mut before);
    if before.is_empty() {
        return Ok(event.clone());
    }
    unseal_json(&mut data, resolve);
    CaseEvent::from_type_and_data(event.type_name(), data).map_err(|e| SealError::Seal {
        field: event.type_name().to_string(),
        what: e.to_string(),
    })
}

/// The data keys of one school, in `keys/<school>/` of the store directory.
///
/// New keys are kept in memory until [`Keyring::commit`] writes them, so a
/// refused import leaves no key file behind.
pub struct Keyring {
    dir: PathBuf,
    school: String,
    master: SecretKey,
    loaded: Mutex<HashMap<StreamId, SecretKey>>,
    pending: Mutex<HashMap<StreamId, SecretKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("dir", &self.dir).finish()
    }
}

/// The key directory of `school` under a store directory.
pub fn keys_dir(store_dir: &Path, school: &str) -> PathBuf {
    store_dir.join("keys").join(school)
}

/// fsync of a directory, so a created or removed name is durable.
fn sync_dir(dir: &Path) -> Result<(), SealError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SealError::io(dir, e))
}

impl Keyring {
    pub fn open(store_dir: &Path, school: &str, master: SecretKey) -> Keyring {
        Keyring {
            dir: keys_dir(store_dir, school),
            school: school.to_string(),
            master,
            loaded: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn key_path(&self, key_id: StreamId) -> PathBuf {
        self.dir.join(format!("{key_id}.key"))
    }

    fn wrap_ad(&self, key_id: StreamId) -> Vec<u8> {
        format!("casebook key v1\0{}\0{key_id}", self.school).into_bytes()
    }

    /// The key of `key_id`: loaded, pending, or read from its file.
    /// `Ok(None)` when there is no key file.
    pub fn get(&self, key_id: StreamId) -> Result<Option<SecretKey>, SealError> {
        if let Some(k) = lock(&self.loaded).get(&key_id) {
            return Ok(Some(k.clone()));
        }
        if let Some(k) = lock(&self.pending).get(&key_id) {
            return Ok(Some(k.clone()));
        }
        let path = self.key_path(key_id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SealError::io(&path, e)),
        };
        if bytes.len() != KEY_FILE_LEN || &bytes[..4] != KEY_FILE_MAGIC {
            return Err(SealError::io(&path, "not a casebook key file"));
        }
        let pt = self
            .master
            .cipher()
            .decrypt(
                Nonce::from_slice(&bytes[4..16]),
                Payload {
                    msg: &bytes[16..],
                    aad: &self.wrap_ad(key_id),
                },
            )
            .map_err(|_| SealError::WrongMasterKey {
                path: path.display().to_string(),
            })?;
        let arr: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| SealError::io(&path, "wrapped key is not 32 bytes"))?;
        let key = SecretKey(arr);
        lock(&self.loaded).insert(key_id, key.clone());
        Ok(Some(key))
    }

    /// The key of `key_id`, creating one (pending until [`Self::commit`]).
    pub fn get_or_create(&self, key_id: StreamId) -> Result<SecretKey, SealError> {
        if let Some(k) = self.get(key_id)? {
            return Ok(k);
        }
        let key = SecretKey::random()?;
        lock(&self.pending).insert(key_id, key.clone());
        Ok(key)
    }

    /// Adds a key received from elsewhere (a transfer); pending until commit.
    pub fn install(&self, key_id: StreamId, key: SecretKey) {
        lock(&self.pending).insert(key_id, key);
    }

    /// Writes every pending key to its file (file and directory fsynced).
    /// All files are written before any is fsynced, so one journal commit
    /// can carry many of them (a demo or import creates hundreds at once).
    pub fn commit(&self) -> Result<(), SealError> {
        let pending: Vec<(StreamId, SecretKey)> = lock(&self.pending).drain().collect();
        if pending.is_empty() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(|e| SealError::io(&self.dir, e))?;
        let mut written = Vec::with_capacity(pending.len());
        for (key_id, key) in &pending {
            let path = self.key_path(*key_id);
            let mut nonce = [0u8; 12];
            getrandom::getrandom(&mut nonce).map_err(|e| SealError::io(&path, e))?;
            let wrapped = self
                .master
                .cipher()
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: key.bytes(),
                        aad: &self.wrap_ad(*key_id),
                    },
                )
                .map_err(|e| SealError::io(&path, e))?;
            let mut bytes = Vec::with_capacity(KEY_FILE_LEN);
            bytes.extend_from_slice(KEY_FILE_MAGIC);
            bytes.extend_from_slice(&nonce);
            bytes.extend_from_slice(&wrapped);
            let tmp = path.with_extension("key.tmp");
            let mut f = fs::File::create(&tmp).map_err(|e| SealError::io(&tmp, e))?;
            f.write_all(&bytes).map_err(|e| SealError::io(&tmp, e))?;
            written.push((f, tmp, path));
        }
        for (f, tmp, _) in &written {
            f.sync_all().map_err(|e| SealError::io(tmp, e))?;
        }
        for (_, tmp, path) in &written {
            fs::rename(tmp, path).map_err(|e| SealError::io(path, e))?;
        }
        let mut loaded = lock(&self.loaded);
        for (key_id, key) in pending {
            loaded.insert(key_id, key);
        }
        drop(loaded);
        sync_dir(&self.dir)
    }

    /// Destroys the key of `key_id`: overwrites its file with zeros, fsyncs,
    /// removes it and fsyncs the directory. Returns whether a file existed.
    pub fn destroy(&self, key_id: StreamId) -> Result<bool, SealError> {
        lock(&self.loaded).remove(&key_id);
        lock(&self.pending).remove(&key_id);
        let path = self.key_path(key_id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len() as usize,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(SealError::io(&path, e)),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| SealError::io(&path, e))?;
        f.write_all(&vec![0u8; len])
            .and_then(|_| f.sync_all())
            .map_err(|e| SealError::io(&path, e))?;
        drop(f);
        fs::remove_file(&path).map_err(|e| SealError::io(&path, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-insert; the
    // map itself is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PayloadSealer for Keyring {
    fn seal_event(
        &self,
        key_id: StreamId,
        event_id: Uuid,
        event: &CaseEvent,
    ) -> Result<CaseEvent, SealError> {
        if sealed_fields(event.type_name()).is_empty() {
            return Ok(event.clone());
        }
        let key = self.get_or_create(key_id)?;
        seal_event_with(&key, key_id, event_id, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{IncidentRecorded, IncidentRole};

    fn incident(text: &str) -> CaseEvent {
        CaseEvent::IncidentRecorded(IncidentRecorded {
            category: "disruption".into(),
            severity: 2,
            location: "corridor".into(),
            description: text.into(),
            role: IncidentRole::Perpetrator,
            participants: vec![],
            class: None,
            site: None,
        })
    }

    #[test]
    fn sealed_field_opens_with_its_key_only_and_is_deterministic() {
        let key = SecretKey::from_bytes([7; 32]);
        let other = SecretKey::from_bytes([8; 32]);
        let sid = StreamId::for_pupil("s", "P1");
        let eid = Uuid::from_u128(1);
        let sealed = seal_event_with(&key, sid, eid, &incident("pushed in the queue")).unwrap();
        let again = seal_event_with(&key, sid, eid, &incident("pushed in the queue")).unwrap();
        assert_eq!(sealed, again);
        let CaseEvent::IncidentRecorded(i) = &sealed else {
            panic!("type changed")
        };
        assert!(is_sealed(&i.description));
        assert_eq!(i.category, "disruption");
        let opened = unseal_event(&sealed, &mut |_| KeyState::Key(key.clone())).unwrap();
        assert_eq!(opened, incident("pushed in the queue"));
        let wrong = unseal_event(&sealed, &mut |_| KeyState::Key(other.clone())).unwrap();
        assert_ne!(wrong, incident("pushed in the queue"));
        let erased = unseal_event(&sealed, &mut |_| KeyState::Erased("[erased]".into())).unwrap();
        assert_eq!(erased, incident("[erased]"));
    }

    #[test]
    fn embedded_and_cut_sealed_fields_are_replaced() {
        let key = SecretKey::from_bytes([9; 32]);
        let sid = StreamId::for_pupil("s", "P1");
        let s = seal_text(&key, sid, Uuid::from_u128(2), "f", "hello").unwrap();
        let line = format!("Incident: {s} (target)");
        let out = unseal_text(&line, &mut |_| KeyState::Key(key.clone()));
        assert_eq!(out, "Incident: hello (target)");
        let cut = format!("Incident: {}…", &s[..30]);
        assert_eq!(
            unseal_text(&cut, &mut |_| KeyState::Key(key.clone())),
            "Incident: [sealed]"
        );
    }

    #[test]
    fn key_files_round_trip_and_are_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), "s", SecretKey::from_bytes([1; 32]));
        let sid = StreamId::for_pupil("s", "P1");
        let k = ring.get_or_create(sid).unwrap();
        assert!(!ring.key_path(sid).exists(), "pending until commit");
        ring.commit().unwrap();
        let again = Keyring::open(dir.path(), "s", SecretKey::from_bytes([1; 32]));
        assert_eq!(again.get(sid).unwrap().unwrap().bytes(), k.bytes());
        let wrong = Keyring::open(dir.path(), "s", SecretKey::from_bytes([2; 32]));
        assert!(matches!(
            wrong.get(sid),
            Err(SealError::WrongMasterKey { .. })
        ));
        assert!(again.destroy(sid).unwrap());
        assert!(!again.key_path(sid).exists());
        assert!(again.get(sid).unwrap().is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_text_seals_and_opens_back(text in "\\PC{0,200}", k in proptest::array::uniform32(0u8..), ev in 0u128..) {
            let key = SecretKey::from_bytes(k);
            let sid = StreamId::for_pupil("s", "P1");
            let sealed = seal_text(&key, sid, Uuid::from_u128(ev), "f", &text).unwrap();
            proptest::prop_assert!(is_sealed(&sealed));
            let opened = unseal_text(&sealed, &mut |_| KeyState::Key(key.clone()));
            if is_sealed(&text) {
                // Already-sealed text is left as it is.
                proptest::prop_assert_eq!(&sealed, &text);
            } else {
                proptest::prop_assert_eq!(opened, text);
            }
        }
    }

    #[test]
    fn master_key_parses_hex_and_base64() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(SecretKey::parse(&hex).unwrap().bytes()[31], 0xff);
        let b64 = STANDARD.encode([3u8; 32]);
        assert_eq!(SecretKey::parse(&b64).unwrap().bytes(), &[3u8; 32]);
        assert!(SecretKey::parse("short").is_err());
    }
}
