//! The file store: its state in this process, opening (to write or only to
//! read), and the store lock every change runs under. Its parts live beside
//! it: records and entries (`records.rs`), the change protocol
//! (`journal.rs`), the operations (`ops.rs`) and the check (`check.rs`).
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

use omniq_core::queue::split_duplicates;
use omniq_core::{
    cancel_in_scope, CancelScope, ClaimRequest, Damaged, Durability, Enqueued, Error, Finish, FinishOutcome,
    Finished, Lease, LeaseRef, ListOrder, ListQuery, Progress, RenewOutcome, Result, StatusCounts, Task,
    TaskId, TaskStatus,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::layout::{
    entry_id, entry_key, entry_name, key_time, names, read_optional, record_id, time_key, Disk, Layout,
};
use crate::lock::StoreLock;
use crate::quarantine;
use view::View;

mod check;
mod flow;
mod journal;
mod keys;
mod ops;
mod records;
mod schedules;
mod upkeep;
mod view;
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
    /// Names in `pending/`, sorted as claims take them.
    view: View,
    view_read_at: Option<Instant>,
    /// When this process last looked for records without entries.
    entries_checked_at: Option<Instant>,
    /// The queue and concurrency key of tasks a limited claim looked at.
    facts: HashMap<TaskId, flow::Facts>,
    /// The keyed generation (`keyed.gen`) the view holds every change of.
    keyed_seen: Option<u64>,
    /// The view's pending tasks by queue and concurrency key, and the
    /// reading of the view it was built from.
    pending_keys: HashMap<String, HashMap<String, BTreeSet<TaskId>>>,
    pending_keys_of: Option<Instant>,
}

impl State {
    fn new(lock: StoreLock) -> Self {
        State {
            lock,
            view: View::default(),
            view_read_at: None,
            entries_checked_at: None,
            facts: HashMap::new(),
            keyed_seen: None,
            pending_keys: HashMap::new(),
            pending_keys_of: None,
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
        store.locked(|_| {
            store.disk.ensure_file(&store.layout().intent)?;
            store.stamp_format()
        })?;
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
        let store = Store {
            disk: Disk::new(layout, modes, durability),
            state: Mutex::new(State::new(lock)),
            read_only: true,
        };
        store.read_format()?;
        Ok(store)
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
}
