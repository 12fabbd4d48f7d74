//! Settings: which backend, where the store lives, defaults for new tasks,
//! durability; built in code or read from the `OMNIQ_*` environment variables.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The storage backends a store can be opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// A folder of JSON files (`omniq-file`).
    File,
    /// One SQLite database file (`omniq-sqlite`).
    Sqlite,
    /// A PostgreSQL database, shared by many hosts (`omniq-postgres`).
    Postgres,
}

impl BackendKind {
    /// The name used in `OMNIQ_BACKEND` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::File => "file",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// How hard a backend works to keep committed data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Nothing committed is lost or corrupted if the process is killed at any
    /// instant; a power cut may lose the last moments of work.
    #[default]
    Normal,
    /// Also survives power loss: every commit is flushed to the disk (fsync,
    /// SQLite `synchronous=FULL`) before it returns.
    Full,
}

/// How payloads and results are encoded where a backend stores them as bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// JSON: readable, and what the file backend always writes.
    #[default]
    Json,
    /// MessagePack: compact binary. No backend stores it yet: `OMNIQ_SERIALIZER`
    /// refuses it, and a backend opened with it set in code refuses it too.
    MsgPack,
}

macro_rules! named_choice {
    ($ty:ty, $var:literal, $($name:literal => $value:expr),+ $(,)?) => {
        impl FromStr for $ty {
            type Err = Error;
            fn from_str(text: &str) -> Result<Self> {
                match text.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($value),)+
                    _ => Err(Error::invalid_config(
                        $var,
                        format!("{text:?} is not allowed; expected one of: {}", [$($name),+].join(", ")),
                    )),
                }
            }
        }
    };
}

named_choice!(
    BackendKind,
    "OMNIQ_BACKEND",
    "file" => BackendKind::File,
    "sqlite" => BackendKind::Sqlite,
    "postgres" => BackendKind::Postgres
);
named_choice!(Durability, "OMNIQ_DURABILITY", "normal" => Durability::Normal, "full" => Durability::Full);
// `msgpack` is refused here, naming the variable: no backend stores it, so
// accepting it would only move the refusal to the open.
named_choice!(Serializer, "OMNIQ_SERIALIZER", "json" => Serializer::Json);

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a store and its workers are configured with.
///
/// Build one with [`Settings::builder`], take the defaults with
/// [`Settings::default`], or read the environment with [`Settings::from_env`].
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// The backend to open; `None` lets the program pick (the `omniq` crate
    /// takes `file`, or the only backend compiled in).
    pub backend: Option<BackendKind>,
    /// The folder holding the store (`OMNIQ_BASE_DIR`, default `./omniq_data`).
    pub base_dir: PathBuf,
    /// The SQLite database file, when not `{base_dir}/omniq.db` (`OMNIQ_DB_PATH`).
    pub db_path: Option<PathBuf>,
    /// The PostgreSQL database, `postgres://user:password@host:port/database`
    /// (`OMNIQ_DATABASE_URL`).
    pub database_url: Option<String>,
    /// The PostgreSQL schema OmniQ's tables live in (`OMNIQ_PG_SCHEMA`,
    /// default `omniq`), so one database can hold several stores.
    pub pg_schema: String,
    /// The most connections a PostgreSQL store opens at once
    /// (`OMNIQ_PG_CONNECTIONS`, default 10), besides the one it listens on.
    /// Claims and finishes are batched, so a worker pool needs about two
    /// plus one per queue it serves, whatever its concurrency.
    pub pg_connections: u32,
    /// Whether a PostgreSQL store listens for other hosts' enqueues
    /// (`OMNIQ_PG_LISTEN`, default `true`). `false` is the poll-only mode
    /// for a pooler in transaction mode (PgBouncer), which cannot carry
    /// `LISTEN`: no listening connection and no named prepared statements.
    pub pg_listen: bool,
    /// Payload encoding where a backend stores bytes (`OMNIQ_SERIALIZER`).
    pub serializer: Serializer,
    /// Time limit for one attempt of tasks that set none (`OMNIQ_DEFAULT_TIMEOUT`,
    /// seconds; default none).
    pub default_timeout: Option<Duration>,
    /// Retries for tasks that set none (`OMNIQ_DEFAULT_MAX_RETRIES`, default 3).
    pub default_max_retries: u32,
    /// The age past which `omniq purge` and [`Storage::purge`] calls made
    /// without an age delete finished tasks (`OMNIQ_RESULT_TTL`, seconds;
    /// default one day). Pools prune on their own by [`Settings::retention`].
    ///
    /// [`Storage::purge`]: crate::Storage::purge
    pub result_ttl: Duration,
    /// How long pools keep finished tasks, per status, before deleting them
    /// on their own (`OMNIQ_RETENTION_COMPLETED`, `OMNIQ_RETENTION_FAILED`,
    /// `OMNIQ_RETENTION_CANCELLED`, seconds, `0` = forever; defaults a day,
    /// a week, a day).
    pub retention: crate::Retention,
    /// Crash and power-loss safety (`OMNIQ_DURABILITY`, default `normal`).
    pub durability: Durability,
    /// A `tracing` filter such as `info,omniq=debug` (`OMNIQ_LOG`).
    pub log: Option<String>,
    /// How long opening or changing a store waits for another process that
    /// holds its lock (the file store's `lock` file, SQLite's write lock)
    /// before failing with an error naming the lock (`OMNIQ_LOCK_TIMEOUT`,
    /// seconds; default 30).
    pub lock_timeout: Duration,
}

/// Shows every setting, the database URL without its password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("backend", &self.backend)
            .field("base_dir", &self.base_dir)
            .field("db_path", &self.db_path)
            .field(
                "database_url",
                &self.database_url.as_deref().map(crate::redact_url),
            )
            .field("pg_schema", &self.pg_schema)
            .field("pg_connections", &self.pg_connections)
            .field("pg_listen", &self.pg_listen)
            .field("serializer", &self.serializer)
            .field("default_timeout", &self.default_timeout)
            .field("default_max_retries", &self.default_max_retries)
            .field("result_ttl", &self.result_ttl)
            .field("retention", &self.retention)
            .field("durability", &self.durability)
            .field("log", &self.log)
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

/// The default for [`Settings::default_max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// The default for [`Settings::result_ttl`]: one day.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default for [`Settings::lock_timeout`].
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// The default for [`Settings::pg_schema`].
pub const DEFAULT_PG_SCHEMA: &str = "omniq";
/// The default for [`Settings::pg_connections`].
pub const DEFAULT_PG_CONNECTIONS: u32 = 10;
/// The default for [`Settings::base_dir`].
pub const DEFAULT_BASE_DIR: &str = "./omniq_data";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backend: None,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            db_path: None,
            database_url: None,
            pg_schema: DEFAULT_PG_SCHEMA.to_owned(),
            pg_connections: DEFAULT_PG_CONNECTIONS,
            pg_listen: true,
            serializer: Serializer::Json,
            default_timeout: None,
            default_max_retries: DEFAULT_MAX_RETRIES,
            result_ttl: DEFAULT_RESULT_TTL,
            retention: crate::Retention::default(),
            durability: Durability::Normal,
            log: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

impl Settings {
    /// A builder starting from the defaults.
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder {
            settings: Settings::default(),
        }
    }

    /// Reads every `OMNIQ_*` variable of the process environment over the
    /// defaults. An unset or empty variable keeps the default; a bad value is an
    /// [`Error::InvalidConfig`] naming the variable and the allowed values.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`Settings::from_env`], reading variables through `lookup`, so
    /// programs and tests can supply them without touching the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let get = |name: &str| -> Result<Option<String>> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => {
                    let value = value
                        .into_string()
                        .map_err(|raw| Error::invalid_config(name, format!("{raw:?} is not valid UTF-8")))?;
                    Ok(Some(value).filter(|v| !v.trim().is_empty()))
                }
            }
        };
        let mut builder = Settings::builder();
        if let Some(v) = get("OMNIQ_BACKEND")? {
            builder = builder.backend(v.parse()?);
        }
        if let Some(v) = get("OMNIQ_BASE_DIR")? {
            builder = builder.base_dir(v);
        }
        if let Some(v) = get("OMNIQ_DB_PATH")? {
            builder = builder.db_path(v);
        }
        if let Some(v) = get("OMNIQ_DATABASE_URL")? {
            builder = builder.database_url(v.trim());
        }
        if let Some(v) = get("OMNIQ_PG_SCHEMA")? {
            builder = builder.pg_schema(v.trim());
        }
        if let Some(v) = get("OMNIQ_PG_CONNECTIONS")? {
            let connections = v.trim().parse::<u32>().ok().filter(|n| (1..=10_000).contains(n));
            let connections = connections.ok_or_else(|| {
                Error::invalid_config(
                    "OMNIQ_PG_CONNECTIONS",
                    format!("{v:?} is not allowed; expected a whole number from 1 to 10000"),
                )
            })?;
            builder = builder.pg_connections(connections);
        }
        if let Some(v) = get("OMNIQ_PG_LISTEN")? {
            let listen = match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(Error::invalid_config(
                        "OMNIQ_PG_LISTEN",
                        format!("{v:?} is not allowed; expected true or false"),
                    ))
                }
            };
            builder = builder.pg_listen(listen);
        }
        if let Some(v) = get("OMNIQ_SERIALIZER")? {
            builder = builder.serializer(v.parse()?);
        }
        if let Some(v) = get("OMNIQ_DEFAULT_TIMEOUT")? {
            builder = builder.default_timeout(Some(parse_seconds("OMNIQ_DEFAULT_TIMEOUT", &v, false)?));
        }
        if let Some(v) = get("OMNIQ_DEFAULT_MAX_RETRIES")? {
            let retries = v.trim().parse::<u32>().map_err(|_| {
                Error::invalid_config(
                    "OMNIQ_DEFAULT_MAX_RETRIES",
                    format!(
                        "{v:?} is not allowed; expected a whole number from 0 to {}",
                        u32::MAX
                    ),
                )
            })?;
            builder = builder.default_max_retries(retries);
        }
        if let Some(v) = get("OMNIQ_RESULT_TTL")? {
            builder = builder.result_ttl(parse_seconds("OMNIQ_RESULT_TTL", &v, true)?);
        }
        let mut retention = crate::Retention::default();
        for (name, slot) in [
            ("OMNIQ_RETENTION_COMPLETED", &mut retention.completed),
            ("OMNIQ_RETENTION_FAILED", &mut retention.failed),
            ("OMNIQ_RETENTION_CANCELLED", &mut retention.cancelled),
        ] {
            if let Some(v) = get(name)? {
                *slot = crate::Retention::parse(name, &v)?;
            }
        }
        builder = builder.retention(retention);
        if let Some(v) = get("OMNIQ_DURABILITY")? {
            builder = builder.durability(v.parse()?);
        }
        if let Some(v) = get("OMNIQ_LOG")? {
            builder = builder.log(v);
        }
        if let Some(v) = get("OMNIQ_LOCK_TIMEOUT")? {
            builder = builder.lock_timeout(parse_seconds("OMNIQ_LOCK_TIMEOUT", &v, true)?);
        }
        builder.build()
    }

    /// The SQLite database file: [`Settings::db_path`] or `{base_dir}/omniq.db`.
    pub fn sqlite_path(&self) -> PathBuf {
        self.db_path
            .clone()
            .unwrap_or_else(|| self.base_dir.join("omniq.db"))
    }
}

/// Parses a number of seconds (fractions allowed). Zero is refused where it
/// would mean "no time at all", which is never what a user wants of a timeout.
fn parse_seconds(name: &str, text: &str, zero_ok: bool) -> Result<Duration> {
    let expected = if zero_ok {
        "a number of seconds, 0 or more (e.g. 86400 or 0.5)"
    } else {
        "a number of seconds greater than 0 (e.g. 30 or 0.5)"
    };
    let bad = || Error::invalid_config(name, format!("{text:?} is not allowed; expected {expected}"));
    let secs: f64 = text.trim().parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs < 0.0 || (!zero_ok && secs == 0.0) {
        return Err(bad());
    }
    let duration = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    crate::limits::check_duration(name, duration).map_err(|_| {
        Error::invalid_config(
            name,
            format!(
                "{text:?} is longer than 100 years ({} seconds), the most a store can hold",
                crate::limits::MAX_DURATION.as_secs()
            ),
        )
    })?;
    Ok(duration)
}

/// Builds [`Settings`], checking them in [`SettingsBuilder::build`].
#[derive(Clone, Debug)]
pub struct SettingsBuilder {
    settings: Settings,
}

impl SettingsBuilder {
    /// The backend to open.
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.settings.backend = Some(backend);
        self
    }

    /// The folder holding the store.
    pub fn base_dir(mut self, base_dir: impl AsRef<Path>) -> Self {
        self.settings.base_dir = base_dir.as_ref().to_path_buf();
        self
    }

    /// The SQLite database file, instead of `{base_dir}/omniq.db`.
    pub fn db_path(mut self, db_path: impl AsRef<Path>) -> Self {
        self.settings.db_path = Some(db_path.as_ref().to_path_buf());
        self
    }

    /// The PostgreSQL database URL.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.settings.database_url = Some(url.into());
        self
    }

    /// The PostgreSQL schema OmniQ's tables live in.
    pub fn pg_schema(mut self, schema: impl Into<String>) -> Self {
        self.settings.pg_schema = schema.into();
        self
    }

    /// The most connections a PostgreSQL store opens at once, at least 1.
    pub fn pg_connections(mut self, connections: u32) -> Self {
        self.settings.pg_connections = connections.max(1);
        self
    }

    /// Whether a PostgreSQL store listens for other hosts' enqueues; `false`
    /// for a pooler in transaction mode.
    pub fn pg_listen(mut self, listen: bool) -> Self {
        self.settings.pg_listen = listen;
        self
    }

    /// Payload encoding where a backend stores bytes.
    pub fn serializer(mut self, serializer: Serializer) -> Self {
        self.settings.serializer = serializer;
        self
    }

    /// Time limit for tasks that set none (`None`: no limit).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.default_timeout = timeout;
        self
    }

    /// Retries for tasks that set none.
    pub fn default_max_retries(mut self, retries: u32) -> Self {
        self.settings.default_max_retries = retries;
        self
    }

    /// How long finished tasks are kept.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.settings.result_ttl = ttl;
        self
    }

    /// How long pools keep finished tasks, per status.
    pub fn retention(mut self, retention: crate::Retention) -> Self {
        self.settings.retention = retention;
        self
    }

    /// Crash and power-loss safety.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.settings.durability = durability;
        self
    }

    /// A `tracing` filter.
    pub fn log(mut self, filter: impl Into<String>) -> Self {
        self.settings.log = Some(filter.into());
        self
    }

    /// How long to wait for another process's lock on the store.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.settings.lock_timeout = timeout;
        self
    }

    /// Checks and returns the settings.
    pub fn build(self) -> Result<Settings> {
        let settings = self.settings;
        if settings.base_dir.as_os_str().is_empty() {
            return Err(Error::invalid_config("base_dir", "must not be empty"));
        }
        if settings.pg_schema.is_empty() || settings.pg_schema.len() > 63 {
            return Err(Error::invalid_config(
                "OMNIQ_PG_SCHEMA",
                format!(
                    "{:?} is not allowed; expected a schema name of 1 to 63 bytes",
                    settings.pg_schema
                ),
            ));
        }
        if let Some(url) = &settings.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Error::invalid_config(
                    "OMNIQ_DATABASE_URL",
                    "is not allowed; expected postgres://user:password@host:port/database",
                ));
            }
        }
        if settings.default_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_config(
                "default_timeout",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if let Some(timeout) = settings.default_timeout {
            crate::limits::check_duration("default_timeout", timeout)?;
        }
        crate::limits::check_duration("result_ttl", settings.result_ttl)?;
        for (name, age) in [
            ("retention.completed", settings.retention.completed),
            ("retention.failed", settings.retention.failed),
            ("retention.cancelled", settings.retention.cancelled),
        ] {
            match age {
                Some(Duration::ZERO) => {
                    return Err(Error::invalid_config(
                        name,
                        "an age of zero would delete tasks as they finish; use None to keep them forever",
                    ))
                }
                Some(age) => crate::limits::check_duration(name, age)?,
                None => {}
            }
        }
        crate::limits::check_duration("lock_timeout", settings.lock_timeout)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Settings> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    fn config_error(result: Result<Settings>) -> (String, String) {
        match result {
            Err(Error::InvalidConfig { name, reason }) => (name, reason),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn no_variables_give_the_defaults() {
        let settings = from(&[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.base_dir, PathBuf::from("./omniq_data"));
        assert_eq!(settings.sqlite_path(), PathBuf::from("./omniq_data/omniq.db"));
        assert_eq!(settings.default_max_retries, 3);
        assert_eq!(settings.result_ttl, Duration::from_secs(86400));
        assert_eq!(settings.default_timeout, None);
        assert_eq!(settings.backend, None);
    }

    #[test]
    fn the_postgres_variables_are_read_and_checked() {
        let settings = from(&[
            ("OMNIQ_BACKEND", "postgres"),
            (
                "OMNIQ_DATABASE_URL",
                "postgres://ada:secret@db.internal:5432/jobs",
            ),
            ("OMNIQ_PG_SCHEMA", "tenant_7"),
            ("OMNIQ_PG_CONNECTIONS", "25"),
            ("OMNIQ_PG_LISTEN", "off"),
        ])
        .unwrap();
        assert_eq!((settings.pg_connections, settings.pg_listen), (25, false));
        assert_eq!(settings.backend, Some(BackendKind::Postgres));
        assert_eq!(
            settings.database_url.as_deref(),
            Some("postgres://ada:secret@db.internal:5432/jobs")
        );
        assert_eq!(settings.pg_schema, "tenant_7");
        assert_eq!(from(&[]).unwrap().pg_schema, "omniq");
        let (name, reason) = config_error(from(&[("OMNIQ_DATABASE_URL", "mysql://secret@x/db")]));
        assert_eq!(name, "OMNIQ_DATABASE_URL");
        assert!(
            !reason.contains("secret"),
            "the URL's password is not repeated: {reason}"
        );
        let long = "s".repeat(64);
        let (name, _) = config_error(from(&[("OMNIQ_PG_SCHEMA", long.as_str())]));
        assert_eq!(name, "OMNIQ_PG_SCHEMA");
    }

    #[test]
    fn every_variable_is_read() {
        let settings = from(&[
            ("OMNIQ_BACKEND", "SQLite"),
            ("OMNIQ_BASE_DIR", "/var/lib/omniq"),
            ("OMNIQ_DB_PATH", "/var/lib/omniq/custom.db"),
            ("OMNIQ_SERIALIZER", "JSON"),
            ("OMNIQ_DEFAULT_TIMEOUT", "2.5"),
            ("OMNIQ_LOCK_TIMEOUT", "4"),
            ("OMNIQ_DEFAULT_MAX_RETRIES", "7"),
            ("OMNIQ_RESULT_TTL", "60"),
            ("OMNIQ_DURABILITY", "full"),
            ("OMNIQ_LOG", "omniq=debug"),
        ])
        .unwrap();
        assert_eq!(settings.backend, Some(BackendKind::Sqlite));
        assert_eq!(settings.base_dir, PathBuf::from("/var/lib/omniq"));
        assert_eq!(settings.sqlite_path(), PathBuf::from("/var/lib/omniq/custom.db"));
        assert_eq!(settings.serializer, Serializer::Json);
        assert_eq!(settings.lock_timeout, Duration::from_secs(4));
        assert_eq!(settings.default_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(settings.default_max_retries, 7);
        assert_eq!(settings.result_ttl, Duration::from_secs(60));
        assert_eq!(settings.durability, Durability::Full);
        assert_eq!(settings.log.as_deref(), Some("omniq=debug"));
    }

    #[test]
    fn empty_variables_keep_the_defaults() {
        let settings = from(&[
            ("OMNIQ_BACKEND", ""),
            ("OMNIQ_BASE_DIR", " "),
            ("OMNIQ_RESULT_TTL", ""),
        ])
        .unwrap();
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn bad_values_name_the_variable_and_the_allowed_values() {
        let cases: &[(&str, &str, &str)] = &[
            ("OMNIQ_BACKEND", "redis", "file, sqlite"),
            ("OMNIQ_SERIALIZER", "pickle", "json"),
            ("OMNIQ_SERIALIZER", "msgpack", "json"),
            ("OMNIQ_LOCK_TIMEOUT", "soon", "0 or more"),
            ("OMNIQ_DURABILITY", "paranoid", "normal, full"),
            ("OMNIQ_PG_CONNECTIONS", "0", "1 to 10000"),
            ("OMNIQ_PG_CONNECTIONS", "many", "1 to 10000"),
            ("OMNIQ_PG_LISTEN", "maybe", "true or false"),
            ("OMNIQ_DEFAULT_TIMEOUT", "0", "greater than 0"),
            ("OMNIQ_DEFAULT_TIMEOUT", "-1", "greater than 0"),
            ("OMNIQ_DEFAULT_TIMEOUT", "ten", "greater than 0"),
            ("OMNIQ_DEFAULT_TIMEOUT", "inf", "greater than 0"),
            ("OMNIQ_DEFAULT_MAX_RETRIES", "-1", "whole number"),
            ("OMNIQ_DEFAULT_MAX_RETRIES", "2.5", "whole number"),
            ("OMNIQ_RESULT_TTL", "-5", "0 or more"),
            ("OMNIQ_RESULT_TTL", "NaN", "0 or more"),
            ("OMNIQ_RESULT_TTL", "1e30", "0 or more"),
            ("OMNIQ_RESULT_TTL", "1e15", "100 years"),
            ("OMNIQ_DEFAULT_TIMEOUT", "1e12", "100 years"),
        ];
        for (var, value, allowed) in cases {
            let (name, reason) = config_error(from(&[(var, value)]));
            assert_eq!(&name, var);
            assert!(reason.contains(allowed), "{var}={value}: {reason}");
            assert!(reason.contains(value), "{var}={value}: {reason}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let (name, reason) = config_error(Settings::from_lookup(|name| {
            (name == "OMNIQ_BASE_DIR").then(|| OsString::from_vec(vec![0x66, 0xff, 0x6f]))
        }));
        assert_eq!(name, "OMNIQ_BASE_DIR");
        assert!(reason.contains("UTF-8"));
    }

    #[test]
    fn builder_checks_its_values() {
        let settings = Settings::builder()
            .backend(BackendKind::File)
            .base_dir("/tmp/q")
            .default_timeout(Some(Duration::from_secs(5)))
            .durability(Durability::Full)
            .build()
            .unwrap();
        assert_eq!(settings.sqlite_path(), PathBuf::from("/tmp/q/omniq.db"));
        assert!(Settings::builder().base_dir("").build().is_err());
        assert!(Settings::builder()
            .default_timeout(Some(Duration::ZERO))
            .build()
            .is_err());
    }

    #[test]
    fn from_env_reads_the_process_environment() {
        // Only this test in the crate touches the process environment.
        std::env::set_var("OMNIQ_DEFAULT_MAX_RETRIES", "11");
        let settings = Settings::from_env();
        std::env::remove_var("OMNIQ_DEFAULT_MAX_RETRIES");
        assert_eq!(settings.unwrap().default_max_retries, 11);
    }
}
