//! The executor: runs one claimed task's handler in its own tokio task,
//! renews its lease, enforces its timeout, and sends its outcome to the
//! recorder.

// The pool's shared state, counters and imports, which this part of the
// pool works with.
use super::*;

/// A task's place among the pool's `concurrency`. It is given back as soon as
/// the handler is done, before the outcome is recorded, so the next claim and
/// the record travel to the store together; a task whose outcome is still being
/// recorded counts as `recording` instead.
pub(super) struct Slot<'a> {
    pub(super) shared: &'a Shared,
    /// The task's queue among the pool's; `None` once the slot is given back.
    pub(super) lane: Option<&'a Lane>,
}

impl Slot<'_> {
    /// Gives the slot back and counts the task as recording its outcome.
    fn release_to_recording(&mut self) {
        if let Some(lane) = self.lane.take() {
            lane.recording.fetch_add(1, Ordering::AcqRel);
            lane.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.slot_freed.notify_one();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            lane.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.slot_freed.notify_one();
        }
    }
}

/// Counts a task of `lane` whose outcome record is done (written or failed).
fn recorded(shared: &Shared, lane: &Lane) {
    lane.recording.fetch_sub(1, Ordering::AcqRel);
    shared.slot_freed.notify_one();
}

pub(super) async fn run_task(shared: &Shared, task: Task, mut slot: Slot<'_>) {
    let Some(lane) = slot.lane else {
        tracing::error!("a task started without its slot; skipping it");
        return;
    };
    let Some(lease) = task.lease.clone() else {
        tracing::error!("a claimed task came without a lease; skipping it");
        return;
    };
    let started = Instant::now();
    let Some(outcome) = execute(shared, &task, &lease).await else {
        bump(&shared.counters.lost);
        tracing::warn!(
            task = %task.id, handler = %task.func_path,
            "lease lost (task cancelled, or taken over after expiry); attempt abandoned"
        );
        return;
    };
    // What the pool asked for; the store's answer says what it led to (a
    // retry past `max_retries` is a final failure, decided by `Task::finish`).
    let asked = match &outcome {
        Outcome::Complete { .. } => "completed",
        Outcome::Fail { .. } => "failed",
        Outcome::Retry { .. } => "retry",
        Outcome::HandBack => "handed back",
        Outcome::Snooze { .. } => "snoozed",
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
    let result = record_until_done(shared, finish).await;
    recorded(shared, lane);
    match result {
        Ok(FinishOutcome::Applied { status, .. }) => {
            let (label, counter) = match status {
                TaskStatus::Completed => ("completed", &shared.counters.succeeded),
                TaskStatus::Pending if asked == "handed back" => {
                    ("handed back", &shared.counters.handed_back)
                }
                TaskStatus::Pending if asked == "snoozed" => ("snoozed", &shared.counters.snoozed),
                TaskStatus::Pending => ("retry", &shared.counters.retried),
                _ => ("failed", &shared.counters.failed),
            };
            bump(counter);
            crate::telemetry::finished(&task, label, started.elapsed());
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            // A failure that will be retried is routine; one that ends the task is not.
            match error {
                Some(error) if label == "retry" => {
                    tracing::info!(outcome = label, elapsed_ms, %error, "task attempt failed")
                }
                // The task is named in the event itself: at `warn` the
                // `task` span (an `info` span) is filtered out.
                Some(error) => tracing::warn!(
                    task = %task.id, handler = %task.func_path, queue = %task.queue, attempt = task.attempts,
                    outcome = label, elapsed_ms, %error, "task attempt failed"
                ),
                None => tracing::info!(outcome = label, elapsed_ms, "task attempt done"),
            }
        }
        Ok(_) => {
            bump(&shared.counters.lost);
            tracing::warn!(
                task = %task.id, handler = %task.func_path, outcome = asked,
                "lease lost before the outcome was recorded; it was discarded"
            );
        }
        Err(error) => {
            bump(&shared.counters.unrecorded);
            tracing::error!(
                task = %task.id, handler = %task.func_path, outcome = asked, %error,
                "cannot record the outcome; the task runs again when its lease expires"
            );
        }
    }
}

/// The longest wait between two tries of a finish the store refused.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Sends one finish to the recorder.
async fn record_once(shared: &Shared, finish: Finish) -> omniq_core::Result<FinishOutcome> {
    let stopped = || omniq_core::Error::backend("worker", "the outcome recorder stopped");
    let (reply, answer) = oneshot::channel();
    match shared.recorder.send((finish, reply)) {
        Ok(()) => answer.await.unwrap_or_else(|_| Err(stopped())),
        Err(_) => Err(stopped()),
    }
}

/// Records `finish`, trying again with backoff while the store fails (a
/// transient error, a lock timeout, a panic in a custom backend), and keeps
/// the lease renewed meanwhile: a task whose outcome is known is not left to
/// expire and run again, or fail as `lease_expired`. A finish is fenced by
/// the claim's token, so trying it again never applies it twice. Gives up
/// when the lease is lost (another worker may have the task) or when the
/// pool's shutdown deadline has passed.
async fn record_until_done(shared: &Shared, finish: Finish) -> omniq_core::Result<FinishOutcome> {
    let config = &shared.config;
    let lease = LeaseRef {
        id: finish.id,
        token: finish.token,
    };
    let mut delay = Duration::from_millis(50);
    let mut renew_at = from_now(config.renew_every);
    let mut failed_before = false;
    loop {
        let error = match record_once(shared, finish.clone()).await {
            Ok(FinishOutcome::LeaseLost) if failed_before => {
                // An earlier try may have been applied before its error.
                tracing::warn!(task = %finish.id, "the store refused the outcome after an earlier failed try; it may have been recorded by that try");
                return Ok(FinishOutcome::LeaseLost);
            }
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        if shared.hand_back.is_cancelled() {
            return Err(error);
        }
        failed_before = true;
        tracing::warn!(task = %finish.id, %error, retry_in_ms = delay.as_millis() as u64, "cannot record the outcome; trying again while the lease is renewed");
        // Wait for the next try, renewing the lease on its own schedule
        // meanwhile, however long the backoff has grown.
        let retry_at = from_now(delay);
        delay = (delay * 2).min(RECORD_BACKOFF_MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at) => break,
                _ = shared.hand_back.cancelled() => break,
                _ = tokio::time::sleep_until(renew_at) => {
                    renew_at = from_now(config.renew_every);
                    match shared.storage.renew(&[lease], config.lease, shared.clock.now()).await {
                        Ok(answers) if answers.first() == Some(&RenewOutcome::Lost) => {
                            return Ok(FinishOutcome::LeaseLost);
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(task = %finish.id, %error, "cannot renew the lease either"),
                    }
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
        task,
        attempt,
        &shared.config.worker_id,
        cancel.clone(),
        shared.data.clone(),
        crate::handler::Reporter {
            storage: shared.storage.clone(),
            token: lease.token,
            clock: shared.clock.clone(),
        },
    );
    // The handler runs in a task of its own, so a panic ends only that task and
    // a timeout can drop it.
    let (call, panic_site) = super::panic_site::watch(handler(task.payload(), ctx));
    // The handler's own task runs in the attempt's span, so its events and
    // the follow-up work it enqueues belong to the attempt.
    let mut call = tokio::spawn(call.instrument(tracing::Span::current()));
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
    let mut renew = tokio::time::interval_at(from_now(config.renew_every), config.renew_every);
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
                        let mut error = TaskError::new("panic", format!("the handler panicked: {message}"), attempt, true);
                        error.location = panic_site.take();
                        retry(config, error, now)
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
    if let Retry::Snooze(delay) = error.retry {
        return Outcome::Snooze {
            at: omniq_core::later(now, delay),
        };
    }
    let retryable = error.retry != Retry::Never;
    let record = TaskError::new(error.kind, error.message, attempt, retryable).with_causes(error.causes);
    match error.retry {
        Retry::Never => Outcome::Fail { error: record },
        Retry::After(delay) => Outcome::Retry {
            error: record,
            at: omniq_core::later(now, delay),
        },
        Retry::Backoff | Retry::Snooze(_) => retry(config, record, now),
    }
}

fn retry(config: &PoolConfig, error: TaskError, now: OffsetDateTime) -> Outcome {
    let at = omniq_core::later(now, config.backoff.delay(error.attempt));
    Outcome::Retry { error, at }
}

pub(super) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}
