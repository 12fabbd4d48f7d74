//! The pool against a store that fails while the pool records outcomes: a
//! custom backend that panics, and a store whose finishes fail for a while
//! (a lock timeout, a database whose retries ran out).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use omniq_core::{ClaimRequest, MemoryStorage, NewTask, Settings, Storage, StorageExt, Task, TaskId};
use omniq_worker::{HandlerError, Registry, Signals, TokioClock, WorkerPool};
use tokio::time::Instant;

fn adder() -> Registry {
    let mut registry = Registry::new();
    registry.register("math.add", |(a, b): (i64, i64)| async move {
        Ok::<_, HandlerError>(a + b)
    });
    registry
}

/// A store whose `finish` panics once, as a buggy custom backend might, or
/// fails with an error a number of times.
#[derive(Debug)]
struct PanicsOnce {
    inner: MemoryStorage,
    armed: std::sync::atomic::AtomicBool,
    /// How many more finishes fail with an error.
    failures: std::sync::atomic::AtomicU32,
}

#[omniq_core::async_trait]
impl Storage for PanicsOnce {
    fn backend_name(&self) -> &'static str {
        "panics-once"
    }
    async fn enqueue(&self, tasks: Vec<Task>) -> omniq_core::Result<Vec<omniq_core::Enqueued>> {
        self.inner.enqueue(tasks).await
    }
    async fn import(&self, tasks: Vec<Task>) -> omniq_core::Result<Vec<omniq_core::Enqueued>> {
        self.inner.import(tasks).await
    }
    async fn claim(&self, request: ClaimRequest) -> omniq_core::Result<Vec<Task>> {
        self.inner.claim(request).await
    }
    async fn put_schedule(
        &self,
        schedule: omniq_core::Schedule,
        mode: omniq_core::PutSchedule,
    ) -> omniq_core::Result<omniq_core::PutAnswer> {
        self.inner.put_schedule(schedule, mode).await
    }
    async fn schedules(&self) -> omniq_core::Result<Vec<omniq_core::Schedule>> {
        self.inner.schedules().await
    }
    async fn remove_schedule(&self, name: &str) -> omniq_core::Result<bool> {
        self.inner.remove_schedule(name).await
    }
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> omniq_core::Result<bool> {
        self.inner.set_schedule_paused(name, paused).await
    }
    async fn fire_schedule(
        &self,
        name: &str,
        due: time::OffsetDateTime,
        next: time::OffsetDateTime,
        task: Task,
    ) -> omniq_core::Result<Option<omniq_core::Enqueued>> {
        self.inner.fire_schedule(name, due, next, task).await
    }
    async fn skip_schedule(
        &self,
        name: &str,
        due: time::OffsetDateTime,
        next: time::OffsetDateTime,
    ) -> omniq_core::Result<bool> {
        self.inner.skip_schedule(name, due, next).await
    }
    async fn set_progress(
        &self,
        lease: omniq_core::LeaseRef,
        progress: omniq_core::Progress,
    ) -> omniq_core::Result<bool> {
        self.inner.set_progress(lease, progress).await
    }
    async fn renew(
        &self,
        leases: &[omniq_core::LeaseRef],
        lease_for: Duration,
        now: time::OffsetDateTime,
    ) -> omniq_core::Result<Vec<omniq_core::RenewOutcome>> {
        self.inner.renew(leases, lease_for, now).await
    }
    async fn finish(
        &self,
        finishes: Vec<omniq_core::Finish>,
        now: time::OffsetDateTime,
    ) -> omniq_core::Result<Vec<omniq_core::FinishOutcome>> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("a store bug");
        }
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(omniq_core::Error::backend("flaky", "database is locked"));
        }
        self.inner.finish(finishes, now).await
    }
    async fn next_due(&self, queues: &[String]) -> omniq_core::Result<Option<time::OffsetDateTime>> {
        self.inner.next_due(queues).await
    }
    async fn get(&self, id: TaskId) -> omniq_core::Result<Task> {
        self.inner.get(id).await
    }
    async fn list(&self, query: omniq_core::ListQuery) -> omniq_core::Result<Vec<Task>> {
        self.inner.list(query).await
    }
    async fn cancel(&self, id: TaskId, now: time::OffsetDateTime) -> omniq_core::Result<Vec<TaskId>> {
        self.inner.cancel(id, now).await
    }
    async fn retry(&self, id: TaskId, now: time::OffsetDateTime) -> omniq_core::Result<()> {
        self.inner.retry(id, now).await
    }
    async fn counts(&self) -> omniq_core::Result<omniq_core::StatusCounts> {
        self.inner.counts().await
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> omniq_core::Result<()> {
        self.inner.set_paused(queue, paused).await
    }
    async fn paused(&self) -> omniq_core::Result<Vec<String>> {
        self.inner.paused().await
    }
    async fn set_queue_limits(&self, queue: &str, limits: omniq_core::QueueLimits) -> omniq_core::Result<()> {
        self.inner.set_queue_limits(queue, limits).await
    }
    async fn queue_flows(&self, now: time::OffsetDateTime) -> omniq_core::Result<Vec<omniq_core::QueueFlow>> {
        self.inner.queue_flows(now).await
    }
    async fn queue_stats(&self) -> omniq_core::Result<Vec<omniq_core::QueueStats>> {
        self.inner.queue_stats().await
    }
    async fn purge(&self, before: time::OffsetDateTime) -> omniq_core::Result<u64> {
        self.inner.purge(before).await
    }
    async fn prune(
        &self,
        status: omniq_core::TaskStatus,
        before: time::OffsetDateTime,
        limit: usize,
    ) -> omniq_core::Result<u64> {
        self.inner.prune(status, before, limit).await
    }
    async fn beat(&self, beat: omniq_core::WorkerBeat) -> omniq_core::Result<()> {
        self.inner.beat(beat).await
    }
    async fn workers(&self) -> omniq_core::Result<Vec<omniq_core::WorkerBeat>> {
        self.inner.workers().await
    }
    async fn remove_worker(&self, worker_id: &str) -> omniq_core::Result<bool> {
        self.inner.remove_worker(worker_id).await
    }
    async fn requeue_expired(&self, now: time::OffsetDateTime) -> omniq_core::Result<Vec<TaskId>> {
        self.inner.requeue_expired(now).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_panics_while_recording_does_not_stop_the_recorder() {
    let store = Arc::new(PanicsOnce {
        inner: MemoryStorage::new(),
        armed: std::sync::atomic::AtomicBool::new(true),
        failures: Default::default(),
    });
    let signals = Signals::new();
    let pool = WorkerPool::new(store.clone(), adder())
        .clock(Arc::new(TokioClock::new()))
        .signals(signals.clone())
        .concurrency(1)
        .start()
        .expect("start the pool");
    let settings = Settings::default();
    let mut ids = Vec::new();
    for i in 0..3i64 {
        let id = store
            .enqueue_one(NewTask::with_payload("math.add", &(i, 1)).unwrap(), &settings)
            .await
            .unwrap();
        signals.task_enqueued();
        ids.push(id);
    }
    // The first record panics inside the store; the recorder goes on, the
    // record is tried again, and every task ends completed, each run once.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = store.counts().await.unwrap();
        if counts.completed == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "tasks never completed: {counts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(pool.stats().unrecorded, 0);
    for id in ids {
        assert_eq!(store.get(id).await.unwrap().attempts, 1);
    }
    assert!(pool.shutdown(Duration::from_secs(1)).await.drained);
}

/// Finishes fail for longer than the lease lasts: the pool keeps the lease
/// renewed and tries again, so a task with no retries left ends completed,
/// run once, not `failed: lease_expired` or run again.
#[tokio::test(start_paused = true)]
async fn a_finish_that_fails_is_tried_again_while_the_lease_is_renewed() {
    let store = Arc::new(PanicsOnce {
        inner: MemoryStorage::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
        failures: std::sync::atomic::AtomicU32::new(8),
    });
    let signals = Signals::new();
    let pool = WorkerPool::new(store.clone(), adder())
        .clock(Arc::new(TokioClock::new()))
        .signals(signals.clone())
        .concurrency(1)
        .lease(Duration::from_secs(3), Duration::from_secs(1))
        .requeue_every(Duration::from_secs(1))
        .start()
        .expect("start the pool");
    let id = store
        .enqueue_one(
            NewTask::with_payload("math.add", &(2, 3)).unwrap().max_retries(0),
            &Settings::default(),
        )
        .await
        .unwrap();
    signals.task_enqueued();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let task = store.get(id).await.unwrap();
        if task.status.is_finished() {
            assert_eq!(task.status, omniq_core::TaskStatus::Completed, "{:?}", task.error);
            assert_eq!((task.attempts, task.result), (1, Some(serde_json::json!(5))));
            break;
        }
        assert!(Instant::now() < deadline, "the task never finished: {task:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // 8 failures with backoff from 50 ms take about 12 s, four leases' worth.
    assert_eq!(store.failures.load(Ordering::SeqCst), 0);
    assert_eq!(pool.stats().unrecorded, 0);
    assert!(pool.shutdown(Duration::from_secs(1)).await.drained);
}
