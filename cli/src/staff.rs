//! The staff directory on the command line (`init --admin`, `staff add |
//! grant | revoke | list`) and the access hook every command passes:
//! who is acting (`--as` / CASEBOOK_ACTOR) and whether their roles permit
//! the command (`casebook_engine::access`, `docs/security.md`).

use std::sync::Arc;

use casebook_engine::access::{
    role_granted, role_revoked, staff_registered, AccessError, Action, Actor, Guarded, Role,
};
use casebook_engine::store::EventStore;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::render::table;
use crate::run::Ctx;
use crate::{Command, Failure, Format, ReportCommand};

/// `casebook staff ...`.
#[derive(Subcommand, Debug)]
pub enum StaffCommand {
    /// Register a member of staff with one or more roles.
    Add {
        /// The staff reference (what `--as` names).
        staff: String,
        /// Their name as shown in `staff list`.
        #[arg(long)]
        name: String,
        /// A role (repeat for several): dsl, deputy_dsl, pastoral, keyworker, teacher, auditor, admin.
        #[arg(long = "role", value_name = "ROLE", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
    },
    /// Give a member of staff a role.
    Grant {
        staff: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
    /// Take a role from a member of staff (the last admin keeps theirs).
    Revoke {
        staff: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
    /// The staff directory.
    List,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// The access-checked log and the actor of this run.
pub(crate) struct Session {
    pub guarded: Guarded,
    pub actor: Actor,
}

pub(crate) fn access_failure(e: AccessError) -> Failure {
    if e.is_store_failure() {
        Failure::Store(e.to_string())
    } else {
        Failure::BadInput(e.to_string())
    }
}

/// What the command asks, for the check before it runs. `None` for the
/// commands whose check needs the pupil's record (`timeline`, `audit`,
/// `record`: checked by the engine as they read or append); they still
/// name an action for logging an unknown actor.
fn command_action(command: &Command) -> (Action, bool) {
    let pupil_action = |pupil: &str| Action::ReadTimeline {
        pupil: pupil.to_string(),
        keyworker: None,
    };
    match command {
        Command::Init { .. } => (Action::Init, true),
        Command::Demo { .. } => (Action::Demo, true),
        Command::Import { .. } => (Action::Import, true),
        Command::Record { pupil, .. } => (pupil_action(pupil), false),
        Command::Timeline { pupil, .. } => (pupil_action(pupil), false),
        Command::Audit { pupil, .. } => (
            Action::ReadAudit {
                pupil: pupil.clone(),
            },
            false,
        ),
        Command::Caseload { keyworker } => (
            Action::Caseload {
                keyworker: keyworker.clone(),
            },
            true,
        ),
        Command::Report { report } => (
            Action::Report {
                name: report_name(report).to_string(),
            },
            true,
        ),
        Command::Verify => (Action::Verify, true),
        Command::Rebuild { .. } => (Action::Rebuild, true),
        Command::Staff {
            command: StaffCommand::List,
        } => (Action::ListStaff, true),
        Command::Staff { .. } => (Action::ManageStaff, false),
        // Never reached: `check_command` returns before (see there).
        Command::Copy { .. } | Command::Bench { .. } => (Action::Verify, false),
        // Erasure and legal holds: the same authority (a hold blocks erasure).
        Command::Erase { pupil, .. } | Command::Hold { pupil, .. } => (
            Action::Erase {
                pupil: pupil.clone(),
            },
            true,
        ),
        Command::Retention { .. } => (Action::Retention, true),
        // Checked, and logged, when the record is read (`Guarded::read_pupil`).
        Command::Export { pupil, .. } => (
            Action::Export {
                pupil: pupil.clone(),
            },
            false,
        ),
        Command::TransferOut { pupil, .. } => (
            Action::Transfer {
                pupil: pupil.clone(),
            },
            true,
        ),
        Command::TransferIn { bundle, pupil, .. } => (
            Action::Transfer {
                pupil: pupil
                    .clone()
                    .unwrap_or_else(|| format!("from bundle {}", bundle.display())),
            },
            true,
        ),
    }
}

fn report_name(r: &ReportCommand) -> &'static str {
    match r {
        ReportCommand::Behaviour { .. } => "behaviour",
        ReportCommand::Attendance { .. } => "attendance",
        ReportCommand::Suspensions => "suspensions",
        ReportCommand::Force => "force",
        ReportCommand::Interventions => "interventions",
        ReportCommand::Reintegration => "reintegration",
    }
}

/// The hook every command passes before it runs: opens the school's log,
/// resolves the actor against its staff directory (an unknown or missing
/// actor is refused once the directory is in use), and checks the
/// command's school-level action. Refusals are logged by the engine.
pub(crate) async fn check_command(ctx: &mut Ctx, command: &Command) -> Result<(), Failure> {
    // `copy` works on raw stores named by --from/--to (a directory or a
    // database URL): whoever can open those already holds every byte, so the
    // directory cannot restrain it (docs/security.md, "Operator commands").
    // `bench` never opens --data: it measures in a temporary store.
    if matches!(command, Command::Copy { .. } | Command::Bench { .. }) {
        return Ok(());
    }
    let create = matches!(
        command,
        Command::Init { .. }
            | Command::Demo { .. }
            | Command::Import { .. }
            | Command::Record { .. }
            | Command::Staff { .. }
    );
    // A transfer into a store that does not exist yet: nobody is registered
    // there (single-user mode), and the bundle must be verified before
    // anything, the store included, is written.
    if matches!(command, Command::TransferIn { .. }) && ctx.store_missing() {
        return Ok(());
    }
    ctx.store(create)?;
    let log = ctx.log(None)?;
    // Reads through the guard see sealed fields opened (or marked erased)
    // with this store's keys; appends pass through unchanged.
    let log = crate::privacy::reader(ctx, log).await?;
    let (action, check_now) = command_action(command);
    let (guarded, actor) = resolve(ctx, log, &ctx.school.clone(), &action).await?;
    if check_now {
        guarded
            .check(&actor, &action, None, ctx.now)
            .await
            .map_err(access_failure)?;
    }
    ctx.session = Some(Session { guarded, actor });
    Ok(())
}

/// Opens `school`'s directory and resolves the actor of this run in it.
pub(crate) async fn resolve(
    ctx: &Ctx,
    log: Arc<dyn EventStore>,
    school: &str,
    attempted: &Action,
) -> Result<(Guarded, Actor), Failure> {
    let guarded = Guarded::open(log, school).await?;
    let actor = guarded
        .actor(ctx.actor.as_deref(), attempted, ctx.now)
        .await
        .map_err(access_failure)?;
    Ok((guarded, actor))
}

/// An import into `school`: resolves the actor in that school's directory
/// and checks [`Action::Import`] (each line keeps its own `actor`).
pub(crate) async fn import_access(
    ctx: &Ctx,
    school: &str,
    log: Arc<dyn EventStore>,
) -> Result<(Guarded, Actor), Failure> {
    let (guarded, actor) = resolve(ctx, log, school, &Action::Import).await?;
    guarded
        .check(&actor, &Action::Import, None, ctx.now)
        .await
        .map_err(access_failure)?;
    Ok((guarded, actor))
}

/// The session the hook opened.
pub(crate) fn session(ctx: &mut Ctx) -> Result<&mut Session, Failure> {
    ctx.session
        .as_mut()
        .ok_or_else(|| Failure::Store("internal: the access check did not run".into()))
}

/// `init --admin STAFF [--name N]`: registers the first admin of an empty
/// directory (bootstrap). Idempotent: an admin already registered is fine.
pub(crate) async fn init_admin(
    ctx: &mut Ctx,
    admin: &str,
    name: Option<&str>,
) -> Result<(), Failure> {
    let now = ctx.now;
    let s = session(ctx)?;
    if let Some(m) = s.guarded.directory().member(admin) {
        if m.roles.contains(&Role::Admin) {
            println!("{admin} is already an admin");
            return Ok(());
        }
    }
    if !s.guarded.directory().is_empty() {
        return Err(Failure::BadInput(format!(
            "the staff directory is already in use; an admin adds staff with `casebook --as ADMIN staff add {admin} --name NAME --role admin`"
        )));
    }
    let actor = Actor::single_user(admin);
    s.guarded
        .change_directory(
            &actor,
            staff_registered(admin, name.unwrap_or(admin), &[Role::Admin]),
            now,
        )
        .await
        .map_err(access_failure)?;
    println!("registered {admin} as the first admin: every command is now checked against the staff directory (pass --as STAFF)");
    Ok(())
}

/// `staff add | grant | revoke | list`.
pub(crate) async fn run(ctx: &mut Ctx, command: StaffCommand) -> Result<(), Failure> {
    let format = ctx.formats("staff", &[Format::Text, Format::Json])?;
    let now = ctx.now;
    let s = session(ctx)?;
    let event = match command {
        StaffCommand::List => return list(s, format),
        StaffCommand::Add { staff, name, roles } => {
            if s.guarded.directory().is_empty() && !roles.contains(&Role::Admin) {
                return Err(Failure::BadInput(
                    "the staff directory is empty: register the first admin with `casebook init --admin STAFF` (or give this member of staff --role admin)".into(),
                ));
            }
            let mut unique = roles.clone();
            unique.sort();
            unique.dedup();
            staff_registered(&staff, &name, &unique)
        }
        StaffCommand::Grant { staff, role } => role_granted(&staff, role),
        StaffCommand::Revoke { staff, role } => role_revoked(&staff, role),
    };
    let actor = s.actor.clone();
    let done = s
        .guarded
        .change_directory(&actor, event.clone(), now)
        .await
        .map_err(access_failure)?;
    let summary = casebook_projections::summary(&event);
    if format == Format::Json {
        println!(
            "{}",
            json!({"done": summary, "position": done.last_position, "event": {"type": event.type_name(), "data": event.data_json()}})
        );
    } else {
        println!("{summary} (position {})", done.last_position);
    }
    Ok(())
}

fn list(s: &Session, format: Format) -> Result<(), Failure> {
    let members: Vec<Value> = s
        .guarded
        .directory()
        .members()
        .map(|m| {
            json!({
                "staff": m.staff,
                "name": m.name,
                "roles": m.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "registered_at": m.registered_at,
            })
        })
        .collect();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "staff": members }))
                .map_err(|e| Failure::Store(e.to_string()))?
        );
        return Ok(());
    }
    if members.is_empty() {
        println!("the staff directory is empty: single-user mode (see docs/security.md)");
        return Ok(());
    }
    let rows: Vec<Value> = members
        .iter()
        .map(|m| {
            let mut r = m.clone();
            r["roles"] = Value::String(
                m["roles"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            );
            r
        })
        .collect();
    println!("{} members of staff\n", rows.len());
    print!(
        "{}",
        table(
            &rows,
            &[
                ("staff", "staff"),
                ("name", "name"),
                ("roles", "roles"),
                ("registered_at", "registered")
            ]
        )
    );
    Ok(())
}
