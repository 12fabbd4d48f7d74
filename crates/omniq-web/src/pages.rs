//! The pages, rendered on the server with maud (compile-checked, and every
//! value escaped): the layout, the overview, the task list, a task's detail
//! and the queues, plus the fragments the live script swaps in.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State as Extract};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use omniq_core::{Error, QueueFlow, QueueLimits, QueueStats, StatusCounts, Task, TaskId, TaskStatus};
use time::OffsetDateTime;

use crate::data::{self, encode, Filter};
use crate::{App, State};

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#cfd8ea;text-decoration:none}header a:hover{color:#fff}header b{color:#fff}
main{padding:1em 1.5em;max-width:1200px}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5em 0 1.5em}
th,td{text-align:left;padding:.35em .7em;border-bottom:1px solid #e3e6ec;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.status{padding:.1em .5em;border-radius:.8em;font-size:.85em}
.pending{background:#e8eefc}.running{background:#fff3cd}.completed{background:#dff3e4}
.failed{background:#fbe0e0}.cancelled{background:#eceff3}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{background:#fff;padding:.8em 1.2em;border-radius:.4em;min-width:8em;box-shadow:0 1px 2px #0001}
.card b{display:block;font-size:1.7em}
pre{background:#fff;padding:.7em;overflow:auto;border:1px solid #e3e6ec}
form.inline{display:inline}button{cursor:pointer}
.error{color:#a40000}.muted{color:#6b7385}
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em}dt{font-weight:600}
";

/// The page around `body`, with the navigation.
pub(crate) fn layout(app: &App, title: &str, body: Markup) -> Markup {
    let p = &app.options.prefix;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · OmniQ" }
                link rel="stylesheet" href={ (p) "/assets/style.css" };
            }
            body data-prefix=(p) {
                header {
                    b { "OmniQ" }
                    a href=(app.home()) { "Overview" }
                    a href={ (p) "/tasks" } { "Tasks" }
                    a href={ (p) "/queues" } { "Queues" }
                    a href={ (p) "/workers" } { "Workers" }
                    @if app.options.read_only { span.muted { "read-only" } }
                }
                main { (body) }
                script src={ (p) "/assets/live.js" } {}
            }
        }
    }
}

/// An error as a page: what went wrong, never how the code got there.
pub(crate) fn error_page(app: &App, error: &Error) -> Response {
    let status = match error {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidId { .. } | Error::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::Unsupported(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%error, "dashboard request failed");
    }
    let body = html! { h1 { "Something went wrong" } p.error { (error) } };
    (status, layout(app, "Error", body)).into_response()
}

fn status_badge(status: TaskStatus) -> Markup {
    html! { span class={ "status " (status.as_str()) } { (status.as_str()) } }
}

/// A time as "2026-11-30 01:02:03 UTC (5s ago)".
pub(crate) fn when(time: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    let Some(time) = time else { return "-".into() };
    let stamp = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    format!("{stamp} ({})", ago(time, now))
}

/// How long ago (or from now) `time` is, roughly.
pub(crate) fn ago(time: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - time).whole_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let text = match n {
        0 => return "now".into(),
        1..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn counts_cards(counts: &StatusCounts) -> Markup {
    html! {
        div.cards {
            @for status in TaskStatus::ALL {
                div class={ "card " (status.as_str()) } id={ "count-" (status.as_str()) } {
                    b { (counts.get(status)) } (status.as_str())
                }
            }
        }
    }
}

/// The finishes per minute as bars, oldest minute first.
fn chart(minutes: &[u64; 60]) -> Markup {
    let most = minutes.iter().copied().max().unwrap_or(0).max(1);
    let mut bars = String::new();
    for (i, n) in minutes.iter().enumerate() {
        let height = (*n as f64 / most as f64 * 60.0).round();
        let _ = write!(
            bars,
            "<rect x=\"{}\" y=\"{}\" width=\"8\" height=\"{height}\" fill=\"#4a6fd1\"><title>{n} finished, {} min ago</title></rect>",
            i * 10,
            60.0 - height,
            59 - i
        );
    }
    html! {
        svg.chart width="600" height="62" viewBox="0 0 600 62" role="img" aria-label="tasks finished per minute, last hour" {
            (PreEscaped(bars))
        }
        p.muted { "Tasks finished per minute over the last hour (most: " (most) ")." }
    }
}

/// A queue's flow-control settings in a few words, with its running count.
fn limits_text(flow: Option<&QueueFlow>) -> String {
    let Some(flow) = flow else { return "-".into() };
    let mut parts = Vec::new();
    if let Some(limit) = flow.limits.limit {
        parts.push(format!("{}/{limit} running", flow.running));
    }
    parts.extend(limit_parts(&flow.limits, false));
    parts.join(" · ")
}

/// The settings in words; the limit only when `with_limit`.
fn limit_parts(l: &QueueLimits, with_limit: bool) -> Vec<String> {
    let mut parts = Vec::new();
    if let (Some(limit), true) = (l.limit, with_limit) {
        parts.push(format!("at most {limit} running"));
    }
    if let Some(n) = l.per_key {
        let hold = if l.hold_failed { ", failed hold" } else { "" };
        parts.push(format!("{n} per key{hold}"));
    }
    if let Some(rate) = l.rate {
        parts.push(rate.to_string());
    }
    if let Some(rate) = l.key_rate {
        parts.push(format!("{rate} per key"));
    }
    parts
}

/// Flow-control settings in words, as a confirmation states them.
pub(crate) fn limits_words(l: &QueueLimits) -> String {
    limit_parts(l, true).join(", ")
}

/// The form that changes a queue's flow-control settings, filled with the
/// current ones; it asks for a confirmation first, as every change does.
fn limits_form(app: &App, queue: &str, flow: Option<&QueueFlow>) -> Markup {
    let p = &app.options.prefix;
    let l = flow.map(|f| f.limits.clone()).unwrap_or_default();
    let count = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
    let rate = |r: Option<omniq_core::Rate>| r.map(|r| r.to_string()).unwrap_or_default();
    html! {
        details.limits {
            summary { "Edit limits" }
            form method="get" action={ (p) "/confirm" } {
                input type="hidden" name="action" value="limits";
                input type="hidden" name="queue" value=(queue);
                label { "Limit " input type="number" min="1" name="limit" value=(count(l.limit)); }
                label { " Per key " input type="number" min="1" name="per_key" value=(count(l.per_key)); }
                label { " Failed hold " input type="checkbox" name="hold_failed" checked[l.hold_failed]; }
                label { " Rate " input type="text" name="rate" placeholder="100/s" value=(rate(l.rate)); }
                label { " Key rate " input type="text" name="key_rate" placeholder="6/m" value=(rate(l.key_rate)); }
                " " button type="submit" { "Change" }
            }
        }
    }
}

fn queue_table(app: &App, queues: &[QueueStats], flows: &[QueueFlow], now: OffsetDateTime) -> Markup {
    let p = &app.options.prefix;
    // A queue with settings and no task yet is listed too.
    let mut queues = queues.to_vec();
    for flow in flows {
        if !queues.iter().any(|q| q.queue == flow.queue) {
            queues.push(QueueStats::empty(flow.queue.clone()));
        }
    }
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    html! {
        table #queues {
            tr { th { "Queue" } th { "Pending" } th { "Running" } th { "Completed" } th { "Failed" }
                 th { "Cancelled" } th { "Oldest pending" } th { "Limits" } th { "State" } }
            @for q in &queues {
                tr {
                    td { a href={ (p) "/tasks?queue=" (encode(&q.queue)) } { (q.queue) } }
                    td.n { (q.counts.pending) } td.n { (q.counts.running) } td.n { (q.counts.completed) }
                    td.n { (q.counts.failed) } td.n { (q.counts.cancelled) }
                    td { (q.oldest_eta.map_or("-".to_string(), |eta| ago(eta, now))) }
                    td {
                        (limits_text(flows.iter().find(|f| f.queue == q.queue)))
                        @if !app.options.read_only {
                            (limits_form(app, &q.queue, flows.iter().find(|f| f.queue == q.queue)))
                        }
                    }
                    td {
                        @if q.paused { "paused " } @else { "running " }
                        @if !app.options.read_only {
                            @if q.paused {
                                a href={ (p) "/confirm?action=resume&queue=" (encode(&q.queue)) } { "Resume" }
                            } @else {
                                a href={ (p) "/confirm?action=pause&queue=" (encode(&q.queue)) } { "Pause" }
                            }
                            @if q.counts.failed > 0 {
                                " · " a href={ (p) "/confirm?action=retry-failed&queue=" (encode(&q.queue)) } { "Retry failed" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn task_rows(app: &App, tasks: &[Task], now: OffsetDateTime) -> Markup {
    let p = &app.options.prefix;
    html! {
        table #tasks {
            tr { th { "Id" } th { "Status" } th { "Queue" } th { "Handler" } th { "Priority" }
                 th { "Attempts" } th { "Due / updated" } }
            @for t in tasks {
                tr {
                    td { a href={ (p) "/tasks/" (t.id) } { code { (t.id) } } }
                    td { (status_badge(t.status)) }
                    td { (t.queue) }
                    td { (t.func_path) }
                    td.n { (t.priority) }
                    td.n { (t.attempts) "/" (t.max_retries.saturating_add(1)) }
                    td { @if t.status == TaskStatus::Pending { "due " (ago(t.eta, now)) } @else { (ago(t.updated_at, now)) } }
                }
            }
        }
    }
}

async fn overview_body(app: &App) -> omniq_core::Result<Markup> {
    let now = OffsetDateTime::now_utc();
    let counts = app.storage.counts().await?;
    let queues = app.storage.queue_stats().await?;
    let flows = app.storage.queue_flows(now).await?;
    let minutes = data::per_minute(&*app.storage, now).await?;
    let running = data::running(&*app.storage, data::PAGE).await?;
    let paused: Vec<&str> = queues
        .iter()
        .filter(|q| q.paused)
        .map(|q| q.queue.as_str())
        .collect();
    let oldest = queues.iter().filter_map(|q| q.oldest_eta).min();
    let p = &app.options.prefix;
    Ok(html! {
        (counts_cards(&counts))
        p { "Oldest pending task: " (oldest.map_or("none".to_string(), |eta| ago(eta, now)))
            @if !paused.is_empty() { " · paused queues: " (paused.join(", ")) } }
        (chart(&minutes))
        h2 { "Queues" }
        (queue_table(app, &queues, &flows, now))
        h2 { "Running" }
        @if running.is_empty() { p.muted { "Nothing is running." } } @else {
            table #running {
                tr { th { "Id" } th { "Handler" } th { "Queue" } th { "Worker" } th { "Lease expires" } }
                @for t in &running {
                    tr {
                        td { a href={ (p) "/tasks/" (t.id) } { code { (t.id) } } }
                        td { (t.func_path) } td { (t.queue) }
                        td { (t.lease.as_ref().map_or("?", |l| l.worker_id.as_str())) }
                        td { (t.lease.as_ref().map_or("?".to_string(), |l| ago(l.expires_at, now))) }
                    }
                }
            }
        }
        @if !app.options.read_only {
            h2 { "Purge" }
            form method="get" action={ (p) "/confirm" } {
                input type="hidden" name="action" value="purge";
                label { "Delete finished tasks older than " input name="age" value="7d" size="6"; }
                " " button type="submit" { "Purge…" }
            }
        }
    })
}

pub(crate) async fn overview(Extract(app): Extract<State>) -> Response {
    match overview_body(&app).await {
        Ok(body) => layout(
            &app,
            "Overview",
            html! { h1 { "Overview" } div data-live="overview" { (body) } },
        )
        .into_response(),
        Err(error) => error_page(&app, &error),
    }
}

pub(crate) async fn overview_fragment(Extract(app): Extract<State>) -> Response {
    match overview_body(&app).await {
        Ok(body) => body.into_response(),
        Err(error) => error_page(&app, &error),
    }
}

async fn tasks_body(app: &App, filter: &Filter) -> omniq_core::Result<Markup> {
    let now = OffsetDateTime::now_utc();
    let (tasks, next) = data::search(&*app.storage, filter).await?;
    let p = &app.options.prefix;
    let next_link = next.map(|after| {
        let mut next = filter.clone();
        next.after = Some(after);
        format!("{p}/tasks?{}", next.query())
    });
    Ok(html! {
        @if tasks.is_empty() { p.muted { "No tasks match." } } @else { (task_rows(app, &tasks, now)) }
        @if let Some(link) = next_link { p { a #next href=(link) { "Older tasks →" } } }
    })
}

pub(crate) async fn tasks(Extract(app): Extract<State>, Query(filter): Query<Filter>) -> Response {
    let body = match tasks_body(&app, &filter).await {
        Ok(body) => body,
        Err(error) => return error_page(&app, &error),
    };
    let p = &app.options.prefix;
    let selected = |s: TaskStatus| filter.status == Some(s);
    let live = filter.after.is_none();
    layout(
        &app,
        "Tasks",
        html! {
            h1 { "Tasks" }
            form method="get" action={ (p) "/tasks" } {
                select name="status" {
                    option value="" { "any status" }
                    @for s in TaskStatus::ALL { option value=(s.as_str()) selected[selected(s)] { (s.as_str()) } }
                }
                " " input name="queue" placeholder="queue" value=(filter.queue.clone().unwrap_or_default());
                " " input name="func" placeholder="handler" value=(filter.func.clone().unwrap_or_default());
                " " input name="q" placeholder="text in id" value=(filter.q.clone().unwrap_or_default());
                " " button type="submit" { "Filter" }
            }
            // Only the first page follows changes; older pages stay put.
            @if live { div data-live={ "tasks?" (filter.query()) } { (body) } } @else { div { (body) } }
        },
    )
    .into_response()
}

pub(crate) async fn tasks_fragment(Extract(app): Extract<State>, Query(filter): Query<Filter>) -> Response {
    match tasks_body(&app, &filter).await {
        Ok(body) => body.into_response(),
        Err(error) => error_page(&app, &error),
    }
}

fn json_block(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(cannot show: {e})"))
}

pub(crate) async fn task(Extract(app): Extract<State>, Path(id): Path<String>) -> Response {
    let found = async {
        let id = TaskId::parse(&id)?;
        let task = app.storage.get(id).await?;
        let series = data::series(&*app.storage, &task).await?;
        Ok::<_, Error>((task, series))
    }
    .await;
    let (t, series) = match found {
        Ok(found) => found,
        Err(error) => return error_page(&app, &error),
    };
    let now = OffsetDateTime::now_utc();
    let p = &app.options.prefix;
    let body = html! {
        h1 { "Task " code { (t.id) } " " (status_badge(t.status)) }
        @if !app.options.read_only {
            p {
                @if t.status == TaskStatus::Failed {
                    a href={ (p) "/confirm?action=retry&id=" (t.id) } { "Retry" } " "
                }
                @if matches!(t.status, TaskStatus::Pending | TaskStatus::Running) {
                    a href={ (p) "/confirm?action=cancel&id=" (t.id) } {
                        @if t.series.is_some() { "Cancel the series" } @else { "Cancel" }
                    }
                }
            }
        }
        dl {
            dt { "Handler" } dd { (t.func_path) }
            dt { "Queue" } dd { (t.queue) }
            dt { "Priority" } dd { (t.priority) }
            dt { "Unique key" } dd { (t.unique_key.clone().unwrap_or_else(|| "-".into())) }
            @if let Some(window) = &t.unique_window {
                dt { "Key held until" }
                dd {
                    (when(Some(window.until), now)) " once "
                    (window.finished.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                }
            }
            @for (name, value) in &t.meta {
                dt { "Meta " code { (name) } } dd { code { (value) } }
            }
            @if let Some(key) = &t.concurrency_key {
                dt { "Concurrency key" } dd { code { (key) } }
            }
            dt { "Attempts" } dd { (t.attempts) " of " (t.max_retries.saturating_add(1))
                @if t.snoozes > 0 { " (snoozed " (t.snoozes) " times)" } }
            dt { "Eta" } dd { (when(Some(t.eta), now)) }
            dt { "Interval" } dd { (t.interval.map_or("-".to_string(), |d| format!("{}s", d.as_secs_f64()))) }
            dt { "Timeout" } dd { (t.timeout.map_or("-".to_string(), |d| format!("{}s", d.as_secs_f64()))) }
            dt { "Created" } dd { (when(Some(t.created_at), now)) }
            dt { "Updated" } dd { (when(Some(t.updated_at), now)) }
            dt { "Started" } dd { (when(t.started_at, now)) }
            dt { "Finished" } dd { (when(t.finished_at, now)) }
            @if let Some(lease) = &t.lease {
                dt { "Lease" } dd { "worker " (lease.worker_id) ", expires " (ago(lease.expires_at, now)) }
            }
            @if let Some(progress) = &t.progress {
                dt { "Progress" }
                dd #progress {
                    progress max="1" value=(progress.fraction) {}
                    " " (format!("{:.0}%", progress.fraction * 100.0)) " " (progress.message)
                    " (" (ago(progress.at, now)) ")"
                }
            }
        }
        h2 { "Arguments" }
        pre #args { (json_block(&t.args)) }
        h2 { "Keyword arguments" }
        pre #kwargs { (json_block(&t.kwargs)) }
        @if let Some(result) = &t.result { h2 { "Result" } pre #result { (json_block(result)) } }
        @if let Some(error) = &t.error {
            h2 { "Error" }
            p.error #error {
                "[" (error.kind) "] " (error.message) " (attempt " (error.attempt) ", "
                @if error.retryable { "retryable" } @else { "not retryable" } ")"
            }
        }
        @if !t.errors.is_empty() {
            h2 { "Failed attempts" }
            @if t.errors_dropped > 0 { p.muted { (t.errors_dropped) " earlier failed attempts are not kept." } }
            table #attempts {
                tr { th { "Attempt" } th { "Failed" } th { "Ran for" } th { "Worker" } th { "Error" } }
                @for failed in t.errors.iter().rev() {
                    tr {
                        td.n { (failed.error.attempt) }
                        td { (ago(failed.failed_at, now)) }
                        td { (failed.started_at.map_or("-".to_string(), |start| format!("{:.1}s", (failed.failed_at - start).as_seconds_f64().max(0.0)))) }
                        td { code { (failed.worker_id.as_deref().unwrap_or("-")) } }
                        td {
                            "[" (failed.error.kind) "] " (failed.error.message)
                            @if let Some(location) = &failed.error.location { br; span.muted { "at " code { (location) } } }
                            @for cause in &failed.error.causes { br; span.muted { "caused by: " (cause) } }
                        }
                    }
                }
            }
        }
        @if let Some(first) = t.series {
            h2 { "Series" }
            p { "First occurrence: " a href={ (p) "/tasks/" (first) } { code { (first) } } }
            @if !series.is_empty() { (task_rows(&app, &series, now)) }
        }
    };
    layout(&app, "Task", body).into_response()
}

pub(crate) async fn queues(Extract(app): Extract<State>) -> Response {
    let now = OffsetDateTime::now_utc();
    let read = async {
        Ok::<_, omniq_core::Error>((
            app.storage.queue_stats().await?,
            app.storage.queue_flows(now).await?,
        ))
    };
    match read.await {
        Ok((queues, flows)) => layout(
            &app,
            "Queues",
            html! {
                h1 { "Queues" }
                @if queues.is_empty() && flows.is_empty() { p.muted { "No queues yet: they appear with their first task." } }
                @else { (queue_table(&app, &queues, &flows, now)) }
            },
        )
        .into_response(),
        Err(error) => error_page(&app, &error),
    }
}

/// The stylesheet: a file of its own, so the content security policy can
/// refuse every inline style.
pub(crate) async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The live script: follows `/events` and swaps in fresh fragments.
pub(crate) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/live.js"),
    )
        .into_response()
}
