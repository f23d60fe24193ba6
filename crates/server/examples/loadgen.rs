//! Load client for `remotemedia serve`: N concurrent StreamPipeline sessions, each on its own
//! connection, each sending 20 ms audio frames in real time, and measuring for every frame the
//! time from sending it to receiving the pipeline's audio output for it (the pipelines this is
//! for emit one audio frame per input frame, so the k-th audio output answers the k-th frame).
//!
//!   cargo run --release -p remotemedia-server --example loadgen -- \
//!       --addr 127.0.0.1:50051 --pipeline vad --sessions 200 --seconds 20
//!
//! Audio goes as `samples_f32le` bytes unless `--floats` asks for repeated floats.
//! Prints one JSON line: sessions, frames measured, latency p50/p99/p99.9/max in ms, and how
//! late the client itself sent frames (if that is high, the client, not the server, is the
//! bottleneck). The first `--warmup` seconds are not measured. Used by bench/grpc_load.sh.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use remotemedia_server::proto;

struct Args {
    addr: String,
    pipeline: String,
    sessions: usize,
    seconds: f64,
    warmup: f64,
    frame_ms: u64,
    rate: u32,
    /// Send samples as repeated floats instead of little-endian bytes.
    floats: bool,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:50051".into(),
        pipeline: "vad".into(),
        sessions: 200,
        seconds: 20.0,
        warmup: 3.0,
        frame_ms: 20,
        rate: 48_000,
        floats: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--floats" {
            a.floats = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v,
            "--pipeline" => a.pipeline = v,
            "--sessions" => a.sessions = v.parse().expect("--sessions N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--warmup" => a.warmup = v.parse().expect("--warmup S"),
            "--frame-ms" => a.frame_ms = v.parse().expect("--frame-ms MS"),
            "--rate" => a.rate = v.parse().expect("--rate HZ"),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

#[derive(Default)]
struct Results {
    latency_us: Vec<u32>,
    send_lag_us: Vec<u32>,
    failed: Vec<String>,
}

/// Samples as repeated floats, or (the default) as little-endian bytes.
fn audio_buffer(samples: Vec<f32>, rate: u32, floats: bool) -> proto::AudioBuffer {
    let (samples, samples_f32le) = if floats {
        (samples, Vec::new())
    } else {
        (
            Vec::new(),
            samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )
    };
    proto::AudioBuffer {
        samples,
        sample_rate: rate,
        channels: 1,
        samples_f32le,
    }
}

/// A speech-like test signal: a tone switched on and off every 700 ms, so a VAD has events.
fn frame(k: u64, samples: usize, rate: u32) -> Vec<f32> {
    (0..samples)
        .map(|i| {
            let t = (k as usize * samples + i) as f32 / rate as f32;
            let on = ((t / 0.7) as u64).is_multiple_of(2);
            if on {
                (t * 220.0 * std::f32::consts::TAU).sin() * 0.3
            } else {
                0.0
            }
        })
        .collect()
}

async fn session(
    args: Arc<Args>,
    start: Instant,
    results: Arc<Mutex<Results>>,
) -> Result<(), String> {
    let (tx, mut responses) = match common::open(&args.addr, &args.pipeline, !args.floats).await {
        Ok(opened) => opened,
        Err(common::OpenError::Refused(s)) => {
            return Err(format!("{:?}: {}", s.code(), s.message()));
        }
        Err(common::OpenError::Failed(e)) => return Err(e),
    };
    let sent: Arc<Mutex<VecDeque<Instant>>> = Default::default();
    let period = Duration::from_millis(args.frame_ms);
    let samples = (args.rate as u64 * args.frame_ms / 1000) as usize;
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.warmup + args.seconds);
    let feed = {
        let sent = Arc::clone(&sent);
        let results = Arc::clone(&results);
        async move {
            let t0 = tokio::time::Instant::now();
            let mut lags = Vec::new();
            for k in 0.. {
                let due = t0 + period * k as u32;
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= measure_from {
                    lags.push(due.elapsed().as_micros() as u32);
                }
                let ts = (k * args.frame_ms * 1000) as i64;
                sent.lock().unwrap().push_back(now);
                let msg = proto::StreamRequest {
                    message: Some(proto::stream_request::Message::Data(proto::DataFrame {
                        target: String::new(),
                        data: Some(proto::Data {
                            kind: Some(proto::data::Kind::Audio(audio_buffer(
                                frame(k, samples, args.rate),
                                args.rate,
                                args.floats,
                            ))),
                        }),
                        timestamp_us: Some(ts),
                    })),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            results.lock().unwrap().send_lag_us.extend(lags);
            // Dropping tx half-closes the stream: the session ends.
        }
    };
    let read = async {
        let mut lat = Vec::new();
        loop {
            match responses.message().await {
                Ok(Some(proto::StreamResponse { message: Some(m) })) => {
                    if let proto::stream_response::Message::Output(o) = m {
                        let audio = matches!(
                            o.data.and_then(|d| d.kind),
                            Some(proto::data::Kind::Audio(_))
                        );
                        if audio
                            && let Some(at) = sent.lock().unwrap().pop_front()
                            && at >= measure_from
                        {
                            lat.push(at.elapsed().as_micros() as u32);
                        }
                    }
                }
                Ok(_) => break,
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            }
        }
        Ok(lat)
    };
    let (_, lat) = tokio::join!(feed, read);
    results.lock().unwrap().latency_us.extend(lat?);
    Ok(())
}

/// A latency quantile in ms (values in µs).
fn pct(v: &[u32], q: f64) -> f64 {
    common::quantile(v, q) / 1000.0
}

fn main() {
    let args = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results: Arc<Mutex<Results>> = Default::default();
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..args.sessions {
            let (args, results) = (Arc::clone(&args), Arc::clone(&results));
            // Starts spread over one frame period, as independent clients would be.
            let offset = Duration::from_millis(args.frame_ms) * i as u32 / args.sessions as u32;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                if let Err(e) = session(args, start, Arc::clone(&results)).await {
                    results.lock().unwrap().failed.push(e);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut r = results.lock().unwrap();
    r.latency_us.sort_unstable();
    r.send_lag_us.sort_unstable();
    let mut failures: Vec<&String> = r.failed.iter().collect();
    failures.dedup();
    println!(
        "{}",
        serde_json::json!({
            "sessions": args.sessions,
            "failed_sessions": r.failed.len(),
            "failures": failures.iter().take(3).collect::<Vec<_>>(),
            "frames": r.latency_us.len(),
            "latency_ms": {
                "p50": pct(&r.latency_us, 0.50),
                "p99": pct(&r.latency_us, 0.99),
                "p999": pct(&r.latency_us, 0.999),
                "max": pct(&r.latency_us, 1.0),
            },
            "client_send_lag_ms": {"p50": pct(&r.send_lag_us, 0.5), "p99": pct(&r.send_lag_us, 0.99)},
        })
    );
}
