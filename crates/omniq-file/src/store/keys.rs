//! What the store keeps beside its tasks: the unique keys held by live tasks
//! (`keys/`), the paused queues (`paused.json`), the format version
//! (`format`), and the per-queue report built from the records.
//!
//! A key file is named by the SHA-256 of its key (keys are any text; names
//! must be short and safe) and holds the id of the task that took it; a task
//! with a window (`unique_for`) keeps its file after it finished. It is
//! written before the record that makes its task live and removed after the
//! record that ends it, all under the store lock, so the check of a key and
//! the store of its task are one step for every process. The record is the
//! authority: a key file naming a task that is gone, finished, or carries
//! another key (left by a crash between the two writes) holds nothing.

// The store's types and imports, which this part of it works with.
use super::*;
use omniq_core::queue::{holds_key, QueueStats, QueueTally};
use sha2::{Digest, Sha256};

use crate::layout::entry_queue;

/// The format this build writes. 1: before queues (no `format` file); 2:
/// queues, priorities in pending entry names, `keys/` and `paused.json`.
/// A store of format 1 reads as it is, so opening it only writes the stamp.
pub const FORMAT: u32 = 2;

impl Store {
    fn key_path(&self, key: &str) -> PathBuf {
        let hash = Sha256::digest(key.as_bytes());
        let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.layout().keys.join(name)
    }

    /// The task that took `key` last, as its key file and record agree.
    fn key_taker(&self, key: &str) -> Result<Option<Task>> {
        let Some(bytes) = read_optional(&self.key_path(key))? else {
            return Ok(None);
        };
        let Ok(id) = TaskId::parse(String::from_utf8_lossy(&bytes).trim()) else {
            return Ok(None);
        };
        Ok(match self.load(id)? {
            Loaded::Found(task) if task.unique_key.as_deref() == Some(key) => Some(task),
            _ => None,
        })
    }

    /// The live task holding `key`.
    pub(super) fn key_holder(&self, key: &str) -> Result<Option<TaskId>> {
        Ok(self
            .key_taker(key)?
            .filter(|task| holds_key(task.status))
            .map(|task| task.id))
    }

    /// The task holding `key` at `now`: live, or finished within its window
    /// ([`Task::holds_key_at`]). Only the last taker can hold it: no task
    /// takes a key while another holds it.
    pub(super) fn key_holder_at(&self, key: &str, now: OffsetDateTime) -> Result<Option<TaskId>> {
        Ok(self
            .key_taker(key)?
            .filter(|task| task.holds_key_at(now))
            .map(|task| task.id))
    }

    /// Records that live `task` holds its key, before its record says so.
    pub(super) fn take_key(&self, task: &Task) -> Result<()> {
        let Some(key) = task.unique_key.as_deref().filter(|_| holds_key(task.status)) else {
            return Ok(());
        };
        let path = self.key_path(key);
        let id = task.id.to_string();
        if read_optional(&path)?.is_some_and(|held| held == id.as_bytes()) {
            return Ok(());
        }
        self.disk.write_atomic(&path, id.as_bytes())
    }

    /// Gives up the key of `task` once its record says it ended, unless
    /// another task took the key since. A task with a window keeps the file:
    /// its record says until when it holds the key.
    pub(super) fn release_key(&self, task: &Task) -> Result<()> {
        let Some(key) = task
            .unique_key
            .as_deref()
            .filter(|_| !holds_key(task.status) && task.unique_window.is_none())
        else {
            return Ok(());
        };
        let path = self.key_path(key);
        match read_optional(&path)? {
            Some(held) if held == task.id.to_string().as_bytes() => self.disk.remove(&path),
            _ => Ok(()),
        }
    }

    /// The paused queues.
    pub(super) fn read_paused(&self) -> Result<BTreeSet<String>> {
        let path = &self.layout().paused;
        let Some(bytes) = read_optional(path)? else {
            return Ok(BTreeSet::new());
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("not a JSON array of queue names: {e}"),
        })
    }

    pub fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.locked(|_| {
            let mut names = self.read_paused()?;
            let changed = match paused {
                true => names.insert(queue.to_owned()),
                false => names.remove(queue),
            };
            match changed {
                true => self
                    .disk
                    .write_atomic(&self.layout().paused, &serde_json::to_vec(&names)?),
                false => Ok(()),
            }
        })
    }

    pub fn paused(&self) -> Result<Vec<String>> {
        Ok(self.read_paused()?.into_iter().collect())
    }

    /// From the entry names, which carry the queue, under the store lock (as
    /// [`Store::counts`]); only running tasks' records are read.
    pub fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.locked(|_| {
            let mut tally = QueueTally::new(self.read_paused()?);
            for status in TaskStatus::ALL {
                for name in names(self.layout().entry_folder(status))? {
                    let Some(id) = entry_id(&name) else { continue };
                    let queue = match status {
                        TaskStatus::Running => match self.load(id)? {
                            Loaded::Found(task) => task.queue,
                            _ => continue,
                        },
                        _ => match entry_queue(&name) {
                            Some((queue, _)) => queue.to_owned(),
                            None => continue,
                        },
                    };
                    let stats = tally.queue(&queue);
                    stats.counts.add(status);
                    if status == TaskStatus::Pending {
                        if let Some(eta) = entry_key(&name).and_then(key_time) {
                            stats.pending_eta(eta);
                        }
                    }
                }
            }
            Ok(tally.finish())
        })
    }

    /// The store's format version: 1 for a store without the stamp.
    pub(super) fn read_format(&self) -> Result<u32> {
        let path = &self.layout().format;
        let Some(bytes) = read_optional(path)? else {
            return Ok(1);
        };
        let text = String::from_utf8_lossy(&bytes);
        let version: u32 = text.trim().parse().map_err(|_| Error::Corrupt {
            path: path.clone(),
            reason: format!("not a format version: {:?}", text.trim()),
        })?;
        if version > FORMAT {
            return Err(Error::Incompatible {
                path: self.layout().base.clone(),
                reason: format!(
                    "written by a newer OmniQ (store format {version}; this build knows up to {FORMAT}); \
                     upgrade OmniQ to open it"
                ),
            });
        }
        Ok(version)
    }

    /// Checks the format, and stamps a store of an earlier one (which reads
    /// as it is) with this build's.
    pub(super) fn stamp_format(&self) -> Result<()> {
        if self.read_format()? < FORMAT {
            self.disk
                .write_atomic(&self.layout().format, format!("{FORMAT}\n").as_bytes())?;
        }
        Ok(())
    }
}
