"""The base class of Python nodes and the table of registered node types.

A node runs in its own worker process, on that process's asyncio event loop::

    from remotemedia import Node, Text, register

    @register
    class Shout(Node):
        '''Upper-cases text.'''
        inputs = ["text"]
        outputs = {"out": ["text"]}

        async def process(self, data):
            yield Text(data.text.upper())

``process`` is an async generator: it may yield zero, one or many outputs per input (a plain
generator, ``def process``, works too, for short CPU work that never awaits). Heavy
synchronous work (a model's forward pass) must not block the loop — the worker's heartbeat
runs on it, and a loop blocked longer than the heartbeat timeout is treated as hung. Run it
with ``await asyncio.to_thread(fn, ...)`` (see ``remotemedia.nodes.examples.SlowUpper``).

A node class that sets ``shared = True`` gets one worker process for every session that uses
it with the same params, instead of one per session::

    @register
    class Transcribe(Node):
        shared = True

        @classmethod
        def load(cls, params):          # once per worker process
            return load_model(params)

        def setup(self, params):        # once per session, on its own instance
            self.utterances = 0

        async def process(self, data):  # self.loaded is what load() returned
            yield Text(self.loaded.transcribe(data.samples))

Each session has its own instance (its state never mixes with another session's), created
when the session opens and closed with it, and runs on a thread of its own, so blocking calls
in ``process`` hold that session only. A shared class may also define ``process_batch``:
the runtime's scheduler then hands it the inputs of several sessions at once.
"""

from __future__ import annotations

import importlib
from typing import Any, AsyncIterator, ClassVar, Dict, List, Type

from .data import Control, RuntimeData

MEDIA_TYPES = ("audio", "text", "json", "binary", "image", "control")


class NodeError(Exception):
    """Raised by ``process`` to reject one input: it is reported and the node goes on."""


class FatalNodeError(Exception):
    """Raised when the node cannot go on: the session fails with this message."""


class Node:
    """Base class of Python nodes. Subclasses set the class attributes and override
    ``process`` (and optionally ``setup``, ``flush``, ``control``, ``close``)."""

    #: Name used as ``type:`` in manifests; defaults to the class name.
    name: ClassVar[str] = ""
    #: One line for ``remotemedia nodes``; defaults to the first line of the docstring.
    description: ClassVar[str] = ""
    #: JSON Schema of the ``params`` object; the runtime validates params against it.
    params_schema: ClassVar[Dict[str, Any]] = {"type": "object"}
    #: Media types the single input port ``in`` accepts.
    inputs: ClassVar[List[str]] = list(MEDIA_TYPES)
    #: Output ports, in order, with the media types each gives; outputs go to the first
    #: unless yielded as ``Output(data, port="name")``.
    outputs: ClassVar[Dict[str, List[str]]] = {"out": list(MEDIA_TYPES)}
    #: One worker process serves every session (see the module's documentation).
    shared: ClassVar[bool] = False
    #: What ``load`` returned, set before ``setup``.
    loaded: Any = None

    @classmethod
    def load(cls, params: Dict[str, Any]) -> Any:
        """Loads what all instances in the worker process share (a model): called once per
        process, before any ``setup``. May be ``async``. Raise ``ValueError`` to reject params."""
        return None

    # A shared node may define:
    #
    #     @classmethod
    #     def process_batch(cls, nodes: List[Node], inputs: List[RuntimeData]) -> List[Any]
    #
    # called on a pool thread with the inputs of several sessions (``nodes[i]`` is the
    # instance of the session that sent ``inputs[i]``). It returns one entry per input: a list
    # of outputs, or an exception (``NodeError`` rejects that input). May be ``async``.

    def setup(self, params: Dict[str, Any]) -> Any:
        """Called once with the node's params before any input. May be ``async``. Raise
        ``ValueError`` to reject params: the session does not start and the message says why."""

    async def process(self, data: RuntimeData) -> AsyncIterator[Any]:
        """Handles one input, yielding outputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement process()")
        yield  # pragma: no cover  (makes this an async generator)

    async def flush(self) -> AsyncIterator[Any]:
        """Emits anything buffered: at end of stream and on a flush control."""
        return
        yield  # pragma: no cover

    async def control(self, ctrl: Control) -> AsyncIterator[Any]:
        """Reacts to in-band control (a cancel drops buffered work); the runtime passes the
        control on downstream itself."""
        return
        yield  # pragma: no cover

    def close(self) -> Any:
        """Releases resources when the session ends. May be ``async``."""

    @classmethod
    def type_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def describe(cls) -> Dict[str, Any]:
        """The node type as the runtime's ``NodeTypeInfo`` (for the handshake and catalogue)."""
        doc = (cls.description or (cls.__doc__ or "").strip().split("\n")[0]).strip()
        for media in [*cls.inputs, *(m for ms in cls.outputs.values() for m in ms)]:
            if media not in MEDIA_TYPES:
                raise TypeError(f"{cls.type_name()}: unknown media type {media!r}")
        return {
            "type": cls.type_name(),
            "description": doc,
            "params_schema": cls.params_schema,
            "inputs": [{"name": "in", "media": list(cls.inputs)}],
            "outputs": [{"name": n, "media": list(m)} for n, m in cls.outputs.items()],
            "shared": bool(cls.shared),
        }


_REGISTRY: Dict[str, Type[Node]] = {}

#: Modules imported to fill the registry when a type is looked up by name.
BUILTIN_MODULES = [
    "remotemedia.nodes.audio",
    "remotemedia.nodes.examples",
    "remotemedia.nodes.whisper",
]


def register(cls: Type[Node]) -> Type[Node]:
    """Class decorator: makes ``cls`` available to manifests by its ``type_name()``."""
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise TypeError("@register applies to subclasses of remotemedia.Node")
    _REGISTRY[cls.type_name()] = cls
    return cls


def load_builtins(extra_modules: List[str] = ()) -> None:
    for module in [*BUILTIN_MODULES, *extra_modules]:
        importlib.import_module(module)


def registered() -> Dict[str, Type[Node]]:
    return dict(_REGISTRY)


def resolve(node_type: str) -> Type[Node]:
    """A registered name, or ``package.module:Class``."""
    if ":" in node_type:
        module, _, attr = node_type.partition(":")
        obj = getattr(importlib.import_module(module), attr, None)
        if not (isinstance(obj, type) and issubclass(obj, Node)):
            raise LookupError(f"{node_type} is not a remotemedia.Node subclass")
        return obj
    if node_type not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise LookupError(f"unknown Python node type {node_type!r}; known: {known}")
    return _REGISTRY[node_type]
