//! Finishing claims: the one-statement path for the common case, and the
//! transaction that handles every other.
//!
//! The store keeps the tasks this process claimed, as claimed. A finish that
//! ends one of them for good (completed, or failed with no next occurrence)
//! is applied to that copy with `Task::finish`, and the result written by one
//! `UPDATE` fenced in SQL by the row still running under the claim's token.
//! Between a claim and its finish only a renewal (the lease's end, which a
//! final status clears) may change the row without ending the claim, so the
//! copy gives the record the transaction would. Whatever the fence turns away
//! (a lost lease), and every retry, hand-back or interval task, goes through
//! the transaction that reads the row first.

use std::collections::HashMap;
use std::sync::Mutex;

use omniq_core::{Finish, FinishOutcome, Finished, Result, Task, TaskId, TaskStatus};
use time::OffsetDateTime;

use crate::rows::{self, to_ns, Fail};
use crate::{wake, PostgresStorage, ATTEMPTS};

/// The most claimed tasks kept for their finish; past it the copies are
/// dropped (their finishes then take the transaction), so claims whose
/// finish never comes (a lost lease) cannot grow it without end.
const KEPT: usize = 100_000;

/// The tasks this process claimed, as claimed, by id.
#[derive(Debug, Default)]
pub(crate) struct Claimed(Mutex<HashMap<TaskId, Task>>);

impl Claimed {
    /// Keeps copies of `tasks`, just claimed.
    pub(crate) fn keep(&self, tasks: &[Task]) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() + tasks.len() > KEPT {
            kept.clear();
        }
        kept.extend(tasks.iter().map(|t| (t.id, t.clone())));
    }

    /// Takes the copy of `id`, if one is kept.
    fn take(&self, id: TaskId) -> Option<Task> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }
}

impl PostgresStorage {
    /// Ends claims: the common ones with one statement, the rest in one
    /// transaction; answers in the order of `finishes`.
    pub(crate) async fn finish_claims(
        &self,
        finishes: Vec<Finish>,
        now: OffsetDateTime,
    ) -> Result<Vec<FinishOutcome>> {
        let mut answers: Vec<Option<FinishOutcome>> = vec![None; finishes.len()];
        // (index, token, record after the finish) of those that may go the short way.
        let mut quick = Vec::new();
        for (index, finish) in finishes.iter().enumerate() {
            let Some(mut task) = self.claimed.take(finish.id) else {
                continue;
            };
            if task.interval.is_some() {
                continue;
            }
            if let Ok(Finished::Applied { status, next: None }) =
                task.finish(finish.token, finish.outcome.clone(), now)
            {
                if matches!(status, TaskStatus::Completed | TaskStatus::Failed) {
                    quick.push((index, status, task));
                }
            }
        }
        if !quick.is_empty() {
            let tokens: Vec<String> = quick
                .iter()
                .map(|(index, _, _)| finishes[*index].token.0.to_string())
                .collect();
            let tasks: Vec<Task> = quick.iter().map(|(_, _, task)| task.clone()).collect();
            let written = self.write_fenced(&tasks, &tokens).await?;
            for (index, status, task) in quick {
                if written.contains(&task.id.to_string()) {
                    answers[index] = Some(FinishOutcome::Applied { status, next: None });
                }
            }
        }
        let rest: Vec<(usize, Finish)> = finishes
            .into_iter()
            .enumerate()
            .filter(|(index, _)| answers[*index].is_none())
            .collect();
        if !rest.is_empty() {
            let (indexes, rest): (Vec<usize>, Vec<Finish>) = rest.into_iter().unzip();
            let outcomes = self.finish_in_transaction(&rest, now).await?;
            for (index, outcome) in indexes.into_iter().zip(outcomes) {
                answers[index] = Some(outcome);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(FinishOutcome::LeaseLost))
            .collect())
    }

    /// Writes finished records over rows still running under the given
    /// tokens (the claim's, or the record's after a renewal), in one
    /// statement; answers the ids written.
    async fn write_fenced(&self, tasks: &[Task], tokens: &[String]) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(tasks.len());
        let mut statuses = Vec::with_capacity(tasks.len());
        let mut finished = Vec::with_capacity(tasks.len());
        let mut records = Vec::with_capacity(tasks.len());
        for task in tasks {
            ids.push(task.id.to_string());
            statuses.push(task.status.as_str().to_owned());
            finished.push(task.finished_at.map(to_ns).transpose()?);
            records.push(serde_json::to_string(task)?);
        }
        let sql = self.q(
            "UPDATE {s}.tasks t SET status = u.st, finished_at = u.f, lease_expires = NULL, \
                 claim = NULL, record = u.r::json \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[]) AS u(i, tok, st, f, r) \
             WHERE t.id = u.i AND t.status = 'running' \
             AND COALESCE(t.claim->>'token', t.record->'lease'->>'token') = u.tok \
             RETURNING t.id",
        );
        // The finishes not yet known to be written, by index.
        let mut left: Vec<usize> = (0..tasks.len()).collect();
        let mut done = Vec::new();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let pick = |values: &[String]| left.iter().map(|&i| values[i].clone()).collect::<Vec<_>>();
            let written = sqlx::query_scalar(&sql)
                .bind(pick(&ids))
                .bind(pick(tokens))
                .bind(pick(&statuses))
                .bind(left.iter().map(|&i| finished[i]).collect::<Vec<_>>())
                .bind(pick(&records))
                .fetch_all(&self.pool)
                .await;
            match written.map_err(Fail::from) {
                Ok(written) => {
                    done.extend(written);
                    return Ok(done);
                }
                Err(Fail::Retry(why)) => last = why,
                Err(Fail::Unknown(why)) => {
                    // The statement may have been applied: read the rows
                    // back. Written are those whose record is the very one
                    // this finish wrote (a `json` column keeps its text; a
                    // worker that took the task over writes another, with
                    // its own attempt); still running under the claim's
                    // token are those to write again; any other was never
                    // ours to write.
                    let check = self.q(
                        "SELECT id, status, record::text, COALESCE(claim->>'token', record->'lease'->>'token') \
                         FROM {s}.tasks WHERE id = ANY($1)",
                    );
                    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(&check)
                        .bind(pick(&ids))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| {
                            rows::unknown(format!("{why}, and the tasks could not be read back: {e}"))
                        })?;
                    let mut again = Vec::new();
                    for &i in &left {
                        let Some((_, status, record, token)) = rows.iter().find(|r| r.0 == ids[i]) else {
                            continue;
                        };
                        if *record == records[i] {
                            done.push(ids[i].clone());
                        } else if status == "running" && token.as_deref() == Some(tokens[i].as_str()) {
                            again.push(i);
                        }
                    }
                    if again.is_empty() {
                        return Ok(done);
                    }
                    left = again;
                    last = why;
                }
                Err(Fail::Stop(error)) => return Err(error),
            }
        }
        Err(omniq_core::Error::backend(
            "postgres",
            format!("gave up after {ATTEMPTS} attempts: {last}"),
        ))
    }

    /// The transaction path: reads the rows (after their series' locks),
    /// applies each outcome with `Task::finish`, and writes the changed rows
    /// and the next occurrences of interval tasks.
    async fn finish_in_transaction(
        &self,
        finishes: &[Finish],
        now: OffsetDateTime,
    ) -> Result<Vec<FinishOutcome>> {
        let ids: Vec<String> = finishes.iter().map(|f| f.id.to_string()).collect();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let mut tx = match self.pool.begin().await.map_err(Fail::before_write) {
                Ok(tx) => tx,
                Err(Fail::Retry(why)) => {
                    last = why;
                    continue;
                }
                Err(other) => return Err(other.into_error()),
            };
            let body: std::result::Result<_, Fail> = async {
                let loaded = self.load_locking_series(&mut tx, &ids).await?;
                let (answers, writes) =
                    omniq_core::batch::apply_finishes(loaded, finishes, now).map_err(Fail::Stop)?;
                // Tasks handed back are due again at once.
                let announce = (self.channel.as_str(), wake::due_queues(&writes, |_| now));
                rows::save_announcing(&self.s, &mut tx, &writes, false, Some(announce)).await?;
                Ok((answers, writes))
            }
            .await;
            let (answers, writes) = match body {
                Ok(done) => done,
                Err(fail) => {
                    // Rolled back before the answer (see `in_transaction!`).
                    let _ = tx.rollback().await;
                    match fail {
                        Fail::Stop(error) => return Err(error),
                        Fail::Retry(why) | Fail::Unknown(why) => {
                            last = why;
                            continue;
                        }
                    }
                }
            };
            match tx.commit().await.map_err(Fail::at_commit) {
                Ok(()) => return Ok(answers),
                Err(Fail::Stop(error)) => return Err(error),
                Err(Fail::Retry(why)) => last = why,
                Err(Fail::Unknown(why)) => {
                    // The transaction is all or nothing: one record it wrote
                    // tells whether it committed. Stored as this transaction
                    // wrote it (a `json` column keeps its text), it did, and
                    // its answers are the truth; otherwise nothing of it was
                    // stored, and it is tried again, which answers for the
                    // rows as they are now.
                    let Some(written) = writes.first() else {
                        return Ok(answers);
                    };
                    let ours = serde_json::to_string(written).map_err(omniq_core::Error::from)?;
                    let stored: Option<String> =
                        sqlx::query_scalar(&self.q("SELECT record::text FROM {s}.tasks WHERE id = $1"))
                            .bind(written.id.to_string())
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(|e| {
                                rows::unknown(format!("{why}, and the task could not be read back: {e}"))
                            })?;
                    if stored.as_deref() == Some(ours.as_str()) {
                        return Ok(answers);
                    }
                    last = why;
                }
            }
        }
        Err(omniq_core::Error::backend(
            "postgres",
            format!("gave up after {ATTEMPTS} attempts: {last}"),
        ))
    }
}
