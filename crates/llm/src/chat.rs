//! What the chat nodes share: a conversation, answered one text at a time by a backend (the
//! local engine, or an OpenAI-compatible server), its reply streamed as sentences and pieces.
//!
//! Each final text is a user turn; a text that arrives while a reply is being generated is
//! answered after it. A `Cancel` control ends the reply in progress and drops the waiting texts;
//! the conversation keeps what was generated until then. Text on the `spoken` feedback port (a
//! `Playout` downstream that was interrupted) is what the listener heard of the last reply: the
//! conversation keeps that instead of what was generated.
//!
//! A text whose span starts where the last turn's did revises that turn: the speech went on
//! after the pause at which the turn was taken (a segmenter fed a VAD's `speech_pause`), so
//! that turn and its reply leave the conversation and the new text is answered instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::Ports;
use remotemedia_core::{
    Control, MediaType, Node, NodeError, Outputs, Packet, RuntimeData, TextFrame,
};
use tokio::sync::mpsc;

use crate::engine::{Event, Finish, Message};
use crate::sentences::Sentences;

/// A reply as it is produced: its events, and the flag that cancels it.
pub struct Started {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub cancel: Arc<AtomicBool>,
}

/// Where replies come from.
pub trait Backend: Send + 'static {
    /// The node's name, for errors.
    const NAME: &'static str;

    /// Starts the reply to `text` after `history` (which it may shorten, oldest turns first,
    /// to fit what the model takes).
    fn start(&mut self, history: &mut Vec<Message>, text: &str) -> Result<Started, NodeError>;

    /// The session ended.
    fn close(&mut self) {}
}

/// The messages of a turn: the system prompt (if any), the history and the new text.
pub fn messages(system_prompt: &str, history: &[Message], text: &str) -> Vec<Message> {
    let system = (!system_prompt.is_empty()).then(|| Message::new("system", system_prompt));
    system
        .into_iter()
        .chain(history.iter().cloned())
        .chain([Message::new("user", text)])
        .collect()
}

/// The ports of a chat node.
pub fn ports() -> Ports {
    Ports::new()
        .input("in", &[MediaType::Text])
        .feedback("spoken", &[MediaType::Text])
        .output("out", &[MediaType::Text])
        .output("tokens", &[MediaType::Text])
}

type Span = Option<(Duration, Duration)>;

/// A turn being answered.
struct Reply {
    started: Started,
    text: String,
    sentences: Sentences,
    span: Span,
}

/// A chat node over a backend; see the module documentation.
pub struct ChatNode<B: Backend> {
    backend: B,
    stream_tokens: bool,
    history: Vec<Message>,
    reply: Option<Reply>,
    waiting: VecDeque<(String, Span)>,
    /// The span of the turn started last.
    last_turn: Span,
}

impl<B: Backend> ChatNode<B> {
    pub fn new(backend: B, stream_tokens: bool) -> Self {
        Self {
            backend,
            stream_tokens,
            history: Vec::new(),
            reply: None,
            waiting: VecDeque::new(),
            last_turn: None,
        }
    }

    /// Starts the next waiting turn, if none is running.
    fn start_next(&mut self) -> Result<(), NodeError> {
        if self.reply.is_some() {
            return Ok(());
        }
        let Some((text, span)) = self.waiting.pop_front() else {
            return Ok(());
        };
        let started = self.backend.start(&mut self.history, &text)?;
        self.history.push(Message::new("user", text));
        self.last_turn = span;
        self.reply = Some(Reply {
            started,
            text: String::new(),
            sentences: Sentences::default(),
            span,
        });
        Ok(())
    }

    /// Handles one event of the running turn.
    fn on_event(&mut self, event: Option<Event>, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(reply) = self.reply.as_mut() else {
            return Ok(());
        };
        let span = reply.span;
        let frame = |text: String, is_final| {
            RuntimeData::Text(TextFrame {
                text: text.into(),
                is_final,
                span,
            })
        };
        let finish = match event {
            Some(Event::Text(piece)) => {
                if self.stream_tokens {
                    out.push_to(1, frame(piece.clone(), false));
                }
                reply.text.push_str(&piece);
                for s in reply.sentences.push(&piece) {
                    out.push_to(0, frame(s, true));
                }
                return Ok(());
            }
            Some(Event::End(end)) => end.finish,
            None => Finish::Error("the reply stopped without an end".into()),
        };
        for s in reply.sentences.finish() {
            out.push_to(0, frame(s, true));
        }
        self.end_reply();
        match finish {
            Finish::Error(e) => return Err(NodeError::retryable(format!("{}: {e}", B::NAME))),
            // Bad credentials fail every turn alike: the session ends, saying why.
            Finish::Refused(e) => return Err(NodeError::fatal(format!("{}: {e}", B::NAME))),
            _ => {}
        }
        self.start_next()
    }

    /// The listener heard only `text` of the last reply (it was interrupted). Kept as it was
    /// when all of it was heard, so the cached prompt stays valid.
    fn heard(&mut self, text: &str) {
        self.end_reply();
        let Some(last) = self.history.last_mut().filter(|m| m.role == "assistant") else {
            return;
        };
        if last.content.split_whitespace().eq(text.split_whitespace()) {
            return;
        }
        match text.trim() {
            "" => drop(self.history.pop()),
            heard => last.content = heard.into(),
        }
    }

    /// `span` starts where an earlier text's did: that text is dropped, waiting or answered
    /// (with its reply).
    fn revise(&mut self, span: Span) {
        let Some((from, _)) = span else {
            return;
        };
        let same_start = |s: &Span| s.is_some_and(|(f, _)| f == from);
        self.waiting.retain(|(_, s)| !same_start(s));
        if !same_start(&self.last_turn) {
            return;
        }
        self.last_turn = None;
        self.end_reply();
        if self.history.last().is_some_and(|m| m.role == "assistant") {
            self.history.pop();
        }
        if self.history.last().is_some_and(|m| m.role == "user") {
            self.history.pop();
        }
    }

    /// The running reply ends; the conversation keeps what it said.
    fn end_reply(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply.started.cancel.store(true, Relaxed);
            self.history
                .push(Message::new("assistant", reply.text.trim().to_string()));
        }
    }
}

#[async_trait]
impl<B: Backend> Node for ChatNode<B> {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        _out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(text) = input.data.as_text() else {
            return Err(NodeError::unsupported(B::NAME, &input.data));
        };
        if port == 1 {
            self.heard(&text.text);
            return Ok(());
        }
        // Interim text (a caption still changing) is not a question yet.
        if !text.is_final || text.text.trim().is_empty() {
            return Ok(());
        }
        self.revise(text.span);
        self.waiting
            .push_back((text.text.trim().to_string(), text.span));
        self.start_next()
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        while let Some(reply) = self.reply.as_mut() {
            let event = reply.started.events.recv().await;
            self.on_event(event, out)?;
        }
        Ok(())
    }

    async fn control(&mut self, control: &Control, _out: &mut Outputs) -> Result<(), NodeError> {
        if let Control::Cancel { .. } = control {
            self.waiting.clear();
            self.end_reply();
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        self.end_reply();
        self.backend.close();
        Ok(())
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(reply) = self.reply.as_mut() else {
            return std::future::pending().await;
        };
        let event = reply.started.events.recv().await;
        self.on_event(event, out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use remotemedia_core::testing::NodeHarness;

    use super::*;
    use crate::engine::End;

    /// Answers every text with the same two sentences, and records the history it was given.
    struct Scripted(Arc<Mutex<Vec<Vec<Message>>>>);

    impl Backend for Scripted {
        const NAME: &'static str = "Scripted";

        fn start(&mut self, history: &mut Vec<Message>, _: &str) -> Result<Started, NodeError> {
            self.0.lock().unwrap().push(history.clone());
            let (tx, events) = mpsc::unbounded_channel();
            let reply = "The moon is bright tonight. It circles the earth every month.";
            tx.send(Event::Text(reply.into())).unwrap();
            tx.send(Event::End(End {
                finish: Finish::Stop,
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: 12,
            }))
            .unwrap();
            Ok(Started {
                events,
                cancel: Arc::default(),
            })
        }
    }

    fn roles(history: &[Message]) -> Vec<(&str, &str)> {
        history
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn the_conversation_keeps_what_the_listener_heard() {
        let seen = Arc::default();
        let node = ChatNode::new(Scripted(Arc::clone(&seen)), false);
        let mut h = NodeHarness::from_node(node).with_ports(ports());
        h.push(RuntimeData::text("Tell me about the moon."))
            .await
            .unwrap();
        assert_eq!(h.flush().await.unwrap().len(), 2, "two sentences");
        // Interrupted during the first sentence; then nothing heard of the second reply.
        h.push_to(1, RuntimeData::text("The moon is"))
            .await
            .unwrap();
        h.push(RuntimeData::text("And the sun?")).await.unwrap();
        h.flush().await.unwrap();
        h.push_to(1, RuntimeData::text("")).await.unwrap();
        h.push(RuntimeData::text("Hello?")).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            roles(&seen[1]),
            [
                ("user", "Tell me about the moon."),
                ("assistant", "The moon is")
            ]
        );
        assert_eq!(
            roles(&seen[2]),
            [
                ("user", "Tell me about the moon."),
                ("assistant", "The moon is"),
                ("user", "And the sun?")
            ]
        );
    }

    #[tokio::test]
    async fn a_text_from_the_same_start_revises_the_last_turn() {
        let seen = Arc::default();
        let node = ChatNode::new(Scripted(Arc::clone(&seen)), false);
        let mut h = NodeHarness::from_node(node).with_ports(ports());
        let said = |text: &str, from: u64, to: u64| {
            let ms = Duration::from_millis;
            RuntimeData::Text(TextFrame {
                text: text.into(),
                is_final: true,
                span: Some((ms(from), ms(to))),
            })
        };
        // Taken at a pause and answered; then the speech went on.
        h.push(said("Tell me about", 1_000, 2_000)).await.unwrap();
        h.flush().await.unwrap();
        h.push(said("Tell me about the moon.", 1_000, 3_000))
            .await
            .unwrap();
        h.flush().await.unwrap();
        h.push(said("And the sun?", 4_000, 5_000)).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            roles(&seen[1]),
            [],
            "the revised turn and its reply are gone"
        );
        assert_eq!(
            roles(&seen[2]),
            [
                ("user", "Tell me about the moon."),
                (
                    "assistant",
                    "The moon is bright tonight. It circles the earth every month."
                )
            ]
        );
    }
}
