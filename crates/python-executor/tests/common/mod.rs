//! What the python executor's tests share: a runtime whose Python nodes run in the checkout's
//! `.venv` (made by `scripts/setup-python.sh`) with the test nodes of `tests/py` importable.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use remotemedia_core::{NodeFailure, Packet, Runtime, RuntimeBuilder, RuntimeData, Session};
use remotemedia_python_executor::PythonExecutor;

pub fn executor() -> PythonExecutor {
    PythonExecutor::discover().with_python_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py"))
}

/// Native built-ins plus the python executor.
pub fn runtime() -> Runtime {
    RuntimeBuilder::new()
        .executor(Arc::new(executor()))
        .build()
        .unwrap()
}

/// A one-node pipeline of `node_type` with `params` (YAML flow mapping).
pub fn one_node(node_type: &str, params: &str) -> String {
    format!(
        "version: v1\nnodes:\n  - id: py\n    type: \"{node_type}\"\n    params: {params}\nconnections: []\n"
    )
}

pub async fn open(runtime: &Runtime, manifest: &str) -> Session {
    let pipeline = runtime
        .load(manifest, "test.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    runtime
        .open(&pipeline)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The next output or failure, with a generous timeout so a bug fails instead of hanging.
pub async fn next(session: &mut Session) -> Result<Packet, NodeFailure> {
    tokio::time::timeout(Duration::from_secs(30), session.recv())
        .await
        .expect("no output within 30 s")
        .expect("session output ended")
}

/// The next output, failing the test on a node failure.
pub async fn next_ok(session: &mut Session) -> Packet {
    next(session).await.unwrap_or_else(|f| panic!("{f}"))
}

pub fn text(p: &Packet) -> &str {
    match &p.data {
        RuntimeData::Text(t) => &t.text,
        other => panic!("expected text, got {other:?}"),
    }
}

pub fn json(p: &Packet) -> &serde_json::Value {
    match &p.data {
        RuntimeData::Json(v) => v,
        other => panic!("expected JSON, got {other:?}"),
    }
}

/// Processes whose parent is this test process.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}
