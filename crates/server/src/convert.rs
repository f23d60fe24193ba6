//! Protobuf messages ↔ runtime values.

use std::sync::Arc;

use remotemedia_core::node::PortSpec;
use remotemedia_core::{MediaType, Packet, SessionError};
pub use remotemedia_proto::{data_in, data_out, micros, us};
use tonic::Status;

use crate::admission::{PipelineRef, Reason, Refusal};
use crate::config::LimitsConfig;
use crate::proto;

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

/// A session that could not start: UNAVAILABLE when trying again can help (a remote node's
/// server is down or full, a worker is restarting), INTERNAL otherwise.
pub fn start_status(e: SessionError) -> Status {
    let message = format!("could not start the pipeline: {e}");
    match e {
        SessionError::Create {
            retryable: true, ..
        } => Status::unavailable(message),
        _ => Status::internal(message),
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
