//! The quickstart: push a typed job whose handler enqueues a follow-up job,
//! schedule a job with cron, enqueue tasks with an eta, an interval, retries
//! and a timeout, run a worker pool, print what happened, and exit.
//!
//! ```sh
//! cargo run --release --example quickstart                       # file store in ./omniq_data
//! OMNIQ_BACKEND=sqlite cargo run --release --example quickstart  # ./omniq_data/omniq.db
//! ```
//!
//! Settings come from the `OMNIQ_*` environment variables (`OMNIQ_LOG=info`
//! shows the workers' logs).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq::{
    Backoff, ContextExt, HandlerError, Job, OmniQ, Registry, Settings, StoreUrl, TaskContext, TaskId,
    TaskResult,
};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// A typed job: its fields are the payload, `NAME` the handler it is stored
/// under, and `run` the handler; the compiler links the two.
#[derive(Serialize, Deserialize)]
struct Invoice {
    customer: String,
    cents: u64,
}

impl Job for Invoice {
    const NAME: &'static str = "billing.invoice";
    type Output = String;
    type Error = HandlerError;

    async fn run(self, ctx: TaskContext) -> Result<String, HandlerError> {
        let number = format!("INV-{}", ctx.id.to_string().split('-').next().unwrap_or("0"));
        // Follow-up work, enqueued from the handler through its pool's client.
        ctx.queue()?
            .push(Receipt {
                to: self.customer.clone(),
                number: number.clone(),
            })
            .await?;
        Ok(format!("{number}: {} cents for {}", self.cents, self.customer))
    }
}

/// The follow-up job an invoice enqueues.
#[derive(Serialize, Deserialize)]
struct Receipt {
    to: String,
    number: String,
}

impl Job for Receipt {
    const NAME: &'static str = "billing.receipt";
    type Output = String;
    type Error = HandlerError;

    async fn run(self, _ctx: TaskContext) -> Result<String, HandlerError> {
        Ok(format!("receipt {} sent to {}", self.number, self.to))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    omniq::init_logging(&settings)?;
    let store = StoreUrl::from_settings(&settings)?;
    let queue = OmniQ::open(settings).await?;
    println!("OmniQ quickstart on the {} store {store}", store.backend);

    let heartbeats = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    registry.job::<Invoice>().job::<Receipt>();
    registry.register("math.add", |(a, b): (i64, i64)| async move {
        Ok::<_, HandlerError>(a + b)
    });
    registry.register("report.daily", |day: String| async move {
        Ok::<_, HandlerError>(format!("report for {day}"))
    });
    registry.register_with_context("net.fetch", |url: String, ctx: TaskContext| async move {
        if ctx.attempt < 3 {
            return Err(HandlerError::retry(format!(
                "connection reset on attempt {}",
                ctx.attempt
            )));
        }
        Ok(format!("fetched {url} on attempt {}", ctx.attempt))
    });
    registry.register("slow.job", |seconds: u64| async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        Ok::<_, HandlerError>("finished")
    });
    let beats = heartbeats.clone();
    registry.register("heartbeat", move |_: ()| {
        let beats = beats.clone();
        async move { Ok::<_, HandlerError>(beats.fetch_add(1, Ordering::SeqCst) + 1) }
    });

    let pool = queue
        .worker(registry)
        .concurrency(4)
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff {
            initial: Duration::from_millis(200),
            ..Backoff::default()
        })
        .start()?;

    let started = Instant::now();
    let invoice = queue
        .push(Invoice {
            customer: "ada@example.com".into(),
            cents: 4200,
        })
        .await?;
    let add = queue.enqueue("math.add", &(2, 3)).await?;
    let report = queue
        .task("report.daily", "2026-11-28")?
        .delay(Duration::from_secs(1))
        .enqueue()
        .await?;
    let fetch = queue
        .task("net.fetch", "https://example.com")?
        .max_retries(3)
        .enqueue()
        .await?;
    let slow = queue
        .task("slow.job", &60)?
        .timeout(Duration::from_millis(500))
        .max_retries(0)
        .enqueue()
        .await?;
    let heartbeat = queue
        .task("heartbeat", &())?
        .interval(Duration::from_millis(300))
        .enqueue()
        .await?;
    // A cron schedule (six fields: seconds first), stored in the store, so any
    // number of processes give one task per tick.
    queue
        .schedule(
            "receipt-digest",
            "* * * * * *",
            &Receipt {
                to: "ops@example.com".into(),
                number: "digest".into(),
            },
        )?
        .timezone("Europe/Berlin")
        .create()
        .await?;
    println!("pushed 1 typed job, enqueued 5 tasks, scheduled 1 job every second");

    // Typed all the way: the output is a `String`, as `Invoice::Output` says.
    let issued: String = invoice.wait(WAIT).await?;
    println!("{:>14}  (typed job): {issued}", "billing.invoice");
    let receipts = queue
        .list(Default::default())
        .await?
        .into_iter()
        .filter(|t| t.func_path == Receipt::NAME && t.unique_key.is_none())
        .map(|t| t.id)
        .collect::<Vec<_>>();
    for id in receipts {
        queue.wait_result(id, WAIT).await?;
        if let Some(sent) = queue.job_result::<Receipt>(id).await? {
            println!(
                "{:>14}  (follow-up enqueued by the invoice): {sent}",
                "billing.receipt"
            );
        }
    }

    show("math.add", "2 + 3", &queue.wait_result(add, WAIT).await?);
    let result = queue.wait_result(report, WAIT).await?;
    show("report.daily", "eta 1 s from now", &result);
    println!(
        "{:>14}  ran {:.2} s after it was enqueued",
        "",
        started.elapsed().as_secs_f64()
    );
    show(
        "net.fetch",
        "fails twice, max_retries 3",
        &queue.wait_result(fetch, WAIT).await?,
    );
    show(
        "slow.job",
        "sleeps 60 s, timeout 0.5 s",
        &queue.wait_result(slow, WAIT).await?,
    );

    while heartbeats.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = queue.cancel(heartbeat).await?;
    let runs = heartbeats.load(Ordering::SeqCst);
    println!(
        "{:>14}  interval 300 ms: ran {runs} times, then the series was cancelled ({} occurrence stopped)",
        "heartbeat",
        cancelled.len()
    );
    print_series(&queue, heartbeat).await?;

    let digest = queue
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.name == "receipt-digest");
    let ticks = queue
        .list(Default::default())
        .await?
        .into_iter()
        .filter(|t| {
            t.unique_key
                .as_deref()
                .is_some_and(|k| k.starts_with("schedule:receipt-digest:"))
        })
        .count();
    if let Some(digest) = digest {
        println!(
            "{:>14}  cron \"{}\" ({}): {ticks} ticks so far, last task {}",
            "receipt-digest",
            digest.expression,
            digest.timezone,
            digest.last_task.map_or("-".into(), |id| id.to_string())
        );
    }
    queue.remove_schedule("receipt-digest").await?;

    let report = pool.shutdown(Duration::from_secs(5)).await;
    let counts = queue.counts().await?;
    println!(
        "store now holds: {} pending, {} running, {} completed, {} failed, {} cancelled",
        counts.pending, counts.running, counts.completed, counts.failed, counts.cancelled
    );
    println!("worker pool stopped (all tasks drained: {})", report.drained);
    Ok(())
}

fn show(name: &str, what: &str, result: &TaskResult) {
    let outcome = match (&result.value, &result.error) {
        (Some(value), _) => format!("result {value}"),
        (None, Some(error)) => format!("error [{}] {}", error.kind, error.message),
        (None, None) => "no result".to_string(),
    };
    let attempts = if result.attempts == 1 {
        "attempt"
    } else {
        "attempts"
    };
    println!(
        "{name:>14}  ({what}): {} after {} {attempts}, {outcome}",
        result.status, result.attempts
    );
}

async fn print_series(queue: &OmniQ, first: TaskId) -> omniq::Result<()> {
    let tasks = queue.list(Default::default()).await?;
    let series: Vec<_> = tasks.iter().filter(|t| t.series == Some(first)).collect();
    let statuses: Vec<String> = series.iter().map(|t| t.status.to_string()).collect();
    println!("{:>14}  occurrences: {}", "", statuses.join(", "));
    Ok(())
}
