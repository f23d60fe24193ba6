//! What every voice activity detector emits, and the decision logic they share.
//!
//! A VAD node passes its input audio through unchanged and, on the same port and in stream
//! order, JSON events saying where speech starts and ends. Keeping both on one connection means
//! a downstream [`crate::SpeechSegmenter`] always sees an event after the audio it refers to.

use std::time::Duration;

use remotemedia_core::node::Ports;
use remotemedia_core::{MediaType, Outputs, RuntimeData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::frame::Clock;

/// The ports of every VAD node: audio in, and out the same audio with its events on one port.
pub fn vad_ports() -> Ports {
    Ports::one_to_one(&[MediaType::Audio], &[MediaType::Audio, MediaType::Json])
}

/// One VAD decision, as it travels between nodes (`RuntimeData::Json`).
///
/// `time` is the position in the media stream in seconds, already adjusted for padding, so a
/// consumer can cut audio at exactly that point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VadEvent {
    SpeechStart {
        time: f64,
    },
    SpeechEnd {
        time: f64,
    },
    /// Speech has paused for `pause_ms` (only when set): the turn may be over, so work on it
    /// can start, but it is not over until `speech_end`. At most one per pause.
    SpeechPause {
        time: f64,
    },
    /// Speech went on after a `speech_pause`: the turn was not over.
    SpeechResume {
        time: f64,
    },
    /// Per-frame speech probability, only when a node is asked to emit it.
    Probability {
        time: f64,
        probability: f32,
    },
}

impl VadEvent {
    /// Where in the stream the event lies.
    pub fn time(&self) -> Duration {
        let t = match *self {
            VadEvent::SpeechStart { time }
            | VadEvent::SpeechEnd { time }
            | VadEvent::SpeechPause { time }
            | VadEvent::SpeechResume { time }
            | VadEvent::Probability { time, .. } => time,
        };
        Duration::from_secs_f64(t.max(0.0))
    }

    pub fn to_data(self) -> RuntimeData {
        RuntimeData::json(serde_json::to_value(self).unwrap_or_default())
    }

    /// The event carried by `data`, if it is one.
    pub fn from_data(data: &RuntimeData) -> Option<Self> {
        match data {
            RuntimeData::Json(v) => serde_json::from_value((**v).clone()).ok(),
            _ => None,
        }
    }
}

/// Timing rules that turn per-frame speech probabilities into start and end events.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VadTiming {
    /// Speech must last this long before a start is reported (filters clicks).
    #[schemars(range(max = 10_000))]
    pub min_speech_ms: u32,
    /// Silence must last this long before an end is reported (the hangover).
    #[schemars(range(max = 10_000))]
    pub min_silence_ms: u32,
    /// Widens each speech region by this much on both sides.
    #[schemars(range(max = 2_000))]
    pub speech_pad_ms: u32,
    /// Silence after which a `speech_pause` is reported, before the end (0: never). A voice
    /// agent starts answering at the pause and speaks at the end (see docs/voice-agent.md).
    #[schemars(range(max = 10_000))]
    pub pause_ms: u32,
}

impl Default for VadTiming {
    /// The defaults of the Silero reference implementation.
    fn default() -> Self {
        Self {
            min_speech_ms: 250,
            min_silence_ms: 100,
            speech_pad_ms: 30,
            pause_ms: 0,
        }
    }
}

/// Hysteresis over frame probabilities: a frame at or above `threshold` is speech, one below
/// `neg_threshold` is silence, anything between keeps the current state.
#[derive(Debug)]
pub struct VadTracker {
    threshold: f32,
    neg_threshold: f32,
    min_speech: Duration,
    min_silence: Duration,
    pad: Duration,
    /// Zero, or shorter than `min_silence`.
    pause: Duration,
    in_speech: bool,
    /// A `speech_pause` was reported for the current silence.
    paused: bool,
    /// Start of the run of speech frames not yet long enough to report.
    candidate: Option<Duration>,
    /// Start of the run of silence inside speech.
    silence_since: Option<Duration>,
    /// End of the last frame seen.
    now: Duration,
    /// End of the last reported speech region, which a new start may not precede.
    last_end: Duration,
}

impl VadTracker {
    pub fn new(threshold: f32, neg_threshold: f32, timing: &VadTiming) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        Self {
            threshold,
            neg_threshold: neg_threshold.min(threshold),
            min_speech: ms(timing.min_speech_ms),
            min_silence: ms(timing.min_silence_ms),
            pad: ms(timing.speech_pad_ms),
            pause: Some(ms(timing.pause_ms))
                .filter(|&p| p < ms(timing.min_silence_ms))
                .unwrap_or_default(),
            in_speech: false,
            paused: false,
            candidate: None,
            silence_since: None,
            now: Duration::ZERO,
            last_end: Duration::ZERO,
        }
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Feeds the probability of the frame `[start, end)`; returns an event when one is decided.
    pub fn frame(&mut self, start: Duration, end: Duration, p: f32) -> Option<VadEvent> {
        self.now = end;
        if !self.in_speech {
            if p >= self.threshold {
                let since = *self.candidate.get_or_insert(start);
                if end.saturating_sub(since) >= self.min_speech {
                    self.in_speech = true;
                    self.candidate = None;
                    self.silence_since = None;
                    let at = since.saturating_sub(self.pad).max(self.last_end);
                    return Some(VadEvent::SpeechStart {
                        time: at.as_secs_f64(),
                    });
                }
            } else if p < self.neg_threshold {
                self.candidate = None;
            }
            return None;
        }
        if p >= self.threshold {
            self.silence_since = None;
            if std::mem::take(&mut self.paused) {
                return Some(VadEvent::SpeechResume {
                    time: start.as_secs_f64(),
                });
            }
        } else if p < self.neg_threshold {
            let since = *self.silence_since.get_or_insert(start);
            let silent = end.saturating_sub(since);
            if silent >= self.min_silence {
                return Some(self.end_at((since + self.pad).min(end)));
            }
            if !self.pause.is_zero() && silent >= self.pause && !self.paused {
                self.paused = true;
                return Some(VadEvent::SpeechPause {
                    time: (since + self.pad).min(end).as_secs_f64(),
                });
            }
        }
        None
    }

    /// Closes an open speech region at the end of the stream.
    pub fn finish(&mut self) -> Option<VadEvent> {
        self.candidate = None;
        self.in_speech.then(|| self.end_at(self.now))
    }

    /// Forgets everything (barge-in or a new stream).
    pub fn reset(&mut self) {
        self.in_speech = false;
        self.candidate = None;
        self.silence_since = None;
        self.paused = false;
        self.last_end = Duration::ZERO;
        self.now = Duration::ZERO;
    }

    fn end_at(&mut self, at: Duration) -> VadEvent {
        self.in_speech = false;
        self.silence_since = None;
        self.paused = false;
        self.last_end = at;
        VadEvent::SpeechEnd {
            time: at.as_secs_f64(),
        }
    }
}

/// The output side every VAD node shares: runs of samples scored one after another, counted
/// from the stream's first frame, go through a [`VadTracker`], and the decided events (and each
/// run's probability, when asked) go out stamped with their own stream time.
#[derive(Debug)]
pub struct VadEvents {
    tracker: VadTracker,
    emit_probability: bool,
    /// Set by the stream's first frame.
    clock: Option<Clock>,
    /// Samples scored since then.
    scored: u64,
}

impl VadEvents {
    /// `emit_probability` adds a `probability` event per scored run, for plotting and tuning.
    pub fn new(tracker: VadTracker, emit_probability: bool) -> Self {
        Self {
            tracker,
            emit_probability,
            clock: None,
            scored: 0,
        }
    }

    /// Starts the stream's clock at its first frame; later calls keep it.
    pub fn start(&mut self, at: Duration, rate: u32) {
        self.clock.get_or_insert(Clock::new(at, rate));
    }

    /// Takes the speech probability `p` of the next `len` samples.
    pub fn frame(&mut self, len: u64, p: f32, out: &mut Outputs) {
        let clock = self.clock.unwrap_or_default();
        let start = clock.time(self.scored);
        self.scored += len;
        let end = clock.time(self.scored);
        if self.emit_probability {
            let ev = VadEvent::Probability {
                time: start.as_secs_f64(),
                probability: p,
            };
            out.push_at(ev.to_data(), start);
        }
        if let Some(ev) = self.tracker.frame(start, end, p) {
            out.push_at(ev.to_data(), ev.time());
        }
    }

    /// Closes open speech at the end of the stream.
    pub fn finish(&mut self, out: &mut Outputs) {
        if let Some(ev) = self.tracker.finish() {
            out.push_at(ev.to_data(), ev.time());
        }
    }

    /// Forgets the stream (a cancel): the next frame starts a new clock.
    pub fn reset(&mut self) {
        self.tracker.reset();
        self.clock = None;
        self.scored = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(probs: &[f32], timing: VadTiming) -> Vec<VadEvent> {
        let mut t = VadTracker::new(0.5, 0.35, &timing);
        let frame = Duration::from_millis(32);
        let mut out: Vec<VadEvent> = probs
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| t.frame(frame * i as u32, frame * (i as u32 + 1), p))
            .collect();
        out.extend(t.finish());
        out
    }

    #[test]
    fn start_and_end_are_padded_and_need_minimum_durations() {
        let timing = VadTiming {
            min_speech_ms: 64,
            min_silence_ms: 96,
            speech_pad_ms: 30,
            pause_ms: 0,
        };
        // 5 silent frames, 10 speech frames, 10 silent frames.
        let mut probs = vec![0.0; 5];
        probs.extend([0.9; 10]);
        probs.extend([0.0; 10]);
        let ev = run(&probs, timing);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!((ev[0].time().as_secs_f64() - (0.160 - 0.030)).abs() < 1e-9);
        assert!((ev[1].time().as_secs_f64() - (0.480 + 0.030)).abs() < 1e-9);
    }

    #[test]
    fn short_blips_and_short_pauses_are_ignored() {
        let timing = VadTiming {
            min_speech_ms: 100,
            min_silence_ms: 100,
            speech_pad_ms: 0,
            pause_ms: 0,
        };
        // A 2-frame blip (64 ms) is no speech; a 2-frame pause inside speech is no end.
        let mut probs = vec![0.0, 0.9, 0.9, 0.0, 0.0];
        probs.extend([0.9; 6]);
        probs.extend([0.1, 0.1]);
        probs.extend([0.9; 4]);
        let ev = run(&probs, timing);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(ev[0], VadEvent::SpeechStart { .. }));
        assert!((ev[0].time().as_secs_f64() - 0.160).abs() < 1e-9);
        // Speech runs to the end of the stream and is closed there.
        assert!((ev[1].time().as_secs_f64() - 0.544).abs() < 1e-9);
    }

    #[test]
    fn probabilities_between_thresholds_keep_the_state() {
        let timing = VadTiming {
            min_speech_ms: 0,
            min_silence_ms: 0,
            speech_pad_ms: 0,
            pause_ms: 0,
        };
        let ev = run(&[0.9, 0.4, 0.4, 0.2], timing);
        assert_eq!(ev.len(), 2);
        assert!((ev[1].time().as_secs_f64() - 0.096).abs() < 1e-9);
    }

    #[test]
    fn a_pause_is_reported_once_before_the_end_and_a_resume_when_speech_goes_on() {
        let timing = VadTiming {
            min_speech_ms: 0,
            min_silence_ms: 160,
            speech_pad_ms: 30,
            pause_ms: 64,
        };
        // Speech, a 3-frame pause, speech again, then 6 silent frames.
        let mut probs = vec![0.9; 4];
        probs.extend([0.1; 3]);
        probs.extend([0.9; 2]);
        probs.extend([0.1; 6]);
        let ev = run(&probs, timing.clone());
        let names: Vec<_> = ev
            .iter()
            .map(|e| match e {
                VadEvent::SpeechStart { .. } => "start",
                VadEvent::SpeechPause { .. } => "pause",
                VadEvent::SpeechResume { .. } => "resume",
                VadEvent::SpeechEnd { .. } => "end",
                VadEvent::Probability { .. } => "probability",
            })
            .collect();
        assert_eq!(names, ["start", "pause", "resume", "pause", "end"]);
        // The pause is where the end would be: the silence's start plus the padding.
        let at = |i: usize| ev[i].time().as_secs_f64();
        assert!((at(1) - (0.128 + 0.030)).abs() < 1e-9);
        assert!((at(2) - 0.224).abs() < 1e-9);
        assert!((at(3) - (0.288 + 0.030)).abs() < 1e-9);
        assert!((at(4) - at(3)).abs() < 1e-9);
        // No pause that would come with or after the end.
        let late = VadTiming {
            pause_ms: 160,
            ..timing
        };
        assert!(
            !run(&probs, late)
                .iter()
                .any(|e| matches!(e, VadEvent::SpeechPause { .. }))
        );
    }

    #[test]
    fn events_round_trip_through_runtime_data() {
        let e = VadEvent::SpeechStart { time: 1.25 };
        let data = e.to_data();
        let RuntimeData::Json(v) = &data else {
            panic!("not json")
        };
        assert_eq!(v["event"], "speech_start");
        assert_eq!(VadEvent::from_data(&data), Some(e));
        assert_eq!(VadEvent::from_data(&RuntimeData::text("x")), None);
    }
}
