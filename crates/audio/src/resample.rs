//! Converts audio to another sample rate, as a stream.
//!
//! The resampler keeps its filter state across frames, so the output does not depend on how the
//! input was cut into frames: a file pushed as one frame and the same file pushed as 20 ms
//! frames give the same samples (to float rounding). The filter delay is compensated, so output
//! sample `n` lies at input time `n × in / out`, and at the end of the stream the filter is
//! drained so the output has exactly `ceil(frames × out / in)` frames.
//!
//! Rational ratios whose reduced terms are small (every common rate pair: at most 1024
//! interpolation phases and a decimation of at most 4096) use our polyphase FIR filter bank
//! ([`crate::polyphase`]); other ratios (e.g. 44 101 → 16 000) use rubato's sinc resampler.

use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    AudioFrame, Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, WindowFunction};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::{Clock, MAX_CHANNELS, MAX_SAMPLE_RATE as MAX_RATE, audio_input, fatal};
use crate::polyphase::{Design, Polyphase};

/// Frames per internal rubato chunk.
const CHUNK: usize = 1024;
/// Largest reduced ratio terms for the polyphase bank; beyond it (nearly coprime rates such as
/// 44 101 → 16 000) the bank would be huge, so rubato's sinc interpolator is used.
const MAX_PHASES: u64 = 1024;
const MAX_DECIMATION: u64 = 4096;
/// Length of rubato's sinc filter for the fallback.
const SINC_LEN: usize = 256;

/// Speed against fidelity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// 70 dB stop band, flat to 85 % of the lower Nyquist frequency; aliases may fall into
    /// the band above that. About a third of the work of `balanced`.
    Fast,
    /// 100 dB stop band, flat to 90 % of the lower Nyquist frequency; aliases may fall only
    /// into the top 10 % band above that.
    #[default]
    Balanced,
    /// 120 dB stop band reached at the lower Nyquist frequency: no aliasing at all.
    High,
}

impl Quality {
    fn design(self) -> Design {
        match self {
            Quality::Fast => Design {
                pass: 0.85,
                stop: 1.15,
                attenuation_db: 70.0,
            },
            Quality::Balanced => Design {
                pass: 0.9,
                stop: 1.1,
                attenuation_db: 100.0,
            },
            Quality::High => Design {
                pass: 0.91,
                stop: 1.0,
                attenuation_db: 120.0,
            },
        }
    }
}

/// Settings of [`AudioResample`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioResampleParams {
    /// Output sample rate in Hz.
    #[schemars(range(min = 1, max = 384_000))]
    pub target_rate: u32,
    /// Expected input rate in Hz; frames at another rate are an error. Unset takes the rate of
    /// the first frame.
    #[serde(default)]
    #[schemars(range(min = 1, max = 384_000))]
    pub input_rate: Option<u32>,
    #[serde(default)]
    pub quality: Quality,
}

/// Streaming sample-rate converter.
pub struct AudioResample {
    target: u32,
    quality: Quality,
    input_rate: Option<u32>,
    stream: Option<Stream>,
}

/// State of one continuous stream: created by its first frame, ended by a flush.
struct Stream {
    rate: u32,
    channels: usize,
    engine: Engine,
    frames_in: u64,
    frames_out: u64,
    /// Output time, at the target rate, from the first input frame's timestamp.
    clock: Clock,
}

enum Engine {
    /// Equal rates: frames pass through untouched.
    Same,
    Poly(Polyphase),
    Rubato(RubatoStream),
}

impl AudioResample {
    /// The audio in `input` and the stream it continues (or starts): a stream keeps one input
    /// rate and channel count.
    fn stream_for<'a>(
        &mut self,
        input: &'a Packet,
    ) -> Result<(&'a AudioFrame, &mut Stream), NodeError> {
        let frame = audio_input(Self::NAME, input)?;
        let expected = self.input_rate.or(self.stream.as_ref().map(|s| s.rate));
        if let Some(rate) = expected
            && frame.sample_rate != rate
        {
            return Err(NodeError::fatal(format!(
                "{} expects {rate} Hz input, got a frame at {} Hz",
                Self::NAME,
                frame.sample_rate
            )));
        }
        if let Some(s) = &self.stream
            && s.channels != usize::from(frame.channels)
        {
            return Err(fatal(
                Self::NAME,
                format!(
                    "channel count changed mid-stream from {} to {}",
                    s.channels, frame.channels
                ),
            ));
        }
        if self.stream.is_none() {
            self.stream = Some(Stream::new(
                frame.sample_rate,
                self.target,
                frame.channels,
                self.quality,
                input.timestamp,
            )?);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| internal("state missing"))?;
        Ok((frame, stream))
    }
}

impl Stream {
    fn new(
        rate: u32,
        target: u32,
        channels: u16,
        quality: Quality,
        start: Duration,
    ) -> Result<Self, NodeError> {
        if rate == 0 || rate > MAX_RATE {
            return Err(fatal(
                AudioResample::NAME,
                format!("input sample rate {rate} Hz is outside 1..={MAX_RATE}"),
            ));
        }
        if channels > MAX_CHANNELS {
            return Err(fatal(
                AudioResample::NAME,
                format!("{channels} channels is more than the {MAX_CHANNELS} supported"),
            ));
        }
        let ch = usize::from(channels);
        let (l, m) = Polyphase::ratio(rate, target);
        let engine = if rate == target {
            Engine::Same
        } else if l <= MAX_PHASES && m <= MAX_DECIMATION {
            Engine::Poly(Polyphase::new(rate, target, ch, quality.design()))
        } else {
            Engine::Rubato(RubatoStream::new(rate, target, ch)?)
        };
        Ok(Self {
            rate,
            channels: ch,
            engine,
            frames_in: 0,
            frames_out: 0,
            clock: Clock::new(start, target),
        })
    }

    fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), NodeError> {
        self.frames_in += (samples.len() / self.channels) as u64;
        match &mut self.engine {
            Engine::Same => out.extend_from_slice(samples),
            Engine::Poly(p) => p.push(samples, out),
            Engine::Rubato(r) => r.push(samples, out)?,
        }
        Ok(())
    }

    /// Drains the filter so the output has its exact expected length.
    fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), NodeError> {
        let total = (self.frames_in * u64::from(self.clock.rate)).div_ceil(u64::from(self.rate));
        match &mut self.engine {
            Engine::Same => {}
            Engine::Poly(p) => p.finish(total, out),
            Engine::Rubato(r) => {
                let have = self.frames_out + (out.len() / self.channels) as u64;
                r.finish(total.saturating_sub(have), out)?;
            }
        }
        Ok(())
    }
}

/// Resamples a whole clip of interleaved audio at once, with the same filters and exact length
/// (`ceil(frames × to / from)`) as the [`AudioResample`] node.
pub fn resample(
    samples: &[f32],
    channels: u16,
    from: u32,
    to: u32,
    quality: Quality,
) -> Result<Vec<f32>, NodeError> {
    let mut stream = Stream::new(from, to, channels, quality, Duration::ZERO)?;
    let mut out = Vec::with_capacity(samples.len() * to as usize / from.max(1) as usize + 64);
    stream.push(samples, &mut out)?;
    stream.finish(&mut out)?;
    Ok(out)
}

/// rubato's sinc resampler with its input queue, for ratios the polyphase bank cannot hold.
/// Its delay is trimmed as rubato reports it, which leaves the output within two input frames
/// of exact alignment.
struct RubatoStream {
    resampler: Box<dyn Resampler<f32>>,
    channels: usize,
    /// Interleaved input not yet consumed.
    pending: Vec<f32>,
    scratch: Vec<f32>,
    /// Output frames still to drop at the start (the filter delay).
    to_trim: usize,
}

impl RubatoStream {
    fn new(rate: u32, target: u32, ch: usize) -> Result<Self, NodeError> {
        let ratio = f64::from(target) / f64::from(rate);
        let params = SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2);
        let built = Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, ch, FixedAsync::Input);
        let resampler: Box<dyn Resampler<f32>> = Box::new(built.map_err(internal)?);
        Ok(Self {
            scratch: vec![0.0; resampler.output_frames_max() * ch],
            to_trim: resampler.output_delay(),
            resampler,
            channels: ch,
            pending: Vec::new(),
        })
    }

    /// Resamples every whole chunk of pending input into `out`.
    fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), NodeError> {
        self.pending.extend_from_slice(samples);
        let ch = self.channels;
        let mut offset = 0;
        while self.pending.len() / ch - offset >= self.resampler.input_frames_next() {
            let idx = Indexing::new().input_offset(offset);
            let (used, _) = self.step(Some(&idx), out)?;
            offset += used;
        }
        self.pending.drain(..offset * ch);
        Ok(())
    }

    /// The last partial chunk, then silence, until `wanted` more frames are out.
    fn finish(&mut self, wanted: u64, out: &mut Vec<f32>) -> Result<(), NodeError> {
        let ch = self.channels;
        let target_len = out.len() + wanted as usize * ch;
        let mut left = self.pending.len() / ch;
        self.pending
            .resize(self.resampler.input_frames_max() * ch, 0.0);
        while out.len() < target_len {
            let idx = Indexing::new().partial_len(left);
            self.step(Some(&idx), out)?;
            left = 0;
        }
        out.truncate(target_len);
        Ok(())
    }

    /// One rubato call over `pending`, appending its output minus any delay still to trim.
    fn step(
        &mut self,
        idx: Option<&Indexing>,
        out: &mut Vec<f32>,
    ) -> Result<(usize, usize), NodeError> {
        let ch = self.channels;
        let input =
            InterleavedSlice::new(&self.pending, ch, self.pending.len() / ch).map_err(internal)?;
        let frames = self.scratch.len() / ch;
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch, ch, frames).map_err(internal)?;
        let (used, made) = self
            .resampler
            .process_into_buffer(&input, &mut output, idx)
            .map_err(internal)?;
        let skip = self.to_trim.min(made);
        self.to_trim -= skip;
        out.extend_from_slice(&self.scratch[skip * ch..made * ch]);
        Ok((used, made))
    }
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    fatal(AudioResample::NAME, e)
}

#[async_trait]
impl Node for AudioResample {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let (frame, stream) = self.stream_for(input)?;
        if matches!(stream.engine, Engine::Same) {
            out.push(input.data.clone());
            return Ok(());
        }
        let mut samples = Vec::new();
        stream.push(frame.samples(), &mut samples)?;
        emit(stream, samples, out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if let Some(mut stream) = self.stream.take() {
            let mut samples = Vec::new();
            stream.finish(&mut samples)?;
            emit(&mut stream, samples, out);
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if matches!(control, Control::Cancel { .. }) {
            self.stream = None;
        }
        Ok(())
    }
}

fn emit(stream: &mut Stream, samples: Vec<f32>, out: &mut Outputs) {
    if samples.is_empty() {
        return;
    }
    let at = stream.clock.time(stream.frames_out);
    stream.frames_out += (samples.len() / stream.channels) as u64;
    out.push_at(
        RuntimeData::audio(samples, stream.clock.rate, stream.channels as u16),
        at,
    );
}

impl NodeType for AudioResample {
    type Params = AudioResampleParams;
    const NAME: &'static str = "AudioResample";
    const DESCRIPTION: &'static str =
        "Converts audio to another sample rate, streaming (quality fast|balanced|high)";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio], &[MediaType::Audio])
    }

    fn new(p: AudioResampleParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self {
            target: p.target_rate,
            quality: p.quality,
            input_rate: p.input_rate,
            stream: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::{format_change_error, passes_without_a_copy};
    use remotemedia_core::testing::NodeHarness;
    use serde_json::json;

    fn sine(freq: f32, rate: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Pushes `samples` in frames of `frame` samples, then flushes; returns all output.
    async fn resample(
        params: serde_json::Value,
        samples: &[f32],
        rate: u32,
        frame: usize,
    ) -> Vec<f32> {
        let mut h = NodeHarness::new::<AudioResample>(params).unwrap();
        let mut out = Vec::new();
        for chunk in samples.chunks(frame) {
            for d in h
                .push(RuntimeData::audio(chunk.to_vec(), rate, 1))
                .await
                .unwrap()
            {
                out.extend_from_slice(d.as_audio().unwrap().samples());
            }
        }
        for d in h.flush().await.unwrap() {
            out.extend_from_slice(d.as_audio().unwrap().samples());
        }
        out
    }

    /// Amplitude and phase-free frequency estimate of a mono sine, skipping the edges.
    fn measure(x: &[f32], rate: u32) -> (f32, f32) {
        let core = &x[x.len() / 10..x.len() * 9 / 10];
        let rms = (core.iter().map(|v| v * v).sum::<f32>() / core.len() as f32).sqrt();
        let crossings = core
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        let freq = crossings as f32 * rate as f32 / core.len() as f32;
        (rms * std::f32::consts::SQRT_2, freq)
    }

    #[tokio::test]
    async fn a_sine_keeps_its_frequency_and_amplitude_at_every_quality() {
        let input = sine(1000.0, 48_000, 1.0, 0.5);
        for q in ["fast", "balanced", "high"] {
            let out = resample(
                json!({"target_rate": 16000, "quality": q}),
                &input,
                48_000,
                960,
            )
            .await;
            assert_eq!(out.len(), 16_000, "{q}");
            let (amp, freq) = measure(&out, 16_000);
            assert!((amp - 0.5).abs() < 0.01, "{q}: amplitude {amp}");
            assert!((freq - 1000.0).abs() < 5.0, "{q}: frequency {freq}");
        }
    }

    #[tokio::test]
    async fn chunked_output_equals_one_shot_output() {
        let input = sine(440.0, 44_100, 0.7, 0.8);
        for q in ["fast", "balanced", "high"] {
            let p = json!({"target_rate": 16000, "quality": q});
            let whole = resample(p.clone(), &input, 44_100, input.len()).await;
            let framed = resample(p, &input, 44_100, 441).await;
            assert_eq!(whole.len(), (input.len() * 16_000).div_ceil(44_100));
            assert_eq!(whole.len(), framed.len(), "{q}");
            let worst = whole
                .iter()
                .zip(&framed)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-6, "{q}: chunked differs by {worst}");
        }
    }

    #[tokio::test]
    async fn output_is_aligned_with_the_input() {
        // Output sample n must lie at input time n / out_rate: compare against the analytic
        // tone at that time (a one-input-sample shift would show as an error of ~0.06).
        let cases = [
            (48_000, 16_000),
            (16_000, 48_000),
            (44_100, 16_000),
            (16_000, 22_050),
            (44_101, 16_000),
        ];
        for quality in ["fast", "balanced", "high"] {
            for (from, to) in cases {
                let input = sine(1000.0, from, 0.5, 0.5);
                let p = json!({"target_rate": to, "quality": quality});
                let out = resample(p, &input, from, 480).await;
                let worst = (out.len() / 5..out.len() * 4 / 5)
                    .map(|i| {
                        let t = i as f32 / to as f32;
                        let want = 0.5 * (std::f32::consts::TAU * 1000.0 * t).sin();
                        (out[i] - want).abs()
                    })
                    .fold(0.0, f32::max);
                // rubato (the odd ratio) is aligned to within two input frames.
                let tolerance = if from == 44_101 { 0.15 } else { 0.02 };
                assert!(
                    worst < tolerance,
                    "{quality} {from}->{to}: off by up to {worst}"
                );
            }
        }
    }

    #[tokio::test]
    async fn odd_rate_pairs_and_multichannel_work() {
        // 44 101 Hz is coprime with 16 000: the balanced preset falls back to sinc.
        let mono = sine(300.0, 44_101, 0.5, 0.5);
        let stereo: Vec<f32> = mono.iter().flat_map(|&s| [s, -s]).collect();
        let mut h = NodeHarness::new::<AudioResample>(json!({"target_rate": 16000})).unwrap();
        let mut out = Vec::new();
        for chunk in stereo.chunks(2 * 441) {
            for d in h
                .push(RuntimeData::audio(chunk.to_vec(), 44_101, 2))
                .await
                .unwrap()
            {
                assert_eq!(d.as_audio().unwrap().channels, 2);
                out.extend_from_slice(d.as_audio().unwrap().samples());
            }
        }
        for d in h.flush().await.unwrap() {
            out.extend_from_slice(d.as_audio().unwrap().samples());
        }
        assert_eq!(out.len() / 2, (mono.len() * 16_000).div_ceil(44_101));
        let left: Vec<f32> = out.iter().step_by(2).copied().collect();
        let right: Vec<f32> = out.iter().skip(1).step_by(2).copied().collect();
        let (amp, freq) = measure(&left, 16_000);
        assert!(
            (amp - 0.5).abs() < 0.01 && (freq - 300.0).abs() < 5.0,
            "{amp} {freq}"
        );
        assert!(left.iter().zip(&right).all(|(l, r)| (l + r).abs() < 1e-6));
    }

    #[tokio::test]
    async fn equal_rates_pass_frames_through_without_copying() {
        let mut h = NodeHarness::new::<AudioResample>(json!({"target_rate": 16000})).unwrap();
        let frame = RuntimeData::audio(vec![0.1; 320], 16_000, 1);
        assert!(passes_without_a_copy(&mut h, frame).await);
        assert!(h.flush().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rate_changes_and_wrong_rates_are_errors() {
        let mut h =
            NodeHarness::new::<AudioResample>(json!({"target_rate": 16000, "input_rate": 48000}))
                .unwrap();
        let err = h
            .push(RuntimeData::audio(vec![0.0; 441], 44_100, 1))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "AudioResample expects 48000 Hz input, got a frame at 44100 Hz"
        );

        let mut h = NodeHarness::new::<AudioResample>(json!({"target_rate": 16000})).unwrap();
        assert_eq!(
            format_change_error(&mut h, (48_000, 1), (48_000, 2)).await,
            "AudioResample: channel count changed mid-stream from 1 to 2"
        );
        let err = h.push(RuntimeData::text("hi")).await.unwrap_err();
        assert_eq!(err.message, "AudioResample cannot process text data");

        let mut h = NodeHarness::new::<AudioResample>(json!({"target_rate": 16000})).unwrap();
        let err = h
            .push(RuntimeData::audio(vec![0.0; 4], 1_000_000, 1))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "AudioResample: input sample rate 1000000 Hz is outside 1..=384000"
        );
    }
}
