//! WhisperNode (Whisper tiny.en in a Python worker) in `examples/transcribe_whisper.yaml`: native
//! format conversion, resampling, Silero VAD and segmentation, then the Python recogniser.
//!
//! Needs `./scripts/setup-models.sh` (Silero) and `./scripts/setup-python.sh` (faster-whisper
//! and the model); fails, never skips, without them. Accuracy is word error rate against the
//! Beckett passage read in `models/samples/beckett.wav`, scored by the speech crate's tests' own
//! `word_edits`.

/// The speech crate's word error rate, so both recognisers are scored the same way.
#[path = "../../speech/tests/common/mod.rs"]
mod speech;

use std::time::Duration;

use remotemedia_core::{Packet, RuntimeData};

const BECKETT: &str = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.";
/// Silence in front of the recording, so the spans are checked away from time zero.
const LEAD_S: f64 = 1.0;

/// Runs `examples/<name>` over 16 kHz mono `samples` in 20 ms frames; every output packet.
async fn run_example(name: &str, samples: &[f32]) -> Vec<Packet> {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let runtime = remotemedia_runtime::runtime();
    let manifest = std::fs::read_to_string(&path).unwrap();
    let pipeline = runtime
        .load(&manifest, &path)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = runtime
        .open(&pipeline)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx) = session.split();
    let feed = async move {
        for (i, chunk) in samples.chunks(320).enumerate() {
            let at = Duration::from_millis(20 * i as u64);
            tx.send_at(RuntimeData::audio(chunk.to_vec(), 16_000, 1), at)
                .await
                .unwrap();
        }
    };
    let collect = async {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            out.push(item.unwrap_or_else(|f| panic!("{f}")));
        }
        out
    };
    let ((), out) = tokio::join!(feed, collect);
    rx.finish().await.unwrap();
    out
}

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

    let out = run_example("transcribe_whisper.yaml", &samples).await;
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
