//! Server-sent events: a `change` event whenever tasks may have changed, so
//! the open pages fetch their live parts again without reloading.
//!
//! One watcher per dashboard serves every open stream: it wakes on this
//! process's signals (enqueues, finishes) and the dashboard's own actions,
//! and polls the counts every two seconds for changes by other processes.
//! It runs only while a stream is open, so a hundred open pages cost the
//! store what one does. The number of streams is capped.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::{App, State};

/// How often the counts are compared, for changes made by other processes.
const POLL: Duration = Duration::from_secs(2);

/// Changes close together are sent as one event, at most one a second, so a
/// busy queue does not make every open page reload its parts all the time.
const QUIET: Duration = Duration::from_secs(1);

/// The most live-update streams (`/events`) open at once; more are answered 503 (a page without
/// live updates still works, and reloads show the news).
pub const MAX_STREAMS: usize = 64;

/// The watcher every stream of one dashboard shares.
pub(crate) struct Live {
    /// Moves on at every change.
    changes: watch::Sender<u64>,
    /// Whether the watcher task runs; changed under this lock only, with
    /// the subscriptions it decides on.
    running: Mutex<bool>,
    /// Streams open now.
    streams: AtomicUsize,
}

impl Live {
    pub(crate) fn new() -> Self {
        Live {
            changes: watch::channel(0).0,
            running: Mutex::new(false),
            streams: AtomicUsize::new(0),
        }
    }

    /// Tells every open stream that something changed (an action of this
    /// dashboard: a pause or a resume sends no other signal).
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A subscription to the changes, starting the watcher if none runs.
    fn subscribe(app: &State) -> watch::Receiver<u64> {
        let mut running = app.live.running.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = app.live.changes.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(watch_store(app.clone()));
        }
        receiver
    }
}

/// The watcher: runs while a stream listens.
async fn watch_store(app: State) {
    let mut last = None;
    loop {
        {
            let mut running = app.live.running.lock().unwrap_or_else(|e| e.into_inner());
            if app.live.changes.receiver_count() == 0 {
                *running = false;
                return;
            }
        }
        // Listen before looking, so a change in between is not missed.
        let enqueued = app.signals.enqueued();
        let finished = app.signals.finished();
        let changed = tokio::select! {
            _ = enqueued => true,
            _ = finished => true,
            _ = tokio::time::sleep(POLL) => {
                let counts = app.storage.counts().await.ok();
                let changed = last.is_some() && counts != last;
                last = counts;
                changed
            }
        };
        if changed {
            app.live.changed();
        }
    }
}

/// Counts a stream as open until it is dropped.
struct Open(Arc<App>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.live.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) async fn events(Extract(app): Extract<State>) -> Response {
    if app.live.streams.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
        app.live.streams.fetch_sub(1, Ordering::AcqRel);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages are open; this one is not updated live (reload to see changes)",
        )
            .into_response();
    }
    let open = Open(app.clone());
    let changes = Live::subscribe(&app);
    let stream = futures::stream::unfold((open, changes), |(open, mut changes)| async move {
        changes.changed().await.ok()?;
        tokio::time::sleep(QUIET).await;
        // Changes during the quiet second are in this event.
        changes.borrow_and_update();
        Some((
            Ok::<_, Infallible>(Event::default().event("change").data("tasks")),
            (open, changes),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
