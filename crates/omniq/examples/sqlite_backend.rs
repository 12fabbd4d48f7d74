//! The SQLite backend on its own: one database file, WAL mode.
//!
//! ```sh
//! cargo run --example sqlite_backend    # uses ./omniq_data/sqlite-example.db
//! ```

use std::time::Duration;

use omniq::{HandlerError, NewTask, OmniQ, Registry, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = Settings::from_env()?.base_dir;
    let settings = Settings::builder()
        .backend(omniq::BackendKind::Sqlite)
        .base_dir(&base)
        .db_path(base.join("sqlite-example.db"))
        .build()?;
    let queue = OmniQ::open(settings).await?;

    // A batch enqueue is one transaction.
    let tasks = (1..=100u64)
        .map(|n| NewTask::with_payload("square", &n))
        .collect::<omniq::Result<Vec<_>>>()?;
    let ids = queue.enqueue_many(tasks).await?;

    let mut registry = Registry::new();
    registry.register("square", |n: u64| async move { Ok::<_, HandlerError>(n * n) });
    let pool = queue.worker(registry).concurrency(8).start()?;
    let mut sum = 0;
    for id in &ids {
        sum += queue
            .wait_result(*id, Duration::from_secs(10))
            .await?
            .value_as::<u64>()?
            .unwrap_or(0);
    }
    pool.shutdown(Duration::from_secs(5)).await;
    println!("sum of the first 100 squares: {sum}");

    // The store can also be opened directly, e.g. to look at its pragmas.
    let store =
        omniq::SqliteStorage::open_path(base.join("sqlite-example.db"), omniq::Durability::Normal).await?;
    println!(
        "journal_mode={} synchronous={} schema version {}",
        store.pragma("journal_mode").await?,
        store.pragma("synchronous").await?,
        store.schema_version().await?
    );
    Ok(())
}
