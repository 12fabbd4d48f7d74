//! The checking layer: every caller (the client, worker pools, the CLI, the
//! dashboard, migration, the conformance suite) reaches a backend through
//! [`Checked`], which validates every input once and applies the rules that
//! do not depend on storage, so backends only store.
//!
//! What the layer decides, before a backend sees the call:
//!
//! - new records ([`enqueue`](Storage::enqueue), [`import`](Storage::import)):
//!   pending only for an enqueue, no `running` record, no id twice, every
//!   time, duration and JSON value within what a store holds
//!   ([`new_work`], [`history`]);
//! - progress values in range ([`Progress::check`]);
//! - queue names ([`crate::queue::check_name`]);
//! - schedules and their ticks ([`crate::schedule::check_schedule`],
//!   [`crate::schedule::check_fire`], the next tick a time a store holds);
//! - empty calls answered without a round trip (a claim of none, a renewal
//!   or finish of nothing).
//!
//! What stays with each backend is what needs its data in the same atomic
//! step: ids already stored, unique keys held, the lease token fence, the
//! status machine applied through the [`Task`] methods.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::flow::{QueueFlow, QueueLimits};
use crate::queue::{Enqueued, QueueStats};
use crate::schedule::{PutAnswer, PutSchedule, Schedule};
use crate::storage::{
    ClaimRequest, Damaged, Finish, FinishOutcome, LeaseRef, ListQuery, RenewOutcome, StatusCounts, Storage,
};
use crate::task::{Progress, Task, TaskId, TaskStatus};
use crate::upkeep::WorkerBeat;

/// A store behind the checking layer; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Checked {
    inner: Arc<dyn Storage>,
}

impl Checked {
    /// `storage` behind the checking layer, once: a store already behind
    /// it is given back as it is.
    pub fn wrap(storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
        if storage.as_any().is_some_and(|any| any.is::<Checked>()) {
            return storage;
        }
        Arc::new(Checked { inner: storage })
    }

    /// The store behind the layer.
    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }
}

/// The backend of type `T` behind `storage`, looking through the checking
/// layer: how a program reaches a backend's own API (PostgreSQL's
/// transaction enqueue) through an `Arc<dyn Storage>`.
pub fn backend<T: 'static>(storage: &dyn Storage) -> Option<&T> {
    let any = storage.as_any()?;
    if let Some(checked) = any.downcast_ref::<Checked>() {
        return backend(&*checked.inner);
    }
    any.downcast_ref()
}

/// The checks of records offered as new work ([`Storage::enqueue`], and a
/// program's own transaction on PostgreSQL): pending, then [`history`]'s.
pub fn new_work(tasks: &[Task]) -> Result<()> {
    crate::limits::check_pending(tasks)?;
    history(tasks)
}

/// The checks of records offered to [`Storage::import`]: no `running`
/// record, no id twice, every value within what a store holds.
pub fn history(tasks: &[Task]) -> Result<()> {
    crate::limits::check_new_records(tasks)
}

#[async_trait]
impl Storage for Checked {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        new_work(&tasks)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.enqueue(tasks).await
    }

    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        history(&tasks)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.import(tasks).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        self.inner.claim(request).await
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.renew(leases, lease_for, now).await
    }

    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        progress.check()?;
        self.inner.set_progress(lease, progress).await
    }

    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.finish(finishes, now).await
    }

    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        if queues.is_empty() {
            return Ok(None);
        }
        self.inner.next_due(queues).await
    }

    async fn get(&self, id: TaskId) -> Result<Task> {
        self.inner.get(id).await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        self.inner.list(query).await
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.inner.cancel(id, now).await
    }

    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.inner.retry(id, now).await
    }

    async fn counts(&self) -> Result<StatusCounts> {
        self.inner.counts().await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        crate::queue::check_name(queue)?;
        self.inner.set_paused(queue, paused).await
    }

    async fn paused(&self) -> Result<Vec<String>> {
        self.inner.paused().await
    }

    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        crate::queue::check_name(queue)?;
        limits.check()?;
        self.inner.set_queue_limits(queue, limits).await
    }

    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<QueueFlow>> {
        self.inner.queue_flows(now).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.inner.queue_stats().await
    }

    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        crate::schedule::check_schedule(&schedule)?;
        self.inner.put_schedule(schedule, mode).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.inner.schedules().await
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.inner.remove_schedule(name).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.inner.set_schedule_paused(name, paused).await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        crate::schedule::check_fire(&task, next)?;
        self.inner.fire_schedule(name, due, next, task).await
    }

    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        crate::limits::check_time("next_run", next)?;
        self.inner.skip_schedule(name, due, next).await
    }

    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64> {
        self.inner.purge(finished_before).await
    }

    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64> {
        if !status.is_finished() {
            return Err(Error::invalid_config(
                "status",
                format!("{status} tasks are never pruned; only completed, failed and cancelled ones are"),
            ));
        }
        if !(1..=MAX_PRUNE).contains(&limit) {
            return Err(Error::invalid_config(
                "limit",
                format!("{limit} is not allowed; prune 1 to {} tasks a call", MAX_PRUNE),
            ));
        }
        self.inner.prune(status, finished_before, limit).await
    }

    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: Duration) -> Result<bool> {
        if chore.is_empty() || chore.len() > 100 || chore.chars().any(char::is_control) {
            return Err(Error::invalid_config(
                "chore",
                format!("{chore:?} is not allowed; expected 1 to 100 printable characters"),
            ));
        }
        crate::limits::check_duration("every", every)?;
        self.inner.take_turn(chore, now, every).await
    }

    async fn beat(&self, beat: WorkerBeat) -> Result<()> {
        crate::upkeep::check_beat(&beat)?;
        self.inner.beat(beat).await
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>> {
        self.inner.workers().await
    }

    async fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        self.inner.remove_worker(worker_id).await
    }

    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.inner.requeue_expired(now).await
    }

    async fn store_time(&self) -> Result<Option<OffsetDateTime>> {
        self.inner.store_time().await
    }

    fn wake_ups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.wake_ups()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn damaged(&self) -> Result<Vec<Damaged>> {
        self.inner.damaged().await
    }
}

/// The most tasks one prune call may ask for.
const MAX_PRUNE: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStorage;

    #[test]
    fn the_layer_is_put_on_once_and_looked_through() {
        let store = Checked::wrap(Arc::new(MemoryStorage::new()));
        let again = Checked::wrap(store.clone());
        assert!(
            Arc::ptr_eq(&store, &again),
            "a checked store is not wrapped twice"
        );
        assert!(
            backend::<MemoryStorage>(&*store).is_none(),
            "memory offers no API of its own"
        );
        assert_eq!(store.backend_name(), "memory");
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_the_backend() {
        let store = Checked::wrap(Arc::new(MemoryStorage::new()));
        let refused = store.set_paused("has space", true).await;
        assert!(
            matches!(refused, Err(crate::Error::InvalidConfig { .. })),
            "{refused:?}"
        );
        assert!(store.paused().await.unwrap().is_empty());
        let mut done = crate::NewTask::new("t")
            .into_task(&crate::Settings::default(), OffsetDateTime::now_utc())
            .unwrap();
        done.cancel(OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(
            store.enqueue(vec![done.clone()]).await,
            Err(crate::Error::Conflict { .. })
        ));
        assert_eq!(store.counts().await.unwrap().total(), 0);
        assert_eq!(
            store.import(vec![done]).await.unwrap().len(),
            1,
            "history goes through import"
        );
    }
}
