//! Server-sent events: a `change` event whenever tasks may have changed, so
//! the open pages fetch their live parts again without reloading.
//!
//! Changes made through this process's signals (enqueues, finishes) are sent
//! at once; changes by other processes sharing the store are found by a short
//! poll of the counts.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use crate::State;

/// How often the counts are compared, for changes made by other processes.
const POLL: Duration = Duration::from_secs(2);

/// Changes close together are sent as one event, at most one a second, so a
/// busy queue does not make every open page reload its parts all the time.
const QUIET: Duration = Duration::from_secs(1);

pub(crate) async fn events(
    Extract(app): Extract<State>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((app, None), |(app, mut last)| async move {
        loop {
            // Listen before looking, so a change in between is not missed.
            let enqueued = app.signals.enqueued();
            let finished = app.signals.finished();
            tokio::select! {
                _ = enqueued => break,
                _ = finished => break,
                _ = tokio::time::sleep(POLL) => {
                    let counts = app.storage.counts().await.ok();
                    let changed = last.is_some() && counts != last;
                    last = counts;
                    if changed {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(QUIET).await;
        last = app.storage.counts().await.ok();
        Some((Ok(Event::default().event("change").data("tasks")), (app, last)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
