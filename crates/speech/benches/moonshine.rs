//! Moonshine figures for BENCHMARKS.md: the cost of transcribing one utterance, as a real-time
//! factor (processing time / audio duration; the target is at most 0.05 for one stream on a
//! 2-core machine).
//!
//! - `moonshine/utterance_10s/threads_N`: the whole `beckett.wav` reading (9.96 s, six phrases)
//!   as one utterance: encoder plus greedy decoding of about 20 tokens;
//! - `moonshine/utterance_1s/threads_N`: one short phrase ("Ever tried.", 1.45 s), the typical
//!   VAD segment, where the per-utterance overhead of the first decoder step weighs more.
//!
//! N is the intra-op thread count of the shared model (the node's `threads`). The real-time
//! factor of each is printed after its timing. Needs `./scripts/setup-models.sh`.
//!
//! Run: `cargo bench -p remotemedia-speech --bench moonshine`

mod common;

use std::time::{Duration, Instant};

use common::recording;
use criterion::{Criterion, criterion_group, criterion_main};
use remotemedia_speech::Moonshine;
use remotemedia_speech::moonshine::DEFAULT_MAX_TOKENS_PER_SECOND;

const RATE: f64 = 16_000.0;

fn utterances(c: &mut Criterion) {
    let audio = recording();
    let cases = [
        ("utterance_10s", &audio[..]),
        ("utterance_1s", &audio[1_600..24_800]),
    ];
    let mut g = c.benchmark_group("moonshine");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    for threads in [1, 2] {
        let asr = Moonshine::new(
            &Moonshine::default_model(),
            threads,
            DEFAULT_MAX_TOKENS_PER_SECOND,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (name, samples) in cases {
            let secs = samples.len() as f64 / RATE;
            let t = asr.transcribe(samples).unwrap();
            eprintln!("{name}: {secs:.2} s, {} tokens: {}", t.tokens, t.text);
            let mut spent = Duration::ZERO;
            let mut runs = 0u32;
            g.bench_function(format!("{name}/threads_{threads}"), |b| {
                b.iter(|| {
                    let began = Instant::now();
                    let t = asr.transcribe(samples).unwrap();
                    spent += began.elapsed();
                    runs += 1;
                    t
                })
            });
            if runs > 0 {
                let rtf = spent.as_secs_f64() / f64::from(runs) / secs;
                eprintln!("{name}/threads_{threads}: real-time factor {rtf:.4} over {runs} runs");
            }
        }
    }
    g.finish();
}

criterion_group!(benches, utterances);
criterion_main!(benches);
