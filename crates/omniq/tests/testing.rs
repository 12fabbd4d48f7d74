//! `omniq::testing` through the public API: a handler called directly that
//! enqueues a follow-up, typed reads of what was enqueued, and a queue
//! drained inline, retries and chained jobs included.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use omniq::testing;
use omniq::{
    ContextExt, HandlerError, Job, MemoryStorage, OmniQ, Registry, Settings, TaskContext, TaskStatus,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: u32,
    to: String,
}

/// Counts the attempts of `Flaky`, shared through `Registry::data`.
#[derive(Default)]
struct Attempts(AtomicU32);

impl Job for Order {
    const NAME: &'static str = "shop.order";
    const QUEUE: &'static str = "shop";
    type Output = String;
    type Error = HandlerError;

    async fn run(self, ctx: TaskContext) -> Result<String, HandlerError> {
        let prefix = ctx.data::<String>().cloned().unwrap_or_default();
        ctx.queue()?
            .push(Receipt {
                order: self.id,
                to: format!("{prefix}customer{}@example.com", self.id),
            })
            .await?;
        Ok(format!("order {} placed", self.id))
    }
}

impl Job for Receipt {
    const NAME: &'static str = "shop.receipt";
    const QUEUE: &'static str = "shop";
    type Output = ();
    type Error = HandlerError;

    async fn run(self, _ctx: TaskContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Flaky;

impl Job for Flaky {
    const NAME: &'static str = "shop.flaky";
    const QUEUE: &'static str = "shop";
    type Output = ();
    type Error = HandlerError;

    async fn run(self, ctx: TaskContext) -> Result<(), HandlerError> {
        let attempts = ctx.data::<Arc<Attempts>>().unwrap();
        attempts.0.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::retry("the payment service is down"))
    }
}

fn client() -> OmniQ {
    OmniQ::with_storage(Arc::new(MemoryStorage::new()), Settings::default())
}

#[tokio::test]
async fn a_handler_called_directly_enqueues_its_follow_up() {
    let queue = client();
    let placed = testing::run(&queue, Order { id: 7 }).await.unwrap();
    assert_eq!(placed, "order 7 placed");
    let receipt = testing::assert_enqueued::<Receipt>(&queue, |r| r.order == 7).await;
    assert_eq!(receipt.to, "customer7@example.com");
    testing::refute_enqueued::<Receipt>(&queue, |r| r.order == 8).await;
    assert!(
        testing::enqueued::<Order>(&queue).await.unwrap().is_empty(),
        "the job itself is not stored"
    );

    // Shared state reaches the handler through the registry.
    let mut registry = Registry::new();
    registry.data("vip-".to_string());
    testing::run_with(&queue, Order { id: 8 }, registry)
        .await
        .unwrap();
    let all = testing::enqueued::<Receipt>(&queue).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[1],
        Receipt {
            order: 8,
            to: "vip-customer8@example.com".into()
        }
    );

    // Progress from a handler called directly goes nowhere, without an error.
    let ctx = testing::context_for(&queue, &Order { id: 1 }, Registry::new());
    assert_eq!(ctx.attempt, 1);
    assert!(!ctx.progress(0.5, "half").await.unwrap());
}

#[tokio::test]
#[should_panic(expected = "no pending shop.receipt job matches")]
async fn assert_enqueued_names_what_is_missing() {
    let queue = client();
    testing::run(&queue, Order { id: 1 }).await.unwrap();
    testing::assert_enqueued::<Receipt>(&queue, |r| r.order == 2).await;
}

#[tokio::test]
async fn a_drain_runs_every_due_job_and_chained_ones_and_reports_retries() {
    let queue = client();
    let attempts = Arc::new(Attempts::default());
    let mut registry = Registry::new();
    registry.job::<Order>().job::<Receipt>().job::<Flaky>();
    registry.data(attempts.clone());
    queue.push(Order { id: 1 }).await.unwrap();
    queue.push(Order { id: 2 }).await.unwrap();
    let flaky = queue.job(&Flaky).max_retries(3).push().await.unwrap();
    // Another queue is left alone.
    let elsewhere = queue.job(&Order { id: 3 }).queue("other").push().await.unwrap();

    let drained = testing::drain(&queue, registry, "shop").await.unwrap();
    // Two orders and the two receipts they enqueued; the flaky job failed once
    // and waits for its retry.
    assert_eq!((drained.completed, drained.failed, drained.retried), (4, 0, 1));
    assert_eq!(drained.tasks.len(), 5);
    assert_eq!(attempts.0.load(Ordering::SeqCst), 1);
    let flaky = queue.get(flaky.id()).await.unwrap();
    assert_eq!((flaky.status, flaky.attempts), (TaskStatus::Pending, 1));
    assert_eq!(
        queue.get(elsewhere.id()).await.unwrap().status,
        TaskStatus::Pending
    );
    assert!(testing::enqueued::<Receipt>(&queue).await.unwrap().is_empty());
}
