"""Run pipelines from Python, on the Rust runtime or, without it, on a pure-Python one.

::

    from remotemedia.pipeline import Pipeline
    from remotemedia import Audio

    pipeline = Pipeline.from_yaml("examples/transcribe.yaml")
    results = pipeline.run_sync([Audio(samples, 16000)])   # or: await pipeline.run([...])
    for r in results:
        print(r.node, r.data)

Manifests are validated by the same code as the ``remotemedia`` CLI: a bad one raises
:class:`ManifestError` with the same ``origin:line:column`` message. While a pipeline runs the
GIL is released, so other Python threads go on. Audio crosses without a copy in both
directions: a C-contiguous float32 array is read in place by the runtime, and output audio is a
read-only numpy view of the runtime's buffer. Other sample types are converted first: other
float arrays with ``astype(float32)``, int16 and int32 PCM scaled to [-1, 1); anything else is
refused with ``TypeError``.

Runtime selection: ``Pipeline(..., runtime_hint="auto" | "rust" | "python")``. ``auto`` (the
default) runs on the Rust runtime when ``remotemedia._native`` is installed
(:func:`remotemedia.is_rust_runtime_available`) and otherwise, after one ``RuntimeWarning``, on
the pure-Python runtime (:mod:`remotemedia.local`) with the Python implementations of the nodes
(``AudioResample``, ``FormatConverter``, ``AudioChunker`` and ``EnergyVAD`` have them, in
:mod:`remotemedia.nodes.audio`, as do all Python nodes); ``rust`` raises
:class:`RuntimeUnavailableError` without the native runtime; ``python`` always runs in Python.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import is_rust_runtime_available, local
from .data import Audio, Binary, Json, RuntimeData, Text, wrap
from .local import ManifestError, PipelineError, PolicyError

HINTS = ("auto", "rust", "python")


class RuntimeUnavailableError(RuntimeError):
    """``runtime_hint="rust"`` without the native runtime."""


_warned = False


def select_runtime(hint: str) -> str:
    """The runtime a pipeline with ``runtime_hint`` runs on: ``"rust"`` or ``"python"``.

    ``auto`` takes the native runtime when it is installed and otherwise the pure-Python one,
    with one ``RuntimeWarning`` per process; ``rust`` raises :class:`RuntimeUnavailableError`
    without it; ``python`` always takes the pure-Python runtime."""
    global _warned
    if hint not in HINTS:
        raise ValueError(f'runtime_hint must be "auto", "rust" or "python", not {hint!r}')
    if hint == "python":
        return "python"
    if is_rust_runtime_available():
        return "rust"
    from . import _native_error

    if hint == "rust":
        raise RuntimeUnavailableError(
            "runtime_hint='rust' needs the native runtime (remotemedia._native), which is not "
            f"installed ({_native_error()}); install the package with `pip install ./python` "
            "(needs the Rust toolchain), or use runtime_hint='auto' to fall back to Python"
        )
    if not _warned:
        _warned = True
        warnings.warn(
            "remotemedia: the native runtime (remotemedia._native) is not installed "
            f"({_native_error()}); pipelines run on the pure-Python runtime, which is slower "
            "and has only the nodes written in Python",
            RuntimeWarning,
            stacklevel=3,
        )
    return "python"


@dataclass
class Result:
    """One output of a run: the data and the node and port that produced it."""

    node: str
    port: str
    data: RuntimeData


@dataclass
class Failure:
    """A node that failed on an input (``fatal`` ones end the run)."""

    node: str
    node_type: str
    message: str
    fatal: bool


class RunError(PipelineError):
    """A run ended by a fatal node failure; ``results`` and ``failures`` hold what it did."""

    def __init__(self, failure: Failure, results: List[Result], failures: List[Failure]):
        super().__init__(f"node `{failure.node}` ({failure.node_type}): {failure.message}")
        self.results = results
        self.failures = failures


class Pipeline:
    """A validated pipeline, ready to run.

    ``runtime_hint`` picks the runtime (:func:`select_runtime`): the Rust runtime
    (``runtime == "rust"``) or the pure-Python one (``runtime == "python"``), which runs the
    nodes' Python implementations in this process. A node's own ``runtime_hint: python`` in the
    manifest runs that node's Python implementation in a worker process of the Rust runtime.

    ``policy`` marks ``text`` as untrusted (say, sent by a user of your service): a dict with
    ``allowed_types`` (list; empty = every native type), ``allow_python`` (bool, default
    False), ``max_nodes`` (default 32) and ``max_bytes`` (default 65536). It is checked before
    any node type is resolved, so a refused manifest imports and starts nothing; a refusal
    raises :class:`PolicyError` (a ``PermissionError``)."""

    def __init__(
        self,
        text: str,
        origin: str = "<manifest>",
        runtime_hint: str = "auto",
        policy: Optional[dict] = None,
    ):
        self.runtime = select_runtime(runtime_hint)
        if policy is not None and self.runtime != "rust":
            raise RuntimeUnavailableError(
                "a policy for untrusted manifests needs the Rust runtime (runtime_hint='rust')"
            )
        if self.runtime == "rust":
            from . import _native

            policy_json = None if policy is None else json.dumps(policy)
            self._backend = _native.NativePipeline(text, origin, policy_json)
        else:
            self._backend = local.LocalPipeline(_parse(text, origin), origin)
        self.text = text
        self.origin = origin

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, runtime_hint: str = "auto") -> "Pipeline":
        """Loads a manifest file (YAML or JSON)."""
        with open(path, encoding="utf-8") as f:
            return cls(f.read(), os.fspath(path), runtime_hint)

    @classmethod
    def from_dict(
        cls, manifest: dict, origin: str = "<dict>", runtime_hint: str = "auto"
    ) -> "Pipeline":
        """A manifest given as a dict (the same fields as the YAML form). A node's ``type``
        may be a :class:`remotemedia.Node` subclass, from any module or from the running
        script itself: it runs in worker processes, which import it by module (a script's
        top-level code runs there too, so keep the script's own work under
        ``if __name__ == "__main__":``, as with multiprocessing)."""
        manifest = dict(manifest)
        manifest["nodes"] = [_node_decl(n) for n in manifest.get("nodes", [])]
        return cls(json.dumps(manifest, indent=1), origin, runtime_hint)

    @classmethod
    def build(cls, name: str | None = None) -> "Builder":
        """Builds a pipeline in code::

            p = (Pipeline.build("shout")
                 .node("trim", "TextTransform", op="trim")
                 .node("shout", "TextTransform", op="uppercase")
                 .connect("trim", "shout")
                 .pipeline())
        """
        return Builder(name)

    @property
    def node_ids(self) -> List[str]:
        return list(self._backend.node_ids())

    def run_sync(self, inputs: Iterable[Any]) -> List[Result]:
        """Runs one session over ``inputs`` (data objects, or str / bytes / JSON values) and
        returns every output. Failures that cost one input are in ``last_failures``; a fatal
        one raises :class:`RunError`."""
        items = [_to_native(wrap(x)) for x in inputs]
        outputs, failures = self._backend.run(items)
        results = [
            Result(node, port, _from_native(kind, value, extra, ts))
            for node, port, ts, kind, value, extra in outputs
        ]
        self.last_failures = [Failure(*f) for f in failures]
        fatal = next((f for f in self.last_failures if f.fatal), None)
        if fatal is not None:
            raise RunError(fatal, results, self.last_failures)
        return results

    def session(self) -> Session:
        """Starts a streaming session."""
        return Session(self._backend.open_session())

    async def run(self, inputs: Iterable[Any]) -> List[Result]:
        """:meth:`run_sync` without blocking the event loop."""
        return await asyncio.to_thread(self.run_sync, list(inputs))

    def get_metrics(self) -> dict:
        """Per node type of this process: counts, errors, retries and p50/p95/p99 latency, with
        sessions and model pools; the same JSON as the CLI's ``--metrics``. On the pure-Python
        runtime, the keys of that JSON that apply to it."""
        return get_metrics(self.runtime)


class Builder:
    """A manifest assembled in code (:meth:`Pipeline.build`); :meth:`manifest` is the same
    dict the YAML form would give, so ``Pipeline.from_dict(b.manifest())`` is the same
    pipeline."""

    def __init__(self, name: str | None = None):
        self._manifest: dict = {"version": "v1", "nodes": [], "connections": []}
        if name:
            self._manifest["metadata"] = {"name": name}

    def node(self, id: str, type: Any, runtime_hint: str | None = None, **params: Any) -> "Builder":
        """Adds a node: its id, its type (a name or a Node subclass) and its params."""
        decl: dict = {"id": id, "type": type}
        if params:
            decl["params"] = params
        if runtime_hint:
            decl["runtime_hint"] = runtime_hint
        self._manifest["nodes"].append(decl)
        return self

    def connect(self, source: str, target: str, **options: Any) -> "Builder":
        """Connects ``node[.port]`` to ``node[.port]`` (options: capacity, drop_policy)."""
        self._manifest["connections"].append({"from": source, "to": target, **options})
        return self

    def config(self, **config: Any) -> "Builder":
        """Pipeline config (metrics, retry, circuit_breaker, edges)."""
        self._manifest.setdefault("config", {}).update(config)
        return self

    def manifest(self) -> dict:
        return json.loads(json.dumps(self._manifest, default=node_type_of))

    def pipeline(self, runtime_hint: str = "auto") -> "Pipeline":
        return Pipeline.from_dict(self._manifest, "<built in code>", runtime_hint)


class Session:
    """A live session of a pipeline (:meth:`Pipeline.session`): send inputs as they come, read
    outputs as they are produced. Works with ``with`` / ``for`` and ``async with`` /
    ``async for``; the async forms wait in a worker thread, so the event loop goes on. Leaving
    the block cancels whatever is still running.

    Queues between nodes are bounded: ``send`` waits while the pipeline is busy, so read the
    outputs while sending (another thread or task) rather than after sending everything."""

    def __init__(self, backend: Any):
        self._backend = backend
        self.failures: List[Failure] = []

    @property
    def id(self) -> str:
        return self._backend.id

    def send_sync(self, item: Any, target: str | None = None) -> None:
        """Sends one input (to every pipeline input that takes it, or to ``target``: a node
        id or ``node.port``); waits while the pipeline is busy."""
        self._backend.send(_to_native(wrap(item)), target)

    async def send(self, item: Any, target: str | None = None) -> None:
        await asyncio.to_thread(self.send_sync, item, target)

    def flush_sync(self) -> None:
        """Asks every node to emit what it has buffered now."""
        self._backend.send(("flush",), None)

    async def flush(self) -> None:
        await asyncio.to_thread(self.flush_sync)

    def close_input(self) -> None:
        """Ends the input: nodes flush and the remaining outputs arrive, then iteration ends."""
        self._backend.close_input()

    def cancel(self) -> None:
        """Stops every node now (from any thread); iteration ends soon after."""
        self._backend.cancel()

    def recv_sync(self, timeout: float | None = None) -> Result | None:
        """The next output, or None once the session has ended (``TimeoutError`` after
        ``timeout`` seconds without one). Failures that cost one input are collected in
        :attr:`failures`; a fatal one raises :class:`RunError`."""
        while True:
            item = self._backend.recv(timeout)
            if item is None:
                return None
            ok, value = item
            if ok:
                node, port, ts, kind, data, extra = value
                return Result(node, port, _from_native(kind, data, extra, ts))
            failure = Failure(*value)
            self.failures.append(failure)
            if failure.fatal:
                raise RunError(failure, [], self.failures)

    async def recv(self, timeout: float | None = None) -> Result | None:
        return await asyncio.to_thread(self.recv_sync, timeout)

    def metrics(self) -> dict:
        """This session's metrics (while its input is open)."""
        return json.loads(self._backend.metrics_json())

    def __iter__(self):
        while (r := self.recv_sync()) is not None:
            yield r

    def __aiter__(self):
        return self

    async def __anext__(self) -> Result:
        r = await self.recv()
        if r is None:
            raise StopAsyncIteration
        return r

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()


def _node_decl(decl: Any) -> Any:
    """A node declaration with a class ``type`` turned into ``module:Class``."""
    if not isinstance(decl, dict) or not isinstance(decl.get("type"), type):
        return decl
    return {**decl, "type": node_type_of(decl["type"])}


def node_type_of(cls: type) -> str:
    """The manifest type of a :class:`remotemedia.Node` subclass (``module:Class``), making
    sure the worker processes can import its module: the folder it is found in goes on their
    ``PYTHONPATH``. A class of the running script is named by the script's file."""
    from .node import Node

    if not issubclass(cls, Node):
        raise TypeError(f"{cls.__name__} is not a remotemedia.Node subclass")
    if "." in cls.__qualname__:
        raise TypeError(f"{cls.__qualname__}: node classes must be defined at module level")
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if path is None:
        raise TypeError(
            f"{cls.__qualname__} comes from a module without a file; define it in a .py file"
        )
    path = Path(path).resolve()
    if cls.__module__ == "__main__":
        name, root = path.stem, path.parent
    else:
        name = cls.__module__
        depth = name.count(".") + (1 if path.name == "__init__.py" else 0)
        root = path.parents[depth]
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *paths])
    return f"{name}:{cls.__qualname__}"


def get_metrics(runtime: Optional[str] = None) -> dict:
    """The process's metrics: sessions, per node type counts, errors and latency percentiles
    (the same JSON as the CLI's ``--metrics``), of the Rust runtime when it is installed or
    ``runtime`` says so, else of the pure-Python runtime."""
    if runtime == "python" or (runtime is None and not is_rust_runtime_available()):
        return json.loads(local.metrics_json())
    from . import _native

    return json.loads(_native.metrics_json())


def _parse(text: str, origin: str) -> Any:
    """A manifest's text as data, for the pure-Python runtime (JSON, or YAML with PyYAML)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{origin}: {e}") from None


def as_float32(samples: Any) -> np.ndarray:
    """Samples as a C-contiguous float32 array: the array itself when it already is one."""
    a = np.asarray(samples)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a).reshape(-1)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    if a.dtype == np.int16:
        return (a.astype(np.float32) / 32768.0).reshape(-1)
    if a.dtype == np.int32:
        return (a.astype(np.float32) / 2147483648.0).reshape(-1)
    raise TypeError(
        f"audio samples of dtype {a.dtype} are not supported: use float32 (or another float, "
        "int16, int32)"
    )


def _to_native(d: RuntimeData) -> Tuple:
    if isinstance(d, Audio):
        return ("audio", as_float32(d.samples), int(d.sample_rate), int(d.channels))
    if isinstance(d, Text):
        return ("text", d.text)
    if isinstance(d, Json):
        return ("json", json.dumps(d.value))
    if isinstance(d, Binary):
        return ("binary", bytes(d.data))
    raise TypeError(
        f"{type(d).__name__} inputs are not supported by Pipeline.run (audio, text, json, binary)"
    )


def _from_native(kind: str, value: Any, extra: Any, ts: float) -> RuntimeData:
    if kind == "audio":
        rate, channels = extra
        return Audio(value, rate, channels, timestamp=ts)
    if kind == "text":
        is_final, span = extra
        return Text(value, is_final=is_final, span=span, timestamp=ts)
    if kind == "json":
        return Json(json.loads(value), timestamp=ts)
    if kind == "binary":
        return Binary(value, timestamp=ts)
    return Text(value, timestamp=ts)


__all__: Sequence[str] = [
    "HINTS",
    "Builder",
    "Failure",
    "Session",
    "ManifestError",
    "Pipeline",
    "PipelineError",
    "Result",
    "RunError",
    "RuntimeUnavailableError",
    "as_float32",
    "get_metrics",
    "node_type_of",
    "select_runtime",
]
