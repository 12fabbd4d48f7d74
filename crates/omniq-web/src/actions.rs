//! The changes the dashboard makes: retry a failed task, cancel a task or
//! its series, pause or resume a queue, retry every failed task of a queue,
//! set a queue's flow-control settings, purge finished tasks older than an
//! age. Each is asked for by a link, shown
//! on a confirmation page, done by that page's POST, and answered with what
//! it changed; the JSON API does the same in one call.

use std::time::Duration;

use axum::extract::{Extension, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use omniq_core::{Error, QueueLimits, Rate, Result, StorageExt, TaskId};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::auth::{may_change, Proof};
use crate::pages::{error_page, layout};
use crate::{App, State};

/// An action as a form or JSON body names it.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Request {
    pub action: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    /// For `purge`: an age such as `7d`, `12h`, `30m` or `45s`.
    #[serde(default)]
    pub age: Option<String>,
    /// For `limits`: the queue's limit, per-key limit and rates (`100/s`);
    /// empty or missing clears one.
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub per_key: Option<String>,
    #[serde(default)]
    pub hold_failed: Option<String>,
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default)]
    pub key_rate: Option<String>,
    #[serde(default)]
    pub csrf: Option<String>,
}

/// An action, checked.
pub(crate) enum Action {
    Retry(TaskId),
    Cancel(TaskId),
    Pause(String),
    Resume(String),
    RetryFailed(String),
    Limits(String, QueueLimits),
    Purge(Duration),
}

/// A setting of a `limits` form: empty or missing is unset.
fn field(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The flow-control settings a `limits` request names, checked.
fn limits_of(request: &Request) -> Result<QueueLimits> {
    let count = |name: &str, value: &Option<String>| -> Result<Option<u32>> {
        field(value)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::invalid_config(name, format!("{v:?} is not a whole number")))
            })
            .transpose()
    };
    let rate = |value: &Option<String>| field(value).map(str::parse::<Rate>).transpose();
    let limits = QueueLimits {
        limit: count("limit", &request.limit)?,
        per_key: count("per_key", &request.per_key)?,
        hold_failed: matches!(field(&request.hold_failed), Some("on" | "true" | "1")),
        rate: rate(&request.rate)?,
        key_rate: rate(&request.key_rate)?,
    };
    limits.check()?;
    Ok(limits)
}

impl Action {
    pub(crate) fn parse(request: &Request) -> Result<Action> {
        let id = || TaskId::parse(request.id.as_deref().unwrap_or_default());
        let queue = || {
            let queue = request.queue.clone().unwrap_or_default();
            omniq_core::queue::check_name(&queue).map(|_| queue)
        };
        Ok(match request.action.as_str() {
            "retry" => Action::Retry(id()?),
            "cancel" => Action::Cancel(id()?),
            "pause" => Action::Pause(queue()?),
            "resume" => Action::Resume(queue()?),
            "retry-failed" => Action::RetryFailed(queue()?),
            "limits" => Action::Limits(queue()?, limits_of(request)?),
            "purge" => {
                let age = request.age.as_deref().unwrap_or_default().trim();
                let age = humantime::parse_duration(age).map_err(|e| {
                    Error::invalid_config(
                        "age",
                        format!("{age:?} is not an age such as 7d, 12h or 30m: {e}"),
                    )
                })?;
                Action::Purge(age)
            }
            other => {
                return Err(Error::invalid_config(
                    "action",
                    format!(
                        "{other:?} is not an action; expected retry, cancel, pause, resume, retry-failed, \
                         limits or purge"
                    ),
                ))
            }
        })
    }

    /// What the action will do, for the confirmation page.
    pub(crate) fn describe(&self) -> String {
        match self {
            Action::Retry(id) => format!("Put failed task {id} back to pending?"),
            Action::Cancel(id) => format!("Cancel task {id} (and, for an interval task, its whole series)?"),
            Action::Pause(queue) => format!(
                "Pause queue {queue}? No worker, in any process, claims its tasks until it is resumed."
            ),
            Action::Resume(queue) => format!("Resume queue {queue}?"),
            Action::RetryFailed(queue) => format!("Put every failed task of queue {queue} back to pending?"),
            Action::Limits(queue, limits) if limits.is_unlimited() => {
                format!("Remove every flow-control setting of queue {queue}?")
            }
            Action::Limits(queue, limits) => format!(
                "Set the flow-control settings of queue {queue}, for every process, to: {}? \
                 Settings left empty are cleared.",
                crate::pages::limits_words(limits)
            ),
            Action::Purge(age) => format!(
                "Delete every finished task (completed, failed, cancelled) that finished more than {} ago?",
                humantime::format_duration(*age)
            ),
        }
    }

    /// Does it; answers what changed.
    pub(crate) async fn perform(&self, app: &App) -> Result<String> {
        let done = self.apply(app).await;
        // Every open page hears of it, a pause as much as a retry.
        app.live.changed();
        done
    }

    async fn apply(&self, app: &App) -> Result<String> {
        let storage = &app.storage;
        // The store's clock where it has one (PostgreSQL), as workers use.
        let now = storage
            .store_time()
            .await?
            .unwrap_or_else(OffsetDateTime::now_utc);
        Ok(match self {
            Action::Retry(id) => {
                storage.retry(*id, now).await?;
                app.signals.task_enqueued();
                format!("Task {id} is pending again.")
            }
            Action::Cancel(id) => {
                let ids = storage.cancel(*id, now).await?;
                let list: Vec<String> = ids.iter().map(TaskId::to_string).collect();
                format!("Cancelled {} task(s): {}.", ids.len(), list.join(", "))
            }
            Action::Pause(queue) => {
                storage.set_paused(queue, true).await?;
                format!("Queue {queue} is paused.")
            }
            Action::Resume(queue) => {
                storage.set_paused(queue, false).await?;
                app.signals.task_enqueued();
                format!("Queue {queue} is running again.")
            }
            Action::RetryFailed(queue) => {
                let report = storage.retry_failed(Some(queue), now).await?;
                app.signals.task_enqueued();
                format!(
                    "Retried {} failed task(s) of queue {queue}; {} could not be retried.",
                    report.retried, report.refused
                )
            }
            Action::Limits(queue, limits) => {
                storage.set_queue_limits(queue, limits.clone()).await?;
                // A raised limit may let this process's pools claim at once.
                app.signals.task_enqueued();
                match limits.is_unlimited() {
                    true => format!("Queue {queue} has no limits."),
                    false => format!("Queue {queue}: {}.", crate::pages::limits_words(limits)),
                }
            }
            Action::Purge(age) => {
                let removed = storage.purge(omniq_core::earlier(now, *age)).await?;
                format!("Deleted {removed} finished task(s).")
            }
        })
    }
}

/// The confirmation page: what the action will do, and the form that does it.
pub(crate) async fn confirm(Extract(app): Extract<State>, Query(request): Query<Request>) -> Response {
    if app.options.read_only {
        return (
            StatusCode::FORBIDDEN,
            layout(&app, "Read-only", html! { p { "This dashboard is read-only." } }),
        )
            .into_response();
    }
    let action = match Action::parse(&request) {
        Ok(action) => action,
        Err(error) => return error_page(&app, &error),
    };
    let p = &app.options.prefix;
    let body = html! {
        h1 { "Confirm" }
        p #question { (action.describe()) }
        form method="post" action={ (p) "/act" } {
            input type="hidden" name="action" value=(request.action);
            @if let Some(id) = &request.id { input type="hidden" name="id" value=(id); }
            @if let Some(queue) = &request.queue { input type="hidden" name="queue" value=(queue); }
            @if let Some(age) = &request.age { input type="hidden" name="age" value=(age); }
            @for (name, value) in [("limit", &request.limit), ("per_key", &request.per_key),
                ("hold_failed", &request.hold_failed), ("rate", &request.rate), ("key_rate", &request.key_rate)] {
                @if let Some(value) = value { input type="hidden" name=(name) value=(value); }
            }
            input type="hidden" name="csrf" value=(app.csrf);
            button #confirm type="submit" { "Confirm" }
            " " a href=(app.home()) { "Back" }
        }
    };
    layout(&app, "Confirm", body).into_response()
}

/// Does a confirmed action and shows what it changed.
pub(crate) async fn act(
    Extract(app): Extract<State>,
    Extension(proof): Extension<Proof>,
    Form(request): Form<Request>,
) -> Response {
    if let Err(refused) = may_change(&app, proof, request.csrf.as_deref()) {
        return refused.into_response();
    }
    let done = match Action::parse(&request) {
        Ok(action) => action.perform(&app).await,
        Err(error) => Err(error),
    };
    match done {
        Ok(changed) => {
            let p = &app.options.prefix;
            let back = match (&request.id, &request.queue) {
                (Some(id), _) => format!("{p}/tasks/{id}"),
                (None, Some(_)) => format!("{p}/queues"),
                _ => app.home().to_owned(),
            };
            let body = html! { h1 { "Done" } p #changed { (changed) } p { a href=(back) { "Back" } } };
            layout(&app, "Done", body).into_response()
        }
        Err(error) => error_page(&app, &error),
    }
}
