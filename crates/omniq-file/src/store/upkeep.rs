//! The upkeep pools share, in the file store: pruning the oldest finished
//! tasks of one status, turns at store-wide chores (`turns.json`), and the
//! pools' heartbeats (`workers.json`), each file rewritten whole under the
//! store lock.

use std::collections::BTreeMap;

use omniq_core::WorkerBeat;

use super::*;

impl Store {
    /// Deletes at most `limit` tasks of `status` finished before `before`,
    /// oldest first: entry names start with their finish time, so the folder
    /// listing sorted is the order. One lock hold per call, so claims and
    /// finishes get the store between two batches.
    pub fn prune(&self, status: TaskStatus, before: OffsetDateTime, limit: usize) -> Result<u64> {
        let cutoff = time_key(before);
        self.locked(|state| {
            let folder = self.layout().entry_folder(status);
            let mut old: Vec<String> = names(folder)?
                .into_iter()
                .filter(|name| {
                    entry_id(name).is_some() && entry_key(name).is_some_and(|key| key < cutoff.as_str())
                })
                .collect();
            old.sort_unstable();
            let mut deletes = Vec::new();
            for name in old {
                if deletes.len() >= limit {
                    break;
                }
                let Some(id) = entry_id(&name) else { continue };
                match self.load(id)? {
                    Loaded::Found(task) if task.status == status => deletes.push(task),
                    // An entry that outlived its record.
                    _ => self.disk.remove(&folder.join(&name))?,
                }
            }
            let pruned = deletes.len() as u64;
            self.apply(state, Vec::new(), deletes)?;
            Ok(pruned)
        })
    }

    /// The last turn taken at each chore, in nanoseconds since the epoch.
    fn read_turns(&self) -> Result<BTreeMap<String, i128>> {
        read_map(&self.layout().turns, "a JSON object of chores and times")
    }

    pub fn take_turn(&self, chore: &str, now: OffsetDateTime, every: std::time::Duration) -> Result<bool> {
        let due = omniq_core::earlier(now, every).unix_timestamp_nanos();
        self.locked(|_| {
            let mut turns = self.read_turns()?;
            if turns.get(chore).is_some_and(|last| *last > due) {
                return Ok(false);
            }
            turns.insert(chore.to_owned(), now.unix_timestamp_nanos());
            self.disk
                .write_atomic(&self.layout().turns, &serde_json::to_vec_pretty(&turns)?)?;
            Ok(true)
        })
    }

    fn read_workers(&self) -> Result<BTreeMap<String, WorkerBeat>> {
        read_map(&self.layout().workers, "a JSON object of heartbeats")
    }

    fn write_workers(&self, workers: &BTreeMap<String, WorkerBeat>) -> Result<()> {
        self.disk
            .write_atomic(&self.layout().workers, &serde_json::to_vec_pretty(workers)?)
    }

    pub fn beat(&self, beat: WorkerBeat) -> Result<()> {
        self.locked(|_| {
            let mut workers = self.read_workers()?;
            let gone = omniq_core::upkeep::gone_before(beat.last_seen);
            workers.retain(|_, b| b.expires_at >= gone);
            workers.insert(beat.worker_id.clone(), beat);
            self.write_workers(&workers)
        })
    }

    pub fn workers(&self) -> Result<Vec<WorkerBeat>> {
        Ok(self.read_workers()?.into_values().collect())
    }

    pub fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        self.locked(|_| {
            let mut workers = self.read_workers()?;
            let removed = workers.remove(worker_id).is_some();
            if removed {
                self.write_workers(&workers)?;
            }
            Ok(removed)
        })
    }
}

/// A JSON object file read as a map; a missing file is an empty map.
fn read_map<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<BTreeMap<String, T>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not {what}: {e}"),
    })
}
