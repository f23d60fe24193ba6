//! Admission: who may open a session, with which pipeline, under which limits. The same for
//! every transport: gRPC turns a [`Refusal`] into a status, WebRTC into an HTTP response.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remotemedia_core::{LoadError, ManifestPolicy, Pipeline, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{CapacityConfig, ClientManifests, LimitsConfig};
use crate::cpu_budget::{Counted, CpuBudget, Forecast, process_cpu};

/// The protocol this server speaks; clients with another major version are refused.
pub const PROTOCOL: (u32, u32) = (1, 0);
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a request is refused, in the terms both gRPC and HTTP have a status for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The request itself is wrong (a bad manifest, an unparsable version).
    InvalidArgument,
    /// No such pipeline.
    NotFound,
    /// The policy forbids it, whatever the load.
    PermissionDenied,
    /// Over a limit; less (or later) would pass.
    ResourceExhausted,
    /// The client speaks another protocol.
    FailedPrecondition,
    /// The server is shutting down.
    Unavailable,
    /// Something on our side broke.
    Internal,
}

impl Reason {
    /// Whether the same request may succeed later without change.
    pub fn is_retryable(self) -> bool {
        matches!(self, Reason::ResourceExhausted | Reason::Unavailable)
    }
}

/// A refused request: the reason and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which pipeline a client asks for.
pub enum PipelineRef {
    Name(String),
    Manifest(String),
}

/// A pipeline a client may run, with the limits granted for it and its place.
pub struct Granted {
    pub pipeline: Arc<Pipeline>,
    pub limits: LimitsConfig,
    pub protocol: (u32, u32),
    pub ticket: Ticket,
}

/// An admitted stream's place: its session slot and its count against its pipeline's
/// `max_streams`, both given back when it is dropped.
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    _stream: Option<StreamCount>,
    _cpu: Counted,
}

struct StreamCount {
    streams: Arc<Mutex<BTreeMap<String, usize>>>,
    pipeline: String,
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        if let Ok(mut s) = self.streams.lock()
            && let Some(n) = s.get_mut(&self.pipeline)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// The server's admission state: its pipelines, session slots, limits and manifest policy.
pub struct Admission {
    runtime: Arc<Runtime>,
    /// Configured pipelines, loaded and checked at start.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    sessions: Arc<Semaphore>,
    limits: LimitsConfig,
    client_manifests: ClientManifests,
    capacity: CapacityConfig,
    /// Streams running per configured pipeline.
    streams: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Set when the server drains before stopping: no new session is admitted.
    draining: std::sync::atomic::AtomicBool,
    cpu: CpuBudget,
}

impl Admission {
    pub fn new(
        runtime: Arc<Runtime>,
        pipelines: BTreeMap<String, Arc<Pipeline>>,
        limits: LimitsConfig,
        client_manifests: ClientManifests,
        capacity: CapacityConfig,
    ) -> Self {
        Self {
            runtime,
            pipelines,
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            limits,
            client_manifests,
            cpu: CpuBudget::new(capacity.max_cpu, Box::new(process_cpu)),
            capacity,
            streams: Default::default(),
            draining: Default::default(),
        }
    }

    /// From now on every new session, call or request is refused with UNAVAILABLE; the ones
    /// open go on.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sessions (streams, calls, API requests, dubbing jobs) holding a slot now.
    pub fn sessions_open(&self) -> usize {
        self.limits.max_sessions - self.sessions.available_permits()
    }

    /// Admits one more stream of the configured pipeline `name` (`None`: a client's own
    /// manifest), or refuses it at once: the server overloaded (CPU budget, lag, a model's
    /// queue), over the pipeline's `max_streams`, or every session slot in use.
    pub fn admit(&self, name: Option<&str>) -> Result<Ticket, Refusal> {
        if self.is_draining() {
            return Err(Refusal::new(
                Reason::Unavailable,
                "the server is draining before it stops: open the session on another server",
            ));
        }
        if let Some(why) = self.overloaded() {
            return Err(Refusal::new(Reason::ResourceExhausted, why));
        }
        let stream = match name {
            Some(name) => self.count_stream(name)?,
            None => None,
        };
        let slot = Arc::clone(&self.sessions)
            .try_acquire_owned()
            .map_err(|_| {
                Refusal::new(
                    Reason::ResourceExhausted,
                    format!(
                        "the server is at its limit of {} concurrent sessions; retry later",
                        self.limits.max_sessions
                    ),
                )
            })?;
        Ok(Ticket {
            _slot: slot,
            _stream: stream,
            _cpu: self.cpu.count(Instant::now()),
        })
    }

    /// Counts a stream against its pipeline's `max_streams`, if it has one.
    fn count_stream(&self, name: &str) -> Result<Option<StreamCount>, Refusal> {
        let Some(&max) = self.capacity.max_streams.get(name) else {
            return Ok(None);
        };
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = streams.entry(name.to_string()).or_default();
        if *n >= max {
            return Err(Refusal::new(
                Reason::ResourceExhausted,
                format!(
                    "pipeline `{name}` is at its capacity of {max} streams \
                     (capacity.max_streams); retry later or on another server"
                ),
            ));
        }
        *n += 1;
        Ok(Some(StreamCount {
            streams: Arc::clone(&self.streams),
            pipeline: name.to_string(),
        }))
    }

    /// Why a new stream would slow everyone down: the sessions open plus one more would use
    /// more CPU than `capacity.max_cpu`, outputs leave the pipelines later than
    /// `capacity.max_lag_ms` after their input, or a shared model's queue holds a new request
    /// longer than `capacity.max_queue_delay_ms`.
    fn overloaded(&self) -> Option<String> {
        if let Some(why) = self.cpu.over(Instant::now()) {
            return Some(why);
        }
        let max_lag = Duration::from_millis(self.capacity.max_lag_ms);
        let lag = self.runtime.metrics().lag();
        if !max_lag.is_zero() && lag > max_lag {
            return Some(format!(
                "the server is past its capacity: sessions run {} ms behind real time \
                 (capacity.max_lag_ms is {} ms); retry later or on another server",
                lag.as_millis(),
                max_lag.as_millis()
            ));
        }
        let target = Duration::from_millis(self.capacity.max_queue_delay_ms);
        if target.is_zero() {
            return None;
        }
        remotemedia_core::scheduler::exported_snapshots()
            .into_iter()
            .map(|(model, s)| (model, s.expected_wait()))
            .find(|(_, wait)| *wait > target)
            .map(|(model, wait)| {
                format!(
                    "the server is past its capacity: model {model} has a queue of {} ms \
                     (capacity.max_queue_delay_ms is {} ms); retry later or on another server",
                    wait.as_millis(),
                    target.as_millis()
                )
            })
    }

    /// What the CPU budget predicts now (`None` without a budget or an estimate).
    pub(crate) fn cpu_forecast(&self) -> Option<Forecast> {
        self.cpu.forecast(Instant::now())
    }

    /// Why the server takes no new streams now, for `/readyz`: one more would pass the CPU
    /// budget, the sessions run behind, a model is past its queue-delay target, every session
    /// slot is in use, or every configured pipeline is at its `max_streams`.
    pub fn full(&self) -> Option<String> {
        if let Some(why) = self.overloaded() {
            return Some(why);
        }
        if self.sessions.available_permits() == 0 {
            return Some(format!(
                "all {} session slots in use",
                self.limits.max_sessions
            ));
        }
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let at_limit = |name: &String| {
            self.capacity
                .max_streams
                .get(name)
                .is_some_and(|max| streams.get(name).copied().unwrap_or(0) >= *max)
        };
        (!self.pipelines.is_empty() && self.pipelines.keys().all(at_limit))
            .then(|| "every pipeline is at its max_streams".to_string())
    }

    /// Checks version, pipeline and policy, cheapest first, then takes a slot.
    pub async fn grant(
        &self,
        version: &str,
        pipeline: Option<PipelineRef>,
        requested: Option<&LimitsConfig>,
    ) -> Result<Granted, Refusal> {
        let protocol = negotiate(version)?;
        let (pipeline, ticket) = match pipeline {
            None => {
                return Err(Refusal::new(
                    Reason::InvalidArgument,
                    "name a pipeline (pipeline_name) or send a manifest",
                ));
            }
            Some(PipelineRef::Name(name)) => (self.pipeline(&name)?, self.admit(Some(&name))?),
            Some(PipelineRef::Manifest(text)) => {
                // Over capacity, refused before the manifest costs anything.
                let ticket = self.admit(None)?;
                (self.client_manifest(text).await?, ticket)
            }
        };
        Ok(Granted {
            pipeline,
            limits: self.limits(requested),
            protocol,
            ticket,
        })
    }

    /// A configured pipeline by name; the refusal lists the others.
    pub fn pipeline(&self, name: &str) -> Result<Arc<Pipeline>, Refusal> {
        self.pipelines.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
            Refusal::new(
                Reason::NotFound,
                format!(
                    "no pipeline named `{name}`; this server has: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// The policy for client manifests.
    fn policy(&self) -> ManifestPolicy {
        ManifestPolicy {
            allowed_types: self.client_manifests.allowed_types.clone(),
            allow_python: self.client_manifests.allow_python,
            max_nodes: self.limits.max_nodes,
            max_bytes: self.limits.max_message_bytes,
        }
    }

    /// A client's own manifest, under the policy: checked before any type is resolved, and
    /// loaded off the reactor (resolving a Python type starts a process).
    async fn client_manifest(&self, text: String) -> Result<Arc<Pipeline>, Refusal> {
        if !self.client_manifests.allow {
            return Err(Refusal::new(
                Reason::PermissionDenied,
                "this server runs only its configured pipelines (client_manifests.allow is off); \
                 open one by pipeline_name",
            ));
        }
        let runtime = Arc::clone(&self.runtime);
        let policy = self.policy();
        let loaded = tokio::task::spawn_blocking(move || {
            runtime.load_untrusted(&text, "client manifest", &policy)
        })
        .await
        .map_err(|e| Refusal::new(Reason::Internal, format!("loading the manifest: {e}")))?;
        loaded.map_err(|e| match e {
            LoadError::Refused(p) if p.is_size_limit() => {
                Refusal::new(Reason::ResourceExhausted, p.to_string())
            }
            LoadError::Refused(p) => Refusal::new(Reason::PermissionDenied, p.to_string()),
            other => Refusal::new(Reason::InvalidArgument, other.to_string()),
        })
    }

    /// The server's limits, tightened where the client asked for less (0 = not asked).
    pub fn limits(&self, requested: Option<&LimitsConfig>) -> LimitsConfig {
        let mut l = self.limits.clone();
        let Some(r) = requested else { return l };
        let tighter = |server: u64, asked: u64| match (server, asked) {
            (s, 0) => s,
            (0, a) => a,
            (s, a) => s.min(a),
        };
        l.max_duration_ms = tighter(l.max_duration_ms, r.max_duration_ms);
        l.idle_timeout_ms = tighter(l.idle_timeout_ms, r.idle_timeout_ms);
        l.max_message_bytes =
            tighter(l.max_message_bytes as u64, r.max_message_bytes as u64) as usize;
        l.max_frames_per_second = tighter(
            u64::from(l.max_frames_per_second),
            u64::from(r.max_frames_per_second),
        ) as u32;
        if r.max_realtime_factor > 0.0 && r.max_realtime_factor.is_finite() {
            l.max_realtime_factor = if l.max_realtime_factor == 0.0 {
                r.max_realtime_factor
            } else {
                l.max_realtime_factor.min(r.max_realtime_factor)
            };
        }
        l
    }
}

/// The version both sides speak: the lower minor of the same major. Empty means ours.
pub fn negotiate(client: &str) -> Result<(u32, u32), Refusal> {
    let client = client.trim();
    if client.is_empty() {
        return Ok(PROTOCOL);
    }
    let parse = |s: &str| s.trim().parse::<u32>().ok();
    let bare = client.trim_start_matches('v');
    let (major, minor) = match bare.split_once('.') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(bare), Some(0)),
    };
    let (Some(major), Some(minor)) = (major, minor) else {
        return Err(Refusal::new(
            Reason::InvalidArgument,
            format!(
                "protocol_version `{client}` is not MAJOR.MINOR (this server speaks {}.{})",
                PROTOCOL.0, PROTOCOL.1
            ),
        ));
    };
    if major != PROTOCOL.0 {
        return Err(Refusal::new(
            Reason::FailedPrecondition,
            format!(
                "client protocol {major}.{minor} is not compatible with this server's protocol \
                 {}.{} (remotemedia {SERVER_VERSION}); use a client for protocol {}.x",
                PROTOCOL.0, PROTOCOL.1, PROTOCOL.0
            ),
        ));
    }
    Ok((major, minor.min(PROTOCOL.1)))
}

pub fn version_string((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

/// The rate limits of one session's input: messages per second (a token bucket holding one
/// second's worth) and audio no faster than a multiple of real time after a head start.
pub struct Pace {
    started: Instant,
    audio: Duration,
    factor: f64,
    burst: Duration,
    fps: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    /// Limits counted from `opened`, when the client asked for the session: audio it sent at
    /// real time while the session was starting is within its budget, however long that took.
    pub fn new(l: &LimitsConfig, opened: Instant) -> Self {
        let now = Instant::now();
        let fps = f64::from(l.max_frames_per_second);
        Self {
            started: opened,
            audio: Duration::ZERO,
            factor: l.max_realtime_factor,
            burst: Duration::from_millis(l.realtime_burst_ms),
            fps,
            tokens: fps,
            last: now,
        }
    }

    /// One more message.
    pub fn frame(&mut self) -> Result<(), Refusal> {
        if self.fps == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.fps;
        self.tokens = (self.tokens + refill).min(self.fps);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(Refusal::new(
                Reason::ResourceExhausted,
                format!(
                    "more than {} messages per second (max_frames_per_second); send larger frames",
                    self.fps
                ),
            ));
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// `d` more of input audio.
    pub fn audio(&mut self, d: Duration) -> Result<(), Refusal> {
        if self.factor == 0.0 {
            return Ok(());
        }
        self.audio += d;
        let elapsed = self.started.elapsed();
        if self.audio > self.burst + elapsed.mul_f64(self.factor) {
            return Err(Refusal::new(
                Reason::ResourceExhausted,
                format!(
                    "input audio arrives faster than {}× real time ({:.1} s of audio in {:.1} s; \
                     max_realtime_factor)",
                    self.factor,
                    self.audio.as_secs_f64(),
                    elapsed.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_allows_real_time_with_a_burst_and_refuses_faster() {
        let limits = LimitsConfig {
            max_realtime_factor: 2.0,
            realtime_burst_ms: 1_000,
            max_frames_per_second: 0,
            ..Default::default()
        };
        let mut pace = Pace::new(&limits, Instant::now());
        for _ in 0..50 {
            pace.audio(Duration::from_millis(20)).unwrap(); // 1 s: the head start
        }
        let err = pace.audio(Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.reason, Reason::ResourceExhausted);
        assert!(err.message.contains("2× real time"), "{err}");
    }

    #[test]
    fn pace_refuses_a_flood_of_messages() {
        let limits = LimitsConfig {
            max_frames_per_second: 100,
            ..Default::default()
        };
        let mut pace = Pace::new(&limits, Instant::now());
        let refused = (0..1_000).filter(|_| pace.frame().is_err()).count();
        assert!(
            refused >= 800,
            "a one-second burst of 100, then refusals: {refused}"
        );
    }

    #[test]
    fn versions_negotiate_to_the_lower_minor_of_the_same_major() {
        assert_eq!(negotiate("").unwrap(), PROTOCOL);
        assert_eq!(negotiate("v1.7").unwrap(), (1, 0));
        assert_eq!(negotiate("1").unwrap(), (1, 0));
        assert_eq!(
            negotiate("2.0").unwrap_err().reason,
            Reason::FailedPrecondition
        );
        assert_eq!(
            negotiate("one").unwrap_err().reason,
            Reason::InvalidArgument
        );
    }
}
