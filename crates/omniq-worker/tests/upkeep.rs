//! The pool's upkeep through its public API, on `MemoryStorage` with tokio's
//! paused clock: the heartbeat it writes and removes, and the pruning of
//! finished tasks past their retention.

use std::sync::Arc;
use std::time::Duration;

use omniq_core::{NewTask, Outcome, Retention, Settings, Storage, Task, TaskStatus};
use omniq_worker::{Clock, HandlerError, Registry};
use tokio::sync::Notify;

mod common;

use common::Harness;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A task of `status` that finished `age` before `now`.
fn finished(status: TaskStatus, age: Duration, now: time::OffsetDateTime) -> Task {
    let at = now - age;
    let mut task = NewTask::new("old").into_task(&Settings::default(), at).unwrap();
    if status == TaskStatus::Cancelled {
        task.cancel(at).unwrap();
        return task;
    }
    task.claim("w", Duration::from_secs(30), at).unwrap();
    let token = task.lease.as_ref().unwrap().token;
    let outcome = match status {
        TaskStatus::Failed => Outcome::Fail {
            error: omniq_core::TaskError::new("handler", "boom", 1, false),
        },
        _ => Outcome::Complete {
            result: serde_json::json!(null),
        },
    };
    task.finish(token, outcome, at).unwrap();
    assert_eq!(task.status, status);
    task
}

#[tokio::test(start_paused = true)]
async fn a_running_pool_reports_in_and_leaves_on_shutdown() {
    let h = Harness::new();
    let release = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let gate = release.clone();
    registry.register("hold", move |_: ()| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, HandlerError>(())
        }
    });
    let pool = h
        .pool(registry)
        .queue("default", 3)
        .queue("emails", 2)
        .heartbeat_every(Duration::from_secs(1))
        .start()
        .unwrap();
    let id = h.enqueue(NewTask::with_payload("hold", &()).unwrap()).await;
    h.wait_for(id, |t| t.status == TaskStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let workers = h.store.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    let beat = &workers[0];
    assert_eq!(beat.worker_id, pool.worker_id());
    assert_eq!(beat.pid, std::process::id());
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        beat.queues,
        vec![("default".to_owned(), 3), ("emails".to_owned(), 2)]
    );
    assert_eq!(beat.running, 1);
    assert!(beat.alive(h.clock.now()));
    assert!(
        !beat.alive(h.clock.now() + Duration::from_secs(5)),
        "it expires after four missed beats"
    );
    assert_eq!(
        h.task(id).await.lease.unwrap().worker_id,
        beat.worker_id,
        "the running task names the worker whose heartbeat says it is alive"
    );

    release.notify_one();
    h.wait_finished(id).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let beat = &h.store.workers().await.unwrap()[0];
    assert_eq!(
        (beat.running, beat.done.completed, beat.done.failed),
        (0, 1, 0),
        "the counts only grow"
    );
    assert!(pool.shutdown(Duration::from_secs(5)).await.drained);
    assert!(
        h.store.workers().await.unwrap().is_empty(),
        "shutdown removes the heartbeat"
    );
}

#[tokio::test(start_paused = true)]
async fn finished_tasks_past_their_status_age_are_pruned() {
    let h = Harness::new();
    let now = h.clock.now();
    let keep = [
        finished(TaskStatus::Completed, HOUR, now),
        finished(TaskStatus::Failed, 2 * DAY, now),
        finished(TaskStatus::Cancelled, HOUR, now),
    ];
    let prune = [
        finished(TaskStatus::Completed, 2 * DAY, now),
        finished(TaskStatus::Failed, 8 * DAY, now),
        finished(TaskStatus::Cancelled, 2 * DAY, now),
    ];
    // More than a batch of old completed tasks: pruning goes on batch after batch.
    let many: Vec<Task> = (0..2_500)
        .map(|_| finished(TaskStatus::Completed, 3 * DAY, now))
        .collect();
    h.store
        .import(keep.iter().chain(&prune).cloned().collect())
        .await
        .unwrap();
    h.store.import(many).await.unwrap();
    let waiting = h.enqueue(NewTask::new("later").eta(now + DAY)).await;

    let pool = h
        .pool(Registry::new())
        .retention_every(Duration::from_secs(10))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    for task in &keep {
        h.task(task.id).await;
    }
    for task in &prune {
        assert!(h.store.get(task.id).await.is_err(), "{:?} was kept", task.status);
    }
    let counts = h.store.counts().await.unwrap();
    assert_eq!((counts.completed, counts.failed, counts.cancelled), (1, 1, 1));
    assert_eq!(h.task(waiting).await.status, TaskStatus::Pending);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn retention_forever_prunes_nothing() {
    let h = Harness::new();
    let now = h.clock.now();
    let old = finished(TaskStatus::Completed, 365 * DAY, now);
    h.store.import(vec![old.clone()]).await.unwrap();
    let pool = h
        .pool(Registry::new())
        .retention(Retention::FOREVER)
        .retention_every(Duration::from_secs(1))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.task(old.id).await;
    pool.shutdown(Duration::from_secs(1)).await;
}
