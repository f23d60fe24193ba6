//! Chaos under load (tests/common/chaos.rs), bounded: three live streams of the recording
//! through the speech pipeline, alone and then while Python workers are SIGKILLed under
//! sessions of a Python pipeline, clients reset their connections mid-utterance, silent
//! connections and streams wait, 10 000 sessions open and close, and oversized and truncated
//! messages arrive. Every victim gets its words and is told of no error; every affected client
//! gets a status (nothing goes unanswered); afterwards no session, task, worker process,
//! shared-memory file or descriptor is left. The victims' latency in both phases is printed;
//! the timed comparison is `bench/chaos.sh`, which runs this test in a release build with more
//! victims (`CHAOS_VICTIMS`, `CHAOS_SECONDS`). Alone in its test binary, so no other test's
//! processes are counted.

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn shm_files() -> usize {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("iox2_"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_are_each_answered_and_leave_nothing_behind() {
    const MAX_MESSAGE: usize = 64 << 10;
    let server = serve(|c| {
        c.pipelines
            .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
        c.manifests.insert(
            "level".into(),
            "version: v1\nnodes:\n  - {id: level, type: AudioLevel}\n".into(),
        );
        c.limits.max_message_bytes = MAX_MESSAGE;
        // Streams that never open give up after this.
        c.limits.idle_timeout_ms = 3_000;
        // The CPU budget counts the whole process, and here that is this test's load too.
        c.capacity.max_cpu = 0.0;
    })
    .await;
    wait_ready(&server).await;
    let samples = remotemedia_audio::decode::read_all(&root().join("models/samples/beckett.wav"))
        .expect("the sample recording (./scripts/setup-models.sh)");
    assert_eq!(samples.sample_rate, 16_000);
    let audio = Arc::new(samples.channel(0));
    let target = chaos::Target {
        grpc: server.grpc_addr(),
        server_pid: std::process::id(),
        speech: "transcribe".into(),
        python: "level".into(),
        light: "gain".into(),
        max_message_bytes: MAX_MESSAGE,
    };
    let (fds_before, shm_before) = (fds(), shm_files());
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let settings = chaos::Settings {
        victims: env("CHAOS_VICTIMS", 3),
        seconds: env("CHAOS_SECONDS", 20) as f64,
        cycles: 10_000,
        kill_every: Duration::from_millis(500),
    };
    let report = chaos::run(&target, audio, &settings).await;
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    for phase in [&report.calm, &report.chaos] {
        assert!(phase.failures.is_empty(), "{:?}", phase.failures);
        assert_eq!(phase.texts.len(), settings.victims);
        for text in &phase.texts {
            for words in ["ever tried", "try again"] {
                assert!(text.contains(words), "`{words}` missing from {text:?}");
            }
        }
    }
    assert!(report.workers_killed >= 5, "{report:?}");
    let python = &report.python_sessions;
    let told = python.get("told: node error").copied().unwrap_or(0)
        + python
            .iter()
            .filter(|(k, _)| k.starts_with("status"))
            .map(|(_, v)| v)
            .sum::<usize>();
    assert!(told >= 1, "no Python session was hit: {python:?}");
    for outcome in python.keys() {
        assert!(
            outcome == "closed" || outcome == "told: node error" || outcome.starts_with("status"),
            "a Python session ended with `{outcome}`: {python:?}"
        );
    }
    assert!(report.resets >= 10, "{report:?}");
    assert_eq!(
        report.silent,
        [
            ("connection closed by the server".to_string(), 4),
            ("stream: status DeadlineExceeded".to_string(), 4)
        ]
        .into(),
    );
    // Every cycle opened and closed, or was refused by admission control while the machine
    // ran behind (the server's own lag target, under this test's load: 0–15 % of them in
    // runs here, depending on what else the machine did), and most opened.
    let cycles = &report.open_close;
    assert_eq!(cycles.values().sum::<usize>(), 10_000);
    assert!(
        cycles.get("closed").copied().unwrap_or(0) >= 5_000,
        "{cycles:?}"
    );
    for outcome in cycles.keys() {
        assert!(
            outcome == "closed" || outcome == "status ResourceExhausted",
            "{cycles:?}"
        );
    }
    // A truncated message is answered INTERNAL; admission control may refuse its stream
    // before the message is read, as it refuses open/close cycles while the machine runs behind.
    let frames = &report.bad_frames;
    for outcome in frames.keys() {
        assert!(
            outcome == "oversized: status ResourceExhausted"
                || outcome == "truncated: status Internal"
                || outcome == "truncated: status ResourceExhausted",
            "{outcome}: {frames:?}"
        );
    }
    let truncated_internal = frames.get("truncated: status Internal").copied();
    let oversized = frames.get("oversized: status ResourceExhausted").copied();
    assert!(
        truncated_internal.unwrap_or(0) * 10 >= oversized.unwrap_or(0) * 9 && oversized >= Some(1),
        "{frames:?}"
    );

    // Nothing left: sessions and tasks, worker processes, shared memory, descriptors.
    assert_no_leaks(&server).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (workers, shm, fds) = (
            chaos::python_children(std::process::id()).len(),
            shm_files(),
            fds(),
        );
        if workers == 0 && shm <= shm_before && fds <= fds_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left after 20 s: {workers} workers, shm files {shm_before} → {shm}, fds {fds_before} → {fds}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}
