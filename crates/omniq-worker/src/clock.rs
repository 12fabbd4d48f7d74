//! Where a pool reads the time: the system clock, or one that follows tokio's
//! (pausable) clock so tests can advance time without waiting.

use std::fmt::Debug;

use time::OffsetDateTime;

/// The current time, as a pool sees it. Leases, etas and retry times are all
/// computed from it and passed to the storage.
pub trait Clock: Send + Sync + Debug {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that starts at the wall-clock time of its creation and then moves
/// with `tokio::time`, so under a paused runtime (`#[tokio::test(start_paused =
/// true)]`) a test moves it with `tokio::time::advance` or by sleeping.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    wall: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the current wall time now.
    pub fn new() -> Self {
        TokioClock {
            wall: OffsetDateTime::now_utc(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        omniq_core::later(self.wall, self.start.elapsed())
    }
}
