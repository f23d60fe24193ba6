//! What a dubbing job did, cue by cue: the report `--report` writes as JSON or Markdown.

use serde::Serialize;

/// One cue: its slot, how long its speech was, how fast it was spoken and where it went.
#[derive(Clone, Debug, Serialize)]
pub struct CueReport {
    pub number: usize,
    pub line: usize,
    pub start_ms: u64,
    pub end_ms: u64,
    /// From the cue's start to the next spoken cue's start (or the track's end).
    pub slot_ms: u64,
    pub lang: String,
    pub character: Option<String>,
    pub voice: String,
    pub text: String,
    /// Speech at natural speed, silent edges trimmed.
    pub natural_ms: u64,
    /// 1 at natural speed.
    pub speed: f32,
    pub spoken_ms: u64,
    /// Where the speech starts on the track.
    pub at_ms: u64,
    /// How late it starts after the cue's start (pushed by the cue before).
    pub delay_ms: u64,
    /// How far it runs past its slot.
    pub overflow_ms: u64,
    /// `fits`, `sped up`, `overflows` or `skipped: empty`.
    pub status: &'static str,
    /// Its audio came from the cache.
    pub cached: bool,
}

/// The job as a whole.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub cues: usize,
    pub spoken: usize,
    pub skipped: usize,
    pub sped_up: usize,
    pub overflowed: usize,
    pub overflow_ms: u64,
    pub max_speed: f32,
    pub track_ms: u64,
    /// Syntheses run (a cue sped up is synthesised twice); cache hits are not counted.
    pub synthesized: usize,
    pub cache_hits: usize,
    pub workers: usize,
    pub wall_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub cues: Vec<CueReport>,
    pub totals: Totals,
    /// Overlapping cues, skipped cues, voices whose output may vary between runs.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A Markdown summary and one table row per cue.
    pub fn to_markdown(&self) -> String {
        let t = &self.totals;
        let mut out = format!(
            "# Dubbing report\n\n{} cues: {} spoken, {} skipped; {} sped up (at most {:.3}×), \
             {} overflowing by {} ms in all. Track {} ms, made in {} ms with {} workers \
             ({} syntheses, {} from the cache).\n\n",
            t.cues,
            t.spoken,
            t.skipped,
            t.sped_up,
            t.max_speed,
            t.overflowed,
            t.overflow_ms,
            t.track_ms,
            t.wall_ms,
            t.workers,
            t.synthesized,
            t.cache_hits,
        );
        if !self.warnings.is_empty() {
            out.push_str("## Warnings\n\n");
            for w in &self.warnings {
                out.push_str(&format!("- {w}\n"));
            }
            out.push('\n');
        }
        out.push_str(
            "| cue | line | start | slot ms | voice | natural ms | speed | at | overflow ms | status | text |\n\
             |---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|\n",
        );
        for c in &self.cues {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
                c.number,
                c.line,
                clock(c.start_ms),
                c.slot_ms,
                c.voice,
                c.natural_ms,
                c.speed,
                clock(c.at_ms),
                c.overflow_ms,
                c.status,
                c.text.replace('|', "\\|").replace('\n', " "),
            ));
        }
        out
    }
}

/// `m:ss.mmm`.
fn clock(ms: u64) -> String {
    format!("{}:{:02}.{:03}", ms / 60_000, (ms / 1000) % 60, ms % 1000)
}
