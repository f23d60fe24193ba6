//! Forwards every input unchanged (shared, not copied).

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::data::{MediaType, Packet};
use crate::node::{Node, NodeContext, NodeError, NodeType, Outputs, Ports};

/// Forwards its input; a tap point, a placeholder, and the unit of router benchmarks.
pub struct PassThrough;

/// `PassThrough` takes no settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassThroughParams {}

#[async_trait]
impl Node for PassThrough {
    async fn process(
        &mut self,
        _port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        out.push(input.data.clone());
        Ok(())
    }
}

impl NodeType for PassThrough {
    type Params = PassThroughParams;
    const NAME: &'static str = "PassThrough";
    const DESCRIPTION: &'static str = "Forwards every input unchanged";

    fn ports() -> Ports {
        Ports::one_to_one(MediaType::ALL, MediaType::ALL)
    }

    fn new(_: PassThroughParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(PassThrough)
    }
}
