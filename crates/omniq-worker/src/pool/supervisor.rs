//! The supervisor: claims due tasks into free slots, sleeps until the next is
//! due (or a poll, an enqueue or a free slot wakes it), and hands back
//! expired leases now and then.

// The pool's shared state, counters and imports, which this part of the
// pool works with.
use super::executor::{run_task, Slot};
use super::*;

/// Claims into free slots until told to stop; requeues expired leases now and then.
pub(super) async fn supervise(shared: Arc<Shared>) {
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
            next_requeue = from_now(config.requeue_every);
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
