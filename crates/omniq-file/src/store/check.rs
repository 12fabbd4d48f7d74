//! Reconciling a store folder: `omniq check` (every record readable and with
//! exactly one entry where its status says, no planted links, the quarantine
//! listed), and the lighter pass the lease pass runs now and then, which
//! gives records that lost their entries a new one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omniq_core::queue::holds_key;
use omniq_core::{Result, TaskId, TaskStatus};

use super::{Before, Loaded, State, Store};
use crate::layout::{entry_id, names, names_typed, record_id};
use crate::quarantine::{self, Quarantined};

/// How often one process looks for records without entries during its lease
/// passes: reading every folder costs time in a big store.
const ENTRIES_CHECKED_EVERY: Duration = Duration::from_secs(60);

/// What [`Store::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Task records read.
    pub records: u64,
    /// Entries found in the status folders.
    pub entries: u64,
    /// Everything out of place, one line each.
    pub problems: Vec<String>,
    /// Files this check moved to `quarantine/`.
    pub quarantined: Vec<String>,
    /// Every file in `quarantine/`: records and files the store could not
    /// read, kept for a person to inspect, with the reason and the time each
    /// was moved there. Delete one once it is dealt with.
    pub held: Vec<Quarantined>,
    /// Problems fixed (with `repair`).
    pub repaired: u64,
}

impl CheckReport {
    /// Whether nothing is out of place and nothing waits in quarantine.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty() && self.held.is_empty()
    }
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

impl Store {
    /// Reconciles the whole folder: every record must parse and have exactly
    /// one entry, in its status's folder. Unreadable records (and links
    /// planted in their place) are quarantined; with `repair`, misplaced,
    /// missing and orphaned entries are fixed, links planted as entries are
    /// removed (the link, never its target) and files that are not entries
    /// are moved to quarantine.
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        self.locked(|state| {
            let mut report = CheckReport::default();
            let layout = self.layout();
            let mut records = HashMap::new();
            for name in names(&layout.tasks)? {
                let Some(id) = record_id(&name) else {
                    report
                        .problems
                        .push(format!("tasks/{name}: not a task record (ignored)"));
                    continue;
                };
                match self.load(id)? {
                    Loaded::Found(task) => {
                        records.insert(id, task);
                    }
                    Loaded::Corrupt { reason, .. } if self.read_only => report.problems.push(format!(
                        "tasks/{name}: {reason} (left in place: opened read-only)"
                    )),
                    Loaded::Corrupt { reason, .. } => {
                        report.quarantined.push(format!("tasks/{name}"));
                        report
                            .problems
                            .push(format!("tasks/{name}: {reason}; moved to quarantine/"));
                    }
                    Loaded::Missing => {}
                }
            }
            report.records = records.len() as u64;
            let mut entries: HashMap<TaskId, Vec<PathBuf>> = HashMap::new();
            for status in TaskStatus::ALL {
                let folder = layout.entry_folder(status);
                for (name, link) in names_typed(folder)? {
                    let path = folder.join(&name);
                    if link {
                        report.problems.push(format!(
                            "{}/{name}: a symbolic link where an entry should be",
                            status.as_str()
                        ));
                        if repair {
                            self.disk.remove(&path)?;
                            report.repaired += 1;
                        }
                        continue;
                    }
                    match entry_id(&name) {
                        Some(id) => entries.entry(id).or_default().push(path),
                        None => {
                            report
                                .problems
                                .push(format!("{}/{name}: not an entry OmniQ wrote", status.as_str()));
                            if repair {
                                quarantine::move_aside(
                                    layout,
                                    self.disk.modes,
                                    &path,
                                    "not an entry OmniQ wrote, found in a status folder",
                                );
                                report.repaired += 1;
                            }
                        }
                    }
                }
            }
            report.entries = entries.values().map(|e| e.len() as u64).sum();
            let mut fixes = Vec::new();
            for (id, task) in &records {
                let expected = self.entry_path(task);
                let found = entries.remove(id).unwrap_or_default();
                if found != [expected.clone()] {
                    report.problems.push(format!(
                        "task {id} is {} but its entries are {:?}",
                        task.status,
                        found
                            .iter()
                            .map(|p| relative(&layout.base, p))
                            .collect::<Vec<_>>()
                    ));
                    fixes.push(task.clone());
                }
            }
            for (id, orphans) in entries {
                for orphan in orphans {
                    report.problems.push(format!(
                        "{} has no record (task {id})",
                        relative(&layout.base, &orphan)
                    ));
                    if repair {
                        self.disk.remove(&orphan)?;
                        report.repaired += 1;
                    }
                }
            }
            if repair {
                for task in fixes {
                    self.place_entry(&task, Before::Unknown)?;
                    report.repaired += 1;
                }
                state.view_read_at = None;
            }
            // A live task's key must be on record in keys/, or another task
            // with that key could be enqueued beside it.
            for (id, task) in &records {
                let Some(key) = task.unique_key.as_deref().filter(|_| holds_key(task.status)) else {
                    continue;
                };
                if self.key_holder(key)? != Some(*id) {
                    report.problems.push(format!(
                        "task {id} holds the unique key {key:?}, which keys/ does not record"
                    ));
                    if repair {
                        self.take_key(task)?;
                        report.repaired += 1;
                    }
                }
            }
            report.held = quarantine::list(layout);
            Ok(report)
        })
    }

    /// Gives every record that has no entry at all (its entry was deleted by
    /// hand, say) the entry its status calls for, so it is claimed, handed
    /// back and counted again. Runs at most once per
    /// [`ENTRIES_CHECKED_EVERY`] in this process; returns how many it fixed.
    pub(super) fn restore_missing_entries(&self, state: &mut State) -> Result<u64> {
        if state
            .entries_checked_at
            .is_some_and(|at| at.elapsed() < ENTRIES_CHECKED_EVERY)
        {
            return Ok(0);
        }
        state.entries_checked_at = Some(Instant::now());
        let layout = self.layout();
        let mut indexed = HashSet::new();
        for status in TaskStatus::ALL {
            indexed.extend(
                names(layout.entry_folder(status))?
                    .iter()
                    .filter_map(|name| entry_id(name)),
            );
        }
        let mut fixed = 0;
        for name in names(&layout.tasks)? {
            let Some(id) = record_id(&name).filter(|id| !indexed.contains(id)) else {
                continue;
            };
            if let Loaded::Found(task) = self.load(id)? {
                tracing::warn!(task = %id, status = %task.status, "restored the missing entry of a record");
                self.place_entry(&task, Before::Unknown)?;
                fixed += 1;
            }
        }
        if fixed > 0 {
            state.view_read_at = None;
        }
        Ok(fixed)
    }
}
