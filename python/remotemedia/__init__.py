"""RemoteMedia for Python: write pipeline nodes that the runtime runs in isolated worker
processes, fed over shared memory.

- :class:`Node` and :func:`register`: the node contract and the table of node types.
- :mod:`remotemedia.data`: the values nodes receive and yield (audio as numpy arrays).
- ``python -m remotemedia.worker``: the worker process the runtime starts for each node.
"""

from .data import Audio, Binary, Control, Image, Json, Output, RuntimeData, Text
from .node import FatalNodeError, Node, NodeError, register

__all__ = [
    "Audio",
    "Binary",
    "Control",
    "FatalNodeError",
    "Image",
    "Json",
    "Node",
    "NodeError",
    "Output",
    "RuntimeData",
    "Text",
    "register",
]
