//! Live-captioning load on `remotemedia serve`: N concurrent StreamPipeline sessions of the
//! speech pipeline, each streaming one of the bundled recordings (41 s and 10 s, each followed
//! by a second of silence) in a loop in real time (20 ms frames, from its own offset), and
//! measuring for every final text the time from the end of its utterance (the end of the text's
//! span, in the stream's media time) to its arrival. That latency includes the VAD's wait for
//! silence (500 ms in `examples/transcribe.yaml`). Word error rate: each stream's final texts
//! against the words its recording reads (`examples/transcripts/`), aligned to the stretch of
//! the looped text they match best, since a stream starts and ends anywhere in it; words cut at
//! a stream's ends count as errors, the same in every run.
//!
//!   cargo run --release -p remotemedia-server --example asr_load -- \
//!       --addr 127.0.0.1:50051 --pipeline transcribe --streams 32 --seconds 40
//!
//! Streams open `--stagger-ms` apart, as independent clients would; with `--burst` they all
//! open at once and play the 10 s recording from its start, so their utterances end together. A stream refused at open
//! (RESOURCE_EXHAUSTED: the server is full) is counted, not retried. Prints one JSON line.
//! Used by bench/asr_streams.sh.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
/// Word error rate as the speech tests score it.
#[path = "../../speech/tests/common/wer.rs"]
mod wer;

use remotemedia_server::proto;

struct Args {
    addr: String,
    pipeline: String,
    streams: usize,
    seconds: f64,
    stagger_ms: u64,
    models: String,
    /// Every stream plays the 10 s recording from its start, all opened at once: their
    /// utterances end together (the worst case for a shared model).
    burst: bool,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:50051".into(),
        pipeline: "transcribe".into(),
        streams: 16,
        seconds: 40.0,
        stagger_ms: 100,
        models: "models".into(),
        burst: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--burst" {
            a.burst = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v,
            "--pipeline" => a.pipeline = v,
            "--streams" => a.streams = v.parse().expect("--streams N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--stagger-ms" => a.stagger_ms = v.parse().expect("--stagger-ms MS"),
            "--models" => a.models = v,
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

/// A bundled human recording (mono, 16-bit) at its own rate, with a second of silence after
/// it, played in a loop by a stream, and the words it reads.
struct Clip {
    samples: Vec<f32>,
    rate: u32,
    words: Vec<String>,
}

impl Clip {
    fn load(models: &str, name: &str) -> Self {
        let transcript = format!(
            "{}/../../examples/transcripts/{}.txt",
            env!("CARGO_MANIFEST_DIR"),
            name.trim_end_matches(".wav")
        );
        let words = wer::normalise(&std::fs::read_to_string(&transcript).expect(&transcript));
        let path = format!("{models}/samples/{name}");
        let reader = hound::WavReader::open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run ./scripts/setup-models.sh"));
        let rate = reader.spec().sample_rate;
        assert_eq!(reader.spec().channels, 1, "{path}");
        let mut samples: Vec<f32> = reader
            .into_samples::<i16>()
            .map(|s| f32::from(s.unwrap_or(0)) / 32_768.0)
            .collect();
        samples.extend(std::iter::repeat_n(0.0, rate as usize));
        Self {
            samples,
            rate,
            words,
        }
    }

    /// Samples in 20 ms.
    fn frame(&self) -> usize {
        self.rate as usize / 50
    }
}

/// Word edits between `heard` and the stretch of the looped `read` words it matches best, and
/// that stretch's length: a stream starts and ends anywhere in its recording, so the alignment
/// may start and end anywhere in the reference for free.
fn loop_edits(read: &[String], heard: &[String], loops: usize) -> (usize, usize) {
    let r: Vec<&String> = read.iter().cycle().take(read.len() * loops).collect();
    // cost[j], start[j]: best alignment of the heard words so far ending at reference word j.
    let mut cost: Vec<usize> = vec![0; r.len() + 1];
    let mut start: Vec<usize> = (0..=r.len()).collect();
    for h in heard {
        let mut next = vec![0; r.len() + 1];
        let mut next_start = vec![0; r.len() + 1];
        next[0] = cost[0] + 1;
        next_start[0] = start[0];
        for j in 1..=r.len() {
            let options = [
                (cost[j - 1] + usize::from(r[j - 1] != h), start[j - 1]),
                (cost[j] + 1, start[j]),
                (next[j - 1] + 1, next_start[j - 1]),
            ];
            (next[j], next_start[j]) = *options.iter().min_by_key(|o| o.0).unwrap();
        }
        (cost, start) = (next, next_start);
    }
    let (end, edits) = cost.iter().enumerate().min_by_key(|(_, c)| **c).unwrap();
    (*edits, end - start[end])
}

#[derive(Default)]
struct Results {
    latency_ms: Vec<f64>,
    /// Word edits and reference words over all streams.
    edits: usize,
    reference_words: usize,
    admitted: usize,
    refused: usize,
    failed: Vec<String>,
}

async fn stream(
    args: Arc<Args>,
    clip: Arc<Clip>,
    offset: usize,
    results: Arc<Mutex<Results>>,
) -> Result<(), String> {
    let (tx, mut responses) = match common::open(&args.addr, &args.pipeline, false).await {
        Ok(opened) => opened,
        Err(common::OpenError::Refused(s)) if s.code() == tonic::Code::ResourceExhausted => {
            results.lock().unwrap().refused += 1;
            return Ok(());
        }
        Err(common::OpenError::Refused(s)) => {
            return Err(format!("{:?}: {}", s.code(), s.message()));
        }
        Err(common::OpenError::Failed(e)) => return Err(e),
    };
    results.lock().unwrap().admitted += 1;
    let frames = (args.seconds * 50.0) as usize;
    let frame = clip.frame();
    let t0 = tokio::time::Instant::now();
    let played = args.seconds * f64::from(clip.rate) / clip.samples.len() as f64;
    let read_words = clip.words.clone();
    let feed = async move {
        let len = clip.samples.len() / frame * frame;
        for k in 0..frames {
            tokio::time::sleep_until(t0 + Duration::from_millis(20 * k as u64)).await;
            let at = (offset + k * frame) % len;
            let samples = &clip.samples[at..at + frame];
            let msg = proto::StreamRequest {
                message: Some(proto::stream_request::Message::Data(proto::DataFrame {
                    target: String::new(),
                    data: Some(proto::Data {
                        kind: Some(proto::data::Kind::Audio(proto::AudioBuffer {
                            samples: Vec::new(),
                            sample_rate: clip.rate,
                            channels: 1,
                            samples_f32le: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
                        })),
                    }),
                    timestamp_us: Some(20_000 * k as i64),
                })),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
        // Dropping tx half-closes the stream: the session flushes and ends.
    };
    let start = Instant::now();
    let read = async {
        let mut lat = Vec::new();
        let mut heard = Vec::new();
        loop {
            match responses.message().await {
                Ok(Some(proto::StreamResponse { message: Some(m) })) => {
                    if let proto::stream_response::Message::Output(o) = m
                        && let Some(proto::data::Kind::Text(t)) = o.data.and_then(|d| d.kind)
                        && t.is_final
                        && let Some(span) = t.span
                    {
                        let end_us = span.end_us;
                        let arrived = start.elapsed().as_secs_f64() * 1e3;
                        lat.push(arrived - end_us as f64 / 1e3);
                        heard.extend(wer::normalise(&t.text));
                    }
                }
                Ok(_) => break,
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            }
        }
        Ok((lat, heard))
    };
    let ((), read) = tokio::join!(feed, read);
    let (lat, heard) = read?;
    let (edits, words) = loop_edits(&read_words, &heard, played.ceil() as usize + 1);
    let mut r = results.lock().unwrap();
    r.latency_ms.extend(lat);
    r.edits += edits;
    r.reference_words += words;
    Ok(())
}

/// A latency quantile in ms, to a tenth.
fn pct(v: &[f64], q: f64) -> f64 {
    (common::quantile(v, q) * 10.0).round() / 10.0
}

fn main() {
    let args = Arc::new(args());
    let clips = [
        Arc::new(Clip::load(&args.models, "two_cities.wav")),
        Arc::new(Clip::load(&args.models, "beckett.wav")),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let results: Arc<Mutex<Results>> = Default::default();
    rt.block_on(async {
        let mut tasks = Vec::new();
        // A fixed sequence of offsets: runs are comparable, streams are not in step.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..args.streams {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (clip, offset) = if args.burst {
                (Arc::clone(&clips[1]), 0)
            } else {
                let clip = Arc::clone(&clips[i % clips.len()]);
                let offset = (seed >> 33) as usize % clip.samples.len();
                let frame = clip.frame();
                (clip, offset / frame * frame)
            };
            let stagger = if args.burst { 0 } else { args.stagger_ms };
            let (args, results) = (Arc::clone(&args), Arc::clone(&results));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(stagger * i as u64)).await;
                if let Err(e) = stream(args, clip, offset, Arc::clone(&results)).await {
                    results.lock().unwrap().failed.push(e);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut r = results.lock().unwrap();
    r.latency_ms.sort_by(f64::total_cmp);
    let mut failures: Vec<&String> = r.failed.iter().collect();
    failures.dedup();
    println!(
        "{}",
        serde_json::json!({
            "streams": args.streams,
            "admitted": r.admitted,
            "refused": r.refused,
            "failed": r.failed.len(),
            "failures": failures.iter().take(3).collect::<Vec<_>>(),
            "utterances": r.latency_ms.len(),
            "wer_percent": (1000.0 * r.edits as f64 / r.reference_words.max(1) as f64).round() / 10.0,
            "latency_ms": {
                "p50": pct(&r.latency_ms, 0.50),
                "p95": pct(&r.latency_ms, 0.95),
                "p99": pct(&r.latency_ms, 0.99),
                "max": pct(&r.latency_ms, 1.0),
            },
        })
    );
}
