//! Chaos under load: live streams of a recording through the speech pipeline (the victims)
//! first alone, then while the server meets every fault at once — Python workers SIGKILLed
//! again and again under sessions of a Python pipeline, clients that vanish mid-utterance with
//! a TCP reset, connections and streams that never say anything (slow-loris), thousands of
//! sessions opened and closed, oversized and truncated messages — and what every client was
//! told. Used by `tests/chaos.rs`, which `bench/chaos.sh` runs in a release build.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use remotemedia_server::proto::{
    self, pipeline_service_client::PipelineServiceClient, session_control::Action, stream_request,
    stream_response::Message as Msg,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The server under test.
#[derive(Clone)]
pub struct Target {
    pub grpc: SocketAddr,
    /// The server's process id: its children are the Python workers to kill.
    pub server_pid: u32,
    /// Pipeline names: the speech pipeline (16 kHz audio in, timed final text out), one with a
    /// Python node taking audio, and a light one taking audio.
    pub speech: String,
    pub python: String,
    pub light: String,
    /// The server's `limits.max_message_bytes`.
    pub max_message_bytes: usize,
}

/// How long and how hard.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Live streams of the recording, in each phase.
    pub victims: usize,
    /// Length of each phase.
    pub seconds: f64,
    /// Sessions opened and closed during the chaos phase.
    pub cycles: usize,
    /// A Python worker is killed this often.
    pub kill_every: Duration,
}

/// Outcome → count, for one kind of client.
pub type Outcomes = BTreeMap<String, usize>;

/// The victims' results in one phase.
#[derive(Debug, Default, serde::Serialize)]
pub struct Phase {
    pub utterances: usize,
    /// From the end of each utterance (its text's span) to the text's arrival.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Each victim's final texts, lower-case.
    #[serde(skip)]
    pub texts: Vec<String>,
    pub failures: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub calm: Phase,
    pub chaos: Phase,
    pub workers_killed: usize,
    pub python_sessions: Outcomes,
    pub resets: usize,
    pub silent: Outcomes,
    pub open_close: Outcomes,
    pub bad_frames: Outcomes,
}

/// Runs the calm phase, then the chaos phase.
pub async fn run(t: &Target, audio: Arc<Vec<f32>>, s: &Settings) -> Report {
    let calm = victims(t, &audio, s).await;
    let until = Instant::now() + Duration::from_secs_f64(s.seconds);
    let kill = kill_workers(t, s.kill_every, until);
    let python = async {
        let (a, b) = tokio::join!(python_sessions(t, &audio, until), async {
            // A second client, half a session later: a worker is always starting or busy.
            tokio::time::sleep(Duration::from_millis(300)).await;
            python_sessions(t, &audio, until).await
        });
        merge(a, b)
    };
    let (chaos, workers_killed, python_sessions, resets, silent, open_close, bad_frames) = tokio::join!(
        victims(t, &audio, s),
        kill,
        python,
        resets(t, &audio, until),
        silent(t, 4),
        open_close(t, s.cycles),
        bad_frames(t, until),
    );
    Report {
        calm,
        chaos,
        workers_killed,
        python_sessions,
        resets,
        silent,
        open_close,
        bad_frames,
    }
}

fn merge(mut a: Outcomes, b: Outcomes) -> Outcomes {
    for (k, v) in b {
        *a.entry(k).or_default() += v;
    }
    a
}

fn count(o: &mut Outcomes, what: impl Into<String>) {
    *o.entry(what.into()).or_default() += 1;
}

fn open(pipeline: &str) -> proto::StreamRequest {
    let open = proto::OpenSession {
        pipeline: Some(proto::open_session::Pipeline::PipelineName(pipeline.into())),
        protocol_version: "1.0".into(),
        requested_limits: None,
        audio_out_f32le: false,
    };
    proto::StreamRequest {
        message: Some(stream_request::Message::Open(open)),
    }
}

/// 16 kHz mono audio, stamped with its media time.
fn audio(samples: &[f32], at_us: i64) -> proto::StreamRequest {
    let buffer = proto::AudioBuffer {
        samples: Vec::new(),
        sample_rate: 16_000,
        channels: 1,
        samples_f32le: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
    };
    proto::StreamRequest {
        message: Some(stream_request::Message::Data(proto::DataFrame {
            target: String::new(),
            data: Some(proto::Data {
                kind: Some(proto::data::Kind::Audio(buffer)),
            }),
            timestamp_us: Some(at_us),
        })),
    }
}

fn close() -> proto::StreamRequest {
    proto::StreamRequest {
        message: Some(stream_request::Message::Control(proto::SessionControl {
            action: Action::Close as i32,
            reason: String::new(),
        })),
    }
}

async fn connect(t: &Target) -> Result<PipelineServiceClient<Channel>, String> {
    PipelineServiceClient::connect(format!("http://{}", t.grpc))
        .await
        .map_err(|e| e.to_string())
}

/// A stream call: requests go into the sender.
async fn call(
    c: &mut PipelineServiceClient<Channel>,
) -> Result<
    (
        mpsc::Sender<proto::StreamRequest>,
        tonic::Streaming<proto::StreamResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(64);
    let responses = c
        .stream_pipeline(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, responses))
}

const FRAME: usize = 320; // 20 ms at 16 kHz

/// `s.victims` live streams of `audio` (looped, each from its own offset) at real time through
/// the speech pipeline for `s.seconds`.
async fn victims(t: &Target, audio: &Arc<Vec<f32>>, s: &Settings) -> Phase {
    let mut tasks = Vec::new();
    for i in 0..s.victims {
        let (t, audio, seconds) = (t.clone(), Arc::clone(audio), s.seconds);
        tasks.push(tokio::spawn(async move {
            // Independent callers: started apart, from different places in the recording.
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            let offset = (i * 7919 * FRAME) % (audio.len() / FRAME * FRAME);
            victim(&t, &audio, offset, seconds).await
        }));
    }
    let mut phase = Phase::default();
    let mut latency = Vec::new();
    for task in tasks {
        match task.await.expect("victim task") {
            Ok((text, lat)) => {
                phase.texts.push(text);
                latency.extend(lat);
            }
            Err(e) => phase.failures.push(e),
        }
    }
    latency.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let i = ((latency.len() as f64 * p).ceil() as usize).clamp(1, latency.len().max(1)) - 1;
        latency.get(i).map_or(0.0, |v| (v * 10.0).round() / 10.0)
    };
    phase.utterances = latency.len();
    phase.p50_ms = q(0.5);
    phase.p95_ms = q(0.95);
    phase
}

async fn victim(
    t: &Target,
    audio: &[f32],
    offset: usize,
    seconds: f64,
) -> Result<(String, Vec<f64>), String> {
    let mut c = connect(t).await?;
    let (tx, mut rx) = call(&mut c).await.map_err(|s| s.to_string())?;
    tx.send(open(&t.speech)).await.map_err(|e| e.to_string())?;
    match rx.message().await {
        Ok(Some(proto::StreamResponse {
            message: Some(Msg::Ready(_)),
        })) => {}
        other => return Err(format!("victim not ready: {other:?}")),
    }
    let frames = (seconds * 50.0) as usize;
    let len = audio.len() / FRAME * FRAME;
    let samples: Vec<f32> = (0..frames * FRAME)
        .map(|k| audio[(offset + k) % len])
        .collect();
    let t0 = tokio::time::Instant::now();
    let feed = async move {
        for (k, frame) in samples.chunks(FRAME).enumerate() {
            tokio::time::sleep_until(t0 + Duration::from_millis(20 * k as u64)).await;
            if tx.send(audio_frame(frame, k)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(close()).await;
    };
    let read = async {
        let (mut text, mut latency) = (String::new(), Vec::new());
        loop {
            match rx.message().await {
                Ok(Some(proto::StreamResponse { message: Some(m) })) => match m {
                    Msg::Output(o) => {
                        if let Some(proto::data::Kind::Text(x)) = o.data.and_then(|d| d.kind)
                            && x.is_final
                            && let Some(span) = x.span
                        {
                            let arrived = t0.elapsed().as_secs_f64() * 1e3;
                            latency.push(arrived - span.end_us as f64 / 1e3);
                            text.push_str(&x.text.to_lowercase());
                            text.push(' ');
                        }
                    }
                    Msg::Error(e) => return Err(format!("victim told of an error: {}", e.message)),
                    Msg::Closed(_) => return Ok((text, latency)),
                    _ => {}
                },
                Ok(_) => return Err("victim's stream ended without `closed`".into()),
                Err(s) => return Err(format!("victim ended with {:?}: {}", s.code(), s.message())),
            }
        }
    };
    tokio::join!(feed, read).1
}

fn audio_frame(frame: &[f32], k: usize) -> proto::StreamRequest {
    audio(frame, 20_000 * k as i64)
}

/// The server's child processes that run Python (its workers).
pub fn python_children(parent: u32) -> Vec<i32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid.as_deref() == Some(parent.as_str())
                && String::from_utf8_lossy(&cmdline).contains("python")
        })
        .collect()
}

/// SIGKILLs one of the server's Python workers every `every` until `until`: how many.
async fn kill_workers(t: &Target, every: Duration, until: Instant) -> usize {
    let mut killed = 0;
    while Instant::now() + every < until {
        tokio::time::sleep(every).await;
        if let Some(&pid) = python_children(t.server_pid).first() {
            // SAFETY: kill(2) with a pid read from /proc; no memory is involved.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// Sessions of the Python pipeline, one after another until `until`: each sends a second of
/// audio at three times real time and closes. Outcomes: `closed` (a normal end), `told: node
/// error` (an error message, then the end), `status CODE`, or `no answer` (nothing for 20 s:
/// the one outcome a client must never see).
async fn python_sessions(t: &Target, audio: &[f32], until: Instant) -> Outcomes {
    let mut out = Outcomes::new();
    let Ok(mut c) = connect(t).await else {
        count(&mut out, "cannot connect");
        return out;
    };
    while Instant::now() < until {
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            let (tx, mut rx) = match call(&mut c).await {
                Ok(x) => x,
                Err(s) => return format!("status {:?}", s.code()),
            };
            let feed = async move {
                let _ = tx.send(open(&t.python)).await;
                for (k, frame) in audio.chunks(FRAME).take(50).enumerate() {
                    tokio::time::sleep(Duration::from_millis(7)).await;
                    if tx.send(audio_frame(frame, k)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(close()).await;
            };
            let read = async {
                let mut told = false;
                loop {
                    match rx.message().await {
                        Ok(Some(proto::StreamResponse { message: Some(m) })) => match m {
                            Msg::Error(_) => told = true,
                            Msg::Closed(_) if told => return "told: node error".to_string(),
                            Msg::Closed(_) => return "closed".to_string(),
                            _ => {}
                        },
                        Ok(_) => return "ended without `closed`".to_string(),
                        Err(s) => return format!("status {:?}", s.code()),
                    }
                }
            };
            tokio::join!(feed, read).1
        })
        .await
        .unwrap_or_else(|_| "no answer".into());
        count(&mut out, outcome);
    }
    out
}

/// A raw HTTP/2 StreamPipeline call on its own connection, reset (SO_LINGER 0) when the
/// returned task is aborted.
async fn raw_call(
    t: &Target,
) -> Result<
    (
        h2::SendStream<Bytes>,
        h2::client::ResponseFuture,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = tokio::net::TcpStream::connect(t.grpc)
        .await
        .map_err(|x| e(&x))?;
    tcp.set_zero_linger().map_err(|x| e(&x))?;
    let (client, conn) = h2::client::handshake(tcp).await.map_err(|x| e(&x))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|x| e(&x))?;
    let req = http::Request::post(format!(
        "http://{}/remotemedia.v1.PipelineService/StreamPipeline",
        t.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    let (resp, send) = client
        .send_request(req.body(()).unwrap(), false)
        .map_err(|x| e(&x))?;
    Ok((send, resp, conn))
}

/// A gRPC length-prefixed message.
fn framed(m: &impl Message) -> Bytes {
    let payload = m.encode_to_vec();
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(&payload);
    b.into()
}

/// Clients that open a session of the speech pipeline, send half a second of speech and
/// vanish: their TCP connection is reset. How many.
async fn resets(t: &Target, audio: &[f32], until: Instant) -> usize {
    let mut n = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let Ok((mut send, resp, conn)) = raw_call(t).await else {
            continue;
        };
        let _ = send.send_data(framed(&open(&t.speech)), false);
        // Ready, so the session is open, then speech.
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), resp).await {
            let mut body = resp.into_body();
            let _ = tokio::time::timeout(Duration::from_secs(10), body.data()).await;
            for (k, frame) in audio[16_000..].chunks(FRAME).take(25).enumerate() {
                let _ = send.send_data(framed(&audio_frame(frame, k)), false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.abort();
            n += 1;
        }
    }
    n
}

/// Slow-loris: `n` connections that never send a byte, and `n` streams that never send their
/// opening message. Outcomes: `connection closed by the server`, or `connection left open`
/// after 15 s; `stream: status CODE`, or `stream: no answer` after 90 s.
async fn silent(t: &Target, n: usize) -> Outcomes {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (a, b) = (t.clone(), t.clone());
        tasks.push(tokio::spawn(async move { silent_connection(&a).await }));
        tasks.push(tokio::spawn(async move { silent_stream(&b).await }));
    }
    let mut out = Outcomes::new();
    for task in tasks {
        count(&mut out, task.await.expect("silent client"));
    }
    out
}

async fn silent_connection(t: &Target) -> String {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(t.grpc).await else {
        return "cannot connect".into();
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => "connection closed by the server".into(),
        Ok(Ok(_)) => "connection got bytes".into(),
        Err(_) => "connection left open".into(),
    }
}

async fn silent_stream(t: &Target) -> String {
    let Ok(mut c) = connect(t).await else {
        return "cannot connect".into();
    };
    let (tx, mut rx) = match call(&mut c).await {
        Ok(x) => x,
        Err(s) => return format!("stream: status {:?}", s.code()),
    };
    let end = end_of(&mut rx, Duration::from_secs(90)).await;
    drop(tx);
    format!("stream: {end}")
}

/// Reads a call to its end: `status CODE`, `ended without a status`, or `no answer` when
/// nothing comes for `wait`.
async fn end_of(rx: &mut tonic::Streaming<proto::StreamResponse>, wait: Duration) -> String {
    loop {
        match tokio::time::timeout(wait, rx.message()).await {
            Err(_) => return "no answer".into(),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return "ended without a status".into(),
            Ok(Err(s)) => return format!("status {:?}", s.code()),
        }
    }
}

/// `n` sessions of the light pipeline opened and closed one after another, on two
/// connections. Outcomes: `closed`, or what went wrong.
async fn open_close(t: &Target, n: usize) -> Outcomes {
    let mut tasks = Vec::new();
    for half in [n / 2, n - n / 2] {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcomes::new();
            let Ok(mut c) = connect(&t).await else {
                count(&mut out, "cannot connect");
                return out;
            };
            for _ in 0..half {
                let outcome = tokio::time::timeout(Duration::from_secs(20), one_cycle(&t, &mut c))
                    .await
                    .unwrap_or_else(|_| "no answer".into());
                count(&mut out, outcome);
            }
            out
        }));
    }
    let mut out = Outcomes::new();
    for task in tasks {
        out = merge(out, task.await.expect("open/close client"));
    }
    out
}

async fn one_cycle(t: &Target, c: &mut PipelineServiceClient<Channel>) -> String {
    let (tx, mut rx) = match call(c).await {
        Ok(x) => x,
        Err(s) => return format!("status {:?}", s.code()),
    };
    let _ = tx.send(open(&t.light)).await;
    let _ = tx.send(close()).await;
    let mut ready = false;
    loop {
        match rx.message().await {
            Ok(Some(proto::StreamResponse { message: Some(m) })) => match m {
                Msg::Ready(_) => ready = true,
                Msg::Closed(_) if ready => return "closed".into(),
                other => return format!("unexpected {other:?}"),
            },
            Ok(_) => return "ended without `closed`".into(),
            Err(s) => return format!("status {:?}", s.code()),
        }
    }
}

/// Until `until`, every 200 ms: a message larger than the server takes, then a message cut
/// short (its header promises more than the stream carries). Outcomes: `oversized: status
/// CODE`, `truncated: status CODE` (or what else the client saw).
async fn bad_frames(t: &Target, until: Instant) -> Outcomes {
    let mut out = Outcomes::new();
    let Ok(mut c) = connect(t).await else {
        count(&mut out, "cannot connect");
        return out;
    };
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let oversized = match call(&mut c).await {
            Err(s) => format!("status {:?}", s.code()),
            Ok((tx, mut rx)) => {
                let _ = tx.send(open(&t.light)).await;
                let big = vec![0.0f32; t.max_message_bytes / 4 + 1024];
                let _ = tx.send(audio(&big, 0)).await;
                end_of(&mut rx, Duration::from_secs(10)).await
            }
        };
        count(&mut out, format!("oversized: {oversized}"));
        count(&mut out, format!("truncated: {}", truncated(t).await));
    }
    out
}

async fn truncated(t: &Target) -> String {
    let (mut send, resp, _conn) = match raw_call(t).await {
        Ok(x) => x,
        Err(e) => return format!("cannot call: {e}"),
    };
    let _ = send.send_data(framed(&open(&t.light)), false);
    // A header promising 10 000 bytes, 100 of them, and the end of the request.
    let mut partial = vec![0u8];
    partial.extend_from_slice(&10_000u32.to_be_bytes());
    partial.extend_from_slice(&[0x12; 100]);
    let _ = send.send_data(partial.into(), true);
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), resp).await else {
        return "no answer".into();
    };
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(|c| format!("status {:?}", tonic::Code::from(c)))
    };
    if let Some(s) = status(resp.headers()) {
        return s;
    }
    let mut body = resp.into_body();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .map(|d| d.map(|_| ()))
    {}
    match tokio::time::timeout(Duration::from_secs(10), body.trailers()).await {
        Ok(Ok(Some(trailers))) => status(&trailers).unwrap_or_else(|| "no grpc-status".into()),
        other => format!("no trailers: {other:?}"),
    }
}
