//! RemoteMedia speech: model-backed nodes (voice activity detection, recognition, synthesis)
//! running on ONNX Runtime, with models installed by `scripts/setup-models.sh`.

pub mod device;
mod error;
pub mod espeak;
pub mod espeak_tts;
pub mod models;
pub mod moonshine;
pub mod onnx_graph;
pub mod piper;
pub mod sentence_splitter;
pub mod silero_vad;
pub mod tokenizer;
pub mod tts;

pub use espeak_tts::{EspeakTTSNode, EspeakTtsParams};
pub use models::ModelError;
pub use moonshine::{Moonshine, MoonshineASRNode, MoonshineParams, Sharing, Transcript};
pub use piper::{PiperTTSNode, PiperTtsParams, PiperVoice};
pub use silero_vad::{SileroVADNode, SileroVad, SileroVadParams};

use remotemedia_core::NodeRegistry;

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<SileroVADNode>();
    registry.register::<PiperTTSNode>();
    registry.register::<EspeakTTSNode>();
    registry.register::<MoonshineASRNode>();
    registry.register::<sentence_splitter::SentenceSplitter>();
}
