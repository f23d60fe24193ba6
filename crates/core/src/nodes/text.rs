//! Simple text transforms: case, trimming, prefix/suffix, word splitting.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::data::{MediaType, Packet, RuntimeData, TextFrame};
use crate::node::{Node, NodeContext, NodeError, NodeType, Outputs, Ports};

/// What [`TextTransform`] does to each text: `identity` (only prefix and suffix apply),
/// `uppercase`, `lowercase`, `trim` (leading and trailing whitespace), `reverse` (characters),
/// `split_words` (one output per whitespace-separated word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextOp {
    #[default]
    Identity,
    Uppercase,
    Lowercase,
    Trim,
    Reverse,
    SplitWords,
}

/// Settings of [`TextTransform`].
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TextTransformParams {
    pub op: TextOp,
    /// Added before each output.
    pub prefix: String,
    /// Added after each output.
    pub suffix: String,
    /// Drop texts that are empty after the transform instead of emitting them.
    pub skip_empty: bool,
}

/// Transforms text frames, keeping their timing and finality.
pub struct TextTransform {
    params: TextTransformParams,
}

impl TextTransform {
    fn emit(&self, frame: &TextFrame, text: &str, out: &mut Outputs) {
        if self.params.skip_empty && text.is_empty() {
            return;
        }
        let text: Arc<str> = if self.params.prefix.is_empty() && self.params.suffix.is_empty() {
            text.into()
        } else {
            format!("{}{text}{}", self.params.prefix, self.params.suffix).into()
        };
        out.push(RuntimeData::Text(TextFrame {
            text,
            ..frame.clone()
        }));
    }
}

#[async_trait]
impl Node for TextTransform {
    async fn process(
        &mut self,
        _port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(frame) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        let t = &*frame.text;
        match self.params.op {
            TextOp::Identity => self.emit(frame, t, out),
            TextOp::Uppercase => self.emit(frame, &t.to_uppercase(), out),
            TextOp::Lowercase => self.emit(frame, &t.to_lowercase(), out),
            TextOp::Trim => self.emit(frame, t.trim(), out),
            TextOp::Reverse => self.emit(frame, &t.chars().rev().collect::<String>(), out),
            TextOp::SplitWords => {
                for w in t.split_whitespace() {
                    self.emit(frame, w, out);
                }
            }
        }
        Ok(())
    }
}

impl NodeType for TextTransform {
    type Params = TextTransformParams;
    const NAME: &'static str = "TextTransform";
    const DESCRIPTION: &'static str =
        "Changes case, trims, reverses, splits words or adds a prefix/suffix to text";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Text])
    }

    fn new(params: TextTransformParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self { params })
    }
}
