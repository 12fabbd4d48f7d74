//! The typed API over the client: pushing a [`Job`] (with its defaults, or
//! options from a builder), the [`JobHandle`] that waits for its typed
//! output, and the client a handler reaches from its context to enqueue
//! follow-up work.

use std::marker::PhantomData;
use std::time::Duration;

use omniq_core::{Error, Result, TaskId, TaskResult, TaskStatus};
use omniq_worker::{Job, TaskContext};
use time::OffsetDateTime;

use crate::client::{OmniQ, TaskBuilder};

/// What a finished task's result means for a typed job: its output, or the
/// error saying how it ended without one; `None` while it has not finished.
fn typed<J: Job>(result: TaskResult) -> Result<Option<J::Output>> {
    match result.status {
        TaskStatus::Completed => {
            let value = result.value.unwrap_or(serde_json::Value::Null);
            serde_json::from_value(value)
                .map(Some)
                .map_err(|error| Error::Conflict {
                    id: result.id.to_string(),
                    reason: format!("its result is not a {} output: {error}", J::NAME),
                })
        }
        TaskStatus::Failed | TaskStatus::Cancelled => Err(Error::TaskFailed {
            id: result.id.to_string(),
            status: result.status,
            message: result
                .error
                .map(|e| e.message)
                .unwrap_or_else(|| "it has no error recorded".into()),
        }),
        TaskStatus::Pending | TaskStatus::Running => Ok(None),
    }
}

impl OmniQ {
    /// Enqueues a typed job with its defaults ([`Job::QUEUE`],
    /// [`Job::PRIORITY`], ...); the handle waits for its typed output.
    pub async fn push<J: Job>(&self, job: J) -> Result<JobHandle<J>> {
        self.job(&job).push().await
    }

    /// Enqueues typed jobs with their defaults in one call (one transaction
    /// on SQLite and PostgreSQL); the handles come in the jobs' order, each
    /// saying whether its job was a duplicate of a live unique task.
    pub async fn push_many<J: Job>(&self, jobs: impl IntoIterator<Item = J>) -> Result<Vec<JobHandle<J>>> {
        let tasks = jobs
            .into_iter()
            .map(|job| job.to_task())
            .collect::<Result<Vec<_>>>()?;
        let answers = self.enqueue_checked(tasks).await?;
        Ok(answers
            .into_iter()
            .map(|answer| JobHandle::new(answer, self.clone()))
            .collect())
    }

    /// Starts a typed job with options: `.delay(..)`, `.queue(..)`,
    /// `.unique_key(..)`, ..., then `.push().await?`. A job whose payload
    /// cannot be serialized is reported by `push`, so one `?` does.
    pub fn job<J: Job>(&self, job: &J) -> JobBuilder<'_, J> {
        JobBuilder {
            task: job.to_task().map(|task| self.builder(task)),
            job: PhantomData,
        }
    }

    /// The typed output of the job `id`: `Some` once it completed, `None`
    /// while it waits or runs, [`Error::TaskFailed`] if it failed or was
    /// cancelled.
    pub async fn job_result<J: Job>(&self, id: TaskId) -> Result<Option<J::Output>> {
        typed::<J>(self.result(id).await?)
    }
}

/// A typed job being set up; see [`OmniQ::job`].
#[must_use = "a job builder does nothing until .push() is awaited"]
#[derive(Debug)]
pub struct JobBuilder<'a, J: Job> {
    /// The task, or why the job could not become one (reported by `push`).
    task: Result<TaskBuilder<'a>>,
    job: PhantomData<fn() -> J>,
}

impl<'a, J: Job> JobBuilder<'a, J> {
    /// Not before `eta`.
    pub fn eta(self, eta: OffsetDateTime) -> Self {
        self.map(|t| t.eta(eta))
    }

    /// Not before `delay` from now.
    pub fn delay(self, delay: Duration) -> Self {
        self.map(|t| t.delay(delay))
    }

    /// Run again `interval` after each run ends.
    pub fn interval(self, interval: Duration) -> Self {
        self.map(|t| t.interval(interval))
    }

    /// Retry up to `max_retries` times after a failure.
    pub fn max_retries(self, max_retries: u32) -> Self {
        self.map(|t| t.max_retries(max_retries))
    }

    /// Cancel an attempt that runs longer than `timeout`.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|t| t.timeout(timeout))
    }

    /// Into `queue` instead of [`Job::QUEUE`].
    pub fn queue(self, queue: impl Into<String>) -> Self {
        self.map(|t| t.queue(queue))
    }

    /// At `priority` instead of [`Job::PRIORITY`].
    pub fn priority(self, priority: i16) -> Self {
        self.map(|t| t.priority(priority))
    }

    /// Stored only if no pending or running task holds `key`; else the
    /// handle is that task's.
    pub fn unique_key(self, key: impl Into<String>) -> Self {
        self.map(|t| t.unique_key(key))
    }

    /// Holds the unique key for `period` from now, whatever becomes of the
    /// task ([`TaskBuilder::unique_for`]).
    pub fn unique_for(self, period: Duration) -> Self {
        self.map(|t| t.unique_for(period))
    }

    /// Within the period, only these finished statuses hold the key
    /// ([`TaskBuilder::unique_finished`]).
    pub fn unique_finished(self, statuses: &[omniq_core::TaskStatus]) -> Self {
        self.map(|t| t.unique_finished(statuses))
    }

    /// With concurrency key `key` instead of [`Job::concurrency_key`]'s
    /// ([`TaskBuilder::concurrency_key`]).
    pub fn concurrency_key(self, key: impl Into<String>) -> Self {
        self.map(|t| t.concurrency_key(key))
    }

    /// Carries `value` under `name` with the task ([`TaskBuilder::meta`]).
    pub fn meta(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.map(|t| t.meta(name, value))
    }

    fn map(self, change: impl FnOnce(TaskBuilder<'a>) -> TaskBuilder<'a>) -> Self {
        JobBuilder {
            task: self.task.map(change),
            job: PhantomData,
        }
    }

    /// Enqueues the job. For a job with a unique key held by a live task,
    /// nothing is stored and the handle is that task's, with
    /// [`JobHandle::duplicate`] true.
    pub async fn push(self) -> Result<JobHandle<J>> {
        let task = self.task?;
        let client = task.client().clone();
        Ok(JobHandle::new(task.enqueue_checked().await?, client))
    }

    /// Enqueues the job inside the program's own PostgreSQL transaction: it
    /// exists if and only if that transaction commits (see
    /// [`OmniQ::enqueue_in`]).
    #[cfg(feature = "postgres")]
    pub async fn push_in(self, conn: &mut omniq_postgres::sqlx::PgConnection) -> Result<JobHandle<J>> {
        let task = self.task?;
        let client = task.client().clone();
        Ok(JobHandle::new(task.enqueue_in(conn).await?, client))
    }

    /// The task the job becomes, as it will be enqueued (its queue, priority
    /// and options), for a program that stores it its own way.
    pub fn to_new_task(self) -> Result<omniq_core::NewTask> {
        Ok(self.task?.into_new_task())
    }
}

/// An enqueued job, to wait for its typed output.
#[derive(Debug)]
pub struct JobHandle<J: Job> {
    id: TaskId,
    duplicate: bool,
    client: OmniQ,
    job: PhantomData<fn() -> J>,
}

impl<J: Job> Clone for JobHandle<J> {
    fn clone(&self) -> Self {
        JobHandle {
            id: self.id,
            duplicate: self.duplicate,
            client: self.client.clone(),
            job: PhantomData,
        }
    }
}

impl<J: Job> JobHandle<J> {
    fn new(answer: omniq_core::Enqueued, client: OmniQ) -> Self {
        JobHandle {
            id: answer.id,
            duplicate: answer.duplicate,
            client,
            job: PhantomData,
        }
    }

    /// The task's id: for a duplicate, the id of the live task that holds
    /// the unique key.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Whether the push stored nothing because a live task (pending or
    /// running) already held the job's unique key; the handle then follows
    /// that task.
    pub fn duplicate(&self) -> bool {
        self.duplicate
    }

    /// Waits until the job finishes (see [`OmniQ::wait_result`]) and gives its
    /// typed output; [`Error::TaskFailed`] if it failed or was cancelled,
    /// [`Error::Timeout`] after `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<J::Output> {
        let result = self.client.wait_result(self.id, timeout).await?;
        let id = result.id;
        typed::<J>(result)?.ok_or_else(|| Error::Timeout {
            id: id.to_string(),
            waited: timeout,
        })
    }

    /// The typed output now: `None` while the job waits or runs.
    pub async fn result(&self) -> Result<Option<J::Output>> {
        self.client.job_result::<J>(self.id).await
    }
}

/// What a handler reaches through its context beyond the worker's own:
/// the client of the pool it runs in, to enqueue follow-up work.
pub trait ContextExt {
    /// The client whose pool runs this task (`OmniQ::worker`), to enqueue
    /// follow-up tasks or jobs; [`Error::Unsupported`] for a pool started
    /// without a client. The error works with `?` in handlers returning
    /// `HandlerError`, `anyhow::Error` or a boxed error alike.
    fn queue(&self) -> Result<&OmniQ>;
}

impl ContextExt for TaskContext {
    fn queue(&self) -> Result<&OmniQ> {
        self.data::<OmniQ>().ok_or_else(|| {
            Error::Unsupported(
                "this pool was not started from an OmniQ client (OmniQ::worker), so its handlers have none"
                    .into(),
            )
        })
    }
}
