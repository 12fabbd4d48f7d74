//! The values every backend can store, checked once: the range of times and
//! durations, the nesting depth of JSON payloads and results, and the
//! saturating time arithmetic every other crate uses instead of `+` and `-`.
//!
//! A value past these limits would be stored by one backend and refused or
//! misread by another (SQLite keeps times as `i64` nanoseconds, JSON readers
//! stop at 128 levels of nesting), so they are refused where a user passes
//! them, naming the value and the allowed range, or saturated where that is
//! the obvious meaning (a retry "in a million years" waits until the latest
//! time a store can hold).

use std::time::Duration;

use serde_json::Value;
use time::macros::datetime;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::task::{Task, TaskStatus};

/// The earliest time a store holds (SQLite's `i64` nanoseconds reach back to
/// 1677-09-21; this keeps a margin).
pub const MIN_TIME: OffsetDateTime = datetime!(1678-01-01 00:00:00 UTC);

/// The latest time a store holds (SQLite's `i64` nanoseconds end in
/// April 2262; this keeps a margin).
pub const MAX_TIME: OffsetDateTime = datetime!(2262-01-01 00:00:00 UTC);

/// The longest duration a task carries (interval, timeout) or a setting
/// takes (result TTL, lease): 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How deeply arrays and objects may nest in a payload or a result. JSON
/// readers stop at 128 levels; a stored record wraps the payload in a few
/// levels of its own, so this leaves room for them.
pub const MAX_JSON_DEPTH: usize = 64;

/// `time + duration`, or [`MAX_TIME`] when that is later.
pub fn later(time: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    let room = MAX_TIME - time;
    if room <= time::Duration::ZERO {
        return MAX_TIME;
    }
    match time::Duration::try_from(duration) {
        Ok(duration) if duration < room => time + duration,
        _ => MAX_TIME,
    }
}

/// `time - duration`, or [`MIN_TIME`] when that is earlier.
pub fn earlier(time: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    let room = time - MIN_TIME;
    if room <= time::Duration::ZERO {
        return MIN_TIME;
    }
    match time::Duration::try_from(duration) {
        Ok(duration) if duration < room => time - duration,
        _ => MIN_TIME,
    }
}

/// Refuses a time outside [`MIN_TIME`]..=[`MAX_TIME`], naming `what`.
pub fn check_time(what: &str, time: OffsetDateTime) -> Result<()> {
    if (MIN_TIME..=MAX_TIME).contains(&time) {
        return Ok(());
    }
    Err(Error::invalid_config(
        what,
        format!("{time} is outside the times a store can hold ({MIN_TIME} to {MAX_TIME})"),
    ))
}

/// Refuses a duration longer than [`MAX_DURATION`], naming `what`.
pub fn check_duration(what: &str, duration: Duration) -> Result<()> {
    if duration <= MAX_DURATION {
        return Ok(());
    }
    Err(Error::invalid_config(
        what,
        format!(
            "{duration:?} is longer than the {} seconds (100 years) a store can hold",
            MAX_DURATION.as_secs()
        ),
    ))
}

/// At most this many entries in a task's [`crate::Task::meta`].
pub const MAX_META_ENTRIES: usize = 16;

/// At most this many bytes in one name or value of [`crate::Task::meta`]: a
/// `traceparent` takes 55, a `tracestate` at most 512.
pub const MAX_META_TEXT: usize = 512;

/// Refuses a meta map with too many entries, an empty name, or a name or
/// value too long: meta travels with every read of the task, so it stays small.
pub fn check_meta(meta: &std::collections::BTreeMap<String, String>) -> Result<()> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(Error::invalid_config(
            "meta",
            format!(
                "{} entries; at most {MAX_META_ENTRIES} are kept with a task",
                meta.len()
            ),
        ));
    }
    for (name, value) in meta {
        if name.is_empty() {
            return Err(Error::invalid_config("meta", "a name must not be empty"));
        }
        if name.len() > MAX_META_TEXT || value.len() > MAX_META_TEXT {
            return Err(Error::invalid_config(
                format!("meta {:?}", name.chars().take(40).collect::<String>()),
                format!("names and values are at most {MAX_META_TEXT} bytes"),
            ));
        }
    }
    Ok(())
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`], naming `what`. The
/// caller's container (an args array, a kwargs object) counts as the first
/// level. The walk stops at the limit, so a value of any depth is measured
/// with at most [`MAX_JSON_DEPTH`] levels of recursion, and it allocates
/// nothing (it runs on every enqueue and finish).
pub fn check_depth<'v>(what: &str, values: impl IntoIterator<Item = &'v Value>) -> Result<()> {
    fn too_deep(value: &Value, depth: usize) -> bool {
        match value {
            Value::Array(items) => depth >= MAX_JSON_DEPTH || items.iter().any(|v| too_deep(v, depth + 1)),
            Value::Object(map) => depth >= MAX_JSON_DEPTH || map.values().any(|v| too_deep(v, depth + 1)),
            _ => false,
        }
    }
    if values.into_iter().any(|value| too_deep(value, 1)) {
        return Err(Error::invalid_config(
            what,
            format!("arrays and objects nest deeper than the {MAX_JSON_DEPTH} levels a store can read back"),
        ));
    }
    Ok(())
}

/// Checks that records offered to [`crate::Storage::enqueue`] are new work:
/// `pending`. Finished history (what a migration copies) goes through
/// [`crate::Storage::import`] instead, so an enqueue never writes history and
/// a backend may wake workers for every record it stores.
pub fn check_pending(tasks: &[Task]) -> Result<()> {
    match tasks.iter().find(|task| task.status != TaskStatus::Pending) {
        Some(task) => Err(Error::conflict(
            task.id,
            format!(
                "a {} record cannot be enqueued: finished history is brought over with import",
                task.status
            ),
        )),
        None => Ok(()),
    }
}

/// Checks records offered to [`crate::Storage::enqueue`] or
/// [`crate::Storage::import`], the one check every
/// backend runs before storing anything: no `running` record (its lease
/// belongs to another store), no id twice, and every time, duration and JSON
/// value within what a store can hold and read back. Ids already stored are
/// the backend's to find.
pub fn check_new_records(tasks: &[Task]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(tasks.len());
    for task in tasks {
        if task.status == TaskStatus::Running {
            return Err(Error::conflict(task.id, "a running task cannot be enqueued"));
        }
        if !seen.insert(task.id) {
            return Err(Error::conflict(task.id, "the id is given twice"));
        }
        check_record(task)?;
    }
    Ok(())
}

/// Checks the times, durations and JSON of one record against what a store
/// can hold; the error names the task and the field.
pub fn check_record(task: &Task) -> Result<()> {
    let named = |error: Error| match error {
        Error::InvalidConfig { name, reason } => Error::InvalidConfig {
            name: format!("task {}: {name}", task.id),
            reason,
        },
        other => other,
    };
    let times = [
        ("eta", Some(task.eta)),
        ("created_at", Some(task.created_at)),
        ("updated_at", Some(task.updated_at)),
        ("started_at", task.started_at),
        ("finished_at", task.finished_at),
    ];
    for (what, time) in times {
        if let Some(time) = time {
            check_time(what, time).map_err(named)?;
        }
    }
    if let Some(progress) = &task.progress {
        progress.check().map_err(named)?;
    }
    for (what, duration) in [("interval", task.interval), ("timeout", task.timeout)] {
        if let Some(duration) = duration {
            check_duration(what, duration).map_err(named)?;
        }
    }
    crate::queue::check_name(&task.queue).map_err(named)?;
    if let Some(key) = &task.unique_key {
        crate::queue::check_unique_key(key).map_err(named)?;
    }
    if let Some(key) = &task.concurrency_key {
        crate::flow::check_concurrency_key(key).map_err(named)?;
    }
    if let Some(window) = &task.unique_window {
        check_duration("unique_for", window.period).map_err(named)?;
        check_time("unique_window.until", window.until).map_err(named)?;
    }
    check_meta(&task.meta).map_err(named)?;
    check_depth("args", task.args.iter()).map_err(named)?;
    check_depth("kwargs", task.kwargs.values()).map_err(named)?;
    if let Some(result) = &task.result {
        check_depth("result", [result]).map_err(named)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> Value {
        // `json!` would copy `inner` at every level; build the value directly.
        (0..levels).fold(json!(1), |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn arithmetic_saturates_at_the_range() {
        let now = datetime!(2030-01-01 00:00:00 UTC);
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
        assert_eq!(later(now, Duration::MAX), MAX_TIME);
        assert_eq!(later(now, Duration::from_secs(10u64.pow(12))), MAX_TIME);
        assert_eq!(later(MAX_TIME, Duration::from_nanos(1)), MAX_TIME);
        assert_eq!(earlier(now, Duration::MAX), MIN_TIME);
        assert_eq!(earlier(now, Duration::from_secs(1)), now - Duration::from_secs(1));
        assert_eq!(earlier(MIN_TIME, Duration::from_nanos(1)), MIN_TIME);
    }

    #[test]
    fn depth_counts_the_container_as_one_level() {
        // A payload of `MAX_JSON_DEPTH - 1` nested arrays inside args is fine.
        assert!(check_depth("args", [&nested(MAX_JSON_DEPTH - 1)]).is_ok());
        let error = check_depth("args", [&nested(MAX_JSON_DEPTH)]).unwrap_err();
        assert!(error.to_string().contains("args"), "{error}");
        // Far deeper than any reader or recursive walk could take.
        let deep = (0..100_000).fold(Value::Null, |inner, _| {
            Value::Object(serde_json::Map::from_iter([("a".to_string(), inner)]))
        });
        assert!(check_depth("result", [&deep]).is_err());
        std::mem::forget(deep); // dropping it would recurse 100,000 levels
    }

    #[test]
    fn ranges_name_the_value() {
        assert!(check_time("eta", datetime!(9999-01-01 0:00 UTC)).is_err());
        assert!(check_time("eta", datetime!(2030-01-01 0:00 UTC)).is_ok());
        let error = check_duration("interval", Duration::MAX).unwrap_err();
        assert!(error.to_string().contains("interval"), "{error}");
        assert!(check_duration("interval", MAX_DURATION).is_ok());
    }
}
