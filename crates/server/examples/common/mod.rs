//! What the load clients share: opening a session and reading percentiles.

use remotemedia_server::proto::{self, pipeline_service_client::PipelineServiceClient};
use tokio::sync::mpsc;
use tonic::Streaming;

/// Why a session did not open.
pub enum OpenError {
    /// The server answered with a status (e.g. RESOURCE_EXHAUSTED when it is full).
    Refused(tonic::Status),
    /// Anything else: no connection, no `ready`.
    Failed(String),
}

/// A live session: requests go into the sender, responses after `ready` come from the stream.
pub type Opened = (
    mpsc::Sender<proto::StreamRequest>,
    Streaming<proto::StreamResponse>,
);

/// Opens a StreamPipeline session of `pipeline` on its own connection to `addr`, with the
/// bearer token in `$REMOTEMEDIA_TOKEN` if it is set (as the example Python client does).
pub async fn open(addr: &str, pipeline: &str, audio_out_f32le: bool) -> Result<Opened, OpenError> {
    let failed = |e: &dyn std::fmt::Display| OpenError::Failed(e.to_string());
    let mut client = PipelineServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| failed(&e))?;
    let (tx, rx) = mpsc::channel(64);
    let open = proto::OpenSession {
        pipeline: Some(proto::open_session::Pipeline::PipelineName(pipeline.into())),
        protocol_version: "1.0".into(),
        requested_limits: None,
        audio_out_f32le,
    };
    tx.send(proto::StreamRequest {
        message: Some(proto::stream_request::Message::Open(open)),
    })
    .await
    .map_err(|e| failed(&e))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Ok(token) = std::env::var("REMOTEMEDIA_TOKEN") {
        let value = format!("Bearer {token}").parse().map_err(|e| failed(&e))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut responses = client
        .stream_pipeline(request)
        .await
        .map_err(|e| failed(&e))?
        .into_inner();
    match responses.message().await {
        Ok(Some(proto::StreamResponse {
            message: Some(proto::stream_response::Message::Ready(_)),
        })) => Ok((tx, responses)),
        Err(s) => Err(OpenError::Refused(s)),
        Ok(other) => Err(OpenError::Failed(format!("no ready: {other:?}"))),
    }
}

/// The `q` quantile of sorted values (nearest rank); NaN for none.
pub fn quantile<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].into()
}
