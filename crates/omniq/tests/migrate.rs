//! Migration between the backends keeps ids, status, attempts, errors,
//! results, eta and interval, in both directions, and leaves the source alone.

use std::sync::Arc;
use std::time::Duration;

use omniq::core::{ClaimRequest, Finish, Outcome};
use omniq::{
    Durability, FileStorage, NewTask, Settings, SqliteStorage, Storage, Task, TaskError, TaskStatus,
};
use serde_json::json;
use time::OffsetDateTime;

/// Fills `store` with a task in every status, and some history.
async fn fill(store: &dyn Storage) {
    let now = OffsetDateTime::now_utc();
    let settings = Settings::default();
    let new = |task: NewTask| task.into_task(&settings, now).unwrap();
    store
        .enqueue(vec![
            new(NewTask::with_payload("ok", &json!({"n": 1})).unwrap()),
            new(NewTask::new("fail").max_retries(1)),
            new(NewTask::new("retrying").max_retries(5)),
            new(NewTask::new("running")),
            new(NewTask::new("cancel")),
            new(NewTask::new("tick").interval(Duration::from_secs(90))),
            new(NewTask::new("later")
                .eta(now + Duration::from_secs(3600))
                .timeout(Duration::from_secs(9))),
        ])
        .await
        .unwrap();
    let claim = |limit| ClaimRequest {
        worker_id: "migrator-test".into(),
        limit,
        lease_for: Duration::from_secs(60),
        now,
    };
    let claimed = store.claim(claim(6)).await.unwrap();
    let mut finishes = Vec::new();
    for task in &claimed {
        let outcome = match task.func_path.as_str() {
            "ok" | "tick" => Outcome::Complete {
                result: json!({"done": task.func_path}),
            },
            "fail" => Outcome::Fail {
                error: TaskError::new("handler", "broken", 1, false),
            },
            "retrying" => Outcome::Retry {
                error: TaskError::new("timeout", "too slow", 1, true),
                at: now + Duration::from_secs(30),
            },
            _ => continue,
        };
        finishes.push(Finish {
            id: task.id,
            token: task.lease.as_ref().unwrap().token,
            outcome,
        });
    }
    store.finish(finishes, now).await.unwrap();
    let cancel = claimed.iter().find(|t| t.func_path == "cancel").unwrap();
    store.cancel(cancel.id, now).await.unwrap();
}

async fn all(store: &dyn Storage) -> Vec<Task> {
    store.list(Default::default()).await.unwrap()
}

async fn check(from: Arc<dyn Storage>, to: Arc<dyn Storage>) {
    fill(&*from).await;
    let before = all(&*from).await;
    let statuses: Vec<TaskStatus> = before.iter().map(|t| t.status).collect();
    for status in TaskStatus::ALL {
        assert!(statuses.contains(&status), "the source has no {status} task");
    }
    let mut seen = Vec::new();
    let report = omniq::migrate(&*from, &*to, |p| seen.push(p)).await.unwrap();
    assert_eq!(report.copied, before.len() as u64);
    assert_eq!(report.running_reset, 1);
    assert_eq!(seen.last().unwrap().done, before.len() as u64);
    assert_eq!(all(&*from).await, before, "the source is unchanged");

    let after = all(&*to).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        if old.status == TaskStatus::Running {
            // A running task's lease belongs to the source: it arrives pending.
            assert_eq!(new.status, TaskStatus::Pending);
            assert_eq!((new.attempts, new.lease.is_none()), (old.attempts, true));
            let mut expected = old.clone();
            expected.status = TaskStatus::Pending;
            expected.lease = None;
            assert_eq!(new, &expected);
        } else {
            assert_eq!(new, old, "{} changed in migration", old.func_path);
        }
    }

    // Running it again copies nothing twice.
    let again = omniq::migrate(&*from, &*to, |_| {}).await.unwrap();
    assert_eq!((again.copied, again.skipped), (0, before.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_sqlite_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let from = FileStorage::open_path(dir.path().join("files"), Durability::Normal)
        .await
        .unwrap();
    let to = SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
        .await
        .unwrap();
    check(Arc::new(from), Arc::new(to)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let from = SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
        .await
        .unwrap();
    let to = FileStorage::open_path(dir.path().join("files"), Durability::Normal)
        .await
        .unwrap();
    check(Arc::new(from), Arc::new(to)).await;
}
