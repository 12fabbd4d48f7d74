//! OmniQ's worker pool: runs the tasks of any [`omniq_core::Storage`] with
//! registered async handlers, a fixed concurrency, leases renewed in the
//! background, timeouts, retries with backoff, and graceful shutdown.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use omniq_core::MemoryStorage;
//! use omniq_worker::{HandlerError, Registry, WorkerPool};
//!
//! # async fn demo() -> omniq_core::Result<()> {
//! let mut registry = Registry::new();
//! registry.register("math.add", |(a, b): (i64, i64)| async move { Ok::<_, HandlerError>(a + b) });
//!
//! let pool = WorkerPool::new(Arc::new(MemoryStorage::new()), registry)
//!     .concurrency(8)
//!     .start()?;
//! // ... later, or on Ctrl-C with `pool.run_until_signal(...)`:
//! pool.shutdown(Duration::from_secs(30)).await;
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/workers.md` for the whole story.

mod backoff;
mod clock;
pub mod cron;
mod handler;
mod job;
mod pool;
mod signals;
pub mod telemetry;

pub use backoff::Backoff;
pub use clock::{Clock, StoreClock, SystemClock, TokioClock};
pub use handler::{HandlerError, IntoHandlerError, Registry, Retry, TaskContext};
pub use job::Job;
pub use pool::{Pool, PoolConfig, PoolStats, ShutdownReport, WorkerPool};
pub use signals::{Signals, TaskWatch};
