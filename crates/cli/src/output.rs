//! Printing and writing session outputs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use remotemedia_audio::wav::WavSink;
use remotemedia_core::{Packet, RuntimeData};
use serde_json::json;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per result; timed text as `[mm:ss.cc → mm:ss.cc] text`.
    Text,
    /// One JSON object per line.
    Json,
}

pub struct Printer {
    format: Format,
    text: Box<dyn Write>,
    wav: Option<WavSink<std::io::BufWriter<std::fs::File>>>,
    audio_frames: u64,
    output: String,
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
        Ok(Self {
            format,
            text,
            wav,
            audio_frames: 0,
            output: output.to_string(),
        })
    }

    pub fn packet(&mut self, p: &Packet) -> anyhow::Result<()> {
        if let (RuntimeData::Audio(a), Some(wav)) = (&p.data, self.wav.as_mut()) {
            self.audio_frames += 1;
            return Ok(wav.write(a)?);
        }
        match self.format {
            Format::Text => writeln!(self.text, "{}", text_line(p))?,
            Format::Json => writeln!(self.text, "{}", json_line(p))?,
        }
        self.text.flush()?;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
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

    #[test]
    fn clock_formats_minutes_seconds_centiseconds() {
        assert_eq!(clock(Duration::from_millis(1_060)), "00:01.06");
        assert_eq!(clock(Duration::from_millis(62_400)), "01:02.40");
    }
}
