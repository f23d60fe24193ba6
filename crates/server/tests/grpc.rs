//! The pipeline service over real loopback gRPC: sessions, auth, limits, versions and bad
//! input, each answered with the status a client expects, and nothing left behind.

mod common;

use std::time::Duration;

use common::*;
use remotemedia_server::proto::{self, session_control::Action};
use tonic::{Code, Request};

fn pcm(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.05).sin() * 0.3).collect()
}

#[tokio::test]
async fn a_stream_opens_a_session_streams_outputs_and_closes() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    let Some(Msg::Ready(ready)) = next(&mut s.rx).await.unwrap() else {
        panic!("ready first")
    };
    assert!(!ready.session_id.is_empty());
    assert_eq!(ready.protocol_version, "1.0");
    assert_eq!(ready.server_version, remotemedia_server::SERVER_VERSION);
    assert_eq!(ready.inputs[0].name, "gain.in");
    assert!(ready.limits.unwrap().max_message_bytes > 0);

    let sent: Vec<Vec<f32>> = (0..20).map(|i| pcm(320 + i)).collect();
    for (i, samples) in sent.iter().enumerate() {
        // Both forms of samples: floats, and little-endian bytes.
        let frame = if i % 2 == 0 {
            audio(samples.clone(), 16_000)
        } else {
            audio_le(samples, 16_000)
        };
        s.tx.send(frame).await.unwrap();
    }
    s.tx.send(control(Action::Metrics)).await.unwrap();
    s.tx.send(control(Action::Close)).await.unwrap();
    let (mut got, mut metrics, mut closed) = (Vec::new(), None, None);
    while let Some(m) = next(&mut s.rx).await.unwrap() {
        match m {
            Msg::Output(o) => {
                assert_eq!((o.node.as_str(), o.port.as_str()), ("gain", "out"));
                assert_eq!(o.seq, got.len() as u64);
                let Some(proto::data::Kind::Audio(a)) = o.data.unwrap().kind else {
                    panic!("audio out")
                };
                got.push(a.samples);
            }
            Msg::Metrics(m) => metrics = Some(m.json),
            Msg::Closed(c) => closed = Some(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got, sent,
        "0 dB gain returns every frame unchanged, in order"
    );
    let metrics: serde_json::Value = serde_json::from_str(&metrics.expect("metrics")).unwrap();
    assert!(metrics["nodes"]["gain"]["processed"].as_u64().is_some());
    let closed = closed.expect("closed last");
    assert_eq!(
        (closed.reason.as_str(), closed.inputs, closed.outputs),
        ("closed", 20, 20)
    );
    assert_no_leaks(&server).await;
    let text = server.metrics_text();
    assert!(
        text.contains("remotemedia_node_processed_total{type=\"AudioGain\"} 20"),
        "{text}"
    );
    assert!(text.contains("remotemedia_node_latency_seconds_count{type=\"AudioGain\"} 20"));
    server.shutdown().await;
}

#[tokio::test]
async fn text_goes_to_a_named_input_and_unary_execute_returns_everything() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "upper").await;
    s.tx.send(text("shout.in", "hello")).await.unwrap();
    let Some(Msg::Output(o)) = next(&mut s.rx).await.unwrap() else {
        panic!("output")
    };
    let Some(proto::data::Kind::Text(t)) = o.data.unwrap().kind else {
        panic!("text")
    };
    assert_eq!(t.text, "HELLO");
    drop(s.tx); // half-close ends the input like CLOSE
    assert!(matches!(
        next(&mut s.rx).await.unwrap(),
        Some(Msg::Closed(_))
    ));

    let inputs = ["a", "b", "c"].map(|w| match text("", w).message {
        Some(proto::stream_request::Message::Data(d)) => d,
        _ => unreachable!(),
    });
    let resp = c
        .execute_pipeline(proto::ExecuteRequest {
            pipeline: Some(proto::execute_request::Pipeline::PipelineName(
                "upper".into(),
            )),
            protocol_version: "1.0".into(),
            inputs: inputs.to_vec(),
            audio_out_f32le: false,
        })
        .await
        .unwrap()
        .into_inner();
    let words: Vec<String> = resp
        .outputs
        .into_iter()
        .map(|o| match o.data.unwrap().kind {
            Some(proto::data::Kind::Text(t)) => t.text,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(words, ["A", "B", "C"]);
    assert!(resp.errors.is_empty());
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn tokens_are_checked_on_every_call_including_streams() {
    let server = serve(|c| c.auth.tokens = vec![TOKEN.into()]).await;
    let mut c = client(&server).await;

    // Streaming without a token, with a wrong one, then with the right one.
    let err = stream(&mut c, Request::new).await.err().expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = |r| {
        let mut r = Request::new(r);
        r.metadata_mut().insert(
            "authorization",
            "Bearer test-token-0123456788".parse().unwrap(),
        );
        r
    };
    let err = stream(&mut c, wrong).await.err().expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut s = stream(&mut c, authed).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    assert!(matches!(
        next(&mut s.rx).await.unwrap(),
        Some(Msg::Ready(_))
    ));

    // Unary calls too.
    let err = c.list_nodes(proto::ListNodesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .get_version(proto::VersionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Each refusal is counted.
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_auth_failures_total{transport=\"grpc\"} 4")
    );
    let nodes = c
        .list_nodes(authed(proto::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        nodes
            .nodes
            .iter()
            .any(|n| n.name == "AudioGain" && n.executors == ["native"])
    );
    let pipelines = c
        .list_pipelines(authed(proto::ListPipelinesRequest {}))
        .await
        .unwrap();
    let names: Vec<String> = pipelines
        .into_inner()
        .pipelines
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["gain", "picky", "upper", "vad"]);

    // Health checks need no token (load balancers and orchestrators call them).
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: remotemedia_server::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serving after warm-up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn one_session_over_the_limit_gets_resource_exhausted_until_one_ends() {
    let server = serve(|c| c.limits.max_sessions = 2).await;
    let mut c = client(&server).await;
    let mut open_one = async || {
        let mut s = stream(&mut c, Request::new).await.unwrap();
        s.tx.send(open("gain")).await.unwrap();
        let first = next(&mut s.rx).await;
        (s, first)
    };
    let (a, first) = open_one().await;
    assert!(matches!(first.unwrap(), Some(Msg::Ready(_))));
    let (_b, first) = open_one().await;
    assert!(matches!(first.unwrap(), Some(Msg::Ready(_))));
    let (_c, first) = open_one().await;
    let err = first.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("2 concurrent sessions"),
        "{}",
        err.message()
    );

    a.tx.send(control(Action::Close)).await.unwrap();
    let mut a = a;
    while let Ok(Some(_)) = next(&mut a.rx).await {}
    let (_d, first) = open_one().await;
    assert!(
        matches!(first.unwrap(), Some(Msg::Ready(_))),
        "a slot is free again"
    );
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_grpc_errors_total{code=\"RESOURCE_EXHAUSTED\"} 1")
    );
}

#[tokio::test]
async fn versions_are_negotiated_and_a_different_major_is_refused() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let v = |s: &str| proto::VersionRequest {
        protocol_version: s.into(),
    };
    let ok = c.get_version(v("1.7")).await.unwrap().into_inner();
    assert_eq!((ok.protocol_version.as_str(), ok.compatible), ("1.0", true));
    let err = c.get_version(v("2.0")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("2.0") && err.message().contains("1.0"),
        "{}",
        err.message()
    );
    let err = c.get_version(v("one")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut s = stream(&mut c, Request::new).await.unwrap();
    let name = proto::open_session::Pipeline::PipelineName("gain".into());
    s.tx.send(open_with(name, "2.1")).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn client_manifests_follow_the_server_policy() {
    let server = serve(|c| {
        c.client_manifests.allow = true;
        c.limits.max_nodes = 2;
    })
    .await;
    let mut c = client(&server).await;
    // A bad manifest: the validation message with its line and column.
    let bad = "version: v1\nnodes:\n  - {id: g, type: AudioGain, params: {gain_db: loud}}\n";
    let err = manifest_status(&mut c, bad).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("manifest:3:"), "{}", err.message());
    assert!(err.message().contains("gain_db"), "{}", err.message());
    // An unknown type lists the known ones.
    let err = manifest_status(
        &mut c,
        "version: v1\nnodes:\n  - {id: g, type: AudioGian}\n",
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("AudioGain"), "{}", err.message());
    // Python code from clients is off by default.
    let err = manifest_status(&mut c, "version: v1\nnodes:\n  - {id: e, type: Echo}\n").await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("Python"), "{}", err.message());
    // Too many nodes.
    let three = "version: v1\nnodes:\n  - {id: a, type: AudioGain}\n  - {id: b, type: AudioGain}\n  - {id: c, type: AudioGain}\nconnections:\n  - {from: a, to: b}\n  - {from: b, to: c}\n";
    let err = manifest_status(&mut c, three).await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("at most 2"), "{}", err.message());
    // A good one opens.
    assert_eq!(manifest_status(&mut c, GAIN).await.code(), Code::Ok);
    // Unknown pipeline names list the configured ones.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("nope")).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("gain, picky, upper, vad"),
        "{}",
        err.message()
    );
    assert_no_leaks(&server).await;

    // With client manifests off, even a good one is refused.
    let closed = serve(|_| {}).await;
    let mut c = client(&closed).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    let m = proto::open_session::Pipeline::Manifest(GAIN.into());
    s.tx.send(open_with(m, "1.0")).await.unwrap();
    assert_eq!(status_of(&mut s.rx).await.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn protocol_violations_get_their_status_and_the_session_is_released() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    // Data before open.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(audio(pcm(320), 16_000)).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("first message"), "{}", err.message());
    // A second open.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("already open"), "{}", err.message());
    // A frame for a node that is not an input.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("vad")).await.unwrap();
    s.tx.send(text("nosuch", "x")).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nosuch"), "{}", err.message());
    // Data no input takes, and audio that is not audio.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    s.tx.send(text("", "words")).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("gain.in takes audio"),
        "{}",
        err.message()
    );
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    s.tx.send(audio(vec![0.0; 10], 0)).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sample_rate"), "{}", err.message());
    // Bytes that are not whole floats.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    let mut odd = audio_le(&[0.5; 4], 16_000);
    if let Some(proto::stream_request::Message::Data(d)) = &mut odd.message
        && let Some(proto::data::Kind::Audio(a)) = d.data.as_mut().and_then(|d| d.kind.as_mut())
    {
        a.samples_f32le.pop();
    }
    s.tx.send(odd).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("4-byte floats"), "{}", err.message());
    // An empty message.
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("gain")).await.unwrap();
    s.tx.send(proto::StreamRequest { message: None })
        .await
        .unwrap();
    assert_eq!(status_of(&mut s.rx).await.code(), Code::InvalidArgument);
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn limits_on_size_rate_real_time_idle_and_duration_are_enforced() {
    let server = serve(|c| {
        c.limits.max_message_bytes = 64 * 1024;
        c.limits.max_frames_per_second = 200;
        c.limits.max_realtime_factor = 2.0;
        c.limits.realtime_burst_ms = 500;
        c.limits.idle_timeout_ms = 300;
    })
    .await;
    let mut c = client(&server).await;
    // A message over the size limit.
    let mut s = opened(&mut c, "gain").await;
    s.tx.send(audio(pcm(32_000), 16_000)).await.unwrap();
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // A unary request over the size limit gets the same code.
    let frame = match audio(pcm(32_000), 16_000).message {
        Some(proto::stream_request::Message::Data(d)) => d,
        _ => unreachable!(),
    };
    let err = c
        .execute_pipeline(proto::ExecuteRequest {
            pipeline: Some(proto::execute_request::Pipeline::PipelineName(
                "gain".into(),
            )),
            protocol_version: "1.0".into(),
            inputs: vec![frame],
            audio_out_f32le: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // A flood of tiny frames (1 ms each: under the real-time limit, over the rate).
    let mut s = opened(&mut c, "gain").await;
    let err = refused_after(&mut s, 2_000, || audio(pcm(16), 16_000)).await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("messages per second"),
        "{}",
        err.message()
    );
    // Audio much faster than real time.
    let mut s = opened(&mut c, "gain").await;
    let err = refused_after(&mut s, 50, || audio(pcm(1_600), 16_000)).await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("real time"), "{}", err.message());
    // Silence from the client.
    let mut s = opened(&mut c, "gain").await;
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.message().contains("idle"), "{}", err.message());
    assert_no_leaks(&server).await;

    // A session that outlives its maximum duration, though the client keeps talking.
    let server = serve(|c| c.limits.max_duration_ms = 300).await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "gain").await;
    let talk = async {
        for _ in 0..100 {
            if s.tx.send(audio(pcm(320), 16_000)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let read = async {
        loop {
            match next(&mut s.rx).await {
                Err(e) => return e,
                Ok(Some(Msg::Output(_))) => {}
                other => panic!("{other:?}"),
            }
        }
    };
    let (_, err) = tokio::join!(talk, read);
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("maximum duration"),
        "{}",
        err.message()
    );
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn a_client_may_ask_for_tighter_limits_but_not_looser() {
    let server = serve(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let mut c = client(&server).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    let mut req = open("gain");
    if let Some(proto::stream_request::Message::Open(o)) = &mut req.message {
        o.requested_limits = Some(proto::Limits {
            max_message_bytes: 1 << 30,
            idle_timeout_ms: 1_000,
            ..Default::default()
        });
    }
    s.tx.send(req).await.unwrap();
    let Some(Msg::Ready(r)) = next(&mut s.rx).await.unwrap() else {
        panic!()
    };
    let l = r.limits.unwrap();
    assert_eq!((l.max_message_bytes, l.idle_timeout_ms), (64 * 1024, 1_000));
}

#[tokio::test]
async fn clients_that_vanish_or_cancel_leave_nothing_behind() {
    let server = serve(|_| {}).await;
    for round in 0..6 {
        let mut c = client(&server).await;
        let s = opened(&mut c, "vad").await;
        for _ in 0..5 {
            s.tx.send(audio(pcm(960), 48_000)).await.unwrap();
        }
        match round % 3 {
            0 => drop(s),    // the whole call goes away
            1 => drop(s.rx), // stops reading: the call is cancelled
            _ => {
                drop(c); // the connection closes under a live stream
                drop(s);
            }
        }
    }
    assert_no_leaks(&server).await;
    // The server still serves.
    let mut c = client(&server).await;
    opened(&mut c, "gain").await;
}

#[tokio::test]
async fn shutdown_ends_live_sessions_with_unavailable() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "gain").await;
    let stopping = tokio::spawn(server.shutdown());
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
}

/// The gRPC health status of the pipeline service.
async fn health_of(server: &remotemedia_server::RunningServer) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: remotemedia_server::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn a_drain_refuses_new_sessions_and_lets_open_ones_finish() {
    let server = std::sync::Arc::new(serve(|_| {}).await);
    wait_ready(&server).await;
    let http = server.http_addr().unwrap();
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "upper").await;
    let draining = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move { server.drain(Duration::from_secs(30)).await })
    };
    // At once: not ready, not serving, new sessions refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(http, "/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "readyz still 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(health_of(&server).await, not_serving);
    let mut late = stream(&mut c, Request::new).await.unwrap();
    late.tx.send(open("upper")).await.unwrap();
    let refused = status_of(&mut late.rx).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("draining"), "{refused:?}");
    // The open session still works, and ends as its client ends it.
    s.tx.send(text("shout.in", "still here")).await.unwrap();
    let Some(Msg::Output(o)) = next(&mut s.rx).await.unwrap() else {
        panic!("output")
    };
    assert!(
        matches!(o.data.unwrap().kind, Some(proto::data::Kind::Text(t)) if t.text == "STILL HERE")
    );
    assert!(
        !draining.is_finished(),
        "the drain ended with a session open"
    );
    drop(s.tx);
    assert!(matches!(
        next(&mut s.rx).await.unwrap(),
        Some(Msg::Closed(_))
    ));
    let drained = tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .expect("the drain ends when the last session does")
        .unwrap();
    assert!(drained);
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.shutdown().await;
}

/// With no session open the drain still lasts `notice_ms`, so that a load balancer sees the
/// server not ready before it stops: a stream that arrives meanwhile is refused, not cut.
#[tokio::test]
async fn an_idle_server_drains_for_its_notice_refusing_new_streams() {
    let server = std::sync::Arc::new(serve(|c| c.shutdown.notice_ms = 400).await);
    wait_ready(&server).await;
    let mut c = client(&server).await;
    let started = tokio::time::Instant::now();
    let draining = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move { server.drain(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut late = stream(&mut c, Request::new).await.unwrap();
    late.tx.send(open("upper")).await.unwrap();
    assert_eq!(status_of(&mut late.rx).await.code(), Code::Unavailable);
    assert!(draining.await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(400));
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_drain_ends_the_sessions_left_at_its_timeout_with_unavailable() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "gain").await;
    let started = tokio::time::Instant::now();
    assert!(
        !server.drain(Duration::from_millis(300)).await,
        "a session was open"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stopping = tokio::spawn(server.shutdown());
    let err = status_of(&mut s.rx).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_still_meets_the_duration_limit() {
    let server = serve(|c| {
        c.limits.max_duration_ms = 500;
        c.limits.max_realtime_factor = 0.0;
        c.limits.max_frames_per_second = 0;
    })
    .await;
    let mut c = client(&server).await;
    let s = opened(&mut c, "gain").await;
    // Far more output than the outbox, the HTTP/2 window and the edges hold, never read.
    let tx = s.tx.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..5_000 {
            if tx.send(audio(pcm(4_000), 16_000)).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_sessions_active 1\n")
    );
    assert_no_leaks(&server).await; // gone once the 500 ms are up, though nobody reads
    writer.abort();
    drop(s);
}

#[tokio::test]
async fn node_failures_arrive_as_typed_errors_and_a_fatal_one_closes_the_session() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "picky").await;
    for word in ["fine", "bad", "still fine", "boom"] {
        s.tx.send(text("", word)).await.unwrap();
    }
    let mut got = Vec::new();
    while let Some(m) = next(&mut s.rx).await.expect("the call itself succeeds") {
        got.push(match m {
            Msg::Output(o) => match o.data.unwrap().kind {
                Some(proto::data::Kind::Text(t)) => format!("output {}", t.text),
                other => panic!("{other:?}"),
            },
            Msg::Error(e) => format!(
                "error {} {} fatal={}: {}",
                e.node, e.node_type, e.fatal, e.message
            ),
            Msg::Closed(c) => format!("closed {}", c.reason),
            other => panic!("{other:?}"),
        });
    }
    // Outputs keep their order; failures travel beside them, so only the end is ordered.
    assert_eq!(got.last().unwrap(), "closed failed");
    let mut rest = got[..got.len() - 1].to_vec();
    rest.sort();
    assert_eq!(
        rest,
        [
            "error picky Picky fatal=false: cannot take `bad`",
            "error picky Picky fatal=true: `boom` breaks me",
            "output fine",
            "output still fine",
        ]
    );
    assert_no_leaks(&server).await;
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_sessions_failed_total 1\n")
    );
}

#[tokio::test]
async fn output_audio_comes_as_bytes_when_the_client_asks() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    let mut req = open("gain");
    if let Some(proto::stream_request::Message::Open(o)) = &mut req.message {
        o.audio_out_f32le = true;
    }
    s.tx.send(req).await.unwrap();
    assert!(matches!(
        next(&mut s.rx).await.unwrap(),
        Some(Msg::Ready(_))
    ));
    let sent = pcm(480);
    s.tx.send(audio(sent.clone(), 16_000)).await.unwrap();
    let Some(Msg::Output(o)) = next(&mut s.rx).await.unwrap() else {
        panic!()
    };
    let Some(proto::data::Kind::Audio(a)) = o.data.unwrap().kind else {
        panic!()
    };
    assert!(a.samples.is_empty());
    let got: Vec<f32> = a
        .samples_f32le
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, sent);
}

/// A client that keeps to real time from the moment it sends `open` is never refused as too
/// fast, however long the session takes to start: the audio it sent meanwhile is read in one
/// go when the pipeline is up, and the real-time budget counts from the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_sent_at_real_time_while_the_session_starts_is_within_the_budget() {
    let py = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py");
    let server = serve_with(runtime_with_python_path(&py), |c| {
        c.limits.max_realtime_factor = 1.5;
        c.limits.realtime_burst_ms = 500;
        c.manifests.insert(
            "slow".into(),
            "version: v1\nnodes:\n  - {id: slow, type: \"slow_start:SlowStart\", params: {seconds: 2}}\n"
                .into(),
        );
    })
    .await;
    let mut c = client(&server).await;
    let mut s = stream(&mut c, Request::new).await.unwrap();
    s.tx.send(open("slow")).await.unwrap();
    let tx = s.tx.clone();
    const FRAMES: usize = 150; // 3 s, two of them before the session is up
    let feed = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for k in 0..FRAMES {
            tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
            tx.send(audio(vec![0.1; 320], 16_000)).await.unwrap();
        }
        tx.send(control(Action::Close)).await.unwrap();
    });
    let mut outputs = 0;
    loop {
        match next(&mut s.rx).await {
            Ok(Some(Msg::Output(_))) => outputs += 1,
            Ok(Some(Msg::Closed(_)) | None) => break,
            Ok(Some(Msg::Error(e))) => panic!("{e:?}"),
            Ok(Some(_)) => {}
            Err(status) => panic!("refused after {outputs} frames: {status:?}"),
        }
    }
    feed.await.unwrap();
    assert_eq!(outputs, FRAMES);
    assert_no_leaks(&server).await;
}

/// A node declared shared serves every stream from one Python process, each stream with its own
/// state. When that process is killed mid-request, only the stream whose request was in flight
/// is told (a non-fatal error naming the signal); the next request restarts the process and
/// both streams go on. The shared model's queue is in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_python_worker_serves_several_streams_and_survives_a_kill() {
    let py =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python-executor/tests/py");
    let server = serve_with(runtime_with_python_path(&py), |c| {
        c.manifests.insert(
            "counter".into(),
            "version: v1\nnodes:\n  - {id: count, type: \"shared_probe:Counter\", params: {worker: {backoff_ms: 10}}}\n"
                .into(),
        );
    })
    .await;
    let mut c = client(&server).await;
    let (mut a, mut b) = (
        opened(&mut c, "counter").await,
        opened(&mut c, "counter").await,
    );
    async fn ask(s: &mut Stream, word: &str) -> Result<serde_json::Value, proto::ErrorInfo> {
        s.tx.send(text("", word)).await.unwrap();
        match next(&mut s.rx).await.unwrap() {
            Some(Msg::Output(o)) => match o.data.unwrap().kind {
                Some(proto::data::Kind::Json(j)) => Ok(serde_json::from_str(&j).unwrap()),
                other => panic!("{other:?}"),
            },
            Some(Msg::Error(e)) => Err(e),
            other => panic!("{other:?}"),
        }
    }
    let first = ask(&mut a, "x").await.unwrap();
    let pid = first["pid"].as_i64().unwrap();
    assert_eq!(ask(&mut a, "x").await.unwrap()["count"], 2);
    let v = ask(&mut b, "x").await.unwrap();
    assert_eq!(
        (v["pid"].as_i64(), v["count"].as_i64()),
        (Some(pid), Some(1))
    );

    b.tx.send(text("", "sleep:30")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(killed.unwrap().success());
    let Some(Msg::Error(e)) = next(&mut b.rx).await.unwrap() else {
        panic!("expected the loss")
    };
    assert!(
        !e.fatal && e.message.contains("SIGKILL") && e.message.contains("was lost"),
        "{e:?}"
    );
    let v = ask(&mut a, "x").await.unwrap();
    assert!(v["pid"].as_i64() != Some(pid) && v["count"] == 1, "{v}");
    assert_eq!(ask(&mut b, "y").await.unwrap()["text"], "y");
    assert!(
        server
            .metrics_text()
            .contains("remotemedia_model_requests_total{model=\"python:shared_probe:Counter\"}")
    );
    for s in [a, b] {
        s.tx.send(control(Action::Close)).await.unwrap();
        let mut rx = s.rx;
        while let Some(m) = next(&mut rx).await.unwrap() {
            if matches!(m, Msg::Closed(_)) {
                break;
            }
        }
    }
    assert_no_leaks(&server).await;
}

/// A Python worker of its own that crashes mid-stream, through the server: with `on-failure`
/// the client gets the outputs made before the crash, then a non-fatal error naming the signal
/// and the loss, and the stream goes on with a new worker; with `never` the error is fatal and
/// the stream closes as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_python_worker_is_reported_to_the_client_by_its_restart_policy() {
    let py =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python-executor/tests/py");
    let server = serve_with(runtime_with_python_path(&py), |c| {
        for (name, restart) in [("restarts", "on-failure"), ("never", "never")] {
            c.manifests.insert(
                name.into(),
                format!(
                    "version: v1\nnodes:\n  - {{id: probe, type: \"probe:Probe\", params: {{worker: {{restart: {restart}, backoff_ms: 10}}}}}}\n"
                ),
            );
        }
    })
    .await;
    let mut c = client(&server).await;
    async fn run(s: &mut Stream, words: &[&str]) -> Vec<String> {
        for w in words {
            s.tx.send(text("", w)).await.unwrap();
        }
        s.tx.send(control(Action::Close)).await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = next(&mut s.rx).await.unwrap() {
            got.push(match m {
                Msg::Output(o) => match o.data.unwrap().kind {
                    Some(proto::data::Kind::Text(t)) => t.text,
                    other => panic!("{other:?}"),
                },
                Msg::Error(e) => format!("error fatal={}: {}", e.fatal, e.message),
                Msg::Closed(c) => format!("closed {}", c.reason),
                _ => continue,
            });
        }
        got
    }
    let mut s = opened(&mut c, "restarts").await;
    let got = run(&mut s, &["crash_after:2", "after"]).await;
    assert_eq!(&got[..2], ["0", "1"], "{got:?}");
    let error = got
        .iter()
        .find(|g| g.starts_with("error"))
        .expect("the loss is reported");
    assert!(
        error.contains("fatal=false") && error.contains("SIGSEGV") && error.contains("was lost"),
        "{error}"
    );
    assert!(
        got.contains(&"after".to_string()),
        "the next input goes to the new worker: {got:?}"
    );
    assert_eq!(got.last().unwrap(), "closed closed");

    let mut s = opened(&mut c, "never").await;
    let got = run(&mut s, &["crash_after:1"]).await;
    assert_eq!(got[0], "0", "{got:?}");
    assert!(
        got[1].starts_with("error fatal=true") && got[1].contains("`never`"),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap(), "closed failed");
    assert_no_leaks(&server).await;
}
