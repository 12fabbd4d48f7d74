//! The `omniq` client through its public API, on both backends.

use std::time::Duration;

use omniq::{BackendKind, Error, HandlerError, ListQuery, NewTask, OmniQ, Registry, Settings, TaskStatus};
use serde_json::json;
use time::OffsetDateTime;

async fn clients(dir: &std::path::Path) -> Vec<OmniQ> {
    let mut clients = Vec::new();
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let settings = Settings::builder()
            .backend(backend)
            .base_dir(dir.join(backend.as_str()))
            .default_max_retries(2)
            .build()
            .unwrap();
        clients.push(OmniQ::open(settings).await.unwrap());
    }
    clients
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, HandlerError>(a + b) },
    );
    registry.register("fail", |_: ()| async { Err::<(), _>(HandlerError::fatal("no")) });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_options_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let eta = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        let id = q
            .task("add", &(1, 2))
            .unwrap()
            .eta(eta)
            .interval(Duration::from_secs(60))
            .max_retries(7)
            .timeout(Duration::from_millis(1500))
            .enqueue()
            .await
            .unwrap();
        let task = q.get(id).await.unwrap();
        assert_eq!(task.func_path, "add");
        assert_eq!(task.args, vec![json!([1, 2])]);
        assert_eq!(task.eta, eta);
        assert_eq!(task.interval, Some(Duration::from_secs(60)));
        assert_eq!(task.max_retries, 7);
        assert_eq!(task.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(task.series, Some(id));

        let plain = q.enqueue("add", &(3, 4)).await.unwrap();
        assert_eq!(
            q.get(plain).await.unwrap().max_retries,
            2,
            "the settings' default"
        );
        let delayed = q
            .task("add", &(0, 0))
            .unwrap()
            .delay(Duration::from_secs(60))
            .enqueue()
            .await
            .unwrap();
        assert!(q.get(delayed).await.unwrap().eta > OffsetDateTime::now_utc() + Duration::from_secs(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_waited_for_and_read() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let pool = q.worker(registry()).start().expect("start the pool");
        let ids = q
            .enqueue_many(
                (0..20)
                    .map(|i| NewTask::with_payload("add", &(i, i)).unwrap())
                    .collect(),
            )
            .await
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            let result = q.wait_result(*id, Duration::from_secs(20)).await.unwrap();
            assert_eq!(result.status, TaskStatus::Completed);
            assert_eq!(result.value_as::<i64>().unwrap(), Some(2 * i as i64));
        }
        let failed = q.enqueue("fail", &()).await.unwrap();
        let result = q.wait_result(failed, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.status, TaskStatus::Failed);
        assert_eq!(result.error.unwrap().message, "no");
        assert_eq!(q.result(failed).await.unwrap().attempts, 1);
        pool.shutdown(Duration::from_secs(5)).await;

        // Without a worker the wait runs out with a clear error.
        let never = q.enqueue("add", &(1, 1)).await.unwrap();
        let err = q.wait_result(never, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_cancel_retry_counts_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let pool = q.worker(registry()).start().expect("start the pool");
        let ok = q.enqueue("add", &(1, 1)).await.unwrap();
        let bad = q.enqueue("fail", &()).await.unwrap();
        q.wait_result(ok, Duration::from_secs(20)).await.unwrap();
        q.wait_result(bad, Duration::from_secs(20)).await.unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        let later = q
            .task("add", &(2, 2))
            .unwrap()
            .delay(Duration::from_secs(3600))
            .enqueue()
            .await
            .unwrap();

        let counts = q.counts().await.unwrap();
        assert_eq!((counts.pending, counts.completed, counts.failed), (1, 1, 1));
        let failed = q
            .list(ListQuery {
                status: Some(TaskStatus::Failed),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(failed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![bad]);

        q.retry(bad).await.unwrap();
        assert_eq!(q.get(bad).await.unwrap().status, TaskStatus::Pending);
        assert!(matches!(q.retry(ok).await, Err(Error::Conflict { .. })));
        assert_eq!(q.cancel(later).await.unwrap(), vec![later]);
        assert!(matches!(q.cancel(later).await, Err(Error::Conflict { .. })));
        assert!(matches!(
            q.get(omniq::TaskId::new()).await,
            Err(Error::NotFound { .. })
        ));

        // The result TTL (a day) keeps everything; an age of zero removes the finished.
        assert_eq!(q.purge().await.unwrap(), 0);
        assert_eq!(q.purge_older_than(Duration::ZERO).await.unwrap(), 2);
        let left = q.list(ListQuery::default()).await.unwrap();
        assert_eq!(left.iter().map(|t| t.id).collect::<Vec<_>>(), vec![bad]);
    }
}

#[tokio::test]
async fn the_environment_chooses_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // The only test in this binary that reads the environment.
    std::env::set_var("OMNIQ_BACKEND", "sqlite");
    std::env::set_var("OMNIQ_BASE_DIR", dir.path());
    let q = OmniQ::from_env().await.unwrap();
    std::env::remove_var("OMNIQ_BACKEND");
    std::env::remove_var("OMNIQ_BASE_DIR");
    assert_eq!(q.storage().backend_name(), "sqlite");
    assert!(dir.path().join("omniq.db").exists());
    assert_eq!(
        omniq::chosen_backend(&Settings::default()).unwrap(),
        BackendKind::File
    );
}

#[test]
fn the_blocking_client_needs_no_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::builder().base_dir(dir.path()).build().unwrap();
    let q = omniq::blocking::OmniQ::open(settings).unwrap();
    let worker = q
        .start_worker(registry(), |pool| pool.concurrency(2))
        .expect("start the pool");
    let id = q.enqueue("add", &(20, 22)).unwrap();
    let later = q
        .enqueue_task(
            NewTask::with_payload("add", &(0, 1))
                .unwrap()
                .eta(OffsetDateTime::now_utc() + Duration::from_secs(3600)),
        )
        .unwrap();
    let result = q.wait_result(id, Duration::from_secs(20)).unwrap();
    assert_eq!(result.value_as::<i64>().unwrap(), Some(42));
    assert_eq!(q.get(later).unwrap().status, TaskStatus::Pending);
    assert_eq!(q.counts().unwrap().completed, 1);
    assert_eq!(q.cancel(later).unwrap(), vec![later]);
    assert_eq!(q.list(ListQuery::default()).unwrap().len(), 2);
    assert_eq!(q.result(id).unwrap().status, TaskStatus::Completed);
    assert_eq!(q.purge().unwrap(), 0);
    assert!(worker.shutdown(Duration::from_secs(5)).drained);
    assert_eq!(q.purge_older_than(Duration::ZERO).unwrap(), 2);
}

/// Queues, priorities, unique keys and pausing through the client, with a
/// pool serving two queues, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_priorities_unique_keys_and_pausing() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        q.pause("emails").await.unwrap();
        let mail = q
            .task("add", &(1, 1))
            .unwrap()
            .queue("emails")
            .priority(7)
            .enqueue()
            .await
            .unwrap();
        let first = q
            .task("add", &(2, 2))
            .unwrap()
            .unique_key("sum:4")
            .delay(Duration::from_secs(3600))
            .enqueue_checked()
            .await
            .unwrap();
        assert!(!first.duplicate);
        let second = q
            .task("add", &(2, 2))
            .unwrap()
            .unique_key("sum:4")
            .enqueue_checked()
            .await
            .unwrap();
        assert_eq!(
            second,
            omniq::Enqueued {
                id: first.id,
                duplicate: true
            }
        );
        assert_eq!(
            q.task("add", &(2, 2))
                .unwrap()
                .unique_key("sum:4")
                .enqueue()
                .await
                .unwrap(),
            first.id,
            "enqueue() answers the live task's id"
        );
        let refused = q.task("add", &(0, 0)).unwrap().queue("bad name").enqueue().await;
        assert!(matches!(refused, Err(Error::InvalidConfig { .. })), "{refused:?}");

        let pool = q
            .worker(registry())
            .queue("default", 2)
            .queue("emails", 1)
            .start()
            .expect("start the pool");
        let plain = q.enqueue("add", &(3, 3)).await.unwrap();
        q.wait_result(plain, Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            q.get(mail).await.unwrap().status,
            TaskStatus::Pending,
            "emails is paused"
        );
        let stats = q.queues().await.unwrap();
        let emails = stats.iter().find(|s| s.queue == "emails").unwrap();
        assert!(emails.paused);
        assert_eq!(emails.counts.pending, 1);
        q.resume("emails").await.unwrap();
        let result = q.wait_result(mail, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.value_as::<i64>().unwrap(), Some(2));
        let task = q.get(mail).await.unwrap();
        assert_eq!((task.queue.as_str(), task.priority), ("emails", 7));
        assert!(pool.shutdown(Duration::from_secs(5)).await.drained);

        // Cancelled, the key is free again.
        q.cancel(first.id).await.unwrap();
        let third = q
            .task("add", &(2, 2))
            .unwrap()
            .unique_key("sum:4")
            .enqueue_checked()
            .await
            .unwrap();
        assert!(!third.duplicate);
        assert_ne!(third.id, first.id);
    }
}

/// A key held over a period: a completed task keeps it, a failed one with
/// `unique_finished(&[Completed])` does not; bad combinations are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_held_over_a_period() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let hour = Duration::from_secs(3600);
        let pool = q.worker(registry()).start().expect("start the pool");
        let first = q
            .task("add", &(1, 2))
            .unwrap()
            .unique_key("digest:7")
            .unique_for(hour)
            .meta(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .enqueue()
            .await
            .unwrap();
        q.wait_result(first, Duration::from_secs(20)).await.unwrap();
        let task = q.get(first).await.unwrap();
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.meta.len(), 1);
        let again = q
            .task("add", &(1, 2))
            .unwrap()
            .unique_key("digest:7")
            .enqueue_checked()
            .await
            .unwrap();
        assert_eq!(
            again,
            omniq::Enqueued {
                id: first,
                duplicate: true
            },
            "held for the hour"
        );

        let failing = q
            .task("fail", &())
            .unwrap()
            .unique_key("sync:1")
            .unique_for(hour)
            .unique_finished(&[TaskStatus::Completed])
            .max_retries(0)
            .enqueue()
            .await
            .unwrap();
        assert!(q.wait_result(failing, Duration::from_secs(20)).await.is_ok());
        assert_eq!(q.get(failing).await.unwrap().status, TaskStatus::Failed);
        let next = q
            .task("fail", &())
            .unwrap()
            .unique_key("sync:1")
            .enqueue_checked()
            .await
            .unwrap();
        assert!(!next.duplicate, "a failed task does not hold this key");
        assert!(pool.shutdown(Duration::from_secs(5)).await.drained);

        for refused in [
            q.task("add", &(0, 0)).unwrap().unique_for(hour).enqueue().await,
            q.task("add", &(0, 0))
                .unwrap()
                .unique_key("k")
                .unique_for(Duration::ZERO)
                .enqueue()
                .await,
            q.task("add", &(0, 0))
                .unwrap()
                .unique_key("k")
                .unique_finished(&[])
                .enqueue()
                .await,
            q.task("add", &(0, 0)).unwrap().meta("", "x").enqueue().await,
            q.task("add", &(0, 0))
                .unwrap()
                .meta("big", "x".repeat(600))
                .enqueue()
                .await,
        ] {
            assert!(matches!(refused, Err(Error::InvalidConfig { .. })), "{refused:?}");
        }
    }
}

#[test]
fn the_blocking_client_pauses_and_reports_queues() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::builder().base_dir(dir.path()).build().unwrap();
    let q = omniq::blocking::OmniQ::open(settings).unwrap();
    let answers = q
        .enqueue_checked(vec![
            NewTask::new("a").queue("reports").unique_key("r"),
            NewTask::new("a").queue("reports").unique_key("r"),
        ])
        .unwrap();
    assert!(!answers[0].duplicate && answers[1].duplicate);
    assert_eq!(answers[1].id, answers[0].id);
    q.pause("reports").unwrap();
    let queues = q.queues().unwrap();
    assert_eq!(queues.len(), 1);
    assert!(queues[0].paused);
    assert_eq!(queues[0].counts.pending, 1);
    q.resume("reports").unwrap();
    assert!(!q.queues().unwrap()[0].paused);
}

/// The client and a pool on PostgreSQL, chosen by settings as a user's
/// `OMNIQ_BACKEND=postgres` and `OMNIQ_DATABASE_URL` would.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_runs_tasks_on_postgres() {
    let url =
        std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
    let schema = format!("omniq_c{}", std::process::id());
    let lookup = |name: &str| match name {
        "OMNIQ_BACKEND" => Some("postgres".into()),
        "OMNIQ_DATABASE_URL" => Some(url.clone().into()),
        "OMNIQ_PG_SCHEMA" => Some(schema.clone().into()),
        _ => None,
    };
    let settings = Settings::from_lookup(lookup).unwrap();
    let q = match OmniQ::open(settings).await {
        Ok(q) => q,
        Err(error) => {
            assert!(
                std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "no PostgreSQL at {url}: {error}"
            );
            eprintln!("no PostgreSQL at {url} ({error}); skipping");
            return;
        }
    };
    assert_eq!(q.storage().backend_name(), "postgres");
    let pool = q
        .worker(registry())
        .queue("default", 2)
        .queue("math", 2)
        .start()
        .expect("start the pool");
    let a = q.enqueue("add", &(2, 3)).await.unwrap();
    let b = q
        .task("add", &(4, 5))
        .unwrap()
        .queue("math")
        .priority(9)
        .enqueue()
        .await
        .unwrap();
    for (id, sum) in [(a, 5), (b, 9)] {
        let result = q.wait_result(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.value_as::<i64>().unwrap(), Some(sum));
    }
    assert!(pool.shutdown(Duration::from_secs(5)).await.drained);
    assert_eq!(q.counts().await.unwrap().completed, 2);
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
