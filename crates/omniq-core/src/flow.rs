//! Flow control: the limits a queue carries in the store (concurrency across
//! every process, a window per concurrency key, start rates), and the one
//! rule that decides what a claim of a limited queue may take.
//!
//! Backends gather the facts a claim needs (the queue's limits, how many of
//! its tasks run under a live lease, its rate buckets, and for each due
//! candidate how many tasks of its key are ahead of it) inside their atomic
//! claim step, ask [`QueueLimits::admit`], and store what it took.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::task::TaskStatus;

/// The longest concurrency key, in bytes.
pub const MAX_CONCURRENCY_KEY: usize = 256;

/// The highest concurrency limit (global or per key) a queue may carry.
pub const MAX_LIMIT: u32 = 100_000;

/// The most starts a rate may allow in its period.
pub const MAX_RATE_COUNT: u32 = 1_000_000;

/// The shortest and the longest period of a rate.
pub const RATE_PERIODS: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(7 * 24 * 3600));

/// Checks a concurrency key: 1 to 256 bytes of any text.
pub fn check_concurrency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_CONCURRENCY_KEY {
        return Err(Error::invalid_config(
            "concurrency_key",
            format!(
                "is {} bytes long; 1 to {MAX_CONCURRENCY_KEY} are allowed",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// At most `count` task starts per `per`, with bursts of up to `count`:
/// a token bucket of `count` tokens that refills evenly over `per`.
///
/// A bucket is stored as one time, its *theoretical arrival time* (the
/// generic cell rate algorithm): each start moves it on by `per / count`,
/// and a start is allowed while it stays within `per` of now. A bucket that
/// was never used, or whose time has passed, is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Starts allowed per period (and the largest burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// A rate of `count` starts per `per`; refused outside 1 to 1,000,000
    /// starts and 1 ms to 7 days.
    pub fn new(count: u32, per: Duration) -> Result<Rate> {
        let rate = Rate { count, per };
        rate.check()?;
        Ok(rate)
    }

    /// `count` starts per second.
    pub fn per_second(count: u32) -> Result<Rate> {
        Rate::new(count, Duration::from_secs(1))
    }

    /// `count` starts per minute.
    pub fn per_minute(count: u32) -> Result<Rate> {
        Rate::new(count, Duration::from_secs(60))
    }

    /// Checks the bounds [`Rate::new`] states.
    pub fn check(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_RATE_COUNT {
            return Err(Error::invalid_config(
                "rate",
                format!("allows {} starts; 1 to {MAX_RATE_COUNT} are allowed", self.count),
            ));
        }
        if self.per < RATE_PERIODS.0 || self.per > RATE_PERIODS.1 {
            return Err(Error::invalid_config(
                "rate",
                format!("has a period of {:?}; 1 ms to 7 days are allowed", self.per),
            ));
        }
        Ok(())
    }

    /// The time one start adds to the bucket, in nanoseconds (at least 1).
    fn step(&self) -> i128 {
        (self.per.as_nanos() as i128 / i128::from(self.count.max(1))).max(1)
    }

    /// How many starts the bucket at `tat` allows at `now`.
    pub fn available(&self, tat: Option<OffsetDateTime>, now: OffsetDateTime) -> u32 {
        let base = tat.map_or(now, |tat| tat.max(now));
        let room = (now - base).whole_nanoseconds() + self.per.as_nanos() as i128;
        (room.max(0) / self.step()).min(i128::from(self.count)) as u32
    }

    /// The bucket's time after `starts` starts at `now`.
    pub fn take(&self, tat: Option<OffsetDateTime>, now: OffsetDateTime, starts: u32) -> OffsetDateTime {
        let base = tat.map_or(now, |tat| tat.max(now));
        let nanos = self.step().saturating_mul(i128::from(starts));
        let nanos = i64::try_from(nanos).unwrap_or(i64::MAX);
        crate::limits::later(base, Duration::from_nanos(nanos.max(0) as u64))
    }

    /// When the bucket at `tat` allows its next start: `now` if it allows
    /// one already.
    pub fn next_start(&self, tat: Option<OffsetDateTime>, now: OffsetDateTime) -> OffsetDateTime {
        match tat {
            Some(tat) if self.available(Some(tat), now) == 0 => {
                let wait = (tat - now).whole_nanoseconds() + self.step() - self.per.as_nanos() as i128;
                let wait = u64::try_from(wait.max(0)).unwrap_or(u64::MAX);
                crate::limits::later(now, Duration::from_nanos(wait))
            }
            _ => now,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.per;
        let unit = match per.as_millis() {
            1_000 => "s".to_owned(),
            60_000 => "m".to_owned(),
            3_600_000 => "h".to_owned(),
            ms if per.subsec_millis() != 0 || per.as_secs() == 0 => format!("{ms}ms"),
            _ if per.as_secs().is_multiple_of(3600) => format!("{}h", per.as_secs() / 3600),
            _ if per.as_secs().is_multiple_of(60) => format!("{}m", per.as_secs() / 60),
            _ => format!("{}s", per.as_secs()),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FromStr for Rate {
    type Err = Error;

    /// `100/s`, `6/m`, `1000/h`, `10/500ms`, `5/2s`: starts, a slash, and a
    /// period (a number, 1 when left out, and `ms`, `s`, `m` or `h`).
    fn from_str(text: &str) -> Result<Rate> {
        let invalid = |reason: &str| {
            Error::invalid_config(
                "rate",
                format!("{text:?} {reason}; write it as 100/s, 6/m or 10/500ms"),
            )
        };
        let (count, period) = text.trim().split_once('/').ok_or_else(|| invalid("has no '/'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| invalid("does not start with a whole number of starts"))?;
        let period = period.trim();
        let digits = period.bytes().take_while(u8::is_ascii_digit).count();
        let amount: u64 = match digits {
            0 => 1,
            _ => period[..digits]
                .parse()
                .map_err(|_| invalid("has a period that is too long"))?,
        };
        let unit = match &period[digits..] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid("has no period unit among ms, s, m and h")),
        };
        let per = unit
            .checked_mul(u32::try_from(amount).map_err(|_| invalid("has a period that is too long"))?)
            .ok_or_else(|| invalid("has a period that is too long"))?;
        Rate::new(count, per)
    }
}

/// The flow-control settings of one queue, stored in the store and read by
/// every claim of it. The default (all unset) is a queue without limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueLimits {
    /// The most tasks of the queue running at once, under a live lease,
    /// across every pool, process and host using the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The size of each concurrency key's window: only the `per_key`
    /// earliest enqueued unfinished tasks of a key may start. With 1, a
    /// key's tasks run one at a time in enqueue order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_key: Option<u32>,
    /// Whether a task of a key that failed for good stays in its key's
    /// window (holding the tasks behind it until it is retried, cancelled
    /// or deleted) instead of leaving it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hold_failed: bool,
    /// The most task starts of the queue per period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// The most task starts per period of each concurrency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_rate: Option<Rate>,
}

/// The statuses in a key's window without `hold_failed`.
const KEY_ORDER: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running];
/// The statuses in a key's window with `hold_failed`.
const KEY_ORDER_HOLDING: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running, TaskStatus::Failed];

impl QueueLimits {
    /// Whether no limit is set: claims of the queue work as without flow control.
    pub fn is_unlimited(&self) -> bool {
        self.limit.is_none() && self.per_key.is_none() && self.rate.is_none() && self.key_rate.is_none()
    }

    /// Checks the settings: limits of 1 to 100,000, rates as [`Rate::new`]
    /// bounds them, and `hold_failed` only with a per-key limit.
    pub fn check(&self) -> Result<()> {
        for (name, value) in [("limit", self.limit), ("per_key", self.per_key)] {
            if let Some(value) = value {
                if value == 0 || value > MAX_LIMIT {
                    return Err(Error::invalid_config(
                        name,
                        format!("is {value}; 1 to {MAX_LIMIT} are allowed (clear it to lift the limit)"),
                    ));
                }
            }
        }
        for rate in [self.rate, self.key_rate].into_iter().flatten() {
            rate.check()?;
        }
        if self.hold_failed && self.per_key.is_none() {
            return Err(Error::invalid_config(
                "hold_failed",
                "holds a key's window, so it needs a per-key limit",
            ));
        }
        Ok(())
    }

    /// The statuses of the tasks that make up a concurrency key's window:
    /// pending and running, and failed with `hold_failed`.
    pub fn window_statuses(&self) -> &'static [TaskStatus] {
        match self.hold_failed {
            true => KEY_ORDER_HOLDING,
            false => KEY_ORDER,
        }
    }

    /// Whether a claim must know, for each candidate, how many tasks of its
    /// key are ahead of it.
    pub fn needs_key_order(&self) -> bool {
        self.per_key.is_some()
    }

    /// Decides what a claim of up to `want` tasks may take from
    /// `candidates`, the due tasks of the queue in claim order, each with its
    /// concurrency key and the number of tasks of that key ahead of it in
    /// its window (see [`QueueLimits::window_statuses`]; only needed with a
    /// per-key limit). The answer holds the candidates' positions, in claim
    /// order, and the rate buckets to store in the same atomic step.
    ///
    /// A candidate is taken while the queue has fewer than `limit` tasks
    /// running (`state.running`, live leases only) plus taken, its rate
    /// bucket a token, the candidate fewer than `per_key` tasks of its key
    /// ahead of it, and its key's rate bucket a token.
    pub fn admit<'c>(
        &self,
        want: usize,
        state: &FlowState,
        candidates: impl IntoIterator<Item = (Option<&'c str>, u32)>,
        now: OffsetDateTime,
    ) -> Admitted {
        let mut budget = want;
        if let Some(limit) = self.limit {
            budget = budget.min(limit.saturating_sub(state.running) as usize);
        }
        if let Some(rate) = self.rate {
            budget = budget.min(rate.available(state.queue_tat, now) as usize);
        }
        let mut admitted = Admitted::default();
        let mut key_starts: BTreeMap<&str, u32> = BTreeMap::new();
        for (index, (key, ahead)) in candidates.into_iter().enumerate() {
            if admitted.take.len() >= budget {
                break;
            }
            if let (Some(_), Some(per_key)) = (key, self.per_key) {
                if ahead >= per_key {
                    continue;
                }
            }
            if let (Some(key), Some(rate)) = (key, self.key_rate) {
                let started = key_starts.get(key).copied().unwrap_or(0);
                if rate.available(state.key_tats.get(key).copied(), now) <= started {
                    continue;
                }
                *key_starts.entry(key).or_insert(0) += 1;
            }
            admitted.take.push(index);
        }
        let taken = admitted.take.len() as u32;
        if let (Some(rate), true) = (self.rate, taken > 0) {
            admitted.queue_tat = Some(rate.take(state.queue_tat, now, taken));
        }
        if let Some(rate) = self.key_rate {
            for (key, starts) in key_starts {
                let tat = rate.take(state.key_tats.get(key).copied(), now, starts);
                admitted.key_tats.push((key.to_owned(), tat));
            }
        }
        admitted
    }
}

impl QueueLimits {
    /// [`QueueLimits::admit`] over candidates as the SQL stores read them,
    /// `(id, concurrency key, tasks of the key ahead)` in claim order: the
    /// ids to claim, in claim order, and the decision with its buckets.
    pub fn admit_rows<'r>(
        &self,
        want: usize,
        state: &FlowState,
        rows: &'r [(String, Option<String>, i64)],
        now: OffsetDateTime,
    ) -> (Vec<&'r str>, Admitted) {
        let facts = rows
            .iter()
            .map(|(_, key, ahead)| (key.as_deref(), u32::try_from(*ahead).unwrap_or(u32::MAX)));
        let admitted = self.admit(want, state, facts, now);
        let ids = admitted.take.iter().map(|at| rows[*at].0.as_str()).collect();
        (ids, admitted)
    }
}

/// What a claim of a limited queue reads in its atomic step besides the
/// candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// The queue's running tasks whose lease has not run out.
    pub running: u32,
    /// The queue's rate bucket; `None`: full.
    pub queue_tat: Option<OffsetDateTime>,
    /// The rate buckets of the candidates' keys; a key missing is full.
    pub key_tats: BTreeMap<String, OffsetDateTime>,
}

/// What [`QueueLimits::admit`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The positions of the candidates to claim, in claim order.
    pub take: Vec<usize>,
    /// The queue's rate bucket after these starts, if it changed.
    pub queue_tat: Option<OffsetDateTime>,
    /// The key buckets after these starts.
    pub key_tats: Vec<(String, OffsetDateTime)>,
}

/// A queue with limits, as [`crate::Storage::queue_flows`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueFlow {
    /// The queue.
    pub queue: String,
    /// Its settings.
    pub limits: QueueLimits,
    /// Its running tasks whose lease has not run out.
    pub running: u32,
    /// Its rate bucket; `None`: full.
    pub queue_tat: Option<OffsetDateTime>,
}

impl QueueFlow {
    /// When the queue's rate allows its next start (`now` when it allows
    /// one, or has no rate).
    pub fn next_start(&self, now: OffsetDateTime) -> OffsetDateTime {
        match self.limits.rate {
            Some(rate) => rate.next_start(self.queue_tat, now),
            None => now,
        }
    }
}

/// The tasks of each key's window in id order, from `window`, the key and
/// id of every task of the queue in [`QueueLimits::window_statuses`]; with
/// [`ahead_of`] it gives a candidate's `ahead` for [`QueueLimits::admit`],
/// for stores that hold their tasks in memory or read them whole.
pub fn key_windows<'t>(
    window: impl IntoIterator<Item = (&'t str, crate::TaskId)>,
) -> BTreeMap<&'t str, Vec<crate::TaskId>> {
    let mut keys: BTreeMap<&str, Vec<crate::TaskId>> = BTreeMap::new();
    for (key, id) in window {
        keys.entry(key).or_default().push(id);
    }
    for ids in keys.values_mut() {
        ids.sort_unstable();
    }
    keys
}

/// The number of ids in `ordered` (sorted) before `id`.
pub fn ahead_of(ordered: Option<&Vec<crate::TaskId>>, id: crate::TaskId) -> u32 {
    ordered.map_or(0, |ids| ids.partition_point(|other| *other < id) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

    #[test]
    fn rates_parse_and_print_the_same() {
        for (text, count, per) in [
            ("100/s", 100, Duration::from_secs(1)),
            ("6/m", 6, Duration::from_secs(60)),
            ("1000/h", 1000, Duration::from_secs(3600)),
            ("10/500ms", 10, Duration::from_millis(500)),
            ("5/2s", 5, Duration::from_secs(2)),
            ("5/10m", 5, Duration::from_secs(600)),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!((rate.count, rate.per), (count, per), "{text}");
            assert_eq!(rate.to_string(), text);
        }
        for bad in [
            "",
            "100",
            "0/s",
            "x/s",
            "5/",
            "5/2",
            "5/1d",
            "5/0s",
            "2000000/s",
            "5/99999999999h",
        ] {
            let error = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(error.contains("rate"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_bucket_bursts_to_its_count_then_refills_evenly() {
        let rate = Rate::per_second(10).unwrap();
        assert_eq!(rate.available(None, NOW), 10);
        let tat = rate.take(None, NOW, 10);
        assert_eq!(rate.available(Some(tat), NOW), 0);
        let next = rate.next_start(Some(tat), NOW);
        assert_eq!(next, NOW + time::Duration::milliseconds(100));
        assert_eq!(rate.available(Some(tat), next), 1);
        assert_eq!(rate.available(Some(tat), NOW + time::Duration::seconds(5)), 10);
    }

    #[test]
    fn admit_applies_the_cap_the_windows_and_the_rates() {
        let limits = QueueLimits {
            limit: Some(3),
            per_key: Some(1),
            key_rate: Some(Rate::per_second(1).unwrap()),
            ..QueueLimits::default()
        };
        let state = FlowState {
            running: 1,
            ..FlowState::default()
        };
        // a is first in its window; its second task is behind it; b is held
        // by a task ahead; c goes; the cap stops at 2 more.
        let candidates = [
            (Some("a"), 0),
            (Some("a"), 1),
            (Some("b"), 1),
            (None, 0),
            (Some("c"), 0),
        ];
        let admitted = limits.admit(8, &state, candidates, NOW);
        assert_eq!(admitted.take, vec![0, 3]);
        assert_eq!(admitted.key_tats.len(), 1);
        // The key's rate: a second start of key a within the second waits.
        let limits = QueueLimits {
            key_rate: Some(Rate::per_second(1).unwrap()),
            ..QueueLimits::default()
        };
        let admitted = limits.admit(
            8,
            &FlowState::default(),
            [(Some("a"), 0), (Some("a"), 0), (None, 0)],
            NOW,
        );
        assert_eq!(admitted.take, vec![0, 2]);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad = [
            QueueLimits {
                limit: Some(0),
                ..QueueLimits::default()
            },
            QueueLimits {
                per_key: Some(MAX_LIMIT + 1),
                ..QueueLimits::default()
            },
            QueueLimits {
                hold_failed: true,
                ..QueueLimits::default()
            },
            QueueLimits {
                rate: Some(Rate {
                    count: 0,
                    per: Duration::from_secs(1),
                }),
                ..QueueLimits::default()
            },
        ];
        for limits in bad {
            assert!(limits.check().is_err(), "{limits:?}");
        }
        assert!(QueueLimits::default().is_unlimited());
    }
}
