//! The node contract: what one processing step implements.
//!
//! A node file holds a params struct, the node's state and two small trait impls: [`Node`] (how
//! it processes) and [`NodeType`] (its name, params and ports). Registering it in a
//! [`crate::NodeRegistry`] is all it takes to use it in manifests; the router never changes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::data::{Control, MediaType, Packet, RuntimeData};

/// Whether trying again can help, which decides what the retry policy does with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient (a timeout, a busy model): retried with backoff, then reported and skipped.
    Retryable,
    /// This one input cannot be processed (text a voice cannot read): reported and skipped at
    /// once, never retried, and not held against the node by the circuit breaker.
    Rejected,
    /// Bad input or broken state: never retried; ends the session.
    Fatal,
}

/// Why a node could not process a packet, or could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl NodeError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Rejected,
            message: message.into(),
        }
    }

    /// A node's error from a typed error of a lower layer: retryable when that error says
    /// trying again can help, fatal otherwise. `context` (e.g. the node's name) comes first.
    pub fn from_error<E: Retryable>(context: &str, e: &E) -> Self {
        let message = format!("{context}: {e}");
        if e.is_retryable() {
            Self::retryable(message)
        } else {
            Self::fatal(message)
        }
    }

    /// The error for an input of a kind the node cannot handle.
    pub fn unsupported(node: &str, data: &RuntimeData) -> Self {
        Self::fatal(format!("{node} cannot process {} data", data.media_type()))
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

/// An error that knows whether trying again can help: the crate-edge errors (model pool,
/// models, worker processes) say it, and [`NodeError::from_error`] turns it into what the
/// router's retry policy and circuit breaker act on.
pub trait Retryable: std::error::Error {
    fn is_retryable(&self) -> bool;
}

/// What a node emits while processing one input. The router turns each entry into a packet on
/// every connection leaving that port; buffering here lets the router retry a failed call
/// without having sent partial output.
#[derive(Debug, Default)]
pub struct Outputs {
    items: Vec<Output>,
}

/// One emitted value, before the router stamps it into a packet.
#[derive(Debug)]
pub struct Output {
    /// Index into the node type's declared output ports.
    pub port: usize,
    pub data: RuntimeData,
    /// Media timestamp; `None` inherits the input packet's.
    pub timestamp: Option<Duration>,
}

impl Outputs {
    /// Emits on the first (usually only) output port.
    pub fn push(&mut self, data: RuntimeData) {
        self.push_to(0, data);
    }

    /// Emits on output port `port` (its index in [`Ports::outputs`]).
    pub fn push_to(&mut self, port: usize, data: RuntimeData) {
        self.items.push(Output {
            port,
            data,
            timestamp: None,
        });
    }

    /// Emits on port 0 with an explicit media timestamp.
    pub fn push_at(&mut self, data: RuntimeData, timestamp: Duration) {
        self.push_to_at(0, data, timestamp);
    }

    /// Emits on port `port` with an explicit media timestamp.
    pub fn push_to_at(&mut self, port: usize, data: RuntimeData, timestamp: Duration) {
        self.items.push(Output {
            port,
            data,
            timestamp: Some(timestamp),
        });
    }

    /// Emits an output made elsewhere (a worker's), as it is.
    pub fn push_output(&mut self, output: Output) {
        self.items.push(output);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Takes the emitted values out, leaving the buffer empty for reuse.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.items.drain(..)
    }
}

/// Identity of the node instance being created, for logs and per-session resources.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub session_id: Arc<str>,
    pub node_id: Arc<str>,
}

/// One processing step. Each instance lives for one session and runs in its own task, so it
/// may keep state across inputs without locks. Heavy CPU or model work must leave the async
/// reactor (`tokio::task::spawn_blocking`), so other sessions keep flowing.
///
/// Outputs pushed before a method returns an error are delivered, before the error is
/// reported: what a node produced is never lost with its failure. (When a retryable error is
/// retried, each attempt starts with empty outputs.)
#[async_trait]
pub trait Node: Send + 'static {
    /// Handles one input packet, emitting zero or more outputs. `port` is the index of the input
    /// port it arrived on. The packet is borrowed so that a retry can offer it again; cloning its
    /// data is cheap (shared buffers).
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError>;

    /// Emits anything still buffered: called on a [`Control::Flush`], and by the default
    /// [`Node::finish`] at end of stream.
    async fn flush(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }

    /// End of stream: nothing more will arrive; emits everything left (called upstream nodes
    /// first). Default: [`Node::flush`]. A node whose work goes on elsewhere (another server)
    /// waits here until that work is done.
    async fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.flush(out).await
    }

    /// Reacts to other in-band control. The router passes the control on afterwards, along
    /// every output (never along a feedback edge).
    ///
    /// [`Control::Cancel`] (barge-in, or a client's cancel) abandons the work in progress: drop
    /// buffered state that belongs to it (a reply being generated, audio not yet played) and
    /// stop background work. The router has already done the rest: on an edge between nodes a
    /// cancel overtakes the data queued before it (dropped), and the outputs of a `process`
    /// call that was running when a cancel arrived are dropped. Data at the session's
    /// boundary (its input, and the outputs waiting for the client) is never dropped. What `control` emits for a cancel (a report of what was abandoned)
    /// leaves after the cancel, so it is not dropped with the stale data.
    async fn control(&mut self, _control: &Control, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }

    /// Releases resources when the session ends, normally or not.
    async fn close(&mut self) -> Result<(), NodeError> {
        Ok(())
    }

    /// True for nodes whose output can become ready between inputs (work finishing in another
    /// process); the router then also waits on [`Node::poll_output`] while the inbox is idle,
    /// so such output leaves at once instead of with the next input.
    fn emits_unprompted(&self) -> bool {
        false
    }

    /// Waits until output is ready and emits it. Must be cancel-safe: the router drops the
    /// future whenever an input arrives first. Only called when
    /// [`Node::emits_unprompted`] is true.
    async fn poll_output(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        std::future::pending().await
    }
}

/// A named port and the media types it takes or gives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PortSpec {
    pub name: String,
    pub media: Vec<MediaType>,
    /// An input fed from downstream (see [`Ports::feedback`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub feedback: bool,
}

impl PortSpec {
    pub fn new(name: &str, media: &[MediaType]) -> Self {
        Self {
            name: name.to_string(),
            media: media.to_vec(),
            feedback: false,
        }
    }
}

/// A node type's input and output ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub inputs: Vec<PortSpec>,
    pub outputs: Vec<PortSpec>,
}

impl Ports {
    /// No ports yet; add them with [`Ports::input`] and [`Ports::output`].
    pub fn new() -> Self {
        Self::default()
    }

    pub fn input(mut self, name: &str, media: &[MediaType]) -> Self {
        self.inputs.push(PortSpec::new(name, media));
        self
    }

    /// An input fed by a node downstream of this one (what a later stage reports back, e.g.
    /// how much of a reply was heard), or a side input of events from elsewhere in the graph
    /// (a VAD's, for a playout's turn-taking). A connection into it closes no cycle: it never
    /// blocks its sender (the oldest report is dropped when full), does not keep this node's
    /// input open at end of stream, and carries no control. It is never a session input, and
    /// a connection into it always names it.
    pub fn feedback(mut self, name: &str, media: &[MediaType]) -> Self {
        self.inputs.push(PortSpec {
            feedback: true,
            ..PortSpec::new(name, media)
        });
        self
    }

    pub fn output(mut self, name: &str, media: &[MediaType]) -> Self {
        self.outputs.push(PortSpec::new(name, media));
        self
    }

    /// The usual shape: one input `in` and one output `out`.
    pub fn one_to_one(input: &[MediaType], output: &[MediaType]) -> Self {
        Self::new().input("in", input).output("out", output)
    }
}

/// Everything the registry, validator and `remotemedia nodes` know about a node type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeTypeInfo {
    #[serde(rename = "type")]
    pub name: String,
    pub description: String,
    /// JSON Schema of the `params` object.
    pub params_schema: serde_json::Value,
    pub inputs: Vec<PortSpec>,
    pub outputs: Vec<PortSpec>,
}

/// The static side of a native node: its manifest name, params and ports, and how to build it.
pub trait NodeType: Node + Sized {
    /// Params as written in the manifest; unknown fields should be denied.
    type Params: DeserializeOwned + JsonSchema;
    /// Name used as `type:` in manifests.
    const NAME: &'static str;
    /// One line for `remotemedia nodes`.
    const DESCRIPTION: &'static str;

    fn ports() -> Ports;

    fn new(params: Self::Params, ctx: &NodeContext) -> Result<Self, NodeError>;
}

/// The JSON Schema of a params type, as a plain value.
pub fn params_schema<P: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(P)).unwrap_or(serde_json::Value::Bool(true))
}
