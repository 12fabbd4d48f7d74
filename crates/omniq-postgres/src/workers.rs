//! The upkeep pools share, in PostgreSQL: pruning the oldest finished tasks
//! of one status a batch at a time, turns at store-wide chores, and the
//! pools' heartbeats.
//!
//! None of these writes is retried after a lost connection: each is safe to
//! leave undone (the next turn or beat does it again), and a prune that ran
//! twice would only prune a second batch, which retention asks for anyway.

use std::time::Duration;

use omniq_core::{Error, Result, TaskStatus, WorkerBeat};
use time::OffsetDateTime;

use crate::rows::to_ns;
use crate::{sql_error, PostgresStorage};

impl PostgresStorage {
    /// Deletes at most `limit` tasks of `status` finished before `before`,
    /// oldest first. Rows another host is pruning at the same moment are
    /// skipped, not waited for, so several pruners never queue behind each
    /// other, and a claim never waits on a prune (they touch different
    /// rows). The deleted rows count towards the store's next vacuum.
    pub(crate) async fn prune_rows(
        &self,
        status: TaskStatus,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64> {
        self.writable()?;
        let done = sqlx::query(
            &self.q("DELETE FROM {s}.tasks WHERE id IN (SELECT id FROM {s}.tasks \
                 WHERE status = $1 AND finished_at < $2 ORDER BY finished_at LIMIT $3 \
                 FOR UPDATE SKIP LOCKED)"),
        )
        .bind(status.as_str())
        .bind(to_ns(before)?)
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(sql_error)?;
        let pruned = done.rows_affected();
        if pruned > 0 {
            self.upkeep
                .claimed(pruned as usize, &self.pool, &self.q("{s}.tasks"));
        }
        Ok(pruned)
    }

    /// Takes the turn at `chore` when the last was at or before `now - every`.
    /// Two hosts asking at once: the second waits on the first's row lock,
    /// then finds the turn taken.
    pub(crate) async fn take_turn_row(
        &self,
        chore: &str,
        now: OffsetDateTime,
        every: Duration,
    ) -> Result<bool> {
        self.writable()?;
        let taken: Option<String> =
            sqlx::query_scalar(&self.q("INSERT INTO {s}.turns (chore, last_at) VALUES ($1, $2) \
             ON CONFLICT (chore) DO UPDATE SET last_at = excluded.last_at WHERE {s}.turns.last_at <= $3 \
             RETURNING chore"))
            .bind(chore)
            .bind(to_ns(now)?)
            .bind(to_ns(omniq_core::earlier(now, every))?)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(taken.is_some())
    }

    /// Writes `beat` and deletes the beats long expired, in one statement.
    pub(crate) async fn beat_row(&self, beat: &WorkerBeat) -> Result<()> {
        self.writable()?;
        sqlx::query(&self.q(
            "WITH gone AS (DELETE FROM {s}.workers WHERE expires_at < $3 AND id <> $1) \
             INSERT INTO {s}.workers (id, record, expires_at) VALUES ($1, $2::json, $4) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at",
        ))
        .bind(&beat.worker_id)
        .bind(serde_json::to_string(beat)?)
        .bind(to_ns(omniq_core::upkeep::gone_before(beat.last_seen))?)
        .bind(to_ns(beat.expires_at)?)
        .execute(&self.pool)
        .await
        .map_err(sql_error)?;
        Ok(())
    }

    pub(crate) async fn worker_rows(&self) -> Result<Vec<WorkerBeat>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as(&self.q("SELECT id, record::text FROM {s}.workers ORDER BY id COLLATE \"C\""))
                .fetch_all(&self.pool)
                .await
                .map_err(sql_error)?;
        rows.into_iter()
            .map(|(id, record)| {
                serde_json::from_str(&record).map_err(|e| {
                    Error::backend(
                        "postgres",
                        format!("the heartbeat of worker {id:?} cannot be read: {e}"),
                    )
                })
            })
            .collect()
    }

    pub(crate) async fn remove_worker_row(&self, worker_id: &str) -> Result<bool> {
        self.writable()?;
        let done = sqlx::query(&self.q("DELETE FROM {s}.workers WHERE id = $1"))
            .bind(worker_id)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(done.rows_affected() > 0)
    }
}
