//! A worker process: spawning, the handshake, and a monitor that notices death or a hang.
//!
//! The worker gets a socket on fd 3 (the control channel: JSON lines `ready`, `error`,
//! `heartbeat`; end of file on it tells the worker we are gone), and its stdout and stderr are
//! forwarded to our logs, the last lines of stderr kept for error messages. It is
//! spawned with `PR_SET_PDEATHSIG` = SIGKILL, so it dies with the thread that spawned it (a
//! runtime thread, which lives as long as the runtime).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

/// Lines of stderr kept for error messages.
const STDERR_TAIL: usize = 12;

/// How to start one worker.
#[derive(Clone, Debug)]
pub struct Launch {
    pub python: PathBuf,
    /// `PYTHONPATH` for the worker, when set.
    pub pythonpath: Option<std::ffi::OsString>,
    pub modules: Vec<String>,
    pub node_type: String,
    pub params: serde_json::Value,
    pub session: Arc<str>,
    pub node_id: Arc<str>,
    pub service: String,
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub startup_timeout: Duration,
    /// One process for every session (`--shared`): sessions are opened and closed by frames.
    pub shared: bool,
}

/// What the worker says on its control channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Report {
    Ready(Handshake),
    Error {
        stage: String,
        message: String,
    },
    Heartbeat,
    /// Nothing to do: every frame received (`received` of them) is answered. The worker stops
    /// beating until the next frame, so an idle worker sleeps.
    Idle {
        received: u64,
    },
}

/// Frames sent to a worker, counted so that its monitor expects heartbeats again (after an
/// `idle` report) from the moment one is sent: a worker that hangs on it is still found.
#[derive(Default)]
pub struct Sent {
    count: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
}

impl Sent {
    /// Call before each frame sent to the worker.
    pub fn one(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The worker's `ready` message.
#[derive(Clone, Debug, Deserialize)]
pub struct Handshake {
    pub protocol: u8,
    /// The node type as the worker describes it: name, params schema, ports.
    pub node: serde_json::Value,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(ExitStatus),
    /// No heartbeat for this long; the monitor killed it.
    Hung(Duration),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(s) => match (s.code(), s.signal()) {
                (Some(code), _) => write!(f, "exited with status {code}"),
                (None, Some(sig)) => write!(f, "was killed by signal {sig} ({})", signal_name(sig)),
                _ => write!(f, "ended ({s})"),
            },
            Ended::Hung(d) => write!(
                f,
                "stopped answering (no heartbeat for {:.1} s) and was killed",
                d.as_secs_f64()
            ),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot start `{python}`: {source}")]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    #[error("{stage} failed: {message}{tail}")]
    Reported {
        stage: String,
        message: String,
        tail: String,
    },
    #[error("worker {ended} before it was ready{tail}")]
    Died { ended: Ended, tail: String },
    #[error("worker was not ready within {0:?} (start-up timeout)")]
    Timeout(Duration),
    #[error("worker speaks protocol {got}, this runtime speaks {want}")]
    Protocol { got: u8, want: u8 },
}

impl remotemedia_core::node::Retryable for StartError {
    /// A start that timed out may succeed on a less loaded machine; the others repeat.
    fn is_retryable(&self) -> bool {
        matches!(self, StartError::Timeout(_))
    }
}

/// A running worker. Dropping it kills the process.
pub struct Process {
    pub pid: u32,
    /// Count every frame sent to the worker here.
    pub sent: Arc<Sent>,
    ended: watch::Receiver<Option<Ended>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    kill: Option<oneshot::Sender<()>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

/// The last lines of stderr, formatted for an error message.
fn tail_text(lines: &Mutex<VecDeque<String>>) -> String {
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
    if lines.is_empty() {
        String::new()
    } else {
        let v: Vec<&str> = lines.iter().map(String::as_str).collect();
        format!("; last stderr lines:\n  {}", v.join("\n  "))
    }
}

impl Process {
    /// Spawns the worker and waits for its handshake.
    pub async fn start(launch: &Launch) -> Result<Self, StartError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| spawn_err(launch, e))?;
        let theirs = OwnedFd::from(theirs);
        let mut cmd = Command::new(&launch.python);
        cmd.arg("-m")
            .arg("remotemedia.worker")
            .arg("--type")
            .arg(&launch.node_type)
            .arg("--params")
            .arg(launch.params.to_string())
            .arg("--session")
            .arg(&*launch.session)
            .arg("--service")
            .arg(&launch.service)
            .arg("--max-frame")
            .arg(launch.max_frame.to_string())
            .arg("--heartbeat-ms")
            .arg(launch.heartbeat_interval.as_millis().to_string())
            .arg("--control-fd")
            .arg("3");
        if launch.shared {
            cmd.arg("--shared");
        }
        if !launch.modules.is_empty() {
            cmd.arg("--modules").arg(launch.modules.join(","));
        }
        if let Some(path) = &launch.pythonpath {
            cmd.env("PYTHONPATH", path);
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let fd = theirs.as_raw_fd();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // Already in place; just let it survive exec.
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| spawn_err(launch, e))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let who = format!("{}/{}", launch.session, launch.node_id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, who.clone(), "stdout", None));
        }
        let stderr_reader = child.stderr.take().map(|err| {
            tokio::spawn(forward_lines(
                err,
                who.clone(),
                "stderr",
                Some(Arc::clone(&stderr)),
            ))
        });
        ours.set_nonblocking(true)
            .map_err(|e| spawn_err(launch, e))?;
        let control = tokio::net::UnixStream::from_std(ours).map_err(|e| spawn_err(launch, e))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel();
        let sent = Arc::new(Sent::default());
        let monitor = tokio::spawn(monitor(
            child,
            control,
            launch.heartbeat_timeout,
            Arc::clone(&sent),
            ready_tx,
            ended_tx,
            kill_rx,
        ));
        let mut process = Self {
            pid,
            sent,
            ended: ended_rx,
            stderr,
            stderr_reader,
            kill: Some(kill_tx),
            monitor: Some(monitor),
        };
        let first = tokio::time::timeout(launch.startup_timeout, ready_rx).await;
        let report = match first {
            Err(_) => return Err(StartError::Timeout(launch.startup_timeout)),
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                // The monitor ended without a report: the process died.
                let ended = process.wait_ended().await;
                return Err(StartError::Died {
                    ended,
                    tail: process.stderr_tail().await,
                });
            }
        };
        match report {
            Report::Ready(h) if h.protocol != crate::frame::PROTOCOL_VERSION => {
                Err(StartError::Protocol {
                    got: h.protocol,
                    want: crate::frame::PROTOCOL_VERSION,
                })
            }
            Report::Ready(h) => {
                tracing::debug!(pid, node = %h.node, "python worker handshake");
                Ok(process)
            }
            Report::Error { stage, message } => {
                // Let the worker finish writing its traceback before we quote it.
                let _ = tokio::time::timeout(Duration::from_secs(2), process.wait_ended()).await;
                Err(StartError::Reported {
                    stage,
                    message,
                    tail: process.stderr_tail().await,
                })
            }
            Report::Heartbeat | Report::Idle { .. } => {
                unreachable!("the monitor forwards only ready or error")
            }
        }
    }

    /// Resolves once the worker has ended (died, hung and was killed, or exited).
    pub async fn wait_ended(&mut self) -> Ended {
        loop {
            if let Some(e) = self.ended.borrow().clone() {
                return e;
            }
            if self.ended.changed().await.is_err() {
                // Monitor gone without a verdict: treat as killed.
                return Ended::Exited(ExitStatus::from_raw(libc::SIGKILL));
            }
        }
    }

    /// How the worker ended, if it has.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// The last lines the worker wrote to stderr, formatted for an error message. Once the
    /// worker has ended, waits briefly for its last lines to be read.
    pub async fn stderr_tail(&mut self) -> String {
        if self.ended().is_some()
            && let Some(reader) = self.stderr_reader.take()
        {
            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
        }
        tail_text(&self.stderr)
    }

    /// Kills the worker and waits until it is reaped.
    pub async fn kill(&mut self) -> Ended {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        let ended = self.wait_ended().await;
        if let Some(m) = self.monitor.take() {
            let _ = m.await;
        }
        ended
    }

    /// Waits up to `grace` for the worker to exit on its own, then kills it.
    pub async fn shutdown(&mut self, grace: Duration) -> Ended {
        match tokio::time::timeout(grace, self.wait_ended()).await {
            Ok(e) => {
                if let Some(m) = self.monitor.take() {
                    let _ = m.await;
                }
                e
            }
            Err(_) => self.kill().await,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The monitor owns the child (kill_on_drop); telling it to kill reaps it too.
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}

fn spawn_err(launch: &Launch, source: std::io::Error) -> StartError {
    StartError::Spawn {
        python: launch.python.display().to_string(),
        source,
    }
}

/// Owns the child: reaps it, reads the control channel, and kills it on a missed heartbeat
/// or on request. Heartbeats are expected from the handshake on, except while the worker is
/// idle (it said so, and nothing was sent to it since).
async fn monitor(
    mut child: Child,
    control: tokio::net::UnixStream,
    heartbeat_timeout: Duration,
    sent: Arc<Sent>,
    ready: oneshot::Sender<Report>,
    ended: watch::Sender<Option<Ended>>,
    mut kill: oneshot::Receiver<()>,
) {
    let mut lines = BufReader::new(control).lines();
    let mut ready = Some(ready);
    // The heartbeat clock starts at the handshake: start-up has its own timeout.
    let mut last_beat: Option<Instant> = None;
    let mut started = false;
    // Frames the worker had received when it last said it was idle.
    let mut idle_at: Option<u64> = None;
    let verdict = loop {
        let deadline = last_beat.map(|t| t + heartbeat_timeout);
        tokio::select! {
            status = child.wait() => {
                break match status {
                    Ok(s) => Ended::Exited(s),
                    Err(_) => Ended::Exited(ExitStatus::from_raw(libc::SIGKILL)),
                };
            }
            _ = &mut kill => {
                let _ = child.start_kill();
                let s = child.wait().await.unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
                break Ended::Exited(s);
            }
            _ = remotemedia_core::rt::sleep_until(deadline.map(Into::into)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                break Ended::Hung(heartbeat_timeout);
            }
            _ = sent.wake.notified(), if idle_at.is_some() => {
                // A frame went to an idle worker: it must beat again (or be found hung).
                if idle_at.is_some_and(|n| sent.count() > n) {
                    idle_at = None;
                    last_beat = Some(Instant::now());
                }
            }
            line = lines.next_line() => {
                let Ok(Some(line)) = line else {
                    // Control channel closed: the process is exiting; wait for it.
                    let s = child.wait().await.unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
                    break Ended::Exited(s);
                };
                match serde_json::from_str::<Report>(&line) {
                    Ok(Report::Heartbeat) => {
                        if started {
                            idle_at = None;
                            last_beat = Some(Instant::now());
                        }
                    }
                    Ok(Report::Idle { received }) => {
                        // Stale when a frame was sent since: the clock keeps running.
                        if started && received >= sent.count() {
                            idle_at = Some(received);
                            last_beat = None;
                        }
                    }
                    Ok(r) => {
                        if matches!(r, Report::Ready(_)) {
                            started = true;
                            last_beat = Some(Instant::now());
                        }
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(r);
                        }
                    }
                    Err(e) => tracing::warn!("worker sent a malformed control line ({e}): {line}"),
                }
            }
        }
    };
    let _ = ended.send(Some(verdict));
}

/// Forwards a worker's output to the logs line by line, keeping stderr's last lines.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    who: String,
    stream_name: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "remotemedia::python", worker = %who, stream = stream_name, "{line}");
        if let Some(tail) = &tail {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}
