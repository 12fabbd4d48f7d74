//! The writer: one task per store that owns the only write connection of this
//! process and applies every change, grouping the changes that queue up while a
//! transaction runs into the next one (group commit).
//!
//! Every change reads first and writes with one command at its end, so a
//! change refused by its own rules leaves the shared transaction as it was for
//! the others; callers get their answers only after the commit.
//!
//! Each command is a round trip to the driver's connection thread, and on a
//! small machine those hops cost more than SQLite's own work. So the writer
//! opens and commits transactions itself (`BEGIN IMMEDIATE` rides in front of a
//! group's first command, `COMMIT` behind its last write), a claim and a finish
//! of completed tasks are one command each, claims and finishes that arrive
//! together share one command, the tasks of enqueues that arrive together go
//! into one insert, and reads return a whole batch as one JSON value.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures::FutureExt;
use omniq_core::queue::{split_duplicates, KeyHolders};
use omniq_core::{
    cancel_in_scope, CancelScope, ClaimRequest, Enqueued, Error, Finish, FinishOutcome, LeaseRef, LeaseToken,
    Outcome, Progress, RenewOutcome, Result, Task, TaskId, TaskStatus,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, Executor, Row, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::rows::{self, query_with, to_ns, Value, TASK_FROM, TASK_JSON};
use crate::sql_error;

mod flow;
mod merge;
mod ops;
mod schedules;
mod upkeep;

use merge::{apply_merged, merged};
pub use ops::setup;
use ops::{cancel, claim, enqueue, finish, progress, purge, renew, requeue_expired, retry, set_paused};

/// The most changes one transaction takes, so a flood of callers still gets
/// answers in bounded time.
const MAX_GROUP: usize = 512;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A change to apply, with the channel its answer goes back on.
pub enum Op {
    Enqueue(Vec<Task>, Reply<Vec<Enqueued>>),
    Claim(ClaimRequest, Reply<Vec<Task>>),
    Renew(Vec<LeaseRef>, Duration, OffsetDateTime, Reply<Vec<RenewOutcome>>),
    Progress(LeaseRef, Progress, Reply<bool>),
    Finish(Vec<Finish>, OffsetDateTime, Reply<Vec<FinishOutcome>>),
    Cancel(TaskId, OffsetDateTime, Reply<Vec<TaskId>>),
    Retry(TaskId, OffsetDateTime, Reply<()>),
    Purge(OffsetDateTime, Reply<u64>),
    Prune(omniq_core::TaskStatus, OffsetDateTime, usize, Reply<u64>),
    TakeTurn(String, OffsetDateTime, Duration, Reply<bool>),
    Beat(Box<omniq_core::WorkerBeat>, Reply<()>),
    RemoveWorker(String, Reply<bool>),
    RequeueExpired(OffsetDateTime, Reply<Vec<TaskId>>),
    SetPaused(String, bool, Reply<()>),
    SetQueueLimits(String, Box<omniq_core::QueueLimits>, Reply<()>),
    PutSchedule(
        Box<omniq_core::Schedule>,
        omniq_core::PutSchedule,
        Reply<omniq_core::PutAnswer>,
    ),
    RemoveSchedule(String, Reply<bool>),
    PauseSchedule(String, bool, Reply<bool>),
    FireSchedule(
        String,
        OffsetDateTime,
        OffsetDateTime,
        Box<Task>,
        Reply<Option<Enqueued>>,
    ),
    SkipSchedule(String, OffsetDateTime, OffsetDateTime, Reply<bool>),
    /// Test hook: the writer panics while applying this change.
    Panic(Reply<()>),
}

/// Sends an answer once the transaction's fate is known.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Answer {
    Box::new(move |commit_error| {
        let result = match (commit_error, result) {
            (Some(message), Ok(_)) => Err(Error::backend("sqlite", format!("commit failed: {message}"))),
            (_, result) => result,
        };
        // The caller may have stopped waiting; its loss.
        let _ = reply.send(result);
    })
}

/// Runs the writer until every sender is gone, then closes the connection.
/// `reconnect` opens a fresh write connection when a failed write left the old
/// one in a state it cannot be trusted in.
pub async fn run(
    mut conn: SqliteConnection,
    reconnect: SqliteConnectOptions,
    db: PathBuf,
    mut ops: mpsc::Receiver<Op>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while ops.recv_many(&mut group, MAX_GROUP).await > 0 {
        if let [Op::Claim(..) | Op::Finish(..)] = group.as_slice() {
            // A claim and the records of the tasks that freed its slots are
            // sent together from two tasks: one turn lets the other arrive.
            tokio::task::yield_now().await;
            while group.len() < MAX_GROUP {
                match ops.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
        }
        let applied = AssertUnwindSafe(async {
            match merged(&group) {
                Some(plan) => apply_merged(&mut conn, &db, &mut group, plan).await,
                None => apply_group(&mut conn, &db, group.drain(..)).await,
            }
        })
        .catch_unwind()
        .await;
        let (answers, broken) = match applied {
            Ok(applied) => applied,
            Err(panic) => {
                // The group's callers see their replies dropped and get an
                // error; its open transaction is undone, and the writer goes
                // on with the next group.
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(db = %db.display(), panic = %message, "the writer panicked applying a group; it was rolled back");
                group.clear();
                (Vec::new(), rollback(&mut conn).await)
            }
        };
        for (answer, error) in answers {
            answer(error.as_deref());
        }
        if broken {
            match reconnect.connect().await {
                Ok(mut fresh) => {
                    if let Err(error) = setup(&mut fresh).await {
                        tracing::error!(%error, "cannot prepare the new write connection");
                        continue;
                    }
                    tracing::warn!(db = %db.display(), "replaced the write connection after a failed rollback");
                    conn = fresh;
                }
                Err(error) => tracing::error!(%error, "cannot reopen the write connection; will try again"),
            }
        }
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the SQLite write connection failed");
    }
}

/// The write connection while one group runs. The group's `BEGIN IMMEDIATE`
/// rides in front of its first statement, and its `COMMIT` behind the final
/// write of its last change, so a group of one change that reads nothing (an
/// enqueue, a claim) is one round trip.
pub struct Session<'c> {
    conn: &'c mut SqliteConnection,
    /// No statement has run yet: the next one must open the transaction.
    owe_begin: bool,
    /// The change being applied is the group's last.
    last: bool,
    /// A final write carrying the `COMMIT` ran to its end.
    committed: bool,
    /// The position in the group of the change being applied.
    op: usize,
    /// How many changes at the group's start are committed already, because
    /// a change had to go on in a new transaction after a `COMMIT` rode on one
    /// of its commands (see [`Session::reopen`]).
    committed_before: usize,
}

impl<'c> Session<'c> {
    fn new(conn: &'c mut SqliteConnection) -> Self {
        Session {
            conn,
            owe_begin: true,
            last: false,
            committed: false,
            op: 0,
            committed_before: 0,
        }
    }

    /// Goes on in a new transaction when a command that carried the `COMMIT`
    /// turned out not to be the change's last: the changes before this one
    /// are committed, and this one starts afresh.
    pub fn reopen(&mut self) {
        if std::mem::take(&mut self.committed) {
            self.owe_begin = true;
            self.committed_before = self.op;
        }
    }

    /// The text to run for `sql`: the first statement of a transaction starts
    /// it, in the same round trip.
    pub fn sql(&mut self, sql: &str) -> String {
        if std::mem::take(&mut self.owe_begin) {
            format!("BEGIN IMMEDIATE; {sql}")
        } else {
            sql.to_string()
        }
    }

    /// Like [`Session::sql`], for the final write of a change: in the group's
    /// last change it also commits. Call [`Session::final_ran`] once it has run.
    pub fn final_sql(&mut self, sql: &str) -> String {
        let sql = self.sql(sql);
        if self.last {
            format!("{sql}; COMMIT")
        } else {
            sql
        }
    }

    /// Records that the command from [`Session::final_sql`] ran without error.
    pub fn final_ran(&mut self) {
        self.committed |= self.last;
    }

    /// The connection, to run what [`Session::sql`] returned on.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.conn
    }
}

/// Ends the open transaction, ignoring that SQLite may have ended it already
/// (it rolls back by itself after an I/O error or a full disk). Says whether
/// the connection must be replaced because even that failed.
async fn rollback(conn: &mut SqliteConnection) -> bool {
    match conn.execute("ROLLBACK").await {
        Ok(_) => false,
        Err(sqlx::Error::Database(db)) if db.message().contains("no transaction is active") => false,
        Err(error) => {
            tracing::warn!(%error, "rolling back an aborted group failed");
            true
        }
    }
}

/// Applies a group in one transaction; also says whether the connection must be
/// replaced.
async fn apply_group(
    conn: &mut SqliteConnection,
    db: &Path,
    mut group: std::vec::Drain<'_, Op>,
) -> (Vec<(Answer, Option<String>)>, bool) {
    let mut session = Session::new(conn);
    let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
    // An op refused by its own rules (unknown id, conflict) leaves the
    // transaction as it was for the others. A storage error (disk full, I/O, a
    // lock not granted) may have ended the transaction inside SQLite, so it
    // aborts the whole group.
    let mut aborted = None;
    let mut left = group.len();
    for (index, op) in group.by_ref().enumerate() {
        left -= 1;
        session.last = left == 0;
        session.op = index;
        let (answer, outcome) = apply(&mut session, db, op).await;
        answers.push(answer);
        if let Err(message) = outcome {
            aborted = Some(message);
            break;
        }
    }
    let began = !session.owe_begin;
    let committed = session.committed;
    let committed_before = session.committed_before;
    if let Some(message) = aborted {
        if committed {
            // The failure came after the `COMMIT` ran (reading back what was
            // written): every change is stored, and only the failed one says so.
            return (answers.into_iter().map(|a| (a, None)).collect(), false);
        }
        let broken = began && rollback(conn).await;
        let message = format!("the transaction was rolled back: {message}");
        let skipped = group.map(|op| fail(op, &message));
        let answers = answers
            .into_iter()
            .chain(skipped)
            .enumerate()
            .map(|(i, a)| (a, (i >= committed_before).then(|| message.clone())))
            .collect();
        return (answers, broken);
    }
    if !began || committed {
        // Committed with the last write, or nothing touched the database.
        return (answers.into_iter().map(|a| (a, None)).collect(), false);
    }
    match conn.execute("COMMIT").await {
        Ok(_) => (answers.into_iter().map(|a| (a, None)).collect(), false),
        Err(error) => {
            let message = error.to_string();
            let broken = rollback(conn).await;
            (
                answers.into_iter().map(|a| (a, Some(message.clone()))).collect(),
                broken,
            )
        }
    }
}

/// The answer for an op that could not be run at all.
fn fail(op: Op, message: &str) -> Answer {
    let error = || Error::backend("sqlite", format!("cannot start the change: {message}"));
    match op {
        Op::Enqueue(_, r) => answer(r, Err(error())),
        Op::Retry(_, _, r) | Op::SetPaused(_, _, r) | Op::SetQueueLimits(_, _, r) | Op::Panic(r) => {
            answer(r, Err(error()))
        }
        Op::Claim(_, r) => answer(r, Err(error())),
        Op::Renew(_, _, _, r) => answer(r, Err(error())),
        Op::Progress(_, _, r) => answer(r, Err(error())),
        Op::PutSchedule(_, _, r) => answer(r, Err(error())),
        Op::RemoveSchedule(_, r) | Op::PauseSchedule(_, _, r) => answer(r, Err(error())),
        Op::FireSchedule(_, _, _, _, r) => answer(r, Err(error())),
        Op::SkipSchedule(_, _, _, r) => answer(r, Err(error())),
        Op::Finish(_, _, r) => answer(r, Err(error())),
        Op::Cancel(_, _, r) | Op::RequeueExpired(_, r) => answer(r, Err(error())),
        Op::Purge(_, r) | Op::Prune(_, _, _, r) => answer(r, Err(error())),
        Op::TakeTurn(_, _, _, r) | Op::RemoveWorker(_, r) => answer(r, Err(error())),
        Op::Beat(_, r) => answer(r, Err(error())),
    }
}

/// Applies one op; returns its answer, and the message of a storage error that
/// must abort the group.
async fn apply(conn: &mut Session<'_>, db: &Path, op: Op) -> (Answer, std::result::Result<(), String>) {
    fn done<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T>,
    ) -> (Answer, std::result::Result<(), String>) {
        let outcome = match &result {
            Err(error @ (Error::Backend { .. } | Error::Io { .. } | Error::Corrupt { .. })) => {
                Err(error.to_string())
            }
            _ => Ok(()),
        };
        (answer(reply, result), outcome)
    }
    match op {
        Op::Enqueue(tasks, reply) => done(reply, enqueue(conn, tasks).await),
        Op::Claim(request, reply) => done(reply, claim(conn, db, request).await),
        Op::Renew(leases, lease_for, now, reply) => done(reply, renew(conn, &leases, lease_for, now).await),
        Op::Progress(lease, report, reply) => done(reply, progress(conn, lease, &report).await),
        Op::Finish(finishes, now, reply) => done(reply, finish(conn, db, finishes, now).await),
        Op::Cancel(id, now, reply) => done(reply, cancel(conn, db, id, now).await),
        Op::Retry(id, now, reply) => done(reply, retry(conn, db, id, now).await),
        Op::Purge(before, reply) => done(reply, purge(conn, before).await),
        Op::Prune(status, before, limit, reply) => {
            done(reply, upkeep::prune(conn, status, before, limit).await)
        }
        Op::TakeTurn(chore, now, every, reply) => {
            done(reply, upkeep::take_turn(conn, &chore, now, every).await)
        }
        Op::Beat(beat, reply) => done(reply, upkeep::beat(conn, &beat).await),
        Op::RemoveWorker(id, reply) => done(reply, upkeep::remove_worker(conn, &id).await),
        Op::RequeueExpired(now, reply) => done(reply, requeue_expired(conn, db, now).await),
        Op::SetPaused(queue, paused, reply) => done(reply, set_paused(conn, &queue, paused).await),
        Op::SetQueueLimits(queue, limits, reply) => {
            done(reply, flow::set_queue_limits(conn, &queue, &limits).await)
        }
        Op::PutSchedule(schedule, mode, reply) => done(reply, schedules::put(conn, *schedule, mode).await),
        Op::RemoveSchedule(name, reply) => done(reply, schedules::remove(conn, &name).await),
        Op::PauseSchedule(name, paused, reply) => done(reply, schedules::pause(conn, &name, paused).await),
        Op::FireSchedule(name, due, next, task, reply) => {
            done(reply, schedules::fire(conn, &name, due, next, *task).await)
        }
        Op::SkipSchedule(name, due, next, reply) => {
            done(reply, schedules::skip(conn, &name, due, next).await)
        }
        Op::Panic(_reply) => panic!("test hook: the writer panics while applying a change"),
    }
}
