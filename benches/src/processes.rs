//! Measurements with workers in other processes, as on other hosts: the
//! `perf worker` child that runs a pool of no-op tasks on a store, the time
//! four such processes take to run a batch, and the latency of one task from
//! its enqueue here to its result recorded there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq_core::Storage;
use omniq_worker::{HandlerError, Registry, WorkerPool};
use time::OffsetDateTime;

use crate::{enqueue_batch, open, open_at, task};

/// The child's side: a pool of `concurrency` no-op workers on the store of
/// `backend` at `dir`, which says `ready` on stdout once started and runs
/// until its stdin closes (the parent's end of the measurement).
pub async fn child_worker(backend: &str, dir: &Path, concurrency: usize) {
    let storage = open_at(backend, dir).await.expect("the child opens the store");
    let mut registry = Registry::new();
    registry.register("noop", |_: u64| async { Ok::<_, HandlerError>(()) });
    let pool = WorkerPool::new(storage, registry)
        .concurrency(concurrency)
        .start()
        .expect("the pool's configuration is valid");
    println!("ready");
    // Stdin closing is the signal to stop.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    pool.shutdown(Duration::from_secs(10)).await;
}

/// A child process running [`child_worker`]; killed when dropped.
struct Worker(Child);

impl Worker {
    /// Starts one and waits until its pool runs.
    fn start(backend: &str, dir: &Path, concurrency: usize) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["worker", backend])
            .arg(dir)
            .arg(concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a worker process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the worker's first line");
        assert_eq!(line.trim(), "ready", "the worker process did not start");
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin stops it; the kill is for one that hangs.
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seconds from a batch enqueue of `n` tasks until `processes` worker
/// processes of 4 workers each, started and idle beforehand, have run them all.
pub async fn several_processes(backend: &str, n: usize, processes: usize) -> f64 {
    let store = open(backend).await;
    let workers: Vec<Worker> = (0..processes)
        .map(|_| Worker::start(backend, store.dir.path(), 4))
        .collect();
    let start = Instant::now();
    enqueue_batch(&*store.store, n).await;
    loop {
        if store.store.counts().await.expect("counts").completed as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed().as_secs_f64();
    drop(workers);
    took
}

/// Milliseconds from the enqueue of one task here to its result recorded by an
/// idle worker in another process, as that worker's store-set clock writes it
/// (`finished_at`), so the checking here adds nothing: (p50, p99) over `n`
/// tasks, one at a time.
pub async fn cross_process_latency(backend: &str, n: usize) -> (f64, f64) {
    let store = open(backend).await;
    let worker = Worker::start(backend, store.dir.path(), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let storage: Arc<dyn Storage> = store.store.clone();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let task = task(i);
        let id = task.id;
        let start = OffsetDateTime::now_utc();
        storage.enqueue(vec![task]).await.expect("enqueue");
        let finished_at = loop {
            let task = storage.get(id).await.expect("get");
            if let Some(at) = task.finished_at.filter(|_| task.status.is_finished()) {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push((finished_at - start).as_seconds_f64() * 1e3);
    }
    drop(worker);
    samples.sort_by(f64::total_cmp);
    (samples[n / 2], samples[n * 99 / 100])
}
