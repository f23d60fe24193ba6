//! The WebRTC endpoint: a browser calls a configured pipeline with a WHIP-style HTTP exchange
//! (`POST /v1/webrtc/<pipeline>` with an SDP offer, answered with the SDP answer and a
//! `Location` to `DELETE` for hanging up), then talks to it over one peer connection:
//!
//! - its Opus microphone track is decoded (48 kHz mono) and fed to a pipeline session in real
//!   time, stamped with the track's own media time;
//! - text outputs (captions, with `final` and their span in the media stream) and JSON outputs
//!   go back as JSON messages on the data channel the browser opened (`ready`, `text`, `json`,
//!   `error`, `closed`; see `docs/webrtc.md`);
//! - audio outputs (48 kHz; e.g. synthesised replies) go back as an Opus track, paced in real
//!   time.
//!
//! Each call has its own UDP socket per configured ICE address, its own task and its own
//! pipeline session; it ends on hang-up, ICE disconnection, a connect timeout, the session's
//! end, the duration limit or server shutdown, and every end releases the socket, the task and
//! the session's nodes.

mod call;
mod opus;
mod reply;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use str0m::change::SdpOffer;
use str0m::{Candidate, RtcConfig};
use tokio::sync::watch;

use crate::admission::{Reason, Refusal};
use crate::auth::Auth;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
    auth: Auth,
}

pub fn router(shared: Arc<Shared>) -> axum::Router {
    let auth = Auth::new(&shared.config.auth.tokens);
    axum::Router::new()
        .route("/v1/webrtc/{pipeline}", axum::routing::post(offer))
        .route("/v1/webrtc/sessions/{id}", axum::routing::delete(hang_up))
        .with_state(Endpoint { shared, auth })
}

/// A refusal: a status with a one-line reason, counted and logged.
fn refuse(shared: &Shared, status: StatusCode, message: String) -> Response {
    if let Ok(mut r) = shared.calls.refused.lock() {
        *r.entry(status.as_u16()).or_default() += 1;
    }
    tracing::info!(status = status.as_u16(), message, "WebRTC call refused");
    (status, format!("{message}\n")).into_response()
}

/// An admission refusal, as the HTTP status a WHIP client expects.
fn refuse_for(shared: &Shared, r: Refusal) -> Response {
    let status = match r.reason {
        Reason::NotFound => StatusCode::NOT_FOUND,
        Reason::PermissionDenied => StatusCode::FORBIDDEN,
        Reason::InvalidArgument | Reason::FailedPrecondition => StatusCode::BAD_REQUEST,
        Reason::ResourceExhausted | Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(shared, status, r.message)
}

impl Endpoint {
    /// A 401 refusal, unless auth is off or the request carries an accepted bearer token.
    fn refuse_unauthorised(&self, headers: &HeaderMap) -> Option<Response> {
        (!self.auth.allows(headers)).then(|| {
            self.shared.stats.auth_failed("webrtc");
            refuse(
                &self.shared,
                StatusCode::UNAUTHORIZED,
                "missing or invalid `Authorization: Bearer <token>`".into(),
            )
        })
    }
}

async fn offer(
    State(ep): State<Endpoint>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = ep.refuse_unauthorised(&headers) {
        return refused;
    }
    let shared = &ep.shared;
    if !shared.config.webrtc.enabled {
        return refuse(
            shared,
            StatusCode::FORBIDDEN,
            "WebRTC calls are turned off in this server's configuration (webrtc.enabled)".into(),
        );
    }
    if *shared.shutdown.borrow() {
        return refuse(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        );
    }
    let pipeline = match shared.admission.pipeline(&name) {
        Ok(p) => p,
        Err(r) => return refuse_for(shared, r),
    };
    let sdp = match std::str::from_utf8(&body) {
        Ok(s) => s,
        Err(_) => {
            return refuse(
                shared,
                StatusCode::BAD_REQUEST,
                "the SDP offer is not UTF-8".into(),
            );
        }
    };
    let offer = match SdpOffer::from_sdp_string(sdp) {
        Ok(o) => o,
        Err(e) => {
            return refuse(
                shared,
                StatusCode::BAD_REQUEST,
                format!("malformed SDP offer: {e}"),
            );
        }
    };
    if !sdp.lines().any(|l| l.starts_with("m=audio")) {
        return refuse(
            shared,
            StatusCode::BAD_REQUEST,
            "the offer has no audio section (m=audio): add the microphone track before \
             creating the offer"
                .into(),
        );
    }
    let ticket = match shared.admission.admit(Some(&name)) {
        Ok(t) => t,
        Err(r) => return refuse_for(shared, r),
    };
    match answer(shared, &pipeline, offer, ticket).await {
        Ok((id, answer)) => {
            let location = format!("/v1/webrtc/sessions/{id}");
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_string()),
                    (header::LOCATION, location),
                ],
                answer,
            )
                .into_response()
        }
        Err((status, message)) => refuse(shared, status, message),
    }
}

/// Binds the call's sockets, answers the offer, opens the pipeline session and starts the
/// call's task; returns its id and the SDP answer.
async fn answer(
    shared: &Arc<Shared>,
    pipeline: &Arc<remotemedia_core::Pipeline>,
    offer: SdpOffer,
    ticket: crate::admission::Ticket,
) -> Result<(String, String), (StatusCode, String)> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
    };
    let now = Instant::now();
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .set_crypto_provider(crypto())
        .build(now);
    let mut sockets = Vec::new();
    for ip in &shared.config.webrtc.ice_addresses {
        let socket = tokio::net::UdpSocket::bind((*ip, 0))
            .await
            .map_err(|e| internal(&format!("cannot bind a UDP socket on {ip}"), &e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| internal("UDP socket", &e))?;
        let candidate = Candidate::host(addr, "udp").map_err(|e| internal("ICE candidate", &e))?;
        rtc.add_local_candidate(candidate);
        sockets.push((addr, Arc::new(socket)));
    }
    let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("cannot accept the offer: {e}"),
        )
    })?;
    let session = shared
        .runtime
        .open(pipeline)
        .await
        .map_err(|e| internal("could not start the pipeline", &e))?;
    let id = format!("call-{}", shared.calls.next.fetch_add(1, Relaxed) + 1);
    let (hang_up, hung_up) = watch::channel(false);
    if let Ok(mut live) = shared.calls.live.lock() {
        live.insert(id.clone(), hang_up);
    }
    shared.calls.active.fetch_add(1, Relaxed);
    tracing::info!(call = %id, session = session.id(), pipeline = %pipeline.name, "WebRTC call answered");
    let call = call::Call::new(
        id.clone(),
        Arc::clone(shared),
        pipeline.name.to_string(),
        rtc,
        sockets,
    );
    let (shared2, id2) = (Arc::clone(shared), id.clone());
    tokio::spawn(async move {
        let _place = ticket; // the session slot is free again when the call ends
        let reason = call.run(session, hung_up).await;
        shared2.calls.end(&id2);
        shared2.calls.active.fetch_sub(1, Relaxed);
        if let Ok(mut ended) = shared2.calls.ended.lock() {
            *ended.entry(reason).or_default() += 1;
        }
        tracing::info!(call = %id2, reason, "WebRTC call ended");
    });
    Ok((id, answer.to_sdp_string()))
}

async fn hang_up(
    State(ep): State<Endpoint>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = ep.refuse_unauthorised(&headers) {
        return refused;
    }
    if ep.shared.calls.end(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        refuse(
            &ep.shared,
            StatusCode::NOT_FOUND,
            format!("no call `{id}` in progress"),
        )
    }
}

fn crypto() -> Arc<str0m::config::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<str0m::config::CryptoProvider>> =
        std::sync::OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(str0m::crypto::from_feature_flags())))
}
