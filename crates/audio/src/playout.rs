//! Playout: releases a spoken reply in real time and knows, when it is interrupted, how much of
//! it was heard.
//!
//! Audio leaves in `frame_ms` frames, each when the wall clock reaches its place in the reply
//! less `lead_ms` (so the transport never runs dry). What has not left yet can still be taken
//! back: a [`Control::Cancel`] while the reply plays drops it, and the node reports what the
//! listener heard — an `interrupted` event on `events`, and on `spoken` the words heard (whole
//! sentences, then the played share of the sentence cut off), which a chat node's `spoken`
//! feedback port turns into its history. A cancel between two sentences (all received audio
//! played, the next sentence not there yet) sends the words heard too, without an event. It learns the sentences from a TTS that sends each
//! sentence's text before its audio (`PiperTTS` with `with_text: true`).
//!
//! The cancel may reach this node before the TTS has seen it, and the TTS may then finish one
//! more sentence of the interrupted reply: sentences stamped with the interrupted reply's span
//! (chat nodes stamp their sentences with the user turn they answer) are dropped with their
//! audio.
//!
//! Turn-taking: the optional `turn` input takes a VAD's events. From a `speech_pause` until the
//! turn ends the audio waits (a reply begun at the pause is ready but the user may go on);
//! `speech_end` plays it, `speech_resume` drops it (reason `resumed`).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    AudioFrame, Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData,
    TextFrame,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use crate::vad::VadEvent;

/// Settings of [`Playout`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PlayoutParams {
    /// Audio released ahead of the listener, so the transport always has some to play.
    #[schemars(range(max = 2_000))]
    pub lead_ms: u32,
    /// Length of the released frames.
    #[schemars(range(min = 5, max = 200))]
    pub frame_ms: u32,
}

impl Default for PlayoutParams {
    fn default() -> Self {
        Self {
            lead_ms: 60,
            frame_ms: 20,
        }
    }
}

/// Audio waiting to leave, and how far it has left.
struct Queued {
    frame: AudioFrame,
    /// Samples (all channels) already released.
    sent: usize,
}

/// The timeline of the audio received, and the reply on it.
struct Period {
    /// Wall time of the timeline's start (moved on when the audio ran out and resumed, so a
    /// frame's place on the timeline is its wall time).
    start: Instant,
    /// Audio released so far.
    released: Duration,
    /// Audio received so far (released or queued).
    total: Duration,
    /// The reply's sentences and where each one's audio starts on the timeline.
    sentences: Vec<(String, Duration)>,
    /// The span of the user's turn the reply answers (set by chat nodes on their sentences).
    reply: Span,
}

impl Period {
    /// Everything received has been played by `now`.
    fn played_out(&self, now: Instant) -> bool {
        now >= self.start + self.total
    }
}

type Span = Option<(Duration, Duration)>;

/// See the module documentation.
pub struct Playout {
    lead: Duration,
    frame: Duration,
    queue: VecDeque<Queued>,
    period: Option<Period>,
    /// The reply last interrupted: its sentences still on their way (the TTS was speaking one
    /// when the cancel reached this node first) are dropped with their audio.
    interrupted: Span,
    /// The sentence arriving belongs to the interrupted reply.
    dropping: bool,
    /// The user paused: audio waits for the end of their turn.
    held: bool,
}

impl Playout {
    /// The timeline, resumed at `now` if it had played out.
    fn period(&mut self, now: Instant) -> &mut Period {
        let p = self.period.get_or_insert_with(|| Period {
            start: now,
            released: Duration::ZERO,
            total: Duration::ZERO,
            sentences: Vec::new(),
            reply: None,
        });
        if p.played_out(now) {
            p.start = now - p.total;
        }
        p
    }

    /// When the next frame may leave.
    fn due(&self) -> Option<Instant> {
        if self.held {
            return None;
        }
        let p = self.period.as_ref()?;
        self.queue.front()?;
        Some(
            (p.start + p.released)
                .checked_sub(self.lead)
                .unwrap_or(p.start),
        )
    }

    /// Releases every frame that is due at `now`.
    fn release(&mut self, now: Instant, out: &mut Outputs) {
        while self.due().is_some_and(|d| d <= now) {
            let (Some(q), Some(p)) = (self.queue.front_mut(), self.period.as_mut()) else {
                return;
            };
            let f = &q.frame;
            let ch = usize::from(f.channels.max(1));
            let len = ((self.frame.as_secs_f64() * f64::from(f.sample_rate)) as usize).max(1) * ch;
            let end = (q.sent + len).min(f.samples().len());
            let samples = f.samples()[q.sent..end].to_vec();
            p.released += Duration::from_secs_f64(
                (end - q.sent) as f64 / ch as f64 / f64::from(f.sample_rate),
            );
            q.sent = end;
            out.push(RuntimeData::audio(samples, f.sample_rate, f.channels));
            if end >= q.frame.samples().len() {
                self.queue.pop_front();
            }
        }
    }

    /// A VAD event on the `turn` input.
    fn turn(&mut self, event: Option<VadEvent>, now: Instant, out: &mut Outputs) {
        match event {
            Some(VadEvent::SpeechPause { .. }) => self.held = true,
            Some(VadEvent::SpeechResume { .. }) if self.held => {
                self.held = false;
                self.interrupt(now, "resumed", out);
            }
            Some(VadEvent::SpeechEnd { .. }) => self.unhold(now),
            // Other events, and the VAD's audio passing by.
            _ => {}
        }
    }

    /// The user's turn is over: what was held plays from `now`.
    fn unhold(&mut self, now: Instant) {
        if std::mem::take(&mut self.held)
            && let Some(p) = self.period.as_mut()
        {
            // Nothing left while held: the timeline goes on from now.
            p.start = now.checked_sub(p.released).unwrap_or(p.start);
        }
    }

    /// Stops the reply playing at `now`: reports what was heard and drops the rest.
    fn interrupt(&mut self, now: Instant, reason: &str, out: &mut Outputs) {
        self.queue.clear();
        let Some(p) = self.period.take() else {
            return;
        };
        self.interrupted = p.reply;
        let heard = now.saturating_duration_since(p.start).min(p.released);
        let spoken = heard_words(&p.sentences, heard, p.total);
        if heard < p.total {
            out.push_to(
                1,
                RuntimeData::json(serde_json::json!({
                    "event": "interrupted",
                    "reason": reason,
                    "heard_ms": heard.as_millis() as u64,
                    "dropped_ms": (p.total - heard).as_millis() as u64,
                    "spoken": spoken,
                })),
            );
        }
        // Also when all the audio received had played: the reply may have been cut between
        // two sentences (the next still being written or spoken).
        if !p.sentences.is_empty() {
            out.push_to(2, RuntimeData::Text(TextFrame::new(spoken)));
        }
    }
}

/// The words of `sentences` (each with where its audio starts; the last ends at `total`) that
/// were played in the first `heard`: whole sentences, then the played share of the next one's
/// words.
fn heard_words(sentences: &[(String, Duration)], heard: Duration, total: Duration) -> String {
    let mut words: Vec<&str> = Vec::new();
    for (i, (text, start)) in sentences.iter().enumerate() {
        if *start >= heard {
            break;
        }
        let end = sentences.get(i + 1).map_or(total, |(_, s)| *s);
        let all: Vec<&str> = text.split_whitespace().collect();
        let share = if heard >= end {
            1.0
        } else {
            (heard - *start).as_secs_f64() / (end - *start).as_secs_f64().max(1e-9)
        };
        words.extend(&all[..(all.len() as f64 * share).floor() as usize]);
    }
    words.join(" ")
}

#[async_trait]
impl Node for Playout {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let now = Instant::now();
        if port == 1 {
            // What the end of a turn lets go leaves from `poll_output`, like all paced audio.
            self.turn(VadEvent::from_data(&input.data), now, out);
            return Ok(());
        }
        match &input.data {
            RuntimeData::Audio(_) if self.dropping => {}
            RuntimeData::Text(t) if t.span.is_some() && t.span == self.interrupted => {
                self.dropping = true;
            }
            RuntimeData::Audio(a) => {
                let p = self.period(now);
                p.total += a.duration();
                self.queue.push_back(Queued {
                    frame: a.clone(),
                    sent: 0,
                });
            }
            RuntimeData::Text(t) => {
                self.dropping = false;
                let resumed = self.period.as_ref().is_none_or(|p| p.played_out(now));
                let p = self.period(now);
                // Another turn's reply, or (for text without a span) speech after a pause.
                if t.span != p.reply || (resumed && t.span.is_none()) {
                    p.sentences.clear();
                    p.reply = t.span;
                }
                let at = p.total;
                p.sentences.push((t.text.trim().to_string(), at));
            }
            other => return Err(NodeError::unsupported(Self::NAME, other)),
        }
        self.release(now, out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        // The end of the stream ends the user's turn.
        self.unhold(Instant::now());
        while let Some(due) = self.due() {
            tokio::time::sleep_until(due).await;
            self.release(Instant::now(), out);
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, out: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { reason } = control {
            self.interrupt(Instant::now(), reason, out);
        }
        Ok(())
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(due) = self.due() else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(due).await;
        self.release(Instant::now(), out);
        Ok(())
    }
}

impl NodeType for Playout {
    type Params = PlayoutParams;
    const NAME: &'static str = "Playout";
    const DESCRIPTION: &'static str =
        "Releases speech in real time; on a cancel stops it and reports what was heard";

    fn ports() -> Ports {
        Ports::new()
            .input("in", &[MediaType::Audio, MediaType::Text])
            // A side input: optional, never the session's input, never blocks the VAD.
            .feedback("turn", &[MediaType::Audio, MediaType::Json])
            .output("out", &[MediaType::Audio])
            .output("events", &[MediaType::Json])
            .output("spoken", &[MediaType::Text])
    }

    fn new(p: PlayoutParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self {
            lead: Duration::from_millis(u64::from(p.lead_ms)),
            frame: Duration::from_millis(u64::from(p.frame_ms)),
            queue: VecDeque::new(),
            period: None,
            interrupted: None,
            dropping: false,
            held: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remotemedia_core::testing::NodeHarness;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn heard_words_are_whole_sentences_then_the_played_share() {
        let s = vec![
            ("The moon is bright.".to_string(), secs(0.0)),
            ("It circles the earth every month.".to_string(), secs(1.0)),
        ];
        let total = secs(3.0);
        assert_eq!(heard_words(&s, secs(0.5), total), "The moon");
        assert_eq!(heard_words(&s, secs(1.0), total), "The moon is bright.");
        assert_eq!(
            heard_words(&s, secs(2.0), total),
            "The moon is bright. It circles the"
        );
        assert_eq!(heard_words(&s, secs(0.1), total), "");
    }

    fn audio(seconds: f64) -> RuntimeData {
        RuntimeData::audio(vec![0.1; (16_000.0 * seconds) as usize], 16_000, 1)
    }

    fn played(out: &[RuntimeData]) -> Duration {
        out.iter()
            .filter_map(|d| d.as_audio())
            .map(|a| a.duration())
            .sum()
    }

    /// The node's own outputs, without the controls the router passes on.
    fn emitted(out: Vec<RuntimeData>) -> Vec<RuntimeData> {
        out.into_iter()
            .filter(|d| !matches!(d, RuntimeData::Control(_)))
            .collect()
    }

    fn cancel() -> Control {
        Control::Cancel {
            reason: "barge-in".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn audio_leaves_in_real_time_and_a_cancel_reports_what_was_heard() {
        let mut h = NodeHarness::new::<Playout>(serde_json::json!({"lead_ms": 60})).unwrap();
        let mut out = h
            .push(RuntimeData::text("One two three four."))
            .await
            .unwrap();
        out.extend(h.push(audio(1.0)).await.unwrap());
        out.extend(h.push(RuntimeData::text("Five six.")).await.unwrap());
        out.extend(h.push(audio(1.0)).await.unwrap());
        // At once: the lead and the frame playing now.
        assert_eq!(played(&out), Duration::from_millis(80));
        out.extend(h.poll_for(Duration::from_millis(1_510)).await.unwrap());
        // Then with the wall clock, the lead ahead.
        assert_eq!(played(&out), Duration::from_millis(1_580));
        let out = emitted(h.push_control(cancel()).await.unwrap());
        let event = match &out[0] {
            RuntimeData::Json(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(event["event"], "interrupted");
        assert_eq!(event["heard_ms"], 1_510);
        assert_eq!(event["dropped_ms"], 490);
        assert_eq!(event["spoken"], "One two three four. Five");
        assert_eq!(
            out[1].as_text().map(|t| &*t.text),
            Some("One two three four. Five")
        );
        // Nothing is left to play, and nothing more to report.
        assert!(h.poll_for(Duration::from_secs(2)).await.unwrap().is_empty());
        assert!(emitted(h.push_control(cancel()).await.unwrap()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_in_the_audio_keeps_the_reply_and_a_played_reply_is_all_heard() {
        let mut h = NodeHarness::new::<Playout>(serde_json::json!({})).unwrap();
        // Sentences of the reply to the user's turn number `turn`.
        let frame = |text: &str, turn: u64| {
            let at = Duration::from_secs(turn);
            RuntimeData::Text(TextFrame {
                span: Some((at, at + Duration::from_millis(500))),
                ..TextFrame::new(text)
            })
        };
        h.push(frame("The first sentence.", 0)).await.unwrap();
        let mut out = h.push(audio(0.5)).await.unwrap();
        out.extend(h.poll_for(Duration::from_secs(1)).await.unwrap());
        assert_eq!(played(&out), Duration::from_millis(500));
        // All of it was heard: no event, the words heard.
        let out = emitted(h.push_control(cancel()).await.unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].as_text().map(|t| &*t.text),
            Some("The first sentence.")
        );
        // The TTS was slow: the second sentence comes after the first has played.
        h.push(frame("The first sentence.", 1)).await.unwrap();
        h.push(audio(0.5)).await.unwrap();
        h.poll_for(Duration::from_secs(1)).await.unwrap();
        h.push(frame("And the second one.", 1)).await.unwrap();
        h.push(audio(1.0)).await.unwrap();
        h.poll_for(Duration::from_millis(500)).await.unwrap();
        let out = emitted(h.push_control(cancel()).await.unwrap());
        assert_eq!(
            out[1].as_text().map(|t| &*t.text),
            Some("The first sentence. And the")
        );
        // The TTS finishes a sentence of the interrupted reply: it is not played.
        h.push(frame("A sentence too late.", 1)).await.unwrap();
        let mut out = h.push(audio(1.0)).await.unwrap();
        out.extend(h.poll_for(Duration::from_secs(2)).await.unwrap());
        assert_eq!(played(&out), Duration::ZERO);
        assert!(emitted(h.push_control(cancel()).await.unwrap()).is_empty());
        // The next reply plays.
        h.push(frame("Next.", 2)).await.unwrap();
        let mut out = h.push(audio(0.5)).await.unwrap();
        out.extend(h.poll_for(Duration::from_secs(1)).await.unwrap());
        assert_eq!(played(&out), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_begun_at_a_pause_waits_for_the_end_of_the_turn() {
        let mut h = NodeHarness::new::<Playout>(serde_json::json!({"lead_ms": 0})).unwrap();
        let turn = |ev: VadEvent| ev.to_data();
        // The reply is ready before the turn is over: nothing plays.
        h.push_to(1, turn(VadEvent::SpeechPause { time: 1.0 }))
            .await
            .unwrap();
        h.push(RuntimeData::text("Yes.")).await.unwrap();
        let mut out = h.push(audio(0.5)).await.unwrap();
        out.extend(h.poll_for(Duration::from_millis(300)).await.unwrap());
        assert_eq!(played(&out), Duration::ZERO);
        // The turn ends: it plays from then, in real time.
        let mut out = h
            .push_to(1, turn(VadEvent::SpeechEnd { time: 1.3 }))
            .await
            .unwrap();
        out.extend(h.poll_for(Duration::from_millis(210)).await.unwrap());
        assert_eq!(played(&out), Duration::from_millis(220));
        out.extend(h.poll_for(Duration::from_secs(1)).await.unwrap());
        assert_eq!(played(&out), Duration::from_millis(500));
        // The user goes on after a pause: the reply begun there is dropped, none of it heard.
        h.push_to(1, turn(VadEvent::SpeechPause { time: 3.0 }))
            .await
            .unwrap();
        h.push(RuntimeData::text("No.")).await.unwrap();
        h.push(audio(0.5)).await.unwrap();
        let out = emitted(
            h.push_to(1, turn(VadEvent::SpeechResume { time: 3.2 }))
                .await
                .unwrap(),
        );
        let RuntimeData::Json(event) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(event["reason"], "resumed");
        assert_eq!(event["dropped_ms"], 500);
        assert_eq!(event["spoken"], "");
        assert_eq!(out[1].as_text().map(|t| &*t.text), Some(""));
        assert!(h.poll_for(Duration::from_secs(1)).await.unwrap().is_empty());
        // The end of the stream ends a turn held at a pause.
        h.push_to(1, turn(VadEvent::SpeechPause { time: 5.0 }))
            .await
            .unwrap();
        h.push(audio(0.5)).await.unwrap();
        assert_eq!(
            played(&h.flush().await.unwrap()),
            Duration::from_millis(500)
        );
        // Audio passing by on `turn` changes nothing.
        assert!(
            h.push_to(1, audio(0.02))
                .await
                .unwrap()
                .iter()
                .all(|d| matches!(d, RuntimeData::Control(_)))
        );
    }
}
