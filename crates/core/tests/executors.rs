//! Executor resolution: explicit mappings, regex rules by priority, the default, runtime hints
//! and the `auto` fallback.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_core::executor::ResolveError;
use remotemedia_core::node::PortSpec;
use remotemedia_core::{
    Executor, ExecutorKind, ExecutorRegistry, ExecutorRule, LoadError, ManifestPolicy, MediaType,
    Node, NodeContext, NodeError, NodeTypeInfo, Pipeline, PolicyError, RuntimeHint,
};

/// Stands in for the Python executor: provides `WhisperNode` and `PassThrough`.
struct FakePython;

fn info(name: &str) -> NodeTypeInfo {
    NodeTypeInfo {
        name: name.into(),
        description: String::new(),
        params_schema: serde_json::json!({"type": "object"}),
        inputs: vec![PortSpec::new("in", &[MediaType::Audio])],
        outputs: vec![PortSpec::new("out", &[MediaType::Text])],
    }
}

#[async_trait]
impl Executor for FakePython {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Python
    }
    fn describe(&self, t: &str) -> Option<NodeTypeInfo> {
        ["WhisperNode", "PassThrough"].contains(&t).then(|| info(t))
    }
    fn node_types(&self) -> Vec<NodeTypeInfo> {
        vec![info("WhisperNode"), info("PassThrough")]
    }
    async fn create(
        &self,
        _: &str,
        _: &serde_json::Value,
        _: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        Err(NodeError::fatal("not in this test"))
    }
}

fn registry(with_python: bool) -> ExecutorRegistry {
    let mut b = common::builder();
    if with_python {
        b = b.executor(Arc::new(FakePython));
    }
    b.build().unwrap().executors().clone()
}

fn kind(r: &ExecutorRegistry, t: &str, hint: RuntimeHint) -> ExecutorKind {
    r.resolve(t, hint).unwrap().executor.kind()
}

#[test]
fn default_then_rules_by_priority_then_explicit() {
    let mut r = registry(true);
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Auto),
        ExecutorKind::Native
    );
    // Only Python has WhisperNode: the default defers to it without a warning.
    let res = r.resolve("WhisperNode", RuntimeHint::Auto).unwrap();
    assert_eq!(res.executor.kind(), ExecutorKind::Python);
    assert!(res.fallback_warning.is_none());

    r.add_rule(&ExecutorRule::new("^Pass", ExecutorKind::Python, 10))
        .unwrap();
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Auto),
        ExecutorKind::Python
    );
    r.add_rule(&ExecutorRule::new("Through$", ExecutorKind::Native, 20))
        .unwrap();
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Auto),
        ExecutorKind::Native
    );
    r.map("PassThrough", ExecutorKind::Python);
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Auto),
        ExecutorKind::Python
    );
    // A hint overrides everything.
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Rust),
        ExecutorKind::Native
    );
}

#[test]
fn auto_falls_back_with_a_warning() {
    let mut r = registry(false);
    r.add_rule(&ExecutorRule::new("^Pass", ExecutorKind::Python, 100))
        .unwrap();
    let res = r.resolve("PassThrough", RuntimeHint::Auto).unwrap();
    assert_eq!(res.executor.kind(), ExecutorKind::Native);
    assert_eq!(
        res.fallback_warning.as_deref(),
        Some(
            "node type `PassThrough` prefers the python executor (rule `^Pass`), which does not provide it here; falling back to native"
        )
    );
    // The warning is kept on the validated pipeline too.
    let p = Pipeline::parse(
        "version: v1\nnodes: [{id: a, type: PassThrough}]",
        "m.yaml",
        &r,
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn explicit_hints_do_not_fall_back() {
    let r = registry(false);
    let err = r.resolve("PassThrough", RuntimeHint::Python).err().unwrap();
    assert!(matches!(
        err,
        ResolveError::HintUnavailable {
            wanted: ExecutorKind::Python,
            ..
        }
    ));
    let r = registry(true);
    let err = r.resolve("WhisperNode", RuntimeHint::Rust).err().unwrap();
    assert_eq!(
        err.to_string(),
        "runtime_hint `rust` asks for the native executor, which does not provide `WhisperNode` (it runs on: python)"
    );
}

#[test]
fn unknown_types_list_close_matches() {
    let r = registry(true);
    let err = r.resolve("WhisperNod", RuntimeHint::Auto).err().unwrap();
    match err {
        ResolveError::UnknownType {
            suggestions, known, ..
        } => {
            assert_eq!(suggestions, ["WhisperNode"]);
            assert!(known.contains(&"TextTransform".to_string()));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn manifest_rules_come_before_the_runtime_rules() {
    let rt = common::builder()
        .executor(Arc::new(FakePython))
        .rules([ExecutorRule::new("^Pass", ExecutorKind::Python, 10)])
        .build()
        .unwrap();
    let kind_of = |text: &str| rt.load(text, "m.yaml").map(|p| p.nodes[0].executor.kind());
    let node = "version: v1\nnodes: [{id: a, type: PassThrough}]\n";
    assert_eq!(kind_of(node).unwrap(), ExecutorKind::Python);
    let own_rule = format!(
        "{node}config:\n  executor_rules:\n    - {{pattern: Through$, executor: native}}\n"
    );
    assert_eq!(kind_of(&own_rule).unwrap(), ExecutorKind::Native);
    // A pattern that is not a regular expression is reported at its line.
    let bad =
        format!("{node}config:\n  executor_rules:\n    - {{pattern: '(', executor: native}}\n");
    let err = kind_of(&bad).unwrap_err().to_string();
    assert!(err.contains("m.yaml:5:"), "{err}");
    assert!(err.contains("not a regular expression"), "{err}");
}

/// A Python executor that counts the types it is asked about.
#[derive(Default)]
struct Counting(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl Executor for Counting {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Python
    }
    fn describe(&self, t: &str) -> Option<NodeTypeInfo> {
        self.0.lock().unwrap().push(t.to_string());
        Some(info(t))
    }
    fn node_types(&self) -> Vec<NodeTypeInfo> {
        Vec::new()
    }
    async fn create(
        &self,
        _: &str,
        _: &serde_json::Value,
        _: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        Err(NodeError::fatal("not in this test"))
    }
}

#[test]
fn untrusted_manifests_meet_the_policy_before_any_type_is_resolved() {
    let python = Arc::new(Counting::default());
    let rt = common::builder()
        .executor(Arc::clone(&python) as Arc<dyn Executor>)
        .build()
        .unwrap();
    let policy = ManifestPolicy {
        max_nodes: 2,
        ..Default::default()
    };
    let refused =
        |text: &str, policy: &ManifestPolicy| match rt.load_untrusted(text, "client", policy) {
            Err(LoadError::Refused(e)) => e,
            other => panic!("{:?}", other.map(|p| p.name.clone())),
        };
    let class = "version: v1\nnodes: [{id: a, type: 'evil.module:Node'}]\n";
    assert!(matches!(
        refused(class, &policy),
        PolicyError::Python { .. }
    ));
    let hinted = "version: v1\nnodes: [{id: a, type: PassThrough, runtime_hint: python}]\n";
    assert!(matches!(
        refused(hinted, &policy),
        PolicyError::Python { .. }
    ));
    assert!(
        python.0.lock().unwrap().is_empty(),
        "{:?}",
        python.0.lock().unwrap()
    );

    let three = "version: v1\nnodes: [{id: a, type: PassThrough}, {id: b, type: PassThrough}, {id: c, type: PassThrough}]\n";
    assert!(refused(three, &policy).is_size_limit());
    let small = ManifestPolicy {
        max_bytes: 10,
        ..Default::default()
    };
    assert!(refused(class, &small).is_size_limit());
    let narrow = ManifestPolicy {
        allowed_types: vec!["TextTransform".into()],
        ..Default::default()
    };
    let pass = "version: v1\nnodes: [{id: a, type: PassThrough}]\n";
    assert!(matches!(
        refused(pass, &narrow),
        PolicyError::TypeNotAllowed { .. }
    ));
    // An allowed native manifest loads, and only native executors were consulted.
    let p = rt.load_untrusted(pass, "client", &policy).unwrap();
    assert_eq!(p.nodes[0].executor.kind(), ExecutorKind::Native);
    // With Python allowed, the class is described by the Python executor.
    let open = ManifestPolicy {
        allow_python: true,
        ..Default::default()
    };
    rt.load_untrusted(class, "client", &open).unwrap();
    assert!(
        python
            .0
            .lock()
            .unwrap()
            .contains(&"evil.module:Node".to_string())
    );
}
