//! The changes to schedules: storing, removing and pausing one, and firing a
//! tick, which moves the schedule on and inserts the tick's task in the
//! writer's one transaction, so one process wins each tick.

// The writer's types, helpers and imports, which this part works with.
use super::*;
use omniq_core::schedule::{decide_put, may_fire, PutAnswer, PutSchedule, Schedule};

/// The schedule `name` as stored, if any.
async fn read(s: &mut Session<'_>, name: &str) -> Result<Option<Schedule>> {
    let sql = s.sql("SELECT record FROM schedules WHERE name = ?1");
    let record: Option<String> = sqlx::query_scalar(&sql)
        .bind(name)
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    record
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| Error::backend("sqlite", format!("schedule {name:?} cannot be read: {e}")))
}

/// Writes `schedule` under its name; `last`: as the change's final write.
async fn write(s: &mut Session<'_>, schedule: &Schedule, last: bool) -> Result<()> {
    let statement = "INSERT INTO schedules (name, record) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET record = excluded.record";
    let sql = match last {
        true => s.final_sql(statement),
        false => s.sql(statement),
    };
    sqlx::query(&sql)
        .bind(&schedule.name)
        .bind(serde_json::to_string(schedule)?)
        .execute(s.conn())
        .await
        .map_err(sql_error)?;
    if last {
        s.final_ran();
    }
    Ok(())
}

pub(super) async fn put(s: &mut Session<'_>, schedule: Schedule, mode: PutSchedule) -> Result<PutAnswer> {
    let existing = read(s, &schedule.name).await?;
    let (record, answer) = decide_put(schedule, existing, mode);
    if let Some(record) = record {
        write(s, &record, true).await?;
    }
    Ok(answer)
}

pub(super) async fn remove(s: &mut Session<'_>, name: &str) -> Result<bool> {
    // Not the final command: a `COMMIT` behind a `RETURNING` that is read
    // with `fetch_optional` might never run; the group commits after it.
    let sql = s.sql("DELETE FROM schedules WHERE name = ?1 RETURNING name");
    let removed: Option<String> = sqlx::query_scalar(&sql)
        .bind(name)
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    Ok(removed.is_some())
}

pub(super) async fn pause(s: &mut Session<'_>, name: &str, paused: bool) -> Result<bool> {
    let Some(mut schedule) = read(s, name).await? else {
        return Ok(false);
    };
    schedule.paused = paused;
    write(s, &schedule, true).await?;
    Ok(true)
}

pub(super) async fn skip(
    s: &mut Session<'_>,
    name: &str,
    due: OffsetDateTime,
    next: OffsetDateTime,
) -> Result<bool> {
    let stored = read(s, name).await?;
    if !may_fire(stored.as_ref(), due) {
        return Ok(false);
    }
    let Some(mut schedule) = stored else {
        return Ok(false);
    };
    schedule.fired(due, next, None);
    write(s, &schedule, true).await?;
    Ok(true)
}

/// Everything is read and checked first (the schedule, the task's id, the
/// holder of its key), so the two writes cannot be refused half-way: the
/// schedule's, then the task's insert as the change's final command.
pub(super) async fn fire(
    s: &mut Session<'_>,
    name: &str,
    due: OffsetDateTime,
    next: OffsetDateTime,
    task: Task,
) -> Result<Option<Enqueued>> {
    let stored = read(s, name).await?;
    if !may_fire(stored.as_ref(), due) {
        return Ok(None);
    }
    let Some(mut schedule) = stored else {
        return Ok(None);
    };
    let sql = s.sql("SELECT 1 FROM tasks WHERE id = ?1");
    let taken: Option<i64> = sqlx::query_scalar(&sql)
        .bind(task.id.to_string())
        .fetch_optional(s.conn())
        .await
        .map_err(sql_error)?;
    if taken.is_some() {
        return Err(Error::conflict(task.id, "a task with this id already exists"));
    }
    let holders = super::ops::key_holders(s, task.unique_key.as_deref().into_iter()).await?;
    let (tasks, mut answers) = split_duplicates(vec![task], |key, now| Ok(holders.at(key, now)))?;
    let answer = answers.pop();
    schedule.fired(due, next, answer.as_ref());
    match tasks.is_empty() {
        // The key's holder stands for the tick: only the schedule moves on.
        true => write(s, &schedule, true).await?,
        false => {
            write(s, &schedule, false).await?;
            rows::insert(s, &tasks).await?;
        }
    }
    Ok(answer)
}
