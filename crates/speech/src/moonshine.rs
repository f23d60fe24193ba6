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
use remotemedia_core::scheduler::{BatchModel, Outcome, Scheduler, SchedulerConfig};

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
/// Utterances a worker decodes together by default (bench/asr_streams.sh).
pub const DEFAULT_MAX_BATCH: usize = 8;

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
/// The decoder reads its `encoder_attention_mask` at one value per this many samples, one per
/// encoder frame (the encoder's convolutions downsample by 64 × 3 × 2).
const MASK_STRIDE: usize = 384;
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
    /// Width of the encoder states.
    width: usize,
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
#[derive(Clone, Debug, Default, PartialEq)]
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
        let mut result = None;
        self.transcribe_batch(&[samples], &mut |_, r| result = Some(r));
        result.unwrap_or_else(|| Err(self.decoder.inference_error("no result")))
    }

    /// Transcribes several utterances at once, each as [`Moonshine::transcribe`] would, passing
    /// each result to `done` with the utterance's index as soon as it is known. Each utterance
    /// is encoded on its own (a batch makes the encoder no faster: it is bound by compute);
    /// their decoding steps run as one batch, each utterance with its own cache, and an
    /// utterance leaves the batch when its text ends.
    pub fn transcribe_batch(
        &self,
        utterances: &[&[f32]],
        done: &mut dyn FnMut(usize, Result<Transcript, ModelError>),
    ) {
        let mut rows = Vec::with_capacity(utterances.len());
        for (index, samples) in utterances.iter().enumerate() {
            if samples.len() > max_samples() {
                done(
                    index,
                    Err(self.encoder.inference_error(format!(
                        "{:.1} s of audio in one utterance; the model takes at most {} s",
                        samples.len() as f64 / f64::from(SAMPLE_RATE),
                        MAX_UTTERANCE.as_secs()
                    ))),
                );
            } else if samples.len() < min_samples()
                || samples.iter().all(|s| s.abs() < SILENCE_PEAK)
            {
                done(index, Ok(Transcript::default()));
            } else {
                match self.encode(samples) {
                    Ok((hidden, frames)) => rows.push(Row {
                        index,
                        hidden,
                        frames,
                        cap: self.token_cap(samples.len()),
                        ids: Vec::new(),
                    }),
                    Err(e) => done(index, Err(e)),
                }
            }
        }
        let mut finished = |row: Row| {
            let transcript = Transcript {
                text: self.tokenizer.decode(&row.ids).trim().to_string(),
                tokens: row.ids.len(),
                capped: row.ids.len() >= row.cap,
            };
            done(row.index, Ok(transcript));
        };
        if let Err(e) = self.decode(&mut rows, &mut finished) {
            for row in rows {
                done(row.index, Err(e.clone()));
            }
        }
    }

    /// The encoder's states for one utterance, row-major `[frames, width]`, and their frames.
    fn encode(&self, samples: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let err = |e: ort::Error| self.encoder.inference_error(e);
        let n = samples.len();
        let mask = vec![1i64; n];
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
            ENCODER_INPUT.into(),
            TensorRef::from_array_view(([1usize, n], samples))
                .map_err(err)?
                .into(),
        )];
        if self.layout.encoder_mask {
            inputs.push((
                ENCODER_MASK.into(),
                TensorRef::from_array_view(([1usize, n], mask.as_slice()))
                    .map_err(err)?
                    .into(),
            ));
        }
        let mut session = self.encoder.lock();
        let outputs = session.run(inputs).map_err(err)?;
        if outputs.len() == 0 {
            return Err(self.encoder.inference_error("the encoder returned nothing"));
        }
        let (shape, states) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        match **shape {
            [1, frames, width] if width as usize == self.layout.width => {
                Ok((states.to_vec(), frames as usize))
            }
            _ => Err(self
                .encoder
                .inference_error(format!("encoder states of shape {shape:?}"))),
        }
    }

    /// Greedy decoding of `rows` as one batch. Each row stops at end of sequence or at its cap
    /// (end of sequence excluded) and is passed to `finished` as it leaves; on an error the
    /// rows still decoding are left in `rows`.
    fn decode(&self, rows: &mut Vec<Row>, finished: &mut dyn FnMut(Row)) -> Result<(), ModelError> {
        let err = |e: ort::Error| self.decoder.inference_error(e);
        let l = &self.layout;
        // Encoder states are padded to the longest row of the batch as it started (the cross-
        // attention caches keep that length), with the mask the decoder reads one value per
        // encoder frame from (every MASK_STRIDE-th sample).
        let frames = rows.iter().map(|r| r.frames).max().unwrap_or(0);
        let pad = |rows: &[Row]| {
            let mut hidden = vec![0f32; rows.len() * frames * l.width];
            let mut mask = vec![0i64; rows.len() * frames * MASK_STRIDE];
            for (i, row) in rows.iter().enumerate() {
                let at = i * frames * l.width;
                hidden[at..at + row.hidden.len()].copy_from_slice(&row.hidden);
                let at = i * frames * MASK_STRIDE;
                mask[at..at + row.frames * MASK_STRIDE].fill(1);
            }
            (hidden, mask)
        };
        let (mut hidden, mut mask) = pad(rows);
        let empty = [rows.len(), l.heads, 0, l.head_dim];
        let mut past: Vec<DynValue> = l
            .past
            .iter()
            .map(|_| Tensor::<f32>::from_array((empty, Vec::new())).map(Tensor::into_dyn))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mut step = 0;
        while !rows.is_empty() {
            let batch = rows.len();
            let last: Vec<i64> = rows
                .iter()
                .map(|r| i64::from(r.ids.last().copied().unwrap_or(START_TOKEN)))
                .collect();
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(l.past.len() + 4);
            inputs.push((
                INPUT_IDS.into(),
                Tensor::from_array(([batch, 1], last)).map_err(err)?.into(),
            ));
            inputs.push((
                ENCODER_STATES.into(),
                TensorRef::from_array_view(([batch, frames, l.width], hidden.as_slice()))
                    .map_err(err)?
                    .into(),
            ));
            inputs.push((
                USE_CACHE.into(),
                Tensor::from_array(([1usize], vec![step > 0]))
                    .map_err(err)?
                    .into(),
            ));
            if l.decoder_mask {
                inputs.push((
                    DECODER_MASK.into(),
                    TensorRef::from_array_view(([batch, frames * MASK_STRIDE], mask.as_slice()))
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
                let next = logits
                    .chunks(l.vocab)
                    .map(|scores| argmax(Some(scores)))
                    .collect::<Option<Vec<u32>>>()
                    .filter(|n| n.len() == batch)
                    .ok_or_else(|| self.decoder.inference_error("logits of the wrong size"))?;
                for (i, (_, value)) in outputs.into_iter().enumerate() {
                    if let Some(slot) = l.present.get(i).copied().flatten()
                        && (step == 0 || !l.cross[slot])
                    {
                        past[slot] = value;
                    }
                }
                next
            };
            step += 1;
            let mut keep = Vec::with_capacity(batch);
            for (mut row, token) in std::mem::take(rows).into_iter().zip(next) {
                if token != END_TOKEN {
                    row.ids.push(token);
                }
                if token == END_TOKEN || row.ids.len() >= row.cap {
                    keep.push(false);
                    finished(row);
                } else {
                    keep.push(true);
                    rows.push(row);
                }
            }
            if !rows.is_empty() && rows.len() < batch {
                for value in &mut past {
                    *value = keep_rows(value, &keep).map_err(err)?;
                }
                (hidden, mask) = pad(rows);
            }
        }
        Ok(())
    }
}

/// One utterance being decoded in a batch.
struct Row {
    /// Its index in the batch the caller gave.
    index: usize,
    /// Encoder states, `[frames, width]`.
    hidden: Vec<f32>,
    frames: usize,
    cap: usize,
    ids: Vec<u32>,
}

/// The rows of a `[batch, ...]` cache tensor whose `keep` is true.
fn keep_rows(value: &DynValue, keep: &[bool]) -> Result<DynValue, ort::Error> {
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    let row = data.len() / keep.len().max(1);
    let mut kept = Vec::with_capacity(data.len());
    for (chunk, _) in data.chunks(row).zip(keep).filter(|(_, k)| **k) {
        kept.extend_from_slice(chunk);
    }
    let mut dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    dims[0] = keep.iter().filter(|k| **k).count();
    Ok(Tensor::from_array((dims, kept))?.into_dyn())
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
    let takes = inputs
        .iter()
        .find(|i| i.name() == ENCODER_STATES)
        .and_then(|i| i.dtype().tensor_shape())
        .and_then(|s| s.last().copied())
        .filter(|&d| d > 0);
    if let (Some(h), Some(d)) = (hidden, takes)
        && h != d
    {
        return Err(bad(format!(
            "takes encoder states of width {d}, but the encoder gives {h}; \
             the files come from different models"
        )));
    }
    let width = takes
        .or(hidden)
        .ok_or_else(|| bad("the width of the encoder states is not fixed".into()))?
        as usize;
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
        width,
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
    /// Threads running the model for every stream of the process, each with its own copy of
    /// it (about 70 MB each) and its own batch: one per core by default, at most 4. Shared with the
    /// first node that starts the model's scheduler.
    #[schemars(range(min = 1, max = 16))]
    pub workers: Option<usize>,
    /// Utterances decoded together at most, by one worker: their decoding steps run as one
    /// batch, each leaving it when its text ends. Batching only forms from utterances that are
    /// already waiting, so it costs nothing at low load and raises the throughput under load.
    /// The bundled export quantizes activations per batch, so a batch can, rarely, flip a
    /// near-tie word (ADR 16). Shared with the first node that starts the model's scheduler.
    #[schemars(range(min = 1, max = 64))]
    pub max_batch: usize,
    /// How long a worker that finds one utterance waiting waits for others to join its batch
    /// (ms). 0: batch only what already waits.
    #[schemars(range(max = 100))]
    pub batch_wait_ms: u64,
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
            max_batch: DEFAULT_MAX_BATCH,
            batch_wait_ms: 0,
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

/// The recogniser as a scheduler runs it: a batch of utterances, decoded together.
struct Recognizer(Moonshine);

impl BatchModel for Recognizer {
    type Request = Samples;
    type Response = Transcript;
    type Error = ModelError;

    fn run(&mut self, batch: Vec<Samples>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        let utterances: Vec<&[f32]> = batch.iter().map(|s| &s[..]).collect();
        self.0.transcribe_batch(&utterances, reply);
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
            max_batch: p.max_batch.max(1),
            max_wait_us: p.batch_wait_ms * 1_000,
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
        let config = format!(
            "threads={},max_tokens_per_second={max_tokens},max_batch={},batch_wait_ms={}",
            p.threads, p.max_batch, p.batch_wait_ms
        );
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
