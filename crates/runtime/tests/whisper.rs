//! WhisperNode (Whisper tiny.en in a Python worker) in `examples/transcribe_whisper.yaml`: native
//! format conversion, resampling, Silero VAD and segmentation, then the Python recogniser.
//!
//! Needs `./scripts/setup-models.sh` (Silero) and `./scripts/setup-python.sh` (faster-whisper
//! and the model); fails, never skips, without them. Accuracy is word error rate against the
//! Beckett passage read in `models/samples/beckett.wav`, scored by the speech crate's tests' own
//! `word_edits`.

/// The speech crate's test helpers: running an example, and word error rate, so both
/// recognisers are scored the same way.
#[path = "../../speech/tests/common/mod.rs"]
mod speech;

const BECKETT: &str = include_str!("../../../examples/transcripts/beckett.txt");
/// Silence in front of the recording, so the spans are checked away from time zero.
const LEAD_S: f64 = 1.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_transcribes_beckett_with_spans_in_the_clip() {
    let path = format!(
        "{}/../../models/samples/beckett.wav",
        env!("CARGO_MANIFEST_DIR")
    );
    let reader = hound::WavReader::open(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; install with ./scripts/setup-models.sh"));
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16)
    );
    let lead = vec![0.0; (LEAD_S * 16_000.0) as usize];
    let speech = reader
        .into_samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0);
    let samples: Vec<f32> = lead.into_iter().chain(speech).collect();
    let total = samples.len() as f64 / 16_000.0;

    let runtime = remotemedia_runtime::runtime();
    let out = speech::run_example_on(&runtime, "transcribe_whisper.yaml", samples, 16_000, 1).await;
    let mut texts = Vec::new();
    let mut last_end = 0.0;
    for p in &out {
        let t = p.data.as_text().expect("only text leaves the pipeline");
        assert!(t.is_final && !t.text.trim().is_empty(), "{t:?}");
        let (start, end) = t.span.expect("every transcript has a span");
        let (start, end) = (start.as_secs_f64(), end.as_secs_f64());
        assert!(
            LEAD_S - 0.2 <= start && start < end && end <= total + 1e-3 && start >= last_end,
            "span {start:.2}..{end:.2} s of {:?} is out of order or outside the clip \
             (speech {LEAD_S}..{total:.2} s)",
            t.text
        );
        assert!((p.timestamp.as_secs_f64() - start).abs() < 1e-3, "{p:?}");
        last_end = end;
        texts.push(t.text.to_string());
    }
    let joined = texts.join(" ");
    let (edits, words) = speech::word_edits(BECKETT, &joined);
    let rate = edits as f64 / words as f64;
    eprintln!("WER {:.1} %: {texts:?}", rate * 100.0);
    assert!(rate <= 0.10, "WER {:.1} % on {joined:?}", rate * 100.0);
}
