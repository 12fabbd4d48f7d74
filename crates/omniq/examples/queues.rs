//! Queues, priorities, unique keys and pausing: one pool serves two queues,
//! each with its own slots; urgent work jumps the line within its queue; a
//! second enqueue of the same key stores nothing; a paused queue waits.
//!
//! ```sh
//! cargo run --example queues     # uses the OMNIQ_* settings, ./omniq_data by default
//! omniq queues                   # then look at the queues it left
//! ```

use std::time::Duration;

use omniq::{HandlerError, OmniQ, Registry, TaskContext};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = OmniQ::from_env().await?;

    let mut registry = Registry::new();
    registry.register_with_context("email.send", |to: String, ctx: TaskContext| async move {
        println!("  sent to {to} (queue {}, priority {})", ctx.queue, ctx.priority);
        Ok::<_, HandlerError>(())
    });
    registry.register("invoice.render", |n: u64| async move {
        Ok::<_, HandlerError>(format!("invoice {n} rendered"))
    });

    // E-mails wait while their queue is paused; invoices go on.
    queue.pause("emails").await?;
    let mut emails = Vec::new();
    for to in ["ada@example.com", "grace@example.com"] {
        emails.push(queue.task("email.send", to)?.queue("emails").enqueue().await?);
    }
    emails.push(
        queue
            .task("email.send", "ceo@example.com")?
            .queue("emails")
            .priority(10)
            .enqueue()
            .await?,
    );

    // The same invoice twice: the second enqueue answers the first task's id.
    let first = queue
        .task("invoice.render", &42)?
        .unique_key("invoice:42")
        .enqueue_checked()
        .await?;
    let again = queue
        .task("invoice.render", &42)?
        .unique_key("invoice:42")
        .enqueue_checked()
        .await?;
    println!(
        "invoice 42: stored as {}, again: duplicate={} id={}",
        first.id, again.duplicate, again.id
    );

    let pool = queue
        .worker(registry)
        .queue("default", 2)
        .queue("emails", 1)
        .start()?;
    let rendered = queue.wait_result(first.id, Duration::from_secs(10)).await?;
    println!("{}", rendered.value_as::<String>()?.unwrap_or_default());

    for stats in queue.queues().await? {
        println!(
            "queue {:<8} pending {} completed {}{}",
            stats.queue,
            stats.counts.pending,
            stats.counts.completed,
            if stats.paused { " (paused)" } else { "" }
        );
    }
    println!("resuming emails: the priority-10 one goes first");
    queue.resume("emails").await?;
    while queue
        .queues()
        .await?
        .iter()
        .any(|q| q.counts.pending > 0 || q.counts.running > 0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
