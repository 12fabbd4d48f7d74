//! The SQL of each change: enqueue, claim, renew, finish, cancel, retry,
//! purge and the lease pass, each reading first and writing with one command
//! at its end.

// The writer's types, helpers and imports, which this part works with.
use super::merge::{run_single, Single};
use super::*;

/// Refuses what no enqueue may store: a running task, or one id twice in a call.
pub(super) async fn enqueue(s: &mut Session<'_>, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
    let holders = key_holders(s, tasks.iter().filter_map(|t| t.unique_key.as_deref())).await?;
    let (tasks, answers) = split_duplicates(tasks, |key, now| Ok(holders.at(key, now)))?;
    rows::insert(s, &tasks).await?;
    Ok(answers)
}

/// The tasks that may hold some of `keys`, in one query: the live holder
/// of each through the partial unique index, and the finished tasks with a
/// window through theirs. No query when there are no keys.
pub(super) async fn key_holders<'k>(
    s: &mut Session<'_>,
    keys: impl Iterator<Item = &'k str>,
) -> Result<KeyHolders> {
    let keys: Vec<&str> = keys.collect();
    let mut holders = KeyHolders::default();
    if keys.is_empty() {
        return Ok(holders);
    }
    let sql = s.sql(
        "SELECT unique_key, id, status, NULL FROM tasks \
         WHERE unique_key IN (SELECT value FROM json_each(?1)) AND status IN ('pending', 'running') \
         UNION ALL SELECT unique_key, id, status, unique_window FROM tasks \
         WHERE unique_key IN (SELECT value FROM json_each(?1)) AND unique_window IS NOT NULL \
         AND status NOT IN ('pending', 'running')",
    );
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(&sql)
        .bind(serde_json::to_string(&keys)?)
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    for (key, id, status, window) in rows {
        holders
            .add_stored(key, &id, &status, window.as_deref())
            .map_err(|reason| Error::backend("sqlite", reason))?;
    }
    Ok(holders)
}

/// Pauses or resumes a queue: `paused_queues` lists the paused ones.
pub(super) async fn set_paused(s: &mut Session<'_>, queue: &str, paused: bool) -> Result<()> {
    let sql = match paused {
        true => s.final_sql("INSERT OR IGNORE INTO paused_queues (name) VALUES (?1)"),
        false => s.final_sql("DELETE FROM paused_queues WHERE name = ?1"),
    };
    sqlx::query(&sql)
        .bind(queue)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    Ok(())
}

/// The second half of a claim: moves the tasks in `temp.claimed` from
/// `pending` to `running` with their leases, and returns them, with whether
/// the queue has a rate per key (then the pick above took nothing, and the
/// claim goes the way of [`super::flow::claim_limited`]).
macro_rules! take_claimed {
    () => {
        "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?1, updated_at = ?1 \
            WHERE id IN (SELECT id FROM temp.claimed); \
        DELETE FROM pending WHERE id IN (SELECT id FROM temp.claimed); \
        INSERT INTO running (id, worker_id, token, expires_at) \
            SELECT id, ?3, ?5 ->> (n - 1), ?4 FROM temp.claimed; \
        SELECT json_group_array(TASK_JSON), \
            EXISTS (SELECT 1 FROM queue_limits WHERE name = ?6 AND limits ->> '$.key_rate' IS NOT NULL) \
            FROM temp.claimed c JOIN tasks t ON t.id = c.id \
            LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id"
    };
}
pub(super) use take_claimed;

/// The claim, as one command: SQLite picks the due tasks of queue `?6`
/// (none while it is paused), moves them from `pending` to `running` with
/// their leases, and returns them. It makes the same change as `Task::claim`
/// (one more attempt, started and updated now, a lease per task with the
/// token made here), which the shared conformance suite checks against the
/// other backends.
///
/// The pick walks the queue's priority levels from the highest (`levels`:
/// each step one seek in `pending_claim` for the next lower priority, and,
/// when there is one, a count of that level's due tasks, at most the limit)
/// until it has enough
/// tasks, then takes each level's due tasks in (eta, id) order from the
/// front of its range. Its cost thus grows with the number of priority
/// levels visited, not with the number of tasks waiting for a later eta.
///
/// A queue's flow-control settings (`cfg`, read once) are applied here as
/// `QueueLimits::admit` states them, so a limited claim is one command too:
/// the limit less the tasks running under a live lease and the tokens of
/// the queue's rate bucket cut the number taken (`budget`), a task whose key
/// has `per_key` unfinished tasks of the queue with a lower id ahead of it
/// is passed over (`tasks_key_order`), and the bucket moves on by one step
/// per task taken. The conformance suite and the model-based test check it
/// against the rule. A queue with a rate per key takes nothing here and
/// says so in the last row: that claim is made in Rust.
pub(super) const CLAIM: &str = concat!(
    "DELETE FROM temp.claimed; \
    INSERT INTO temp.claimed (id) \
    WITH RECURSIVE lim(l) AS (SELECT (SELECT limits FROM queue_limits WHERE name = ?6)), \
    cfg(per_key, hold, budget) AS MATERIALIZED ( \
        SELECT l ->> '$.per_key', coalesce(l ->> '$.hold_failed', 0), min(?2, \
            CASE WHEN l ->> '$.limit' IS NULL THEN ?2 ELSE max(0, (l ->> '$.limit') - \
                (SELECT count(*) FROM running rn CROSS JOIN tasks t ON t.id = rn.id \
                 WHERE t.queue = ?6 AND rn.expires_at > ?1)) END, \
            CASE WHEN l ->> '$.rate' IS NULL THEN ?2 ELSE min(l ->> '$.rate.count', max(0, \
                (?1 + (l ->> '$.rate.per.secs') * 1000000000 + (l ->> '$.rate.per.nanos') \
                 - max(coalesce((SELECT tat FROM rate_buckets WHERE queue = ?6 AND key = ''), ?1), ?1)) \
                / max(1, ((l ->> '$.rate.per.secs') * 1000000000 + (l ->> '$.rate.per.nanos')) \
                         / (l ->> '$.rate.count')))) END) \
        FROM lim WHERE l IS NULL OR l ->> '$.key_rate' IS NULL), \
    levels(p, got) AS ( \
        SELECT max(priority), 0 FROM pending WHERE queue = ?6 \
            AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE name = ?6) \
            AND EXISTS (SELECT 1 FROM cfg) \
        UNION ALL \
        SELECT (SELECT max(priority) FROM pending WHERE queue = ?6 AND priority < p), \
            got + CASE WHEN (SELECT max(priority) FROM pending WHERE queue = ?6 AND priority < p) IS NULL \
                THEN 0 ELSE (SELECT count(*) FROM (SELECT 1 FROM pending q \
                   WHERE queue = ?6 AND priority = p AND eta <= ?1 AND IN_WINDOW \
                   LIMIT coalesce((SELECT budget FROM cfg), 0))) END \
        FROM levels WHERE p IS NOT NULL AND got < (SELECT budget FROM cfg)) \
    SELECT j.value FROM levels, json_each((SELECT json_group_array(id) FROM (SELECT id FROM pending q \
        WHERE queue = ?6 AND priority = levels.p AND eta <= ?1 AND IN_WINDOW \
        ORDER BY eta, id LIMIT coalesce((SELECT budget FROM cfg), 0)))) j \
    WHERE levels.p IS NOT NULL AND levels.got < (SELECT budget FROM cfg) \
    ORDER BY levels.p DESC, j.key LIMIT coalesce((SELECT budget FROM cfg), 0); \
    INSERT OR REPLACE INTO rate_buckets (queue, key, tat) \
        SELECT ?6, '', max(coalesce((SELECT tat FROM rate_buckets WHERE queue = ?6 AND key = ''), ?1), ?1) \
            + max(1, ((l ->> '$.rate.per.secs') * 1000000000 + (l ->> '$.rate.per.nanos')) \
                     / (l ->> '$.rate.count')) * (SELECT count(*) FROM temp.claimed) \
        FROM (SELECT limits AS l FROM queue_limits WHERE name = ?6) \
        WHERE l ->> '$.rate' IS NOT NULL AND EXISTS (SELECT 1 FROM temp.claimed); ",
    take_claimed!()
);

/// Whether pending task `q` is in its key's window (`cfg`'s `per_key`
/// earliest unfinished tasks of its key in the queue), as [`CLAIM`] asks.
const IN_WINDOW: &str = "((SELECT per_key FROM cfg) IS NULL OR q.concurrency_key IS NULL \
    OR (SELECT count(*) FROM (SELECT 1 FROM tasks u WHERE u.queue = ?6 \
        AND u.concurrency_key = q.concurrency_key \
        AND u.status IN ('pending', 'running', 'failed') AND (u.status <> 'failed' OR (SELECT hold FROM cfg)) \
        AND u.id < q.id LIMIT (SELECT per_key FROM cfg))) < (SELECT per_key FROM cfg))";

/// [`CLAIM`] as run: its placeholders filled in.
pub(super) fn claim_sql() -> String {
    CLAIM
        .replace("IN_WINDOW", IN_WINDOW)
        .replace("TASK_JSON", TASK_JSON)
}

/// Makes the write connection ready for [`claim`] and [`finish`]: the
/// per-connection tables that hold the ids one claim picked and one finish
/// completed.
pub async fn setup(conn: &mut SqliteConnection) -> Result<()> {
    // `journal_size_limit`: once a checkpoint has copied the WAL back into
    // the database, the WAL file is cut back to 64 MB, so a burst of writes (a
    // migration) does not leave it hundreds of megabytes long.
    conn.execute(
        "PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864; \
         CREATE TEMP TABLE IF NOT EXISTS claimed (n INTEGER PRIMARY KEY, id TEXT NOT NULL); \
         CREATE TEMP TABLE IF NOT EXISTS done (id TEXT PRIMARY KEY NOT NULL, value TEXT) WITHOUT ROWID",
    )
    .await
    .map_err(sql_error)?;
    Ok(())
}

/// The binds of a claim; `None` when it asks for nothing.
pub(super) fn prepare_claim(request: &ClaimRequest) -> Result<Option<Single>> {
    if request.limit == 0 {
        return Ok(None);
    }
    let limit = request.limit.min(100_000);
    let tokens: Vec<String> = (0..limit).map(|_| LeaseToken::new().to_string()).collect();
    Ok(Some(Single::Claim(vec![
        Value::Int(to_ns(request.now)?),
        Value::Int(limit as i64),
        Value::Text(request.worker_id.clone()),
        Value::Int(to_ns(omniq_core::later(request.now, request.lease_for))?),
        Value::Text(serde_json::to_string(&tokens)?),
        Value::Text(request.queue.clone()),
    ])))
}

/// The claimed tasks in a claim's row, in claim order; `None` when the
/// queue has flow-control settings, so the claim must go the limited way.
pub(super) fn read_claim(row: &SqliteRow, db: &Path) -> Result<Option<Vec<Task>>> {
    let limited: bool = row.try_get(1).map_err(sql_error)?;
    if limited {
        return Ok(None);
    }
    read_claimed(row, db).map(Some)
}

/// The tasks of a claim's row, in claim order.
pub(super) fn read_claimed(row: &SqliteRow, db: &Path) -> Result<Vec<Task>> {
    let json: Option<String> = row.try_get(0).map_err(sql_error)?;
    // A row that cannot be read is claimed all the same; no worker runs it,
    // and the lease pass fails it once its lease runs out.
    let (mut tasks, unreadable) = rows::split_rows(json.as_deref(), db)?;
    rows::report_unreadable(&unreadable, db, "claim");
    tasks.sort_by_key(omniq_core::queue::claim_order);
    Ok(tasks)
}

pub(super) async fn claim(s: &mut Session<'_>, db: &Path, request: ClaimRequest) -> Result<Vec<Task>> {
    let Some(mut single) = prepare_claim(&request)? else {
        return Ok(Vec::new());
    };
    let row = run_single(s, &mut single).await?;
    match row.as_ref().map(|row| read_claim(row, db)).transpose()? {
        Some(Some(tasks)) => Ok(tasks),
        None => Ok(Vec::new()),
        Some(None) => {
            // The command may have carried the group's `COMMIT`; the limited
            // claim goes on in a transaction of its own then.
            s.reopen();
            super::flow::claim_limited(s, db, request).await
        }
    }
}

pub(super) async fn renew(
    s: &mut Session<'_>,
    leases: &[LeaseRef],
    lease_for: Duration,
    now: OffsetDateTime,
) -> Result<Vec<RenewOutcome>> {
    let expires_at = omniq_core::later(now, lease_for);
    let pairs: Vec<(String, String)> = leases
        .iter()
        .map(|lease| (lease.id.to_string(), lease.token.to_string()))
        .collect();
    // The running row exists exactly while the task runs under that token.
    let sql = s.sql(
        "UPDATE running SET expires_at = ?1 \
         WHERE (id, token) IN (SELECT value->>0, value->>1 FROM json_each(?2)) RETURNING id, token",
    );
    let renewed: Vec<(String, String)> = sqlx::query_as(&sql)
        .bind(to_ns(expires_at)?)
        .bind(serde_json::to_string(&pairs)?)
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(pairs
        .iter()
        .map(|pair| {
            if renewed.contains(pair) {
                RenewOutcome::Renewed { expires_at }
            } else {
                RenewOutcome::Lost
            }
        })
        .collect())
}

/// Records a running attempt's progress in its `running` row, which exists
/// exactly while the task runs under that token (and goes with the claim).
pub(super) async fn progress(s: &mut Session<'_>, lease: LeaseRef, report: &Progress) -> Result<bool> {
    // `RETURNING`, as the count of changed rows of a command that also
    // begins the transaction is not this statement's alone.
    let sql = s.sql("UPDATE running SET progress = ?1 WHERE id = ?2 AND token = ?3 RETURNING id");
    let done: Option<String> = sqlx::query_scalar(&sql)
        .bind(serde_json::to_string(report)?)
        .bind(lease.id.to_string())
        .bind(lease.token.to_string())
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(done.is_some())
}

/// The common finish, as one command: tasks that completed, none of them an
/// interval task (whose next occurrence needs `Task::finish`). `CROSS JOIN`
/// keeps SQLite from scanning a table once per given task. It makes the
/// same change as `Task::finish` with `Outcome::Complete`, for each task still
/// running under the given token; if any task of the batch is a running
/// interval task, it changes nothing and says so, and the general path runs.
pub(super) const FINISH_COMPLETED: &str = "DELETE FROM temp.done; \
    INSERT INTO temp.done (id, value) \
        SELECT j.value->>0, j.value->>2 FROM json_each(?1) j \
        CROSS JOIN running rn ON rn.id = j.value->>0 AND rn.token = j.value->>1 \
        CROSS JOIN tasks t ON t.id = rn.id AND t.status = 'running' \
        WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) k CROSS JOIN tasks u ON u.id = k.value->>0 \
                          WHERE u.interval_ns IS NOT NULL AND u.status = 'running'); \
    UPDATE tasks SET status = 'completed', updated_at = ?2, finished_at = ?2 \
        WHERE id IN (SELECT id FROM temp.done); \
    DELETE FROM running WHERE id IN (SELECT id FROM temp.done); \
    INSERT INTO completed (id, status, finished_at) SELECT id, 'completed', ?2 FROM temp.done; \
    REPLACE INTO results (id, value, error) SELECT id, value, NULL FROM temp.done; \
    SELECT (SELECT json_group_array(id) FROM temp.done), \
        EXISTS (SELECT 1 FROM json_each(?1) k CROSS JOIN tasks u ON u.id = k.value->>0 \
                WHERE u.interval_ns IS NOT NULL AND u.status = 'running')";

/// The binds of a finish that [`FINISH_COMPLETED`] can do; `None` when the
/// batch has other outcomes or an id twice, and must take the general path.
pub(super) fn prepare_finish(finishes: &[Finish], now: OffsetDateTime) -> Result<Option<Single>> {
    let mut seen = std::collections::HashSet::with_capacity(finishes.len());
    let mut rows = Vec::with_capacity(finishes.len());
    for finish in finishes {
        // A result too deep to read back is turned into a failure by `Task::finish`.
        let Outcome::Complete { result } = &finish.outcome else {
            return Ok(None);
        };
        if !finish.outcome.result_fits() {
            return Ok(None);
        }
        if !seen.insert(finish.id) {
            return Ok(None);
        }
        rows.push((
            finish.id.to_string(),
            finish.token.to_string(),
            serde_json::to_string(result)?,
        ));
    }
    let binds = vec![
        Value::Text(serde_json::to_string(&rows)?),
        Value::Int(to_ns(now)?),
    ];
    Ok(Some(Single::Finish(
        binds,
        rows.into_iter().map(|(id, _, _)| id).collect(),
    )))
}

/// The answers in a finish's row; `None` when it was blocked by an interval
/// task and wrote nothing.
pub(super) fn read_finish(row: &SqliteRow, ids: &[String]) -> Result<Option<Vec<FinishOutcome>>> {
    let done: Option<String> = row.try_get(0).map_err(sql_error)?;
    let blocked: bool = row.try_get(1).map_err(sql_error)?;
    if blocked {
        return Ok(None);
    }
    let done: std::collections::HashSet<String> = serde_json::from_str(done.as_deref().unwrap_or("[]"))?;
    Ok(Some(
        ids.iter()
            .map(|id| match done.contains(id) {
                true => FinishOutcome::Applied {
                    status: TaskStatus::Completed,
                    next: None,
                },
                false => FinishOutcome::LeaseLost,
            })
            .collect(),
    ))
}

/// Finishes a batch of completed tasks with [`FINISH_COMPLETED`]; `None` when
/// it must take the general path.
async fn finish_completed(
    s: &mut Session<'_>,
    finishes: &[Finish],
    now: OffsetDateTime,
) -> Result<Option<Vec<FinishOutcome>>> {
    let Some(mut single) = prepare_finish(finishes, now)? else {
        return Ok(None);
    };
    let row = run_single(s, &mut single).await?;
    let Single::Finish(_, ids) = &single else {
        unreachable!("prepare_finish makes a finish")
    };
    let answers = match row.as_ref() {
        Some(row) => read_finish(row, ids)?,
        None => None,
    };
    if answers.is_none() {
        // Nothing was written; the `COMMIT`, if it rode along, only closed
        // the changes before this one.
        s.reopen();
    }
    Ok(answers)
}

pub(super) async fn finish(
    s: &mut Session<'_>,
    db: &Path,
    finishes: Vec<Finish>,
    now: OffsetDateTime,
) -> Result<Vec<FinishOutcome>> {
    if let Some(answers) = finish_completed(s, &finishes, now).await? {
        return Ok(answers);
    }
    let ids: Vec<TaskId> = finishes.iter().map(|f| f.id).collect();
    // A task whose row cannot be read answers `LeaseLost`, and the lease pass
    // fails it; the others of the batch finish.
    let (tasks, unreadable) = rows::load_split(s, &ids, db).await?;
    rows::report_unreadable(&unreadable, db, "finish");
    let (answers, writes) = omniq_core::batch::apply_finishes(tasks, &finishes, now)?;
    rows::save(s, &writes).await?;
    Ok(answers)
}

async fn load_one(s: &mut Session<'_>, db: &Path, id: TaskId) -> Result<Task> {
    rows::load(s, &[id], db)
        .await?
        .pop()
        .ok_or_else(|| Error::not_found(id))
}

pub(super) async fn cancel(
    s: &mut Session<'_>,
    db: &Path,
    id: TaskId,
    now: OffsetDateTime,
) -> Result<Vec<TaskId>> {
    let target = rows::load(s, &[id], db).await?.pop();
    let scope = match CancelScope::of(id, target.as_ref()) {
        CancelScope::Task(_) => target.iter().cloned().collect(),
        CancelScope::Series(series) => {
            let sql = s.sql(&format!(
                "SELECT json_group_array({TASK_JSON}) {TASK_FROM} \
                 WHERE t.series = ?1 AND t.status IN ('pending', 'running')"
            ));
            rows::fetch(s.conn(), sqlx::query(&sql).bind(series.to_string()), db).await?
        }
    };
    let cancelled = cancel_in_scope(id, target.as_ref(), scope, now)?;
    rows::save(s, &cancelled).await?;
    Ok(cancelled.iter().map(|t| t.id).collect())
}

pub(super) async fn retry(s: &mut Session<'_>, db: &Path, id: TaskId, now: OffsetDateTime) -> Result<()> {
    let mut task = load_one(s, db, id).await?;
    task.retry(now)?;
    if let Some(key) = task.unique_key.as_deref() {
        if let Some(holder) = key_holders(s, std::iter::once(key)).await?.live(key) {
            return Err(omniq_core::queue::key_held(id, key, holder));
        }
    }
    rows::save(s, &[task]).await
}

pub(super) async fn purge(s: &mut Session<'_>, before: OffsetDateTime) -> Result<u64> {
    let before = to_ns(before)?;
    let sql = s.sql("SELECT count(*) FROM completed WHERE finished_at < ?1");
    let count: i64 = sqlx::query_scalar(&sql)
        .bind(before)
        .fetch_one(s.conn())
        .await
        .map_err(sql_error)?;
    sqlx::query("DELETE FROM task_rows WHERE id IN (SELECT id FROM completed WHERE finished_at < ?1)")
        .bind(before)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(count as u64)
}

pub(super) async fn requeue_expired(
    s: &mut Session<'_>,
    db: &Path,
    now: OffsetDateTime,
) -> Result<Vec<TaskId>> {
    let sql = s.sql(&format!(
        "SELECT json_group_array({TASK_JSON}) {TASK_FROM} \
         WHERE t.id IN (SELECT id FROM running WHERE expires_at <= ?1 ORDER BY expires_at LIMIT {})",
        omniq_core::storage::REQUEUE_BATCH
    ));
    let (mut tasks, unreadable) =
        rows::fetch_split(s.conn(), sqlx::query(&sql).bind(to_ns(now)?), db).await?;
    if !unreadable.is_empty() {
        fail_unreadable(s, &unreadable, now, tasks.is_empty()).await?;
    }
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for task in &mut tasks {
        created.extend(task.expire_lease(now)?);
    }
    let expired = tasks.iter().map(|t| t.id).collect();
    tasks.extend(created);
    rows::save(s, &tasks).await?;
    Ok(expired)
}

/// Fails, for good, running tasks whose rows cannot be read, with an
/// `unreadable` error saying why, so the lease pass goes on for the others
/// and the tasks are not stranded as `running`. Their stored arguments stay
/// for a person to inspect. `last` says whether this is the change's final write.
async fn fail_unreadable(
    s: &mut Session<'_>,
    unreadable: &[rows::Unreadable],
    now: OffsetDateTime,
    last: bool,
) -> Result<()> {
    let rows: Vec<(&str, &str)> = unreadable
        .iter()
        .map(|u| (u.id.as_str(), u.reason.as_str()))
        .collect();
    tracing::error!(
        tasks = ?rows,
        "failing running tasks whose stored rows cannot be read"
    );
    const SQL: &str = "UPDATE tasks SET status = 'failed', updated_at = ?2, finished_at = ?2 \
            WHERE status = 'running' AND id IN (SELECT value->>0 FROM json_each(?1)); \
        REPLACE INTO results (id, value, error) \
            SELECT t.id, NULL, json_object('type', 'unreadable', 'message', j.value->>1, \
                                           'attempt', t.attempts, 'retryable', json('false')) \
            FROM json_each(?1) j JOIN tasks t ON t.id = j.value->>0 \
            WHERE t.status = 'failed' AND t.finished_at = ?2; \
        DELETE FROM running WHERE id IN (SELECT value->>0 FROM json_each(?1)); \
        REPLACE INTO completed (id, status, finished_at) \
            SELECT id, 'failed', ?2 FROM tasks \
            WHERE id IN (SELECT value->>0 FROM json_each(?1)) AND status = 'failed'";
    let sql = match last {
        true => s.final_sql(SQL),
        false => s.sql(SQL),
    };
    sqlx::query(&sql)
        .bind(serde_json::to_string(&rows)?)
        .bind(to_ns(now)?)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    if last {
        s.final_ran();
    }
    Ok(())
}
