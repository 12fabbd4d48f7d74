//! `PoolConfig`: how a pool runs, and its defaults.

use std::time::Duration;

use crate::backoff::Backoff;

/// How a pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many tasks run at once (default 4), when `queues` is empty: the
    /// pool then serves the `default` queue alone.
    pub concurrency: usize,
    /// The queues the pool serves, each with how many of its tasks run at
    /// once; a busy queue never takes another's slots. Empty: `default` with
    /// `concurrency` slots.
    pub queues: Vec<(String, usize)>,
    /// How often an idle pool looks for tasks enqueued by other processes or
    /// coming due (default 500 ms). Tasks enqueued through the same
    /// [`Signals`](crate::Signals) start at once.
    pub poll_interval: Duration,
    /// How long a claim lasts without renewal (default 30 s). A worker that dies
    /// holds its tasks this long before others take them over.
    pub lease: Duration,
    /// How often a running task's lease is renewed (default 10 s).
    pub renew_every: Duration,
    /// How often the pool hands back tasks whose worker died (default 15 s).
    pub requeue_every: Duration,
    /// The delay between a failed attempt and the next.
    pub backoff: Backoff,
    /// This pool's name in leases and logs (default `pid<pid>-<random>`).
    pub worker_id: String,
    /// Whether the pool fires the store's schedules' ticks (default `true`;
    /// any number of pools may, and each tick fires once).
    pub schedules: bool,
    /// What a tick's task takes for what its schedule leaves unset (its
    /// retries and timeout), and how long finished tasks are kept
    /// ([`Settings::retention`](omniq_core::Settings::retention)):
    /// `OmniQ::worker` gives the client's settings, so the store's
    /// configured defaults hold for the pool too.
    pub defaults: omniq_core::Settings,
    /// How often the pool writes its heartbeat to the store (default 5 s).
    /// It counts as gone after four missed beats.
    pub heartbeat_every: Duration,
    /// How often the pools of a store prune finished tasks past their
    /// retention (default 60 s): one pool a period, whichever asks first.
    pub retention_every: Duration,
}

impl PoolConfig {
    /// The queues served and their slots, as [`PoolConfig::queues`] says.
    pub fn lanes(&self) -> Vec<(String, usize)> {
        match self.queues.is_empty() {
            true => vec![(omniq_core::DEFAULT_QUEUE.to_owned(), self.concurrency)],
            false => self.queues.clone(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        PoolConfig {
            concurrency: 4,
            queues: Vec::new(),
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            requeue_every: Duration::from_secs(15),
            backoff: Backoff::default(),
            worker_id: format!("pid{}-{}", std::process::id(), &unique[unique.len() - 8..]),
            schedules: true,
            defaults: omniq_core::Settings::default(),
            heartbeat_every: Duration::from_secs(5),
            retention_every: Duration::from_secs(60),
        }
    }
}
