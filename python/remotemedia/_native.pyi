"""Type hints of the extension module built from crates/python-sdk (see remotemedia.pipeline)."""

from typing import Any, List, Optional, Tuple

import numpy as np

__version__: str

class ManifestError(ValueError):
    """A manifest that does not validate; the message has origin:line:column."""

class PolicyError(PermissionError):
    """An untrusted manifest the policy refuses; nothing of it was loaded or run."""

class PipelineError(RuntimeError):
    """A pipeline that could not start or failed fatally while running."""

class SampleBuffer:
    """The runtime buffer behind an output audio array (its ``base``)."""

# ("audio", float32 array, rate, channels) | ("text", str) | ("json", str) | ("binary", bytes)
# | ("flush",) | ("cancel", reason)
NativeInput = Tuple[Any, ...]
# (node, port, timestamp_s, kind, value, extra)
NativeOutput = Tuple[str, str, float, str, Any, Any]
# (node, node_type, message, fatal)
NativeFailure = Tuple[str, str, str, bool]

class NativePipeline:
    def __init__(self, text: str, origin: str, policy: Optional[str] = None) -> None: ...
    def node_ids(self) -> List[str]: ...
    def open_session(self) -> NativeSession: ...
    def run(self, inputs: List[NativeInput]) -> Tuple[List[NativeOutput], List[NativeFailure]]: ...

class NativeSession:
    @property
    def id(self) -> str: ...
    def send(self, item: NativeInput, target: Optional[str] = None) -> None: ...
    def close_input(self) -> None: ...
    def cancel(self) -> None: ...
    def recv(self, timeout: Optional[float] = None) -> Optional[Tuple[bool, Tuple[Any, ...]]]: ...
    def metrics_json(self) -> str: ...

def metrics_json() -> str: ...

class DubError(ValueError): ...

# (interleaved float32 samples, channels, sample rate, report JSON, re-timed subtitles)
def dub(subtitles: str, options: str) -> Tuple[Any, int, int, str, str]: ...
