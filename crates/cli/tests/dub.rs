//! `remotemedia dub` as a user runs it: bad files and voices refused before anything is
//! spoken, a cue that cannot be spoken fails the job without leaving a file, and a dubbed
//! track that the project's own speech recognition turns back into the subtitles' words.
//!
//! Needs `./scripts/setup-system.sh` and `./scripts/setup-models.sh` (fails, never skips).

#[path = "../../speech/tests/common/wer.rs"]
mod wer;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remotemedia"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rm-dub-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The files in `d`, by name.
fn files(d: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn help_explains_the_job() {
    let o = run(&["dub", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--workers",
        "--voice",
        "--character",
        "--max-speedup",
        "--report",
        "--subs-out",
        "--mix-with",
        "--duck-db",
        "--cache",
        "[de:Alice]",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn bad_subtitles_and_missing_voices_are_refused_before_anything_is_spoken() {
    let d = dir("refused");
    let out = d.join("out.wav");
    let bad = d.join("bad.srt");
    std::fs::write(
        &bad,
        "1\n00:00:01,000 --> 00:00:02,000\nHello.\n\n2\n00:00:03,000 --> 00:00:0x,000\nAgain.\n",
    )
    .unwrap();
    let o = run(&["dub", s(&bad), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad.srt") && e.contains("line 6"), "{e}");

    let vtt = d.join("cast.vtt");
    std::fs::write(
        &vtt,
        "WEBVTT\n\n00:00.500 --> 00:02.000\nHello.\n\n00:03.000 --> 00:04.000\n[Bob] Hi!\n",
    )
    .unwrap();
    let started = Instant::now();
    let o = run(&[
        "dub",
        s(&vtt),
        "-o",
        s(&out),
        "--character",
        "Alice=espeak:en-us+f3",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("cue 2 (line 6)") && e.contains("`Bob`"), "{e}");
    assert!(
        e.contains("character Alice → espeak:en-us+f3"),
        "the voices available: {e}"
    );
    let o = run(&[
        "dub",
        s(&vtt),
        "-o",
        s(&out),
        "--lang",
        "xx-nope",
        "--character",
        "Bob=espeak:en",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("espeak:xx-nope") && stderr(&o).contains("cue 1 (line 3)"),
        "{}",
        stderr(&o)
    );
    // Refused at once: no voice was loaded, nothing spoken, nothing written.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(files(&d), ["bad.srt", "cast.vtt"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_cue_that_cannot_be_spoken_fails_the_job_and_leaves_no_file() {
    let d = dir("unspeakable");
    let srt = d.join("emoji.srt");
    std::fs::write(
        &srt,
        "1\n00:00:00,500 --> 00:00:02,000\nHello there.\n\n2\n00:00:03,000 --> 00:00:04,000\n🎉🎉🎉\n",
    )
    .unwrap();
    let out = d.join("out.wav");
    let o = run(&["dub", s(&srt), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("cue 2 (line 6) could not be spoken"), "{e}");
    assert_eq!(files(&d), ["emoji.srt"], "a partial output was left");
    std::fs::remove_dir_all(&d).unwrap();
}

const SENTENCES: &[&str] = &[
    "The weather will be sunny this afternoon.",
    "Please send the report to the team before Friday.",
    "I would like a cup of coffee with milk.",
    "The train to the city leaves the station every hour.",
];

#[test]
fn the_dubbed_track_is_understood_again() {
    let d = dir("round-trip");
    let mut srt = String::new();
    for (i, text) in SENTENCES.iter().enumerate() {
        let start = 1 + 4 * i;
        srt.push_str(&format!(
            "{}\n00:00:{start:02},000 --> 00:00:{:02},500\n{text}\n\n",
            i + 1,
            start + 3
        ));
    }
    let subs = d.join("talk.srt");
    std::fs::write(&subs, &srt).unwrap();
    let (out, report, retimed) = (
        d.join("talk.flac"),
        d.join("report.json"),
        d.join("retimed.vtt"),
    );
    let o = run(&[
        "dub",
        s(&subs),
        "-o",
        s(&out),
        "--report",
        s(&report),
        "--subs-out",
        s(&retimed),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["totals"]["spoken"], 4);
    assert_eq!(report["cues"][1]["status"], "fits");
    let retimed = std::fs::read_to_string(&retimed).unwrap();
    assert!(
        retimed.starts_with("WEBVTT") && retimed.matches(" --> ").count() == 4,
        "{retimed}"
    );

    let heard = run(&["run", "-i", s(&out)]);
    assert!(heard.status.success(), "{}", stderr(&heard));
    let text: Vec<String> = String::from_utf8_lossy(&heard.stdout)
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, t)| t.to_string()))
        .collect();
    let (reference, hypothesis) = (SENTENCES.join(" "), text.join(" "));
    let wer = wer::wer(&reference, &hypothesis);
    eprintln!("dub round trip WER {:.1} %: {hypothesis}", wer * 100.0);
    assert!(wer <= 0.10, "WER {:.1} %: {hypothesis}", wer * 100.0);
    std::fs::remove_dir_all(&d).unwrap();
}
