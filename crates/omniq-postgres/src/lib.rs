//! OmniQ's PostgreSQL backend: one task table in a schema of its own, claims
//! with `FOR UPDATE SKIP LOCKED`, finishes fenced by the lease token, unique
//! keys held by a partial unique index, and an interval series locked by an
//! advisory lock that its cancel and its finishes both take.
//!
//! ```no_run
//! # async fn demo() -> omniq_core::Result<()> {
//! use omniq_postgres::PostgresStorage;
//! let store = PostgresStorage::connect("postgres://127.0.0.1/test", "omniq").await?;
//! # Ok(())
//! # }
//! ```

mod rows;
pub mod schema;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use omniq_core::queue::{key_held, QueueStats, QueueTally};
use omniq_core::{
    async_trait, cancel_in_scope, CancelScope, ClaimRequest, Damaged, Enqueued, Error, Finish, FinishOutcome,
    LeaseRef, ListQuery, Progress, PutAnswer, PutSchedule, RenewOutcome, Result, Schedule, StatusCounts,
    Storage, Task, TaskId, TaskStatus, WorkerBeat,
};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use write::holders;

use rows::{from_ns, to_ns, Fail};

/// How often a write is tried again when PostgreSQL answers a deadlock, a
/// serialization failure, or a unique key taken by a concurrent enqueue.
pub(crate) const ATTEMPTS: usize = 8;

/// Runs `$body` in a transaction of `$store`'s pool, with `$tx` the
/// transaction, and tries again (at most [`ATTEMPTS`] times) while PostgreSQL
/// answers that it must: a deadlock, a serialization failure, or a unique
/// key that a concurrent enqueue took first. The body's `?` takes sqlx's and
/// OmniQ's errors alike.
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut last = String::new();
        let mut outcome = None;
        for _ in 0..$crate::ATTEMPTS {
            let step: std::result::Result<_, Fail> = async {
                let mut $tx = $store.pool.begin().await.map_err(Fail::before_write)?;
                let body: std::result::Result<_, Fail> = async { $body }.await;
                match body {
                    Ok(value) => {
                        $tx.commit().await.map_err(Fail::at_commit)?;
                        Ok(value)
                    }
                    // The connection was lost before the commit: the server
                    // rolled the transaction back, so it is tried again.
                    Err(Fail::Unknown(why)) => Err(Fail::Retry(why)),
                    Err(fail) => {
                        // Rolled back here, before the answer: a dropped
                        // transaction is rolled back only when the pool gets
                        // its connection back, on another task, and until
                        // then its row locks hide the rows from every claim's
                        // `SKIP LOCKED`. A rollback that fails leaves a broken
                        // connection, which the pool closes (and the server
                        // then releases the locks).
                        let _ = $tx.rollback().await;
                        Err(fail)
                    }
                }
            }
            .await;
            match step {
                Ok(value) => {
                    outcome = Some(value);
                    break;
                }
                Err(Fail::Retry(why)) => last = why,
                Err(Fail::Unknown(why)) => return Err($crate::rows::unknown(why)),
                Err(Fail::Stop(error)) => return Err(error),
            }
        }
        match outcome {
            Some(value) => value,
            None => {
                return Err(omniq_core::Error::backend(
                    "postgres",
                    format!("gave up after {} attempts: {last}", $crate::ATTEMPTS),
                ))
            }
        }
    }};
}

// After the macro, which they use.
mod claim;
mod connect;
mod finish;
mod flow;
mod schedules;
mod upkeep;
mod wake;
mod workers;
mod write;

pub use connect::ConnectOptions;
/// A database URL without its password, to name it in errors and logs.
pub use omniq_core::redact_url as redact;
/// The sqlx this backend is built on: a program that enqueues in its own
/// transaction uses this one, so the connection types match.
pub use sqlx;
pub use write::enqueue_in;

/// A PostgreSQL error as OmniQ's.
pub(crate) fn sql_error(error: sqlx::Error) -> Error {
    Error::backend("postgres", error)
}

/// A [`Storage`] in a PostgreSQL schema, shared by any number of processes
/// on any number of hosts.
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    /// The connections claims run on, which commit without waiting for the
    /// disk (see `connect`).
    claims: PgPool,
    /// Opened only to read: every change is refused.
    read_only: bool,
    /// The schema's name, quoted.
    s: String,
    schema: String,
    /// The channel its enqueues are announced on.
    channel: String,
    /// Hears other hosts' enqueues; none in poll-only mode.
    listener: Option<Arc<wake::Listener>>,
    /// Vacuums the task table as claims turn it over.
    upkeep: Arc<upkeep::Upkeep>,
    /// The tasks this process claimed, for the short way of their finish.
    claimed: Arc<finish::Claimed>,
    /// The queues this process last found with flow-control settings.
    flow: Arc<flow::Known>,
}

impl PostgresStorage {
    /// Refuses a change on a store opened only to read.
    fn writable(&self) -> Result<()> {
        match self.read_only {
            true => Err(Error::Unsupported(format!(
                "the postgres schema {} was opened only to read",
                self.schema
            ))),
            false => Ok(()),
        }
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The version of the OmniQ tables in the schema, as stored
    /// ([`schema::CURRENT_VERSION`] is this build's).
    pub async fn schema_version(&self) -> Result<i64> {
        let version: String =
            sqlx::query_scalar(&self.q("SELECT value FROM {s}.omniq_meta WHERE key = 'schema_version'"))
                .fetch_one(&self.pool)
                .await
                .map_err(sql_error)?;
        version.parse().map_err(|_| {
            Error::backend(
                "postgres",
                format!("the stored schema version {version:?} is not a number"),
            )
        })
    }

    /// `sql` with `{s}` replaced by the quoted schema.
    fn q(&self, sql: &str) -> String {
        sql.replace("{s}", &self.s).replace("{COLUMNS}", rows::COLUMNS)
    }

    /// Locks the interval series of these tasks (by their stored records),
    /// in a fixed order: a finish that stores a series' next occurrence and a
    /// cancel of that series exclude each other.
    async fn lock_series(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        series: impl IntoIterator<Item = TaskId>,
    ) -> std::result::Result<(), Fail> {
        let series: BTreeSet<String> = series.into_iter().map(|s| s.to_string()).collect();
        for id in series {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('omniq-series:' || $1))")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The tasks with these ids, locked (in id order), after the locks of
    /// their series (in series order), in one round trip: the series locks
    /// are an init plan of the statement, so they are taken before any row's.
    async fn load_locking_series(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        ids: &[String],
    ) -> std::result::Result<Vec<Task>, Fail> {
        let rows = sqlx::query(&self.q("WITH locks AS MATERIALIZED ( \
                 SELECT pg_advisory_xact_lock(hashtext('omniq-series:' || series)) FROM ( \
                     SELECT DISTINCT series FROM {s}.tasks WHERE id = ANY($1) AND series IS NOT NULL \
                     ORDER BY series) AS s) \
             SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY($1) \
             AND (SELECT count(*) FROM locks) >= 0 ORDER BY id FOR UPDATE"))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        rows::tasks(&rows)
    }

    /// The series of the given tasks, read without locks.
    async fn series_of(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        ids: &[String],
    ) -> std::result::Result<Vec<TaskId>, Fail> {
        let found: Vec<String> = sqlx::query_scalar(
            &self.q("SELECT DISTINCT series FROM {s}.tasks WHERE id = ANY($1) AND series IS NOT NULL"),
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        Ok(found.iter().filter_map(|s| TaskId::parse(s).ok()).collect())
    }

    /// Fails, for good, running tasks whose records cannot be read, so the
    /// lease pass goes on for the others and they are not left `running`
    /// for every later pass to trip over. Their records stay as they are
    /// for a person to inspect (`damaged` lists them).
    async fn fail_unreadable(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        unreadable: &[(String, String)],
        now: OffsetDateTime,
    ) -> std::result::Result<(), Fail> {
        tracing::error!(
            tasks = ?unreadable,
            schema = %self.schema,
            "failing running tasks whose stored records cannot be read"
        );
        let ids: Vec<&str> = unreadable.iter().map(|(id, _)| id.as_str()).collect();
        sqlx::query(&self.q(
            "UPDATE {s}.tasks SET status = 'failed', finished_at = $2, lease_expires = NULL, \
             claim = NULL WHERE id = ANY($1) AND status = 'running'",
        ))
        .bind(&ids)
        .bind(to_ns(now)?)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn fetch(
        &self,
        sql: &str,
        binds: impl FnOnce(rows::Query<'_>) -> rows::Query<'_>,
    ) -> Result<Vec<Task>> {
        let sql = self.q(sql);
        let rows = binds(sqlx::query(&sql))
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)?;
        rows::tasks(&rows).map_err(Fail::into_error)
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.store(tasks, true).await
    }

    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.store(tasks, false).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        self.claim_rows(request).await
    }

    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        self.writable()?;
        let progress = &progress;
        Ok(in_transaction!(self, |tx| {
            let Some(mut task) = rows::load(&self.s, &mut tx, &[lease.id.to_string()], true)
                .await?
                .pop()
            else {
                return Ok(false);
            };
            if !task.set_progress(lease.token, progress.clone()) {
                return Ok(false);
            }
            rows::save(&self.s, &mut tx, &[task], false).await?;
            Ok(true)
        }))
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        self.writable()?;
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        Ok(in_transaction!(self, |tx| {
            let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
            let mut tasks: HashMap<TaskId, Task> = rows::load(&self.s, &mut tx, &ids, true)
                .await?
                .into_iter()
                .map(|t| (t.id, t))
                .collect();
            let mut answers = Vec::with_capacity(leases.len());
            let mut changed = Vec::new();
            for lease in leases {
                let answer = match tasks.get_mut(&lease.id) {
                    Some(task) => match task.renew(lease.token, lease_for, now) {
                        Some(expires_at) => {
                            changed.push(task.clone());
                            RenewOutcome::Renewed { expires_at }
                        }
                        None => RenewOutcome::Lost,
                    },
                    None => RenewOutcome::Lost,
                };
                answers.push(answer);
            }
            rows::save(&self.s, &mut tx, &changed, false).await?;
            Ok(answers)
        }))
    }

    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        self.writable()?;
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        self.finish_claims(finishes, now).await
    }

    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        // The earliest eta of each priority level of each queue, one index
        // probe each, as the claim walks them (see `claim`).
        let eta: Option<i64> = sqlx::query_scalar(&self.q(
            "SELECT min(m.eta) FROM unnest($1::text[]) AS q(name) CROSS JOIN LATERAL ( \
                 WITH RECURSIVE levels(p) AS ( \
                     SELECT max(priority) FROM {s}.tasks WHERE status = 'pending' AND queue = q.name \
                   UNION ALL \
                     SELECT (SELECT max(priority) FROM {s}.tasks WHERE status = 'pending' \
                             AND queue = q.name AND priority < levels.p) \
                     FROM levels WHERE levels.p IS NOT NULL) \
                 SELECT (SELECT eta FROM {s}.tasks WHERE status = 'pending' AND queue = q.name \
                         AND priority = levels.p ORDER BY eta LIMIT 1) AS eta \
                 FROM levels WHERE levels.p IS NOT NULL) m \
             WHERE q.name NOT IN (SELECT name FROM {s}.paused_queues)",
        ))
        .bind(queues)
        .fetch_one(&self.pool)
        .await
        .map_err(sql_error)?;
        Ok(eta.map(from_ns))
    }

    async fn get(&self, id: TaskId) -> Result<Task> {
        self.fetch("SELECT {COLUMNS} FROM {s}.tasks WHERE id = $1", |q| {
            q.bind(id.to_string())
        })
        .await?
        .pop()
        .ok_or_else(|| Error::not_found(id))
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        let (compare, order) = query.order.keyset();
        let sql = format!(
            "SELECT {{COLUMNS}} FROM {{s}}.tasks WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR id {compare} $3) \
             AND ($5::text IS NULL OR record->>'func_path' = $5) \
             ORDER BY id {order} LIMIT $4"
        );
        let limit = query
            .limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows = sqlx::query(&self.q(&sql))
            .bind(query.status.map(TaskStatus::as_str))
            .bind(query.queue)
            .bind(query.after.map(|id| id.to_string()))
            .bind(limit)
            .bind(query.func_path)
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)?;
        // A record that does not read back is left out here and reported by `damaged`.
        Ok(rows::readable(&rows))
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.writable()?;
        Ok(in_transaction!(self, |tx| {
            let key = [id.to_string()];
            let series = self.series_of(&mut tx, &key).await?;
            // Also the series the id itself names, when its first
            // occurrence was purged.
            self.lock_series(&mut tx, series.into_iter().chain([id])).await?;
            let target = rows::load(&self.s, &mut tx, &key, true).await?.pop();
            let scope = match CancelScope::of(id, target.as_ref()) {
                CancelScope::Task(_) => target.iter().cloned().collect(),
                CancelScope::Series(series) => {
                    let rows = sqlx::query(&self.q("SELECT {COLUMNS} FROM {s}.tasks WHERE series = $1 \
                             AND status IN ('pending', 'running') ORDER BY id FOR UPDATE"))
                    .bind(series.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
                    rows::tasks(&rows)?
                }
            };
            let cancelled = cancel_in_scope(id, target.as_ref(), scope, now).map_err(Fail::Stop)?;
            rows::save(&self.s, &mut tx, &cancelled, false).await?;
            Ok(cancelled.iter().map(|t| t.id).collect())
        }))
    }

    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.writable()?;
        in_transaction!(self, |tx| {
            let mut task = rows::load(&self.s, &mut tx, &[id.to_string()], true)
                .await?
                .pop()
                .ok_or_else(|| Fail::Stop(Error::not_found(id)))?;
            task.retry(now).map_err(Fail::Stop)?;
            if let Some(key) = task.unique_key.clone() {
                if let Some(holder) = holders(&self.s, &mut tx, std::slice::from_ref(&key))
                    .await?
                    .live(&key)
                {
                    return Err(Fail::Stop(key_held(id, &key, holder)));
                }
            }
            let announce = (self.channel.as_str(), vec![task.queue.clone()]);
            rows::save_announcing(&self.s, &mut tx, &[task], false, Some(announce)).await?;
            Ok(())
        });
        Ok(())
    }

    async fn counts(&self) -> Result<StatusCounts> {
        let rows = sqlx::query(&self.q("SELECT status, count(*) FROM {s}.tasks GROUP BY status"))
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let status: String = row.try_get(0).map_err(sql_error)?;
            let count: i64 = row.try_get(1).map_err(sql_error)?;
            let status: TaskStatus = status
                .parse()
                .map_err(|e: Error| Error::backend("postgres", e.to_string()))?;
            *counts.get_mut(status) = count as u64;
        }
        Ok(counts)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.writable()?;
        // A resumed queue's due tasks are announced, as if just enqueued.
        let sql = match paused {
            true => "INSERT INTO {s}.paused_queues (name) VALUES ($1) ON CONFLICT DO NOTHING",
            false => {
                "WITH resumed AS (DELETE FROM {s}.paused_queues WHERE name = $1 RETURNING name) \
                 SELECT pg_notify($2, name) FROM resumed"
            }
        };
        let sql = self.q(sql);
        let query = sqlx::query(&sql).bind(queue);
        let query = match paused {
            true => query,
            false => query.bind(&self.channel),
        };
        query.execute(&self.pool).await.map_err(sql_error)?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(&self.q("SELECT name FROM {s}.paused_queues ORDER BY name COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)
    }

    async fn set_queue_limits(&self, queue: &str, limits: omniq_core::QueueLimits) -> Result<()> {
        self.store_limits(queue, limits).await
    }

    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<omniq_core::QueueFlow>> {
        self.flows(now).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let rows = sqlx::query(&self.q(
            "SELECT queue, status, count(*), min(eta) FILTER (WHERE status = 'pending') \
             FROM {s}.tasks GROUP BY queue, status",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error)?;
        let mut tally = QueueTally::new(self.paused().await?);
        for row in rows {
            let queue: String = row.try_get(0).map_err(sql_error)?;
            let status: String = row.try_get(1).map_err(sql_error)?;
            let count: i64 = row.try_get(2).map_err(sql_error)?;
            let eta: Option<i64> = row.try_get(3).map_err(sql_error)?;
            let status: TaskStatus = status
                .parse()
                .map_err(|e: Error| Error::backend("postgres", e.to_string()))?;
            tally.count(&queue, status, count as u64);
            if let Some(eta) = eta {
                tally.queue(&queue).pending_eta(from_ns(eta));
            }
        }
        Ok(tally.finish())
    }

    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        self.put_schedule_row(schedule, mode).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.schedule_rows().await
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.remove_schedule_row(name).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.pause_schedule_row(name, paused).await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        self.fire_schedule_row(name, due, next, task).await
    }

    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        self.skip_schedule_row(name, due, next).await
    }

    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64> {
        self.writable()?;
        let done = sqlx::query(&self.q(
            "DELETE FROM {s}.tasks WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < $1",
        ))
        .bind(to_ns(finished_before)?)
        .execute(&self.pool)
        .await
        .map_err(sql_error)?;
        Ok(done.rows_affected())
    }

    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64> {
        self.prune_rows(status, finished_before, limit).await
    }

    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: std::time::Duration) -> Result<bool> {
        self.take_turn_row(chore, now, every).await
    }

    async fn beat(&self, beat: WorkerBeat) -> Result<()> {
        self.beat_row(&beat).await
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>> {
        self.worker_rows().await
    }

    async fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        self.remove_worker_row(worker_id).await
    }

    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.writable()?;
        Ok(in_transaction!(self, |tx| {
            let candidates: Vec<String> = sqlx::query_scalar(&self.q(
                "SELECT id FROM {s}.tasks WHERE status = 'running' AND lease_expires <= $1 \
                     ORDER BY lease_expires LIMIT $2",
            ))
            .bind(to_ns(now)?)
            .bind(omniq_core::storage::REQUEUE_BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let series = self.series_of(&mut tx, &candidates).await?;
            self.lock_series(&mut tx, series).await?;
            let rows = sqlx::query(&self.q(
                "SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY($1) AND status = 'running' \
                     AND lease_expires <= $2 ORDER BY id FOR UPDATE SKIP LOCKED",
            ))
            .bind(&candidates)
            .bind(to_ns(now)?)
            .fetch_all(&mut *tx)
            .await?;
            let (mut tasks, unreadable) = rows::split(&rows);
            if !unreadable.is_empty() {
                self.fail_unreadable(&mut tx, &unreadable, now).await?;
            }
            tasks.sort_by_key(|t| (t.lease.as_ref().map(|l| l.expires_at), t.id));
            let mut created = Vec::new();
            for task in &mut tasks {
                created.extend(task.expire_lease(now).map_err(Fail::Stop)?);
            }
            let expired = tasks.iter().map(|t| t.id).collect();
            tasks.extend(created);
            let announce = (self.channel.as_str(), wake::due_queues(&tasks, |_| now));
            rows::save_announcing(&self.s, &mut tx, &tasks, false, Some(announce)).await?;
            Ok(expired)
        }))
    }

    async fn store_time(&self) -> Result<Option<OffsetDateTime>> {
        // The server's clock, read when the statement runs (`now()` would be
        // the start of its transaction).
        let micros: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8")
                .fetch_one(&self.pool)
                .await
                .map_err(sql_error)?;
        Ok(Some(from_ns(micros.saturating_mul(1_000))))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn wake_ups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.listener.as_ref().map(|listener| listener.notices())
    }

    async fn damaged(&self) -> Result<Vec<Damaged>> {
        let mut found = Vec::new();
        let mut after = String::new();
        loop {
            let rows =
                sqlx::query(&self.q("SELECT {COLUMNS} FROM {s}.tasks WHERE id > $1 ORDER BY id LIMIT 500"))
                    .bind(&after)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(sql_error)?;
            let Some(last) = rows.last() else { break };
            after = last.try_get(0).map_err(sql_error)?;
            for (id, reason) in rows::unreadable(&rows) {
                found.push(Damaged {
                    id,
                    reason,
                    location: format!("postgres schema {}", self.schema).into(),
                });
            }
        }
        Ok(found)
    }
}
