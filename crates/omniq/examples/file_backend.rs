//! The file backend on its own: tasks as JSON files you can read.
//!
//! ```sh
//! cargo run --example file_backend    # uses ./omniq_data/file-example
//! ```

use std::time::Duration;

use omniq::{Durability, FileStorage, HandlerError, OmniQ, Registry, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder = Settings::from_env()?.base_dir.join("file-example");
    let settings = Settings::builder()
        .backend(omniq::BackendKind::File)
        .base_dir(&folder)
        .durability(Durability::Normal)
        .build()?;
    let queue = OmniQ::open(settings).await?;
    let id = queue.enqueue("shout", "hello files").await?;

    let record = folder.join("tasks").join(format!("task-{id}.json"));
    println!("the task is a file: {}", record.display());
    println!("{}", std::fs::read_to_string(&record)?);
    println!(
        "pending entries: {}",
        std::fs::read_dir(folder.join("pending"))?.count()
    );

    let mut registry = Registry::new();
    registry.register("shout", |text: String| async move {
        Ok::<_, HandlerError>(text.to_uppercase())
    });
    let pool = queue.worker(registry).start()?;
    let result = queue.wait_result(id, Duration::from_secs(10)).await?;
    println!("result: {}", result.value.unwrap_or_default());
    pool.shutdown(Duration::from_secs(5)).await;

    // The store can also be opened directly.
    let store = FileStorage::open_path(&folder, Durability::Normal).await?;
    println!(
        "completed entries: {}",
        std::fs::read_dir(store.path().join("completed"))?.count()
    );
    Ok(())
}
