//! Merged commands: changes that reach the writer together (enqueues, claims,
//! finishes of completed tasks) share one command of several statements, with
//! as few distinct command texts as possible, since the driver prepares each
//! new text anew.

// The writer's types, helpers and imports, which this part works with.
use super::ops::{prepare_claim, prepare_finish, read_claim, read_finish, FINISH_COMPLETED};
use super::*;

/// The plan of a group whose changes can share commands: two or more
/// enqueues valid in themselves, claims and finishes of completed tasks,
/// nothing else.
///
/// The driver prepares a command anew for every new text, so the plan keeps
/// the texts few: the tasks of all the enqueues go into one insert, whose text
/// depends only on how many tasks there are, and the claims and finishes share
/// a second command, whose text depends only on their order.
pub(super) fn merged(group: &[Op]) -> Option<Vec<Single>> {
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
                // A unique key needs the lookup of its holder first.
                if these.iter().any(|task| task.unique_key.is_some()) {
                    return None;
                }
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
pub(super) async fn apply_merged(
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
            (Op::Enqueue(tasks, reply), Single::Enqueue(..) | Single::Joined, _) => {
                let stored = tasks
                    .iter()
                    .map(|task| Enqueued {
                        id: task.id,
                        duplicate: false,
                    })
                    .collect();
                answers.push((answer(reply, Ok(stored)), None))
            }
            (Op::Claim(request, reply), Single::Claim(_), Some(row)) => match read_claim(row, db) {
                Ok(Some(tasks)) => answers.push((answer(reply, Ok(tasks)), None)),
                // A queue with flow-control settings: its pick took nothing,
                // and the claim goes the limited way afterwards, alone.
                Ok(None) => blocked.push(Op::Claim(request, reply)),
                Err(error) => answers.push((answer(reply, Err(error)), None)),
            },
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

/// What a change made of one command binds: run alone, or beside others in
/// one command (see [`apply_merged`]).
pub(super) enum Single {
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
                CLAIM_COMMAND.get_or_init(|| anonymize(&super::ops::claim_sql())),
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
pub(super) fn anonymize(sql: &str) -> (String, Vec<usize>) {
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

/// Runs a change made of one command as the session's final write; its row.
pub(super) async fn run_single(s: &mut Session<'_>, single: &mut Single) -> Result<Option<SqliteRow>> {
    let (sql, binds) = single.command();
    let sql = s.final_sql(&sql);
    let mut rows = query_with(&sql, binds)
        .fetch_all(s.conn())
        .await
        .map_err(sql_error)?;
    s.final_ran();
    Ok((!rows.is_empty()).then(|| rows.swap_remove(0)))
}
