//! The commands that read a store and print what they find: `stats`,
//! `queues`, `list`, `show` and `result`.

use std::process::ExitCode;
use std::time::Duration;

use omniq::{ListOrder, ListQuery, QueueStats, Storage, StoreUrl, TaskStatus};
use time::OffsetDateTime;

use crate::output::{self, out, printable};
use crate::{parse_id, print_json, IdArgs, ListArgs, Outcome, StatsArgs};

pub(crate) async fn stats(
    store: &dyn Storage,
    url: &StoreUrl,
    args: &StatsArgs,
    now: OffsetDateTime,
) -> Outcome {
    // Counts and the oldest due time come without loading any payload; of
    // the running tasks only the first few are loaded, to show their leases.
    let queues = store.queue_stats().await?;
    let (counts, oldest_due, paused) = match &args.queue {
        Some(queue) => {
            omniq::queue::check_name(queue)?;
            let stats = queues
                .into_iter()
                .find(|stats| stats.queue == *queue)
                .unwrap_or_else(|| QueueStats::empty(queue.clone()));
            (stats.counts, stats.oldest_eta, Some(stats.paused))
        }
        None => {
            let counts = store.counts().await?;
            (counts, queues.iter().filter_map(|q| q.oldest_eta).min(), None)
        }
    };
    if args.json {
        print_json(&counts)?;
        return Ok(ExitCode::SUCCESS);
    }
    let running = store
        .list(ListQuery {
            status: Some(TaskStatus::Running),
            limit: Some(RUNNING_SHOWN),
            queue: args.queue.clone(),
            ..Default::default()
        })
        .await?;
    out!("store      {url}");
    if let (Some(queue), Some(paused)) = (&args.queue, paused) {
        out!(
            "queue      {}{}",
            printable(queue),
            if paused { " (paused)" } else { "" }
        );
    }
    for status in TaskStatus::ALL {
        let extra = match (status, oldest_due) {
            (TaskStatus::Pending, Some(eta)) => format!("   oldest due {}", output::relative(eta, now)),
            _ => String::new(),
        };
        out!("{:<10} {:>6}{extra}", status.as_str(), counts.get(status));
    }
    out!("{:<10} {:>6}", "total", counts.total());
    if !running.is_empty() {
        out!("\nrunning leases:");
        let rows: Vec<Vec<String>> = running
            .iter()
            .map(|t| {
                let (worker, expiry) = t.lease.as_ref().map_or(("?".into(), "?".into()), |l| {
                    (
                        printable(&l.worker_id).into_owned(),
                        format!("expires {}", output::relative(l.expires_at, now)),
                    )
                });
                vec![
                    t.id.to_string(),
                    printable(&t.func_path).into_owned(),
                    worker,
                    expiry,
                ]
            })
            .collect();
        output::table(&["ID", "FUNC_PATH", "WORKER", "LEASE"], &rows);
        let more = counts.running.saturating_sub(running.len() as u64);
        if more > 0 {
            out!("... and {more} more (omniq list --status running)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How many running tasks `stats` lists with their leases.
const RUNNING_SHOWN: usize = 20;

pub(crate) async fn list(store: &dyn Storage, args: &ListArgs, now: OffsetDateTime, colour: bool) -> Outcome {
    if let Some(queue) = &args.queue {
        omniq::queue::check_name(queue)?;
    }
    let tasks = store
        .list(ListQuery {
            status: args.status,
            queue: args.queue.clone(),
            func_path: args.handler.clone(),
            limit: Some(args.limit),
            order: if args.oldest {
                ListOrder::OldestFirst
            } else {
                ListOrder::NewestFirst
            },
            after: None,
        })
        .await?;
    if args.json {
        print_json(&tasks)?;
        return Ok(ExitCode::SUCCESS);
    }
    if tasks.is_empty() {
        out!("no tasks");
        return Ok(ExitCode::SUCCESS);
    }
    // Priority and unique key get a column only when some task has one.
    let priorities = tasks.iter().any(|t| t.priority != 0);
    let keys = tasks.iter().any(|t| t.unique_key.is_some());
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let mut row = vec![
                t.id.to_string(),
                output::status(t.status, colour),
                printable(&t.queue).into_owned(),
                printable(&t.func_path).into_owned(),
            ];
            if priorities {
                row.push(t.priority.to_string());
            }
            row.push(format!("{}/{}", t.attempts, t.max_retries + 1));
            row.push(match t.status {
                TaskStatus::Pending => output::relative(t.eta, now),
                _ => String::new(),
            });
            row.push(output::relative(t.updated_at, now));
            if keys {
                row.push(printable(t.unique_key.as_deref().unwrap_or_default()).into_owned());
            }
            row
        })
        .collect();
    let mut header = vec!["ID", "STATUS", "QUEUE", "FUNC_PATH"];
    if priorities {
        header.push("PRIORITY");
    }
    header.extend(["ATTEMPTS", "DUE", "UPDATED"]);
    if keys {
        header.push("UNIQUE_KEY");
    }
    output::table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn show(store: &dyn Storage, args: &IdArgs, now: OffsetDateTime, colour: bool) -> Outcome {
    let task = store.get(parse_id(&args.id)?).await?;
    if args.json {
        print_json(&task)?;
        return Ok(ExitCode::SUCCESS);
    }
    let time = |t: Option<OffsetDateTime>| {
        t.map_or("-".to_string(), |t| {
            format!("{} ({})", output::timestamp(t), output::relative(t, now))
        })
    };
    let seconds =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| humantime::format_duration(d).to_string());
    out!("id           {}", task.id);
    out!("func_path    {}", printable(&task.func_path));
    out!("status       {}", output::status(task.status, colour));
    out!("queue        {}", printable(&task.queue));
    out!("priority     {}", task.priority);
    if let Some(key) = &task.unique_key {
        out!("unique_key   {}", printable(key));
    }
    if let Some(window) = &task.unique_window {
        let finished: Vec<&str> = window.finished.iter().map(|s| s.as_str()).collect();
        out!(
            "unique_for   {} (until {}; held once {})",
            humantime::format_duration(window.period),
            output::timestamp(window.until),
            if finished.is_empty() {
                "never once finished".to_string()
            } else {
                finished.join(", ")
            },
        );
    }
    if let Some(key) = &task.concurrency_key {
        out!("concurrency  {}", printable(key));
    }
    for (name, value) in &task.meta {
        out!("meta         {}={}", printable(name), printable(value));
    }
    out!(
        "args         {}",
        printable(&serde_json::Value::Array(task.args.clone()).to_string())
    );
    out!(
        "kwargs       {}",
        printable(&serde_json::Value::Object(task.kwargs.clone()).to_string())
    );
    out!("attempts     {} of {}", task.attempts, task.max_retries + 1);
    if task.snoozes > 0 {
        out!("snoozes      {}", task.snoozes);
    }
    out!("eta          {}", time(Some(task.eta)));
    out!("interval     {}", seconds(task.interval));
    out!("timeout      {}", seconds(task.timeout));
    out!("created_at   {}", time(Some(task.created_at)));
    out!("updated_at   {}", time(Some(task.updated_at)));
    out!("started_at   {}", time(task.started_at));
    out!("finished_at  {}", time(task.finished_at));
    if let Some(series) = task.series {
        out!("series       {series}");
    }
    if let Some(lease) = &task.lease {
        out!(
            "lease        worker {}, expires {}",
            printable(&lease.worker_id),
            output::relative(lease.expires_at, now)
        );
    }
    if let Some(progress) = &task.progress {
        out!(
            "progress     {:.0}% {} ({})",
            progress.fraction * 100.0,
            printable(&progress.message),
            output::relative(progress.at, now)
        );
    }
    if let Some(error) = &task.error {
        out!(
            "error        [{}] {} (attempt {}, {})",
            printable(&error.kind),
            printable(&error.message),
            error.attempt,
            if error.retryable {
                "retryable"
            } else {
                "not retryable"
            }
        );
    }
    if let Some(result) = &task.result {
        out!("result       {}", printable(&result.to_string()));
    }
    if !task.errors.is_empty() {
        let earlier = match task.errors_dropped {
            0 => String::new(),
            n => format!(" (and {n} earlier not kept)"),
        };
        out!("failed attempts{earlier}:");
        for failed in &task.errors {
            let worker = failed.worker_id.as_deref().map(printable).unwrap_or_default();
            out!(
                "  #{:<3} {}  [{}] {}  worker {}",
                failed.error.attempt,
                output::timestamp(failed.failed_at),
                printable(&failed.error.kind),
                printable(&failed.error.message),
                if worker.is_empty() { "-".into() } else { worker },
            );
            if let Some(location) = &failed.error.location {
                out!("         at {}", printable(location));
            }
            for cause in &failed.error.causes {
                out!("         caused by: {}", printable(cause));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn result(store: &dyn Storage, args: &IdArgs, now: OffsetDateTime, colour: bool) -> Outcome {
    let result = store.get(parse_id(&args.id)?).await?.to_result();
    if args.json {
        print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    let finished = result
        .finished_at
        .map(|t| format!(", finished {}", output::relative(t, now)))
        .unwrap_or_default();
    out!(
        "{} after {} attempt(s){finished}",
        output::status(result.status, colour),
        result.attempts
    );
    if let Some(value) = &result.value {
        out!("result: {}", printable(&value.to_string()));
    }
    if let Some(error) = &result.error {
        out!(
            "error: [{}] {}",
            printable(&error.kind),
            printable(&error.message)
        );
    }
    Ok(ExitCode::SUCCESS)
}
