//! `cargo xtask perf --flow`: what flow control costs a pool at full speed.
//! Per backend, in turns: the processing row of N batch-enqueued no-op
//! tasks without limits, with a queue limit above the pool's concurrency
//! (twice its slots, so it never holds a claim back: what is measured is
//! the limited claim itself), and with the tasks spread over 100
//! concurrency keys under a per-key limit of 1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq_core::{NewTask, QueueLimits, Settings, Storage};
use omniq_worker::{HandlerError, Registry, Signals, WorkerPool};
use serde_json::json;
use time::OffsetDateTime;

use crate::open;

/// The concurrency keys of [`Flow::Keys`].
pub const KEYS: usize = 100;

/// The queue's settings for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// No settings: the plain claim.
    Off,
    /// A limit of twice the pool's slots.
    Limit,
    /// Tasks over 100 keys, one running per key.
    Keys,
}

/// Seconds to process `n` batch-enqueued no-op tasks with a pool of
/// `concurrency` under `flow`, and the tasks per claim the pool reached.
pub async fn process_row(backend: &str, n: usize, concurrency: usize, flow: Flow) -> (f64, f64) {
    let store = open(backend).await;
    let storage: Arc<dyn Storage> = store.store.clone();
    let limits = match flow {
        Flow::Off => QueueLimits::default(),
        Flow::Limit => QueueLimits {
            limit: Some(2 * concurrency as u32),
            ..QueueLimits::default()
        },
        Flow::Keys => QueueLimits {
            per_key: Some(1),
            ..QueueLimits::default()
        },
    };
    storage
        .set_queue_limits(omniq_core::DEFAULT_QUEUE, limits)
        .await
        .expect("set the limits");
    let now = OffsetDateTime::now_utc();
    let tasks = (0..n)
        .map(|i| {
            let task = NewTask::new("noop").args(vec![json!(i)]);
            let task = match flow {
                Flow::Keys => task.concurrency_key(format!("key-{}", i % KEYS)),
                _ => task,
            };
            task.into_task(&Settings::default(), now).expect("task")
        })
        .collect();
    storage.enqueue(tasks).await.expect("enqueue");
    let mut registry = Registry::new();
    registry.register("noop", |_: u64| async { Ok::<_, HandlerError>(()) });
    let signals = Signals::new();
    let start = Instant::now();
    let pool = WorkerPool::new(storage.clone(), registry)
        .concurrency(concurrency)
        .signals(signals.clone())
        .start()
        .expect("start the pool");
    loop {
        let finished = signals.finished();
        if pool.stats().succeeded as usize >= n {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), finished).await;
    }
    let took = start.elapsed().as_secs_f64();
    let stats = pool.stats();
    pool.shutdown(Duration::from_secs(10)).await;
    let completed = storage.counts().await.expect("counts").completed as usize;
    assert_eq!(completed, n, "every result is stored");
    (took, stats.claimed as f64 / stats.claims.max(1) as f64)
}
