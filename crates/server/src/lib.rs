//! RemoteMedia serving: the gRPC `PipelineService` (streaming sessions, unary execution,
//! version negotiation, listings) with the standard health and reflection services, and an
//! HTTP port for Prometheus metrics, health and readiness.
//!
//! ```no_run
//! # async fn demo(runtime: remotemedia_core::Runtime) -> anyhow::Result<()> {
//! let config = remotemedia_server::ServerConfig::default();
//! let server = remotemedia_server::start(config, std::sync::Arc::new(runtime)).await?;
//! println!("gRPC on {}", server.grpc_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every call is authenticated (bearer tokens, [`auth`]), every limit of [`config::LimitsConfig`]
//! is enforced with the gRPC status a client expects, both ports may be served over TLS (with
//! client certificates, [`config::TlsConfig`]), and a session's nodes are released however
//! its stream ends. The protocol is `proto/remotemedia/v1/pipeline.proto`.

mod accept;
pub mod admission;
pub mod auth;
#[cfg(feature = "webrtc")]
mod calls;
pub mod config;
mod convert;
mod cpu_budget;
mod dub;
pub mod http;
mod openai;
mod service;
mod shared;
mod stream;
mod tls;
#[cfg(feature = "webrtc")]
mod webrtc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use anyhow::Context;
use remotemedia_core::{Pipeline, Runtime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;

pub use admission::{PROTOCOL, SERVER_VERSION};
pub use config::ServerConfig;

/// Generated protocol types and client/server stubs.
pub use remotemedia_proto as proto;

/// Largest dubbing request: room for the original audio of a long film as FLAC.
const DUB_MAX_REQUEST: usize = 256 << 20;

/// The gRPC service name, as health checks know it.
pub const SERVICE_NAME: &str = "remotemedia.v1.PipelineService";

/// A running server.
pub struct RunningServer {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shared: Arc<shared::Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
}

impl RunningServer {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Prometheus text of the server now (what `/metrics` returns).
    pub fn metrics_text(&self) -> String {
        http::render(&self.shared)
    }

    /// True once the configured pipelines' models are loaded.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Relaxed)
    }

    /// Drains: from now on the server reports not ready (`/readyz` 503, gRPC health
    /// NOT_SERVING) and refuses new sessions, calls and requests with UNAVAILABLE, while the
    /// open ones go on. Returns when none is left and `shutdown.notice_ms` has passed (true),
    /// or after `timeout` (false); then [`RunningServer::shutdown`] ends what is left.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        self.shared.admission.start_draining();
        for service in [SERVICE_NAME, ""] {
            self.health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let started = tokio::time::Instant::now();
        let notice = std::time::Duration::from_millis(self.shared.config.shutdown.notice_ms);
        let deadline = started + timeout;
        loop {
            let open = self.shared.admission.sessions_open();
            if open == 0 && started.elapsed() >= notice.min(timeout) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(open, "drain timeout: ending the sessions left");
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Ends every session with UNAVAILABLE, stops listening and waits for the servers to stop.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Loads the configured pipelines, binds both ports and starts serving. Models of the
/// configured pipelines load in the background (one session of each is opened and closed,
/// which fills the shared model pool); `/readyz` and the health service report serving once
/// they are in.
pub async fn start(
    mut config: ServerConfig,
    runtime: Arc<Runtime>,
) -> anyhow::Result<RunningServer> {
    config.add_env_tokens();
    config.check()?;
    let tls = tls::Acceptors::load(&config.tls)?;
    // Loading resolves types, which may ask Python: not on the reactor.
    let (pipelines, config) = {
        let runtime = Arc::clone(&runtime);
        tokio::task::spawn_blocking(move || load_pipelines(&runtime, config)).await??
    };
    let grpc = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc.listen))?;
    let http = if config.http.enabled {
        let a = config.http.listen;
        let listener = tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen for HTTP on {a}"))?;
        Some(listener)
    } else {
        None
    };
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
    let auth = auth::Auth::new(&config.auth.tokens);
    let (stop, stopped) = watch::channel(false);
    let max_message = config.limits.max_message_bytes;
    let admission = admission::Admission::new(
        Arc::clone(&runtime),
        pipelines,
        config.limits.clone(),
        config.client_manifests.clone(),
        config.capacity.clone(),
    );
    let shared = Arc::new(shared::Shared {
        runtime,
        config,
        admission,
        stats: Default::default(),
        ready: AtomicBool::new(false),
        shutdown: stopped.clone(),
        #[cfg(feature = "webrtc")]
        calls: Default::default(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::NotServing)
        .await;
    // Reflection in both versions: grpcurl and most tools ask v1, grpcio's client v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let pipeline_service =
        proto::pipeline_service_server::PipelineServiceServer::new(service::Service {
            shared: Arc::clone(&shared),
        })
        .max_decoding_message_size(max_message);
    // A dubbing request carries a whole subtitle file and may carry the original audio.
    let dubbing_service = proto::dubbing_service_server::DubbingServiceServer::new(dub::Service {
        shared: Arc::clone(&shared),
    })
    .max_decoding_message_size(max_message.max(DUB_MAX_REQUEST));
    let check = {
        let (auth, shared) = (auth.clone(), Arc::clone(&shared));
        move |req: tonic::Request<()>| {
            auth.check(req).map_err(|s| {
                shared.stats.auth_failed("grpc");
                shared.stats.refuse(s)
            })
        }
    };
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let mut tasks = Vec::new();
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(size_status))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection, check.clone()))
        .add_service(InterceptedService::new(reflection_alpha, check.clone()))
        .add_service(InterceptedService::new(dubbing_service, check.clone()))
        .add_service(InterceptedService::new(pipeline_service, check));
    let grpc_stop = until(stopped.clone());
    let (grpc_tls, http_tls) = tls
        .as_ref()
        .map(|t| (t.grpc.clone(), t.http.clone()))
        .unzip();
    let incoming = accept::accept(grpc, Arc::clone(&shared), grpc_tls);
    let incoming = ReceiverStream::new(incoming).map(|(io, _)| Ok::<_, std::io::Error>(io));
    tasks.push(logged(
        "gRPC",
        router.serve_with_incoming_shutdown(incoming, grpc_stop),
    ));
    if let (Some(listener), Some(local)) = (http, http_addr) {
        let app = http::router(Arc::clone(&shared));
        let http_stop = until(stopped.clone());
        let connections = accept::accept(listener, Arc::clone(&shared), http_tls);
        let server = axum::serve(accept::Listener { connections, local }, app);
        tasks.push(logged(
            "HTTP",
            server.with_graceful_shutdown(http_stop).into_future(),
        ));
    }
    tasks.push(tokio::spawn(warm_up(Arc::clone(&shared), health.clone())));
    tracing::info!(
        grpc = %grpc_addr,
        http = ?http_addr,
        auth = auth.enabled(),
        tls = tls.is_some(),
        pipelines = shared.admission.pipelines.len(),
        "serving"
    );
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        shared,
        stop,
        tasks,
        health,
    })
}

/// Runs a server to its end on a task, logging why if it failed.
fn logged<E: std::fmt::Display>(
    what: &'static str,
    server: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("{what} server failed: {e}");
        }
    })
}

/// The configured pipelines, checked. Also learns every executor's node types (the Python
/// executor asks its interpreter once), so that no client request waits for that.
fn load_pipelines(
    runtime: &Runtime,
    config: ServerConfig,
) -> anyhow::Result<(BTreeMap<String, Arc<Pipeline>>, ServerConfig)> {
    let mut pipelines = BTreeMap::new();
    for (name, path) in &config.pipelines {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("pipeline `{name}`: cannot read {}", path.display()))?;
        let p = runtime
            .load(&text, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("pipeline `{name}`: {e}"))?;
        pipelines.insert(name.clone(), p);
    }
    for (name, text) in &config.manifests {
        let p = runtime
            .load(text, &format!("pipeline `{name}`"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        pipelines.insert(name.clone(), p);
    }
    runtime.executors().known_types();
    Ok((pipelines, config))
}

/// tonic refuses a unary request over the size limit with OUT_OF_RANGE before our code runs;
/// gRPC's status table says RESOURCE_EXHAUSTED, which is what streams get, so unary calls get
/// it too.
fn size_status<B>(mut resp: ::http::Response<B>) -> ::http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("length%20too%20large") || m.contains("length too large"));
    if too_large && h.get("grpc-status").is_some_and(|v| v == "11") {
        h.insert("grpc-status", ::http::HeaderValue::from_static("8"));
    }
    resp
}

/// Opens and closes one session of each configured pipeline, so its models are in the shared
/// pool before the first client, then reports ready.
async fn warm_up(shared: Arc<shared::Shared>, health: tonic_health::server::HealthReporter) {
    let started = std::time::Instant::now();
    for (name, pipeline) in &shared.admission.pipelines {
        match shared.runtime.open(pipeline).await {
            Ok(session) => {
                let _ = session.close().await;
            }
            Err(e) => {
                // Clients opening it will get the same error; the others still work.
                tracing::error!(pipeline = %name, "pipeline cannot start: {e}");
            }
        }
    }
    shared.ready.store(true, Relaxed);
    if shared.admission.is_draining() {
        return;
    }
    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tracing::info!(elapsed = ?started.elapsed(), "ready: models of the configured pipelines loaded");
}
