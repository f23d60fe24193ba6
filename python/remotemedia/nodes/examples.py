"""Small nodes that show the contract and serve tests and benchmarks."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..data import Audio, Json, Text
from ..node import Node, NodeError, register


@register
class Echo(Node):
    """Passes every input through unchanged (the round-trip benchmark's node)."""

    async def process(self, data):
        yield data


@register
class AudioLevel(Node):
    """Reports the RMS level (dBFS) and peak of each audio frame, read in shared memory."""

    inputs = ["audio"]
    outputs = {"out": ["json"]}

    async def process(self, data):
        if not isinstance(data, Audio):
            raise NodeError(f"AudioLevel takes audio, not {type(data).__name__}")
        x = data.samples
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
        yield Json(
            {
                "rms_dbfs": 20 * np.log10(rms) if rms > 0 else None,
                "peak": float(np.max(np.abs(x))) if len(x) else 0.0,
                "frames": data.frames,
            }
        )


def _slow_upper(text: str, seconds: float) -> str:
    time.sleep(seconds)  # stands in for a blocking model call
    return text.upper()


@register
class SlowUpper(Node):
    """Upper-cases text through a blocking call run with asyncio.to_thread.

    The worker's event loop (and its heartbeat) keeps running while the call blocks: the
    pattern for heavy synchronous model code."""

    inputs = ["text"]
    outputs = {"out": ["text"]}
    params_schema = {
        "type": "object",
        "properties": {"delay_ms": {"type": "number", "minimum": 0, "default": 100}},
        "additionalProperties": False,
    }

    def setup(self, params):
        self.delay = params.get("delay_ms", 100) / 1000.0

    async def process(self, data):
        yield Text(await asyncio.to_thread(_slow_upper, data.text, self.delay), data.is_final, data.span)
