//! Models shared across sessions: one loaded model per (model, config) per process.
//!
//! Loading a speech model takes tens to hundreds of milliseconds and tens of megabytes, so a
//! session must never load its own copy: every session asks the [`ModelPool`] for the model by
//! [`ModelKey`] and gets the one already loaded. Concurrent first requests for one key load it
//! once; the others wait for that load and share its result (or its error, which is not kept, so
//! a later request tries again).
//!
//! A model that can run from many threads at once is *shared* ([`LoadOptions::shared`]): every
//! handle points at the same instance. A model that cannot is *bounded*
//! ([`LoadOptions::bounded`]): up to `n` instances are loaded on demand and each is leased to one
//! user at a time ([`ModelHandle::acquire`]), with a wait timeout so a saturated model fails a
//! request rather than stalling a stream forever.
//!
//! A model nobody holds (no handle, no lease, no clone of a shared instance) is idle. Idle models
//! are evicted, least recently used first, while the pool's memory estimate is above its budget,
//! or once they have been idle longer than the idle timeout; preloaded (pinned) models stay.
//! Counters per model and in total go into the process metrics snapshot (`pools`).
//!
//! The pool knows no ML library: a model is any `Send + Sync + 'static` value and the loader is
//! a closure.

use std::any::{Any, type_name};
use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// A loader's error, kept behind an `Arc` so one failed load can be reported to every request
/// that waited for it, and downcast back to the loader's own type by the caller.
pub type LoadError = Arc<dyn StdError + Send + Sync>;

/// Identifies one loaded model: what is loaded (`name`, e.g. a file path) and how (`config`,
/// e.g. thread count or precision). Two keys that differ in either load separately.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ModelKey {
    pub name: String,
    pub config: String,
}

impl ModelKey {
    pub fn new(name: impl Into<String>, config: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: config.into(),
        }
    }
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.config.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} [{}]", self.name, self.config)
        }
    }
}

/// Why the pool could not hand out a model.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PoolError {
    /// The loader failed (or panicked). Every request that waited for this load gets it.
    #[error("could not load model {model}: {error}")]
    Load { model: ModelKey, error: LoadError },
    /// Every instance of a bounded model stayed leased for the whole wait.
    #[error(
        "no instance of model {model} became free within {timeout:?} \
         (all {max_instances} instances in use; waited {waited:?})"
    )]
    Timeout {
        model: ModelKey,
        timeout: Duration,
        waited: Duration,
        max_instances: usize,
    },
    /// The key is loaded as another Rust type: two callers disagree about what the model is.
    #[error("model {model} is loaded as {loaded}, not {requested}")]
    TypeMismatch {
        model: ModelKey,
        loaded: &'static str,
        requested: &'static str,
    },
    /// Leases are for bounded models; a shared model is used through [`ModelHandle::shared`].
    #[error("model {model} is shared by reference and is not leased")]
    NotLeased { model: ModelKey },
}

impl PoolError {
    /// The loader's own error, for callers that want their error type back
    /// (`error.downcast_ref::<MyError>()`).
    pub fn load_error(&self) -> Option<&LoadError> {
        match self {
            PoolError::Load { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How a model is held; the first request for a key decides, later ones only add `pinned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `None`: one instance used by reference from any number of threads. `Some(n)`: up to `n`
    /// instances, each leased to one user at a time (for models that cannot run concurrently).
    pub max_instances: Option<usize>,
    /// Estimated memory of one instance, counted against the pool's budget.
    pub memory_bytes: u64,
    /// Never evicted (for models preloaded at start, whose first session must not pay a load).
    pub pinned: bool,
}

impl LoadOptions {
    /// One instance shared by reference.
    pub fn shared() -> Self {
        Self::default()
    }

    /// Up to `max_instances` (at least 1) instances, leased exclusively.
    pub fn bounded(max_instances: usize) -> Self {
        Self {
            max_instances: Some(max_instances.max(1)),
            ..Self::default()
        }
    }

    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }
}

/// Limits that make the pool give memory back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle models are evicted, least recently used first, while the total estimate is above
    /// this. A soft limit: a model in use is never evicted and a load is never refused.
    pub memory_budget: Option<u64>,
    /// Idle models unused for this long are evicted at the next load or [`ModelPool::evict_idle`].
    pub idle_timeout: Option<Duration>,
}

/// Counters of one model, or summed over a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolCounters {
    /// Successful loader runs (every instance of a bounded model counts).
    pub loads: u64,
    pub load_failures: u64,
    /// Requests served by a model already loaded or being loaded.
    pub hits: u64,
    /// Requests that had to wait: for a load in flight, or for a free instance.
    pub waits: u64,
    pub wait_ms_total: f64,
    /// Waits for an instance that ran out of time.
    pub timeouts: u64,
    pub evictions: u64,
    pub load_ms_total: f64,
}

/// One model as numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSnapshot {
    pub name: String,
    pub config: String,
    pub loaded: bool,
    pub pinned: bool,
    /// `None` for a shared model.
    pub max_instances: Option<usize>,
    pub instances: usize,
    pub leased: usize,
    pub memory_bytes: u64,
    /// Seconds since the model was last handed out or given back.
    pub idle_s: f64,
    #[serde(flatten)]
    pub counters: PoolCounters,
}

/// A pool as numbers: totals first, then each model by key.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolSnapshot {
    pub memory_budget_bytes: Option<u64>,
    pub memory_bytes: u64,
    /// Models loaded now.
    pub models_loaded: usize,
    pub instances: usize,
    pub leased: usize,
    #[serde(flatten)]
    pub totals: PoolCounters,
    pub models: BTreeMap<String, ModelSnapshot>,
}

#[derive(Default)]
struct Stats {
    loads: AtomicU64,
    load_failures: AtomicU64,
    hits: AtomicU64,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    timeouts: AtomicU64,
    evictions: AtomicU64,
    load_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    fn waited(&self, since: Instant) {
        self.waits.fetch_add(1, Relaxed);
        self.wait_ns.fetch_add(nanos(since.elapsed()), Relaxed);
    }

    fn snapshot(&self) -> PoolCounters {
        let ms = |ns: &AtomicU64| ns.load(Relaxed) as f64 / 1e6;
        PoolCounters {
            loads: self.loads.load(Relaxed),
            load_failures: self.load_failures.load(Relaxed),
            hits: self.hits.load(Relaxed),
            waits: self.waits.load(Relaxed),
            wait_ms_total: ms(&self.wait_ns),
            timeouts: self.timeouts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            load_ms_total: ms(&self.load_ns),
        }
    }
}

impl PoolCounters {
    fn add(&mut self, o: &PoolCounters) {
        self.loads += o.loads;
        self.load_failures += o.load_failures;
        self.hits += o.hits;
        self.waits += o.waits;
        self.wait_ms_total += o.wait_ms_total;
        self.timeouts += o.timeouts;
        self.evictions += o.evictions;
        self.load_ms_total += o.load_ms_total;
    }
}

/// Locks ignoring poison: every critical section here leaves its data consistent before any
/// call that could panic (loaders run outside the locks).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the pool keeps for one key, loaded or not; kept for the life of the pool so the
/// key's counters survive evictions.
struct Slot {
    key: ModelKey,
    state: Mutex<SlotState>,
    /// Wakes blocking waiters when a load ends.
    changed: Condvar,
    /// Wakes async waiters when a load ends.
    notify: Notify,
    stats: Arc<Stats>,
}

struct SlotState {
    phase: Phase,
    /// Number of the latest load attempt.
    attempt: u64,
    /// The latest failed attempt, for the requests that waited on it.
    failure: Option<(u64, PoolError)>,
}

enum Phase {
    Empty,
    Loading,
    Ready(Arc<Entry>),
}

/// A loaded model.
struct Entry {
    key: ModelKey,
    value: Value,
    max_instances: Option<usize>,
    /// Per instance.
    memory_bytes: u64,
    pinned: AtomicBool,
    type_name: &'static str,
    /// Nanoseconds since the pool's epoch.
    last_used: AtomicU64,
    epoch: Instant,
    /// Instances loaded and leased (bounded models; a shared model has one, never leased).
    instances: AtomicUsize,
    leased: AtomicUsize,
    stats: Arc<Stats>,
}

enum Value {
    /// The model itself (`T`).
    Shared(Arc<dyn Any + Send + Sync>),
    /// Its instances (`Instances<T>`).
    Bounded(Arc<dyn Any + Send + Sync>),
}

impl Entry {
    fn touch(&self) {
        self.last_used.store(nanos(self.epoch.elapsed()), Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_used.load(Relaxed)))
    }

    fn memory(&self) -> u64 {
        self.memory_bytes
            .saturating_mul(self.instances.load(Relaxed) as u64)
    }

    /// No handle, lease or clone of the shared instance exists outside the pool. Exact when
    /// called under the slot lock: new references are only made under it or from existing ones.
    fn is_idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && match &self.value {
                Value::Shared(v) => Arc::strong_count(v) == 1,
                Value::Bounded(_) => true,
            }
    }
}

type Loader<T> = Arc<dyn Fn() -> Result<T, LoadError> + Send + Sync>;

/// The instances of a bounded model and the loader that makes more.
struct Instances<T> {
    max: usize,
    state: Mutex<InstanceState<T>>,
    freed: Condvar,
    notify: Notify,
    loader: Loader<T>,
}

struct InstanceState<T> {
    idle: Vec<T>,
    created: usize,
    loading: usize,
    /// Blocking waiters, so a release without any skips the condition variable's system call.
    blocked: usize,
}

impl<T> Instances<T> {
    /// Wakes one blocking and one async waiter (whichever runs first takes the instance; the
    /// other waits again), after releasing the lock they would contend on.
    fn wake_one(&self, st: MutexGuard<'_, InstanceState<T>>) {
        let blocked = st.blocked > 0;
        drop(st);
        if blocked {
            self.freed.notify_one();
        }
        self.notify.notify_one();
    }
}

/// The pool behind every handle.
struct Inner {
    epoch: Instant,
    slots: Mutex<HashMap<ModelKey, Arc<Slot>>>,
    config: Mutex<PoolConfig>,
}

/// Models shared by every session of the process; see the module documentation.
///
/// Cloning is cheap and gives another handle to the same pool.
#[derive(Clone)]
pub struct ModelPool {
    inner: Arc<Inner>,
}

impl Default for ModelPool {
    fn default() -> Self {
        Self::new(PoolConfig::default())
    }
}

impl fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelPool")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

/// Pools whose numbers go into the process metrics, by name.
static EXPORTED: Mutex<Vec<(String, Weak<Inner>)>> = Mutex::new(Vec::new());

/// Name of the process-wide pool in the metrics snapshot.
pub const GLOBAL_POOL_NAME: &str = "models";

impl ModelPool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                slots: Mutex::new(HashMap::new()),
                config: Mutex::new(config),
            }),
        }
    }

    /// The process-wide pool: models are per process, so every crate that loads one uses this
    /// unless it has a reason not to. Its numbers are exported as `pools.models`.
    pub fn global() -> &'static ModelPool {
        static GLOBAL: OnceLock<ModelPool> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let pool = ModelPool::default();
            pool.export_metrics(GLOBAL_POOL_NAME);
            pool
        })
    }

    /// Adds this pool's numbers to every process metrics snapshot under `name` (replacing a
    /// pool exported under the same name); they leave it when the pool is dropped.
    pub fn export_metrics(&self, name: &str) {
        let mut exported = lock(&EXPORTED);
        exported.retain(|(n, p)| n != name && p.strong_count() > 0);
        exported.push((name.to_string(), Arc::downgrade(&self.inner)));
    }

    pub fn config(&self) -> PoolConfig {
        *lock(&self.inner.config)
    }

    /// Changes the limits and applies them at once.
    pub fn set_config(&self, config: PoolConfig) {
        *lock(&self.inner.config) = config;
        self.inner.enforce();
    }

    /// The model for `key`, loaded by `loader` if no request loaded it before. For callers
    /// off the async reactor (node constructors, blocking threads): it blocks while the model
    /// loads, here or in another request.
    pub fn get_or_load_blocking<T, E, F>(
        &self,
        key: ModelKey,
        options: LoadOptions,
        loader: F,
    ) -> Result<ModelHandle<T>, PoolError>
    where
        T: Send + Sync + 'static,
        E: StdError + Send + Sync + 'static,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        let slot = self.inner.slot(&key);
        let mut waiting: Option<(u64, Instant)> = None;
        let mut st = lock(&slot.state);
        loop {
            match self.inner.step(&slot, &mut st, &options, &mut waiting) {
                Step::Done(r) => return r,
                Step::Wait => {
                    st = slot
                        .changed
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Step::Load(attempt) => {
                    drop(st);
                    return self
                        .inner
                        .load(&slot, attempt, options, erase_loader(loader));
                }
            }
        }
    }

    /// [`Self::get_or_load_blocking`] for async callers: waits without blocking the reactor
    /// and runs the loader on the blocking pool. If this future is dropped mid-load the load
    /// still completes for everyone else.
    pub async fn get_or_load<T, E, F>(
        &self,
        key: ModelKey,
        options: LoadOptions,
        loader: F,
    ) -> Result<ModelHandle<T>, PoolError>
    where
        T: Send + Sync + 'static,
        E: StdError + Send + Sync + 'static,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        let slot = self.inner.slot(&key);
        let mut waiting: Option<(u64, Instant)> = None;
        loop {
            let mut notified = pin!(slot.notify.notified());
            notified.as_mut().enable();
            let step = {
                let mut st = lock(&slot.state);
                self.inner.step(&slot, &mut st, &options, &mut waiting)
            };
            match step {
                Step::Done(r) => return r,
                Step::Wait => notified.await,
                Step::Load(attempt) => {
                    let inner = Arc::clone(&self.inner);
                    let loader = erase_loader(loader);
                    let key = slot.key.clone();
                    let slot = Arc::clone(&slot);
                    return off_reactor(move || inner.load(&slot, attempt, options, loader))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(key, panic)));
                }
            }
        }
    }

    /// Loads a model now so the first session does not pay for it, and pins it against
    /// eviction.
    pub fn preload<T, E, F>(
        &self,
        key: ModelKey,
        options: LoadOptions,
        loader: F,
    ) -> Result<(), PoolError>
    where
        T: Send + Sync + 'static,
        E: StdError + Send + Sync + 'static,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        self.get_or_load_blocking(key, options.pinned(), loader)
            .map(drop)
    }

    /// Whether `key` is loaded now.
    pub fn is_loaded(&self, key: &ModelKey) -> bool {
        let slot = lock(&self.inner.slots).get(key).cloned();
        slot.is_some_and(|s| matches!(lock(&s.state).phase, Phase::Ready(_)))
    }

    /// Applies the memory budget and idle timeout now; returns how many models were evicted.
    /// Loads do this on their own; call it from a timer for the idle timeout to act between
    /// loads.
    pub fn evict_idle(&self) -> usize {
        self.inner.enforce()
    }

    /// Evicts `key` if it is loaded and idle (pinned or not); tells whether it was.
    pub fn unload(&self, key: &ModelKey) -> bool {
        let Some(slot) = lock(&self.inner.slots).get(key).cloned() else {
            return false;
        };
        let mut st = lock(&slot.state);
        if !matches!(&st.phase, Phase::Ready(e) if e.is_idle()) {
            return false;
        }
        let model = evict(&slot, &mut st);
        drop(st);
        drop(model);
        true
    }

    /// Numbers of one model (also after eviction); `None` if it was never requested.
    pub fn model_snapshot(&self, key: &ModelKey) -> Option<ModelSnapshot> {
        let slot = lock(&self.inner.slots).get(key).cloned()?;
        Some(slot.snapshot())
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        self.inner.snapshot()
    }
}

/// Snapshots of every exported pool still alive, for the process metrics.
pub fn exported_snapshots() -> BTreeMap<String, PoolSnapshot> {
    // The process-wide pool is always listed, so the snapshot's shape does not depend on
    // whether a model was loaded yet.
    ModelPool::global();
    let pools: Vec<(String, Arc<Inner>)> = lock(&EXPORTED)
        .iter()
        .filter_map(|(n, p)| Some((n.clone(), p.upgrade()?)))
        .collect();
    pools.into_iter().map(|(n, p)| (n, p.snapshot())).collect()
}

enum Step<T> {
    Done(Result<ModelHandle<T>, PoolError>),
    Wait,
    Load(u64),
}

fn erase_loader<T, E, F>(loader: F) -> Loader<T>
where
    E: StdError + Send + Sync + 'static,
    F: Fn() -> Result<T, E> + Send + Sync + 'static,
{
    Arc::new(move || loader().map_err(|e| Arc::new(e) as LoadError))
}

/// A load that panicked, as an error.
#[derive(Debug, thiserror::Error)]
#[error("the loader panicked: {0}")]
struct Panicked(String);

fn panicked(model: ModelKey, what: String) -> PoolError {
    PoolError::Load {
        model,
        error: Arc::new(Panicked(what)),
    }
}

/// Runs blocking work on the blocking pool when there is a runtime, inline otherwise; a panic
/// comes back as its message.
async fn off_reactor<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(job).await.map_err(|e| e.to_string()),
        Err(_) => Ok(job()),
    }
}

/// Takes the model out of its slot. The caller drops what is returned after unlocking, so
/// freeing a large model does not hold up requests for the key.
#[must_use]
fn evict(slot: &Slot, st: &mut SlotState) -> Phase {
    slot.stats.evictions.fetch_add(1, Relaxed);
    tracing::info!(model = %slot.key, "evicted idle model");
    std::mem::replace(&mut st.phase, Phase::Empty)
}

impl Slot {
    fn snapshot(&self) -> ModelSnapshot {
        let st = lock(&self.state);
        let entry = match &st.phase {
            Phase::Ready(e) => Some(e),
            _ => None,
        };
        ModelSnapshot {
            name: self.key.name.clone(),
            config: self.key.config.clone(),
            loaded: entry.is_some(),
            pinned: entry.is_some_and(|e| e.pinned.load(Relaxed)),
            max_instances: entry.and_then(|e| e.max_instances),
            instances: entry.map_or(0, |e| e.instances.load(Relaxed)),
            leased: entry.map_or(0, |e| e.leased.load(Relaxed)),
            memory_bytes: entry.map_or(0, |e| e.memory()),
            idle_s: entry.map_or(0.0, |e| e.idle_for().as_secs_f64()),
            counters: self.stats.snapshot(),
        }
    }
}

/// Guards a load in flight: if the loader panics, waiters are released with an error instead
/// of waiting forever, and the next request tries again.
struct LoadGuard<'a> {
    slot: &'a Slot,
    attempt: u64,
    armed: bool,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let err = panicked(self.slot.key.clone(), "during load".to_string());
            self.slot.stats.load_failures.fetch_add(1, Relaxed);
            let mut st = lock(&self.slot.state);
            st.phase = Phase::Empty;
            st.failure = Some((self.attempt, err));
            drop(st);
            self.slot.changed.notify_all();
            self.slot.notify.notify_waiters();
        }
    }
}

impl Inner {
    fn slot(&self, key: &ModelKey) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(key) {
            return Arc::clone(s);
        }
        let slot = Arc::new(Slot {
            key: key.clone(),
            state: Mutex::new(SlotState {
                phase: Phase::Empty,
                attempt: 0,
                failure: None,
            }),
            changed: Condvar::new(),
            notify: Notify::new(),
            stats: Arc::new(Stats::default()),
        });
        slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// One decision of a request under the slot lock: take the loaded model, wait for the
    /// load in flight, report that load's failure, or start a load.
    fn step<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        slot: &Slot,
        st: &mut SlotState,
        options: &LoadOptions,
        waiting: &mut Option<(u64, Instant)>,
    ) -> Step<T> {
        if let Some((attempt, since)) = *waiting
            && let Some((failed, err)) = &st.failure
            && *failed == attempt
        {
            slot.stats.waited(since);
            return Step::Done(Err(err.clone()));
        }
        match &st.phase {
            Phase::Ready(entry) => {
                if options.pinned {
                    entry.pinned.store(true, Relaxed);
                }
                let handle = self.handle(entry);
                if handle.is_ok() {
                    slot.stats.hits.fetch_add(1, Relaxed);
                    if let Some((_, since)) = *waiting {
                        slot.stats.waited(since);
                    }
                }
                Step::Done(handle)
            }
            Phase::Loading => {
                waiting.get_or_insert((st.attempt, Instant::now()));
                Step::Wait
            }
            Phase::Empty => {
                st.attempt += 1;
                st.phase = Phase::Loading;
                Step::Load(st.attempt)
            }
        }
    }

    fn handle<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
    ) -> Result<ModelHandle<T>, PoolError> {
        let mismatch = || PoolError::TypeMismatch {
            model: entry.key.clone(),
            loaded: entry.type_name,
            requested: type_name::<T>(),
        };
        let kind = match &entry.value {
            Value::Shared(v) => {
                HandleKind::Shared(Arc::clone(v).downcast::<T>().map_err(|_| mismatch())?)
            }
            Value::Bounded(v) => HandleKind::Bounded(
                Arc::clone(v)
                    .downcast::<Instances<T>>()
                    .map_err(|_| mismatch())?,
            ),
        };
        entry.touch();
        Ok(ModelHandle {
            entry: Arc::clone(entry),
            kind,
            pool: Arc::downgrade(self),
        })
    }

    /// Runs the loader for attempt `attempt` and publishes the result to everyone waiting.
    fn load<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        slot: &Slot,
        attempt: u64,
        options: LoadOptions,
        loader: Loader<T>,
    ) -> Result<ModelHandle<T>, PoolError> {
        let mut guard = LoadGuard {
            slot,
            attempt,
            armed: true,
        };
        let started = Instant::now();
        let loaded = loader();
        let took = started.elapsed();
        slot.stats.load_ns.fetch_add(nanos(took), Relaxed);
        let mut st = lock(&slot.state);
        guard.armed = false;
        let result = match loaded {
            Ok(model) => {
                slot.stats.loads.fetch_add(1, Relaxed);
                let value = match options.max_instances {
                    None => Value::Shared(Arc::new(model)),
                    Some(max) => Value::Bounded(Arc::new(Instances {
                        max: max.max(1),
                        state: Mutex::new(InstanceState {
                            idle: vec![model],
                            created: 1,
                            loading: 0,
                            blocked: 0,
                        }),
                        freed: Condvar::new(),
                        notify: Notify::new(),
                        loader,
                    })),
                };
                let entry = Arc::new(Entry {
                    key: slot.key.clone(),
                    value,
                    max_instances: options.max_instances.map(|n| n.max(1)),
                    memory_bytes: options.memory_bytes,
                    pinned: AtomicBool::new(options.pinned),
                    type_name: type_name::<T>(),
                    last_used: AtomicU64::new(0),
                    epoch: self.epoch,
                    instances: AtomicUsize::new(1),
                    leased: AtomicUsize::new(0),
                    stats: Arc::clone(&slot.stats),
                });
                // The handle is made before the lock is released, so the new model cannot be
                // evicted before its requester holds it.
                let handle = self.handle(&entry);
                st.phase = Phase::Ready(entry);
                st.failure = None;
                tracing::info!(
                    model = %slot.key,
                    ms = took.as_secs_f64() * 1e3,
                    "loaded model"
                );
                handle
            }
            Err(error) => {
                slot.stats.load_failures.fetch_add(1, Relaxed);
                st.phase = Phase::Empty;
                let err = PoolError::Load {
                    model: slot.key.clone(),
                    error,
                };
                st.failure = Some((attempt, err.clone()));
                tracing::warn!(model = %slot.key, error = %err, "model load failed");
                Err(err)
            }
        };
        drop(st);
        slot.changed.notify_all();
        slot.notify.notify_waiters();
        self.enforce();
        result
    }

    /// Evicts idle models over the idle timeout, then least recently used idle ones while
    /// the total is above the budget. Returns how many went.
    fn enforce(&self) -> usize {
        let config = *lock(&self.config);
        if config.memory_budget.is_none() && config.idle_timeout.is_none() {
            return 0;
        }
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        // Freed at the end, outside every lock.
        let mut evicted = Vec::new();
        let mut total = 0u64;
        // (last used, memory, slot) of idle, unpinned models.
        let mut candidates = Vec::new();
        for slot in &slots {
            let mut st = lock(&slot.state);
            let Phase::Ready(entry) = &st.phase else {
                continue;
            };
            let evictable = entry.is_idle() && !entry.pinned.load(Relaxed);
            if evictable && config.idle_timeout.is_some_and(|t| entry.idle_for() >= t) {
                evicted.push(evict(slot, &mut st));
                continue;
            }
            total = total.saturating_add(entry.memory());
            if evictable {
                candidates.push((entry.last_used.load(Relaxed), entry.memory(), slot));
            }
        }
        if let Some(budget) = config.memory_budget {
            candidates.sort_by_key(|(used, _, _)| *used);
            for (_, memory, slot) in candidates {
                if total <= budget {
                    break;
                }
                let mut st = lock(&slot.state);
                // Check again: it may have been taken since.
                if matches!(&st.phase, Phase::Ready(e) if e.is_idle() && !e.pinned.load(Relaxed)) {
                    evicted.push(evict(slot, &mut st));
                    total = total.saturating_sub(memory);
                }
            }
        }
        evicted.len()
    }

    fn snapshot(&self) -> PoolSnapshot {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut snap = PoolSnapshot {
            memory_budget_bytes: lock(&self.config).memory_budget,
            ..PoolSnapshot::default()
        };
        for slot in slots {
            let m = slot.snapshot();
            snap.memory_bytes += m.memory_bytes;
            snap.models_loaded += usize::from(m.loaded);
            snap.instances += m.instances;
            snap.leased += m.leased;
            snap.totals.add(&m.counters);
            snap.models.insert(slot.key.to_string(), m);
        }
        snap
    }
}

/// A loaded model held by one user. While any handle (or lease, or clone of a shared instance)
/// exists the model is not evicted. Cloning is cheap.
pub struct ModelHandle<T> {
    entry: Arc<Entry>,
    kind: HandleKind<T>,
    pool: Weak<Inner>,
}

enum HandleKind<T> {
    Shared(Arc<T>),
    Bounded(Arc<Instances<T>>),
}

impl<T> Clone for ModelHandle<T> {
    fn clone(&self) -> Self {
        Self {
            entry: Arc::clone(&self.entry),
            kind: match &self.kind {
                HandleKind::Shared(v) => HandleKind::Shared(Arc::clone(v)),
                HandleKind::Bounded(v) => HandleKind::Bounded(Arc::clone(v)),
            },
            pool: Weak::clone(&self.pool),
        }
    }
}

impl<T> Drop for ModelHandle<T> {
    fn drop(&mut self) {
        self.entry.touch();
    }
}

impl<T> fmt::Debug for ModelHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelHandle")
            .field("model", &self.entry.key)
            .field("max_instances", &self.entry.max_instances)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ModelHandle<T> {
    pub fn key(&self) -> &ModelKey {
        &self.entry.key
    }

    /// `None` for a shared model.
    pub fn max_instances(&self) -> Option<usize> {
        self.entry.max_instances
    }

    /// The instance of a shared model (`None` for a bounded one, which is leased instead).
    /// A clone of it keeps the model loaded like a handle does.
    pub fn shared(&self) -> Option<&Arc<T>> {
        match &self.kind {
            HandleKind::Shared(v) => Some(v),
            HandleKind::Bounded(_) => None,
        }
    }

    /// Leases an instance of a bounded model without waiting beyond a load: a free instance,
    /// else a new one while fewer than the maximum exist, else `None`.
    pub fn try_acquire(&self) -> Result<Option<Lease<T>>, PoolError> {
        let inst = self.instances()?;
        let mut st = lock(&inst.state);
        match self.take(inst, &mut st) {
            Take::Got(lease) => Ok(Some(lease)),
            Take::Load => {
                drop(st);
                load_instance(inst, &self.entry, &self.pool).map(Some)
            }
            Take::Full => Ok(None),
        }
    }

    /// Leases an instance of a bounded model for blocking code, waiting up to `timeout` for
    /// one to be given back when all are in use. A needed load is not limited by `timeout`.
    pub fn acquire_blocking(&self, timeout: Duration) -> Result<Lease<T>, PoolError> {
        let inst = self.instances()?;
        // Clocks are read only once waiting starts, so the common case costs none.
        let mut waiting: Option<(Instant, Option<Instant>)> = None;
        let mut st = lock(&inst.state);
        loop {
            match self.take(inst, &mut st) {
                Take::Got(lease) => {
                    self.served(waiting);
                    return Ok(lease);
                }
                Take::Load => {
                    drop(st);
                    self.served(waiting);
                    return load_instance(inst, &self.entry, &self.pool);
                }
                Take::Full => {}
            }
            let (start, deadline) = *waiting.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now.checked_add(timeout))
            });
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(self.timed_out(start, timeout));
            }
            st.blocked += 1;
            st = match left {
                Some(left) => {
                    inst.freed
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => inst.freed.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
            st.blocked -= 1;
        }
    }

    /// Leases an instance of a bounded model, waiting up to `timeout` for one to be given back
    /// when all are in use; a needed load runs on the blocking pool and is not limited by
    /// `timeout`. Waiting needs a Tokio runtime with time enabled.
    pub async fn acquire(&self, timeout: Duration) -> Result<Lease<T>, PoolError> {
        let inst = self.instances()?;
        let mut waiting: Option<(Instant, Option<tokio::time::Instant>)> = None;
        loop {
            let mut notified = pin!(inst.notify.notified());
            notified.as_mut().enable();
            let taken = {
                let mut st = lock(&inst.state);
                self.take(inst, &mut st)
            };
            match taken {
                Take::Got(lease) => {
                    self.served(waiting);
                    return Ok(lease);
                }
                Take::Load => {
                    self.served(waiting);
                    let (inst, entry, pool) = (
                        Arc::clone(inst),
                        Arc::clone(&self.entry),
                        Weak::clone(&self.pool),
                    );
                    let key = self.entry.key.clone();
                    return off_reactor(move || load_instance(&inst, &entry, &pool))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(key, panic)));
                }
                Take::Full => {}
            }
            let (start, deadline) = *waiting.get_or_insert_with(|| {
                let now = Instant::now();
                (
                    now,
                    tokio::time::Instant::from_std(now).checked_add(timeout),
                )
            });
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        // One last look: an instance freed right at the deadline still counts.
                        let mut st = lock(&inst.state);
                        if let Take::Got(lease) = self.take_idle(inst, &mut st) {
                            self.served(waiting);
                            return Ok(lease);
                        }
                        return Err(self.timed_out(start, timeout));
                    }
                }
                None => notified.await,
            }
        }
    }

    fn instances(&self) -> Result<&Arc<Instances<T>>, PoolError> {
        match &self.kind {
            HandleKind::Bounded(inst) => Ok(inst),
            HandleKind::Shared(_) => Err(PoolError::NotLeased {
                model: self.entry.key.clone(),
            }),
        }
    }

    fn served<D>(&self, waiting: Option<(Instant, D)>) {
        if let Some((start, _)) = waiting {
            self.entry.stats.waited(start);
        }
    }

    fn timed_out(&self, start: Instant, timeout: Duration) -> PoolError {
        self.entry.stats.waited(start);
        self.entry.stats.timeouts.fetch_add(1, Relaxed);
        PoolError::Timeout {
            model: self.entry.key.clone(),
            timeout,
            waited: start.elapsed(),
            max_instances: self.entry.max_instances.unwrap_or(1),
        }
    }

    fn take_idle(&self, inst: &Arc<Instances<T>>, st: &mut InstanceState<T>) -> Take<T> {
        match st.idle.pop() {
            Some(value) => {
                self.entry.leased.fetch_add(1, Relaxed);
                Take::Got(Lease {
                    value: Some(value),
                    instances: Arc::clone(inst),
                    entry: Arc::clone(&self.entry),
                })
            }
            None => Take::Full,
        }
    }

    /// A free instance, or the right to load one (counted as loading), or nothing.
    fn take(&self, inst: &Arc<Instances<T>>, st: &mut InstanceState<T>) -> Take<T> {
        match self.take_idle(inst, st) {
            Take::Full if st.created + st.loading < inst.max => {
                st.loading += 1;
                Take::Load
            }
            other => other,
        }
    }
}

/// Loads one more instance (a slot was reserved by [`ModelHandle::take`]) and leases it.
fn load_instance<T: Send + 'static>(
    inst: &Arc<Instances<T>>,
    entry: &Arc<Entry>,
    pool: &Weak<Inner>,
) -> Result<Lease<T>, PoolError> {
    /// Gives the reserved slot back if the loader fails or panics.
    struct Reserved<'a, T> {
        inst: &'a Instances<T>,
        armed: bool,
    }
    impl<T> Drop for Reserved<'_, T> {
        fn drop(&mut self) {
            if self.armed {
                let mut st = lock(&self.inst.state);
                st.loading -= 1;
                // A waiter may now load in its place.
                self.inst.wake_one(st);
            }
        }
    }
    let mut reserved = Reserved { inst, armed: true };
    let started = Instant::now();
    let loaded = (inst.loader)();
    let stats = &entry.stats;
    stats.load_ns.fetch_add(nanos(started.elapsed()), Relaxed);
    let value = loaded.map_err(|error| {
        stats.load_failures.fetch_add(1, Relaxed);
        PoolError::Load {
            model: entry.key.clone(),
            error,
        }
    })?;
    {
        let mut st = lock(&inst.state);
        reserved.armed = false;
        st.loading -= 1;
        st.created += 1;
        entry.instances.store(st.created, Relaxed);
    }
    stats.loads.fetch_add(1, Relaxed);
    entry.leased.fetch_add(1, Relaxed);
    entry.touch();
    tracing::info!(model = %entry.key, instances = entry.instances.load(Relaxed), "loaded another instance");
    if let Some(pool) = pool.upgrade() {
        pool.enforce();
    }
    Ok(Lease {
        value: Some(value),
        instances: Arc::clone(inst),
        entry: Arc::clone(entry),
    })
}

enum Take<T> {
    Got(Lease<T>),
    Load,
    Full,
}

/// Exclusive use of one instance of a bounded model; dropping it gives the instance back and
/// wakes one waiter.
pub struct Lease<T> {
    /// Always `Some` until dropped.
    value: Option<T>,
    instances: Arc<Instances<T>>,
    entry: Arc<Entry>,
}

impl<T> Lease<T> {
    pub fn key(&self) -> &ModelKey {
        &self.entry.key
    }
}

const LEASE_HOLDS_VALUE: &str = "a lease holds its instance until dropped";

impl<T> Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect(LEASE_HOLDS_VALUE)
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().expect(LEASE_HOLDS_VALUE)
    }
}

impl<T> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("model", &self.entry.key)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.instances.state);
        if let Some(value) = self.value.take() {
            st.idle.push(value);
        }
        self.entry.leased.fetch_sub(1, Relaxed);
        self.entry.touch();
        self.instances.wake_one(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, thiserror::Error)]
    #[error("boom {0}")]
    struct Boom(u32);

    /// Handles, leases and the async API cross threads and await points.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<S: Send + Sync>() {}
        fn future<F: Future + Send>(_: F) {}
        check::<ModelPool>();
        check::<ModelHandle<Vec<u8>>>();
        check::<Lease<Vec<u8>>>();
        let pool = ModelPool::default();
        future(
            pool.get_or_load(ModelKey::new("a", ""), LoadOptions::shared(), || {
                Ok::<_, Boom>(0u8)
            }),
        );
        let h = pool
            .get_or_load_blocking(ModelKey::new("b", ""), LoadOptions::bounded(1), || {
                Ok::<_, Boom>(0u8)
            })
            .unwrap();
        future(h.acquire(Duration::ZERO));
    }

    #[test]
    fn blocking_load_once_then_hits() {
        let pool = ModelPool::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let key = ModelKey::new("m", "c");
        let get = || {
            let calls = Arc::clone(&calls);
            pool.get_or_load_blocking(key.clone(), LoadOptions::shared(), move || {
                calls.fetch_add(1, Relaxed);
                Ok::<_, Boom>(String::from("weights"))
            })
            .unwrap()
        };
        let a = get();
        let b = get();
        assert!(Arc::ptr_eq(a.shared().unwrap(), b.shared().unwrap()));
        assert_eq!(calls.load(Relaxed), 1);
        let m = pool.model_snapshot(&key).unwrap();
        assert_eq!((m.counters.loads, m.counters.hits), (1, 1));
    }

    #[test]
    fn a_panicking_loader_releases_waiters_and_is_retried() {
        let pool = ModelPool::default();
        let key = ModelKey::new("p", "");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.get_or_load_blocking(
                key.clone(),
                LoadOptions::shared(),
                || -> Result<u8, Boom> { panic!("bad weights") },
            )
        }));
        assert!(r.is_err());
        assert!(!pool.is_loaded(&key));
        let h = pool
            .get_or_load_blocking(key.clone(), LoadOptions::shared(), || Ok::<_, Boom>(7u8))
            .unwrap();
        assert_eq!(**h.shared().unwrap(), 7);
        assert_eq!(pool.model_snapshot(&key).unwrap().counters.load_failures, 1);
    }

    #[test]
    fn shared_models_are_not_leased_and_types_are_checked() {
        let pool = ModelPool::default();
        let key = ModelKey::new("s", "");
        let h = pool
            .get_or_load_blocking(key.clone(), LoadOptions::shared(), || Ok::<_, Boom>(1u32))
            .unwrap();
        assert!(matches!(
            h.acquire_blocking(Duration::ZERO),
            Err(PoolError::NotLeased { .. })
        ));
        let err = pool
            .get_or_load_blocking(key, LoadOptions::shared(), || Ok::<_, Boom>(1u64))
            .unwrap_err();
        assert!(matches!(err, PoolError::TypeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("u32"), "{err}");
    }

    #[test]
    fn a_clone_of_the_shared_instance_keeps_it_loaded() {
        let pool = ModelPool::new(PoolConfig {
            memory_budget: Some(0),
            idle_timeout: None,
        });
        let key = ModelKey::new("k", "");
        let h = pool
            .get_or_load_blocking(
                key.clone(),
                LoadOptions::shared().with_memory_bytes(10),
                || Ok::<_, Boom>(1u8),
            )
            .unwrap();
        let inner = Arc::clone(h.shared().unwrap());
        drop(h);
        assert_eq!(pool.evict_idle(), 0);
        assert!(pool.is_loaded(&key));
        drop(inner);
        assert_eq!(pool.evict_idle(), 1);
        assert!(!pool.is_loaded(&key));
    }

    #[test]
    fn try_acquire_loads_up_to_the_bound() {
        let pool = ModelPool::default();
        let h = pool
            .get_or_load_blocking(ModelKey::new("b", ""), LoadOptions::bounded(2), || {
                Ok::<_, Boom>(Vec::<u8>::new())
            })
            .unwrap();
        let mut a = h.try_acquire().unwrap().unwrap();
        let b = h.try_acquire().unwrap().unwrap();
        assert!(h.try_acquire().unwrap().is_none());
        a.push(1);
        drop(a);
        let c = h.try_acquire().unwrap().unwrap();
        assert_eq!(*c, vec![1]);
        drop((b, c));
        let s = pool.snapshot();
        assert_eq!((s.instances, s.leased, s.totals.loads), (2, 0, 2));
    }
}
