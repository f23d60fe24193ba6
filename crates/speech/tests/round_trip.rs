//! Speech out and back in: sentences spoken by PiperTTS, recognised by MoonshineASR, in one
//! pipeline through the session router (text → PiperTTS → AudioResample → SileroVAD →
//! SpeechSegmenter → MoonshineASR → text). The words must come back with a word error rate of
//! at most 15 % (normalisation in `common/mod.rs`).
//!
//! Needs `./scripts/setup-system.sh` and `./scripts/setup-models.sh` (fails, never skips).

mod common;

use remotemedia_core::RuntimeData;

const SENTENCES: &[&str] = &[
    "The weather will be sunny this afternoon.",
    "Please send the report to the team before Friday.",
    "I would like a cup of coffee with milk.",
    "The train to the city leaves at the station every hour.",
];
/// The target of the issue.
const MAX_WER: f64 = 0.15;

const PIPELINE: &str = "version: v1
nodes:
  - {id: tts, type: PiperTTS, params: {sentence_silence_ms: 700}}
  - {id: resample, type: AudioResample, params: {target_rate: 16000}}
  - {id: vad, type: SileroVAD, params: {min_silence_ms: 300}}
  - {id: segmenter, type: SpeechSegmenter}
  - {id: asr, type: MoonshineASR}
connections:
  - {from: tts, to: resample}
  - {from: resample, to: vad}
  - {from: vad, to: segmenter}
  - {from: segmenter, to: asr}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_sentences_are_recognised_again() {
    let runtime = common::runtime();
    let pipeline = runtime
        .load(PIPELINE, "round_trip.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut session = runtime
        .open(&pipeline)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // One input, so the voice speaks the sentences back to back with pauses between them.
    session
        .send(RuntimeData::text(SENTENCES.join(" ")))
        .await
        .unwrap();
    session.end_input();
    let mut heard = Vec::new();
    while let Some(item) = session.recv().await {
        let packet = item.unwrap_or_else(|f| panic!("{f}"));
        heard.push(packet.data.as_text().expect("text out").text.to_string());
    }
    session.close().await.unwrap();
    let reference = SENTENCES.join(" ");
    let hypothesis = heard.join(" ");
    let wer = common::wer(&reference, &hypothesis);
    eprintln!("round trip WER {:.1} %: {hypothesis}", wer * 100.0);
    assert!(
        wer <= MAX_WER,
        "WER {:.1} % > {:.0} %\nsaid:  {reference}\nheard: {hypothesis}",
        wer * 100.0,
        MAX_WER * 100.0
    );
}
