"""The binary frame exchanged with the runtime over shared memory.

The layout is defined in ``crates/python-executor/src/frame.rs``; this is its Python twin. Audio input
is not copied: its samples are a read-only numpy view of the shared-memory sample, which stays
borrowed for as long as the array (or anything viewing it) is alive.
"""

from __future__ import annotations

import ctypes
import json
import struct
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .data import Audio, Binary, Control, Image, Json, RuntimeData, Text

MAGIC = b"RM"
PROTOCOL_VERSION = 2
HEADER = struct.Struct("<2sBBBBHQQHHI")
assert HEADER.size == 32
NO_TIMESTAMP = 2**64 - 1

# Messages.
DATA, DONE, ERROR, FLUSH, CONTROL, CLOSE, OPEN = 1, 2, 3, 4, 5, 6, 7
FLAG_REJECTED = 1
FLAG_MORE = 2

_KIND_AUDIO, _KIND_TEXT, _KIND_JSON, _KIND_BINARY, _KIND_IMAGE, _KIND_CONTROL = range(1, 7)
_CONTROL_CODES = {"flush": 1, "cancel": 2, "end_of_stream": 3}
_CONTROL_NAMES = {v: k for k, v in _CONTROL_CODES.items()}
_AUDIO_META = struct.Struct("<IH")
_TEXT_META = struct.Struct("<BB6xQQ")
_IMAGE_META = struct.Struct("<II")


class FrameError(ValueError):
    pass


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _secs(ns: int) -> Optional[float]:
    return None if ns == NO_TIMESTAMP else ns / 1e9


def _ns(secs: Optional[float]) -> int:
    return NO_TIMESTAMP if secs is None else max(0, int(round(secs * 1e9)))


class Decoded:
    __slots__ = ("msg", "flags", "port", "seq", "timestamp", "session", "data")

    def __init__(self, msg, flags, port, seq, timestamp, session, data):
        self.msg, self.flags, self.port, self.seq = msg, flags, port, seq
        self.timestamp, self.session, self.data = timestamp, session, data


def decode(
    ptr: int, length: int, view_audio: Callable[[int, int], np.ndarray]
) -> Decoded:
    """Parses the frame at ``ptr``. ``view_audio(address, count)`` makes the samples array
    (a zero-copy view, or a copy when too many views are alive)."""
    if length < HEADER.size:
        raise FrameError(f"frame of {length} bytes is shorter than its header")
    raw = (ctypes.c_char * length).from_address(ptr)
    magic, version, msg, kind, flags, port, seq, ts, slen, mlen, plen = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FrameError("frame does not start with the magic bytes RM")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"frame has protocol version {version}, expected {PROTOCOL_VERSION}")
    offset = _pad8(HEADER.size + slen + mlen)
    if offset + plen != length:
        raise FrameError(f"frame declares {offset + plen} bytes but has {length}")
    session = raw[HEADER.size : HEADER.size + slen].decode()
    meta = raw[HEADER.size + slen : HEADER.size + slen + mlen]
    timestamp = _secs(ts)
    data: Optional[RuntimeData] = None
    if kind == _KIND_AUDIO:
        rate, channels = _AUDIO_META.unpack(meta)
        if plen % 4:
            raise FrameError(f"audio payload of {plen} bytes is not whole f32 samples")
        data = Audio(view_audio(ptr + offset, plen // 4), rate, channels, timestamp)
    elif kind in (_KIND_TEXT, _KIND_JSON, _KIND_BINARY, _KIND_IMAGE, _KIND_CONTROL):
        body = raw[offset : offset + plen]
        if kind == _KIND_TEXT:
            is_final, has_span, start, end = _TEXT_META.unpack(meta)
            span = (start / 1e9, end / 1e9) if has_span else None
            data = Text(body.decode(), bool(is_final), span, timestamp)
        elif kind == _KIND_JSON:
            data = Json(json.loads(body), timestamp)
        elif kind == _KIND_BINARY:
            data = Binary(body, timestamp)
        elif kind == _KIND_IMAGE:
            w, h = _IMAGE_META.unpack_from(meta)
            data = Image(w, h, meta[_IMAGE_META.size :].decode(), body, timestamp)
        else:
            data = Control(_CONTROL_NAMES.get(meta[0] if meta else 0, "?"), body.decode(), timestamp)
    elif kind != 0:
        raise FrameError(f"unknown data kind {kind}")
    return Decoded(msg, flags, port, seq, timestamp, session, data)


def _body(data: RuntimeData) -> Tuple[int, bytes, Any, int]:
    """(kind, meta, payload, payload length); payload is bytes or a contiguous array."""
    if isinstance(data, Audio):
        samples = np.ascontiguousarray(data.samples, dtype="<f4").reshape(-1)
        return _KIND_AUDIO, _AUDIO_META.pack(data.sample_rate, data.channels), samples, samples.nbytes
    if isinstance(data, Text):
        start, end = data.span if data.span else (0.0, 0.0)
        meta = _TEXT_META.pack(bool(data.is_final), data.span is not None, _ns(start), _ns(end))
        body = data.text.encode()
        return _KIND_TEXT, meta, body, len(body)
    if isinstance(data, Json):
        body = json.dumps(data.value, separators=(",", ":")).encode()
        return _KIND_JSON, b"", body, len(body)
    if isinstance(data, Binary):
        body = bytes(data.data)
        return _KIND_BINARY, b"", body, len(body)
    if isinstance(data, Image):
        body = bytes(data.data)
        return _KIND_IMAGE, _IMAGE_META.pack(data.width, data.height) + data.format.encode(), body, len(body)
    if isinstance(data, Control):
        body = data.reason.encode()
        return _KIND_CONTROL, bytes([_CONTROL_CODES[data.kind]]), body, len(body)
    raise TypeError(f"cannot send {type(data).__name__}")


class Encoder:
    """Writes frames into samples loaned from an iceoryx2 publisher."""

    def __init__(self, publisher: Any, session: str, max_frame: int):
        self.publisher = publisher
        self.session = session.encode()
        self.max_frame = max_frame

    def send(
        self,
        msg: int,
        seq: int,
        data: Optional[RuntimeData] = None,
        port: int = 0,
        timestamp: Optional[float] = None,
        flags: int = 0,
        error: str = "",
    ) -> None:
        if data is not None:
            kind, meta, payload, plen = _body(data)
        else:
            kind, meta, payload = 0, b"", error.encode()
            plen = len(payload)
        head_len = HEADER.size + len(self.session) + len(meta)
        offset = _pad8(head_len)
        total = offset + plen
        if total > self.max_frame:
            raise FrameError(f"output of {total} bytes is over the {self.max_frame}-byte limit")
        header = HEADER.pack(
            MAGIC, PROTOCOL_VERSION, msg, kind, flags, port, seq, _ns(timestamp),
            len(self.session), len(meta), plen,
        )
        sample = self.publisher.loan_slice_uninit(total)
        base = sample.payload_ptr
        head = header + self.session + meta + bytes(offset - head_len)
        ctypes.memmove(base, head, offset)
        if plen:
            src = payload.ctypes.data if isinstance(payload, np.ndarray) else payload
            ctypes.memmove(base + offset, src, plen)
        sample.assume_init().send()
