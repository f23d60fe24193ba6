//! Phonemisation glue: text to the model's input ids by way of espeak-ng's IPA, written the way
//! Piper's voices were trained (clause punctuation put back, accents decomposed).

use super::config::VoiceConfig;
use crate::espeak::Espeak;
use crate::tts::{self, TtsError, Unspoken};

/// One sentence ready for the model.
#[derive(Clone, Debug)]
pub struct PreparedSentence {
    /// The sentence as it will be spoken (after cleaning).
    pub text: String,
    /// Its phonemes, punctuation included.
    pub phonemes: String,
    pub ids: Vec<i64>,
}

/// An input split, cleaned and phonemised.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    pub sentences: Vec<PreparedSentence>,
    /// What will not be spoken, and why.
    pub unspoken: Vec<Unspoken>,
}

/// [`super::PiperVoice::prepare`] for the voice of `config`.
pub(super) fn prepare(config: &VoiceConfig, text: &str) -> Result<Prepared, TtsError> {
    let mut prepared = Prepared::default();
    let sentences = tts::split_sentences(text);
    if sentences.is_empty() {
        return Ok(prepared);
    }
    let mut espeak = Espeak::lock()?;
    espeak.set_voice(&config.espeak_voice)?;
    let scripts = config.scripts();
    for sentence in sentences {
        let Some(text) = tts::speakable(&sentence, scripts, &mut prepared.unspoken) else {
            continue;
        };
        let phonemes = phonemize(&mut espeak, &text)?;
        let (ids, missing) = config.phoneme_ids(&phonemes);
        if !missing.is_empty() {
            tracing::warn!(
                sentence = %tts::excerpt(&text, 60),
                missing = %missing.iter().collect::<String>(),
                "phonemes unknown to the voice skipped"
            );
        }
        match ids {
            Some(ids) => prepared.sentences.push(PreparedSentence {
                text,
                phonemes,
                ids,
            }),
            None => prepared.unspoken.push(Unspoken {
                text,
                reason: tts::NO_PHONEMES,
            }),
        }
    }
    Ok(prepared)
}

/// A sentence's phonemes, clause by clause with each clause's punctuation put back.
fn phonemize(espeak: &mut Espeak, sentence: &str) -> Result<String, TtsError> {
    let clauses = espeak.phonemize(sentence)?;
    let mut phonemes = String::new();
    for (k, clause) in clauses.iter().enumerate() {
        phonemes.push_str(strip_language_flags(&clause.phonemes).trim());
        if let Some(t) = clause.terminator {
            phonemes.push(t);
        }
        if k + 1 < clauses.len() {
            phonemes.push(' ');
        }
    }
    Ok(phonemes)
}

/// Removes espeak-ng's language switch marks ("(fr)") that surround words it read in another
/// language; they are not phonemes.
fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut rest = phonemes;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_flags_are_not_phonemes() {
        assert_eq!(strip_language_flags("(fr)bɔ̃ʒuʁ(en) wˈɜːld"), "bɔ̃ʒuʁ wˈɜːld");
        assert_eq!(strip_language_flags("a(b"), "a(b");
    }
}
