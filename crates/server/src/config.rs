//! Server configuration: one TOML file (every option documented in `examples/server.toml`),
//! with command-line flags and the environment overriding it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable with API tokens, comma-separated; added to the file's tokens.
pub const TOKENS_ENV: &str = "REMOTEMEDIA_TOKENS";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub client_manifests: ClientManifests,
    pub webrtc: WebRtcConfig,
    pub capacity: CapacityConfig,
    pub openai: OpenAiConfig,
    pub shutdown: ShutdownConfig,
    pub tls: TlsConfig,
    /// Where node types prefer to run, beside the runtime's defaults: read by the program
    /// that assembles the runtime (`remotemedia serve`).
    pub executor_rules: Vec<remotemedia_core::ExecutorRule>,
    /// Named pipelines clients may open: name → manifest path (relative to the config file).
    pub pipelines: BTreeMap<String, PathBuf>,
    /// Named pipelines given as manifest text, by programs that embed the server.
    #[serde(skip)]
    pub manifests: BTreeMap<String, String>,
}

/// How the server stops.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On the first SIGTERM or Ctrl-C the server drains: it reports not ready, refuses new
    /// sessions with UNAVAILABLE and lets open ones go on for up to this long, then ends those
    /// left with UNAVAILABLE. A second signal stops it at once.
    pub drain_timeout_ms: u64,
    /// The drain lasts at least this long, even with no session open, so that a load
    /// balancer checking `/readyz` sees the server not ready, and stops sending it streams,
    /// before its connections close: a stream that still arrives is refused (UNAVAILABLE, which
    /// a client retries) rather than cut. Cut short by the drain timeout.
    pub notice_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 30_000,
            notice_ms: 1_000,
        }
    }
}

/// TLS on both ports (gRPC and HTTP), off unless `cert` and `key` are set. PEM files; paths
/// relative to the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by one of these CAs, or their
    /// handshake fails. Tokens, if configured, are still required.
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 50051).into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Metrics, health and node listing.
    pub listen: SocketAddr,
    pub enabled: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9090).into(),
            enabled: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted bearer tokens. Empty (and none in the environment): no authentication.
    pub tokens: Vec<String>,
    /// Listen on a non-loopback address without tokens (refused unless this is true).
    pub allow_unauthenticated: bool,
}

/// The OpenAI-compatible API on the HTTP listener (docs/serving.md#openai-compatible-api).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    pub enabled: bool,
    /// The chat model: the params of an `LLM` node (model, sessions, context_tokens, threads,
    /// and the defaults of temperature, top_p, max_tokens, stop; the system prompt is the
    /// request's own).
    pub chat: remotemedia_llm::LlmParams,
    /// The model name in responses when a request names none.
    pub model_name: String,
    /// The most tokens a request may ask for.
    pub max_tokens: u32,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest upload to /v1/audio/transcriptions, in bytes (OpenAI's limit: 25 MB).
    pub max_upload_bytes: usize,
    /// The configured pipeline that transcribes uploads (audio in, final timed text out).
    pub transcription_pipeline: String,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            chat: remotemedia_llm::LlmParams::default(),
            model_name: "smollm2-135m-instruct".into(),
            max_tokens: 1024,
            max_body_bytes: 1 << 20,
            max_upload_bytes: 25 << 20,
            transcription_pipeline: "transcribe".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Streaming sessions open at once; one more gets RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Longest a session may last; 0 = no limit.
    pub max_duration_ms: u64,
    /// Longest a session may go without a client message; 0 = no limit.
    pub idle_timeout_ms: u64,
    /// Input audio may arrive at most this many times faster than real time (0 = no limit)...
    pub max_realtime_factor: f64,
    /// ...after a head start of this much audio.
    pub realtime_burst_ms: u64,
    /// Messages per second a session may send (a one-second burst is allowed); 0 = no limit.
    pub max_frames_per_second: u32,
    /// Nodes in a client's manifest.
    pub max_nodes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_message_bytes: 4 << 20,
            max_duration_ms: 4 * 3600 * 1000,
            idle_timeout_ms: 60_000,
            max_realtime_factor: 4.0,
            realtime_burst_ms: 2_000,
            max_frames_per_second: 1_000,
            max_nodes: 32,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientManifests {
    /// Clients may send their own manifests (otherwise only named pipelines open).
    pub allow: bool,
    /// Node types a client manifest may use; empty = every native type.
    pub allowed_types: Vec<String>,
    /// Client manifests may use Python nodes (code running in worker processes).
    pub allow_python: bool,
}

/// When the server is full: new streams are refused (RESOURCE_EXHAUSTED, HTTP 503) and
/// `/readyz` says so, while admitted streams keep their latency.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Streams a configured pipeline may run at once (name → count; unnamed: no limit).
    pub max_streams: BTreeMap<String, usize>,
    /// Refuse new streams while a shared model's queue would hold a new request longer than
    /// this (ms); 0 = never.
    pub max_queue_delay_ms: u64,
    /// Refuse new streams while the sessions run this far behind real time (ms): how late input
    /// arrives against its media time plus how long outputs take from the input that completed
    /// them, moving averages over every session. The machine is falling behind, whichever stage
    /// it is; 0 = never.
    pub max_lag_ms: u64,
    /// Refuse a new stream when the sessions open, at the CPU each costs now, plus one more
    /// would use more than this share of the machine's cores (0.9: 90 %). Predicts, where the
    /// lag and queue guards wait to see the machine behind; 0 = never.
    pub max_cpu: f64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            max_streams: BTreeMap::new(),
            max_queue_delay_ms: 1_000,
            max_lag_ms: 500,
            max_cpu: 0.9,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// Browsers may call `POST /v1/webrtc/<pipeline>` on the HTTP port (needs the server built
    /// with the `webrtc` feature).
    pub enabled: bool,
    /// Addresses the calls' UDP sockets bind to, each offered as an ICE host candidate.
    pub ice_addresses: Vec<IpAddr>,
    /// A call whose ICE and DTLS have not connected after this long ends (ms).
    pub connect_timeout_ms: u64,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ice_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            connect_timeout_ms: 10_000,
        }
    }
}

/// A configuration problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ServerConfig {
    /// Reads a TOML file; pipeline paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut config: ServerConfig =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = &mut config.tls;
        let files = [&mut tls.cert, &mut tls.key, &mut tls.client_ca];
        for p in config
            .pipelines
            .values_mut()
            .chain(files.into_iter().flatten())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Adds tokens from `REMOTEMEDIA_TOKENS`.
    pub fn add_env_tokens(&mut self) {
        if let Ok(v) = std::env::var(TOKENS_ENV) {
            self.auth.tokens.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from),
            );
        }
    }

    /// Refuses what would be unsafe or cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        let open = |a: &SocketAddr| !a.ip().is_loopback();
        let exposed = open(&self.grpc.listen) || (self.http.enabled && open(&self.http.listen));
        // Client certificates authenticate as well as tokens do.
        let authenticated = !self.auth.tokens.is_empty() || self.tls.client_ca.is_some();
        if exposed && !authenticated && !self.auth.allow_unauthenticated {
            return Err(ConfigError(format!(
                "refusing to listen on a non-loopback address ({}) without API tokens: set \
                 auth.tokens or {TOKENS_ENV} (or tls.client_ca), or \
                 auth.allow_unauthenticated = true",
                self.grpc.listen
            )));
        }
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError(
                "tls.cert and tls.key go together: set both or neither".into(),
            ));
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return Err(ConfigError(
                "tls.client_ca needs tls.cert and tls.key (client certificates are checked in \
                 a TLS handshake)"
                    .into(),
            ));
        }
        if let Some(t) = self.auth.tokens.iter().find(|t| t.len() < 16) {
            return Err(ConfigError(format!(
                "API token `{}…` is too short: use at least 16 characters",
                &t[..t.len().min(3)]
            )));
        }
        if self.limits.max_sessions == 0 {
            return Err(ConfigError("limits.max_sessions must be at least 1".into()));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(ConfigError(
                "limits.max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.webrtc.enabled && self.webrtc.ice_addresses.is_empty() {
            return Err(ConfigError(
                "webrtc.ice_addresses is empty: name at least one address (or enabled = false)"
                    .into(),
            ));
        }
        if !self.limits.max_realtime_factor.is_finite() || self.limits.max_realtime_factor < 0.0 {
            return Err(ConfigError(
                "limits.max_realtime_factor must be a number ≥ 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.capacity.max_cpu) {
            return Err(ConfigError(format!(
                "capacity.max_cpu is {}: it is a share of the cores from 0 (no budget) to 1 \
                 (0.9 is 90 %)",
                self.capacity.max_cpu
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_states_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let c = ServerConfig::from_file(&path).unwrap();
        let d = ServerConfig::default();
        assert_eq!(c.grpc, d.grpc);
        assert_eq!(c.http, d.http);
        assert_eq!(c.auth, d.auth);
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.client_manifests, d.client_manifests);
        assert_eq!(c.webrtc, d.webrtc);
        assert_eq!(c.executor_rules, d.executor_rules);
        assert_eq!(c.capacity, d.capacity);
        assert_eq!(c.openai, d.openai);
        assert_eq!(c.shutdown, d.shutdown);
        assert_eq!(c.tls, d.tls);
        let transcribe = &c.pipelines["transcribe"];
        assert!(transcribe.ends_with("examples/transcribe.yaml") && transcribe.exists());
        c.check().unwrap();
    }

    #[test]
    fn the_kubernetes_config_parses_and_needs_its_tokens() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/server.toml");
        let mut c = ServerConfig::from_file(&path).unwrap();
        assert!(!c.grpc.listen.ip().is_loopback());
        assert_eq!(c.capacity.max_streams["transcribe"], 48);
        // It listens on every address: without the Secret's tokens it refuses to start.
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("without API tokens")
        );
        c.auth.tokens = vec!["from-the-secret-0123".into()];
        c.check().unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let dir = std::env::temp_dir().join(format!("rm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[limits]\nmax_sesions = 3\n").unwrap();
        let e = ServerConfig::from_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml") && e.contains("max_sesions") && e.contains("line 2"),
            "{e}"
        );

        let mut c = ServerConfig::default();
        c.grpc.listen = "0.0.0.0:50051".parse().unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("without API tokens"), "{e}");
        c.auth.tokens = vec!["short".into()];
        assert!(c.check().unwrap_err().to_string().contains("too short"));
        c.auth.tokens = vec!["a-long-enough-token-123".into()];
        c.check().unwrap();
        c.capacity.max_cpu = 90.0;
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("capacity.max_cpu is 90") && e.contains("0.9 is 90 %"),
            "{e}"
        );
        c.capacity.max_cpu = 0.9;
        c.tls.key = Some("key.pem".into());
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("tls.cert and tls.key")
        );
        c.tls = TlsConfig {
            client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("needs tls.cert")
        );
        c.tls.cert = Some("cert.pem".into());
        c.tls.key = Some("key.pem".into());
        c.auth.tokens.clear();
        c.check().expect("client certificates authenticate");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
