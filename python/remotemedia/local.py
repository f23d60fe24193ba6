"""The pure-Python runtime: runs a pipeline in this process with the Python implementations of
its nodes, when the native runtime is missing or a pipeline asks for ``runtime_hint="python"``.

It offers the same interface as ``remotemedia._native`` (``LocalPipeline`` ~ ``NativePipeline``,
``LocalSession`` ~ ``NativeSession``, the same tuples in and out), so :mod:`remotemedia.pipeline`
drives either one. Semantics follow the Rust runtime: inputs nobody feeds take the session's
input, outputs that lead nowhere are the session's output, a flush or the end of the input
flushes the nodes in graph order, ``NodeError`` costs one input and ``FatalNodeError`` ends the
session. Differences: nodes run one after another in the caller's thread (no queues between
them, so no backpressure or drop policies: ``config`` is accepted and not used), and manifest
errors name the field path but not the line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import json
import re
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple, Type

import numpy as np

from .data import Audio, Binary, Control, Image, Json, Output, Text, wrap
from .node import FatalNodeError, Node, NodeError, load_builtins, registered, resolve
from .params import check_params

try:  # the same exception classes whichever runtime raises them
    from ._native import ManifestError, PipelineError, PolicyError
except ImportError:

    class ManifestError(ValueError):  # type: ignore[no-redef]
        """A manifest the runtime cannot run."""

    class PolicyError(PermissionError):  # type: ignore[no-redef]
        """An untrusted manifest that the policy refuses."""

    class PipelineError(RuntimeError):  # type: ignore[no-redef]
        """A session could not take an input or has ended."""


_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$")
_VERSION = re.compile(r"^v?1(\.0)?$")
_HINTS = ("auto", "rust", "python")
_FIELDS = {
    "manifest": {"version", "metadata", "nodes", "connections", "config"},
    "node": {"id", "type", "params", "runtime_hint"},
    "connection": {"from", "to", "capacity", "drop_policy"},
}


def _fields(where: str, obj: Any, kind: str, required: Tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, not {obj!r}")
    unknown = sorted(set(obj) - _FIELDS[kind])
    if unknown:
        known = ", ".join(f"`{f}`" for f in sorted(_FIELDS[kind]))
        raise ManifestError(f"{where}: unknown field `{unknown[0]}`, expected one of {known}")
    for f in required:
        if f not in obj:
            raise ManifestError(f"{where}: missing field `{f}`")


class _Decl:
    """One node of a validated manifest."""

    def __init__(self, index: int, decl: Dict[str, Any], origin: str):
        where = f"{origin}: nodes[{index}]"
        _fields(where, decl, "node", ("id", "type"))
        self.id = decl["id"]
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise ManifestError(f"{where}.id: {self.id!r} may hold only letters, digits, _ and -")
        self.type = decl["type"]
        hint = decl.get("runtime_hint", "auto")
        if hint not in _HINTS:
            raise ManifestError(
                f'{where}.runtime_hint: node `{self.id}`: "{hint}" is not one of "auto", '
                '"rust" or "python"'
            )
        if hint == "rust":
            raise ManifestError(
                f"{where}.runtime_hint: node `{self.id}`: runtime_hint `rust` needs the native "
                "runtime, and this pipeline runs on the pure-Python runtime"
            )
        try:
            self.cls: Type[Node] = resolve(self.type)
        except (LookupError, ImportError) as e:
            known = ", ".join(sorted(registered()))
            raise ManifestError(
                f"{where}.type: node `{self.id}`: `{self.type}` has no Python implementation "
                f"({e}); the pure-Python runtime has: {known}"
            ) from None
        try:
            self.params = check_params(self.type, decl.get("params") or {}, self.cls.params_schema)
        except ValueError as e:
            raise ManifestError(f"{where}.params: node `{self.id}`: {e}") from None
        self.inputs = list(self.cls.inputs)
        self.outputs = list(self.cls.outputs)


class LocalPipeline:
    """A manifest validated for the pure-Python runtime (the ``NativePipeline`` interface)."""

    def __init__(self, manifest: Dict[str, Any], origin: str = "<manifest>"):
        load_builtins()
        _fields(origin, manifest, "manifest", ("version", "nodes"))
        if not _VERSION.match(str(manifest["version"])):
            raise ManifestError(f"{origin}: version: {manifest['version']!r} is not v1")
        nodes = manifest["nodes"]
        if not isinstance(nodes, list) or not nodes:
            raise ManifestError(f"{origin}: nodes: a pipeline needs at least one node")
        self.name = (manifest.get("metadata") or {}).get("name") or "pipeline"
        self.nodes: Dict[str, _Decl] = {}
        for i, d in enumerate(nodes):
            decl = _Decl(i, d, origin)
            if decl.id in self.nodes:
                raise ManifestError(f"{origin}: nodes[{i}].id: node id `{decl.id}` is used twice")
            self.nodes[decl.id] = decl
        # (node, output port) -> [target node]; nodes whose input is fed by another node.
        self.routes: Dict[Tuple[str, str], List[str]] = {}
        fed = set()
        for i, c in enumerate(manifest.get("connections") or []):
            where = f"{origin}: connections[{i}]"
            _fields(where, c, "connection", ("from", "to"))
            src, port = self._endpoint(f"{where}.from", c["from"], output=True)
            dst, _ = self._endpoint(f"{where}.to", c["to"], output=False)
            self.routes.setdefault((src, port), []).append(dst)
            fed.add(dst)
        self.order = self._graph_order(origin)
        self.inputs = [n for n in self.order if n not in fed]

    def _endpoint(self, where: str, text: Any, output: bool) -> Tuple[str, str]:
        if not isinstance(text, str) or not _ENDPOINT.match(text):
            raise ManifestError(f"{where}: {text!r} is not `node` or `node.port`")
        node, _, port = text.partition(".")
        if node not in self.nodes:
            raise ManifestError(
                f"{where}: no node `{node}`; nodes: {', '.join(self.nodes)}"
            )
        ports = self.nodes[node].outputs if output else ["in"]
        if not port:
            if len(ports) > 1:
                raise ManifestError(
                    f"{where}: node `{node}` has several output ports ({', '.join(ports)}); "
                    "name one"
                )
            return node, ports[0]
        if port not in ports:
            side = "output" if output else "input"
            raise ManifestError(
                f"{where}: node `{node}` has no {side} port `{port}`; ports: {', '.join(ports)}"
            )
        return node, port

    def _graph_order(self, origin: str) -> List[str]:
        """Node ids, every node after those that feed it (manifest order among equals)."""
        edges = {n: {d for (s, _), ds in self.routes.items() if s == n for d in ds}
                 for n in self.nodes}
        incoming = {n: sum(n in ds for ds in edges.values()) for n in self.nodes}
        order: List[str] = []
        ready = [n for n in self.nodes if incoming[n] == 0]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for d in sorted(edges[n], key=list(self.nodes).index):
                incoming[d] -= 1
                if incoming[d] == 0:
                    ready.append(d)
        if len(order) < len(self.nodes):
            cycle = ", ".join(n for n in self.nodes if n not in order)
            raise ManifestError(f"{origin}: connections: the nodes {cycle} form a cycle")
        return order

    def node_ids(self) -> List[str]:
        return list(self.nodes)

    def open_session(self) -> "LocalSession":
        return LocalSession(self)

    def run(self, items: List[Tuple]) -> Tuple[List[Tuple], List[Tuple]]:
        """One session over ``items``: every output and every failure. The whole run is one
        call into the session's thread."""
        session = LocalSession(self)
        try:
            inputs = [session.target(item, None) for item in items]
            session.input_closed = True
            session._call(session._run_all(inputs))
            got = list(session.queue)
        finally:
            session.cancel()
        return [v for ok, v in got if ok], [v for ok, v in got if not ok]


class LocalSession:
    """One session of a :class:`LocalPipeline` (the ``NativeSession`` interface). Its nodes run
    on an event loop in a thread of its own, which ends with the session; ``send`` and
    ``flush`` wait until the nodes have handled the input, ``close_input`` and ``cancel``
    don't, and ``recv`` waits for outputs, from any thread."""

    _ids = itertools.count(1)

    def __init__(self, pipeline: LocalPipeline):
        self.p = pipeline
        self.id = f"local-session-{next(self._ids)}"
        self.started = time.monotonic()
        self.ready = threading.Condition()
        self.queue: Deque[Tuple[bool, Tuple]] = deque()
        self.ended = self.fatal = self.input_closed = False
        self.stats = _SessionStats(self.id, pipeline)
        self.nodes: Dict[str, Node] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=self.id, daemon=True)
        self.thread.start()
        _METRICS.opened(self.stats)
        self._call(self._start())

    # -- the NativeSession interface ---------------------------------------------------------

    def send(self, item: Tuple, target: Optional[str]) -> None:
        if self.ended or self.input_closed:
            raise PipelineError("the session's input is closed")
        nodes, data = self.target(item, target)
        self._call(self._step(self._input(nodes, data)))

    def target(self, item: Tuple, target: Optional[str]) -> Tuple[List[str], Any]:
        """The nodes an input goes to, and the input as data (None for a flush)."""
        if item[0] == "flush":
            return [], None
        data = _data_in(item, time.monotonic() - self.started)
        media = _MEDIA[type(data)]
        if target is None:
            nodes = [n for n in self.p.inputs if media in self.p.nodes[n].inputs]
            if not nodes:
                inputs = ", ".join(
                    f"{n}.in ({'|'.join(self.p.nodes[n].inputs)})" for n in self.p.inputs
                )
                raise PipelineError(f"no pipeline input takes {media} data (inputs: {inputs})")
        else:
            node, _, port = target.partition(".")
            if node not in self.p.nodes or port not in ("", "in") or (
                media not in self.p.nodes[node].inputs
            ):
                raise PipelineError(f"unknown pipeline input `{target}`")
            nodes = [node]
        return nodes, data

    def close_input(self) -> None:
        if not (self.ended or self.input_closed):
            self.input_closed = True
            self._submit(self._step(self._flush_all(), end=True))

    def cancel(self) -> None:
        if not self.ended:
            self.fatal = True  # stops the node being driven at its next output
            self._submit(self._shutdown(failed=False))

    def recv(self, timeout: Optional[float] = None) -> Optional[Tuple[bool, Tuple]]:
        with self.ready:
            if not self.ready.wait_for(lambda: self.queue or self.ended, timeout):
                raise TimeoutError("no output yet")
            return self.queue.popleft() if self.queue else None

    def metrics_json(self) -> str:
        if self.ended:
            raise PipelineError("the session's input is closed")
        return json.dumps(self.stats.snapshot())

    # -- the session's thread ----------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _submit(self, coro: Any) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop has stopped: the session has ended
            coro.close()
            return None

    def _call(self, coro: Any) -> Any:
        """Runs ``coro`` on the session's loop and waits for it."""
        fut = self._submit(coro)
        while fut is not None:
            try:
                return fut.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                if not self.thread.is_alive():
                    break
        raise PipelineError("the session has ended")

    async def _start(self) -> None:
        for nid in self.p.order:
            decl = self.p.nodes[nid]
            try:
                node = decl.cls()
                await _maybe_await(node.setup(dict(decl.params)))
            except Exception as e:
                await self._shutdown(failed=True)
                raise PipelineError(f"node `{nid}` ({decl.type}) could not start: {e}") from None
            self.nodes[nid] = node

    async def _input(self, nodes: List[str], data: Any) -> None:
        if data is None:
            await self._flush_all()
            return
        self.stats.inputs += 1
        for n in nodes:
            await self._deliver(n, data)

    async def _step(self, work: Any, end: bool = False) -> None:
        """Runs the nodes' work for one input; ends the session after a fatal failure, or
        when ``end``."""
        await work
        if self.fatal or end:
            await self._shutdown(failed=self.fatal)

    async def _run_all(self, inputs: List[Tuple[List[str], Any]]) -> None:
        for nodes, data in inputs:
            if self.fatal:
                break
            await self._input(nodes, data)
        await self._step(self._flush_all(), end=True)

    async def _shutdown(self, failed: bool) -> None:
        if self.ended:
            return
        for node in self.nodes.values():
            try:
                await _maybe_await(node.close())
            except Exception:  # a node that fails to close must not keep the others open
                pass
        _METRICS.closed(self.stats, failed)
        with self.ready:
            self.ended = True
            self.ready.notify_all()
        # After the callbacks already queued, which include the one that reports this step done.
        self.loop.call_soon(self.loop.stop)

    # -- running nodes -----------------------------------------------------------------------

    async def _deliver(self, nid: str, data: Any) -> None:
        await self._drive(nid, self.nodes[nid].process(data), data.timestamp, count=True)

    async def _drive(self, nid: str, gen: Any, ts: Optional[float], count: bool = False) -> None:
        """Runs one of a node's generators, passing each output on as it comes."""
        if self.fatal or self.ended:
            return
        stats = self.stats.nodes[nid]
        began = time.perf_counter()
        out_ports = self.p.nodes[nid].outputs
        try:
            async for item in gen:
                port = out_ports[0]
                if isinstance(item, Output):
                    port = item.port if isinstance(item.port, str) else out_ports[item.port]
                    if port not in out_ports:
                        raise FatalNodeError(f"yielded to unknown output port {port!r}")
                    item = item.data
                data = wrap(item)
                if data.timestamp is None:
                    data.timestamp = ts
                await self._route(nid, port, data)
                if self.fatal:
                    return
        except FatalNodeError as e:
            stats.errors += 1
            self._fail(nid, str(e) or type(e).__name__, fatal=True)
        except Exception as e:  # one input failed; the node goes on
            stats.errors += 1
            stats.rejected += 1
            text = str(e) if isinstance(e, NodeError) else f"{type(e).__name__}: {e}"
            self._fail(nid, text, fatal=False)
        finally:
            if count:
                stats.record(time.perf_counter() - began)

    async def _route(self, nid: str, port: str, data: Any) -> None:
        targets = self.p.routes.get((nid, port))
        if not targets:
            self.stats.outputs += 1
            self._push((True, _data_out(nid, port, data)))
            return
        for t in targets:
            if _MEDIA.get(type(data)) in self.p.nodes[t].inputs or isinstance(data, Control):
                await self._deliver(t, data)

    async def _flush_all(self) -> None:
        for nid in self.p.order:
            await self._drive(nid, self.nodes[nid].flush(), time.monotonic() - self.started)

    def _fail(self, nid: str, message: str, fatal: bool) -> None:
        self._push((False, (nid, self.p.nodes[nid].type, message, fatal)))
        self.fatal = self.fatal or fatal

    def _push(self, item: Tuple[bool, Tuple]) -> None:
        with self.ready:
            self.queue.append(item)
            self.ready.notify_all()

    def __del__(self) -> None:
        if not getattr(self, "ended", True):
            self.cancel()


async def _maybe_await(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


_MEDIA = {
    Audio: "audio",
    Text: "text",
    Json: "json",
    Binary: "binary",
    Image: "image",
    Control: "control",
}


def _data_in(item: Tuple, ts: float) -> Any:
    kind = item[0]
    if kind == "audio":
        _, samples, rate, channels = item
        # The checks of the native module's conversion, with its messages.
        if not (1 <= rate <= 384_000 and 1 <= channels <= 64):
            raise ValueError(
                f"audio at {rate} Hz with {channels} channels: the rate must be 1..=384000 "
                "and the channels 1..=64"
            )
        if len(samples) % channels:
            raise ValueError(
                f"{len(samples)} samples are not whole frames of {channels} interleaved channels"
            )
        return Audio(samples, rate, channels, timestamp=ts)
    if kind == "text":
        return Text(item[1], timestamp=ts)
    if kind == "json":
        return Json(json.loads(item[1]), timestamp=ts)
    if kind == "binary":
        return Binary(item[1], timestamp=ts)
    raise PipelineError(f"{kind} inputs are not supported")


def _data_out(nid: str, port: str, d: Any) -> Tuple:
    ts = d.timestamp or 0.0
    if isinstance(d, Audio):
        samples = np.asarray(d.samples, dtype=np.float32)
        return (nid, port, ts, "audio", samples, (d.sample_rate, d.channels))
    if isinstance(d, Text):
        return (nid, port, ts, "text", d.text, (d.is_final, d.span))
    if isinstance(d, Json):
        return (nid, port, ts, "json", json.dumps(d.value), None)
    if isinstance(d, Binary):
        return (nid, port, ts, "binary", bytes(d.data), None)
    return (nid, port, ts, "text", str(d), None)


# -- metrics in the shape of the native snapshot ----------------------------------------------


class _NodeStats:
    def __init__(self, node_type: str):
        self.type = node_type
        self.processed = self.errors = self.rejected = 0
        self.latencies: List[float] = []

    def record(self, seconds: float) -> None:
        self.processed += 1
        self.latencies.append(seconds * 1e6)

    def snapshot(self) -> Dict[str, Any]:
        lat = np.array(self.latencies) if self.latencies else np.zeros(1)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {
            "type": self.type,
            "processed": self.processed,
            "errors": self.errors,
            "retries": 0,
            "rejected": self.rejected,
            "breaker_trips": 0,
            "latency": {
                "count": len(self.latencies),
                "mean_us": float(lat.mean()),
                "p50_us": float(p50),
                "p95_us": float(p95),
                "p99_us": float(p99),
                "max_us": float(lat.max()),
            },
        }


class _SessionStats:
    def __init__(self, sid: str, pipeline: LocalPipeline):
        self.id = sid
        self.pipeline = pipeline.name
        self.started = time.monotonic()
        self.inputs = self.outputs = 0
        self.nodes = {n: _NodeStats(d.type) for n, d in pipeline.nodes.items()}

    def snapshot(self) -> Dict[str, Any]:
        return {
            "session_id": self.id,
            "pipeline": self.pipeline,
            "uptime_s": time.monotonic() - self.started,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "dropped": 0,
            "nodes": {n: s.snapshot() for n, s in self.nodes.items()},
            "edges_dropped": {},
        }


class _Metrics:
    """Process-wide figures of the pure-Python runtime (``get_metrics`` without the native
    runtime): the keys of the native snapshot that apply to it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.opened_n = self.closed_n = self.failed_n = self.inputs = self.outputs = 0
        self.active: Dict[str, _SessionStats] = {}
        self.types: Dict[str, _NodeStats] = {}

    def opened(self, s: _SessionStats) -> None:
        with self.lock:
            self.opened_n += 1
            self.active[s.id] = s

    def closed(self, s: _SessionStats, failed: bool) -> None:
        with self.lock:
            self.closed_n += 1
            self.failed_n += failed
            self.inputs += s.inputs
            self.outputs += s.outputs
            self.active.pop(s.id, None)
            for n in s.nodes.values():
                t = self.types.setdefault(n.type, _NodeStats(n.type))
                t.processed += n.processed
                t.errors += n.errors
                t.rejected += n.rejected
                t.latencies.extend(n.latencies)

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            types = {name: t.snapshot() for name, t in self.types.items()}
            for t in types.values():
                del t["type"]
            return {
                "runtime": "python",
                "sessions_opened": self.opened_n,
                "sessions_closed": self.closed_n,
                "sessions_failed": self.failed_n,
                "sessions_active": len(self.active),
                "inputs": self.inputs,
                "outputs": self.outputs,
                "dropped": 0,
                "node_types": types,
                "sessions": [s.snapshot() for s in self.active.values()],
            }


_METRICS = _Metrics()


def metrics_json() -> str:
    return json.dumps(_METRICS.snapshot())
