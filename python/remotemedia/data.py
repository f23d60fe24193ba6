"""The values that flow between nodes, mirroring the runtime's ``RuntimeData``.

Every class has an optional ``timestamp`` (seconds of media time). On inputs the runtime sets
it; on outputs ``None`` means "the timestamp of the input being processed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np


@dataclass
class Audio:
    """Interleaved float32 PCM. Inputs are read-only numpy views of shared memory: copy
    (``np.array(a.samples)``) before writing to them."""

    samples: np.ndarray
    sample_rate: int
    channels: int = 1
    timestamp: Optional[float] = None

    @property
    def frames(self) -> int:
        return len(self.samples) // max(self.channels, 1)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass
class Text:
    """Text, e.g. a transcript; ``is_final`` False marks an interim hypothesis and ``span``
    is (start, end) in seconds of media time."""

    text: str
    is_final: bool = True
    span: Optional[Tuple[float, float]] = None
    timestamp: Optional[float] = None


@dataclass
class Json:
    """Any JSON value."""

    value: Any
    timestamp: Optional[float] = None


@dataclass
class Binary:
    data: bytes
    timestamp: Optional[float] = None


@dataclass
class Image:
    """A raw or encoded image; ``format`` names the layout ("rgb8", "jpeg", ...)."""

    width: int
    height: int
    format: str
    data: bytes
    timestamp: Optional[float] = None


@dataclass
class Control:
    """In-band signal: ``kind`` is "flush", "cancel" (with ``reason``) or "end_of_stream"."""

    kind: str
    reason: str = ""
    timestamp: Optional[float] = None

    KINDS = ("flush", "cancel", "end_of_stream")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"control kind must be one of {self.KINDS}, not {self.kind!r}")


RuntimeData = Union[Audio, Text, Json, Binary, Image, Control]


@dataclass
class Output:
    """An output for a named (or numbered) port other than the first."""

    data: RuntimeData
    port: Union[str, int] = 0


def wrap(value: Any) -> RuntimeData:
    """Turns convenient Python values into data: str → Text, bytes → Binary, dict/list → Json."""
    if isinstance(value, (Audio, Text, Json, Binary, Image, Control)):
        return value
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Binary(bytes(value))
    if isinstance(value, (dict, list, int, float, bool)) or value is None:
        return Json(value)
    raise TypeError(
        f"a node yielded {type(value).__name__}; yield Audio, Text, Json, Binary, Image, "
        "Control, str, bytes or a JSON value"
    )
