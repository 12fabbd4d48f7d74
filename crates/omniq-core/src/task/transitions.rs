//! The state changes of a task: claim, renew, finish, lease expiry, cancel
//! and retry, each guarding itself, and what cancelling an id must cancel.
//! Every backend applies these (or SQL that the conformance suite keeps in
//! step with them).

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::{
    AttemptError, Finished, Lease, LeaseToken, Outcome, Progress, Task, TaskError, TaskId, TaskResult,
    TaskStatus, MAX_ATTEMPT_ERRORS,
};
use crate::error::{Error, Result};
use crate::limits::{self, later};

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
        // Progress belongs to the running attempt.
        if self.status == TaskStatus::Running {
            self.progress = None;
        }
        self.status = to;
        self.updated_at = now;
        Ok(())
    }

    /// Records `progress` on this running task if `token` names its current
    /// claim; `false` (and no change) when it does not.
    pub fn set_progress(&mut self, token: LeaseToken, progress: Progress) -> bool {
        if !self.holds_lease(token) {
            return false;
        }
        self.progress = Some(progress);
        true
    }

    /// Claims this pending task for `worker_id` until `now + lease_for`: one more
    /// attempt starts. A task that is not due at `now` (not pending, or its eta
    /// still ahead) is an [`Error::Conflict`].
    pub fn claim(&mut self, worker_id: &str, lease_for: Duration, now: OffsetDateTime) -> Result<()> {
        if self.status == TaskStatus::Pending && self.eta > now {
            return Err(Error::conflict(self.id, format!("not due until {}", self.eta)));
        }
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

    /// Extends the lease of this running task to `now + lease_for`, if
    /// `token` names its current claim (even past the lease's expiry, as long
    /// as nobody requeued the task); `None` when it does not.
    pub fn renew(
        &mut self,
        token: LeaseToken,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        if !self.holds_lease(token) {
            return None;
        }
        let lease = self.lease.as_mut()?;
        lease.expires_at = later(now, lease_for);
        Some(lease.expires_at)
    }

    /// Applies a worker's outcome to this task if `token` names its current
    /// claim (even past the lease's expiry, as long as nobody requeued the
    /// task); else changes nothing and answers [`Finished::LeaseLost`].
    /// Answers the status the outcome led to, and the next occurrence of an
    /// interval task, which the caller must store in the same atomic step.
    ///
    /// A retry past `max_retries` is a final failure. A result nested deeper
    /// than a store can read back fails the attempt for good (`bad_result`)
    /// instead of being stored, and a retry time past what a store holds
    /// waits until the latest time it does.
    pub fn finish(&mut self, token: LeaseToken, outcome: Outcome, now: OffsetDateTime) -> Result<Finished> {
        if !self.holds_lease(token) {
            return Ok(Finished::LeaseLost);
        }
        let next = self.apply(outcome, now)?;
        Ok(Finished::Applied {
            status: self.status,
            next,
        })
    }

    /// Applies an outcome to this running task; see [`Task::finish`].
    fn apply(&mut self, outcome: Outcome, now: OffsetDateTime) -> Result<Option<Task>> {
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
                self.remember(&error, now);
                self.set_status(TaskStatus::Failed, now)?;
                self.error = Some(error);
                self.end(now);
                Ok(self.next_occurrence(now))
            }
            Outcome::Retry { error, at } => {
                self.remember(&error, now);
                self.set_status(TaskStatus::Pending, now)?;
                self.error = Some(error);
                self.eta = at.clamp(limits::MIN_TIME, limits::MAX_TIME);
                self.lease = None;
                Ok(None)
            }
            Outcome::Snooze { at } => {
                self.set_status(TaskStatus::Pending, now)?;
                self.attempts = self.attempts.saturating_sub(1);
                self.snoozes = self.snoozes.saturating_add(1);
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
        self.apply(Outcome::Retry { error, at: now }, now)
    }

    /// Cancels this pending or running task. A running task's worker loses its
    /// lease: its finish and renewals are refused from now on.
    pub fn cancel(&mut self, now: OffsetDateTime) -> Result<()> {
        self.set_status(TaskStatus::Cancelled, now)?;
        self.end(now);
        Ok(())
    }

    /// Puts this failed task back to pending, due at `now`, with a fresh count
    /// of attempts. Any other status is an [`Error::Conflict`] (a running
    /// task's worker still holds it). An interval occurrence already scheduled
    /// its successor when it failed, so the retried one is detached from its
    /// series: it runs once, schedules nothing, and cancelling the series
    /// leaves it alone. A series thus has at most one pending or running
    /// occurrence at any time.
    pub fn retry(&mut self, now: OffsetDateTime) -> Result<()> {
        if self.status != TaskStatus::Failed {
            return Err(Error::conflict(
                self.id,
                format!("only failed tasks can be retried; this one is {}", self.status),
            ));
        }
        self.set_status(TaskStatus::Pending, now)?;
        self.attempts = 0;
        self.eta = now;
        self.finished_at = None;
        self.interval = None;
        self.series = None;
        Ok(())
    }

    /// Adds a failed attempt to the history, before the lease that names
    /// its worker is dropped.
    fn remember(&mut self, error: &TaskError, now: OffsetDateTime) {
        self.errors.push(AttemptError {
            error: error.clone(),
            worker_id: self.lease.as_ref().map(|lease| lease.worker_id.clone()),
            started_at: self.started_at,
            failed_at: now,
        });
        let over = self.errors.len().saturating_sub(MAX_ATTEMPT_ERRORS);
        if over > 0 {
            self.errors.drain(..over);
            self.errors_dropped = self.errors_dropped.saturating_add(over as u32);
        }
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
            errors: Vec::new(),
            errors_dropped: 0,
            result: None,
            lease: None,
            series: Some(self.series.unwrap_or(self.id)),
            queue: self.queue.clone(),
            priority: self.priority,
            unique_key: self.unique_key.clone(),
            progress: None,
            // Each occurrence holds the key over its own period from its enqueue.
            unique_window: self.unique_window.as_ref().map(|window| super::UniqueWindow {
                until: crate::later(now, window.period),
                ..window.clone()
            }),
            meta: self.meta.clone(),
            concurrency_key: self.concurrency_key.clone(),
            snoozes: 0,
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

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::settings::Settings;
    use crate::task::NewTask;

    const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

    fn running() -> Task {
        let mut task = NewTask::new("x").into_task(&Settings::default(), T0).unwrap();
        task.claim("w", Duration::from_secs(30), T0).unwrap();
        task
    }

    #[test]
    fn transitions_guard_themselves() {
        // Retry only from failed: a running task keeps its lease.
        let mut task = running();
        assert!(matches!(task.retry(T0), Err(Error::Conflict { .. })));
        assert_eq!(task.status, TaskStatus::Running);
        assert!(task.lease.is_some());
        // A finish with another claim's token changes nothing.
        let before = task.clone();
        let answer = task
            .finish(LeaseToken::new(), Outcome::Complete { result: Value::Null }, T0)
            .unwrap();
        assert_eq!(answer, Finished::LeaseLost);
        assert_eq!(task, before);
        // A claim before the eta is refused.
        let mut later_task = NewTask::new("x")
            .eta(T0 + Duration::from_secs(60))
            .into_task(&Settings::default(), T0)
            .unwrap();
        assert!(matches!(
            later_task.claim("w", Duration::from_secs(30), T0),
            Err(Error::Conflict { .. })
        ));
        // Renewal needs the current token too.
        assert_eq!(task.renew(LeaseToken::new(), Duration::from_secs(30), T0), None);
        let token = task.lease.as_ref().unwrap().token;
        assert!(task.renew(token, Duration::from_secs(30), T0).is_some());
    }
}
