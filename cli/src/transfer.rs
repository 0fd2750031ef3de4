//! `transfer-out` / `transfer-in`: a pupil's case record moved to another
//! school as a signed bundle (KCSIE: the child-protection file goes to the
//! new school, separately and securely, within 5 school days).
//!
//! The bundle (JSON, format in docs/security.md) holds the pupil's stored
//! events byte for byte, a **statement** (sending and receiving school,
//! the pupil, each event's position, version and hash, the sending log's
//! head) signed with the school's Ed25519 key, a MAC of the statement under
//! a one-time **transfer key**, and — for a sealed record — the pupil's
//! data key wrapped by that transfer key. The transfer key is printed by
//! `transfer-out` and travels separately (phone, a second channel): the
//! bundle alone discloses nothing sealed, and only its holder can import.
//!
//! `transfer-in` checks everything before writing anything: the MAC, the
//! signature, every event's hash recomputed from its bytes, positions,
//! versions and the head; then it imports the events through the domain
//! rules with their original ids and records `TransferredIn` (provenance).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use casebook_engine::envelope::{chain_hash, hex, split_value, StoredEvent, StreamId};
use casebook_engine::event::{CaseEvent, TransferredIn, TransferredOut};
use casebook_engine::import::{ImportLine, Planner};
use casebook_engine::seal::SecretKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::privacy::{case_of, commit_keys, permitted, record_one, PrivacyAction};
use crate::run::Ctx;
use crate::Failure;

/// The school's signing key file, in `keys/<school>/` of the store.
pub(crate) const SIGNING_KEY_FILE: &str = "signing.key";
/// Format tag of a bundle.
const FORMAT: &str = "casebook-transfer-v1";
/// Domain separation of the signed message.
const SIGN_CONTEXT: &[u8] = b"casebook transfer v1\0";
/// Largest bundle read (a pupil's record with years of register marks is a
/// few MB).
const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;

/// The bundle file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    /// The statement's JSON text: signed and MACed exactly as these bytes.
    statement: String,
    /// Base64 of each event's stored bytes (`body ‖ hash`), stream order.
    events: Vec<String>,
    /// Base64 of the sender's Ed25519 public key (32 bytes).
    public_key: String,
    /// Base64 of the Ed25519 signature of `SIGN_CONTEXT ‖ statement`.
    signature: String,
    /// Hex keyed BLAKE3 of the statement under the transfer key.
    mac: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    bundle: Uuid,
    from_school: String,
    to_school: String,
    pupil: String,
    stream: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    head_position: u64,
    head_hash: String,
    events: Vec<EventProof>,
    /// The pupil's data key wrapped by the transfer key (sealed records).
    data_key: Option<WrappedKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventProof {
    position: u64,
    version: u64,
    prev_hash: String,
    hash: String,
}

impl EventProof {
    /// What the statement says of a stored event.
    fn of(e: &StoredEvent) -> EventProof {
        EventProof {
            position: e.position,
            version: e.version,
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedKey {
    key_id: Uuid,
    nonce: String,
    wrapped: String,
}

fn store_err(what: impl std::fmt::Display) -> Failure {
    Failure::Store(what.to_string())
}

/// The school's Ed25519 signing key, created on first use.
fn signing_key(ctx: &mut Ctx) -> Result<SigningKey, Failure> {
    let dir = casebook_engine::seal::keys_dir(&ctx.key_root()?, &ctx.school);
    let path = dir.join(SIGNING_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| store_err(format!("{}: not a 32-byte signing key", path.display())))?;
            Ok(SigningKey::from_bytes(&arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = SecretKey::random().map_err(store_err)?;
            std::fs::create_dir_all(&dir).map_err(store_err)?;
            write_private(&path, seed.bytes())?;
            Ok(SigningKey::from_bytes(seed.bytes()))
        }
        Err(e) => Err(store_err(format!("{}: {e}", path.display()))),
    }
}

/// Writes a secret file (mode 0600 on Unix), fsynced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| store_err(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| store_err(format!("{}: {e}", path.display())))
}

/// Hex BLAKE3 of a public key, first 16 bytes: what people compare.
fn fingerprint(key: &VerifyingKey) -> String {
    hex(blake3::hash(key.as_bytes()).as_bytes())[..32].to_string()
}

fn mac(transfer_key: &SecretKey, statement: &str) -> String {
    let k = blake3::derive_key("casebook 2026 transfer v1 mac", transfer_key.bytes());
    hex(blake3::keyed_hash(&k, statement.as_bytes()).as_bytes())
}

fn wrap_ad(stream: Uuid) -> Vec<u8> {
    format!("casebook transfer key v1\0{stream}").into_bytes()
}

pub(crate) async fn transfer_out(
    ctx: &mut Ctx,
    pupil: &str,
    to: &str,
    out: Option<PathBuf>,
) -> Result<(), Failure> {
    let actor = permitted(ctx, PrivacyAction::TransferOut)?;
    casebook_engine::store::sled::validate_school(to)
        .map_err(|e| Failure::BadInput(format!("--to: {e}")))?;
    let school = ctx.school.clone();
    let log = ctx.log(None)?;
    let (events, state) = case_of(log.as_ref(), &school, pupil).await?;
    if state.is_erased() {
        return Err(Failure::BadInput(format!(
            "{pupil} was erased; there is no record to transfer"
        )));
    }
    let head = log.head().await?;
    let stream = StreamId::for_pupil(&school, pupil);
    let transfer_key = SecretKey::random().map_err(store_err)?;
    let ring = ctx.sealer(&school)?;
    let data_key = match ring.as_ref().map(|r| r.get(stream)) {
        Some(Ok(Some(k))) => {
            let mut nonce = [0u8; 12];
            getrandom::getrandom(&mut nonce).map_err(store_err)?;
            let wrapped = ChaCha20Poly1305::new(Key::from_slice(transfer_key.bytes()))
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: k.bytes(),
                        aad: &wrap_ad(stream.0),
                    },
                )
                .map_err(store_err)?;
            Some(WrappedKey {
                key_id: stream.0,
                nonce: B64.encode(nonce),
                wrapped: B64.encode(wrapped),
            })
        }
        Some(Err(e)) => return Err(store_err(e)),
        _ => None,
    };
    let bundle_id = Uuid::now_v7();
    let statement = Statement {
        bundle: bundle_id,
        from_school: school.clone(),
        to_school: to.to_string(),
        pupil: pupil.to_string(),
        stream: stream.0,
        created_at: ctx.now,
        head_position: head.position,
        head_hash: hex(&head.hash),
        events: events.iter().map(EventProof::of).collect(),
        data_key,
    };
    let signer = signing_key(ctx)?;
    let bundle = seal_bundle(&statement, &events, &signer, &transfer_key)?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{pupil}-to-{to}.cbt.json")));
    let text = serde_json::to_vec_pretty(&bundle).map_err(store_err)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Failure::BadInput(format!("cannot write {}: {e}", path.display())))?;
    // Recorded once the bundle exists: the sender's record notes the date.
    let done = record_one(
        ctx,
        log.as_ref(),
        pupil,
        &actor,
        CaseEvent::TransferredOut(TransferredOut {
            to: to.to_string(),
            bundle: bundle_id,
        }),
    )
    .await?;
    println!(
        "wrote {} ({} events of {pupil}, signed at head position {})",
        path.display(),
        events.len(),
        head.position
    );
    println!(
        "signer fingerprint: {}",
        fingerprint(&signer.verifying_key())
    );
    println!(
        "transfer key (send it separately, not with the bundle): {}",
        hex(transfer_key.bytes())
    );
    println!(
        "TransferredOut recorded at position {}; KCSIE: the new school should have the file within 5 school days — ask them to confirm receipt",
        done.last_position
    );
    Ok(())
}

/// Signs `statement` and MACs it under the transfer key: the bundle
/// `transfer-out` writes.
fn seal_bundle(
    statement: &Statement,
    events: &[StoredEvent],
    signer: &SigningKey,
    transfer_key: &SecretKey,
) -> Result<Bundle, Failure> {
    let statement = serde_json::to_string(statement).map_err(store_err)?;
    let mut message = SIGN_CONTEXT.to_vec();
    message.extend_from_slice(statement.as_bytes());
    let signature = signer.sign(&message);
    Ok(Bundle {
        format: FORMAT.to_string(),
        mac: mac(transfer_key, &statement),
        statement,
        events: events
            .iter()
            .map(|e| e.encode().map(|b| B64.encode(b)))
            .collect::<Result<_, _>>()
            .map_err(store_err)?,
        public_key: B64.encode(signer.verifying_key().as_bytes()),
        signature: B64.encode(signature.to_bytes()),
    })
}

/// A bundle whose MAC, signature, event hashes, positions, versions and
/// head all checked out.
struct Opened {
    statement: Statement,
    signer: VerifyingKey,
    events: Vec<StoredEvent>,
    data_key: Option<(StreamId, SecretKey)>,
}

/// Checks a bundle's bytes completely, addressed to `school`, before
/// anything is written. Every refusal names what failed; no input panics
/// (fuzzed in the tests below).
fn open_bundle(bytes: &[u8], transfer_key: &SecretKey, school: &str) -> Result<Opened, Failure> {
    let bundle: Bundle =
        serde_json::from_slice(bytes).map_err(|e| refused(format!("not a bundle: {e}")))?;
    if bundle.format != FORMAT {
        return Err(refused(format!(
            "format {:?}, expected {FORMAT:?}",
            bundle.format
        )));
    }
    // 1. The MAC: the bundle was made by whoever holds the transfer key.
    if mac(transfer_key, &bundle.statement) != bundle.mac {
        return Err(refused(
            "the statement's MAC does not match (altered statement, or the wrong transfer key)",
        ));
    }
    // 2. The signature of the sending school.
    let pk: [u8; 32] = B64
        .decode(&bundle.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| refused("public_key is not 32 bytes of base64"))?;
    let vk =
        VerifyingKey::from_bytes(&pk).map_err(|_| refused("public_key is not an Ed25519 key"))?;
    let sig: [u8; 64] = B64
        .decode(&bundle.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| refused("signature is not 64 bytes of base64"))?;
    let mut message = SIGN_CONTEXT.to_vec();
    message.extend_from_slice(bundle.statement.as_bytes());
    vk.verify_strict(&message, &Signature::from_bytes(&sig))
        .map_err(|_| refused("the signature does not verify"))?;
    let st: Statement =
        serde_json::from_str(&bundle.statement).map_err(|e| refused(format!("statement: {e}")))?;
    if st.to_school != school {
        return Err(refused(format!(
            "it is addressed to school {:?}, not {:?}",
            st.to_school, school
        )));
    }
    // 3. The events: each one's hash recomputed from its bytes and matched
    // to the signed statement; versions gapless from 1; positions rising
    // up to the signed head.
    if st.events.len() != bundle.events.len() || st.events.is_empty() {
        return Err(refused(format!(
            "the statement lists {} events, the bundle carries {}",
            st.events.len(),
            bundle.events.len()
        )));
    }
    let mut stored = Vec::with_capacity(bundle.events.len());
    let mut last_position = 0;
    for (i, (b64, proof)) in bundle.events.iter().zip(&st.events).enumerate() {
        let n = i + 1;
        let raw = B64
            .decode(b64)
            .map_err(|_| refused(format!("event {n}: not base64")))?;
        let (body, tail) = split_value(&raw).map_err(|e| refused(format!("event {n}: {e}")))?;
        let event = StoredEvent::decode(&raw).map_err(|e| refused(format!("event {n}: {e}")))?;
        let recomputed = chain_hash(&event.prev_hash, body);
        if recomputed != tail || hex(&recomputed) != proof.hash {
            return Err(refused(format!(
                "event {n} (position {}): its hash does not match its bytes and the signed statement",
                proof.position
            )));
        }
        if event.position != proof.position
            || event.version != proof.version
            || hex(&event.prev_hash) != proof.prev_hash
            || event.stream.0 != st.stream
            || event.version != n as u64
            || event.position <= last_position
            || event.position > st.head_position
        {
            return Err(refused(format!(
                "event {n}: position, version or stream differ from the signed statement"
            )));
        }
        if event.position == st.head_position && hex(&event.hash) != st.head_hash {
            return Err(refused("the last event is the head but its hash differs"));
        }
        last_position = event.position;
        stored.push(event);
    }
    // 4. The data key, if the record is sealed.
    let data_key = match &st.data_key {
        None => None,
        Some(w) => {
            let nonce: [u8; 12] = B64
                .decode(&w.nonce)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| refused("data_key.nonce is not 12 bytes"))?;
            let wrapped = B64
                .decode(&w.wrapped)
                .map_err(|_| refused("data_key.wrapped is not base64"))?;
            let key = ChaCha20Poly1305::new(Key::from_slice(transfer_key.bytes()))
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &wrapped,
                        aad: &wrap_ad(w.key_id),
                    },
                )
                .map_err(|_| refused("the data key does not open with the transfer key"))?;
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| refused("the data key is not 32 bytes"))?;
            Some((StreamId(w.key_id), SecretKey::from_bytes(key)))
        }
    };
    Ok(Opened {
        statement: st,
        signer: vk,
        events: stored,
        data_key,
    })
}

fn refused(what: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!(
        "transfer bundle refused: {what}; nothing was written"
    ))
}

pub(crate) async fn transfer_in(
    ctx: &mut Ctx,
    bundle_path: &Path,
    transfer_key: Option<String>,
    pupil: Option<String>,
) -> Result<(), Failure> {
    let actor = permitted(ctx, PrivacyAction::TransferIn)?;
    let Some(transfer_key) = transfer_key else {
        return Err(Failure::BadInput(
            "transfer-in needs --transfer-key (or CASEBOOK_TRANSFER_KEY): the key transfer-out printed".into(),
        ));
    };
    let transfer_key = SecretKey::parse(&transfer_key)
        .map_err(|_| Failure::BadInput("--transfer-key: expected 64 hex digits".into()))?;
    let meta = std::fs::metadata(bundle_path)
        .map_err(|e| Failure::BadInput(format!("cannot open {}: {e}", bundle_path.display())))?;
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(refused(format!("{} bytes is over the limit", meta.len())));
    }
    let bytes = std::fs::read(bundle_path)
        .map_err(|e| Failure::BadInput(format!("cannot read {}: {e}", bundle_path.display())))?;
    let Opened {
        statement: st,
        signer: vk,
        events: stored,
        data_key,
    } = open_bundle(&bytes, &transfer_key, &ctx.school)?;
    let school = ctx.school.clone();
    // 5. Import through the domain rules, with the original ids.
    ctx.store(true)?;
    let ring = ctx.sealer(&school)?;
    if data_key.is_some() && ring.is_none() {
        return Err(Failure::BadInput(
            "the transferred record is sealed: this store needs a master key (--key-file or CASEBOOK_MASTER_KEY) to keep it sealed".into(),
        ));
    }
    let local = pupil.unwrap_or_else(|| st.pupil.clone());
    let log = ctx.log(None)?;
    if log
        .stream_version(StreamId::for_pupil(&school, &local))
        .await?
        > 0
    {
        return Err(Failure::BadInput(format!(
            "pupil {local:?} already has a record in school {school:?}; pass --pupil NEWREF"
        )));
    }
    let key_id = data_key.as_ref().map(|(id, _)| id.0);
    if let (Some(r), Some((id, key))) = (&ring, data_key) {
        r.install(id, key);
    }
    let plan = {
        let mut planner = Planner::new(log.as_ref(), &school, ctx.now);
        if let Some(r) = &ring {
            planner = planner.with_sealer(r.as_ref());
        }
        let mut lines: Vec<ImportLine> = Vec::with_capacity(stored.len() + 1);
        for (i, s) in stored.iter().enumerate() {
            let mut event = s
                .case_event()
                .map_err(|e| refused(format!("event {}: payload: {e}", i + 1)))?;
            if let CaseEvent::PupilRegistered(p) = &mut event {
                p.pupil = local.clone();
            }
            lines.push(ImportLine {
                line: i + 1,
                pupil: local.clone(),
                occurred_at: s.occurred_at,
                actor: s.actor.clone(),
                id: Some(s.event_id),
                school: None,
                event,
            });
        }
        lines.push(ImportLine {
            line: stored.len() + 1,
            pupil: local.clone(),
            occurred_at: ctx.now,
            actor: actor.clone(),
            id: None,
            school: None,
            event: CaseEvent::TransferredIn(TransferredIn {
                from: st.from_school.clone(),
                from_pupil: st.pupil.clone(),
                head_position: st.head_position,
                head_hash: st.head_hash.clone(),
                signer: fingerprint(&vk),
                events: stored.len() as u64,
                key_id,
            }),
        });
        for l in lines {
            planner
                .add(l)
                .await
                .map_err(|e| refused(format!("event {e}")))?;
        }
        planner.finish()
    };
    commit_keys(&ring)?;
    let done = log.append_atomic(plan.requests).await?;
    let last = done.last().map(|d| d.last_position).unwrap_or(0);
    println!(
        "imported {} events of {} from school {:?} as {local}; signature and chain proof verified",
        stored.len(),
        st.pupil,
        st.from_school
    );
    println!(
        "signer fingerprint: {} (check it with the sending school); their head: position {} hash {}",
        fingerprint(&vk),
        st.head_position,
        st.head_hash
    );
    println!("TransferredIn recorded at position {last}");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! `open_bundle` against altered bundles: no input panics, and a bundle
    //! that opens carries exactly the events and statement that were signed.
    use super::*;
    use casebook_engine::envelope::{NewEvent, GENESIS_HASH};
    use casebook_engine::event::ParentContacted;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const TO: &str = "urn-200002";

    struct Fixture {
        bytes: Vec<u8>,
        transfer_key: SecretKey,
        events: Vec<Vec<u8>>,
        statement: String,
    }

    /// A pupil's three events in a log where another pupil's event sits
    /// between them, signed by a fixed key.
    fn fixture() -> Fixture {
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        let pupil = StreamId::for_pupil("urn-100001", "P0001");
        let other = StreamId::for_pupil("urn-100001", "P0002");
        let mut prev = GENESIS_HASH;
        let mut mine = Vec::new();
        let mut version = 0;
        for (position, stream) in [pupil, other, pupil, pupil].into_iter().enumerate() {
            let event = CaseEvent::ParentContacted(ParentContacted {
                method: "phone".into(),
                summary: format!("call {position}"),
            });
            let new = NewEvent::new(&event, at, "S017").unwrap();
            let v = if stream == pupil {
                version += 1;
                version
            } else {
                1
            };
            let (sealed, _) =
                StoredEvent::seal(&new, stream, position as u64 + 1, v, at, prev).unwrap();
            prev = sealed.hash;
            if stream == pupil {
                mine.push(sealed);
            }
        }
        let statement = Statement {
            bundle: Uuid::nil(),
            from_school: "urn-100001".into(),
            to_school: TO.into(),
            pupil: "P0001".into(),
            stream: pupil.0,
            created_at: at,
            head_position: 4,
            head_hash: hex(&prev),
            events: mine.iter().map(EventProof::of).collect(),
            data_key: None,
        };
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let transfer_key = SecretKey::from_bytes([9u8; 32]);
        let bundle = seal_bundle(&statement, &mine, &signer, &transfer_key).unwrap();
        Fixture {
            bytes: serde_json::to_vec_pretty(&bundle).unwrap(),
            transfer_key,
            events: mine.iter().map(|e| e.encode().unwrap()).collect(),
            statement: bundle.statement,
        }
    }

    fn opened_equals_signed(opened: &Opened, f: &Fixture) -> bool {
        serde_json::to_string(&opened.statement).unwrap() == f.statement
            && opened.events.len() == f.events.len()
            && opened
                .events
                .iter()
                .zip(&f.events)
                .all(|(e, b)| &e.encode().unwrap() == b)
    }

    #[test]
    fn the_untouched_bundle_opens_and_the_wrong_school_or_key_is_refused() {
        let f = fixture();
        let opened = open_bundle(&f.bytes, &f.transfer_key, TO).unwrap_or_else(|_| panic!());
        assert!(opened_equals_signed(&opened, &f));
        let wrong_key = SecretKey::from_bytes([8u8; 32]);
        for (key, school) in [(&wrong_key, TO), (&f.transfer_key, "urn-300003")] {
            match open_bundle(&f.bytes, key, school) {
                Err(Failure::BadInput(m)) => assert!(m.contains("refused"), "{m}"),
                _ => panic!("an altered bundle opened"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("CASEBOOK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]

        /// Byte edits anywhere in the bundle: a refusal, or (when the edit
        /// is meaningless, such as JSON whitespace) exactly what was signed.
        #[test]
        fn an_altered_bundle_is_refused_or_unchanged(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4)
        ) {
            let f = fixture();
            let mut bytes = f.bytes.clone();
            for (i, b) in &edits {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            if let Ok(opened) = open_bundle(&bytes, &f.transfer_key, TO) {
                prop_assert!(opened_equals_signed(&opened, &f));
            }
        }

        /// Arbitrary bytes and truncations never panic.
        #[test]
        fn any_bytes_are_refused_without_a_panic(
            cut in any::<proptest::sample::Index>(),
            noise in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let f = fixture();
            let mut bytes = f.bytes[..cut.index(f.bytes.len())].to_vec();
            bytes.extend(noise);
            if let Ok(opened) = open_bundle(&bytes, &f.transfer_key, TO) {
                prop_assert!(opened_equals_signed(&opened, &f));
            }
        }
    }
}
