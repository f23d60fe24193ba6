//! WAV output (the audio sink of `remotemedia run`); reading lives in [`crate::decode`].

use std::io::{Seek, Write};
use std::path::Path;

use remotemedia_core::AudioFrame;

/// Errors writing audio files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    #[error("{path}: {source}")]
    Io { path: String, source: hound::Error },
    #[error(
        "audio changed format mid-stream: {found_rate} Hz × {found_channels} ch after {rate} Hz × {channels} ch"
    )]
    FormatChanged {
        rate: u32,
        channels: u16,
        found_rate: u32,
        found_channels: u16,
    },
}

/// Writes 16-bit PCM WAV, taking its format from the first frame.
pub struct WavSink<W: Write + Seek> {
    writer: Option<hound::WavWriter<W>>,
    out: Option<W>,
    format: Option<(u32, u16)>,
    path: String,
}

impl WavSink<std::io::BufWriter<std::fs::File>> {
    /// A sink that creates `path` when the first frame arrives.
    pub fn create(path: &Path) -> Result<Self, WavError> {
        let file = std::fs::File::create(path).map_err(|e| WavError::Io {
            path: path.display().to_string(),
            source: hound::Error::IoError(e),
        })?;
        Ok(Self::new(
            std::io::BufWriter::new(file),
            &path.display().to_string(),
        ))
    }
}

impl<W: Write + Seek> WavSink<W> {
    pub fn new(out: W, name: &str) -> Self {
        Self {
            writer: None,
            out: Some(out),
            format: None,
            path: name.to_string(),
        }
    }

    /// Appends a frame; every frame must have the first one's rate and channel count.
    pub fn write(&mut self, frame: &AudioFrame) -> Result<(), WavError> {
        let io = |source| WavError::Io {
            path: self.path.clone(),
            source,
        };
        match self.format {
            None => {
                let spec = hound::WavSpec {
                    channels: frame.channels,
                    sample_rate: frame.sample_rate,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                };
                if let Some(out) = self.out.take() {
                    self.writer = Some(hound::WavWriter::new(out, spec).map_err(io)?);
                }
                self.format = Some((frame.sample_rate, frame.channels));
            }
            Some((rate, channels)) if (rate, channels) != (frame.sample_rate, frame.channels) => {
                return Err(WavError::FormatChanged {
                    rate,
                    channels,
                    found_rate: frame.sample_rate,
                    found_channels: frame.channels,
                });
            }
            Some(_) => {}
        }
        if let Some(w) = self.writer.as_mut() {
            for &s in frame.samples() {
                let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                w.write_sample(v).map_err(|e| WavError::Io {
                    path: self.path.clone(),
                    source: e,
                })?;
            }
        }
        Ok(())
    }

    /// Completes the header. A sink that saw no audio writes nothing.
    pub fn finish(mut self) -> Result<bool, WavError> {
        match self.writer.take() {
            Some(w) => w.finalize().map(|_| true).map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_within_16_bit_precision() {
        let dir = std::env::temp_dir().join(format!("rm-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        let samples: Vec<f32> = (0..1600)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 0.5)
            .collect();
        let mut sink = WavSink::create(&path).unwrap();
        for chunk in samples.chunks(320) {
            sink.write(&AudioFrame::new(chunk.to_vec(), 16_000, 1))
                .unwrap();
        }
        assert!(sink.finish().unwrap());
        let d = crate::decode::read_all(&path).unwrap();
        assert_eq!(
            (d.sample_rate, d.channels, d.samples.len()),
            (16_000, 1, 1600)
        );
        for (a, b) in d.samples.iter().zip(&samples) {
            assert!((a - b).abs() < 1.0 / 32_000.0);
        }
        let frames = d.frames(20);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[1].0, std::time::Duration::from_millis(20));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn format_change_is_an_error() {
        let mut sink = WavSink::new(std::io::Cursor::new(Vec::new()), "mem");
        sink.write(&AudioFrame::new(vec![0.0; 4], 16_000, 1))
            .unwrap();
        let err = sink
            .write(&AudioFrame::new(vec![0.0; 4], 48_000, 1))
            .unwrap_err();
        assert!(err.to_string().contains("48000 Hz"));
    }
}
