//! The OpenAI-compatible API, with a client that is not ours: the official `openai` Python
//! package (scripts/setup-python.sh installs it) against a real server on loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remotemedia_server::ServerConfig;

const TOKEN: &str = "openai-client-token-0123";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A server on loopback with tokens and a one-thread chat model, changed by `edit`; and the
/// base URL of its OpenAI-compatible API.
async fn serve(
    edit: impl FnOnce(&mut ServerConfig),
) -> (remotemedia_server::RunningServer, String) {
    let mut config = ServerConfig::default();
    config.grpc.listen = ([127, 0, 0, 1], 0).into();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.auth.tokens = vec![TOKEN.into()];
    config.openai.chat.threads = Some(1);
    edit(&mut config);
    let server = remotemedia_server::start(config, Arc::new(remotemedia_runtime::runtime()))
        .await
        .expect("server starts");
    let base = format!("http://{}/v1", server.http_addr().expect("HTTP is on"));
    (server, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_package_chats_speaks_transcribes_and_meets_every_refusal() {
    let (server, base) = serve(|config| {
        config.openai.chat.context_tokens = 1024;
        config.openai.max_upload_bytes = 4 << 20;
        config
            .pipelines
            .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    })
    .await;
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "run ./scripts/setup-python.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/openai_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(&base)
            .arg(remotemedia_runtime::models_dir().join("samples/beckett.wav"))
            .env("REMOTEMEDIA_TOKEN", TOKEN)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finishes within 3 minutes")
    .expect("python runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "stdout: {stdout}\nstderr: {stderr}"
    );
    server.shutdown().await;
}

fn texts(out: &[remotemedia_core::node::Output], port: usize) -> Vec<String> {
    out.iter()
        .filter(|o| o.port == port)
        .filter_map(|o| o.data.as_text())
        .map(|t| t.text.to_string())
        .collect()
}

/// The `OpenAIChat` node against this server's own API (real HTTP on loopback): the reply
/// streams as sentences and pieces, turns follow each other, and a missing key is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_chat_node_talks_to_an_openai_compatible_server() {
    // SAFETY: set before anything in this test binary reads the environment concurrently.
    unsafe { std::env::set_var("REMOTEMEDIA_TEST_OPENAI_KEY", TOKEN) };
    let (server, base) = serve(|_| {}).await;
    let mut h = remotemedia_core::testing::NodeHarness::new::<remotemedia_llm::OpenAiChatNode>(
        serde_json::json!({
            "base_url": base, "model": "smollm2", "api_key_env": "REMOTEMEDIA_TEST_OPENAI_KEY",
            "temperature": 0.0, "max_tokens": 40, "stream_tokens": true
        }),
    )
    .unwrap();
    for q in ["Name three colours of the rainbow.", "And one more?"] {
        h.push(remotemedia_core::RuntimeData::text(q))
            .await
            .unwrap();
        let out = h.flush_outputs().await.unwrap();
        let (sentences, pieces) = (texts(&out, 0), texts(&out, 1));
        assert!(
            !sentences.is_empty() && !pieces.is_empty(),
            "no reply to {q:?}"
        );
        assert_eq!(
            pieces.concat().split_whitespace().collect::<Vec<_>>(),
            sentences.join(" ").split_whitespace().collect::<Vec<_>>()
        );
    }
    let mut unkeyed =
        remotemedia_core::testing::NodeHarness::new::<remotemedia_llm::OpenAiChatNode>(
            serde_json::json!({
                "base_url": base, "model": "smollm2",
                "api_key_env": "REMOTEMEDIA_TEST_UNSET_KEY"
            }),
        )
        .unwrap();
    unkeyed
        .push(remotemedia_core::RuntimeData::text("Hello?"))
        .await
        .unwrap();
    let err = unkeyed.flush().await.unwrap_err();
    assert_eq!(
        err.kind,
        remotemedia_core::ErrorKind::Fatal,
        "ends the session"
    );
    assert!(
        err.message.contains("answered 401")
            && err
                .message
                .contains("$REMOTEMEDIA_TEST_UNSET_KEY, which is unset"),
        "{}",
        err.message
    );
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_auth_failures_total{transport=\"openai\"} 1")
    );
    server.shutdown().await;
}

/// A server that is overloaded for a while: 503 twice (with `Retry-After: 0`), then a reply.
/// The node retries by its policy and the reply arrives; with fewer retries the 503 is the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_chat_node_retries_an_overloaded_server_by_its_policy() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, SeqCst);
            async move {
                use axum::response::IntoResponse;
                if n % 3 < 2 {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "0")],
                        r#"{"error": {"message": "overloaded, try again"}}"#,
                    )
                        .into_response();
                }
                let chunk = |text: &str| {
                    format!(
                        "data: {}\n\n",
                        serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
                    )
                };
                let body = format!(
                    "{}{}data: [DONE]\n\n",
                    chunk("Hello there. "),
                    chunk("How are you?")
                );
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let node = |retries: u32| {
        remotemedia_core::testing::NodeHarness::new::<remotemedia_llm::OpenAiChatNode>(
            serde_json::json!({
                "base_url": base, "model": "any",
                "retry": {"max_retries": retries, "initial_backoff_ms": 10}
            }),
        )
        .unwrap()
    };
    let mut patient = node(3);
    patient
        .push(remotemedia_core::RuntimeData::text("Hi"))
        .await
        .unwrap();
    let out = patient.flush_outputs().await.unwrap();
    assert_eq!(texts(&out, 0), ["Hello there.", "How are you?"]);
    assert_eq!(calls.load(SeqCst), 3);
    let mut hasty = node(1);
    hasty
        .push(remotemedia_core::RuntimeData::text("Hi"))
        .await
        .unwrap();
    let err = hasty.flush().await.unwrap_err();
    assert!(
        err.message.contains("answered 503: overloaded, try again"),
        "{}",
        err.message
    );
    assert_eq!(calls.load(SeqCst), 5);
}

/// Sends an HTTP/1.1 POST of `body` to the API; gives the stream, after the response's head.
async fn post(base: &str, path: &str, body: &str) -> (tokio::net::TcpStream, u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").trim_end_matches("/v1");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    (tcp, status)
}

/// The API's requests take the server's session slots as streams do: a full server answers 429
/// in OpenAI's shape (which OpenAI clients retry), and the slot is free again when a reply ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_count_against_the_servers_sessions() {
    use tokio::io::AsyncReadExt;
    let (server, base) = serve(|config| config.limits.max_sessions = 1).await;
    let chat = |stream: bool| {
        serde_json::json!({
            "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": 200, "stream": stream,
        })
        .to_string()
    };
    // A streamed reply holds the one slot while it is read.
    let (mut streaming, status) = post(&base, "/chat/completions", &chat(true)).await;
    assert_eq!(status, 200);
    let mut first = [0u8; 64];
    let _ = streaming.read(&mut first).await.unwrap();
    for (path, body) in [
        ("/chat/completions", chat(false)),
        (
            "/audio/speech",
            r#"{"model": "tts-1", "input": "Hello.", "voice": "alloy"}"#.into(),
        ),
    ] {
        let (mut refused, status) = post(&base, path, &body).await;
        assert_eq!(status, 429, "{path}");
        let mut text = String::new();
        refused.read_to_string(&mut text).await.unwrap();
        assert!(
            text.contains("\"rate_limit_exceeded\"") && text.contains("limit of 1 concurrent"),
            "{path}: {text}"
        );
    }
    // The client goes away: its reply is cancelled and the slot is free.
    drop(streaming);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = post(&base, "/chat/completions", &chat(false)).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}
