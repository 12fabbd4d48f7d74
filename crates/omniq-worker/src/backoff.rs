//! The delay before a failed task's next attempt: exponential, capped, jittered.

use std::time::Duration;

/// Exponential backoff with jitter: the `n`-th retry waits about
/// `initial * factor^(n-1)`, never more than `max`, spread by `±jitter` so that
/// tasks that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// How much each retry's delay grows.
    pub factor: f64,
    /// The longest delay.
    pub max: Duration,
    /// The fraction of the delay that is random, from 0 (none) to 1.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, ... up to 5 minutes, ±20 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
        // A `max` near `Duration::MAX` spread upwards overflows a Duration: cap it.
        Duration::try_from_secs_f64((capped * spread).max(0.0))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let delays: Vec<u64> = (1..=12).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn a_huge_cap_does_not_overflow() {
        let backoff = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..Backoff::default()
        };
        for attempt in [1, 2, 64, u32::MAX] {
            assert!(backoff.delay(attempt) <= Duration::MAX);
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let backoff = Backoff::default();
        for _ in 0..1000 {
            let delay = backoff.delay(3).as_secs_f64();
            assert!((3.2..=4.8).contains(&delay), "{delay}");
        }
    }
}
