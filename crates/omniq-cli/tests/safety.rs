//! What the `omniq` command must never do with what it reads: let a record
//! written by another program drive the terminal, print a database password,
//! or stop a bulk retry at the first task it cannot retry.

mod common;

use std::time::Duration;

use common::Store;
use omniq::{BackendKind, HandlerError, OmniQ, Registry, Settings};

/// A file store holding tasks whose names, keys and errors carry terminal
/// control sequences (retitle the terminal, clear the screen).
fn hostile_store() -> (Store, omniq::TaskId) {
    let s = common::store(BackendKind::File);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = runtime.block_on(async {
        let settings = Settings::builder()
            .backend(BackendKind::File)
            .base_dir(&s.base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        let mut registry = Registry::new();
        registry.register("evil\x1b]0;pwned\x07name", |_: ()| async {
            Err::<(), _>(HandlerError::fatal("boom\x1b[2J\u{9b}31m"))
        });
        let pool = queue.worker(registry).start().unwrap();
        let id = queue
            .task("evil\x1b]0;pwned\x07name", &())
            .unwrap()
            .unique_key("key\x1b[2J")
            .enqueue()
            .await
            .unwrap();
        queue.wait_result(id, Duration::from_secs(20)).await.unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        id
    });
    (s, id)
}

#[test]
fn control_sequences_from_the_store_are_escaped() {
    let (s, id) = hostile_store();
    let id = id.to_string();
    for args in [
        vec!["list"],
        vec!["show", id.as_str()],
        vec!["result", id.as_str()],
        vec!["stats"],
    ] {
        let out = s.run(&args);
        assert!(
            !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{9b}'),
            "{args:?}: {out:?}"
        );
    }
    let shown = s.run(&["show", &id]);
    assert!(shown.contains("evil\\u{1b}]0;pwned\\u{7}name"), "{shown}");
    assert!(shown.contains("boom\\u{1b}[2J\\u{9b}31m"), "{shown}");
    // JSON keeps the values exact, escaped by JSON itself.
    let json: serde_json::Value = serde_json::from_str(&s.run(&["show", &id, "--json"])).unwrap();
    assert_eq!(json["func_path"], "evil\x1b]0;pwned\x07name");
}

#[test]
fn database_passwords_are_never_printed() {
    for url in [
        "postgres://ada:hunter2@127.0.0.1:1/test",
        "postgres://ada@127.0.0.1:1/test?password=hunter2&sslmode=disable",
        "postgres://ada:hun#ter2@127.0.0.1:1/test",
    ] {
        let out = assert_cmd::Command::cargo_bin("omniq")
            .unwrap()
            .env_remove("OMNIQ_DATABASE_URL")
            .args(["--database-url", url, "stats"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("hunter2") && !all.contains("hun"), "{url}: {all}");
    }
}

/// Every failed task is retried once, whatever stands in the way of one:
/// a task whose unique key a live task holds is counted, not a stop.
#[test]
fn retry_all_failed_retries_each_once_and_counts_the_refused() {
    let s = common::store(BackendKind::Sqlite);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = Settings::builder()
            .backend(BackendKind::Sqlite)
            .base_dir(&s.base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        let mut registry = Registry::new();
        registry.register("broken", |_: ()| async {
            Err::<(), _>(HandlerError::fatal("no"))
        });
        let pool = queue.worker(registry).start().unwrap();
        // The first failed task holds a key that a waiting task holds now.
        let keyed = queue
            .task("broken", &())
            .unwrap()
            .unique_key("k")
            .enqueue()
            .await
            .unwrap();
        queue.wait_result(keyed, Duration::from_secs(20)).await.unwrap();
        for _ in 0..3 {
            let id = queue.enqueue("broken", &()).await.unwrap();
            queue.wait_result(id, Duration::from_secs(20)).await.unwrap();
        }
        pool.shutdown(Duration::from_secs(5)).await;
        queue
            .task("later", &())
            .unwrap()
            .unique_key("k")
            .delay(Duration::from_secs(3600))
            .enqueue()
            .await
            .unwrap();
    });
    // 5 failed: the store's own, the keyed one and 3 more.
    let out = s.run(&["retry", "--all-failed"]);
    assert!(
        out.contains("retried 4 failed task(s); 1 could not be retried"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&s.run(&["stats", "--json"])).unwrap();
    assert_eq!(json["failed"], 1, "the one whose key is held");
}
