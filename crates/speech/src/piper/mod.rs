//! Neural text to speech with Piper voices (VITS models exported to ONNX) on ONNX Runtime.
//!
//! A Piper voice is an `.onnx` model plus an `.onnx.json` config beside it that holds the sample
//! rate, the default inference scales, the espeak-ng voice and the map from phoneme characters to
//! model input ids. Text goes: sentences ([`crate::tts::split_sentences`]) → characters the voice
//! cannot read removed ([`crate::tts::clean`]) → IPA phonemes from espeak-ng, clause by clause,
//! with each clause's punctuation put back → ids (`^`, then each phoneme followed by the pad `_`,
//! then `$`, phonemes split into Unicode code points with accents decomposed, as the voices were
//! trained) → one model run per sentence → f32 audio.
//!
//! The model is cut in two at its vocoder when loaded ([`crate::onnx_graph`]; the halves are
//! cached in `~/.cache/remotemedia/piper`): the encoder turns a sentence into latent
//! frames, and the vocoder, being convolutional, decodes any run of them with some context on
//! each side exactly as it decodes the whole. [`PiperVoice::synthesize_streaming`] uses that to
//! hand out the first 0.19 s of a sentence before the rest is decoded.
//!
//! This file is the node; beside it are the voice's config and phoneme-id map (`config`), the
//! espeak-ng glue (`phonemes`), the loaded model and its runs (`voice`) and the cut (`split`).

mod config;
mod noise;
mod phonemes;
mod split;
mod voice;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_audio::frame::{Clock, fatal};
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::tts::{self, Spoken, TtsError};

pub use config::{VoiceConfig, config_path};
pub use phonemes::{Prepared, PreparedSentence};
pub use voice::{PiperVoice, Scales};

/// Settings of [`PiperTTSNode`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PiperTtsParams {
    /// Voice model (`.onnx`, with its `.onnx.json` beside it); default
    /// `piper-joe/en_US-joe-medium.onnx` in the models directory.
    pub voice: Option<PathBuf>,
    /// Speaking rate relative to the voice's own: 1.0 as trained, 1.25 a quarter faster. Piper's
    /// `length_scale` becomes the config's `length_scale / speed`.
    #[schemars(range(min = 0.25, max = 4.0))]
    pub speed: f32,
    /// Variation in the voice (Piper's `noise_scale`); default from the voice config.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub noise_scale: Option<f32>,
    /// Variation in phoneme durations (Piper's `noise_w`); default from the voice config.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub noise_w: Option<f32>,
    /// Seed of the voice's variation: the same sentence with the same settings and seed is
    /// spoken with the same samples.
    pub seed: u64,
    /// ONNX Runtime intra-op threads for the shared model: 2 halves the time to first audio of a
    /// single stream on two cores; 1 suits many concurrent streams.
    #[schemars(range(min = 1, max = 16))]
    pub threads: usize,
    /// Silence after each sentence but the last of an input.
    #[schemars(range(max = 5_000))]
    pub sentence_silence_ms: u32,
    /// Sends each input text on `out` just before its audio, so a `Playout` downstream knows
    /// which words it is playing (and can tell a chat node what was heard when interrupted).
    pub with_text: bool,
    /// Sends each sentence's audio in pieces as the vocoder makes them (the first ~0.19 s
    /// long, each next twice as long), so speech starts before the sentence is synthesised.
    /// Inputs are spoken one after another; a cancel drops the one speaking and those waiting.
    pub stream: bool,
}

impl Default for PiperTtsParams {
    fn default() -> Self {
        Self {
            voice: None,
            speed: 1.0,
            noise_scale: None,
            noise_w: None,
            seed: 0,
            threads: 2,
            sentence_silence_ms: 200,
            with_text: false,
            stream: false,
        }
    }
}

/// Sample level below which a sentence has not started yet (-40 dBFS).
const LEADING_SILENCE: f32 = 0.01;

/// Speaks text with a Piper voice: one mono audio output per sentence, at the voice's rate
/// (22 050 Hz for the default voice), each stamped with the input's timestamp plus the audio
/// already emitted for that input.
///
/// Streaming: the router forwards a node's outputs when `process` returns (so that a retried
/// call never sends partial output), so all sentences of one input leave together. An upstream
/// that sends one sentence per packet (as a language model streaming its reply should) gets its
/// first audio after one sentence; the sentence outputs stay separate so that a later router that
/// forwards as outputs are pushed needs no change here.
///
/// Empty input, or input of only whitespace and punctuation, is skipped: no output, no error.
/// Characters the voice cannot read (another script, emoji) are removed and logged; when nothing
/// speakable is left, `process` rejects the input with an error naming the text: reported on the
/// session's output at once, never retried nor counted by the circuit breaker, and the session
/// goes on (fatal would end a whole conversation over one unreadable reply).
pub struct PiperTTSNode {
    engine: Arc<Engine>,
    /// Samples of silence after each sentence but the last.
    silence: usize,
    with_text: bool,
    stream: bool,
    /// Streaming: the input being spoken, and those waiting (text, media time).
    speaking: Option<Speaking>,
    waiting: VecDeque<Packet>,
}

/// An input being spoken in the background, its audio arriving in pieces.
struct Speaking {
    pieces: mpsc::UnboundedReceiver<Result<Vec<f32>, NodeError>>,
    clock: Clock,
    emitted: u64,
}

struct Engine {
    voice: PiperVoice,
    scales: Scales,
}

impl Engine {
    /// Speaks `text` into `tx` piece by piece, with `silence` samples between sentences;
    /// stops when the receiver is gone.
    fn speak_pieces(
        &self,
        text: &str,
        silence: usize,
        tx: &mpsc::UnboundedSender<Result<Vec<f32>, NodeError>>,
    ) {
        let name = PiperTTSNode::NAME;
        let prepared = match self.voice.prepare(text) {
            Ok(p) => p,
            Err(e) => return drop(tx.send(Err(fatal(name, e)))),
        };
        for u in &prepared.unspoken {
            tracing::warn!(node = name, "not spoken: {u}");
        }
        if prepared.sentences.is_empty() && !prepared.unspoken.is_empty() {
            let _ = tx.send(Err(tts::nothing_to_say(name, text, &prepared.unspoken)));
        }
        for (i, s) in prepared.sentences.iter().enumerate() {
            if tx.is_closed() {
                return;
            }
            if i > 0 && silence > 0 {
                let _ = tx.send(Ok(vec![0.0; silence]));
            }
            let mut first = true;
            let spoken = self
                .voice
                .synthesize_streaming(&s.ids, self.scales, |mut piece| {
                    if std::mem::take(&mut first) {
                        self.trim_start(&mut piece);
                    }
                    let _ = tx.send(Ok(piece));
                });
            if let Err(e) = spoken {
                return drop(tx.send(Err(fatal(name, e))));
            }
        }
    }

    /// Drops the near silence a Piper voice puts before each sentence (50–75 ms for the joe
    /// voice), but 10 ms, so an answer is heard as soon as its first audio arrives (pauses
    /// between sentences are `sentence_silence_ms`). Only the start of `audio` is searched: a
    /// sentence's first streamed piece holds its leading silence.
    fn trim_start(&self, audio: &mut Vec<f32>) {
        let margin = self.voice.config().sample_rate as usize / 100;
        let sound = audio.iter().position(|x| x.abs() > LEADING_SILENCE);
        audio.drain(..sound.unwrap_or(audio.len()).saturating_sub(margin));
    }

    /// One model run per sentence.
    fn speak(&self, text: &str) -> Result<Spoken, TtsError> {
        let prepared = self.voice.prepare(text)?;
        let audio = prepared
            .sentences
            .iter()
            .map(|s| {
                let mut audio = self.voice.synthesize(&s.ids, self.scales)?;
                self.trim_start(&mut audio);
                Ok(audio)
            })
            .collect::<Result<_, TtsError>>()?;
        Ok(Spoken {
            audio,
            sample_rate: self.voice.config().sample_rate,
            unspoken: prepared.unspoken,
        })
    }
}

impl PiperTTSNode {
    /// Streaming: starts speaking the next waiting input, if none is being spoken.
    fn start_next(&mut self, out: &mut Outputs) {
        if self.speaking.is_some() {
            return;
        }
        let Some(input) = self.waiting.pop_front() else {
            return;
        };
        let at = input.timestamp;
        let Some(text) = input.data.as_text().map(|t| Arc::clone(&t.text)) else {
            return;
        };
        if self.with_text {
            out.push_at(input.data.clone(), at);
        }
        let (tx, pieces) = mpsc::unbounded_channel();
        let (engine, silence) = (Arc::clone(&self.engine), self.silence);
        tokio::task::spawn_blocking(move || engine.speak_pieces(&text, silence, &tx));
        self.speaking = Some(Speaking {
            pieces,
            clock: Clock::new(at, self.engine.voice.config().sample_rate),
            emitted: 0,
        });
    }

    /// Streaming: waits for the next piece of the input being spoken and emits it (or, when
    /// that input is done, starts the next).
    async fn next_piece(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(s) = self.speaking.as_mut() else {
            return Ok(());
        };
        match s.pieces.recv().await {
            Some(Ok(samples)) => {
                let at = s.clock.time(s.emitted);
                s.emitted += samples.len() as u64;
                let rate = self.engine.voice.config().sample_rate;
                out.push_at(RuntimeData::audio(samples, rate, 1), at);
                Ok(())
            }
            end => {
                self.speaking = None;
                self.start_next(out);
                end.map_or(Ok(()), |r| r.map(drop))
            }
        }
    }
}

#[async_trait]
impl Node for PiperTTSNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(text) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        if tts::is_blank(&text.text) {
            return Ok(());
        }
        if self.stream {
            self.waiting.push_back(input.clone());
            self.start_next(out);
            return Ok(());
        }
        if self.with_text {
            out.push_at(input.data.clone(), input.timestamp);
        }
        let engine = Arc::clone(&self.engine);
        tts::speak_input(Self::NAME, input, out, self.silence, move |text| {
            engine.speak(text)
        })
        .await
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        while self.speaking.is_some() {
            self.next_piece(out).await?;
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { .. } = control {
            // The synthesis stops at its next sentence once nobody listens.
            self.waiting.clear();
            self.speaking = None;
        }
        Ok(())
    }

    fn emits_unprompted(&self) -> bool {
        self.stream
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if self.speaking.is_none() {
            return std::future::pending().await;
        }
        self.next_piece(out).await
    }
}

impl NodeType for PiperTTSNode {
    type Params = PiperTtsParams;
    const NAME: &'static str = "PiperTTS";
    const DESCRIPTION: &'static str =
        "Speaks text with a Piper neural voice (22.05 kHz mono), one audio output per sentence";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Audio, MediaType::Text])
    }

    fn new(p: PiperTtsParams, _: &NodeContext) -> Result<Self, NodeError> {
        let model = p.voice.unwrap_or_else(PiperVoice::default_model);
        let voice = PiperVoice::load(&model, p.threads).map_err(|e| fatal(Self::NAME, e))?;
        let defaults = voice.default_scales();
        let scales = Scales {
            noise_scale: p.noise_scale.unwrap_or(defaults.noise_scale),
            length_scale: defaults.length_scale / p.speed,
            noise_w: p.noise_w.unwrap_or(defaults.noise_w),
            seed: p.seed,
        };
        let rate = voice.config().sample_rate;
        Ok(Self {
            engine: Arc::new(Engine { voice, scales }),
            silence: (u64::from(rate) * u64::from(p.sentence_silence_ms) / 1000) as usize,
            with_text: p.with_text,
            stream: p.stream,
            speaking: None,
            waiting: VecDeque::new(),
        })
    }
}
