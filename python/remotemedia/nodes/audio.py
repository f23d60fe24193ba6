"""Pure-Python (numpy) versions of the runtime's audio nodes.

``AudioResample``, ``FormatConverter``, ``AudioChunker`` and ``EnergyVAD`` have the names,
params, ports and behaviour of the native nodes in ``crates/audio``. The SDK runs them when the
native runtime is missing (``runtime_hint="auto"``) or when asked to (``runtime_hint="python"``
on a pipeline, or on one node, which then runs in a worker process of the Rust runtime).

How close they come to the native nodes (checked by ``python/tests/test_fallback.py``):

- ``FormatConverter`` and ``AudioChunker``: identical samples and bytes.
- ``AudioResample``: the same Kaiser-windowed polyphase filter and alignment, computed in
  float64 instead of float32: samples within 1e-5 of the native output for every ratio whose
  reduced terms are at most 1024/4096 (all common rates). For other ratios the native node
  uses rubato's sinc interpolator and this one the same polyphase design, so the two differ
  by filter, not by error (both are band-limited).
- ``EnergyVAD``: the same measurements and timing rules; a frame whose level or flatness lies
  within float rounding of a threshold may be decided differently, which moves an event by at
  most one analysis frame (``frame_ms``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data import Audio, Binary, Control, Json
from ..node import FatalNodeError, Node, register
from ..params import check_params

MAX_RATE = 384_000
MAX_CHANNELS = 64
_RATE = {"type": "integer", "minimum": 1, "maximum": MAX_RATE}


def _schema(properties: Dict[str, Any], required: Tuple[str, ...] = ()) -> Dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


class _AudioNode(Node):
    """Shared parts: params checked against ``params_schema``, audio-only input."""

    inputs = ["audio"]

    def setup(self, params: Dict[str, Any]) -> None:
        self.p = check_params(self.type_name(), params, self.params_schema)
        self.reset()

    def reset(self) -> None:
        """Forgets the stream (a cancel, or the end of one)."""

    def audio(self, data: Any) -> Audio:
        if not isinstance(data, Audio):
            raise FatalNodeError(f"{self.type_name()} cannot process {_media(data)} data")
        return data

    async def control(self, ctrl: Control):
        if ctrl.kind == "cancel":
            self.reset()
        return
        yield  # pragma: no cover


def _media(data: Any) -> str:
    return type(data).__name__.lower()


# -- AudioResample --------------------------------------------------------------------------

#: Anti-alias filter per quality: pass and stop band edges as fractions of the lower Nyquist
#: frequency, and the stop-band attenuation in dB (the native node's designs).
_DESIGNS = {"fast": (0.85, 1.15, 70.0), "balanced": (0.9, 1.1, 100.0), "high": (0.91, 1.0, 120.0)}
#: Above these reduced ratio terms the filter bank is not precomputed (it would be huge):
#: coefficients are computed for each output instead.
_MAX_PHASES, _MAX_DECIMATION = 1024, 4096


class _Polyphase:
    """Streaming rational resampler: output ``n`` lies at input time ``n * m / l`` exactly,
    ``y[n] = sum_t h(p + t*l) * x[i - t]`` with ``(i, p) = divmod(n*m + centre, l)``."""

    def __init__(self, rate: int, target: int, channels: int, design: Tuple[float, float, float]):
        ratio = Fraction(target, rate)
        self.l, self.m = ratio.numerator, ratio.denominator
        pass_, stop, att = design
        nyquist = 0.5 / max(self.l, self.m)
        self.cutoff = 0.5 * (pass_ + stop) * nyquist
        width = (stop - pass_) * nyquist
        taps = math.ceil((att - 7.95) / (2.285 * math.tau * width))
        self.centre = -(-taps // 2)
        self.n = 2 * self.centre + 1
        self.k = -(-self.n // self.l)
        if att > 50:
            self.beta = 0.1102 * (att - 8.7)
        else:
            a = max(att - 21.0, 0.0)
            self.beta = 0.5842 * a**0.4 + 0.07886 * a
        self.bank = None
        if self.l <= _MAX_PHASES and self.m <= _MAX_DECIMATION:
            phases = np.arange(self.l)[:, None] + np.arange(self.k)[None, :] * self.l
            self.bank = self.h(phases)
        # Input with its history: row 0 is input index `base - (k - 1)`.
        self.buf = np.zeros((self.k - 1, channels), dtype=np.float32)
        self.base = 0
        self.received = 0
        self.next_out = 0

    def h(self, i: np.ndarray) -> np.ndarray:
        """The prototype low-pass filter (Kaiser-windowed sinc) at upsampled indices ``i``."""
        x = i.astype(np.float64) - self.centre
        r = x / self.centre
        window = np.i0(self.beta * np.sqrt(np.maximum(1.0 - r * r, 0.0))) / np.i0(self.beta)
        coef = 2.0 * self.cutoff * np.sinc(2.0 * self.cutoff * x) * window * self.l
        return np.where((i >= 0) & (i < self.n), coef, 0.0)

    def push(self, frames: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, frames])
        self.received += len(frames)
        return self._produce(None)

    def finish(self, total: int) -> np.ndarray:
        """Pads with silence and returns outputs up to ``total`` in all."""
        if total <= self.next_out:
            return self._produce(self.next_out)
        last = ((total - 1) * self.m + self.centre) // self.l
        missing = max(last + 1 - self.received, 0)
        self.buf = np.concatenate([self.buf, np.zeros((missing, self.buf.shape[1]), np.float32)])
        self.received += missing
        return self._produce(total)

    def _produce(self, limit: Optional[int]) -> np.ndarray:
        # Outputs whose newest input has arrived: n*m + centre < received * l.
        ready = -(-(self.received * self.l - self.centre) // self.m)
        end = ready if limit is None else min(ready, limit)
        n = np.arange(self.next_out, max(end, self.next_out), dtype=np.int64)
        newest, phase = np.divmod(n * self.m + self.centre, self.l)
        if self.bank is not None:
            coefs = self.bank[phase]
        else:
            coefs = self.h(phase[:, None] + np.arange(self.k)[None, :] * self.l)
        # Row of input index j in buf: j - base + k - 1; taps go back in time from `newest`.
        rows = (newest - self.base + self.k - 1)[:, None] - np.arange(self.k)[None, :]
        out = np.einsum("nt,ntc->nc", coefs, self.buf[rows].astype(np.float64))
        self.next_out += len(n)
        # Forget input no future output needs.
        keep_from = (self.next_out * self.m + self.centre) // self.l - (self.k - 1)
        drop = max(min(keep_from - self.base, len(self.buf)), 0)
        self.buf = self.buf[drop:]
        self.base += drop
        return out.astype(np.float32)


@register
class AudioResample(_AudioNode):
    """Converts audio to another sample rate, streaming (pure-Python fallback)."""

    outputs = {"out": ["audio"]}
    params_schema = _schema(
        {
            "target_rate": _RATE,
            "input_rate": _RATE,
            "quality": {"type": "string", "enum": list(_DESIGNS), "default": "balanced"},
        },
        required=("target_rate",),
    )

    def reset(self) -> None:
        self.stream: Optional[_Polyphase] = None
        self.rate = self.channels = 0
        self.frames_in = self.frames_out = 0
        self.start = 0.0

    async def process(self, data):
        a = self.audio(data)
        expected = self.p["input_rate"] or (self.rate or None)
        if expected is not None and a.sample_rate != expected:
            raise FatalNodeError(
                f"AudioResample expects {expected} Hz input, got a frame at {a.sample_rate} Hz"
            )
        if self.rate and a.channels != self.channels:
            raise FatalNodeError(
                f"AudioResample: channel count changed mid-stream from {self.channels} "
                f"to {a.channels}"
            )
        if not self.rate:
            if not 1 <= a.sample_rate <= MAX_RATE:
                raise FatalNodeError(
                    f"AudioResample: input sample rate {a.sample_rate} Hz is outside 1..={MAX_RATE}"
                )
            if a.channels > MAX_CHANNELS:
                raise FatalNodeError(
                    f"AudioResample: {a.channels} channels is more than the {MAX_CHANNELS} "
                    "supported"
                )
            self.rate, self.channels = a.sample_rate, a.channels
            self.start = a.timestamp or 0.0
            if self.rate != self.p["target_rate"]:
                design = _DESIGNS[self.p["quality"]]
                self.stream = _Polyphase(self.rate, self.p["target_rate"], a.channels, design)
        if self.stream is None:
            yield a
            return
        frames = np.asarray(a.samples, dtype=np.float32).reshape(-1, self.channels)
        self.frames_in += len(frames)
        out = self._emit(self.stream.push(frames))
        if out is not None:
            yield out

    async def flush(self):
        if self.stream is not None:
            total = -(-self.frames_in * self.p["target_rate"] // self.rate)
            out = self._emit(self.stream.finish(total))
            if out is not None:
                yield out
        self.reset()

    def _emit(self, frames: np.ndarray) -> Optional[Audio]:
        if not len(frames):
            return None
        at = self.start + self.frames_out / self.p["target_rate"]
        self.frames_out += len(frames)
        return Audio(frames.reshape(-1), self.p["target_rate"], self.channels, timestamp=at)


# -- FormatConverter ------------------------------------------------------------------------

_SAMPLE_FORMATS = {"i16": ("<i2", 32768.0), "i32": ("<i4", 2147483648.0), "f32": ("<f4", None)}
_FORMAT = {"type": "string", "enum": list(_SAMPLE_FORMATS), "default": "i16"}
_LAYOUT = {"type": "string", "enum": ["interleaved", "planar"], "default": "interleaved"}


def remix(frames: np.ndarray, to: int) -> np.ndarray:
    """``frames`` (n × channels) to ``to`` channels: mono output averages, otherwise output
    channel ``j`` takes input channel ``j mod inputs``."""
    have = frames.shape[1]
    if have == to:
        return frames
    if to == 1:
        return (frames.sum(axis=1, dtype=np.float32) * np.float32(1.0 / have))[:, None]
    return frames[:, np.arange(to) % have]


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@register
class FormatConverter(Node):
    """Converts between audio frames and raw PCM (i16/i32/f32, interleaved/planar) and changes
    the channel count (pure-Python fallback)."""

    inputs = ["audio", "binary"]
    outputs = {"out": ["audio", "binary"]}
    params_schema = _schema(
        {
            "output": {"type": "string", "enum": ["audio", "pcm"], "default": "audio"},
            "sample_format": _FORMAT,
            "layout": _LAYOUT,
            "channels": {"type": "integer", "minimum": 1, "maximum": MAX_CHANNELS},
            "input": {
                "type": "object",
                **_schema(
                    {
                        "sample_format": {"type": "string", "enum": list(_SAMPLE_FORMATS)},
                        "layout": _LAYOUT,
                        "sample_rate": _RATE,
                        "channels": {"type": "integer", "minimum": 1, "maximum": MAX_CHANNELS},
                    },
                    required=("sample_format", "sample_rate", "channels"),
                ),
            },
        }
    )

    def setup(self, params: Dict[str, Any]) -> None:
        self.p = check_params("FormatConverter", params, self.params_schema)

    async def process(self, data):
        target = self.p["channels"]
        if isinstance(data, Audio):
            if target in (None, data.channels) and self.p["output"] == "audio":
                yield data
                return
            frames = np.asarray(data.samples, dtype=np.float32).reshape(-1, data.channels)
            rate = data.sample_rate
        elif isinstance(data, Binary):
            frames, rate = self._decode(data.data)
        else:
            raise FatalNodeError(f"FormatConverter cannot process {_media(data)} data")
        if not 1 <= rate <= MAX_RATE or frames.shape[1] > MAX_CHANNELS:
            raise FatalNodeError(
                f"FormatConverter: unsupported audio format {rate} Hz × {frames.shape[1]} ch"
            )
        frames = remix(frames, target or frames.shape[1])
        if self.p["output"] == "audio":
            yield Audio(np.ascontiguousarray(frames).reshape(-1), rate, frames.shape[1])
            return
        ordered = frames.T if self.p["layout"] == "planar" else frames
        dtype, scale = _SAMPLE_FORMATS[self.p["sample_format"]]
        x = ordered.reshape(-1)
        if scale is None:
            pcm = x.astype(dtype)
        else:
            info = np.iinfo(np.dtype(dtype))
            ints = _round_half_away(x.astype(np.float64) * scale)
            pcm = np.clip(ints, info.min, info.max).astype(dtype)
        yield Binary(pcm.tobytes())

    def _decode(self, raw: bytes) -> Tuple[np.ndarray, int]:
        fmt = self.p["input"]
        if fmt is None:
            raise FatalNodeError(
                "FormatConverter got binary data but has no `input` params saying what PCM it "
                "holds"
            )
        dtype, scale = _SAMPLE_FORMATS[fmt["sample_format"]]
        ch = fmt["channels"]
        width = np.dtype(dtype).itemsize
        if len(raw) % (width * ch):
            name = {"i16": "s16le", "i32": "s32le", "f32": "f32le"}[fmt["sample_format"]]
            raise FatalNodeError(
                f"FormatConverter: {len(raw)} bytes is not a whole number of {ch}-channel "
                f"{name} frames ({width * ch} bytes each)"
            )
        x = np.frombuffer(raw, dtype=dtype)
        if scale is not None:
            x = (x.astype(np.float64) / scale).astype(np.float32)
        if fmt.get("layout", "interleaved") == "planar":
            frames = x.reshape(ch, -1).T
        else:
            frames = x.reshape(-1, ch)
        return frames.astype(np.float32), fmt["sample_rate"]


# -- AudioChunker ---------------------------------------------------------------------------


@register
class AudioChunker(_AudioNode):
    """Cuts audio into frames of exactly `samples` samples, carrying the remainder over
    (pure-Python fallback)."""

    outputs = {"out": ["audio"]}
    params_schema = _schema(
        {
            "samples": {"type": "integer", "minimum": 1, "maximum": 1_048_576, "default": 512},
            "pad_tail": {"type": "boolean", "default": False},
        }
    )

    def reset(self) -> None:
        self.pending = np.zeros(0, dtype=np.float32)
        self.format: Optional[Tuple[int, int]] = None
        self.at = 0.0

    async def process(self, data):
        a = self.audio(data)
        if self.format is None:
            self.format = (a.sample_rate, a.channels)
            self.at = a.timestamp or 0.0
        elif self.format != (a.sample_rate, a.channels):
            rate, ch = self.format
            raise FatalNodeError(
                f"AudioChunker: audio format changed mid-stream from {rate} Hz × {ch} ch to "
                f"{a.sample_rate} Hz × {a.channels} ch"
            )
        size = self.p["samples"] * a.channels
        if not len(self.pending) and len(a.samples) == size:
            yield self._emit(np.asarray(a.samples, dtype=np.float32))
            return
        self.pending = np.concatenate([self.pending, np.asarray(a.samples, dtype=np.float32)])
        while len(self.pending) >= size:
            chunk, self.pending = self.pending[:size], self.pending[size:]
            yield self._emit(chunk)

    async def flush(self):
        if self.format is not None and len(self.pending):
            tail = self.pending
            if self.p["pad_tail"]:
                size = self.p["samples"] * self.format[1]
                tail = np.concatenate([tail, np.zeros(size - len(tail), dtype=np.float32)])
            yield self._emit(tail)
        self.reset()

    def _emit(self, samples: np.ndarray) -> Audio:
        rate, ch = self.format
        out = Audio(samples, rate, ch, timestamp=self.at)
        self.at += len(samples) // ch / rate
        return out


# -- EnergyVAD ------------------------------------------------------------------------------

_NS = 1_000_000_000


class VadTracker:
    """Hysteresis and timing rules that turn per-frame speech probabilities into start and end
    events (times in integer nanoseconds, as the native tracker's durations)."""

    def __init__(self, threshold: float, neg_threshold: float, min_speech_ms: int,
                 min_silence_ms: int, speech_pad_ms: int):
        self.threshold = threshold
        self.neg_threshold = min(neg_threshold, threshold)
        ms = 1_000_000
        self.min_speech = min_speech_ms * ms
        self.min_silence = min_silence_ms * ms
        self.pad = speech_pad_ms * ms
        self.reset()

    def reset(self) -> None:
        self.in_speech = False
        self.candidate: Optional[int] = None
        self.silence_since: Optional[int] = None
        self.now = 0
        self.last_end = 0

    def frame(self, start: int, end: int, p: float) -> Optional[Dict[str, Any]]:
        self.now = end
        if not self.in_speech:
            if p >= self.threshold:
                if self.candidate is None:
                    self.candidate = start
                since = self.candidate
                if end - since >= self.min_speech:
                    self.in_speech = True
                    self.candidate = self.silence_since = None
                    at = max(max(since - self.pad, 0), self.last_end)
                    return {"event": "speech_start", "time": at / _NS}
            elif p < self.neg_threshold:
                self.candidate = None
            return None
        if p >= self.threshold:
            self.silence_since = None
        elif p < self.neg_threshold:
            if self.silence_since is None:
                self.silence_since = start
            since = self.silence_since
            if end - since >= self.min_silence:
                return self._end_at(min(since + self.pad, end))
        return None

    def finish(self) -> Optional[Dict[str, Any]]:
        self.candidate = None
        return self._end_at(self.now) if self.in_speech else None

    def _end_at(self, at: int) -> Dict[str, Any]:
        self.in_speech = False
        self.silence_since = None
        self.last_end = at
        return {"event": "speech_end", "time": at / _NS}


@register
class EnergyVAD(_AudioNode):
    """Voice activity from energy and spectral flatness; passes audio through and adds speech
    start/end events (pure-Python fallback)."""

    outputs = {"out": ["audio", "json"]}
    params_schema = _schema(
        {
            "frame_ms": {"type": "integer", "minimum": 5, "maximum": 100, "default": 20},
            "energy_threshold_db": {
                "type": "number", "minimum": -120.0, "maximum": 0.0, "default": -40.0
            },
            "flatness_threshold": {
                "type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.5
            },
            "min_speech_ms": {"type": "integer", "minimum": 0, "maximum": 10_000, "default": 100},
            "min_silence_ms": {"type": "integer", "minimum": 0, "maximum": 10_000, "default": 300},
            "speech_pad_ms": {"type": "integer", "minimum": 0, "maximum": 2_000, "default": 30},
            "emit_probability": {"type": "boolean", "default": False},
        }
    )

    def reset(self) -> None:
        p = self.p
        self.tracker = VadTracker(
            0.5, 0.5, p["min_speech_ms"], p["min_silence_ms"], p["speech_pad_ms"]
        )
        self.rate = 0
        self.pending = np.zeros(0, dtype=np.float32)
        self.at = 0

    async def process(self, data):
        a = self.audio(data)
        if self.rate and a.sample_rate != self.rate:
            raise FatalNodeError(
                f"EnergyVAD: sample rate changed mid-stream from {self.rate} Hz to "
                f"{a.sample_rate} Hz"
            )
        if not self.rate:
            if not 1_000 <= a.sample_rate <= MAX_RATE:
                raise FatalNodeError(f"EnergyVAD: cannot analyse audio at {a.sample_rate} Hz")
            self.rate = a.sample_rate
            self.frame = max(self.rate * self.p["frame_ms"] // 1000, 16)
            self.nfft = 1 << (self.frame - 1).bit_length()
            i = np.arange(self.frame, dtype=np.float32)
            self.window = np.float32(0.5) - np.float32(0.5) * np.cos(
                np.float32(math.tau) * i / np.float32(self.frame)
            )
            self.at = round((a.timestamp or 0.0) * _NS)
        yield a
        x = np.asarray(a.samples, dtype=np.float32)
        if a.channels > 1:
            x = x.reshape(-1, a.channels).sum(axis=1, dtype=np.float32) * np.float32(
                1.0 / a.channels
            )
        self.pending = np.concatenate([self.pending, x])
        for event in self._analyse():
            yield event

    def _analyse(self) -> List[Json]:
        whole = len(self.pending) // self.frame
        if not whole:
            return []
        frames = self.pending[: whole * self.frame].reshape(whole, self.frame)
        self.pending = self.pending[whole * self.frame :]
        power = np.mean(frames * frames, axis=1, dtype=np.float32)
        db = 10.0 * np.log10(power + np.float32(1e-12))
        spectrum = np.fft.rfft(frames * self.window, n=self.nfft, axis=1)[:, 1 : self.nfft // 2]
        p = spectrum.real**2 + spectrum.imag**2 + 1e-12
        flatness = np.clip(np.exp(np.mean(np.log(p), axis=1)) / np.mean(p, axis=1), 0.0, 1.0)
        speech = (db > self.p["energy_threshold_db"]) & (flatness < self.p["flatness_threshold"])
        step = round(self.frame / self.rate * _NS)
        out = []
        for is_speech in speech:
            prob = 1.0 if is_speech else 0.0
            start, end = self.at, self.at + step
            self.at = end
            if self.p["emit_probability"]:
                out.append(
                    Json({"event": "probability", "time": start / _NS, "probability": prob},
                         timestamp=start / _NS)
                )
            ev = self.tracker.frame(start, end, prob)
            if ev is not None:
                out.append(Json(ev, timestamp=ev["time"]))
        return out

    async def flush(self):
        ev = self.tracker.finish()
        if ev is not None:
            yield Json(ev, timestamp=ev["time"])
        self.pending = np.zeros(0, dtype=np.float32)
