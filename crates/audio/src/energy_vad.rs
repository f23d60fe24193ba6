//! Voice activity from signal energy and spectral flatness: no model, thousands of times faster
//! than real time, good enough in quiet rooms and as a first gate before a model VAD.
//!
//! A frame counts as speech when it is loud enough *and* its spectrum is peaky (voiced sounds
//! have harmonics; steady noise is flat). The decisions go through the same timing rules as
//! every VAD ([`VadTracker`]), whose `min_silence_ms` is the hangover.

use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{AudioFrame, Control, Node, NodeContext, NodeError, Outputs, Packet};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::{MAX_SAMPLE_RATE, audio_input, downmix, fatal};
use crate::vad::{VadEvents, VadTiming, VadTracker, vad_ports};

/// Settings of [`EnergyVad`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyVadParams {
    /// Analysis frame length.
    #[schemars(range(min = 5, max = 100))]
    pub frame_ms: u32,
    /// Frames quieter than this (RMS, dB relative to full scale) are silence.
    #[schemars(range(min = -120.0, max = 0.0))]
    pub energy_threshold_db: f32,
    /// Frames whose spectral flatness (0 = pure tone, 1 = white noise) is above this are noise.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub flatness_threshold: f32,
    // The three timing fields repeat `VadTiming`'s on purpose: flattening a `VadTiming` here
    // would bring Silero's defaults with it, and this detector's differ (a longer hangover).
    /// Speech must last this long before a start is reported.
    #[schemars(range(max = 10_000))]
    pub min_speech_ms: u32,
    /// Silence must last this long before an end is reported (the hangover).
    #[schemars(range(max = 10_000))]
    pub min_silence_ms: u32,
    /// Widens each speech region by this much on both sides.
    #[schemars(range(max = 2_000))]
    pub speech_pad_ms: u32,
    /// Also emit a probability event (0 or 1) for every analysis frame.
    pub emit_probability: bool,
}

impl Default for EnergyVadParams {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            energy_threshold_db: -40.0,
            flatness_threshold: 0.5,
            min_speech_ms: 100,
            min_silence_ms: 300,
            speech_pad_ms: 30,
            emit_probability: false,
        }
    }
}

/// Energy + spectral-flatness voice activity detector.
pub struct EnergyVad {
    p: EnergyVadParams,
    events: VadEvents,
    analysis: Option<Analysis>,
    /// Mono samples not yet analysed.
    pending: Vec<f32>,
}

/// Per-rate state: frame size, window and FFT plan, reused for every frame.
struct Analysis {
    rate: u32,
    frame: usize,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

impl Analysis {
    fn new(rate: u32, frame_ms: u32) -> Self {
        let frame = (rate as usize * frame_ms as usize / 1000).max(16);
        let n = frame.next_power_of_two();
        let window = (0..frame)
            .map(|i| {
                let x = std::f32::consts::TAU * i as f32 / frame as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(n);
        let scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
        Self {
            rate,
            frame,
            window,
            fft,
            buf: vec![Complex32::default(); n],
            scratch,
        }
    }

    /// (RMS level in dBFS, spectral flatness in [0, 1]) of one frame.
    fn measure(&mut self, x: &[f32]) -> (f32, f32) {
        let power = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let db = 10.0 * (power + 1e-12).log10();
        for (i, c) in self.buf.iter_mut().enumerate() {
            let v = x.get(i).map_or(0.0, |s| s * self.window[i]);
            *c = Complex32::new(v, 0.0);
        }
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let bins = &self.buf[1..self.buf.len() / 2];
        let (mut log_sum, mut sum) = (0.0f32, 0.0f32);
        for c in bins {
            let p = c.norm_sqr() + 1e-12;
            log_sum += p.ln();
            sum += p;
        }
        let n = bins.len() as f32;
        let flatness = (log_sum / n).exp() / (sum / n);
        (db, flatness.clamp(0.0, 1.0))
    }
}

#[async_trait]
impl Node for EnergyVad {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let frame = self.accept(input)?;
        out.push(input.data.clone());
        let ch = usize::from(frame.channels);
        if ch == 1 {
            self.pending.extend_from_slice(frame.samples());
        } else {
            self.pending.extend(downmix(frame.samples(), ch));
        }
        self.analyse(out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.events.finish(out);
        self.pending.clear();
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if matches!(control, Control::Cancel { .. }) {
            self.events.reset();
            self.pending.clear();
            self.analysis = None;
        }
        Ok(())
    }
}

impl EnergyVad {
    /// The audio in `input`; the first frame sets the rate the analysis is made for, and a
    /// later one must keep it (any channel count is fine: the analysis takes their mean).
    fn accept<'a>(&mut self, input: &'a Packet) -> Result<&'a AudioFrame, NodeError> {
        let frame = audio_input(Self::NAME, input)?;
        match &self.analysis {
            Some(a) if a.rate != frame.sample_rate => {
                return Err(fatal(
                    Self::NAME,
                    format!(
                        "sample rate changed mid-stream from {} Hz to {} Hz",
                        a.rate, frame.sample_rate
                    ),
                ));
            }
            Some(_) => {}
            None => {
                if !(1_000..=MAX_SAMPLE_RATE).contains(&frame.sample_rate) {
                    return Err(fatal(
                        Self::NAME,
                        format!("cannot analyse audio at {} Hz", frame.sample_rate),
                    ));
                }
                self.analysis = Some(Analysis::new(frame.sample_rate, self.p.frame_ms));
                self.events.start(input.timestamp, frame.sample_rate);
            }
        }
        Ok(frame)
    }

    /// Analyses every whole frame of pending audio, emitting decided events.
    fn analyse(&mut self, out: &mut Outputs) {
        let Some(a) = self.analysis.as_mut() else {
            return;
        };
        let mut used = 0;
        while self.pending.len() - used >= a.frame {
            let (db, flatness) = a.measure(&self.pending[used..used + a.frame]);
            used += a.frame;
            let speech = db > self.p.energy_threshold_db && flatness < self.p.flatness_threshold;
            let p = if speech { 1.0 } else { 0.0 };
            self.events.frame(a.frame as u64, p, out);
        }
        self.pending.drain(..used);
    }
}

impl NodeType for EnergyVad {
    type Params = EnergyVadParams;
    const NAME: &'static str = "EnergyVAD";
    const DESCRIPTION: &'static str = "Voice activity from energy and spectral flatness; passes audio through and adds speech start/end events";

    fn ports() -> Ports {
        vad_ports()
    }

    fn new(p: EnergyVadParams, _: &NodeContext) -> Result<Self, NodeError> {
        let timing = VadTiming {
            min_speech_ms: p.min_speech_ms,
            min_silence_ms: p.min_silence_ms,
            speech_pad_ms: p.speech_pad_ms,
            pause_ms: 0,
        };
        Ok(Self {
            events: VadEvents::new(VadTracker::new(0.5, 0.5, &timing), p.emit_probability),
            p,
            analysis: None,
            pending: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::format_change_error;
    use crate::vad::VadEvent;
    use remotemedia_core::RuntimeData;
    use remotemedia_core::testing::NodeHarness;
    use serde_json::json;

    const RATE: u32 = 16_000;

    /// A crude voiced sound: 150 Hz with decaying harmonics.
    fn vowel(secs: f32) -> Vec<f32> {
        let n = (RATE as f32 * secs) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / RATE as f32;
                (1..8)
                    .map(|k| 0.3 / k as f32 * (std::f32::consts::TAU * 150.0 * k as f32 * t).sin())
                    .sum()
            })
            .collect()
    }

    /// Deterministic white noise of the given amplitude.
    fn noise(secs: f32, amp: f32) -> Vec<f32> {
        let mut state = 0x2545_f491_u32;
        (0..(RATE as f32 * secs) as usize)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                amp * (state as f32 / u32::MAX as f32 * 2.0 - 1.0)
            })
            .collect()
    }

    async fn events(signal: &[f32]) -> Vec<VadEvent> {
        let mut h = NodeHarness::new::<EnergyVad>(json!({})).unwrap();
        let mut out = Vec::new();
        for chunk in signal.chunks(480) {
            let data = h
                .push(RuntimeData::audio(chunk.to_vec(), RATE, 1))
                .await
                .unwrap();
            assert!(data[0].as_audio().is_some(), "audio passes through first");
            out.extend(data.iter().filter_map(VadEvent::from_data));
        }
        out.extend(
            h.flush()
                .await
                .unwrap()
                .iter()
                .filter_map(VadEvent::from_data),
        );
        out
    }

    #[tokio::test]
    async fn finds_a_voiced_sound_between_quiet_noise() {
        let mut signal = noise(1.0, 0.001);
        signal.extend(vowel(1.0));
        signal.extend(noise(1.0, 0.001));
        let ev = events(&signal).await;
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(ev[0], VadEvent::SpeechStart { .. }));
        assert!((ev[0].time().as_secs_f64() - 0.97).abs() < 0.03, "{ev:?}");
        assert!((ev[1].time().as_secs_f64() - 2.03).abs() < 0.03, "{ev:?}");
    }

    #[tokio::test]
    async fn loud_noise_and_silence_are_not_speech() {
        let mut signal = noise(1.0, 0.5);
        signal.extend(vec![0.0; RATE as usize]);
        assert_eq!(events(&signal).await, vec![]);
    }

    #[tokio::test]
    async fn probabilities_come_once_per_frame_when_asked() {
        let mut h =
            NodeHarness::new::<EnergyVad>(json!({"emit_probability": true, "frame_ms": 10}))
                .unwrap();
        let out = h
            .push(RuntimeData::audio(vowel(0.1), RATE, 1))
            .await
            .unwrap();
        let probs: Vec<_> = out
            .iter()
            .filter_map(VadEvent::from_data)
            .filter(
                |e| matches!(e, VadEvent::Probability { probability, .. } if *probability == 1.0),
            )
            .collect();
        assert_eq!(probs.len(), 10);
    }

    #[tokio::test]
    async fn a_rate_change_is_an_error() {
        let mut h = NodeHarness::new::<EnergyVad>(json!({})).unwrap();
        assert_eq!(
            format_change_error(&mut h, (RATE, 1), (8_000, 1)).await,
            "EnergyVAD: sample rate changed mid-stream from 16000 Hz to 8000 Hz"
        );
    }
}
