//! The pool's upkeep, beside its claims: the heartbeat it writes to the store
//! every few seconds, and the pruning of old finished tasks, which of all
//! pools on a store one does at a time.
//!
//! Both run on a task of their own, so a slow store or a big backlog to prune
//! never holds up a claim in this pool; pruning goes a batch at a time, so
//! other pools' claims get the store between two batches.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::upkeep::{PRUNE_BATCH, RETENTION_CHORE};
use omniq_core::WorkerBeat;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{from_now, Shared};

/// How many beats may be missed before a pool counts as gone.
const MISSED_BEATS: u32 = 4;

/// How long one prune batch may hold the store: a slower batch halves the
/// next, a batch under a quarter of it doubles the next (up to
/// [`PRUNE_BATCH`]), so a store where deletes are slow (the file store, a
/// loaded disk) never keeps claims waiting long.
const BATCH_TIME: Duration = Duration::from_millis(100);

/// The smallest batch.
const MIN_BATCH: usize = 10;

/// Beats and prunes until `shared.stop_upkeep` is cancelled. The last beat is
/// removed by [`super::Pool::shutdown`], once the running tasks are done.
pub(super) async fn keep_up(shared: Arc<Shared>) {
    let config = &shared.config;
    let started_at = shared.clock.now();
    let mut next_beat = Instant::now();
    // The first turn waits a little, with jitter, so pools started together
    // do not all ask at once.
    let mut next_prune = from_now(jittered(config.retention_every / 4));
    loop {
        if Instant::now() >= next_beat {
            beat(&shared, started_at).await;
            next_beat = from_now(config.heartbeat_every);
        }
        if Instant::now() >= next_prune {
            prune_turn(&shared).await;
            next_prune = from_now(jittered(config.retention_every));
        }
        let wake = next_beat.min(next_prune);
        tokio::select! {
            _ = shared.stop_upkeep.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// `period` give or take a tenth, so pools' turns spread out.
fn jittered(period: Duration) -> Duration {
    let tenth = period / 10;
    period - tenth + tenth.mul_f64(2.0 * fastrand::f64())
}

/// This pool's heartbeat as of now.
pub(super) fn heartbeat(shared: &Shared, started_at: OffsetDateTime) -> WorkerBeat {
    let now = shared.clock.now();
    WorkerBeat {
        worker_id: shared.config.worker_id.clone(),
        host: host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        queues: shared.config.lanes(),
        running: shared.in_flight() as u64,
        done: omniq_core::upkeep::WorkerCounts {
            completed: shared
                .counters
                .succeeded
                .load(std::sync::atomic::Ordering::Relaxed),
            failed: shared.counters.failed.load(std::sync::atomic::Ordering::Relaxed),
            retried: shared.counters.retried.load(std::sync::atomic::Ordering::Relaxed),
        },
        started_at,
        last_seen: now,
        expires_at: omniq_core::later(now, shared.config.heartbeat_every * MISSED_BEATS),
    }
}

async fn beat(shared: &Shared, started_at: OffsetDateTime) {
    if let Err(error) = shared.storage.beat(heartbeat(shared, started_at)).await {
        tracing::debug!(%error, "cannot write the pool's heartbeat");
    }
}

/// Prunes, if this pool wins the store's turn: for each status kept for a
/// limited time, batches of the oldest until none is left past its age.
///
/// After each batch the pool waits as long as the batch took, so pruning has
/// the store at most half the time and claims and finishes the rest; a turn
/// ends after half the retention period at most, and the next turn goes on.
async fn prune_turn(shared: &Shared) {
    let retention = shared.config.defaults.retention;
    if retention.keeps_everything() {
        return;
    }
    let now = shared.clock.now();
    match shared
        .storage
        .take_turn(RETENTION_CHORE, now, shared.config.retention_every)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::debug!(%error, "cannot take the retention turn");
            return;
        }
    }
    let turn_ends = from_now(shared.config.retention_every / 2);
    let mut pruned = 0;
    let mut batch = PRUNE_BATCH;
    'statuses: for (status, before) in retention.cutoffs(now) {
        loop {
            if shared.stop_upkeep.is_cancelled() || Instant::now() >= turn_ends {
                break 'statuses;
            }
            let started = Instant::now();
            let n = match shared.storage.prune(status, before, batch).await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(%error, %status, "cannot prune finished tasks; trying again next turn");
                    break 'statuses;
                }
            };
            pruned += n;
            if n < batch as u64 {
                break;
            }
            let took = started.elapsed();
            batch = next_batch(batch, took);
            // Claims and finishes queued behind this batch go first.
            tokio::select! {
                _ = shared.stop_upkeep.cancelled() => break 'statuses,
                _ = tokio::time::sleep(took) => {}
            }
        }
    }
    if pruned > 0 {
        tracing::info!(pruned, "pruned finished tasks past their retention");
    }
}

/// The size of the batch after one of `batch` tasks that took `took`.
fn next_batch(batch: usize, took: Duration) -> usize {
    if took > BATCH_TIME {
        (batch / 2).max(MIN_BATCH)
    } else if took < BATCH_TIME / 4 {
        (batch * 2).min(PRUNE_BATCH)
    } else {
        batch
    }
}

/// The host's name, as `hostname` prints it where it can be read.
fn host_name() -> String {
    let read = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok());
    read.map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.len() <= 200 && !name.chars().any(char::is_control))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_batches_shrink_and_quick_ones_grow_within_bounds() {
        assert_eq!(next_batch(1_000, Duration::from_millis(400)), 500);
        assert_eq!(next_batch(10, Duration::from_secs(3)), MIN_BATCH);
        assert_eq!(next_batch(100, Duration::from_millis(5)), 200);
        assert_eq!(next_batch(1_000, Duration::from_millis(5)), PRUNE_BATCH);
        assert_eq!(next_batch(300, Duration::from_millis(50)), 300);
    }
}
