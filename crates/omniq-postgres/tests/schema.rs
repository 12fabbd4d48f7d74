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
    // Back to what version 1 wrote: no claim column.
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::raw_sql(&format!(
        "ALTER TABLE \"{schema}\".tasks DROP COLUMN claim; \
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
