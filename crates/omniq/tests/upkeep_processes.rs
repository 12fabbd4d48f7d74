//! Heartbeats and retention across processes: worker pools in child
//! processes of this test binary report in to one store and prune it while
//! they run; a killed one is shown missing once its beats expire, a stopped
//! one leaves.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use omniq::core::Outcome;
use omniq::core::Task;
use omniq::{BackendKind, HandlerError, NewTask, OmniQ, Registry, Settings, TaskStatus};

const BEAT: Duration = Duration::from_millis(200);

fn settings(backend: BackendKind, dir: &Path) -> Settings {
    Settings::builder()
        .backend(backend)
        .base_dir(dir)
        .build()
        .unwrap()
}

/// A pool in a child process: beats every 200 ms, takes the retention turn
/// every 300 ms, runs `noop` tasks, and stops on SIGTERM.
#[test]
#[ignore = "runs only as a child of the tests below"]
fn child_pool() {
    let dir = std::env::var("OMNIQ_TEST_STORE").unwrap();
    let backend: BackendKind = std::env::var("OMNIQ_TEST_BACKEND").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let queue = OmniQ::open(settings(backend, Path::new(&dir))).await.unwrap();
        let mut registry = Registry::new();
        registry.register("noop", |_: u64| async { Ok::<_, HandlerError>(()) });
        let pool = queue
            .worker(registry)
            .heartbeat_every(BEAT)
            .retention_every(Duration::from_millis(300))
            .poll_interval(Duration::from_millis(50))
            .start()
            .unwrap();
        pool.run_until_signal(Duration::from_secs(10)).await;
    });
}

fn spawn(backend: BackendKind, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_pool", "--exact", "--ignored", "--nocapture"])
        .env("OMNIQ_TEST_STORE", dir)
        .env("OMNIQ_TEST_BACKEND", backend.as_str())
        .spawn()
        .unwrap()
}

/// Waits up to a minute for `done` to hold, looking every 50 ms.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heartbeats_come_and_go(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
    let mut killed = spawn(backend, dir.path());
    let stopped = spawn(backend, dir.path());
    let pids = [killed.id(), stopped.id()];
    let store = queue.storage().clone();
    until("both children report in", || async {
        let mut seen: Vec<u32> = store.workers().await.unwrap().iter().map(|b| b.pid).collect();
        seen.sort_unstable();
        let mut want = pids.to_vec();
        want.sort_unstable();
        seen == want
    })
    .await;

    killed.kill().unwrap();
    killed.wait().unwrap();
    until("the killed child is missing", || async {
        let now = time::OffsetDateTime::now_utc();
        let workers = store.workers().await.unwrap();
        let of = |pid| workers.iter().find(|b| b.pid == pid).map(|b| b.alive(now));
        // Still listed, as missing, and the other alive.
        of(pids[0]) == Some(false) && of(pids[1]) == Some(true)
    })
    .await;

    // SIGTERM: the pool shuts down and removes its beat.
    let status = Command::new("kill")
        .arg(stopped.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut stopped = stopped;
    assert!(
        stopped.wait().unwrap().success(),
        "{backend}: the child did not stop cleanly"
    );
    let left: Vec<u32> = store.workers().await.unwrap().iter().map(|b| b.pid).collect();
    assert_eq!(
        left,
        [pids[0]],
        "{backend}: only the killed child's beat is left, until it is an hour old"
    );
}

/// A completed `noop` task that finished `days` days ago.
fn old(days: i64) -> Task {
    let at = time::OffsetDateTime::now_utc() - time::Duration::days(days);
    let mut task = NewTask::with_payload("noop", &0u64)
        .unwrap()
        .into_task(&Settings::default(), at)
        .unwrap();
    task.claim("gone", Duration::from_secs(30), at).unwrap();
    let token = task.lease.as_ref().unwrap().token;
    task.finish(
        token,
        Outcome::Complete {
            result: serde_json::json!(null),
        },
        at,
    )
    .unwrap();
    task
}

async fn three_pools_prune_while_they_run(backend: BackendKind) {
    const OLD: usize = 3_000;
    const NEW: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let queue = OmniQ::open(settings(backend, dir.path())).await.unwrap();
    let store = queue.storage().clone();
    let recent = old(0);
    store.import(vec![recent.clone()]).await.unwrap();
    for chunk in (0..OLD).collect::<Vec<_>>().chunks(1_000) {
        store
            .import(chunk.iter().map(|_| old(2)).collect())
            .await
            .unwrap();
    }
    let mut children: Vec<Child> = (0..3).map(|_| spawn(backend, dir.path())).collect();
    for n in 0..NEW {
        queue.enqueue("noop", &n).await.unwrap();
    }
    until("the old tasks are pruned and the new ones ran", || async {
        let counts = store.counts().await.unwrap();
        counts.completed == NEW + 1 && counts.pending == 0 && counts.running == 0
    })
    .await;
    assert_eq!(store.get(recent.id).await.unwrap().status, TaskStatus::Completed);
    for child in &mut children {
        Command::new("kill").arg(child.id().to_string()).status().unwrap();
        assert!(child.wait().unwrap().success());
    }
    assert!(
        store.workers().await.unwrap().is_empty(),
        "{backend}: every pool left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_of_processes_come_and_go_sqlite() {
    heartbeats_come_and_go(BackendKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_of_processes_come_and_go_file() {
    heartbeats_come_and_go(BackendKind::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_pools_prune_while_they_run_sqlite() {
    three_pools_prune_while_they_run(BackendKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_pools_prune_while_they_run_file() {
    three_pools_prune_while_they_run(BackendKind::File).await;
}
