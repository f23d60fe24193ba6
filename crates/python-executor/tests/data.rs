//! Data through a Python worker: every kind both ways, zero-copy audio, ports, ordering, and
//! output that leaves between inputs.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use remotemedia_core::{Control, ImageFrame, RuntimeData, TextFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_crosses_both_ways_intact() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", "{}")).await;
    let inputs = [
        RuntimeData::Text(TextFrame {
            text: "héllo wörld".into(),
            is_final: false,
            span: Some((Duration::from_millis(1500), Duration::from_millis(2750))),
        }),
        RuntimeData::json(serde_json::json!({"a": [1, 2.5, null], "b": {"c": "d"}})),
        RuntimeData::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        RuntimeData::Image(ImageFrame {
            width: 2,
            height: 1,
            format: "rgb8".into(),
            data: Bytes::from_static(&[1, 2, 3, 4, 5, 6]),
        }),
    ];
    for (i, data) in inputs.iter().enumerate() {
        s.send_to("py", data.clone()).await.unwrap();
        let p = next_ok(&mut s).await;
        assert_eq!(&p.data, data, "input {i}");
    }
    // Audio: the node reports how it saw the samples, then echoes them.
    let samples: Vec<f32> = (0..4800).map(|i| (i as f32 * 0.01).sin()).collect();
    let audio = RuntimeData::audio(samples, 48_000, 2);
    s.send_to("py", audio.clone()).await.unwrap();
    let seen = next_ok(&mut s).await;
    assert_eq!(
        json(&seen),
        &serde_json::json!({"owndata": false, "writeable": false, "in_shared_memory": true}),
        "audio must reach Python as a read-only view of shared memory"
    );
    assert_eq!(next_ok(&mut s).await.data, audio);
    // Large audio comes back without a copy, in the worker's shared-memory sample: it stays
    // intact after the worker is gone (checked below, after close).
    let big: Vec<f32> = (0..65_536).map(|i| (i as f32 * 0.001).cos()).collect();
    let big = RuntimeData::audio(big, 16_000, 1);
    s.send_to("py", big.clone()).await.unwrap();
    next_ok(&mut s).await;
    let big_back = next_ok(&mut s).await;
    assert_eq!(big_back.data, big);
    // A node may emit control, and a second port.
    s.send_to("py", RuntimeData::text("cancel")).await.unwrap();
    assert_eq!(
        next_ok(&mut s).await.data,
        RuntimeData::Control(Control::Cancel {
            reason: "probe says stop".into()
        })
    );
    s.send_to("py", RuntimeData::text("side")).await.unwrap();
    let a = next_ok(&mut s).await;
    let b = next_ok(&mut s).await;
    assert_eq!((&*a.port, text(&a)), ("side", "to the side"));
    assert_eq!((&*b.port, text(&b)), ("out", "to the front"));
    let (rest, _) = s.close().await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(text(&rest[0]), "flushed");
    drop(rt);
    assert_eq!(
        big_back.data, big,
        "held audio outlives its worker and link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_stream_through_the_window_in_order_with_their_timestamps() {
    let rt = runtime();
    let s = open(&rt, &one_node("probe:Probe", "{}")).await;
    let (tx, mut rx) = s.split();
    let n = 500u64;
    let feed = async move {
        for i in 0..n {
            let data = if i % 50 == 0 {
                RuntimeData::text("many:3")
            } else {
                RuntimeData::text(format!("{i}"))
            };
            tx.send_at(data, Duration::from_millis(i * 20))
                .await
                .unwrap();
        }
    };
    let collect = async {
        let mut out = Vec::new();
        while let Some(p) = rx.recv().await {
            out.push(p.unwrap_or_else(|f| panic!("{f}")));
        }
        out
    };
    let ((), out) = tokio::join!(feed, collect);
    rx.finish().await.unwrap();
    let mut expected = Vec::new();
    for i in 0..n {
        let at = Duration::from_millis(i * 20);
        if i % 50 == 0 {
            expected.extend(["0", "1", "2"].map(|t| (t.to_string(), at)));
        } else {
            expected.push((format!("{i}"), at));
        }
    }
    expected.push(("flushed".to_string(), Duration::from_millis((n - 1) * 20)));
    let got: Vec<(String, Duration)> = out
        .iter()
        .map(|p| (text(p).to_string(), p.timestamp))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_finished_between_inputs_leaves_at_once() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("SlowUpper", "{delay_ms: 300}")).await;
    let t0 = Instant::now();
    s.send(RuntimeData::text("late but not stuck"))
        .await
        .unwrap();
    // No further input and the input stays open: the output must still come.
    let p = next_ok(&mut s).await;
    assert_eq!(text(&p), "LATE BUT NOT STUCK");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_keep_zero_copy_views_beyond_the_shared_pool() {
    // 200 frames kept by the node: more than the worker may borrow, so later ones are copied
    // and nothing stalls; the sums prove every frame kept its samples.
    let rt = runtime();
    let s = open(&rt, &one_node("probe:Buffered", "{}")).await;
    for i in 0..200 {
        let v = vec![i as f32; 160];
        s.send(RuntimeData::audio(v, 16_000, 1)).await.unwrap();
    }
    let (out, _) = s.close().await.unwrap();
    let expected: f64 = (0..200).map(|i| 160.0 * i as f64).sum();
    assert_eq!(out.len(), 1);
    assert_eq!(
        json(&out[0]),
        &serde_json::json!({"frames": 200, "sum": expected})
    );
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_uses_almost_no_cpu() {
    let rt = runtime();
    let mut s = open(&rt, &one_node("probe:Probe", "{}")).await;
    s.send(RuntimeData::text("pid")).await.unwrap();
    let pid = json(&next_ok(&mut s).await)["pid"].as_i64().unwrap();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // 2 s is 200 ticks at 100 Hz: a polling worker would use most of them; heartbeats use ~0.
    assert!(used <= 10, "idle worker used {used} ticks in 2 s");
    s.close().await.unwrap();
}

/// A node whose `process` is a plain generator: inputs keep their order, a rejected input costs
/// only itself, flush still runs at the end, and a fatal error ends the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_generator_process_keeps_order_errors_and_flush() {
    let rt = runtime();
    let s = open(&rt, &one_node("probe:SyncProbe", "{}")).await;
    let (tx, mut rx) = s.split();
    let input = |i: usize| match i % 50 {
        7 => "reject".to_string(),
        13 => "many:3".to_string(),
        _ => format!("t{i}"),
    };
    let feed = async move {
        for i in 0..200 {
            tx.send(RuntimeData::text(input(i))).await.unwrap();
        }
    };
    let collect = async {
        let (mut got, mut rejected) = (Vec::new(), 0);
        while let Some(p) = rx.recv().await {
            match p {
                Ok(p) => got.push(text(&p).to_string()),
                Err(f) => {
                    assert!(!f.fatal && f.message.contains("rejected now"), "{f}");
                    rejected += 1;
                }
            }
        }
        (got, rejected)
    };
    let ((), (got, rejected)) = tokio::join!(feed, collect);
    rx.finish().await.unwrap();
    let mut expected: Vec<String> = Vec::new();
    for i in 0..200 {
        match i % 50 {
            7 => {}
            13 => expected.extend(["0", "1", "2"].map(String::from)),
            _ => expected.push(input(i)),
        }
    }
    expected.push("flushed".into());
    assert_eq!(got, expected);
    assert_eq!(rejected, 4);

    // A fatal error as a fresh worker's first answer: the worker stays until it is closed, so
    // the error frame is read (it used to exit at once and, about one time in three, take the
    // frame with it: the session was told of a crash and a restart instead).
    let mut s = open(&rt, &one_node("probe:SyncProbe", "{}")).await;
    s.send(RuntimeData::text("fatal")).await.unwrap();
    let f = next(&mut s).await.unwrap_err();
    assert!(f.fatal && f.message.contains("fatal now"), "{f}");
}
