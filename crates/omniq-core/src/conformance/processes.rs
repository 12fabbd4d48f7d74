//! Helpers for the several-processes test each persistent backend runs: child
//! processes claim from three queues of one store while the parent enqueues
//! tasks of mixed priorities, and every task must run exactly once (no lease
//! expires in that test); at the same moment, every child enqueues the same
//! unique keys, and each key must be stored once, and then fires the same
//! ticks of one schedule, and each tick must give one task.
//!
//! The backend's test re-executes its own test binary as the children (an
//! ignored test named `child_worker` that calls [`child_main`]), so no extra
//! binary is needed:
//!
//! ```ignore
//! #[test]
//! #[ignore = "runs only as a child of several_processes_run_each_task_exactly_once"]
//! fn child_worker() {
//!     processes::child_main(|store_path| async move { Arc::new(open(store_path).await) as Arc<dyn Storage> });
//! }
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn several_processes_run_each_task_exactly_once() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = open(&dir.path().join("store")).await;
//!     processes::parent(&store, &dir.path().join("store"), dir.path()).await;
//! }
//! ```

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::schedule::{Schedule, ScheduledTask};
use crate::settings::Settings;
use crate::storage::{ClaimRequest, Finish, FinishOutcome, Storage};
use crate::task::{NewTask, Outcome, TaskId, TaskStatus};

/// Long enough that no lease expires during the test: a second run of a task
/// would then be a real double claim, not at-least-once delivery.
const LEASE: Duration = Duration::from_secs(600);

/// How many children the parent starts.
const CHILDREN: usize = 3;

/// The queues the children serve, the tasks spread over them.
const QUEUES: [&str; 3] = ["default", "emails", "reports"];

/// How many unique keys every child enqueues at once.
const KEYS: usize = 50;

/// The queue of the keyed tasks, which no child serves, so each stays
/// pending, holding its key, until the parent checks.
const HELD: &str = "held";

/// The schedule every child fires the ticks of, and how many ticks.
const SCHEDULE: &str = "multi-process";
const TICKS: u64 = 20;

/// The queue of the ticks' tasks, which no child serves.
const TICKED: &str = "ticked";

/// The first tick of [`SCHEDULE`].
fn first_tick() -> OffsetDateTime {
    time::macros::datetime!(2030-01-01 00:00 UTC)
}

/// The schedule the parent stores before the children start.
fn schedule() -> Schedule {
    Schedule {
        name: SCHEDULE.into(),
        expression: "* * * * * *".into(),
        timezone: "UTC".into(),
        task: ScheduledTask::from_new_task(&NewTask::new("ticked").queue(TICKED)),
        catch_up: false,
        paused: false,
        next_run: first_tick(),
        last_run: None,
        last_task: None,
    }
}

/// Fires every tick of [`SCHEDULE`] in turn, as every other child does at
/// that moment, and writes the ticks this child won (`tick id`) beside `log`.
async fn fire_ticks(store: &dyn Storage, log: &Path) {
    let template = schedule().task;
    let mut won = String::new();
    for k in 0..TICKS {
        let due = first_tick() + Duration::from_secs(k);
        let task = template
            .for_tick(SCHEDULE, due, &Settings::default(), OffsetDateTime::now_utc())
            .expect("the tick's task");
        let next = due + Duration::from_secs(1);
        if let Some(fired) = store
            .fire_schedule(SCHEDULE, due, next, task)
            .await
            .expect("fire")
        {
            won.push_str(&format!("{k} {}\n", fired.id));
        }
    }
    std::fs::write(log.with_extension("ticks"), won).expect("write the ticks won");
}

/// A child's work: claim up to 8 tasks at a time from each queue in turn,
/// append each id to `log` (one line per execution), complete it, until
/// `stop` exists and nothing is pending in the queues. It holds its first
/// claim until every child holds one (a file each in `barrier`), so every
/// child runs tasks while the others do: the test then shows claims from all
/// of them at once, not from whichever started first. Then it enqueues the
/// unique keys, as every other child does at that moment, and writes each
/// answer to `log` with `.keys` added.
async fn child_loop(store: &dyn Storage, worker_id: &str, log_path: &Path, stop: &Path, barrier: &Path) {
    let mut waited = false;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open the execution log");
    let served: Vec<String> = QUEUES.iter().map(|q| q.to_string()).collect();
    let mut turn = 0;
    loop {
        let mut claimed = Vec::new();
        for _ in 0..QUEUES.len() {
            turn = (turn + 1) % QUEUES.len();
            claimed = store
                .claim(ClaimRequest {
                    queue: QUEUES[turn].into(),
                    worker_id: worker_id.to_string(),
                    limit: 8,
                    lease_for: LEASE,
                    now: OffsetDateTime::now_utc(),
                })
                .await
                .expect("claim");
            if !claimed.is_empty() {
                break;
            }
        }
        if claimed.is_empty() {
            if stop.exists() && store.next_due(&served).await.expect("next due").is_none() {
                return;
            }
            // Another process enqueues, so there is nothing to be woken by here.
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut finishes = Vec::new();
        for task in &claimed {
            writeln!(log, "{}", task.id).expect("write the execution log");
            finishes.push(Finish {
                id: task.id,
                token: task.lease.as_ref().expect("lease").token,
                outcome: Outcome::Complete {
                    result: json!(worker_id),
                },
            });
        }
        log.flush().expect("flush the execution log");
        if !waited {
            wait_for_every_child(barrier, worker_id).await;
            waited = true;
            enqueue_keys(store, log_path).await;
            fire_ticks(store, log_path).await;
        }
        let answers = store
            .finish(finishes, OffsetDateTime::now_utc())
            .await
            .expect("finish");
        assert!(
            answers.iter().all(|a| matches!(a, FinishOutcome::Applied { .. })),
            "a finish was refused although no lease expired: {answers:?}"
        );
    }
}

/// Enqueues one task for each unique key, as every child does at once, and
/// writes each answer (`key id stored|duplicate`) beside `log`.
async fn enqueue_keys(store: &dyn Storage, log: &Path) {
    let tasks = (0..KEYS)
        .map(|k| {
            let task = NewTask::new("keyed").queue(HELD).unique_key(format!("key-{k}"));
            // Every other key is held over a period too: its enqueues race
            // the same way.
            let task = match k % 2 {
                0 => task.unique_for(std::time::Duration::from_secs(3600)),
                _ => task,
            };
            task.into_task(&Settings::default(), OffsetDateTime::now_utc())
                .expect("task")
        })
        .collect();
    let answers = store.enqueue(tasks).await.expect("enqueue keyed tasks");
    let lines: String = answers
        .iter()
        .enumerate()
        .map(|(k, a)| {
            format!(
                "key-{k} {} {}\n",
                a.id,
                if a.duplicate { "duplicate" } else { "stored" }
            )
        })
        .collect();
    std::fs::write(keys_log(log), lines).expect("write the key answers");
}

fn keys_log(log: &Path) -> PathBuf {
    log.with_extension("keys")
}

/// Marks this child as holding a claim, then waits until every child does.
/// Other processes write the files, so there is nothing to be woken by: it
/// looks every 2 ms, for at most a minute.
async fn wait_for_every_child(barrier: &Path, worker_id: &str) {
    std::fs::create_dir_all(barrier).expect("create the barrier folder");
    std::fs::write(barrier.join(worker_id), b"").expect("mark the barrier");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(barrier).map_or(0, |d| d.count()) < CHILDREN {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every child claimed a task within a minute"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The parent's enqueueing: `batches` batches of `per_batch` tasks, with a pause
/// between batches so children claim while tasks still arrive.
async fn enqueue_while_children_run(store: &dyn Storage, batches: usize, per_batch: usize) -> Vec<TaskId> {
    let settings = Settings::default();
    let mut ids = Vec::new();
    for batch in 0..batches {
        let tasks = (0..per_batch)
            .map(|i| {
                let n = batch * per_batch + i;
                NewTask::new("multi")
                    .args(vec![json!(n)])
                    .queue(QUEUES[n % QUEUES.len()])
                    .priority((n % 7) as i16 - 3)
                    .into_task(&settings, OffsetDateTime::now_utc())
                    .expect("task")
            })
            .collect::<Vec<_>>();
        ids.extend(tasks.iter().map(|t| t.id));
        store.enqueue(tasks).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ids
}

/// Checks that every id in `ids` ran exactly once according to the children's
/// logs and is stored completed.
async fn assert_exactly_once(store: &dyn Storage, ids: &[TaskId], logs: &[&Path]) {
    let mut runs: HashMap<String, usize> = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            *runs.entry(line.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    let busy_children = logs
        .iter()
        .filter(|log| std::fs::metadata(log).map(|m| m.len() > 0).unwrap_or(false))
        .count();
    for id in ids {
        assert_eq!(
            runs.get(&id.to_string()),
            Some(&1),
            "task {id} did not run exactly once"
        );
        assert_eq!(store.get(*id).await.expect("get").status, TaskStatus::Completed);
    }
    assert_eq!(runs.len(), ids.len());
    assert_eq!(
        busy_children, CHILDREN,
        "every child holds a claim at the barrier, so every one ran tasks"
    );
}

/// The body of the ignored `child_worker` test: opens the store named by the
/// parent with `open` and runs [`child_loop`] on it.
pub fn child_main<F, Fut>(open: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Arc<dyn Storage>>,
{
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open(PathBuf::from(var("OMNIQ_TEST_STORE"))).await;
        let log = PathBuf::from(var("OMNIQ_TEST_LOG"));
        let stop = PathBuf::from(var("OMNIQ_TEST_STOP"));
        let barrier = PathBuf::from(var("OMNIQ_TEST_BARRIER"));
        child_loop(&*store, &var("OMNIQ_TEST_WORKER"), &log, &stop, &barrier).await;
    });
}

/// The parent: starts three children on the store at `store_path`, enqueues
/// 2,000 tasks in batches while they run, and checks that each ran exactly once.
/// `work_dir` receives the children's logs.
pub async fn parent(store: &dyn Storage, store_path: &Path, work_dir: &Path) {
    let stop = work_dir.join("stop");
    let logs: Vec<PathBuf> = (0..CHILDREN)
        .map(|i| work_dir.join(format!("child-{i}.log")))
        .collect();
    store
        .put_schedule(schedule(), crate::schedule::PutSchedule::Replace)
        .await
        .expect("store the schedule");
    let mut children = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "child_worker",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("OMNIQ_TEST_STORE", store_path)
            .env("OMNIQ_TEST_LOG", log)
            .env("OMNIQ_TEST_STOP", &stop)
            .env("OMNIQ_TEST_BARRIER", work_dir.join("barrier"))
            .env("OMNIQ_TEST_WORKER", format!("child-{i}"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a child process");
        children.push(child);
    }
    let ids = enqueue_while_children_run(store, 40, 50).await;
    std::fs::write(&stop, b"").expect("write the stop file");
    for mut child in children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("a child did not finish in two minutes")
            .expect("wait for a child");
        assert!(status.success(), "a child failed: {status}");
    }
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    assert_exactly_once(store, &ids, &logs).await;
    assert_each_key_stored_once(store, &logs).await;
    assert_each_tick_fired_once(store, &logs).await;
}

/// Checks that of the children firing the same ticks at once, one fired
/// each, and the store holds one task per tick.
async fn assert_each_tick_fired_once(store: &dyn Storage, logs: &[&Path]) {
    let mut won: HashMap<u64, Vec<String>> = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log.with_extension("ticks")).expect("read the ticks won");
        for line in text.lines() {
            let (tick, id) = line.split_once(' ').expect("tick id");
            won.entry(tick.parse().expect("tick"))
                .or_default()
                .push(id.to_string());
        }
    }
    for k in 0..TICKS {
        assert_eq!(won.get(&k).map(Vec::len), Some(1), "tick {k}: {won:?}");
    }
    let ticked = store
        .list(crate::storage::ListQuery {
            queue: Some(TICKED.into()),
            ..Default::default()
        })
        .await
        .expect("list the ticks' tasks");
    assert_eq!(ticked.len() as u64, TICKS, "one task per tick");
    let stored = store
        .schedules()
        .await
        .expect("schedules")
        .pop()
        .expect("the schedule");
    assert_eq!(stored.next_run, first_tick() + Duration::from_secs(TICKS));
}

/// Checks that the children's enqueues of the same keys stored one task per
/// key, which every child's answer names, and that exactly one child's answer
/// says it stored it.
async fn assert_each_key_stored_once(store: &dyn Storage, logs: &[&Path]) {
    let mut answers: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(keys_log(log)).expect("read the key answers");
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            answers
                .entry(parts[0].to_string())
                .or_default()
                .push((parts[1].to_string(), parts[2] == "stored"));
        }
    }
    let held = store
        .list(crate::storage::ListQuery {
            queue: Some(HELD.into()),
            ..Default::default()
        })
        .await
        .expect("list the keyed tasks");
    assert_eq!(held.len(), KEYS, "one task per key");
    assert_eq!(answers.len(), KEYS);
    for task in held {
        let key = task.unique_key.expect("a keyed task");
        let these = &answers[&key];
        assert_eq!(these.len(), CHILDREN, "{key}: {these:?}");
        assert!(
            these.iter().all(|(id, _)| *id == task.id.to_string()),
            "{key}: {these:?}"
        );
        assert_eq!(
            these.iter().filter(|(_, stored)| *stored).count(),
            1,
            "{key}: {these:?}"
        );
    }
}
