//! The values that flow between nodes.
//!
//! Payloads are reference-counted so that fan-out to several nodes, and later hand-off to
//! transports, never copies samples or text: cloning a [`RuntimeData`] is a few atomic increments.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind of a [`RuntimeData`], used by node types to declare what their ports take and give,
/// so that incompatible connections are rejected before a session starts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    Audio,
    Text,
    Json,
    Binary,
    Image,
    Control,
}

impl MediaType {
    /// Every media type, for ports that accept anything.
    pub const ALL: &'static [MediaType] = &[
        MediaType::Audio,
        MediaType::Text,
        MediaType::Json,
        MediaType::Binary,
        MediaType::Image,
        MediaType::Control,
    ];
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MediaType::Audio => "audio",
            MediaType::Text => "text",
            MediaType::Json => "json",
            MediaType::Binary => "binary",
            MediaType::Image => "image",
            MediaType::Control => "control",
        };
        f.write_str(s)
    }
}

impl std::str::FromStr for MediaType {
    type Err = String;

    /// The names [`MediaType`]'s `Display` writes.
    fn from_str(s: &str) -> Result<Self, String> {
        MediaType::ALL
            .iter()
            .find(|m| m.to_string() == s)
            .copied()
            .ok_or_else(|| format!("unknown media type `{s}`"))
    }
}

/// The sample memory of an [`AudioFrame`]: reference-counted, so clones share it. Either the
/// runtime owns it, or it is lent by a foreign owner (a numpy array, a shared-memory sample)
/// that stays alive, unchanged, for as long as any frame uses it: no copy either way.
#[derive(Clone)]
pub struct Samples(SamplesInner);

#[derive(Clone)]
enum SamplesInner {
    Owned(Arc<[f32]>),
    Foreign(Arc<dyn ForeignSamples>),
}

/// Memory someone else owns, lent to the runtime without a copy. `samples` must return the same
/// slice, with the same contents, for the owner's whole life.
pub trait ForeignSamples: Send + Sync + 'static {
    fn samples(&self) -> &[f32];
}

impl Samples {
    /// Lends a foreign owner's memory.
    pub fn foreign(owner: Arc<dyn ForeignSamples>) -> Self {
        Samples(SamplesInner::Foreign(owner))
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.0 {
            SamplesInner::Owned(a) => a,
            SamplesInner::Foreign(f) => f.samples(),
        }
    }

    /// True when both read the same memory.
    pub fn ptr_eq(&self, other: &Samples) -> bool {
        std::ptr::eq(self.as_slice(), other.as_slice())
    }
}

impl std::ops::Deref for Samples {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl PartialEq for Samples {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl From<Arc<[f32]>> for Samples {
    fn from(a: Arc<[f32]>) -> Self {
        Samples(SamplesInner::Owned(a))
    }
}

impl From<Vec<f32>> for Samples {
    fn from(v: Vec<f32>) -> Self {
        Samples(SamplesInner::Owned(v.into()))
    }
}

impl From<Box<[f32]>> for Samples {
    fn from(v: Box<[f32]>) -> Self {
        Samples(SamplesInner::Owned(v.into()))
    }
}

impl From<&[f32]> for Samples {
    fn from(v: &[f32]) -> Self {
        Samples(SamplesInner::Owned(v.into()))
    }
}

/// Interleaved f32 PCM. The sample buffer is shared: clones point at the same memory, which is
/// what makes fan-out free and lets tests prove it with [`AudioFrame::shares_samples_with`].
#[derive(Clone, PartialEq)]
pub struct AudioFrame {
    samples: Samples,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of interleaved channels (at least 1).
    pub channels: u16,
}

impl AudioFrame {
    /// Wraps interleaved samples. `channels` of 0 is treated as mono.
    pub fn new(samples: impl Into<Samples>, sample_rate: u32, channels: u16) -> Self {
        Self {
            samples: samples.into(),
            sample_rate,
            channels: channels.max(1),
        }
    }

    /// Interleaved samples.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }

    /// The shared buffer itself, for zero-copy hand-off.
    pub fn shared_samples(&self) -> &Samples {
        &self.samples
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels)
    }

    /// Playing time of the frame.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.frames() as f64 / f64::from(self.sample_rate))
    }

    /// True when both frames read the same memory (no copy was made between them).
    pub fn shares_samples_with(&self, other: &AudioFrame) -> bool {
        self.samples.ptr_eq(&other.samples)
    }
}

impl fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioFrame")
            .field("samples", &self.samples.len())
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .finish()
    }
}

/// Text with optional timing, as produced by speech recognition or fed by a client.
#[derive(Clone, Debug, PartialEq)]
pub struct TextFrame {
    pub text: Arc<str>,
    /// False for interim hypotheses that a later frame will replace.
    pub is_final: bool,
    /// Where the text lies in the media stream (start, end), when known.
    pub span: Option<(Duration, Duration)>,
}

impl TextFrame {
    /// Final text with no timing.
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self {
            text: text.into(),
            is_final: true,
            span: None,
        }
    }
}

/// A raw image; pixel layout is named by `format` (e.g. "rgb8", "jpeg").
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFrame {
    pub width: u32,
    pub height: u32,
    pub format: Arc<str>,
    pub data: Bytes,
}

/// In-band signals. End of stream itself is the closing of a channel, so it cannot be lost or
/// overtaken; these are the signals that travel with the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Emit whatever is buffered now (the router calls [`crate::Node::flush`]), then pass on.
    Flush,
    /// Abandon work in progress (barge-in): it overtakes the data queued between nodes, which
    /// is dropped; nodes drop buffered state, then pass it on (see [`crate::Node::control`]).
    Cancel { reason: Arc<str> },
    /// The client ended its input; surfaced on transports that cannot close a stream half-way.
    EndOfStream,
}

/// One unit of data between nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeData {
    Audio(AudioFrame),
    Text(TextFrame),
    Json(Arc<serde_json::Value>),
    Binary(Bytes),
    Image(ImageFrame),
    Control(Control),
}

impl RuntimeData {
    /// Final text without timing.
    pub fn text(s: impl Into<Arc<str>>) -> Self {
        RuntimeData::Text(TextFrame::new(s))
    }

    /// Mono or interleaved audio.
    pub fn audio(samples: impl Into<Samples>, sample_rate: u32, channels: u16) -> Self {
        RuntimeData::Audio(AudioFrame::new(samples, sample_rate, channels))
    }

    /// A JSON value.
    pub fn json(v: serde_json::Value) -> Self {
        RuntimeData::Json(Arc::new(v))
    }

    pub fn media_type(&self) -> MediaType {
        match self {
            RuntimeData::Audio(_) => MediaType::Audio,
            RuntimeData::Text(_) => MediaType::Text,
            RuntimeData::Json(_) => MediaType::Json,
            RuntimeData::Binary(_) => MediaType::Binary,
            RuntimeData::Image(_) => MediaType::Image,
            RuntimeData::Control(_) => MediaType::Control,
        }
    }

    pub fn as_audio(&self) -> Option<&AudioFrame> {
        match self {
            RuntimeData::Audio(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&TextFrame> {
        match self {
            RuntimeData::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Data plus where it came from and when, so sinks can order, attribute and time it.
#[derive(Clone, Debug)]
pub struct Packet {
    pub data: RuntimeData,
    /// Session this packet belongs to.
    pub session: Arc<str>,
    /// Node and port that emitted it; the session input is named `input`.
    pub source: Arc<str>,
    pub port: Arc<str>,
    /// Per-(source, port) sequence number, starting at 0.
    pub seq: u64,
    /// Position in the media stream (e.g. start of an audio frame since stream start).
    pub timestamp: Duration,
    /// When the data entered the process, carried through nodes for end-to-end latency.
    pub captured: Instant,
}

impl Packet {
    /// Time since the data this packet derives from entered the process.
    pub fn age(&self) -> Duration {
        self.captured.elapsed()
    }
}
