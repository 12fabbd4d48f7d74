//! Applying a batch of finishes to the tasks a backend loaded for them, the
//! one way every backend that reads before it writes does it.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::error::Result;
use crate::storage::{Finish, FinishOutcome};
use crate::task::{Finished, Task, TaskId};

/// Applies each of `finishes`, in order, to its task among `loaded` with
/// [`Task::finish`] (a task not loaded answers [`FinishOutcome::LeaseLost`];
/// a task finished twice in one batch sees its first finish). Answers in the
/// order of `finishes`, and the records to write in one atomic step: each
/// task changed, once, then the next occurrences of interval tasks.
pub fn apply_finishes(
    loaded: Vec<Task>,
    finishes: &[Finish],
    now: OffsetDateTime,
) -> Result<(Vec<FinishOutcome>, Vec<Task>)> {
    let mut tasks: HashMap<TaskId, Task> = loaded.into_iter().map(|task| (task.id, task)).collect();
    let mut changed: Vec<TaskId> = Vec::new();
    let mut created = Vec::new();
    let mut answers = Vec::with_capacity(finishes.len());
    for finish in finishes {
        let Some(task) = tasks.get_mut(&finish.id) else {
            answers.push(FinishOutcome::LeaseLost);
            continue;
        };
        match task.finish(finish.token, finish.outcome.clone(), now)? {
            Finished::LeaseLost => answers.push(FinishOutcome::LeaseLost),
            Finished::Applied { status, next } => {
                if !changed.contains(&task.id) {
                    changed.push(task.id);
                }
                answers.push(FinishOutcome::Applied {
                    status,
                    next: next.as_ref().map(|n| n.id),
                });
                created.extend(next);
            }
        }
    }
    let mut writes: Vec<Task> = changed.iter().filter_map(|id| tasks.remove(id)).collect();
    writes.extend(created);
    Ok((answers, writes))
}
