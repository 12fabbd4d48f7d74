//! Workloads shared by the criterion benchmarks: each backend opened fresh in a
//! folder under the workspace's `target/`, and the enqueue, claim and finish
//! loops the benchmarks time.

pub mod floor;
pub mod flow;
pub mod processes;
pub mod upkeep;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use omniq_core::{ClaimRequest, Durability, Finish, NewTask, Outcome, Settings, Storage, Task};
use serde_json::json;
use time::OffsetDateTime;

/// A store and the folder it lives in (and for PostgreSQL its schema),
/// removed on drop.
pub struct Store {
    /// The store.
    pub store: Arc<dyn Storage>,
    pub(crate) dir: tempfile::TempDir,
    backend: String,
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.backend == "postgres" {
            let dir = self.dir.path().to_path_buf();
            // A drop cannot wait for the database: a thread of its own does.
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    runtime.block_on(drop_postgres_schema(&dir));
                }
            })
            .join();
        }
    }
}

/// The folder fresh stores go in: under `target/`, as a user's `./omniq_data`
/// sits beside the program (creating files under `/tmp` can cost far more).
pub fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/omniq-bench");
    std::fs::create_dir_all(&dir).expect("create target/omniq-bench");
    dir
}

/// The backends the benchmarks cover.
pub const BACKENDS: &[&str] = &["file", "sqlite"];

/// Opens a fresh, empty store of `backend`.
pub async fn open(backend: &str) -> Store {
    let dir = tempfile::tempdir_in(scratch()).expect("temporary folder");
    let store = open_at(backend, dir.path()).await.expect("open the store");
    Store {
        store,
        dir,
        backend: backend.to_owned(),
    }
}

/// The PostgreSQL server the benchmarks and the crash test use:
/// `OMNIQ_TEST_DATABASE_URL`, else 127.0.0.1:5432, database `test`.
pub fn postgres_url() -> String {
    std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
}

/// The PostgreSQL schema that stands for the folder `dir`: one per store,
/// named after the folder, so every process opening `dir` meets the same one.
pub fn postgres_schema(dir: &std::path::Path) -> String {
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let tail = &name[name.len().saturating_sub(40)..];
    format!("omniq_b{tail}")
}

/// Removes the PostgreSQL schema standing for `dir`, once a run is done with it.
pub async fn drop_postgres_schema(dir: &std::path::Path) {
    use sqlx::Connection as _;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", postgres_schema(dir));
        if let Err(error) = sqlx::query(&drop).execute(&mut conn).await {
            eprintln!("cannot drop the schema {}: {error}", postgres_schema(dir));
        }
    }
}

/// Opens the store of `backend` in the folder `dir` (the SQLite database is
/// `dir/omniq.db`; PostgreSQL's schema is [`postgres_schema`] of `dir`).
pub async fn open_at(backend: &str, dir: &std::path::Path) -> omniq_core::Result<Arc<dyn Storage>> {
    Ok(match backend {
        "postgres" => Arc::new(
            omniq_postgres::PostgresStorage::connect_with(&postgres_url(), &postgres_schema(dir), 8).await?,
        ),
        "file" => Arc::new(omniq_file::FileStorage::open_path(dir, Durability::Normal).await?),
        "sqlite" => {
            Arc::new(omniq_sqlite::SqliteStorage::open_path(dir.join("omniq.db"), Durability::Normal).await?)
        }
        other => {
            return Err(omniq_core::Error::invalid_config(
                "backend",
                format!("{other:?} is not a backend; expected file, sqlite or postgres"),
            ))
        }
    })
}

/// A no-op task with `args = [i]`, as the seed's workload enqueues.
pub fn task(i: usize) -> Task {
    NewTask::new("noop")
        .args(vec![json!(i)])
        .into_task(&Settings::default(), OffsetDateTime::now_utc())
        .expect("task")
}

/// A no-op task with `args = [i]`, a priority from -2 to 2, and, when
/// `later`, an eta an hour away: the mix the claim-cost line waits behind.
pub fn mixed_task(i: usize, later: bool) -> Task {
    let now = OffsetDateTime::now_utc();
    NewTask::new("noop")
        .args(vec![json!(i)])
        .priority((i % 5) as i16 - 2)
        .eta(if later {
            omniq_core::later(now, Duration::from_secs(3600))
        } else {
            now
        })
        .into_task(&Settings::default(), now)
        .expect("task")
}

/// Enqueues `n` tasks, one call each.
pub async fn enqueue_each(store: &dyn Storage, n: usize) {
    for i in 0..n {
        store.enqueue(vec![task(i)]).await.expect("enqueue");
    }
}

/// Enqueues `n` tasks in one call.
pub async fn enqueue_batch(store: &dyn Storage, n: usize) {
    store.enqueue((0..n).map(task).collect()).await.expect("enqueue");
}

/// Claims and completes everything due with `workers` concurrent loops, each
/// claiming up to `batch` tasks at a time; returns how many were finished.
pub async fn drain(store: &dyn Storage, workers: usize, batch: usize) -> usize {
    let loops = (0..workers).map(|w| async move {
        let mut done = 0;
        loop {
            let now = OffsetDateTime::now_utc();
            let claimed = store
                .claim(ClaimRequest {
                    queue: omniq_core::DEFAULT_QUEUE.into(),
                    worker_id: format!("bench-{w}"),
                    limit: batch,
                    lease_for: Duration::from_secs(60),
                    now,
                })
                .await
                .expect("claim");
            if claimed.is_empty() {
                return done;
            }
            done += claimed.len();
            let finishes = claimed
                .iter()
                .map(|t| Finish {
                    id: t.id,
                    token: t.lease.as_ref().expect("lease").token,
                    outcome: Outcome::Complete { result: json!(null) },
                })
                .collect();
            store.finish(finishes, now).await.expect("finish");
        }
    });
    futures::future::join_all(loops).await.into_iter().sum()
}

/// Claims and completes `n` tasks one at a time, in claim order.
pub async fn drain_n(store: &dyn Storage, n: usize) {
    for _ in 0..n {
        let now = OffsetDateTime::now_utc();
        let claimed = store
            .claim(ClaimRequest {
                queue: omniq_core::DEFAULT_QUEUE.into(),
                worker_id: "bench".into(),
                limit: 1,
                lease_for: Duration::from_secs(60),
                now,
            })
            .await
            .expect("claim");
        let task = claimed.first().expect("a due task");
        let finish = Finish {
            id: task.id,
            token: task.lease.as_ref().expect("lease").token,
            outcome: Outcome::Complete { result: json!(null) },
        };
        store.finish(vec![finish], now).await.expect("finish");
    }
}
