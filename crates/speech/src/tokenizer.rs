//! Turns Moonshine token ids back into text, from the `tokenizer.bin` that ships with the model.
//!
//! The file is the model's vocabulary in id order, with no header: each entry is its length
//! (one byte; a LEB128 varint would allow longer entries, though none of the shipped ones is)
//! followed by that many bytes. It is a SentencePiece vocabulary with byte fallback, which fixes
//! its layout: ids 0 to 2 are `<unk>`, `<s>` and `</s>`, ids 3 to 258 are the 256 single bytes,
//! and `▁` marks the start of a word. Entries of the form `<<...>>` are reserved control tokens.
//! Checking that layout on load is what tells a damaged or foreign file from a real one, since
//! the format carries no magic number.
//!
//! Only decoding is needed: the recogniser emits ids, it never reads text.

use std::path::Path;

use crate::models::{self, ModelError};

/// SentencePiece's word-start marker, `▁` (U+2581), in UTF-8.
const WORD_START: &[u8] = "▁".as_bytes();
/// The first entries of every SentencePiece vocabulary of this kind, in order.
const SPECIAL: [&[u8]; 3] = [b"<unk>", b"<s>", b"</s>"];
/// Id of the first of the 256 byte-fallback entries.
const FIRST_BYTE_ID: usize = SPECIAL.len();

/// Why a `tokenizer.bin` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("entry {entry} runs past the end of the file")]
    Truncated { entry: usize },
    #[error("entry {entry} has an invalid length")]
    BadLength { entry: usize },
    #[error(
        "entry {entry} is not what a SentencePiece byte-fallback vocabulary has there \
         (expected {expected:?})"
    )]
    Layout { entry: usize, expected: String },
}

/// A decoding-only view of a Moonshine vocabulary.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Every entry's bytes, back to back, with `▁` already turned into a space.
    bytes: Vec<u8>,
    /// Entry `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    /// Entries that never appear in text (`<unk>`, `<s>`, `</s>`, `<<...>>`).
    control: Vec<bool>,
}

impl Tokenizer {
    /// Reads and checks `tokenizer.bin`; a missing file names the setup command, a damaged one
    /// says what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        models::require_file(path)?;
        let data = std::fs::read(path).map_err(|e| ModelError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&data).map_err(|e| ModelError::Load {
            path: path.to_path_buf(),
            reason: format!(
                "not a Moonshine tokenizer: {e}; if the file is damaged, delete it and run {}",
                models::SETUP_COMMAND
            ),
        })
    }

    /// Parses the contents of a `tokenizer.bin`.
    pub fn from_bytes(mut data: &[u8]) -> Result<Self, TokenizerError> {
        let mut raw = Vec::with_capacity(data.len());
        let mut bounds = vec![0usize];
        while !data.is_empty() {
            let entry = bounds.len() - 1;
            let (len, rest) = read_len(data).ok_or(TokenizerError::BadLength { entry })?;
            let text = rest.get(..len).ok_or(TokenizerError::Truncated { entry })?;
            raw.extend_from_slice(text);
            bounds.push(raw.len());
            data = &rest[len..];
        }
        let entry = |i: usize| bounds.get(i + 1).map(|&end| &raw[bounds[i]..end]);
        for (i, want) in SPECIAL.iter().enumerate() {
            if entry(i) != Some(*want) {
                return Err(TokenizerError::Layout {
                    entry: i,
                    expected: String::from_utf8_lossy(want).into_owned(),
                });
            }
        }
        for b in 0..=255u8 {
            let i = FIRST_BYTE_ID + usize::from(b);
            if entry(i) != Some(&[b][..]) {
                return Err(TokenizerError::Layout {
                    entry: i,
                    expected: format!("the single byte {b:#04x}"),
                });
            }
        }
        let count = bounds.len() - 1;
        let mut bytes = Vec::with_capacity(raw.len());
        let mut offsets = Vec::with_capacity(bounds.len());
        let mut control = Vec::with_capacity(count);
        offsets.push(0);
        for i in 0..count {
            let text = &raw[bounds[i]..bounds[i + 1]];
            let is_byte = (FIRST_BYTE_ID..FIRST_BYTE_ID + 256).contains(&i);
            control.push(i < FIRST_BYTE_ID || (text.starts_with(b"<<") && text.ends_with(b">>")));
            if is_byte {
                bytes.extend_from_slice(text);
            } else {
                push_spaced(&mut bytes, text);
            }
            offsets.push(bytes.len());
        }
        Ok(Self {
            bytes,
            offsets,
            control,
        })
    }

    /// Number of entries; the decoder's logits must not have more.
    pub fn len(&self) -> usize {
        self.control.len()
    }

    pub fn is_empty(&self) -> bool {
        self.control.is_empty()
    }

    /// The text of a sequence of ids, as the reference tokenizer decodes it with special tokens
    /// skipped: word-start markers become spaces (the one leading the text is dropped), byte
    /// tokens are joined into UTF-8, and invalid UTF-8 becomes U+FFFD rather than an error.
    /// Control and unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = Vec::new();
        for &id in ids {
            let id = id as usize;
            if self.control.get(id).copied().unwrap_or(true) {
                continue;
            }
            out.extend_from_slice(&self.bytes[self.offsets[id]..self.offsets[id + 1]]);
        }
        let text = out.strip_prefix(b" ").unwrap_or(&out);
        String::from_utf8_lossy(text).into_owned()
    }
}

/// An entry length: one byte below 128, else a little-endian base-128 varint.
fn read_len(data: &[u8]) -> Option<(usize, &[u8])> {
    let mut len = 0usize;
    for (i, &b) in data.iter().enumerate().take(4) {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((len, &data[i + 1..]));
        }
    }
    None
}

/// Appends `text` with every `▁` replaced by a space.
fn push_spaced(out: &mut Vec<u8>, mut text: &[u8]) {
    while let Some(pos) = text.windows(WORD_START.len()).position(|w| w == WORD_START) {
        out.extend_from_slice(&text[..pos]);
        out.push(b' ');
        text = &text[pos + WORD_START.len()..];
    }
    out.extend_from_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary with the required layout followed by `extra` entries (ids from 259).
    fn vocab(extra: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |t: &[u8]| {
            out.push(t.len() as u8);
            out.extend_from_slice(t);
        };
        for s in SPECIAL {
            push(s);
        }
        for b in 0..=255u8 {
            push(&[b]);
        }
        for e in extra {
            push(e.as_bytes());
        }
        out
    }

    #[test]
    fn decodes_words_bytes_and_skips_control_tokens() {
        let t = Tokenizer::from_bytes(&vocab(&["▁Ever", "▁tried", ".", "<<ST_0>>"])).unwrap();
        assert_eq!(t.len(), 263);
        // <s> ▁Ever ▁tried . <<ST_0>> </s>
        assert_eq!(t.decode(&[1, 259, 260, 261, 262, 2]), "Ever tried.");
        // "é" as two byte-fallback tokens after a word; an out-of-range id is skipped.
        let e_acute = [0xc3u32 + 3, 0xa9 + 3];
        assert_eq!(t.decode(&[259, e_acute[0], e_acute[1], 9999]), "Everé");
        // A lone continuation byte is replaced, not an error.
        assert_eq!(t.decode(&[0xa9 + 3]), "\u{fffd}");
        assert_eq!(t.decode(&[]), "");
    }

    #[test]
    fn a_foreign_or_truncated_file_is_rejected() {
        assert_eq!(
            Tokenizer::from_bytes(b"garbage!").unwrap_err(),
            TokenizerError::Truncated { entry: 0 }
        );
        let mut v = vocab(&["▁a"]);
        v[1] = b'X';
        assert!(matches!(
            Tokenizer::from_bytes(&v),
            Err(TokenizerError::Layout { entry: 0, .. })
        ));
        let v = vocab(&["▁hello"]);
        assert_eq!(
            Tokenizer::from_bytes(&v[..v.len() - 2]).unwrap_err(),
            TokenizerError::Truncated { entry: 259 }
        );
        assert_eq!(
            Tokenizer::from_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err(),
            TokenizerError::BadLength { entry: 0 }
        );
    }

    #[test]
    fn the_installed_vocabulary_loads() {
        let path = models::models_dir()
            .join(models::MOONSHINE_TINY_EN_DIR)
            .join("tokenizer.bin");
        let t = Tokenizer::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 32_768);
    }
}
