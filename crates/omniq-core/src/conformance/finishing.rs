//! Scenarios of finishing a claim: results, retries and their bound, failures,
//! handing back, and leases: renewal, expiry and fencing.

use std::time::Duration;

use serde_json::json;

use super::scenarios::*;
use super::Scenario;
use crate::error::Error;
use crate::storage::{Finish, FinishOutcome, LeaseRef, RenewOutcome, Storage};
use crate::task::{LeaseToken, Outcome, Progress, TaskError, TaskId, TaskStatus};

scenarios![
    complete_stores_the_result,
    finish_with_a_stale_token_is_refused,
    finish_of_an_unknown_task_is_refused,
    finish_answers_in_order_for_a_batch,
    a_batch_mixing_interval_and_plain_tasks_finishes_each_rightly,
    retry_outcome_waits_for_its_time,
    retries_are_bounded_by_max_retries,
    final_failure_keeps_its_error,
    fail_outcome_ends_the_task_with_retries_left,
    hand_back_does_not_count_the_attempt,
    renew_extends_the_lease,
    renew_of_a_lost_lease_answers_lost,
    expired_leases_are_requeued,
    live_leases_are_not_requeued,
    old_owner_cannot_finish_after_requeue,
    expired_lease_without_retries_fails,
    progress_is_kept_for_the_current_claim_only,
    progress_keeps_a_renewed_lease,
];

async fn complete_stores_the_result(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim_one(store, at(1)).await;
    assert_eq!(
        applied_next(finish(store, &claimed, complete(json!(42)), at(2)).await),
        None
    );
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.result, Some(json!(42)));
    assert_eq!(task.finished_at, Some(at(2)));
    assert_eq!(task.lease, None);
    assert_eq!(task.error, None);
}

async fn finish_with_a_stale_token_is_refused(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let mut claimed = claim_one(store, T0).await;
    claimed.lease.as_mut().unwrap().token = crate::task::LeaseToken::new();
    assert_eq!(
        finish(store, &claimed, complete(json!(1)), at(1)).await,
        FinishOutcome::LeaseLost
    );
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.result, None);
}

async fn finish_of_an_unknown_task_is_refused(store: &dyn Storage) {
    let answers = store
        .finish(
            vec![Finish {
                id: TaskId::new(),
                token: crate::task::LeaseToken::new(),
                outcome: complete(json!(1)),
            }],
            T0,
        )
        .await
        .unwrap();
    assert_eq!(answers, vec![FinishOutcome::LeaseLost]);
    assert_eq!(store.counts().await.unwrap().total(), 0);
}

async fn finish_answers_in_order_for_a_batch(store: &dyn Storage) {
    enqueue_at(store, (0..4).map(|_| new("t")).collect(), T0).await;
    let claimed = claim(store, "w", 4, T0).await;
    let mut finishes: Vec<Finish> = claimed
        .iter()
        .enumerate()
        .map(|(i, t)| Finish {
            id: t.id,
            token: t.lease.as_ref().unwrap().token,
            outcome: complete(json!(i)),
        })
        .collect();
    finishes[2].token = crate::task::LeaseToken::new();
    let answers = store.finish(finishes, at(1)).await.unwrap();
    let expected = [true, true, false, true];
    for ((answer, ok), task) in answers.iter().zip(expected).zip(&claimed) {
        assert_eq!(matches!(answer, FinishOutcome::Applied { .. }), ok);
        let status = get(store, task.id).await.status;
        assert_eq!(
            status,
            if ok {
                TaskStatus::Completed
            } else {
                TaskStatus::Running
            }
        );
    }
}

/// Backends may take a fast path for the common batch (plain tasks that
/// completed); a batch with an interval task, or one task finished twice, must
/// still get every answer right.
async fn a_batch_mixing_interval_and_plain_tasks_finishes_each_rightly(store: &dyn Storage) {
    let plain = enqueue_one(store, new("plain")).await;
    let series = enqueue_one(store, new("tick").interval(secs(60))).await;
    let claimed = claim(store, "w", 2, T0).await;
    assert_eq!(claimed.len(), 2);
    let finishes = |outcome: fn(usize) -> Outcome| -> Vec<Finish> {
        claimed
            .iter()
            .enumerate()
            .map(|(i, t)| Finish {
                id: t.id,
                token: t.lease.as_ref().unwrap().token,
                outcome: outcome(i),
            })
            .collect()
    };
    let answers = store
        .finish(finishes(|i| complete(json!(i))), at(1))
        .await
        .unwrap();
    let by_id: Vec<(TaskId, FinishOutcome)> = claimed.iter().map(|t| t.id).zip(answers).collect();
    for (id, answer) in &by_id {
        let FinishOutcome::Applied { next, .. } = answer else {
            panic!("{id}: {answer:?}");
        };
        assert_eq!(next.is_some(), *id == series, "{id}: {answer:?}");
        assert_eq!(get(store, *id).await.status, TaskStatus::Completed);
    }
    assert!(get(store, plain).await.result.is_some());
    assert_eq!(store.counts().await.unwrap().pending, 1, "the next occurrence");

    // The same task finished twice in one batch: the first wins.
    let again = enqueue_one(store, new("plain")).await;
    let task = claim_one(store, at(2)).await;
    assert_eq!(task.id, again);
    let token = task.lease.as_ref().unwrap().token;
    let twice = vec![
        Finish {
            id: again,
            token,
            outcome: complete(json!("first")),
        },
        Finish {
            id: again,
            token,
            outcome: complete(json!("second")),
        },
    ];
    let answers = store.finish(twice, at(3)).await.unwrap();
    assert!(
        matches!(answers[0], FinishOutcome::Applied { next: None, .. }),
        "{answers:?}"
    );
    assert_eq!(answers[1], FinishOutcome::LeaseLost);
    assert_eq!(get(store, again).await.result, Some(json!("first")));
}

async fn retry_outcome_waits_for_its_time(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(3)).await;
    let claimed = claim_one(store, T0).await;
    let outcome = Outcome::Retry {
        error: error(1),
        at: at(5_000),
    };
    applied_next(finish(store, &claimed, outcome, at(10)).await);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.eta, at(5_000));
    assert_eq!(task.attempts, 1);
    assert_eq!(task.error, Some(error(1)));
    assert_eq!(task.lease, None);
    assert!(claim(store, "w", 1, at(4_999)).await.is_empty());
    assert_eq!(claim_one(store, at(5_000)).await.attempts, 2);
}

async fn retries_are_bounded_by_max_retries(store: &dyn Storage) {
    // max_retries = 2 means three runs at most.
    let id = enqueue_one(store, new("t").max_retries(2)).await;
    for attempt in 1..=3u32 {
        let now = at(u64::from(attempt) * 1_000);
        let claimed = claim_one(store, now).await;
        assert_eq!(claimed.attempts, attempt);
        let outcome = Outcome::Retry {
            error: error(attempt),
            at: now,
        };
        applied_next(finish(store, &claimed, outcome, now).await);
    }
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.attempts, 3);
    assert!(claim(store, "w", 1, at(1_000_000)).await.is_empty());
}

async fn final_failure_keeps_its_error(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(0)).await;
    let claimed = claim_one(store, T0).await;
    let err = TaskError::new("timeout", "ran past 5s", 1, true);
    applied_next(
        finish(
            store,
            &claimed,
            Outcome::Retry {
                error: err.clone(),
                at: at(1),
            },
            at(7),
        )
        .await,
    );
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, Some(err));
    assert_eq!(task.finished_at, Some(at(7)));
    assert_eq!(task.lease, None);
}

async fn fail_outcome_ends_the_task_with_retries_left(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(5)).await;
    let claimed = claim_one(store, T0).await;
    let err = TaskError::new("unknown_handler", "no handler named t", 1, false);
    applied_next(finish(store, &claimed, Outcome::Fail { error: err.clone() }, at(1)).await);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, Some(err));
    assert_eq!(task.attempts, 1);
}

async fn hand_back_does_not_count_the_attempt(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").eta(at(5))).await;
    let claimed = claim_one(store, at(10)).await;
    applied_next(finish(store, &claimed, Outcome::HandBack, at(20)).await);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.attempts, 0);
    assert_eq!(task.lease, None);
    assert_eq!(task.eta, at(5), "a handed-back task keeps its place in line");
    assert_eq!(claim_one(store, at(20)).await.attempts, 1);
}

async fn renew_extends_the_lease(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim_one(store, T0).await;
    let token = claimed.lease.as_ref().unwrap().token;
    let answers = store
        .renew(&[LeaseRef { id, token }], secs(60), at(20_000))
        .await
        .unwrap();
    let expected = at(20_000) + secs(60);
    assert_eq!(answers, vec![RenewOutcome::Renewed { expires_at: expected }]);
    assert_eq!(get(store, id).await.lease.unwrap().expires_at, expected);
    // Renewed past its first expiry, the task is not requeued.
    assert!(store.requeue_expired(at(40_000)).await.unwrap().is_empty());
}

async fn renew_of_a_lost_lease_answers_lost(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim_one(store, T0).await;
    let token = claimed.lease.as_ref().unwrap().token;
    let stale = crate::task::LeaseToken::new();
    let unknown = LeaseRef {
        id: TaskId::new(),
        token,
    };
    let answers = store
        .renew(
            &[LeaseRef { id, token: stale }, unknown, LeaseRef { id, token }],
            LEASE,
            at(1),
        )
        .await
        .unwrap();
    assert_eq!(answers[0], RenewOutcome::Lost);
    assert_eq!(answers[1], RenewOutcome::Lost);
    assert!(matches!(answers[2], RenewOutcome::Renewed { .. }));
}

async fn expired_leases_are_requeued(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(3)).await;
    let claimed = claim(store, "dead-worker", 1, T0).await.remove(0);
    let expiry = claimed.lease.unwrap().expires_at;
    assert!(store
        .requeue_expired(expiry - Duration::from_millis(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.requeue_expired(expiry).await.unwrap(), vec![id]);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.lease, None);
    assert_eq!(
        task.error.as_ref().map(|e| e.kind.as_str()),
        Some("lease_expired")
    );
    let again = claim(store, "live-worker", 1, expiry).await.remove(0);
    assert_eq!(again.id, id);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.lease.unwrap().worker_id, "live-worker");
}

async fn live_leases_are_not_requeued(store: &dyn Storage) {
    enqueue_at(store, vec![new("a"), new("b")], T0).await;
    claim(store, "w", 2, T0).await;
    assert!(store.requeue_expired(at(29_999)).await.unwrap().is_empty());
    assert_eq!(store.counts().await.unwrap().running, 2);
}

async fn old_owner_cannot_finish_after_requeue(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let old = claim(store, "slow", 1, T0).await.remove(0);
    store.requeue_expired(at(30_000)).await.unwrap();
    let new_claim = claim(store, "fast", 1, at(30_000)).await.remove(0);
    assert_eq!(
        finish(store, &old, complete(json!("stale")), at(30_001)).await,
        FinishOutcome::LeaseLost
    );
    let token = old.lease.as_ref().unwrap().token;
    let renewed = store
        .renew(&[LeaseRef { id, token }], LEASE, at(30_001))
        .await
        .unwrap();
    assert_eq!(renewed, vec![RenewOutcome::Lost]);
    assert_eq!(
        get(store, id).await.lease,
        new_claim.lease,
        "the new owner's lease stands"
    );
    applied_next(finish(store, &new_claim, complete(json!("fresh")), at(30_002)).await);
    assert_eq!(get(store, id).await.result, Some(json!("fresh")));
}

async fn expired_lease_without_retries_fails(store: &dyn Storage) {
    let id = enqueue_one(store, new("t").max_retries(0)).await;
    claim_one(store, T0).await;
    assert_eq!(store.requeue_expired(at(60_000)).await.unwrap(), vec![id]);
    let task = get(store, id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.unwrap().kind, "lease_expired");
    assert_eq!(task.finished_at, Some(at(60_000)));
}

/// A running attempt's progress is stored for its current claim only,
/// survives renewals, and goes when the task stops running.
async fn progress_is_kept_for_the_current_claim_only(store: &dyn Storage) {
    let id = enqueue_one(store, new("p")).await;
    let other = enqueue_one(store, new("q")).await;
    let claimed = claim_one(store, at(1)).await;
    assert_eq!(claimed.id, id);
    let lease = LeaseRef {
        id,
        token: claimed.lease.as_ref().unwrap().token,
    };
    let half = Progress::new(0.5, "halfway: 50 of 100 rows", at(2)).unwrap();
    assert!(store.set_progress(lease, half.clone()).await.unwrap());
    assert_eq!(get(store, id).await.progress, Some(half.clone()));

    // Another token, a task not running, an unknown task: refused, nothing written.
    let stranger = LeaseRef {
        id,
        token: LeaseToken::new(),
    };
    let late = Progress::new(0.9, "not mine", at(3)).unwrap();
    assert!(!store.set_progress(stranger, late.clone()).await.unwrap());
    let pending = LeaseRef {
        id: other,
        token: lease.token,
    };
    assert!(!store.set_progress(pending, late.clone()).await.unwrap());
    let unknown = LeaseRef {
        id: TaskId::new(),
        token: lease.token,
    };
    assert!(!store.set_progress(unknown, late.clone()).await.unwrap());
    assert_eq!(get(store, id).await.progress, Some(half.clone()));
    assert_eq!(get(store, other).await.progress, None);

    // Values out of range are refused.
    let mut wrong = half.clone();
    wrong.fraction = 1.5;
    assert!(matches!(
        store.set_progress(lease, wrong.clone()).await,
        Err(Error::InvalidConfig { .. })
    ));
    wrong.fraction = f64::NAN;
    assert!(matches!(
        store.set_progress(lease, wrong).await,
        Err(Error::InvalidConfig { .. })
    ));

    // A renewal keeps it; a later report replaces it; the finish drops it.
    store.renew(&[lease], LEASE, at(4)).await.unwrap();
    assert_eq!(get(store, id).await.progress, Some(half));
    let most = Progress::new(0.99, "almost", at(5)).unwrap();
    assert!(store.set_progress(lease, most.clone()).await.unwrap());
    assert_eq!(get(store, id).await.progress, Some(most.clone()));
    finish(store, &claimed, complete(json!(1)), at(6)).await;
    let done = get(store, id).await;
    assert_eq!((done.status, done.progress), (TaskStatus::Completed, None));
    assert!(!store.set_progress(lease, most).await.unwrap());
}

/// A progress report after a renewal keeps the renewed expiry: the lease pass
/// between the claim's expiry and the renewed one hands nothing back, so a
/// long task that renews and reports is never run twice.
async fn progress_keeps_a_renewed_lease(store: &dyn Storage) {
    let id = enqueue_one(store, new("long").max_retries(0)).await;
    let claimed = claim_one(store, T0).await;
    let lease = LeaseRef {
        id,
        token: claimed.lease.as_ref().unwrap().token,
    };
    // The claim's lease ends at 30 s; renewed at 20 s it ends at 50 s.
    let renewed = store.renew(&[lease], LEASE, at(20_000)).await.unwrap();
    assert_eq!(
        renewed,
        vec![RenewOutcome::Renewed {
            expires_at: at(50_000)
        }]
    );
    let report = Progress::new(0.25, "a quarter", at(21_000)).unwrap();
    assert!(store.set_progress(lease, report.clone()).await.unwrap());
    let task = get(store, id).await;
    assert_eq!(task.progress, Some(report));
    assert_eq!(task.lease.as_ref().unwrap().expires_at, at(50_000));
    assert_eq!(
        store.requeue_expired(at(40_000)).await.unwrap(),
        Vec::<TaskId>::new()
    );
    assert_eq!(get(store, id).await.status, TaskStatus::Running);
    // Renewed again after the report, the lease still follows the renewal.
    store.renew(&[lease], LEASE, at(45_000)).await.unwrap();
    assert_eq!(
        store.requeue_expired(at(60_000)).await.unwrap(),
        Vec::<TaskId>::new()
    );
    assert_eq!(get(store, id).await.lease.unwrap().expires_at, at(75_000));
}
