//! Tasks as rows: the record (the whole task as `json`) beside the columns
//! queries need, read and written in batches; times as Unix nanoseconds, as
//! the other backends keep them; and the failures a transaction may retry.

use std::time::Duration;

use omniq_core::{Error, LeaseToken, Task};
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

/// A query being built.
pub(crate) type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Why a transaction's step stopped.
pub(crate) enum Fail {
    /// PostgreSQL asks for the transaction to be tried again (a deadlock, a
    /// serialization failure, a unique key a concurrent enqueue took first,
    /// a connection lost before the commit, which the server rolls back).
    Retry(String),
    /// The connection was lost while the server may have applied the write
    /// (at the commit, or during a statement that commits by itself): it is
    /// not tried again blindly, but checked, or answered as unknown.
    Unknown(String),
    /// An answer for the caller.
    Stop(Error),
}

/// Whether `error` says the connection is gone: a closed socket, or the
/// server's "connection failure" and "operator intervention" classes (a
/// restart, `pg_terminate_backend`).
fn connection_lost(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Io(io) => Some(format!("the connection was lost: {io}")),
        sqlx::Error::Database(db)
            if db
                .code()
                .as_deref()
                .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) =>
        {
            Some(format!("the connection was lost: {}", db.message()))
        }
        _ => None,
    }
}

impl Fail {
    /// A failure of the commit itself: tried again only when the server
    /// says the transaction did not commit; a connection lost at that moment
    /// leaves the outcome unknown.
    pub(crate) fn at_commit(error: sqlx::Error) -> Self {
        match connection_lost(&error) {
            Some(why) => Fail::Unknown(why),
            None => Fail::from(error),
        }
    }

    /// A failure before anything was written (opening a transaction, a
    /// read): a lost connection there may simply be tried again.
    pub(crate) fn before_write(error: sqlx::Error) -> Self {
        match Fail::from(error) {
            Fail::Unknown(why) => Fail::Retry(why),
            other => other,
        }
    }

    /// This failure as the caller's error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Fail::Stop(error) => error,
            Fail::Retry(why) => Error::backend("postgres", why),
            Fail::Unknown(why) => unknown(why),
        }
    }
}

/// The error of a write whose outcome could not be learnt.
pub(crate) fn unknown(why: String) -> Error {
    Error::backend(
        "postgres",
        format!("{why}; the change may or may not be stored (its outcome is unknown)"),
    )
}

impl From<sqlx::Error> for Fail {
    fn from(error: sqlx::Error) -> Self {
        // A connection the server closed (a restart, pg_terminate_backend,
        // a network cut): a statement that commits by itself may have been
        // applied. Inside a transaction nothing was, and `in_transaction!`
        // tries it again on a new connection.
        if let Some(why) = connection_lost(&error) {
            return Fail::Unknown(why);
        }
        if let sqlx::Error::Database(db) = &error {
            let code = db.code();
            let retry = matches!(code.as_deref(), Some("40001" | "40P01"))
                || (code.as_deref() == Some("23505") && db.constraint() == Some("tasks_unique_live"));
            if retry {
                return Fail::Retry(db.message().to_owned());
            }
            if code.as_deref() == Some("23505") && db.constraint() == Some("tasks_pkey") {
                return Fail::Stop(Error::conflict("?", "a task with this id already exists"));
            }
        }
        Fail::Stop(crate::sql_error(error))
    }
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Fail::Stop(error)
    }
}

pub(crate) fn to_ns(time: OffsetDateTime) -> omniq_core::Result<i64> {
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| Error::invalid_config("time", format!("{time} is outside the years 1677 to 2262")))
}

pub(crate) fn from_ns(ns: i64) -> OffsetDateTime {
    // Every i64 of nanoseconds is a valid time.
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The columns every read of tasks selects, in the order [`read`] takes them.
pub(crate) const COLUMNS: &str = "id, record::text, claim::text";

/// A claim made by the claim statement, kept beside the record it applies
/// to (the pending record, as last written whole): the arguments of
/// [`Task::claim`] and the token the statement drew. Reading a row replays
/// the claim with them, so the rule stays in one place, `Task::claim`.
#[derive(serde::Deserialize)]
struct Claim {
    worker: String,
    token: LeaseToken,
    /// When, in Unix nanoseconds.
    at: i64,
    /// For how long, in nanoseconds.
    lease_ns: u64,
}

/// The task of one row selected with [`COLUMNS`], or why it does not read back.
fn read(row: &PgRow) -> Result<Task, String> {
    let record: String = row.try_get(1).map_err(|e| e.to_string())?;
    let claim: Option<String> = row.try_get(2).map_err(|e| e.to_string())?;
    let mut task: Task = serde_json::from_str(&record).map_err(|e| e.to_string())?;
    if let Some(claim) = claim {
        let claim: Claim = serde_json::from_str(&claim).map_err(|e| format!("its claim: {e}"))?;
        task.claim(
            &claim.worker,
            Duration::from_nanos(claim.lease_ns),
            from_ns(claim.at),
        )
        .map_err(|e| format!("its claim: {e}"))?;
        if let Some(lease) = task.lease.as_mut() {
            lease.token = claim.token;
        }
    }
    Ok(task)
}

/// The task of each row selected with [`COLUMNS`]; a record that does not
/// read back is an error naming the task.
pub(crate) fn tasks(rows: &[PgRow]) -> Result<Vec<Task>, Fail> {
    rows.iter()
        .map(|row| {
            read(row).map_err(|e| {
                let id: String = row.try_get(0).unwrap_or_default();
                Fail::Stop(Error::Corrupt {
                    path: "postgres table tasks".into(),
                    reason: format!("task {id}: its stored record cannot be read: {e}"),
                })
            })
        })
        .collect()
}

/// The tasks of the rows whose records read back, and the `(id, reason)`
/// of each row whose record does not.
pub(crate) fn split(rows: &[PgRow]) -> (Vec<Task>, Vec<(String, String)>) {
    let mut tasks = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        match read(row) {
            Ok(task) => tasks.push(task),
            Err(reason) => unreadable.push((row.try_get(0).unwrap_or_default(), reason)),
        }
    }
    (tasks, unreadable)
}

/// The tasks of the rows whose records read back.
pub(crate) fn readable(rows: &[PgRow]) -> Vec<Task> {
    rows.iter().filter_map(|row| read(row).ok()).collect()
}

/// The `(id, reason)` of each row whose record does not read back.
pub(crate) fn unreadable(rows: &[PgRow]) -> Vec<(String, String)> {
    rows.iter()
        .filter_map(|row| {
            let id: String = row.try_get(0).ok()?;
            read(row).err().map(|e| (id, e))
        })
        .collect()
}

/// The tasks with these ids, locked for the transaction when `lock` (in id
/// order, so two transactions cannot lock them crosswise).
pub(crate) async fn load(
    s: &str,
    tx: &mut Transaction<'static, Postgres>,
    ids: &[String],
    lock: bool,
) -> Result<Vec<Task>, Fail> {
    let sql = format!(
        "SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY($1) ORDER BY id{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let rows = sqlx::query(&sql).bind(ids).fetch_all(&mut **tx).await?;
    tasks(&rows)
}

/// Writes `tasks` in one statement, atomic by itself: new rows only (`new`:
/// an id already stored is a conflict, and nothing is written), or new and
/// changed ones.
pub(crate) async fn save(s: &str, conn: &mut PgConnection, tasks: &[Task], new: bool) -> Result<(), Fail> {
    save_announcing(s, conn, tasks, new, None).await
}

/// As [`save`], and, in the same statement, a notification on `channel` for
/// each of `queues` (see [`crate::wake`]): sent at commit, and only if the
/// write is.
pub(crate) async fn save_announcing(
    s: &str,
    conn: &mut PgConnection,
    tasks: &[Task],
    new: bool,
    announce: Option<(&str, Vec<String>)>,
) -> Result<(), Fail> {
    if tasks.is_empty() {
        return Ok(());
    }
    let announce = announce.filter(|(_, queues)| !queues.is_empty());
    let mut ids = Vec::with_capacity(tasks.len());
    let mut statuses = Vec::with_capacity(tasks.len());
    let mut queues = Vec::with_capacity(tasks.len());
    let mut priorities = Vec::with_capacity(tasks.len());
    let mut etas = Vec::with_capacity(tasks.len());
    let mut keys = Vec::with_capacity(tasks.len());
    let mut series = Vec::with_capacity(tasks.len());
    let mut finished = Vec::with_capacity(tasks.len());
    let mut expires = Vec::with_capacity(tasks.len());
    let mut records = Vec::with_capacity(tasks.len());
    let mut concurrency = Vec::with_capacity(tasks.len());
    for task in tasks {
        concurrency.push(task.concurrency_key.clone());
        ids.push(task.id.to_string());
        statuses.push(task.status.as_str().to_owned());
        queues.push(task.queue.clone());
        priorities.push(task.priority);
        etas.push(to_ns(task.eta)?);
        keys.push(task.unique_key.clone());
        series.push(task.series.map(|s| s.to_string()));
        finished.push(task.finished_at.map(to_ns).transpose()?);
        expires.push(task.lease.as_ref().map(|l| to_ns(l.expires_at)).transpose()?);
        records.push(serde_json::to_string(task).map_err(Error::from)?);
    }
    let upsert = match new {
        true => "",
        false => {
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, queue = excluded.queue, \
             priority = excluded.priority, eta = excluded.eta, unique_key = excluded.unique_key, \
             series = excluded.series, finished_at = excluded.finished_at, \
             lease_expires = excluded.lease_expires, record = excluded.record, claim = NULL, \
             concurrency_key = excluded.concurrency_key"
        }
    };
    let insert = format!(
        "INSERT INTO {s}.tasks (id, status, queue, priority, eta, unique_key, series, finished_at, \
         lease_expires, record, concurrency_key) \
         SELECT i, st, q, p, e, k, se, f, x, r::json, ck FROM UNNEST($1::text[], $2::text[], $3::text[], \
         $4::int2[], $5::int8[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[]) \
         AS u(i, st, q, p, e, k, se, f, x, r, ck){upsert}"
    );
    let sql = match announce {
        None => insert,
        // A data-changing CTE runs to its end whether or not it is read.
        Some(_) => format!(
            "WITH saved AS ({insert} RETURNING 1) \
             SELECT pg_notify($12, w) FROM UNNEST($13::text[]) AS n(w)"
        ),
    };
    let query = sqlx::query(&sql)
        .bind(ids)
        .bind(statuses)
        .bind(queues)
        .bind(priorities)
        .bind(etas)
        .bind(keys)
        .bind(series)
        .bind(finished)
        .bind(expires)
        .bind(records)
        .bind(concurrency);
    let query = match announce {
        Some((channel, queues)) => query.bind(channel).bind(queues),
        None => query,
    };
    query.execute(&mut *conn).await?;
    Ok(())
}
