//! The `remotemedia` binary as a user runs it: exit codes, messages and outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remotemedia"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn run_prints_text_results() {
    let o = run(&[
        "run",
        repo("examples/uppercase.yaml").to_str().unwrap(),
        "--input",
        repo("examples/lines.txt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "HELLO WORLD!\nREMOTE MEDIA!\nRUST PIPELINES!\n");
}

#[test]
fn run_reads_stdin_and_prints_json() {
    use std::io::Write;
    let mut child = bin()
        .args([
            "run",
            repo("examples/uppercase.yaml").to_str().unwrap(),
            "-f",
            "json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["text"], "ABC!");
    assert_eq!(v["source"], "shout");
    assert_eq!(v["type"], "text");
}

#[test]
fn run_processes_wav_to_wav() {
    let input = temp("in.wav");
    let output = temp("out.wav");
    let samples: Vec<f32> = (0..16_000)
        .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
        .collect();
    let mut sink = remotemedia_audio::wav::WavSink::create(&input).unwrap();
    sink.write(&remotemedia_core::AudioFrame::new(samples, 16_000, 1))
        .unwrap();
    sink.finish().unwrap();
    let metrics = temp("metrics.json");
    let o = run(&[
        "run",
        repo("examples/gain.yaml").to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = remotemedia_audio::decode::read_all(&output).unwrap();
    assert_eq!((d.sample_rate, d.samples.len()), (16_000, 16_000));
    assert!((d.samples[0] - 0.25).abs() < 0.01, "{}", d.samples[0]);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    // One second in 20 ms frames.
    assert_eq!(m["node_types"]["AudioGain"]["processed"], 50);
    assert_eq!(m["sessions_closed"], 1);
}

#[test]
fn validate_reports_line_and_column_with_exit_code_2() {
    let bad = temp("bad.yaml");
    std::fs::write(
        &bad,
        "version: v1\nnodes:\n  - id: a\n    type: TextTransfrom\n",
    )
    .unwrap();
    let o = run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("bad.yaml:4:5: nodes[0].type: node `a`: unknown node type `TextTransfrom` (did you mean `TextTransform`?)"), "{err}");
    let good = run(&[
        "validate",
        repo("examples/uppercase.yaml").to_str().unwrap(),
    ]);
    assert!(good.status.success());
    assert!(stdout(&good).ends_with("valid (2 nodes, 1 connections)\n"));
}

#[test]
fn a_node_failing_at_run_time_exits_1_naming_it() {
    let m = temp("fails.yaml");
    std::fs::write(
        &m,
        "version: v1\nnodes:\n  - {id: any, type: PassThrough}\n  - {id: gain, type: AudioGain}\nconnections:\n  - {from: any, to: gain}\n",
    )
    .unwrap();
    let o = run(&[
        "run",
        m.to_str().unwrap(),
        "-i",
        repo("examples/lines.txt").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("error: node `gain` (AudioGain): AudioGain cannot process text data"),
        "{}",
        stderr(&o)
    );
}

/// A node failure that loses an input (the session goes on) still fails the run, unless the
/// manifest tolerates it.
#[test]
fn a_run_that_lost_inputs_exits_1_unless_the_manifest_tolerates_it() {
    let input = temp("reject.txt");
    std::fs::write(&input, "hello\nreject\nbye\n").unwrap();
    for (config, code) in [("", 1), ("config: {tolerate_failures: true}\n", 0)] {
        let m = temp("rejects.yaml");
        std::fs::write(
            &m,
            format!("version: v1\n{config}nodes:\n  - {{id: py, type: \"probe:Probe\"}}\n"),
        )
        .unwrap();
        let o = bin()
            .args(["run", m.to_str().unwrap(), "-i", input.to_str().unwrap()])
            .env("PYTHONPATH", repo("crates/python-executor/tests/py"))
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{config}: {err}");
        assert_eq!(stdout(&o), "hello\nbye\nflushed\n");
        assert!(err.contains("asked to reject this input"), "{err}");
        assert!(err.contains("1 node failure(s)"), "{err}");
    }
}

#[test]
fn nodes_and_schema_are_machine_readable() {
    let o = run(&["nodes", "--json"]);
    assert!(o.status.success());
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let gain = nodes.iter().find(|n| n["type"] == "AudioGain").unwrap();
    assert_eq!(gain["inputs"][0]["media"][0], "audio");
    assert_eq!(
        gain["params_schema"]["properties"]["gain_db"]["maximum"],
        48.0
    );
    assert_eq!(gain["executors"][0], "native");

    let o = run(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(schema, remotemedia_core::manifest::json_schema());
}

#[test]
fn help_explains_the_commands() {
    let o = run(&["run", "--help"]);
    let help = stdout(&o);
    assert!(help.contains("WAV, FLAC, MP3 or Ogg Vorbis"), "{help}");
    assert!(
        help.contains("cut into audio frames of\n               --frame-ms"),
        "{help}"
    );
    assert!(help.contains("--pcm s16le|s32le|f32le --rate HZ [--channels N]"));
    assert!(help.contains("--realtime sends each frame when a live source would have captured it"));
    assert!(help.contains("exits\nwith code 2"));
}

fn audio(name: &str) -> PathBuf {
    repo("crates/audio/tests/data").join(name)
}

/// Runs `examples/gain.yaml` (-6 dB) over `input` into a fresh WAV and decodes the result.
fn gain_to_wav(input: &Path, extra: &[&str], out: &str) -> (Output, PathBuf) {
    let output = temp(out);
    let o = bin()
        .arg("run")
        .arg(repo("examples/gain.yaml"))
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(&output)
        .args(extra)
        .output()
        .unwrap();
    (o, output)
}

#[test]
fn flac_in_wav_out_keeps_length_rate_and_channels() {
    let (o, out) = gain_to_wav(&audio("tone_440_660_44100_stereo.flac"), &[], "flac.wav");
    assert!(o.status.success(), "{}", stderr(&o));
    let d = remotemedia_audio::decode::read_all(&out).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (44_100, 2, 44_100)
    );
    // 0.5 peak at -6 dB.
    let peak = d.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.25).abs() < 0.01, "{peak}");
}

#[test]
fn every_audio_format_runs_through_a_pipeline() {
    for (name, rate, channels) in [
        ("tone_440_22050_mono.wav", 22_050, 1),
        ("tone_440_660_44100_stereo.mp3", 44_100, 2),
        ("tone_440_22050_mono.ogg", 22_050, 1),
        ("tone_440_660_48000_stereo.oga", 48_000, 2),
    ] {
        let (o, out) = gain_to_wav(&audio(name), &["--frame-ms", "10"], &format!("{name}.wav"));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let d = remotemedia_audio::decode::read_all(&out).unwrap();
        assert_eq!((d.sample_rate, d.channels), (rate, channels), "{name}");
        assert_eq!(
            d.samples.len(),
            rate as usize / 2 * usize::from(channels),
            "{name}"
        );
    }
}

#[test]
fn audio_is_recognised_by_content_when_the_extension_says_nothing() {
    let clip = temp("clip.bin");
    std::fs::copy(audio("tone_440_660_44100_stereo.flac"), &clip).unwrap();
    let (o, out) = gain_to_wav(&clip, &[], "clip.wav");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        remotemedia_audio::decode::read_all(&out)
            .unwrap()
            .samples
            .len(),
        44_100
    );
    // And a text file without an extension is still text.
    let notes = temp("notes");
    std::fs::write(&notes, "quiet please\n").unwrap();
    let o = run(&[
        "run",
        repo("examples/uppercase.yaml").to_str().unwrap(),
        "-i",
        notes.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "QUIET PLEASE!\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn realtime_takes_at_least_the_playing_time() {
    let start = std::time::Instant::now();
    let (o, out) = gain_to_wav(&audio("tone_440_22050_mono.wav"), &["--realtime"], "rt.wav");
    let took = start.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    // 0.5 s of audio; only a lower bound, machines are noisy.
    assert!(took >= std::time::Duration::from_millis(450), "{took:?}");
    assert_eq!(
        remotemedia_audio::decode::read_all(&out)
            .unwrap()
            .samples
            .len(),
        11_025
    );
}

fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = input.to_vec();
    // Write from another thread so a full pipe cannot deadlock against our reads.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

#[test]
fn raw_pcm_on_stdin_is_audio() {
    // 0.25 s of 16 kHz stereo s16le: left +0.5, right -0.5.
    let mut pcm = Vec::new();
    for _ in 0..4000 {
        pcm.extend_from_slice(&16_384i16.to_le_bytes());
        pcm.extend_from_slice(&(-16_384i16).to_le_bytes());
    }
    let out = temp("pcm.wav");
    let o = run_with_stdin(
        &[
            "run",
            repo("examples/gain.yaml").to_str().unwrap(),
            "--pcm",
            "s16le",
            "--rate",
            "16000",
            "--channels",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
        &pcm,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d = remotemedia_audio::decode::read_all(&out).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (16_000, 2, 8_000)
    );
    assert!((d.samples[0] - 0.25).abs() < 0.01 && (d.samples[1] + 0.25).abs() < 0.01);

    // f32le from the same pipe.
    let floats: Vec<u8> = (0..1600).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    let o = run_with_stdin(
        &[
            "run",
            repo("examples/gain.yaml").to_str().unwrap(),
            "--pcm",
            "f32le",
            "--rate",
            "8000",
            "-o",
            out.to_str().unwrap(),
        ],
        &floats,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d = remotemedia_audio::decode::read_all(&out).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (8_000, 1, 1_600)
    );
}

#[test]
fn bad_audio_input_exits_2_naming_the_file_and_the_problem() {
    for (name, problem) in [
        (
            "corrupt.flac",
            "corrupt audio data: the file ends unexpectedly",
        ),
        (
            "garbage_frames.flac",
            "corrupt audio data: no audio could be decoded from it",
        ),
        ("not_audio.mp3", "not a supported audio format"),
        ("empty.wav", "zero-length audio"),
    ] {
        let path = audio(name);
        let (o, _) = gain_to_wav(&path, &[], "bad.wav");
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        let err = stderr(&o);
        let expected = format!("error: cannot read input: {}: {problem}", path.display());
        assert!(err.starts_with(&expected), "{name}: {err}");
        // One clear line: no panic, no library log noise.
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
}

#[test]
fn bad_pcm_input_exits_2() {
    let gain = repo("examples/gain.yaml");
    let gain = gain.to_str().unwrap();
    let o = run_with_stdin(&["run", gain, "--pcm", "s16le", "--rate", "0"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("error: cannot read input: stdin: sample rate 0 Hz is outside the supported 1..=384000 Hz"), "{}", stderr(&o));
    let o = run_with_stdin(
        &[
            "run",
            gain,
            "--pcm",
            "s16le",
            "--rate",
            "16000",
            "--channels",
            "2",
        ],
        b"abc",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("stdin: input ends inside a sample frame (3 stray bytes)"),
        "{}",
        stderr(&o)
    );
    let o = run_with_stdin(&["run", gain, "--pcm", "s16le", "--rate", "16000"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("stdin: zero-length audio"),
        "{}",
        stderr(&o)
    );
    // --pcm without --rate is a usage error.
    let o = run_with_stdin(&["run", gain, "--pcm", "s16le"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--rate <RATE>"), "{}", stderr(&o));
}

/// The main job: `remotemedia run` with no manifest transcribes the bundled recording.
#[test]
fn run_without_a_manifest_transcribes_the_bundled_sample() {
    let o = run(&["run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        // `[00:01.06 → 00:02.40] words`
        let (times, words) = line.split_once("] ").unwrap_or_else(|| panic!("{line}"));
        assert!(times.starts_with('[') && times.contains(" → "), "{line}");
        assert!(!words.trim().is_empty(), "{line}");
    }
    let all = text.to_lowercase();
    for phrase in ["best of times", "worst of times", "age of wisdom"] {
        assert!(all.contains(phrase), "`{phrase}` missing from:\n{text}");
    }
    assert!(
        !stderr(&o).contains("elapsed"),
        "no progress bar off a terminal"
    );
}

/// examples/transcribe_remote.yaml against the server of examples/remote_asr.toml, as their
/// comments say: the transcript of examples/transcribe.yaml; with that server gone, the manifest
/// does not load, naming it. (Uses the examples' fixed port, 50061.)
#[test]
fn the_remote_example_transcribes_on_the_example_server() {
    let mut server = bin()
        .args(["serve", "--config"])
        .arg(repo("examples/remote_asr.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect("127.0.0.1:50061").is_err() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the example server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let sample = repo("models/samples/two_cities.wav");
    let sample = sample.to_str().unwrap();
    let manifest = |name: &str| repo(&format!("examples/{name}.yaml"));
    let transcribe = |name: &str| {
        bin()
            .arg("run")
            .arg(manifest(name))
            .args(["-i", sample])
            .output()
            .unwrap()
    };
    let remote = transcribe("transcribe_remote");
    let local = transcribe("transcribe");
    let _ = server.kill();
    let _ = server.wait();
    assert!(remote.status.success(), "{}", stderr(&remote));
    assert!(
        stdout(&local).contains("best of times"),
        "{}",
        stdout(&local)
    );
    assert_eq!(stdout(&remote), stdout(&local));

    let down = bin()
        .arg("validate")
        .arg(manifest("transcribe_remote"))
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(
        stderr(&down).contains("nodes[4].remote")
            && stderr(&down).contains("cannot reach http://127.0.0.1:50061"),
        "{}",
        stderr(&down)
    );
}

#[test]
fn subtitles_come_as_srt_and_webvtt() {
    let sample = remotemedia_speech::models::models_dir().join("samples/beckett.wav");
    let sample = sample.to_str().unwrap();
    let o = run(&["run", "-i", sample, "--format", "srt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let srt = stdout(&o);
    assert!(srt.starts_with("1\n00:00:0"), "{srt}");
    assert!(srt.contains(" --> ") && srt.contains("\n\n2\n"), "{srt}");
    let o = run(&["run", "-i", sample, "--format", "vtt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let vtt = stdout(&o);
    assert!(vtt.starts_with("WEBVTT\n\n00:00:0"), "{vtt}");
    assert!(vtt.to_lowercase().contains("ever tried"), "{vtt}");
}

/// The Python environment of the test command (scripts/setup-python.sh).
fn venv_python() -> PathBuf {
    let p = repo(".venv/bin/python");
    assert!(p.exists(), "run ./scripts/setup-python.sh first");
    p
}

/// `remotemedia serve` on loopback ports with the `gain` pipeline and `env`, ready: the child,
/// its stderr after the first line, and the gRPC and HTTP addresses it printed.
fn spawn_serve(
    env: &[(&str, String)],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    String,
    String,
) {
    use std::io::BufRead;
    let mut server = bin()
        .args([
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--pipeline",
        ])
        .arg(format!("gain={}", repo("examples/gain.yaml").display()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    // serving gRPC on 127.0.0.1:P, metrics, health and the browser page on http://127.0.0.1:Q/;
    // Ctrl-C stops
    let grpc = line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(',')
        .to_string();
    let http = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    while !http_get(&http, "/readyz").starts_with("HTTP/1.1 200") {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, err, grpc, http)
}

fn http_get(http: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(http).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text
}

fn sigterm(child: &std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// SIGTERM drains: not ready at once, the stream in progress finishes, then the server exits
/// 0. A second SIGTERM stops a drain at once, ending the streams left with UNAVAILABLE.
#[test]
fn serve_drains_on_sigterm_and_stops_at_once_on_a_second() {
    use std::io::Read;
    let stream = |grpc: &str| {
        Command::new(venv_python())
            .arg(repo("examples/grpc_client/client.py"))
            .args(["--addr", grpc, "--pipeline", "gain", "--speed", "2"])
            .arg(repo("models/samples/beckett.wav"))
            .env("REMOTEMEDIA_STUBS_DIR", temp("stubs"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_streaming = |http: &str| {
        while !http_get(http, "/metrics").contains("remotemedia_sessions_active 1") {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    let (mut server, mut err, grpc, http) = spawn_serve(&[]);
    let client = stream(&grpc);
    wait_streaming(&http);
    sigterm(&server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(http_get(&http, "/readyz").starts_with("HTTP/1.1 503"));
    let done = client.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(done.status.success() && said.contains("closed"), "{said}");
    let status = server.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(
        rest.contains("draining") && !rest.contains("stopping now"),
        "{rest}"
    );

    let (mut server, mut err, grpc, http) = spawn_serve(&[]);
    let client = stream(&grpc);
    wait_streaming(&http);
    sigterm(&server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stopped = std::time::Instant::now();
    sigterm(&server);
    let status = server.wait().unwrap();
    assert!(stopped.elapsed() < std::time::Duration::from_secs(5));
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("stopping now"), "{rest}");
    let cut = client.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&cut.stderr).into_owned();
    assert!(
        !cut.status.success() && said.contains("UNAVAILABLE"),
        "{said}"
    );
}

#[test]
fn serve_takes_tokens_from_the_environment_and_stops_cleanly_on_sigterm() {
    use std::io::Read;
    let token = "env-token-0123456789abcdef";
    let (mut server, mut err, grpc, http) = spawn_serve(&[(
        "REMOTEMEDIA_TOKENS",
        format!("other-token-0123456789, {token}"),
    )]);
    let get = |path: &str| http_get(&http, path);
    assert!(get("/v1/pipelines").contains("\"gain\""));

    let wav = repo("models/samples/beckett.wav");
    let client = |token: &str| {
        Command::new(venv_python())
            .arg(repo("examples/grpc_client/client.py"))
            .args(["--addr", &grpc, "--pipeline", "gain", "--speed", "3"])
            .arg(&wav)
            .env("REMOTEMEDIA_TOKEN", token)
            .env("REMOTEMEDIA_STUBS_DIR", temp("stubs"))
            .output()
            .unwrap()
    };
    let refused = client("not-a-token-of-this-server");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("UNAUTHENTICATED"),
        "{}",
        stderr(&refused)
    );
    let ok = client(token);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stderr(&ok).contains("closed"), "{}", stderr(&ok));

    sigterm(&server);
    let status = server.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}

#[test]
fn serve_refuses_to_expose_itself_without_tokens() {
    let o = run(&["serve", "--grpc", "0.0.0.0:0", "--no-http"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("refusing to listen on a non-loopback address"),
        "{}",
        stderr(&o)
    );
    let help = stdout(&run(&["serve", "--help"]));
    assert!(
        help.contains("examples/server.toml") && help.contains("REMOTEMEDIA_TOKENS"),
        "{help}"
    );
}

/// A spoken question is answered: recognised, answered by the LLM, and spoken into the output.
#[test]
fn the_voice_agent_answers_a_spoken_question() {
    let question = temp("question.txt");
    std::fs::write(&question, "Tell me about the moon.\n").unwrap();
    let question_wav = temp("question.wav");
    let o = run(&[
        "run",
        repo("examples/tts.yaml").to_str().unwrap(),
        "-i",
        question.to_str().unwrap(),
        "-o",
        question_wav.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The example, with the sampling fixed so the answer is the same every run.
    let manifest = std::fs::read_to_string(repo("examples/voice_agent.yaml")).unwrap();
    assert!(manifest.contains("temperature: 0.3"));
    let fixed = temp("voice_agent.yaml");
    std::fs::write(
        &fixed,
        manifest.replace("temperature: 0.3", "temperature: 0.0\n      seed: 1"),
    )
    .unwrap();
    let reply = temp("reply.wav");
    let o = run(&[
        "run",
        fixed.to_str().unwrap(),
        "-i",
        question_wav.to_str().unwrap(),
        "-o",
        reply.to_str().unwrap(),
        "-f",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said = |source: &str| -> String {
        lines
            .iter()
            .filter(|v| v["source"] == source)
            .map(|v| v["text"].as_str().unwrap_or_default().to_lowercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (asked, answered) = (said("question"), said("reply"));
    assert!(asked.contains("moon"), "recognised {asked:?}");
    assert!(
        answered.contains("moon"),
        "answered {answered:?} to {asked:?}"
    );
    let audio = remotemedia_audio::decode::read_all(&reply).unwrap();
    assert!(
        audio.samples.len() as f64 / f64::from(audio.sample_rate) > 1.0,
        "{} samples of spoken answer",
        audio.samples.len()
    );
}
