//! `MemoryStorage`: a complete in-process backend, for users' tests and for
//! programs that need no persistence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::flow::{ahead_of, key_windows, FlowState, QueueFlow, QueueLimits};
use crate::queue::{holds_key, split_duplicates, Enqueued, QueueStats};
use crate::schedule::{PutAnswer, PutSchedule, Schedule};
use crate::storage::{
    ClaimRequest, Finish, FinishOutcome, LeaseRef, ListOrder, ListQuery, RenewOutcome, StatusCounts, Storage,
};
use crate::task::{cancel_in_scope, CancelScope, Finished, Progress, Task, TaskId, TaskStatus};
use crate::upkeep::WorkerBeat;

/// A [`Storage`] that keeps every task in memory, behind one lock.
///
/// It passes the whole conformance suite, so code tested against it behaves the
/// same on the file and SQLite backends. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, Task>,
    /// Pending tasks by queue, then priority, then (eta, id): a claim walks a
    /// queue's priorities from the highest and takes the due tasks at the
    /// front of each, so it costs O(priorities + log n), however many tasks
    /// wait for a later eta.
    pending: HashMap<String, BTreeMap<i16, BTreeSet<(OffsetDateTime, TaskId)>>>,
    /// The latest task to take each unique key: it holds the key while live,
    /// and within its window once finished ([`Task::holds_key_at`]).
    keys: HashMap<String, TaskId>,
    /// The paused queues.
    paused: BTreeSet<String>,
    /// The flow-control settings, by queue.
    limits: BTreeMap<String, QueueLimits>,
    /// The rate buckets, by queue and concurrency key (`None`: the queue's).
    buckets: HashMap<(String, Option<String>), OffsetDateTime>,
    /// The schedules, by name.
    schedules: BTreeMap<String, Schedule>,
    /// When each store-wide chore last had a turn taken.
    turns: HashMap<String, OffsetDateTime>,
    /// The pools' heartbeats, by worker id.
    workers: BTreeMap<String, WorkerBeat>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written task: every
        // change below is applied to a copy and written back whole.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Writes a task back, keeping the pending and key indexes in step.
    fn put(&mut self, task: Task) {
        self.unindex(task.id);
        if task.status == TaskStatus::Pending {
            self.pending
                .entry(task.queue.clone())
                .or_default()
                .entry(task.priority)
                .or_default()
                .insert((task.eta, task.id));
        }
        if let Some(key) = task.unique_key.clone() {
            // A finished task with a window keeps the key it took, but never
            // takes one back from a later task.
            let keeps = task.unique_window.is_some() && self.keys.get(&key).is_none_or(|id| *id == task.id);
            if holds_key(task.status) || keeps {
                self.keys.insert(key, task.id);
            }
        }
        self.tasks.insert(task.id, task);
    }

    /// The task holding `key` at `now`.
    fn key_holder(&self, key: &str, now: OffsetDateTime) -> Option<TaskId> {
        let id = self.keys.get(key)?;
        self.tasks
            .get(id)
            .filter(|task| task.holds_key_at(now))
            .map(|task| task.id)
    }

    fn remove(&mut self, id: TaskId) {
        self.unindex(id);
        self.tasks.remove(&id);
    }

    /// Takes the stored version of task `id` out of the indexes.
    fn unindex(&mut self, id: TaskId) {
        let Some(old) = self.tasks.get(&id) else { return };
        if old.status == TaskStatus::Pending {
            if let Some(priorities) = self.pending.get_mut(&old.queue) {
                if let Some(level) = priorities.get_mut(&old.priority) {
                    level.remove(&(old.eta, old.id));
                    if level.is_empty() {
                        priorities.remove(&old.priority);
                    }
                }
            }
        }
        if let Some(key) = &old.unique_key {
            if self.keys.get(key) == Some(&id) {
                self.keys.remove(key);
            }
        }
    }

    /// The due tasks of `queue` in claim order, at most `limit`.
    fn due(&self, queue: &str, now: OffsetDateTime, limit: usize) -> Vec<TaskId> {
        let Some(priorities) = self.pending.get(queue) else {
            return Vec::new();
        };
        priorities
            .values()
            .rev()
            .flat_map(|level| level.iter().take_while(|(eta, _)| *eta <= now))
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The due tasks of a limited queue that `limits` lets `request` take,
    /// with the rate buckets moved on.
    fn admitted(&mut self, limits: &QueueLimits, request: &ClaimRequest) -> Vec<TaskId> {
        let (queue, now) = (request.queue.as_str(), request.now);
        let candidates = self.due(queue, now, usize::MAX);
        let of_queue = || self.tasks.values().filter(|task| task.queue == queue);
        let running = of_queue()
            .filter(|task| task.status == TaskStatus::Running)
            .filter(|task| task.lease.as_ref().is_some_and(|lease| lease.expires_at > now))
            .count() as u32;
        let statuses = limits.window_statuses();
        let windows = key_windows(
            of_queue()
                .filter(|task| limits.needs_key_order() && statuses.contains(&task.status))
                .filter_map(|task| Some((task.concurrency_key.as_deref()?, task.id))),
        );
        let bucket = |key: Option<&str>| {
            self.buckets
                .get(&(queue.to_owned(), key.map(str::to_owned)))
                .copied()
        };
        let mut state = FlowState {
            running,
            queue_tat: bucket(None),
            ..FlowState::default()
        };
        let facts: Vec<(Option<&str>, u32)> = candidates
            .iter()
            .map(|id| {
                let key = self.tasks[id].concurrency_key.as_deref();
                (key, key.map_or(0, |key| ahead_of(windows.get(key), *id)))
            })
            .collect();
        for key in facts.iter().filter_map(|(key, _)| *key) {
            if let Some(tat) = bucket(Some(key)) {
                state.key_tats.insert(key.to_owned(), tat);
            }
        }
        let admitted = limits.admit(request.limit, &state, facts, now);
        // A bucket whose time has passed is full, as a missing one.
        self.buckets.retain(|_, tat| *tat > now);
        if let Some(tat) = admitted.queue_tat {
            self.buckets.insert((queue.to_owned(), None), tat);
        }
        for (key, tat) in admitted.key_tats {
            self.buckets.insert((queue.to_owned(), Some(key)), tat);
        }
        admitted.take.iter().map(|at| candidates[*at]).collect()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.import(tasks).await
    }

    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        let mut inner = self.lock();
        if let Some(task) = tasks.iter().find(|task| inner.tasks.contains_key(&task.id)) {
            return Err(Error::conflict(task.id, "a task with this id already exists"));
        }
        let (tasks, answers) = split_duplicates(tasks, |key, now| Ok(inner.key_holder(key, now)))?;
        for task in tasks {
            inner.put(task);
        }
        Ok(answers)
    }

    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        let mut inner = self.lock();
        Ok(inner
            .tasks
            .get_mut(&lease.id)
            .is_some_and(|task| task.set_progress(lease.token, progress)))
    }

    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        let mut inner = self.lock();
        let existing = inner.schedules.get(&schedule.name).cloned();
        let (write, answer) = crate::schedule::decide_put(schedule, existing, mode);
        if let Some(write) = write {
            inner.schedules.insert(write.name.clone(), write);
        }
        Ok(answer)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let mut inner = self.lock();
        Ok(inner
            .schedules
            .get_mut(name)
            .map(|schedule| schedule.paused = paused)
            .is_some())
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        let mut inner = self.lock();
        if !crate::schedule::may_fire(inner.schedules.get(name), due) {
            return Ok(None);
        }
        if inner.tasks.contains_key(&task.id) {
            return Err(Error::conflict(task.id, "a task with this id already exists"));
        }
        let (tasks, answers) = split_duplicates(vec![task], |key, now| Ok(inner.key_holder(key, now)))?;
        for task in tasks {
            inner.put(task);
        }
        let answer = answers.into_iter().next();
        if let Some(schedule) = inner.schedules.get_mut(name) {
            schedule.fired(due, next, answer.as_ref());
        }
        Ok(answer)
    }

    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        let mut inner = self.lock();
        if !crate::schedule::may_fire(inner.schedules.get(name), due) {
            return Ok(false);
        }
        if let Some(schedule) = inner.schedules.get_mut(name) {
            schedule.fired(due, next, None);
        }
        Ok(true)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        let mut inner = self.lock();
        if inner.paused.contains(&request.queue) {
            return Ok(Vec::new());
        }
        let due = match inner.limits.get(&request.queue).cloned() {
            Some(limits) => inner.admitted(&limits, &request),
            None => inner.due(&request.queue, request.now, request.limit),
        };
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            let mut task = inner.tasks[&id].clone();
            task.claim(&request.worker_id, request.lease_for, request.now)?;
            inner.put(task.clone());
            claimed.push(task);
        }
        Ok(claimed)
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        let mut inner = self.lock();
        Ok(leases
            .iter()
            .map(|lease| match inner.tasks.get_mut(&lease.id) {
                Some(task) => match task.renew(lease.token, lease_for, now) {
                    Some(expires_at) => RenewOutcome::Renewed { expires_at },
                    None => RenewOutcome::Lost,
                },
                None => RenewOutcome::Lost,
            })
            .collect())
    }

    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        let mut inner = self.lock();
        let mut answers = Vec::with_capacity(finishes.len());
        for finish in finishes {
            let Some(mut task) = inner.tasks.get(&finish.id).cloned() else {
                answers.push(FinishOutcome::LeaseLost);
                continue;
            };
            let Finished::Applied { status, next } = task.finish(finish.token, finish.outcome, now)? else {
                answers.push(FinishOutcome::LeaseLost);
                continue;
            };
            inner.put(task);
            let next_id = next.as_ref().map(|next| next.id);
            if let Some(next) = next {
                inner.put(next);
            }
            answers.push(FinishOutcome::Applied {
                status,
                next: next_id,
            });
        }
        Ok(answers)
    }

    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        let inner = self.lock();
        Ok(queues
            .iter()
            .filter(|queue| !inner.paused.contains(*queue))
            .filter_map(|queue| inner.pending.get(queue))
            .flat_map(|priorities| priorities.values())
            .filter_map(|level| level.first().map(|(eta, _)| *eta))
            .min())
    }

    async fn get(&self, id: TaskId) -> Result<Task> {
        self.lock()
            .tasks
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(id))
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        let inner = self.lock();
        let matches = |task: &&Task| {
            query.status.is_none_or(|status| task.status == status)
                && query.queue.as_ref().is_none_or(|queue| &task.queue == queue)
                && query
                    .func_path
                    .as_ref()
                    .is_none_or(|func| &task.func_path == func)
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        let tasks: Vec<Task> = match (query.order, query.after) {
            (ListOrder::OldestFirst, None) => inner
                .tasks
                .values()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
            (ListOrder::OldestFirst, Some(after)) => inner
                .tasks
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .map(|(_, t)| t)
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
            (ListOrder::NewestFirst, None) => inner
                .tasks
                .values()
                .rev()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
            (ListOrder::NewestFirst, Some(after)) => inner
                .tasks
                .range(..after)
                .rev()
                .map(|(_, t)| t)
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
        };
        Ok(tasks)
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        let mut inner = self.lock();
        let target = inner.tasks.get(&id).cloned();
        let scope: Vec<Task> = match CancelScope::of(id, target.as_ref()) {
            CancelScope::Task(_) => target.iter().cloned().collect(),
            CancelScope::Series(series) => inner
                .tasks
                .values()
                .filter(|t| t.series == Some(series))
                .cloned()
                .collect(),
        };
        let cancelled = cancel_in_scope(id, target.as_ref(), scope, now)?;
        let ids = cancelled.iter().map(|t| t.id).collect();
        for task in cancelled {
            inner.put(task);
        }
        Ok(ids)
    }

    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        let mut inner = self.lock();
        let mut task = inner
            .tasks
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(id))?;
        task.retry(now)?;
        // A retry by hand competes with live holders only: a window keeps
        // new enqueues out, not an operator's second try.
        if let Some(key) = &task.unique_key {
            if let Some(holder) = inner.keys.get(key).filter(|holder| {
                **holder != id && inner.tasks.get(holder).is_some_and(|t| holds_key(t.status))
            }) {
                return Err(crate::queue::key_held(id, key, *holder));
            }
        }
        inner.put(task);
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut inner = self.lock();
        match paused {
            true => inner.paused.insert(queue.to_owned()),
            false => inner.paused.remove(queue),
        };
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<String>> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        let mut inner = self.lock();
        match limits.is_unlimited() {
            true => inner.limits.remove(queue),
            false => inner.limits.insert(queue.to_owned(), limits),
        };
        Ok(())
    }

    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<QueueFlow>> {
        let inner = self.lock();
        Ok(inner
            .limits
            .iter()
            .map(|(queue, limits)| QueueFlow {
                queue: queue.clone(),
                limits: limits.clone(),
                running: inner
                    .tasks
                    .values()
                    .filter(|task| task.queue == *queue && task.status == TaskStatus::Running)
                    .filter(|task| task.lease.as_ref().is_some_and(|lease| lease.expires_at > now))
                    .count() as u32,
                queue_tat: inner
                    .buckets
                    .get(&(queue.clone(), None))
                    .copied()
                    .filter(|tat| *tat > now),
            })
            .collect())
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let inner = self.lock();
        Ok(crate::queue::stats_of(inner.tasks.values(), &inner.paused))
    }

    async fn counts(&self) -> Result<StatusCounts> {
        let inner = self.lock();
        let mut counts = StatusCounts::default();
        for task in inner.tasks.values() {
            counts.add(task.status);
        }
        Ok(counts)
    }

    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64> {
        let mut inner = self.lock();
        let old: Vec<TaskId> = inner
            .tasks
            .values()
            .filter(|t| t.status.is_finished() && t.finished_at.is_some_and(|at| at < finished_before))
            .map(|t| t.id)
            .collect();
        for id in &old {
            inner.remove(*id);
        }
        Ok(old.len() as u64)
    }

    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64> {
        let mut inner = self.lock();
        let mut old: Vec<(OffsetDateTime, TaskId)> = inner
            .tasks
            .values()
            .filter(|t| t.status == status && t.status.is_finished())
            .filter_map(|t| Some((t.finished_at.filter(|at| *at < finished_before)?, t.id)))
            .collect();
        old.sort_unstable();
        old.truncate(limit);
        for (_, id) in &old {
            inner.remove(*id);
        }
        Ok(old.len() as u64)
    }

    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: Duration) -> Result<bool> {
        let mut inner = self.lock();
        let due = crate::earlier(now, every);
        match inner.turns.get(chore) {
            Some(last) if *last > due => Ok(false),
            _ => {
                inner.turns.insert(chore.to_owned(), now);
                Ok(true)
            }
        }
    }

    async fn beat(&self, beat: WorkerBeat) -> Result<()> {
        let mut inner = self.lock();
        let gone = crate::upkeep::gone_before(beat.last_seen);
        inner.workers.retain(|_, b| b.expires_at >= gone);
        inner.workers.insert(beat.worker_id.clone(), beat);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    async fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        Ok(self.lock().workers.remove(worker_id).is_some())
    }

    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        let mut inner = self.lock();
        let mut expired: Vec<(OffsetDateTime, TaskId)> = inner
            .tasks
            .values()
            .filter(|t| t.lease_expired(now))
            .map(|t| (t.lease.as_ref().map_or(now, |l| l.expires_at), t.id))
            .collect();
        expired.sort_unstable();
        let expired: Vec<TaskId> = expired
            .into_iter()
            .take(crate::storage::REQUEUE_BATCH)
            .map(|(_, id)| id)
            .collect();
        for id in &expired {
            let mut task = inner.tasks[id].clone();
            let next = task.expire_lease(now)?;
            inner.put(task);
            if let Some(next) = next {
                inner.put(next);
            }
        }
        Ok(expired)
    }
}
