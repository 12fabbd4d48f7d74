//! Pools serving several queues, through the public API on `MemoryStorage`
//! with tokio's paused clock: each queue's own slots, a flood on one queue
//! that does not delay another, pausing, and priorities.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omniq_core::{NewTask, Storage, TaskStatus};
use omniq_worker::{Clock, HandlerError, Registry, TaskContext};
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(500);

mod common;

use common::Harness;

/// A handler that takes `secs` seconds and counts how many of each queue run
/// at once, keeping the most seen.
#[derive(Clone, Default)]
struct Gauge {
    bulk: Arc<AtomicUsize>,
    bulk_most: Arc<AtomicUsize>,
    urgent: Arc<AtomicUsize>,
    urgent_most: Arc<AtomicUsize>,
}

fn slow(gauge: &Gauge) -> Registry {
    let mut registry = Registry::new();
    let gauge = gauge.clone();
    registry.register_with_context("slow", move |secs: u64, ctx: TaskContext| {
        let gauge = gauge.clone();
        async move {
            let (now, most) = match ctx.queue.as_str() {
                "urgent" => (&gauge.urgent, &gauge.urgent_most),
                _ => (&gauge.bulk, &gauge.bulk_most),
            };
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        }
    });
    registry
}

/// A thousand long tasks on `bulk` fill its two slots; a task enqueued on
/// `urgent` by another process starts within a poll interval all the same,
/// and neither queue ever runs more than its own slots.
#[tokio::test(start_paused = true)]
async fn a_flood_on_one_queue_does_not_delay_another() {
    let h = Harness::new();
    let gauge = Gauge::default();
    let pool = h
        .pool(slow(&gauge))
        .queue("bulk", 2)
        .queue("urgent", 1)
        .start()
        .expect("start the pool");
    let flood = (0..1_000)
        .map(|_| NewTask::with_payload("slow", &60u64).unwrap().queue("bulk"))
        .collect();
    h.enqueue_elsewhere(flood).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        gauge.bulk.load(Ordering::SeqCst),
        2,
        "the flood fills bulk's slots"
    );

    for _ in 0..3 {
        let start = Instant::now();
        let urgent = h
            .enqueue_elsewhere(vec![NewTask::with_payload("slow", &0u64)
                .unwrap()
                .queue("urgent")])
            .await[0];
        let task = h.wait_for(urgent, |t| t.status == TaskStatus::Completed).await;
        assert!(
            start.elapsed() <= POLL,
            "the urgent task waited {:?}",
            start.elapsed()
        );
        assert_eq!(task.queue, "urgent");
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    assert_eq!(gauge.bulk_most.load(Ordering::SeqCst), 2);
    assert_eq!(gauge.urgent_most.load(Ordering::SeqCst), 1);
    assert_eq!(h.store.counts().await.unwrap().running, 2);
    pool.shutdown(Duration::ZERO).await;
}

/// A pool claims only from the queues it serves, and does not spin on due
/// tasks of others: its own task, due later, starts on time.
#[tokio::test(start_paused = true)]
async fn a_pool_takes_only_its_queues_and_sleeps_past_others() {
    let h = Harness::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = ran.clone();
    registry.register_with_context("note", move |_: (), ctx: TaskContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((ctx.queue.clone(), Instant::now()));
            Ok::<_, HandlerError>(())
        }
    });
    let pool = h
        .pool(registry)
        .poll_interval(Duration::from_secs(3600))
        .queue("mine", 1)
        .start()
        .expect("start the pool");
    let theirs = h
        .enqueue_elsewhere(vec![NewTask::new("note").queue("theirs")])
        .await[0];
    let start = Instant::now();
    let mine = h
        .enqueue_elsewhere(vec![NewTask::new("note")
            .queue("mine")
            .eta(omniq_core::later(h.clock.now(), Duration::from_secs(10)))])
        .await[0];
    // Woken by a signal to see the new task's eta, as a client of this
    // process would wake it.
    h.signals.task_enqueued();
    h.wait_for(mine, |t| t.status == TaskStatus::Completed).await;
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0].0, "mine");
    let waited = ran[0].1 - start;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    assert_eq!(h.store.get(theirs).await.unwrap().status, TaskStatus::Pending);
    pool.shutdown(Duration::from_secs(1)).await;
}

/// A paused queue is not claimed from; its running task finishes; a resume
/// by another process is seen within a poll interval.
#[tokio::test(start_paused = true)]
async fn a_paused_queue_waits_and_resumes_within_a_poll() {
    let h = Harness::new();
    let gauge = Gauge::default();
    let pool = h
        .pool(slow(&gauge))
        .queue("bulk", 1)
        .start()
        .expect("start the pool");
    let ids = h
        .enqueue_elsewhere(
            (0..3)
                .map(|_| NewTask::with_payload("slow", &2u64).unwrap().queue("bulk"))
                .collect(),
        )
        .await;
    h.wait_for(ids[0], |t| t.status == TaskStatus::Running).await;
    h.store.set_paused("bulk", true).await.unwrap();
    h.wait_for(ids[0], |t| t.status == TaskStatus::Completed).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.store.get(ids[1]).await.unwrap().status, TaskStatus::Pending);

    let start = Instant::now();
    h.store.set_paused("bulk", false).await.unwrap();
    h.wait_for(ids[1], |t| t.status != TaskStatus::Pending).await;
    assert!(start.elapsed() <= POLL, "resumed after {:?}", start.elapsed());
    h.wait_for(ids[2], |t| t.status == TaskStatus::Completed).await;
    pool.shutdown(Duration::from_secs(1)).await;
}

/// Within one queue, the highest priority runs first, then the oldest eta.
#[tokio::test(start_paused = true)]
async fn a_pool_runs_higher_priorities_first() {
    let h = Harness::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = order.clone();
    registry.register("note", move |name: String| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(name);
            Ok::<_, HandlerError>(())
        }
    });
    let tasks = [
        ("low", -1),
        ("normal", 0),
        ("high", 5),
        ("normal-later", 0),
        ("top", 100),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, priority))| {
        NewTask::with_payload("note", name)
            .unwrap()
            .priority(priority)
            .eta(omniq_core::earlier(
                h.clock.now(),
                Duration::from_secs(10 - i as u64),
            ))
    })
    .collect();
    let ids = h.enqueue_elsewhere(tasks).await;
    let pool = h.pool(registry).concurrency(1).start().expect("start the pool");
    for id in ids {
        h.wait_for(id, |t| t.status == TaskStatus::Completed).await;
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["top", "high", "normal", "normal-later", "low"]
    );
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_queues_refuse_to_start() {
    let h = Harness::new();
    for pool in [
        h.pool(Registry::new()).queue("has space", 1),
        h.pool(Registry::new()).queue("emails", 0),
    ] {
        let refused = pool.start().err().expect("refused");
        assert!(
            matches!(refused, omniq_core::Error::InvalidConfig { .. }),
            "{refused}"
        );
    }
}

/// A typed job whose queue the pool does not serve: `unserved_jobs` names
/// it, and starting the pool warns, naming the job and its queue.
#[tokio::test]
async fn a_job_whose_queue_the_pool_does_not_serve_is_named_at_start() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct SendEmail;
    impl omniq_worker::Job for SendEmail {
        const NAME: &'static str = "email.send";
        const QUEUE: &'static str = "emails";
        type Output = ();
        type Error = HandlerError;
        async fn run(self, _ctx: TaskContext) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    let mut registry = Registry::new();
    registry.job::<SendEmail>();
    let store = Arc::new(omniq_core::MemoryStorage::new());
    let default_only = omniq_worker::WorkerPool::new(store.clone(), registry.clone()).concurrency(4);
    assert_eq!(
        default_only.unserved_jobs(),
        [("email.send".to_owned(), "emails".to_owned())]
    );
    let serving = omniq_worker::WorkerPool::new(store.clone(), registry.clone()).queue("emails", 2);
    assert!(serving.unserved_jobs().is_empty());

    // The warning, as a subscriber sees it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let pool = {
        let _guard = tracing::subscriber::set_default(subscriber);
        default_only.start().unwrap()
    };
    pool.shutdown(Duration::from_secs(1)).await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("WARN") && logged.contains("email.send") && logged.contains("emails"),
        "{logged}"
    );
}
