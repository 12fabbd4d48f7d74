//! The file store's operations, run on a blocking thread under the store lock.
//!
//! Every change follows one protocol. Under the store lock (a mutex inside the
//! process, `flock` across processes): write the intent (the final records and
//! deletions, into `intent.json`), apply it (records, then entries moved between
//! the status folders), empty the intent. A process that dies midway leaves the
//! intent behind, and whoever takes the lock next replays it, which is idempotent,
//! so every change is all or nothing. The intent is written in place, not
//! through a temporary file: a process that dies while writing it leaves JSON
//! cut short, which can only mean the change had not started, so it is cleared.
//! That saves creating, renaming and deleting a file per change. Records are the authority; entries are an
//! index rebuilt from them. The one exception: a running entry holds the current
//! lease, renewed there without rewriting the record.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use omniq_core::{
    cancel_in_scope, CancelScope, ClaimRequest, Damaged, Durability, Error, Finish, FinishOutcome, Finished,
    Lease, LeaseRef, ListOrder, ListQuery, RenewOutcome, Result, StatusCounts, Task, TaskId, TaskStatus,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::layout::{
    entry_id, entry_key, entry_name, key_time, names, read_optional, record_id, time_key, Disk, Layout,
};
use crate::lock::StoreLock;
use crate::quarantine;

mod check;
use crate::safe::{self, Modes, TMP_PREFIX};
pub use check::CheckReport;

/// How long this process trusts its sorted view of `pending/` before reading the
/// folder again, to see tasks enqueued by other processes.
const VIEW_STALE_AFTER: Duration = Duration::from_secs(1);
/// Temporary files older than this were left by a process that died mid-write.
const TMP_ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// The journal of one change: written before it starts, removed when it is done.
#[derive(Serialize, Deserialize)]
struct Intent {
    save: Vec<Task>,
    delete: Vec<TaskId>,
}

/// One record to write: the new state, and the old one (`None` for a new task).
struct Save {
    task: Task,
    old: Option<Task>,
}

/// Where a task's entry was before a change.
#[derive(Clone, Copy)]
enum Before<'a> {
    /// Where this record put it.
    Was(&'a Task),
    /// Nowhere: the task is new.
    New,
    /// Not known (replaying a change, repairing): look in every folder.
    Unknown,
}

/// What loading a record found. Short-lived, so the size of a whole task in
/// one variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Missing,
    /// Moved to quarantine: where to, and why.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    Found(Task),
}

struct State {
    lock: StoreLock,
    /// Names in `pending/`, sorted as claims take them (eta, then id).
    view: BTreeSet<String>,
    view_read_at: Option<Instant>,
    /// When this process last looked for records without entries.
    entries_checked_at: Option<Instant>,
}

impl State {
    fn new(lock: StoreLock) -> Self {
        State {
            lock,
            view: BTreeSet::new(),
            view_read_at: None,
            entries_checked_at: None,
        }
    }
}

/// A store folder and the state this process keeps about it.
pub struct Store {
    disk: Disk,
    state: Mutex<State>,
    /// Opened only to read (see [`Store::open_read_only`]): nothing in the
    /// folder is created, moved or replayed.
    read_only: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("base", &self.disk.layout.base)
            .finish()
    }
}

impl Store {
    /// Opens (creating if missing) the store in `base`, replaying a change that a
    /// dead process left unfinished. Waits at most `lock_timeout` for another
    /// process holding the store lock.
    pub fn open(base: &Path, durability: Durability, lock_timeout: Duration) -> Result<Self> {
        let layout = Layout::new(base);
        Modes::PRIVATE.create_dir(base)?;
        let modes = Modes::for_folder(base);
        for folder in layout.folders() {
            modes.create_dir(folder)?;
        }
        safe::remove_link(&layout.lock)?;
        let lock = StoreLock::open(&layout.lock, modes, lock_timeout)?;
        let store = Store {
            disk: Disk::new(layout, modes, durability),
            state: Mutex::new(State::new(lock)),
            read_only: false,
        };
        // The journal is OmniQ's own file: a link planted in its place is
        // removed (the link, not its target) before anything reads it.
        safe::remove_link(&store.layout().intent)?;
        store.locked(|_| store.disk.ensure_file(&store.layout().intent))?;
        store.remove_abandoned_tmp_files();
        Ok(store)
    }

    /// Opens the existing store in `base` only to read it: no folder, lock
    /// file or journal is created, no unfinished change is replayed, no
    /// temporary file removed, no unreadable record moved to quarantine (it
    /// is reported instead). Reads still take the store lock, so they see no
    /// change half applied.
    pub fn open_read_only(base: &Path, durability: Durability, lock_timeout: Duration) -> Result<Self> {
        let layout = Layout::new(base);
        if !layout.tasks.is_dir() {
            return Err(Error::Incompatible {
                path: base.to_path_buf(),
                reason: "not an OmniQ file store (it has no tasks/ folder)".into(),
            });
        }
        let modes = Modes::for_folder(base);
        let lock = StoreLock::open_existing(&layout.lock, lock_timeout)?;
        Ok(Store {
            disk: Disk::new(layout, modes, durability),
            state: Mutex::new(State::new(lock)),
            read_only: true,
        })
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn layout(&self) -> &Layout {
        &self.disk.layout
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Removes temporary files that a process which died mid-write left in
    /// `tmp/`: only files OmniQ named (with its prefix), only plain files (a
    /// link is removed as itself, never followed), only old ones. `tmp/`
    /// itself was checked on open to be a folder, not a link.
    fn remove_abandoned_tmp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.layout().tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(TMP_PREFIX));
            // `DirEntry::metadata` does not follow links.
            let old = entry
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > TMP_ABANDONED_AFTER);
            if ours && old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Runs `f` holding the store lock, after replaying any unfinished change.
    fn locked<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        // A panic while holding the mutex leaves nothing half-done that the
        // intent replay below does not repair.
        let mut state: MutexGuard<'_, State> = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.lock.lock()?;
        let result = match self.read_only {
            // Whoever opens the store to write next finishes the change.
            true => f(&mut state),
            false => self.replay(&mut state).and_then(|_| f(&mut state)),
        };
        if let Err(error) = state.lock.unlock() {
            tracing::warn!(%error, "cannot release the store lock; it is released when the process exits");
        }
        result
    }

    // ---- records and entries ----

    fn load(&self, id: TaskId) -> Result<Loaded> {
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
    fn quarantine(&self, id: TaskId, path: &Path, reason: String) -> Loaded {
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
    fn record_or_error(&self, id: TaskId) -> Result<Task> {
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

    fn entry_path(&self, task: &Task) -> PathBuf {
        self.layout().entry_folder(task.status).join(entry_name(
            task.status,
            task.id,
            task.eta,
            task.finished_at,
        ))
    }

    fn read_lease(&self, id: TaskId) -> Option<Lease> {
        let bytes = read_optional(&self.layout().running.join(id.to_string())).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The lease in force for a running record: the entry's (renewed) one when it
    /// belongs to the same claim, else the record's.
    fn current_lease(&self, task: &Task) -> Option<Lease> {
        let recorded = task.lease.clone()?;
        match self.read_lease(task.id) {
            Some(entry) if entry.token == recorded.token => Some(entry),
            _ => Some(recorded),
        }
    }

    fn write_lease(&self, path: &Path, lease: &Lease) -> Result<()> {
        self.disk.write_atomic(path, &serde_json::to_vec(lease)?)
    }

    /// Every entry file that names `id`, in any status folder.
    fn find_entries(&self, id: TaskId) -> Result<Vec<PathBuf>> {
        let layout = self.layout();
        let mut found = Vec::new();
        let running = layout.running.join(id.to_string());
        if running.exists() {
            found.push(running);
        }
        let suffix = format!("-{id}");
        for status in [
            TaskStatus::Pending,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            let folder = layout.entry_folder(status);
            for name in names(folder)? {
                if name.ends_with(&suffix) {
                    found.push(folder.join(name));
                }
            }
        }
        Ok(found)
    }

    /// Puts the entry of `task` where its status says, moving it from where it
    /// was (see [`Before`]).
    fn place_entry(&self, task: &Task, before: Before<'_>) -> Result<()> {
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

    fn remove_entries(&self, task: Option<&Task>, id: TaskId) -> Result<()> {
        let paths = match task {
            Some(task) => vec![self.entry_path(task)],
            None => self.find_entries(id)?,
        };
        for path in paths {
            self.disk.remove(&path)?;
        }
        Ok(())
    }

    fn write_record(&self, task: &Task) -> Result<()> {
        self.disk
            .write_atomic(&self.layout().record(task.id), &serde_json::to_vec_pretty(task)?)
    }

    /// Records `task` as the live occurrence of its series, so cancelling the
    /// series finds it without reading every record.
    fn point_series(&self, task: &Task) -> Result<()> {
        match task.series {
            Some(series) if !task.status.is_finished() => self.disk.write_atomic(
                &self.layout().series_pointer(series),
                task.id.to_string().as_bytes(),
            ),
            _ => Ok(()),
        }
    }

    fn live_in_series(&self, series: TaskId) -> Option<TaskId> {
        let bytes = read_optional(&self.layout().series_pointer(series)).ok()??;
        TaskId::parse(std::str::from_utf8(&bytes).ok()?.trim()).ok()
    }

    // ---- the change protocol ----

    /// Applies saves and deletions, journaled unless the change is a single new
    /// task (whose entry is written before its record: a crash in between leaves
    /// an entry without a record, which claims discard).
    fn apply(&self, state: &mut State, saves: Vec<Save>, deletes: Vec<Task>) -> Result<()> {
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
            if save.old.as_ref().is_none_or(|old| old.series != save.task.series) {
                self.point_series(&save.task)?;
            }
        }
        for task in &deletes {
            self.delete(task.id, Some(task))?;
        }
        if journal {
            self.disk.clear(&self.layout().intent)?;
        }
        for save in &saves {
            if let Some(old) = save.old.as_ref().filter(|t| t.status == TaskStatus::Pending) {
                state.view.remove(&entry_name(old.status, old.id, old.eta, None));
            }
            if save.task.status == TaskStatus::Pending {
                state
                    .view
                    .insert(entry_name(save.task.status, save.task.id, save.task.eta, None));
            }
        }
        for task in &deletes {
            state
                .view
                .remove(&entry_name(task.status, task.id, task.eta, None));
        }
        Ok(())
    }

    fn delete(&self, id: TaskId, task: Option<&Task>) -> Result<()> {
        if let Some(series) = task.and_then(|t| t.series) {
            if self.live_in_series(series) == Some(id) {
                self.disk.remove(&self.layout().series_pointer(series))?;
            }
        }
        self.disk.remove(&self.layout().record(id))?;
        self.remove_entries(task, id)
    }

    /// Finishes the change a dead process left in `intent.json`, if any.
    fn replay(&self, state: &mut State) -> Result<()> {
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
            self.write_record(task)?;
            self.place_entry(task, Before::Unknown)?;
            self.point_series(task)?;
        }
        for id in &intent.delete {
            let task = match self.load(*id)? {
                Loaded::Found(task) => Some(task),
                _ => None,
            };
            self.delete(*id, None)?;
            if let Some(series) = task.and_then(|t| t.series) {
                if self.live_in_series(series) == Some(*id) {
                    self.disk.remove(&self.layout().series_pointer(series))?;
                }
            }
        }
        self.disk.clear(path)?;
        // Entries moved behind this process's back: read pending/ afresh.
        state.view_read_at = None;
        Ok(())
    }

    // ---- operations ----

    pub fn enqueue(&self, tasks: Vec<Task>) -> Result<()> {
        omniq_core::check_new_records(&tasks)?;
        self.locked(|state| {
            for task in &tasks {
                if self.layout().record(task.id).exists() {
                    return Err(Error::conflict(task.id, "a task with this id already exists"));
                }
            }
            let saves = tasks.into_iter().map(|task| Save { task, old: None }).collect();
            self.apply(state, saves, Vec::new())
        })
    }

    fn refresh_view(&self, state: &mut State) -> Result<()> {
        state.view = names(&self.layout().pending)?
            .into_iter()
            .filter(|name| entry_id(name).is_some())
            .collect();
        state.view_read_at = Some(Instant::now());
        Ok(())
    }

    pub fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        self.locked(|state| {
            if state
                .view_read_at
                .is_none_or(|at| at.elapsed() > VIEW_STALE_AFTER)
            {
                self.refresh_view(state)?;
            }
            let due = time_key(request.now);
            let mut chosen: Vec<Task> = Vec::new();
            // Names taken in this call: a refresh reads them again until they move.
            let mut taken = BTreeSet::new();
            let mut refreshed = false;
            loop {
                let names: Vec<String> = state
                    .view
                    .iter()
                    .filter(|name| !taken.contains(*name))
                    .take_while(|name| entry_key(name).is_some_and(|key| key <= due.as_str()))
                    .take(request.limit - chosen.len())
                    .cloned()
                    .collect();
                let exhausted = names.len() < request.limit - chosen.len();
                for name in names {
                    state.view.remove(&name);
                    if let Some(task) = self.claimable(&name)? {
                        chosen.push(task);
                    }
                    taken.insert(name);
                }
                // Out of due names: other processes may have enqueued since the
                // view was read.
                if chosen.len() < request.limit
                    && exhausted
                    && !refreshed
                    && state.view.iter().all(|n| taken.contains(n))
                {
                    self.refresh_view(state)?;
                    refreshed = true;
                    continue;
                }
                if chosen.len() == request.limit || exhausted {
                    break;
                }
            }
            let mut saves = Vec::with_capacity(chosen.len());
            for task in chosen {
                let old = task.clone();
                let mut task = task;
                task.claim(&request.worker_id, request.lease_for, request.now)?;
                saves.push(Save { task, old: Some(old) });
            }
            let claimed = saves.iter().map(|s| s.task.clone()).collect();
            self.apply(state, saves, Vec::new())?;
            Ok(claimed)
        })
    }

    /// The task a pending entry stands for, if it can be claimed; repairs the
    /// entry when it disagrees with its record.
    fn claimable(&self, name: &str) -> Result<Option<Task>> {
        let Some(id) = entry_id(name) else { return Ok(None) };
        let path = self.layout().pending.join(name);
        match self.load(id)? {
            // The record is the authority: pending at this name means claimable.
            Loaded::Found(task) if task.status == TaskStatus::Pending && self.entry_path(&task) == path => {
                Ok(Some(task))
            }
            Loaded::Found(task) => {
                if path.exists() {
                    self.disk.remove(&path)?;
                    self.place_entry(&task, Before::Unknown)?;
                }
                Ok(None)
            }
            // An entry whose record was never written (a crash during enqueue),
            // or whose record was quarantined.
            Loaded::Missing | Loaded::Corrupt { .. } => {
                self.disk.remove(&path)?;
                Ok(None)
            }
        }
    }

    pub fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        self.locked(|_| {
            let mut answers = Vec::with_capacity(leases.len());
            for lease in leases {
                let path = self.layout().running.join(lease.id.to_string());
                match self.read_lease(lease.id) {
                    Some(mut current) if current.token == lease.token => {
                        current.expires_at = omniq_core::later(now, lease_for);
                        self.write_lease(&path, &current)?;
                        answers.push(RenewOutcome::Renewed {
                            expires_at: current.expires_at,
                        });
                    }
                    _ => answers.push(RenewOutcome::Lost),
                }
            }
            Ok(answers)
        })
    }

    pub fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        self.locked(|state| {
            // Tasks as this batch has changed them so far, with their stored state.
            let mut touched: HashMap<TaskId, (Task, Task)> = HashMap::new();
            let mut created = Vec::new();
            let mut answers = Vec::with_capacity(finishes.len());
            for finish in finishes {
                let (task, _) = match touched.entry(finish.id) {
                    Entry::Occupied(slot) => slot.into_mut(),
                    Entry::Vacant(slot) => {
                        // The record's lease has the claim's token, which is all a
                        // finish checks; the entry's renewed expiry does not matter
                        // to a task that stops running, so it is not read.
                        let Loaded::Found(task) = self.load(finish.id)? else {
                            answers.push(FinishOutcome::LeaseLost);
                            continue;
                        };
                        slot.insert((task.clone(), task))
                    }
                };
                match task.finish(finish.token, finish.outcome, now)? {
                    Finished::LeaseLost => answers.push(FinishOutcome::LeaseLost),
                    Finished::Applied { status, next } => {
                        answers.push(FinishOutcome::Applied {
                            status,
                            next: next.as_ref().map(|n| n.id),
                        });
                        created.extend(next);
                    }
                }
            }
            let mut saves: Vec<Save> = touched
                .into_values()
                .filter(|(task, old)| task != old)
                .map(|(task, old)| Save { task, old: Some(old) })
                .collect();
            saves.extend(created.into_iter().map(|task| Save { task, old: None }));
            self.apply(state, saves, Vec::new())?;
            Ok(answers)
        })
    }

    /// The earliest eta in this process's sorted view of `pending/`, read
    /// again from the folder when stale, as claims do. Takes only this
    /// process's mutex: the view is this process's own.
    pub fn next_due(&self) -> Result<Option<OffsetDateTime>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .view_read_at
            .is_none_or(|at| at.elapsed() > VIEW_STALE_AFTER)
        {
            self.refresh_view(&mut state)?;
        }
        Ok(state
            .view
            .iter()
            .find_map(|name| entry_key(name))
            .and_then(key_time))
    }

    pub fn get(&self, id: TaskId) -> Result<Task> {
        let mut task = self.record_or_error(id)?;
        if task.status == TaskStatus::Running {
            task.lease = self.current_lease(&task);
        }
        Ok(task)
    }

    pub fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        let mut ids: Vec<TaskId> = match query.status {
            Some(status) => names(self.layout().entry_folder(status))?
                .iter()
                .filter_map(|name| entry_id(name))
                .collect(),
            None => names(&self.layout().tasks)?
                .iter()
                .filter_map(|name| record_id(name))
                .collect(),
        };
        ids.sort_unstable();
        if query.order == ListOrder::NewestFirst {
            ids.reverse();
        }
        let start = match (query.after, query.order) {
            (None, _) => 0,
            (Some(after), ListOrder::OldestFirst) => ids.partition_point(|id| *id <= after),
            (Some(after), ListOrder::NewestFirst) => ids.partition_point(|id| *id >= after),
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut tasks = Vec::new();
        for id in &ids[start..] {
            if tasks.len() >= limit {
                break;
            }
            match self.get(*id) {
                Ok(task) if query.status.is_none_or(|s| s == task.status) => tasks.push(task),
                // Gone since the folder was read, or moved on to another status.
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(Error::Corrupt { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(tasks)
    }

    pub fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.locked(|state| {
            let target = match self.record_or_error(id) {
                Ok(task) => Some(task),
                Err(Error::NotFound { .. }) => None,
                Err(other) => return Err(other),
            };
            let mut scope: Vec<Task> = target.iter().cloned().collect();
            if let CancelScope::Series(series) = CancelScope::of(id, target.as_ref()) {
                if let Some(live) = self.live_in_series(series).filter(|live| *live != id) {
                    if let Loaded::Found(task) = self.load(live)? {
                        scope.push(task);
                    }
                }
            }
            let olds: HashMap<TaskId, Task> = scope.iter().map(|t| (t.id, t.clone())).collect();
            let cancelled = cancel_in_scope(id, target.as_ref(), scope, now)?;
            let ids = cancelled.iter().map(|t| t.id).collect();
            let saves = cancelled
                .into_iter()
                .map(|task| {
                    let old = olds.get(&task.id).cloned();
                    Save { task, old }
                })
                .collect();
            self.apply(state, saves, Vec::new())?;
            Ok(ids)
        })
    }

    pub fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.locked(|state| {
            let old = self.record_or_error(id)?;
            let mut task = old.clone();
            task.retry(now)?;
            self.apply(state, vec![Save { task, old: Some(old) }], Vec::new())
        })
    }

    /// Counts entries under the store lock: a change moves a task's record
    /// before its entry, so counting while one is applied could disagree with
    /// the records a reader just saw.
    pub fn counts(&self) -> Result<StatusCounts> {
        self.locked(|_| {
            let mut counts = StatusCounts::default();
            for status in TaskStatus::ALL {
                *counts.get_mut(status) = names(self.layout().entry_folder(status))?
                    .iter()
                    .filter(|name| entry_id(name).is_some())
                    .count() as u64;
            }
            Ok(counts)
        })
    }

    pub fn purge(&self, before: OffsetDateTime) -> Result<u64> {
        let cutoff = time_key(before);
        self.locked(|state| {
            let mut deletes = Vec::new();
            for status in [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled] {
                let folder = self.layout().entry_folder(status);
                for name in names(folder)? {
                    let (Some(key), Some(id)) = (entry_key(&name), entry_id(&name)) else {
                        continue;
                    };
                    if key >= cutoff.as_str() {
                        continue;
                    }
                    match self.load(id)? {
                        Loaded::Found(task) if task.status == status => deletes.push(task),
                        // An entry that outlived its record.
                        _ => self.disk.remove(&folder.join(&name))?,
                    }
                }
            }
            let purged = deletes.len() as u64;
            self.apply(state, Vec::new(), deletes)?;
            Ok(purged)
        })
    }

    pub fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.locked(|state| {
            self.restore_missing_entries(state)?;
            let mut saves = Vec::new();
            let mut expired = Vec::new();
            for name in names(&self.layout().running)? {
                if expired.len() >= omniq_core::storage::REQUEUE_BATCH {
                    break;
                }
                let Some(id) = entry_id(&name) else { continue };
                let path = self.layout().running.join(&name);
                let mut task = match self.load(id)? {
                    Loaded::Found(task) => task,
                    Loaded::Missing | Loaded::Corrupt { .. } => {
                        self.disk.remove(&path)?;
                        continue;
                    }
                };
                if task.status != TaskStatus::Running {
                    // A stray entry: put the task's entry where its record says.
                    self.disk.remove(&path)?;
                    self.place_entry(&task, Before::Unknown)?;
                    continue;
                }
                task.lease = self.current_lease(&task);
                if !task.lease_expired(now) {
                    continue;
                }
                let old = task.clone();
                let next = task.expire_lease(now)?;
                expired.push(id);
                saves.push(Save { task, old: Some(old) });
                saves.extend(next.map(|task| Save { task, old: None }));
            }
            self.apply(state, saves, Vec::new())?;
            Ok(expired)
        })
    }
}
