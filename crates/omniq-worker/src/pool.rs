//! The worker pool: the builder (`WorkerPool`), the running pool's handle
//! (`Pool`: stats, shutdown, stop signals) and the state its parts share. The
//! parts live beside it: its configuration, the supervisor that claims, the
//! executor that runs a task, and the recorder that writes outcomes.

mod config;
mod executor;
mod panic_site;
mod rates;
mod recorder;
pub mod scheduler;
mod supervisor;
mod upkeep;

pub use config::PoolConfig;
use recorder::record;
use supervisor::supervise;

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use omniq_core::{
    ClaimRequest, Finish, FinishOutcome, Lease, LeaseRef, Outcome, RenewOutcome, Storage, Task, TaskError,
    TaskStatus,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::clock::{Clock, StoreClock, SystemClock};
use crate::handler::{Failure, HandlerError, Registry, Retry, TaskContext};
use crate::signals::Signals;

/// What a pool has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tasks claimed.
    pub claimed: u64,
    /// Claim calls that took at least one task; `claimed / claims` is how
    /// many tasks a claim took on average.
    pub claims: u64,
    /// Attempts that completed.
    pub succeeded: u64,
    /// Attempts that failed for good.
    pub failed: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Attempts abandoned because the lease was lost (the task was cancelled, or
    /// another worker took it over).
    pub lost: u64,
    /// Tasks handed back unrun at shutdown.
    pub handed_back: u64,
    /// Attempts whose handler answered "not now" ([`crate::HandlerError::snooze`]).
    pub snoozed: u64,
    /// Outcomes that could not be recorded (the store failed); those tasks run
    /// again once their lease expires.
    pub unrecorded: u64,
    /// Tasks running now.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    claims: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    handed_back: AtomicU64,
    snoozed: AtomicU64,
    unrecorded: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What [`Pool::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every running task finished before the deadline.
    pub drained: bool,
    /// Tasks stopped at the deadline and handed back to pending.
    pub handed_back: u64,
}

/// A pool not started yet: set it up, then [`WorkerPool::start`] it.
pub struct WorkerPool {
    storage: Arc<dyn Storage>,
    registry: Registry,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
}

impl WorkerPool {
    /// A pool running the handlers of `registry` on tasks from `storage`, with
    /// the default [`PoolConfig`].
    pub fn new(storage: Arc<dyn Storage>, registry: Registry) -> Self {
        WorkerPool {
            // Behind the checking layer, as every caller reaches a store.
            storage: omniq_core::Checked::wrap(storage),
            registry,
            config: PoolConfig::default(),
            clock: Arc::new(SystemClock),
            signals: Signals::new(),
        }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// How many tasks run at once: the shorthand for a pool that serves the
    /// `default` queue alone. With [`WorkerPool::queue`], each queue has its own.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency.max(1);
        self
    }

    /// Serves `queue` too, running up to `concurrency` of its tasks at once,
    /// beside the other queues given this way (and instead of the `default`
    /// queue of [`WorkerPool::concurrency`], unless it is given too). Giving
    /// a queue again replaces its concurrency.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        let queue = queue.into();
        self.config.queues.retain(|(name, _)| *name != queue);
        self.config.queues.push((queue, concurrency));
        self
    }

    /// How often an idle pool looks for tasks from other processes.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How long a claim lasts without renewal, and how often it is renewed.
    pub fn lease(mut self, lease: Duration, renew_every: Duration) -> Self {
        self.config.lease = lease;
        self.config.renew_every = renew_every;
        self
    }

    /// How often the pool hands back tasks whose worker died.
    pub fn requeue_every(mut self, interval: Duration) -> Self {
        self.config.requeue_every = interval;
        self
    }

    /// How often the pool writes its heartbeat (default 5 s); it counts as
    /// gone after four missed beats.
    pub fn heartbeat_every(mut self, interval: Duration) -> Self {
        self.config.heartbeat_every = interval;
        self
    }

    /// How long finished tasks are kept before the store's pools prune them
    /// ([`omniq_core::Retention::FOREVER`] keeps them all); by default the
    /// [`defaults`](Self::defaults)' retention.
    pub fn retention(mut self, retention: omniq_core::Retention) -> Self {
        self.config.defaults.retention = retention;
        self
    }

    /// How often the store's pools prune (default 60 s): one pool a period.
    pub fn retention_every(mut self, interval: Duration) -> Self {
        self.config.retention_every = interval;
        self
    }

    /// The delay between a failed attempt and the next.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// This pool's name in leases and logs.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.config.worker_id = worker_id.into();
        self
    }

    /// The clock leases and retry times are computed with. For a store with
    /// a clock of its own (PostgreSQL) the pool adds the measured offset to
    /// that clock's, so it works in the store's time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings whose defaults (retries, timeout) a tick's task takes
    /// for what its schedule leaves unset; see [`PoolConfig::defaults`].
    pub fn defaults(mut self, settings: omniq_core::Settings) -> Self {
        self.config.defaults = settings;
        self
    }

    /// The typed jobs registered whose queue ([`crate::Job::QUEUE`]) this
    /// pool does not serve, as `(job, queue)`: their tasks wait for a pool
    /// that serves the queue. [`WorkerPool::start`] logs a warning for each.
    pub fn unserved_jobs(&self) -> Vec<(String, String)> {
        unserved_jobs(&self.registry, &self.config)
            .into_iter()
            .map(|(job, queue)| (job.to_owned(), queue.to_owned()))
            .collect()
    }

    /// Shares wake-ups with a client (and other pools) of this process.
    pub fn signals(mut self, signals: Arc<Signals>) -> Self {
        self.signals = signals;
        self
    }

    /// Starts the pool on the current tokio runtime. A configuration that
    /// would run tasks twice is refused with [`omniq_core::Error::InvalidConfig`]:
    /// renewing a lease no sooner than it expires (`renew_every >= lease`)
    /// lets it run out mid-run, so another worker takes the task over. So is
    /// a queue name that breaks [`omniq_core::queue::check_name`], or a queue
    /// given no slots.
    pub fn start(mut self) -> omniq_core::Result<Pool> {
        for (queue, slots) in &self.config.queues {
            omniq_core::queue::check_name(queue)?;
            if *slots == 0 {
                return Err(omniq_core::Error::invalid_config(
                    "concurrency",
                    format!("queue {queue:?} is given no slots; give it at least one"),
                ));
            }
        }
        if self.config.renew_every >= self.config.lease {
            return Err(omniq_core::Error::invalid_config(
                "renew_every",
                format!(
                    "leases are renewed every {:?} but last {:?}: they would run out mid-run and the task \
                     would run twice; renew more often than the lease lasts (a third of it is usual)",
                    self.config.renew_every, self.config.lease
                ),
            ));
        }
        // Zero periods would make tokio's interval panic or the supervisor spin.
        let floor = Duration::from_millis(1);
        for period in [
            &mut self.config.renew_every,
            &mut self.config.requeue_every,
            &mut self.config.poll_interval,
            &mut self.config.heartbeat_every,
            &mut self.config.retention_every,
        ] {
            *period = (*period).max(floor);
        }
        self.config.concurrency = self.config.concurrency.max(1);
        for (job, queue) in unserved_jobs(&self.registry, &self.config) {
            tracing::warn!(
                job,
                queue,
                served = ?self.config.lanes().iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(),
                "job {job:?} is enqueued to queue {queue:?}, which this pool does not serve: its tasks \
                 wait until a pool serving {queue:?} runs (add .queue({queue:?}, n) to this pool)"
            );
        }
        let lanes = self
            .config
            .lanes()
            .into_iter()
            .map(|(queue, slots)| Lane {
                queue,
                slots,
                in_flight: AtomicUsize::new(0),
                recording: AtomicUsize::new(0),
            })
            .collect();
        let store_clock = Arc::new(StoreClock::new(self.clock));
        let clock: Arc<dyn Clock> = store_clock.clone();
        let (recorder, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(record(self.storage.clone(), clock.clone(), outcomes));
        let shared = Arc::new(Shared {
            storage: self.storage,
            data: self.registry.data_map(),
            registry: self.registry,
            config: self.config,
            clock,
            store_clock,
            signals: self.signals,
            counters: Counters::default(),
            lanes,
            slot_freed: Notify::new(),
            stop_claiming: CancellationToken::new(),
            stop_upkeep: CancellationToken::new(),
            hand_back: CancellationToken::new(),
            executors: TaskTracker::new(),
            recorder,
        });
        tracing::info!(
            worker_id = %shared.config.worker_id,
            queues = ?shared.config.lanes(),
            backend = shared.storage.backend_name(),
            "worker pool started"
        );
        let supervisor = tokio::spawn(supervise(shared.clone()));
        let upkeep = tokio::spawn(upkeep::keep_up(shared.clone()));
        Ok(Pool {
            shared,
            supervisor: Some(supervisor),
            upkeep: Some(upkeep),
        })
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    registry: Registry,
    /// The registry's shared state, handed to every context.
    data: Arc<crate::handler::DataMap>,
    config: PoolConfig,
    /// `store_clock`, as every part of the pool reads the time.
    clock: Arc<dyn Clock>,
    /// The pool's clock set to the store's; the supervisor measures it again
    /// before each lease pass.
    store_clock: Arc<StoreClock>,
    signals: Arc<Signals>,
    counters: Counters,
    /// One per queue served.
    lanes: Vec<Lane>,
    slot_freed: Notify,
    stop_claiming: CancellationToken,
    /// Stops the heartbeat and pruning, once the running tasks are done.
    stop_upkeep: CancellationToken,
    hand_back: CancellationToken,
    executors: TaskTracker,
    recorder: mpsc::UnboundedSender<(Finish, oneshot::Sender<omniq_core::Result<FinishOutcome>>)>,
}

impl Shared {
    /// Tasks running now, in every queue.
    fn in_flight(&self) -> usize {
        self.lanes
            .iter()
            .map(|lane| lane.in_flight.load(Ordering::Relaxed))
            .sum()
    }
}

/// One queue a pool serves, with its own slots: a busy queue never takes the
/// slots of another.
struct Lane {
    queue: String,
    /// How many of its tasks run at once.
    slots: usize,
    /// Its tasks whose handlers run now.
    in_flight: AtomicUsize,
    /// Its tasks whose outcomes are being recorded.
    recording: AtomicUsize,
}

/// A running pool. Dropping it stops claiming; running tasks finish on their own.
/// Call [`Pool::shutdown`] to wait for them, with a deadline.
pub struct Pool {
    shared: Arc<Shared>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
    upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PoolStats {
            claimed: load(&c.claimed),
            claims: load(&c.claims),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            retried: load(&c.retried),
            lost: load(&c.lost),
            handed_back: load(&c.handed_back),
            snoozed: load(&c.snoozed),
            unrecorded: load(&c.unrecorded),
            in_flight: self.shared.in_flight() as u64,
        }
    }

    /// This pool's worker id.
    pub fn worker_id(&self) -> &str {
        &self.shared.config.worker_id
    }

    /// The signals this pool listens to.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.shared.signals
    }

    /// Stops gracefully: claims nothing more, lets running tasks finish until
    /// `deadline` has passed, then stops the rest and hands them back to
    /// pending (their attempt is not counted), so no task is lost or left running.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let shared = self.shared.clone();
        shared.stop_claiming.cancel();
        if let Some(supervisor) = self.supervisor.take() {
            if let Err(error) = supervisor.await {
                tracing::error!(%error, "the pool's supervisor failed");
            }
        }
        shared.executors.close();
        let before = shared.counters.handed_back.load(Ordering::Relaxed);
        let drained = tokio::time::timeout(deadline, shared.executors.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                in_flight = shared.in_flight(),
                "shutdown deadline passed; handing the running tasks back"
            );
            shared.hand_back.cancel();
            shared.executors.wait().await;
        }
        let handed_back = shared.counters.handed_back.load(Ordering::Relaxed) - before;
        // The heartbeat goes last: until now the pool still ran tasks.
        shared.stop_upkeep.cancel();
        if let Some(upkeep) = self.upkeep.take() {
            let _ = upkeep.await;
        }
        if let Err(error) = shared.storage.remove_worker(&shared.config.worker_id).await {
            tracing::warn!(%error, "cannot remove the pool's heartbeat; it expires on its own");
        }
        tracing::info!(worker_id = %shared.config.worker_id, drained, handed_back, "worker pool stopped");
        ShutdownReport { drained, handed_back }
    }

    /// Runs until Ctrl-C (SIGINT) or SIGTERM, then shuts down with `deadline`.
    /// The SIGTERM handler is installed when this is called (inside a tokio
    /// runtime), before the returned future first runs, so a signal sent
    /// right after the call is not missed.
    pub fn run_until_signal(
        self,
        deadline: Duration,
    ) -> impl std::future::Future<Output = ShutdownReport> + Send {
        let signal = stop_signal();
        self.shutdown_on(
            async move {
                signal.await;
                tracing::info!("stop signal received");
            },
            deadline,
        )
    }

    /// Runs until `stop` completes, then shuts down with `deadline`: for
    /// programs with their own signal handling or their own reason to stop.
    pub async fn shutdown_on(
        self,
        stop: impl std::future::Future<Output = ()>,
        deadline: Duration,
    ) -> ShutdownReport {
        stop.await;
        self.shutdown(deadline).await
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop_claiming.cancel();
        // Without a shutdown the heartbeat is left to expire.
        self.shared.stop_upkeep.cancel();
    }
}

/// Completes on Ctrl-C or SIGTERM. The SIGTERM handler is installed now when
/// a tokio runtime is at hand, else when the future first runs.
fn stop_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let listen = || match signal(SignalKind::terminate()) {
            Ok(term) => Some(term),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; waiting for Ctrl-C only");
                None
            }
        };
        let now: Option<Option<Signal>> = tokio::runtime::Handle::try_current().ok().map(|_| listen());
        async move {
            match now.unwrap_or_else(listen) {
                Some(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The instant `period` from now, or about thirty years from now for a
/// period too long to add (a user's `Duration::MAX`), as tokio's own timers do.
/// The typed jobs of `registry` whose queue the pool configured by
/// `config` does not serve, as (job, queue).
fn unserved_jobs<'a>(registry: &'a Registry, config: &PoolConfig) -> Vec<(&'a str, &'a str)> {
    let served = config.lanes();
    registry
        .job_queues()
        .filter(|(_, queue)| !served.iter().any(|(q, _)| q == queue))
        .collect()
}

fn from_now(period: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(period)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}
