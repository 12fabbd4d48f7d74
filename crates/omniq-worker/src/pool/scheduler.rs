//! The schedule pass: the supervisor fires the due ticks of the store's
//! schedules. Every pool runs it; the store lets one process fire each tick.

// The pool's shared state, counters and imports, which this part works with.
use super::*;
use crate::cron::CronSchedule;

/// How late a tick may still fire. A tick later than this (no pool ran when
/// it came due) is missed: skipped, or, for a schedule that catches up,
/// fired once for all its missed ticks.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// How often the pass runs at most while no tick is nearer.
pub(super) const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

/// Fires or skips every due tick once; answers the earliest next tick of
/// the schedules, by the pool's clock.
pub(super) async fn fire_due(shared: &Shared) -> Option<OffsetDateTime> {
    let schedules = match shared.storage.schedules().await {
        Ok(schedules) => schedules,
        Err(error) => {
            tracing::warn!(%error, "cannot read the schedules");
            return None;
        }
    };
    let now = shared.clock.now();
    let mut earliest: Option<OffsetDateTime> = None;
    let mut soonest = |at: OffsetDateTime| earliest = Some(earliest.map_or(at, |e| e.min(at)));
    for schedule in schedules {
        if schedule.paused {
            continue;
        }
        if schedule.next_run > now {
            soonest(schedule.next_run);
            continue;
        }
        let name = schedule.name.as_str();
        let cron = match CronSchedule::parse(&schedule.expression, &schedule.timezone) {
            Ok(cron) => cron,
            Err(error) => {
                tracing::warn!(schedule = name, %error, "cannot read the schedule's expression");
                continue;
            }
        };
        let due = schedule.next_run;
        let missed = now - due > MISFIRE_GRACE;
        let next = match missed {
            true => cron.next_after(now),
            false => cron.next_after(due),
        };
        let next = match next {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(schedule = name, %error, "the schedule has no next tick");
                continue;
            }
        };
        soonest(next);
        // A schedule that catches up fires once for all its missed ticks,
        // as the latest of them: the store's next tick moves there first
        // (only if it is still `due`), then that tick fires as any other.
        // A crash between the two leaves the schedule on the latest missed
        // tick, which the next pass fires.
        let due = match (missed, schedule.catch_up) {
            (true, true) => match cron.latest_at_or_before(now) {
                Ok(Some(latest)) if latest > due => {
                    if let Err(error) = shared.storage.skip_schedule(name, due, latest).await {
                        tracing::warn!(schedule = name, %error, "cannot move to the latest missed tick");
                        continue;
                    }
                    latest
                }
                _ => due,
            },
            _ => due,
        };
        if missed && !schedule.catch_up {
            match shared.storage.skip_schedule(name, due, next).await {
                Ok(true) => {
                    tracing::info!(schedule = name, %due, %next, "skipped the ticks missed while no pool ran")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(schedule = name, %error, "cannot skip missed ticks"),
            }
            continue;
        }
        let task = match schedule.task.for_tick(name, due, &shared.config.defaults, now) {
            Ok(task) => task,
            Err(error) => {
                tracing::warn!(schedule = name, %error, "cannot make the tick's task");
                continue;
            }
        };
        match shared.storage.fire_schedule(name, due, next, task).await {
            Ok(Some(enqueued)) => {
                tracing::info!(schedule = name, %due, task = %enqueued.id, missed, "fired a tick");
                shared.signals.task_enqueued();
            }
            // Another process fired it, or it was paused or removed meanwhile.
            Ok(None) => {}
            Err(error) => tracing::warn!(schedule = name, %error, "cannot fire a tick"),
        }
    }
    earliest
}
