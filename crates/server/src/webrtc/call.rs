//! One WebRTC call: the task that drives its `Rtc` (sans-IO) with its UDP sockets, feeds the
//! decoded microphone to the pipeline session and sends the session's outputs back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opus_decoder::OpusDecoder;
use remotemedia_core::{AudioFrame, Control, Packet, RuntimeData, Session, SessionInput};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::opus::Encoder;
use super::reply::{Frame, RATE, ReplyTrack};
use crate::shared::Shared;

/// Decoded microphone audio waiting for the pipeline; beyond it frames are dropped (counted)
/// rather than stalling the connection: 10 s.
const FEED_QUEUE: usize = 500;

pub struct Call {
    id: String,
    shared: Arc<Shared>,
    pipeline: String,
    rtc: Rtc,
    /// The call's sockets with their local addresses.
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    decoder: Option<OpusDecoder>,
    encoder: Option<Encoder>,
    /// The audio media (microphone in, replies out) and the data channel, once known.
    audio: Option<Mid>,
    channel: Option<ChannelId>,
    /// Messages for the data channel before it opens.
    unsent: VecDeque<String>,
    /// Reply audio (48 kHz mono) waiting to be sent, one frame per 20 ms.
    reply: ReplyTrack,
    /// RTP time of the first microphone packet: media time 0 of the session.
    first_rtp: Option<u64>,
    dropped: u64,
}

impl Call {
    pub fn new(
        id: String,
        shared: Arc<Shared>,
        pipeline: String,
        rtc: Rtc,
        sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    ) -> Self {
        Self {
            id,
            shared,
            pipeline,
            rtc,
            sockets,
            decoder: None,
            encoder: None,
            audio: None,
            channel: None,
            unsent: VecDeque::new(),
            reply: ReplyTrack::default(),
            first_rtp: None,
            dropped: 0,
        }
    }

    /// Runs the call, feeding `session`, to its end; returns why it ended.
    pub async fn run(
        mut self,
        session: Session,
        mut hung_up: watch::Receiver<bool>,
    ) -> &'static str {
        let (input, mut output) = session.split();
        let (feed_tx, feed_rx) = mpsc::channel(FEED_QUEUE);
        let feeder = tokio::spawn(feed(input, feed_rx));
        let (packets_tx, mut packets) = mpsc::channel::<(Vec<u8>, SocketAddr, SocketAddr)>(256);
        let readers: Vec<_> = self
            .sockets
            .iter()
            .map(|(local, s)| tokio::spawn(read_socket(*local, Arc::clone(s), packets_tx.clone())))
            .collect();
        drop(packets_tx);
        let limits = &self.shared.config.limits;
        let started = tokio::time::Instant::now();
        let connect_by =
            started + Duration::from_millis(self.shared.config.webrtc.connect_timeout_ms);
        let deadline = (limits.max_duration_ms > 0)
            .then(|| started + Duration::from_millis(limits.max_duration_ms));
        let mut shutdown = self.shared.shutdown.clone();
        let mut connected = false;
        let mut session_done = false;
        let mut feed_tx = Some(feed_tx);

        let reason = loop {
            // Let the Rtc say everything it has to say; it ends with when it next needs time.
            let timeout = match self.drain(&mut connected, feed_tx.as_ref()) {
                Ok(Ok(t)) => t,
                Ok(Err(reason)) => break reason,
                Err(e) => {
                    tracing::warn!(call = %self.id, "WebRTC error: {e}");
                    break "webrtc error";
                }
            };
            let wake = tokio::time::Instant::from_std(timeout);
            let wake = self.reply.next_due().map_or(wake, |f| f.min(wake));
            tokio::select! {
                _ = hung_up.wait_for(|v| *v) => break "hung up",
                _ = shutdown.wait_for(|v| *v) => break "server shutdown",
                p = packets.recv() => {
                    let Some((data, source, destination)) = p else { break "socket error" };
                    let Ok(contents) = data.as_slice().try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination, contents,
                    });
                    if let Err(e) = self.rtc.handle_input(input) {
                        tracing::debug!(call = %self.id, "dropped a packet: {e}");
                    }
                }
                item = output.recv(), if !session_done => match item {
                    Some(Ok(p)) => self.output(&p),
                    Some(Err(f)) => self.send_json(&serde_json::json!({
                        "type": "error", "node": &*f.node_id, "message": &f.message,
                        "fatal": f.fatal,
                    })),
                    None => {
                        session_done = true;
                        self.send_json(&serde_json::json!({"type": "closed", "reason": "the pipeline ended"}));
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        tracing::warn!(call = %self.id, "WebRTC error: {e}");
                        break "webrtc error";
                    }
                }
                _ = tokio::time::sleep_until(connect_by), if !connected => break "connect timeout",
                _ = remotemedia_core::rt::sleep_until(deadline) => break "duration limit",
            }
            // Whichever branch woke the loop, reply audio that is due goes out now.
            self.send_reply_frames();
            if session_done && self.reply.is_empty() {
                // Let the closing message and the last audio go out, then end.
                let _ = self.drain(&mut connected, None);
                break "pipeline ended";
            }
            if feed_tx.as_ref().is_some_and(|tx| tx.is_closed()) {
                feed_tx = None; // the session's input ended; keep sending its outputs
            }
        };
        if !session_done {
            self.send_json(&serde_json::json!({"type": "closed", "reason": reason}));
            let _ = self.drain(&mut connected, None);
        }
        self.rtc.disconnect();
        drop(feed_tx);
        output.cancel();
        let _ = feeder.await;
        let (report, _) = output.finish_report().await;
        for r in readers {
            r.abort();
        }
        tracing::info!(
            call = %self.id,
            pipeline = %self.pipeline,
            inputs = report.metrics.inputs,
            outputs = report.metrics.outputs,
            dropped = self.dropped,
            "call's session released"
        );
        reason
    }

    /// Handles the Rtc's outputs until it asks for time (`Ok(when)`) or the peer has gone
    /// (`Err(why)`).
    fn drain(
        &mut self,
        connected: &mut bool,
        feed: Option<&mpsc::Sender<(RuntimeData, Duration)>>,
    ) -> Result<Result<Instant, &'static str>, str0m::RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(Ok(t)),
                Output::Transmit(t) => {
                    if let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == t.source) {
                        let _ = s.try_send_to(&t.contents, t.destination);
                    }
                }
                Output::Event(e) => match e {
                    Event::Connected => *connected = true,
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Ok(Err("disconnected"));
                    }
                    Event::Closed => return Ok(Err("closed by peer")),
                    Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                        self.audio = Some(m.mid);
                    }
                    // Chromium sends a few packets without payload; decoding them as lost
                    // packets would corrupt the decoder's state for the rest of the call.
                    Event::MediaData(d) if !d.data.is_empty() => {
                        if let Some(feed) = feed {
                            self.microphone(&d.data, d.time, feed);
                        }
                    }
                    Event::ChannelOpen(cid, _) => {
                        self.channel = Some(cid);
                        let ready = serde_json::json!({
                            "type": "ready", "session": &self.id, "pipeline": &self.pipeline,
                        });
                        self.unsent.push_front(ready.to_string());
                        while let Some(m) = self.unsent.pop_front() {
                            self.write_channel(&m);
                        }
                    }
                    Event::ChannelClose(cid) if Some(cid) == self.channel => {
                        return Ok(Err("closed by peer"));
                    }
                    _ => {}
                },
            }
        }
    }

    /// One Opus packet of the microphone: decoded and queued for the pipeline.
    fn microphone(
        &mut self,
        packet: &[u8],
        time: MediaTime,
        feed: &mpsc::Sender<(RuntimeData, Duration)>,
    ) {
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None => match OpusDecoder::new(RATE, 1) {
                Ok(d) => self.decoder.insert(d),
                Err(e) => {
                    tracing::warn!(call = %self.id, "opus decoder: {e:?}");
                    return;
                }
            },
        };
        let mut pcm = vec![0.0f32; 5760]; // the longest Opus packet: 120 ms
        let n = match decoder.decode_float(packet, &mut pcm, false) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(call = %self.id, "undecodable Opus packet: {e:?}");
                return;
            }
        };
        pcm.truncate(n);
        let rtp = time.rebase(Frequency::FORTY_EIGHT_KHZ).numer();
        let first = *self.first_rtp.get_or_insert(rtp);
        let at = Duration::from_secs_f64(rtp.wrapping_sub(first) as f64 / f64::from(RATE));
        let frame = RuntimeData::Audio(AudioFrame::new(pcm, RATE, 1));
        if feed.try_send((frame, at)).is_err() {
            self.dropped += 1;
        }
    }

    /// A pipeline output: text and JSON to the data channel, audio to the reply track.
    fn output(&mut self, p: &Packet) {
        match &p.data {
            RuntimeData::Text(t) => {
                let span = t.span.map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64()));
                self.send_json(&serde_json::json!({
                    "type": "text", "node": &*p.source, "port": &*p.port, "text": &*t.text,
                    "final": t.is_final, "start": span.map(|s| s.0), "end": span.map(|s| s.1),
                }));
            }
            RuntimeData::Json(v) => self.send_json(&serde_json::json!({
                "type": "json", "node": &*p.source, "port": &*p.port, "value": &**v,
            })),
            RuntimeData::Audio(a) if a.sample_rate == RATE => {
                let ch = usize::from(a.channels.max(1));
                let scale = 1.0 / ch as f32;
                self.reply.push(
                    a.samples()
                        .chunks_exact(ch)
                        .map(|f| f.iter().sum::<f32>() * scale),
                    tokio::time::Instant::now(),
                );
            }
            // Barge-in: the reply audio not yet sent is dropped at once.
            RuntimeData::Control(Control::Cancel { .. }) => self.reply.clear(),
            RuntimeData::Audio(a) => self.send_json(&serde_json::json!({
                "type": "error", "node": &*p.source, "fatal": false,
                "message": format!("audio at {} Hz cannot be sent: WebRTC replies must be 48000 Hz \
                                    (add an AudioResample with target_rate 48000)", a.sample_rate),
            })),
            _ => {}
        }
    }

    /// Sends every 20 ms frame of reply audio that is due: one per 20 ms of wall time, so the
    /// browser gets it in real time however bursty the pipeline's output is.
    fn send_reply_frames(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(frame) = self.reply.due_frame(now) {
            self.send_reply_frame(frame);
        }
    }

    /// Encodes and sends one frame of reply audio.
    fn send_reply_frame(&mut self, frame: Frame) {
        let (Some(mid), Some(pt)) = (self.audio, self.opus_pt()) else {
            tracing::debug!(call = %self.id, audio = ?self.audio, "no audio media to send the reply on");
            return;
        };
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => match Encoder::new(RATE, 1) {
                Ok(e) => self.encoder.insert(e),
                Err(e) => {
                    tracing::warn!(call = %self.id, "{e}");
                    return;
                }
            },
        };
        let mut buf = [0u8; 1500];
        let packet = match encoder.encode(&frame.pcm, &mut buf) {
            Ok(p) => p.to_vec(),
            Err(e) => {
                tracing::warn!(call = %self.id, "{e}");
                return;
            }
        };
        let time = MediaTime::new(frame.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        if let Some(writer) = self.rtc.writer(mid)
            && let Err(e) =
                writer
                    .start_of_talkspurt(frame.talkspurt)
                    .write(pt, Instant::now(), time, packet)
        {
            tracing::debug!(call = %self.id, "reply audio not sent: {e}");
        }
    }

    fn opus_pt(&mut self) -> Option<Pt> {
        let writer = self.rtc.writer(self.audio?)?;
        writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
    }

    fn send_json(&mut self, v: &serde_json::Value) {
        let text = v.to_string();
        if self.channel.is_some() {
            self.write_channel(&text);
        } else {
            self.unsent.push_back(text);
        }
    }

    fn write_channel(&mut self, text: &str) {
        if let Some(mut ch) = self.channel.and_then(|c| self.rtc.channel(c))
            && let Err(e) = ch.write(false, text.as_bytes())
        {
            tracing::debug!(call = %self.id, "data channel: {e}");
        }
    }
}

/// Feeds decoded microphone frames to the session, at the pace the pipeline takes them.
async fn feed(input: SessionInput, mut rx: mpsc::Receiver<(RuntimeData, Duration)>) {
    while let Some((data, at)) = rx.recv().await {
        if input.send_at(data, at).await.is_err() {
            break;
        }
    }
}

/// Reads datagrams from one socket into the call's queue.
async fn read_socket(
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<(Vec<u8>, SocketAddr, SocketAddr)>,
) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if tx.send((buf[..n].to_vec(), from, local)).await.is_err() {
            break;
        }
    }
}
