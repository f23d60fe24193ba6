//! Subtitle dubbing (seed 003): an SRT or WebVTT file in, one speech track out, each cue's
//! speech at its start time, spoken by the voice its language and character call for.
//!
//! The job: parse the cues and their tags ([`markup`]); choose and load every voice before
//! anything is spoken, so a cue without a voice fails the job at once ([`voices`]); speak
//! every cue at natural speed, then again faster those that overrun their slot ([`fit`]), with
//! `workers` cues in flight at a time, in an order grouped by language and character, on
//! voices shared through the process's model pool and schedulers; place the speech and mix it
//! over the original audio, lowered under speech ([`mix`]). Speech is repeatable (seeded
//! noise, single-threaded model runs), so the track is the same byte for byte whatever the
//! number of workers. With a [`cache`], cues already spoken are not spoken again.

pub mod cache;
pub mod encode;
pub mod fit;
pub mod markup;
pub mod mix;
pub mod report;
pub mod voices;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use futures_util::future::join_all;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remotemedia_audio::resample::{Quality, resample};
use remotemedia_core::subtitles::{self, Cue, SubtitleError, SubtitleFormat};

pub use cache::Cache;
pub use encode::{AudioFormat, Files, encode, save, write_file};
pub use report::{CueReport, Report, Totals};
pub use voices::{Clip, Voice, VoiceMap, VoiceSpec, parse_assignment};

/// What to dub and how.
#[derive(Clone, Debug)]
pub struct DubOptions {
    /// Cues spoken at the same time (default: the number of cores).
    pub workers: usize,
    /// Language of cues without a `[lang:]` tag.
    pub lang: String,
    /// `LANG=VOICE`: the voice of a language's unmarked cues.
    pub voices: Vec<(String, VoiceSpec)>,
    /// `NAME=VOICE` or `LANG:NAME=VOICE`: a character's voice.
    pub characters: Vec<(String, VoiceSpec)>,
    /// Speech longer than its slot is sped up at most this much (1 = never).
    pub max_speedup: f32,
    /// Length of the track; default the last cue's end (or the `mix_with` audio's length).
    pub duration: Option<Duration>,
    /// The original audio to mix the speech over.
    pub mix_with: Option<PathBuf>,
    /// How far the original is lowered under speech.
    pub duck_db: f32,
    /// Sample rate of the track; default that of `mix_with`, else the voices' (22 050 Hz).
    pub sample_rate: Option<u32>,
    /// Where spoken cues are kept between runs.
    pub cache: Option<PathBuf>,
}

impl Default for DubOptions {
    fn default() -> Self {
        Self {
            workers: voices::instances(),
            lang: "en".into(),
            voices: Vec::new(),
            characters: Vec::new(),
            max_speedup: 1.2,
            duration: None,
            mix_with: None,
            duck_db: 12.0,
            sample_rate: None,
            cache: None,
        }
    }
}

impl DubOptions {
    /// Refuses settings no job can use, whichever entry point they came through.
    fn check(&self) -> Result<(), DubError> {
        if !(1.0..=4.0).contains(&self.max_speedup) {
            return Err(DubError::Options(format!(
                "max_speedup {}: expected 1 to 4",
                self.max_speedup
            )));
        }
        if !self.duck_db.is_finite() {
            return Err(DubError::Options(format!(
                "duck_db {}: expected decibels",
                self.duck_db
            )));
        }
        Ok(())
    }
}

/// A track length given in seconds: above 0, at most a day.
pub fn track_length(seconds: f64) -> Result<Duration, DubError> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(DubError::Options(format!(
            "duration {seconds}: expected seconds above 0, at most a day"
        )))
    }
}

/// Why a job could not be done. Every error that concerns a cue names it and its line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DubError {
    #[error("{0}")]
    Options(String),
    #[error("{0}")]
    Subtitles(#[from] SubtitleError),
    #[error("cue {cue} (line {line}): {message}; available: {available}")]
    NoVoice {
        cue: usize,
        line: usize,
        message: String,
        available: String,
    },
    #[error(
        "cue {cue} (line {line}): voice {voice} cannot be used: {message}; available: {available}"
    )]
    Voice {
        voice: String,
        cue: usize,
        line: usize,
        message: String,
        available: String,
    },
    #[error("cue {cue} (line {line}) could not be spoken (tried twice): {message}")]
    Synthesis {
        cue: usize,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Audio(String),
}

/// The dubbed track and what went into it.
#[derive(Clone, Debug)]
pub struct Dubbed {
    /// Interleaved samples in [-1, 1].
    pub samples: Vec<f32>,
    pub channels: u16,
    pub sample_rate: u32,
    pub report: Report,
    /// The spoken cues re-timed to where their speech is on the track.
    pub retimed: Vec<Cue>,
    /// The input's format, for writing the re-timed cues alike.
    pub format: SubtitleFormat,
}

impl Dubbed {
    /// The re-timed cues as a subtitle file in `format`.
    pub fn retimed_text(&self, format: SubtitleFormat) -> String {
        let mut out = format.header().to_string();
        for (n, cue) in self.retimed.iter().enumerate() {
            out.push_str(&format.cue(n + 1, cue.start, cue.end, &cue.text));
        }
        out
    }
}

/// Progress of a job: cues spoken, of all cues to speak.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Send + Sync);

/// What was said for one cue: the length of its speech at natural speed, the speed used, and
/// the speech placed on the track (trimmed, at the track's rate).
#[derive(Clone, Default)]
struct Said {
    natural: usize,
    speed: f32,
    spoken: Vec<f32>,
}

/// A cue to speak, with its voice.
struct Line {
    cue: Cue,
    lang: String,
    character: Option<String>,
    text: String,
    voice: VoiceSpec,
}

/// Dubs `subtitles` (the text of an SRT or WebVTT file).
pub async fn dub(
    subtitles: &str,
    options: &DubOptions,
    progress: Progress<'_>,
) -> Result<Dubbed, DubError> {
    let started = Instant::now();
    options.check()?;
    let (format, cues) = subtitles::parse(subtitles)?;
    let mut report = Report::default();
    report.warnings.extend(overlaps(&cues));

    // Every cue's voice, before anything is loaded or spoken.
    let map = VoiceMap {
        default_lang: options.lang.clone(),
        by_lang: options.voices.iter().cloned().collect(),
        by_character: options.characters.iter().cloned().collect(),
    };
    let (lines, skipped) = assign_voices(&cues, &options.lang, &map, &mut report.warnings)?;
    let loaded = load_voices(&lines, &map).await?;
    for (spec, voice) in &loaded {
        if !voice.repeatable() {
            report.warnings.push(format!(
                "voice {spec} draws its own noise: its speech differs from run to run"
            ));
        }
    }

    // The original audio, and the track's format and length.
    let original = match &options.mix_with {
        Some(path) => Some(read_audio(path, options.sample_rate).await?),
        None => None,
    };
    let rate = options
        .sample_rate
        .or(original.as_ref().map(|o| o.sample_rate))
        .unwrap_or(22_050);
    let channels = original.as_ref().map_or(1, |o| o.channels.max(1));
    let to_samples = |d: Duration| (d.as_nanos() * u128::from(rate) / 1_000_000_000) as usize;
    let cue_end = cues.iter().map(|c| c.end).max().unwrap_or_default();
    let mut length = match (options.duration, &original) {
        (Some(d), _) => to_samples(d),
        (None, Some(o)) => o.samples.len() / usize::from(channels),
        (None, None) => to_samples(cue_end),
    };

    // Speak every cue at natural speed, then the ones that overrun faster.
    let job =
        Job {
            id: format!("dub-{}", JOBS.fetch_add(1, Relaxed)).into(),
            lines: &lines,
            voices: &loaded,
            cache: match &options.cache {
                Some(dir) => Some(Cache::open(dir).map_err(|e| {
                    DubError::Audio(format!("cache directory {}: {e}", dir.display()))
                })?),
                None => None,
            },
            rate,
            workers: options.workers.max(1),
            progress,
            done: AtomicUsize::new(0),
            synthesized: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
            cached: Mutex::new(BTreeSet::new()),
        };
    let mut by_start: Vec<usize> = (0..lines.len()).collect();
    by_start.sort_by_key(|&i| (lines[i].cue.start, lines[i].cue.number));
    let start = |i: usize| to_samples(lines[i].cue.start);
    let mut slot_end = vec![length; lines.len()];
    for w in by_start.windows(2) {
        slot_end[w[0]] = start(w[1]);
    }
    let slot_len: Vec<usize> = (0..lines.len())
        .map(|i| slot_end[i].saturating_sub(start(i)))
        .collect();
    let said = job
        .run(work_order(&lines), &slot_len, options.max_speedup)
        .await?;

    // Place the speech and make the track.
    let slots: Vec<fit::Slot> = by_start
        .iter()
        .map(|&i| fit::Slot {
            start: start(i),
            end: slot_end[i],
            len: said[i].spoken.len(),
        })
        .collect();
    let placed = fit::place(&slots);
    let speech_end = placed
        .iter()
        .zip(&slots)
        .map(|(p, s)| p.at + s.len)
        .max()
        .unwrap_or(0);
    if speech_end > length {
        report.warnings.push(format!(
            "the speech runs {} ms past the track's end: the track is longer to keep it whole",
            ms(speech_end - length, rate)
        ));
        length = speech_end;
    }
    let ch = usize::from(channels);
    let mut track = match original {
        Some(o) => {
            let mut samples = o.samples;
            samples.resize(length * ch, 0.0);
            samples
        }
        None => vec![0.0; length * ch],
    };
    if options.mix_with.is_some() {
        // Under speech, the original is lowered.
        let regions: Vec<(usize, usize)> = placed
            .iter()
            .zip(&slots)
            .map(|(p, s)| (p.at, p.at + s.len))
            .collect();
        let fade = rate as usize * mix::DUCK_FADE_MS / 1000;
        mix::duck(&mut track, ch, &regions, options.duck_db, fade);
    }
    let mut retimed = Vec::new();
    let mut rows = BTreeMap::new();
    for (&i, p) in by_start.iter().zip(&placed) {
        let line = &lines[i];
        let spoken = &said[i].spoken;
        mix::add(&mut track, ch, p.at, spoken);
        let to_time =
            |n: usize| Duration::from_nanos((n as u128 * 1_000_000_000 / u128::from(rate)) as u64);
        retimed.push(Cue {
            start: to_time(p.at),
            end: to_time(p.at + spoken.len()),
            text: line.cue.text.clone(),
            ..line.cue.clone()
        });
        let status = if p.overflow > 0 {
            "overflows"
        } else if said[i].speed > 1.0 {
            "sped up"
        } else {
            "fits"
        };
        rows.insert(
            line.cue.number,
            CueReport {
                number: line.cue.number,
                line: line.cue.line,
                start_ms: line.cue.start.as_millis() as u64,
                end_ms: line.cue.end.as_millis() as u64,
                slot_ms: ms(slot_len[i], rate),
                lang: line.lang.clone(),
                character: line.character.clone(),
                voice: line.voice.to_string(),
                text: line.text.clone(),
                natural_ms: ms(said[i].natural, rate),
                speed: said[i].speed,
                spoken_ms: ms(spoken.len(), rate),
                at_ms: ms(p.at, rate),
                delay_ms: ms(p.delay, rate),
                overflow_ms: ms(p.overflow, rate),
                status,
                cached: false,
            },
        );
    }
    for s in &mut track {
        *s = s.clamp(-1.0, 1.0);
    }
    for cue in &skipped {
        rows.insert(cue.number, skipped_row(cue));
    }
    for number in job.cached.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if let Some(r) = rows.get_mut(number) {
            r.cached = true;
        }
    }
    report.cues = rows.into_values().collect();
    let r = &report.cues;
    report.totals = Totals {
        cues: cues.len(),
        spoken: lines.len(),
        skipped: skipped.len(),
        sped_up: r.iter().filter(|c| c.speed > 1.0).count(),
        overflowed: r.iter().filter(|c| c.overflow_ms > 0).count(),
        overflow_ms: r.iter().map(|c| c.overflow_ms).sum(),
        max_speed: r.iter().map(|c| c.speed).fold(1.0, f32::max),
        track_ms: ms(length, rate),
        synthesized: job.synthesized.load(Relaxed),
        cache_hits: job.hits.load(Relaxed),
        workers: job.workers,
        wall_ms: started.elapsed().as_millis() as u64,
    };
    Ok(Dubbed {
        samples: track,
        channels,
        sample_rate: rate,
        report,
        retimed,
        format,
    })
}

static JOBS: AtomicUsize = AtomicUsize::new(0);

/// Each cue's text and voice; cues without text are skipped (and warned about). A cue whose
/// language or character has no voice fails the job.
fn assign_voices(
    cues: &[Cue],
    default_lang: &str,
    map: &VoiceMap,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Line>, Vec<Cue>), DubError> {
    let (mut lines, mut skipped) = (Vec::new(), Vec::new());
    for cue in cues {
        let m = markup::read(&cue.text);
        if m.text.is_empty() {
            warnings.push(format!(
                "cue {} (line {}) has no text: skipped",
                cue.number, cue.line
            ));
            skipped.push(cue.clone());
            continue;
        }
        let lang = m.lang.unwrap_or(default_lang).to_string();
        let voice = map
            .choose(&lang, m.character)
            .map_err(|message| DubError::NoVoice {
                cue: cue.number,
                line: cue.line,
                message: format!("{message} (language {lang})"),
                available: map.available(),
            })?;
        lines.push(Line {
            cue: cue.clone(),
            lang,
            character: m.character.map(str::to_string),
            text: m.text.to_string(),
            voice,
        });
    }
    Ok((lines, skipped))
}

/// The order cues are spoken in: by language, then character, then cue number, so that one
/// voice's cues run together (what matters for engines that switch models; here it keeps a
/// voice's instances busy together).
fn work_order(lines: &[Line]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&i| (&lines[i].lang, &lines[i].character, lines[i].cue.number));
    order
}

fn ms(samples: usize, rate: u32) -> u64 {
    (samples as u64 * 1000) / u64::from(rate.max(1))
}

fn skipped_row(cue: &Cue) -> CueReport {
    CueReport {
        number: cue.number,
        line: cue.line,
        start_ms: cue.start.as_millis() as u64,
        end_ms: cue.end.as_millis() as u64,
        slot_ms: 0,
        lang: String::new(),
        character: None,
        voice: String::new(),
        text: cue.text.clone(),
        natural_ms: 0,
        speed: 1.0,
        spoken_ms: 0,
        at_ms: 0,
        delay_ms: 0,
        overflow_ms: 0,
        status: "skipped: empty",
        cached: false,
    }
}

/// Cues that start before the one before them ends.
fn overlaps(cues: &[Cue]) -> Vec<String> {
    let mut sorted: Vec<&Cue> = cues.iter().collect();
    sorted.sort_by_key(|c| (c.start, c.number));
    sorted
        .windows(2)
        .filter(|w| w[1].start < w[0].end)
        .map(|w| {
            format!(
                "cue {} (line {}) starts before cue {} (line {}) ends",
                w[1].number, w[1].line, w[0].number, w[0].line
            )
        })
        .collect()
}

/// Loads each voice the lines use once, in parallel; an error names the first cue using it.
async fn load_voices(
    lines: &[Line],
    map: &VoiceMap,
) -> Result<BTreeMap<VoiceSpec, Voice>, DubError> {
    let mut first_use: BTreeMap<VoiceSpec, &Cue> = BTreeMap::new();
    for l in lines {
        first_use.entry(l.voice.clone()).or_insert(&l.cue);
    }
    let loading: Vec<_> = first_use
        .keys()
        .map(|spec| {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || Voice::load(&spec))
        })
        .collect();
    let mut loaded = BTreeMap::new();
    for ((spec, cue), handle) in first_use.into_iter().zip(loading) {
        let voice = handle
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|message| DubError::Voice {
                voice: spec.to_string(),
                cue: cue.number,
                line: cue.line,
                message,
                available: map.available(),
            })?;
        loaded.insert(spec, voice);
    }
    Ok(loaded)
}

/// The original audio, decoded whole and brought to `rate` if given.
async fn read_audio(
    path: &Path,
    rate: Option<u32>,
) -> Result<remotemedia_audio::decode::Decoded, DubError> {
    let p = path.to_path_buf();
    let read = move || {
        let mut audio = remotemedia_audio::decode::read_all(&p)
            .map_err(|e| DubError::Audio(format!("{}: {e}", p.display())))?;
        if let Some(rate) = rate.filter(|&r| r != audio.sample_rate) {
            audio.samples = resample(
                &audio.samples,
                audio.channels,
                audio.sample_rate,
                rate,
                Quality::Balanced,
            )
            .map_err(|e| DubError::Audio(format!("{}: {e}", p.display())))?;
            audio.sample_rate = rate;
        }
        Ok(audio)
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| DubError::Audio(e.to_string()))?
}

/// The syntheses of one job and their counters.
struct Job<'a> {
    id: Arc<str>,
    lines: &'a [Line],
    voices: &'a BTreeMap<VoiceSpec, Voice>,
    cache: Option<Cache>,
    /// The track's rate: every clip is resampled to it.
    rate: u32,
    workers: usize,
    progress: Progress<'a>,
    done: AtomicUsize,
    synthesized: AtomicUsize,
    hits: AtomicUsize,
    /// Cues whose audio came from the cache.
    cached: Mutex<BTreeSet<usize>>,
}

impl Job<'_> {
    /// Speaks the lines in `order`, `workers` at a time: each at natural speed, then, if that
    /// overruns its slot (`slots`, in samples), again as fast as it needs up to `max_speedup`.
    /// Returns what was said for each line, by line index. The first cue that cannot be
    /// spoken (after one retry) ends the run.
    async fn run(
        &self,
        order: Vec<usize>,
        slots: &[usize],
        max_speedup: f32,
    ) -> Result<Vec<Said>, DubError> {
        let count = order.len();
        let queue = Mutex::new(VecDeque::from(order));
        let results = Mutex::new(vec![Said::default(); count]);
        let failed = AtomicBool::new(false);
        let worker = || async {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(i) = next else {
                    return Ok(());
                };
                if failed.load(Relaxed) {
                    return Ok(());
                }
                let said = async {
                    let spoken = self.clip(i, 1.0).await?;
                    let natural = spoken.len();
                    let speed = fit::speed_for(natural, slots[i], max_speedup);
                    let spoken = match speed > 1.0 {
                        true => self.clip(i, speed).await?,
                        false => spoken,
                    };
                    Ok::<_, DubError>(Said {
                        natural,
                        speed,
                        spoken,
                    })
                };
                match said.await {
                    Ok(said) => {
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = said;
                        let done = self.done.fetch_add(1, Relaxed) + 1;
                        (self.progress)(done, count);
                    }
                    Err(e) => {
                        failed.store(true, Relaxed);
                        return Err(e);
                    }
                }
            }
        };
        let workers: Vec<_> = (0..self.workers.min(count.max(1)))
            .map(|_| worker())
            .collect();
        for result in join_all(workers).await {
            result?;
        }
        Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// One cue at one speed: from the cache, or spoken (retried once), then trimmed and brought
    /// to the track's rate.
    async fn clip(&self, index: usize, speed: f32) -> Result<Vec<f32>, DubError> {
        let line = &self.lines[index];
        let voice = &self.voices[&line.voice];
        let key = format!("{}|speed{:.3}|{}", voice.cache_id(), speed, line.text);
        let cached = self.cache.as_ref().and_then(|c| c.get(&key));
        let clip = match cached {
            Some(clip) => {
                self.hits.fetch_add(1, Relaxed);
                let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                cached.insert(line.cue.number);
                clip
            }
            None => {
                let mut spoken = voice.speak(&self.id, &line.text, speed).await;
                if let Err(e) = &spoken {
                    tracing::warn!(cue = line.cue.number, "speaking failed, retrying once: {e}");
                    spoken = voice.speak(&self.id, &line.text, speed).await;
                }
                let clip = spoken.map_err(|message| DubError::Synthesis {
                    cue: line.cue.number,
                    line: line.cue.line,
                    message,
                })?;
                self.synthesized.fetch_add(1, Relaxed);
                if let Some(cache) = &self.cache {
                    cache.put(&key, &clip);
                }
                clip
            }
        };
        let samples = if clip.rate == self.rate {
            clip.samples
        } else {
            resample(&clip.samples, 1, clip.rate, self.rate, Quality::Balanced)
                .map_err(|e| DubError::Audio(e.to_string()))?
        };
        Ok(mix::trim(&samples, self.rate).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cue(number: usize, start_ms: u64, end_ms: u64) -> Cue {
        Cue {
            number,
            line: number * 4 - 2,
            start: Duration::from_millis(start_ms),
            end: Duration::from_millis(end_ms),
            text: String::new(),
        }
    }

    #[test]
    fn cues_are_spoken_grouped_by_language_then_character() {
        let line = |n, lang: &str, character: Option<&str>| Line {
            cue: cue(n, 0, 0),
            lang: lang.into(),
            character: character.map(Into::into),
            text: String::new(),
            voice: VoiceSpec::Espeak(lang.into()),
        };
        let lines = [
            line(1, "en", None),
            line(2, "de", None),
            line(3, "en", Some("Bob")),
            line(4, "en", None),
            line(5, "de", Some("Alice")),
            line(6, "en", Some("Alice")),
        ];
        let numbers: Vec<usize> = work_order(&lines).iter().map(|&i| i + 1).collect();
        assert_eq!(numbers, [2, 5, 1, 4, 6, 3]);
    }

    #[test]
    fn overlapping_cues_are_reported_not_refused() {
        let cues = [cue(1, 0, 2_000), cue(2, 1_500, 3_000), cue(3, 3_000, 4_000)];
        assert_eq!(
            overlaps(&cues),
            ["cue 2 (line 6) starts before cue 1 (line 2) ends"]
        );
    }
}
