//! The store's upkeep that pools share: how long finished tasks are kept
//! ([`Retention`]) and the heartbeat each pool writes ([`WorkerBeat`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::task::TaskStatus;

/// The most tasks one [`Storage::prune`](crate::Storage::prune) call deletes:
/// a prune is a short write, so claims and finishes get the store between two.
pub const PRUNE_BATCH: usize = 1_000;

/// The chore name under which pools take turns pruning a store
/// ([`Storage::take_turn`](crate::Storage::take_turn)).
pub const RETENTION_CHORE: &str = "retention";

/// How long finished tasks are kept before the pools delete them, per status.
/// `None` keeps them forever. The defaults are River's: completed and
/// cancelled tasks a day, failed tasks a week, so a failure can still be
/// looked at after a weekend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Completed tasks (`OMNIQ_RETENTION_COMPLETED`, seconds, `0` = forever;
    /// default 86400).
    pub completed: Option<Duration>,
    /// Failed tasks (`OMNIQ_RETENTION_FAILED`; default 604800).
    pub failed: Option<Duration>,
    /// Cancelled tasks (`OMNIQ_RETENTION_CANCELLED`; default 86400).
    pub cancelled: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 60 * 60);
        Retention {
            completed: Some(DAY),
            failed: Some(7 * DAY),
            cancelled: Some(DAY),
        }
    }
}

impl Retention {
    /// Keeps every finished task forever: pools prune nothing.
    pub const FOREVER: Retention = Retention {
        completed: None,
        failed: None,
        cancelled: None,
    };

    /// How long tasks of `status` are kept; `None` for forever and for the
    /// statuses that are not finished, which are never pruned.
    pub fn age(&self, status: TaskStatus) -> Option<Duration> {
        match status {
            TaskStatus::Completed => self.completed,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
            TaskStatus::Pending | TaskStatus::Running => None,
        }
    }

    /// Each finished status kept for a limited time, with the moment before
    /// which its tasks go, as of `now`.
    pub fn cutoffs(&self, now: OffsetDateTime) -> Vec<(TaskStatus, OffsetDateTime)> {
        [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled]
            .into_iter()
            .filter_map(|status| Some((status, crate::earlier(now, self.age(status)?))))
            .collect()
    }

    /// Whether nothing is ever pruned.
    pub fn keeps_everything(&self) -> bool {
        *self == Self::FOREVER
    }

    /// Reads one `OMNIQ_RETENTION_*` value: seconds, `0` for forever.
    pub(crate) fn parse(name: &str, text: &str) -> Result<Option<Duration>> {
        let bad = || {
            Error::invalid_config(
                name,
                format!("{text:?} is not allowed; expected a number of seconds (e.g. 86400), or 0 to keep forever"),
            )
        };
        let secs: f64 = text.trim().parse().map_err(|_| bad())?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(bad());
        }
        if secs == 0.0 {
            return Ok(None);
        }
        let age = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
        crate::limits::check_duration(name, age)?;
        Ok(Some(age))
    }
}

/// A pool's heartbeat: who it is and what it runs, written to the store every
/// few seconds ([`Storage::beat`](crate::Storage::beat)), removed when the
/// pool shuts down, and counted as gone once `expires_at` passes (a process
/// killed, a host lost). Operators read them with `omniq workers`, the
/// dashboard's workers page and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    /// The pool's worker id, as its leases name it.
    pub worker_id: String,
    /// The host the process runs on.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The OmniQ version the process runs.
    pub version: String,
    /// The queues served, each with its slots.
    pub queues: Vec<(String, usize)>,
    /// Tasks running when the beat was written.
    pub running: u64,
    /// What the pool has done since it started, as of this beat: counters
    /// that only grow while the pool runs, whatever is later pruned.
    #[serde(default)]
    pub done: WorkerCounts,
    /// When the pool started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the beat was written.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// When the pool counts as gone if no later beat came: a few beats after
    /// `last_seen`.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A pool's counts of finished attempts since it started, as its heartbeat
/// carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed for good.
    pub failed: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
}

impl WorkerBeat {
    /// Whether the pool has beaten recently enough to count as alive at `now`.
    pub fn alive(&self, now: OffsetDateTime) -> bool {
        self.expires_at > now
    }
}

/// How long a store keeps the beat of a pool that stopped beating without
/// saying goodbye, so operators see it marked as missing before it goes.
pub const GONE_KEPT: Duration = Duration::from_secs(60 * 60);

/// The moment before which expired beats are deleted, as of `now`.
pub fn gone_before(now: OffsetDateTime) -> OffsetDateTime {
    crate::earlier(now, GONE_KEPT)
}

/// Checks a beat a store is asked to write: the id, host and queue names are
/// short, printable text, since they are shown as they are.
pub fn check_beat(beat: &WorkerBeat) -> Result<()> {
    let text_ok = |s: &str| !s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control);
    if !text_ok(&beat.worker_id) {
        return Err(Error::invalid_config(
            "worker_id",
            format!(
                "{:?} is not allowed; expected 1 to 200 printable characters",
                beat.worker_id
            ),
        ));
    }
    if !text_ok(&beat.host) || !text_ok(&beat.version) {
        return Err(Error::invalid_config(
            "heartbeat",
            "the host name and version must be 1 to 200 printable characters",
        ));
    }
    for (queue, _) in &beat.queues {
        crate::queue::check_name(queue)?;
    }
    if beat.expires_at <= beat.last_seen {
        return Err(Error::invalid_config(
            "heartbeat",
            "a beat must expire after it was written",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_forever_and_bad_values_are_named() {
        assert_eq!(Retention::parse("X", "0").unwrap(), None);
        assert_eq!(
            Retention::parse("X", "60").unwrap(),
            Some(Duration::from_secs(60))
        );
        for bad in ["-1", "NaN", "soon", "1e30"] {
            let error = Retention::parse("OMNIQ_RETENTION_FAILED", bad)
                .unwrap_err()
                .to_string();
            assert!(error.contains("OMNIQ_RETENTION_FAILED"), "{error}");
        }
    }

    #[test]
    fn cutoffs_skip_what_is_kept_forever() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let retention = Retention {
            failed: None,
            ..Retention::default()
        };
        let cutoffs = retention.cutoffs(now);
        assert_eq!(cutoffs.len(), 2);
        assert_eq!(cutoffs[0], (TaskStatus::Completed, now - time::Duration::days(1)));
        assert!(Retention::FOREVER.cutoffs(now).is_empty());
    }
}
