//! `OmniQ`, the async client: enqueue, inspect, wait for results, cancel,
//! retry, purge, and build worker pools that share its wake-ups.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{
    Enqueued, ListQuery, NewTask, QueueStats, Result, Settings, StatusCounts, Storage, Task, TaskId,
    TaskResult,
};
use omniq_worker::{Clock, Registry, Signals, StoreClock, SystemClock, WorkerPool};
use serde::Serialize;
use time::OffsetDateTime;

use crate::backends::open_storage;

/// The handle a program holds on its queue. Cloning is cheap and shares the
/// store and the wake-ups between clients and pools of this process.
#[derive(Clone, Debug)]
pub struct OmniQ {
    storage: Arc<dyn Storage>,
    settings: Settings,
    signals: Arc<Signals>,
    /// This host's clock set to the store's, for etas and delays.
    clock: Arc<StoreClock>,
}

impl OmniQ {
    /// Opens the store `settings` describe (backend, folder, durability).
    pub async fn open(settings: Settings) -> Result<Self> {
        let storage = open_storage(&settings).await?;
        let client = Self::with_storage(storage, settings);
        client.sync_clock().await?;
        Ok(client)
    }

    /// Opens the store the `OMNIQ_*` environment variables describe.
    pub async fn from_env() -> Result<Self> {
        Self::open(Settings::from_env()?).await
    }

    /// A client over any [`Storage`] (a custom backend, `MemoryStorage` in tests).
    pub fn with_storage(storage: Arc<dyn Storage>, settings: Settings) -> Self {
        OmniQ {
            // Behind the checking layer, as every caller reaches a store.
            storage: omniq_core::Checked::wrap(storage),
            settings,
            signals: Signals::new(),
            clock: Arc::new(StoreClock::new(Arc::new(SystemClock))),
        }
    }

    /// Measures again how far this host's clock is from the store's (for a
    /// store with a clock of its own, PostgreSQL), which the etas of delayed
    /// tasks and the other times the client passes are computed in. `open`
    /// does it once; a long-lived client may call it now and then.
    pub async fn sync_clock(&self) -> Result<()> {
        self.clock.sync(&*self.storage).await.map(drop)
    }

    /// Now, by the store's clock as this client last measured it.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The store.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The settings the client was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The wake-ups shared with this client's pools.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// Enqueues a task for handler `func_path` with a typed payload and the
    /// settings' defaults; returns its id.
    pub async fn enqueue<P: Serialize + ?Sized>(&self, func_path: &str, payload: &P) -> Result<TaskId> {
        self.task(func_path, payload)?.enqueue().await
    }

    /// Starts a task with options: `.eta(..)`, `.delay(..)`, `.interval(..)`,
    /// `.max_retries(..)`, `.timeout(..)`, `.queue(..)`, `.priority(..)`,
    /// `.unique_key(..)`, then `.enqueue().await`.
    pub fn task<P: Serialize + ?Sized>(&self, func_path: &str, payload: &P) -> Result<TaskBuilder<'_>> {
        Ok(self.builder(NewTask::with_payload(func_path, payload)?))
    }

    /// A builder over a task already made.
    pub(crate) fn builder(&self, task: NewTask) -> TaskBuilder<'_> {
        TaskBuilder { client: self, task }
    }

    /// Enqueues many tasks in one call, all or none; returns their ids in
    /// order (for a task whose unique key a live task holds, that task's id;
    /// [`OmniQ::enqueue_checked`] says which).
    pub async fn enqueue_many(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        let answers = self.enqueue_checked(tasks).await?;
        Ok(answers.into_iter().map(|answer| answer.id).collect())
    }

    /// Enqueues many tasks in one call, all or none, and answers for each
    /// whether it was stored or was a duplicate of the live task holding its
    /// unique key (whose id it then gives).
    pub async fn enqueue_checked(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        let tasks = self.records(tasks)?;
        let answers = self.storage.enqueue(tasks).await?;
        if answers.iter().any(|answer| !answer.duplicate) {
            self.signals.task_enqueued();
        }
        Ok(answers)
    }

    /// The records `tasks` become, with the settings' defaults, now, each
    /// carrying the current span's trace context (feature `otel`).
    fn records(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>> {
        let now = self.now();
        tasks
            .into_iter()
            .map(|mut task| {
                omniq_worker::telemetry::inject_current(&mut task.meta);
                task.into_task(&self.settings, now)
            })
            .collect()
    }

    /// Enqueues tasks inside the program's own PostgreSQL transaction on
    /// `conn` (a `sqlx::Transaction` dereferences to one): they exist, and
    /// workers hear of them, if and only if that transaction commits. The
    /// client must be on the postgres backend, in the database `conn` is
    /// connected to; answers as [`OmniQ::enqueue_checked`].
    #[cfg(feature = "postgres")]
    pub async fn enqueue_in(
        &self,
        conn: &mut omniq_postgres::sqlx::PgConnection,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<Enqueued>> {
        // The schema is the store's, whatever the settings say: a client
        // made with `with_storage` may hold a store of another schema.
        let Some(store) = omniq_core::checked::backend::<omniq_postgres::PostgresStorage>(&*self.storage)
        else {
            return Err(omniq_core::Error::Unsupported(format!(
                "enqueue_in needs a PostgresStorage; this client's store is {}",
                self.storage.backend_name()
            )));
        };
        let tasks = self.records(tasks)?;
        store.enqueue_in(conn, tasks).await
    }

    /// The whole record of a task.
    pub async fn get(&self, id: TaskId) -> Result<Task> {
        self.storage.get(id).await
    }

    /// A task's status, result or error, attempts and finish time, now.
    pub async fn result(&self, id: TaskId) -> Result<TaskResult> {
        Ok(self.storage.get(id).await?.to_result())
    }

    /// Waits until the task is completed, failed or cancelled, then returns its
    /// result; [`omniq_core::Error::Timeout`] after `timeout` (`Duration::MAX`
    /// waits for ever). A pool of this process wakes the wait as soon as it
    /// finishes this task (and no other finish wakes it); for workers in other
    /// processes the store is checked again after 10 ms, then less often, up to
    /// once a second.
    pub async fn wait_result(&self, id: TaskId, timeout: Duration) -> Result<TaskResult> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(10);
        // Only the finish of this task wakes this wait.
        let watch = self.signals.watch(id);
        loop {
            let finished = watch.finished();
            let result = self.result(id).await?;
            if result.status.is_finished() {
                return Ok(result);
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(tokio::time::Instant::now())
            });
            if left.is_zero() {
                return Err(omniq_core::Error::Timeout {
                    id: id.to_string(),
                    waited: timeout,
                });
            }
            tokio::select! {
                _ = finished => {}
                _ = tokio::time::sleep(pause.min(left)) => pause = (pause * 2).min(Duration::from_secs(1)),
            }
        }
    }

    /// Tasks matching `query` (status filter, limit, order, paging).
    pub async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        self.storage.list(query).await
    }

    /// Cancels a task, or the whole series of an interval task; returns the ids
    /// cancelled.
    pub async fn cancel(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.storage.cancel(id, self.now()).await
    }

    /// Puts a failed task back to pending with a fresh count of attempts.
    pub async fn retry(&self, id: TaskId) -> Result<()> {
        self.storage.retry(id, self.now()).await?;
        self.signals.task_enqueued();
        Ok(())
    }

    /// Deletes finished tasks older than the settings' result TTL; returns how
    /// many.
    pub async fn purge(&self) -> Result<u64> {
        self.purge_older_than(self.settings.result_ttl).await
    }

    /// Deletes tasks that finished more than `age` ago; returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64> {
        self.storage.purge(omniq_core::earlier(self.now(), age)).await
    }

    /// How many tasks are in each status.
    pub async fn counts(&self) -> Result<StatusCounts> {
        self.storage.counts().await
    }

    /// Pauses `queue` for every process sharing the store: no pool claims
    /// its tasks (they stay pending; running ones finish) until
    /// [`OmniQ::resume`]. Pools see it at their next claim, within one poll
    /// interval.
    pub async fn pause(&self, queue: &str) -> Result<()> {
        self.storage.set_paused(queue, true).await
    }

    /// Resumes a paused queue; its pools claim again from their next poll.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        self.storage.set_paused(queue, false).await?;
        self.signals.task_enqueued();
        Ok(())
    }

    /// Every queue that holds a task or is paused: counts per status,
    /// whether it is paused, and its earliest pending eta.
    pub async fn queues(&self) -> Result<Vec<QueueStats>> {
        self.storage.queue_stats().await
    }

    /// A worker pool on this client's store that starts tasks enqueued through
    /// this client at once. Configure it (`.queue("emails", 16)` for each
    /// queue it serves, or `.concurrency(n)` for `default` alone), then
    /// `.start()` it.
    pub fn worker(&self, registry: Registry) -> WorkerPool {
        // The client is the handlers' way to enqueue follow-up work
        // (`ContextExt::queue`).
        let mut registry = registry;
        registry.data(self.clone());
        WorkerPool::new(self.storage.clone(), registry)
            .signals(self.signals.clone())
            .defaults(self.settings.clone())
    }
}

/// A task being set up; see [`OmniQ::task`].
#[must_use = "a task builder does nothing until .enqueue() is awaited"]
#[derive(Debug)]
pub struct TaskBuilder<'a> {
    client: &'a OmniQ,
    task: NewTask,
}

impl<'a> TaskBuilder<'a> {
    /// Not before `eta`.
    pub fn eta(mut self, eta: OffsetDateTime) -> Self {
        self.task = self.task.eta(eta);
        self
    }

    /// Not before `delay` from now. A delay past the latest time a store
    /// holds ([`omniq_core::limits::MAX_TIME`]) waits until that time.
    pub fn delay(self, delay: Duration) -> Self {
        let now = self.client.now();
        self.eta(omniq_core::later(now, delay))
    }

    /// Run again `interval` after each run ends.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.task = self.task.interval(interval);
        self
    }

    /// Retry up to `max_retries` times after a failure.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.task = self.task.max_retries(max_retries);
        self
    }

    /// Cancel an attempt that runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.task = self.task.timeout(timeout);
        self
    }

    /// Puts the task in `queue` (default `default`): 1 to 64 ASCII letters,
    /// digits and `-_.:`, starting with a letter or digit.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.task = self.task.queue(queue);
        self
    }

    /// Among due tasks of its queue, higher runs first (default 0).
    pub fn priority(mut self, priority: i16) -> Self {
        self.task = self.task.priority(priority);
        self
    }

    /// While a task with `key` is pending or running, enqueueing this one
    /// stores nothing and answers that task's id (see
    /// [`TaskBuilder::enqueue_checked`]). Once that task finishes, the key is
    /// free again.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.task = self.task.unique_key(key);
        self
    }

    /// Holds the unique key for `period` from now whatever becomes of the
    /// task: inside the period, a completed, failed or cancelled task with the
    /// key still makes an enqueue with it a duplicate. See
    /// [`NewTask::unique_for`] and `docs/queues.md`.
    pub fn unique_for(mut self, period: Duration) -> Self {
        self.task = self.task.unique_for(period);
        self
    }

    /// Within [`TaskBuilder::unique_for`]'s period, only these finished
    /// statuses hold the key.
    pub fn unique_finished(mut self, statuses: &[omniq_core::TaskStatus]) -> Self {
        self.task = self.task.unique_finished(statuses);
        self
    }

    /// Gives the task a concurrency key: with a per-key limit on its queue
    /// ([`crate::QueueConfig::per_key`]), the key's tasks start in enqueue
    /// order, at most that many at once.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.task = self.task.concurrency_key(key);
        self
    }

    /// Carries `value` under `name` with the task ([`omniq_core::Task::meta`]).
    pub fn meta(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.task = self.task.meta(name, value);
        self
    }

    /// The client it enqueues with.
    pub(crate) fn client(&self) -> &'a OmniQ {
        self.client
    }

    /// The task as it will be enqueued.
    pub fn into_new_task(self) -> NewTask {
        self.task
    }

    /// Enqueues the task; returns its id.
    pub async fn enqueue(self) -> Result<TaskId> {
        Ok(self.enqueue_checked().await?.id)
    }

    /// Enqueues the task inside the program's own PostgreSQL transaction
    /// (see [`OmniQ::enqueue_in`]).
    #[cfg(feature = "postgres")]
    pub async fn enqueue_in(self, conn: &mut omniq_postgres::sqlx::PgConnection) -> Result<Enqueued> {
        let mut answers = self.client.enqueue_in(conn, vec![self.task]).await?;
        answers.pop().ok_or_else(|| {
            omniq_core::Error::backend("omniq", "the store answered an enqueue of one task with nothing")
        })
    }

    /// Enqueues the task and says whether it was stored or was a duplicate
    /// of the live task holding its unique key, whose id it then gives.
    pub async fn enqueue_checked(self) -> Result<Enqueued> {
        let mut answers = self.client.enqueue_checked(vec![self.task]).await?;
        answers.pop().ok_or_else(|| {
            omniq_core::Error::backend("omniq", "the store answered an enqueue of one task with nothing")
        })
    }
}
