//! Several hosts on one PostgreSQL database, through the public API: a task
//! enqueued inside the program's own transaction, hosts whose clocks are 30 s
//! off, a host that loses its connections mid-lease, a worker woken by another
//! host's enqueue, and the poll-only mode for poolers. Each "host" is a client
//! with a store of its own, as another machine would have.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq::core::{ClaimRequest, Finish, FinishOutcome, Outcome};
use omniq::postgres::{sqlx, ConnectOptions, PostgresStorage};
use omniq::{Clock, HandlerError, NewTask, OmniQ, PoolConfig, Registry, Settings, Storage, TaskStatus};
use serde_json::json;
use sqlx::Connection as _;
use time::OffsetDateTime;

fn url() -> String {
    std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
}

/// A schema of this test alone, dropped at the end; `None` (after saying so)
/// where no server answers, unless `OMNIQ_REQUIRE_POSTGRES=1` forbids it.
async fn schema(name: &str) -> Option<Schema> {
    match sqlx::PgConnection::connect(&url()).await {
        Ok(_) => Some(Schema(format!("omniq_h{}_{name}", std::process::id()))),
        Err(error) => {
            assert!(
                std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "no PostgreSQL at {}: {error}",
                url()
            );
            eprintln!("no PostgreSQL at {} ({error}); skipping", url());
            None
        }
    }
}

struct Schema(String);

impl Schema {
    /// A client on this schema, as a host of its own.
    async fn host(&self) -> OmniQ {
        let settings = Settings::builder()
            .backend(omniq::BackendKind::Postgres)
            .database_url(url())
            .pg_schema(&self.0)
            .build()
            .unwrap();
        OmniQ::open(settings).await.unwrap()
    }

    /// A store on this schema with `options` changed.
    async fn store(&self, options: impl FnOnce(ConnectOptions) -> ConnectOptions) -> PostgresStorage {
        PostgresStorage::connect_options(options(ConnectOptions::new(url()).schema(&self.0)))
            .await
            .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url()).await.ok()?;
                sqlx::query(&drop).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(
        "add",
        |(a, b): (i64, i64)| async move { Ok::<_, HandlerError>(a + b) },
    );
    registry.register("slow", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(ms)
    });
    registry
}

/// A host clock `offset` seconds away from the true time.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_enqueued_in_the_programs_transaction_exists_only_if_it_commits() {
    let Some(schema) = schema("tx").await else { return };
    let q = schema.host().await;
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let orders = format!("\"{}\".orders", schema.0);
    sqlx::query(&format!("CREATE TABLE {orders} (id int PRIMARY KEY)"))
        .execute(&mut conn)
        .await
        .unwrap();

    // Rolled back: neither the program's row nor the task.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} VALUES (1)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let dropped = q.task("add", &(1, 1)).unwrap().enqueue_in(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(matches!(
        q.get(dropped.id).await,
        Err(omniq::Error::NotFound { .. })
    ));
    assert_eq!(q.counts().await.unwrap().total(), 0);

    // Committed: both, and a worker on another host runs the task.
    let worker = schema.host().await;
    let pool = worker.worker(registry()).concurrency(2).start().unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {orders} VALUES (2)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = q.task("add", &(2, 3)).unwrap().enqueue_in(&mut tx).await.unwrap();
    // Not visible before the commit, to anyone.
    assert!(matches!(
        worker.get(kept.id).await,
        Err(omniq::Error::NotFound { .. })
    ));
    tx.commit().await.unwrap();
    let result = q.wait_result(kept.id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(result.value_as::<i64>().unwrap(), Some(5));
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {orders}"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert!(pool.shutdown(Duration::from_secs(5)).await.drained);

    // Finished records are history, not new work, inside a transaction too.
    let mut done = NewTask::new("add")
        .into_task(&Settings::default(), OffsetDateTime::now_utc())
        .unwrap();
    done.cancel(OffsetDateTime::now_utc()).unwrap();
    let mut tx = conn.begin().await.unwrap();
    let refused = omniq::postgres::enqueue_in(&mut tx, &schema.0, vec![done]).await;
    assert!(
        matches!(refused, Err(omniq::Error::Conflict { .. })),
        "{refused:?}"
    );
}

/// A client made over a store of one schema with settings that name
/// another (or the default): `enqueue_in` writes into the store's schema,
/// where `get` finds the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_writes_into_the_schema_of_the_clients_store() {
    let Some(schema) = schema("own").await else { return };
    let store = schema.store(|options| options).await;
    let elsewhere = Settings::builder().pg_schema("omniq_elsewhere").build().unwrap();
    let q = OmniQ::with_storage(Arc::new(store), elsewhere);
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let enqueued = q.task("add", &(1, 2)).unwrap().enqueue_in(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(q.get(enqueued.id).await.unwrap().status, TaskStatus::Pending);
    let stray: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'omniq_elsewhere'")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    assert_eq!(stray, None, "nothing was written under the settings' schema");
    // A store that is not PostgreSQL answers a clear error.
    let memory = OmniQ::with_storage(Arc::new(omniq::MemoryStorage::new()), Settings::default());
    let mut tx = conn.begin().await.unwrap();
    let refused = memory.task("add", &(1, 2)).unwrap().enqueue_in(&mut tx).await;
    assert!(
        matches!(refused, Err(omniq::Error::Unsupported(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_whose_clocks_are_30_s_off_keep_etas_and_leases() {
    let Some(schema) = schema("clock").await else {
        return;
    };
    let q = schema.host().await;
    let config = PoolConfig {
        lease: Duration::from_secs(4),
        renew_every: Duration::from_secs(1),
        requeue_every: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        ..PoolConfig::default()
    };

    // A host 30 s ahead would run a task due in 2 s at once by its own clock.
    let ahead = schema.host().await;
    let pool = ahead
        .worker(registry())
        .config(config.clone())
        .clock(Arc::new(Skewed(30)))
        .start()
        .unwrap();
    let started = Instant::now();
    let due = q
        .task("add", &(1, 2))
        .unwrap()
        .delay(Duration::from_secs(2))
        .enqueue()
        .await
        .unwrap();
    let result = q.wait_result(due, Duration::from_secs(30)).await.unwrap();
    assert_eq!(result.status, TaskStatus::Completed);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "a task due in 2 s ran after {:?}",
        started.elapsed()
    );
    pool.shutdown(Duration::from_secs(5)).await;

    // A host 30 s behind would take leases that end, by everyone else's
    // clock, before they start; the host ahead (whose pool requeues expired
    // leases every 200 ms) would then hand its task to another worker.
    let behind = schema.host().await;
    let slow_pool = behind
        .worker(registry())
        .config(config.clone())
        .clock(Arc::new(Skewed(-30)))
        .start()
        .unwrap();
    // It serves another queue: only its lease pass touches this task.
    let requeuer = ahead
        .worker(Registry::new())
        .config(config)
        .queue("elsewhere", 1)
        .clock(Arc::new(Skewed(30)))
        .start()
        .unwrap();
    let slow = q.enqueue("slow", &2500u64).await.unwrap();
    let result = q.wait_result(slow, Duration::from_secs(30)).await.unwrap();
    assert_eq!(result.status, TaskStatus::Completed);
    assert_eq!(result.attempts, 1, "the lease was taken from its worker");
    slow_pool.shutdown(Duration::from_secs(5)).await;
    requeuer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_loses_its_connections_mid_lease_cannot_finish_late() {
    let Some(schema) = schema("cut").await else { return };
    let tagged = |name: &str| format!("{}?application_name={name}", url());
    let host_a = schema
        .store(|o| ConnectOptions {
            url: tagged("omniq_host_a"),
            ..o
        })
        .await;
    let host_b = schema.store(|o| o).await;
    let now = OffsetDateTime::now_utc();
    let task = NewTask::new("add").into_task(&Settings::default(), now).unwrap();
    host_b.enqueue(vec![task.clone()]).await.unwrap();
    let claim = |worker: &str, now| ClaimRequest {
        worker_id: worker.into(),
        queue: omniq::DEFAULT_QUEUE.into(),
        limit: 1,
        lease_for: Duration::from_secs(1),
        now,
    };
    let on_a = host_a.claim(claim("host-a", now)).await.unwrap().remove(0);

    // Host A drops off the database: every connection it has is killed.
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'omniq_host_a'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty() && killed.iter().all(|k| *k));

    // Host B, after the lease, hands the task back and runs it.
    let later = now + Duration::from_secs(5);
    assert_eq!(host_b.requeue_expired(later).await.unwrap(), [task.id]);
    let on_b = host_b.claim(claim("host-b", later)).await.unwrap().remove(0);
    let finish = |task: &omniq::Task, result| Finish {
        id: task.id,
        token: task.lease.as_ref().unwrap().token,
        outcome: Outcome::Complete { result },
    };
    let answer = host_b
        .finish(vec![finish(&on_b, json!("b"))], later)
        .await
        .unwrap();
    assert!(matches!(
        answer[..],
        [FinishOutcome::Applied {
            status: TaskStatus::Completed,
            ..
        }]
    ));

    // Host A comes back (its pool connects again) and finishes late: refused.
    let answer = host_a
        .finish(vec![finish(&on_a, json!("a"))], later)
        .await
        .unwrap();
    assert_eq!(answer, [FinishOutcome::LeaseLost]);
    let stored = host_b.get(task.id).await.unwrap();
    assert_eq!((stored.result, stored.attempts), (Some(json!("b")), 2));
    assert_eq!(stored.lease, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_hosts_enqueue_wakes_an_idle_worker_at_once() {
    let Some(schema) = schema("wake").await else {
        return;
    };
    let worker = schema.host().await;
    let q = schema.host().await;
    // Polls and lease passes this rare mean only the notification can start
    // the task in time.
    let config = PoolConfig {
        poll_interval: Duration::from_secs(600),
        requeue_every: Duration::from_secs(600),
        ..PoolConfig::default()
    };
    let pool = worker.worker(registry()).config(config).start().unwrap();
    // Let the pool go idle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        let started = Instant::now();
        let id = q.enqueue("add", &(round, 1)).await.unwrap();
        let result = q.wait_result(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.value_as::<i64>().unwrap(), Some(round + 1));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by polling, not by the notice"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_only_mode_listens_to_nothing_and_still_runs_everything() {
    let Some(schema) = schema("poll").await else {
        return;
    };
    let store = Arc::new(schema.store(|o| o.listen(false)).await);
    assert!(store.wake_ups().is_none());
    let settings = Settings::builder().pg_schema(&schema.0).build().unwrap();
    let worker = OmniQ::with_storage(store, settings);
    let config = PoolConfig {
        poll_interval: Duration::from_millis(50),
        ..PoolConfig::default()
    };
    let pool = worker.worker(registry()).config(config).start().unwrap();
    let q = schema.host().await;
    let ids = q
        .enqueue_many(
            (0..20)
                .map(|i| NewTask::with_payload("add", &(i, i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    for (i, id) in ids.into_iter().enumerate() {
        let result = q.wait_result(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(result.value_as::<i64>().unwrap(), Some(2 * i as i64));
    }
    assert!(pool.shutdown(Duration::from_secs(5)).await.drained);
}
