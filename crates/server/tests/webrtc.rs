//! The WebRTC endpoint with real peers. Headless Chromium (Debian's, driven over WebDriver by
//! chromedriver) loads the page from the server and speaks a real recording into its fake
//! microphone: it must show that recording's words as captions and play the spoken reply; two
//! browsers at once each get only their own captions; talked over, the voice agent stops its
//! answer and the page shows what was heard. Bad offers get clear HTTP errors, and a
//! peer that never connects or vanishes mid-call ends cleanly: no call, session or node is left.
//!
//! Needs `./scripts/setup-system.sh --test` (chromium, chromium-driver, libopus-dev) and
//! `./scripts/setup-models.sh`. The latencies the page measured are printed (`--nocapture`);
//! BENCHMARKS.md reports them from a release build.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remotemedia_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/speak.rs"]
mod speak;
use speak::{silence, speak};

const TOKEN: &str = "webrtc-test-token-0123456789";

/// Browser tests take turns: each runs browsers and speech pipelines that, on 2 cores and in a
/// debug build, already use the machine; running them at once starves their connections.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    // Canonical: Chromium's fake microphone plays silence for a path with `..` in it.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A server with the speak-back pipeline (its models loaded) and an echo pipeline.
async fn server(connect_timeout_ms: u64, tokens: bool) -> RunningServer {
    start(config(connect_timeout_ms, tokens)).await
}

fn config(connect_timeout_ms: u64, tokens: bool) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.webrtc.connect_timeout_ms = connect_timeout_ms;
    if tokens {
        config.auth.tokens = vec![TOKEN.into()];
    }
    config.pipelines.insert(
        "speak-back".into(),
        root().join("examples/webrtc_speak_back.yaml"),
    );
    config.manifests.insert(
        "echo".into(),
        "version: v1\nnodes:\n  - {id: echo, type: PassThrough}\n".into(),
    );
    config
}

async fn start(config: ServerConfig) -> RunningServer {
    let server = remotemedia_server::start(config, Arc::new(remotemedia_runtime::runtime()))
        .await
        .unwrap();
    let t = Instant::now();
    while !server.is_ready() {
        assert!(t.elapsed() < Duration::from_secs(60), "models not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// One value of the server's Prometheus text.
fn metric(server: &RunningServer, line_start: &str) -> u64 {
    server
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until no call, session or node of any call is left.
async fn all_released(server: &RunningServer, within: Duration) {
    let t = Instant::now();
    loop {
        let left = [
            "remotemedia_webrtc_calls_active ",
            "remotemedia_sessions_active ",
            "remotemedia_nodes_alive ",
            "remotemedia_node_tasks_alive ",
        ]
        .map(|m| (m, metric(server, m)));
        if left.iter().all(|(_, v)| *v == 0) {
            return;
        }
        assert!(
            t.elapsed() < within,
            "still alive after {within:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 exchange (one request per connection): status, headers and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), read_response(&mut tcp))
        .await
        .expect("an answer within 2 minutes")
}

/// Reads one response: up to its Content-Length, or to the end of the connection.
async fn read_response(tcp: &mut tokio::net::TcpStream) -> (u16, String, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head.to_string(), body.to_string());
            }
        }
        assert!(n > 0, "connection closed before the response's head");
    }
}

/// An SDP offer made by str0m as a client, with an audio section and/or a data channel.
fn offer(audio: bool) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(Instant::now());
    let mut change = rtc.sdp_api();
    if audio {
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    }
    change.add_channel("events".into());
    let (offer, _) = change.apply().unwrap();
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_get_clear_errors_and_a_peer_that_never_connects_is_released() {
    let mut config = config(1_000, true);
    config.webrtc.ice_addresses = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let server = start(config).await;
    let addr = server.http_addr().unwrap().to_string();
    let auth = ("Authorization", &*format!("Bearer {TOKEN}"));
    let sdp = ("Content-Type", "application/sdp");
    let post = |path: &'static str, headers: Vec<(&'static str, String)>, body: String| {
        let addr = addr.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(&addr, "POST", path, &h, body.as_bytes()).await
        }
    };
    let with_auth = || vec![(auth.0, auth.1.to_string()), (sdp.0, sdp.1.to_string())];

    let (status, _, body) = post("/v1/webrtc/speak-back", vec![], offer(true)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_auth_failures_total{transport=\"webrtc\"} 1")
    );
    let (status, _, body) = post(
        "/v1/webrtc/speak-back",
        with_auth(),
        "v=0\r\nnonsense".into(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed SDP offer"), "{body}");
    let (status, _, body) = post("/v1/webrtc/speak-back", with_auth(), offer(false)).await;
    assert_eq!(status, 400);
    assert!(body.contains("no audio section"), "{body}");
    let (status, _, body) = post("/v1/webrtc/nope", with_auth(), offer(true)).await;
    assert_eq!(status, 404);
    assert!(
        body.contains("no pipeline named `nope`") && body.contains("speak-back"),
        "{body}"
    );
    let (status, _, body) =
        http(&addr, "DELETE", "/v1/webrtc/sessions/call-99", &[auth], b"").await;
    assert_eq!(status, 404, "{body}");

    // A valid offer whose peer never does ICE: answered, then ended by the connect timeout.
    let (status, head, answer) = post("/v1/webrtc/speak-back", with_auth(), offer(true)).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer.starts_with("v=0") && answer.contains("m=audio"),
        "{answer}"
    );
    assert!(
        head.to_lowercase()
            .contains("location: /v1/webrtc/sessions/call-"),
        "{head}"
    );
    assert_eq!(metric(&server, "remotemedia_webrtc_calls_active "), 1);
    all_released(&server, Duration::from_secs(10)).await;
    assert_eq!(
        metric(
            &server,
            "remotemedia_webrtc_calls_ended_total{reason=\"connect timeout\"} "
        ),
        1
    );
    // Hanging up an answered call ends it at once.
    let (_, head, _) = post("/v1/webrtc/speak-back", with_auth(), offer(true)).await;
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let (status, _, _) = http(&addr, "DELETE", &location, &[auth], b"").await;
    assert_eq!(status, 204);
    all_released(&server, Duration::from_secs(5)).await;
    assert_eq!(
        metric(
            &server,
            "remotemedia_webrtc_calls_ended_total{reason=\"hung up\"} "
        ),
        1
    );
    assert!(metric(&server, "remotemedia_webrtc_refused_total{status=\"400\"} ") >= 2);

    // A drain: the call already answered goes on (until its connect timeout ends it, here)
    // and the drain waits for it; a new offer meanwhile gets 503.
    let (status, _, answer) = post("/v1/webrtc/speak-back", with_auth(), offer(true)).await;
    assert_eq!(status, 201, "{answer}");
    let started = Instant::now();
    let refused = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, body) = post("/v1/webrtc/speak-back", with_auth(), offer(true)).await;
        assert!(
            status == 503 && body.contains("draining"),
            "{status} {body}"
        );
        assert_eq!(metric(&server, "remotemedia_webrtc_calls_active "), 1);
    };
    let (drained, ()) = tokio::join!(server.drain(Duration::from_secs(10)), refused);
    assert!(drained, "the call ended within the drain");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the drain waited for the call"
    );
    all_released(&server, Duration::from_secs(1)).await;
    server.shutdown().await;
}

// -- the browser ------------------------------------------------------------------------------

/// chromedriver on a free port, killed when dropped.
struct Driver {
    addr: String,
    _child: tokio::process::Child,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("/usr/bin/chromedriver runs: ./scripts/setup-system.sh --test installs it");
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            addr,
            _child: child,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = body.to_string();
        let (status, _, text) = http(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path}: {text}");
        v["value"].clone()
    }

    /// A headless Chromium on `url` whose microphone plays `wav` (in a loop), or, without one,
    /// refuses microphone access as a user would.
    async fn browser(&self, wav: Option<&Path>, url: &str, profile: &Path) -> Browser<'_> {
        let mic = match wav {
            Some(wav) => vec![
                "--use-fake-ui-for-media-stream".to_string(),
                format!("--use-file-for-fake-audio-capture={}", wav.display()),
            ],
            None => vec!["--deny-permission-prompts".to_string()],
        };
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .chain(mic)
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": args}}}});
        let id = self.call("POST", "/session", caps).await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let b = Browser { driver: self, id };
        b.driver
            .call(
                "POST",
                &format!("/session/{}/url", b.id),
                json!({"url": url}),
            )
            .await;
        b
    }
}

struct Browser<'a> {
    driver: &'a Driver,
    id: String,
}

impl Browser<'_> {
    async fn eval(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.id);
        self.driver
            .call("POST", &path, json!({"script": script, "args": []}))
            .await
    }

    /// What the page saw (`window.remotemedia`).
    async fn state(&self) -> Value {
        self.eval("return window.remotemedia").await
    }

    /// Closes the browser (without hanging up first: the peer just vanishes).
    async fn quit(self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.id), json!({}))
            .await;
    }
}

fn captions(state: &Value) -> String {
    state["captions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["final"] == true)
        .map(|c| c["text"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn has_any(text: &str, words: &[&str]) -> usize {
    words.iter().filter(|w| text.contains(*w)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_get_their_own_captions_and_spoken_replies() {
    let _turn = BROWSERS.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Chromium's fake microphone resamples files to its own rate (beckett.wav is 16 kHz).
    let beckett = root().join("models/samples/beckett.wav");
    let two_cities = root().join("models/samples/two_cities.wav");
    let server = server(10_000, false).await;
    let page = format!(
        "http://{}/?pipeline=speak-back&autostart=1",
        server.http_addr().unwrap()
    );
    let driver = Driver::start().await;
    let a = driver
        .browser(Some(&beckett), &page, &dir.join("profile-a"))
        .await;
    let b = driver
        .browser(Some(&two_cities), &page, &dir.join("profile-b"))
        .await;

    // Beckett's words and Dickens's words: each page must show only its own.
    let (beckett_words, dickens_words) = (
        ["tried", "failed", "matter", "again", "better"],
        ["times", "wisdom", "foolishness", "age of"],
    );
    let t = Instant::now();
    let (sa, sb) = loop {
        let (sa, sb) = (a.state().await, b.state().await);
        let (ca, cb) = (captions(&sa), captions(&sb));
        let heard = |s: &Value| s["replyAudioMs"].as_u64().unwrap_or(0) >= 500;
        if has_any(&ca, &beckett_words) >= 3
            && has_any(&cb, &dickens_words) >= 2
            && heard(&sa)
            && heard(&sb)
        {
            break (sa, sb);
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "pages after 90 s:\nA: {sa}\nB: {sb}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (ca, cb) = (captions(&sa), captions(&sb));
    let interim = |s: &Value| {
        s["captions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["final"] == false)
    };
    assert!(
        interim(&sb),
        "interim captions during Dickens's long sentences: {sb}"
    );
    assert_eq!(has_any(&ca, &dickens_words), 0, "A got B's words: {ca}");
    assert_eq!(has_any(&cb, &beckett_words), 0, "B got A's words: {cb}");
    for s in [&sa, &sb] {
        assert_eq!(s["errors"], json!([]), "{s}");
        assert!(
            s["replyLevelMax"].as_f64().unwrap() > 0.01,
            "reply audio is audible: {s}"
        );
        assert!(
            !s["replies"].as_array().unwrap().is_empty(),
            "reply transcript: {s}"
        );
    }
    for (name, s) in [("beckett", &sa), ("two_cities", &sb)] {
        eprintln!(
            "latency {name}: end of speech -> caption {} ms; -> first reply audio {} ms",
            s["latency"]["captionMs"], s["latency"]["replyMs"]
        );
    }

    // A hangs up with its Stop button; B's browser just goes away.
    a.eval("document.getElementById('toggle').click()").await;
    let t = Instant::now();
    while metric(&server, "remotemedia_webrtc_calls_active ") != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "Stop did not end A's call"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The page sends DELETE and closes its peer connection: whichever the server sees first
    // ends the call (the DELETE, the closing DTLS/SCTP, or ICE seeing the peer gone).
    let ended: u64 = ["hung up", "closed by peer", "disconnected"]
        .iter()
        .map(|r| {
            metric(
                &server,
                &format!("remotemedia_webrtc_calls_ended_total{{reason=\"{r}\"}} "),
            )
        })
        .sum();
    assert_eq!(ended, 1, "{}", server.metrics_text());
    b.quit().await;
    all_released(&server, Duration::from_secs(30)).await;
    a.quit().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Talking over the agent in the browser: the spoken answer stops, and the page shows what was
/// heard of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_over_the_agent_in_the_browser_stops_its_answer() {
    let _turn = BROWSERS.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A question, a pause in which the answer starts, and another question over it.
    let mic = dir.join("barge-in.wav");
    let samples = [
        silence(1.0),
        speak("Tell me about the moon.").await,
        silence(3.5),
        speak("What is the sun made of?").await,
        silence(5.0),
    ]
    .concat();
    write_mic(&mic, &samples);
    let (server, page) = agent_server().await;
    let driver = Driver::start().await;
    let browser = driver
        .browser(Some(&mic), &page, &dir.join("profile"))
        .await;
    // The microphone file plays in a loop: an answer that had not started playing when the
    // second question came is cancelled without an event; the next round tries again.
    let t = Instant::now();
    // (A reply begun at a pause in a question and dropped when it went on is reported with
    // reason `resumed`; the barge-in is what this test is after.)
    let barge_in = |s: &Value| {
        s["interruptions"]
            .as_array()
            .and_then(|i| i.iter().find(|e| e["reason"] == "barge-in"))
            .cloned()
    };
    let (state, event) = loop {
        let s = browser.state().await;
        if let Some(event) = barge_in(&s) {
            break (s, event);
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no interruption after 120 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(event["heard_ms"].as_u64().unwrap() > 0, "{state}");
    assert!(event["dropped_ms"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(state["errors"], json!([]), "{state}");
    let replies: Vec<&str> = state["replies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["text"].as_str())
        .collect();
    let spoken = event["spoken"].as_str().unwrap();
    assert!(
        replies.join(" ").contains(spoken),
        "heard {spoken:?} of {replies:?}"
    );
    browser.quit().await;
    all_released(&server, Duration::from_secs(30)).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the page reports an error; returns it.
async fn page_error(browser: &Browser<'_>) -> String {
    let t = Instant::now();
    loop {
        let s = browser.state().await;
        if let Some(e) = s["errors"].as_array().and_then(|e| e.first()) {
            return e.as_str().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no error shown: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_explains_a_refused_microphone_and_a_server_that_is_down() {
    let _turn = BROWSERS.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-e-{}", std::process::id()));
    let server = server(10_000, false).await;
    let http = server.http_addr().unwrap();
    let driver = Driver::start().await;

    let refused = driver
        .browser(
            None,
            &format!("http://{http}/?autostart=1"),
            &dir.join("p1"),
        )
        .await;
    let e = page_error(&refused).await;
    assert!(
        e.contains("microphone is not available") && e.contains("NotAllowedError"),
        "{e}"
    );
    assert_eq!(metric(&server, "remotemedia_webrtc_calls_active "), 0);
    refused.quit().await;

    let beckett = root().join("models/samples/beckett.wav");
    let late = driver
        .browser(Some(&beckett), &format!("http://{http}/"), &dir.join("p2"))
        .await;
    server.shutdown().await;
    late.eval("document.getElementById('toggle').click()").await;
    let e = page_error(&late).await;
    assert!(e.contains("the server cannot be reached"), "{e}");
    late.quit().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The voice agent's latency in the page: one caller asking four questions, each followed by
/// 12 s of quiet to hear the answer, for two minutes. A benchmark, not a test: run it on a
/// release build with `./bench/webrtc_latency.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: ./bench/webrtc_latency.sh"]
async fn latency_of_the_agent_for_one_caller() {
    let _turn = BROWSERS.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-la-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Questions with room for the answer after each: the caller waits to be answered.
    let mut samples = silence(1.0);
    for question in [
        "Tell me about the moon.",
        "What is the capital of France?",
        "What is the sun made of?",
        "Why is the sky blue?",
    ] {
        samples.extend(speak(question).await);
        samples.extend(silence(12.0));
    }
    let mic = dir.join("questions.wav");
    write_mic(&mic, &samples);
    let (server, page) = agent_server().await;
    print_latency(&mic, &page, &dir, Duration::from_secs(120)).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One browser calling `page` with `mic` as its microphone for `how_long`; prints what the page
/// measured.
async fn print_latency(mic: &Path, page: &str, dir: &Path, how_long: Duration) {
    let driver = Driver::start().await;
    let caller = driver.browser(Some(mic), page, &dir.join("p")).await;
    tokio::time::sleep(how_long).await;
    let s = caller.state().await;
    caller.quit().await;
    println!(
        "end of speech -> final caption:     {}",
        stats(&s, "captionMs")
    );
    println!(
        "end of speech -> first reply text:  {}",
        stats(&s, "replyTextMs")
    );
    println!(
        "end of speech -> first reply audio: {}",
        stats(&s, "replyMs")
    );
    println!("captions: {}", captions(&s));
    println!(
        "reply audio in the jitter buffer: {} ms on average",
        s["replyBufferMs"]
    );
}

/// Percentiles of one of the page's latency lists.
fn stats(state: &Value, name: &str) -> String {
    let mut v: Vec<u64> = state["latency"][name]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    v.sort_unstable();
    assert!(!v.is_empty(), "no {name} measured: {state}");
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} p50={} ms p90={} ms max={} ms",
        v.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

/// A 16 kHz WAV for Chromium's fake microphone (which plays it in a loop).
fn write_mic(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        wav.write_sample((s * 32_767.0) as i16).unwrap();
    }
    wav.finalize().unwrap();
}

/// A server with the voice agent (`examples/voice_agent.yaml`) as pipeline `agent`, and the
/// page that calls it.
async fn agent_server() -> (RunningServer, String) {
    let mut config = config(10_000, false);
    config
        .pipelines
        .insert("agent".into(), root().join("examples/voice_agent.yaml"));
    let server = start(config).await;
    let page = format!(
        "http://{}/?pipeline=agent&autostart=1",
        server.http_addr().unwrap()
    );
    (server, page)
}

/// The latency figures of BENCHMARKS.md: one caller speaking `beckett.wav` (short phrases with
/// pauses) for 40 s, as the page measures them. A benchmark, not a test: run it on a release
/// build with `./bench/webrtc_latency.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: ./bench/webrtc_latency.sh"]
async fn latency_of_one_caller() {
    let _turn = BROWSERS.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-l-{}", std::process::id()));
    let server = server(10_000, false).await;
    let page = format!(
        "http://{}/?pipeline=speak-back&autostart=1",
        server.http_addr().unwrap()
    );
    let beckett = root().join("models/samples/beckett.wav");
    print_latency(&beckett, &page, &dir, Duration::from_secs(40)).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// -- Firefox ----------------------------------------------------------------------------------

/// A headless Firefox ESR driven over Marionette (its own protocol: `length:json` messages on a
/// TCP port), killed when dropped.
struct Firefox {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
    next_id: u64,
    _child: tokio::process::Child,
}

impl Firefox {
    async fn start(profile: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(profile).unwrap();
        // A fake microphone, no permission prompt, loopback ICE candidates (off by default in
        // Firefox), and nothing that reaches for the network.
        let prefs = json!({
            "marionette.port": port,
            "media.navigator.streams.fake": true,
            "media.navigator.permission.disabled": true,
            "media.peerconnection.ice.loopback": true,
            "media.peerconnection.ice.obfuscate_host_addresses": false,
            "app.update.enabled": false,
            "browser.shell.checkDefaultBrowser": false,
            "datareporting.policy.dataSubmissionEnabled": false,
            "network.captive-portal-service.enabled": false,
            "toolkit.telemetry.enabled": false,
        });
        let user_js: String = prefs
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
            .collect();
        std::fs::write(profile.join("user.js"), user_js).unwrap();
        let child = tokio::process::Command::new("firefox-esr")
            .args(["--headless", "--marionette", "--no-remote", "--profile"])
            .arg(profile)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("firefox-esr runs: ./scripts/setup-system.sh --test installs it");
        let t = Instant::now();
        let tcp = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(tcp) => break tcp,
                Err(_) if t.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("Firefox's Marionette port did not open: {e}"),
            }
        };
        let mut ff = Self {
            tcp,
            buf: Vec::new(),
            next_id: 0,
            _child: child,
        };
        let hello = ff.read().await;
        assert_eq!(hello["applicationType"], "gecko", "{hello}");
        ff.call("WebDriver:NewSession", json!({})).await;
        ff
    }

    async fn read(&mut self) -> Value {
        loop {
            if let Some(colon) = self.buf.iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() > colon + len {
                    let msg: Vec<u8> = self.buf.drain(..=colon + len).skip(colon + 1).collect();
                    return serde_json::from_slice(&msg).unwrap();
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(60), self.tcp.read(&mut chunk))
                .await
                .expect("Marionette answers within a minute")
                .unwrap();
            assert!(n > 0, "Firefox closed the Marionette connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One command; its result.
    async fn call(&mut self, name: &str, params: Value) -> Value {
        self.next_id += 1;
        let msg = json!([0, self.next_id, name, params]).to_string();
        let framed = format!("{}:{msg}", msg.len());
        self.tcp.write_all(framed.as_bytes()).await.unwrap();
        let reply = self.read().await;
        assert!(reply[2].is_null(), "Marionette {name}: {}", reply[2]);
        reply[3].clone()
    }

    async fn state(&mut self) -> Value {
        let script = json!({"script": "return window.remotemedia", "args": []});
        self.call("WebDriver:ExecuteScript", script).await["value"].clone()
    }

    /// Clicks the page's Start/Stop button, as a user would.
    async fn click_toggle(&mut self) {
        let q = json!({"using": "css selector", "value": "#toggle"});
        let found = self.call("WebDriver:FindElement", q).await;
        let element = found.get("value").unwrap_or(&found);
        let id = element
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
        self.call("WebDriver:ElementClick", json!({"id": id})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_calls_a_pipeline_and_gets_its_audio_back() {
    let _turn = BROWSERS.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webrtc-f-{}", std::process::id()));
    let server = server(10_000, false).await;
    let mut ff = Firefox::start(&dir.join("profile")).await;
    let page = format!("http://{}/?pipeline=echo", server.http_addr().unwrap());
    ff.call("WebDriver:Navigate", json!({"url": page})).await;
    ff.click_toggle().await;
    // Firefox's fake microphone goes to the echo pipeline and comes back on the reply track.
    // (Headless Firefox has no audio output here, so its Web Audio context stays suspended and
    // the page cannot measure levels; the peer connection's packet counts show the media.)
    let t = Instant::now();
    let s = loop {
        let s = ff.state().await;
        let packets = |k: &str| s[k].as_u64().unwrap_or(0);
        if s["status"].as_str().unwrap_or("").starts_with("live — ")
            && packets("micPackets") > 100
            && packets("replyPackets") > 100
        {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Firefox's page after 30 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(s["errors"], json!([]), "{s}");
    assert!(metric(&server, "remotemedia_inputs_total ") > 100);
    assert_eq!(metric(&server, "remotemedia_webrtc_calls_active "), 1);
    ff.click_toggle().await; // Stop
    all_released(&server, Duration::from_secs(10)).await;
    drop(ff);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
