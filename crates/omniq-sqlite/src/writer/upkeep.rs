//! The upkeep changes: pruning finished tasks of one status, taking a turn
//! at a store-wide chore, and writing or removing a pool's heartbeat.

// The writer's types, helpers and imports, which this part works with.
use super::*;
use omniq_core::{TaskStatus, WorkerBeat};

pub(super) async fn prune(
    s: &mut Session<'_>,
    status: TaskStatus,
    before: OffsetDateTime,
    limit: usize,
) -> Result<u64> {
    let before = to_ns(before)?;
    let limit = limit as i64;
    // `completed_status` finds the oldest of one status; the count is read
    // first, since the delete goes through a view's trigger, whose rows
    // SQLite does not count.
    let pick =
        "SELECT id FROM completed WHERE status = ?1 AND finished_at < ?2 ORDER BY finished_at LIMIT ?3";
    let sql = s.sql(&format!("SELECT count(*) FROM ({pick})"));
    let count: i64 = sqlx::query_scalar(&sql)
        .bind(status.as_str())
        .bind(before)
        .bind(limit)
        .fetch_one(s.conn())
        .await
        .map_err(sql_error)?;
    if count > 0 {
        let sql = s.final_sql(&format!("DELETE FROM task_rows WHERE id IN ({pick})"));
        sqlx::query(&sql)
            .bind(status.as_str())
            .bind(before)
            .bind(limit)
            .execute(s.conn())
            .await
            .map_err(sql_error)?;
        s.final_ran();
    }
    Ok(count as u64)
}

pub(super) async fn take_turn(
    s: &mut Session<'_>,
    chore: &str,
    now: OffsetDateTime,
    every: Duration,
) -> Result<bool> {
    // Not the final command: a `COMMIT` behind a `RETURNING` read with
    // `fetch_optional` might never run; the group commits after it.
    let sql = s.sql(
        "INSERT INTO turns (chore, last_at) VALUES (?1, ?2) \
         ON CONFLICT (chore) DO UPDATE SET last_at = excluded.last_at WHERE turns.last_at <= ?3 \
         RETURNING chore",
    );
    let taken: Option<String> = sqlx::query_scalar(&sql)
        .bind(chore)
        .bind(to_ns(now)?)
        .bind(to_ns(omniq_core::earlier(now, every))?)
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(taken.is_some())
}

pub(super) async fn beat(s: &mut Session<'_>, beat: &WorkerBeat) -> Result<()> {
    let sql = s.final_sql(
        "DELETE FROM workers WHERE expires_at < ?3; \
         INSERT INTO workers (id, record, expires_at) VALUES (?1, ?2, ?4) \
         ON CONFLICT (id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at",
    );
    sqlx::query(&sql)
        .bind(&beat.worker_id)
        .bind(serde_json::to_string(beat)?)
        .bind(to_ns(omniq_core::upkeep::gone_before(beat.last_seen))?)
        .bind(to_ns(beat.expires_at)?)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    Ok(())
}

pub(super) async fn remove_worker(s: &mut Session<'_>, worker_id: &str) -> Result<bool> {
    let sql = s.sql("DELETE FROM workers WHERE id = ?1 RETURNING id");
    let removed: Option<String> = sqlx::query_scalar(&sql)
        .bind(worker_id)
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(removed.is_some())
}
