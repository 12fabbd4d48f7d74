//! Scenarios of queues, priorities, unique keys and pausing: which tasks a
//! claim of one queue takes and in what order, what a paused queue gives, how
//! an enqueue answers a duplicate, and what a store reports per queue.

use futures::future::join_all;
use serde_json::json;

use super::scenarios::{
    all_tasks, at, claim_one, complete, enqueue_at, enqueue_one, error, finish, get, make, new, secs, LEASE,
    T0,
};
use super::Scenario;
use crate::error::Error;
use crate::queue::{Enqueued, DEFAULT_QUEUE};
use crate::storage::{ClaimRequest, ListQuery, Storage};
use crate::task::{Outcome, Task, TaskId, TaskStatus};

scenarios![
    a_claim_takes_only_its_queue,
    claims_order_by_priority_then_eta_then_id,
    a_paused_queue_is_skipped_until_resumed,
    queue_names_are_checked,
    a_unique_key_admits_one_live_task,
    a_unique_key_is_free_again_once_its_task_ends,
    concurrent_enqueuers_of_one_key_store_one_task,
    a_retry_is_refused_while_another_task_holds_its_key,
    interval_occurrences_keep_queue_priority_and_key,
    queue_stats_count_each_queue,
    lists_filter_by_queue,
    lists_filter_by_handler,
];

pub(super) async fn claim_from(
    store: &dyn Storage,
    queue: &str,
    limit: usize,
    now: time::OffsetDateTime,
) -> Vec<Task> {
    store
        .claim(ClaimRequest {
            queue: queue.into(),
            worker_id: "w1".into(),
            limit,
            lease_for: LEASE,
            now,
        })
        .await
        .expect("claim")
}

/// Two tasks in the `emails` queue, due at once.
async fn two_emails(store: &dyn Storage) -> Vec<TaskId> {
    enqueue_at(
        store,
        vec![new("e").queue("emails"), new("e").queue("emails")],
        T0,
    )
    .await
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

async fn a_claim_takes_only_its_queue(store: &dyn Storage) {
    let plain = enqueue_at(store, vec![new("a"), new("a")], T0).await;
    let emails = two_emails(store).await;
    let stored = get(store, plain[0]).await;
    assert_eq!(stored.queue, DEFAULT_QUEUE);
    assert_eq!(stored.priority, 0);

    assert_eq!(ids(&claim_from(store, "emails", 10, at(1)).await), emails);
    assert!(claim_from(store, "emails", 10, at(1)).await.is_empty());
    assert!(claim_from(store, "nothing-here", 10, at(1)).await.is_empty());
    assert_eq!(ids(&claim_from(store, DEFAULT_QUEUE, 10, at(1)).await), plain);
}

async fn claims_order_by_priority_then_eta_then_id(store: &dyn Storage) {
    // Enqueued in an order that matches none of the three keys.
    let tasks = vec![
        new("low-early").priority(-5).eta(at(10)),
        new("mid-late").eta(at(30)),
        new("high-future").priority(9).eta(at(5_000)),
        new("mid-early").eta(at(10)),
        new("high-late").priority(9).eta(at(40)),
        new("mid-early-second").eta(at(10)),
        new("high-early").priority(9).eta(at(20)),
        new("top").priority(i16::MAX).eta(at(50)),
        new("bottom").priority(i16::MIN).eta(at(0)),
    ];
    enqueue_at(store, tasks, T0).await;
    let mut order = Vec::new();
    // One claim of two, then one at a time: the order holds across claims.
    order.extend(claim_from(store, DEFAULT_QUEUE, 2, at(100)).await);
    loop {
        let claimed = claim_from(store, DEFAULT_QUEUE, 1, at(100)).await;
        if claimed.is_empty() {
            break;
        }
        order.extend(claimed);
    }
    let names: Vec<&str> = order.iter().map(|t| t.func_path.as_str()).collect();
    assert_eq!(
        names,
        [
            "top",
            "high-early",
            "high-late",
            "mid-early",
            "mid-early-second",
            "mid-late",
            "low-early",
            "bottom"
        ]
    );
    // The future task of the highest priority waits for its eta.
    assert_eq!(claim_one(store, at(5_000)).await.func_path, "high-future");

    // One claim returns its tasks in the claim order too.
    let later = (0..4)
        .map(|i| new("batch").priority(i % 2).eta(at(6_000 + i as u64)))
        .collect();
    enqueue_at(store, later, T0).await;
    let batch = claim_from(store, DEFAULT_QUEUE, 10, at(7_000)).await;
    let keys: Vec<(i16, time::OffsetDateTime)> = batch.iter().map(|t| (t.priority, t.eta)).collect();
    assert_eq!(
        keys,
        [(1, at(6_001)), (1, at(6_003)), (0, at(6_000)), (0, at(6_002))]
    );
}

async fn a_paused_queue_is_skipped_until_resumed(store: &dyn Storage) {
    let emails = two_emails(store).await;
    let plain = enqueue_one(store, new("a")).await;
    let running = claim_from(store, "emails", 1, at(1)).await;
    assert_eq!(ids(&running), [emails[0]]);

    store.set_paused("emails", true).await.unwrap();
    store.set_paused("emails", true).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), ["emails"]);
    assert!(claim_from(store, "emails", 10, at(2)).await.is_empty());
    let queues = [String::from("emails")];
    assert_eq!(
        store.next_due(&queues).await.unwrap(),
        None,
        "a paused queue has nothing due"
    );
    // Other queues go on; the running task of the paused queue finishes.
    assert_eq!(ids(&claim_from(store, DEFAULT_QUEUE, 10, at(2)).await), [plain]);
    finish(store, &running[0], complete(json!(1)), at(3)).await;
    assert_eq!(get(store, emails[0]).await.status, TaskStatus::Completed);
    assert_eq!(get(store, emails[1]).await.status, TaskStatus::Pending);

    store.set_paused("emails", false).await.unwrap();
    store.set_paused("never-paused", false).await.unwrap();
    assert!(store.paused().await.unwrap().is_empty());
    assert_eq!(store.next_due(&queues).await.unwrap(), Some(T0));
    assert_eq!(ids(&claim_from(store, "emails", 10, at(4)).await), [emails[1]]);
}

async fn queue_names_are_checked(store: &dyn Storage) {
    for bad in ["", "..", "a/b", "with space", &"q".repeat(65)] {
        let task = Task {
            queue: bad.to_owned(),
            ..make(new("a"), T0)
        };
        let refused = store.enqueue(vec![task]).await.unwrap_err();
        assert!(
            matches!(refused, Error::InvalidConfig { .. }),
            "{bad:?}: {refused:?}"
        );
        let refused = store.set_paused(bad, true).await.unwrap_err();
        assert!(
            matches!(refused, Error::InvalidConfig { .. }),
            "{bad:?}: {refused:?}"
        );
    }
    let keyless = Task {
        unique_key: Some(String::new()),
        ..make(new("a"), T0)
    };
    assert!(matches!(
        store.enqueue(vec![keyless]).await,
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(store.counts().await.unwrap().total(), 0);
    assert!(store.paused().await.unwrap().is_empty());
}

async fn a_unique_key_admits_one_live_task(store: &dyn Storage) {
    let first = make(new("invoice").unique_key("invoice:42"), T0);
    let answer = store.enqueue(vec![first.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: first.id,
            duplicate: false
        }]
    );

    // A second enqueue stores nothing and answers the live task's id, in a
    // call of its own or among others.
    let again = make(new("invoice").unique_key("invoice:42").args(vec![json!(2)]), T0);
    let answer = store.enqueue(vec![again.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: first.id,
            duplicate: true
        }]
    );
    let other = make(new("invoice").unique_key("invoice:43"), T0);
    let twin = make(new("invoice").unique_key("invoice:43"), T0);
    let keyless = make(new("plain"), T0);
    let answer = store
        .enqueue(vec![again.clone(), other.clone(), twin.clone(), keyless.clone()])
        .await
        .unwrap();
    assert_eq!(
        answer,
        [
            Enqueued {
                id: first.id,
                duplicate: true
            },
            Enqueued {
                id: other.id,
                duplicate: false
            },
            Enqueued {
                id: other.id,
                duplicate: true
            },
            Enqueued {
                id: keyless.id,
                duplicate: false
            },
        ]
    );
    assert!(matches!(store.get(again.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.get(twin.id).await, Err(Error::NotFound { .. })));
    assert_eq!(store.counts().await.unwrap().total(), 3);
    assert_eq!(
        get(store, first.id).await.unique_key.as_deref(),
        Some("invoice:42")
    );

    // Running still holds the key.
    let running = claim_one(store, at(1)).await;
    assert_eq!(running.id, first.id);
    let answer = store.enqueue(vec![again.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: first.id,
            duplicate: true
        }]
    );

    // Finished records (history brought over by a migration) are stored as
    // they are and hold no key.
    let mut old = make(new("invoice").unique_key("invoice:42"), T0);
    old.claim("elsewhere", LEASE, T0).unwrap();
    let token = old.lease.as_ref().unwrap().token;
    old.finish(token, complete(json!(0)), at(1)).unwrap();
    let answer = store.import(vec![old.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: old.id,
            duplicate: false
        }]
    );
}

async fn a_unique_key_is_free_again_once_its_task_ends(store: &dyn Storage) {
    let key = "report:daily";
    // Completed.
    let first = enqueue_one(store, new("r").unique_key(key)).await;
    let task = claim_one(store, at(1)).await;
    finish(store, &task, complete(json!(1)), at(2)).await;
    let second = make(new("r").unique_key(key), at(3));
    let answer = store.enqueue(vec![second.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: second.id,
            duplicate: false
        }]
    );
    assert_ne!(first, second.id);
    // Cancelled.
    store.cancel(second.id, at(4)).await.unwrap();
    let third = make(new("r").unique_key(key).max_retries(0), at(5));
    assert!(!store.enqueue(vec![third.clone()]).await.unwrap()[0].duplicate);
    // Failed for good.
    let task = claim_one(store, at(6)).await;
    let outcome = Outcome::Fail { error: error(1) };
    finish(store, &task, outcome, at(7)).await;
    assert_eq!(get(store, third.id).await.status, TaskStatus::Failed);
    let fourth = make(new("r").unique_key(key), at(8));
    assert!(!store.enqueue(vec![fourth.clone()]).await.unwrap()[0].duplicate);
    // A retry waiting for its time still holds the key.
    let task = claim_one(store, at(9)).await;
    let outcome = Outcome::Retry {
        error: error(1),
        at: at(60_000),
    };
    finish(store, &task, outcome, at(10)).await;
    assert_eq!(get(store, fourth.id).await.status, TaskStatus::Pending);
    let fifth = make(new("r").unique_key(key), at(11));
    assert_eq!(store.enqueue(vec![fifth]).await.unwrap()[0].id, fourth.id);
    assert_eq!(store.counts().await.unwrap().total(), 4);
}

/// Many enqueuers of one key at once, each with its own id: exactly one task
/// is stored and every answer names it.
async fn concurrent_enqueuers_of_one_key_store_one_task(store: &dyn Storage) {
    let calls = (0..16).map(|i| {
        let task = make(new("once").unique_key("only-one").args(vec![json!(i)]), T0);
        async move { store.enqueue(vec![task]).await.unwrap().remove(0) }
    });
    let answers = join_all(calls).await;
    let stored: Vec<&Enqueued> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(stored.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.id == stored[0].id), "{answers:?}");
    assert_eq!(all_tasks(store).await.len(), 1);
}

async fn a_retry_is_refused_while_another_task_holds_its_key(store: &dyn Storage) {
    let failed = enqueue_one(store, new("k").unique_key("k").max_retries(0)).await;
    let task = claim_one(store, at(1)).await;
    let outcome = Outcome::Fail { error: error(1) };
    finish(store, &task, outcome, at(2)).await;
    let holder = enqueue_one(store, new("k").unique_key("k")).await;
    assert_ne!(holder, failed);
    let refused = store.retry(failed, at(3)).await.unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    assert!(refused.to_string().contains(&holder.to_string()), "{refused}");
    assert_eq!(get(store, failed).await.status, TaskStatus::Failed);

    store.cancel(holder, at(4)).await.unwrap();
    store.retry(failed, at(5)).await.unwrap();
    assert_eq!(get(store, failed).await.status, TaskStatus::Pending);
    let again = make(new("k").unique_key("k"), at(6));
    assert_eq!(store.enqueue(vec![again]).await.unwrap()[0].id, failed);
}

async fn interval_occurrences_keep_queue_priority_and_key(store: &dyn Storage) {
    let first = enqueue_one(
        store,
        new("tick")
            .queue("ticks")
            .priority(3)
            .unique_key("tick")
            .interval(secs(10)),
    )
    .await;
    let task = claim_from(store, "ticks", 1, at(1)).await.remove(0);
    let answer = finish(store, &task, complete(json!(1)), at(2)).await;
    let next = super::scenarios::applied_next(answer).expect("a next occurrence");
    let next_task = get(store, next).await;
    assert_eq!(next_task.queue, "ticks");
    assert_eq!(next_task.priority, 3);
    assert_eq!(next_task.unique_key.as_deref(), Some("tick"));
    // The next occurrence holds the key now.
    let again = make(new("tick").queue("ticks").unique_key("tick"), at(3));
    assert_eq!(store.enqueue(vec![again]).await.unwrap()[0].id, next);
    assert_eq!(get(store, first).await.status, TaskStatus::Completed);
}

async fn queue_stats_count_each_queue(store: &dyn Storage) {
    assert!(store.queue_stats().await.unwrap().is_empty());
    enqueue_at(
        store,
        vec![
            new("a").eta(at(50)),
            new("a").eta(at(20)),
            new("e").queue("emails").eta(at(5_000)),
        ],
        T0,
    )
    .await;
    let running = claim_one(store, at(30)).await;
    assert_eq!(running.eta, at(20));
    store.set_paused("idle", true).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    let names: Vec<&str> = stats.iter().map(|s| s.queue.as_str()).collect();
    assert_eq!(names, ["default", "emails", "idle"]);
    assert_eq!((stats[0].counts.pending, stats[0].counts.running), (1, 1));
    assert_eq!(stats[0].oldest_eta, Some(at(50)));
    assert!(!stats[0].paused);
    assert_eq!(stats[1].counts.pending, 1);
    assert_eq!(stats[1].oldest_eta, Some(at(5_000)));
    assert_eq!(stats[2].counts.total(), 0);
    assert!(stats[2].paused);
    assert_eq!(stats[2].oldest_eta, None);
}

async fn lists_filter_by_queue(store: &dyn Storage) {
    let emails = two_emails(store).await;
    enqueue_at(store, vec![new("a"), new("a")], T0).await;
    let listed = store
        .list(ListQuery {
            queue: Some("emails".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&listed), emails);
    let listed = store
        .list(ListQuery {
            queue: Some("emails".into()),
            status: Some(TaskStatus::Pending),
            limit: Some(1),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&listed), [emails[0]]);
}

async fn lists_filter_by_handler(store: &dyn Storage) {
    let sends = enqueue_at(
        store,
        vec![new("email.send"), new("other"), new("email.send")],
        T0,
    )
    .await;
    let finished = claim_one(store, at(1)).await;
    assert_eq!(finished.id, sends[0]);
    finish(store, &finished, complete(json!(1)), at(1)).await;
    let by_handler = |func: &str, status: Option<TaskStatus>, order: crate::storage::ListOrder| ListQuery {
        func_path: Some(func.into()),
        status,
        order,
        ..ListQuery::default()
    };
    let listed = store
        .list(by_handler("email.send", None, Default::default()))
        .await
        .unwrap();
    assert_eq!(ids(&listed), [sends[0], sends[2]]);
    let newest = store
        .list(by_handler(
            "email.send",
            None,
            crate::storage::ListOrder::NewestFirst,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&newest), [sends[2], sends[0]]);
    let pending = store
        .list(by_handler(
            "email.send",
            Some(TaskStatus::Pending),
            Default::default(),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&pending), [sends[2]]);
    assert!(
        store
            .list(by_handler("email", None, Default::default()))
            .await
            .unwrap()
            .is_empty(),
        "the name matches whole"
    );
}
