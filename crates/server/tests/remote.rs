//! Remote nodes: a node, or a whole pipeline, of a local pipeline runs on another server over
//! the gRPC protocol. The recogniser on a remote transcribes the recording exactly as the local
//! pipeline does; a remote that dies mid-session fails the session with an error naming it,
//! new sessions are refused while it is gone and served once it is back; and every mistake in
//! a manifest's `remote` is reported before a session starts. Needs the models.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use remotemedia_core::{LoadError, ManifestPolicy, Pipeline, RuntimeData, SessionError};
use remotemedia_server::RunningServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const TOKEN_ENV: &str = "REMOTE_TEST_TOKEN";

fn transcribe_yaml() -> String {
    std::fs::read_to_string(root().join("examples/transcribe.yaml")).unwrap()
}

/// The server other pipelines send work to: client manifests on, no pacing (the edge feeds
/// a file as fast as it can), the transcribe pipeline and the light ones.
async fn remote_server() -> RunningServer {
    // SAFETY: set before any thread of this test reads the environment; every test sets the same.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    serve(|c| {
        c.auth.tokens = vec![TOKEN.into()];
        c.client_manifests.allow = true;
        c.limits.max_realtime_factor = 0.0;
        c.pipelines
            .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    })
    .await
}

fn remote(endpoint: &str, extra: &str) -> String {
    format!("{{endpoint: \"{endpoint}\", token_env: {TOKEN_ENV}{extra}}}")
}

/// The recording, as 20 ms frames.
fn recording() -> Vec<RuntimeData> {
    let path = remotemedia_runtime::models_dir().join("samples/beckett.wav");
    let reader = hound::WavReader::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run ./scripts/setup-models.sh", path.display()));
    let samples: Vec<f32> = reader
        .into_samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect();
    samples
        .chunks(320)
        .map(|c| RuntimeData::audio(c.to_vec(), 16_000, 1))
        .collect()
}

/// Final texts with their spans, the recording fed with its own media time.
async fn transcript(manifest: &str) -> Vec<(String, Option<(Duration, Duration)>)> {
    let runtime = runtime();
    let pipeline = runtime
        .load(manifest, "<test>")
        .unwrap_or_else(|e| panic!("{e}"));
    let (input, mut output) = runtime.open(&pipeline).await.unwrap().split();
    let feed = async move {
        for (i, frame) in recording().into_iter().enumerate() {
            let at = Duration::from_millis(20 * i as u64);
            input.send_at(frame, at).await.unwrap();
        }
    };
    let collect = async {
        let mut texts = Vec::new();
        while let Some(item) = output.recv().await {
            if let Some(t) = item.unwrap().data.as_text()
                && t.is_final
            {
                texts.push((t.text.to_string(), t.span));
            }
        }
        texts
    };
    let ((), texts) = tokio::join!(feed, collect);
    output.finish().await.unwrap();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_recogniser_or_remote_pipeline_transcribes_as_the_local_pipeline_does() {
    let server = remote_server().await;
    let endpoint = format!("http://{}", server.grpc_addr());
    let local = transcript(&transcribe_yaml()).await;
    assert!(local.len() >= 3, "{local:?}");

    // The recogniser alone runs remotely.
    let one_node = transcribe_yaml().replace(
        "    params: {threads: 1}\n",
        &format!(
            "    params: {{threads: 1}}\n    remote: {}\n",
            remote(&endpoint, "")
        ),
    );
    assert!(one_node.contains("remote:"));
    assert_eq!(transcript(&one_node).await, local);

    // The whole pipeline runs remotely, as one node of this one.
    let whole = format!(
        "version: v1\nnodes:\n  - id: speech\n    type: RemotePipeline\n    remote: {}\n",
        remote(&endpoint, ", pipeline: transcribe")
    );
    let runtime = runtime();
    let pipeline = runtime.load(&whole, "<test>").unwrap();
    let node = &pipeline.nodes[0];
    assert_eq!(node.input_names, [Arc::from("mono")]);
    assert_eq!(node.output_names, [Arc::from("asr")]);
    assert_eq!(transcript(&whole).await, local);

    assert_no_leaks(&server).await;
    server.shutdown().await;
}

/// A TCP relay standing for the remote's host: dropping it is the remote dying (its
/// connections reset), starting it again on the same port is the remote coming back.
struct Relay {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl Relay {
    async fn start(addr: SocketAddr, to: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let mut conns = JoinSet::new();
        tasks.spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        Self {
            addr,
            _tasks: tasks,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_dying_mid_session_fails_it_naming_the_remote_and_new_sessions_reconnect() {
    let server = remote_server().await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), server.grpc_addr()).await;
    let addr = relay.addr;
    let endpoint = format!("http://{addr}");
    let manifest = format!(
        "version: v1\nnodes:\n  - id: shout\n    type: TextTransform\n    params: {{op: uppercase}}\n    remote: {}\n",
        remote(&endpoint, ", connect_timeout_ms: 1000")
    );
    let runtime = runtime();
    let pipeline = runtime.load(&manifest, "<test>").unwrap();
    let text = |s: &str| RuntimeData::text(s);

    let (input, mut output) = runtime.open(&pipeline).await.unwrap().split();
    input.send(text("hello")).await.unwrap();
    let echoed = output.recv().await.unwrap().unwrap();
    assert_eq!(&*echoed.data.as_text().unwrap().text, "HELLO");

    drop(relay); // the remote's host goes away
    let failure = match output.recv().await {
        Some(Err(f)) => f,
        other => panic!("expected the remote's failure, got {other:?}"),
    };
    assert_eq!(&*failure.node_id, "shout");
    assert!(failure.fatal, "{failure:?}");
    assert!(
        failure
            .message
            .contains(&format!("remote {endpoint} failed mid-session")),
        "{}",
        failure.message
    );
    assert!(matches!(output.finish().await, Err(SessionError::Node(_))));

    // While it is gone, a new session is refused, naming it, as worth trying again (a server
    // tells its client UNAVAILABLE).
    let refused = runtime.open(&pipeline).await.err().unwrap();
    assert!(
        matches!(
            refused,
            SessionError::Create {
                retryable: true,
                ..
            }
        ) && refused
            .to_string()
            .contains(&format!("cannot reach {endpoint}")),
        "{refused}"
    );

    // Back on the same address: the next session is served.
    let _relay = Relay::start(addr, server.grpc_addr()).await;
    let out = runtime
        .execute(&pipeline, vec![text("again")])
        .await
        .unwrap();
    assert_eq!(&*out[0].data.as_text().unwrap().text, "AGAIN");

    assert_no_leaks(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mistake_in_a_remote_is_reported_before_a_session_starts() {
    let server = remote_server().await;
    let endpoint = format!("http://{}", server.grpc_addr());
    let runtime = runtime();
    let error = |manifest: String| match runtime.load(&manifest, "m.yaml") {
        Ok(_) => panic!("accepted: {manifest}"),
        Err(e) => e.to_string(),
    };
    let node = |ty: &str, remote: String| {
        format!("version: v1\nnodes:\n  - id: n\n    type: {ty}\n    remote: {remote}\n")
    };

    let e = error(node("MoonshineAsr", self::remote(&endpoint, "")));
    assert!(
        e.starts_with("m.yaml:4:5: nodes[0].type: node `n`: ")
            && e.contains(&format!("{endpoint} has no node type `MoonshineAsr`"))
            && e.contains("did you mean `MoonshineASR`?")
            && e.contains("its types: "),
        "{e}"
    );
    let e = error(node(
        "RemotePipeline",
        self::remote(&endpoint, ", pipeline: nope"),
    ));
    assert!(
        e.contains("nodes[0].remote")
            && e.contains(&format!(
                "{endpoint} serves no pipeline `nope`; it serves: "
            ))
            && e.contains("transcribe"),
        "{e}"
    );
    let e = error(node("RemotePipeline", self::remote(&endpoint, "")));
    assert!(e.contains("name the remote's pipeline"), "{e}");
    let e = error(node(
        "PassThrough",
        "{endpoint: \"http://127.0.0.1:1\", connect_timeout_ms: 2000}".into(),
    ));
    assert!(
        e.contains("nodes[0].remote") && e.contains("cannot reach http://127.0.0.1:1"),
        "{e}"
    );
    let e = error(node(
        "PassThrough",
        format!("{{endpoint: \"{endpoint}\", token_env: REMOTE_TEST_UNSET_TOKEN}}"),
    ));
    assert!(
        e.contains("$REMOTE_TEST_UNSET_TOKEN, which is not set"),
        "{e}"
    );
    let e = error(node(
        "PassThrough",
        format!("{{endpoint: \"{endpoint}\", token_env: PATH}}"),
    ));
    assert!(
        e.contains(&format!(
            "{endpoint} refused to list its node types: Unauthenticated"
        )),
        "{e}"
    );
    let e = error(node("PassThrough", "{endpoint: \"ftp://x\"}".into()));
    assert!(e.contains("nodes[0].remote.endpoint"), "{e}");
    let e = error(format!(
        "version: v1\nnodes:\n  - {{id: n, type: PassThrough, runtime_hint: rust, remote: {}}}\n",
        self::remote(&endpoint, "")
    ));
    assert!(e.contains("nodes[0].runtime_hint"), "{e}");
    let e = error(
        "version: v1\nnodes:\n  - {id: n, type: PassThrough}\nconfig:\n  executor_rules:\n    - {pattern: Pass, executor: remote}\n"
            .into(),
    );
    assert!(
        e.contains("config.executor_rules[0].executor") && e.contains("give the node a `remote`"),
        "{e}"
    );

    // A client's own manifest may not send work, or the operator's token, anywhere.
    let manifest = node("PassThrough", self::remote(&endpoint, ""));
    let policy = ManifestPolicy::default();
    match runtime.load_untrusted(&manifest, "client", &policy) {
        Err(LoadError::Refused(e)) => assert!(
            e.to_string()
                .contains("only the operator's own pipelines may use remote nodes"),
            "{e}"
        ),
        other => panic!("{:?}", other.map(|p| p.name.clone())),
    }
    assert!(Pipeline::read(&manifest, "m").is_ok());
    server.shutdown().await;
}
