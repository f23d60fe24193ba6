//! RemoteMedia speech: model-backed nodes (voice activity detection, recognition, synthesis)
//! running on ONNX Runtime, with models installed by `scripts/setup-models.sh`.

pub mod device;
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
pub use moonshine::{Moonshine, MoonshineASRNode, MoonshineParams, Transcript};
pub use piper::{PiperTTSNode, PiperTtsParams, PiperVoice};
pub use silero_vad::{SileroVADNode, SileroVad, SileroVadParams};

use remotemedia_core::{AudioFrame, NodeError, NodeRegistry};

/// Fails unless `frame` is mono at `rate`, saying what to put in front of the node.
pub(crate) fn expect_mono(node: &str, rate: u32, frame: &AudioFrame) -> Result<(), NodeError> {
    if frame.channels == 1 && frame.sample_rate == rate {
        return Ok(());
    }
    let (channels, fix) = if frame.channels == 1 {
        ("1 channel".to_string(), "resample first")
    } else {
        (
            format!("{} channels", frame.channels),
            "downmix and resample first",
        )
    };
    Err(NodeError::fatal(format!(
        "{node} expects mono {rate} Hz audio, got {channels} at {} Hz; {fix}",
        frame.sample_rate
    )))
}

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<SileroVADNode>();
    registry.register::<PiperTTSNode>();
    registry.register::<EspeakTTSNode>();
    registry.register::<MoonshineASRNode>();
    registry.register::<sentence_splitter::SentenceSplitter>();
}
