//! A server on loopback with light native pipelines, and a tonic client for it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use remotemedia_core::{
    MediaType, Node, NodeContext, NodeError, NodeType, Outputs, Packet, Ports, Runtime,
};
use remotemedia_server::proto::{self, pipeline_service_client::PipelineServiceClient};
use remotemedia_server::{RunningServer, ServerConfig};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub const TOKEN: &str = "test-token-0123456789";

pub const GAIN: &str =
    "version: v1\nnodes:\n  - {id: gain, type: AudioGain, params: {gain_db: 0}}\n";
pub const UPPER: &str =
    "version: v1\nnodes:\n  - {id: shout, type: TextTransform, params: {op: uppercase}}\n";
pub const VAD: &str = "version: v1
nodes:
  - {id: resample, type: AudioResample, params: {target_rate: 16000}}
  - {id: vad, type: EnergyVAD}
connections:
  - {from: resample, to: vad}
";

/// Fails on one input (`bad`) and fatally on another (`boom`), takes 300 ms over `slow`;
/// echoes the rest.
pub struct Picky;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct PickyParams {}

#[async_trait::async_trait]
impl Node for Picky {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        match input.data.as_text().map(|t| &*t.text) {
            Some("bad") => Err(NodeError::rejected("cannot take `bad`")),
            Some("boom") => Err(NodeError::fatal("`boom` breaks me")),
            Some("slow") => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                out.push(input.data.clone());
                Ok(())
            }
            _ => {
                out.push(input.data.clone());
                Ok(())
            }
        }
    }
}

impl NodeType for Picky {
    type Params = PickyParams;
    const NAME: &'static str = "Picky";
    const DESCRIPTION: &'static str = "Test node: fails on `bad`, fatally on `boom`";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Text])
    }

    fn new(_: PickyParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Picky)
    }
}

pub const PICKY: &str = "version: v1\nnodes:\n  - {id: picky, type: Picky}\n";

/// The runtime a user gets, plus the test's own node type.
pub fn runtime() -> Runtime {
    remotemedia_runtime::builder()
        .node::<Picky>()
        .build()
        .unwrap()
}

/// [`runtime`] whose Python workers may also import node code from `dir`.
pub fn runtime_with_python_path(dir: &std::path::Path) -> Runtime {
    remotemedia_runtime::builder_with(remotemedia_runtime::Options {
        python_path: vec![dir.to_path_buf()],
        ..Default::default()
    })
    .node::<Picky>()
    .build()
    .unwrap()
}

/// Loopback ports chosen by the OS, the three light pipelines, and `tweak` applied last.
pub async fn serve(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    serve_with(runtime(), tweak).await
}

/// [`serve`] with another runtime.
pub async fn serve_with(runtime: Runtime, tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::default();
    config.grpc.listen = ([127, 0, 0, 1], 0).into();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    for (name, text) in [
        ("gain", GAIN),
        ("upper", UPPER),
        ("vad", VAD),
        ("picky", PICKY),
    ] {
        config.manifests.insert(name.into(), text.into());
    }
    tweak(&mut config);
    remotemedia_server::start(config, Arc::new(runtime))
        .await
        .expect("server starts")
}

pub async fn client(server: &RunningServer) -> PipelineServiceClient<Channel> {
    PipelineServiceClient::connect(format!("http://{}", server.grpc_addr()))
        .await
        .expect("connects")
}

/// A request with the test token.
pub fn authed<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

/// One streaming call: send with `tx`, read with `rx`.
pub struct Stream {
    pub tx: mpsc::Sender<proto::StreamRequest>,
    pub rx: Streaming<proto::StreamResponse>,
}

pub async fn stream(
    client: &mut PipelineServiceClient<Channel>,
    wrap: impl FnOnce(
        tokio_stream::wrappers::ReceiverStream<proto::StreamRequest>,
    ) -> Request<tokio_stream::wrappers::ReceiverStream<proto::StreamRequest>>,
) -> Result<Stream, Status> {
    let (tx, rx) = mpsc::channel(256);
    let rx = client
        .stream_pipeline(wrap(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await?
        .into_inner();
    Ok(Stream { tx, rx })
}

/// A stream with a session of `pipeline` open (ready received).
pub async fn opened(client: &mut PipelineServiceClient<Channel>, pipeline: &str) -> Stream {
    let mut s = stream(client, Request::new).await.unwrap();
    s.tx.send(open(pipeline)).await.unwrap();
    let ready = next(&mut s.rx).await.unwrap();
    assert!(matches!(ready, Some(Msg::Ready(_))), "{ready:?}");
    s
}

/// Opens a session of the client's own `manifest`: the status it was refused with, or OK.
pub async fn manifest_status(
    client: &mut PipelineServiceClient<Channel>,
    manifest: &str,
) -> Status {
    let mut s = stream(client, Request::new).await.unwrap();
    let m = proto::open_session::Pipeline::Manifest(manifest.into());
    s.tx.send(open_with(m, "1.0")).await.unwrap();
    match next(&mut s.rx).await {
        Ok(Some(Msg::Ready(_))) => Status::ok(""),
        Ok(other) => panic!("{other:?}"),
        Err(e) => e,
    }
}

/// Sends `frame()` up to `n` times, as fast as the server takes them, and returns the status
/// the server ended the call with.
pub async fn refused_after(
    s: &mut Stream,
    n: usize,
    frame: impl Fn() -> proto::StreamRequest,
) -> Status {
    let tx = s.tx.clone();
    let send = async move {
        for _ in 0..n {
            if tx.send(frame()).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(send, status_of(&mut s.rx)).1
}

pub fn open(pipeline: &str) -> proto::StreamRequest {
    use proto::open_session::Pipeline;
    open_with(Pipeline::PipelineName(pipeline.into()), "1.0")
}

pub fn open_with(pipeline: proto::open_session::Pipeline, version: &str) -> proto::StreamRequest {
    proto::StreamRequest {
        message: Some(proto::stream_request::Message::Open(proto::OpenSession {
            pipeline: Some(pipeline),
            protocol_version: version.into(),
            requested_limits: None,
            audio_out_f32le: false,
        })),
    }
}

pub fn audio(samples: Vec<f32>, rate: u32) -> proto::StreamRequest {
    data(
        "",
        proto::data::Kind::Audio(proto::AudioBuffer {
            samples,
            sample_rate: rate,
            channels: 1,
            samples_f32le: Vec::new(),
        }),
    )
}

/// Audio with the samples as little-endian bytes.
pub fn audio_le(samples: &[f32], rate: u32) -> proto::StreamRequest {
    data(
        "",
        proto::data::Kind::Audio(proto::AudioBuffer {
            samples: Vec::new(),
            sample_rate: rate,
            channels: 1,
            samples_f32le: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }),
    )
}

pub fn text(target: &str, s: &str) -> proto::StreamRequest {
    data(
        target,
        proto::data::Kind::Text(proto::TextData {
            text: s.into(),
            is_final: true,
            span: None,
        }),
    )
}

pub fn data(target: &str, kind: proto::data::Kind) -> proto::StreamRequest {
    proto::StreamRequest {
        message: Some(proto::stream_request::Message::Data(proto::DataFrame {
            target: target.into(),
            data: Some(proto::Data { kind: Some(kind) }),
            timestamp_us: None,
        })),
    }
}

pub fn control(action: proto::session_control::Action) -> proto::StreamRequest {
    proto::StreamRequest {
        message: Some(proto::stream_request::Message::Control(
            proto::SessionControl {
                action: action as i32,
                reason: String::new(),
            },
        )),
    }
}

pub type Msg = proto::stream_response::Message;

/// The next response, within 10 s.
pub async fn next(rx: &mut Streaming<proto::StreamResponse>) -> Result<Option<Msg>, Status> {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a response within 10 s")
        .map(|m| m.and_then(|m| m.message))
}

/// Reads until the stream ends with an error status, which is returned.
pub async fn status_of(rx: &mut Streaming<proto::StreamResponse>) -> Status {
    loop {
        match next(rx).await {
            Err(s) => return s,
            Ok(None) => panic!("the stream ended without an error status"),
            Ok(Some(_)) => {}
        }
    }
}

/// Waits until the configured pipelines' models are loaded (or fails after 60 s).
pub async fn wait_ready(server: &RunningServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !server.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "models load within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET over plain HTTP/1.1: status code and body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's Python (with grpcio), from scripts/setup-python.sh or `REMOTEMEDIA_PYTHON`.
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("REMOTEMEDIA_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/setup-python.sh",
        p.display()
    );
    p
}

/// Runs a Python script (within 2 minutes): success, stdout, stderr. The example client's
/// generated stubs are cached in the test's temporary folder.
pub async fn run_python(args: &[&str], token: &str) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .args(args)
            .env("REMOTEMEDIA_TOKEN", token)
            .env(
                "REMOTEMEDIA_STUBS_DIR",
                env!("CARGO_TARGET_TMPDIR").to_string() + "/grpc-stubs",
            )
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finishes within 2 minutes")
    .expect("python runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the server has no session, stream or node task left (or fails after 10 s).
pub async fn assert_no_leaks(server: &RunningServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics_text();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("remotemedia_{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let left = [
            ("sessions_active", value("sessions_active")),
            ("grpc_streams_active", value("grpc_streams_active")),
            ("node_tasks_alive", value("node_tasks_alive")),
            ("nodes_alive", value("nodes_alive")),
        ];
        if left.iter().all(|(_, v)| *v == 0.0) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("left behind after 10 s: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
