//! Where a pool reads the time: the system clock, or one that follows tokio's
//! (pausable) clock so tests can advance time without waiting, set to the
//! store's clock when the store has one.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use omniq_core::Storage;
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

/// A pool's clock set to its store's: the pool's own clock plus the offset to
/// the store's clock ([`omniq_core::Storage::store_time`]) last measured, so
/// hosts whose clocks disagree still agree on etas and leases. For a store
/// without a clock of its own the offset stays zero and this is the pool's
/// clock itself, which is how tests keep driving time.
#[derive(Debug)]
pub struct StoreClock {
    local: Arc<dyn Clock>,
    /// The store's clock minus the local one, in nanoseconds.
    offset_ns: AtomicI64,
}

/// How far apart two clocks may be before a pool says so in its log: a
/// difference this large usually means a host's time service is off.
const SKEW_WORTH_A_WARNING: time::Duration = time::Duration::seconds(5);

impl StoreClock {
    /// `local` with no offset yet; [`StoreClock::sync`] measures it.
    pub fn new(local: Arc<dyn Clock>) -> Self {
        StoreClock {
            local,
            offset_ns: AtomicI64::new(0),
        }
    }

    /// How far the store's clock is ahead of the local one, as last measured.
    pub fn offset(&self) -> time::Duration {
        time::Duration::nanoseconds(self.offset_ns.load(Ordering::Relaxed))
    }

    /// Measures the offset again: three readings of the store's clock, each
    /// compared with the middle of the local readings around it, keeping the
    /// one of the shortest round trip (whose middle is the closest guess).
    /// Answers the offset, or `None` when the store has no clock of its own.
    pub async fn sync(&self, storage: &dyn Storage) -> omniq_core::Result<Option<time::Duration>> {
        let mut best: Option<(time::Duration, time::Duration)> = None;
        for _ in 0..3 {
            let before = self.local.now();
            let Some(theirs) = storage.store_time().await? else {
                return Ok(None);
            };
            let after = self.local.now();
            let round_trip = after - before;
            let offset = theirs - (before + round_trip / 2);
            if best.is_none_or(|(trip, _)| round_trip < trip) {
                best = Some((round_trip, offset));
            }
        }
        let Some((_, offset)) = best else {
            return Ok(None);
        };
        let nanos = i64::try_from(offset.whole_nanoseconds()).unwrap_or(i64::MAX);
        let previous = self.offset_ns.swap(nanos, Ordering::Relaxed);
        let was_far = time::Duration::nanoseconds(previous).abs() > SKEW_WORTH_A_WARNING;
        if offset.abs() > SKEW_WORTH_A_WARNING && !was_far {
            tracing::warn!(
                offset_seconds = offset.as_seconds_f64(),
                "this host's clock is far from the store's; the pool uses the store's time"
            );
        }
        Ok(Some(offset))
    }
}

impl Clock for StoreClock {
    fn now(&self) -> OffsetDateTime {
        let offset = self.offset();
        let local = self.local.now();
        match offset.is_negative() {
            true => omniq_core::earlier(local, offset.unsigned_abs()),
            false => omniq_core::later(local, offset.unsigned_abs()),
        }
    }
}
