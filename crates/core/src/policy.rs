//! What a manifest from someone the operator does not trust may contain.
//!
//! The policy is checked on the parsed manifest *before* any node type is resolved: resolving
//! a `module:Class` type imports Python code, so it must never happen for a manifest the
//! policy refuses.

use serde::Deserialize;

use crate::executor::{ExecutorKind, ExecutorRegistry};
use crate::manifest::{Manifest, NodeDecl, RuntimeHint};

/// Limits on untrusted manifests (a gRPC client's own, an SDK caller's `policy=`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestPolicy {
    /// Node types the manifest may use; empty = every native type.
    pub allowed_types: Vec<String>,
    /// The manifest may use Python nodes (code running in worker processes).
    pub allow_python: bool,
    /// Nodes in the manifest; 0 = no limit.
    pub max_nodes: usize,
    /// Length of the manifest text in bytes; 0 = no limit.
    pub max_bytes: usize,
}

impl Default for ManifestPolicy {
    fn default() -> Self {
        Self {
            allowed_types: Vec::new(),
            allow_python: false,
            max_nodes: 32,
            max_bytes: 64 << 10,
        }
    }
}

/// Why a manifest was refused. A refusal is final: the same manifest is refused again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("the manifest is {len} bytes; at most {max} are allowed")]
    TooLarge { len: usize, max: usize },
    #[error("the manifest has {count} nodes; at most {max} are allowed")]
    TooManyNodes { count: usize, max: usize },
    #[error(
        "node `{node}` ({node_type}) runs Python code, which untrusted manifests may not use here (allow_python is off)"
    )]
    Python { node: String, node_type: String },
    #[error(
        "node `{node}` asks to run on {endpoint}; only the operator's own pipelines may use remote nodes"
    )]
    Remote { node: String, endpoint: String },
    #[error("node `{node}`: type {node_type} is not allowed here; allowed: {}", .allowed.join(", "))]
    TypeNotAllowed {
        node: String,
        node_type: String,
        allowed: Vec<String>,
    },
}

impl PolicyError {
    /// A limit on size (the client may retry with less) rather than on content.
    pub fn is_size_limit(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::TooManyNodes { .. })
    }
}

impl ManifestPolicy {
    /// Checks the text's size, before it is parsed.
    pub fn check_text(&self, text: &str) -> Result<(), PolicyError> {
        if self.max_bytes > 0 && text.len() > self.max_bytes {
            return Err(PolicyError::TooLarge {
                len: text.len(),
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Checks a parsed manifest against the types `executors` know. Nothing is resolved:
    /// a `module:Class` type is refused (with Python off) before anything imports it.
    pub fn check(
        &self,
        manifest: &Manifest,
        executors: &ExecutorRegistry,
    ) -> Result<(), PolicyError> {
        let count = manifest.nodes.len();
        if self.max_nodes > 0 && count > self.max_nodes {
            return Err(PolicyError::TooManyNodes {
                count,
                max: self.max_nodes,
            });
        }
        for n in &manifest.nodes {
            // The operator's tokens and network are not a client's to use.
            if let Some(remote) = &n.remote {
                return Err(PolicyError::Remote {
                    node: n.id.clone(),
                    endpoint: remote.endpoint.clone(),
                });
            }
            if !self.allow_python && runs_python(n, executors) {
                return Err(PolicyError::Python {
                    node: n.id.clone(),
                    node_type: n.node_type.clone(),
                });
            }
            if !self.allowed_types.is_empty() && !self.allowed_types.contains(&n.node_type) {
                return Err(PolicyError::TypeNotAllowed {
                    node: n.id.clone(),
                    node_type: n.node_type.clone(),
                    allowed: self.allowed_types.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether a node would run Python code. Types named `module:Class` and nodes hinted `python`
/// do; a plain name does when only the Python executor's installed catalogue has it. A name
/// nobody knows is not decided here: resolution reports it as unknown, with suggestions.
fn runs_python(n: &NodeDecl, executors: &ExecutorRegistry) -> bool {
    let has = |kind| {
        executors
            .executor(kind)
            .is_some_and(|e| e.describe(&n.node_type).is_some())
    };
    n.node_type.contains(':')
        || n.runtime_hint == RuntimeHint::Python
        || (!has(ExecutorKind::Native) && has(ExecutorKind::Python))
}
