//! The example pipelines end to end on a real recording, through the session router: format
//! conversion, resampling, voice activity detection and segmentation working together, with the
//! times they report checked against the recording.
//!
//! Needs `./scripts/setup-models.sh` (fails, never skips, without it). The truth boundaries of
//! `beckett.wav` (speech from 0.33 s to 8.80 s) are explained in `silero.rs`.

mod common;

use remotemedia_audio::VadEvent;
use remotemedia_core::testing::NodeHarness;
use remotemedia_core::{Packet, RuntimeData};

const PAD_S: f64 = 1.5;
const SPEECH_START_S: f64 = 0.33;
const SPEECH_END_S: f64 = 8.80;
/// Input of the pipeline: what a 44.1 kHz stereo capture would deliver.
const RATE: u32 = 44_100;

/// beckett.wav with 1.5 s of silence each side, resampled to 44.1 kHz stereo by our own node.
async fn capture() -> Vec<f32> {
    let path = remotemedia_speech::models::models_dir().join("samples/beckett.wav");
    let decoded = remotemedia_audio::decode::read_all(&path)
        .unwrap_or_else(|e| panic!("{e}; install the models with ./scripts/setup-models.sh"));
    let pad = vec![0.0; (PAD_S * f64::from(decoded.sample_rate)) as usize];
    let mono: Vec<f32> = [&pad[..], &decoded.samples, &pad[..]].concat();
    let mut h = NodeHarness::new::<remotemedia_audio::AudioResample>(
        serde_json::json!({"target_rate": RATE}),
    )
    .unwrap();
    let mut up = Vec::new();
    for d in h
        .push(RuntimeData::audio(mono, decoded.sample_rate, 1))
        .await
        .unwrap()
    {
        up.extend_from_slice(d.as_audio().unwrap().samples());
    }
    for d in h.flush().await.unwrap() {
        up.extend_from_slice(d.as_audio().unwrap().samples());
    }
    up.iter().flat_map(|&s| [s, s]).collect()
}

/// Runs an example manifest over the capture; returns every output packet.
async fn run_example(name: &str) -> Vec<Packet> {
    common::run_example(name, capture().await, RATE, 2).await
}

fn near(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: {got:.3} s, expected {want:.3} s ± {tolerance} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_segments_example_cuts_the_recording_into_timed_utterances() {
    let out = run_example("speech_segments.yaml").await;
    let utterances: Vec<(f64, f64)> = out
        .iter()
        .map(|p| {
            let a = p
                .data
                .as_audio()
                .expect("only utterances leave the pipeline");
            assert_eq!((a.sample_rate, a.channels), (16_000, 1));
            let start = p.timestamp.as_secs_f64();
            (start, start + a.duration().as_secs_f64())
        })
        .collect();
    assert!(utterances.len() >= 2, "{utterances:?}");
    assert!(
        utterances.windows(2).all(|w| w[0].1 <= w[1].0),
        "ordered, no overlap: {utterances:?}"
    );
    // The example pads each start by 30 ms (VAD) + 100 ms (pre-roll) and each end by 30 ms.
    near(
        "first utterance start",
        utterances[0].0,
        PAD_S + SPEECH_START_S - 0.13,
        0.1,
    );
    let last = utterances.last().unwrap().1;
    near("last utterance end", last, PAD_S + SPEECH_END_S + 0.03, 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_vad_example_finds_the_same_speech_without_a_model() {
    let out = run_example("energy_vad.yaml").await;
    let events: Vec<VadEvent> = out
        .iter()
        .filter_map(|p| VadEvent::from_data(&p.data))
        .collect();
    let audio = out.iter().filter(|p| p.data.as_audio().is_some()).count();
    assert!(audio > 500, "audio passes through the VAD ({audio} frames)");
    let starts: Vec<f64> = events
        .iter()
        .filter(|e| matches!(e, VadEvent::SpeechStart { .. }))
        .map(|e| e.time().as_secs_f64())
        .collect();
    let ends: Vec<f64> = events
        .iter()
        .filter(|e| matches!(e, VadEvent::SpeechEnd { .. }))
        .map(|e| e.time().as_secs_f64())
        .collect();
    assert_eq!(starts.len(), ends.len(), "{events:?}");
    // Energy alone also counts the thump right after the last word (8.87-8.93 s) as sound,
    // so its end is allowed 150 ms.
    near("first start", starts[0], PAD_S + SPEECH_START_S - 0.03, 0.1);
    near(
        "last end",
        *ends.last().unwrap(),
        PAD_S + SPEECH_END_S + 0.03,
        0.15,
    );
}
