//! RemoteMedia speech: model-backed nodes (voice activity detection, recognition, synthesis)
//! running on ONNX Runtime, with models installed by `scripts/setup-models.sh`.

use remotemedia_core::NodeRegistry;

/// Adds this crate's nodes to a registry.
pub fn register(_registry: &mut NodeRegistry) {}
