//! The session router: one live run of a pipeline.
//!
//! Every node runs in its own task and owns its state; packets travel over bounded edges
//! straight from producer to consumer (no central loop to hop through). End of stream is the
//! closing of edges, so nodes flush in topological order: a node flushes only after everything
//! upstream has flushed into it. A fatal node error or a cancel stops every task; node
//! instances are always closed, and a session leaves no task, edge or node behind.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::data::{Control, MediaType, Packet, RuntimeData};
use crate::edge::{EdgeKind, EdgeSender, Inbox, TryRecv};
use crate::manifest::DropPolicy;
use crate::metrics::{EdgeMetrics, NodeMetrics, ProcessMetrics, SessionMetrics, SessionSnapshot};
use crate::node::{ErrorKind, Node, NodeError, Outputs};
use crate::pipeline::{ManifestError, Pipeline};
use crate::retry::{BreakerState, CircuitBreaker, RetryConfig};

/// Failures kept for the client before further ones are only counted.
const MAX_PENDING_FAILURES: usize = 1024;
/// How long a cancelled session waits for node tasks before aborting them.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// A node that could not process a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub node_id: Arc<str>,
    pub node_type: String,
    pub message: String,
    /// A fatal failure ends the session; others cost one packet, which is reported here.
    pub fatal: bool,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node `{}` ({}): {}",
            self.node_id, self.node_type, self.message
        )
    }
}

/// Why a session could not start or did not end well.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("could not create node `{node_id}` ({node_type}): {message}")]
    Create {
        node_id: String,
        node_type: String,
        message: String,
        /// Trying again later can help (a remote or a worker that is busy or restarting).
        retryable: bool,
    },
    #[error("{0}")]
    Node(NodeFailure),
    #[error("no pipeline input takes {media} data (inputs: {inputs})")]
    NoInput { media: MediaType, inputs: String },
    #[error("no input port `{0}` in this pipeline; name an entry node")]
    UnknownInput(String),
    #[error("the session has ended")]
    Closed,
    #[error("the session was cancelled")]
    Cancelled,
}

/// The channels of a session before its tasks start: each node's inbox, the input port of
/// each of its inbox edges, the senders of each of its output ports, the session's entries and
/// output, and the edges' metrics.
struct Wiring {
    inboxes: Vec<Inbox>,
    edge_ports: Vec<Vec<usize>>,
    outs: Vec<Vec<Vec<EdgeSender>>>,
    entries: Vec<Entry>,
    output: Inbox,
    edge_metrics: Vec<Arc<EdgeMetrics>>,
}

impl Wiring {
    /// One bounded edge per connection, one per entry port (the session's input) and one per
    /// exit port (the session's output).
    fn new(pipeline: &Pipeline, process: &Arc<ProcessMetrics>) -> Self {
        let config = &pipeline.manifest.config;
        let mut w = Wiring {
            inboxes: pipeline.nodes.iter().map(|_| Inbox::new()).collect(),
            edge_ports: vec![Vec::new(); pipeline.nodes.len()],
            outs: pipeline
                .nodes
                .iter()
                .map(|n| n.output_names.iter().map(|_| Vec::new()).collect())
                .collect(),
            entries: Vec::new(),
            output: Inbox::new(),
            edge_metrics: Vec::new(),
        };
        let port_label = |n: usize, p: usize, input: bool| {
            let node = &pipeline.nodes[n];
            let names = if input {
                &node.input_names
            } else {
                &node.output_names
            };
            format!("{}.{}", node.id, names[p])
        };
        for e in &pipeline.edges {
            let label = format!(
                "{}->{}",
                port_label(e.from, e.from_port, false),
                port_label(e.to, e.to_port, true)
            );
            let metrics = w.edge(label);
            let kind = if e.feedback {
                EdgeKind::Feedback
            } else {
                EdgeKind::Internal
            };
            let tx = w.inboxes[e.to].connect(
                e.capacity,
                e.drop_policy,
                kind,
                metrics,
                Arc::clone(process),
            );
            w.edge_ports[e.to].push(e.to_port);
            w.outs[e.from][e.from_port].push(tx);
        }
        for (n, p) in pipeline.entry_ports() {
            let metrics = w.edge(format!("input->{}", port_label(n, p, true)));
            let (capacity, policy) = (config.edges.capacity, config.edges.drop_policy);
            let tx = w.inboxes[n].connect(
                capacity,
                policy,
                EdgeKind::Boundary,
                metrics,
                Arc::clone(process),
            );
            w.edge_ports[n].push(p);
            let node = &pipeline.nodes[n];
            w.entries.push(Entry {
                node: Arc::clone(&node.id),
                port: node.input_names[p].clone(),
                media: node.info.inputs[p].media.clone(),
                tx,
            });
        }
        for (n, p) in pipeline.exit_ports() {
            let metrics = w.edge(format!("{}->output", port_label(n, p, false)));
            let capacity = config.edges.capacity;
            let tx = w.output.connect(
                capacity,
                DropPolicy::Block,
                EdgeKind::Boundary,
                metrics,
                Arc::clone(process),
            );
            w.outs[n][p].push(tx);
        }
        w
    }

    fn edge(&mut self, label: String) -> Arc<EdgeMetrics> {
        let m = Arc::new(EdgeMetrics {
            label,
            dropped: AtomicU64::new(0),
        });
        self.edge_metrics.push(Arc::clone(&m));
        m
    }
}

/// Wires created nodes into a running session and starts one task per node. Called by
/// [`crate::Runtime::open`].
pub(crate) fn start(
    pipeline: &Arc<Pipeline>,
    session_id: Arc<str>,
    nodes: Vec<LiveNode>,
    process: &Arc<ProcessMetrics>,
) -> Session {
    let config = &pipeline.manifest.config;
    let w = Wiring::new(pipeline, process);
    let node_metrics: Vec<Arc<NodeMetrics>> = pipeline
        .nodes
        .iter()
        .map(|n| {
            Arc::new(NodeMetrics {
                node_id: Arc::clone(&n.id),
                node_type: n.node_type.clone(),
                counters: Default::default(),
            })
        })
        .collect();
    let metrics = Arc::new(SessionMetrics {
        session_id: Arc::clone(&session_id),
        pipeline: Arc::clone(&pipeline.name),
        started: Instant::now(),
        nodes: node_metrics.clone(),
        edges: w.edge_metrics,
        inputs: AtomicU64::new(0),
        outputs: AtomicU64::new(0),
    });
    process.session_started(Arc::clone(&metrics));

    let task_wakers: Vec<Arc<AtomicWaker>> = w
        .inboxes
        .iter()
        .map(|_| Arc::new(AtomicWaker::new()))
        .collect();
    let state = Arc::new(SessionState {
        id: Arc::clone(&session_id),
        cancelled: AtomicBool::new(false),
        failures: Mutex::new(VecDeque::new()),
        fatal: Mutex::new(None),
        suppressed: AtomicU64::new(0),
        task_wakers: task_wakers.clone(),
        output_wake: w.output.waker(),
        process: Arc::clone(process),
    });

    let per_node = nodes
        .into_iter()
        .zip(w.inboxes)
        .zip(w.edge_ports)
        .zip(w.outs)
        .zip(node_metrics)
        .enumerate();
    let tasks = per_node
        .map(|(i, ((((node, inbox), edge_ports), outs), metrics))| {
            let pn = &pipeline.nodes[i];
            let task = NodeTask {
                node,
                _alive: TaskGuard::new(Arc::clone(process)),
                id: Arc::clone(&pn.id),
                node_type: pn.node_type.clone(),
                session: Arc::clone(&session_id),
                inbox,
                edge_ports,
                seqs: vec![0; outs.len()],
                outs,
                port_names: pn.output_names.clone(),
                metrics,
                metrics_on: config.metrics,
                retry: config.retry,
                breaker: CircuitBreaker::new(config.circuit_breaker),
                state: Arc::clone(&state),
                cancel_waker: Arc::clone(&task_wakers[i]),
                last: (Duration::ZERO, Instant::now()),
            };
            tokio::spawn(task.run())
        })
        .collect();

    Session {
        input: Some(SessionInput {
            entries: w.entries,
            state: Arc::clone(&state),
            metrics: Arc::clone(&metrics),
            seq: AtomicU64::new(0),
            started: Instant::now(),
        }),
        output: SessionOutput {
            output: w.output,
            state,
            tasks,
            metrics,
        },
    }
}

struct SessionState {
    id: Arc<str>,
    cancelled: AtomicBool,
    failures: Mutex<VecDeque<NodeFailure>>,
    fatal: Mutex<Option<NodeFailure>>,
    suppressed: AtomicU64,
    /// Every node task's waker, so cancellation interrupts whatever a node is awaiting.
    task_wakers: Vec<Arc<AtomicWaker>>,
    output_wake: Arc<Notify>,
    process: Arc<ProcessMetrics>,
}

impl SessionState {
    fn cancel(&self) {
        if !self.cancelled.swap(true, Relaxed) {
            for w in &self.task_wakers {
                w.wake();
            }
            self.output_wake.notify_one();
        }
    }

    fn report(&self, failure: NodeFailure) {
        if failure.fatal {
            tracing::error!(session = %self.id, node = %failure.node_id, "{}", failure.message);
            let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
            if fatal.is_none() {
                *fatal = Some(failure.clone());
            }
        } else {
            tracing::warn!(session = %self.id, node = %failure.node_id, "{}", failure.message);
        }
        let fatal = failure.fatal;
        {
            let mut q = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() < MAX_PENDING_FAILURES || fatal {
                q.push_back(failure);
            } else {
                self.suppressed.fetch_add(1, Relaxed);
            }
        }
        self.output_wake.notify_one();
        if fatal {
            self.cancel();
        }
    }

    fn pop_failure(&self) -> Option<NodeFailure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    fn fatal(&self) -> Option<NodeFailure> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        let failed = self.fatal.get_mut().map(|f| f.is_some()).unwrap_or(false);
        self.process.session_ended(&self.id, failed);
    }
}

/// A node instance, counted while it exists.
pub(crate) struct LiveNode {
    node: Box<dyn Node>,
    process: Arc<ProcessMetrics>,
    closed: bool,
}

impl LiveNode {
    pub(crate) fn new(node: Box<dyn Node>, process: Arc<ProcessMetrics>) -> Self {
        process.nodes_created.fetch_add(1, Relaxed);
        process.nodes_alive.fetch_add(1, Relaxed);
        Self {
            node,
            process,
            closed: false,
        }
    }

    pub(crate) async fn close(&mut self) -> Option<NodeError> {
        if std::mem::replace(&mut self.closed, true) {
            return None;
        }
        self.process.nodes_closed.fetch_add(1, Relaxed);
        self.node.close().await.err()
    }
}

impl Drop for LiveNode {
    fn drop(&mut self) {
        self.process.nodes_alive.fetch_sub(1, Relaxed);
    }
}

/// Counts a node task while it exists, including when it is aborted.
struct TaskGuard(Arc<ProcessMetrics>);

impl TaskGuard {
    fn new(process: Arc<ProcessMetrics>) -> Self {
        process.tasks_alive.fetch_add(1, Relaxed);
        Self(process)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks_alive.fetch_sub(1, Relaxed);
    }
}

/// One node's task: its instance, its inbox and the senders of its outgoing edges.
struct NodeTask {
    node: LiveNode,
    _alive: TaskGuard,
    id: Arc<str>,
    node_type: String,
    session: Arc<str>,
    inbox: Inbox,
    /// Input port of each inbox edge.
    edge_ports: Vec<usize>,
    /// Senders per output port.
    outs: Vec<Vec<EdgeSender>>,
    seqs: Vec<u64>,
    port_names: Vec<Arc<str>>,
    metrics: Arc<NodeMetrics>,
    metrics_on: bool,
    retry: RetryConfig,
    breaker: CircuitBreaker,
    state: Arc<SessionState>,
    cancel_waker: Arc<AtomicWaker>,
    /// Timestamp and capture instant of the last input, inherited by flush output.
    last: (Duration, Instant),
}

/// Resolves when the session is cancelled; polled before each step of a node's loop, so a
/// cancel interrupts a node even while it awaits something slow.
struct Cancelled {
    state: Arc<SessionState>,
    waker: Arc<AtomicWaker>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.cancelled.load(Relaxed) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.state.cancelled.load(Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// How a node's loop ended.
enum Stop {
    /// End of stream, flushed.
    Done,
    /// Cancelled, failed elsewhere, or downstream gone.
    Halted,
    Failed(NodeError),
}

impl NodeTask {
    async fn run(mut self) {
        let cancelled = Cancelled {
            state: Arc::clone(&self.state),
            waker: Arc::clone(&self.cancel_waker),
        };
        let stop = tokio::select! {
            biased;
            _ = cancelled => Stop::Halted,
            stop = self.drive() => stop,
        };
        // Report a failure before the outputs close, so a reader never sees the stream end
        // without it; then close outgoing edges so downstream can finish while this closes.
        if let Stop::Failed(e) = stop {
            self.fail(e, true);
        }
        self.outs.clear();
        let closed = self.node.close().await;
        if let Some(e) = closed {
            tracing::warn!(session = %self.session, node = %self.id, "close failed: {e}");
        }
    }

    async fn drive(&mut self) -> Stop {
        let mut out = Outputs::default();
        let unprompted = self.node.node.emits_unprompted();
        loop {
            let next = if unprompted {
                out.clear();
                tokio::select! {
                    next = self.inbox.recv() => next,
                    r = self.node.node.poll_output(&mut out) => {
                        // What the node produced before an error goes out before it.
                        if let Stop::Halted = self.forward(&mut out).await {
                            return Stop::Halted;
                        }
                        if let Err(e) = self.settle(r) {
                            return Stop::Failed(e);
                        }
                        continue;
                    }
                }
            } else {
                self.inbox.recv().await
            };
            if self.state.cancelled.load(Relaxed) {
                return Stop::Halted;
            }
            let Some((edge, packet)) = next else {
                // End of stream: everything upstream has flushed into us.
                out.clear();
                let r = self.node.node.finish(&mut out).await;
                let stop = self.forward(&mut out).await;
                return match self.settle(r) {
                    Err(e) => Stop::Failed(e),
                    Ok(()) => stop,
                };
            };
            self.last = (packet.timestamp, packet.captured);
            let port = self.edge_ports[edge];
            if let RuntimeData::Control(c) = &packet.data {
                out.clear();
                let r = match c {
                    Control::Flush => self.node.node.flush(&mut out).await,
                    other => self.node.node.control(other, &mut out).await,
                };
                // What a flush emits goes before the flush; what a node says about a cancel
                // (what was heard, say) after it, or the cancel would drop it as stale.
                let cancel = matches!(c, Control::Cancel { .. });
                if cancel && self.pass_control(&packet).await.is_err() {
                    return Stop::Halted;
                }
                if let Stop::Halted = self.forward(&mut out).await {
                    return Stop::Halted;
                }
                if let Err(e) = self.settle(r) {
                    return Stop::Failed(e);
                }
                if !cancel && self.pass_control(&packet).await.is_err() {
                    return Stop::Halted;
                }
                continue;
            }
            let r = self.process(port, &packet, &mut out).await;
            if self.inbox.cancel_pending() {
                // A cancel came while this input was processed: what it gave is abandoned.
                out.clear();
            }
            if let Stop::Halted = self.forward(&mut out).await {
                return Stop::Halted;
            }
            if let Err(e) = self.settle(r) {
                return Stop::Failed(e);
            }
        }
    }

    /// One input through the circuit breaker and retry policy.
    async fn process(
        &mut self,
        port: usize,
        packet: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let counters = &self.metrics.counters;
        if self.breaker.state() != BreakerState::Closed && !self.breaker.allow(Instant::now()) {
            counters.rejected.fetch_add(1, Relaxed);
            return Err(NodeError::retryable(
                "circuit breaker open after repeated failures; input skipped",
            ));
        }
        let mut attempt = 0;
        loop {
            out.clear();
            let result = if self.metrics_on {
                let t0 = Instant::now();
                let r = self.node.node.process(port, packet, out).await;
                counters.latency.record(t0.elapsed());
                r
            } else {
                self.node.node.process(port, packet, out).await
            };
            match result {
                Ok(()) => {
                    if self.metrics_on {
                        counters.processed.fetch_add(1, Relaxed);
                    }
                    self.breaker.record_success();
                    return Ok(());
                }
                Err(e) if e.kind == ErrorKind::Rejected => {
                    counters.errors.fetch_add(1, Relaxed);
                    return Err(e);
                }
                Err(e) if e.is_retryable() && attempt < self.retry.max_retries => {
                    counters.retries.fetch_add(1, Relaxed);
                    // Boxed: a timer in the hot future's state would be copied on every call.
                    Box::pin(tokio::time::sleep(self.retry.backoff(attempt))).await;
                    attempt += 1;
                    if self.state.cancelled.load(Relaxed) {
                        return Err(e);
                    }
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Relaxed);
                    let trips = self.breaker.trips;
                    self.breaker.record_failure(Instant::now());
                    if self.breaker.trips > trips {
                        counters.breaker_trips.fetch_add(1, Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// What a node call's result means for the node's task: a fatal error is returned (it ends
    /// the session), any other is reported and the node goes on.
    fn settle(&self, r: Result<(), NodeError>) -> Result<(), NodeError> {
        match r {
            Err(e) if e.kind == ErrorKind::Fatal => Err(e),
            Err(e) => {
                self.fail(e, false);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn fail(&self, e: NodeError, fatal: bool) {
        self.state.report(NodeFailure {
            node_id: Arc::clone(&self.id),
            node_type: self.node_type.clone(),
            message: e.message,
            fatal,
        });
    }

    /// Stamps outputs into packets and sends each on every edge of its port.
    async fn forward(&mut self, out: &mut Outputs) -> Stop {
        for o in out.drain() {
            let Some(senders) = self.outs.get(o.port) else {
                tracing::warn!(node = %self.id, port = o.port, "output on an undeclared port ignored");
                continue;
            };
            let seq = self.seqs[o.port];
            self.seqs[o.port] += 1;
            let packet = Packet {
                data: o.data,
                session: Arc::clone(&self.session),
                source: Arc::clone(&self.id),
                port: Arc::clone(&self.port_names[o.port]),
                seq,
                timestamp: o.timestamp.unwrap_or(self.last.0),
                captured: self.last.1,
            };
            if send_all(senders, packet).await.is_err() {
                return Stop::Halted;
            }
        }
        Stop::Done
    }

    /// Passes a control packet on along every outgoing edge.
    async fn pass_control(&mut self, packet: &Packet) -> Result<(), ()> {
        for (port, senders) in self.outs.iter().enumerate() {
            let mut p = packet.clone();
            p.source = Arc::clone(&self.id);
            p.port = Arc::clone(&self.port_names[port]);
            send_all(senders, p).await?;
        }
        Ok(())
    }
}

/// Sends to each sender, cloning for all but the last (the data itself is shared).
async fn send_all(senders: &[EdgeSender], packet: Packet) -> Result<(), ()> {
    if let Some((last, rest)) = senders.split_last() {
        for s in rest {
            s.send(packet.clone()).await.map_err(drop)?;
        }
        last.send(packet).await.map_err(drop)?;
    }
    Ok(())
}

struct Entry {
    node: Arc<str>,
    port: Arc<str>,
    media: Vec<MediaType>,
    tx: EdgeSender,
}

impl Entry {
    /// Control reaches every input; other data only the inputs that take its media type.
    fn accepts(&self, media: MediaType) -> bool {
        media == MediaType::Control || self.media.contains(&media)
    }
}

/// The sending half of a session. Dropping it ends the input (end of stream).
pub struct SessionInput {
    entries: Vec<Entry>,
    state: Arc<SessionState>,
    metrics: Arc<SessionMetrics>,
    seq: AtomicU64,
    started: Instant,
}

impl SessionInput {
    /// Sends data to every pipeline input that takes its media type (control goes to all).
    /// The media timestamp is the time since the session started.
    pub async fn send(&self, data: RuntimeData) -> Result<(), SessionError> {
        let ts = self.started.elapsed();
        self.send_at(data, ts).await
    }

    /// Like [`SessionInput::send`] with an explicit media timestamp.
    pub async fn send_at(
        &self,
        data: RuntimeData,
        timestamp: Duration,
    ) -> Result<(), SessionError> {
        let media = data.media_type();
        if !self.entries.iter().any(|e| e.accepts(media)) {
            return Err(SessionError::NoInput {
                media,
                inputs: self.describe_inputs(),
            });
        }
        // Each target gets a clone: the data itself is shared, so this costs refcounts only.
        let packet = self.packet(data, timestamp);
        for e in self.entries.iter().filter(|e| e.accepts(media)) {
            e.tx.send(packet.clone()).await.map_err(|_| self.ended())?;
        }
        self.metrics.inputs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Sends to the input ports of one node (`node` or `node.port`).
    pub async fn send_to(&self, target: &str, data: RuntimeData) -> Result<(), SessionError> {
        self.send_to_at(target, data, self.started.elapsed()).await
    }

    /// Like [`SessionInput::send_to`] with an explicit media timestamp.
    pub async fn send_to_at(
        &self,
        target: &str,
        data: RuntimeData,
        timestamp: Duration,
    ) -> Result<(), SessionError> {
        let (node, port) = match target.split_once('.') {
            Some((n, p)) => (n, Some(p)),
            None => (target, None),
        };
        let media = data.media_type();
        let entry = self
            .entries
            .iter()
            .filter(|e| &*e.node == node && port.is_none_or(|p| &*e.port == p))
            .find(|e| e.accepts(media))
            .ok_or_else(|| SessionError::UnknownInput(target.to_string()))?;
        let packet = self.packet(data, timestamp);
        entry.tx.send(packet).await.map_err(|_| self.ended())?;
        self.metrics.inputs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Live metrics of this session.
    pub fn metrics(&self) -> SessionSnapshot {
        self.metrics.snapshot()
    }

    fn packet(&self, data: RuntimeData, timestamp: Duration) -> Packet {
        let late = self.started.elapsed().saturating_sub(timestamp);
        self.state.process.input_lag.record(late);
        Packet {
            data,
            session: Arc::clone(&self.state.id),
            source: "input".into(),
            port: "out".into(),
            seq: self.seq.fetch_add(1, Relaxed),
            timestamp,
            captured: Instant::now(),
        }
    }

    fn ended(&self) -> SessionError {
        match self.state.fatal() {
            Some(f) => SessionError::Node(f),
            None if self.state.cancelled.load(Relaxed) => SessionError::Cancelled,
            None => SessionError::Closed,
        }
    }

    fn describe_inputs(&self) -> String {
        self.entries
            .iter()
            .map(|e| {
                let media: Vec<String> = e.media.iter().map(|m| m.to_string()).collect();
                format!("{}.{} takes {}", e.node, e.port, media.join("|"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The receiving half of a session: its output stream and its end.
pub struct SessionOutput {
    output: Inbox,
    state: Arc<SessionState>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<SessionMetrics>,
}

/// Cancels a session (see [`SessionOutput::canceller`]).
#[derive(Clone)]
pub struct SessionCanceller(Arc<SessionState>);

impl SessionCanceller {
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// What a finished session did.
#[derive(Clone, Debug)]
pub struct SessionReport {
    pub metrics: SessionSnapshot,
    /// Failures not kept for the client because too many were pending (still counted).
    pub suppressed_failures: u64,
}

impl SessionOutput {
    /// Next output packet, or a node failure; `None` once every node has finished. Outputs
    /// already queued come before a failure reported after them.
    pub async fn recv(&mut self) -> Option<Result<Packet, NodeFailure>> {
        loop {
            match self.output.try_recv() {
                TryRecv::Item(_, p) => {
                    self.metrics.outputs.fetch_add(1, Relaxed);
                    let took = p.captured.elapsed();
                    self.state.process.output_lag.record(took);
                    return Some(Ok(p));
                }
                TryRecv::Closed => return self.state.pop_failure().map(Err),
                TryRecv::Empty => {
                    if let Some(f) = self.state.pop_failure() {
                        return Some(Err(f));
                    }
                    self.output.changed().await;
                }
            }
        }
    }

    /// Stops every node now; queued data is discarded and nodes are closed.
    pub fn cancel(&self) {
        self.state.cancel();
    }

    /// A handle that cancels this session from anywhere, e.g. another thread while this one
    /// waits in [`SessionOutput::recv`].
    pub fn canceller(&self) -> SessionCanceller {
        SessionCanceller(Arc::clone(&self.state))
    }

    pub fn session_id(&self) -> &str {
        &self.state.id
    }

    /// Live metrics of this session.
    pub fn metrics(&self) -> SessionSnapshot {
        self.metrics.snapshot()
    }

    /// Waits for every node to finish (discarding outputs not yet read) and reports how the
    /// session went: an error if a node failed fatally.
    pub async fn finish(self) -> Result<SessionReport, SessionError> {
        match self.finish_report().await {
            (_, Some(f)) => Err(SessionError::Node(f)),
            (report, None) => Ok(report),
        }
    }

    /// Like [`SessionOutput::finish`], but the report comes with the fatal failure, if any,
    /// rather than instead of it.
    pub async fn finish_report(mut self) -> (SessionReport, Option<NodeFailure>) {
        while self.recv().await.is_some() {}
        let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if self.state.cancelled.load(Relaxed) {
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    tracing::warn!(session = %self.state.id, "node task did not stop in time; aborted");
                    abort.abort();
                }
            } else {
                let _ = task.await;
            }
        }
        let report = SessionReport {
            metrics: self.metrics.snapshot(),
            suppressed_failures: self.state.suppressed.load(Relaxed),
        };
        (report, self.state.fatal())
    }
}

impl Drop for SessionOutput {
    fn drop(&mut self) {
        // Abandoned without finish(): stop the nodes; their tasks close them and exit.
        if !self.tasks.is_empty() {
            self.state.cancel();
        }
    }
}

/// A live session: send inputs, read outputs, then close or cancel.
pub struct Session {
    input: Option<SessionInput>,
    output: SessionOutput,
}

impl Session {
    pub fn id(&self) -> &str {
        self.output.session_id()
    }

    /// See [`SessionInput::send`].
    pub async fn send(&self, data: RuntimeData) -> Result<(), SessionError> {
        match &self.input {
            Some(i) => i.send(data).await,
            None => Err(SessionError::Closed),
        }
    }

    /// See [`SessionInput::send_to`].
    pub async fn send_to(&self, target: &str, data: RuntimeData) -> Result<(), SessionError> {
        match &self.input {
            Some(i) => i.send_to(target, data).await,
            None => Err(SessionError::Closed),
        }
    }

    /// See [`SessionOutput::recv`].
    pub async fn recv(&mut self) -> Option<Result<Packet, NodeFailure>> {
        self.output.recv().await
    }

    /// Ends the input: nodes flush in topological order and the output stream then ends.
    pub fn end_input(&mut self) {
        self.input = None;
    }

    /// Separates input and output so they can be driven from different tasks.
    pub fn split(self) -> (SessionInput, SessionOutput) {
        let Session { input, output } = self;
        let input = input.unwrap_or_else(|| SessionInput {
            entries: Vec::new(),
            state: Arc::clone(&output.state),
            metrics: Arc::clone(&output.metrics),
            seq: AtomicU64::new(0),
            started: Instant::now(),
        });
        (input, output)
    }

    /// Ends the input, collects the remaining outputs and waits for every node to finish.
    pub async fn close(mut self) -> Result<(Vec<Packet>, SessionReport), SessionError> {
        self.end_input();
        let (_, mut output) = self.split();
        let mut packets = Vec::new();
        while let Some(item) = output.recv().await {
            if let Ok(p) = item {
                packets.push(p);
            }
        }
        let report = output.finish().await?;
        Ok((packets, report))
    }

    /// Stops every node now and waits for them to close.
    pub async fn cancel(self) -> SessionReport {
        let (_, output) = self.split();
        output.cancel();
        output.finish_report().await.0
    }
}
