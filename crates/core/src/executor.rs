//! Where each node type runs: natively in this process or in a Python worker. Resolution
//! order: the node's `runtime_hint` (`rust`/`python`), then explicit mappings, then the
//! manifest's executor rules, then the runtime's rules (both by priority), then the default.
//! With `auto`, a preference that the chosen executor cannot honour falls back to any executor
//! that has the type, with a warning.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use regex::Regex;
use serde::Serialize;

use crate::manifest::RuntimeHint;
pub use crate::manifest::{ExecutorKind, ExecutorRule, RemoteSpec};
use crate::node::{Node, NodeContext, NodeError, NodeTypeInfo};

/// Something that can create nodes of the types it knows.
#[async_trait]
pub trait Executor: Send + Sync {
    fn kind(&self) -> ExecutorKind;

    /// Ports, params schema and description of a type this executor provides.
    fn describe(&self, node_type: &str) -> Option<NodeTypeInfo>;

    /// Every type it provides.
    fn node_types(&self) -> Vec<NodeTypeInfo>;

    /// Creates an instance for one session; `params` has passed the type's schema.
    async fn create(
        &self,
        node_type: &str,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError>;

    /// Process-wide counters of this executor (e.g. worker crashes), for metrics exporters
    /// that know no executor in particular.
    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }
}

/// Makes the executor of one remote server: what runs the nodes a manifest gives a `remote`.
/// Asking may block (the remote's node types are fetched over the network each time a
/// manifest is checked): call it off the async reactor, as for the Python executor's types.
pub trait RemoteConnector: Send + Sync {
    /// An executor whose types are the remote's (its pipelines too, with `spec.pipeline`);
    /// the error says why the remote cannot be used.
    fn connect(&self, spec: &RemoteSpec) -> Result<Arc<dyn Executor>, String>;
}

/// One monotonic counter an executor exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counter {
    /// Prometheus-style name, e.g. `python_worker_failures_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

fn compile(rule: &ExecutorRule) -> Result<Rule, regex::Error> {
    Ok(Rule {
        pattern: Regex::new(&rule.pattern)?,
        kind: rule.executor,
        priority: rule.priority,
    })
}

/// Rules ready to match, highest priority first.
#[derive(Clone, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn compile(rules: &[ExecutorRule]) -> Result<Self, regex::Error> {
        let mut out = rules.iter().map(compile).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(Self(out))
    }

    fn first_match(&self, node_type: &str) -> Option<&Rule> {
        self.0.iter().find(|r| r.pattern.is_match(node_type))
    }
}

/// Why a node type could not be given an executor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("unknown node type `{node_type}`{}; known types: {}", did_you_mean(.suggestions), .known.join(", "))]
    UnknownType {
        node_type: String,
        suggestions: Vec<String>,
        known: Vec<String>,
    },
    #[error("runtime_hint `{hint}` asks for the {wanted} executor, which {}",
        if .available_in.is_empty() { format!("is not available for `{}`", .node_type) }
        else { format!("does not provide `{}` (it runs on: {})", .node_type,
            .available_in.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")) })]
    HintUnavailable {
        node_type: String,
        hint: RuntimeHint,
        wanted: ExecutorKind,
        available_in: Vec<ExecutorKind>,
    },
}

pub(crate) fn did_you_mean(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(
            " (did you mean {}?)",
            s.iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    }
}

/// The outcome of resolving a node type.
#[derive(Clone)]
pub struct Resolution {
    pub executor: Arc<dyn Executor>,
    pub info: NodeTypeInfo,
    /// Set when `auto` could not use the preferred executor.
    pub fallback_warning: Option<String>,
}

#[derive(Clone)]
struct Rule {
    pattern: Regex,
    kind: ExecutorKind,
    priority: i32,
}

/// Maps node types to executors. Assembled by [`crate::RuntimeBuilder`].
#[derive(Clone)]
pub struct ExecutorRegistry {
    executors: Vec<Arc<dyn Executor>>,
    remote: Option<Arc<dyn RemoteConnector>>,
    explicit: HashMap<String, ExecutorKind>,
    rules: Rules,
    default: ExecutorKind,
}

impl Default for ExecutorRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecutorRegistry {
    /// No executors; native is the default.
    pub fn new() -> Self {
        Self {
            executors: Vec::new(),
            remote: None,
            explicit: HashMap::new(),
            rules: Rules::default(),
            default: ExecutorKind::Native,
        }
    }

    /// Adds (or replaces) the executor of its kind.
    pub fn add_executor(&mut self, executor: Arc<dyn Executor>) -> &mut Self {
        self.executors.retain(|e| e.kind() != executor.kind());
        self.executors.push(executor);
        self
    }

    /// `node_type` prefers `kind`, above any rule.
    pub fn map(&mut self, node_type: &str, kind: ExecutorKind) -> &mut Self {
        self.explicit.insert(node_type.to_string(), kind);
        self
    }

    /// Types matching the rule's pattern prefer its executor; among matching rules the
    /// highest priority wins.
    pub fn add_rule(&mut self, rule: &ExecutorRule) -> Result<&mut Self, regex::Error> {
        self.rules.0.push(compile(rule)?);
        self.rules.0.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(self)
    }

    /// The same registry with only the executors of `kinds`: what an untrusted manifest is
    /// resolved against, so that the others are never even asked about its types.
    pub fn only(&self, kinds: &[ExecutorKind]) -> Self {
        let mut r = self.clone();
        r.executors.retain(|e| kinds.contains(&e.kind()));
        if !kinds.contains(&ExecutorKind::Remote) {
            r.remote = None;
        }
        r
    }

    /// Runs the nodes that have a `remote`.
    pub fn set_remote(&mut self, connector: Arc<dyn RemoteConnector>) -> &mut Self {
        self.remote = Some(connector);
        self
    }

    /// What runs the nodes that have a `remote`, if anything here can.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteConnector>> {
        self.remote.as_ref()
    }

    /// Every executor, for exporters of their counters.
    pub fn all(&self) -> &[Arc<dyn Executor>] {
        &self.executors
    }

    /// The executor used when no mapping or rule matches.
    pub fn set_default(&mut self, kind: ExecutorKind) -> &mut Self {
        self.default = kind;
        self
    }

    pub fn executor(&self, kind: ExecutorKind) -> Option<&Arc<dyn Executor>> {
        self.executors.iter().find(|e| e.kind() == kind)
    }

    /// The preferred executor kind for a type and why (for messages). `extra` (a manifest's
    /// own rules) come before the registry's.
    pub fn preference(&self, node_type: &str, extra: &Rules) -> (ExecutorKind, String) {
        if let Some(kind) = self.explicit.get(node_type) {
            return (*kind, "explicit mapping".to_string());
        }
        if let Some(rule) = extra
            .first_match(node_type)
            .or_else(|| self.rules.first_match(node_type))
        {
            return (rule.kind, format!("rule `{}`", rule.pattern.as_str()));
        }
        (self.default, "default".to_string())
    }

    /// Picks the executor for one node.
    pub fn resolve(&self, node_type: &str, hint: RuntimeHint) -> Result<Resolution, ResolveError> {
        self.resolve_with(node_type, hint, &Rules::default())
    }

    /// Like [`Self::resolve`], with a manifest's own rules before the registry's.
    pub fn resolve_with(
        &self,
        node_type: &str,
        hint: RuntimeHint,
        extra: &Rules,
    ) -> Result<Resolution, ResolveError> {
        let providers: Vec<(&Arc<dyn Executor>, NodeTypeInfo)> = self
            .executors
            .iter()
            .filter_map(|e| e.describe(node_type).map(|i| (e, i)))
            .collect();
        if providers.is_empty() {
            let known = self.known_types();
            return Err(ResolveError::UnknownType {
                node_type: node_type.to_string(),
                suggestions: close_matches(node_type, &known),
                known,
            });
        }
        let pick = |kind: ExecutorKind| providers.iter().find(|(e, _)| e.kind() == kind);
        let hinted = match hint {
            RuntimeHint::Rust => Some(ExecutorKind::Native),
            RuntimeHint::Python => Some(ExecutorKind::Python),
            RuntimeHint::Auto => None,
        };
        if let Some(wanted) = hinted {
            return match pick(wanted) {
                Some((e, info)) => Ok(Resolution {
                    executor: Arc::clone(e),
                    info: info.clone(),
                    fallback_warning: None,
                }),
                None => Err(ResolveError::HintUnavailable {
                    node_type: node_type.to_string(),
                    hint,
                    wanted,
                    available_in: providers.iter().map(|(e, _)| e.kind()).collect(),
                }),
            };
        }
        let (preferred, why) = self.preference(node_type, extra);
        if let Some((e, info)) = pick(preferred) {
            return Ok(Resolution {
                executor: Arc::clone(e),
                info: info.clone(),
                fallback_warning: None,
            });
        }
        let (e, info) = &providers[0];
        // Only a configured preference is worth a warning; the default simply defers to
        // whichever executor has the type.
        let fallback_warning = (why != "default").then(|| {
            format!(
                "node type `{node_type}` prefers the {preferred} executor ({why}), which does not \
                 provide it here; falling back to {}",
                e.kind()
            )
        });
        Ok(Resolution {
            executor: Arc::clone(e),
            info: info.clone(),
            fallback_warning,
        })
    }

    /// Every node type of every executor, sorted and unique.
    pub fn known_types(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .executors
            .iter()
            .flat_map(|e| e.node_types().into_iter().map(|i| i.name))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every node type with the executors that provide it (first = preferred).
    pub fn catalogue(&self) -> Vec<(NodeTypeInfo, Vec<ExecutorKind>)> {
        let mut out: Vec<(NodeTypeInfo, Vec<ExecutorKind>)> = Vec::new();
        for name in self.known_types() {
            let mut kinds = Vec::new();
            let mut info = None;
            for e in &self.executors {
                if let Some(i) = e.describe(&name) {
                    info.get_or_insert(i);
                    kinds.push(e.kind());
                }
            }
            if let Some(info) = info {
                out.push((info, kinds));
            }
        }
        out
    }
}

/// Names within a small edit distance (case-insensitive), closest first.
pub fn close_matches(name: &str, candidates: &[String]) -> Vec<String> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = candidates
        .iter()
        .map(|c| (levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= limit || c.to_lowercase().contains(&lower))
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c.clone()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_matches_finds_typos() {
        let known = vec![
            "PassThrough".to_string(),
            "TextTransform".to_string(),
            "AudioGain".to_string(),
        ];
        assert_eq!(close_matches("Pasthrough", &known), vec!["PassThrough"]);
        assert_eq!(
            close_matches("texttransfrom", &known),
            vec!["TextTransform"]
        );
        assert!(close_matches("Whisper", &known).is_empty());
    }
}
