//! The runtime's side of one Python node: a [`Node`] that forwards inputs to its worker over
//! shared memory and emits what comes back.
//!
//! Up to `window` inputs are in flight at once, so the worker computes while the runtime
//! reads the next input; outputs that arrive between inputs leave through
//! [`Node::poll_output`]. A worker that dies or hangs is detected by its monitor. Everything it
//! sent before it died is delivered first; then the restart policy either starts a new worker
//! (the input the worker was processing is reported lost, with the node, exit status and last
//! stderr lines; the inputs sent after it go to the new worker, and the session goes on) or
//! fails the session with that report.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::Output;
use remotemedia_core::{Control, ErrorKind, Node, NodeError, Outputs, Packet, RuntimeData};

use crate::config::{RestartPolicy, WorkerConfig};
use crate::frame::{FLAG_REJECTED, Frame, Msg};
use crate::ipc::{IpcError, Link, ServiceNames};
use crate::process::{Launch, Process, StartError};

/// Makes service names unique across restarts and sessions in this process.
static INSTANCE: AtomicU64 = AtomicU64::new(0);
/// Worker processes that failed (died, hung or broke the protocol) in this process, and
/// those restarted after a failure: exported as metrics by the server.
static FAILURES: AtomicU64 = AtomicU64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);

/// Worker failures and restarts since this process started.
pub fn worker_stats() -> (u64, u64) {
    (FAILURES.load(Relaxed), RESTARTS.load(Relaxed))
}

pub(crate) fn count_failure() {
    FAILURES.fetch_add(1, Relaxed);
}

pub(crate) fn count_restart() {
    RESTARTS.fetch_add(1, Relaxed);
}

/// A number no other worker of this process has had.
fn next_instance() -> u64 {
    INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// A live worker and its link. Field order is drop order: the link's ports go before the
/// process is killed, so our side of shared memory is released first.
pub(crate) struct Worker {
    pub(crate) link: Link,
    pub(crate) process: Process,
}

impl Worker {
    /// Creates the shared-memory link (its services named after the launch's session and node)
    /// and starts the process on it.
    pub(crate) async fn start(launch: &mut Launch, cfg: &WorkerConfig) -> Result<Self, StartError> {
        let n = next_instance();
        let names = ServiceNames {
            prefix: format!(
                "remotemedia/{}/{}/{}-{n}",
                launch.session,
                launch.node_id,
                std::process::id()
            ),
        };
        launch.service = names.prefix.clone();
        let link = Link::create(&names, cfg.max_frame_bytes).map_err(|e| StartError::Spawn {
            python: "shared memory".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let process = Process::start(launch).await?;
        Ok(Self { link, process })
    }
}

/// A Python node as the router sees it.
pub struct PythonNode {
    launch: Launch,
    cfg: WorkerConfig,
    worker: Option<Worker>,
    /// Set when the worker is found dead or broken; cleared by a successful restart.
    failure: Option<String>,
    /// Requests sent and not yet answered, oldest first (kept to send again to a new worker).
    in_flight: VecDeque<Frame>,
    /// Requests that were in flight behind the one a failed worker was processing, for the
    /// next worker.
    replay: VecDeque<Frame>,
    next_seq: u64,
    restarts: u32,
    /// Outputs received but not yet handed to the router.
    ready: VecDeque<Output>,
    /// An error received but not yet reported.
    error: Option<NodeError>,
}

/// How long [`PythonNode::pump`] waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Take only what is already there.
    Nothing,
    /// Until fewer than `window` inputs are in flight.
    Room,
    /// Until every input is answered.
    Drained,
}

impl PythonNode {
    /// Starts the worker and waits for its handshake.
    pub async fn start(launch: Launch, cfg: WorkerConfig) -> Result<Self, NodeError> {
        let mut node = Self {
            launch,
            cfg,
            worker: None,
            failure: None,
            in_flight: VecDeque::new(),
            replay: VecDeque::new(),
            next_seq: 0,
            restarts: 0,
            ready: VecDeque::new(),
            error: None,
        };
        let worker = Worker::start(&mut node.launch, &node.cfg)
            .await
            .map_err(|e| NodeError::from_error(&node.describe("could not start"), &e))?;
        tracing::info!(
            session = %node.launch.session, node = %node.launch.node_id,
            pid = worker.process.pid, "python worker ready"
        );
        node.worker = Some(worker);
        Ok(node)
    }

    fn describe(&self, what: &str) -> String {
        format!(
            "python node `{}` ({}) {what}",
            self.launch.node_id, self.launch.node_type
        )
    }

    /// Keeps an error to report; a fatal one replaces a lesser one.
    fn note(&mut self, e: NodeError) {
        let replace = match &self.error {
            None => true,
            Some(old) => e.kind == ErrorKind::Fatal && old.kind != ErrorKind::Fatal,
        };
        if replace {
            self.error = Some(e);
        }
    }

    fn broken(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    fn next_frame(&mut self, msg: Msg, data: Option<(u16, Duration, RuntimeData)>) -> Frame {
        let seq = self.next_seq;
        self.next_seq += 1;
        match data {
            Some((port, ts, d)) => Frame::data(msg, seq, port, ts, &self.launch.session, d),
            None => Frame::bare(msg, seq, &self.launch.session),
        }
    }

    /// Sends a frame that the worker answers with `Done` or `Error`.
    fn request(&mut self, frame: Frame) {
        let Some(worker) = &self.worker else {
            return;
        };
        worker.process.sent.one();
        match worker.link.send(&frame) {
            Ok(()) => self.in_flight.push_back(frame),
            Err(IpcError::TooLarge { len, max }) => {
                let e = NodeError::rejected(self.describe(&format!(
                    "cannot take an input of {len} bytes: the limit is {max} (worker.max_frame_bytes)"
                )));
                self.note(e);
            }
            Err(e) => {
                // Sent again to the next worker.
                self.in_flight.push_back(frame);
                self.broken(e.to_string());
            }
        }
    }

    /// Handles one frame from the worker.
    fn take(&mut self, frame: Frame) -> Result<(), String> {
        if *frame.session != *self.launch.session {
            return Err(format!("sent a frame for session `{}`", frame.session));
        }
        match frame.msg {
            Msg::Data => {
                let Some(data) = frame.data else {
                    return Err("sent an output without data".into());
                };
                self.ready.push_back(Output {
                    port: usize::from(frame.port),
                    data,
                    timestamp: frame.timestamp,
                });
            }
            Msg::Done | Msg::Error => {
                let expected = self.in_flight.front().map(|f| f.seq);
                if expected != Some(frame.seq) {
                    return Err(format!(
                        "answered input {} out of order (expected {expected:?})",
                        frame.seq
                    ));
                }
                self.in_flight.pop_front();
                if frame.msg == Msg::Error {
                    let message =
                        self.describe(&format!("failed: {}", frame.error.unwrap_or_default()));
                    self.note(if frame.flags & FLAG_REJECTED != 0 {
                        NodeError::rejected(message)
                    } else {
                        NodeError::fatal(message)
                    });
                }
            }
            other => return Err(format!("sent an unexpected {other:?} frame")),
        }
        Ok(())
    }

    /// Takes every frame already in shared memory, after a failure too: what a worker sent
    /// before it died still counts. A worker that broke the protocol is not read further.
    fn drain(&mut self) {
        loop {
            let Some(worker) = &self.worker else {
                return;
            };
            match worker.link.try_recv() {
                Ok(Some(frame)) => {
                    if let Err(why) = self.take(frame) {
                        self.broken(format!("broke the protocol: it {why}"));
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.broken(e.to_string());
                    return;
                }
            }
        }
    }

    /// Waits (without polling) until the worker notifies or ends. Cancel-safe.
    async fn wait_event(&mut self) {
        let Some(worker) = &mut self.worker else {
            return;
        };
        let idle = self.in_flight.is_empty();
        let woke = tokio::select! {
            // Nothing is owed while idle, but a death must still be noticed.
            r = worker.link.wait(), if !idle => r.map_err(|e| e.to_string()),
            ended = worker.process.wait_ended() => Err(ended.to_string()),
        };
        // Outputs sent just before a crash still count.
        self.drain();
        if let Err(why) = woke {
            self.broken(why);
        }
    }

    /// Reads frames from the worker until `until` holds or the worker fails.
    async fn pump(&mut self, until: Until) {
        loop {
            self.drain();
            let done = match until {
                Until::Nothing => true,
                Until::Room => self.in_flight.len() < self.cfg.window,
                Until::Drained => self.in_flight.is_empty(),
            };
            if done || self.failure.is_some() || self.worker.is_none() {
                return;
            }
            self.wait_event().await;
        }
    }

    /// After a failure: cleans up the dead worker, then restarts it by policy. A restart is
    /// reported as a rejected error (the session goes on); no restart is fatal. Cancel-safe:
    /// interrupted, it resumes on the next call.
    async fn recover(&mut self) -> Result<(), NodeError> {
        if self.failure.is_none() {
            return Ok(());
        }
        // A worker that died may have sent outputs just before: they are delivered first.
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.process.ended().is_some())
        {
            self.drain();
        }
        if let Some(mut worker) = self.worker.take() {
            let ended = match worker.process.ended() {
                Some(e) => e,
                // Alive but broken (it broke the protocol): stop it.
                None => worker.process.kill().await,
            };
            count_failure();
            let tail = worker.process.stderr_tail().await;
            worker.link.cleanup_dead();
            drop(worker);
            let why = self.failure.take().unwrap_or_default();
            let mut message = format!("worker {ended}");
            if why != ended.to_string() {
                message.push_str(&format!(" ({why})"));
            }
            // The worker answers in order: the oldest unanswered request is the one it was on.
            let mut unanswered = std::mem::take(&mut self.in_flight);
            if let Some(lost) = unanswered.pop_front() {
                let what = match lost.msg {
                    Msg::Data => "input",
                    Msg::Flush => "flush",
                    _ => "control",
                };
                message.push_str(&format!("; the {what} it was processing was lost"));
            }
            self.replay = unanswered;
            self.failure = Some(format!("{message}{tail}"));
        }
        let message = self.failure.clone().unwrap_or_default();
        if self.cfg.restart == RestartPolicy::Never || self.restarts >= self.cfg.max_restarts {
            let policy = match self.cfg.restart {
                RestartPolicy::Never => "restart policy is `never`".to_string(),
                RestartPolicy::OnFailure => format!("all {} restarts used", self.cfg.max_restarts),
            };
            tracing::error!(session = %self.launch.session, node = %self.launch.node_id, "python {message}; {policy}");
            return Err(NodeError::fatal(
                self.describe(&format!("{policy}: {message}")),
            ));
        }
        let backoff = self.cfg.backoff(self.restarts);
        tracing::warn!(
            session = %self.launch.session, node = %self.launch.node_id,
            "python {message}; restarting in {backoff:?}"
        );
        tokio::time::sleep(backoff).await;
        let worker = Worker::start(&mut self.launch, &self.cfg)
            .await
            .map_err(|e| {
                NodeError::fatal(self.describe(&format!("restart failed ({e}) after: {message}")))
            })?;
        self.worker = Some(worker);
        self.restarts += 1;
        count_restart();
        self.failure = None;
        for frame in std::mem::take(&mut self.replay) {
            self.request(frame);
        }
        Err(NodeError::rejected(self.describe(&format!(
            "restarted ({} of {}) after: {message}",
            self.restarts, self.cfg.max_restarts
        ))))
    }

    /// Restarts a failed worker if needed. The error (a restart, or the end of the node) is
    /// kept to report after the outputs; false when there is no worker to send to.
    async fn ensure_worker(&mut self) -> bool {
        match self.recover().await {
            Ok(()) => true,
            Err(e) => {
                let alive = e.kind != ErrorKind::Fatal;
                self.note(e);
                alive
            }
        }
    }

    /// Hands received outputs to the router, then a pending error (the router delivers the
    /// outputs before it reports the error).
    fn deliver(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        for o in self.ready.drain(..) {
            out.push_output(o);
        }
        self.error.take().map_or(Ok(()), Err)
    }

    /// Sends a request and waits for every answer. A worker that dies meanwhile is replaced
    /// (by policy) and the requests it had not reached go to the new one, which is waited for
    /// in turn.
    async fn round_trip(&mut self, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        if self.ensure_worker().await {
            self.request(frame);
            loop {
                self.pump(Until::Drained).await;
                if !self.ensure_worker().await || self.in_flight.is_empty() {
                    break;
                }
            }
        }
        self.deliver(out)
    }
}

#[async_trait]
impl Node for PythonNode {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        if !self.ensure_worker().await {
            return self.deliver(out);
        }
        // After a restart (an error is then pending), nothing from the new worker is read
        // before the report: the outputs from before the crash, then the report, then the rest.
        // The restart left room in the window (it re-sent fewer than `window` inputs).
        if self.error.is_none() {
            self.pump(Until::Room).await;
            // A worker that died while we waited for room is replaced before this input goes.
            if !self.ensure_worker().await {
                return self.deliver(out);
            }
        }
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        let frame = self.next_frame(Msg::Data, Some((port, input.timestamp, input.data.clone())));
        self.request(frame);
        if self.error.is_none() {
            self.pump(Until::Nothing).await;
        }
        self.deliver(out)
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let frame = self.next_frame(Msg::Flush, None);
        self.round_trip(frame, out).await
    }

    async fn control(&mut self, control: &Control, out: &mut Outputs) -> Result<(), NodeError> {
        let data = RuntimeData::Control(control.clone());
        let frame = self.next_frame(Msg::Control, Some((0, Duration::ZERO, data)));
        self.round_trip(frame, out).await
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        loop {
            if !self.ready.is_empty() || self.error.is_some() {
                return self.deliver(out);
            }
            if self.failure.is_some() {
                self.ensure_worker().await;
                continue;
            }
            if self.worker.is_none() {
                std::future::pending::<()>().await;
            }
            self.wait_event().await;
        }
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        let Some(mut worker) = self.worker.take() else {
            return Ok(());
        };
        let frame = Frame::bare(Msg::Close, self.next_seq, &self.launch.session);
        if worker.link.send(&frame).is_ok() {
            worker.process.shutdown(self.cfg.close_timeout()).await;
        } else {
            worker.process.kill().await;
        }
        worker.link.cleanup_dead();
        Ok(())
    }
}
