//! The model-based property test: random sequences of operations run against a
//! backend and against a small in-memory model must give the same answers.
//! Tasks spread over two queues with three priorities, a few unique keys and
//! a few concurrency keys, and the queues are paused and resumed, and given
//! flow-control settings (a limit, a key window, a rate), along the way.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use time::macros::datetime;
use time::OffsetDateTime;

use super::Factory;

mod regressions;
use crate::error::Error;
use crate::queue::Enqueued;
use crate::settings::Settings;
use crate::storage::{ClaimRequest, Finish, FinishOutcome, Storage};
use crate::task::{LeaseToken, NewTask, Outcome, TaskError, TaskId, TaskStatus};
use regressions::regressions;

const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);
const LEASE: Duration = Duration::from_secs(30);
const QUEUES: [&str; 2] = ["default", "second"];

/// One step of a random run. Indexes pick among the tasks known so far (modulo
/// their number), so every generated sequence is meaningful.
#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        delay_ms: u64,
        max_retries: u32,
        interval: bool,
        queue: usize,
        priority: i16,
        key: Option<u8>,
        ckey: Option<u8>,
    },
    Limit {
        queue: usize,
        limit: Option<u32>,
        per_key: Option<u32>,
        hold_failed: bool,
        /// Starts, and the period in milliseconds.
        rate: Option<(u32, u64)>,
    },
    Claim {
        limit: usize,
        queue: usize,
    },
    Pause {
        queue: usize,
        paused: bool,
    },
    Finish {
        pick: usize,
        how: How,
    },
    Advance {
        ms: u64,
    },
    RequeueExpired,
    Cancel {
        pick: usize,
    },
    Retry {
        pick: usize,
    },
    Purge,
}

#[derive(Clone, Copy, Debug)]
enum How {
    Complete,
    Retry { delay_ms: u64 },
    Fail,
    HandBack,
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        Just(How::Complete),
        (0u64..5_000).prop_map(|delay_ms| How::Retry { delay_ms }),
        Just(How::Fail),
        Just(How::HandBack),
    ];
    prop_oneof![
        3 => (
            (0u64..3_000, 0u32..3, proptest::bool::weighted(0.2)),
            (0..QUEUES.len(), -1i16..=1, proptest::option::weighted(0.3, 0u8..3)),
            proptest::option::weighted(0.4, 0u8..3),
        )
            .prop_map(|((delay_ms, max_retries, interval), (queue, priority, key), ckey)| Op::Enqueue {
                delay_ms,
                max_retries,
                interval,
                queue,
                priority,
                key,
                ckey,
            }),
        1 => (
            0..QUEUES.len(),
            proptest::option::weighted(0.5, 1u32..4),
            proptest::option::weighted(0.5, 1u32..3),
            any::<bool>(),
            proptest::option::weighted(0.3, (1u32..4, 500u64..5_000)),
        )
            .prop_map(|(queue, limit, per_key, hold, rate)| Op::Limit {
                queue,
                limit,
                per_key,
                hold_failed: hold && per_key.is_some(),
                rate,
            }),
        3 => (0usize..4, 0..QUEUES.len()).prop_map(|(limit, queue)| Op::Claim { limit, queue }),
        1 => (0..QUEUES.len(), any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        4 => (any::<usize>(), how).prop_map(|(pick, how)| Op::Finish { pick, how }),
        2 => (0u64..40_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::RequeueExpired),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        1 => Just(Op::Purge),
    ]
}

/// What the model keeps of a task: just enough to predict every answer.
#[derive(Clone, Debug)]
struct ModelTask {
    id: TaskId,
    status: TaskStatus,
    eta: OffsetDateTime,
    attempts: u32,
    max_retries: u32,
    interval: Option<Duration>,
    series: Option<TaskId>,
    lease: Option<(LeaseToken, OffsetDateTime)>,
    finished_at: Option<OffsetDateTime>,
    queue: usize,
    priority: i16,
    key: Option<String>,
    ckey: Option<String>,
}

/// A queue's flow-control settings as the model keeps them.
#[derive(Clone, Copy, Debug, Default)]
struct ModelLimits {
    limit: Option<u32>,
    per_key: Option<u32>,
    hold_failed: bool,
    rate: Option<(u32, u64)>,
}

#[derive(Default)]
struct Model {
    tasks: Vec<ModelTask>,
    paused: HashSet<usize>,
    limits: std::collections::HashMap<usize, ModelLimits>,
    /// Each queue's rate bucket: the time its next start is owed, in
    /// nanoseconds since `T0`.
    buckets: std::collections::HashMap<usize, i128>,
    /// Claims handed out so far, valid or not: finishing a stale one must be refused.
    claims: Vec<(TaskId, LeaseToken)>,
}

impl Model {
    fn task(&mut self, id: TaskId) -> Option<&mut ModelTask> {
        self.tasks.iter_mut().find(|t| t.id == id)
    }

    /// The pending or running task holding `key`.
    fn holder(&self, key: &str) -> Option<TaskId> {
        self.tasks
            .iter()
            .find(|t| {
                t.key.as_deref() == Some(key) && matches!(t.status, TaskStatus::Pending | TaskStatus::Running)
            })
            .map(|t| t.id)
    }

    /// Ends a running task: true when it is over for good (and an interval
    /// task's successor is due).
    fn end_attempt(task: &mut ModelTask, how: How, now: OffsetDateTime) -> bool {
        task.lease = None;
        match how {
            How::Complete => task.status = TaskStatus::Completed,
            How::Fail => task.status = TaskStatus::Failed,
            How::Retry { .. } if task.attempts > task.max_retries => task.status = TaskStatus::Failed,
            How::Retry { delay_ms } => {
                task.status = TaskStatus::Pending;
                task.eta = now + Duration::from_millis(delay_ms);
                return false;
            }
            How::HandBack => {
                task.status = TaskStatus::Pending;
                task.attempts -= 1;
                return false;
            }
        }
        task.finished_at = Some(now);
        true
    }

    fn successor(task: &ModelTask, id: TaskId, now: OffsetDateTime) -> Option<ModelTask> {
        let interval = task.interval?;
        Some(ModelTask {
            id,
            status: TaskStatus::Pending,
            eta: now + interval,
            attempts: 0,
            max_retries: task.max_retries,
            interval: task.interval,
            series: task.series,
            lease: None,
            finished_at: None,
            queue: task.queue,
            priority: task.priority,
            key: task.key.clone(),
            ckey: task.ckey.clone(),
        })
    }

    /// The ids a claim of `limit` from `queue` takes at `now`, in claim
    /// order, restated from the flow-control rules: tasks due, not paused;
    /// under a limit, no more than it minus the tasks running under a live
    /// lease; under a key window of N, only tasks with fewer than N
    /// unfinished tasks of their key (and queue) enqueued before them; under
    /// a rate of C per P, a token bucket of C refilled one every P / C.
    /// Moves the queue's bucket on.
    fn claim(&mut self, queue: usize, limit: usize, now: OffsetDateTime) -> Vec<TaskId> {
        if self.paused.contains(&queue) {
            return Vec::new();
        }
        let mut due: Vec<&ModelTask> = self
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Pending && t.eta <= now && t.queue == queue)
            .collect();
        due.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.eta, t.id));
        let Some(limits) = self.limits.get(&queue).copied() else {
            return due.iter().take(limit).map(|t| t.id).collect();
        };
        let mut budget = limit;
        if let Some(cap) = limits.limit {
            let running = self
                .tasks
                .iter()
                .filter(|t| t.queue == queue && t.status == TaskStatus::Running)
                .filter(|t| t.lease.is_some_and(|(_, expires)| expires > now))
                .count();
            budget = budget.min((cap as usize).saturating_sub(running));
        }
        let at = (now - T0).whole_nanoseconds();
        let step = |(count, per_ms): (u32, u64)| i128::from(per_ms) * 1_000_000 / i128::from(count);
        if let Some(rate) = limits.rate {
            let owed = self.buckets.get(&queue).copied().unwrap_or(at).max(at);
            let room = at + i128::from(rate.1) * 1_000_000 - owed;
            budget = budget.min((room.max(0) / step(rate)).min(i128::from(rate.0)) as usize);
        }
        let in_window = |t: &ModelTask| {
            let (Some(key), Some(n)) = (&t.ckey, limits.per_key) else {
                return true;
            };
            let ahead = self
                .tasks
                .iter()
                .filter(|u| u.queue == queue && u.ckey.as_ref() == Some(key) && u.id < t.id)
                .filter(|u| {
                    matches!(u.status, TaskStatus::Pending | TaskStatus::Running)
                        || (limits.hold_failed && u.status == TaskStatus::Failed)
                })
                .count();
            ahead < n as usize
        };
        let taken: Vec<TaskId> = due
            .into_iter()
            .filter(|t| in_window(t))
            .take(budget)
            .map(|t| t.id)
            .collect();
        if let (Some(rate), false) = (limits.rate, taken.is_empty()) {
            let owed = self.buckets.get(&queue).copied().unwrap_or(at).max(at);
            self.buckets
                .insert(queue, owed + step(rate) * taken.len() as i128);
        }
        taken
    }
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(fail(format!($($fmt)+)));
        }
    };
}

async fn run(store: &dyn Storage, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut now = T0;
    let settings = Settings::default();
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Enqueue {
                delay_ms,
                max_retries,
                interval,
                queue,
                priority,
                key,
                ckey,
            } => {
                let key = key.map(|k| format!("key-{k}"));
                let ckey = ckey.map(|k| format!("customer-{k}"));
                let mut new = NewTask::new("model")
                    .args(vec![json!(step)])
                    .max_retries(max_retries)
                    .queue(QUEUES[queue])
                    .priority(priority);
                new = new.eta(now + Duration::from_millis(delay_ms));
                if interval {
                    new = new.interval(Duration::from_secs(20));
                }
                if let Some(key) = &key {
                    new = new.unique_key(key.clone());
                }
                if let Some(ckey) = &ckey {
                    new = new.concurrency_key(ckey.clone());
                }
                let task = new.into_task(&settings, now).unwrap();
                let holder = key.as_deref().and_then(|key| model.holder(key));
                let answer = store
                    .enqueue(vec![task.clone()])
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                let expected = Enqueued {
                    id: holder.unwrap_or(task.id),
                    duplicate: holder.is_some(),
                };
                check!(
                    answer == [expected],
                    "{ctx}: answered {answer:?}, model expected {expected:?}"
                );
                if holder.is_none() {
                    model.tasks.push(ModelTask {
                        id: task.id,
                        status: TaskStatus::Pending,
                        eta: task.eta,
                        attempts: 0,
                        max_retries,
                        interval: task.interval,
                        series: task.series,
                        lease: None,
                        finished_at: None,
                        queue,
                        priority,
                        key,
                        ckey,
                    });
                }
            }
            Op::Limit {
                queue,
                limit,
                per_key,
                hold_failed,
                rate,
            } => {
                let limits = crate::flow::QueueLimits {
                    limit,
                    per_key,
                    hold_failed,
                    rate: rate.map(|(count, ms)| crate::flow::Rate {
                        count,
                        per: Duration::from_millis(ms),
                    }),
                    key_rate: None,
                };
                store
                    .set_queue_limits(QUEUES[queue], limits)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                let limits = ModelLimits {
                    limit,
                    per_key,
                    hold_failed,
                    rate,
                };
                match limit.is_none() && per_key.is_none() && rate.is_none() {
                    true => model.limits.remove(&queue),
                    false => model.limits.insert(queue, limits),
                };
            }
            Op::Pause { queue, paused } => {
                store
                    .set_paused(QUEUES[queue], paused)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                match paused {
                    true => model.paused.insert(queue),
                    false => model.paused.remove(&queue),
                };
            }
            Op::Claim { limit, queue } => {
                let expected = model.claim(queue, limit, now);
                let request = ClaimRequest {
                    queue: QUEUES[queue].into(),
                    worker_id: "model".into(),
                    limit,
                    lease_for: LEASE,
                    now,
                };
                let claimed = store
                    .claim(request)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                let got: Vec<TaskId> = claimed.iter().map(|t| t.id).collect();
                check!(
                    got == expected,
                    "{ctx}: claimed {got:?}, model expected {expected:?}"
                );
                for task in claimed {
                    let token = task
                        .lease
                        .as_ref()
                        .map(|l| l.token)
                        .ok_or_else(|| fail(format!("{ctx}: no lease")))?;
                    let m = model.task(task.id).unwrap();
                    m.status = TaskStatus::Running;
                    m.attempts += 1;
                    m.lease = Some((token, now + LEASE));
                    check!(
                        task.attempts == m.attempts,
                        "{ctx}: attempts {} vs model {}",
                        task.attempts,
                        m.attempts
                    );
                    model.claims.push((task.id, token));
                }
            }
            Op::Finish { pick, how } => {
                if model.claims.is_empty() {
                    continue;
                }
                let (id, token) = model.claims[pick % model.claims.len()];
                let outcome = match how {
                    How::Complete => Outcome::Complete { result: json!(step) },
                    How::Retry { delay_ms } => Outcome::Retry {
                        error: TaskError::new("model", "retry", 1, true),
                        at: now + Duration::from_millis(delay_ms),
                    },
                    How::Fail => Outcome::Fail {
                        error: TaskError::new("model", "fail", 1, false),
                    },
                    How::HandBack => Outcome::HandBack,
                };
                let answer = store
                    .finish(vec![Finish { id, token, outcome }], now)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                let holds = model.task(id).is_some_and(|t| {
                    t.status == TaskStatus::Running && t.lease.is_some_and(|(tok, _)| tok == token)
                });
                match (holds, &answer[..]) {
                    (false, [FinishOutcome::LeaseLost]) => {}
                    (true, [FinishOutcome::Applied { next, .. }]) => {
                        let task = model.task(id).unwrap();
                        let over = Model::end_attempt(task, how, now);
                        let task = task.clone();
                        let expect_next = over && task.interval.is_some();
                        check!(
                            next.is_some() == expect_next,
                            "{ctx}: next {next:?}, model expected one: {expect_next}"
                        );
                        if let Some(next) = next {
                            model.tasks.push(Model::successor(&task, *next, now).unwrap());
                        }
                    }
                    _ => {
                        return Err(fail(format!(
                            "{ctx}: answer {answer:?}, model says lease held: {holds}"
                        )))
                    }
                }
            }
            Op::Advance { ms } => now += Duration::from_millis(ms),
            Op::RequeueExpired => {
                let got: HashSet<TaskId> = store
                    .requeue_expired(now)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?
                    .into_iter()
                    .collect();
                let mut expected = HashSet::new();
                let mut successors = Vec::new();
                for task in model.tasks.iter_mut() {
                    if task.status == TaskStatus::Running && task.lease.is_some_and(|(_, exp)| exp <= now) {
                        expected.insert(task.id);
                        if Model::end_attempt(task, How::Retry { delay_ms: 0 }, now)
                            && task.interval.is_some()
                        {
                            successors.push(task.clone());
                        }
                    }
                }
                check!(
                    got == expected,
                    "{ctx}: requeued {got:?}, model expected {expected:?}"
                );
                // Successors' ids are the backend's: find them among its pending tasks.
                for task in successors {
                    let known: HashSet<TaskId> = model.tasks.iter().map(|t| t.id).collect();
                    let listed = store
                        .list(Default::default())
                        .await
                        .map_err(|e| fail(format!("{ctx}: {e}")))?;
                    let next = listed
                        .iter()
                        .find(|t| !known.contains(&t.id) && t.series == task.series)
                        .ok_or_else(|| fail(format!("{ctx}: no successor for {}", task.id)))?;
                    model.tasks.push(Model::successor(&task, next.id, now).unwrap());
                }
            }
            Op::Cancel { pick } => {
                if model.tasks.is_empty() {
                    continue;
                }
                let target = model.tasks[pick % model.tasks.len()].clone();
                let expected: HashSet<TaskId> = model
                    .tasks
                    .iter()
                    .filter(|t| match target.series {
                        Some(series) => t.series == Some(series),
                        None => t.id == target.id,
                    })
                    .filter(|t| matches!(t.status, TaskStatus::Pending | TaskStatus::Running))
                    .map(|t| t.id)
                    .collect();
                match store.cancel(target.id, now).await {
                    Ok(ids) => {
                        let got: HashSet<TaskId> = ids.into_iter().collect();
                        check!(
                            got == expected,
                            "{ctx}: cancelled {got:?}, model expected {expected:?}"
                        );
                        for task in model.tasks.iter_mut().filter(|t| got.contains(&t.id)) {
                            task.status = TaskStatus::Cancelled;
                            task.lease = None;
                            task.finished_at = Some(now);
                        }
                    }
                    Err(Error::Conflict { .. }) => {
                        check!(expected.is_empty(), "{ctx}: refused, model expected {expected:?}");
                    }
                    Err(e) => return Err(fail(format!("{ctx}: {e}"))),
                }
            }
            Op::Retry { pick } => {
                if model.tasks.is_empty() {
                    continue;
                }
                let index = pick % model.tasks.len();
                let id = model.tasks[index].id;
                let answer = store.retry(id, now).await;
                let held = model.tasks[index]
                    .key
                    .as_deref()
                    .and_then(|key| model.holder(key));
                let task = &mut model.tasks[index];
                match (task.status, answer) {
                    (TaskStatus::Failed, Err(Error::Conflict { .. })) if held.is_some() => {}
                    (TaskStatus::Failed, Ok(())) if held.is_none() => {
                        task.status = TaskStatus::Pending;
                        task.attempts = 0;
                        task.eta = now;
                        task.interval = None;
                        task.series = None;
                        task.finished_at = None;
                    }
                    (TaskStatus::Failed, Err(e)) => return Err(fail(format!("{ctx}: {e}"))),
                    (_, Err(Error::Conflict { .. })) => {}
                    (status, other) => return Err(fail(format!("{ctx}: {other:?} for a {status} task"))),
                }
            }
            Op::Purge => {
                let cutoff = now - Duration::from_secs(10);
                let purged = store
                    .purge(cutoff)
                    .await
                    .map_err(|e| fail(format!("{ctx}: {e}")))?;
                let before = model.tasks.len();
                model
                    .tasks
                    .retain(|t| !(t.status.is_finished() && t.finished_at.is_some_and(|at| at < cutoff)));
                let expected = (before - model.tasks.len()) as u64;
                check!(
                    purged == expected,
                    "{ctx}: purged {purged}, model expected {expected}"
                );
            }
        }
        compare(store, &model, &ctx).await?;
    }
    Ok(())
}

/// Every task's status, attempts and (while pending) eta must match the model.
async fn compare(store: &dyn Storage, model: &Model, ctx: &str) -> Result<(), TestCaseError> {
    let listed = store
        .list(Default::default())
        .await
        .map_err(|e| fail(format!("{ctx}: {e}")))?;
    check!(
        listed.len() == model.tasks.len(),
        "{ctx}: store has {} tasks, model {}",
        listed.len(),
        model.tasks.len()
    );
    for task in &listed {
        let m = model
            .tasks
            .iter()
            .find(|m| m.id == task.id)
            .ok_or_else(|| fail(format!("{ctx}: unexpected task {}", task.id)))?;
        check!(
            task.status == m.status,
            "{ctx}: {} is {}, model says {}",
            task.id,
            task.status,
            m.status
        );
        check!(
            task.attempts == m.attempts,
            "{ctx}: {} has {} attempts, model {}",
            task.id,
            task.attempts,
            m.attempts
        );
        check!(
            task.queue == QUEUES[m.queue] && task.priority == m.priority && task.unique_key == m.key,
            "{ctx}: {} is in {} at {} with key {:?}, model says {} at {} with {:?}",
            task.id,
            task.queue,
            task.priority,
            task.unique_key,
            QUEUES[m.queue],
            m.priority,
            m.key
        );
        if m.status == TaskStatus::Pending {
            check!(
                task.eta == m.eta,
                "{ctx}: {} eta {} vs model {}",
                task.id,
                task.eta,
                m.eta
            );
        }
    }
    Ok(())
}

/// Runs the model test: the [`regressions`], then 32 random sequences of up
/// to 60 operations, each on a fresh store from `factory`.
pub(super) fn check(factory: &dyn Factory) -> Result<(), String> {
    let runtime = super::runtime();
    for (n, ops) in regressions().into_iter().enumerate() {
        runtime
            .block_on(async {
                let fresh = factory.open().await;
                run(&*fresh.store, ops).await
            })
            .map_err(|e| format!("regression input {n}: {e}"))?;
    }
    super::property(
        factory,
        32,
        proptest::collection::vec(op(), 1..60),
        |store, ops| Box::pin(run(store, ops)),
    )
}
