//! `remotemedia`: run, validate and inspect pipelines from the command line.

mod dub;
mod output;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use remotemedia_audio::decode::{DecodeError, FileDecoder, PcmReader, TimedFrame};
use remotemedia_audio::format::SampleFormat;
use remotemedia_core::{Pipeline, Runtime, RuntimeData};
use remotemedia_runtime::Options;

use crate::output::{Format, Printer};

/// Real-time audio and AI pipelines: run a manifest over a file or stdin, check manifests,
/// and list the node types this build provides.
#[derive(Parser)]
#[command(name = "remotemedia", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Log as JSON lines instead of text (logs go to stderr).
    #[arg(long, global = true)]
    log_json: bool,
}

/// Raw PCM sample formats (little-endian, interleaved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PcmArg {
    /// Signed 16-bit.
    S16le,
    /// Signed 32-bit.
    S32le,
    /// 32-bit float.
    F32le,
}

impl From<PcmArg> for SampleFormat {
    fn from(p: PcmArg) -> Self {
        match p {
            PcmArg::S16le => SampleFormat::I16,
            PcmArg::S32le => SampleFormat::I32,
            PcmArg::F32le => SampleFormat::F32,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over an input and print or write what it produces.
    ///
    /// Without a manifest, transcribes speech: the built-in pipeline (the same as
    /// examples/transcribe.yaml) runs over -i, or over the bundled sample recording, and prints
    /// each utterance as it is recognised: `[00:01.06 → 00:02.40] ever tried`.
    ///
    /// Inputs (-i):
    ///   audio file   WAV, FLAC, MP3 or Ogg Vorbis (.wav .flac .mp3 .ogg .oga, or any file whose
    ///                content is one of these), decoded as it plays and cut into audio frames of
    ///                --frame-ms; any sample rate (1..=384000 Hz) and channel count (1..=64)
    ///   raw PCM      --pcm s16le|s32le|f32le --rate HZ [--channels N]: headerless interleaved
    ///                PCM from stdin (`-i -`, the default) or from a file
    ///   text         any other file, or stdin without --pcm: one text input per line
    ///
    /// --realtime sends each frame when a live source would have captured it, so a file plays
    /// at the speed of the clock (for honest streaming tests); otherwise input goes as fast as
    /// the pipeline takes it.
    ///
    /// Outputs (-o): text results are printed (or written to a file) as text lines, JSON lines,
    /// or SRT/WebVTT subtitles (--format); audio results go to a `.wav` file (16-bit, at the
    /// rate and channels the pipeline produces). Long files show a progress bar on stderr when
    /// it is a terminal.
    ///
    /// Examples:
    ///   remotemedia run                                   # transcribe the bundled sample
    ///   remotemedia run -i talk.mp3 --format srt -o talk.srt
    ///   remotemedia run examples/gain.yaml -i speech.flac -o quieter.wav
    ///   ffmpeg -i talk.mp4 -f s16le -ac 1 -ar 16000 - | remotemedia run pipeline.yaml --pcm s16le --rate 16000 --realtime
    ///
    /// Unreadable input (unsupported or corrupt file, no audio, absurd rate or channels) exits
    /// with code 2 and a message naming the input and the problem.
    #[command(verbatim_doc_comment)]
    Run {
        /// Pipeline manifest (YAML or JSON). Without one, the built-in speech recognition
        /// pipeline runs (examples/transcribe.yaml: resample to 16 kHz, Silero VAD,
        /// segmentation, Moonshine), over the bundled sample recording unless -i is given.
        manifest: Option<PathBuf>,
        /// Input file, or `-` for stdin (the default with a manifest).
        #[arg(short, long)]
        input: Option<String>,
        /// Where results go: `-` for stdout, a `.wav` path for audio, any other path for text.
        #[arg(short, long, default_value = "-")]
        output: String,
        /// How text results are printed.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Audio frame length when reading audio (the last frame may be shorter).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        frame_ms: u32,
        /// Read the input as headerless PCM of this sample format (needs --rate).
        #[arg(long, value_enum, requires = "rate")]
        pcm: Option<PcmArg>,
        /// Sample rate of --pcm input, in Hz.
        #[arg(long, requires = "pcm")]
        rate: Option<u32>,
        /// Interleaved channels of --pcm input.
        #[arg(long, default_value_t = 1, requires = "pcm")]
        channels: u16,
        /// Pace input at the speed of the clock, as a live source would deliver it.
        #[arg(long)]
        realtime: bool,
        /// Write the session's metrics as JSON to this file (`-` for stderr) at the end.
        #[arg(long)]
        metrics: Option<String>,
        /// Where models run: `auto` uses a CUDA GPU when this build has the `cuda` feature and
        /// ONNX Runtime offers it, else the CPU (saying why in the log); a node's `device`
        /// param overrides this.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        device: remotemedia_runtime::Device,
    },
    Dub(dub::DubArgs),
    /// Check a manifest without running it; prints every problem with its line and column.
    Validate {
        manifest: PathBuf,
    },
    /// List node types with their ports and params.
    Nodes {
        /// Full details (params JSON Schema, executors) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of manifests, for editors and CI checks.
    Schema,
    /// Serve pipelines to many clients at once over gRPC, with Prometheus metrics and health
    /// checks over HTTP.
    ///
    /// Clients stream data through sessions of the configured pipelines (one session per
    /// stream; see proto/remotemedia/v1/pipeline.proto and examples/grpc_client/). Every option
    /// lives in one TOML file (examples/server.toml documents them all); these flags override
    /// it. API tokens come from the file or REMOTEMEDIA_TOKENS (comma-separated); without
    /// tokens the server only listens on loopback addresses unless the file allows it.
    ///
    /// Without any configured pipeline, the built-in speech pipeline is served as `transcribe`.
    /// The gRPC port also has the standard health (grpc.health.v1) and reflection services;
    /// the HTTP port has /metrics, /healthz, /readyz, /v1/nodes and /v1/pipelines.
    ///
    /// Examples:
    ///   remotemedia serve                                  # 127.0.0.1:50051, HTTP on :9090
    ///   remotemedia serve --config examples/server.toml
    ///   remotemedia serve --pipeline vad=examples/energy_vad.yaml --grpc 127.0.0.1:6000
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
}

// Options of `serve`; each overrides the configuration file.
#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// gRPC address (default 127.0.0.1:50051).
    #[arg(long)]
    grpc: Option<std::net::SocketAddr>,
    /// HTTP address for metrics and health (default 127.0.0.1:9090).
    #[arg(long, conflicts_with = "no_http")]
    http: Option<std::net::SocketAddr>,
    /// No HTTP server.
    #[arg(long)]
    no_http: bool,
    /// A pipeline clients may open: NAME=MANIFEST (repeatable; adds to the file's).
    #[arg(long = "pipeline", value_name = "NAME=MANIFEST")]
    pipelines: Vec<String>,
    /// Concurrent sessions allowed.
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Let clients send their own manifests (native node types only, unless the file
    /// allows Python).
    #[arg(long)]
    allow_client_manifests: bool,
    /// Serve both ports over TLS with this certificate chain (PEM; needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by one of these CAs (PEM).
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
}

/// Exit codes: 0 success, 1 the pipeline failed while running, 2 bad manifest or arguments.
const EXIT_RUN_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Dub(args) => dub::run(args),
        Command::Schema => print_json(&remotemedia_core::manifest::json_schema()).map(|_| 0),
        Command::Nodes { json } => list_nodes(&runtime(Options::default()), json).map(|_| 0),
        Command::Validate { manifest } => match load(&runtime(Options::default()), &manifest) {
            Ok(p) => {
                println!(
                    "{}: valid ({} nodes, {} connections)",
                    manifest.display(),
                    p.nodes.len(),
                    p.edges.len()
                );
                Ok(0)
            }
            Err(e) => Err(e),
        },
        Command::Serve(args) => server_config(args).and_then(|config| {
            let runtime = runtime(Options {
                rules: config.executor_rules.clone(),
                ..Options::default()
            });
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(runtime, config))
        }),
        Command::Run {
            manifest,
            input,
            output,
            format,
            frame_ms,
            pcm,
            rate,
            channels,
            realtime,
            metrics,
            device,
        } => {
            let runtime = runtime(Options {
                device,
                ..Options::default()
            });
            let pipeline = match &manifest {
                Some(path) => ManifestSource::File(path.clone()),
                None => ManifestSource::Default,
            };
            let input = input.unwrap_or_else(|| match manifest {
                Some(_) => "-".to_string(),
                None => remotemedia_runtime::models_dir()
                    .join(DEFAULT_SAMPLE)
                    .display()
                    .to_string(),
            });
            let spec = InputSpec {
                input,
                frame_ms,
                pcm: pcm.map(|p| (p.into(), rate.unwrap_or(0), channels)),
                realtime,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| {
                    rt.block_on(run(&runtime, &pipeline, &spec, &output, format, metrics))
                })
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<Invalid>().is_some() {
                EXIT_INVALID
            } else {
                EXIT_RUN_FAILED
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// The server's configuration: the file, then the flags.
fn server_config(args: ServeArgs) -> anyhow::Result<remotemedia_server::ServerConfig> {
    let ServeArgs {
        config: path,
        grpc,
        http,
        no_http,
        pipelines,
        max_sessions,
        allow_client_manifests,
        tls_cert,
        tls_key,
        tls_client_ca,
    } = args;
    let mut config = match &path {
        Some(p) => {
            remotemedia_server::ServerConfig::from_file(p).map_err(|e| Invalid(e.to_string()))?
        }
        None => Default::default(),
    };
    if let Some(a) = grpc {
        config.grpc.listen = a;
    }
    if let Some(a) = http {
        config.http.listen = a;
        config.http.enabled = true;
    }
    if no_http {
        config.http.enabled = false;
    }
    for p in pipelines {
        let (name, file) = p
            .split_once('=')
            .ok_or_else(|| Invalid(format!("--pipeline {p}: expected NAME=MANIFEST")))?;
        config.pipelines.insert(name.to_string(), file.into());
    }
    if let Some(n) = max_sessions {
        config.limits.max_sessions = n;
    }
    config.client_manifests.allow |= allow_client_manifests;
    config.tls.cert = tls_cert.or(config.tls.cert);
    config.tls.key = tls_key.or(config.tls.key);
    config.tls.client_ca = tls_client_ca.or(config.tls.client_ca);
    if config.pipelines.is_empty() {
        config
            .manifests
            .insert("transcribe".into(), DEFAULT_PIPELINE.into());
    }
    Ok(config)
}

/// Serves until Ctrl-C or SIGTERM, then drains (up to `shutdown.drain_timeout_ms`; a second
/// signal cuts it short), ends the sessions left and stops.
async fn serve(runtime: Runtime, config: remotemedia_server::ServerConfig) -> anyhow::Result<u8> {
    let drain_timeout = Duration::from_millis(config.shutdown.drain_timeout_ms);
    let server = remotemedia_server::start(config, Arc::new(runtime))
        .await
        .map_err(|e| Invalid(format!("{e:#}")))?;
    eprintln!(
        "serving gRPC on {}{}; Ctrl-C stops",
        server.grpc_addr(),
        server
            .http_addr()
            .map(|a| format!(", metrics, health and the browser page on http://{a}/"))
            .unwrap_or_default()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut signal = async || {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    signal().await;
    eprintln!(
        "draining: no new sessions; open ones may go on for up to {:.0} s (again to stop now)",
        drain_timeout.as_secs_f64()
    );
    tokio::select! {
        _ = server.drain(drain_timeout) => {}
        _ = signal() => eprintln!("stopping now"),
    }
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(0)
}

fn parse_device(s: &str) -> Result<remotemedia_runtime::Device, String> {
    s.parse()
}

/// A problem with what the user asked for (manifest or arguments), as opposed to a run failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    // The decoder library logs an error for every file its probe does not recognise; we
    // report that ourselves (or fall back to text), so its line is noise.
    let quiet = "symphonia_core::formats::probe=off";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{filter},{quiet}")))
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,{quiet}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Every node type this binary knows: native ones, and Python ones run in worker processes.
/// Rules from the command line or configuration are checked here; a bad one exits with 2.
fn runtime(options: Options) -> Runtime {
    remotemedia_runtime::builder_with(options)
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: an executor rule's pattern is not a regular expression: {e}");
            std::process::exit(i32::from(EXIT_INVALID))
        })
}

/// The pipeline `run` uses without a manifest: the same file as the example, built in.
const DEFAULT_PIPELINE: &str = include_str!("../../../examples/transcribe.yaml");
/// The recording `run` uses without a manifest and input, in the models directory.
const DEFAULT_SAMPLE: &str = "samples/two_cities.wav";

/// Where the pipeline of `run` comes from.
enum ManifestSource {
    File(PathBuf),
    Default,
}

impl ManifestSource {
    fn load(&self, runtime: &Runtime) -> anyhow::Result<Arc<Pipeline>> {
        match self {
            ManifestSource::File(path) => load(runtime, path),
            ManifestSource::Default => runtime
                .load(
                    DEFAULT_PIPELINE,
                    "built-in pipeline (examples/transcribe.yaml)",
                )
                .map_err(|e| Invalid(e.to_string()).into()),
        }
    }
}

fn load(runtime: &Runtime, path: &Path) -> anyhow::Result<Arc<Pipeline>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Invalid(format!("cannot read manifest {}: {e}", path.display())))?;
    runtime
        .load(&text, &path.display().to_string())
        .map_err(|e| Invalid(e.to_string()).into())
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(v)?
    )?;
    Ok(())
}

/// True when the reader of our output went away (e.g. `| head`): not worth an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn list_nodes(runtime: &Runtime, json: bool) -> anyhow::Result<()> {
    let catalogue = runtime.executors().catalogue();
    if json {
        let items: Vec<serde_json::Value> = catalogue
            .iter()
            .map(|(info, executors)| {
                let mut v = serde_json::to_value(info).unwrap_or_default();
                v["executors"] = serde_json::to_value(executors).unwrap_or_default();
                v
            })
            .collect();
        return print_json(&items);
    }
    let ports = |ps: &[remotemedia_core::node::PortSpec]| {
        ps.iter()
            .map(|p| {
                let m: Vec<String> = if p.media.len() == remotemedia_core::MediaType::ALL.len() {
                    vec!["any".into()]
                } else {
                    p.media.iter().map(|m| m.to_string()).collect()
                };
                format!("{}:{}", p.name, m.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (info, executors) in &catalogue {
        let params: Vec<String> = info.params_schema["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let runs_on: Vec<String> = executors.iter().map(|e| e.to_string()).collect();
        writeln!(out, "{}  [{}]", info.name, runs_on.join(", "))?;
        writeln!(out, "    {}", info.description)?;
        writeln!(
            out,
            "    in: {}    out: {}",
            ports(&info.inputs),
            ports(&info.outputs)
        )?;
        if !params.is_empty() {
            writeln!(out, "    params: {}", params.join(", "))?;
        }
    }
    Ok(())
}

async fn run(
    runtime: &Runtime,
    manifest: &ManifestSource,
    input: &InputSpec,
    output: &str,
    format: Format,
    metrics: Option<String>,
) -> anyhow::Result<u8> {
    let pipeline = manifest.load(runtime)?;
    // Opening checks the input (format, rate, channels, first samples) before a session starts.
    let source = open_input(input)?;
    let progress = source.duration().and_then(progress_bar);
    let mut items = source.spawn();
    let mut printer = Printer::new(output, format)?;
    if let Some(bar) = &progress {
        printer.with_progress(bar.clone());
    }
    let session = runtime.open(&pipeline).await?;
    let (tx, mut rx) = session.split();

    let realtime = input.realtime;
    let feed = async move {
        let mut pacer = Pacer::default();
        while let Some(item) = items.recv().await {
            let (ts, data) = item?;
            if realtime {
                pacer.wait(ts, &data).await;
            }
            if let Some(bar) = &progress {
                bar.set_position(ts.as_millis() as u64);
                bar.set_message(output::clock(ts));
            }
            tx.send_at(data, ts).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let drain = async {
        let mut failures = 0usize;
        while let Some(item) = rx.recv().await {
            match item {
                Ok(packet) => printer.packet(&packet)?,
                Err(f) if f.fatal => {}
                Err(f) => {
                    failures += 1;
                    eprintln!("warning: {f}");
                }
            }
        }
        Ok::<_, anyhow::Error>((rx, failures))
    };
    let (fed, drained) = tokio::join!(feed, drain);
    let (rx, failures) = drained?;
    let finished = rx.finish().await;
    printer.finish()?;
    if let Some(dest) = metrics {
        let snapshot = runtime.metrics().snapshot();
        let text = serde_json::to_string_pretty(&snapshot)?;
        if dest == "-" {
            eprintln!("{text}");
        } else {
            std::fs::write(&dest, text).with_context(|| format!("writing metrics to {dest}"))?;
        }
    }
    finished?;
    fed?;
    if failures == 0 {
        return Ok(0);
    }
    eprintln!("{failures} node failure(s): inputs were lost (see the warnings above)");
    if pipeline.manifest.config.tolerate_failures {
        return Ok(0);
    }
    eprintln!("error: the run saw node failures (config.tolerate_failures: true accepts them)");
    Ok(EXIT_RUN_FAILED)
}

/// What `run` reads and how.
struct InputSpec {
    /// A path, or `-` for stdin.
    input: String,
    frame_ms: u32,
    /// Raw PCM: sample format, rate and channels.
    pcm: Option<(SampleFormat, u32, u16)>,
    realtime: bool,
}

/// Extensions that are always audio: a broken file with one of these is an error, never text.
const AUDIO_EXTENSIONS: &[&str] = &["wav", "wave", "flac", "mp3", "ogg", "oga"];
/// Extensions that are always text, so they are never probed as audio.
const TEXT_EXTENSIONS: &[&str] = &[
    "txt", "text", "md", "csv", "tsv", "json", "jsonl", "ndjson", "yaml", "yml", "log",
];

type Frames = Box<dyn Iterator<Item = Result<TimedFrame, DecodeError>> + Send>;

/// Files at least this long get a progress bar (when stderr is a terminal).
const PROGRESS_MIN: Duration = Duration::from_secs(30);

/// A progress bar over the media time of a long file, drawn on stderr only when it is a
/// terminal (never into pipes, logs or CI output).
fn progress_bar(total: Duration) -> Option<indicatif::ProgressBar> {
    if total < PROGRESS_MIN || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} / {prefix} [{wide_bar}] {percent}%  elapsed {elapsed}",
    )
    .ok()?;
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(output::clock(total));
    Some(bar)
}

/// An opened input, ready to be read on its own thread.
enum Source {
    /// Frames, and the playing time when the container states it.
    Audio(Frames, Option<Duration>),
    Text {
        reader: Box<dyn BufRead + Send>,
        name: String,
    },
}

/// A bad input file or stream: exit code 2, like a bad manifest.
fn unreadable(e: DecodeError) -> anyhow::Error {
    Invalid(format!("cannot read input: {e}")).into()
}

fn open_input(spec: &InputSpec) -> anyhow::Result<Source> {
    let input = spec.input.as_str();
    if let Some((format, rate, channels)) = spec.pcm {
        let (reader, name): (Box<dyn std::io::Read + Send>, &str) = if input == "-" {
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "reading raw {} PCM from the terminal; pipe audio in instead",
                    format.name()
                );
            }
            (Box::new(std::io::stdin()), "stdin")
        } else {
            let file = std::fs::File::open(input)
                .map_err(|e| Invalid(format!("cannot open input {input}: {e}")))?;
            (Box::new(file), input)
        };
        let pcm = PcmReader::new(reader, name, format, rate, channels, spec.frame_ms)
            .map_err(unreadable)?;
        return Ok(Source::Audio(Box::new(pcm), None));
    }
    if input == "-" {
        if std::io::stdin().is_terminal() {
            eprintln!("reading text from the terminal, one input per line; end with Ctrl-D");
        }
        return Ok(Source::Text {
            reader: Box::new(std::io::BufReader::new(std::io::stdin())),
            name: "stdin".into(),
        });
    }
    let path = Path::new(input);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let is = |list: &[&str]| list.contains(&ext.as_str());
    if !is(TEXT_EXTENSIONS) {
        match FileDecoder::open(path, spec.frame_ms) {
            Ok(decoder) => {
                let info = decoder.info();
                tracing::info!(
                    input,
                    format = %info.format,
                    sample_rate = info.sample_rate,
                    channels = info.channels,
                    duration = ?info.duration,
                    "decoding audio"
                );
                let duration = info.duration;
                return Ok(Source::Audio(Box::new(decoder), duration));
            }
            // Not audio after all: an unknown extension falls back to text lines.
            Err(DecodeError::UnsupportedFormat { .. } | DecodeError::Empty { .. })
                if !is(AUDIO_EXTENSIONS) => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    let file = std::fs::File::open(input)
        .map_err(|e| Invalid(format!("cannot open input {input}: {e}")))?;
    Ok(Source::Text {
        reader: Box::new(std::io::BufReader::new(file)),
        name: input.to_string(),
    })
}

type Item = anyhow::Result<(Duration, RuntimeData)>;

impl Source {
    fn duration(&self) -> Option<Duration> {
        match self {
            Source::Audio(_, d) => *d,
            Source::Text { .. } => None,
        }
    }

    /// Reads on a thread of its own (file and pipe reads block), handing items over a small
    /// bounded channel: the session's backpressure reaches the reader, and the first frame
    /// flows as soon as it is decoded. A plain thread, not the runtime's blocking pool, so a
    /// read stuck on a silent stdin never holds the process open at exit.
    fn spawn(self) -> tokio::sync::mpsc::Receiver<Item> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || match self {
            Source::Audio(frames, _) => {
                for item in frames {
                    let item = item
                        .map(|(ts, frame)| (ts, RuntimeData::Audio(frame)))
                        .map_err(unreadable);
                    if tx.blocking_send(item).is_err() {
                        return; // the session ended; stop reading
                    }
                }
            }
            Source::Text { reader, name } => {
                let start = Instant::now();
                let mut any = false;
                for line in reader.lines() {
                    let item = line
                        .map(|l| (start.elapsed(), RuntimeData::text(l)))
                        .with_context(|| format!("reading {name}"));
                    any = true;
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
                if !any {
                    let _ = tx.blocking_send(Err(Invalid(format!("input {name} is empty")).into()));
                }
            }
        });
        rx
    }
}

/// Sends each item when a live source would have delivered it: an audio frame once its last
/// sample was captured, text at its timestamp. Deadlines come from one clock started at the
/// first item, so sleeping late once never shifts the ones after (no cumulative drift).
#[derive(Default)]
struct Pacer {
    origin: Option<(tokio::time::Instant, Duration)>,
}

impl Pacer {
    async fn wait(&mut self, ts: Duration, data: &RuntimeData) {
        let (start, first) = *self
            .origin
            .get_or_insert_with(|| (tokio::time::Instant::now(), ts));
        let end = ts + data.as_audio().map_or(Duration::ZERO, |a| a.duration());
        tokio::time::sleep_until(start + end.saturating_sub(first)).await;
    }
}
