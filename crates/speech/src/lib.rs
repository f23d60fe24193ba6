//! RemoteMedia speech: model-backed nodes (voice activity detection, recognition, synthesis)
//! running on ONNX Runtime, with models installed by `scripts/setup-models.sh`.

pub mod models;
pub mod silero_vad;

pub use models::ModelError;
pub use silero_vad::{SileroVADNode, SileroVad, SileroVadParams};

use remotemedia_core::NodeRegistry;

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<SileroVADNode>();
}
