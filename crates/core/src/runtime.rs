//! The runtime and the one way to assemble it.
//!
//! [`RuntimeBuilder`] is the composition root: node families, executors and their rules go
//! in, a [`Runtime`] comes out. Every entry point (the CLI, the server, the Python SDK, tests,
//! benches) builds its runtime this way, so a new node family or executor is added in one
//! place and a test runs the runtime a user runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::data::{Packet, RuntimeData};
use crate::executor::{Executor, ExecutorKind, ExecutorRegistry, ExecutorRule, RemoteConnector};
use crate::metrics::ProcessMetrics;
use crate::node::{NodeContext, NodeType};
use crate::pipeline::{ManifestError, Pipeline};
use crate::policy::{ManifestPolicy, PolicyError};
use crate::registry::NodeRegistry;
use crate::session::{self, LiveNode, Session, SessionError};

/// Assembles a [`Runtime`]: the native node families, other executors and the rules that say
/// which executor a node type prefers.
pub struct RuntimeBuilder {
    nodes: NodeRegistry,
    executors: Vec<Arc<dyn Executor>>,
    remote: Option<Arc<dyn RemoteConnector>>,
    rules: Vec<ExecutorRule>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeBuilder {
    /// The core's built-in nodes (`PassThrough`, `TextTransform`) and nothing else.
    pub fn new() -> Self {
        Self::empty().nodes(crate::nodes::register)
    }

    /// No node types at all.
    pub fn empty() -> Self {
        Self {
            nodes: NodeRegistry::new(),
            executors: Vec::new(),
            remote: None,
            rules: Vec::new(),
        }
    }

    /// Adds a family of native node types (a crate's `register` function).
    pub fn nodes(mut self, family: impl FnOnce(&mut NodeRegistry)) -> Self {
        family(&mut self.nodes);
        self
    }

    /// Adds one native node type.
    pub fn node<T: NodeType>(mut self) -> Self {
        self.nodes.register::<T>();
        self
    }

    /// Adds (or replaces) the executor of its kind beside the native one.
    pub fn executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executors.push(executor);
        self
    }

    /// Runs the nodes a manifest gives a `remote` (without it, such a manifest is refused).
    pub fn remote(mut self, connector: Arc<dyn RemoteConnector>) -> Self {
        self.remote = Some(connector);
        self
    }

    /// Adds executor preference rules (defaults, or the operator's configuration).
    pub fn rules(mut self, rules: impl IntoIterator<Item = ExecutorRule>) -> Self {
        self.rules.extend(rules);
        self
    }

    /// The runtime; fails only on a rule whose pattern is not a regular expression.
    pub fn build(self) -> Result<Runtime, regex::Error> {
        let mut executors = ExecutorRegistry::new();
        executors.add_executor(Arc::new(self.nodes));
        for e in self.executors {
            executors.add_executor(e);
        }
        if let Some(remote) = self.remote {
            executors.set_remote(remote);
        }
        for r in &self.rules {
            executors.add_rule(r)?;
        }
        Ok(Runtime {
            executors: Arc::new(executors),
            metrics: Arc::new(ProcessMetrics::default()),
            next_id: AtomicU64::new(1),
        })
    }
}

/// Why an untrusted manifest was not loaded.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The policy refused it; nothing was resolved.
    #[error(transparent)]
    Refused(#[from] PolicyError),
    /// It is not a valid manifest.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

/// Creates sessions: holds the executors that build nodes and the process metrics.
pub struct Runtime {
    executors: Arc<ExecutorRegistry>,
    metrics: Arc<ProcessMetrics>,
    next_id: AtomicU64,
}

impl Runtime {
    pub fn executors(&self) -> &ExecutorRegistry {
        &self.executors
    }

    pub fn metrics(&self) -> &Arc<ProcessMetrics> {
        &self.metrics
    }

    /// Parses and validates manifest text from someone trusted (the operator, the user).
    pub fn load(&self, text: &str, origin: &str) -> Result<Arc<Pipeline>, ManifestError> {
        Pipeline::parse(text, origin, &self.executors).map(Arc::new)
    }

    /// Loads manifest text from someone untrusted: the policy is checked on the parsed
    /// manifest before any type is resolved, and with Python off only the native executor is
    /// consulted; remote nodes are refused. May block (resolving an allowed Python type asks a
    /// Python process): call it off the async reactor.
    pub fn load_untrusted(
        &self,
        text: &str,
        origin: &str,
        policy: &ManifestPolicy,
    ) -> Result<Arc<Pipeline>, LoadError> {
        policy.check_text(text)?;
        let manifest = Pipeline::read(text, origin)?;
        policy.check(&manifest, &self.executors)?;
        let kinds: &[ExecutorKind] = if policy.allow_python {
            &[ExecutorKind::Native, ExecutorKind::Python]
        } else {
            &[ExecutorKind::Native]
        };
        let pipeline = Pipeline::parse(text, origin, &self.executors.only(kinds));
        Ok(Arc::new(pipeline?))
    }

    /// Starts a session with a generated id.
    pub async fn open(&self, pipeline: &Arc<Pipeline>) -> Result<Session, SessionError> {
        let id = format!("session-{}", self.next_id.fetch_add(1, Relaxed));
        self.open_with_id(pipeline, &id).await
    }

    /// Starts a session: creates every node once (closing them again if one fails), then
    /// wires the edges and starts one task per node.
    pub async fn open_with_id(
        &self,
        pipeline: &Arc<Pipeline>,
        id: &str,
    ) -> Result<Session, SessionError> {
        let session_id: Arc<str> = id.into();
        let mut nodes: Vec<LiveNode> = Vec::with_capacity(pipeline.nodes.len());
        for pn in &pipeline.nodes {
            let ctx = NodeContext {
                session_id: Arc::clone(&session_id),
                node_id: Arc::clone(&pn.id),
            };
            match pn.executor.create(&pn.node_type, &pn.params, &ctx).await {
                Ok(node) => nodes.push(LiveNode::new(node, Arc::clone(&self.metrics))),
                Err(e) => {
                    for mut n in nodes {
                        n.close().await;
                    }
                    return Err(SessionError::Create {
                        node_id: pn.id.to_string(),
                        node_type: pn.node_type.clone(),
                        retryable: e.is_retryable(),
                        message: e.message,
                    });
                }
            }
        }
        Ok(session::start(pipeline, session_id, nodes, &self.metrics))
    }

    /// Unary execution on the same router: opens a session, feeds `inputs`, ends the input
    /// and returns every output packet in arrival order.
    pub async fn execute(
        &self,
        pipeline: &Arc<Pipeline>,
        inputs: Vec<RuntimeData>,
    ) -> Result<Vec<Packet>, SessionError> {
        let (input, mut output) = self.open(pipeline).await?.split();
        let feed = async move {
            for data in inputs {
                input.send(data).await?;
            }
            Ok::<_, SessionError>(())
        };
        let collect = async {
            let mut packets = Vec::new();
            while let Some(item) = output.recv().await {
                match item {
                    Ok(p) => packets.push(p),
                    Err(f) if !f.fatal => tracing::warn!("{f}"),
                    Err(_) => {}
                }
            }
            packets
        };
        let (fed, packets) = tokio::join!(feed, collect);
        output.finish().await?;
        fed?;
        Ok(packets)
    }
}
