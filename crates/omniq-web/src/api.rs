//! The JSON API the pages' data comes from, for scripts and other tools:
//! counts, queues, tasks (filtered and paged), one task, and the actions.

use axum::extract::{Extension, Path, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use omniq_core::{Error, TaskId};
use serde_json::json;

use crate::actions::{Action, Request};
use crate::auth::{may_change, Proof};
use crate::data::{self, Filter};
use crate::State;

/// An error as JSON: what went wrong, never how the code got there.
pub(crate) fn error(error: &Error) -> Response {
    let status = match error {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidId { .. } | Error::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::Unsupported(_) => StatusCode::FORBIDDEN,
        _ => {
            tracing::error!(%error, "dashboard API request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

fn answer<T: serde::Serialize>(result: omniq_core::Result<T>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => error(&e),
    }
}

pub(crate) async fn counts(Extract(app): Extract<State>) -> Response {
    answer(app.storage.counts().await)
}

pub(crate) async fn queues(Extract(app): Extract<State>) -> Response {
    answer(app.storage.queue_stats().await)
}

pub(crate) async fn tasks(Extract(app): Extract<State>, Query(filter): Query<Filter>) -> Response {
    answer(
        data::search(&*app.storage, &filter)
            .await
            .map(|(tasks, next)| json!({ "tasks": tasks, "next_after": next })),
    )
}

pub(crate) async fn task(Extract(app): Extract<State>, Path(id): Path<String>) -> Response {
    let found = async { app.storage.get(TaskId::parse(&id)?).await }.await;
    answer(found)
}

/// The CSRF token a browser-side script must send (as `X-CSRF-Token`) with
/// changes; another site cannot read it.
pub(crate) async fn csrf(Extract(app): Extract<State>) -> Response {
    Json(json!({ "csrf": app.csrf })).into_response()
}

/// Does one action: `{"action": "retry", "id": "…"}`, `{"action": "pause",
/// "queue": "emails"}`, `{"action": "purge", "age": "7d"}`, …; answers
/// `{"changed": "…"}`.
pub(crate) async fn act(
    Extract(app): Extract<State>,
    Extension(proof): Extension<Proof>,
    headers: HeaderMap,
    Json(request): Json<Request>,
) -> Response {
    let csrf = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(request.csrf.as_deref());
    if let Err(refused) = may_change(&app, proof, csrf) {
        return refused.into_response();
    }
    let done = match Action::parse(&request) {
        Ok(action) => action.perform(&app).await,
        Err(e) => Err(e),
    };
    answer(done.map(|changed| json!({ "changed": changed })))
}
