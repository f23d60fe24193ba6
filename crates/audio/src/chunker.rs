//! Re-cuts audio into frames of a fixed number of samples, for models that need exact window
//! sizes (Silero takes 512 samples at 16 kHz) whatever frame size the source delivers.

use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::StreamFormat;

/// Settings of [`AudioChunker`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AudioChunkerParams {
    /// Samples per channel in each output frame.
    #[schemars(range(min = 1, max = 1_048_576))]
    pub samples: usize,
    /// At end of stream, pad the last short frame with silence to full size instead of
    /// emitting it short.
    pub pad_tail: bool,
}

impl Default for AudioChunkerParams {
    fn default() -> Self {
        Self {
            samples: 512,
            pad_tail: false,
        }
    }
}

/// Fixed-size framer: the remainder of each input waits for the next one.
pub struct AudioChunker {
    size: usize,
    pad_tail: bool,
    /// Interleaved samples not yet emitted.
    pending: Vec<f32>,
    stream: Option<StreamFormat>,
    /// Frames emitted since the stream started: `pending[0]` comes next.
    emitted: u64,
}

impl AudioChunker {
    fn emit(&mut self, frames: usize, out: &mut Outputs) {
        let Some(s) = self.stream else {
            return;
        };
        let n = frames * usize::from(s.channels);
        let chunk: Vec<f32> = self.pending.drain(..n).collect();
        out.push_at(
            RuntimeData::audio(chunk, s.clock.rate, s.channels),
            self.next_time(),
        );
        self.emitted += frames as u64;
    }

    /// Start time of the next frame out.
    fn next_time(&self) -> Duration {
        self.stream
            .map_or(Duration::ZERO, |s| s.clock.time(self.emitted))
    }

    /// Forgets the stream: the next frame starts a new one.
    fn reset(&mut self) {
        self.pending.clear();
        self.stream = None;
        self.emitted = 0;
    }
}

#[async_trait]
impl Node for AudioChunker {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let frame = StreamFormat::accept(Self::NAME, &mut self.stream, input)?;
        if self.pending.is_empty() && frame.frames() == self.size {
            // Already the right size: forward the shared buffer.
            out.push_at(input.data.clone(), self.next_time());
            self.emitted += self.size as u64;
            return Ok(());
        }
        self.pending.extend_from_slice(frame.samples());
        while self.pending.len() >= self.size * usize::from(frame.channels) {
            self.emit(self.size, out);
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if let Some(s) = self.stream
            && !self.pending.is_empty()
        {
            let ch = usize::from(s.channels);
            let mut frames = self.pending.len() / ch;
            if self.pad_tail {
                self.pending.resize(self.size * ch, 0.0);
                frames = self.size;
            }
            self.emit(frames, out);
        }
        self.reset();
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if matches!(control, Control::Cancel { .. }) {
            self.reset();
        }
        Ok(())
    }
}

impl NodeType for AudioChunker {
    type Params = AudioChunkerParams;
    const NAME: &'static str = "AudioChunker";
    const DESCRIPTION: &'static str =
        "Cuts audio into frames of exactly `samples` samples, carrying the remainder over";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio], &[MediaType::Audio])
    }

    fn new(p: AudioChunkerParams, _: &NodeContext) -> Result<Self, NodeError> {
        if p.samples == 0 {
            return Err(NodeError::fatal("AudioChunker: samples must be at least 1"));
        }
        Ok(Self {
            size: p.samples,
            pad_tail: p.pad_tail,
            pending: Vec::new(),
            stream: None,
            emitted: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::{format_change_error, passes_without_a_copy};
    use remotemedia_core::testing::NodeHarness;
    use serde_json::json;

    fn lens(data: &[RuntimeData]) -> Vec<usize> {
        data.iter()
            .map(|d| d.as_audio().unwrap().frames())
            .collect()
    }

    #[tokio::test]
    async fn carries_the_remainder_and_flushes_the_tail() {
        let mut h = NodeHarness::new::<AudioChunker>(json!({"samples": 512})).unwrap();
        let ramp: Vec<f32> = (0..1500).map(|i| i as f32).collect();
        let mut all = Vec::new();
        for part in ramp.chunks(320) {
            all.extend(
                h.push(RuntimeData::audio(part.to_vec(), 16_000, 1))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(lens(&all), vec![512, 512]);
        let tail = h.flush().await.unwrap();
        assert_eq!(lens(&tail), vec![1500 - 1024]);
        all.extend(tail);
        let joined: Vec<f32> = all
            .iter()
            .flat_map(|d| d.as_audio().unwrap().samples().to_vec())
            .collect();
        assert_eq!(joined, ramp, "no sample lost, duplicated or reordered");
    }

    #[tokio::test]
    async fn output_frames_carry_their_own_start_time() {
        let mut h = NodeHarness::new::<AudioChunker>(json!({"samples": 160})).unwrap();
        h.timestamp = Duration::from_millis(500);
        let out = h
            .push_outputs(0, RuntimeData::audio(vec![0.0; 400], 16_000, 1))
            .await
            .unwrap();
        let ts: Vec<_> = out
            .iter()
            .map(|o| o.timestamp.unwrap().as_millis())
            .collect();
        assert_eq!(ts, vec![500, 510]);
        let tail = h.flush_outputs().await.unwrap();
        assert_eq!(tail[0].timestamp, Some(Duration::from_millis(520)));
    }

    #[tokio::test]
    async fn pads_the_tail_when_asked_and_keeps_channels_together() {
        let mut h =
            NodeHarness::new::<AudioChunker>(json!({"samples": 4, "pad_tail": true})).unwrap();
        let stereo: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let out = h.push(RuntimeData::audio(stereo, 8_000, 2)).await.unwrap();
        assert_eq!(
            out[0].as_audio().unwrap().samples(),
            &[0., 1., 2., 3., 4., 5., 6., 7.]
        );
        let tail = h.flush().await.unwrap();
        assert_eq!(
            tail[0].as_audio().unwrap().samples(),
            &[8., 9., 10., 11., 0., 0., 0., 0.]
        );
    }

    #[tokio::test]
    async fn right_sized_frames_pass_without_a_copy() {
        let mut h = NodeHarness::new::<AudioChunker>(json!({"samples": 160})).unwrap();
        let frame = RuntimeData::audio(vec![0.5; 160], 16_000, 1);
        assert!(passes_without_a_copy(&mut h, frame).await);
    }

    #[tokio::test]
    async fn a_format_change_is_an_error() {
        let mut h = NodeHarness::new::<AudioChunker>(json!({})).unwrap();
        assert_eq!(
            format_change_error(&mut h, (16_000, 1), (8_000, 1)).await,
            "AudioChunker: audio format changed mid-stream from 16000 Hz × 1 ch to 8000 Hz × 1 ch"
        );
    }
}
