//! RemoteMedia audio: reading and writing audio files and native audio nodes.

pub mod chunker;
pub mod decode;
pub mod energy_vad;
pub mod format;
pub mod gain;
mod polyphase;
pub mod resample;
pub mod segmenter;
pub mod vad;
pub mod wav;

pub use chunker::AudioChunker;
pub use energy_vad::EnergyVad;
pub use format::FormatConverter;
pub use gain::AudioGain;
pub use resample::AudioResample;
pub use segmenter::SpeechSegmenter;
pub use vad::{VadEvent, VadTiming, VadTracker};

use remotemedia_core::{AudioFrame, NodeError, NodeRegistry};

/// Fails when `frame` differs in rate or channel count from the stream's format so far (nodes
/// that buffer cannot mix formats).
pub(crate) fn check_format(
    node: &str,
    format: Option<(u32, u16)>,
    frame: &AudioFrame,
) -> Result<(), NodeError> {
    match format {
        Some((rate, ch)) if (rate, ch) != (frame.sample_rate, frame.channels) => {
            Err(NodeError::fatal(format!(
                "{node}: audio format changed mid-stream from {rate} Hz × {ch} ch to {} Hz × {} ch",
                frame.sample_rate, frame.channels
            )))
        }
        _ => Ok(()),
    }
}

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<AudioChunker>();
    registry.register::<AudioGain>();
    registry.register::<EnergyVad>();
    registry.register::<FormatConverter>();
    registry.register::<SpeechSegmenter>();
    registry.register::<AudioResample>();
}
