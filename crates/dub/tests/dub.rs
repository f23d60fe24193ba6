//! Dubbing jobs end to end on the real voices (the bundled Piper voice and espeak-ng): the
//! track is the same for any number of workers, speech sits in its slot, overlong speech is
//! sped up to the cap and its overflow reported, voices load once, the cache spares re-runs,
//! the original is ducked under speech, and the speech is understood again by the project's
//! own speech recognition.
//!
//! Needs `./scripts/setup-system.sh` and `./scripts/setup-models.sh` (fails, never skips).

use std::time::Duration;

use remotemedia_core::pool::ModelPool;
use remotemedia_dub::{AudioFormat, DubOptions, Dubbed, VoiceSpec, dub, encode};

fn no_progress(_: usize, _: usize) {}

async fn run(subs: &str, options: &DubOptions) -> Dubbed {
    dub(subs, options, &no_progress)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn options(workers: usize) -> DubOptions {
    DubOptions {
        workers,
        ..DubOptions::default()
    }
}

const SRT: &str = "1
00:00:00,500 --> 00:00:02,500
The weather will be sunny this afternoon.

2
00:00:03,000 --> 00:00:05,000
[de:] Guten Morgen.

3
00:00:05,600 --> 00:00:08,000
[Alice] Please send the report before Friday.

4
00:00:08,500 --> 00:00:11,000
I would like a cup of coffee.

5
00:00:11,500 --> 00:00:12,000


6
00:00:12,500 --> 00:00:15,000
The train leaves every hour.
";

fn with_alice(workers: usize) -> DubOptions {
    DubOptions {
        characters: vec![("Alice".into(), VoiceSpec::Espeak("en-us+f3".into()))],
        ..options(workers)
    }
}

/// Root mean square of `samples[from..to]` (clamped to the track).
fn rms(samples: &[f32], from: usize, to: usize) -> f32 {
    let s = &samples[from.min(samples.len())..to.min(samples.len())];
    (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_track_is_the_same_for_any_number_of_workers() {
    let one = encode(&run(SRT, &with_alice(1)).await, AudioFormat::Wav).unwrap();
    for workers in [2, 4] {
        let many = encode(&run(SRT, &with_alice(workers)).await, AudioFormat::Wav).unwrap();
        assert!(
            many == one,
            "{workers} workers gave another track than one worker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_starts_at_its_cue_and_the_report_says_what_happened() {
    let d = run(SRT, &with_alice(2)).await;
    let rate = d.sample_rate as usize;
    assert_eq!((d.channels, rate), (1, 22_050));
    // The track ends at the last cue's end.
    assert_eq!(d.samples.len(), 15 * rate);
    let r = &d.report;
    assert_eq!(
        (r.totals.cues, r.totals.spoken, r.totals.skipped),
        (6, 5, 1)
    );
    assert_eq!(r.cues[4].status, "skipped: empty");
    assert!(
        r.warnings.iter().any(|w| w.contains("cue 5 (line 18)")),
        "{:?}",
        r.warnings
    );
    assert_eq!(r.cues[1].voice, "espeak:de");
    assert_eq!(r.cues[2].voice, "espeak:en-us+f3");
    assert_eq!(r.cues[0].voice, "piper");
    for c in r.cues.iter().filter(|c| c.status == "fits") {
        // Where the sound starts: the first 10 ms window loud enough to be speech.
        let window = rate / 100;
        let from = (c.start_ms as usize * rate / 1000).saturating_sub(rate / 5);
        let onset = (from..d.samples.len())
            .step_by(window / 2)
            .find(|&i| rms(&d.samples, i, i + window) > 0.01)
            .unwrap();
        let onset_ms = onset as f64 * 1000.0 / rate as f64;
        assert!(
            (onset_ms - c.start_ms as f64).abs() <= 50.0,
            "cue {}: speech at {onset_ms:.0} ms, cue at {} ms",
            c.number,
            c.start_ms
        );
        assert_eq!((c.speed, c.delay_ms, c.overflow_ms), (1.0, 0, 0));
        // Silence before the cue starts.
        let before = c.start_ms as usize * rate / 1000;
        assert!(rms(&d.samples, before - rate / 10, before - rate / 50) < 0.005);
    }
    // The re-timed cues are where the speech is.
    assert_eq!(d.retimed.len(), 5);
    assert_eq!(
        d.retimed[0].text,
        "The weather will be sunny this afternoon."
    );
    assert!(d.retimed[0].start >= Duration::from_millis(490));
    assert!(d.retimed[0].end < Duration::from_millis(3_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_too_long_for_its_slot_is_sped_up_to_the_cap_and_its_overflow_reported() {
    let srt = "1
00:00:01,000 --> 00:00:02,000
This sentence is far too long to be spoken in one short second, even quickly.

2
00:00:02,000 --> 00:00:06,000
Short.

3
00:00:06,000 --> 00:00:07,000
Yes.
";
    let d = run(srt, &options(2)).await;
    let c = &d.report.cues;
    assert_eq!(c[0].speed, 1.2, "{:?}", c[0]);
    assert_eq!(c[0].status, "overflows");
    assert!(c[0].natural_ms > 3_000, "{:?}", c[0]);
    // Spoken 1.2× faster: about natural / 1.2 (durations are whole frames).
    let ratio = c[0].natural_ms as f64 / c[0].spoken_ms as f64;
    assert!((1.1..1.3).contains(&ratio), "{ratio}");
    assert_eq!(c[0].overflow_ms, c[0].spoken_ms - 1_000);
    // The next cue waits for it, and the silence after it takes up the delay.
    assert_eq!(c[1].at_ms, c[0].at_ms + c[0].spoken_ms);
    assert_eq!(c[1].delay_ms, c[1].at_ms - 2_000);
    assert_eq!((c[2].at_ms, c[2].delay_ms), (6_000, 0));
    assert_eq!(
        (d.report.totals.sped_up, d.report.totals.overflowed),
        (1, 1)
    );
    // The same with no speed-up allowed: natural speed, a longer overflow.
    let slow = run(
        srt,
        &DubOptions {
            max_speedup: 1.0,
            ..options(2)
        },
    )
    .await;
    assert_eq!(slow.report.cues[0].speed, 1.0);
    assert!(slow.report.cues[0].overflow_ms > c[0].overflow_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_voice_loads_once_whatever_the_cues_and_workers() {
    let loads = || {
        ModelPool::global()
            .snapshot()
            .models
            .values()
            .filter(|m| m.name.contains("en_US-joe-medium") && m.config.contains("threads=1"))
            .map(|m| m.counters.loads)
            .sum::<u64>()
    };
    // Whichever test of this process ran first loaded it: the count is for the process.
    run(SRT, &with_alice(4)).await;
    // One copy per scheduler thread (a core each), however many cues and workers: its
    // encoder and vocoder halves.
    let per_voice = remotemedia_dub::voices::instances() as u64;
    assert_eq!(loads(), 2 * per_voice);
    run(SRT, &with_alice(1)).await;
    run(&SRT.replace("Friday", "Monday"), &with_alice(2)).await;
    assert_eq!(loads(), 2 * per_voice, "a later job loaded the voice again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_editing_one_cue_speaks_only_that_cue() {
    let dir = std::env::temp_dir().join(format!("rm-dub-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cached = DubOptions {
        cache: Some(dir.clone()),
        ..with_alice(2)
    };
    let first = run(SRT, &cached).await;
    assert_eq!(first.report.totals.synthesized, 5);
    assert_eq!(first.report.totals.cache_hits, 0);
    let again = run(SRT, &cached).await;
    assert_eq!(
        (
            again.report.totals.synthesized,
            again.report.totals.cache_hits
        ),
        (0, 5)
    );
    assert!(again.samples == first.samples, "the cached track differs");
    let edited = SRT.replace("cup of coffee", "cup of tea");
    let after = run(&edited, &cached).await;
    assert_eq!(
        (
            after.report.totals.synthesized,
            after.report.totals.cache_hits
        ),
        (1, 4)
    );
    let spoken: Vec<bool> = after.report.cues.iter().map(|c| c.cached).collect();
    assert_eq!(spoken, [true, true, true, false, false, true]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_is_lowered_by_the_set_decibels_under_speech() {
    // The original: a steady 60 Hz hum at 16 kHz stereo, 6 s.
    let dir = std::env::temp_dir().join(format!("rm-dub-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hum.wav");
    let rate = 16_000u32;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..6 * rate {
        let s =
            (0.3 * (std::f32::consts::TAU * 60.0 * i as f32 / rate as f32).sin() * 32767.0) as i16;
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let srt = "1\n00:00:02,000 --> 00:00:05,000\nThe weather will be sunny this afternoon.\n";
    let d = run(
        srt,
        &DubOptions {
            mix_with: Some(path.clone()),
            duck_db: 12.0,
            ..options(2)
        },
    )
    .await;
    assert_eq!((d.channels, d.sample_rate), (2, rate));
    assert_eq!(d.samples.len(), 2 * 6 * rate as usize);
    // The hum's level by correlation with a 60 Hz sine (speech has little energy there).
    let hum = |from_s: f32, to_s: f32| {
        let (a, b) = (
            (from_s * rate as f32) as usize,
            (to_s * rate as f32) as usize,
        );
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for i in a..b {
            let x = f64::from(d.samples[2 * i]);
            let t = std::f64::consts::TAU * 60.0 * i as f64 / f64::from(rate);
            re += x * t.cos();
            im += x * t.sin();
        }
        2.0 * (re * re + im * im).sqrt() / (b - a) as f64
    };
    let c = &d.report.cues[0];
    let (at, end) = (
        c.at_ms as f32 / 1000.0,
        (c.at_ms + c.spoken_ms) as f32 / 1000.0,
    );
    let open = hum(0.2, 1.5);
    let under = hum(at + 0.2, end - 0.2);
    let db = 20.0 * (under / open).log10();
    assert!((open - 0.3).abs() < 0.01, "hum {open}");
    assert!(
        (db + 12.0).abs() < 1.0,
        "lowered by {db:.2} dB under speech"
    );
    assert!(
        (hum(end + 0.3, 5.9) / open - 1.0).abs() < 0.02,
        "not back after the speech"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
