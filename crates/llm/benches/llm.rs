//! Speed of the LLM engine on the bundled SmolLM2-135M-Instruct (Q4_1): time to first token of
//! a ~100-token prompt, decode tokens per second of one session, and of eight sessions at once.
//! `bench/llm.sh` runs this beside llama-cpp-python on the same model and prompts.
//!
//!   cargo bench -p remotemedia-llm --bench llm
//!
//! Prints one JSON object per measurement.

use std::time::{Duration, Instant};

use remotemedia_llm::{Engine, EngineConfig, Event, Message, Sampling};
use remotemedia_speech::models;
use tokio::sync::mpsc;

/// A question of about 100 tokens with the system prompt, and one that makes a long answer.
const CONTEXT: &str = "I am planning a weekend trip to the coast with two friends. We will \
    drive on Saturday morning, stay one night in a small town by the harbour, and come back on \
    Sunday evening. One of us does not eat meat and another one gets seasick easily.";
const QUESTION: &str = "What should we pack, and what could we do there?";
const LONG: &str = "Write a long story about a lighthouse keeper and a storm.";

fn messages(user: &str) -> Vec<Message> {
    vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", user),
    ]
}

struct Run {
    text: String,
    first: Duration,
    total: Duration,
    tokens: u32,
}

async fn run(engine: &Engine, user: &str, max_tokens: u32) -> Run {
    let session = engine.session();
    let run = turn(engine, session, &messages(user), max_tokens).await;
    engine.close(session);
    run
}

/// One turn of `session` on `messages`.
async fn turn(engine: &Engine, session: u64, messages: &[Message], max_tokens: u32) -> Run {
    let tokens = engine.tokenize(&engine.prompt(messages).unwrap());
    let sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        max_tokens,
        stop: Vec::new(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    engine.turn(session, tokens, sampling, tx).unwrap();
    let mut first = None;
    let mut text = String::new();
    loop {
        match rx.recv().await.unwrap() {
            Event::Text(piece) => {
                first.get_or_insert_with(|| started.elapsed());
                text.push_str(&piece);
            }
            Event::End(end) => {
                return Run {
                    text,
                    first: first.unwrap_or_default(),
                    total: started.elapsed(),
                    tokens: end.completion_tokens,
                };
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Decode speed: tokens after the first over the time after the first.
fn decode_rate(r: &Run) -> f64 {
    f64::from(r.tokens.saturating_sub(1)) / (r.total - r.first).as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let model = remotemedia_llm::engine::default_model(&models::models_dir());
    models::require_file(&model).unwrap_or_else(|e| panic!("{e}"));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let engine = Engine::start(EngineConfig {
        model,
        slots: 8,
        slot_tokens: 1024,
        threads,
    })
    .unwrap();
    let question = format!("{CONTEXT} {QUESTION}");
    let prompt_tokens = engine
        .tokenize(&engine.prompt(&messages(&question)).unwrap())
        .len();
    run(&engine, &question, 4).await; // warm-up
    // Each a new conversation that shares no more than the short system prompt with the
    // others (the run number goes first), so the whole prompt is read.
    let firsts: Vec<f64> = {
        let mut v = Vec::new();
        for i in 0..10 {
            let fresh = format!("{i}. {question}");
            v.push(run(&engine, &fresh, 1).await.first.as_secs_f64() * 1e3);
        }
        v
    };
    println!(
        "{{\"what\":\"ttft_ms\",\"turn\":\"first\",\"prompt_tokens\":{prompt_tokens},\"p50\":{:.1},\"min\":{:.1}}}",
        median(firsts.clone()),
        firsts.iter().copied().fold(f64::MAX, f64::min)
    );
    // A later turn of a conversation: only the new text and the last answer are decoded.
    let mut warm = Vec::new();
    for i in 0..10 {
        let session = engine.session();
        let mut chat = messages(&format!("{i}. {question}"));
        let answer = turn(&engine, session, &chat, 32).await.text;
        chat.push(Message::new("assistant", answer));
        chat.push(Message::new("user", "And what should we eat there?"));
        warm.push(turn(&engine, session, &chat, 1).await.first.as_secs_f64() * 1e3);
        engine.close(session);
    }
    println!(
        "{{\"what\":\"ttft_ms\",\"turn\":\"second, same conversation\",\"p50\":{:.1}}}",
        median(warm)
    );
    let mut rates = Vec::new();
    let mut generated = 0;
    for _ in 0..3 {
        let r = run(&engine, LONG, 128).await;
        generated = r.tokens;
        rates.push(decode_rate(&r));
    }
    println!(
        "{{\"what\":\"decode_tokens_per_s\",\"sessions\":1,\"tokens\":{generated},\"median\":{:.1}}}",
        median(rates)
    );
    // Eight sessions at once: the tokens all of them get per second.
    let started = Instant::now();
    let runs: Vec<Run> = {
        let mut set = tokio::task::JoinSet::new();
        let engine = std::sync::Arc::new(engine);
        for _ in 0..8 {
            let engine = std::sync::Arc::clone(&engine);
            set.spawn(async move { run(&engine, LONG, 128).await });
        }
        set.join_all().await
    };
    let wall = started.elapsed().as_secs_f64();
    let total: u32 = runs.iter().map(|r| r.tokens).sum();
    let worst_first = runs.iter().map(|r| r.first).max().unwrap_or_default();
    println!(
        "{{\"what\":\"decode_tokens_per_s\",\"sessions\":8,\"tokens\":{total},\"aggregate\":{:.1},\"worst_ttft_ms\":{:.0}}}",
        f64::from(total) / wall,
        worst_first.as_secs_f64() * 1e3
    );
}
