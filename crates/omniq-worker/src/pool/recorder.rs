//! The recorder: writes the pool's outcomes, those that arrive together in
//! one call to `finish`, and outlives a store that panics.

// The pool's shared state, counters and imports, which this part of the
// pool works with.
use super::executor::panic_message;
use super::*;

/// Records the outcomes of the pool's tasks: those that arrive while one batch
/// is being written go together in the next call to `finish`, so tasks that end
/// together cost one transaction (SQLite) or one journaled change (files).
pub(super) async fn record(
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    mut outcomes: mpsc::UnboundedReceiver<(Finish, oneshot::Sender<omniq_core::Result<FinishOutcome>>)>,
) {
    let mut batch = Vec::new();
    while outcomes.recv_many(&mut batch, 256).await > 0 {
        let (finishes, replies): (Vec<Finish>, Vec<_>) = batch.drain(..).unzip();
        // A store that panics fails this batch's records, not every later one:
        // the recorder goes on, and those tasks run again after their leases.
        let finished = AssertUnwindSafe(storage.finish(finishes, clock.now()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(omniq_core::Error::backend(
                    "worker",
                    format!("the store panicked: {}", panic_message(panic)),
                ))
            });
        match finished {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(omniq_core::Error::backend("worker", message.clone())));
                }
            }
        }
    }
}
