//! Scenarios of the upkeep pools share: pruning finished tasks by status and
//! age in bounded batches, taking turns at a store-wide chore, and the pools'
//! heartbeats.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use time::OffsetDateTime;

use super::scenarios::{at, claim_one, complete, enqueue_at, error, finish, get, make, new, secs, T0};
use super::Scenario;
use crate::error::Error;
use crate::storage::{FinishOutcome, Storage};
use crate::task::{NewTask, Outcome, TaskId, TaskStatus};
use crate::upkeep::WorkerBeat;

scenarios![
    prune_takes_one_status_oldest_first_up_to_the_limit,
    prune_leaves_live_tasks_and_interval_series_alone,
    one_caller_a_period_takes_a_chores_turn,
    beats_are_replaced_listed_and_removed,
    a_long_expired_beat_is_deleted_by_the_next_beat,
];

/// Finishes `n` tasks as `how`, the i-th at `at(1_000 * (i + 1))`; their ids.
async fn finished(store: &dyn Storage, n: usize, how: &str) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let now = at(1_000 * (i as u64 + 1));
        let id = enqueue_at(store, vec![new(how).max_retries(0)], now).await[0];
        match how {
            "cancel" => {
                store.cancel(id, now).await.unwrap();
            }
            _ => {
                let task = claim_one(store, now).await;
                assert_eq!(task.id, id);
                let outcome = match how {
                    "fail" => Outcome::Fail { error: error(1) },
                    _ => complete(json!(i)),
                };
                finish(store, &task, outcome, now).await;
            }
        }
        ids.push(id);
    }
    ids
}

async fn prune_takes_one_status_oldest_first_up_to_the_limit(store: &dyn Storage) {
    let done = finished(store, 4, "complete").await;
    let failed = finished(store, 2, "fail").await;
    let cancelled = finished(store, 2, "cancel").await;
    let everything = T0 + Duration::from_secs(3600);

    // The two oldest completed tasks, nothing else.
    assert_eq!(
        store.prune(TaskStatus::Completed, everything, 2).await.unwrap(),
        2
    );
    for id in &done[..2] {
        assert!(matches!(store.get(*id).await, Err(Error::NotFound { .. })));
    }
    for id in done[2..].iter().chain(&failed).chain(&cancelled) {
        get(store, *id).await;
    }
    // Only those finished before the cutoff: done[2] finished at 3 s.
    let cutoff = at(3_500);
    assert_eq!(store.prune(TaskStatus::Completed, cutoff, 100).await.unwrap(), 1);
    get(store, done[3]).await;
    assert_eq!(store.prune(TaskStatus::Completed, cutoff, 100).await.unwrap(), 0);

    assert_eq!(store.prune(TaskStatus::Failed, everything, 100).await.unwrap(), 2);
    assert_eq!(
        store.prune(TaskStatus::Cancelled, everything, 100).await.unwrap(),
        2
    );
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.completed, counts.failed, counts.cancelled), (1, 0, 0));
    assert_eq!(
        get(store, done[3]).await.result,
        Some(json!(3)),
        "a kept task keeps its result"
    );
}

async fn prune_leaves_live_tasks_and_interval_series_alone(store: &dyn Storage) {
    let series = make(NewTask::new("tick").interval(secs(60)), T0);
    store.enqueue(vec![series.clone()]).await.unwrap();
    let first = claim_one(store, T0).await;
    let FinishOutcome::Applied { next: Some(next), .. } = finish(store, &first, complete(json!(1)), T0).await
    else {
        panic!("the next occurrence was not enqueued");
    };
    let later = T0 + Duration::from_secs(3600);
    let pending = enqueue_at(store, vec![new("waiting").eta(later + secs(3600))], T0).await[0];
    let running = enqueue_at(store, vec![new("running").eta(at(500))], T0).await[0];
    assert_eq!(claim_one(store, at(500)).await.id, running);

    for status in [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled] {
        store.prune(status, later, 1_000).await.unwrap();
    }
    assert!(matches!(store.get(series.id).await, Err(Error::NotFound { .. })));
    assert_eq!(get(store, pending).await.status, TaskStatus::Pending);
    assert_eq!(get(store, running).await.status, TaskStatus::Running);
    // The series goes on from its pending occurrence.
    assert_eq!(get(store, next).await.status, TaskStatus::Pending);
    let second = claim_one(store, later).await;
    assert_eq!(second.id, next);
    let after = finish(store, &second, complete(json!(2)), later).await;
    assert!(
        super::scenarios::applied_next(after).is_some(),
        "the series enqueues its next occurrence after its first was pruned"
    );
}

async fn one_caller_a_period_takes_a_chores_turn(store: &dyn Storage) {
    let every = Duration::from_secs(60);
    assert!(store.take_turn("retention", T0, every).await.unwrap());
    assert!(!store.take_turn("retention", at(59_000), every).await.unwrap());
    assert!(
        store.take_turn("other", at(59_000), every).await.unwrap(),
        "chores are separate"
    );
    assert!(store.take_turn("retention", at(60_000), every).await.unwrap());

    // Many callers at the same moment: one turn.
    let now = at(200_000);
    let answers = join_all((0..8).map(|_| store.take_turn("retention", now, every))).await;
    let taken = answers.into_iter().filter(|a| *a.as_ref().unwrap()).count();
    assert_eq!(taken, 1, "one of eight simultaneous callers takes the turn");
}

fn beat(worker: &str, last_seen: OffsetDateTime, running: u64) -> WorkerBeat {
    WorkerBeat {
        worker_id: worker.into(),
        host: "host-a".into(),
        pid: 4242,
        version: "1.2.3".into(),
        queues: vec![("default".into(), 4), ("emails".into(), 2)],
        running,
        done: crate::upkeep::WorkerCounts {
            completed: 10 * running,
            failed: 1,
            retried: 2,
        },
        started_at: T0,
        last_seen,
        expires_at: last_seen + Duration::from_secs(30),
    }
}

async fn beats_are_replaced_listed_and_removed(store: &dyn Storage) {
    assert!(store.workers().await.unwrap().is_empty());
    store.beat(beat("w1", at(1_000), 1)).await.unwrap();
    store.beat(beat("w2", at(1_000), 0)).await.unwrap();
    store.beat(beat("w1", at(6_000), 3)).await.unwrap();
    let mut workers = store.workers().await.unwrap();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    assert_eq!(workers, vec![beat("w1", at(6_000), 3), beat("w2", at(1_000), 0)]);
    assert!(workers[1].alive(at(30_000)) && !workers[1].alive(at(31_000)));

    assert!(store.remove_worker("w1").await.unwrap());
    assert!(!store.remove_worker("w1").await.unwrap());
    let left: Vec<String> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.worker_id)
        .collect();
    assert_eq!(left, ["w2"]);
}

async fn a_long_expired_beat_is_deleted_by_the_next_beat(store: &dyn Storage) {
    store.beat(beat("gone", T0, 2)).await.unwrap();
    // Expired, but within the hour a missing worker is shown.
    store.beat(beat("alive", at(600_000), 0)).await.unwrap();
    assert_eq!(store.workers().await.unwrap().len(), 2);
    // More than an hour past its expiry: the next beat deletes it.
    let hours = T0 + crate::upkeep::GONE_KEPT + Duration::from_secs(120);
    store.beat(beat("alive", hours, 0)).await.unwrap();
    let left: Vec<String> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.worker_id)
        .collect();
    assert_eq!(left, ["alive"]);
}
