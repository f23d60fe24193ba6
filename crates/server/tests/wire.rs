//! What no well-behaved client sends: bytes that are not a message, a connection cut in the
//! middle of a message; and the HTTP and reflection endpoints as other tools see them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use prost::Message;
use remotemedia_server::proto;

/// A gRPC length-prefixed message.
fn framed(payload: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

/// A raw HTTP/2 StreamPipeline call: the request body sender and the response.
async fn raw_call(
    addr: std::net::SocketAddr,
) -> (
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post(format!(
        "http://{addr}/remotemedia.v1.PipelineService/StreamPipeline"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, send) = client.send_request(req, false).unwrap();
    (send, resp, conn)
}

/// The grpc-status and message the call ended with.
async fn final_status(resp: h2::client::ResponseFuture) -> (String, String) {
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    let header = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
    if let Some(code) = header(resp.headers(), "grpc-status") {
        return (
            code,
            header(resp.headers(), "grpc-message").unwrap_or_default(),
        );
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    (
        header(&trailers, "grpc-status").unwrap(),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test]
async fn bytes_that_are_not_a_message_end_the_call_with_internal_and_nothing_else() {
    let server = serve(|_| {}).await;
    let (mut send, resp, _conn) = raw_call(server.grpc_addr()).await;
    send.send_data(framed(&open("gain").encode_to_vec()), false)
        .unwrap();
    send.send_data(framed(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x07]), false)
        .unwrap();
    let (code, message) = final_status(resp).await;
    // gRPC's convention for a request that does not parse (as grpc-go and grpc-java do).
    assert_eq!(code, "13", "INTERNAL: {message}");
    assert!(message.contains("malformed"), "{message}");
    assert_no_leaks(&server).await;

    // Other sessions are unaffected.
    let mut c = client(&server).await;
    opened(&mut c, "gain").await;
}

#[tokio::test]
async fn a_connection_cut_in_the_middle_of_a_message_releases_the_session() {
    let server = serve(|_| {}).await;
    let mut c = client(&server).await;
    // A healthy session on another connection keeps working throughout.
    let mut other = opened(&mut c, "upper").await;

    for _ in 0..5 {
        let (mut send, resp, conn) = raw_call(server.grpc_addr()).await;
        send.send_data(framed(&open("vad").encode_to_vec()), false)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .unwrap()
            .unwrap();
        let mut body = resp.into_body();
        let ready = body.data().await.unwrap().unwrap();
        let ready = proto::StreamResponse::decode(&ready[5..]).unwrap();
        assert!(matches!(ready.message, Some(Msg::Ready(_))));
        // A header promising 10 000 bytes, 100 of them, and the connection is gone.
        let mut partial = vec![0u8];
        partial.extend_from_slice(&10_000u32.to_be_bytes());
        partial.extend_from_slice(&[0x12; 100]);
        send.send_data(partial.into(), false).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.abort();
        drop((send, body));
    }
    other.tx.send(text("", "still here")).await.unwrap();
    let Some(Msg::Output(o)) = next(&mut other.rx).await.unwrap() else {
        panic!()
    };
    let Some(proto::data::Kind::Text(t)) = o.data.unwrap().kind else {
        panic!()
    };
    assert_eq!(t.text, "STILL HERE");
    drop(other);
    assert_no_leaks(&server).await;
}

#[tokio::test]
async fn http_serves_metrics_health_readiness_and_listings() {
    let server = serve(|c| c.auth.tokens = vec![TOKEN.into()]).await;
    let http = server.http_addr().unwrap();
    assert_eq!(get(http, "/healthz").await, (200, "ok\n".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(http, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready after warm-up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Some traffic, so the families have samples.
    let mut c = client(&server).await;
    let mut s = stream(&mut c, authed).await.unwrap();
    s.tx.send(open("vad")).await.unwrap();
    assert!(matches!(
        next(&mut s.rx).await.unwrap(),
        Some(Msg::Ready(_))
    ));
    s.tx.send(audio(vec![0.1; 960], 48_000)).await.unwrap();
    s.tx.send(control(proto::session_control::Action::Close))
        .await
        .unwrap();
    while let Ok(Some(_)) = next(&mut s.rx).await {}
    let _ = stream(&mut c, tonic::Request::new).await; // UNAUTHENTICATED

    let (code, metrics) = get(http, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "# TYPE remotemedia_sessions_active gauge",
        "remotemedia_sessions_opened_total 5", // four warm-ups and one client
        "# TYPE remotemedia_node_latency_seconds histogram",
        "remotemedia_node_latency_seconds_count{type=\"AudioResample\"} 1",
        "remotemedia_node_errors_total{type=\"AudioResample\"} 0",
        "remotemedia_grpc_errors_total{code=\"UNAUTHENTICATED\"}",
        "# TYPE remotemedia_python_worker_restarts_total counter",
        "# TYPE remotemedia_model_queue_wait_seconds histogram",
        "remotemedia_ready 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    let received = metrics
        .lines()
        .find_map(|l| l.strip_prefix("remotemedia_received_bytes_total "))
        .unwrap();
    assert!(received.parse::<u64>().unwrap() > 960 * 4, "{received}");
    // Every sample line is `name{labels} value` with a numeric value.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit_once(' ').unwrap().1;
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {l}");
    }

    let (code, nodes) = get(http, "/v1/nodes").await;
    assert_eq!(code, 200);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "EnergyVAD")
    );
    let (_, pipelines) = get(http, "/v1/pipelines").await;
    let pipelines: serde_json::Value = serde_json::from_str(&pipelines).unwrap();
    assert_eq!(pipelines[3]["name"], "vad");
    assert_eq!(pipelines[3]["inputs"][0], "resample.in");
    assert_eq!(get(http, "/nope").await.0, 404);
}

#[tokio::test]
async fn reflection_lists_the_services_to_callers_with_a_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = serve(|c| c.auth.tokens = vec![TOKEN.into()]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let err = client.server_reflection_info(ask()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut resp = client
        .server_reflection_info(authed(ask()))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&remotemedia_server::SERVICE_NAME.to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}
