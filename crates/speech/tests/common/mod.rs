//! What the speech tests share: running an example manifest over audio through the session
//! router, and word error rate.
//!
//! Word error rate normalisation before scoring, applied to reference and hypothesis alike: lowercase; hyphens
//! and dashes become spaces; every other character that is not a letter, digit or space
//! (punctuation, apostrophes) is removed; runs of whitespace become one space. Edits are the
//! word-level Levenshtein distance (substitutions + insertions + deletions).
#![allow(dead_code)]

use std::time::Duration;

use remotemedia_core::{Packet, Runtime, RuntimeBuilder, RuntimeData};

/// A runtime with every node type of the audio and speech crates.
pub fn runtime() -> Runtime {
    RuntimeBuilder::new()
        .nodes(remotemedia_audio::register)
        .nodes(remotemedia_speech::register)
        .build()
        .unwrap()
}

/// Runs `examples/<name>` over interleaved `samples` in 20 ms frames, as a live source would
/// deliver them; returns every output packet (a node failure fails the test).
pub async fn run_example(name: &str, samples: Vec<f32>, rate: u32, channels: u16) -> Vec<Packet> {
    run_example_on(&runtime(), name, samples, rate, channels).await
}

/// [`run_example`] on another runtime (one with the Python executor, say).
pub async fn run_example_on(
    runtime: &Runtime,
    name: &str,
    samples: Vec<f32>,
    rate: u32,
    channels: u16,
) -> Vec<Packet> {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let pipeline = runtime.load(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let session = runtime.open(&pipeline).await.unwrap();
    let (tx, mut rx) = session.split();
    let feed = async move {
        let frame = rate as usize / 50 * usize::from(channels);
        for (i, chunk) in samples.chunks(frame).enumerate() {
            let at = Duration::from_millis(20 * i as u64);
            tx.send_at(RuntimeData::audio(chunk.to_vec(), rate, channels), at)
                .await
                .unwrap();
        }
    };
    let collect = async {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            out.push(item.unwrap_or_else(|f| panic!("{f}")));
        }
        out
    };
    let ((), out) = tokio::join!(feed, collect);
    rx.finish().await.unwrap();
    out
}

/// The normalisation stated at the top of this file.
pub fn normalise(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            '-' | '\u{2010}'..='\u{2015}' => Some(' '),
            c if c.is_alphanumeric() || c.is_whitespace() => Some(c),
            _ => None,
        })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// Word edits turning `reference` into `hypothesis`, and reference words, after [`normalise`].
pub fn word_edits(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalise(reference);
    let h = normalise(hypothesis);
    // One row of the Levenshtein table at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    (prev[h.len()], r.len())
}

pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (edits, words) = word_edits(reference, hypothesis);
    edits as f64 / words.max(1) as f64
}

#[test]
fn wer_counts_word_edits_after_normalisation() {
    assert_eq!(
        wer("Ever tried. Ever failed.", "ever tried, ever failed"),
        0.0
    );
    assert_eq!(wer("a b c d", "a x c d"), 0.25);
    assert_eq!(wer("a b c d", "a b d"), 0.25);
    assert_eq!(wer("a b c d", "a b c d e f"), 0.5);
    assert_eq!(
        normalise("Fail  better \u{2013} so-called It's"),
        ["fail", "better", "so", "called", "its"]
    );
}
