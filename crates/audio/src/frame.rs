//! Frame plumbing that audio and speech nodes share rather than each writing it again: taking the
//! audio out of a packet, holding a stream to one format, and stamping outputs from sample
//! counts (exact integer time, so timestamps never drift however long a stream runs).

use std::time::Duration;

use remotemedia_core::{AudioFrame, NodeError, Packet};

/// Highest sample rate accepted (Hz). 384 kHz is the highest rate real converters and formats
/// use; anything above is a corrupt header or a mistyped `--rate`, and would make frame buffers
/// absurdly large.
pub const MAX_SAMPLE_RATE: u32 = 384_000;

/// Highest channel count accepted. 64 covers ambisonics and large studio layouts; more is a
/// corrupt header or a wrong `--channels`.
pub const MAX_CHANNELS: u16 = 64;

/// A fatal error prefixed with the node's name, so a user with several nodes knows which failed.
pub fn fatal(node: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::fatal(format!("{node}: {e}"))
}

/// The audio in `input`, or the error of a node that takes nothing else.
pub fn audio_input<'a>(node: &str, input: &'a Packet) -> Result<&'a AudioFrame, NodeError> {
    input
        .data
        .as_audio()
        .ok_or_else(|| NodeError::unsupported(node, &input.data))
}

/// The audio in `input`, which a model node needs mono at `rate`; the error says what to put in
/// front of the node.
pub fn mono_input<'a>(
    node: &str,
    rate: u32,
    input: &'a Packet,
) -> Result<&'a AudioFrame, NodeError> {
    let frame = audio_input(node, input)?;
    if frame.channels == 1 && frame.sample_rate == rate {
        return Ok(frame);
    }
    let (channels, fix) = if frame.channels == 1 {
        ("1 channel".to_string(), "resample first")
    } else {
        (
            format!("{} channels", frame.channels),
            "downmix and resample first",
        )
    };
    Err(NodeError::fatal(format!(
        "{node} expects mono {rate} Hz audio, got {channels} at {} Hz; {fix}",
        frame.sample_rate
    )))
}

/// The mean of each frame's channels, for analysis that wants one signal.
pub fn downmix(samples: &[f32], channels: usize) -> impl Iterator<Item = f32> + '_ {
    let scale = 1.0 / channels.max(1) as f32;
    samples
        .chunks_exact(channels.max(1))
        .map(move |f| f.iter().sum::<f32>() * scale)
}

/// Playing time of `frames` sample frames at `rate`, in integer arithmetic so that a timestamp
/// counted from a stream's start is exact.
pub fn frames_to_duration(frames: u64, rate: u32) -> Duration {
    let nanos = u128::from(frames) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Media time of a stream's sample frames, counted from its first frame: outputs are stamped
/// from how many frames came before them, never from summed durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Media time of frame 0.
    pub origin: Duration,
    /// Frames per second.
    pub rate: u32,
}

impl Clock {
    /// A clock whose frame 0 lies at `origin`.
    pub fn new(origin: Duration, rate: u32) -> Self {
        Self { origin, rate }
    }

    /// Start time of the frame `frames` frames after the origin.
    pub fn time(&self, frames: u64) -> Duration {
        self.origin + frames_to_duration(frames, self.rate)
    }

    /// The frame nearest to media time `t` (0 before the origin).
    pub fn frames_at(&self, t: Duration) -> u64 {
        (t.saturating_sub(self.origin).as_secs_f64() * f64::from(self.rate)).round() as u64
    }
}

/// A stream's format and start, fixed by its first frame: a node that buffers audio cannot mix
/// rates or channel counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    /// The stream's rate, and the timestamp of its first frame.
    pub clock: Clock,
    pub channels: u16,
}

impl StreamFormat {
    /// The audio in `input`, joined to `stream`: the first frame sets the format and the start
    /// time; a later frame in another format is an error.
    pub fn accept<'a>(
        node: &str,
        stream: &mut Option<Self>,
        input: &'a Packet,
    ) -> Result<&'a AudioFrame, NodeError> {
        let frame = audio_input(node, input)?;
        match *stream {
            Some(s) if (s.clock.rate, s.channels) != (frame.sample_rate, frame.channels) => {
                Err(NodeError::fatal(format!(
                    "{node}: audio format changed mid-stream from {} Hz × {} ch to {} Hz × {} ch",
                    s.clock.rate, s.channels, frame.sample_rate, frame.channels
                )))
            }
            Some(_) => Ok(frame),
            None if frame.sample_rate == 0 => Err(fatal(node, "audio with a sample rate of 0")),
            None => {
                *stream = Some(Self {
                    clock: Clock::new(input.timestamp, frame.sample_rate),
                    channels: frame.channels,
                });
                Ok(frame)
            }
        }
    }
}

/// Checks a node's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use remotemedia_core::RuntimeData;
    use remotemedia_core::testing::NodeHarness;

    /// The error a node gives for silence at `second` (rate, channels) after silence at `first`.
    pub(crate) async fn format_change_error(
        h: &mut NodeHarness,
        first: (u32, u16),
        second: (u32, u16),
    ) -> String {
        let silence =
            |(rate, ch): (u32, u16)| RuntimeData::audio(vec![0.0; 160 * usize::from(ch)], rate, ch);
        if let Err(e) = h.push(silence(first)).await {
            panic!("the first format was refused: {e}");
        }
        match h.push(silence(second)).await {
            Ok(_) => panic!("the second format was accepted"),
            Err(e) => e.message,
        }
    }

    /// Whether the node's first output for `frame` reads the same memory (passed on, not
    /// copied).
    pub(crate) async fn passes_without_a_copy(h: &mut NodeHarness, frame: RuntimeData) -> bool {
        let out = h
            .push(frame.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match (
            out.first().and_then(RuntimeData::as_audio),
            frame.as_audio(),
        ) {
            (Some(passed), Some(sent)) => passed.shares_samples_with(sent),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_exact_sample_counts() {
        assert_eq!(frames_to_duration(44_100, 44_100), Duration::from_secs(1));
        assert_eq!(frames_to_duration(441, 44_100), Duration::from_millis(10));
        assert_eq!(frames_to_duration(1, 3), Duration::from_nanos(333_333_333));
        let clock = Clock::new(Duration::from_secs(2), 16_000);
        assert_eq!(clock.time(8_000), Duration::from_millis(2_500));
        assert_eq!(clock.frames_at(Duration::from_millis(2_500)), 8_000);
        assert_eq!(clock.frames_at(Duration::from_secs(1)), 0);
    }

    #[test]
    fn downmix_averages_the_channels() {
        let mono: Vec<f32> = downmix(&[0.2, 0.4, -1.0, 1.0], 2).collect();
        assert!((mono[0] - 0.3).abs() < 1e-7 && mono[1] == 0.0);
    }
}
