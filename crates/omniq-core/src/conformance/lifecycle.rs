//! Scenarios of a task's life after its claims: interval series, cancel,
//! manual retry, results, purge, listing and counts, and large batches.

use std::collections::HashSet;

use serde_json::json;

use super::scenarios::*;
use super::Scenario;
use crate::error::Error;
use crate::storage::{
    Finish, FinishOutcome, LeaseRef, ListOrder, ListQuery, RenewOutcome, StatusCounts, Storage,
};
use crate::task::{Outcome, Task, TaskId, TaskStatus};

scenarios![
    interval_completion_enqueues_the_next_occurrence,
    interval_final_failure_enqueues_the_next_occurrence,
    interval_retry_does_not_enqueue_an_occurrence,
    cancel_pending_task,
    cancel_running_task_fences_its_worker,
    cancel_of_a_finished_task_is_refused,
    cancel_stops_a_series_by_any_id,
    manual_retry_of_a_failed_task,
    manual_retry_of_other_statuses_is_refused,
    results_report_value_error_and_attempts,
    purge_removes_only_old_finished_tasks,
    list_orders_filters_and_pages,
    counts_per_status,
    large_batches,
];

async fn interval_completion_enqueues_the_next_occurrence(store: &dyn Storage) {
    let first = enqueue_one(store, new("tick").args(vec![json!(1)]).interval(secs(60))).await;
    let claimed = claim_one(store, T0).await;
    let next =
        applied_next(finish(store, &claimed, complete(json!("ok")), at(500)).await).expect("next occurrence");
    assert_ne!(next, first);
    let task = get(store, next).await;
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.eta, at(500) + secs(60));
    assert_eq!(task.func_path, "tick");
    assert_eq!(task.args, vec![json!(1)]);
    assert_eq!(task.interval, Some(secs(60)));
    assert_eq!(task.attempts, 0);
    assert_eq!(task.series, Some(first));
    assert_eq!(get(store, first).await.result, Some(json!("ok")));
    assert!(claim(store, "w", 1, at(60_499)).await.is_empty());
    assert_eq!(claim_one(store, at(60_500)).await.id, next);
}

async fn interval_final_failure_enqueues_the_next_occurrence(store: &dyn Storage) {
    let first = enqueue_one(store, new("tick").interval(secs(10)).max_retries(0)).await;
    let claimed = claim_one(store, T0).await;
    let outcome = Outcome::Retry {
        error: error(1),
        at: at(1),
    };
    let next = applied_next(finish(store, &claimed, outcome, at(100)).await).expect("next occurrence");
    assert_eq!(get(store, first).await.status, TaskStatus::Failed);
    assert_eq!(get(store, next).await.eta, at(100) + secs(10));
}

async fn interval_retry_does_not_enqueue_an_occurrence(store: &dyn Storage) {
    enqueue_one(store, new("tick").interval(secs(10)).max_retries(2)).await;
    let claimed = claim_one(store, T0).await;
    let outcome = Outcome::Retry {
        error: error(1),
        at: at(1),
    };
    assert_eq!(applied_next(finish(store, &claimed, outcome, at(1)).await), None);
    assert_eq!(store.counts().await.unwrap().total(), 1);
}

async fn cancel_pending_task(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    assert_eq!(store.cancel(id, at(5)).await.unwrap(), vec![id]);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.finished_at, Some(at(5)));
    assert!(claim(store, "w", 1, at(10)).await.is_empty());
}

async fn cancel_running_task_fences_its_worker(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim_one(store, T0).await;
    store.cancel(id, at(1)).await.unwrap();
    let token = claimed.lease.as_ref().unwrap().token;
    let renewed = store
        .renew(&[LeaseRef { id, token }], LEASE, at(2))
        .await
        .unwrap();
    assert_eq!(renewed, vec![RenewOutcome::Lost]);
    assert_eq!(
        finish(store, &claimed, complete(json!(1)), at(3)).await,
        FinishOutcome::LeaseLost
    );
    assert!(store.requeue_expired(at(1_000_000)).await.unwrap().is_empty());
    assert_eq!(get(store, id).await.status, TaskStatus::Cancelled);
}

async fn cancel_of_a_finished_task_is_refused(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim_one(store, T0).await;
    finish(store, &claimed, complete(json!(1)), at(1)).await;
    assert!(matches!(
        store.cancel(id, at(2)).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(get(store, id).await.status, TaskStatus::Completed);
    let cancelled = enqueue_one(store, new("u")).await;
    store.cancel(cancelled, at(1)).await.unwrap();
    assert!(matches!(
        store.cancel(cancelled, at(2)).await,
        Err(Error::Conflict { .. })
    ));
}

async fn cancel_stops_a_series_by_any_id(store: &dyn Storage) {
    let first = enqueue_one(store, new("tick").interval(secs(1))).await;
    let claimed = claim_one(store, T0).await;
    let second = applied_next(finish(store, &claimed, complete(json!(1)), at(1)).await).unwrap();
    // The finished first occurrence's id stops the pending second one.
    assert_eq!(store.cancel(first, at(2)).await.unwrap(), vec![second]);
    assert_eq!(get(store, second).await.status, TaskStatus::Cancelled);
    assert_eq!(get(store, first).await.status, TaskStatus::Completed);
    assert!(claim(store, "w", 10, at(100_000)).await.is_empty());
    assert!(matches!(
        store.cancel(first, at(3)).await,
        Err(Error::Conflict { .. })
    ));

    // A running occurrence is cancelled too, and schedules no successor.
    let other = enqueue_one(store, new("tock").interval(secs(1))).await;
    let running = claim_one(store, at(10)).await;
    assert_eq!(store.cancel(other, at(11)).await.unwrap(), vec![other]);
    assert_eq!(
        finish(store, &running, complete(json!(1)), at(12)).await,
        FinishOutcome::LeaseLost
    );
    assert_eq!(store.counts().await.unwrap().pending, 0);
}

async fn manual_retry_of_a_failed_task(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(0)).await;
    let claimed = claim_one(store, T0).await;
    finish(store, &claimed, Outcome::Fail { error: error(1) }, at(1)).await;
    store.retry(id, at(50)).await.unwrap();
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.attempts, 0);
    assert_eq!(task.eta, at(50));
    assert_eq!(task.finished_at, None);
    let again = claim_one(store, at(50)).await;
    assert_eq!(again.id, id);
    applied_next(finish(store, &again, complete(json!("second time")), at(60)).await);
    assert_eq!(get(store, id).await.error, None);
}

async fn manual_retry_of_other_statuses_is_refused(store: &dyn Storage) {
    let pending = enqueue_one(store, new("p")).await;
    assert!(matches!(
        store.retry(pending, T0).await,
        Err(Error::Conflict { .. })
    ));
    let done = enqueue_one(store, new("d").eta(at(1))).await;
    let claimed = claim(store, "w", 10, at(1)).await;
    assert_eq!(claimed.len(), 2);
    assert!(
        matches!(store.retry(done, at(2)).await, Err(Error::Conflict { .. })),
        "running"
    );
    for task in &claimed {
        finish(store, task, complete(json!(null)), at(2)).await;
    }
    assert!(
        matches!(store.retry(done, at(3)).await, Err(Error::Conflict { .. })),
        "completed"
    );
    assert_eq!(get(store, done).await.status, TaskStatus::Completed);
}

async fn results_report_value_error_and_attempts(store: &dyn Storage) {
    use crate::storage::StorageExt;
    let ok = enqueue_one(store, new("ok")).await;
    let bad = enqueue_one(store, new("bad").max_retries(1).eta(at(1))).await;
    let pending = store.get_result(ok).await.unwrap();
    assert_eq!(
        (pending.status, pending.value, pending.finished_at),
        (TaskStatus::Pending, None, None)
    );

    let claimed = claim_one(store, T0).await;
    finish(store, &claimed, complete(json!({"sum": 3})), at(2)).await;
    let result = store.get_result(ok).await.unwrap();
    assert_eq!(result.status, TaskStatus::Completed);
    assert_eq!(result.value, Some(json!({"sum": 3})));
    assert_eq!(result.attempts, 1);
    assert_eq!(result.finished_at, Some(at(2)));

    for attempt in 1..=2 {
        let claimed = claim_one(store, at(10)).await;
        finish(
            store,
            &claimed,
            Outcome::Retry {
                error: error(attempt),
                at: at(10),
            },
            at(10),
        )
        .await;
    }
    let result = store.get_result(bad).await.unwrap();
    assert_eq!(result.status, TaskStatus::Failed);
    assert_eq!(result.value, None);
    assert_eq!(result.error, Some(error(2)));
    assert_eq!(result.attempts, 2);
    assert!(matches!(
        store.get_result(TaskId::new()).await,
        Err(Error::NotFound { .. })
    ));
}

async fn purge_removes_only_old_finished_tasks(store: &dyn Storage) {
    let ids = enqueue_at(store, (0..5).map(|_| new("t")).collect(), T0).await;
    let claimed = claim(store, "w", 3, T0).await;
    finish(store, &claimed[0], complete(json!(0)), at(100)).await;
    finish(store, &claimed[1], Outcome::Fail { error: error(1) }, at(200)).await;
    store.cancel(ids[3], at(300)).await.unwrap();
    // claimed[2] stays running, ids[4] stays pending.
    assert_eq!(
        store.purge(at(200)).await.unwrap(),
        1,
        "only the one finished before 200ms"
    );
    assert!(matches!(store.get(ids[0]).await, Err(Error::NotFound { .. })));
    assert_eq!(store.purge(at(1_000_000)).await.unwrap(), 2);
    let left: HashSet<TaskId> = all_tasks(store).await.iter().map(|t| t.id).collect();
    assert_eq!(left, HashSet::from([ids[2], ids[4]]));
    assert_eq!(store.purge(at(1_000_000)).await.unwrap(), 0);
}

async fn list_orders_filters_and_pages(store: &dyn Storage) {
    let ids = enqueue_at(store, (0..7).map(|i| new("t").args(vec![json!(i)])).collect(), T0).await;
    assert_eq!(
        all_tasks(store).await.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids
    );
    store.cancel(ids[1], at(1)).await.unwrap();
    store.cancel(ids[4], at(1)).await.unwrap();

    let query = |status, limit, order, after| ListQuery {
        status,
        limit,
        order,
        after,
        queue: None,
        func_path: None,
    };
    let listed = |tasks: Vec<Task>| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    let newest = listed(
        store
            .list(query(None, None, ListOrder::NewestFirst, None))
            .await
            .unwrap(),
    );
    assert_eq!(newest, ids.iter().rev().copied().collect::<Vec<_>>());
    let cancelled = listed(
        store
            .list(query(
                Some(TaskStatus::Cancelled),
                None,
                ListOrder::OldestFirst,
                None,
            ))
            .await
            .unwrap(),
    );
    assert_eq!(cancelled, vec![ids[1], ids[4]]);
    let page1 = listed(
        store
            .list(query(
                Some(TaskStatus::Pending),
                Some(2),
                ListOrder::OldestFirst,
                None,
            ))
            .await
            .unwrap(),
    );
    assert_eq!(page1, vec![ids[0], ids[2]]);
    let page2 = listed(
        store
            .list(query(
                Some(TaskStatus::Pending),
                Some(2),
                ListOrder::OldestFirst,
                Some(ids[2]),
            ))
            .await
            .unwrap(),
    );
    assert_eq!(page2, vec![ids[3], ids[5]]);
    let back = listed(
        store
            .list(query(None, Some(3), ListOrder::NewestFirst, Some(ids[5])))
            .await
            .unwrap(),
    );
    assert_eq!(back, vec![ids[4], ids[3], ids[2]]);
    let none = listed(
        store
            .list(query(
                Some(TaskStatus::Running),
                None,
                ListOrder::OldestFirst,
                None,
            ))
            .await
            .unwrap(),
    );
    assert!(none.is_empty());
    assert!(store
        .list(query(None, Some(0), ListOrder::OldestFirst, None))
        .await
        .unwrap()
        .is_empty());
}

async fn counts_per_status(store: &dyn Storage) {
    assert_eq!(store.counts().await.unwrap(), StatusCounts::default());
    let ids = enqueue_at(store, (0..6).map(|_| new("t").max_retries(0)).collect(), T0).await;
    let claimed = claim(store, "w", 4, T0).await;
    finish(store, &claimed[0], complete(json!(1)), at(1)).await;
    finish(store, &claimed[1], Outcome::Fail { error: error(1) }, at(1)).await;
    store.cancel(ids[5], at(1)).await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts,
        StatusCounts {
            pending: 1,
            running: 2,
            completed: 1,
            failed: 1,
            cancelled: 1
        }
    );
    assert_eq!(counts.total(), 6);
}

async fn large_batches(store: &dyn Storage) {
    const N: usize = 5_000;
    let ids = enqueue_at(
        store,
        (0..N).map(|i| new("bulk").args(vec![json!(i)])).collect(),
        T0,
    )
    .await;
    assert_eq!(store.counts().await.unwrap().pending, N as u64);
    let mut done = 0;
    loop {
        let claimed = claim(store, "w", 1_000, at(1)).await;
        if claimed.is_empty() {
            break;
        }
        let finishes = claimed
            .iter()
            .map(|t| Finish {
                id: t.id,
                token: t.lease.as_ref().unwrap().token,
                outcome: complete(t.args[0].clone()),
            })
            .collect();
        let answers = store.finish(finishes, at(2)).await.unwrap();
        assert!(answers.iter().all(|a| matches!(a, FinishOutcome::Applied { .. })));
        done += claimed.len();
    }
    assert_eq!(done, N);
    assert_eq!(store.counts().await.unwrap().completed, N as u64);
    assert_eq!(get(store, ids[N - 1]).await.result, Some(json!(N - 1)));
}
