//! Subtitle cues, SubRip (`.srt`) and WebVTT (`.vtt`), for timed text: writing them, and
//! parsing subtitle files with errors that name the line.

use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtitleFormat {
    Srt,
    Vtt,
}

impl SubtitleFormat {
    /// By file extension (`srt`, `vtt`; case-insensitive), `None` otherwise.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?;
        if extension.eq_ignore_ascii_case("srt") {
            Some(Self::Srt)
        } else if extension.eq_ignore_ascii_case("vtt") {
            Some(Self::Vtt)
        } else {
            None
        }
    }

    /// What a file of cues starts with.
    pub fn header(self) -> &'static str {
        match self {
            Self::Srt => "",
            Self::Vtt => "WEBVTT\n\n",
        }
    }

    /// Cue number `n` (from 1; SubRip numbers its cues) showing `text` from `start` to `end`.
    pub fn cue(self, n: usize, start: Duration, end: Duration, text: &str) -> String {
        match self {
            Self::Srt => format!(
                "{n}\n{} --> {}\n{}\n\n",
                cue_time(start, ','),
                cue_time(end, ','),
                text.trim()
            ),
            Self::Vtt => format!(
                "{} --> {}\n{}\n\n",
                cue_time(start, '.'),
                cue_time(end, '.'),
                text.trim()
            ),
        }
    }

    /// The character this format writes between seconds and milliseconds.
    fn separator(self) -> char {
        match self {
            Self::Srt => ',',
            Self::Vtt => '.',
        }
    }

    /// How one timestamp looks, for error messages.
    fn time_form(self) -> &'static str {
        match self {
            Self::Srt => "hh:mm:ss,mmm (like 00:01:02,500)",
            Self::Vtt => "[hh:]mm:ss.ttt (like 01:02.500 or 00:01:02.500)",
        }
    }

    /// How a timing line looks, for error messages.
    fn timing_form(self) -> &'static str {
        match self {
            Self::Srt => "`hh:mm:ss,mmm --> hh:mm:ss,mmm`",
            Self::Vtt => "`[hh:]mm:ss.ttt --> [hh:]mm:ss.ttt`",
        }
    }

    /// What the optional line before a cue's timing line is called.
    fn label_name(self) -> &'static str {
        match self {
            Self::Srt => "cue number",
            Self::Vtt => "cue identifier",
        }
    }
}

/// `hh:mm:ss,mmm` (SubRip) or `hh:mm:ss.mmm` (WebVTT).
fn cue_time(d: Duration, separator: char) -> String {
    let ms = d.as_millis();
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

/// One cue of a subtitle file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cue {
    /// 1-based position among the file's cues.
    pub number: usize,
    /// 1-based line of the file where the cue's timing line is.
    pub line: usize,
    pub start: Duration,
    pub end: Duration,
    /// The cue's text lines joined with '\n', each line trimmed; formatting tags removed
    /// (`<i>`, `</b>`, `<v Alice>`, `<c.x>`, `<00:00:01.000>` timestamps inside VTT cues, SRT
    /// `{\an8}` style overrides); entities `&amp; &lt; &gt; &nbsp; &lrm; &rlm;` decoded. Lines
    /// left empty by that are dropped. May be empty (the caller skips and reports empty cues).
    pub text: String,
}

/// A file that is not valid subtitles: where and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SubtitleError {
    /// 1-based line of the file.
    pub line: usize,
    /// What was found there and what was expected instead.
    pub message: String,
}

impl SubtitleError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// Parses a whole file: WebVTT when it starts with "WEBVTT" (after an optional UTF-8 BOM),
/// else SubRip.
pub fn parse(text: &str) -> Result<(SubtitleFormat, Vec<Cue>), SubtitleError> {
    if without_bom(text).starts_with("WEBVTT") {
        Ok((SubtitleFormat::Vtt, parse_vtt(text)?))
    } else {
        Ok((SubtitleFormat::Srt, parse_srt(text)?))
    }
}

/// Parses a SubRip file: blocks separated by blank lines, each an optional cue number, a
/// timing line, then text lines. Cue numbers need not be consecutive.
pub fn parse_srt(text: &str) -> Result<Vec<Cue>, SubtitleError> {
    let lines = numbered_lines(text);
    parse_cues(&blocks(&lines), SubtitleFormat::Srt)
}

/// Parses a WebVTT file: the `WEBVTT` line and the header lines after it, then cues, each an
/// optional identifier, a timing line (cue settings after it are ignored), then text lines.
/// `NOTE`, `STYLE` and `REGION` blocks are skipped. A file of only blank lines has no cues.
pub fn parse_vtt(text: &str) -> Result<Vec<Cue>, SubtitleError> {
    let lines = numbered_lines(text);
    if lines.iter().all(|(_, line)| line.is_empty()) {
        return Ok(Vec::new());
    }
    check_vtt_header(&lines)?;
    // The first block is the header.
    let cue_blocks: Vec<_> = blocks(&lines)
        .into_iter()
        .skip(1)
        .filter(|block| !is_vtt_extra(block[0].1))
        .collect();
    parse_cues(&cue_blocks, SubtitleFormat::Vtt)
}

/// A line of a file: its 1-based number and its text, without line ending or trailing
/// whitespace.
type Line<'a> = (usize, &'a str);

/// `text` without its UTF-8 byte order mark, if it has one.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The lines of `text` (LF or CRLF), numbered from 1, without a UTF-8 BOM, line endings or
/// trailing whitespace.
fn numbered_lines(text: &str) -> Vec<Line<'_>> {
    without_bom(text)
        .lines()
        .map(str::trim_end)
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .collect()
}

/// The runs of non-blank lines that blank lines separate; none is empty.
fn blocks<'l, 'a>(lines: &'l [Line<'a>]) -> Vec<&'l [Line<'a>]> {
    lines
        .split(|(_, line)| line.is_empty())
        .filter(|block| !block.is_empty())
        .collect()
}

/// Whether `line` is `word` alone or followed by a space or tab and more.
fn starts_with_word(line: &str, word: &str) -> bool {
    line.strip_prefix(word)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Checks the `WEBVTT` line, and that the header lines after it (up to the first blank line)
/// hold no cue.
fn check_vtt_header(lines: &[Line]) -> Result<(), SubtitleError> {
    let first = lines.first().map_or("", |&(_, line)| line);
    if !starts_with_word(first, "WEBVTT") {
        return Err(SubtitleError::new(
            1,
            format!(
                "expected `WEBVTT` as the first line of a WebVTT file, found {}",
                quote(first)
            ),
        ));
    }
    let mut header = lines.iter().take_while(|(_, line)| !line.is_empty());
    match header.find(|(_, line)| line.contains("-->")) {
        Some(&(line, _)) => Err(SubtitleError::new(
            line,
            "found a timing line in the WebVTT header: expected a blank line after the header, \
             before the first cue",
        )),
        None => Ok(()),
    }
}

/// Whether a WebVTT block starting with `first` is a comment, a style sheet or a region
/// definition rather than a cue.
fn is_vtt_extra(first: &str) -> bool {
    ["NOTE", "STYLE", "REGION"]
        .iter()
        .any(|word| starts_with_word(first, word))
}

/// Parses blocks that should each be one cue, numbering the cues from 1.
fn parse_cues(blocks: &[&[Line]], format: SubtitleFormat) -> Result<Vec<Cue>, SubtitleError> {
    blocks
        .iter()
        .enumerate()
        .map(|(index, block)| parse_cue(block, index + 1, format))
        .collect()
}

/// Parses one block: an optional cue number (SubRip) or identifier (WebVTT), the timing line,
/// then text lines.
fn parse_cue(block: &[Line], number: usize, format: SubtitleFormat) -> Result<Cue, SubtitleError> {
    let ((line, timing), text) = find_timing(block, format)?;
    let (start, end) =
        parse_timing(timing, format).map_err(|message| SubtitleError::new(line, message))?;
    if let Some(&(line, _)) = text.iter().find(|(_, text)| text.contains("-->")) {
        return Err(SubtitleError::new(
            line,
            "found a timing line inside cue text: expected a blank line before each cue",
        ));
    }
    Ok(Cue {
        number,
        line,
        start,
        end,
        text: cue_text(text),
    })
}

/// The block's timing line and the text lines after it.
fn find_timing<'l, 'a>(
    block: &'l [Line<'a>],
    format: SubtitleFormat,
) -> Result<(Line<'a>, &'l [Line<'a>]), SubtitleError> {
    let is_timing = |line: &str| line.contains("-->");
    let (label_name, timing_form) = (format.label_name(), format.timing_form());
    match block {
        [timing, text @ ..] if is_timing(timing.1) => Ok((*timing, text)),
        [(line, first), rest @ ..]
            if looks_like_timing(first) && !rest.first().is_some_and(|next| is_timing(next.1)) =>
        {
            Err(not_timing(*line, first, "a timing line", format))
        }
        [(line, first), ..] if format == SubtitleFormat::Srt && !is_digits(first.trim()) => {
            let expected = format!("a cue number or a timing line like {timing_form}");
            Err(not_timing(*line, first, &expected, format))
        }
        [(line, label)] => Err(SubtitleError::new(
            *line,
            format!(
                "{label_name} `{}` is not followed by a timing line: expected {timing_form} on \
                 the next line",
                label.trim()
            ),
        )),
        [_, timing, text @ ..] if is_timing(timing.1) => Ok((*timing, text)),
        [(_, label), (line, found), ..] => {
            let expected = format!(
                "a timing line like {timing_form} after {label_name} `{}`",
                label.trim()
            );
            Err(not_timing(*line, found, &expected, format))
        }
        [] => unreachable!("blank lines separate blocks, so no block is empty"),
    }
}

/// The error for line `line`, `found`, where `expected` (a timing line) should be.
fn not_timing(line: usize, found: &str, expected: &str, format: SubtitleFormat) -> SubtitleError {
    let message = if looks_like_timing(found) {
        format!(
            "timing line {} has no `-->`: expected {}",
            quote(found),
            format.timing_form()
        )
    } else {
        format!("expected {expected}, found {}", quote(found))
    };
    SubtitleError::new(line, message)
}

/// Whether `line` starts like a timestamp: a line without `-->` that does is most likely a timing
/// line with a mistyped arrow.
fn looks_like_timing(line: &str) -> bool {
    line.starts_with(|c: char| c.is_ascii_digit()) && line.contains(':')
}

/// Parses `start --> end`, ignoring anything after the end time (SubRip coordinates, WebVTT
/// cue settings). The error message says what is wrong.
fn parse_timing(timing: &str, format: SubtitleFormat) -> Result<(Duration, Duration), String> {
    let (start, rest) = timing.split_once("-->").unwrap_or((timing, ""));
    let end = rest.split_whitespace().next().unwrap_or("");
    let start = parse_time(start.trim(), "start", format)?;
    let end = parse_time(end, "end", format)?;
    if end < start {
        let separator = format.separator();
        return Err(format!(
            "cue ends ({}) before it starts ({})",
            cue_time(end, separator),
            cue_time(start, separator)
        ));
    }
    Ok((start, end))
}

/// Parses the `which` ("start" or "end") timestamp of a timing line.
fn parse_time(text: &str, which: &str, format: SubtitleFormat) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!(
            "missing {which} timestamp: expected {}",
            format.time_form()
        ));
    }
    timestamp(text, format).ok_or_else(|| {
        format!(
            "bad {which} timestamp {}: expected {}",
            quote(text),
            format.time_form()
        )
    })
}

/// A timestamp: `h:mm:ss,mmm` or `h:mm:ss.mmm` in SubRip, `mm:ss.ttt` or `h:mm:ss.ttt` in
/// WebVTT. Hours have one or more digits; minutes and seconds two, below 60; milliseconds three.
fn timestamp(text: &str, format: SubtitleFormat) -> Option<Duration> {
    let (clock, millis) = match format {
        SubtitleFormat::Srt => text.split_once([',', '.'])?,
        SubtitleFormat::Vtt => text.split_once('.')?,
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let (hours, minutes, seconds) = match fields[..] {
        [hours, minutes, seconds] => (number(hours)?, minutes, seconds),
        [minutes, seconds] if format == SubtitleFormat::Vtt => (0, minutes, seconds),
        _ => return None,
    };
    let (minutes, seconds) = (sexagesimal(minutes)?, sexagesimal(seconds)?);
    if millis.len() != 3 {
        return None;
    }
    let seconds = hours
        .checked_mul(3600)?
        .checked_add(minutes * 60 + seconds)?;
    Duration::from_secs(seconds).checked_add(Duration::from_millis(number(millis)?))
}

/// Whether `text` is one or more ASCII digits.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `text` as a number if it is only ASCII digits (no sign) and fits.
fn number(text: &str) -> Option<u64> {
    if is_digits(text) {
        text.parse().ok()
    } else {
        None
    }
}

/// Two digits below 60: minutes or seconds.
fn sexagesimal(text: &str) -> Option<u64> {
    number(text).filter(|&n| text.len() == 2 && n < 60)
}

/// `text` in backticks for a message, shortened if long; "a blank line" if empty.
fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    if text.is_empty() {
        return "a blank line".to_owned();
    }
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("`{}…`", &text[..end]),
        None => format!("`{text}`"),
    }
}

/// The text of a cue's lines: markup removed, entities decoded, each line trimmed, lines left
/// empty dropped, joined with '\n'.
fn cue_text(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|&(_, line)| decode_entities(&strip_markup(line)).trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `line` without tags (`<i>`, `</b>`, `<v Alice>`, `<c.x>`, `<00:00:01.000>`) and SubRip
/// style overrides (`{\an8}`). A `<` or `{` that starts neither (like in `a < b`) is kept.
fn strip_markup(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(['<', '{']) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        match markup_len(rest) {
            Some(len) => rest = &rest[len..],
            None => {
                // `<` and `{` are one byte long.
                out.push_str(&rest[..1]);
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length of the tag or style override that `text` starts with, if it starts with one: `<`
/// then a letter, digit or `/`, up to `>`; or `{\` up to `}`.
fn markup_len(text: &str) -> Option<usize> {
    let close = if text.starts_with("{\\") {
        '}'
    } else if text.starts_with('<')
        && text[1..].starts_with(|c: char| c.is_alphanumeric() || c == '/')
    {
        '>'
    } else {
        return None;
    };
    text.find(close).map(|end| end + 1)
}

/// `text` with the entities `&amp;` `&lt;` `&gt;` `&nbsp;` `&lrm;` `&rlm;` decoded; any other
/// `&` is kept as it is.
fn decode_entities(text: &str) -> String {
    const ENTITIES: [(&str, char); 6] = [
        ("&amp;", '&'),
        ("&lt;", '<'),
        ("&gt;", '>'),
        ("&nbsp;", '\u{a0}'),
        ("&lrm;", '\u{200e}'),
        ("&rlm;", '\u{200f}'),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        match ENTITIES.iter().find(|(name, _)| rest.starts_with(name)) {
            Some(&(name, decoded)) => {
                out.push(decoded);
                rest = &rest[name.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_have_hours_and_milliseconds() {
        let (a, b) = (
            Duration::from_millis(1_060),
            Duration::from_millis(3_723_045),
        );
        assert_eq!(
            SubtitleFormat::Srt.cue(2, a, b, " Hello \n"),
            "2\n00:00:01,060 --> 01:02:03,045\nHello\n\n"
        );
        assert_eq!(
            SubtitleFormat::Vtt.cue(2, a, b, "Hello"),
            "00:00:01.060 --> 01:02:03.045\nHello\n\n"
        );
        assert_eq!(SubtitleFormat::Vtt.header(), "WEBVTT\n\n");
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn cue(number: usize, line: usize, start: u64, end: u64, text: &str) -> Cue {
        Cue {
            number,
            line,
            start: ms(start),
            end: ms(end),
            text: text.to_owned(),
        }
    }

    /// Asserts that `result` failed on `line` with a message containing each of `parts`.
    #[track_caller]
    fn assert_error<T: std::fmt::Debug>(
        result: Result<T, SubtitleError>,
        line: usize,
        parts: &[&str],
    ) -> SubtitleError {
        let error = result.unwrap_err();
        assert_eq!(error.line, line, "{error}");
        for part in parts {
            assert!(error.message.contains(part), "{error:?} lacks {part:?}");
        }
        error
    }

    #[test]
    fn formats_by_extension() {
        let format = |path: &str| SubtitleFormat::from_extension(Path::new(path));
        assert_eq!(format("a/b.srt"), Some(SubtitleFormat::Srt));
        assert_eq!(format("B.SRT"), Some(SubtitleFormat::Srt));
        assert_eq!(format("c.Vtt"), Some(SubtitleFormat::Vtt));
        assert_eq!(format("d.txt"), None);
        assert_eq!(format("srt"), None);
    }

    #[test]
    fn parses_srt_with_crlf_bom_and_multiline_text() {
        let text = "\u{feff}1\r\n00:00:01,000 --> 00:00:02,500\r\nHello,  \r\n  world\r\n\
                    \r\n\r\n \t\r\n\
                    7\r\n00:00:03.000 --> 00:00:04,250  X1:100 X2:200 Y1:10 Y2:20\r\nSecond\r\n\
                    \r\n\
                    00:00:05,000 --> 100:00:00,000\r\nNo counter";
        let expected = vec![
            cue(1, 2, 1_000, 2_500, "Hello,\nworld"),
            cue(2, 9, 3_000, 4_250, "Second"),
            cue(3, 12, 5_000, 360_000_000, "No counter"),
        ];
        assert_eq!(parse_srt(text), Ok(expected.clone()));
        assert_eq!(parse(text), Ok((SubtitleFormat::Srt, expected)));
    }

    #[test]
    fn allows_zero_length_overlapping_and_unordered_cues() {
        let text = "1\n00:00:05,000 --> 00:00:05,000\nZero\n\n\
                    2\n00:00:01,000 --> 00:00:09,000\nEarlier, overlapping\n";
        assert_eq!(
            parse_srt(text),
            Ok(vec![
                cue(1, 2, 5_000, 5_000, "Zero"),
                cue(2, 6, 1_000, 9_000, "Earlier, overlapping"),
            ])
        );
    }

    #[test]
    fn strips_tags_and_decodes_entities() {
        let srt = "1\n00:00:01,000 --> 00:00:02,000\n\
                   {\\an8}<i>Hello</i> &amp; <b>bye</b>\n\
                   <font color=\"#fff\">&lt;3 &gt; x&nbsp;y&lrm;&rlm;</font>\n\
                   a < b &amp;lt; c & d {braces}\n\
                   <i></i>\n";
        let cues = parse_srt(srt).unwrap();
        assert_eq!(
            cues[0].text,
            "Hello & bye\n<3 > x\u{a0}y\u{200e}\u{200f}\na < b &lt; c & d {braces}"
        );

        let vtt = "WEBVTT\n\n00:01.000 --> 00:02.000\n\
                   <v Alice>Hello <c.loud>there</c>, <00:00:01.500>friend</v>\n\
                   <v.first Bob>&amp;ok\n\n\
                   00:03.000 --> 00:04.000\n<b></b>\n";
        let cues = parse_vtt(vtt).unwrap();
        assert_eq!(cues[0].text, "Hello there, friend\n&ok");
        assert_eq!(cues[1].text, "", "a cue of only tags is empty");
    }

    #[test]
    fn parses_vtt_with_header_blocks_identifiers_and_settings() {
        let text = "WEBVTT - Episode 1\r\nKind: captions\r\nLanguage: en\r\n\r\n\
                    STYLE\r\n::cue { color: yellow }\r\n\r\n\
                    REGION\r\nid:fred width:40%\r\n\r\n\
                    NOTE This is a comment\r\n\r\n\
                    NOTE\r\nspans two lines\r\n\r\n\
                    intro\r\n00:01.000 --> 00:04.000 align:start position:10% line:0\r\n\
                    Hello\r\n  there  \r\n\r\n\r\n\
                    00:03.500 --> 00:03.500\r\nZero\r\n\r\n\
                    2\r\n01:00:00.000 --> 01:00:01.250\r\nLater";
        let expected = vec![
            cue(1, 17, 1_000, 4_000, "Hello\nthere"),
            cue(2, 22, 3_500, 3_500, "Zero"),
            cue(3, 26, 3_600_000, 3_601_250, "Later"),
        ];
        assert_eq!(parse_vtt(text), Ok(expected.clone()));
        assert_eq!(parse(text), Ok((SubtitleFormat::Vtt, expected)));
        assert_eq!(
            parse_vtt("\u{feff}WEBVTT\tTitle\n\n00:01.000 --> 00:02.000\nHi").unwrap()[0].line,
            3
        );
    }

    #[test]
    fn files_without_cues_are_empty() {
        for text in ["", "\u{feff}", "\r\n\r\n", "  \n\t\n"] {
            assert_eq!(
                parse(text),
                Ok((SubtitleFormat::Srt, Vec::new())),
                "{text:?}"
            );
            assert_eq!(parse_srt(text), Ok(Vec::new()), "{text:?}");
            assert_eq!(parse_vtt(text), Ok(Vec::new()), "{text:?}");
        }
        assert_eq!(parse("WEBVTT"), Ok((SubtitleFormat::Vtt, Vec::new())));
        assert_eq!(
            parse("\u{feff}WEBVTT\r\n\r\nNOTE nothing yet\r\n"),
            Ok((SubtitleFormat::Vtt, Vec::new()))
        );
    }

    #[test]
    fn bad_timestamps_name_the_line_and_form() {
        let error = assert_error(
            parse_srt(
                "1\n00:00:01,000 --> 00:00:02,000\nOk\n\n2\n00:01:2,5 --> 00:01:03,000\nBad\n",
            ),
            6,
            &[],
        );
        assert_eq!(
            error.message,
            "bad start timestamp `00:01:2,5`: expected hh:mm:ss,mmm (like 00:01:02,500)"
        );
        assert_eq!(
            error.to_string(),
            "line 6: bad start timestamp `00:01:2,5`: expected hh:mm:ss,mmm (like 00:01:02,500)"
        );
        assert_error(
            parse_srt("1\n00:00:01,000 --> 00:60:00,000\n"),
            2,
            &["bad end timestamp `00:60:00,000`", "hh:mm:ss,mmm"],
        );
        assert_error(
            parse_srt("\n\n00:00:01,00 --> 00:00:02,000\nShort milliseconds"),
            3,
            &["bad start timestamp `00:00:01,00`", "hh:mm:ss,mmm"],
        );
        assert_error(
            parse_srt("1\n99999999999999999999:00:00,000 --> 0:00:00,000\n"),
            2,
            &["bad start timestamp", "hh:mm:ss,mmm"],
        );
        assert_error(
            parse_srt("1\n00:00:01,000 -->\nNo end"),
            2,
            &["missing end timestamp", "hh:mm:ss,mmm"],
        );
        assert_error(
            parse_vtt("WEBVTT\n\n00:01.000 --> 00:02,000\nComma"),
            3,
            &["bad end timestamp `00:02,000`", "[hh:]mm:ss.ttt"],
        );
        assert_error(
            parse_vtt("WEBVTT\n\nid\n1:02.000 --> 01:03.000\nOne-digit minutes"),
            4,
            &["bad start timestamp `1:02.000`", "[hh:]mm:ss.ttt"],
        );
    }

    #[test]
    fn cues_that_end_before_they_start_are_errors() {
        let error = assert_error(
            parse_vtt("WEBVTT\n\n00:00:03.000 --> 00:00:02.000\nBackwards"),
            3,
            &[],
        );
        assert_eq!(
            error.message,
            "cue ends (00:00:02.000) before it starts (00:00:03.000)"
        );
        let error = assert_error(parse_srt("4\n00:00:03,000 --> 00:00:02,000\n"), 2, &[]);
        assert_eq!(
            error.message,
            "cue ends (00:00:02,000) before it starts (00:00:03,000)"
        );
    }

    #[test]
    fn missing_or_broken_timing_lines_are_errors() {
        let srt_form = "`hh:mm:ss,mmm --> hh:mm:ss,mmm`";
        let vtt_form = "`[hh:]mm:ss.ttt --> [hh:]mm:ss.ttt`";
        // A timing line without `-->`.
        assert_error(
            parse_srt("1\n00:00:01,000 - 00:00:02,000\nHi\n"),
            2,
            &["has no `-->`", srt_form],
        );
        assert_error(
            parse_vtt("WEBVTT\n\n00:01.000 00:02.000\nHi\n"),
            3,
            &["has no `-->`", vtt_form],
        );
        // A cue number followed by text, or by nothing.
        assert_error(
            parse_srt("1\nHello\n"),
            2,
            &["after cue number `1`", "found `Hello`", srt_form],
        );
        assert_error(
            parse_srt(
                "1\n00:00:01,000 --> 00:00:02,000\nA\n\n2\n\n3\n00:00:03,000 --> 00:00:04,000\nB",
            ),
            5,
            &["cue number `2` is not followed by a timing line", srt_form],
        );
        // Text where a cue should start.
        assert_error(
            parse_srt("\r\nHello\r\nthere\r\n"),
            2,
            &[
                "expected a cue number or a timing line",
                "found `Hello`",
                srt_form,
            ],
        );
        // A WebVTT identifier followed by text, or by nothing.
        assert_error(
            parse_vtt("WEBVTT\n\nintro\nHello\n"),
            4,
            &["after cue identifier `intro`", vtt_form],
        );
        assert_error(
            parse_vtt("WEBVTT\n\nintro\n"),
            3,
            &[
                "cue identifier `intro` is not followed by a timing line",
                vtt_form,
            ],
        );
        // A missing blank line runs two cues together.
        assert_error(
            parse_srt("1\n00:00:01,000 --> 00:00:02,000\nA\n2\n00:00:03,000 --> 00:00:04,000\nB\n"),
            5,
            &["expected a blank line"],
        );
        assert_error(
            parse_vtt("WEBVTT\n00:01.000 --> 00:02.000\nHi\n"),
            2,
            &["expected a blank line after the header"],
        );
    }

    #[test]
    fn vtt_needs_its_header() {
        assert_error(
            parse_vtt("1\n00:00.000 --> 00:01.000\nHi\n"),
            1,
            &["expected `WEBVTT`", "found `1`"],
        );
        assert_error(
            parse_vtt("\n\nWEBVTT\n"),
            1,
            &["expected `WEBVTT`", "found a blank line"],
        );
        assert_error(parse("WEBVTTX\n"), 1, &["expected `WEBVTT`"]);
    }

    #[test]
    fn written_cues_parse_back() {
        let cues = [
            (0, 1_500, "Hello"),
            (1_060, 3_723_045, "Two\nlines"),
            (43_200_005, 43_200_005, "Zero length"),
        ];
        for format in [SubtitleFormat::Srt, SubtitleFormat::Vtt] {
            let mut text = format.header().to_owned();
            for (index, &(start, end, line)) in cues.iter().enumerate() {
                text.push_str(&format.cue(index + 1, ms(start), ms(end), line));
            }
            let (parsed_format, parsed) = parse(&text).unwrap();
            assert_eq!(parsed_format, format);
            let parsed: Vec<_> = parsed
                .iter()
                .map(|cue| (cue.start, cue.end, cue.text.as_str()))
                .collect();
            let expected: Vec<_> = cues
                .iter()
                .map(|&(start, end, line)| (ms(start), ms(end), line))
                .collect();
            assert_eq!(parsed, expected, "{format:?}");
        }
    }
}
