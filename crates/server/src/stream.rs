//! `StreamPipeline`: one session per stream.
//!
//! Two loops share the stream. The inbound loop reads client messages and feeds the session
//! (waiting when the pipeline is busy, so backpressure reaches the client through HTTP/2 flow
//! control); the outbound loop forwards outputs and errors and owns the end of the session.
//! Whatever ends the stream — the client closing, cancelling or vanishing, a limit, a protocol
//! error, a fatal node error, server shutdown — the session is closed or cancelled and every
//! node released before the task ends.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use prost::Message;
use remotemedia_core::rt::sleep_until;
use remotemedia_core::{Control, RuntimeData, SessionInput, SessionOutput};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status, Streaming};

use crate::admission::{Granted, Pace, PipelineRef, SERVER_VERSION, version_string};
use crate::convert;
use crate::proto::{self, session_control::Action, stream_request, stream_response};
use crate::shared::Shared;

/// Responses buffered for a client before the session waits for it to read.
pub const OUTBOX: usize = 64;
/// How long the final status may wait for a client that stopped reading.
const FINAL_SEND: Duration = Duration::from_secs(1);

type Outbox = mpsc::Sender<Result<proto::StreamResponse, Status>>;

fn msg(m: stream_response::Message) -> Result<proto::StreamResponse, Status> {
    Ok(proto::StreamResponse { message: Some(m) })
}

/// Serves one stream to its end.
pub async fn run(shared: Arc<Shared>, mut inbound: Streaming<proto::StreamRequest>, tx: Outbox) {
    shared.stats.streams_active.fetch_add(1, Relaxed);
    match serve(&shared, &mut inbound, &tx).await {
        Err(status) => {
            let status = shared.stats.refuse(status);
            let _ = tokio::time::timeout(FINAL_SEND, tx.send(Err(status))).await;
        }
        // The session ended normally: the response ends once the client has ended its request
        // (it does right after CLOSE), or after FINAL_SEND. A response that ends first makes
        // HTTP/2 reset the request (RST_STREAM NO_ERROR), which a proxy such as HAProxy passes
        // on to its client as a cancel: CANCELLED for a call that succeeded.
        Ok(()) => {
            let rest = async { while let Ok(Some(_)) = inbound.message().await {} };
            let _ = tokio::time::timeout(FINAL_SEND, rest).await;
        }
    }
    shared.stats.streams_active.fetch_sub(1, Relaxed);
}

async fn serve(
    shared: &Arc<Shared>,
    inbound: &mut Streaming<proto::StreamRequest>,
    tx: &Outbox,
) -> Result<(), Status> {
    let open = first_message(shared, inbound).await?;
    let opened = Instant::now();
    let requested = open.requested_limits.as_ref().map(convert::limits_in);
    let granted = shared
        .admission
        .grant(
            &open.protocol_version,
            open.pipeline.map(PipelineRef::from),
            requested.as_ref(),
        )
        .await?;
    let session = shared
        .runtime
        .open(&granted.pipeline)
        .await
        .map_err(convert::start_status)?;
    let (inputs, outputs) = convert::pipeline_ports(&granted.pipeline);
    tracing::info!(session = session.id(), pipeline = %granted.pipeline.name, "session opened");
    let ready = proto::SessionReady {
        session_id: session.id().to_string(),
        server_version: SERVER_VERSION.into(),
        protocol_version: version_string(granted.protocol),
        limits: Some(convert::limits_out(&granted.limits)),
        pipeline: granted.pipeline.name.to_string(),
        inputs,
        outputs,
    };
    if tx
        .send(msg(stream_response::Message::Ready(ready)))
        .await
        .is_err()
    {
        return Ok(()); // the client is gone; dropping the session cancels it
    }
    let (input, output) = session.split();
    let stop_tx = watch::channel(None::<Status>).0;
    let feed = Inbound {
        shared,
        granted: &granted,
        input,
        tx,
        stop: &stop_tx,
        pace: Pace::new(&granted.limits, opened),
    }
    .run(inbound, stop_tx.subscribe());
    let ends = Ends {
        stop: stop_tx.subscribe(),
        shutdown: shared.shutdown.clone(),
        max_duration_ms: granted.limits.max_duration_ms,
        deadline: (granted.limits.max_duration_ms > 0).then(|| {
            tokio::time::Instant::now() + Duration::from_millis(granted.limits.max_duration_ms)
        }),
    };
    let (_, ended) = tokio::join!(
        feed,
        forward(shared, output, tx, &stop_tx, ends, open.audio_out_f32le)
    );
    ended
}

/// Waits for `open`; anything else first is refused.
async fn first_message(
    shared: &Shared,
    inbound: &mut Streaming<proto::StreamRequest>,
) -> Result<proto::OpenSession, Status> {
    let idle = shared.config.limits.idle_timeout_ms;
    let next = inbound.message();
    let first = if idle == 0 {
        next.await
    } else {
        tokio::time::timeout(Duration::from_millis(idle), next)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no opening message within {idle} ms"))
            })?
    };
    match first.map_err(client_error)? {
        None => Err(Status::cancelled(
            "the client closed the stream before opening a session",
        )),
        Some(m) => {
            shared
                .stats
                .bytes_in
                .fetch_add(m.encoded_len() as u64, Relaxed);
            match m.message {
                Some(stream_request::Message::Open(o)) => Ok(o),
                Some(_) => Err(Status::failed_precondition(
                    "the first message of a stream must be `open`: no session is open yet",
                )),
                None => Err(Status::invalid_argument(
                    "empty message: set open, data or control",
                )),
            }
        }
    }
}

/// What reading from the client failed with, as the status the client should get.
fn client_error(s: Status) -> Status {
    match s.code() {
        // tonic reports an over-long message as OUT_OF_RANGE; gRPC says RESOURCE_EXHAUSTED.
        Code::OutOfRange => Status::resource_exhausted(s.message().to_string()),
        Code::Internal => Status::internal(format!("malformed message: {}", s.message())),
        _ => s,
    }
}

struct Inbound<'a> {
    shared: &'a Shared,
    granted: &'a Granted,
    input: SessionInput,
    tx: &'a Outbox,
    stop: &'a watch::Sender<Option<Status>>,
    pace: Pace,
}

impl Inbound<'_> {
    /// Feeds the session until the client closes its input (or the session must end). Ending
    /// drops the input: the nodes flush and the outbound loop finishes the session.
    async fn run(
        mut self,
        inbound: &mut Streaming<proto::StreamRequest>,
        mut stop: watch::Receiver<Option<Status>>,
    ) {
        let limits = &self.granted.limits;
        let idle =
            (limits.idle_timeout_ms > 0).then(|| Duration::from_millis(limits.idle_timeout_ms));
        let max_bytes = limits.max_message_bytes;
        loop {
            let next = tokio::select! {
                m = inbound.message() => m,
                _ = sleep_until(idle.map(|d| tokio::time::Instant::now() + d)) => {
                    return self.fail(Status::deadline_exceeded(format!(
                        "no message from the client for {} ms (idle timeout)",
                        limits.idle_timeout_ms
                    )));
                }
                _ = stop.changed() => return,
            };
            let m = match next {
                Ok(Some(m)) => m,
                Ok(None) => return, // half-close: end of input
                Err(s) if matches!(s.code(), Code::OutOfRange | Code::Internal) => {
                    return self.fail(client_error(s));
                }
                Err(s) => {
                    // The client cancelled or vanished: nobody is left to tell.
                    tracing::info!(code = ?s.code(), "client stream ended: {}", s.message());
                    return self.fail(Status::cancelled("the client went away"));
                }
            };
            let len = m.encoded_len();
            self.shared.stats.bytes_in.fetch_add(len as u64, Relaxed);
            if len > max_bytes {
                return self.fail(Status::resource_exhausted(format!(
                    "a {len}-byte message is over this session's limit of {max_bytes} bytes"
                )));
            }
            if let Err(r) = self.pace.frame() {
                return self.fail(r.into());
            }
            let handled = match m.message {
                Some(stream_request::Message::Data(frame)) => self.data(frame).await,
                Some(stream_request::Message::Control(c)) => match Action::try_from(c.action) {
                    Ok(Action::Close) => return,
                    Ok(Action::Metrics) => {
                        let json = serde_json::to_string(&self.input.metrics()).unwrap_or_default();
                        let m = stream_response::Message::Metrics(proto::SessionMetrics { json });
                        tokio::select! {
                            _ = self.tx.send(msg(m)) => Ok(true),
                            _ = stop.changed() => return,
                        }
                    }
                    Ok(Action::Flush) => self.feed(RuntimeData::Control(Control::Flush)).await,
                    Ok(Action::Cancel) => {
                        let reason = if c.reason.is_empty() {
                            "client cancel".into()
                        } else {
                            c.reason
                        };
                        self.feed(RuntimeData::Control(Control::Cancel {
                            reason: reason.into(),
                        }))
                        .await
                    }
                    _ => Err(Status::invalid_argument(format!(
                        "unknown control action {}",
                        c.action
                    ))),
                },
                Some(stream_request::Message::Open(_)) => Err(Status::failed_precondition(
                    "a session is already open on this stream; open another stream for another \
                     session",
                )),
                None => Err(Status::invalid_argument(
                    "empty message: set data or control",
                )),
            };
            match handled {
                Ok(true) => {}
                Ok(false) => return, // the session ended; the outbound loop reports why
                Err(s) => return self.fail(s),
            }
        }
    }

    async fn data(&mut self, frame: proto::DataFrame) -> Result<bool, Status> {
        let data = convert::data_in(frame.data)?;
        if let RuntimeData::Audio(a) = &data {
            self.pace.audio(a.duration())?;
        }
        let ts = frame.timestamp_us.map(convert::micros);
        let sent = match (frame.target.as_str(), ts) {
            ("", Some(ts)) => self.input.send_at(data, ts).await,
            ("", None) => self.input.send(data).await,
            (target, Some(ts)) => self.input.send_to_at(target, data, ts).await,
            (target, None) => self.input.send_to(target, data).await,
        };
        match sent {
            Ok(()) => Ok(true),
            Err(e) => convert::feed_status(&e).map_or(Ok(false), Err),
        }
    }

    async fn feed(&mut self, data: RuntimeData) -> Result<bool, Status> {
        match self.input.send(data).await {
            Ok(()) => Ok(true),
            Err(e) => convert::feed_status(&e).map_or(Ok(false), Err),
        }
    }

    /// Ends the session with `status` for the client.
    fn fail(self, status: Status) {
        self.stop.send_replace(Some(status));
    }
}

/// What may stop a session from the outside, besides its own end.
struct Ends {
    /// A status set by the inbound loop (a protocol error, a limit, the client gone).
    stop: watch::Receiver<Option<Status>>,
    shutdown: watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
    max_duration_ms: u64,
}

impl Ends {
    /// Resolves with the status to end the session with.
    async fn next(&mut self, tx: &Outbox) -> Status {
        let shutdown = async {
            if self.shutdown.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await; // no server handle: no shutdown
            }
        };
        tokio::select! {
            _ = self.stop.changed() => {
                self.stop.borrow().clone().unwrap_or_else(|| Status::cancelled("stopped"))
            }
            _ = shutdown => Status::unavailable("the server is shutting down"),
            _ = tx.closed() => Status::cancelled("the client went away"),
            _ = sleep_until(self.deadline) => Status::deadline_exceeded(format!(
                "the session reached its maximum duration of {} ms",
                self.max_duration_ms
            )),
        }
    }
}

/// Forwards outputs until the session ends, then reports how it ended: `closed`, or the
/// status that stopped it.
async fn forward(
    shared: &Shared,
    mut output: SessionOutput,
    tx: &Outbox,
    stop_tx: &watch::Sender<Option<Status>>,
    mut ends: Ends,
    f32le: bool,
) -> Result<(), Status> {
    let mut stopped: Option<Status> = None;
    loop {
        let item = tokio::select! {
            biased;
            item = output.recv() => item,
            s = ends.next(tx), if stopped.is_none() => {
                output.cancel();
                stopped = Some(s);
                continue;
            }
        };
        let Some(item) = item else { break };
        if stopped.is_some() {
            continue; // draining a cancelled session
        }
        let m = match item {
            Ok(p) => stream_response::Message::Output(convert::output(&p, f32le)),
            Err(f) => stream_response::Message::Error(convert::error(&f)),
        };
        let m = proto::StreamResponse { message: Some(m) };
        shared
            .stats
            .bytes_out
            .fetch_add(m.encoded_len() as u64, Relaxed);
        // A client that stops reading makes this wait, and every limit still applies.
        let failed = tokio::select! {
            r = tx.send(Ok(m)) => r.err().map(|_| Status::cancelled("the client went away")),
            s = ends.next(tx) => Some(s),
        };
        if let Some(s) = failed {
            output.cancel();
            stopped = Some(s);
        }
    }
    // The inbound loop may have failed just as the session ended (its input drops with it).
    if stopped.is_none() {
        stopped = ends.stop.borrow().clone();
    }
    // Wake the inbound loop if it still waits for the client (the session ended on its own).
    stop_tx.send_modify(|_| {});
    let id = output.session_id().to_string();
    let (report, failure) = output.finish_report().await;
    if let Some(s) = stopped {
        tracing::info!(session = %id, code = ?s.code(), "session stopped: {}", s.message());
        return Err(s);
    }
    let reason = match failure {
        Some(f) => {
            tracing::warn!(session = %id, "session failed: {f}");
            "failed"
        }
        None => "closed",
    };
    tracing::info!(session = %id, reason, "session closed");
    let m = &report.metrics;
    let closed = proto::SessionClosed {
        reason: reason.into(),
        inputs: m.inputs,
        outputs: m.outputs,
        metrics_json: serde_json::to_string(m).unwrap_or_default(),
    };
    let closed = msg(stream_response::Message::Closed(closed));
    let _ = tokio::time::timeout(FINAL_SEND, tx.send(closed)).await;
    Ok(())
}
