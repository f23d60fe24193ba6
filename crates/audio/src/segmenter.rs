//! Turns a VAD's audio-plus-events stream into one audio frame per utterance, for recognisers
//! that want whole phrases rather than a live stream.
//!
//! The segmenter keeps a short history of audio, so a start event that refers back in time (a
//! VAD only decides "speech" after `min_speech_ms`, and pads the start) still gets the audio
//! from that point, plus `pre_roll_ms` more. Each utterance is emitted with its start time as
//! the packet timestamp; its end is the start plus the frame's duration.
//!
//! A `speech_pause` (a VAD with `pause_ms`) emits the utterance so far, so recognition and a
//! reply can start before the turn is over. If the speech ends there, that was the utterance;
//! if it resumes, the whole utterance is emitted again at its end, from the same start: a text
//! made of it revises the one made at the pause (see docs/voice-agent.md).

use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::{Clock, StreamFormat};
use crate::vad::VadEvent;

/// How far back before the latest audio frame a start event may point, beyond the pre-roll.
const LOOKBACK: Duration = Duration::from_secs(2);

/// Settings of [`SpeechSegmenter`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechSegmenterParams {
    /// Audio kept before each speech start.
    #[schemars(range(max = 5_000))]
    pub pre_roll_ms: u32,
    /// Longer utterances are cut into pieces of this length.
    #[schemars(range(min = 100, max = 600_000))]
    pub max_utterance_ms: u32,
    /// Shorter utterances are dropped.
    #[schemars(range(max = 60_000))]
    pub min_utterance_ms: u32,
    /// Instead of whole utterances, emit the utterance heard so far every this many ms while
    /// it lasts, for interim recognition beside a segmenter of whole utterances (0: whole
    /// utterances). Give both segmenters the same `pre_roll_ms` so their utterances start at
    /// the same time.
    #[schemars(range(max = 60_000))]
    pub partial_every_ms: u32,
}

impl Default for SpeechSegmenterParams {
    fn default() -> Self {
        Self {
            pre_roll_ms: 100,
            max_utterance_ms: 20_000,
            min_utterance_ms: 0,
            partial_every_ms: 0,
        }
    }
}

/// Buffers audio between VAD start and end events and emits each utterance whole.
pub struct SpeechSegmenter {
    p: SpeechSegmenterParams,
    /// Set by the first audio frame (stream frame 0).
    stream: Option<StreamFormat>,
    /// Stream frame index of `buf[0]`.
    first: u64,
    /// Interleaved history and open utterance.
    buf: Vec<f32>,
    /// Stream frame index where the open utterance starts.
    open: Option<u64>,
    /// Stream frame index where the latest audio frame starts: a VAD decides after a whole
    /// frame, so its events may point anywhere inside it, however long it is.
    latest: u64,
    /// In partial mode, where the last partial ended.
    partial_end: u64,
    /// The open utterance was emitted at a pause, and speech has not resumed.
    paused: bool,
}

impl SpeechSegmenter {
    fn clock(&self) -> Clock {
        self.stream
            .map_or(Clock::new(Duration::ZERO, 1), |s| s.clock)
    }

    fn rate(&self) -> u32 {
        self.clock().rate
    }

    fn channels(&self) -> usize {
        self.stream.map_or(1, |s| usize::from(s.channels))
    }

    fn end(&self) -> u64 {
        self.first + (self.buf.len() / self.channels()) as u64
    }

    fn frames_in(&self, ms: u32) -> u64 {
        u64::from(self.rate()) * u64::from(ms) / 1000
    }

    /// Stream frame index of a media time.
    fn index(&self, t: Duration) -> u64 {
        self.clock().frames_at(t)
    }

    fn emit(&mut self, from: u64, to: u64, out: &mut Outputs) {
        let (from, to) = (from.max(self.first), to.min(self.end()));
        if to <= from || to - from < self.frames_in(self.p.min_utterance_ms).max(1) {
            return;
        }
        let ch = self.channels();
        let slice = &self.buf[(from - self.first) as usize * ch..(to - self.first) as usize * ch];
        out.push_at(
            RuntimeData::audio(slice.to_vec(), self.rate(), ch as u16),
            self.clock().time(from),
        );
    }

    /// Forgets history before stream frame `idx`.
    fn trim_to(&mut self, idx: u64) {
        let n = idx.saturating_sub(self.first).min(self.end() - self.first);
        self.buf.drain(..n as usize * self.channels());
        self.first += n;
    }

    /// Emits full-length pieces of an over-long utterance (or, in partial mode, the utterance
    /// so far when it is due), or trims idle history.
    fn settle(&mut self, out: &mut Outputs) {
        let partials = self.frames_in(self.p.partial_every_ms);
        match self.open {
            Some(start) => {
                let max = self.frames_in(self.p.max_utterance_ms).max(1);
                let mut start = start;
                while self.end() - start >= max {
                    if partials == 0 {
                        self.emit(start, start + max, out);
                    }
                    start += max;
                }
                let end = self.end();
                if partials > 0 && end >= self.partial_end.max(start) + partials {
                    self.emit(start, end, out);
                    self.partial_end = end;
                }
                self.open = Some(start);
                self.trim_to(start);
            }
            None => {
                let keep = self.frames_in(self.p.pre_roll_ms)
                    + u64::from(self.rate()) * LOOKBACK.as_secs();
                self.trim_to(self.latest.saturating_sub(keep));
            }
        }
    }

    fn audio(&mut self, input: &Packet) -> Result<(), NodeError> {
        let frame = StreamFormat::accept(Self::NAME, &mut self.stream, input)?;
        self.latest = self.end();
        self.buf.extend_from_slice(frame.samples());
        Ok(())
    }
}

#[async_trait]
impl Node for SpeechSegmenter {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        match VadEvent::from_data(&input.data) {
            Some(VadEvent::SpeechStart { .. }) if self.stream.is_none() => {}
            Some(VadEvent::SpeechStart { .. }) if self.open.is_some() => {}
            Some(ev @ VadEvent::SpeechStart { .. }) => {
                let idx = self.index(ev.time());
                let start = idx.saturating_sub(self.frames_in(self.p.pre_roll_ms));
                self.open = Some(start.max(self.first));
                self.partial_end = 0;
            }
            Some(ev @ VadEvent::SpeechPause { .. }) => {
                if let Some(start) = self.open
                    && self.p.partial_every_ms == 0
                {
                    self.emit(start, self.index(ev.time()), out);
                    self.paused = true;
                }
            }
            Some(VadEvent::SpeechResume { .. }) => self.paused = false,
            Some(ev @ VadEvent::SpeechEnd { .. }) => {
                if let Some(start) = self.open.take()
                    && self.p.partial_every_ms == 0
                    && !std::mem::take(&mut self.paused)
                {
                    let end = self.index(ev.time());
                    self.emit(start, end, out);
                }
            }
            Some(VadEvent::Probability { .. }) => {}
            None if matches!(input.data, RuntimeData::Json(_)) => {}
            None => self.audio(input)?,
        }
        self.settle(out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if let Some(start) = self.open.take()
            && self.p.partial_every_ms == 0
        {
            self.emit(start, self.end(), out);
        }
        self.settle(out);
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if matches!(control, Control::Cancel { .. }) {
            self.open = None;
            self.paused = false;
            self.first = self.end();
            self.buf.clear();
        }
        Ok(())
    }
}

impl NodeType for SpeechSegmenter {
    type Params = SpeechSegmenterParams;
    const NAME: &'static str = "SpeechSegmenter";
    const DESCRIPTION: &'static str =
        "Cuts a VAD's audio and speech events into one audio frame per utterance, with pre-roll";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio, MediaType::Json], &[MediaType::Audio])
    }

    fn new(p: SpeechSegmenterParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self {
            p,
            stream: None,
            first: 0,
            buf: Vec::new(),
            open: None,
            latest: 0,
            partial_end: 0,
            paused: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::format_change_error;
    use remotemedia_core::node::Output;
    use remotemedia_core::testing::NodeHarness;
    use serde_json::json;

    const RATE: u32 = 1_000;

    /// Pushes 100 ms frames whose samples are their own stream index, with events between
    /// them: `events[i]` goes after frame `i`.
    async fn run(
        params: serde_json::Value,
        frames: usize,
        events: &[(usize, VadEvent)],
    ) -> Vec<Output> {
        let mut h = NodeHarness::new::<SpeechSegmenter>(params).unwrap();
        h.timestamp = Duration::from_secs(10);
        let mut out = Vec::new();
        for i in 0..frames {
            let samples: Vec<f32> = (i * 100..(i + 1) * 100).map(|s| s as f32).collect();
            out.extend(
                h.push_outputs(0, RuntimeData::audio(samples, RATE, 1))
                    .await
                    .unwrap(),
            );
            for (_, ev) in events.iter().filter(|(at, _)| *at == i) {
                out.extend(h.push_outputs(0, ev.to_data()).await.unwrap());
            }
        }
        out.extend(h.flush_outputs().await.unwrap());
        out
    }

    fn span(o: &Output) -> (f32, f32, Duration) {
        let a = o.data.as_audio().unwrap();
        (
            a.samples()[0],
            *a.samples().last().unwrap(),
            o.timestamp.unwrap(),
        )
    }

    #[tokio::test]
    async fn cuts_between_events_with_pre_roll_and_times() {
        let events = [
            (5, VadEvent::SpeechStart { time: 10.3 }),
            (9, VadEvent::SpeechEnd { time: 10.8 }),
        ];
        let out = run(json!({"pre_roll_ms": 100}), 12, &events).await;
        assert_eq!(out.len(), 1);
        // Samples 200..800: 100 ms pre-roll before the start at 300, up to the end at 800.
        assert_eq!(span(&out[0]), (200.0, 799.0, Duration::from_millis(10_200)));
    }

    #[tokio::test]
    async fn a_pause_emits_the_utterance_so_far_and_a_resume_the_whole_one_at_its_end() {
        async fn cut(events: &[(usize, VadEvent)]) -> Vec<(f32, f32, Duration)> {
            let out = run(json!({"pre_roll_ms": 0}), 10, events).await;
            out.iter().map(span).collect()
        }
        let start = (2, VadEvent::SpeechStart { time: 10.2 });
        let utterance = |last: f32| (200.0, last, Duration::from_millis(10_200));
        // Paused and ended there: one utterance, at the pause.
        let ended = [
            start,
            (5, VadEvent::SpeechPause { time: 10.5 }),
            (7, VadEvent::SpeechEnd { time: 10.5 }),
        ];
        assert_eq!(cut(&ended).await, [utterance(499.0)]);
        // Paused, resumed, paused again and ended: the utterance so far at each pause, from
        // the same start; nothing more at the end.
        let paused_again = [
            start,
            (4, VadEvent::SpeechPause { time: 10.4 }),
            (5, VadEvent::SpeechResume { time: 10.5 }),
            (7, VadEvent::SpeechPause { time: 10.8 }),
            (8, VadEvent::SpeechEnd { time: 10.8 }),
        ];
        assert_eq!(
            cut(&paused_again).await,
            [utterance(399.0), utterance(799.0)]
        );
        // Resumed and ended without another pause: the whole utterance at the end.
        let resumed = [
            start,
            (4, VadEvent::SpeechPause { time: 10.4 }),
            (5, VadEvent::SpeechResume { time: 10.5 }),
            (8, VadEvent::SpeechEnd { time: 10.9 }),
        ];
        assert_eq!(cut(&resumed).await, [utterance(399.0), utterance(899.0)]);
    }

    #[tokio::test]
    async fn partial_mode_emits_the_utterance_so_far_and_never_a_whole_one() {
        let events = [
            (2, VadEvent::SpeechStart { time: 10.25 }),
            (9, VadEvent::SpeechEnd { time: 10.95 }),
        ];
        let params = json!({"pre_roll_ms": 50, "partial_every_ms": 300});
        let spans: Vec<_> = run(params, 12, &events).await.iter().map(span).collect();
        // The utterance opens at 200 (250 - 50 ms pre-roll); a partial each time 300 ms more
        // audio has arrived: up to 500 (frame 4), to 800 (frame 7); none at the end.
        assert_eq!(
            spans,
            vec![
                (200.0, 499.0, Duration::from_millis(10_200)),
                (200.0, 799.0, Duration::from_millis(10_200)),
            ]
        );
    }

    #[tokio::test]
    async fn long_utterances_are_split_and_an_open_one_is_flushed() {
        let events = [(1, VadEvent::SpeechStart { time: 10.0 })];
        let out = run(
            json!({"pre_roll_ms": 0, "max_utterance_ms": 400}),
            10,
            &events,
        )
        .await;
        let spans: Vec<_> = out.iter().map(span).collect();
        assert_eq!(
            spans,
            vec![
                (0.0, 399.0, Duration::from_millis(10_000)),
                (400.0, 799.0, Duration::from_millis(10_400)),
                (800.0, 999.0, Duration::from_millis(10_800)),
            ]
        );
    }

    #[tokio::test]
    async fn short_utterances_are_dropped_and_history_is_bounded() {
        let events = [
            (40, VadEvent::SpeechStart { time: 14.0 }),
            (40, VadEvent::SpeechEnd { time: 14.05 }),
            (45, VadEvent::SpeechStart { time: 10.0 }),
            (47, VadEvent::SpeechEnd { time: 14.75 }),
        ];
        let out = run(
            json!({"pre_roll_ms": 0, "min_utterance_ms": 100}),
            50,
            &events,
        )
        .await;
        // The 50 ms blip is dropped; the second start points before the kept history
        // (2 s look-back), so the utterance starts where the history does.
        assert_eq!(out.len(), 1);
        let (first, last, at) = span(&out[0]);
        assert_eq!(last, 4749.0);
        assert!(first >= 2500.0 && at == Duration::from_millis(10_000 + first as u64));
    }

    #[tokio::test]
    async fn events_after_one_long_frame_still_find_its_start() {
        // A 5 s frame (as a TTS sentence arrives), then the VAD's events about its middle.
        let mut h = NodeHarness::new::<SpeechSegmenter>(json!({"pre_roll_ms": 0})).unwrap();
        let samples: Vec<f32> = (0..5_000).map(|s| s as f32).collect();
        h.push(RuntimeData::audio(samples, RATE, 1)).await.unwrap();
        h.push(VadEvent::SpeechStart { time: 0.5 }.to_data())
            .await
            .unwrap();
        let out = h
            .push(VadEvent::SpeechEnd { time: 4.5 }.to_data())
            .await
            .unwrap();
        let a = out[0].as_audio().unwrap();
        assert_eq!((a.samples()[0], a.frames()), (500.0, 4_000));
    }

    #[tokio::test]
    async fn other_json_is_ignored_and_a_format_change_is_an_error() {
        let mut h = NodeHarness::new::<SpeechSegmenter>(json!({})).unwrap();
        assert!(
            h.push(RuntimeData::json(json!({"x": 1})))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            format_change_error(&mut h, (16_000, 1), (16_000, 2)).await,
            "SpeechSegmenter: audio format changed mid-stream from 16000 Hz × 1 ch to 16000 Hz × 2 ch"
        );
        let err = h.push(RuntimeData::text("x")).await.unwrap_err();
        assert_eq!(err.message, "SpeechSegmenter cannot process text data");
    }
}
