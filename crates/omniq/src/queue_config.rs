//! Flow control from the client: a queue's limits, per-key windows and
//! rates, set in the store for every process (`OmniQ::configure_queue`),
//! and read back with the running counts (`OmniQ::queue_flows`).

use omniq_core::{QueueFlow, QueueLimits, Rate, Result};

use crate::OmniQ;

/// The flow-control settings of one queue, as they will be stored: what is
/// not named here is not limited. Made by [`OmniQ::configure_queue`];
/// [`QueueConfig::apply`] stores it.
///
/// ```no_run
/// # async fn example(omniq: omniq::OmniQ) -> omniq::Result<()> {
/// use omniq::Rate;
/// omniq
///     .configure_queue("emails")
///     .limit(5)
///     .per_key(1)
///     .rate(Rate::per_second(100)?)
///     .apply()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the settings are stored by `apply`"]
pub struct QueueConfig<'a> {
    client: &'a OmniQ,
    queue: String,
    limits: QueueLimits,
}

impl QueueConfig<'_> {
    /// At most `n` tasks of the queue run at once, across every pool,
    /// process and host using the store (each pool's own
    /// `.queue(name, slots)` stays its local cap).
    pub fn limit(mut self, n: u32) -> Self {
        self.limits.limit = Some(n);
        self
    }

    /// Only the `n` earliest enqueued unfinished tasks of each concurrency
    /// key may start; with 1, a key's tasks run one at a time, in order.
    pub fn per_key(mut self, n: u32) -> Self {
        self.limits.per_key = Some(n);
        self
    }

    /// A task of a key that failed for good keeps its place at the front of
    /// the key's window, holding the tasks behind it until it is retried,
    /// cancelled or deleted (needs [`QueueConfig::per_key`]).
    pub fn hold_failed(mut self, hold: bool) -> Self {
        self.limits.hold_failed = hold;
        self
    }

    /// At most `rate.count` task starts of the queue per `rate.per`, with
    /// bursts up to the count.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.limits.rate = Some(rate);
        self
    }

    /// At most `rate.count` starts per `rate.per` of each concurrency key.
    pub fn key_rate(mut self, rate: Rate) -> Self {
        self.limits.key_rate = Some(rate);
        self
    }

    /// The settings as they stand.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Stores the settings, replacing the queue's earlier ones (none named:
    /// the queue has no limits again). Claims made from now on, by every
    /// process, follow them. Out-of-range values are an
    /// [`omniq_core::Error::InvalidConfig`].
    pub async fn apply(self) -> Result<()> {
        self.client
            .storage()
            .set_queue_limits(&self.queue, self.limits)
            .await?;
        // A raised limit may let this process's pools claim at once.
        self.client.signals().task_enqueued();
        Ok(())
    }
}

impl OmniQ {
    /// The flow-control settings of `queue`, empty (no limits) until set;
    /// see [`QueueConfig`] and `docs/flow-control.md`.
    pub fn configure_queue(&self, queue: impl Into<String>) -> QueueConfig<'_> {
        QueueConfig {
            client: self,
            queue: queue.into(),
            limits: QueueLimits::default(),
        }
    }

    /// Every queue with flow-control settings, with its running tasks (under
    /// a lease that has not run out) and when its rate allows the next start.
    pub async fn queue_flows(&self) -> Result<Vec<QueueFlow>> {
        self.storage().queue_flows(self.now()).await
    }

    /// Removes the flow-control settings of `queue`.
    pub async fn clear_queue_limits(&self, queue: &str) -> Result<()> {
        self.configure_queue(queue).apply().await
    }
}
