//! `remotemedia dub`: subtitles to a timed speech track.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use remotemedia_dub::{AudioFormat, DubError, DubOptions, Files, VoiceSpec};

use crate::Invalid;

/// Turn a subtitle file (SRT or WebVTT) into one speech track: each cue spoken at its start
/// time, in parallel on voices loaded once.
///
/// Cues may start with a tag naming their language and/or character: `[de:]`, `[Alice]`,
/// `[de:Alice]`. Unmarked cues are in --lang and get its voice: the bundled Piper voice for
/// English, the espeak-ng voice of the language otherwise, unless --voice says another.
/// A character's voice comes from --character; a cue with a language or character that has no
/// voice stops the job before anything is spoken, naming the cue and its line.
///
/// Speech longer than its slot (until the next cue starts) is spoken faster, at most
/// --max-speedup times, with the same pitch; if it still does not fit it runs on and the next
/// cue starts when it ends (speech never overlaps and words are never cut). --report says,
/// per cue, the slot, the natural length, the speed used and any overflow.
///
/// Voices: `piper` (the bundled voice), `piper:PATH` or a path to any Piper `.onnx` voice (its
/// `.onnx.json` beside it), `espeak:NAME` (an espeak-ng voice such as de, fr, en-us+f3;
/// `espeak-ng --voices` lists them).
///
/// The track is the same, byte for byte, whatever --workers is.
///
/// Examples:
///   remotemedia dub talk.srt -o talk.wav
///   remotemedia dub film.vtt -o dub.flac --voice de=espeak:de --character Alice=espeak:en-us+f3
///   remotemedia dub film.srt -o mixed.wav --mix-with film.wav --duck-db 12 --report report.md
///   remotemedia dub film.srt -o film.wav --cache ~/.cache/dub   # re-runs speak edited cues only
///
/// Exit codes: 0 done, 1 a cue could not be spoken (named), 2 bad subtitles or arguments.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DubArgs {
    /// Subtitle file: SubRip (.srt) or WebVTT (.vtt, recognised by its WEBVTT header).
    subtitles: PathBuf,
    /// The track to write (.wav or .flac; see --format).
    #[arg(short, long)]
    output: PathBuf,
    /// Cues spoken at the same time [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Language of cues without a `[lang:]` tag.
    #[arg(long, default_value = "en")]
    lang: String,
    /// The voice of a language's unmarked cues, LANG=VOICE (repeatable), e.g. de=espeak:de.
    #[arg(long = "voice", value_name = "LANG=VOICE", value_parser = remotemedia_dub::parse_assignment)]
    voices: Vec<(String, VoiceSpec)>,
    /// A character's voice, NAME=VOICE or LANG:NAME=VOICE (repeatable).
    #[arg(long = "character", value_name = "NAME=VOICE", value_parser = remotemedia_dub::parse_assignment)]
    characters: Vec<(String, VoiceSpec)>,
    /// Speech longer than its slot is spoken at most this much faster (1 = never faster).
    #[arg(long, default_value_t = 1.2)]
    max_speedup: f32,
    /// Write a per-cue report: JSON (.json) or Markdown (any other extension).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the subtitles re-timed to where their speech is (SRT or WebVTT by extension,
    /// else the input's format).
    #[arg(long)]
    subs_out: Option<PathBuf>,
    /// Mix the speech over this audio (the original track), lowered under speech.
    #[arg(long, value_name = "AUDIO")]
    mix_with: Option<PathBuf>,
    /// How far the --mix-with audio is lowered under speech, in dB.
    #[arg(long, default_value_t = 12.0)]
    duck_db: f32,
    /// Length of the track in seconds [default: the last cue's end, or the --mix-with audio's].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Sample rate of the track [default: the --mix-with audio's, else 22050].
    #[arg(long, value_name = "HZ")]
    rate: Option<u32>,
    /// File format [default: from the output's extension, else wav].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Keep each spoken cue here; a re-run speaks only cues whose text, voice or speed changed.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FormatArg {
    Wav,
    Flac,
}

pub fn run(args: DubArgs) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.subtitles)
        .map_err(|e| Invalid(format!("{}: {e}", args.subtitles.display())))?;
    let format = match args.format {
        Some(FormatArg::Wav) => AudioFormat::Wav,
        Some(FormatArg::Flac) => AudioFormat::Flac,
        None => AudioFormat::from_path(&args.output).unwrap_or(AudioFormat::Wav),
    };
    let duration = args
        .duration
        .map(remotemedia_dub::track_length)
        .transpose()
        .map_err(|e| Invalid(format!("--{e}")))?;
    let options = DubOptions {
        workers: args.workers.unwrap_or(DubOptions::default().workers).max(1),
        lang: args.lang,
        voices: args.voices,
        characters: args.characters,
        max_speedup: args.max_speedup,
        duration,
        mix_with: args.mix_with,
        duck_db: args.duck_db,
        sample_rate: args.rate,
        cache: args.cache,
    };
    let bar = progress_bar();
    let progress = |done: usize, total: usize| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dubbed = runtime
        .block_on(remotemedia_dub::dub(&text, &options, &progress))
        .map_err(|e| match e {
            DubError::Synthesis { .. } | DubError::Audio(_) => anyhow::Error::new(e),
            DubError::Options(m) => Invalid(m).into(),
            other => Invalid(format!("{}: {other}", args.subtitles.display())).into(),
        })?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let files = Files {
        track: Some((args.output.clone(), format)),
        report: args.report,
        subs_out: args.subs_out,
    };
    remotemedia_dub::save(&dubbed, &files)?;
    let t = &dubbed.report.totals;
    for w in &dubbed.report.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{}: {} cues spoken ({} sped up, {} overflowing by {} ms), {} skipped; {:.1} s of audio in {:.1} s",
        args.output.display(),
        t.spoken,
        t.sped_up,
        t.overflowed,
        t.overflow_ms,
        t.skipped,
        t.track_ms as f64 / 1000.0,
        t.wall_ms as f64 / 1000.0,
    );
    Ok(0)
}

/// A bar over the cues, on stderr only when it is a terminal.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style =
        indicatif::ProgressStyle::with_template("dubbing [{wide_bar}] {pos}/{len} cues  {elapsed}")
            .ok()?;
    bar.set_style(style.progress_chars("=> "));
    Some(bar)
}
