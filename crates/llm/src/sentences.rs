//! Whole sentences out of text that arrives in pieces (a model's reply as it is generated), so
//! each sentence can be spoken as soon as it is complete.

use remotemedia_speech::tts::split_sentences;

/// Text received but not yet given out as sentences.
#[derive(Default)]
pub struct Sentences {
    unsent: String,
}

impl Sentences {
    /// Adds a piece; returns the sentences it completed. The last sentence is held back until
    /// the text after it shows that it ended.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.unsent.push_str(piece);
        let mut sentences = split_sentences(&self.unsent);
        if sentences.len() < 2 {
            return Vec::new();
        }
        sentences.pop();
        // Sentences keep every word (only the spacing between them changes), so what is left
        // starts at the first word not given out.
        let words: usize = sentences.iter().map(|s| s.split_whitespace().count()).sum();
        let at = word_start(&self.unsent, words);
        self.unsent.drain(..at);
        sentences
    }

    /// The end of the text: the sentences still held.
    pub fn finish(&mut self) -> Vec<String> {
        split_sentences(&std::mem::take(&mut self.unsent))
    }
}

/// The byte offset of word `n` (from 0) of `text`, or its length if it has fewer words.
fn word_start(text: &str, n: usize) -> usize {
    let mut words = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            if words == n {
                return i;
            }
            words += 1;
            in_word = true;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds text a few characters at a time, as a model does.
    fn stream(text: &str, step: usize) -> (Vec<String>, Vec<usize>) {
        let mut s = Sentences::default();
        let (mut out, mut when) = (Vec::new(), Vec::new());
        let chars: Vec<char> = text.chars().collect();
        for (k, piece) in chars.chunks(step).enumerate() {
            for sentence in s.push(&piece.iter().collect::<String>()) {
                out.push(sentence);
                when.push(k);
            }
        }
        out.extend(s.finish());
        (out, when)
    }

    #[test]
    fn each_sentence_leaves_once_whole_and_as_soon_as_the_next_begins() {
        let text = "The moon is bright.\nIt orbits\nthe Earth! Dr. Smith  said so?\n\nYes";
        for step in [1, 2, 3, 7, 100] {
            let (out, _) = stream(text, step);
            assert_eq!(
                out,
                [
                    "The moon is bright.",
                    "It orbits the Earth!",
                    "Dr. Smith said so?",
                    "Yes"
                ],
                "pieces of {step}"
            );
        }
        // The first sentence leaves with the first letter of the second.
        let (_, when) = stream(text, 1);
        assert_eq!(when[0], "The moon is bright.\nI".chars().count() - 1);
    }
}
