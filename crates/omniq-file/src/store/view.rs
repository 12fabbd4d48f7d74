//! The claim view: this process's sorted copy of the names in `pending/`, by
//! queue, then priority level (highest first), then eta and id, so a claim
//! reads the due names at the front of each level of its queue and never
//! walks past the tasks that wait for a later eta.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::layout::{entry_id, entry_key, entry_queue};

#[derive(Default)]
pub(super) struct View {
    /// Queue → priority → entry names (which sort by eta, then id).
    queues: HashMap<String, BTreeMap<i16, BTreeSet<String>>>,
}

impl View {
    /// The view of these names; names OmniQ did not write are left out.
    pub(super) fn of(names: impl IntoIterator<Item = String>) -> Self {
        let mut view = View::default();
        for name in names {
            view.insert(name);
        }
        view
    }

    pub(super) fn insert(&mut self, name: String) {
        if entry_id(&name).is_none() {
            return;
        }
        let Some((queue, priority)) = entry_queue(&name) else {
            return;
        };
        let level = self
            .queues
            .entry(queue.to_owned())
            .or_default()
            .entry(priority)
            .or_default();
        level.insert(name);
    }

    pub(super) fn remove(&mut self, name: &str) {
        let Some((queue, priority)) = entry_queue(name) else {
            return;
        };
        let Some(levels) = self.queues.get_mut(queue) else {
            return;
        };
        if let Some(level) = levels.get_mut(&priority) {
            level.remove(name);
            if level.is_empty() {
                levels.remove(&priority);
            }
        }
    }

    /// Up to `limit` names of `queue` due by time key `due`, in claim order,
    /// leaving out those in `skip`.
    pub(super) fn due(&self, queue: &str, due: &str, limit: usize, skip: &BTreeSet<String>) -> Vec<String> {
        let Some(levels) = self.queues.get(queue) else {
            return Vec::new();
        };
        levels
            .values()
            .rev()
            .flat_map(|level| {
                level
                    .iter()
                    .take_while(|name| entry_key(name).is_some_and(|key| key <= due))
            })
            .filter(|name| !skip.contains(*name))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every name, of every queue.
    pub(super) fn all(&self) -> impl Iterator<Item = &String> {
        self.queues.values().flat_map(|levels| levels.values().flatten())
    }

    /// Whether `queue` has a name that is not in `skip`.
    pub(super) fn has_other(&self, queue: &str, skip: &BTreeSet<String>) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|levels| levels.values().flatten().any(|name| !skip.contains(name)))
    }

    /// The earliest time key among the names of `queue`.
    pub(super) fn earliest(&self, queue: &str) -> Option<&str> {
        self.queues
            .get(queue)?
            .values()
            .filter_map(|level| level.first().and_then(|name| entry_key(name)))
            .min()
    }
}
