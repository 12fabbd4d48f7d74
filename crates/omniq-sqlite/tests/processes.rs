//! Several OS processes share one database: every task runs exactly once.
//!
//! The parent test re-executes this test binary three times, running only the
//! ignored `child_worker` test, which claims from the same database.

use std::path::Path;
use std::sync::Arc;

use omniq_core::conformance::processes;
use omniq_core::{Durability, Storage};
use omniq_sqlite::SqliteStorage;

async fn open(path: &Path) -> SqliteStorage {
    SqliteStorage::open_path(path, Durability::Normal).await.unwrap()
}

#[test]
#[ignore = "runs only as a child process of several_processes_run_each_task_exactly_once"]
fn child_worker() {
    processes::child_main(|path| async move { Arc::new(open(&path).await) as Arc<dyn Storage> });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_run_each_task_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("omniq.db");
    processes::parent(&open(&db).await, &db, dir.path()).await;
}
