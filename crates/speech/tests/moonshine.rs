//! MoonshineASR on the real model and real recordings.
//!
//! Needs `./scripts/setup-models.sh` (fails, never skips, without it). The recordings are the
//! two human readings shipped in the `moonshine-voice` wheel: `beckett.wav` (16 kHz mono, 10 s)
//! and `two_cities.wav` (48 kHz mono, 44 s). They go through `examples/transcribe.yaml` (format
//! conversion, resampling, Silero VAD, segmentation, recognition) via the session router.
//!
//! Accuracy is word error rate against the texts read: the Beckett passage from "Worstward Ho"
//! and the opening sentence of "A Tale of Two Cities", as printed (see the constants). That the
//! readings follow the printed texts word for word was checked with an independent recogniser
//! (Whisper tiny.en, beam 5), which returned exactly these words for both files; Moonshine's own
//! errors are all on words Whisper hears as printed.
//!
//! Normalisation before scoring, applied to reference and hypothesis alike: lowercase; hyphens
//! and dashes become spaces; every other character that is not a letter, digit or space
//! (punctuation, apostrophes) is removed; runs of whitespace become one space. Numbers stay as
//! written (neither text has any). Edits are the word-level Levenshtein distance
//! (substitutions + insertions + deletions). The target applies to the recordings as a set, as
//! WER is reported for test sets: all edits over all reference words (131). Per recording,
//! `two_cities.wav` (119 words) must also meet it on its own. `beckett.wav` is 12 words, so one
//! word is 8.3 %, and on its own the short phrase "Fail again." or "Fail better." usually comes
//! out as "Fair", "Fare" or "Fale" (one or both, depending on where the segment boundaries
//! fall; the package's own pipeline writes "Fale better", and the whole passage decoded as one
//! utterance is right). It is held to at most those two words.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{normalise, word_edits};
use remotemedia_core::testing::NodeHarness;
use remotemedia_core::{Packet, RuntimeData};
use remotemedia_speech::{Moonshine, MoonshineASRNode};
use serde_json::json;

/// "Worstward Ho" (Samuel Beckett, 1983), as read in `beckett.wav`.
const BECKETT: &str = include_str!("../../../examples/transcripts/beckett.txt");
/// "A Tale of Two Cities" (Charles Dickens, 1859), the opening sentence as printed, which is
/// what `two_cities.wav` reads.
const TWO_CITIES: &str = include_str!("../../../examples/transcripts/two_cities.txt");
/// The target of the issue: at most 10 % of words wrong.
const MAX_WER: f64 = 0.10;
/// Silence in front of the recording, so the spans are checked away from time zero.
const LEAD_S: f64 = 1.0;

fn models_dir() -> PathBuf {
    remotemedia_speech::models::models_dir()
}

/// A recording as it is on disk (any rate, interleaved); fails with the setup command.
fn recording(name: &str) -> remotemedia_audio::decode::Decoded {
    let path = models_dir().join("samples").join(name);
    remotemedia_audio::decode::read_all(&path)
        .unwrap_or_else(|e| panic!("{e}; install the models with ./scripts/setup-models.sh"))
}

/// Runs an example manifest over `LEAD_S` of silence then the recording, at the recording's own
/// rate and channel count; returns every output packet.
async fn run_example(name: &str, recording: &remotemedia_audio::decode::Decoded) -> Vec<Packet> {
    let (rate, channels) = (recording.sample_rate, recording.channels);
    let lead = vec![0.0; (LEAD_S * f64::from(rate)) as usize * usize::from(channels)];
    let samples = [&lead[..], &recording.samples].concat();
    common::run_example(name, samples, rate, channels).await
}

/// Text, span and packet timestamp of every transcript, checked to be final text.
fn transcripts(out: &[Packet]) -> Vec<(String, (f64, f64), f64)> {
    out.iter()
        .map(|p| {
            let t = p.data.as_text().expect("only text leaves the pipeline");
            assert!(t.is_final, "{t:?}");
            let (start, end) = t.span.expect("every transcript has a span");
            (
                t.text.to_string(),
                (start.as_secs_f64(), end.as_secs_f64()),
                p.timestamp.as_secs_f64(),
            )
        })
        .collect()
}

/// Runs one recording through the example; returns the joined text and its word edits.
async fn transcribe(name: &str, reference: &str) -> (String, usize, usize) {
    let texts = transcripts(&run_example("transcribe.yaml", &recording(name)).await);
    let joined = texts
        .iter()
        .map(|t| t.0.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (edits, words) = word_edits(reference, &joined);
    eprintln!(
        "{name}: WER {:.1} % ({edits}/{words}): {joined}",
        100.0 * edits as f64 / words as f64
    );
    for (text, (start, end), _) in &texts {
        eprintln!("  {start:6.2}-{end:6.2} {text}");
    }
    (joined, edits, words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_transcribed_within_the_target_word_error_rate() {
    let (beckett, b_edits, b_words) = transcribe("beckett.wav", BECKETT).await;
    let (cities, c_edits, c_words) = transcribe("two_cities.wav", TWO_CITIES).await;
    let set = (b_edits + c_edits) as f64 / (b_words + c_words) as f64;
    eprintln!("both: WER {:.1} %", set * 100.0);
    assert!(
        set <= MAX_WER,
        "WER {:.1} % over both recordings, above {:.0} %\n  {beckett}\n  {cities}",
        set * 100.0,
        MAX_WER * 100.0
    );
    assert!(
        c_edits as f64 / c_words as f64 <= MAX_WER,
        "two_cities.wav: {c_edits}/{c_words} words wrong\n  heard: {cities}\n  read:  {TWO_CITIES}"
    );
    assert!(
        b_edits <= 2,
        "beckett.wav: {b_edits}/{b_words} words wrong\n  heard: {beckett}\n  read:  {BECKETT}"
    );
}

/// Every transcript is stamped with and spans exactly one utterance of the segmenter (the same
/// pipeline without the recogniser, on the same input), in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_carry_the_span_of_their_utterance_in_order() {
    let rec = recording("beckett.wav");
    let texts = transcripts(&run_example("transcribe.yaml", &rec).await);
    let utterances: Vec<(f64, f64)> = run_example("speech_segments.yaml", &rec)
        .await
        .iter()
        .map(|p| {
            let a = p.data.as_audio().expect("only utterances");
            let start = p.timestamp.as_secs_f64();
            (start, start + a.duration().as_secs_f64())
        })
        .collect();
    assert!(texts.len() >= 2, "{texts:?}");
    assert!(texts.len() <= utterances.len(), "{texts:?} {utterances:?}");
    for (text, (start, end), stamp) in &texts {
        assert_eq!(stamp, start, "{text}: stamped with its start");
        assert!(end > start, "{text}: {start}-{end}");
        assert!(
            utterances
                .iter()
                .any(|u| (u.0 - start).abs() < 1e-6 && (u.1 - end).abs() < 1e-6),
            "{text}: span {start:.3}-{end:.3} is no utterance of {utterances:?}"
        );
        assert!(*start >= LEAD_S, "{text}: starts before the recording");
    }
    assert!(
        texts.windows(2).all(|w| w[0].1.1 <= w[1].1.0),
        "ordered, no overlap: {texts:?}"
    );
}

fn asr() -> NodeHarness {
    NodeHarness::new::<MoonshineASRNode>(json!({})).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn audio_at_the_wrong_rate_or_in_stereo_is_a_clear_error() {
    let mut h = asr();
    let err = h
        .push(RuntimeData::audio(vec![0.0; 48_000], 48_000, 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "MoonshineASR expects mono 16000 Hz audio, got 1 channel at 48000 Hz; resample first"
    );
    assert!(!err.is_retryable());
    let err = h
        .push(RuntimeData::audio(vec![0.0; 32_000], 16_000, 2))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "MoonshineASR expects mono 16000 Hz audio, got 2 channels at 16000 Hz; \
         downmix and resample first"
    );
    let err = h.push(RuntimeData::text("hello")).await.unwrap_err();
    assert_eq!(err.message, "MoonshineASR cannot process text data");
}

/// Runs on a current-thread runtime, so inference takes the blocking-pool path.
#[tokio::test]
async fn empty_short_and_silent_utterances_give_no_output_and_no_error() {
    let mut h = asr();
    assert!(
        h.push(RuntimeData::audio(Vec::new(), 16_000, 1))
            .await
            .unwrap()
            .is_empty()
    );
    // 50 ms of speech: too short for the model, skipped before it runs.
    let rec = recording("beckett.wav");
    let speech = rec.samples[6_000..6_800].to_vec();
    assert!(
        h.push(RuntimeData::audio(speech, 16_000, 1))
            .await
            .unwrap()
            .is_empty()
    );
    // One second of digital silence (a muted input): skipped, not hallucinated into a word.
    assert!(
        h.push(RuntimeData::audio(vec![0.0; 16_000], 16_000, 1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(h.flush().await.unwrap().is_empty());
}

#[tokio::test]
async fn one_utterance_gives_one_final_text_with_its_span() {
    let rec = recording("beckett.wav");
    let mut h = asr();
    h.timestamp = Duration::from_millis(2_500);
    // "Ever tried." (0.11-1.52 s in the recording).
    let out = h
        .push_outputs(
            0,
            RuntimeData::audio(rec.samples[1_600..24_800].to_vec(), 16_000, 1),
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].timestamp, Some(Duration::from_millis(2_500)));
    let t = out[0].data.as_text().unwrap();
    assert!(t.is_final);
    assert_eq!(normalise(&t.text), ["ever", "tried"], "{t:?}");
    let (start, end) = t.span.unwrap();
    assert_eq!(start, Duration::from_millis(2_500));
    // 23 200 samples later.
    assert!((end.as_secs_f64() - 3.95).abs() < 1e-6, "{end:?}");
}

#[tokio::test]
async fn an_utterance_longer_than_the_model_takes_is_a_clear_error() {
    let mut h = asr();
    let err = h
        .push(RuntimeData::audio(vec![0.0; 16_000 * 65], 16_000, 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "MoonshineASR: utterances of at most 64 s, got 65.0 s; cut them shorter upstream \
         (SpeechSegmenter max_utterance_ms)"
    );
}

/// A scratch model directory, removed on drop.
struct TempModel(PathBuf);

impl TempModel {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "remotemedia-moonshine-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn garbage(&self, file: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, b"this is not a model, it is a damaged download").unwrap();
        path
    }

    fn link_real(&self, file: &str) {
        let real = models_dir()
            .join(remotemedia_speech::models::MOONSHINE_TINY_EN_DIR)
            .join(file);
        remotemedia_speech::models::require_file(&real).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&real, self.0.join(file)).unwrap();
    }

    fn open(&self) -> String {
        match NodeHarness::new::<MoonshineASRNode>(json!({"model": self.0})) {
            Ok(_) => panic!("a broken model directory was accepted"),
            Err(e) => {
                assert!(!e.is_retryable());
                e.message
            }
        }
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_in(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn a_missing_model_file_is_named_with_the_setup_command() {
    let m = TempModel::new("missing");
    m.link_real("encoder_model.ort");
    m.link_real("tokenizer.bin");
    assert_eq!(
        m.open(),
        format!(
            "MoonshineASR: missing model file {}; install the models with \
             ./scripts/setup-models.sh",
            file_in(&m.0, "decoder_model_merged.ort")
        )
    );
}

#[test]
fn a_corrupt_tokenizer_is_a_clear_error() {
    let m = TempModel::new("tokenizer");
    m.link_real("encoder_model.ort");
    m.link_real("decoder_model_merged.ort");
    let bad = m.garbage("tokenizer.bin");
    let msg = m.open();
    assert!(
        msg.starts_with(&format!(
            "MoonshineASR: could not load model {}: not a Moonshine tokenizer: ",
            bad.display()
        )) && msg.ends_with("if the file is damaged, delete it and run ./scripts/setup-models.sh"),
        "{msg}"
    );
}

#[test]
fn a_corrupt_model_file_is_a_clear_error() {
    let m = TempModel::new("encoder");
    m.link_real("decoder_model_merged.ort");
    m.link_real("tokenizer.bin");
    let bad = m.garbage("encoder_model.ort");
    let msg = m.open();
    assert!(
        msg.starts_with(&format!(
            "MoonshineASR: could not load model {}: ",
            bad.display()
        )) && msg.ends_with("if the file is damaged, delete it and run ./scripts/setup-models.sh"),
        "{msg}"
    );
}

#[test]
fn model_files_swapped_for_each_other_are_rejected() {
    let m = TempModel::new("swapped");
    // The encoder where the decoder should be: loads, but has the wrong signature.
    std::os::unix::fs::symlink(
        models_dir()
            .join(remotemedia_speech::models::MOONSHINE_TINY_EN_DIR)
            .join("encoder_model.ort"),
        m.0.join("decoder_model_merged.ort"),
    )
    .unwrap();
    m.link_real("encoder_model.ort");
    m.link_real("tokenizer.bin");
    let msg = m.open();
    assert!(
        msg.starts_with(&format!(
            "MoonshineASR: could not load model {}: not a Moonshine merged decoder: ",
            file_in(&m.0, "decoder_model_merged.ort")
        )),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_session_model_transcribes_as_the_shared_one() {
    let rec = recording("beckett.wav");
    let clause = RuntimeData::audio(rec.samples[1_600..24_800].to_vec(), 16_000, 1);
    let mut texts = Vec::new();
    for sharing in ["shared", "per_session"] {
        let params = json!({"sharing": sharing, "workers": 2});
        let mut h = NodeHarness::new::<MoonshineASRNode>(params).unwrap_or_else(|e| panic!("{e}"));
        let out = h.push(clause.clone()).await.unwrap();
        texts.push(out[0].as_text().unwrap().text.to_string());
    }
    assert_eq!(texts[0], texts[1]);
    assert_eq!(normalise(&texts[0]), ["ever", "tried"]);
}

/// The utterances the default pipeline's segmenter cuts out of both recordings (16 kHz mono).
async fn utterances() -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for name in ["two_cities.wav", "beckett.wav"] {
        for p in run_example("speech_segments.yaml", &recording(name)).await {
            out.push(
                p.data
                    .as_audio()
                    .expect("only utterances")
                    .samples()
                    .to_vec(),
            );
        }
    }
    out
}

/// Decoding utterances together (their steps batched, each with its own cache, each leaving
/// the batch when its text ends) gives them the texts they get alone, and reports each as soon
/// as it is done: the shortest texts first. Not always bit for bit: the export quantizes
/// activations with one scale per tensor, so a row's numbers depend slightly on its batch, and
/// a near-tie between two words can flip (measured: one utterance of 18, "direct to heaven" →
/// "direct a haven", in 2 of 12 batch compositions; none at batch sizes 4 and up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utterances_decoded_as_a_batch_get_the_texts_they_get_alone() {
    let utterances = utterances().await;
    assert!(utterances.len() >= 12, "{} utterances", utterances.len());
    let m = Moonshine::new(&Moonshine::default_model(), 1, 6.5).unwrap_or_else(|e| panic!("{e}"));
    let alone: Vec<String> = utterances
        .iter()
        .map(|u| m.transcribe(u).unwrap().text)
        .collect();
    let reference = format!("{TWO_CITIES} {BECKETT}");
    let (alone_edits, _) = word_edits(&reference, &alone.join(" "));
    for batch in [2, 4, 8, utterances.len()] {
        let mut texts = vec![String::new(); utterances.len()];
        for (b, chunk) in utterances.chunks(batch).enumerate() {
            let rows: Vec<&[f32]> = chunk.iter().map(Vec::as_slice).collect();
            let mut order = Vec::new();
            m.transcribe_batch(&rows, &mut |i, t| order.push((i, t.unwrap())));
            assert_eq!(order.len(), rows.len(), "one result per utterance");
            let tokens: Vec<usize> = order.iter().map(|(_, t)| t.tokens).collect();
            assert!(tokens.is_sorted(), "reported as they end: {tokens:?}");
            for (i, t) in order {
                texts[b * batch + i] = t.text;
            }
        }
        let differ: Vec<(&String, &String)> =
            texts.iter().zip(&alone).filter(|(a, b)| a != b).collect();
        let (edits, words) = word_edits(&reference, &texts.join(" "));
        eprintln!(
            "batches of {batch}: {edits}/{words} words wrong (alone {alone_edits}), {differ:?}"
        );
        assert!(differ.len() <= 1, "batches of {batch}: {differ:?}");
        assert!(
            edits <= alone_edits + 2,
            "batches of {batch}: {edits} edits, alone {alone_edits}"
        );
    }
}
