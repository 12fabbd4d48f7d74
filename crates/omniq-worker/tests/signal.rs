//! `Pool::run_until_signal` stops the pool gracefully on SIGTERM. In a test
//! binary of its own, since the signal goes to the whole process.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{MemoryStorage, NewTask, Settings, Storage, StorageExt, TaskStatus};
use omniq_worker::{HandlerError, Registry, Signals, WorkerPool};

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_pool_down_and_hands_tasks_back() {
    let store = Arc::new(MemoryStorage::new());
    let mut registry = Registry::new();
    registry.register("forever", |_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, HandlerError>(())
    });
    let signals = Signals::new();
    let pool = WorkerPool::new(store.clone(), registry)
        .signals(signals.clone())
        .start()
        .expect("start the pool");
    let id = store
        .enqueue_one(NewTask::new("forever"), &Settings::default())
        .await
        .unwrap();
    signals.task_enqueued();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.get(id).await.unwrap().status != TaskStatus::Running {
        assert!(tokio::time::Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The handler is installed by the call itself, before anything is spawned.
    let stopping = tokio::spawn(pool.run_until_signal(Duration::from_millis(50)));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let report = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.drained, report.handed_back), (false, 1));
    let task = store.get(id).await.unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Pending, 0));
}

#[tokio::test(start_paused = true)]
async fn zero_periods_do_not_panic_or_spin() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut registry = Registry::new();
    registry.register("one", |_: ()| async { Ok::<_, HandlerError>(1) });
    let pool = WorkerPool::new(store.clone(), registry)
        .lease(Duration::from_secs(1), Duration::ZERO)
        .requeue_every(Duration::ZERO)
        .poll_interval(Duration::ZERO)
        .start()
        .expect("start the pool");
    let id = store
        .enqueue_one(NewTask::new("one"), &Settings::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.get(id).await.unwrap().status, TaskStatus::Completed);
    pool.shutdown(Duration::from_secs(1)).await;
}
