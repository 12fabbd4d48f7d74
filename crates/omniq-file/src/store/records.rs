//! Records and entries: loading a record (moving an unreadable one to
//! quarantine), the entry that indexes it in its status folder, the lease in a
//! running entry, and the pointer to a series' live occurrence.

// The store's types and imports, which this part of it works with.
use super::*;

impl Store {
    pub(super) fn load(&self, id: TaskId) -> Result<Loaded> {
        let path = self.layout().record(id);
        let bytes = match read_optional(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Loaded::Missing),
            // A link planted in place of the record.
            Err(Error::Corrupt { reason, .. }) => return Ok(self.quarantine(id, &path, reason)),
            Err(other) => return Err(other),
        };
        let reason = match serde_json::from_slice::<Task>(&bytes) {
            Ok(task) if task.id == id => return Ok(Loaded::Found(task)),
            Ok(task) => format!("the record holds task {} instead", task.id),
            Err(error) => format!("the record is not a readable task record: {error}"),
        };
        Ok(self.quarantine(id, &path, reason))
    }

    /// Records the store holds and cannot read: those in `tasks/` (moved to
    /// quarantine as they are found, unless the store is read-only) and
    /// those in `quarantine/` already. Reads every record.
    pub fn damaged(&self) -> Result<Vec<Damaged>> {
        let mut found = Vec::new();
        for name in names(&self.layout().tasks)? {
            let Some(id) = record_id(&name) else { continue };
            if let Loaded::Corrupt { path, reason } = self.load(id)? {
                found.push(Damaged {
                    id: id.to_string(),
                    reason,
                    location: path,
                });
            }
        }
        for held in quarantine::list(self.layout()) {
            let name = held.path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let id = name
                .strip_prefix("task-")
                .and_then(|rest| rest.get(..36))
                .unwrap_or(name)
                .to_string();
            if !found.iter().any(|d| d.location == held.path) {
                found.push(Damaged {
                    id,
                    reason: held.reason,
                    location: held.path,
                });
            }
        }
        Ok(found)
    }

    /// Moves a record that cannot be read to `quarantine/` with its reason,
    /// and removes its entries, so no count shows a task that no list can.
    pub(super) fn quarantine(&self, id: TaskId, path: &Path, reason: String) -> Loaded {
        if self.read_only {
            return Loaded::Corrupt {
                path: path.to_path_buf(),
                reason,
            };
        }
        let moved = quarantine::move_aside(self.layout(), self.disk.modes, path, &reason);
        match self.find_entries(id) {
            Ok(entries) => {
                for entry in entries {
                    if let Err(error) = self.disk.remove(&entry) {
                        tracing::warn!(%error, "cannot remove the entry of a quarantined record");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot look for the entries of a quarantined record"),
        }
        Loaded::Corrupt { path: moved, reason }
    }

    /// The record of `id`, or why not: [`Error::NotFound`], or
    /// [`Error::Corrupt`] naming the quarantined file when it was moved aside.
    pub(super) fn record_or_error(&self, id: TaskId) -> Result<Task> {
        match self.load(id)? {
            Loaded::Found(task) => Ok(task),
            Loaded::Corrupt { path, reason } => Err(Error::Corrupt {
                path,
                reason: match self.read_only {
                    true => format!("{reason} (left in place: the store was opened read-only)"),
                    false => format!("{reason}; the record was moved to quarantine/"),
                },
            }),
            Loaded::Missing => match quarantine::record_of(self.layout(), id) {
                Some(held) => Err(Error::Corrupt {
                    path: held.path,
                    reason: format!("{}; the record was moved to quarantine/", held.reason),
                }),
                None => Err(Error::not_found(id)),
            },
        }
    }

    pub(super) fn entry_path(&self, task: &Task) -> PathBuf {
        self.layout().entry_folder(task.status).join(entry_name(task))
    }

    pub(super) fn read_lease(&self, id: TaskId) -> Option<Lease> {
        let bytes = read_optional(&self.layout().running.join(id.to_string())).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The lease in force for a running record: the entry's (renewed) one when it
    /// belongs to the same claim, else the record's.
    pub(super) fn current_lease(&self, task: &Task) -> Option<Lease> {
        let recorded = task.lease.clone()?;
        match self.read_lease(task.id) {
            Some(entry) if entry.token == recorded.token => Some(entry),
            _ => Some(recorded),
        }
    }

    pub(super) fn write_lease(&self, path: &Path, lease: &Lease) -> Result<()> {
        self.disk.write_atomic(path, &serde_json::to_vec(lease)?)
    }

    /// Every entry file that names `id`, in any status folder.
    pub(super) fn find_entries(&self, id: TaskId) -> Result<Vec<PathBuf>> {
        let layout = self.layout();
        let mut found = Vec::new();
        let running = layout.running.join(id.to_string());
        if running.exists() {
            found.push(running);
        }
        for status in [
            TaskStatus::Pending,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            let folder = layout.entry_folder(status);
            for name in names(folder)? {
                if entry_id(&name) == Some(id) {
                    found.push(folder.join(name));
                }
            }
        }
        Ok(found)
    }

    /// Puts the entry of `task` where its status says, moving it from where it
    /// was (see [`Before`]).
    pub(super) fn place_entry(&self, task: &Task, before: Before<'_>) -> Result<()> {
        let target = self.entry_path(task);
        let moved = match before {
            Before::Was(old) => {
                let from = self.entry_path(old);
                match (&task.lease, task.status) {
                    _ if from == target => true,
                    // A claim: the lease rides in the entry's rename.
                    (Some(lease), TaskStatus::Running) => {
                        if self
                            .disk
                            .fill_and_rename(&from, &target, &serde_json::to_vec(lease)?)?
                        {
                            return Ok(());
                        }
                        false
                    }
                    _ => self.disk.rename(&from, &target)?,
                }
            }
            Before::New => false,
            Before::Unknown => {
                let mut present = false;
                for stray in self.find_entries(task.id)? {
                    if stray == target {
                        present = true;
                    } else {
                        self.disk.remove(&stray)?;
                    }
                }
                present
            }
        };
        match (&task.lease, task.status) {
            (Some(lease), TaskStatus::Running) => self.write_lease(&target, lease),
            _ if moved => Ok(()),
            _ => self.disk.create_empty(&target),
        }
    }

    pub(super) fn remove_entries(&self, task: Option<&Task>, id: TaskId) -> Result<()> {
        let paths = match task {
            Some(task) => vec![self.entry_path(task)],
            None => self.find_entries(id)?,
        };
        for path in paths {
            self.disk.remove(&path)?;
        }
        Ok(())
    }

    pub(super) fn write_record(&self, task: &Task) -> Result<()> {
        self.disk
            .write_atomic(&self.layout().record(task.id), &serde_json::to_vec_pretty(task)?)
    }

    /// Keeps `series/<series>` listing the live (pending or running)
    /// occurrences of each series that `tasks` (as they are now) belong to or
    /// left (`was`: their series before), so cancelling a series finds every
    /// live occurrence without reading every record, and finds them all even
    /// if a series ever had more than one. Idempotent, so a replay can run it
    /// again.
    pub(super) fn update_series<'t>(
        &self,
        tasks: impl IntoIterator<Item = (&'t Task, Option<TaskId>)>,
    ) -> Result<()> {
        let mut changes: HashMap<TaskId, Vec<(TaskId, bool)>> = HashMap::new();
        for (task, was) in tasks {
            let live = !task.status.is_finished();
            if let Some(series) = task.series {
                changes.entry(series).or_default().push((task.id, live));
            }
            if let Some(old) = was.filter(|old| Some(*old) != task.series) {
                changes.entry(old).or_default().push((task.id, false));
            }
        }
        for (series, moves) in changes {
            let before = self.live_in_series(series);
            let mut after = before.clone();
            for (id, live) in moves {
                after.retain(|known| *known != id);
                if live {
                    after.push(id);
                }
            }
            if after != before {
                self.write_series(series, &after)?;
            }
        }
        Ok(())
    }

    /// Takes `id` off the list of its series' live occurrences (it is deleted).
    pub(super) fn forget_in_series(&self, series: TaskId, id: TaskId) -> Result<()> {
        let mut live = self.live_in_series(series);
        let before = live.len();
        live.retain(|known| *known != id);
        match live.len() == before {
            true => Ok(()),
            false => self.write_series(series, &live),
        }
    }

    fn write_series(&self, series: TaskId, live: &[TaskId]) -> Result<()> {
        let path = self.layout().series_pointer(series);
        if live.is_empty() {
            return self.disk.remove(&path);
        }
        let text: String = live.iter().map(|id| format!("{id}\n")).collect();
        self.disk.write_atomic(&path, text.as_bytes())
    }

    /// The live occurrences of a series, as `series/<series>` lists them (one
    /// id a line; a store written by an earlier release holds one id).
    pub(super) fn live_in_series(&self, series: TaskId) -> Vec<TaskId> {
        let bytes = read_optional(&self.layout().series_pointer(series))
            .ok()
            .flatten()
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| TaskId::parse(line.trim()).ok())
            .collect()
    }
}
