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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_package_chats_speaks_transcribes_and_meets_every_refusal() {
    let mut config = ServerConfig::default();
    config.grpc.listen = ([127, 0, 0, 1], 0).into();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.auth.tokens = vec![TOKEN.into()];
    config.openai.chat.threads = Some(1);
    config.openai.chat.context_tokens = 1024;
    config.openai.max_upload_bytes = 4 << 20;
    config
        .pipelines
        .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    let server = remotemedia_server::start(config, Arc::new(remotemedia_runtime::runtime()))
        .await
        .expect("server starts");
    let base = format!("http://{}/v1", server.http_addr().expect("HTTP is on"));
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
