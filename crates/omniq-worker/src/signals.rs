//! Wake-ups shared by the pools and clients of one process: an enqueue wakes
//! idle pools at once, and a finished task wakes whoever waits for its result,
//! and only them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use omniq_core::TaskId;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Wake-ups shared by the pools and clients of one process, so nothing in the
/// process waits for a poll.
#[derive(Debug, Default)]
pub struct Signals {
    enqueued: Notify,
    finished: Notify,
    /// The tasks someone waits for, each with its own wake-up and how many
    /// wait for it: a finish wakes the waiters of that task only.
    watched: Mutex<HashMap<TaskId, (Arc<Notify>, usize)>>,
}

impl Signals {
    /// New signals, to share between a client and its pools.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Tells every idle pool sharing these signals that tasks were enqueued.
    pub fn task_enqueued(&self) {
        self.enqueued.notify_waiters();
    }

    /// Completes when a pool sharing these signals next finishes any task.
    /// Create it before checking the store, then await it, so no finish is
    /// missed. To wait for one task, [`Signals::watch`] wakes less often.
    pub fn finished(&self) -> Notified<'_> {
        self.finished.notified()
    }

    /// Starts watching one task: [`TaskWatch::finished`] completes when a pool
    /// sharing these signals finishes it, and no other finish wakes it.
    pub fn watch(&self, id: TaskId) -> TaskWatch<'_> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let entry = watched.entry(id).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        TaskWatch {
            signals: self,
            id,
            notify: entry.0.clone(),
        }
    }

    /// Tells the waiters of task `id`, and those of any finish, that a pool
    /// finished it.
    pub fn task_finished(&self, id: TaskId) {
        let notify = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|(notify, _)| notify.clone());
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        self.finished.notify_waiters();
    }

    /// Completes when tasks are next enqueued through these signals (idle
    /// pools wait on it; so do dashboards, to show new tasks at once).
    pub fn enqueued(&self) -> Notified<'_> {
        self.enqueued.notified()
    }
}

/// A watch on one task; see [`Signals::watch`]. Dropping it stops watching.
#[derive(Debug)]
pub struct TaskWatch<'a> {
    signals: &'a Signals,
    id: TaskId,
    notify: Arc<Notify>,
}

impl TaskWatch<'_> {
    /// Completes when a pool sharing the signals finishes the task. Create it
    /// before checking the store, then await it, so no finish is missed.
    pub fn finished(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for TaskWatch<'_> {
    fn drop(&mut self) {
        let mut watched = self.signals.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = watched.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    #[test]
    fn a_finish_wakes_only_the_waiters_of_its_task() {
        let signals = Signals::new();
        let (a, b) = (TaskId::new(), TaskId::new());
        let watch_a = signals.watch(a);
        let watch_b = signals.watch(b);
        let woken_a = watch_a.finished();
        let woken_b = watch_b.finished();
        signals.task_finished(a);
        assert!(
            woken_a.now_or_never().is_some(),
            "the waiter of the finished task wakes"
        );
        assert!(
            woken_b.now_or_never().is_none(),
            "the waiter of another task stays asleep"
        );
        drop(watch_a);
        drop(watch_b);
        assert!(
            signals.watched.lock().unwrap().is_empty(),
            "watches clean up after themselves"
        );
    }
}
