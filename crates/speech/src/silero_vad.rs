//! Voice activity detection with the Silero VAD model on ONNX Runtime.
//!
//! The model scores one window of 512 samples at 16 kHz (256 at 8 kHz) at a time. It needs the
//! last 64 (32) samples of the previous window in front of each window and its recurrent state
//! carried from one window to the next; skipping either makes it miss speech mid-utterance. The
//! loaded model is shared by the whole process ([`crate::models::shared_session`]); the state
//! and context live in each [`SileroVad`], so every stream has its own.
//!
//! Windows of different streams that arrive together run as one batch ([`Combiner`]): the
//! state has a batch dimension, and a batch gives each row exactly what it gets alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use ort::session::Session;
use ort::value::TensorRef;
use remotemedia_audio::frame::{fatal, mono_input};
use remotemedia_audio::vad::{VadEvents, vad_ports};
use remotemedia_audio::{VadTiming, VadTracker};
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{Control, Node, NodeContext, NodeError, Outputs, Packet};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::models::{self, ModelError, SharedSession};
use remotemedia_core::rt::block_here;

/// Floats in the model's recurrent state (`[2, 1, 128]`).
const STATE_LEN: usize = 2 * 128;

/// Window and context sizes the model was trained with, per sample rate.
pub fn window_size(sample_rate: u32) -> Option<(usize, usize)> {
    match sample_rate {
        16_000 => Some((512, 64)),
        8_000 => Some((256, 32)),
        _ => None,
    }
}

/// One stream's view of the shared Silero model: its context and recurrent state.
pub struct SileroVad {
    combiner: Arc<Combiner>,
    window: usize,
    context: usize,
    /// Context followed by the window, reused for every run; after a run its tail is the next
    /// window's context.
    input: Vec<f32>,
    state: Vec<f32>,
}

impl SileroVad {
    /// Opens the model at `model` (shared with every other stream of the process that uses the
    /// same file and thread count) for audio at `sample_rate` (16000 or 8000).
    pub fn new(model: &Path, sample_rate: u32, threads: usize) -> Result<Self, ModelError> {
        Self::on_device(model, sample_rate, threads, crate::device::default_device())
    }

    /// [`SileroVad::new`] on a given device.
    pub fn on_device(
        model: &Path,
        sample_rate: u32,
        threads: usize,
        device: crate::device::Device,
    ) -> Result<Self, ModelError> {
        let Some((window, context)) = window_size(sample_rate) else {
            return Err(ModelError::Load {
                path: model.to_path_buf(),
                reason: format!("Silero VAD runs at 16000 or 8000 Hz, not {sample_rate} Hz"),
            });
        };
        let config = format!("threads={threads},rate={sample_rate},device={device:?}");
        let model_path = model.to_path_buf();
        let combiner = models::shared_object(model, "silero-batches", &config, move || {
            let single = Runner::open(&model_path, threads, device, sample_rate)?;
            if !single.takes_rate && sample_rate != 16_000 {
                return Err(ModelError::Load {
                    path: model_path.clone(),
                    reason: format!("this model runs at 16000 Hz only, not {sample_rate} Hz"),
                });
            }
            // Batches run on a model with a batch dimension: this one, or the general model
            // beside the fixed-shape 16 kHz export (they score identically, tested).
            let batched = if single.batchable {
                Some(single.clone())
            } else {
                let general = model_path.with_file_name(
                    Path::new(models::SILERO_VAD_MODEL)
                        .file_name()
                        .unwrap_or_default(),
                );
                general
                    .is_file()
                    .then(|| Runner::open(&general, threads, device, sample_rate))
                    .transpose()?
                    .filter(|r| r.batchable)
            };
            Ok(Combiner::new(single, batched, context + window))
        })?;
        Ok(Self {
            combiner,
            window,
            context,
            input: vec![0.0; context + window],
            state: vec![0.0; STATE_LEN],
        })
    }

    /// The default model in the models directory for a sample rate: the 16 kHz-only export
    /// at 16 kHz, the general model otherwise.
    pub fn default_model(sample_rate: u32) -> PathBuf {
        let file = if sample_rate == 16_000 {
            models::SILERO_VAD_16K_MODEL
        } else {
            models::SILERO_VAD_MODEL
        };
        models::models_dir().join(file)
    }

    /// Samples per window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Forgets context and state, as at the start of a stream.
    pub fn reset(&mut self) {
        self.input.fill(0.0);
        self.state.fill(0.0);
    }

    /// Batches of several streams' windows run on this model so far, and the windows in them.
    pub fn batches(&self) -> (u64, u64) {
        let c = &self.combiner;
        (c.batches.load(Relaxed), c.batched_windows.load(Relaxed))
    }

    /// Speech probability of the next window, which must hold exactly [`Self::window`] samples.
    /// Blocks while other streams' windows run; may run theirs with its own.
    pub fn probability(&mut self, window: &[f32]) -> Result<f32, ModelError> {
        if window.len() != self.window {
            return Err(self.combiner.single.session.inference_error(format!(
                "window of {} samples, expected {}",
                window.len(),
                self.window
            )));
        }
        // The previous input's last `context` samples move to the front.
        self.input.copy_within(self.window.., 0);
        self.input[self.context..].copy_from_slice(window);
        self.combiner.run(&self.input, &mut self.state)
    }
}

/// A loaded Silero model and how it is called.
#[derive(Clone)]
struct Runner {
    session: Arc<SharedSession>,
    /// The rate input, for models that take one (the 16 kHz-only export does not).
    sr: Option<[i64; 1]>,
    takes_rate: bool,
    /// The input's first dimension is free: rows of several streams can run at once.
    batchable: bool,
}

impl Runner {
    fn open(
        model: &Path,
        threads: usize,
        device: crate::device::Device,
        sample_rate: u32,
    ) -> Result<Self, ModelError> {
        let session = models::shared_session_on(model, threads, device)?;
        let (takes_rate, batchable) = {
            let s = session.lock();
            let takes_rate = check_signature(&s, model)?;
            let batchable = s
                .inputs()
                .first()
                .and_then(|i| i.dtype().tensor_shape())
                .is_some_and(|shape| shape.first().is_some_and(|d| *d < 0));
            (takes_rate, batchable)
        };
        Ok(Self {
            session,
            sr: takes_rate.then_some([i64::from(sample_rate)]),
            takes_rate,
            batchable,
        })
    }

    /// Runs `rows` inputs (each context + window) with their states (`[2, rows, 128]`, layer
    /// major), writing the new states back; the probability of each row.
    fn run(&self, input: &[f32], rows: usize, state: &mut [f32]) -> ort::Result<Vec<f32>> {
        let mut session = self.session.lock();
        let width = input.len() / rows;
        let x = TensorRef::from_array_view(([rows, width], input))?;
        let h = TensorRef::from_array_view(([2usize, rows, 128], &*state))?;
        let outputs = match &self.sr {
            Some(sr) => session.run(ort::inputs![
                x,
                h,
                TensorRef::from_array_view(((), sr.as_slice()))?
            ])?,
            None => session.run(ort::inputs![x, h])?,
        };
        let (_, p) = outputs[0].try_extract_tensor::<f32>()?;
        let p = p.to_vec();
        let (_, new_state) = outputs[1].try_extract_tensor::<f32>()?;
        if p.len() != rows || new_state.len() != state.len() {
            return Err(ort::Error::new(format!(
                "outputs of {} probabilities and {} state values for {rows} rows",
                p.len(),
                new_state.len()
            )));
        }
        state.copy_from_slice(new_state);
        Ok(p)
    }
}

/// The windows of every stream on one Silero model, run together when they meet. A stream
/// whose window arrives while a batch runs waits, and the first waiting stream runs the next
/// batch on its own thread with everything that came meanwhile: no scheduler thread, so a lone
/// stream pays no hand-over and runs on the model it chose (the fast fixed-shape export), while
/// many streams run in batches on a model with a batch dimension (55 µs a window at 32 rows
/// against 93–116 alone).
pub struct Combiner {
    single: Runner,
    batched: Option<Runner>,
    width: usize,
    queue: Mutex<Waiting>,
    done: Condvar,
    /// Batches of more than one window run, and the windows in them.
    batches: AtomicU64,
    batched_windows: AtomicU64,
}

/// Windows per batch at most.
const MAX_BATCH: usize = 32;

#[derive(Default)]
struct Waiting {
    /// Windows waiting for a batch: id, input, state.
    jobs: Vec<(u64, Vec<f32>, Vec<f32>)>,
    running: bool,
    next_id: u64,
    /// Finished windows: probability and new state, or the error.
    results: HashMap<u64, Result<(f32, Vec<f32>), String>>,
}

impl Combiner {
    fn new(single: Runner, batched: Option<Runner>, width: usize) -> Self {
        Self {
            single,
            batched,
            width,
            queue: Mutex::default(),
            done: Condvar::new(),
            batches: AtomicU64::new(0),
            batched_windows: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scores one window (context + window in `input`), updating `state`.
    fn run(&self, input: &[f32], state: &mut [f32]) -> Result<f32, ModelError> {
        let mut q = self.lock();
        let id = q.next_id;
        q.next_id += 1;
        q.jobs.push((id, input.to_vec(), state.to_vec()));
        loop {
            if let Some(result) = q.results.remove(&id) {
                let (p, new_state) = result.map_err(|e| self.single.session.inference_error(e))?;
                state.copy_from_slice(&new_state);
                return Ok(p);
            }
            if q.running {
                q = self.done.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nobody is running: this thread runs what is waiting (its own window among it).
            q.running = true;
            let take = q.jobs.len().min(MAX_BATCH);
            let batch: Vec<_> = q.jobs.drain(..take).collect();
            drop(q);
            let results = self.run_batch(&batch);
            q = self.lock();
            for ((id, ..), r) in batch.iter().zip(results) {
                q.results.insert(*id, r);
            }
            q.running = false;
            self.done.notify_all();
        }
    }

    fn run_batch(
        &self,
        batch: &[(u64, Vec<f32>, Vec<f32>)],
    ) -> Vec<Result<(f32, Vec<f32>), String>> {
        let fail = |e: ort::Error| vec![Err(e.to_string()); batch.len()];
        let runner = match &self.batched {
            Some(b) if batch.len() > 1 => b,
            _ => {
                // One at a time on the stream's own model.
                return batch
                    .iter()
                    .map(|(_, input, state)| {
                        let mut state = state.clone();
                        self.single
                            .run(input, 1, &mut state)
                            .map(|p| (p[0], state))
                            .map_err(|e| e.to_string())
                    })
                    .collect();
            }
        };
        let rows = batch.len();
        self.batches.fetch_add(1, Relaxed);
        self.batched_windows.fetch_add(rows as u64, Relaxed);
        let mut input = Vec::with_capacity(rows * self.width);
        // States are [2, rows, 128]: layer 0 of every row, then layer 1.
        let mut state = vec![0.0; STATE_LEN * rows];
        for (r, (_, x, h)) in batch.iter().enumerate() {
            input.extend_from_slice(x);
            for layer in 0..2 {
                let at = (layer * rows + r) * 128;
                state[at..at + 128].copy_from_slice(&h[layer * 128..(layer + 1) * 128]);
            }
        }
        match runner.run(&input, rows, &mut state) {
            Ok(p) => (0..rows)
                .map(|r| {
                    let mut h = vec![0.0; STATE_LEN];
                    for layer in 0..2 {
                        let at = (layer * rows + r) * 128;
                        h[layer * 128..(layer + 1) * 128].copy_from_slice(&state[at..at + 128]);
                    }
                    Ok((p[r], h))
                })
                .collect(),
            Err(e) => fail(e),
        }
    }
}

/// Rejects a file that is not a Silero VAD model up front, rather than on the first frame;
/// tells whether the model takes the sample rate as an input.
fn check_signature(session: &Session, path: &Path) -> Result<bool, ModelError> {
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    if inputs == ["input", "state", "sr"] && outputs.len() == 2 {
        Ok(true)
    } else if inputs == ["input", "state"] && outputs.len() == 2 {
        Ok(false)
    } else {
        Err(ModelError::Load {
            path: path.to_path_buf(),
            reason: format!(
                "not a Silero VAD model: inputs {inputs:?}, outputs {outputs:?} \
                 (expected inputs [\"input\", \"state\"(, \"sr\")] and two outputs)"
            ),
        })
    }
}

/// Settings of [`SileroVADNode`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SileroVadParams {
    /// A window whose speech probability is at or above this is speech.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f32,
    /// A window below this is silence; between the two keeps the current state. Default:
    /// `threshold - 0.15` (at least 0.01), as in the Silero reference implementation.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub neg_threshold: Option<f32>,
    /// `min_speech_ms`, `min_silence_ms` and `speech_pad_ms`, beside the other params.
    #[serde(flatten)]
    pub timing: VadTiming,
    /// Rate of the incoming mono audio: 16000 (512-sample windows) or 8000 (256-sample windows).
    /// Other rates must be resampled upstream.
    pub sample_rate: u32,
    /// ONNX Runtime intra-op threads for the shared model; 1 suits many concurrent streams.
    #[schemars(range(min = 1, max = 16))]
    pub threads: usize,
    /// Also emit each window's speech probability as a `probability` event, stamped with the
    /// window's start (for plotting and tuning; off by default as it is one event per 32 ms).
    pub emit_probability: bool,
    /// Model file; default `silero-vad/silero_vad_openvino_16k.onnx` at 16 kHz and
    /// `silero-vad/silero_vad.onnx` at 8 kHz, in the models directory.
    pub model: Option<PathBuf>,
    /// Where the model runs; unset follows the process default (`--device`, else `auto`).
    pub device: Option<crate::device::Device>,
}

impl Default for SileroVadParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            timing: VadTiming::default(),
            sample_rate: 16_000,
            threads: 1,
            emit_probability: false,
            model: None,
            device: None,
        }
    }
}

/// Finds speech in mono audio with the Silero model.
///
/// Every input frame is passed on unchanged (same shared buffer) and, right after the frame
/// during which it was decided, `speech_start` / `speech_end` events
/// ([`remotemedia_audio::VadEvent`] as JSON, stamped with the event's own stream time) follow on
/// the same port. Audio is cut into windows regardless of how it was framed, so results do not
/// depend on the frame size. At a flush the final partial window is zero-padded and scored (as
/// the reference implementation does), and an open speech region is closed at the end of the
/// audio.
pub struct SileroVADNode {
    engine: Option<Box<Engine>>,
    events: VadEvents,
    sample_rate: u32,
}

/// What inference needs, boxed so it can move to a blocking thread and back cheaply.
struct Engine {
    vad: SileroVad,
    /// Samples waiting for a full window.
    pending: Vec<f32>,
    /// Probabilities of the windows completed by the last call to [`Engine::feed`].
    probs: Vec<f32>,
}

impl Engine {
    /// Scores every window that `samples` completes, keeping the rest for next time.
    fn feed(&mut self, mut samples: &[f32]) -> Result<(), ModelError> {
        self.probs.clear();
        let w = self.vad.window();
        if !self.pending.is_empty() {
            let take = (w - self.pending.len()).min(samples.len());
            self.pending.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.pending.len() < w {
                return Ok(());
            }
            let p = self.vad.probability(&self.pending)?;
            self.probs.push(p);
            self.pending.clear();
        }
        let mut windows = samples.chunks_exact(w);
        for window in &mut windows {
            let p = self.vad.probability(window)?;
            self.probs.push(p);
        }
        self.pending.extend_from_slice(windows.remainder());
        Ok(())
    }

    /// Scores the final partial window, zero-padded; returns how many real samples it held.
    fn finish(&mut self) -> Result<usize, ModelError> {
        self.probs.clear();
        let real = self.pending.len();
        if real > 0 {
            self.pending.resize(self.vad.window(), 0.0);
            let p = self.vad.probability(&self.pending)?;
            self.probs.push(p);
            self.pending.clear();
        }
        Ok(real)
    }
}

impl SileroVADNode {
    /// Runs `job` on the engine without stalling the async reactor.
    async fn with_engine<R: Send + 'static>(
        &mut self,
        job: impl FnOnce(&mut Engine) -> Result<R, ModelError> + Send + 'static,
    ) -> Result<R, NodeError> {
        let Some(mut engine) = self.engine.take() else {
            return Err(fatal(Self::NAME, "state lost after an earlier failure"));
        };
        let (engine, result) = block_here(move || {
            let r = job(&mut engine);
            (engine, r)
        })
        .await
        .map_err(|e| fatal(Self::NAME, e))?;
        self.engine = Some(engine);
        result.map_err(|e| fatal(Self::NAME, e))
    }

    /// Turns the probabilities of the windows just scored into events; `last_len` is the number
    /// of real samples in the last window (less than a window only at a flush).
    fn emit(&mut self, out: &mut Outputs, last_len: Option<usize>) {
        let Some(engine) = self.engine.as_ref() else {
            return;
        };
        let w = engine.vad.window() as u64;
        let n = engine.probs.len();
        for (i, &p) in engine.probs.iter().enumerate() {
            let len = match last_len {
                Some(l) if i + 1 == n => l as u64,
                _ => w,
            };
            self.events.frame(len, p, out);
        }
    }
}

#[async_trait]
impl Node for SileroVADNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let frame = mono_input(Self::NAME, self.sample_rate, input)?;
        self.events.start(input.timestamp, self.sample_rate);
        out.push(input.data.clone());
        // A frame that completes no window is only buffered: no need to leave the reactor.
        if let Some(e) = self.engine.as_mut()
            && e.pending.len() + frame.samples().len() < e.vad.window()
        {
            e.pending.extend_from_slice(frame.samples());
            return Ok(());
        }
        let samples = frame.shared_samples().clone();
        self.with_engine(move |e| e.feed(&samples)).await?;
        self.emit(out, None);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let real = self.with_engine(Engine::finish).await?;
        self.emit(out, Some(real));
        self.events.finish(out);
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { .. } = control {
            if let Some(engine) = self.engine.as_mut() {
                engine.vad.reset();
                engine.pending.clear();
                engine.probs.clear();
            }
            self.events.reset();
        }
        Ok(())
    }
}

impl NodeType for SileroVADNode {
    type Params = SileroVadParams;
    const NAME: &'static str = "SileroVAD";
    const DESCRIPTION: &'static str = "Detects speech with the Silero VAD model; passes audio through and adds speech start/end events";

    fn ports() -> Ports {
        vad_ports()
    }

    fn new(p: SileroVadParams, _: &NodeContext) -> Result<Self, NodeError> {
        if window_size(p.sample_rate).is_none() {
            return Err(fatal(
                Self::NAME,
                format!("sample_rate must be 16000 or 8000, not {}", p.sample_rate),
            ));
        }
        let neg = p
            .neg_threshold
            .unwrap_or_else(|| (p.threshold - 0.15).max(0.01));
        let model = p
            .model
            .unwrap_or_else(|| SileroVad::default_model(p.sample_rate));
        let device = p.device.unwrap_or_else(crate::device::default_device);
        let vad = SileroVad::on_device(&model, p.sample_rate, p.threads, device)
            .map_err(|e| NodeError::from_error(Self::NAME, &e))?;
        let window = vad.window();
        Ok(Self {
            engine: Some(Box::new(Engine {
                vad,
                pending: Vec::with_capacity(window),
                probs: Vec::new(),
            })),
            events: VadEvents::new(
                VadTracker::new(p.threshold, neg, &p.timing),
                p.emit_probability,
            ),
            sample_rate: p.sample_rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PathBuf {
        let path = SileroVad::default_model(16_000);
        if let Err(e) = models::require_file(&path) {
            panic!("{e}");
        }
        path
    }

    /// A deterministic speech-like signal: a vowel-ish harmonic tone with a syllable envelope.
    fn babble(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let env = (std::f32::consts::PI * 4.0 * t).sin().abs();
                let f0 = 120.0 + 30.0 * (2.0 * t).sin();
                (1..8)
                    .map(|k| (2.0 * std::f32::consts::PI * f0 * k as f32 * t).sin() / k as f32)
                    .sum::<f32>()
                    * 0.2
                    * env
            })
            .collect()
    }

    /// Streams whose windows meet run as one batch on the general model and get exactly the
    /// probabilities they get alone on the 16 kHz export.
    #[test]
    fn windows_of_streams_that_meet_run_as_one_batch_with_the_results_they_get_alone() {
        const STREAMS: usize = 6;
        // The same number of windows each (the barrier below counts on it).
        let audio: Vec<Vec<f32>> = (0..STREAMS)
            .map(|i| babble(16_000)[i * 1_000..][..8_192].to_vec())
            .collect();
        let alone: Vec<Vec<f32>> = audio
            .iter()
            .map(|a| {
                let mut v = SileroVad::new(&model(), 16_000, 1).unwrap();
                a.chunks_exact(512)
                    .map(|w| v.probability(w).unwrap())
                    .collect()
            })
            .collect();
        let probe = SileroVad::new(&model(), 16_000, 1).unwrap();
        let before = probe.batches();
        let vads: Vec<SileroVad> = (0..STREAMS)
            .map(|_| SileroVad::new(&model(), 16_000, 1).unwrap())
            .collect();
        // Every stream sends its next window at the same moment. The first round also waits
        // behind a busy model (its lock held here) until every other stream's window is
        // queued, so at least one batch surely forms.
        let barrier = Arc::new(std::sync::Barrier::new(STREAMS));
        let busy = probe.combiner.single.session.lock();
        let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = audio
                .iter()
                .zip(vads)
                .map(|(a, mut v)| {
                    let barrier = Arc::clone(&barrier);
                    scope.spawn(move || {
                        a.chunks_exact(512)
                            .map(|w| {
                                barrier.wait();
                                v.probability(w).unwrap()
                            })
                            .collect::<Vec<f32>>()
                    })
                })
                .collect();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while probe.combiner.lock().jobs.len() < STREAMS - 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the windows never queued"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(busy);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(together, alone);
        let after = probe.batches();
        let (batches, windows) = (after.0 - before.0, after.1 - before.1);
        assert!(
            batches > 0 && windows >= 2 * batches,
            "{batches} batches of {windows} windows"
        );
    }

    #[test]
    fn the_16k_export_refuses_another_rate_by_name() {
        let err = SileroVad::new(&model(), 8_000, 1).err().unwrap();
        assert!(
            err.to_string().contains("16000 Hz only, not 8000 Hz"),
            "{err}"
        );
    }

    #[test]
    fn streams_share_the_model_but_not_the_state() {
        let audio = babble(16_000);
        let mut a = SileroVad::new(&model(), 16_000, 1).unwrap();
        let mut b = SileroVad::new(&model(), 16_000, 1).unwrap();
        assert!(Arc::ptr_eq(&a.combiner, &b.combiner));
        let alone: Vec<f32> = audio
            .chunks_exact(512)
            .map(|w| a.probability(w).unwrap())
            .collect();
        a.reset();
        // Interleaving another stream (fed silence) changes nothing for this one.
        let mut interleaved = Vec::new();
        for w in audio.chunks_exact(512) {
            interleaved.push(a.probability(w).unwrap());
            b.probability(&[0.0; 512]).unwrap();
        }
        assert_eq!(alone, interleaved);
        // Carrying state and context matters: a fresh model per window scores differently.
        let stateless: Vec<f32> = audio
            .chunks_exact(512)
            .map(|w| {
                b.reset();
                b.probability(w).unwrap()
            })
            .collect();
        assert_ne!(alone, stateless);
    }

    #[test]
    fn wrong_window_length_is_an_error_not_a_panic() {
        let mut vad = SileroVad::new(&model(), 16_000, 1).unwrap();
        let err = vad.probability(&[0.0; 100]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("window of 100 samples, expected 512"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_model_is_reported() {
        let path = std::env::temp_dir().join(format!("not-a-model-{}.onnx", std::process::id()));
        std::fs::write(&path, b"not an onnx file").unwrap();
        let err = SileroVad::new(&path, 16_000, 1).err().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.to_string()
                .starts_with(&format!("could not load model {}: ", path.display())),
            "{err}"
        );
    }
}
