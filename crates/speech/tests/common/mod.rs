//! What the speech tests share: running an example manifest over audio through the session
//! router, and word error rate (wer.rs).
#![allow(dead_code)]

use std::time::Duration;

use remotemedia_core::{Packet, Runtime, RuntimeBuilder, RuntimeData};

mod wer;
#[allow(unused_imports)] // not every test uses it
pub use wer::*;

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
