//! A client for programs without an async runtime, as the seed's synchronous
//! `OmniQ`: every call blocks until done. It owns a small tokio runtime that
//! also runs its workers, so it must not be used from inside async code.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{
    Enqueued, ListQuery, NewTask, QueueStats, Result, Settings, StatusCounts, Task, TaskId, TaskResult,
};
use omniq_worker::{Pool, PoolStats, Registry, ShutdownReport, WorkerPool};
use serde::Serialize;
use tokio::runtime::Runtime;

/// The blocking twin of [`crate::OmniQ`].
#[derive(Clone, Debug)]
pub struct OmniQ {
    runtime: Arc<Runtime>,
    inner: crate::OmniQ,
}

impl OmniQ {
    /// Opens the store `settings` describe.
    pub fn open(settings: Settings) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("omniq")
            .enable_all()
            .build()
            .map_err(|e| omniq_core::Error::backend("runtime", e))?;
        let inner = runtime.block_on(crate::OmniQ::open(settings))?;
        Ok(OmniQ {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    /// Opens the store the `OMNIQ_*` environment variables describe.
    pub fn from_env() -> Result<Self> {
        Self::open(Settings::from_env()?)
    }

    /// The async client inside, for code that has a runtime after all.
    pub fn as_async(&self) -> &crate::OmniQ {
        &self.inner
    }

    /// Enqueues a task with a typed payload and default options.
    pub fn enqueue<P: Serialize + ?Sized>(&self, func_path: &str, payload: &P) -> Result<TaskId> {
        self.runtime.block_on(self.inner.enqueue(func_path, payload))
    }

    /// Enqueues a task built with options (`NewTask::with_payload(..)?.eta(..)`).
    pub fn enqueue_task(&self, task: NewTask) -> Result<TaskId> {
        Ok(self.enqueue_many(vec![task])?[0])
    }

    /// Enqueues many tasks in one call, all or none.
    pub fn enqueue_many(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        self.runtime.block_on(self.inner.enqueue_many(tasks))
    }

    /// The whole record of a task.
    pub fn get(&self, id: TaskId) -> Result<Task> {
        self.runtime.block_on(self.inner.get(id))
    }

    /// A task's result now.
    pub fn result(&self, id: TaskId) -> Result<TaskResult> {
        self.runtime.block_on(self.inner.result(id))
    }

    /// Waits until the task finishes, up to `timeout`.
    pub fn wait_result(&self, id: TaskId, timeout: Duration) -> Result<TaskResult> {
        self.runtime.block_on(self.inner.wait_result(id, timeout))
    }

    /// Tasks matching `query`.
    pub fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        self.runtime.block_on(self.inner.list(query))
    }

    /// Cancels a task or its series.
    pub fn cancel(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.runtime.block_on(self.inner.cancel(id))
    }

    /// Puts a failed task back to pending.
    pub fn retry(&self, id: TaskId) -> Result<()> {
        self.runtime.block_on(self.inner.retry(id))
    }

    /// Deletes finished tasks older than the result TTL.
    pub fn purge(&self) -> Result<u64> {
        self.runtime.block_on(self.inner.purge())
    }

    /// Deletes tasks that finished more than `age` ago; returns how many.
    pub fn purge_older_than(&self, age: Duration) -> Result<u64> {
        self.runtime.block_on(self.inner.purge_older_than(age))
    }

    /// How many tasks are in each status.
    pub fn counts(&self) -> Result<StatusCounts> {
        self.runtime.block_on(self.inner.counts())
    }

    /// Enqueues many tasks, all or none, saying for each whether it was stored
    /// or was a duplicate of the live task holding its unique key.
    pub fn enqueue_checked(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        self.runtime.block_on(self.inner.enqueue_checked(tasks))
    }

    /// Pauses a queue for every process sharing the store.
    pub fn pause(&self, queue: &str) -> Result<()> {
        self.runtime.block_on(self.inner.pause(queue))
    }

    /// Resumes a paused queue.
    pub fn resume(&self, queue: &str) -> Result<()> {
        self.runtime.block_on(self.inner.resume(queue))
    }

    /// Every queue that holds a task or is paused, with its counts.
    pub fn queues(&self) -> Result<Vec<QueueStats>> {
        self.runtime.block_on(self.inner.queues())
    }

    /// Starts a worker pool on this client's runtime; `configure` sets it up
    /// (concurrency, polling, ...). It runs in the background until shut down.
    /// A configuration that would run tasks twice is refused (see
    /// [`WorkerPool::start`]).
    pub fn start_worker(
        &self,
        registry: Registry,
        configure: impl FnOnce(WorkerPool) -> WorkerPool,
    ) -> Result<Worker> {
        let _entered = self.runtime.enter();
        let pool = configure(self.inner.worker(registry)).start()?;
        Ok(Worker {
            runtime: self.runtime.clone(),
            pool: Some(pool),
        })
    }
}

/// A pool started by [`OmniQ::start_worker`].
pub struct Worker {
    runtime: Arc<Runtime>,
    pool: Option<Pool>,
}

impl Worker {
    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        self.pool.as_ref().map(Pool::stats).unwrap_or_default()
    }

    /// Stops the pool gracefully; see [`Pool::shutdown`].
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let pool = self.pool.take().expect("a worker is shut down once");
        self.runtime.block_on(pool.shutdown(deadline))
    }
}
