//! Which backend a command runs on: an embedded store in `--data DIR` (sled
//! or segment files; an existing directory's engine is detected, a new one
//! gets `--engine`, default [`DEFAULT_ENGINE`]) or PostgreSQL
//! (`--database-url` / `CASEBOOK_DATABASE_URL`). Every command gets its
//! logs as `Arc<dyn EventStore>` and does not care which.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use casebook_engine::store::embedded;
use casebook_engine::store::postgres::config::{Config, Host};
use casebook_engine::store::postgres::PostgresStore;
use casebook_engine::store::segment::{SegmentOptions, SegmentStore, LOGS_DIR, SNAPSHOT_FILE};
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::EventStore;
use casebook_engine::StoreError;

use crate::Failure;

/// The embedded engines a `--data` directory can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// sled: a B-tree per school (the engine of every store created before
    /// the segment engine became the default; still opened and written).
    Sled,
    /// Append-only segment files and an in-memory index (docs/storage.md).
    Segment,
}

/// The engine of a new embedded store when `--engine` is not given: the
/// segment engine, chosen on the measurements of docs/performance.md
/// ("Choosing the default engine").
pub const DEFAULT_ENGINE: Engine = Engine::Segment;

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Segment => "segment",
        }
    }
}

/// The engine of the store in `data`: detected when the directory holds a
/// store, else `wanted` or the default. A `wanted` engine that differs
/// from the store's is refused rather than ignored.
pub(crate) fn engine_of(data: &Path, wanted: Option<Engine>) -> Result<Engine, Failure> {
    let found = embedded::detect(data).map(|e| match e {
        embedded::Engine::Sled => Engine::Sled,
        embedded::Engine::Segment => Engine::Segment,
    });
    match (found, wanted) {
        (Some(f), Some(w)) if f != w => Err(Failure::BadInput(format!(
            "--engine {}: the store at {} is a {} store (its engine is fixed when it is created; `casebook copy` moves a log between stores)",
            w.name(),
            data.display(),
            f.name()
        ))),
        (Some(f), _) => Ok(f),
        (None, w) => Ok(w.unwrap_or(DEFAULT_ENGINE)),
    }
}

/// An open store of any backend.
#[derive(Clone)]
pub(crate) enum Store {
    Sled(Arc<SledStore>),
    Segment(Arc<SegmentStore>),
    /// The store and a description of the database without credentials.
    Postgres(Arc<PostgresStore>, PathBuf),
}

/// Whether `target` names a PostgreSQL database rather than a directory.
pub(crate) fn is_database_url(target: &str) -> bool {
    target.starts_with("postgres://") || target.starts_with("postgresql://")
}

/// Host, port and database of a URL, never its password: for messages.
pub(crate) fn describe_url(url: &str) -> String {
    match url.parse::<Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            let db = c.get_dbname().unwrap_or("(default database)");
            format!("PostgreSQL database {db} on {host}:{port}")
        }
        Err(_) => "PostgreSQL database".into(),
    }
}

impl Store {
    /// Opens the embedded store at `data` (engine detected, or `engine`
    /// for a new one), or the database at `url` when given; creates
    /// (migrates) when `create`. `reads_little`: the command is not
    /// expected to need the stored event ids (it appends only events whose
    /// ids it mints, `append_minted`, `append_atomic_minted`, and looks no
    /// id up but those a `record --id` or an import's lines name) nor every
    /// event's location (it reads the log in position order, a few
    /// streams, or nothing); so the segment engine leaves its event ids in
    /// the index snapshot until something needs them
    /// (`SegmentOptions::event_ids_at_open`), and keeps only where each
    /// group of 64 positions starts until a read needs every location
    /// (`SegmentOptions::locations_at_open`). The commands are listed in
    /// `run::run`.
    pub(crate) async fn open_async(
        data: &Path,
        url: Option<&str>,
        engine: Option<Engine>,
        create: bool,
        reads_little: bool,
    ) -> Result<Store, Failure> {
        Ok(match url {
            Some(url) => {
                if let Some(e) = engine {
                    return Err(Failure::BadInput(format!(
                        "--engine {} applies to an embedded store (--data), not to --database-url",
                        e.name()
                    )));
                }
                Store::Postgres(
                    PostgresStore::connect(url, create).await?,
                    PathBuf::from(describe_url(url)),
                )
            }
            None => match engine_of(data, engine)? {
                Engine::Sled => Store::Sled(SledStore::open(data, create)?),
                Engine::Segment => Store::Segment(SegmentStore::open_with(
                    data,
                    create,
                    SegmentOptions {
                        event_ids_at_open: !reads_little,
                        locations_at_open: !reads_little,
                        ..SegmentOptions::default()
                    },
                )?),
            },
        })
    }

    /// `open_async` from synchronous code inside the CLI's multi-thread
    /// runtime.
    pub(crate) fn open(
        data: &Path,
        url: Option<&str>,
        engine: Option<Engine>,
        create: bool,
        reads_little: bool,
    ) -> Result<Store, Failure> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Store::open_async(
                data,
                url,
                engine,
                create,
                reads_little,
            ))
        })
    }

    /// The log of `school`.
    pub(crate) fn log(&self, school: &str) -> Result<Arc<dyn EventStore>, StoreError> {
        Ok(match self {
            Store::Sled(s) => s.log(school)?,
            Store::Segment(s) => {
                let log = s.log(school)?;
                if let Some(why) = log.take_snapshot_rejection() {
                    eprintln!(
                        "note: school {school}: the index snapshot ({LOGS_DIR}/{school}/{SNAPSHOT_FILE}) was not used ({why}); the index was rebuilt from the segments, and a new snapshot is written when the store is closed"
                    );
                }
                log
            }
            Store::Postgres(s, _) => s.log(school)?,
        })
    }

    /// Where the store is, for messages (a directory, or a description of
    /// the database without credentials).
    pub(crate) fn path(&self) -> &Path {
        match self {
            Store::Sled(s) => s.path(),
            Store::Segment(s) => s.path(),
            Store::Postgres(_, d) => d,
        }
    }

    /// Bytes on disk (for PostgreSQL: the whole database).
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sled(s) => s.size_on_disk(),
            Store::Segment(s) => s.size_on_disk(),
            Store::Postgres(s, _) => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(s.size_on_disk())
            }),
        }
    }
}
