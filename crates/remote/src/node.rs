//! One session's node on a remote: a `StreamPipeline` stream opened when the session opens.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::data::{Control, Packet, RuntimeData};
use remotemedia_core::executor::RemoteSpec;
use remotemedia_core::node::{Node, NodeContext, NodeError, Outputs};
use remotemedia_proto::session_control::Action;
use remotemedia_proto::{
    DataFrame, OpenSession, SessionControl, StreamRequest, StreamResponse, data_in, data_out,
    micros, open_session, stream_request, stream_response, us,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::link::{self, status_text};

/// Messages queued for the remote before a send waits (then backpressure reaches the session).
const QUEUE: usize = 16;
/// With no input for this long the node asks the remote for its metrics, so that a remote's
/// idle timeout (60 s by default) never ends a session that is quiet (a VAD hearing silence).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long the end of a finished remote session may take to arrive.
const TRAILER: Duration = Duration::from_secs(1);

/// What a session opens on the remote: one node (a one-node manifest with the local node's id,
/// type and params) or one of its configured pipelines; and the remote's `node.port` of each
/// local input and output port.
pub(crate) struct Target {
    pub pipeline: open_session::Pipeline,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

pub(crate) struct RemoteNode {
    endpoint: String,
    tx: Option<mpsc::Sender<StreamRequest>>,
    responses: Streaming<StreamResponse>,
    /// The remote's `node.port` of each local input port.
    inputs: Vec<String>,
    /// Local output port of each remote `node.port`.
    outputs: HashMap<String, usize>,
    /// The remote's non-fatal errors, reported with the next call.
    reported: VecDeque<NodeError>,
    last_sent: Instant,
    finish_timeout: Duration,
    /// The remote sent `closed`.
    ended: bool,
}

impl RemoteNode {
    /// Connects (within `connect_timeout_ms`), opens the session and waits for the remote's
    /// `ready` (within `open_timeout_ms`). A refusal (full, draining, no such pipeline) is
    /// retryable only where the remote says trying again can help.
    pub(crate) async fn open(
        spec: &RemoteSpec,
        target: Target,
        ctx: &NodeContext,
    ) -> Result<Self, NodeError> {
        let endpoint = spec.endpoint.clone();
        // The link's errors name the endpoint.
        let mut client = link::client(spec).await.map_err(NodeError::retryable)?;
        let Target {
            pipeline,
            inputs,
            outputs,
        } = target;
        let (tx, rx) = mpsc::channel(QUEUE);
        let open = StreamRequest {
            message: Some(stream_request::Message::Open(OpenSession {
                pipeline: Some(pipeline),
                audio_out_f32le: true,
                ..Default::default()
            })),
        };
        let _ = tx.try_send(open);
        let request = link::authed(spec, tokio_stream::wrappers::ReceiverStream::new(rx))
            .map_err(NodeError::fatal)?;
        let refused = |s: Status| {
            let message = format!("remote {endpoint} refused the session: {}", status_text(&s));
            match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::ResourceExhausted
                | tonic::Code::DeadlineExceeded => NodeError::retryable(message),
                _ => NodeError::fatal(message),
            }
        };
        let timeout = Duration::from_millis(spec.open_timeout_ms);
        let opening = async {
            let mut responses = client.stream_pipeline(request).await?.into_inner();
            match responses.message().await? {
                Some(StreamResponse {
                    message: Some(stream_response::Message::Ready(_)),
                }) => Ok(responses),
                other => Err(Status::internal(format!(
                    "answered {other:?} instead of `ready`"
                ))),
            }
        };
        let responses = tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| {
                NodeError::retryable(format!(
                    "remote {endpoint} did not open the session within {} ms",
                    spec.open_timeout_ms
                ))
            })?
            .map_err(refused)?;
        tracing::debug!(session = %ctx.session_id, node = %ctx.node_id, %endpoint, "remote session open");
        Ok(Self {
            endpoint,
            tx: Some(tx),
            responses,
            inputs,
            outputs: outputs
                .into_iter()
                .enumerate()
                .map(|(i, o)| (o, i))
                .collect(),
            reported: VecDeque::new(),
            last_sent: Instant::now(),
            finish_timeout: Duration::from_millis(spec.finish_timeout_ms),
            ended: false,
        })
    }

    fn lost(&self) -> NodeError {
        NodeError::fatal(format!("remote {} closed the session", self.endpoint))
    }

    /// Sends one message; what the remote answers meanwhile is emitted, so a remote that waits
    /// for its outputs to be read never waits on us.
    async fn send(&mut self, message: StreamRequest, out: &mut Outputs) -> Result<(), NodeError> {
        let tx = self.tx.clone().ok_or_else(|| self.lost())?;
        let send = tx.send(message);
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                sent = &mut send => {
                    sent.map_err(|_| self.lost())?;
                    self.last_sent = Instant::now();
                    return Ok(());
                }
                m = self.responses.message(), if !self.ended => self.take(m, out)?,
            }
        }
    }

    /// Handles one message of the remote: outputs are emitted, its node errors kept for the
    /// next report; the stream failing or ending is this node's fatal error.
    fn take(
        &mut self,
        message: Result<Option<StreamResponse>, Status>,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let endpoint = &self.endpoint;
        let m = match message {
            Ok(Some(m)) => m.message,
            Ok(None) => {
                self.ended = true;
                return Err(NodeError::fatal(format!(
                    "remote {endpoint} ended the stream without closing the session"
                )));
            }
            Err(s) => {
                self.ended = true;
                return Err(NodeError::fatal(format!(
                    "remote {endpoint} failed mid-session: {}",
                    status_text(&s)
                )));
            }
        };
        match m {
            Some(stream_response::Message::Output(f)) => {
                let key = format!("{}.{}", f.node, f.port);
                let Some(&port) = self.outputs.get(&key) else {
                    tracing::warn!(%endpoint, output = %key, "output on an unknown port ignored");
                    return Ok(());
                };
                let data = data_in(f.data).map_err(|s| {
                    NodeError::fatal(format!("remote {endpoint} sent bad data: {}", s.message()))
                })?;
                // The local router passes control on by itself.
                if !matches!(data, RuntimeData::Control(_)) {
                    out.push_to_at(port, data, micros(f.timestamp_us));
                }
            }
            Some(stream_response::Message::Error(e)) => {
                let message = format!("remote {endpoint}: node `{}`: {}", e.node, e.message);
                if e.fatal {
                    return Err(NodeError::fatal(message));
                }
                self.reported.push_back(NodeError::rejected(message));
            }
            Some(stream_response::Message::Closed(c)) => {
                self.ended = true;
                if self.tx.is_some() {
                    return Err(NodeError::fatal(format!(
                        "remote {endpoint} closed the session early ({})",
                        c.reason
                    )));
                }
            }
            _ => {} // metrics (the keepalive's answer)
        }
        Ok(())
    }

    /// The oldest error the remote reported and nobody was told of yet.
    fn report(&mut self) -> Result<(), NodeError> {
        self.reported.pop_front().map_or(Ok(()), Err)
    }

    fn control(action: Action, reason: &str) -> StreamRequest {
        StreamRequest {
            message: Some(stream_request::Message::Control(SessionControl {
                action: action as i32,
                reason: reason.to_string(),
            })),
        }
    }
}

#[async_trait]
impl Node for RemoteNode {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let frame = StreamRequest {
            message: Some(stream_request::Message::Data(DataFrame {
                target: self.inputs.get(port).cloned().unwrap_or_default(),
                data: Some(data_out(&input.data, true)),
                timestamp_us: Some(us(input.timestamp)),
            })),
        };
        self.send(frame, out).await?;
        self.report()
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.send(Self::control(Action::Flush, ""), out).await?;
        self.report()
    }

    async fn control(&mut self, control: &Control, out: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { reason } = control {
            self.send(Self::control(Action::Cancel, reason), out)
                .await?;
        }
        self.report()
    }

    /// Ends the remote's input and emits everything it still sends, until its `closed`.
    async fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.send(Self::control(Action::Close, ""), out).await?;
        self.tx = None;
        let deadline = Instant::now() + self.finish_timeout;
        while !self.ended {
            let m = tokio::time::timeout_at(deadline, self.responses.message())
                .await
                .map_err(|_| {
                    NodeError::fatal(format!(
                        "remote {} did not finish the session within {} ms",
                        self.endpoint,
                        self.finish_timeout.as_millis()
                    ))
                })?;
            self.take(m, out)?;
        }
        // The stream's own end (its status) follows `closed`.
        let _ = tokio::time::timeout(TRAILER, self.responses.message()).await;
        self.report()
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        // Dropping the request ends it; if the remote session still runs, the stream is reset
        // when the node is dropped, which cancels it there.
        self.tx = None;
        Ok(())
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.report()?;
        if self.ended {
            return std::future::pending().await;
        }
        let keepalive = self.last_sent + KEEPALIVE;
        tokio::select! {
            m = self.responses.message() => self.take(m, out)?,
            _ = tokio::time::sleep_until(keepalive) => {
                // A full queue means the remote is busy reading anyway.
                if let Some(tx) = &self.tx {
                    let _ = tx.try_send(Self::control(Action::Metrics, ""));
                }
                self.last_sent = Instant::now();
            }
        }
        self.report()
    }
}
