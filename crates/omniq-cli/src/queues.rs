//! `omniq queues`: each queue's counts, pause and flow-control settings
//! (limit, per-key window, rates) with its running tasks, and `omniq queues
//! set QUEUE` to change the settings while pools run.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use omniq::{Error, QueueFlow, QueueLimits, QueueStats, Rate, Storage};
use time::OffsetDateTime;

use crate::output::{self, out, printable};
use crate::{print_json, Failure, Outcome};

#[derive(Args)]
pub(crate) struct QueuesArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON for scripts: an array of queues.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Action {
    /// Changes a queue's flow-control settings for every process; settings
    /// not named stay as they are, and `none` clears one.
    Set(SetArgs),
    /// Clears every flow-control setting of a queue.
    Clear { queue: String },
}

#[derive(Args)]
struct SetArgs {
    /// The queue.
    queue: String,
    /// The most tasks of the queue running at once across every process,
    /// or `none`.
    #[arg(long, value_parser = parse_count)]
    limit: Option<Setting<u32>>,
    /// How many of a concurrency key's tasks may be in play at once, the
    /// earliest enqueued first (1: one at a time, in order), or `none`.
    #[arg(long, value_parser = parse_count)]
    per_key: Option<Setting<u32>>,
    /// Whether a key's task that failed for good holds the tasks behind it
    /// until it is retried or cancelled.
    #[arg(long)]
    hold_failed: Option<bool>,
    /// The most task starts per period, as 100/s, 6/m, 10/500ms, or `none`.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<Setting<Rate>>,
    /// The most task starts per period of each concurrency key, or `none`.
    #[arg(long, value_parser = parse_rate)]
    key_rate: Option<Setting<Rate>>,
}

/// A value to set, or `none` to clear it.
#[derive(Clone, Copy, Debug)]
enum Setting<T> {
    Set(T),
    Clear,
}

impl<T> Setting<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Setting::Set(value) => Some(value),
            Setting::Clear => None,
        }
    }
}

fn parse_count(text: &str) -> Result<Setting<u32>, String> {
    match text {
        "none" | "off" => Ok(Setting::Clear),
        _ => text
            .parse()
            .map(Setting::Set)
            .map_err(|_| format!("{text:?} is not a whole number (or `none` to clear it)")),
    }
}

fn parse_rate(text: &str) -> Result<Setting<Rate>, String> {
    match text {
        "none" | "off" => Ok(Setting::Clear),
        _ => text.parse().map(Setting::Set).map_err(|e: Error| e.to_string()),
    }
}

impl QueuesArgs {
    /// Whether the command changes the store.
    pub(crate) fn writes(&self) -> bool {
        self.action.is_some()
    }
}

pub(crate) async fn queues(store: &dyn Storage, args: &QueuesArgs, now: OffsetDateTime) -> Outcome {
    match &args.action {
        Some(Action::Set(set)) => return set_limits(store, set, now).await,
        Some(Action::Clear { queue }) => {
            store.set_queue_limits(queue, QueueLimits::default()).await?;
            out!("cleared the limits of queue {}", printable(queue));
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let mut queues = store.queue_stats().await?;
    let flows: BTreeMap<String, QueueFlow> = store
        .queue_flows(now)
        .await?
        .into_iter()
        .map(|flow| (flow.queue.clone(), flow))
        .collect();
    // A queue with settings but no task yet is listed too.
    for queue in flows.keys() {
        if !queues.iter().any(|stats| stats.queue == *queue) {
            queues.push(QueueStats::empty(queue.clone()));
        }
    }
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    // How long the oldest due task has waited; none for a queue whose
    // earliest task is not due yet.
    let age = |stats: &QueueStats| stats.oldest_eta.filter(|eta| *eta <= now).map(|eta| now - eta);
    if args.json {
        let rows: Vec<serde_json::Value> = queues
            .iter()
            .map(|stats| {
                let mut row = serde_json::to_value(stats).map_err(Error::from)?;
                row["oldest_pending_age_s"] = age(stats).map(|a| a.as_seconds_f64()).into();
                let flow = flows.get(&stats.queue);
                row["limits"] = match flow {
                    Some(flow) => serde_json::to_value(&flow.limits).map_err(Error::from)?,
                    None => serde_json::json!({}),
                };
                row["running_under_lease"] = flow.map(|flow| flow.running).into();
                row["next_start"] = flow
                    .filter(|flow| flow.next_start(now) > now)
                    .and_then(|flow| {
                        flow.next_start(now)
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .into();
                Ok(row)
            })
            .collect::<Result<_, Failure>>()?;
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if queues.is_empty() {
        out!("no queues");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|stats| {
            let c = &stats.counts;
            let oldest = match (age(stats), stats.oldest_eta) {
                (Some(age), _) => {
                    humantime::format_duration(Duration::from_secs(age.whole_seconds().max(0) as u64))
                        .to_string()
                }
                (None, Some(eta)) => format!("next {}", output::relative(eta, now)),
                (None, None) => "-".into(),
            };
            let flow = flows.get(&stats.queue);
            let limits = flow.map(|flow| &flow.limits);
            let limit = match flow {
                Some(QueueFlow {
                    limits: QueueLimits {
                        limit: Some(limit), ..
                    },
                    running,
                    ..
                }) => format!("{running}/{limit}"),
                _ => "-".into(),
            };
            let per_key = match limits.and_then(|l| l.per_key) {
                Some(n) if limits.is_some_and(|l| l.hold_failed) => format!("{n}, holds failed"),
                Some(n) => n.to_string(),
                None => "-".into(),
            };
            let rates = [
                limits.and_then(|l| l.rate).map(|r| r.to_string()),
                limits.and_then(|l| l.key_rate).map(|r| format!("{r} per key")),
            ];
            let rate = rates.into_iter().flatten().collect::<Vec<_>>().join(", ");
            vec![
                printable(&stats.queue).into_owned(),
                c.pending.to_string(),
                c.running.to_string(),
                c.completed.to_string(),
                c.failed.to_string(),
                c.cancelled.to_string(),
                if stats.paused { "paused" } else { "" }.into(),
                oldest,
                limit,
                per_key,
                if rate.is_empty() { "-".into() } else { rate },
            ]
        })
        .collect();
    output::table(
        &[
            "QUEUE",
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "PAUSED",
            "OLDEST PENDING",
            "LIMIT",
            "PER KEY",
            "RATE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Changes the settings `set` names, keeping the others as stored.
async fn set_limits(store: &dyn Storage, set: &SetArgs, now: OffsetDateTime) -> Outcome {
    let mut limits = store
        .queue_flows(now)
        .await?
        .into_iter()
        .find(|flow| flow.queue == set.queue)
        .map(|flow| flow.limits)
        .unwrap_or_default();
    if let Some(limit) = set.limit {
        limits.limit = limit.into_option();
    }
    if let Some(per_key) = set.per_key {
        limits.per_key = per_key.into_option();
        // Without a window there is nothing for a failure to hold.
        if limits.per_key.is_none() {
            limits.hold_failed = false;
        }
    }
    if let Some(hold) = set.hold_failed {
        limits.hold_failed = hold;
    }
    if let Some(rate) = set.rate {
        limits.rate = rate.into_option();
    }
    if let Some(rate) = set.key_rate {
        limits.key_rate = rate.into_option();
    }
    store.set_queue_limits(&set.queue, limits.clone()).await?;
    let queue = printable(&set.queue);
    match limits.is_unlimited() {
        true => out!("queue {queue} has no limits"),
        false => out!("queue {queue}: {}", describe(&limits)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings in words, as `queues set` confirms them.
fn describe(limits: &QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(limit) = limits.limit {
        parts.push(format!("at most {limit} running"));
    }
    if let Some(n) = limits.per_key {
        let hold = if limits.hold_failed {
            ", a failed task holding its key"
        } else {
            ""
        };
        parts.push(format!("{n} per concurrency key in enqueue order{hold}"));
    }
    if let Some(rate) = limits.rate {
        parts.push(format!("{rate} starts"));
    }
    if let Some(rate) = limits.key_rate {
        parts.push(format!("{rate} starts per key"));
    }
    parts.join(", ")
}
