//! Storing new records: the one-statement path of an enqueue without unique
//! keys, the transaction that decides duplicates, and the same step inside a
//! program's own transaction (`enqueue_in`), so a task exists if and only if
//! the program's change commits.

use std::collections::HashMap;

use omniq_core::queue::split_duplicates;
use omniq_core::{Enqueued, Error, Result, Task, TaskId};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::rows::{self, Fail};
use crate::{schema, sql_error, wake, PostgresStorage};

/// The live tasks holding these keys.
pub(crate) async fn holders(
    s: &str,
    conn: &mut PgConnection,
    keys: &[String],
) -> std::result::Result<HashMap<String, TaskId>, Fail> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(&format!(
        "SELECT unique_key, id FROM {s}.tasks WHERE unique_key = ANY($1) \
         AND status IN ('pending', 'running')"
    ))
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    let mut held = HashMap::new();
    for row in rows {
        let key: String = row.try_get(0)?;
        let id: String = row.try_get(1)?;
        held.insert(key, TaskId::parse(&id).map_err(Fail::Stop)?);
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
        split_duplicates(tasks.to_vec(), |key| Ok(held.get(key).copied())).map_err(Fail::Stop)?;
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
    omniq_core::check_pending(&tasks)?;
    omniq_core::check_new_records(&tasks)?;
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
    pub(crate) async fn store(&self, tasks: Vec<Task>, announce: bool) -> Result<Vec<Enqueued>> {
        self.writable()?;
        omniq_core::check_new_records(&tasks)?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let channel = announce.then_some(self.channel.as_str());
        if tasks.iter().all(|t| t.unique_key.is_none()) {
            // Without keys an enqueue is one INSERT, all or nothing by
            // itself: one round trip, no transaction around it.
            let mut conn = self.pool.acquire().await.map_err(sql_error)?;
            let announce = channel.map(|channel| (channel, wake::due_queues(&tasks, |t| t.created_at)));
            match rows::save_announcing(&self.s, &mut conn, &tasks, true, announce).await {
                Ok(()) => {
                    return Ok(tasks
                        .iter()
                        .map(|t| Enqueued {
                            id: t.id,
                            duplicate: false,
                        })
                        .collect())
                }
                // An id is taken: name it.
                Err(Fail::Stop(Error::Conflict { .. })) => {
                    let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
                    return match taken(&self.s, &mut conn, &ids).await {
                        Err(Fail::Stop(error)) => Err(error),
                        Err(Fail::Retry(why)) => Err(Error::backend("postgres", why)),
                        Ok(()) => Err(Error::conflict("?", "a task with this id already exists")),
                    };
                }
                Err(Fail::Stop(error)) => return Err(error),
                Err(Fail::Retry(_)) => {}
            }
        }
        let tasks = &tasks;
        Ok(in_transaction!(self, |tx| {
            store_on(&self.s, &mut tx, tasks, channel).await
        }))
    }
}
