//! What the speech synthesis nodes share: sentence splitting, which characters a voice can read
//! at all, and the way from one input packet to its audio outputs ([`speak_input`]).
//!
//! Sentences are split here rather than by espeak-ng, so each one can be synthesised and sent as
//! soon as it is ready and its exact text is known for reports. Characters a voice cannot read
//! are removed before phonemisation: espeak-ng would otherwise spell them ("Chinese letter",
//! letter names for Cyrillic, names of emoji), which no listener wants. Every removal is
//! reported; an input left with nothing to say is an error (see the nodes for how it surfaces).

use std::fmt;
use std::sync::Arc;

use remotemedia_audio::frame::{Clock, fatal};
use remotemedia_core::{NodeError, Outputs, Packet, RuntimeData};

/// A sentence longer than this (in characters) is cut at clause boundaries: the first audio is
/// sooner and no single model run grows without bound. Piper handles this length well.
pub const LONG_SENTENCE_CHARS: usize = 220;

/// Words ending in a period that do not end a sentence (compared without the period, lower case).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "corp", "mt", "no", "fig", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Splits text into sentences (and over-long sentences into clause groups), in order, trimmed,
/// without empty pieces. A paragraph break always ends a sentence; a single line break does not
/// (hard-wrapped text stays whole).
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in paragraphs(text) {
        let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        for sentence in sentence_ends(&flat) {
            split_long(sentence, &mut out);
        }
    }
    out
}

/// Paragraphs: text between blank lines.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Splits single-spaced text after `.`, `!`, `?` or `…` (with any closing quotes or brackets)
/// that is followed by a space, unless the word is a known abbreviation or an initial, or the
/// next word starts in lower case.
fn sentence_ends(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if !matches!(c, '.' | '!' | '?' | '…') {
            i += 1;
            continue;
        }
        // The whole run of terminal punctuation and closing marks.
        let mut j = i + 1;
        while j < chars.len() && (matches!(chars[j].1, '.' | '!' | '?' | '…') || closes(chars[j].1))
        {
            j += 1;
        }
        let at_space = j < chars.len() && chars[j].1 == ' ';
        if !at_space {
            i = j;
            continue;
        }
        let next = chars.get(j + 1).map(|&(_, c)| c);
        let word = last_word(&text[start..chars[i].0]);
        let abbreviation = c == '.'
            && j == i + 1
            && (ABBREVIATIONS.contains(&word.to_lowercase().as_str())
                || (word.chars().count() == 1 && word.chars().all(char::is_uppercase)));
        let continues = next.is_some_and(char::is_lowercase);
        if !abbreviation && !continues {
            let end = chars[j].0;
            out.push(text[start..end].trim());
            start = end;
        }
        i = j;
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

fn closes(c: char) -> bool {
    "\"')]}»”’".contains(c)
}

/// The word before a period, without opening quotes or brackets.
fn last_word(text: &str) -> &str {
    let word = text.rsplit(' ').next().unwrap_or("");
    word.trim_start_matches(|c: char| "\"'([{«“‘".contains(c))
}

/// Appends `sentence`, cut at clause punctuation (then between words) when it is too long.
fn split_long(sentence: &str, out: &mut Vec<String>) {
    if sentence.chars().count() <= LONG_SENTENCE_CHARS {
        out.push(sentence.to_string());
        return;
    }
    let mut clauses: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut prev = ' ';
    for (i, c) in sentence.char_indices() {
        if c == ' ' && matches!(prev, ',' | ';' | ':' | '—' | '–') {
            clauses.push(&sentence[start..i]);
            start = i + 1;
        }
        prev = c;
    }
    clauses.push(&sentence[start..]);
    // Pack clauses greedily into pieces of at most LONG_SENTENCE_CHARS.
    let mut piece = String::new();
    for clause in clauses.into_iter().flat_map(split_words) {
        let len = piece.chars().count();
        if len > 0 && len + 1 + clause.chars().count() > LONG_SENTENCE_CHARS {
            out.push(std::mem::take(&mut piece));
        }
        if !piece.is_empty() {
            piece.push(' ');
        }
        piece.push_str(clause);
    }
    if !piece.trim().is_empty() {
        out.push(piece);
    }
}

/// A clause cut between words into pieces of at most [`LONG_SENTENCE_CHARS`] characters.
fn split_words(clause: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = clause.trim();
    while rest.chars().count() > LONG_SENTENCE_CHARS {
        let limit = rest
            .char_indices()
            .nth(LONG_SENTENCE_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit].rfind(' ').filter(|&i| i > 0).unwrap_or(limit);
        out.push(rest[..cut].trim());
        rest = rest[cut..].trim();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Writing systems, as far as telling a voice's own script from a foreign one needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    Latin,
    Greek,
    Cyrillic,
    Armenian,
    Hebrew,
    Arabic,
    Devanagari,
    Bengali,
    Gurmukhi,
    Gujarati,
    Oriya,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Sinhala,
    Thai,
    Lao,
    Tibetan,
    Myanmar,
    Georgian,
    Hangul,
    Ethiopic,
    Khmer,
    Han,
    Kana,
    /// A letter of any other script.
    Other,
}

impl Script {
    /// The script of a letter (`None` for anything that is not a letter).
    pub fn of(c: char) -> Option<Script> {
        if !c.is_alphabetic() {
            return None;
        }
        let u = u32::from(c);
        Some(match u {
            0x41..=0x5A | 0x61..=0x7A | 0xAA | 0xBA | 0xC0..=0x24F | 0x250..=0x2AF => Script::Latin,
            0x1D00..=0x1DBF | 0x1E00..=0x1EFF | 0x2C60..=0x2C7F | 0xA720..=0xA7FF => Script::Latin,
            0xFF21..=0xFF3A | 0xFF41..=0xFF5A => Script::Latin,
            0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
            0x400..=0x52F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Script::Cyrillic,
            0x530..=0x58F => Script::Armenian,
            0x590..=0x5FF => Script::Hebrew,
            0x600..=0x6FF | 0x750..=0x77F | 0x8A0..=0x8FF | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => {
                Script::Arabic
            }
            0x900..=0x97F => Script::Devanagari,
            0x980..=0x9FF => Script::Bengali,
            0xA00..=0xA7F => Script::Gurmukhi,
            0xA80..=0xAFF => Script::Gujarati,
            0xB00..=0xB7F => Script::Oriya,
            0xB80..=0xBFF => Script::Tamil,
            0xC00..=0xC7F => Script::Telugu,
            0xC80..=0xCFF => Script::Kannada,
            0xD00..=0xD7F => Script::Malayalam,
            0xD80..=0xDFF => Script::Sinhala,
            0xE00..=0xE7F => Script::Thai,
            0xE80..=0xEFF => Script::Lao,
            0xF00..=0xFFF => Script::Tibetan,
            0x1000..=0x109F => Script::Myanmar,
            0x10A0..=0x10FF | 0x1C90..=0x1CBF => Script::Georgian,
            0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
            0x1200..=0x139F => Script::Ethiopic,
            0x1780..=0x17FF => Script::Khmer,
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Script::Kana,
            0x2E80..=0x2FDF | 0x3005..=0x3007 | 0x3021..=0x3029 | 0x3400..=0x4DBF => Script::Han,
            0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F => Script::Han,
            _ => Script::Other,
        })
    }
}

/// The scripts a voice of `language` reads, by its code ("en", "en-us", "pt_BR", "cmn"), or
/// `None` when the language is not known here (then nothing is removed). Voices of languages
/// not written in Latin also take Latin, which espeak-ng reads as English.
pub fn language_scripts(language: &str) -> Option<&'static [Script]> {
    use Script::*;
    let family = language
        .split(['-', '_', '+'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    Some(match family.as_str() {
        "af" | "an" | "az" | "ca" | "cs" | "cy" | "da" | "de" | "en" | "eo" | "es" | "et"
        | "eu" | "fi" | "fo" | "fr" | "ga" | "gd" | "gl" | "hr" | "ht" | "hu" | "id" | "is"
        | "it" | "la" | "lb" | "lt" | "lv" | "mi" | "ms" | "mt" | "nb" | "nl" | "nn" | "no"
        | "om" | "pl" | "pt" | "qu" | "ro" | "sk" | "sl" | "sq" | "sv" | "sw" | "tn" | "tk"
        | "tr" | "uz" | "vi" | "yo" | "zu" => &[Latin],
        "ru" | "uk" | "be" | "bg" | "mk" | "sr" | "kk" | "ky" | "tt" | "ba" | "cv" | "mn" => {
            &[Cyrillic, Latin]
        }
        "el" | "grc" => &[Greek, Latin],
        "hy" => &[Armenian, Latin],
        "he" => &[Hebrew, Latin],
        "ar" | "fa" | "ur" | "ps" | "sd" | "ug" => &[Arabic, Latin],
        "hi" | "ne" | "mr" | "sa" | "kok" | "mai" => &[Devanagari, Latin],
        "bn" | "as" | "bpy" => &[Bengali, Latin],
        "pa" => &[Gurmukhi, Latin],
        "gu" => &[Gujarati, Latin],
        "or" => &[Oriya, Latin],
        "ta" => &[Tamil, Latin],
        "te" => &[Telugu, Latin],
        "kn" => &[Kannada, Latin],
        "ml" => &[Malayalam, Latin],
        "si" => &[Sinhala, Latin],
        "th" => &[Thai, Latin],
        "lo" => &[Lao, Latin],
        "my" => &[Myanmar, Latin],
        "ka" => &[Georgian, Latin],
        "am" => &[Ethiopic, Latin],
        "km" => &[Khmer, Latin],
        "zh" | "cmn" | "yue" | "hak" => &[Han, Latin],
        "ja" => &[Han, Kana, Latin],
        "ko" => &[Hangul, Han, Latin],
        _ => return None,
    })
}

/// Emoji and pictographs: espeak-ng reads their names aloud, which is never what a reply meant.
fn is_pictograph(c: char) -> bool {
    matches!(u32::from(c),
        0x1F000..=0x1FAFF      // emoticons, pictographs, transport, flags, supplemental symbols
        | 0x2600..=0x27BF      // miscellaneous symbols, dingbats
        | 0x2B00..=0x2BFF      // arrows and stars used as emoji
        | 0x231A..=0x231B | 0x23E9..=0x23FA
        | 0xFE00..=0xFE0F      // variation selectors
        | 0x200D | 0x20E3      // zero-width joiner, keycap
        | 0xE0000..=0xE007F) // tags
}

/// Text with the characters its voice cannot read taken out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// What is left to speak.
    pub text: String,
    /// The removed runs, in order, as they were written.
    pub removed: Vec<String>,
}

impl Cleaned {
    /// True when something is left that a voice can say (a letter or a digit); punctuation
    /// alone is not.
    pub fn speakable(&self) -> bool {
        self.text.chars().any(char::is_alphanumeric)
    }
}

/// `sentence` without what a voice reading `scripts` cannot read (reported in `unspoken`), or
/// `None` when nothing speakable is left.
pub fn speakable(
    sentence: &str,
    scripts: Option<&[Script]>,
    unspoken: &mut Vec<Unspoken>,
) -> Option<String> {
    let cleaned = clean(sentence, scripts);
    if !cleaned.removed.is_empty() {
        unspoken.push(Unspoken {
            text: cleaned.removed.join(" "),
            reason: UNSUPPORTED_SCRIPT,
        });
    }
    cleaned.speakable().then_some(cleaned.text)
}

/// Removes letters of scripts the voice does not read (each run replaced by one space) and
/// emoji; `scripts` of `None` keeps every letter.
pub fn clean(text: &str, scripts: Option<&[Script]>) -> Cleaned {
    let mut out = Cleaned::default();
    let mut run = String::new();
    for c in text.chars() {
        let foreign = is_pictograph(c)
            || matches!((Script::of(c), scripts), (Some(s), Some(ok)) if !ok.contains(&s));
        // Combining marks on a removed letter go with it.
        let joins_run = !run.is_empty() && is_combining(c);
        if foreign || joins_run {
            if run.is_empty() && !out.text.ends_with(' ') && !out.text.is_empty() {
                out.text.push(' ');
            }
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            out.removed.push(std::mem::take(&mut run));
        }
        out.text.push(c);
    }
    if !run.is_empty() {
        out.removed.push(run);
    }
    out.text = out.text.split_whitespace().collect::<Vec<_>>().join(" ");
    out
}

fn is_combining(c: char) -> bool {
    matches!(u32::from(c), 0x300..=0x36F | 0x1AB0..=0x1AFF | 0x20D0..=0x20FF)
}

/// True for text with nothing to say in it at all: only whitespace and punctuation. Such input
/// is skipped without a report (a stray "..." from a streaming reply is not an error).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || c.is_ascii_punctuation()
            || matches!(
                c,
                '…' | '—' | '–' | '“' | '”' | '‘' | '’' | '«' | '»' | '¡' | '¿'
            )
    })
}

/// Text shortened for a report: at most `max` characters, with an ellipsis when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Why part or all of an input will not be spoken, for logs and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unspoken {
    /// The sentence, or the removed characters, as written.
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for Unspoken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", excerpt(&self.text, 60), self.reason)
    }
}

/// Why text could not be turned into speech.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TtsError {
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Espeak(#[from] crate::espeak::EspeakError),
}

/// The rejection for an input with nothing a voice can say: names the text and every reason,
/// is reported to the client and skips the input (the session goes on).
pub fn nothing_to_say(node: &str, text: &str, unspoken: &[Unspoken]) -> NodeError {
    let reasons: Vec<String> = unspoken.iter().map(ToString::to_string).collect();
    NodeError::rejected(format!(
        "{node}: nothing to say in {:?}: {}",
        excerpt(text, 80),
        reasons.join("; ")
    ))
}

/// Reason for characters removed by [`clean`].
pub const UNSUPPORTED_SCRIPT: &str = "a script or symbols this voice cannot read";
/// Reason for a sentence that espeak-ng turned into nothing the voice knows.
pub const NO_PHONEMES: &str = "no phonemes this voice knows";

/// What a voice made of one input.
pub struct Spoken {
    /// Mono audio, one output each, in order.
    pub audio: Vec<Vec<f32>>,
    /// Rate of `audio` (not read when there is none).
    pub sample_rate: u32,
    /// What will not be spoken, and why.
    pub unspoken: Vec<Unspoken>,
}

/// One input of a TTS node, the same for every voice: blank input is skipped; `speak` runs off
/// the reactor; what it could not read is logged; input with nothing speakable is rejected
/// ([`nothing_to_say`]); each audio piece goes out stamped after the audio before it, with
/// `silence` samples after each piece but the last.
pub async fn speak_input(
    node: &str,
    input: &Packet,
    out: &mut Outputs,
    silence: usize,
    speak: impl FnOnce(&str) -> Result<Spoken, TtsError> + Send + 'static,
) -> Result<(), NodeError> {
    let Some(frame) = input.data.as_text() else {
        return Err(NodeError::unsupported(node, &input.data));
    };
    if is_blank(&frame.text) {
        return Ok(());
    }
    let text = Arc::clone(&frame.text);
    let spoken = remotemedia_core::rt::block_here(move || speak(&text))
        .await
        .map_err(|e| fatal(node, e))?
        .map_err(|e| fatal(node, e))?;
    for u in &spoken.unspoken {
        tracing::warn!(node, "not spoken: {u}");
    }
    if spoken.audio.is_empty() {
        if spoken.unspoken.is_empty() {
            return Ok(());
        }
        return Err(nothing_to_say(node, &frame.text, &spoken.unspoken));
    }
    let clock = Clock::new(input.timestamp, spoken.sample_rate);
    let n = spoken.audio.len();
    let mut emitted = 0u64;
    for (i, mut samples) in spoken.audio.into_iter().enumerate() {
        if i + 1 < n {
            samples.resize(samples.len() + silence, 0.0);
        }
        if samples.is_empty() {
            continue;
        }
        let at = clock.time(emitted);
        emitted += samples.len() as u64;
        out.push_at(RuntimeData::audio(samples, spoken.sample_rate, 1), at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_terminal_punctuation() {
        assert_eq!(
            split_sentences("Hello world. This is a test."),
            ["Hello world.", "This is a test."]
        );
        assert_eq!(
            split_sentences("Really?! Yes… \"Quoted.\" Done"),
            ["Really?!", "Yes…", "\"Quoted.\"", "Done"]
        );
    }

    #[test]
    fn abbreviations_initials_numbers_and_lower_case_do_not_split() {
        assert_eq!(
            split_sentences("Dr. Smith met J. R. Tolkien at 3.14 p.m. today. e.g. this one."),
            ["Dr. Smith met J. R. Tolkien at 3.14 p.m. today. e.g. this one."]
        );
        assert_eq!(
            split_sentences("It costs $5. Okay."),
            ["It costs $5.", "Okay."]
        );
    }

    #[test]
    fn paragraphs_split_but_wrapped_lines_do_not() {
        assert_eq!(
            split_sentences("a wrapped\nline\n\n  next paragraph  \n"),
            ["a wrapped line", "next paragraph"]
        );
        assert!(split_sentences(" \n\t \n").is_empty());
    }

    #[test]
    fn long_sentences_are_cut_at_clauses_then_words() {
        let clause = "this clause has some words in it";
        let long = [clause; 12].join(", ") + ".";
        let pieces = split_sentences(&long);
        assert!(pieces.len() > 1, "{pieces:?}");
        assert!(
            pieces
                .iter()
                .all(|p| p.chars().count() <= LONG_SENTENCE_CHARS)
        );
        assert!(pieces[0].ends_with(','), "{pieces:?}");
        assert_eq!(pieces.join(" "), long);
        let words = ["word"; 200].join(" ");
        let pieces = split_sentences(&words);
        assert!(
            pieces
                .iter()
                .all(|p| p.chars().count() <= LONG_SENTENCE_CHARS)
        );
        assert_eq!(pieces.join(" "), words);
    }

    #[test]
    fn foreign_scripts_and_emoji_are_removed_and_listed() {
        let en = language_scripts("en-us");
        let c = clean("Hello 你好 world 😀!", en);
        assert_eq!(c.text, "Hello world !");
        assert_eq!(c.removed, ["你好", "😀"]);
        assert!(c.speakable());
        let c = clean("你好世界", en);
        assert!(!c.speakable());
        assert_eq!(c.removed, ["你好世界"]);
        // Accented Latin stays; Cyrillic is fine for Russian, foreign for English.
        assert_eq!(clean("café naïve", en).text, "café naïve");
        assert!(
            clean("Привет мир", language_scripts("ru"))
                .removed
                .is_empty()
        );
        assert_eq!(clean("Привет мир", en).removed, ["Привет", "мир"]);
        // Unknown language: nothing removed but emoji.
        assert_eq!(clean("ᚠᚢᚦ 👍", language_scripts("xx")).removed, ["👍"]);
        // Digits and punctuation only.
        assert!(clean("42.", en).speakable());
        assert!(!clean("...!!!", en).speakable());
    }

    #[test]
    fn excerpts_are_cut_on_characters() {
        assert_eq!(excerpt("  héllo  ", 10), "héllo");
        assert_eq!(excerpt("héllo world", 5), "héllo…");
    }
}
