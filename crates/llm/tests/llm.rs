//! The LLM engine and node on the bundled SmolLM2 model.

use std::sync::atomic::Ordering::Relaxed;

use remotemedia_core::testing::NodeHarness;
use remotemedia_core::{Control, RuntimeData};
use remotemedia_llm::{End, Engine, EngineConfig, Event, Finish, LlmNode, Message, Sampling};
use remotemedia_speech::models;
use remotemedia_speech::tts::split_sentences;
use tokio::sync::mpsc;

fn engine(slots: u32) -> Engine {
    let model = remotemedia_llm::engine::default_model(&models::models_dir());
    if let Err(e) = models::require_file(&model) {
        panic!("{e}");
    }
    Engine::start(EngineConfig {
        model,
        slots,
        slot_tokens: 1024,
        // One thread each: the tests run side by side on few cores, and llama.cpp's threads
        // wait for each other by spinning.
        threads: 1,
    })
    .unwrap()
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        max_tokens,
        stop: Vec::new(),
    }
}

fn chat(question: &str) -> Vec<Message> {
    vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", question),
    ]
}

/// Runs a turn to its end: the text and how it ended.
async fn reply(engine: &Engine, session: u64, messages: &[Message], s: Sampling) -> (String, End) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tokens = engine.tokenize(&engine.prompt(messages).unwrap());
    engine.turn(session, tokens, s, tx).unwrap();
    let mut text = String::new();
    loop {
        match rx.recv().await.unwrap() {
            Event::Text(piece) => text.push_str(&piece),
            Event::End(end) => return (text, end),
        }
    }
}

#[tokio::test]
async fn a_seeded_reply_is_the_same_every_time() {
    let engine = engine(2);
    let sampling = Sampling {
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        max_tokens: 40,
        stop: Vec::new(),
    };
    let q = chat("Tell me something about the sea.");
    let (a, end) = reply(&engine, engine.session(), &q, sampling.clone()).await;
    let (b, _) = reply(&engine, engine.session(), &q, sampling).await;
    assert!(
        !a.trim().is_empty() && end.completion_tokens > 0,
        "{a:?} {end:?}"
    );
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_later_turn_reads_only_what_is_new() {
    let engine = engine(2);
    let session = engine.session();
    let mut messages = chat("What colour is the sky?");
    let (first, end1) = reply(&engine, session, &messages, greedy(24)).await;
    assert_eq!(end1.cached_tokens, 0);
    messages.push(Message::new("assistant", first));
    messages.push(Message::new("user", "And the grass?"));
    let (second, end2) = reply(&engine, session, &messages, greedy(24)).await;
    // The whole first prompt (and most of the reply) came from the cache.
    assert!(
        end2.cached_tokens >= end1.prompt_tokens && end2.cached_tokens < end2.prompt_tokens,
        "{end1:?} {end2:?}"
    );
    // Another session starts from what the first one's slot holds of its prompt (copied into
    // its own slot), and that cache is right: the same prompt gets the same greedy reply.
    let (again, other) = reply(&engine, engine.session(), &messages, greedy(24)).await;
    assert!(other.cached_tokens >= end1.prompt_tokens, "{other:?}");
    assert_eq!(again, second);
    // A prompt that shares only this short system prompt (under 16 tokens: not worth copying
    // a slot for) keeps no more than the slot it took already held.
    let (_, fresh) = reply(&engine, engine.session(), &chat("Hi."), greedy(2)).await;
    assert!(fresh.cached_tokens < 16, "{fresh:?}");
}

const LONG_SYSTEM: &str = "You are a friendly voice assistant in a museum of natural history. \
    Answer visitors' questions briefly, in one or two short sentences, and never use lists.";

fn museum(question: &str) -> Vec<Message> {
    vec![
        Message::new("system", LONG_SYSTEM),
        Message::new("user", question),
    ]
}

#[tokio::test]
async fn a_prefilled_session_reads_only_its_question_and_answers_the_same() {
    let reference = engine(1);
    let q = museum("Where do the dinosaurs live?");
    let (expected, cold) = reply(&reference, reference.session(), &q, greedy(24)).await;
    assert_eq!(cold.cached_tokens, 0);
    let engine = engine(2);
    let session = engine.session();
    engine
        .prefill(session, &[Message::new("system", LONG_SYSTEM)])
        .unwrap();
    let (text, warm) = reply(&engine, session, &q, greedy(24)).await;
    assert!(warm.cached_tokens > 30, "{warm:?}");
    assert!(warm.prompt_tokens - warm.cached_tokens <= 16, "{warm:?}");
    assert_eq!(text, expected);
    // A second session's prefill is a copy of the first one's cache, not a read.
    let other = engine.session();
    engine
        .prefill(other, &[Message::new("system", LONG_SYSTEM)])
        .unwrap();
    let (text, end) = reply(&engine, other, &q, greedy(24)).await;
    assert!(end.cached_tokens >= warm.cached_tokens, "{end:?}");
    assert_eq!(text, expected);
}

/// Two questions of one museum conversation, greedy: both answers, and how the first turn ended.
async fn two_turns(
    engine: &Engine,
    session: u64,
    (first, second): (&str, &str),
) -> ((String, String), End) {
    let mut messages = museum(first);
    let (a, end) = reply(engine, session, &messages, greedy(20)).await;
    messages.push(Message::new("assistant", a.clone()));
    messages.push(Message::new("user", second));
    let (b, _) = reply(engine, session, &messages, greedy(20)).await;
    ((a, b), end)
}

/// Conversations of many sessions at once, in fewer slots than sessions, sharing their
/// starts (copied between slots while others generate), one turn cancelled midway: every
/// reply is the one the same conversation gets alone in a fresh engine.
#[tokio::test]
async fn shared_starts_under_load_give_the_replies_of_conversations_read_alone() {
    let questions = [
        ("Where do the dinosaurs live?", "How big were they?"),
        ("What is a fossil?", "How old is the oldest one?"),
        ("Do you have whales here?", "What do they eat?"),
        ("When do you close today?", "Is there a cafe?"),
        ("What is the biggest animal?", "Is it still alive?"),
    ];
    let reference = engine(1);
    let mut expected = Vec::new();
    for &questions in &questions {
        let (answers, _) = two_turns(&reference, reference.session(), questions).await;
        expected.push(answers);
    }
    let engine = std::sync::Arc::new(engine(3));
    // A turn cancelled after its first piece, holding a slot while the others start.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tokens = engine.tokenize(&engine.prompt(&museum("Count to fifty.")).unwrap());
    let cancel = engine
        .turn(engine.session(), tokens, greedy(200), tx)
        .unwrap();
    let mut tasks = Vec::new();
    for (i, &(first, second)) in questions.iter().enumerate() {
        let engine = std::sync::Arc::clone(&engine);
        tasks.push(tokio::spawn(async move {
            let session = engine.session();
            if i % 2 == 0 {
                engine
                    .prefill(session, &[Message::new("system", LONG_SYSTEM)])
                    .unwrap();
            }
            let (answers, end) = two_turns(&engine, session, (first, second)).await;
            // A prefilled session's first turn finds its system prompt in the cache.
            assert!(i % 2 == 1 || end.cached_tokens > 30, "{end:?}");
            engine.close(session);
            answers
        }));
    }
    assert!(matches!(rx.recv().await, Some(Event::Text(_))));
    cancel.store(true, Relaxed);
    for (task, expected) in tasks.into_iter().zip(&expected) {
        assert_eq!(&task.await.unwrap(), expected);
    }
}

#[tokio::test]
async fn a_stop_string_ends_the_reply_before_it() {
    let engine = engine(1);
    let q = chat("Name three fruits.");
    let (full, _) = reply(&engine, engine.session(), &q, greedy(40)).await;
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 3, "{full:?}");
    let stop = words[2].to_string();
    let cut = &full[..full.find(&stop).unwrap()];
    let mut s = greedy(40);
    s.stop = vec![stop.clone()];
    let (text, end) = reply(&engine, engine.session(), &q, s).await;
    assert_eq!(
        (text.as_str(), end.finish),
        (cut, Finish::Stop),
        "stop {stop:?}"
    );
}

#[tokio::test]
async fn a_cancelled_turn_frees_its_slot_at_once() {
    // One slot: the second session can only run once the first one's turn is gone.
    let engine = engine(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let q = chat("Count from 1 to 200, one number per line.");
    let tokens = engine.tokenize(&engine.prompt(&q).unwrap());
    let cancel = engine
        .turn(engine.session(), tokens, greedy(500), tx)
        .unwrap();
    assert!(matches!(rx.recv().await, Some(Event::Text(_))));
    cancel.store(true, Relaxed);
    let (text, end) = reply(&engine, engine.session(), &chat("Say hello."), greedy(8)).await;
    assert!(
        !text.is_empty() && end.finish != Finish::Cancelled,
        "{end:?}"
    );
    let mut first_end = None;
    while let Some(e) = rx.recv().await {
        if let Event::End(end) = e {
            first_end = Some(end);
        }
    }
    let first_end = first_end.unwrap();
    assert_eq!(first_end.finish, Finish::Cancelled);
    assert!(first_end.completion_tokens < 500, "{first_end:?}");
}

/// Pieces of text until the reply holds a whole sentence and the start of the next.
async fn until_a_sentence(rx: &mut mpsc::UnboundedReceiver<Event>) -> (String, usize) {
    let (mut text, mut pieces) = (String::new(), 0);
    while split_sentences(&text).len() < 2 {
        match rx.recv().await {
            Some(Event::Text(piece)) => {
                text.push_str(&piece);
                pieces += 1;
            }
            other => panic!("the reply ended before a second sentence: {text:?} {other:?}"),
        }
    }
    (text, pieces)
}

#[tokio::test]
async fn a_turn_writing_its_first_sentence_goes_before_one_already_heard() {
    let engine = engine(2);
    let turn = |question: &str| {
        let (tx, rx) = mpsc::unbounded_channel();
        let tokens = engine.tokenize(&engine.prompt(&chat(question)).unwrap());
        engine
            .turn(engine.session(), tokens, greedy(300), tx)
            .unwrap();
        rx
    };
    let mut story = turn("Tell me a long story about a dragon and a knight.");
    until_a_sentence(&mut story).await;
    // The story has a sentence to be spoken; a new question comes.
    let mut question = turn("Why is the sky blue? Explain it in detail.");
    while story.try_recv().is_ok() {}
    let (first, pieces) = until_a_sentence(&mut question).await;
    let mut story_pieces = 0;
    while let Ok(Event::Text(_)) = story.try_recv() {
        story_pieces += 1;
    }
    // Alone in three steps of four, the question's first sentence came while the story wrote
    // a quarter as many pieces (with no priority both would grow alike).
    assert!(pieces >= 8, "{first:?}");
    assert!(
        story_pieces * 2 < pieces,
        "{story_pieces} story pieces, {pieces} for {first:?}"
    );
}

#[tokio::test]
async fn a_prompt_over_the_session_budget_is_refused() {
    let engine = engine(1);
    let long = "word ".repeat(2000);
    let tokens = engine.tokenize(&engine.prompt(&chat(&long)).unwrap());
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = engine
        .turn(engine.session(), tokens, greedy(4), tx)
        .unwrap_err();
    assert!(err.to_string().contains("more than the 1024"), "{err}");
}

fn texts(out: &[remotemedia_core::node::Output], port: usize) -> Vec<(String, bool)> {
    out.iter()
        .filter(|o| o.port == port)
        .filter_map(|o| o.data.as_text())
        .map(|t| (t.text.to_string(), t.is_final))
        .collect()
}

#[tokio::test]
async fn the_node_streams_sentences_and_pieces_and_keeps_a_bounded_conversation() {
    let mut h = NodeHarness::new::<LlmNode>(serde_json::json!({
        "temperature": 0.0, "max_tokens": 48, "context_tokens": 256, "sessions": 1, "threads": 1,
        "stream_tokens": true
    }))
    .unwrap();
    // Interim text is not a question.
    let interim = RuntimeData::Text(remotemedia_core::TextFrame {
        text: "what is".into(),
        is_final: false,
        span: None,
    });
    assert!(h.push(interim).await.unwrap().is_empty());
    // Many turns in a small context: the oldest leave, every turn is answered.
    for q in [
        "Hello! Who are you?",
        "What is the capital of France?",
        "Tell me about Paris in two sentences.",
        "What is two plus two?",
        "Name a large animal.",
        "Thank you, goodbye.",
    ] {
        h.push(RuntimeData::text(q)).await.unwrap();
        let out = h.flush_outputs().await.unwrap();
        let sentences = texts(&out, 0);
        let pieces = texts(&out, 1);
        assert!(!sentences.is_empty(), "no reply to {q:?}");
        assert!(sentences.iter().all(|(_, f)| *f) && pieces.iter().all(|(_, f)| !*f));
        let said: String = pieces.iter().map(|(p, _)| p.as_str()).collect();
        let joined: Vec<String> = sentences.into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            said.split_whitespace().collect::<Vec<_>>(),
            joined.join(" ").split_whitespace().collect::<Vec<_>>()
        );
    }
    // A cancel with nothing running is harmless, and is passed on.
    let out = h
        .push_control(Control::Cancel {
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert!(out.iter().all(|d| matches!(d, RuntimeData::Control(_))));
    h.close().await.unwrap();
}

#[test]
fn an_unknown_model_file_is_named() {
    let err = NodeHarness::new::<LlmNode>(serde_json::json!({"model": "/nonexistent/x.gguf"}))
        .err()
        .unwrap();
    assert!(
        err.message.contains("/nonexistent/x.gguf"),
        "{}",
        err.message
    );
}
