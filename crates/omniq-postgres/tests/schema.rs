//! A schema written by the previous version is migrated forward on open,
//! keeping its tasks, and a running task claimed under the new version reads
//! back whole.

mod common;

use std::time::Duration;

use common::{fresh_schema, url, DropSchema};
use omniq_core::{ClaimRequest, NewTask, Settings, Storage, TaskStatus};
use omniq_postgres::PostgresStorage;
use sqlx::Connection as _;
use time::OffsetDateTime;

#[tokio::test]
async fn a_version_1_schema_is_migrated_and_keeps_its_tasks() {
    if !common::available().await {
        return;
    }
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = PostgresStorage::connect(&url(), &schema).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let task = NewTask::new("kept").into_task(&Settings::default(), now).unwrap();
    store.enqueue(vec![task.clone()]).await.unwrap();
    drop(store);
    // Back to what version 1 wrote: no claim column, no views, no schedules,
    // no heartbeats or turns, the finished index on the time alone, no index
    // of key windows, no flow control.
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::raw_sql(&format!(
        "SET search_path TO \"{schema}\"; DROP VIEW pending, running, completed, results; DROP TABLE schedules; \
         DROP TABLE workers, turns; DROP INDEX tasks_finished; DROP INDEX tasks_unique_window; \
         DROP TABLE queue_limits, rate_buckets; DROP INDEX tasks_key_order; \
         ALTER TABLE \"{schema}\".tasks DROP COLUMN concurrency_key; \
         CREATE INDEX tasks_finished ON \"{schema}\".tasks (finished_at) WHERE finished_at IS NOT NULL; \
         ALTER TABLE \"{schema}\".tasks DROP COLUMN claim; \
         UPDATE \"{schema}\".omniq_meta SET value = '1' WHERE key = 'schema_version'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    let store = PostgresStorage::connect(&url(), &schema).await.unwrap();
    let version: String = sqlx::query_scalar(&format!(
        "SELECT value FROM \"{schema}\".omniq_meta WHERE key = 'schema_version'"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(version, omniq_postgres::schema::CURRENT_VERSION.to_string());
    assert_eq!(store.get(task.id).await.unwrap(), task);
    let claimed = store
        .claim(ClaimRequest {
            worker_id: "w".into(),
            queue: omniq_core::DEFAULT_QUEUE.into(),
            limit: 1,
            lease_for: Duration::from_secs(30),
            now,
        })
        .await
        .unwrap();
    assert_eq!(store.get(task.id).await.unwrap(), claimed[0]);
    assert_eq!(claimed[0].status, TaskStatus::Running);
}

/// The views under the seed's names show each task where its status puts it.
#[tokio::test]
async fn the_views_show_tasks_by_status() {
    if !common::available().await {
        return;
    }
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = PostgresStorage::connect(&url(), &schema).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            NewTask::new("viewed")
                .into_task(&Settings::default(), now)
                .unwrap()
        })
        .collect();
    store.enqueue(tasks).await.unwrap();
    let claimed = store
        .claim(ClaimRequest {
            worker_id: "w-views".into(),
            queue: omniq_core::DEFAULT_QUEUE.into(),
            limit: 2,
            lease_for: Duration::from_secs(30),
            now,
        })
        .await
        .unwrap();
    let finish = omniq_core::Finish {
        id: claimed[0].id,
        token: claimed[0].lease.as_ref().unwrap().token,
        outcome: omniq_core::Outcome::Complete {
            result: serde_json::json!({"ok": 1}),
        },
    };
    store.finish(vec![finish], now).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let count = |view: &str| format!("SELECT count(*) FROM \"{schema}\".{view}");
    for (view, expected) in [
        ("pending", 1i64),
        ("running", 1),
        ("completed", 1),
        ("results", 1),
    ] {
        let n: i64 = sqlx::query_scalar(&count(view))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, expected, "{view}");
    }
    let worker: String = sqlx::query_scalar(&format!("SELECT worker_id FROM \"{schema}\".running"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(worker, "w-views");
    let result: String = sqlx::query_scalar(&format!("SELECT result::text FROM \"{schema}\".results"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(result, r#"{"ok":1}"#);
}
