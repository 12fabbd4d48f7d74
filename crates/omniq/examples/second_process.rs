//! A worker in a second process: this program enqueues tasks, starts a copy of
//! itself as a worker on the same store, and waits for the results it writes.
//!
//! ```sh
//! OMNIQ_BACKEND=sqlite cargo run --example second_process
//! ```
//!
//! The worker stops gracefully when its standard input closes, which happens
//! when the parent exits or drops it.

use std::process::Stdio;
use std::time::Duration;

use omniq::{HandlerError, OmniQ, Registry, Settings};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    omniq::init_logging(&settings)?;
    let queue = OmniQ::open(settings).await?;
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return worker(queue).await;
    }

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("worker")
        .stdin(Stdio::piped())
        .spawn()?;
    println!("started worker process {}", child.id().unwrap_or_default());
    let mut ids = Vec::new();
    for n in 1..=10u64 {
        ids.push(queue.enqueue("cube", &n).await?);
    }
    for (n, id) in (1u64..).zip(&ids) {
        let result = queue.wait_result(*id, Duration::from_secs(30)).await?;
        println!(
            "{n}^3 = {} (computed in the worker process)",
            result.value.unwrap_or_default()
        );
    }
    drop(child.stdin.take()); // closing stdin asks the worker to stop
    let status = child.wait().await?;
    println!("worker process exited: {status}");
    Ok(())
}

async fn worker(queue: OmniQ) -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = Registry::new();
    registry.register("cube", |n: u64| async move { Ok::<_, HandlerError>(n * n * n) });
    let pool = queue
        .worker(registry)
        .poll_interval(Duration::from_millis(50))
        .start()?;
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while stdin.read(&mut buffer).await? > 0 {}
    let report = pool.shutdown(Duration::from_secs(10)).await;
    eprintln!("worker: stdin closed, stopped (drained: {})", report.drained);
    Ok(())
}
