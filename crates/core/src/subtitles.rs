//! Subtitle cues, SubRip (`.srt`) and WebVTT (`.vtt`), for timed text.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtitleFormat {
    Srt,
    Vtt,
}

impl SubtitleFormat {
    /// What a file of cues starts with.
    pub fn header(self) -> &'static str {
        match self {
            Self::Srt => "",
            Self::Vtt => "WEBVTT\n\n",
        }
    }

    /// Cue number `n` (from 1; SubRip numbers its cues) showing `text` from `start` to `end`.
    pub fn cue(self, n: usize, start: Duration, end: Duration, text: &str) -> String {
        match self {
            Self::Srt => format!(
                "{n}\n{} --> {}\n{}\n\n",
                cue_time(start, ','),
                cue_time(end, ','),
                text.trim()
            ),
            Self::Vtt => format!(
                "{} --> {}\n{}\n\n",
                cue_time(start, '.'),
                cue_time(end, '.'),
                text.trim()
            ),
        }
    }
}

/// `hh:mm:ss,mmm` (SubRip) or `hh:mm:ss.mmm` (WebVTT).
fn cue_time(d: Duration, separator: char) -> String {
    let ms = d.as_millis();
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_have_hours_and_milliseconds() {
        let (a, b) = (
            Duration::from_millis(1_060),
            Duration::from_millis(3_723_045),
        );
        assert_eq!(
            SubtitleFormat::Srt.cue(2, a, b, " Hello \n"),
            "2\n00:00:01,060 --> 01:02:03,045\nHello\n\n"
        );
        assert_eq!(
            SubtitleFormat::Vtt.cue(2, a, b, "Hello"),
            "00:00:01.060 --> 01:02:03.045\nHello\n\n"
        );
        assert_eq!(SubtitleFormat::Vtt.header(), "WEBVTT\n\n");
    }
}
