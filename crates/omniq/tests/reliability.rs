//! Bad input and hard conditions through the public API: a full disk, huge
//! payloads, hostile names, a truncated database. Nothing already stored is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use omniq::core::{ClaimRequest, Finish, Outcome};
use omniq::Storage as _;
use omniq::{BackendKind, Error, HandlerError, NewTask, OmniQ, Registry, Settings, StorageExt, TaskStatus};
use serde_json::json;
use time::OffsetDateTime;

const BIG: usize = 8 << 20;

fn settings(backend: BackendKind, dir: &Path) -> Settings {
    Settings::builder()
        .backend(backend)
        .base_dir(dir)
        .build()
        .unwrap()
}

fn backend_from_env() -> BackendKind {
    std::env::var("OMNIQ_TEST_BACKEND").unwrap().parse().unwrap()
}

/// Runs in a child process whose files may not grow past about 2 MB
/// (RLIMIT_FSIZE), as on a disk that is full.
#[test]
#[ignore = "runs only as a child of writes_fail_cleanly_on_a_full_disk"]
fn child_on_a_full_disk() {
    let dir = PathBuf::from(std::env::var("OMNIQ_TEST_STORE").unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let queue = OmniQ::open(settings(backend_from_env(), &dir)).await.unwrap();
        let before = queue.counts().await.unwrap();
        let kept: Vec<_> = queue.list(Default::default()).await.unwrap();

        // An enqueue that cannot be written is a clear error, and changes nothing.
        let huge = "x".repeat(BIG);
        let err = queue.enqueue("big", &huge).await.unwrap_err();
        println!("enqueue on a full disk: {err}");
        assert!(matches!(err, Error::Io { .. } | Error::Backend { .. }), "{err:?}");
        assert_eq!(queue.counts().await.unwrap(), before);
        assert_eq!(
            queue.list(Default::default()).await.unwrap(),
            kept,
            "nothing stored is lost"
        );

        // A finish that cannot be written leaves the task running, not lost.
        let store = queue.storage();
        let now = OffsetDateTime::now_utc();
        let claimed = store
            .claim(ClaimRequest {
                queue: omniq_core::DEFAULT_QUEUE.into(),
                worker_id: "full".into(),
                limit: 1,
                lease_for: Duration::from_secs(60),
                now,
            })
            .await
            .unwrap();
        let task = &claimed[0];
        let token = task.lease.as_ref().unwrap().token;
        let finish = |result| Finish {
            id: task.id,
            token,
            outcome: Outcome::Complete { result },
        };
        let err = store.finish(vec![finish(json!(huge))], now).await.unwrap_err();
        println!("finish on a full disk: {err}");
        assert_eq!(store.get(task.id).await.unwrap().status, TaskStatus::Running);

        // Small writes still go through.
        if let Err(e) = store.finish(vec![finish(json!("small"))], now).await {
            panic!("small finish: {e}")
        }
        assert_eq!(store.get(task.id).await.unwrap().status, TaskStatus::Completed);
        queue.enqueue("small", &1).await.unwrap();
    });
}

#[test]
fn writes_fail_cleanly_on_a_full_disk() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
            for n in 0..3 {
                queue.enqueue("keep", &n).await.unwrap();
            }
        });
        // `trap '' XFSZ` makes an oversized write fail with EFBIG instead of
        // killing the process; `ulimit -f` caps every file the child writes.
        let status = Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 4096; exec \"$0\" child_on_a_full_disk --exact --ignored --nocapture")
            .arg(std::env::current_exe().unwrap())
            .env("OMNIQ_TEST_STORE", dir.path())
            .env("OMNIQ_TEST_BACKEND", backend.as_str())
            .status()
            .unwrap();
        assert!(status.success(), "{backend}: the child failed");

        // Space is back: the store is whole and takes big tasks again.
        runtime.block_on(async {
            let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
            let counts = queue.counts().await.unwrap();
            assert_eq!(
                (counts.pending, counts.completed, counts.running),
                (3, 1, 0),
                "{backend}"
            );
            let id = queue.enqueue("big", &"y".repeat(BIG)).await.unwrap();
            assert_eq!(queue.get(id).await.unwrap().args[0].as_str().unwrap().len(), BIG);
            match backend {
                BackendKind::File => {
                    let store = omniq::FileStorage::open_path(dir.path(), omniq::Durability::Normal)
                        .await
                        .unwrap();
                    let report = store.check(false).await.unwrap();
                    assert!(report.problems.is_empty(), "{:?}", report.problems);
                }
                _ => {
                    let store = omniq::SqliteStorage::open_path(
                        dir.path().join("omniq.db"),
                        omniq::Durability::Normal,
                    )
                    .await
                    .unwrap();
                    assert_eq!(store.integrity_check().await.unwrap(), ["ok"]);
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_payloads_and_results_round_trip() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
        let mut registry = Registry::new();
        registry.register(
            "echo",
            |text: String| async move { Ok::<_, HandlerError>(text.len()) },
        );
        let pool = queue.worker(registry).start().expect("start the pool");
        let payload = "é".repeat(5 << 20); // 10 MB of UTF-8
        let id = queue.enqueue("echo", &payload).await.unwrap();
        let result = queue.wait_result(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            result.value_as::<usize>().unwrap(),
            Some(payload.len()),
            "{backend}"
        );
        assert_eq!(
            queue.get(id).await.unwrap().args[0].as_str(),
            Some(payload.as_str())
        );
        pool.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handler_names_are_only_data() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
        let pool = queue.worker(Registry::new()).start().expect("start the pool");
        let names = [
            "../../etc/passwd",
            "/absolute/path",
            "nul\0byte",
            "quote\"'; DROP TABLE tasks; --",
            "🦀 ünïcödé",
            &"long".repeat(10_000),
        ];
        for name in names {
            let id = queue.enqueue(name, &()).await.unwrap();
            let result = queue.wait_result(id, Duration::from_secs(20)).await.unwrap();
            let error = result.error.unwrap();
            assert_eq!(
                (result.status, error.kind.as_str()),
                (TaskStatus::Failed, "unknown_handler")
            );
            assert_eq!(
                queue.get(id).await.unwrap().func_path,
                name,
                "{backend} stores the name as it is"
            );
        }
        assert!(matches!(
            queue
                .storage()
                .enqueue_one(NewTask::new(""), &Settings::default())
                .await,
            Err(Error::InvalidConfig { .. })
        ));
        assert!(!dir.path().join("etc").exists());
        pool.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_database_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = omniq::SqliteStorage::open_path(&path, omniq::Durability::Normal)
        .await
        .unwrap();
    let tasks = (0..2_000)
        .map(|n| NewTask::with_payload("t", &"z".repeat(n % 300)).unwrap())
        .collect();
    store.enqueue_many(tasks, &Settings::default()).await.unwrap();
    // Everything into the database file, the WAL emptied: what is cut below
    // is the only copy.
    store.checkpoint().await.unwrap();
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();

    let found = omniq::sqlite_integrity_check(&path).await.unwrap();
    assert_ne!(found, ["ok"], "a truncated file is not reported sound");
    let failed = match omniq::SqliteStorage::open_path(&path, omniq::Durability::Normal).await {
        Err(error) => error,
        Ok(store) => store
            .list(Default::default())
            .await
            .expect_err("listing 2,000 tasks of a file cut to a third"),
    };
    match failed {
        Error::Corrupt { path: at, reason } => {
            assert_eq!(at, path);
            assert!(reason.contains("backup"), "{reason}");
        }
        other => panic!("expected an error naming the damaged file, got {other:?}"),
    }
}
