//! What every transport of the server shares: the runtime, the configuration, admission,
//! readiness, the shutdown signal and the counters the metrics export.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use remotemedia_core::Runtime;
use tonic::Status;

use crate::admission::Admission;
use crate::config::ServerConfig;

/// Counters the HTTP `/metrics` route exports beside the runtime's own.
#[derive(Default)]
pub struct ServerStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub streams_active: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Requests without an accepted token, by transport (`grpc`, `openai`, `webrtc`).
    pub auth_failures: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// Calls refused, by gRPC status code name.
    pub refused: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl ServerStats {
    /// Counts a request refused for its token.
    pub fn auth_failed(&self, transport: &'static str) {
        if let Ok(mut f) = self.auth_failures.lock() {
            *f.entry(transport).or_default() += 1;
        }
    }

    /// Counts and logs a refused call, and passes the status on.
    pub fn refuse(&self, status: Status) -> Status {
        let code = code_name(status.code());
        if let Ok(mut r) = self.refused.lock() {
            *r.entry(code).or_default() += 1;
        }
        tracing::info!(code, message = status.message(), "refused");
        status
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Everything the services share.
pub struct Shared {
    pub runtime: Arc<Runtime>,
    pub config: ServerConfig,
    pub admission: Admission,
    pub stats: ServerStats,
    /// Models of the configured pipelines are loaded.
    pub ready: AtomicBool,
    /// Set when the server shuts down: sessions end with UNAVAILABLE.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// WebRTC calls in progress.
    #[cfg(feature = "webrtc")]
    pub calls: crate::calls::Calls,
}
