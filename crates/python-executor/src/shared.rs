//! Shared workers: one Python process (or a pool of `workers`) serves every session that uses a
//! node type declared `shared = True` with the same params.
//!
//! The model loads once per process (the class's `load`); each session gets its own node
//! instance in that process, opened with the session and closed with it, so per-session state
//! never mixes. Requests from all sessions go through the core [`Scheduler`]: round-robin by
//! session, bounded queue, dynamic batching (a batch is sent as consecutive frames, the last
//! without `FLAG_MORE`, and a node with `process_batch` runs it as one call), and the queue
//! depth, wait and batch sizes exported with the other models' metrics. Each session is pinned
//! to one process of the pool (the one with the fewest sessions when it opens).
//!
//! The scheduler's threads ("lanes", `worker.lanes`) each send their batch and wait for its
//! answers; one reader task per process routes answers by sequence number. In the process, each
//! session's node runs on a thread of its own and each batch on a pool thread, so a node that
//! blocks holds one lane, not the process or the other sessions.
//!
//! When the process dies, only the requests in flight on it fail: each is answered with what
//! it produced before the death and the error (exit status, last stderr lines). The next
//! request restarts the process by the restart policy and opens the sessions pinned to it
//! again (their state starts afresh, as a restarted per-session worker's does).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use remotemedia_core::node::Output;
use remotemedia_core::scheduler::{BatchModel, Outcome, ScheduleError, Scheduler, SchedulerConfig};
use remotemedia_core::{Control, ErrorKind, Node, NodeError, Outputs, Packet, RuntimeData};
use tokio::sync::{mpsc, oneshot};

use crate::config::{RestartPolicy, WorkerConfig};
use crate::frame::{FLAG_MORE, FLAG_REJECTED, Frame, Msg};
use crate::ipc::{IpcError, Link};
use crate::lock;
use crate::node::{Worker, count_failure, count_restart};
use crate::process::{Launch, Process, StartError};

/// What one session asks of the shared worker.
pub struct Request {
    session: Arc<str>,
    msg: Msg,
    port: u16,
    timestamp: Duration,
    data: Option<RuntimeData>,
    /// Where its outputs go as they arrive (none: dropped).
    outputs: Option<mpsc::UnboundedSender<Output>>,
}

/// How one request ended (its outputs went to the request's channel as they came, those
/// produced before a failure, even the worker's death, included).
#[derive(Default)]
pub struct Answer {
    error: Option<NodeError>,
    /// The process died before answering.
    lost: bool,
}

/// The answers of one live process, routed by sequence number by its reader task.
struct Routes {
    link: Link,
    /// Lanes waiting for answers, by the sequence number of each request they sent.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Frame>>>,
    /// Set (before `waiting` is emptied) once the process has ended: how, and stderr's tail.
    ended: OnceLock<(String, String)>,
    /// Keeps a batch's frames consecutive on the link.
    send: Mutex<()>,
    sent: Arc<crate::process::Sent>,
    next_seq: AtomicU64,
}

impl Routes {
    fn route(&self, frame: Frame) {
        let tx = {
            let mut waiting = lock(&self.waiting);
            match frame.msg {
                Msg::Done | Msg::Error => waiting.remove(&frame.seq),
                _ => waiting.get(&frame.seq).cloned(),
            }
        };
        match tx {
            Some(tx) => {
                let _ = tx.send(frame);
            }
            None => tracing::warn!(
                seq = frame.seq,
                "shared python worker answered a request nobody waits for"
            ),
        }
    }

    /// Reads every frame already in shared memory. False when the link is broken.
    fn drain(&self) -> bool {
        loop {
            match self.link.try_recv() {
                Ok(Some(frame)) => self.route(frame),
                Ok(None) => return true,
                Err(e) => {
                    tracing::error!("shared python worker: {e}");
                    return false;
                }
            }
        }
    }
}

/// A live process. Dropping it stops the process (a close frame, then a kill after the grace).
struct Conn {
    routes: Arc<Routes>,
    pid: u32,
    _stop: oneshot::Sender<()>,
}

impl Conn {
    async fn start(launch: &mut Launch, cfg: &WorkerConfig) -> Result<Self, StartError> {
        let Worker { link, process } = Worker::start(launch, cfg).await?;
        let routes = Arc::new(Routes {
            link,
            waiting: Mutex::new(HashMap::new()),
            ended: OnceLock::new(),
            send: Mutex::new(()),
            sent: Arc::clone(&process.sent),
            next_seq: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let pid = process.pid;
        tokio::spawn(read(
            Arc::clone(&routes),
            process,
            stopped,
            cfg.close_timeout(),
        ));
        Ok(Self {
            routes,
            pid,
            _stop: stop,
        })
    }

    /// Sends `requests` as one batch. Each gets the receiver its answers arrive on.
    fn send(&self, requests: &[&Request]) -> Vec<mpsc::UnboundedReceiver<Frame>> {
        let routes = &self.routes;
        let _consecutive = lock(&routes.send);
        let last = requests.len().saturating_sub(1);
        let mut receivers = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let seq = routes.next_seq.fetch_add(1, Relaxed);
            let mut frame = match &r.data {
                Some(d) => Frame::data(r.msg, seq, r.port, r.timestamp, &r.session, d.clone()),
                None => Frame::bare(r.msg, seq, &r.session),
            };
            if i < last {
                frame.flags |= FLAG_MORE;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            lock(&routes.waiting).insert(seq, tx.clone());
            routes.sent.one();
            match routes.link.send(&frame) {
                Ok(()) => {}
                // The process is gone, not yet reaped: the request is lost with it (its
                // receiver closes), and tried again as any request lost in a death is.
                Err(IpcError::NotConnected) => {
                    lock(&routes.waiting).remove(&seq);
                }
                // This request fails (an input over `max_frame_bytes`, say); the others go on.
                Err(e) => {
                    lock(&routes.waiting).remove(&seq);
                    let mut failed = Frame::bare(Msg::Error, seq, &r.session);
                    failed.flags = FLAG_REJECTED;
                    failed.error = Some(format!("cannot send it to the worker: {e}"));
                    let _ = tx.send(failed);
                }
            }
            receivers.push(rx);
        }
        receivers
    }

    /// How the process ended, if it has.
    fn ended(&self) -> Option<&String> {
        self.routes.ended.get().map(|(how, _)| how)
    }
}

/// The reader of one process: routes its answers until it ends or is stopped.
async fn read(
    routes: Arc<Routes>,
    mut process: Process,
    mut stop: oneshot::Receiver<()>,
    grace: Duration,
) {
    let ended = loop {
        if !routes.drain() {
            process.kill().await;
            break "broke the protocol and was killed".to_string();
        }
        tokio::select! {
            r = routes.link.wait() => if let Err(e) = r {
                tracing::error!("shared python worker: {e}");
            },
            ended = process.wait_ended() => {
                routes.drain();
                break ended.to_string();
            }
            _ = &mut stop => {
                let close = Frame::bare(Msg::Close, u64::MAX, &Arc::from(""));
                if routes.link.send(&close).is_ok() {
                    process.shutdown(grace).await;
                } else {
                    process.kill().await;
                }
                routes.link.cleanup_dead();
                return;
            }
        }
    };
    let tail = process.stderr_tail().await;
    routes.link.cleanup_dead();
    let _ = routes
        .ended
        .set((format!("shared worker (pid {}) {ended}", process.pid), tail));
    // Ends every lane's wait: their requests failed with the process.
    lock(&routes.waiting).clear();
}

/// One process of a pool and the sessions pinned to it.
pub struct Host {
    cfg: WorkerConfig,
    runtime: tokio::runtime::Handle,
    /// Held through a restart (which takes seconds when a model loads): lanes only.
    state: Mutex<HostState>,
    /// Apart from `state`, so sessions open and close on runtime threads without waiting for
    /// a restart.
    sessions: Mutex<HashSet<Arc<str>>>,
}

struct HostState {
    launch: Launch,
    conn: Option<Arc<Conn>>,
    /// Restarts since a restarted process last answered a request.
    restarts: u32,
    /// Why no process will be started again.
    gave_up: Option<String>,
}

impl Host {
    fn state(&self) -> MutexGuard<'_, HostState> {
        lock(&self.state)
    }

    fn sessions(&self) -> MutexGuard<'_, HashSet<Arc<str>>> {
        lock(&self.sessions)
    }

    /// Whether a failed process will be replaced.
    fn restarts_left(&self, st: &HostState) -> bool {
        self.cfg.restart == RestartPolicy::OnFailure && st.restarts < self.cfg.max_restarts
    }

    /// The live process, restarted (by policy, after the backoff) if it died. Blocking: runs
    /// on a scheduler thread.
    fn conn(&self) -> Result<Arc<Conn>, NodeError> {
        let mut st = self.state();
        if let Some(c) = &st.conn
            && c.ended().is_none()
        {
            return Ok(Arc::clone(c));
        }
        if let Some(why) = &st.gave_up {
            return Err(NodeError::fatal(why.clone()));
        }
        let ended = match st.conn.take() {
            Some(c) => {
                count_failure();
                c.ended().cloned().unwrap_or_default()
            }
            None => String::new(),
        };
        if !self.restarts_left(&st) {
            let policy = match self.cfg.restart {
                RestartPolicy::Never => "restart policy is `never`".to_string(),
                RestartPolicy::OnFailure => format!("all {} restarts used", self.cfg.max_restarts),
            };
            let why = format!("{policy}: {ended}");
            st.gave_up = Some(why.clone());
            return Err(NodeError::fatal(why));
        }
        let backoff = self.cfg.backoff(st.restarts);
        tracing::warn!(node = %st.launch.node_type, "python {ended}; restarting in {backoff:?}");
        std::thread::sleep(backoff);
        let mut launch = st.launch.clone();
        let cfg = self.cfg.clone();
        // Spawned from a runtime thread, which lives as long as the runtime (PDEATHSIG).
        let started = self.runtime.block_on(async move {
            let task = tokio::spawn(async move {
                let conn = Conn::start(&mut launch, &cfg).await?;
                Ok::<_, StartError>((conn, launch))
            });
            task.await.map_err(|e| StartError::Spawn {
                python: "the runtime".into(),
                source: std::io::Error::other(e.to_string()),
            })?
        });
        st.restarts += 1;
        count_restart();
        let (conn, launch) = started
            .map_err(|e| NodeError::fatal(format!("restart failed ({e}) after: {ended}")))?;
        st.launch = launch;
        let conn = Arc::new(conn);
        // The sessions pinned here start afresh in the new process.
        let sessions: Vec<Arc<str>> = self.sessions().iter().cloned().collect();
        let opens: Vec<Request> = sessions
            .into_iter()
            .map(|s| Request::bare(s, Msg::Open))
            .collect();
        let refs: Vec<&Request> = opens.iter().collect();
        for (r, rx) in opens.iter().zip(conn.send(&refs)) {
            let answer = collect(rx, &conn, r);
            if let Some(e) = answer.error {
                tracing::warn!(session = %r.session, "reopening after a restart failed: {}", e.message);
                self.sessions().remove(&r.session);
            }
        }
        st.conn = Some(Arc::clone(&conn));
        Ok(conn)
    }
}

impl Request {
    fn bare(session: Arc<str>, msg: Msg) -> Self {
        Self {
            session,
            msg,
            port: 0,
            timestamp: Duration::ZERO,
            data: None,
            outputs: None,
        }
    }
}

/// Waits (blocking) for one request's answers, passing its outputs on as they come, until it
/// is done or failed or the process died.
fn collect(mut rx: mpsc::UnboundedReceiver<Frame>, conn: &Conn, request: &Request) -> Answer {
    let mut answer = Answer::default();
    while let Some(frame) = rx.blocking_recv() {
        match frame.msg {
            Msg::Data => {
                if let (Some(data), Some(outputs)) = (frame.data, &request.outputs) {
                    let _ = outputs.send(Output {
                        port: usize::from(frame.port),
                        data,
                        timestamp: frame.timestamp,
                    });
                }
            }
            Msg::Done => return answer,
            Msg::Error => {
                let message = frame.error.unwrap_or_default();
                answer.error = Some(if frame.flags & FLAG_REJECTED != 0 {
                    NodeError::rejected(message)
                } else {
                    NodeError::fatal(message)
                });
                return answer;
            }
            other => {
                answer.error = Some(NodeError::fatal(format!(
                    "shared worker sent an unexpected {other:?} frame"
                )));
                return answer;
            }
        }
    }
    // Closed before the reader saw the process end only when the request never reached it
    // (the process is gone): wait for the reader, so the next request restarts the process
    // and the error says how it ended.
    for _ in 0..1000 {
        if conn.ended().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (ended, tail) = conn.routes.ended.get().cloned().unwrap_or_else(|| {
        (
            format!("shared worker (pid {}) is not connected", conn.pid),
            String::new(),
        )
    });
    answer.error = Some(NodeError::rejected(format!(
        "{ended}; the request it was processing was lost{tail}"
    )));
    answer.lost = true;
    answer
}

/// A scheduler thread's side of one process.
pub struct Lane(Arc<Host>);

impl BatchModel for Lane {
    type Request = Request;
    type Response = Answer;
    type Error = NodeError;

    fn run(&mut self, batch: Vec<Request>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        let host = &self.0;
        let conn = match host.conn() {
            Ok(c) => c,
            Err(e) => {
                for i in 0..batch.len() {
                    reply(i, Err(e.clone()));
                }
                return;
            }
        };
        let refs: Vec<&Request> = batch.iter().collect();
        let mut answered = false;
        for (i, (rx, request)) in conn.send(&refs).into_iter().zip(&batch).enumerate() {
            let mut answer = collect(rx, &conn, request);
            answered |= !answer.lost;
            if answer.lost
                && !host.restarts_left(&host.state())
                && let Some(e) = &mut answer.error
            {
                // No restart left: the loss ends the session.
                e.kind = ErrorKind::Fatal;
            }
            reply(i, Ok(answer));
        }
        if answered && conn.ended().is_none() {
            host.state().restarts = 0;
        }
    }
}

/// The processes serving one node type with one set of params, each with its scheduler.
pub struct Pool {
    hosts: Vec<(Arc<Host>, Scheduler<Lane>)>,
}

impl Pool {
    /// Starts `cfg.workers` processes; each loads the model before it reports ready.
    pub async fn start(launch: &Launch, cfg: &WorkerConfig) -> Result<Self, StartError> {
        let mut hosts = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers {
            let mut launch = launch.clone();
            let conn = Conn::start(&mut launch, cfg).await?;
            tracing::info!(node_type = %launch.node_type, pid = conn.pid, "shared python worker ready");
            let name = format!("python:{}", launch.node_type);
            let host = Arc::new(Host {
                cfg: cfg.clone(),
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(HostState {
                    launch,
                    conn: Some(Arc::new(conn)),
                    restarts: 0,
                    gave_up: None,
                }),
                sessions: Mutex::default(),
            });
            let lanes = (0..cfg.lanes).map(|_| Lane(Arc::clone(&host))).collect();
            let config = SchedulerConfig {
                max_batch: cfg.max_batch,
                max_wait_us: cfg.batch_wait_ms * 1_000,
                ..SchedulerConfig::default()
            };
            hosts.push((host, Scheduler::new(&name, lanes, config)));
        }
        Ok(Self { hosts })
    }

    /// Opens a session's node instance on the process with the fewest sessions.
    pub async fn open(&self, launch: &Launch) -> Result<SharedNode, NodeError> {
        let (host, scheduler) = self
            .hosts
            .iter()
            .min_by_key(|(h, _)| h.sessions().len())
            .expect("a pool has at least one process");
        // Open from the start: dropped before its open is answered, it is closed too.
        let (outputs_tx, outputs) = mpsc::unbounded_channel();
        let node = SharedNode {
            host: Arc::clone(host),
            scheduler: scheduler.clone(),
            session: Arc::clone(&launch.session),
            describe: format!("python node `{}` ({})", launch.node_id, launch.node_type),
            open: true,
            outputs_tx,
            outputs,
            running: None,
        };
        // An open lost with a dying process is tried again on the restarted one.
        let open = || {
            let request = Request::bare(Arc::clone(&node.session), Msg::Open);
            submit(
                scheduler.clone(),
                Arc::clone(&node.session),
                node.describe.clone(),
                request,
            )
        };
        let mut answer = open().await?;
        for _ in 0..host.cfg.max_restarts {
            if !answer.lost {
                break;
            }
            answer = open().await?;
        }
        if let Some(e) = answer.error {
            return Err(node.error(e));
        }
        host.sessions().insert(Arc::clone(&node.session));
        Ok(node)
    }
}

/// One session's instance of a shared node, as the router sees it. One request at a time:
/// `process` hands an input to the scheduler and returns; its outputs leave through
/// `poll_output` as the worker yields them, and the next input waits until it is done.
pub struct SharedNode {
    host: Arc<Host>,
    scheduler: Scheduler<Lane>,
    session: Arc<str>,
    describe: String,
    open: bool,
    outputs_tx: mpsc::UnboundedSender<Output>,
    outputs: mpsc::UnboundedReceiver<Output>,
    /// The input being processed.
    running: Option<tokio::task::JoinHandle<Result<Answer, NodeError>>>,
}

/// Runs one request through the scheduler.
async fn submit(
    scheduler: Scheduler<Lane>,
    session: Arc<str>,
    describe: String,
    request: Request,
) -> Result<Answer, NodeError> {
    match scheduler.submit(&session, request).await {
        Ok(a) => Ok(a),
        Err(ScheduleError::Model(e)) => Ok(Answer {
            error: Some(e),
            ..Answer::default()
        }),
        Err(e) => Err(NodeError::from_error(&describe, &e)),
    }
}

impl SharedNode {
    fn error(&self, e: NodeError) -> NodeError {
        NodeError {
            kind: e.kind,
            message: format!("{} failed: {}", self.describe, e.message),
        }
    }

    /// Moves the outputs received so far into `out`.
    fn take_outputs(&mut self, out: &mut Outputs) {
        while let Ok(o) = self.outputs.try_recv() {
            out.push_output(o);
        }
    }

    /// Its outputs (all of them: they are sent before the answer), then how it ended.
    fn finished(
        &mut self,
        result: Result<Result<Answer, NodeError>, tokio::task::JoinError>,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        self.take_outputs(out);
        let answer = result.map_err(|e| NodeError::fatal(format!("{}: {e}", self.describe)))??;
        answer.error.map_or(Ok(()), |e| Err(self.error(e)))
    }

    /// Waits for the input being processed, if any.
    async fn settle(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        match self.running.take() {
            Some(handle) => {
                let result = handle.await;
                self.finished(result, out)
            }
            None => Ok(()),
        }
    }

    fn start(&mut self, request: Request) {
        let task = submit(
            self.scheduler.clone(),
            Arc::clone(&self.session),
            self.describe.clone(),
            request,
        );
        self.running = Some(self.host.runtime.spawn(task));
    }

    /// Sends a request after the one running and waits for it.
    async fn call(&mut self, request: Request, out: &mut Outputs) -> Result<(), NodeError> {
        self.settle(out).await?;
        self.start(request);
        self.settle(out).await
    }

    fn request(
        &self,
        msg: Msg,
        port: u16,
        timestamp: Duration,
        data: Option<RuntimeData>,
    ) -> Request {
        Request {
            session: Arc::clone(&self.session),
            msg,
            port,
            timestamp,
            data,
            outputs: Some(self.outputs_tx.clone()),
        }
    }
}

#[async_trait]
impl Node for SharedNode {
    async fn process(
        &mut self,
        port: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        self.settle(out).await?;
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        let request = self.request(Msg::Data, port, input.timestamp, Some(input.data.clone()));
        self.start(request);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let request = self.request(Msg::Flush, 0, Duration::ZERO, None);
        self.call(request, out).await
    }

    async fn control(&mut self, control: &Control, out: &mut Outputs) -> Result<(), NodeError> {
        let data = Some(RuntimeData::Control(control.clone()));
        let request = self.request(Msg::Control, 0, Duration::ZERO, data);
        self.call(request, out).await
    }

    fn emits_unprompted(&self) -> bool {
        true
    }

    async fn poll_output(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(handle) = &mut self.running else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(o) = self.outputs.recv() => {
                out.push_output(o);
                self.take_outputs(out);
                Ok(())
            }
            result = handle => {
                self.running = None;
                self.finished(result, out)
            }
        }
    }

    async fn close(&mut self) -> Result<(), NodeError> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        let mut ignored = Outputs::default();
        let _ = self.settle(&mut ignored).await;
        self.start(self.request(Msg::Close, 0, Duration::ZERO, None));
        let closed = self.settle(&mut ignored).await;
        self.host.sessions().remove(&self.session);
        closed
    }
}

impl Drop for SharedNode {
    fn drop(&mut self) {
        // Not closed (the session was dropped mid-call): close its instance in the process.
        if std::mem::take(&mut self.open) {
            self.host.sessions().remove(&self.session);
            let scheduler = self.scheduler.clone();
            let close = self.request(Msg::Close, 0, Duration::ZERO, None);
            let session = Arc::clone(&self.session);
            self.host.runtime.spawn(async move {
                let _ = scheduler.submit(&session, close).await;
            });
        }
    }
}
