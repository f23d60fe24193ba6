//! Resamples a raw little-endian f32 mono file with each quality preset of the
//! `AudioResample` node and reports the time, for `bench/resample.sh`.
//!
//! Usage: resample_bench INPUT.f32 IN_RATE OUT_RATE RUNS OUT_DIR
//! Writes OUT_DIR/rust_<quality>.f32 and prints one JSON line per preset.

use std::time::Instant;

use remotemedia_audio::AudioResample;
use remotemedia_core::RuntimeData;
use remotemedia_core::testing::NodeHarness;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        return Err("usage: resample_bench INPUT.f32 IN_RATE OUT_RATE RUNS OUT_DIR".into());
    }
    let bytes = std::fs::read(&args[1])?;
    let input: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (in_rate, out_rate): (u32, u32) = (args[2].parse()?, args[3].parse()?);
    let runs: usize = args[4].parse()?;
    for quality in ["fast", "balanced", "high"] {
        let mut times = Vec::new();
        let mut output = Vec::new();
        for _ in 0..runs {
            let params = serde_json::json!({"target_rate": out_rate, "quality": quality});
            let mut h = NodeHarness::new::<AudioResample>(params)?;
            let frame = RuntimeData::audio(input.clone(), in_rate, 1);
            let start = Instant::now();
            let mut out = h.push(frame).await?;
            out.extend(h.flush().await?);
            times.push(start.elapsed().as_secs_f64() * 1e3);
            output = out
                .iter()
                .filter_map(|d| d.as_audio())
                .flat_map(|a| a.samples().to_vec())
                .collect();
        }
        times.sort_by(f64::total_cmp);
        let path = format!("{}/rust_{quality}.f32", args[5]);
        let raw: Vec<u8> = output.iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(&path, raw)?;
        println!(
            "{}",
            serde_json::json!({"name": format!("remotemedia {quality}"), "median_ms": times[times.len() / 2], "min_ms": times[0], "output": path})
        );
    }
    Ok(())
}
