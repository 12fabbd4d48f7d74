//! Helpers for testing code that enqueues and runs jobs, as `Oban.Testing`
//! and River's `rivertest` give: run one job's handler directly, read what was
//! enqueued as typed jobs, and drain a queue inline.
//!
//! ```
//! use omniq::testing;
//! use omniq::{ContextExt, HandlerError, Job, MemoryStorage, OmniQ, Registry, Settings, TaskContext};
//! use serde::{Deserialize, Serialize};
//! use std::sync::Arc;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Signup { email: String }
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Welcome { to: String }
//!
//! impl Job for Signup {
//!     const NAME: &'static str = "signup";
//!     type Output = ();
//!     type Error = HandlerError;
//!     async fn run(self, ctx: TaskContext) -> Result<(), HandlerError> {
//!         ctx.queue()?.push(Welcome { to: self.email }).await?;
//!         Ok(())
//!     }
//! }
//! impl Job for Welcome {
//!     const NAME: &'static str = "welcome";
//!     type Output = String;
//!     type Error = HandlerError;
//!     async fn run(self, _ctx: TaskContext) -> Result<String, HandlerError> {
//!         Ok(format!("welcome, {}", self.to))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> omniq::Result<()> {
//! let queue = OmniQ::with_storage(Arc::new(MemoryStorage::new()), Settings::default());
//! // The handler, called directly: it enqueues its follow-up.
//! testing::run(&queue, Signup { email: "ada@example.com".into() }).await.unwrap();
//! testing::assert_enqueued::<Welcome>(&queue, |job| job.to == "ada@example.com").await;
//!
//! // Or every due job of a queue, run by a pool until none is left.
//! let mut registry = Registry::new();
//! registry.job::<Welcome>();
//! let report = testing::drain(&queue, registry, "default").await?;
//! assert_eq!(report.completed, 1);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use omniq_core::{payload, Error, ListQuery, Result, Task, TaskStatus};
use omniq_worker::{Job, Registry, TaskContext};

use crate::client::OmniQ;

/// Runs `job`'s handler once, directly, in this task: with a context whose
/// [`ContextExt::queue`](crate::ContextExt::queue) is `queue` (so follow-up
/// work goes to its store), attempt 1, and nothing stored about `job` itself.
pub async fn run<J: Job>(queue: &OmniQ, job: J) -> std::result::Result<J::Output, J::Error> {
    run_with(queue, job, Registry::new()).await
}

/// Like [`run`], with the shared state registered in `registry`
/// ([`Registry::data`]) reachable through [`TaskContext::data`].
pub async fn run_with<J: Job>(
    queue: &OmniQ,
    job: J,
    registry: Registry,
) -> std::result::Result<J::Output, J::Error> {
    let ctx = context_for::<J>(queue, &job, registry);
    job.run(ctx).await
}

/// The context [`run`] gives a handler, for calling one by hand.
pub fn context_for<J: Job>(queue: &OmniQ, job: &J, mut registry: Registry) -> TaskContext {
    registry.data(queue.clone());
    let task = job
        .to_task()
        .and_then(|task| task.into_task(queue.settings(), queue.now()))
        .unwrap_or_else(|error| panic!("the job {} cannot become a task: {error}", J::NAME));
    TaskContext::standalone(&task, queue.storage().clone(), &registry)
}

/// The pending jobs of type `J` in `queue`'s store, oldest first, decoded
/// from their payloads. A payload that is not a `J` is an error naming the
/// task.
pub async fn enqueued<J: Job>(queue: &OmniQ) -> Result<Vec<J>> {
    let tasks = queue
        .list(ListQuery {
            status: Some(TaskStatus::Pending),
            func_path: Some(J::NAME.to_owned()),
            order: omniq_core::ListOrder::OldestFirst,
            ..ListQuery::default()
        })
        .await?;
    tasks.iter().map(decode::<J>).collect()
}

fn decode<J: Job>(task: &Task) -> Result<J> {
    serde_json::from_value(payload::join(&task.args, &task.kwargs)).map_err(|error| Error::Conflict {
        id: task.id.to_string(),
        reason: format!("its payload is not a {}: {error}", J::NAME),
    })
}

/// Panics, listing the pending `J` jobs, unless one of them matches
/// `matches`; answers the first that does.
pub async fn assert_enqueued<J: Job + std::fmt::Debug>(queue: &OmniQ, matches: impl Fn(&J) -> bool) -> J {
    let jobs = enqueued::<J>(queue)
        .await
        .unwrap_or_else(|error| panic!("cannot read the enqueued {} jobs: {error}", J::NAME));
    let listed = format!("{jobs:#?}");
    jobs.into_iter().find(|job| matches(job)).unwrap_or_else(|| {
        panic!(
            "no pending {} job matches; the pending ones are: {listed}",
            J::NAME
        )
    })
}

/// Panics unless no pending job of type `J` matches `matches`.
pub async fn refute_enqueued<J: Job + std::fmt::Debug>(queue: &OmniQ, matches: impl Fn(&J) -> bool) {
    let jobs = enqueued::<J>(queue)
        .await
        .unwrap_or_else(|error| panic!("cannot read the enqueued {} jobs: {error}", J::NAME));
    if let Some(job) = jobs.iter().find(|job| matches(job)) {
        panic!("a pending {} job matches: {job:#?}", J::NAME);
    }
}

/// Every task of `queue_name`, oldest first.
async fn list_queue(queue: &OmniQ, queue_name: &str) -> Result<Vec<Task>> {
    queue
        .list(ListQuery {
            queue: Some(queue_name.to_owned()),
            order: omniq_core::ListOrder::OldestFirst,
            ..ListQuery::default()
        })
        .await
}

/// Each task of `queue_name` with its attempts so far.
async fn attempts_in(
    queue: &OmniQ,
    queue_name: &str,
) -> Result<std::collections::HashMap<omniq_core::TaskId, u32>> {
    Ok(list_queue(queue, queue_name)
        .await?
        .into_iter()
        .map(|task| (task.id, task.attempts))
        .collect())
}

/// What [`drain`] ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drained {
    /// Tasks that completed.
    pub completed: usize,
    /// Tasks that failed for good.
    pub failed: usize,
    /// Failed attempts put back for a later retry (still pending, due later).
    pub retried: usize,
    /// Every task the drain ran, as it ended up, in the order they finished.
    pub tasks: Vec<Task>,
}

/// Runs every due task of `queue_name` with the handlers of `registry`, one
/// at a time, until none is due and none runs, and says how they ended.
/// Tasks a handler enqueues meanwhile into the queue run too when due; a
/// retry scheduled for later is left pending (counted in `retried`). The
/// pool runs on the client's clock, so with `#[tokio::test(start_paused =
/// true)]` and a `TokioClock` behind the store's pools the drain takes no
/// real time. Gives up with [`Error::Timeout`] after ten minutes of the
/// client's time.
pub async fn drain(queue: &OmniQ, registry: Registry, queue_name: &str) -> Result<Drained> {
    omniq_core::queue::check_name(queue_name)?;
    let storage = queue.storage().clone();
    let attempts_before = attempts_in(queue, queue_name).await?;
    let pool = queue
        .worker(registry)
        .queue(queue_name, 1)
        .poll_interval(Duration::from_millis(10))
        .retention(omniq_core::Retention::FOREVER)
        .start()?;
    let started = tokio::time::Instant::now();
    let outcome = loop {
        let finished = queue.signals().finished();
        let stats = storage.queue_stats().await?;
        let this = stats.iter().find(|s| s.queue == queue_name);
        let running = this.map_or(0, |s| s.counts.running);
        let due = this
            .and_then(|s| s.oldest_eta)
            .is_some_and(|eta| eta <= queue.now());
        if running == 0 && !due && pool.stats().in_flight == 0 {
            break Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            break Err(Error::Timeout {
                id: queue_name.to_owned(),
                waited: Duration::from_secs(600),
            });
        }
        let _ = tokio::time::timeout(Duration::from_millis(10), finished).await;
    };
    let stats = pool.stats();
    pool.shutdown(Duration::from_secs(10)).await;
    outcome?;
    // The tasks the drain ran: new ones that were attempted, and those with
    // more attempts than before.
    let mut ran: Vec<Task> = list_queue(queue, queue_name)
        .await?
        .into_iter()
        .filter(|task| task.attempts > attempts_before.get(&task.id).copied().unwrap_or(0))
        .collect();
    ran.sort_by_key(|task| (task.finished_at.unwrap_or(task.updated_at), task.id));
    Ok(Drained {
        completed: stats.succeeded as usize,
        failed: stats.failed as usize,
        retried: stats.retried as usize,
        tasks: ran,
    })
}
