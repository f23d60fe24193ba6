//! `WorkerLink`: the Python worker's end of its shared-memory link, in Rust. Frames are parsed
//! and written here (the layout is `remotemedia_python_executor::frame`'s), audio reaches
//! Python as a read-only numpy view of the shared-memory sample, and nothing on the way costs
//! a Python-level loop: the round trip's hot path.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use remotemedia_python_executor::frame::{Encoded, FrameError, Head, parse};
use remotemedia_python_executor::ipc::{IpcError, ServiceNames, WorkerEnd, WorkerSample};

fn ipc_err(e: IpcError) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

fn frame_err(e: FrameError) -> PyErr {
    PyValueError::new_err(format!("malformed frame from the runtime: {e}"))
}

/// Holds a received sample while numpy views its audio.
#[pyclass(frozen, module = "remotemedia._native")]
struct HeldSample {
    _sample: std::sync::Mutex<WorkerSample>,
    borrowed: Arc<AtomicUsize>,
}

impl Drop for HeldSample {
    fn drop(&mut self) {
        self.borrowed.fetch_sub(1, Relaxed);
    }
}

/// The classes of `remotemedia.data` and the functions the codec calls.
struct Classes {
    audio: Py<PyAny>,
    text: Py<PyAny>,
    json: Py<PyAny>,
    binary: Py<PyAny>,
    image: Py<PyAny>,
    control: Py<PyAny>,
    loads: Py<PyAny>,
    dumps: Py<PyAny>,
    contiguous: Py<PyAny>,
}

/// The worker's end of the link to the runtime.
#[pyclass(frozen, module = "remotemedia._native")]
pub struct WorkerLink {
    end: WorkerEnd,
    session: Vec<u8>,
    max_frame: usize,
    /// Received samples numpy still views, and how many may be (past it, audio is copied so
    /// receiving never stalls on a node that keeps its inputs).
    borrowed: Arc<AtomicUsize>,
    max_borrowed: usize,
    classes: Classes,
}

const CONTROL_NAMES: [&str; 3] = ["flush", "cancel", "end_of_stream"];

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn duration(secs: Option<f64>) -> Option<Duration> {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[pymethods]
impl WorkerLink {
    /// Opens the services `<service>/in` and `<service>/out` the runtime created.
    #[new]
    fn new(
        py: Python<'_>,
        service: &str,
        session: &str,
        max_frame: usize,
        max_borrowed: usize,
    ) -> PyResult<Self> {
        let end = WorkerEnd::open(&ServiceNames {
            prefix: service.to_string(),
        })
        .map_err(ipc_err)?;
        let data = py.import("remotemedia.data")?;
        let json = py.import("json")?;
        let numpy = py.import("numpy")?;
        let get = |m: &Bound<'_, PyModule>, name: &str| m.getattr(name).map(Bound::unbind);
        Ok(Self {
            end,
            session: session.as_bytes().to_vec(),
            max_frame,
            borrowed: Arc::new(AtomicUsize::new(0)),
            max_borrowed,
            classes: Classes {
                audio: get(&data, "Audio")?,
                text: get(&data, "Text")?,
                json: get(&data, "Json")?,
                binary: get(&data, "Binary")?,
                image: get(&data, "Image")?,
                control: get(&data, "Control")?,
                loads: get(&json, "loads")?,
                dumps: get(&json, "dumps")?,
                contiguous: get(&numpy, "ascontiguousarray")?,
            },
        })
    }

    /// The socket that becomes readable when the runtime has sent frames.
    fn fileno(&self) -> i32 {
        self.end.fd()
    }

    /// Consumes the wake-ups received so far.
    fn clear_events(&self) -> PyResult<()> {
        self.end.clear_events().map_err(ipc_err)
    }

    /// The next frame as `(msg, flags, port, seq, timestamp, session, data)`, or None.
    #[allow(clippy::type_complexity)]
    fn receive<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(u8, u8, u16, u64, Option<f64>, String, Bound<'py, PyAny>)>> {
        let Some(sample) = self.end.receive().map_err(ipc_err)? else {
            return Ok(None);
        };
        let parts = parse(sample.payload()).map_err(frame_err)?;
        let (head, session) = (parts.head, parts.session.to_string());
        let ts = secs(head.timestamp);
        let c = &self.classes;
        let data = match head.kind {
            0 => py.None().into_bound(py),
            1 => {
                let (meta, body) = (parts.meta, parts.body);
                if meta.len() != 6 || body.len() % 4 != 0 {
                    return Err(frame_err(FrameError::Meta("audio")));
                }
                let rate = u32::from_le_bytes([meta[0], meta[1], meta[2], meta[3]]);
                let channels = u16::from_le_bytes([meta[4], meta[5]]);
                // SAFETY: the payload starts on an 8-byte boundary (the frame layout) and holds
                // body.len() / 4 little-endian f32s; every bit pattern is a valid f32.
                let view = unsafe {
                    ArrayView1::from_shape_ptr(body.len() / 4, body.as_ptr().cast::<f32>())
                };
                let array = if self.borrowed.fetch_add(1, Relaxed) < self.max_borrowed {
                    let held = Bound::new(
                        py,
                        HeldSample {
                            _sample: std::sync::Mutex::new(sample),
                            borrowed: Arc::clone(&self.borrowed),
                        },
                    )?;
                    // SAFETY: `held` keeps the sample the view points into alive, as the
                    // array's base.
                    let a = unsafe { PyArray1::borrow_from_array(&view, held.into_any()) };
                    a.readwrite().make_nonwriteable();
                    a
                } else {
                    self.borrowed.fetch_sub(1, Relaxed);
                    PyArray1::from_array(py, &view)
                };
                c.audio.bind(py).call1((array, rate, channels, ts))?
            }
            2 => {
                let (meta, body) = (parts.meta, parts.body);
                if meta.len() != 24 {
                    return Err(frame_err(FrameError::Meta("text")));
                }
                let at = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&meta[i..i + 8]);
                    u64::from_le_bytes(b) as f64 / 1e9
                };
                let span = (meta[1] != 0).then(|| (at(8), at(16)));
                let text =
                    std::str::from_utf8(body).map_err(|_| frame_err(FrameError::Utf8("text")))?;
                c.text.bind(py).call1((text, meta[0] != 0, span, ts))?
            }
            3 => {
                let body = std::str::from_utf8(parts.body)
                    .map_err(|_| frame_err(FrameError::Utf8("JSON")))?;
                let value = c.loads.bind(py).call1((body,))?;
                c.json.bind(py).call1((value, ts))?
            }
            4 => c
                .binary
                .bind(py)
                .call1((PyBytes::new(py, parts.body), ts))?,
            5 => {
                let meta = parts.meta;
                if meta.len() < 8 {
                    return Err(frame_err(FrameError::Meta("image")));
                }
                let w = u32::from_le_bytes([meta[0], meta[1], meta[2], meta[3]]);
                let h = u32::from_le_bytes([meta[4], meta[5], meta[6], meta[7]]);
                let format = std::str::from_utf8(&meta[8..])
                    .map_err(|_| frame_err(FrameError::Utf8("image format")))?;
                c.image
                    .bind(py)
                    .call1((w, h, format, PyBytes::new(py, parts.body), ts))?
            }
            6 => {
                let code = parts.meta.first().copied().unwrap_or(0);
                let name = CONTROL_NAMES
                    .get(usize::from(code).wrapping_sub(1))
                    .copied()
                    .unwrap_or("?");
                let reason = String::from_utf8_lossy(parts.body);
                c.control.bind(py).call1((name, reason, ts))?
            }
            other => return Err(frame_err(FrameError::Kind(other))),
        };
        Ok(Some((
            head.msg, head.flags, head.port, head.seq, ts, session, data,
        )))
    }

    /// Writes a frame: `data` (a `remotemedia.data` value) or, without data, `error` as the
    /// payload. Does not wake the runtime: call `notify`.
    #[pyo3(signature = (msg, seq, data=None, port=0, timestamp=None, flags=0, error=""))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        msg: u8,
        seq: u64,
        data: Option<&Bound<'_, PyAny>>,
        port: u16,
        timestamp: Option<f64>,
        flags: u8,
        error: &str,
    ) -> PyResult<()> {
        let c = &self.classes;
        let mut head = Head {
            msg,
            kind: 0,
            flags,
            port,
            seq,
            timestamp: duration(timestamp),
        };
        // Audio is written from the array Python owns, which stays alive until then.
        let keep: Bound<'_, PyAny>;
        let text = |v: Bound<'_, PyAny>| -> PyResult<Cow<'static, [u8]>> {
            Ok(Cow::Owned(v.extract::<String>()?.into_bytes()))
        };
        let bytes = |v: Bound<'_, PyAny>| -> PyResult<Cow<'static, [u8]>> {
            let b = py.get_type::<PyBytes>().call1((v,))?;
            Ok(Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()))
        };
        let (meta, body): (Vec<u8>, Cow<'_, [u8]>) = match data {
            None => (Vec::new(), Cow::Borrowed(error.as_bytes())),
            Some(d) if d.is_instance(c.audio.bind(py))? => {
                head.kind = 1;
                let rate: u32 = d.getattr("sample_rate")?.extract()?;
                let channels: u16 = d.getattr("channels")?.extract()?;
                let samples = d.getattr("samples")?;
                // Usually already a contiguous float32 array (an input's view, a model's output);
                // numpy converts anything else.
                let ready = samples
                    .cast::<numpy::PyArrayDyn<f32>>()
                    .is_ok_and(|a| a.is_c_contiguous());
                keep = if ready {
                    samples
                } else {
                    let kw = PyDict::new(py);
                    kw.set_item("dtype", "<f4")?;
                    c.contiguous.bind(py).call((samples,), Some(&kw))?
                };
                let array = keep.cast::<numpy::PyArrayDyn<f32>>()?;
                // SAFETY: a C-contiguous f32 array, not written while the frame is (the GIL is
                // held).
                let samples = unsafe { std::slice::from_raw_parts(array.data(), array.len()) };
                let bytes = unsafe {
                    std::slice::from_raw_parts(samples.as_ptr().cast::<u8>(), samples.len() * 4)
                };
                let mut meta = rate.to_le_bytes().to_vec();
                meta.extend_from_slice(&channels.to_le_bytes());
                (meta, Cow::Borrowed(bytes))
            }
            Some(d) if d.is_instance(c.text.bind(py))? => {
                head.kind = 2;
                let is_final: bool = d.getattr("is_final")?.extract()?;
                let span: Option<(f64, f64)> = d.getattr("span")?.extract()?;
                let ns = |s: f64| duration(Some(s)).map_or(0, |d| d.as_nanos() as u64);
                let mut meta = vec![
                    u8::from(is_final),
                    u8::from(span.is_some()),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ];
                let (start, end) = span.unwrap_or((0.0, 0.0));
                meta.extend_from_slice(&ns(start).to_le_bytes());
                meta.extend_from_slice(&ns(end).to_le_bytes());
                (meta, text(d.getattr("text")?)?)
            }
            Some(d) if d.is_instance(c.json.bind(py))? => {
                head.kind = 3;
                let kw = PyDict::new(py);
                kw.set_item("separators", (",", ":"))?;
                (
                    Vec::new(),
                    text(c.dumps.bind(py).call((d.getattr("value")?,), Some(&kw))?)?,
                )
            }
            Some(d) if d.is_instance(c.binary.bind(py))? => {
                head.kind = 4;
                (Vec::new(), bytes(d.getattr("data")?)?)
            }
            Some(d) if d.is_instance(c.image.bind(py))? => {
                head.kind = 5;
                let w: u32 = d.getattr("width")?.extract()?;
                let h: u32 = d.getattr("height")?.extract()?;
                let format: String = d.getattr("format")?.extract()?;
                let mut meta = w.to_le_bytes().to_vec();
                meta.extend_from_slice(&h.to_le_bytes());
                meta.extend_from_slice(format.as_bytes());
                (meta, bytes(d.getattr("data")?)?)
            }
            Some(d) if d.is_instance(c.control.bind(py))? => {
                head.kind = 6;
                let kind: String = d.getattr("kind")?.extract()?;
                let code = CONTROL_NAMES
                    .iter()
                    .position(|n| *n == kind)
                    .ok_or_else(|| PyValueError::new_err(format!("unknown control {kind:?}")))?;
                (vec![code as u8 + 1], text(d.getattr("reason")?)?)
            }
            Some(d) => {
                return Err(PyTypeError::new_err(format!(
                    "cannot send {}",
                    d.get_type().name()?
                )));
            }
        };
        let frame = Encoded::from_parts(&head, &self.session, meta, &body);
        if frame.len() > self.max_frame {
            return Err(PyValueError::new_err(format!(
                "output of {} bytes is over the {}-byte limit",
                frame.len(),
                self.max_frame
            )));
        }
        self.end.send(&frame).map_err(ipc_err)
    }

    /// Sends `raw` as a frame as it is, unchecked: for tests of the runtime's own checks.
    fn send_raw(&self, raw: &[u8]) -> PyResult<()> {
        self.end.send_raw(raw).map_err(ipc_err)
    }

    /// Wakes the runtime to read what was sent.
    fn notify(&self) -> PyResult<()> {
        self.end.notify().map_err(ipc_err)
    }
}
