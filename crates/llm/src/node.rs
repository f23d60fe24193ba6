//! `LLM`: a chat model answering each final text it receives, streaming its reply.
//!
//! Each session keeps its conversation (system prompt, then the turns), bounded by tokens: the
//! oldest turns are dropped when the next prompt would not leave room for a reply. The engine
//! keeps the conversation in the KV cache between turns, so a turn reads only what is new.
//!
//! Outputs: on `out`, the reply one sentence at a time (final text, as soon as each sentence is
//! complete, so speech synthesis starts on the first); on `tokens`, with `stream_tokens`, each
//! piece of text as the model generates it (interim text, a delta). A text that arrives while a reply is being
//! generated is answered after it. A `Cancel` control ends the reply in progress and drops the
//! waiting ones; the conversation keeps what was generated until then.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    Control, MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData, TextFrame,
};
use remotemedia_speech::models::{self, ModelError};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig, Event, Finish, Message, Sampling};
use crate::sentences::Sentences;

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

/// A turn being generated.
struct Reply {
    events: mpsc::UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    text: String,
    sentences: Sentences,
    span: Option<(Duration, Duration)>,
}

/// See the module documentation.
pub struct LlmNode {
    engine: Arc<Engine>,
    session: u64,
    params: LlmParams,
    history: Vec<Message>,
    reply: Option<Reply>,
    waiting: VecDeque<(String, Option<(Duration, Duration)>)>,
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

impl LlmNode {
    /// The messages of the next prompt: the system prompt, the history and the new text.
    fn messages(&self, text: &str) -> Vec<Message> {
        let system = (!self.params.system_prompt.is_empty())
            .then(|| Message::new("system", self.params.system_prompt.clone()));
        system
            .into_iter()
            .chain(self.history.iter().cloned())
            .chain([Message::new("user", text)])
            .collect()
    }

    /// Starts the next waiting turn, if none is running.
    fn start_next(&mut self) -> Result<(), NodeError> {
        while self.reply.is_none() {
            let Some((text, span)) = self.waiting.pop_front() else {
                return Ok(());
            };
            let budget = (self
                .params
                .context_tokens
                .saturating_sub(self.params.max_tokens)) as usize;
            let tokens = loop {
                let prompt = self
                    .engine
                    .prompt(&self.messages(&text))
                    .map_err(|e| NodeError::fatal(format!("LLM: {e}")))?;
                let tokens = self.engine.tokenize(&prompt);
                if tokens.len() <= budget || self.history.is_empty() {
                    break tokens;
                }
                // The oldest turn (a question and its answer) leaves the conversation.
                let drop = self.history.len().min(2);
                self.history.drain(..drop);
            };
            if tokens.len() > budget {
                return Err(NodeError::rejected(format!(
                    "LLM: the text is {} tokens with the system prompt, more than the {budget} \
                     a turn may use (context_tokens - max_tokens)",
                    tokens.len()
                )));
            }
            let (tx, events) = mpsc::unbounded_channel();
            let sampling = Sampling {
                temperature: self.params.temperature,
                top_p: self.params.top_p,
                seed: self.params.seed.unwrap_or_else(random_seed),
                max_tokens: self.params.max_tokens,
                stop: self.params.stop.clone(),
            };
            let cancel = self
                .engine
                .turn(self.session, tokens, sampling, tx)
                .map_err(|e| NodeError::fatal(format!("LLM: {e}")))?;
            self.history.push(Message::new("user", text));
            self.reply = Some(Reply {
                events,
                cancel,
                text: String::new(),
                sentences: Sentences::default(),
                span,
            });
        }
        Ok(())
    }

    /// Handles one event of the running turn.
    fn on_event(&mut self, event: Option<Event>, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(reply) = self.reply.as_mut() else {
            return Ok(());
        };
        let frame = |text: String, is_final| {
            RuntimeData::Text(TextFrame {
                text: text.into(),
                is_final,
                span: reply.span,
            })
        };
        match event {
            Some(Event::Text(piece)) => {
                if self.params.stream_tokens {
                    out.push_to(1, frame(piece.clone(), false));
                }
                reply.text.push_str(&piece);
                for s in reply.sentences.push(&piece) {
                    out.push_to(0, frame(s, true));
                }
                Ok(())
            }
            end => {
                let finish = match end {
                    Some(Event::End(end)) => end.finish,
                    _ => Finish::Error("the LLM engine stopped".into()),
                };
                let mut reply = self.reply.take().expect("a reply runs");
                for s in reply.sentences.finish() {
                    out.push_to(
                        0,
                        RuntimeData::Text(TextFrame {
                            text: s.into(),
                            is_final: true,
                            span: reply.span,
                        }),
                    );
                }
                self.history
                    .push(Message::new("assistant", reply.text.trim().to_string()));
                if let Finish::Error(e) = finish {
                    return Err(NodeError::retryable(format!("LLM: {e}")));
                }
                self.start_next()
            }
        }
    }
}

/// A seed for unseeded sampling.
pub fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u32
}

#[async_trait]
impl Node for LlmNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        _out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(text) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        // Interim text (a caption still changing) is not a question yet.
        if !text.is_final || text.text.trim().is_empty() {
            return Ok(());
        }
        self.waiting
            .push_back((text.text.trim().to_string(), text.span));
        self.start_next()
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        while let Some(reply) = self.reply.as_mut() {
            let event = reply.events.recv().await;
            self.on_event(event, out)?;
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, _out: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { .. } = control {
            self.waiting.clear();
            if let Some(reply) = self.reply.take() {
                reply.cancel.store(true, Relaxed);
                self.history
                    .push(Message::new("assistant", reply.text.trim().to_string()));
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        if let Some(reply) = self.reply.take() {
            reply.cancel.store(true, Relaxed);
        }
        self.engine.close(self.session);
        Ok(())
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(reply) = self.reply.as_mut() else {
            return std::future::pending().await;
        };
        let event = reply.events.recv().await;
        self.on_event(event, out)
    }
}

impl NodeType for LlmNode {
    type Params = LlmParams;
    const NAME: &'static str = "LLM";
    const DESCRIPTION: &'static str = "Answers each final text with a local GGUF chat model \
        (llama.cpp), streaming the reply: sentences on `out`, pieces on `tokens` (stream_tokens)";

    fn ports() -> Ports {
        Ports::new()
            .input("in", &[MediaType::Text])
            .output("out", &[MediaType::Text])
            .output("tokens", &[MediaType::Text])
    }

    fn new(params: LlmParams, _: &NodeContext) -> Result<Self, NodeError> {
        let engine = shared_engine(&params).map_err(|e| NodeError::from_error("LLM", &e))?;
        let session = engine.session();
        Ok(Self {
            engine,
            session,
            params,
            history: Vec::new(),
            reply: None,
            waiting: VecDeque::new(),
        })
    }
}
