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
    recorded(shared, lane);
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

pub(super) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}
