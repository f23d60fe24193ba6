//! Shared workers: one Python process serves every session of a node declared `shared`, each
//! session with its own state; a crash fails only the requests in flight on it.

mod common;

use std::time::Duration;

use common::*;
use remotemedia_core::{NodeFailure, RuntimeData, Session};

const COUNTER: &str = "shared_probe:Counter";

async fn ask(s: &mut Session, command: &str) -> serde_json::Value {
    s.send(RuntimeData::text(command)).await.unwrap();
    json(&next_ok(s).await).clone()
}

async fn fails(s: &mut Session, command: &str) -> NodeFailure {
    s.send(RuntimeData::text(command)).await.unwrap();
    match next(s).await {
        Err(f) => f,
        Ok(p) => panic!("`{command}` gave {:?} instead of a failure", p.data),
    }
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_share_one_process_and_one_load_but_never_their_state() {
    let rt = runtime();
    let manifest = one_node(COUNTER, "{}");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(open(&rt, &manifest).await);
    }
    let mut pids = Vec::new();
    for (i, s) in sessions.iter_mut().enumerate() {
        for n in 1..=i + 1 {
            let v = ask(s, "x").await;
            assert_eq!(v["count"], n as i64, "session {i}: {v}");
            assert_eq!(v["loads"], 1, "{v}");
            pids.push(v["pid"].as_i64().unwrap());
        }
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one process for all sessions: {pids:?}");
    // A session opened later starts at zero on the same, already loaded, process.
    let mut late = open(&rt, &manifest).await;
    let v = ask(&mut late, "x").await;
    assert_eq!(
        (v["count"].as_i64(), v["pid"].as_i64()),
        (Some(1), Some(pids[0]))
    );
    for s in sessions {
        s.close().await.unwrap();
    }
    // `per_session` overrides the class: a process of its own.
    let mut own = open(&rt, &one_node(COUNTER, "{worker: {per_session: true}}")).await;
    assert_ne!(ask(&mut own, "x").await["pid"].as_i64(), Some(pids[0]));
    own.close().await.unwrap();
    drop((late, rt));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!alive(pids[0]), "the shared worker outlived its runtime");
}

/// A SIGKILL mid-stream fails the request in flight (its session is told, with the signal and
/// stderr); the next request restarts the worker, and every session goes on with fresh state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shared_worker_fails_only_the_requests_in_flight() {
    let rt = runtime();
    let manifest = one_node(COUNTER, "{worker: {backoff_ms: 10}}");
    let mut busy = open(&rt, &manifest).await;
    let mut idle = open(&rt, &manifest).await;
    let pid = ask(&mut idle, "x").await["pid"].as_i64().unwrap();
    busy.send(RuntimeData::text("sleep:30")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill(2) of the worker this test's runtime started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let f = match next(&mut busy).await {
        Err(f) => f,
        Ok(p) => panic!("expected the loss, got {:?}", p.data),
    };
    assert!(!f.fatal, "{f}");
    for part in [
        "`py` (shared_probe:Counter)",
        "killed by signal 9 (SIGKILL)",
        "was lost",
    ] {
        assert!(
            f.message.contains(part),
            "`{part}` missing from: {}",
            f.message
        );
    }
    let v = ask(&mut idle, "x").await;
    assert_ne!(v["pid"].as_i64(), Some(pid), "{v}");
    assert_eq!(v["count"], 1, "state starts afresh in the new process: {v}");
    assert_eq!(ask(&mut busy, "y").await["text"], "y");
    // Killed from inside: the same, and its stderr is quoted.
    let f = fails(&mut busy, "kill").await;
    assert!(
        f.message.contains("shared probe: about to be killed"),
        "{f}"
    );
    assert_eq!(ask(&mut idle, "z").await["text"], "z");
    busy.close().await.unwrap();
    idle.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_ends_the_sessions_of_a_dead_shared_worker() {
    let rt = runtime();
    let manifest = one_node(COUNTER, "{worker: {restart: never}}");
    let mut a = open(&rt, &manifest).await;
    let mut b = open(&rt, &manifest).await;
    let f = fails(&mut a, "kill").await;
    assert!(f.fatal, "{f}");
    let f = fails(&mut b, "x").await;
    assert!(f.fatal && f.message.contains("`never`"), "{f}");
}

/// A node that blocks its thread (no `to_thread`) holds its own session only: the other
/// session's requests are all answered while it sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_blocks_holds_only_its_own_session() {
    let rt = runtime();
    let manifest = one_node(COUNTER, "{}");
    let mut blocked = open(&rt, &manifest).await;
    let mut other = open(&rt, &manifest).await;
    blocked.send(RuntimeData::text("sleep:3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..5 {
        assert_eq!(
            ask(&mut other, &format!("{i}")).await["text"],
            format!("{i}")
        );
    }
    let early = tokio::time::timeout(Duration::from_millis(100), blocked.recv()).await;
    assert!(
        early.is_err(),
        "the blocked session answered before the others"
    );
    assert_eq!(json(&next_ok(&mut blocked).await)["text"], "sleep:3");
}

/// Outputs of one input reach the session as the node yields them, not when it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_stream_as_the_node_yields_them() {
    let rt = runtime();
    let mut s = open(&rt, &one_node(COUNTER, "{}")).await;
    s.send(RuntimeData::text("stream:3")).await.unwrap();
    assert_eq!(text(&next_ok(&mut s).await), "part 0");
    let early = tokio::time::timeout(Duration::from_millis(150), s.recv()).await;
    assert!(
        early.is_err(),
        "the second part came with the first: {early:?}"
    );
    assert_eq!(text(&next_ok(&mut s).await), "part 1");
    assert_eq!(text(&next_ok(&mut s).await), "part 2");
    assert_eq!(json(&next_ok(&mut s).await)["count"], 1);
    s.close().await.unwrap();
}

/// Inputs of several sessions waiting together go to `process_batch` in one call, and each
/// session gets its own answer; a failed input rejects that input only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_inputs_of_several_sessions_run_as_one_batch() {
    let rt = runtime();
    let manifest = one_node(
        "shared_probe:Batcher",
        "{worker: {lanes: 1, batch_wait_ms: 300}}",
    );
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(open(&rt, &manifest).await);
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        let input = if i == 3 {
            "bad".to_string()
        } else {
            format!("s{i}")
        };
        s.send(RuntimeData::text(input)).await.unwrap();
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        let got = next(s).await;
        if i == 3 {
            let f = got.unwrap_err();
            assert!(!f.fatal && f.message.contains("bad input"), "{f}");
        } else {
            assert_eq!(text(&got.unwrap()), format!("s{i}/4"));
        }
    }
    // A session whose setup fails is refused at open, with the reason.
    let refused = rt
        .open(
            &rt.load(&one_node("shared_probe:Batcher", "{refuse: yes}"), "t.yaml")
                .unwrap(),
        )
        .await
        .err()
        .expect("setup refused");
    assert!(refused.to_string().contains("refuse is set"), "{refused}");
    for s in sessions {
        s.close().await.unwrap();
    }
}
