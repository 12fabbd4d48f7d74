//! `omniq schedules`: the store's cron schedules (name, expression, time
//! zone, next run, last task), and removing, pausing and resuming one.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use omniq::{Error, Storage};
use time::OffsetDateTime;

use crate::output::{self, out, printable};
use crate::{print_json, Failure, Outcome};

#[derive(Args)]
pub(crate) struct SchedulesArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON for scripts: an array of schedule records.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Action {
    /// Removes a schedule; the tasks it enqueued stay.
    Remove { name: String },
    /// Pauses a schedule: its ticks pass without a task.
    Pause { name: String },
    /// Resumes a paused schedule.
    Resume { name: String },
}

impl SchedulesArgs {
    /// Whether the command changes the store.
    pub(crate) fn writes(&self) -> bool {
        self.action.is_some()
    }
}

pub(crate) async fn schedules(store: &dyn Storage, args: &SchedulesArgs, now: OffsetDateTime) -> Outcome {
    let missing = |name: &str| {
        Failure::from(Error::invalid_config(
            "schedule",
            format!("no schedule named {name:?}"),
        ))
    };
    match &args.action {
        Some(Action::Remove { name }) => {
            if !store.remove_schedule(name).await? {
                return Err(missing(name));
            }
            out!("removed schedule {}; the tasks it enqueued stay", printable(name));
            return Ok(ExitCode::SUCCESS);
        }
        Some(Action::Pause { name }) => {
            if !store.set_schedule_paused(name, true).await? {
                return Err(missing(name));
            }
            let name = printable(name);
            out!(
                "paused schedule {name}: its ticks pass without a task until `omniq schedules resume {name}`"
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(Action::Resume { name }) => {
            if !store.set_schedule_paused(name, false).await? {
                return Err(missing(name));
            }
            out!("resumed schedule {}", printable(name));
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let schedules = store.schedules().await?;
    if args.json {
        print_json(&schedules)?;
        return Ok(ExitCode::SUCCESS);
    }
    if schedules.is_empty() {
        out!("no schedules");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                printable(&s.name).into_owned(),
                printable(&s.expression).into_owned(),
                printable(&s.timezone).into_owned(),
                match s.paused {
                    true => "paused".into(),
                    false => output::relative(s.next_run, now),
                },
                printable(&s.task.func_path).into_owned(),
                s.last_task.map_or("-".into(), |id| id.to_string()),
            ]
        })
        .collect();
    output::table(
        &["NAME", "EXPRESSION", "TIMEZONE", "NEXT RUN", "TASK", "LAST TASK"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
