//! The crash test of `cargo xtask chaos`: worker processes are killed with
//! SIGKILL at random moments while they run tasks, restarted, and at the end the
//! store is checked: nothing lost, nothing stuck, nothing unreadable.
//!
//! `chaos [--backend file|sqlite|postgres] [--tasks N] [--seconds S] [--limits]`
//! drives the test; `chaos worker BACKEND DIR LOG` is one worker process.
//!
//! With `--limits` the queue carries flow control (at most 6 running across
//! the 12 slots of the three workers, one task at a time per concurrency
//! key, 50 keys): besides nothing lost or stuck (no slot leaked by a killed
//! worker), no task of a key may start before every earlier task of its key
//! was done, by the side log.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq_benches::{open_at, scratch};
use omniq_core::{Error, NewTask, QueueLimits, Settings, Storage, TaskId, TaskStatus};
use omniq_worker::{Backoff, HandlerError, Registry, TaskContext, WorkerPool};
use serde_json::json;
use time::OffsetDateTime;

const WORKERS: usize = 3;
const LEASE: Duration = Duration::from_secs(3);
/// The concurrency keys of `--limits`.
const KEYS: usize = 50;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        let [_, backend, dir, log] = &args[..] else {
            eprintln!("usage: chaos worker BACKEND DIR LOG");
            return ExitCode::from(2);
        };
        worker(backend, Path::new(dir), Path::new(log));
        return ExitCode::SUCCESS;
    }
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let backends: Vec<String> = match value("--backend") {
        Some(backend) => vec![backend.clone()],
        None => vec!["file".into(), "sqlite".into()],
    };
    let tasks: usize = value("--tasks").map_or(2_000, |n| n.parse().expect("--tasks takes a number"));
    let seconds: u64 = value("--seconds").map_or(30, |s| s.parse().expect("--seconds takes a number"));
    let limits = args.iter().any(|a| a == "--limits");
    let mut ok = true;
    for backend in backends {
        ok &= drive(&backend, tasks, Duration::from_secs(seconds), limits);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One worker process: runs `chaos.job` tasks until it is killed.
fn worker(backend: &str, dir: &Path, log: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open_at(backend, dir).await.expect("open the store");
        let log = Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open the side log"),
        ));
        let mut registry = Registry::new();
        registry.register_with_context("chaos.job", move |job: serde_json::Value, ctx: TaskContext| {
            let log = log.clone();
            async move {
                // One short append per line, in one write: O_APPEND keeps it
                // whole across processes (`writeln!` would write it in pieces,
                // which another process's line could come between).
                let append = |line: String| {
                    log.lock()
                        .expect("log")
                        .write_all(line.as_bytes())
                        .expect("write the side log")
                };
                append(format!("start {} {}\n", ctx.id, ctx.attempt));
                let millis = job["sleep_ms"].as_u64().unwrap_or(10);
                tokio::time::sleep(Duration::from_millis(millis)).await;
                if fastrand::f64() < 0.1 {
                    return Err(HandlerError::retry("a random failure"));
                }
                append(format!("done {} {}\n", ctx.id, ctx.attempt));
                Ok(job["n"].clone())
            }
        });
        let pool = WorkerPool::new(store, registry)
            .concurrency(4)
            .poll_interval(Duration::from_millis(50))
            .lease(LEASE, Duration::from_millis(750))
            .requeue_every(Duration::from_millis(500))
            .backoff(Backoff {
                initial: Duration::from_millis(20),
                factor: 2.0,
                max: Duration::from_millis(500),
                jitter: 0.5,
            })
            .start()
            .expect("the pool's configuration is valid");
        pool.run_until_signal(Duration::from_secs(5)).await;
    });
}

fn spawn_worker(backend: &str, dir: &Path, log: &Path) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .arg("worker")
        .arg(backend)
        .arg(dir)
        .arg(log)
        .env("OMNIQ_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a worker process")
}

/// Runs the whole test on one backend; prints the summary line last.
fn drive(backend: &str, n: usize, chaos_for: Duration, limits: bool) -> bool {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(scratch()).expect("temporary folder");
    let log = dir.path().join("executions.log");
    let store_dir = dir.path().join("store");
    let store = runtime
        .block_on(open_at(backend, &store_dir))
        .expect("open the store");
    if limits {
        let limits = QueueLimits {
            limit: Some(6),
            per_key: Some(1),
            ..QueueLimits::default()
        };
        runtime
            .block_on(store.set_queue_limits(omniq_core::DEFAULT_QUEUE, limits))
            .expect("set the queue's limits");
    }
    let ids = runtime.block_on(enqueue(&*store, n, limits));
    eprintln!(
        "{backend}: {n} tasks enqueued in {}; {WORKERS} workers, SIGKILL for {chaos_for:?}{}",
        store_dir.display(),
        if limits { ", limit 6, one per key" } else { "" }
    );

    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|_| spawn_worker(backend, &store_dir, &log))
        .collect();
    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < chaos_for {
        std::thread::sleep(Duration::from_millis(200 + fastrand::u64(0..1_300)));
        let victim = fastrand::usize(0..WORKERS);
        let _ = workers[victim].kill(); // SIGKILL on Unix: no cleanup at all
        let _ = workers[victim].wait();
        kills += 1;
        workers[victim] = spawn_worker(backend, &store_dir, &log);
    }
    eprintln!("{backend}: {kills} workers killed; letting the survivors finish");

    // The survivors take over the dead workers' leases and finish everything.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = runtime.block_on(store.counts());
        match counts {
            Ok(c) if c.pending == 0 && c.running == 0 => break,
            _ if Instant::now() > deadline => {
                eprintln!("{backend}: tasks still pending or running after three minutes: {counts:?}");
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    for mut worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    // Reopen, as a fresh process would, and check every task.
    drop(store);
    let store = runtime
        .block_on(open_at(backend, &store_dir))
        .expect("reopen the store");
    let mut report = runtime.block_on(check(&*store, &ids, &log));
    if limits {
        report.out_of_order = out_of_order(&ids, &log);
    }
    let structure = runtime.block_on(structural_problems(backend, &store_dir));
    let corrupt = report.corrupt + structure;
    eprintln!(
        "{backend}: failed={} executions={} succeeded_more_than_once={} \
         (a handler that succeeded runs again only when its worker was killed before recording it: at-least-once)",
        report.failed, report.executions, report.ran_twice
    );
    let order = match limits {
        true => format!(" out_of_order={}", report.out_of_order),
        false => String::new(),
    };
    println!(
        "{backend}: tasks={n} completed={} lost={} stuck={} corrupt={corrupt}{order}",
        report.completed, report.lost, report.stuck
    );
    if backend == "postgres" {
        drop(store);
        runtime.block_on(omniq_benches::drop_postgres_schema(&store_dir));
    }
    report.lost == 0 && report.stuck == 0 && corrupt == 0 && report.completed == n && report.out_of_order == 0
}

/// The concurrency key of task number `i`, with `--limits`.
fn key_of(i: usize) -> String {
    format!("key-{}", i % KEYS)
}

/// How many starts in the side log came before every earlier task of their
/// key was done (`ids` in enqueue order, which is each key's order).
fn out_of_order(ids: &[TaskId], log: &Path) -> usize {
    let place: HashMap<String, (String, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), (key_of(i), i / KEYS)))
        .collect();
    let mut done: HashMap<String, std::collections::BTreeSet<usize>> = HashMap::new();
    let mut wrong = 0;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(id)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((key, k)) = place.get(id) else { continue };
        let finished = done.entry(key.clone()).or_default();
        match kind {
            "start" if (0..*k).any(|j| !finished.contains(&j)) => {
                let missing: Vec<usize> = (0..*k).filter(|j| !finished.contains(j)).collect();
                eprintln!("task {k} of {key} ({id}) started before {missing:?} were done");
                if wrong == 0 {
                    // The whole story of the first key out of order.
                    for line in text.lines() {
                        let id = line.split_whitespace().nth(1).unwrap_or_default();
                        if let Some((other, j)) = place.get(id).filter(|(other, _)| other == key) {
                            eprintln!("  {other} #{j}: {line}");
                        }
                    }
                }
                wrong += 1;
            }
            "done" => {
                finished.insert(*k);
            }
            _ => {}
        }
    }
    wrong
}

async fn enqueue(store: &dyn Storage, n: usize, keyed: bool) -> Vec<TaskId> {
    let settings = Settings::default();
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let job = json!({"n": i, "sleep_ms": 10 + fastrand::u64(0..140)});
                let task = NewTask::with_payload("chaos.job", &job)
                    .expect("payload")
                    .max_retries(25);
                let task = match keyed {
                    true => task.concurrency_key(key_of(i)),
                    false => task,
                };
                task.into_task(&settings, now).expect("task")
            })
            .collect();
        ids.extend(tasks.iter().map(|t| t.id));
        store.enqueue(tasks).await.expect("enqueue");
    }
    ids
}

#[derive(Default)]
struct Report {
    completed: usize,
    failed: usize,
    lost: usize,
    stuck: usize,
    corrupt: usize,
    ran_twice: usize,
    executions: usize,
    out_of_order: usize,
}

async fn check(store: &dyn Storage, ids: &[TaskId], log: &PathBuf) -> Report {
    let mut report = Report::default();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Successful handler runs per task.
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("start"), Some(_)) => report.executions += 1,
            (Some("done"), Some(id)) => *runs.entry(id).or_default() += 1,
            _ => {}
        }
    }
    for id in ids {
        match store.get(*id).await {
            Ok(task) => match task.status {
                TaskStatus::Completed => report.completed += 1,
                TaskStatus::Failed => report.failed += 1,
                TaskStatus::Pending | TaskStatus::Running => report.stuck += 1,
                TaskStatus::Cancelled => {}
            },
            Err(Error::NotFound { .. }) => report.lost += 1,
            Err(_) => report.corrupt += 1,
        }
        if runs.get(id.to_string().as_str()).copied().unwrap_or(0) > 1 {
            report.ran_twice += 1;
        }
    }
    report
}

/// Problems in the store's own structure: a file store's records and entries,
/// or SQLite's integrity check.
async fn structural_problems(backend: &str, dir: &Path) -> usize {
    match backend {
        "file" => {
            let store = omniq_file::FileStorage::open_path(dir, omniq_core::Durability::Normal)
                .await
                .expect("open");
            let report = store.check(false).await.expect("check");
            for problem in &report.problems {
                eprintln!("file: {problem}");
            }
            report.problems.len()
        }
        "postgres" => {
            // Every row must read back as a task; PostgreSQL keeps its own
            // pages whole.
            let store = omniq_benches::open_at(backend, dir).await.expect("open");
            let damaged = store.damaged().await.expect("read every record");
            for bad in &damaged {
                eprintln!("postgres: task {}: {}", bad.id, bad.reason);
            }
            damaged.len()
        }
        _ => {
            let store =
                omniq_sqlite::SqliteStorage::open_path(dir.join("omniq.db"), omniq_core::Durability::Normal)
                    .await
                    .expect("open");
            let integrity = store.integrity_check().await.expect("integrity check");
            usize::from(integrity != ["ok"])
        }
    }
}
