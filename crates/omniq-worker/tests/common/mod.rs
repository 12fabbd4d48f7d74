//! The harness the pool tests share: a `MemoryStorage`, tokio's paused clock
//! and one `Signals`, with the ways a test enqueues and waits.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{MemoryStorage, NewTask, Settings, Storage, Task, TaskId};
use omniq_worker::{Backoff, Clock, Registry, Signals, TokioClock, WorkerPool};
use tokio::time::Instant;

pub struct Harness {
    pub store: Arc<MemoryStorage>,
    pub clock: Arc<TokioClock>,
    pub signals: Arc<Signals>,
}

impl Harness {
    pub fn new() -> Self {
        Harness {
            store: Arc::new(MemoryStorage::new()),
            clock: Arc::new(TokioClock::new()),
            signals: Signals::new(),
        }
    }

    /// A pool on the harness's store, clock and signals, with a backoff
    /// without jitter (1 s, doubling, at most a minute).
    pub fn pool(&self, registry: Registry) -> WorkerPool {
        WorkerPool::new(self.store.clone(), registry)
            .clock(self.clock.clone())
            .signals(self.signals.clone())
            .backoff(Backoff {
                initial: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(60),
                jitter: 0.0,
            })
    }

    /// Enqueues as a client of this process does: the pool is woken at once.
    #[allow(dead_code)]
    pub async fn enqueue(&self, task: NewTask) -> TaskId {
        let id = self.enqueue_elsewhere(vec![task]).await[0];
        self.signals.task_enqueued();
        id
    }

    /// Enqueues straight into the store, with no signal: as another process
    /// would, so only the pool's poll finds the tasks.
    pub async fn enqueue_elsewhere(&self, tasks: Vec<NewTask>) -> Vec<TaskId> {
        let tasks: Vec<Task> = tasks
            .into_iter()
            .map(|t| t.into_task(&Settings::default(), self.clock.now()).unwrap())
            .collect();
        let ids = tasks.iter().map(|t| t.id).collect();
        self.store.enqueue(tasks).await.unwrap();
        ids
    }

    pub async fn task(&self, id: TaskId) -> Task {
        self.store.get(id).await.unwrap()
    }

    /// Waits (in paused time) until `done` holds for the task: woken by
    /// finishes, and looking every 50 ms for other changes.
    pub async fn wait_for(&self, id: TaskId, done: impl Fn(&Task) -> bool) -> Task {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let finished = self.signals.finished();
            let task = self.task(id).await;
            if done(&task) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} never got there: {task:?}");
            tokio::select! {
                _ = finished => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    #[allow(dead_code)]
    pub async fn wait_finished(&self, id: TaskId) -> Task {
        self.wait_for(id, |t| t.status.is_finished()).await
    }
}
