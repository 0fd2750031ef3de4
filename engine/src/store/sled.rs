//! The embedded backend: one sled tree per school log, prefixed keys, one
//! writer thread per log doing group commit.
//!
//! Key layout (byte for byte in docs/storage.md):
//!
//! | key | value |
//! | --- | --- |
//! | `e` position(u64 BE) | stored event: envelope body `||` hash |
//! | `s` stream(16) version(u64 BE) | position (u64 BE) |
//! | `i` event_id(16) | position (u64 BE) |
//! | `mhead` | head position (u64 BE) `||` head hash (32) `||` recorded_at µs (i64 BE) |
//! | `c` name | projection checkpoint (opaque bytes) |
//!
//! Every append writes its `e`, `s`, `i` entries and `mhead` in one sled
//! `Batch`, so a crash leaves all of a group's entries or none, and then
//! flushes before acknowledging: sled only flushes on its own every 500 ms.
//!
//! Architecture Invariant: exactly one writer per log per process (the
//! `SledStore` hands out one `SledLog` per school), and sled's file lock
//! keeps other processes out. Positions, versions and the chain are assigned
//! only on the writer thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use super::{Commit, Committed, GroupStage, Reply};
use uuid::Uuid;

mod copy_in;

use super::{
    AppendRequest, Appended, ChainVerifier, EventStore, Head, VerifyReport, MAX_READ_PAGE,
};
use crate::envelope::{split_value, Hash, StoredEvent, StreamId, GENESIS_HASH};
use crate::error::StoreError;

/// On-disk format written by this build. Bumped when the key layout or the
/// envelope encoding changes; a store with a newer format is refused.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the format version in sled's default tree.
const FORMAT_KEY: &[u8] = b"casebook/format";
/// Tree name prefix of a school's log.
const LOG_TREE_PREFIX: &str = "log/";

/// How many events one group commit gathers at most from separate appends,
/// and the batch size callers should use for bulk writes. A single larger
/// append (an import) is still one group of its own.
///
/// Why 1,024 and not more: sled holds one epoch guard for a whole `Batch`,
/// so every B-tree node copied while applying it stays allocated until the
/// batch ends. Peak memory therefore grows with the batch: measured with
/// `casebook bench` at 100k events, 8,192-event batches peaked at 915 MB
/// RSS, 1,024-event batches at 268 MB, at no loss of import throughput
/// (docs/performance.md).
pub const MAX_GROUP_EVENTS: usize = 1_024;

/// Pending appends waiting for the writer. Bounded so that a flood of
/// writers meets back-pressure instead of growing memory.
pub const MAX_PENDING_COMMITS: usize = 1_024;

/// sled page cache. sled's default (1 GiB) is far more than a school needs
/// and shows up as resident memory.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// sled's page cache for this process: [`CACHE_BYTES`], or
/// `CASEBOOK_SLED_CACHE_MB` megabytes when that is set to a number (a
/// memory-for-latency knob measured in docs/performance.md).
pub fn cache_bytes() -> u64 {
    std::env::var("CASEBOOK_SLED_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|mb| mb.saturating_mul(1024 * 1024))
        .unwrap_or(CACHE_BYTES)
}

/// Longest school id: it becomes part of a tree name and of stream ids.
pub const MAX_SCHOOL_ID_LEN: usize = 64;

/// An embedded casebook store: a directory holding any number of school logs.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    logs: Mutex<HashMap<String, Arc<SledLog>>>,
    /// Held (flock) for as long as this store or any of its logs is open.
    lock: Arc<ProcessLock>,
}

impl SledStore {
    /// Opens the store at `dir`, creating it when `create` is true.
    pub fn open(dir: &Path, create: bool) -> Result<Arc<SledStore>, StoreError> {
        let path_text = dir.display().to_string();
        if !create && !dir.join("db").exists() {
            return Err(StoreError::Io {
                during: "open",
                source: format!(
                    "no casebook store at {path_text} (run `casebook init` or `casebook demo` first, or pass --data)"
                )
                .into(),
            });
        }
        if super::segment::is_segment_store(dir) {
            return Err(StoreError::Io {
                during: "open",
                source: format!(
                    "{path_text} holds a segment store, not a sled store; open it with the segment backend"
                )
                .into(),
            });
        }
        if create {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create store", e))?;
        }
        let lock = Arc::new(ProcessLock::acquire(dir)?);
        // sled panics on some damaged files instead of returning an error;
        // a damaged store must be an error (exit 3), never a crash.
        let config = sled::Config::new().path(dir).cache_capacity(cache_bytes());
        let open = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(
                |panic| StoreError::Corrupt {
                    location: sled_files(dir),
                    what: format!(
                        "sled cannot read its files ({}); restore from a backup",
                        panic_text(&panic)
                    ),
                },
            )
        };
        // The process lock is ours, so sled's own lock can only be held by
        // a handle of this process that is letting go of it: sled's
        // background threads keep its files open for a moment after its
        // last handle is dropped (a reopen in the same process failed so
        // under load). Waited for as the process lock waits for a handle
        // released here.
        let db = released_here(
            || open()?.map_err(|e| open_error(e, &path_text)),
            |e| matches!(e, StoreError::InUse { .. }),
        )?;
        match db.get(FORMAT_KEY).map_err(|e| StoreError::io("open", e))? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        location: format!("{path_text}: format key"),
                        what: format!("format version has {} bytes, expected 4", v.len()),
                    })?;
                if found > FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            None => {
                if watermarks_exist(dir) {
                    return Err(StoreError::Corrupt {
                        location: format!("{path_text}/db"),
                        what: "the store's data is gone (sled recovered an empty database) although it had acknowledged events; restore from a backup".into(),
                    });
                }
                let has_logs = db
                    .tree_names()
                    .iter()
                    .any(|n| n.starts_with(LOG_TREE_PREFIX.as_bytes()));
                if has_logs || !db.is_empty() {
                    return Err(StoreError::Corrupt {
                        location: path_text,
                        what: "this sled database has no casebook format marker (not a casebook store?)".into(),
                    });
                }
                std::fs::create_dir_all(dir.join(WATERMARK_DIR))
                    .map_err(|e| StoreError::io("init", e))?;
                db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| StoreError::io("init", e))?;
                db.flush().map_err(|e| StoreError::io("init", e))?;
            }
        }
        Ok(Arc::new(SledStore {
            db,
            path: dir.to_path_buf(),
            logs: Mutex::new(HashMap::new()),
            lock,
        }))
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log of `school`, created on first use. One `SledLog` (one
    /// writer) per school per process.
    pub fn log(&self, school: &str) -> Result<Arc<SledLog>, StoreError> {
        validate_school(school)?;
        let mut logs = self.logs.lock().map_err(|_| StoreError::WriterStopped)?;
        if let Some(log) = logs.get(school) {
            return Ok(log.clone());
        }
        let tree = self
            .db
            .open_tree(format!("{LOG_TREE_PREFIX}{school}"))
            .map_err(|e| StoreError::io("open log", e))?;
        let watermark = Watermark::open(&self.path, school)?;
        let sync = DataSync::open(&self.path)?;
        let log = Arc::new(SledLog::start(
            self.db.clone(),
            tree,
            school,
            watermark,
            sync,
            self.lock.clone(),
        )?);
        logs.insert(school.to_string(), log.clone());
        Ok(log)
    }

    /// The schools that have a log in this store.
    pub fn schools(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix(LOG_TREE_PREFIX)
                    .map(String::from)
            })
            .collect()
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(|e| StoreError::io("size", e))
    }
}

fn open_error(e: sled::Error, path: &str) -> StoreError {
    let text = e.to_string();
    if text.contains("could not acquire lock") {
        StoreError::InUse {
            path: path.to_string(),
            pid: None,
        }
    } else if matches!(
        e,
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_)
    ) || text.contains("crc")
    {
        StoreError::Corrupt {
            location: sled_files(Path::new(path)),
            what: text,
        }
    } else if crate::error::is_disk_full(&e) {
        StoreError::DiskFull { during: "open" }
    } else {
        StoreError::Corrupt {
            location: sled_files(Path::new(path)),
            what: format!("sled cannot open its files: {text}"),
        }
    }
}

/// Names sled's files in `dir` for an open error: sled does not say which
/// of its files it could not read, so the message lists them all.
fn sled_files(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == "db" || n == "conf" || n.starts_with("snap."))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    format!(
        "{} (sled's files {})",
        dir.display(),
        if names.is_empty() {
            "are missing".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// Name of the lock file in the store directory. It holds the pid of the
/// process that has the store open, and is locked with `flock` while it
/// is open, so a second process is told who holds the store.
pub const LOCK_FILE: &str = "casebook.lock";

/// The store's process lock (released when the file is closed, including
/// when the process dies). Shared with the segment backend.
pub(crate) struct ProcessLock {
    _file: std::fs::File,
    /// The store directory as registered in [`HELD`].
    key: std::path::PathBuf,
}

/// The store directories this process holds locks on. A second open of one
/// of them in the same process is refused at once; a lock found taken with
/// this process's own pid in the file, on a directory not in this set, was
/// just released here and is still held through a copy of its descriptor in
/// a child being spawned (between `fork` and `exec`), so it is retried.
static HELD: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// How long an open waits for a lock that this process released a moment
/// ago: the process lock (a spawning child's copy of the descriptor), and
/// then sled's own (its threads letting go of its files); up to twice this
/// in all.
const RELEASED_HERE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `attempt` until it succeeds, tried again every 5 ms for up to
/// [`RELEASED_HERE_WAIT`] while `ours` says its failure is a lock this
/// process is letting go of.
fn released_here<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    mut ours: impl FnMut(&E) -> bool,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    loop {
        match attempt() {
            Err(e) if ours(&e) && started.elapsed() < RELEASED_HERE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            done => return done,
        }
    }
}

impl ProcessLock {
    pub(crate) fn acquire(dir: &Path) -> Result<ProcessLock, StoreError> {
        use fs2::FileExt;
        use std::io::{Read, Seek, Write};
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open lock file", e))?;
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let in_use = |pid| StoreError::InUse {
            path: dir.display().to_string(),
            pid,
        };
        let me = std::process::id();
        let held_here = || HELD.lock().is_ok_and(|held| held.contains(&key));
        if held_here() {
            return Err(in_use(Some(me)));
        }
        // Taken by another process (the pid it wrote), or by this one a
        // moment ago and not held here any more: waited for.
        released_here(
            || {
                file.try_lock_exclusive().map_err(|_| {
                    let mut text = String::new();
                    let _ = file.seek(std::io::SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut text);
                    text.trim().parse().ok()
                })
            },
            |pid| *pid == Some(me) && !held_here(),
        )
        .map_err(in_use)?;
        // Best effort: the pid is only for the message above.
        let _ = file.set_len(0);
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = writeln!(file, "{me}");
        if let Ok(mut held) = HELD.lock() {
            held.push(key.clone());
        }
        Ok(ProcessLock { _file: file, key })
    }
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            if let Some(i) = held.iter().position(|k| *k == self.key) {
                held.swap_remove(i);
            }
        }
    }
}

/// sled's `flush` ends with `sync_file_range`, which makes the written data
/// durable but not the file's metadata (its size, when the log grew). An
/// `fdatasync` of sled's log file after every group's flush closes that gap
/// before anything is acknowledged.
struct DataSync {
    file: std::fs::File,
}

impl DataSync {
    fn open(dir: &Path) -> Result<DataSync, StoreError> {
        Ok(DataSync {
            file: open_data_file(dir)?,
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", e))
    }
}

/// Checks a school id: it names a tree and feeds stream ids.
pub fn validate_school(school: &str) -> Result<(), StoreError> {
    let bad = |what: &str| StoreError::InvalidSchool {
        school: school.to_string(),
        what: what.to_string(),
    };
    if school.is_empty() {
        return Err(bad("must not be empty"));
    }
    if school.len() > MAX_SCHOOL_ID_LEN {
        return Err(bad("longer than 64 characters"));
    }
    if !school
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

// ---- keys ------------------------------------------------------------

pub(crate) fn e_key(position: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

pub(crate) fn s_key(stream: StreamId, version: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = b's';
    k[1..17].copy_from_slice(stream.0.as_bytes());
    k[17..].copy_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn i_key(event_id: Uuid) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'i';
    k[1..].copy_from_slice(event_id.as_bytes());
    k
}

pub(crate) const HEAD_KEY: &[u8] = b"mhead";

fn c_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'c');
    k.extend_from_slice(name.as_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

pub(crate) fn encode_head(position: u64, hash: &Hash, recorded_us: i64) -> [u8; 48] {
    let mut v = [0u8; 48];
    v[..8].copy_from_slice(&position.to_be_bytes());
    v[8..40].copy_from_slice(hash);
    v[40..].copy_from_slice(&recorded_us.to_be_bytes());
    v
}

fn decode_head(v: &[u8]) -> Option<(u64, Hash, i64)> {
    if v.len() != 48 {
        return None;
    }
    let position = be_u64(&v[..8])?;
    let hash: Hash = v[8..40].try_into().ok()?;
    let recorded = i64::from_be_bytes(v[40..].try_into().ok()?);
    Some((position, hash, recorded))
}

/// sled's data file (`<dir>/db`), for the `fdatasync` after every flush.
///
/// Why: on Linux sled's `flush` ends with `sync_file_range`, which writes
/// the pages but neither the file's metadata (its grown size) nor the
/// drive's volatile cache. One `fdatasync` of the file after the flush makes
/// the group durable before it is acknowledged.
pub(crate) fn open_data_file(dir: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::File::open(dir.join("db")).map_err(|e| StoreError::io("open data file", e))
}

// ---- the watermark ------------------------------------------------------

/// Directory (inside the store) of the per-school head watermarks.
const WATERMARK_DIR: &str = "heads";
/// position (8) || hash (32) || first 8 bytes of BLAKE3 of those 40.
const WATERMARK_LEN: usize = 48;

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn watermarks_exist(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(WATERMARK_DIR))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The last acknowledged head of a log, kept in a small file outside sled.
///
/// Why: when sled finds damage while recovering its files, it can come back
/// with less than it had — even an empty tree — without an error. The
/// watermark remembers what was acknowledged, so such a store is refused on
/// open instead of being read (and extended) as if nothing happened.
///
/// It is overwritten in place with one 48-byte `pwrite` after every durable
/// commit, and never fsynced: after a power cut it may lag behind sled
/// (weaker detection, never a false alarm), but it cannot run ahead of it,
/// because it is written only after sled's flush returned.
struct Watermark {
    file: std::fs::File,
    path: PathBuf,
}

impl Watermark {
    fn open(store_dir: &Path, school: &str) -> Result<Watermark, StoreError> {
        let dir = store_dir.join(WATERMARK_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("open watermark", e))?;
        let path = dir.join(school);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open watermark", e))?;
        Ok(Watermark { file, path })
    }

    fn encode(position: u64, hash: &Hash) -> [u8; WATERMARK_LEN] {
        let mut v = [0u8; WATERMARK_LEN];
        v[..8].copy_from_slice(&position.to_be_bytes());
        v[8..40].copy_from_slice(hash);
        let sum = blake3::hash(&v[..40]);
        v[40..].copy_from_slice(&sum.as_bytes()[..8]);
        v
    }

    /// The recorded (position, hash), `None` for a new log.
    fn read(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        use std::io::Read;
        let mut bytes = Vec::new();
        (&self.file)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io("read watermark", e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let corrupt = || {
            StoreError::Corrupt {
            location: self.path.display().to_string(),
            what: "the head watermark is damaged; run `casebook verify` and compare its head with your records".into(),
        }
        };
        if bytes.len() != WATERMARK_LEN {
            return Err(corrupt());
        }
        let position = be_u64(&bytes[..8]).ok_or_else(corrupt)?;
        let hash: Hash = bytes[8..40].try_into().map_err(|_| corrupt())?;
        if Self::encode(position, &hash) != bytes.as_slice() {
            return Err(corrupt());
        }
        Ok(Some((position, hash)))
    }

    /// Refuses a log that ends before, or differs at, the last acknowledged
    /// position.
    fn check(&self, tree: &sled::Tree, school: &str, recovered: u64) -> Result<(), StoreError> {
        let Some((position, hash)) = self.read()? else {
            return Ok(());
        };
        if position == 0 {
            return Ok(());
        }
        let db_file = self
            .path
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("db").display().to_string())
            .unwrap_or_default();
        let lost = |what: String| StoreError::Corrupt {
            location: format!("{db_file} (log {school:?})"),
            what,
        };
        if recovered < position {
            return Err(lost(format!(
                "events have been lost: the log had acknowledged position {position} but now ends at {recovered}; restore from a backup"
            )));
        }
        let stored = tree
            .get(e_key(position))
            .map_err(|e| StoreError::io("open log", e))?;
        match stored.as_deref().map(split_value) {
            Some(Ok((_, h))) if h == hash => Ok(()),
            _ => Err(lost(format!(
                "the event at position {position} is not the one that was acknowledged there"
            ))),
        }
    }

    /// Records a durable head. A failure here loses nothing (the events are
    /// already durable); it only weakens the next open's check, so it is
    /// not turned into an append error.
    fn record(&self, position: u64, hash: &Hash) {
        use std::os::unix::fs::FileExt;
        let _ = self.file.write_all_at(&Self::encode(position, hash), 0);
    }
}

// ---- the log -----------------------------------------------------------

/// One school's log in a sled store.
pub struct SledLog {
    _lock: Arc<ProcessLock>,
    db: sled::Db,
    tree: sled::Tree,
    school: String,
    durable: Arc<AtomicU64>,
    head_rx: watch::Receiver<u64>,
    sender: Option<mpsc::Sender<Commit>>,
    writer: Option<JoinHandle<()>>,
}

impl SledLog {
    fn start(
        db: sled::Db,
        tree: sled::Tree,
        school: &str,
        watermark: Watermark,
        sync: DataSync,
        lock: Arc<ProcessLock>,
    ) -> Result<SledLog, StoreError> {
        let (position, hash, recorded_us) = recover_head(&tree, school)?;
        watermark.check(&tree, school, position)?;
        let durable = Arc::new(AtomicU64::new(position));
        let (head_tx, head_rx) = watch::channel(position);
        let (sender, receiver) = mpsc::channel(MAX_PENDING_COMMITS);
        let writer = Writer {
            db: db.clone(),
            tree: tree.clone(),
            position,
            hash,
            last_recorded_us: recorded_us,
            durable: durable.clone(),
            head_tx,
            watermark,
            sync,
        };
        let handle = std::thread::Builder::new()
            .name(format!("casebook-writer-{school}"))
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::io("start writer", e))?;
        Ok(SledLog {
            _lock: lock,
            db,
            tree,
            school: school.to_string(),
            durable,
            head_rx,
            sender: Some(sender),
            writer: Some(handle),
        })
    }

    /// The school this log belongs to.
    pub fn school(&self) -> &str {
        &self.school
    }

    /// The raw sled tree, for tests that tamper with the log and for the
    /// benchmark's raw-backend baseline. Writing through it bypasses every
    /// invariant of the engine.
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn durable_position(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn get_event(&self, position: u64) -> Result<Option<StoredEvent>, StoreError> {
        match self
            .tree
            .get(e_key(position))
            .map_err(|e| StoreError::io("read", e))?
        {
            None => Ok(None),
            Some(v) => decode_at(position, &v).map(Some),
        }
    }
}

fn decode_at(position: u64, value: &[u8]) -> Result<StoredEvent, StoreError> {
    let event = StoredEvent::decode(value).map_err(|e| StoreError::Corrupt {
        location: format!("position {position}"),
        what: e.to_string(),
    })?;
    if event.position != position {
        return Err(StoreError::Corrupt {
            location: format!("position {position}"),
            what: format!("event says it is position {}", event.position),
        });
    }
    Ok(event)
}

/// `positions` (ascending) cut into runs of consecutive positions.
fn consecutive_runs(positions: &[u64]) -> impl Iterator<Item = &[u64]> + '_ {
    let mut rest = positions;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = 1 + rest
            .windows(2)
            .take_while(|w| w[1] == w[0].wrapping_add(1))
            .count();
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// Reads the head on open and checks it against the last stored event, so a
/// damaged store is reported on open rather than extended.
fn recover_head(tree: &sled::Tree, school: &str) -> Result<(u64, Hash, i64), StoreError> {
    let location = || format!("log {school:?} head");
    let meta = tree
        .get(HEAD_KEY)
        .map_err(|e| StoreError::io("open log", e))?;
    let last = tree
        .scan_prefix(b"e")
        .next_back()
        .transpose()
        .map_err(|e| StoreError::io("open log", e))?;
    match (meta, last) {
        (None, None) => Ok((0, GENESIS_HASH, i64::MIN)),
        (Some(m), Some((k, v))) => {
            let (position, hash, recorded) =
                decode_head(&m).ok_or_else(|| StoreError::Corrupt {
                    location: location(),
                    what: "head record is malformed".into(),
                })?;
            let key_pos = be_u64(&k[1..]).unwrap_or(0);
            if key_pos != position {
                return Err(StoreError::Corrupt {
                    location: location(),
                    what: format!(
                        "head says position {position} but the last event is at {key_pos}"
                    ),
                });
            }
            let event = decode_at(key_pos, &v)?;
            if event.hash != hash {
                return Err(StoreError::Corrupt {
                    location: format!("position {key_pos}"),
                    what: "last event's hash differs from the head record".into(),
                });
            }
            Ok((position, hash, recorded))
        }
        (None, Some(_)) => Err(StoreError::Corrupt {
            location: location(),
            what: "events without a head record".into(),
        }),
        (Some(_), None) => Err(StoreError::Corrupt {
            location: location(),
            what: "head record without events".into(),
        }),
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        // Close the queue and wait for the writer, so that the sled lock is
        // released when the last handle goes and a reopen in the same
        // process succeeds.
        self.sender.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    position: u64,
    hash: Hash,
    last_recorded_us: i64,
    durable: Arc<AtomicU64>,
    head_tx: watch::Sender<u64>,
    watermark: Watermark,
    sync: DataSync,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Commit>) {
        let mut failed = false;
        while let Some(first) = receiver.blocking_recv() {
            if failed {
                first.reply.send(Err(StoreError::WriterStopped));
                continue;
            }
            let group = super::next_group(first, &mut receiver, MAX_GROUP_EVENTS);
            if !self.commit_group(group) {
                // A failed write or flush leaves sled's state uncertain (the
                // batch may or may not reach disk). Refuse further appends
                // until the store is reopened and its head recovered from
                // disk, rather than guess (cf. PostgreSQL's fsync handling).
                failed = true;
            }
        }
    }

    /// Stages, writes and flushes one group; false when the write or the
    /// flush failed (every staged append was answered with the error).
    fn commit_group(&mut self, group: Vec<Commit>) -> bool {
        let now_us = Utc::now().timestamp_micros();
        let recorded_us = now_us.max(self.last_recorded_us);
        let recorded_at =
            DateTime::<Utc>::from_timestamp_micros(recorded_us).unwrap_or_else(Utc::now);
        let mut stage = GroupStage::new(self.position, self.hash);
        let mut committed = SledCommitted { tree: &self.tree };
        let mut staged: Vec<(Reply, Vec<Appended>)> = Vec::new();
        for mut commit in group {
            match stage.stage(&mut commit.requests, &mut committed, recorded_at) {
                Ok(appended) => staged.push((commit.reply, appended)),
                Err(e) => {
                    commit.reply.send(Err(e));
                }
            }
        }
        if staged.is_empty() {
            return true;
        }
        let (position, hash) = (stage.position, stage.hash);
        let mut batch = sled::Batch::default();
        for sealed in &stage.sealed {
            let e = &sealed.event;
            batch.insert(&e_key(e.position), &stage.bytes[sealed.range.clone()]);
            batch.insert(&s_key(e.stream, e.version), &e.position.to_be_bytes());
            batch.insert(&i_key(e.event_id), &e.position.to_be_bytes());
        }
        batch.insert(HEAD_KEY, &encode_head(position, &hash, recorded_us)[..]);
        // sled can panic inside a write (e.g. on ENOSPC in its I/O
        // buffers); that must become an error for the waiting appends, not
        // a dead writer thread.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.tree
                .apply_batch(batch)
                .map_err(|e| StoreError::io("append", e))
                .and_then(|()| {
                    self.db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| StoreError::io("flush", e))
                })
                .and_then(|()| self.sync.sync())
        }))
        .unwrap_or_else(|panic| {
            let text = panic_text(&panic);
            Err(if text.contains("No space left") {
                StoreError::DiskFull { during: "append" }
            } else {
                StoreError::Io {
                    during: "append",
                    source: format!("sled failed: {text}").into(),
                }
            })
        });
        match result {
            Ok(()) => {
                debug_assert!(position > self.position, "a staged group advances the head");
                self.position = position;
                self.hash = hash;
                self.last_recorded_us = recorded_us;
                self.durable.store(position, Ordering::Release);
                self.watermark.record(position, &hash);
                self.head_tx.send_replace(position);
                for (reply, appended) in staged {
                    reply.send(Ok(appended));
                }
                true
            }
            Err(e) => {
                super::fail_group(staged.into_iter().map(|(reply, _)| reply), &e);
                false
            }
        }
    }
}

/// The committed log as sled's writer sees it while staging a group.
struct SledCommitted<'a> {
    tree: &'a sled::Tree,
}

impl Committed for SledCommitted<'_> {
    fn committed_version(&mut self, stream: StreamId) -> Result<u64, StoreError> {
        last_version(self.tree, stream, u64::MAX)
    }

    fn stored_position(&mut self, event_id: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tree
            .get(i_key(event_id))
            .map_err(|e| StoreError::io("append", e))?
            .map(|p| be_u64(&p).unwrap_or(0)))
    }
}

/// The last version of `stream` whose position is at most `max_position`.
fn last_version(tree: &sled::Tree, stream: StreamId, max_position: u64) -> Result<u64, StoreError> {
    let mut prefix = [0u8; 17];
    prefix[0] = b's';
    prefix[1..].copy_from_slice(stream.0.as_bytes());
    for item in tree.scan_prefix(prefix).rev() {
        let (k, v) = item.map_err(|e| StoreError::io("read", e))?;
        let position = be_u64(&v).ok_or_else(|| StoreError::Corrupt {
            location: format!("stream {stream} index"),
            what: "index entry is not a position".into(),
        })?;
        if position <= max_position {
            return be_u64(&k[17..]).ok_or_else(|| StoreError::Corrupt {
                location: format!("stream {stream} index"),
                what: "malformed index key".into(),
            });
        }
    }
    Ok(0)
}

#[async_trait]
impl EventStore for SledLog {
    async fn append_atomic(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Result<Vec<Appended>, StoreError> {
        super::submit(self.sender.as_ref(), requests).await
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let durable = self.durable_position();
        let max = max.min(MAX_READ_PAGE);
        // The stream's positions first (one pass over its `s` keys), then
        // the events: each run of consecutive positions with one range scan
        // of the `e` keys instead of one `get` (one B-tree descent) per event.
        let mut positions = Vec::new();
        let range = s_key(stream, from_version.max(1))..=s_key(stream, u64::MAX);
        for item in self.tree.range(range) {
            if positions.len() >= max {
                break;
            }
            let (_, v) = item.map_err(|e| StoreError::io("read", e))?;
            let position = be_u64(&v).ok_or_else(|| StoreError::Corrupt {
                location: format!("stream {stream} index"),
                what: "index entry is not a position".into(),
            })?;
            if position > durable {
                break;
            }
            positions.push(position);
        }
        let missing = |position: u64| StoreError::Corrupt {
            location: format!("position {position}"),
            what: format!("stream {stream} index points at a missing event"),
        };
        let mut out = Vec::with_capacity(positions.len());
        for run in consecutive_runs(&positions) {
            if run.len() == 1 {
                let event = self.get_event(run[0])?.ok_or_else(|| missing(run[0]))?;
                out.push(event);
                continue;
            }
            let (first, last) = (run[0], run[run.len() - 1]);
            let mut expected = first;
            for item in self.tree.range(e_key(first)..=e_key(last)) {
                let (k, v) = item.map_err(|e| StoreError::io("read", e))?;
                let position = be_u64(&k[1..]).unwrap_or(0);
                if position != expected {
                    return Err(missing(expected));
                }
                out.push(decode_at(position, &v)?);
                expected += 1;
            }
            if expected != last + 1 {
                return Err(missing(expected));
            }
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let durable = self.durable_position();
        let from = from_position.max(1);
        if from > durable {
            return Ok(Vec::new());
        }
        let max = max.min(MAX_READ_PAGE);
        let mut out = Vec::with_capacity(max.min((durable - from + 1) as usize));
        for item in self.tree.range(e_key(from)..=e_key(durable)).take(max) {
            let (k, v) = item.map_err(|e| StoreError::io("read", e))?;
            let position = be_u64(&k[1..]).unwrap_or(0);
            out.push(decode_at(position, &v)?);
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError> {
        last_version(&self.tree, stream, self.durable_position())
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let Some(p) = self
            .tree
            .get(i_key(event_id))
            .map_err(|e| StoreError::io("read", e))?
        else {
            return Ok(None);
        };
        let position = be_u64(&p).ok_or_else(|| StoreError::Corrupt {
            location: format!("event id {event_id} index"),
            what: "index entry is not a position".into(),
        })?;
        if position > self.durable_position() {
            return Ok(None);
        }
        self.get_event(position)
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let position = self.durable_position();
        if position == 0 {
            return Ok(Head {
                position: 0,
                hash: GENESIS_HASH,
            });
        }
        let event = self
            .get_event(position)?
            .ok_or_else(|| StoreError::Corrupt {
                location: format!("position {position}"),
                what: "head event is missing".into(),
            })?;
        Ok(Head {
            position,
            hash: event.hash,
        })
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(c_key(name))
            .map_err(|e| StoreError::io("read checkpoint", e))?
            .map(|v| v.to_vec()))
    }

    async fn save_checkpoint(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.tree
            .insert(c_key(name), bytes)
            .map_err(|e| StoreError::io("write checkpoint", e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StoreError::io("flush checkpoint", e))?;
        Ok(())
    }

    async fn clear_checkpoints(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix(b"c") {
            let (k, _) = item.map_err(|e| StoreError::io("read checkpoint", e))?;
            batch.remove(k);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| StoreError::io("clear checkpoints", e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StoreError::io("flush checkpoint", e))?;
        Ok(())
    }

    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let mut v = ChainVerifier::new();
        let mut index_hits: u64 = 0;
        for item in self.tree.scan_prefix(b"e") {
            let (k, value) = item.map_err(|e| StoreError::io("verify", e))?;
            let Some(key_position) = (k.len() == 9).then(|| be_u64(&k[1..])).flatten() else {
                v.problem(0, format!("malformed event key {:?}", k.as_ref()));
                continue;
            };
            if let Some(event) = v.check(key_position, &value) {
                let s = self
                    .tree
                    .get(s_key(event.stream, event.version))
                    .map_err(|e| StoreError::io("verify", e))?;
                match s.as_deref().and_then(be_u64) {
                    Some(p) if p == key_position => index_hits += 1,
                    Some(p) => v.problem(
                        key_position,
                        format!(
                            "stream index for version {} points at position {p}",
                            event.version
                        ),
                    ),
                    None => v.problem(
                        key_position,
                        format!("stream index has no entry for version {}", event.version),
                    ),
                }
                let i = self
                    .tree
                    .get(i_key(event.event_id))
                    .map_err(|e| StoreError::io("verify", e))?;
                match i.as_deref().and_then(be_u64) {
                    Some(p) if p == key_position => index_hits += 1,
                    Some(p) => v.problem(
                        key_position,
                        format!("event id index points at position {p}"),
                    ),
                    None => v.problem(key_position, "event id index has no entry"),
                }
            }
            if v.events().is_multiple_of(4096) {
                progress(v.events());
            }
        }
        progress(v.events());
        let events = v.events();
        // Index entries that point nowhere (an event removed with its key):
        // counted cheaply, located only when the counts disagree.
        let s_entries = self.tree.scan_prefix(b"s").count() as u64;
        let i_entries = self.tree.scan_prefix(b"i").count() as u64;
        if s_entries + i_entries != index_hits {
            for prefix in [&b"s"[..], &b"i"[..]] {
                for item in self.tree.scan_prefix(prefix) {
                    let (k, p) = item.map_err(|e| StoreError::io("verify", e))?;
                    let Some(position) = be_u64(&p) else {
                        v.problem(0, format!("index key {:?} holds no position", k.as_ref()));
                        continue;
                    };
                    if self
                        .tree
                        .get(e_key(position))
                        .map_err(|e| StoreError::io("verify", e))?
                        .is_none()
                    {
                        v.problem(position, "an index entry points at this position, but no event is stored there (event removed)");
                    }
                }
            }
        }
        let head = self
            .tree
            .get(HEAD_KEY)
            .map_err(|e| StoreError::io("verify", e))?;
        match (head.as_deref().and_then(decode_head), events) {
            (None, 0) => {}
            (None, _) => v.problem(0, "head record is missing"),
            (Some((p, h, _)), _) => {
                let last = v.expected_position().saturating_sub(1);
                if p != last {
                    v.problem(
                        last.min(p) + 1,
                        format!("head record says position {p}, the log ends at {last}"),
                    );
                } else if h != v.last_hash() {
                    v.problem(p, "head record hash differs from the last event's hash");
                }
            }
        }
        Ok(v.finish())
    }
}

/// Decodes a stored head record (`mhead`): position, hash, recorded_at µs.
/// Public for the decoder fuzz tests; the store uses the same code.
pub fn decode_head_record(bytes: &[u8]) -> Result<(u64, Hash, i64), crate::error::CodecError> {
    decode_head(bytes).ok_or(crate::error::CodecError::Field {
        field: "head",
        what: format!("head record has {} bytes, expected 48", bytes.len()),
    })
}

/// Decodes a head watermark file's contents (`None` for an empty file).
/// Public for the decoder fuzz tests.
pub fn decode_watermark(bytes: &[u8]) -> Result<Option<(u64, Hash)>, crate::error::CodecError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = |what: &str| crate::error::CodecError::Field {
        field: "watermark",
        what: what.to_string(),
    };
    if bytes.len() != WATERMARK_LEN {
        return Err(bad("wrong length"));
    }
    let position = be_u64(&bytes[..8]).ok_or_else(|| bad("bad position"))?;
    let hash: Hash = bytes[8..40].try_into().map_err(|_| bad("bad hash"))?;
    if Watermark::encode(position, &hash) != bytes {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some((position, hash)))
}

/// Decodes a stored event value as the store reads it at `position`.
/// Public for the decoder fuzz tests.
pub fn decode_event_at(position: u64, value: &[u8]) -> Result<StoredEvent, StoreError> {
    decode_at(position, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// sled's own lock, held by a handle of this process that lets go of
    /// it soon, is waited for (sled's threads keep its files a moment after
    /// its last handle); held for longer than the wait, the open is refused
    /// as in use.
    #[test]
    fn an_open_waits_for_sleds_files_let_go_in_this_process() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path(), true).unwrap());
        // sled's own threads hold its lock a moment after a store is
        // dropped (what the open under test waits for): so does this
        // test's own open of sled, up to the same wait.
        let open_sled = || {
            let started = std::time::Instant::now();
            loop {
                match sled::Config::new().path(dir.path()).open() {
                    Ok(held) => break held,
                    Err(e) if started.elapsed() > RELEASED_HERE_WAIT => panic!("{e}"),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        };
        let held = open_sled();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let store = SledStore::open(dir.path(), false);
        releaser.join().unwrap();
        assert!(store.is_ok(), "{:?}", store.err());
        drop(store);
        let held = open_sled();
        match SledStore::open(dir.path(), false) {
            Err(StoreError::InUse { .. }) => {}
            other => panic!("expected in use, got {:?}", other.err()),
        }
        drop(held);
    }

    #[test]
    fn a_second_open_in_the_same_process_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let _held = ProcessLock::acquire(dir.path()).unwrap();
        let started = std::time::Instant::now();
        match ProcessLock::acquire(dir.path()) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("the store was opened twice"),
        }
        assert!(started.elapsed() < RELEASED_HERE_WAIT);
    }

    #[test]
    fn a_lock_released_here_but_held_by_a_spawning_child_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ProcessLock::acquire(dir.path()).unwrap();
        // What a child between fork and exec holds: a copy of the
        // descriptor, which keeps the flock after this process closes its own.
        // SAFETY: dup of a descriptor owned by `lock`, closed below.
        let copy = unsafe { libc::dup(lock._file.as_raw_fd()) };
        assert!(copy >= 0);
        drop(lock);
        let exec = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            // SAFETY: closes the copy made above, once.
            unsafe { libc::close(copy) };
        });
        let reopened = ProcessLock::acquire(dir.path());
        exec.join().unwrap();
        assert!(
            reopened.is_ok(),
            "{:?}",
            reopened.err().map(|e| e.to_string())
        );
    }

    #[test]
    fn a_lock_held_by_another_process_is_refused_at_once_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ProcessLock::acquire(dir.path()).unwrap();
        // SAFETY: as above.
        let copy = unsafe { libc::dup(lock._file.as_raw_fd()) };
        drop(lock);
        // Another process's pid in the file: no wait.
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let started = std::time::Instant::now();
        let refused = ProcessLock::acquire(dir.path());
        // SAFETY: closes the copy made above, once.
        unsafe { libc::close(copy) };
        match refused {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(999_999_999)),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < RELEASED_HERE_WAIT);
    }
}
