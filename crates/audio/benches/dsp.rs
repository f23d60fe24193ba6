//! In-process figures for the DSP nodes (see BENCHMARKS.md).
//!
//! `cargo bench -p remotemedia-audio --bench dsp`. Throughput is reported in input samples per
//! second; divide by the sample rate for the real-time factor.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use remotemedia_audio::{AudioResample, EnergyVad};
use remotemedia_core::RuntimeData;
use remotemedia_core::testing::NodeHarness;

/// 10 s of a voiced-like tone switching on and off every second, over faint noise.
fn speechy(rate: u32) -> Vec<f32> {
    let mut noise = 0x1234_5678_u32;
    (0..rate * 10)
        .map(|i| {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let t = i as f32 / rate as f32;
            let on = (i / rate) % 2 == 1;
            let tone = if on {
                0.3 * (std::f32::consts::TAU * 150.0 * t).sin()
            } else {
                0.0
            };
            tone + 0.001 * (noise as f32 / u32::MAX as f32 - 0.5)
        })
        .collect()
}

fn energy_vad(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let audio = speechy(16_000);
    let frames: Vec<RuntimeData> = audio
        .chunks(320)
        .map(|f| RuntimeData::audio(f.to_vec(), 16_000, 1))
        .collect();
    let mut g = c.benchmark_group("energy_vad");
    g.throughput(Throughput::Elements(audio.len() as u64));
    g.bench_function("10s_16k_20ms_frames", |b| {
        // The harness checks params against the schema: made outside the timed part.
        b.iter_batched(
            || NodeHarness::new::<EnergyVad>(serde_json::json!({})).unwrap(),
            |mut h| {
                rt.block_on(async {
                    let mut events = 0;
                    for f in &frames {
                        events += h.push(f.clone()).await.unwrap().len();
                    }
                    events
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn resample(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let audio = speechy(48_000);
    let mut g = c.benchmark_group("resample_48k_to_16k_10s");
    g.throughput(Throughput::Elements(audio.len() as u64));
    g.sample_size(20);
    for quality in ["fast", "balanced", "high"] {
        g.bench_function(quality, |b| {
            let p = serde_json::json!({"target_rate": 16000, "quality": quality});
            b.iter_batched(
                || NodeHarness::new::<AudioResample>(p.clone()).unwrap(),
                |mut h| {
                    rt.block_on(async {
                        let mut n = 0;
                        for f in audio.chunks(960) {
                            n += h
                                .push(RuntimeData::audio(f.to_vec(), 48_000, 1))
                                .await
                                .unwrap()
                                .len();
                        }
                        n + h.flush().await.unwrap().len()
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, energy_vad, resample);
criterion_main!(benches);
