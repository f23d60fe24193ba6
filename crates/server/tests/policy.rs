//! Client manifests meet the server's policy before anything of them is resolved: a Python
//! class named by a client is neither imported nor described, and no process starts.
//!
//! The witness is a module that marks a file when imported; a watcher thread records every
//! child process of this test process while the client is refused.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use remotemedia_server::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const MARKER: &str = "import pathlib\n\
pathlib.Path(__file__).with_suffix('.imported').touch()\n\
from remotemedia import Node\n\n\
class Marker(Node):\n    \
    async def process(self, data):\n        \
        yield data\n";
const CLASS_MANIFEST: &str = "version: v1\nnodes:\n  - {id: m, type: 'marker_node:Marker'}\n";

/// Processes whose parent is this process (whichever thread started them).
fn children() -> BTreeSet<u32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_string();
            (ppid == me).then_some(pid)
        })
        .collect()
}

/// Records children started from now until dropped.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<BTreeSet<u32>>>,
}

impl Watcher {
    fn start() -> Self {
        let before = children();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !flag.load(Relaxed) {
                seen.extend(children().difference(&before));
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn started(mut self) -> BTreeSet<u32> {
        self.stop.store(true, Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn marker_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rm-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("marker_node.py"), MARKER).unwrap();
    dir
}

/// POST over plain HTTP/1.1; the status code.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_class_in_a_client_manifest_is_refused_before_it_is_imported() {
    let dir = marker_dir();
    let server = serve_with(runtime_with_python_path(&dir), |c| {
        c.client_manifests.allow = true;
        c.webrtc.enabled = true;
    })
    .await;
    wait_ready(&server).await;

    let watcher = Watcher::start();
    let err = manifest_status(&mut client(&server).await, CLASS_MANIFEST).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("Python"), "{}", err.message());
    // The unary call takes the same path.
    let mut c = client(&server).await;
    let err = c
        .execute_pipeline(proto::ExecuteRequest {
            protocol_version: "1.0".into(),
            pipeline: Some(proto::execute_request::Pipeline::Manifest(
                CLASS_MANIFEST.into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // WebRTC opens configured pipelines only: a class name is just an unknown pipeline.
    let http = server.http_addr().unwrap();
    let code = post(http, "/v1/webrtc/marker_node:Marker", "v=0\r\n").await;
    assert!(code == 404 || code == 501, "{code}"); // 501: built without WebRTC
    let started = watcher.started();

    assert!(started.is_empty(), "processes started: {started:?}");
    assert!(
        !dir.join("marker_node.imported").exists(),
        "the refused module was imported"
    );
    assert_no_leaks(&server).await;
    server.shutdown().await;

    // The witness works: where the policy allows Python, the same manifest imports the module.
    // (In the same test: the watcher above would see the workers of a test running beside it.)
    let server = serve_with(runtime_with_python_path(&dir), |c| {
        c.client_manifests.allow = true;
        c.client_manifests.allow_python = true;
    })
    .await;
    wait_ready(&server).await;
    let status = manifest_status(&mut client(&server).await, CLASS_MANIFEST).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert!(dir.join("marker_node.imported").exists());
    assert_no_leaks(&server).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
