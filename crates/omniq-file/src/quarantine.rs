//! The `quarantine/` folder: files the store cannot read, moved aside with
//! the reason beside them, so they stop nothing else yet stay visible to
//! `omniq check`, to `get` of their task, and to a person.
//!
//! A quarantined file `NAME.STAMP` (STAMP: nanoseconds since 1970 when it was
//! moved) has its reason in `NAME.STAMP.why`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use omniq_core::TaskId;
use time::OffsetDateTime;

use crate::layout::{names, Layout};
use crate::safe::Modes;

/// The suffix of the file holding a quarantined file's reason.
const WHY: &str = ".why";

/// One file in `quarantine/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it is now.
    pub path: PathBuf,
    /// Why it was moved there.
    pub reason: String,
    /// When it was moved.
    pub when: Option<OffsetDateTime>,
}

/// Moves `path` (a file or a link, never followed) to `quarantine/` with its
/// reason, logging both. Returns where it went.
pub fn move_aside(layout: &Layout, modes: Modes, path: &Path, reason: &str) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let stamp = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let target = layout.quarantine.join(format!("{name}.{stamp}"));
    match fs::rename(path, &target) {
        Ok(()) => {
            tracing::error!(
                file = %path.display(), moved_to = %target.display(), %reason,
                "unreadable file quarantined"
            );
            let why = with_suffix(&target);
            let written = modes
                .options()
                .write(true)
                .create_new(true)
                .open(&why)
                .and_then(|mut file| file.write_all(reason.as_bytes()));
            if let Err(error) = written {
                tracing::warn!(file = %why.display(), %error, "cannot record why a file was quarantined");
            }
        }
        Err(error) => tracing::error!(
            file = %path.display(), %reason, %error,
            "unreadable file found and could not be quarantined"
        ),
    }
    target
}

fn with_suffix(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(WHY);
    PathBuf::from(name)
}

/// Every quarantined file, oldest first.
pub fn list(layout: &Layout) -> Vec<Quarantined> {
    let mut found: Vec<Quarantined> = names(&layout.quarantine)
        .unwrap_or_default()
        .into_iter()
        .filter(|name| !name.ends_with(WHY))
        .map(|name| describe(layout, &name))
        .collect();
    found.sort_by_key(|q| q.when);
    found
}

/// The quarantined record of task `id`, if one was moved aside (the latest).
pub fn record_of(layout: &Layout, id: TaskId) -> Option<Quarantined> {
    let prefix = format!("task-{id}.json.");
    let mut matching: Vec<String> = names(&layout.quarantine)
        .ok()?
        .into_iter()
        .filter(|name| name.starts_with(&prefix) && !name.ends_with(WHY))
        .collect();
    matching.sort();
    matching.pop().map(|name| describe(layout, &name))
}

fn describe(layout: &Layout, name: &str) -> Quarantined {
    let path = layout.quarantine.join(name);
    let reason =
        fs::read_to_string(with_suffix(&path)).unwrap_or_else(|_| "(no reason was recorded)".to_string());
    let when = name
        .rsplit('.')
        .next()
        .and_then(|stamp| stamp.parse::<i128>().ok())
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
    Quarantined { path, reason, when }
}
