//! The task model: the stored record, its error and result records, and the
//! modules holding ids, statuses, outcomes, state changes and new tasks.

mod id;
mod new_task;
mod outcome;
mod progress;
mod status;
mod transitions;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use id::{LeaseToken, TaskId};
pub use new_task::NewTask;
pub use outcome::{Finished, Outcome};
pub use progress::{Progress, MAX_PROGRESS_MESSAGE};
pub use status::TaskStatus;
pub use transitions::{cancel_in_scope, CancelScope};

use crate::error::{Error, Result};

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
    /// The error's causes, outermost first (its `source()` chain), when the
    /// handler's error had any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// Where in the source the attempt failed (`file:line:column`), when it
    /// is known: the panic's location for a handler that panicked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl TaskError {
    /// A new error record.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, attempt: u32, retryable: bool) -> Self {
        TaskError {
            kind: kind.into(),
            message: message.into(),
            attempt,
            retryable,
            causes: Vec::new(),
            location: None,
        }
    }

    /// The same error with its chain of causes.
    pub fn with_causes(mut self, causes: Vec<String>) -> Self {
        self.causes = causes;
        self
    }

    /// The same error with the source location it came from.
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

/// How many failed attempts a task's history keeps; older ones are counted
/// in [`Task::errors_dropped`].
pub const MAX_ATTEMPT_ERRORS: usize = 20;

/// One failed attempt in a task's history ([`Task::errors`]): its error, the
/// worker that ran it, and when it started and failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// What went wrong.
    #[serde(flatten)]
    pub error: TaskError,
    /// The worker that ran the attempt, as its lease named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// When the attempt started.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it failed (or its lease was found expired).
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
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
    /// Every failed attempt, oldest first: the last [`MAX_ATTEMPT_ERRORS`],
    /// kept whatever the task's status (a completed task keeps the failures
    /// before its success).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<AttemptError>,
    /// How many older failed attempts fell out of [`Task::errors`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors_dropped: u32,
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
    /// The queue the task belongs to; see [`crate::queue`]. Records written
    /// before queues existed read as [`crate::queue::DEFAULT_QUEUE`].
    #[serde(default = "crate::queue::default_queue")]
    pub queue: String,
    /// Among due tasks of one queue, higher runs first (default 0).
    #[serde(default)]
    pub priority: i16,
    /// While a task with this key is pending or running, enqueueing another
    /// with the same key stores nothing; see [`crate::Storage::enqueue`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// How far the running attempt has got, as its handler last reported
    /// ([`crate::Storage::set_progress`]); dropped when the task stops running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// How long the unique key stays held after enqueue, whatever the task's
    /// state ([`NewTask::unique_for`]); `None`: only while pending or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_window: Option<UniqueWindow>,
    /// Small text values carried with the task for tools around it, such as
    /// the W3C trace context of the span that enqueued it (`traceparent`,
    /// `tracestate`); see [`crate::limits::check_meta`] for the bounds.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
    /// The task's concurrency key ([`NewTask::concurrency_key`]): with a
    /// per-key limit on its queue, only the earliest enqueued unfinished
    /// tasks of a key may start (see [`crate::flow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// How many times a handler answered "not now" ([`Outcome::Snooze`]);
    /// snoozes are not attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snoozes: u32,
}

/// A unique key held over a period ([`NewTask::unique_for`]): from enqueue
/// until `until`, the task holds its key while pending or running (as every
/// keyed task does) and also once finished in one of `finished`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueWindow {
    /// The period from enqueue.
    #[serde(with = "secs")]
    pub period: Duration,
    /// When the period ends: the enqueue time plus the period.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// The finished statuses in which the task still holds its key until
    /// then (all three unless narrowed with [`NewTask::unique_finished`]).
    pub finished: Vec<TaskStatus>,
}

impl Task {
    /// Whether this task holds its unique key at `now`: while pending or
    /// running, and, with a [`UniqueWindow`], until the window ends in the
    /// finished statuses it names. The one rule every backend asks.
    pub fn holds_key_at(&self, now: OffsetDateTime) -> bool {
        self.unique_key.is_some()
            && (crate::queue::holds_key(self.status)
                || self
                    .unique_window
                    .as_ref()
                    .is_some_and(|window| window.holds(self.status, now)))
    }
}

impl UniqueWindow {
    /// Whether a finished task in `status` with this window holds its key
    /// at `now`.
    pub fn holds(&self, status: TaskStatus, now: OffsetDateTime) -> bool {
        now < self.until && self.finished.contains(&status)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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

/// Serde for `Duration` as a number of seconds (fractions allowed).
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Option<Duration>` as a number of seconds (fractions allowed), the
/// unit of the `OMNIQ_*` variables and the easiest to read in a JSON record.
pub(crate) mod opt_secs {
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
