//! Where everything lives in a store's folder, how entries are named, and the
//! primitive file operations: atomic writes, renames, removals, each counted as
//! one step so tests can simulate a crash between any two of them.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use omniq_core::{Durability, Error, Result, Task, TaskId, TaskStatus, DEFAULT_QUEUE};
use time::OffsetDateTime;

use crate::safe::{self, Modes, TMP_PREFIX};

/// The folders and files of a store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub base: PathBuf,
    pub tasks: PathBuf,
    pub pending: PathBuf,
    pub running: PathBuf,
    pub completed: PathBuf,
    pub failed: PathBuf,
    pub cancelled: PathBuf,
    pub series: PathBuf,
    /// One file per unique key held by a live task, named by the key's hash,
    /// holding the task's id.
    pub keys: PathBuf,
    /// The paused queues, a JSON array of names.
    pub paused: PathBuf,
    /// The schedules, a JSON array.
    pub schedules: PathBuf,
    /// Each queue's flow-control settings, a JSON object by queue.
    pub limits: PathBuf,
    /// The rate buckets, a JSON object by queue and key.
    pub buckets: PathBuf,
    /// How many times a task with a concurrency key became pending.
    pub keyed_gen: PathBuf,
    /// The pools' heartbeats, a JSON object by worker id.
    pub workers: PathBuf,
    /// The last turn taken at each store-wide chore, a JSON object.
    pub turns: PathBuf,
    /// The store's format version.
    pub format: PathBuf,
    pub tmp: PathBuf,
    pub quarantine: PathBuf,
    pub intent: PathBuf,
    pub lock: PathBuf,
}

impl Layout {
    pub fn new(base: &Path) -> Self {
        Layout {
            base: base.to_path_buf(),
            tasks: base.join("tasks"),
            pending: base.join("pending"),
            running: base.join("running"),
            completed: base.join("completed"),
            failed: base.join("failed"),
            cancelled: base.join("cancelled"),
            series: base.join("series"),
            keys: base.join("keys"),
            paused: base.join("paused.json"),
            schedules: base.join("schedules.json"),
            limits: base.join("limits.json"),
            buckets: base.join("buckets.json"),
            keyed_gen: base.join("keyed.gen"),
            workers: base.join("workers.json"),
            turns: base.join("turns.json"),
            format: base.join("format"),
            tmp: base.join("tmp"),
            quarantine: base.join("quarantine"),
            intent: base.join("intent.json"),
            lock: base.join("lock"),
        }
    }

    /// Every folder, created on open.
    pub fn folders(&self) -> [&Path; 10] {
        [
            &self.tasks,
            &self.keys,
            &self.pending,
            &self.running,
            &self.completed,
            &self.failed,
            &self.cancelled,
            &self.series,
            &self.tmp,
            &self.quarantine,
        ]
    }

    /// The folders that hold entries, one per status.
    pub fn entry_folder(&self, status: TaskStatus) -> &Path {
        match status {
            TaskStatus::Pending => &self.pending,
            TaskStatus::Running => &self.running,
            TaskStatus::Completed => &self.completed,
            TaskStatus::Failed => &self.failed,
            TaskStatus::Cancelled => &self.cancelled,
        }
    }

    pub fn record(&self, id: TaskId) -> PathBuf {
        self.tasks.join(format!("task-{id}.json"))
    }

    pub fn series_pointer(&self, series: TaskId) -> PathBuf {
        self.series.join(series.to_string())
    }
}

/// A time as 20 decimal digits that sort like the time: nanoseconds since the
/// Unix epoch, shifted so times before 1970 sort first too.
pub fn time_key(time: OffsetDateTime) -> String {
    let ns = time
        .unix_timestamp_nanos()
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    format!("{:020}", (ns - i128::from(i64::MIN)) as u64)
}

/// The time a [`time_key`] stands for.
pub fn key_time(key: &str) -> Option<OffsetDateTime> {
    let shifted: u64 = key.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(shifted) + i128::from(i64::MIN)).ok()
}

/// The entry name of a task where its status puts it. Pending entries sort by
/// eta then id, finished ones by finish time then id; both name their queue
/// and priority after a `~` unless they are `default` and 0 (so a store
/// written before queues existed reads as it is), so claims and per-queue
/// counts need no record. Running ones are the bare id.
pub fn entry_name(task: &Task) -> String {
    let id = task.id;
    let key = match task.status {
        TaskStatus::Running => return id.to_string(),
        TaskStatus::Pending => time_key(task.eta),
        _ => time_key(task.finished_at.unwrap_or(task.eta)),
    };
    match task.queue == DEFAULT_QUEUE && task.priority == 0 {
        true => format!("{key}-{id}"),
        false => format!("{key}-{id}~{}~{}", task.priority, task.queue),
    }
}

/// The queue and priority a pending entry name gives: `default` and 0 for a
/// name without them; `None` for a name OmniQ did not write.
pub fn entry_queue(name: &str) -> Option<(&str, i16)> {
    let Some((_, rest)) = name.split_once('~') else {
        return Some((DEFAULT_QUEUE, 0));
    };
    let (priority, queue) = rest.split_once('~')?;
    if !omniq_core::queue::is_name(queue) {
        return None;
    }
    Some((queue, priority.parse().ok()?))
}

/// An entry name without its queue and priority.
fn entry_base(name: &str) -> &str {
    match name.split_once('~') {
        Some((base, _)) if entry_queue(name).is_some() => base,
        Some(_) => "",
        None => name,
    }
}

/// The task id an entry name holds, or `None` for a name OmniQ did not write.
pub fn entry_id(name: &str) -> Option<TaskId> {
    let name = entry_base(name);
    let id = match name.len() {
        36 => name,
        // Byte 20 is an ASCII '-', so 20 and 21 are character boundaries.
        57 if name.as_bytes()[20] == b'-' && entry_key(name).is_some() => &name[21..],
        _ => return None,
    };
    TaskId::parse(id).ok()
}

/// The 20-digit time key of a keyed entry name. Names are checked by bytes,
/// so a name with a multibyte character anywhere is simply not an entry.
pub fn entry_key(name: &str) -> Option<&str> {
    let name = entry_base(name);
    let key = name.get(..20)?;
    (name.len() == 57 && key.bytes().all(|b| b.is_ascii_digit())).then_some(key)
}

/// The id of a record file name (`task-<id>.json`).
pub fn record_id(name: &str) -> Option<TaskId> {
    let id = name.strip_prefix("task-")?.strip_suffix(".json")?;
    TaskId::parse(id).ok()
}

/// Performs file operations, counting each visible step, flushing to disk under
/// `Durability::Full`, and failing on purpose at a chosen step in tests.
#[derive(Debug)]
pub struct Disk {
    pub layout: Layout,
    pub modes: Modes,
    durability: Durability,
    steps: AtomicU64,
    crash_at: AtomicU64,
    fsyncs: AtomicU64,
    unique: AtomicU64,
}

/// The error of a simulated crash.
pub const SIMULATED_CRASH: &str = "simulated crash (test hook)";

impl Disk {
    pub fn new(layout: Layout, modes: Modes, durability: Durability) -> Self {
        Disk {
            layout,
            modes,
            durability,
            steps: AtomicU64::new(0),
            crash_at: AtomicU64::new(u64::MAX),
            fsyncs: AtomicU64::new(0),
            unique: AtomicU64::new(0),
        }
    }

    /// Makes the `n`-th visible step from now fail, as if the process died just
    /// before it.
    pub fn crash_before_step(&self, n: u64) {
        self.steps.store(0, Ordering::SeqCst);
        self.crash_at.store(n, Ordering::SeqCst);
    }

    /// Visible steps taken since the last [`Disk::crash_before_step`].
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }

    fn step(&self) -> Result<()> {
        let taken = self.steps.fetch_add(1, Ordering::SeqCst);
        if taken >= self.crash_at.load(Ordering::SeqCst) {
            return Err(Error::io(&self.layout.base, io::Error::other(SIMULATED_CRASH)));
        }
        Ok(())
    }

    fn sync_file(&self, file: &File, path: &Path) -> Result<()> {
        if self.durability == Durability::Full {
            file.sync_all().map_err(|e| Error::io(path, e))?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        if self.durability == Durability::Full {
            let handle = File::open(dir).map_err(|e| Error::io(dir, e))?;
            handle.sync_all().map_err(|e| Error::io(dir, e))?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically: a temporary file in `tmp/`, then one
    /// rename over `path`. A reader sees the old file or the new one, whole.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.layout.tmp.join(format!(
            "{TMP_PREFIX}{}.{}.{}",
            std::process::id(),
            self.unique.fetch_add(1, Ordering::Relaxed),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        // `create_new` fails on anything already there, a planted link included.
        let mut file = self
            .modes
            .options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let written = self
            .modes
            .fix_file(&file, &tmp)
            .and_then(|_| file.write_all(bytes).map_err(|e| Error::io(&tmp, e)));
        let synced = written.and_then(|_| self.sync_file(&file, &tmp));
        drop(file);
        if let Err(error) = synced {
            // A full disk must not leave a growing pile of half-written files.
            let _ = fs::remove_file(&tmp);
            return Err(error);
        }
        if let Err(error) = self.step() {
            let _ = fs::remove_file(&tmp);
            return Err(error);
        }
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(path, e)
        })?;
        self.sync_dir(parent(path))
    }

    /// Creates an empty file (an entry) if it does not exist.
    pub fn create_empty(&self, path: &Path) -> Result<()> {
        self.step()?;
        let file = self
            .modes
            .options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        self.modes.fix_file(&file, path)?;
        self.sync_dir(parent(path))
    }

    /// Renames `from` to `to`; `Ok(false)` when `from` no longer exists.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<bool> {
        self.step()?;
        match fs::rename(from, to) {
            Ok(()) => {
                self.sync_dir(parent(to))?;
                if parent(from) != parent(to) {
                    self.sync_dir(parent(from))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(from, e)),
        }
    }

    /// Creates the empty file `path` if it is missing, its folder flushed under
    /// `Full`, so a later in-place write cannot lose its directory entry.
    pub fn ensure_file(&self, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(safe::link_error(path)),
            Ok(_) => Ok(()),
            Err(_) => self.create_empty(path),
        }
    }

    /// Writes `bytes` over the content of `path` in place (creating it if
    /// missing), flushed under `Full`. Not atomic: only for the intent journal,
    /// where a torn write is a change that never started (see the store).
    pub fn write_in_place(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.step()?;
        let mut file = self
            .modes
            .options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        file.write_all(bytes).map_err(|e| Error::io(path, e))?;
        self.sync_file(&file, path)
    }

    /// Empties `path` (a file already gone is fine), flushed under `Full`.
    pub fn clear(&self, path: &Path) -> Result<()> {
        self.step()?;
        let file = match self.modes.options().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(open_error(path, e)),
        };
        file.set_len(0).map_err(|e| Error::io(path, e))?;
        self.sync_file(&file, path)
    }

    /// Replaces the content of the existing file `from` with `bytes`, then
    /// renames it to `to`; `Ok(false)` when `from` no longer exists. A claim
    /// uses it to carry the lease into `running/` with the entry's one rename,
    /// instead of writing a second file: until the rename, `from` is a pending
    /// entry, whose content nothing reads. A link planted in place of `from`
    /// is removed (the link, not its target) and answers `Ok(false)`.
    pub fn fill_and_rename(&self, from: &Path, to: &Path, bytes: &[u8]) -> Result<bool> {
        self.step()?;
        let mut file = match self.modes.options().write(true).truncate(true).open(from) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if safe::is_link_refused(&e) => {
                tracing::error!(path = %from.display(), "removed a symbolic link planted as an entry");
                fs::remove_file(from).map_err(|e| Error::io(from, e))?;
                return Ok(false);
            }
            Err(e) => return Err(Error::io(from, e)),
        };
        file.write_all(bytes).map_err(|e| Error::io(from, e))?;
        self.sync_file(&file, from)?;
        drop(file);
        self.rename(from, to)
    }

    /// Removes a file; a file already gone is fine.
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.step()?;
        match fs::remove_file(path) {
            Ok(()) => self.sync_dir(parent(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The error of an open that failed, naming a refused link as such.
fn open_error(path: &Path, error: io::Error) -> Error {
    match safe::is_link_refused(&error) {
        true => safe::link_error(path),
        false => Error::io(path, error),
    }
}

/// Reads a file; `Ok(None)` when it does not exist. A symbolic link is not
/// followed: it is an [`Error::Corrupt`] naming the path.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match safe::open_read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(path, e)),
    };
    // Sized up front, as `fs::read` does, so a record is one read.
    let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::with_capacity(size + 1);
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(Some(bytes))
}

/// The names in a folder (files OmniQ did not write are included; callers parse).
pub fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// The names in a folder, each with whether it is a symbolic link (read from
/// the folder itself, without a `stat` per name).
pub fn names_typed(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if let Ok(name) = entry.file_name().into_string() {
            names.push((name, link));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn time_keys_sort_like_times() {
        let times = [
            datetime!(1900-01-01 0:00 UTC),
            datetime!(1969-12-31 23:59:59.999 UTC),
            datetime!(1970-01-01 0:00 UTC),
            datetime!(2030-01-01 0:00 UTC),
            datetime!(2030-01-01 0:00:00.000000001 UTC),
        ];
        let keys: Vec<String> = times.iter().map(|t| time_key(*t)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        for (time, key) in times.iter().zip(&keys) {
            assert_eq!(key_time(key), Some(*time));
        }
        assert!(keys.iter().all(|k| k.len() == 20));
    }

    #[test]
    fn entry_names_parse_back() {
        let now = OffsetDateTime::now_utc();
        let mut task = omniq_core::NewTask::new("f")
            .into_task(&omniq_core::Settings::default(), now)
            .unwrap();
        let id = task.id;
        task.finished_at = Some(now);
        for status in TaskStatus::ALL {
            task.status = status;
            let name = entry_name(&task);
            assert_eq!(entry_id(&name), Some(id), "{name}");
            assert_eq!(entry_queue(&name), Some((DEFAULT_QUEUE, 0)), "{name}");
        }
        task.status = TaskStatus::Pending;
        task.queue = "mail:eu-1.x".into();
        task.priority = -32768;
        let name = entry_name(&task);
        assert_eq!(entry_id(&name), Some(id), "{name}");
        assert_eq!(entry_key(&name), Some(time_key(now).as_str()));
        assert_eq!(entry_queue(&name), Some(("mail:eu-1.x", -32768)));
        for odd in [
            format!("{name}~x"),
            name.replace("~-32768~", "~high~"),
            format!("{name}/.."),
        ] {
            assert_eq!(entry_id(&odd), None, "{odd}");
        }
        assert_eq!(entry_id("../../etc/passwd"), None);
        assert_eq!(entry_id("notes.txt"), None);
        // A multibyte character across byte 20 is no entry, and no panic.
        let odd = format!("0000000000000000000é{id}");
        assert_eq!(odd.len(), 57);
        assert_eq!(entry_key(&odd), None);
        assert_eq!(entry_id(&odd), None);
        assert_eq!(record_id(&format!("task-{id}.json")), Some(id));
        assert_eq!(record_id("task-../x.json"), None);
    }
}
