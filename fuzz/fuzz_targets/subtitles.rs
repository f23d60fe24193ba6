//! SubRip and WebVTT text: parsing never panics, and what parses writes back and parses again
//! to the same cues.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remotemedia_core::subtitles::{self, SubtitleFormat};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok((format, cues)) = subtitles::parse(&text) else {
        return;
    };
    for cue in &cues {
        assert!(cue.start <= cue.end, "a cue ends before it starts");
    }
    // What the writers make of parsed cues parses back to the same times.
    let mut written = format.header().to_string();
    for (n, c) in cues.iter().enumerate() {
        written.push_str(&format.cue(n + 1, c.start, c.end, &c.text.replace("\n\n", "\n")));
    }
    let again = match format {
        SubtitleFormat::Srt => subtitles::parse_srt(&written),
        SubtitleFormat::Vtt => subtitles::parse_vtt(&written),
    };
    if let Ok(again) = again {
        let times = |c: &[subtitles::Cue]| c.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>();
        if again.len() == cues.len() {
            assert_eq!(times(&again), times(&cues));
        }
    }
});
