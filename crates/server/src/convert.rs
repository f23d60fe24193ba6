//! Protobuf messages ↔ runtime values.

use std::sync::Arc;
use std::time::Duration;

use remotemedia_core::node::PortSpec;
use remotemedia_core::{
    Control, ImageFrame, MediaType, Packet, RuntimeData, SessionError, TextFrame,
};
use tonic::Status;

use crate::admission::{PipelineRef, Reason, Refusal};
use crate::config::LimitsConfig;
use crate::proto::{self, data::Kind};

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        let code = match r.reason {
            Reason::InvalidArgument => tonic::Code::InvalidArgument,
            Reason::NotFound => tonic::Code::NotFound,
            Reason::PermissionDenied => tonic::Code::PermissionDenied,
            Reason::ResourceExhausted => tonic::Code::ResourceExhausted,
            Reason::FailedPrecondition => tonic::Code::FailedPrecondition,
            Reason::Unavailable => tonic::Code::Unavailable,
            Reason::Internal => tonic::Code::Internal,
        };
        Status::new(code, r.message)
    }
}

impl From<proto::open_session::Pipeline> for PipelineRef {
    fn from(p: proto::open_session::Pipeline) -> Self {
        match p {
            proto::open_session::Pipeline::PipelineName(n) => PipelineRef::Name(n),
            proto::open_session::Pipeline::Manifest(m) => PipelineRef::Manifest(m),
        }
    }
}

impl From<proto::execute_request::Pipeline> for PipelineRef {
    fn from(p: proto::execute_request::Pipeline) -> Self {
        match p {
            proto::execute_request::Pipeline::PipelineName(n) => PipelineRef::Name(n),
            proto::execute_request::Pipeline::Manifest(m) => PipelineRef::Manifest(m),
        }
    }
}

/// A session error while feeding: the client's fault (INVALID_ARGUMENT) or the session's end.
pub fn feed_status(e: &SessionError) -> Option<Status> {
    match e {
        SessionError::NoInput { .. } | SessionError::UnknownInput(_) => {
            Some(Status::invalid_argument(e.to_string()))
        }
        _ => None,
    }
}

/// Limits a client asks for (0 = not asked).
pub fn limits_in(l: &proto::Limits) -> LimitsConfig {
    LimitsConfig {
        max_duration_ms: l.max_duration_ms,
        idle_timeout_ms: l.idle_timeout_ms,
        max_message_bytes: l.max_message_bytes as usize,
        max_realtime_factor: l.max_realtime_factor,
        max_frames_per_second: l.max_frames_per_second,
        ..Default::default()
    }
}

/// Limits as the protocol states them.
pub fn limits_out(l: &LimitsConfig) -> proto::Limits {
    proto::Limits {
        max_duration_ms: l.max_duration_ms,
        idle_timeout_ms: l.idle_timeout_ms,
        max_message_bytes: l.max_message_bytes as u64,
        max_realtime_factor: l.max_realtime_factor,
        max_frames_per_second: l.max_frames_per_second,
    }
}

/// Largest sample rate and channel count a client may declare (as the file decoders accept).
const MAX_RATE: u32 = 384_000;
const MAX_CHANNELS: u32 = 64;

/// A client's data, checked: INVALID_ARGUMENT names what is wrong.
pub fn data_in(data: Option<proto::Data>) -> Result<RuntimeData, Status> {
    let kind = data
        .and_then(|d| d.kind)
        .ok_or_else(|| Status::invalid_argument("data frame without data"))?;
    Ok(match kind {
        Kind::Audio(mut a) => {
            if !a.samples_f32le.is_empty() {
                if !a.samples.is_empty() {
                    return Err(Status::invalid_argument(
                        "audio has both samples and samples_f32le; send one",
                    ));
                }
                if a.samples_f32le.len() % 4 != 0 {
                    return Err(Status::invalid_argument(format!(
                        "samples_f32le has {} bytes, not a whole number of 4-byte floats",
                        a.samples_f32le.len()
                    )));
                }
                a.samples = a
                    .samples_f32le
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
            if a.sample_rate == 0 || a.sample_rate > MAX_RATE {
                return Err(Status::invalid_argument(format!(
                    "audio sample_rate {} is out of range (1..={MAX_RATE})",
                    a.sample_rate
                )));
            }
            let channels = a.channels.max(1);
            if channels > MAX_CHANNELS {
                return Err(Status::invalid_argument(format!(
                    "audio channels {channels} is out of range (1..={MAX_CHANNELS})"
                )));
            }
            if a.samples.len() % channels as usize != 0 {
                return Err(Status::invalid_argument(format!(
                    "audio has {} samples, not a whole number of {channels}-channel frames",
                    a.samples.len()
                )));
            }
            if a.samples.iter().any(|s| !s.is_finite()) {
                return Err(Status::invalid_argument("audio samples must be finite"));
            }
            RuntimeData::audio(a.samples, a.sample_rate, channels as u16)
        }
        Kind::Text(t) => RuntimeData::Text(TextFrame {
            text: t.text.into(),
            is_final: t.is_final,
            span: t.span.map(|s| (micros(s.start_us), micros(s.end_us))),
        }),
        Kind::Json(j) => RuntimeData::json(
            serde_json::from_str(&j)
                .map_err(|e| Status::invalid_argument(format!("json data is not JSON: {e}")))?,
        ),
        Kind::Binary(b) => RuntimeData::Binary(b.into()),
        Kind::Image(i) => RuntimeData::Image(ImageFrame {
            width: i.width,
            height: i.height,
            format: i.format.into(),
            data: i.data.into(),
        }),
        Kind::Control(c) => {
            RuntimeData::Control(match proto::control_data::Kind::try_from(c.kind) {
                Ok(proto::control_data::Kind::Flush) => Control::Flush,
                Ok(proto::control_data::Kind::Cancel) => Control::Cancel {
                    reason: c.reason.into(),
                },
                Ok(proto::control_data::Kind::EndOfStream) => Control::EndOfStream,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "unknown control kind {}",
                        c.kind
                    )));
                }
            })
        }
    })
}

/// Time in µs since the stream started; negative values count as 0.
pub fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `f32le`: audio samples as little-endian bytes rather than repeated floats.
pub fn data_out(data: &RuntimeData, f32le: bool) -> proto::Data {
    let kind = match data {
        RuntimeData::Audio(a) => {
            let (samples, samples_f32le) = if f32le {
                let bytes = a.samples().iter().flat_map(|s| s.to_le_bytes()).collect();
                (Vec::new(), bytes)
            } else {
                (a.samples().to_vec(), Vec::new())
            };
            Kind::Audio(proto::AudioBuffer {
                samples,
                sample_rate: a.sample_rate,
                channels: u32::from(a.channels),
                samples_f32le,
            })
        }
        RuntimeData::Text(t) => Kind::Text(proto::TextData {
            text: t.text.to_string(),
            is_final: t.is_final,
            span: t.span.map(|(s, e)| proto::Span {
                start_us: us(s),
                end_us: us(e),
            }),
        }),
        RuntimeData::Json(v) => Kind::Json(v.to_string()),
        RuntimeData::Binary(b) => Kind::Binary(b.to_vec()),
        RuntimeData::Image(i) => Kind::Image(proto::ImageData {
            width: i.width,
            height: i.height,
            format: i.format.to_string(),
            data: i.data.to_vec(),
        }),
        RuntimeData::Control(c) => {
            use proto::control_data::Kind as K;
            let (kind, reason) = match c {
                Control::Flush => (K::Flush, String::new()),
                Control::Cancel { reason } => (K::Cancel, reason.to_string()),
                Control::EndOfStream => (K::EndOfStream, String::new()),
            };
            Kind::Control(proto::ControlData {
                kind: kind as i32,
                reason,
            })
        }
    };
    proto::Data { kind: Some(kind) }
}

pub fn output(p: &Packet, f32le: bool) -> proto::OutputFrame {
    proto::OutputFrame {
        node: p.source.to_string(),
        port: p.port.to_string(),
        data: Some(data_out(&p.data, f32le)),
        seq: p.seq,
        timestamp_us: us(p.timestamp),
    }
}

pub fn error(f: &remotemedia_core::NodeFailure) -> proto::ErrorInfo {
    proto::ErrorInfo {
        node: f.node_id.to_string(),
        node_type: f.node_type.clone(),
        message: f.message.clone(),
        fatal: f.fatal,
    }
}

fn media_names(media: &[MediaType]) -> Vec<String> {
    media.iter().map(|m| m.to_string()).collect()
}

pub fn port(name: impl Into<String>, spec: &PortSpec) -> proto::PortInfo {
    proto::PortInfo {
        name: name.into(),
        media: media_names(&spec.media),
    }
}

/// The pipeline's entry and exit ports as `node.port`.
pub fn pipeline_ports(
    p: &remotemedia_core::Pipeline,
) -> (Vec<proto::PortInfo>, Vec<proto::PortInfo>) {
    let at = |(n, i): (usize, usize), input: bool| {
        let node = &p.nodes[n];
        let (names, specs): (&[Arc<str>], &[PortSpec]) = if input {
            (&node.input_names, &node.info.inputs)
        } else {
            (&node.output_names, &node.info.outputs)
        };
        port(format!("{}.{}", node.id, names[i]), &specs[i])
    };
    (
        p.entry_ports().into_iter().map(|x| at(x, true)).collect(),
        p.exit_ports().into_iter().map(|x| at(x, false)).collect(),
    )
}
