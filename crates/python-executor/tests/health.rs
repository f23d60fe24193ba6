//! Workers that die, hang, misbehave or are misconfigured: each is a clear error naming the
//! node, and the restart policy and the other sessions behave as documented.

mod common;

use std::time::{Duration, Instant};

use common::*;
use remotemedia_core::{NodeFailure, RuntimeData, Session};

const NEVER: &str = "{worker: {restart: never}}";

async fn pid(s: &mut Session) -> i32 {
    s.send(RuntimeData::text("pid")).await.unwrap();
    let p = next_ok(s).await;
    json(&p)["pid"].as_i64().unwrap() as i32
}

/// Sends a command and returns the failure it causes.
async fn fails(s: &mut Session, command: &str) -> NodeFailure {
    s.send(RuntimeData::text(command)).await.unwrap();
    match next(s).await {
        Err(f) => f,
        Ok(p) => panic!("`{command}` gave {:?} instead of a failure", p.data),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_the_session_with_node_status_and_stderr() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", NEVER)).await;
    let t0 = Instant::now();
    let f = fails(&mut s, "kill").await;
    let detected = t0.elapsed();
    assert!(f.fatal);
    assert_mentions(
        &f.message,
        &[
            "`py` (probe:Probe)",
            "killed by signal 9 (SIGKILL)",
            "probe: about to be killed",
            "`never`",
        ],
    );
    eprintln!("death reported {detected:?} after the input was sent");
    assert!(detected < Duration::from_secs(5));
    assert!(s.close().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_is_reported_as_sigsegv() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", NEVER)).await;
    let f = fails(&mut s, "segfault").await;
    assert!(f.fatal);
    assert_mentions(&f.message, &["SIGSEGV", "probe: about to segfault"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_idle_is_noticed_and_restarted() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", "{worker: {backoff_ms: 10}}")).await;
    let first = pid(&mut s).await;
    // SAFETY: kill(2) on the worker this test started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    // No input is pending: the death is still noticed and reported at once.
    let f = match next(&mut s).await {
        Err(f) => f,
        Ok(p) => panic!("expected a failure, got {:?}", p.data),
    };
    assert!(!f.fatal, "a restart keeps the session going: {f}");
    assert_mentions(&f.message, &["SIGKILL", "restarted (1 of 3)"]);
    let second = pid(&mut s).await;
    assert_ne!(first, second);
    s.send(RuntimeData::text("still here")).await.unwrap();
    assert_eq!(text(&next_ok(&mut s).await), "still here");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_bounded_and_inputs_in_flight_are_reported_lost() {
    let rt = runtime();
    let params = "{worker: {max_restarts: 1, backoff_ms: 10}}";
    let mut s = open(&rt, &one_node("probe:Probe", params)).await;
    let f = fails(&mut s, "exit:7").await;
    assert!(!f.fatal);
    assert_mentions(
        &f.message,
        &[
            "exited with status 7",
            "the input it was processing was lost",
        ],
    );
    assert_eq!(
        text(&{
            s.send(RuntimeData::text("after restart")).await.unwrap();
            next_ok(&mut s).await
        }),
        "after restart"
    );
    let f = fails(&mut s, "exit:8").await;
    assert!(f.fatal);
    assert_mentions(&f.message, &["all 1 restarts used", "exited with status 8"]);
}

/// What a session receives, in order, until `n` outputs and a failure have come (or a fatal
/// one): texts, and failures as
/// `Err(message)`.
async fn collect(s: &mut Session, n: usize) -> Vec<Result<String, NodeFailure>> {
    let mut got: Vec<Result<String, NodeFailure>> = Vec::new();
    while got.iter().filter(|r| r.is_ok()).count() < n || !got.iter().any(Result::is_err) {
        got.push(next(s).await.map(|p| text(&p).to_string()));
        if matches!(got.last(), Some(Err(f)) if f.fatal) {
            break;
        }
    }
    got
}

/// `restart: never`: every output the worker produced before it crashed arrives, then the
/// failure; `remotemedia run` exits 1 (tests/cli.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_produced_before_a_crash_arrive_before_the_failure() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", NEVER)).await;
    s.send(RuntimeData::text("crash_after:3")).await.unwrap();
    let got = collect(&mut s, 4).await;
    let texts: Vec<&String> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(texts, ["0", "1", "2"], "{got:?}");
    let f = got.last().unwrap().as_ref().unwrap_err();
    assert!(f.fatal);
    assert_mentions(
        &f.message,
        &["SIGSEGV", "the input it was processing was lost"],
    );
}

/// `restart: on-failure`: the outputs before the crash arrive, the crashing input is reported
/// lost (node, signal, stderr), and the inputs sent after it, already in flight to the dead
/// worker, are processed by the new one: the session loses exactly what it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_after_the_crashing_one_go_to_the_new_worker() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", "{worker: {backoff_ms: 10}}")).await;
    for input in ["crash_after:2", "a", "b", "c"] {
        s.send(RuntimeData::text(input)).await.unwrap();
    }
    let got = collect(&mut s, 5).await;
    let texts: Vec<&String> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(texts, ["0", "1", "a", "b", "c"], "{got:?}");
    // The report follows what the worker produced before it died (the session's failures and
    // outputs are separate queues, so outputs of the new worker may overtake it).
    let failures: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_err()).collect();
    assert_eq!(failures.len(), 1, "{got:?}");
    assert!(failures[0] >= 2, "{got:?}");
    let f = got[failures[0]].as_ref().unwrap_err();
    assert!(!f.fatal, "{f}");
    assert_mentions(
        &f.message,
        &[
            "`py` (probe:Probe)",
            "SIGSEGV",
            "the input it was processing was lost",
            "restarted (1 of 3)",
        ],
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_found_by_its_missing_heartbeat() {
    let rt = runtime();
    let params = "{worker: {restart: never, heartbeat_interval_ms: 50, heartbeat_timeout_ms: 500}}";
    let mut s = open(&rt, &one_node("probe:Probe", params)).await;
    // Idle first (it stops beating then): the input that hangs it must start the clock again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let f = fails(&mut s, "hang").await;
    assert!(f.fatal);
    assert_mentions(&f.message, &["stopped answering (no heartbeat for 0.5 s)"]);
    assert!(t0.elapsed() >= Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_work_through_to_thread_is_not_a_hang() {
    let rt = runtime();
    let params = "{delay_ms: 1200, worker: {restart: never, heartbeat_interval_ms: 50, heartbeat_timeout_ms: 400}}";
    let mut s = open(&rt, &one_node("SlowUpper", params)).await;
    s.send(RuntimeData::text("patient")).await.unwrap();
    assert_eq!(text(&next_ok(&mut s).await), "PATIENT");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_reject_one_input_and_the_node_goes_on() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", NEVER)).await;
    let f = fails(&mut s, "reject").await;
    assert!(!f.fatal);
    assert_mentions(
        &f.message,
        &["`py` (probe:Probe) failed: asked to reject this input"],
    );
    let f = fails(&mut s, "bug").await;
    assert!(!f.fatal);
    assert_mentions(&f.message, &["KeyError: 'missing'"]);
    s.send(RuntimeData::text("fine")).await.unwrap();
    assert_eq!(text(&next_ok(&mut s).await), "fine");
    let f = fails(&mut s, "fatal").await;
    assert!(f.fatal);
    assert_mentions(&f.message, &["asked to fail for good"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limit_are_rejected_both_ways() {
    let rt = runtime();
    let params = "{worker: {restart: never, max_frame_bytes: 65536}}";
    let mut s = open(&rt, &one_node("probe:Probe", params)).await;
    s.send(RuntimeData::audio(vec![0.0; 20_000], 16_000, 1))
        .await
        .unwrap();
    let f = next(&mut s).await.unwrap_err();
    assert!(!f.fatal);
    assert_mentions(&f.message, &["input of 80", "the limit is 65536"]);
    let f = fails(&mut s, "big:100000").await;
    assert!(!f.fatal);
    assert_mentions(&f.message, &["over the 65536-byte limit"]);
    s.send(RuntimeData::text("small")).await.unwrap();
    assert_eq!(text(&next_ok(&mut s).await), "small");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_from_the_worker_is_a_clear_error() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", NEVER)).await;
    let f = fails(&mut s, "garbage").await;
    assert!(f.fatal);
    assert_mentions(
        &f.message,
        &["`py` (probe:Probe)", "malformed frame", "magic"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nodes_and_params_fail_at_open_with_the_reason() {
    let rt = runtime();
    let open_err = |manifest: String| {
        let rt = &rt;
        async move {
            let pipeline = rt.load(&manifest, "test.yaml").map_err(|e| e.to_string())?;
            rt.open(&pipeline)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    let e = open_err(one_node("broken_import:Node", "{}"))
        .await
        .unwrap_err();
    assert_mentions(
        &e,
        &[
            "import failed",
            "No module named 'a_module_that_does_not_exist'",
        ],
    );
    let e = open_err(one_node("probe:Probe", "{fail_setup: no GPU here}"))
        .await
        .unwrap_err();
    assert_mentions(
        &e,
        &[
            "`py` (probe:Probe)",
            "setup failed: RuntimeError: no GPU here",
        ],
    );
    let e = open_err(one_node("probe:Probe", "{reject: true}"))
        .await
        .unwrap_err();
    assert_mentions(&e, &["params failed: ValueError: reject is set"]);
    // Checked against the node's schema before any worker starts.
    let e = open_err(one_node("probe:Probe", "{colour: red}"))
        .await
        .unwrap_err();
    assert_mentions(&e, &["colour"]);
    let e = open_err(one_node("probe:Probe", "{worker: {window: 0}}"))
        .await
        .unwrap_err();
    assert_mentions(&e, &["window"]);
    let e = open_err(one_node("Ecco", "{}")).await.unwrap_err();
    assert_mentions(&e, &["unknown node type `Ecco`", "did you mean `Echo`"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_keep_working_when_one_worker_dies() {
    let rt = runtime();
    let mut doomed = open(&rt, &one_node("probe:Probe", NEVER)).await;
    let mut healthy = open(&rt, &one_node("probe:Probe", NEVER)).await;
    assert!(fails(&mut doomed, "kill").await.fatal);
    for i in 0..50 {
        healthy
            .send(RuntimeData::text(format!("{i}")))
            .await
            .unwrap();
        assert_eq!(text(&next_ok(&mut healthy).await), format!("{i}"));
    }
    healthy.close().await.unwrap();
}

/// The same, with the session closed right after: the replayed input's output is among what
/// the close returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_replayed_after_a_crash_is_not_lost_when_the_session_closes() {
    let rt = runtime();
    let s = open(&rt, &one_node("probe:Probe", "{worker: {backoff_ms: 10}}")).await;
    for input in ["crash_after:2", "after"] {
        s.send(RuntimeData::text(input)).await.unwrap();
    }
    let (rest, _) = s.close().await.unwrap();
    let texts: Vec<&str> = rest.iter().map(text).collect();
    assert_eq!(texts, ["0", "1", "after", "flushed"]);
}
