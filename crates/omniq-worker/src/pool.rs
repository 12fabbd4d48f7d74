//! The worker pool: a supervisor that claims tasks into free slots, and one
//! executor per running task that renews its lease, enforces its timeout, and
//! records its outcome.

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
use crate::clock::{Clock, SystemClock};
use crate::handler::{Failure, HandlerError, Registry, Retry, TaskContext};
use crate::signals::Signals;

/// How a pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many tasks run at once (default 4).
    pub concurrency: usize,
    /// How often an idle pool looks for tasks enqueued by other processes or
    /// coming due (default 500 ms). Tasks enqueued through the same
    /// [`Signals`] start at once.
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        PoolConfig {
            concurrency: 4,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            requeue_every: Duration::from_secs(15),
            backoff: Backoff::default(),
            worker_id: format!("pid{}-{}", std::process::id(), &unique[unique.len() - 8..]),
        }
    }
}

/// What a pool has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tasks claimed.
    pub claimed: u64,
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
    /// Outcomes that could not be recorded (the store failed); those tasks run
    /// again once their lease expires.
    pub unrecorded: u64,
    /// Tasks running now.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    handed_back: AtomicU64,
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
            storage,
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

    /// How many tasks run at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency.max(1);
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

    /// The clock leases and retry times are computed with.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Shares wake-ups with a client (and other pools) of this process.
    pub fn signals(mut self, signals: Arc<Signals>) -> Self {
        self.signals = signals;
        self
    }

    /// Starts the pool on the current tokio runtime. A configuration that
    /// would run tasks twice is refused with [`omniq_core::Error::InvalidConfig`]:
    /// renewing a lease no sooner than it expires (`renew_every >= lease`)
    /// lets it run out mid-run, so another worker takes the task over.
    pub fn start(mut self) -> omniq_core::Result<Pool> {
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
        ] {
            *period = (*period).max(floor);
        }
        self.config.concurrency = self.config.concurrency.max(1);
        let (recorder, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(record(self.storage.clone(), self.clock.clone(), outcomes));
        let shared = Arc::new(Shared {
            storage: self.storage,
            registry: self.registry,
            config: self.config,
            clock: self.clock,
            signals: self.signals,
            counters: Counters::default(),
            in_flight: AtomicUsize::new(0),
            recording: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            stop_claiming: CancellationToken::new(),
            hand_back: CancellationToken::new(),
            executors: TaskTracker::new(),
            recorder,
        });
        tracing::info!(
            worker_id = %shared.config.worker_id,
            concurrency = shared.config.concurrency,
            backend = shared.storage.backend_name(),
            "worker pool started"
        );
        let supervisor = tokio::spawn(supervise(shared.clone()));
        Ok(Pool {
            shared,
            supervisor: Some(supervisor),
        })
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    registry: Registry,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
    counters: Counters,
    in_flight: AtomicUsize,
    recording: AtomicUsize,
    slot_freed: Notify,
    stop_claiming: CancellationToken,
    hand_back: CancellationToken,
    executors: TaskTracker,
    recorder: mpsc::UnboundedSender<(Finish, oneshot::Sender<omniq_core::Result<FinishOutcome>>)>,
}

/// A running pool. Dropping it stops claiming; running tasks finish on their own.
/// Call [`Pool::shutdown`] to wait for them, with a deadline.
pub struct Pool {
    shared: Arc<Shared>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PoolStats {
            claimed: load(&c.claimed),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            retried: load(&c.retried),
            lost: load(&c.lost),
            handed_back: load(&c.handed_back),
            unrecorded: load(&c.unrecorded),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed) as u64,
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
                in_flight = shared.in_flight.load(Ordering::Relaxed),
                "shutdown deadline passed; handing the running tasks back"
            );
            shared.hand_back.cancel();
            shared.executors.wait().await;
        }
        let handed_back = shared.counters.handed_back.load(Ordering::Relaxed) - before;
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

/// Claims into free slots until told to stop; requeues expired leases now and then.
async fn supervise(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut next_requeue = Instant::now();
    loop {
        if shared.stop_claiming.is_cancelled() {
            return;
        }
        if Instant::now() >= next_requeue {
            match shared.storage.requeue_expired(shared.clock.now()).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(
                        count = ids.len(),
                        "handed back tasks whose worker stopped renewing its lease"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot requeue expired leases"),
            }
            next_requeue = in_(config.requeue_every);
        }
        // Listen before looking, so an enqueue or a free slot between the
        // claim and the wait is not missed.
        let mut enqueued = pin!(shared.signals.enqueued());
        enqueued.as_mut().enable();
        let mut slot = pin!(shared.slot_freed.notified());
        slot.as_mut().enable();

        // Handlers may run while up to `concurrency` outcomes are still being
        // recorded, never more: a slow store slows claiming down.
        let running = shared.in_flight.load(Ordering::Acquire);
        let recording = shared.recording.load(Ordering::Acquire);
        let free = config
            .concurrency
            .saturating_sub(running)
            .min((2 * config.concurrency).saturating_sub(running + recording));
        let mut wait = config.poll_interval;
        if free > 0 {
            let request = ClaimRequest {
                worker_id: config.worker_id.clone(),
                limit: free,
                lease_for: config.lease,
                now: shared.clock.now(),
            };
            match shared.storage.claim(request).await {
                Ok(tasks) => {
                    let full = tasks.len() == free;
                    for task in tasks {
                        spawn_executor(&shared, task);
                    }
                    if full {
                        continue;
                    }
                    // Nothing more is due: sleep until the next task is, if
                    // that comes before the next poll.
                    wait = wait.min(until_next_due(&shared).await);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim tasks; trying again after the poll interval");
                }
            }
        } else {
            // Every slot is busy: only a free slot (or stopping) matters.
            wait = Duration::MAX;
        }
        let until_requeue = next_requeue.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = shared.stop_claiming.cancelled() => return,
            _ = &mut enqueued, if free > 0 => {}
            _ = &mut slot => {
                // Tasks recorded together free their slots one after another:
                // let the others land so one claim fills them all.
                tokio::task::yield_now().await;
            }
            _ = tokio::time::sleep(wait.min(until_requeue)) => {}
        }
    }
}

/// The instant `period` from now, or about thirty years from now for a
/// period too long to add (a user's `Duration::MAX`), as tokio's own timers do.
fn in_(period: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(period)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}

/// How long until the store's earliest pending task is due, by the pool's
/// clock; `Duration::MAX` when none is pending, when it is due already (a task
/// another worker is about to take; the poll looks again), or when the store
/// cannot say.
async fn until_next_due(shared: &Shared) -> Duration {
    match shared.storage.next_due().await {
        Ok(Some(eta)) => {
            let until = eta - shared.clock.now();
            match until > time::Duration::ZERO {
                true => Duration::try_from(until).unwrap_or(Duration::MAX),
                false => Duration::MAX,
            }
        }
        Ok(None) => Duration::MAX,
        Err(error) => {
            tracing::debug!(%error, "cannot read when the next task is due");
            Duration::MAX
        }
    }
}

fn spawn_executor(shared: &Arc<Shared>, task: Task) {
    shared.in_flight.fetch_add(1, Ordering::AcqRel);
    bump(&shared.counters.claimed);
    let span = tracing::info_span!(
        "task",
        id = %task.id,
        func_path = %task.func_path,
        attempt = task.attempts,
        worker_id = %shared.config.worker_id,
    );
    let shared_for_task = shared.clone();
    shared.executors.spawn(
        async move {
            let shared = shared_for_task;
            let id = task.id;
            run_task(&shared, task, Slot(Some(&shared))).await;
            shared.signals.task_finished(id);
        }
        .instrument(span),
    );
}

/// A task's place among the pool's `concurrency`. It is given back as soon as
/// the handler is done, before the outcome is recorded, so the next claim and
/// the record travel to the store together; a task whose outcome is still being
/// recorded counts as `recording` instead.
struct Slot<'a>(Option<&'a Shared>);

impl Slot<'_> {
    /// Gives the slot back and counts the task as recording its outcome.
    fn release_to_recording(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.recording.fetch_add(1, Ordering::AcqRel);
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.slot_freed.notify_one();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.slot_freed.notify_one();
        }
    }
}

/// Counts a task whose outcome record is done (written or failed).
fn recorded(shared: &Shared) {
    shared.recording.fetch_sub(1, Ordering::AcqRel);
    shared.slot_freed.notify_one();
}

async fn run_task(shared: &Shared, task: Task, mut slot: Slot<'_>) {
    let Some(lease) = task.lease.clone() else {
        tracing::error!("a claimed task came without a lease; skipping it");
        return;
    };
    let started = Instant::now();
    let Some(outcome) = execute(shared, &task, &lease).await else {
        bump(&shared.counters.lost);
        tracing::warn!("lease lost (task cancelled, or taken over after expiry); attempt abandoned");
        return;
    };
    // What the pool asked for; the store's answer says what it led to (a
    // retry past `max_retries` is a final failure, decided by `Task::finish`).
    let asked = match &outcome {
        Outcome::Complete { .. } => "completed",
        Outcome::Fail { .. } => "failed",
        Outcome::Retry { .. } => "retry",
        Outcome::HandBack => "handed back",
    };
    let error = match &outcome {
        Outcome::Fail { error } | Outcome::Retry { error, .. } => Some(error.message.clone()),
        _ => None,
    };
    let finish = Finish {
        id: task.id,
        token: lease.token,
        outcome,
    };
    slot.release_to_recording();
    let (reply, answer) = oneshot::channel();
    let result = match shared.recorder.send((finish, reply)) {
        Ok(()) => answer.await.unwrap_or_else(|_| {
            Err(omniq_core::Error::backend(
                "worker",
                "the outcome recorder stopped",
            ))
        }),
        Err(_) => Err(omniq_core::Error::backend(
            "worker",
            "the outcome recorder stopped",
        )),
    };
    recorded(shared);
    match result {
        Ok(FinishOutcome::Applied { status, .. }) => {
            let (label, counter) = match status {
                TaskStatus::Completed => ("completed", &shared.counters.succeeded),
                TaskStatus::Pending if asked == "handed back" => {
                    ("handed back", &shared.counters.handed_back)
                }
                TaskStatus::Pending => ("retry", &shared.counters.retried),
                _ => ("failed", &shared.counters.failed),
            };
            bump(counter);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            // A failure that will be retried is routine; one that ends the task is not.
            match error {
                Some(error) if label == "retry" => {
                    tracing::info!(outcome = label, elapsed_ms, %error, "task attempt failed")
                }
                Some(error) => tracing::warn!(outcome = label, elapsed_ms, %error, "task attempt failed"),
                None => tracing::info!(outcome = label, elapsed_ms, "task attempt done"),
            }
        }
        Ok(_) => {
            bump(&shared.counters.lost);
            tracing::warn!(
                outcome = asked,
                "lease lost before the outcome was recorded; it was discarded"
            );
        }
        Err(error) => {
            bump(&shared.counters.unrecorded);
            tracing::error!(
                outcome = asked, %error,
                "cannot record the outcome; the task runs again when its lease expires"
            );
        }
    }
}

/// Records the outcomes of the pool's tasks: those that arrive while one batch
/// is being written go together in the next call to `finish`, so tasks that end
/// together cost one transaction (SQLite) or one journaled change (files).
async fn record(
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    mut outcomes: mpsc::UnboundedReceiver<(Finish, oneshot::Sender<omniq_core::Result<FinishOutcome>>)>,
) {
    let mut batch = Vec::new();
    while outcomes.recv_many(&mut batch, 256).await > 0 {
        let (finishes, replies): (Vec<Finish>, Vec<_>) = batch.drain(..).unzip();
        // A store that panics fails this batch's records, not every later one:
        // the recorder goes on, and those tasks run again after their leases.
        let finished = AssertUnwindSafe(storage.finish(finishes, clock.now()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(omniq_core::Error::backend(
                    "worker",
                    format!("the store panicked: {}", panic_message(panic)),
                ))
            });
        match finished {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(omniq_core::Error::backend("worker", message.clone())));
                }
            }
        }
    }
}

/// Runs one attempt. `None` when the lease was lost: nothing may be written.
async fn execute(shared: &Shared, task: &Task, lease: &Lease) -> Option<Outcome> {
    let attempt = task.attempts;
    let Some(handler) = shared.registry.get(&task.func_path) else {
        let registered = shared.registry.names();
        let message = format!(
            "no handler is registered under {:?} (registered: {})",
            task.func_path,
            if registered.is_empty() {
                "none".to_string()
            } else {
                registered.join(", ")
            }
        );
        return Some(Outcome::Fail {
            error: TaskError::new("unknown_handler", message, attempt, false),
        });
    };
    let cancel = CancellationToken::new();
    let ctx = TaskContext::new(
        task.id,
        task.func_path.clone(),
        attempt,
        task.max_retries,
        cancel.clone(),
    );
    // The handler runs in a task of its own, so a panic ends only that task and
    // a timeout can drop it.
    let mut call = tokio::spawn(handler(task.payload(), ctx));
    let stop = |call: &tokio::task::JoinHandle<_>| {
        cancel.cancel();
        call.abort();
    };
    let mut timeout = pin!(async {
        match task.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    });
    let config = &shared.config;
    let mut renew = tokio::time::interval_at(in_(config.renew_every), config.renew_every);
    loop {
        tokio::select! {
            joined = &mut call => {
                let now = shared.clock.now();
                return Some(match joined {
                    Ok(Ok(result)) => Outcome::Complete { result },
                    Ok(Err(Failure::BadPayload(message))) => Outcome::Fail {
                        error: TaskError::new("bad_payload", message, attempt, false),
                    },
                    Ok(Err(Failure::Handler(error))) => handler_outcome(config, error, attempt, now),
                    Err(join) if join.is_panic() => {
                        let message = panic_message(join.into_panic());
                        retry(config, TaskError::new("panic", format!("the handler panicked: {message}"), attempt, true), now)
                    }
                    Err(join) => retry(config, TaskError::new("aborted", join.to_string(), attempt, true), now),
                });
            }
            _ = &mut timeout => {
                stop(&call);
                let limit = task.timeout.unwrap_or_default();
                let error = TaskError::new(
                    "timeout",
                    format!("the attempt ran longer than its timeout of {limit:?} and was cancelled"),
                    attempt,
                    true,
                );
                return Some(retry(config, error, shared.clock.now()));
            }
            _ = renew.tick() => {
                let lease_ref = LeaseRef { id: task.id, token: lease.token };
                match shared.storage.renew(&[lease_ref], config.lease, shared.clock.now()).await {
                    Ok(answers) if answers.first() == Some(&RenewOutcome::Lost) => {
                        stop(&call);
                        return None;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot renew the lease; will try again"),
                }
            }
            _ = shared.hand_back.cancelled() => {
                stop(&call);
                return Some(Outcome::HandBack);
            }
        }
    }
}

fn handler_outcome(config: &PoolConfig, error: HandlerError, attempt: u32, now: OffsetDateTime) -> Outcome {
    let retryable = error.retry != Retry::Never;
    let record = TaskError::new(error.kind, error.message, attempt, retryable);
    match error.retry {
        Retry::Never => Outcome::Fail { error: record },
        Retry::After(delay) => Outcome::Retry {
            error: record,
            at: omniq_core::later(now, delay),
        },
        Retry::Backoff => retry(config, record, now),
    }
}

fn retry(config: &PoolConfig, error: TaskError, now: OffsetDateTime) -> Outcome {
    let at = omniq_core::later(now, config.backoff.delay(error.attempt));
    Outcome::Retry { error, at }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}
