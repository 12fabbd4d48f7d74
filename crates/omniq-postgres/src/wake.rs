//! Wake-ups across hosts: the channel a schema's enqueues are announced on,
//! which queues a write makes due, and the listener that turns notifications
//! into the store's [`omniq_core::Storage::wake_ups`].
//!
//! A write that makes tasks due now sends one `pg_notify` per queue in the
//! same statement, so the notice leaves at commit and never for a write
//! rolled back. Notices are hints: one sent while the listener reconnects is
//! lost, which is why pools keep polling.

use std::collections::BTreeSet;
use std::time::Duration;

use omniq_core::{Task, TaskStatus};
use sqlx::postgres::PgListener;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The notification channel of `schema`: `omniq_` and a hash of the name, so
/// any schema name (up to 63 bytes, any characters) gives a short, plain
/// identifier well under PostgreSQL's 63-byte limit, the same on every host.
pub(crate) fn channel(schema: &str) -> String {
    // FNV-1a: small, stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("omniq_{hash:016x}")
}

/// The queues in which `tasks` are pending and due by `now`, once each: what a
/// write of them announces.
pub(crate) fn due_queues(tasks: &[Task], now: impl Fn(&Task) -> OffsetDateTime) -> Vec<String> {
    let due: BTreeSet<&str> = tasks
        .iter()
        .filter(|task| task.status == TaskStatus::Pending && task.eta <= now(task))
        .map(|task| task.queue.as_str())
        .collect();
    due.into_iter().map(str::to_owned).collect()
}

/// How long the listener waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The task that listens on a schema's channel; stopped when the last
/// handle on the store is dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    notices: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Connects a listening connection to `url` (its own, outside the pool)
    /// and listens on `channel`. A failure is logged, not returned: the store
    /// works by polling meanwhile, and the listener keeps trying.
    pub(crate) async fn start(url: &str, channel: &str) -> Self {
        let (sender, notices) = watch::channel(0u64);
        let first = listen(url, channel).await;
        let (url, channel) = (url.to_owned(), channel.to_owned());
        let task = tokio::spawn(async move {
            let mut connected = first;
            loop {
                match connected {
                    Ok(mut listener) => loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => sender.send_modify(|n| *n = n.wrapping_add(1)),
                            // The connection was lost and made again:
                            // whatever was sent meanwhile is lost, so every
                            // pool looks once.
                            Ok(None) => sender.send_modify(|n| *n = n.wrapping_add(1)),
                            Err(error) => {
                                tracing::warn!(%error, "lost the connection listening for enqueues; polling until it is back");
                                break;
                            }
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for enqueues; polling until it can");
                    }
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
                connected = listen(&url, &channel).await;
                if connected.is_ok() {
                    sender.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        });
        Listener { notices, task }
    }

    /// A receiver of the notices heard.
    pub(crate) fn notices(&self) -> watch::Receiver<u64> {
        self.notices.clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listening connection on `channel`.
async fn listen(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
