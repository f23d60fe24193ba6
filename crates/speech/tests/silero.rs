//! SileroVAD on the real model and a real recording.
//!
//! These tests need `./scripts/setup-models.sh` to have run; without it they fail with the
//! message that says so (they never skip).
//!
//! The recording is `beckett.wav` (16 kHz mono, 10 s of a person reading, in six phrases,
//! shipped in the `moonshine-voice` wheel). Where its speech starts and ends was read off its own
//! 10 ms energy envelope (room noise sits at -50 to -60 dBFS, speech at -20 to -30): the voice
//! rises out of the noise at 0.32-0.34 s (-43, -40, -32 dBFS), so 0.33 s, and the last word
//! decays below -50 dBFS at 8.80 s. A short low-frequency thump at 8.87-8.93 s (spectral
//! centroid ~400 Hz against ~1.2 kHz for the speech) and breathing after it are not speech.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remotemedia_audio::VadEvent;
use remotemedia_core::testing::NodeHarness;
use remotemedia_core::{AudioFrame, Control, Node, NodeContext, NodeType, Outputs, RuntimeData};
use remotemedia_speech::SileroVADNode;
use serde_json::json;

const RATE: u32 = 16_000;
const PAD_S: f64 = 1.5;
const SPEECH_START_S: f64 = 0.33;
const SPEECH_END_S: f64 = 8.80;
const TOLERANCE_S: f64 = 0.100;

fn models_dir() -> PathBuf {
    remotemedia_speech::models::models_dir()
}

/// The recording as f32 samples; fails with the setup command when it is missing.
fn beckett() -> Vec<f32> {
    let path = models_dir().join("samples/beckett.wav");
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; install the models with ./scripts/setup-models.sh",
            path.display()
        )
    });
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (RATE, 1), "{spec:?}");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

/// Quiet white noise (-60 dBFS RMS, the level of the recording's own room noise) from a fixed seed, so the padding sounds like the room
/// rather than digital zero.
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Uniform in [-0.5, 0.5) has RMS 1/sqrt(12).
            ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.001 * 12f32.sqrt()
        })
        .collect()
}

fn padded_recording() -> Vec<f32> {
    let pad = (PAD_S * f64::from(RATE)) as usize;
    let speech = beckett();
    let mut out = noise(pad, 1);
    let floor = noise(speech.len(), 2);
    out.extend(speech.iter().zip(&floor).map(|(s, n)| s + n));
    out.extend(noise(pad, 3));
    out
}

fn harness(params: serde_json::Value) -> NodeHarness {
    NodeHarness::new::<SileroVADNode>(params).unwrap_or_else(|e| panic!("{e}"))
}

/// Pushes `samples` in frames of `frame_ms`, then flushes; returns everything emitted.
async fn run(h: &mut NodeHarness, samples: &[f32], frame_ms: usize) -> Vec<RuntimeData> {
    let frame = RATE as usize * frame_ms / 1000;
    let mut out = Vec::new();
    for (i, chunk) in samples.chunks(frame).enumerate() {
        h.timestamp = Duration::from_secs_f64((i * frame) as f64 / f64::from(RATE));
        let input = AudioFrame::new(chunk.to_vec(), RATE, 1);
        let emitted = h.push(RuntimeData::Audio(input.clone())).await.unwrap();
        // The frame comes first, unchanged and uncopied; events follow it.
        let passed = emitted[0].as_audio().expect("audio first");
        assert!(passed.shares_samples_with(&input));
        assert!(
            emitted[1..]
                .iter()
                .all(|d| VadEvent::from_data(d).is_some())
        );
        out.extend(emitted);
    }
    out.extend(h.flush().await.unwrap());
    out
}

fn events(out: &[RuntimeData]) -> Vec<VadEvent> {
    out.iter().filter_map(VadEvent::from_data).collect()
}

fn speech_events(out: &[RuntimeData]) -> Vec<VadEvent> {
    events(out)
        .into_iter()
        .filter(|e| !matches!(e, VadEvent::Probability { .. }))
        .collect()
}

fn probabilities(out: &[RuntimeData]) -> Vec<(f64, f32)> {
    events(out)
        .into_iter()
        .filter_map(|e| match e {
            VadEvent::Probability { time, probability } => Some((time, probability)),
            _ => None,
        })
        .collect()
}

fn secs(e: &VadEvent) -> f64 {
    e.time().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_speech_start_and_end_in_a_real_recording() {
    let audio = padded_recording();
    // No padding: the events are where the model put the boundaries.
    let mut h = harness(json!({"speech_pad_ms": 0}));
    let out = run(&mut h, &audio, 20).await;
    let ev = speech_events(&out);
    assert!(ev.len() >= 2 && ev.len().is_multiple_of(2), "{ev:?}");
    for (i, e) in ev.iter().enumerate() {
        let is_start = matches!(e, VadEvent::SpeechStart { .. });
        assert_eq!(is_start, i % 2 == 0, "events alternate: {ev:?}");
    }
    assert!(ev.windows(2).all(|w| secs(&w[0]) <= secs(&w[1])), "{ev:?}");
    let (start, end) = (secs(&ev[0]), secs(&ev[ev.len() - 1]));
    let (want_start, want_end) = (PAD_S + SPEECH_START_S, PAD_S + SPEECH_END_S);
    eprintln!("speech {start:.3}..{end:.3} s, truth {want_start:.3}..{want_end:.3} s: {ev:?}");
    assert!(
        (start - want_start).abs() <= TOLERANCE_S,
        "speech start at {start:.3} s, truth {want_start:.3} s"
    );
    assert!(
        (end - want_end).abs() <= TOLERANCE_S,
        "speech end at {end:.3} s, truth {want_end:.3} s"
    );
    // Every input frame came back out.
    let frames = out.iter().filter(|d| d.as_audio().is_some()).count();
    assert_eq!(frames, audio.len().div_ceil(320));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_padding_widens_the_region() {
    let audio = padded_recording();
    let mut h = harness(json!({}));
    let ev = speech_events(&run(&mut h, &audio, 32).await);
    let mut bare = harness(json!({"speech_pad_ms": 0}));
    let bare_ev = speech_events(&run(&mut bare, &audio, 32).await);
    assert_eq!(ev.len(), bare_ev.len(), "{ev:?} vs {bare_ev:?}");
    assert!((secs(&bare_ev[0]) - secs(&ev[0]) - 0.030).abs() < 1e-6);
    let last = ev.len() - 1;
    assert!((secs(&ev[last]) - secs(&bare_ev[last]) - 0.030).abs() < 1e-6);
}

#[tokio::test]
async fn silence_and_a_pure_tone_are_not_speech() {
    let mut h = harness(json!({"emit_probability": true}));
    let silence = vec![0.0f32; 3 * RATE as usize];
    let out = run(&mut h, &silence, 20).await;
    assert!(speech_events(&out).is_empty(), "{:?}", speech_events(&out));
    assert_eq!(probabilities(&out).len(), silence.len().div_ceil(512));

    let mut h = harness(json!({"emit_probability": true}));
    let tone: Vec<f32> = (0..3 * RATE)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / RATE as f32).sin())
        .collect();
    let out = run(&mut h, &tone, 20).await;
    assert!(speech_events(&out).is_empty(), "{:?}", speech_events(&out));
    let max = probabilities(&out)
        .iter()
        .map(|p| p.1)
        .fold(0.0f32, f32::max);
    assert!(max < 0.5, "tone scored {max}");
}

#[tokio::test]
async fn probabilities_do_not_depend_on_frame_size() {
    let audio = padded_recording();
    let audio = &audio[..5 * RATE as usize];
    let mut by_size = Vec::new();
    for frame_ms in [20, 100, 7] {
        let mut h = harness(json!({"emit_probability": true}));
        by_size.push(probabilities(&run(&mut h, audio, frame_ms).await));
    }
    assert_eq!(by_size[0].len(), audio.len().div_ceil(512));
    assert_eq!(by_size[0], by_size[1], "20 ms vs 100 ms frames");
    assert_eq!(by_size[0], by_size[2], "20 ms vs 7 ms frames");
    // Windows are 32 ms apart from the first packet's timestamp.
    assert!((by_size[0][1].0 - 0.032).abs() < 1e-9);
    assert!(by_size[0].iter().any(|p| p.1 > 0.9), "speech scored high");
}

#[tokio::test]
async fn wrong_rate_or_channels_is_a_clear_error() {
    let mut h = harness(json!({}));
    let err = h
        .push(RuntimeData::audio(vec![0.0; 960], 48_000, 1))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(
        err.message,
        "SileroVAD expects mono 16000 Hz audio, got 1 channel at 48000 Hz; resample first"
    );
    let err = h
        .push(RuntimeData::audio(vec![0.0; 1920], 48_000, 2))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "SileroVAD expects mono 16000 Hz audio, got 2 channels at 48000 Hz; \
         downmix and resample first"
    );
    let err = h.push(RuntimeData::text("hi")).await.unwrap_err();
    assert_eq!(err.message, "SileroVAD cannot process text data");

    let mut h = harness(json!({"sample_rate": 8000}));
    let err = h
        .push(RuntimeData::audio(vec![0.0; 320], 16_000, 1))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "SileroVAD expects mono 8000 Hz audio, got 1 channel at 16000 Hz; resample first"
    );

    let err = NodeHarness::new::<SileroVADNode>(json!({"sample_rate": 44100})).err();
    assert_eq!(
        err.map(|e| e.message).as_deref(),
        Some("SileroVAD: sample_rate must be 16000 or 8000, not 44100")
    );
}

#[tokio::test]
async fn eight_khz_uses_256_sample_windows() {
    let mut h = harness(json!({"sample_rate": 8000, "emit_probability": true}));
    let out = run_at(&mut h, &vec![0.0; 8000], 8000, 20).await;
    let p = probabilities(&out);
    // 31 full windows and the zero-padded rest at the flush.
    assert_eq!(p.len(), 32);
    assert!((p[1].0 - 0.032).abs() < 1e-9);
}

async fn run_at(h: &mut NodeHarness, samples: &[f32], rate: u32, ms: usize) -> Vec<RuntimeData> {
    let mut out = Vec::new();
    for chunk in samples.chunks(rate as usize * ms / 1000) {
        out.extend(
            h.push(RuntimeData::audio(chunk.to_vec(), rate, 1))
                .await
                .unwrap(),
        );
    }
    out.extend(h.flush().await.unwrap());
    out
}

#[tokio::test]
async fn flush_closes_speech_still_open_at_the_end() {
    let audio = padded_recording();
    let cut = ((PAD_S + 2.5) * f64::from(RATE)) as usize + 100;
    let mut h = harness(json!({}));
    let ev = speech_events(&run(&mut h, &audio[..cut], 20).await);
    let last = ev.last().copied();
    assert!(
        matches!(last, Some(VadEvent::SpeechEnd { time }) if (time - cut as f64 / f64::from(RATE)).abs() < 1e-6),
        "{ev:?}"
    );
}

#[tokio::test]
async fn cancel_starts_over() {
    let audio = padded_recording();
    let clip = &audio[RATE as usize..4 * RATE as usize];
    let mut fresh = harness(json!({"emit_probability": true}));
    let want = probabilities(&run(&mut fresh, clip, 20).await);

    // A node that has heard other speech, then is cancelled, scores the clip like a fresh one.
    let params: <SileroVADNode as NodeType>::Params =
        serde_json::from_value(json!({"emit_probability": true})).unwrap();
    let ctx = NodeContext {
        session_id: "t".into(),
        node_id: "vad".into(),
    };
    let mut node = SileroVADNode::new(params, &ctx).unwrap();
    let mut out = Outputs::default();
    let packet = |data, ts| remotemedia_core::Packet {
        data,
        session: Arc::from("t"),
        source: Arc::from("in"),
        port: Arc::from("out"),
        seq: 0,
        timestamp: ts,
        captured: std::time::Instant::now(),
    };
    node.process(
        0,
        &packet(
            RuntimeData::audio(
                audio[2 * RATE as usize..3 * RATE as usize].to_vec(),
                RATE,
                1,
            ),
            Duration::from_secs(7),
        ),
        &mut out,
    )
    .await
    .unwrap();
    node.control(
        &Control::Cancel {
            reason: "barge-in".into(),
        },
        &mut out,
    )
    .await
    .unwrap();
    let mut h = NodeHarness::from_node(node);
    let got = probabilities(&run(&mut h, clip, 20).await);
    assert_eq!(got, want);
}

#[test]
fn missing_model_names_the_file_and_the_setup_command() {
    let err = NodeHarness::new::<SileroVADNode>(json!({"model": "/nonexistent/silero_vad.onnx"}))
        .err()
        .map(|e| e.message);
    assert_eq!(
        err.as_deref(),
        Some(
            "SileroVAD: missing model file /nonexistent/silero_vad.onnx; \
             install the models with ./scripts/setup-models.sh"
        )
    );
}

/// Runs in a child process so the models directory can come from the environment (and ONNX
/// Runtime is not loaded yet), exactly as for a user who has not run the setup script.
#[test]
fn missing_models_dir_names_the_file_and_the_setup_command() {
    const CHILD: &str = "REMOTEMEDIA_SPEECH_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let dir = models_dir();
        let err = NodeHarness::new::<SileroVADNode>(json!({}))
            .err()
            .map(|e| e.message);
        assert_eq!(
            err,
            Some(format!(
                "SileroVAD: missing model file {}; install the models with \
                 ./scripts/setup-models.sh",
                dir.join("silero-vad/silero_vad_openvino_16k.onnx")
                    .display()
            ))
        );
        // With the model but without the runtime, the runtime is what is named.
        let model = dir.join("silero-vad/silero_vad_openvino_16k.onnx");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::copy(std::env::var_os("REAL_MODEL").unwrap(), &model).unwrap();
        let err = NodeHarness::new::<SileroVADNode>(json!({}))
            .err()
            .map(|e| e.message);
        assert_eq!(
            err,
            Some(format!(
                "SileroVAD: missing model file {}; install the models with \
                 ./scripts/setup-models.sh",
                dir.join("onnxruntime/libonnxruntime.so").display()
            ))
        );
        return;
    }
    let real_model = models_dir().join("silero-vad/silero_vad_openvino_16k.onnx");
    assert!(
        real_model.is_file(),
        "missing model file {}; install the models with ./scripts/setup-models.sh",
        real_model.display()
    );
    let empty = std::env::temp_dir().join(format!("remotemedia-no-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "missing_models_dir_names_the_file_and_the_setup_command",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("REMOTEMEDIA_MODELS", &empty)
        .env("REAL_MODEL", &real_model)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    assert!(
        child.status.success(),
        "child test failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}

#[test]
fn registered_with_its_params_in_the_schema() {
    let mut registry = remotemedia_core::NodeRegistry::new();
    remotemedia_speech::register(&mut registry);
    let info = registry
        .infos()
        .find(|i| i.name == "SileroVAD")
        .expect("registered");
    let props = &info.params_schema["properties"];
    for p in [
        "threshold",
        "neg_threshold",
        "min_speech_ms",
        "min_silence_ms",
        "speech_pad_ms",
        "sample_rate",
        "threads",
        "emit_probability",
        "model",
    ] {
        assert!(props.get(p).is_some(), "{p} missing from {props}");
    }
    assert_eq!(info.outputs[0].media.len(), 2);
}

/// Outputs are checked directly (the harness returns data only): audio inherits the input's
/// timestamp, each event is stamped with its own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_packets_are_stamped_with_the_event_time() {
    let audio = padded_recording();
    let params = serde_json::from_value(json!({})).unwrap();
    let ctx = NodeContext {
        session_id: "t".into(),
        node_id: "vad".into(),
    };
    let mut node = SileroVADNode::new(params, &ctx).unwrap();
    let mut out = Outputs::default();
    let mut stamped = Vec::new();
    for (i, chunk) in audio[..5 * RATE as usize].chunks(320).enumerate() {
        let packet = remotemedia_core::Packet {
            data: RuntimeData::audio(chunk.to_vec(), RATE, 1),
            session: Arc::from("t"),
            source: Arc::from("in"),
            port: Arc::from("out"),
            seq: i as u64,
            timestamp: Duration::from_millis(20 * i as u64),
            captured: std::time::Instant::now(),
        };
        node.process(0, &packet, &mut out).await.unwrap();
        stamped.extend(out.drain().map(|o| (o.port, o.data, o.timestamp)));
    }
    let mut events = 0;
    for (port, data, ts) in &stamped {
        assert_eq!(*port, 0);
        match VadEvent::from_data(data) {
            Some(e) => {
                events += 1;
                assert_eq!(*ts, Some(e.time()));
            }
            None => assert_eq!(*ts, None, "audio keeps the input's timestamp"),
        }
    }
    assert!(events >= 2, "{events} events");
}

/// The node's default at 16 kHz is the authors' 16 kHz-only export; it must score exactly like
/// the general model (the one the Python package loads) on real speech.
#[test]
fn the_16k_export_scores_like_the_general_model() {
    use remotemedia_speech::SileroVad;
    let audio = padded_recording();
    let general = models_dir().join("silero-vad/silero_vad.onnx");
    let mut a = SileroVad::new(&general, RATE, 1).unwrap_or_else(|e| panic!("{e}"));
    let mut b = SileroVad::new(&SileroVad::default_model(RATE), RATE, 1).unwrap();
    let mut worst = 0f32;
    let mut speech = 0;
    for w in audio.chunks_exact(512) {
        let (pa, pb) = (a.probability(w).unwrap(), b.probability(w).unwrap());
        assert_eq!(pa >= 0.5, pb >= 0.5);
        speech += usize::from(pa >= 0.5);
        worst = worst.max((pa - pb).abs());
    }
    assert!(worst < 1e-4, "probabilities differ by up to {worst}");
    assert!(speech > 100, "the recording has speech ({speech} windows)");
}

/// `device: cpu` runs; `device: cuda` in a build without the `cuda` feature is refused with the
/// reason, never silently moved to the CPU.
#[cfg(not(feature = "cuda"))]
#[tokio::test]
async fn device_param_runs_on_the_cpu_and_refuses_cuda_it_cannot_have() {
    let mut h = harness(json!({"device": "cpu"}));
    let out = run(&mut h, &padded_recording(), 20).await;
    assert_eq!(speech_events(&out).len() % 2, 0);
    assert!(!speech_events(&out).is_empty());
    let err = NodeHarness::new::<SileroVADNode>(json!({"device": "cuda"}))
        .err()
        .map(|e| e.message);
    assert_eq!(
        err.as_deref(),
        Some(
            "SileroVAD: device `cuda` requested, but this build has no CUDA support \
             (rebuild with `--features cuda`)"
        )
    );
}
