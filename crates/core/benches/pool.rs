//! Model pool figures for BENCHMARKS.md: what a session pays to get an already loaded model
//! (blocking and async), and to lease and give back an instance of a bounded model, alone and
//! with four threads contending for two instances.
//!
//! Run: `cargo bench -p remotemedia-core --bench pool`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use remotemedia_core::{LoadOptions, ModelKey, ModelPool};

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// A model-sized value, so a hit is not optimised into nothing.
fn weights() -> Result<Vec<f32>, Never> {
    Ok(vec![0.5; 1 << 16])
}

fn warm_get(c: &mut Criterion) {
    let pool = ModelPool::default();
    let key = ModelKey::new("models/silero-vad/silero_vad.onnx", "threads=1");
    let _warm = pool
        .get_or_load_blocking(key.clone(), LoadOptions::shared(), weights)
        .unwrap();
    let mut g = c.benchmark_group("pool_warm_get");
    g.bench_function("blocking", |b| {
        b.iter(|| {
            let h = pool
                .get_or_load_blocking(key.clone(), LoadOptions::shared(), weights)
                .unwrap();
            black_box(h.shared().map(|w| w.len()))
        })
    });
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("async", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let h = pool
                        .get_or_load(key.clone(), LoadOptions::shared(), weights)
                        .await
                        .unwrap();
                    black_box(h.shared().map(|w| w.len()));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn acquire_release(c: &mut Criterion) {
    let pool = ModelPool::default();
    let handle = pool
        .get_or_load_blocking(
            ModelKey::new("tts.onnx", "threads=1"),
            LoadOptions::bounded(2),
            weights,
        )
        .unwrap();
    // Both instances loaded up front, so only leasing is measured.
    drop((
        handle.acquire_blocking(Duration::ZERO).unwrap(),
        handle.acquire_blocking(Duration::ZERO).unwrap(),
    ));
    let mut g = c.benchmark_group("pool_acquire_release");
    g.bench_function("blocking", |b| {
        b.iter(|| {
            let lease = handle.acquire_blocking(Duration::from_secs(1)).unwrap();
            black_box(lease.len())
        })
    });
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("async", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let lease = handle.acquire(Duration::from_secs(1)).await.unwrap();
                    black_box(lease.len());
                }
                start.elapsed()
            })
        })
    });
    // Four threads, two instances: wall time per lease when half the requests must wait.
    g.bench_function("contended_4_threads_2_instances", |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(4);
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let handle = handle.clone();
                    s.spawn(move || {
                        for _ in 0..per_thread {
                            let lease = handle.acquire_blocking(Duration::from_secs(5)).unwrap();
                            black_box(lease.len());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
    let m = pool.snapshot();
    eprintln!(
        "pool after bench: loads {} instances {} waits {} timeouts {}",
        m.totals.loads, m.instances, m.totals.waits, m.totals.timeouts
    );
}

/// The first-load path, for scale: the model is unloaded after each request, so every request
/// loads it (a 256 KiB allocation stands in for the loader).
fn cold_load(c: &mut Criterion) {
    let pool = ModelPool::default();
    let key = ModelKey::new("m", "");
    c.bench_function("pool_cold_load_and_unload", |b| {
        b.iter(|| {
            let h = pool
                .get_or_load_blocking(key.clone(), LoadOptions::shared(), weights)
                .unwrap();
            black_box(h.shared().map(|w| w.len()));
            drop(h);
            pool.unload(&key)
        })
    });
}

criterion_group!(benches, warm_get, acquire_release, cold_load);
criterion_main!(benches);
