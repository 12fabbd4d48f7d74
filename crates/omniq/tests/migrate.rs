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
            new(NewTask::with_payload("ok", &json!({"n": 1})).unwrap().meta(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
            new(NewTask::new("fail").max_retries(1)),
            new(NewTask::new("retrying").max_retries(5)),
            new(NewTask::new("running")),
            new(NewTask::new("cancel")),
            new(NewTask::new("tick").interval(Duration::from_secs(90))),
            new(NewTask::new("later")
                .eta(now + Duration::from_secs(3600))
                .timeout(Duration::from_secs(9))
                .queue("reports")
                .priority(-4)
                .unique_key("report:later")
                .unique_for(Duration::from_secs(7200))),
        ])
        .await
        .unwrap();
    let claim = |limit| ClaimRequest {
        queue: omniq_core::DEFAULT_QUEUE.into(),
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
    store
        .put_schedule(
            omniq::Schedule {
                name: "nightly".into(),
                expression: "0 0 3 * * *".into(),
                timezone: "Europe/Berlin".into(),
                task: omniq::ScheduledTask::from_new_task(&NewTask::new("report").queue("reports")),
                catch_up: true,
                paused: true,
                next_run: now + Duration::from_secs(3600),
                last_run: Some(now),
                last_task: Some(cancel.id),
            },
            omniq::PutSchedule::Replace,
        )
        .await
        .unwrap();
    let limits = omniq::QueueLimits {
        limit: Some(3),
        per_key: Some(1),
        rate: Some("10/s".parse().unwrap()),
        ..Default::default()
    };
    store.set_queue_limits("reports", limits).await.unwrap();
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
    assert_eq!(report.schedules, 1);
    assert_eq!(to.schedules().await.unwrap(), from.schedules().await.unwrap());
    // Flow-control settings come along, where the destination has none.
    assert_eq!(report.queue_limits, ["reports"]);
    let limits =
        |flows: Vec<omniq::QueueFlow>| flows.into_iter().map(|f| (f.queue, f.limits)).collect::<Vec<_>>();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(
        limits(to.queue_flows(now).await.unwrap()),
        limits(from.queue_flows(now).await.unwrap())
    );
    assert_eq!(seen.last().unwrap().done, before.len() as u64);
    assert_eq!(all(&*from).await, before, "the source is unchanged");

    let after = all(&*to).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        if old.status == TaskStatus::Running {
            // A running task's lease belongs to the source: it arrives as if
            // that lease had expired, pending again with the attempt counted.
            assert_eq!(new.status, TaskStatus::Pending);
            assert_eq!((new.attempts, new.lease.is_none()), (old.attempts, true));
            assert_eq!(new.error.as_ref().unwrap().kind, "lease_expired");
            let mut expected = old.clone();
            expected.status = TaskStatus::Pending;
            expected.lease = None;
            expected.error = new.error.clone();
            // The lost attempt joins the history, naming the source's worker.
            assert_eq!(new.errors.len(), old.errors.len() + 1);
            assert_eq!(
                new.errors.last().unwrap().worker_id,
                old.lease.as_ref().map(|l| l.worker_id.clone())
            );
            expected.errors = new.errors.clone();
            expected.eta = new.eta;
            expected.updated_at = new.updated_at;
            assert_eq!(new, &expected);
        } else {
            assert_eq!(new, old, "{} changed in migration", old.func_path);
        }
    }

    // Running it again copies nothing twice.
    let again = omniq::migrate(&*from, &*to, |_| {}).await.unwrap();
    assert_eq!((again.copied, again.skipped), (0, before.len() as u64));
    assert_eq!(again.queue_limits_kept, ["reports"]);
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

/// Every file of a folder with its bytes, to show a source is unchanged.
fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_not_copied_is_reported_and_the_source_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("files");
    let writable = FileStorage::open_path(&source, Durability::Normal).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let tasks: Vec<Task> = (0..5)
        .map(|_| NewTask::new("t").into_task(&Settings::default(), now).unwrap())
        .collect();
    writable.enqueue(tasks.clone()).await.unwrap();
    drop(writable);
    // One record damaged, one with a time SQLite cannot hold.
    let corrupt = tasks[1].id;
    std::fs::write(source.join(format!("tasks/task-{corrupt}.json")), b"{ cut short").unwrap();
    let far = tasks[3].id;
    let path = source.join(format!("tasks/task-{far}.json"));
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["eta"] = json!("9999-01-01T00:00:00Z");
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let before = snapshot(&source);

    let from = FileStorage::open_read_only(&source, Duration::from_secs(5))
        .await
        .unwrap();
    let to = SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
        .await
        .unwrap();
    let report = omniq::migrate(&from, &to, |_| {}).await.unwrap();
    assert_eq!(report.copied, 3);
    assert!(!report.is_complete());
    let mut missing: Vec<&str> = report.not_copied.iter().map(|n| n.id.as_str()).collect();
    missing.sort();
    let mut expected = vec![corrupt.to_string(), far.to_string()];
    expected.sort();
    assert_eq!(missing, expected, "{:?}", report.not_copied);
    for n in &report.not_copied {
        assert!(!n.reason.is_empty());
    }
    assert_eq!(snapshot(&source), before, "the source changed");
    assert!(
        from.enqueue(vec![]).await.is_err(),
        "a read-only store refuses changes"
    );
}

/// A pending task whose unique key a live task of the destination holds is
/// reported, not copied: copying it would run the job twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_key_the_destination_holds_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let from = FileStorage::open_path(dir.path().join("from"), Durability::Normal)
        .await
        .unwrap();
    let to = SqliteStorage::open_path(dir.path().join("to.db"), Durability::Normal)
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let keyed = |name: &str| {
        NewTask::new(name)
            .unique_key("invoice:9")
            .into_task(&Settings::default(), now)
            .unwrap()
    };
    let theirs = keyed("theirs");
    let ours = keyed("ours");
    to.enqueue(vec![theirs.clone()]).await.unwrap();
    from.enqueue(vec![ours.clone(), keyed("plain").clone()])
        .await
        .unwrap();
    let report = omniq::migrate(&from, &to, |_| {}).await.unwrap();
    assert_eq!(report.copied, 0);
    assert_eq!(report.not_copied.len(), 1, "{:?}", report.not_copied);
    assert_eq!(report.not_copied[0].id, ours.id.to_string());
    assert!(
        report.not_copied[0].reason.contains(&theirs.id.to_string()),
        "{}",
        report.not_copied[0].reason
    );
    assert!(!report.is_complete());
    assert_eq!(to.counts().await.unwrap().total(), 1);
}

/// The PostgreSQL test server, or `None` (saying so) where none answers;
/// with `OMNIQ_REQUIRE_POSTGRES=1` a missing server fails the test.
#[cfg(feature = "postgres")]
async fn postgres_schema() -> Option<(String, String)> {
    let url =
        std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
    let schema = format!("omniq_m{}_{}", std::process::id(), fastrand_suffix());
    match omniq::PostgresStorage::connect_with(&url, &schema, 2).await {
        Ok(_) => Some((url, schema)),
        Err(error) => {
            assert!(
                std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "no PostgreSQL at {url}: {error}"
            );
            eprintln!("no PostgreSQL at {url} ({error}); skipping");
            None
        }
    }
}

#[cfg(feature = "postgres")]
fn fastrand_suffix() -> String {
    format!("{:x}", OffsetDateTime::now_utc().unix_timestamp_nanos())
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_postgres_to_sqlite_keeps_everything() {
    let Some((url, schema)) = postgres_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = FileStorage::open_path(dir.path().join("files"), Durability::Normal)
        .await
        .unwrap();
    let postgres = Arc::new(omniq::PostgresStorage::connect(&url, &schema).await.unwrap());
    check(Arc::new(file), postgres.clone()).await;
    // And on from PostgreSQL: what arrived there leaves as it is.
    let sqlite = Arc::new(
        SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
            .await
            .unwrap(),
    );
    let report = omniq::migrate(&*postgres, &*sqlite, |_| {}).await.unwrap();
    assert!(report.is_complete());
    assert_eq!(all(&*postgres).await, all(&*sqlite).await);
    drop_schema(&url, &schema).await;
}

#[cfg(feature = "postgres")]
async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
