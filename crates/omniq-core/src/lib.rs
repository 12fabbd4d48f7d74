//! The core of OmniQ: the task model, settings, the error type, the [`Storage`]
//! trait every backend implements, an in-memory backend, and (feature
//! `conformance`) the suite every backend must pass.
//!
//! Users depend on the `omniq` crate, which re-exports what they need from here.
//! Backend authors depend on this crate alone:
//!
//! ```
//! use omniq_core::{MemoryStorage, NewTask, Settings, Storage, StorageExt, TaskStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> omniq_core::Result<()> {
//! let store = MemoryStorage::new();
//! let id = store
//!     .enqueue_one(NewTask::with_payload("email.send", &"ada@example.com")?, &Settings::default())
//!     .await?;
//! assert_eq!(store.get(id).await?.status, TaskStatus::Pending);
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod checked;
pub mod error;
pub mod flow;
pub mod limits;
mod memory;
pub mod payload;
pub mod queue;
pub mod redact;
pub mod schedule;
pub mod settings;
pub mod storage;
pub mod task;
pub mod upkeep;

#[cfg(feature = "conformance")]
pub mod conformance;

/// Re-exported so backends implement [`Storage`] with the same macro version.
pub use async_trait::async_trait;
pub use checked::Checked;
pub use error::{Error, Result};
pub use flow::{QueueFlow, QueueLimits, Rate};
pub use limits::{check_new_records, check_pending, earlier, later};
pub use memory::MemoryStorage;
pub use queue::{Enqueued, QueueStats, QueueTally, DEFAULT_QUEUE};
pub use redact::redact_url;
pub use schedule::{PutAnswer, PutSchedule, Schedule, ScheduledTask};
pub use settings::{BackendKind, Durability, Serializer, Settings, SettingsBuilder};
pub use storage::{
    ClaimRequest, Damaged, Finish, FinishOutcome, LeaseRef, ListOrder, ListQuery, RenewOutcome, RetryReport,
    StatusCounts, Storage, StorageExt,
};
pub use task::{
    cancel_in_scope, AttemptError, CancelScope, Finished, Lease, LeaseToken, NewTask, Outcome, Progress,
    Task, TaskError, TaskId, TaskResult, TaskStatus, UniqueWindow,
};
pub use upkeep::{Retention, WorkerBeat};
