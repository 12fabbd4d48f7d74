//! The scenarios of the conformance suite, one per promise of the `Storage` trait.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Map, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use super::Scenario;
use crate::error::Error;
use crate::settings::Settings;
use crate::storage::{
    ClaimRequest, Finish, FinishOutcome, LeaseRef, ListOrder, ListQuery, RenewOutcome, StatusCounts, Storage,
};
use crate::task::{NewTask, Outcome, Task, TaskError, TaskId, TaskStatus};

scenarios![
    enqueue_then_get_returns_the_record,
    unknown_ids_are_not_found,
    duplicate_ids_are_refused_and_nothing_is_stored,
    running_records_cannot_be_enqueued,
    concurrent_enqueues_are_each_answered_rightly,
    finished_records_are_stored_as_they_are,
    payloads_are_stored_exactly,
    claim_respects_eta,
    claim_orders_by_eta_then_fifo,
    claim_respects_the_limit,
    claim_with_zero_limit_claims_nothing,
    claim_sets_lease_attempt_and_start,
    claimed_tasks_are_not_claimed_again,
    concurrent_claimers_never_get_the_same_task,
    enqueues_claims_and_finishes_at_once_run_every_task_once,
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

/// The suite's clock starts here; every time is derived from it.
const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);
const LEASE: Duration = Duration::from_secs(30);

fn at(ms: u64) -> OffsetDateTime {
    T0 + Duration::from_millis(ms)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn new(func: &str) -> NewTask {
    NewTask::new(func)
}

pub(super) fn make(task: NewTask, now: OffsetDateTime) -> Task {
    task.into_task(&Settings::default(), now).expect("valid task")
}

async fn enqueue_at(store: &dyn Storage, tasks: Vec<NewTask>, now: OffsetDateTime) -> Vec<TaskId> {
    let tasks: Vec<Task> = tasks.into_iter().map(|t| make(t, now)).collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    store.enqueue(tasks).await.expect("enqueue");
    ids
}

async fn enqueue_one(store: &dyn Storage, task: NewTask) -> TaskId {
    enqueue_at(store, vec![task], T0).await[0]
}

async fn claim(store: &dyn Storage, worker: &str, limit: usize, now: OffsetDateTime) -> Vec<Task> {
    store
        .claim(ClaimRequest {
            worker_id: worker.into(),
            limit,
            lease_for: LEASE,
            now,
        })
        .await
        .expect("claim")
}

async fn claim_one(store: &dyn Storage, now: OffsetDateTime) -> Task {
    let mut claimed = claim(store, "w1", 1, now).await;
    assert_eq!(claimed.len(), 1, "expected one due task");
    claimed.remove(0)
}

pub(super) async fn finish(
    store: &dyn Storage,
    task: &Task,
    outcome: Outcome,
    now: OffsetDateTime,
) -> FinishOutcome {
    let token = task.lease.as_ref().expect("claimed task has a lease").token;
    let mut answers = store
        .finish(
            vec![Finish {
                id: task.id,
                token,
                outcome,
            }],
            now,
        )
        .await
        .expect("finish");
    assert_eq!(answers.len(), 1);
    answers.remove(0)
}

fn complete(value: Value) -> Outcome {
    Outcome::Complete { result: value }
}

fn error(attempt: u32) -> TaskError {
    TaskError::new("handler", "boom", attempt, true)
}

async fn get(store: &dyn Storage, id: TaskId) -> Task {
    store.get(id).await.expect("get")
}

async fn all_tasks(store: &dyn Storage) -> Vec<Task> {
    store.list(ListQuery::default()).await.expect("list")
}

fn applied_next(outcome: FinishOutcome) -> Option<TaskId> {
    match outcome {
        FinishOutcome::Applied { next, .. } => next,
        FinishOutcome::LeaseLost => panic!("finish was refused as lease lost"),
    }
}

async fn enqueue_then_get_returns_the_record(store: &dyn Storage) {
    let task = make(
        new("email.send")
            .args(vec![json!("a@b.c")])
            .max_retries(2)
            .timeout(Duration::from_millis(2500))
            .eta(at(500)),
        T0,
    );
    store.enqueue(vec![task.clone()]).await.unwrap();
    let stored = get(store, task.id).await;
    assert_eq!(stored, task);
    assert_eq!(stored.status, TaskStatus::Pending);
    assert_eq!(stored.attempts, 0);
}

async fn unknown_ids_are_not_found(store: &dyn Storage) {
    let id = TaskId::new();
    assert!(matches!(store.get(id).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.cancel(id, T0).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.retry(id, T0).await, Err(Error::NotFound { .. })));
}

async fn duplicate_ids_are_refused_and_nothing_is_stored(store: &dyn Storage) {
    let first = enqueue_one(store, new("a")).await;
    let fresh = make(new("b"), T0);
    let again = make(new("a").id(first), T0);
    let err = store.enqueue(vec![fresh.clone(), again]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(
        matches!(store.get(fresh.id).await, Err(Error::NotFound { .. })),
        "batch must be all or nothing"
    );

    let twice = make(new("c"), T0);
    let err = store
        .enqueue(vec![twice.clone(), twice.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(matches!(store.get(twice.id).await, Err(Error::NotFound { .. })));
    assert_eq!(store.counts().await.unwrap().total(), 1);
}

async fn running_records_cannot_be_enqueued(store: &dyn Storage) {
    let mut task = make(new("a"), T0);
    task.claim("elsewhere", LEASE, T0).unwrap();
    assert!(matches!(
        store.enqueue(vec![task]).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(store.counts().await.unwrap().total(), 0);
}

/// Enqueue calls made at the same time may be stored together (the SQLite
/// writer inserts them with one command); each must still get its own answer,
/// and a refused call must store nothing while the others are stored.
async fn concurrent_enqueues_are_each_answered_rightly(store: &dyn Storage) {
    let stored = enqueue_one(store, new("stored")).await;
    let plain: Vec<Task> = (0..40)
        .map(|i| make(new("plain").args(vec![json!(i)]), T0))
        .collect();
    let one_call = |task: &Task| (vec![task.clone()], "ok");
    let shared = make(new("shared"), T0);
    let beside_a_stored_id = make(new("beside"), T0);
    let mut running = make(new("running"), T0);
    running.claim("elsewhere", LEASE, T0).unwrap();
    let twice = make(new("twice"), T0);

    // Calls that all succeed; then calls each valid alone, some clashing with
    // a stored id or with each other; then calls invalid in themselves.
    let rounds: [Vec<(Vec<Task>, &str)>; 3] = [
        plain[..20].iter().map(one_call).collect(),
        plain[20..30]
            .iter()
            .map(one_call)
            .chain([
                (vec![make(new("again").id(stored), T0)], "refused"),
                (vec![shared.clone()], "race"),
                (
                    vec![beside_a_stored_id.clone(), make(new("again").id(stored), T0)],
                    "refused",
                ),
                (vec![shared.clone()], "race"),
            ])
            .collect(),
        plain[30..]
            .iter()
            .map(one_call)
            .chain([
                (vec![running], "refused"),
                (vec![twice.clone(), twice.clone()], "refused"),
            ])
            .collect(),
    ];
    let mut race_won = 0;
    for mut calls in rounds {
        // Spread the odd calls among the others.
        calls.rotate_right(3);
        let answers =
            futures::future::join_all(calls.iter().map(|(tasks, _)| store.enqueue(tasks.clone()))).await;
        for ((tasks, expect), answer) in calls.iter().zip(answers) {
            match (*expect, answer) {
                ("ok", Ok(())) => {}
                ("race", Ok(())) => race_won += 1,
                ("refused" | "race", Err(Error::Conflict { .. })) => {}
                (expect, answer) => panic!(
                    "a call of {} task(s) ({}): expected {expect}, got {answer:?}",
                    tasks.len(),
                    tasks[0].func_path
                ),
            }
        }
    }
    assert_eq!(race_won, 1, "exactly one of two calls with one id is stored");
    for task in &plain {
        let got = get(store, task.id).await;
        assert_eq!((got.status, &got.args), (TaskStatus::Pending, &task.args));
    }
    for id in [twice.id, beside_a_stored_id.id] {
        assert!(
            matches!(store.get(id).await, Err(Error::NotFound { .. })),
            "a refused call stored {id}"
        );
    }
    assert_eq!(get(store, stored).await.func_path, "stored");
    assert_eq!(store.counts().await.unwrap().total(), 1 + 40 + 1);
}

async fn finished_records_are_stored_as_they_are(store: &dyn Storage) {
    let mut done = make(new("a").interval(secs(60)), T0);
    done.claim("w", LEASE, at(1)).unwrap();
    let token = done.lease.as_ref().unwrap().token;
    done.finish(token, complete(json!({"ok": true})), at(2)).unwrap();
    let mut failed = make(new("b").max_retries(0), T0);
    failed.claim("w", LEASE, at(1)).unwrap();
    let token = failed.lease.as_ref().unwrap().token;
    failed
        .finish(token, Outcome::Fail { error: error(1) }, at(3))
        .unwrap();
    let mut cancelled = make(new("c"), T0);
    cancelled.cancel(at(4)).unwrap();
    store
        .enqueue(vec![done.clone(), failed.clone(), cancelled.clone()])
        .await
        .unwrap();
    assert_eq!(get(store, done.id).await, done);
    assert_eq!(get(store, failed.id).await, failed);
    assert_eq!(get(store, cancelled.id).await, cancelled);
    assert!(claim(store, "w", 10, at(10_000_000)).await.is_empty());
}

async fn payloads_are_stored_exactly(store: &dyn Storage) {
    let mut kwargs = Map::new();
    kwargs.insert(
        "naïve key ✓".into(),
        json!({"nested": [1, 2.5, null, "\u{0000}\"quote\"\n"]}),
    );
    kwargs.insert("big".into(), json!(u64::MAX));
    kwargs.insert("neg".into(), json!(i64::MIN));
    let args = vec![json!("🦀"), json!([]), json!({}), json!(true), json!(1e-7)];
    let id = enqueue_one(
        store,
        new("unicode.ünï").args(args.clone()).kwargs(kwargs.clone()),
    )
    .await;
    let task = get(store, id).await;
    assert_eq!(task.args, args);
    assert_eq!(task.kwargs, kwargs);
    assert_eq!(task.func_path, "unicode.ünï");

    let claimed = claim_one(store, T0).await;
    let result = json!({"list": [1, "two", {"three": 3}], "s": "ü"});
    applied_next(finish(store, &claimed, complete(result.clone()), at(1)).await);
    assert_eq!(get(store, id).await.result, Some(result));
}

async fn claim_respects_eta(store: &dyn Storage) {
    let id = enqueue_one(store, new("later").eta(at(10_000))).await;
    assert!(
        claim(store, "w", 10, at(9_999)).await.is_empty(),
        "claimed before eta"
    );
    let claimed = claim(store, "w", 10, at(10_000)).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
}

async fn claim_orders_by_eta_then_fifo(store: &dyn Storage) {
    // Enqueued in one order, due in another: claims follow eta, then creation.
    let late = enqueue_one(store, new("late").eta(at(300))).await;
    let first_of_two = enqueue_one(store, new("same1").eta(at(200))).await;
    let second_of_two = enqueue_one(store, new("same2").eta(at(200))).await;
    let early = enqueue_one(store, new("early").eta(at(100))).await;
    let batch = enqueue_at(store, vec![new("b1"), new("b2"), new("b3")], T0).await;
    let claimed: Vec<TaskId> = claim(store, "w", 100, at(1_000))
        .await
        .iter()
        .map(|t| t.id)
        .collect();
    let mut expected = batch.clone();
    expected.extend([early, first_of_two, second_of_two, late]);
    assert_eq!(claimed, expected);
}

async fn claim_respects_the_limit(store: &dyn Storage) {
    enqueue_at(
        store,
        (0..10).map(|i| new("t").args(vec![json!(i)])).collect(),
        T0,
    )
    .await;
    assert_eq!(claim(store, "w", 3, T0).await.len(), 3);
    assert_eq!(claim(store, "w", 4, T0).await.len(), 4);
    assert_eq!(claim(store, "w", 100, T0).await.len(), 3);
    assert!(claim(store, "w", 100, T0).await.is_empty());
}

async fn claim_with_zero_limit_claims_nothing(store: &dyn Storage) {
    enqueue_one(store, new("t")).await;
    assert!(claim(store, "w", 0, T0).await.is_empty());
    assert_eq!(store.counts().await.unwrap().pending, 1);
}

async fn claim_sets_lease_attempt_and_start(store: &dyn Storage) {
    let id = enqueue_one(store, new("t")).await;
    let claimed = claim(store, "worker-7", 1, at(50)).await.remove(0);
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.status, TaskStatus::Running);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.started_at, Some(at(50)));
    let lease = claimed.lease.clone().expect("lease");
    assert_eq!(lease.worker_id, "worker-7");
    assert_eq!(lease.expires_at, at(50) + LEASE);
    assert_eq!(
        get(store, id).await,
        claimed,
        "the stored record matches the claimed one"
    );
}

async fn claimed_tasks_are_not_claimed_again(store: &dyn Storage) {
    enqueue_at(store, vec![new("a"), new("b")], T0).await;
    let first = claim(store, "w1", 1, T0).await;
    let second = claim(store, "w2", 5, T0).await;
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].id, second[0].id);
    assert!(claim(store, "w3", 5, at(1_000)).await.is_empty());
}

async fn concurrent_claimers_never_get_the_same_task(store: &dyn Storage) {
    let ids = enqueue_at(
        store,
        (0..300).map(|i| new("t").args(vec![json!(i)])).collect(),
        T0,
    )
    .await;
    let claimers = (0..8).map(|w| async move {
        let mut mine = Vec::new();
        loop {
            let got = store
                .claim(ClaimRequest {
                    worker_id: format!("w{w}"),
                    limit: 7,
                    lease_for: LEASE,
                    now: T0,
                })
                .await
                .expect("claim");
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|t| t.id));
        }
    });
    let results = futures::future::join_all(claimers).await;
    let mut seen = HashSet::new();
    for id in results.into_iter().flatten() {
        assert!(seen.insert(id), "task {id} claimed twice");
    }
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
}

/// Producers enqueueing one call each while workers claim and finish: the
/// SQLite writer groups such changes into shared transactions and commands,
/// and every task must still run once and end with its own result.
async fn enqueues_claims_and_finishes_at_once_run_every_task_once(store: &dyn Storage) {
    let producing = std::sync::atomic::AtomicUsize::new(4);
    let producing = &producing;
    let producers = (0..4).map(|p| async move {
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(enqueue_one(store, new("t").args(vec![json!(p * 100 + i)])).await);
            if i % 10 == 5 {
                // An id already stored is refused, whatever the call rides with.
                let again = make(new("again").id(ids[0]), T0);
                let refused = store.enqueue(vec![again]).await;
                assert!(matches!(refused, Err(Error::Conflict { .. })), "{refused:?}");
            }
        }
        producing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        ids
    });
    let workers = (0..6).map(|w| async move {
        let mut done = Vec::new();
        loop {
            let last_look = producing.load(std::sync::atomic::Ordering::SeqCst) == 0;
            let claimed = claim(store, &format!("w{w}"), 3, T0).await;
            if claimed.is_empty() {
                if last_look {
                    return done;
                }
                // Let the producers go on when the store answers at once.
                tokio::task::yield_now().await;
                continue;
            }
            let finishes = claimed
                .iter()
                .map(|t| Finish {
                    id: t.id,
                    token: t.lease.as_ref().expect("a claimed task has a lease").token,
                    outcome: Outcome::Complete {
                        result: t.args[0].clone(),
                    },
                })
                .collect();
            let answers = store.finish(finishes, T0).await.expect("finish");
            assert!(
                answers
                    .iter()
                    .all(|a| matches!(a, FinishOutcome::Applied { next: None, .. })),
                "{answers:?}"
            );
            done.extend(claimed.into_iter().map(|t| t.id));
        }
    });
    let (enqueued, finished) = futures::future::join(
        futures::future::join_all(producers),
        futures::future::join_all(workers),
    )
    .await;
    let enqueued: Vec<TaskId> = enqueued.into_iter().flatten().collect();
    let mut seen = HashSet::new();
    for id in finished.into_iter().flatten() {
        assert!(seen.insert(id), "task {id} ran twice");
    }
    assert_eq!(
        seen,
        enqueued.iter().copied().collect::<HashSet<_>>(),
        "every task ran"
    );
    for id in enqueued {
        let task = get(store, id).await;
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.result.as_ref(), task.args.first());
    }
}

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
