//! The workers page and `/api/workers`: the pools that report in to the
//! store, from their heartbeats, the missing ones marked.

use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use axum::Json;
use maud::{html, Markup};
use omniq_core::WorkerBeat;
use serde_json::json;
use time::OffsetDateTime;

use crate::data::encode;
use crate::pages::{ago, error_page, layout};
use crate::{App, State};

/// The beats, the living first, each group by host and worker id.
pub(crate) fn sorted(mut workers: Vec<WorkerBeat>, now: OffsetDateTime) -> Vec<WorkerBeat> {
    workers
        .sort_by(|a, b| (!a.alive(now), &a.host, &a.worker_id).cmp(&(!b.alive(now), &b.host, &b.worker_id)));
    workers
}

fn table(app: &App, workers: &[WorkerBeat], now: OffsetDateTime) -> Markup {
    let p = &app.options.prefix;
    html! {
        table #workers {
            tr { th { "Worker" } th { "Host" } th { "PID" } th { "Version" } th { "Queues" }
                 th { "Running" } th { "Started" } th { "Last seen" } th { "State" } }
            @for w in workers {
                tr {
                    td { code { (w.worker_id) } }
                    td { (w.host) } td.n { (w.pid) } td { (w.version) }
                    td {
                        @for (i, (queue, slots)) in w.queues.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href={ (p) "/tasks?queue=" (encode(queue)) } { (queue) } " ×" (slots)
                        }
                    }
                    td.n { (w.running) }
                    td { (ago(w.started_at, now)) }
                    td { (ago(w.last_seen, now)) }
                    td { @if w.alive(now) { "alive" } @else { span.error { "missing" } } }
                }
            }
        }
    }
}

pub(crate) async fn page(Extract(app): Extract<State>) -> Response {
    let now = OffsetDateTime::now_utc();
    match app.storage.workers().await {
        Ok(workers) => {
            let workers = sorted(workers, now);
            layout(
                &app,
                "Workers",
                html! {
                    h1 { "Workers" }
                    @if workers.is_empty() {
                        p.muted { "No worker pool reports in to this store: pools write a heartbeat every few seconds while they run." }
                    } @else {
                        (table(&app, &workers, now))
                        p.muted { "A pool is missing when it stopped beating without shutting down (a killed process, a lost host); it is listed for an hour." }
                    }
                },
            )
            .into_response()
        }
        Err(error) => error_page(&app, &error),
    }
}

pub(crate) async fn api(Extract(app): Extract<State>) -> Response {
    let now = OffsetDateTime::now_utc();
    match app.storage.workers().await {
        Ok(workers) => {
            let rows: Vec<serde_json::Value> = sorted(workers, now)
                .into_iter()
                .map(|beat| {
                    let alive = beat.alive(now);
                    let mut row = serde_json::to_value(beat).unwrap_or_default();
                    row["alive"] = json!(alive);
                    row
                })
                .collect();
            Json(rows).into_response()
        }
        Err(error) => crate::api::error(&error),
    }
}
