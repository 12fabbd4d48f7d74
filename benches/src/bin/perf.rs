//! The performance workload of `cargo xtask perf`: per backend and size, enqueue
//! N no-op tasks (one call each, then again with one batch call), then run one
//! worker pool (concurrency 4, or `--concurrency N`) until all N results are
//! stored.
//!
//! Prints the table, or with `--json` one JSON array of rows
//! `{"backend","n","mode","enqueue_s","process_s","total_s"}` on stdout. The
//! table is followed by three more measurements per backend: single-task latency
//! (enqueue to result stored, idle pool in the same process, p50/p99 over 1,000
//! tasks), the cost of a claim and its finish with 100 and with 100,000
//! tasks pending (median of 200), and the time to enqueue 10,000 tasks one call
//! each from one caller, from 16 callers at once, and from 16 callers beside a
//! pool that runs the tasks.
//!
//! With `--upkeep [--backlog N]` it instead measures what retention and
//! heartbeats cost the 10,000-task processing row (`benches/src/upkeep.rs`).
//!
//! With `--flow [--tasks N]` it instead measures what flow control costs the
//! processing row (`benches/src/flow.rs`): no limits, a queue limit above
//! the pool's concurrency, and 100 concurrency keys one at a time each.
//!
//! With `--floor [--tasks N]` it instead runs, per backend, the one-call-each
//! and batch rows for N tasks (default 10,000) and the backend's floor script
//! (`benches/floor/`) for N tasks, and prints the ratio of each row to the
//! floor step it compares with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omniq_benches::{enqueue_batch, enqueue_each, floor, open, processes, scratch, BACKENDS};
use omniq_core::Storage;
use omniq_worker::{HandlerError, Pool, Registry, Signals, WorkerPool};
use serde_json::json;

const SIZES: [usize; 3] = [100, 1_000, 10_000];

struct Row {
    backend: &'static str,
    n: usize,
    mode: &'static str,
    enqueue: Duration,
    process: Duration,
    /// Tasks per claim call the pool reached.
    grouping: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, backend, dir, concurrency] = &args[..] {
        if mode == "worker" {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let concurrency = concurrency.parse().expect("a concurrency");
            runtime.block_on(processes::child_worker(
                backend,
                std::path::Path::new(dir),
                concurrency,
            ));
            return;
        }
    }
    let json = args.iter().any(|a| a == "--json");
    let backends: Vec<&'static str> = match args.iter().position(|a| a == "--backend") {
        // PostgreSQL needs a server, so it runs only when asked for.
        Some(i) => BACKENDS
            .iter()
            .copied()
            .chain(["postgres"])
            .filter(|b| Some(*b) == args.get(i + 1).map(String::as_str))
            .collect(),
        None => BACKENDS.to_vec(),
    };
    let concurrency = match args.iter().position(|a| a == "--concurrency") {
        Some(i) => match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("--concurrency takes a number above 0");
                std::process::exit(2);
            }
        },
        None => 4,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--upkeep") {
        let backlog = match args.iter().position(|a| a == "--backlog") {
            Some(i) => args
                .get(i + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| {
                    eprintln!("--backlog takes a number of tasks");
                    std::process::exit(2);
                }),
            None => 100_000,
        };
        runtime.block_on(upkeep_cost(&backends, concurrency, backlog));
        return;
    }
    if args.iter().any(|a| a == "--flow") {
        let n = match args.iter().position(|a| a == "--tasks") {
            Some(i) => match args.get(i + 1).and_then(|n| n.parse().ok()).filter(|n| *n > 0) {
                Some(n) => n,
                None => {
                    eprintln!("--tasks takes a number above 0");
                    std::process::exit(2);
                }
            },
            None => 10_000,
        };
        runtime.block_on(flow_cost(&backends, n, concurrency));
        return;
    }
    if args.iter().any(|a| a == "--floor") {
        let n = match args.iter().position(|a| a == "--tasks") {
            Some(i) => match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => n,
                _ => {
                    eprintln!("--tasks takes a number above 0");
                    std::process::exit(2);
                }
            },
            None => 10_000,
        };
        let ok = runtime.block_on(against_floor(&backends, n, concurrency));
        std::process::exit(if ok { 0 } else { 1 });
    }
    eprintln!(
        "OmniQ perf: stores in {}, durability normal, worker pool concurrency {concurrency}, {} cores",
        scratch().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rows = Vec::new();
    for backend in backends {
        for n in SIZES {
            for mode in ["each", "batch"] {
                let row = runtime.block_on(measure(backend, n, mode, concurrency));
                eprintln!(
                    "  {backend:6} n={n:<6} {mode:5} enqueue {:.3}s process {:.3}s",
                    row.enqueue.as_secs_f64(),
                    row.process.as_secs_f64()
                );
                rows.push(row);
            }
        }
    }
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend,
                    "n": r.n,
                    "mode": r.mode,
                    "enqueue_s": r.enqueue.as_secs_f64(),
                    "process_s": r.process.as_secs_f64(),
                    "total_s": (r.enqueue + r.process).as_secs_f64(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print_table(&rows);
        println!();
        println!("| Backend | Latency p50 (ms) | Latency p99 (ms) | Claim+finish, 100 pending of mixed priorities and etas (µs) | Claim+finish, 100,000 pending (µs) |");
        println!("|---------|-----------------:|-----------------:|-------------------------------:|-----------------------------------:|");
        let backends: Vec<&str> = rows
            .iter()
            .map(|r| r.backend)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for backend in &backends {
            let (p50, p99) = runtime.block_on(latency(backend, 1_000));
            let (small, large) = runtime.block_on(claim_costs(backend));
            eprintln!("  {backend:6} latency p50 {p50:.3} ms p99 {p99:.3} ms; claim {small:.0} µs at 100, {large:.0} µs at 100,000");
            println!("| {backend} | {p50:.3} | {p99:.3} | {small:.0} | {large:.0} |");
        }
        println!();
        println!("| Backend | Enqueue 10,000, one call each from 1 caller (s) | from {CALLERS} concurrent callers (s) | from {CALLERS} callers beside a pool of 4, until all ran (s) |");
        println!("|---------|------------------------------------------------:|-----------------------------------:|----------------------------------------------------------:|");
        for backend in &backends {
            let one = runtime.block_on(concurrent_enqueue(backend, 10_000, 1, false));
            let many = runtime.block_on(concurrent_enqueue(backend, 10_000, CALLERS, false));
            let beside = runtime.block_on(concurrent_enqueue(backend, 10_000, CALLERS, true));
            eprintln!(
                "  {backend:6} enqueue 10,000 one call each: {one:.3} s from 1 caller, {many:.3} s from {CALLERS}, \
                 {beside:.3} s from {CALLERS} beside a pool"
            );
            println!("| {backend} | {one:.3} | {many:.3} | {beside:.3} |");
        }
        // Workers in other processes, as on other hosts: what PostgreSQL is
        // for. (The embedded backends find other processes' work by polling.)
        if backends.contains(&"postgres") {
            println!();
            println!("| Backend | Batch of 10,000 run by 4 worker processes of 4 (s) | Latency to a worker in another process, p50 (ms) | p99 (ms) |");
            println!("|---------|--------------------------------------------------:|-------------------------------------------------:|---------:|");
            let four = runtime.block_on(processes::several_processes("postgres", 10_000, 4));
            let (p50, p99) = runtime.block_on(processes::cross_process_latency("postgres", 500));
            eprintln!("  postgres 4 worker processes: {four:.3} s; latency across processes p50 {p50:.3} ms p99 {p99:.3} ms");
            println!("| postgres | {four:.3} | {p50:.3} | {p99:.3} |");
        }
    }
}

/// Starts a pool of `concurrency` workers running the no-op handler, woken by
/// `signals`.
fn noop_pool(storage: Arc<dyn Storage>, concurrency: usize, signals: &Arc<Signals>) -> Pool {
    let mut registry = Registry::new();
    registry.register("noop", |_: u64| async { Ok::<_, HandlerError>(()) });
    WorkerPool::new(storage, registry)
        .concurrency(concurrency)
        .signals(signals.clone())
        .start()
        .expect("the pool's configuration is valid")
}

/// Waits until `pool` has run `n` tasks and returns the time since `start`;
/// then shuts the pool down, untimed, and checks that all `n` results are
/// stored.
async fn finish_run(
    pool: Pool,
    signals: &Signals,
    storage: &dyn Storage,
    n: usize,
    start: Instant,
) -> (Duration, f64) {
    loop {
        let finished = signals.finished();
        if pool.stats().succeeded as usize >= n {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), finished).await;
    }
    let took = start.elapsed();
    let stats = pool.stats();
    pool.shutdown(Duration::from_secs(10)).await;
    let completed = storage.counts().await.expect("counts").completed as usize;
    assert_eq!(completed, n, "every result is stored");
    (took, stats.claimed as f64 / stats.claims.max(1) as f64)
}

/// How many callers enqueue at once in the concurrent-enqueue measurement, as
/// the request handlers of a busy web server would.
const CALLERS: usize = 16;

/// Seconds to enqueue `n` tasks one call each, spread over `callers` tasks of
/// the runtime calling at the same time; with `pool`, seconds until a pool of
/// 4 started beside them has also run every task, as in a program that both
/// enqueues and works.
async fn concurrent_enqueue(backend: &'static str, n: usize, callers: usize, pool: bool) -> f64 {
    let store = open(backend).await;
    let signals = Signals::new();
    let pool = pool.then(|| noop_pool(store.store.clone(), 4, &signals));
    let start = Instant::now();
    let calls = (0..callers).map(|c| {
        let storage = store.store.clone();
        let signals = signals.clone();
        let mine = (c..n).step_by(callers).collect::<Vec<_>>();
        tokio::spawn(async move {
            for i in mine {
                storage
                    .enqueue(vec![omniq_benches::task(i)])
                    .await
                    .expect("enqueue");
                signals.task_enqueued();
            }
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.expect("an enqueuing task panicked");
    }
    let Some(pool) = pool else {
        let took = start.elapsed().as_secs_f64();
        let pending = store.store.counts().await.expect("counts").pending as usize;
        assert_eq!(pending, n, "every task is stored");
        return took;
    };
    finish_run(pool, &signals, &*store.store, n, start)
        .await
        .0
        .as_secs_f64()
}

/// Enqueue-to-result latency of `n` tasks one after another, with an idle pool
/// woken by the same process's signals: (p50, p99) in milliseconds.
async fn latency(backend: &'static str, n: usize) -> (f64, f64) {
    let store = open(backend).await;
    let storage: Arc<dyn Storage> = store.store.clone();
    let signals = Signals::new();
    let pool = noop_pool(storage.clone(), 4, &signals);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let task = omniq_benches::task(i);
        let id = task.id;
        storage.enqueue(vec![task]).await.expect("enqueue");
        signals.task_enqueued();
        loop {
            let finished = signals.finished();
            if storage.get(id).await.expect("get").status.is_finished() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), finished).await;
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    pool.shutdown(Duration::from_secs(10)).await;
    samples.sort_by(f64::total_cmp);
    (samples[n / 2], samples[n * 99 / 100])
}

/// The cost of one claim (of one task) and its finish with 100 and with
/// 100,000 tasks waiting, in microseconds: the median of 200 pairs each, after
/// 20 to warm up. The waiting tasks have priorities from -2 to 2, and half of
/// them (of every priority) an eta an hour away, so a claim must find the due
/// tasks of the highest priority past the ones waiting. Each pair is timed
/// alone and followed, untimed, by an enqueue of a due task that holds the
/// pending count. The two stores take turns, so both see the same moments of
/// a noisy machine, and the median keeps its spikes out.
async fn claim_costs(backend: &'static str) -> (f64, f64) {
    const WARM_UP: usize = 20;
    const SAMPLES: usize = 200;
    let mut stores = Vec::new();
    for pending in [100, 100_000] {
        let store = open(backend).await;
        for start in (0..pending).step_by(5_000) {
            let chunk = (start..(start + 5_000).min(pending))
                .map(|i| omniq_benches::mixed_task(i, (i / 5) % 2 == 0))
                .collect();
            store.store.enqueue(chunk).await.expect("enqueue");
        }
        stores.push(store);
    }
    let mut samples = [Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES)];
    for i in 0..WARM_UP + SAMPLES {
        for (store, samples) in stores.iter().zip(&mut samples) {
            let storage = &*store.store;
            let start = Instant::now();
            omniq_benches::drain_n(storage, 1).await;
            let took = start.elapsed();
            storage
                .enqueue(vec![omniq_benches::mixed_task(i, false)])
                .await
                .expect("enqueue");
            if i >= WARM_UP {
                samples.push(took.as_secs_f64() * 1e6);
            }
        }
    }
    let [small, large] = samples.map(|mut samples| {
        samples.sort_by(f64::total_cmp);
        samples[SAMPLES / 2]
    });
    (small, large)
}

async fn measure(backend: &'static str, n: usize, mode: &'static str, concurrency: usize) -> Row {
    let store = open(backend).await;
    let storage: Arc<dyn Storage> = store.store.clone();
    let start = Instant::now();
    match mode {
        "each" => enqueue_each(&*storage, n).await,
        _ => enqueue_batch(&*storage, n).await,
    }
    let enqueue = start.elapsed();

    let signals = Signals::new();
    let start = Instant::now();
    let pool = noop_pool(storage.clone(), concurrency, &signals);
    let (process, grouping) = finish_run(pool, &signals, &*storage, n, start).await;
    Row {
        backend,
        n,
        mode,
        enqueue,
        process,
        grouping,
    }
}

fn print_table(rows: &[Row]) {
    println!("| Backend | Tasks | Enqueue | Enqueue (s) | Process (s) | Total (s) | Tasks/s |");
    println!("|---------|------:|---------|------------:|------------:|----------:|--------:|");
    for r in rows {
        let total = (r.enqueue + r.process).as_secs_f64();
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
            r.backend,
            r.n,
            if r.mode == "each" {
                "one call each"
            } else {
                "one batch"
            },
            r.enqueue.as_secs_f64(),
            r.process.as_secs_f64(),
            total,
            r.n as f64 / total
        );
    }
}

/// `--upkeep`: per backend, the 10,000-task processing row with upkeep off,
/// on, and on beside a backlog to prune, five runs of each; prints
/// the median of each and its ratio to the run with upkeep off.
async fn upkeep_cost(backends: &[&'static str], concurrency: usize, backlog: usize) {
    use omniq_benches::upkeep::{process_row, Upkeep};
    const N: usize = 10_000;
    const RUNS: usize = 5;
    println!(
        "| Backend | Process {N}, upkeep off (s) | upkeep on (s) | ratio | beside {backlog} old tasks pruned (s) | ratio | old tasks left at the end |"
    );
    println!("|---------|------:|------:|------:|------:|------:|------:|");
    for &backend in backends {
        // Upkeep off and on take turns, each going first every other run;
        // the runs with a backlog come after them all, since the server's
        // cleanup after a big delete would slow whichever run came next.
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut left = 0;
        let mut plan: Vec<(usize, Upkeep)> = Vec::new();
        for run in 0..RUNS {
            match run % 2 {
                0 => plan.extend([(0, Upkeep::Off), (1, Upkeep::On)]),
                _ => plan.extend([(1, Upkeep::On), (0, Upkeep::Off)]),
            }
        }
        plan.extend((0..RUNS).map(|_| (2, Upkeep::Backlog(backlog))));
        for (i, mode) in plan {
            let (took, unpruned) = process_row(backend, N, concurrency, mode).await;
            eprintln!("  {backend:6} {mode:?}: {took:.3} s, {unpruned} old left");
            times[i].push(took);
            if i == 2 {
                left = unpruned;
            }
        }
        let median = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        };
        let [off, on, pruning] = [0, 1, 2].map(|i| median(&mut times[i]));
        println!(
            "| {backend} | {off:.3} | {on:.3} | {:.2}x | {pruning:.3} | {:.2}x | {left} |",
            on / off,
            pruning / off
        );
    }
}

/// `--flow`: per backend, the `n`-task processing row without limits, with
/// a queue limit above the pool's concurrency, and over 100 keys one at a
/// time each, five runs of each in turns; the median of each and its ratio
/// to the row without limits.
async fn flow_cost(backends: &[&'static str], n: usize, concurrency: usize) {
    use omniq_benches::flow::{process_row, Flow};
    const RUNS: usize = 5;
    println!(
        "| Backend | Process {n}, no limits (s) | limit {} (s) | ratio | {} keys, 1 per key (s) | ratio |",
        2 * concurrency,
        omniq_benches::flow::KEYS
    );
    println!("|---------|------:|------:|------:|------:|------:|");
    for &backend in backends {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for run in 0..RUNS {
            let mut order = [(0, Flow::Off), (1, Flow::Limit), (2, Flow::Keys)];
            order.rotate_left(run % 3);
            for (i, flow) in order {
                let (took, grouping) = process_row(backend, n, concurrency, flow).await;
                eprintln!("  {backend:6} {flow:?}: {took:.3} s, {grouping:.2} tasks a claim");
                times[i].push(took);
            }
        }
        let median = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        };
        let [off, limit, keys] = [0, 1, 2].map(|i| median(&mut times[i]));
        println!(
            "| {backend} | {off:.3} | {limit:.3} | {:.2}x | {keys:.3} | {:.2}x |",
            limit / off,
            keys / off
        );
    }
}

/// `--floor`: per backend, OmniQ's rows for `n` tasks and its floor script's
/// steps for `n` tasks, in one run, then the ratio of each row to its step.
/// False when a floor script fails.
async fn against_floor(backends: &[&'static str], n: usize, concurrency: usize) -> bool {
    let mut ratios = Vec::new();
    let mut ok = true;
    let mut notes = Vec::new();
    for &backend in backends {
        let each = measure(backend, n, "each", concurrency).await;
        let batch = measure(backend, n, "batch", concurrency).await;
        let measured = floor::Measured {
            enqueue_each: each.enqueue.as_secs_f64(),
            enqueue_batch: batch.enqueue.as_secs_f64(),
            process: each.process.as_secs_f64(),
            grouping: each.grouping,
        };
        eprintln!("  {backend:6} n={n}: {measured:?}");
        match floor::run(backend, n) {
            Ok(steps) => {
                eprintln!("  {backend:6} floor: {:?}", steps.steps);
                if let (Some(one), Some(five)) = (
                    steps.steps.get("process_4"),
                    steps.steps.get("process_4_levels_5"),
                ) {
                    notes.push(format!(
                        "{backend} floor, 4+4 per transaction: {one:.3} s with all tasks at one priority, \
                         {five:.3} s over five priority levels ({:.2}x)",
                        five / one
                    ));
                }
                ratios.extend(floor::ratios(backend, &measured, &steps));
            }
            Err(error) => {
                eprintln!("{error}");
                ok = false;
            }
        }
    }
    println!(
        "{n} no-op tasks, worker pool concurrency {concurrency}, OmniQ and each floor script in one run"
    );
    println!();
    println!("| Row | OmniQ (s) | Floor step | Floor (s) | Ratio |");
    println!("|-----|----------:|------------|----------:|------:|");
    for r in &ratios {
        println!(
            "| {} | {:.3} | {} | {:.3} | {:.2}x |",
            r.row,
            r.omniq,
            r.step,
            r.floor,
            r.ratio()
        );
    }
    for note in notes {
        println!();
        println!("{note}");
    }
    ok
}
