//! Manifest v1: the pipeline as the user writes it, in YAML or JSON.
//!
//! The types here are the single source of truth: serde reads them (rejecting unknown fields)
//! and schemars turns them into the JSON Schema printed by `remotemedia schema`.

pub mod source;

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use source::{Pos, SourceMap};

use crate::retry::{CircuitBreakerConfig, RetryConfig};

/// A pipeline definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "RemoteMedia pipeline manifest v1")]
pub struct Manifest {
    /// Manifest format version: `v1` (also written `1` or `1.0`).
    #[schemars(regex(pattern = r"^v?1(\.0)?$"))]
    pub version: String,
    /// Who and what the pipeline is for; ignored by the runtime.
    #[serde(default)]
    pub metadata: Metadata,
    /// The processing steps.
    pub nodes: Vec<NodeDecl>,
    /// Edges between node ports. Inputs nobody feeds take the session's input; outputs that
    /// lead nowhere go to the session's output stream.
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// Runtime behaviour shared by all nodes of the pipeline.
    #[serde(default)]
    pub config: PipelineConfig,
}

/// Descriptive fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One node of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDecl {
    /// Unique name within the pipeline: letters, digits, `_` and `-`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub id: String,
    /// Node type, as listed by `remotemedia nodes`.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Node-type specific settings, checked against the type's JSON Schema.
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    /// Where the node should run.
    #[serde(default)]
    pub runtime_hint: RuntimeHint,
    /// Run the node on another RemoteMedia server (the remote executor) instead of here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "RemoteSpec")]
    pub remote: Option<RemoteSpec>,
}

/// The node type a node has when it stands for a whole pipeline of a remote server.
pub const REMOTE_PIPELINE: &str = "RemotePipeline";

/// Where and how a remote node runs: one node (its `type` and `params` as written), or with
/// `pipeline`, a pipeline the remote server is configured with (the node's `type` is then
/// `RemotePipeline`). Each session opens its own stream to the remote over the gRPC protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// `http://host:port` or `https://host:port` of the other server (or of a load balancer
    /// in front of several).
    #[schemars(regex(pattern = r"^https?://[^/]+/?$"))]
    pub endpoint: String,
    /// Environment variable of this process holding the bearer token the remote expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub token_env: Option<String>,
    /// A pipeline the remote serves (see its ListPipelines) instead of one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// PEM file of the certificate authority an `https` remote's certificate is checked
    /// against; default: the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// How long connecting to the remote may take.
    #[serde(default = "default_connect_timeout_ms")]
    #[schemars(range(min = 1))]
    pub connect_timeout_ms: u64,
    /// How long the remote may take to start a session (it may load models first).
    #[serde(default = "default_open_timeout_ms")]
    #[schemars(range(min = 1))]
    pub open_timeout_ms: u64,
    /// How long the remote may take to finish a session once its input has ended.
    #[serde(default = "default_finish_timeout_ms")]
    #[schemars(range(min = 1))]
    pub finish_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

fn default_open_timeout_ms() -> u64 {
    30_000
}

fn default_finish_timeout_ms() -> u64 {
    30_000
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Which executor should run a node. `auto`: the executor chosen by the registry's rules,
/// falling back (with a warning) to any other executor that has the node type. `rust`: native
/// only, an error if the type has no native implementation. `python`: a Python worker process
/// only, an error if no Python executor has the type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeHint {
    #[default]
    Auto,
    Rust,
    Python,
}

impl fmt::Display for RuntimeHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeHint::Auto => "auto",
            RuntimeHint::Rust => "rust",
            RuntimeHint::Python => "python",
        })
    }
}

/// The kinds of executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExecutorKind {
    /// In this process.
    Native,
    /// In a Python worker process.
    Python,
    /// On another server: chosen by a node's `remote`, never by a rule.
    Remote,
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutorKind::Native => "native",
            ExecutorKind::Python => "python",
            ExecutorKind::Remote => "remote",
        })
    }
}

/// "Node types matching `pattern` prefer `executor`": data, so that the runtime's defaults,
/// the server's configuration and a manifest all say it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorRule {
    /// A regular expression matched against the node type.
    pub pattern: String,
    pub executor: ExecutorKind,
    /// Among matching rules the highest wins.
    #[serde(default)]
    pub priority: i32,
}

impl ExecutorRule {
    pub fn new(pattern: &str, executor: ExecutorKind, priority: i32) -> Self {
        Self {
            pattern: pattern.to_string(),
            executor,
            priority,
        }
    }
}

/// An edge `from: node[.port]` → `to: node[.port]`. The port may be left out when the node has
/// only one port on that side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$"))]
    pub from: String,
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$"))]
    pub to: String,
    /// Overrides `config.edges.capacity` for this edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub capacity: Option<usize>,
    /// Overrides `config.edges.drop_policy` for this edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_policy: Option<DropPolicy>,
}

/// What a full edge does with a new packet. `block`: the sender waits (backpressure, nothing
/// lost). `drop_oldest`: real-time; the oldest queued packet is dropped, and counted, to make
/// room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DropPolicy {
    #[default]
    Block,
    DropOldest,
}

/// Defaults for every edge.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Packets an edge holds before its policy applies.
    #[schemars(range(min = 1))]
    pub capacity: usize,
    pub drop_policy: DropPolicy,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            drop_policy: DropPolicy::Block,
        }
    }
}

/// Runtime behaviour of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Collect per-node counts and latency histograms.
    pub metrics: bool,
    pub retry: RetryConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    pub edges: EdgeConfig,
    /// Where this pipeline's node types prefer to run, before the runtime's own rules
    /// (a `runtime_hint` on a node still wins).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executor_rules: Vec<ExecutorRule>,
    /// A node failure that loses an input (reported; the session goes on) does not fail the
    /// run: `remotemedia run` still exits 0. Off by default: such a run exits 1.
    pub tolerate_failures: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            retry: RetryConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            edges: EdgeConfig::default(),
            executor_rules: Vec::new(),
            tolerate_failures: false,
        }
    }
}

/// The JSON Schema of manifest v1, generated from the types above.
pub fn json_schema() -> serde_json::Value {
    crate::node::params_schema::<Manifest>()
}
