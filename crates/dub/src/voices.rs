//! Which voice speaks a cue, and the loaded voices that speak.
//!
//! A voice is the bundled Piper voice (`piper`), any Piper voice file (`piper:PATH` or a path
//! ending in `.onnx`), or an espeak-ng voice (`espeak:NAME`, e.g. `espeak:de` or
//! `espeak:en-us+f3`). Unmarked cues in English get the Piper voice, in another language the
//! espeak-ng voice of that language; `--voice LANG=VOICE` and `--character NAME=VOICE` choose
//! others. A Piper voice runs on a process-wide scheduler with one single-threaded instance of
//! the model per core, shared by every job of the process (and by every cue of a job).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use remotemedia_core::scheduler::{BatchModel, Outcome, Scheduler, SchedulerConfig};
use remotemedia_speech::espeak::{Espeak, PrivateEspeak};
use remotemedia_speech::models::{self, ModelError};
use remotemedia_speech::piper::Scales;
use remotemedia_speech::{PiperVoice, tts};

/// A voice as the user names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VoiceSpec {
    /// A Piper voice model (`.onnx` with its `.onnx.json` beside it).
    Piper(PathBuf),
    /// An espeak-ng voice by name.
    Espeak(String),
}

impl VoiceSpec {
    /// The bundled Piper voice.
    pub fn default_piper() -> Self {
        Self::Piper(PiperVoice::default_model())
    }
}

impl FromStr for VoiceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "piper" {
            return Ok(Self::default_piper());
        }
        if let Some(path) = s.strip_prefix("piper:") {
            return Ok(Self::Piper(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix("espeak:").filter(|n| !n.is_empty()) {
            return Ok(Self::Espeak(name.to_string()));
        }
        if s.ends_with(".onnx") {
            return Ok(Self::Piper(PathBuf::from(s)));
        }
        Err(format!(
            "unknown voice `{s}`: expected `piper` (the bundled voice), `piper:PATH` or a Piper \
             `.onnx` file, or `espeak:NAME` (an espeak-ng voice, e.g. espeak:de)"
        ))
    }
}

impl fmt::Display for VoiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Piper(p) if *p == PiperVoice::default_model() => f.write_str("piper"),
            Self::Piper(p) => write!(f, "piper:{}", p.display()),
            Self::Espeak(name) => write!(f, "espeak:{name}"),
        }
    }
}

/// `KEY=VOICE`, as `--voice` and `--character` take it.
pub fn parse_assignment(s: &str) -> Result<(String, VoiceSpec), String> {
    let (key, voice) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VOICE, e.g. de=espeak:de"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("`{s}`: the name before `=` is empty"));
    }
    Ok((key.to_string(), voice.parse()?))
}

/// The voices of a job: per language, per character, and the language of unmarked cues.
#[derive(Clone, Debug)]
pub struct VoiceMap {
    pub default_lang: String,
    pub by_lang: BTreeMap<String, VoiceSpec>,
    /// By `NAME` or `LANG:NAME` (the latter wins for cues in that language).
    pub by_character: BTreeMap<String, VoiceSpec>,
}

impl VoiceMap {
    /// The voice for a cue in `lang` spoken by `character`; `Err` says what has no voice.
    pub fn choose(&self, lang: &str, character: Option<&str>) -> Result<VoiceSpec, String> {
        if let Some(name) = character {
            return self
                .by_character
                .get(&format!("{lang}:{name}"))
                .or_else(|| self.by_character.get(name))
                .cloned()
                .ok_or_else(|| format!("no voice for character `{name}`"));
        }
        if let Some(v) = self.by_lang.get(lang) {
            return Ok(v.clone());
        }
        Ok(if lang == "en" || lang.starts_with("en-") {
            VoiceSpec::default_piper()
        } else {
            VoiceSpec::Espeak(lang.to_string())
        })
    }

    /// The voices that can be named, for error messages.
    pub fn available(&self) -> String {
        let mut out = vec![format!(
            "unmarked cues are `{}`; en → piper, any other language → espeak:LANG unless \
             --voice LANG=VOICE says otherwise",
            self.default_lang
        )];
        for (lang, v) in &self.by_lang {
            out.push(format!("language {lang} → {v}"));
        }
        for (name, v) in &self.by_character {
            out.push(format!("character {name} → {v}"));
        }
        if self.by_character.is_empty() {
            out.push("no characters (give them with --character NAME=VOICE)".into());
        }
        out.join("; ")
    }
}

/// A cue's audio: mono samples at `rate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    pub samples: Vec<f32>,
    pub rate: u32,
}

/// A voice ready to speak.
#[derive(Clone)]
pub enum Voice {
    Piper {
        /// Instance 0, for phonemes and the voice's settings; runs go to the scheduler.
        voice: PiperVoice,
        scheduler: Scheduler<PiperRuns>,
        /// Name, size and modification time of the model file, for the cache key.
        version: String,
    },
    Espeak {
        name: String,
        rate: u32,
    },
}

/// Silence between the sentences of one cue.
const SENTENCE_GAP_MS: u64 = 150;
/// espeak-ng's speaking rate at speed 1 (words per minute).
const ESPEAK_WPM: f32 = 175.0;

impl Voice {
    /// Loads `spec`: a Piper voice's scheduler (shared with the rest of the process), or
    /// checks that espeak-ng has the voice.
    pub fn load(spec: &VoiceSpec) -> Result<Self, String> {
        match spec {
            VoiceSpec::Piper(path) => {
                // The scheduler loads its copies in parallel; copy 0 is then the pool's.
                let scheduler = piper_scheduler(path).map_err(|e| e.to_string())?;
                let voice = PiperVoice::load_instance(path, 1, 0).map_err(|e| e.to_string())?;
                Ok(Self::Piper {
                    voice,
                    scheduler,
                    version: file_version(path),
                })
            }
            VoiceSpec::Espeak(name) => {
                let mut espeak = Espeak::lock().map_err(|e| e.to_string())?;
                espeak.set_voice(name).map_err(|e| e.to_string())?;
                Ok(Self::Espeak {
                    name: name.clone(),
                    rate: espeak.sample_rate(),
                })
            }
        }
    }

    /// What identifies this voice's output in the cache: the voice, its model's version and
    /// every setting that changes the samples.
    pub fn cache_id(&self) -> String {
        match self {
            Self::Piper { voice, version, .. } => {
                let s = voice.default_scales();
                format!(
                    "piper|{version}|{}|{}|{}|gap{SENTENCE_GAP_MS}",
                    s.noise_scale, s.length_scale, s.noise_w
                )
            }
            Self::Espeak { name, rate } => format!("espeak|{name}|{rate}|{ESPEAK_WPM}"),
        }
    }

    /// Whether the same text always gives the same samples.
    pub fn repeatable(&self) -> bool {
        match self {
            Self::Piper { voice, .. } => voice.repeatable(),
            Self::Espeak { .. } => true,
        }
    }

    /// Speaks `text` at `speed` (1 natural, 1.2 a fifth faster, same pitch). `job` names the
    /// job to the scheduler, which serves jobs round-robin.
    pub async fn speak(&self, job: &Arc<str>, text: &str, speed: f32) -> Result<Clip, String> {
        match self {
            Self::Piper {
                voice, scheduler, ..
            } => {
                let prepared = {
                    let (voice, text) = (voice.clone(), text.to_string());
                    tokio::task::spawn_blocking(move || voice.prepare(&text))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?
                };
                if prepared.sentences.is_empty() {
                    return Err(nothing_to_say(text, &prepared.unspoken));
                }
                let defaults = voice.default_scales();
                let scales = Scales {
                    length_scale: defaults.length_scale / speed,
                    ..defaults
                };
                let ids = prepared.sentences.into_iter().map(|s| s.ids).collect();
                let audio = scheduler
                    .submit(job, (ids, scales))
                    .await
                    .map_err(|e| e.to_string())?;
                let rate = voice.config().sample_rate;
                Ok(Clip {
                    samples: join_sentences(audio, rate),
                    rate,
                })
            }
            Self::Espeak { name, rate } => {
                let (name, rate, text) = (name.clone(), *rate, text.to_string());
                tokio::task::spawn_blocking(move || {
                    let mut unspoken = Vec::new();
                    let scripts = tts::language_scripts(&name);
                    let sentences: Vec<String> = tts::split_sentences(&text)
                        .iter()
                        .filter_map(|s| tts::speakable(s, scripts, &mut unspoken))
                        .collect();
                    if sentences.is_empty() {
                        return Err(nothing_to_say(&text, &unspoken));
                    }
                    // A fresh copy of the library for each cue: the same text always gives the
                    // same samples, and cues are spoken in parallel.
                    let mut espeak = PrivateEspeak::open().map_err(|e| e.to_string())?;
                    espeak.set_voice(&name).map_err(|e| e.to_string())?;
                    let wpm = (ESPEAK_WPM * speed).round() as u32;
                    let samples = espeak
                        .synthesize(&sentences.join(" "), wpm, 50)
                        .map_err(|e| e.to_string())?;
                    Ok(Clip { samples, rate })
                })
                .await
                .map_err(|e| e.to_string())?
            }
        }
    }
}

fn nothing_to_say(text: &str, unspoken: &[tts::Unspoken]) -> String {
    let why: Vec<String> = unspoken.iter().map(ToString::to_string).collect();
    format!(
        "nothing the voice can say in {:?}{}",
        tts::excerpt(text, 60),
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join("; "))
        }
    )
}

/// A cue's sentences one after another with a short pause between.
fn join_sentences(sentences: Vec<Vec<f32>>, rate: u32) -> Vec<f32> {
    let gap = (u64::from(rate) * SENTENCE_GAP_MS / 1000) as usize;
    let mut out = Vec::new();
    for (i, s) in sentences.into_iter().enumerate() {
        if i > 0 {
            out.resize(out.len() + gap, 0.0);
        }
        out.extend(s);
    }
    out
}

/// Name, size and modification time of a file: changes when the file is replaced.
fn file_version(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{name}:{}:{mtime:x}", meta.map_or(0, |m| m.len()))
}

/// One instance of a Piper voice on a scheduler thread: a request is a cue's sentences (as
/// phoneme ids) and its scales; the answer is each sentence's audio.
pub struct PiperRuns(PiperVoice);

impl BatchModel for PiperRuns {
    type Request = (Vec<Vec<i64>>, Scales);
    type Response = Vec<Vec<f32>>;
    type Error = ModelError;

    fn run(&mut self, batch: Vec<Self::Request>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        for (i, (sentences, scales)) in batch.into_iter().enumerate() {
            let audio = sentences
                .iter()
                .map(|ids| self.0.synthesize(ids, scales))
                .collect();
            reply(i, audio);
        }
    }
}

/// Instances of a Piper voice: one per core, each running on one thread, so that as many cues
/// as there are cores are spoken at once without oversubscribing them.
pub fn instances() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The process-wide scheduler of the Piper voice at `path`, started (its instances loaded in
/// parallel) on first use.
fn piper_scheduler(path: &Path) -> Result<Scheduler<PiperRuns>, ModelError> {
    let n = instances();
    let file = path.to_path_buf();
    models::shared_scheduler(path, &format!("dub,instances={n}"), move || {
        let loads: Vec<_> = (0..n)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || PiperVoice::load_instance(&file, 1, i))
            })
            .collect();
        let mut runs = Vec::with_capacity(n);
        for load in loads {
            let voice = load
                .join()
                .map_err(|_| load_error(&file, "loading panicked"))?
                .map_err(|e| load_error(&file, e))?;
            runs.push(PiperRuns(voice));
        }
        let name = file
            .file_stem()
            .map_or_else(|| "piper".into(), |s| s.to_string_lossy());
        let config = SchedulerConfig {
            max_batch: 1,
            max_wait_us: 0,
            max_queue: 100_000,
        };
        Ok(Scheduler::new(&format!("dub-{name}"), runs, config))
    })
}

fn load_error(path: &Path, e: impl fmt::Display) -> ModelError {
    ModelError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_are_named_and_chosen() {
        assert_eq!("piper".parse(), Ok(VoiceSpec::default_piper()));
        assert_eq!("espeak:de".parse(), Ok(VoiceSpec::Espeak("de".into())));
        assert_eq!("v/x.onnx".parse(), Ok(VoiceSpec::Piper("v/x.onnx".into())));
        let e = "robot".parse::<VoiceSpec>().unwrap_err();
        assert!(e.contains("espeak:NAME"), "{e}");
        assert!(parse_assignment("de").is_err());
        let map = VoiceMap {
            default_lang: "en".into(),
            by_lang: [("fr".to_string(), VoiceSpec::Espeak("fr-fr".into()))].into(),
            by_character: [
                ("Alice".to_string(), VoiceSpec::Espeak("en-us+f3".into())),
                ("de:Alice".to_string(), VoiceSpec::Espeak("de+f3".into())),
            ]
            .into(),
        };
        assert_eq!(map.choose("en", None), Ok(VoiceSpec::default_piper()));
        assert_eq!(map.choose("de", None), Ok(VoiceSpec::Espeak("de".into())));
        assert_eq!(
            map.choose("fr", None),
            Ok(VoiceSpec::Espeak("fr-fr".into()))
        );
        assert_eq!(
            map.choose("en", Some("Alice")),
            Ok(VoiceSpec::Espeak("en-us+f3".into()))
        );
        assert_eq!(
            map.choose("de", Some("Alice")),
            Ok(VoiceSpec::Espeak("de+f3".into()))
        );
        assert!(map.choose("en", Some("Bob")).unwrap_err().contains("`Bob`"));
    }

    #[test]
    fn sentences_are_joined_with_a_pause() {
        let joined = join_sentences(vec![vec![1.0; 3], vec![2.0; 2]], 1000);
        assert_eq!(joined.len(), 3 + 150 + 2);
        assert_eq!(joined[153], 2.0);
    }
}
