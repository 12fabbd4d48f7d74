//! How a `Task` maps onto the five tables, and the batched statements that load
//! and save many tasks at once.
//!
//! A load returns a whole batch as one JSON value (one message from the
//! driver's thread, however many tasks). A save sends every statement it needs
//! (rows into `tasks`, old index rows out, new index rows in) as one command of
//! several statements with bound values: one round trip, and no JSON for SQLite
//! to take apart, which measured 2 to 5 times faster than unpacking a JSON
//! batch with `json_each`.

use std::path::Path;
use std::time::Duration;

use omniq_core::{Error, Lease, LeaseToken, Result, Task, TaskError, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Executor, Row, Sqlite};
use time::OffsetDateTime;

use crate::sql_error;
use crate::writer::Session;

/// One task as a JSON array, for
/// `SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE ...`: a whole batch
/// comes back from the driver's thread as one value instead of row by row.
pub const TASK_JSON: &str =
    "json_array(t.id, t.func_path, t.args, t.kwargs, t.status, t.eta, t.interval_ns, \
     t.max_retries, t.timeout_ns, t.attempts, t.created_at, t.updated_at, t.started_at, t.finished_at, \
     t.series, r.value, r.error, rn.worker_id, rn.token, rn.expires_at, t.queue, t.priority, t.unique_key, \
     rn.progress, t.attempt_errors, t.unique_window, t.meta, t.concurrency_key, t.snoozes)";

/// The joins that gather one task from its tables.
pub const TASK_FROM: &str =
    "FROM tasks t LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id";

pub fn to_ns(time: OffsetDateTime) -> Result<i64> {
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| Error::invalid_config("time", format!("{time} is outside the years 1677 to 2262")))
}

pub fn from_ns(ns: i64) -> OffsetDateTime {
    // Every i64 of nanoseconds is a valid time, so this cannot fail.
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// A value bound to a statement.
#[derive(Clone)]
pub enum Value {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// NULL.
    Null,
}

/// `sql` with `values` bound in order. They move into the query: the driver
/// would copy borrowed ones to send them to its thread.
pub fn query_with(
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> sqlx::query::Query<'_, Sqlite, SqliteArguments<'_>> {
    values
        .into_iter()
        .fold(sqlx::query(sql), |query, value| match value {
            Value::Text(text) => query.bind(text),
            Value::Int(n) => query.bind(n),
            Value::Null => query.bind(None::<i64>),
        })
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// One task as the tables store it.
struct RowOut {
    id: String,
    status: TaskStatus,
    /// The `tasks` columns, in [`TASKS_COLUMNS`] order.
    record: [Value; 23],
    eta: i64,
    queue: String,
    priority: i64,
    /// Kept in `pending` too, so a claim under a per-key limit reads it
    /// from the row it walks.
    concurrency_key: Option<String>,
    finished_at: Option<i64>,
    lease: Option<(String, String, i64)>,
    /// The running attempt's progress, as JSON, kept in `running`.
    progress: Option<String>,
    value: Option<String>,
    error: Option<String>,
}

/// The columns of `tasks`, in the order [`RowOut::record`] holds them.
const TASKS_COLUMNS: &str = "id, func_path, args, kwargs, status, eta, interval_ns, max_retries, \
     timeout_ns, attempts, created_at, updated_at, started_at, finished_at, series, queue, priority, \
     unique_key, attempt_errors, unique_window, meta, concurrency_key, snoozes";

/// What an update of a stored task sets: every column but the id. An upsert,
/// not a `REPLACE`: a `REPLACE` that broke the unique-key index would delete
/// the task holding the key instead of failing.
const TASKS_UPDATE: &str = " ON CONFLICT (id) DO UPDATE SET func_path = excluded.func_path, \
     args = excluded.args, kwargs = excluded.kwargs, status = excluded.status, eta = excluded.eta, \
     interval_ns = excluded.interval_ns, max_retries = excluded.max_retries, \
     timeout_ns = excluded.timeout_ns, attempts = excluded.attempts, created_at = excluded.created_at, \
     updated_at = excluded.updated_at, started_at = excluded.started_at, \
     finished_at = excluded.finished_at, series = excluded.series, queue = excluded.queue, \
     priority = excluded.priority, unique_key = excluded.unique_key, \
     attempt_errors = excluded.attempt_errors, unique_window = excluded.unique_window, \
     meta = excluded.meta, concurrency_key = excluded.concurrency_key, snoozes = excluded.snoozes";

impl RowOut {
    fn new(task: &Task) -> Result<Self> {
        let id = task.id.to_string();
        let eta = to_ns(task.eta)?;
        let finished_at = task.finished_at.map(to_ns).transpose()?;
        Ok(RowOut {
            record: [
                id.clone().into(),
                task.func_path.clone().into(),
                serde_json::to_string(&task.args)?.into(),
                serde_json::to_string(&task.kwargs)?.into(),
                task.status.as_str().to_string().into(),
                eta.into(),
                task.interval.map(duration_ns).into(),
                i64::from(task.max_retries).into(),
                task.timeout.map(duration_ns).into(),
                i64::from(task.attempts).into(),
                to_ns(task.created_at)?.into(),
                to_ns(task.updated_at)?.into(),
                task.started_at.map(to_ns).transpose()?.into(),
                finished_at.into(),
                task.series.map(|s| s.to_string()).into(),
                task.queue.clone().into(),
                i64::from(task.priority).into(),
                task.unique_key.clone().into(),
                history_json(task)?.into(),
                task.unique_window
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?
                    .into(),
                (!task.meta.is_empty())
                    .then(|| serde_json::to_string(&task.meta))
                    .transpose()?
                    .into(),
                task.concurrency_key.clone().into(),
                i64::from(task.snoozes).into(),
            ],
            queue: task.queue.clone(),
            priority: i64::from(task.priority),
            concurrency_key: task.concurrency_key.clone(),
            id,
            status: task.status,
            eta,
            finished_at,
            lease: match &task.lease {
                Some(lease) => Some((
                    lease.worker_id.clone(),
                    lease.token.to_string(),
                    to_ns(lease.expires_at)?,
                )),
                None => None,
            },
            progress: task.progress.as_ref().map(serde_json::to_string).transpose()?,
            value: task.result.as_ref().map(serde_json::to_string).transpose()?,
            error: task.error.as_ref().map(serde_json::to_string).transpose()?,
        })
    }
}

/// The most rows one `INSERT` takes, keeping every statement far below
/// SQLite's limit of 32,766 bound values.
const ROWS_PER_STATEMENT: usize = 500;

/// Batches at most this big keep their statements prepared between calls;
/// bigger ones are rare and would crowd the driver's statement cache.
pub const CACHED_UP_TO: usize = 16;

/// A command of several statements and the values they bind, in order.
#[derive(Default)]
struct Command {
    statements: Vec<String>,
    values: Vec<Value>,
}

impl Command {
    /// Adds `INSERT INTO {head} VALUES (...), ...` for `rows`, each giving
    /// `width` values, in statements of at most [`ROWS_PER_STATEMENT`] rows.
    fn insert<R>(
        &mut self,
        head: &str,
        width: usize,
        rows: Vec<R>,
        mut values: impl FnMut(R, &mut Vec<Value>),
    ) {
        let row = format!("({})", vec!["?"; width].join(", "));
        let total = rows.len();
        for (i, r) in rows.into_iter().enumerate() {
            if i % ROWS_PER_STATEMENT == 0 {
                let count = (total - i).min(ROWS_PER_STATEMENT);
                self.statements
                    .push(format!("{head} VALUES {}", vec![row.as_str(); count].join(", ")));
            }
            values(r, &mut self.values);
        }
    }
}

/// The command that writes `tasks`: new ones only (`is_new`), or a mix of
/// changed and new ones, each task's index rows replaced by those of its status.
fn save_command<'t>(tasks: impl IntoIterator<Item = &'t Task>, is_new: bool) -> Result<Command> {
    let mut rows = tasks.into_iter().map(RowOut::new).collect::<Result<Vec<_>>>()?;
    let mut command = Command::default();
    // The records move into the command; the rest of each row is still needed.
    let records: Vec<[Value; 23]> = rows
        .iter_mut()
        .map(|r| std::mem::replace(&mut r.record, std::array::from_fn(|_| Value::Null)))
        .collect();
    command.insert(
        &format!("INSERT INTO tasks ({TASKS_COLUMNS})"),
        23,
        records,
        |record, v| v.extend(record),
    );
    if !is_new {
        for statement in &mut command.statements {
            statement.push_str(TASKS_UPDATE);
        }
    }
    if !is_new {
        let ids = serde_json::to_string(&rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())?;
        for table in ["pending", "running", "completed", "results"] {
            command.statements.push(format!(
                "DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))"
            ));
            command.values.push(Value::Text(ids.clone()));
        }
    }
    let pending: Vec<&RowOut> = rows.iter().filter(|r| r.status == TaskStatus::Pending).collect();
    command.insert(
        "INSERT INTO pending (id, eta, queue, priority, concurrency_key)",
        5,
        pending,
        |r, v| {
            v.extend([
                r.id.clone().into(),
                r.eta.into(),
                r.queue.clone().into(),
                r.priority.into(),
                r.concurrency_key.clone().into(),
            ])
        },
    );
    let running: Vec<(&RowOut, &(String, String, i64))> = rows
        .iter()
        .filter(|r| r.status == TaskStatus::Running)
        .filter_map(|r| r.lease.as_ref().map(|lease| (r, lease)))
        .collect();
    command.insert(
        "INSERT INTO running (id, worker_id, token, expires_at, progress)",
        5,
        running,
        |(r, (worker, token, expires)), v| {
            v.extend([
                r.id.clone().into(),
                worker.clone().into(),
                token.clone().into(),
                (*expires).into(),
                r.progress.clone().into(),
            ])
        },
    );
    let finished: Vec<&RowOut> = rows.iter().filter(|r| r.status.is_finished()).collect();
    command.insert(
        "INSERT INTO completed (id, status, finished_at)",
        3,
        finished,
        |r, v| {
            v.extend([
                r.id.clone().into(),
                r.status.as_str().to_string().into(),
                r.finished_at.into(),
            ])
        },
    );
    let results: Vec<&RowOut> = rows
        .iter()
        .filter(|r| r.value.is_some() || r.error.is_some())
        .collect();
    command.insert("INSERT INTO results (id, value, error)", 3, results, |r, v| {
        v.extend([
            r.id.clone().into(),
            r.value.clone().into(),
            r.error.clone().into(),
        ])
    });
    Ok(command)
}

/// One task as [`TASK_JSON`] lays it out.
#[derive(Deserialize)]
struct RowIn {
    id: String,
    func_path: String,
    args: String,
    kwargs: String,
    status: String,
    eta: i64,
    interval_ns: Option<i64>,
    max_retries: u32,
    timeout_ns: Option<i64>,
    attempts: u32,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    series: Option<String>,
    value: Option<String>,
    error: Option<String>,
    worker_id: Option<String>,
    token: Option<String>,
    expires_at: Option<i64>,
    queue: String,
    priority: i16,
    unique_key: Option<String>,
    progress: Option<String>,
    /// The failed attempts, as [`history_json`] writes them.
    attempt_errors: Option<String>,
    /// The key's window, as JSON.
    unique_window: Option<String>,
    /// The meta map, as JSON.
    meta: Option<String>,
    concurrency_key: Option<String>,
    snoozes: u32,
}

/// A task's failed attempts as the `attempt_errors` column holds them:
/// `{"errors": [...], "dropped": n}`, or NULL for a task that never failed.
#[derive(Serialize, Deserialize)]
struct History {
    errors: Vec<omniq_core::AttemptError>,
    #[serde(default)]
    dropped: u32,
}

fn history_json(task: &Task) -> Result<Option<String>> {
    if task.errors.is_empty() && task.errors_dropped == 0 {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string(&History {
        errors: task.errors.clone(),
        dropped: task.errors_dropped,
    })?))
}

/// A stored row that does not make a task (damaged by hand, or written by
/// an older build that let through a payload too deep to read back).
#[derive(Debug)]
pub struct Unreadable {
    /// The task's id as stored.
    pub id: String,
    /// What is wrong with the row.
    pub reason: String,
}

/// Reads the tasks of one `json_group_array({TASK_JSON})` value, setting
/// aside the rows that do not make a task, so one bad row cannot take the
/// others down with it.
pub fn split_rows(json: Option<&str>, db: &Path) -> Result<(Vec<Task>, Vec<Unreadable>)> {
    let Some(json) = json else {
        return Ok((Vec::new(), Vec::new()));
    };
    // The common case in one pass; row by row only when something is wrong.
    if let Ok(rows) = serde_json::from_str::<Vec<RowIn>>(json) {
        let mut tasks = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            let id = row.id.clone();
            match task_from_row(row) {
                Ok(task) => tasks.push(task),
                Err(reason) => unreadable.push(Unreadable { id, reason }),
            }
        }
        return Ok((tasks, unreadable));
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| Error::Corrupt {
        path: db.to_path_buf(),
        reason: format!("a batch of task rows cannot be read: {e}"),
    })?;
    let mut tasks = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        let id = row.get(0).and_then(|id| id.as_str()).unwrap_or("?").to_string();
        match serde_json::from_value::<RowIn>(row) {
            Ok(row) => match task_from_row(row) {
                Ok(task) => tasks.push(task),
                Err(reason) => unreadable.push(Unreadable { id, reason }),
            },
            Err(e) => unreadable.push(Unreadable {
                reason: format!("task {id}: the row has the wrong shape: {e}"),
                id,
            }),
        }
    }
    Ok((tasks, unreadable))
}

/// Reads the tasks of one `json_group_array({TASK_JSON})` value. A row that
/// does not make a task is reported as corruption of the database, naming the
/// task.
pub fn tasks_from_json(json: Option<&str>, db: &Path) -> Result<Vec<Task>> {
    let (tasks, mut unreadable) = split_rows(json, db)?;
    match unreadable.pop() {
        None => Ok(tasks),
        Some(bad) => Err(Error::Corrupt {
            path: db.to_path_buf(),
            reason: bad.reason,
        }),
    }
}

/// Logs rows set aside by [`split_rows`] that a store-wide operation skipped.
pub fn report_unreadable(unreadable: &[Unreadable], db: &Path, doing: &str) {
    for bad in unreadable {
        tracing::error!(
            db = %db.display(), task = %bad.id, reason = %bad.reason,
            "{doing}: skipped a task whose stored row cannot be read; `omniq check` reports it"
        );
    }
}

fn task_from_row(row: RowIn) -> std::result::Result<Task, String> {
    let id = row.id;
    let bad = |what: &str, e: &dyn std::fmt::Display| format!("task {id}: bad {what}: {e}");
    let lease = match (row.worker_id, row.token, row.expires_at) {
        (Some(worker_id), Some(token), Some(expires_at)) => Some(Lease {
            worker_id,
            token: LeaseToken(token.parse().map_err(|e| bad("lease token", &e))?),
            expires_at: from_ns(expires_at),
        }),
        _ => None,
    };
    let nanos = |n: i64| Duration::from_nanos(n.max(0) as u64);
    let (errors, errors_dropped) = match row.attempt_errors {
        Some(text) => {
            let history: History = serde_json::from_str(&text).map_err(|e| bad("attempt errors", &e))?;
            (history.errors, history.dropped)
        }
        None => (Vec::new(), 0),
    };
    Ok(Task {
        id: TaskId::parse(&id).map_err(|e| bad("id", &e))?,
        func_path: row.func_path,
        args: serde_json::from_str(&row.args).map_err(|e| bad("args", &e))?,
        kwargs: serde_json::from_str(&row.kwargs).map_err(|e| bad("kwargs", &e))?,
        status: row.status.parse::<TaskStatus>().map_err(|e| bad("status", &e))?,
        eta: from_ns(row.eta),
        interval: row.interval_ns.map(nanos),
        max_retries: row.max_retries,
        timeout: row.timeout_ns.map(nanos),
        attempts: row.attempts,
        created_at: from_ns(row.created_at),
        updated_at: from_ns(row.updated_at),
        started_at: row.started_at.map(from_ns),
        finished_at: row.finished_at.map(from_ns),
        series: row
            .series
            .map(|s| TaskId::parse(&s))
            .transpose()
            .map_err(|e| bad("series", &e))?,
        result: row
            .value
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| bad("result", &e))?,
        error: row
            .error
            .map(|v| serde_json::from_str::<TaskError>(&v))
            .transpose()
            .map_err(|e| bad("error", &e))?,
        lease,
        queue: row.queue,
        priority: row.priority,
        unique_key: row.unique_key,
        progress: row
            .progress
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| bad("progress", &e))?,
        errors,
        errors_dropped,
        unique_window: row
            .unique_window
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| bad("unique window", &e))?,
        meta: row
            .meta
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| bad("meta", &e))?
            .unwrap_or_default(),
        concurrency_key: row.concurrency_key,
        snoozes: row.snoozes,
    })
}

/// Reads the tasks of a `SELECT json_group_array({TASK_JSON}) {TASK_FROM} ...`
/// query (one row, one value), setting aside rows that do not make a task.
pub async fn fetch_split<'c, 'q>(
    executor: impl sqlx::Executor<'c, Database = Sqlite>,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    db: &Path,
) -> Result<(Vec<Task>, Vec<Unreadable>)> {
    let json = fetch_json(executor, query).await?;
    split_rows(json.as_deref(), db)
}

/// Reads the tasks of a `SELECT json_group_array({TASK_JSON}) {TASK_FROM} ...`
/// query: one row, one value.
pub async fn fetch<'c, 'q>(
    executor: impl sqlx::Executor<'c, Database = Sqlite>,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    db: &Path,
) -> Result<Vec<Task>> {
    let json = fetch_json(executor, query).await?;
    tasks_from_json(json.as_deref(), db)
}

/// Runs a command whose one row holds one JSON value, and returns the value.
pub async fn fetch_json<'c, 'q>(
    executor: impl sqlx::Executor<'c, Database = Sqlite>,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
) -> Result<Option<String>> {
    // `fetch_all`, not `fetch_optional`: the command may go on after the row
    // (a `COMMIT`), and stopping at the first row would not run it.
    match query.fetch_all(executor).await.map_err(sql_error)?.first() {
        Some(row) => row.try_get(0).map_err(sql_error),
        None => Ok(None),
    }
}

/// Loads the tasks with these ids (those that exist), in no particular order.
pub async fn load(session: &mut Session<'_>, ids: &[TaskId], db: &Path) -> Result<Vec<Task>> {
    let (tasks, mut unreadable) = load_split(session, ids, db).await?;
    match unreadable.pop() {
        None => Ok(tasks),
        Some(bad) => Err(Error::Corrupt {
            path: db.to_path_buf(),
            reason: bad.reason,
        }),
    }
}

/// Like [`load`], setting aside the rows that do not make a task.
pub async fn load_split(
    session: &mut Session<'_>,
    ids: &[TaskId],
    db: &Path,
) -> Result<(Vec<Task>, Vec<Unreadable>)> {
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids_json = serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())?;
    let sql = session.sql(&format!(
        "SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE t.id IN (SELECT value FROM json_each(?1))"
    ));
    fetch_split(session.conn(), sqlx::query(&sql).bind(ids_json), db).await
}

/// Inserts new tasks. A stored id aborts the statement (and only it) with a
/// conflict, so nothing of the batch is stored.
pub async fn insert(session: &mut Session<'_>, tasks: &[Task]) -> Result<()> {
    write(session, tasks, true).await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.message().contains("already exists") || db.is_unique_violation() => {
            Error::conflict("(batch)", "a task with one of these ids already exists")
        }
        _ => sql_error(e),
    })
}

/// Writes back changed tasks (and new ones), each moved to the index table of
/// its status, in one round trip. This is the final write of every change that
/// uses it.
pub async fn save(session: &mut Session<'_>, tasks: &[Task]) -> Result<()> {
    write(session, tasks, false).await.map_err(sql_error)
}

async fn write(session: &mut Session<'_>, tasks: &[Task], is_new: bool) -> sqlx::Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let command = save_command(tasks, is_new).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    // New tasks go in statements of `ROWS_PER_STATEMENT` rows, and a stored id
    // fails only its own statement: behind a savepoint, the statements before
    // it are undone too, so a refused enqueue stores nothing at any size. A
    // batch of one statement needs none: its failure is its first.
    let guarded = is_new && tasks.len() > ROWS_PER_STATEMENT;
    let body = command.statements.join("; ");
    let body = match guarded {
        true => format!("SAVEPOINT omniq_insert; {body}; RELEASE omniq_insert"),
        false => body,
    };
    let sql = session.final_sql(&body);
    let ran = query_with(&sql, command.values)
        .persistent(tasks.len() <= CACHED_UP_TO)
        .execute(session.conn())
        .await;
    if let Err(error) = ran {
        if guarded {
            // Fails harmlessly when the error came before the savepoint existed.
            let _ = session
                .conn()
                .execute("ROLLBACK TO omniq_insert; RELEASE omniq_insert")
                .await;
        }
        return Err(error);
    }
    session.final_ran();
    Ok(())
}

/// The command that inserts new tasks, with plain `?` parameters, and the
/// values to bind to them in order: a part of a command that several changes
/// share (see the writer's merged commands).
pub fn insert_command<'t>(tasks: impl IntoIterator<Item = &'t Task>) -> Result<(String, Vec<Value>)> {
    let command = save_command(tasks, true)?;
    Ok((command.statements.join("; "), command.values))
}
