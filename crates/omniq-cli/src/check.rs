//! `omniq check`: a store's health, per backend: a file store's records and
//! entries, SQLite's integrity and schema, a PostgreSQL schema's version,
//! unreadable rows and claims no worker holds any more.

use std::process::ExitCode;

use omniq::{BackendKind, FileStorage, Settings, SqliteStorage, StorageExt, StoreUrl, TaskStatus};

use crate::output::{self, out, printable};
use crate::{print_json, CheckArgs, Outcome};

pub(crate) async fn check(url: &StoreUrl, settings: &Settings, args: &CheckArgs) -> Outcome {
    match url.backend {
        BackendKind::Sqlite => {
            // SQLite's own check first, on a file too damaged to open as a store too.
            let integrity = omniq::sqlite_integrity_check(&url.path).await?;
            let healthy = integrity == ["ok"];
            if !healthy && !args.json {
                out!("{}: SQLite found the database damaged:", url.path.display());
                for line in &integrity {
                    out!("integrity_check: {line}");
                }
                out!("restore the file from a backup, or copy what is readable into a new store with `omniq migrate`");
                return Ok(ExitCode::FAILURE);
            }
            let version = match healthy {
                true => Some(
                    SqliteStorage::open_read_only(&url.path, settings.lock_timeout)
                        .await?
                        .schema_version()
                        .await?,
                ),
                false => None,
            };
            if args.json {
                print_json(&serde_json::json!({
                    "backend": "sqlite",
                    "integrity_check": integrity,
                    "schema_version": version,
                    "current_schema_version": omniq::sqlite_schema_version(),
                    "healthy": healthy,
                }))?;
            } else {
                out!("integrity_check: {}", integrity.join("; "));
                if let Some(version) = version {
                    out!(
                        "schema version {version} (this build writes {})",
                        omniq::sqlite_schema_version()
                    );
                }
            }
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        BackendKind::Postgres => check_postgres(url, settings, args).await,
        _ => {
            // Without --repair, a check only reads: unreadable records are
            // reported where they are, not moved.
            let store = match args.repair {
                true => FileStorage::open_with(&url.path, settings.durability, settings.lock_timeout).await?,
                false => FileStorage::open_read_only(&url.path, settings.lock_timeout).await?,
            };
            let report = store.check(args.repair).await?;
            let fixed = report.problems.is_empty() || (args.repair && report.quarantined.is_empty());
            let healthy = fixed && report.held.is_empty();
            let held: Vec<serde_json::Value> = report
                .held
                .iter()
                .map(|q| {
                    serde_json::json!({
                        "path": q.path,
                        "reason": q.reason,
                        "since": q.when.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                    })
                })
                .collect();
            if args.json {
                print_json(&serde_json::json!({
                    "backend": "file",
                    "records": report.records,
                    "entries": report.entries,
                    "problems": report.problems,
                    "quarantined": report.quarantined,
                    "held_in_quarantine": held,
                    "repaired": report.repaired,
                    "healthy": report.is_healthy(),
                }))?;
            } else {
                out!("{} records, {} entries", report.records, report.entries);
                for problem in &report.problems {
                    out!("problem: {problem}");
                }
                for q in &report.held {
                    let since = q
                        .when
                        .map(|t| {
                            format!(
                                " (since {})",
                                output::relative(t, time::OffsetDateTime::now_utc())
                            )
                        })
                        .unwrap_or_default();
                    out!("quarantined: {}: {}{since}", q.path.display(), q.reason);
                }
                if report.is_healthy() {
                    out!("no problems found");
                } else if args.repair && !report.problems.is_empty() {
                    out!("repaired {}", report.repaired);
                } else if !report.problems.is_empty() {
                    out!("run `omniq check --repair` to fix the entries");
                }
                if !report.held.is_empty() {
                    out!(
                        "{} file(s) in quarantine/ hold what OmniQ could not read: inspect each, \
                         then delete it (and its .why file) once dealt with",
                        report.held.len()
                    );
                }
            }
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// A PostgreSQL store: its schema version against this build's, the rows
/// that do not read back, and the claims whose lease ran out with no worker
/// to finish them (the next lease pass of any pool hands them back;
/// `--repair` does it now).
async fn check_postgres(url: &StoreUrl, settings: &Settings, args: &CheckArgs) -> Outcome {
    let store = match args.repair {
        true => url.open(settings.durability).await?,
        false => url.open_read_only(settings.lock_timeout).await?,
    };
    let version = match omniq::core::checked::backend::<omniq::PostgresStorage>(&*store) {
        Some(postgres) => Some(postgres.schema_version().await?),
        None => None,
    };
    let now = store.now().await?;
    let damaged = store.damaged().await?;
    let mut orphaned = Vec::new();
    let mut after = None;
    loop {
        let running = store
            .list(omniq::ListQuery {
                status: Some(TaskStatus::Running),
                limit: Some(500),
                after,
                ..Default::default()
            })
            .await?;
        let Some(last) = running.last() else { break };
        after = Some(last.id);
        orphaned.extend(running.into_iter().filter(|t| t.lease_expired(now)).map(|t| t.id));
    }
    let mut handed_back = 0;
    if args.repair {
        loop {
            let batch = store.requeue_expired(now).await?.len();
            handed_back += batch;
            if batch < omniq::core::storage::REQUEUE_BATCH {
                break;
            }
        }
    }
    let healthy = damaged.is_empty() && (orphaned.is_empty() || args.repair);
    if args.json {
        print_json(&serde_json::json!({
            "backend": "postgres",
            "schema_version": version,
            "current_schema_version": omniq::postgres_schema_version(),
            "unreadable": damaged.iter().map(|d| serde_json::json!({"id": d.id, "reason": d.reason})).collect::<Vec<_>>(),
            "orphaned_claims": orphaned.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
            "handed_back": handed_back,
            "healthy": healthy,
        }))?;
    } else {
        if let Some(version) = version {
            out!(
                "schema version {version} (this build writes {})",
                omniq::postgres_schema_version()
            );
        }
        for bad in &damaged {
            out!(
                "unreadable: task {}: {}",
                printable(&bad.id),
                printable(&bad.reason)
            );
        }
        match (orphaned.len(), args.repair) {
            (0, _) => {}
            (n, false) => out!(
                "{n} running task(s) whose lease ran out with no worker to finish them; the next lease pass of \
                 any pool hands them back, `omniq check --repair` does it now"
            ),
            (_, true) => out!("handed back {handed_back} task(s) whose lease ran out"),
        }
        if damaged.is_empty() && orphaned.is_empty() {
            out!("no problems found");
        }
        if !damaged.is_empty() {
            out!(
                "{} row(s) cannot be read (edited by hand, or written by a newer OmniQ): they are left out \
                 of lists and failed by the lease pass; inspect them with SQL, then delete or fix them",
                damaged.len()
            );
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
