//! `OpenAIChat`: the `LLM` node's contract against any OpenAI-compatible server (vLLM, the
//! llama.cpp server, Ollama, a hosted API, `remotemedia serve`): `POST {base_url}/chat/completions`
//! with `stream: true`, the reply read as server-sent events.
//!
//! The API key comes from the environment only (the variable `api_key_env` names), never from
//! the manifest. A refused request is retried with the node's `retry` policy when trying again
//! can help (429, 5xx, a connection that failed or timed out: `Retry-After` is honoured, within
//! the policy's longest wait), and reported at once otherwise: 401/403 naming the key's
//! variable end the session (every turn would fail alike), other 4xx (with the server's
//! message) fail that turn only.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::retry::RetryConfig;
use remotemedia_core::{NodeContext, NodeError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::chat::{Backend, ChatNode, Started, messages};
use crate::engine::{End, Event, Finish, Message};

/// Settings of [`OpenAiChatNode`].
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiChatParams {
    /// The API's base URL, e.g. `http://127.0.0.1:8080/v1` or `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model the server should answer with.
    pub model: String,
    /// The environment variable that holds the API key (sent as a bearer token; none if the
    /// variable is unset).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    /// The server's default when unset.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f32>,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1))]
    pub max_tokens: u32,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Questions (with their answers) kept in the conversation; older ones are dropped.
    #[serde(default = "default_max_turns")]
    #[schemars(range(min = 1))]
    pub max_turns: usize,
    /// Longest wait for the server's answer to begin; the whole reply may take ten times this.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Retries of a request the server refused for a while (429, 5xx) or never answered.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Also emit each piece of text on `tokens` as it arrives.
    #[serde(default)]
    pub stream_tokens: bool,
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_system_prompt() -> String {
    crate::LlmParams::default().system_prompt
}
fn default_max_tokens() -> u32 {
    128
}
fn default_max_turns() -> usize {
    16
}
fn default_timeout_ms() -> u64 {
    30_000
}

/// Replies from an OpenAI-compatible server.
pub struct Http {
    params: OpenAiChatParams,
    agent: ureq::Agent,
}

impl Backend for Http {
    const NAME: &'static str = "OpenAIChat";

    fn start(&mut self, history: &mut Vec<Message>, text: &str) -> Result<Started, NodeError> {
        let p = &self.params;
        let keep = p.max_turns.saturating_sub(1) * 2;
        if history.len() > keep {
            history.drain(..history.len() - keep);
        }
        let mut body = json!({
            "model": p.model,
            "messages": messages(&p.system_prompt, history, text)
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>(),
            "stream": true,
            "max_tokens": p.max_tokens,
        });
        for (key, value) in [
            ("temperature", p.temperature.map(Value::from)),
            ("top_p", p.top_p.map(Value::from)),
            ("seed", p.seed.map(Value::from)),
            ("stop", (!p.stop.is_empty()).then(|| json!(p.stop))),
        ] {
            if let Some(v) = value {
                body[key] = v;
            }
        }
        let request = Request {
            agent: self.agent.clone(),
            url: format!("{}/chat/completions", p.base_url.trim_end_matches('/')),
            key: std::env::var(&p.api_key_env).ok().filter(|k| !k.is_empty()),
            key_env: p.api_key_env.clone(),
            body: body.to_string(),
            retry: p.retry,
        };
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        std::thread::Builder::new()
            .name("openai-chat".into())
            .spawn(move || {
                let finish = request.run(&tx, &flag);
                let _ = tx.send(Event::End(End {
                    finish,
                    prompt_tokens: 0,
                    cached_tokens: 0,
                    completion_tokens: 0,
                }));
            })
            .map_err(|e| NodeError::retryable(format!("OpenAIChat: {e}")))?;
        Ok(Started { events, cancel })
    }
}

/// One request, run on its own thread.
struct Request {
    agent: ureq::Agent,
    url: String,
    key: Option<String>,
    key_env: String,
    body: String,
    retry: RetryConfig,
}

/// Why an attempt failed, and whether (and when) to try again.
enum Failure {
    Again(String, Option<Duration>),
    Final(String),
    /// Bad credentials (401/403).
    Refused(String),
}

impl Request {
    fn run(&self, tx: &UnboundedSender<Event>, cancel: &AtomicBool) -> Finish {
        let mut attempt = 0;
        loop {
            if cancel.load(Relaxed) || tx.is_closed() {
                return Finish::Cancelled;
            }
            let failure = match self.attempt(tx, cancel) {
                Ok(finish) => return finish,
                Err(f) => f,
            };
            match failure {
                Failure::Again(why, after) if attempt < self.retry.max_retries => {
                    let wait = after
                        .unwrap_or_else(|| self.retry.backoff(attempt))
                        .min(Duration::from_millis(self.retry.max_backoff_ms));
                    tracing::warn!(url = %self.url, attempt, ?wait, "retrying: {why}");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Failure::Again(why, _) | Failure::Final(why) => return Finish::Error(why),
                Failure::Refused(why) => return Finish::Refused(why),
            }
        }
    }

    /// One request: the reply streamed into `tx`, or why it failed before any text came.
    fn attempt(&self, tx: &UnboundedSender<Event>, cancel: &AtomicBool) -> Result<Finish, Failure> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let response = request
            .send(&self.body)
            .map_err(|e| Failure::Again(format!("{}: {e}", self.url), None))?;
        let status = response.status().as_u16();
        if status != 200 {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let mut body = response.into_body();
            let text = body.read_to_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            let why = format!("{} answered {status}: {}", self.url, message.trim());
            return Err(match status {
                401 | 403 => Failure::Refused(format!(
                    "{why} (the API key comes from ${}{})",
                    self.key_env,
                    if self.key.is_none() {
                        ", which is unset"
                    } else {
                        ""
                    }
                )),
                429 | 500..=599 => Failure::Again(why, after),
                _ => Failure::Final(why),
            });
        }
        let reader = BufReader::new(response.into_body().into_reader());
        let mut finish = Finish::Stop;
        for line in reader.lines() {
            if cancel.load(Relaxed) || tx.is_closed() {
                return Ok(Finish::Cancelled);
            }
            let line = line.map_err(|e| Failure::Final(format!("reading {}: {e}", self.url)))?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data)
                .map_err(|e| Failure::Final(format!("{} sent a bad event: {e}", self.url)))?;
            let choice = &chunk["choices"][0];
            if let Some(piece) = choice["delta"]["content"].as_str()
                && !piece.is_empty()
            {
                let _ = tx.send(Event::Text(piece.to_string()));
            }
            if choice["finish_reason"].as_str() == Some("length") {
                finish = Finish::Length;
            }
        }
        Ok(finish)
    }
}

/// See the module documentation.
pub type OpenAiChatNode = ChatNode<Http>;

impl NodeType for OpenAiChatNode {
    type Params = OpenAiChatParams;
    const NAME: &'static str = "OpenAIChat";
    const DESCRIPTION: &'static str = "Answers each final text with a model on an \
        OpenAI-compatible server, streaming the reply: sentences on `out`, pieces on `tokens`";

    fn ports() -> Ports {
        crate::chat::ports()
    }

    fn new(params: OpenAiChatParams, _: &NodeContext) -> Result<Self, NodeError> {
        if !params.base_url.starts_with("http://") && !params.base_url.starts_with("https://") {
            return Err(NodeError::fatal(format!(
                "OpenAIChat: base_url must be an http:// or https:// URL, not {:?}",
                params.base_url
            )));
        }
        let timeout = Some(Duration::from_millis(params.timeout_ms));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(timeout)
            .timeout_recv_response(timeout)
            .timeout_recv_body(timeout.map(|t| t * 10))
            .build()
            .into();
        let stream_tokens = params.stream_tokens;
        Ok(ChatNode::new(Http { params, agent }, stream_tokens))
    }
}
