//! Scenarios at the edges of the status machine: a claim used after its lease
//! ran out but before anyone requeued the task, the status a finish answers,
//! an interval task handed back, a retried occurrence of a series, and when
//! the next task is due.

use std::time::Duration;

use serde_json::json;
use time::macros::datetime;
use time::OffsetDateTime;

use super::scenarios::{finish, make};
use super::Scenario;
use crate::error::Error;
use crate::storage::{ClaimRequest, FinishOutcome, LeaseRef, RenewOutcome, Storage};
use crate::task::{NewTask, Outcome, Task, TaskError, TaskStatus};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);
const LEASE: Duration = Duration::from_secs(30);

scenarios![
    renew_and_finish_after_expiry_count_until_requeued,
    finish_answers_the_status_it_led_to,
    an_interval_task_handed_back_keeps_its_series_and_schedules_nothing,
    a_retried_occurrence_is_cancelled_alone,
    next_due_is_the_earliest_pending_eta,
    cancelling_a_series_stops_every_live_occurrence,
    a_refused_change_leaves_its_task_claimable,
];

fn at(secs: u64) -> OffsetDateTime {
    T0 + Duration::from_secs(secs)
}

async fn claim_one(store: &dyn Storage, now: OffsetDateTime) -> Task {
    let mut claimed = store
        .claim(ClaimRequest {
            queue: crate::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit: 1,
            lease_for: LEASE,
            now,
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "expected one due task at {now}");
    claimed.remove(0)
}

fn fail(attempt: u32, retryable: bool) -> TaskError {
    TaskError::new("handler", "boom", attempt, retryable)
}

async fn renew_and_finish_after_expiry_count_until_requeued(store: &dyn Storage) {
    let ids: Vec<Task> = (0..2).map(|_| make(NewTask::new("x"), T0)).collect();
    store.enqueue(ids).await.unwrap();
    let first = claim_one(store, T0).await;
    let second = claim_one(store, T0).await;
    // Both leases ran out at 30 s; nobody has requeued the tasks yet.
    let late = at(45);
    let renewed = store
        .renew(
            &[LeaseRef {
                id: first.id,
                token: first.lease.as_ref().unwrap().token,
            }],
            LEASE,
            late,
        )
        .await
        .unwrap();
    assert_eq!(
        renewed,
        [RenewOutcome::Renewed {
            expires_at: late + LEASE
        }]
    );
    assert!(
        store.requeue_expired(at(50)).await.unwrap().contains(&second.id),
        "the unrenewed lease is handed back"
    );
    assert!(!store.requeue_expired(at(50)).await.unwrap().contains(&first.id));
    let outcome = finish(store, &first, Outcome::Complete { result: json!(1) }, at(60)).await;
    assert!(matches!(
        outcome,
        FinishOutcome::Applied {
            status: TaskStatus::Completed,
            ..
        }
    ));
    // A finish past expiry but before a requeue counts too.
    let third = make(NewTask::new("x"), T0);
    store.enqueue(vec![third.clone()]).await.unwrap();
    let claimed = store
        .claim(ClaimRequest {
            queue: crate::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit: 5,
            lease_for: LEASE,
            now: at(60),
        })
        .await
        .unwrap();
    let third = claimed.into_iter().find(|t| t.id == third.id).expect("claimed");
    let outcome = finish(store, &third, Outcome::Complete { result: json!(3) }, at(200)).await;
    assert!(matches!(
        outcome,
        FinishOutcome::Applied {
            status: TaskStatus::Completed,
            ..
        }
    ));
    assert_eq!(store.get(third.id).await.unwrap().result, Some(json!(3)));
}

async fn finish_answers_the_status_it_led_to(store: &dyn Storage) {
    let tasks: Vec<Task> = (0..4)
        .map(|i| make(NewTask::new("x").max_retries(if i == 3 { 0 } else { 2 }), T0))
        .collect();
    store.enqueue(tasks.clone()).await.unwrap();
    let mut claimed = Vec::new();
    for _ in 0..4 {
        claimed.push(claim_one(store, T0).await);
    }
    claimed.sort_by_key(|t| tasks.iter().position(|x| x.id == t.id));
    let cases = [
        (Outcome::Complete { result: json!(0) }, TaskStatus::Completed),
        (
            Outcome::Fail {
                error: fail(1, false),
            },
            TaskStatus::Failed,
        ),
        (
            Outcome::Retry {
                error: fail(1, true),
                at: at(10),
            },
            TaskStatus::Pending,
        ),
        // No retries left: the retry is a final failure, and the answer says so.
        (
            Outcome::Retry {
                error: fail(1, true),
                at: at(10),
            },
            TaskStatus::Failed,
        ),
    ];
    for (task, (outcome, expected)) in claimed.iter().zip(cases) {
        match finish(store, task, outcome, at(1)).await {
            FinishOutcome::Applied { status, .. } => assert_eq!(status, expected, "{}", task.id),
            FinishOutcome::LeaseLost => panic!("lease lost"),
        }
        assert_eq!(store.get(task.id).await.unwrap().status, expected);
    }
}

async fn an_interval_task_handed_back_keeps_its_series_and_schedules_nothing(store: &dyn Storage) {
    let task = make(NewTask::new("tick").interval(Duration::from_secs(60)), T0);
    store.enqueue(vec![task.clone()]).await.unwrap();
    let claimed = claim_one(store, T0).await;
    let outcome = finish(store, &claimed, Outcome::HandBack, at(1)).await;
    assert!(matches!(
        outcome,
        FinishOutcome::Applied {
            status: TaskStatus::Pending,
            next: None
        }
    ));
    let back = store.get(task.id).await.unwrap();
    assert_eq!((back.status, back.attempts), (TaskStatus::Pending, 0));
    assert_eq!(back.series, Some(task.id));
    assert_eq!(
        store.counts().await.unwrap().total(),
        1,
        "no occurrence was scheduled"
    );
    // It runs again, and its series goes on from there.
    let again = claim_one(store, at(2)).await;
    let outcome = finish(store, &again, Outcome::Complete { result: json!(1) }, at(3)).await;
    assert!(matches!(outcome, FinishOutcome::Applied { next: Some(_), .. }));
}

async fn a_retried_occurrence_is_cancelled_alone(store: &dyn Storage) {
    let first = make(
        NewTask::new("tick")
            .interval(Duration::from_secs(60))
            .max_retries(0),
        T0,
    );
    store.enqueue(vec![first.clone()]).await.unwrap();
    let claimed = claim_one(store, T0).await;
    let FinishOutcome::Applied { next: Some(next), .. } = finish(
        store,
        &claimed,
        Outcome::Fail {
            error: fail(1, false),
        },
        at(1),
    )
    .await
    else {
        panic!("the failure scheduled no next occurrence");
    };
    // The failed occurrence is retried by hand: it leaves its series.
    store.retry(first.id, at(2)).await.unwrap();
    let retried = store.get(first.id).await.unwrap();
    assert_eq!((retried.status, retried.series), (TaskStatus::Pending, None));
    // Cancelling it stops only it; the series runs on.
    assert_eq!(store.cancel(first.id, at(3)).await.unwrap(), [first.id]);
    assert_eq!(store.get(next).await.unwrap().status, TaskStatus::Pending);
    // Cancelling by the live occurrence's id stops the series.
    assert_eq!(store.cancel(next, at(4)).await.unwrap(), [next]);
    assert!(matches!(
        store.cancel(next, at(5)).await,
        Err(Error::Conflict { .. })
    ));
}

async fn next_due_is_the_earliest_pending_eta(store: &dyn Storage) {
    assert_eq!(
        store.next_due(&[crate::DEFAULT_QUEUE.into()]).await.unwrap(),
        None
    );
    let later = make(NewTask::new("x").eta(at(100)), T0);
    let sooner = make(NewTask::new("x").eta(at(50)).max_retries(1), T0);
    store.enqueue(vec![later.clone(), sooner.clone()]).await.unwrap();
    assert_eq!(
        store.next_due(&[crate::DEFAULT_QUEUE.into()]).await.unwrap(),
        Some(at(50))
    );
    // A running task is not pending; a retry's time counts once it waits.
    let claimed = claim_one(store, at(60)).await;
    assert_eq!(claimed.id, sooner.id);
    assert_eq!(
        store.next_due(&[crate::DEFAULT_QUEUE.into()]).await.unwrap(),
        Some(at(100))
    );
    let retry = Outcome::Retry {
        error: fail(1, true),
        at: at(70),
    };
    finish(store, &claimed, retry, at(61)).await;
    assert_eq!(
        store.next_due(&[crate::DEFAULT_QUEUE.into()]).await.unwrap(),
        Some(at(70))
    );
    store.cancel(sooner.id, at(62)).await.unwrap();
    store.cancel(later.id, at(62)).await.unwrap();
    assert_eq!(
        store.next_due(&[crate::DEFAULT_QUEUE.into()]).await.unwrap(),
        None
    );
}

/// A series has one live occurrence at a time when OmniQ makes it; records
/// made otherwise (migrated, built by hand) may give it two. Cancelling the
/// series by any of its ids stops them all, on every backend alike.
async fn cancelling_a_series_stops_every_live_occurrence(store: &dyn Storage) {
    let first = make(NewTask::new("tick").interval(Duration::from_secs(60)), T0);
    let mut second = make(NewTask::new("tick").interval(Duration::from_secs(60)), T0);
    second.series = first.series;
    let mut third = make(NewTask::new("tick").interval(Duration::from_secs(60)), T0);
    third.series = first.series;
    store
        .enqueue(vec![first.clone(), second.clone(), third.clone()])
        .await
        .unwrap();
    // One of them runs and finishes: it schedules its own successor.
    let claimed = claim_one(store, T0).await;
    let FinishOutcome::Applied { next: Some(next), .. } =
        finish(store, &claimed, Outcome::Complete { result: json!(1) }, at(1)).await
    else {
        panic!("no next occurrence");
    };
    let mut cancelled = store.cancel(second.id, at(2)).await.unwrap();
    cancelled.sort();
    let mut live: Vec<_> = [first.id, second.id, third.id, next]
        .into_iter()
        .filter(|id| *id != claimed.id)
        .collect();
    live.sort();
    assert_eq!(cancelled, live);
    for id in live {
        assert_eq!(store.get(id).await.unwrap().status, TaskStatus::Cancelled);
    }
    assert_eq!(store.get(claimed.id).await.unwrap().status, TaskStatus::Completed);
}

/// A change the store refuses (a retry of a task that has not failed, one
/// whose unique key is held) leaves nothing behind that hides the task: the
/// very next claim, from any caller, takes it. Repeated, since a backend
/// that releases a refused change's locks late loses only some races.
async fn a_refused_change_leaves_its_task_claimable(store: &dyn Storage) {
    for round in 0..60 {
        let now = at(round);
        let key = format!("key-{round}");
        let ids = store
            .enqueue(vec![
                make(NewTask::new("x").unique_key(key.clone()), now),
                make(NewTask::new("y"), now),
            ])
            .await
            .unwrap();
        let (first, second) = (ids[0].id, ids[1].id);
        // Not failed: refused.
        assert!(store.retry(first, now).await.is_err(), "round {round}");
        assert!(store.retry(second, now).await.is_err(), "round {round}");
        let claimed = store
            .claim(ClaimRequest {
                queue: crate::DEFAULT_QUEUE.into(),
                worker_id: "w".into(),
                limit: 2,
                lease_for: LEASE,
                now,
            })
            .await
            .unwrap();
        let claimed: Vec<_> = claimed.iter().map(|t| t.id).collect();
        assert_eq!(claimed, vec![first, second], "round {round}");
        // Fail the first for good, hold its key with a new task, and retry
        // it: refused (the key is held), and the holder stays claimable.
        let lease = store.get(first).await.unwrap().lease.unwrap();
        let answer = store
            .finish(
                vec![crate::storage::Finish {
                    id: first,
                    token: lease.token,
                    outcome: Outcome::Fail {
                        error: fail(1, false),
                    },
                }],
                now,
            )
            .await
            .unwrap();
        assert!(matches!(
            answer[0],
            FinishOutcome::Applied {
                status: TaskStatus::Failed,
                ..
            }
        ));
        let holder = store
            .enqueue(vec![make(NewTask::new("z").unique_key(key), now)])
            .await
            .unwrap()[0]
            .id;
        assert!(
            matches!(store.retry(first, now).await, Err(Error::Conflict { .. })),
            "round {round}"
        );
        let claimed = claim_one(store, now).await;
        assert_eq!(claimed.id, holder, "round {round}");
    }
}
