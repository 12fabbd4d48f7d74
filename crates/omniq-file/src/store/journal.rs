//! The change protocol: a change is journaled in `intent.json`, applied, and
//! the journal emptied; whoever takes the lock next replays a change that a
//! dead process left unfinished.

// The store's types and imports, which this part of it works with.
use super::*;

impl Store {
    /// Applies saves and deletions, journaled unless the change is a single new
    /// task (whose entry is written before its record: a crash in between leaves
    /// an entry without a record, which claims discard).
    pub(super) fn apply(&self, state: &mut State, saves: Vec<Save>, deletes: Vec<Task>) -> Result<()> {
        // A task of a key about to become pending: other processes' claims
        // must see it in its key's window (`store/flow.rs`). Told before the
        // change, so a crash in between costs a needless read of the view,
        // never a task missed.
        let keyed = saves.iter().any(|save| {
            save.task.status == TaskStatus::Pending
                && save.task.concurrency_key.is_some()
                && save
                    .old
                    .as_ref()
                    .is_none_or(|old| old.status != TaskStatus::Pending)
        });
        if keyed {
            self.keyed_pending(state)?;
        }
        let journal =
            saves.len() + deletes.len() > 1 || saves.iter().any(|s| s.old.is_some()) || !deletes.is_empty();
        if journal {
            let intent = Intent {
                save: saves.iter().map(|s| s.task.clone()).collect(),
                delete: deletes.iter().map(|t| t.id).collect(),
            };
            self.disk
                .write_in_place(&self.layout().intent, &serde_json::to_vec(&intent)?)?;
        }
        for save in &saves {
            self.take_key(&save.task)?;
        }
        for save in &saves {
            match &save.old {
                None => {
                    self.place_entry(&save.task, Before::New)?;
                    if let Err(error) = self.write_record(&save.task) {
                        // A full disk, say: take the entry back rather than leave
                        // it for a claim to discard.
                        if !journal {
                            let _ = fs::remove_file(self.entry_path(&save.task));
                        }
                        return Err(error);
                    }
                }
                Some(old) => {
                    self.write_record(&save.task)?;
                    self.place_entry(&save.task, Before::Was(old))?;
                }
            }
        }
        self.update_series(
            saves
                .iter()
                .map(|save| (&save.task, save.old.as_ref().and_then(|old| old.series))),
        )?;
        for task in &deletes {
            self.delete(task.id, Some(task))?;
        }
        for save in &saves {
            self.release_key(&save.task)?;
        }
        if journal {
            self.disk.clear(&self.layout().intent)?;
        }
        for save in &saves {
            if let Some(old) = save.old.as_ref().filter(|t| t.status == TaskStatus::Pending) {
                state.view.remove(&entry_name(old));
                flow::note_pending(state, old, false);
            }
            if save.task.status == TaskStatus::Pending {
                state.view.insert(entry_name(&save.task));
                flow::note_pending(state, &save.task, true);
            }
        }
        for task in deletes.iter().filter(|t| t.status == TaskStatus::Pending) {
            state.view.remove(&entry_name(task));
            flow::note_pending(state, task, false);
        }
        Ok(())
    }

    pub(super) fn delete(&self, id: TaskId, task: Option<&Task>) -> Result<()> {
        if let Some(series) = task.and_then(|t| t.series) {
            self.forget_in_series(series, id)?;
        }
        self.disk.remove(&self.layout().record(id))?;
        self.remove_entries(task, id)
    }

    /// Finishes the change a dead process left in `intent.json`, if any.
    pub(super) fn replay(&self, state: &mut State) -> Result<()> {
        let path = &self.layout().intent;
        let bytes = read_optional(path)?.unwrap_or_default();
        if bytes.is_empty() {
            return Ok(());
        }
        let intent: Intent = match serde_json::from_slice(&bytes) {
            Ok(intent) => intent,
            Err(error) => {
                // Written in place, the intent is whole before any step of its
                // change is taken: cut short, it stands for nothing done.
                tracing::warn!(
                    path = %path.display(), %error,
                    "clearing the intent of a change that stopped before it started"
                );
                self.disk.clear(path)?;
                return Ok(());
            }
        };
        tracing::warn!(
            saves = intent.save.len(),
            deletes = intent.delete.len(),
            "finishing a change that a stopped process left unfinished"
        );
        for task in &intent.save {
            self.take_key(task)?;
            self.write_record(task)?;
            self.place_entry(task, Before::Unknown)?;
            self.release_key(task)?;
        }
        // Which series a saved task left is not known here; a finished or
        // detached task stays listed until its series is next cancelled or
        // changed, which skips what is no longer live.
        self.update_series(intent.save.iter().map(|task| (task, None)))?;
        for id in &intent.delete {
            let task = match self.load(*id)? {
                Loaded::Found(task) => Some(task),
                _ => None,
            };
            self.delete(*id, None)?;
            if let Some(series) = task.and_then(|t| t.series) {
                self.forget_in_series(series, *id)?;
            }
        }
        self.disk.clear(path)?;
        // Entries moved behind this process's back: read pending/ afresh.
        state.view_read_at = None;
        Ok(())
    }
}
