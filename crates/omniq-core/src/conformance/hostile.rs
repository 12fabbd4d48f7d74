//! Scenarios with hostile and extreme input: batches refused at any size,
//! values past what a store holds, results nested too deeply, series stopped
//! by an id that was purged, and a property test that drives random extreme
//! times and durations through every operation without a panic.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use super::scenarios::{finish, make};
use super::{Factory, Scenario};
use crate::error::Error;
use crate::limits::{MAX_DURATION, MAX_JSON_DEPTH, MAX_TIME, MIN_TIME};
use crate::settings::Settings;
use crate::storage::{ClaimRequest, Finish, FinishOutcome, ListQuery, Storage};
use crate::task::{NewTask, Outcome, Task, TaskError, TaskStatus};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

scenarios![
    a_refused_batch_stores_nothing_at_any_size,
    records_past_what_a_store_holds_are_refused,
    a_result_nested_too_deeply_fails_the_attempt,
    extreme_leases_and_retry_times_saturate,
    a_sound_store_reports_nothing_damaged,
    expired_leases_are_handed_back_in_bounded_passes,
    a_series_stops_by_its_first_id_after_that_occurrence_was_purged,
];

fn nested(levels: usize) -> Value {
    // `json!` would copy `inner` at every level; build the value directly.
    (0..levels).fold(json!("leaf"), |inner, _| Value::Array(vec![inner]))
}

async fn claim(store: &dyn Storage, limit: usize, lease_for: Duration, now: OffsetDateTime) -> Vec<Task> {
    store
        .claim(ClaimRequest {
            queue: crate::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit,
            lease_for,
            now,
        })
        .await
        .expect("claim")
}

async fn a_refused_batch_stores_nothing_at_any_size(store: &dyn Storage) {
    let stored = make(NewTask::new("x"), T0);
    store.enqueue(vec![stored.clone()]).await.unwrap();
    let mut batch: Vec<Task> = (0..1_200)
        .map(|i| make(NewTask::new("bulk").args(vec![json!(i)]), T0))
        .collect();
    batch[1_100].id = stored.id;
    let refused = store.enqueue(batch.clone()).await;
    assert!(matches!(refused, Err(Error::Conflict { .. })), "{refused:?}");
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.total(), 1, "the refused batch left {counts:?}");
    assert_eq!(store.list(ListQuery::default()).await.unwrap().len(), 1);

    // The other 1,199 then enqueue and run.
    batch.remove(1_100);
    store.enqueue(batch).await.expect("the rest of the batch");
    let mut done = 0;
    loop {
        let claimed = claim(store, 500, Duration::from_secs(30), T0).await;
        if claimed.is_empty() {
            break;
        }
        for task in &claimed {
            let outcome = finish(store, task, Outcome::Complete { result: json!(null) }, T0).await;
            assert!(matches!(outcome, FinishOutcome::Applied { .. }));
        }
        done += claimed.len();
    }
    assert_eq!(done, 1_200, "the stored task and the 1,199");
    assert_eq!(store.counts().await.unwrap().completed, 1_200);
}

async fn records_past_what_a_store_holds_are_refused(store: &dyn Storage) {
    let refuse = |task: Task, what: &'static str| async move {
        let answer = store.enqueue(vec![task]).await;
        match answer {
            Err(Error::InvalidConfig { name, .. }) => assert!(name.contains(what), "{name}"),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    };
    let mut task = make(NewTask::new("x"), T0);
    task.eta = datetime!(9999-01-01 0:00 UTC);
    refuse(task, "eta").await;
    let mut task = make(NewTask::new("x"), T0);
    task.created_at = datetime!(1500-01-01 0:00 UTC);
    refuse(task, "created_at").await;
    let mut task = make(NewTask::new("x"), T0);
    task.timeout = Some(Duration::from_secs(u64::MAX));
    refuse(task, "timeout").await;
    let mut task = make(NewTask::new("x").interval(Duration::from_secs(1)), T0);
    task.interval = Some(Duration::from_secs(10u64.pow(12)));
    refuse(task, "interval").await;
    let mut task = make(NewTask::new("x"), T0);
    task.args = vec![nested(200)];
    refuse(task, "args").await;
    let mut task = make(NewTask::new("x"), T0);
    task.kwargs.insert("deep".into(), nested(MAX_JSON_DEPTH));
    refuse(task, "kwargs").await;
    assert_eq!(store.counts().await.unwrap().total(), 0);

    // The same values through `NewTask` are refused before reaching a store.
    let settings = Settings::default();
    for task in [
        NewTask::new("x").eta(datetime!(9999-01-01 0:00 UTC)),
        NewTask::new("x").interval(Duration::from_secs(10u64.pow(12))),
        NewTask::new("x").timeout(Duration::MAX),
        NewTask::new("x").args(vec![nested(200)]),
    ] {
        assert!(matches!(
            task.into_task(&settings, T0),
            Err(Error::InvalidConfig { .. })
        ));
    }
    // The deepest payload allowed round-trips.
    let task = make(NewTask::new("x").args(vec![nested(MAX_JSON_DEPTH - 1)]), T0);
    store.enqueue(vec![task.clone()]).await.unwrap();
    assert_eq!(store.get(task.id).await.unwrap().args, task.args);
}

async fn a_result_nested_too_deeply_fails_the_attempt(store: &dyn Storage) {
    let tasks: Vec<Task> = (0..3)
        .map(|_| make(NewTask::new("x").max_retries(3), T0))
        .collect();
    store.enqueue(tasks.clone()).await.unwrap();
    let claimed = claim(store, 3, Duration::from_secs(30), T0).await;
    assert_eq!(claimed.len(), 3);
    let finishes = claimed
        .iter()
        .enumerate()
        .map(|(i, task)| Finish {
            id: task.id,
            token: task.lease.as_ref().unwrap().token,
            outcome: Outcome::Complete {
                result: if i == 1 { nested(500) } else { json!(i) },
            },
        })
        .collect();
    let answers = store.finish(finishes, T0).await.expect("finish");
    assert!(answers.iter().all(|a| matches!(a, FinishOutcome::Applied { .. })));
    let bad = store.get(claimed[1].id).await.expect("the record stays readable");
    assert_eq!(bad.status, TaskStatus::Failed);
    let error = bad.error.expect("an error");
    assert_eq!(error.kind, "bad_result");
    assert!(!error.retryable);
    assert_eq!(bad.result, None);
    for i in [0, 2] {
        let good = store.get(claimed[i].id).await.unwrap();
        assert_eq!(good.status, TaskStatus::Completed);
        assert_eq!(good.result, Some(json!(i)));
    }
    assert_eq!(store.list(ListQuery::default()).await.unwrap().len(), 3);
}

async fn extreme_leases_and_retry_times_saturate(store: &dyn Storage) {
    let task = make(NewTask::new("x").max_retries(5), T0);
    store.enqueue(vec![task.clone()]).await.unwrap();
    let claimed = claim(store, 1, Duration::MAX, T0).await.remove(0);
    assert_eq!(claimed.lease.as_ref().unwrap().expires_at, MAX_TIME);
    let renewed = store
        .renew(
            &[crate::storage::LeaseRef {
                id: claimed.id,
                token: claimed.lease.as_ref().unwrap().token,
            }],
            Duration::MAX,
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        renewed,
        [crate::storage::RenewOutcome::Renewed { expires_at: MAX_TIME }]
    );
    assert!(store.requeue_expired(T0).await.unwrap().is_empty());
    let far = Outcome::Retry {
        error: TaskError::new("handler", "later", 1, true),
        at: datetime!(9999-01-01 0:00 UTC),
    };
    assert!(matches!(
        finish(store, &claimed, far, T0).await,
        FinishOutcome::Applied { .. }
    ));
    let stored = store.get(task.id).await.unwrap();
    assert_eq!((stored.status, stored.eta), (TaskStatus::Pending, MAX_TIME));
    let claimed = claim(store, 1, Duration::from_secs(1), MAX_TIME).await.remove(0);
    assert_eq!(claimed.lease.as_ref().unwrap().expires_at, MAX_TIME);
    assert_eq!(store.requeue_expired(MAX_TIME).await.unwrap(), [task.id]);
    assert_eq!(store.purge(MIN_TIME).await.unwrap(), 0);
    assert_eq!(store.purge(MAX_TIME).await.unwrap(), 0);
}

async fn a_sound_store_reports_nothing_damaged(store: &dyn Storage) {
    assert!(store.damaged().await.unwrap().is_empty());
    let tasks: Vec<Task> = (0..3)
        .map(|i| make(NewTask::new("x").args(vec![nested(i * 20)]), T0))
        .collect();
    store.enqueue(tasks).await.unwrap();
    let claimed = claim(store, 1, Duration::from_secs(30), T0).await.remove(0);
    finish(store, &claimed, Outcome::Complete { result: nested(40) }, T0).await;
    assert!(store.damaged().await.unwrap().is_empty());
}

async fn expired_leases_are_handed_back_in_bounded_passes(store: &dyn Storage) {
    use crate::storage::REQUEUE_BATCH;
    let n = REQUEUE_BATCH + 5;
    let tasks: Vec<Task> = (0..n)
        .map(|_| make(NewTask::new("x").max_retries(1), T0))
        .collect();
    store.enqueue(tasks).await.unwrap();
    assert_eq!(claim(store, n, Duration::from_secs(1), T0).await.len(), n);
    let after = T0 + Duration::from_secs(10);
    assert_eq!(store.requeue_expired(after).await.unwrap().len(), REQUEUE_BATCH);
    assert_eq!(store.requeue_expired(after).await.unwrap().len(), 5);
    assert!(store.requeue_expired(after).await.unwrap().is_empty());
    assert_eq!(store.counts().await.unwrap().pending, n as u64);
}

async fn a_series_stops_by_its_first_id_after_that_occurrence_was_purged(store: &dyn Storage) {
    let first = make(NewTask::new("tick").interval(Duration::from_secs(60)), T0);
    store.enqueue(vec![first.clone()]).await.unwrap();
    let claimed = claim(store, 1, Duration::from_secs(30), T0).await.remove(0);
    let FinishOutcome::Applied { next: Some(next), .. } =
        finish(store, &claimed, Outcome::Complete { result: json!(1) }, T0).await
    else {
        panic!("the next occurrence was not enqueued");
    };
    let later = T0 + Duration::from_secs(3600);
    assert_eq!(
        store.purge(later).await.unwrap(),
        1,
        "the first occurrence is purged"
    );
    assert!(matches!(store.get(first.id).await, Err(Error::NotFound { .. })));
    assert_eq!(store.cancel(first.id, later).await.unwrap(), [next]);
    assert_eq!(store.get(next).await.unwrap().status, TaskStatus::Cancelled);
    // With nothing left of the series, the id is unknown again.
    assert!(matches!(
        store.cancel(first.id, later).await,
        Err(Error::NotFound { .. })
    ));
}

/// One extreme input for the property test.
#[derive(Clone, Debug)]
struct Extremes {
    eta: OffsetDateTime,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    lease: Duration,
    retry_at: OffsetDateTime,
    now: OffsetDateTime,
    purge_before: OffsetDateTime,
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(MAX_DURATION),
        Just(MAX_DURATION + Duration::from_nanos(1)),
        Just(Duration::MAX),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000_000).prop_map(Duration::from_secs),
    ]
}

fn time() -> impl Strategy<Value = OffsetDateTime> {
    prop_oneof![
        Just(MIN_TIME),
        Just(MAX_TIME),
        Just(T0),
        Just(OffsetDateTime::UNIX_EPOCH),
        Just(datetime!(-9999-01-01 0:00 UTC)),
        Just(datetime!(9999-12-31 23:59:59.999999999 UTC)),
        (-377_705_116_800i64..253_402_300_799)
            .prop_map(|s| { OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH) }),
    ]
}

fn extremes() -> impl Strategy<Value = Extremes> {
    (
        time(),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        duration(),
        time(),
        time(),
        time(),
    )
        .prop_map(
            |(eta, interval, timeout, lease, retry_at, now, purge_before)| Extremes {
                eta,
                interval,
                timeout,
                lease,
                retry_at,
                now,
                purge_before,
            },
        )
}

/// Drives one extreme input through enqueue, claim, renew, finish, expiry,
/// retry, cancel and purge. Each call may refuse the input with an error, but
/// none may panic, and the store must stay readable afterwards.
async fn drive(store: &dyn Storage, x: Extremes) -> Result<(), TestCaseError> {
    let settings = Settings::default();
    let mut task = NewTask::new("x").eta(x.eta).max_retries(1);
    if let Some(interval) = x.interval {
        task = task.interval(interval);
    }
    if let Some(timeout) = x.timeout {
        task = task.timeout(timeout);
    }
    // A refused task is a fine answer; what follows runs on a valid one.
    let task = match task.into_task(&settings, x.now.clamp(MIN_TIME, MAX_TIME)) {
        Ok(task) => task,
        Err(_) => make(NewTask::new("x").max_retries(1), T0),
    };
    let _ = store.enqueue(vec![task.clone()]).await;
    for round in 0..2 {
        let claimed = store
            .claim(ClaimRequest {
                queue: crate::DEFAULT_QUEUE.into(),
                worker_id: "w".into(),
                limit: 2,
                lease_for: x.lease,
                now: x.now,
            })
            .await;
        for claimed in claimed.unwrap_or_default() {
            let token = claimed.lease.as_ref().map(|l| l.token).unwrap_or_default();
            let lease = crate::storage::LeaseRef {
                id: claimed.id,
                token,
            };
            let _ = store.renew(&[lease], x.lease, x.now).await;
            let outcome = match round {
                0 => Outcome::Retry {
                    error: TaskError::new("handler", "boom", claimed.attempts, true),
                    at: x.retry_at,
                },
                _ => Outcome::Fail {
                    error: TaskError::new("handler", "boom", claimed.attempts, false),
                },
            };
            let finish = Finish {
                id: claimed.id,
                token,
                outcome,
            };
            let _ = store.finish(vec![finish], x.now).await;
        }
        let _ = store.requeue_expired(x.now).await;
        let _ = store.requeue_expired(MAX_TIME).await;
    }
    let _ = store.retry(task.id, x.now).await;
    let _ = store.cancel(task.id, x.now).await;
    let _ = store.purge(x.purge_before).await;
    let _ = store.purge(MAX_TIME).await;
    store
        .list(ListQuery::default())
        .await
        .map_err(|e| TestCaseError::fail(format!("the store cannot be listed after {x:?}: {e}")))?;
    store
        .counts()
        .await
        .map_err(|e| TestCaseError::fail(format!("the store cannot be counted after {x:?}: {e}")))?;
    Ok(())
}

/// Runs the extreme-values property test: 24 random inputs, each on a fresh
/// store from `factory`.
pub(super) fn check(factory: &dyn Factory) -> Result<(), String> {
    super::property(factory, 24, extremes(), |store, x| Box::pin(drive(store, x)))
}
