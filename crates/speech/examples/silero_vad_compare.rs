//! The Rust half of `bench/silero_vad.sh`: runs Silero VAD over a 16 kHz mono WAV file one
//! 512-sample window (32 ms) at a time, timing each window, and writes the timings, every
//! window's speech probability and the speech segments as JSON for `bench/silero_vad.py` to
//! compare with the Python package on the same samples.
//!
//! `cargo run --release -p remotemedia-speech --example silero_vad_compare -- IN.wav OUT.json [PASSES]`
//!
//! Three figures per window: `model` is one model run with context and state handling
//! (`SileroVad::probability`, what the package's `OnnxWrapper.__call__` does) on the node's
//! default model (the 16 kHz export); `model_same_file` the same on `silero_vad.onnx`, the file
//! the package loads; `node` is the whole `SileroVAD` node fed one 32 ms frame (pass-through,
//! decisions, events) on a multi-thread runtime.

use std::time::{Duration, Instant};

use remotemedia_audio::VadEvent;
use remotemedia_core::RuntimeData;
use remotemedia_core::testing::NodeHarness;
use remotemedia_speech::{SileroVADNode, SileroVad};
use serde_json::json;

const WINDOW: usize = 512;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        return Err("usage: silero_vad_compare IN.wav OUT.json [PASSES]".into());
    };
    let passes: usize = args.get(3).map_or(Ok(3), |p| p.parse())?;
    let mut reader = hound::WavReader::open(input)?;
    let spec = reader.spec();
    if spec.sample_rate != 16_000 || spec.channels != 1 {
        return Err(format!("{input}: need 16 kHz mono, got {spec:?}").into());
    }
    let audio: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .samples::<i16>()
            .map(|s| s.map(|v| f32::from(v) / 32768.0))
            .collect::<Result<_, _>>()?,
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
    };
    let windows: Vec<&[f32]> = audio.chunks_exact(WINDOW).collect();

    // Model alone: every window timed on its own, state carried, reset between passes.
    let model_run = |path: std::path::PathBuf| -> Result<_, Box<dyn std::error::Error>> {
        let mut vad = SileroVad::new(&path, 16_000, 1)?;
        let mut times = Vec::new();
        let mut probs = Vec::new();
        for pass in 0..passes {
            vad.reset();
            for w in &windows {
                let t = Instant::now();
                let p = vad.probability(w)?;
                times.push(t.elapsed());
                if pass == 0 {
                    probs.push(p);
                }
            }
        }
        Ok((times, probs))
    };
    let (mut model_times, probs) = model_run(SileroVad::default_model(16_000))?;
    let general =
        remotemedia_speech::models::models_dir().join(remotemedia_speech::models::SILERO_VAD_MODEL);
    let (mut same_file_times, _) = model_run(general)?;

    // The whole node, one 32 ms frame per push, as a router would drive it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let frames: Vec<RuntimeData> = windows
        .iter()
        .map(|w| RuntimeData::audio(w.to_vec(), 16_000, 1))
        .collect();
    let mut node_times = Vec::new();
    let mut segments = Vec::new();
    for pass in 0..passes {
        let mut h = NodeHarness::new::<SileroVADNode>(json!({}))?;
        let mut events = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            h.timestamp = Duration::from_secs_f64((i * WINDOW) as f64 / 16_000.0);
            let t = Instant::now();
            let out = rt.block_on(h.push(f.clone()))?;
            node_times.push(t.elapsed());
            events.extend(out.iter().filter_map(VadEvent::from_data));
        }
        events.extend(
            rt.block_on(h.flush())?
                .iter()
                .filter_map(VadEvent::from_data),
        );
        if pass == 0 {
            let mut start = None;
            for e in events {
                match e {
                    VadEvent::SpeechStart { time } => start = Some(time),
                    VadEvent::SpeechEnd { time } => {
                        if let Some(s) = start.take() {
                            segments.push([s, time]);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    let report = json!({
        "windows": windows.len(),
        "passes": passes,
        "model_us": stats(&mut model_times),
        "model_same_file_us": stats(&mut same_file_times),
        "node_us": stats(&mut node_times),
        "probs": probs,
        "segments": segments,
    });
    std::fs::write(output, serde_json::to_string(&report)?)?;
    Ok(())
}

fn stats(times: &mut [Duration]) -> serde_json::Value {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(times[((times.len() - 1) as f64 * q) as usize]);
    let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len().max(1) as f64;
    json!({"mean": mean, "median": at(0.5), "p90": at(0.9), "p99": at(0.99)})
}
