//! Counters and latency histograms per node, per session and per process.
//!
//! Recording is a few relaxed atomic adds into fixed log-linear buckets (about 6% resolution),
//! so it can stay on in production; a pipeline can still switch it off with `config.metrics`.
//! Node counters live while their session does and are folded into per-type process totals when
//! it ends, so a snapshot covers both live and finished sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const MAX_EXP: u32 = 40; // about 18 minutes in nanoseconds
const BUCKETS: usize = (SUB + (MAX_EXP as u64 - SUB_BITS as u64 + 1) * SUB) as usize;

/// A lock-free latency histogram in nanoseconds.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = (63 - v.leading_zeros()).min(MAX_EXP);
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(e - SUB_BITS) * SUB + sub) as usize
}

/// Middle of a bucket's range.
fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let shift = e - u64::from(SUB_BITS);
    let lo = (SUB + sub) << shift;
    lo + (1u64 << shift) / 2
}

/// Percentiles of a histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Sum of all values, in seconds (for Prometheus `_sum`).
    #[serde(skip)]
    pub sum_s: f64,
    /// Cumulative counts at [`EXPORT_BOUNDS_S`] (for Prometheus `_bucket`): values are placed
    /// by their bucket's middle, so a bound is as exact as the histogram (about 6%).
    #[serde(skip)]
    pub cumulative: Vec<u64>,
}

/// Upper bounds, in seconds, at which histograms are exported as Prometheus buckets.
pub const EXPORT_BOUNDS_S: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    pub fn record(&self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn record_ns(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(ns, Relaxed);
        self.max.fetch_max(ns, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Adds another histogram's counts into this one.
    pub fn merge(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            let n = b.load(Relaxed);
            if n > 0 {
                a.fetch_add(n, Relaxed);
            }
        }
        self.count.fetch_add(other.count.load(Relaxed), Relaxed);
        self.sum.fetch_add(other.sum.load(Relaxed), Relaxed);
        self.max.fetch_max(other.max.load(Relaxed), Relaxed);
    }

    /// Value at quantile `q` (0..=1) in nanoseconds.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return bucket_value(i).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }

    fn cumulative(&self) -> Vec<u64> {
        let mut out = vec![0; EXPORT_BOUNDS_S.len()];
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n == 0 {
                continue;
            }
            let v = bucket_value(i) as f64 / 1e9;
            let first = EXPORT_BOUNDS_S.partition_point(|&le| le < v);
            for c in &mut out[first..] {
                *c += n;
            }
        }
        out
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let count = self.count.load(Relaxed);
        let us = |ns: u64| ns as f64 / 1000.0;
        HistogramSnapshot {
            count,
            mean_us: if count == 0 {
                0.0
            } else {
                self.sum.load(Relaxed) as f64 / count as f64 / 1000.0
            },
            p50_us: us(self.quantile_ns(0.50)),
            p95_us: us(self.quantile_ns(0.95)),
            p99_us: us(self.quantile_ns(0.99)),
            max_us: us(self.max.load(Relaxed)),
            sum_s: self.sum.load(Relaxed) as f64 / 1e9,
            cumulative: self.cumulative(),
        }
    }
}

/// Counters of one node in one session (or, merged, of one node type in the process).
#[derive(Default)]
pub struct NodeCounters {
    /// Inputs processed successfully.
    pub processed: AtomicU64,
    /// Inputs that failed after all retries.
    pub errors: AtomicU64,
    /// Extra attempts made by the retry policy.
    pub retries: AtomicU64,
    /// Inputs refused by an open circuit breaker.
    pub rejected: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_trips: AtomicU64,
    /// Time per `process` call.
    pub latency: Histogram,
}

impl NodeCounters {
    fn merge(&self, o: &NodeCounters) {
        for (a, b) in [
            (&self.processed, &o.processed),
            (&self.errors, &o.errors),
            (&self.retries, &o.retries),
            (&self.rejected, &o.rejected),
            (&self.breaker_trips, &o.breaker_trips),
        ] {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
        self.latency.merge(&o.latency);
    }

    fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            processed: self.processed.load(Relaxed),
            errors: self.errors.load(Relaxed),
            retries: self.retries.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            breaker_trips: self.breaker_trips.load(Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

/// Counters as numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountersSnapshot {
    pub processed: u64,
    pub errors: u64,
    pub retries: u64,
    pub rejected: u64,
    pub breaker_trips: u64,
    pub latency: HistogramSnapshot,
}

/// One node of a live session.
pub struct NodeMetrics {
    pub node_id: Arc<str>,
    pub node_type: String,
    pub counters: NodeCounters,
}

/// One edge of a live session; drops are counted even when metrics are off.
pub struct EdgeMetrics {
    pub label: String,
    pub dropped: AtomicU64,
}

/// Metrics of one session.
pub struct SessionMetrics {
    pub session_id: Arc<str>,
    pub pipeline: Arc<str>,
    pub started: Instant,
    pub nodes: Vec<Arc<NodeMetrics>>,
    pub edges: Vec<Arc<EdgeMetrics>>,
    pub inputs: AtomicU64,
    pub outputs: AtomicU64,
}

/// A session as numbers.
#[derive(Clone, Debug, Serialize)]
pub struct SessionSnapshot {
    pub session_id: String,
    pub pipeline: String,
    pub uptime_s: f64,
    pub inputs: u64,
    pub outputs: u64,
    pub dropped: u64,
    pub nodes: BTreeMap<String, NodeSnapshot>,
    pub edges_dropped: BTreeMap<String, u64>,
}

/// A node as numbers.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSnapshot {
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(flatten)]
    pub counters: CountersSnapshot,
}

impl SessionMetrics {
    pub fn dropped(&self) -> u64 {
        self.edges.iter().map(|e| e.dropped.load(Relaxed)).sum()
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            session_id: self.session_id.to_string(),
            pipeline: self.pipeline.to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            inputs: self.inputs.load(Relaxed),
            outputs: self.outputs.load(Relaxed),
            dropped: self.dropped(),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.node_id.to_string(),
                        NodeSnapshot {
                            node_type: n.node_type.clone(),
                            counters: n.counters.snapshot(),
                        },
                    )
                })
                .collect(),
            edges_dropped: self
                .edges
                .iter()
                .map(|e| (e.label.clone(), e.dropped.load(Relaxed)))
                .filter(|(_, d)| *d > 0)
                .collect(),
        }
    }
}

/// A moving average of delays (how late inputs arrive, how long outputs take), over every
/// session. It reads 0 once nothing was recorded for a while, so an idle server is not
/// "behind".
#[derive(Default)]
pub struct Lag {
    ewma_us: AtomicU64,
    /// When the last output left, in µs since `epoch`.
    last_us: AtomicU64,
    epoch: OnceLock<Instant>,
}

impl Lag {
    /// Outputs older than this no longer count.
    const STALE: Duration = Duration::from_secs(2);

    fn now_us(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, lag: Duration) {
        let lag = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        let now = self.now_us().max(1); // 0 means "never"
        let stale =
            now.saturating_sub(self.last_us.swap(now, Relaxed)) > Self::STALE.as_micros() as u64;
        let _ = self.ewma_us.fetch_update(Relaxed, Relaxed, |old| {
            // Each output moves the average an eighth of the way; after a quiet spell it
            // starts over.
            Some(if stale || old == 0 {
                lag
            } else {
                old - old / 8 + lag / 8
            })
        });
    }

    /// The current average, or zero when no output left recently.
    pub fn recent(&self) -> Duration {
        let quiet = self.now_us().saturating_sub(self.last_us.load(Relaxed));
        if self.last_us.load(Relaxed) == 0 || quiet > Self::STALE.as_micros() as u64 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.ewma_us.load(Relaxed))
    }
}

/// Process-wide metrics: live sessions, lifetime counts and per-type totals of ended sessions.
#[derive(Default)]
pub struct ProcessMetrics {
    /// How late input arrives against its media time (a real-time client held back by a
    /// session that does not keep up, or a slow client).
    pub input_lag: Lag,
    /// How long an output takes from the input that completed it (queueing and processing
    /// in every stage, not a node's deliberate waiting such as a VAD's for silence).
    pub output_lag: Lag,
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub nodes_created: AtomicU64,
    pub nodes_closed: AtomicU64,
    /// Node instances in existence now (dropped instances decrement it).
    pub nodes_alive: AtomicI64,
    /// Edge queues in existence now.
    pub edges_alive: AtomicI64,
    /// Node tasks running now.
    pub tasks_alive: AtomicI64,
    ended_inputs: AtomicU64,
    ended_outputs: AtomicU64,
    ended_dropped: AtomicU64,
    live: Mutex<HashMap<Arc<str>, Arc<SessionMetrics>>>,
    by_type: Mutex<BTreeMap<String, Arc<NodeCounters>>>,
}

/// The whole process as numbers: what `--metrics` prints and `/metrics` exports.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSnapshot {
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub sessions_failed: u64,
    pub sessions_active: usize,
    pub nodes_created: u64,
    pub nodes_closed: u64,
    pub nodes_alive: i64,
    pub edges_alive: i64,
    pub tasks_alive: i64,
    pub inputs: u64,
    pub outputs: u64,
    pub dropped: u64,
    /// How far behind real time the sessions run, in ms: the moving averages of how late
    /// input arrives and how long outputs take (0 after 2 s without either).
    pub lag_ms: f64,
    /// Measured cost of recording one node execution (two clock reads and a histogram insert).
    pub record_overhead_ns: f64,
    /// Totals per node type over live and ended sessions.
    pub node_types: BTreeMap<String, CountersSnapshot>,
    pub sessions: Vec<SessionSnapshot>,
    /// Model pools of the process by name (`models` is [`crate::ModelPool::global`]): loads,
    /// hits, waits, evictions, instances and memory, per model and in total. Pools are per
    /// process, so every runtime's snapshot shows the same ones.
    pub pools: BTreeMap<String, crate::pool::PoolSnapshot>,
    /// Shared models' schedulers by model name: queue depth, queue wait, batch sizes, busy
    /// fraction, refusals.
    pub schedulers: BTreeMap<String, crate::scheduler::SchedulerSnapshot>,
}

impl ProcessMetrics {
    pub(crate) fn session_started(&self, s: Arc<SessionMetrics>) {
        self.sessions_opened.fetch_add(1, Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(Arc::clone(&s.session_id), s);
        }
    }

    /// Folds an ended session into the totals.
    pub(crate) fn session_ended(&self, id: &str, failed: bool) {
        let s = self.live.lock().ok().and_then(|mut l| l.remove(id));
        if failed {
            self.sessions_failed.fetch_add(1, Relaxed);
        }
        self.sessions_closed.fetch_add(1, Relaxed);
        let Some(s) = s else { return };
        self.ended_inputs.fetch_add(s.inputs.load(Relaxed), Relaxed);
        self.ended_outputs
            .fetch_add(s.outputs.load(Relaxed), Relaxed);
        self.ended_dropped.fetch_add(s.dropped(), Relaxed);
        if let Ok(mut by_type) = self.by_type.lock() {
            for n in &s.nodes {
                by_type
                    .entry(n.node_type.clone())
                    .or_default()
                    .merge(&n.counters);
            }
        }
    }

    /// How far behind real time the sessions run now: how late input arrives plus how long
    /// outputs take. What admission compares with its target.
    pub fn lag(&self) -> Duration {
        self.input_lag.recent() + self.output_lag.recent()
    }

    /// Live sessions now.
    pub fn active_sessions(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn snapshot(&self) -> ProcessSnapshot {
        let live: Vec<Arc<SessionMetrics>> = self
            .live
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        let mut by_type: BTreeMap<String, NodeCounters> = BTreeMap::new();
        if let Ok(ended) = self.by_type.lock() {
            for (t, c) in ended.iter() {
                by_type.entry(t.clone()).or_default().merge(c);
            }
        }
        for s in &live {
            for n in &s.nodes {
                by_type
                    .entry(n.node_type.clone())
                    .or_default()
                    .merge(&n.counters);
            }
        }
        let mut sessions: Vec<SessionSnapshot> = live.iter().map(|s| s.snapshot()).collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        ProcessSnapshot {
            sessions_opened: self.sessions_opened.load(Relaxed),
            sessions_closed: self.sessions_closed.load(Relaxed),
            sessions_failed: self.sessions_failed.load(Relaxed),
            sessions_active: live.len(),
            nodes_created: self.nodes_created.load(Relaxed),
            nodes_closed: self.nodes_closed.load(Relaxed),
            nodes_alive: self.nodes_alive.load(Relaxed),
            edges_alive: self.edges_alive.load(Relaxed),
            tasks_alive: self.tasks_alive.load(Relaxed),
            inputs: self.ended_inputs.load(Relaxed)
                + live.iter().map(|s| s.inputs.load(Relaxed)).sum::<u64>(),
            outputs: self.ended_outputs.load(Relaxed)
                + live.iter().map(|s| s.outputs.load(Relaxed)).sum::<u64>(),
            dropped: self.ended_dropped.load(Relaxed)
                + live.iter().map(|s| s.dropped()).sum::<u64>(),
            lag_ms: self.lag().as_secs_f64() * 1e3,
            record_overhead_ns: record_overhead_ns(),
            node_types: by_type
                .iter()
                .map(|(t, c)| (t.clone(), c.snapshot()))
                .collect(),
            sessions,
            pools: crate::pool::exported_snapshots(),
            schedulers: crate::scheduler::exported_snapshots(),
        }
    }
}

/// Cost of one recording, measured once per process on a scratch histogram.
pub fn record_overhead_ns() -> f64 {
    static COST: OnceLock<f64> = OnceLock::new();
    *COST.get_or_init(|| {
        let h = Histogram::default();
        let counter = AtomicU64::new(0);
        const N: u32 = 20_000;
        let t = Instant::now();
        for _ in 0..N {
            let start = Instant::now();
            counter.fetch_add(1, Relaxed);
            h.record(start.elapsed());
        }
        t.elapsed().as_nanos() as f64 / f64::from(N)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_buckets_are_cumulative_at_their_bounds() {
        let h = Histogram::default();
        for us in [30, 80, 80, 700, 3_000, 40_000_000] {
            h.record_ns(us * 1000);
        }
        let s = h.snapshot();
        let at = |le: f64| s.cumulative[EXPORT_BOUNDS_S.iter().position(|&b| b == le).unwrap()];
        assert_eq!(at(0.000_05), 1);
        assert_eq!(at(0.000_1), 3);
        assert_eq!(at(0.001), 4);
        assert_eq!(at(0.005), 5);
        assert_eq!(
            at(10.0),
            5,
            "40 s is above every bound: only in +Inf (the count)"
        );
        assert_eq!(s.count, 6);
        assert!((s.sum_s - 40.003_89).abs() < 1e-9);
    }

    #[test]
    fn buckets_round_trip_within_resolution() {
        for v in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            1_000,
            12_345,
            1_000_000,
            987_654_321,
        ] {
            let mid = bucket_value(bucket_of(v));
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 0.07, "value {v} -> {mid}");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record_ns(v * 1_000);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        assert!((s.p50_us - 5_000.0).abs() / 5_000.0 < 0.07, "{s:?}");
        assert!((s.p99_us - 9_900.0).abs() / 9_900.0 < 0.07, "{s:?}");
        assert_eq!(s.max_us, 10_000.0);
        assert!((s.mean_us - 5_000.5).abs() < 1.0);
    }

    #[test]
    fn merge_adds_counts() {
        let a = Histogram::default();
        let b = Histogram::default();
        a.record_ns(10);
        b.record_ns(1_000);
        b.record_ns(2_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.snapshot().max_us, 2.0);
    }
}
