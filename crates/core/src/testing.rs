//! A harness that drives one node directly: push data in, get what it emits back. Node tests
//! stay a few lines long and need no pipeline or session.
//!
//! The harness checks what the runtime checks, so a node that passes its harness tests cannot
//! fail in a pipeline for a reason the harness skipped:
//! - params go through the node type's JSON Schema by the manifest checker itself, then the
//!   node is made by its registry factory, as a session makes it;
//! - a [`Control`] is handled as the session router handles it: [`Control::Flush`] calls
//!   [`Node::flush`], any other control [`Node::control`] (never [`Node::process`]); the
//!   node's outputs come first, then the control itself on every output port (for a cancel,
//!   the control first, so it does not drop what the node said about it); an error keeps
//!   its kind (the router ends the session on a fatal one and reports any other);
//! - end-of-stream flush output inherits the last input's timestamp, and output on a port the
//!   node type does not declare (which the router would drop) is an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::data::{Control, Packet, RuntimeData};
use crate::node::{Node, NodeContext, NodeError, NodeType, Output, Outputs, Ports};
use crate::pipeline::ManifestError;
use crate::registry::{NodeFactory, NodeRegistry};

/// Names the harness's manifest in messages, like any manifest built in code.
const ORIGIN: &str = "<manifest>";

/// Drives a single node instance.
pub struct NodeHarness {
    node: Box<dyn Node>,
    /// The node type's name, for messages.
    name: Arc<str>,
    /// Declared ports, when known: controls are passed on from each output port, and output
    /// on an undeclared port is refused.
    ports: Option<Ports>,
    out: Outputs,
    seq: u64,
    /// Media timestamp given to the next pushed packet.
    pub timestamp: Duration,
    /// Timestamp of the last pushed packet, inherited by end-of-stream flush output.
    last: Duration,
}

impl NodeHarness {
    /// Builds a node of type `T` from manifest-style params (a JSON value). Params the type's
    /// JSON Schema refuses fail with the message a manifest holding them gets (without a line
    /// and column); the node's own refusal comes back as the node gave it.
    pub fn new<T: NodeType>(params: serde_json::Value) -> Result<Self, NodeError> {
        let mut registry = NodeRegistry::new();
        registry.register::<T>();
        Self::from_registry(registry, T::NAME, params)
    }

    /// Builds a node from a hand-written factory (a type whose ports depend on configuration),
    /// checked and created as [`NodeHarness::new`] does.
    pub fn from_factory(
        factory: Arc<dyn NodeFactory>,
        params: serde_json::Value,
    ) -> Result<Self, NodeError> {
        let name = factory.info().name.clone();
        let mut registry = NodeRegistry::new();
        registry.register_factory(factory);
        Self::from_registry(registry, &name, params)
    }

    /// Checks params of type `T` as the manifest checker does, for tests of the schema itself.
    /// Diagnostics carry no position: there is no manifest text.
    pub fn check_params<T: NodeType>(params: &serde_json::Value) -> Result<(), ManifestError> {
        let mut registry = NodeRegistry::new();
        registry.register::<T>();
        check_params(registry, T::NAME, params)
    }

    /// Wraps an existing instance. Its ports are unknown unless given with
    /// [`NodeHarness::with_ports`]: a control is then passed on from port 0 only, and outputs
    /// are not checked against ports.
    pub fn from_node(node: impl Node) -> Self {
        let name = std::any::type_name_of_val(&node).into();
        Self::from_boxed(Box::new(node), name, None)
    }

    /// Declares the node's ports (for a harness made by [`NodeHarness::from_node`]), so
    /// controls and outputs are treated as for a harness made by [`NodeHarness::new`].
    pub fn with_ports(mut self, ports: Ports) -> Self {
        self.ports = Some(ports);
        self
    }

    fn from_registry(
        registry: NodeRegistry,
        node_type: &str,
        params: serde_json::Value,
    ) -> Result<Self, NodeError> {
        let factory = registry
            .get(node_type)
            .cloned()
            .ok_or_else(|| NodeError::fatal(format!("no native node type `{node_type}`")))?;
        check_params(registry, node_type, &params).map_err(|e| NodeError::fatal(e.to_string()))?;
        let ctx = NodeContext {
            session_id: "test".into(),
            node_id: node_type.into(),
        };
        let node = factory.create(&params, &ctx)?;
        let info = factory.info();
        let ports = Ports {
            inputs: info.inputs.clone(),
            outputs: info.outputs.clone(),
        };
        Ok(Self::from_boxed(node, node_type.into(), Some(ports)))
    }

    fn from_boxed(node: Box<dyn Node>, name: Arc<str>, ports: Option<Ports>) -> Self {
        Self {
            node,
            name,
            ports,
            out: Outputs::default(),
            seq: 0,
            timestamp: Duration::ZERO,
            last: Duration::ZERO,
        }
    }

    /// Pushes data into input port 0 and returns what the node emitted (for a control, what
    /// the router would emit; see the module documentation).
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

    /// Pushes a control into input port 0 and returns what the router would emit: the node's
    /// outputs (from [`Node::flush`] for [`Control::Flush`], else from [`Node::control`]), then
    /// the control passed on from every output port (a cancel: before the outputs).
    pub async fn push_control(&mut self, control: Control) -> Result<Vec<RuntimeData>, NodeError> {
        self.push(RuntimeData::Control(control)).await
    }

    /// Like [`NodeHarness::push_to`], but keeps each output's port and media timestamp (an
    /// inherited timestamp is filled in with the input's).
    pub async fn push_outputs(
        &mut self,
        port: usize,
        data: RuntimeData,
    ) -> Result<Vec<Output>, NodeError> {
        if let Some(ports) = &self.ports
            && port >= ports.inputs.len()
        {
            return Err(NodeError::fatal(format!(
                "{} has no input port {port} ({} declared)",
                self.name,
                ports.inputs.len()
            )));
        }
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
        self.last = packet.timestamp;
        self.out.clear();
        let RuntimeData::Control(control) = &packet.data else {
            self.node.process(port, &packet, &mut self.out).await?;
            return self.take(packet.timestamp);
        };
        // As the router: the node reacts, its outputs leave, then the control is passed on.
        let reacted = match control {
            Control::Flush => self.node.flush(&mut self.out).await,
            other => self.node.control(other, &mut self.out).await,
        };
        reacted?;
        let reaction = self.take(packet.timestamp)?;
        let outputs = self.ports.as_ref().map_or(1, |p| p.outputs.len());
        let passed = (0..outputs).map(|port| Output {
            port,
            data: packet.data.clone(),
            timestamp: Some(packet.timestamp),
        });
        // A cancel leaves before what the node says about it; anything else after.
        Ok(match control {
            Control::Cancel { .. } => passed.chain(reaction).collect(),
            _ => reaction.into_iter().chain(passed).collect(),
        })
    }

    /// Ends the stream and returns what the node flushed.
    pub async fn flush(&mut self) -> Result<Vec<RuntimeData>, NodeError> {
        let out = self.flush_outputs().await?;
        Ok(out.into_iter().map(|o| o.data).collect())
    }

    /// Like [`NodeHarness::flush`], keeping ports and timestamps (an inherited timestamp is
    /// the last input's, as in the router). The router does not retry a flush: it reports
    /// the error and, when it is fatal, ends the session.
    pub async fn flush_outputs(&mut self) -> Result<Vec<Output>, NodeError> {
        self.out.clear();
        self.node.finish(&mut self.out).await?;
        self.take(self.last)
    }

    /// What the node emits unprompted ([`Node::poll_output`], as the router waits on it
    /// between inputs) during `span` of tokio time (paused time in tests runs it at once).
    pub async fn poll_for(&mut self, span: Duration) -> Result<Vec<RuntimeData>, NodeError> {
        let deadline = tokio::time::Instant::now() + span;
        self.out.clear();
        loop {
            tokio::select! {
                r = self.node.poll_output(&mut self.out) => r?,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let out = self.take(self.last)?;
        Ok(out.into_iter().map(|o| o.data).collect())
    }

    pub async fn close(mut self) -> Result<(), NodeError> {
        self.node.close().await
    }

    fn take(&mut self, inherited: Duration) -> Result<Vec<Output>, NodeError> {
        let out: Vec<Output> = self
            .out
            .drain()
            .map(|mut o| {
                o.timestamp = Some(o.timestamp.unwrap_or(inherited));
                o
            })
            .collect();
        if let Some(ports) = &self.ports
            && let Some(o) = out.iter().find(|o| o.port >= ports.outputs.len())
        {
            return Err(NodeError::fatal(format!(
                "{} emitted on output port {}, but declares {} output ports; the router \
                 would drop it",
                self.name,
                o.port,
                ports.outputs.len()
            )));
        }
        Ok(out)
    }
}

/// Runs the manifest checker on a one-node manifest holding `params`, so the schema check and
/// its messages are the manifest's own. Positions refer to generated text and are dropped.
fn check_params(
    registry: NodeRegistry,
    node_type: &str,
    params: &serde_json::Value,
) -> Result<(), ManifestError> {
    let runtime = crate::RuntimeBuilder::empty()
        .nodes(|r| *r = registry)
        .build()
        .unwrap_or_else(|e| unreachable!("no executor rules to compile: {e}"));
    let manifest = serde_json::json!({
        "version": "v1",
        "nodes": [{
            "id": node_id(node_type),
            "type": node_type,
            "params": params,
            "runtime_hint": "rust",
        }],
    });
    runtime
        .load(&manifest.to_string(), ORIGIN)
        .map(drop)
        .map_err(|mut e| {
            for d in &mut e.diagnostics {
                d.pos = None;
            }
            e
        })
}

/// The type name as a manifest node id (letters, digits, `_` and `-`).
fn node_id(node_type: &str) -> String {
    let id: String = node_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "node".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::MediaType;
    use crate::node::ErrorKind;
    use crate::runtime::RuntimeBuilder;
    use crate::session::SessionError;
    use async_trait::async_trait;
    use schemars::JsonSchema;
    use serde::Deserialize;
    use serde_json::json;

    /// Scales nothing; what matters is its params: the schema allows 0 to 2, the constructor
    /// refuses 0 on its own.
    struct Scale;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ScaleParams {
        #[schemars(range(min = 0.0, max = 2.0))]
        factor: f64,
    }

    #[async_trait]
    impl Node for Scale {
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

    impl NodeType for Scale {
        type Params = ScaleParams;
        const NAME: &'static str = "Scale";
        const DESCRIPTION: &'static str = "params test";
        fn ports() -> Ports {
            Ports::one_to_one(MediaType::ALL, MediaType::ALL)
        }
        fn new(p: ScaleParams, _: &NodeContext) -> Result<Self, NodeError> {
            assert!(
                (0.0..=2.0).contains(&p.factor),
                "the schema let factor {} through",
                p.factor
            );
            if p.factor == 0.0 {
                return Err(NodeError::fatal("Scale: factor must not be 0"));
            }
            Ok(Scale)
        }
    }

    #[test]
    fn params_the_schema_refuses_fail_with_the_manifests_message() {
        let rt = RuntimeBuilder::empty().node::<Scale>().build().unwrap();
        for (yaml, params, problem) in [
            ("{factor: 3.0}", json!({"factor": 3.0}), "maximum"),
            (
                "{factor: 1.0, gain: 2}",
                json!({"factor": 1.0, "gain": 2}),
                "unknown field `gain`",
            ),
            ("{factor: loud}", json!({"factor": "loud"}), "not of type"),
            ("{}", json!({}), "required"),
        ] {
            let text = format!(
                "version: v1\nnodes:\n  - id: Scale\n    type: Scale\n    params: {yaml}\n"
            );
            let manifest = rt.load(&text, "pipeline.yaml").err().unwrap();
            let want: Vec<String> = manifest
                .diagnostics
                .iter()
                .map(|d| format!("{ORIGIN}: {}: {}", d.path, d.message))
                .collect();
            let err = NodeHarness::new::<Scale>(params.clone()).err().unwrap();
            assert_eq!(err.kind, ErrorKind::Fatal);
            assert_eq!(err.message, want.join("\n"));
            assert!(err.message.contains("invalid params: "), "{}", err.message);
            assert!(err.message.contains(problem), "{}", err.message);
            let checked = NodeHarness::check_params::<Scale>(&params).unwrap_err();
            let strip = |e: &ManifestError| {
                let d = e.diagnostics.iter();
                d.map(|d| (d.path.clone(), d.message.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&checked), strip(&manifest));
            let mut registry = NodeRegistry::new();
            registry.register::<Scale>();
            let factory = registry.get("Scale").cloned().unwrap();
            let err = NodeHarness::from_factory(factory, params).err().unwrap();
            assert_eq!(err.message, want.join("\n"));
        }
        // Params the schema takes reach the constructor, whose refusal comes back unchanged.
        let err = NodeHarness::new::<Scale>(json!({"factor": 0.0}))
            .err()
            .unwrap();
        assert_eq!(err.message, "Scale: factor must not be 0");
        assert!(NodeHarness::new::<Scale>(json!({"factor": 2.0})).is_ok());
    }

    /// Holds text until a flush; a cancel drops what it holds and says so. A control reaching
    /// `process` is an error: the router never sends one there.
    #[derive(Default)]
    struct Hold {
        held: Vec<RuntimeData>,
    }

    #[async_trait]
    impl Node for Hold {
        async fn process(
            &mut self,
            _: usize,
            p: &Packet,
            _: &mut Outputs,
        ) -> Result<(), NodeError> {
            if let RuntimeData::Control(c) = &p.data {
                return Err(NodeError::fatal(format!("process got {c:?}")));
            }
            self.held.push(p.data.clone());
            Ok(())
        }

        async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
            self.held.drain(..).for_each(|d| out.push(d));
            Ok(())
        }

        async fn control(&mut self, c: &Control, out: &mut Outputs) -> Result<(), NodeError> {
            if let Control::Cancel { .. } = c {
                self.held.clear();
                out.push(RuntimeData::text("cancelled"));
            }
            Ok(())
        }
    }

    impl NodeType for Hold {
        type Params = serde_json::Value;
        const NAME: &'static str = "Hold";
        const DESCRIPTION: &'static str = "holds text until a flush";
        fn ports() -> Ports {
            Ports::one_to_one(MediaType::ALL, MediaType::ALL)
        }
        fn new(_: serde_json::Value, _: &NodeContext) -> Result<Self, NodeError> {
            Ok(Hold::default())
        }
    }

    /// Runs `inputs` (data, timestamp) through a one-node session of `T` and returns the
    /// session's output as (data, timestamp), or how it ended.
    async fn through_router<T: NodeType>(
        inputs: &[(RuntimeData, Duration)],
    ) -> Result<Vec<(RuntimeData, Duration)>, SessionError> {
        let rt = RuntimeBuilder::empty().node::<T>().build().unwrap();
        let text = format!("version: v1\nnodes:\n  - {{id: n, type: {}}}\n", T::NAME);
        let pipeline = rt.load(&text, "test.yaml").unwrap();
        let (input, mut output) = rt.open(&pipeline).await?.split();
        let feed = async move {
            for (data, at) in inputs {
                input.send_at(data.clone(), *at).await?;
            }
            Ok::<_, SessionError>(())
        };
        let collect = async {
            let mut got = Vec::new();
            while let Some(Ok(p)) = output.recv().await {
                got.push((p.data, p.timestamp));
            }
            got
        };
        let (fed, got) = tokio::join!(feed, collect);
        output.finish().await?;
        fed?;
        Ok(got)
    }

    /// The same through the harness, ending with its end-of-stream flush.
    async fn through_harness<T: NodeType>(
        inputs: &[(RuntimeData, Duration)],
    ) -> Result<Vec<(RuntimeData, Duration)>, NodeError> {
        let mut h = NodeHarness::new::<T>(json!({}))?;
        let mut got = Vec::new();
        for (data, at) in inputs {
            h.timestamp = *at;
            got.extend(h.push_outputs(0, data.clone()).await?);
        }
        got.extend(h.flush_outputs().await?);
        Ok(got
            .into_iter()
            .map(|o| (o.data, o.timestamp.unwrap_or_default()))
            .collect())
    }

    #[tokio::test]
    async fn flush_and_cancel_through_the_harness_are_the_routers() {
        let ms = Duration::from_millis;
        let cancel = Control::Cancel {
            reason: "barge-in".into(),
        };
        let inputs = [
            (RuntimeData::text("a"), ms(0)),
            (RuntimeData::text("b"), ms(10)),
            (RuntimeData::Control(Control::Flush), ms(20)),
            (RuntimeData::text("c"), ms(30)),
            (RuntimeData::Control(cancel.clone()), ms(40)),
            (RuntimeData::text("d"), ms(50)),
        ];
        let routed = through_router::<Hold>(&inputs).await.unwrap();
        let harnessed = through_harness::<Hold>(&inputs).await.unwrap();
        assert_eq!(harnessed, routed);
        // What that is: the held text at the flush's time, the flush passed on, the cancel
        // passed on and then its own output, then the end-of-stream flush at the last time.
        assert_eq!(
            routed,
            [
                (RuntimeData::text("a"), ms(20)),
                (RuntimeData::text("b"), ms(20)),
                (RuntimeData::Control(Control::Flush), ms(20)),
                (RuntimeData::Control(cancel), ms(40)),
                (RuntimeData::text("cancelled"), ms(40)),
                (RuntimeData::text("d"), ms(50)),
            ]
        );
        // push_control is the short form.
        let mut h = NodeHarness::new::<Hold>(json!({})).unwrap();
        h.push(RuntimeData::text("x")).await.unwrap();
        assert_eq!(
            h.push_control(Control::Flush).await.unwrap(),
            [RuntimeData::text("x"), RuntimeData::Control(Control::Flush)]
        );
    }

    /// Fails every flush with an error that would be retried anywhere else.
    struct FlakyFlush;

    #[async_trait]
    impl Node for FlakyFlush {
        async fn process(
            &mut self,
            _: usize,
            _: &Packet,
            _: &mut Outputs,
        ) -> Result<(), NodeError> {
            Ok(())
        }

        async fn flush(&mut self, _: &mut Outputs) -> Result<(), NodeError> {
            Err(NodeError::retryable("busy"))
        }
    }

    impl NodeType for FlakyFlush {
        type Params = serde_json::Value;
        const NAME: &'static str = "FlakyFlush";
        const DESCRIPTION: &'static str = "flush fails";
        fn ports() -> Ports {
            Ports::new()
                .input("in", MediaType::ALL)
                .output("a", MediaType::ALL)
                .output("b", MediaType::ALL)
        }
        fn new(_: serde_json::Value, _: &NodeContext) -> Result<Self, NodeError> {
            Ok(FlakyFlush)
        }
    }

    /// A flush that fails with a non-fatal error is reported and the session goes on, in the
    /// router as in the harness (which returns the error with its kind).
    #[tokio::test]
    async fn a_failed_flush_is_reported_with_its_kind_as_in_the_router() {
        let rt = RuntimeBuilder::empty()
            .node::<FlakyFlush>()
            .build()
            .unwrap();
        let text = "version: v1\nnodes:\n  - {id: n, type: FlakyFlush}\n";
        let pipeline = rt.load(text, "test.yaml").unwrap();
        let (input, mut output) = rt.open(&pipeline).await.unwrap().split();
        input
            .send(RuntimeData::Control(Control::Flush))
            .await
            .unwrap();
        drop(input);
        let mut failures = Vec::new();
        while let Some(item) = output.recv().await {
            if let Err(f) = item {
                failures.push((f.fatal, f.message));
            }
        }
        // The flush asked for, then the one at end of stream.
        assert_eq!(
            failures,
            [(false, "busy".to_string()), (false, "busy".to_string())]
        );
        output.finish().await.unwrap();
        let inputs = [(RuntimeData::Control(Control::Flush), Duration::ZERO)];
        let err = through_harness::<FlakyFlush>(&inputs).await.unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::Retryable, "busy")
        );
    }

    /// Sends each input to both of its outputs.
    struct Fork;

    #[async_trait]
    impl Node for Fork {
        async fn process(
            &mut self,
            _: usize,
            p: &Packet,
            out: &mut Outputs,
        ) -> Result<(), NodeError> {
            out.push_to(0, p.data.clone());
            out.push_to(1, p.data.clone());
            Ok(())
        }
    }

    impl NodeType for Fork {
        type Params = serde_json::Value;
        const NAME: &'static str = "Fork";
        const DESCRIPTION: &'static str = "one input, two outputs";
        fn ports() -> Ports {
            Ports::new()
                .input("in", MediaType::ALL)
                .output("a", MediaType::ALL)
                .output("b", MediaType::ALL)
        }
        fn new(_: serde_json::Value, _: &NodeContext) -> Result<Self, NodeError> {
            Ok(Fork)
        }
    }

    #[tokio::test]
    async fn a_control_is_passed_on_from_every_output_port() {
        let eos = RuntimeData::Control(Control::EndOfStream);
        let inputs = [(eos.clone(), Duration::ZERO)];
        let routed = through_router::<Fork>(&inputs).await.unwrap();
        assert_eq!(routed, vec![(eos.clone(), Duration::ZERO); 2]);
        let mut h = NodeHarness::new::<Fork>(json!({})).unwrap();
        let out = h.push_outputs(0, eos.clone()).await.unwrap();
        let got: Vec<(usize, &RuntimeData)> = out.iter().map(|o| (o.port, &o.data)).collect();
        assert_eq!(got, [(0, &eos), (1, &eos)]);
        // A bare instance's ports are unknown: one output is assumed until they are declared.
        let mut bare = NodeHarness::from_node(Fork);
        assert_eq!(
            bare.push_control(Control::EndOfStream).await.unwrap().len(),
            1
        );
        let mut bare = NodeHarness::from_node(Fork).with_ports(Fork::ports());
        assert_eq!(
            bare.push_control(Control::EndOfStream).await.unwrap().len(),
            2
        );
    }

    /// Emits on a port it does not declare.
    struct Stray;

    #[async_trait]
    impl Node for Stray {
        async fn process(
            &mut self,
            _: usize,
            p: &Packet,
            out: &mut Outputs,
        ) -> Result<(), NodeError> {
            out.push_to(1, p.data.clone());
            Ok(())
        }
    }

    impl NodeType for Stray {
        type Params = serde_json::Value;
        const NAME: &'static str = "Stray";
        const DESCRIPTION: &'static str = "emits on port 1 of 1";
        fn ports() -> Ports {
            Ports::one_to_one(MediaType::ALL, MediaType::ALL)
        }
        fn new(_: serde_json::Value, _: &NodeContext) -> Result<Self, NodeError> {
            Ok(Stray)
        }
    }

    #[tokio::test]
    async fn output_the_router_would_drop_is_an_error() {
        let mut h = NodeHarness::new::<Stray>(json!({})).unwrap();
        let err = h.push(RuntimeData::text("x")).await.unwrap_err();
        assert_eq!(
            err.message,
            "Stray emitted on output port 1, but declares 1 output ports; the router would drop it"
        );
        let err = h.push_to(1, RuntimeData::text("x")).await.unwrap_err();
        assert_eq!(err.message, "Stray has no input port 1 (1 declared)");
    }
}
