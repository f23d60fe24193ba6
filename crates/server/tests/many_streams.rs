//! A short load run: eight live streams of a human recording, at real time, through the default
//! speech pipeline on one server. Every stream gets its own words back, and every utterance went
//! through the one shared Moonshine scheduler. (The timed version is bench/asr_streams.sh.)

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use remotemedia_server::proto;
use tonic::Request;

const STREAMS: usize = 8;

fn beckett() -> Vec<f32> {
    let path = remotemedia_runtime::models_dir().join("samples/beckett.wav");
    let reader = hound::WavReader::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run ./scripts/setup-models.sh", path.display()));
    assert_eq!(reader.spec().sample_rate, 16_000);
    reader
        .into_samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect()
}

/// Streams `samples` in 20 ms frames at real time; the final texts that come back.
async fn caption(server: &remotemedia_server::RunningServer, samples: Arc<Vec<f32>>) -> String {
    let mut c = client(server).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("transcribe")).await.unwrap();
    assert!(matches!(next(&mut s.rx).await, Ok(Some(Msg::Ready(_)))));
    let tx = s.tx.clone();
    let feed = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for (k, frame) in samples.chunks(320).enumerate() {
            tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
            tx.send(audio(frame.to_vec(), 16_000)).await.unwrap();
        }
        tx.send(control(proto::session_control::Action::Close))
            .await
            .unwrap();
    });
    let mut text = String::new();
    while let Ok(Some(m)) = next(&mut s.rx).await {
        if let Msg::Output(o) = m
            && let Some(proto::data::Kind::Text(t)) = o.data.and_then(|d| d.kind)
            && t.is_final
        {
            text.push_str(&t.text);
            text.push(' ');
        }
    }
    feed.await.unwrap();
    text.to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_live_streams_share_one_recogniser_and_each_gets_its_words() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let server = serve(|c| {
        c.pipelines
            .insert("transcribe".into(), root.join("examples/transcribe.yaml"));
    })
    .await;
    wait_ready(&server).await;
    let moonshine_requests = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("remotemedia_model_requests_total{model=\"moonshine\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = moonshine_requests(&server.metrics_text());

    let samples = Arc::new(beckett());
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let (samples, server) = (Arc::clone(&samples), &server);
        streams.push(async move {
            // Started a quarter second apart, as independent callers would.
            tokio::time::sleep(Duration::from_millis(250 * i as u64)).await;
            caption(server, samples).await
        });
    }
    let texts = futures_all(streams).await;
    for (i, text) in texts.iter().enumerate() {
        for words in ["ever tried", "ever failed", "no matter", "try again"] {
            assert!(
                text.contains(words),
                "stream {i}: `{words}` missing from {text:?}"
            );
        }
    }
    let after = moonshine_requests(&server.metrics_text());
    assert!(
        after - before >= (STREAMS * 4) as f64,
        "utterances through the shared scheduler: {}",
        after - before
    );
    assert_no_leaks(&server).await;
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
