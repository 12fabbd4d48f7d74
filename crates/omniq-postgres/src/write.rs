//! Storing new records: the one-statement path of an enqueue without unique
//! keys, the transaction that decides duplicates, and the same step inside a
//! program's own transaction (`enqueue_in`), so a task exists if and only if
//! the program's change commits.

use omniq_core::queue::{split_duplicates, KeyHolders};
use omniq_core::{Enqueued, Error, Result, Task};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::rows::{self, Fail};
use crate::{schema, sql_error, wake, PostgresStorage};

/// The tasks that may hold these keys, in one query: the live holder of
/// each, and the finished tasks with a window. A finished task with a window
/// was committed finished before this read, so two enqueuers racing for its
/// key both see it; two that find no holder race for the live index, as
/// before.
pub(crate) async fn holders(
    s: &str,
    conn: &mut PgConnection,
    keys: &[String],
) -> std::result::Result<KeyHolders, Fail> {
    let mut held = KeyHolders::default();
    if keys.is_empty() {
        return Ok(held);
    }
    let rows = sqlx::query(&format!(
        "SELECT unique_key, id, status, NULL::text FROM {s}.tasks \
         WHERE unique_key = ANY($1) AND status IN ('pending', 'running') \
         UNION ALL SELECT unique_key, id, status, (record -> 'unique_window')::text FROM {s}.tasks \
         WHERE unique_key = ANY($1) AND (record -> 'unique_window') IS NOT NULL \
         AND status IN ('completed', 'failed', 'cancelled')"
    ))
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let id: String = row.try_get(1)?;
        let status: String = row.try_get(2)?;
        let window: Option<String> = row.try_get(3)?;
        held.add_stored(row.try_get(0)?, &id, &status, window.as_deref())
            .map_err(|reason| Fail::Stop(Error::backend("postgres", reason)))?;
    }
    Ok(held)
}

/// The one id of `ids` already stored, if any, as the conflict that names it.
async fn taken(s: &str, conn: &mut PgConnection, ids: &[String]) -> std::result::Result<(), Fail> {
    let taken: Option<String> =
        sqlx::query_scalar(&format!("SELECT id FROM {s}.tasks WHERE id = ANY($1) LIMIT 1"))
            .bind(ids)
            .fetch_optional(&mut *conn)
            .await?;
    match taken {
        Some(id) => Err(Fail::Stop(Error::conflict(
            id,
            "a task with this id already exists",
        ))),
        None => Ok(()),
    }
}

/// Stores checked records on `conn`, in the transaction it is in: refuses
/// ids already stored, answers duplicates of live keys, and announces on
/// `channel` the queues made due, when it is given.
pub(crate) async fn store_on(
    s: &str,
    conn: &mut PgConnection,
    tasks: &[Task],
    channel: Option<&str>,
) -> std::result::Result<Vec<Enqueued>, Fail> {
    let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
    taken(s, conn, &ids).await?;
    let keys: Vec<String> = tasks.iter().filter_map(|t| t.unique_key.clone()).collect();
    let held = holders(s, conn, &keys).await?;
    let (stored, answers) =
        split_duplicates(tasks.to_vec(), |key, now| Ok(held.at(key, now))).map_err(Fail::Stop)?;
    let announce = channel.map(|channel| (channel, wake::due_queues(&stored, |t| t.created_at)));
    rows::save_announcing(s, conn, &stored, true, announce).await?;
    Ok(answers)
}

/// Enqueues new `pending` records inside the caller's transaction on
/// `conn`, in the OmniQ tables of `schema`: they exist, and workers on other
/// hosts hear of them, if and only if that transaction commits. The answers
/// are those of [`omniq_core::Storage::enqueue`].
///
/// Nothing is tried again here, since the transaction is the caller's: when a
/// concurrent enqueue takes the same unique key first, PostgreSQL aborts the
/// transaction and this answers an error saying it may be run again.
pub async fn enqueue_in(conn: &mut PgConnection, schema: &str, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
    // This enqueue does not pass through the checking layer (it runs on
    // the program's connection), so it asks the layer's rules itself.
    omniq_core::checked::new_work(&tasks)?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let channel = wake::channel(schema);
    match store_on(&schema::quote(schema), conn, &tasks, Some(&channel)).await {
        Ok(answers) => Ok(answers),
        Err(Fail::Stop(error)) => Err(error),
        Err(Fail::Retry(why)) => Err(Error::backend(
            "postgres",
            format!("the transaction was aborted and may be run again: {why}"),
        )),
        Err(Fail::Unknown(why)) => Err(Error::backend(
            "postgres",
            format!("{why}; the transaction did not commit"),
        )),
    }
}

impl PostgresStorage {
    /// [`enqueue_in`] on this store's schema.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, tasks: Vec<Task>) -> Result<Vec<Enqueued>> {
        self.writable()?;
        enqueue_in(conn, &self.schema, tasks).await
    }

    /// Stores checked or unchecked records (an import, or an enqueue whose
    /// records are pending): `announce` the queues made due.
    ///
    /// When the connection is lost where the write may have been applied
    /// (the one INSERT, or the commit), the ids are looked up: found, the
    /// records are this call's (ids are drawn at random by the caller), and
    /// the answer is the one the write gave; not found, nothing was stored
    /// and the write is tried again.
    pub(crate) async fn store(&self, tasks: Vec<Task>, announce: bool) -> Result<Vec<Enqueued>> {
        self.writable()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let channel = announce.then_some(self.channel.as_str());
        let mut last = String::new();
        for _ in 0..crate::ATTEMPTS {
            let attempt = match tasks.iter().all(|t| t.unique_key.is_none()) {
                true => self.store_alone(&tasks, channel).await,
                false => self.store_in_transaction(&tasks, channel).await,
            };
            match attempt {
                Ok(answers) => return Ok(answers),
                Err(Fail::Stop(error)) => return Err(error),
                Err(Fail::Retry(why)) => last = why,
                Err(Fail::Unknown(why)) => match self.stored_already(&tasks).await {
                    Ok(Some(answers)) => return Ok(answers),
                    Ok(None) => last = why,
                    Err(error) => {
                        return Err(rows::unknown(format!(
                            "{why}, and the ids could not be looked up: {error}"
                        )))
                    }
                },
            }
        }
        Err(Error::backend(
            "postgres",
            format!("gave up after {} attempts: {last}", crate::ATTEMPTS),
        ))
    }

    /// Without keys an enqueue is one INSERT, all or nothing by itself: one
    /// round trip, no transaction around it.
    async fn store_alone(
        &self,
        tasks: &[Task],
        channel: Option<&str>,
    ) -> std::result::Result<Vec<Enqueued>, Fail> {
        let mut conn = self.pool.acquire().await.map_err(Fail::before_write)?;
        let announce = channel.map(|channel| (channel, wake::due_queues(tasks, |t| t.created_at)));
        match rows::save_announcing(&self.s, &mut conn, tasks, true, announce).await {
            Ok(()) => Ok(tasks
                .iter()
                .map(|t| Enqueued {
                    id: t.id,
                    duplicate: false,
                })
                .collect()),
            // An id is taken: name it.
            Err(Fail::Stop(Error::Conflict { .. })) => {
                let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
                match taken(&self.s, &mut conn, &ids).await {
                    Err(Fail::Stop(error)) => Err(Fail::Stop(error)),
                    Err(other) => Err(Fail::Stop(other.into_error())),
                    Ok(()) => Err(Fail::Stop(Error::conflict(
                        "?",
                        "a task with this id already exists",
                    ))),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// The transaction that decides duplicates; a connection lost at its
    /// commit is `Fail::Unknown`.
    async fn store_in_transaction(
        &self,
        tasks: &[Task],
        channel: Option<&str>,
    ) -> std::result::Result<Vec<Enqueued>, Fail> {
        let mut tx = self.pool.begin().await.map_err(Fail::before_write)?;
        match store_on(&self.s, &mut tx, tasks, channel).await {
            Ok(answers) => {
                tx.commit().await.map_err(Fail::at_commit)?;
                Ok(answers)
            }
            Err(fail) => {
                // Rolled back before the answer, so no lock outlives it
                // (see `in_transaction!`).
                let _ = tx.rollback().await;
                match fail {
                    // Nothing was committed.
                    Fail::Unknown(why) => Err(Fail::Retry(why)),
                    other => Err(other),
                }
            }
        }
    }

    /// After a lost connection: the answers of a write of `tasks` that was
    /// applied, or `None` when none of their ids is stored (nothing was, or
    /// every one was a duplicate: either way another try is safe).
    async fn stored_already(&self, tasks: &[Task]) -> Result<Option<Vec<Enqueued>>> {
        let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
        let found: Vec<String> = sqlx::query_scalar(&self.q("SELECT id FROM {s}.tasks WHERE id = ANY($1)"))
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error)?;
        if found.is_empty() {
            return Ok(None);
        }
        let mut conn = self.pool.acquire().await.map_err(sql_error)?;
        let keys: Vec<String> = tasks
            .iter()
            .filter(|t| !found.contains(&t.id.to_string()))
            .filter_map(|t| t.unique_key.clone())
            .collect();
        let held = holders(&self.s, &mut conn, &keys)
            .await
            .map_err(Fail::into_error)?;
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            if found.contains(&task.id.to_string()) {
                answers.push(Enqueued {
                    id: task.id,
                    duplicate: false,
                });
                continue;
            }
            // A duplicate: its answer is the holder, unless the holder has
            // finished since, which leaves nothing true to answer.
            match task.unique_key.as_ref().and_then(|key| held.at(key, task.created_at)) {
                Some(holder) => answers.push(Enqueued {
                    id: holder,
                    duplicate: true,
                }),
                None => {
                    return Err(rows::unknown(format!(
                        "the connection was lost; task {} was not stored and the task that held its key has finished",
                        task.id
                    )))
                }
            }
        }
        Ok(Some(answers))
    }
}
