//! A harness that drives one node directly: push data in, get what it emits back. Node tests
//! stay a few lines long and need no pipeline or session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::data::{Packet, RuntimeData};
use crate::node::{Node, NodeContext, NodeError, NodeType, Output, Outputs};

/// Drives a single node instance.
pub struct NodeHarness {
    node: Box<dyn Node>,
    out: Outputs,
    seq: u64,
    /// Media timestamp given to the next pushed packet.
    pub timestamp: Duration,
}

impl NodeHarness {
    /// Builds a node of type `T` from manifest-style params (a JSON value).
    pub fn new<T: NodeType>(params: serde_json::Value) -> Result<Self, NodeError> {
        let params: T::Params = serde_json::from_value(params)
            .map_err(|e| NodeError::fatal(format!("invalid params: {e}")))?;
        let ctx = NodeContext {
            session_id: "test".into(),
            node_id: T::NAME.into(),
        };
        Ok(Self::from_node(T::new(params, &ctx)?))
    }

    /// Wraps an existing instance.
    pub fn from_node(node: impl Node) -> Self {
        Self {
            node: Box::new(node),
            out: Outputs::default(),
            seq: 0,
            timestamp: Duration::ZERO,
        }
    }

    /// Pushes data into input port 0 and returns what the node emitted.
    pub async fn push(&mut self, data: RuntimeData) -> Result<Vec<RuntimeData>, NodeError> {
        self.push_to(0, data).await
    }

    /// Pushes data into input port `port`.
    pub async fn push_to(
        &mut self,
        port: usize,
        data: RuntimeData,
    ) -> Result<Vec<RuntimeData>, NodeError> {
        let out = self.push_outputs(port, data).await?;
        Ok(out.into_iter().map(|o| o.data).collect())
    }

    /// Like [`NodeHarness::push_to`], but keeps each output's port and media timestamp (an
    /// inherited timestamp is filled in with the input's).
    pub async fn push_outputs(
        &mut self,
        port: usize,
        data: RuntimeData,
    ) -> Result<Vec<Output>, NodeError> {
        let packet = Packet {
            data,
            session: Arc::from("test"),
            source: Arc::from("harness"),
            port: Arc::from("out"),
            seq: self.seq,
            timestamp: self.timestamp,
            captured: Instant::now(),
        };
        self.seq += 1;
        self.out.clear();
        self.node.process(port, &packet, &mut self.out).await?;
        Ok(self.take(packet.timestamp))
    }

    /// Ends the stream and returns what the node flushed.
    pub async fn flush(&mut self) -> Result<Vec<RuntimeData>, NodeError> {
        let out = self.flush_outputs().await?;
        Ok(out.into_iter().map(|o| o.data).collect())
    }

    /// Like [`NodeHarness::flush`], keeping ports and timestamps.
    pub async fn flush_outputs(&mut self) -> Result<Vec<Output>, NodeError> {
        self.out.clear();
        self.node.flush(&mut self.out).await?;
        Ok(self.take(self.timestamp))
    }

    pub async fn close(mut self) -> Result<(), NodeError> {
        self.node.close().await
    }

    fn take(&mut self, inherited: Duration) -> Vec<Output> {
        self.out
            .drain()
            .map(|mut o| {
                o.timestamp = Some(o.timestamp.unwrap_or(inherited));
                o
            })
            .collect()
    }
}
