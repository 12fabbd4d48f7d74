//! Opening a store: the backend named by settings or by a store URL
//! (`file:<folder>`, `sqlite:<file>`, `postgres://…[#schema]`), among those
//! compiled in.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use omniq_core::{BackendKind, Durability, Error, Result, Settings, Storage};

/// The backends compiled into this build, in order of preference.
pub fn compiled_backends() -> &'static [BackendKind] {
    &[
        #[cfg(feature = "file")]
        BackendKind::File,
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite,
        #[cfg(feature = "postgres")]
        BackendKind::Postgres,
    ]
}

/// The backend `settings` ask for, or the default: `file`, or the only backend
/// compiled in.
pub fn chosen_backend(settings: &Settings) -> Result<BackendKind> {
    match settings.backend {
        Some(kind) => Ok(kind),
        None => compiled_backends().first().copied().ok_or_else(|| {
            Error::Unsupported(
                "no backend is compiled in; enable the `file` or `sqlite` feature of omniq".into(),
            )
        }),
    }
}

fn not_compiled(kind: BackendKind) -> Error {
    Error::Unsupported(format!(
        "the {kind} backend is not compiled into this build; enable the `{kind}` feature of the omniq crate"
    ))
}

/// Opens the store `settings` describe, behind the checking layer
/// ([`omniq_core::Checked`]).
pub async fn open_storage(settings: &Settings) -> Result<Arc<dyn Storage>> {
    let store: Arc<dyn Storage> = match chosen_backend(settings)? {
        #[cfg(feature = "file")]
        BackendKind::File => Arc::new(omniq_file::FileStorage::open(settings).await?),
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Arc::new(omniq_sqlite::SqliteStorage::open(settings).await?),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => Arc::new(omniq_postgres::PostgresStorage::open(settings).await?),
        #[allow(unreachable_patterns)]
        other => return Err(not_compiled(other)),
    };
    Ok(omniq_core::Checked::wrap(store))
}

/// A PostgreSQL store URL split into the database URL and the schema (after
/// a `#`; default `omniq`).
fn postgres_parts(text: &str) -> (&str, &str) {
    match text.split_once('#') {
        Some((url, schema)) if !schema.is_empty() => (url, schema),
        Some((url, _)) => (url, omniq_core::settings::DEFAULT_PG_SCHEMA),
        None => (text, omniq_core::settings::DEFAULT_PG_SCHEMA),
    }
}

/// A store named as `backend:path`: `file:./omniq_data` (a folder),
/// `sqlite:./omniq_data/omniq.db` (a database file), or a PostgreSQL URL with
/// the schema after a `#`: `postgres://user:password@host/db#omniq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// The backend.
    pub backend: BackendKind,
    /// The folder (file), the database file (sqlite), or the database URL
    /// and `#schema` (postgres).
    pub path: PathBuf,
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreUrl {
                backend: BackendKind::Postgres,
                path: PathBuf::from(text),
            });
        }
        let bad = |reason: &str| {
            Error::invalid_config(
                "store",
                format!(
                    "{:?} {reason}; expected file:<folder>, sqlite:<database file> or postgres://…#schema",
                    omniq_core::redact_url(text)
                ),
            )
        };
        let (backend, path) = text.split_once(':').ok_or_else(|| bad("has no backend"))?;
        let backend: BackendKind = backend.parse().map_err(|_| bad("names an unknown backend"))?;
        if path.is_empty() {
            return Err(bad("has no path"));
        }
        Ok(StoreUrl {
            backend,
            path: PathBuf::from(path),
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.backend {
            BackendKind::Postgres => {
                let text = self.path.to_string_lossy();
                let (url, schema) = postgres_parts(&text);
                write!(f, "{}#{schema}", omniq_core::redact_url(url))
            }
            _ => write!(f, "{}:{}", self.backend, self.path.display()),
        }
    }
}

impl StoreUrl {
    /// The URL of the store `settings` describe.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let backend = chosen_backend(settings)?;
        let path = match backend {
            BackendKind::Sqlite => settings.sqlite_path(),
            BackendKind::Postgres => {
                let url = settings.database_url.as_deref().ok_or_else(|| {
                    Error::invalid_config(
                        "OMNIQ_DATABASE_URL",
                        "is needed for the postgres backend: postgres://user:password@host:port/database",
                    )
                })?;
                PathBuf::from(format!("{url}#{}", settings.pg_schema))
            }
            _ => settings.base_dir.clone(),
        };
        Ok(StoreUrl { backend, path })
    }

    /// Opens the store with `durability`.
    pub async fn open(&self, durability: Durability) -> Result<Arc<dyn Storage>> {
        Ok(omniq_core::Checked::wrap(
            open_at(self.backend, &self.path, durability).await?,
        ))
    }

    /// Opens the existing store only to read it: nothing in it is created,
    /// migrated, replayed or moved, and every change is refused with
    /// [`Error::Unsupported`](crate::Error::Unsupported). Reads wait at most
    /// `lock_timeout` for a writer's lock.
    pub async fn open_read_only(&self, lock_timeout: std::time::Duration) -> Result<Arc<dyn Storage>> {
        Ok(omniq_core::Checked::wrap(
            self.open_read_only_raw(lock_timeout).await?,
        ))
    }

    async fn open_read_only_raw(&self, lock_timeout: std::time::Duration) -> Result<Arc<dyn Storage>> {
        // Unused only in a build with no backend compiled in.
        let _ = lock_timeout;
        match self.backend {
            #[cfg(feature = "file")]
            BackendKind::File => Ok(Arc::new(
                omniq_file::FileStorage::open_read_only(&self.path, lock_timeout).await?,
            )),
            #[cfg(feature = "sqlite")]
            BackendKind::Sqlite => Ok(Arc::new(
                omniq_sqlite::SqliteStorage::open_read_only(&self.path, lock_timeout).await?,
            )),
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                let text = self.path.to_string_lossy();
                let (url, schema) = postgres_parts(&text);
                Ok(Arc::new(
                    omniq_postgres::PostgresStorage::connect_read_only(url, schema).await?,
                ))
            }
            #[allow(unreachable_patterns)]
            other => Err(not_compiled(other)),
        }
    }
}

async fn open_at(kind: BackendKind, path: &Path, durability: Durability) -> Result<Arc<dyn Storage>> {
    // Unused only in a build with no backend compiled in.
    let _ = (path, durability);
    match kind {
        #[cfg(feature = "file")]
        BackendKind::File => Ok(Arc::new(
            omniq_file::FileStorage::open_path(path, durability).await?,
        )),
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Ok(Arc::new(
            omniq_sqlite::SqliteStorage::open_path(path, durability).await?,
        )),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let text = path.to_string_lossy();
            let (url, schema) = postgres_parts(&text);
            Ok(Arc::new(
                omniq_postgres::PostgresStorage::connect(url, schema).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        let url: StoreUrl = "sqlite:/var/lib/q.db".parse().unwrap();
        assert_eq!(url.backend, BackendKind::Sqlite);
        assert_eq!(url.path, PathBuf::from("/var/lib/q.db"));
        assert_eq!(url.to_string(), "sqlite:/var/lib/q.db");
        for bad in ["nothing", "redis:/x", "file:", ":x"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
