//! Speech synthesis figures for BENCHMARKS.md, single stream:
//!
//! - `tts/first_audio/threads_N`: the `PiperTTS` node from a one-sentence reply ("Sure, I can
//!   help you with that.") to its audio output, on a multi-thread runtime: phonemisation, the
//!   model run and the output. This is the time to first audio of a one-sentence reply (the
//!   router forwards a node's outputs when `process` returns; see `PiperTTSNode`).
//! - `tts/first_piece/threads_N`: the same reply through `PiperVoice::synthesize_streaming`,
//!   timed from the text to the first decoded piece (about 0.19 s of audio): the time to first
//!   audio once a router forwards outputs as they are pushed.
//! - `tts/phonemize/one_sentence`: the espeak-ng part of that alone.
//! - `tts/paragraph/threads_N`: a five-sentence paragraph through `PiperVoice` sentence by
//!   sentence; before criterion runs, the real-time factor (synthesis time / audio time, median
//!   of five) and the first sentence's share are printed, as criterion reports only time.
//! - `tts/espeak/paragraph`: the same paragraph with espeak-ng's own synthesiser.
//!
//! Needs `./scripts/setup-system.sh` (espeak-ng) and `./scripts/setup-models.sh` (the voice).
//!
//! Run: `cargo bench -p remotemedia-speech --bench tts`

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use remotemedia_core::RuntimeData;
use remotemedia_core::testing::NodeHarness;
use remotemedia_speech::espeak::Espeak;
use remotemedia_speech::{PiperTTSNode, PiperVoice};

const REPLY: &str = "Sure, I can help you with that.";
const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. \
    Streaming speech should start quickly and keep ahead of playback. \
    Each sentence is synthesised as soon as its text is known. \
    Numbers like 42 and dates like March 3rd are read out in words. \
    Is this fast enough for a conversation?";
const THREADS: [usize; 2] = [1, 2];

fn voice(threads: usize) -> PiperVoice {
    PiperVoice::load(&PiperVoice::default_model(), threads).unwrap_or_else(|e| panic!("{e}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Real-time factor and first-sentence time of the paragraph, printed for BENCHMARKS.md.
fn report_rtf() {
    for threads in THREADS {
        let voice = voice(threads);
        let scales = voice.default_scales();
        let rate = f64::from(voice.config().sample_rate);
        let mut totals = Vec::new();
        let mut firsts = Vec::new();
        let mut audio_secs = 0.0;
        for run in 0..6 {
            let t0 = Instant::now();
            let prepared = voice.prepare(PARAGRAPH).unwrap_or_else(|e| panic!("{e}"));
            let mut samples = 0usize;
            for (i, s) in prepared.sentences.iter().enumerate() {
                samples += voice
                    .synthesize(&s.ids, scales)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .len();
                if i == 0 && run > 0 {
                    firsts.push(t0.elapsed());
                }
            }
            // The first run warms ONNX Runtime up.
            if run > 0 {
                totals.push(t0.elapsed());
                audio_secs = samples as f64 / rate;
            }
        }
        let total = median(totals);
        eprintln!(
            "tts/paragraph/threads_{threads}: {:.2} s of audio in {:.0} ms: real-time factor {:.3}; \
             first sentence after {:.0} ms",
            audio_secs,
            total.as_secs_f64() * 1e3,
            total.as_secs_f64() / audio_secs,
            median(firsts).as_secs_f64() * 1e3,
        );
    }
}

fn first_audio(c: &mut Criterion) {
    report_rtf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("tts");
    g.sample_size(20);
    for threads in THREADS {
        let mut node = NodeHarness::new::<PiperTTSNode>(serde_json::json!({ "threads": threads }))
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(format!("first_audio/threads_{threads}"), |b| {
            b.iter(|| {
                let out = rt
                    .block_on(node.push(RuntimeData::text(REPLY)))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(out.len(), 1);
                out
            })
        });
    }
    for threads in THREADS {
        let v = voice(threads);
        let scales = v.default_scales();
        g.bench_function(format!("first_piece/threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let mut first = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let mut at = None;
                    let prepared = v.prepare(REPLY).unwrap_or_else(|e| panic!("{e}"));
                    v.synthesize_streaming(&prepared.sentences[0].ids, scales, |_| {
                        at.get_or_insert_with(|| t0.elapsed());
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                    first += at.unwrap_or_default();
                }
                first
            })
        });
    }
    let v = voice(1);
    g.bench_function("phonemize/one_sentence", |b| {
        b.iter(|| v.prepare(REPLY).unwrap_or_else(|e| panic!("{e}")))
    });
    g.sample_size(10);
    for threads in THREADS {
        let v = voice(threads);
        let scales = v.default_scales();
        g.bench_function(format!("paragraph/threads_{threads}"), |b| {
            b.iter(|| {
                let prepared = v.prepare(PARAGRAPH).unwrap_or_else(|e| panic!("{e}"));
                for s in &prepared.sentences {
                    v.synthesize(&s.ids, scales)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            })
        });
    }
    g.bench_function("espeak/paragraph", |b| {
        b.iter(|| {
            let mut e = Espeak::lock().unwrap_or_else(|e| panic!("{e}"));
            e.set_voice("en-us").unwrap_or_else(|e| panic!("{e}"));
            e.synthesize(PARAGRAPH, 175, 50)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    g.finish();
}

criterion_group!(benches, first_audio);
criterion_main!(benches);
