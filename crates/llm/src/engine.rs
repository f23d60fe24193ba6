//! One loaded GGUF model serving every session at once.
//!
//! A thread owns the llama.cpp context; every session has a *slot* in it (a sequence of the KV
//! cache) that keeps its conversation between turns, so a turn decodes only what is new since
//! the last one. The turns of all sessions that are generating run together: each step decodes
//! one batch holding the next token of every generating turn and the prompt of new ones
//! (continuous batching). On a CPU a step costs about as much per turn in it as a turn alone
//! (the model is small enough to be compute-bound), so the steps favour the turns that are
//! still writing their first sentence, which someone is waiting to hear: a turn that has one
//! ready to be spoken joins only every [`AHEAD_EVERY`]th step while another is still writing
//! its first, which keeps it well ahead of speech.
//!
//! A session that has no slot when its turn comes takes a free one, or the one idle the
//! longest (whose owner re-reads its history on its next turn). A turn that finds every slot
//! generating waits for one. A new conversation does not read again what another slot holds
//! of its start (the system prompt): that slot's cache is copied into its own. A session may
//! read its start before its first question ([`Engine::prefill`]), so the first answer
//! begins as soon as later ones do.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use remotemedia_speech::tts::split_sentences;
use tokio::sync::mpsc::UnboundedSender;

/// Why the engine could not load a model or run a turn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    #[error("cannot load the LLM {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("the prompt is {tokens} tokens, more than the {limit} a session may hold")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the LLM engine has stopped")]
    Stopped,
}

/// How the engine is set up; one engine per distinct setting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// Sessions whose conversations stay in the KV cache at once.
    pub slots: u32,
    /// Tokens each session's conversation may hold (prompt and reply).
    pub slot_tokens: u32,
    /// CPU threads of the decode.
    pub threads: u32,
}

/// How a turn picks its tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    pub top_p: f32,
    /// The same seed, prompt and settings give the same reply.
    pub seed: u32,
    pub max_tokens: u32,
    /// The reply ends before the first of these (which is not part of it).
    pub stop: Vec<String>,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a turn sends back, in order: pieces of text, then one end.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Text(String),
    End(End),
}

/// How a turn ended, and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct End {
    pub finish: Finish,
    /// Tokens of the prompt, and how many of them the cache already held.
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// How a turn ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// The model ended its reply, or a stop string came.
    Stop,
    /// `max_tokens`, or the session's token budget, was reached.
    Length,
    /// The caller cancelled it.
    Cancelled,
    Error(String),
    /// The server refused the caller (its credentials): no retry can help.
    Refused(String),
}

/// A turn in the engine: cancel it by setting `cancel` (or dropping the receiver of events).
pub struct Turn {
    session: u64,
    tokens: Vec<LlamaToken>,
    sampling: Sampling,
    /// `None` for a prefill: the prompt is read into the cache, nothing is generated.
    events: Option<UnboundedSender<Event>>,
    cancel: Arc<AtomicBool>,
}

impl Turn {
    fn send(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

enum Msg {
    Turn(Turn),
    /// The session ended: its slot is free.
    Close(u64),
}

/// A loaded model and the thread that runs its turns.
pub struct Engine {
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    config: EngineConfig,
    tx: Sender<Msg>,
    next_session: AtomicU64,
}

fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Engine {
    /// Loads the model and starts its thread.
    pub fn start(config: EngineConfig) -> Result<Self, LlmError> {
        let load = |reason: String| LlmError::Load {
            path: config.model.clone(),
            reason,
        };
        if !config.model.is_file() {
            return Err(load("no such file".into()));
        }
        let backend = backend().map_err(load)?;
        let model =
            LlamaModel::load_from_file(backend, &config.model, &LlamaModelParams::default())
                .map_err(|e| load(e.to_string()))?;
        let template = model
            .chat_template(None)
            .map_err(|e| load(format!("no chat template in the GGUF metadata: {e}")))?;
        let model = Arc::new(model);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (thread_model, thread_config) = (Arc::clone(&model), config.clone());
        std::thread::Builder::new()
            .name("llm".into())
            .spawn(move || run(&thread_model, &thread_config, backend, rx, ready_tx))
            .map_err(|e| load(e.to_string()))?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the engine thread died".into()))
            .map_err(load)?;
        Ok(Self {
            model,
            template,
            config,
            tx,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A new session id (its slot is taken at its first turn).
    pub fn session(&self) -> u64 {
        self.next_session.fetch_add(1, Relaxed)
    }

    /// The session ended: its slot is free for another conversation. What it holds stays in
    /// the cache until then, as a start a later conversation may share (a system prompt).
    pub fn close(&self, session: u64) {
        let _ = self.tx.send(Msg::Close(session));
    }

    /// The prompt of `messages` by the model's chat template, ending where the assistant's
    /// reply begins.
    pub fn prompt(&self, messages: &[Message]) -> Result<String, LlmError> {
        self.render(messages, true)
    }

    /// `messages` by the chat template, opening the assistant's reply if `reply`.
    fn render(&self, messages: &[Message], reply: bool) -> Result<String, LlmError> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::Template(e.to_string()))?;
        self.model
            .apply_chat_template(&self.template, &chat, reply)
            .map_err(|e| LlmError::Template(e.to_string()))
    }

    /// Tokens of a prompt (its special tokens, such as the template's, read as such).
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Starts a turn of `session` on the prompt's tokens; its events arrive on `events`.
    pub fn turn(
        &self,
        session: u64,
        tokens: Vec<LlamaToken>,
        sampling: Sampling,
        events: UnboundedSender<Event>,
    ) -> Result<Arc<AtomicBool>, LlmError> {
        let limit = self.config.slot_tokens as usize;
        if tokens.len() >= limit {
            return Err(LlmError::PromptTooLong {
                tokens: tokens.len(),
                limit,
            });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.tx
            .send(Msg::Turn(Turn {
                session,
                tokens,
                sampling,
                events: Some(events),
                cancel: Arc::clone(&cancel),
            }))
            .map_err(|_| LlmError::Stopped)?;
        Ok(cancel)
    }

    /// Reads `messages` (say, the system prompt) into the cache of `session` now, ahead of
    /// its first turn, whose prompt starts with them; nothing is generated. Copied from
    /// another slot when one holds them already.
    pub fn prefill(&self, session: u64, messages: &[Message]) -> Result<(), LlmError> {
        let tokens = self.tokenize(&self.render(messages, false)?);
        if tokens.is_empty() || tokens.len() >= self.config.slot_tokens as usize {
            return Ok(());
        }
        self.tx
            .send(Msg::Turn(Turn {
                session,
                tokens,
                sampling: Sampling {
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: 0,
                    max_tokens: 0,
                    stop: Vec::new(),
                },
                events: None,
                cancel: Arc::new(AtomicBool::new(false)),
            }))
            .map_err(|_| LlmError::Stopped)
    }
}

/// A session's place in the KV cache.
#[derive(Default)]
struct Slot {
    owner: Option<u64>,
    /// Tokens in the cache for this sequence, from position 0.
    tokens: Vec<LlamaToken>,
    /// When the slot was last used (a step count), for eviction.
    used: u64,
    busy: bool,
}

/// A turn being run.
struct Running {
    turn: Turn,
    slot: usize,
    /// Tokens still to decode (the prompt's new part, then each sampled token).
    pending: Vec<LlamaToken>,
    sampler: LlamaSampler,
    generated: u32,
    /// Bytes of a character split across tokens.
    partial: Vec<u8>,
    /// The reply so far, and how much of it was sent.
    text: String,
    sent: usize,
    /// Index of this turn's logits in the last batch.
    logits: Option<i32>,
    cached: usize,
    /// A whole sentence of the reply is out: the listener has something to hear.
    ahead: bool,
}

/// While some turn is still writing its first sentence, turns that are `ahead` join one step
/// in this many: ~20 tokens/s each at 8 turns on 2 cores, several times the ~3 tokens/s of
/// speech, and the turns still writing run alone in the other steps.
const AHEAD_EVERY: u64 = 4;

fn run(
    model: &LlamaModel,
    config: &EngineConfig,
    backend: &LlamaBackend,
    rx: Receiver<Msg>,
    ready: Sender<Result<(), String>>,
) {
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
    let n_ctx = config.slots.max(1) * config.slot_tokens;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(512)
        .with_n_seq_max(config.slots.max(1))
        .with_kv_unified(false)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => {
            let _ = ready.send(Ok(()));
            ctx
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut slots: Vec<Slot> = (0..config.slots.max(1)).map(|_| Slot::default()).collect();
    let mut waiting: VecDeque<Turn> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut batch = LlamaBatch::new(512, 1);
    let mut step = 0u64;
    loop {
        // Block only when nothing is running.
        let first = if running.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            None
        };
        for msg in first.into_iter().chain(rx.try_iter()) {
            match msg {
                Msg::Turn(t) => waiting.push_back(t),
                Msg::Close(session) => {
                    if let Some(i) = slots.iter().position(|s| s.owner == Some(session))
                        && !slots[i].busy
                    {
                        slots[i].owner = None;
                    }
                    waiting.retain(|t| t.session != session);
                }
            }
        }
        // Cancelled turns end before anything else is spent on them.
        running.retain_mut(|r| {
            if cancelled(&r.turn) {
                finish(r, &mut slots, Finish::Cancelled);
                false
            } else {
                true
            }
        });
        // Waiting turns start in arrival order, each as soon as it has a slot.
        let mut i = 0;
        while i < waiting.len() {
            if cancelled(&waiting[i]) {
                let turn = waiting.remove(i).expect("index in range");
                turn.send(Event::End(End {
                    finish: Finish::Cancelled,
                    prompt_tokens: turn.tokens.len(),
                    cached_tokens: 0,
                    completion_tokens: 0,
                }));
            } else if let Some(slot) = take_slot(&mut slots, waiting[i].session) {
                let turn = waiting.remove(i).expect("index in range");
                share_prefix(&mut ctx, &mut slots, slot, &turn.tokens);
                let mut r = begin(&mut ctx, &mut slots[slot], slot, turn);
                if r.pending.is_empty() {
                    // A prefill the cache held already.
                    finish(&mut r, &mut slots, Finish::Stop);
                } else {
                    running.push(r);
                }
            } else {
                i += 1;
            }
        }
        if running.is_empty() {
            continue;
        }
        step += 1;
        // One batch: a token of every generating turn first, then prompts as room allows.
        batch.clear();
        let mut room = 512usize;
        running.sort_by_key(|r| r.pending.len());
        let pause_ahead = !step.is_multiple_of(AHEAD_EVERY) && running.iter().any(|r| !r.ahead);
        for r in &mut running {
            r.logits = None;
            if pause_ahead && r.ahead {
                continue;
            }
            let take = r.pending.len().min(room);
            if take == 0 {
                continue;
            }
            let slot = &mut slots[r.slot];
            slot.used = step;
            let last = take == r.pending.len() && r.turn.events.is_some();
            for (k, token) in r.pending.drain(..take).enumerate() {
                let pos = slot.tokens.len() as i32;
                let logits = last && k + 1 == take;
                if logits {
                    r.logits = Some(batch.n_tokens());
                }
                batch
                    .add(token, pos, &[r.slot as i32], logits)
                    .expect("the batch holds 512 tokens");
                slot.tokens.push(token);
            }
            room -= take;
        }
        let computing = COMPUTING.read().unwrap_or_else(|e| e.into_inner());
        let decoded = ctx.decode(&mut batch);
        drop(computing);
        hook_exit();
        if let Err(e) = decoded {
            let message = format!("decode failed: {e}");
            for mut r in running.drain(..) {
                finish(&mut r, &mut slots, Finish::Error(message.clone()));
                free(&mut ctx, &mut slots, r.slot);
            }
            continue;
        }
        let limit = config.slot_tokens as usize;
        running.retain_mut(|r| {
            let Some(at) = r.logits else {
                if r.pending.is_empty() {
                    // A prefill, read.
                    finish(r, &mut slots, Finish::Stop);
                    return false;
                }
                return true;
            };
            let token = r.sampler.sample(&ctx, at);
            if model.vocab().is_eog(token) {
                finish(r, &mut slots, Finish::Stop);
                return false;
            }
            r.generated += 1;
            let mut piece = std::mem::take(&mut r.partial);
            piece.extend(model.vocab().token_to_piece(token, false, None));
            let valid = match std::str::from_utf8(&piece) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            r.partial = piece.split_off(valid);
            r.text
                .push_str(std::str::from_utf8(&piece).unwrap_or_default());
            if let Some(end) = stop_at(&r.text, &r.turn.sampling.stop) {
                r.text.truncate(end);
                finish(r, &mut slots, Finish::Stop);
                return false;
            }
            send_safe(r);
            r.ahead = r.ahead || split_sentences(&r.text).len() > 1;
            if r.generated >= r.turn.sampling.max_tokens || slots[r.slot].tokens.len() + 1 >= limit
            {
                finish(r, &mut slots, Finish::Length);
                return false;
            }
            r.pending.push(token);
            true
        });
    }
}

fn cancelled(turn: &Turn) -> bool {
    turn.cancel.load(Relaxed) || turn.events.as_ref().is_some_and(|e| e.is_closed())
}

/// The slot of `session`, a free one, or the one idle the longest; `None` if all are busy.
fn take_slot(slots: &mut [Slot], session: u64) -> Option<usize> {
    if let Some(i) = slots.iter().position(|s| s.owner == Some(session)) {
        return (!slots[i].busy).then_some(i);
    }
    let i = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.busy)
        .min_by_key(|(_, s)| (s.owner.is_some(), s.used))?
        .0;
    slots[i].owner = Some(session);
    Some(i)
}

/// Empties slot `i` (sequence `i` of the cache).
fn free(ctx: &mut LlamaContext<'_>, slots: &mut [Slot], i: usize) {
    let _ = ctx.clear_kv_cache_seq(Some(i as u32), None, None);
    slots[i] = Slot::default();
}

/// Read-held by engine threads while llama.cpp computes, write-taken (and kept) when the
/// process exits: llama.cpp's static objects are destroyed at exit while an engine thread may
/// still be in a step (a turn nobody waits for any more), which crashed the process. With this
/// the exit waits for the step in flight and no step starts after it.
static COMPUTING: std::sync::RwLock<()> = std::sync::RwLock::new(());

extern "C" fn stop_computing() {
    std::mem::forget(COMPUTING.write());
}

/// Registers the exit hook once, after a first step has made llama.cpp's static objects (exit
/// handlers run in the reverse order of their registration, so it runs before they go).
fn hook_exit() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain function with no arguments, as atexit(3) requires.
        unsafe { libc::atexit(stop_computing) };
    });
}

/// Shortest prefix worth copying a whole slot's cache for (a copy costs a few ms; reading a
/// token ~5 ms on two cores).
const SHARED_PREFIX_MIN: usize = 16;

/// Copies into slot `i` the cache of another slot that holds a longer start of `tokens` than
/// `i` does: a new conversation then starts after the system prompt another one already read.
/// (Each sequence is its own stream of the cache, which llama.cpp copies whole, in order, at
/// the next decode; `begin` then cuts the copy back to the shared start.)
fn share_prefix(ctx: &mut LlamaContext<'_>, slots: &mut [Slot], i: usize, tokens: &[LlamaToken]) {
    let common = |s: &Slot| {
        s.tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    };
    let own = common(&slots[i]);
    let best = (0..slots.len())
        .filter(|&j| j != i)
        .map(|j| (j, common(&slots[j])))
        .max_by_key(|&(_, n)| n);
    let Some((j, n)) = best.filter(|&(_, n)| n >= own + SHARED_PREFIX_MIN) else {
        return;
    };
    if ctx.kv_cache_seq_cp(j as i32, i as i32, None, None).is_ok() {
        tracing::debug!(from = j, to = i, tokens = n, "shared a cached prompt start");
        slots[i].tokens = slots[j].tokens.clone();
    }
}

/// Starts a turn in its slot: what the cache already holds of the prompt stays, the rest is
/// decoded. (The cache of a token depends only on the tokens before it, so a prefix stays valid
/// whoever's conversation left it there: a slot taken from another session keeps, say, the
/// system prompt they share.)
fn begin(ctx: &mut LlamaContext<'_>, slot: &mut Slot, index: usize, turn: Turn) -> Running {
    let seq = index as i32;
    let mut keep = slot
        .tokens
        .iter()
        .zip(&turn.tokens)
        .take_while(|(a, b)| a == b)
        .count();
    // A reply needs at least one token decoded, for the logits of its first token.
    if turn.events.is_some() {
        keep = keep.min(turn.tokens.len().saturating_sub(1));
    }
    if ctx.kv_cache_seq_rm(seq, Some(keep as u32), None).is_err() {
        keep = 0;
        let _ = ctx.clear_kv_cache_seq(Some(index as u32), None, None);
    }
    slot.tokens.truncate(keep);
    slot.busy = true;
    let s = &turn.sampling;
    let sampler = if s.temperature <= 0.0 {
        LlamaSampler::greedy()
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::top_p(s.top_p, 1),
            LlamaSampler::temp(s.temperature),
            LlamaSampler::dist(s.seed),
        ])
    };
    Running {
        pending: turn.tokens[keep..].to_vec(),
        turn,
        slot: index,
        sampler,
        generated: 0,
        partial: Vec::new(),
        text: String::new(),
        sent: 0,
        logits: None,
        cached: keep,
        ahead: false,
    }
}

/// Ends a turn: the rest of its text, then the end event; the slot is free for the next turn.
fn finish(r: &mut Running, slots: &mut [Slot], how: Finish) {
    if r.sent < r.text.len() {
        r.turn.send(Event::Text(r.text[r.sent..].to_string()));
        r.sent = r.text.len();
    }
    tracing::debug!(
        session = r.turn.session,
        prompt_tokens = r.turn.tokens.len(),
        cached_tokens = r.cached,
        completion_tokens = r.generated,
        finish = ?how,
        "llm turn ended"
    );
    r.turn.send(Event::End(End {
        finish: how,
        prompt_tokens: r.turn.tokens.len(),
        cached_tokens: r.cached,
        completion_tokens: r.generated,
    }));
    slots[r.slot].busy = false;
}

/// The byte where the first stop string begins, if one has come.
fn stop_at(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Sends the text not yet sent, holding back an end that may be the start of a stop string.
fn send_safe(r: &mut Running) {
    let text = &r.text;
    let held = r
        .turn
        .sampling
        .stop
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n))
                .map(move |n| &s[..n])
        })
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0);
    let upto = text.len() - held;
    if upto > r.sent {
        r.turn.send(Event::Text(text[r.sent..upto].to_string()));
        r.sent = upto;
    }
}

/// The default model: SmolLM2-135M-Instruct in the models directory.
pub fn default_model(models_dir: &Path) -> PathBuf {
    models_dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
