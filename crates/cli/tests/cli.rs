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
    let d = remotemedia_audio::wav::read_wav(&output).unwrap();
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
    assert!(help.contains("a `.wav` file is cut into audio frames"));
    assert!(help.contains("--frame-ms"));
}
