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
    let mut next_schedules = Instant::now();
    // Other processes' enqueues, where the store tells of them.
    let mut wake_ups = shared.storage.wake_ups();
    let mut rated = super::rates::Rated::default();
    loop {
        if shared.stop_claiming.is_cancelled() {
            return;
        }
        if Instant::now() >= next_requeue {
            // Measure the clock first: the lease pass decides by it.
            if let Err(error) = shared.store_clock.sync(&*shared.storage).await {
                tracing::warn!(%error, "cannot read the store's clock; keeping the last offset");
            }
            match shared.storage.requeue_expired(shared.clock.now()).await {
                Ok(ids) if !ids.is_empty() => {
                    // The first tasks are named with their handler (read
                    // back: a hand-back is rare); a flood is counted.
                    let mut named = Vec::new();
                    for id in ids.iter().take(20) {
                        match shared.storage.get(*id).await {
                            Ok(task) => named.push(format!("{id} ({})", task.func_path)),
                            Err(_) => named.push(id.to_string()),
                        }
                    }
                    tracing::warn!(
                        count = ids.len(),
                        tasks = %named.join(","),
                        "handed back tasks whose worker stopped renewing its lease"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot requeue expired leases"),
            }
            next_requeue = from_now(config.requeue_every);
        }
        if config.schedules && Instant::now() >= next_schedules {
            let earliest = super::scheduler::fire_due(&shared).await;
            // Again at the earliest next tick, or after a second at most, so
            // schedules made meanwhile are seen.
            let until = earliest
                .map(|at| at - shared.clock.now())
                .and_then(|wait| Duration::try_from(wait).ok())
                .unwrap_or(super::scheduler::SCHEDULE_EVERY);
            next_schedules = from_now(until.min(super::scheduler::SCHEDULE_EVERY));
        }
        // Listen before looking, so an enqueue or a free slot between the
        // claim and the wait is not missed.
        let mut enqueued = pin!(shared.signals.enqueued());
        enqueued.as_mut().enable();
        let mut slot = pin!(shared.slot_freed.notified());
        slot.as_mut().enable();
        if let Some(notices) = wake_ups.as_mut() {
            notices.mark_unchanged();
        }

        // Each queue claims into its own free slots, one claim per queue a
        // round, so a queue with a flood of due tasks never delays another.
        let mut hungry = Vec::new();
        let mut full = false;
        for (index, lane) in shared.lanes.iter().enumerate() {
            let free = free_slots(lane);
            if free == 0 {
                continue;
            }
            let request = ClaimRequest {
                queue: lane.queue.clone(),
                worker_id: config.worker_id.clone(),
                limit: free,
                lease_for: config.lease,
                now: shared.clock.now(),
            };
            match shared.storage.claim(request).await {
                Ok(tasks) => {
                    full |= tasks.len() == free;
                    if tasks.len() < free {
                        hungry.push(lane.queue.clone());
                    }
                    if !tasks.is_empty() {
                        bump(&shared.counters.claims);
                    }
                    for task in tasks {
                        spawn_executor(&shared, task, index);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %lane.queue, "cannot claim tasks; trying again after the poll interval");
                }
            }
        }
        if full {
            continue;
        }
        let free = shared.lanes.iter().any(|lane| free_slots(lane) > 0);
        let mut wait = config.poll_interval;
        if !hungry.is_empty() {
            // Nothing more is due in these queues: sleep until their next
            // task is, if that comes before the next poll.
            wait = wait.min(until_next_due(&shared, &hungry).await);
            // A queue over its rate: look again when the rate allows a start.
            wait = wait.min(rated.wait(&shared, &hungry).await);
        }
        if !free {
            // Every slot is busy: only a free slot (or stopping) matters.
            wait = Duration::MAX;
        }
        let until_requeue = next_requeue.saturating_duration_since(Instant::now());
        let until_requeue = match config.schedules {
            true => until_requeue.min(next_schedules.saturating_duration_since(Instant::now())),
            false => until_requeue,
        };
        tokio::select! {
            _ = shared.stop_claiming.cancelled() => return,
            _ = &mut enqueued, if free => {}
            Ok(()) = changed(&mut wake_ups), if free => {}
            _ = &mut slot => {
                // Tasks recorded together free their slots one after another:
                // let the others land so one claim fills them all.
                tokio::task::yield_now().await;
            }
            _ = tokio::time::sleep(wait.min(until_requeue)) => {}
        }
    }
}

/// The next change of the store's wake-ups; never, for a store without them
/// or once their sender is gone.
async fn changed(wake_ups: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Result<(), ()> {
    match wake_ups {
        Some(notices) => match notices.changed().await {
            Ok(()) => Ok(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// How many more tasks `lane` may claim. Handlers may run while up to as many
/// outcomes as it has slots are still being recorded, never more: a slow
/// store slows claiming down.
fn free_slots(lane: &Lane) -> usize {
    let running = lane.in_flight.load(Ordering::Acquire);
    let recording = lane.recording.load(Ordering::Acquire);
    lane.slots
        .saturating_sub(running)
        .min((2 * lane.slots).saturating_sub(running + recording))
}

/// How long until the earliest pending task of `queues` is due, by the pool's
/// clock; `Duration::MAX` when none is pending, when it is due already (a task
/// another worker is about to take; the poll looks again), or when the store
/// cannot say.
async fn until_next_due(shared: &Shared, queues: &[String]) -> Duration {
    match shared.storage.next_due(queues).await {
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

fn spawn_executor(shared: &Arc<Shared>, task: Task, lane: usize) {
    shared.lanes[lane].in_flight.fetch_add(1, Ordering::AcqRel);
    bump(&shared.counters.claimed);
    crate::telemetry::started(&task, shared.clock.now());
    let span = crate::telemetry::execution_span(&task, &shared.config.worker_id);
    let shared_for_task = shared.clone();
    shared.executors.spawn(
        async move {
            let shared = shared_for_task;
            let id = task.id;
            let slot = Slot {
                shared: &shared,
                lane: shared.lanes.get(lane),
            };
            run_task(&shared, task, slot).await;
            shared.signals.task_finished(id);
        }
        .instrument(span),
    );
}
