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
//!
//! Layout: this file is the public API and the registry of pools exported into the process
//! metrics; `slot` holds the per-key state machine (loading, waiting, eviction, snapshots),
//! `entry` a loaded model and the instances of a bounded one, `lease` the handles and leases,
//! and `stats` the counters and snapshot types. Of these, each file uses only files later in
//! the order `lease`, `slot`, `entry`, `stats` (and the shared items of this one).

mod entry;
mod lease;
mod slot;
mod stats;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use lease::{Lease, ModelHandle};
pub use stats::{ModelSnapshot, PoolCounters, PoolSnapshot};

use slot::{Inner, Phase, Step, evict};

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
#[non_exhaustive]
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

impl crate::node::Retryable for PoolError {
    /// Only a wait for a busy instance may end differently next time.
    fn is_retryable(&self) -> bool {
        matches!(self, PoolError::Timeout { .. })
    }
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

/// Locks ignoring poison: every critical section here leaves its data consistent before any
/// call that could panic (loaders run outside the locks).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A loader with its error type erased, so the instances of a bounded model can keep it.
type Loader<T> = Arc<dyn Fn() -> Result<T, LoadError> + Send + Sync>;

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

/// Name of the process-wide pool in the metrics snapshot.
pub const GLOBAL_POOL_NAME: &str = "models";

impl ModelPool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(Inner::new(config)),
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
                Step::Done(r) => return r.map(|t| ModelHandle::new(t, &self.inner)),
                Step::Wait => {
                    st = slot
                        .changed
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Step::Load(attempt) => {
                    drop(st);
                    let loaded = self.inner.load_job(&slot, attempt, options, loader)();
                    return loaded.map(|t| ModelHandle::new(t, &self.inner));
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
                Step::Done(r) => return r.map(|t| ModelHandle::new(t, &self.inner)),
                Step::Wait => notified.await,
                Step::Load(attempt) => {
                    let job = self.inner.load_job(&slot, attempt, options, loader);
                    let inner = Arc::clone(&self.inner);
                    // Made a handle in the job, so that if this future is gone by then, the
                    // handle's drop still counts as a use.
                    let job = move || job().map(|t| ModelHandle::new(t, &inner));
                    return crate::rt::off_reactor(job)
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

/// Pools whose numbers go into the process metrics, by name.
static EXPORTED: Mutex<Vec<(String, Weak<Inner>)>> = Mutex::new(Vec::new());

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A loader's error, for the tests of every pool module.
    #[derive(Debug, thiserror::Error)]
    #[error("boom {0}")]
    pub(super) struct Boom(pub(super) u32);

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
}
