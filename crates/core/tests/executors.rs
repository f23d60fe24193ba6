//! Executor resolution: explicit mappings, regex rules by priority, the default, runtime hints
//! and the `auto` fallback.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_core::executor::ResolveError;
use remotemedia_core::node::PortSpec;
use remotemedia_core::{
    Executor, ExecutorKind, ExecutorRegistry, MediaType, Node, NodeContext, NodeError,
    NodeTypeInfo, Pipeline, RuntimeHint,
};

/// Stands in for the Python executor: provides `WhisperNode` and `PassThrough`.
struct FakePython;

fn info(name: &str) -> NodeTypeInfo {
    NodeTypeInfo {
        name: name.into(),
        description: String::new(),
        params_schema: serde_json::json!({"type": "object"}),
        inputs: vec![PortSpec {
            name: "in".into(),
            media: vec![MediaType::Audio],
        }],
        outputs: vec![PortSpec {
            name: "out".into(),
            media: vec![MediaType::Text],
        }],
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
    let mut r = ExecutorRegistry::new();
    r.add_executor(Arc::new(common::registry()));
    if with_python {
        r.add_executor(Arc::new(FakePython));
    }
    r
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

    r.add_rule("^Pass", ExecutorKind::Python, 10).unwrap();
    assert_eq!(
        kind(&r, "PassThrough", RuntimeHint::Auto),
        ExecutorKind::Python
    );
    r.add_rule("Through$", ExecutorKind::Native, 20).unwrap();
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
    r.add_rule("^Pass", ExecutorKind::Python, 100).unwrap();
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
