//! The OpenAI-compatible API on the HTTP listener: `POST /v1/chat/completions` (streaming as
//! server-sent events, and not), answered by the engine of the `LLM` node, shared with the
//! pipelines' LLM nodes of the same settings; `POST /v1/audio/speech` by the Piper voice;
//! `POST /v1/audio/transcriptions` by a configured speech pipeline. Errors have OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`), so OpenAI clients report them as such.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use remotemedia_core::RuntimeData;
use remotemedia_core::subtitles::SubtitleFormat;
use remotemedia_llm::{Engine, Event, Finish, LlmParams, Message, Sampling};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::{Reason, Ticket};
use crate::auth::Auth;
use crate::shared::Shared;

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    auth: Auth,
}

pub fn router(shared: Arc<Shared>) -> axum::Router {
    let auth = Auth::new(&shared.config.auth.tokens);
    let upload_limit = shared.config.openai.max_upload_bytes;
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/audio/speech", post(speech))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions).layer(DefaultBodyLimit::max(upload_limit)),
        )
        // Bodies are read (and their size checked) by the handlers, for an OpenAI-shaped 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(Api { shared, auth })
}

/// An OpenAI-shaped error.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": null, "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so the connection cannot carry another
            // request: say so, or a client may send its next one on it and see it cut.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message.into(),
    )
}

/// The request as OpenAI clients send it; fields this server does not use are ignored.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    /// `[{"type": "text", "text": ...}, ...]`: the text parts, joined.
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Api {
    fn authorised(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.auth.allows(headers) {
            Ok(())
        } else {
            self.shared.stats.auth_failed("openai");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "missing or invalid API key (`Authorization: Bearer <token>`)".into(),
            ))
        }
    }

    /// The body of an authorised request, within the size limit.
    async fn body(&self, request: Request) -> Result<Bytes, ApiError> {
        self.authorised(request.headers())?;
        let limit = self.shared.config.openai.max_body_bytes;
        axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    Some("request_too_large"),
                    format!("the request body is larger than {limit} bytes"),
                )
            })
    }

    /// A place among the server's sessions (and `pipeline`'s streams), as every stream gets:
    /// a full server answers 429 (503 while it shuts down), which OpenAI clients retry.
    fn admit(&self, pipeline: Option<&str>) -> Result<Ticket, ApiError> {
        self.shared.admission.admit(pipeline).map_err(|r| {
            let status = match r.reason {
                Reason::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
                _ => "server_error",
            };
            ApiError::new(status, kind, None, r.message)
        })
    }

    fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        remotemedia_llm::node::shared_engine(&self.shared.config.openai.chat).map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                e.to_string(),
            )
        })
    }
}

/// The request's settings, checked, with the configured ones as defaults.
fn sampling(req: &ChatRequest, p: &LlmParams, cap: u32) -> Result<Sampling, ApiError> {
    let temperature = req.temperature.unwrap_or(p.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(format!(
            "temperature must be between 0 and 2, not {temperature}"
        )));
    }
    let top_p = req.top_p.unwrap_or(p.top_p);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(invalid(format!(
            "top_p must be between 0 and 1, not {top_p}"
        )));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(p.max_tokens);
    if max_tokens == 0 || max_tokens > cap {
        return Err(invalid(format!(
            "max_tokens must be between 1 and {cap}, not {max_tokens}"
        )));
    }
    let stop = match &req.stop {
        None => p.stop.clone(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    Ok(Sampling {
        temperature,
        top_p,
        // OpenAI's seed is any integer; the engine's is 32 bits.
        seed: req
            .seed
            .map_or_else(remotemedia_llm::node::random_seed, |s| s as u32),
        max_tokens,
        stop,
    })
}

fn messages(req: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if req.messages.is_empty() {
        return Err(invalid("messages must hold at least one message"));
    }
    req.messages
        .iter()
        .map(|m| {
            if !["system", "developer", "user", "assistant"].contains(&m.role.as_str()) {
                return Err(invalid(format!(
                    "unknown message role {:?} (system, developer, user, assistant)",
                    m.role
                )));
            }
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            let text = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            Ok(Message::new(role, text))
        })
        .collect()
}

async fn chat(State(api): State<Api>, request: Request) -> Result<Response, ApiError> {
    let body = api.body(request).await?;
    let config = &api.shared.config.openai;
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the request is not a valid chat request: {e}")))?;
    let messages = messages(&req)?;
    let sampling = sampling(&req, &config.chat, config.max_tokens)?;
    let ticket = api.admit(None)?;
    let engine = api.engine()?;
    let model = req.model.unwrap_or_else(|| config.model_name.clone());
    let prompt = engine
        .prompt(&messages)
        .map_err(|e| invalid(e.to_string()))?;
    let tokens = engine.tokenize(&prompt);
    let session = engine.session();
    let (tx, rx) = mpsc::unbounded_channel();
    if let Err(e) = engine.turn(session, tokens, sampling, tx) {
        engine.close(session);
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            e.to_string(),
        ));
    }
    let reply = Reply {
        _ticket: ticket,
        engine,
        session,
        events: rx,
        id: format!("chatcmpl-{session:x}{:x}", now()),
        model,
    };
    Ok(if req.stream {
        stream(reply).into_response()
    } else {
        whole(reply).await.into_response()
    })
}

/// A turn's events, and the session it runs in (closed when this is dropped: a client that
/// goes away cancels its reply).
struct Reply {
    /// Its place among the server's sessions, held until the reply ends.
    _ticket: Ticket,
    engine: Arc<Engine>,
    session: u64,
    events: mpsc::UnboundedReceiver<Event>,
    id: String,
    model: String,
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.engine.close(self.session);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        _ => "stop",
    }
}

async fn whole(mut reply: Reply) -> Result<Response, ApiError> {
    let mut text = String::new();
    let stopped = |message: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message,
        )
    };
    while let Some(event) = reply.events.recv().await {
        let end = match event {
            Event::Text(piece) => {
                text.push_str(&piece);
                continue;
            }
            Event::End(end) => end,
        };
        if let Finish::Error(e) | Finish::Refused(e) = &end.finish {
            return Err(stopped(e.clone()));
        }
        let completion = end.completion_tokens as usize;
        return Ok(axum::Json(json!({
            "id": reply.id,
            "object": "chat.completion",
            "created": now(),
            "model": reply.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(&end.finish),
            }],
            "usage": {
                "prompt_tokens": end.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": end.prompt_tokens + completion,
            },
        }))
        .into_response());
    }
    Err(stopped("the LLM engine stopped".into()))
}

/// Server-sent events: a first chunk with the role, one per piece of text, one with the finish
/// reason, then `[DONE]`. A client that goes away drops the stream, which cancels the reply.
fn stream(mut reply: Reply) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let chunk = |reply: &Reply, delta: Value, finish: Option<&str>| {
            let v = json!({
                "id": reply.id,
                "object": "chat.completion.chunk",
                "created": now(),
                "model": reply.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            Ok(SseEvent::default().data(v.to_string()))
        };
        let first = chunk(&reply, json!({"role": "assistant", "content": ""}), None);
        if tx.send(first).await.is_err() {
            return;
        }
        while let Some(event) = reply.events.recv().await {
            let (data, end) = match event {
                Event::Text(piece) => (chunk(&reply, json!({"content": piece}), None), false),
                Event::End(end) => {
                    let reason = finish_reason(&end.finish);
                    (chunk(&reply, json!({}), Some(reason)), true)
                }
            };
            if tx.send(data).await.is_err() {
                return;
            }
            if end {
                let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                return;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// OpenAI's limit on the text of one speech request.
const MAX_SPEECH_CHARS: usize = 4096;

/// `POST /v1/audio/speech`, as OpenAI clients send it.
#[derive(Deserialize)]
struct SpeechRequest {
    input: String,
    response_format: Option<String>,
    speed: Option<f32>,
}

/// Text to speech with the Piper voice: WAV (22.05 kHz, 16-bit mono, the default) or `pcm`
/// (raw 16-bit little-endian mono at 24 kHz, as OpenAI's `pcm`). `model` and `voice` are
/// accepted and ignored: there is one voice.
async fn speech(State(api): State<Api>, request: Request) -> Result<Response, ApiError> {
    let body = api.body(request).await?;
    let req: SpeechRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the request is not a valid speech request: {e}")))?;
    if req.input.trim().is_empty() {
        return Err(invalid("input must hold some text"));
    }
    if req.input.chars().count() > MAX_SPEECH_CHARS {
        return Err(invalid(format!(
            "input is longer than {MAX_SPEECH_CHARS} characters"
        )));
    }
    let speed = req.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(invalid(format!(
            "speed must be between 0.25 and 4, not {speed}"
        )));
    }
    let format = req.response_format.as_deref().unwrap_or("wav");
    let (resample, content_type) = match format {
        "wav" => ("", "audio/wav"),
        "pcm" => (
            "  - {id: rate, type: AudioResample, params: {target_rate: 24000}}\n",
            "audio/pcm",
        ),
        other => {
            return Err(invalid(format!(
                "response_format {other:?} is not supported: wav or pcm"
            )));
        }
    };
    let manifest = format!(
        "version: v1\nnodes:\n  - {{id: sentences, type: SentenceSplitter}}\n  \
         - {{id: tts, type: PiperTTS, params: {{speed: {speed}}}}}\n{resample}connections:\n  \
         - {{from: sentences, to: tts}}\n{}",
        if resample.is_empty() {
            ""
        } else {
            "  - {from: tts, to: rate}\n"
        }
    );
    let failed =
        |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e);
    let _ticket = api.admit(None)?;
    let runtime = &api.shared.runtime;
    let pipeline = runtime
        .load(&manifest, "openai-speech")
        .map_err(|e| failed(e.to_string()))?;
    let session = runtime
        .open(&pipeline)
        .await
        .map_err(|e| failed(e.to_string()))?;
    session
        .send(RuntimeData::text(req.input))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let (packets, _) = session.close().await.map_err(|e| failed(e.to_string()))?;
    let frames: Vec<_> = packets.iter().filter_map(|p| p.data.as_audio()).collect();
    if frames.is_empty() {
        return Err(invalid(
            "the input gave no speech (nothing the voice can read)",
        ));
    }
    let bytes = if format == "wav" {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut wav = remotemedia_audio::wav::WavSink::new(&mut out, "speech");
        for f in &frames {
            wav.write(f).map_err(|e| failed(e.to_string()))?;
        }
        wav.finish().map_err(|e| failed(e.to_string()))?;
        out.into_inner()
    } else {
        frames
            .iter()
            .flat_map(|f| f.samples().iter())
            .flat_map(|&s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
            .collect()
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// `POST /v1/audio/transcriptions`: an uploaded recording (any format the decoder reads)
/// through the speech pipeline named by `[openai] transcription_pipeline`, answered as `json`
/// (the default), `text`, `srt`, `vtt` or `verbose_json` (segments with times). `model`,
/// `language`, `prompt` and `temperature` are accepted and ignored.
async fn transcriptions(State(api): State<Api>, request: Request) -> Result<Response, ApiError> {
    api.authorised(request.headers())?;
    let config = &api.shared.config.openai;
    let limit = config.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the upload is larger than {limit} bytes"),
        )
    };
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
        invalid(format!(
            "a transcription request is multipart/form-data: {e}"
        ))
    })?;
    let (mut file, mut format) = (None, "json".to_string());
    let form_error = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            invalid(format!("reading the form: {e}"))
        }
    };
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("upload").to_string();
                let bytes = field.bytes().await.map_err(form_error)?;
                file = Some((name, bytes));
            }
            Some("response_format") => {
                format = field.text().await.map_err(form_error)?;
            }
            _ => {}
        }
    }
    let (name, bytes) = file.ok_or_else(|| invalid("the form has no `file`"))?;
    if !["json", "text", "srt", "vtt", "verbose_json"].contains(&format.as_str()) {
        return Err(invalid(format!(
            "response_format {format:?} is not one of json, text, srt, vtt, verbose_json"
        )));
    }
    let pipeline = api
        .shared
        .admission
        .pipelines
        .get(&config.transcription_pipeline)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                format!(
                    "this server has no pipeline named {:?} for transcriptions",
                    config.transcription_pipeline
                ),
            )
        })?;
    let _ticket = api.admit(Some(&config.transcription_pipeline))?;
    // The decoder reads files (and sniffs their format): the upload goes through one.
    let decoded = tokio::task::spawn_blocking(move || {
        let path = std::env::temp_dir().join(format!(
            "remotemedia-upload-{}-{}",
            std::process::id(),
            UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
        let decoded = remotemedia_audio::decode::read_all(&path)
            .map_err(|e| e.to_string().replace(&path.display().to_string(), &name));
        let _ = std::fs::remove_file(&path);
        decoded
    })
    .await
    .map_err(|e| invalid(e.to_string()))?
    .map_err(|e| invalid(format!("the file is not audio this server reads: {e}")))?;
    let failed =
        |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e);
    let session = api
        .shared
        .runtime
        .open(&pipeline)
        .await
        .map_err(|e| failed(e.to_string()))?;
    // Fed and read at once: the session's edges are bounded.
    let (input, mut output) = session.split();
    let frames = decoded.frames(20);
    let feed = async move {
        for (at, frame) in frames {
            input.send_at(RuntimeData::Audio(frame), at).await?;
        }
        Ok::<_, remotemedia_core::SessionError>(())
    };
    let collect = async {
        let mut packets = Vec::new();
        while let Some(item) = output.recv().await {
            if let Ok(p) = item {
                packets.push(p);
            }
        }
        packets
    };
    let (fed, packets) = tokio::join!(feed, collect);
    fed.map_err(|e| failed(e.to_string()))?;
    let segments: Vec<(Duration, Duration, String)> = packets
        .iter()
        .filter_map(|p| p.data.as_text())
        .filter(|t| t.is_final && !t.text.trim().is_empty())
        .map(|t| {
            let (start, end) = t.span.unwrap_or_default();
            (start, end, t.text.trim().to_string())
        })
        .collect();
    let text = segments
        .iter()
        .map(|(_, _, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let plain = |body: String| {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    };
    let subtitles = |f: SubtitleFormat| {
        let cues: String = segments
            .iter()
            .enumerate()
            .map(|(i, (s, e, t))| f.cue(i + 1, *s, *e, t))
            .collect();
        format!("{}{cues}", f.header())
    };
    Ok(match format.as_str() {
        "text" => plain(format!("{text}\n")),
        "srt" => plain(subtitles(SubtitleFormat::Srt)),
        "vtt" => plain(subtitles(SubtitleFormat::Vtt)),
        "verbose_json" => axum::Json(json!({
            "task": "transcribe",
            "language": "english",
            "duration": decoded.duration().as_secs_f64(),
            "text": text,
            "segments": segments.iter().enumerate().map(|(i, (s, e, t))| json!({
                "id": i, "start": s.as_secs_f64(), "end": e.as_secs_f64(), "text": t,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        _ => axum::Json(json!({"text": text})).into_response(),
    })
}

/// Uploads written to temporary files so far, for unique names.
static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
