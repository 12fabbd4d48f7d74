//! Scenarios of a store shared by several hosts: its own clock, the wake-ups
//! it gives other processes, history imported beside new work, and an
//! interval series cancelled while one of its occurrences finishes.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::scenarios::{claim_one, finish, make, new, T0};
use super::Scenario;
use crate::storage::{FinishOutcome, ListQuery, Storage};
use crate::task::{Outcome, TaskStatus};

scenarios![
    a_store_clock_reads_the_time_of_day,
    an_enqueue_of_due_work_changes_the_wake_ups,
    a_series_cancelled_while_it_finishes_is_stopped,
];

/// A store's own clock, where it has one, is a clock of this century and of
/// this machine's day: the conformance host and its store agree within a
/// minute.
async fn a_store_clock_reads_the_time_of_day(store: &dyn Storage) {
    let before = OffsetDateTime::now_utc();
    let theirs = store.store_time().await.expect("store_time");
    let Some(theirs) = theirs else { return };
    let after = OffsetDateTime::now_utc();
    let slack = time::Duration::minutes(1);
    assert!(
        theirs >= before - slack && theirs <= after + slack,
        "the store says it is {theirs}; here it is {before}"
    );
    let again = store.store_time().await.unwrap().unwrap();
    assert!(
        again >= theirs,
        "the store's clock went back: {theirs} then {again}"
    );
}

/// A store that gives wake-ups changes them when a task due now is enqueued
/// (its own enqueues included: it cannot tell which process a notice came
/// from, and a pool looking once too often costs a claim).
async fn an_enqueue_of_due_work_changes_the_wake_ups(store: &dyn Storage) {
    let Some(mut notices) = store.wake_ups() else {
        return;
    };
    notices.mark_unchanged();
    let now = OffsetDateTime::now_utc();
    store.enqueue(vec![make(new("due"), now)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), notices.changed())
        .await
        .expect("no wake-up within 10 s of an enqueue of due work")
        .expect("the wake-ups ended");
}

/// The finish that stores a series' next occurrence and a cancel of the
/// series, at the same time, in every order a backend may run them: the
/// series is stopped, with no live occurrence left behind.
async fn a_series_cancelled_while_it_finishes_is_stopped(store: &dyn Storage) {
    for round in 0..12u64 {
        let first = make(new("tick").interval(Duration::from_secs(60)), T0);
        store.enqueue(vec![first.clone()]).await.unwrap();
        let claimed = claim_one(store, T0).await;
        assert_eq!(claimed.id, first.id);
        let done = Outcome::Complete { result: json!(round) };
        let (finished, cancelled) = match round % 2 {
            0 => futures::join!(finish(store, &claimed, done, T0), store.cancel(first.id, T0)),
            _ => {
                let (cancelled, finished) =
                    futures::join!(store.cancel(first.id, T0), finish(store, &claimed, done, T0));
                (finished, cancelled)
            }
        };
        let cancelled = cancelled.expect("cancel");
        match finished {
            // The finish came first: its next occurrence was cancelled.
            FinishOutcome::Applied { next: Some(next), .. } => assert!(cancelled.contains(&next)),
            FinishOutcome::Applied { next: None, .. } => {
                panic!("a completed interval task scheduled nothing")
            }
            // The cancel came first: the finish lost its claim.
            FinishOutcome::LeaseLost => assert!(cancelled.contains(&first.id)),
        }
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            let live = store
                .list(ListQuery {
                    status: Some(status),
                    ..ListQuery::default()
                })
                .await
                .unwrap();
            assert!(
                live.is_empty(),
                "round {round}: {status} occurrences left: {live:?}"
            );
        }
    }
}
