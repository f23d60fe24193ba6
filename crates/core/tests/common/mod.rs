//! Node types used only by tests, shared by the test files.
#![allow(dead_code)]

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    MediaType, Node, NodeContext, NodeError, NodeRegistry, Outputs, Packet, RuntimeBuilder,
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Takes and gives audio only.
pub struct TestAudioOnly;

#[async_trait]
impl Node for TestAudioOnly {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        out.push(input.data.clone());
        Ok(())
    }
}

impl NodeType for TestAudioOnly {
    type Params = NoParams;
    const NAME: &'static str = "TestAudioOnly";
    const DESCRIPTION: &'static str = "audio in, audio out";
    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio], &[MediaType::Audio])
    }
    fn new(_: NoParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self)
    }
}

/// Sends each input to `left` and `right`.
pub struct TestTwoOutputs;

#[async_trait]
impl Node for TestTwoOutputs {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        out.push_to(0, input.data.clone());
        out.push_to(1, input.data.clone());
        Ok(())
    }
}

impl NodeType for TestTwoOutputs {
    type Params = NoParams;
    const NAME: &'static str = "TestTwoOutputs";
    const DESCRIPTION: &'static str = "one input, two outputs";
    fn ports() -> Ports {
        Ports::new()
            .input("in", MediaType::ALL)
            .output("left", MediaType::ALL)
            .output("right", MediaType::ALL)
    }
    fn new(_: NoParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self)
    }
}

/// The test types, as a node family.
pub fn test_nodes(r: &mut NodeRegistry) {
    r.register::<TestAudioOnly>().register::<TestTwoOutputs>();
}

/// Built-ins plus the test types.
pub fn builder() -> RuntimeBuilder {
    RuntimeBuilder::new().nodes(test_nodes)
}
