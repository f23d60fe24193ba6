//! The reply track's pacing: audio from the pipeline, however bursty, leaves as one 20 ms frame
//! per 20 ms of wall time, stamped with an RTP clock that runs on through the silences between
//! replies (no packets are sent then), as the sampling clock of a microphone would.
//!
//! The clock matters to the browser: a jitter buffer that saw the timestamps stand still over
//! seconds of wall time would take the gap for network delay, and hold back or drop the start of
//! the next reply to match it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// WebRTC audio runs at 48 kHz; one Opus frame is 20 ms.
pub const RATE: u32 = 48_000;
pub const FRAME: usize = 960;
const FRAME_TIME: Duration = Duration::from_millis(20);

/// One 20 ms frame to send.
#[derive(Debug, PartialEq)]
pub struct Frame {
    /// `FRAME` mono samples (the end of a reply padded with silence).
    pub pcm: Vec<f32>,
    /// Its RTP timestamp (48 kHz).
    pub rtp_time: u64,
    /// The first frame after a silence: the RTP marker bit.
    pub talkspurt: bool,
}

/// Reply audio waiting to leave, and the track's clock.
#[derive(Default)]
pub struct ReplyTrack {
    samples: VecDeque<f32>,
    /// When the next frame is due; none while the track is silent.
    next: Option<Instant>,
    /// When the track fell silent: the next frame's RTP time moves on by the silence.
    quiet_since: Option<Instant>,
    rtp_time: u64,
}

impl ReplyTrack {
    /// Queues mono samples received at `now`; a silent track starts again at once.
    pub fn push(&mut self, samples: impl IntoIterator<Item = f32>, now: Instant) {
        self.samples.extend(samples);
        if !self.samples.is_empty() {
            self.next.get_or_insert(now);
        }
    }

    /// Drops what has not left (barge-in): the track falls silent.
    pub fn clear(&mut self) {
        self.samples.clear();
        if let Some(due) = self.next.take() {
            self.quiet_since = Some(due);
        }
    }

    /// Nothing waits to leave.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// The next frame if it is due by `now`; call again for the one after.
    pub fn due_frame(&mut self, now: Instant) -> Option<Frame> {
        let due = self.next.filter(|d| *d <= now)?;
        if self.samples.is_empty() {
            self.next = None;
            self.quiet_since = Some(due);
            return None;
        }
        self.next = Some(due + FRAME_TIME);
        let talkspurt = self.quiet_since.take().is_some_and(|quiet| {
            let gap = due.saturating_duration_since(quiet);
            let frames = gap.as_millis() / FRAME_TIME.as_millis();
            self.rtp_time += frames as u64 * FRAME as u64;
            true
        });
        let mut pcm: Vec<f32> = self
            .samples
            .drain(..FRAME.min(self.samples.len()))
            .collect();
        pcm.resize(FRAME, 0.0);
        let frame = Frame {
            pcm,
            rtp_time: self.rtp_time,
            talkspurt,
        };
        self.rtp_time += FRAME as u64;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every frame due by `now`: (RTP time, talkspurt).
    fn take(track: &mut ReplyTrack, now: Instant) -> Vec<(u64, bool)> {
        std::iter::from_fn(|| track.due_frame(now))
            .map(|f| {
                assert_eq!(f.pcm.len(), FRAME);
                (f.rtp_time, f.talkspurt)
            })
            .collect()
    }

    #[test]
    fn a_burst_leaves_one_frame_per_20_ms() {
        let t0 = Instant::now();
        let mut track = ReplyTrack::default();
        track.push(vec![0.5; 5 * FRAME - 100], t0);
        assert_eq!(take(&mut track, t0), [(0, false)]);
        assert_eq!(take(&mut track, t0 + ms(19)), []);
        assert_eq!(take(&mut track, t0 + ms(20)), [(960, false)]);
        // A late wake sends every frame that is due.
        assert_eq!(
            take(&mut track, t0 + ms(85)),
            [(1920, false), (2880, false), (3840, false)]
        );
        assert!(track.is_empty());
        assert_eq!(take(&mut track, t0 + ms(100)), []);
        assert_eq!(track.next_due(), None, "silent");
    }

    #[test]
    fn the_rtp_clock_runs_on_through_a_silence() {
        let t0 = Instant::now();
        let mut track = ReplyTrack::default();
        track.push(vec![0.5; 2 * FRAME], t0);
        assert_eq!(take(&mut track, t0 + ms(20)), [(0, false), (960, false)]);
        assert_eq!(take(&mut track, t0 + ms(40)), [], "silent from 40 ms");
        // The next reply, a second later: 50 frames of silence on the clock.
        track.push(vec![0.5; 2 * FRAME], t0 + ms(1_040));
        assert_eq!(
            take(&mut track, t0 + ms(1_060)),
            [(1920 + 50 * 960, true), (1920 + 51 * 960, false)]
        );
    }

    #[test]
    fn a_barge_in_drops_the_rest_and_the_clock_runs_on() {
        let t0 = Instant::now();
        let mut track = ReplyTrack::default();
        track.push(vec![0.5; 50 * FRAME], t0);
        assert_eq!(take(&mut track, t0), [(0, false)]);
        track.clear();
        assert!(track.is_empty());
        assert_eq!(track.next_due(), None);
        // Silent from the frame that did not leave (20 ms) to 520 ms: 25 frames.
        track.push(vec![0.5; FRAME], t0 + ms(520));
        assert_eq!(take(&mut track, t0 + ms(520)), [(960 + 25 * 960, true)]);
    }
}
