//! `NewTask`: a task to be enqueued, and the record it becomes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{Task, TaskId, TaskStatus, UniqueWindow};
use crate::error::{Error, Result};
use crate::limits;

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
    /// The queue (default: [`crate::queue::DEFAULT_QUEUE`]).
    pub queue: Option<String>,
    /// Higher runs first among due tasks of one queue (default 0).
    pub priority: i16,
    /// At most one live task per key; see [`crate::Storage::enqueue`].
    pub unique_key: Option<String>,
    /// Hold the key this long from enqueue, whatever the task's state.
    pub unique_for: Option<Duration>,
    /// The finished statuses that hold the key within `unique_for` (default:
    /// completed, failed and cancelled).
    pub unique_finished: Option<Vec<TaskStatus>>,
    /// Text values carried with the task ([`Task::meta`]).
    pub meta: BTreeMap<String, String>,
    /// The concurrency key ([`Task::concurrency_key`]).
    pub concurrency_key: Option<String>,
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
            queue: None,
            priority: 0,
            unique_key: None,
            unique_for: None,
            unique_finished: None,
            meta: BTreeMap::new(),
            concurrency_key: None,
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

    /// Give the task a concurrency key (1 to 256 bytes): with a per-key
    /// limit on its queue, at most that many of the key's tasks are in play
    /// at once, the earliest enqueued first (see [`crate::flow`]).
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Put the task in `queue` (names: see [`crate::queue::check_name`]).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Run before lower-priority due tasks of the same queue (default 0).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// While a task with `key` is pending or running, enqueueing this one
    /// stores nothing and answers that task's id.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Hold the unique key for `period` from enqueue whatever becomes of the
    /// task: a completed, failed or cancelled task enqueued less than `period`
    /// ago still makes an enqueue with its key a duplicate (Oban's `period`,
    /// River's `ByPeriod`). Needs [`NewTask::unique_key`]. A pending or
    /// running task holds its key past the period, as every keyed task does.
    pub fn unique_for(mut self, period: Duration) -> Self {
        self.unique_for = Some(period);
        self
    }

    /// Within [`NewTask::unique_for`]'s period, only these finished statuses
    /// hold the key (say `&[TaskStatus::Completed]` to let a failed or
    /// cancelled task be enqueued again at once). Pending and running tasks
    /// always hold it; naming them changes nothing.
    pub fn unique_finished(mut self, statuses: &[TaskStatus]) -> Self {
        self.unique_finished = Some(statuses.to_vec());
        self
    }

    /// Carries `value` under `name` with the task ([`Task::meta`]).
    pub fn meta(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(name.into(), value.into());
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
        let unique_window = match (self.unique_for, &self.unique_key) {
            (None, _) if self.unique_finished.is_some() => {
                return Err(Error::invalid_config(
                    "unique_finished",
                    "names the statuses that hold a key within unique_for's period; set unique_for too",
                ))
            }
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::invalid_config(
                    "unique_for",
                    "holds a unique key for a period; set unique_key too",
                ))
            }
            (Some(period), Some(_)) => {
                if period.is_zero() {
                    return Err(Error::invalid_config("unique_for", "must be greater than zero"));
                }
                limits::check_duration("unique_for", period)?;
                let finished = self.unique_finished.unwrap_or_else(|| {
                    vec![TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled]
                });
                Some(UniqueWindow {
                    period,
                    until: crate::later(now, period),
                    finished: finished
                        .into_iter()
                        .filter(|status| status.is_finished())
                        .collect(),
                })
            }
        };
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
            errors: Vec::new(),
            errors_dropped: 0,
            result: None,
            lease: None,
            series: self.interval.map(|_| id),
            queue: self.queue.unwrap_or_else(crate::queue::default_queue),
            priority: self.priority,
            unique_key: self.unique_key,
            progress: None,
            unique_window,
            meta: self.meta,
            concurrency_key: self.concurrency_key,
            snoozes: 0,
        };
        limits::check_record(&task)?;
        Ok(task)
    }
}
