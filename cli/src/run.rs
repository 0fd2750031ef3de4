//! The commands: open the store, do the work, print the result.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use casebook_engine::import::{
    parse_line, parse_time, ImportError, ImportLine, Planner, PREFETCH_LINES,
};
use casebook_engine::store::{AppendRequest, EventStore};
use chrono::{DateTime, NaiveDate, Utc};

use crate::backend::Store;
use crate::input::{Line, Lines};
use crate::{progress, views, Cli, Command, Failure, Format};

/// Everything a command needs to reach its store.
pub(crate) struct Ctx {
    pub cli_format: Format,
    pub school: String,
    pub actor: Option<String>,
    pub today: NaiveDate,
    pub now: DateTime<Utc>,
    store: Option<Store>,
    data: std::path::PathBuf,
    database_url: Option<String>,
    engine: Option<crate::backend::Engine>,
    /// The access-checked log and actor, set by `staff::check_command`.
    pub(crate) session: Option<crate::staff::Session>,
    pub(crate) sealing: crate::privacy::Sealing,
    /// The command neither needs the stored event ids at once nor every
    /// event's location ([`Store::open_async`]'s `reads_little`).
    pub(crate) reads_little: bool,
}

impl Ctx {
    /// Opens the store (creating it when `create`).
    pub fn store(&mut self, create: bool) -> Result<Store, Failure> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let s = Store::open(
            &self.data,
            self.database_url.as_deref(),
            self.engine,
            create,
            self.reads_little,
        )?;
        self.store = Some(s.clone());
        Ok(s)
    }

    /// The directory that holds the store's key files (`keys/<school>/`):
    /// the sled store's own directory, or, on PostgreSQL, the `--data`
    /// directory of this machine (docs/security.md, "Key handling").
    pub(crate) fn key_root(&mut self) -> Result<std::path::PathBuf, Failure> {
        Ok(match self.store(false)? {
            Store::Sled(s) => s.path().to_path_buf(),
            Store::Segment(s) => s.path().to_path_buf(),
            Store::Postgres(..) => self.data.clone(),
        })
    }

    /// The `--engine` of this run, if given.
    pub(crate) fn engine(&self) -> Option<crate::backend::Engine> {
        self.engine
    }

    /// The PostgreSQL URL of this run, if any.
    pub(crate) fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// True when the command would have to create the embedded store: no
    /// database URL and no store directory yet.
    pub(crate) fn store_missing(&self) -> bool {
        self.store.is_none() && self.database_url.is_none() && !self.data.exists()
    }

    /// The log of `school` (default: --school).
    pub fn log(&mut self, school: Option<&str>) -> Result<Arc<dyn EventStore>, Failure> {
        let school = school.unwrap_or(&self.school).to_string();
        let store = self.store(false)?;
        Ok(store.log(&school)?)
    }

    /// The acting member of staff, or a usage error naming the command.
    pub fn require_actor(&self, command: &str) -> Result<String, Failure> {
        self.actor.clone().ok_or_else(|| {
            Failure::BadInput(format!(
                "{command} needs to know who is recording: pass --as STAFF or set CASEBOOK_ACTOR"
            ))
        })
    }

    /// Refuses formats a command cannot print.
    pub fn formats(&self, command: &str, allowed: &[Format]) -> Result<Format, Failure> {
        if allowed.contains(&self.cli_format) {
            Ok(self.cli_format)
        } else {
            Err(Failure::BadInput(format!(
                "{command} cannot print --format {:?}; it prints {}",
                self.cli_format,
                allowed
                    .iter()
                    .map(|f| format!("{f:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

pub(crate) async fn run(cli: Cli) -> Result<(), Failure> {
    casebook_engine::store::sled::validate_school(&cli.school)?;
    let now = Utc::now();
    // The commands that neither need the stored event ids at once nor
    // every event's location: their store opens the index with the ids and
    // the frame lengths left in its snapshot.
    //
    // The caseload, the reports and a rebuild fold the views (from their
    // checkpoints, or from the start) and append nothing; a correction's
    // entry is found in its pupil's stream. A timeline or an audit appends
    // only its `RecordViewed`, whose id it minted (`append_minted`); so
    // does an access refusal, a staff change and a `record` without
    // `--id`, an import whose lines carry no `id` (`ImportPlan::minted`),
    // and the one event an erasure, a legal hold, a retention run's
    // erasures or a transfer out records (`privacy::record_one`); an
    // export appends only its `RecordViewed`. A `record --id`, or an
    // import line's `id`, is looked up among the stored ones, which reads
    // them then.
    //
    // They read the log in position order (the caseload, the reports, a
    // rebuild, a retention run), a pupil's stream (a timeline, an audit,
    // an export, a `record`, an erasure, a legal hold, a transfer out:
    // each group of its frames walked once,
    // `SegmentOptions::locations_at_open`), the staff list (every
    // command's access check, a staff change), or their lines' pupils (an
    // import); a look-up by id (`record --id`, an import line's `id`)
    // walks the groups of its few candidates; past the walks a sparse
    // index allows (a day's register for the whole school, a retention
    // run that erases many pupils, a file whose ids are all stored
    // already), every location is read from the snapshot.
    let reads_little = matches!(
        cli.command,
        Command::Import { .. }
            | Command::Erase { .. }
            | Command::Hold { .. }
            | Command::Retention { .. }
            | Command::Export { .. }
            | Command::TransferOut { .. }
            | Command::Caseload { .. }
            | Command::Report { .. }
            | Command::Rebuild { .. }
            | Command::Timeline { .. }
            | Command::Audit { .. }
            | Command::Record { .. }
            | Command::Staff { .. }
    );
    let mut ctx = Ctx {
        cli_format: cli.format,
        school: cli.school.clone(),
        actor: cli.actor.clone(),
        today: cli.today.unwrap_or_else(|| now.date_naive()),
        now,
        store: None,
        data: cli.data.clone(),
        database_url: cli.database_url.clone(),
        engine: cli.engine,
        session: None,
        sealing: crate::privacy::Sealing::new(cli.key_file.clone()),
        reads_little,
    };
    crate::staff::check_command(&mut ctx, &cli.command).await?;
    match cli.command {
        Command::Init { admin, name } => {
            init(&mut ctx)?;
            match admin {
                Some(admin) => crate::staff::init_admin(&mut ctx, &admin, name.as_deref()).await,
                None => Ok(()),
            }
        }
        Command::Staff { command } => crate::staff::run(&mut ctx, command).await,
        Command::Demo { pupils, seed, year } => {
            crate::demo_cmd::run(&mut ctx, pupils, seed, year).await
        }
        Command::Import { file } => import(&mut ctx, &file).await,
        Command::Record {
            event_type,
            pupil,
            event_data,
            occurred_at,
            id,
        } => {
            record(
                &mut ctx,
                &event_type,
                &pupil,
                &event_data,
                occurred_at.as_deref(),
                id,
            )
            .await
        }
        Command::Verify => verify(&mut ctx).await,
        Command::Timeline {
            pupil,
            as_of,
            safeguarding_only,
            no_register_marks,
            purpose,
        } => {
            let as_of = as_of.as_deref().map(parse_as_of).transpose()?;
            let filter = views::TimelineFilter {
                safeguarding_only,
                no_register_marks,
            };
            views::timeline(&mut ctx, &pupil, as_of, filter, purpose).await
        }
        Command::Audit { pupil, purpose } => views::audit(&mut ctx, &pupil, purpose).await,
        Command::Caseload { keyworker } => views::caseload(&mut ctx, keyworker.as_deref()).await,
        Command::Report { report } => views::report(&mut ctx, report).await,
        Command::Rebuild { projection } => views::rebuild(&mut ctx, projection.as_deref()).await,
        Command::Copy { from, to } => crate::copy::run(&mut ctx, &from, &to).await,
        Command::Bench {
            events,
            writers,
            batch_events,
            backend,
            dir,
            no_seal_ahead,
            seal_whole,
        } => {
            let args = crate::bench::BenchArgs {
                events,
                writers,
                batch_events,
                backend,
                dir,
                seal_ahead: !no_seal_ahead,
                seal_whole,
            };
            crate::bench::run(&mut ctx, args).await
        }
        Command::Erase { pupil, reason } => crate::privacy::erase(&mut ctx, &pupil, &reason).await,
        Command::Hold {
            pupil,
            reason,
            lift,
        } => crate::privacy::hold(&mut ctx, &pupil, &reason, lift).await,
        Command::Retention { apply } => crate::privacy::retention(&mut ctx, apply).await,
        Command::Export {
            pupil,
            for_: _,
            purpose,
        } => crate::privacy::export(&mut ctx, &pupil, purpose).await,
        Command::TransferOut { pupil, to, out } => {
            crate::transfer::transfer_out(&mut ctx, &pupil, &to, out).await
        }
        Command::TransferIn {
            bundle,
            transfer_key,
            pupil,
        } => crate::transfer::transfer_in(&mut ctx, &bundle, transfer_key, pupil).await,
    }
}

/// `--as-of`: an RFC 3339 time, or a date meaning the end of that day (UTC):
/// "what did we know on 3 March" includes everything recorded that day.
fn parse_as_of(text: &str) -> Result<DateTime<Utc>, Failure> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let end = date
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .map(|t| t.and_utc());
        return end.ok_or_else(|| Failure::BadInput(format!("--as-of {text}: date out of range")));
    }
    parse_time("--as-of", text).map_err(Failure::BadInput)
}

fn init(ctx: &mut Ctx) -> Result<(), Failure> {
    let store = ctx.store(true)?;
    let log = store.log(&ctx.school)?;
    drop(log);
    println!(
        "store ready at {} (school {:?})",
        store.path().display(),
        ctx.school
    );
    Ok(())
}

fn import_failure(e: ImportError) -> Failure {
    if e.is_store_failure() {
        Failure::Store(e.to_string())
    } else {
        Failure::BadInput(e.to_string())
    }
}

/// Validates every line, then appends once per school. Nothing is written
/// unless every line is valid.
///
/// The lines are read and parsed on a thread of their own
/// ([`read_import_lines`]) while this one plans them: on a large file the
/// two took about the same time one after the other. The lines of the
/// command's school (`--school`) are planned as they come; any other
/// school's are kept and planned after the last line, as all were before. What is reported is what a
/// parse of every line followed by a plan of each school in name order
/// reports: a line that cannot be read stops the import before anything
/// else is looked at, and each school is then taken in name order (its log,
/// the actor's permission, its keys, its plan) until one fails. A plan made
/// early is used only once its school's turn has come.
async fn import(ctx: &mut Ctx, file: &str) -> Result<(), Failure> {
    let reader: Box<dyn BufRead + Send> = if file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::BadInput(format!("cannot open {file}: {e}")))?;
        Box::new(std::io::BufReader::new(f))
    };
    let store = ctx.store(true)?;
    let started = Instant::now();
    // Cleared when dropped, so that a refused file's error stands alone.
    let spinner =
        progress::spinner("validating lines").with_finish(indicatif::ProgressFinish::AndClear);
    let (tx, mut rx) = tokio::sync::mpsc::channel(PARSED_AHEAD);
    let reading = {
        let (file, school, spinner) = (file.to_string(), ctx.school.clone(), spinner.clone());
        std::thread::Builder::new()
            .name("casebook-parse".into())
            .spawn(move || read_import_lines(reader, &file, &school, &spinner, &tx))
            .map_err(|e| Failure::Store(format!("cannot start the line reader: {e}")))?
    };
    let mut kept: BTreeMap<String, Vec<Vec<ImportLine>>> = BTreeMap::new();
    let mut unreadable = None;
    // The command's own school is planned as its lines come: its log is
    // already open. A school named in the lines gets its log (created if
    // new) in its turn, after every line is read, so that a refused file
    // creates none. When the own school's log or keys cannot be had, its
    // lines are kept too, and its turn makes the same calls again.
    let own = ctx.school.clone();
    let own_ring = ctx.sealer(&own);
    let own_log = store.log(&own);
    let mut own_planner = match (&own_log, &own_ring) {
        (Ok(log), Ok(ring)) => {
            let planner = Planner::new(log.as_ref(), &own, ctx.now).with_known_facts();
            Some(match ring {
                Some(r) => planner.with_sealer(r.as_ref()),
                None => planner,
            })
        }
        _ => None,
    };
    let (mut own_lines, mut own_failed) = (false, None);
    while let Some(parsed) = rx.recv().await {
        match parsed {
            Parsed::Unreadable(f) => {
                unreadable = Some(f);
                break;
            }
            Parsed::Chunk(school, lines) => match own_planner.as_mut() {
                Some(planner) if school == own => {
                    own_lines = true;
                    if own_failed.is_none() {
                        own_failed = planner.add_many(lines).await.err();
                    }
                }
                _ => kept.entry(school).or_default().push(lines),
            },
        }
    }
    drop(rx);
    reading
        .join()
        .map_err(|_| Failure::Store("internal: the line reader stopped".into()))?;
    if let Some(f) = unreadable {
        return Err(f);
    }
    // The own school's keys and plan, if its lines were planned as they
    // came (its keys were had: it had a planner).
    let mut own_plan = match own_planner {
        Some(planner) if own_lines => {
            let plan = match own_failed {
                Some(e) => {
                    drop(planner);
                    Err(import_failure(e))
                }
                None => Ok(planner.finish()),
            };
            own_ring.ok().map(|ring| (ring, plan))
        }
        _ => None,
    };
    if own_plan.is_some() {
        kept.entry(own.clone()).or_default();
    }
    // Every school's lines valid before any of them is written.
    let mut plans = Vec::new();
    for (school, lines) in kept {
        let log: Arc<dyn EventStore> = store.log(&school)?;
        let (guarded, actor) = crate::staff::import_access(ctx, &school, log.clone()).await?;
        let (ring, plan) = match own_plan.take() {
            Some((ring, plan)) if school == own => (ring, plan?),
            other => {
                own_plan = other;
                let ring = ctx.sealer(&school)?;
                let mut planner = Planner::new(log.as_ref(), &school, ctx.now).with_known_facts();
                if let Some(r) = &ring {
                    planner = planner.with_sealer(r.as_ref());
                }
                // Chunk by chunk, each freed once planned: the same plan and
                // the same first error as all lines at once (`add_many` takes
                // them `PREFETCH_LINES` at a time either way).
                for chunk in lines {
                    planner.add_many(chunk).await.map_err(import_failure)?;
                }
                let plan = planner.finish();
                (ring, plan)
            }
        };
        plans.push((school, log, guarded, actor, plan, ring));
    }
    spinner.finish_and_clear();
    let to_write: usize = plans.iter().map(|(.., plan, _)| plan.events).sum();
    let writing = progress::working(&format!(
        "writing {} events",
        indicatif::HumanCount(to_write as u64)
    ));
    let mut imported = 0;
    let mut duplicates = 0;
    for (school, log, guarded, actor, mut plan, ring) in plans {
        imported += plan.events;
        duplicates += plan.duplicates;
        if let Some(why) = plan.known_note.take() {
            eprintln!("note: school {school}: {why}");
        }
        let known = plan.known.take();
        if !plan.requests.is_empty() {
            crate::privacy::commit_keys(&ring)?;
            guarded
                .append_import(&actor, plan, ctx.now)
                .await
                .map_err(|e| match e {
                    casebook_engine::access::AccessError::Store(e) => {
                        import_failure(ImportError::Write(e))
                    }
                    other => crate::staff::access_failure(other),
                })?;
        }
        // The facts the next import starts its pupils from. The import
        // is durable whatever happens here: a checkpoint not saved only
        // makes the next one read every pupil's history.
        if let Some(known) = known {
            if let Err(e) = casebook_engine::known::save(log.as_ref(), known).await {
                eprintln!("note: school {school}: the facts checkpoint could not be saved ({e}); the next import reads every pupil's history");
            }
        }
    }
    drop(writing);
    eprintln!("took {:.2}s", started.elapsed().as_secs_f64());
    println!("imported {imported} events ({duplicates} duplicates)");
    Ok(())
}

/// Chunks of parsed lines the reader may be ahead of the planner.
const PARSED_AHEAD: usize = 4;

/// What the line reader sends: up to [`PREFETCH_LINES`] lines of one
/// school, in file order, or the first line that cannot be read (the
/// reader stops there).
enum Parsed {
    Chunk(String, Vec<ImportLine>),
    Unreadable(Failure),
}

/// Reads and parses every line of an import, on the reader's thread.
/// Sends each school's lines in chunks as they fill, the part-filled ones
/// at the end; stops at the first line that cannot be read, or when the
/// planner has gone.
fn read_import_lines(
    reader: Box<dyn BufRead + Send>,
    file: &str,
    default_school: &str,
    spinner: &indicatif::ProgressBar,
    tx: &tokio::sync::mpsc::Sender<Parsed>,
) {
    let mut lines = Lines::new(reader);
    // In chunks of the lines `add_many` looks up at once: one `Vec` of
    // every line would be grown by doubling, copying the lines again.
    let mut filling: BTreeMap<String, Vec<ImportLine>> = BTreeMap::new();
    let mut counted = 0u64;
    loop {
        let (school, parsed) = match read_import_line(&mut lines, file, default_school) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(f) => {
                let _ = tx.blocking_send(Parsed::Unreadable(f));
                return;
            }
        };
        let full = match filling.entry(school) {
            Entry::Occupied(mut o) => {
                o.get_mut().push(parsed);
                (o.get().len() >= PREFETCH_LINES).then(|| {
                    let chunk = Vec::with_capacity(PREFETCH_LINES);
                    (o.key().clone(), std::mem::replace(o.get_mut(), chunk))
                })
            }
            Entry::Vacant(v) => {
                let mut chunk = Vec::with_capacity(PREFETCH_LINES);
                chunk.push(parsed);
                v.insert(chunk);
                None
            }
        };
        if let Some((school, chunk)) = full {
            if tx.blocking_send(Parsed::Chunk(school, chunk)).is_err() {
                return;
            }
        }
        // Counted a thousand at a time: the bar reads the clock at each
        // count (a tenth of the reader's time when counted line by line).
        counted += 1;
        if counted == 1_000 {
            spinner.inc(counted);
            counted = 0;
        }
    }
    spinner.inc(counted);
    for (school, chunk) in filling {
        if !chunk.is_empty() && tx.blocking_send(Parsed::Chunk(school, chunk)).is_err() {
            return;
        }
    }
}

/// The next line of an import and the school it is for, `None` at the end.
fn read_import_line<R: BufRead>(
    lines: &mut Lines<R>,
    file: &str,
    default_school: &str,
) -> Result<Option<(String, ImportLine)>, Failure> {
    let Some((n, line)) = lines
        .next_line()
        .map_err(|e| Failure::BadInput(format!("cannot read {file}: {e}")))?
    else {
        return Ok(None);
    };
    let text = match line {
        Line::Text(t) => t,
        Line::TooLong(len) => {
            return Err(Failure::BadInput(format!(
                "line {n}: line is {len} bytes, over the limit of {} bytes",
                casebook_engine::import::MAX_LINE_BYTES
            )))
        }
        Line::BadUtf8(at) => {
            return Err(Failure::BadInput(format!(
                "line {n}: not valid UTF-8 (bad byte at offset {at}); save the file as UTF-8"
            )))
        }
        Line::Bom => {
            return Err(Failure::BadInput(format!(
                "line {n}: starts with a byte order mark (BOM); save the file as UTF-8 without BOM"
            )))
        }
        Line::CrLf => {
            return Err(Failure::BadInput(format!(
                "line {n}: ends with CR LF (Windows line ending); JSONL lines end with LF only"
            )))
        }
        Line::Blank => {
            return Err(Failure::BadInput(format!(
                "line {n}: empty line; every line must be one JSON event"
            )))
        }
    };
    if n > casebook_engine::import::MAX_EVENTS_PER_IMPORT {
        return Err(Failure::BadInput(format!(
            "line {n}: more than {} lines in one import; split the file",
            casebook_engine::import::MAX_EVENTS_PER_IMPORT
        )));
    }
    let parsed = parse_line(n, &text).map_err(import_failure)?;
    let school = parsed
        .school
        .clone()
        .unwrap_or_else(|| default_school.to_string());
    Ok(Some((school, parsed)))
}

async fn record(
    ctx: &mut Ctx,
    event_type: &str,
    pupil: &str,
    data: &str,
    occurred_at: Option<&str>,
    id: Option<uuid::Uuid>,
) -> Result<(), Failure> {
    let actor = ctx.require_actor("record")?;
    let data: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| Failure::BadInput(format!("--data is not valid JSON: {e}")))?;
    let occurred_at = match occurred_at {
        Some(t) => parse_time("--occurred-at", t).map_err(Failure::BadInput)?,
        None => ctx.now,
    };
    // The same checks as an import line: build one and parse it.
    let mut line = serde_json::json!({
        "type": event_type, "pupil": pupil, "occurred_at": occurred_at.to_rfc3339(), "actor": actor, "data": data,
    });
    if let Some(id) = id {
        line["id"] = serde_json::json!(id);
    }
    let parsed = parse_line(1, &line.to_string())
        .map_err(|e| Failure::BadInput(strip_line(e.to_string())))?;
    let event_id_hint = parsed.id;
    // Permission first: a refused actor learns nothing from validation.
    {
        let now = ctx.now;
        let session = crate::staff::session(ctx)?;
        session
            .guarded
            .check_record(&session.actor, pupil, &parsed.event, now)
            .await
            .map_err(crate::staff::access_failure)?;
    }
    let now = ctx.now;
    let school = ctx.school.clone();
    // Validation reads the raw log (sealed fields as stored), as imports do.
    let log: Arc<dyn EventStore> = ctx.log(None)?;
    let ring = ctx.sealer(&school)?;
    let session = crate::staff::session(ctx)?;
    let plan = {
        let mut planner = Planner::new(log.as_ref(), &school, now);
        if let Some(r) = &ring {
            planner = planner.with_sealer(r.as_ref());
        }
        planner
            .add(parsed)
            .await
            .map_err(|e| match e.is_store_failure() {
                true => Failure::Store(e.to_string()),
                false => Failure::BadInput(strip_line(e.to_string())),
            })?;
        planner.finish()
    };
    if plan.requests.is_empty() {
        println!(
            "already recorded (id {} is stored with the same content)",
            event_id_hint.map(|i| i.to_string()).unwrap_or_default()
        );
        return Ok(());
    }
    let requests: Vec<AppendRequest> = plan.requests;
    let stream = requests[0].stream;
    let event_id = requests[0].events[0].event_id;
    crate::privacy::commit_keys(&ring)?;
    let mut done = Vec::with_capacity(requests.len());
    for request in requests {
        let guarded = &session.guarded;
        // Without `--id` the planner minted every id (UUID v7), so the
        // stored ids need not be read to append them.
        let appended = match event_id_hint {
            None => {
                guarded
                    .append_minted_for_pupil(&session.actor, pupil, request, now)
                    .await
            }
            Some(_) => {
                guarded
                    .append_for_pupil(&session.actor, pupil, request, now)
                    .await
            }
        };
        done.push(appended.map_err(crate::staff::access_failure)?);
    }
    debug_assert_eq!(done[0].stream, stream);
    println!(
        "recorded {event_type} for {pupil}: event {event_id} at position {}",
        done[0].last_position
    );
    Ok(())
}

/// `record` reports field errors without the synthetic "line 1: " prefix.
fn strip_line(text: String) -> String {
    text.strip_prefix("line 1: ")
        .map(str::to_string)
        .unwrap_or(text)
}

async fn verify(ctx: &mut Ctx) -> Result<(), Failure> {
    let format = ctx.formats("verify", &[Format::Text, Format::Json])?;
    let log = ctx.log(None)?;
    let head = log.head().await?;
    let bar = progress::bar(head.position, "verifying");
    let started = Instant::now();
    let report = log.verify(&|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Failure::Store(e.to_string()))?
        ),
        _ => {
            if report.ok {
                println!("ok: {} events, head {}", report.events, report.head);
            } else {
                let first = report.problems.first().map(|p| p.position).unwrap_or(0);
                println!(
                    "FAILED: first bad position {first} ({} events checked)",
                    report.events
                );
                for p in &report.problems {
                    println!("  position {}: {}", p.position, p.what);
                }
            }
        }
    }
    eprintln!("verified in {:.2}s", elapsed.as_secs_f64());
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Found)
    }
}
