//! The shared-model scheduler: batching, fairness between sessions, a bounded queue, withdrawn
//! requests and a model that panics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use remotemedia_core::scheduler::{BatchModel, Outcome, ScheduleError, Scheduler, SchedulerConfig};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("odd request {0}")]
struct Odd(u32);

/// The batches a model ran, in order.
type Log = Arc<Mutex<Vec<Vec<u32>>>>;

/// Doubles even numbers, refuses odd ones, panics on 999; logs each batch and takes `delay`.
struct Doubler {
    batches: Log,
    delay: Duration,
}

impl BatchModel for Doubler {
    type Request = u32;
    type Response = u32;
    type Error = Odd;

    fn run(&mut self, batch: Vec<u32>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        self.batches.lock().unwrap().push(batch.clone());
        std::thread::sleep(self.delay);
        assert!(!batch.contains(&999), "the model broke");
        for (i, n) in batch.into_iter().enumerate() {
            reply(i, if n % 2 == 0 { Ok(n * 2) } else { Err(Odd(n)) });
        }
    }
}

fn scheduler(config: SchedulerConfig, delay: Duration) -> (Scheduler<Doubler>, Log) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let model = Doubler {
        batches: Arc::clone(&batches),
        delay,
    };
    (Scheduler::new("doubler", vec![model], config), batches)
}

fn session(name: &str) -> Arc<str> {
    name.into()
}

/// The scheduler's batch count once it reaches `expected` (or after 10 s): a batch is counted
/// when `run` returns, just after its last reply, so a caller may see its results first.
async fn counted_batches<M: BatchModel>(s: &Scheduler<M>, expected: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.snapshot().batches < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.snapshot().batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_arrive_together_run_as_one_batch_with_their_own_results() {
    // The batch forms when the eighth request comes (the long wait is never reached).
    let config = SchedulerConfig {
        max_batch: 8,
        max_wait_us: 10_000_000,
        ..Default::default()
    };
    let (s, batches) = scheduler(config, Duration::ZERO);
    let calls = (0..8u32).map(|i| {
        let s = s.clone();
        async move { s.submit(&session(&format!("s{i}")), i * 2).await }
    });
    let results = futures_join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as u32 * 4);
    }
    {
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 1, "{batches:?}");
        assert_eq!(batches[0].len(), 8);
    }
    assert_eq!(counted_batches(&s, 1).await, 1);
    let snap = s.snapshot();
    assert_eq!(snap.completed, 8);
    assert_eq!(snap.batch_size.max, 8.0);
    // A model error reaches only its own request (in a batch of two).
    let config = SchedulerConfig {
        max_batch: 2,
        max_wait_us: 10_000_000,
        ..Default::default()
    };
    let (s, _) = scheduler(config, Duration::ZERO);
    let (a, b) = (session("a"), session("b"));
    let (odd, even) = tokio::join!(s.submit(&a, 3), s.submit(&b, 4));
    assert_eq!(odd.unwrap_err(), ScheduleError::Model(Odd(3)));
    assert_eq!(even.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sessions_backlog_does_not_starve_the_others() {
    let config = SchedulerConfig {
        max_batch: 2,
        max_wait_us: 0,
        ..Default::default()
    };
    let (s, batches) = scheduler(config, Duration::from_millis(20));
    // A busy first batch, so everything below queues behind it.
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.submit(&session("warm"), 0).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let long = session("long");
    let mut calls = Vec::new();
    for i in 0..10u32 {
        let (s, long) = (s.clone(), Arc::clone(&long));
        calls.push(tokio::spawn(
            async move { s.submit(&long, 100 + 2 * i).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    for i in 0..4u32 {
        let s = s.clone();
        calls.push(tokio::spawn(async move {
            s.submit(&session(&format!("short{i}")), 2 * i).await
        }));
    }
    first.await.unwrap().unwrap();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // Round-robin: each short request runs within the first three batches after the warm-up,
    // not after the long session's ten.
    let batches = batches.lock().unwrap();
    let position = |n: u32| batches.iter().position(|b| b.contains(&n)).unwrap();
    for i in 0..4u32 {
        assert!(
            position(2 * i) <= 3,
            "short{i} ran in batch {}: {batches:?}",
            position(2 * i)
        );
    }
    assert!(position(118) > 3, "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let config = SchedulerConfig {
        max_batch: 1,
        max_wait_us: 0,
        max_queue: 2,
    };
    let (s, _) = scheduler(config, Duration::from_millis(100));
    let running = tokio::spawn({
        let s = s.clone();
        async move { s.submit(&session("a"), 2).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await; // taken off the queue, running
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.submit(&session("b"), 2 * i).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = std::time::Instant::now();
    let err = s.submit(&session("c"), 4).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(
        matches!(err, ScheduleError::Overloaded { queued: 2, .. }),
        "{err}"
    );
    assert!(remotemedia_core::node::Retryable::is_retryable(&err));
    running.await.unwrap().unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
    assert_eq!(s.snapshot().refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_request_does_not_run_and_a_panic_fails_only_its_batch() {
    let config = SchedulerConfig {
        max_batch: 1,
        max_wait_us: 0,
        ..Default::default()
    };
    let (s, batches) = scheduler(config, Duration::from_millis(50));
    let running = tokio::spawn({
        let s = s.clone();
        async move { s.submit(&session("a"), 2).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Queued behind the running one, then given up on.
    let gone = tokio::time::timeout(Duration::from_millis(5), s.submit(&session("b"), 4)).await;
    assert!(gone.is_err());
    running.await.unwrap().unwrap();
    let err = s.submit(&session("c"), 999).await.unwrap_err();
    assert!(matches!(err, ScheduleError::Failed { .. }), "{err}");
    // The thread survived the panic.
    assert_eq!(s.submit(&session("c"), 6).await.unwrap(), 12);
    let batches = batches.lock().unwrap();
    assert!(!batches.iter().any(|b| b.contains(&4)), "{batches:?}");
    assert_eq!(s.snapshot().abandoned, 1);
}

/// Awaits every future, in order (the core has no `futures` dependency).
/// Sleeps its request's milliseconds, shortest first, replying to each as it ends: like a
/// decoder whose rows leave the batch when their text ends.
struct Steps;

impl BatchModel for Steps {
    type Request = u64;
    type Response = ();
    type Error = Odd;

    fn run(&mut self, batch: Vec<u64>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i]);
        let mut slept = 0;
        for i in order {
            std::thread::sleep(Duration::from_millis(batch[i] - slept));
            slept = batch[i];
            reply(i, Ok(()));
        }
    }
}

/// A 2 s request does not hold back the five short ones batched with it: each gets its result
/// when its own work ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_does_not_delay_the_short_ones_in_its_batch() {
    let config = SchedulerConfig {
        max_batch: 6,
        max_wait_us: 10_000_000,
        ..Default::default()
    };
    let s = Scheduler::new("steps", vec![Steps], config);
    let started = std::time::Instant::now();
    let calls = [2_000u64, 10, 20, 30, 40, 50]
        .into_iter()
        .enumerate()
        .map(|(i, ms)| {
            let s = s.clone();
            async move {
                s.submit(&session(&format!("s{i}")), ms).await.unwrap();
                started.elapsed()
            }
        });
    let took = futures_join_all(calls).await;
    assert_eq!(counted_batches(&s, 1).await, 1, "one batch");
    assert!(took[0] >= Duration::from_secs(2));
    for t in &took[1..] {
        assert!(
            *t < Duration::from_millis(1_000),
            "short requests took {took:?}"
        );
    }
}

async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
