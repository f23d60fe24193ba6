//! Printing and writing session outputs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use remotemedia_audio::wav::WavSink;
use remotemedia_core::subtitles::SubtitleFormat;
use remotemedia_core::{Packet, RuntimeData};
use serde_json::json;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per result; timed text as `[mm:ss.cc → mm:ss.cc] text`.
    Text,
    /// One JSON object per line.
    Json,
    /// SubRip subtitles: one numbered cue per final timed text.
    Srt,
    /// WebVTT subtitles: one cue per final timed text.
    Vtt,
}

pub struct Printer {
    format: Format,
    text: Box<dyn Write>,
    wav: Option<WavSink<std::io::BufWriter<std::fs::File>>>,
    audio_frames: u64,
    output: String,
    /// Subtitle cues written so far.
    cues: usize,
    /// Lines are printed around it, so it is redrawn below them rather than over them.
    progress: Option<indicatif::ProgressBar>,
}

impl Printer {
    pub fn new(output: &str, format: Format) -> anyhow::Result<Self> {
        let is_wav = Path::new(output)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        let (text, wav): (Box<dyn Write>, _) = if is_wav {
            let sink = WavSink::create(Path::new(output))?;
            (Box::new(std::io::stdout()), Some(sink))
        } else if output == "-" {
            (Box::new(std::io::stdout()), None)
        } else {
            let f = std::fs::File::create(output).with_context(|| format!("creating {output}"))?;
            (Box::new(std::io::BufWriter::new(f)), None)
        };
        let mut text = text;
        if format == Format::Vtt {
            write!(text, "{}", SubtitleFormat::Vtt.header())?;
        }
        Ok(Self {
            format,
            text,
            wav,
            audio_frames: 0,
            output: output.to_string(),
            cues: 0,
            progress: None,
        })
    }

    /// Shows `bar` while printing, keeping printed lines above it.
    pub fn with_progress(&mut self, bar: indicatif::ProgressBar) {
        self.progress = Some(bar);
    }

    pub fn packet(&mut self, p: &Packet) -> anyhow::Result<()> {
        if let (RuntimeData::Audio(a), Some(wav)) = (&p.data, self.wav.as_mut()) {
            self.audio_frames += 1;
            return Ok(wav.write(a)?);
        }
        let entry = match self.format {
            Format::Text => Some(format!("{}\n", text_line(p))),
            Format::Json => Some(format!("{}\n", json_line(p))),
            Format::Srt | Format::Vtt => self.cue(p),
        };
        let Some(entry) = entry else {
            return Ok(());
        };
        let text = &mut self.text;
        let mut write = || -> std::io::Result<()> {
            text.write_all(entry.as_bytes())?;
            text.flush()
        };
        match &self.progress {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        Ok(())
    }

    /// A subtitle cue for final text with a time span; anything else has no place in
    /// subtitles and is left out.
    fn cue(&mut self, p: &Packet) -> Option<String> {
        let RuntimeData::Text(t) = &p.data else {
            return None;
        };
        let (start, end) = t.span?;
        if !t.is_final || t.text.trim().is_empty() {
            return None;
        }
        self.cues += 1;
        let format = match self.format {
            Format::Srt => SubtitleFormat::Srt,
            _ => SubtitleFormat::Vtt,
        };
        Some(format.cue(self.cues, start, end, &t.text))
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        self.text.flush()?;
        if let Some(wav) = self.wav.take()
            && !wav.finish()?
        {
            // Likely a pipeline whose outputs are not audio: say why the file is empty.
            eprintln!("warning: no audio reached {}; it is empty", self.output);
        }
        Ok(())
    }
}

/// `mm:ss.cc`.
pub fn clock(d: Duration) -> String {
    let cs = d.as_millis() / 10;
    format!("{:02}:{:02}.{:02}", cs / 6000, (cs / 100) % 60, cs % 100)
}

fn text_line(p: &Packet) -> String {
    match &p.data {
        RuntimeData::Text(t) => match t.span {
            Some((a, b)) => format!("[{} → {}] {}", clock(a), clock(b), t.text),
            None => t.text.to_string(),
        },
        RuntimeData::Audio(a) => format!(
            "[{} → {}] audio from {}: {} samples, {} Hz, {} ch",
            clock(p.timestamp),
            clock(p.timestamp + a.duration()),
            p.source,
            a.frames(),
            a.sample_rate,
            a.channels
        ),
        RuntimeData::Json(v) => v.to_string(),
        RuntimeData::Binary(b) => format!(
            "[{}] {} bytes from {}",
            clock(p.timestamp),
            b.len(),
            p.source
        ),
        RuntimeData::Image(i) => format!(
            "[{}] image {}x{} {}",
            clock(p.timestamp),
            i.width,
            i.height,
            i.format
        ),
        RuntimeData::Control(c) => format!("[{}] control {c:?}", clock(p.timestamp)),
    }
}

fn json_line(p: &Packet) -> serde_json::Value {
    let mut v = json!({
        "source": &*p.source,
        "port": &*p.port,
        "seq": p.seq,
        "timestamp_ms": p.timestamp.as_secs_f64() * 1000.0,
        "type": p.data.media_type(),
    });
    match &p.data {
        RuntimeData::Text(t) => {
            v["text"] = json!(&*t.text);
            v["is_final"] = json!(t.is_final);
            if let Some((a, b)) = t.span {
                v["start_ms"] = json!(a.as_secs_f64() * 1000.0);
                v["end_ms"] = json!(b.as_secs_f64() * 1000.0);
            }
        }
        RuntimeData::Audio(a) => {
            v["samples"] = json!(a.frames());
            v["sample_rate"] = json!(a.sample_rate);
            v["channels"] = json!(a.channels);
        }
        RuntimeData::Json(j) => v["value"] = (**j).clone(),
        RuntimeData::Binary(b) => v["bytes"] = json!(b.len()),
        RuntimeData::Image(i) => {
            v["width"] = json!(i.width);
            v["height"] = json!(i.height);
        }
        RuntimeData::Control(c) => v["control"] = json!(format!("{c:?}")),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(text: &str, from_ms: u64, to_ms: u64, is_final: bool) -> Packet {
        let span = Some((Duration::from_millis(from_ms), Duration::from_millis(to_ms)));
        Packet {
            data: RuntimeData::Text(remotemedia_core::TextFrame {
                text: text.into(),
                is_final,
                span,
            }),
            session: "s".into(),
            source: "asr".into(),
            port: "out".into(),
            seq: 0,
            timestamp: Duration::from_millis(from_ms),
            captured: std::time::Instant::now(),
        }
    }

    fn printer(format: Format) -> Printer {
        Printer {
            format,
            text: Box::new(std::io::sink()),
            wav: None,
            audio_frames: 0,
            output: "-".into(),
            cues: 0,
            progress: None,
        }
    }

    #[test]
    fn subtitles_number_final_timed_text_and_skip_the_rest() {
        let mut srt = printer(Format::Srt);
        assert_eq!(
            srt.cue(&timed(" Ever tried. ", 1_060, 2_400, true))
                .as_deref(),
            Some("1\n00:00:01,060 --> 00:00:02,400\nEver tried.\n\n")
        );
        assert_eq!(srt.cue(&timed("ever fa", 2_500, 3_000, false)), None);
        let mut untimed = timed("x", 0, 0, true);
        untimed.data = RuntimeData::text("x");
        assert_eq!(srt.cue(&untimed), None);
        assert!(
            srt.cue(&timed("Ever failed.", 2_500, 3_100, true))
                .unwrap()
                .starts_with("2\n")
        );
        let mut vtt = printer(Format::Vtt);
        assert_eq!(
            vtt.cue(&timed("No matter.", 3_723_045, 3_724_000, true))
                .as_deref(),
            Some("01:02:03.045 --> 01:02:04.000\nNo matter.\n\n")
        );
    }

    #[test]
    fn clock_formats_minutes_seconds_centiseconds() {
        assert_eq!(clock(Duration::from_millis(1_060)), "00:01.06");
        assert_eq!(clock(Duration::from_millis(62_400)), "01:02.40");
    }
}
