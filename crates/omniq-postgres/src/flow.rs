//! Flow control on PostgreSQL: the claim of a queue with limits, which
//! every host serialises on the queue's settings row (not on a lock of the
//! whole store), the storing of settings, and which queues this process
//! knows to have them.
//!
//! The interleaving the row lock rules out: two hosts each count one task
//! running under a limit of two and both claim one more. The claim locks
//! the queue's `queue_limits` row first (`FOR UPDATE`), then, in later
//! statements of the same transaction (under READ COMMITTED each sees every
//! claim committed before it got the lock), counts the running tasks, reads
//! the rate buckets and the windows of the candidates' keys, and claims
//! what `QueueLimits::admit` takes, storing the buckets before the commit
//! releases the lock. Finishes take no lock: they only lower the count.

use std::collections::HashSet;
use std::sync::Mutex;

use omniq_core::flow::FlowState;
use omniq_core::{ClaimRequest, Error, QueueFlow, QueueLimits, Result, Task};
use sqlx::Row;
use time::OffsetDateTime;

use crate::rows::{from_ns, to_ns, Fail};
use crate::{sql_error, PostgresStorage, ATTEMPTS};

/// The queues this process last found with flow-control settings.
#[derive(Debug, Default)]
pub(crate) struct Known {
    limited: Mutex<HashSet<String>>,
}

impl Known {
    /// Whether the last claim of `queue` found settings.
    pub(crate) fn is_limited(&self, queue: &str) -> bool {
        self.lock().contains(queue)
    }

    /// Looks whether `queue` has settings now, and remembers it.
    pub(crate) async fn check(&self, store: &PostgresStorage, queue: &str) -> Result<bool> {
        let sql = store.q("SELECT EXISTS (SELECT 1 FROM {s}.queue_limits WHERE name = $1)");
        let limited: bool = sqlx::query_scalar(&sql)
            .bind(queue)
            .fetch_one(&store.pool)
            .await
            .map_err(sql_error)?;
        self.note(queue, limited);
        Ok(limited)
    }

    fn note(&self, queue: &str, limited: bool) {
        let mut known = self.lock();
        match limited {
            true => known.insert(queue.to_owned()),
            false => known.remove(queue),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.limited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// For each candidate `t` of a limited claim, how many unfinished tasks of
/// its key and queue with a lower id are ahead of it (at most `st.per_key`;
/// failed ones only when `st.hold`), as `a.ahead`, through `tasks_key_order`.
const AHEAD: &str = "CROSS JOIN LATERAL (SELECT CASE \
    WHEN st.per_key IS NULL OR t.concurrency_key IS NULL THEN 0::int8 \
    ELSE (SELECT count(*) FROM (SELECT 1 FROM {s}.tasks u WHERE u.queue = $1 \
          AND u.concurrency_key = t.concurrency_key \
          AND u.status IN ('pending', 'running', 'failed') AND (u.status <> 'failed' OR st.hold) \
          AND u.id < t.id LIMIT st.per_key) x) END AS ahead) a";

impl PostgresStorage {
    /// The claim of a queue with settings; `None` when it has none (any
    /// more), for the plain claim to take over.
    ///
    /// A connection lost before the commit rolls the claim back, and it is
    /// tried again; one lost at the commit leaves it unknown, and the rows
    /// this claim's batch took are read back instead.
    pub(crate) async fn claim_limited(&self, request: &ClaimRequest) -> Result<Option<Vec<Task>>> {
        let batch = omniq_core::LeaseToken::new().to_string();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let rows = match self.claim_limited_once(request, &batch).await {
                Ok(Some(rows)) => rows,
                Ok(None) => {
                    self.flow.note(&request.queue, false);
                    return Ok(None);
                }
                Err(Fail::Retry(why)) => {
                    last = why;
                    continue;
                }
                Err(Fail::Unknown(why)) => self.claimed_by(&batch).await.map_err(|e| {
                    Error::backend(
                        "postgres",
                        format!("{why}, and the claim could not be read back: {e}"),
                    )
                })?,
                Err(Fail::Stop(error)) => return Err(error),
            };
            return Ok(Some(self.took(&rows)));
        }
        Err(Error::backend(
            "postgres",
            format!("gave up after {ATTEMPTS} attempts: {last}"),
        ))
    }

    async fn claim_limited_once(
        &self,
        request: &ClaimRequest,
        batch: &str,
    ) -> std::result::Result<Option<Vec<sqlx::postgres::PgRow>>, Fail> {
        // The lock every limited claim of this queue waits for rides with
        // the `BEGIN`, in one round trip: a simple query, which takes no
        // parameters, so the queue's name is written into it, after the
        // check that it holds only the letters a queue name may.
        if !omniq_core::queue::is_name(&request.queue) {
            return Err(Fail::Stop(Error::invalid_config(
                "queue",
                format!("{:?} is not a queue name", request.queue),
            )));
        }
        let begin = self.q(&format!(
            "BEGIN; SELECT 1 FROM {{s}}.queue_limits WHERE name = '{}' FOR UPDATE",
            request.queue
        ));
        let mut tx = self.claims.begin_with(begin).await.map_err(Fail::before_write)?;
        let body = self.limited_in(&mut tx, request, batch).await;
        match body {
            Ok(rows) => {
                tx.commit().await.map_err(Fail::at_commit)?;
                Ok(rows)
            }
            // Lost before the commit: the server rolls it back.
            Err(Fail::Unknown(why)) => Err(Fail::Retry(why)),
            Err(fail) => {
                let _ = tx.rollback().await;
                Err(fail)
            }
        }
    }

    /// The limited claim as one statement after the lock, with the rule of
    /// `QueueLimits::admit` stated in SQL for a queue's limit, key window and
    /// rate (held to `admit` by the conformance suite and the model-based
    /// test): `Some` with the claimed rows (or `Some(None)` for a queue that
    /// has no settings any more); `None` for a queue with a rate per key,
    /// whose claim is decided in Rust.
    async fn limited_in_sql(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        request: &ClaimRequest,
        batch: &str,
    ) -> std::result::Result<Option<Option<Vec<sqlx::postgres::PgRow>>>, Fail> {
        let now = to_ns(request.now).map_err(Fail::Stop)?;
        let expires = to_ns(omniq_core::later(request.now, request.lease_for)).map_err(Fail::Stop)?;
        let lease_ns = i64::try_from(request.lease_for.as_nanos()).unwrap_or(i64::MAX);
        let sql = self.q(
            &"WITH lim AS (SELECT (SELECT limits FROM {s}.queue_limits WHERE name = $1) AS l), \
             cfg AS (SELECT l, (l ->> 'limit')::int8 AS cap, (l ->> 'per_key')::int4 AS per_key, \
                 coalesce((l ->> 'hold_failed')::bool, false) AS hold, \
                 (l #>> '{rate,count}')::int8 AS rcount, \
                 (l #>> '{rate,per,secs}')::int8 * 1000000000 + (l #>> '{rate,per,nanos}')::int8 AS per_ns, \
                 l -> 'key_rate' IS NOT NULL AS by_rust, \
                 EXISTS (SELECT 1 FROM {s}.paused_queues WHERE name = $1) AS paused, \
                 (SELECT count(*) FROM {s}.tasks WHERE queue = $1 AND status = 'running' \
                  AND lease_expires > $2) AS running, \
                 greatest(coalesce((SELECT tat FROM {s}.rate_buckets WHERE queue = $1 AND key = ''), $2), $2) \
                     AS owed \
                 FROM lim), \
             st AS (SELECT *, greatest(1, per_ns / rcount) AS step, least($3, \
                 CASE WHEN cap IS NULL THEN $3 ELSE greatest(0, cap - running) END, \
                 CASE WHEN rcount IS NULL THEN $3 \
                      ELSE least(rcount, greatest(0, ($2 + per_ns - owed) / greatest(1, per_ns / rcount))) END) \
                 AS budget FROM cfg), \
             c AS (SELECT t.id FROM {s}.tasks t CROSS JOIN st \
                 AHEAD \
                 WHERE t.status = 'pending' AND t.queue = $1 AND t.eta <= $2 \
                 AND st.l IS NOT NULL AND NOT st.by_rust AND NOT st.paused \
                 AND a.ahead < coalesce(st.per_key, 1) \
                 ORDER BY t.priority DESC, t.eta, t.id LIMIT (SELECT budget FROM st) \
                 FOR UPDATE OF t SKIP LOCKED), \
             b AS (INSERT INTO {s}.rate_buckets (queue, key, tat) \
                 SELECT $1, '', st.owed + st.step * (SELECT count(*) FROM c) FROM st \
                 WHERE st.rcount IS NOT NULL AND EXISTS (SELECT 1 FROM c) \
                 ON CONFLICT (queue, key) DO UPDATE SET tat = excluded.tat), \
             took AS (UPDATE {s}.tasks t SET status = 'running', lease_expires = $4, \
                 claim = json_build_object('worker', $5::text, 'token', gen_random_uuid(), \
                 'at', $2::int8, 'lease_ns', $6::int8, 'batch', $7::text) \
                 FROM c WHERE t.id = c.id \
                 RETURNING t.id, t.record::text AS record, t.claim::text AS claim) \
             SELECT took.id, took.record, took.claim, \
                 (SELECT l IS NOT NULL FROM st) AS limited, (SELECT by_rust FROM st) AS by_rust \
             FROM (SELECT 1) one LEFT JOIN took ON true"
            .replace("AHEAD", AHEAD),
        );
        let rows = sqlx::query(&sql)
            .bind(&request.queue)
            .bind(now)
            .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
            .bind(expires)
            .bind(&request.worker_id)
            .bind(lease_ns)
            .bind(batch)
            .fetch_all(&mut **tx)
            .await
            .map_err(Fail::from)?;
        let Some(first) = rows.first() else {
            return Ok(Some(None));
        };
        let limited: Option<bool> = first.try_get(3).map_err(|e| Fail::Stop(sql_error(e)))?;
        let by_rust: Option<bool> = first.try_get(4).map_err(|e| Fail::Stop(sql_error(e)))?;
        match (limited, by_rust) {
            (Some(true), Some(true)) => Ok(None),
            (Some(true), _) => {
                // The claimed rows, with the columns `rows::split` reads.
                let claimed: Vec<_> = rows
                    .into_iter()
                    .filter(|row| row.try_get::<Option<String>, _>(0).ok().flatten().is_some())
                    .collect();
                Ok(Some(Some(claimed)))
            }
            _ => Ok(Some(None)),
        }
    }

    async fn limited_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        request: &ClaimRequest,
        batch: &str,
    ) -> std::result::Result<Option<Vec<sqlx::postgres::PgRow>>, Fail> {
        let queue = request.queue.as_str();
        let now = to_ns(request.now).map_err(Fail::Stop)?;
        if let Some(rows) = self.limited_in_sql(tx, request, batch).await? {
            return Ok(rows);
        }
        // After the lock, one statement (so one snapshot, taken once every
        // claim that held the lock before committed) reads the settings, the
        // running count, the bucket and the candidates: the due tasks in
        // claim order without those whose key's window is full (so such a
        // key never hides the tasks behind it), locked. With a rate per key
        // some candidates may be passed over; a few more are read for them.
        let want = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let sql = self.q(
            &"WITH lim AS (SELECT (SELECT limits FROM {s}.queue_limits WHERE name = $1) AS l), \
             st AS (SELECT l, (l ->> 'per_key')::int4 AS per_key, \
                 coalesce((l ->> 'hold_failed')::bool, false) AS hold, \
                 CASE WHEN l -> 'key_rate' IS NULL THEN $3 ELSE $3 * 8 + 64 END AS scan, \
                 EXISTS (SELECT 1 FROM {s}.paused_queues WHERE name = $1) AS paused, \
                 (SELECT count(*) FROM {s}.tasks WHERE queue = $1 AND status = 'running' \
                  AND lease_expires > $2) AS running, \
                 (SELECT tat FROM {s}.rate_buckets WHERE queue = $1 AND key = '' AND tat > $2) AS tat \
                 FROM lim), \
             c AS (SELECT t.id, t.concurrency_key, a.ahead, t.priority, t.eta FROM {s}.tasks t \
                 CROSS JOIN st \
                 AHEAD \
                 WHERE t.status = 'pending' AND t.queue = $1 AND t.eta <= $2 \
                 AND st.l IS NOT NULL AND NOT st.paused AND a.ahead < coalesce(st.per_key, 1) \
                 ORDER BY t.priority DESC, t.eta, t.id LIMIT (SELECT scan FROM st) \
                 FOR UPDATE OF t SKIP LOCKED) \
             SELECT st.l::text, st.paused, st.running, st.tat, c.id, c.concurrency_key, c.ahead \
             FROM st LEFT JOIN c ON true ORDER BY c.priority DESC, c.eta, c.id"
                .replace("AHEAD", AHEAD),
        );
        type Row = (
            Option<String>,
            bool,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(queue)
            .bind(now)
            .bind(want)
            .fetch_all(&mut **tx)
            .await
            .map_err(Fail::from)?;
        let Some((limits, paused, running, queue_tat, ..)) = rows.first().cloned() else {
            return Ok(None);
        };
        let Some(limits) = limits else {
            return Ok(None);
        };
        let limits: QueueLimits = serde_json::from_str(&limits).map_err(|e| {
            Fail::Stop(Error::backend(
                "postgres",
                format!("the limits of queue {queue:?} cannot be read: {e}"),
            ))
        })?;
        if paused {
            return Ok(Some(Vec::new()));
        }
        let mut state = FlowState {
            running: u32::try_from(running).unwrap_or(u32::MAX),
            queue_tat: queue_tat.map(from_ns),
            ..FlowState::default()
        };
        let candidates: Vec<(String, Option<String>, i64)> = rows
            .into_iter()
            .filter_map(|(.., id, key, ahead)| Some((id?, key, ahead.unwrap_or(0))))
            .collect();
        if limits.key_rate.is_some() {
            let keys: Vec<&str> = candidates
                .iter()
                .filter_map(|(_, key, _)| key.as_deref())
                .collect();
            let sql = self
                .q("SELECT key, tat FROM {s}.rate_buckets WHERE queue = $1 AND tat > $2 AND key = ANY($3)");
            let buckets: Vec<(String, i64)> = sqlx::query_as(&sql)
                .bind(queue)
                .bind(now)
                .bind(&keys)
                .fetch_all(&mut **tx)
                .await
                .map_err(Fail::from)?;
            state.key_tats = buckets
                .into_iter()
                .map(|(key, tat)| (key, from_ns(tat)))
                .collect();
        }
        let (ids, admitted) = limits.admit_rows(request.limit, &state, &candidates, request.now);
        let mut keys = Vec::new();
        let mut tats = Vec::new();
        if let Some(tat) = admitted.queue_tat {
            keys.push(String::new());
            tats.push(to_ns(tat).map_err(Fail::Stop)?);
        }
        for (key, tat) in admitted.key_tats {
            keys.push(key);
            tats.push(to_ns(tat).map_err(Fail::Stop)?);
        }
        let expires = to_ns(omniq_core::later(request.now, request.lease_for)).map_err(Fail::Stop)?;
        let lease_ns = i64::try_from(request.lease_for.as_nanos()).unwrap_or(i64::MAX);
        // The claim as the plain statement records it, and the buckets; a
        // bucket whose time has passed is full again, and goes.
        let sql = self.q(
            "WITH gone AS (DELETE FROM {s}.rate_buckets WHERE queue = $1 AND tat <= $2 \
                 AND NOT (key = ANY($8))), \
             kept AS (INSERT INTO {s}.rate_buckets (queue, key, tat) \
                 SELECT $1, k, t FROM unnest($8::text[], $9::int8[]) AS b(k, t) \
                 ON CONFLICT (queue, key) DO UPDATE SET tat = excluded.tat) \
             UPDATE {s}.tasks t SET status = 'running', lease_expires = $4, \
                 claim = json_build_object('worker', $3::text, 'token', gen_random_uuid(), \
                 'at', $2::int8, 'lease_ns', $5::int8, 'batch', $6::text) \
             WHERE t.id = ANY($7) \
             RETURNING t.id, t.record::text, t.claim::text",
        );
        let rows = sqlx::query(&sql)
            .bind(queue)
            .bind(now)
            .bind(&request.worker_id)
            .bind(expires)
            .bind(lease_ns)
            .bind(batch)
            .bind(&ids)
            .bind(&keys)
            .bind(&tats)
            .fetch_all(&mut **tx)
            .await
            .map_err(Fail::from)?;
        Ok(Some(rows))
    }

    /// [`Storage::set_queue_limits`](omniq_core::Storage::set_queue_limits).
    pub(crate) async fn store_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        self.writable()?;
        let result = match limits.is_unlimited() {
            true => {
                sqlx::query(&self.q("DELETE FROM {s}.queue_limits WHERE name = $1"))
                    .bind(queue)
                    .execute(&self.pool)
                    .await
            }
            false => {
                sqlx::query(&self.q(
                    "INSERT INTO {s}.queue_limits (name, limits) VALUES ($1, $2::json) \
                     ON CONFLICT (name) DO UPDATE SET limits = excluded.limits",
                ))
                .bind(queue)
                .bind(serde_json::to_string(&limits)?)
                .execute(&self.pool)
                .await
            }
        };
        // Setting the same value twice is harmless, so a lost answer is
        // safe to leave to the caller to repeat.
        result.map_err(sql_error)?;
        self.flow.note(queue, !limits.is_unlimited());
        Ok(())
    }

    /// [`Storage::queue_flows`](omniq_core::Storage::queue_flows).
    pub(crate) async fn flows(&self, now: OffsetDateTime) -> Result<Vec<QueueFlow>> {
        let sql = self.q(
            "SELECT q.name, q.limits::text, \
             (SELECT count(*) FROM {s}.tasks WHERE queue = q.name AND status = 'running' AND lease_expires > $1), \
             (SELECT tat FROM {s}.rate_buckets WHERE queue = q.name AND key = '' AND tat > $1) \
             FROM {s}.queue_limits q ORDER BY q.name",
        );
        let rows = sqlx::query(&sql)
            .bind(to_ns(now)?)
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)?;
        rows.iter()
            .map(|row| {
                let queue: String = row.try_get(0).map_err(sql_error)?;
                let limits: String = row.try_get(1).map_err(sql_error)?;
                let running: i64 = row.try_get(2).map_err(sql_error)?;
                let tat: Option<i64> = row.try_get(3).map_err(sql_error)?;
                let limits = serde_json::from_str(&limits).map_err(|e| {
                    Error::backend(
                        "postgres",
                        format!("the limits of queue {queue:?} cannot be read: {e}"),
                    )
                })?;
                Ok(QueueFlow {
                    queue,
                    limits,
                    running: u32::try_from(running).unwrap_or(u32::MAX),
                    queue_tat: tat.map(from_ns),
                })
            })
            .collect()
    }
}
