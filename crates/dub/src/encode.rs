//! Writing the track: 16-bit WAV or FLAC, under a temporary name renamed at the end, so an
//! interrupted or failed job never leaves a partial file under the output's name. A FLAC track
//! ends on a whole FLAC block (4096 samples): up to 0.19 s of silence more than the WAV.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use flacenc::component::BitRepr;
use flacenc::error::Verify;

use remotemedia_core::subtitles::SubtitleFormat;

use crate::{DubError, Dubbed};

/// The file format of the track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    Flac,
}

impl AudioFormat {
    /// By file extension (`.wav`, `.flac`).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "wav" => Some(Self::Wav),
            "flac" => Some(Self::Flac),
            _ => None,
        }
    }
}

/// 16-bit samples, rounded and clamped.
fn pcm16(samples: &[f32]) -> impl Iterator<Item = i16> + '_ {
    samples
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32_767.0).round() as i16)
}

/// The track as file bytes.
pub fn encode(track: &Dubbed, format: AudioFormat) -> Result<Vec<u8>, DubError> {
    let failed = |e: &dyn std::fmt::Display| DubError::Audio(format!("encoding the track: {e}"));
    match format {
        AudioFormat::Wav => {
            let spec = hound::WavSpec {
                channels: track.channels,
                sample_rate: track.sample_rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut out = Cursor::new(Vec::new());
            let mut writer = hound::WavWriter::new(&mut out, spec).map_err(|e| failed(&e))?;
            for s in pcm16(&track.samples) {
                writer.write_sample(s).map_err(|e| failed(&e))?;
            }
            writer.finalize().map_err(|e| failed(&e))?;
            Ok(out.into_inner())
        }
        AudioFormat::Flac => {
            let mut samples: Vec<i32> = pcm16(&track.samples).map(i32::from).collect();
            let config = flacenc::config::Encoder::default()
                .into_verified()
                .map_err(|(_, e)| failed(&e))?;
            // Silence up to a whole block: symphonia (which `remotemedia run` reads audio
            // with) fails on the short last block flacenc writes otherwise.
            let block = config.block_size * usize::from(track.channels.max(1));
            samples.resize(samples.len().div_ceil(block) * block, 0);
            let source = flacenc::source::MemSource::from_samples(
                &samples,
                usize::from(track.channels),
                16,
                track.sample_rate as usize,
            );
            let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
                .map_err(|e| failed(&e))?;
            let mut sink = flacenc::bitsink::ByteSink::new();
            stream.write(&mut sink).map_err(|e| failed(&e))?;
            Ok(sink.as_slice().to_vec())
        }
    }
}

/// The files a job writes, each optional: the track, the report (JSON for a `.json` name,
/// Markdown otherwise) and the re-timed subtitles (SRT or WebVTT by extension, else the
/// input's format).
#[derive(Clone, Debug, Default)]
pub struct Files {
    pub track: Option<(PathBuf, AudioFormat)>,
    pub report: Option<PathBuf>,
    pub subs_out: Option<PathBuf>,
}

/// Writes `files`, each through a temporary name.
pub fn save(dubbed: &Dubbed, files: &Files) -> Result<(), DubError> {
    let write = |path: &Path, bytes: &[u8]| {
        write_file(path, bytes)
            .map_err(|e| DubError::Audio(format!("writing {}: {e}", path.display())))
    };
    if let Some((path, format)) = &files.track {
        write(path, &encode(dubbed, *format)?)?;
    }
    if let Some(path) = &files.report {
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let text = match json {
            true => dubbed.report.to_json(),
            false => dubbed.report.to_markdown(),
        };
        write(path, text.as_bytes())?;
    }
    if let Some(path) = &files.subs_out {
        let format = SubtitleFormat::from_extension(path).unwrap_or(dubbed.format);
        write(path, dubbed.retimed_text(format).as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed when complete.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let part = path.with_file_name(format!(".{name}.part{}", std::process::id()));
    let written = std::fs::write(&part, bytes).and_then(|()| std::fs::rename(&part, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Report;

    fn track(samples: Vec<f32>) -> Dubbed {
        Dubbed {
            samples,
            channels: 2,
            sample_rate: 22_050,
            report: Report::default(),
            retimed: Vec::new(),
            format: SubtitleFormat::Srt,
        }
    }

    #[test]
    fn both_formats_read_back_with_every_sample() {
        let frames = 22_050 + 17;
        let samples: Vec<f32> = (0..2 * frames)
            .map(|i| (i as f32 * 0.01).sin() * 0.5)
            .collect();
        let dir = std::env::temp_dir().join(format!("rm-dub-encode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (format, name) in [(AudioFormat::Wav, "t.wav"), (AudioFormat::Flac, "t.flac")] {
            let path = dir.join(name);
            assert_eq!(AudioFormat::from_path(&path), Some(format));
            write_file(&path, &encode(&track(samples.clone()), format).unwrap()).unwrap();
            let back = remotemedia_audio::decode::read_all(&path).unwrap();
            assert_eq!((back.channels, back.sample_rate), (2, 22_050));
            // FLAC ends on a whole block of silence.
            assert!(back.samples.len() >= samples.len(), "{name}");
            assert!(back.samples.len() < samples.len() + 2 * 4096, "{name}");
            for (a, b) in samples.iter().zip(&back.samples) {
                assert!((a - b).abs() < 1.0 / 32_000.0, "{name}: {a} vs {b}");
            }
            assert!(back.samples[samples.len()..].iter().all(|&s| s == 0.0));
        }
        // Nothing but the two files: no temporary names left behind.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["t.flac", "t.wav"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
