//! The `Storage` trait every backend implements, the request and answer types of
//! its methods, and `StorageExt`, the conveniences built on top of it.
//!
//! Every method that depends on the time takes `now` from the caller, so one
//! clock (the worker's, or a test's fake one) drives leases, etas and retries,
//! and every backend behaves the same under the conformance suite.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::flow::{QueueFlow, QueueLimits};
use crate::queue::{Enqueued, QueueStats};
use crate::schedule::{PutAnswer, PutSchedule, Schedule};
use crate::settings::Settings;
use crate::task::{LeaseToken, NewTask, Outcome, Progress, Task, TaskId, TaskResult, TaskStatus};
use crate::upkeep::WorkerBeat;

/// The most tasks one [`Storage::requeue_expired`] call hands back, so one
/// pass over a store with a flood of expired leases stays short; the next
/// pass takes the rest.
pub const REQUEUE_BATCH: usize = 1_000;

/// A request to claim due tasks; see [`Storage::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claiming worker, recorded in each lease.
    pub worker_id: String,
    /// The queue to claim from.
    pub queue: String,
    /// The most tasks to claim.
    pub limit: usize,
    /// How long the lease lasts unless renewed.
    pub lease_for: Duration,
    /// The current time: tasks with `eta <= now` are due.
    pub now: OffsetDateTime,
}

/// A worker's end of one claim; see [`Storage::finish`].
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    /// The task.
    pub id: TaskId,
    /// The token of the claim being ended.
    pub token: LeaseToken,
    /// What happened.
    pub outcome: Outcome,
}

/// What became of one [`Finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The outcome was recorded, and the task is now in `status` (see
    /// [`crate::task::Finished`]). For an interval task that completed or
    /// failed for good, `next` is the id of the occurrence enqueued in the
    /// same step.
    Applied {
        /// The status the outcome led to: `completed`, `failed`, or `pending`
        /// (a retry, or a task handed back).
        status: TaskStatus,
        /// The next occurrence of an interval task, if one was enqueued.
        next: Option<TaskId>,
    },
    /// The claim is no longer current (the lease expired and the task was
    /// requeued, or the task was cancelled, or it is unknown): nothing was written.
    LeaseLost,
}

/// A lease to renew; see [`Storage::renew`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRef {
    /// The task.
    pub id: TaskId,
    /// The token of the claim.
    pub token: LeaseToken,
}

/// What became of one lease renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease now lasts until this time.
    Renewed {
        /// The new end of the lease.
        expires_at: OffsetDateTime,
    },
    /// The claim is no longer current; the worker should stop the task.
    Lost,
}

/// The order of [`Storage::list`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// By id ascending: the order in which tasks were created.
    #[default]
    OldestFirst,
    /// By id descending.
    NewestFirst,
}

impl ListOrder {
    /// How a SQL backend pages in this order: the comparison that takes the
    /// ids after a page's last one, and the direction of `ORDER BY id`.
    pub fn keyset(self) -> (&'static str, &'static str) {
        match self {
            ListOrder::OldestFirst => (">", "ASC"),
            ListOrder::NewestFirst => ("<", "DESC"),
        }
    }
}

/// Which tasks [`Storage::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only tasks for this handler (their `func_path`, a typed job's
    /// [`NAME`](https://docs.rs/omniq/latest/omniq/trait.Job.html)).
    pub func_path: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Sorted this way.
    pub order: ListOrder,
    /// Only tasks after this id in the chosen order: pass the last id of one
    /// page to get the next.
    pub after: Option<TaskId>,
}

/// How many tasks are in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusCounts {
    /// Waiting tasks, due or not.
    pub pending: u64,
    /// Claimed tasks.
    pub running: u64,
    /// Successfully finished tasks.
    pub completed: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Cancelled tasks.
    pub cancelled: u64,
}

impl StatusCounts {
    /// The count for one status.
    pub fn get(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Pending => self.pending,
            TaskStatus::Running => self.running,
            TaskStatus::Completed => self.completed,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
        }
    }

    /// The count for one status, to change.
    pub fn get_mut(&mut self, status: TaskStatus) -> &mut u64 {
        match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Running => &mut self.running,
            TaskStatus::Completed => &mut self.completed,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// Adds one to the count of `status`.
    pub fn add(&mut self, status: TaskStatus) {
        *self.get_mut(status) += 1;
    }

    /// All tasks.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed + self.failed + self.cancelled
    }
}

/// A record a store holds but cannot read back as a task (damaged by hand, cut
/// short on a failing disk, written by a build that let through a value it
/// cannot read); see [`Storage::damaged`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    /// The task's id as stored (not always a valid id).
    pub id: String,
    /// What is wrong with the record.
    pub reason: String,
    /// Where it is: the record file, its place in quarantine, or the database.
    pub location: std::path::PathBuf,
}

/// What [`StorageExt::retry_failed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Failed tasks put back to pending.
    pub retried: u64,
    /// Failed tasks that could not be: a live task holds their unique key,
    /// or they moved on meanwhile.
    pub refused: u64,
}

/// Where tasks live: the smallest contract a backend must keep.
///
/// Every method is atomic with respect to every other caller, in this process and
/// in others sharing the store: a reader sees a task before or after a change,
/// never half of it. Batch methods are atomic per item at least; a backend may
/// make the whole batch atomic. Status moves follow
/// [`TaskStatus::can_move_to`], and state changes are those of the methods on
/// [`Task`], so every backend applies the same rules.
///
/// The trait is object-safe: programs hold an `Arc<dyn Storage>` chosen at run
/// time. Conveniences live in [`StorageExt`]. The conformance suite
/// (`omniq_core::conformance`, feature `conformance`) checks every promise made here.
#[async_trait]
pub trait Storage: Send + Sync + Debug {
    /// The backend's short name, e.g. `sqlite`.
    fn backend_name(&self) -> &'static str;

    /// Stores new `pending` task records (see [`NewTask::into_task`]), all or
    /// none, and answers for each, in order, the id it stored or, for a
    /// duplicate, the id of the live task holding its unique key.
    ///
    /// A record in any other status is refused with [`Error::Conflict`] (see
    /// [`crate::limits::check_pending`]): history goes through
    /// [`Storage::import`]. An id that is already stored, or given twice, is an
    /// [`Error::Conflict`] and nothing is stored.
    ///
    /// A pending record whose `unique_key` is held by a pending or running task
    /// (stored, or earlier in the same call) is a duplicate: it is not stored,
    /// and its answer is the holder's id with `duplicate: true` (see
    /// [`crate::queue::split_duplicates`]). The check and the store are one
    /// atomic step across every process sharing the store, so two enqueuers of
    /// one key store one task.
    async fn enqueue(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>>;

    /// Stores records as they are, all or none, with the answers of
    /// [`Storage::enqueue`]: how a migration brings over a store's history.
    /// Records may be `pending` or finished (`completed`, `failed`,
    /// `cancelled`, which hold no unique key); a `running` record is refused
    /// with [`Error::Conflict`], since its lease belongs to another store.
    /// Ids and keys follow the rules of [`Storage::enqueue`]. Unlike an
    /// enqueue, an import wakes no worker in other processes: a pool finds
    /// imported work at its next poll.
    async fn import(&self, tasks: Vec<Task>) -> Result<Vec<Enqueued>>;

    /// Claims up to `request.limit` due tasks (`pending` with `eta <= now`) of
    /// `request.queue`, unless that queue is paused: highest `priority` first,
    /// then oldest `eta`, then lowest id (creation order). Returns them in that
    /// order, `running`, each with one more attempt, `started_at = now` and a
    /// fresh [`crate::Lease`] for `request.worker_id` lasting until
    /// `now + request.lease_for`.
    ///
    /// Across every caller, in every process, a task is handed to one claimer
    /// only. Returns fewer tasks (or none) when fewer are due.
    ///
    /// A queue with flow-control settings ([`Storage::set_queue_limits`])
    /// is claimed from as [`QueueLimits::admit`] decides, in the same atomic
    /// step as the claim for every process sharing the store: the running
    /// tasks it counts are those under a lease that has not run out at
    /// `now`, a key's window holds the key's tasks in
    /// [`QueueLimits::window_statuses`] of the queue in id order, and the
    /// rate buckets it moves on are stored with the claim.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>>;

    /// Extends each lease to `now + lease_for` if its claim is still current
    /// (the task is `running` under that token, even past its expiry as long as
    /// nobody requeued it). Answers in the order of `leases`.
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<RenewOutcome>>;

    /// Records how far a running attempt has got ([`Task::set_progress`]),
    /// if `lease` is still its current claim: `true` when stored, `false`
    /// (and nothing written) when the claim is no longer current or the task
    /// is unknown. Values out of range ([`Progress::check`]) are an
    /// [`Error::InvalidConfig`]. The progress shows in the task's record
    /// until the task stops running.
    async fn set_progress(&self, lease: LeaseRef, progress: Progress) -> Result<bool>;

    /// Ends claims, applying each outcome with [`Task::finish`], which answers
    /// [`FinishOutcome::LeaseLost`] and writes nothing when the claim is no
    /// longer current. When an interval task completes or fails for good, its
    /// next occurrence is stored in the same atomic step. Answers in the order of
    /// `finishes`.
    async fn finish(&self, finishes: Vec<Finish>, now: OffsetDateTime) -> Result<Vec<FinishOutcome>>;

    /// The earliest `eta` among pending tasks of `queues` that are not paused,
    /// due or not; `None` when no such task is pending. An idle pool sleeps
    /// until then, so a task starts on time rather than at its next poll. A
    /// backend may answer from a view that lags other processes' enqueues by
    /// its own refresh period.
    async fn next_due(&self, queues: &[String]) -> Result<Option<OffsetDateTime>>;

    /// The whole record of one task, or [`Error::NotFound`].
    async fn get(&self, id: TaskId) -> Result<Task>;

    /// Tasks matching `query`, in its order, at most its limit.
    async fn list(&self, query: ListQuery) -> Result<Vec<Task>>;

    /// Cancels a task and, for an interval task, its whole series: every
    /// `pending` or `running` occurrence sharing its [`Task::series`] becomes
    /// `cancelled` (see [`Task::cancel`]), so the series stops whichever of its
    /// ids is given. Returns the ids cancelled. An unknown id is
    /// [`Error::NotFound`]; a task with nothing left to cancel is
    /// [`Error::Conflict`].
    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>>;

    /// Puts a `failed` task back to `pending` ([`Task::retry`]). Any other status
    /// is an [`Error::Conflict`], and so is a task whose unique key another
    /// pending or running task holds now; an unknown id is [`Error::NotFound`].
    async fn retry(&self, id: TaskId, now: OffsetDateTime) -> Result<()>;

    /// How many tasks are in each status.
    async fn counts(&self) -> Result<StatusCounts>;

    /// Pauses (`paused = true`) or resumes a queue, for every process sharing
    /// the store: a paused queue is claimed from by nobody; its pending tasks
    /// stay pending and its running ones finish. Pausing a paused queue, or
    /// resuming a running one, changes nothing. A name that breaks
    /// [`crate::queue::check_name`] is an [`Error::InvalidConfig`].
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// The names of the paused queues, sorted.
    async fn paused(&self) -> Result<Vec<String>>;

    /// Stores the flow-control settings of `queue` for every process sharing
    /// the store, replacing what it had; unlimited settings
    /// ([`QueueLimits::is_unlimited`]) remove them. Claims made after this
    /// returns follow them ([`Storage::claim`]). A name that breaks
    /// [`crate::queue::check_name`], or settings [`QueueLimits::check`]
    /// refuses, is an [`Error::InvalidConfig`].
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()>;

    /// Every queue with flow-control settings, sorted by name, with its
    /// running tasks whose lease has not run out at `now` and its rate
    /// bucket.
    async fn queue_flows(&self, now: OffsetDateTime) -> Result<Vec<QueueFlow>>;

    /// Every queue that holds a task or is paused, sorted by name, with its
    /// counts per status, whether it is paused, and its earliest pending eta.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>>;

    /// Stores `schedule` under its name, treating a schedule already stored
    /// under it as `mode` says ([`crate::schedule::decide_put`]), in one
    /// atomic step: a tick another process fires, or a pause it makes,
    /// between the read and the write is never undone. Answers what is
    /// stored now. A name or value out of range
    /// ([`crate::schedule::check_schedule`]) is an [`Error::InvalidConfig`].
    async fn put_schedule(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer>;

    /// Every schedule, sorted by name.
    async fn schedules(&self) -> Result<Vec<Schedule>>;

    /// Removes the schedule `name`; `false` if there was none. Tasks its
    /// ticks enqueued stay.
    async fn remove_schedule(&self, name: &str) -> Result<bool>;

    /// Pauses or resumes the schedule `name`, changing nothing else; `false`
    /// if there is none.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool>;

    /// Fires the tick `due` of schedule `name`, in one atomic step across
    /// every process sharing the store, if the schedule exists, is not
    /// paused, and its stored next tick is `due` ([`crate::schedule::may_fire`]):
    /// moves its next tick to `next`, records `due` as its last run, and
    /// enqueues `task` (pending, with the tick's unique key) as
    /// [`Storage::enqueue`] does, recording the task enqueued (or the live
    /// task holding the key) as its last. Answers that enqueue's answer, or
    /// `None` when the tick may not fire (another process fired it, or it
    /// was paused or removed): nothing is written then.
    async fn fire_schedule(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>>;

    /// Moves schedule `name` from its tick `due` on to `next` without a task
    /// (missed ticks skipped after downtime), under the same condition as
    /// [`Storage::fire_schedule`], atomically; `false` (nothing written) when
    /// that condition does not hold.
    async fn skip_schedule(&self, name: &str, due: OffsetDateTime, next: OffsetDateTime) -> Result<bool>;

    /// Deletes finished tasks (`completed`, `failed`, `cancelled`) whose
    /// `finished_at` is before `finished_before`, with their results. Returns how
    /// many were deleted. Pending and running tasks are never touched.
    async fn purge(&self, finished_before: OffsetDateTime) -> Result<u64>;

    /// Deletes at most `limit` tasks of the finished `status` whose
    /// `finished_at` is before `finished_before`, oldest first, with their
    /// results; returns how many. Pools call it for retention
    /// ([`crate::Retention`]) in batches of [`crate::upkeep::PRUNE_BATCH`], so
    /// each call is a short write that claims never wait long behind. Pending
    /// and running tasks are never touched; a later occurrence of an interval
    /// task is its own pending task, so pruning the earlier ones leaves the
    /// series running.
    async fn prune(&self, status: TaskStatus, finished_before: OffsetDateTime, limit: usize) -> Result<u64>;

    /// Takes this process's turn at the store-wide chore `chore` (such as
    /// [`crate::upkeep::RETENTION_CHORE`]): `true`, recording `now`, when no
    /// process took a turn after `now - every`; `false` otherwise. Atomic
    /// across processes and hosts, so of many pools on one store one does the
    /// chore at a time. The default, for a store that cannot coordinate,
    /// answers `true`: every pool does the chore, which must then be safe to
    /// do at once (pruning is).
    async fn take_turn(&self, chore: &str, now: OffsetDateTime, every: Duration) -> Result<bool> {
        let _ = (chore, now, every);
        Ok(true)
    }

    /// Writes a pool's heartbeat, replacing that worker's earlier one, and
    /// deletes the beats that expired before
    /// [`crate::upkeep::gone_before`]`(beat.last_seen)`.
    async fn beat(&self, beat: WorkerBeat) -> Result<()>;

    /// Every heartbeat the store holds, alive or recently expired, by worker
    /// id.
    async fn workers(&self) -> Result<Vec<WorkerBeat>>;

    /// Deletes a worker's heartbeat, as its pool shuts down; whether there
    /// was one.
    async fn remove_worker(&self, worker_id: &str) -> Result<bool>;

    /// Hands back `running` tasks whose lease expired at or before `now`
    /// ([`Task::expire_lease`]), at most [`REQUEUE_BATCH`] per call, earliest
    /// expiry first, storing the next occurrence of interval tasks that
    /// thereby failed for good. Returns the ids handed back. A task whose
    /// record cannot be read is failed for good with an `unreadable` error
    /// instead, so one damaged task never stops the recovery of the others.
    async fn requeue_expired(&self, now: OffsetDateTime) -> Result<Vec<TaskId>>;

    /// The store's own clock, for a store shared by several hosts whose clocks
    /// may disagree (PostgreSQL: the database server's). `None`, the
    /// default, means the store has no clock of its own: every process
    /// sharing it runs on one host, and the callers' clock is the store's.
    ///
    /// Every other method still takes `now` from its caller, so tests drive
    /// time; a worker pool measures how far its clock is from this one and
    /// passes the store's time (see `omniq_worker::StoreClock`).
    async fn store_time(&self) -> Result<Option<OffsetDateTime>> {
        Ok(None)
    }

    /// Wake-ups from other processes sharing the store: the value changes
    /// whenever, as far as the backend learned, tasks became due that a
    /// process of its own did not enqueue (PostgreSQL: `LISTEN/NOTIFY`). A
    /// pool waits on it beside its own process's signals and its poll
    /// timer; it is a hint, never the only way work is found, since a
    /// notice may be lost. `None`, the default: the backend sends none, and
    /// other processes' work is found by polling.
    fn wake_ups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The store itself, for reaching a backend's own API through an
    /// `Arc<dyn Storage>` (the umbrella crate finds a PostgreSQL store's
    /// schema this way for an enqueue inside the program's transaction).
    /// `None`, the default, for stores that offer nothing of their own.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Every record the store holds but cannot read back as a task, each of
    /// which [`Storage::list`] leaves out; empty for a sound store. It reads
    /// every record, so it costs a full scan: for checks and migrations, not
    /// for hot paths. The default, for backends that cannot hold such
    /// records (memory), answers none.
    async fn damaged(&self) -> Result<Vec<Damaged>> {
        Ok(Vec::new())
    }
}

/// Conveniences over [`Storage`], for every backend alike.
#[async_trait]
pub trait StorageExt: Storage {
    /// Enqueues one new task with `settings`' defaults; returns its id (for a
    /// duplicate, the live task's).
    async fn enqueue_one(&self, task: NewTask, settings: &Settings) -> Result<TaskId> {
        Ok(self.enqueue_many(vec![task], settings).await?[0])
    }

    /// Enqueues many new tasks in one call, all or none; returns their ids in
    /// order (for a duplicate, the live task's).
    async fn enqueue_many(&self, tasks: Vec<NewTask>, settings: &Settings) -> Result<Vec<TaskId>> {
        let now = self.now().await?;
        let tasks = tasks
            .into_iter()
            .map(|task| task.into_task(settings, now))
            .collect::<Result<Vec<_>>>()?;
        let answers = self.enqueue(tasks).await?;
        Ok(answers.into_iter().map(|answer| answer.id).collect())
    }

    /// The time by the store's clock ([`Storage::store_time`]) when it has
    /// one, else this host's: what one-off callers (the CLI, the dashboard,
    /// a migration) pass as `now`, so their etas and cutoffs agree with the
    /// workers'.
    async fn now(&self) -> Result<OffsetDateTime> {
        Ok(self.store_time().await?.unwrap_or_else(OffsetDateTime::now_utc))
    }

    /// Puts every failed task (of `queue`, or of every queue) back to
    /// pending, each at most once however long it takes: the failed tasks
    /// are walked in id order, so one that fails again meanwhile is not met
    /// again. A task whose unique key a live task holds, or that moved on
    /// meanwhile, is refused and counted, and the walk goes on.
    async fn retry_failed(&self, queue: Option<&str>, now: OffsetDateTime) -> Result<RetryReport> {
        let mut report = RetryReport::default();
        let mut after = None;
        loop {
            let failed = self
                .list(ListQuery {
                    status: Some(TaskStatus::Failed),
                    queue: queue.map(str::to_owned),
                    limit: Some(500),
                    after,
                    order: ListOrder::OldestFirst,
                    func_path: None,
                })
                .await?;
            let Some(last) = failed.last() else { break };
            after = Some(last.id);
            for task in failed {
                match self.retry(task.id, now).await {
                    Ok(()) => report.retried += 1,
                    Err(Error::Conflict { .. }) => report.refused += 1,
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(report)
    }

    /// The result record of one task, or [`Error::NotFound`].
    async fn get_result(&self, id: TaskId) -> Result<TaskResult> {
        Ok(self.get(id).await?.to_result())
    }

    /// Finishes one claim; `Ok(false)` when the claim was lost.
    async fn finish_one(&self, task: &Task, outcome: Outcome, now: OffsetDateTime) -> Result<bool> {
        let token = task
            .lease
            .as_ref()
            .map(|lease| lease.token)
            .ok_or_else(|| Error::conflict(task.id, "task holds no lease"))?;
        let answer = self
            .finish(
                vec![Finish {
                    id: task.id,
                    token,
                    outcome,
                }],
                now,
            )
            .await?;
        Ok(matches!(answer.first(), Some(FinishOutcome::Applied { .. })))
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}
