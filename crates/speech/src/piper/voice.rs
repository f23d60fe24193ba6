//! A loaded Piper voice: the shared ONNX sessions (whole, or cut at the vocoder) and the runs
//! that turn phoneme ids into audio.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;

use super::config::{VoiceConfig, config_path};
use super::noise;
use super::phonemes::{self, Prepared};
use super::split::split_model;
use crate::espeak::Espeak;
use crate::models::{self, ModelError, SharedSession};
use crate::tts::TtsError;

/// Inference settings: Piper's `scales` input, and the seed of its noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scales {
    pub noise_scale: f32,
    /// Duration multiplier: above 1 is slower.
    pub length_scale: f32,
    pub noise_w: f32,
    /// Mixed with each sentence's phoneme ids into the seed of its noise: the same sentence,
    /// scales and seed give the same samples (when the model could be cut; see
    /// [`PiperVoice::repeatable`]).
    pub seed: u64,
}

/// A loaded Piper voice: the shared model and its config. Cheap to clone.
#[derive(Clone)]
pub struct PiperVoice {
    graph: Graph,
    config: Arc<VoiceConfig>,
    /// The model takes a speaker id (multi-speaker voices); speaker 0 is used.
    takes_speaker: bool,
    /// Noise tables the model takes as inputs (`noise_0`, …) instead of drawing its own.
    noise_tables: usize,
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

/// Latent frames of context decoded on each side of a piece and then dropped. The vocoder of
/// Piper voices sees less than this far (pieces measured equal to the whole within 2e-6).
const VOCODER_CONTEXT: usize = 16;
/// Frames in the first piece of a streamed sentence (16 frames are about 0.19 s at 22 050 Hz);
/// each later piece doubles, up to [`MAX_PIECE_FRAMES`], so the context overhead shrinks.
const FIRST_PIECE_FRAMES: usize = 16;
const MAX_PIECE_FRAMES: usize = 256;

impl PiperVoice {
    /// Loads the voice at `model` (config at `<model>.json`), shared with every other user of the
    /// same file and thread count, and checks that espeak-ng has its phonemiser voice.
    pub fn load(model: &Path, threads: usize) -> Result<Self, TtsError> {
        Self::load_instance(model, threads, 0)
    }

    /// Like [`PiperVoice::load`], but copy `instance` of the model (0 is the shared one), for a
    /// scheduler thread that runs it beside the others ([`models::session_instance`]).
    pub fn load_instance(model: &Path, threads: usize, instance: usize) -> Result<Self, TtsError> {
        models::require_file(model)?;
        let config = VoiceConfig::load(&config_path(model))?;
        Espeak::lock()?.set_voice(&config.espeak_voice)?;
        let split = split_model(model).unwrap_or_else(|e| {
            tracing::warn!(model = %model.display(), "voice runs whole, without streaming: {e}");
            None
        });
        // A cut that ONNX Runtime will not load is no reason to refuse the voice itself.
        let halves = split.and_then(|(encoder, vocoder)| {
            let load = |p: &Path| models::session_instance(p, threads, instance);
            match (load(&encoder), load(&vocoder)) {
                (Ok(e), Ok(v)) => Some((e, v)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(model = %model.display(), "voice runs whole: {e}");
                    None
                }
            }
        });
        let (graph, (takes_speaker, noise_tables)) = match halves {
            Some((encoder, vocoder)) => {
                let signature = check_signature(&encoder.lock(), model)?;
                (Graph::Split { encoder, vocoder }, signature)
            }
            None => {
                let whole = models::session_instance(model, threads, instance)?;
                let signature = check_signature(&whole.lock(), model)?;
                (Graph::Whole(whole), signature)
            }
        };
        Ok(Self {
            graph,
            config: Arc::new(config),
            takes_speaker,
            noise_tables,
        })
    }

    /// True when the model's noise comes from [`Scales::seed`], so a sentence always gives the
    /// same samples; false for a model that could not be cut (ONNX Runtime draws its noise).
    pub fn repeatable(&self) -> bool {
        self.noise_tables > 0
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
            seed: 0,
        }
    }

    /// Splits, cleans and phonemises `text`. Fast (about a millisecond per sentence), but takes
    /// the process-wide espeak-ng lock.
    pub fn prepare(&self, text: &str) -> Result<Prepared, TtsError> {
        phonemes::prepare(&self.config, text)
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

    /// Runs the model, or its encoder half, on one sentence; returns the first output. The noise
    /// tables are sized for a sentence of up to ~12 latent frames per id at this speed; a
    /// slower one fails on too short a table and is run again with tables four times longer
    /// (which start with the same values, so the result is as if they had been long enough).
    fn run_front(
        &self,
        session: &mut Session,
        ids: &[i64],
        s: Scales,
    ) -> ort::Result<(Vec<i64>, Vec<f32>)> {
        let first = ids.len() * 2048 * s.length_scale.max(1.0).ceil() as usize;
        match self.run_front_with(session, ids, s, first) {
            Err(_) if self.noise_tables > 0 => self.run_front_with(session, ids, s, first * 4),
            result => result,
        }
    }

    fn run_front_with(
        &self,
        session: &mut Session,
        ids: &[i64],
        s: Scales,
        table_len: usize,
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
        let seed = noise::sentence_seed(s.seed, ids);
        let tables: Vec<Vec<f32>> = (0..self.noise_tables)
            .map(|k| noise::normal_table(seed.wrapping_add(k as u64), table_len))
            .collect();
        for (k, table) in tables.iter().enumerate() {
            inputs.push((
                format!("noise_{k}").into(),
                TensorRef::from_array_view(([table.len()], table.as_slice()))?.into(),
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

/// Rejects a model that is not a Piper voice when it loads, not at the first sentence; tells
/// whether it takes a speaker id and how many noise tables (`noise_0`, … from the cut).
fn check_signature(session: &Session, path: &Path) -> Result<(bool, usize), ModelError> {
    let mut inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let before = inputs.len();
    inputs.retain(|name| !name.starts_with("noise_"));
    let noise_tables = before - inputs.len();
    inputs.sort_unstable();
    match inputs.as_slice() {
        ["input", "input_lengths", "scales"] => Ok((false, noise_tables)),
        ["input", "input_lengths", "scales", "sid"] => Ok((true, noise_tables)),
        _ => Err(ModelError::Load {
            path: path.to_path_buf(),
            reason: format!(
                "not a Piper voice: inputs {inputs:?} (expected \"input\", \"input_lengths\", \
                 \"scales\" and optionally \"sid\")"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piper::split::split_dir;

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
}
