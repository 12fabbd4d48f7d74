//! The store the CLI tests share: one per backend, with a completed, a
//! failed and a waiting task, and the ways to run `omniq` on it.

use std::time::Duration;

use assert_cmd::Command;
use omniq::{BackendKind, HandlerError, OmniQ, Registry, Settings, TaskId};

// Each test binary uses some of the fields and helpers.
#[allow(dead_code)]
pub struct Store {
    pub _dir: tempfile::TempDir,
    pub base: std::path::PathBuf,
    pub backend: BackendKind,
    pub done: TaskId,
    pub failed: TaskId,
    pub waiting: TaskId,
}

/// A store with a completed, a failed and a waiting task.
#[allow(dead_code)]
pub fn store(backend: BackendKind) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (done, failed, waiting) = runtime.block_on(async {
        let settings = Settings::builder()
            .backend(backend)
            .base_dir(&base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        let mut registry = Registry::new();
        registry.register(
            "add",
            |(a, b): (i64, i64)| async move { Ok::<_, HandlerError>(a + b) },
        );
        registry.register("broken", |_: ()| async {
            Err::<(), _>(HandlerError::fatal("it is broken"))
        });
        let pool = queue.worker(registry).start().expect("start the pool");
        let done = queue.enqueue("add", &(2, 3)).await.unwrap();
        let failed = queue.enqueue("broken", &()).await.unwrap();
        queue.wait_result(done, Duration::from_secs(20)).await.unwrap();
        queue.wait_result(failed, Duration::from_secs(20)).await.unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        let waiting = queue
            .task("add", &(1, 1))
            .unwrap()
            .delay(Duration::from_secs(3600))
            .enqueue()
            .await
            .unwrap();
        (done, failed, waiting)
    });
    Store {
        _dir: dir,
        base,
        backend,
        done,
        failed,
        waiting,
    }
}

#[allow(dead_code)]
impl Store {
    pub fn omniq(&self) -> Command {
        let mut cmd = Command::cargo_bin("omniq").unwrap();
        cmd.env_remove("OMNIQ_BACKEND")
            .env_remove("OMNIQ_BASE_DIR")
            .env_remove("OMNIQ_DB_PATH")
            .args(["--backend", self.backend.as_str(), "--base-dir"])
            .arg(&self.base);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.omniq().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "omniq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.omniq().args(args).output().unwrap();
        assert!(!out.status.success(), "omniq {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[allow(dead_code)]
pub fn both() -> [Store; 2] {
    [store(BackendKind::File), store(BackendKind::Sqlite)]
}
