//! The store lock across processes: `flock` on the `lock` file, waited for
//! no longer than the settings' lock timeout, with an error that names the
//! lock file and the process holding it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use omniq_core::{Error, Result};

use crate::safe::{self, Modes};

/// The `lock` file, held open for the life of the store.
pub struct StoreLock {
    file: File,
    path: PathBuf,
    timeout: Duration,
}

/// Where a helper thread's wait for the lock stands.
enum Wait {
    Waiting,
    /// The lock came free (the helper took it and let it go at once).
    Free(std::io::Result<()>),
    /// The caller gave up; the helper lets the lock go if it gets it.
    Abandoned,
}

impl StoreLock {
    /// Opens (creating if missing) the lock file, never through a link.
    pub fn open(path: &Path, modes: Modes, timeout: Duration) -> Result<Self> {
        let file = modes
            .options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| match safe::is_link_refused(&e) {
                true => safe::link_error(path),
                false => Error::io(path, e),
            })?;
        modes.fix_file(&file, path)?;
        Ok(StoreLock {
            file,
            path: path.to_path_buf(),
            timeout,
        })
    }

    /// Opens the existing lock file only to read it, for a store opened
    /// read-only: `flock` needs no write permission.
    pub fn open_existing(path: &Path, timeout: Duration) -> Result<Self> {
        let file = safe::open_read(path).map_err(|e| match safe::is_link_refused(&e) {
            true => safe::link_error(path),
            false => Error::io(path, e),
        })?;
        Ok(StoreLock {
            file,
            path: path.to_path_buf(),
            timeout,
        })
    }

    /// Takes the lock, waiting at most the timeout for another process to
    /// let it go.
    pub fn lock(&self) -> Result<()> {
        // A timeout too long to add waits for ever.
        let deadline = Instant::now().checked_add(self.timeout);
        loop {
            match self.file.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&self.path, e)),
            }
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() || !self.wait_until_free(left)? {
                return Err(self.timeout_error());
            }
        }
    }

    /// Releases the lock.
    pub fn unlock(&self) -> std::io::Result<()> {
        self.file.unlock()
    }

    /// Waits up to `left` for the lock to come free: a helper thread blocks
    /// in `flock` on its own open of the file (so it wakes the moment the
    /// holder lets go) and lets go at once; the caller then races for it
    /// again. `false` when the time ran out.
    fn wait_until_free(&self, left: Duration) -> Result<bool> {
        let probe = safe::open_read(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let state = Arc::new((Mutex::new(Wait::Waiting), Condvar::new()));
        let shared = state.clone();
        std::thread::Builder::new()
            .name("omniq-lock-wait".into())
            .spawn(move || {
                let taken = probe.lock();
                if taken.is_ok() {
                    let _ = probe.unlock();
                }
                let (wait, woken) = &*shared;
                let mut wait = wait.lock().unwrap_or_else(|p| p.into_inner());
                if !matches!(*wait, Wait::Abandoned) {
                    *wait = Wait::Free(taken);
                    woken.notify_one();
                }
            })
            .map_err(|e| Error::io(&self.path, e))?;
        let (wait, woken) = &*state;
        let wait = wait.lock().unwrap_or_else(|p| p.into_inner());
        let (mut wait, _) = woken
            .wait_timeout_while(wait, left, |w| matches!(w, Wait::Waiting))
            .unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *wait, Wait::Abandoned) {
            Wait::Free(Ok(())) => Ok(true),
            Wait::Free(Err(e)) => Err(Error::io(&self.path, e)),
            Wait::Waiting | Wait::Abandoned => Ok(false),
        }
    }

    fn timeout_error(&self) -> Error {
        let holder = match holder_pid(&self.file) {
            Some(pid) => format!("process {pid} holds it"),
            None => "the process holding it is not known".to_string(),
        };
        Error::backend(
            "file",
            format!(
                "waited {:?} for the store lock {} and gave up: {holder}. A process stopped \
                 while holding it (SIGSTOP, a debugger) keeps every other one out; resume or \
                 end it, or raise OMNIQ_LOCK_TIMEOUT",
                self.timeout,
                self.path.display()
            ),
        )
    }
}

/// The pid of a process holding a `flock` on `file`, read from
/// `/proc/locks` (Linux); `None` elsewhere or when no lock is listed.
fn holder_pid(file: &File) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let inode = file.metadata().ok()?.ino();
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        // "1: FLOCK  ADVISORY  WRITE 12345 fd:01:123456 0 EOF"
        locks.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, pid, device) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
            let listed: u64 = device.rsplit(':').next()?.parse().ok()?;
            (*kind == "FLOCK" && listed == inode)
                .then(|| pid.parse().ok())
                .flatten()
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}
