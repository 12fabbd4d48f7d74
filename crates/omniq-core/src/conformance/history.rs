//! Scenarios of a task's attempt history: every failed attempt kept with its
//! worker and times, the last twenty of them, through retries, a lease that
//! ran out, and the success after.

use std::time::Duration;

use serde_json::json;

use super::scenarios::{at, claim, complete, enqueue_at, finish, get, new, T0};
use super::Scenario;
use crate::storage::Storage;
use crate::task::{Outcome, TaskError, TaskStatus, MAX_ATTEMPT_ERRORS};

scenarios![
    failed_attempts_are_kept_with_their_workers_and_times,
    the_history_keeps_the_last_twenty_and_counts_the_rest,
];

async fn failed_attempts_are_kept_with_their_workers_and_times(store: &dyn Storage) {
    let id = enqueue_at(store, vec![new("flaky").max_retries(5)], T0).await[0];
    // Attempt 1 fails with a cause chain on worker a.
    let task = claim(store, "worker-a", 1, at(1_000)).await.remove(0);
    let error = TaskError::new("handler", "payment refused", 1, true)
        .with_causes(vec!["card declined".into(), "insufficient funds".into()])
        .with_location("src/pay.rs:12:5");
    finish(store, &task, Outcome::Retry { error, at: at(2_000) }, at(1_500)).await;
    // Attempt 2 is lost: worker b stops renewing.
    let task = claim(store, "worker-b", 1, at(2_000)).await.remove(0);
    let expiry = task.lease.as_ref().unwrap().expires_at;
    assert_eq!(store.requeue_expired(expiry).await.unwrap(), [id]);
    // Attempt 3 succeeds on worker c.
    let task = claim(store, "worker-c", 1, expiry).await.remove(0);
    finish(
        store,
        &task,
        complete(json!("paid")),
        expiry + Duration::from_secs(1),
    )
    .await;

    let done = get(store, id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert!(done.error.is_none(), "the latest error goes with success");
    assert_eq!(done.errors.len(), 2, "the history stays");
    assert_eq!(done.errors_dropped, 0);
    let first = &done.errors[0];
    assert_eq!(
        (first.error.kind.as_str(), first.error.message.as_str()),
        ("handler", "payment refused")
    );
    assert_eq!(first.error.causes, ["card declined", "insufficient funds"]);
    assert_eq!(first.error.location.as_deref(), Some("src/pay.rs:12:5"));
    assert_eq!(first.error.attempt, 1);
    assert_eq!(first.worker_id.as_deref(), Some("worker-a"));
    assert_eq!((first.started_at, first.failed_at), (Some(at(1_000)), at(1_500)));
    let lost = &done.errors[1];
    assert_eq!(lost.error.kind, "lease_expired");
    assert_eq!(lost.error.location, None);
    assert_eq!(lost.error.attempt, 2);
    assert_eq!(lost.worker_id.as_deref(), Some("worker-b"));
    assert_eq!((lost.started_at, lost.failed_at), (Some(at(2_000)), expiry));
}

async fn the_history_keeps_the_last_twenty_and_counts_the_rest(store: &dyn Storage) {
    let attempts = MAX_ATTEMPT_ERRORS as u32 + 3;
    let id = enqueue_at(store, vec![new("flaky").max_retries(attempts - 1)], T0).await[0];
    let mut now = at(1);
    for attempt in 1..=attempts {
        let task = claim(store, &format!("w{attempt}"), 1, now).await.remove(0);
        let error = TaskError::new("handler", format!("failure {attempt}"), attempt, true);
        finish(store, &task, Outcome::Retry { error, at: now }, now).await;
        now += Duration::from_millis(10);
    }
    let failed = get(store, id).await;
    assert_eq!(
        failed.status,
        TaskStatus::Failed,
        "the last retry is past max_retries"
    );
    assert_eq!(failed.errors.len(), MAX_ATTEMPT_ERRORS);
    assert_eq!(failed.errors_dropped, 3);
    assert_eq!(failed.errors[0].error.message, "failure 4");
    let last = failed.errors.last().unwrap();
    assert_eq!(
        (last.error.attempt, last.worker_id.as_deref()),
        (attempts, Some(&*format!("w{attempts}")))
    );
    assert_eq!(
        failed.error.as_ref().unwrap().message,
        format!("failure {attempts}")
    );

    // A manual retry keeps the history; the next failure adds to it.
    store.retry(id, now).await.unwrap();
    let task = claim(store, "after-retry", 1, now).await.remove(0);
    let error = TaskError::new("handler", "again", 1, false);
    finish(store, &task, Outcome::Fail { error }, now).await;
    let again = get(store, id).await;
    assert_eq!(again.errors.len(), MAX_ATTEMPT_ERRORS);
    assert_eq!(again.errors_dropped, 4);
    assert_eq!(
        again.errors.last().unwrap().worker_id.as_deref(),
        Some("after-retry")
    );
}
