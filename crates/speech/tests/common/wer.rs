//! Word error rate, as the speech tests and the load benchmark (crates/server/examples/asr_load.rs)
//! score it.
//!
//! Normalisation before scoring, applied to reference and hypothesis alike: lowercase; hyphens
//! and dashes become spaces; every other character that is not a letter, digit or space
//! (punctuation, apostrophes) is removed; runs of whitespace become one space. Edits are the
//! word-level Levenshtein distance (substitutions + insertions + deletions).
#![allow(dead_code)]

/// The normalisation stated at the top of this file, as words.
pub fn normalise(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            '-' | '\u{2010}'..='\u{2015}' => Some(' '),
            c if c.is_alphanumeric() || c.is_whitespace() => Some(c),
            _ => None,
        })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// Word edits turning `reference` into `hypothesis`, and reference words, after [`normalise`].
pub fn word_edits(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalise(reference);
    let h = normalise(hypothesis);
    // One row of the Levenshtein table at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    (prev[h.len()], r.len())
}

pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (edits, words) = word_edits(reference, hypothesis);
    edits as f64 / words.max(1) as f64
}

#[test]
fn wer_counts_word_edits_after_normalisation() {
    assert_eq!(
        wer("Ever tried. Ever failed.", "ever tried, ever failed"),
        0.0
    );
    assert_eq!(wer("a b c d", "a x c d"), 0.25);
    assert_eq!(wer("a b c d", "a b d"), 0.25);
    assert_eq!(wer("a b c d", "a b c d e f"), 0.5);
    assert_eq!(
        normalise("Fail  better \u{2013} so-called It's"),
        ["fail", "better", "so", "called", "its"]
    );
}
