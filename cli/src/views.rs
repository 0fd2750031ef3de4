//! The read commands: `timeline` and `audit` (per pupil, folded on demand,
//! each read written to the pupil's access log), `caseload` and the reports
//! (school-wide, from checkpointed projections), and `rebuild`.

use std::sync::Arc;

use casebook_engine::access::{may_read, Actor, Guarded, PupilRecord, ReadClass, View};
use casebook_engine::domain::academic_year;
use casebook_engine::store::EventStore;
use casebook_projections::chronology::Timeline;
use casebook_projections::{
    rebuild as rebuild_views, Attendance, AuditTrail, Behaviour, BehaviourDimension, Caseload,
    ForceLog, Interventions, ProjectionError, Reintegration, Suspensions,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::render::{self, cell, columns_of, table};
use crate::run::Ctx;
use crate::{progress, BehaviourBy, Failure, Format, ReportCommand};

pub(crate) fn projection_failure(e: ProjectionError) -> Failure {
    if e.is_store_failure() {
        Failure::Store(e.to_string())
    } else {
        Failure::BadInput(e.to_string())
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::Store(format!("cannot render the view: {e}")))
}

/// [`to_json`] of a value no longer needed once it is JSON: it is let go
/// here. A school-wide view is let go as soon as its report is made (the
/// report is made in a statement of its own), the report as soon as it is
/// JSON; on a large school each is tens of MB.
fn into_json<T: Serialize>(value: T) -> Result<Value, Failure> {
    to_json(&value)
}

/// Prints `doc` as pretty JSON and a newline: the bytes of
/// `serde_json::to_string_pretty`, written to stdout as they are made
/// rather than gathered into one string first (a school-wide report's text
/// is tens of MB on a large school).
fn print_json(doc: &Value) -> Result<(), Failure> {
    use std::io::Write as _;
    let failed = |e: &dyn std::fmt::Display| Failure::Store(format!("cannot write the view: {e}"));
    let mut out = std::io::BufWriter::with_capacity(OUT_BUFFER, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, doc).map_err(|e| failed(&e))?;
    out.write_all(b"\n").map_err(|e| failed(&e))?;
    out.flush().map_err(|e| failed(&e))
}

/// Bytes gathered before each write of a view's output to stdout.
const OUT_BUFFER: usize = 64 * 1024;

/// The array under `key` of `doc`, taken out of it (`doc` keeps `null`
/// there); empty if there is none. The printers change rows in place
/// instead of copying them: a school-wide report's rows, as JSON values,
/// are tens of MB on a large school.
fn take_rows(doc: &mut Value, key: &str) -> Vec<Value> {
    match doc.get_mut(key).map(Value::take) {
        Some(Value::Array(rows)) => rows,
        _ => Vec::new(),
    }
}

/// Reads a pupil's record through the engine's access check: the read is
/// logged (or the refusal is), and entries the actor may not see are
/// withheld, with a note on stderr saying how many.
async fn read_pupil(
    ctx: &mut Ctx,
    pupil: &str,
    view: View,
    purpose: Option<String>,
) -> Result<PupilRecord, Failure> {
    let now = ctx.now;
    let session = crate::staff::session(ctx)?;
    let record = session
        .guarded
        .read_pupil(&session.actor, pupil, view, purpose, now)
        .await
        .map_err(crate::staff::access_failure)?;
    if record.withheld > 0 {
        eprintln!(
            "note: {} entries withheld: {} ({}) may not read them",
            record.withheld,
            session.actor.staff,
            session.actor.roles_text()
        );
    }
    Ok(record)
}

/// Which entries of a chronology to show.
pub(crate) struct TimelineFilter {
    pub safeguarding_only: bool,
    pub no_register_marks: bool,
}

/// The timeline of `casebook timeline`, before it is rendered, and how
/// many entries were withheld: the pupil's case stream read through the
/// engine's access check (`Guarded::read_pupil_events`: checked, the read
/// logged to the access stream, entries the actor may not see withheld,
/// each payload decoded once), folded into the chronology. With
/// [`timeline_json`], what `--format json` prints and what `casebook
/// bench` times.
pub(crate) async fn timeline_doc(
    guarded: &Guarded,
    actor: &Actor,
    pupil: &str,
    as_of: Option<DateTime<Utc>>,
    filter: &TimelineFilter,
    purpose: Option<String>,
    now: DateTime<Utc>,
) -> Result<(Timeline, usize), Failure> {
    let record = guarded
        .read_pupil_events(actor, pupil, View::Timeline, purpose, now)
        .await
        .map_err(crate::staff::access_failure)?;
    let mut timeline = Timeline::build_owned(pupil, record.case, as_of, filter.safeguarding_only);
    if filter.no_register_marks {
        timeline
            .entries
            .retain(|e| e.event_type() != "AttendanceMarked");
    }
    Ok((timeline, record.withheld))
}

/// The text `casebook timeline --format json` prints (without the final
/// newline), written into `out` (cleared first): the same bytes as
/// `serde_json::to_string_pretty` of the chronology's JSON document.
pub(crate) fn timeline_json(timeline: &Timeline, out: &mut Vec<u8>) {
    out.clear();
    timeline.write_json_pretty(out);
}

pub(crate) async fn timeline(
    ctx: &mut Ctx,
    pupil: &str,
    as_of: Option<DateTime<Utc>>,
    filter: TimelineFilter,
    purpose: Option<String>,
) -> Result<(), Failure> {
    let format = ctx.formats(
        "timeline",
        &[
            Format::Text,
            Format::Json,
            Format::Csv,
            Format::Md,
            Format::Html,
        ],
    )?;
    let now = ctx.now;
    let session = crate::staff::session(ctx)?;
    let (doc, withheld) = timeline_doc(
        &session.guarded,
        &session.actor,
        pupil,
        as_of,
        &filter,
        purpose,
        now,
    )
    .await?;
    if withheld > 0 {
        eprintln!(
            "note: {withheld} entries withheld: {} ({}) may not read them",
            session.actor.staff,
            session.actor.roles_text()
        );
    }
    if format == Format::Json {
        let mut out = Vec::new();
        timeline_json(&doc, &mut out);
        out.push(b'\n');
        use std::io::Write;
        std::io::stdout()
            .write_all(&out)
            .map_err(|e| Failure::Store(format!("cannot write the timeline: {e}")))?;
        return Ok(());
    }
    let doc = doc
        .into_chronology()
        .into_json()
        .map_err(|e| Failure::Store(format!("cannot render the view: {e}")))?;
    match format {
        Format::Csv => print!("{}", render::timeline_csv(&doc)),
        Format::Md => print!("{}", render::timeline_md(&doc)),
        Format::Html => print!(
            "{}",
            render::timeline_html(&doc, &ctx.now.to_rfc3339(), &ctx.school)
        ),
        _ => print!("{}", render::timeline_text(&doc)),
    }
    Ok(())
}

pub(crate) async fn audit(
    ctx: &mut Ctx,
    pupil: &str,
    purpose: Option<String>,
) -> Result<(), Failure> {
    let format = ctx.formats("audit", &[Format::Text, Format::Json])?;
    // Checked and logged by the engine first, so the audit shows this
    // reading too.
    let record = read_pupil(ctx, pupil, View::Audit, purpose).await?;
    let trail = AuditTrail::build(pupil, &record.case, &record.access);
    let mut doc = to_json(&trail)?;
    drop(trail);
    if format == Format::Json {
        return print_json(&doc);
    }
    let mut rows = take_rows(&mut doc, "events");
    println!(
        "Audit trail of {pupil}: {} events in stream order\n",
        rows.len()
    );
    for r in &mut rows {
        let short: String = r["hash"].as_str().unwrap_or("").chars().take(16).collect();
        r["hash"] = Value::String(short);
    }
    print!(
        "{}",
        table(
            &rows,
            &[
                ("version", "v"),
                ("position", "pos"),
                ("recorded_at", "recorded at"),
                ("occurred_at", "occurred at"),
                ("actor", "by"),
                ("type", "type"),
                ("hash", "hash (first 16)"),
                ("summary", "summary"),
            ]
        )
    );
    let access = take_rows(&mut doc, "access_log");
    println!("\nAccess log: {} readings\n", access.len());
    print!(
        "{}",
        table(
            &access,
            &[
                ("viewed_at", "when"),
                ("who", "who"),
                ("view", "view"),
                ("purpose", "purpose"),
                ("refused", "refused because"),
                ("position", "pos")
            ]
        )
    );
    Ok(())
}

/// Loads the one school-wide view a command shows, caught up from its own
/// checkpoint (the others are caught up when they are next shown, or by
/// `rebuild`, or in the same pass when this one is far behind the head:
/// `casebook_projections::load_one`).
pub(crate) async fn school_view<P: casebook_projections::Projection>(
    log: &Arc<dyn EventStore>,
) -> Result<P, Failure> {
    let bar = progress::bar(0, "projecting");
    let loaded = casebook_projections::load_one::<P>(log.as_ref(), &|at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(projection_failure)?;
    bar.finish_and_clear();
    if let Some(n) = &loaded.not_saved {
        // Derived data: shown all the same; the next run folds again what
        // this one folded.
        eprintln!(
            "note: the {} view is shown, but its checkpoint was not saved: {}",
            n.projection, n.reason
        );
    }
    // This view's and those brought along its fold: a checkpoint that
    // could not be used is said once, by the command that rebuilt it.
    for r in loaded.restarted.iter().chain(&loaded.others_restarted) {
        if !matches!(
            r.reason,
            casebook_projections::runner::RestartReason::NoCheckpoint
        ) {
            eprintln!(
                "note: {} rebuilt from the start ({})",
                r.projection, r.reason
            );
        }
    }
    Ok(loaded.view)
}

pub(crate) async fn caseload(ctx: &mut Ctx, keyworker: Option<&str>) -> Result<(), Failure> {
    let format = ctx.formats("caseload", &[Format::Text, Format::Json])?;
    let log = ctx.log(None)?;
    // The view is let go once its report is made, and the report once it
    // is JSON: on a large school each is tens of MB.
    let cases = school_view::<Caseload>(&log)
        .await?
        .cases(ctx.today, keyworker);
    let mut doc = to_json(&cases)?;
    drop(cases);
    if let Some(session) = &ctx.session {
        // A safeguarding case is itself safeguarding information: shown
        // only to those who may read safeguarding entries.
        if !may_read(&session.actor, ReadClass::Safeguarding, false) {
            hide_safeguarding_cases(&mut doc);
        }
    }
    crate::privacy::unseal_doc(ctx, log.as_ref(), &mut doc).await?;
    if format == Format::Json {
        return print_json(&doc);
    }
    let mut rows = take_rows(&mut doc, "cases");
    let overdue = rows.iter().filter(|c| c["overdue"] == true).count();
    println!(
        "{} open cases, {overdue} with an overdue review (as of {})\n",
        rows.len(),
        ctx.today
    );
    for r in &mut rows {
        r["open_plans"] = Value::String(list_of(&r["open_plans"], "plan"));
        r["open_interventions"] = Value::String(list_of(&r["open_interventions"], "intervention"));
        r["overdue"] = Value::String(if r["overdue"] == true {
            "OVERDUE".into()
        } else {
            String::new()
        });
        let day: String = r["last_activity"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(10)
            .collect();
        r["last_activity"] = Value::String(day);
    }
    print!(
        "{}",
        table(
            &rows,
            &[
                ("pupil", "pupil"),
                ("keyworker", "keyworker"),
                ("case_types", "cases"),
                ("next_review_due", "next review"),
                ("overdue", ""),
                ("open_plans", "open plans"),
                ("open_interventions", "interventions"),
                ("last_activity", "last activity"),
            ]
        )
    );
    Ok(())
}

/// Removes `safeguarding` from every case's types, and the cases left with
/// no type.
fn hide_safeguarding_cases(doc: &mut Value) {
    if let Some(cases) = doc.get_mut("cases").and_then(Value::as_array_mut) {
        cases.retain_mut(
            |c| match c.get_mut("case_types").and_then(Value::as_array_mut) {
                Some(types) if types.iter().any(|t| t == "safeguarding") => {
                    types.retain(|t| t != "safeguarding");
                    !types.is_empty()
                }
                _ => true,
            },
        );
    }
}

/// `a, b, c` from a list of objects' `key` fields.
fn list_of(list: &Value, key: &str) -> String {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| cell(i.get(key).unwrap_or(i)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Table columns: (JSON key, heading).
type Columns<'a> = &'a [(&'a str, &'a str)];

/// Prints a report's title and its document's scalar fields (not
/// `rows_key`, nor any list), then a blank line.
fn print_header(title: &str, doc: &Value, rows_key: &str) {
    println!("{title}");
    if let Value::Object(m) = doc {
        for (k, v) in m {
            if k != rows_key && !v.is_array() {
                println!("  {k}: {}", cell(v));
            }
        }
    }
    println!();
}

/// Prints a report document: its scalar fields as a header, then `rows_key`
/// as a table of all its columns (a report with columns of its own prints
/// through [`print_tabled`]).
fn print_report(title: &str, doc: &Value, rows_key: &str) {
    print_header(title, doc, rows_key);
    let rows = doc
        .get(rows_key)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let cols = columns_of(rows);
    let pairs: Vec<(&str, &str)> = cols.iter().map(|c| (c.as_str(), c.as_str())).collect();
    print!("{}", table(rows, &pairs));
}

/// Rows of a report made JSON, unsealed and turned into table cells at a
/// time ([`print_report_rows`]).
const ROWS_AT_ONCE: usize = 1_024;

/// Prints a report as [`print_report`] prints its document, from `head`
/// (the report's document without its rows) and its typed `rows`, each
/// made JSON, unsealed and turned into cells [`ROWS_AT_ONCE`] at a time:
/// the same text, without the document of every row at once (~48 MB of
/// the 24,000 rows of a large school's attendance report, where the
/// typed rows are ~4 MB).
async fn print_report_rows<R: Serialize>(
    ctx: &mut Ctx,
    log: &dyn EventStore,
    title: &str,
    mut head: Value,
    rows_key: &str,
    rows: Vec<R>,
    columns: Columns<'_>,
) -> Result<(), Failure> {
    crate::privacy::unseal_doc(ctx, log, &mut head).await?;
    print_header(title, &head, rows_key);
    drop(head);
    if rows.is_empty() {
        println!("(none)");
        return Ok(());
    }
    let mut cells = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter();
    loop {
        let chunk = rows
            .by_ref()
            .take(ROWS_AT_ONCE)
            .map(|r| to_json(&r))
            .collect::<Result<Vec<Value>, Failure>>()?;
        if chunk.is_empty() {
            break;
        }
        let mut chunk = Value::Array(chunk);
        crate::privacy::unseal_doc(ctx, log, &mut chunk).await?;
        if let Value::Array(chunk) = &chunk {
            cells.extend(chunk.iter().map(|r| render::row_cells(r, columns)));
        }
    }
    print!("{}", render::table_of(cells, columns));
    Ok(())
}

/// Prints a report with a table of its `rows`: in text its rows a chunk
/// at a time ([`print_report_rows`]), else its whole document, unsealed,
/// as every report's.
#[allow(clippy::too_many_arguments)]
async fn print_tabled<T: Serialize, R: Serialize>(
    ctx: &mut Ctx,
    log: &dyn EventStore,
    format: Format,
    title: &str,
    mut report: T,
    rows: fn(&mut T) -> &mut Vec<R>,
    rows_key: &str,
    columns: Columns<'_>,
) -> Result<(), Failure> {
    if format != Format::Text {
        let mut doc = into_json(report)?;
        crate::privacy::unseal_doc(ctx, log, &mut doc).await?;
        return print_json(&doc);
    }
    let rows = std::mem::take(rows(&mut report));
    let head = into_json(report)?;
    print_report_rows(ctx, log, title, head, rows_key, rows, columns).await
}

const BEHAVIOUR_COLUMNS: Columns<'static> = &[
    ("key", "group"),
    ("incidents", "incidents"),
    ("pupils", "pupils"),
    ("serious", "severity 4-5"),
];

const ATTENDANCE_COLUMNS: Columns<'static> = &[
    ("pupil", "pupil"),
    ("class", "class"),
    ("possible_sessions", "possible"),
    ("present", "present"),
    ("authorised", "auth."),
    ("unauthorised", "unauth."),
    ("attendance_pct", "attendance %"),
    ("persistent", "persistent"),
    ("severe", "severe"),
];

const SUSPENSION_COLUMNS: Columns<'static> = &[
    ("pupil", "pupil"),
    ("suspensions", "suspensions"),
    ("days", "days"),
    ("remaining_days", "days left"),
    ("over_limit", "over limit"),
    ("reason_codes", "reasons"),
    ("board", "governing board"),
    ("permanent_exclusions", "permanent exclusion"),
];

pub(crate) async fn report(ctx: &mut Ctx, which: ReportCommand) -> Result<(), Failure> {
    let format = ctx.formats("report", &[Format::Text, Format::Json])?;
    let log = ctx.log(None)?;
    let year = academic_year(ctx.today);
    let (mut doc, title, rows_key): (Value, String, &str) = match which {
        ReportCommand::Behaviour { by } => {
            let dim = match by {
                BehaviourBy::Category => BehaviourDimension::Category,
                BehaviourBy::Location => BehaviourDimension::Location,
                BehaviourBy::Class => BehaviourDimension::Class,
                BehaviourBy::Site => BehaviourDimension::Site,
                BehaviourBy::Week => BehaviourDimension::Week,
            };
            let report = school_view::<Behaviour>(&log).await?.by(dim, None);
            let title = format!("Incidents by {}", dim.as_str());
            return print_tabled(
                ctx,
                log.as_ref(),
                format,
                &title,
                report,
                |r| &mut r.groups,
                "groups",
                BEHAVIOUR_COLUMNS,
            )
            .await;
        }
        ReportCommand::Attendance { persistent } => {
            let report = school_view::<Attendance>(&log)
                .await?
                .report(year, persistent);
            let title = format!(
                "Attendance {year}/{:02}{}",
                (year + 1) % 100,
                if persistent {
                    " — persistent and severe absence"
                } else {
                    ""
                }
            );
            return print_tabled(
                ctx,
                log.as_ref(),
                format,
                &title,
                report,
                |r| &mut r.pupils,
                "pupils",
                ATTENDANCE_COLUMNS,
            )
            .await;
        }
        ReportCommand::Suspensions => {
            let report = school_view::<Suspensions>(&log).await?.report(year);
            let title = format!(
                "Suspensions {year}/{:02} against the 45-day limit",
                (year + 1) % 100
            );
            return print_tabled(
                ctx,
                log.as_ref(),
                format,
                &title,
                report,
                |r| &mut r.pupils,
                "pupils",
                SUSPENSION_COLUMNS,
            )
            .await;
        }
        ReportCommand::Force => (
            {
                let report = school_view::<ForceLog>(&log).await?.report(None);
                into_json(report)?
            },
            "Reasonable-force log".to_string(),
            "uses",
        ),
        ReportCommand::Interventions => (
            {
                let report = school_view::<Interventions>(&log).await?.report();
                into_json(report)?
            },
            "Intervention outcomes by kind".to_string(),
            "kinds",
        ),
        ReportCommand::Reintegration => (
            {
                let report = school_view::<Reintegration>(&log).await?.report();
                into_json(report)?
            },
            "Reintegration after removal from school".to_string(),
            "awaiting",
        ),
    };
    crate::privacy::unseal_doc(ctx, log.as_ref(), &mut doc).await?;
    if format == Format::Json {
        return print_json(&doc);
    }
    print_report(&title, &doc, rows_key);
    Ok(())
}

pub(crate) async fn rebuild(ctx: &mut Ctx, only: Option<&str>) -> Result<(), Failure> {
    let format = ctx.formats("rebuild", &[Format::Text, Format::Json])?;
    let log = ctx.log(None)?;
    let bar = progress::bar(0, "rebuilding");
    let started = std::time::Instant::now();
    let report = rebuild_views(log.as_ref(), only, &|at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(projection_failure)?;
    bar.finish_and_clear();
    if format == Format::Json {
        return print_json(&to_json(&report)?);
    }
    println!(
        "rebuilt {} from {} events (up to position {}) in {:.2}s",
        report.projections.join(", "),
        report.events,
        report.position,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
