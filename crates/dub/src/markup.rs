//! The tag a cue may start with, as subtitle dubbing tools write it: `[de:]` (a language),
//! `[Alice]` (a character) or `[de:Alice]` (both).

/// A cue's text with its leading tag read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Markup<'a> {
    pub lang: Option<&'a str>,
    pub character: Option<&'a str>,
    /// The text to speak, without the tag.
    pub text: &'a str,
}

/// Reads the leading `[...]` tag of `text`, if any: `lang:` before a colon, a character name
/// after it (or alone). Text without a closed leading bracket has no tag.
pub fn read(text: &str) -> Markup<'_> {
    let text = text.trim();
    let untagged = Markup {
        lang: None,
        character: None,
        text,
    };
    let Some(rest) = text.strip_prefix('[') else {
        return untagged;
    };
    let Some((tag, spoken)) = rest.split_once(']') else {
        return untagged;
    };
    fn some(s: &str) -> Option<&str> {
        Some(s.trim()).filter(|s| !s.is_empty())
    }
    let (lang, character) = match tag.split_once(':') {
        Some((lang, character)) => (some(lang), some(character)),
        None => (None, some(tag)),
    };
    Markup {
        lang,
        character,
        text: spoken.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_give_language_character_or_both() {
        let m = |l, c, t| Markup {
            lang: l,
            character: c,
            text: t,
        };
        assert_eq!(read(" Hello there. "), m(None, None, "Hello there."));
        assert_eq!(read("[de:] Guten Tag."), m(Some("de"), None, "Guten Tag."));
        assert_eq!(read("[Alice] Hi!"), m(None, Some("Alice"), "Hi!"));
        assert_eq!(
            read("[de:Alice]Hallo"),
            m(Some("de"), Some("Alice"), "Hallo")
        );
        assert_eq!(read("[Mr Smith] Yes."), m(None, Some("Mr Smith"), "Yes."));
        assert_eq!(read("[] Plain."), m(None, None, "Plain."));
        assert_eq!(read("[unclosed text"), m(None, None, "[unclosed text"));
        assert_eq!(read("[de:]"), m(Some("de"), None, ""));
    }
}
