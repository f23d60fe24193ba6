//! N concurrent WhisperNode sessions, three ways in one run: one shared worker with batching
//! (the default), one shared worker without (`max_batch: 1`), and a worker per session
//! (`per_session: true`). For each: time to open the sessions (the first one loads the model),
//! the resident memory of all worker processes, how many processes loaded the model,
//! utterances transcribed per second with every session sending back to back, and the
//! workers' CPU while idle.
//!
//!   ./bench/whisper_sessions.sh            # SESSIONS=8 UTTERANCES=6
//!   MODES="shared batch:4 unbatched" ./bench/whisper_sessions.sh
//!
//! Each session sends the same 3 s pieces of `models/samples/two_cities.wav` (48 kHz, taken
//! every third sample to 16 kHz), one at a time, waiting for each text. Figures go to
//! BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use remotemedia_core::{Executor, NodeContext, Outputs, Packet, RuntimeData};
use remotemedia_python_executor::PythonExecutor;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn utterances(n: usize) -> Vec<Vec<f32>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/samples/two_cities.wav"
    );
    let reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run ./scripts/setup-models.sh)"));
    let step = (reader.spec().sample_rate / 16_000) as usize;
    let samples: Vec<f32> = reader
        .into_samples::<i16>()
        .step_by(step)
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect();
    samples
        .chunks_exact(48_000)
        .take(n)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Time on CPU of all threads of `pid` (ns), from the scheduler's own accounting.
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Children of this process (the workers) with their resident memory (KiB) and time on CPU
/// (ns).
fn workers() -> Vec<(u32, u64, u64)> {
    common::children()
        .into_iter()
        .map(|pid| {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
                .unwrap_or(0);
            (pid, rss, cpu_ns(pid))
        })
        .collect()
}

async fn run(mode: &str, worker: serde_json::Value, sessions: usize, pieces: &Arc<Vec<Vec<f32>>>) {
    let exec = Arc::new(PythonExecutor::discover());
    let params = serde_json::json!({ "worker": worker });
    // Opened one after another, as clients arrive: the first pays the model load.
    let mut nodes = Vec::new();
    let mut opens = Vec::new();
    for i in 0..sessions {
        let ctx = NodeContext {
            session_id: Arc::from(format!("s{i}")),
            node_id: Arc::from("whisper"),
        };
        let t0 = Instant::now();
        let node = exec
            .create("WhisperNode", &params, &ctx)
            .await
            .unwrap_or_else(|e| panic!("{e} (run ./scripts/setup-python.sh)"));
        opens.push(t0.elapsed());
        nodes.push(node);
    }
    let procs = workers();
    let rss_mib: u64 = procs.iter().map(|p| p.1).sum::<u64>() / 1024;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut node) in nodes.into_iter().enumerate() {
        let pieces = Arc::clone(pieces);
        tasks.spawn(async move {
            let mut out = Outputs::default();
            for (k, piece) in pieces.iter().enumerate() {
                let packet = Packet {
                    data: RuntimeData::audio(piece.clone(), 16_000, 1),
                    session: format!("s{i}").into(),
                    source: "input".into(),
                    port: "out".into(),
                    seq: k as u64,
                    timestamp: Duration::from_secs(3 * k as u64),
                    captured: Instant::now(),
                };
                node.process(0, &packet, &mut out).await.unwrap();
                while out.is_empty() {
                    node.poll_output(&mut out).await.unwrap();
                }
                out.clear();
            }
            node
        });
    }
    let mut nodes = Vec::new();
    while let Some(node) = tasks.join_next().await {
        nodes.push(node.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let done = (sessions * pieces.len()) as f64;
    // Idle: every session open, nothing sent (after 2 s for native thread pools to settle).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: u64 = workers().iter().map(|p| p.2).sum();
    let idle_s = env("IDLE_S", 10);
    tokio::time::sleep(Duration::from_secs(idle_s as u64)).await;
    let after: u64 = workers().iter().map(|p| p.2).sum();
    let idle_cpu = after.saturating_sub(before) as f64 / 1e9 / idle_s as f64 * 100.0;
    for mut n in nodes {
        n.close().await.unwrap();
    }
    let warm: Vec<f64> = opens[1..].iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let warm_median = if warm.is_empty() {
        0.0
    } else {
        let mut w = warm.clone();
        w.sort_by(f64::total_cmp);
        w[w.len() / 2]
    };
    println!(
        "RESULT {mode:<12} sessions {sessions}  processes {:>2}  first open {:>6.0} ms  later opens (median) {:>7.1} ms  \
         RSS {:>5} MiB  {:>5.2} utterances/s  idle CPU {:>4.1} %",
        procs.len(),
        opens[0].as_secs_f64() * 1e3,
        warm_median,
        rss_mib,
        done / elapsed,
        idle_cpu,
    );
    drop(exec);
    // Shared workers stop with their executor; wait for them to go before the next mode.
    for _ in 0..100 {
        if workers().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions = env("SESSIONS", 8);
    let pieces = Arc::new(utterances(env("UTTERANCES", 6)));
    let modes = std::env::var("MODES").unwrap_or_else(|_| "shared unbatched per_session".into());
    for mode in modes.split_whitespace() {
        let worker = match mode.split_once(':') {
            _ if mode == "shared" => serde_json::json!({}),
            _ if mode == "unbatched" => serde_json::json!({"max_batch": 1}),
            _ if mode == "per_session" => serde_json::json!({"per_session": true}),
            Some(("batch", n)) => serde_json::json!({"max_batch": n.parse::<usize>().unwrap()}),
            _ => panic!("unknown mode {mode}: shared, unbatched, per_session or batch:N"),
        };
        run(mode, worker, sessions, &pieces).await;
    }
}
