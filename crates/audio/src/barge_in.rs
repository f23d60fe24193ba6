//! Barge-in: the user starting to speak becomes a [`Control::Cancel`] for the reply in progress.
//!
//! Reads a VAD's events (its per-window `probability` events for the quickest decision, else
//! its `speech_start`/`speech_end`). Speech that lasts `min_speech_ms` without a break sends one
//! cancel, with reason `barge-in`; shorter sounds (a cough, a click, a "hm") send nothing. After
//! a cancel, `min_silence_ms` of silence arms it again. Connected to the nodes that make and
//! play the reply (the LLM, and the `Playout` so the audio stops without waiting for them), the
//! cancel ends generation, drops queued speech and stops playback; see docs/voice-agent.md.
//!
//! A VAD's `speech_resume` (speech going on after a `speech_pause`) sends a cancel with reason
//! `resumed`: the reply begun at the pause answered a turn that was not over.

use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::vad::VadEvent;

/// Settings of [`BargeIn`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BargeInParams {
    /// Speech probability at or above which a VAD window counts as speech.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f32,
    /// Speech must last this long, unbroken, to interrupt; shorter sounds are ignored.
    #[schemars(range(max = 5_000))]
    pub min_speech_ms: u32,
    /// Silence after an interruption before speech can interrupt again.
    #[schemars(range(max = 10_000))]
    pub min_silence_ms: u32,
}

impl Default for BargeInParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_ms: 120,
            min_silence_ms: 300,
        }
    }
}

/// See the module documentation.
pub struct BargeIn {
    threshold: f32,
    min_speech: Duration,
    min_silence: Duration,
    /// Start of the unbroken speech being heard.
    speech_since: Option<Duration>,
    /// Start of the silence since the last interruption.
    silence_since: Option<Duration>,
    /// Interrupted for the current speech; armed again by silence.
    fired: bool,
    /// The previous probability window's start (to know a window's length).
    last: Option<Duration>,
}

impl BargeIn {
    fn interrupt(&mut self, out: &mut Outputs) {
        if !self.fired {
            self.fired = true;
            out.push(RuntimeData::Control(Control::Cancel {
                reason: "barge-in".into(),
            }));
        }
    }

    fn rearm(&mut self) {
        self.fired = false;
        self.speech_since = None;
        self.silence_since = None;
    }

    /// One VAD window starting at `t` with speech probability `p`.
    fn window(&mut self, t: Duration, p: f32, out: &mut Outputs) {
        let len = self.last.map_or(Duration::ZERO, |l| t.saturating_sub(l));
        self.last = Some(t);
        let end = t + len;
        if p >= self.threshold {
            self.silence_since = None;
            let since = *self.speech_since.get_or_insert(t);
            if end.saturating_sub(since) >= self.min_speech {
                self.interrupt(out);
            }
        } else {
            // Speech must be unbroken to interrupt.
            self.speech_since = None;
            if self.fired {
                let since = *self.silence_since.get_or_insert(t);
                if end.saturating_sub(since) >= self.min_silence {
                    self.rearm();
                }
            }
        }
    }
}

#[async_trait]
impl Node for BargeIn {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        match VadEvent::from_data(&input.data) {
            Some(VadEvent::Probability { time, probability }) => {
                self.window(Duration::from_secs_f64(time.max(0.0)), probability, out)
            }
            Some(VadEvent::SpeechStart { .. }) => self.interrupt(out),
            Some(VadEvent::SpeechEnd { .. }) => self.rearm(),
            Some(VadEvent::SpeechResume { .. }) => {
                out.push(RuntimeData::Control(Control::Cancel {
                    reason: "resumed".into(),
                }))
            }
            Some(VadEvent::SpeechPause { .. }) => {}
            // The VAD's audio, passing by.
            None if input.data.as_audio().is_some() => {}
            None => return Err(NodeError::unsupported(Self::NAME, &input.data)),
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, _: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { .. } = control {
            self.rearm();
            self.last = None;
        }
        Ok(())
    }
}

impl NodeType for BargeIn {
    type Params = BargeInParams;
    const NAME: &'static str = "BargeIn";
    const DESCRIPTION: &'static str =
        "Turns the user's speech onset (VAD events) into a cancel of the reply in progress";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio, MediaType::Json], &[MediaType::Control])
    }

    fn new(p: BargeInParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self {
            threshold: p.threshold,
            min_speech: Duration::from_millis(u64::from(p.min_speech_ms)),
            min_silence: Duration::from_millis(u64::from(p.min_silence_ms)),
            speech_since: None,
            silence_since: None,
            fired: false,
            last: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remotemedia_core::testing::NodeHarness;

    fn probability(ms: u64, probability: f32) -> RuntimeData {
        VadEvent::Probability {
            time: ms as f64 / 1000.0,
            probability,
        }
        .to_data()
    }

    /// Feeds 32 ms windows (`true` = speech) and returns the times (ms) of the cancels.
    async fn cancels(h: &mut NodeHarness, windows: &[bool]) -> Vec<u64> {
        let mut at = Vec::new();
        for (i, &speech) in windows.iter().enumerate() {
            let t = i as u64 * 32;
            let out = h
                .push(probability(t, if speech { 0.9 } else { 0.1 }))
                .await
                .unwrap();
            for o in out {
                assert!(matches!(o, RuntimeData::Control(Control::Cancel { .. })));
                at.push(t);
            }
        }
        at
    }

    #[tokio::test]
    async fn unbroken_speech_interrupts_once_and_short_sounds_never() {
        let mut h = NodeHarness::new::<BargeIn>(serde_json::json!({"min_speech_ms": 120})).unwrap();
        // 96 ms of sound, silence, then speech from 320 ms: the cancel comes with the window that
        // completes 128 ms of it (starting at 416 ms), and only once while it goes on.
        let mut w = vec![
            true, true, true, false, false, false, false, false, false, false,
        ];
        w.extend([true; 20]);
        assert_eq!(cancels(&mut h, &w).await, [416]);
    }

    #[tokio::test]
    async fn silence_arms_it_again() {
        let mut h =
            NodeHarness::new::<BargeIn>(serde_json::json!({"min_silence_ms": 300})).unwrap();
        let mut w = vec![true; 6];
        w.extend([false; 5]); // 160 ms: not enough to end the turn
        w.extend([true; 6]);
        w.extend([false; 10]); // 320 ms: armed again
        w.extend([true; 6]);
        assert_eq!(cancels(&mut h, &w).await, [96, 96 + 32 * 27]);
    }

    #[tokio::test]
    async fn vad_starts_interrupt_and_audio_passes_by() {
        let mut h = NodeHarness::new::<BargeIn>(serde_json::json!({})).unwrap();
        let out = h
            .push(RuntimeData::audio(vec![0.0; 512], 16_000, 1))
            .await
            .unwrap();
        assert!(out.is_empty());
        let start = VadEvent::SpeechStart { time: 1.0 }.to_data();
        assert_eq!(h.push(start.clone()).await.unwrap().len(), 1);
        assert!(h.push(start).await.unwrap().is_empty());
        let end = VadEvent::SpeechEnd { time: 2.0 }.to_data();
        assert!(h.push(end).await.unwrap().is_empty());
        let start = VadEvent::SpeechStart { time: 3.0 }.to_data();
        assert_eq!(h.push(start).await.unwrap().len(), 1);
        assert!(h.push(RuntimeData::text("x")).await.is_err());
    }

    #[tokio::test]
    async fn speech_going_on_after_a_pause_cancels_what_was_begun_there() {
        let mut h = NodeHarness::new::<BargeIn>(serde_json::json!({})).unwrap();
        let pause = VadEvent::SpeechPause { time: 1.0 }.to_data();
        assert!(h.push(pause).await.unwrap().is_empty());
        let out = h
            .push(VadEvent::SpeechResume { time: 1.2 }.to_data())
            .await
            .unwrap();
        assert!(
            matches!(&out[..], [RuntimeData::Control(Control::Cancel { reason })] if &**reason == "resumed"),
            "{out:?}"
        );
    }
}
