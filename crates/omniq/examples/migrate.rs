//! Moving a store from the file backend to SQLite, history included.
//!
//! ```sh
//! cargo run --example migrate    # uses ./omniq_data/migrate-example/{files,omniq.db}
//! ```

use std::time::Duration;

use omniq::{Durability, FileStorage, HandlerError, OmniQ, Registry, Settings, SqliteStorage, Storage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder = Settings::from_env()?.base_dir.join("migrate-example");
    let _ = std::fs::remove_dir_all(&folder);
    let files = FileStorage::open_path(folder.join("files"), Durability::Normal).await?;
    let queue = OmniQ::with_storage(std::sync::Arc::new(files.clone()), Settings::default());

    // Some history: a completed task, a failed one, and one still waiting.
    let mut registry = Registry::new();
    registry.register("ok", |n: u32| async move { Ok::<_, HandlerError>(n) });
    registry.register("broken", |_: ()| async {
        Err::<(), _>(HandlerError::fatal("always broken"))
    });
    let pool = queue.worker(registry).start()?;
    let done = queue.enqueue("ok", &7).await?;
    let failed = queue.task("broken", &())?.max_retries(0).enqueue().await?;
    queue.wait_result(done, Duration::from_secs(10)).await?;
    queue.wait_result(failed, Duration::from_secs(10)).await?;
    pool.shutdown(Duration::from_secs(5)).await;
    let waiting = queue
        .task("ok", &8)?
        .delay(Duration::from_secs(3600))
        .enqueue()
        .await?;

    let sqlite = SqliteStorage::open_path(folder.join("omniq.db"), Durability::Normal).await?;
    let report = omniq::migrate(&files, &sqlite, |p| println!("migrated {}/{}", p.done, p.total)).await?;
    println!("{report:?}");

    for id in [done, failed, waiting] {
        let before = files.get(id).await?;
        let after = sqlite.get(id).await?;
        println!(
            "{id}: {} -> {} (attempts {}, identical record: {})",
            before.status,
            after.status,
            after.attempts,
            before == after
        );
    }
    Ok(())
}
