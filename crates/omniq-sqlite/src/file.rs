//! The database file itself: created owner-only before SQLite opens it,
//! checked as an OmniQ database on one connection, the errors of opening it
//! named, and SQLite's integrity check run on it without opening a store.

use std::path::Path;

use omniq_core::{Error, Result};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::{locate, schema, sql_error};

/// Opens one connection with `options` and checks the database is one this
/// build can read.
pub(crate) async fn check_open(options: &SqliteConnectOptions, path: &Path) -> Result<i64> {
    let mut conn = options.connect().await.map_err(|e| open_error(path, e))?;
    let checked = schema::check_readable(&mut conn, path).await;
    let _ = conn.close().await;
    checked
}

/// Whether `error` is SQLite's `SQLITE_CANTOPEN` (or one of its extended codes).
pub(crate) fn is_cantopen(error: &Error) -> bool {
    match error {
        Error::Backend { source, .. } => match source.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 14),
            _ => false,
        },
        _ => false,
    }
}

/// Creates the database file (and its folder) if missing, before SQLite
/// does, so it is owner-only (`0600`, folder `0700`) whatever the umask:
/// payloads often hold secrets. SQLite gives the `-wal` and `-shm` files the
/// database file's permissions. In a folder with the set-group-id bit (a
/// store shared with a group on purpose) the file is `0660` instead.
pub(crate) fn create_private(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shared = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.permissions().mode() & 0o2000 != 0);
        let mode = if shared { 0o660 } else { 0o600 };
        options.mode(mode);
        mode
    };
    match options.open(path) {
        Ok(file) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(path, e))?;
            }
            drop(file);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn open_error(path: &Path, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("26") => Error::Incompatible {
            path: path.to_path_buf(),
            reason: "the file is not a SQLite database; point OMNIQ_DB_PATH at another file".into(),
        },
        _ => locate(path, sql_error(error)),
    }
}

/// SQLite's own check of the database file at `path` (`PRAGMA
/// integrity_check`), on a read-only connection that neither opens the store
/// nor changes the file: `["ok"]` when it is sound, else what SQLite found.
/// It works on a file too damaged to open as a store.
pub async fn integrity_check_file(path: &Path) -> Result<Vec<String>> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut found = integrity_check_with(&options, path).await?;
    // As in `open_read_only`: a `-shm` that cannot be written (a read-only
    // file system) means no writer runs; read without locks.
    if let Err(sqlx::Error::Database(db)) = &found {
        if db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 14)
        {
            found = integrity_check_with(&options.clone().immutable(true), path).await?;
        }
    }
    match found {
        Ok(found) => Ok(found),
        // So damaged that SQLite cannot even walk it: that is the finding.
        Err(sqlx::Error::Database(db)) => Ok(vec![format!(
            "{} (SQLite error {})",
            db.message(),
            db.code().unwrap_or_default()
        )]),
        Err(other) => Err(locate(path, sql_error(other))),
    }
}

/// `PRAGMA integrity_check` on one connection with `options`: the rows, or
/// the error of the check itself (a failure to connect is an error here).
async fn integrity_check_with(
    options: &SqliteConnectOptions,
    path: &Path,
) -> Result<sqlx::Result<Vec<String>>> {
    let mut conn = options.connect().await.map_err(|e| open_error(path, e))?;
    let found = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await;
    let _ = conn.close().await;
    Ok(found)
}
