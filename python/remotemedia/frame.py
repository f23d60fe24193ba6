"""The messages exchanged with the runtime over shared memory.

The frame layout is defined in ``crates/python-executor/src/frame.rs``; the worker reads and
writes it through ``remotemedia._native.WorkerLink`` (Rust), which gives audio input to Python as
a read-only numpy view of the shared-memory sample, borrowed for as long as the array (or
anything viewing it) is alive.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

PROTOCOL_VERSION = 2

# Messages.
DATA, DONE, ERROR, FLUSH, CONTROL, CLOSE, OPEN = 1, 2, 3, 4, 5, 6, 7
FLAG_REJECTED = 1
FLAG_MORE = 2


class Frame(NamedTuple):
    """A frame from the runtime, as ``WorkerLink.receive`` returns it."""

    msg: int
    flags: int
    port: int
    seq: int
    timestamp: Optional[float]
    session: str
    data: Any
