//! Many sessions, one model: SileroVAD nodes in 50 sessions opened at once share one loaded
//! model, as the process metrics show.
//!
//! Needs `./scripts/setup-models.sh` (fails, never skips, without it).

use std::sync::Arc;

use remotemedia_core::{RuntimeBuilder, RuntimeData};
use remotemedia_speech::SileroVad;
use remotemedia_speech::models::{self, model_key};

const SESSIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_sessions_load_silero_once() {
    let model = SileroVad::default_model(16_000);
    if let Err(e) = models::require_file(&model) {
        panic!("{e}");
    }
    let runtime = Arc::new(
        RuntimeBuilder::new()
            .nodes(remotemedia_speech::register)
            .build()
            .unwrap(),
    );
    let pipeline = runtime
        .load(
            "version: v1\nnodes:\n  - {id: vad, type: SileroVAD, params: {threads: 1}}\n",
            "vad.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let barrier = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let (runtime, pipeline, barrier) = (
                Arc::clone(&runtime),
                Arc::clone(&pipeline),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let session = runtime.open(&pipeline).await.unwrap();
                // 100 ms of silence: three windows scored, no speech.
                session
                    .send(RuntimeData::audio(vec![0.0; 1_600], 16_000, 1))
                    .await
                    .unwrap();
                session.close().await.unwrap().0
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(out.len(), 1, "the audio passed through, no events");
        assert!(out[0].data.as_audio().is_some());
    }
    let key = model_key(&model, 1);
    let snapshot = runtime.metrics().snapshot();
    let m = &snapshot.pools["models"].models[&key.to_string()];
    assert_eq!(m.counters.loads, 1, "{m:?}");
    assert_eq!(m.counters.load_failures, 0);
    assert!(m.loaded && m.instances == 1, "{m:?}");
    // Every session after the first found the streams' shared batcher (holding that session).
    let (_, batcher) = snapshot.pools["models"]
        .models
        .iter()
        .find(|(k, _)| k.contains("silero_vad_openvino_16k.onnx#silero-batches"))
        .expect("the shared batcher is pooled");
    assert_eq!(batcher.counters.loads, 1, "{batcher:?}");
    assert!(
        batcher.counters.hits >= (SESSIONS - 1) as u64,
        "{batcher:?}"
    );
}
