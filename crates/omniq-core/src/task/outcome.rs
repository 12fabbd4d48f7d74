//! How a worker ends its claim on a task, and what that did.

use serde_json::Value;
use time::OffsetDateTime;

use super::{Task, TaskError, TaskStatus};
use crate::limits;

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
    /// The handler answered "not now": the task goes back to pending, due
    /// at `at`, and the attempt is not counted (the task's `snoozes` is).
    Snooze {
        /// When the task may start again.
        at: OffsetDateTime,
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

/// What [`Task::finish`] did with a worker's outcome.
///
/// Short-lived (a backend matches on it at once), so the size of a whole task
/// in one variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// The outcome was applied; the task is now in `status`. For an interval
    /// task that completed or failed for good, `next` is its next occurrence,
    /// which the caller must store in the same atomic step.
    Applied {
        /// The status the outcome led to: `completed`, `failed`, or `pending`
        /// (a retry, or a task handed back).
        status: TaskStatus,
        /// The next occurrence of an interval task, if one is due.
        next: Option<Task>,
    },
    /// The token does not name the task's current claim (the lease was taken
    /// over after it expired, or the task was cancelled or finished): nothing
    /// was changed.
    LeaseLost,
}
