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
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures::FutureExt;
use omniq_core::{
    cancel_in_scope, CancelScope, ClaimRequest, Error, Finish, FinishOutcome, Finished, LeaseRef, LeaseToken,
    Outcome, RenewOutcome, Result, Task, TaskId, TaskStatus,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, Executor, Row, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::rows::{self, query_with, to_ns, Value, TASK_FROM, TASK_JSON};
use crate::sql_error;

/// The most changes one transaction takes, so a flood of callers still gets
/// answers in bounded time.
const MAX_GROUP: usize = 512;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A change to apply, with the channel its answer goes back on.
pub enum Op {
    Enqueue(Vec<Task>, Reply<()>),
    Claim(ClaimRequest, Reply<Vec<Task>>),
    Renew(Vec<LeaseRef>, Duration, OffsetDateTime, Reply<Vec<RenewOutcome>>),
    Finish(Vec<Finish>, OffsetDateTime, Reply<Vec<FinishOutcome>>),
    Cancel(TaskId, OffsetDateTime, Reply<Vec<TaskId>>),
    Retry(TaskId, OffsetDateTime, Reply<()>),
    Purge(OffsetDateTime, Reply<u64>),
    RequeueExpired(OffsetDateTime, Reply<Vec<TaskId>>),
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

/// The plan of a group whose changes can share commands: two or more
/// enqueues valid in themselves, claims and finishes of completed tasks,
/// nothing else.
///
/// The driver prepares a command anew for every new text, so the plan keeps
/// the texts few: the tasks of all the enqueues go into one insert, whose text
/// depends only on how many tasks there are, and the claims and finishes share
/// a second command, whose text depends only on their order.
fn merged(group: &[Op]) -> Option<Vec<Single>> {
    // Look at the kinds first, so a group that cannot be merged prepares
    // nothing it would drop.
    if group.len() < 2
        || !group
            .iter()
            .all(|op| matches!(op, Op::Claim(..) | Op::Finish(..) | Op::Enqueue(..)))
    {
        return None;
    }
    let mut tasks = Vec::new();
    let mut plan = Vec::with_capacity(group.len());
    for op in group {
        plan.push(match op {
            Op::Claim(request, _) => prepare_claim(request).ok().flatten()?,
            Op::Finish(finishes, now, _) => prepare_finish(finishes, *now).ok().flatten()?,
            Op::Enqueue(these, _) => {
                omniq_core::check_new_records(these).ok()?;
                tasks.extend(these);
                Single::Joined
            }
            _ => return None,
        });
    }
    // Enqueues of no task (the storage answers those itself) insert nothing.
    if let Some(first) = plan
        .iter_mut()
        .find(|single| matches!(single, Single::Joined))
        .filter(|_| !tasks.is_empty())
    {
        let (sql, values) = rows::insert_command(tasks.iter().copied()).ok()?;
        *first = Single::Enqueue(sql, values, tasks.len());
    }
    Some(plan)
}

/// Applies a group that [`merged`] planned: `BEGIN IMMEDIATE`, the insert of
/// every enqueued task, the claims' and finishes' statements, `COMMIT`, in one
/// round trip, or two when the group mixes enqueues with claims and finishes.
/// If a command fails the transaction is rolled back and the group goes the
/// change-by-change way of [`apply_group`], which gives each change its own
/// answer. A finish that met an interval task wrote nothing, and goes that way
/// afterwards, alone.
async fn apply_merged(
    conn: &mut SqliteConnection,
    db: &Path,
    group: &mut Vec<Op>,
    mut plan: Vec<Single>,
) -> (Vec<(Answer, Option<String>)>, bool) {
    let mut insert = None;
    let mut statements = Vec::with_capacity(plan.len());
    let mut binds = Vec::new();
    for single in &mut plan {
        let (sql, these) = single.command();
        match single {
            Single::Enqueue(_, _, tasks) => insert = Some((sql, these, *tasks)),
            Single::Joined => {}
            _ => {
                statements.push(sql);
                binds.extend(these);
            }
        }
    }
    // Claims and finishes answer with one row each; enqueues with none.
    let expected = statements.len();
    let mut begin = "BEGIN IMMEDIATE; ";
    let mut result = Ok(Vec::new());
    if let Some((sql, values, tasks)) = insert {
        let commit = if statements.is_empty() { "; COMMIT" } else { "" };
        result = query_with(&format!("{begin}{sql}{commit}"), values)
            .persistent(tasks <= rows::CACHED_UP_TO)
            .execute(&mut *conn)
            .await
            .map(|_| Vec::new());
        begin = "";
    }
    if result.is_ok() && !statements.is_empty() {
        // The usual pairs keep their prepared statements; a rare big group
        // would only crowd the driver's statement cache.
        result = query_with(&format!("{begin}{}; COMMIT", statements.join("; ")), binds)
            .persistent(statements.len() <= 4)
            .fetch_all(&mut *conn)
            .await;
    }
    let rows = match result {
        Ok(rows) if rows.len() == expected => rows,
        Ok(_) | Err(_) => {
            match result {
                Ok(rows) => tracing::error!(rows = rows.len(), "a merged command returned too few rows"),
                Err(error) => {
                    tracing::debug!(%error, "a merged command failed; applying its changes change by change")
                }
            }
            let broken = rollback(conn).await;
            let (answers, broken_too) = apply_group(conn, db, group.drain(..)).await;
            return (answers, broken || broken_too);
        }
    };
    let mut answers = Vec::with_capacity(group.len());
    let mut blocked = Vec::new();
    let mut rows = rows.iter();
    for (op, single) in group.drain(..).zip(&plan) {
        let row = match single.answers_with_a_row() {
            true => rows.next(),
            false => None,
        };
        match (op, single, row) {
            (Op::Enqueue(_, reply), Single::Enqueue(..) | Single::Joined, _) => {
                answers.push((answer(reply, Ok(())), None))
            }
            (Op::Claim(_, reply), Single::Claim(_), Some(row)) => {
                answers.push((answer(reply, read_claim(row, db)), None))
            }
            (Op::Finish(finishes, now, reply), Single::Finish(_, ids), Some(row)) => {
                match read_finish(row, ids) {
                    Ok(Some(outcomes)) => answers.push((answer(reply, Ok(outcomes)), None)),
                    Ok(None) => blocked.push(Op::Finish(finishes, now, reply)),
                    Err(error) => answers.push((answer(reply, Err(error)), None)),
                }
            }
            (op, _, _) => answers.push((fail(op, "the change does not match its plan"), None)),
        }
    }
    if blocked.is_empty() {
        return (answers, false);
    }
    let (rest, broken) = apply_group(conn, db, blocked.drain(..)).await;
    answers.extend(rest);
    (answers, broken)
}

/// The answer for an op that could not be run at all.
fn fail(op: Op, message: &str) -> Answer {
    let error = || Error::backend("sqlite", format!("cannot start the change: {message}"));
    match op {
        Op::Enqueue(_, r) | Op::Retry(_, _, r) | Op::Panic(r) => answer(r, Err(error())),
        Op::Claim(_, r) => answer(r, Err(error())),
        Op::Renew(_, _, _, r) => answer(r, Err(error())),
        Op::Finish(_, _, r) => answer(r, Err(error())),
        Op::Cancel(_, _, r) | Op::RequeueExpired(_, r) => answer(r, Err(error())),
        Op::Purge(_, r) => answer(r, Err(error())),
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
        Op::Finish(finishes, now, reply) => done(reply, finish(conn, db, finishes, now).await),
        Op::Cancel(id, now, reply) => done(reply, cancel(conn, db, id, now).await),
        Op::Retry(id, now, reply) => done(reply, retry(conn, db, id, now).await),
        Op::Purge(before, reply) => done(reply, purge(conn, before).await),
        Op::RequeueExpired(now, reply) => done(reply, requeue_expired(conn, db, now).await),
        Op::Panic(_reply) => panic!("test hook: the writer panics while applying a change"),
    }
}

/// Refuses what no enqueue may store: a running task, or one id twice in a call.
async fn enqueue(s: &mut Session<'_>, tasks: Vec<Task>) -> Result<()> {
    omniq_core::check_new_records(&tasks)?;
    rows::insert(s, &tasks).await
}

/// The claim, as one command: SQLite picks the due tasks, moves them from
/// `pending` to `running` with their leases, and returns them. It makes the
/// same change as `Task::claim` (one more attempt, started and updated now, a
/// lease per task with the token made here), which the shared conformance
/// suite checks against the other backends.
const CLAIM: &str = "DELETE FROM temp.claimed; \
    INSERT INTO temp.claimed (id) SELECT id FROM pending WHERE eta <= ?1 ORDER BY eta, id LIMIT ?2; \
    UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?1, updated_at = ?1 \
        WHERE id IN (SELECT id FROM temp.claimed); \
    DELETE FROM pending WHERE id IN (SELECT id FROM temp.claimed); \
    INSERT INTO running (id, worker_id, token, expires_at) \
        SELECT id, ?3, ?5 ->> (n - 1), ?4 FROM temp.claimed; \
    SELECT json_group_array(TASK_JSON) FROM temp.claimed c JOIN tasks t ON t.id = c.id \
        LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id";

/// Makes the write connection ready for [`claim`] and [`finish`]: the
/// per-connection tables that hold the ids one claim picked and one finish
/// completed.
pub async fn setup(conn: &mut SqliteConnection) -> Result<()> {
    // `journal_size_limit`: once a checkpoint has copied the WAL back into
    // the database, the WAL file is cut back to 64 MB, so a burst of writes (a
    // migration) does not leave it hundreds of megabytes long.
    conn.execute(
        "PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864; \
         CREATE TEMP TABLE IF NOT EXISTS claimed (n INTEGER PRIMARY KEY, id TEXT NOT NULL); \
         CREATE TEMP TABLE IF NOT EXISTS done (id TEXT PRIMARY KEY NOT NULL, value TEXT) WITHOUT ROWID",
    )
    .await
    .map_err(sql_error)?;
    Ok(())
}

/// What a change made of one command binds: run alone, or beside others in
/// one command (see [`apply_merged`]).
enum Single {
    /// The binds of [`CLAIM`], by number.
    Claim(Vec<Value>),
    /// The binds of [`FINISH_COMPLETED`], by number, and the ids it was given,
    /// in order.
    Finish(Vec<Value>, Vec<String>),
    /// The insert of the tasks of every enqueue in the group (the first
    /// enqueue's entry), its values in order, and how many tasks.
    Enqueue(String, Vec<Value>, usize),
    /// An enqueue whose tasks the group's first enqueue inserts.
    Joined,
}

impl Single {
    /// The command with plain `?` parameters (see [`anonymize`]), and the
    /// values to bind to them, in order (an enqueue's move out of it).
    fn command(&mut self) -> (Cow<'static, str>, Vec<Value>) {
        // Worked out once: this runs on every claim and finish.
        static CLAIM_COMMAND: OnceLock<(String, Vec<usize>)> = OnceLock::new();
        static FINISH_COMMAND: OnceLock<(String, Vec<usize>)> = OnceLock::new();
        let ((sql, order), binds) = match self {
            Single::Claim(binds) => (
                CLAIM_COMMAND.get_or_init(|| anonymize(&CLAIM.replace("TASK_JSON", TASK_JSON))),
                binds,
            ),
            Single::Finish(binds, _) => (FINISH_COMMAND.get_or_init(|| anonymize(FINISH_COMPLETED)), binds),
            Single::Enqueue(sql, values, _) => {
                return (Cow::Owned(std::mem::take(sql)), std::mem::take(values))
            }
            Single::Joined => return (Cow::Borrowed(""), Vec::new()),
        };
        (
            Cow::Borrowed(sql.as_str()),
            order.iter().map(|n| binds[n - 1].clone()).collect(),
        )
    }

    /// Whether its command returns a row (a claim's tasks, a finish's answers).
    fn answers_with_a_row(&self) -> bool {
        matches!(self, Single::Claim(_) | Single::Finish(..))
    }
}

/// `sql` with every `?N` parameter turned into a plain `?`, and the `N` of each
/// in order of appearance. In a command of several statements the driver binds
/// a statement's unnamed slots (the numbers it skips, say `?1` in a statement
/// that uses only `?2`) from a running count, and stops binding once that count
/// passes the values given, leaving later parameters NULL; plain `?`s are
/// bound strictly in order.
fn anonymize(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            order.push(n);
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    (out, order)
}

/// The binds of a claim; `None` when it asks for nothing.
fn prepare_claim(request: &ClaimRequest) -> Result<Option<Single>> {
    if request.limit == 0 {
        return Ok(None);
    }
    let limit = request.limit.min(100_000);
    let tokens: Vec<String> = (0..limit).map(|_| LeaseToken::new().to_string()).collect();
    Ok(Some(Single::Claim(vec![
        Value::Int(to_ns(request.now)?),
        Value::Int(limit as i64),
        Value::Text(request.worker_id.clone()),
        Value::Int(to_ns(omniq_core::later(request.now, request.lease_for))?),
        Value::Text(serde_json::to_string(&tokens)?),
    ])))
}

/// The claimed tasks in a claim's row, in claim order.
fn read_claim(row: &SqliteRow, db: &Path) -> Result<Vec<Task>> {
    let json: Option<String> = row.try_get(0).map_err(sql_error)?;
    // A row that cannot be read is claimed all the same; no worker runs it,
    // and the lease pass fails it once its lease runs out.
    let (mut tasks, unreadable) = rows::split_rows(json.as_deref(), db)?;
    rows::report_unreadable(&unreadable, db, "claim");
    tasks.sort_by_key(|task| (task.eta, task.id));
    Ok(tasks)
}

/// Runs a change made of one command as the session's final write; its row.
async fn run_single(s: &mut Session<'_>, single: &mut Single) -> Result<Option<SqliteRow>> {
    let (sql, binds) = single.command();
    let sql = s.final_sql(&sql);
    let mut rows = query_with(&sql, binds)
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    Ok((!rows.is_empty()).then(|| rows.swap_remove(0)))
}

async fn claim(s: &mut Session<'_>, db: &Path, request: ClaimRequest) -> Result<Vec<Task>> {
    let Some(mut single) = prepare_claim(&request)? else {
        return Ok(Vec::new());
    };
    match run_single(s, &mut single).await?.as_ref() {
        Some(row) => read_claim(row, db),
        None => Ok(Vec::new()),
    }
}

async fn renew(
    s: &mut Session<'_>,
    leases: &[LeaseRef],
    lease_for: Duration,
    now: OffsetDateTime,
) -> Result<Vec<RenewOutcome>> {
    let expires_at = omniq_core::later(now, lease_for);
    let pairs: Vec<(String, String)> = leases
        .iter()
        .map(|lease| (lease.id.to_string(), lease.token.to_string()))
        .collect();
    // The running row exists exactly while the task runs under that token.
    let sql = s.sql(
        "UPDATE running SET expires_at = ?1 \
         WHERE (id, token) IN (SELECT value->>0, value->>1 FROM json_each(?2)) RETURNING id, token",
    );
    let renewed: Vec<(String, String)> = sqlx::query_as(&sql)
        .bind(to_ns(expires_at)?)
        .bind(serde_json::to_string(&pairs)?)
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(pairs
        .iter()
        .map(|pair| {
            if renewed.contains(pair) {
                RenewOutcome::Renewed { expires_at }
            } else {
                RenewOutcome::Lost
            }
        })
        .collect())
}

/// The common finish, as one command: tasks that completed, none of them an
/// interval task (whose next occurrence needs `Task::finish`). `CROSS JOIN`
/// keeps SQLite from scanning a table once per given task. It makes the
/// same change as `Task::finish` with `Outcome::Complete`, for each task still
/// running under the given token; if any task of the batch is a running
/// interval task, it changes nothing and says so, and the general path runs.
const FINISH_COMPLETED: &str = "DELETE FROM temp.done; \
    INSERT INTO temp.done (id, value) \
        SELECT j.value->>0, j.value->>2 FROM json_each(?1) j \
        CROSS JOIN running rn ON rn.id = j.value->>0 AND rn.token = j.value->>1 \
        CROSS JOIN tasks t ON t.id = rn.id AND t.status = 'running' \
        WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) k CROSS JOIN tasks u ON u.id = k.value->>0 \
                          WHERE u.interval_ns IS NOT NULL AND u.status = 'running'); \
    UPDATE tasks SET status = 'completed', updated_at = ?2, finished_at = ?2 \
        WHERE id IN (SELECT id FROM temp.done); \
    DELETE FROM running WHERE id IN (SELECT id FROM temp.done); \
    INSERT INTO completed (id, status, finished_at) SELECT id, 'completed', ?2 FROM temp.done; \
    REPLACE INTO results (id, value, error) SELECT id, value, NULL FROM temp.done; \
    SELECT (SELECT json_group_array(id) FROM temp.done), \
        EXISTS (SELECT 1 FROM json_each(?1) k CROSS JOIN tasks u ON u.id = k.value->>0 \
                WHERE u.interval_ns IS NOT NULL AND u.status = 'running')";

/// The binds of a finish that [`FINISH_COMPLETED`] can do; `None` when the
/// batch has other outcomes or an id twice, and must take the general path.
fn prepare_finish(finishes: &[Finish], now: OffsetDateTime) -> Result<Option<Single>> {
    let mut seen = std::collections::HashSet::with_capacity(finishes.len());
    let mut rows = Vec::with_capacity(finishes.len());
    for finish in finishes {
        // A result too deep to read back is turned into a failure by `Task::finish`.
        let Outcome::Complete { result } = &finish.outcome else {
            return Ok(None);
        };
        if !finish.outcome.result_fits() {
            return Ok(None);
        }
        if !seen.insert(finish.id) {
            return Ok(None);
        }
        rows.push((
            finish.id.to_string(),
            finish.token.to_string(),
            serde_json::to_string(result)?,
        ));
    }
    let binds = vec![
        Value::Text(serde_json::to_string(&rows)?),
        Value::Int(to_ns(now)?),
    ];
    Ok(Some(Single::Finish(
        binds,
        rows.into_iter().map(|(id, _, _)| id).collect(),
    )))
}

/// The answers in a finish's row; `None` when it was blocked by an interval
/// task and wrote nothing.
fn read_finish(row: &SqliteRow, ids: &[String]) -> Result<Option<Vec<FinishOutcome>>> {
    let done: Option<String> = row.try_get(0).map_err(sql_error)?;
    let blocked: bool = row.try_get(1).map_err(sql_error)?;
    if blocked {
        return Ok(None);
    }
    let done: std::collections::HashSet<String> = serde_json::from_str(done.as_deref().unwrap_or("[]"))?;
    Ok(Some(
        ids.iter()
            .map(|id| match done.contains(id) {
                true => FinishOutcome::Applied {
                    status: TaskStatus::Completed,
                    next: None,
                },
                false => FinishOutcome::LeaseLost,
            })
            .collect(),
    ))
}

/// Finishes a batch of completed tasks with [`FINISH_COMPLETED`]; `None` when
/// it must take the general path.
async fn finish_completed(
    s: &mut Session<'_>,
    finishes: &[Finish],
    now: OffsetDateTime,
) -> Result<Option<Vec<FinishOutcome>>> {
    let Some(mut single) = prepare_finish(finishes, now)? else {
        return Ok(None);
    };
    let row = run_single(s, &mut single).await?;
    let Single::Finish(_, ids) = &single else {
        unreachable!("prepare_finish makes a finish")
    };
    let answers = match row.as_ref() {
        Some(row) => read_finish(row, ids)?,
        None => None,
    };
    if answers.is_none() {
        // Nothing was written; the `COMMIT`, if it rode along, only closed
        // the changes before this one.
        s.reopen();
    }
    Ok(answers)
}

async fn finish(
    s: &mut Session<'_>,
    db: &Path,
    finishes: Vec<Finish>,
    now: OffsetDateTime,
) -> Result<Vec<FinishOutcome>> {
    if let Some(answers) = finish_completed(s, &finishes, now).await? {
        return Ok(answers);
    }
    let ids: Vec<TaskId> = finishes.iter().map(|f| f.id).collect();
    // A task whose row cannot be read answers `LeaseLost`, and the lease pass
    // fails it; the others of the batch finish.
    let (tasks, unreadable) = rows::load_split(s, &ids, db).await?;
    rows::report_unreadable(&unreadable, db, "finish");
    let mut tasks: HashMap<TaskId, Task> = tasks.into_iter().map(|task| (task.id, task)).collect();
    let mut changed = HashMap::new();
    let mut created = Vec::new();
    let mut answers = Vec::with_capacity(finishes.len());
    for finish in finishes {
        let Some(task) = tasks.get_mut(&finish.id) else {
            answers.push(FinishOutcome::LeaseLost);
            continue;
        };
        match task.finish(finish.token, finish.outcome, now)? {
            Finished::LeaseLost => answers.push(FinishOutcome::LeaseLost),
            Finished::Applied { status, next } => {
                changed.insert(task.id, task.clone());
                answers.push(FinishOutcome::Applied {
                    status,
                    next: next.as_ref().map(|n| n.id),
                });
                created.extend(next);
            }
        }
    }
    let mut writes: Vec<Task> = changed.into_values().collect();
    writes.extend(created);
    rows::save(s, &writes).await?;
    Ok(answers)
}

async fn load_one(s: &mut Session<'_>, db: &Path, id: TaskId) -> Result<Task> {
    rows::load(s, &[id], db)
        .await?
        .pop()
        .ok_or_else(|| Error::not_found(id))
}

async fn cancel(s: &mut Session<'_>, db: &Path, id: TaskId, now: OffsetDateTime) -> Result<Vec<TaskId>> {
    let target = rows::load(s, &[id], db).await?.pop();
    let scope = match CancelScope::of(id, target.as_ref()) {
        CancelScope::Task(_) => target.iter().cloned().collect(),
        CancelScope::Series(series) => {
            let sql = s.sql(&format!(
                "SELECT json_group_array({TASK_JSON}) {TASK_FROM} \
                 WHERE t.series = ?1 AND t.status IN ('pending', 'running')"
            ));
            rows::fetch(s.conn(), sqlx::query(&sql).bind(series.to_string()), db).await?
        }
    };
    let cancelled = cancel_in_scope(id, target.as_ref(), scope, now)?;
    rows::save(s, &cancelled).await?;
    Ok(cancelled.iter().map(|t| t.id).collect())
}

async fn retry(s: &mut Session<'_>, db: &Path, id: TaskId, now: OffsetDateTime) -> Result<()> {
    let mut task = load_one(s, db, id).await?;
    task.retry(now)?;
    rows::save(s, &[task]).await
}

async fn purge(s: &mut Session<'_>, before: OffsetDateTime) -> Result<u64> {
    let before = to_ns(before)?;
    let sql = s.sql("SELECT count(*) FROM completed WHERE finished_at < ?1");
    let count: i64 = sqlx::query_scalar(&sql)
        .bind(before)
        .fetch_one(s.conn())
        .await
        .map_err(sql_error)?;
    sqlx::query("DELETE FROM task_rows WHERE id IN (SELECT id FROM completed WHERE finished_at < ?1)")
        .bind(before)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(count as u64)
}

async fn requeue_expired(s: &mut Session<'_>, db: &Path, now: OffsetDateTime) -> Result<Vec<TaskId>> {
    let sql = s.sql(&format!(
        "SELECT json_group_array({TASK_JSON}) {TASK_FROM} \
         WHERE t.id IN (SELECT id FROM running WHERE expires_at <= ?1 ORDER BY expires_at LIMIT {})",
        omniq_core::storage::REQUEUE_BATCH
    ));
    let (mut tasks, unreadable) =
        rows::fetch_split(s.conn(), sqlx::query(&sql).bind(to_ns(now)?), db).await?;
    if !unreadable.is_empty() {
        fail_unreadable(s, &unreadable, now, tasks.is_empty()).await?;
    }
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for task in &mut tasks {
        created.extend(task.expire_lease(now)?);
    }
    let expired = tasks.iter().map(|t| t.id).collect();
    tasks.extend(created);
    rows::save(s, &tasks).await?;
    Ok(expired)
}

/// Fails, for good, running tasks whose rows cannot be read, with an
/// `unreadable` error saying why, so the lease pass goes on for the others
/// and the tasks are not stranded as `running`. Their stored arguments stay
/// for a person to inspect. `last` says whether this is the change's final write.
async fn fail_unreadable(
    s: &mut Session<'_>,
    unreadable: &[rows::Unreadable],
    now: OffsetDateTime,
    last: bool,
) -> Result<()> {
    let rows: Vec<(&str, &str)> = unreadable
        .iter()
        .map(|u| (u.id.as_str(), u.reason.as_str()))
        .collect();
    tracing::error!(
        tasks = ?rows,
        "failing running tasks whose stored rows cannot be read"
    );
    const SQL: &str = "UPDATE tasks SET status = 'failed', updated_at = ?2, finished_at = ?2 \
            WHERE status = 'running' AND id IN (SELECT value->>0 FROM json_each(?1)); \
        REPLACE INTO results (id, value, error) \
            SELECT t.id, NULL, json_object('type', 'unreadable', 'message', j.value->>1, \
                                           'attempt', t.attempts, 'retryable', json('false')) \
            FROM json_each(?1) j JOIN tasks t ON t.id = j.value->>0 \
            WHERE t.status = 'failed' AND t.finished_at = ?2; \
        DELETE FROM running WHERE id IN (SELECT value->>0 FROM json_each(?1)); \
        REPLACE INTO completed (id, status, finished_at) \
            SELECT id, 'failed', ?2 FROM tasks \
            WHERE id IN (SELECT value->>0 FROM json_each(?1)) AND status = 'failed'";
    let sql = match last {
        true => s.final_sql(SQL),
        false => s.sql(SQL),
    };
    sqlx::query(&sql)
        .bind(serde_json::to_string(&rows)?)
        .bind(to_ns(now)?)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    if last {
        s.final_ran();
    }
    Ok(())
}
