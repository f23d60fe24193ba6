//! LLM nodes: a GGUF chat model in-process on llama.cpp, shared by every session.

pub mod engine;
pub mod node;
mod sentences;

use remotemedia_core::NodeRegistry;

pub use engine::{End, Engine, EngineConfig, Event, Finish, LlmError, Message, Sampling};
pub use node::{LlmNode, LlmParams};

/// Registers the LLM node types.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<LlmNode>();
}
