//! The pool's numbers: counters per key (kept across evictions) and the snapshot types of one
//! model and of a pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

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

/// Live counters of one key, shared by its slot and whatever is loaded in it.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) loads: AtomicU64,
    pub(super) load_failures: AtomicU64,
    pub(super) hits: AtomicU64,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) load_ns: AtomicU64,
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    /// Counts one wait that began at `since`.
    pub(super) fn waited(&self, since: Instant) {
        self.waits.fetch_add(1, Relaxed);
        self.wait_ns.fetch_add(nanos(since.elapsed()), Relaxed);
    }

    pub(super) fn snapshot(&self) -> PoolCounters {
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

impl PoolSnapshot {
    /// Adds one model, listed under `name`, to the pool's totals and models.
    pub(super) fn add(&mut self, name: String, m: ModelSnapshot) {
        self.memory_bytes += m.memory_bytes;
        self.models_loaded += usize::from(m.loaded);
        self.instances += m.instances;
        self.leased += m.leased;
        self.totals.add(&m.counters);
        self.models.insert(name, m);
    }
}
