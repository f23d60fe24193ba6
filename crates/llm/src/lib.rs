//! LLM nodes: a GGUF chat model in-process on llama.cpp, shared by every session, and the same
//! contract against any OpenAI-compatible server.

pub mod chat;
pub mod engine;
pub mod node;
pub mod openai_chat;
mod sentences;

use remotemedia_core::NodeRegistry;

pub use engine::{End, Engine, EngineConfig, Event, Finish, LlmError, Message, Sampling};
pub use node::{LlmNode, LlmParams};
pub use openai_chat::{OpenAiChatNode, OpenAiChatParams};

/// Registers the LLM node types.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<LlmNode>();
    registry.register::<OpenAiChatNode>();
}
