//! OmniQ's file backend: every task a human-readable JSON file in one folder,
//! crash-safe, and shareable between processes on one machine.
//!
//! ```no_run
//! use omniq_core::{Durability, NewTask, Settings, StorageExt};
//! use omniq_file::FileStorage;
//!
//! # async fn demo() -> omniq_core::Result<()> {
//! let store = FileStorage::open_path("./omniq_data", Durability::Normal).await?;
//! let id = store.enqueue_one(NewTask::new("report.build"), &Settings::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The layout (see `docs/file-backend.md`): `tasks/task-<id>.json` records,
//! entries in `pending/`, `running/` (holding the lease), `completed/`,
//! `failed/` and `cancelled/`, plus `series/`, `tmp/`, `quarantine/`, a `lock`
//! file and `intent.json`, the journal of the change being applied (empty
//! between changes).

mod layout;
mod lock;
mod quarantine;
mod safe;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use omniq_core::{
    async_trait, ClaimRequest, Damaged, Durability, Enqueued, Error, Finish, FinishOutcome, LeaseRef,
    ListQuery, Progress, PutAnswer, PutSchedule, QueueStats, RenewOutcome, Result, Schedule, Serializer,
    Settings, StatusCounts, Storage, Task, TaskId, TaskStatus, WorkerBeat,
};
use time::OffsetDateTime;

pub use crate::quarantine::Quarantined;
pub use crate::store::CheckReport;
use crate::store::Store;

/// A [`Storage`] in a folder of JSON files.
///
/// Cloning is cheap and shares the store. Every operation runs on tokio's
/// blocking threads, one hop per call, never on the async runtime's threads.
#[derive(Clone, Debug)]
pub struct FileStorage {
    store: Arc<Store>,
}

impl FileStorage {
    /// Opens the store in `settings.base_dir` with their durability.
    pub async fn open(settings: &Settings) -> Result<Self> {
        if settings.serializer != Serializer::Json {
            return Err(Error::invalid_config(
                "OMNIQ_SERIALIZER",
                "the file backend writes human-readable JSON records; msgpack is not supported by it, use json",
            ));
        }
        Self::open_with(&settings.base_dir, settings.durability, settings.lock_timeout).await
    }

    /// Opens (creating if missing) the store in the folder `base`, finishing any
    /// change that a process which died midway left behind.
    pub async fn open_path(base: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with(base, durability, omniq_core::settings::DEFAULT_LOCK_TIMEOUT).await
    }

    /// Like [`FileStorage::open_path`], waiting at most `lock_timeout` (here
    /// and in every later operation) for another process holding the store
    /// lock, then failing with an error that names the lock file and, where
    /// the system tells, the holder's pid.
    pub async fn open_with(
        base: impl AsRef<Path>,
        durability: Durability,
        lock_timeout: Duration,
    ) -> Result<Self> {
        let base = base.as_ref().to_path_buf();
        let store = blocking(move || Store::open(&base, durability, lock_timeout)).await?;
        Ok(FileStorage {
            store: Arc::new(store),
        })
    }

    /// Opens the existing store in `base` only to read it, as a migration's
    /// source or a read on a read-only mount is: nothing in the folder is
    /// created, changed or moved (an unreadable record is reported, not
    /// quarantined), and every change is refused with
    /// [`Error::Unsupported`].
    pub async fn open_read_only(base: impl AsRef<Path>, lock_timeout: Duration) -> Result<Self> {
        let base = base.as_ref().to_path_buf();
        let store = blocking(move || Store::open_read_only(&base, Durability::Normal, lock_timeout)).await?;
        Ok(FileStorage {
            store: Arc::new(store),
        })
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.store.layout().base
    }

    /// How many times this store has flushed a file or folder to disk (only
    /// `Durability::Full` does).
    pub fn fsync_count(&self) -> u64 {
        self.store.disk().fsyncs()
    }

    /// Checks the whole folder: every record must be valid JSON and have
    /// exactly one entry, in the folder of its status. Corrupt records are moved
    /// to `quarantine/`; with `repair`, entries that are missing, misplaced or
    /// without a record are fixed as well.
    ///
    /// On a store opened read-only, a check without `repair` moves nothing:
    /// it reports unreadable records where they are.
    pub async fn check(&self, repair: bool) -> Result<CheckReport> {
        if repair {
            self.writable()?;
        }
        self.run(move |store| store.check(repair)).await
    }

    /// Test hook: the `n`-th file-system step from now fails as if the process
    /// died just before it, leaving the folder as a crash would.
    #[doc(hidden)]
    pub fn crash_before_step(&self, n: u64) {
        self.store.disk().crash_before_step(n);
    }

    /// Test hook: the file-system steps taken since the last `crash_before_step`.
    #[doc(hidden)]
    pub fn steps_taken(&self) -> u64 {
        self.store.disk().steps()
    }

    /// Refuses a change when the store was opened read-only.
    fn writable(&self) -> Result<()> {
        match self.store.is_read_only() {
            true => Err(Error::Unsupported(format!(
                "the file store at {} was opened read-only",
                self.path().display()
            ))),
            false => Ok(()),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        blocking(move || f(&store)).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend("file", format!("a file-system task failed: {e}")))?
}

#[async_trait]
impl Storage for FileStorage {
    fn backend_name(&self) -> &'static str {
        "file"
    }

    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.import(tasks).await
    }

    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.writable()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |store| store.enqueue(tasks)).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>> {
        self.writable()?;
        self.run(move |store| store.claim(request)).await
    }

    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        self.writable()?;
        self.run(move |store| store.put_schedule(schedule, mode)).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.run(|store| store.schedules()).await
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.writable()?;
        let name = name.to_owned();
        self.run(move |store| store.remove_schedule(&name)).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.writable()?;
        let name = name.to_owned();
        self.run(move |store| store.set_schedule_paused(&name, paused))
            .await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        self.writable()?;
        let name = name.to_owned();
        self.run(move |store| store.fire_schedule(&name, due, next, task))
            .await
    }

    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool> {
        self.writable()?;
        let name = name.to_owned();
        self.run(move |store| store.skip_schedule(&name, due, next)).await
    }

    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool> {
        self.writable()?;
        self.run(move |store| store.set_progress(lease, progress)).await
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>> {
        self.writable()?;
        let leases = leases.to_vec();
        self.run(move |store| store.renew(&leases, lease_for, now)).await
    }

    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>> {
        self.writable()?;
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |store| store.finish(finishes, now)).await
    }

    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>> {
        let queues = queues.to_vec();
        self.run(move |store| store.next_due(&queues)).await
    }

    async fn get(&self, id: TaskId) -> Result<Task> {
        self.run(move |store| store.get(id)).await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Task>> {
        self.run(move |store| store.list(query)).await
    }

    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.writable()?;
        self.run(move |store| store.cancel(id, now)).await
    }

    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()> {
        self.writable()?;
        self.run(move |store| store.retry(id, now)).await
    }

    async fn counts(&self) -> Result<StatusCounts> {
        self.run(|store| store.counts()).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.writable()?;
        let queue = queue.to_owned();
        self.run(move |store| store.set_paused(&queue, paused)).await
    }

    async fn paused(&self) -> Result<Vec<String>> {
        self.run(|store| store.paused()).await
    }

    async fn set_queue_limits(&self, queue: &str, limits: omniq_core::QueueLimits) -> Result<()> {
        self.writable()?;
        let queue = queue.to_owned();
        self.run(move |store| store.set_queue_limits(&queue, limits))
            .await
    }

    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<omniq_core::QueueFlow>> {
        self.run(move |store| store.queue_flows(now)).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.run(|store| store.queue_stats()).await
    }

    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64> {
        self.writable()?;
        self.run(move |store| store.purge(finished_before)).await
    }

    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64> {
        self.writable()?;
        self.run(move |store| store.prune(status, finished_before, limit))
            .await
    }

    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: std::time::Duration) -> Result<bool> {
        self.writable()?;
        let chore = chore.to_owned();
        self.run(move |store| store.take_turn(&chore, now, every)).await
    }

    async fn beat(&self, beat: WorkerBeat) -> Result<()> {
        self.writable()?;
        self.run(move |store| store.beat(beat)).await
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>> {
        self.run(|store| store.workers()).await
    }

    async fn remove_worker(&self, worker_id: &str) -> Result<bool> {
        self.writable()?;
        let id = worker_id.to_owned();
        self.run(move |store| store.remove_worker(&id)).await
    }

    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>> {
        self.writable()?;
        self.run(move |store| store.requeue_expired(now)).await
    }

    async fn damaged(&self) -> Result<Vec<Damaged>> {
        self.run(|store| store.damaged()).await
    }
}
