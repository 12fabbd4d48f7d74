//! Cron schedules from the client: a typed job or a task enqueued at each
//! tick of a cron expression in a time zone, stored in the store and fired by
//! whichever pool sees the tick first (see `omniq_worker::pool::scheduler`).

use omniq_core::schedule::{check_schedule_name, PutSchedule, Schedule, ScheduledTask};
use omniq_core::{NewTask, Result};
use omniq_worker::cron::CronSchedule;
use omniq_worker::Job;

use crate::client::OmniQ;

impl OmniQ {
    /// Starts a schedule `name` that pushes `job` at each tick of the cron
    /// `expression` (five fields, or six with seconds first), in UTC unless
    /// `.timezone(..)` says otherwise; then `.create().await`.
    ///
    /// ```no_run
    /// # async fn demo(queue: omniq::OmniQ, report: impl omniq::Job) -> omniq::Result<()> {
    /// queue
    ///     .schedule("nightly-report", "0 0 3 * * *", &report)?
    ///     .timezone("Europe/Berlin")
    ///     .create()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn schedule<J: Job>(&self, name: &str, expression: &str, job: &J) -> Result<ScheduleBuilder<'_>> {
        Ok(self.schedule_task(name, expression, job.to_task()?))
    }

    /// As [`OmniQ::schedule`], for a task of the string API.
    pub fn schedule_task(&self, name: &str, expression: &str, task: NewTask) -> ScheduleBuilder<'_> {
        ScheduleBuilder {
            client: self,
            name: name.to_owned(),
            expression: expression.to_owned(),
            timezone: "UTC".into(),
            catch_up: false,
            task,
        }
    }

    /// Every schedule, sorted by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.storage().schedules().await
    }

    /// Removes the schedule `name`; `false` if there was none. Tasks it
    /// enqueued stay.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.storage().remove_schedule(name).await
    }

    /// Pauses the schedule `name`: its ticks pass without a task until it is
    /// resumed. `false` if there is none.
    pub async fn pause_schedule(&self, name: &str) -> Result<bool> {
        self.storage().set_schedule_paused(name, true).await
    }

    /// Resumes the schedule `name`. Ticks that passed while it was paused
    /// are missed (skipped, or fired once when it catches up).
    pub async fn resume_schedule(&self, name: &str) -> Result<bool> {
        self.storage().set_schedule_paused(name, false).await
    }
}

/// A schedule being set up; see [`OmniQ::schedule`].
#[must_use = "a schedule builder does nothing until .create() is awaited"]
#[derive(Debug)]
pub struct ScheduleBuilder<'a> {
    client: &'a OmniQ,
    name: String,
    expression: String,
    timezone: String,
    catch_up: bool,
    task: NewTask,
}

impl ScheduleBuilder<'_> {
    /// Reads the expression in the IANA time zone `timezone` (default
    /// `UTC`), e.g. `Europe/Berlin`. Across daylight-saving changes a
    /// skipped local time runs once, after the gap, and a repeated one once.
    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = timezone.into();
        self
    }

    /// After downtime (no pool running when ticks came due), fire once for
    /// the missed ticks (`true`) instead of skipping them (the default).
    pub fn catch_up(mut self, catch_up: bool) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Stores the schedule, replacing one of the same name. Creating it again
    /// unchanged (every process does so at start) keeps its next tick, its
    /// pause and its last task; a changed expression or time zone starts
    /// from the next tick of the new one. A bad name, expression or time
    /// zone is an [`omniq_core::Error::InvalidConfig`] naming it.
    pub async fn create(self) -> Result<Schedule> {
        check_schedule_name(&self.name)?;
        let cron = CronSchedule::parse(&self.expression, &self.timezone)?;
        let settings = self.client.settings();
        let mut task = ScheduledTask::from_new_task(&self.task);
        // The defaults of the client that made the schedule, not of the
        // pool that fires it.
        task.max_retries = task.max_retries.or(Some(settings.default_max_retries));
        task.timeout = task.timeout.or(settings.default_timeout);
        // The tick's task is checked now, not at its first tick.
        task.for_tick(&self.name, self.client.now(), settings, self.client.now())?;
        // The store keeps, in the same atomic step, what another process
        // may have changed since: the next tick (while expression and zone
        // are unchanged), the pause, the last tick and task.
        let schedule = Schedule {
            name: self.name,
            expression: self.expression,
            timezone: self.timezone,
            task,
            catch_up: self.catch_up,
            paused: false,
            next_run: cron.next_after(self.client.now())?,
            last_run: None,
            last_task: None,
        };
        let stored = self
            .client
            .storage()
            .put_schedule(schedule, PutSchedule::Update)
            .await?;
        Ok(stored.schedule)
    }
}
