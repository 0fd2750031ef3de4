//! `casebook demo`: writes the generated school year through the same
//! validated append path as `import`, pupil group by pupil group, each
//! group one atomic append; pipelined (`import::Pipeline`): the next group
//! is generated and validated while the previous one is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use casebook_engine::import::{ImportError, ImportLine, Pipeline};
use casebook_engine::store::EventStore;

use crate::demo::{default_academic_year, generate, school_days, DemoOptions};
use crate::run::Ctx;
use crate::{progress, Failure};

/// Pupils validated and appended together. Each group is one atomic,
/// durable append of about 850 events, near the engine's group size
/// (`MAX_GROUP_EVENTS`): large enough to amortise the flush, small enough
/// that sled's memory stays flat (a sled batch keeps every node it copies
/// until it ends; see docs/performance.md).
const PUPILS_PER_APPEND: usize = 2;

/// Earliest `--year`: the engine refuses dates of birth before 1950, and
/// 2000 keeps every simulated pupil well clear of that.
const EARLIEST_DEMO_YEAR: i32 = 2000;

/// Upper bound on `--pupils`: a very large secondary has ~3,000 pupils; a
/// trust benchmarks with more, but a demo should not fill a disk by typo.
const MAX_DEMO_PUPILS: usize = 100_000;

pub(crate) async fn run(
    ctx: &mut Ctx,
    pupils: usize,
    seed: u64,
    year: Option<i32>,
) -> Result<(), Failure> {
    if pupils == 0 || pupils > MAX_DEMO_PUPILS {
        return Err(Failure::BadInput(format!(
            "--pupils must be between 1 and {MAX_DEMO_PUPILS}"
        )));
    }
    let store = ctx.store(true)?;
    let log: Arc<dyn EventStore> = store.log(&ctx.school)?;
    let head = log.head().await?;
    if head.position > 0 {
        return Err(Failure::BadInput(format!(
            "school {:?} in {} already holds {} events; the demo fills an empty school (pass a new --data or --school)",
            ctx.school,
            store.path().display(),
            head.position
        )));
    }
    let academic_year = year.unwrap_or_else(|| default_academic_year(ctx.today));
    if academic_year < EARLIEST_DEMO_YEAR {
        return Err(Failure::BadInput(format!(
            "--year {academic_year}: the demo simulates years from {EARLIEST_DEMO_YEAR} on (its pupils' dates of birth must be plausible)"
        )));
    }
    let school = ctx.school.clone();
    let ring = ctx.sealer(&school)?;
    let days = school_days(academic_year);
    let (Some(first_day), Some(last_day)) = (days.first().copied(), days.last().copied()) else {
        return Err(Failure::BadInput(format!(
            "no school days in academic year {academic_year}"
        )));
    };
    if last_day >= ctx.now.date_naive() {
        return Err(Failure::BadInput(format!(
            "academic year {academic_year}/{} has not finished yet; the demo records a complete past year",
            (academic_year + 1) % 100
        )));
    }
    let opts = DemoOptions {
        pupils,
        seed,
        academic_year,
        school: ctx.school.clone(),
    };
    eprintln!(
        "demo: {pupils} pupils, academic year {academic_year}/{:02} ({first_day} to {last_day}, {} school days), seed {seed}",
        (academic_year + 1) % 100,
        days.len()
    );
    let started = Instant::now();
    let bar = progress::bar(pupils as u64, "pupils");
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut group = Vec::with_capacity(PUPILS_PER_APPEND);
    let mut pupils_iter = generate(&opts).peekable();
    // Group k+1 is generated and validated while group k is written.
    let mut pipeline = Pipeline::new(log.as_ref(), &ctx.school, ctx.now);
    if let Some(r) = &ring {
        pipeline = pipeline.with_sealer(r.as_ref());
    }
    let refused = |err: ImportError, pupil: &str| match err {
        ImportError::Write(e) => Failure::from(e),
        err => Failure::Store(format!(
            "internal error: the demo generated an event the rules refuse for pupil {pupil}: {err}"
        )),
    };
    let mut told = false;
    while let Some(pupil) = pupils_iter.next() {
        group.push(pupil);
        if group.len() < PUPILS_PER_APPEND && pupils_iter.peek().is_some() {
            continue;
        }
        let in_group = group.len();
        let mut lines = Vec::with_capacity(group.iter().map(|p| p.events.len()).sum());
        let mut line = 0usize;
        for p in group.drain(..) {
            for e in p.events {
                line += 1;
                *counts.entry(e.event.type_name()).or_default() += 1;
                lines.push(ImportLine {
                    line,
                    pupil: p.reference.clone(),
                    occurred_at: e.occurred_at,
                    actor: e.actor,
                    id: Some(e.event_id),
                    school: None,
                    event: e.event,
                });
            }
        }
        if !told {
            // The school's events, estimated from its first pupils': the
            // store sizes its id table once for them (a hint only).
            let per_pupil = lines.len() as u64 / in_group.max(1) as u64;
            pipeline.expect_events(per_pupil.saturating_mul(pupils as u64));
            told = true;
        }
        let first = lines.first().map(|l| l.pupil.clone()).unwrap_or_default();
        // Validated while the previous group is written; returns once that
        // group is durable.
        let batch = pipeline
            .plan(lines)
            .await
            .map_err(|err| refused(err, &first))?;
        // The data keys its fields were sealed with are stored before it.
        crate::privacy::commit_keys(&ring)?;
        pipeline
            .submit(batch)
            .await
            .map_err(|err| refused(err, &first))?;
        bar.inc(in_group as u64);
    }
    pipeline
        .flush()
        .await
        .map_err(|err| refused(err, "(last group)"))?;
    let total = pipeline.events();
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let size = store.size_on_disk().unwrap_or(0);
    println!(
        "wrote {total} events for {pupils} pupils in {elapsed:.1}s ({:.0} events/s)",
        total as f64 / elapsed.max(1e-9)
    );
    println!(
        "store: {} ({:.1} MB on disk)",
        store.path().display(),
        size as f64 / 1e6
    );
    println!();
    println!("{:<32} {:>9}", "event type", "count");
    for (t, n) in &counts {
        println!("{t:<32} {n:>9}");
    }
    println!();
    println!("The demo year ended on {last_day}; to see caseload and reports as they stood then, add --today {last_day}.");
    Ok(())
}
