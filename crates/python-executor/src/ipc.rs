//! One worker's shared-memory link: a publish-subscribe service each way for frames, and an
//! event service each way to wake the reader. The runtime creates all four; the worker opens
//! them. Waiting is on the event listener's socket through tokio, so an idle link costs nothing.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use remotemedia_core::data::{ForeignSamples, Samples};
use tokio::io::unix::AsyncFd;

use crate::frame::{self, Encoded, Frame, FrameError};

type Svc = ipc_threadsafe::Service;

/// Frames the worker may hold unread; the in-flight window stays well below it.
const TO_WORKER_BUFFER: usize = 64;
/// Frames from the worker the runtime may hold unread: outputs are not windowed, so this is
/// generous; a worker that fills it waits (back-pressure), it never overwrites.
const FROM_WORKER_BUFFER: usize = 1024;
/// Input frames a Python node may keep as zero-copy views at once; beyond this the worker
/// copies (see `remotemedia/worker.py`).
pub const WORKER_BORROWED: usize = 48;
/// Audio from the worker at least this large stays in its shared-memory sample (no copy)...
const HELD_MIN_BYTES: usize = 64 * 1024;
/// ...while fewer than this many such samples are held; past it, audio is copied, so the
/// worker's sending never waits on what the pipeline keeps.
const HELD_MAX: usize = 16;
const INITIAL_SLICE: usize = 64 * 1024;

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    #[error("shared memory: {0}")]
    Iceoryx(String),
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("the worker is not connected")]
    NotConnected,
    #[error("malformed frame from the worker: {0}")]
    Malformed(#[from] FrameError),
    #[error("waiting for the worker: {0}")]
    Io(#[from] std::io::Error),
}

fn ice(e: impl std::fmt::Debug) -> IpcError {
    IpcError::Iceoryx(format!("{e:?}"))
}

/// The names of one worker's services, derived from session, node and a unique instance.
#[derive(Clone, Debug)]
pub struct ServiceNames {
    pub prefix: String,
}

impl ServiceNames {
    pub fn to_worker(&self) -> String {
        format!("{}/in", self.prefix)
    }

    pub fn from_worker(&self) -> String {
        format!("{}/out", self.prefix)
    }
}

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The runtime's end of the link. Field order is drop order: the readiness registration goes
/// before the listener that owns the socket, the ports before their node.
pub struct Link {
    readiness: AsyncFd<Fd>,
    listener: Listener<Svc>,
    notifier: Notifier<Svc>,
    subscriber: Subscriber<Svc, [u8], ()>,
    publisher: Publisher<Svc, [u8], ()>,
    node: iceoryx2::node::Node<Svc>,
    max_frame: usize,
    /// Samples from the worker whose audio is lent to the pipeline now.
    held: Arc<AtomicUsize>,
}

fn service_name(s: &str) -> Result<ServiceName, IpcError> {
    ServiceName::new(s).map_err(ice)
}

/// A publisher of frames (either side's): slices grown as needed, and a full subscriber makes
/// the sender wait rather than lose a frame.
fn frame_publisher(
    service: &iceoryx2::service::port_factory::publish_subscribe::PortFactory<Svc, [u8], ()>,
) -> Result<Publisher<Svc, [u8], ()>, IpcError> {
    service
        .publisher_builder()
        .initial_max_slice_len(INITIAL_SLICE)
        .allocation_strategy(AllocationStrategy::PowerOfTwo)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .map_err(ice)
}

impl Link {
    /// Creates the services and the runtime's ports. Must run inside a tokio runtime with IO.
    pub fn create(names: &ServiceNames, max_frame: usize) -> Result<Self, IpcError> {
        static QUIET: std::sync::Once = std::sync::Once::new();
        // iceoryx2 logs to stdout by itself; only its errors matter here (IOX2_LOG_LEVEL wins).
        QUIET.call_once(|| set_log_level_from_env_or(LogLevel::Error));
        let node = NodeBuilder::new()
            // The host process owns SIGINT/SIGTERM.
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<Svc>()
            .map_err(ice)?;
        let align = Alignment::new(8).ok_or_else(|| ice("alignment"))?;
        let pubsub = |name: &str, buffer: usize, borrowed: usize| {
            node.service_builder(&service_name(name)?)
                .publish_subscribe::<[u8]>()
                .payload_alignment(align)
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(buffer)
                .subscriber_max_borrowed_samples(borrowed)
                .history_size(0)
                .max_publishers(1)
                .max_subscribers(1)
                .max_nodes(2)
                .create()
                .map_err(ice)
        };
        let event = |name: &str| {
            node.service_builder(&service_name(name)?)
                .event()
                .max_notifiers(1)
                .max_listeners(1)
                .max_nodes(2)
                .create()
                .map_err(ice)
        };
        let to_worker = pubsub(&names.to_worker(), TO_WORKER_BUFFER, WORKER_BORROWED)?;
        let from_worker = pubsub(&names.from_worker(), FROM_WORKER_BUFFER, HELD_MAX + 2)?;
        let publisher = frame_publisher(&to_worker)?;
        let subscriber = from_worker.subscriber_builder().create().map_err(ice)?;
        let notifier = event(&names.to_worker())?
            .notifier_builder()
            .create()
            .map_err(ice)?;
        let listener = event(&names.from_worker())?
            .listener_builder()
            .create()
            .map_err(ice)?;
        // SAFETY: the descriptor belongs to `listener`, which outlives `readiness` (field order)
        // and never replaces or closes it meanwhile.
        let readiness = unsafe {
            let fd = listener.file_descriptor().native_handle();
            AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)
                .map_err(|e| IpcError::Io(e.into()))?
        };
        Ok(Self {
            readiness,
            listener,
            notifier,
            subscriber,
            publisher,
            node,
            max_frame,
            held: Arc::default(),
        })
    }

    /// Writes a frame into shared memory and wakes the worker.
    pub fn send(&self, frame: &Frame) -> Result<(), IpcError> {
        let enc = Encoded::new(frame);
        if enc.len() > self.max_frame {
            return Err(IpcError::TooLarge {
                len: enc.len(),
                max: self.max_frame,
            });
        }
        let mut sample = self.publisher.loan_slice_uninit(enc.len()).map_err(ice)?;
        enc.write(sample.payload_mut());
        // SAFETY: `write` initialised every byte of the slice.
        let delivered = unsafe { sample.assume_init() }.send().map_err(ice)?;
        if delivered == 0 {
            return Err(IpcError::NotConnected);
        }
        self.notifier.notify().map_err(ice)?;
        Ok(())
    }

    /// The next frame already in shared memory, if any. Large audio is not copied: the
    /// frame's samples stay in the sample, which is released when the last clone goes.
    pub fn try_recv(&self) -> Result<Option<Frame>, IpcError> {
        let Some(sample) = self.subscriber.receive().map_err(ice)? else {
            return Ok(None);
        };
        let b = sample.payload();
        let audio = b.get(4) == Some(&1) && b.len() >= HELD_MIN_BYTES;
        if !audio || self.held.load(Relaxed) >= HELD_MAX {
            return Ok(Some(frame::decode(b)?));
        }
        self.held.fetch_add(1, Relaxed);
        let held = Arc::new(HeldAudio {
            sample,
            range: OnceLock::new(),
            held: Arc::clone(&self.held),
        });
        let start = held.sample.payload().as_ptr() as usize;
        let frame = frame::decode_with(held.sample.payload(), |body| {
            let _ = held
                .range
                .set((body.as_ptr() as usize - start, body.len() / 4));
            Samples::foreign(Arc::clone(&held) as Arc<dyn ForeignSamples>)
        })?;
        Ok(Some(frame))
    }

    /// Waits until the worker has notified since the last call (no polling).
    pub async fn wait(&self) -> Result<(), IpcError> {
        let mut guard = self.readiness.readable().await?;
        guard.clear_ready();
        // Consume the wake-ups; the frames themselves are read with `try_recv`.
        self.listener.try_wait(|_| {}).map_err(ice)?;
        Ok(())
    }

    /// The next frame, waiting for one.
    pub async fn recv(&self) -> Result<Frame, IpcError> {
        loop {
            if let Some(f) = self.try_recv()? {
                return Ok(f);
            }
            self.wait().await?;
        }
    }

    /// Removes what dead processes (a killed worker) left of their iceoryx2 resources. When
    /// another session is cleaning the same dead node, waits briefly for it rather than skip.
    pub fn cleanup_dead(&self) {
        let state = self
            .node
            .blocking_cleanup_dead_nodes(std::time::Duration::from_millis(100));
        tracing::debug!(?state, "iceoryx2 dead-node cleanup");
        remove_half_created(std::path::Path::new("/dev/shm"));
    }
}

/// iceoryx2 creates a shared-memory file write-only for its owner (mode 0200) and opens it up
/// once it is initialised. A worker killed in between leaves the file so, and iceoryx2's
/// dead-node cleanup does not remove it (0.10, seen under repeated SIGKILLs). Removes such
/// files of ours that no process has open: a file being created is open in its creator.
fn remove_half_created(dir: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let half_created: Vec<std::path::PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("iox2_"))
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o777 == 0o200 && m.uid() == me)
        })
        .map(|e| e.path())
        .collect();
    if half_created.is_empty() {
        return;
    }
    let open = open_files();
    for path in half_created.iter().filter(|p| !open.contains(*p)) {
        if std::fs::remove_file(path).is_ok() {
            tracing::info!(file = %path.display(), "removed a half-created shared-memory file");
        }
    }
}

/// Every file some process we can see has open.
fn open_files() -> std::collections::HashSet<std::path::PathBuf> {
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    processes
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        })
        .collect()
}

/// Audio from the worker lent to the pipeline in the shared-memory sample it arrived in.
struct HeldAudio {
    sample: iceoryx2::sample::Sample<Svc, [u8], ()>,
    /// Where the samples start in the payload (bytes) and how many there are.
    range: OnceLock<(usize, usize)>,
    held: Arc<AtomicUsize>,
}

// SAFETY: the sample is only read through `&self` (its payload, shared memory nobody writes
// while it is held) and released once, on drop; the thread-safe iceoryx2 service makes that
// release safe from any thread.
unsafe impl Send for HeldAudio {}
unsafe impl Sync for HeldAudio {}

impl ForeignSamples for HeldAudio {
    fn samples(&self) -> &[f32] {
        let (at, n) = self.range.get().copied().unwrap_or((0, 0));
        let bytes = &self.sample.payload()[at..];
        // SAFETY: `at` is the 8-aligned start of whole little-endian f32s (the frame layout,
        // checked by the decoder), `n` of them, inside the payload.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), n) }
    }
}

impl Drop for HeldAudio {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Relaxed);
    }
}

/// A frame received by the worker, still in shared memory.
pub type WorkerSample = iceoryx2::sample::Sample<Svc, [u8], ()>;

/// The worker's end of a link: opens the services the runtime created. The Python worker
/// uses it through `remotemedia._native.WorkerLink`, so its frames are read and written at
/// Rust speed and its event loop waits on the listener's socket.
pub struct WorkerEnd {
    listener: Listener<Svc>,
    notifier: Notifier<Svc>,
    subscriber: Subscriber<Svc, [u8], ()>,
    publisher: Publisher<Svc, [u8], ()>,
    _node: iceoryx2::node::Node<Svc>,
}

impl WorkerEnd {
    /// Opens the services of `names` from the worker's side.
    pub fn open(names: &ServiceNames) -> Result<Self, IpcError> {
        set_log_level_from_env_or(LogLevel::Error);
        let node = NodeBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<Svc>()
            .map_err(ice)?;
        let align = Alignment::new(8).ok_or_else(|| ice("alignment"))?;
        let pubsub = |name: &str| {
            node.service_builder(&service_name(name)?)
                .publish_subscribe::<[u8]>()
                .payload_alignment(align)
                .open()
                .map_err(ice)
        };
        let event = |name: &str| {
            node.service_builder(&service_name(name)?)
                .event()
                .open()
                .map_err(ice)
        };
        let subscriber = pubsub(&names.to_worker())?
            .subscriber_builder()
            .create()
            .map_err(ice)?;
        let publisher = frame_publisher(&pubsub(&names.from_worker())?)?;
        let listener = event(&names.to_worker())?
            .listener_builder()
            .create()
            .map_err(ice)?;
        let notifier = event(&names.from_worker())?
            .notifier_builder()
            .create()
            .map_err(ice)?;
        Ok(Self {
            listener,
            notifier,
            subscriber,
            publisher,
            _node: node,
        })
    }

    /// The socket that becomes readable when the runtime notifies.
    pub fn fd(&self) -> RawFd {
        // SAFETY: only read; the descriptor stays owned by the listener.
        unsafe { self.listener.file_descriptor().native_handle() }
    }

    /// Consumes the wake-ups received so far.
    pub fn clear_events(&self) -> Result<(), IpcError> {
        self.listener.try_wait(|_| {}).map_err(ice).map(|_| ())
    }

    /// The next frame, if one is waiting.
    pub fn receive(&self) -> Result<Option<WorkerSample>, IpcError> {
        self.subscriber.receive().map_err(ice)
    }

    /// Sends a frame (without waking the runtime: see [`Self::notify`]).
    pub fn send(&self, frame: &Encoded<'_>) -> Result<(), IpcError> {
        let mut sample = self.publisher.loan_slice_uninit(frame.len()).map_err(ice)?;
        frame.write(sample.payload_mut());
        // SAFETY: `write` initialised every byte of the slice.
        unsafe { sample.assume_init() }.send().map_err(ice)?;
        Ok(())
    }

    /// Sends bytes as they are (tests of the runtime's checks).
    pub fn send_raw(&self, raw: &[u8]) -> Result<(), IpcError> {
        let mut sample = self.publisher.loan_slice_uninit(raw.len()).map_err(ice)?;
        for (d, s) in sample.payload_mut().iter_mut().zip(raw) {
            d.write(*s);
        }
        // SAFETY: every byte of the slice was written above.
        unsafe { sample.assume_init() }.send().map_err(ice)?;
        Ok(())
    }

    /// Wakes the runtime to read what was sent.
    pub fn notify(&self) -> Result<(), IpcError> {
        self.notifier.notify().map_err(ice).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_half_created_files_nobody_has_open_are_removed() {
        let dir = std::env::temp_dir().join(format!("rm-half-created-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let stale = file("iox2_a.event_mgmt", 0o200);
        let creating = file("iox2_b.event_mgmt", 0o200);
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open(&creating)
            .unwrap();
        let ready = file("iox2_c.event_mgmt", 0o600);
        let other = file("other", 0o200);
        super::remove_half_created(&dir);
        assert!(!stale.exists());
        assert!(creating.exists() && ready.exists() && other.exists());
        drop(held);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
