//! Scenarios of flow control: a queue's limit across claimers, the window of
//! a concurrency key (in order, through retries, with failed tasks held or
//! not), start rates per queue and per key, the settings as stored, and
//! snoozes, which are not attempts.

use std::time::Duration;

use serde_json::json;

use super::scenarios::{at, claim, complete, enqueue_at, error, finish, get, new, T0};
use super::Scenario;
use crate::flow::{QueueLimits, Rate};
use crate::storage::{ClaimRequest, Storage};
use crate::task::{Outcome, Task, TaskId, TaskStatus};

scenarios![
    a_queue_limit_caps_running_tasks_across_claimers,
    an_expired_lease_frees_its_slot,
    a_key_window_of_one_runs_a_keys_tasks_in_order_through_retries,
    a_failed_task_leaves_its_keys_window_unless_held,
    a_key_window_counts_only_its_queue,
    a_queue_rate_allows_bursts_then_refills,
    a_key_rate_limits_each_key_alone,
    limits_are_stored_listed_and_cleared,
    a_snooze_is_not_an_attempt,
];

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|task| task.id).collect()
}

async fn limit(store: &dyn Storage, limits: QueueLimits) {
    store
        .set_queue_limits(crate::DEFAULT_QUEUE, limits)
        .await
        .expect("set limits");
}

async fn a_queue_limit_caps_running_tasks_across_claimers(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            limit: Some(2),
            ..QueueLimits::default()
        },
    )
    .await;
    let tasks = enqueue_at(store, (0..5).map(|_| new("send")).collect(), T0).await;
    let first = claim(store, "w1", 8, at(1)).await;
    assert_eq!(ids(&first), tasks[..2], "the limit, in claim order");
    assert!(
        claim(store, "w2", 8, at(2)).await.is_empty(),
        "another claimer waits too"
    );
    finish(store, &first[0], complete(json!(null)), at(3)).await;
    let next = claim(store, "w2", 8, at(4)).await;
    assert_eq!(ids(&next), tasks[2..3], "a finished task frees one slot");
    // Clearing the limit restores claims without one.
    limit(store, QueueLimits::default()).await;
    assert_eq!(claim(store, "w3", 8, at(5)).await.len(), 2);
}

async fn an_expired_lease_frees_its_slot(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            limit: Some(1),
            ..QueueLimits::default()
        },
    )
    .await;
    enqueue_at(store, vec![new("a"), new("b")], T0).await;
    let first = claim(store, "w1", 8, at(1)).await;
    assert_eq!(first.len(), 1);
    let expires = first[0].lease.as_ref().unwrap().expires_at;
    let before = store
        .claim(request("w2", expires - Duration::from_millis(1)))
        .await
        .unwrap();
    assert!(before.is_empty(), "a live lease holds its slot");
    let after = store.claim(request("w2", expires)).await.unwrap();
    assert_eq!(after.len(), 1, "a lease that ran out counts no more");
    let flows = store.queue_flows(expires).await.unwrap();
    assert_eq!(
        flows[0].running, 1,
        "the new claim runs; the expired one is not counted"
    );
}

fn request(worker: &str, now: time::OffsetDateTime) -> ClaimRequest {
    ClaimRequest {
        queue: crate::DEFAULT_QUEUE.into(),
        worker_id: worker.into(),
        limit: 8,
        lease_for: super::scenarios::LEASE,
        now,
    }
}

async fn a_key_window_of_one_runs_a_keys_tasks_in_order_through_retries(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            per_key: Some(1),
            ..QueueLimits::default()
        },
    )
    .await;
    let keyed = |key: &str| new("sync").concurrency_key(key).max_retries(3);
    // A later task of a key with a higher priority still waits its turn.
    let tasks = enqueue_at(
        store,
        vec![keyed("a"), keyed("a").priority(5), keyed("b"), new("free")],
        T0,
    )
    .await;
    let (a1, a2, b1, free) = (tasks[0], tasks[1], tasks[2], tasks[3]);
    assert_eq!(get(store, a2).await.concurrency_key.as_deref(), Some("a"));
    let first = claim(store, "w1", 8, at(1)).await;
    let mut got = ids(&first);
    got.sort();
    let mut want = vec![a1, b1, free];
    want.sort();
    assert_eq!(got, want, "the first of each key, and the task without one");
    // a1 fails and waits for its retry: a2 must not overtake it.
    let a1_task = first.iter().find(|task| task.id == a1).unwrap();
    finish(
        store,
        a1_task,
        Outcome::Retry {
            error: error(1),
            at: at(10_000),
        },
        at(2),
    )
    .await;
    assert!(
        claim(store, "w1", 8, at(3)).await.is_empty(),
        "a2 waits behind a1's retry"
    );
    let retried = claim(store, "w1", 8, at(10_000)).await;
    assert_eq!(ids(&retried), [a1]);
    finish(store, &retried[0], complete(json!(1)), at(10_001)).await;
    assert_eq!(ids(&claim(store, "w1", 8, at(10_002)).await), [a2]);
}

async fn a_failed_task_leaves_its_keys_window_unless_held(store: &dyn Storage) {
    for hold in [false, true] {
        let queue = if hold { "held" } else { "goes-on" };
        store
            .set_queue_limits(
                queue,
                QueueLimits {
                    per_key: Some(1),
                    hold_failed: hold,
                    ..QueueLimits::default()
                },
            )
            .await
            .unwrap();
        let keyed = || new("sync").queue(queue).concurrency_key("k").max_retries(0);
        let tasks = enqueue_at(store, vec![keyed(), keyed()], T0).await;
        let claim_in = |now| {
            store.claim(ClaimRequest {
                queue: queue.into(),
                ..request("w1", now)
            })
        };
        let first = claim_in(at(1)).await.unwrap();
        assert_eq!(ids(&first), tasks[..1]);
        finish(store, &first[0], Outcome::Fail { error: error(1) }, at(2)).await;
        let next = claim_in(at(3)).await.unwrap();
        match hold {
            false => assert_eq!(ids(&next), tasks[1..], "a failed task leaves the window"),
            true => {
                assert!(next.is_empty(), "a failed task holds the key's window");
                // Retried by hand, it runs first; then the next.
                store.retry(tasks[0], at(4)).await.unwrap();
                let again = claim_in(at(5)).await.unwrap();
                assert_eq!(ids(&again), tasks[..1]);
                finish(store, &again[0], complete(json!(null)), at(6)).await;
                assert_eq!(ids(&claim_in(at(7)).await.unwrap()), tasks[1..]);
            }
        }
    }
}

async fn a_key_window_counts_only_its_queue(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            per_key: Some(1),
            ..QueueLimits::default()
        },
    )
    .await;
    // The same key in an unlimited queue neither holds nor is held.
    let other = enqueue_at(store, vec![new("x").queue("other").concurrency_key("k")], T0).await;
    let here = enqueue_at(store, vec![new("x").concurrency_key("k")], T0).await;
    assert_eq!(ids(&claim(store, "w1", 8, at(1)).await), here);
    let there = store
        .claim(ClaimRequest {
            queue: "other".into(),
            ..request("w1", at(1))
        })
        .await
        .unwrap();
    assert_eq!(ids(&there), other);
}

async fn a_queue_rate_allows_bursts_then_refills(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            rate: Some(Rate::per_second(2).unwrap()),
            ..QueueLimits::default()
        },
    )
    .await;
    enqueue_at(store, (0..6).map(|_| new("call")).collect(), T0).await;
    assert_eq!(
        claim(store, "w1", 8, at(1_000)).await.len(),
        2,
        "a burst of the rate's count"
    );
    assert!(claim(store, "w2", 8, at(1_000)).await.is_empty());
    let flows = store.queue_flows(at(1_000)).await.unwrap();
    assert_eq!(
        flows[0].next_start(at(1_000)),
        at(1_500),
        "one start every half second"
    );
    assert_eq!(claim(store, "w2", 8, at(1_499)).await.len(), 0);
    assert_eq!(claim(store, "w2", 8, at(1_500)).await.len(), 1);
    assert_eq!(
        claim(store, "w2", 8, at(60_000)).await.len(),
        2,
        "the burst again, no more"
    );
}

async fn a_key_rate_limits_each_key_alone(store: &dyn Storage) {
    limit(
        store,
        QueueLimits {
            key_rate: Some(Rate::per_second(1).unwrap()),
            ..QueueLimits::default()
        },
    )
    .await;
    let keyed = |key: &str| new("call").concurrency_key(key);
    let tasks = enqueue_at(store, vec![keyed("a"), keyed("a"), keyed("b"), new("free")], T0).await;
    let mut got = ids(&claim(store, "w1", 8, at(1)).await);
    got.sort();
    let mut want = vec![tasks[0], tasks[2], tasks[3]];
    want.sort();
    assert_eq!(got, want);
    assert!(claim(store, "w1", 8, at(999)).await.is_empty());
    assert_eq!(ids(&claim(store, "w1", 8, at(1_001)).await), [tasks[1]]);
}

async fn limits_are_stored_listed_and_cleared(store: &dyn Storage) {
    let limits = QueueLimits {
        limit: Some(5),
        per_key: Some(1),
        hold_failed: true,
        rate: Some("100/s".parse().unwrap()),
        key_rate: Some("6/m".parse().unwrap()),
    };
    store.set_queue_limits("emails", limits.clone()).await.unwrap();
    store
        .set_queue_limits(
            "api",
            QueueLimits {
                limit: Some(1),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    enqueue_at(store, vec![new("mail").queue("emails")], T0).await;
    store
        .claim(ClaimRequest {
            queue: "emails".into(),
            ..request("w1", at(1))
        })
        .await
        .unwrap();
    let flows = store.queue_flows(at(2)).await.unwrap();
    let names: Vec<&str> = flows.iter().map(|flow| flow.queue.as_str()).collect();
    assert_eq!(names, ["api", "emails"]);
    assert_eq!(flows[1].limits, limits);
    assert_eq!(flows[1].running, 1);
    assert!(flows[1].queue_tat.is_some(), "the start moved the bucket on");
    assert_eq!(flows[0].running, 0);
    // Replacing replaces; unlimited settings remove the queue's entry.
    let fewer = QueueLimits {
        limit: Some(2),
        ..QueueLimits::default()
    };
    store.set_queue_limits("emails", fewer.clone()).await.unwrap();
    store
        .set_queue_limits("api", QueueLimits::default())
        .await
        .unwrap();
    let flows = store.queue_flows(at(3)).await.unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].queue.as_str(), &flows[0].limits), ("emails", &fewer));
    // Bad settings and names are refused before they reach the store.
    let zero = QueueLimits {
        limit: Some(0),
        ..QueueLimits::default()
    };
    assert!(store.set_queue_limits("emails", zero).await.is_err());
    assert!(store.set_queue_limits("has space", fewer).await.is_err());
    assert_eq!(store.queue_flows(at(4)).await.unwrap()[0].limits.limit, Some(2));
}

async fn a_snooze_is_not_an_attempt(store: &dyn Storage) {
    let id = enqueue_at(store, vec![new("poll").max_retries(0)], T0).await[0];
    for round in 1..=3u64 {
        let claimed = claim(store, "w1", 1, at(round * 1_000)).await;
        assert_eq!(claimed.len(), 1, "round {round}");
        assert_eq!(claimed[0].attempts, 1, "a snooze gave its attempt back");
        finish(
            store,
            &claimed[0],
            Outcome::Snooze {
                at: at(round * 1_000 + 500),
            },
            at(round * 1_000 + 1),
        )
        .await;
        let task = get(store, id).await;
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!((task.attempts, task.snoozes), (0, round as u32));
        assert_eq!(task.eta, at(round * 1_000 + 500));
        assert!(task.errors.is_empty());
    }
    let claimed = claim(store, "w1", 1, at(5_000)).await;
    finish(store, &claimed[0], complete(json!("done")), at(5_001)).await;
    let task = get(store, id).await;
    assert_eq!(
        (task.status, task.attempts, task.snoozes),
        (TaskStatus::Completed, 1, 3)
    );
}
