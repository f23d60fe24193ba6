//! Session figures for BENCHMARKS.md on warm, preloaded models: how long opening a session of
//! `examples/speech_segments.yaml` (FormatConverter, AudioResample, SileroVAD,
//! SpeechSegmenter) takes until it accepts input, and how much resident memory each extra
//! session adds, idle and after one second of audio went through it. For scale it also reports
//! what loading the model itself costs, which is what every session would pay without the pool.
//!
//! Memory is the process's resident set (`VmRSS` in `/proc/self/status`) before and after
//! opening the sessions, divided by their number; Linux only. Needs `./scripts/setup-models.sh`.
//!
//! Run: `cargo bench -p remotemedia-speech --bench sessions` (`SESSIONS=500` for more)

use std::time::{Duration, Instant};

use remotemedia_core::{RuntimeBuilder, RuntimeData, Session};
use remotemedia_speech::SileroVad;
use remotemedia_speech::models::{self, model_key};

/// Resident memory of this process in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let sessions: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = SileroVad::default_model(16_000);
    if let Err(e) = models::require_file(&model) {
        panic!("{e}");
    }
    // ONNX Runtime itself first, so the model's own cost is measured alone.
    models::environment().unwrap_or_else(|e| panic!("{e}"));
    let before_load = rss();
    let t = Instant::now();
    models::preload(&model, 1).unwrap_or_else(|e| panic!("{e}"));
    let load_time = t.elapsed();
    let model_rss = rss().saturating_sub(before_load);

    let runtime = RuntimeBuilder::new()
        .nodes(remotemedia_audio::register)
        .nodes(remotemedia_speech::register)
        .build()
        .unwrap();
    let path = format!(
        "{}/../../examples/speech_segments.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let pipeline = runtime.load(&text, &path).unwrap_or_else(|e| panic!("{e}"));

    tokio.block_on(async {
        // One session first, so one-off costs (allocator arenas, first use of each node type)
        // are not charged to the sessions measured.
        let warm = runtime.open(&pipeline).await.unwrap();
        warm.close().await.unwrap();

        let before = rss();
        let mut open_times = Vec::with_capacity(sessions);
        let mut live: Vec<Session> = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let t = Instant::now();
            let s = runtime.open(&pipeline).await.unwrap();
            open_times.push(t.elapsed());
            live.push(s);
        }
        let idle = rss();
        // One second of quiet 16 kHz audio in 20 ms frames through every session.
        for s in &live {
            for _ in 0..50 {
                s.send(RuntimeData::audio(vec![1e-4; 320], 16_000, 1))
                    .await
                    .unwrap();
            }
        }
        // Let every session process what it was sent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = rss();
        let pool = runtime.metrics().snapshot().pools;
        let m = &pool["models"].models[&model_key(&model, 1).to_string()];

        open_times.sort();
        let mean = open_times.iter().sum::<Duration>() / sessions as u32;
        let per_idle = idle.saturating_sub(before) as f64 / sessions as f64;
        let per_busy = busy.saturating_sub(before) as f64 / sessions as f64;
        println!(
            "sessions of examples/speech_segments.yaml on a preloaded Silero model: {sessions}"
        );
        println!(
            "open to ready: mean {:.3} ms, p50 {:.3} ms, p95 {:.3} ms, max {:.3} ms",
            mean.as_secs_f64() * 1e3,
            quantile(&open_times, 0.50).as_secs_f64() * 1e3,
            quantile(&open_times, 0.95).as_secs_f64() * 1e3,
            quantile(&open_times, 1.0).as_secs_f64() * 1e3,
        );
        println!(
            "memory per extra session: {:.3} MiB idle, {:.3} MiB after 1 s of audio",
            mib(per_idle),
            mib(per_busy)
        );
        println!(
            "the model itself: load {:.1} ms, {:.1} MiB resident (paid once per process)",
            load_time.as_secs_f64() * 1e3,
            mib(model_rss as f64)
        );
        println!(
            "pool: loads {} hits {} waits {} memory estimate {:.1} MiB",
            m.counters.loads,
            m.counters.hits,
            m.counters.waits,
            mib(m.memory_bytes as f64)
        );
        assert_eq!(m.counters.loads, 1, "the model was loaded once");
        for s in live {
            s.cancel().await;
        }
    });
}
