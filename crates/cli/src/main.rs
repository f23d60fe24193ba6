//! `remotemedia`: run, validate and inspect pipelines from the command line.

mod output;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use remotemedia_core::{ExecutorRegistry, NodeRegistry, Pipeline, Runtime, RuntimeData};

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

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over an input and print or write what it produces.
    ///
    /// Inputs: a `.wav` file is cut into audio frames of --frame-ms; any other file, or `-`
    /// for stdin, is read as one text input per line. Text outputs are printed; audio outputs
    /// go to --output when it ends in `.wav`.
    Run {
        /// Pipeline manifest (YAML or JSON).
        manifest: PathBuf,
        /// Input file, or `-` for stdin.
        #[arg(short, long, default_value = "-")]
        input: String,
        /// Where results go: `-` for stdout, a `.wav` path for audio, any other path for text.
        #[arg(short, long, default_value = "-")]
        output: String,
        /// How text results are printed.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Audio frame length when reading audio files.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        frame_ms: u32,
        /// Write the session's metrics as JSON to this file (`-` for stderr) at the end.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Check a manifest without running it; prints every problem with its line and column.
    Validate { manifest: PathBuf },
    /// List node types with their ports and params.
    Nodes {
        /// Full details (params JSON Schema, executors) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of manifests, for editors and CI checks.
    Schema,
}

/// Exit codes: 0 success, 1 the pipeline failed while running, 2 bad manifest or arguments.
const EXIT_RUN_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let runtime = runtime();
    let result = match cli.command {
        Command::Schema => print_json(&remotemedia_core::manifest::json_schema()).map(|_| 0),
        Command::Nodes { json } => list_nodes(&runtime, json).map(|_| 0),
        Command::Validate { manifest } => match load(&runtime, &manifest) {
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
        Command::Run {
            manifest,
            input,
            output,
            format,
            frame_ms,
            metrics,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| {
                rt.block_on(run(
                    &runtime, &manifest, &input, &output, format, frame_ms, metrics,
                ))
            }),
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

/// A problem with what the user asked for (manifest or arguments), as opposed to a run failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Every node type this binary knows.
fn runtime() -> Runtime {
    let mut nodes = NodeRegistry::with_builtins();
    remotemedia_audio::register(&mut nodes);
    remotemedia_speech::register(&mut nodes);
    let mut executors = ExecutorRegistry::new();
    executors.add_executor(Arc::new(nodes));
    Runtime::new(executors)
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
    manifest: &Path,
    input: &str,
    output: &str,
    format: Format,
    frame_ms: u32,
    metrics: Option<String>,
) -> anyhow::Result<u8> {
    let pipeline = load(runtime, manifest)?;
    let inputs = read_inputs(input, frame_ms)?;
    let mut printer = Printer::new(output, format)?;
    let session = runtime.open(&pipeline).await?;
    let (tx, mut rx) = session.split();

    let feed = async move {
        for (ts, data) in inputs {
            tx.send_at(data, ts).await?;
        }
        Ok::<_, remotemedia_core::SessionError>(())
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
    if failures > 0 {
        eprintln!("{failures} input(s) failed and were skipped (see warnings above)");
    }
    Ok(0)
}

/// Reads the whole input into timed data: audio frames from a WAV, lines of text otherwise.
fn read_inputs(
    input: &str,
    frame_ms: u32,
) -> anyhow::Result<Vec<(std::time::Duration, RuntimeData)>> {
    let is_wav = Path::new(input)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        let decoded = remotemedia_audio::wav::read_wav(Path::new(input))
            .map_err(|e| Invalid(format!("cannot read input: {e}")))?;
        return Ok(decoded
            .frames(frame_ms)
            .into_iter()
            .map(|(ts, f)| (ts, RuntimeData::Audio(f)))
            .collect());
    }
    let reader: Box<dyn BufRead> = if input == "-" {
        if std::io::stdin().is_terminal() {
            eprintln!("reading text from the terminal, one input per line; end with Ctrl-D");
        }
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input)
            .map_err(|e| Invalid(format!("cannot open input {input}: {e}")))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {input}"))?;
        out.push((start.elapsed(), RuntimeData::text(line)));
    }
    if out.is_empty() {
        bail!(Invalid(format!("input {input} is empty")));
    }
    Ok(out)
}
