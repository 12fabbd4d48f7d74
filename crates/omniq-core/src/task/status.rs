//! Task statuses and the one table of the moves allowed between them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
}
