//! What the pages and the API read from the store: filtered pages of tasks,
//! the running tasks, a series' occurrences and the finishes per minute.

use omniq_core::{ListOrder, ListQuery, Result, Storage, Task, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How many tasks one page shows.
pub(crate) const PAGE: usize = 50;

/// How many tasks one search reads from the store at most, so a filter that
/// matches little cannot make a page read a whole big store.
const SCAN: usize = 10_000;

/// How many of the latest finished tasks of each outcome the throughput
/// chart reads: the overview is fetched again on every change.
const RECENT: usize = 2_000;

/// The filters of the task list, as query parameters.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct Filter {
    /// Only tasks in this status.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub status: Option<TaskStatus>,
    /// Only tasks of this queue.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub queue: Option<String>,
    /// Only tasks of this handler.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub func: Option<String>,
    /// Only tasks whose id contains this text.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub q: Option<String>,
    /// Only tasks older than this id (the last of the previous page).
    #[serde(default, deserialize_with = "empty_is_none")]
    pub after: Option<TaskId>,
}

/// An empty form field is no filter.
fn empty_is_none<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = Option::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl Filter {
    fn matches(&self, task: &Task) -> bool {
        self.func.as_ref().is_none_or(|f| task.func_path == *f)
            && self
                .q
                .as_ref()
                .is_none_or(|q| task.id.to_string().contains(&q.to_ascii_lowercase()))
    }

    /// The query string of this filter, for links.
    pub fn query(&self) -> String {
        serde_urlencoded(self)
    }
}

/// A filter as `key=value&...`, leaving out what is unset.
fn serde_urlencoded(filter: &Filter) -> String {
    let mut parts = Vec::new();
    let mut add = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            parts.push(format!("{key}={}", encode(&value)));
        }
    };
    add("status", filter.status.map(|s| s.as_str().to_owned()));
    add("queue", filter.queue.clone());
    add("func", filter.func.clone());
    add("q", filter.q.clone());
    add("after", filter.after.map(|id| id.to_string()));
    parts.join("&")
}

/// Percent-encodes a query value.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page of the tasks `filter` matches, newest first, and the id to ask
/// for the next page after, if there may be one.
pub(crate) async fn search(storage: &dyn Storage, filter: &Filter) -> Result<(Vec<Task>, Option<TaskId>)> {
    let mut found = Vec::new();
    let mut after = filter.after;
    let mut read = 0;
    while found.len() < PAGE && read < SCAN {
        let batch = storage
            .list(ListQuery {
                status: filter.status,
                queue: filter.queue.clone(),
                // The store filters by handler itself, so a rare handler's
                // tasks are found however many others there are.
                func_path: filter.func.clone(),
                limit: Some(500),
                order: ListOrder::NewestFirst,
                after,
            })
            .await?;
        let Some(last) = batch.last() else {
            return Ok((found, None));
        };
        after = Some(last.id);
        read += batch.len();
        let full = batch.len() == 500;
        for task in batch {
            if filter.matches(&task) && found.len() < PAGE {
                found.push(task);
            }
        }
        if !full {
            let next = (found.len() == PAGE)
                .then(|| found.last().map(|t| t.id))
                .flatten();
            return Ok((found, next));
        }
    }
    let next = found.last().map(|t| t.id).or(after);
    Ok((found, next))
}

/// The running tasks, at most `limit`.
pub(crate) async fn running(storage: &dyn Storage, limit: usize) -> Result<Vec<Task>> {
    storage
        .list(ListQuery {
            status: Some(TaskStatus::Running),
            limit: Some(limit),
            ..ListQuery::default()
        })
        .await
}

/// The other occurrences of `task`'s interval series, newest first, among
/// the latest tasks of the store.
pub(crate) async fn series(storage: &dyn Storage, task: &Task) -> Result<Vec<Task>> {
    let Some(series) = task.series else {
        return Ok(Vec::new());
    };
    let recent = storage
        .list(ListQuery {
            limit: Some(SCAN),
            order: ListOrder::NewestFirst,
            ..ListQuery::default()
        })
        .await?;
    Ok(recent
        .into_iter()
        .filter(|t| t.series == Some(series) && t.id != task.id)
        .take(PAGE)
        .collect())
}

/// Tasks finished (completed or failed) in each of the last 60 minutes,
/// oldest minute first, among the latest 2,000 of each outcome (by id, which
/// is creation order).
pub(crate) async fn per_minute(storage: &dyn Storage, now: OffsetDateTime) -> Result<[u64; 60]> {
    let mut minutes = [0u64; 60];
    for status in [TaskStatus::Completed, TaskStatus::Failed] {
        let recent = storage
            .list(ListQuery {
                status: Some(status),
                limit: Some(RECENT),
                order: ListOrder::NewestFirst,
                ..ListQuery::default()
            })
            .await?;
        for task in recent {
            let Some(at) = task.finished_at else { continue };
            let ago = (now - at).whole_minutes();
            if (0..60).contains(&ago) {
                minutes[59 - ago as usize] += 1;
            }
        }
    }
    Ok(minutes)
}
