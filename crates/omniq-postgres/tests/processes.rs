//! Several OS processes share one PostgreSQL schema: every task of three
//! queues runs exactly once, and every key enqueued by all of them at once is
//! stored once. The parent re-executes this test binary three times, running
//! only the ignored `child_worker` test; the "store path" it hands them is
//! the schema's name.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{fresh_schema, url, DropSchema};
use omniq_core::conformance::processes;
use omniq_core::Storage;
use omniq_postgres::PostgresStorage;

async fn open(schema: &Path) -> PostgresStorage {
    PostgresStorage::connect_with(&url(), &schema.to_string_lossy(), 4)
        .await
        .unwrap()
}

#[test]
#[ignore = "runs only as a child process of several_processes_run_each_task_exactly_once"]
fn child_worker() {
    processes::child_main(|schema| async move { Arc::new(open(&schema).await) as Arc<dyn Storage> });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_run_each_task_exactly_once() {
    if !common::available().await {
        return;
    }
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let dir = tempfile::tempdir().unwrap();
    processes::parent(&open(Path::new(&schema)).await, Path::new(&schema), dir.path()).await;
}
