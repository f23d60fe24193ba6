//! Cuts text into sentences, one output each, in front of a speech synthesiser.
//!
//! The router forwards a node's outputs when its `process` call returns, so a TTS node given a
//! whole paragraph sends all its audio at once, after the last sentence. With this node in front,
//! each sentence is its own input to the synthesiser, and the first sentence's audio leaves as
//! soon as it is ready while the next is being synthesised.

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData, TextFrame,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::tts::split_sentences;

/// Settings of [`SentenceSplitter`] (none yet).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentenceSplitterParams {}

/// Text in, one final text per sentence out (all with the input's timestamp). Interim text
/// (`is_final: false`) is passed through unsplit, and blank text gives nothing.
pub struct SentenceSplitter;

#[async_trait]
impl Node for SentenceSplitter {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(text) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        if !text.is_final {
            out.push(input.data.clone());
            return Ok(());
        }
        for sentence in split_sentences(&text.text) {
            out.push(RuntimeData::Text(TextFrame {
                text: sentence.into(),
                is_final: true,
                span: text.span,
            }));
        }
        Ok(())
    }
}

impl NodeType for SentenceSplitter {
    type Params = SentenceSplitterParams;
    const NAME: &'static str = "SentenceSplitter";
    const DESCRIPTION: &'static str =
        "Cuts text into one output per sentence, so speech synthesis can start on the first";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Text])
    }

    fn new(_: SentenceSplitterParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remotemedia_core::testing::NodeHarness;

    #[tokio::test]
    async fn one_output_per_sentence_and_nothing_for_blank_text() {
        let mut h = NodeHarness::new::<SentenceSplitter>(serde_json::json!({})).unwrap();
        let out = h
            .push(RuntimeData::text("Hello Dr. Smith. How are you?\n\nFine!"))
            .await
            .unwrap();
        let texts: Vec<&str> = out.iter().map(|d| &*d.as_text().unwrap().text).collect();
        assert_eq!(texts, ["Hello Dr. Smith.", "How are you?", "Fine!"]);
        assert!(h.push(RuntimeData::text("  \n ")).await.unwrap().is_empty());
        let err = h
            .push(RuntimeData::audio(vec![0.0], 16_000, 1))
            .await
            .unwrap_err();
        assert_eq!(err.message, "SentenceSplitter cannot process audio data");
    }
}
