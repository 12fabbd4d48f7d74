//! What a pool logs at `warn` for operators: a task that fails for good,
//! with its id and handler, and the tasks a lease pass hands back, by id.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Harness;
use omniq_core::{ClaimRequest, NewTask, Storage, TaskStatus};
use omniq_worker::{HandlerError, Registry};

/// Everything a `tracing` subscriber writes, kept for the test to read.
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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The test runs on one thread, so a subscriber set for it sees the pool's
/// events too.
#[tokio::test(start_paused = true)]
async fn final_failures_and_hand_backs_are_warnings_naming_the_tasks() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::new();
    let mut registry = Registry::new();
    registry.register("payments.charge", |_: ()| async {
        Err::<(), _>(HandlerError::fatal("card declined"))
    });
    // A task claimed by a worker that then died: its lease runs out.
    let orphan = h
        .enqueue_elsewhere(vec![NewTask::new("payments.charge").max_retries(3)])
        .await[0];
    let claimed = h
        .store
        .claim(ClaimRequest {
            worker_id: "dead".into(),
            queue: omniq_core::DEFAULT_QUEUE.into(),
            limit: 1,
            lease_for: Duration::from_secs(1),
            now: time::OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let failing = h.enqueue(NewTask::new("payments.charge").max_retries(0)).await;
    let pool = h
        .pool(registry)
        .requeue_every(Duration::from_secs(1))
        .start()
        .unwrap();
    for _ in 0..200 {
        let done = h.store.get(failing).await.unwrap().status == TaskStatus::Failed;
        if done && captured.text().contains("handed back") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.shutdown(Duration::from_secs(1)).await;
    let logged = captured.text();
    let failure = logged
        .lines()
        .find(|l| l.contains("task attempt failed"))
        .unwrap_or_else(|| panic!("no failure logged: {logged}"));
    assert!(failure.contains("WARN"), "{failure}");
    assert!(
        failure.contains(&failing.to_string()) && failure.contains("payments.charge"),
        "{failure}"
    );
    assert!(failure.contains("card declined"), "{failure}");
    let hand_back = logged
        .lines()
        .find(|l| l.contains("handed back"))
        .unwrap_or_else(|| panic!("no hand-back logged: {logged}"));
    assert!(
        hand_back.contains("WARN") && hand_back.contains(&format!("{orphan} (payments.charge)")),
        "{hand_back}"
    );
}
