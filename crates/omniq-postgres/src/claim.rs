//! Claiming: the one statement that picks due rows one priority level at a
//! time and marks them running, and the read-back of a claim whose answer
//! was lost.

use omniq_core::{ClaimRequest, Error, Result, Task};

use crate::rows::{self, to_ns, Fail};
use crate::{PostgresStorage, ATTEMPTS};

impl PostgresStorage {
    /// [`Storage::claim`](omniq_core::Storage::claim): one statement for a
    /// queue without flow-control settings, the limited claim
    /// (`flow.rs`) for one with them. Which a queue has is remembered from
    /// the last claim of it: the plain statement takes nothing from a
    /// queue with settings, and an empty answer looks for them.
    pub(crate) async fn claim_rows(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        self.writable()?;
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        if self.flow.is_limited(&request.queue) {
            if let Some(claimed) = self.claim_limited(&request).await? {
                return Ok(claimed);
            }
        }
        let claimed = self.claim_plain(&request).await?;
        if claimed.is_empty() && self.flow.check(self, &request.queue).await? {
            if let Some(claimed) = self.claim_limited(&request).await? {
                return Ok(claimed);
            }
        }
        Ok(claimed)
    }

    /// The claim of a queue without flow-control settings: one statement.
    async fn claim_plain(&self, request: &ClaimRequest) -> Result<Vec<Task>> {
        // One statement, so one round trip: it locks the due rows, marks them
        // running and records the claim beside each record, which reading
        // the row replays with `Task::claim` (see `rows::read`).
        //
        // The due rows are found one priority level at a time: the index
        // `(queue, priority DESC, eta, id)` answers `eta <= now` as a range
        // within one level, where across levels it would be a filter over
        // every pending task of the queue (those due later included). The
        // levels come from a walk down the same index (a loose index scan).
        let sql = self.q("WITH RECURSIVE levels(p) AS ( \
                 SELECT max(priority) FROM {s}.tasks WHERE status = 'pending' AND queue = $1 \
               UNION ALL \
                 SELECT (SELECT max(priority) FROM {s}.tasks WHERE status = 'pending' AND queue = $1 \
                         AND priority < levels.p) \
                 FROM levels WHERE levels.p IS NOT NULL), \
             due AS MATERIALIZED ( \
                 SELECT d.id FROM levels, LATERAL ( \
                     SELECT id, eta FROM {s}.tasks WHERE status = 'pending' AND queue = $1 \
                     AND priority = levels.p AND eta <= $2 ORDER BY eta, id LIMIT $3 \
                     FOR UPDATE SKIP LOCKED) d \
                 WHERE levels.p IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM {s}.paused_queues WHERE name = $1) \
                 AND NOT EXISTS (SELECT 1 FROM {s}.queue_limits WHERE name = $1) \
                 ORDER BY levels.p DESC, d.eta, d.id LIMIT $3) \
             UPDATE {s}.tasks t SET status = 'running', lease_expires = $5, \
                 claim = json_build_object('worker', $4::text, 'token', gen_random_uuid(), \
                 'at', $2::int8, 'lease_ns', $6::int8, 'batch', $7::text) \
             FROM due WHERE t.id = due.id \
             RETURNING t.id, t.record::text, t.claim::text");
        let now = to_ns(request.now)?;
        let expires = to_ns(omniq_core::later(request.now, request.lease_for))?;
        let lease_ns = i64::try_from(request.lease_for.as_nanos()).unwrap_or(i64::MAX);
        // Names this claim's rows, so that when the connection is lost after
        // the server ran the statement, the claim can be read back instead
        // of tried again (which would leave the first claim's tasks running
        // with no worker, an attempt burned).
        let batch = omniq_core::LeaseToken::new().to_string();
        let mut last = String::new();
        let mut claimed = None;
        for _ in 0..ATTEMPTS {
            let rows = sqlx::query(&sql)
                .bind(&request.queue)
                .bind(now)
                .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
                .bind(&request.worker_id)
                .bind(expires)
                .bind(lease_ns)
                .bind(&batch)
                .fetch_all(&self.claims)
                .await;
            let rows = match rows.map_err(Fail::from) {
                Err(Fail::Unknown(why)) => self.claimed_by(&batch).await.map_err(|e| {
                    Fail::Stop(Error::backend(
                        "postgres",
                        format!("{why}, and the claim could not be read back: {e}"),
                    ))
                }),
                other => other,
            };
            match rows {
                Ok(rows) => {
                    claimed = Some(rows);
                    break;
                }
                Err(Fail::Retry(why)) => last = why,
                Err(Fail::Unknown(why)) => return Err(rows::unknown(why)),
                Err(Fail::Stop(error)) => return Err(error),
            }
        }
        let claimed = claimed.ok_or_else(|| {
            Error::backend("postgres", format!("gave up after {ATTEMPTS} attempts: {last}"))
        })?;
        Ok(self.took(&claimed))
    }

    /// The tasks of a claim's rows in claim order, noted for the upkeep and
    /// the short way of their finish. A row that cannot be read is claimed
    /// all the same; no worker runs it, and the lease pass takes it out of
    /// `running` once its lease runs out.
    pub(crate) fn took(&self, rows: &[sqlx::postgres::PgRow]) -> Vec<Task> {
        let (mut claimed, unreadable) = rows::split(rows);
        if !unreadable.is_empty() {
            tracing::error!(
                tasks = ?unreadable,
                schema = %self.schema,
                "claimed tasks whose stored records cannot be read; the lease pass will fail them"
            );
        }
        if !claimed.is_empty() {
            self.upkeep
                .claimed(claimed.len(), &self.pool, &self.q("{s}.tasks"));
            self.claimed.keep(&claimed);
        }
        claimed.sort_by_key(omniq_core::queue::claim_order);
        claimed
    }

    /// The rows the claim named `batch` took, still running under it: how
    /// a claim whose connection was lost learns what it claimed. Read on a
    /// fresh connection of the main pool.
    pub(crate) async fn claimed_by(
        &self,
        batch: &str,
    ) -> std::result::Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        sqlx::query(
            &self.q("SELECT {COLUMNS} FROM {s}.tasks WHERE status = 'running' AND claim->>'batch' = $1"),
        )
        .bind(batch)
        .fetch_all(&self.pool)
        .await
    }
}
