//! Cron expressions read in a time zone: when a schedule's next tick is.
//!
//! Five fields (minute granularity) or six (seconds first), with croner's
//! extensions (`L`, `#`, `W`, names, `@daily`...). Across daylight-saving
//! changes, a tick whose local time is skipped (spring) runs once, at the
//! first local time after the gap, and a local time that happens twice
//! (autumn) runs once, at its first occurrence.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use omniq_core::{Error, Result};
use time::OffsetDateTime;

/// A parsed cron expression and its time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

/// The most ticks one search steps over looking for one that is not a
/// repeat of a local time already past; a pattern never needs more than a
/// few, so more means the pattern has no next tick.
const MAX_STEPS: usize = 8;

impl CronSchedule {
    /// Parses `expression` in the IANA time zone `timezone` (e.g.
    /// `Europe/Berlin`, `UTC`); either invalid is an
    /// [`Error::InvalidConfig`] naming it.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| Error::invalid_config("cron expression", format!("{expression:?}: {e}")))?;
        let tz = Tz::from_str(timezone).map_err(|_| {
            Error::invalid_config(
                "timezone",
                format!("{timezone:?} is not an IANA time zone, such as UTC or Europe/Berlin"),
            )
        })?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: OffsetDateTime) -> Result<OffsetDateTime> {
        let none = || Error::invalid_config("cron expression", "it has no tick after this time");
        let mut from = to_chrono(after, self.tz).ok_or_else(none)?;
        let before = from.naive_local();
        for _ in 0..MAX_STEPS {
            let next = self.cron.find_next_occurrence(&from, false).map_err(|_| none())?;
            // The autumn hour happens twice: a local time already passed in
            // the first of them does not run again in the second.
            if next.naive_local() <= before && next.offset() != from.offset() {
                from = next;
                continue;
            }
            return from_chrono(&next).ok_or_else(none);
        }
        Err(none())
    }
}

fn to_chrono(time: OffsetDateTime, tz: Tz) -> Option<DateTime<Tz>> {
    let nanos = time.unix_timestamp_nanos();
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    Some(Utc.timestamp_opt(secs, sub).single()?.with_timezone(&tz))
}

fn from_chrono(time: &DateTime<Tz>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(time.timestamp_nanos_opt()?)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ticks(expression: &str, tz: &str, from: OffsetDateTime, n: usize) -> Vec<OffsetDateTime> {
        let schedule = CronSchedule::parse(expression, tz).unwrap();
        let mut at = from;
        (0..n)
            .map(|_| {
                at = schedule.next_after(at).unwrap();
                at
            })
            .collect()
    }

    #[test]
    fn a_daily_tick_in_the_skipped_spring_hour_runs_once_after_the_gap() {
        // Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let got = ticks(
            "0 30 2 * * *",
            "Europe/Berlin",
            datetime!(2026-03-27 12:00 UTC),
            4,
        );
        assert_eq!(
            got,
            [
                datetime!(2026-03-28 01:30 UTC), // 02:30 CET
                datetime!(2026-03-29 01:00 UTC), // 03:00 CEST, right after the gap
                datetime!(2026-03-30 00:30 UTC), // 02:30 CEST
                datetime!(2026-03-31 00:30 UTC),
            ]
        );
    }

    #[test]
    fn a_local_time_that_happens_twice_in_autumn_runs_once() {
        // Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice.
        let daily = ticks(
            "0 30 2 * * *",
            "Europe/Berlin",
            datetime!(2026-10-24 12:00 UTC),
            2,
        );
        assert_eq!(
            daily,
            [datetime!(2026-10-25 00:30 UTC), datetime!(2026-10-26 01:30 UTC)]
        );
        let hourly = ticks("0 0 * * * *", "Europe/Berlin", datetime!(2026-10-24 22:30 UTC), 4);
        assert_eq!(
            hourly,
            [
                datetime!(2026-10-24 23:00 UTC), // 01:00 CEST
                datetime!(2026-10-25 00:00 UTC), // 02:00 CEST
                // 02:00 CET (01:00 UTC) is 02:00 again: skipped.
                datetime!(2026-10-25 02:00 UTC), // 03:00 CET
                datetime!(2026-10-25 03:00 UTC),
            ]
        );
    }

    #[test]
    fn five_and_six_fields_and_utc() {
        let minutely = ticks("*/15 * * * *", "UTC", datetime!(2026-01-01 00:07 UTC), 2);
        assert_eq!(
            minutely,
            [datetime!(2026-01-01 00:15 UTC), datetime!(2026-01-01 00:30 UTC)]
        );
        let seconds = ticks("*/10 * * * * *", "UTC", datetime!(2026-01-01 00:00:05 UTC), 2);
        assert_eq!(
            seconds,
            [
                datetime!(2026-01-01 00:00:10 UTC),
                datetime!(2026-01-01 00:00:20 UTC)
            ]
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        for (expression, tz, what) in [
            ("not cron", "UTC", "cron expression"),
            ("0 0 32 * *", "UTC", "cron expression"),
            ("0 0 * * *", "Mars/Olympus", "timezone"),
        ] {
            match CronSchedule::parse(expression, tz) {
                Err(Error::InvalidConfig { name, .. }) => assert_eq!(name, what),
                other => panic!("{expression} {tz}: {other:?}"),
            }
        }
    }
}
