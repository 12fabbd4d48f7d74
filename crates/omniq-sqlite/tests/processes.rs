//! Several OS processes share one database: every task runs exactly once.
//!
//! The parent test re-executes this test binary three times, running only the
//! ignored `child_worker` test, which claims from the same database.

use std::path::PathBuf;
use std::process::Stdio;

use omniq_core::conformance::processes;
use omniq_core::Durability;
use omniq_sqlite::SqliteStorage;

#[test]
#[ignore = "runs only as a child process of several_processes_run_each_task_exactly_once"]
fn child_worker() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let db = PathBuf::from(var("OMNIQ_TEST_DB"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStorage::open_path(&db, Durability::Normal).await.unwrap();
        let log = PathBuf::from(var("OMNIQ_TEST_LOG"));
        let stop = PathBuf::from(var("OMNIQ_TEST_STOP"));
        processes::child_loop(&store, &var("OMNIQ_TEST_WORKER"), &log, &stop).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_run_each_task_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&db, Durability::Normal).await.unwrap();
    let stop = dir.path().join("stop");
    let logs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("child-{i}.log")))
        .collect();
    let mut children = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "child_worker",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("OMNIQ_TEST_DB", &db)
            .env("OMNIQ_TEST_LOG", log)
            .env("OMNIQ_TEST_STOP", &stop)
            .env("OMNIQ_TEST_WORKER", format!("child-{i}"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
    }
    let ids = processes::enqueue_while_children_run(&store, 40, 50).await;
    std::fs::write(&stop, b"").unwrap();
    for mut child in children {
        let status = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait())
            .await
            .expect("a child did not finish in two minutes")
            .unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    let logs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    processes::assert_exactly_once(&store, &ids, &logs).await;
}
