//! Criterion benchmarks per backend: enqueue (one call per task, and batches),
//! claim + finish, and 10,000 tasks end to end.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use omniq_benches::{drain, enqueue_batch, enqueue_each, open, BACKENDS};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("enqueue");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for backend in BACKENDS {
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("one", backend), |b| {
            let store = rt.block_on(open(backend));
            b.to_async(&rt).iter(|| enqueue_each(&*store.store, 1));
        });
        group.throughput(Throughput::Elements(1000));
        group.bench_function(BenchmarkId::new("batch_1000", backend), |b| {
            let store = rt.block_on(open(backend));
            b.to_async(&rt).iter(|| enqueue_batch(&*store.store, 1000));
        });
    }
    group.finish();
}

fn claim_finish(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("claim_finish");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for backend in BACKENDS {
        group.bench_function(BenchmarkId::new("one_at_a_time", backend), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let store = open(backend).await;
                    enqueue_batch(&*store.store, iters as usize).await;
                    let start = Instant::now();
                    let done = drain(&*store.store, 1, 1).await;
                    assert_eq!(done, iters as usize);
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    const N: usize = 10_000;
    let rt = runtime();
    let mut group = c.benchmark_group("end_to_end_10000");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(N as u64));
    for backend in BACKENDS {
        group.bench_function(BenchmarkId::new("each_then_4_workers", backend), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let store = open(backend).await;
                        let start = Instant::now();
                        enqueue_each(&*store.store, N).await;
                        assert_eq!(drain(&*store.store, 4, 8).await, N);
                        total += start.elapsed();
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, enqueue, claim_finish, end_to_end);
criterion_main!(benches);
