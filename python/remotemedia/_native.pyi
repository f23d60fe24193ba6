"""Type hints of the extension module built from crates/py (see remotemedia.pipeline)."""

from typing import Any, List, Optional, Tuple

import numpy as np

__version__: str

class ManifestError(ValueError):
    """A manifest that does not validate; the message has origin:line:column."""

class PipelineError(RuntimeError):
    """A pipeline that could not start or failed fatally while running."""

class SampleBuffer:
    """The runtime buffer behind an output audio array (its ``base``)."""

# ("audio", float32 array, rate, channels) | ("text", str) | ("json", str) | ("binary", bytes)
NativeInput = Tuple[Any, ...]
# (node, port, timestamp_s, kind, value, extra)
NativeOutput = Tuple[str, str, float, str, Any, Any]
# (node, node_type, message, fatal)
NativeFailure = Tuple[str, str, str, bool]

class NativePipeline:
    def __init__(self, text: str, origin: str) -> None: ...
    def node_ids(self) -> List[str]: ...
    def run(self, inputs: List[NativeInput]) -> Tuple[List[NativeOutput], List[NativeFailure]]: ...

def metrics_json() -> str: ...
