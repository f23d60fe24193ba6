//! Reads YAML or JSON into a `serde_json::Value` while remembering where each value was written,
//! so every later error (schema, graph, params) can point at a line and column.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in the manifest text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Positions of values by JSON pointer (`/nodes/0/type`). For a mapping entry the position is
/// that of its key, which is where a reader looks.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    positions: HashMap<String, Pos>,
}

impl SourceMap {
    /// Position of the value at `pointer`, or of its nearest written ancestor (a missing field
    /// is reported at the object that lacks it).
    pub fn locate(&self, pointer: &str) -> Option<Pos> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

/// A syntax error in the manifest text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML (and therefore JSON, which YAML 1.2 contains) into a value and its source map.
pub fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: to_pos(e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    let value = builder.root.unwrap_or(Value::Null);
    Ok((value, builder.map))
}

fn to_pos(m: &Marker) -> Pos {
    // yaml-rust2 reports 1-based lines and 0-based columns.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq(Vec<Value>, String),
    Map(Map<String, Value>, String, Option<String>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    map: SourceMap,
    anchors: HashMap<usize, Value>,
    /// Anchor of each open collection, so the finished value can be stored for aliases.
    open_anchors: Vec<usize>,
    error: Option<SyntaxError>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    /// Pointer of the value about to be inserted at the top of the stack, or `None` when the
    /// next scalar is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq(items, base)) => Some(format!("{base}/{}", items.len())),
            Some(Frame::Map(_, base, Some(key))) => Some(format!("{base}/{}", escape(key))),
            Some(Frame::Map(_, _, None)) => None,
        }
    }

    fn insert(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq(items, _)) => items.push(value),
            Some(Frame::Map(map, _, key)) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
        }
    }

    fn fail(&mut self, mark: Marker, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                pos: to_pos(&mark),
                message: message.into(),
            });
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                match self.next_pointer() {
                    None => {
                        // A mapping key: remember where it was written.
                        let Some(Frame::Map(map, base, key)) = self.stack.last_mut() else {
                            return;
                        };
                        if map.contains_key(&text) {
                            let msg = format!("duplicate key `{text}`");
                            self.fail(mark, msg);
                            return;
                        }
                        let pointer = format!("{base}/{}", escape(&text));
                        if map.is_empty() {
                            // A block mapping is best located by its first key.
                            self.map
                                .positions
                                .entry(base.clone())
                                .or_insert(to_pos(&mark));
                        }
                        *key = Some(text);
                        self.map.positions.insert(pointer, to_pos(&mark));
                    }
                    Some(pointer) => {
                        self.map.positions.entry(pointer).or_insert(to_pos(&mark));
                        let value = scalar(&text, style);
                        if anchor > 0 {
                            self.anchors.insert(anchor, value.clone());
                        }
                        self.insert(value);
                    }
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let Some(pointer) = self.next_pointer() else {
                    self.fail(mark, "a mapping key must be a plain value");
                    return;
                };
                self.open_anchors.push(anchor);
                if matches!(ev, Event::SequenceStart(..)) {
                    self.map
                        .positions
                        .entry(pointer.clone())
                        .or_insert(to_pos(&mark));
                    self.stack.push(Frame::Seq(Vec::new(), pointer));
                } else {
                    self.stack.push(Frame::Map(Map::new(), pointer, None));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Seq(items, _)) => Value::Array(items),
                    Some(Frame::Map(map, _, _)) => Value::Object(map),
                    None => return,
                };
                if let Some(anchor) = self.open_anchors.pop().filter(|a| *a > 0) {
                    self.anchors.insert(anchor, value.clone());
                }
                self.insert(value);
            }
            Event::Alias(id) => {
                let Some(value) = self.anchors.get(&id).cloned() else {
                    self.fail(mark, "unknown alias");
                    return;
                };
                match self.next_pointer() {
                    None => self.fail(mark, "an alias cannot be a mapping key"),
                    Some(pointer) => {
                        self.map.positions.entry(pointer).or_insert(to_pos(&mark));
                        self.insert(value);
                    }
                }
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
    }
}

/// YAML 1.2 core schema for plain scalars; quoted scalars are always strings.
fn scalar(text: &str, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Value::Number(u.into());
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_positions_point_at_keys_and_items() {
        let text = "version: v1\nnodes:\n  - id: a\n    type: PassThrough\n";
        let (v, map) = parse(text).unwrap();
        assert_eq!(v["nodes"][0]["type"], "PassThrough");
        assert_eq!(map.locate("/nodes/0/type"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(map.locate("/version"), Some(Pos { line: 1, col: 1 }));
        // A missing child is reported at its parent.
        assert_eq!(
            map.locate("/nodes/0/params/x"),
            Some(Pos { line: 3, col: 5 })
        );
    }

    #[test]
    fn json_is_read_with_positions() {
        let text = "{\n  \"version\": \"v1\",\n  \"nodes\": [{\"id\": \"a\", \"n\": 1.5}]\n}";
        let (v, map) = parse(text).unwrap();
        assert_eq!(v["nodes"][0]["n"], 1.5);
        assert_eq!(map.locate("/nodes/0/id").map(|p| p.line), Some(3));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let (v, _) = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 2.5\nf: v1\ng: 1e3").unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], true);
        assert_eq!(v["d"], Value::Null);
        assert_eq!(v["e"], 2.5);
        assert_eq!(v["f"], "v1");
        assert_eq!(v["g"], 1000.0);
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_positions() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("duplicate key `a`"));
        let err = parse("nodes: [a, b\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }
}
