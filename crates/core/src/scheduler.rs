//! Shared models served to many sessions: one scheduler per model.
//!
//! A model node submits a request and awaits its result; the scheduler owns the threads that
//! run the model (one model instance per thread, so no lock is held around inference), forms
//! batches (up to `max_batch` requests, waiting at most `max_wait` after the oldest queued one
//! for more to join), and takes requests round-robin by session, so one session's backlog never
//! starves the others. The queue is bounded: a request over `max_queue` is refused at once
//! rather than queued without limit. Queue depth, queue wait, batch sizes and busy time are
//! counted and exported with the process metrics.
//!
//! A model plugs in by [`BatchModel`]: run a batch of requests, one result per request. It
//! knows nothing of sessions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::{Histogram, HistogramSnapshot};

/// A model that runs requests in batches. One instance is used by one scheduler thread at a
/// time; a scheduler with several threads has one instance per thread.
pub trait BatchModel: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    type Error: std::error::Error + Clone + Send + Sync + 'static;

    /// Runs `batch` (1 to `max_batch` requests) and passes each request's result to `reply`
    /// with its index in the batch, as soon as it is known: a request that finishes early
    /// need not wait for the rest of its batch. A request left without a result fails
    /// ([`ScheduleError::Failed`]).
    fn run(&mut self, batch: Vec<Self::Request>, reply: &mut dyn FnMut(usize, Outcome<Self>));
}

/// What a [`BatchModel`] gives for one request.
pub type Outcome<M> = Result<<M as BatchModel>::Response, <M as BatchModel>::Error>;

/// How a scheduler batches and how much it queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Requests run together at most.
    pub max_batch: usize,
    /// How long the oldest queued request may wait for others to join its batch (µs).
    pub max_wait_us: u64,
    /// Requests queued at most; one more is refused ([`ScheduleError::Overloaded`]).
    pub max_queue: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait_us: 2_000,
            max_queue: 1_024,
        }
    }
}

/// Why a request got no result from the model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError<E> {
    /// The model failed on this request.
    #[error(transparent)]
    Model(E),
    /// The queue is full: the machine is past its capacity for this model.
    #[error("model {model} is overloaded: {queued} requests queued (max_queue)")]
    Overloaded { model: String, queued: usize },
    /// The scheduler stopped: its last handle was dropped.
    #[error("model {model} is no longer served")]
    Stopped { model: String },
    /// The model gave no result for this request (it panicked on the batch).
    #[error("model {model} failed on the batch holding this request")]
    Failed { model: String },
}

impl<E: std::error::Error> crate::node::Retryable for ScheduleError<E> {
    /// An overloaded queue may have room later; a model failure repeats.
    fn is_retryable(&self) -> bool {
        matches!(self, ScheduleError::Overloaded { .. })
    }
}

type Reply<M> =
    oneshot::Sender<Result<<M as BatchModel>::Response, ScheduleError<<M as BatchModel>::Error>>>;

struct Job<M: BatchModel> {
    request: M::Request,
    queued: Instant,
    reply: Reply<M>,
}

/// Requests waiting, one queue per session, served round-robin.
struct Queue<M: BatchModel> {
    sessions: VecDeque<(Arc<str>, VecDeque<Job<M>>)>,
    len: usize,
    stopping: bool,
}

impl<M: BatchModel> Queue<M> {
    fn push(&mut self, session: Arc<str>, job: Job<M>) {
        match self.sessions.iter_mut().find(|(s, _)| *s == session) {
            Some((_, jobs)) => jobs.push_back(job),
            None => self.sessions.push_back((session, VecDeque::from([job]))),
        }
        self.len += 1;
    }

    fn oldest(&self) -> Option<Instant> {
        self.sessions
            .iter()
            .filter_map(|(_, jobs)| jobs.front().map(|j| j.queued))
            .min()
    }

    /// Up to `max` jobs, one per session per round, sessions rotated so the next batch starts
    /// where this one stopped.
    fn take(&mut self, max: usize) -> Vec<Job<M>> {
        let mut batch = Vec::with_capacity(max.min(self.len));
        while batch.len() < max && self.len > 0 {
            let Some((session, mut jobs)) = self.sessions.pop_front() else {
                break;
            };
            if let Some(job) = jobs.pop_front() {
                self.len -= 1;
                batch.push(job);
            }
            if !jobs.is_empty() {
                self.sessions.push_back((session, jobs));
            }
        }
        batch
    }
}

/// Counters of one scheduler.
#[derive(Default)]
struct Stats {
    submitted: AtomicU64,
    completed: AtomicU64,
    refused: AtomicU64,
    abandoned: AtomicU64,
    batches: AtomicU64,
    busy_ns: AtomicU64,
    wait: Histogram,
    /// Batch sizes, recorded as "nanoseconds" so the histogram type serves for counts too.
    batch_size: Histogram,
}

struct Shared<M: BatchModel> {
    name: String,
    config: SchedulerConfig,
    threads: usize,
    started: Instant,
    queue: Mutex<Queue<M>>,
    changed: Condvar,
    stats: Stats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A model served by a bounded set of threads, one instance each. Cloning shares it; the
/// threads stop when the last clone is dropped.
pub struct Scheduler<M: BatchModel> {
    shared: Arc<Shared<M>>,
    _stop: Arc<StopOnDrop<M>>,
}

impl<M: BatchModel> Clone for Scheduler<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _stop: Arc::clone(&self._stop),
        }
    }
}

/// Wakes the threads to stop when the last handle goes.
struct StopOnDrop<M: BatchModel>(Arc<Shared<M>>);

impl<M: BatchModel> Drop for StopOnDrop<M> {
    fn drop(&mut self) {
        lock(&self.0.queue).stopping = true;
        self.0.changed.notify_all();
    }
}

impl<M: BatchModel> Scheduler<M> {
    /// Starts one thread per instance. `name` names the model in errors, logs and metrics.
    pub fn new(name: &str, instances: Vec<M>, config: SchedulerConfig) -> Self {
        let config = SchedulerConfig {
            max_batch: config.max_batch.max(1),
            max_queue: config.max_queue.max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            config,
            threads: instances.len(),
            started: Instant::now(),
            queue: Mutex::new(Queue {
                sessions: VecDeque::new(),
                len: 0,
                stopping: false,
            }),
            changed: Condvar::new(),
            stats: Stats::default(),
        });
        for (i, model) in instances.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("sched-{name}-{i}"))
                .spawn(move || serve(&shared, model));
            if let Err(e) = spawned {
                tracing::error!(model = name, "cannot start a scheduler thread: {e}");
            }
        }
        let weak: Weak<dyn Exported> = Arc::downgrade(&shared) as Weak<dyn Exported>;
        if let Ok(mut all) = exported().lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(weak);
        }
        Self {
            _stop: Arc::new(StopOnDrop(Arc::clone(&shared))),
            shared,
        }
    }

    /// Runs `request` for `session` and waits for its result. Refused at once when the queue
    /// is full. Dropping the future withdraws the request if it has not started.
    pub async fn submit(
        &self,
        session: &Arc<str>,
        request: M::Request,
    ) -> Result<M::Response, ScheduleError<M::Error>> {
        let (reply, result) = oneshot::channel();
        {
            let mut queue = lock(&self.shared.queue);
            if queue.len >= self.shared.config.max_queue {
                self.shared.stats.refused.fetch_add(1, Relaxed);
                return Err(ScheduleError::Overloaded {
                    model: self.shared.name.clone(),
                    queued: queue.len,
                });
            }
            queue.push(
                Arc::clone(session),
                Job {
                    request,
                    queued: Instant::now(),
                    reply,
                },
            );
        }
        self.shared.stats.submitted.fetch_add(1, Relaxed);
        self.shared.changed.notify_one();
        result.await.unwrap_or_else(|_| {
            Err(ScheduleError::Stopped {
                model: self.shared.name.clone(),
            })
        })
    }

    /// Requests queued now.
    pub fn queued(&self) -> usize {
        lock(&self.shared.queue).len
    }

    pub fn snapshot(&self) -> SchedulerSnapshot {
        self.shared.snapshot()
    }
}

/// One scheduler thread: wait for work, gather a batch, run it, reply.
fn serve<M: BatchModel>(shared: &Shared<M>, mut model: M) {
    let max_wait = Duration::from_micros(shared.config.max_wait_us);
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            loop {
                if queue.stopping {
                    return;
                }
                let Some(oldest) = queue.oldest() else {
                    queue = shared
                        .changed
                        .wait(queue)
                        .unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                let deadline = oldest + max_wait;
                let now = Instant::now();
                if queue.len >= shared.config.max_batch || now >= deadline {
                    break;
                }
                queue = shared
                    .changed
                    .wait_timeout(queue, deadline - now)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            queue.take(shared.config.max_batch)
        };
        // A request whose submitter is gone is not worth running.
        let (live, gone): (Vec<Job<M>>, Vec<Job<M>>) =
            batch.into_iter().partition(|j| !j.reply.is_closed());
        shared.stats.abandoned.fetch_add(gone.len() as u64, Relaxed);
        if live.is_empty() {
            continue;
        }
        let started = Instant::now();
        let mut requests = Vec::with_capacity(live.len());
        let mut replies = Vec::with_capacity(live.len());
        for job in live {
            shared.stats.wait.record(started - job.queued);
            requests.push(job.request);
            replies.push(job.reply);
        }
        let n = replies.len();
        let mut replies: Vec<Option<Reply<M>>> = replies.into_iter().map(Some).collect();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.run(requests, &mut |i, result| {
                if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
                    let _ = reply.send(result.map_err(ScheduleError::Model));
                }
            })
        }));
        let stats = &shared.stats;
        stats.busy_ns.fetch_add(elapsed_ns(started), Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        stats.batch_size.record_ns(n as u64);
        stats.completed.fetch_add(n as u64, Relaxed);
        if ran.is_err() {
            tracing::error!(model = %shared.name, "the model panicked on a batch of {n}");
        }
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(Err(ScheduleError::Failed {
                model: shared.name.clone(),
            }));
        }
    }
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A scheduler as numbers: what `/metrics` and `--metrics` show per model.
#[derive(Clone, Debug, Serialize)]
pub struct SchedulerSnapshot {
    pub threads: usize,
    pub max_batch: usize,
    pub max_wait_us: u64,
    pub queued: usize,
    pub submitted: u64,
    pub completed: u64,
    /// Refused because the queue was full.
    pub refused: u64,
    /// Withdrawn by their submitter before they ran.
    pub abandoned: u64,
    pub batches: u64,
    /// Time from submission to the start of the batch.
    pub queue_wait: HistogramSnapshot,
    /// Requests per batch (the histogram's "µs" are requests here).
    pub batch_size: BatchSizes,
    /// Fraction of the threads' time spent running the model since the start.
    pub busy: f64,
    /// Mean time one batch took (µs).
    pub mean_batch_us: f64,
}

impl SchedulerSnapshot {
    /// How long a request queued now would wait before its batch starts, from the queue's
    /// depth and the time batches have taken: what admission compares with its target.
    pub fn expected_wait(&self) -> Duration {
        let batches = self.queued.div_ceil(self.max_batch.max(1)) as f64;
        let us = batches * self.mean_batch_us / self.threads.max(1) as f64;
        Duration::from_secs_f64(us.max(0.0) / 1e6)
    }
}

/// Batch sizes: mean and percentiles, in requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchSizes {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

trait Exported: Send + Sync {
    fn name(&self) -> &str;
    fn snapshot(&self) -> SchedulerSnapshot;
}

impl<M: BatchModel> Exported for Shared<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn snapshot(&self) -> SchedulerSnapshot {
        let s = &self.stats;
        let sizes = s.batch_size.snapshot();
        let ns = |us: f64| us * 1_000.0; // recorded counts come back as µs of "ns"
        let capacity = self.started.elapsed().as_nanos() as f64 * self.threads.max(1) as f64;
        SchedulerSnapshot {
            threads: self.threads,
            max_batch: self.config.max_batch,
            max_wait_us: self.config.max_wait_us,
            queued: lock(&self.queue).len,
            submitted: s.submitted.load(Relaxed),
            completed: s.completed.load(Relaxed),
            refused: s.refused.load(Relaxed),
            abandoned: s.abandoned.load(Relaxed),
            batches: s.batches.load(Relaxed),
            queue_wait: s.wait.snapshot(),
            batch_size: BatchSizes {
                mean: ns(sizes.mean_us),
                p50: ns(sizes.p50_us),
                p95: ns(sizes.p95_us),
                max: ns(sizes.max_us),
            },
            busy: if capacity > 0.0 {
                (s.busy_ns.load(Relaxed) as f64 / capacity).min(1.0)
            } else {
                0.0
            },
            mean_batch_us: match s.batches.load(Relaxed) {
                0 => 0.0,
                n => s.busy_ns.load(Relaxed) as f64 / n as f64 / 1e3,
            },
        }
    }
}

fn exported() -> &'static Mutex<Vec<Weak<dyn Exported>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<dyn Exported>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// Every live scheduler of the process by model name (several of one name are summed by the
/// exporter as separate entries with a numeric suffix).
pub fn exported_snapshots() -> BTreeMap<String, SchedulerSnapshot> {
    let all: Vec<Arc<dyn Exported>> = exported()
        .lock()
        .map(|a| a.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for s in all {
        let mut name = s.name().to_string();
        let mut n = 2;
        while out.contains_key(&name) {
            name = format!("{}#{n}", s.name());
            n += 1;
        }
        out.insert(name, s.snapshot());
    }
    out
}
