//! The HTTP side: Prometheus `/metrics`, `/healthz`, `/readyz`, the node and pipeline listings
//! as JSON, the browser page (`web/`, at `/`), WebRTC signalling (`/v1/webrtc/...`) and the
//! OpenAI-compatible API (`/v1/chat/completions`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use remotemedia_core::metrics::{EXPORT_BOUNDS_S, HistogramSnapshot};

use crate::cpu_budget::Forecast;
use crate::shared::Shared;

pub fn router(shared: Arc<Shared>) -> axum::Router {
    let page = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/nodes", get(nodes))
        .route("/v1/pipelines", get(pipelines))
        // The browser client, compiled in so the binary serves it from anywhere.
        .route(
            "/",
            page(
                include_str!("../../../web/index.html"),
                "text/html; charset=utf-8",
            ),
        )
        .route(
            "/app.js",
            page(include_str!("../../../web/app.js"), "text/javascript"),
        );
    let openai = shared
        .config
        .openai
        .enabled
        .then(|| crate::openai::router(Arc::clone(&shared)));
    #[cfg(feature = "webrtc")]
    let app = app
        .with_state(Arc::clone(&shared))
        .merge(crate::webrtc::router(shared));
    #[cfg(not(feature = "webrtc"))]
    let app = app
        .route(
            "/v1/webrtc/{pipeline}",
            axum::routing::post(|| async {
                (
                    StatusCode::NOT_IMPLEMENTED,
                    "this server was built without WebRTC (cargo feature `webrtc`)\n",
                )
            }),
        )
        .with_state(shared);
    match openai {
        Some(openai) => app.merge(openai),
        None => app,
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if *shared.shutdown.borrow() || shared.admission.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        )
    } else if !shared.ready.load(Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading models\n".to_string(),
        )
    } else if let Some(why) = shared.admission.full() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("full: {why}\n"))
    } else {
        (StatusCode::OK, "ready\n".to_string())
    }
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let items = shared
        .runtime
        .executors()
        .catalogue()
        .into_iter()
        .map(|(info, executors)| {
            let mut v = serde_json::to_value(&info).unwrap_or_default();
            v["executors"] = serde_json::to_value(executors).unwrap_or_default();
            v
        })
        .collect();
    Json(serde_json::Value::Array(items))
}

async fn pipelines(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let items = shared
        .admission
        .pipelines
        .iter()
        .map(|(name, p)| {
            let (inputs, outputs) = crate::convert::pipeline_ports(p);
            let names = |ports: Vec<crate::proto::PortInfo>| {
                ports.into_iter().map(|p| p.name).collect::<Vec<_>>()
            };
            serde_json::json!({
                "name": name,
                "description": p.manifest.metadata.description,
                "nodes": p.nodes.iter().map(|n| serde_json::json!({"id": &*n.id, "type": n.node_type})).collect::<Vec<_>>(),
                "inputs": names(inputs),
                "outputs": names(outputs),
            })
        })
        .collect();
    Json(serde_json::Value::Array(items))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&shared),
    )
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP remotemedia_{name} {help}\n# TYPE remotemedia_{name} {kind}"
    );
}

/// A counter family with one label: `(name, label)`, one sample per key.
fn counters_by<K: std::fmt::Display>(
    out: &mut String,
    (name, label): (&str, &str),
    help: &str,
    counts: &std::sync::Mutex<BTreeMap<K, u64>>,
) {
    head(out, name, "counter", help);
    if let Ok(counts) = counts.lock() {
        for (key, n) in counts.iter() {
            let _ = writeln!(out, "remotemedia_{name}{{{label}=\"{key}\"}} {n}");
        }
    }
}

/// Prometheus text exposition of the process: sessions, per-node-type counters and latency
/// histograms, model pools, bytes in and out, refused calls and Python worker restarts.
pub fn render(shared: &Shared) -> String {
    let snap = shared.runtime.metrics().snapshot();
    let stats = &shared.stats;
    let cpu = shared.admission.cpu_forecast();
    let millicores = |f: fn(&Forecast) -> f64| cpu.map_or(0, |c| (f(&c) * 1000.0).round() as u64);
    let (g, c) = ("gauge", "counter");
    #[rustfmt::skip]
    let plain = [
        ("sessions_active", g, "Sessions running now.", snap.sessions_active as u64),
        ("sessions_opened_total", c, "Sessions started.", snap.sessions_opened),
        ("sessions_failed_total", c, "Sessions ended by a fatal node error.", snap.sessions_failed),
        ("grpc_streams_active", g, "StreamPipeline calls open now.", stats.streams_active.load(Relaxed)),
        ("received_bytes_total", c, "Bytes of client messages received.", stats.bytes_in.load(Relaxed)),
        ("sent_bytes_total", c, "Bytes of messages sent to clients.", stats.bytes_out.load(Relaxed)),
        ("inputs_total", c, "Inputs fed into sessions.", snap.inputs),
        ("outputs_total", c, "Outputs sessions produced.", snap.outputs),
        ("dropped_total", c, "Packets dropped by real-time edge policies.", snap.dropped),
        ("nodes_alive", g, "Node instances alive now.", snap.nodes_alive.max(0) as u64),
        ("node_tasks_alive", g, "Node tasks running now.", snap.tasks_alive.max(0) as u64),
        ("ready", g, "1 once the configured pipelines' models are loaded.", u64::from(shared.ready.load(Relaxed))),
        ("handshake_failures_total", c, "Connections dropped before they began: a TLS handshake that failed (no or a wrong client certificate, plain text on a TLS port) or nothing sent within 10 s.", stats.handshake_failures.load(Relaxed)),
        ("lag_ms", g, "How far behind real time sessions run: input lateness plus output time, moving averages (ms).", snap.lag_ms as u64),
        ("cpu_millicores", g, "CPU this process used over the last 5 s, in thousandths of a core (0 without capacity.max_cpu or an estimate).", millicores(|c| c.used)),
        ("cpu_per_session_millicores", g, "What one session costs in CPU as the capacity.max_cpu budget estimates it, thousandths of a core (0: no estimate yet).", millicores(|c| c.per_session)),
    ];
    let executors = shared
        .runtime
        .executors()
        .all()
        .iter()
        .flat_map(|e| e.counters());
    let mut out = String::new();
    for (name, kind, help, v) in plain {
        head(&mut out, name, kind, help);
        let _ = writeln!(out, "remotemedia_{name} {v}");
    }
    for counter in executors {
        head(&mut out, counter.name, c, counter.help);
        let _ = writeln!(out, "remotemedia_{} {}", counter.name, counter.value);
    }
    counters_by(
        &mut out,
        ("grpc_errors_total", "code"),
        "Calls and streams ended with an error status, by code.",
        &stats.refused,
    );
    counters_by(
        &mut out,
        ("auth_failures_total", "transport"),
        "Requests refused for a missing or unaccepted token, by transport.",
        &stats.auth_failures,
    );
    #[cfg(feature = "webrtc")]
    {
        let calls = &shared.calls;
        head(
            &mut out,
            "webrtc_calls_active",
            "gauge",
            "WebRTC calls in progress.",
        );
        let _ = writeln!(
            out,
            "remotemedia_webrtc_calls_active {}",
            calls.active.load(Relaxed)
        );
        counters_by(
            &mut out,
            ("webrtc_calls_ended_total", "reason"),
            "WebRTC calls ended, by reason.",
            &calls.ended,
        );
        counters_by(
            &mut out,
            ("webrtc_refused_total", "status"),
            "WebRTC requests refused, by HTTP status.",
            &calls.refused,
        );
    }
    let types = &snap.node_types;
    for (name, help, get) in [
        (
            "node_processed_total",
            "Inputs a node type processed.",
            (|c: &remotemedia_core::metrics::CountersSnapshot| c.processed) as fn(&_) -> u64,
        ),
        ("node_errors_total", "Inputs a node type failed on.", |c| {
            c.errors
        }),
        ("node_retries_total", "Retries of failed inputs.", |c| {
            c.retries
        }),
        (
            "node_rejected_total",
            "Inputs refused by an open circuit breaker.",
            |c| c.rejected,
        ),
    ] {
        head(&mut out, name, "counter", help);
        for (t, c) in types {
            let _ = writeln!(
                out,
                "remotemedia_{name}{{type=\"{}\"}} {}",
                escape(t),
                get(c)
            );
        }
    }
    head(
        &mut out,
        "node_latency_seconds",
        "histogram",
        "Time per process call, by node type.",
    );
    for (t, c) in types {
        histogram(
            &mut out,
            "node_latency_seconds",
            &format!("type=\"{}\"", escape(t)),
            &c.latency,
        );
    }
    for (name, help, get) in [
        (
            "pool_loads_total",
            "Model loads.",
            (|p: &remotemedia_core::PoolSnapshot| p.totals.loads) as fn(&_) -> u64,
        ),
        (
            "pool_hits_total",
            "Model requests served by a loaded model.",
            |p| p.totals.hits,
        ),
        ("pool_evictions_total", "Models evicted.", |p| {
            p.totals.evictions
        }),
        ("pool_models_loaded", "Models loaded now.", |p| {
            p.models_loaded as u64
        }),
        ("pool_memory_bytes", "Memory held by loaded models.", |p| {
            p.memory_bytes
        }),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        head(&mut out, name, kind, help);
        for (pool, p) in &snap.pools {
            let _ = writeln!(
                out,
                "remotemedia_{name}{{pool=\"{}\"}} {}",
                escape(pool),
                get(p)
            );
        }
    }
    render_schedulers(&mut out, &snap.schedulers);
    out
}

/// Per shared model: queue depth, queue wait, batch sizes, busy fraction and counts.
fn render_schedulers(
    out: &mut String,
    schedulers: &std::collections::BTreeMap<String, remotemedia_core::scheduler::SchedulerSnapshot>,
) {
    type Snap = remotemedia_core::scheduler::SchedulerSnapshot;
    type Family = (&'static str, &'static str, fn(&Snap) -> f64);
    #[rustfmt::skip]
    let plain: [Family; 7] = [
        ("model_queue_depth", "Requests waiting for a shared model now.", |s| s.queued as f64),
        ("model_requests_total", "Requests a shared model completed.", |s| s.completed as f64),
        ("model_refused_total", "Requests refused because the model's queue was full.", |s| s.refused as f64),
        ("model_batches_total", "Batches a shared model ran.", |s| s.batches as f64),
        ("model_batch_size_mean", "Mean requests per batch.", |s| s.batch_size.mean),
        ("model_batch_size_p95", "95th percentile of requests per batch.", |s| s.batch_size.p95),
        ("model_busy_ratio", "Fraction of the model threads' time spent running it.", |s| s.busy),
    ];
    for (name, help, get) in plain {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        head(out, name, kind, help);
        for (model, s) in schedulers {
            let _ = writeln!(
                out,
                "remotemedia_{name}{{model=\"{}\"}} {}",
                escape(model),
                get(s)
            );
        }
    }
    head(
        out,
        "model_queue_wait_seconds",
        "histogram",
        "Time a request waited for a shared model.",
    );
    for (model, s) in schedulers {
        histogram(
            out,
            "model_queue_wait_seconds",
            &format!("model=\"{}\"", escape(model)),
            &s.queue_wait,
        );
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (le, n) in EXPORT_BOUNDS_S.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "remotemedia_{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "remotemedia_{name}_bucket{{{labels},le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "remotemedia_{name}_sum{{{labels}}} {}", h.sum_s);
    let _ = writeln!(out, "remotemedia_{name}_count{{{labels}}} {}", h.count);
}

/// Label values escaped as the exposition format wants.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
