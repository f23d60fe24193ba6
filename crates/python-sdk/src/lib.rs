//! `remotemedia._native`: the Rust runtime as a Python extension module.
//!
//! The Python SDK (`python/remotemedia/pipeline.py`) wraps it; this module keeps to a few plain
//! calls. Pipelines are validated by the same code as the CLI (errors raise `ManifestError` with
//! the same `origin:line:column` message), run on one process-wide tokio runtime with the GIL
//! released, and audio crosses in both directions without a copy: a float32 numpy array is lent
//! to the runtime as it is, and output audio comes back as a read-only numpy view of the
//! runtime's buffer.

mod dub;
mod link;

use std::sync::{Arc, Mutex, OnceLock};

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use remotemedia_core::{
    Control, ForeignSamples, LoadError, ManifestPolicy, NodeFailure, Packet, Pipeline, Runtime,
    RuntimeData, Samples, SessionCanceller, SessionInput, SessionOutput, TextFrame,
};

pyo3::create_exception!(
    _native,
    ManifestError,
    PyValueError,
    "A manifest that does not validate; the message names each problem with origin:line:column."
);
pyo3::create_exception!(
    _native,
    PolicyError,
    pyo3::exceptions::PyPermissionError,
    "An untrusted manifest that the policy refuses; nothing of it was loaded or run."
);
pyo3::create_exception!(
    _native,
    PipelineError,
    PyRuntimeError,
    "A pipeline that could not start or failed fatally while running."
);

/// The runtime every pipeline of the process shares: the same node types as the CLI, models
/// in one pool, and one tokio runtime.
struct Native {
    runtime: Runtime,
    tokio: tokio::runtime::Runtime,
}

fn native(py: Python<'_>) -> PyResult<&'static Native> {
    static NATIVE: OnceLock<Result<Native, String>> = OnceLock::new();
    // Python nodes run in workers of this very interpreter (unless REMOTEMEDIA_PYTHON says).
    let python: Option<String> = match std::env::var_os("REMOTEMEDIA_PYTHON") {
        Some(_) => None,
        None => py.import("sys")?.getattr("executable")?.extract().ok(),
    };
    NATIVE
        .get_or_init(|| {
            let runtime = remotemedia_runtime::builder_with(remotemedia_runtime::Options {
                python: python.filter(|p| !p.is_empty()).map(Into::into),
                ..Default::default()
            })
            .build()
            .map_err(|e| e.to_string())?;
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("remotemedia")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            Ok(Native { runtime, tokio })
        })
        .as_ref()
        .map_err(|e| PipelineError::new_err(e.clone()))
}

/// A numpy array's memory, lent to the runtime. The array object is kept alive (and its data
/// cannot be reallocated while referenced), so the slice stays valid; the runtime only reads it.
struct NumpySamples {
    _owner: Py<PyArray1<f32>>,
    ptr: *const f32,
    len: usize,
}

// SAFETY: the runtime only reads the buffer, which the owner keeps alive and in place; the
// owner itself is released through pyo3's reference pool when dropped without the GIL.
unsafe impl Send for NumpySamples {}
unsafe impl Sync for NumpySamples {}

impl ForeignSamples for NumpySamples {
    fn samples(&self) -> &[f32] {
        // SAFETY: see the type's comment.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The base object of output arrays: holds the runtime's buffer while numpy views it.
#[pyclass(frozen, module = "remotemedia._native")]
struct SampleBuffer {
    _samples: Samples,
}

/// An input as the SDK passes it: `("audio", float32 array, rate, channels)`, `("text", str)`,
/// `("json", str)` or `("binary", bytes)`.
fn data_in(item: &Bound<'_, PyAny>) -> PyResult<RuntimeData> {
    let t = item.cast::<PyTuple>()?;
    let kind: String = t.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "audio" => {
            let any = t.get_item(1)?;
            let array = any.cast::<PyArray1<f32>>().map_err(|_| {
                PyTypeError::new_err("audio samples must be a 1-D float32 numpy array")
            })?;
            if !array.is_c_contiguous() {
                return Err(PyTypeError::new_err("audio samples must be C-contiguous"));
            }
            let rate: u32 = t.get_item(2)?.extract()?;
            let channels: u16 = t.get_item(3)?.extract()?;
            if rate == 0 || rate > 384_000 || channels == 0 || channels > 64 {
                return Err(PyValueError::new_err(format!(
                    "audio at {rate} Hz with {channels} channels: the rate must be 1..=384000 \
                     and the channels 1..=64"
                )));
            }
            if array.len() % usize::from(channels) != 0 {
                return Err(PyValueError::new_err(format!(
                    "{} samples are not whole frames of {channels} interleaved channels",
                    array.len()
                )));
            }
            let lent = NumpySamples {
                ptr: array.data() as *const f32,
                len: array.len(),
                _owner: array.clone().unbind(),
            };
            RuntimeData::audio(Samples::foreign(Arc::new(lent)), rate, channels)
        }
        "text" => RuntimeData::text(t.get_item(1)?.extract::<String>()?),
        "json" => {
            let text: String = t.get_item(1)?.extract()?;
            let v = serde_json::from_str(&text)
                .map_err(|e| PyValueError::new_err(format!("not JSON: {e}")))?;
            RuntimeData::json(v)
        }
        "binary" => RuntimeData::Binary(t.get_item(1)?.extract::<Vec<u8>>()?.into()),
        "flush" => RuntimeData::Control(Control::Flush),
        "cancel" => RuntimeData::Control(Control::Cancel {
            reason: t.get_item(1)?.extract::<String>()?.into(),
        }),
        other => {
            return Err(PyTypeError::new_err(format!(
                "unknown input kind `{other}` (audio, text, json, binary, flush, cancel)"
            )));
        }
    })
}

/// An output as the SDK reads it: `(node, port, timestamp_s, kind, value, extra)`.
fn data_out<'py>(py: Python<'py>, p: &Packet) -> PyResult<Bound<'py, PyTuple>> {
    let ts = p.timestamp.as_secs_f64();
    let (kind, value, extra): (&str, Bound<'py, PyAny>, Bound<'py, PyAny>) = match &p.data {
        RuntimeData::Audio(a) => {
            let base = Bound::new(
                py,
                SampleBuffer {
                    _samples: a.shared_samples().clone(),
                },
            )?;
            // The packet's samples and the base's clone are one buffer.
            let view = ArrayView1::from(a.samples());
            // SAFETY: `base` keeps the buffer the view points into alive, as the array's base.
            let array = unsafe { PyArray1::borrow_from_array(&view, base.into_any()) };
            array.readwrite().make_nonwriteable();
            let extra = (a.sample_rate, a.channels).into_pyobject(py)?.into_any();
            ("audio", array.into_any(), extra)
        }
        RuntimeData::Text(TextFrame {
            text,
            is_final,
            span,
        }) => {
            let span = span.map(|(s, e)| (s.as_secs_f64(), e.as_secs_f64()));
            let extra = (*is_final, span).into_pyobject(py)?.into_any();
            ("text", text.into_pyobject(py)?.into_any(), extra)
        }
        RuntimeData::Json(v) => (
            "json",
            v.to_string().into_pyobject(py)?.into_any(),
            py.None().into_bound(py),
        ),
        RuntimeData::Binary(b) => (
            "binary",
            PyBytes::new(py, b).into_any(),
            py.None().into_bound(py),
        ),
        other => (
            "other",
            format!("{other:?}").into_pyobject(py)?.into_any(),
            py.None().into_bound(py),
        ),
    };
    (
        p.source.to_string(),
        p.port.to_string(),
        ts,
        kind,
        value,
        extra,
    )
        .into_pyobject(py)
}

fn failure_out<'py>(py: Python<'py>, f: &NodeFailure) -> PyResult<Bound<'py, PyTuple>> {
    (
        f.node_id.to_string(),
        f.node_type.clone(),
        f.message.clone(),
        f.fatal,
    )
        .into_pyobject(py)
}

type Tuples<'py> = Vec<Bound<'py, PyTuple>>;

/// A validated pipeline.
#[pyclass(frozen, module = "remotemedia._native")]
struct NativePipeline {
    pipeline: Arc<Pipeline>,
}

#[pymethods]
impl NativePipeline {
    /// Validates manifest text (YAML or JSON); `origin` names it in error messages. With
    /// `policy` (a JSON object of `ManifestPolicy` fields) the text is untrusted: the policy
    /// is checked before any node type is resolved, and a refusal raises `PolicyError`.
    #[new]
    #[pyo3(signature = (text, origin, policy=None))]
    fn new(py: Python<'_>, text: &str, origin: &str, policy: Option<&str>) -> PyResult<Self> {
        let runtime = &native(py)?.runtime;
        let pipeline = match policy {
            None => runtime
                .load(text, origin)
                .map_err(|e| ManifestError::new_err(e.to_string()))?,
            Some(policy) => {
                let policy: ManifestPolicy = serde_json::from_str(policy)
                    .map_err(|e| PyValueError::new_err(format!("policy: {e}")))?;
                py.detach(|| runtime.load_untrusted(text, origin, &policy))
                    .map_err(|e| match e {
                        LoadError::Refused(e) => PolicyError::new_err(e.to_string()),
                        other => ManifestError::new_err(other.to_string()),
                    })?
            }
        };
        Ok(Self { pipeline })
    }

    /// Node ids in manifest order.
    fn node_ids(&self) -> Vec<String> {
        self.pipeline
            .nodes
            .iter()
            .map(|n| n.id.to_string())
            .collect()
    }

    /// Starts a streaming session.
    fn open_session(&self, py: Python<'_>) -> PyResult<NativeSession> {
        let native = native(py)?;
        let session = py
            .detach(|| native.tokio.block_on(native.runtime.open(&self.pipeline)))
            .map_err(|e| PipelineError::new_err(e.to_string()))?;
        let id = session.id().to_string();
        let (input, output) = session.split();
        Ok(NativeSession {
            id,
            canceller: output.canceller(),
            input: Mutex::new(Some(input)),
            output: tokio::sync::Mutex::new(Some(output)),
        })
    }

    /// Runs one session over `inputs`, ends its input and returns `(outputs, failures)`. The
    /// GIL is released while the pipeline runs.
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<(Tuples<'py>, Tuples<'py>)> {
        let data = inputs.iter().map(data_in).collect::<PyResult<Vec<_>>>()?;
        let native = native(py)?;
        let pipeline = Arc::clone(&self.pipeline);
        let (packets, failures) = py
            .detach(|| native.tokio.block_on(run(&native.runtime, &pipeline, data)))
            .map_err(PipelineError::new_err)?;
        let outputs = packets
            .iter()
            .map(|p| data_out(py, p))
            .collect::<PyResult<_>>()?;
        let failures = failures
            .iter()
            .map(|f| failure_out(py, f))
            .collect::<PyResult<_>>()?;
        Ok((outputs, failures))
    }
}

/// A live session: inputs go in as they come, outputs are read as they are produced. Each call
/// releases the GIL while it waits; sending and receiving may happen on different threads.
#[pyclass(frozen, module = "remotemedia._native")]
struct NativeSession {
    id: String,
    input: Mutex<Option<SessionInput>>,
    output: tokio::sync::Mutex<Option<SessionOutput>>,
    /// Cancels the session from any thread, even while another waits in `recv` or `send`.
    canceller: SessionCanceller,
}

#[pymethods]
impl NativeSession {
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Sends one input (or to one node: `target` is `node` or `node.port`); waits while the
    /// pipeline is busy.
    #[pyo3(signature = (item, target=None))]
    fn send(
        &self,
        py: Python<'_>,
        item: &Bound<'_, PyAny>,
        target: Option<String>,
    ) -> PyResult<()> {
        let data = data_in(item)?;
        let native = native(py)?;
        let input = self
            .input
            .lock()
            .map_err(|_| PipelineError::new_err("session lock poisoned"))?;
        let Some(input) = input.as_ref() else {
            return Err(PipelineError::new_err("the session's input is closed"));
        };
        py.detach(|| {
            native.tokio.block_on(async {
                match target {
                    Some(t) => input.send_to(&t, data).await,
                    None => input.send(data).await,
                }
            })
        })
        .map_err(|e| PipelineError::new_err(e.to_string()))
    }

    /// Ends the input: nodes flush, the remaining outputs arrive, then `recv` returns None.
    fn close_input(&self) {
        if let Ok(mut input) = self.input.lock() {
            input.take();
        }
    }

    /// The next output `(True, output)` or failure `(False, failure)`, or None once the
    /// session has ended; `TimeoutError` after `timeout` seconds without either.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(bool, Bound<'py, PyTuple>)>> {
        let native = native(py)?;
        let item = py.detach(|| {
            native.tokio.block_on(async {
                let mut output = self.output.lock().await;
                let Some(out) = output.as_mut() else {
                    return Ok(None);
                };
                let next = out.recv();
                match timeout {
                    Some(t) => {
                        tokio::time::timeout(std::time::Duration::from_secs_f64(t.max(0.0)), next)
                            .await
                            .map_err(|_| ())
                    }
                    None => Ok(next.await),
                }
            })
        });
        match item {
            Err(()) => Err(pyo3::exceptions::PyTimeoutError::new_err("no output yet")),
            Ok(None) => Ok(None),
            Ok(Some(Ok(p))) => Ok(Some((true, data_out(py, &p)?))),
            Ok(Some(Err(f))) => Ok(Some((false, failure_out(py, &f)?))),
        }
    }

    /// Stops every node now; queued data is discarded and `recv` soon returns None.
    fn cancel(&self) {
        self.canceller.cancel();
        self.close_input();
    }

    /// This session's metrics as JSON (while its input is open).
    fn metrics_json(&self) -> PyResult<String> {
        let input = self
            .input
            .lock()
            .map_err(|_| PipelineError::new_err("session lock poisoned"))?;
        let snapshot = input
            .as_ref()
            .map(|i| i.metrics())
            .ok_or_else(|| PipelineError::new_err("the session's input is closed"))?;
        serde_json::to_string(&snapshot).map_err(|e| PipelineError::new_err(e.to_string()))
    }
}

async fn run(
    runtime: &Runtime,
    pipeline: &Arc<Pipeline>,
    inputs: Vec<RuntimeData>,
) -> Result<(Vec<Packet>, Vec<NodeFailure>), String> {
    let (input, mut output) = runtime
        .open(pipeline)
        .await
        .map_err(|e| e.to_string())?
        .split();
    let feed = async move {
        for data in inputs {
            input.send(data).await?;
        }
        Ok::<_, remotemedia_core::SessionError>(())
    };
    let collect = async {
        let (mut packets, mut failures) = (Vec::new(), Vec::new());
        while let Some(item) = output.recv().await {
            match item {
                Ok(p) => packets.push(p),
                Err(f) => failures.push(f),
            }
        }
        (packets, failures)
    };
    let (fed, (packets, failures)) = tokio::join!(feed, collect);
    let _ = output.finish().await;
    match fed {
        Err(e) if !failures.iter().any(|f| f.fatal) => Err(e.to_string()),
        _ => Ok((packets, failures)),
    }
}

/// The process's metrics snapshot as JSON (what the CLI's `--metrics` writes).
#[pyfunction]
fn metrics_json(py: Python<'_>) -> PyResult<String> {
    let snapshot = native(py)?.runtime.metrics().snapshot();
    serde_json::to_string(&snapshot).map_err(|e| PipelineError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ManifestError", m.py().get_type::<ManifestError>())?;
    m.add("PipelineError", m.py().get_type::<PipelineError>())?;
    m.add("PolicyError", m.py().get_type::<PolicyError>())?;
    m.add_class::<NativePipeline>()?;
    m.add_class::<NativeSession>()?;
    m.add_class::<SampleBuffer>()?;
    m.add_class::<link::WorkerLink>()?;
    m.add_function(wrap_pyfunction!(metrics_json, m)?)?;
    m.add("DubError", m.py().get_type::<dub::DubError>())?;
    m.add_function(wrap_pyfunction!(dub::dub, m)?)?;
    Ok(())
}
