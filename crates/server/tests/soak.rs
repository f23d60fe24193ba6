//! Soak: clients open, stream through and close sessions without pause — the speech pipeline
//! (Silero VAD, Moonshine) and a Python node on a worker process of its own per session — for
//! `SOAK_SECONDS` (default 300) with `SOAK_CLIENTS` (default 6) clients, while the process's RSS,
//! open file descriptors, threads, worker processes and shared-memory files are sampled. After
//! a warm-up quarter, RSS must stay within ±5 % of its middle; once the clients stop, the
//! descriptors, worker processes and shared-memory files are back where they were before.
//!
//! Slow: `#[ignore]`d, run by `./bench/soak.sh` (one hour) or
//! `SOAK_SECONDS=300 cargo test --workspace --features remotemedia-server/webrtc --test soak -- --ignored --nocapture`.
//! Alone in its test binary, so no other test's files or processes are counted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use remotemedia_server::proto;

/// One reading of the process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: usize,
    threads: usize,
    workers: usize,
    shm: usize,
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn sample(started: Instant) -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let me = std::process::id().to_string();
    // Processes whose parent is this one: the Python workers.
    let workers = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                .unwrap_or(false)
        })
        .count();
    let shm = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("iox2_"))
        .count();
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_mib: rss_kib / 1024.0,
        fds: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
        workers,
        shm,
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One session: open `pipeline`, send `seconds` of `audio` (mono, `rate`) at three times real
/// time, close, and read to the end. Returns the outputs received.
async fn one_session(
    c: &mut proto::pipeline_service_client::PipelineServiceClient<tonic::transport::Channel>,
    pipeline: &str,
    audio: &[f32],
    rate: u32,
    offset: usize,
) -> Result<usize, String> {
    let mut s = stream(c, tonic::Request::new)
        .await
        .map_err(|e| e.to_string())?;
    s.tx.send(open(pipeline)).await.map_err(|e| e.to_string())?;
    match next(&mut s.rx).await {
        Ok(Some(Msg::Ready(_))) => {}
        other => return Err(format!("{pipeline}: not ready: {other:?}")),
    }
    let frame = rate as usize / 50;
    let frames = 150 + offset % 100; // 3 to 5 s
    let tx = s.tx.clone();
    let audio = audio.to_vec();
    let send = tokio::spawn(async move {
        for i in 0..frames {
            let at = (offset * frame + i * frame) % (audio.len() - frame);
            if tx
                .send(common::audio(audio[at..at + frame].to_vec(), rate))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_micros(20_000 / 3)).await;
        }
    });
    let mut outputs = 0;
    let reading = async {
        loop {
            match next(&mut s.rx).await {
                Ok(Some(Msg::Output(_))) => outputs += 1,
                Ok(Some(Msg::Closed(_))) | Ok(None) => return Ok(()),
                Ok(Some(Msg::Error(e))) => return Err(format!("{pipeline}: {}", e.message)),
                Ok(Some(_)) => {}
                Err(status) => return Err(format!("{pipeline}: {status:?}")),
            }
        }
    };
    let close = async {
        let _ = send.await;
        drop(s.tx);
    };
    let (read, ()) = tokio::join!(reading, close);
    read.map(|()| outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: ./bench/soak.sh"]
async fn sessions_open_and_close_for_a_long_time_and_nothing_grows() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let clients: usize = std::env::var("SOAK_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let py = root().join("crates/python-executor/tests/py");
    let server = serve_with(runtime_with_python_path(&py), |c| {
        c.manifests.insert(
            "python".into(),
            "version: v1\nnodes:\n  - {id: py, type: \"probe:Probe\"}\n".into(),
        );
        c.pipelines
            .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    })
    .await;
    wait_ready(&server).await;
    let recording = remotemedia_audio::decode::read_all(&root().join("models/samples/beckett.wav"))
        .expect("the sample recording (./scripts/setup-models.sh)");
    let audio = Arc::new(recording.channel(0));
    let rate = recording.sample_rate;

    // One round of each pipeline first, so models and the first workers are in.
    let mut c = client(&server).await;
    for p in ["transcribe", "python"] {
        one_session(&mut c, p, &audio, rate, 0).await.unwrap();
    }
    assert_no_leaks(&server).await;
    let started = Instant::now();
    let before = sample(started);

    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (server_addr, stop, sessions, audio) = (
            server.grpc_addr(),
            Arc::clone(&stop),
            Arc::clone(&sessions),
            Arc::clone(&audio),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = proto::pipeline_service_client::PipelineServiceClient::connect(format!(
                "http://{server_addr}"
            ))
            .await
            .unwrap();
            let mut n = i;
            while !stop.load(Relaxed) {
                let pipeline = if n % 2 == 0 { "transcribe" } else { "python" };
                one_session(&mut c, pipeline, &audio, rate, n * 37).await?;
                sessions.fetch_add(1, Relaxed);
                n += clients;
            }
            Ok::<(), String>(())
        }));
    }
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = sample(started);
        eprintln!(
            "soak {:>6.0} s: {:>4} sessions, RSS {:>6.1} MiB, fds {:>4}, threads {:>3}, workers {:>2}, shm {:>3}",
            s.at_s,
            sessions.load(Relaxed),
            s.rss_mib,
            s.fds,
            s.threads,
            s.workers,
            s.shm
        );
        samples.push(s);
    }
    stop.store(true, Relaxed);
    for t in tasks {
        t.await
            .unwrap()
            .unwrap_or_else(|e| panic!("a session failed: {e}"));
    }
    assert_no_leaks(&server).await;
    // Workers exit and their files go as their sessions close; allow them a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = sample(started);
        if (s.workers <= before.workers && s.shm <= before.shm && s.fds <= before.fds)
            || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settled = &samples[samples.len() / 4..];
    let lo = settled.iter().map(|s| s.rss_mib).fold(f64::MAX, f64::min);
    let hi = settled.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let mid = (lo + hi) / 2.0;
    eprintln!(
        "soak: {} sessions in {:.0} s; RSS after warm-up {lo:.1}–{hi:.1} MiB (±{:.1} %); \
         before {before:?}; after {after:?}",
        sessions.load(Relaxed),
        started.elapsed().as_secs_f64(),
        (hi - mid) / mid * 100.0
    );
    assert!(
        hi <= mid * 1.05,
        "RSS grew: {lo:.1} to {hi:.1} MiB after warm-up"
    );
    assert!(after.workers <= before.workers, "{before:?} → {after:?}");
    assert!(after.shm <= before.shm, "{before:?} → {after:?}");
    assert!(after.fds <= before.fds, "{before:?} → {after:?}");
    server.shutdown().await;
}
