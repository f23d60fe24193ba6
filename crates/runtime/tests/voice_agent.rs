//! The voice agent (`examples/voice_agent.yaml`) interrupted: a scripted stream in which the user
//! asks a question, then speaks over the spoken answer with another; and a question with a pause
//! in it, answered whole.
//!
//! Needs `./scripts/setup-models.sh` (Silero, Moonshine, Piper, SmolLM2); fails without them.

use std::time::{Duration, Instant};

use remotemedia_core::{Packet, RuntimeData, SessionInput};

#[path = "../../server/tests/common/speak.rs"]
mod speak;
use speak::{silence, speak};

const RATE: u32 = 16_000;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The example, with the sampling fixed so the answers are the same every run.
fn agent_manifest() -> String {
    let m = std::fs::read_to_string(repo("examples/voice_agent.yaml")).unwrap();
    assert!(m.contains("temperature: 0.3"));
    m.replace("temperature: 0.3", "temperature: 0.0\n      seed: 1")
}

/// What left the session, and when.
struct Heard {
    packets: Vec<(Instant, Packet)>,
}

impl Heard {
    fn texts(&self, source: &str) -> Vec<String> {
        self.packets
            .iter()
            .filter(|(_, p)| &*p.source == source)
            .filter_map(|(_, p)| p.data.as_text().map(|t| t.text.to_string()))
            .collect()
    }

    /// One line per output (audio runs counted), for failure messages.
    fn summary(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        let mut audio = 0.0;
        for (_, p) in &self.packets {
            if let Some(a) = p.data.as_audio() {
                audio += a.duration().as_secs_f64();
                continue;
            }
            if audio > 0.0 {
                lines.push(format!("  {audio:.2} s of audio"));
                audio = 0.0;
            }
            lines.push(format!("  {}.{}: {:?}", p.source, p.port, p.data));
        }
        if audio > 0.0 {
            lines.push(format!("  {audio:.2} s of audio"));
        }
        lines.join("\n")
    }

    /// Seconds of reply audio received before `until`.
    fn audio_before(&self, until: Instant) -> f64 {
        self.packets
            .iter()
            .filter(|(t, _)| *t < until)
            .filter_map(|(_, p)| p.data.as_audio())
            .map(|a| a.duration().as_secs_f64())
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaking_over_the_answer_stops_it_and_the_next_question_is_answered() {
    let rt = remotemedia_runtime::runtime();
    let first = speak("Tell me about the moon.").await;
    let second = speak("What is the sun made of?").await;
    let p = rt.load(&agent_manifest(), "voice_agent.yaml").unwrap();
    let (input, mut output) = rt.open(&p).await.unwrap().split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(r) = output.recv().await {
            let p = r.unwrap_or_else(|f| panic!("{f}"));
            let _ = tx.send((Instant::now(), p));
        }
    });
    let mut heard = Heard {
        packets: Vec::new(),
    };
    let mut at = 0usize;
    let quiet = silence(1.0);
    for part in [&quiet[..8_000], &first[..], &quiet[..]] {
        feed(&input, &mut at, part).await;
    }
    // Wait for the answer to be heard, then let it play for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !heard
        .packets
        .iter()
        .any(|(_, p)| p.data.as_audio().is_some())
    {
        let next = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        heard
            .packets
            .push(next.expect("no answer audio in 60 s").unwrap());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for part in [&second[..], &quiet[..], &quiet[..]] {
        feed(&input, &mut at, part).await;
    }
    // Until the second question has been answered aloud.
    let answered = |h: &Heard| {
        let asked = h.texts("question").join(" ").to_lowercase().contains("sun");
        let event = h.packets.iter().position(|(_, p)| is_interrupted(p));
        asked
            && event.is_some_and(|e| {
                h.packets[e..].iter().any(|(_, p)| &*p.source == "reply")
                    && h.packets[e..]
                        .iter()
                        .any(|(_, p)| p.data.as_audio().is_some())
            })
    };
    while !answered(&heard) {
        let Ok(next) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            panic!("not answered again in 60 s; heard:\n{}", heard.summary());
        };
        heard.packets.push(next.unwrap());
    }
    drop(input);
    reader.await.unwrap();
    while let Some(p) = rx.recv().await {
        heard.packets.push(p);
    }

    let questions = heard.texts("question").join(" ").to_lowercase();
    assert!(
        questions.contains("moon") && questions.contains("sun"),
        "{questions}"
    );
    let (when, event) = heard
        .packets
        .iter()
        .find(|(_, p)| is_interrupted(p))
        .map(|(t, p)| (*t, json(p)))
        .unwrap();
    assert_eq!(event["reason"], "barge-in");
    // What was heard is the start of the first answer, and not all of it.
    let first_answer: Vec<String> = heard
        .packets
        .iter()
        .filter(|(t, p)| *t < when && &*p.source == "reply")
        .filter_map(|(_, p)| p.data.as_text().map(|t| t.text.to_string()))
        .collect();
    let first_answer = first_answer.join(" ");
    let spoken = event["spoken"].as_str().unwrap();
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (said, heard_words) = (words(&first_answer), words(spoken));
    assert!(
        !heard_words.is_empty() && heard_words.len() < said.len() && said.starts_with(&heard_words),
        "heard {spoken:?} of {first_answer:?}"
    );
    assert!(
        event["dropped_ms"].as_u64().unwrap() > 0,
        "nothing was cut: {event}"
    );
    // The audio that had left before the cancel is what was heard plus the playout's lead.
    let heard_s = event["heard_ms"].as_f64().unwrap() / 1000.0;
    let sent = heard.audio_before(when);
    assert!(
        sent <= heard_s + 0.2,
        "{sent:.2} s of the answer left for {heard_s:.2} s heard"
    );
    let second_answer = heard
        .packets
        .iter()
        .filter(|(t, p)| *t > when && &*p.source == "reply")
        .count();
    assert!(second_answer > 0, "the second question was not answered");
}

/// Sends `samples` as 100 ms frames stamped with their place in the stream.
async fn feed(input: &SessionInput, at: &mut usize, samples: &[f32]) {
    for chunk in samples.chunks(1_600) {
        let ts = Duration::from_secs_f64(*at as f64 / f64::from(RATE));
        *at += chunk.len();
        input
            .send_at(RuntimeData::audio(chunk.to_vec(), RATE, 1), ts)
            .await
            .unwrap();
    }
}

/// An interruption by the user speaking over the answer.
fn is_interrupted(p: &Packet) -> bool {
    matches!(&p.data, RuntimeData::Json(v) if v["event"] == "interrupted" && v["reason"] == "barge-in")
}

/// Speech without the voice's leading and trailing silence.
fn trimmed(samples: Vec<f32>) -> Vec<f32> {
    let loud = |x: &f32| x.abs() > 0.02;
    let from = samples.iter().position(loud).unwrap_or(0);
    let to = samples.iter().rposition(loud).map_or(0, |i| i + 1);
    samples[from..to.max(from)].to_vec()
}

/// A question with a pause in it (longer than the VAD's `pause_ms`, shorter than its
/// `min_silence_ms`): the agent takes the turn at the pause, and when the question goes on it
/// drops that turn and answers the whole question; nothing of the dropped answer is played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_that_goes_on_after_a_pause_is_answered_whole() {
    let rt = remotemedia_runtime::runtime();
    let samples = [
        silence(0.5),
        trimmed(speak("Tell me about").await),
        // Past the 200 ms pause with the VAD's own delay, short of the 500 ms end.
        silence(0.35),
        trimmed(speak("the moon.").await),
        silence(3.0),
    ]
    .concat();
    let p = rt.load(&agent_manifest(), "voice_agent.yaml").unwrap();
    let (input, mut output) = rt.open(&p).await.unwrap().split();
    // In real time, as from a microphone: the playout waits for the end of a turn in wall time.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, chunk) in samples.chunks(320).enumerate() {
            tick.tick().await;
            let ts = Duration::from_millis(20 * i as u64);
            let frame = RuntimeData::audio(chunk.to_vec(), RATE, 1);
            input.send_at(frame, ts).await.unwrap();
        }
    });
    let mut heard = Heard {
        packets: Vec::new(),
    };
    let read = async {
        while let Some(r) = output.recv().await {
            heard
                .packets
                .push((Instant::now(), r.unwrap_or_else(|f| panic!("{f}"))));
        }
    };
    tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("the session ends within 90 s");

    let questions: Vec<(Instant, String, _)> = heard
        .packets
        .iter()
        .filter(|(_, p)| &*p.source == "question")
        .filter_map(|(t, p)| {
            p.data
                .as_text()
                .map(|x| (*t, x.text.to_lowercase(), x.span))
        })
        .collect();
    let summary = heard.summary();
    assert_eq!(
        questions.len(),
        2,
        "taken at the pause, then whole:\n{summary}"
    );
    let ((_, early, early_span), (asked_at, whole, whole_span)) = (&questions[0], &questions[1]);
    assert!(
        !early.contains("moon") && whole.contains("moon"),
        "{summary}"
    );
    assert_eq!(
        early_span.map(|s| s.0),
        whole_span.map(|s| s.0),
        "one turn, from one start"
    );
    // The answer is to the whole question, and only it is heard.
    let answer: Vec<&(Instant, Packet)> = heard
        .packets
        .iter()
        .filter(|(_, p)| &*p.source == "reply")
        .filter(|(_, p)| p.data.as_text().is_some_and(|t| t.span == *whole_span))
        .collect();
    assert!(
        !answer.is_empty(),
        "no answer to the whole question:\n{summary}"
    );
    assert_eq!(
        heard.audio_before(*asked_at),
        0.0,
        "an answer to the unfinished question was played:\n{summary}"
    );
    assert!(heard.audio_before(Instant::now()) > 0.5, "{summary}");
}

fn json(p: &Packet) -> serde_json::Value {
    match &p.data {
        RuntimeData::Json(v) => (**v).clone(),
        other => panic!("{other:?}"),
    }
}
