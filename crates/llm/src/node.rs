//! `LLM`: a chat model answering each final text it receives, streaming its reply (the
//! conversation, queueing and cancel are [`crate::chat`]'s).
//!
//! Each session keeps its conversation (system prompt, then the turns), bounded by tokens: the
//! oldest turns are dropped when the next prompt would not leave room for a reply. The engine
//! keeps the conversation in the KV cache between turns, so a turn reads only what is new.
//!
//! Outputs: on `out`, the reply one sentence at a time (final text, as soon as each sentence is
//! complete, so speech synthesis starts on the first); on `tokens`, with `stream_tokens`, each
//! piece of text as the model generates it (interim text, a delta).

use std::path::PathBuf;
use std::sync::Arc;

use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{NodeContext, NodeError};
use remotemedia_speech::models::{self, ModelError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::chat::{Backend, ChatNode, Started, messages};
use crate::engine::{Engine, EngineConfig, Message, Sampling};

/// Settings of [`LlmNode`].
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LlmParams {
    /// A GGUF chat model; default: SmolLM2-135M-Instruct from the models directory.
    pub model: Option<PathBuf>,
    /// The system message that starts every conversation (none if empty).
    pub system_prompt: String,
    /// 0 always takes the most likely token.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f32,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f32,
    /// Fixes the sampling: the same conversation gets the same replies. Random if unset.
    pub seed: Option<u32>,
    /// Tokens per reply at most.
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: u32,
    /// A reply ends before the first of these.
    pub stop: Vec<String>,
    /// Tokens a session's conversation may hold (prompt and reply); older turns are dropped.
    #[schemars(range(min = 256, max = 32768))]
    pub context_tokens: u32,
    /// Conversations kept in the model's cache at once (each holds `context_tokens` of cache,
    /// ~45 MB for 2048 with SmolLM2); more sessions share these slots (an evicted conversation
    /// is read again at its next turn).
    #[schemars(range(min = 1, max = 64))]
    pub sessions: u32,
    /// Decode threads (default: the machine's cores).
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<u32>,
    /// Also emit each piece of text on `tokens` as it is generated.
    pub stream_tokens: bool,
}

impl Default for LlmParams {
    fn default() -> Self {
        Self {
            model: None,
            system_prompt: "You are a helpful voice assistant. Answer briefly, in one or two \
                            short sentences."
                .into(),
            temperature: 0.7,
            top_p: 0.9,
            seed: None,
            max_tokens: 128,
            stop: Vec::new(),
            context_tokens: 2048,
            sessions: 4,
            threads: None,
            stream_tokens: false,
        }
    }
}

/// The engine for these settings (model, sessions, context_tokens, threads), loaded once and
/// shared by every session and caller that uses them.
pub fn shared_engine(p: &LlmParams) -> Result<Arc<Engine>, ModelError> {
    let config = EngineConfig {
        model: p
            .model
            .clone()
            .unwrap_or_else(|| crate::engine::default_model(&models::models_dir())),
        slots: p.sessions,
        slot_tokens: p.context_tokens,
        threads: p
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
    };
    models::require_file(&config.model)?;
    let key = format!(
        "slots={},slot_tokens={},threads={}",
        config.slots, config.slot_tokens, config.threads
    );
    let path = config.model.clone();
    models::shared_object(&path, "llm", &key, move || {
        Engine::start(config.clone()).map_err(|e| ModelError::Load {
            path: config.model.clone(),
            reason: e.to_string(),
        })
    })
}

/// Replies from the shared engine, in this session's slot.
pub struct Local {
    engine: Arc<Engine>,
    session: u64,
    params: LlmParams,
}

impl Backend for Local {
    const NAME: &'static str = "LLM";

    fn start(&mut self, history: &mut Vec<Message>, text: &str) -> Result<Started, NodeError> {
        let p = &self.params;
        let budget = p.context_tokens.saturating_sub(p.max_tokens) as usize;
        let tokens = loop {
            let prompt = self
                .engine
                .prompt(&messages(&p.system_prompt, history, text))
                .map_err(|e| NodeError::fatal(format!("LLM: {e}")))?;
            let tokens = self.engine.tokenize(&prompt);
            if tokens.len() <= budget || history.is_empty() {
                break tokens;
            }
            // The oldest turn (a question and its answer) leaves the conversation.
            history.drain(..history.len().min(2));
        };
        if tokens.len() > budget {
            return Err(NodeError::rejected(format!(
                "LLM: the text is {} tokens with the system prompt, more than the {budget} a \
                 turn may use (context_tokens - max_tokens)",
                tokens.len()
            )));
        }
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let sampling = Sampling {
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed.unwrap_or_else(random_seed),
            max_tokens: p.max_tokens,
            stop: p.stop.clone(),
        };
        let cancel = self
            .engine
            .turn(self.session, tokens, sampling, tx)
            .map_err(|e| NodeError::fatal(format!("LLM: {e}")))?;
        Ok(Started { events, cancel })
    }

    fn close(&mut self) {
        self.engine.close(self.session);
    }
}

/// See the module documentation.
pub type LlmNode = ChatNode<Local>;

/// A seed for unseeded sampling.
pub fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u32
}

impl NodeType for LlmNode {
    type Params = LlmParams;
    const NAME: &'static str = "LLM";
    const DESCRIPTION: &'static str = "Answers each final text with a local GGUF chat model \
        (llama.cpp), streaming the reply: sentences on `out`, pieces on `tokens` (stream_tokens)";

    fn ports() -> Ports {
        crate::chat::ports()
    }

    fn new(params: LlmParams, _: &NodeContext) -> Result<Self, NodeError> {
        let engine = shared_engine(&params).map_err(|e| NodeError::from_error("LLM", &e))?;
        let session = engine.session();
        // The system prompt is read now (or copied from a conversation that has it), while
        // the caller is still speaking, so the first answer starts as fast as later ones.
        if !params.system_prompt.is_empty() {
            let system = [Message::new("system", params.system_prompt.clone())];
            engine
                .prefill(session, &system)
                .map_err(|e| NodeError::fatal(format!("LLM: {e}")))?;
        }
        let stream_tokens = params.stream_tokens;
        Ok(ChatNode::new(
            Local {
                engine,
                session,
                params,
            },
            stream_tokens,
        ))
    }
}
