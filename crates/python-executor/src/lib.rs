//! The python executor: nodes written in Python, each run for each session in its own worker
//! process (`python -m remotemedia.worker`), fed over iceoryx2 shared memory.
//!
//! - [`PythonExecutor`]: the [`Executor`] that knows the Python node types (asking the
//!   `remotemedia` package once) and starts a worker per node instance.
//! - [`node::PythonNode`]: the runtime's side of one worker: in-flight window, outputs between
//!   inputs, death and hang detection, restart policy.
//! - [`process`]: spawning, handshake, heartbeat monitor, logs.
//! - [`ipc`] and [`frame`]: the shared-memory link and the binary frame on it.
//!
//! A crash in Python (an exception at import, a segfault in a native library, SIGKILL) ends
//! only that worker; the session gets an error naming the node, exit status and the last
//! lines of stderr, and the restart policy in the node's `worker` params decides what next.

pub mod config;
pub mod frame;
pub mod ipc;
pub mod node;
pub mod process;
pub mod shared;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::executor::Counter;
use remotemedia_core::node::PortSpec;
use remotemedia_core::{
    Executor, ExecutorKind, MediaType, Node, NodeContext, NodeError, NodeTypeInfo,
};
use serde::Deserialize;

pub use config::{RestartPolicy, WorkerConfig};
pub use node::PythonNode;
use node::worker_stats;

/// Names the Python interpreter that has the `remotemedia` package.
pub const PYTHON_ENV: &str = "REMOTEMEDIA_PYTHON";
/// Comma-separated extra modules whose import registers node types.
pub const MODULES_ENV: &str = "REMOTEMEDIA_PYTHON_MODULES";
/// The virtual environment `scripts/setup-python.sh` makes at the repository root.
const VENV_PYTHON: &str = ".venv/bin/python";
/// How long listing or describing node types may take (imports numpy and friends).
const CATALOGUE_TIMEOUT: Duration = Duration::from_secs(60);
/// `module:Class` descriptions kept; the least recently used goes first.
const DESCRIBED_MAX: usize = 64;

/// Node types run in Python workers.
pub struct PythonExecutor {
    python: PathBuf,
    modules: Vec<String>,
    python_path: Vec<PathBuf>,
    defaults: WorkerConfig,
    catalogue: OnceLock<Vec<NodeTypeInfo>>,
    /// `module:Class` types described lately, least recently used first.
    described: Mutex<Vec<NodeTypeInfo>>,
    /// Types that declare one worker for all sessions (`shared = True`).
    shared_types: Mutex<HashSet<String>>,
    /// Shared workers by node type, params and worker settings; they live as long as the
    /// executor, so a session opens on a warm worker.
    pools: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<shared::Pool>>>>>,
}

impl PythonExecutor {
    pub fn new(python: impl Into<PathBuf>) -> Self {
        Self {
            python: python.into(),
            modules: Vec::new(),
            python_path: Vec::new(),
            defaults: WorkerConfig::default(),
            catalogue: OnceLock::new(),
            described: Mutex::new(Vec::new()),
            shared_types: Mutex::default(),
            pools: Mutex::default(),
        }
    }

    /// The interpreter named by `REMOTEMEDIA_PYTHON`, else the repository's `.venv` (found
    /// from the working directory or the executable), else `python3`; extra node modules from
    /// `REMOTEMEDIA_PYTHON_MODULES`.
    pub fn discover() -> Self {
        let python = std::env::var_os(PYTHON_ENV)
            .map(PathBuf::from)
            .or_else(|| {
                let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
                starts.into_iter().flatten().find_map(|s| find_venv(&s))
            })
            .unwrap_or_else(|| PathBuf::from("python3"));
        let modules = std::env::var(MODULES_ENV).unwrap_or_default();
        Self::new(python).with_modules(modules.split(',').filter(|m| !m.is_empty()))
    }

    /// Also imports these modules (which register node types) in every worker.
    pub fn with_modules<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.modules.extend(modules.into_iter().map(Into::into));
        self
    }

    /// Runs workers with this interpreter instead.
    pub fn with_interpreter(mut self, python: impl Into<PathBuf>) -> Self {
        self.python = python.into();
        self
    }

    /// Lets workers import node code from `dir` (prepended to `PYTHONPATH`).
    pub fn with_python_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.python_path.push(dir.into());
        self
    }

    /// `PYTHONPATH` for workers: our directories, then the inherited value.
    fn pythonpath(&self) -> Option<std::ffi::OsString> {
        if self.python_path.is_empty() {
            return None;
        }
        let inherited = std::env::var_os("PYTHONPATH");
        let all = self
            .python_path
            .iter()
            .cloned()
            .chain(inherited.map(PathBuf::from));
        std::env::join_paths(all).ok()
    }

    /// Supervision defaults; each node's `worker` params override them field by field.
    pub fn with_defaults(mut self, defaults: WorkerConfig) -> Self {
        self.defaults = defaults;
        self
    }

    /// Runs the worker module with `args` and parses its JSON output.
    fn ask<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        let mut cmd = std::process::Command::new(&self.python);
        cmd.args(["-m", "remotemedia.worker"]).args(args);
        if let Some(path) = self.pythonpath() {
            cmd.env("PYTHONPATH", path);
        }
        if !self.modules.is_empty() {
            cmd.arg("--modules").arg(self.modules.join(","));
        }
        let out = run_with_timeout(cmd, CATALOGUE_TIMEOUT)
            .map_err(|e| format!("cannot run `{}`: {e}", self.python.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.trim().lines().last().unwrap_or("").to_string();
            return Err(format!(
                "`{} -m remotemedia.worker` failed: {last}",
                self.python.display()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable node list: {e}"))
    }

    fn catalogue(&self) -> &[NodeTypeInfo] {
        self.catalogue.get_or_init(|| match self.ask::<Vec<TypeDecl>>(&["--list"]) {
            Ok(types) => types.into_iter().map(|t| self.info(t)).collect(),
            Err(e) => {
                // Info, not a warning: a native-only pipeline is fine without Python.
                tracing::info!(
                    "Python nodes are unavailable ({e}); run ./scripts/setup-python.sh or set {PYTHON_ENV}"
                );
                Vec::new()
            }
        })
    }

    /// Describes a `module:Class` type by importing it in a child process (blocking: callers
    /// on an async reactor move it off first). One that does not import is still described,
    /// with open ports and params, so that starting it fails with the worker's own import
    /// error and traceback rather than a bare "unknown type". Recent answers are cached, a
    /// bounded number of them.
    fn describe_class(&self, node_type: &str) -> NodeTypeInfo {
        let cached = |cache: &mut Vec<NodeTypeInfo>| {
            let i = cache.iter().position(|i| i.name == node_type)?;
            let info = cache.remove(i);
            cache.push(info.clone());
            Some(info)
        };
        if let Some(info) = cached(&mut self.described()) {
            return info;
        }
        // Not under the lock: describing takes a process start.
        let info = match self.ask::<TypeDecl>(&["--describe", node_type]) {
            Ok(t) => self.info(TypeDecl {
                name: node_type.to_string(),
                ..t
            }),
            Err(e) => {
                tracing::warn!("Python node type `{node_type}` does not import: {e}");
                let port = |name: &str| PortSpec::new(name, MediaType::ALL);
                NodeTypeInfo {
                    name: node_type.to_string(),
                    description: format!("(does not import: {e})"),
                    params_schema: with_worker_params(serde_json::json!({"type": "object"})),
                    inputs: vec![port("in")],
                    outputs: vec![port("out")],
                }
            }
        };
        let mut cache = self.described();
        if cached(&mut cache).is_none() {
            if cache.len() >= DESCRIBED_MAX {
                cache.remove(0);
            }
            cache.push(info.clone());
        }
        info
    }

    fn described(&self) -> std::sync::MutexGuard<'_, Vec<NodeTypeInfo>> {
        lock(&self.described)
    }

    /// The runtime's description of a declared type; notes whether it is shared.
    fn info(&self, decl: TypeDecl) -> NodeTypeInfo {
        if decl.shared {
            lock(&self.shared_types).insert(decl.name.clone());
        }
        decl.into_info()
    }

    /// Whether `node_type` declares one worker for all sessions.
    fn is_shared(&self, node_type: &str) -> bool {
        if !node_type.contains(':') {
            self.catalogue();
        }
        lock(&self.shared_types).contains(node_type)
    }

    /// The shared workers for this node type and params, started on first use.
    async fn pool(
        &self,
        launch: &process::Launch,
        cfg: &WorkerConfig,
    ) -> Result<Arc<shared::Pool>, process::StartError> {
        let key = format!(
            "{}\n{}\n{}",
            launch.node_type,
            launch.params,
            serde_json::to_string(cfg).unwrap_or_default()
        );
        let cell = Arc::clone(lock(&self.pools).entry(key).or_default());
        let pool = cell
            .get_or_try_init(|| async {
                let id: String = launch
                    .node_type
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let launch = process::Launch {
                    session: Arc::from("shared"),
                    node_id: Arc::from(id),
                    shared: true,
                    ..launch.clone()
                };
                shared::Pool::start(&launch, cfg).await.map(Arc::new)
            })
            .await?;
        Ok(Arc::clone(pool))
    }
}

/// A lock that a panic elsewhere does not poison for good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn find_venv(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(VENV_PYTHON))
        .find(|p| p.is_file())
}

fn run_with_timeout(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: plain kill(2) of the child we spawned and have not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output();
    let _ = tx.send(());
    out
}

/// A node type as the worker module prints it.
#[derive(Deserialize)]
struct TypeDecl {
    #[serde(rename = "type")]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params_schema: serde_json::Value,
    inputs: Vec<PortDecl>,
    outputs: Vec<PortDecl>,
    /// One worker serves every session.
    #[serde(default)]
    shared: bool,
}

#[derive(Deserialize)]
struct PortDecl {
    name: String,
    media: Vec<MediaType>,
}

impl TypeDecl {
    fn into_info(self) -> NodeTypeInfo {
        let ports = |p: Vec<PortDecl>| {
            p.into_iter()
                .map(|p| PortSpec::new(&p.name, &p.media))
                .collect()
        };
        NodeTypeInfo {
            description: format!("{} (Python worker)", self.description),
            params_schema: with_worker_params(self.params_schema),
            name: self.name,
            inputs: ports(self.inputs),
            outputs: ports(self.outputs),
        }
    }
}

/// The schema of the `worker` params object, inlined so it can be placed in another schema.
fn worker_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::default()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut v = generator.into_root_schema_for::<WorkerConfig>().to_value();
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.insert(
            "description".into(),
            "How the runtime supervises this node's worker process.".into(),
        );
    }
    v
}

/// Adds the `worker` property every Python node accepts to the node's own params schema.
fn with_worker_params(schema: serde_json::Value) -> serde_json::Value {
    let mut schema = match schema {
        serde_json::Value::Object(o) => o,
        _ => serde_json::Map::from_iter([("type".to_string(), "object".into())]),
    };
    let props = schema
        .entry("properties")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert("worker".into(), worker_schema());
    }
    serde_json::Value::Object(schema)
}

#[async_trait]
impl Executor for PythonExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Python
    }

    fn describe(&self, node_type: &str) -> Option<NodeTypeInfo> {
        if node_type.contains(':') {
            return Some(self.describe_class(node_type));
        }
        self.catalogue()
            .iter()
            .find(|i| i.name == node_type)
            .cloned()
    }

    fn node_types(&self) -> Vec<NodeTypeInfo> {
        self.catalogue().to_vec()
    }

    fn counters(&self) -> Vec<Counter> {
        let (failures, restarts) = worker_stats();
        vec![
            Counter {
                name: "python_worker_failures_total",
                help: "Python worker processes that died, hung or broke the protocol.",
                value: failures,
            },
            Counter {
                name: "python_worker_restarts_total",
                help: "Python workers restarted after a failure.",
                value: restarts,
            },
        ]
    }

    async fn create(
        &self,
        node_type: &str,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        let mut params = params.clone();
        let overrides = params
            .as_object_mut()
            .and_then(|o| o.remove("worker"))
            .unwrap_or_else(|| serde_json::json!({}));
        let cfg = self
            .worker_config(&overrides)
            .map_err(|e| NodeError::fatal(format!("node `{}` ({node_type}): {e}", ctx.node_id)))?;
        let launch = process::Launch {
            python: self.python.clone(),
            pythonpath: self.pythonpath(),
            modules: self.modules.clone(),
            node_type: node_type.to_string(),
            params,
            session: Arc::clone(&ctx.session_id),
            node_id: Arc::clone(&ctx.node_id),
            service: String::new(),
            max_frame: cfg.max_frame_bytes,
            heartbeat_interval: cfg.heartbeat_interval(),
            heartbeat_timeout: cfg.heartbeat_timeout(),
            startup_timeout: cfg.startup_timeout(),
            shared: false,
        };
        if !cfg.per_session && self.is_shared(node_type) {
            let pool = self.pool(&launch, &cfg).await.map_err(|e| {
                NodeError::from_error(
                    &format!(
                        "python node `{}` ({node_type}) could not start its shared worker",
                        ctx.node_id
                    ),
                    &e,
                )
            })?;
            return Ok(Box::new(pool.open(&launch).await?));
        }
        Ok(Box::new(PythonNode::start(launch, cfg).await?))
    }
}

impl PythonExecutor {
    /// The executor's defaults with a node's `worker` params laid over them.
    fn worker_config(&self, overrides: &serde_json::Value) -> Result<WorkerConfig, String> {
        let mut merged = serde_json::to_value(&self.defaults).map_err(|e| e.to_string())?;
        if let (Some(m), Some(o)) = (merged.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                m.insert(k.clone(), v.clone());
            }
        }
        let cfg: WorkerConfig =
            serde_json::from_value(merged).map_err(|e| format!("worker params: {e}"))?;
        cfg.check()?;
        Ok(cfg)
    }
}
