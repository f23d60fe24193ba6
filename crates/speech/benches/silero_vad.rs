//! Silero VAD figures for BENCHMARKS.md: cost per 32 ms frame (512 samples at 16 kHz) of
//!
//! - `model_window`: one model run with context and state handling ([`SileroVad::probability`]),
//!   the part the Python package's `OnnxWrapper.__call__` does;
//! - `node_frame/multi_thread`: the whole `SileroVAD` node per frame (validation, pass-through,
//!   windowing, decisions, events) on a multi-thread runtime, where inference runs in place
//!   (`block_in_place`);
//! - `node_frame/current_thread`: the same on a current-thread runtime, where inference is
//!   handed to the blocking pool (`spawn_blocking`), to show what that hand-off costs;
//! - `streams_together/16`: wall time per window with 16 streams (threads) scoring windows
//!   at once on 2 cores, so their windows meet and run in batches.
//!
//! One intra-op thread, real speech (the `beckett.wav` recording) so the model sees both speech
//! and silence. Needs `./scripts/setup-models.sh`.
//!
//! Run: `cargo bench -p remotemedia-speech --bench silero_vad`
//! The side-by-side comparison with the Python package is `bench/silero_vad.sh`.

mod common;

use std::time::Duration;

use common::recording;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use remotemedia_core::RuntimeData;
use remotemedia_core::testing::NodeHarness;
use remotemedia_speech::{SileroVADNode, SileroVad};

const WINDOW: usize = 512;

fn frames(audio: &[f32]) -> Vec<RuntimeData> {
    audio
        .chunks_exact(WINDOW)
        .map(|c| RuntimeData::audio(c.to_vec(), 16_000, 1))
        .collect()
}

fn model_window(c: &mut Criterion) {
    let audio = recording();
    let model = SileroVad::default_model(16_000);
    let mut vad = SileroVad::new(&model, 16_000, 1).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<&[f32]> = audio.chunks_exact(WINDOW).collect();
    let mut i = 0;
    let mut g = c.benchmark_group("silero_vad");
    g.throughput(Throughput::Elements(1));
    g.bench_function("model_window", |b| {
        b.iter(|| {
            let p = vad.probability(windows[i % windows.len()]).unwrap();
            i += 1;
            p
        })
    });
    g.finish();
}

fn streams_together(c: &mut Criterion) {
    const STREAMS: usize = 16;
    let audio = recording();
    let model = SileroVad::default_model(16_000);
    let mut vads: Vec<SileroVad> = (0..STREAMS)
        .map(|_| SileroVad::new(&model, 16_000, 1).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let windows: Vec<&[f32]> = audio.chunks_exact(WINDOW).collect();
    let mut g = c.benchmark_group("silero_vad/streams_together");
    g.throughput(Throughput::Elements(1));
    g.bench_function(STREAMS.to_string(), |b| {
        b.iter_custom(|iters| {
            let per_stream = (iters as usize).div_ceil(STREAMS);
            let start = std::time::Instant::now();
            std::thread::scope(|scope| {
                for (k, vad) in vads.iter_mut().enumerate() {
                    let windows = &windows;
                    scope.spawn(move || {
                        for i in 0..per_stream {
                            vad.probability(windows[(i + k * 7) % windows.len()])
                                .unwrap();
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
    let (batches, rows) = vads[0].batches();
    if batches > 0 {
        println!(
            "batches of several streams: {batches}, {:.1} windows each",
            rows as f64 / batches as f64
        );
    }
}

fn node_frame(c: &mut Criterion) {
    let frames = frames(&recording());
    let mut g = c.benchmark_group("silero_vad/node_frame");
    g.throughput(Throughput::Elements(1));
    for (name, rt) in [
        (
            "multi_thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
    ] {
        let mut h = NodeHarness::new::<SileroVADNode>(serde_json::json!({}))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = rt
                    .block_on(h.push(frames[i % frames.len()].clone()))
                    .unwrap();
                i += 1;
                out
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = model_window, streams_together, node_frame
}
criterion_main!(benches);
