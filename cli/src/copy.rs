//! `casebook copy --from SRC --to DST`: moves one school's log between
//! backends (a store directory or a `postgres://` URL on either side)
//! unchanged — same positions, times, bytes and hashes — so `verify` passes
//! on both sides and the heads are equal.
//!
//! The source is verified before anything is written; the destination must
//! hold no events of that school; the copy is verified afterwards.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use casebook_engine::envelope::hex;
use casebook_engine::store::{EventStore, Head, VerifyReport, MAX_READ_PAGE};

use crate::backend::{describe_url, is_database_url, Engine, Store};
use crate::run::Ctx;
use crate::{progress, Failure};

fn describe(target: &str) -> String {
    if is_database_url(target) {
        describe_url(target)
    } else {
        format!("store {target}")
    }
}

async fn open(target: &str, engine: Option<Engine>, create: bool) -> Result<Store, Failure> {
    if is_database_url(target) {
        Store::open_async(Path::new(""), Some(target), None, create, false).await
    } else {
        Store::open_async(Path::new(target), None, engine, create, false).await
    }
}

async fn verified(log: &dyn EventStore, side: &str, what: &str) -> Result<VerifyReport, Failure> {
    let head = log.head().await?;
    let bar = progress::bar(head.position, "verifying");
    let report = log.verify(&|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if !report.ok {
        for p in &report.problems {
            eprintln!("  {side} position {}: {}", p.position, p.what);
        }
        return Err(Failure::Store(format!(
            "{what} does not verify (first bad position {}); nothing more is copied",
            report.problems.first().map(|p| p.position).unwrap_or(0)
        )));
    }
    Ok(report)
}

pub(crate) async fn run(ctx: &mut Ctx, from: &str, to: &str) -> Result<(), Failure> {
    let school = ctx.school.clone();
    if from == to {
        return Err(Failure::BadInput(
            "--from and --to name the same store; copy needs two different ones".into(),
        ));
    }
    let started = Instant::now();
    let source = open(from, None, false).await?;
    let destination = open(to, ctx.engine(), true).await?;
    let src: Arc<dyn EventStore> = source.log(&school)?;
    let src_head = src.head().await?;
    if src_head.position == 0 {
        return Err(Failure::BadInput(format!(
            "school {school:?} has no events in {}; nothing to copy (pass --school)",
            describe(from)
        )));
    }
    verified(
        src.as_ref(),
        "source",
        &format!("the source ({})", describe(from)),
    )
    .await?;
    let held = match &destination {
        Store::Sled(s) => s.stored_head(&school)?,
        Store::Segment(s) => s.stored_head(&school)?,
        Store::Postgres(s, _) => s.log(&school)?.head().await?.position,
    };
    if held > 0 {
        return Err(Failure::BadInput(format!(
            "the destination ({}) already holds {held} events of school {school:?}; copy writes only into an empty log",
            describe(to)
        )));
    }
    let bar = progress::bar(src_head.position, "copying");
    let mut next = 1;
    while next <= src_head.position {
        let page = src.read_all(next, MAX_READ_PAGE).await?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        match &destination {
            Store::Sled(s) => s.copy_in(&school, &page)?,
            Store::Segment(s) => s.copy_in(&school, &page)?,
            Store::Postgres(s, _) => s.log(&school)?.append_copied(&page).await?,
        }
        bar.set_position(next - 1);
    }
    bar.finish_and_clear();
    let dst: Arc<dyn EventStore> = destination.log(&school)?;
    let dst_head = dst.head().await?;
    let report = verified(
        dst.as_ref(),
        "destination",
        &format!("the copy in {}", describe(to)),
    )
    .await?;
    let line = |side: &str, h: &Head| {
        format!("{side} head: position {} hash {}", h.position, hex(&h.hash))
    };
    println!("{}", line("source     ", &src_head));
    println!("{}", line("destination", &dst_head));
    if dst_head != src_head {
        return Err(Failure::Store(
            "the heads differ after the copy (the source was appended to during the copy?)".into(),
        ));
    }
    println!(
        "copied {} events of school {school:?} from {} to {}; both verify",
        report.events,
        describe(from),
        describe(to)
    );
    eprintln!("took {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}
