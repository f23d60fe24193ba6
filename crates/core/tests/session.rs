//! The session router end to end: fan-out, fan-in, end of stream, errors, retries, circuit
//! breaker, drop policy, cancellation and leaks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::session::SessionError;
use remotemedia_core::{
    MediaType, Node, NodeContext, NodeError, Outputs, Packet, Runtime, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Nodes of type `Script` closed so far (all tests, so only ever compared as a difference).
static CLOSED: AtomicUsize = AtomicUsize::new(0);

/// A node whose behaviour is set by its params, to script failures and timing.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct ScriptParams {
    /// Input text that causes a fatal error.
    fatal_on: Option<String>,
    /// Input text that always fails with a retryable error.
    fail_on: Option<String>,
    /// Input text that is rejected (reported and skipped, not retried).
    reject_on: Option<String>,
    /// Retryable failures before each input succeeds.
    flaky: u32,
    /// Await this long per input.
    sleep_ms: u64,
    /// Hold inputs until flush, then emit them followed by `<id>-flushed`.
    buffer: bool,
    /// Fail at creation.
    refuse_create: bool,
}

struct Script {
    p: ScriptParams,
    id: String,
    attempts: u32,
    held: Vec<RuntimeData>,
}

#[async_trait]
impl Node for Script {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let text = input
            .data
            .as_text()
            .map(|t| t.text.to_string())
            .unwrap_or_default();
        if self.p.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.p.sleep_ms)).await;
        }
        if self.p.fatal_on.as_deref() == Some(text.as_str()) {
            return Err(NodeError::fatal(format!("cannot handle `{text}`")));
        }
        if self.p.fail_on.as_deref() == Some(text.as_str()) {
            return Err(NodeError::retryable("temporarily unavailable"));
        }
        if self.p.reject_on.as_deref() == Some(text.as_str()) {
            return Err(NodeError::rejected(format!("cannot read `{text}`")));
        }
        if self.attempts < self.p.flaky {
            self.attempts += 1;
            return Err(NodeError::retryable("flaky"));
        }
        self.attempts = 0;
        if self.p.buffer {
            self.held.push(input.data.clone());
        } else {
            out.push(input.data.clone());
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if self.p.buffer {
            for d in self.held.drain(..) {
                out.push(d);
            }
            out.push(RuntimeData::text(format!("{}-flushed", self.id)));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        CLOSED.fetch_add(1, SeqCst);
        Ok(())
    }
}

impl NodeType for Script {
    type Params = ScriptParams;
    const NAME: &'static str = "Script";
    const DESCRIPTION: &'static str = "scripted test node";
    fn ports() -> Ports {
        Ports::one_to_one(MediaType::ALL, MediaType::ALL)
    }
    fn new(p: ScriptParams, ctx: &NodeContext) -> Result<Self, NodeError> {
        if p.refuse_create {
            return Err(NodeError::fatal("model file missing"));
        }
        Ok(Self {
            p,
            id: ctx.node_id.to_string(),
            attempts: 0,
            held: Vec::new(),
        })
    }
}

fn runtime() -> Runtime {
    common::builder().node::<Script>().build().unwrap()
}

fn texts(packets: &[Packet]) -> Vec<String> {
    packets
        .iter()
        .filter_map(|p| p.data.as_text().map(|t| t.text.to_string()))
        .collect()
}

#[tokio::test]
async fn fan_out_shares_one_sample_buffer() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: src, type: PassThrough}
  - {id: a, type: PassThrough}
  - {id: b, type: TestAudioOnly}
  - {id: c, type: PassThrough}
connections:
  - {from: src, to: a}
  - {from: src, to: b}
  - {from: src, to: c}
",
            "fanout.yaml",
        )
        .unwrap();
    let frame = RuntimeData::audio(vec![0.25f32; 320], 16_000, 1);
    let original = frame.as_audio().unwrap().clone();
    let out = rt.execute(&p, vec![frame]).await.unwrap();
    assert_eq!(out.len(), 3);
    let mut sources: Vec<&str> = out.iter().map(|p| &*p.source).collect();
    sources.sort();
    assert_eq!(sources, ["a", "b", "c"]);
    for p in &out {
        assert!(p.data.as_audio().unwrap().shares_samples_with(&original));
    }
}

/// Memory lent by someone else (as a numpy array is), with a flag for when it is given back.
struct Lent {
    data: Vec<f32>,
    returned: Arc<AtomicBool>,
}

impl remotemedia_core::ForeignSamples for Lent {
    fn samples(&self) -> &[f32] {
        &self.data
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.returned.store(true, SeqCst);
    }
}

#[tokio::test]
async fn lent_samples_cross_a_session_in_place_and_go_back_with_the_last_frame() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1\nnodes:\n  - {id: a, type: PassThrough}\n  - {id: b, type: TestAudioOnly}\nconnections:\n  - {from: a, to: b}\n",
            "lent.yaml",
        )
        .unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let lent = Arc::new(Lent {
        data: vec![0.5; 320],
        returned: Arc::clone(&returned),
    });
    let at = lent.data.as_ptr();
    let frame = RuntimeData::audio(remotemedia_core::Samples::foreign(lent), 16_000, 1);
    let out = rt.execute(&p, vec![frame]).await.unwrap();
    let audio = out[0].data.as_audio().unwrap();
    assert_eq!(
        audio.samples().as_ptr(),
        at,
        "no copy from the lender to the output"
    );
    assert_eq!(audio.duration(), Duration::from_millis(20));
    assert!(!returned.load(SeqCst));
    drop(out);
    assert!(returned.load(SeqCst), "released with the last frame");
}

#[tokio::test]
async fn fan_in_merges_both_branches_in_order() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: split, type: TestTwoOutputs}
  - {id: x, type: PassThrough}
  - {id: y, type: PassThrough}
  - {id: join, type: PassThrough}
connections:
  - {from: split.left, to: x}
  - {from: split.right, to: y}
  - {from: x, to: join}
  - {from: y, to: join}
",
            "fanin.yaml",
        )
        .unwrap();
    let inputs = (0..50).map(|i| RuntimeData::text(i.to_string())).collect();
    let out = rt.execute(&p, inputs).await.unwrap();
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|p| &*p.source == "join"));
    // Each branch keeps its own order.
    let seqs: Vec<u64> = out.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    let mut got = texts(&out);
    got.sort();
    let mut want: Vec<String> = (0..50)
        .flat_map(|i| [i.to_string(), i.to_string()])
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn end_of_stream_flushes_nodes_in_topological_order() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: c, type: Script, params: {buffer: true}}
  - {id: a, type: Script, params: {buffer: true}}
  - {id: b, type: Script, params: {buffer: true}}
connections:
  - {from: a, to: b}
  - {from: b, to: c}
",
            "eos.yaml",
        )
        .unwrap();
    let mut s = rt.open(&p).await.unwrap();
    for t in ["1", "2", "3"] {
        s.send(RuntimeData::text(t)).await.unwrap();
    }
    // Nothing comes out before the end of stream: every node buffers.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), s.recv())
            .await
            .is_err()
    );
    let (out, report) = s.close().await.unwrap();
    assert_eq!(
        texts(&out),
        ["1", "2", "3", "a-flushed", "b-flushed", "c-flushed"]
    );
    assert_eq!(report.metrics.nodes["a"].counters.processed, 3);
}

#[tokio::test]
async fn fatal_node_error_ends_the_session_naming_the_node() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: first, type: PassThrough}
  - {id: parser, type: Script, params: {fatal_on: boom}}
connections:
  - {from: first, to: parser}
",
            "fatal.yaml",
        )
        .unwrap();
    let closed_before = CLOSED.load(SeqCst);
    let mut s = rt.open(&p).await.unwrap();
    s.send(RuntimeData::text("ok")).await.unwrap();
    s.send(RuntimeData::text("boom")).await.unwrap();
    let first = s.recv().await.unwrap().unwrap();
    assert_eq!(texts(&[first]), ["ok"]);
    let failure = s.recv().await.unwrap().unwrap_err();
    assert_eq!(&*failure.node_id, "parser");
    assert!(failure.fatal);
    assert_eq!(failure.message, "cannot handle `boom`");
    let err = s.close().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "node `parser` (Script): cannot handle `boom`"
    );
    assert!(CLOSED.load(SeqCst) > closed_before, "the node was closed");
    assert_eq!(rt.metrics().snapshot().sessions_failed, 1);
}

#[tokio::test]
async fn retryable_errors_are_retried_with_backoff() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: flaky, type: Script, params: {flaky: 2}}
config:
  retry: {max_retries: 3, initial_backoff_ms: 10, multiplier: 2.0}
",
            "retry.yaml",
        )
        .unwrap();
    let t0 = Instant::now();
    let mut s = rt.open(&p).await.unwrap();
    s.send(RuntimeData::text("x")).await.unwrap();
    let out = s.recv().await.unwrap().unwrap();
    assert_eq!(texts(&[out]), ["x"]);
    // Two retries: 10 ms then 20 ms of backoff.
    assert!(t0.elapsed() >= Duration::from_millis(30));
    let (_, report) = s.close().await.unwrap();
    let c = &report.metrics.nodes["flaky"].counters;
    assert_eq!((c.retries, c.errors, c.processed), (2, 0, 1));
}

#[tokio::test]
async fn exhausted_retries_are_reported_and_the_session_goes_on() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: n, type: Script, params: {fail_on: bad}}
config:
  retry: {max_retries: 1, initial_backoff_ms: 1}
",
            "skip.yaml",
        )
        .unwrap();
    let mut s = rt.open(&p).await.unwrap();
    s.send(RuntimeData::text("bad")).await.unwrap();
    s.send(RuntimeData::text("good")).await.unwrap();
    // The failure travels beside the outputs; their relative order is not fixed.
    let (mut outputs, mut failures) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match s.recv().await.unwrap() {
            Ok(p) => outputs.push(p),
            Err(f) => failures.push(f),
        }
    }
    assert_eq!(texts(&outputs), ["good"]);
    assert_eq!(failures.len(), 1);
    assert!(!failures[0].fatal);
    assert_eq!(failures[0].message, "temporarily unavailable");
    let (_, report) = s.close().await.unwrap();
    let c = &report.metrics.nodes["n"].counters;
    assert_eq!((c.retries, c.errors, c.processed), (1, 1, 1));
}

#[tokio::test]
async fn rejected_inputs_are_reported_at_once_and_never_open_the_breaker() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: n, type: Script, params: {reject_on: 你好}}
config:
  retry: {max_retries: 3, initial_backoff_ms: 5000}
  circuit_breaker: {failure_threshold: 2, reset_timeout_ms: 60000}
",
            "reject.yaml",
        )
        .unwrap();
    let mut s = rt.open(&p).await.unwrap();
    let started = Instant::now();
    for text in ["你好", "你好", "你好", "fine"] {
        s.send(RuntimeData::text(text)).await.unwrap();
    }
    s.end_input();
    let (mut outputs, mut failures) = (Vec::new(), Vec::new());
    while let Some(item) = s.recv().await {
        match item {
            Ok(p) => outputs.push(p),
            Err(f) => failures.push(f),
        }
    }
    // No backoff was waited (a retry would take five seconds), and the breaker stayed closed.
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(texts(&outputs), ["fine"]);
    assert_eq!(failures.len(), 3);
    assert!(
        failures
            .iter()
            .all(|f| !f.fatal && f.message == "cannot read `你好`")
    );
    let (_, report) = s.close().await.unwrap();
    let c = &report.metrics.nodes["n"].counters;
    assert_eq!(
        (c.retries, c.errors, c.processed, c.breaker_trips),
        (0, 3, 1, 0)
    );
}

#[tokio::test]
async fn circuit_breaker_opens_probes_and_closes() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: n, type: Script, params: {fail_on: bad}}
config:
  retry: {max_retries: 0}
  circuit_breaker: {failure_threshold: 3, reset_timeout_ms: 500}
",
            "breaker.yaml",
        )
        .unwrap();
    let mut s = rt.open(&p).await.unwrap();
    for _ in 0..5 {
        s.send(RuntimeData::text("bad")).await.unwrap();
    }
    let mut messages = Vec::new();
    for _ in 0..5 {
        messages.push(s.recv().await.unwrap().unwrap_err().message);
    }
    assert_eq!(messages[..3], ["temporarily unavailable"; 3]);
    assert!(
        messages[3..]
            .iter()
            .all(|m| m.starts_with("circuit breaker open"))
    );
    // While open, even a good input is refused.
    s.send(RuntimeData::text("good")).await.unwrap();
    assert!(
        s.recv()
            .await
            .unwrap()
            .unwrap_err()
            .message
            .starts_with("circuit breaker open")
    );
    // After the reset timeout a probe goes through and closes the breaker.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.send(RuntimeData::text("good")).await.unwrap();
    assert_eq!(texts(&[s.recv().await.unwrap().unwrap()]), ["good"]);
    s.send(RuntimeData::text("good")).await.unwrap();
    assert_eq!(texts(&[s.recv().await.unwrap().unwrap()]), ["good"]);
    let (_, report) = s.close().await.unwrap();
    let c = &report.metrics.nodes["n"].counters;
    assert_eq!(
        (c.errors, c.rejected, c.breaker_trips, c.processed),
        (3, 3, 1, 2)
    );
}

#[tokio::test]
async fn drop_oldest_edges_count_every_drop() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: slow, type: Script, params: {sleep_ms: 2}}
config:
  edges: {capacity: 4, drop_policy: drop_oldest}
",
            "drops.yaml",
        )
        .unwrap();
    let (input, mut output) = rt.open(&p).await.unwrap().split();
    for i in 0..200 {
        input.send(RuntimeData::text(i.to_string())).await.unwrap();
    }
    drop(input);
    let mut received = Vec::new();
    while let Some(item) = output.recv().await {
        received.push(item.unwrap());
    }
    let report = output.finish().await.unwrap();
    let dropped = report.metrics.dropped;
    assert!(dropped > 0, "a slow node behind a small edge must drop");
    assert_eq!(
        received.len() as u64 + dropped,
        200,
        "every packet is delivered or counted"
    );
    assert_eq!(report.metrics.edges_dropped["input->slow.in"], dropped);
    // The newest input always survives drop-oldest.
    assert_eq!(texts(&received).last().unwrap(), "199");
}

#[tokio::test]
async fn block_edges_apply_backpressure_and_lose_nothing() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: slow, type: Script, params: {sleep_ms: 1}}
config:
  edges: {capacity: 2}
",
            "block.yaml",
        )
        .unwrap();
    let inputs: Vec<RuntimeData> = (0..100).map(|i| RuntimeData::text(i.to_string())).collect();
    let out = rt.execute(&p, inputs).await.unwrap();
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(texts(&out), want);
}

#[tokio::test]
async fn cancel_interrupts_a_busy_node_and_closes_it() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: stuck, type: Script, params: {sleep_ms: 60000}}
",
            "cancel.yaml",
        )
        .unwrap();
    let closed_before = CLOSED.load(SeqCst);
    let s = rt.open(&p).await.unwrap();
    s.send(RuntimeData::text("x")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    s.cancel().await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        t0.elapsed()
    );
    assert!(CLOSED.load(SeqCst) > closed_before);
    let m = rt.metrics().snapshot();
    assert_eq!((m.nodes_alive, m.tasks_alive, m.edges_alive), (0, 0, 0));
}

#[tokio::test]
async fn inputs_are_routed_by_media_type() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: upper, type: TextTransform, params: {op: uppercase}}
",
            "route.yaml",
        )
        .unwrap();
    let s = rt.open(&p).await.unwrap();
    let err = s
        .send(RuntimeData::audio(vec![0.0; 4], 16_000, 1))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::NoInput {
            media: MediaType::Audio,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "no pipeline input takes audio data (inputs: upper.in takes text)"
    );
    s.send_to("upper", RuntimeData::text("hi")).await.unwrap();
    let (out, _) = s.close().await.unwrap();
    assert_eq!(texts(&out), ["HI"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_leave_nothing_behind() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: a, type: PassThrough}
  - {id: b, type: Script}
  - {id: c, type: TextTransform, params: {op: uppercase}}
connections:
  - {from: a, to: b}
  - {from: b, to: c}
",
            "many.yaml",
        )
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let baseline = handle.metrics().num_alive_tasks();
    for i in 0..1000 {
        let mut s = rt.open(&p).await.unwrap();
        s.send(RuntimeData::text("x")).await.unwrap();
        match i % 4 {
            // Closed normally.
            0 | 1 => {
                let (out, _) = s.close().await.unwrap();
                assert_eq!(texts(&out), ["X"]);
            }
            // Cancelled.
            2 => {
                s.cancel().await;
            }
            // Read one output, then simply dropped.
            _ => {
                assert!(s.recv().await.unwrap().is_ok());
                drop(s);
            }
        }
    }
    // Dropped sessions finish on their own tasks; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (rt.metrics().snapshot().tasks_alive > 0 || handle.metrics().num_alive_tasks() > baseline)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = rt.metrics().snapshot();
    assert_eq!(m.sessions_opened, 1000);
    assert_eq!(m.sessions_closed, 1000);
    assert_eq!(m.sessions_active, 0);
    assert_eq!(m.nodes_created, 3000);
    assert_eq!(m.nodes_closed, 3000);
    assert_eq!((m.nodes_alive, m.tasks_alive, m.edges_alive), (0, 0, 0));
    assert_eq!(handle.metrics().num_alive_tasks(), baseline);
    // Closed and dropped sessions processed their input; cancelled ones may have.
    let processed = m.node_types["TextTransform"].processed;
    assert!((750..=1000).contains(&processed), "{processed}");
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: a, type: PassThrough}
config: {metrics: false}
",
            "nometrics.yaml",
        )
        .unwrap();
    let out = rt.execute(&p, vec![RuntimeData::text("x")]).await.unwrap();
    assert_eq!(out.len(), 1);
    let m = rt.metrics().snapshot();
    assert_eq!(m.node_types["PassThrough"].processed, 0);
    assert_eq!(m.node_types["PassThrough"].latency.count, 0);
    assert_eq!((m.inputs, m.outputs), (1, 1));
}

#[tokio::test]
async fn node_creation_failure_names_the_node_and_leaks_nothing() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: ok, type: Script}
  - {id: broken, type: Script, params: {refuse_create: true}}
connections:
  - {from: ok, to: broken}
",
            "create.yaml",
        )
        .unwrap();
    let closed_before = CLOSED.load(SeqCst);
    let err = rt.open(&p).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "could not create node `broken` (Script): model file missing"
    );
    // The node created before it was closed again.
    assert!(CLOSED.load(SeqCst) > closed_before);
    let m = rt.metrics().snapshot();
    assert_eq!((m.nodes_alive, m.edges_alive, m.sessions_active), (0, 0, 0));
}

#[tokio::test]
async fn a_cancel_overtakes_queued_work_and_drops_what_the_busy_node_was_making() {
    let rt = runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: src, type: PassThrough}
  - {id: slow, type: Script, params: {sleep_ms: 300}}
connections:
  - {from: src, to: slow}
",
            "cancel-queue.yaml",
        )
        .unwrap();
    let s = rt.open(&p).await.unwrap();
    for t in ["a", "b", "c"] {
        s.send(RuntimeData::text(t)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancel = remotemedia_core::Control::Cancel {
        reason: "barge-in".into(),
    };
    s.send(RuntimeData::Control(cancel.clone())).await.unwrap();
    s.send(RuntimeData::text("d")).await.unwrap();
    let (out, _) = s.close().await.unwrap();
    // `a` was being made when the cancel came, `b` and `c` were queued: all abandoned.
    assert_eq!(texts(&out), ["d"]);
    assert_eq!(out[0].data, RuntimeData::Control(cancel));
}

/// Passes text on (`out`) and logs what comes back on its feedback port (`log`).
struct Tally;

#[async_trait]
impl Node for Tally {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let text = input.data.as_text().map(|t| t.text.to_string());
        match port {
            0 => out.push(input.data.clone()),
            _ => out.push_to(
                1,
                RuntimeData::text(format!("heard {}", text.unwrap_or_default())),
            ),
        }
        Ok(())
    }
}

impl NodeType for Tally {
    type Params = ScriptParams;
    const NAME: &'static str = "Tally";
    const DESCRIPTION: &'static str = "test node with a feedback port";
    fn ports() -> Ports {
        Ports::new()
            .input("in", &[MediaType::Text])
            .feedback("heard", &[MediaType::Text])
            .output("out", &[MediaType::Text])
            .output("log", &[MediaType::Text])
    }
    fn new(_: ScriptParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self)
    }
}

#[tokio::test]
async fn a_feedback_port_closes_no_cycle_and_the_session_still_ends() {
    let rt = common::builder()
        .node::<Script>()
        .node::<Tally>()
        .build()
        .unwrap();
    let manifest = |to: &str| {
        format!(
            "version: v1
nodes:
  - {{id: tally, type: Tally}}
  - {{id: back, type: PassThrough}}
connections:
  - {{from: tally.out, to: back}}
  - {{from: back, to: {to}}}
"
        )
    };
    let err = rt.load(&manifest("tally.in"), "cycle.yaml").unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    let p = rt.load(&manifest("tally.heard"), "feedback.yaml").unwrap();
    // Only `tally.in` is a session input; the text goes round once and is logged.
    let mut s = rt.open(&p).await.unwrap();
    s.send(RuntimeData::text("a")).await.unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&"heard a".to_string()) {
        let p = tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .expect("the text came back")
            .unwrap()
            .unwrap();
        seen.extend(texts(&[p]));
    }
    tokio::time::timeout(Duration::from_secs(5), s.close())
        .await
        .expect("end of stream does not wait for the feedback edge")
        .unwrap();
    let m = rt.metrics().snapshot();
    assert_eq!((m.nodes_alive, m.tasks_alive, m.edges_alive), (0, 0, 0));
}
