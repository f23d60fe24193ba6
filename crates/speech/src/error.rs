//! Why a model could not be found, loaded or run: its own module because both the model
//! loader (`models`) and device placement (`device`) report it, and `models` uses `device`.

use std::path::PathBuf;

/// The command that installs everything under the models directory; quoted in every error about a
/// missing file so the fix is one copy-paste away.
pub const SETUP_COMMAND: &str = "./scripts/setup-models.sh";

/// Why a model could not be found, loaded or run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("missing model file {}; install the models with {SETUP_COMMAND}", path.display())]
    Missing { path: PathBuf },
    #[error("could not load ONNX Runtime from {}: {reason}", path.display())]
    Runtime { path: PathBuf, reason: String },
    #[error("could not load model {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("inference failed on {}: {reason}", path.display())]
    Inference { path: PathBuf, reason: String },
    /// The requested device cannot be used (see `device::place`).
    #[error("{0}")]
    Device(String),
}

impl remotemedia_core::node::Retryable for ModelError {
    /// Missing files, unloadable models and unusable devices stay so, and a model that failed
    /// on an input fails again on it: none is worth a retry.
    fn is_retryable(&self) -> bool {
        false
    }
}
