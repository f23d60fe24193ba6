//! A voice's `.onnx.json`: its sample rate, default scales, espeak-ng voice and the map from
//! phoneme characters to model input ids, applied as the voices were trained.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::models::{self, ModelError};
use crate::tts::{self, Script};

/// What a voice's `.onnx.json` says that synthesis needs.
#[derive(Clone, Debug)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    /// espeak-ng voice that phonemises for this model ("en-us").
    pub espeak_voice: String,
    /// Language code of the voice ("en_US"), which decides the scripts it reads.
    pub language: String,
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
    ids: HashMap<char, Vec<i64>>,
}

/// The raw config file; only the fields we use.
#[derive(Deserialize)]
struct ConfigFile {
    audio: AudioSection,
    #[serde(default)]
    espeak: Option<EspeakSection>,
    #[serde(default)]
    inference: InferenceSection,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    language: Option<LanguageSection>,
}

#[derive(Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakSection {
    voice: String,
}

#[derive(Deserialize)]
#[serde(default)]
struct InferenceSection {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceSection {
    /// Piper's training defaults, for configs that leave them out.
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

#[derive(Deserialize)]
struct LanguageSection {
    code: String,
}

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

impl VoiceConfig {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        models::require_file(path)?;
        let bad = |reason: String| ModelError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a Piper voice config: {e}")))?;
        if let Some(t) = file.phoneme_type.as_deref()
            && t != "espeak"
        {
            return Err(bad(format!(
                "phoneme_type {t:?} is not supported (only \"espeak\")"
            )));
        }
        let mut ids = HashMap::new();
        for (key, value) in file.phoneme_id_map {
            let mut chars = key.chars();
            if let (Some(c), None) = (chars.next(), chars.next())
                && !value.is_empty()
            {
                ids.insert(c, value);
            }
        }
        for c in [BOS, EOS, PAD] {
            if !ids.contains_key(&c) {
                return Err(bad(format!("phoneme_id_map has no {c:?}")));
            }
        }
        if file.audio.sample_rate == 0 {
            return Err(bad("sample_rate is 0".into()));
        }
        let espeak_voice = file
            .espeak
            .map(|e| e.voice)
            .ok_or_else(|| bad("no espeak voice named".into()))?;
        let language = file
            .language
            .map(|l| l.code)
            .unwrap_or_else(|| espeak_voice.clone());
        Ok(Self {
            sample_rate: file.audio.sample_rate,
            espeak_voice,
            language,
            noise_scale: file.inference.noise_scale,
            length_scale: file.inference.length_scale,
            noise_w: file.inference.noise_w,
            ids,
        })
    }

    /// Model input ids for a sentence's phonemes, and the phonemes the voice does not know
    /// (skipped, as Piper does). `None` when nothing but punctuation and spaces is left.
    pub fn phoneme_ids(&self, phonemes: &str) -> (Option<Vec<i64>>, Vec<char>) {
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 3);
        let mut missing = Vec::new();
        let mut voiced = false;
        let id = |c: char| self.ids.get(&c).map(Vec::as_slice).unwrap_or(&[]);
        out.extend_from_slice(id(BOS));
        out.extend_from_slice(id(PAD));
        let mut push = |c: char, out: &mut Vec<i64>| match self.ids.get(&c) {
            Some(ids) => {
                out.extend_from_slice(ids);
                out.extend_from_slice(id(PAD));
                voiced |= !c.is_whitespace() && !is_punctuation(c);
            }
            None => {
                if !missing.contains(&c) {
                    missing.push(c);
                }
            }
        };
        for c in phonemes.chars() {
            match decompose(c) {
                Some((base, mark)) => {
                    push(base, &mut out);
                    push(mark, &mut out);
                }
                None => push(c, &mut out),
            }
        }
        out.extend_from_slice(id(EOS));
        (voiced.then_some(out), missing)
    }

    /// The scripts this voice reads (`None`: unknown language, nothing is removed).
    pub fn scripts(&self) -> Option<&'static [Script]> {
        tts::language_scripts(&self.language)
    }
}

/// Phoneme characters that are punctuation: on their own they are nothing to say.
fn is_punctuation(c: char) -> bool {
    matches!(
        c,
        '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '"' | '(' | ')' | '-'
    )
}

/// Canonical decomposition of the precomposed Latin letters espeak-ng may write in IPA output
/// (`ç` in German, nasal vowels in Portuguese): Piper splits phonemes into NFD code points,
/// so the voices know the base letter and the combining mark, not the precomposed form.
fn decompose(c: char) -> Option<(char, char)> {
    const GRAVE: char = '\u{300}';
    const ACUTE: char = '\u{301}';
    const CIRCUMFLEX: char = '\u{302}';
    const TILDE: char = '\u{303}';
    const DIAERESIS: char = '\u{308}';
    const RING: char = '\u{30A}';
    const CEDILLA: char = '\u{327}';
    let pair = match c {
        'ç' => ('c', CEDILLA),
        'Ç' => ('C', CEDILLA),
        'ã' => ('a', TILDE),
        'õ' => ('o', TILDE),
        'ñ' => ('n', TILDE),
        'ẽ' => ('e', TILDE),
        'ĩ' => ('i', TILDE),
        'ũ' => ('u', TILDE),
        'ỹ' => ('y', TILDE),
        'à' => ('a', GRAVE),
        'è' => ('e', GRAVE),
        'ì' => ('i', GRAVE),
        'ò' => ('o', GRAVE),
        'ù' => ('u', GRAVE),
        'á' => ('a', ACUTE),
        'é' => ('e', ACUTE),
        'í' => ('i', ACUTE),
        'ó' => ('o', ACUTE),
        'ú' => ('u', ACUTE),
        'ý' => ('y', ACUTE),
        'â' => ('a', CIRCUMFLEX),
        'ê' => ('e', CIRCUMFLEX),
        'î' => ('i', CIRCUMFLEX),
        'ô' => ('o', CIRCUMFLEX),
        'û' => ('u', CIRCUMFLEX),
        'ä' => ('a', DIAERESIS),
        'ë' => ('e', DIAERESIS),
        'ï' => ('i', DIAERESIS),
        'ö' => ('o', DIAERESIS),
        'ü' => ('u', DIAERESIS),
        'ÿ' => ('y', DIAERESIS),
        'å' => ('a', RING),
        _ => return None,
    };
    Some(pair)
}

/// Where Piper keeps a model's config: beside it, with `.json` appended.
pub fn config_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ids: &[(&str, i64)]) -> VoiceConfig {
        VoiceConfig {
            sample_rate: 22_050,
            espeak_voice: "en-us".into(),
            language: "en_US".into(),
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
            ids: ids
                .iter()
                .map(|&(k, v)| (k.chars().next().unwrap(), vec![v]))
                .collect(),
        }
    }

    #[test]
    fn ids_are_framed_and_padded_like_piper() {
        let c = config(&[
            ("_", 0),
            ("^", 1),
            ("$", 2),
            (" ", 3),
            (".", 10),
            ("h", 20),
            ("i", 21),
            ("c", 16),
            ("\u{327}", 140),
        ]);
        let (ids, missing) = c.phoneme_ids("hi.");
        assert_eq!(ids.unwrap(), [1, 0, 20, 0, 21, 0, 10, 0, 2]);
        assert!(missing.is_empty());
        // Precomposed letters go in as base plus combining mark; unknown phonemes are skipped.
        let (ids, missing) = c.phoneme_ids("çx");
        assert_eq!(ids.unwrap(), [1, 0, 16, 0, 140, 0, 2]);
        assert_eq!(missing, ['x']);
        // Punctuation and spaces alone are nothing to say.
        assert_eq!(c.phoneme_ids(". .").0, None);
    }

    #[test]
    fn the_config_sits_beside_the_model() {
        assert_eq!(
            config_path(Path::new("/m/v.onnx")),
            PathBuf::from("/m/v.onnx.json")
        );
    }

    #[test]
    fn a_config_that_is_not_a_voice_is_reported() {
        let path = std::env::temp_dir().join(format!("not-a-voice-{}.json", std::process::id()));
        std::fs::write(&path, "{\"audio\": {}}").unwrap();
        let err = VoiceConfig::load(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.to_string().starts_with(&format!(
                "could not load model {}: not a Piper voice config",
                path.display()
            )),
            "{err}"
        );
    }
}
