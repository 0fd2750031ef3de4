//! casebook-cli: the `casebook` command line (CONTRACT.md), as a library so
//! the root package's binary and the integration tests share it.
//!
//! Exit codes: 0 success, 1 the check or query found a problem, 2 bad input
//! or usage (nothing written), 3 store error.
//!
//! Architecture Invariant: the CLI never writes to a store except through
//! the engine's append path (`EventStore::append*`) and checkpoints; every
//! command that records validates through `casebook_engine::import`.

mod backend;
mod bench;
mod bench_pg;
mod bench_segment;
mod bench_timeline;
mod copy;
pub mod demo;
mod demo_cmd;
mod input;
mod privacy;
mod progress;
mod render;
mod run;
mod staff;
mod transfer;
mod views;

pub use staff::StaffCommand;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};

/// Output formats. `csv`, `md` and `html` are for `timeline` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
    Md,
    Html,
}

#[derive(Parser, Debug)]
#[command(
    name = "casebook",
    version,
    about = "Event-sourced case records for pastoral, behaviour and safeguarding work in schools",
    long_about = "casebook appends every action on a pupil's case as an immutable, hash-chained event and rebuilds timelines, caseloads, audit trails and reports from that log.\n\nExit codes: 0 success, 1 a check or query found a problem, 2 bad input or usage (nothing written), 3 store error."
)]
pub struct Cli {
    /// Directory of the embedded store.
    #[arg(
        long,
        global = true,
        env = "CASEBOOK_DATA",
        default_value = "./casebook-data"
    )]
    pub data: PathBuf,
    /// PostgreSQL connection URL (selects the PostgreSQL backend instead of --data).
    #[arg(
        long,
        global = true,
        env = "CASEBOOK_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Engine of a NEW embedded store at --data: sled or segment (an
    /// existing store's engine is detected; docs/storage.md).
    #[arg(long, global = true, env = "CASEBOOK_ENGINE", value_enum)]
    pub engine: Option<backend::Engine>,
    /// The school (log) inside the store.
    #[arg(
        long,
        global = true,
        env = "CASEBOOK_SCHOOL",
        default_value = "default"
    )]
    pub school: String,
    /// Who is acting (staff reference); reads of a pupil's record are logged under it.
    #[arg(
        long = "as",
        global = true,
        env = "CASEBOOK_ACTOR",
        value_name = "STAFF"
    )]
    pub actor: Option<String>,
    /// The date overdue flags and the academic year are judged by (default: today).
    #[arg(long, global = true, value_name = "DATE")]
    pub today: Option<NaiveDate>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub format: Format,
    /// File holding the store's master key (32 bytes, hex or base64): seals
    /// personal data per pupil (docs/security.md). CASEBOOK_MASTER_KEY may
    /// hold the key itself instead.
    #[arg(long, global = true, env = "CASEBOOK_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the store (idempotent); with --admin, register the first admin
    /// of the staff directory (from then on every command is checked).
    Init {
        /// Staff reference of the first admin (bootstraps the staff directory).
        #[arg(long, value_name = "STAFF")]
        admin: Option<String>,
        /// The admin's name (default: the reference).
        #[arg(long, requires = "admin")]
        name: Option<String>,
    },
    /// Fill the store with a realistic synthetic school year.
    Demo {
        /// Number of pupils.
        #[arg(long, default_value_t = 1000)]
        pupils: usize,
        /// Seed of the generator: the same seed gives the same school.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Academic year to simulate, by its starting calendar year (default:
        /// the last complete year before --today).
        #[arg(long)]
        year: Option<i32>,
    },
    /// Append JSONL events from FILE (`-` = stdin), all or nothing.
    Import {
        /// The JSONL file, or `-` for standard input.
        file: String,
    },
    /// Append one event.
    #[command(
        override_usage = "casebook [--data DIR] record TYPE --pupil REF --data JSON [--occurred-at TIME] [--id UUID] --as STAFF",
        after_help = "After `record`, --data is the event's JSON object (as in the contract). Give the store directory before the command name or in CASEBOOK_DATA."
    )]
    Record {
        /// Event type (docs/events.md), e.g. IncidentRecorded.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// The pupil's reference.
        #[arg(long)]
        pupil: String,
        /// The event's fields as a JSON object. Written `--data JSON` as in
        /// the contract (after the command name, `--data` is the event's
        /// data; give the store as `--data DIR` before `record` or in
        /// CASEBOOK_DATA). `--json` is the same.
        #[arg(long = "json", value_name = "JSON")]
        event_data: String,
        /// When it happened (RFC 3339; default: now).
        #[arg(long)]
        occurred_at: Option<String>,
        /// Idempotency key (UUID).
        #[arg(long)]
        id: Option<uuid::Uuid>,
    },
    /// A pupil's chronology, ordered by when things happened.
    Timeline {
        /// The pupil's reference.
        pupil: String,
        /// Only what was recorded up to this time (RFC 3339, or a date = end of that day UTC).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Only safeguarding entries.
        #[arg(long)]
        safeguarding_only: bool,
        /// Leave out register marks (AttendanceMarked), which are most of a
        /// pupil's entries and rarely what a chronology reader wants.
        #[arg(long)]
        no_register_marks: bool,
        /// Why the record is being read (written to the access log).
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Every event of a pupil in stream order with actor, recorded_at and hash, plus who viewed the record.
    Audit {
        /// The pupil's reference.
        pupil: String,
        /// Why the record is being read (written to the access log).
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Open cases with keyworker, plans, next review and overdue flag.
    Caseload {
        /// Only this keyworker's cases.
        #[arg(long, value_name = "STAFF")]
        keyworker: Option<String>,
    },
    /// School reports.
    Report {
        #[command(subcommand)]
        report: ReportCommand,
    },
    /// Recompute the hash chain and indexes.
    Verify,
    /// Rebuild projections from the log.
    Rebuild {
        /// One projection (default: all).
        projection: Option<String>,
    },
    /// Copy a school's log (--school) between stores unchanged: positions and hashes are kept, both sides are verified.
    Copy {
        /// Source: a store directory or a postgres:// URL.
        #[arg(long, value_name = "DIR|URL")]
        from: String,
        /// Destination (must hold no events of the school): a store directory or a postgres:// URL.
        #[arg(long, value_name = "DIR|URL")]
        to: String,
    },
    /// The staff directory: who may use this store, with which roles (docs/security.md).
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Measure this machine: fsync and raw-backend ceilings, import, appends,
    /// replay, timelines, memory and disk, in a temporary store
    /// (docs/performance.md). Ignores --data.
    Bench {
        /// Events to import (demo-like, across many pupils).
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Concurrent writers of the concurrent-append phase.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Events per import append and per raw batch (default 1,024, the
        /// same for every backend).
        #[arg(long, value_name = "N")]
        batch_events: Option<usize>,
        /// The backend to measure. `postgres` uses the server of
        /// --database-url, in scratch databases it drops at the end.
        #[arg(long, value_enum, default_value = "segment")]
        backend: bench::BenchBackend,
        /// Where to create the temporary directory (default: the system's
        /// temporary directory); the filesystem is part of what is measured.
        /// A run needs about 330 bytes an event there on the segment engine
        /// (1,300 on sled), checked before anything is written.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Import without sealing batches ahead on the importing thread
        /// (the writer seals each batch itself): the import as it was
        /// before sealing ahead, for comparing the two with one binary.
        #[arg(long)]
        no_seal_ahead: bool,
        /// Seal each batch ahead whole on the importing thread, however
        /// long the writer waits for it, instead of only until the batch in
        /// flight is answered (the writer sealing the rest): the import as
        /// it was before, for comparing the two with one binary.
        #[arg(long, conflicts_with = "no_seal_ahead")]
        seal_whole: bool,
    },
    /// Erase a pupil's personal data: record PupilErased and destroy their data keys.
    Erase {
        /// The pupil's reference.
        pupil: String,
        /// Why (kept in the clear: no personal data).
        #[arg(long)]
        reason: String,
    },
    /// Put a pupil's record under a legal hold (it cannot be erased), or lift it.
    Hold {
        /// The pupil's reference.
        pupil: String,
        #[arg(long)]
        reason: String,
        /// Lift the hold instead of applying it.
        #[arg(long)]
        lift: bool,
    },
    /// Pupils whose retention period has ended (IRMS toolkit), by record type; --apply erases them.
    Retention {
        /// Erase every listed pupil not under a legal hold.
        #[arg(long)]
        apply: bool,
    },
    /// Subject-access export of a pupil's record, third parties redacted (--format json|html).
    Export {
        /// The pupil's reference.
        pupil: String,
        /// Who the export is for (only `subject` for now).
        #[arg(long = "for", value_enum, default_value = "subject")]
        for_: ExportFor,
        /// Why the record is being read (written to the access log).
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Write a pupil's record as a signed transfer bundle for another school.
    TransferOut {
        /// The pupil's reference.
        pupil: String,
        /// The receiving school.
        #[arg(long)]
        to: String,
        /// The bundle file (default: PUPIL-to-SCHOOL.cbt).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a transfer bundle and import it.
    TransferIn {
        /// The bundle file.
        bundle: PathBuf,
        /// The transfer key printed by transfer-out (sent separately).
        #[arg(long, env = "CASEBOOK_TRANSFER_KEY", hide_env_values = true)]
        transfer_key: Option<String>,
        /// The pupil's reference in this school (default: the sender's).
        #[arg(long)]
        pupil: Option<String>,
    },
}

/// Who a `casebook export` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFor {
    /// The data subject (or a parent acting for them): third parties redacted.
    Subject,
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Incident counts.
    Behaviour {
        #[arg(long, value_enum, default_value = "category")]
        by: BehaviourBy,
    },
    /// Attendance % per pupil, with persistent (>=10% missed) and severe (>=50%) absence.
    Attendance {
        /// Only persistently (or severely) absent pupils.
        #[arg(long)]
        persistent: bool,
    },
    /// Suspension days per pupil this academic year against the 45-day limit; permanent exclusions.
    Suspensions,
    /// The reasonable-force log.
    Force,
    /// Intervention outcomes by kind.
    Interventions,
    /// Reintegration after suspensions, exclusions and alternative provision.
    Reintegration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BehaviourBy {
    Category,
    Location,
    Class,
    Site,
    Week,
}

/// How a command ended, mapped to the contract's exit codes.
#[derive(Debug)]
pub enum Failure {
    /// The check or query found a problem (exit 1); already reported.
    Found,
    /// Bad input or usage (exit 2); nothing was written.
    BadInput(String),
    /// The store failed (exit 3).
    Store(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Found => 1,
            Failure::BadInput(_) => 2,
            Failure::Store(_) => 3,
        }
    }
}

impl From<casebook_engine::StoreError> for Failure {
    fn from(e: casebook_engine::StoreError) -> Failure {
        if e.is_store_failure() {
            Failure::Store(e.to_string())
        } else {
            Failure::BadInput(e.to_string())
        }
    }
}

/// Entry point of the `casebook` binary.
pub fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`casebook timeline P1 | head`) instead of panicking on EPIPE.
    // SAFETY: called first in main, before any thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse_from(record_data_args(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 0 for --help/--version and 2 for usage errors,
            // which is the contract's "bad usage" code.
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    run_cli(cli)
}

/// Global flags that take a value, for finding the command name.
const VALUE_FLAGS: &[&str] = &[
    "--data",
    "--database-url",
    "--school",
    "--as",
    "--today",
    "--format",
    "--key-file",
];

/// CONTRACT.md gives `record TYPE --pupil REF --data JSON` while `--data DIR`
/// is also the global store flag. After the `record` command name, `--data`
/// is the event's data: rewritten here to `--json` before clap sees it.
pub fn record_data_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while i < args.len() {
        let Some(token) = args[i].to_str() else {
            return args;
        };
        if token == "--" {
            return args;
        }
        if token.starts_with('-') {
            let takes_value = VALUE_FLAGS.contains(&token);
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        if token != "record" {
            return args;
        }
        for a in args.iter_mut().skip(i + 1) {
            match a.to_str() {
                Some("--data") => *a = "--json".into(),
                Some(t) if t.starts_with("--data=") => {
                    *a = format!("--json={}", &t["--data=".len()..]).into()
                }
                _ => {}
            }
        }
        return args;
    }
    args
}

/// Runs a parsed command line and returns its exit code.
pub fn run_cli(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            match &failure {
                Failure::Found => {}
                Failure::BadInput(m) | Failure::Store(m) => eprintln!("error: {m}"),
            }
            ExitCode::from(failure.code())
        }
    }
}
