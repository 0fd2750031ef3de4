//! Privacy commands and plumbing: the store's keyrings (crypto-shredding,
//! `casebook_engine::seal`), reading sealed records, `erase`, `hold`,
//! `retention` and the subject-access `export`. Transfers are in
//! `transfer.rs`. Policy and sources: docs/security.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use casebook_engine::access::View;
use casebook_engine::domain::CaseState;
use casebook_engine::envelope::{encode_payload, EventRef, StoredEvent, StreamId};
use casebook_engine::event::{CaseEvent, LegalHoldApplied, LegalHoldLifted, PupilErased};
use casebook_engine::import::{ImportLine, Planner};
use casebook_engine::seal::{self, KeyState, Keyring, SecretKey};
use casebook_engine::store::{
    read_whole_stream, AppendRequest, Appended, CheckpointWriter, EventStore, Head, Presealed,
    StreamVisitor, VerifyReport,
};
use casebook_engine::{RecordedEvent, StoreError};
use casebook_projections::retention::{Due, RULES};
use casebook_projections::{Retention, Targets};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::render::html_escape;
use crate::run::Ctx;
use crate::{Failure, Format};

/// Environment variable holding the master key itself (hex or base64).
pub const MASTER_KEY_ENV: &str = "CASEBOOK_MASTER_KEY";

/// The master key's source and the keyrings opened with it (in `Ctx`).
#[derive(Debug, Default)]
pub(crate) struct Sealing {
    key_file: Option<PathBuf>,
    master: Option<SecretKey>,
    loaded: bool,
    rings: HashMap<String, Arc<Keyring>>,
}

impl Sealing {
    pub fn new(key_file: Option<PathBuf>) -> Sealing {
        Sealing {
            key_file,
            ..Sealing::default()
        }
    }

    fn master(&mut self) -> Result<Option<SecretKey>, Failure> {
        if !self.loaded {
            self.loaded = true;
            self.master = match (&self.key_file, std::env::var(MASTER_KEY_ENV)) {
                (Some(path), _) => Some(
                    SecretKey::from_file(path)
                        .map_err(|e| Failure::BadInput(format!("--key-file: {e}")))?,
                ),
                (None, Ok(text)) if !text.trim().is_empty() => Some(
                    SecretKey::parse(&text)
                        .map_err(|e| Failure::BadInput(format!("{MASTER_KEY_ENV}: {e}")))?,
                ),
                _ => None,
            };
        }
        Ok(self.master.clone())
    }
}

/// The actions of this module that the access matrix decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrivacyAction {
    Erase,
    Hold,
    Retention,
    RetentionApply,
    Export,
    TransferOut,
    TransferIn,
}

impl PrivacyAction {
    pub fn command(self) -> &'static str {
        match self {
            PrivacyAction::Erase => "erase",
            PrivacyAction::Hold => "hold",
            PrivacyAction::Retention => "retention",
            PrivacyAction::RetentionApply => "retention --apply",
            PrivacyAction::Export => "export",
            PrivacyAction::TransferOut => "transfer-out",
            PrivacyAction::TransferIn => "transfer-in",
        }
    }
}

/// The actor of a privacy command (erase, hold, retention, export,
/// transfer-out, transfer-in). The role matrix has already been applied by
/// the hook every command passes (`staff::check_command`: `Action::Erase`,
/// `Retention`, `Transfer`; `Export` when the record is read); these
/// commands also need a named actor even in single-user mode, because what
/// they do must say who did it.
pub(crate) fn permitted(ctx: &Ctx, action: PrivacyAction) -> Result<String, Failure> {
    let actor = ctx.require_actor(action.command())?;
    Ok(actor)
}

impl Ctx {
    /// The keyring of `school`, when a master key is configured.
    pub(crate) fn keyring(&mut self, school: &str) -> Result<Option<Arc<Keyring>>, Failure> {
        if let Some(r) = self.sealing.rings.get(school) {
            return Ok(Some(r.clone()));
        }
        let Some(master) = self.sealing.master()? else {
            return Ok(None);
        };
        let dir = self.key_root()?;
        let ring = Arc::new(Keyring::open(&dir, school, master));
        self.sealing.rings.insert(school.to_string(), ring.clone());
        Ok(Some(ring))
    }

    /// The keyring to seal new events of `school` with: `None` for a store
    /// that keeps personal data in the clear (no master key, no key
    /// directory); refused when the store seals but no master key is given.
    pub(crate) fn sealer(&mut self, school: &str) -> Result<Option<Arc<Keyring>>, Failure> {
        if let Some(r) = self.keyring(school)? {
            return Ok(Some(r));
        }
        let dir = seal::keys_dir(&self.key_root()?, school);
        let sealed = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".key") && name != crate::transfer::SIGNING_KEY_FILE
            })
        });
        if sealed {
            return Err(Failure::BadInput(format!(
                "this store seals personal data ({} exists) but no master key is configured: pass --key-file FILE or set {MASTER_KEY_ENV}",
                dir.display()
            )));
        }
        Ok(None)
    }
}

/// Writes the keys a planner created, before its events are appended.
pub(crate) fn commit_keys(ring: &Option<Arc<Keyring>>) -> Result<(), Failure> {
    match ring {
        Some(r) => r
            .commit()
            .map_err(|e| Failure::Store(format!("cannot store a data key: {e}"))),
        None => Ok(()),
    }
}

/// What a reader shows in place of the fields of an erased record.
pub(crate) fn erased_text(at: DateTime<Utc>, reason: &str) -> String {
    format!("[erased on {}: {reason}]", at.date_naive())
}

/// Resolves the keys named in `key_ids`: the key, or how it was erased
/// (from a `PupilErased` in `hint` or in the stream named by the key).
async fn resolve_keys(
    ring: Option<&Keyring>,
    log: &dyn EventStore,
    key_ids: &[StreamId],
    hint: Option<&[StoredEvent]>,
) -> Result<HashMap<StreamId, KeyState>, StoreError> {
    let mut out = HashMap::new();
    for &id in key_ids {
        let state = match ring.map(|r| r.get(id)) {
            Some(Ok(Some(k))) => KeyState::Key(k),
            Some(Err(e)) => {
                return Err(StoreError::Corrupt {
                    location: "key store".into(),
                    what: e.to_string(),
                })
            }
            _ => {
                let erased = match hint.and_then(find_erasure) {
                    Some(t) => Some(t),
                    None => find_erasure(&read_whole_stream(log, id).await?),
                };
                match erased {
                    Some(t) => KeyState::Erased(t),
                    None => KeyState::Unavailable,
                }
            }
        };
        out.insert(id, state);
    }
    Ok(out)
}

/// The erasure text of a stream holding a `PupilErased`.
fn find_erasure(events: &[StoredEvent]) -> Option<String> {
    events.iter().rev().find_map(|s| {
        if s.event_type != "PupilErased" {
            return None;
        }
        match s.case_event() {
            Ok(CaseEvent::PupilErased(e)) => Some(erased_text(s.occurred_at, &e.reason)),
            _ => None,
        }
    })
}

/// Where [`seal::SEALED_PREFIX`]'s first `:` is (a prefix without one
/// does not compile: `may_hold_sealed` passes over payloads without one).
const PREFIX_COLON: usize = {
    let prefix = seal::SEALED_PREFIX.as_bytes();
    let mut i = 0;
    while prefix[i] != b':' {
        i += 1;
    }
    i
};

/// Whether `payload` may hold a sealed field: it holds the bytes of
/// [`seal::SEALED_PREFIX`].
fn may_hold_sealed(payload: &[u8]) -> bool {
    // Most payloads (every register mark's) hold no `:`, which the prefix
    // holds: a byte search passes them over for a fifth of what the
    // substring search's set-up took (3% of a timeline).
    let Some(colon) = memchr::memchr(b':', payload) else {
        return false;
    };
    // Else a substring search built once (every read of a pupil scans each
    // payload: a window-by-window compare was a tenth of a timeline's
    // read), from the earliest place the prefix can start: its first `:`
    // is at or after the payload's first.
    let from = colon.saturating_sub(PREFIX_COLON);
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER
        .get_or_init(|| memchr::memmem::Finder::new(seal::SEALED_PREFIX.as_bytes()))
        .find(&payload[from..])
        .is_some()
}

fn key_ids_of(events: &[StoredEvent]) -> Vec<StreamId> {
    let mut ids = Vec::new();
    for s in events.iter().filter(|s| may_hold_sealed(&s.payload)) {
        if let Ok(e) = s.case_event() {
            seal::key_ids_in(&e.data_json(), &mut ids);
        }
    }
    ids
}

/// `events` with their sealed fields opened (or shown as erased). The
/// payload is re-encoded in the clear; hashes are left as stored (these
/// copies are for display only and never written).
async fn unseal_events(
    ring: Option<&Keyring>,
    log: &dyn EventStore,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>, StoreError> {
    // A sealed field is a MessagePack string holding `sealed:v1:`, so its
    // bytes are in the payload as they are: a payload without them holds no
    // sealed field and need not be decoded (the per-pupil readers' hot path).
    if !events.iter().any(|s| may_hold_sealed(&s.payload)) {
        return Ok(events);
    }
    let ids = key_ids_of(&events);
    if ids.is_empty() {
        return Ok(events);
    }
    let keys = resolve_keys(ring, log, &ids, Some(&events)).await?;
    let mut resolve = |id: StreamId| keys.get(&id).cloned().unwrap_or(KeyState::Unavailable);
    let mut out = Vec::with_capacity(events.len());
    for mut s in events {
        if let Ok(e) = s.case_event() {
            if let Ok(opened) = seal::unseal_event(&e, &mut resolve) {
                if opened != e {
                    if let Ok(bytes) = encode_payload(&opened) {
                        s.payload = bytes;
                        s.schema = casebook_engine::event::CURRENT_SCHEMA;
                    }
                }
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// A log whose reads return events with sealed fields opened: what the
/// per-pupil readers (timeline, audit, export) fold. Appends pass through.
/// Never used for checkpointed views, whose snapshots must hold only
/// ciphertext.
pub(crate) struct Unsealed {
    inner: Arc<dyn EventStore>,
    ring: Option<Arc<Keyring>>,
}

/// The log of `school` for a per-pupil reader.
pub(crate) async fn reader(
    ctx: &mut Ctx,
    log: Arc<dyn EventStore>,
) -> Result<Arc<dyn EventStore>, Failure> {
    let school = ctx.school.clone();
    let ring = ctx.keyring(&school)?;
    Ok(Arc::new(Unsealed { inner: log, ring }))
}

/// The per-pupil reader of `log` with the keyring `ring` (none: sealed
/// fields show as unavailable). `casebook bench` reads through it.
pub(crate) fn reader_with_ring(
    log: Arc<dyn EventStore>,
    ring: Option<Arc<Keyring>>,
) -> Arc<dyn EventStore> {
    Arc::new(Unsealed { inner: log, ring })
}

/// Opens the sealed fields of a school-wide view's document before it is
/// printed.
pub(crate) async fn unseal_doc(
    ctx: &mut Ctx,
    log: &dyn EventStore,
    doc: &mut Value,
) -> Result<(), Failure> {
    let mut ids = Vec::new();
    seal::key_ids_in(doc, &mut ids);
    if ids.is_empty() {
        return Ok(());
    }
    let school = ctx.school.clone();
    let ring = ctx.keyring(&school)?;
    let keys = resolve_keys(ring.as_deref(), log, &ids, None).await?;
    seal::unseal_json(doc, &mut |id| {
        keys.get(&id).cloned().unwrap_or(KeyState::Unavailable)
    });
    Ok(())
}

/// The visitor of [`Unsealed::visit_stream`]: passes events on until the
/// first that may hold a sealed field, then keeps an owned copy of that one
/// and every one after it, to be unsealed and passed on once the read is
/// done (opening a field may need an async key-ring or log read).
struct ClearOnly<'v> {
    visit: &'v mut dyn StreamVisitor,
    /// The events from the first that may hold a sealed field on.
    rest: Vec<StoredEvent>,
}

impl StreamVisitor for ClearOnly<'_> {
    fn expect(&mut self, events: usize) {
        self.visit.expect(events);
    }

    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError> {
        if !self.rest.is_empty() || may_hold_sealed(event.payload) {
            self.rest.push(event.to_stored());
            return Ok(());
        }
        self.visit.visit(event)
    }
}

#[async_trait]
impl EventStore for Unsealed {
    async fn append_atomic(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.inner.append_atomic(requests).await
    }

    async fn append_presealed(&self, presealed: Presealed) -> Result<Vec<Appended>, StoreError> {
        self.inner.append_presealed(presealed).await
    }

    async fn append_atomic_minted(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.inner.append_atomic_minted(requests).await
    }

    fn seals_ahead(&self) -> bool {
        self.inner.seals_ahead()
    }

    fn expect_appends(&self, events: u64) {
        self.inner.expect_appends(events)
    }

    async fn will_read_streams(&self, streams: &[StreamId]) -> Result<(), StoreError> {
        self.inner.will_read_streams(streams).await
    }

    async fn will_read_streams_from(&self, streams: &[(StreamId, u64)]) -> Result<(), StoreError> {
        self.inner.will_read_streams_from(streams).await
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.inner.read_stream(stream, from_version, max).await?;
        unseal_events(self.ring.as_deref(), self.inner.as_ref(), events).await
    }

    /// The inner log's events as they are while none may hold a sealed
    /// field (the hot path: no owned copy); from the first that may, owned
    /// copies of the rest of the page, unsealed as
    /// [`EventRef::to_stored`] + [`EventStore::read_stream`]'s unsealing
    /// would give them (an event without a sealed field is unchanged by
    /// unsealing). The page is read once.
    async fn visit_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
        visit: &mut dyn StreamVisitor,
    ) -> Result<usize, StoreError> {
        let mut clear = ClearOnly {
            visit: &mut *visit,
            rest: Vec::new(),
        };
        let seen = self
            .inner
            .visit_stream(stream, from_version, max, &mut clear)
            .await?;
        let rest = std::mem::take(&mut clear.rest);
        if rest.is_empty() {
            return Ok(seen);
        }
        let rest = unseal_events(self.ring.as_deref(), self.inner.as_ref(), rest).await?;
        for s in &rest {
            visit.visit(&s.as_event_ref())?;
        }
        Ok(seen)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.inner.read_all(from_position, max).await?;
        unseal_events(self.ring.as_deref(), self.inner.as_ref(), events).await
    }

    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        match self.inner.find_event(event_id).await? {
            Some(e) => Ok(
                unseal_events(self.ring.as_deref(), self.inner.as_ref(), vec![e])
                    .await?
                    .pop(),
            ),
            None => Ok(None),
        }
    }

    /// Positions only: nothing to unseal.
    async fn positions_in_streams(
        &self,
        wanted: &[casebook_engine::store::InStream],
    ) -> Result<std::collections::HashMap<Uuid, u64>, StoreError> {
        self.inner.positions_in_streams(wanted).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    async fn load_checkpoint(&self, _name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // Checkpoints hold ciphertext only: a reader of opened events
        // neither loads nor saves them.
        Ok(None)
    }

    async fn save_checkpoint(&self, _name: &str, _bytes: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn save_checkpoint_with(
        &self,
        _name: &str,
        _size_hint: usize,
        _write: CheckpointWriter<'_>,
    ) -> Result<(), StoreError> {
        // Nothing is saved, so nothing is encoded.
        Ok(())
    }

    async fn clear_checkpoints(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        self.inner.verify(progress).await
    }
}

/// Reads and folds a pupil's case stream; refuses an unknown pupil.
pub(crate) async fn case_of(
    log: &dyn EventStore,
    school: &str,
    pupil: &str,
) -> Result<(Vec<StoredEvent>, CaseState), Failure> {
    let events = read_whole_stream(log, StreamId::for_pupil(school, pupil)).await?;
    if events.is_empty() {
        return Err(Failure::BadInput(format!(
            "no pupil {pupil:?} in school {school:?}"
        )));
    }
    let mut state = CaseState::new();
    for s in &events {
        let r = RecordedEvent::from_stored(s).map_err(|e| {
            Failure::Store(format!(
                "position {}: cannot decode the payload: {e}",
                s.position
            ))
        })?;
        state.apply(r.event_id, &r.event);
    }
    Ok((events, state))
}

/// Records one event on a pupil's case through the import planner (the
/// domain rules apply) and returns where it landed.
pub(crate) async fn record_one(
    ctx: &mut Ctx,
    log: &dyn EventStore,
    pupil: &str,
    actor: &str,
    event: CaseEvent,
) -> Result<Appended, Failure> {
    let school = ctx.school.clone();
    let ring = ctx.sealer(&school)?;
    let plan = {
        let mut planner = Planner::new(log, &school, ctx.now);
        if let Some(r) = &ring {
            planner = planner.with_sealer(r.as_ref());
        }
        planner
            .add(ImportLine {
                line: 1,
                pupil: pupil.to_string(),
                occurred_at: ctx.now,
                actor: actor.to_string(),
                id: None,
                school: None,
                event,
            })
            .await
            .map_err(|e| {
                let text = e.to_string();
                let text = text.strip_prefix("line 1: ").unwrap_or(&text).to_string();
                if e.is_store_failure() {
                    Failure::Store(text)
                } else {
                    Failure::BadInput(text)
                }
            })?;
        planner.finish()
    };
    commit_keys(&ring)?;
    // Its id minted by the planner (the line has none): appended as such
    // (`ImportPlan::append_to`), so that a command opened reading only
    // does not read the stored ids.
    let mut done = plan.append_to(log).await?;
    done.pop()
        .ok_or_else(|| Failure::Store("the append returned nothing".into()))
}

/// Fields stored in the clear that sealing would protect: written before a
/// master key was configured, so erasure cannot remove them.
fn clear_fields(events: &[StoredEvent]) -> usize {
    let mut n = 0;
    for s in events {
        let Ok(e) = s.case_event() else { continue };
        let data = e.data_json();
        for f in seal::sealed_fields(e.type_name()) {
            match data.get(*f) {
                Some(Value::String(t)) if !t.is_empty() && !seal::is_sealed(t) => n += 1,
                Some(Value::Array(items)) => {
                    n += items
                        .iter()
                        .filter(|v| v.as_str().is_some_and(|t| !seal::is_sealed(t)))
                        .count()
                }
                _ => {}
            }
        }
    }
    n
}

/// The key ids a pupil's record uses: its own stream's, and any received
/// with a transfer.
fn key_ids_for(stream: StreamId, events: &[StoredEvent]) -> Vec<Uuid> {
    let mut ids = vec![stream.0];
    for s in events {
        if let Ok(CaseEvent::TransferredIn(t)) = s.case_event() {
            if let Some(k) = t.key_id {
                if !ids.contains(&k) {
                    ids.push(k);
                }
            }
        }
    }
    ids
}

/// Erases one pupil: records `PupilErased`, then destroys their keys.
/// Returns the number of key files destroyed.
async fn erase_one(
    ctx: &mut Ctx,
    log: &dyn EventStore,
    pupil: &str,
    actor: &str,
    reason: &str,
) -> Result<(usize, bool), Failure> {
    let school = ctx.school.clone();
    let Some(ring) = ctx.keyring(&school)? else {
        return Err(Failure::BadInput(
            "erase needs a sealed store: without a master key (--key-file or CASEBOOK_MASTER_KEY) personal data is stored in the clear and cannot be shredded (docs/security.md)".into(),
        ));
    };
    let (events, state) = case_of(log, &school, pupil).await?;
    let stream = StreamId::for_pupil(&school, pupil);
    let key_ids = key_ids_for(stream, &events);
    let already = state.is_erased();
    if !already {
        let clear = clear_fields(&events);
        if clear > 0 {
            eprintln!(
                "warning: {clear} personal-data field(s) of {pupil} were recorded before sealing was configured and stay readable; see docs/security.md"
            );
        }
        record_one(
            ctx,
            log,
            pupil,
            actor,
            CaseEvent::PupilErased(PupilErased {
                reason: reason.to_string(),
                key_ids: key_ids.clone(),
            }),
        )
        .await?;
    }
    let mut destroyed = 0;
    for id in key_ids {
        if ring
            .destroy(StreamId(id))
            .map_err(|e| Failure::Store(format!("cannot destroy a data key: {e}")))?
        {
            destroyed += 1;
        }
    }
    Ok((destroyed, already))
}

pub(crate) async fn erase(ctx: &mut Ctx, pupil: &str, reason: &str) -> Result<(), Failure> {
    let actor = permitted(ctx, PrivacyAction::Erase)?;
    let log = ctx.log(None)?;
    let (destroyed, already) = erase_one(ctx, log.as_ref(), pupil, &actor, reason).await?;
    if already {
        println!("{pupil} was already erased; {destroyed} remaining key file(s) destroyed");
    } else {
        println!(
            "erased {pupil}: PupilErased recorded, {destroyed} data key(s) destroyed; the record's sealed fields can no longer be read"
        );
    }
    Ok(())
}

pub(crate) async fn hold(
    ctx: &mut Ctx,
    pupil: &str,
    reason: &str,
    lift: bool,
) -> Result<(), Failure> {
    let actor = permitted(ctx, PrivacyAction::Hold)?;
    let log = ctx.log(None)?;
    let reason = reason.to_string();
    let event = if lift {
        CaseEvent::LegalHoldLifted(LegalHoldLifted { reason })
    } else {
        CaseEvent::LegalHoldApplied(LegalHoldApplied { reason })
    };
    let done = record_one(ctx, log.as_ref(), pupil, &actor, event).await?;
    println!(
        "{} for {pupil} (position {})",
        if lift {
            "legal hold lifted"
        } else {
            "legal hold applied: the record cannot be erased until it is lifted"
        },
        done.last_position
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------

/// `None` when `pupil`'s own stream, folded through the retention view
/// alone, says their record is due on `today`; else what it says instead.
async fn status_now(
    log: &dyn EventStore,
    school: &str,
    pupil: &str,
    today: chrono::NaiveDate,
) -> Result<Option<&'static str>, Failure> {
    let events = casebook_projections::read_pupil(log, school, pupil)
        .await
        .map_err(crate::views::projection_failure)?;
    let mut own = Retention::default();
    casebook_projections::fold_in(&mut own, &events, &Targets::of(&events));
    let status = own
        .report(today)
        .into_iter()
        .find(|d| d.pupil == pupil)
        .map_or("not registered", |d| d.status);
    Ok((status != "due").then_some(status))
}

pub(crate) async fn retention(ctx: &mut Ctx, apply: bool) -> Result<(), Failure> {
    let format = ctx.formats("retention", &[Format::Text, Format::Json])?;
    let actor = permitted(
        ctx,
        if apply {
            PrivacyAction::RetentionApply
        } else {
            PrivacyAction::Retention
        },
    )?;
    let log = ctx.log(None)?;
    let today = ctx.today;
    // The retention view, from its checkpoint and the events since.
    let list = crate::views::school_view::<Retention>(&log)
        .await?
        .report(today);
    let ended: Vec<&Due> = list
        .iter()
        .filter(|d| d.status == "due" || d.status == "held")
        .collect();
    let mut erased = Vec::new();
    if apply {
        for d in ended.iter().filter(|d| d.status == "due") {
            // Erasure cannot be undone: the view's word (its checkpoint
            // folded events as the rules of its day classed them) is
            // checked against the pupil's own record, folded now.
            if let Some(status) = status_now(log.as_ref(), &ctx.school, &d.pupil, today).await? {
                eprintln!(
                    "note: {} not erased: their record, read again, says {status}, not due (run `casebook rebuild retention`)",
                    d.pupil
                );
                continue;
            }
            let rule = d
                .ends
                .iter()
                .max_by_key(|(_, e)| *e)
                .map(|(r, _)| *r)
                .unwrap_or("pupil record");
            let reason = format!("retention period ended ({rule}, DOB + years; IRMS toolkit)");
            erase_one(ctx, log.as_ref(), &d.pupil, &actor, &reason).await?;
            erased.push(d.pupil.clone());
        }
    }
    if format == Format::Json {
        let doc = json!({
            "today": today,
            "rules": RULES.iter().map(|r| json!({"record": r.record, "years_after_birth": r.years, "source": r.source})).collect::<Vec<_>>(),
            "pupils": ended.iter().map(|d| json!({
                "pupil": d.pupil,
                "date_of_birth": d.date_of_birth,
                "retention_ends": d.end,
                "by_record_type": d.ends.iter().map(|(r, e)| json!({"record": r, "ends": e})).collect::<Vec<_>>(),
                "status": d.status,
            })).collect::<Vec<_>>(),
            "erased": erased,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Failure::Store(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "Retention ended on or before {today}: {} pupil(s) ({} under a legal hold)\n",
        ended.len(),
        ended.iter().filter(|d| d.status == "held").count()
    );
    println!(
        "{:<16} {:<10} {:<10} {:<8} by record type",
        "pupil", "born", "ends", "status"
    );
    for d in &ended {
        let types: Vec<String> = d.ends.iter().map(|(r, e)| format!("{r} {e}")).collect();
        println!(
            "{:<16} {:<10} {:<10} {:<8} {}",
            d.pupil,
            d.date_of_birth,
            d.end,
            d.status,
            types.join(", ")
        );
    }
    if apply {
        println!(
            "\nerased {} pupil(s); held records were left as they are",
            erased.len()
        );
    } else if ended.iter().any(|d| d.status == "due") {
        println!("\nrun with --apply to erase the records marked due");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Subject-access export
// ---------------------------------------------------------------------------

/// One redaction in an export's manifest.
struct Redaction {
    event: Uuid,
    event_type: String,
    field: String,
    reason: &'static str,
}

const OTHER_PUPIL: &str = "[another pupil]";
const REASON_OTHER_PUPIL: &str =
    "third party: another pupil involved in the incident (UK GDPR: withheld without consent)";
const REASON_OTHER_NAME: &str = "third party: another pupil's name or reference in the text";
const REASON_MEETING: &str =
    "third party: meeting participant (may be another pupil or family member)";
const REASON_SAFEGUARDING_STAFF: &str =
    "staff named in a safeguarding entry: withheld by policy (docs/security.md)";

/// Replaces each of `needles` (word-bounded, case-insensitive) in `text`.
fn redact_words(text: &str, needles: &[String]) -> Option<String> {
    let mut out = text.to_string();
    let mut changed = false;
    for n in needles {
        if n.chars().count() < 3 {
            continue;
        }
        let lower_n = n.to_ascii_lowercase();
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        loop {
            // ASCII case-folding keeps byte offsets; names are compared
            // case-insensitively in ASCII.
            let Some(at) = rest.to_ascii_lowercase().find(&lower_n) else {
                result.push_str(rest);
                break;
            };
            let end = at + n.len();
            let before_ok =
                !matches!(rest[..at].chars().next_back(), Some(c) if c.is_alphanumeric());
            let after_ok = !matches!(rest[end..].chars().next(), Some(c) if c.is_alphanumeric());
            result.push_str(&rest[..at]);
            if before_ok && after_ok {
                result.push_str(OTHER_PUPIL);
                changed = true;
            } else {
                result.push_str(&rest[at..end]);
            }
            rest = &rest[end..];
        }
        out = result;
    }
    changed.then_some(out)
}

fn redact_strings(value: &mut Value, path: &str, needles: &[String], hits: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Some(r) = redact_words(s, needles) {
                *s = r;
                hits.push(path.to_string());
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                redact_strings(v, &format!("{path}[{i}]"), needles, hits);
            }
        }
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                redact_strings(v, &p, needles, hits);
            }
        }
        _ => {}
    }
}

pub(crate) async fn export(
    ctx: &mut Ctx,
    pupil: &str,
    purpose: Option<String>,
) -> Result<(), Failure> {
    // JSON unless HTML is asked for (text has no export form).
    let format = ctx.formats("export", &[Format::Text, Format::Json, Format::Html])?;
    let _actor = permitted(ctx, PrivacyAction::Export)?;
    let school = ctx.school.clone();
    let raw = ctx.log(None)?;
    let log = reader(ctx, raw.clone()).await?;
    let (events, _) = case_of(log.as_ref(), &school, pupil).await?;
    // The access check and the access log: refused (and logged) unless the
    // actor may export this pupil's record.
    {
        let now = ctx.now;
        let session = crate::staff::session(ctx)?;
        session
            .guarded
            .read_pupil(&session.actor, pupil, View::Export, purpose, now)
            .await
            .map_err(crate::staff::access_failure)?;
    }
    let decoded: Vec<(StoredEvent, CaseEvent)> = events
        .into_iter()
        .filter_map(|s| s.case_event().ok().map(|e| (s, e)))
        .collect();
    // Other pupils named in this record's incidents: their references and
    // registered names are withheld everywhere in the export.
    let mut others: Vec<String> = Vec::new();
    for (_, e) in &decoded {
        if let CaseEvent::IncidentRecorded(i) = e {
            for p in &i.participants {
                if !others.contains(&p.pupil) {
                    others.push(p.pupil.clone());
                }
            }
        }
    }
    let mut needles: Vec<String> = Vec::new();
    for other in &others {
        needles.push(other.clone());
        let first = log
            .read_stream(StreamId::for_pupil(&school, other), 1, 1)
            .await?;
        if let Some(Ok(CaseEvent::PupilRegistered(r))) = first.first().map(|s| s.case_event()) {
            if !r.name.starts_with('[') {
                needles.push(r.name.clone());
                needles.extend(r.name.split_whitespace().map(str::to_string));
            }
        }
    }
    // Longest first, so a full name is replaced before its parts.
    needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    needles.dedup();
    let mut redactions = Vec::new();
    let mut entries = Vec::new();
    for (s, e) in &decoded {
        let mut data = e.data_json();
        let mut recorded_by = Value::String(s.actor.clone());
        let mut note = |field: String, reason| {
            redactions.push(Redaction {
                event: s.event_id,
                event_type: s.event_type.clone(),
                field,
                reason,
            })
        };
        match e {
            CaseEvent::IncidentRecorded(i) => {
                if let Some(Value::Array(ps)) = data.get_mut("participants") {
                    for (n, p) in ps.iter_mut().enumerate() {
                        p["pupil"] = Value::String(OTHER_PUPIL.into());
                        note(format!("data.participants[{n}].pupil"), REASON_OTHER_PUPIL);
                    }
                }
                let _ = i;
            }
            CaseEvent::RestorativeMeetingHeld(_) | CaseEvent::ReintegrationMeetingHeld(_) => {
                let key = if matches!(e, CaseEvent::RestorativeMeetingHeld(_)) {
                    "participants"
                } else {
                    "attendees"
                };
                if let Some(Value::Array(ps)) = data.get_mut(key) {
                    for (n, p) in ps.iter_mut().enumerate() {
                        *p = Value::String("[participant]".into());
                        note(format!("data.{key}[{n}]"), REASON_MEETING);
                    }
                }
            }
            _ => {}
        }
        if e.is_safeguarding() {
            recorded_by = Value::String("[member of staff]".into());
            note("recorded_by".into(), REASON_SAFEGUARDING_STAFF);
            if let Some(to) = data.get_mut("to") {
                *to = Value::String("[member of staff]".into());
                note("data.to".into(), REASON_SAFEGUARDING_STAFF);
            }
        }
        let mut hits = Vec::new();
        redact_strings(&mut data, "data", &needles, &mut hits);
        for h in hits {
            note(h, REASON_OTHER_NAME);
        }
        entries.push(json!({
            "position": s.position,
            "event_id": s.event_id,
            "type": s.event_type,
            "occurred_at": s.occurred_at,
            "recorded_at": s.recorded_at,
            "recorded_by": recorded_by,
            "data": data,
        }));
    }
    let manifest: Vec<Value> = redactions
        .iter()
        .map(|r| json!({"event": r.event, "type": r.event_type, "field": r.field, "reason": r.reason}))
        .collect();
    let doc = json!({
        "export": "subject access",
        "school": school,
        "pupil": pupil,
        "generated_at": ctx.now,
        "entries": entries,
        "redactions": manifest,
    });
    match format {
        Format::Html => print!("{}", export_html(&doc)),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Failure::Store(e.to_string()))?
        ),
    }
    Ok(())
}

fn export_html(doc: &Value) -> String {
    let s = |v: &Value| html_escape(&crate::render::cell(v));
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Subject access export</title></head><body>\n");
    out.push_str(&format!(
        "<h1>Subject access export: {}</h1>\n<p>School {}; generated {}.</p>\n",
        s(&doc["pupil"]),
        s(&doc["school"]),
        s(&doc["generated_at"])
    ));
    out.push_str("<table border=\"1\"><tr><th>occurred</th><th>recorded</th><th>by</th><th>type</th><th>details</th></tr>\n");
    for e in doc["entries"].as_array().into_iter().flatten() {
        let mut details = String::new();
        if let Value::Object(m) = &e["data"] {
            for (k, v) in m {
                details.push_str(&format!("<b>{}</b>: {}<br>", html_escape(k), s(v)));
            }
        }
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{details}</td></tr>\n",
            s(&e["occurred_at"]),
            s(&e["recorded_at"]),
            s(&e["recorded_by"]),
            s(&e["type"])
        ));
    }
    out.push_str("</table>\n<h2>Redactions</h2>\n<table border=\"1\"><tr><th>entry</th><th>type</th><th>field</th><th>why</th></tr>\n");
    for r in doc["redactions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            s(&r["event"]),
            s(&r["type"]),
            s(&r["field"]),
            s(&r["reason"])
        ));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `visit_stream` hands over, owned.
    struct Collect(Vec<StoredEvent>);

    impl StreamVisitor for Collect {
        fn visit(&mut self, event: &EventRef<'_>) -> Result<(), StoreError> {
            self.0.push(event.to_stored());
            Ok(())
        }
    }

    /// The per-pupil reader's `visit_stream` hands over what its
    /// `read_stream` returns (sealed fields opened, or shown as
    /// unavailable without the key), page by page, whether the first event
    /// that may hold a sealed field comes first, in the middle or last.
    #[test]
    fn visited_events_are_read_events_with_sealed_fields_opened() {
        use casebook_engine::event::{CaseEvent, ConcernRaised, ParentContacted};
        use casebook_engine::store::segment::SegmentStore;
        use casebook_engine::store::{AppendRequest, ExpectedVersion};
        use casebook_engine::NewEvent;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let school = "default";
            let log = SegmentStore::open(&dir.path().join("store"), true)
                .unwrap()
                .log(school)
                .unwrap();
            let stream = StreamId::for_pupil(school, "P1");
            let key = SecretKey::from_bytes([7; 32]);
            let at: DateTime<Utc> = "2026-03-02T09:00:00Z".parse().unwrap();
            // Plain, sealed, plain, sealed, plain.
            for n in 0..5u32 {
                let mut new = if n % 2 == 1 {
                    let concern = CaseEvent::ConcernRaised(ConcernRaised {
                        category: "neglect".into(),
                        summary: format!("Arrives hungry {n}"),
                    });
                    NewEvent::new(&concern, at, "S001").unwrap()
                } else {
                    let call = CaseEvent::ParentContacted(ParentContacted {
                        method: "phone".into(),
                        summary: format!("Call {n}"),
                    });
                    NewEvent::new(&call, at, "S001").unwrap()
                };
                if n % 2 == 1 {
                    let e = casebook_engine::upcast::decode_payload(
                        &new.event_type,
                        new.schema,
                        &new.payload,
                    )
                    .unwrap();
                    let sealed = seal::seal_event_with(&key, stream, new.event_id, &e).unwrap();
                    new.payload = encode_payload(&sealed).unwrap();
                }
                log.append(AppendRequest {
                    stream,
                    expected: ExpectedVersion::Any,
                    events: vec![new],
                })
                .await
                .unwrap();
            }
            let ring = Arc::new(Keyring::open(
                dir.path(),
                school,
                SecretKey::from_bytes([9; 32]),
            ));
            ring.install(stream, key);
            for ring in [None, Some(ring.clone())] {
                let reader = reader_with_ring(log.clone(), ring.clone());
                let whole = read_whole_stream(reader.as_ref(), stream).await.unwrap();
                assert_eq!(whole.len(), 5);
                // The sealed summaries are not shown sealed.
                assert!(whole.iter().all(|s| !may_hold_sealed(&s.payload)));
                for max in 1..=6 {
                    for from in 1..=6 {
                        let mut seen = Collect(Vec::new());
                        let n = reader
                            .visit_stream(stream, from, max, &mut seen)
                            .await
                            .unwrap();
                        let read = reader.read_stream(stream, from, max).await.unwrap();
                        assert_eq!(n, read.len());
                        assert_eq!(
                            seen.0,
                            read,
                            "from {from}, max {max}, key {}",
                            ring.is_some()
                        );
                    }
                }
            }
            // With the key at hand, a page with sealed fields is read once:
            // no second read of the page to unseal it.
            let counted = Arc::new(crate::bench_timeline::AppendClock::new(log.clone()));
            let reader = reader_with_ring(counted.clone(), Some(ring));
            let mut seen = Collect(Vec::new());
            let n = reader.visit_stream(stream, 1, 10, &mut seen).await.unwrap();
            assert_eq!((n, seen.0.len()), (5, 5));
            assert!(seen.0.iter().all(|s| !may_hold_sealed(&s.payload)));
            assert_eq!(counted.page_reads(), 0);
        });
    }

    proptest! {
        /// The sealed-prefix search finds the prefix wherever a plain
        /// window-by-window compare does, and nowhere else.
        #[test]
        fn sealed_prefix_is_found_as_a_window_compare_finds_it(
            mut payload in proptest::collection::vec(any::<u8>(), 0..120),
            at in any::<proptest::sample::Index>(),
            cut in 0usize..=10,
            put in any::<bool>(),
            colon_at in any::<proptest::sample::Index>(),
            colon in any::<bool>(),
        ) {
            let prefix = seal::SEALED_PREFIX.as_bytes();
            if put {
                // The prefix (or its first `cut` bytes) somewhere inside.
                let i = at.index(payload.len() + 1);
                let part = &prefix[..prefix.len() - cut];
                payload.splice(i..i, part.iter().copied());
            }
            if colon {
                // A `:` anywhere, before the prefix, inside it or after.
                payload.insert(colon_at.index(payload.len() + 1), b':');
            }
            let reference = payload.windows(prefix.len()).any(|w| w == prefix);
            prop_assert_eq!(may_hold_sealed(&payload), reference);
        }
    }
}
