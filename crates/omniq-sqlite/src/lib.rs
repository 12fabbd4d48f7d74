//! OmniQ's SQLite backend: every task in one database file, safe for several
//! workers and several processes.
//!
//! ```no_run
//! use omniq_core::{Durability, NewTask, Settings, StorageExt};
//! use omniq_sqlite::SqliteStorage;
//!
//! # async fn demo() -> omniq_core::Result<()> {
//! let store = SqliteStorage::open_path("./omniq_data/omniq.db", Durability::Normal).await?;
//! let id = store.enqueue_one(NewTask::new("report.build"), &Settings::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The layout: tables `tasks` (records), `results` (results and errors),
//! `pending` (the dequeue index by eta), `running` (claims and leases) and
//! `completed` (finished tasks by finish time), in WAL mode. All writes of one
//! process go through one connection owned by a writer task, which groups the
//! changes that queue up into one `BEGIN IMMEDIATE` transaction; reads use a
//! separate read-only pool. See `docs/sqlite-backend.md`.

mod file;
mod rows;
pub mod schema;
mod writer;

pub use file::integrity_check_file;
use file::{check_open, create_private, is_cantopen, open_error};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use omniq_core::{
    async_trait, ClaimRequest, Damaged, Durability, Enqueued, Error, Finish, FinishOutcome, LeaseRef,
    ListQuery, Progress, PutAnswer, PutSchedule, QueueStats, QueueTally, RenewOutcome, Result, Schedule,
    Serializer, Settings, StatusCounts, Storage, Task, TaskId, TaskStatus, WorkerBeat,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::rows::{to_ns, TASK_FROM, TASK_JSON};
use crate::writer::Op;

/// How long a connection waits for another process's write lock before
/// failing, unless the settings say otherwise.
const BUSY_TIMEOUT: Duration = omniq_core::settings::DEFAULT_LOCK_TIMEOUT;
/// Read connections per store.
const READERS: u32 = 4;

/// Names the database file in an error that says the file is damaged
/// (SQLite's `SQLITE_CORRUPT` or `SQLITE_NOTADB`), and says what to do;
/// any other error is returned as it is.
pub(crate) fn locate(path: &Path, error: Error) -> Error {
    let code = match &error {
        Error::Backend { source, .. } => match source.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => db.code().and_then(|c| c.parse::<i32>().ok()),
            _ => None,
        },
        _ => None,
    };
    // Extended result codes keep the primary code in their low byte.
    match code.map(|c| c & 0xff) {
        Some(11 | 26) => Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{error}: the database file is damaged; `omniq check` shows SQLite's own report of it. \
                 Restore the file from a backup, or copy what is readable into a new store"
            ),
        },
        _ => error,
    }
}

/// Turns a driver error into OmniQ's error.
pub(crate) fn sql_error(error: sqlx::Error) -> Error {
    Error::backend("sqlite", error)
}

/// A [`Storage`] in one SQLite database file.
///
/// Cloning is cheap and shares the writer and the read pool. The writer task
/// stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct SqliteStorage {
    path: PathBuf,
    /// `None` when opened read-only.
    writer: Option<mpsc::Sender<Op>>,
    readers: SqlitePool,
}

impl SqliteStorage {
    /// Opens the database that `settings` name (`db_path`, or
    /// `{base_dir}/omniq.db`) with their durability. The folder is created if
    /// missing.
    pub async fn open(settings: &Settings) -> Result<Self> {
        if settings.serializer != Serializer::Json {
            return Err(Error::invalid_config(
                "OMNIQ_SERIALIZER",
                "the sqlite backend stores payloads as JSON text; msgpack is not supported by it yet, use json",
            ));
        }
        Self::open_with(settings.sqlite_path(), settings.durability, settings.lock_timeout).await
    }

    /// Opens (creating if missing) the database at `path`.
    ///
    /// A new database gets the OmniQ schema; an older OmniQ database is
    /// migrated forward. A file that is not a SQLite database, another
    /// program's database, or one written by a newer OmniQ is refused with
    /// [`Error::Incompatible`] and left untouched.
    pub async fn open_path(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with(path, durability, BUSY_TIMEOUT).await
    }

    /// Like [`SqliteStorage::open_path`], waiting at most `lock_timeout` for
    /// another process's write lock (SQLite's `busy_timeout`) before failing.
    pub async fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
        lock_timeout: Duration,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Self::open_checked(path.clone(), durability, lock_timeout)
            .await
            .map_err(|e| locate(&path, e))
    }

    async fn open_checked(path: PathBuf, durability: Durability, lock_timeout: Duration) -> Result<Self> {
        create_private(&path)?;
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(lock_timeout)
            .log_statements(tracing::log::LevelFilter::Trace);

        // Identify the file before changing anything in it: even switching the
        // journal mode writes to the header of someone else's database.
        let mut writer = base
            .clone()
            .create_if_missing(true)
            .connect()
            .await
            .map_err(|e| open_error(&path, e))?;
        schema::prepare(&mut writer, &path).await?;

        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut writer)
            .await
            .map_err(sql_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(
                "sqlite",
                format!(
                    "{} refused WAL journaling (journal_mode is {mode})",
                    path.display()
                ),
            ));
        }
        let (synchronous, synchronous_name) = match durability {
            Durability::Normal => (SqliteSynchronous::Normal, "NORMAL"),
            Durability::Full => (SqliteSynchronous::Full, "FULL"),
        };
        sqlx::query(&format!("PRAGMA synchronous = {synchronous_name}"))
            .execute(&mut writer)
            .await
            .map_err(sql_error)?;
        // SQLite ignores pragmas it does not understand, so read the value back.
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut writer)
            .await
            .map_err(sql_error)?;
        let wanted = match durability {
            Durability::Normal => 1,
            Durability::Full => 2,
        };
        if level != wanted {
            return Err(Error::backend(
                "sqlite",
                format!("PRAGMA synchronous is {level}, expected {wanted}"),
            ));
        }

        writer::setup(&mut writer).await?;
        let reconnect = base
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous);
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_lazy_with(
                base.read_only(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous),
            );
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(writer::run(writer, reconnect, path.clone(), receiver));
        Ok(SqliteStorage {
            path,
            writer: Some(sender),
            readers,
        })
    }

    /// Opens the existing OmniQ database at `path` only to read it: the file
    /// is not created, its schema is not migrated (an older database keeps
    /// its version; commands that write upgrade it), its journal mode is not
    /// switched, and every change is refused with [`Error::Unsupported`].
    /// Reads wait up to `lock_timeout` where SQLite makes them wait.
    pub async fn open_read_only(path: impl AsRef<Path>, lock_timeout: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no database file here"),
            ));
        }
        let mut options = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .busy_timeout(lock_timeout)
            .log_statements(tracing::log::LevelFilter::Trace);
        let checked = match check_open(&options, &path).await {
            // SQLITE_CANTOPEN: a WAL database whose `-shm` cannot be written
            // (a read-only file system, a folder the user cannot write). No
            // writer can be running without writing that file, so the
            // database is read as it is, without locks.
            Err(error) if is_cantopen(&error) => {
                tracing::info!(db = %path.display(), "reading without locks: the database's folder cannot be written");
                options = options.immutable(true);
                check_open(&options, &path).await
            }
            other => other,
        };
        let version = checked.map_err(|e| locate(&path, e))?;
        let mut readers = SqlitePoolOptions::new().max_connections(READERS);
        if version < schema::CURRENT_VERSION {
            // An older database is read as it is, through views that show it
            // in this build's layout.
            readers = readers.after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(schema::older_as_current(version).as_str()).await?;
                    Ok(())
                })
            });
        }
        let readers = readers.connect_lazy_with(options);
        Ok(SqliteStorage {
            path,
            writer: None,
            readers,
        })
    }

    /// Copies everything in the WAL back into the database file and empties
    /// the WAL (`PRAGMA wal_checkpoint(TRUNCATE)`), waiting for writers up to
    /// the busy timeout: before copying the file for a backup, say. Runs on a
    /// connection of its own, so it waits for no change queued in this
    /// process.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.writer.is_none() {
            return Err(Error::Unsupported(format!(
                "the SQLite store at {} was opened read-only",
                self.path.display()
            )));
        }
        let mut conn = SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(BUSY_TIMEOUT)
            .connect()
            .await
            .map_err(|e| open_error(&self.path, e))?;
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| locate(&self.path, sql_error(e)))?;
        let _ = conn.close().await;
        match busy {
            0 => Ok(()),
            _ => Err(Error::backend(
                "sqlite",
                format!(
                    "{}: the checkpoint could not finish: a reader or writer kept it busy",
                    self.path.display()
                ),
            )),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64> {
        let mut conn = self.readers.acquire().await.map_err(sql_error)?;
        schema::version(&mut conn).await
    }

    /// SQLite's own check of the file (`PRAGMA integrity_check`): `["ok"]` when
    /// the database is sound, else the problems it found.
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.readers)
            .await
            .map_err(sql_error)
    }

    /// The value of a pragma as the write connection sees it (e.g.
    /// `journal_mode`, `synchronous`), for checks and diagnostics.
    pub async fn pragma(&self, name: &str) -> Result<String> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid_config(
                "pragma",
                format!("{name:?} is not a pragma name"),
            ));
        }
        let row = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&self.readers)
            .await
            .map_err(sql_error)?;
        let value: sqlx::Result<String> = row.try_get(0);
        match value {
            Ok(text) => Ok(text),
            Err(_) => Ok(row.try_get::<i64, _>(0).map_err(sql_error)?.to_string()),
        }
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        self.write_unlocated(make)
            .await
            .map_err(|e| locate(&self.path, e))
    }

    async fn write_unlocated<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let Some(writer) = &self.writer else {
            return Err(Error::Unsupported(format!(
                "the SQLite store at {} was opened read-only",
                self.path.display()
            )));
        };
        let (reply, answer) = oneshot::channel();
        writer
            .send(make(reply))
            .await
            .map_err(|_| Error::backend("sqlite", "the writer task has stopped"))?;
        answer.await.map_err(|_| {
            Error::backend(
                "sqlite",
                "the writer failed while applying this change (see the log); \
                 it was rolled back unless its transaction had committed",
            )
        })?
    }

    /// Test hook: the writer panics while applying the change this sends.
    #[doc(hidden)]
    pub async fn panic_in_writer(&self) -> Result<()> {
        self.write(Op::Panic).await
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.import(tasks).await
    }

    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Op::Enqueue(tasks, reply)).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        self.write(|reply| Op::Claim(request, reply)).await
    }

    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        self.write(|reply| Op::PutSchedule(Box::new(schedule), mode, reply))
            .await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let records: Vec<(String, String)> =
            sqlx::query_as("SELECT name, record FROM schedules ORDER BY name")
                .fetch_all(&self.readers)
                .await
                .map_err(sql_error)?;
        records
            .into_iter()
            .map(|(name, record)| {
                serde_json::from_str(&record).map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    reason: format!("schedule {name:?} cannot be read: {e}"),
                })
            })
            .collect()
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(|reply| Op::RemoveSchedule(name, reply)).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let name = name.to_owned();
        self.write(|reply| Op::PauseSchedule(name, paused, reply)).await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        let name = name.to_owned();
        self.write(|reply| Op::FireSchedule(name, due, next, Box::new(task), reply))
            .await
    }

    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        let name = name.to_owned();
        self.write(|reply| Op::SkipSchedule(name, due, next, reply)).await
    }

    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        self.write(|reply| Op::Progress(lease, progress, reply)).await
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let leases = leases.to_vec();
        self.write(|reply| Op::Renew(leases, lease_for, now, reply)).await
    }

    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Op::Finish(finishes, now, reply)).await
    }

    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        // `pending_claim` orders each priority level of a queue by eta: the
        // earliest eta is the least of the first entry of each level, which
        // the walk over the levels reads with one seek each.
        const NEXT_DUE: &str = "WITH RECURSIVE levels(p) AS ( \
                SELECT max(priority) FROM pending WHERE queue = ?1 \
                    AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE name = ?1) \
                UNION ALL \
                SELECT (SELECT max(priority) FROM pending WHERE queue = ?1 AND priority < p) \
                FROM levels WHERE p IS NOT NULL) \
            SELECT min((SELECT min(eta) FROM pending WHERE queue = ?1 AND priority = levels.p)) \
            FROM levels WHERE p IS NOT NULL";
        let mut earliest: Option<i64> = None;
        for queue in queues {
            let eta: Option<i64> = sqlx::query_scalar(NEXT_DUE)
                .bind(queue)
                .fetch_one(&self.readers)
                .await
                .map_err(|e| locate(&self.path, sql_error(e)))?;
            earliest = match (earliest, eta) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest.map(rows::from_ns))
    }

    async fn get(&self, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE t.id = ?1");
        rows::fetch(&self.readers, sqlx::query(&sql).bind(id.to_string()), &self.path)
            .await
            .map_err(|e| locate(&self.path, e))?
            .pop()
            .ok_or_else(|| Error::not_found(id))
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        let (compare, order) = query.order.keyset();
        // The page is chosen in a subquery; the aggregate keeps its order.
        let sql = format!(
            "SELECT json_group_array({TASK_JSON}) FROM (SELECT id FROM tasks \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR id {compare} ?2) \
             AND (?4 IS NULL OR queue = ?4) AND (?5 IS NULL OR func_path = ?5) \
             ORDER BY id {order} LIMIT ?3) page JOIN tasks t ON t.id = page.id \
             LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id"
        );
        let query = sqlx::query(&sql)
            .bind(query.status.map(TaskStatus::as_str))
            .bind(query.after.map(|id| id.to_string()))
            .bind(query.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)))
            .bind(query.queue)
            .bind(query.func_path);
        let (mut tasks, unreadable) = rows::fetch_split(&self.readers, query, &self.path)
            .await
            .map_err(|e| locate(&self.path, e))?;
        rows::report_unreadable(&unreadable, &self.path, "list");
        // An aggregate's input order is not promised, so restore the page's.
        match order {
            "ASC" => tasks.sort_by_key(|t| t.id),
            _ => tasks.sort_by_key(|t| std::cmp::Reverse(t.id)),
        }
        Ok(tasks)
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.write(|reply| Op::Cancel(id, now, reply)).await
    }

    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.write(|reply| Op::Retry(id, now, reply)).await
    }

    async fn counts(&self) -> Result<StatusCounts> {
        let rows = sqlx::query("SELECT status, count(*) FROM tasks GROUP BY status")
            .fetch_all(&self.readers)
            .await
            .map_err(|e| locate(&self.path, sql_error(e)))?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let status: String = row.try_get(0).map_err(sql_error)?;
            let count: i64 = row.try_get(1).map_err(sql_error)?;
            let status = TaskStatus::from_str(&status).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            *counts.get_mut(status) = count as u64;
        }
        Ok(counts)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let queue = queue.to_owned();
        self.write(|reply| Op::SetPaused(queue, paused, reply)).await
    }

    async fn paused(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM paused_queues ORDER BY name")
            .fetch_all(&self.readers)
            .await
            .map_err(|e| locate(&self.path, sql_error(e)))
    }

    async fn set_queue_limits(&self, queue: &str, limits: omniq_core::QueueLimits) -> Result<()> {
        let queue = queue.to_owned();
        self.write(|reply| Op::SetQueueLimits(queue, Box::new(limits), reply))
            .await
    }

    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<omniq_core::QueueFlow>> {
        let now = to_ns(now)?;
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT q.name, q.limits, \
             (SELECT count(*) FROM running rn JOIN tasks t ON t.id = rn.id \
              WHERE t.queue = q.name AND rn.expires_at > ?1), \
             (SELECT tat FROM rate_buckets WHERE queue = q.name AND key = '' AND tat > ?1) \
             FROM queue_limits q ORDER BY q.name",
        )
        .bind(now)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| locate(&self.path, sql_error(e)))?;
        rows.into_iter()
            .map(|(queue, limits, running, tat)| {
                let limits = serde_json::from_str(&limits).map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    reason: format!("the limits of queue {queue:?} cannot be read: {e}"),
                })?;
                Ok(omniq_core::QueueFlow {
                    queue,
                    limits,
                    running: u32::try_from(running).unwrap_or(u32::MAX),
                    queue_tat: tat.map(rows::from_ns),
                })
            })
            .collect()
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        // One pass over `tasks` for the counts, one over `pending` for the
        // earliest etas: a report, not a hot path.
        let counted: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT queue, status, count(*) FROM tasks GROUP BY queue, status")
                .fetch_all(&self.readers)
                .await
                .map_err(|e| locate(&self.path, sql_error(e)))?;
        let earliest: Vec<(String, i64)> =
            sqlx::query_as("SELECT queue, min(eta) FROM pending GROUP BY queue")
                .fetch_all(&self.readers)
                .await
                .map_err(|e| locate(&self.path, sql_error(e)))?;
        let mut tally = QueueTally::new(self.paused().await?);
        for (queue, status, count) in counted {
            let status = TaskStatus::from_str(&status).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            tally.count(&queue, status, count as u64);
        }
        for (queue, eta) in earliest {
            tally.queue(&queue).pending_eta(rows::from_ns(eta));
        }
        Ok(tally.finish())
    }

    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64> {
        to_ns(finished_before)?;
        self.write(|reply| Op::Purge(finished_before, reply)).await
    }

    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64> {
        to_ns(finished_before)?;
        self.write(|reply| Op::Prune(status, finished_before, limit, reply))
            .await
    }

    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: Duration) -> Result<bool> {
        let chore = chore.to_owned();
        self.write(|reply| Op::TakeTurn(chore, now, every, reply)).await
    }

    async fn beat(&self, beat: WorkerBeat) -> Result<()> {
        self.write(|reply| Op::Beat(Box::new(beat), reply)).await
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>> {
        let records: Vec<(String, String)> = sqlx::query_as("SELECT id, record FROM workers ORDER BY id")
            .fetch_all(&self.readers)
            .await
            .map_err(|e| locate(&self.path, sql_error(e)))?;
        records
            .into_iter()
            .map(|(id, record)| {
                serde_json::from_str(&record).map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    reason: format!("the heartbeat of worker {id:?} cannot be read: {e}"),
                })
            })
            .collect()
    }

    async fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        let id = worker_id.to_owned();
        self.write(|reply| Op::RemoveWorker(id, reply)).await
    }

    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.write(|reply| Op::RequeueExpired(now, reply)).await
    }

    async fn damaged(&self) -> Result<Vec<Damaged>> {
        // Page by id, so a big database is read a slice at a time.
        let mut found = Vec::new();
        let mut after = String::new();
        loop {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE id > ?1 ORDER BY id LIMIT 500")
                    .bind(&after)
                    .fetch_all(&self.readers)
                    .await
                    .map_err(sql_error)?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            let sql =
                format!("SELECT json_group_array({TASK_JSON}) {TASK_FROM} WHERE t.id IN (SELECT value FROM json_each(?1))");
            let query = sqlx::query(&sql).bind(serde_json::to_string(&ids)?);
            let (_, unreadable) = rows::fetch_split(&self.readers, query, &self.path).await?;
            found.extend(unreadable.into_iter().map(|bad| Damaged {
                id: bad.id,
                reason: bad.reason,
                location: self.path.clone(),
            }));
        }
        Ok(found)
    }
}
