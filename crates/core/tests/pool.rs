//! The model pool: one load per key across concurrent sessions, bounded instances with leases
//! and timeouts, load errors that are shared but not kept, eviction under a memory budget, and
//! the numbers it reports.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{
    LoadOptions, MediaType, ModelHandle, ModelKey, ModelPool, Node, NodeContext, NodeError,
    Outputs, Packet, PoolConfig, PoolError, RuntimeBuilder, RuntimeData,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// A stand-in for a model: its id tells instances apart.
#[derive(Debug)]
struct Weights {
    id: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt weights in {0}")]
struct Corrupt(String);

/// A loader that counts its runs, numbers the instances it makes and takes `delay`.
fn counting_loader(
    calls: &Arc<AtomicUsize>,
    delay: Duration,
) -> impl Fn() -> Result<Weights, Corrupt> + Send + Sync + 'static {
    let calls = Arc::clone(calls);
    move || {
        let id = calls.fetch_add(1, SeqCst);
        std::thread::sleep(delay);
        Ok(Weights { id })
    }
}

fn key(name: &str) -> ModelKey {
    ModelKey::new(name, "threads=1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_load_once_and_share_one_instance() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (pool, calls, barrier) = (pool.clone(), Arc::clone(&calls), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                pool.get_or_load(
                    key("vad.onnx"),
                    LoadOptions::shared(),
                    counting_loader(&calls, Duration::from_millis(300)),
                )
                .await
            })
        })
        .collect();
    let mut handles = Vec::new();
    for t in tasks {
        handles.push(t.await.unwrap().unwrap());
    }
    assert_eq!(calls.load(SeqCst), 1, "loader runs");
    let first = handles[0].shared().unwrap();
    assert!(
        handles
            .iter()
            .all(|h| Arc::ptr_eq(first, h.shared().unwrap()))
    );
    let m = pool.model_snapshot(&key("vad.onnx")).unwrap();
    assert_eq!(m.counters.loads, 1);
    assert_eq!(
        m.counters.hits, 49,
        "every request but the loading one is a hit"
    );
    assert_eq!(m.counters.waits, 49, "all arrived while the load ran");
    assert!(m.counters.wait_ms_total > 0.0);
    assert_eq!((m.instances, m.max_instances), (1, None));
}

#[test]
fn fifty_threads_on_the_blocking_api_load_once() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (pool, calls, barrier) = (pool.clone(), Arc::clone(&calls), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                pool.get_or_load_blocking(
                    key("asr.onnx"),
                    LoadOptions::shared(),
                    counting_loader(&calls, Duration::from_millis(200)),
                )
                .map(|h| Arc::clone(h.shared().unwrap()))
            })
        })
        .collect();
    let models: Vec<Arc<Weights>> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(calls.load(SeqCst), 1);
    assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
    assert_eq!(pool.snapshot().totals.loads, 1);
}

/// A node whose constructor takes its model from a pool, as the speech nodes do.
struct ModelUser {
    _model: ModelHandle<Weights>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
struct NoParams {}

/// The pool and loader counter the `ModelUser` nodes of the session test use.
fn session_pool() -> &'static (ModelPool, Arc<AtomicUsize>) {
    static POOL: OnceLock<(ModelPool, Arc<AtomicUsize>)> = OnceLock::new();
    POOL.get_or_init(|| (ModelPool::default(), Arc::new(AtomicUsize::new(0))))
}

#[async_trait]
impl Node for ModelUser {
    async fn process(&mut self, _: usize, p: &Packet, out: &mut Outputs) -> Result<(), NodeError> {
        out.push(p.data.clone());
        Ok(())
    }
}

impl NodeType for ModelUser {
    type Params = NoParams;
    const NAME: &'static str = "ModelUser";
    const DESCRIPTION: &'static str = "holds a pooled model";
    fn ports() -> Ports {
        Ports::one_to_one(MediaType::ALL, MediaType::ALL)
    }
    fn new(_: NoParams, _: &NodeContext) -> Result<Self, NodeError> {
        let (pool, calls) = session_pool();
        let model = pool
            .get_or_load_blocking(
                key("session-model"),
                LoadOptions::shared(),
                counting_loader(calls, Duration::from_millis(100)),
            )
            .map_err(|e| NodeError::fatal(e.to_string()))?;
        Ok(Self { _model: model })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sessions_opened_at_once_load_the_model_once() {
    let rt = Arc::new(RuntimeBuilder::empty().node::<ModelUser>().build().unwrap());
    let pipeline = rt
        .load(
            "version: v1\nnodes:\n  - {id: a, type: ModelUser}\n  - {id: b, type: ModelUser}\n\
             connections:\n  - {from: a, to: b}\n",
            "pool.yaml",
        )
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (rt, pipeline) = (Arc::clone(&rt), Arc::clone(&pipeline));
            tokio::spawn(async move {
                let session = rt.open(&pipeline).await.unwrap();
                session.send(RuntimeData::text("hi")).await.unwrap();
                session
            })
        })
        .collect();
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await.unwrap());
    }
    let (pool, calls) = session_pool();
    assert_eq!(calls.load(SeqCst), 1);
    let m = pool.model_snapshot(&key("session-model")).unwrap();
    assert_eq!((m.counters.loads, m.counters.hits), (1, 99));
    for s in sessions {
        let (out, _) = s.close().await.unwrap();
        assert_eq!(out.len(), 1);
    }
}

#[tokio::test]
async fn different_configs_load_separately() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |config: &str| {
        pool.get_or_load(
            ModelKey::new("m.onnx", config),
            LoadOptions::shared(),
            counting_loader(&calls, Duration::ZERO),
        )
    };
    let one = load("threads=1").await.unwrap();
    let two = load("threads=2").await.unwrap();
    let one_again = load("threads=1").await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    assert!(!Arc::ptr_eq(one.shared().unwrap(), two.shared().unwrap()));
    assert!(Arc::ptr_eq(
        one.shared().unwrap(),
        one_again.shared().unwrap()
    ));
    let s = pool.snapshot();
    assert_eq!((s.models_loaded, s.totals.loads, s.totals.hits), (2, 2, 1));
    assert!(
        s.models.contains_key("m.onnx [threads=1]"),
        "{:?}",
        s.models
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_model_never_has_more_leases_than_instances() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = pool
        .get_or_load(
            key("tts.onnx"),
            LoadOptions::bounded(2),
            counting_loader(&calls, Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let users: Vec<_> = (0..5)
        .map(|_| {
            let (handle, active, peak) = (handle.clone(), Arc::clone(&active), Arc::clone(&peak));
            tokio::spawn(async move {
                let lease = handle.acquire(Duration::from_secs(10)).await.unwrap();
                let now = active.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                active.fetch_sub(1, SeqCst);
                lease.id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for u in users {
        ids.push(u.await.unwrap());
    }
    assert_eq!(peak.load(SeqCst), 2, "two leases at once, never three");
    ids.sort();
    ids.dedup();
    assert_eq!(ids, vec![0, 1], "only two instances were ever made");
    let m = pool.model_snapshot(&key("tts.onnx")).unwrap();
    assert_eq!((m.counters.loads, m.instances, m.leased), (2, 2, 0));
    assert_eq!(m.max_instances, Some(2));
    assert!(m.counters.waits >= 3, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_user_waits_and_gets_the_instance_given_back() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = pool
        .get_or_load(
            key("b.onnx"),
            LoadOptions::bounded(2),
            counting_loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    let first = handle.acquire(Duration::ZERO).await.unwrap();
    let second = handle.acquire(Duration::ZERO).await.unwrap();
    let third = tokio::spawn({
        let handle = handle.clone();
        async move { handle.acquire(Duration::from_secs(10)).await.map(|l| l.id) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "the third user must wait");
    let given_back = second.id;
    drop(second);
    let got = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, given_back);
    drop(first);
    assert_eq!(calls.load(SeqCst), 2);
    let m = pool.model_snapshot(&key("b.onnx")).unwrap();
    assert_eq!((m.counters.waits, m.counters.timeouts), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_does_not_swallow_the_wakeup() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = pool
        .get_or_load(
            key("one.onnx"),
            LoadOptions::bounded(1),
            counting_loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    let held = handle.acquire(Duration::ZERO).await.unwrap();
    let waiter = |h: ModelHandle<Weights>| {
        tokio::spawn(async move { h.acquire(Duration::from_secs(10)).await.map(|l| l.id) })
    };
    let quitter = waiter(handle.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let patient = waiter(handle.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Released and abandoned at the same moment: the notification must reach `patient`.
    drop(held);
    quitter.abort();
    let got = tokio::time::timeout(Duration::from_secs(5), patient)
        .await
        .expect("the remaining waiter was woken")
        .unwrap()
        .unwrap();
    assert_eq!(got, 0);
    // And with no waiter at all, blocking and async callers still lease it.
    assert_eq!(handle.acquire_blocking(Duration::ZERO).unwrap().id, 0);
    assert_eq!(handle.acquire(Duration::ZERO).await.unwrap().id, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_mid_load_still_loads_for_everyone_else() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let slow = pool.get_or_load(
        key("slow.onnx"),
        LoadOptions::shared(),
        counting_loader(&calls, Duration::from_millis(300)),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    let handle = pool
        .get_or_load(
            key("slow.onnx"),
            LoadOptions::shared(),
            counting_loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(handle.shared().unwrap().id, 0, "the first load's model");
    assert_eq!(calls.load(SeqCst), 1);
    let m = pool.model_snapshot(&key("slow.onnx")).unwrap();
    assert_eq!(
        (m.counters.loads, m.counters.hits, m.counters.waits),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn acquire_timeout_names_the_model_and_the_wait() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = pool
        .get_or_load(
            key("busy.onnx"),
            LoadOptions::bounded(1),
            counting_loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    let _held = handle.acquire(Duration::ZERO).await.unwrap();
    let started = Instant::now();
    let err = handle
        .acquire(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(100));
    let PoolError::Timeout {
        model,
        timeout,
        waited,
        max_instances,
    } = &err
    else {
        panic!("expected a timeout, got {err}");
    };
    assert_eq!(model, &key("busy.onnx"));
    assert_eq!(*timeout, Duration::from_millis(100));
    assert!(*waited >= Duration::from_millis(100), "{waited:?}");
    assert_eq!(*max_instances, 1);
    // A node meeting it gets a retryable error: the router retries with backoff.
    let node_err = NodeError::from_error("Busy", &err);
    assert!(node_err.is_retryable(), "{node_err}");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "no instance of model busy.onnx [threads=1] became free within 100ms \
             (all 1 instances in use; waited 1"
        ),
        "{text}"
    );
    // The blocking form times out the same way.
    let err = handle
        .acquire_blocking(Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, PoolError::Timeout { .. }), "{err}");
    let m = pool.model_snapshot(&key("busy.onnx")).unwrap();
    assert_eq!((m.counters.timeouts, m.counters.waits), (2, 2));
    assert!(m.counters.wait_ms_total >= 120.0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_error_reaches_every_waiter_and_is_not_kept() {
    let pool = ModelPool::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (pool, calls, barrier) = (pool.clone(), Arc::clone(&calls), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                pool.get_or_load(key("bad.onnx"), LoadOptions::shared(), move || {
                    calls.fetch_add(1, SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    Err::<Weights, _>(Corrupt("bad.onnx".into()))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not load model bad.onnx [threads=1]: corrupt weights in bad.onnx"
        );
        // The loader's own error is there for callers that want it back.
        let source = err.load_error().unwrap();
        assert!(source.downcast_ref::<Corrupt>().is_some());
    }
    assert_eq!(calls.load(SeqCst), 1, "one failed load shared by all");
    assert!(!pool.is_loaded(&key("bad.onnx")));
    // Not cached: once the file is fixed, the next request loads it.
    let fixed = pool
        .get_or_load(
            key("bad.onnx"),
            LoadOptions::shared(),
            counting_loader(&calls, Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(fixed.shared().unwrap().id, 1);
    let m = pool.model_snapshot(&key("bad.onnx")).unwrap();
    assert_eq!((m.counters.loads, m.counters.load_failures), (1, 1));
    assert_eq!(m.counters.waits, 9);
}

/// Loads `name` (100 bytes) into `pool`, counting loads in `loads`.
fn load100(pool: &ModelPool, loads: &Arc<AtomicUsize>, name: &str) -> ModelHandle<Weights> {
    pool.get_or_load_blocking(
        key(name),
        LoadOptions::shared().with_memory_bytes(100),
        counting_loader(loads, Duration::ZERO),
    )
    .unwrap()
}

#[test]
fn over_budget_only_idle_models_go_least_recently_used_first() {
    let pool = ModelPool::new(PoolConfig {
        memory_budget: Some(250),
        idle_timeout: None,
    });
    let loads = Arc::new(AtomicUsize::new(0));
    drop(load100(&pool, &loads, "a"));
    std::thread::sleep(Duration::from_millis(2));
    drop(load100(&pool, &loads, "b"));
    std::thread::sleep(Duration::from_millis(2));
    // `a` is used again, so `b` is now the least recently used.
    drop(load100(&pool, &loads, "a"));
    assert_eq!(loads.load(SeqCst), 2);
    // A third model goes over budget (300 > 250): `b` goes, `a` stays.
    let c = load100(&pool, &loads, "c");
    assert!(pool.is_loaded(&key("a")));
    assert!(!pool.is_loaded(&key("b")));
    assert_eq!(pool.snapshot().memory_bytes, 200);
    // Models in use are never evicted, even far over budget.
    let a = load100(&pool, &loads, "a");
    let b = load100(&pool, &loads, "b");
    assert_eq!(loads.load(SeqCst), 4, "b was loaded again");
    let s = pool.snapshot();
    assert_eq!((s.memory_bytes, s.models_loaded), (300, 3));
    // Once they are given back, the next check brings the pool under budget, oldest first.
    drop(a);
    std::thread::sleep(Duration::from_millis(2));
    drop(c);
    std::thread::sleep(Duration::from_millis(2));
    drop(b);
    assert_eq!(pool.evict_idle(), 1);
    assert!(!pool.is_loaded(&key("a")), "a was the least recently used");
    let s = pool.snapshot();
    assert_eq!(
        (s.memory_bytes, s.totals.evictions, s.totals.loads),
        (200, 2, 4)
    );
    assert_eq!(s.models["b [threads=1]"].counters.loads, 2);
    assert_eq!(s.models["b [threads=1]"].counters.evictions, 1);
}

#[test]
fn preloaded_models_are_pinned_and_bounded_instances_count_against_the_budget() {
    let pool = ModelPool::new(PoolConfig {
        memory_budget: Some(0),
        idle_timeout: None,
    });
    let loads = Arc::new(AtomicUsize::new(0));
    pool.preload(
        key("pinned"),
        LoadOptions::shared().with_memory_bytes(1000),
        counting_loader(&loads, Duration::ZERO),
    )
    .unwrap();
    let handle = pool
        .get_or_load_blocking(
            key("bounded"),
            LoadOptions::bounded(3).with_memory_bytes(10),
            counting_loader(&loads, Duration::ZERO),
        )
        .unwrap();
    let leases: Vec<_> = (0..3)
        .map(|_| handle.acquire_blocking(Duration::ZERO).unwrap())
        .collect();
    let s = pool.snapshot();
    assert_eq!((s.memory_bytes, s.instances, s.leased), (1030, 4, 3));
    drop(leases);
    drop(handle);
    assert_eq!(pool.evict_idle(), 1, "only the bounded model is evictable");
    assert!(pool.is_loaded(&key("pinned")));
    assert!(pool.snapshot().models["pinned [threads=1]"].pinned);
    // An explicit unload still removes a pinned model nobody holds.
    assert!(pool.unload(&key("pinned")));
    assert_eq!(pool.snapshot().memory_bytes, 0);
}

#[test]
fn models_idle_past_the_timeout_are_evicted() {
    let pool = ModelPool::new(PoolConfig {
        memory_budget: None,
        idle_timeout: Some(Duration::from_millis(50)),
    });
    let loads = Arc::new(AtomicUsize::new(0));
    let held = load100(&pool, &loads, "held");
    drop(load100(&pool, &loads, "idle"));
    assert_eq!(pool.evict_idle(), 0, "not idle long enough yet");
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(pool.evict_idle(), 1);
    assert!(pool.is_loaded(&key("held")));
    assert!(!pool.is_loaded(&key("idle")));
    drop(held);
}

#[tokio::test]
async fn the_numbers_reach_the_process_metrics_snapshot() {
    let pool = ModelPool::default();
    pool.export_metrics("pool-test-metrics");
    let loads = Arc::new(AtomicUsize::new(0));
    let a = load100(&pool, &loads, "a");
    let _a2 = load100(&pool, &loads, "a");
    let bounded = pool
        .get_or_load(
            key("x"),
            LoadOptions::bounded(1).with_memory_bytes(7),
            counting_loader(&loads, Duration::ZERO),
        )
        .await
        .unwrap();
    let lease = bounded.acquire(Duration::ZERO).await.unwrap();
    let _ = bounded.acquire(Duration::from_millis(5)).await.unwrap_err();
    let rt = RuntimeBuilder::empty().build().unwrap();
    let snapshot = rt.metrics().snapshot();
    let p = &snapshot.pools["pool-test-metrics"];
    assert_eq!(p.totals.loads, 2);
    assert_eq!(p.totals.hits, 1);
    assert_eq!((p.totals.waits, p.totals.timeouts), (1, 1));
    assert_eq!((p.models_loaded, p.instances, p.leased), (2, 2, 1));
    assert_eq!(p.memory_bytes, 107);
    assert!(
        snapshot.pools.contains_key("models"),
        "the global pool is always listed"
    );
    let json = serde_json::to_value(&snapshot).unwrap();
    let x = &json["pools"]["pool-test-metrics"]["models"]["x [threads=1]"];
    assert_eq!(x["loads"], 1);
    assert_eq!(x["timeouts"], 1);
    assert_eq!(x["leased"], 1);
    assert_eq!(x["max_instances"], 1);
    assert_eq!(json["pools"]["pool-test-metrics"]["memory_bytes"], 107);
    drop((a, lease));
    // A dropped pool leaves the snapshot.
    drop((bounded, pool));
    let snapshot = rt.metrics().snapshot();
    assert!(!snapshot.pools.contains_key("pool-test-metrics"));
}

/// A model that is not thread-safe can still be shared, behind a mutex, when one instance is
/// enough; its state is the one instance's.
#[test]
fn a_mutex_wrapped_model_can_be_shared() {
    let pool = ModelPool::default();
    let h = pool
        .get_or_load_blocking(key("m"), LoadOptions::shared(), || {
            Ok::<_, Corrupt>(Mutex::new(Vec::<u32>::new()))
        })
        .unwrap();
    h.shared().unwrap().lock().unwrap().push(1);
    let again = pool
        .get_or_load_blocking(key("m"), LoadOptions::shared(), || {
            Ok::<_, Corrupt>(Mutex::new(Vec::<u32>::new()))
        })
        .unwrap();
    assert_eq!(*again.shared().unwrap().lock().unwrap(), vec![1]);
}
