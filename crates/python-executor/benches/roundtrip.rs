//! Round trip Rust → Python pass-through node (`Echo`) → Rust over shared memory: latency
//! percentiles with one frame in flight, and throughput with the in-flight window full.
//!
//!   cargo bench -p remotemedia-python-executor --bench roundtrip            # needs scripts/setup-python.sh
//!   cargo bench -p remotemedia-python-executor --bench roundtrip -- --quick
//!
//! Each size is an audio frame of f32 samples (Python sees it as a numpy view of shared
//! memory and yields it back, which copies it once into the reply). Figures go to
//! BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use remotemedia_core::{Executor, Node, NodeContext, Outputs, Packet, RuntimeData};
use remotemedia_python_executor::PythonExecutor;

fn packet(data: RuntimeData, seq: u64) -> Packet {
    Packet {
        data,
        session: "bench".into(),
        source: "input".into(),
        port: "out".into(),
        seq,
        timestamp: Duration::from_millis(seq * 20),
        captured: Instant::now(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn echo(window: usize) -> Box<dyn Node> {
    let exec = PythonExecutor::discover();
    let ctx = NodeContext {
        session_id: Arc::from("bench"),
        node_id: Arc::from(format!("echo-w{window}")),
    };
    let params = serde_json::json!({"worker": {"window": window, "max_frame_bytes": 64 << 20}});
    exec.create("Echo", &params, &ctx)
        .await
        .unwrap_or_else(|e| panic!("{e} (run ./scripts/setup-python.sh)"))
}

/// One frame in flight: send, wait for the echo.
async fn latency(node: &mut Box<dyn Node>, bytes: usize, rounds: usize) -> Vec<Duration> {
    let data = RuntimeData::audio(vec![0.5f32; bytes / 4], 16_000, 1);
    let mut out = Outputs::default();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let p = packet(data.clone(), i as u64);
        let t0 = Instant::now();
        node.process(0, &p, &mut out).await.unwrap();
        while out.is_empty() {
            node.poll_output(&mut out).await.unwrap();
        }
        let dt = t0.elapsed();
        assert_eq!(out.len(), 1);
        out.clear();
        if i >= rounds / 10 {
            times.push(dt); // the first tenth warms up
        }
    }
    times.sort();
    times
}

/// Frames per second with the window full.
async fn throughput(node: &mut Box<dyn Node>, bytes: usize, frames: usize) -> f64 {
    let data = RuntimeData::audio(vec![0.5f32; bytes / 4], 16_000, 1);
    let mut out = Outputs::default();
    let mut got = 0;
    let t0 = Instant::now();
    for i in 0..frames {
        node.process(0, &packet(data.clone(), i as u64), &mut out)
            .await
            .unwrap();
        got += out.len();
        out.clear();
    }
    node.flush(&mut out).await.unwrap();
    got += out.len();
    assert_eq!(got, frames);
    frames as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut node = echo(1).await;
        println!("round trip, one frame in flight (µs):");
        println!(
            "{:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "payload", "rounds", "p50", "p90", "p99", "max"
        );
        for (bytes, rounds) in [
            (4 << 10, 20_000),
            (64 << 10, 5_000),
            (1 << 20, 1_000),
            (4 << 20, 300),
        ] {
            let rounds = rounds / scale;
            let t = latency(&mut node, bytes, rounds).await;
            println!(
                "{:>10} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                format!("{} KiB", bytes >> 10),
                rounds,
                percentile(&t, 0.5),
                percentile(&t, 0.9),
                percentile(&t, 0.99),
                percentile(&t, 1.0),
            );
        }
        node.close().await.unwrap();
        let mut node = echo(8).await;
        println!("throughput, window of 8 frames in flight:");
        // A million 4 KiB frames: every one comes back (`throughput` asserts it).
        for (bytes, frames) in [(4 << 10, 1_000_000), (1 << 20, 2_000)] {
            let fps = throughput(&mut node, bytes, frames / scale).await;
            println!(
                "{:>10} {:>10.0} frames/s {:>8.1} MiB/s  ({} frames, none lost)",
                format!("{} KiB", bytes >> 10),
                fps,
                fps * bytes as f64 / (1 << 20) as f64,
                frames / scale
            );
        }
        node.close().await.unwrap();
    });
}
