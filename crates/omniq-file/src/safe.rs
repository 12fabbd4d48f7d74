//! How the store creates and opens its own files: never through a symbolic
//! link, owner-only unless the store is shared with a group, and how a
//! planted link or a foreign temporary file is told apart from OmniQ's own.
//!
//! Task payloads often hold secrets, so files are created `0600` and folders
//! `0700`. A store whose folder has the set-group-id bit (`chmod 2770`) is
//! shared with that group on purpose: its files are created `0660` and its
//! folders `2770`, set explicitly so the umask cannot narrow them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use omniq_core::{Error, Result};

/// The prefix of every temporary file OmniQ writes in `tmp/`. Only files with
/// it are ever removed from there.
pub const TMP_PREFIX: &str = "omniq-tmp.";

/// The permissions the store gives what it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    /// Files: `0o600`, or `0o660` in a shared store.
    pub file: u32,
    /// Folders: `0o700`, or `0o2770` in a shared store.
    pub dir: u32,
    /// Whether the modes must be set after creation because the umask could
    /// narrow them (group bits).
    shared: bool,
}

impl Modes {
    /// Owner-only.
    pub const PRIVATE: Modes = Modes {
        file: 0o600,
        dir: 0o700,
        shared: false,
    };

    /// The modes for a store in `base` (an existing folder): shared with its
    /// group when the folder has the set-group-id bit, else owner-only.
    pub fn for_folder(base: &Path) -> Modes {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let setgid = fs::metadata(base).is_ok_and(|m| m.permissions().mode() & 0o2000 != 0);
            if setgid {
                return Modes {
                    file: 0o660,
                    dir: 0o2770,
                    shared: true,
                };
            }
        }
        let _ = base;
        Modes::PRIVATE
    }

    /// Options that create a file with these modes and never follow a link.
    pub fn options(&self) -> OpenOptions {
        let mut options = OpenOptions::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(self.file).custom_flags(libc::O_NOFOLLOW);
        }
        options
    }

    /// Gives a file just created its mode, when the umask could have
    /// narrowed it.
    pub fn fix_file(&self, file: &File, path: &Path) -> Result<()> {
        #[cfg(unix)]
        if self.shared {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(self.file))
                .map_err(|e| Error::io(path, e))?;
        }
        let _ = (file, path);
        Ok(())
    }

    /// Creates `dir` and its missing parents with the folder mode. A folder
    /// that exists keeps its mode; one that is a symbolic link is refused.
    pub fn create_dir(&self, dir: &Path) -> Result<()> {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::Corrupt {
                    path: dir.to_path_buf(),
                    reason: "a symbolic link where the store keeps a folder; OmniQ follows no link \
                             inside a store: replace it with a folder"
                        .into(),
                })
            }
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(Error::Corrupt {
                    path: dir.to_path_buf(),
                    reason: "a file where the store keeps a folder".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dir, e)),
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(self.dir & 0o777);
        }
        builder.create(dir).map_err(|e| Error::io(dir, e))?;
        #[cfg(unix)]
        if self.shared {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(self.dir)).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }
}

/// Whether an I/O error means the path is a symbolic link that an open
/// refused to follow.
pub fn is_link_refused(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// The error for a symbolic link found where the store keeps its own file.
pub fn link_error(path: &Path) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: "a symbolic link where OmniQ keeps its own file; it is not followed \
                 (`omniq check --repair` removes the link, not its target)"
            .into(),
    }
}

/// Removes `path` if it is a symbolic link (never its target), logging it
/// as damage; anything else is left alone.
pub fn remove_link(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            tracing::error!(path = %path.display(), "removed a symbolic link planted in the store");
            fs::remove_file(path).map_err(|e| Error::io(path, e))
        }
        _ => Ok(()),
    }
}

/// Opens `path` for reading without following a link.
pub fn open_read(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}
