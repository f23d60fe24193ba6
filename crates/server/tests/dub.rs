//! Subtitle dubbing as a gRPC call, from a client that is not ours (Python grpcio): the track
//! comes back in WAV and FLAC, the same bytes the library makes in this process, on voices the
//! server loaded once; bad subtitles, a cue without a voice, a voice file and a missing token
//! get their statuses. Needs the models and the Python environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remotemedia_core::pool::ModelPool;
use remotemedia_server::ServerConfig;

const TOKEN: &str = "dub-client-token-0123";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Loads of the bundled voice's single-threaded copies (the dubbing schedulers').
fn voice_loads() -> u64 {
    ModelPool::global()
        .snapshot()
        .models
        .values()
        .filter(|m| m.name.contains("en_US-joe-medium") && m.config.contains("threads=1"))
        .map(|m| m.counters.loads)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_dubs_subtitles_on_the_servers_voices() {
    let mut config = ServerConfig::default();
    config.grpc.listen = ([127, 0, 0, 1], 0).into();
    config.http.enabled = false;
    config.auth.tokens = vec![TOKEN.into()];
    let server = remotemedia_server::start(config, Arc::new(remotemedia_runtime::runtime()))
        .await
        .expect("server starts");
    let out = std::env::temp_dir().join(format!("rm-dub-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "run ./scripts/setup-python.sh");
    let run = tokio::process::Command::new(python)
        .arg(root().join("crates/server/tests/py/dub_client.py"))
        .args(["--addr", &server.grpc_addr().to_string(), "--token", TOKEN])
        .arg("--out")
        .arg(&out)
        .env(
            "REMOTEMEDIA_STUBS_DIR",
            env!("CARGO_TARGET_TMPDIR").to_string() + "/grpc-stubs-dub",
        )
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client finishes within 2 minutes")
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");

    assert_eq!(r["wav"]["sample_rate"], 22_050);
    assert_eq!(r["wav"]["report"]["spoken"], 2);
    assert_eq!(r["flac"]["format"], "flac");
    assert!(
        r["wav"]["retimed"]
            .as_str()
            .unwrap()
            .contains("Guten Morgen.")
    );
    let status = |k: &str| {
        (
            r[k][0].as_str().unwrap().to_string(),
            r[k][1].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(status("no_token").0, "UNAUTHENTICATED");
    let (code, msg) = status("bad_time");
    assert!(
        code == "INVALID_ARGUMENT" && msg.contains("line 2"),
        "{code}: {msg}"
    );
    let (code, msg) = status("no_character");
    assert!(
        code == "INVALID_ARGUMENT" && msg.contains("cue 2 (line 6)") && msg.contains("`Bob`"),
        "{code}: {msg}"
    );
    assert_eq!(status("voice_file").0, "PERMISSION_DENIED");
    assert_eq!(status("bad_format").0, "INVALID_ARGUMENT");

    // The same bytes as the library makes here, on the voices the calls loaded.
    let loads = voice_loads();
    assert!(loads > 0);
    let srt = "1\n00:00:00,500 --> 00:00:02,500\nThe weather will be sunny this afternoon.\n\n2\n00:00:03,000 --> 00:00:04,500\n[de:] Guten Morgen.\n";
    let here = remotemedia_dub::dub(srt, &remotemedia_dub::DubOptions::default(), &|_, _| {})
        .await
        .unwrap();
    let wav = remotemedia_dub::encode(&here, remotemedia_dub::AudioFormat::Wav).unwrap();
    assert!(
        std::fs::read(out.join("dub.wav")).unwrap() == wav,
        "the call's track differs"
    );
    assert_eq!(voice_loads(), loads, "the voice was loaded again");
    let flac = remotemedia_audio::decode::read_all(&out.join("dub.flac")).unwrap();
    assert!(flac.samples.len() >= here.samples.len());
    std::fs::remove_dir_all(&out).unwrap();
    server.shutdown().await;
}
