//! Cron expressions read in a time zone: when a schedule's next tick is.
//!
//! Five fields (minute granularity) or six (seconds first), with croner's
//! extensions (`L`, `#`, `W`, names, `@daily`...). Across daylight-saving
//! changes, a tick whose local time is skipped (spring) runs once, at the
//! first local time after the gap, and a local time that happens twice
//! (autumn) runs once, at its first occurrence, whatever the pattern (a
//! daily tick, or every minute of the repeated hour).

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

/// The most ticks one search steps over looking for one that is not the
/// second occurrence of a repeated local time: a pattern firing every
/// second over the longest repeated span in use (two hours) needs 7,200, so
/// more means the pattern has no next tick.
const MAX_STEPS: usize = 10_000;

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
        for _ in 0..MAX_STEPS {
            let next = self.cron.find_next_occurrence(&from, false).map_err(|_| none())?;
            // In autumn a span of local times happens twice: each runs at
            // its first occurrence only, whatever came before the search.
            if self.is_second_occurrence(&next) {
                from = next;
                continue;
            }
            return from_chrono(&next).ok_or_else(none);
        }
        Err(none())
    }

    /// The latest tick at or before `at` (a repeated local time counted at
    /// its first occurrence), if there is one.
    pub fn latest_at_or_before(&self, at: OffsetDateTime) -> Result<Option<OffsetDateTime>> {
        let Some(mut from) = to_chrono(at, self.tz) else {
            return Ok(None);
        };
        let mut inclusive = true;
        for _ in 0..MAX_STEPS {
            let Ok(previous) = self.cron.find_previous_occurrence(&from, inclusive) else {
                return Ok(None);
            };
            if !self.is_second_occurrence(&previous) {
                return Ok(from_chrono(&previous));
            }
            from = previous;
            inclusive = false;
        }
        Ok(None)
    }

    /// Whether `time`'s local time happened once before, under an earlier
    /// offset (the second pass through an autumn change's repeated span).
    fn is_second_occurrence(&self, time: &DateTime<Tz>) -> bool {
        match self.tz.from_local_datetime(&time.naive_local()) {
            chrono::LocalResult::Ambiguous(first, _) => first.timestamp() != time.timestamp(),
            _ => false,
        }
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

    /// The ticks of `expression` in `tz` from `from` until `until`.
    fn ticks_until(
        expression: &str,
        tz: &str,
        from: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Vec<OffsetDateTime> {
        let schedule = CronSchedule::parse(expression, tz).unwrap();
        let mut got = Vec::new();
        let mut at = from;
        loop {
            at = schedule.next_after(at).unwrap();
            if at >= until {
                return got;
            }
            got.push(at);
        }
    }

    /// The local wall times of `ticks` in `tz`.
    fn local(ticks: &[OffsetDateTime], tz: &str) -> Vec<chrono::NaiveDateTime> {
        let tz = Tz::from_str(tz).unwrap();
        ticks
            .iter()
            .map(|t| to_chrono(*t, tz).unwrap().naive_local())
            .collect()
    }

    /// Minute-level and sub-hour patterns across both changes of several
    /// zones (Lord Howe's shift is 30 minutes): ticks rise, no local time
    /// runs twice, and in autumn every matching local time runs once.
    #[test]
    fn no_local_time_runs_twice_across_either_change() {
        // (zone, a UTC time a day before the change, autumn)
        let changes = [
            ("Europe/Berlin", datetime!(2026-03-28 00:00 UTC), false),
            ("Europe/Berlin", datetime!(2026-10-24 00:00 UTC), true),
            ("America/New_York", datetime!(2026-03-07 12:00 UTC), false),
            ("America/New_York", datetime!(2026-10-31 12:00 UTC), true),
            ("Australia/Sydney", datetime!(2026-04-04 00:00 UTC), true),
            ("Australia/Sydney", datetime!(2026-10-03 00:00 UTC), false),
            ("Australia/Lord_Howe", datetime!(2026-04-04 00:00 UTC), true),
            ("Australia/Lord_Howe", datetime!(2026-10-03 00:00 UTC), false),
        ];
        let expressions = [
            "* * * * *",
            "*/15 * * * *",
            "*/30 * * * *",
            "0 * * * *",
            "30 1 * * *",
            "*/30 1 * * *",
        ];
        for (zone, from, autumn) in changes {
            let until = from + time::Duration::days(2);
            for expression in expressions {
                let got = ticks_until(expression, zone, from, until);
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "{zone} {expression}: ticks must rise"
                );
                let walls = local(&got, zone);
                let mut unique = walls.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(
                    unique.len(),
                    walls.len(),
                    "{zone} {expression}: a local time ran twice"
                );
                if autumn {
                    // Every matching wall time between the window's ends, once:
                    // the same pattern read in UTC over the same wall times.
                    let tz = Tz::from_str(zone).unwrap();
                    let wall = |t: OffsetDateTime| to_chrono(t, tz).unwrap().naive_local().and_utc();
                    let (start, end) = (wall(from), wall(until));
                    let start = OffsetDateTime::from_unix_timestamp(start.timestamp()).unwrap();
                    let end = OffsetDateTime::from_unix_timestamp(end.timestamp()).unwrap();
                    let expected = ticks_until(expression, "UTC", start, end).len();
                    assert_eq!(got.len(), expected, "{zone} {expression}: every local time once");
                }
            }
        }
    }

    #[test]
    fn the_repeated_autumn_span_runs_in_its_first_pass_only() {
        // Berlin: 02:00-02:59 happen in CEST, then again in CET.
        let got = ticks(
            "*/15 * * * *",
            "Europe/Berlin",
            datetime!(2026-10-24 23:50 UTC),
            5,
        );
        assert_eq!(
            got,
            [
                datetime!(2026-10-25 00:00 UTC), // 02:00 CEST
                datetime!(2026-10-25 00:15 UTC),
                datetime!(2026-10-25 00:30 UTC),
                datetime!(2026-10-25 00:45 UTC), // 02:45 CEST
                datetime!(2026-10-25 02:00 UTC), // 03:00 CET
            ]
        );
        // New York: 01:00-01:59 happen in EDT, then again in EST.
        let got = ticks(
            "*/30 1 * * *",
            "America/New_York",
            datetime!(2026-11-01 04:00 UTC),
            3,
        );
        assert_eq!(
            got,
            [
                datetime!(2026-11-01 05:00 UTC), // 01:00 EDT
                datetime!(2026-11-01 05:30 UTC), // 01:30 EDT
                datetime!(2026-11-02 06:00 UTC), // 01:00 EST, the next day
            ]
        );
        // A search that starts inside the second pass skips the rest of it.
        let got = ticks("* * * * *", "Europe/Berlin", datetime!(2026-10-25 01:10 UTC), 1);
        assert_eq!(got, [datetime!(2026-10-25 02:00 UTC)]);
        // Lord Howe: 01:30-01:59 happen at +11, then again at +10:30.
        let got = ticks(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            datetime!(2026-04-04 14:20 UTC),
            4,
        );
        assert_eq!(
            got,
            [
                datetime!(2026-04-04 14:30 UTC), // 01:30 +11
                datetime!(2026-04-04 14:45 UTC), // 01:45 +11
                // 01:30 and 01:45 at +10:30 (15:00, 15:15 UTC) are repeats.
                datetime!(2026-04-04 15:30 UTC), // 02:00 +10:30
                datetime!(2026-04-04 15:45 UTC),
            ]
        );
    }

    #[test]
    fn the_latest_tick_at_or_before_a_time() {
        let hourly = CronSchedule::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(
            hourly
                .latest_at_or_before(datetime!(2026-01-01 05:30 UTC))
                .unwrap(),
            Some(datetime!(2026-01-01 05:00 UTC))
        );
        assert_eq!(
            hourly
                .latest_at_or_before(datetime!(2026-01-01 05:00 UTC))
                .unwrap(),
            Some(datetime!(2026-01-01 05:00 UTC))
        );
        // Berlin's repeated 02:00 (CET, 01:00 UTC) is not a tick of its own.
        let berlin = CronSchedule::parse("0 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            berlin
                .latest_at_or_before(datetime!(2026-10-25 01:30 UTC))
                .unwrap(),
            Some(datetime!(2026-10-25 00:00 UTC))
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
