//! 200 sessions with Python nodes opened and closed — normally, with the worker killed from
//! inside or outside, or abandoned mid-stream, on workers of their own or on a shared one that
//! is killed now and then — leave no worker process and no shared-memory file behind. Alone in its test binary, so no other test's workers are counted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use remotemedia_core::{Runtime, RuntimeData};

/// iceoryx2's files: shared memory in /dev/shm and its node/service records under /tmp.
fn iceoryx_files() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("iox2_") {
            out.insert(e.path().display().to_string());
        }
    }
    walk(Path::new("/tmp/iceoryx2"), &mut out);
    out
}

async fn one_session(rt: Arc<Runtime>, i: usize) {
    if i % 5 == 4 {
        return shared_session(&rt, i).await;
    }
    let mut s = open(&rt, &one_node("probe:Probe", "{worker: {restart: never}}")).await;
    s.send(RuntimeData::text("pid")).await.unwrap();
    let pid = json(&next_ok(&mut s).await)["pid"].as_i64().unwrap() as i32;
    match i % 4 {
        0 => {
            s.send(RuntimeData::audio(vec![0.25; 1600], 16_000, 1))
                .await
                .unwrap();
            next_ok(&mut s).await;
            next_ok(&mut s).await;
            s.close().await.unwrap();
        }
        1 => {
            s.send(RuntimeData::text("kill")).await.unwrap();
            assert!(next(&mut s).await.unwrap_err().fatal);
            assert!(s.close().await.is_err());
        }
        2 => {
            // SAFETY: kill(2) on the worker this session started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            assert!(s.close().await.is_err());
        }
        _ => {
            // Abandoned with work in flight: dropping the session cancels it.
            s.send(RuntimeData::text("hang:5")).await.unwrap();
            drop(s);
        }
    }
}

/// A session on the shared worker that sometimes kills it: its own request and those of other
/// sessions in flight then fail, which is not what this test is about.
async fn shared_session(rt: &Runtime, i: usize) {
    let mut s = open(
        rt,
        &one_node("shared_probe:Counter", "{worker: {backoff_ms: 10}}"),
    )
    .await;
    let command = if i.is_multiple_of(3) { "kill" } else { "x" };
    s.send(RuntimeData::text(command)).await.unwrap();
    let _ = next(&mut s).await;
    let _ = s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_leave_no_process_and_no_shared_memory() {
    let before = iceoryx_files();
    let rt = Arc::new(runtime());
    for batch in 0..25 {
        let mut set = tokio::task::JoinSet::new();
        for j in 0..8 {
            set.spawn(one_session(Arc::clone(&rt), batch * 8 + j));
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
    // The shared worker lives as long as the runtime.
    drop(rt);
    // Abandoned sessions close in the background (their node tasks release the workers and
    // then the shared memory): give them a moment.
    let leaked = || {
        let after = iceoryx_files();
        after.difference(&before).cloned().collect::<Vec<String>>()
    };
    let (mut left, mut files) = (children(), leaked());
    for _ in 0..50 {
        if left.is_empty() && files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (left, files) = (children(), leaked());
    }
    assert!(left.is_empty(), "worker processes left: {left:?}");
    assert!(files.is_empty(), "shared-memory files left: {files:?}");
}
