//! The per-key state machine: a slot is empty, loading or ready; requests decide under its
//! lock whether to take the model, wait for the load in flight or start one; idle models leave
//! by eviction. Also reads the slots into snapshots.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::entry::{Entry, Typed};
use super::stats::{ModelSnapshot, PoolSnapshot, Stats, nanos};
use super::{LoadOptions, Loader, ModelKey, PoolConfig, PoolError, erase_loader, lock, panicked};

/// The pool behind every handle.
pub(super) struct Inner {
    pub(super) epoch: Instant,
    pub(super) slots: Mutex<HashMap<ModelKey, Arc<Slot>>>,
    pub(super) config: Mutex<PoolConfig>,
}

/// Everything the pool keeps for one key, loaded or not; kept for the life of the pool so the
/// key's counters survive evictions.
pub(super) struct Slot {
    pub(super) key: ModelKey,
    pub(super) state: Mutex<SlotState>,
    /// Wakes blocking waiters when a load ends.
    pub(super) changed: Condvar,
    /// Wakes async waiters when a load ends.
    pub(super) notify: Notify,
    pub(super) stats: Arc<Stats>,
}

pub(super) struct SlotState {
    pub(super) phase: Phase,
    /// Number of the latest load attempt.
    attempt: u64,
    /// The latest failed attempt, for the requests that waited on it.
    failure: Option<(u64, PoolError)>,
}

pub(super) enum Phase {
    Empty,
    Loading,
    Ready(Arc<Entry>),
}

/// What a request does next, decided under the slot lock.
pub(super) enum Step<T> {
    Done(Result<Typed<T>, PoolError>),
    Wait,
    /// Run the load of this attempt: the request won the right to load.
    Load(u64),
}

/// Takes the model out of its slot. The caller drops what is returned after unlocking, so
/// freeing a large model does not hold up requests for the key.
#[must_use]
pub(super) fn evict(slot: &Slot, st: &mut SlotState) -> Phase {
    slot.stats.evictions.fetch_add(1, Relaxed);
    tracing::info!(model = %slot.key, "evicted idle model");
    std::mem::replace(&mut st.phase, Phase::Empty)
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
    pub(super) fn new(config: PoolConfig) -> Self {
        Self {
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            config: Mutex::new(config),
        }
    }

    pub(super) fn slot(&self, key: &ModelKey) -> Arc<Slot> {
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
    pub(super) fn step<T: Send + Sync + 'static>(
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
                let typed = entry.typed();
                if typed.is_ok() {
                    slot.stats.hits.fetch_add(1, Relaxed);
                    if let Some((_, since)) = *waiting {
                        slot.stats.waited(since);
                    }
                }
                Step::Done(typed)
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

    /// The load a request won ([`Step::Load`]) as a self-contained job, so it can run on this
    /// thread or on the blocking pool, where it completes even if its requester goes away.
    pub(super) fn load_job<T, E, F>(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        attempt: u64,
        options: LoadOptions,
        loader: F,
    ) -> impl FnOnce() -> Result<Typed<T>, PoolError> + Send + 'static
    where
        T: Send + Sync + 'static,
        E: StdError + Send + Sync + 'static,
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
    {
        let (inner, slot, loader) = (Arc::clone(self), Arc::clone(slot), erase_loader(loader));
        move || inner.load(&slot, attempt, options, loader)
    }

    /// Runs the loader for attempt `attempt` and publishes the result to everyone waiting.
    fn load<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        slot: &Slot,
        attempt: u64,
        options: LoadOptions,
        loader: Loader<T>,
    ) -> Result<Typed<T>, PoolError> {
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
                let entry = Arc::new(Entry::new(
                    slot.key.clone(),
                    model,
                    loader,
                    &options,
                    self.epoch,
                    Arc::clone(&slot.stats),
                ));
                // The requester's reference is made before the lock is released, so the new
                // model cannot be evicted before the requester holds it.
                let typed = entry.typed();
                st.phase = Phase::Ready(entry);
                st.failure = None;
                tracing::info!(
                    model = %slot.key,
                    ms = took.as_secs_f64() * 1e3,
                    "loaded model"
                );
                typed
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
    pub(super) fn enforce(&self) -> usize {
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
}

impl Slot {
    pub(super) fn snapshot(&self) -> ModelSnapshot {
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

impl Inner {
    pub(super) fn snapshot(&self) -> PoolSnapshot {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut snap = PoolSnapshot {
            memory_budget_bytes: lock(&self.config).memory_budget,
            ..PoolSnapshot::default()
        };
        for slot in slots {
            snap.add(slot.key.to_string(), slot.snapshot());
        }
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Boom;
    use super::super::{LoadOptions, ModelKey, ModelPool};

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
}
