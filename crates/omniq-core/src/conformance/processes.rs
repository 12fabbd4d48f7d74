//! Helpers for the several-processes test each persistent backend runs: child
//! processes claim from one store while the parent enqueues, and every task must
//! run exactly once (no lease expires in that test).
//!
//! The backend's test re-executes its own test binary as the children (an
//! ignored test that [`child_loop`]s when run by name), so no extra binary is
//! needed.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::settings::Settings;
use crate::storage::{ClaimRequest, Finish, FinishOutcome, Storage};
use crate::task::{NewTask, Outcome, TaskId, TaskStatus};

/// Long enough that no lease expires during the test: a second run of a task
/// would then be a real double claim, not at-least-once delivery.
const LEASE: Duration = Duration::from_secs(600);

/// A child's work: claim up to 8 tasks at a time, append each id to `log` (one
/// line per execution), complete it, until `stop` exists and nothing is due.
pub async fn child_loop(store: &dyn Storage, worker_id: &str, log: &Path, stop: &Path) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the execution log");
    loop {
        let claimed = store
            .claim(ClaimRequest {
                worker_id: worker_id.to_string(),
                limit: 8,
                lease_for: LEASE,
                now: OffsetDateTime::now_utc(),
            })
            .await
            .expect("claim");
        if claimed.is_empty() {
            if stop.exists() && store.counts().await.expect("counts").pending == 0 {
                return;
            }
            // Another process enqueues, so there is nothing to be woken by here.
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut finishes = Vec::new();
        for task in &claimed {
            writeln!(log, "{}", task.id).expect("write the execution log");
            finishes.push(Finish {
                id: task.id,
                token: task.lease.as_ref().expect("lease").token,
                outcome: Outcome::Complete {
                    result: json!(worker_id),
                },
            });
        }
        log.flush().expect("flush the execution log");
        let answers = store
            .finish(finishes, OffsetDateTime::now_utc())
            .await
            .expect("finish");
        assert!(
            answers.iter().all(|a| matches!(a, FinishOutcome::Applied { .. })),
            "a finish was refused although no lease expired: {answers:?}"
        );
    }
}

/// The parent's enqueueing: `batches` batches of `per_batch` tasks, with a pause
/// between batches so children claim while tasks still arrive.
pub async fn enqueue_while_children_run(
    store: &dyn Storage,
    batches: usize,
    per_batch: usize,
) -> Vec<TaskId> {
    let settings = Settings::default();
    let mut ids = Vec::new();
    for batch in 0..batches {
        let tasks = (0..per_batch)
            .map(|i| {
                NewTask::new("multi")
                    .args(vec![json!(batch * per_batch + i)])
                    .into_task(&settings, OffsetDateTime::now_utc())
                    .expect("task")
            })
            .collect::<Vec<_>>();
        ids.extend(tasks.iter().map(|t| t.id));
        store.enqueue(tasks).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ids
}

/// Checks that every id in `ids` ran exactly once according to the children's
/// logs and is stored completed.
pub async fn assert_exactly_once(store: &dyn Storage, ids: &[TaskId], logs: &[&Path]) {
    let mut runs: HashMap<String, usize> = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            *runs.entry(line.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    let busy_children = logs
        .iter()
        .filter(|log| std::fs::metadata(log).map(|m| m.len() > 0).unwrap_or(false))
        .count();
    for id in ids {
        assert_eq!(
            runs.get(&id.to_string()),
            Some(&1),
            "task {id} did not run exactly once"
        );
        assert_eq!(store.get(*id).await.expect("get").status, TaskStatus::Completed);
    }
    assert_eq!(runs.len(), ids.len());
    assert!(
        busy_children >= 2,
        "only {busy_children} child process(es) ran tasks; the test proves nothing"
    );
}
