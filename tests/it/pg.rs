//! The PostgreSQL backend against a real server: a throwaway cluster per
//! test (`initdb` + `pg_ctl` on a free loopback port in a temp dir), or a
//! fresh database on `CASEBOOK_TEST_DATABASE_URL` when that is set.
//!
//! Without the server binaries a test prints why and returns, except in CI
//! (`CI=true`), where it fails: .ci/run installs PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use casebook_engine::envelope::StreamId;
use casebook_engine::store::postgres::PostgresStore;
use casebook_engine::store::{self, AppendRequest, EventStore, ExpectedVersion};
use casebook_engine::StoreError;

use crate::block_on;
use crate::conformance::{contact, pupil};

/// A server for one test; stopped and removed on drop.
pub struct TestDb {
    pub url: String,
    cluster: Option<Cluster>,
    external: Option<(String, String)>,
}

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_command(&self.bin, "pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["stop", "-m", "immediate", "-w", "-t", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.external.take() {
            let _ = std::thread::spawn(move || {
                block_on(async move {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                })
            })
            .join();
        }
        self.cluster.take();
    }
}

/// Runs a future from sync code inside a multi-thread test runtime.
pub fn sync<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Where initdb and pg_ctl are: the newest /usr/lib/postgresql/*/bin, else PATH.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let v = d.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = d.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A server command, run as the `postgres` OS user when we are root
/// (initdb and postgres refuse to run as root).
fn pg_command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    if as_postgres {
        // runuser lives in sbin, which a minimal PATH (cron, `env -i`) leaves out.
        let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("runuser");
        let mut c = Command::new(runuser);
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unavailable(why: &str) -> Option<TestDb> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "PostgreSQL tests must run in CI, but {why} (.ci/run installs the postgresql package)"
        );
    }
    eprintln!("skipping: {why}; install PostgreSQL or set CASEBOOK_TEST_DATABASE_URL");
    None
}

/// A fresh, empty database for one test, or `None` (with the reason
/// printed) when no server can be had outside CI.
pub fn test_db() -> Option<TestDb> {
    if let Ok(url) = std::env::var("CASEBOOK_TEST_DATABASE_URL") {
        return Some(external_db(&url));
    }
    let Some(bin) = find_bin() else {
        return unavailable("initdb/pg_ctl were not found in /usr/lib/postgresql/*/bin or on PATH");
    };
    let as_postgres = is_root();
    let dir = tempfile::tempdir().expect("temp dir");
    if as_postgres {
        let ok = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return unavailable("cannot hand the temp dir to the postgres OS user (no such user?)");
        }
    }
    let data = dir.path().join("data");
    let out = pg_command(&bin, "initdb", as_postgres)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = Cluster {
        dir,
        bin: bin.clone(),
        as_postgres,
    };
    // A port can be taken between choosing and binding: try a few.
    for _ in 0..5 {
        let port = free_port();
        let socket_dir = cluster.dir.path().display().to_string();
        let status = pg_command(&bin, "pg_ctl", as_postgres)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c fsync=on -c max_connections=400 -k {socket_dir} -h 127.0.0.1 -p {port}"
            ))
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl");
        if !status.success() {
            continue;
        }
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        wait_ready(&url);
        return Some(TestDb {
            url,
            cluster: Some(cluster),
            external: None,
        });
    }
    let log = std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default();
    panic!("the test cluster did not start:\n{log}");
}

fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = url.to_string();
    loop {
        let u = url.clone();
        let ok = std::thread::spawn(move || {
            block_on(async move {
                tokio_postgres::connect(&u, tokio_postgres::NoTls)
                    .await
                    .is_ok()
            })
        })
        .join()
        .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the test cluster did not accept connections in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn external_db(url: &str) -> TestDb {
    let name = format!("casebook_test_{}", uuid::Uuid::now_v7().simple());
    let admin = url.to_string();
    let n = name.clone();
    std::thread::spawn(move || {
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .expect("connect to CASEBOOK_TEST_DATABASE_URL");
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {n}"))
                .await
                .expect("create a test database");
        })
    })
    .join()
    .expect("create test database");
    let mut config: tokio_postgres::Config = url.parse().expect("CASEBOOK_TEST_DATABASE_URL");
    config.dbname(&name);
    TestDb {
        url: config_url(&config),
        cluster: None,
        external: Some((url.to_string(), name)),
    }
}

/// A `postgres://` URL for `c` (enough for tests: host, port, user,
/// password, dbname; no percent-encoding).
fn config_url(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().unwrap_or("postgres");
    let password = c
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = c.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{host}:{port}/{db}")
}

/// A superuser connection for direct SQL (tampering, roles).
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Waits (up to a minute) until the database has one listener connection
/// (`casebook-listen`) idle after its `LISTEN`: the last statement it runs
/// before waiting for notifications reads the head.
async fn listening(admin: &tokio_postgres::Client) {
    let started = std::time::Instant::now();
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'casebook-listen' AND datname = current_database() AND state = 'idle' AND query LIKE 'SELECT position FROM heads%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no listener connection after a minute ({n} listening)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next(sub: &mut store::Subscription) -> u64 {
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("subscription stalled")
        .unwrap()
        .expect("store closed")
        .position
}

fn req(stream: StreamId, events: Vec<casebook_engine::NewEvent>) -> AppendRequest {
    AppendRequest {
        stream,
        expected: ExpectedVersion::Any,
        events,
    }
}

async fn filled_log(url: &str, school: &str, n: u32) -> Arc<dyn EventStore> {
    let store = PostgresStore::connect(url, true).await.expect("connect");
    let log = store.log(school).expect("log");
    for i in 0..n {
        log.append(req(pupil(i % 3), vec![contact(i)]))
            .await
            .expect("append");
    }
    log
}

// ---- tests ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_triggers_refuse_update_delete_and_truncate() {
    let Some(db) = test_db() else { return };
    let log = filled_log(&db.url, "trigger-school", 3).await;
    let admin = admin(&db.url).await;
    for sql in [
        "UPDATE events SET value = value || '\\x00'::bytea WHERE position = 2",
        "DELETE FROM events WHERE position = 2",
        "TRUNCATE events",
    ] {
        let err = admin.batch_execute(sql).await.expect_err(sql);
        let text = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(text.contains("append-only"), "{sql}: {text}");
    }
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_tampering_with_triggers_disabled_is_found_by_verify() {
    let Some(db) = test_db() else { return };
    let log = filled_log(&db.url, "tamper-school", 6).await;
    let admin = admin(&db.url).await;
    // A superuser can disable the triggers; verify must still see it.
    admin
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET value = overlay(value placing '\\x5a'::bytea from 40 for 1) WHERE position = 4;
             ALTER TABLE events ENABLE TRIGGER USER;",
        )
        .await
        .expect("tamper as superuser");
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.problems[0].position, 4, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_row_level_security_scopes_a_role_to_one_school() {
    let Some(db) = test_db() else { return };
    filled_log(&db.url, "school-a", 4).await;
    filled_log(&db.url, "school-b", 2).await;
    let admin = admin(&db.url).await;
    // Superusers bypass row-level security: test with an ordinary role.
    // Roles are cluster-wide: a unique name keeps a shared server clean.
    let role = format!("casebook_reader_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT ON events, heads, checkpoints TO {role};"
        ))
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user(&role);
    let count = |school: Option<&'static str>| {
        let mut c = config.clone();
        async move {
            if let Some(s) = school {
                c.options(format!("-c casebook.school={s}"));
            }
            let (client, conn) = c
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect as reader");
            tokio::spawn(conn);
            let all: i64 = client
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .unwrap()
                .get(0);
            let other: i64 = client
                .query_one("SELECT count(*) FROM events WHERE school = 'school-b'", &[])
                .await
                .unwrap()
                .get(0);
            (all, other)
        }
    };
    assert_eq!(count(Some("school-a")).await, (4, 0));
    assert_eq!(count(Some("school-b")).await, (2, 2));
    assert_eq!(
        count(None).await,
        (0, 0),
        "an unscoped connection sees nothing"
    );
    // A scoped connection cannot write into another school either.
    let mut c = config.clone();
    c.options("-c casebook.school=school-a");
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let err = client
        .batch_execute(
            "INSERT INTO checkpoints (school, name, bytes) VALUES ('school-b', 'x', '\\x00'::bytea)",
        )
        .await
        .expect_err("insert into another school");
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("row-level security")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_engine_runs_as_an_ordinary_role_with_the_documented_grants() {
    let Some(db) = test_db() else { return };
    if db.cluster.is_none() {
        eprintln!("skipping: needs a throwaway cluster (trust authentication) for a new role");
        return;
    }
    PostgresStore::connect(&db.url, true).await.unwrap();
    let admin = admin(&db.url).await;
    // The grants of docs/scaling.md, to a role that is neither owner nor superuser.
    admin
        .batch_execute(
            "CREATE ROLE casebook_app LOGIN NOSUPERUSER NOBYPASSRLS;
             GRANT SELECT, INSERT ON events TO casebook_app;
             GRANT SELECT, INSERT, UPDATE ON heads TO casebook_app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON checkpoints TO casebook_app;
             GRANT SELECT ON schema_version TO casebook_app;",
        )
        .await
        .unwrap();
    let app_url = db
        .url
        .replacen("postgres://postgres@", "postgres://casebook_app@", 1);
    let store = PostgresStore::connect(&app_url, true)
        .await
        .expect("connect as casebook_app");
    let log: Arc<dyn EventStore> = store.log("app-school").unwrap();
    for n in 0..5 {
        log.append(req(pupil(n % 2), vec![contact(n)]))
            .await
            .unwrap();
    }
    log.save_checkpoint("caseload", vec![1]).await.unwrap();
    log.clear_checkpoints().await.unwrap();
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok && report.events == 5, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_database_newer_than_the_binary_is_refused() {
    let Some(db) = test_db() else { return };
    PostgresStore::connect(&db.url, true).await.expect("init");
    // Opening without create works on a current schema.
    PostgresStore::connect(&db.url, false)
        .await
        .expect("reopen");
    let admin = admin(&db.url).await;
    admin
        .batch_execute("INSERT INTO schema_version (version, name) VALUES (99, '0099_future')")
        .await
        .unwrap();
    for create in [false, true] {
        match PostgresStore::connect(&db.url, create).await {
            Err(e @ StoreError::UnsupportedFormat { found: 99, .. }) => {
                assert!(e.to_string().contains("newer"), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_missing_schema_is_a_clear_error_without_init() {
    let Some(db) = test_db() else { return };
    let err = PostgresStore::connect(&db.url, false)
        .await
        .err()
        .expect("no schema yet");
    assert!(err.to_string().contains("casebook init"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_subscription_survives_a_dropped_listener_connection() {
    let Some(db) = test_db() else { return };
    // Two stores stand for two processes: the subscriber only learns of the
    // writer's commits through LISTEN/NOTIFY.
    let reader = PostgresStore::connect(&db.url, true).await.unwrap();
    let writer = PostgresStore::connect(&db.url, true).await.unwrap();
    let r: Arc<dyn EventStore> = reader.log("sub-school").unwrap();
    let w: Arc<dyn EventStore> = writer.log("sub-school").unwrap();
    for n in 0..3 {
        w.append(req(pupil(1), vec![contact(n)])).await.unwrap();
    }
    let mut sub = store::subscribe(r.clone(), 1);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut sub).await);
    }
    w.append(req(pupil(2), vec![contact(3)])).await.unwrap();
    seen.push(next(&mut sub).await);
    // The subscriber waits (it has read everything) when the listener's
    // connection is killed, and the next commits are made while it is
    // away: only the listener, back, can wake the subscriber (it reads the
    // head again after its LISTEN); without it the wait runs into `next`'s
    // timeout. First the listener must listen: the subscription may have
    // read event 4 before the listener (started by `subscribe`) had
    // connected, and on a loaded machine there was then none to kill (a
    // flake seen once).
    let admin = admin(&db.url).await;
    listening(&admin).await;
    let waiting = tokio::spawn(async move {
        let first = next(&mut sub).await;
        (first, sub)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'casebook-listen' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "one listener connection");
    for n in 4..8 {
        w.append(req(pupil(3), vec![contact(n)])).await.unwrap();
    }
    let (first, mut sub) = waiting.await.unwrap();
    seen.push(first);
    for _ in 5..8 {
        seen.push(next(&mut sub).await);
    }
    assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "no gap or duplicate");
    // The listener is back: a commit made while the subscriber waits
    // wakes it.
    let waiting = tokio::spawn(async move { next(&mut sub).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.append(req(pupil(3), vec![contact(9)])).await.unwrap();
    assert_eq!(waiting.await.unwrap(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_stores_on_one_school_stay_gapless_and_chained() {
    let Some(db) = test_db() else { return };
    let a = PostgresStore::connect(&db.url, true).await.unwrap();
    let b = PostgresStore::connect(&db.url, true).await.unwrap();
    let la: Arc<dyn EventStore> = a.log("shared").unwrap();
    let lb: Arc<dyn EventStore> = b.log("shared").unwrap();
    let mut tasks = Vec::new();
    for (k, log) in [la.clone(), lb.clone()].into_iter().enumerate() {
        for t in 0..4u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..10u32 {
                    log.append(req(pupil(k as u32 * 10 + t), vec![contact(n)]))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = la.read_all(1, 1000).await.unwrap();
    assert_eq!(all.len(), 80);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64 + 1));
    let report = lb.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    // A stale expectation from the other process is the typed error.
    let v = la.stream_version(pupil(0)).await.unwrap();
    lb.append(AppendRequest {
        stream: pupil(0),
        expected: ExpectedVersion::Exact(v),
        events: vec![contact(100)],
    })
    .await
    .unwrap();
    let err = la
        .append(AppendRequest {
            stream: pupil(0),
            expected: ExpectedVersion::Exact(v),
            events: vec![contact(101)],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err}"
    );
}

/// Whether `test_db` can give a server here; prints why not (and fails in
/// CI, like `test_db`).
pub fn server_available() -> bool {
    if std::env::var("CASEBOOK_TEST_DATABASE_URL").is_ok() || find_bin().is_some() {
        return true;
    }
    unavailable("initdb/pg_ctl were not found in /usr/lib/postgresql/*/bin or on PATH").is_some()
}

fn casebook(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args(args)
        .env_remove("CASEBOOK_DATA")
        .env_remove("CASEBOOK_DATABASE_URL")
        .env_remove("CASEBOOK_SCHOOL")
        .stdin(Stdio::null())
        .output()
        .expect("run casebook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(r: (i32, String, String)) -> String {
    assert_eq!(r.0, 0, "stdout: {}\nstderr: {}", r.1, r.2);
    r.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cli_runs_on_postgres_and_copy_round_trips_through_sled() {
    let Some(db) = test_db() else { return };
    let url = db.url.as_str();
    let pg = |args: &[&str]| {
        let mut a = vec!["--database-url", url, "--school", "urn-100001"];
        a.extend_from_slice(args);
        casebook(&a)
    };
    ok(pg(&["init"]));
    ok(pg(&[
        "demo",
        "--pupils",
        "12",
        "--seed",
        "7",
        "--year",
        "2024",
        "--today",
        "2025-09-01",
    ]));
    let verified = ok(pg(&["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
    ok(pg(&["caseload", "--today", "2025-07-01"]));
    ok(pg(&["report", "behaviour", "--today", "2025-07-01"]));
    ok(pg(&["rebuild"]));

    // Postgres -> sled.
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("copy");
    let sled = sled_dir.to_str().unwrap();
    let copied = ok(casebook(&[
        "--school",
        "urn-100001",
        "copy",
        "--from",
        url,
        "--to",
        sled,
    ]));
    let heads: Vec<&str> = copied
        .lines()
        .filter(|l| l.contains("head: position"))
        .collect();
    assert_eq!(heads.len(), 2, "{copied}");
    let head = |l: &str| {
        l.split_once("head:")
            .map(|(_, h)| h.trim().to_string())
            .unwrap()
    };
    assert_eq!(head(heads[0]), head(heads[1]));
    let on_sled = ok(casebook(&[
        "--data",
        sled,
        "--school",
        "urn-100001",
        "verify",
    ]));
    assert_eq!(
        on_sled, verified,
        "the same events and head on both backends"
    );

    // A destination that already holds the school is refused, nothing written.
    let (code, _, err) = casebook(&[
        "--school",
        "urn-100001",
        "copy",
        "--from",
        sled,
        "--to",
        url,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already holds"), "{err}");

    // sled -> a second, empty database.
    let admin = admin(url).await;
    let name = format!("second_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let second = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    ok(casebook(&[
        "--school",
        "urn-100001",
        "copy",
        "--from",
        sled,
        "--to",
        &second,
    ]));
    let back = ok(casebook(&[
        "--database-url",
        &second,
        "--school",
        "urn-100001",
        "verify",
    ]));
    assert_eq!(back, verified);
}

/// Sealing on PostgreSQL: the key files live in the `--data` directory of
/// this machine, the database holds only ciphertext, and erasure destroys
/// the key so the name can no longer be read, while `verify` still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sealing_keeps_keys_outside_the_database_and_erasure_works() {
    let Some(db) = test_db() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let data = dir.path().join("data");
    let (url, key, data_s) = (
        db.url.clone(),
        key_file.to_str().unwrap().to_string(),
        data.to_str().unwrap().to_string(),
    );
    let pg = |args: &[&str]| {
        let mut a = vec![
            "--database-url",
            url.as_str(),
            "--key-file",
            key.as_str(),
            "--data",
            data_s.as_str(),
        ];
        a.extend_from_slice(args);
        casebook(&a)
    };
    let name = "Quillon Zephyrine";
    ok(pg(&["init"]));
    ok(pg(&[
        "--as",
        "S1",
        "record",
        "PupilRegistered",
        "--pupil",
        "P1",
        "--json",
        &format!(r#"{{"name":"{name}","date_of_birth":"2012-03-04","year_group":9}}"#),
    ]));
    let keys = data.join("keys").join("default");
    assert_eq!(
        std::fs::read_dir(&keys).unwrap().count(),
        1,
        "one pupil key"
    );
    assert!(ok(pg(&["timeline", "P1"])).contains(name));
    let client = admin(&db.url).await;
    let rows = client.query("SELECT value FROM events", &[]).await.unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        let value: &[u8] = r.get(0);
        assert!(
            !value.windows(name.len()).any(|w| w == name.as_bytes()),
            "plaintext name stored in the database"
        );
    }
    ok(pg(&[
        "--as",
        "S1",
        "erase",
        "P1",
        "--reason",
        "retention ended",
    ]));
    assert_eq!(
        std::fs::read_dir(&keys).unwrap().count(),
        0,
        "key destroyed"
    );
    let after = ok(pg(&["timeline", "P1"]));
    assert!(
        !after.contains(name) && after.contains("erased on"),
        "{after}"
    );
    assert!(ok(pg(&["verify"])).starts_with("ok: "));
}

/// On PostgreSQL a day's register for more than `known::MIN_PUPILS`
/// pupils saves the import planner's facts checkpoint, the next starts
/// every pupil from it (each read from its checkpointed version on, one
/// query per 4,096 streams), and the same day again is refused from the
/// checkpoint's facts; a day with ids is imported, then imported again
/// (every line a duplicate), which leaves every pupil in the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_days_register_starts_from_the_facts_the_last_one_saved() {
    use casebook_engine::known::{self, Loaded};
    let Some(db) = test_db() else { return };
    let url = db.url.as_str();
    let pg = |args: &[&str]| {
        let mut a = vec!["--database-url", url];
        a.extend_from_slice(args);
        casebook(&a)
    };
    ok(pg(&["init"]));
    let dir = tempfile::tempdir().unwrap();
    let pupils = known::MIN_PUPILS + 20;
    let file = |name: &str, line: &dyn Fn(usize) -> String| {
        let path = dir.path().join(name);
        let text: String = (1..=pupils).map(|n| format!("{}\n", line(n))).collect();
        std::fs::write(&path, text).expect("write lines");
        path.to_str().expect("a UTF-8 path").to_string()
    };
    let registered = file("registered.jsonl", &|n| {
        format!(
            r#"{{"type":"PupilRegistered","pupil":"R{n:04}","occurred_at":"2025-09-03T08:30:00Z","actor":"S017","data":{{"name":"Ada Testpupil","date_of_birth":"2012-05-01","year_group":9,"class":"9B","site":"Main"}}}}"#
        )
    });
    let day = |date: &'static str| {
        file(&format!("{date}.jsonl"), &move |n| {
            format!(
                r#"{{"type":"AttendanceMarked","pupil":"R{n:04}","occurred_at":"{date}T08:45:00Z","actor":"S017","data":{{"date":"{date}","session":"am","code":"/"}}}}"#
            )
        })
    };
    ok(pg(&["import", &registered]));
    let first = pg(&["import", &day("2025-11-10")]);
    assert!(!first.2.contains("note:"), "{}", first.2);
    ok(first);
    let store = PostgresStore::connect(url, false).await.expect("connect");
    let log = store.log("default").expect("log");
    match known::load(log.as_ref()).await.expect("read") {
        Loaded::Usable(facts) => assert_eq!(facts.len(), pupils),
        other => panic!("{other:?}"),
    }
    let again = pg(&["import", &day("2025-11-10")]);
    assert_eq!(again.0, 2, "{}", again.2);
    assert!(again.2.contains("is already marked"), "{}", again.2);
    let second = pg(&["import", &day("2025-11-11")]);
    assert!(!second.2.contains("note:"), "{}", second.2);
    assert!(ok(second).contains(&format!("imported {pupils} events")));
    // A day with ids, imported twice: each import's look-up of the ids
    // runs beside its read of the pupils on two threads (until session bi
    // that could lose the look-up's wake-up, and the import waited for
    // ever), and the second, every line a duplicate, saves a checkpoint
    // that still holds every pupil.
    let with_ids = file("2025-11-12.jsonl", &|n| {
        format!(
            r#"{{"id":"00000000-0000-4000-8000-{n:012}","type":"AttendanceMarked","pupil":"R{n:04}","occurred_at":"2025-11-12T08:45:00Z","actor":"S017","data":{{"date":"2025-11-12","session":"am","code":"/"}}}}"#
        )
    });
    ok(pg(&["import", &with_ids]));
    let rerun = ok(pg(&["import", &with_ids]));
    assert!(
        rerun.contains(&format!("imported 0 events ({pupils} duplicates)")),
        "{rerun}"
    );
    match known::load(log.as_ref()).await.expect("read") {
        Loaded::Usable(facts) => assert_eq!(facts.len(), pupils),
        other => panic!("{other:?}"),
    }
    let verified = ok(pg(&["verify"]));
    assert!(verified.starts_with("ok: "), "{verified}");
}

/// The largest row count any node of an `EXPLAIN (ANALYZE, FORMAT JSON)`
/// plan produced or passed over (its rows, and those its filter or its
/// recheck removed).
fn rows_touched(plan: &serde_json::Value) -> u64 {
    let own = [
        "Actual Rows",
        "Rows Removed by Filter",
        "Rows Removed by Index Recheck",
    ]
    .iter()
    // As numbers of any form: PostgreSQL 18 prints row counts with decimals.
    .filter_map(|k| plan.get(*k).and_then(serde_json::Value::as_f64))
    .sum::<f64>() as u64;
    let children = plan
        .get("Plans")
        .and_then(serde_json::Value::as_array)
        .map(|c| c.iter().map(rows_touched).max().unwrap_or(0))
        .unwrap_or(0);
    own.max(children)
}

/// The store on `url`, and a superuser connection, with autovacuum off for
/// the events table: PostgreSQL samples it only when a test says so.
async fn never_analyzed(url: &str) -> (Arc<PostgresStore>, tokio_postgres::Client) {
    let store = PostgresStore::connect(url, true).await.expect("connect");
    let admin = admin(url).await;
    admin
        .batch_execute("ALTER TABLE events SET (autovacuum_enabled = off)")
        .await
        .expect("autovacuum off");
    (store, admin)
}

/// Whether a node of `plan` filters its rows by their `event_id` (a
/// look-up of ids planned as a read of the school's rows).
fn filters_event_ids(plan: &serde_json::Value) -> bool {
    let own = plan
        .get("Filter")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|f| f.contains("event_id"));
    own || plan
        .get("Plans")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|c| c.iter().any(filters_event_ids))
}

/// `batches` atomic appends to `log`, each of `each` contacts to each of
/// pupils 0..`pupils` (pupil p's versions 1, 2, … in every batch).
async fn fill_in_batches(log: &dyn EventStore, batches: u32, pupils: u32, each: u32) {
    for batch in 0..batches {
        let requests = (0..pupils)
            .map(|p| {
                req(
                    pupil(p),
                    (0..each).map(|i| contact(batch * each + i)).collect(),
                )
            })
            .collect();
        log.append_atomic(requests).await.expect("append");
    }
}

/// Runs `sql` as a superuser with the events table's triggers off (what
/// only a superuser can do: rows changed, deleted or added behind the
/// log's back).
async fn without_triggers(admin: &tokio_postgres::Client, sql: &str) {
    admin
        .batch_execute(&format!(
            "ALTER TABLE events DISABLE TRIGGER USER; {sql}; ALTER TABLE events ENABLE TRIGGER USER;"
        ))
        .await
        .expect("as superuser, triggers off");
}

/// A copy of `school`'s event at position 3 stored at `position` and
/// `version` with a new id, behind the log's back.
async fn copy_of_third_at(
    admin: &tokio_postgres::Client,
    school: &str,
    position: i64,
    version: i64,
) {
    admin
        .batch_execute(&format!(
            "SET casebook.school = '{school}';
             INSERT INTO events (school, position, stream, version, event_id, recorded_at, value)
             SELECT school, {position}, stream, {version}, gen_random_uuid(), recorded_at, value
             FROM events WHERE school = '{school}' AND position = 3;"
        ))
        .await
        .expect("insert as superuser");
}

/// The JSON plan of the last statement of `sql` (an `EXPLAIN (…, FORMAT
/// JSON)`), sent as one simple query.
async fn explained(admin: &tokio_postgres::Client, sql: &str) -> serde_json::Value {
    let text = admin
        .simple_query(sql)
        .await
        .expect("explain")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a plan");
    serde_json::from_str(&text).expect("json plan")
}

/// A school added to a database after its last `ANALYZE` (a trust's next
/// school), whose statistics say it has no rows: with the plans the
/// store's connections make (`GENERIC_PLANS`: planned for any values), a
/// page of its log, the probe after it and a batch of its ids are read by
/// their keys. Planned for the values asked, the probe and the ids were
/// read through another index, touching every row of the school.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_school_the_statistics_have_not_seen_is_read_by_its_keys() {
    use casebook_engine::store::postgres::{
        range_end, FIND_EVENTS_SQL, GENERIC_PLANS, NEXT_POSITION_SQL, READ_ALL_SQL,
    };
    let Some(db) = test_db() else { return };
    let (store, admin) = never_analyzed(&db.url).await;
    let fill = |school: &'static str| {
        let log = store.log(school).expect("log");
        async move {
            fill_in_batches(log.as_ref(), 4, 10, 500).await;
            log
        }
    };
    fill("known-school").await;
    admin
        .batch_execute("ANALYZE events")
        .await
        .expect("analyze");
    let new = fill("new-school").await;
    let id = new.read_all(12_345, 1).await.unwrap()[0].event_id;
    let (from, end) = range_end(10_001, 1_000, "position").unwrap();
    for (what, types, sql, args, most) in [
        (
            "read_all",
            "text, bigint, bigint",
            READ_ALL_SQL,
            format!("'new-school', {from}, {end}"),
            1_000,
        ),
        (
            "the probe",
            "text, bigint",
            NEXT_POSITION_SQL,
            format!("'new-school', {end}"),
            1,
        ),
        (
            "find_events",
            "text, uuid[]",
            FIND_EVENTS_SQL,
            format!("'new-school', ARRAY['{id}'::uuid, gen_random_uuid()]"),
            1,
        ),
    ] {
        let plan = explained(
            &admin,
            &format!(
                "SET {GENERIC_PLANS}; SET casebook.school = 'new-school'; \
                 PREPARE q({types}) AS {sql}; \
                 EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE q({args}); DEALLOCATE q;"
            ),
        )
        .await;
        let plan = &plan[0]["Plan"];
        assert!(
            rows_touched(plan) <= most,
            "{what} touched {} rows (at most {most}): {plan}",
            rows_touched(plan)
        );
    }
    // The store's own connections run with the setting the plans above
    // were made under.
    let setting = GENERIC_PLANS.split('=').collect::<Vec<_>>();
    assert_eq!(new.setting(setting[0]).await.unwrap(), setting[1]);
    // And through the store: the same answers.
    assert_eq!(new.read_all(10_001, 1_000).await.unwrap().len(), 1_000);
    let found = new.find_events(&[id]).await.unwrap();
    assert_eq!(found[&id].position, 12_345);
}

/// Right after a bulk write, before PostgreSQL has sampled the table (its
/// autovacuum is off here, so it never does), a page of the log and a
/// page of a stream are read by their index range: no step of either
/// plan touches more rows than the page holds. (With a `LIMIT` instead of
/// the range, a page after the first 10,000 of 30,000 rows was planned as
/// a scan of every row after it and a sort: 20,000 rows touched for 1,000
/// read, and a rebuild quadratic in the log.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pages_are_read_by_their_range_before_the_table_is_analyzed() {
    use casebook_engine::store::postgres::{range_end, READ_ALL_SQL, READ_STREAM_SQL};
    let Some(db) = test_db() else { return };
    let (store, admin) = never_analyzed(&db.url).await;
    let log = store.log("stats-school").expect("log");
    fill_in_batches(log.as_ref(), 6, 10, 500).await;
    let analyzed: Option<i64> = admin
        .query_one(
            "SELECT coalesce(analyze_count + autoanalyze_count, 0) FROM pg_stat_user_tables WHERE relname = 'events'",
            &[],
        )
        .await
        .expect("stats")
        .get(0);
    assert_eq!(
        analyzed,
        Some(0),
        "the table was analyzed: the test proves nothing"
    );
    // The statements as the store sends them: prepared, then executed with
    // the page's bounds (`range_end`); EXPLAIN of the execution.
    let explain = |name: &str, types: &str, sql: &str, args: String| {
        format!(
            "SET casebook.school = 'stats-school'; PREPARE {name}({types}) AS {sql}; \
             EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({args});"
        )
    };
    let max = 1_000;
    let (from, end) = range_end(10_001, max, "position").unwrap();
    let all = explain(
        "page",
        "text, bigint, bigint",
        READ_ALL_SQL,
        format!("'stats-school', {from}, {end}"),
    );
    let (from, end) = range_end(2_001, max, "version").unwrap();
    let stream = explain(
        "stream_page",
        "text, uuid, bigint, bigint",
        READ_STREAM_SQL,
        format!("'stats-school', '{}', {from}, {end}", pupil(3).0),
    );
    for (what, sql) in [("read_all", all), ("read_stream", stream)] {
        let plan = explained(&admin, &sql).await;
        let plan = &plan[0]["Plan"];
        assert_eq!(
            plan["Actual Rows"].as_f64(),
            Some(max as f64),
            "{what}: {plan}"
        );
        assert!(
            rows_touched(plan) <= max as u64,
            "{what} touched {} rows for a page of {max}: {plan}",
            rows_touched(plan)
        );
    }
    // And through the store: the same pages.
    let page = log.read_all(10_001, max).await.unwrap();
    assert_eq!(page.len(), max);
    assert_eq!(page[0].position, 10_001);
    assert_eq!(page[max - 1].position, 11_000);
    let page = log.read_stream(pupil(3), 2_001, max).await.unwrap();
    assert_eq!(page.len(), max);
    assert_eq!((page[0].version, page[max - 1].version), (2_001, 3_000));
}

/// `verify` reads the rows a window of positions at a time up to the last
/// stored: a window left with no rows at all (10,000 deleted, triggers off)
/// does not end the check early, and a row past the head row is read too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_verify_reads_past_an_empty_window_and_past_the_head() {
    let Some(db) = test_db() else { return };
    let store = PostgresStore::connect(&db.url, true)
        .await
        .expect("connect");
    let log = store.log("window-school").expect("log");
    fill_in_batches(log.as_ref(), 5, 5, 1_000).await;
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 25_000);
    let admin = admin(&db.url).await;
    // A whole window (10,001..=20,000) gone: the first missing position is
    // named, and the rows after it are still read (25,000 is the last).
    without_triggers(
        &admin,
        "DELETE FROM events WHERE position BETWEEN 10001 AND 20000",
    )
    .await;
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.problems[0].position, 10_001, "{report:?}");
    assert_eq!(report.events, 15_000, "{report:?}");
    // A row past the head row (a copy of the last, one position on).
    let past = store.log("past-school").expect("log");
    for i in 0..3 {
        past.append(req(pupil(0), vec![contact(i)]))
            .await
            .expect("append");
    }
    copy_of_third_at(&admin, "past-school", 4, 4).await;
    let report = past.verify(&|_| {}).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.events, 4, "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.position <= 4),
        "{report:?}"
    );
    // A row a trillion positions on: the windows between are passed over
    // in one look-up (a query a window would take 10^8 queries).
    copy_of_third_at(&admin, "past-school", 1000000000000, 5).await;
    let report = tokio::time::timeout(Duration::from_secs(60), past.verify(&|_| {}))
        .await
        .expect("verify passes over the empty windows")
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.events, 5, "{report:?}");
    // And one at the last position a bigint holds: read, not overflowed
    // past (nor a panic).
    copy_of_third_at(&admin, "past-school", 9223372036854775807, 6).await;
    let report = tokio::time::timeout(Duration::from_secs(60), past.verify(&|_| {}))
        .await
        .expect("verify reaches the last position")
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.events, 6, "{report:?}");
}

/// A page that meets a missing position or version (rows deleted with the
/// triggers off: a damaged log) goes on past the gap, as a page read with
/// a `LIMIT` did, so that its reader meets the gap and refuses the log
/// instead of taking the gap for the log's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_page_reads_on_past_a_gap() {
    let Some(db) = test_db() else { return };
    let store = PostgresStore::connect(&db.url, true)
        .await
        .expect("connect");
    let log = store.log("gap-school").expect("log");
    log.append_atomic(vec![req(pupil(1), (0..40).map(contact).collect())])
        .await
        .expect("append");
    let admin = admin(&db.url).await;
    // Positions (and versions) 5 and 31..=35 gone.
    without_triggers(
        &admin,
        "DELETE FROM events WHERE position = 5 OR position > 30 AND position <= 35",
    )
    .await;
    let positions = |page: Vec<casebook_engine::StoredEvent>| -> Vec<u64> {
        page.iter().map(|e| e.position).collect()
    };
    // A gap inside the page: the rows after it, up to the page's size.
    assert_eq!(
        positions(log.read_all(1, 10).await.unwrap()),
        vec![1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    );
    // A gap at the page's end, rows after it.
    assert_eq!(
        positions(log.read_all(29, 4).await.unwrap()),
        vec![29, 30, 36, 37]
    );
    assert_eq!(
        positions(log.read_stream(pupil(1), 29, 4).await.unwrap()),
        vec![29, 30, 36, 37]
    );
    // The end of the log: a short page, and nothing after it.
    assert_eq!(positions(log.read_all(39, 10).await.unwrap()), vec![39, 40]);
    // A page of several ranges (1,024 a statement) whose gap is in a later
    // range: the same as one read with a `LIMIT`.
    let long = store.log("long-gap-school").expect("log");
    long.append_atomic(vec![req(pupil(2), (0..3_000).map(contact).collect())])
        .await
        .expect("append");
    without_triggers(
        &admin,
        "DELETE FROM events WHERE school = 'long-gap-school' AND position = 2500",
    )
    .await;
    let expected: Vec<u64> = (1..=3_000).filter(|p| *p != 2_500).collect();
    assert_eq!(positions(long.read_all(1, 3_000).await.unwrap()), expected);
    assert!(log.read_all(41, 10).await.unwrap().is_empty());
    assert_eq!(
        positions(log.read_stream(pupil(1), 38, 10).await.unwrap()),
        vec![38, 39, 40]
    );
}

/// An import planner's look-up of a batch's ids (`find_events_checked`)
/// says through which position it saw the log, and the writer then reads
/// the ids of the events stored after it instead of looking the batch's
/// ids up again (`ids_looked_up` does not grow). A batch holding an id
/// stored after the look-up, by another process, is still refused, and
/// so is one after more events than the writer reads, whose ids it then
/// looks up after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_ids_a_look_up_answered_for_are_not_looked_up_again() {
    use casebook_engine::testing::{ids_checked, seen_through};
    use uuid::Uuid;
    let Some(db) = test_db() else { return };
    let store = PostgresStore::connect(&db.url, true)
        .await
        .expect("connect");
    let log = store.log("checked-school").expect("log");
    let with_ids = |stream: u32, ids: std::ops::Range<u128>| {
        let events = ids
            .map(|id| {
                let mut e = contact(id as u32);
                e.event_id = Uuid::from_u128(id);
                e
            })
            .collect();
        vec![req(pupil(stream), events)]
    };
    let never_seen =
        |range: std::ops::Range<u128>| -> Vec<Uuid> { range.map(Uuid::from_u128).collect() };
    log.append_atomic(with_ids(1, 1..101)).await.unwrap();
    let (found, seen) = log
        .find_events_checked(&never_seen(200..210))
        .await
        .unwrap();
    assert!(found.is_empty());
    let seen = seen.expect("PostgreSQL says what its look-up saw");
    assert_eq!(seen.through(), 100);
    // Ids absent everywhere: stored without a look-up by id.
    let before = log.ids_looked_up();
    let fresh = with_ids(3, 300..310);
    let checked = ids_checked(seen, vec![], &fresh);
    log.append_atomic_checked(fresh, checked).await.unwrap();
    assert_eq!(log.ids_looked_up(), before, "the look-up answered for them");
    // Another process stores one of the batch's ids after the look-up.
    let other = PostgresStore::connect(&db.url, false)
        .await
        .expect("connect");
    let other_log = other.log("checked-school").expect("log");
    other_log
        .append_atomic(with_ids(2, 205..206))
        .await
        .unwrap();
    let refused = ids_checked(seen, vec![], &with_ids(3, 200..210));
    match log
        .append_atomic_checked(with_ids(3, 200..210), refused)
        .await
    {
        Err(StoreError::DuplicateEventId { position: 111, .. }) => {}
        other => panic!("expected DuplicateEventId at 111, got {other:?}"),
    }
    assert_eq!(log.ids_looked_up(), before);
    // An id the planner did not look up (minted) is looked up.
    let mut reused = with_ids(4, 400..402);
    reused[0].events[1].event_id = Uuid::from_u128(5);
    let checked = ids_checked(seen, vec![1], &reused);
    match log.append_atomic_checked(reused, checked).await {
        Err(StoreError::DuplicateEventId { position: 5, .. }) => {}
        other => panic!("expected DuplicateEventId at 5, got {other:?}"),
    }
    assert_eq!(log.ids_looked_up(), before + 1);
    // A look-up through another log is not taken for this one's.
    let (_, other_seen) = other_log
        .find_events_checked(&never_seen(200..210))
        .await
        .unwrap();
    let batch = with_ids(5, 500..510);
    let checked = ids_checked(other_seen.unwrap(), vec![], &batch);
    log.append_atomic_checked(batch, checked).await.unwrap();
    assert_eq!(log.ids_looked_up(), before + 11);
    // Appends sent together, grouped by the writer in one transaction as
    // a rule: checked by an earlier look-up (an id stored after it, and
    // before the other look-up), by a later one, and unchecked. The
    // writer reads the ids after the earliest look-up: the first is
    // refused, the other two stored.
    let (_, early) = log
        .find_events_checked(&never_seen(700..705))
        .await
        .unwrap();
    let early = early.unwrap();
    other_log
        .append_atomic(with_ids(8, 702..703))
        .await
        .unwrap();
    let stored_at = early.through() + 1;
    let (_, late) = log
        .find_events_checked(&never_seen(710..715))
        .await
        .unwrap();
    let late = late.unwrap();
    assert!(late.through() > early.through());
    let (a, b, c) = (
        with_ids(9, 700..705),
        with_ids(9, 710..715),
        with_ids(10, 720..725),
    );
    let (checked_a, checked_b) = (
        ids_checked(early, vec![], &a),
        ids_checked(late, vec![], &b),
    );
    // The writer held on the head's lock (taken here) by an append of its
    // own while the three are queued behind it: they are one group.
    let admin = admin(&db.url).await;
    admin
        .batch_execute("BEGIN; SELECT 1 FROM heads WHERE school = 'checked-school' FOR UPDATE")
        .await
        .expect("lock the head");
    let before = log.ids_looked_up();
    let blocker = {
        let log = log.clone();
        tokio::spawn(async move { log.append_atomic(with_ids(12, 740..741)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spawned =
        [(a, Some(checked_a)), (b, Some(checked_b)), (c, None)].map(|(requests, checked)| {
            let log = log.clone();
            tokio::spawn(async move {
                match checked {
                    Some(checked) => log.append_atomic_checked(requests, checked).await,
                    None => log.append_atomic(requests).await,
                }
            })
        });
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.batch_execute("COMMIT").await.expect("unlock");
    blocker.await.unwrap().unwrap();
    let [a, b, c] = spawned;
    let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
    match a {
        Err(StoreError::DuplicateEventId { position, .. }) if position == stored_at => {}
        other => panic!("expected DuplicateEventId at {stored_at}, got {other:?}"),
    }
    b.unwrap();
    c.unwrap();
    assert_eq!(
        log.ids_looked_up(),
        before + 6,
        "only the unchecked appends' ids"
    );
    let retries = log.writer_retries();
    // A look-up that saw more of the log than it now holds (restored
    // behind the writer's back): its ids are looked up.
    let head = log.head().await.unwrap().position;
    let ahead = seen_through(late, head + 100);
    let mut batch = with_ids(11, 730..733);
    batch[0].events[2].event_id = Uuid::from_u128(5);
    let checked = ids_checked(ahead, vec![], &batch);
    match log.append_atomic_checked(batch, checked).await {
        Err(StoreError::DuplicateEventId { position: 5, .. }) => {}
        other => panic!("expected DuplicateEventId at 5, got {other:?}"),
    }
    assert_eq!(
        log.writer_retries(),
        retries,
        "found by the look-up, not by the unique index and a retry"
    );
    // More events after a look-up than the writer reads (16 a checked
    // id), one of the batch's ids among the last of them: the ids are
    // looked up after all, and the batch is refused.
    let (_, seen) = log
        .find_events_checked(&never_seen(600..610))
        .await
        .unwrap();
    let seen = seen.unwrap();
    for chunk in 0..9u128 {
        let start = 10_000 + chunk * 1_000;
        other_log
            .append_atomic(with_ids(6, start..start + 1_000))
            .await
            .unwrap();
    }
    other_log
        .append_atomic(with_ids(7, 605..606))
        .await
        .unwrap();
    let last = seen.through() + 9_001;
    let before = log.ids_looked_up();
    let batch = with_ids(3, 600..610);
    let checked = ids_checked(seen, vec![], &batch);
    match log.append_atomic_checked(batch, checked).await {
        Err(StoreError::DuplicateEventId { position, .. }) if position == last => {}
        other => panic!("expected DuplicateEventId at {last}, got {other:?}"),
    }
    assert_eq!(log.ids_looked_up(), before + 10);
    assert_eq!(log.writer_retries(), retries);
    let report = log.verify(&|_| {}).await.unwrap();
    assert!(report.ok, "{report:?}");
}

/// A connection keeps its statements, each planned once for any values
/// from the table's size and statistics when first run, and PostgreSQL
/// keeps that plan until the table is analyzed. A look-up of ids first
/// run on a table of a few rows is planned for a few rows: every row of
/// the school read through the index and filtered. The log's connections
/// plan their statements again once the log has doubled, so the look-up
/// on the grown table reads by the ids (the table is never analyzed here,
/// as before autovacuum's first visit after a large import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_statements_are_planned_again_as_the_log_grows() {
    use uuid::Uuid;
    let Some(db) = test_db() else { return };
    let (store, _admin) = never_analyzed(&db.url).await;
    let log = store.log("growing-school").expect("log");
    let absent: Vec<Uuid> = (0..100u128)
        .map(|i| Uuid::from_u128(1 << 100 | i))
        .collect();
    fill_in_batches(log.as_ref(), 1, 2, 5).await;
    let touched = |text: String| {
        let plan: serde_json::Value = serde_json::from_str(&text).expect("json plan");
        rows_touched(&plan[0]["Plan"])
    };
    // Planned for a table of 10 rows: the school's rows read and the ids
    // filtered.
    let small = log.explain_find_events(&absent).await.unwrap();
    let plan: serde_json::Value = serde_json::from_str(&small).expect("json plan");
    assert!(
        filters_event_ids(&plan[0]["Plan"]),
        "PostgreSQL plans the look-up of a small table by its ids already: the test proves nothing: {small}"
    );
    let writer_plans = log.writer_plans();
    assert_eq!(writer_plans, 1, "the writer's connection planned once");
    fill_in_batches(log.as_ref(), 6, 10, 500).await;
    // The writer planned again as the log doubled: at 5,010 and 15,010.
    assert_eq!(log.writer_plans(), 3);
    log.find_events(&absent).await.unwrap();
    let grown = log.explain_find_events(&absent).await.unwrap();
    assert!(
        touched(grown.clone()) <= absent.len() as u64,
        "the look-up of {} ids touched {} rows of 30,010: {grown}",
        absent.len(),
        touched(grown.clone())
    );
    // On to 45,010 events: planned again at 35,010 only (its next doubling
    // is 30,020 and then 70,020), not every 10,000 events.
    fill_in_batches(log.as_ref(), 3, 10, 500).await;
    log.append_atomic(vec![req(pupil(0), vec![contact(1)])])
        .await
        .unwrap();
    assert_eq!(log.writer_plans(), 4);
}
