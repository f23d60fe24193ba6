//! The composition root: the runtime a user gets, assembled in one place.
//!
//! Every entry point (the `remotemedia` CLI and its `serve`, the Python SDK, the tests and
//! benches above the node crates) starts from [`builder`], so a node family, an executor or a
//! default rule is added here and nowhere else. Crates below this one never assemble a
//! runtime; their own tests use [`RuntimeBuilder`] with just the families they test.

use std::path::PathBuf;
use std::sync::Arc;

pub use remotemedia_core::{ExecutorKind, ExecutorRule, Runtime, RuntimeBuilder};
pub use remotemedia_python_executor::PythonExecutor;
pub use remotemedia_speech::device::Device;
pub use remotemedia_speech::models::models_dir;

/// How the runtime is assembled; the defaults are what `remotemedia run` uses.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where speech models run (`auto`: CUDA when built with it and available, else the CPU).
    pub device: Device,
    /// The interpreter of Python workers; `None` finds one ([`PythonExecutor::discover`]).
    pub python: Option<PathBuf>,
    /// Directories Python workers may import node code from, before `PYTHONPATH`.
    pub python_path: Vec<PathBuf>,
    /// Executor rules of the operator, beside [`default_rules`].
    pub rules: Vec<ExecutorRule>,
}

/// Where node types prefer to run unless a manifest or the operator says otherwise: Whisper
/// nodes in Python workers.
pub fn default_rules() -> Vec<ExecutorRule> {
    vec![ExecutorRule::new("^Whisper", ExecutorKind::Python, 10)]
}

/// Every node family (core built-ins, audio, speech, the LLM), the Python and remote executors
/// and the default rules, with default options.
pub fn builder() -> RuntimeBuilder {
    builder_with(Options::default())
}

/// [`builder`] with options.
pub fn builder_with(options: Options) -> RuntimeBuilder {
    // The device is read by the speech nodes when they load a model.
    remotemedia_speech::device::set_default(options.device);
    let mut python = PythonExecutor::discover();
    if let Some(interpreter) = options.python {
        python = python.with_interpreter(interpreter);
    }
    for dir in options.python_path {
        python = python.with_python_path(dir);
    }
    let builder = RuntimeBuilder::new()
        .nodes(remotemedia_audio::register)
        .nodes(remotemedia_speech::register);
    #[cfg(feature = "llm")]
    let builder = builder.nodes(remotemedia_llm::register);
    builder
        .executor(Arc::new(python))
        .remote(Arc::new(remotemedia_remote::Remotes))
        .rules(default_rules())
        .rules(options.rules)
}

/// The runtime of [`builder`]. The default rules are valid, so this cannot fail.
pub fn runtime() -> Runtime {
    builder()
        .build()
        .unwrap_or_else(|e| unreachable!("the default executor rules are valid: {e}"))
}
