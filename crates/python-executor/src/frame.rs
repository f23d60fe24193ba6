//! The binary frame that crosses shared memory between the runtime and a Python worker.
//!
//! Seed 004 §6 (type tag, session, timestamp, payload), extended to every [`RuntimeData`] kind
//! and to the messages a worker needs (done, error, flush, close). All integers are
//! little-endian. The payload starts on an 8-byte boundary, so Python can view audio samples
//! as a numpy `float32` array in place.
//!
//! ```text
//! 0  magic "RM"      2 version       3 message     4 kind      5 flags     6 port (u16)
//! 8  seq (u64)                       16 timestamp in ns (u64; u64::MAX = none)
//! 24 session length (u16)  26 meta length (u16)   28 payload length (u32)
//! 32 session bytes, meta bytes, zero padding to 8, payload
//! ```
//!
//! Meta per kind: audio `sample_rate u32, channels u16`; text `is_final u8, has_span u8,
//! 6 pad, start_ns u64, end_ns u64`; image `width u32, height u32, format utf-8`; control
//! `code u8` (1 flush, 2 cancel, 3 end of stream) with the cancel reason as payload. JSON and
//! text payloads are UTF-8; an error's payload is its message.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use remotemedia_core::data::Samples;
use remotemedia_core::{AudioFrame, Control, ImageFrame, RuntimeData, TextFrame};

#[cfg(target_endian = "big")]
compile_error!("the frame layout writes samples in native order, which must be little-endian");

pub const MAGIC: [u8; 2] = *b"RM";
/// Bumped on any incompatible change; the worker reports its own in the handshake.
pub const PROTOCOL_VERSION: u8 = 2;
pub const HEADER_LEN: usize = 32;
const NO_TIMESTAMP: u64 = u64::MAX;

/// What a frame asks for or reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Msg {
    /// To the worker: an input. From the worker: an output of input `seq`.
    Data = 1,
    /// From the worker: input (or flush, or control) `seq` is finished.
    Done = 2,
    /// From the worker: input `seq` failed; flags say whether the node may go on.
    Error = 3,
    /// To the worker: call the node's `flush()`.
    Flush = 4,
    /// To the worker: call the node's `control()` with the frame's control data.
    Control = 5,
    /// To the worker: call `close()` and exit. To a shared worker: close that session's node
    /// (a frame with an empty session: exit).
    Close = 6,
    /// To a shared worker: create the node instance of the frame's session (its `setup`).
    Open = 7,
}

impl Msg {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Msg::Data,
            2 => Msg::Done,
            3 => Msg::Error,
            4 => Msg::Flush,
            5 => Msg::Control,
            6 => Msg::Close,
            7 => Msg::Open,
            _ => return None,
        })
    }
}

/// Error flag: the node rejected this one input and goes on.
pub const FLAG_REJECTED: u8 = 1;
/// Request flag (to a shared worker): more frames of this batch follow.
pub const FLAG_MORE: u8 = 2;

/// A decoded frame. `data` is set for `Data` and `Control` frames.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub msg: Msg,
    pub flags: u8,
    pub port: u16,
    pub seq: u64,
    pub timestamp: Option<Duration>,
    pub session: Arc<str>,
    pub data: Option<RuntimeData>,
    /// The message of an `Error` frame.
    pub error: Option<String>,
}

impl Frame {
    /// A frame that carries no data.
    pub fn bare(msg: Msg, seq: u64, session: &Arc<str>) -> Self {
        Self {
            msg,
            flags: 0,
            port: 0,
            seq,
            timestamp: None,
            session: Arc::clone(session),
            data: None,
            error: None,
        }
    }

    /// A frame carrying `data`.
    pub fn data(
        msg: Msg,
        seq: u64,
        port: u16,
        timestamp: Duration,
        session: &Arc<str>,
        data: RuntimeData,
    ) -> Self {
        Self {
            port,
            timestamp: Some(timestamp),
            data: Some(data),
            ..Self::bare(msg, seq, session)
        }
    }
}

/// Why bytes from a worker are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("frame does not start with the magic bytes \"RM\"")]
    Magic,
    #[error("frame has protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("unknown message type {0}")]
    Message(u8),
    #[error("unknown data kind {0}")]
    Kind(u8),
    #[error("frame declares {declared} bytes but has {actual}")]
    Length { declared: usize, actual: usize },
    #[error("{0} metadata is malformed")]
    Meta(&'static str),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("JSON payload does not parse: {0}")]
    Json(String),
    #[error("audio payload of {0} bytes is not whole f32 samples")]
    AudioLength(usize),
}

fn kind_tag(data: &RuntimeData) -> u8 {
    match data {
        RuntimeData::Audio(_) => 1,
        RuntimeData::Text(_) => 2,
        RuntimeData::Json(_) => 3,
        RuntimeData::Binary(_) => 4,
        RuntimeData::Image(_) => 5,
        RuntimeData::Control(_) => 6,
    }
}

/// The per-kind metadata and payload bytes of `data`. JSON is the one kind serialised here;
/// every other payload is borrowed as it is.
enum Body<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Body<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Owned(v) => v,
        }
    }
}

fn meta_and_body(data: &RuntimeData) -> (Vec<u8>, Body<'_>) {
    match data {
        RuntimeData::Audio(a) => {
            let mut meta = a.sample_rate.to_le_bytes().to_vec();
            meta.extend_from_slice(&a.channels.to_le_bytes());
            let s = a.samples();
            // SAFETY: f32 has no padding or invalid bit patterns; the target is little-endian.
            let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() * 4) };
            (meta, Body::Borrowed(bytes))
        }
        RuntimeData::Text(t) => {
            let (has, (start, end)) = match t.span {
                Some(span) => (1u8, span),
                None => (0, (Duration::ZERO, Duration::ZERO)),
            };
            let mut meta = vec![u8::from(t.is_final), has, 0, 0, 0, 0, 0, 0];
            meta.extend_from_slice(&nanos(start).to_le_bytes());
            meta.extend_from_slice(&nanos(end).to_le_bytes());
            (meta, Body::Borrowed(t.text.as_bytes()))
        }
        RuntimeData::Json(v) => (Vec::new(), Body::Owned(v.to_string().into_bytes())),
        RuntimeData::Binary(b) => (Vec::new(), Body::Borrowed(b)),
        RuntimeData::Image(i) => {
            let mut meta = i.width.to_le_bytes().to_vec();
            meta.extend_from_slice(&i.height.to_le_bytes());
            meta.extend_from_slice(i.format.as_bytes());
            (meta, Body::Borrowed(&i.data))
        }
        RuntimeData::Control(c) => match c {
            Control::Flush => (vec![1], Body::Borrowed(&[])),
            Control::Cancel { reason } => (vec![2], Body::Borrowed(reason.as_bytes())),
            Control::EndOfStream => (vec![3], Body::Borrowed(&[])),
        },
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NO_TIMESTAMP - 1)
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A frame laid out and ready to be written into a loaned shared-memory slice.
pub struct Encoded<'a> {
    header: [u8; HEADER_LEN],
    session: &'a [u8],
    meta: Vec<u8>,
    body: Body<'a>,
}

impl<'a> Encoded<'a> {
    pub fn new(frame: &'a Frame) -> Self {
        let (meta, body) = match &frame.data {
            Some(d) => meta_and_body(d),
            None => (
                Vec::new(),
                Body::Borrowed(frame.error.as_deref().unwrap_or("").as_bytes()),
            ),
        };
        let head = Head {
            msg: frame.msg as u8,
            kind: frame.data.as_ref().map_or(0, kind_tag),
            flags: frame.flags,
            port: frame.port,
            seq: frame.seq,
            timestamp: frame.timestamp,
        };
        Self::with(&head, frame.session.as_bytes(), meta, body)
    }

    /// A frame from its parts, for writers that do not hold a [`Frame`] (the Python worker's
    /// side): `kind` is the data kind's tag (0 for none), `body` the payload as it is sent.
    pub fn from_parts(head: &Head, session: &'a [u8], meta: Vec<u8>, body: &'a [u8]) -> Self {
        Self::with(head, session, meta, Body::Borrowed(body))
    }

    fn with(head: &Head, session: &'a [u8], meta: Vec<u8>, body: Body<'a>) -> Self {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = PROTOCOL_VERSION;
        h[3] = head.msg;
        h[4] = head.kind;
        h[5] = head.flags;
        h[6..8].copy_from_slice(&head.port.to_le_bytes());
        h[8..16].copy_from_slice(&head.seq.to_le_bytes());
        h[16..24].copy_from_slice(&head.timestamp.map_or(NO_TIMESTAMP, nanos).to_le_bytes());
        // Session ids and metadata are short by construction (ids are validated, meta is a
        // few fields); clamp rather than panic.
        h[24..26].copy_from_slice(&(session.len().min(u16::MAX.into()) as u16).to_le_bytes());
        h[26..28].copy_from_slice(&(meta.len().min(u16::MAX.into()) as u16).to_le_bytes());
        let body_len = u32::try_from(body.bytes().len()).unwrap_or(u32::MAX);
        h[28..32].copy_from_slice(&body_len.to_le_bytes());
        Self {
            header: h,
            session,
            meta,
            body,
        }
    }

    fn payload_offset(&self) -> usize {
        pad8(HEADER_LEN + self.session.len() + self.meta.len())
    }

    /// Bytes the frame occupies.
    pub fn len(&self) -> usize {
        self.payload_offset() + self.body.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the frame into `dst`, which must be exactly [`Encoded::len`] bytes.
    pub fn write(&self, dst: &mut [MaybeUninit<u8>]) {
        assert_eq!(dst.len(), self.len(), "frame buffer of the wrong size");
        let mut at = 0;
        let mut put = |src: &[u8]| {
            // SAFETY: in bounds (the length is checked above) and the regions cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    dst[at..].as_mut_ptr().cast::<u8>(),
                    src.len(),
                );
            }
            at += src.len();
        };
        put(&self.header);
        put(self.session);
        put(&self.meta);
        let pad = self.payload_offset() - (HEADER_LEN + self.session.len() + self.meta.len());
        put(&[0u8; 8][..pad]);
        put(self.body.bytes());
    }

    /// The frame as one owned buffer (tests and fallbacks).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![MaybeUninit::new(0u8); self.len()];
        self.write(&mut v);
        v.into_iter()
            .map(|b| {
                // SAFETY: every byte was initialised above.
                unsafe { b.assume_init() }
            })
            .collect()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn utf8<'b>(b: &'b [u8], what: &'static str) -> Result<&'b str, FrameError> {
    std::str::from_utf8(b).map_err(|_| FrameError::Utf8(what))
}

/// A frame's fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub msg: u8,
    /// The data kind's tag: 0 none, 1 audio, 2 text, 3 JSON, 4 binary, 5 image, 6 control.
    pub kind: u8,
    pub flags: u8,
    pub port: u16,
    pub seq: u64,
    pub timestamp: Option<Duration>,
}

/// A frame checked and split in place, nothing copied.
pub struct Parts<'b> {
    pub head: Head,
    pub session: &'b str,
    pub meta: &'b [u8],
    pub body: &'b [u8],
}

/// Checks a frame's header and lengths and splits it.
pub fn parse(b: &[u8]) -> Result<Parts<'_>, FrameError> {
    if b.len() < HEADER_LEN {
        return Err(FrameError::Short(b.len()));
    }
    if b[0..2] != MAGIC {
        return Err(FrameError::Magic);
    }
    if b[2] != PROTOCOL_VERSION {
        return Err(FrameError::Version(b[2]));
    }
    Msg::from_u8(b[3]).ok_or(FrameError::Message(b[3]))?;
    let session_len = usize::from(u16_at(b, 24));
    let meta_len = usize::from(u16_at(b, 26));
    let body_len = u32_at(b, 28) as usize;
    let offset = pad8(HEADER_LEN + session_len + meta_len);
    if b.len() != offset + body_len {
        return Err(FrameError::Length {
            declared: offset + body_len,
            actual: b.len(),
        });
    }
    let ts = u64_at(b, 16);
    Ok(Parts {
        head: Head {
            msg: b[3],
            kind: b[4],
            flags: b[5],
            port: u16_at(b, 6),
            seq: u64_at(b, 8),
            timestamp: (ts != NO_TIMESTAMP).then(|| Duration::from_nanos(ts)),
        },
        session: utf8(&b[HEADER_LEN..HEADER_LEN + session_len], "session id")?,
        meta: &b[HEADER_LEN + session_len..HEADER_LEN + session_len + meta_len],
        body: &b[offset..],
    })
}

/// Parses a frame, copying its payload out of shared memory.
pub fn decode(b: &[u8]) -> Result<Frame, FrameError> {
    decode_with(b, copy_samples)
}

/// Audio samples copied out of a payload into a buffer of their own.
fn copy_samples(body: &[u8]) -> Samples {
    let mut samples: Arc<[MaybeUninit<f32>]> = Arc::new_uninit_slice(body.len() / 4);
    let dst = Arc::get_mut(&mut samples).unwrap_or_else(|| unreachable!("new Arc"));
    // SAFETY: `dst` holds exactly body.len() bytes; every bit pattern is a valid f32 and the
    // target is little-endian; `assume_init` follows the full copy.
    let samples = unsafe {
        std::ptr::copy_nonoverlapping(body.as_ptr(), dst.as_mut_ptr().cast::<u8>(), body.len());
        samples.assume_init()
    };
    samples.into()
}

/// [`decode`], with audio samples made by `audio` from the payload (whole f32s, 8-aligned).
pub fn decode_with(b: &[u8], audio: impl FnOnce(&[u8]) -> Samples) -> Result<Frame, FrameError> {
    let Parts {
        head,
        session,
        meta,
        body,
    } = parse(b)?;
    let msg = Msg::from_u8(head.msg).ok_or(FrameError::Message(head.msg))?;
    let kind = head.kind;
    let mut frame = Frame {
        msg,
        flags: head.flags,
        port: head.port,
        seq: head.seq,
        timestamp: head.timestamp,
        session: session.into(),
        data: None,
        error: None,
    };
    if msg == Msg::Error {
        frame.error = Some(String::from_utf8_lossy(body).into_owned());
        return Ok(frame);
    }
    frame.data = match kind {
        0 => None,
        1 => {
            if meta.len() != 6 {
                return Err(FrameError::Meta("audio"));
            }
            if !body.len().is_multiple_of(4) {
                return Err(FrameError::AudioLength(body.len()));
            }
            Some(RuntimeData::Audio(AudioFrame::new(
                audio(body),
                u32_at(meta, 0),
                u16_at(meta, 4),
            )))
        }
        2 => {
            if meta.len() != 24 {
                return Err(FrameError::Meta("text"));
            }
            let span = (meta[1] != 0).then(|| {
                (
                    Duration::from_nanos(u64_at(meta, 8)),
                    Duration::from_nanos(u64_at(meta, 16)),
                )
            });
            Some(RuntimeData::Text(TextFrame {
                text: utf8(body, "text")?.into(),
                is_final: meta[0] != 0,
                span,
            }))
        }
        3 => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| FrameError::Json(e.to_string()))?;
            Some(RuntimeData::json(v))
        }
        4 => Some(RuntimeData::Binary(Bytes::copy_from_slice(body))),
        5 => {
            if meta.len() < 8 {
                return Err(FrameError::Meta("image"));
            }
            Some(RuntimeData::Image(ImageFrame {
                width: u32_at(meta, 0),
                height: u32_at(meta, 4),
                format: utf8(&meta[8..], "image format")?.into(),
                data: Bytes::copy_from_slice(body),
            }))
        }
        6 => {
            let control = match meta.first() {
                Some(1) => Control::Flush,
                Some(2) => Control::Cancel {
                    reason: utf8(body, "cancel reason")?.into(),
                },
                Some(3) => Control::EndOfStream,
                _ => return Err(FrameError::Meta("control")),
            };
            Some(RuntimeData::Control(control))
        }
        k => return Err(FrameError::Kind(k)),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<RuntimeData> {
        vec![
            RuntimeData::audio(vec![0.5, -0.25, 1.0e-7, f32::MAX], 48_000, 2),
            RuntimeData::Text(TextFrame {
                text: "héllo, wörld".into(),
                is_final: false,
                span: Some((Duration::from_millis(1500), Duration::from_millis(2750))),
            }),
            RuntimeData::text("plain"),
            RuntimeData::json(serde_json::json!({"a": [1, 2.5, null], "b": {"c": "d"}})),
            RuntimeData::Binary(Bytes::from_static(&[0, 1, 2, 255])),
            RuntimeData::Image(ImageFrame {
                width: 2,
                height: 1,
                format: "rgb8".into(),
                data: Bytes::from_static(&[1, 2, 3, 4, 5, 6]),
            }),
            RuntimeData::Control(Control::Flush),
            RuntimeData::Control(Control::Cancel {
                reason: "barge-in".into(),
            }),
            RuntimeData::Control(Control::EndOfStream),
        ]
    }

    #[test]
    fn every_kind_round_trips_with_an_aligned_payload() {
        let session: Arc<str> = "session-1".into();
        for (i, data) in every_kind().into_iter().enumerate() {
            let frame = Frame::data(
                Msg::Data,
                i as u64,
                3,
                Duration::from_micros(1234),
                &session,
                data,
            );
            let enc = Encoded::new(&frame);
            let bytes = enc.to_vec();
            assert_eq!(enc.payload_offset() % 8, 0);
            assert_eq!(decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn errors_and_bare_frames_round_trip() {
        let session: Arc<str> = "s".into();
        let mut frame = Frame::bare(Msg::Error, 7, &session);
        frame.flags = FLAG_REJECTED;
        frame.error = Some("no such word".into());
        assert_eq!(decode(&Encoded::new(&frame).to_vec()).unwrap(), frame);
        let done = Frame::bare(Msg::Done, 8, &session);
        assert_eq!(decode(&Encoded::new(&done).to_vec()).unwrap(), done);
    }

    #[test]
    fn malformed_frames_are_named() {
        let session: Arc<str> = "s".into();
        let frame = Frame::data(
            Msg::Data,
            0,
            0,
            Duration::ZERO,
            &session,
            RuntimeData::audio(vec![1.0; 4], 16_000, 1),
        );
        let good = Encoded::new(&frame).to_vec();
        assert_eq!(decode(&good[..10]), Err(FrameError::Short(10)));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(FrameError::Magic));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad), Err(FrameError::Version(9)));
        let mut bad = good.clone();
        bad[3] = 42;
        assert_eq!(decode(&bad), Err(FrameError::Message(42)));
        let mut bad = good.clone();
        bad[4] = 42;
        assert_eq!(decode(&bad), Err(FrameError::Kind(42)));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(FrameError::Length { .. })
        ));
        let mut bad = good.clone();
        bad[4] = 3; // the samples are not JSON
        assert!(matches!(decode(&bad), Err(FrameError::Json(_))));
    }
}
