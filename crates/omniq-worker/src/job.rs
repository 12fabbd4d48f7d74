//! Typed jobs: a payload type that names its handler, carries its defaults
//! (queue, priority, retries, timeout), and runs itself, so the compiler links
//! what is enqueued with what runs it.

use std::future::Future;
use std::time::Duration;

use omniq_core::{NewTask, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::handler::{IntoHandlerError, Registry, TaskContext};

/// A job: its fields are the task's payload, [`Job::NAME`] the handler it is
/// stored under (its `func_path`), and [`Job::run`] the handler.
///
/// ```
/// use omniq_worker::{HandlerError, Job, Registry, TaskContext};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
///
/// impl Job for SendEmail {
///     const NAME: &'static str = "email.send";
///     const QUEUE: &'static str = "emails";
///     const MAX_RETRIES: Option<u32> = Some(5);
///     type Output = String;
///     type Error = HandlerError;
///
///     async fn run(self, _ctx: TaskContext) -> Result<String, HandlerError> {
///         Ok(format!("sent to {}", self.to))
///     }
/// }
///
/// let mut registry = Registry::new();
/// registry.job::<SendEmail>();
/// assert!(registry.contains("email.send"));
/// ```
///
/// A typed job is a task like any other: a program in another language, or
/// the string API, enqueues one by its name and a payload of its fields.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The handler name the job is stored under; unique among a registry's
    /// handlers.
    const NAME: &'static str;
    /// The queue a job goes to unless its enqueue says otherwise.
    const QUEUE: &'static str = omniq_core::DEFAULT_QUEUE;
    /// Its priority unless its enqueue says otherwise.
    const PRIORITY: i16 = 0;
    /// Its retries unless its enqueue says otherwise; `None`: the settings'
    /// default (`OMNIQ_DEFAULT_MAX_RETRIES`).
    const MAX_RETRIES: Option<u32> = None;
    /// The time limit of one attempt unless its enqueue says otherwise;
    /// `None`: the settings' default.
    const TIMEOUT: Option<Duration> = None;
    /// What a run gives back, stored as the task's result.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What a failed run returns: [`HandlerError`](crate::HandlerError) (retry or not, and when),
    /// `anyhow::Error`, or `Box<dyn Error + Send + Sync>`, each working with `?`.
    type Error: IntoHandlerError;

    /// The concurrency key of this job, from its fields (a customer's id,
    /// say): with a per-key limit on its queue, jobs with one key start in
    /// enqueue order, at most that many at once. `None` (the default): no key.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// Runs one attempt.
    fn run(self, ctx: TaskContext) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// The new task that enqueues this job, with the job's defaults.
    fn to_task(&self) -> Result<NewTask> {
        let mut task = NewTask::with_payload(Self::NAME, self)?
            .queue(Self::QUEUE)
            .priority(Self::PRIORITY);
        if let Some(retries) = Self::MAX_RETRIES {
            task = task.max_retries(retries);
        }
        if let Some(timeout) = Self::TIMEOUT {
            task = task.timeout(timeout);
        }
        if let Some(key) = self.concurrency_key() {
            task = task.concurrency_key(key);
        }
        Ok(task)
    }
}

impl Registry {
    /// Registers the typed job `J` under [`Job::NAME`]: the payload is
    /// deserialized as `J` (a payload of another shape fails the task, naming
    /// the job) and [`Job::run`] runs it.
    pub fn job<J: Job>(&mut self) -> &mut Self {
        self.note_job_queue(J::NAME, J::QUEUE);
        self.register_any_error(J::NAME, |job: J, ctx: TaskContext| job.run(ctx))
    }
}
