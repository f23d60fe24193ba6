//! Audio input: files in any format this build decodes, and raw PCM from any reader, cut into
//! frames of a chosen length *as they are decoded*, so a long file or a live pipe starts flowing
//! at once instead of after a full read.
//!
//! Every frame is interleaved f32 with its media timestamp, counted in samples from the start of
//! the stream (never from container timestamps), so frames are contiguous and never drift.
//! Integer sources are scaled into [-1, 1]; float sources pass through unchanged.
//!
//! Bad input is an error that names the input and the problem, never a panic: unsupported or
//! corrupt files, zero-length audio, sample rates outside [`MAX_SAMPLE_RATE`], channel counts
//! outside [`MAX_CHANNELS`], and a format that changes mid-stream.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use remotemedia_core::AudioFrame;

use crate::frame::frames_to_duration;
use crate::pcm::SampleFormat;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

pub use crate::frame::{MAX_CHANNELS, MAX_SAMPLE_RATE};

/// Longest frame accepted (ms): ten seconds is already far from real time, and at the highest
/// rate and channel count one frame is then about a gigabyte.
pub const MAX_FRAME_MS: u32 = 10_000;

/// Most bytes read from a raw PCM source per call, so a long frame does not need one huge
/// read buffer.
const PCM_READ_CHUNK: usize = 64 * 1024;

/// What file formats this build reads, for error messages and help text.
pub const SUPPORTED_FORMATS: &str = "WAV (PCM or float), FLAC, MP3, Ogg Vorbis";

/// Decode errors stop the stream after this many packets in a row fail: a few bad packets in a
/// long file are skipped with a warning, a file that is garbage throughout is an error.
const MAX_CONSECUTIVE_BAD_PACKETS: u32 = 8;

/// Why audio input could not be read. Every message names the input (`name`), so a user with
/// several files knows which one is bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not a supported audio format ({detail}); supported: {SUPPORTED_FORMATS}")]
    UnsupportedFormat { name: String, detail: String },
    #[error(
        "{name}: the {container} file uses a codec this build cannot decode ({codec}); supported: {SUPPORTED_FORMATS}"
    )]
    UnsupportedCodec {
        name: String,
        container: String,
        codec: String,
    },
    #[error("{name}: corrupt audio data: {detail}")]
    Corrupt { name: String, detail: String },
    #[error("{name}: no audio track found")]
    NoAudioTrack { name: String },
    #[error("{name}: zero-length audio (the input holds no samples)")]
    Empty { name: String },
    #[error("{name}: sample rate {rate} Hz is outside the supported 1..={MAX_SAMPLE_RATE} Hz")]
    SampleRate { name: String, rate: u64 },
    #[error("{name}: {channels} channels is outside the supported 1..={MAX_CHANNELS}")]
    Channels { name: String, channels: u64 },
    #[error(
        "{name}: audio format changed mid-stream at {at:.3?}: {found_rate} Hz × {found_channels} ch after {rate} Hz × {channels} ch"
    )]
    FormatChanged {
        name: String,
        at: Duration,
        rate: u32,
        channels: u16,
        found_rate: u32,
        found_channels: u16,
    },
    #[error(
        "{name}: input ends inside a sample frame ({bytes} stray bytes): check the sample format and channel count"
    )]
    PartialFrame { name: String, bytes: usize },
    #[error("{name}: sample {index} is not a finite number: is the input really {}?", format.name())]
    NonFinite {
        name: String,
        index: u64,
        format: SampleFormat,
    },
    #[error("frame length {0} ms is outside 1..={MAX_FRAME_MS} ms")]
    FrameLength(u32),
}

/// One frame of audio and where it starts in the stream.
pub type TimedFrame = (Duration, AudioFrame);

/// What is known about a stream before it is read, e.g. for a progress bar.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioInfo {
    pub sample_rate: u32,
    pub channels: u16,
    /// Total playing time, when the container states it (never for raw PCM).
    pub duration: Option<Duration>,
    /// Short format name (`wav`, `flac`, `mp3`, `ogg`, `pcm`), for logs.
    pub format: String,
}

/// Checks the sample rate against [`MAX_SAMPLE_RATE`].
pub fn check_sample_rate(name: &str, rate: u64) -> Result<u32, DecodeError> {
    match u32::try_from(rate) {
        Ok(r) if (1..=MAX_SAMPLE_RATE).contains(&r) => Ok(r),
        _ => Err(DecodeError::SampleRate {
            name: name.to_string(),
            rate,
        }),
    }
}

/// Checks the channel count against [`MAX_CHANNELS`].
pub fn check_channels(name: &str, channels: u64) -> Result<u16, DecodeError> {
    match u16::try_from(channels) {
        Ok(c) if (1..=MAX_CHANNELS).contains(&c) => Ok(c),
        _ => Err(DecodeError::Channels {
            name: name.to_string(),
            channels,
        }),
    }
}

fn check_frame_ms(frame_ms: u32) -> Result<u32, DecodeError> {
    if (1..=MAX_FRAME_MS).contains(&frame_ms) {
        Ok(frame_ms)
    } else {
        Err(DecodeError::FrameLength(frame_ms))
    }
}

/// Regroups samples arriving in whatever packet sizes the codec uses into frames of a fixed
/// length, stamping each with its start time.
struct Framer {
    rate: u32,
    channels: u16,
    /// Interleaved samples per full frame.
    frame_len: usize,
    pending: Vec<f32>,
    /// Sample frames (per channel) emitted so far.
    emitted: u64,
}

impl Framer {
    fn new(rate: u32, channels: u16, frame_ms: u32) -> Self {
        let per_channel = (u64::from(rate) * u64::from(frame_ms) / 1000).max(1);
        let frame_len = usize::try_from(per_channel)
            .unwrap_or(usize::MAX)
            .saturating_mul(usize::from(channels));
        Self {
            rate,
            channels,
            frame_len,
            pending: Vec::with_capacity(frame_len.min(1 << 16)),
            emitted: 0,
        }
    }

    fn take(&mut self, len: usize) -> TimedFrame {
        let rest = self.pending.split_off(len);
        let samples = std::mem::replace(&mut self.pending, rest);
        let ts = frames_to_duration(self.emitted, self.rate);
        self.emitted += (samples.len() / usize::from(self.channels)) as u64;
        (ts, AudioFrame::new(samples, self.rate, self.channels))
    }

    /// A full frame, when enough samples are buffered.
    fn full(&mut self) -> Option<TimedFrame> {
        (self.pending.len() >= self.frame_len).then(|| self.take(self.frame_len))
    }

    /// Whatever is left at end of stream (shorter than a frame), if anything.
    fn rest(&mut self) -> Option<TimedFrame> {
        (!self.pending.is_empty()).then(|| self.take(self.pending.len()))
    }

    /// Playing time of everything pushed so far.
    fn position(&self) -> Duration {
        let buffered = (self.pending.len() / usize::from(self.channels)) as u64;
        frames_to_duration(self.emitted + buffered, self.rate)
    }

    fn is_untouched(&self) -> bool {
        self.emitted == 0 && self.pending.is_empty()
    }
}

/// Reads an audio file packet by packet, yielding frames of `frame_ms` as they decode. The
/// format is found by probing the content (the extension is only a hint), so a mislabelled file
/// still plays and a non-audio file is refused clearly.
///
/// [`FileDecoder::open`] reads the headers and decodes up to the first samples, so every
/// problem that can be found up front (format, codec, rate, channels, zero length) is reported
/// there, before a session starts.
pub struct FileDecoder {
    name: String,
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: AudioInfo,
    frame_ms: u32,
    framer: Option<Framer>,
    scratch: Vec<f32>,
    bad_packets: u32,
    truncated: bool,
    ended: bool,
    failed: bool,
}

impl std::fmt::Debug for FileDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDecoder")
            .field("name", &self.name)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl FileDecoder {
    /// Opens `path`, probes its format and decodes up to the first samples.
    pub fn open(path: &Path, frame_ms: u32) -> Result<Self, DecodeError> {
        let name = path.display().to_string();
        let frame_ms = check_frame_ms(frame_ms)?;
        let io = |source| DecodeError::Io {
            name: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(DecodeError::Empty { name });
        }
        let ext = path.extension().and_then(|e| e.to_str());
        Self::from_source(name, Box::new(file), ext, frame_ms)
    }

    /// Like [`FileDecoder::open`], for a file's bytes already in memory (`name` names them in
    /// errors).
    pub fn from_bytes(name: &str, bytes: Vec<u8>, frame_ms: u32) -> Result<Self, DecodeError> {
        let frame_ms = check_frame_ms(frame_ms)?;
        if bytes.is_empty() {
            return Err(DecodeError::Empty { name: name.into() });
        }
        let source = Box::new(std::io::Cursor::new(bytes));
        Self::from_source(name.to_string(), source, None, frame_ms)
    }

    fn from_source(
        name: String,
        source: Box<dyn symphonia::core::io::MediaSource>,
        extension: Option<&str>,
        frame_ms: u32,
    ) -> Result<Self, DecodeError> {
        let mut hint = Hint::new();
        if let Some(ext) = extension {
            hint.with_extension(ext);
        }
        let mss = MediaSourceStream::new(source, Default::default());
        let probed = guard(|| {
            symphonia::default::get_probe().probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        });
        let reader = match probed {
            Ok(r) => r,
            Err(SymError::Unsupported(detail)) => {
                return Err(DecodeError::UnsupportedFormat {
                    name,
                    detail: plain(detail),
                });
            }
            Err(e) => return Err(classify(&name, e)),
        };
        let (track_id, decoder, info) = select_track(&name, reader.as_ref())?;
        let mut this = Self {
            name,
            reader,
            decoder,
            track_id,
            info,
            frame_ms,
            framer: None,
            scratch: Vec::new(),
            bad_packets: 0,
            truncated: false,
            ended: false,
            failed: false,
        };
        // Decode until the first samples: the real rate and channel count come from the
        // decoder, and a file without any audio is refused here rather than mid-session.
        while this.framer.as_ref().is_none_or(Framer::is_untouched) {
            if !this.fill()? {
                // A header that promises audio, then none: broken, not empty.
                let promised = this.info.duration.is_some_and(|d| !d.is_zero());
                return Err(if this.bad_packets > 0 || this.truncated || promised {
                    DecodeError::Corrupt {
                        name: this.name,
                        detail: "no audio could be decoded from it".into(),
                    }
                } else {
                    DecodeError::Empty { name: this.name }
                });
            }
        }
        Ok(this)
    }

    /// Rate, channels and (when stated) duration: known once [`FileDecoder::open`] returns.
    pub fn info(&self) -> &AudioInfo {
        &self.info
    }

    /// A file that stops well short of the length its header states was most likely cut off;
    /// what did decode is still worth using, so this warns rather than fails.
    fn warn_if_short(&self) {
        let (Some(stated), Some(f)) = (self.info.duration, self.framer.as_ref()) else {
            return;
        };
        let got = f.position();
        if got + (stated / 20).max(Duration::from_millis(50)) < stated {
            tracing::warn!(
                input = %self.name,
                decoded = ?got,
                stated = ?stated,
                "audio file is shorter than its header states (truncated?)"
            );
        }
    }

    /// Reads and decodes one packet into the framer. `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, DecodeError> {
        let reader = &mut self.reader;
        let packet = match guard(|| reader.next_packet()) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(false),
            Err(SymError::ResetRequired) => {
                // A chained stream (e.g. concatenated Ogg files): new track list, new decoder.
                let (track_id, decoder, _) = select_track(&self.name, self.reader.as_ref())?;
                self.track_id = track_id;
                self.decoder = decoder;
                return Ok(true);
            }
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                // A cut-off file: keep what decoded, say so, and end there.
                tracing::warn!(input = %self.name, "audio file ends abruptly (truncated?)");
                self.truncated = true;
                return Ok(false);
            }
            Err(e) => return Err(classify(&self.name, e)),
        };
        if packet.track_id != self.track_id {
            return Ok(true);
        }
        let decoder = &mut self.decoder;
        let decoded = guard(|| decoder.decode(&packet));
        let buf = match decoded {
            Ok(buf) => buf,
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
                self.bad_packets += 1;
                tracing::warn!(input = %self.name, error = %e, "skipping an undecodable packet");
                if self.bad_packets >= MAX_CONSECUTIVE_BAD_PACKETS {
                    return Err(DecodeError::Corrupt {
                        name: self.name.clone(),
                        detail: format!(
                            "{} packets in a row failed to decode: {e}",
                            self.bad_packets
                        ),
                    });
                }
                return Ok(true);
            }
            Err(e) => return Err(classify(&self.name, e)),
        };
        self.bad_packets = 0;
        if buf.frames() == 0 {
            return Ok(true);
        }
        let rate = u64::from(buf.spec().rate());
        let channels = buf.spec().channels().count() as u64;
        match self.framer.as_mut() {
            None => {
                let rate = check_sample_rate(&self.name, rate)?;
                let channels = check_channels(&self.name, channels)?;
                self.info.sample_rate = rate;
                self.info.channels = channels;
                self.framer = Some(Framer::new(rate, channels, self.frame_ms));
            }
            Some(f) if (u64::from(f.rate), u64::from(f.channels)) != (rate, channels) => {
                return Err(DecodeError::FormatChanged {
                    name: self.name.clone(),
                    at: f.position(),
                    rate: f.rate,
                    channels: f.channels,
                    found_rate: u32::try_from(rate).unwrap_or(u32::MAX),
                    found_channels: u16::try_from(channels).unwrap_or(u16::MAX),
                });
            }
            Some(_) => {}
        }
        buf.copy_to_vec_interleaved(&mut self.scratch);
        if let Some(f) = self.framer.as_mut() {
            f.pending.extend_from_slice(&self.scratch);
        }
        Ok(true)
    }
}

impl Iterator for FileDecoder {
    type Item = Result<TimedFrame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(frame) = self.framer.as_mut().and_then(Framer::full) {
                return Some(Ok(frame));
            }
            if self.ended {
                return self.framer.as_mut().and_then(Framer::rest).map(Ok);
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    self.ended = true;
                    self.warn_if_short();
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Picks the default audio track and makes its decoder, refusing absurd stated parameters
/// before the decoder sees them.
fn select_track(
    name: &str,
    reader: &dyn FormatReader,
) -> Result<(u32, Box<dyn AudioDecoder>, AudioInfo), DecodeError> {
    let container = reader.format_info().short_name.to_string();
    let Some(track) = reader.default_track(TrackType::Audio) else {
        // An audio track whose codec is unknown is an unsupported codec, not a missing track.
        if let Some(t) = reader.first_track(TrackType::Audio) {
            return Err(DecodeError::UnsupportedCodec {
                name: name.to_string(),
                container,
                codec: codec_name(t),
            });
        }
        return Err(DecodeError::NoAudioTrack {
            name: name.to_string(),
        });
    };
    let Some(CodecParameters::Audio(params)) = &track.codec_params else {
        return Err(DecodeError::NoAudioTrack {
            name: name.to_string(),
        });
    };
    if let Some(rate) = params.sample_rate {
        check_sample_rate(name, u64::from(rate))?;
    }
    if let Some(ch) = &params.channels {
        check_channels(name, ch.count() as u64)?;
    }
    let opts = AudioDecoderOptions::default();
    let decoder = match guard(|| symphonia::default::get_codecs().make_audio_decoder(params, &opts))
    {
        Ok(d) => d,
        Err(SymError::Unsupported(_)) => {
            return Err(DecodeError::UnsupportedCodec {
                name: name.to_string(),
                container,
                codec: codec_name(track),
            });
        }
        Err(e) => return Err(classify(name, e)),
    };
    let sample_rate = params.sample_rate.unwrap_or(0);
    let info = AudioInfo {
        sample_rate,
        channels: params
            .channels
            .as_ref()
            .map_or(0, |c| u16::try_from(c.count()).unwrap_or(0)),
        duration: track_duration(track, sample_rate),
        format: container,
    };
    Ok((track.id, decoder, info))
}

fn track_duration(track: &Track, rate: u32) -> Option<Duration> {
    if let (Some(n), true) = (track.num_frames, rate > 0) {
        return Some(frames_to_duration(n, rate));
    }
    let time = track.time_base?.calc_duration(track.duration?)?;
    let (secs, nanos) = time.parts();
    Some(Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// A codec's FourCC when it has one (e.g. `Opus`), else its numeric id.
fn codec_name(track: &Track) -> String {
    let id = match &track.codec_params {
        Some(CodecParameters::Audio(p)) => p.codec,
        _ => return "unknown codec".into(),
    };
    let text = id.to_string();
    let raw = u32::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or(0);
    let cc = (raw & 0x7fff_ffff).to_be_bytes();
    if raw & 0x8000_0000 != 0 && cc.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(&cc).into_owned()
    } else {
        format!("codec id {text}")
    }
}

/// Turns a decoding library error into ours, naming the input.
fn classify(name: &str, e: SymError) -> DecodeError {
    let name = name.to_string();
    match e {
        // Inside a file, running out of bytes means a cut-off or mangled file, not an I/O fault.
        SymError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => DecodeError::Corrupt {
            name,
            detail: "the file ends unexpectedly (truncated or not what its header says)".into(),
        },
        SymError::IoError(source) => DecodeError::Io { name, source },
        SymError::Unsupported(detail) => DecodeError::UnsupportedFormat {
            name,
            detail: plain(detail),
        },
        SymError::DecodeError(detail) => DecodeError::Corrupt {
            name,
            detail: plain(detail),
        },
        SymError::LimitError(detail) => DecodeError::Corrupt {
            name,
            detail: format!("exceeds a safety limit: {}", plain(detail)),
        },
        other => DecodeError::Corrupt {
            name,
            detail: other.to_string(),
        },
    }
}

/// The library prefixes messages with its module (`riff: `, `core (probe): `); users need the
/// rest.
fn plain(detail: &str) -> String {
    match detail.split_once(": ") {
        Some((module, rest))
            if module.len() <= 24
                && module
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || " ()".contains(c)) =>
        {
            rest.to_string()
        }
        _ => detail.to_string(),
    }
}

/// Runs a decoding library call, turning a panic on malformed data into a corrupt-data error.
/// Third-party decoders have panicked on fuzzed input before; untrusted files must not take the
/// process down.
fn guard<T>(f: impl FnOnce() -> Result<T, SymError>) -> Result<T, SymError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(SymError::DecodeError(
        "decoder failed on malformed data",
    )))
}

/// Reads headerless PCM from any reader (stdin, a pipe, a socket) into frames. Raw PCM carries
/// no format, so the caller states it; each frame is yielded as soon as its bytes arrive, which
/// is what live capture piped in (`arecord`, `ffmpeg -f s16le -`) needs.
pub struct PcmReader<R> {
    name: String,
    source: R,
    format: SampleFormat,
    framer: Framer,
    bytes: Vec<u8>,
    /// Samples decoded so far, for error messages.
    samples: u64,
    ended: bool,
    failed: bool,
}

impl<R> std::fmt::Debug for PcmReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmReader")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("sample_rate", &self.framer.rate)
            .field("channels", &self.framer.channels)
            .finish_non_exhaustive()
    }
}

impl<R: Read> PcmReader<R> {
    /// Validates the stated format; `name` is how errors refer to the input (e.g. `stdin`).
    pub fn new(
        source: R,
        name: &str,
        format: SampleFormat,
        sample_rate: u32,
        channels: u16,
        frame_ms: u32,
    ) -> Result<Self, DecodeError> {
        let rate = check_sample_rate(name, u64::from(sample_rate))?;
        let channels = check_channels(name, u64::from(channels))?;
        let frame_ms = check_frame_ms(frame_ms)?;
        Ok(Self {
            name: name.to_string(),
            source,
            format,
            framer: Framer::new(rate, channels, frame_ms),
            bytes: Vec::new(),
            samples: 0,
            ended: false,
            failed: false,
        })
    }

    /// The stated format; raw PCM has no known duration.
    pub fn info(&self) -> AudioInfo {
        AudioInfo {
            sample_rate: self.framer.rate,
            channels: self.framer.channels,
            duration: None,
            format: "pcm".into(),
        }
    }

    /// Reads once (blocking until some bytes arrive or the input ends) and decodes every whole
    /// sample frame received; a sample split across reads waits for the rest.
    fn fill(&mut self) -> Result<(), DecodeError> {
        let width = self.format.bytes();
        let want = (self.framer.frame_len * width).clamp(width, PCM_READ_CHUNK);
        let have = self.bytes.len();
        self.bytes.resize(have + want, 0);
        let got = loop {
            match self.source.read(&mut self.bytes[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    self.bytes.truncate(have);
                    return Err(DecodeError::Io {
                        name: self.name.clone(),
                        source,
                    });
                }
            }
        };
        self.bytes.truncate(have + got);
        if got == 0 {
            self.ended = true;
        }
        let block = width * usize::from(self.framer.channels);
        let whole = self.bytes.len() / block * block;
        for b in self.bytes[..whole].chunks_exact(width) {
            let v = self.format.read(b);
            if !v.is_finite() {
                return Err(DecodeError::NonFinite {
                    name: self.name.clone(),
                    index: self.samples,
                    format: self.format,
                });
            }
            self.framer.pending.push(v);
            self.samples += 1;
        }
        self.bytes.drain(..whole);
        Ok(())
    }
}

impl<R: Read> Iterator for PcmReader<R> {
    type Item = Result<TimedFrame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(frame) = self.framer.full() {
                return Some(Ok(frame));
            }
            if self.ended {
                if let Some(frame) = self.framer.rest() {
                    return Some(Ok(frame));
                }
                // End of input: report what was wrong with it, once.
                self.failed = true;
                if !self.bytes.is_empty() {
                    return Some(Err(DecodeError::PartialFrame {
                        name: self.name.clone(),
                        bytes: self.bytes.len(),
                    }));
                }
                if self.samples == 0 {
                    return Some(Err(DecodeError::Empty {
                        name: self.name.clone(),
                    }));
                }
                return None;
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

/// A whole decoded stream, for tests and tools that want all samples at once.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// Interleaved samples.
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: u16,
}

impl Decoded {
    /// Splits into frames of `frame_ms` (the last one may be shorter), each with its media
    /// timestamp.
    pub fn frames(&self, frame_ms: u32) -> Vec<TimedFrame> {
        let mut framer = Framer::new(
            self.sample_rate.max(1),
            self.channels.max(1),
            frame_ms.max(1),
        );
        framer.pending = self.samples.clone();
        let mut out: Vec<TimedFrame> = std::iter::from_fn(|| framer.full()).collect();
        out.extend(framer.rest());
        out
    }

    pub fn duration(&self) -> Duration {
        let frames = self.samples.len() / usize::from(self.channels.max(1));
        frames_to_duration(frames as u64, self.sample_rate.max(1))
    }

    /// One channel's samples, e.g. to check a stereo file's left side.
    pub fn channel(&self, index: usize) -> Vec<f32> {
        let ch = usize::from(self.channels.max(1));
        self.samples
            .iter()
            .skip(index)
            .step_by(ch)
            .copied()
            .collect()
    }
}

/// Decodes a whole file. Streaming callers use [`FileDecoder`] instead.
pub fn read_all(path: &Path) -> Result<Decoded, DecodeError> {
    collect(FileDecoder::open(path, 1000)?)
}

/// Gathers every frame of a stream.
pub fn collect(
    frames: impl Iterator<Item = Result<TimedFrame, DecodeError>>,
) -> Result<Decoded, DecodeError> {
    let mut out = Decoded {
        samples: Vec::new(),
        sample_rate: 0,
        channels: 0,
    };
    for item in frames {
        let (_, f) = item?;
        out.sample_rate = f.sample_rate;
        out.channels = f.channels;
        out.samples.extend_from_slice(f.samples());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_regroups_uneven_packets() {
        let mut f = Framer::new(1000, 2, 10); // 10 frames × 2 ch per output frame
        f.pending.extend(std::iter::repeat_n(0.5, 25 * 2));
        let a = f.full().unwrap();
        let b = f.full().unwrap();
        assert!(f.full().is_none());
        let c = f.rest().unwrap();
        assert_eq!(
            (a.0, b.0, c.0),
            (
                Duration::ZERO,
                Duration::from_millis(10),
                Duration::from_millis(20)
            )
        );
        assert_eq!((a.1.frames(), c.1.frames()), (10, 5));
        assert!(f.rest().is_none());
    }

    #[test]
    fn library_module_prefixes_are_dropped() {
        assert_eq!(
            plain("riff: invalid channel count"),
            "invalid channel count"
        );
        assert_eq!(
            plain("core (probe): no suitable format reader found"),
            "no suitable format reader found"
        );
        assert_eq!(plain("Bad Thing: keep it"), "Bad Thing: keep it");
    }
}
