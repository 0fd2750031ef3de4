//! `casebook bench --backend postgres`: the PostgreSQL backend under the
//! same phases as sled (see `bench.rs`).
//!
//! The server is the one `--database-url` / `CASEBOOK_DATABASE_URL` names;
//! the role must be allowed to create databases. The bench works in two
//! scratch databases of its own, `casebook_bench_engine` (the engine's
//! store) and `casebook_bench_raw` (the ceiling), created empty at the start
//! and dropped at the end: it never touches the database in the URL. Two
//! benches on one server at once would share those names: run one at a time.
//!
//! The ceiling (`raw_backend_batched_ev_s`) is `PostgresStore::raw_insert_batch`:
//! the same sealed envelopes inserted with the writer's multi-row `INSERT`
//! (`unnest` of arrays) and head update, one transaction per batch under the
//! head lock in the writer's two round trips, without the engine's checks,
//! planning or group commit.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use casebook_engine::envelope::StoredEvent;
use casebook_engine::store::postgres::{PostgresLog, PostgresStore};
use casebook_engine::store::sled_raw::RawEnvelope;
use casebook_engine::store::EventStore;
use casebook_engine::RecordedEvent;
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

use crate::bench::{Backend, Engine, RawWriter};
use crate::Failure;

const ENGINE_DB: &str = "casebook_bench_engine";
const RAW_DB: &str = "casebook_bench_raw";

fn pg_failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Store(format!("bench on PostgreSQL: {what}: {e}"))
}

/// The PostgreSQL backend of `casebook bench`.
pub(crate) struct Postgres {
    config: Config,
}

impl Postgres {
    pub(crate) fn new(url: Option<&str>) -> Result<Postgres, Failure> {
        let url = url.ok_or_else(|| {
            Failure::BadInput(
                "bench --backend postgres needs a server: pass --database-url URL or set CASEBOOK_DATABASE_URL (the role must be allowed to create databases)".into(),
            )
        })?;
        let config: Config = url
            .parse()
            .map_err(|e| Failure::BadInput(format!("--database-url is not valid: {e}")))?;
        Ok(Postgres { config })
    }

    /// A libpq key=value string for `dbname` on the same server and role.
    fn conninfo(&self, dbname: &str) -> String {
        fn quoted(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut parts = Vec::new();
        if let Some(host) = self.config.get_hosts().first() {
            let h = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            parts.push(format!("host={}", quoted(&h)));
        }
        if let Some(port) = self.config.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        if let Some(user) = self.config.get_user() {
            parts.push(format!("user={}", quoted(user)));
        }
        if let Some(pw) = self.config.get_password() {
            parts.push(format!("password={}", quoted(&String::from_utf8_lossy(pw))));
        }
        parts.push(format!("dbname={}", quoted(dbname)));
        parts.join(" ")
    }

    /// Runs maintenance statements on the database of the URL.
    async fn admin(&self, statements: &[String]) -> Result<(), Failure> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| pg_failure("connect", e))?;
        let conn = tokio::spawn(connection);
        for s in statements {
            client
                .batch_execute(s)
                .await
                .map_err(|e| pg_failure(s, e))?;
        }
        drop(client);
        let _ = conn.await;
        Ok(())
    }

    /// A fresh, empty scratch database and a store on it.
    async fn fresh(&self, db: &str) -> Result<Arc<PostgresStore>, Failure> {
        self.admin(&[
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ])
        .await?;
        Ok(PostgresStore::connect(&self.conninfo(db), true).await?)
    }
}

#[async_trait]
impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// The data is the server's, in its own directory: not checked here.
    fn disk_needed_per_event(&self) -> Option<u64> {
        None
    }

    async fn open_engine(&self, _dir: &Path, school: &str) -> Result<Box<dyn Engine>, Failure> {
        let store = self.fresh(ENGINE_DB).await?;
        let log = store.log(school)?;
        Ok(Box::new(PgEngine { store, log }))
    }

    async fn open_raw(&self, _dir: &Path, school: &str) -> Result<Box<dyn RawWriter>, Failure> {
        let store = self.fresh(RAW_DB).await?;
        Ok(Box::new(PgRaw {
            store,
            school: school.to_string(),
        }))
    }

    async fn finish(&self) -> Result<(), Failure> {
        self.admin(&[
            format!("DROP DATABASE IF EXISTS {ENGINE_DB} WITH (FORCE)"),
            format!("DROP DATABASE IF EXISTS {RAW_DB} WITH (FORCE)"),
        ])
        .await
    }
}

struct PgEngine {
    store: Arc<PostgresStore>,
    log: Arc<PostgresLog>,
}

#[async_trait]
impl Engine for PgEngine {
    fn log(&self) -> Arc<dyn EventStore> {
        self.log.clone()
    }

    /// Pages through the log with the backend's own read (one `SELECT` a
    /// page) and decodes every event fully.
    async fn raw_scan_decode(&self) -> Result<u64, Failure> {
        let mut from = 1u64;
        let mut n = 0u64;
        let mut sum = 0u64;
        loop {
            let page = self
                .log
                .read_all(from, casebook_engine::store::MAX_READ_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            for stored in &page {
                let recorded =
                    RecordedEvent::from_stored(stored).map_err(|e| pg_failure("decode", e))?;
                sum = sum.wrapping_add(recorded.version);
                n += 1;
            }
        }
        std::hint::black_box(sum);
        Ok(n)
    }

    async fn disk_bytes(&self) -> Result<u64, Failure> {
        Ok(self.store.size_on_disk().await?)
    }
}

struct PgRaw {
    store: Arc<PostgresStore>,
    school: String,
}

#[async_trait]
impl RawWriter for PgRaw {
    async fn write_batch(&self, events: &[RawEnvelope], _recorded_us: i64) -> Result<(), Failure> {
        let stored = events
            .iter()
            .map(|e| StoredEvent::decode(&e.bytes).map_err(|err| pg_failure("decode", err)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.store.raw_insert_batch(&self.school, &stored).await?)
    }
}
