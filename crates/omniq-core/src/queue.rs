//! Queues, priorities and unique keys: the rules for names and keys, what an
//! enqueue answers, what a store reports per queue, and the one place that
//! decides which tasks of an enqueue are duplicates.
//!
//! Every task belongs to a named queue. A pool serves the queues it is given,
//! each with its own concurrency; a paused queue is claimed from by no process
//! until it is resumed. Among the due tasks of one queue, the highest
//! `priority` runs first, then the oldest `eta`, then the lowest id (the
//! enqueue order).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::storage::StatusCounts;
use crate::task::{Task, TaskId, TaskStatus, UniqueWindow};

/// The queue of a task enqueued without one.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 64;

/// The longest unique key, in bytes.
pub const MAX_UNIQUE_KEY: usize = 256;

/// [`DEFAULT_QUEUE`] as an owned name (serde's default for records written
/// before queues existed).
pub fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// Whether `name` is a queue name ([`check_name`]): for readers that meet a
/// name in stored data, where a bad one is skipped rather than an error.
pub fn is_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// Checks a queue name: 1 to 64 bytes of ASCII letters, digits and `-_.:`,
/// starting with a letter or digit (so no name is `.`, `..` or hidden, and
/// every name is safe in a file name and a URL).
pub fn check_name(name: &str) -> Result<()> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    let reason = if name.is_empty() {
        "must not be empty".to_owned()
    } else if name.len() > MAX_QUEUE_NAME {
        format!(
            "is {} bytes long; at most {MAX_QUEUE_NAME} are allowed",
            name.len()
        )
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        "must start with an ASCII letter or digit".to_owned()
    } else if !name.bytes().all(allowed) {
        "may hold only ASCII letters, digits and - _ . :".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::invalid_config("queue", format!("{name:?} {reason}")))
}

/// Checks a unique key: 1 to 256 bytes of any text.
pub fn check_unique_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_UNIQUE_KEY {
        return Err(Error::invalid_config(
            "unique_key",
            format!("is {} bytes long; 1 to {MAX_UNIQUE_KEY} are allowed", key.len()),
        ));
    }
    Ok(())
}

/// Whether a task in `status` holds its unique key: while it is pending or
/// running, no other task with that key can be enqueued.
pub fn holds_key(status: TaskStatus) -> bool {
    matches!(status, TaskStatus::Pending | TaskStatus::Running)
}

/// What became of one task given to [`crate::Storage::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The stored task's id; for a duplicate, the id of the live task that
    /// holds the key.
    pub id: TaskId,
    /// Whether the task was a duplicate of a live task and nothing was stored.
    pub duplicate: bool,
}

/// What a store holds in one queue; see [`crate::Storage::queue_stats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// How many of its tasks are in each status.
    pub counts: StatusCounts,
    /// Whether the queue is paused.
    pub paused: bool,
    /// The earliest eta among its pending tasks: how long its oldest due task
    /// has waited, or when its next task comes due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_eta: Option<OffsetDateTime>,
}

impl QueueStats {
    /// An empty queue called `queue`.
    pub fn empty(queue: impl Into<String>) -> Self {
        QueueStats {
            queue: queue.into(),
            counts: StatusCounts::default(),
            paused: false,
            oldest_eta: None,
        }
    }

    /// Counts `task` in these statistics.
    pub fn add(&mut self, task: &Task) {
        self.counts.add(task.status);
        if task.status == TaskStatus::Pending {
            self.pending_eta(task.eta);
        }
    }

    /// Takes in the eta of one pending task, keeping the earliest.
    pub fn pending_eta(&mut self, eta: OffsetDateTime) {
        self.oldest_eta = Some(self.oldest_eta.map_or(eta, |oldest| oldest.min(eta)));
    }
}

/// What a store's lookup of some unique keys found: the live task holding
/// each, and the finished tasks with a window ([`Task::unique_window`]) that
/// may still hold one. SQL backends read both in one query and hand each row
/// to [`KeyHolders::add_stored`]; [`KeyHolders::at`] then answers
/// [`split_duplicates`] by the rule of [`Task::holds_key_at`].
#[derive(Debug, Default)]
pub struct KeyHolders {
    live: HashMap<String, TaskId>,
    finished: Vec<(String, TaskId, TaskStatus, UniqueWindow)>,
}

impl KeyHolders {
    /// Takes in one row of the lookup: a task with `key`, its stored id and
    /// status, and for a finished task its stored window as JSON. The error
    /// says which stored value cannot be read, naming the task.
    pub fn add_stored(
        &mut self,
        key: String,
        id: &str,
        status: &str,
        window: Option<&str>,
    ) -> std::result::Result<(), String> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            format!("task {id}: its stored {what} cannot be read: {e}")
        };
        let task = TaskId::parse(id).map_err(|e| bad("id", &e))?;
        let status = status.parse::<TaskStatus>().map_err(|e| bad("status", &e))?;
        if holds_key(status) {
            self.live.insert(key, task);
        } else if let Some(window) = window {
            let window = serde_json::from_str(window).map_err(|e| bad("unique window", &e))?;
            self.finished.push((key, task, status, window));
        }
        Ok(())
    }

    /// The task holding `key` at `now`.
    pub fn at(&self, key: &str, now: OffsetDateTime) -> Option<TaskId> {
        self.live(key).or_else(|| {
            self.finished
                .iter()
                .find(|(k, _, status, window)| k == key && window.holds(*status, now))
                .map(|(_, id, _, _)| *id)
        })
    }

    /// The live task holding `key`: what a retry by hand competes with.
    pub fn live(&self, key: &str) -> Option<TaskId> {
        self.live.get(key).copied()
    }
}

/// Decides which of the records given to one enqueue are stored and what each
/// answers: a record that would hold its unique key while `holder` (the
/// store's lookup of the task holding a key at the enqueue time it is given,
/// by [`Task::holds_key_at`]) or an earlier record of the same call holds it
/// is a duplicate, answered with the holder's id. Returns the
/// records to store and the answers, in the order given.
pub fn split_duplicates(
    tasks: Vec<Task>,
    mut holder: impl FnMut(&str, OffsetDateTime) -> Result<Option<TaskId>>,
) -> Result<(Vec<Task>, Vec<Enqueued>)> {
    let mut held: HashMap<String, TaskId> = HashMap::new();
    let mut store = Vec::with_capacity(tasks.len());
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let key = task.unique_key.as_deref().filter(|_| holds_key(task.status));
        if let Some(key) = key {
            let holder = match held.get(key) {
                Some(id) => Some(*id),
                None => holder(key, task.created_at)?,
            };
            if let Some(id) = holder {
                if id == task.id {
                    return Err(Error::conflict(id, "a task with this id already exists"));
                }
                answers.push(Enqueued { id, duplicate: true });
                continue;
            }
            held.insert(key.to_owned(), task.id);
        }
        answers.push(Enqueued {
            id: task.id,
            duplicate: false,
        });
        store.push(task);
    }
    Ok((store, answers))
}

/// The error of a retry refused because another live task holds the key.
pub fn key_held(id: TaskId, key: &str, holder: TaskId) -> Error {
    Error::conflict(
        id,
        format!("its unique key {key:?} is held by task {holder}, which is pending or running"),
    )
}

/// Gathers [`crate::Storage::queue_stats`] from what a backend counts, in
/// whatever shape it counts it: every paused queue, and counts and pending
/// etas per queue. [`QueueTally::finish`] answers them sorted by name.
#[derive(Debug, Default)]
pub struct QueueTally {
    queues: std::collections::BTreeMap<String, QueueStats>,
}

impl QueueTally {
    /// A tally that lists `paused` as paused, with or without tasks.
    pub fn new(paused: impl IntoIterator<Item = String>) -> Self {
        let mut tally = QueueTally::default();
        for name in paused {
            tally.queue(&name).paused = true;
        }
        tally
    }

    /// The statistics of `queue`, made empty on first use.
    pub fn queue(&mut self, queue: &str) -> &mut QueueStats {
        self.queues
            .entry(queue.to_owned())
            .or_insert_with(|| QueueStats::empty(queue))
    }

    /// Adds `count` tasks of `queue` in `status`.
    pub fn count(&mut self, queue: &str, status: TaskStatus, count: u64) {
        *self.queue(queue).counts.get_mut(status) += count;
    }

    /// The statistics, sorted by queue name.
    pub fn finish(self) -> Vec<QueueStats> {
        self.queues.into_values().collect()
    }
}

/// The statistics of every queue among `tasks` and `paused`, sorted by name:
/// what a backend that reads whole records answers to
/// [`crate::Storage::queue_stats`].
pub fn stats_of<'t>(
    tasks: impl IntoIterator<Item = &'t Task>,
    paused: &std::collections::BTreeSet<String>,
) -> Vec<QueueStats> {
    let mut tally = QueueTally::new(paused.iter().cloned());
    for task in tasks {
        tally.queue(&task.queue).add(task);
    }
    tally.finish()
}

/// The sort key of the claim order among due tasks of one queue: highest
/// priority first, then oldest eta, then lowest id.
pub fn claim_order(task: &Task) -> (std::cmp::Reverse<i16>, OffsetDateTime, TaskId) {
    (std::cmp::Reverse(task.priority), task.eta, task.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_rules() {
        for good in ["default", "emails", "a", "tenant-1:high_prio.v2", &"q".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a b", "é", &"q".repeat(65)] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("queue"), "{bad}: {error}");
        }
    }

    #[test]
    fn unique_keys_have_a_length_range() {
        check_unique_key("invoice:42").unwrap();
        check_unique_key(&"k".repeat(256)).unwrap();
        assert!(check_unique_key("").is_err());
        assert!(check_unique_key(&"k".repeat(257)).is_err());
    }
}
