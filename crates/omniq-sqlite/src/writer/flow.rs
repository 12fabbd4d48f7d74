//! Flow control in SQL: the claim of a queue with limits (reading its
//! settings, running count, rate buckets and the window of each candidate's
//! key, then writing the claim and the buckets in one command), and storing
//! a queue's settings. `QueueLimits::admit` decides what the claim takes.

// The writer's types, helpers and imports, which this part works with.
use super::merge::anonymize;
use super::ops::{prepare_claim, read_claimed, take_claimed};
use super::*;
use omniq_core::flow::FlowState;
use omniq_core::QueueLimits;

/// The claim of a limited queue, in the writer's transaction, so no other
/// claim of any process runs between its reads and its write.
///
/// The candidates are the queue's due tasks in claim order, without those
/// whose key already has `per_key` tasks ahead of them in its window (a
/// task's key order is its id order among the key's tasks in
/// `QueueLimits::window_statuses`, read through `tasks_key_order`), so a
/// key whose window is full never hides the tasks behind it. With a rate
/// per key some candidates may still be passed over; a few more are read
/// for them.
pub(super) async fn claim_limited(
    s: &mut Session<'_>,
    db: &Path,
    request: ClaimRequest,
) -> Result<Vec<Task>> {
    let now = to_ns(request.now)?;
    let sql = s.sql(
        "SELECT (SELECT limits FROM queue_limits WHERE name = ?1), \
         EXISTS (SELECT 1 FROM paused_queues WHERE name = ?1), \
         (SELECT count(*) FROM running rn JOIN tasks t ON t.id = rn.id \
          WHERE t.queue = ?1 AND rn.expires_at > ?2), \
         (SELECT tat FROM rate_buckets WHERE queue = ?1 AND key = '' AND tat > ?2), \
         (SELECT max(priority) FROM pending WHERE queue = ?1)",
    );
    let (limits, paused, running, queue_tat, mut level): (
        Option<String>,
        bool,
        i64,
        Option<i64>,
        Option<i64>,
    ) = sqlx::query_as(&sql)
        .bind(&request.queue)
        .bind(now)
        .fetch_one(s.conn())
        .await
        .map_err(sql_error)?;
    if paused {
        return Ok(Vec::new());
    }
    // Settings cleared meanwhile: a claim without limits, by the same rule.
    let limits: QueueLimits = match limits {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            Error::backend(
                "sqlite",
                format!("the limits of queue {:?} cannot be read: {e}", request.queue),
            )
        })?,
        None => QueueLimits::default(),
    };
    let mut state = FlowState {
        running: u32::try_from(running).unwrap_or(u32::MAX),
        queue_tat: queue_tat.map(rows::from_ns),
        ..FlowState::default()
    };
    let scan = match limits.key_rate {
        Some(_) => request.limit.saturating_mul(8).saturating_add(64),
        None => request.limit,
    };
    let held = limits.window_statuses().contains(&omniq_core::TaskStatus::Failed);
    // The due tasks in claim order, one priority level at a time from the
    // highest (each level one range of `pending_claim` in (eta, id) order,
    // read only as far as needed), without those whose key's window is full.
    let mut candidates: Vec<(String, Option<String>, i64)> = Vec::new();
    while let Some(priority) = level.filter(|_| candidates.len() < scan) {
        let sql = s.sql(
            "SELECT p.id, t.concurrency_key, \
             CASE WHEN t.concurrency_key IS NULL OR ?3 IS NULL THEN 0 ELSE \
               (SELECT count(*) FROM (SELECT 1 FROM tasks u WHERE u.queue = ?1 \
                AND u.concurrency_key = t.concurrency_key \
                AND u.status IN ('pending', 'running', 'failed') AND (u.status <> 'failed' OR ?4) \
                AND u.id < p.id LIMIT ?3)) END AS ahead \
             FROM pending p JOIN tasks t ON t.id = p.id \
             WHERE p.queue = ?1 AND p.priority = ?6 AND p.eta <= ?2 AND ahead < coalesce(?3, 1) \
             ORDER BY p.eta, p.id LIMIT ?5",
        );
        let found: Vec<(String, Option<String>, i64)> = sqlx::query_as(&sql)
            .bind(&request.queue)
            .bind(now)
            .bind(limits.per_key.map(i64::from))
            .bind(held)
            .bind(i64::try_from(scan - candidates.len()).unwrap_or(i64::MAX))
            .bind(priority)
            .fetch_all(s.conn())
            .await
            .map_err(sql_error)?;
        candidates.extend(found);
        if candidates.len() >= scan {
            break;
        }
        let sql = s.sql("SELECT max(priority) FROM pending WHERE queue = ?1 AND priority < ?2");
        level = sqlx::query_scalar(&sql)
            .bind(&request.queue)
            .bind(priority)
            .fetch_one(s.conn())
            .await
            .map_err(sql_error)?;
    }
    if limits.key_rate.is_some() {
        let keys: Vec<&str> = candidates
            .iter()
            .filter_map(|(_, key, _)| key.as_deref())
            .collect();
        let sql = s.sql(
            "SELECT key, tat FROM rate_buckets WHERE queue = ?1 AND tat > ?2 \
             AND key IN (SELECT value FROM json_each(?3))",
        );
        let buckets: Vec<(String, i64)> = sqlx::query_as(&sql)
            .bind(&request.queue)
            .bind(now)
            .bind(serde_json::to_string(&keys)?)
            .fetch_all(s.conn())
            .await
            .map_err(sql_error)?;
        state.key_tats = buckets
            .into_iter()
            .map(|(key, tat)| (key, rows::from_ns(tat)))
            .collect();
    }
    let (ids, admitted) = limits.admit_rows(request.limit, &state, &candidates, request.now);
    let mut buckets: Vec<(&str, i64)> = Vec::new();
    if let Some(tat) = admitted.queue_tat {
        buckets.push(("", to_ns(tat)?));
    }
    for (key, tat) in &admitted.key_tats {
        buckets.push((key.as_str(), to_ns(*tat)?));
    }
    take(s, db, &request, &ids, &buckets).await
}

/// The write of a limited claim, as one command: the chosen ids go into
/// `temp.claimed` in claim order, the buckets are stored (those whose time
/// has passed, full again, are dropped), and the rest is the plain claim's.
async fn take(
    s: &mut Session<'_>,
    db: &Path,
    request: &ClaimRequest,
    ids: &[&str],
    buckets: &[(&str, i64)],
) -> Result<Vec<Task>> {
    static COMMAND: OnceLock<(String, Vec<usize>)> = OnceLock::new();
    let (sql, order) = COMMAND.get_or_init(|| {
        anonymize(
            &concat!(
                "DELETE FROM temp.claimed; \
                 INSERT INTO temp.claimed (id) SELECT value FROM json_each(?7) ORDER BY key; \
                 DELETE FROM rate_buckets WHERE queue = ?6 AND tat <= ?1; \
                 INSERT OR REPLACE INTO rate_buckets (queue, key, tat) \
                 SELECT ?6, value ->> 0, value ->> 1 FROM json_each(?8); ",
                take_claimed!()
            )
            .replace("TASK_JSON", TASK_JSON),
        )
    });
    let Some(super::merge::Single::Claim(mut binds)) = prepare_claim(request)? else {
        return Ok(Vec::new());
    };
    binds.push(Value::Text(serde_json::to_string(ids)?));
    binds.push(Value::Text(serde_json::to_string(buckets)?));
    let sql = s.final_sql(sql);
    // All rows, so the statements after the one that returns a row (the
    // `COMMIT` the session may add) run too.
    let rows = query_with(&sql, order.iter().map(|n| binds[n - 1].clone()))
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    match rows.first() {
        Some(row) => read_claimed(row, db),
        None => Ok(Vec::new()),
    }
}

/// Stores or clears a queue's settings.
pub(super) async fn set_queue_limits(s: &mut Session<'_>, queue: &str, limits: &QueueLimits) -> Result<()> {
    let (sql, json) = match limits.is_unlimited() {
        true => ("DELETE FROM queue_limits WHERE name = ?1 AND ?2 IS NULL", None),
        false => (
            "INSERT OR REPLACE INTO queue_limits (name, limits) VALUES (?1, ?2)",
            Some(serde_json::to_string(limits)?),
        ),
    };
    let sql = s.final_sql(sql);
    sqlx::query(&sql)
        .bind(queue)
        .bind(json)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    Ok(())
}
