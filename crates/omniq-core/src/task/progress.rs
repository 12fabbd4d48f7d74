//! How far a running attempt has got: a fraction and a message its handler
//! reports, stored on the task while the attempt runs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The longest progress message a store keeps, in characters.
pub const MAX_PROGRESS_MESSAGE: usize = 1_000;

/// A running attempt's progress, as its handler last reported it
/// (`TaskContext::progress`). It belongs to the attempt: a task that stops
/// running (finished, handed back, cancelled) drops it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// How much is done, from 0 to 1.
    pub fraction: f64,
    /// What the handler is doing.
    pub message: String,
    /// When it was reported.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Progress {
    /// A report of `fraction` (0 to 1) done, with `message`, at `at`. A
    /// fraction outside 0 to 1 (or not a number) and a message longer than
    /// [`MAX_PROGRESS_MESSAGE`] characters are an [`Error::InvalidConfig`].
    pub fn new(fraction: f64, message: impl Into<String>, at: OffsetDateTime) -> Result<Self> {
        let progress = Progress {
            fraction,
            message: message.into(),
            at,
        };
        progress.check()?;
        Ok(progress)
    }

    /// Checks the values a store keeps: what [`Progress::new`] checks, and a
    /// time within what a store holds.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(Error::invalid_config(
                "progress",
                format!("{} is not a fraction from 0 to 1", self.fraction),
            ));
        }
        let length = self.message.chars().count();
        if length > MAX_PROGRESS_MESSAGE {
            return Err(Error::invalid_config(
                "progress",
                format!("the message has {length} characters; at most {MAX_PROGRESS_MESSAGE} are kept"),
            ));
        }
        crate::limits::check_time("progress time", self.at)
    }
}
