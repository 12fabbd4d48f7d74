//! Flow control in the file store: each queue's settings (`limits.json`),
//! the rate buckets (`buckets.json`), and the claim of a queue with
//! settings, which gathers under the store lock what `QueueLimits::admit`
//! needs: the queue's running tasks under a live lease, its buckets, and the
//! window of each candidate's key.
//!
//! A task's queue and concurrency key never change, so this process keeps
//! them once read (`State::facts`); a limited claim with a per-key limit
//! still reads the folder listings of `pending/`, `running/` (and
//! `failed/` when failures hold a key), since another process may have
//! enqueued or finished a task of the key since the last claim.

use std::collections::BTreeMap;

use crate::layout::entry_queue;
use omniq_core::flow::{ahead_of, key_windows, FlowState};
use omniq_core::{QueueFlow, QueueLimits};
use std::collections::HashMap;

// The store's types and imports, which this part of it works with.
use super::*;

/// The rate buckets as stored: queue, then key ('' for the queue's own),
/// then the bucket's time in nanoseconds since the epoch.
type Buckets = BTreeMap<String, BTreeMap<String, i128>>;

/// What a limited claim needs of a task, which never changes.
#[derive(Clone, Debug)]
pub(super) struct Facts {
    queue: String,
    key: Option<String>,
}

/// Keeps the index of pending tasks by key in step with a change this
/// process made: `task` left pending (`pending` false) or became pending.
pub(super) fn note_pending(state: &mut State, task: &Task, pending: bool) {
    let (Some(key), true) = (&task.concurrency_key, state.pending_keys_of.is_some()) else {
        return;
    };
    let ids = state
        .pending_keys
        .entry(task.queue.clone())
        .or_default()
        .entry(key.clone())
        .or_default();
    match pending {
        true => ids.insert(task.id),
        false => ids.remove(&task.id),
    };
}

impl Store {
    /// How many times a task with a concurrency key became pending in this
    /// store (`keyed.gen`), which tells a process whose view of `pending/`
    /// may be missing such a task.
    fn keyed_generation(&self) -> Result<u64> {
        let Some(bytes) = read_optional(&self.layout().keyed_gen)? else {
            return Ok(0);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| Error::Corrupt {
                path: self.layout().keyed_gen.clone(),
                reason: "not a number".into(),
            })
    }

    /// Moves the keyed generation on as this process makes tasks with a
    /// concurrency key pending; a view that was current stays current, since
    /// the change goes into it too.
    pub(super) fn keyed_pending(&self, state: &mut State) -> Result<()> {
        let generation = self.keyed_generation()?;
        self.disk
            .write_atomic(&self.layout().keyed_gen, (generation + 1).to_string().as_bytes())?;
        if state.keyed_seen == Some(generation) {
            state.keyed_seen = Some(generation + 1);
        }
        Ok(())
    }

    /// Every queue's settings.
    pub(super) fn read_limits(&self) -> Result<BTreeMap<String, QueueLimits>> {
        read_json(&self.layout().limits, "a JSON object of queue settings")
    }

    fn read_buckets(&self) -> Result<Buckets> {
        read_json(&self.layout().buckets, "a JSON object of rate buckets")
    }

    pub fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        self.locked(|_| {
            let mut all = self.read_limits()?;
            match limits.is_unlimited() {
                true => all.remove(queue),
                false => all.insert(queue.to_owned(), limits),
            };
            self.disk
                .write_atomic(&self.layout().limits, &serde_json::to_vec_pretty(&all)?)
        })
    }

    pub fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<QueueFlow>> {
        self.locked(|state| {
            let buckets = self.read_buckets()?;
            let mut flows = Vec::new();
            for (queue, limits) in self.read_limits()? {
                let running = self.running_of(state, &queue, now)?;
                let queue_tat = bucket(&buckets, &queue, "").filter(|tat| *tat > now);
                flows.push(QueueFlow {
                    queue,
                    limits,
                    running,
                    queue_tat,
                });
            }
            Ok(flows)
        })
    }

    /// The queue and key of task `id`, read once; `None` for a task whose
    /// record is gone or cannot be read.
    fn facts(&self, state: &mut State, id: TaskId) -> Result<Option<Facts>> {
        if let Some(facts) = state.facts.get(&id) {
            return Ok(Some(facts.clone()));
        }
        let Loaded::Found(task) = self.load(id)? else {
            return Ok(None);
        };
        let facts = Facts {
            queue: task.queue,
            key: task.concurrency_key,
        };
        state.facts.insert(id, facts.clone());
        Ok(Some(facts))
    }

    /// Builds the index of the view's pending tasks by queue and concurrency
    /// key, once per reading of the view; the changes this process makes
    /// keep it current after that (`note_pending`).
    fn index_pending_keys(&self, state: &mut State) -> Result<()> {
        if state.pending_keys_of.is_some() && state.pending_keys_of == state.view_read_at {
            return Ok(());
        }
        let names: Vec<String> = state.view.all().cloned().collect();
        let mut index: HashMap<String, HashMap<String, BTreeSet<TaskId>>> = HashMap::new();
        for name in names {
            let Some(id) = entry_id(&name) else { continue };
            if let Some(Facts {
                queue,
                key: Some(key),
            }) = self.facts(state, id)?
            {
                index.entry(queue).or_default().entry(key).or_default().insert(id);
            }
        }
        state.pending_keys = index;
        state.pending_keys_of = state.view_read_at;
        Ok(())
    }

    /// The ids of the running tasks of `queue`.
    fn running_ids(&self, state: &mut State, queue: &str) -> Result<Vec<(TaskId, Option<String>)>> {
        let mut ids = Vec::new();
        for name in names(&self.layout().running)? {
            let Ok(id) = TaskId::parse(&name) else { continue };
            if let Some(facts) = self.facts(state, id)? {
                if facts.queue == queue {
                    ids.push((id, facts.key));
                }
            }
        }
        Ok(ids)
    }

    /// How many tasks of `queue` run under a lease that has not run out.
    fn running_of(&self, state: &mut State, queue: &str, now: OffsetDateTime) -> Result<u32> {
        let ids = self.running_ids(state, queue)?;
        Ok(ids
            .iter()
            .filter(|(id, _)| self.read_lease(*id).is_some_and(|lease| lease.expires_at > now))
            .count() as u32)
    }

    /// The names a claim of `queue` under `limits` may take, in claim order,
    /// with the buckets stored; called under the store lock by the claim.
    pub(super) fn admitted(
        &self,
        state: &mut State,
        limits: &QueueLimits,
        request: &ClaimRequest,
    ) -> Result<Vec<String>> {
        let (queue, now) = (request.queue.as_str(), request.now);
        // A task of a key that another process made pending (an enqueue, a
        // retry, a lease handed back) must count in its key's window: the
        // view is read again whenever the keyed generation moved since.
        if limits.needs_key_order() {
            let generation = self.keyed_generation()?;
            let stale = state
                .view_read_at
                .is_none_or(|at| at.elapsed() > super::VIEW_STALE_AFTER);
            if stale || state.keyed_seen != Some(generation) {
                self.refresh_view(state)?;
                state.keyed_seen = Some(generation);
            }
        }
        let running = self.running_ids(state, queue)?;
        let live = running
            .iter()
            .filter(|(id, _)| self.read_lease(*id).is_some_and(|lease| lease.expires_at > now))
            .count() as u32;
        // Each key's unfinished tasks other than pending ones: running, and
        // failed when failures hold the window. Pending ones come from the
        // view's index of keys.
        let mut others: Vec<(String, TaskId)> = Vec::new();
        if limits.needs_key_order() {
            self.index_pending_keys(state)?;
            others.extend(running.iter().filter_map(|(id, key)| Some((key.clone()?, *id))));
            if limits.window_statuses().contains(&TaskStatus::Failed) {
                for name in names(&self.layout().failed)? {
                    if entry_queue(&name).is_none_or(|(q, _)| q != queue) {
                        continue;
                    }
                    let Some(id) = entry_id(&name) else { continue };
                    if let Some(Facts { key: Some(key), .. }) = self.facts(state, id)? {
                        others.push((key, id));
                    }
                }
            }
        }
        let others = key_windows(others.iter().map(|(key, id)| (key.as_str(), *id)));
        let ahead_in = |state: &State, key: &str, id: TaskId| {
            let pending = state
                .pending_keys
                .get(queue)
                .and_then(|keys| keys.get(key))
                .map_or(0, |ids| ids.range(..id).count() as u32);
            pending + ahead_of(others.get(key), id)
        };
        // The due tasks in claim order, read only as far as needed, without
        // those whose key's window is full (as the SQL stores do).
        let scan = match limits.key_rate {
            Some(_) => request.limit.saturating_mul(8).saturating_add(64),
            None => request.limit,
        };
        // Names are read from the view a few at a time (each read takes
        // twice as many as the one before), not all at once, so a claim
        // costs what it takes, not what waits.
        let due = time_key(now);
        let mut candidates = Vec::new();
        let mut facts = Vec::new();
        let (mut read, mut chunk) = (0, scan.max(8));
        'reading: loop {
            let names = state.view.due(queue, &due, read + chunk, &BTreeSet::new());
            let more = names.len() == read + chunk;
            for name in names.into_iter().skip(read) {
                read += 1;
                let Some(id) = entry_id(&name) else { continue };
                let key = self.facts(state, id)?.and_then(|facts| facts.key);
                let ahead = key.as_deref().map_or(0, |key| ahead_in(state, key, id));
                if limits.per_key.is_some_and(|n| key.is_some() && ahead >= n) {
                    continue;
                }
                candidates.push(name);
                facts.push((key, ahead));
                if candidates.len() >= scan {
                    break 'reading;
                }
            }
            if !more {
                break;
            }
            chunk = chunk.saturating_mul(2);
        }
        let mut buckets = match limits.rate.is_some() || limits.key_rate.is_some() {
            true => self.read_buckets()?,
            false => Buckets::new(),
        };
        let mut flow = FlowState {
            running: live,
            queue_tat: bucket(&buckets, queue, ""),
            ..FlowState::default()
        };
        for key in facts.iter().filter_map(|(key, _)| key.as_deref()) {
            if let Some(tat) = bucket(&buckets, queue, key) {
                flow.key_tats.insert(key.to_owned(), tat);
            }
        }
        let admitted = limits.admit(
            request.limit,
            &flow,
            facts.iter().map(|(key, ahead)| (key.as_deref(), *ahead)),
            now,
        );
        if admitted.queue_tat.is_some() || !admitted.key_tats.is_empty() {
            // A bucket whose time has passed is full, as a missing one.
            let now_ns = now.unix_timestamp_nanos();
            for keys in buckets.values_mut() {
                keys.retain(|_, tat| *tat > now_ns);
            }
            let of_queue = buckets.entry(queue.to_owned()).or_default();
            if let Some(tat) = admitted.queue_tat {
                of_queue.insert(String::new(), tat.unix_timestamp_nanos());
            }
            for (key, tat) in &admitted.key_tats {
                of_queue.insert(key.clone(), tat.unix_timestamp_nanos());
            }
            buckets.retain(|_, keys| !keys.is_empty());
            self.disk
                .write_atomic(&self.layout().buckets, &serde_json::to_vec(&buckets)?)?;
        }
        Ok(admitted.take.iter().map(|at| candidates[*at].clone()).collect())
    }
}

/// The bucket of `key` in `queue`, if stored.
fn bucket(buckets: &Buckets, queue: &str, key: &str) -> Option<OffsetDateTime> {
    let ns = *buckets.get(queue)?.get(key)?;
    OffsetDateTime::from_unix_timestamp_nanos(ns).ok()
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(T::default());
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not {what}: {e}"),
    })
}
