//! A client that is not ours: Python grpcio (stubs generated from our proto by grpcio-tools)
//! streams a real recording through the real speech pipeline in 20 ms frames and gets the
//! transcript, then meets every refusal a client should handle. Needs the models
//! (scripts/setup-models.sh) and the Python environment (scripts/setup-python.sh).

use std::sync::Arc;
use std::time::Duration;

use remotemedia_server::ServerConfig;

mod common;
use common::root;

const TOKEN: &str = "python-client-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_streams_a_recording_and_meets_every_refusal() {
    let mut config = ServerConfig::default();
    config.grpc.listen = ([127, 0, 0, 1], 0).into();
    config.http.enabled = false;
    config.auth.tokens = vec![TOKEN.into()];
    config.limits.max_sessions = 2;
    config.client_manifests.allow = true;
    config
        .pipelines
        .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    let server = remotemedia_server::start(config, Arc::new(remotemedia_runtime::runtime()))
        .await
        .expect("server starts");
    let addr = server.grpc_addr().to_string();
    // Models load at start, before any client: sessions then only hit the shared pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !server.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = |name: &str| -> u64 {
        let text = server.metrics_text();
        let prefix = format!("remotemedia_{name}{{pool=\"models\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .parse()
            .unwrap()
    };
    let (loads, hits) = (pool("pool_loads_total"), pool("pool_hits_total"));
    assert!(
        loads >= 2,
        "the VAD and recogniser models were preloaded: {loads}"
    );

    // The example client, as a user runs it: 20 ms frames at three times real time.
    let client = root().join("examples/grpc_client/client.py");
    let wav = remotemedia_runtime::models_dir().join("samples/beckett.wav");
    let (ok, stdout, stderr) = common::run_python(
        &[
            client.to_str().unwrap(),
            "--addr",
            &addr,
            "--pipeline",
            "transcribe",
            "--frame-ms",
            "20",
            "--speed",
            "3",
            wav.to_str().unwrap(),
        ],
        TOKEN,
    )
    .await;
    assert!(ok, "client failed:\n{stdout}\n{stderr}");
    let text = stdout.to_lowercase();
    for words in [
        "ever tried",
        "ever failed",
        "no matter",
        "try again",
        "fail again",
    ] {
        assert!(text.contains(words), "`{words}` missing from:\n{stdout}");
    }
    assert!(stdout.contains("[00:0"), "timed lines: {stdout}");
    assert!(stderr.contains("closed"), "{stderr}");
    assert_eq!(
        pool("pool_loads_total"),
        loads,
        "the session loaded nothing itself"
    );
    assert!(pool("pool_hits_total") > hits);
    // The utterances went through the shared model's scheduler, which counts them.
    let metrics = server.metrics_text();
    let done = metrics
        .lines()
        .find_map(|l| l.strip_prefix("remotemedia_model_requests_total{model=\"moonshine\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no moonshine requests in:\n{metrics}"));
    assert!(done >= 5.0, "{done}");
    assert!(metrics.contains("remotemedia_model_queue_wait_seconds_count{model=\"moonshine\"}"));

    let script = root().join("crates/server/tests/py/statuses.py");
    let (ok, stdout, stderr) = common::run_python(
        &[script.to_str().unwrap(), "--addr", &addr, "--token", TOKEN],
        TOKEN,
    )
    .await;
    assert!(ok, "status checks failed:\n{stdout}\n{stderr}");
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let code = |k: &str| got[k][0].as_str().unwrap_or("missing").to_string();
    let details = |k: &str| got[k][1].as_str().unwrap_or("").to_string();
    assert_eq!(code("list_without_token"), "UNAUTHENTICATED");
    assert_eq!(code("stream_without_token"), "UNAUTHENTICATED");
    assert_eq!(code("stream_wrong_token"), "UNAUTHENTICATED");
    assert_eq!(code("list_pipelines"), "OK");
    assert!(details("list_pipelines").contains("transcribe"));
    assert_eq!(code("version_2"), "FAILED_PRECONDITION");
    assert!(details("version_2").contains("2.0") && details("version_2").contains("1.0"));
    assert_eq!(code("open_version_2"), "FAILED_PRECONDITION");
    assert_eq!(code("bad_manifest"), "INVALID_ARGUMENT");
    assert!(
        details("bad_manifest").contains(":5:")
            && details("bad_manifest").contains("min_silence_ms"),
        "validation message with line and field: {}",
        details("bad_manifest")
    );
    assert_eq!(code("third_session"), "RESOURCE_EXHAUSTED");
    assert_eq!(code("malformed"), "INTERNAL");
    assert_eq!(got["health"], serde_json::json!(["OK", "SERVING"]));
    assert_eq!(code("reflection"), "OK");
    assert!(details("reflection").contains("remotemedia.v1.PipelineService"));

    // Everything the refusals opened is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server
        .metrics_text()
        .contains("remotemedia_sessions_active 0\n")
        || !server
            .metrics_text()
            .contains("remotemedia_grpc_streams_active 0\n")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            server.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
