//! `cargo xtask perf --upkeep`: what retention and heartbeats cost a pool at
//! full speed. Per backend, in turns: the 10,000-task processing row with
//! upkeep off (no pruning, a heartbeat a day), with it on as shipped (a beat
//! every 5 s, retention), and with it on while a backlog of old finished tasks
//! (100,000 by default) is pruned beside the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq_core::{Outcome, Retention, Settings, Storage, Task};
use omniq_worker::{HandlerError, Registry, Signals, WorkerPool};
use time::OffsetDateTime;

use crate::{enqueue_batch, open};

/// How the pool's upkeep is set for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upkeep {
    /// No pruning, a heartbeat a day: the pool as it was without upkeep.
    Off,
    /// As shipped: a beat every 5 s, the default retention.
    On,
    /// As shipped, with a backlog of old finished tasks to prune, and the
    /// turn taken at once.
    Backlog(usize),
}

/// A completed task that finished two days ago, past the default retention.
fn old_finished(i: usize) -> Task {
    let at = OffsetDateTime::now_utc() - time::Duration::days(2);
    let mut task = crate::task(i);
    task.created_at = at;
    task.updated_at = at;
    task.eta = at;
    task.claim("gone", Duration::from_secs(30), at).expect("claim");
    let token = task.lease.as_ref().expect("lease").token;
    task.finish(
        token,
        Outcome::Complete {
            result: serde_json::Value::Null,
        },
        at,
    )
    .expect("finish");
    task
}

/// Seconds to process `n` batch-enqueued no-op tasks with a pool of
/// `concurrency` under `upkeep`; with a backlog, also how many old tasks
/// were left unpruned when the run ended.
pub async fn process_row(backend: &str, n: usize, concurrency: usize, upkeep: Upkeep) -> (f64, u64) {
    let store = open(backend).await;
    let storage: Arc<dyn Storage> = store.store.clone();
    if let Upkeep::Backlog(old) = upkeep {
        for start in (0..old).step_by(5_000) {
            let chunk = (start..(start + 5_000).min(old)).map(old_finished).collect();
            storage.import(chunk).await.expect("import the backlog");
        }
    }
    enqueue_batch(&*storage, n).await;
    let mut registry = Registry::new();
    registry.register("noop", |_: u64| async { Ok::<_, HandlerError>(()) });
    let signals = Signals::new();
    let mut pool = WorkerPool::new(storage.clone(), registry)
        .concurrency(concurrency)
        .signals(signals.clone())
        .defaults(Settings::default());
    pool = match upkeep {
        Upkeep::Off => pool
            .retention(Retention::FOREVER)
            .heartbeat_every(Duration::from_secs(86_400)),
        Upkeep::On => pool,
        // The first turn comes a quarter of the period after the start.
        Upkeep::Backlog(_) => pool.retention_every(Duration::from_millis(400)),
    };
    let start = Instant::now();
    let pool = pool.start().expect("start the pool");
    loop {
        let finished = signals.finished();
        if pool.stats().succeeded as usize >= n {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), finished).await;
    }
    let took = start.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(10)).await;
    let left = storage
        .counts()
        .await
        .expect("counts")
        .completed
        .saturating_sub(n as u64);
    (took, left)
}
