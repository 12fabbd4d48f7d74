//! Handlers: typed async functions registered under a name, the shared state
//! registered beside them, what they receive (`TaskContext`) and how they say
//! what went wrong (`HandlerError`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use omniq_core::{LeaseRef, LeaseToken, Progress, Storage, Task, TaskId};

use crate::clock::Clock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a running handler knows about its task.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The task's id.
    pub id: TaskId,
    /// The handler name the task was enqueued for.
    pub func_path: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The most retries the task allows (`max_retries + 1` attempts in all).
    pub max_retries: u32,
    /// The task's queue.
    pub queue: String,
    /// The task's priority.
    pub priority: i16,
    /// The worker running the attempt, as recorded in its lease.
    pub worker_id: String,
    /// When the attempt's timeout stops it, if the task has one.
    pub deadline: Option<tokio::time::Instant>,
    cancel: CancellationToken,
    data: Arc<DataMap>,
    /// Where progress reports go: the store, this claim, and the pool's clock.
    reports: Reporter,
}

/// What a context needs to record progress.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) token: LeaseToken,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter").field("token", &self.token).finish()
    }
}

/// Shared state registered with [`Registry::data`], by type.
pub(crate) type DataMap = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

impl TaskContext {
    /// Cancelled when this attempt should stop: its timeout passed, its lease
    /// was lost (the task was cancelled, or another worker took it over), or
    /// the pool is shutting down. Long handlers can select on it to stop
    /// cleanly; the pool also drops the handler's future at that point.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether this attempt has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token cancelled when this attempt should stop (see
    /// [`TaskContext::cancelled`]), to hand to code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Records how far this attempt has got: `fraction` from 0 to 1 and what
    /// it is doing. It is stored on the task while it runs (`omniq show`, the
    /// dashboard) and dropped when the task stops running. `Ok(false)` when
    /// the claim is no longer this attempt's; an out-of-range fraction or a
    /// message past [`omniq_core::task::MAX_PROGRESS_MESSAGE`] characters is
    /// an error.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) -> omniq_core::Result<bool> {
        let report = Progress::new(fraction, message, self.reports.clock.now())?;
        let lease = LeaseRef {
            id: self.id,
            token: self.reports.token,
        };
        self.reports.storage.set_progress(lease, report).await
    }

    /// The shared state of type `T` registered with [`Registry::data`] (a
    /// database pool, an HTTP client, configuration); `None` if none was.
    pub fn data<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.data.get(&TypeId::of::<T>())?.downcast_ref::<T>()
    }

    /// Whether this is the last attempt the task allows.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt > self.max_retries
    }

    /// A context for calling a handler directly, outside a pool, as a test
    /// does: the task's fields, attempt 1 (or the task's next), worker id
    /// `test`, the shared state of `registry` ([`Registry::data`]), a
    /// cancellation token nobody fires, and progress reports that go to
    /// `storage` but land nowhere, since no worker holds the task's lease
    /// ([`TaskContext::progress`] answers `Ok(false)`).
    pub fn standalone(task: &Task, storage: Arc<dyn Storage>, registry: &Registry) -> Self {
        let reports = Reporter {
            storage,
            token: LeaseToken::new(),
            clock: Arc::new(crate::clock::SystemClock),
        };
        Self::new(
            task,
            task.attempts + 1,
            "test",
            CancellationToken::new(),
            registry.data_map(),
            reports,
        )
    }

    pub(crate) fn new(
        task: &Task,
        attempt: u32,
        worker_id: &str,
        cancel: CancellationToken,
        data: Arc<DataMap>,
        reports: Reporter,
    ) -> Self {
        TaskContext {
            id: task.id,
            func_path: task.func_path.clone(),
            attempt,
            max_retries: task.max_retries,
            queue: task.queue.clone(),
            priority: task.priority,
            worker_id: worker_id.to_owned(),
            deadline: task
                .timeout
                .and_then(|limit| tokio::time::Instant::now().checked_add(limit)),
            cancel,
            data,
            reports,
        }
    }
}

/// What a failed handler wants done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retry after the pool's backoff, if retries are left (the default).
    Backoff,
    /// Retry after this delay, if retries are left.
    After(Duration),
    /// Do not retry: the task fails now.
    Never,
    /// Not a failure: run the task again after this delay, without spending
    /// an attempt ([`HandlerError::snooze`]).
    Snooze(Duration),
}

/// A handler's error: a message, a short kind, and what to do next.
///
/// Any `std::error::Error` converts into one with `?`, as a retryable error of
/// kind `handler`; use [`HandlerError::fatal`] for errors another attempt cannot
/// fix and [`HandlerError::retry_after`] to choose the delay.
pub struct HandlerError {
    /// A short machine-readable kind, stored as the error's `type`.
    pub kind: String,
    /// The message stored with the task.
    pub message: String,
    /// What to do next.
    pub retry: Retry,
    /// The error's causes, outermost first (its `source()` chain), kept in
    /// the task's attempt history.
    pub causes: Vec<String>,
}

/// The `source()` chain of `error`, outermost first.
fn causes_of(error: &dyn std::error::Error) -> Vec<String> {
    let mut causes = Vec::new();
    let mut cause = error.source();
    while let Some(next) = cause {
        causes.push(next.to_string());
        cause = next.source();
    }
    causes
}

impl HandlerError {
    /// A retryable error: retried after the pool's backoff while retries are left.
    pub fn retry(message: impl fmt::Display) -> Self {
        HandlerError {
            kind: "handler".into(),
            message: message.to_string(),
            retry: Retry::Backoff,
            causes: Vec::new(),
        }
    }

    /// A retryable error, retried after `delay` (a rate limit's `Retry-After`, say).
    pub fn retry_after(message: impl fmt::Display, delay: Duration) -> Self {
        HandlerError {
            retry: Retry::After(delay),
            ..HandlerError::retry(message)
        }
    }

    /// "Not now": the task goes back to pending, due after `delay`, and the
    /// attempt is not counted (the task's `snoozes` is). For a handler that
    /// finds its resource busy or a rate limit reached; nothing is added to
    /// the task's error history.
    pub fn snooze(delay: Duration) -> Self {
        HandlerError {
            kind: "snooze".into(),
            message: format!("snoozed for {delay:?}"),
            retry: Retry::Snooze(delay),
            causes: Vec::new(),
        }
    }

    /// An error another attempt cannot fix: the task fails now.
    pub fn fatal(message: impl fmt::Display) -> Self {
        HandlerError {
            retry: Retry::Never,
            ..HandlerError::retry(message)
        }
    }

    /// Sets the kind stored as the error's `type`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Sets the chain of causes kept in the attempt history.
    pub fn causes(mut self, causes: Vec<String>) -> Self {
        self.causes = causes;
        self
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HandlerError({}: {}, {:?})",
            self.kind, self.message, self.retry
        )
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let causes = causes_of(&error);
        HandlerError::retry(error).causes(causes)
    }
}

/// The error types a handler may return: [`HandlerError`] (which any
/// `std::error::Error` converts into with `?`), `anyhow::Error`, and
/// `Box<dyn Error + Send + Sync>`. The last two are retryable errors of kind
/// `handler`, their message the error with its causes.
pub trait IntoHandlerError: Send + 'static {
    /// The error as the pool records it.
    fn into_handler_error(self) -> HandlerError;
}

impl IntoHandlerError for HandlerError {
    fn into_handler_error(self) -> HandlerError {
        self
    }
}

impl IntoHandlerError for anyhow::Error {
    fn into_handler_error(self) -> HandlerError {
        // `{:#}` keeps the chain of causes on one line; the history also
        // keeps each cause apart.
        let causes = self.chain().skip(1).map(|cause| cause.to_string()).collect();
        HandlerError::retry(format!("{self:#}")).causes(causes)
    }
}

impl IntoHandlerError for Box<dyn std::error::Error + Send + Sync> {
    fn into_handler_error(self) -> HandlerError {
        let causes = causes_of(&*self);
        let mut message = self.to_string();
        for cause in &causes {
            message.push_str(&format!(": {cause}"));
        }
        HandlerError::retry(message).causes(causes)
    }
}

/// Why a call to a handler failed, as the pool sees it.
pub(crate) enum Failure {
    /// The stored payload does not deserialize into the handler's type.
    BadPayload(String),
    /// The handler returned an error.
    Handler(HandlerError),
}

type Erased = dyn Fn(Value, TaskContext) -> BoxFuture<'static, Result<Value, Failure>> + Send + Sync;

/// Handlers by name, and the shared state their context offers. Cloning is
/// cheap; a pool takes a clone when it starts.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<Erased>>,
    data: DataMap,
    /// The queue each typed job is enqueued to ([`crate::Job::QUEUE`]), so a
    /// pool can say which of its jobs it will never run.
    job_queues: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("handlers", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` under `func_path`. It receives the task's payload
    /// deserialized as `P` (see `omniq_core::payload`) and returns a serializable
    /// result. A later registration under the same name replaces this one.
    ///
    /// ```
    /// use omniq_worker::{HandlerError, Registry};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Email { to: String }
    ///
    /// let mut registry = Registry::new();
    /// registry.register("email.send", |email: Email| async move {
    ///     if email.to.is_empty() {
    ///         return Err(HandlerError::fatal("no recipient"));
    ///     }
    ///     Ok(format!("sent to {}", email.to))
    /// });
    /// ```
    pub fn register<P, R, F, Fut>(&mut self, func_path: impl Into<String>, handler: F) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.register_with_context(func_path, move |payload: P, _ctx: TaskContext| handler(payload))
    }

    /// Like [`Registry::register`], for handlers that also take the
    /// [`TaskContext`] (attempt number, cancellation).
    pub fn register_with_context<P, R, F, Fut>(
        &mut self,
        func_path: impl Into<String>,
        handler: F,
    ) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(P, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.register_any_error(func_path, handler)
    }

    /// Like [`Registry::register_with_context`], for handlers whose error
    /// type is any [`IntoHandlerError`]: `anyhow::Error` or
    /// `Box<dyn Error + Send + Sync>` as well as [`HandlerError`]. (The
    /// plain registrations fix the error type to `HandlerError`, so a
    /// closure's `?` and `Ok(..)` need no annotation.)
    ///
    /// ```
    /// use omniq_worker::{Registry, TaskContext};
    ///
    /// let mut registry = Registry::new();
    /// registry.register_any_error("parse", |text: String, _ctx: TaskContext| async move {
    ///     let n: i64 = text.parse()?;
    ///     Ok::<_, anyhow::Error>(n)
    /// });
    /// ```
    pub fn register_any_error<P, R, E, F, Fut>(
        &mut self,
        func_path: impl Into<String>,
        handler: F,
    ) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: IntoHandlerError,
        F: Fn(P, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        let func_path = func_path.into();
        let name = func_path.clone();
        let erased = move |payload: Value, ctx: TaskContext| -> BoxFuture<'static, Result<Value, Failure>> {
            // A task without arguments stores `{}`; a handler taking `()` or an
            // `Option` expects `null`. Either reading of "nothing" is accepted.
            let empty = payload.as_object().is_some_and(|o| o.is_empty());
            let parsed = serde_json::from_value::<P>(payload).or_else(|error| {
                if empty {
                    serde_json::from_value::<P>(Value::Null).map_err(|_| error)
                } else {
                    Err(error)
                }
            });
            let payload = match parsed {
                Ok(payload) => payload,
                Err(error) => {
                    let message = format!("the payload does not match the type of handler {name:?}: {error}");
                    return Box::pin(async move { Err(Failure::BadPayload(message)) });
                }
            };
            let call = handler(payload, ctx);
            Box::pin(async move {
                let result = call
                    .await
                    .map_err(|error| Failure::Handler(error.into_handler_error()))?;
                serde_json::to_value(result).map_err(|error| {
                    Failure::Handler(
                        HandlerError::fatal(format!(
                            "the handler's result cannot be stored as JSON: {error}"
                        ))
                        .kind("bad_result"),
                    )
                })
            })
        };
        self.handlers.insert(func_path, Arc::new(erased));
        self
    }

    /// Registers shared state that every handler reaches with
    /// [`TaskContext::data`]: one value per type, registered once (a later
    /// value of the same type replaces it). Values shared with the rest of
    /// the program are registered as handles (`Arc<T>`, a database pool).
    pub fn data<T: Send + Sync + 'static>(&mut self, value: T) -> &mut Self {
        self.data.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The shared state, for the contexts of one pool.
    pub(crate) fn data_map(&self) -> Arc<DataMap> {
        Arc::new(self.data.clone())
    }

    /// Whether a handler is registered under `func_path`.
    pub fn contains(&self, func_path: &str) -> bool {
        self.handlers.contains_key(func_path)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Notes the queue typed job `name` is enqueued to.
    pub(crate) fn note_job_queue(&mut self, name: &str, queue: &str) {
        self.job_queues.insert(name.to_owned(), queue.to_owned());
    }

    /// Each typed job's name and queue, by name.
    pub(crate) fn job_queues(&self) -> impl Iterator<Item = (&str, &str)> {
        self.job_queues
            .iter()
            .map(|(name, queue)| (name.as_str(), queue.as_str()))
    }

    pub(crate) fn get(&self, func_path: &str) -> Option<Arc<Erased>> {
        self.handlers.get(func_path).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anyhow_and_boxed_errors_keep_their_causes() {
        let io = std::io::Error::other("disk gone");
        let error = anyhow::Error::new(io).context("writing the report");
        let recorded = error.into_handler_error();
        assert_eq!(recorded.message, "writing the report: disk gone");
        assert_eq!(
            (recorded.kind.as_str(), recorded.retry),
            ("handler", Retry::Backoff)
        );

        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("upload failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Outer(std::io::Error::other("connection reset")));
        assert_eq!(
            boxed.into_handler_error().message,
            "upload failed: connection reset"
        );
    }
}
