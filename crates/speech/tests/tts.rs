//! Speech synthesis end to end with the real Piper voice and the real espeak-ng: phonemes,
//! sentence outputs, parameters, and every kind of bad input.
//!
//! Needs `./scripts/setup-system.sh` (espeak-ng) and `./scripts/setup-models.sh` (the voice);
//! fails, never skips, without them.

use std::path::PathBuf;
use std::time::Duration;

use remotemedia_core::node::Output;
use remotemedia_core::testing::NodeHarness;
use remotemedia_core::{ErrorKind, RuntimeBuilder, RuntimeData};
use remotemedia_speech::espeak::{Clause, Espeak};
use remotemedia_speech::piper::Scales;
use remotemedia_speech::{EspeakTTSNode, PiperTTSNode, PiperVoice};
use serde_json::json;

fn voice() -> PiperVoice {
    PiperVoice::load(&PiperVoice::default_model(), 1).unwrap_or_else(|e| panic!("{e}"))
}

async fn piper(params: serde_json::Value) -> NodeHarness {
    NodeHarness::new::<PiperTTSNode>(params).unwrap_or_else(|e| panic!("{e}"))
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

fn seconds(o: &Output) -> f64 {
    o.data.as_audio().unwrap().duration().as_secs_f64()
}

#[test]
fn espeak_phonemes_keep_the_clause_punctuation() {
    let mut e = Espeak::lock().unwrap_or_else(|e| panic!("{e}"));
    e.set_voice("en-us").unwrap();
    let clauses = e.phonemize("Sure, I can help you with that.").unwrap();
    assert_eq!(
        clauses,
        [
            Clause {
                phonemes: "ʃˈʊɹ".into(),
                terminator: Some(',')
            },
            Clause {
                phonemes: "aɪ kæn hˈɛlp juː wɪð ðˈæt".into(),
                terminator: Some('.')
            },
        ]
    );
    // Nothing of one text leaks into the next (espeak-ng reads ahead across calls).
    let clauses = e.phonemize("Why? No!").unwrap();
    let terms: Vec<_> = clauses.iter().map(|c| c.terminator).collect();
    assert_eq!(terms, [Some('?'), Some('!')]);
    assert_eq!(clauses[1].phonemes, "nˈoʊ");
}

#[test]
fn sentences_are_phonemised_with_their_punctuation() {
    let prepared = voice().prepare("Hello world. This is a test.").unwrap();
    let phonemes: Vec<&str> = prepared
        .sentences
        .iter()
        .map(|s| s.phonemes.as_str())
        .collect();
    assert_eq!(phonemes, ["həlˈoʊ wˈɜːld.", "ðɪs ɪz ɐ tˈɛst."]);
    assert!(prepared.unspoken.is_empty());
    // `^`, then each phoneme followed by the pad `_`, then `$`.
    let ids = &prepared.sentences[0].ids;
    assert_eq!((ids[0], ids[1], ids[ids.len() - 1]), (1, 0, 2));
    assert_eq!(ids.len(), 2 + 2 * "həlˈoʊ wˈɜːld.".chars().count() + 1);
    let q = voice().prepare("Is it ready, then?").unwrap();
    assert_eq!(q.sentences[0].phonemes, "ɪz ɪt ɹˈɛdi, ðˈɛn?");
}

/// The voice is cut at its vocoder, and a sentence decoded piece by piece is the sentence
/// decoded whole (the noise is seeded, so both runs see the same latent).
#[test]
fn streamed_pieces_join_into_the_whole_sentence() {
    let v = voice();
    assert!(v.streams(), "the joe voice should split at its vocoder");
    let quiet = v.default_scales();
    let p = v
        .prepare("This sentence is long enough to be decoded in several pieces, one after another.")
        .unwrap();
    let ids = &p.sentences[0].ids;
    let whole = v.synthesize(ids, quiet).unwrap();
    let mut pieces = Vec::new();
    let n = v
        .synthesize_streaming(ids, quiet, |a| pieces.push(a))
        .unwrap();
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());
    // 16 latent frames of 256 samples: about 0.19 s first.
    assert_eq!(pieces[0].len(), 16 * 256);
    let joined = pieces.concat();
    assert_eq!((joined.len(), n), (whole.len(), whole.len()));
    let worst = joined
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "pieces differ from the whole by {worst}");
}

/// The voice puts near silence before each sentence; the node keeps only 10 ms of it, streamed
/// or not, so an answer is heard as soon as its first audio arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sentence_starts_10_ms_before_its_first_sound() {
    let onset = |a: &[f32]| a.iter().position(|x| x.abs() > 0.01).unwrap();
    let v = voice();
    let raw = v.prepare("Paris is the capital of France.").unwrap();
    let raw = v
        .synthesize(&raw.sentences[0].ids, v.default_scales())
        .unwrap();
    assert!(
        onset(&raw) > 882,
        "the voice's own lead: {} samples",
        onset(&raw)
    );
    for stream in [false, true] {
        let mut node = piper(json!({"stream": stream})).await;
        let text = RuntimeData::text("Paris is the capital of France. It is in Europe.");
        let mut out = node.push(text).await.unwrap();
        out.extend(
            node.flush_outputs()
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.data),
        );
        let audio: Vec<f32> = out
            .iter()
            .flat_map(|d| d.as_audio().unwrap().samples().to_vec())
            .collect();
        assert_eq!(onset(&audio), 220, "stream: {stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sentences_become_two_outputs_at_22050_hz() {
    let mut node = piper(json!({})).await;
    node.timestamp = Duration::from_secs(10);
    let out = node
        .push_outputs(0, RuntimeData::text("Hello world. This is a test."))
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
    for o in &out {
        let a = o.data.as_audio().unwrap();
        assert_eq!((a.sample_rate, a.channels), (22_050, 1));
        assert!(rms(a.samples()) > 0.02, "too quiet: {}", rms(a.samples()));
        assert!(a.samples().iter().all(|s| (-1.0..=1.0).contains(s)));
    }
    let total = seconds(&out[0]) + seconds(&out[1]);
    assert!((0.5..=5.0).contains(&total), "{total} s");
    // The first sentence carries the 200 ms pause; the second starts where it ends.
    assert_eq!(out[0].timestamp, Some(Duration::from_secs(10)));
    let second = out[1].timestamp.unwrap() - Duration::from_secs(10);
    assert!((second.as_secs_f64() - seconds(&out[0])).abs() < 1e-4);
    let tail = &out[0].data.as_audio().unwrap().samples();
    assert!(tail[tail.len() - 4410..].iter().all(|&s| s == 0.0));
}

/// Streaming: the same audio (the voice without noise is deterministic), in pieces that start
/// before the sentence is done, stamped one after another; a cancel stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_speech_is_the_same_audio_in_pieces_and_a_cancel_stops_it() {
    let quiet = json!({"noise_scale": 0.0, "noise_w": 0.0, "sentence_silence_ms": 100});
    let text = RuntimeData::text("Hello world. This is a test of streaming speech.");
    let mut whole = piper(quiet.clone()).await;
    let whole: Vec<f32> = whole
        .push(text.clone())
        .await
        .unwrap()
        .iter()
        .flat_map(|d| d.as_audio().unwrap().samples().to_vec())
        .collect();
    let mut params = quiet;
    params["stream"] = json!(true);
    params["with_text"] = json!(true);
    let mut node = piper(params).await;
    node.timestamp = Duration::from_secs(10);
    // The text goes out at once, the audio as it is made.
    let first = node.push(text.clone()).await.unwrap();
    assert_eq!(first, std::slice::from_ref(&text));
    let mut pieces = node.flush_outputs().await.unwrap();
    assert!(pieces.len() > 3, "{} pieces", pieces.len());
    assert!(
        seconds(&pieces[0]) < 0.25,
        "first piece {} s",
        seconds(&pieces[0])
    );
    let mut at = Duration::from_secs(10);
    for p in &pieces {
        assert!((p.timestamp.unwrap().as_secs_f64() - at.as_secs_f64()).abs() < 1e-4);
        at += p.data.as_audio().unwrap().duration();
    }
    let streamed: Vec<f32> = pieces
        .drain(..)
        .flat_map(|p| p.data.as_audio().unwrap().samples().to_vec())
        .collect();
    assert_eq!(streamed.len(), whole.len());
    let diff = streamed
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-3, "streamed audio differs by {diff}");
    // A cancel drops the input being spoken and those waiting.
    node.push(text.clone()).await.unwrap();
    node.push(text).await.unwrap();
    let cancel = remotemedia_core::Control::Cancel {
        reason: "barge-in".into(),
    };
    node.push_control(cancel).await.unwrap();
    assert!(node.flush().await.unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn speed_changes_the_duration() {
    let text = "The weather is lovely today, so let us go for a walk.";
    let at = |speed: f64| async move {
        let mut node = piper(json!({"speed": speed, "noise_w": 0.0})).await;
        let out = node.push_outputs(0, RuntimeData::text(text)).await.unwrap();
        assert_eq!(out.len(), 1);
        seconds(&out[0])
    };
    let normal = at(1.0).await;
    let fast = at(1.5).await;
    let slow = at(0.75).await;
    assert!(fast < normal * 0.8, "1.5x: {fast} s vs {normal} s");
    assert!(slow > normal * 1.2, "0.75x: {slow} s vs {normal} s");
}

#[tokio::test]
async fn blank_input_gives_nothing() {
    let mut node = piper(json!({})).await;
    for text in ["", "   \n\t", "...", "!? —"] {
        assert!(node.push(RuntimeData::text(text)).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn text_the_voice_cannot_read_is_reported_not_dropped() {
    let mut node = piper(json!({})).await;
    for text in ["你好世界。", "😀🎉", "Привет, мир!"] {
        let err = node.push(RuntimeData::text(text)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Rejected, "{err}");
        assert!(
            err.message.starts_with("PiperTTS: nothing to say in ")
                && err
                    .message
                    .contains("a script or symbols this voice cannot read"),
            "{err}"
        );
    }
    let err = node.push(RuntimeData::text("你好世界")).await.unwrap_err();
    assert_eq!(
        err.message,
        "PiperTTS: nothing to say in \"你好世界\": \"你好世界\" (a script or symbols this voice \
         cannot read)"
    );
    // Mixed text: the readable part is spoken.
    let out = node
        .push(RuntimeData::text("Hello 你好 there. 🎉"))
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    // The node is still usable after a report.
    assert_eq!(
        node.push(RuntimeData::text("Fine.")).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_input_is_reported_and_the_session_goes_on() {
    let manifest = "version: v1\n\
        config: {retry: {max_retries: 1, initial_backoff_ms: 1}}\n\
        nodes:\n  - {id: tts, type: PiperTTS}\n";
    let runtime = RuntimeBuilder::new()
        .nodes(remotemedia_speech::register)
        .build()
        .unwrap();
    let pipeline = runtime
        .load(manifest, "tts.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut session = runtime.open(&pipeline).await.unwrap();
    session.send(RuntimeData::text("你好")).await.unwrap();
    session
        .send(RuntimeData::text("Still here."))
        .await
        .unwrap();
    session.end_input();
    let mut failures = Vec::new();
    let mut audio = 0;
    while let Some(item) = session.recv().await {
        match item {
            Ok(p) => audio += usize::from(p.data.as_audio().is_some()),
            Err(f) => failures.push(f),
        }
    }
    assert_eq!(audio, 1);
    assert_eq!(failures.len(), 1);
    assert!(!failures[0].fatal);
    assert!(
        failures[0].message.contains("nothing to say"),
        "{}",
        failures[0]
    );
}

/// `examples/tts.yaml` over `examples/lines.txt`, line by line as the CLI sends a text file:
/// one sentence output per non-blank line, in order, at 22.05 kHz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_speaks_each_line() {
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{root}/examples/tts.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let lines = std::fs::read_to_string(format!("{root}/examples/lines.txt")).unwrap();
    let runtime = RuntimeBuilder::new()
        .nodes(remotemedia_speech::register)
        .build()
        .unwrap();
    let pipeline = runtime
        .load(&manifest, &path)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = runtime.open(&pipeline).await.unwrap();
    for line in lines.lines() {
        session.send(RuntimeData::text(line)).await.unwrap();
    }
    let (packets, _) = session.close().await.unwrap_or_else(|e| panic!("{e}"));
    let spoken = lines.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(packets.len(), spoken);
    for p in &packets {
        let a = p.data.as_audio().unwrap();
        assert_eq!(a.sample_rate, 22_050);
        assert!(
            (0.3..=4.0).contains(&a.duration().as_secs_f64()),
            "{:?}",
            a.duration()
        );
    }
}

#[test]
fn a_missing_model_names_the_file_and_the_setup_command() {
    let err = NodeHarness::new::<PiperTTSNode>(json!({"voice": "/nonexistent/voice.onnx"}))
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::Fatal);
    assert_eq!(
        err.message,
        "PiperTTS: missing model file /nonexistent/voice.onnx; install the models with \
         ./scripts/setup-models.sh"
    );
}

/// A scratch directory holding a copy of (or junk in place of) the voice's two files.
fn scratch(name: &str, model: Option<&[u8]>, config: Option<&[u8]>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remotemedia-tts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("voice.onnx");
    if let Some(bytes) = model {
        std::fs::write(&onnx, bytes).unwrap();
    }
    if let Some(bytes) = config {
        std::fs::write(dir.join("voice.onnx.json"), bytes).unwrap();
    }
    onnx
}

#[test]
fn a_missing_or_corrupt_config_or_model_is_a_clear_error() {
    let real_config = std::fs::read(remotemedia_speech::piper::config_path(
        &PiperVoice::default_model(),
    ))
    .unwrap_or_else(|e| panic!("{e}; install the models with ./scripts/setup-models.sh"));
    let create = |onnx: &PathBuf| {
        NodeHarness::new::<PiperTTSNode>(json!({ "voice": onnx }))
            .err()
            .unwrap()
            .message
    };

    let onnx = scratch("no-config", Some(b"x"), None);
    assert_eq!(
        create(&onnx),
        format!(
            "PiperTTS: missing model file {}.json; install the models with \
             ./scripts/setup-models.sh",
            onnx.display()
        )
    );
    let onnx = scratch("bad-config", Some(b"x"), Some(b"{not json"));
    let msg = create(&onnx);
    assert!(
        msg.starts_with(&format!(
            "PiperTTS: could not load model {}.json: not a Piper voice config",
            onnx.display()
        )),
        "{msg}"
    );
    let onnx = scratch("bad-model", Some(b"not an onnx model"), Some(&real_config));
    let msg = create(&onnx);
    assert!(
        msg.starts_with(&format!(
            "PiperTTS: could not load model {}: ",
            onnx.display()
        )),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(onnx.parent().unwrap());
}

#[tokio::test]
async fn other_input_kinds_are_refused() {
    let mut node = piper(json!({})).await;
    let err = node
        .push(RuntimeData::audio(vec![0.0; 10], 22_050, 1))
        .await
        .unwrap_err();
    assert_eq!(err.message, "PiperTTS cannot process audio data");
}

#[test]
fn bad_params_are_refused_by_the_schema() {
    for (params, want) in [
        (
            json!({"speed": 0.0}),
            "speed: node `PiperTTS`: invalid params: 0.0 is less than the minimum of 0.25",
        ),
        (
            json!({"noise_w": 3.0}),
            "noise_w: node `PiperTTS`: invalid params: 3.0 is greater than the maximum of 2.0",
        ),
        (
            json!({"threads": 0}),
            "threads: node `PiperTTS`: invalid params: 0 is less than the minimum of 1",
        ),
    ] {
        let err = NodeHarness::new::<PiperTTSNode>(params).err().unwrap();
        assert!(err.message.ends_with(want), "{}", err.message);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn espeak_tts_speaks() {
    let mut node = NodeHarness::new::<EspeakTTSNode>(json!({})).unwrap_or_else(|e| panic!("{e}"));
    let out = node
        .push(RuntimeData::text("Hello world. This is a test."))
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    let a = out[0].as_audio().unwrap();
    assert_eq!((a.sample_rate, a.channels), (22_050, 1));
    let secs = a.duration().as_secs_f64();
    assert!((0.8..=5.0).contains(&secs), "{secs} s");
    assert!(rms(a.samples()) > 0.02);
    // A faster rate is shorter.
    let mut fast = NodeHarness::new::<EspeakTTSNode>(json!({"rate": 350})).unwrap();
    let out = fast
        .push(RuntimeData::text("Hello world. This is a test."))
        .await
        .unwrap();
    assert!(out[0].as_audio().unwrap().duration().as_secs_f64() < secs * 0.75);
    assert!(node.push(RuntimeData::text("  ")).await.unwrap().is_empty());
    let err = node.push(RuntimeData::text("你好")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Rejected);
}

#[test]
fn espeak_tts_refuses_an_unknown_voice() {
    let err = NodeHarness::new::<EspeakTTSNode>(json!({"voice": "no-such-voice"}))
        .err()
        .unwrap();
    assert_eq!(
        err.message,
        "EspeakTTS: espeak-ng has no voice \"no-such-voice\" (list them with `espeak-ng --voices`)"
    );
}

/// Through the example (SentenceSplitter → PiperTTS), the first sentence's audio reaches the
/// client while the later sentences of the same input are still being synthesised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sentence_is_heard_before_the_last_is_made() {
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{root}/examples/tts.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let runtime = RuntimeBuilder::new()
        .nodes(remotemedia_speech::register)
        .build()
        .unwrap();
    let pipeline = runtime
        .load(&manifest, &path)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut session = runtime.open(&pipeline).await.unwrap();
    let text = "The first sentence is short. The second one takes a little longer to say. \
                And the third sentence closes this small paragraph.";
    session.send(RuntimeData::text(text)).await.unwrap();
    session.end_input();
    let mut arrivals = Vec::new();
    while let Some(item) = session.recv().await {
        let p = item.unwrap_or_else(|f| panic!("{f}"));
        assert!(p.data.as_audio().is_some());
        arrivals.push(std::time::Instant::now());
    }
    session.close().await.unwrap();
    assert_eq!(arrivals.len(), 3, "one audio output per sentence");
    // Synthesising a sentence takes hundreds of milliseconds here; had the outputs left
    // together, they would arrive within a millisecond of each other.
    let spread = arrivals[2] - arrivals[0];
    assert!(
        spread > Duration::from_millis(50),
        "all audio arrived at once ({spread:?})"
    );
}

/// The voice's noise comes from the seed: the same sentence gives the same samples run after
/// run and on another instance of the model, whatever ran in between; another seed or
/// sentence gives other samples.
#[test]
fn a_sentence_with_the_same_seed_is_spoken_the_same() {
    let v = voice();
    assert!(v.repeatable());
    let other = PiperVoice::load_instance(&PiperVoice::default_model(), 1, 7).unwrap();
    let ids = &v.prepare("The same words, twice.").unwrap().sentences[0].ids;
    let scales = v.default_scales();
    let first = v.synthesize(ids, scales).unwrap();
    let between = &v.prepare("Something else.").unwrap().sentences[0].ids;
    v.synthesize(between, scales).unwrap();
    assert_eq!(v.synthesize(ids, scales).unwrap(), first);
    assert_eq!(other.synthesize(ids, scales).unwrap(), first);
    let reseeded = v.synthesize(ids, Scales { seed: 1, ..scales }).unwrap();
    assert_ne!(reseeded, first);
    // Same words, other seed: about as long (durations vary a little with the noise).
    let ratio = reseeded.len() as f64 / first.len() as f64;
    assert!((0.8..1.25).contains(&ratio), "{ratio}");
}
