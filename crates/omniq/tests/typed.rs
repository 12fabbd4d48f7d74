//! Typed jobs and the handler's context, through the public API, on every
//! backend: a typed round trip, a typed job beside a string handler in one
//! pool, a payload of the wrong shape, follow-up work enqueued from a
//! handler, shared state, and the cancellation token fired on timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use omniq::{
    BackendKind, ContextExt, Error, HandlerError, Job, MemoryStorage, OmniQ, Registry, Settings, TaskContext,
    TaskStatus,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sum {
    total: i64,
    worker: String,
}

impl Job for Add {
    const NAME: &'static str = "typed.add";
    const QUEUE: &'static str = "math";
    const PRIORITY: i16 = 3;
    const MAX_RETRIES: Option<u32> = Some(1);
    type Output = Sum;
    type Error = HandlerError;

    async fn run(self, ctx: TaskContext) -> Result<Sum, HandlerError> {
        Ok(Sum {
            total: self.a + self.b,
            worker: ctx.worker_id.clone(),
        })
    }
}

/// Counts what the context-using jobs saw, shared through `Registry::data`.
#[derive(Default)]
struct Seen {
    followups: AtomicU32,
    cancelled: AtomicU32,
}

/// Enqueues a follow-up `Add` from its handler, and counts itself.
#[derive(Serialize, Deserialize)]
struct Fanout {
    n: i64,
}

impl Job for Fanout {
    const NAME: &'static str = "typed.fanout";
    const QUEUE: &'static str = "math";
    type Output = String;
    type Error = anyhow::Error;

    async fn run(self, ctx: TaskContext) -> Result<String, anyhow::Error> {
        let seen = ctx
            .data::<Arc<Seen>>()
            .ok_or_else(|| anyhow::anyhow!("no shared state"))?;
        seen.followups.fetch_add(1, Ordering::SeqCst);
        let next = ctx.queue()?.push(Add { a: self.n, b: self.n }).await?;
        Ok(next.id().to_string())
    }
}

/// Runs past its timeout; records that its token fired.
#[derive(Serialize, Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "typed.slow";
    const QUEUE: &'static str = "math";
    const MAX_RETRIES: Option<u32> = Some(0);
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(200));
    type Output = ();
    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn run(self, ctx: TaskContext) -> Result<(), Self::Error> {
        assert!(ctx.deadline.is_some());
        let token = ctx.cancellation_token();
        let seen = ctx.data::<Arc<Seen>>().cloned();
        // The handler's own future is dropped at the deadline; code it
        // handed the token to sees it fire.
        tokio::spawn(async move {
            token.cancelled().await;
            if let Some(seen) = seen {
                seen.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }
}

/// A client of every backend this build can reach.
async fn clients(dir: &std::path::Path) -> Vec<OmniQ> {
    let mut clients = vec![OmniQ::with_storage(
        Arc::new(MemoryStorage::new()),
        Settings::default(),
    )];
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let settings = Settings::builder()
            .backend(backend)
            .base_dir(dir.join(backend.as_str()))
            .build()
            .unwrap();
        clients.push(OmniQ::open(settings).await.unwrap());
    }
    #[cfg(feature = "postgres")]
    {
        let url = std::env::var("OMNIQ_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
        let settings = Settings::builder()
            .backend(BackendKind::Postgres)
            .database_url(&url)
            .pg_schema(format!("omniq_typed{}", std::process::id()))
            .build()
            .unwrap();
        match OmniQ::open(settings).await {
            Ok(client) => clients.push(client),
            Err(error) => {
                assert!(
                    std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "no PostgreSQL at {url}: {error}"
                );
                eprintln!("no PostgreSQL at {url} ({error}); skipping it");
            }
        }
    }
    clients
}

/// Drops the PostgreSQL schema a client used, if it is on PostgreSQL.
async fn cleanup(client: &OmniQ) {
    #[cfg(feature = "postgres")]
    if client.storage().backend_name() == "postgres" {
        use omniq::postgres::sqlx::{self, Connection as _};
        let url = std::env::var("OMNIQ_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let drop = format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            client.settings().pg_schema
        );
        sqlx::query(&drop).execute(&mut conn).await.unwrap();
    }
    #[cfg(not(feature = "postgres"))]
    let _ = client;
}

fn registry(seen: &Arc<Seen>) -> Registry {
    let mut registry = Registry::new();
    registry.job::<Add>().job::<Fanout>().job::<Slow>();
    registry.register(
        "plain.double",
        |n: i64| async move { Ok::<_, HandlerError>(n * 2) },
    );
    registry.data(seen.clone());
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_round_trip_beside_string_handlers_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let backend = q.storage().backend_name();
        let seen = Arc::new(Seen::default());
        let pool = q
            .worker(registry(&seen))
            .queue("math", 4)
            .queue("default", 2)
            .start()
            .unwrap();

        // A typed job, with the job's defaults, and its typed output.
        let handle = q.push(Add { a: 2, b: 3 }).await.unwrap();
        let sum = handle.wait(Duration::from_secs(20)).await.unwrap();
        assert_eq!(sum.total, 5, "{backend}");
        assert!(!sum.worker.is_empty(), "{backend}: the context names the worker");
        let task = q.get(handle.id()).await.unwrap();
        assert_eq!(
            (
                task.func_path.as_str(),
                task.queue.as_str(),
                task.priority,
                task.max_retries
            ),
            ("typed.add", "math", 3, 1),
            "{backend}"
        );
        assert_eq!(q.job_result::<Add>(handle.id()).await.unwrap(), Some(sum));

        // Options from the builder win over the defaults.
        let later = q
            .job(&Add { a: 1, b: 1 })
            .queue("default")
            .priority(-1)
            .push()
            .await
            .unwrap();
        assert_eq!(later.wait(Duration::from_secs(20)).await.unwrap().total, 2);
        assert_eq!(q.get(later.id()).await.unwrap().queue, "default");

        // A string handler in the same pool, and a typed job enqueued by name.
        let plain = q
            .task("plain.double", &21)
            .unwrap()
            .queue("math")
            .enqueue()
            .await
            .unwrap();
        let result = q.wait_result(plain, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.value_as::<i64>().unwrap(), Some(42), "{backend}");
        let by_name = q
            .task("typed.add", &serde_json::json!({"a": 40, "b": 2}))
            .unwrap()
            .queue("math")
            .enqueue()
            .await
            .unwrap();
        q.wait_result(by_name, Duration::from_secs(20)).await.unwrap();
        assert_eq!(q.job_result::<Add>(by_name).await.unwrap().unwrap().total, 42);

        // A payload of the wrong shape fails clearly, naming the job.
        let wrong = q
            .task("typed.add", &serde_json::json!({"a": "two"}))
            .unwrap()
            .queue("math")
            .enqueue()
            .await
            .unwrap();
        let result = q.wait_result(wrong, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.status, TaskStatus::Failed, "{backend}");
        let error = result.error.unwrap();
        assert!(
            error.message.contains("typed.add"),
            "{backend}: {}",
            error.message
        );
        match q.job_result::<Add>(wrong).await {
            Err(Error::TaskFailed { status, message, .. }) => {
                assert_eq!(status, TaskStatus::Failed);
                assert!(message.contains("typed.add"), "{message}");
            }
            other => panic!("{backend}: {other:?}"),
        }

        // A follow-up job enqueued from a handler, with shared state.
        let fanout = q.push(Fanout { n: 7 }).await.unwrap();
        let next: omniq::TaskId = fanout
            .wait(Duration::from_secs(20))
            .await
            .unwrap()
            .parse()
            .unwrap();
        q.wait_result(next, Duration::from_secs(20)).await.unwrap();
        let followed = q.job_result::<Add>(next).await.unwrap().unwrap();
        assert_eq!(followed.total, 14, "{backend}");
        assert_eq!(seen.followups.load(Ordering::SeqCst), 1, "{backend}");

        // The cancellation token fires at the timeout.
        let slow = q.push(Slow).await.unwrap();
        match slow.wait(Duration::from_secs(20)).await {
            Err(Error::TaskFailed { status, message, .. }) => {
                assert_eq!(status, TaskStatus::Failed);
                assert!(message.contains("timeout"), "{backend}: {message}");
            }
            other => panic!("{backend}: {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.cancelled.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the token fired");

        assert!(pool.shutdown(Duration::from_secs(5)).await.drained, "{backend}");
        cleanup(&q).await;
    }
}

#[tokio::test]
async fn a_pool_started_without_a_client_says_so_to_a_handler_that_asks_for_one() {
    let storage = Arc::new(MemoryStorage::new());
    let q = OmniQ::with_storage(storage.clone(), Settings::default());
    let seen = Arc::new(Seen::default());
    // Straight from the worker crate: no client in the context.
    let pool = omniq::WorkerPool::new(storage, registry(&seen))
        .queue("math", 1)
        .start()
        .unwrap();
    let handle = q.push(Fanout { n: 1 }).await.unwrap();
    // This client's signals do not reach that pool: it finds the task by polling.
    match handle.wait(Duration::from_secs(20)).await {
        Err(Error::TaskFailed { message, .. }) => assert!(message.contains("OmniQ client"), "{message}"),
        other => panic!("{other:?}"),
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

/// A job whose payload cannot become JSON: a map with keys that are not strings.
#[derive(Debug, Serialize, Deserialize)]
struct Unserializable {
    by_pair: std::collections::HashMap<(i32, i32), i32>,
}

impl Job for Unserializable {
    const NAME: &'static str = "typed.unserializable";
    type Output = ();
    type Error = HandlerError;

    async fn run(self, _ctx: TaskContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_say_duplicates_go_in_batches_and_report_bad_payloads_at_push() {
    let dir = tempfile::tempdir().unwrap();
    for q in clients(dir.path()).await {
        let backend = q.storage().backend_name();
        // No pool runs: the pushed jobs stay pending, holding their keys.
        let first = q
            .job(&Add { a: 1, b: 2 })
            .unique_key("sum:1+2")
            .push()
            .await
            .unwrap();
        assert!(!first.duplicate(), "{backend}");
        let again = q
            .job(&Add { a: 1, b: 2 })
            .unique_key("sum:1+2")
            .push()
            .await
            .unwrap();
        assert!(
            again.duplicate(),
            "{backend}: the second push of a live key is a duplicate"
        );
        assert_eq!(again.id(), first.id(), "{backend}: and follows the holder");

        let handles = q.push_many((0..5).map(|i| Add { a: i, b: i })).await.unwrap();
        assert_eq!(handles.len(), 5);
        for (i, handle) in handles.iter().enumerate() {
            assert!(!handle.duplicate());
            let task = q.get(handle.id()).await.unwrap();
            assert_eq!(
                task.kwargs["a"], i as i64,
                "{backend}: handles come in the jobs' order"
            );
            assert_eq!(
                (task.queue.as_str(), task.priority),
                ("math", 3),
                "{backend}: the job's defaults"
            );
        }

        let bad = Unserializable {
            by_pair: [((1, 2), 3)].into_iter().collect(),
        };
        let error = q
            .job(&bad)
            .delay(Duration::from_secs(1))
            .push()
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Serialization(_) | Error::InvalidConfig { .. }),
            "{backend}: {error:?}"
        );
        assert_eq!(
            q.counts().await.unwrap().pending,
            6,
            "{backend}: nothing more stored"
        );
        let built = q.job(&Add { a: 9, b: 9 }).priority(7).to_new_task().unwrap();
        assert_eq!((built.func_path.as_str(), built.priority), ("typed.add", 7));
        cleanup(&q).await;
    }
}

/// A typed job pushed inside the program's own transaction exists only if
/// that transaction commits.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_typed_push_in_the_programs_transaction_follows_its_commit() {
    use omniq::postgres::sqlx::{self, Connection as _};
    let dir = tempfile::tempdir().unwrap();
    let Some(q) = clients(dir.path())
        .await
        .into_iter()
        .find(|q| q.storage().backend_name() == "postgres")
    else {
        return;
    };
    let url = q.settings().database_url.clone().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let dropped = q.job(&Add { a: 1, b: 1 }).push_in(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(matches!(q.get(dropped.id()).await, Err(Error::NotFound { .. })));
    let mut tx = conn.begin().await.unwrap();
    let kept = q.job(&Add { a: 2, b: 2 }).push_in(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(q.get(kept.id()).await.unwrap().status, TaskStatus::Pending);
    assert!(!kept.duplicate());
    cleanup(&q).await;
}
