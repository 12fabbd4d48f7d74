//! Schedules in PostgreSQL: one row per schedule, its record as JSON, read
//! and changed under the row's lock, so a tick's fire (the schedule moved on
//! and the tick's task stored) is one transaction that one host wins.

use omniq_core::schedule::{decide_put, may_fire, PutAnswer, PutSchedule, Schedule};
use omniq_core::{Enqueued, Error, Result, Task};
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;

use crate::rows::Fail;
use crate::{sql_error, write, PostgresStorage};

/// The schedule `name`, locked for the transaction.
async fn locked(s: &str, conn: &mut PgConnection, name: &str) -> std::result::Result<Option<Schedule>, Fail> {
    let record: Option<String> = sqlx::query_scalar(&format!(
        "SELECT record::text FROM {s}.schedules WHERE name = $1 FOR UPDATE"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    record.map(|r| serde_json::from_str(&r)).transpose().map_err(|e| {
        Fail::Stop(Error::backend(
            "postgres",
            format!("schedule {name:?} cannot be read: {e}"),
        ))
    })
}

/// Writes `schedule`'s record under its name.
async fn save(s: &str, conn: &mut PgConnection, schedule: &Schedule) -> std::result::Result<(), Fail> {
    sqlx::query(&format!(
        "INSERT INTO {s}.schedules (name, record) VALUES ($1, $2::json) \
         ON CONFLICT (name) DO UPDATE SET record = excluded.record"
    ))
    .bind(&schedule.name)
    .bind(serde_json::to_string(schedule).map_err(Error::from)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl PostgresStorage {
    pub(crate) async fn put_schedule_row(&self, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
        self.writable()?;
        let schedule = &schedule;
        Ok(in_transaction!(self, |tx| {
            // A new name has no row to lock: take the name's advisory lock
            // first, so two first creations of one schedule are ordered too.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('omniq-schedule:' || $1))")
                .bind(&schedule.name)
                .execute(&mut *tx)
                .await?;
            let existing = locked(&self.s, &mut tx, &schedule.name).await?;
            let (record, answer) = decide_put(schedule.clone(), existing, mode);
            if let Some(record) = record {
                save(&self.s, &mut tx, &record).await?;
            }
            Ok(answer)
        }))
    }

    pub(crate) async fn schedule_rows(&self) -> Result<Vec<Schedule>> {
        let records: Vec<(String, String)> = sqlx::query_as(
            &self.q("SELECT name, record::text FROM {s}.schedules ORDER BY name COLLATE \"C\""),
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error)?;
        records
            .into_iter()
            .map(|(name, record)| {
                serde_json::from_str(&record)
                    .map_err(|e| Error::backend("postgres", format!("schedule {name:?} cannot be read: {e}")))
            })
            .collect()
    }

    pub(crate) async fn remove_schedule_row(&self, name: &str) -> Result<bool> {
        self.writable()?;
        let done = sqlx::query(&self.q("DELETE FROM {s}.schedules WHERE name = $1"))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn pause_schedule_row(&self, name: &str, paused: bool) -> Result<bool> {
        self.writable()?;
        Ok(in_transaction!(self, |tx| {
            let Some(mut schedule) = locked(&self.s, &mut tx, name).await? else {
                return Ok(false);
            };
            schedule.paused = paused;
            save(&self.s, &mut tx, &schedule).await?;
            Ok(true)
        }))
    }

    pub(crate) async fn skip_schedule_row(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
    ) -> Result<bool> {
        self.writable()?;
        Ok(in_transaction!(self, |tx| {
            let stored = locked(&self.s, &mut tx, name).await?;
            if !may_fire(stored.as_ref(), due) {
                return Ok(false);
            }
            let Some(mut schedule) = stored else {
                return Ok(false);
            };
            schedule.fired(due, next, None);
            save(&self.s, &mut tx, &schedule).await?;
            Ok(true)
        }))
    }

    pub(crate) async fn fire_schedule_row(
        &self,
        name: &str,
        due: OffsetDateTime,
        next: OffsetDateTime,
        task: Task,
    ) -> Result<Option<Enqueued>> {
        self.writable()?;
        let tasks = std::slice::from_ref(&task);
        Ok(in_transaction!(self, |tx| {
            let stored = locked(&self.s, &mut tx, name).await?;
            if !may_fire(stored.as_ref(), due) {
                return Ok(None);
            }
            let Some(mut schedule) = stored else {
                return Ok(None);
            };
            let answer = write::store_on(&self.s, &mut tx, tasks, Some(&self.channel))
                .await?
                .pop();
            schedule.fired(due, next, answer.as_ref());
            save(&self.s, &mut tx, &schedule).await?;
            Ok(answer)
        }))
    }
}
