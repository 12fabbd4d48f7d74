//! The scenarios of the conformance suite, one per promise of the `Storage`
//! trait: the helpers they share, then enqueue and claim. Finishing and leases
//! are in `finishing.rs`; intervals, cancel, retry, results, purge, list and
//! counts in `lifecycle.rs`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Map, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use super::Scenario;
use crate::error::Error;
use crate::settings::Settings;
use crate::storage::{ClaimRequest, Finish, FinishOutcome, ListQuery, Storage};
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
];

/// The suite's clock starts here; every time is derived from it.
pub(super) const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);
pub(super) const LEASE: Duration = Duration::from_secs(30);

pub(super) fn at(ms: u64) -> OffsetDateTime {
    T0 + Duration::from_millis(ms)
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) fn new(func: &str) -> NewTask {
    NewTask::new(func)
}

pub(super) fn make(task: NewTask, now: OffsetDateTime) -> Task {
    task.into_task(&Settings::default(), now).expect("valid task")
}

pub(super) async fn enqueue_at(store: &dyn Storage, tasks: Vec<NewTask>, now: OffsetDateTime) -> Vec<TaskId> {
    let tasks: Vec<Task> = tasks.into_iter().map(|t| make(t, now)).collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    store.enqueue(tasks).await.expect("enqueue");
    ids
}

pub(super) async fn enqueue_one(store: &dyn Storage, task: NewTask) -> TaskId {
    enqueue_at(store, vec![task], T0).await[0]
}

pub(super) async fn claim(store: &dyn Storage, worker: &str, limit: usize, now: OffsetDateTime) -> Vec<Task> {
    store
        .claim(ClaimRequest {
            queue: crate::DEFAULT_QUEUE.into(),
            worker_id: worker.into(),
            limit,
            lease_for: LEASE,
            now,
        })
        .await
        .expect("claim")
}

pub(super) async fn claim_one(store: &dyn Storage, now: OffsetDateTime) -> Task {
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

pub(super) fn complete(value: Value) -> Outcome {
    Outcome::Complete { result: value }
}

pub(super) fn error(attempt: u32) -> TaskError {
    TaskError::new("handler", "boom", attempt, true)
}

pub(super) async fn get(store: &dyn Storage, id: TaskId) -> Task {
    store.get(id).await.expect("get")
}

pub(super) async fn all_tasks(store: &dyn Storage) -> Vec<Task> {
    store.list(ListQuery::default()).await.expect("list")
}

pub(super) fn applied_next(outcome: FinishOutcome) -> Option<TaskId> {
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
        store.enqueue(vec![task.clone()]).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store.import(vec![make(new("b"), T0), task]).await,
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
                ("ok", Ok(_)) => {}
                ("race", Ok(_)) => race_won += 1,
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
    // An enqueue takes new work only, and refuses history untouched.
    for record in [&done, &failed, &cancelled] {
        let refused = store.enqueue(vec![make(new("beside"), T0), record.clone()]).await;
        assert!(matches!(refused, Err(Error::Conflict { .. })), "{refused:?}");
    }
    assert_eq!(store.counts().await.unwrap().total(), 0);
    store
        .import(vec![done.clone(), failed.clone(), cancelled.clone()])
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
                    queue: crate::DEFAULT_QUEUE.into(),
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
