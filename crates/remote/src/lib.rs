//! The remote executor: a node, or a whole pipeline, that runs on another RemoteMedia server.
//!
//! A manifest gives a node a `remote` (endpoint, token variable, optionally a pipeline of the
//! remote's); validation asks the remote for its node types and pipelines, so that ports,
//! media and params are checked here as for any node. Each session then opens
//! its own `StreamPipeline` stream to the remote: the node's inputs go out as data frames, the
//! remote's outputs come back as they are ready, and the end of the local stream closes the
//! remote session. A connection is made per session, so a remote that restarted (or a load
//! balancer's other server) serves the next session.
//!
//! Every error names the endpoint: a remote that cannot be reached when a session opens, that
//! refuses it (full, draining, bad token), or that dies mid-session.

mod link;
mod node;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_core::executor::{Executor, ExecutorKind, RemoteConnector, RemoteSpec};
use remotemedia_core::manifest::REMOTE_PIPELINE;
use remotemedia_core::node::{Node, NodeContext, NodeError, NodeTypeInfo, PortSpec};
use remotemedia_proto::open_session;

use crate::node::{RemoteNode, Target};

/// What a remote offers: its node types and its pipelines (as nodes of type
/// `RemotePipeline`, with the remote names of their ports).
#[derive(Debug)]
struct Catalogue {
    nodes: Vec<NodeTypeInfo>,
    pipelines: HashMap<String, RemotePipeline>,
}

#[derive(Debug)]
struct RemotePipeline {
    info: NodeTypeInfo,
    /// `node.port` of each input and output, in the order of `info`'s ports.
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// The remote executor: each `remote` of a manifest being checked asks its server for its
/// node types and pipelines (a manifest is checked once, when it is loaded).
pub struct Remotes;

impl RemoteConnector for Remotes {
    fn connect(&self, spec: &RemoteSpec) -> Result<Arc<dyn Executor>, String> {
        let catalogue = link::fetch_catalogue(spec)?;
        if let Some(name) = &spec.pipeline
            && !catalogue.pipelines.contains_key(name)
        {
            let mut served: Vec<&str> = catalogue.pipelines.keys().map(String::as_str).collect();
            served.sort();
            return Err(format!(
                "{} serves no pipeline `{name}`; it serves: {}",
                spec.endpoint,
                served.join(", ")
            ));
        }
        Ok(Arc::new(RemoteExecutor {
            spec: spec.clone(),
            catalogue,
        }))
    }
}

/// The executor of one `remote` as a manifest wrote it.
struct RemoteExecutor {
    spec: RemoteSpec,
    catalogue: Catalogue,
}

impl RemoteExecutor {
    fn pipeline(&self) -> Option<&RemotePipeline> {
        self.catalogue.pipelines.get(self.spec.pipeline.as_deref()?)
    }
}

#[async_trait]
impl Executor for RemoteExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Remote
    }

    fn describe(&self, node_type: &str) -> Option<NodeTypeInfo> {
        if self.spec.pipeline.is_some() {
            return (node_type == REMOTE_PIPELINE)
                .then(|| self.pipeline().map(|p| p.info.clone()))
                .flatten();
        }
        self.catalogue
            .nodes
            .iter()
            .find(|t| t.name == node_type)
            .cloned()
    }

    fn node_types(&self) -> Vec<NodeTypeInfo> {
        self.catalogue.nodes.clone()
    }

    async fn create(
        &self,
        node_type: &str,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        let target = match (self.pipeline(), &self.spec.pipeline) {
            (Some(p), Some(name)) => Target {
                pipeline: open_session::Pipeline::PipelineName(name.clone()),
                inputs: p.inputs.clone(),
                outputs: p.outputs.clone(),
            },
            _ => {
                let info = self.describe(node_type).ok_or_else(|| {
                    NodeError::fatal(format!(
                        "remote {} has no node type `{node_type}`",
                        self.spec.endpoint
                    ))
                })?;
                let id = &ctx.node_id;
                let names =
                    |ports: &[PortSpec]| ports.iter().map(|p| format!("{id}.{}", p.name)).collect();
                let manifest = serde_json::json!({
                    "version": "v1",
                    "nodes": [{"id": &**id, "type": node_type, "params": params}],
                });
                Target {
                    pipeline: open_session::Pipeline::Manifest(manifest.to_string()),
                    inputs: names(&info.inputs),
                    outputs: names(&info.outputs),
                }
            }
        };
        Ok(Box::new(RemoteNode::open(&self.spec, target, ctx).await?))
    }
}
