//! Capacity: a pipeline at its `max_streams`, a shared model past its queue-delay target,
//! outputs lagging their inputs, or one more stream taking the CPU past its budget: new streams
//! are refused at once with RESOURCE_EXHAUSTED, `/readyz` says "full" meanwhile, and both
//! recover when the load goes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use remotemedia_core::scheduler::{BatchModel, Outcome, Scheduler, SchedulerConfig};
use tonic::{Code, Request};

/// Model schedulers are process-wide: the tests here take turns so one's load is not the
/// other's.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens `pipeline`; the ready message, or the status it was refused with and how long that
/// took.
async fn try_open(
    server: &remotemedia_server::RunningServer,
    pipeline: &str,
) -> (Result<Stream, tonic::Status>, Duration) {
    let mut c = client(server).await;
    let started = Instant::now();
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open(pipeline)).await.unwrap();
    let first = next(&mut s.rx).await;
    let took = started.elapsed();
    match first {
        Ok(Some(Msg::Ready(_))) => (Ok(s), took),
        Ok(other) => panic!("{other:?}"),
        Err(e) => (Err(e), took),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_at_its_max_streams_refuses_at_once_and_readiness_follows() {
    let _turn = TURNS.lock().await;
    let server = serve(|c| {
        c.manifests.retain(|name, _| name == "gain");
        c.capacity.max_streams.insert("gain".into(), 2);
    })
    .await;
    wait_ready(&server).await;
    let http = server.http_addr().unwrap();
    assert_eq!(get(http, "/readyz").await.0, 200);

    let (first, _) = try_open(&server, "gain").await;
    let (second, _) = try_open(&server, "gain").await;
    let (first, second) = (first.unwrap(), second.unwrap());
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("full:"), "{body}");

    let (third, took) = try_open(&server, "gain").await;
    let err = third.err().expect("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("capacity of 2 streams"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_millis(100), "refused after {took:?}");

    // One leaves: ready again, and the next stream is admitted.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(http, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (again, _) = try_open(&server, "gain").await;
    assert!(again.is_ok());
    drop((second, again));
    assert_no_leaks(&server).await;
}

/// Sleeps `delay` per batch of one.
struct Slow(Duration);

#[derive(Clone, Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl BatchModel for Slow {
    type Request = ();
    type Response = ();
    type Error = Never;

    fn run(&mut self, batch: Vec<()>, reply: &mut dyn FnMut(usize, Outcome<Self>)) {
        std::thread::sleep(self.0);
        for i in 0..batch.len() {
            reply(i, Ok(()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_past_its_queue_delay_target_refuses_new_streams_until_it_drains() {
    let _turn = TURNS.lock().await;
    let server = serve(|c| c.capacity.max_queue_delay_ms = 300).await;
    wait_ready(&server).await;
    let http = server.http_addr().unwrap();

    // A shared model with ~1 s of queued work: 100 ms per request, ten waiting.
    let config = SchedulerConfig {
        max_batch: 1,
        max_wait_us: 0,
        max_queue: 64,
    };
    let slow = Scheduler::new("test-slow", vec![Slow(Duration::from_millis(100))], config);
    let stream: Arc<str> = "load".into();
    let load: Vec<_> = (0..11)
        .map(|_| {
            let (slow, stream) = (slow.clone(), Arc::clone(&stream));
            tokio::spawn(async move { slow.submit(&stream, ()).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.snapshot().batches == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (refused, took) = try_open(&server, "gain").await;
    let err = refused
        .err()
        .expect("refused while the model is past its target");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("test-slow"), "{}", err.message());
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("test-slow"), "{body}");

    for l in load {
        l.await.unwrap().unwrap();
    }
    assert_eq!(get(http, "/readyz").await.0, 200);
    let (admitted, _) = try_open(&server, "gain").await;
    assert!(admitted.is_ok());
    drop(admitted);
    drop(slow);
    assert_no_leaks(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_falling_behind_their_inputs_close_the_door_until_they_catch_up() {
    let _turn = TURNS.lock().await;
    let server = serve(|c| {
        c.capacity.max_lag_ms = 100;
        c.capacity.max_queue_delay_ms = 0;
    })
    .await;
    wait_ready(&server).await;
    let http = server.http_addr().unwrap();
    let (busy, _) = try_open(&server, "picky").await;
    let mut busy = busy.unwrap();
    // Outputs that leave 300 ms after their inputs: the pipelines are behind.
    for _ in 0..2 {
        busy.tx.send(text("", "slow")).await.unwrap();
        assert!(matches!(next(&mut busy.rx).await, Ok(Some(Msg::Output(_)))));
    }
    let (refused, took) = try_open(&server, "gain").await;
    let err = refused.err().expect("refused while outputs lag");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_lag_ms"), "{}", err.message());
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    // Quick outputs bring the average down; silence forgets it after 2 s.
    for _ in 0..20 {
        busy.tx.send(text("", "quick")).await.unwrap();
        assert!(matches!(next(&mut busy.rx).await, Ok(Some(Msg::Output(_)))));
    }
    assert_eq!(get(http, "/readyz").await.0, 200);
    let (admitted, _) = try_open(&server, "gain").await;
    assert!(admitted.is_ok());
    drop((busy, admitted));
    assert_no_leaks(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_would_take_the_cpu_past_its_budget_is_refused() {
    let _turn = TURNS.lock().await;
    // A budget of a thousandth of the cores, which the busy process below is far past.
    let server = serve(|c| {
        c.capacity.max_cpu = 0.001;
        c.capacity.max_lag_ms = 0;
        c.capacity.max_queue_delay_ms = 0;
    })
    .await;
    wait_ready(&server).await;
    let http = server.http_addr().unwrap();
    let mut first = Vec::new();
    for _ in 0..4 {
        let (s, _) = try_open(&server, "gain").await;
        first.push(s.expect("nothing measured yet: admitted"));
    }
    // The process works (the CPU counted is the whole process's) while the sessions grow to
    // their full cost, 8 s after they opened; four grown sessions make an estimate.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spin = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let t = Instant::now();
    let refused = loop {
        let (second, took) = try_open(&server, "gain").await;
        match second {
            Err(e) => break (e, took),
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(30), "never refused"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spin.join().unwrap();
    let (err, took) = refused;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("capacity.max_cpu"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("sessions open: 4,"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("capacity.max_cpu"), "{body}");
    let (_, metrics) = get(http, "/metrics").await;
    let per_session = metrics
        .lines()
        .find_map(|l| l.strip_prefix("remotemedia_cpu_per_session_millicores "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(per_session.is_some_and(|m| m > 0), "{metrics}");
    // With the sessions gone there is nothing to predict from: admitted again.
    drop(first);
    let t = Instant::now();
    while get(http, "/readyz").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "still full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (admitted, _) = try_open(&server, "gain").await;
    assert!(admitted.is_ok());
    drop(admitted);
    assert_no_leaks(&server).await;
}
