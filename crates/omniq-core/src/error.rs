//! The one public error type of OmniQ, shared by every backend and the worker.

use std::path::PathBuf;

/// The result type used throughout OmniQ.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in OmniQ.
///
/// Backends keep their own private error types and convert them into this enum,
/// so callers match on one set of variants whatever the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No task with this id exists in the store.
    #[error("no task with id {id}")]
    NotFound {
        /// The id that was looked up.
        id: String,
    },

    /// The operation does not fit the task's current state: a status move that
    /// the state machine forbids, or an id that is already stored.
    #[error("task {id}: {reason}")]
    Conflict {
        /// The task the operation was about.
        id: String,
        /// Why the operation was refused.
        reason: String,
    },

    /// A task id that is not a valid UUID. Ids from users are checked before they
    /// touch a path or a query, so `../etc/passwd` ends here.
    #[error("invalid task id {id:?}: {reason}")]
    InvalidId {
        /// The text that was offered as an id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting or environment variable has a value that is not allowed.
    #[error("invalid value for {name}: {reason}")]
    InvalidConfig {
        /// The setting or variable, e.g. `OMNIQ_BACKEND`.
        name: String,
        /// What is wrong and which values are allowed.
        reason: String,
    },

    /// Stored data that cannot be read back: a task file that is not valid JSON,
    /// a database that is not an OmniQ database.
    #[error("corrupt data at {}: {reason}", path.display())]
    Corrupt {
        /// The file (or database) holding the bad data.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// The store was written by a newer version of OmniQ than this one, or by a
    /// program that is not OmniQ; it is left untouched.
    #[error("incompatible store at {}: {reason}", path.display())]
    Incompatible {
        /// The store's file or folder.
        path: PathBuf,
        /// Why it cannot be opened.
        reason: String,
    },

    /// A value could not be turned into JSON or back (a payload that does not
    /// match the handler's type, for instance).
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// A file-system operation failed (permissions, full disk, ...).
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The backend failed for a reason of its own (a database error, ...).
    #[error("{backend} backend error: {source}")]
    Backend {
        /// Which backend, e.g. `sqlite`.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A wait ran out before the task finished.
    #[error("task {id} did not finish within {waited:?}")]
    Timeout {
        /// The task waited for.
        id: String,
        /// How long the caller waited.
        waited: std::time::Duration,
    },

    /// A task waited for ended without a result: it failed for good or was
    /// cancelled.
    #[error("task {id} {status}: {message}")]
    TaskFailed {
        /// The task.
        id: String,
        /// How it ended: `failed` or `cancelled`.
        status: crate::task::TaskStatus,
        /// Its last error's message, or why it has none.
        message: String,
    },
    /// The feature asked for is not available in this build or this backend,
    /// e.g. a backend whose cargo feature is not enabled.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// Shorthand for [`Error::Conflict`].
    pub fn conflict(id: impl ToString, reason: impl Into<String>) -> Self {
        Error::Conflict {
            id: id.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(id: impl ToString) -> Self {
        Error::NotFound { id: id.to_string() }
    }

    /// Shorthand for [`Error::InvalidConfig`].
    pub fn invalid_config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }
}
