//! The PostgreSQL backend: every school of a trust in one database, written
//! by any number of processes.
//!
//! Client: `tokio-postgres` — async on the tokio runtime the engine already
//! uses, the binary protocol (bytea travels unescaped), `LISTEN/NOTIFY`
//! through the connection's message stream, and no compile-time database
//! (sqlx's checked macros need a live server or a prepared cache at build
//! time). No pool crate: each log keeps a few idle connections of its own,
//! each with the statements prepared on it. Statements that need not wait
//! for one another's answers are sent together (tokio-postgres pipelines
//! the requests of futures polled together, in the order first polled):
//! an append is two round trips.
//!
//! Architecture Invariant: a page of the log or of a stream is asked for by
//! its range of positions or versions (gapless), not with a `LIMIT`, so
//! that its plan reads only its own rows whatever the table's statistics
//! say; only past a gap (a damaged log) does a page go on with a `LIMIT`,
//! so that its reader meets the gap.
//!
//! Schema: numbered migrations in `engine/pg_migrations/`, applied on
//! `connect(url, create = true)`; a database whose schema is newer than this
//! build is refused. Tables and locking are described in docs/storage.md:
//!
//! | table | key | what |
//! | --- | --- | --- |
//! | `events` | (school, position) | the stored envelope bytes, same as sled, plus index columns |
//! | `heads` | school | last position, hash, recorded_at; locked `FOR UPDATE` per commit |
//! | `checkpoints` | (school, name) | projection checkpoints |
//! | `schema_version` | version | applied migrations |
//!
//! Architecture Invariant: every append transaction locks its school's
//! `heads` row first and reads the head, stream versions and event ids
//! inside that transaction, so appends from several processes are
//! serialized per school and chained on the committed head (never on a
//! cached one). Within one process a writer task per log group-commits
//! concurrent appends into one transaction.
//!
//! Architecture Invariant: every connection of a log is opened with
//! `casebook.school` set to that school; row-level security (FORCE, so it
//! binds the tables' owner too) then confines it to that school's rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use super::{AfterSeal, Commit, Committed, GroupStage, IdsChecked, Seen};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use uuid::Uuid;

use super::sled::validate_school;
use super::{
    AppendRequest, Appended, ChainVerifier, EventStore, Head, VerifyReport, MAX_READ_PAGE,
};
use crate::envelope::{Hash, StoredEvent, StreamId, GENESIS_HASH};
use crate::error::StoreError;

/// The connection settings type, for callers that parse URLs.
pub mod config {
    pub use tokio_postgres::config::{Config, Host};
}

/// The migrations of this build, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "0001_init",
    include_str!("../../pg_migrations/0001_init.sql"),
)];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 1;

/// The NOTIFY channel; the payload is `school position`.
pub const NOTIFY_CHANNEL: &str = "casebook_events";

/// Most events one group commit gathers from separate appends.
pub const MAX_GROUP_EVENTS: usize = 8_192;

/// Pending appends per log before writers meet back-pressure.
pub const MAX_PENDING_COMMITS: usize = 1_024;

/// Rows per INSERT statement (one `unnest` of arrays). Keeps a message well
/// under PostgreSQL's 1 GB limit whatever the size of an import.
const INSERT_CHUNK: usize = 4_096;

/// Ids or streams per batched lookup statement (`find_events`,
/// `read_streams`): one array parameter of at most this many elements.
pub const LOOKUP_CHUNK: usize = 4_096;

/// Idle connections a log keeps for reads.
const MAX_IDLE: usize = 4;

/// Attempts of a group commit that hit a unique violation (possible only
/// when something wrote without taking the head lock).
const COMMIT_ATTEMPTS: usize = 3;

/// Key of the advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x6361_7365_626f_6f6b; // "casebook"

fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut t = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                t.push_str(": ");
                t.push_str(d);
            }
            t
        }
        None => {
            let mut t = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                t.push_str(": ");
                t.push_str(&s.to_string());
                source = s.source();
            }
            t
        }
    }
}

fn pg_err(during: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Io {
        during,
        source: pg_text(&e).into(),
    }
}

fn corrupt(location: String, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        location,
        what: what.into(),
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Io {
        during: "query",
        source: format!("{what} {v} is out of PostgreSQL's bigint range").into(),
    })
}

fn to_hash(bytes: &[u8], location: impl Fn() -> String) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| {
        corrupt(
            location(),
            format!("hash has {} bytes, expected 32", bytes.len()),
        )
    })
}

/// The oldest server casebook runs on (`server_version_num`): 12, the
/// first with `plan_cache_mode` ([`GENERIC_PLANS`]).
pub const MIN_SERVER_VERSION: u32 = 120_000;

/// The setting every connection of a school's log runs with: its prepared
/// statements are planned once for any values (PostgreSQL 12 or later).
/// A plan made for the values asked lets the table's statistics decide:
/// for a school added to a database after its last `ANALYZE`, they say
/// the school has no rows, and PostgreSQL then read the first position at
/// or after a page through the `(school, event_id)` index, and a batch of
/// event ids through it by the school alone, filtering every row of the
/// school (160–215 ms each, on 494,000 rows, against 0.05–0.09 ms planned
/// for any values).
/// Every statement casebook sends is a look-up or a range of a key that
/// leads with the school, which a plan for any values reads by that key.
pub const GENERIC_PLANS: &str = "plan_cache_mode=force_generic_plan";

/// Opens one connection, scoped to `school` when given.
async fn open_client(
    config: &Config,
    school: Option<&str>,
    application: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut c = config.clone();
    c.application_name(application);
    if let Some(s) = school {
        // validate_school allows only [A-Za-z0-9._-]: safe in an options string.
        c.options(format!("-c casebook.school={s} -c {GENERIC_PLANS}"));
    }
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(30));
    }
    let (client, connection) = c.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Applies the migrations this build has and the database lacks.
async fn migrate(client: &mut Client, create: bool) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err("migrate"))?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(pg_err("migrate"))?
        .get(0);
    let current: i32 = if exists {
        tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(pg_err("migrate"))?
            .get(0)
    } else {
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedFormat {
            found: current as u32,
            supported: SCHEMA_VERSION as u32,
        });
    }
    if current == SCHEMA_VERSION {
        return tx.commit().await.map_err(pg_err("migrate"));
    }
    if !create {
        return Err(StoreError::Io {
            during: "open",
            source: if current == 0 {
                "this database has no casebook schema (run `casebook init --database-url ...` first)"
                    .to_string()
                    .into()
            } else {
                format!("this database has casebook schema version {current}; run `casebook init --database-url ...` to migrate it to {SCHEMA_VERSION}").into()
            },
        });
    }
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_version (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_err("migrate"))?;
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_err("migrate"))?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(pg_err("migrate"))?;
    }
    tx.commit().await.map_err(pg_err("migrate"))
}

/// A casebook database: any number of school logs in one PostgreSQL
/// database.
pub struct PostgresStore {
    config: Config,
    logs: Mutex<HashMap<String, Arc<PostgresLog>>>,
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or a libpq key=value string),
    /// applying migrations when `create` is true. TLS is not supported in
    /// this build: use a unix socket, loopback or a private network.
    pub async fn connect(url: &str, create: bool) -> Result<Arc<PostgresStore>, StoreError> {
        let config: Config = url.parse().map_err(|e| StoreError::Io {
            during: "connect",
            source: format!("the database URL is not valid: {e}").into(),
        })?;
        let mut client = open_client(&config, None, "casebook")
            .await
            .map_err(pg_err("connect"))?;
        // A log's connections set `plan_cache_mode` (GENERIC_PLANS), which
        // PostgreSQL has since 12: an older server is refused here, by
        // name, not at each log's first connection.
        let version: String = client
            .query_one("SHOW server_version_num", &[])
            .await
            .map_err(pg_err("connect"))?
            .get(0);
        if version.parse::<u32>().is_ok_and(|v| v < MIN_SERVER_VERSION) {
            return Err(StoreError::Io {
                during: "connect",
                source: format!(
                    "the server is PostgreSQL {version} (server_version_num); casebook needs PostgreSQL 12 or later"
                )
                .into(),
            });
        }
        migrate(&mut client, create).await?;
        Ok(Arc::new(PostgresStore {
            config,
            logs: Mutex::new(HashMap::new()),
        }))
    }

    /// The log of `school`. One `PostgresLog` (one writer task) per school
    /// per store; other processes may have their own. Must be called inside
    /// a tokio runtime.
    pub fn log(&self, school: &str) -> Result<Arc<PostgresLog>, StoreError> {
        validate_school(school)?;
        let mut logs = self.logs.lock().map_err(|_| StoreError::WriterStopped)?;
        if let Some(log) = logs.get(school) {
            return Ok(log.clone());
        }
        let log = Arc::new(PostgresLog::start(self.config.clone(), school)?);
        logs.insert(school.to_string(), log.clone());
        Ok(log)
    }

    /// A connection for the store-level queries below (not scoped to a
    /// school).
    async fn client(&self) -> Result<Client, StoreError> {
        open_client(&self.config, None, "casebook")
            .await
            .map_err(pg_err("connect"))
    }

    /// The schools that have a head row (a superuser or a role without
    /// row-level security sees all; a scoped role sees its own).
    pub async fn schools(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT school FROM heads ORDER BY school", &[])
            .await
            .map_err(pg_err("read"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Bytes the whole database occupies (`pg_database_size`).
    pub async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(pg_err("read"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(pg_err("read"))?;
        Ok(row.get(0))
    }

    /// The throughput ceiling for benchmarks (`casebook bench --backend
    /// postgres`): inserts already sealed events into `school`'s log with
    /// multi-row INSERTs (`unnest` of arrays, the same statement the writer
    /// uses) and moves the head, in one transaction on a pooled connection
    /// of the log under the head lock — bypassing the engine's checks,
    /// sealing and group commit. The events must continue the log (the
    /// caller seals them, e.g. with `StoredEvent::seal`); nothing checks
    /// that here, `verify` would.
    pub async fn raw_insert_batch(
        &self,
        school: &str,
        events: &[StoredEvent],
    ) -> Result<(), StoreError> {
        let log = self.log(school)?;
        let mut client = log.pool.get().await?;
        insert_sealed(&mut client, school, events, false).await?;
        if let Some(last) = events.last() {
            bump(&log.head_tx, last.position);
        }
        Ok(())
    }
}

/// Inserts sealed events and moves the head in one transaction under the
/// head lock, in the writer's two round trips ([`begin_locked`],
/// [`insert_and_commit`]). With `check`, refuses events that do not
/// continue the head.
async fn insert_sealed(
    client: &mut Pooled,
    school: &str,
    events: &[StoredEvent],
    check: bool,
) -> Result<(), StoreError> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        rows.push(Row::of(e, e.encode()?)?);
    }
    let statements = client.statements().await?;
    client.conn()?.in_append = true;
    let outcome = async {
        let locked = begin_locked(client, &statements, school, &[], &[], None).await?;
        if check {
            check_continues(school, &locked, events)?;
        }
        insert_and_commit(
            client,
            &statements,
            school,
            &rows,
            (last.position, &last.hash, last.recorded_at),
        )
        .await
    }
    .await;
    match outcome {
        Ok(()) => client.conn()?.in_append = false,
        Err(_) => client.discard(),
    }
    outcome
}

/// `events` continue the locked head and one another (`casebook copy`).
fn check_continues(
    school: &str,
    locked: &Locked,
    events: &[StoredEvent],
) -> Result<(), StoreError> {
    if let Some(first) = events.first() {
        if first.position != locked.position + 1 || first.prev_hash != locked.hash {
            return Err(StoreError::Io {
                during: "copy",
                source: format!(
                    "school {school:?}: event at position {} does not continue the destination's head (position {})",
                    first.position, locked.position
                )
                .into(),
            });
        }
    }
    for w in events.windows(2) {
        if w[1].position != w[0].position + 1 || w[1].prev_hash != w[0].hash {
            return Err(StoreError::Io {
                during: "copy",
                source: format!(
                    "school {school:?}: the source's events at positions {} and {} are not chained",
                    w[0].position, w[1].position
                )
                .into(),
            });
        }
    }
    Ok(())
}

const LOCK_HEAD_SQL: &str =
    "SELECT position, hash, recorded_at FROM heads WHERE school = $1 FOR UPDATE";
const INSERT_SQL: &str = "INSERT INTO events (school, position, stream, version, event_id, recorded_at, value)
     SELECT current_setting('casebook.school'), * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::uuid[], $5::timestamptz[], $6::bytea[])";
/// An append's last rows and its head move in one statement: the rows are
/// inserted only if the head row was moved (it is locked by the
/// transaction, so it always is; were it gone, nothing would be stored),
/// and the notification is queued; all take effect at commit. Answers how
/// many head rows moved and how many rows went in, so that the `COMMIT`
/// can be sent with it, in the same round trip.
const FINISH_SQL: &str = "WITH moved AS (
         UPDATE heads SET position = $8, hash = $9, recorded_at = $10 WHERE school = $7 RETURNING position
     ), inserted AS (
         INSERT INTO events (school, position, stream, version, event_id, recorded_at, value)
         SELECT current_setting('casebook.school'), r.*
         FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::uuid[], $5::timestamptz[], $6::bytea[]) AS r
         WHERE EXISTS (SELECT 1 FROM moved)
         RETURNING 1
     ), notified AS (
         SELECT pg_notify($11, $12) FROM moved
     )
     SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM inserted), (SELECT count(*) FROM notified)";
/// The group's streams' versions: each stream's highest version, read from
/// the end of its range of the `(school, stream, version)` index whatever
/// the table's statistics say (NULL for a stream with no events).
const VERSIONS_SQL: &str = "SELECT s, (SELECT max(version) FROM events WHERE school = $1 AND stream = s) FROM unnest($2::uuid[]) AS s";
const IDS_SQL: &str =
    "SELECT event_id, position FROM events WHERE school = $1 AND event_id = ANY($2)";
/// The ids of the events after position `$2`, through `$3`: what was
/// stored after an import planner's look-up of a batch's ids
/// ([`IdsChecked`]). Read by the primary key's range (positions are
/// gapless), not by each id's entry in the `(school, event_id)` index.
const IDS_AFTER_SQL: &str =
    "SELECT event_id, position FROM events WHERE school = $1 AND position > $2 AND position <= $3";
/// The school's head ([`EventStore::head`]; `verify`'s last read), and
/// its position before a look-up of ids
/// ([`EventStore::find_events_checked`]): every event up to it was
/// committed before the look-up's statements began. One statement, so a
/// pooled connection keeps one for the head.
const HEAD_SQL: &str = "SELECT position, hash FROM heads WHERE school = $1";

/// Events after a planner's look-up that the writer reads the ids of
/// instead of looking the batch's ids up, at most: past this many
/// ([`ids_after_limit`]) it looks them up.
const IDS_AFTER_MAX: u64 = 65_536;

/// How many events after a look-up the writer reads the ids of, for a
/// group whose look-ups answer for `checked` ids: reading a row by the
/// primary key's range, in pages the import has just written, costs less
/// than a look-up in the ids' index (a random page of it once the table
/// outgrows the server's buffers), so up to 16 a checked id (as the
/// segment engine's test), at most [`IDS_AFTER_MAX`]. An import's planner
/// looks a batch up while the batch before it is being written: the
/// events after its look-up are mostly that batch.
fn ids_after_limit(checked: usize) -> u64 {
    (checked as u64).saturating_mul(16).min(IDS_AFTER_MAX)
}

/// The writer's statements, prepared once per connection (each saves a
/// round trip per group commit, and lets statements be sent together).
#[derive(Clone)]
struct Statements {
    lock: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    finish: tokio_postgres::Statement,
    versions: tokio_postgres::Statement,
    ids: tokio_postgres::Statement,
    ids_after: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        // Prepared together: one round trip.
        let (lock, insert, finish, versions, ids, ids_after) = tokio::try_join!(
            client.prepare(LOCK_HEAD_SQL),
            client.prepare(INSERT_SQL),
            client.prepare(FINISH_SQL),
            client.prepare(VERSIONS_SQL),
            client.prepare(IDS_SQL),
            client.prepare(IDS_AFTER_SQL),
        )?;
        Ok(Statements {
            lock,
            insert,
            finish,
            versions,
            ids,
            ids_after,
        })
    }
}

/// The school's head row as an append's transaction locked it, and what the
/// append's checks read under the lock.
struct Locked {
    position: u64,
    hash: Hash,
    recorded_at: Option<DateTime<Utc>>,
    versions: HashMap<StreamId, u64>,
    stored_ids: HashMap<Uuid, u64>,
    /// The ids of the events after `after.0` through `after.1`, when asked
    /// for: what was stored after the look-ups of the group's checked ids.
    ids_after: Option<IdsAfter>,
}

/// The ids of the events in a range of positions, read under the head
/// lock ([`IDS_AFTER_SQL`]): `after` is the first position's predecessor,
/// `through` the last asked for.
struct IdsAfter {
    after: u64,
    through: u64,
    ids: HashMap<Uuid, u64>,
}

/// Opens an append's transaction on `client`, locks the school's head row
/// and reads, under the lock, the versions of `streams`, which of `ids`
/// are stored, and, given `after` (a position and how far past it), the
/// ids of the events after it. `BEGIN`, the lock and the reads are sent
/// together, one round trip: PostgreSQL runs them in order on the
/// connection, so each read starts once the lock is held and sees every
/// commit made before it. A log without a head row gets one first, then
/// the lock and the reads again. On an error the transaction may be open:
/// the caller ends it ([`Pooled::discard`], or drops the writer's
/// connection).
async fn begin_locked(
    client: &Client,
    statements: &Statements,
    school: &str,
    streams: &[Uuid],
    ids: &[Uuid],
    after: Option<(u64, u64)>,
) -> Result<Locked, StoreError> {
    let lock = || async {
        client
            .query_opt(&statements.lock, &[&school])
            .await
            .map_err(pg_err("lock head"))
    };
    let reads = || {
        futures_util::future::try_join3(
            read_versions(client, statements, school, streams),
            read_stored_ids(client, statements, school, ids),
            read_ids_after(client, statements, school, after),
        )
    };
    let (_, mut row, mut read) = tokio::try_join!(
        async {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(pg_err("append"))
        },
        lock(),
        reads(),
    )?;
    if row.is_none() {
        client
            .execute(
                "INSERT INTO heads (school, position, hash) VALUES ($1, 0, $2) ON CONFLICT (school) DO NOTHING",
                &[&school, &&GENESIS_HASH[..]],
            )
            .await
            .map_err(pg_err("lock head"))?;
        row = lock().await?;
        read = reads().await?;
    }
    let row = row.ok_or_else(|| corrupt(format!("log {school:?} head"), "head row vanished"))?;
    let position: i64 = row.get(0);
    let hash: &[u8] = row.get(1);
    let (versions, stored_ids, ids_after) = read;
    Ok(Locked {
        position: position as u64,
        hash: to_hash(hash, || format!("log {school:?} head"))?,
        recorded_at: row.get(2),
        versions,
        stored_ids,
        ids_after,
    })
}

/// The ids of the events after position `after.0` through `after.1`
/// ([`IDS_AFTER_SQL`]), when asked for.
async fn read_ids_after(
    client: &Client,
    statements: &Statements,
    school: &str,
    after: Option<(u64, u64)>,
) -> Result<Option<IdsAfter>, StoreError> {
    let Some((after, through)) = after else {
        return Ok(None);
    };
    let (from, to) = (to_i64(after, "position")?, to_i64(through, "position")?);
    let rows = client
        .query(&statements.ids_after, &[&school, &from, &to])
        .await
        .map_err(pg_err("append"))?;
    let ids = rows
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    Ok(Some(IdsAfter {
        after,
        through,
        ids,
    }))
}

/// The highest stored version of each of `streams` that has events.
async fn read_versions(
    client: &Client,
    statements: &Statements,
    school: &str,
    streams: &[Uuid],
) -> Result<HashMap<StreamId, u64>, StoreError> {
    read_keyed(client, &statements.versions, school, streams, |row| {
        let v: Option<i64> = row.get(1);
        v.map(|v| (StreamId(row.get(0)), v as u64))
    })
    .await
}

/// The positions of those of `ids` that are stored.
async fn read_stored_ids(
    client: &Client,
    statements: &Statements,
    school: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, u64>, StoreError> {
    read_keyed(client, &statements.ids, school, ids, |row| {
        Some((row.get(0), row.get::<_, i64>(1) as u64))
    })
    .await
}

/// `statement` of `(school, keys)`, a chunk of keys at a time, each row
/// taken by `entry`.
async fn read_keyed<K: std::hash::Hash + Eq>(
    client: &Client,
    statement: &tokio_postgres::Statement,
    school: &str,
    keys: &[Uuid],
    entry: impl Fn(&tokio_postgres::Row) -> Option<(K, u64)>,
) -> Result<HashMap<K, u64>, StoreError> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(INSERT_CHUNK) {
        let rows = client
            .query(statement, &[&school, &chunk])
            .await
            .map_err(pg_err("append"))?;
        found.extend(rows.iter().filter_map(&entry));
    }
    Ok(found)
}

/// Inserts `rows` (in position order, continuing the locked head), moves the
/// head to `(position, hash, recorded_at)` with its notification, and
/// commits. The last [`INSERT_CHUNK`] rows go with the head move in one
/// statement ([`FINISH_SQL`]), sent together with the `COMMIT` when there
/// are no earlier chunks: one round trip for an append of up to 4,096
/// events. Earlier chunks (a large import) are inserted one after another
/// first, and then the statement's answer is checked before the `COMMIT` is
/// sent. Sent together, a failed statement (a unique violation) aborts the
/// transaction and the `COMMIT` ends it with nothing stored; a head row
/// that did not move (impossible under the lock) leaves nothing inserted
/// either. On an error the transaction may be open: the caller ends it.
async fn insert_and_commit(
    client: &Client,
    statements: &Statements,
    school: &str,
    rows: &[Row],
    (position, hash, recorded_at): (u64, &Hash, DateTime<Utc>),
) -> Result<(), StoreError> {
    let chunks: Vec<&[Row]> = rows.chunks(INSERT_CHUNK).collect();
    let Some((last, earlier)) = chunks.split_last() else {
        return client
            .batch_execute("COMMIT")
            .await
            .map_err(pg_err("commit"));
    };
    for chunk in earlier {
        client
            .execute(&statements.insert, &Arrays::of(chunk).params())
            .await
            .map_err(append_err)?;
    }
    let a = Arrays::of(last);
    let payload = format!("{school} {position}");
    let position = to_i64(position, "position")?;
    let hash = &hash[..];
    let params = params(
        &a.params(),
        &[
            &school,
            &position,
            &hash,
            &recorded_at,
            &NOTIFY_CHANNEL,
            &payload,
        ],
    );
    let finish = async {
        client
            .query_one(&statements.finish, &params)
            .await
            .map_err(append_err)
    };
    let commit = async {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(pg_err("commit"))
    };
    if earlier.is_empty() {
        let (row, ()) = tokio::try_join!(finish, commit)?;
        return finished(school, &row, last.len());
    }
    // The earlier chunks are not committed until the statement is checked.
    finished(school, &finish.await?, last.len())?;
    commit.await
}

/// Checks [`FINISH_SQL`]'s answer: the head row moved, with `rows` rows.
fn finished(school: &str, row: &tokio_postgres::Row, rows: usize) -> Result<(), StoreError> {
    let (moved, inserted): (i64, i64) = (row.get(0), row.get(1));
    if moved != 1 {
        // Nothing was inserted with it: the statement's condition.
        return Err(corrupt(
            format!("log {school:?} head"),
            "head row vanished during the append",
        ));
    }
    if inserted != rows as i64 {
        return Err(corrupt(
            format!("log {school:?}"),
            format!("{inserted} of {rows} rows were inserted with the head's move"),
        ));
    }
    Ok(())
}

/// A failed insert as the error it stands for ([`unique_violation`]).
fn append_err(e: tokio_postgres::Error) -> StoreError {
    unique_violation(&e).unwrap_or_else(|| pg_err("append")(e))
}

/// One events row.
struct Row {
    position: i64,
    stream: Uuid,
    version: i64,
    event_id: Uuid,
    recorded_at: DateTime<Utc>,
    value: Vec<u8>,
}

impl Row {
    fn of_sealed(e: &super::SealedEvent, value: Vec<u8>) -> Result<Row, StoreError> {
        Ok(Row {
            position: to_i64(e.position, "position")?,
            stream: e.stream.0,
            version: to_i64(e.version, "version")?,
            event_id: e.event_id,
            recorded_at: e.recorded_at,
            value,
        })
    }

    fn of(e: &StoredEvent, value: Vec<u8>) -> Result<Row, StoreError> {
        Row::of_sealed(&super::SealedEvent::of(e), value)
    }
}

/// One chunk of rows as the insert statements' arrays (`unnest` of
/// arrays: one statement for many rows). The school comes from the
/// connection's `casebook.school` through the row-level security check.
struct Arrays<'a> {
    positions: Vec<i64>,
    streams: Vec<Uuid>,
    versions: Vec<i64>,
    ids: Vec<Uuid>,
    times: Vec<DateTime<Utc>>,
    values: Vec<&'a [u8]>,
}

impl<'a> Arrays<'a> {
    /// The insert statements' first six parameters, in their order.
    fn params(&self) -> Params<'_> {
        vec![
            &self.positions,
            &self.streams,
            &self.versions,
            &self.ids,
            &self.times,
            &self.values,
        ]
    }

    fn of(rows: &'a [Row]) -> Arrays<'a> {
        Arrays {
            positions: rows.iter().map(|r| r.position).collect(),
            streams: rows.iter().map(|r| r.stream).collect(),
            versions: rows.iter().map(|r| r.version).collect(),
            ids: rows.iter().map(|r| r.event_id).collect(),
            times: rows.iter().map(|r| r.recorded_at).collect(),
            values: rows.iter().map(|r| r.value.as_slice()).collect(),
        }
    }
}

/// A unique violation as the typed error it stands for. The head lock makes
/// these impossible between casebook writers; they mean a writer that
/// bypassed the lock, and the group is retried on a fresh head.
fn unique_violation(e: &tokio_postgres::Error) -> Option<StoreError> {
    let db = e.as_db_error()?;
    if db.code() != &SqlState::UNIQUE_VIOLATION {
        return None;
    }
    let detail = db.detail().unwrap_or("");
    let id = detail
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .rev()
        .find_map(|w| Uuid::parse_str(w).ok());
    let constraint = db.constraint().unwrap_or("");
    Some(if constraint.contains("event_id") {
        StoreError::DuplicateEventId {
            event_id: id.unwrap_or_default(),
            position: 0,
        }
    } else if constraint.contains("stream") {
        StoreError::WrongExpectedVersion {
            stream: StreamId(id.unwrap_or_default()),
            expected: super::ExpectedVersion::Any,
            actual: 0,
        }
    } else {
        StoreError::Io {
            during: "append",
            source: format!("another writer appended concurrently without the head lock: {detail}")
                .into(),
        }
    })
}

// ---- connections ----------------------------------------------------------

/// A few idle connections of one log, all scoped to its school, each with
/// the statements prepared on it.
struct Pool {
    config: Config,
    school: String,
    idle: Mutex<Vec<Conn>>,
    /// The log's head as this process knows it: a pooled connection's
    /// statements are planned again as it grows ([`plan_again`]).
    head: watch::Receiver<u64>,
}

/// Events a log must have grown by, at least, before a connection's kept
/// statements are planned again ([`plan_again`]).
const REPLAN_MIN_GROWTH: u64 = 4_096;

/// Whether statements planned when the log's head was at `planned_at` are
/// planned again now that it is at `head`: once it has doubled (and grown
/// by [`REPLAN_MIN_GROWTH`] at least). A connection plans a kept statement
/// once, for any values ([`GENERIC_PLANS`]), from the table's size and
/// statistics at its first run, and PostgreSQL keeps the plan until the
/// table is next analyzed or vacuumed. A statement first run while the
/// table was small keeps a small table's plan: the look-up of a batch's
/// ids read every row of the school through the `(school, event_id)`
/// index and filtered them, a batch of 1,024 ids taking 130 ms at 50,000
/// rows and more with each batch, until autovacuum came (up to a minute:
/// an import of a million events took 70–77 s instead of 11–12 in two
/// runs of `casebook bench`; docs/performance.md, "Session bd"). Prepared
/// again at each doubling (PostgreSQL plans a statement at its next run),
/// a kept plan was made, once the log has grown past
/// [`REPLAN_MIN_GROWTH`] events, when the log held at least half the
/// events it holds now (as this process knows its head), at the cost of a
/// statement's preparation a doubling.
fn plan_again(planned_at: u64, head: u64) -> bool {
    head >= planned_at
        .saturating_mul(2)
        .max(planned_at.saturating_add(REPLAN_MIN_GROWTH))
}

/// A connection and the statements prepared on it, kept with it while it is
/// pooled: a statement prepared once is then one round trip a use instead
/// of two (prepare, then execute), and can be sent together with others.
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, tokio_postgres::Statement>,
    appends: Option<Statements>,
    /// A transaction of an append was begun and not yet committed: if the
    /// append is dropped before it ends (its future cancelled), the
    /// connection is closed, never pooled again with the transaction and
    /// the head's lock held.
    in_append: bool,
    /// The log's head when its statements were first kept.
    planned_at: u64,
}

impl Conn {
    /// Forgets the statements kept ([`plan_again`]) once the log has grown
    /// enough since they were planned: each is prepared again at its next
    /// use, and PostgreSQL plans it again at its next run (the old ones are
    /// closed on the server).
    fn plan_again_at(&mut self, head: u64) {
        if plan_again(self.planned_at, head) {
            self.prepared.clear();
            self.appends = None;
            self.planned_at = head;
        }
    }
}

impl Pool {
    async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        loop {
            let next = self.idle.lock().ok().and_then(|mut v| v.pop());
            match next {
                Some(mut c) if !c.client.is_closed() => {
                    c.plan_again_at(*self.head.borrow());
                    return Ok(Pooled {
                        conn: Some(c),
                        pool: self.clone(),
                    });
                }
                Some(_) => continue,
                None => break,
            }
        }
        let client = open_client(&self.config, Some(&self.school), "casebook")
            .await
            .map_err(pg_err("connect"))?;
        Ok(Pooled {
            conn: Some(Conn {
                client,
                prepared: HashMap::new(),
                appends: None,
                in_append: false,
                planned_at: *self.head.borrow(),
            }),
            pool: self.clone(),
        })
    }
}

struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl Pooled {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn.as_mut().ok_or(StoreError::WriterStopped)
    }

    /// `sql` prepared on this connection: prepared at its first use, kept
    /// while the connection is pooled.
    async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        let conn = self.conn()?;
        if let Some(s) = conn.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = conn.client.prepare(sql).await.map_err(pg_err("prepare"))?;
        conn.prepared.insert(sql, s.clone());
        Ok(s)
    }

    /// `e` as a read's error; a statement this connection prepared that the
    /// server no longer knows or can no longer run as prepared (the schema
    /// changed under it: SQLSTATE 0A000 "cached plan must not change result
    /// type", or 26000, the statement gone) closes the connection instead
    /// of staying in its cache to fail again.
    fn read_error(&mut self, during: &'static str, e: tokio_postgres::Error) -> StoreError {
        let stale = e.code().is_some_and(|c| {
            *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME
        });
        if stale {
            self.discard();
        }
        pg_err(during)(e)
    }

    /// The append statements ([`Statements`]), prepared on this connection
    /// at their first use.
    async fn statements(&mut self) -> Result<Statements, StoreError> {
        let conn = self.conn()?;
        if let Some(s) = &conn.appends {
            return Ok(s.clone());
        }
        let s = Statements::prepare(&conn.client)
            .await
            .map_err(pg_err("prepare"))?;
        conn.appends = Some(s.clone());
        Ok(s)
    }

    /// After a failed transaction: the connection is closed instead of
    /// pooled again (the server rolls back whatever it holds when it
    /// closes). Not used after.
    fn discard(&mut self) {
        self.conn = None;
    }
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self
            .conn
            .as_ref()
            .expect("present until dropped or discarded")
            .client
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self
            .conn
            .as_mut()
            .expect("present until dropped or discarded")
            .client
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.client.is_closed() && !c.in_append {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(c);
                    }
                }
            }
        }
    }
}

// ---- the log ---------------------------------------------------------------

/// One school's log in a PostgreSQL database.
pub struct PostgresLog {
    school: String,
    /// Names this log in what its look-ups saw ([`Seen`]).
    token: Uuid,
    looked_up: Arc<AtomicU64>,
    writer_plans: Arc<AtomicU64>,
    writer_retries: Arc<AtomicU64>,
    pool: Arc<Pool>,
    head_tx: Arc<watch::Sender<u64>>,
    head_rx: watch::Receiver<u64>,
    sender: Option<mpsc::Sender<Commit>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl PostgresLog {
    fn start(config: Config, school: &str) -> Result<PostgresLog, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| StoreError::Io {
            during: "open log",
            source: Box::new(e),
        })?;
        let (head_tx, head_rx) = watch::channel(0);
        let head_tx = Arc::new(head_tx);
        let (sender, receiver) = mpsc::channel(MAX_PENDING_COMMITS);
        let token = Uuid::now_v7();
        let looked_up = Arc::new(AtomicU64::new(0));
        let writer_plans = Arc::new(AtomicU64::new(0));
        let writer_retries = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            config: config.clone(),
            school: school.to_string(),
            token,
            looked_up: looked_up.clone(),
            plans: writer_plans.clone(),
            retries: writer_retries.clone(),
            connection: None,
            planned_at: 0,
            head_tx: head_tx.clone(),
        };
        runtime.spawn(writer.run(receiver));
        Ok(PostgresLog {
            school: school.to_string(),
            token,
            looked_up,
            writer_plans,
            writer_retries,
            pool: Arc::new(Pool {
                config,
                school: school.to_string(),
                idle: Mutex::new(Vec::new()),
                head: head_rx.clone(),
            }),
            head_tx,
            head_rx,
            sender: Some(sender),
            listener: Mutex::new(None),
        })
    }

    /// The events of each `(stream, from)` of `asked` (distinct streams)
    /// from version `from` on, by stream, each stream's in version order:
    /// one query per [`LOOKUP_CHUNK`] streams ([`READ_STREAMS_FROM_SQL`]).
    async fn read_streams_from(
        &self,
        asked: &[(StreamId, u64)],
    ) -> Result<HashMap<StreamId, Vec<StoredEvent>>, StoreError> {
        let mut found: HashMap<StreamId, Vec<StoredEvent>> = HashMap::new();
        if asked.is_empty() {
            return Ok(found);
        }
        let mut client = self.pool.get().await?;
        for chunk in asked.chunks(LOOKUP_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|(s, _)| s.0).collect();
            let from: Vec<i64> = chunk
                .iter()
                .map(|(_, v)| i64::try_from(*v).unwrap_or(i64::MAX))
                .collect();
            let statement = client.statement(READ_STREAMS_FROM_SQL).await?;
            let rows = client
                .query(&statement, &[&self.school, &ids, &from])
                .await
                .map_err(|e| client.read_error("read", e))?;
            for r in &rows {
                // Grouped by the row's stream column, as `read_stream` selects.
                let e = decode_at(r.get::<_, i64>(0) as u64, r.get(1))?;
                found.entry(StreamId(r.get(2))).or_default().push(e);
            }
        }
        // Each stream's in version order (the statement does not sort; the
        // rows of an index range mostly come in order already).
        for events in found.values_mut() {
            events.sort_by_key(|e| e.version);
        }
        Ok(found)
    }

    /// The school this log belongs to.
    pub fn school(&self) -> &str {
        &self.school
    }

    /// How many ids this log's writer has looked up by id, in the
    /// `(school, event_id)` index, to check that none is stored: every id
    /// of an append, but those an import planner's look-up answered for
    /// ([`EventStore::append_atomic_checked`]), which are tested against
    /// the ids of the events stored after the look-up instead.
    pub fn ids_looked_up(&self) -> u64 {
        self.looked_up.load(Ordering::Relaxed)
    }

    /// `EXPLAIN (ANALYZE, FORMAT JSON)` of a look-up of `ids`
    /// ([`EventStore::find_events`]) as one of the log's read connections
    /// runs it: with the statement that connection keeps, and so the plan
    /// it keeps ([`plan_again`]). The plan, as PostgreSQL's JSON text.
    pub async fn explain_find_events(&self, ids: &[Uuid]) -> Result<String, StoreError> {
        let mut client = self.pool.get().await?;
        client.statement(FIND_EVENTS_SQL).await?;
        // The statement's name on the server, from the session's own list.
        let name: String = client
            .query_one(
                "SELECT name FROM pg_prepared_statements WHERE statement = $1 ORDER BY prepare_time DESC LIMIT 1",
                &[&FIND_EVENTS_SQL],
            )
            .await
            .map_err(pg_err("read"))?
            .get(0);
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let sql = format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}('{}', '{{{}}}')",
            self.school.replace('\'', "''"),
            ids.join(",")
        );
        let answer = client.simple_query(&sql).await.map_err(pg_err("read"))?;
        answer
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| corrupt("explain".to_string(), "no plan"))
    }

    /// How many times this log's writer has prepared its statements (which
    /// PostgreSQL plans at their next run): once a connection, and again
    /// each time the log has doubled since ([`plan_again`]).
    pub fn writer_plans(&self) -> u64 {
        self.writer_plans.load(Ordering::Relaxed)
    }

    /// How many times this log's writer tried a group again after its
    /// transaction failed on a unique violation or a version it did not
    /// expect (another writer that did not take the head's lock, or an id
    /// a check let through that the unique index refused).
    pub fn writer_retries(&self) -> u64 {
        self.writer_retries.load(Ordering::Relaxed)
    }

    /// The value of setting `name` on the log's read connections
    /// (`current_setting`): what a connection of the log runs with.
    pub async fn setting(&self, name: &str) -> Result<String, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(pg_err("read"))?;
        Ok(row.get(0))
    }

    /// Copies already sealed events (from another backend's log) after the
    /// head, unchanged: positions, times and hashes are kept. Refuses events
    /// that do not continue the head exactly.
    pub async fn append_copied(&self, events: &[StoredEvent]) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        insert_sealed(&mut client, &self.school, events, true).await?;
        if let Some(last) = events.last() {
            bump(&self.head_tx, last.position);
        }
        Ok(())
    }

    fn ensure_listener(&self) {
        let Ok(mut slot) = self.listener.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            *slot = Some(runtime.spawn(listen(
                self.pool.config.clone(),
                self.school.clone(),
                self.head_tx.clone(),
            )));
        }
    }
}

impl Drop for PostgresLog {
    fn drop(&mut self) {
        self.sender.take();
        if let Ok(mut slot) = self.listener.lock() {
            if let Some(h) = slot.take() {
                h.abort();
            }
        }
    }
}

fn bump(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|h| {
        if position > *h {
            *h = position;
            true
        } else {
            false
        }
    });
}

/// Follows other processes' commits: LISTEN on the channel and move the
/// head watch. On a lost connection it reconnects and re-reads the head, so
/// a commit made while it was away still wakes subscribers.
async fn listen(config: Config, school: String, head: Arc<watch::Sender<u64>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match listen_once(&config, &school, &head).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn listen_once(
    config: &Config,
    school: &str,
    head: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let mut c = config.clone();
    c.application_name("casebook-listen");
    c.options(format!("-c casebook.school={school} -c {GENERIC_PLANS}"));
    c.connect_timeout(Duration::from_secs(30));
    let (client, mut connection) = c.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    // Anything committed before LISTEN took effect (or while disconnected).
    if let Some(row) = client
        .query_opt("SELECT position FROM heads WHERE school = $1", &[&school])
        .await?
    {
        bump(head, row.get::<_, i64>(0) as u64);
    }
    while let Some(payload) = rx.recv().await {
        if let Some((s, p)) = payload.rsplit_once(' ') {
            if s == school {
                if let Ok(p) = p.parse::<u64>() {
                    bump(head, p);
                }
            }
        }
    }
    Ok(())
}

struct Writer {
    config: Config,
    school: String,
    /// The log's token ([`Seen`]): a look-up made through this log is used
    /// by this writer only.
    token: Uuid,
    /// Ids looked up by id ([`PostgresLog::ids_looked_up`]).
    looked_up: Arc<AtomicU64>,
    /// Times its statements were prepared ([`PostgresLog::writer_plans`]).
    plans: Arc<AtomicU64>,
    /// Groups tried again ([`PostgresLog::writer_retries`]).
    retries: Arc<AtomicU64>,
    connection: Option<(Client, Statements)>,
    /// The log's head when the connection's statements were prepared.
    planned_at: u64,
    head_tx: Arc<watch::Sender<u64>>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Commit>) {
        while let Some(first) = receiver.recv().await {
            let group = super::next_group(first, &mut receiver, MAX_GROUP_EVENTS);
            self.commit_group(group).await;
        }
    }

    /// The writer's connection and its statements, opened if need be; the
    /// statements are prepared again (PostgreSQL plans them at their next
    /// run) as the log grows ([`plan_again`]).
    async fn connection(&mut self) -> Result<&mut (Client, Statements), StoreError> {
        let head = *self.head_tx.borrow();
        if self.connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.connection = None;
            let client = open_client(&self.config, Some(&self.school), "casebook-writer")
                .await
                .map_err(pg_err("connect"))?;
            let statements = Statements::prepare(&client)
                .await
                .map_err(pg_err("connect"))?;
            self.connection = Some((client, statements));
            self.planned_at = head;
            self.plans.fetch_add(1, Ordering::Relaxed);
        } else if plan_again(self.planned_at, head) {
            if let Some((client, statements)) = self.connection.as_mut() {
                // Best effort: statements that fail to prepare again leave
                // the ones that work (a connection that broke fails the
                // group's transaction, and is opened again).
                if let Ok(again) = Statements::prepare(client).await {
                    *statements = again;
                    self.plans.fetch_add(1, Ordering::Relaxed);
                }
                self.planned_at = head;
            }
        }
        self.connection.as_mut().ok_or(StoreError::WriterStopped)
    }

    /// Commits one group: every append that passes its checks is stored in
    /// one transaction; each failing one is answered with its own error.
    async fn commit_group(&mut self, group: Vec<Commit>) {
        let mut pending: Vec<Commit> = group;
        for attempt in 1..=COMMIT_ATTEMPTS {
            let outcome = self.try_commit(&mut pending).await;
            match outcome {
                Ok((results, position)) => {
                    if let Some(p) = position {
                        bump(&self.head_tx, p);
                    }
                    for (commit, result) in pending.into_iter().zip(results) {
                        commit.reply.send(result);
                    }
                    return;
                }
                Err(e) => {
                    let retry = matches!(
                        e,
                        StoreError::DuplicateEventId { .. }
                            | StoreError::WrongExpectedVersion { .. }
                    ) && attempt < COMMIT_ATTEMPTS;
                    if retry {
                        // A unique violation is also how a look-up that
                        // answered wrongly would show (a log whose rows
                        // were changed behind its back): the next attempt
                        // looks every id up.
                        for c in pending.iter_mut() {
                            c.checked = None;
                        }
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let text = e.to_string();
                    let typed = matches!(
                        e,
                        StoreError::DuplicateEventId { .. }
                            | StoreError::WrongExpectedVersion { .. }
                    );
                    let mut first = Some(e);
                    for commit in pending.drain(..) {
                        let err = if typed && first.is_some() {
                            first.take().unwrap_or(StoreError::WriterStopped)
                        } else {
                            StoreError::Io {
                                during: "append",
                                source: text.clone().into(),
                            }
                        };
                        commit.reply.send(Err(err));
                    }
                    return;
                }
            }
        }
    }

    /// One attempt. `Ok` carries each commit's result and the new head (if
    /// anything was stored); `Err` means the transaction failed as a whole.
    /// Two round trips ([`begin_locked`], [`insert_and_commit`]); on an
    /// error the connection, whose transaction may still be open, is
    /// dropped (the server rolls back what it holds).
    #[allow(clippy::type_complexity)]
    async fn try_commit(
        &mut self,
        group: &mut [Commit],
    ) -> Result<(Vec<Result<Vec<Appended>, StoreError>>, Option<u64>), StoreError> {
        let (school, token, looked_up) = (self.school.clone(), self.token, self.looked_up.clone());
        let (client, statements) = self.connection().await?;
        let outcome = commit_on(client, statements, (&school, token, &looked_up), group).await;
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }
}

/// [`Writer::try_commit`] on the writer's connection.
#[allow(clippy::type_complexity)]
async fn commit_on(
    client: &Client,
    statements: &Statements,
    (school, token, looked_up): (&str, Uuid, &AtomicU64),
    group: &mut [Commit],
) -> Result<(Vec<Result<Vec<Appended>, StoreError>>, Option<u64>), StoreError> {
    // What the group touches, read under the lock in the same round trip:
    // its streams' versions, and its ids, each looked up unless an import
    // planner's look-up answers for it through a position; then the ids of
    // the events after the earliest such position are read instead
    // (`IdsChecked`; docs/storage.md, "Ids checked by the planner").
    let mut streams: Vec<Uuid> = Vec::new();
    let mut seen_streams = HashSet::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut answered: Vec<Uuid> = Vec::new();
    let mut after: Option<u64> = None;
    // The latest look-up's position: a head behind it means the log is not
    // the one the look-ups saw.
    let mut latest = 0;
    for c in group.iter() {
        let events: usize = c.requests.iter().map(|r| r.events.len()).sum();
        let checked = c
            .checked
            .as_ref()
            .filter(|k| k.seen.log() == token && k.made_of(&c.requests, events));
        if let Some(k) = checked {
            after = Some(after.map_or(k.seen.through(), |a| a.min(k.seen.through())));
            latest = latest.max(k.seen.through());
        }
        let mut i = 0;
        for r in &c.requests {
            if seen_streams.insert(r.stream) {
                streams.push(r.stream.0);
            }
            for e in &r.events {
                match checked {
                    Some(k) if k.is_checked(i) => answered.push(e.event_id),
                    _ => ids.push(e.event_id),
                }
                i += 1;
            }
        }
    }
    let after = after.map(|a| {
        let through = a.saturating_add(ids_after_limit(answered.len()));
        (a, through.min(i64::MAX as u64))
    });
    looked_up.fetch_add(ids.len() as u64, Ordering::Relaxed);
    let mut locked = begin_locked(client, statements, school, &streams, &ids, after).await?;
    if locked
        .ids_after
        .as_ref()
        .is_some_and(|a| a.through < locked.position || latest > locked.position)
    {
        // More was stored since the look-ups than is worth reading, or the
        // head is behind what they saw (a log restored or changed behind
        // the writer's back): the ids they answered for are looked up
        // after all.
        locked.ids_after = None;
        looked_up.fetch_add(answered.len() as u64, Ordering::Relaxed);
        let more = read_stored_ids(client, statements, school, &answered).await?;
        locked.stored_ids.extend(more);
    }
    let now = DateTime::<Utc>::from_timestamp_micros(Utc::now().timestamp_micros())
        .unwrap_or_else(Utc::now);
    let recorded_at = match locked.recorded_at {
        Some(t) if t > now => t,
        _ => now,
    };
    let head_position = locked.position;
    let mut stage = GroupStage::new(head_position, locked.hash);
    let mut committed = PgCommitted {
        token,
        versions: locked.versions,
        stored_ids: locked.stored_ids,
        ids_after: locked.ids_after.map(Arc::new),
    };
    let mut results = Vec::with_capacity(group.len());
    for c in group.iter_mut() {
        let after = AfterSeal {
            checked: c.checked.as_ref(),
            ..AfterSeal::default()
        };
        results.push(stage.stage_presealed(
            &mut c.requests,
            None,
            &mut committed,
            recorded_at,
            after,
        ));
    }
    if stage.position == head_position {
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(pg_err("append"))?;
        return Ok((results, None));
    }
    let rows = stage
        .sealed
        .iter()
        .map(|s| Row::of_sealed(&s.event, stage.bytes[s.range.clone()].to_vec()))
        .collect::<Result<Vec<Row>, StoreError>>()?;
    insert_and_commit(
        client,
        statements,
        school,
        &rows,
        (stage.position, &stage.hash, recorded_at),
    )
    .await?;
    Ok((results, Some(stage.position)))
}

/// The committed log as PostgreSQL's writer read it under the head lock:
/// the versions of the group's streams, which of the ids it looked up are
/// stored, and the ids of the events after the planner's look-ups (of the
/// log whose writer drew `token`).
struct PgCommitted {
    token: Uuid,
    versions: HashMap<StreamId, u64>,
    stored_ids: HashMap<Uuid, u64>,
    ids_after: Option<Arc<IdsAfter>>,
}

impl Committed for PgCommitted {
    fn committed_version(&mut self, stream: StreamId) -> Result<u64, StoreError> {
        Ok(self.versions.get(&stream).copied().unwrap_or(0))
    }

    /// Of the ids looked up, or among those read after the look-ups (an id
    /// the test below does not pass).
    fn stored_position(&mut self, event_id: Uuid) -> Result<Option<u64>, StoreError> {
        let after = self.ids_after.as_ref().and_then(|a| a.ids.get(&event_id));
        Ok(self.stored_ids.get(&event_id).or(after).copied())
    }

    /// Passes an id that none of the events after the look-up has, when the
    /// ids read under the lock cover every event after it: all the events
    /// from the look-up's position on, through the head (the read is made
    /// from the group's earliest look-up, and more than it was to read has
    /// it dropped, [`ids_after_limit`]).
    fn absent_after(&mut self, seen: Seen, _events: usize) -> Option<super::AbsentAfter> {
        let read = self.ids_after.as_ref()?;
        if seen.log() != self.token || seen.through() < read.after {
            return None;
        }
        let read = read.clone();
        Some(Box::new(move |id| !read.ids.contains_key(id)))
    }
}

fn decode_at(position: u64, value: &[u8]) -> Result<StoredEvent, StoreError> {
    let event = StoredEvent::decode(value)
        .map_err(|e| corrupt(format!("position {position}"), e.to_string()))?;
    if event.position != position {
        return Err(corrupt(
            format!("position {position}"),
            format!("event says it is position {}", event.position),
        ));
    }
    Ok(event)
}

/// The rows of `sql` (position, value), decoded, on a pooled connection
/// with the statement prepared on it.
async fn read_rows(
    client: &mut Pooled,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<StoredEvent>, StoreError> {
    let statement = client.statement(sql).await?;
    let rows = client
        .query(&statement, params)
        .await
        .map_err(|e| client.read_error("read", e))?;
    rows.iter()
        .map(|r| decode_at(r.get::<_, i64>(0) as u64, r.get(1)))
        .collect()
}

/// Streams' events from a version on ([`EventStore::read_streams`],
/// [`EventStore::visit_streams_from`]): the streams `$2` and their first
/// versions `$3` as two arrays, unnested, each stream's events read by its
/// own range of the `(school, stream, version)` index. Unordered: the
/// reader groups the rows by stream and puts each stream's in version
/// order ([`PostgresLog::read_streams_from`]), so the server sorts nothing
/// (PostgreSQL 12 has no incremental sort, and sorted every row of the
/// batch at once). A join was planned as a scan of the whole table on a
/// table just copied in; `stream = ANY($2) ORDER BY stream, version`, for
/// whole streams, sorted every row of the batch at once (a day's register
/// reads every pupil's history: 100,223 rows sorted on disk, 57–94 ms,
/// against 34–35 ms read stream by stream and ordered by stream and
/// version, and about 22 ms unordered; docs/performance.md, "Session bd").
pub const READ_STREAMS_FROM_SQL: &str = "SELECT e.position, e.value, e.stream \
     FROM unnest($2::uuid[], $3::bigint[]) AS w(stream, from_version) \
     CROSS JOIN LATERAL ( \
         SELECT position, value, stream FROM events \
         WHERE school = $1 AND stream = w.stream AND version >= w.from_version \
     ) e";

/// The stored events of a batch of ids ([`EventStore::find_events`]).
pub const FIND_EVENTS_SQL: &str =
    "SELECT position, value, event_id FROM events WHERE school = $1 AND event_id = ANY($2)";

/// A page of the log ([`EventStore::read_all`]): the positions from `$2` up
/// to `$3` (one past the last, [`range_end`]).
pub const READ_ALL_SQL: &str = "SELECT position, value FROM events WHERE school = $1 AND position >= $2 AND position < $3 ORDER BY position";

/// A page of a stream ([`EventStore::read_stream`]): stream `$2`'s versions
/// from `$3` up to `$4` (one past the last, [`range_end`]).
pub const READ_STREAM_SQL: &str = "SELECT position, value FROM events WHERE school = $1 AND stream = $2 AND version >= $3 AND version < $4 ORDER BY version";

/// Rows one statement of a page reads at most: a longer page
/// (a scan's or `verify`'s 10,000) is read as several ranges of this many,
/// sent together ([`read_ranges`]). Planned for the values asked, a range
/// of 10,000 on a table of 206,000 was a bitmap scan and a sort (5–7 ms
/// against 2 for the same rows in order), one of 1,024 a scan of the key.
/// The log's connections plan for any values ([`GENERIC_PLANS`]), where
/// the two cost the same at the server (`pgbench`, docs/performance.md,
/// "Session bc"); the ranges keep each statement small for a plan made for
/// its values all the same.
const RANGE_ROWS: i64 = 1_024;

/// A statement's parameters: `keys`, then `more`.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// `keys` followed by `more`, as a statement's parameters.
fn params<'a>(keys: &[&'a (dyn ToSql + Sync)], more: &[&'a (dyn ToSql + Sync)]) -> Params<'a> {
    keys.iter().chain(more).copied().collect()
}

/// The rows of `statement` (position, value, …) for the numbers
/// `first..=last`, read as ranges of at most `size` sent together (one
/// round trip), in order. Its parameters are `keys` (the school, and
/// the stream of a stream's page) and then `(a, b)`: `a` a range's first
/// number, `b` its last when `inclusive`, else one past it (saturating: a
/// half-open statement cannot reach `i64::MAX`, which `verify`'s inclusive
/// one does).
async fn read_ranges(
    client: &(impl tokio_postgres::GenericClient + Sync),
    statement: &tokio_postgres::Statement,
    keys: &[&(dyn ToSql + Sync)],
    (first, last): (i64, i64),
    (size, inclusive): (i64, bool),
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    let mut a = first;
    while a <= last {
        let b = a.saturating_add(size - 1).min(last);
        ranges.push((a, if inclusive { b } else { b.saturating_add(1) }));
        match b.checked_add(1) {
            Some(next) => a = next,
            None => break,
        }
    }
    let each: Vec<Params> = ranges.iter().map(|(a, b)| params(keys, &[a, b])).collect();
    let pages =
        futures_util::future::try_join_all(each.iter().map(|p| client.query(statement, p))).await?;
    Ok(pages.into_iter().flatten().collect())
}

/// The first position at or after `$2` (from the primary key's range: one
/// probe, whatever the statistics say), sent with a page's ranges: a page
/// that comes back short is the log's end only if nothing follows it.
pub const NEXT_POSITION_SQL: &str =
    "SELECT min(position) FROM events WHERE school = $1 AND position >= $2";

/// [`NEXT_POSITION_SQL`] of a stream's versions.
pub const NEXT_VERSION_SQL: &str =
    "SELECT min(version) FROM events WHERE school = $1 AND stream = $2 AND version >= $3";

/// The rows after a gap inside a page (positions or versions are gapless in
/// a sound log, so only a damaged one has any): read as the `LIMIT` form
/// did, from the first number missing, so that the reader meets the gap
/// and refuses the log (`Corrupt`, `Missing`) instead of taking the page's
/// end for the log's. Only for a page that is short and has rows after a
/// missing number (in the page, or past its end: [`NEXT_POSITION_SQL`]).
pub const READ_ALL_AFTER_GAP_SQL: &str = "SELECT position, value FROM events WHERE school = $1 AND position >= $2 ORDER BY position LIMIT $3";

/// [`READ_ALL_AFTER_GAP_SQL`] of a stream's versions.
pub const READ_STREAM_AFTER_GAP_SQL: &str = "SELECT position, value FROM events WHERE school = $1 AND stream = $2 AND version >= $3 ORDER BY version LIMIT $4";

/// A page of the log or of a stream, read by its range: the statement of
/// its rows (`sql`), the probe after it (`next_sql`) and the reading past
/// a gap (`after_gap`), each with `keys` first (the school, and the stream
/// of a stream's page); `range` the first number and one past the last,
/// `number` each event's (position or version).
struct PageRead<'a> {
    keys: &'a [&'a (dyn ToSql + Sync)],
    range: (i64, i64),
    /// Numbers a statement of the page reads at most: [`RANGE_ROWS`] for
    /// the log's pages, which are as long as asked; the whole page for a
    /// stream's, which is asked for to its end and mostly far shorter (a
    /// pupil's timeline asks for 10,000 versions and has hundreds: ranges
    /// of it would be ten statements, nine of them empty).
    range_rows: i64,
    number: fn(&StoredEvent) -> u64,
    /// [`READ_ALL_SQL`] or [`READ_STREAM_SQL`].
    sql: &'static str,
    /// [`NEXT_POSITION_SQL`] or [`NEXT_VERSION_SQL`].
    next_sql: &'static str,
    /// [`READ_ALL_AFTER_GAP_SQL`] or [`READ_STREAM_AFTER_GAP_SQL`].
    after_gap: &'static str,
}

impl PageRead<'_> {
    /// The page: its ranges and the probe after it sent together
    /// ([`read_ranges`], one round trip), the rows decoded; if they stop at
    /// a gap that has rows after it (in the page, or past its end: the
    /// probe's answer), the rest read from the first missing number as the
    /// `LIMIT` form did.
    async fn read(&self, client: &mut Pooled) -> Result<Vec<StoredEvent>, StoreError> {
        let (from, end) = self.range;
        let statement = client.statement(self.sql).await?;
        let next = client.statement(self.next_sql).await?;
        let next_params = params(self.keys, &[&end]);
        let (rows, after) = tokio::try_join!(
            read_ranges(
                &**client,
                &statement,
                self.keys,
                (from, end - 1),
                (self.range_rows, false)
            ),
            client.query_one(&next, &next_params),
        )
        .map_err(|e| client.read_error("read", e))?;
        let mut page = rows
            .iter()
            .map(|r| decode_at(r.get::<_, i64>(0) as u64, r.get(1)))
            .collect::<Result<Vec<_>, _>>()?;
        let whole = page
            .iter()
            .enumerate()
            .take_while(|(i, e)| (self.number)(e) == (from as u64).saturating_add(*i as u64))
            .count();
        let more = whole < page.len() || after.get::<_, Option<i64>>(0).is_some();
        if (whole as i64) < end - from && more {
            let missing = from + whole as i64;
            let count = end - missing;
            page.truncate(whole);
            let rest = params(self.keys, &[&missing, &count]);
            page.extend(read_rows(client, self.after_gap, &rest).await?);
        }
        Ok(page)
    }
}

/// One past the last of `max` consecutive numbers from `from`, for a
/// range of positions or versions (gapless in a log and in a stream): the
/// page's rows are then found by their index range alone, whatever the
/// table's statistics say. With a `LIMIT` instead, a table written in
/// bulk after its statistics were taken (when it was small) had every page
/// planned as a scan of every row after it and a sort (22 ms a page of
/// 1,024 at 206,000 rows: a rebuild quadratic in the log).
pub fn range_end(from: u64, max: usize, what: &str) -> Result<(i64, i64), StoreError> {
    let from = to_i64(from.max(1), what)?;
    Ok((from, from.saturating_add(max as i64)))
}

#[async_trait]
impl EventStore for PostgresLog {
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
        let mut client = self.pool.get().await?;
        let page = PageRead {
            keys: &[&self.school, &stream.0],
            range: range_end(from_version, max.min(MAX_READ_PAGE), "version")?,
            range_rows: MAX_READ_PAGE as i64,
            number: |e| e.version,
            sql: READ_STREAM_SQL,
            next_sql: NEXT_VERSION_SQL,
            after_gap: READ_STREAM_AFTER_GAP_SQL,
        };
        page.read(&mut client).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut client = self.pool.get().await?;
        let page = PageRead {
            keys: &[&self.school],
            range: range_end(from_position, max.min(MAX_READ_PAGE), "position")?,
            range_rows: RANGE_ROWS,
            number: |e| e.position,
            sql: READ_ALL_SQL,
            next_sql: NEXT_POSITION_SQL,
            after_gap: READ_ALL_AFTER_GAP_SQL,
        };
        page.read(&mut client).await
    }

    async fn stream_version(&self, stream: StreamId) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let statement = client
            .statement(
                "SELECT coalesce(max(version), 0) FROM events WHERE school = $1 AND stream = $2",
            )
            .await?;
        let row = client
            .query_one(&statement, &[&self.school, &stream.0])
            .await
            .map_err(|e| client.read_error("read", e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn find_event(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let mut client = self.pool.get().await?;
        let mut found = read_rows(
            &mut client,
            "SELECT position, value FROM events WHERE school = $1 AND event_id = $2",
            &[&self.school, &event_id],
        )
        .await?;
        Ok(found.pop())
    }

    /// One query per [`LOOKUP_CHUNK`] distinct ids (`event_id = ANY($2)`).
    /// [`EventStore::find_events_checked`], without what it saw.
    async fn find_events(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
        Ok(self.find_events_checked(ids).await?.0)
    }

    /// A query per [`LOOKUP_CHUNK`] distinct ids, the school's head read
    /// first in the same round trip ([`Seen`]): an append's rows and its
    /// head move commit together, so every event up to the head read was
    /// committed before the look-ups began, and each sees it.
    async fn find_events_checked(
        &self,
        ids: &[Uuid],
    ) -> Result<(HashMap<Uuid, StoredEvent>, Option<Seen>), StoreError> {
        let mut seen = HashSet::new();
        let ids: Vec<Uuid> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
        let mut found = HashMap::with_capacity(ids.len().min(LOOKUP_CHUNK));
        if ids.is_empty() {
            return Ok((found, None));
        }
        let mut client = self.pool.get().await?;
        let head = client.statement(HEAD_SQL).await?;
        let statement = client.statement(FIND_EVENTS_SQL).await?;
        let chunks: Vec<&[Uuid]> = ids.chunks(LOOKUP_CHUNK).collect();
        let each: Vec<Params> = chunks
            .iter()
            .map(|chunk| params(&[&self.school], &[chunk]))
            .collect();
        let school: Params = vec![&self.school];
        let (head, pages) = tokio::try_join!(
            client.query_opt(&head, &school),
            futures_util::future::try_join_all(each.iter().map(|p| client.query(&statement, p))),
        )
        .map_err(|e| client.read_error("read", e))?;
        for r in pages.iter().flatten() {
            // Keyed by the row's event_id column, as `find_event` selects.
            found.insert(r.get(2), decode_at(r.get::<_, i64>(0) as u64, r.get(1))?);
        }
        // No head row yet: nothing was ever stored.
        let through = head.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        // What this process knows of the head ([`plan_again`]).
        bump(&self.head_tx, through);
        Ok((found, Some(Seen::new(self.token, through))))
    }

    async fn append_atomic_checked(
        &self,
        requests: Vec<AppendRequest>,
        checked: IdsChecked,
    ) -> Result<Vec<Appended>, StoreError> {
        super::submit_with(self.sender.as_ref(), requests, None, false, Some(checked)).await
    }

    /// The streams asked read as [`EventStore::read_streams`] reads them
    /// (a query per [`LOOKUP_CHUNK`] streams), then visited.
    async fn visit_streams(
        &self,
        streams: &[StreamId],
        visit: &mut dyn super::StreamVisitor,
    ) -> Result<(), StoreError> {
        let found = self.read_streams(streams).await?;
        super::visit_found(streams, &found, visit)
    }

    /// [`PostgresLog::read_streams_from`] of each stream from `from`,
    /// visited in the order asked.
    async fn visit_streams_from(
        &self,
        streams: &[(StreamId, u64)],
        visit: &mut dyn super::StreamVisitor,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let asked: Vec<(StreamId, u64)> = streams
            .iter()
            .filter(|(s, _)| seen.insert(*s))
            .map(|&(s, from)| (s, from.max(1)))
            .collect();
        let found = self.read_streams_from(&asked).await?;
        let order: Vec<StreamId> = asked.iter().map(|(s, _)| *s).collect();
        super::visit_found(&order, &found, visit)
    }

    /// [`PostgresLog::read_streams_from`] of each distinct stream from its
    /// first event.
    async fn read_streams(
        &self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, Vec<StoredEvent>>, StoreError> {
        let mut seen = HashSet::new();
        let asked: Vec<(StreamId, u64)> = streams
            .iter()
            .filter(|s| seen.insert(**s))
            .map(|&s| (s, 1))
            .collect();
        self.read_streams_from(&asked).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let mut client = self.pool.get().await?;
        let statement = client.statement(HEAD_SQL).await?;
        let row = client
            .query_opt(&statement, &[&self.school])
            .await
            .map_err(|e| client.read_error("read", e))?;
        match row {
            None => Ok(Head {
                position: 0,
                hash: GENESIS_HASH,
            }),
            Some(r) => {
                let position = r.get::<_, i64>(0) as u64;
                bump(&self.head_tx, position);
                Ok(Head {
                    position,
                    hash: to_hash(r.get(1), || format!("log {:?} head", self.school))?,
                })
            }
        }
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.ensure_listener();
        self.head_rx.clone()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut client = self.pool.get().await?;
        let statement = client
            .statement("SELECT bytes FROM checkpoints WHERE school = $1 AND name = $2")
            .await?;
        let row = client
            .query_opt(&statement, &[&self.school, &name])
            .await
            .map_err(|e| client.read_error("read checkpoint", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn checkpoint_prefix(
        &self,
        name: &str,
        n: usize,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let mut client = self.pool.get().await?;
        // Only the first bytes cross the connection (a large school's
        // attendance checkpoint is tens of MB).
        let statement = client
            .statement(
                "SELECT substring(bytes FROM 1 FOR $3), octet_length(bytes) FROM checkpoints WHERE school = $1 AND name = $2",
            )
            .await?;
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        let row = client
            .query_opt(&statement, &[&self.school, &name, &n])
            .await
            .map_err(|e| client.read_error("read checkpoint", e))?;
        Ok(row.map(|r| {
            let len: i32 = r.get(1);
            (r.get(0), u64::try_from(len).unwrap_or(0))
        }))
    }

    async fn save_checkpoint(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let statement = client
            .statement(
                "INSERT INTO checkpoints (school, name, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (school, name) DO UPDATE SET bytes = EXCLUDED.bytes",
            )
            .await?;
        client
            .execute(&statement, &[&self.school, &name, &bytes])
            .await
            .map_err(|e| client.read_error("write checkpoint", e))?;
        Ok(())
    }

    async fn clear_checkpoints(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM checkpoints WHERE school = $1", &[&self.school])
            .await
            .map_err(pg_err("clear checkpoints"))?;
        Ok(())
    }

    async fn verify(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<VerifyReport, StoreError> {
        let mut client = self.pool.get().await?;
        // One snapshot for the whole check: the head row and the events agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err("verify"))?;
        let mut v = ChainVerifier::new();
        // The rows are read a window of positions at a time, up to the
        // last stored (the end of the primary key's range, whatever the
        // statistics say): a window's rows are found by their index range
        // alone (`range_end`). A position missing from a window is met by
        // the check as the next row's being out of order; a window with no
        // rows at all is passed over, and the next one's first row is.
        let last: i64 = tx
            .query_one(
                "SELECT coalesce(max(position), 0) FROM events WHERE school = $1",
                &[&self.school],
            )
            .await
            .map_err(pg_err("verify"))?
            .get(0);
        let window = tx
            .prepare(
                "SELECT position, stream, version, event_id, recorded_at, value FROM events
                 WHERE school = $1 AND position >= $2 AND position <= $3 ORDER BY position",
            )
            .await
            .map_err(pg_err("verify"))?;
        let mut after: i64 = 0;
        while after < last {
            let to = after.saturating_add(MAX_READ_PAGE as i64).min(last);
            // `after < last`: `after + 1` is a position; the window is
            // inclusive, so a row at `i64::MAX` is read too.
            let rows = read_ranges(
                &tx,
                &window,
                &[&self.school],
                (after + 1, to),
                (RANGE_ROWS, true),
            )
            .await
            .map_err(pg_err("verify"))?;
            after = to;
            if rows.is_empty() {
                // A gap of a whole window or more: on from the next row
                // (a row far past the rest costs one look-up, not a query
                // a window).
                let next: Option<i64> = tx
                    .query_one(
                        "SELECT min(position) FROM events WHERE school = $1 AND position > $2",
                        &[&self.school, &after],
                    )
                    .await
                    .map_err(pg_err("verify"))?
                    .get(0);
                after = next.map_or(last, |n| n - 1);
                continue;
            }
            for r in &rows {
                let position: i64 = r.get(0);
                let position = position as u64;
                let value: &[u8] = r.get(5);
                if let Some(event) = v.check(position, value) {
                    let stream: Uuid = r.get(1);
                    let version: i64 = r.get(2);
                    let event_id: Uuid = r.get(3);
                    let recorded_at: DateTime<Utc> = r.get(4);
                    if stream != event.stream.0 || version as u64 != event.version {
                        v.problem(
                            position,
                            format!(
                                "row's stream/version columns ({stream} v{version}) differ from the stored event ({} v{})",
                                event.stream, event.version
                            ),
                        );
                    }
                    if event_id != event.event_id {
                        v.problem(
                            position,
                            "row's event_id column differs from the stored event",
                        );
                    }
                    if recorded_at != event.recorded_at {
                        v.problem(
                            position,
                            "row's recorded_at column differs from the stored event",
                        );
                    }
                }
                if v.events().is_multiple_of(4096) {
                    progress(v.events());
                }
            }
        }
        progress(v.events());
        let head = tx
            .query_opt(HEAD_SQL, &[&self.school])
            .await
            .map_err(pg_err("verify"))?;
        tx.commit().await.map_err(pg_err("verify"))?;
        let last = v.expected_position().saturating_sub(1);
        match head {
            None if v.events() == 0 => {}
            None => v.problem(0, "head row is missing"),
            Some(r) => {
                let p = r.get::<_, i64>(0) as u64;
                let h: &[u8] = r.get(1);
                if p != last {
                    v.problem(
                        last.min(p) + 1,
                        format!("head row says position {p}, the log ends at {last}"),
                    );
                } else if h != v.last_hash().as_slice() {
                    v.problem(p, "head row hash differs from the last event's hash");
                }
            }
        }
        Ok(v.finish())
    }
}
