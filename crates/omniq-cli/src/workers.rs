//! `omniq workers`: the worker pools that report in to a store, from their
//! heartbeats, alive or missing.

use std::process::ExitCode;

use omniq::{Storage, WorkerBeat};
use time::OffsetDateTime;

use crate::output::{self, out, printable};
use crate::{print_json, Failure, Outcome};

pub(crate) async fn workers(store: &dyn Storage, json: bool, now: OffsetDateTime) -> Outcome {
    let mut workers = store.workers().await?;
    // The living first, each group by host and worker id.
    workers
        .sort_by(|a, b| (!a.alive(now), &a.host, &a.worker_id).cmp(&(!b.alive(now), &b.host, &b.worker_id)));
    if json {
        let rows: Vec<serde_json::Value> = workers
            .iter()
            .map(|beat| {
                let mut row = serde_json::to_value(beat).map_err(omniq::Error::from)?;
                row["alive"] = beat.alive(now).into();
                Ok(row)
            })
            .collect::<Result<_, Failure>>()?;
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        out!("no worker pools report in to this store");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = workers.iter().map(|beat| row(beat, now)).collect();
    output::table(
        &[
            "WORKER",
            "HOST",
            "PID",
            "VERSION",
            "QUEUES",
            "RUNNING",
            "STARTED",
            "LAST SEEN",
            "STATE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn row(beat: &WorkerBeat, now: OffsetDateTime) -> Vec<String> {
    let queues: Vec<String> = beat
        .queues
        .iter()
        .map(|(queue, slots)| format!("{}={slots}", printable(queue)))
        .collect();
    vec![
        printable(&beat.worker_id).into_owned(),
        printable(&beat.host).into_owned(),
        beat.pid.to_string(),
        printable(&beat.version).into_owned(),
        queues.join(","),
        beat.running.to_string(),
        output::relative(beat.started_at, now),
        output::relative(beat.last_seen, now),
        if beat.alive(now) { "alive" } else { "missing" }.into(),
    ]
}
