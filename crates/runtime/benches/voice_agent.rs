//! The voice agent (`examples/voice_agent.yaml`) against scripted callers speaking in real time:
//! voice-to-voice (the last sound of the user's speech → the first sound of the answer out of
//! the session, as the browser page measures it) and
//! barge-in (onset of speech over the answer → the `interrupted` event out of the session,
//! after which the playout releases nothing more).
//!
//!   cargo bench -p remotemedia-runtime --bench voice_agent -- [SESSIONS] [ROUNDS]
//!
//! `AGENT_MANIFEST=path` measures another agent manifest with the same node ids.
//!
//! Each caller asks "Tell me about the moon.", lets the answer play for a second, asks "What is
//! the sun made of?" over it, and lets that answer play out; `ROUNDS` times. Microphone audio
//! goes in as 20 ms frames at real time (silence between questions), so the VAD, the models and
//! the playout run as they would for a live caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use remotemedia_core::{Packet, RuntimeData, SessionInput};
use tokio::sync::{mpsc, oneshot};

#[path = "../../server/tests/common/speak.rs"]
mod speak;

const RATE: u32 = 16_000;
const FRAME: usize = 320;

/// An utterance to say, and where to report when its speech started and ended.
struct Say {
    samples: Vec<f32>,
    onset: Option<oneshot::Sender<Instant>>,
    end: oneshot::Sender<Instant>,
    /// When the last frame with speech in it went out.
    last_loud: Option<Instant>,
}

/// A sample level that counts as sound, not silence.
const AUDIBLE: f32 = 0.02;

/// The caller's microphone: 20 ms frames at real time, silence when there is nothing to say.
async fn microphone(input: SessionInput, mut say: mpsc::UnboundedReceiver<Say>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0usize;
    let mut current: Option<(Say, usize)> = None;
    loop {
        tick.tick().await;
        if current.is_none() {
            current = match say.try_recv() {
                Ok(s) => Some((s, 0)),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            };
        }
        let frame = match current.take() {
            Some((mut s, at)) => {
                let end = (at + FRAME).min(s.samples.len());
                let chunk = s.samples[at..end].to_vec();
                let now = Instant::now();
                if chunk.iter().any(|x| x.abs() > AUDIBLE) {
                    s.last_loud = Some(now);
                    if let Some(onset) = s.onset.take() {
                        let _ = onset.send(now);
                    }
                }
                if end < s.samples.len() {
                    current = Some((s, end));
                } else {
                    // The end of speech, not of the clip and the silence that closes it.
                    let _ = s.end.send(s.last_loud.unwrap_or(now));
                }
                chunk
            }
            None => vec![0.0; FRAME],
        };
        let ts = Duration::from_secs_f64(sent as f64 / f64::from(RATE));
        sent += frame.len();
        if input
            .send_at(RuntimeData::audio(frame, RATE, 1), ts)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What one caller measured.
#[derive(Default)]
struct Measured {
    voice_to_voice: Vec<Duration>,
    barge_in: Vec<Duration>,
    /// Where voice-to-voice goes: end of speech → the question's text, → the answer's first
    /// sentence, → its first audio.
    to_question: Vec<Duration>,
    to_sentence: Vec<Duration>,
    to_audio: Vec<Duration>,
}

/// When an answer's stages left the session.
struct Answer {
    question: Instant,
    sentence: Instant,
    audio: Instant,
    /// When the answer playing before it was interrupted (if it was still playing).
    interrupted: Option<Instant>,
}

impl Measured {
    fn add(&mut self, end: Instant, a: &Answer) {
        self.voice_to_voice.push(a.audio - end);
        self.to_question
            .push(a.question.saturating_duration_since(end));
        self.to_sentence
            .push(a.sentence.saturating_duration_since(a.question));
        self.to_audio
            .push(a.audio.saturating_duration_since(a.sentence));
    }
}

/// Answer audio with sound in it (the voice's leading silence is not the answer yet).
fn is_answer_audio(p: &Packet) -> bool {
    &*p.source == "speaker"
        && p.data
            .as_audio()
            .is_some_and(|a| a.samples().iter().any(|x| x.abs() > AUDIBLE))
}

/// The answer stopped by the caller speaking over it.
fn is_interrupted(p: &Packet) -> bool {
    matches!(&p.data, RuntimeData::Json(v) if v["event"] == "interrupted" && v["reason"] == "barge-in")
}

/// The outputs as they leave the session, with when.
type Outputs = mpsc::UnboundedReceiver<(Instant, Packet)>;

/// The next output, and when it left the session.
async fn next(out: &mut Outputs) -> (Instant, Packet) {
    tokio::time::timeout(Duration::from_secs(60), out.recv())
        .await
        .expect("the agent answers within 60 s")
        .expect("the session is open")
}

/// The answer to the question that ended at `after`.
async fn answer_after(out: &mut Outputs, after: Instant) -> Answer {
    let (mut interrupted, mut question, mut sentence) = (None, None, None);
    loop {
        let (t, p) = next(out).await;
        if is_interrupted(&p) {
            interrupted = Some(t);
        }
        if t < after {
            continue;
        }
        match &*p.source {
            "question" => question = question.or(Some(t)),
            "reply" => sentence = sentence.or(Some(t)),
            _ if is_answer_audio(&p) => {
                return Answer {
                    question: question.unwrap_or(t),
                    sentence: sentence.unwrap_or(t),
                    audio: t,
                    interrupted,
                };
            }
            _ => {}
        }
    }
}

/// Queues `samples` on the microphone; gives when its speech starts and ends.
fn say(
    mic: &mpsc::UnboundedSender<Say>,
    samples: &[f32],
) -> (oneshot::Receiver<Instant>, oneshot::Receiver<Instant>) {
    let (onset, onset_rx) = oneshot::channel();
    let (end, end_rx) = oneshot::channel();
    mic.send(Say {
        samples: samples.to_vec(),
        onset: Some(onset),
        end,
        last_loud: None,
    })
    .unwrap();
    (onset_rx, end_rx)
}

async fn caller(
    rt: &remotemedia_core::Runtime,
    rounds: usize,
    moon: &[f32],
    sun: &[f32],
) -> Measured {
    let path = std::env::var("AGENT_MANIFEST").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/voice_agent.yaml"
        )
        .into()
    });
    let manifest = std::fs::read_to_string(path).unwrap();
    let p = rt.load(&manifest, "voice_agent.yaml").unwrap();
    let (input, mut output) = rt.open(&p).await.unwrap().split();
    let (tx, mut out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(r) = output.recv().await {
            match r {
                Ok(p) => drop(tx.send((Instant::now(), p))),
                Err(f) => eprintln!("{f}"),
            }
        }
    });
    let (mic, said) = mpsc::unbounded_channel();
    tokio::spawn(microphone(input, said));
    let mut m = Measured::default();
    for _ in 0..rounds {
        let (_, end) = say(&mic, moon);
        let end = end.await.unwrap();
        let a = answer_after(&mut out, end).await;
        m.add(end, &a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Over the answer, if it is still playing (a short one may have ended).
        let (onset, end) = say(&mic, sun);
        let (onset, end) = (onset.await.unwrap(), end.await.unwrap());
        let a = answer_after(&mut out, end).await;
        m.add(end, &a);
        if let Some(stopped) = a.interrupted {
            m.barge_in.push(stopped.saturating_duration_since(onset));
        }
        // The second answer plays out.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1_500), out.recv()).await
        {
        }
    }
    drop(mic);
    m
}

/// One measure of every caller: its count, median, 95th percentile and maximum.
fn report(all: &[Measured], name: &str, measure: fn(&Measured) -> &Vec<Duration>) {
    let mut v: Vec<Duration> = all.iter().flat_map(measure).copied().collect();
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_millis();
    println!(
        "{name}: n={} p50={} ms p95={} ms max={} ms",
        v.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sessions = args.first().copied().unwrap_or(1);
    let rounds = args.get(1).copied().unwrap_or(5);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = remotemedia_runtime::runtime();
        let moon = [
            speak::speak("Tell me about the moon.").await,
            speak::silence(0.2),
        ]
        .concat();
        let sun = [
            speak::speak("What is the sun made of?").await,
            speak::silence(0.2),
        ]
        .concat();
        let (rt, moon, sun) = (Arc::new(rt), Arc::new(moon), Arc::new(sun));
        let mut callers = tokio::task::JoinSet::new();
        for i in 0..sessions {
            let (rt, moon, sun) = (Arc::clone(&rt), Arc::clone(&moon), Arc::clone(&sun));
            callers.spawn(async move {
                // Callers start a little apart, as people do.
                tokio::time::sleep(Duration::from_millis(300 * i as u64)).await;
                caller(&rt, rounds, &moon, &sun).await
            });
        }
        let all = callers.join_all().await;
        println!("voice agent, {sessions} session(s) x {rounds} round(s):");
        report(
            &all,
            "  voice-to-voice (end of speech -> first answer audio)",
            |m| &m.voice_to_voice,
        );
        report(&all, "    end of speech -> question's text", |m| {
            &m.to_question
        });
        report(
            &all,
            "    question's text -> first sentence of the answer",
            |m| &m.to_sentence,
        );
        report(&all, "    first sentence -> first answer audio", |m| {
            &m.to_audio
        });
        report(&all, "  barge-in (speech onset -> answer stopped)", |m| {
            &m.barge_in
        });
    });
}
