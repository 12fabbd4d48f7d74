//! `omniq`: inspect, repair and migrate an OmniQ store from the shell.
//!
//! The store is chosen by `--backend`, `--base-dir` and `--db-path`, which
//! default to `OMNIQ_BACKEND`, `OMNIQ_BASE_DIR` and `OMNIQ_DB_PATH`. Read
//! commands never create a store that does not exist. See `docs/cli.md`.

mod check;
mod output;
mod queues;
mod read;
mod schedules;
mod workers;

use check::check;
use output::{out, printable};
use read::{list, result, show, stats};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use omniq::{
    BackendKind, Error, FileStorage, Settings, SqliteStorage, Storage, StorageExt, StoreUrl, TaskId,
    TaskStatus,
};
use time::OffsetDateTime;

/// Inspect, repair and migrate an OmniQ task store.
#[derive(Parser)]
#[command(name = "omniq", version, about, long_about = None)]
struct Cli {
    /// The backend: file, sqlite or postgres [default: OMNIQ_BACKEND, else file].
    #[arg(long, global = true, value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// The store's folder [default: OMNIQ_BASE_DIR, else ./omniq_data].
    #[arg(long, global = true)]
    base_dir: Option<PathBuf>,
    /// The SQLite database file [default: OMNIQ_DB_PATH, else {base-dir}/omniq.db].
    #[arg(long, global = true)]
    db_path: Option<PathBuf>,
    /// The PostgreSQL database, postgres://user:password@host/db [default: OMNIQ_DATABASE_URL];
    /// its schema is OMNIQ_PG_SCHEMA, else omniq.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// The PostgreSQL schema of the store [default: OMNIQ_PG_SCHEMA, else omniq];
    /// a database URL may name it after a `#` too, as --from and --to do.
    #[arg(long, global = true)]
    schema: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Counts per status, the oldest pending task, and running leases.
    Stats(StatsArgs),
    /// Lists tasks, newest first.
    List(ListArgs),
    /// Shows a task's whole record.
    Show(IdArgs),
    /// Shows a task's status and result or error.
    Result(IdArgs),
    /// Cancels a task (or its whole interval series).
    Cancel { id: String },
    /// Puts a failed task (or every failed task) back to pending.
    Retry(RetryArgs),
    /// Deletes finished tasks older than a given age.
    Purge(PurgeArgs),
    /// Copies every task from one store to another, keeping their history.
    Migrate(MigrateArgs),
    /// Checks a store: file records and entries, or SQLite's integrity and schema.
    Check(CheckArgs),
    /// Each queue: counts per status, paused or not, oldest pending age, and
    /// its flow-control settings; `queues set QUEUE --limit 5 --per-key 1
    /// --rate 100/s` changes them.
    Queues(queues::QueuesArgs),
    /// The worker pools that report in: host, pid, version, queues, running
    /// tasks, last seen; pools that stopped beating are shown as missing.
    Workers(JsonFlag),
    /// Pauses a queue: no process claims its tasks until it is resumed.
    Pause { queue: String },
    /// Resumes a paused queue.
    Resume { queue: String },
    /// The cron schedules: name, expression, time zone, next run, last task;
    /// `schedules remove|pause|resume NAME` changes one.
    Schedules(schedules::SchedulesArgs),
    /// Serves the dashboard: see and steer the queue in a browser.
    Dashboard(DashboardArgs),
}

#[derive(Args)]
struct DashboardArgs {
    /// The address to listen on; any but loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// The token browsers and programs must give [default: OMNIQ_DASHBOARD_TOKEN].
    #[arg(long)]
    token: Option<String>,
    /// Show the queue, and refuse every change.
    #[arg(long)]
    read_only: bool,
    /// Serve under this path (e.g. /omniq), as behind a proxy.
    #[arg(long, default_value = "")]
    prefix: String,
    /// A host name the dashboard answers to besides localhost and the bound
    /// address (repeat for several); needed without a token when browsers
    /// reach it by another name.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_host: Vec<String>,
}

#[derive(Args)]
struct StatsArgs {
    /// Only the tasks of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Print JSON for scripts: an object of counts per status.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct JsonFlag {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IdArgs {
    /// The task id.
    id: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ListArgs {
    /// Only tasks in this status (pending, running, completed, failed, cancelled).
    #[arg(long, value_parser = parse_status)]
    status: Option<TaskStatus>,
    /// Only tasks of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only tasks for this handler (its name, a typed job's NAME).
    #[arg(long)]
    handler: Option<String>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Oldest first instead of newest first.
    #[arg(long)]
    oldest: bool,
    /// Print a JSON array of task records.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RetryArgs {
    /// The failed task to retry.
    #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
    id: Option<String>,
    /// Retry every failed task.
    #[arg(long)]
    all_failed: bool,
}

#[derive(Args)]
struct PurgeArgs {
    /// Delete tasks that finished longer ago than this (e.g. 7d, 12h, 30m)
    /// [default: OMNIQ_RESULT_TTL].
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
}

#[derive(Args)]
struct MigrateArgs {
    /// The source store, as file:<folder>, sqlite:<database file> or postgres://…#schema. It is only read.
    #[arg(long)]
    from: StoreUrl,
    /// The destination store, created if missing.
    #[arg(long)]
    to: StoreUrl,
    /// A schedule whose name the destination already has: `replace` it with
    /// the source's, or `keep` the destination's.
    #[arg(long, value_name = "replace|keep", default_value = "replace", value_parser = parse_on_conflict)]
    schedules: omniq::SchedulesOnConflict,
}

fn parse_on_conflict(text: &str) -> Result<omniq::SchedulesOnConflict, String> {
    match text {
        "replace" => Ok(omniq::SchedulesOnConflict::Replace),
        "keep" => Ok(omniq::SchedulesOnConflict::Keep),
        _ => Err(format!("{text:?}: expected replace or keep")),
    }
}

#[derive(Args)]
struct CheckArgs {
    /// Fix what the check finds (file store: misplaced, missing and orphaned entries).
    #[arg(long)]
    repair: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

fn parse_backend(text: &str) -> Result<BackendKind, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a backend; expected file, sqlite or postgres"))
}

fn parse_status(text: &str) -> Result<TaskStatus, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a status; expected pending, running, completed, failed or cancelled")
    })
}

/// An error for the person at the terminal: what went wrong, and what to do.
struct Failure {
    message: String,
    hint: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let hint = match &error {
            Error::NotFound { .. } => Some("`omniq list` shows the ids in this store".to_string()),
            Error::InvalidId { .. } => {
                Some("task ids look like 0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f".to_string())
            }
            Error::InvalidConfig { name, .. } if name.starts_with("OMNIQ_") => {
                Some(format!("fix or unset the environment variable {name}"))
            }
            Error::Incompatible { .. } => Some(
                "check where the store is: --db-path / OMNIQ_DB_PATH, or --database-url / OMNIQ_DATABASE_URL \
                 and OMNIQ_PG_SCHEMA"
                    .to_string(),
            ),
            Error::Corrupt { .. } => Some("`omniq check` reports every damaged file".to_string()),
            _ => None,
        };
        Failure {
            message: error.to_string(),
            hint,
        }
    }
}

fn failure(message: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        hint: Some(hint.into()),
    }
}

type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", printable(&failure.message));
            if let Some(hint) = failure.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings, Failure> {
    let mut settings = Settings::from_env()?;
    if let Some(backend) = cli.backend {
        settings.backend = Some(backend);
    }
    if let Some(base_dir) = &cli.base_dir {
        settings.base_dir = base_dir.clone();
    }
    if let Some(db_path) = &cli.db_path {
        settings.db_path = Some(db_path.clone());
    }
    // One grammar for a PostgreSQL store everywhere: the URL, and its schema
    // after a `#` (as --from and --to take it), or --schema.
    let url = cli.database_url.clone().or(settings.database_url.take());
    let mut named = None;
    if let Some(url) = url {
        let (url, schema) = match url.rsplit_once('#') {
            Some((url, schema)) if !schema.is_empty() && !schema.contains(['@', '/']) => {
                (url.to_owned(), Some(schema.to_owned()))
            }
            _ => (url, None),
        };
        named = schema;
        settings.database_url = Some(url);
    }
    if cli.database_url.is_some() {
        // A database URL given on the command line means PostgreSQL.
        settings.backend.get_or_insert(BackendKind::Postgres);
    }
    match (cli.schema.clone(), named) {
        (Some(flag), Some(in_url)) if flag != in_url => {
            return Err(failure(
                format!("--schema {flag} and the database URL's #{in_url} name different schemas"),
                "give the schema once",
            ))
        }
        (Some(schema), _) | (None, Some(schema)) => settings.pg_schema = schema,
        (None, None) => {}
    }
    if settings.pg_schema.is_empty() || settings.pg_schema.len() > 63 {
        return Err(failure(
            format!("{:?} is not a schema name", settings.pg_schema),
            "give 1 to 63 bytes",
        ));
    }
    Ok(settings)
}

/// Opens the store only if it exists: reading must not create one.
async fn open_existing(url: &StoreUrl, settings: &Settings) -> Result<Arc<dyn Storage>, Failure> {
    ensure_exists(url)?;
    Ok(url.open(settings.durability).await?)
}

/// Opens the existing store only to read it, and says on stderr when a
/// SQLite database is older than this build (a writing command upgrades it).
async fn open_to_read(url: &StoreUrl, settings: &Settings) -> Result<Arc<dyn Storage>, Failure> {
    ensure_exists(url)?;
    if url.backend != BackendKind::Sqlite {
        return Ok(url.open_read_only(settings.lock_timeout).await?);
    }
    let store = SqliteStorage::open_read_only(&url.path, settings.lock_timeout).await?;
    let version = store.schema_version().await?;
    let current = omniq::sqlite_schema_version();
    if version < current {
        eprintln!(
            "note: {} has schema version {version}; commands that write (cancel, retry, purge) upgrade it to {current}",
            url.path.display()
        );
    }
    Ok(Arc::new(store))
}

/// Fails unless `url` names a store that exists.
fn ensure_exists(url: &StoreUrl) -> Result<(), Failure> {
    // A database server says itself whether the store is there.
    if url.backend == BackendKind::Postgres {
        return Ok(());
    }
    let hint = "check --backend, --base-dir and --db-path (or OMNIQ_BACKEND, OMNIQ_BASE_DIR, OMNIQ_DB_PATH)";
    if !url.path.exists() {
        return Err(failure(
            format!("no {} store at {}", url.backend, url.path.display()),
            hint,
        ));
    }
    if url.backend == BackendKind::File && !url.path.join("tasks").is_dir() {
        return Err(failure(
            format!(
                "{} is not an OmniQ file store (it has no tasks/ folder)",
                url.path.display()
            ),
            hint,
        ));
    }
    Ok(())
}

fn parse_id(text: &str) -> Result<TaskId, Failure> {
    Ok(TaskId::parse(text)?)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(Error::from)?;
    out!("{text}");
    Ok(())
}

async fn run(cli: Cli) -> Outcome {
    let settings = settings(&cli)?;
    // OmniQ's warnings (a quarantined record, a replayed change) on stderr.
    omniq::init_logging(&settings)?;
    if let Command::Migrate(args) = &cli.command {
        return migrate(args, &settings).await;
    }
    let url = StoreUrl::from_settings(&settings)?;
    if let Command::Dashboard(args) = &cli.command {
        return dashboard(&url, &settings, args).await;
    }
    if let Command::Check(args) = &cli.command {
        // A store too damaged to open is what `check` is for.
        ensure_exists(&url)?;
        return check(&url, &settings, args).await;
    }
    // Only commands that change tasks open the store for writing; the others
    // leave every byte of it as it was (no folder, lock file or migration).
    let writes = matches!(
        cli.command,
        Command::Cancel { .. }
            | Command::Retry(_)
            | Command::Purge(_)
            | Command::Pause { .. }
            | Command::Resume { .. }
    ) || matches!(&cli.command, Command::Schedules(args) if args.writes())
        || matches!(&cli.command, Command::Queues(args) if args.writes());
    let store = match writes {
        true => open_existing(&url, &settings).await?,
        false => open_to_read(&url, &settings).await?,
    };
    // The store's clock where it has one (PostgreSQL), as workers use.
    let now = store.now().await?;
    let colour = output::colour();
    match &cli.command {
        Command::Stats(args) => stats(&*store, &url, args, now).await,
        Command::Queues(args) => queues::queues(&*store, args, now).await,
        Command::Workers(flag) => workers::workers(&*store, flag.json, now).await,
        Command::Schedules(args) => schedules::schedules(&*store, args, now).await,
        Command::Pause { queue } => {
            store.set_paused(queue, true).await?;
            out!("paused queue {queue}: no worker claims its tasks until `omniq resume {queue}`");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { queue } => {
            store.set_paused(queue, false).await?;
            out!("resumed queue {queue}");
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => list(&*store, args, now, colour).await,
        Command::Show(args) => show(&*store, args, now, colour).await,
        Command::Result(args) => result(&*store, args, now, colour).await,
        Command::Cancel { id } => {
            let ids = store.cancel(parse_id(id)?, now).await?;
            let list: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            let noun = if ids.len() == 1 { "task" } else { "tasks" };
            out!("cancelled {} {noun}: {}", ids.len(), list.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry(args) => retry(&*store, args, now).await,
        Command::Purge(args) => {
            let age = args.older_than.unwrap_or(settings.result_ttl);
            let removed = store.purge(omniq::earlier(now, age)).await?;
            let noun = if removed == 1 { "task" } else { "tasks" };
            out!(
                "removed {removed} finished {noun} older than {}",
                humantime::format_duration(age)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(_) | Command::Migrate(_) | Command::Dashboard(_) => unreachable!("handled above"),
    }
}

async fn retry(store: &dyn Storage, args: &RetryArgs, now: OffsetDateTime) -> Outcome {
    if let Some(id) = &args.id {
        let id = parse_id(id)?;
        store.retry(id, now).await?;
        out!("retried {id}: pending again");
        return Ok(ExitCode::SUCCESS);
    }
    let report = store.retry_failed(None, now).await?;
    out!(
        "retried {} failed task(s); {} could not be retried (a live task holds their unique key, or they moved on)",
        report.retried, report.refused
    );
    Ok(ExitCode::SUCCESS)
}

async fn migrate(args: &MigrateArgs, settings: &Settings) -> Outcome {
    if args.from == args.to {
        return Err(failure(
            "--from and --to name the same store",
            "give a different destination",
        ));
    }
    // A file store is read without changing a byte of it (an unreadable
    // record is reported, not moved to quarantine).
    let source: Arc<dyn Storage> = match args.from.backend {
        BackendKind::File => {
            open_existing(&args.from, settings).await.map(drop)?;
            Arc::new(FileStorage::open_read_only(&args.from.path, settings.lock_timeout).await?)
        }
        _ => open_existing(&args.from, settings).await?,
    };
    let destination = args.to.open(settings.durability).await?;
    let total = source.counts().await?.total();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tasks ({eta} left)")
            .expect("a valid template"),
    );
    // Only long runs on a terminal get a bar; indicatif hides it elsewhere.
    if total < 1_000 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = omniq::MigrateOptions {
        schedules: args.schedules,
    };
    let report = omniq::migrate_with(&*source, &*destination, options, |p| bar.set_position(p.done)).await?;
    bar.finish_and_clear();
    out!(
        "migrated {} -> {}: copied {}, skipped {} (already there), {} running task(s) released as if their lease had expired, {} schedule(s); the source is unchanged",
        args.from, args.to, report.copied, report.skipped, report.running_reset, report.schedules
    );
    for name in &report.schedules_replaced {
        out!(
            "schedule {}: replaced the destination's of the same name",
            printable(name)
        );
    }
    for name in &report.schedules_kept {
        out!(
            "schedule {}: kept the destination's of the same name (--schedules keep)",
            printable(name)
        );
    }
    for queue in &report.queue_limits {
        out!("queue {}: copied its flow-control settings", printable(queue));
    }
    for queue in &report.queue_limits_kept {
        out!(
            "queue {}: kept the destination's flow-control settings",
            printable(queue)
        );
    }
    if report.is_complete() {
        return Ok(ExitCode::SUCCESS);
    }
    for missing in &report.not_copied {
        eprintln!(
            "not copied: task {}: {}",
            printable(&missing.id),
            printable(&missing.reason)
        );
    }
    eprintln!(
        "error: {} task(s) of the source were not copied; the rest were",
        report.not_copied.len()
    );
    Ok(ExitCode::FAILURE)
}

/// Serves the dashboard until Ctrl-C or SIGTERM.
async fn dashboard(url: &StoreUrl, settings: &Settings, args: &DashboardArgs) -> Outcome {
    let options = omniq::web::Options {
        token: args
            .token
            .clone()
            .or_else(|| std::env::var("OMNIQ_DASHBOARD_TOKEN").ok())
            .filter(|t| !t.is_empty()),
        read_only: args.read_only,
        prefix: omniq::web::check_prefix(&args.prefix)?,
        allowed_hosts: args.allow_host.clone(),
        bound: None,
    };
    // Refused before the store is opened or the port taken.
    omniq::web::check_bind(args.bind, &options)?;
    let store = match args.read_only {
        true => open_to_read(url, settings).await?,
        false => open_existing(url, settings).await?,
    };
    let listener = omniq::web::TcpListener::bind(args.bind).await.map_err(|e| {
        failure(
            format!("cannot listen on {}: {e}", args.bind),
            "choose another --bind",
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("dashboard socket", e))?;
    let path = if options.prefix.is_empty() {
        "/".to_string()
    } else {
        options.prefix.clone()
    };
    out!("OmniQ dashboard for {url} on http://{addr}{path} (Ctrl-C to stop)");
    let queue = omniq::OmniQ::with_storage(store, settings.clone());
    omniq::web::serve(&queue, listener, options, stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
