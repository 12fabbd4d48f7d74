//! The worker pool on the real backends, in real time (kept short): tasks run,
//! failures retry, and a shutdown hands unfinished tasks back.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use omniq_core::{Durability, NewTask, Settings, Storage, StorageExt, TaskId, TaskStatus};
use omniq_worker::{Backoff, HandlerError, Registry, Signals, TaskContext, WorkerPool};
use serde_json::json;

async fn stores(dir: &std::path::Path) -> Vec<Arc<dyn Storage>> {
    vec![
        Arc::new(
            omniq_file::FileStorage::open_path(dir.join("files"), Durability::Normal)
                .await
                .unwrap(),
        ),
        Arc::new(
            omniq_sqlite::SqliteStorage::open_path(dir.join("omniq.db"), Durability::Normal)
                .await
                .unwrap(),
        ),
    ]
}

fn registry(flaky_calls: Arc<AtomicU32>) -> Registry {
    let mut registry = Registry::new();
    registry.register("square", |n: u64| async move { Ok::<_, HandlerError>(n * n) });
    registry.register_with_context("flaky", move |_: (), ctx: TaskContext| {
        let calls = flaky_calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt < 3 {
                return Err(HandlerError::retry("not yet"));
            }
            Ok("third time")
        }
    });
    registry.register_with_context("sleepy", |_: (), ctx: TaskContext| async move {
        ctx.cancelled().await;
        Ok::<_, HandlerError>(())
    });
    registry
}

async fn wait_finished(store: &dyn Storage, signals: &Signals, id: TaskId) -> omniq_core::Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let finished = signals.finished();
        let task = store.get(id).await.unwrap();
        if task.status.is_finished() {
            return task;
        }
        assert!(tokio::time::Instant::now() < deadline, "{task:?}");
        let _ = tokio::time::timeout(Duration::from_millis(50), finished).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_and_retry_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let signals = Signals::new();
        let calls = Arc::new(AtomicU32::new(0));
        let pool = WorkerPool::new(store.clone(), registry(calls.clone()))
            .signals(signals.clone())
            .poll_interval(Duration::from_millis(20))
            .backoff(Backoff {
                initial: Duration::from_millis(10),
                factor: 2.0,
                max: Duration::from_millis(100),
                jitter: 0.0,
            })
            .start()
            .expect("start the pool");
        let settings = Settings::default();
        let mut ids = Vec::new();
        for n in 0..40u64 {
            ids.push(
                store
                    .enqueue_one(NewTask::with_payload("square", &n).unwrap(), &settings)
                    .await
                    .unwrap(),
            );
        }
        let flaky = store
            .enqueue_one(NewTask::new("flaky").max_retries(3), &settings)
            .await
            .unwrap();
        signals.task_enqueued();
        for (n, id) in ids.iter().enumerate() {
            let task = wait_finished(&*store, &signals, *id).await;
            assert_eq!(task.result, Some(json!(n * n)), "{}", store.backend_name());
        }
        let task = wait_finished(&*store, &signals, flaky).await;
        assert_eq!(
            (task.status, task.attempts),
            (TaskStatus::Completed, 3),
            "{}",
            store.backend_name()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(pool.shutdown(Duration::from_secs(5)).await.drained);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_running_tasks_back_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let signals = Signals::new();
        let pool = WorkerPool::new(store.clone(), registry(Arc::new(AtomicU32::new(0))))
            .signals(signals.clone())
            .concurrency(2)
            .start()
            .expect("start the pool");
        let settings = Settings::default();
        let ids = store
            .enqueue_many(
                vec![
                    NewTask::new("sleepy"),
                    NewTask::new("sleepy"),
                    NewTask::new("sleepy"),
                ],
                &settings,
            )
            .await
            .unwrap();
        signals.task_enqueued();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while store.counts().await.unwrap().running < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: two tasks never ran at once",
                store.backend_name()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = pool.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.handed_back, 2, "{}", store.backend_name());
        for id in ids {
            let task = store.get(id).await.unwrap();
            assert_eq!(
                (task.status, task.attempts),
                (TaskStatus::Pending, 0),
                "{}",
                store.backend_name()
            );
        }
    }
}

/// A pool with nothing to do sleeps until the next task comes due, not until
/// its next poll: a task due while the pool is idle starts within a few
/// milliseconds of its eta, on every backend, in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_due_while_the_pool_is_idle_start_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut memory: Vec<Arc<dyn Storage>> = vec![Arc::new(omniq_core::MemoryStorage::new())];
    memory.extend(stores(dir.path()).await);
    for store in memory {
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut registry = Registry::new();
        let log = started.clone();
        registry.register("stamp", move |_: ()| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(time::OffsetDateTime::now_utc());
                Ok::<_, HandlerError>(())
            }
        });
        let signals = Signals::new();
        // The default poll interval (500 ms) is longer than the waits below.
        let pool = WorkerPool::new(store.clone(), registry)
            .signals(signals.clone())
            .start()
            .expect("start the pool");
        let now = time::OffsetDateTime::now_utc();
        let etas = [now + Duration::from_millis(300), now + Duration::from_millis(700)];
        let mut ids = Vec::new();
        for eta in etas {
            ids.push(
                store
                    .enqueue_one(NewTask::new("stamp").eta(eta), &Settings::default())
                    .await
                    .unwrap(),
            );
            signals.task_enqueued();
        }
        for id in &ids {
            assert_eq!(
                wait_finished(&*store, &signals, *id).await.status,
                TaskStatus::Completed
            );
        }
        let started = started.lock().unwrap().clone();
        // Well under the 500 ms poll: the pool woke for the eta, not the
        // poll, with room for a machine busy with other tests.
        for (eta, at) in etas.iter().zip(&started) {
            let late = *at - *eta;
            assert!(
                late >= time::Duration::ZERO && late < time::Duration::milliseconds(250),
                "{}: started {late} after its eta",
                store.backend_name()
            );
        }
        pool.shutdown(Duration::from_secs(5)).await;
    }
}
