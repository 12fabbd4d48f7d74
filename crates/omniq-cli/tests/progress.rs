//! A running task's progress, reported by its handler through the context,
//! as `omniq show` prints it (and `--json` gives it), on both embedded
//! backends; once the task finishes, it is gone.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::prelude::*;
use omniq::{BackendKind, HandlerError, OmniQ, Registry, Settings, TaskContext};
use tokio::sync::Notify;

/// `omniq show ID [--json]` on the store at `base`, from a thread that may block.
async fn show(backend: BackendKind, base: &std::path::Path, id: String, json: bool) -> String {
    let base = base.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::cargo_bin("omniq").unwrap();
        cmd.env_remove("OMNIQ_BACKEND")
            .env_remove("OMNIQ_BASE_DIR")
            .env_remove("OMNIQ_DB_PATH")
            .args(["--backend", backend.as_str(), "--base-dir"])
            .arg(&base)
            .args(["show", &id]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_a_running_tasks_progress() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("data");
        let settings = Settings::builder()
            .backend(backend)
            .base_dir(&base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        let (reported, finish) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let mut registry = Registry::new();
        let (told, wait) = (reported.clone(), finish.clone());
        registry.register_with_context("import.rows", move |rows: u32, ctx: TaskContext| {
            let (told, wait) = (told.clone(), wait.clone());
            async move {
                let stored = ctx.progress(0.4, format!("40 of {rows} rows")).await?;
                assert!(stored, "the claim is this attempt's");
                // Out of range: an error, nothing stored.
                assert!(ctx.progress(1.5, "too far").await.is_err());
                told.notify_one();
                wait.notified().await;
                Ok::<_, HandlerError>(rows)
            }
        });
        let pool = queue.worker(registry).start().unwrap();
        let id = queue.enqueue("import.rows", &100u32).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), reported.notified())
            .await
            .expect("the handler reported progress");

        let record: serde_json::Value =
            serde_json::from_str(&show(backend, &base, id.to_string(), true).await).unwrap();
        assert_eq!(record["status"], "running", "{backend:?}");
        assert_eq!(record["progress"]["fraction"], 0.4, "{backend:?}: {record}");
        assert_eq!(record["progress"]["message"], "40 of 100 rows");
        let text = show(backend, &base, id.to_string(), false).await;
        assert!(text.contains("progress     40% 40 of 100 rows"), "{text}");

        finish.notify_one();
        queue.wait_result(id, Duration::from_secs(20)).await.unwrap();
        let record: serde_json::Value =
            serde_json::from_str(&show(backend, &base, id.to_string(), true).await).unwrap();
        assert_eq!(record["status"], "completed");
        assert!(record.get("progress").is_none(), "{record}");
        pool.shutdown(Duration::from_secs(5)).await;
    }
}
