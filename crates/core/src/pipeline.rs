//! Turning manifest text into a checked [`Pipeline`]: every problem is found before a session
//! starts, and each is reported with the field, the node id and the line and column.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::data::MediaType;
use crate::executor::{Executor, ExecutorRegistry, ExecutorRule, RemoteSpec, Resolution, Rules};
use crate::manifest::{self, DropPolicy, Manifest, NodeDecl, Pos, SourceMap};
use crate::node::NodeTypeInfo;

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Field path, e.g. `nodes[2].params.threshold`.
    pub path: String,
    pub pos: Option<Pos>,
    pub message: String,
}

/// Every problem found in a manifest, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// File name, or `<manifest>` for text given directly.
    pub origin: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.origin)?;
            if let Some(p) = d.pos {
                write!(f, ":{}:{}", p.line, p.col)?;
            }
            if d.path.is_empty() {
                write!(f, ": {}", d.message)?;
            } else {
                write!(f, ": {}: {}", d.path, d.message)?;
            }
        }
        Ok(())
    }
}

/// A node of a checked pipeline.
#[derive(Clone)]
pub struct PipelineNode {
    pub id: Arc<str>,
    pub node_type: String,
    pub params: Value,
    pub executor: Arc<dyn Executor>,
    pub info: NodeTypeInfo,
    pub input_names: Vec<Arc<str>>,
    pub output_names: Vec<Arc<str>>,
}

/// A checked edge between ports (indices into nodes and their port lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineEdge {
    pub from: usize,
    pub from_port: usize,
    pub to: usize,
    pub to_port: usize,
    pub capacity: usize,
    pub drop_policy: DropPolicy,
    /// Into a feedback port: against the flow (see [`crate::node::Ports::feedback`]).
    pub feedback: bool,
}

/// A validated pipeline, ready to open sessions from.
#[derive(Clone)]
pub struct Pipeline {
    pub manifest: Manifest,
    pub name: Arc<str>,
    pub nodes: Vec<PipelineNode>,
    pub edges: Vec<PipelineEdge>,
    /// Node indices in topological order (upstream first).
    pub order: Vec<usize>,
    /// Notes that did not stop validation (e.g. an executor fallback).
    pub warnings: Vec<String>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.id).collect::<Vec<_>>(),
            )
            .field("edges", &self.edges)
            .finish()
    }
}

impl Pipeline {
    /// Parses and checks manifest text (YAML or JSON). `origin` names it in messages.
    pub fn parse(
        text: &str,
        origin: &str,
        executors: &ExecutorRegistry,
    ) -> Result<Pipeline, ManifestError> {
        Self::read_then(text, origin, |checker, manifest| {
            checker.check(manifest, executors)
        })
    }

    /// Parses manifest text and checks its shape, without resolving any node type: what a
    /// policy looks at before anything is loaded.
    pub fn read(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        Self::read_then(text, origin, |_, manifest| Some(manifest))
    }

    /// Reads the manifest, then `then` checks more; every problem found is reported.
    fn read_then<T>(
        text: &str,
        origin: &str,
        then: impl FnOnce(&mut Checker<'_>, Manifest) -> Option<T>,
    ) -> Result<T, ManifestError> {
        let fail = |diagnostics| ManifestError {
            origin: origin.to_string(),
            diagnostics,
        };
        let (value, map) = manifest::source::parse(text).map_err(|e| {
            fail(vec![Diagnostic {
                path: String::new(),
                pos: Some(e.pos),
                message: format!("syntax error: {}", e.message),
            }])
        })?;
        let mut checker = Checker::new(&map, &value);
        let done = checker
            .read_manifest(&value)
            .and_then(|manifest| then(&mut checker, manifest));
        done.ok_or_else(|| fail(checker.finish()))
    }

    /// Checks a manifest built in code (no positions to report).
    pub fn from_manifest(
        manifest: &Manifest,
        executors: &ExecutorRegistry,
    ) -> Result<Pipeline, ManifestError> {
        let value = serde_json::to_value(manifest).unwrap_or(Value::Null);
        let text = serde_json::to_string(&value).unwrap_or_default();
        Self::parse(&text, "<manifest>", executors)
    }

    /// Input ports fed by no connection: they take the session's input.
    pub fn entry_ports(&self) -> Vec<(usize, usize)> {
        let fed: HashSet<(usize, usize)> = self.edges.iter().map(|e| (e.to, e.to_port)).collect();
        self.order
            .iter()
            .flat_map(|&n| (0..self.nodes[n].input_names.len()).map(move |p| (n, p)))
            .filter(|&(n, p)| !fed.contains(&(n, p)) && !self.nodes[n].info.inputs[p].feedback)
            .collect()
    }

    /// Output ports that feed no connection: they go to the session's output stream.
    pub fn exit_ports(&self) -> Vec<(usize, usize)> {
        let used: HashSet<(usize, usize)> =
            self.edges.iter().map(|e| (e.from, e.from_port)).collect();
        self.order
            .iter()
            .flat_map(|&n| (0..self.nodes[n].output_names.len()).map(move |p| (n, p)))
            .filter(|np| !used.contains(np))
            .collect()
    }

    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| &*n.id == id)
    }
}

fn manifest_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        jsonschema::validator_for(&manifest::json_schema())
            .expect("the generated manifest schema is a valid JSON Schema")
    })
}

/// `/nodes/2/params/x` → `nodes[2].params.x`.
fn display_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

struct Checker<'a> {
    map: &'a SourceMap,
    ids: Vec<Option<String>>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    fn new(map: &'a SourceMap, value: &Value) -> Self {
        let ids = value
            .get("nodes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|n| n.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            map,
            ids,
            diagnostics: Vec::new(),
        }
    }

    /// Records a problem at a JSON pointer, naming the node when the pointer is inside one.
    fn report(&mut self, pointer: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(rest) = pointer.strip_prefix("/nodes/") {
            let idx = rest.split('/').next().and_then(|s| s.parse::<usize>().ok());
            if let Some(Some(id)) = idx.and_then(|i| self.ids.get(i)) {
                message = format!("node `{id}`: {message}");
            }
        }
        self.diagnostics.push(Diagnostic {
            path: display_path(pointer),
            pos: self.map.locate(pointer),
            message,
        });
    }

    /// Reports a JSON Schema error; an unknown field is reported at the field itself.
    fn report_schema_error(
        &mut self,
        pointer: &str,
        err: &jsonschema::ValidationError<'_>,
        prefix: &str,
    ) {
        if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
            err.kind()
        {
            for field in unexpected {
                let at = format!("{pointer}/{}", field.replace('~', "~0").replace('/', "~1"));
                self.report(&at, format!("{prefix}unknown field `{field}`"));
            }
            return;
        }
        self.report(pointer, format!("{prefix}{err}"));
    }

    fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics
            .sort_by_key(|d| d.pos.map(|p| (p.line, p.col)).unwrap_or((usize::MAX, 0)));
        self.diagnostics
    }

    fn read_manifest(&mut self, value: &Value) -> Option<Manifest> {
        if !value.is_object() {
            self.report("", "a manifest is a mapping with `version` and `nodes`");
            return None;
        }
        for err in manifest_validator().iter_errors(value) {
            self.report_schema_error(err.instance_path().as_str(), &err, "");
        }
        if !self.diagnostics.is_empty() {
            return None;
        }
        match serde_path_to_error::deserialize::<_, Manifest>(value) {
            Ok(m) => Some(m),
            Err(e) => {
                let pointer: String = e
                    .path()
                    .iter()
                    .map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => format!("/{index}"),
                        serde_path_to_error::Segment::Map { key } => format!("/{key}"),
                        _ => String::new(),
                    })
                    .collect();
                self.report(&pointer, e.inner().to_string());
                None
            }
        }
    }

    /// The executor of a node's `remote`, and its type there.
    fn resolve_remote(
        &mut self,
        i: usize,
        n: &NodeDecl,
        spec: &RemoteSpec,
        executors: &ExecutorRegistry,
    ) -> Option<Resolution> {
        let at = |field: &str| format!("/nodes/{i}/{field}");
        if n.runtime_hint != crate::manifest::RuntimeHint::Auto {
            self.report(
                &at("runtime_hint"),
                "the remote's own rules decide where a remote node runs: leave runtime_hint out",
            );
        }
        let is_pipeline = n.node_type == manifest::REMOTE_PIPELINE;
        match (&spec.pipeline, is_pipeline) {
            (Some(p), false) => {
                let message = format!(
                    "a node running the remote pipeline `{p}` has type `{}`",
                    manifest::REMOTE_PIPELINE
                );
                self.report(&at("type"), message);
                return None;
            }
            (None, true) => {
                self.report(
                    &at("remote"),
                    "name the remote's pipeline this node runs: `pipeline: <name>`",
                );
                return None;
            }
            _ => {}
        }
        let Some(connector) = executors.remote() else {
            self.report(&at("remote"), "remote nodes cannot be used here");
            return None;
        };
        let executor = match connector.connect(spec) {
            Ok(e) => e,
            Err(e) => {
                self.report(&at("remote"), e);
                return None;
            }
        };
        // (The connector has checked that a remote pipeline exists.)
        let Some(info) = executor.describe(&n.node_type) else {
            let known: Vec<String> = executor.node_types().into_iter().map(|t| t.name).collect();
            let suggestions = crate::executor::close_matches(&n.node_type, &known);
            self.report(
                &at("type"),
                format!(
                    "{} has no node type `{}`{}; its types: {}",
                    spec.endpoint,
                    n.node_type,
                    crate::executor::did_you_mean(&suggestions),
                    known.join(", ")
                ),
            );
            return None;
        };
        Some(Resolution {
            executor,
            info,
            fallback_warning: None,
        })
    }

    /// The manifest's executor rules, compiled; a bad pattern is reported at its line.
    fn executor_rules(&mut self, rules: &[ExecutorRule]) -> Rules {
        for (i, r) in rules.iter().enumerate() {
            if r.executor == crate::executor::ExecutorKind::Remote {
                self.report(
                    &format!("/config/executor_rules/{i}/executor"),
                    "a rule cannot send nodes to a remote server: give the node a `remote`",
                );
            }
            if let Err(e) = Rules::compile(std::slice::from_ref(r)) {
                self.report(
                    &format!("/config/executor_rules/{i}/pattern"),
                    format!("not a regular expression: {e}"),
                );
            }
        }
        Rules::compile(rules).unwrap_or_default()
    }

    fn check(&mut self, manifest: Manifest, executors: &ExecutorRegistry) -> Option<Pipeline> {
        if manifest.nodes.is_empty() {
            self.report("/nodes", "the pipeline is empty: add at least one node");
        }
        let mut warnings = Vec::new();

        // Ids.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, n) in manifest.nodes.iter().enumerate() {
            if let Some(first) = seen.insert(n.id.as_str(), i) {
                let at = self
                    .map
                    .locate(&format!("/nodes/{first}/id"))
                    .map(|p| format!(" (line {})", p.line))
                    .unwrap_or_default();
                self.report(
                    &format!("/nodes/{i}/id"),
                    format!("duplicate id: nodes[{first}] already uses it{at}"),
                );
            }
        }

        // Types, executors and params.
        let rules = self.executor_rules(&manifest.config.executor_rules);
        let mut resolved = Vec::with_capacity(manifest.nodes.len());
        for (i, n) in manifest.nodes.iter().enumerate() {
            let r = match &n.remote {
                Some(spec) => self.resolve_remote(i, n, spec, executors),
                None => match executors.resolve_with(&n.node_type, n.runtime_hint, &rules) {
                    Ok(r) => {
                        if let Some(w) = &r.fallback_warning {
                            tracing::warn!(node = %n.id, "{w}");
                            warnings.push(format!("node `{}`: {w}", n.id));
                        }
                        Some(r)
                    }
                    Err(e) => {
                        let field = match e {
                            crate::executor::ResolveError::UnknownType { .. } => "type",
                            crate::executor::ResolveError::HintUnavailable { .. } => "runtime_hint",
                        };
                        self.report(&format!("/nodes/{i}/{field}"), e.to_string());
                        None
                    }
                },
            };
            if let Some(r) = &r {
                self.check_params(i, &n.params, &r.info.params_schema);
            }
            resolved.push(r);
        }

        // Connections.
        let mut edges = Vec::new();
        let mut edge_set = HashSet::new();
        for (j, c) in manifest.connections.iter().enumerate() {
            let from = self.endpoint(&manifest, &resolved, j, "from", &c.from, false);
            let to = self.endpoint(&manifest, &resolved, j, "to", &c.to, true);
            let (Some((from, from_port)), Some((to, to_port))) = (from, to) else {
                continue;
            };
            if from == to {
                self.report(
                    &format!("/connections/{j}"),
                    format!("node `{}` is connected to itself", manifest.nodes[from].id),
                );
                continue;
            }
            if !edge_set.insert((from, from_port, to, to_port)) {
                self.report(
                    &format!("/connections/{j}"),
                    format!("duplicate connection {} → {}", c.from, c.to),
                );
                continue;
            }
            let mut feedback = false;
            if let (Some(a), Some(b)) = (&resolved[from], &resolved[to]) {
                let gives = &a.info.outputs[from_port];
                let takes = &b.info.inputs[to_port];
                feedback = takes.feedback;
                // Control reaches every node, whatever its ports take.
                let compatible =
                    |m: &MediaType| *m == MediaType::Control || takes.media.contains(m);
                if !gives.media.iter().any(compatible) {
                    self.report(
                        &format!("/connections/{j}"),
                        format!(
                            "incompatible media: `{}.{}` gives {} but `{}.{}` takes {}",
                            manifest.nodes[from].id,
                            gives.name,
                            media_list(&gives.media),
                            manifest.nodes[to].id,
                            takes.name,
                            media_list(&takes.media)
                        ),
                    );
                    continue;
                }
            }
            edges.push(PipelineEdge {
                from,
                from_port,
                to,
                to_port,
                capacity: c.capacity.unwrap_or(manifest.config.edges.capacity).max(1),
                drop_policy: c.drop_policy.unwrap_or(manifest.config.edges.drop_policy),
                feedback,
            });
        }

        let order = self.topological_order(&manifest, &edges);
        if !self.diagnostics.is_empty() {
            return None;
        }
        let nodes = manifest
            .nodes
            .iter()
            .zip(resolved)
            .filter_map(|(n, r)| {
                let r = r?;
                Some(PipelineNode {
                    id: n.id.as_str().into(),
                    node_type: n.node_type.clone(),
                    params: n.params.clone(),
                    input_names: r
                        .info
                        .inputs
                        .iter()
                        .map(|p| p.name.as_str().into())
                        .collect(),
                    output_names: r
                        .info
                        .outputs
                        .iter()
                        .map(|p| p.name.as_str().into())
                        .collect(),
                    executor: r.executor,
                    info: r.info,
                })
            })
            .collect();
        let name = manifest
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "pipeline".to_string());
        Some(Pipeline {
            name: name.into(),
            manifest,
            nodes,
            edges,
            order: order?,
            warnings,
        })
    }

    fn check_params(&mut self, i: usize, params: &Value, schema: &Value) {
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => v,
            Err(e) => {
                self.report(
                    &format!("/nodes/{i}/type"),
                    format!("the node type's params schema is invalid: {e}"),
                );
                return;
            }
        };
        let base = format!("/nodes/{i}/params");
        for err in validator.iter_errors(params) {
            let pointer = format!("{base}{}", err.instance_path().as_str());
            self.report_schema_error(&pointer, &err, "invalid params: ");
        }
    }

    /// Resolves `node[.port]` of connection `j` to (node index, port index).
    fn endpoint(
        &mut self,
        manifest: &Manifest,
        resolved: &[Option<crate::executor::Resolution>],
        j: usize,
        side: &str,
        text: &str,
        is_input: bool,
    ) -> Option<(usize, usize)> {
        let pointer = format!("/connections/{j}/{side}");
        let (node, port) = match text.split_once('.') {
            Some((n, p)) => (n, Some(p)),
            None => (text, None),
        };
        let Some(idx) = manifest.nodes.iter().position(|n| n.id == node) else {
            let ids: Vec<&str> = manifest.nodes.iter().map(|n| n.id.as_str()).collect();
            self.report(
                &pointer,
                format!("no node `{node}` (nodes: {})", ids.join(", ")),
            );
            return None;
        };
        let info = &resolved[idx].as_ref()?.info;
        let (ports, what) = if is_input {
            (&info.inputs, "input")
        } else {
            (&info.outputs, "output")
        };
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        match port {
            Some(p) => match names.iter().position(|n| *n == p) {
                Some(pi) => Some((idx, pi)),
                None => {
                    self.report(
                        &pointer,
                        format!(
                            "node `{node}` ({}) has no {what} port `{p}` ({what} ports: {})",
                            info.name,
                            list_or_none(&names)
                        ),
                    );
                    None
                }
            },
            None if ports.len() == 1 => Some((idx, 0)),
            // A feedback port is always named: the one other input is meant.
            None if is_input && ports.iter().filter(|p| !p.feedback).count() == 1 => {
                ports.iter().position(|p| !p.feedback).map(|pi| (idx, pi))
            }
            None if ports.is_empty() => {
                self.report(
                    &pointer,
                    format!("node `{node}` ({}) has no {what} ports", info.name),
                );
                None
            }
            None => {
                self.report(
                    &pointer,
                    format!(
                        "node `{node}` has several {what} ports ({}): write `{node}.<port>`",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// Kahn's algorithm; on a cycle, reports the nodes that form it.
    fn topological_order(
        &mut self,
        manifest: &Manifest,
        edges: &[PipelineEdge],
    ) -> Option<Vec<usize>> {
        let n = manifest.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
        for e in edges.iter().filter(|e| !e.feedback) {
            indegree[e.to] += 1;
            next[e.from].push(e.to);
        }
        let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop() {
            order.push(i);
            for &t in next[i].iter().rev() {
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(t);
                }
            }
        }
        if order.len() == n {
            return Some(order);
        }
        // Walk backwards through unfinished nodes until one repeats: that walk is a cycle.
        let stuck: Vec<usize> = (0..n).filter(|&i| indegree[i] > 0).collect();
        let mut prev: Vec<Option<usize>> = vec![None; n];
        for e in edges.iter().filter(|e| !e.feedback) {
            if indegree[e.from] > 0 && indegree[e.to] > 0 {
                prev[e.to] = Some(e.from);
            }
        }
        let mut path = vec![stuck[0]];
        let mut cur = stuck[0];
        while let Some(p) = prev[cur] {
            if let Some(pos) = path.iter().position(|&x| x == p) {
                let mut cycle: Vec<usize> = path[pos..].to_vec();
                cycle.reverse();
                let first = *cycle.iter().min().unwrap_or(&cycle[0]);
                let rot = cycle.iter().position(|&x| x == first).unwrap_or(0);
                cycle.rotate_left(rot);
                let mut names: Vec<&str> = cycle
                    .iter()
                    .map(|&i| manifest.nodes[i].id.as_str())
                    .collect();
                names.push(names[0]);
                self.report(
                    "/connections",
                    format!("the connections form a cycle: {}", names.join(" → ")),
                );
                return None;
            }
            path.push(p);
            cur = p;
        }
        self.report("/connections", "the connections form a cycle");
        None
    }
}

fn media_list(m: &[MediaType]) -> String {
    if m.len() == MediaType::ALL.len() {
        return "anything".to_string();
    }
    m.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join("|")
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
