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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ort::session::Session;
use ort::value::TensorRef;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::espeak::Espeak;
use crate::models::{self, ModelError, SharedSession};
use crate::onnx_graph;
use crate::tts::{self, Script, TtsError, Unspoken};

/// What a voice's `.onnx.json` says that synthesis needs.
#[derive(Clone, Debug)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    /// espeak-ng voice that phonemises for this model ("en-us").
    pub espeak_voice: String,
    /// Language code of the voice ("en_US"), which decides the scripts it reads.
    pub language: String,
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
    ids: HashMap<char, Vec<i64>>,
}

/// The raw config file; only the fields we use.
#[derive(Deserialize)]
struct ConfigFile {
    audio: AudioSection,
    #[serde(default)]
    espeak: Option<EspeakSection>,
    #[serde(default)]
    inference: InferenceSection,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    language: Option<LanguageSection>,
}

#[derive(Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakSection {
    voice: String,
}

#[derive(Deserialize)]
#[serde(default)]
struct InferenceSection {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceSection {
    /// Piper's training defaults, for configs that leave them out.
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

#[derive(Deserialize)]
struct LanguageSection {
    code: String,
}

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

impl VoiceConfig {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        models::require_file(path)?;
        let bad = |reason: String| ModelError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a Piper voice config: {e}")))?;
        if let Some(t) = file.phoneme_type.as_deref()
            && t != "espeak"
        {
            return Err(bad(format!(
                "phoneme_type {t:?} is not supported (only \"espeak\")"
            )));
        }
        let mut ids = HashMap::new();
        for (key, value) in file.phoneme_id_map {
            let mut chars = key.chars();
            if let (Some(c), None) = (chars.next(), chars.next())
                && !value.is_empty()
            {
                ids.insert(c, value);
            }
        }
        for c in [BOS, EOS, PAD] {
            if !ids.contains_key(&c) {
                return Err(bad(format!("phoneme_id_map has no {c:?}")));
            }
        }
        if file.audio.sample_rate == 0 {
            return Err(bad("sample_rate is 0".into()));
        }
        let espeak_voice = file
            .espeak
            .map(|e| e.voice)
            .ok_or_else(|| bad("no espeak voice named".into()))?;
        let language = file
            .language
            .map(|l| l.code)
            .unwrap_or_else(|| espeak_voice.clone());
        Ok(Self {
            sample_rate: file.audio.sample_rate,
            espeak_voice,
            language,
            noise_scale: file.inference.noise_scale,
            length_scale: file.inference.length_scale,
            noise_w: file.inference.noise_w,
            ids,
        })
    }

    /// Model input ids for a sentence's phonemes, and the phonemes the voice does not know
    /// (skipped, as Piper does). `None` when nothing but punctuation and spaces is left.
    pub fn phoneme_ids(&self, phonemes: &str) -> (Option<Vec<i64>>, Vec<char>) {
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 3);
        let mut missing = Vec::new();
        let mut voiced = false;
        let id = |c: char| self.ids.get(&c).map(Vec::as_slice).unwrap_or(&[]);
        out.extend_from_slice(id(BOS));
        out.extend_from_slice(id(PAD));
        let mut push = |c: char, out: &mut Vec<i64>| match self.ids.get(&c) {
            Some(ids) => {
                out.extend_from_slice(ids);
                out.extend_from_slice(id(PAD));
                voiced |= !c.is_whitespace() && !is_punctuation(c);
            }
            None => {
                if !missing.contains(&c) {
                    missing.push(c);
                }
            }
        };
        for c in phonemes.chars() {
            match decompose(c) {
                Some((base, mark)) => {
                    push(base, &mut out);
                    push(mark, &mut out);
                }
                None => push(c, &mut out),
            }
        }
        out.extend_from_slice(id(EOS));
        (voiced.then_some(out), missing)
    }

    /// The scripts this voice reads (`None`: unknown language, nothing is removed).
    pub fn scripts(&self) -> Option<&'static [Script]> {
        tts::language_scripts(&self.language)
    }
}

fn is_punctuation(c: char) -> bool {
    matches!(
        c,
        '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '"' | '(' | ')' | '-'
    )
}

/// Canonical decomposition of the precomposed Latin letters espeak-ng may write in IPA output
/// (`ç` in German, nasal vowels in Portuguese): Piper splits phonemes into NFD code points,
/// so the voices know the base letter and the combining mark, not the precomposed form.
fn decompose(c: char) -> Option<(char, char)> {
    const GRAVE: char = '\u{300}';
    const ACUTE: char = '\u{301}';
    const CIRCUMFLEX: char = '\u{302}';
    const TILDE: char = '\u{303}';
    const DIAERESIS: char = '\u{308}';
    const RING: char = '\u{30A}';
    const CEDILLA: char = '\u{327}';
    let pair = match c {
        'ç' => ('c', CEDILLA),
        'Ç' => ('C', CEDILLA),
        'ã' => ('a', TILDE),
        'õ' => ('o', TILDE),
        'ñ' => ('n', TILDE),
        'ẽ' => ('e', TILDE),
        'ĩ' => ('i', TILDE),
        'ũ' => ('u', TILDE),
        'ỹ' => ('y', TILDE),
        'à' => ('a', GRAVE),
        'è' => ('e', GRAVE),
        'ì' => ('i', GRAVE),
        'ò' => ('o', GRAVE),
        'ù' => ('u', GRAVE),
        'á' => ('a', ACUTE),
        'é' => ('e', ACUTE),
        'í' => ('i', ACUTE),
        'ó' => ('o', ACUTE),
        'ú' => ('u', ACUTE),
        'ý' => ('y', ACUTE),
        'â' => ('a', CIRCUMFLEX),
        'ê' => ('e', CIRCUMFLEX),
        'î' => ('i', CIRCUMFLEX),
        'ô' => ('o', CIRCUMFLEX),
        'û' => ('u', CIRCUMFLEX),
        'ä' => ('a', DIAERESIS),
        'ë' => ('e', DIAERESIS),
        'ï' => ('i', DIAERESIS),
        'ö' => ('o', DIAERESIS),
        'ü' => ('u', DIAERESIS),
        'ÿ' => ('y', DIAERESIS),
        'å' => ('a', RING),
        _ => return None,
    };
    Some(pair)
}

/// Removes espeak-ng's language switch marks ("(fr)") that surround words it read in another
/// language; they are not phonemes.
fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut rest = phonemes;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Inference settings: Piper's `scales` input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scales {
    pub noise_scale: f32,
    /// Duration multiplier: above 1 is slower.
    pub length_scale: f32,
    pub noise_w: f32,
}

/// One sentence ready for the model.
#[derive(Clone, Debug)]
pub struct PreparedSentence {
    /// The sentence as it will be spoken (after cleaning).
    pub text: String,
    /// Its phonemes, punctuation included.
    pub phonemes: String,
    pub ids: Vec<i64>,
}

/// An input split, cleaned and phonemised.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    pub sentences: Vec<PreparedSentence>,
    /// What will not be spoken, and why.
    pub unspoken: Vec<Unspoken>,
}

/// A loaded Piper voice: the shared model and its config. Cheap to clone.
#[derive(Clone)]
pub struct PiperVoice {
    graph: Graph,
    config: Arc<VoiceConfig>,
    /// The model takes a speaker id (multi-speaker voices); speaker 0 is used.
    takes_speaker: bool,
}

/// How the model runs: cut in two at the vocoder when its graph allows (so audio can come out
/// in pieces, [`PiperVoice::synthesize_streaming`]), else whole.
#[derive(Clone)]
enum Graph {
    Whole(Arc<SharedSession>),
    Split {
        /// Phoneme ids to the latent frames (text encoder, durations, flow).
        encoder: Arc<SharedSession>,
        /// Latent frames to audio: convolutional, so any run of frames with enough context on
        /// each side decodes to the same samples as the whole.
        vocoder: Arc<SharedSession>,
    },
}

/// The vocoder's first node in Piper's exports; its input is the latent the vocoder decodes.
const VOCODER_ENTRY: &str = "/dec/conv_pre/Conv";
/// Latent frames of context decoded on each side of a piece and then dropped. The vocoder of
/// Piper voices sees less than this far (pieces measured equal to the whole within 2e-6).
const VOCODER_CONTEXT: usize = 16;
/// Frames in the first piece of a streamed sentence (16 frames are about 0.19 s at 22 050 Hz);
/// each later piece doubles, up to [`MAX_PIECE_FRAMES`], so the context overhead shrinks.
const FIRST_PIECE_FRAMES: usize = 16;
const MAX_PIECE_FRAMES: usize = 256;

/// Where cut models are kept: the user's cache directory (`$XDG_CACHE_HOME`, else
/// `~/.cache`), so that no other user can plant files there; the temporary directory only when
/// neither is set.
fn cache_root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("remotemedia")
        .join("piper")
}

/// The cache directory of one model file: a changed file gets a new one.
fn split_dir(model: &Path) -> std::io::Result<PathBuf> {
    let meta = std::fs::metadata(model)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stem = model
        .file_stem()
        .map_or_else(|| "voice".into(), |s| s.to_string_lossy());
    Ok(cache_root().join(format!("{stem}-{}-{mtime:x}", meta.len())))
}

/// The encoder and vocoder files cut from `model`, written once into [`cache_root`] (keyed by
/// the model's name, size and modification time) and reused by later processes. `None` when
/// the graph has no recognisable vocoder.
fn split_model(model: &Path) -> Result<Option<(PathBuf, PathBuf)>, String> {
    // Threads of one process share the temporary file names below; other processes do not.
    static SPLITTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SPLITTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = split_dir(model).map_err(|e| e.to_string())?;
    let (encoder, vocoder) = (dir.join("encoder.onnx"), dir.join("vocoder.onnx"));
    let ready = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    if ready(&encoder) && ready(&vocoder) {
        return Ok(Some((encoder, vocoder)));
    }
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let graph = onnx_graph::Model::parse(&bytes).map_err(|e| e.to_string())?;
    let Some(latent) = graph
        .node_input(VOCODER_ENTRY, 0)
        .filter(|_| graph.op_type(VOCODER_ENTRY) == Some("Conv"))
    else {
        return Ok(None);
    };
    let inputs = graph.input_names();
    let outputs = graph.output_names();
    let head = graph
        .extract(&inputs, &[latent])
        .map_err(|e| e.to_string())?;
    let tail = graph
        .extract(&[latent], &outputs)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written under a temporary name and renamed, so a concurrent process never reads half.
    for (path, data) in [(&encoder, &head), (&vocoder, &tail)] {
        let part = path.with_extension(format!("{}.part", std::process::id()));
        std::fs::write(&part, data).map_err(|e| format!("{}: {e}", part.display()))?;
        std::fs::rename(&part, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some((encoder, vocoder)))
}

impl PiperVoice {
    /// Loads the voice at `model` (config at `<model>.json`), shared with every other user of the
    /// same file and thread count, and checks that espeak-ng has its phonemiser voice.
    pub fn load(model: &Path, threads: usize) -> Result<Self, TtsError> {
        models::require_file(model)?;
        let config = VoiceConfig::load(&config_path(model))?;
        Espeak::lock()?.set_voice(&config.espeak_voice)?;
        let split = split_model(model).unwrap_or_else(|e| {
            tracing::warn!(model = %model.display(), "voice runs whole, without streaming: {e}");
            None
        });
        // A cut that ONNX Runtime will not load is no reason to refuse the voice itself.
        let halves = split.and_then(|(encoder, vocoder)| {
            let load = |p: &Path| models::shared_session(p, threads);
            match (load(&encoder), load(&vocoder)) {
                (Ok(e), Ok(v)) => Some((e, v)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(model = %model.display(), "voice runs whole: {e}");
                    None
                }
            }
        });
        let (graph, takes_speaker) = match halves {
            Some((encoder, vocoder)) => {
                let takes_speaker = check_signature(&encoder.lock(), model)?;
                (Graph::Split { encoder, vocoder }, takes_speaker)
            }
            None => {
                let whole = models::shared_session(model, threads)?;
                let takes_speaker = check_signature(&whole.lock(), model)?;
                (Graph::Whole(whole), takes_speaker)
            }
        };
        Ok(Self {
            graph,
            config: Arc::new(config),
            takes_speaker,
        })
    }

    /// True when the model was cut at its vocoder, so [`PiperVoice::synthesize_streaming`]
    /// delivers audio in pieces.
    pub fn streams(&self) -> bool {
        matches!(self.graph, Graph::Split { .. })
    }

    /// The default voice in the models directory.
    pub fn default_model() -> PathBuf {
        models::models_dir().join(models::PIPER_JOE_MODEL)
    }

    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    /// The voice's own scales, from its config.
    pub fn default_scales(&self) -> Scales {
        Scales {
            noise_scale: self.config.noise_scale,
            length_scale: self.config.length_scale,
            noise_w: self.config.noise_w,
        }
    }

    /// Splits, cleans and phonemises `text`. Fast (about a millisecond per sentence), but takes
    /// the process-wide espeak-ng lock.
    pub fn prepare(&self, text: &str) -> Result<Prepared, TtsError> {
        let mut prepared = Prepared::default();
        let sentences = tts::split_sentences(text);
        if sentences.is_empty() {
            return Ok(prepared);
        }
        let mut espeak = Espeak::lock()?;
        espeak.set_voice(&self.config.espeak_voice)?;
        let scripts = self.config.scripts();
        for sentence in sentences {
            let cleaned = tts::clean(&sentence, scripts);
            if !cleaned.removed.is_empty() {
                prepared.unspoken.push(Unspoken {
                    text: cleaned.removed.join(" "),
                    reason: tts::UNSUPPORTED_SCRIPT,
                });
            }
            if !cleaned.speakable() {
                continue;
            }
            let clauses = espeak.phonemize(&cleaned.text)?;
            let mut phonemes = String::new();
            for (k, clause) in clauses.iter().enumerate() {
                phonemes.push_str(strip_language_flags(&clause.phonemes).trim());
                if let Some(t) = clause.terminator {
                    phonemes.push(t);
                }
                if k + 1 < clauses.len() {
                    phonemes.push(' ');
                }
            }
            let (ids, missing) = self.config.phoneme_ids(&phonemes);
            if !missing.is_empty() {
                tracing::warn!(
                    sentence = %tts::excerpt(&cleaned.text, 60),
                    missing = %missing.iter().collect::<String>(),
                    "phonemes unknown to the voice skipped"
                );
            }
            match ids {
                Some(ids) => prepared.sentences.push(PreparedSentence {
                    text: cleaned.text,
                    phonemes,
                    ids,
                }),
                None => prepared.unspoken.push(Unspoken {
                    text: cleaned.text,
                    reason: tts::NO_PHONEMES,
                }),
            }
        }
        Ok(prepared)
    }

    /// Audio for one prepared sentence: mono f32 at the voice's sample rate, in [-1, 1].
    pub fn synthesize(&self, ids: &[i64], scales: Scales) -> Result<Vec<f32>, ModelError> {
        match &self.graph {
            Graph::Whole(whole) => {
                let mut session = whole.lock();
                self.run_front(&mut session, ids, scales)
                    .map(|(_, audio)| clamp(audio))
                    .map_err(|e| whole.inference_error(e))
            }
            Graph::Split { vocoder, .. } => {
                let latent = self.encode(ids, scales)?;
                let audio = vocode(vocoder, &latent, 0, latent.frames)?;
                Ok(clamp(audio))
            }
        }
    }

    /// Like [`PiperVoice::synthesize`], handing the audio to `sink` in pieces as they are
    /// decoded: the first about 0.19 s long, each later one twice as long as the one before.
    /// The pieces join into exactly what `synthesize` would give for the same latent; decoding
    /// context on both sides of each piece costs extra vocoder work (about half again for a
    /// short sentence). A model that could not be cut gives one piece. Returns the sample count.
    pub fn synthesize_streaming(
        &self,
        ids: &[i64],
        scales: Scales,
        mut sink: impl FnMut(Vec<f32>),
    ) -> Result<usize, ModelError> {
        let Graph::Split { vocoder, .. } = &self.graph else {
            let audio = self.synthesize(ids, scales)?;
            let n = audio.len();
            sink(audio);
            return Ok(n);
        };
        let latent = self.encode(ids, scales)?;
        let mut start = 0;
        let mut piece = FIRST_PIECE_FRAMES;
        let mut total = 0;
        while start < latent.frames {
            let end = (start + piece).min(latent.frames);
            let from = start.saturating_sub(VOCODER_CONTEXT);
            let to = (end + VOCODER_CONTEXT).min(latent.frames);
            let audio = vocode(vocoder, &latent, from, to)?;
            let hop = audio.len() / (to - from);
            if hop == 0 || audio.len() % (to - from) != 0 {
                return Err(vocoder.inference_error(format!(
                    "{} samples for {} frames: not a whole number per frame",
                    audio.len(),
                    to - from
                )));
            }
            let keep = audio[(start - from) * hop..(end - from) * hop].to_vec();
            total += keep.len();
            sink(clamp(keep));
            start = end;
            piece = (piece * 2).min(MAX_PIECE_FRAMES);
        }
        Ok(total)
    }

    /// The latent frames of a sentence (the encoder half of a split model).
    fn encode(&self, ids: &[i64], scales: Scales) -> Result<Latent, ModelError> {
        let Graph::Split { encoder, .. } = &self.graph else {
            return Err(ModelError::Inference {
                path: PathBuf::new(),
                reason: "the voice was not split".into(),
            });
        };
        let mut session = encoder.lock();
        let (shape, data) = self
            .run_front(&mut session, ids, scales)
            .map_err(|e| encoder.inference_error(e))?;
        match shape.as_slice() {
            &[1, channels, frames]
                if channels > 0
                    && frames >= 0
                    && usize::try_from(channels * frames).is_ok_and(|n| n == data.len()) =>
            {
                Ok(Latent {
                    channels: channels as usize,
                    frames: frames as usize,
                    data,
                })
            }
            other => Err(encoder.inference_error(format!(
                "latent of shape {other:?}, expected [1, channels, frames]"
            ))),
        }
    }

    /// Runs the model, or its encoder half, on one sentence; returns the first output.
    fn run_front(
        &self,
        session: &mut Session,
        ids: &[i64],
        s: Scales,
    ) -> ort::Result<(Vec<i64>, Vec<f32>)> {
        let len = [ids.len() as i64];
        let scales = [s.noise_scale, s.length_scale, s.noise_w];
        let speaker = [0i64];
        let mut inputs = ort::inputs![
            "input" => TensorRef::from_array_view(([1usize, ids.len()], ids))?,
            "input_lengths" => TensorRef::from_array_view(([1usize], len.as_slice()))?,
            "scales" => TensorRef::from_array_view(([3usize], scales.as_slice()))?,
        ];
        if self.takes_speaker {
            inputs.push((
                "sid".into(),
                TensorRef::from_array_view(([1usize], speaker.as_slice()))?.into(),
            ));
        }
        let outputs = session.run(inputs)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>()?;
        Ok((shape.to_vec(), data.to_vec()))
    }
}

/// The encoder's output: `[1, channels, frames]`, row-major.
struct Latent {
    channels: usize,
    frames: usize,
    data: Vec<f32>,
}

/// Decodes latent frames `from..to` to audio with the vocoder half.
fn vocode(
    vocoder: &SharedSession,
    latent: &Latent,
    from: usize,
    to: usize,
) -> Result<Vec<f32>, ModelError> {
    let n = to - from;
    let mut frames = Vec::with_capacity(latent.channels * n);
    for c in 0..latent.channels {
        let row = c * latent.frames;
        frames.extend_from_slice(&latent.data[row + from..row + to]);
    }
    let mut session = vocoder.lock();
    let run = |session: &mut Session| -> ort::Result<Vec<f32>> {
        let input = TensorRef::from_array_view(([1usize, latent.channels, n], frames.as_slice()))?;
        let outputs = session.run(ort::inputs![input])?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>()?;
        Ok(audio.to_vec())
    };
    run(&mut session).map_err(|e| vocoder.inference_error(e))
}

fn clamp(mut audio: Vec<f32>) -> Vec<f32> {
    for s in &mut audio {
        *s = s.clamp(-1.0, 1.0);
    }
    audio
}

/// Where Piper keeps a model's config: beside it, with `.json` appended.
pub fn config_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Rejects a model that is not a Piper voice when it loads, not at the first sentence; tells
/// whether it takes a speaker id.
fn check_signature(session: &Session, path: &Path) -> Result<bool, ModelError> {
    let mut inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    inputs.sort_unstable();
    match inputs.as_slice() {
        ["input", "input_lengths", "scales"] => Ok(false),
        ["input", "input_lengths", "scales", "sid"] => Ok(true),
        _ => Err(ModelError::Load {
            path: path.to_path_buf(),
            reason: format!(
                "not a Piper voice: inputs {inputs:?} (expected \"input\", \"input_lengths\", \
                 \"scales\" and optionally \"sid\")"
            ),
        }),
    }
}

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
    /// ONNX Runtime intra-op threads for the shared model: 2 halves the time to first audio of a
    /// single stream on two cores; 1 suits many concurrent streams.
    #[schemars(range(min = 1, max = 16))]
    pub threads: usize,
    /// Silence after each sentence but the last of an input.
    #[schemars(range(max = 5_000))]
    pub sentence_silence_ms: u32,
}

impl Default for PiperTtsParams {
    fn default() -> Self {
        Self {
            voice: None,
            speed: 1.0,
            noise_scale: None,
            noise_w: None,
            threads: 2,
            sentence_silence_ms: 200,
        }
    }
}

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
    engine: Option<Box<Engine>>,
    silence: usize,
}

struct Engine {
    voice: PiperVoice,
    scales: Scales,
}

/// What one input produced.
struct Spoken {
    audio: Vec<Vec<f32>>,
    unspoken: Vec<Unspoken>,
    /// Whether the input had anything but spaces and punctuation in it.
    had_content: bool,
}

impl Engine {
    fn speak(&self, text: &str) -> Result<Spoken, TtsError> {
        let prepared = self.voice.prepare(text)?;
        let had_content = !prepared.unspoken.is_empty() || !prepared.sentences.is_empty();
        let mut audio = Vec::with_capacity(prepared.sentences.len());
        for s in &prepared.sentences {
            audio.push(self.voice.synthesize(&s.ids, self.scales)?);
        }
        Ok(Spoken {
            audio,
            unspoken: prepared.unspoken,
            had_content,
        })
    }
}

impl PiperTTSNode {
    fn fatal(e: impl std::fmt::Display) -> NodeError {
        NodeError::fatal(format!("{}: {e}", Self::NAME))
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
        let Some(frame) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        if tts::is_blank(&frame.text) {
            return Ok(());
        }
        let Some(engine) = self.engine.take() else {
            return Err(Self::fatal("state lost after an earlier failure"));
        };
        let text = Arc::clone(&frame.text);
        let (engine, result) = tts::off_reactor(move || {
            let r = engine.speak(&text);
            (engine, r)
        })
        .await
        .map_err(Self::fatal)?;
        let rate = engine.voice.config().sample_rate;
        self.engine = Some(engine);
        let spoken = result.map_err(Self::fatal)?;
        for u in &spoken.unspoken {
            tracing::warn!(node = Self::NAME, "not spoken: {u}");
        }
        if spoken.audio.is_empty() {
            if !spoken.had_content {
                return Ok(());
            }
            return Err(tts::nothing_to_say(
                Self::NAME,
                &frame.text,
                &spoken.unspoken,
            ));
        }
        let n = spoken.audio.len();
        let mut emitted = 0u64;
        for (i, mut samples) in spoken.audio.into_iter().enumerate() {
            if i + 1 < n {
                samples.resize(samples.len() + self.silence, 0.0);
            }
            let at = input.timestamp + samples_to_duration(emitted, rate);
            emitted += samples.len() as u64;
            out.push_at(RuntimeData::audio(samples, rate, 1), at);
        }
        Ok(())
    }
}

/// Playing time of `samples` mono samples at `rate`.
pub(crate) fn samples_to_duration(samples: u64, rate: u32) -> Duration {
    let nanos = u128::from(samples) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl NodeType for PiperTTSNode {
    type Params = PiperTtsParams;
    const NAME: &'static str = "PiperTTS";
    const DESCRIPTION: &'static str =
        "Speaks text with a Piper neural voice (22.05 kHz mono), one audio output per sentence";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Audio])
    }

    fn new(p: PiperTtsParams, _: &NodeContext) -> Result<Self, NodeError> {
        if !(0.25..=4.0).contains(&p.speed) {
            return Err(Self::fatal(format!(
                "speed must be between 0.25 and 4, not {}",
                p.speed
            )));
        }
        for (name, v) in [("noise_scale", p.noise_scale), ("noise_w", p.noise_w)] {
            if let Some(v) = v
                && !(0.0..=2.0).contains(&v)
            {
                return Err(Self::fatal(format!(
                    "{name} must be between 0 and 2, not {v}"
                )));
            }
        }
        if !(1..=16).contains(&p.threads) {
            return Err(Self::fatal(format!(
                "threads must be between 1 and 16, not {}",
                p.threads
            )));
        }
        let model = p.voice.unwrap_or_else(PiperVoice::default_model);
        let voice = PiperVoice::load(&model, p.threads).map_err(Self::fatal)?;
        let defaults = voice.default_scales();
        let scales = Scales {
            noise_scale: p.noise_scale.unwrap_or(defaults.noise_scale),
            length_scale: defaults.length_scale / p.speed,
            noise_w: p.noise_w.unwrap_or(defaults.noise_w),
        };
        let rate = voice.config().sample_rate;
        Ok(Self {
            engine: Some(Box::new(Engine { voice, scales })),
            silence: (u64::from(rate) * u64::from(p.sentence_silence_ms) / 1000) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ids: &[(&str, i64)]) -> VoiceConfig {
        VoiceConfig {
            sample_rate: 22_050,
            espeak_voice: "en-us".into(),
            language: "en_US".into(),
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
            ids: ids
                .iter()
                .map(|&(k, v)| (k.chars().next().unwrap(), vec![v]))
                .collect(),
        }
    }

    #[test]
    fn ids_are_framed_and_padded_like_piper() {
        let c = config(&[
            ("_", 0),
            ("^", 1),
            ("$", 2),
            (" ", 3),
            (".", 10),
            ("h", 20),
            ("i", 21),
            ("c", 16),
            ("\u{327}", 140),
        ]);
        let (ids, missing) = c.phoneme_ids("hi.");
        assert_eq!(ids.unwrap(), [1, 0, 20, 0, 21, 0, 10, 0, 2]);
        assert!(missing.is_empty());
        // Precomposed letters go in as base plus combining mark; unknown phonemes are skipped.
        let (ids, missing) = c.phoneme_ids("çx");
        assert_eq!(ids.unwrap(), [1, 0, 16, 0, 140, 0, 2]);
        assert_eq!(missing, ['x']);
        // Punctuation and spaces alone are nothing to say.
        assert_eq!(c.phoneme_ids(". .").0, None);
    }

    #[test]
    fn language_flags_are_not_phonemes() {
        assert_eq!(strip_language_flags("(fr)bɔ̃ʒuʁ(en) wˈɜːld"), "bɔ̃ʒuʁ wˈɜːld");
        assert_eq!(strip_language_flags("a(b"), "a(b");
    }

    #[test]
    fn the_config_sits_beside_the_model() {
        assert_eq!(
            config_path(Path::new("/m/v.onnx")),
            PathBuf::from("/m/v.onnx.json")
        );
    }

    #[test]
    fn a_voice_whose_cut_will_not_load_runs_whole() {
        let original = PiperVoice::default_model();
        let dir = std::env::temp_dir().join(format!("remotemedia-uncut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("uncut.onnx");
        std::fs::copy(&original, &model)
            .unwrap_or_else(|e| panic!("{e}; install the models with ./scripts/setup-models.sh"));
        std::fs::copy(config_path(&original), config_path(&model)).unwrap();
        let cache = split_dir(&model).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("encoder.onnx"), b"damaged").unwrap();
        std::fs::write(cache.join("vocoder.onnx"), b"damaged").unwrap();
        let voice = PiperVoice::load(&model, 1).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!voice.streams());
        let prepared = voice.prepare("Still speaking.").unwrap();
        let mut pieces = 0;
        let n = voice
            .synthesize_streaming(&prepared.sentences[0].ids, voice.default_scales(), |_| {
                pieces += 1
            })
            .unwrap();
        assert_eq!(pieces, 1);
        assert!(n > 22_050 / 4, "{n} samples");
    }

    #[test]
    fn a_config_that_is_not_a_voice_is_reported() {
        let path = std::env::temp_dir().join(format!("not-a-voice-{}.json", std::process::id()));
        std::fs::write(&path, "{\"audio\": {}}").unwrap();
        let err = VoiceConfig::load(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.to_string().starts_with(&format!(
                "could not load model {}: not a Piper voice config",
                path.display()
            )),
            "{err}"
        );
    }
}
