//! Moving every task from one store to another, history included.

use omniq_core::{
    Enqueued, Error, ListOrder, ListQuery, PutSchedule, Result, Storage, StorageExt, Task, TaskStatus,
};
use time::OffsetDateTime;

/// How far a migration has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Tasks read from the source so far.
    pub done: u64,
    /// Tasks in the source when the migration started.
    pub total: u64,
}

/// A task a migration did not copy, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCopied {
    /// The task's id as the source holds it.
    pub id: String,
    /// Why it was not copied.
    pub reason: String,
}

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Tasks written to the destination.
    pub copied: u64,
    /// Tasks already in the destination (same id), left as they were there.
    pub skipped: u64,
    /// Tasks that were running in the source, copied as if their lease had
    /// expired (counted among `copied`).
    pub running_reset: u64,
    /// Tasks of the source that were not copied: records the source cannot
    /// read, and tasks the destination refused (a time it cannot hold, say).
    pub not_copied: Vec<NotCopied>,
    /// Schedules written to the destination (new there, or replacing one of
    /// the same name).
    pub schedules: u64,
    /// Names of the destination's schedules the source's replaced.
    pub schedules_replaced: Vec<String>,
    /// Names of the destination's schedules kept as they were, the source's
    /// of the same name not copied ([`SchedulesOnConflict::Keep`]).
    pub schedules_kept: Vec<String>,
    /// Queues whose flow-control settings were copied (the destination had
    /// none for them).
    pub queue_limits: Vec<String>,
    /// Queues whose flow-control settings the destination had already,
    /// kept as they were.
    pub queue_limits_kept: Vec<String>,
}

/// What a migration does with a source schedule whose name the destination
/// already has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedulesOnConflict {
    /// The source's replaces the destination's (the default): its
    /// expression, task, pause and next tick.
    #[default]
    Replace,
    /// The destination's stays as it is.
    Keep,
}

/// How a migration runs; see [`migrate_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// What to do with schedules of the same name on both sides.
    pub schedules: SchedulesOnConflict,
}

impl MigrationReport {
    /// Whether every task of the source is now in the destination.
    pub fn is_complete(&self) -> bool {
        self.not_copied.is_empty()
    }
}

/// The most tasks read and written per batch.
const BATCH: usize = 500;

/// About how many bytes of payloads and results one batch may hold: batches
/// start small and grow while their tasks are small, so a store of big
/// payloads is copied in small batches and memory stays bounded by bytes.
const BATCH_BYTES: usize = 16 << 20;

/// The size of the next batch, from how many bytes the last one of `size`
/// tasks held.
fn next_batch(size: usize, bytes: usize) -> usize {
    match bytes {
        0 => (size * 2).min(BATCH),
        _ if bytes > BATCH_BYTES => (size * BATCH_BYTES / bytes).max(1),
        _ => (size * 2).min(BATCH).min((size * BATCH_BYTES / bytes).max(1)),
    }
}

/// About how many bytes a task's payload and result take.
fn payload_bytes(task: &Task) -> usize {
    serde_json::to_vec(&task.args).map_or(0, |v| v.len())
        + serde_json::to_vec(&task.kwargs).map_or(0, |v| v.len())
        + task
            .result
            .as_ref()
            .and_then(|r| serde_json::to_vec(r).ok())
            .map_or(0, |v| v.len())
}

/// Copies every task of `from` into `to`, keeping ids, status, attempts,
/// errors, results, eta, interval and series; `from` is only read (open a
/// file store with `FileStorage::open_read_only` to make sure of it).
///
/// A task running in the source (whose worker should be stopped first) is
/// copied as if its lease had expired ([`Task::expire_lease`]): the attempt
/// counts, and it is pending again, or failed when no retries are left. A
/// task whose id the destination already holds is skipped, so an interrupted
/// migration can simply be run again. A task the destination refuses, and a
/// record the source cannot read, are listed in the report's `not_copied`
/// by id and reason; the rest is copied all the same. `progress` is called
/// after each batch.
pub async fn migrate(
    from: &dyn Storage,
    to: &dyn Storage,
    progress: impl FnMut(Progress),
) -> Result<MigrationReport> {
    migrate_with(from, to, MigrateOptions::default(), progress).await
}

/// As [`migrate`], with `options`: schedules of a name the destination
/// already has replace it, or are left out; the report names each.
pub async fn migrate_with(
    from: &dyn Storage,
    to: &dyn Storage,
    options: MigrateOptions,
    mut progress: impl FnMut(Progress),
) -> Result<MigrationReport> {
    let total = from.counts().await?.total();
    // Leases are released by the destination's clock, which its workers use.
    let now = to.now().await?;
    let mut report = MigrationReport::default();
    let mut done = 0;
    let mut after = None;
    let mut size = 16;
    loop {
        let page = from
            .list(ListQuery {
                status: None,
                limit: Some(size),
                order: ListOrder::OldestFirst,
                after,
                queue: None,
                func_path: None,
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        done += page.len() as u64;
        size = next_batch(size, page.iter().map(payload_bytes).sum());
        let mut batch = Vec::with_capacity(page.len());
        let mut reset = Vec::new();
        for task in page {
            if task.status == TaskStatus::Running {
                reset.push(task.id);
            }
            let (task, next) = released(task, now)?;
            batch.push(task);
            batch.extend(next);
        }
        copy(to, batch, &reset, &mut report).await?;
        progress(Progress {
            done,
            total: total.max(done),
        });
    }
    // Schedules go as they are, with their next tick and last task.
    let mode = match options.schedules {
        SchedulesOnConflict::Replace => PutSchedule::Replace,
        SchedulesOnConflict::Keep => PutSchedule::KeepExisting,
    };
    for schedule in from.schedules().await? {
        let name = schedule.name.clone();
        // The layer's rule, whether or not `to` is behind it.
        omniq_core::schedule::check_schedule(&schedule)?;
        let answer = to.put_schedule(schedule, mode).await?;
        match (answer.existed, options.schedules) {
            (true, SchedulesOnConflict::Keep) => report.schedules_kept.push(name),
            (true, SchedulesOnConflict::Replace) => {
                report.schedules_replaced.push(name);
                report.schedules += 1;
            }
            (false, _) => report.schedules += 1,
        }
    }
    // Flow-control settings go to the queues that have none there yet; a
    // destination's own settings are its operators' choice, and stay.
    let theirs: Vec<String> = to.queue_flows(now).await?.into_iter().map(|f| f.queue).collect();
    for flow in from.queue_flows(now).await? {
        if theirs.contains(&flow.queue) {
            report.queue_limits_kept.push(flow.queue);
            continue;
        }
        // The layer's rule, whether or not `to` is behind it.
        flow.limits.check()?;
        to.set_queue_limits(&flow.queue, flow.limits).await?;
        report.queue_limits.push(flow.queue);
    }
    report
        .not_copied
        .extend(from.damaged().await?.into_iter().map(|bad| NotCopied {
            id: bad.id,
            reason: format!(
                "the source cannot read it ({}): {}",
                bad.location.display(),
                bad.reason
            ),
        }));
    Ok(report)
}

/// A task as it is copied: a running one is released as if its lease had
/// expired, with the next occurrence that may bring (an interval task that
/// thereby failed for good).
fn released(mut task: Task, now: OffsetDateTime) -> Result<(Task, Option<Task>)> {
    if task.status != TaskStatus::Running {
        return Ok((task, None));
    }
    let next = task.expire_lease(now)?;
    Ok((task, next))
}

/// Enqueues `batch` in `to`, one by one when the whole batch is refused, and
/// counts what happened to each task in `report`.
/// An import under the checking layer's rules, whether or not `to` is
/// behind the layer (`migrate` takes bare backends too).
async fn import(to: &dyn Storage, batch: Vec<Task>) -> Result<Vec<Enqueued>> {
    omniq_core::checked::history(&batch)?;
    to.import(batch).await
}

async fn copy(
    to: &dyn Storage,
    batch: Vec<Task>,
    reset: &[omniq_core::TaskId],
    report: &mut MigrationReport,
) -> Result<()> {
    let count_reset = |task: &Task, report: &mut MigrationReport| {
        if reset.contains(&task.id) {
            report.running_reset += 1;
        }
    };
    let copied = |task: &Task, answer: &Enqueued, report: &mut MigrationReport| {
        if answer.duplicate {
            // The destination's own live task holds the key: storing this
            // one would run the work twice.
            report.not_copied.push(NotCopied {
                id: task.id.to_string(),
                reason: format!(
                    "the destination's task {} holds its unique key {:?}",
                    answer.id,
                    task.unique_key.as_deref().unwrap_or_default()
                ),
            });
        } else {
            report.copied += 1;
            count_reset(task, report);
        }
    };
    match import(to, batch.clone()).await {
        Ok(answers) => {
            for (task, answer) in batch.iter().zip(&answers) {
                copied(task, answer, report);
            }
            return Ok(());
        }
        Err(Error::Conflict { .. } | Error::InvalidConfig { .. }) => {}
        Err(other) => return Err(other),
    }
    // Some ids are there already (a migration run before), or some task is
    // refused: go one by one, so each gets its own answer.
    for task in batch {
        match import(to, vec![task.clone()]).await {
            Ok(answers) => {
                for answer in &answers {
                    copied(&task, answer, report);
                }
            }
            Err(Error::Conflict { .. }) => report.skipped += 1,
            Err(error @ Error::InvalidConfig { .. }) => report.not_copied.push(NotCopied {
                id: task.id.to_string(),
                reason: format!("the destination refused it: {error}"),
            }),
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_bytes() {
        // Small tasks: the batch doubles up to its most.
        assert_eq!(next_batch(16, 16 * 100), 32);
        assert_eq!(next_batch(400, 400 * 100), BATCH);
        // Tasks of 10 MB: one at a time.
        assert_eq!(next_batch(16, 16 * (10 << 20)), 1);
        assert_eq!(next_batch(1, 10 << 20), 1);
        // Tasks of 100 KB: about 160 to a batch, never more.
        let size = next_batch(128, 128 * 100_000);
        assert!(size * 100_000 <= BATCH_BYTES, "{size}");
    }
}
