//! The `PipelineService`: opening pipelines for clients under the server's policy, and the
//! unary calls (execute, version, listings).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use remotemedia_core::{ExecutorKind, Pipeline, Runtime, SessionError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::config::{LimitsConfig, ServerConfig};
use crate::convert;
use crate::proto::{self, pipeline_service_server::PipelineService};

/// The protocol this server speaks; clients with another major version are refused.
pub const PROTOCOL: (u32, u32) = (1, 0);
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Counters the HTTP `/metrics` route exports beside the runtime's own.
#[derive(Default)]
pub struct ServerStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub streams_active: AtomicU64,
    /// Calls refused, by gRPC status code name.
    pub refused: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl ServerStats {
    /// Counts and logs a refused call, and passes the status on.
    pub fn refuse(&self, status: Status) -> Status {
        let code = code_name(status.code());
        if let Ok(mut r) = self.refused.lock() {
            *r.entry(code).or_default() += 1;
        }
        tracing::info!(code, message = status.message(), "refused");
        status
    }
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Everything the services share.
pub struct Shared {
    pub runtime: Arc<Runtime>,
    pub config: ServerConfig,
    /// Configured pipelines, loaded and checked at start.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    pub sessions: Arc<Semaphore>,
    pub stats: ServerStats,
    /// Models of the configured pipelines are loaded.
    pub ready: AtomicBool,
    /// Set when the server shuts down: sessions end with UNAVAILABLE.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// WebRTC calls in progress.
    #[cfg(feature = "webrtc")]
    pub calls: crate::webrtc::Calls,
}

/// A pipeline a client may run, with the limits granted for it.
pub struct Granted {
    pub pipeline: Arc<Pipeline>,
    pub limits: LimitsConfig,
    pub protocol: (u32, u32),
    pub permit: OwnedSemaphorePermit,
}

impl Shared {
    /// Takes a session slot: RESOURCE_EXHAUSTED when every slot is in use.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.sessions).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the server is at its limit of {} concurrent sessions; retry later",
                self.config.limits.max_sessions
            ))
        })
    }

    /// Checks version, pipeline and policy; the order is cheapest first.
    pub fn grant(
        &self,
        version: &str,
        pipeline: Option<PipelineRef>,
        requested: Option<&proto::Limits>,
    ) -> Result<Granted, Status> {
        let protocol = negotiate(version)?;
        let pipeline = self.pipeline(pipeline)?;
        let permit = self.slot()?;
        Ok(Granted {
            pipeline,
            limits: self.limits(requested),
            protocol,
            permit,
        })
    }

    fn pipeline(&self, which: Option<PipelineRef>) -> Result<Arc<Pipeline>, Status> {
        match which {
            None => Err(Status::invalid_argument(
                "name a pipeline (pipeline_name) or send a manifest",
            )),
            Some(PipelineRef::Name(name)) => self.pipelines.get(&name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
                Status::not_found(format!(
                    "no pipeline named `{name}`; this server has: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            }),
            Some(PipelineRef::Manifest(text)) => self.client_manifest(&text),
        }
    }

    /// A client's own manifest, under the server's policy.
    fn client_manifest(&self, text: &str) -> Result<Arc<Pipeline>, Status> {
        let policy = &self.config.client_manifests;
        if !policy.allow {
            return Err(Status::permission_denied(
                "this server runs only its configured pipelines (client_manifests.allow is off); \
                 open one by pipeline_name",
            ));
        }
        let pipeline = self
            .runtime
            .load(text, "client manifest")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let max = self.config.limits.max_nodes;
        if pipeline.nodes.len() > max {
            return Err(Status::resource_exhausted(format!(
                "the manifest has {} nodes; this server allows at most {max}",
                pipeline.nodes.len()
            )));
        }
        for n in &pipeline.nodes {
            if n.executor.kind() == ExecutorKind::Python && !policy.allow_python {
                return Err(Status::permission_denied(format!(
                    "node `{}` ({}) runs Python code, which client manifests may not use here \
                     (client_manifests.allow_python is off)",
                    n.id, n.node_type
                )));
            }
            if !policy.allowed_types.is_empty() && !policy.allowed_types.contains(&n.node_type) {
                return Err(Status::permission_denied(format!(
                    "node `{}`: type {} is not allowed in client manifests; allowed: {}",
                    n.id,
                    n.node_type,
                    policy.allowed_types.join(", ")
                )));
            }
        }
        Ok(pipeline)
    }

    /// The server's limits, tightened where the client asked for less.
    fn limits(&self, requested: Option<&proto::Limits>) -> LimitsConfig {
        let mut l = self.config.limits.clone();
        let Some(r) = requested else { return l };
        let tighter = |server: u64, asked: u64| match (server, asked) {
            (s, 0) => s,
            (0, a) => a,
            (s, a) => s.min(a),
        };
        l.max_duration_ms = tighter(l.max_duration_ms, r.max_duration_ms);
        l.idle_timeout_ms = tighter(l.idle_timeout_ms, r.idle_timeout_ms);
        l.max_message_bytes = tighter(l.max_message_bytes as u64, r.max_message_bytes) as usize;
        l.max_frames_per_second = tighter(
            u64::from(l.max_frames_per_second),
            u64::from(r.max_frames_per_second),
        ) as u32;
        if r.max_realtime_factor > 0.0 && r.max_realtime_factor.is_finite() {
            l.max_realtime_factor = if l.max_realtime_factor == 0.0 {
                r.max_realtime_factor
            } else {
                l.max_realtime_factor.min(r.max_realtime_factor)
            };
        }
        l
    }
}

/// Which pipeline a client asks for.
pub enum PipelineRef {
    Name(String),
    Manifest(String),
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

/// The version both sides speak: the lower minor of the same major. Empty means ours.
pub fn negotiate(client: &str) -> Result<(u32, u32), Status> {
    if client.trim().is_empty() {
        return Ok(PROTOCOL);
    }
    let parse = |s: &str| s.trim().parse::<u32>().ok();
    let (major, minor) = match client.trim().trim_start_matches('v').split_once('.') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(client.trim().trim_start_matches('v')), Some(0)),
    };
    let (Some(major), Some(minor)) = (major, minor) else {
        return Err(Status::invalid_argument(format!(
            "protocol_version `{client}` is not MAJOR.MINOR (this server speaks {}.{})",
            PROTOCOL.0, PROTOCOL.1
        )));
    };
    if major != PROTOCOL.0 {
        return Err(Status::failed_precondition(format!(
            "client protocol {major}.{minor} is not compatible with this server's protocol {}.{} \
             (remotemedia {SERVER_VERSION}); use a client for protocol {}.x",
            PROTOCOL.0, PROTOCOL.1, PROTOCOL.0
        )));
    }
    Ok((major, minor.min(PROTOCOL.1)))
}

pub fn version_string((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
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

/// The service itself.
#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
}

impl Service {
    async fn execute(&self, req: proto::ExecuteRequest) -> Result<proto::ExecuteResponse, Status> {
        let f32le = req.audio_out_f32le;
        let shared = &self.shared;
        let granted = shared.grant(
            &req.protocol_version,
            req.pipeline.map(PipelineRef::from),
            None,
        )?;
        let inputs = req
            .inputs
            .into_iter()
            .map(|f| Ok((f.target, convert::data_in(f.data)?, f.timestamp_us)))
            .collect::<Result<Vec<_>, Status>>()?;
        let session = shared
            .runtime
            .open(&granted.pipeline)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (input, mut output) = session.split();
        let feed = async move {
            for (target, data, ts) in inputs {
                let sent = match (target.is_empty(), ts) {
                    (true, Some(ts)) => input.send_at(data, convert::micros(ts)).await,
                    (true, None) => input.send(data).await,
                    (false, Some(ts)) => input.send_to_at(&target, data, convert::micros(ts)).await,
                    (false, None) => input.send_to(&target, data).await,
                };
                if let Err(e) = sent {
                    return feed_status(&e);
                }
            }
            None
        };
        let collect = async {
            let mut resp = proto::ExecuteResponse::default();
            while let Some(item) = output.recv().await {
                match item {
                    Ok(p) => resp.outputs.push(convert::output(&p, f32le)),
                    Err(f) => resp.errors.push(convert::error(&f)),
                }
            }
            resp
        };
        let limit = granted.limits.max_duration_ms;
        let run = async { tokio::join!(feed, collect) };
        let (refused, mut resp) = if limit == 0 {
            run.await
        } else {
            tokio::time::timeout(Duration::from_millis(limit), run)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "the pipeline ran longer than the session limit of {limit} ms"
                    ))
                })?
        };
        if let Some(status) = refused {
            return Err(status);
        }
        resp.metrics_json = serde_json::to_string(&output.metrics()).unwrap_or_default();
        let _ = output.finish().await;
        shared
            .stats
            .bytes_out
            .fetch_add(prost::Message::encoded_len(&resp) as u64, Relaxed);
        Ok(resp)
    }
}

#[tonic::async_trait]
impl PipelineService for Service {
    type StreamPipelineStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::StreamResponse, Status>>;

    async fn stream_pipeline(
        &self,
        request: Request<tonic::Streaming<proto::StreamRequest>>,
    ) -> Result<Response<Self::StreamPipelineStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::stream::OUTBOX);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(crate::stream::run(shared, request.into_inner(), tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn execute_pipeline(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .stats
            .bytes_in
            .fetch_add(prost::Message::encoded_len(&req) as u64, Relaxed);
        self.execute(req)
            .await
            .map(Response::new)
            .map_err(|s| self.shared.stats.refuse(s))
    }

    async fn get_version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        let protocol = negotiate(&request.get_ref().protocol_version)
            .map_err(|s| self.shared.stats.refuse(s))?;
        Ok(Response::new(proto::VersionResponse {
            server_version: SERVER_VERSION.into(),
            protocol_version: version_string(protocol),
            compatible: true,
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let nodes = self
            .shared
            .runtime
            .executors()
            .catalogue()
            .into_iter()
            .map(|(info, executors)| proto::NodeInfo {
                inputs: info
                    .inputs
                    .iter()
                    .map(|p| convert::port(&p.name, p))
                    .collect(),
                outputs: info
                    .outputs
                    .iter()
                    .map(|p| convert::port(&p.name, p))
                    .collect(),
                params_schema_json: info.params_schema.to_string(),
                executors: executors.iter().map(|e| e.to_string()).collect(),
                name: info.name,
                description: info.description,
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn list_pipelines(
        &self,
        _: Request<proto::ListPipelinesRequest>,
    ) -> Result<Response<proto::ListPipelinesResponse>, Status> {
        let pipelines = self
            .shared
            .pipelines
            .iter()
            .map(|(name, p)| {
                let (inputs, outputs) = convert::pipeline_ports(p);
                proto::PipelineInfo {
                    name: name.clone(),
                    description: p.manifest.metadata.description.clone().unwrap_or_default(),
                    inputs,
                    outputs,
                }
            })
            .collect();
        Ok(Response::new(proto::ListPipelinesResponse { pipelines }))
    }
}
