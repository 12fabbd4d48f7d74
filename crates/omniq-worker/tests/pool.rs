//! The worker pool through its public API, on `MemoryStorage` with tokio's
//! paused clock, so retries, timeouts and intervals take no real time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omniq_core::{ClaimRequest, NewTask, Settings, Storage, StorageExt, TaskStatus};
use omniq_worker::{Clock, HandlerError, Pool, Registry, TaskContext};
use serde_json::json;
use tokio::time::Instant;

mod common;

use common::Harness;

fn adder() -> Registry {
    let mut registry = Registry::new();
    registry.register("math.add", |(a, b): (i64, i64)| async move {
        Ok::<_, HandlerError>(a + b)
    });
    registry
}

#[tokio::test(start_paused = true)]
async fn runs_tasks_and_stores_their_results() {
    let h = Harness::new();
    let pool = h.pool(adder()).start().expect("start the pool");
    let mut ids = Vec::new();
    for i in 0..10i64 {
        ids.push(
            h.enqueue(NewTask::with_payload("math.add", &(i, 100)).unwrap())
                .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let task = h.wait_finished(*id).await;
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.result, Some(json!(i as i64 + 100)));
        assert_eq!(task.attempts, 1);
    }
    let stats = pool.stats();
    assert_eq!((stats.claimed, stats.succeeded, stats.failed), (10, 10, 0));
    assert!(pool.shutdown(Duration::from_secs(1)).await.drained);
}

#[tokio::test(start_paused = true)]
async fn never_runs_more_than_its_concurrency() {
    let h = Harness::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let (r, m) = (running.clone(), most.clone());
    registry.register("slow", move |_: ()| {
        let (running, most) = (r.clone(), m.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        }
    });
    let pool = h.pool(registry).concurrency(3).start().expect("start the pool");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(h.enqueue(NewTask::new("slow")).await);
    }
    for id in ids {
        h.wait_finished(id).await;
    }
    assert_eq!(most.load(Ordering::SeqCst), 3);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_task_enqueued_in_the_same_process_starts_at_once() {
    let h = Harness::new();
    let pool = h
        .pool(adder())
        .poll_interval(Duration::from_secs(3600))
        .start()
        .expect("start the pool");
    tokio::time::sleep(Duration::from_secs(5)).await; // the pool is idle, waiting
    let start = Instant::now();
    let id = h
        .enqueue(NewTask::with_payload("math.add", &(1, 2)).unwrap())
        .await;
    h.wait_finished(id).await;
    assert!(
        start.elapsed() < Duration::from_millis(1),
        "took {:?}",
        start.elapsed()
    );
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_task_from_another_process_starts_within_the_poll_interval() {
    let h = Harness::new();
    let pool = h
        .pool(adder())
        .poll_interval(Duration::from_secs(2))
        .start()
        .expect("start the pool");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Enqueued straight into the store, with no signal: as another process would.
    let start = Instant::now();
    let id = h
        .store
        .enqueue_one(
            NewTask::with_payload("math.add", &(1, 2)).unwrap(),
            &Settings::default(),
        )
        .await
        .unwrap();
    h.wait_finished(id).await;
    let waited = start.elapsed();
    assert!(waited <= Duration::from_secs(2), "took {waited:?}");
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_its_timeout_is_cancelled_and_the_attempt_fails() {
    let h = Harness::new();
    let stopped = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let s = stopped.clone();
    registry.register_with_context("hang", move |_: (), ctx: TaskContext| {
        let stopped = s.clone();
        async move {
            // Drop guard: runs when the pool drops this future at the timeout.
            struct Guard(Arc<AtomicU32>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _guard = Guard(stopped);
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, HandlerError>(())
        }
    });
    let pool = h.pool(registry).start().expect("start the pool");
    let id = h
        .enqueue(
            NewTask::new("hang")
                .timeout(Duration::from_secs(2))
                .max_retries(1),
        )
        .await;
    let task = h.wait_finished(id).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.attempts, 2, "a timeout is retried like any failure");
    let error = task.error.unwrap();
    assert_eq!(error.kind, "timeout");
    assert!(error.message.contains("2s"), "{}", error.message);
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        2,
        "each attempt's future was dropped"
    );
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_exponential_backoff() {
    let h = Harness::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let c = calls.clone();
    registry.register_with_context("flaky", move |_: (), ctx: TaskContext| {
        let calls = c.clone();
        async move {
            calls.lock().unwrap().push(Instant::now());
            if ctx.attempt < 4 {
                return Err(HandlerError::retry(format!("attempt {} failed", ctx.attempt)));
            }
            Ok("finally")
        }
    });
    let pool = h.pool(registry).start().expect("start the pool");
    let id = h.enqueue(NewTask::new("flaky").max_retries(5)).await;
    let task = h.wait_finished(id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.attempts, 4);
    assert_eq!(task.result, Some(json!("finally")));
    let gaps: Vec<u64> = calls
        .lock()
        .unwrap()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    // 1 s, 2 s, 4 s, each up to one poll interval later (the retry is not signalled).
    for (gap, expected) in gaps.iter().zip([1u64, 2, 4]) {
        assert!((expected..=expected + 1).contains(gap), "gaps {gaps:?}");
    }
    assert_eq!(pool.stats().retried, 3);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn the_last_failure_is_stored_and_fatal_errors_are_not_retried() {
    let h = Harness::new();
    let mut registry = Registry::new();
    registry.register("always", |_: ()| async {
        Err::<(), _>(HandlerError::retry("still broken"))
    });
    registry.register("fatal", |_: ()| async {
        Err::<(), _>(HandlerError::fatal("bad input").kind("validation"))
    });
    registry.register("later", |_: ()| async {
        Err::<(), _>(HandlerError::retry_after("rate limited", Duration::from_secs(30)))
    });
    let pool = h.pool(registry).start().expect("start the pool");
    let always = h.enqueue(NewTask::new("always").max_retries(2)).await;
    let fatal = h.enqueue(NewTask::new("fatal").max_retries(5)).await;
    let later = h.enqueue(NewTask::new("later").max_retries(1)).await;

    let task = h.wait_finished(always).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Failed, 3));
    let error = task.error.unwrap();
    assert_eq!(
        (error.kind.as_str(), error.message.as_str(), error.attempt),
        ("handler", "still broken", 3)
    );

    let task = h.wait_finished(fatal).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Failed, 1));
    let error = task.error.unwrap();
    assert_eq!(error.kind, "validation");
    assert!(!error.retryable);

    let first = h
        .wait_for(later, |t| t.attempts == 1 && t.status == TaskStatus::Pending)
        .await;
    assert_eq!(first.eta - first.started_at.unwrap(), time::Duration::seconds(30));
    assert_eq!(h.wait_finished(later).await.attempts, 2);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_snooze_runs_the_task_again_later_without_spending_an_attempt() {
    let h = Harness::new();
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let seen = calls.clone();
    registry.register("busy", move |_: ()| {
        let seen = seen.clone();
        async move {
            // Busy twice, then done.
            match seen.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(HandlerError::snooze(Duration::from_secs(10))),
                _ => Ok(()),
            }
        }
    });
    let pool = h.pool(registry).start().expect("start the pool");
    let id = h.enqueue(NewTask::new("busy").max_retries(0)).await;
    let snoozed = h
        .wait_for(id, |t| t.snoozes == 1 && t.status == TaskStatus::Pending)
        .await;
    assert_eq!(snoozed.attempts, 0, "a snooze gives its attempt back");
    assert_eq!(snoozed.eta - snoozed.updated_at, time::Duration::seconds(10));
    assert!(snoozed.errors.is_empty() && snoozed.error.is_none());
    let task = h.wait_finished(id).await;
    assert_eq!(
        (task.status, task.attempts, task.snoozes),
        (TaskStatus::Completed, 1, 2),
        "no retries were allowed, yet two snoozes did not fail it"
    );
    assert_eq!(pool.stats().snoozed, 2);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn unknown_handlers_bad_payloads_and_panics_fail_the_task_not_the_pool() {
    let h = Harness::new();
    #[derive(serde::Deserialize)]
    struct Email {
        #[allow(dead_code)]
        to: String,
    }
    let mut registry = adder();
    registry.register("email.send", |_: Email| async { Ok::<_, HandlerError>(()) });
    registry.register("boom", |_: ()| async {
        if true {
            panic!("kaboom");
        }
        Ok::<_, HandlerError>(())
    });
    let pool = h.pool(registry).start().expect("start the pool");
    let unknown = h.enqueue(NewTask::new("no.such.handler").max_retries(3)).await;
    let bad = h
        .enqueue(
            NewTask::with_payload("email.send", &json!({"subject": "hi"}))
                .unwrap()
                .max_retries(3),
        )
        .await;
    let panics = h.enqueue(NewTask::new("boom").max_retries(0)).await;
    let fine = h
        .enqueue(NewTask::with_payload("math.add", &(2, 2)).unwrap())
        .await;

    let task = h.wait_finished(unknown).await;
    let error = task.error.unwrap();
    assert_eq!(
        (task.status, task.attempts, error.kind.as_str()),
        (TaskStatus::Failed, 1, "unknown_handler")
    );
    assert!(
        error.message.contains("no.such.handler") && !error.retryable,
        "{}",
        error.message
    );

    let task = h.wait_finished(bad).await;
    let error = task.error.unwrap();
    assert_eq!(
        (task.status, task.attempts, error.kind.as_str()),
        (TaskStatus::Failed, 1, "bad_payload")
    );
    assert!(error.message.contains("missing field `to`"), "{}", error.message);
    assert!(error.message.contains("email.send"), "{}", error.message);

    let task = h.wait_finished(panics).await;
    let error = task.error.unwrap();
    assert_eq!((task.status, error.kind.as_str()), (TaskStatus::Failed, "panic"));
    assert!(error.message.contains("kaboom"), "{}", error.message);

    assert_eq!(h.wait_finished(fine).await.result, Some(json!(4)));
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn interval_tasks_repeat_until_their_series_is_cancelled() {
    let h = Harness::new();
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let r = runs.clone();
    registry.register("tick", move |_: ()| {
        let runs = r.clone();
        async move { Ok::<_, HandlerError>(runs.fetch_add(1, Ordering::SeqCst) + 1) }
    });
    let pool = h
        .pool(registry)
        .poll_interval(Duration::from_millis(100))
        .start()
        .expect("start the pool");
    let first = h
        .enqueue(NewTask::new("tick").interval(Duration::from_secs(10)))
        .await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4, "at 0 s, 10 s, 20 s and 30 s");
    let done = h.store.list(Default::default()).await.unwrap();
    assert_eq!(
        done.iter().filter(|t| t.status == TaskStatus::Completed).count(),
        4
    );
    assert!(done.iter().all(|t| t.series == Some(first)));
    let cancelled = h.store.cancel(first, h.clock.now()).await.unwrap();
    assert_eq!(cancelled.len(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4, "the series stopped");
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn leases_are_renewed_while_a_long_task_runs() {
    let h = Harness::new();
    let mut registry = Registry::new();
    registry.register("long", |_: ()| async {
        tokio::time::sleep(Duration::from_secs(100)).await;
        Ok::<_, HandlerError>("done")
    });
    let pool = h
        .pool(registry.clone())
        .lease(Duration::from_secs(10), Duration::from_secs(3))
        .requeue_every(Duration::from_secs(1))
        .start()
        .expect("start the pool");
    // A second pool watching for expired leases must find none.
    let watcher = h
        .pool(registry)
        .requeue_every(Duration::from_secs(1))
        .start()
        .expect("start the pool");
    let id = h.enqueue(NewTask::new("long")).await;
    let task = h.wait_finished(id).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 1));
    assert!(task.lease.is_none());
    assert_eq!(watcher.stats().claimed, 0);
    pool.shutdown(Duration::from_secs(1)).await;
    watcher.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_workers_task_is_taken_over_when_its_lease_expires() {
    let h = Harness::new();
    let id = h
        .enqueue(NewTask::with_payload("math.add", &(20, 22)).unwrap())
        .await;
    // A worker claims the task and dies without a word.
    let claimed = h
        .store
        .claim(ClaimRequest {
            queue: omniq_core::DEFAULT_QUEUE.into(),
            worker_id: "dead".into(),
            limit: 1,
            lease_for: Duration::from_secs(30),
            now: h.clock.now(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let pool = h
        .pool(adder())
        .requeue_every(Duration::from_secs(5))
        .start()
        .expect("start the pool");
    let task = h.wait_finished(id).await;
    assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 2));
    assert_eq!(task.result, Some(json!(42)));
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_task_stops_its_handler() {
    let h = Harness::new();
    let mut registry = Registry::new();
    registry.register_with_context("wait", |_: (), ctx: TaskContext| async move {
        ctx.cancelled().await;
        Ok::<_, HandlerError>("stopped")
    });
    let pool = h
        .pool(registry)
        .lease(Duration::from_secs(30), Duration::from_secs(2))
        .start()
        .expect("start the pool");
    let id = h.enqueue(NewTask::new("wait")).await;
    h.wait_for(id, |t| t.status == TaskStatus::Running).await;
    h.store.cancel(id, h.clock.now()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = pool.stats();
    assert_eq!((stats.lost, stats.in_flight), (1, 0), "{stats:?}");
    assert_eq!(h.task(id).await.status, TaskStatus::Cancelled);
    pool.shutdown(Duration::from_secs(1)).await;
}

/// Runs a batch of one-second tasks, counting how often each handler finished.
fn counting(runs: &Arc<Mutex<HashMap<u32, u32>>>) -> Registry {
    let mut registry = Registry::new();
    let runs = runs.clone();
    registry.register("job", move |n: u32| {
        let runs = runs.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            *runs.lock().unwrap().entry(n).or_default() += 1;
            Ok::<_, HandlerError>(n)
        }
    });
    registry
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_running_tasks_until_the_deadline() {
    let h = Harness::new();
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let pool = h
        .pool(counting(&runs))
        .concurrency(4)
        .start()
        .expect("start the pool");
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(h.enqueue(NewTask::with_payload("job", &n).unwrap()).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = pool.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    assert_eq!(report.handed_back, 0);
    for id in ids {
        assert_eq!(h.task(id).await.status, TaskStatus::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_mid_batch_loses_nothing_and_runs_nothing_twice() {
    let h = Harness::new();
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let pool: Pool = h
        .pool(counting(&runs))
        .concurrency(4)
        .start()
        .expect("start the pool");
    let mut ids = Vec::new();
    for n in 0..20u32 {
        ids.push(h.enqueue(NewTask::with_payload("job", &n).unwrap()).await);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await; // two rounds done, a third running
    let report = pool.shutdown(Duration::from_millis(100)).await;
    assert!(!report.drained);
    assert_eq!(report.handed_back, 4);
    let counts = h.store.counts().await.unwrap();
    assert_eq!((counts.completed, counts.pending, counts.running), (8, 12, 0));
    for id in &ids {
        let task = h.task(*id).await;
        if task.status == TaskStatus::Pending {
            assert_eq!(task.attempts, 0, "a handed-back attempt is not counted");
        }
    }

    // A new pool finishes the rest; every task ran to completion exactly once.
    let pool = h
        .pool(counting(&runs))
        .concurrency(4)
        .start()
        .expect("start the pool");
    for id in &ids {
        h.wait_finished(*id).await;
    }
    pool.shutdown(Duration::from_secs(1)).await;
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
}

#[tokio::test]
async fn a_lease_renewed_no_sooner_than_it_expires_is_refused() {
    let h = Harness::new();
    let refused = h
        .pool(adder())
        .lease(Duration::from_secs(10), Duration::from_secs(10))
        .start();
    match refused {
        Err(omniq_core::Error::InvalidConfig { name, reason }) => {
            assert_eq!(name, "renew_every");
            assert!(reason.contains("twice"), "{reason}");
        }
        Err(other) => panic!("expected a refusal of the lease, got {other:?}"),
        Ok(_) => panic!("a lease renewed no sooner than it expires was accepted"),
    }
    assert!(h
        .pool(adder())
        .lease(Duration::from_secs(10), Duration::from_secs(3))
        .start()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn periods_too_long_to_add_do_not_panic() {
    let h = Harness::new();
    let pool = h
        .pool(adder())
        .lease(Duration::MAX, Duration::from_secs(u64::MAX))
        .requeue_every(Duration::MAX)
        .poll_interval(Duration::MAX)
        .start()
        .expect("start the pool");
    let id = h
        .enqueue(NewTask::with_payload("math.add", &(1, 2)).unwrap())
        .await;
    assert_eq!(h.wait_finished(id).await.result, Some(json!(3)));
    assert!(pool.shutdown(Duration::MAX).await.drained);
}

#[tokio::test(start_paused = true)]
async fn shutdown_on_stops_when_the_program_says() {
    let h = Harness::new();
    let pool = h.pool(adder()).start().expect("start the pool");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.shutdown_on(
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let id = h
        .enqueue(NewTask::with_payload("math.add", &(2, 2)).unwrap())
        .await;
    assert_eq!(h.wait_finished(id).await.result, Some(json!(4)));
    assert!(!running.is_finished(), "the pool stopped before it was told to");
    stop.send(()).unwrap();
    assert!(running.await.unwrap().drained);
}

/// An error with a cause, as a client library returns one.
#[derive(Debug)]
struct Refused(std::io::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the payment service refused")
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn every_failed_attempt_is_kept_with_its_causes_panics_included() {
    let h = Harness::new();
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let counter = calls.clone();
    registry.register("pay", move |_: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => Err(Refused(std::io::Error::other("connection reset")))?,
                1 => panic!("ledger out of balance"),
                _ => Ok::<_, HandlerError>("paid"),
            }
        }
    });
    let pool = h.pool(registry).start().unwrap();
    let id = h
        .enqueue(NewTask::with_payload("pay", &()).unwrap().max_retries(3))
        .await;
    let task = h.wait_finished(id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.errors.len(), 2);
    let first = &task.errors[0].error;
    assert_eq!(first.message, "the payment service refused");
    assert_eq!(first.causes, ["connection reset"]);
    assert_eq!(task.errors[0].worker_id.as_deref(), Some(pool.worker_id()));
    let second = &task.errors[1].error;
    assert_eq!(second.kind, "panic");
    assert!(
        second.message.contains("ledger out of balance"),
        "{}",
        second.message
    );
    let location = second.location.as_deref().unwrap_or_default();
    assert!(
        location.starts_with("crates/omniq-worker/tests/pool.rs:"),
        "{location:?}"
    );
    pool.shutdown(Duration::from_secs(1)).await;
}
