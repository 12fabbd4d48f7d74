//! Scenarios of unique keys held over a period (`unique_for`) and of the
//! meta map carried with a task: what holds a key after its task finished,
//! when it is free again, and that both are kept with the record.

use std::time::Duration;

use serde_json::json;

use super::scenarios::{at, claim_one, complete, error, finish, get, make, new, T0};
use super::Scenario;
use crate::queue::Enqueued;
use crate::storage::Storage;
use crate::task::{Outcome, TaskStatus};

scenarios![
    a_window_holds_the_key_after_its_task_completed,
    a_window_can_leave_failed_and_cancelled_tasks_out,
    windows_and_meta_are_kept_with_the_record,
    a_duplicate_inside_a_window_answers_the_holder_in_one_call,
];

const HOUR: Duration = Duration::from_secs(3600);

async fn a_window_holds_the_key_after_its_task_completed(store: &dyn Storage) {
    let key = "invoice:7";
    let first = make(new("bill").unique_key(key).unique_for(HOUR), T0);
    assert!(!store.enqueue(vec![first.clone()]).await.unwrap()[0].duplicate);
    let task = claim_one(store, at(1_000)).await;
    finish(store, &task, complete(json!("sent")), at(2_000)).await;
    assert_eq!(get(store, first.id).await.status, TaskStatus::Completed);

    // Inside the hour the completed task still holds the key, for keyed
    // enqueues with or without a window of their own.
    for again in [
        make(new("bill").unique_key(key), at(60_000)),
        make(new("bill").unique_key(key).unique_for(HOUR), at(3_599_999)),
    ] {
        let answer = store.enqueue(vec![again.clone()]).await.unwrap();
        assert_eq!(
            answer,
            [Enqueued {
                id: first.id,
                duplicate: true
            }]
        );
        assert!(store.get(again.id).await.is_err(), "a duplicate stores nothing");
    }
    // At the end of the hour the key is free.
    let later = make(new("bill").unique_key(key), T0 + HOUR);
    let answer = store.enqueue(vec![later.clone()]).await.unwrap();
    assert_eq!(
        answer,
        [Enqueued {
            id: later.id,
            duplicate: false
        }]
    );
}

async fn a_window_can_leave_failed_and_cancelled_tasks_out(store: &dyn Storage) {
    let key = "sync:42";
    let window = |task: crate::NewTask| {
        task.unique_key(key)
            .unique_for(HOUR)
            .unique_finished(&[TaskStatus::Completed])
    };
    // Failed for good: the key is free at once.
    let first = make(window(new("sync").max_retries(0)), T0);
    store.enqueue(vec![first.clone()]).await.unwrap();
    let task = claim_one(store, at(1)).await;
    finish(store, &task, Outcome::Fail { error: error(1) }, at(2)).await;
    let second = make(window(new("sync")), at(3));
    assert!(!store.enqueue(vec![second.clone()]).await.unwrap()[0].duplicate);
    // While pending it holds the key, window or not.
    let third = make(new("sync").unique_key(key), at(4));
    assert_eq!(store.enqueue(vec![third]).await.unwrap()[0].id, second.id);
    // Cancelled: free at once too.
    store.cancel(second.id, at(5)).await.unwrap();
    let fourth = make(window(new("sync")), at(6));
    assert!(!store.enqueue(vec![fourth.clone()]).await.unwrap()[0].duplicate);
    // Completed: held for the hour.
    let task = claim_one(store, at(7)).await;
    assert_eq!(task.id, fourth.id);
    finish(store, &task, complete(json!(null)), at(8)).await;
    let fifth = make(window(new("sync")), at(9));
    assert_eq!(store.enqueue(vec![fifth]).await.unwrap()[0].id, fourth.id);
}

async fn windows_and_meta_are_kept_with_the_record(store: &dyn Storage) {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let task = make(
        new("report")
            .unique_key("report:monthly")
            .unique_for(HOUR)
            .unique_finished(&[TaskStatus::Completed, TaskStatus::Failed])
            .meta("traceparent", parent)
            .meta("tracestate", "vendor=1"),
        T0,
    );
    store.enqueue(vec![task.clone()]).await.unwrap();
    let stored = get(store, task.id).await;
    assert_eq!(stored.meta, task.meta);
    assert_eq!(stored.meta.get("traceparent").map(String::as_str), Some(parent));
    let window = stored.unique_window.clone().expect("the window is stored");
    assert_eq!(window.period, HOUR);
    assert_eq!(window.until, T0 + HOUR);
    assert_eq!(window.finished, [TaskStatus::Completed, TaskStatus::Failed]);
    // A claim and a finish keep both.
    let claimed = claim_one(store, at(1)).await;
    assert_eq!(claimed.meta, task.meta);
    finish(store, &claimed, complete(json!(1)), at(2)).await;
    let done = get(store, task.id).await;
    assert_eq!((done.meta, done.unique_window), (task.meta, Some(window)));
}

async fn a_duplicate_inside_a_window_answers_the_holder_in_one_call(store: &dyn Storage) {
    // Two records of one call with one key: the second is the first's duplicate.
    let key = "digest:weekly";
    let a = make(new("digest").unique_key(key).unique_for(HOUR), T0);
    let b = make(new("digest").unique_key(key).unique_for(HOUR), T0);
    let answers = store.enqueue(vec![a.clone(), b]).await.unwrap();
    assert_eq!(
        answers,
        [
            Enqueued {
                id: a.id,
                duplicate: false
            },
            Enqueued {
                id: a.id,
                duplicate: true
            }
        ]
    );
    // Pruning the holder frees its key before the window ends.
    let task = claim_one(store, at(1)).await;
    finish(store, &task, complete(json!(1)), at(2)).await;
    assert_eq!(store.prune(TaskStatus::Completed, at(3), 10).await.unwrap(), 1);
    let c = make(new("digest").unique_key(key), at(3));
    assert!(!store.enqueue(vec![c]).await.unwrap()[0].duplicate);
}
