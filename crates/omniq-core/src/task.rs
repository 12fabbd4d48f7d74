//! The task model: ids, statuses and their allowed moves, error and result records,
//! and the state changes every backend applies through the same code.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::limits::{self, later};

/// A task's id: a UUID v7, so ids sort by creation time.
///
/// Ids coming from users are parsed with [`TaskId::parse`], which accepts only the
/// canonical hyphenated UUID text; nothing else can reach a file path or a query.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(Uuid);

impl TaskId {
    /// A new id. Ids made in one process increase strictly, so their order is the
    /// order in which they were made.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }

    /// Parses an id given by a user. Only the canonical form
    /// (`0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f`, any case) is accepted.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidId {
            id: text.to_string(),
            reason: reason.to_string(),
        };
        if text.len() != 36 {
            return Err(invalid("expected 36 characters of hyphenated UUID text"));
        }
        let uuid = Uuid::try_parse(text).map_err(|e| invalid(&e.to_string()))?;
        Ok(TaskId(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        TaskId(uuid)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0.hyphenated())
    }
}

impl FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TaskId::parse(s)
    }
}

impl TryFrom<String> for TaskId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        TaskId::parse(&s)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.to_string()
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for its `eta`, then for a worker.
    Pending,
    /// Claimed by a worker, which holds a lease on it.
    Running,
    /// Finished successfully; final.
    Completed,
    /// Failed for good (no retries left, or a non-retryable error); can be retried by hand.
    Failed,
    /// Cancelled by a user; final.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The lowercase name used in records, settings and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the state machine allows moving from `self` to `to`.
    ///
    /// This is the one place the allowed moves are written down:
    /// pending→running|cancelled; running→completed|failed|pending|cancelled;
    /// failed→pending. Completed and cancelled are final.
    pub fn can_move_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Pending)
                | (Running, Cancelled)
                | (Failed, Pending)
        )
    }

    /// Whether the task is done running: completed, failed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid_config(
                    "status",
                    format!(
                        "{s:?} is not a status; expected one of pending, running, completed, failed, cancelled"
                    ),
                )
            })
    }
}

/// What went wrong in one attempt of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// A short machine-readable kind: `handler`, `timeout`, `panic`,
    /// `unknown_handler`, `bad_payload`, `lease_expired`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The human-readable message.
    pub message: String,
    /// The attempt (1-based) that failed.
    pub attempt: u32,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl TaskError {
    /// A new error record.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, attempt: u32, retryable: bool) -> Self {
        TaskError {
            kind: kind.into(),
            message: message.into(),
            attempt,
            retryable,
        }
    }
}

/// A random token naming one claim of a task. Finishing or renewing needs the
/// token of the current claim, so a worker that lost its lease cannot overwrite
/// the state written by the task's next owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken(pub Uuid);

impl LeaseToken {
    /// A new, unique token.
    pub fn new() -> Self {
        LeaseToken(Uuid::now_v7())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The claim a worker holds on a running task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker that claimed the task.
    pub worker_id: String,
    /// The token of this claim; see [`LeaseToken`].
    pub token: LeaseToken,
    /// When the lease runs out unless renewed. After that, any live worker may
    /// hand the task back to pending ([`crate::Storage::requeue_expired`]).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A stored task: everything OmniQ knows about one unit of work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task's id (UUID v7).
    pub id: TaskId,
    /// The name of the registered handler that runs it.
    pub func_path: String,
    /// Positional arguments (a JSON array).
    pub args: Vec<Value>,
    /// Keyword arguments (a JSON object).
    pub kwargs: Map<String, Value>,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// When the task becomes due: never claimed before. Defaults to the enqueue
    /// time; a retry moves it to the time of the next attempt.
    #[serde(with = "time::serde::rfc3339")]
    pub eta: OffsetDateTime,
    /// For a repeating task, the time between the end of one run and the next.
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How many times a failed attempt is retried: up to `max_retries + 1` runs.
    pub max_retries: u32,
    /// How long one attempt may run before it is cancelled.
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How many attempts have started.
    pub attempts: u32,
    /// When the task was enqueued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the record last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When the latest attempt started.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the task reached completed, failed or cancelled.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The error of the latest failed attempt (kept while a retry waits).
    #[serde(default)]
    pub error: Option<TaskError>,
    /// The handler's result, once completed.
    #[serde(default)]
    pub result: Option<Value>,
    /// The current claim, while running.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// For interval tasks, the id of the series' first occurrence: every
    /// occurrence of one series shares it, so any of them can cancel the series.
    #[serde(default)]
    pub series: Option<TaskId>,
}

/// What a user reads back about a task's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its status now.
    pub status: TaskStatus,
    /// The handler's return value, when completed.
    pub value: Option<Value>,
    /// The latest error, when the task failed (or failed an attempt and waits to retry).
    pub error: Option<TaskError>,
    /// How many attempts have started.
    pub attempts: u32,
    /// When the task finished, if it has.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl TaskResult {
    /// The result value as `T`: `Ok(None)` while the task has no result (not
    /// completed), an error if the stored value does not fit `T`.
    pub fn value_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.value
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    }
}

/// How a worker ends its claim on a task; see [`crate::Storage::finish`].
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The handler succeeded with this result.
    Complete {
        /// The handler's return value.
        result: Value,
    },
    /// The attempt failed and should run again at `at`. If no retries are left,
    /// the storage records a final failure instead.
    Retry {
        /// What went wrong.
        error: TaskError,
        /// When the next attempt may start.
        at: OffsetDateTime,
    },
    /// The attempt failed and the task must not run again.
    Fail {
        /// What went wrong.
        error: TaskError,
    },
    /// The worker gives the task back unrun (graceful shutdown): it goes back to
    /// pending and the attempt is not counted.
    HandBack,
}

impl Outcome {
    /// This outcome, or a non-retryable `bad_result` failure of `attempt` when
    /// its result nests deeper than a store can read back
    /// ([`limits::MAX_JSON_DEPTH`]). Backends that finish in their own code
    /// (not through [`Task::finish`]) call [`Outcome::result_fits`] first.
    pub fn checked(self, attempt: u32) -> Outcome {
        match self {
            Outcome::Complete { result } => match limits::check_depth("result", [&result]) {
                Ok(()) => Outcome::Complete { result },
                Err(error) => Outcome::Fail {
                    error: TaskError::new("bad_result", error.to_string(), attempt, false),
                },
            },
            other => other,
        }
    }

    /// Whether this outcome is stored as it is by [`Task::finish`]: anything
    /// but a result nested too deeply.
    pub fn result_fits(&self) -> bool {
        match self {
            Outcome::Complete { result } => limits::check_depth("result", [result]).is_ok(),
            _ => true,
        }
    }
}

impl Task {
    /// Whether the task may be claimed at `now`.
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        self.status == TaskStatus::Pending && self.eta <= now
    }

    /// Whether `token` names the current claim of this running task.
    pub fn holds_lease(&self, token: LeaseToken) -> bool {
        self.status == TaskStatus::Running && self.lease.as_ref().is_some_and(|lease| lease.token == token)
    }

    /// Whether the task is running on a lease that ran out before `now`.
    pub fn lease_expired(&self, now: OffsetDateTime) -> bool {
        self.status == TaskStatus::Running && self.lease.as_ref().is_none_or(|lease| lease.expires_at <= now)
    }

    /// The value a typed handler deserializes; see [`crate::payload`].
    pub fn payload(&self) -> Value {
        crate::payload::join(&self.args, &self.kwargs)
    }

    /// The result record of this task.
    pub fn to_result(&self) -> TaskResult {
        TaskResult {
            id: self.id,
            status: self.status,
            value: self.result.clone(),
            error: self.error.clone(),
            attempts: self.attempts,
            finished_at: self.finished_at,
        }
    }

    /// Moves to `to` if the state machine allows it, else fails with
    /// [`Error::Conflict`]. Every status change goes through here.
    pub fn set_status(&mut self, to: TaskStatus, now: OffsetDateTime) -> Result<()> {
        if !self.status.can_move_to(to) {
            return Err(Error::conflict(
                self.id,
                format!("cannot move from {} to {}", self.status, to),
            ));
        }
        self.status = to;
        self.updated_at = now;
        Ok(())
    }

    /// Claims this pending task for `worker_id` until `now + lease_for`: one more
    /// attempt starts. The caller has checked that the task is due.
    pub fn claim(&mut self, worker_id: &str, lease_for: Duration, now: OffsetDateTime) -> Result<()> {
        self.set_status(TaskStatus::Running, now)?;
        self.attempts += 1;
        self.started_at = Some(now);
        self.lease = Some(Lease {
            worker_id: worker_id.to_string(),
            token: LeaseToken::new(),
            expires_at: later(now, lease_for),
        });
        Ok(())
    }

    /// Extends the lease of this running task to `now + lease_for`.
    pub fn renew(&mut self, lease_for: Duration, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let lease = self
            .lease
            .as_mut()
            .filter(|_| self.status == TaskStatus::Running)?;
        lease.expires_at = later(now, lease_for);
        Some(lease.expires_at)
    }

    /// Applies a worker's outcome to this running task, whose lease the caller
    /// has checked. Returns the next occurrence of an interval task, which the
    /// caller must store in the same atomic step.
    ///
    /// A result nested deeper than a store can read back fails the attempt for
    /// good (`bad_result`) instead of being stored, and a retry time past what a
    /// store holds waits until the latest time it does.
    pub fn finish(&mut self, outcome: Outcome, now: OffsetDateTime) -> Result<Option<Task>> {
        let outcome = match outcome.checked(self.attempts) {
            // max_retries = N allows N + 1 attempts; past that a retry is a final failure.
            Outcome::Retry { error, .. } if self.attempts > self.max_retries => Outcome::Fail { error },
            other => other,
        };
        match outcome {
            Outcome::Complete { result } => {
                self.set_status(TaskStatus::Completed, now)?;
                self.result = Some(result);
                self.error = None;
                self.end(now);
                Ok(self.next_occurrence(now))
            }
            Outcome::Fail { error } => {
                self.set_status(TaskStatus::Failed, now)?;
                self.error = Some(error);
                self.end(now);
                Ok(self.next_occurrence(now))
            }
            Outcome::Retry { error, at } => {
                self.set_status(TaskStatus::Pending, now)?;
                self.error = Some(error);
                self.eta = at.clamp(limits::MIN_TIME, limits::MAX_TIME);
                self.lease = None;
                Ok(None)
            }
            Outcome::HandBack => {
                self.set_status(TaskStatus::Pending, now)?;
                self.attempts = self.attempts.saturating_sub(1);
                self.lease = None;
                Ok(None)
            }
        }
    }

    /// Hands back a running task whose lease ran out: its worker is presumed
    /// dead. The lost attempt counts; with retries left the task is pending and
    /// due at once, else it fails with a `lease_expired` error (and an interval
    /// task schedules its next occurrence, returned as by [`Task::finish`]).
    pub fn expire_lease(&mut self, now: OffsetDateTime) -> Result<Option<Task>> {
        let worker = self
            .lease
            .as_ref()
            .map(|lease| lease.worker_id.clone())
            .unwrap_or_default();
        let error = TaskError::new(
            "lease_expired",
            format!("worker {worker:?} stopped renewing its lease (presumed dead)"),
            self.attempts,
            true,
        );
        self.finish(Outcome::Retry { error, at: now }, now)
    }

    /// Cancels this pending or running task. A running task's worker loses its
    /// lease: its finish and renewals are refused from now on.
    pub fn cancel(&mut self, now: OffsetDateTime) -> Result<()> {
        self.set_status(TaskStatus::Cancelled, now)?;
        self.end(now);
        Ok(())
    }

    /// Puts this failed task back to pending, due at `now`, with a fresh count
    /// of attempts. An interval occurrence already scheduled its successor when
    /// it failed, so the retried one is detached from its series: it runs once,
    /// schedules nothing, and cancelling the series leaves it alone. A series thus
    /// has at most one pending or running occurrence at any time.
    pub fn retry(&mut self, now: OffsetDateTime) -> Result<()> {
        self.set_status(TaskStatus::Pending, now)?;
        self.attempts = 0;
        self.eta = now;
        self.finished_at = None;
        self.interval = None;
        self.series = None;
        Ok(())
    }

    fn end(&mut self, now: OffsetDateTime) {
        self.finished_at = Some(now);
        self.lease = None;
    }

    fn next_occurrence(&self, now: OffsetDateTime) -> Option<Task> {
        let interval = self.interval?;
        Some(Task {
            id: TaskId::new(),
            func_path: self.func_path.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            status: TaskStatus::Pending,
            eta: later(now, interval),
            interval: self.interval,
            max_retries: self.max_retries,
            timeout: self.timeout,
            attempts: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
            lease: None,
            series: Some(self.series.unwrap_or(self.id)),
        })
    }
}

/// Which tasks [`crate::Storage::cancel`] must cancel for a given id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelScope {
    /// Just this task.
    Task(TaskId),
    /// Every pending or running occurrence of this interval series.
    Series(TaskId),
}

impl Task {
    /// What cancelling this task by its id must cancel.
    pub fn cancel_scope(&self) -> CancelScope {
        match self.series {
            Some(series) => CancelScope::Series(series),
            None => CancelScope::Task(self.id),
        }
    }
}

impl CancelScope {
    /// What [`crate::Storage::cancel`] of `id` must cancel, given the task
    /// stored under `id`, if any. With none stored, `id` may still name a
    /// series whose first occurrence was purged: the series' id is its first
    /// occurrence's, so the live occurrences sharing it are the scope.
    pub fn of(id: TaskId, target: Option<&Task>) -> CancelScope {
        match target {
            Some(task) => task.cancel_scope(),
            None => CancelScope::Series(id),
        }
    }
}

/// Applies [`crate::Storage::cancel`] of `id`: cancels each task of `scope`
/// that is still pending or running (the backend gives every task of the scope,
/// or only those) and returns them changed, for the backend to write. Nothing
/// left to cancel is an [`Error::Conflict`] when `target` (the task stored
/// under `id`) exists, else [`Error::NotFound`].
pub fn cancel_in_scope(
    id: TaskId,
    target: Option<&Task>,
    scope: Vec<Task>,
    now: OffsetDateTime,
) -> Result<Vec<Task>> {
    let mut cancelled = Vec::new();
    for mut task in scope {
        if !task.status.is_finished() {
            task.cancel(now)?;
            cancelled.push(task);
        }
    }
    match target {
        _ if !cancelled.is_empty() => {}
        Some(target) => {
            return Err(Error::conflict(
                id,
                format!("nothing to cancel: the task is {}", target.status),
            ))
        }
        None => return Err(Error::not_found(id)),
    }
    Ok(cancelled)
}

/// A task to be enqueued: the handler name, its payload and its options.
/// Options left unset take the store's [`crate::Settings`] defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// The handler's registered name.
    pub func_path: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Not before this time (default: now).
    pub eta: Option<OffsetDateTime>,
    /// Repeat this long after each run ends.
    pub interval: Option<Duration>,
    /// Retries after a failure (default: the settings' `default_max_retries`).
    pub max_retries: Option<u32>,
    /// Per-attempt time limit (default: the settings' `default_timeout`).
    pub timeout: Option<Duration>,
    /// The id to use (default: a new one).
    pub id: Option<TaskId>,
}

impl NewTask {
    /// A task for `func_path` with no arguments.
    pub fn new(func_path: impl Into<String>) -> Self {
        NewTask {
            func_path: func_path.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            eta: None,
            interval: None,
            max_retries: None,
            timeout: None,
            id: None,
        }
    }

    /// A task whose handler takes a typed payload: `payload` is stored as
    /// `args`/`kwargs` (see [`crate::payload`]) and given back to the handler.
    pub fn with_payload<T: Serialize + ?Sized>(func_path: impl Into<String>, payload: &T) -> Result<Self> {
        let (args, kwargs) = crate::payload::split(serde_json::to_value(payload)?);
        Ok(NewTask {
            args,
            kwargs,
            ..NewTask::new(func_path)
        })
    }

    /// Sets the positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Not before `eta`.
    pub fn eta(mut self, eta: OffsetDateTime) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Repeat `interval` after each run ends.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Retry up to `max_retries` times after a failure.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// Cancel an attempt that runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Use this id instead of a new one.
    pub fn id(mut self, id: TaskId) -> Self {
        self.id = Some(id);
        self
    }

    /// The pending record to store, enqueued at `now`, with `settings`' defaults
    /// for what is unset. A zero interval or timeout is refused: it would spin or
    /// never run. So is a time, duration or payload past what a store can hold
    /// (see [`crate::limits`]), naming the value and the allowed range.
    pub fn into_task(self, settings: &crate::Settings, now: OffsetDateTime) -> Result<Task> {
        if self.func_path.is_empty() {
            return Err(Error::invalid_config(
                "func_path",
                "the handler name must not be empty",
            ));
        }
        if self.interval == Some(Duration::ZERO) {
            return Err(Error::invalid_config("interval", "must be greater than zero"));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_config("timeout", "must be greater than zero"));
        }
        let id = self.id.unwrap_or_default();
        let task = Task {
            id,
            func_path: self.func_path,
            args: self.args,
            kwargs: self.kwargs,
            status: TaskStatus::Pending,
            eta: self.eta.unwrap_or(now),
            interval: self.interval,
            max_retries: self.max_retries.unwrap_or(settings.default_max_retries),
            timeout: self.timeout.or(settings.default_timeout),
            attempts: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error: None,
            result: None,
            lease: None,
            series: self.interval.map(|_| id),
        };
        limits::check_record(&task)?;
        Ok(task)
    }
}

/// Serde for `Option<Duration>` as a number of seconds (fractions allowed), the
/// unit of the `OMNIQ_*` variables and the easiest to read in a JSON record.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_f64(duration.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let secs: Option<f64> = Option::deserialize(deserializer)?;
        secs.map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves_follow_the_spec() {
        use TaskStatus::*;
        let allowed = [
            (Pending, Running),
            (Pending, Cancelled),
            (Running, Completed),
            (Running, Failed),
            (Running, Pending),
            (Running, Cancelled),
            (Failed, Pending),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn ids_refuse_anything_but_a_uuid() {
        for bad in [
            "../../etc/passwd",
            "",
            "abc",
            "0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1/",
            "0190f0c28c4e7a3b9f1e2d4c6b8a0e1f",
        ] {
            assert!(
                matches!(TaskId::parse(bad), Err(Error::InvalidId { .. })),
                "{bad}"
            );
        }
        let id = TaskId::new();
        assert_eq!(TaskId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn ids_increase_in_creation_order() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn records_round_trip_through_json() {
        let now = OffsetDateTime::now_utc();
        let task = NewTask::new("email.send")
            .args(vec![Value::from(1)])
            .interval(Duration::from_millis(1500))
            .timeout(Duration::from_secs(3))
            .into_task(&crate::Settings::default(), now)
            .unwrap();
        let text = serde_json::to_string_pretty(&task).unwrap();
        assert!(text.contains("\"interval\": 1.5"), "{text}");
        let back: Task = serde_json::from_str(&text).unwrap();
        assert_eq!(back, task);
    }
}
