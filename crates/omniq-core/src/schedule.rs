//! Schedules: a name, a cron expression in a time zone, and the task each
//! tick enqueues, stored in the store so that any number of processes produce
//! exactly one task per tick.
//!
//! The store keeps each schedule's next tick. A process that finds a tick due
//! fires it with [`crate::Storage::fire_schedule`], which moves the next tick
//! on and enqueues the tick's task in one atomic step, and only if the stored
//! next tick is still the one it saw: of several processes firing one tick,
//! one wins. The tick's task carries the unique key [`tick_key`], so even a
//! repeated fire (a crash between the two writes of the file store) stores it
//! once while it is live. The cron arithmetic lives with the pools
//! (`omniq-worker`); the store only compares and moves times.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::task::{NewTask, Task, TaskId};

/// The task a schedule enqueues at each tick: a handler and payload with the
/// options of an enqueue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledTask {
    /// The handler's name.
    pub func_path: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Its queue; `None`: `default`.
    #[serde(default)]
    pub queue: Option<String>,
    /// Its priority.
    #[serde(default)]
    pub priority: i16,
    /// Its retries; `None`: the settings' default.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// The time limit of one attempt; `None`: the settings' default.
    #[serde(default, with = "crate::task::opt_secs")]
    pub timeout: Option<Duration>,
}

impl ScheduledTask {
    /// The template of `task` (its eta, interval, id and unique key are not
    /// kept: each tick's task gets its own).
    pub fn from_new_task(task: &NewTask) -> Self {
        ScheduledTask {
            func_path: task.func_path.clone(),
            args: task.args.clone(),
            kwargs: task.kwargs.clone(),
            queue: task.queue.clone(),
            priority: task.priority,
            max_retries: task.max_retries,
            timeout: task.timeout,
        }
    }

    /// The task of schedule `name`'s tick `due`, enqueued `now`: due at once,
    /// with the tick's unique key.
    pub fn for_tick(
        &self,
        name: &str,
        due: OffsetDateTime,
        settings: &Settings,
        now: OffsetDateTime,
    ) -> Result<Task> {
        let mut task = NewTask::new(self.func_path.clone())
            .args(self.args.clone())
            .kwargs(self.kwargs.clone())
            .priority(self.priority)
            .unique_key(tick_key(name, due));
        if let Some(queue) = &self.queue {
            task = task.queue(queue.clone());
        }
        if let Some(retries) = self.max_retries {
            task = task.max_retries(retries);
        }
        if let Some(timeout) = self.timeout {
            task = task.timeout(timeout);
        }
        task.into_task(settings, now)
    }
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name, unique in the store; see [`check_schedule_name`].
    pub name: String,
    /// The cron expression: five fields (minute granularity) or six (with
    /// seconds first).
    pub expression: String,
    /// The IANA time zone the expression is read in, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// What each tick enqueues.
    pub task: ScheduledTask,
    /// After downtime, fire the latest missed tick once (`true`), or skip
    /// every missed tick (`false`, the default).
    #[serde(default)]
    pub catch_up: bool,
    /// A paused schedule fires nothing; its ticks pass.
    #[serde(default)]
    pub paused: bool,
    /// The next tick, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub next_run: OffsetDateTime,
    /// The last tick fired.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_run: Option<OffsetDateTime>,
    /// The task the last tick enqueued (or the live task that held its key).
    #[serde(default)]
    pub last_task: Option<TaskId>,
}

/// The unique key of schedule `name`'s tick `due`.
pub fn tick_key(name: &str, due: OffsetDateTime) -> String {
    format!("schedule:{name}:{}", due.unix_timestamp())
}

/// Checks a schedule's name: 1 to 128 characters, none of them a control
/// character (it is shown in tables and used in keys).
pub fn check_schedule_name(name: &str) -> Result<()> {
    let length = name.chars().count();
    if length == 0 || length > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid_config(
            "schedule name",
            format!("{name:?} is not allowed; expected 1 to 128 characters, no control characters"),
        ));
    }
    Ok(())
}

/// Checks what a store keeps of a schedule: its name, and times it can hold.
pub fn check_schedule(schedule: &Schedule) -> Result<()> {
    check_schedule_name(&schedule.name)?;
    crate::limits::check_time("next_run", schedule.next_run)?;
    if let Some(queue) = &schedule.task.queue {
        crate::queue::check_name(queue)?;
    }
    Ok(())
}

/// Checks what [`crate::Storage::fire_schedule`] is given before anything
/// is read: the tick's task is new work a store can hold, and the next tick a
/// time it can hold.
pub fn check_fire(task: &Task, next: OffsetDateTime) -> Result<()> {
    crate::limits::check_pending(std::slice::from_ref(task))?;
    crate::limits::check_new_records(std::slice::from_ref(task))?;
    crate::limits::check_time("next_run", next)
}

impl Schedule {
    /// Records the fire of tick `due`: the schedule moves on to `next`, and,
    /// when the tick enqueued (or found holding its key) a task, the tick and
    /// that task are its last.
    pub fn fired(&mut self, due: OffsetDateTime, next: OffsetDateTime, answer: Option<&crate::Enqueued>) {
        self.next_run = next;
        if let Some(answer) = answer {
            self.last_run = Some(due);
            self.last_task = Some(answer.id);
        }
    }
}

/// How [`crate::Storage::put_schedule`] treats a schedule already stored
/// under the same name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PutSchedule {
    /// Create, or update the stored one (what `OmniQ::schedule` does at
    /// every start of every process): the stored schedule keeps its pause,
    /// its last tick and task, and, while its expression and time zone are
    /// unchanged, its next tick, so a tick fired meanwhile is not fired again.
    #[default]
    Update,
    /// Replace the stored one as given (a migration that overwrites).
    Replace,
    /// Leave the stored one as it is (a migration that keeps it).
    KeepExisting,
}

/// What [`crate::Storage::put_schedule`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PutAnswer {
    /// The schedule as stored now.
    pub schedule: Schedule,
    /// Whether a schedule of that name was stored before.
    pub existed: bool,
}

/// Decides a [`crate::Storage::put_schedule`] from what is stored under the
/// name: the record to write (`None`: write nothing) and the answer. Every
/// backend calls it under the lock of its read and write, so a tick fired
/// or a pause made by another process in between is never undone.
pub fn decide_put(
    new: Schedule,
    existing: Option<Schedule>,
    mode: PutSchedule,
) -> (Option<Schedule>, PutAnswer) {
    let existed = existing.is_some();
    let stored = match (mode, existing) {
        (_, None) | (PutSchedule::Replace, _) => new,
        (PutSchedule::KeepExisting, Some(old)) => {
            return (
                None,
                PutAnswer {
                    schedule: old,
                    existed,
                },
            );
        }
        (PutSchedule::Update, Some(old)) => {
            let same_times = old.expression == new.expression && old.timezone == new.timezone;
            Schedule {
                next_run: if same_times { old.next_run } else { new.next_run },
                paused: old.paused,
                last_run: old.last_run,
                last_task: old.last_task,
                ..new
            }
        }
    };
    (
        Some(stored.clone()),
        PutAnswer {
            schedule: stored,
            existed,
        },
    )
}

/// What [`crate::Storage::fire_schedule`] decides from a stored schedule:
/// whether the tick `due` may fire now (the schedule exists, is not paused,
/// and its next tick is `due`).
pub fn may_fire(stored: Option<&Schedule>, due: OffsetDateTime) -> bool {
    stored.is_some_and(|s| !s.paused && s.next_run == due)
}
