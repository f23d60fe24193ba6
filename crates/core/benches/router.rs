//! Router figures for BENCHMARKS.md: per-hop latency and throughput of a 5-node pass-through
//! chain fed 20 ms 16 kHz mono frames, on a single-threaded runtime (one core), with metrics
//! off and on (their difference is the metrics overhead per node execution).
//!
//! Run: `cargo bench -p remotemedia-core --bench router`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use remotemedia_core::{Pipeline, Runtime, RuntimeBuilder, RuntimeData};

const HOPS: usize = 5;

fn chain(rt: &Runtime, metrics: bool) -> Arc<Pipeline> {
    let mut yaml = String::from("version: v1\nnodes:\n");
    for i in 0..HOPS {
        yaml.push_str(&format!("  - {{id: n{i}, type: PassThrough}}\n"));
    }
    yaml.push_str("connections:\n");
    for i in 1..HOPS {
        yaml.push_str(&format!("  - {{from: n{}, to: n{i}}}\n", i - 1));
    }
    yaml.push_str(&format!(
        "config: {{metrics: {metrics}, retry: {{max_retries: 0}}, edges: {{capacity: 256}}}}\n"
    ));
    rt.load(&yaml, "chain.yaml").unwrap()
}

fn frame() -> RuntimeData {
    RuntimeData::audio(vec![0.1f32; 320], 16_000, 1)
}

fn one_core() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pipelined: frames stream in while outputs are read, as in a live session.
fn throughput(c: &mut Criterion) {
    let tokio = one_core();
    let rt = RuntimeBuilder::new().build().unwrap();
    let mut g = c.benchmark_group("chain5_throughput");
    g.throughput(Throughput::Elements(1));
    for metrics in [false, true] {
        let p = chain(&rt, metrics);
        let name = if metrics { "metrics_on" } else { "metrics_off" };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                tokio.block_on(async {
                    let (tx, mut rx) = rt.open(&p).await.unwrap().split();
                    let f = frame();
                    let start = Instant::now();
                    let feed = async move {
                        for _ in 0..iters {
                            tx.send(f.clone()).await.unwrap();
                        }
                    };
                    let drain = async {
                        for _ in 0..iters {
                            rx.recv().await.unwrap().unwrap();
                        }
                    };
                    tokio::join!(feed, drain);
                    let elapsed = start.elapsed();
                    rx.finish().await.unwrap();
                    elapsed
                })
            })
        });
    }
    g.finish();
}

/// One frame at a time through the whole chain; reported per hop.
fn latency(c: &mut Criterion) {
    let tokio = one_core();
    let rt = RuntimeBuilder::new().build().unwrap();
    let mut g = c.benchmark_group("chain5_round_trip_per_hop");
    for metrics in [false, true] {
        let p = chain(&rt, metrics);
        let name = if metrics { "metrics_on" } else { "metrics_off" };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                tokio.block_on(async {
                    let mut s = rt.open(&p).await.unwrap();
                    let f = frame();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        s.send(f.clone()).await.unwrap();
                        s.recv().await.unwrap().unwrap();
                        total += t.elapsed();
                    }
                    s.close().await.unwrap();
                    total / HOPS as u32
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = throughput, latency
}
criterion_main!(benches);
