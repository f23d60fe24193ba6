"""RemoteMedia for Python: write pipeline nodes that the runtime runs in isolated worker
processes, fed over shared memory.

- :class:`Node` and :func:`register`: the node contract and the table of node types.
- :mod:`remotemedia.data`: the values nodes receive and yield (audio as numpy arrays).
- ``python -m remotemedia.worker``: the worker process the runtime starts for each node.
- :mod:`remotemedia.pipeline`: run pipelines on the Rust runtime (the ``_native`` module).
"""

from .data import Audio, Binary, Control, Image, Json, Output, RuntimeData, Text
from .dub import Dub, dub
from .node import FatalNodeError, Node, NodeError, register

_RUST = None
_RUST_ERROR = ""


def is_rust_runtime_available() -> bool:
    """True when the native runtime (remotemedia._native) is installed; checked once."""
    global _RUST, _RUST_ERROR
    if _RUST is None:
        try:
            from . import _native  # noqa: F401

            _RUST = True
        except ImportError as e:
            _RUST, _RUST_ERROR = False, str(e)
    return _RUST


def __getattr__(name):
    # DubError lives in the native module, imported only when asked for.
    if name == "DubError":
        from ._native import DubError

        return DubError
    raise AttributeError(f"module 'remotemedia' has no attribute {name!r}")


def _native_error() -> str:
    """Why the native runtime could not be imported."""
    is_rust_runtime_available()
    return _RUST_ERROR

__all__ = [
    "Audio",
    "Binary",
    "Control",
    "Dub",
    "DubError",
    "FatalNodeError",
    "Image",
    "Json",
    "Node",
    "NodeError",
    "Output",
    "RuntimeData",
    "Text",
    "dub",
    "is_rust_runtime_available",
    "register",
]
