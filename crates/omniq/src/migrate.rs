//! Moving every task from one store to another, history included.

use omniq_core::{Error, ListOrder, ListQuery, Result, Storage, Task, TaskStatus};

/// How far a migration has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Tasks read from the source so far.
    pub done: u64,
    /// Tasks in the source when the migration started.
    pub total: u64,
}

/// What a migration did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Tasks written to the destination.
    pub copied: u64,
    /// Tasks already in the destination (same id), left as they were there.
    pub skipped: u64,
    /// Tasks that were running in the source, stored as pending.
    pub running_reset: u64,
}

/// Tasks read and written per batch.
const BATCH: usize = 500;

/// Copies every task of `from` into `to`, keeping ids, status, attempts,
/// errors, results, eta, interval and series; `from` is only read.
///
/// A task running in the source (whose worker should be stopped first) is
/// stored as pending with its attempts kept, as if its lease had expired. A task
/// whose id the destination already holds is skipped, so an interrupted
/// migration can simply be run again. `progress` is called after each batch.
pub async fn migrate(
    from: &dyn Storage,
    to: &dyn Storage,
    mut progress: impl FnMut(Progress),
) -> Result<MigrationReport> {
    let total = from.counts().await?.total();
    let mut report = MigrationReport::default();
    let mut done = 0;
    let mut after = None;
    loop {
        let page = from
            .list(ListQuery {
                status: None,
                limit: Some(BATCH),
                order: ListOrder::OldestFirst,
                after,
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        done += page.len() as u64;
        let batch: Vec<Task> = page
            .into_iter()
            .map(|mut task| {
                if task.status == TaskStatus::Running {
                    task.status = TaskStatus::Pending;
                    task.lease = None;
                    report.running_reset += 1;
                }
                task
            })
            .collect();
        let size = batch.len() as u64;
        match to.enqueue(batch.clone()).await {
            Ok(()) => report.copied += size,
            // Some ids are there already (a migration run before): go one by one.
            Err(Error::Conflict { .. }) => {
                for task in batch {
                    match to.enqueue(vec![task]).await {
                        Ok(()) => report.copied += 1,
                        Err(Error::Conflict { .. }) => report.skipped += 1,
                        Err(other) => return Err(other),
                    }
                }
            }
            Err(other) => return Err(other),
        }
        progress(Progress {
            done,
            total: total.max(done),
        });
    }
    Ok(report)
}
