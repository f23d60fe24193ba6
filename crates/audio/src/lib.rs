//! RemoteMedia audio: reading and writing audio files and native audio nodes.

pub mod decode;
pub mod gain;
pub mod vad;
pub mod wav;

pub use gain::AudioGain;
pub use vad::{VadEvent, VadTiming, VadTracker};

use remotemedia_core::NodeRegistry;

/// Adds this crate's nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<AudioGain>();
}
