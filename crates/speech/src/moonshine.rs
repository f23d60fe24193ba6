//! Speech recognition with Moonshine (tiny, English) on ONNX Runtime.
//!
//! Moonshine is an encoder-decoder transformer that reads raw 16 kHz samples: no spectrogram and
//! no padding to 30 s, so the encoder's cost follows the length of the audio. That suits the
//! utterances a VAD and [`remotemedia_audio::SpeechSegmenter`] cut out of a stream.
//!
//! The decoder is the "merged" export: one graph that either starts a sequence (and computes the
//! cross-attention keys and values from the encoder output) or continues one from its key/value
//! cache, as chosen by its `use_cache_branch` input. Decoding is greedy: each step feeds the
//! last token and the cache and takes the most likely next token, until end of sequence or a cap
//! of `max_tokens_per_second` times the audio's length. The cap is what keeps audio the model
//! loops on (noise, music) from decoding forever.
//!
//! The loaded models are shared by the whole process ([`crate::models::shared_session`]); the
//! cache lives on the stack of each call, so streams never see each other's state.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};
use remotemedia_audio::frame::{fatal, mono_input};
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    AudioFrame, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData, Samples,
    TextFrame,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::models::{self, ModelError, SharedSession};
use crate::tokenizer::Tokenizer;
use remotemedia_core::scheduler::{BatchModel, Scheduler, SchedulerConfig};

/// The only rate the model was trained on.
pub const SAMPLE_RATE: u32 = 16_000;
/// Encoder file inside a Moonshine model directory.
pub const ENCODER_FILE: &str = "encoder_model.ort";
/// Merged decoder file inside a Moonshine model directory.
pub const DECODER_FILE: &str = "decoder_model_merged.ort";
/// Vocabulary file inside a Moonshine model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.bin";
/// Shorter audio is skipped: the encoder's first convolution needs 127 samples and the model
/// was trained on 0.1 s to 64 s, so below that it only produces noise words.
pub const MIN_UTTERANCE: Duration = Duration::from_millis(100);
/// Longer audio is refused: beyond what the model was trained on, attention cost and memory
/// grow quadratically; segment the stream upstream instead.
pub const MAX_UTTERANCE: Duration = Duration::from_secs(64);
/// Audio whose peak stays below this (-80 dBFS, a few steps of 16-bit PCM) is a muted or
/// disconnected input, skipped without running the model, which would otherwise hallucinate
/// a word ("You") from nothing.
pub const SILENCE_PEAK: f32 = 1e-4;
/// The reference implementation's decoding cap: comfortably above English speech (about 3 to 4
/// tokens per second), low enough that a loop ends quickly.
pub const DEFAULT_MAX_TOKENS_PER_SECOND: f32 = 6.5;

/// Utterances queued for the shared model at most; one more is refused (retryable) rather than
/// queued without limit. At ~0.1 s of work per utterance, a full queue is ~25 s of backlog.
const MAX_QUEUED_UTTERANCES: usize = 256;

/// Decoder input that selects the cached branch.
const USE_CACHE: &str = "use_cache_branch";
const INPUT_IDS: &str = "input_ids";
const ENCODER_STATES: &str = "encoder_hidden_states";
const DECODER_MASK: &str = "encoder_attention_mask";
const ENCODER_INPUT: &str = "input_values";
const ENCODER_MASK: &str = "attention_mask";
const PAST_PREFIX: &str = "past_key_values.";
const PRESENT_PREFIX: &str = "present.";
/// `<s>` and `</s>`: the tokenizer checks they sit at these ids.
const START_TOKEN: u32 = 1;
const END_TOKEN: u32 = 2;

/// What the loaded graphs look like, read from their signatures so a foreign or damaged file is
/// rejected at load rather than on the first utterance.
#[derive(Debug)]
struct Layout {
    encoder_mask: bool,
    decoder_mask: bool,
    /// Names of the cache inputs, in any order.
    past: Vec<String>,
    /// Whether each cache entry holds cross-attention keys/values, which the first step computes
    /// and later steps only pass through.
    cross: Vec<bool>,
    /// For each decoder output, the cache entry it feeds next step, if any.
    present: Vec<Option<usize>>,
    heads: usize,
    head_dim: usize,
    vocab: usize,
}

/// One recogniser: shared encoder and decoder sessions plus the vocabulary. Cheap to share
/// behind an `Arc`; every call keeps its own decoding state.
pub struct Moonshine {
    encoder: Arc<SharedSession>,
    decoder: Arc<SharedSession>,
    tokenizer: Tokenizer,
    layout: Layout,
    max_tokens_per_second: f32,
}

/// A transcription and how its decoding ended, for logs and benchmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Tokens decoded, without the end-of-sequence token.
    pub tokens: usize,
    /// True when decoding stopped at the cap rather than at end of sequence (the text may be
    /// cut short or end in a repetition).
    pub capped: bool,
}

impl Moonshine {
    /// The default model directory: `moonshine-tiny-en` in the models directory.
    pub fn default_model() -> PathBuf {
        models::models_dir().join(models::MOONSHINE_TINY_EN_DIR)
    }

    /// Opens the model in `dir` with `threads` intra-op threads, sharing the sessions with every
    /// other recogniser of the process that uses the same files and thread count. Decoding
    /// stops after `max_tokens_per_second` (a positive number) tokens per second of audio.
    pub fn new(dir: &Path, threads: usize, max_tokens_per_second: f32) -> Result<Self, ModelError> {
        Self::instance(dir, threads, max_tokens_per_second, 0)
    }

    /// [`Moonshine::new`] on copy `instance` of the model's sessions (0 is the shared one), so
    /// that several threads can each run a recogniser at once.
    pub fn instance(
        dir: &Path,
        threads: usize,
        max_tokens_per_second: f32,
        instance: usize,
    ) -> Result<Self, ModelError> {
        Self::open(dir, max_tokens_per_second, |path| {
            models::session_instance(path, threads, instance)
        })
    }

    /// [`Moonshine::new`] on sessions of its own, outside the model pool, freed with it.
    pub fn private(
        dir: &Path,
        threads: usize,
        max_tokens_per_second: f32,
    ) -> Result<Self, ModelError> {
        Self::open(dir, max_tokens_per_second, |path| {
            models::private_session(path, threads)
        })
    }

    fn open(
        dir: &Path,
        max_tokens_per_second: f32,
        session: impl Fn(&Path) -> Result<Arc<SharedSession>, ModelError>,
    ) -> Result<Self, ModelError> {
        let encoder_path = dir.join(ENCODER_FILE);
        let decoder_path = dir.join(DECODER_FILE);
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        // Name the first missing file before spending time loading the others.
        for path in [&encoder_path, &decoder_path, &tokenizer_path] {
            models::require_file(path)?;
        }
        let tokenizer = Tokenizer::load(&tokenizer_path)?;
        let encoder = session(&encoder_path).map_err(reinstall_hint)?;
        let decoder = session(&decoder_path).map_err(reinstall_hint)?;
        let (encoder_mask, hidden) = check_encoder(&encoder.lock(), &encoder_path)?;
        let layout = check_decoder(&decoder.lock(), &decoder_path, hidden)?;
        if layout.vocab > tokenizer.len() {
            return Err(ModelError::Load {
                path: tokenizer_path,
                reason: format!(
                    "{} entries, but the decoder scores {} tokens; the files come from different models",
                    tokenizer.len(),
                    layout.vocab
                ),
            });
        }
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            layout: Layout {
                encoder_mask,
                ..layout
            },
            max_tokens_per_second,
        })
    }

    /// Most tokens decoded for `samples` samples of audio.
    pub fn token_cap(&self, samples: usize) -> usize {
        let secs = samples as f64 / f64::from(SAMPLE_RATE);
        (secs * f64::from(self.max_tokens_per_second)).ceil() as usize
    }

    /// Transcribes one utterance of 16 kHz mono audio. Audio shorter than [`MIN_UTTERANCE`] or
    /// quieter than [`SILENCE_PEAK`] gives empty text without running the model; longer than
    /// [`MAX_UTTERANCE`] is an error.
    pub fn transcribe(&self, samples: &[f32]) -> Result<Transcript, ModelError> {
        if samples.len() > max_samples() {
            return Err(self.encoder.inference_error(format!(
                "{:.1} s of audio in one utterance; the model takes at most {} s",
                samples.len() as f64 / f64::from(SAMPLE_RATE),
                MAX_UTTERANCE.as_secs()
            )));
        }
        let silent = samples.iter().all(|s| s.abs() < SILENCE_PEAK);
        if samples.len() < min_samples() || silent {
            return Ok(Transcript {
                text: String::new(),
                tokens: 0,
                capped: false,
            });
        }
        let mask = vec![1i64; samples.len()];
        let hidden = self.encode(samples, &mask)?;
        let cap = self.token_cap(samples.len());
        let ids = self.decode(&hidden, &mask, cap)?;
        Ok(Transcript {
            text: self.tokenizer.decode(&ids).trim().to_string(),
            tokens: ids.len(),
            capped: ids.len() >= cap,
        })
    }

    fn encode(&self, samples: &[f32], mask: &[i64]) -> Result<DynValue, ModelError> {
        let err = |e: ort::Error| self.encoder.inference_error(e);
        let n = samples.len();
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
            ENCODER_INPUT.into(),
            TensorRef::from_array_view(([1usize, n], samples))
                .map_err(err)?
                .into(),
        )];
        if self.layout.encoder_mask {
            inputs.push((
                ENCODER_MASK.into(),
                TensorRef::from_array_view(([1usize, n], mask))
                    .map_err(err)?
                    .into(),
            ));
        }
        let mut session = self.encoder.lock();
        let outputs = session.run(inputs).map_err(err)?;
        outputs
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| self.encoder.inference_error("the encoder returned nothing"))
    }

    /// Greedy decoding of at most `cap` tokens (end of sequence excluded).
    fn decode(&self, hidden: &DynValue, mask: &[i64], cap: usize) -> Result<Vec<u32>, ModelError> {
        let err = |e: ort::Error| self.decoder.inference_error(e);
        let l = &self.layout;
        let empty = [1usize, l.heads, 0, l.head_dim];
        let mut past: Vec<DynValue> = l
            .past
            .iter()
            .map(|_| Tensor::<f32>::from_array((empty, Vec::new())).map(Tensor::into_dyn))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mut ids = Vec::with_capacity(cap);
        let mut last = i64::from(START_TOKEN);
        while ids.len() < cap {
            let cached = !ids.is_empty();
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(l.past.len() + 4);
            inputs.push((
                INPUT_IDS.into(),
                Tensor::from_array(([1usize, 1], vec![last]))
                    .map_err(err)?
                    .into(),
            ));
            inputs.push((ENCODER_STATES.into(), hidden.into()));
            inputs.push((
                USE_CACHE.into(),
                Tensor::from_array(([1usize], vec![cached]))
                    .map_err(err)?
                    .into(),
            ));
            if l.decoder_mask {
                inputs.push((
                    DECODER_MASK.into(),
                    TensorRef::from_array_view(([1usize, mask.len()], mask))
                        .map_err(err)?
                        .into(),
                ));
            }
            for (name, value) in l.past.iter().zip(&past) {
                inputs.push((name.as_str().into(), value.into()));
            }
            let next = {
                let mut session = self.decoder.lock();
                let outputs = session.run(inputs).map_err(err)?;
                let (_, logits) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
                let next = argmax(logits.get(logits.len().saturating_sub(l.vocab)..))
                    .ok_or_else(|| self.decoder.inference_error("empty logits"))?;
                for (i, (_, value)) in outputs.into_iter().enumerate() {
                    if let Some(slot) = l.present.get(i).copied().flatten()
                        && (!cached || !l.cross[slot])
                    {
                        past[slot] = value;
                    }
                }
                next
            };
            if next == END_TOKEN {
                break;
            }
            ids.push(next);
            last = i64::from(next);
        }
        Ok(ids)
    }
}

fn min_samples() -> usize {
    (MIN_UTTERANCE.as_millis() as usize) * SAMPLE_RATE as usize / 1000
}

fn max_samples() -> usize {
    MAX_UTTERANCE.as_secs() as usize * SAMPLE_RATE as usize
}

/// Index of the largest score; NaN never wins.
fn argmax(scores: Option<&[f32]>) -> Option<u32> {
    let scores = scores.filter(|s| !s.is_empty())?;
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] || scores[best].is_nan() {
            best = i;
        }
    }
    u32::try_from(best).ok()
}

/// A file ONNX Runtime cannot read is most likely a damaged download; the setup script only
/// replaces files that are missing, hence "delete it".
fn reinstall_hint(e: ModelError) -> ModelError {
    match e {
        ModelError::Load { path, reason } => ModelError::Load {
            reason: format!(
                "{reason}; if the file is damaged, delete it and run {}",
                models::SETUP_COMMAND
            ),
            path,
        },
        other => other,
    }
}

fn not_moonshine(path: &Path, what: &str, detail: String) -> ModelError {
    ModelError::Load {
        path: path.to_path_buf(),
        reason: format!("not a Moonshine {what}: {detail}"),
    }
}

/// Checks the encoder's signature; returns whether it takes an attention mask and its hidden
/// size when fixed.
fn check_encoder(session: &Session, path: &Path) -> Result<(bool, Option<i64>), ModelError> {
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    if !names.contains(&ENCODER_INPUT)
        || names
            .iter()
            .any(|n| *n != ENCODER_INPUT && *n != ENCODER_MASK)
    {
        return Err(not_moonshine(
            path,
            "encoder",
            format!("inputs {names:?}, expected [\"{ENCODER_INPUT}\", \"{ENCODER_MASK}\"]"),
        ));
    }
    let hidden = session
        .outputs()
        .first()
        .and_then(|o| o.dtype().tensor_shape())
        .and_then(|s| s.last().copied())
        .filter(|&d| d > 0);
    if session.outputs().is_empty() {
        return Err(not_moonshine(path, "encoder", "no outputs".into()));
    }
    Ok((names.contains(&ENCODER_MASK), hidden))
}

/// Checks the merged decoder's signature and reads the cache layout from it.
fn check_decoder(
    session: &Session,
    path: &Path,
    hidden: Option<i64>,
) -> Result<Layout, ModelError> {
    let bad = |detail: String| not_moonshine(path, "merged decoder", detail);
    let inputs = session.inputs();
    let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
    for required in [INPUT_IDS, ENCODER_STATES, USE_CACHE] {
        if !names.contains(&required) {
            return Err(bad(format!("no input \"{required}\" (inputs {names:?})")));
        }
    }
    if let (Some(h), Some(d)) = (
        hidden,
        inputs
            .iter()
            .find(|i| i.name() == ENCODER_STATES)
            .and_then(|i| i.dtype().tensor_shape())
            .and_then(|s| s.last().copied())
            .filter(|&d| d > 0),
    ) && h != d
    {
        return Err(bad(format!(
            "takes encoder states of width {d}, but the encoder gives {h}; \
             the files come from different models"
        )));
    }
    let mut past = Vec::new();
    let mut cross = Vec::new();
    let mut dims = None;
    for input in inputs {
        let name = input.name();
        let Some(rest) = name.strip_prefix(PAST_PREFIX) else {
            if [INPUT_IDS, ENCODER_STATES, USE_CACHE, DECODER_MASK].contains(&name) {
                continue;
            }
            return Err(bad(format!("unexpected input \"{name}\"")));
        };
        // [batch, heads, sequence, head_dim], heads and head_dim fixed.
        let shape = input.dtype().tensor_shape().map(|s| s.to_vec());
        let this = match shape.as_deref() {
            Some(&[_, h, _, d]) if h > 0 && d > 0 => (h as usize, d as usize),
            _ => return Err(bad(format!("cache input \"{name}\" has shape {shape:?}"))),
        };
        if *dims.get_or_insert(this) != this {
            return Err(bad(format!("cache input \"{name}\" has shape {shape:?}")));
        }
        past.push(name.to_string());
        cross.push(rest.contains(".encoder."));
    }
    let Some((heads, head_dim)) = dims else {
        return Err(bad("no key/value cache inputs".into()));
    };
    let outputs = session.outputs();
    let vocab = outputs
        .first()
        .filter(|o| o.name() == "logits")
        .and_then(|o| o.dtype().tensor_shape())
        .and_then(|s| s.last().copied())
        .filter(|&v| v > 0)
        .ok_or_else(|| bad("the first output is not logits with a fixed vocabulary".into()))?
        as usize;
    let present: Vec<Option<usize>> = outputs
        .iter()
        .map(|o| {
            let rest = o.name().strip_prefix(PRESENT_PREFIX)?;
            past.iter()
                .position(|p| p.strip_prefix(PAST_PREFIX) == Some(rest))
        })
        .collect();
    for (slot, name) in past.iter().enumerate() {
        if !present.contains(&Some(slot)) {
            return Err(bad(format!("no output updates the cache input \"{name}\"")));
        }
    }
    Ok(Layout {
        encoder_mask: false,
        decoder_mask: names.contains(&DECODER_MASK),
        past,
        cross,
        present,
        heads,
        head_dim,
        vocab,
    })
}

/// Whose model a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    #[default]
    Shared,
    PerSession,
}

/// Settings of [`MoonshineASRNode`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MoonshineParams {
    /// Directory holding `encoder_model.ort`, `decoder_model_merged.ort` and `tokenizer.bin`;
    /// default `moonshine-tiny-en` in the models directory.
    pub model: Option<PathBuf>,
    /// ONNX Runtime intra-op threads for the shared model. 1 is best on 2 cores: a second
    /// thread saved under 10 % of the time on a 10 s utterance, lost on 1.5 s ones and used
    /// 60 % more CPU (`cargo bench -p remotemedia-speech --bench moonshine`).
    #[schemars(range(min = 1, max = 16))]
    pub threads: usize,
    /// Utterances transcribed at once, each by its own copy of the model (about 70 MB each),
    /// for every stream of the process: one per core by default, at most 4. Shared with the
    /// first node that starts the model's scheduler.
    #[schemars(range(min = 1, max = 16))]
    pub workers: Option<usize>,
    /// `shared`: every session's utterances go to the process's shared model. `per_session`:
    /// this session loads its own copy (about 70 MB and a load per session) and runs it on its
    /// own thread, as per-client systems do; kept to measure the difference.
    pub sharing: Sharing,
    /// Decoding stops after this many tokens per second of audio, so audio the model loops on
    /// cannot stall the stream.
    #[schemars(range(min = 1.0, max = 50.0))]
    pub max_tokens_per_second: f32,
    /// Mark the text as interim (`is_final: false`): for the partial utterances of a
    /// `SpeechSegmenter` with `partial_every_ms`, which a later final text replaces.
    pub interim: bool,
}

impl Default for MoonshineParams {
    fn default() -> Self {
        Self {
            model: None,
            threads: 1,
            workers: None,
            sharing: Sharing::Shared,
            max_tokens_per_second: DEFAULT_MAX_TOKENS_PER_SECOND,
            interim: false,
        }
    }
}

/// Transcribes whole utterances (one 16 kHz mono audio frame each, as `SpeechSegmenter` emits
/// them) into final text.
///
/// Each utterance gives one `Text` frame with `is_final: true` and its span (the packet's
/// timestamp to that plus the frame's duration), stamped with the utterance's start. Utterances
/// shorter than [`MIN_UTTERANCE`], silent ones (peak below [`SILENCE_PEAK`]) and those the model
/// hears no words in are skipped without output: they are normal in a stream, not errors. Audio at another rate
/// or with more channels is a fatal error, as is an utterance over [`MAX_UTTERANCE`]. With
/// `interim`, the text is marked `is_final: false` (for partial utterances).
pub struct MoonshineASRNode {
    scheduler: Scheduler<Recognizer>,
    /// Names this node's stream to the scheduler, which serves streams round-robin.
    stream: Arc<str>,
    interim: bool,
}

/// The recogniser as the shared scheduler runs it: one utterance at a time. The export mixes
/// the rows of a batch (an utterance decodes differently beside another; measured on the
/// bundled model with ONNX Runtime 1.32), so batches hold one utterance.
struct Recognizer(Moonshine);

impl BatchModel for Recognizer {
    type Request = Samples;
    type Response = Transcript;
    type Error = ModelError;

    fn run(&mut self, batch: Vec<Samples>) -> Vec<Result<Transcript, ModelError>> {
        batch.iter().map(|s| self.0.transcribe(s)).collect()
    }
}

impl MoonshineASRNode {
    /// The utterance in `input`, or `None` when it is too short to transcribe (normal in a
    /// stream, so skipped rather than refused).
    fn utterance(input: &Packet) -> Result<Option<&AudioFrame>, NodeError> {
        let frame = mono_input(Self::NAME, SAMPLE_RATE, input)?;
        let duration = frame.duration();
        if duration > MAX_UTTERANCE {
            return Err(fatal(
                Self::NAME,
                format!(
                    "utterances of at most {} s, got {:.1} s; cut them shorter upstream \
                     (SpeechSegmenter max_utterance_ms)",
                    MAX_UTTERANCE.as_secs(),
                    duration.as_secs_f64()
                ),
            ));
        }
        if duration < MIN_UTTERANCE {
            tracing::debug!(
                ms = duration.as_millis() as u64,
                "skipping an utterance too short to transcribe"
            );
            return Ok(None);
        }
        Ok(Some(frame))
    }

    /// Queues a transcription on the shared model and waits for it. A full queue (the
    /// machine is past its capacity) is a retryable error; the model's own errors are fatal.
    async fn transcribe(&self, samples: Samples) -> Result<Transcript, NodeError> {
        self.scheduler
            .submit(&self.stream, samples)
            .await
            .map_err(|e| NodeError::from_error(Self::NAME, &e))
    }
}

#[async_trait]
impl Node for MoonshineASRNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(frame) = Self::utterance(input)? else {
            return Ok(());
        };
        let duration = frame.duration();
        let began = Instant::now();
        let t = self.transcribe(frame.shared_samples().clone()).await?;
        let audio_s = duration.as_secs_f64();
        let took_s = began.elapsed().as_secs_f64();
        if t.capped {
            tracing::warn!(
                audio_s,
                tokens = t.tokens,
                "decoding stopped at max_tokens_per_second; the text may be cut short"
            );
        }
        tracing::debug!(audio_s, took_s, tokens = t.tokens, "transcribed utterance");
        if t.text.is_empty() {
            return Ok(());
        }
        let start = input.timestamp;
        let data = RuntimeData::Text(TextFrame {
            text: t.text.into(),
            is_final: !self.interim,
            span: Some((start, start + duration)),
        });
        out.push_at(data, start);
        Ok(())
    }
}

impl NodeType for MoonshineASRNode {
    type Params = MoonshineParams;
    const NAME: &'static str = "MoonshineASR";
    const DESCRIPTION: &'static str =
        "Transcribes each 16 kHz mono utterance with the Moonshine model into final, timed text";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio], &[MediaType::Text])
    }

    fn new(p: MoonshineParams, ctx: &NodeContext) -> Result<Self, NodeError> {
        let max_tokens = p.max_tokens_per_second;
        let dir = p.model.unwrap_or_else(Moonshine::default_model);
        let queue = SchedulerConfig {
            max_batch: 1,
            max_wait_us: 0,
            max_queue: MAX_QUEUED_UTTERANCES,
        };
        if p.sharing == Sharing::PerSession {
            let engine = Moonshine::private(&dir, p.threads, max_tokens)
                .map_err(|e| NodeError::from_error(Self::NAME, &e))?;
            let engines = vec![Recognizer(engine)];
            return Ok(Self {
                scheduler: Scheduler::new("moonshine-per-session", engines, queue),
                stream: format!("{}/{}", ctx.session_id, ctx.node_id).into(),
                interim: p.interim,
            });
        }
        let config = format!("threads={},max_tokens_per_second={max_tokens}", p.threads);
        let (threads, model) = (p.threads, dir.clone());
        let workers = p
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
        let scheduler = models::shared_scheduler(&dir, &config, move || {
            let engines = (0..workers)
                .map(|i| Moonshine::instance(&model, threads, max_tokens, i))
                .map(|m| m.map(Recognizer))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Scheduler::new("moonshine", engines, queue))
        })
        .map_err(|e| NodeError::from_error(Self::NAME, &e))?;
        Ok(Self {
            scheduler,
            stream: format!("{}/{}", ctx.session_id, ctx.node_id).into(),
            interim: p.interim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_best_and_ignores_nan() {
        assert_eq!(argmax(Some(&[0.1, 0.9, 0.9, 0.2])), Some(1));
        assert_eq!(argmax(Some(&[f32::NAN, 0.5, 0.7])), Some(2));
        assert_eq!(argmax(Some(&[])), None);
        assert_eq!(argmax(None), None);
    }

    #[test]
    fn the_cap_follows_the_audio_length() {
        let m =
            Moonshine::new(&Moonshine::default_model(), 1, 6.5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.token_cap(16_000), 7);
        assert_eq!(m.token_cap(1_600), 1);
        assert_eq!(m.layout.past.len(), 24);
        assert_eq!(
            (m.layout.heads, m.layout.head_dim, m.layout.vocab),
            (8, 36, 32_768)
        );
        assert!(m.layout.encoder_mask && m.layout.decoder_mask);
    }

    #[test]
    fn silence_transcribes_to_nothing_and_noise_stops_at_the_cap() {
        let m =
            Moonshine::new(&Moonshine::default_model(), 1, 6.5).unwrap_or_else(|e| panic!("{e}"));
        let short = m.transcribe(&[0.0; 1_000]).unwrap();
        assert_eq!((short.text.as_str(), short.tokens), ("", 0));
        // Deterministic white noise: whatever the model makes of it, it stops in time.
        let mut x = 1u32;
        let noise: Vec<f32> = (0..32_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 0.5
            })
            .collect();
        let t = m.transcribe(&noise).unwrap();
        assert!(t.tokens <= m.token_cap(noise.len()), "{t:?}");
    }
}
