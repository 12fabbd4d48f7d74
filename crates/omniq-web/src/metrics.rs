//! `/metrics`: the store's state in Prometheus' text format, for scraping.

use axum::extract::State as Extract;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use omniq_core::{QueueStats, TaskStatus, WorkerBeat};
use time::OffsetDateTime;

use crate::State;

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for `queues` and the pools' heartbeats at `now`.
pub(crate) fn render(queues: &[QueueStats], workers: &[WorkerBeat], now: OffsetDateTime) -> String {
    let mut out = String::new();
    out.push_str("# HELP omniq_tasks Tasks in the store, per queue and status.\n# TYPE omniq_tasks gauge\n");
    for q in queues {
        for status in TaskStatus::ALL {
            out.push_str(&format!(
                "omniq_tasks{{queue=\"{}\",status=\"{}\"}} {}\n",
                label(&q.queue),
                status.as_str(),
                q.counts.get(status)
            ));
        }
    }
    out.push_str(
        "# HELP omniq_finished_total Tasks that finished and are still stored, per queue and outcome.\n\
         # TYPE omniq_finished_total counter\n",
    );
    for q in queues {
        for status in [TaskStatus::Completed, TaskStatus::Failed] {
            out.push_str(&format!(
                "omniq_finished_total{{queue=\"{}\",outcome=\"{}\"}} {}\n",
                label(&q.queue),
                status.as_str(),
                q.counts.get(status)
            ));
        }
    }
    out.push_str(
        "# HELP omniq_oldest_pending_age_seconds How long the oldest due task of each queue has waited.\n\
         # TYPE omniq_oldest_pending_age_seconds gauge\n",
    );
    for q in queues {
        let age = q
            .oldest_eta
            .map_or(0.0, |eta| (now - eta).as_seconds_f64().max(0.0));
        out.push_str(&format!(
            "omniq_oldest_pending_age_seconds{{queue=\"{}\"}} {age}\n",
            label(&q.queue)
        ));
    }
    out.push_str("# HELP omniq_queue_paused Whether each queue is paused (1) or not (0).\n# TYPE omniq_queue_paused gauge\n");
    for q in queues {
        out.push_str(&format!(
            "omniq_queue_paused{{queue=\"{}\"}} {}\n",
            label(&q.queue),
            u8::from(q.paused)
        ));
    }
    let alive: Vec<&WorkerBeat> = workers.iter().filter(|w| w.alive(now)).collect();
    out.push_str(
        "# HELP omniq_workers Worker pools reporting in (alive) and those that stopped beating without \
         shutting down (missing).\n# TYPE omniq_workers gauge\n",
    );
    out.push_str(&format!("omniq_workers{{state=\"alive\"}} {}\n", alive.len()));
    out.push_str(&format!(
        "omniq_workers{{state=\"missing\"}} {}\n",
        workers.len() - alive.len()
    ));
    out.push_str(
        "# HELP omniq_worker_running_tasks Tasks each living pool ran at its last heartbeat.\n\
         # TYPE omniq_worker_running_tasks gauge\n",
    );
    for w in &alive {
        out.push_str(&format!(
            "omniq_worker_running_tasks{{worker=\"{}\",host=\"{}\"}} {}\n",
            label(&w.worker_id),
            label(&w.host),
            w.running
        ));
    }
    out.push_str(
        "# HELP omniq_worker_attempts_total Attempts each pool finished since it started, by outcome, \
         as of its last heartbeat; they only grow while the pool runs (a restart is a counter reset).\n\
         # TYPE omniq_worker_attempts_total counter\n",
    );
    for w in workers {
        for (outcome, n) in [
            ("completed", w.done.completed),
            ("failed", w.done.failed),
            ("retried", w.done.retried),
        ] {
            out.push_str(&format!(
                "omniq_worker_attempts_total{{worker=\"{}\",host=\"{}\",outcome=\"{outcome}\"}} {n}\n",
                label(&w.worker_id),
                label(&w.host),
            ));
        }
    }
    out
}

pub(crate) async fn metrics(Extract(app): Extract<State>) -> Response {
    let read = async {
        Ok::<_, omniq_core::Error>((app.storage.queue_stats().await?, app.storage.workers().await?))
    };
    match read.await {
        Ok((queues, workers)) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            render(&queues, &workers, OffsetDateTime::now_utc()),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot read the store for /metrics");
            (StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read").into_response()
        }
    }
}
