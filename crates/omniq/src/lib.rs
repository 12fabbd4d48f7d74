//! OmniQ: a task queue your program embeds. Tasks live in a folder of JSON files
//! or in one SQLite file; async workers run them with retries, timeouts, leases
//! and intervals; several workers and several processes can share one store.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use omniq::{HandlerError, MemoryStorage, OmniQ, Registry, Settings};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> omniq::Result<()> {
//! // OmniQ::from_env().await? opens the store of the OMNIQ_* variables
//! // (./omniq_data by default); this example keeps tasks in memory.
//! let queue = OmniQ::with_storage(Arc::new(MemoryStorage::new()), Settings::default());
//!
//! let mut registry = Registry::new();
//! registry.register("greet", |name: String| async move {
//!     Ok::<_, HandlerError>(format!("hello, {name}"))
//! });
//! let pool = queue.worker(registry).concurrency(4).start()?;
//!
//! let id = queue
//!     .task("greet", "Ada")?
//!     .max_retries(3)
//!     .timeout(Duration::from_secs(10))
//!     .enqueue()
//!     .await?;
//! let result = queue.wait_result(id, Duration::from_secs(5)).await?;
//! assert_eq!(result.value_as::<String>()?.as_deref(), Some("hello, Ada"));
//!
//! pool.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! Features: `file` and `sqlite` (both on by default) select the backends that
//! are compiled in; `default-features = false, features = ["file"]` builds
//! without sqlx. See the guides in `docs/` for choosing a backend, running
//! workers, scheduling, retries and migration.

mod backends;
pub mod blocking;
mod client;
mod jobs;
mod migrate;
mod queue_config;
mod schedules;
pub mod testing;
#[cfg(feature = "web")]
pub mod web;

pub use backends::{chosen_backend, compiled_backends, open_storage, StoreUrl};
pub use client::{OmniQ, TaskBuilder};
pub use jobs::{ContextExt, JobBuilder, JobHandle};
pub use migrate::{
    migrate, migrate_with, MigrateOptions, MigrationReport, NotCopied, Progress, SchedulesOnConflict,
};
/// The core crate, for backend authors and the conformance suite.
pub use omniq_core as core;
pub use omniq_core::schedule::{PutAnswer, PutSchedule, Schedule, ScheduledTask};
pub use omniq_core::{
    earlier, flow, later, limits, payload, queue, upkeep, BackendKind, Durability, Enqueued, Error,
    ListOrder, ListQuery, MemoryStorage, NewTask, QueueFlow, QueueLimits, QueueStats, Rate, Result,
    Retention, Serializer, Settings, SettingsBuilder, StatusCounts, Storage, StorageExt, Task, TaskError,
    TaskId, TaskResult, TaskStatus, WorkerBeat, DEFAULT_QUEUE,
};
#[cfg(feature = "file")]
pub use omniq_file::{CheckReport, FileStorage};
#[cfg(feature = "postgres")]
pub use omniq_postgres::PostgresStorage;
pub use queue_config::QueueConfig;
pub use schedules::ScheduleBuilder;

/// The PostgreSQL backend's own API: connection options, enqueueing inside
/// a program's transaction, and the sqlx it is built on, so a program uses
/// the same version.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use omniq_postgres::{enqueue_in, redact, sqlx, ConnectOptions, PostgresStorage};
}
#[cfg(feature = "sqlite")]
pub use omniq_sqlite::SqliteStorage;

/// The SQLite schema version this build writes.
#[cfg(feature = "sqlite")]
pub fn sqlite_schema_version() -> i64 {
    omniq_sqlite::schema::CURRENT_VERSION
}

/// The PostgreSQL schema version this build writes.
#[cfg(feature = "postgres")]
pub fn postgres_schema_version() -> i64 {
    omniq_postgres::schema::CURRENT_VERSION
}

/// SQLite's own check of the database file at `path`, without opening it as
/// a store or changing it: `["ok"]` when sound, else what SQLite found.
#[cfg(feature = "sqlite")]
pub async fn sqlite_integrity_check(path: &std::path::Path) -> Result<Vec<String>> {
    omniq_sqlite::integrity_check_file(path).await
}
pub use omniq_worker::cron;
pub use omniq_worker::{
    Backoff, Clock, HandlerError, Job, Pool, PoolConfig, PoolStats, Registry, Retry, ShutdownReport, Signals,
    StoreClock, SystemClock, TaskContext, TokioClock, WorkerPool,
};

/// Sets up `tracing` output on stderr with the settings' filter (`OMNIQ_LOG`,
/// e.g. `info` or `warn,omniq=debug`; default `warn`). Programs with their own
/// subscriber skip this. Calling it twice does nothing the second time.
pub fn init_logging(settings: &Settings) -> Result<()> {
    let filter = settings.log.as_deref().unwrap_or("warn");
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        Error::invalid_config("OMNIQ_LOG", format!("{filter:?} is not a tracing filter: {e}"))
    })?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}
