//! `remotemedia.dub(...)`: the subtitle dubbing job from Python, on the process's voices.

use std::path::PathBuf;

use numpy::PyArray1;
use pyo3::prelude::*;
use remotemedia_dub::{AudioFormat, DubOptions, Files, VoiceSpec};
use serde::Deserialize;

use crate::native;

pyo3::create_exception!(
    _native,
    DubError,
    pyo3::exceptions::PyValueError,
    "A dubbing job that could not be done: bad subtitles, a cue without a voice or that cannot be spoken (named with its line), unreadable audio."
);

/// The keyword arguments of `remotemedia.dub`, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    workers: Option<usize>,
    lang: Option<String>,
    #[serde(default)]
    voices: Vec<(String, String)>,
    #[serde(default)]
    characters: Vec<(String, String)>,
    max_speedup: Option<f32>,
    duration: Option<f64>,
    mix_with: Option<PathBuf>,
    duck_db: Option<f32>,
    sample_rate: Option<u32>,
    cache: Option<PathBuf>,
    output: Option<PathBuf>,
    format: Option<String>,
    report: Option<PathBuf>,
    subs_out: Option<PathBuf>,
}

fn voices(pairs: Vec<(String, String)>) -> PyResult<Vec<(String, VoiceSpec)>> {
    pairs
        .into_iter()
        .map(|(k, v)| Ok((k, v.parse().map_err(DubError::new_err)?)))
        .collect()
}

/// (interleaved float32 samples, channels, sample rate, report JSON, re-timed cues).
type Track<'py> = (Bound<'py, PyArray1<f32>>, u16, u32, String, String);

/// Dubs `subtitles` (the file's text) with `options` (JSON); writes the files asked for and
/// returns the [`Track`].
#[pyfunction]
pub fn dub<'py>(py: Python<'py>, subtitles: &str, options: &str) -> PyResult<Track<'py>> {
    let o: Options = serde_json::from_str(options).map_err(|e| DubError::new_err(e.to_string()))?;
    let defaults = DubOptions::default();
    let failed = |e: remotemedia_dub::DubError| DubError::new_err(e.to_string());
    let duration = o
        .duration
        .map(remotemedia_dub::track_length)
        .transpose()
        .map_err(failed)?;
    let options = DubOptions {
        workers: o.workers.unwrap_or(defaults.workers).max(1),
        lang: o.lang.unwrap_or(defaults.lang),
        voices: voices(o.voices)?,
        characters: voices(o.characters)?,
        max_speedup: o.max_speedup.unwrap_or(defaults.max_speedup),
        duration,
        mix_with: o.mix_with,
        duck_db: o.duck_db.unwrap_or(defaults.duck_db),
        sample_rate: o.sample_rate,
        cache: o.cache,
    };
    let format = match o.format.as_deref() {
        Some("wav") => Some(AudioFormat::Wav),
        Some("flac") => Some(AudioFormat::Flac),
        Some(f) => {
            return Err(DubError::new_err(format!(
                "format {f:?}: expected wav or flac"
            )));
        }
        None => None,
    };
    let files = Files {
        track: o.output.map(|p| {
            let f = format
                .or_else(|| AudioFormat::from_path(&p))
                .unwrap_or(AudioFormat::Wav);
            (p, f)
        }),
        report: o.report,
        subs_out: o.subs_out,
    };
    let tokio = &native(py)?.tokio;
    let text = subtitles.to_string();
    let dubbed = py
        .detach(|| {
            tokio.block_on(async {
                let d = remotemedia_dub::dub(&text, &options, &|_, _| {}).await?;
                remotemedia_dub::save(&d, &files)?;
                Ok::<_, remotemedia_dub::DubError>(d)
            })
        })
        .map_err(failed)?;
    let report = dubbed.report.to_json();
    let retimed = dubbed.retimed_text(dubbed.format);
    Ok((
        PyArray1::from_vec(py, dubbed.samples),
        dubbed.channels,
        dubbed.sample_rate,
        report,
        retimed,
    ))
}
