//! RemoteMedia audio: reading and writing audio files and native audio nodes.

pub mod barge_in;
pub mod chunker;
pub mod decode;
pub mod energy_vad;
pub mod format;
pub mod frame;
pub mod gain;
mod pcm;
pub mod playout;
mod polyphase;
pub mod resample;
pub mod segmenter;
pub mod vad;
pub mod wav;

pub use barge_in::BargeIn;
pub use chunker::AudioChunker;
pub use energy_vad::EnergyVad;
pub use format::FormatConverter;
pub use gain::AudioGain;
pub use playout::Playout;
pub use resample::AudioResample;
pub use segmenter::SpeechSegmenter;
pub use vad::{VadEvent, VadTiming, VadTracker};

use remotemedia_core::NodeRegistry;

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<BargeIn>();
    registry.register::<AudioChunker>();
    registry.register::<AudioGain>();
    registry.register::<EnergyVad>();
    registry.register::<FormatConverter>();
    registry.register::<Playout>();
    registry.register::<SpeechSegmenter>();
    registry.register::<AudioResample>();
}
