//! How a `Task` maps onto the five tables, and the batched statements that load
//! and save many tasks at once.
//!
//! A batch travels to SQLite as one JSON array bound to one parameter and is
//! unpacked with `json_each`, so saving a thousand tasks costs the same handful
//! of statements as saving one. Payloads ride inside it as JSON *strings*, so
//! SQLite hands back the exact text serde wrote.

use std::path::Path;
use std::time::Duration;

use omniq_core::{Error, Lease, LeaseToken, Result, Task, TaskError, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Row, Sqlite};
use time::OffsetDateTime;

use crate::sql_error;
use crate::writer::Session;

/// One task as a JSON array, for
/// `SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE ...`: a whole batch
/// comes back from the driver's thread as one value instead of row by row.
pub const TASK_JSON: &str =
    "json_array(t.id, t.func_path, t.args, t.kwargs, t.status, t.eta, t.interval_ns, \
     t.max_retries, t.timeout_ns, t.attempts, t.created_at, t.updated_at, t.started_at, t.finished_at, \
     t.series, r.value, r.error, rn.worker_id, rn.token, rn.expires_at)";

/// The joins that gather one task from its tables.
pub const TASK_FROM: &str =
    "FROM tasks t LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id";

pub fn to_ns(time: OffsetDateTime) -> Result<i64> {
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| Error::invalid_config("time", format!("{time} is outside the years 1677 to 2262")))
}

fn from_ns(ns: i64) -> OffsetDateTime {
    // Every i64 of nanoseconds is a valid time, so this cannot fail.
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// One task as the batch statements read it.
#[derive(Serialize)]
pub struct RowOut<'a> {
    id: String,
    func_path: &'a str,
    args: String,
    kwargs: String,
    status: &'static str,
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
    worker_id: Option<&'a str>,
    token: Option<String>,
    expires_at: Option<i64>,
}

impl<'a> RowOut<'a> {
    pub fn new(task: &'a Task) -> Result<Self> {
        Ok(RowOut {
            id: task.id.to_string(),
            func_path: &task.func_path,
            args: serde_json::to_string(&task.args)?,
            kwargs: serde_json::to_string(&task.kwargs)?,
            status: task.status.as_str(),
            eta: to_ns(task.eta)?,
            interval_ns: task.interval.map(duration_ns),
            max_retries: task.max_retries,
            timeout_ns: task.timeout.map(duration_ns),
            attempts: task.attempts,
            created_at: to_ns(task.created_at)?,
            updated_at: to_ns(task.updated_at)?,
            started_at: task.started_at.map(to_ns).transpose()?,
            finished_at: task.finished_at.map(to_ns).transpose()?,
            series: task.series.map(|s| s.to_string()),
            value: task.result.as_ref().map(serde_json::to_string).transpose()?,
            error: task.error.as_ref().map(serde_json::to_string).transpose()?,
            worker_id: task.lease.as_ref().map(|l| l.worker_id.as_str()),
            token: task.lease.as_ref().map(|l| l.token.to_string()),
            expires_at: task.lease.as_ref().map(|l| to_ns(l.expires_at)).transpose()?,
        })
    }
}

/// The JSON array of a batch of tasks.
pub fn batch_json(tasks: &[Task]) -> Result<String> {
    let rows = tasks.iter().map(RowOut::new).collect::<Result<Vec<_>>>()?;
    Ok(serde_json::to_string(&rows)?)
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
}

/// Reads the tasks of one `json_group_array({TASK_JSON})` value. A row that
/// does not make a task is reported as corruption of the database, naming the
/// task where it can.
pub fn tasks_from_json(json: Option<&str>, db: &Path) -> Result<Vec<Task>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: db.to_path_buf(),
        reason,
    };
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let rows: Vec<RowIn> =
        serde_json::from_str(json).map_err(|e| corrupt(format!("a task row has the wrong shape: {e}")))?;
    rows.into_iter()
        .map(|row| task_from_row(row).map_err(corrupt))
        .collect()
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
    })
}

/// Reads the tasks of a `SELECT json_group_array({TASK_JSON}) {TASK_FROM} ...`
/// query: one row, one value.
pub async fn fetch<'c, 'q>(
    executor: impl sqlx::Executor<'c, Database = Sqlite>,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    db: &Path,
) -> Result<Vec<Task>> {
    let json: Option<String> = query
        .fetch_optional(executor)
        .await
        .map_err(sql_error)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(sql_error)?
        .flatten();
    tasks_from_json(json.as_deref(), db)
}

/// Loads the tasks with these ids (those that exist), in no particular order.
pub async fn load(session: &mut Session<'_>, ids: &[TaskId], db: &Path) -> Result<Vec<Task>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids_json = serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())?;
    let sql = session.sql(&format!(
        "SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE t.id IN (SELECT value FROM json_each(?1))"
    ));
    fetch(session.conn(), sqlx::query(&sql).bind(ids_json), db).await
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
/// its status. One statement: the `task_rows` trigger does the rest.
pub async fn save(session: &mut Session<'_>, tasks: &[Task]) -> Result<()> {
    write(session, tasks, false).await.map_err(sql_error)
}

async fn write(session: &mut Session<'_>, tasks: &[Task], is_new: bool) -> sqlx::Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let batch = batch_json(tasks).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let sql = session.sql(WRITE_ROWS);
    sqlx::query(&sql)
        .bind(batch)
        .bind(is_new)
        .execute(session.conn())
        .await?;
    Ok(())
}

const WRITE_ROWS: &str = "INSERT INTO task_rows (id, func_path, args, kwargs, status, eta, interval_ns, \
    max_retries, timeout_ns, attempts, created_at, updated_at, started_at, finished_at, series, value, error, \
    worker_id, token, expires_at, is_new) \
    SELECT j.value->>'id', j.value->>'func_path', j.value->>'args', j.value->>'kwargs', j.value->>'status', \
    j.value->>'eta', j.value->>'interval_ns', j.value->>'max_retries', j.value->>'timeout_ns', \
    j.value->>'attempts', j.value->>'created_at', j.value->>'updated_at', j.value->>'started_at', \
    j.value->>'finished_at', j.value->>'series', j.value->>'value', j.value->>'error', \
    j.value->>'worker_id', j.value->>'token', j.value->>'expires_at', ?2 FROM json_each(?1) j";
