//! Which backend a command runs on: the embedded sled store (`--data DIR`)
//! or PostgreSQL (`--database-url` / `CASEBOOK_DATABASE_URL`). Every
//! command gets its logs as `Arc<dyn EventStore>` and does not care which.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use casebook_engine::store::postgres::config::{Config, Host};
use casebook_engine::store::postgres::PostgresStore;
use casebook_engine::store::sled::SledStore;
use casebook_engine::store::EventStore;
use casebook_engine::StoreError;

use crate::Failure;

/// An open store of either backend.
#[derive(Clone)]
pub(crate) enum Store {
    Sled(Arc<SledStore>),
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
    /// Opens the sled store at `data`, or the database at `url` when given;
    /// creates (migrates) when `create`.
    pub(crate) async fn open_async(
        data: &Path,
        url: Option<&str>,
        create: bool,
    ) -> Result<Store, Failure> {
        Ok(match url {
            Some(url) => Store::Postgres(
                PostgresStore::connect(url, create).await?,
                PathBuf::from(describe_url(url)),
            ),
            None => Store::Sled(SledStore::open(data, create)?),
        })
    }

    /// `open_async` from synchronous code inside the CLI's multi-thread
    /// runtime.
    pub(crate) fn open(data: &Path, url: Option<&str>, create: bool) -> Result<Store, Failure> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Store::open_async(data, url, create))
        })
    }

    /// The log of `school`.
    pub(crate) fn log(&self, school: &str) -> Result<Arc<dyn EventStore>, StoreError> {
        Ok(match self {
            Store::Sled(s) => s.log(school)?,
            Store::Postgres(s, _) => s.log(school)?,
        })
    }

    /// Where the store is, for messages (a directory, or a description of
    /// the database without credentials).
    pub(crate) fn path(&self) -> &Path {
        match self {
            Store::Sled(s) => s.path(),
            Store::Postgres(_, d) => d,
        }
    }

    /// Bytes on disk (for PostgreSQL: the whole database).
    pub(crate) fn size_on_disk(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sled(s) => s.size_on_disk(),
            Store::Postgres(s, _) => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(s.size_on_disk())
            }),
        }
    }
}
