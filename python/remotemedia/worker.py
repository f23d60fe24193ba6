"""``python -m remotemedia.worker``: runs one Python node for one session (or, with
``--shared``, for every session of a node declared ``shared``).

The runtime starts this process with the node's type and params and an inherited pipe (the
control channel) on which the worker reports, as JSON lines, its handshake (``ready`` with the
protocol version and the node's type, schema and ports, or ``error`` naming the stage that
failed) and then a heartbeat from its event loop. Frames travel over the four iceoryx2
services the runtime created for this worker (``<service>/in`` and ``<service>/out``, each a
publish-subscribe service plus an event service to wake the reader), read and written by
``remotemedia._native.WorkerLink``. Nothing polls: the event loop waits on the listener's
socket.

The worker exits when told to (a close frame) or when the runtime goes away (the control socket
reaches end of file; the runtime also sets PDEATHSIG). A node that fails fatally answers every
later frame with an error until the runtime closes it.

``python -m remotemedia.worker --list`` prints the registered node types as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

from . import frame as fr
from .data import Output, wrap
from .node import FatalNodeError, Node, NodeError, load_builtins, registered, resolve

#: Must match WORKER_BORROWED in crates/python-executor/src/ipc.rs: input samples the node may keep as
#: zero-copy views. Past this the worker copies audio, so receiving never stalls.
MAX_BORROWED = 48


class Worker:
    def __init__(self, node: Node, cls: type, args: argparse.Namespace, report):
        from ._native import WorkerLink

        self.node = node
        self.report = report
        self.heartbeat = args.heartbeat_ms / 1000.0
        self.session = args.session
        self.control_fd = args.control_fd
        self.out_ports = list(cls.outputs)
        self.failed: Optional[str] = None  # why the node failed for good
        # Past this many zero-copy views alive, audio input is copied, so receiving never stalls.
        self.link = WorkerLink(args.service, self.session, args.max_frame, MAX_BORROWED - 4)

    # -- sending ---------------------------------------------------------------------------

    def _send(self, msg: int, seq: int, **kw) -> None:
        # Each frame wakes the runtime at once: an output is acted on before its input is done.
        self.link.send(msg, seq, **kw)
        self.link.notify()

    def _port(self, port: Any) -> int:
        if isinstance(port, int) and 0 <= port < len(self.out_ports):
            return port
        if port in self.out_ports:
            return self.out_ports.index(port)
        raise NodeError(f"yielded to unknown output port {port!r}; ports: {self.out_ports}")

    def _emit(self, seq: int, item: Any, timestamp: Optional[float]) -> None:
        port = 0
        if isinstance(item, Output):
            port, item = self._port(item.port), item.data
        data = wrap(item)
        ts = data.timestamp if data.timestamp is not None else timestamp
        self._send(fr.DATA, seq, data=data, port=port, timestamp=ts)

    def _fail(self, seq: int, e: BaseException) -> None:
        """Reports a failed input; a fatal error fails the node for good."""
        if isinstance(e, FatalNodeError):
            self.failed = str(e) or type(e).__name__
            self._send(fr.ERROR, seq, error=self.failed)
            return
        if not isinstance(e, NodeError):
            traceback.print_exception(e, file=sys.stderr)
        text = str(e) if isinstance(e, NodeError) else f"{type(e).__name__}: {e}"
        self._send(fr.ERROR, seq, error=text, flags=fr.FLAG_REJECTED)

    async def _drive(self, seq: int, gen, timestamp: Optional[float]) -> None:
        """Runs one generator (async, or plain for a synchronous ``process``) to its end,
        sending each output, then the input's end or its failure."""
        try:
            if hasattr(gen, "__aiter__"):
                async for item in gen:
                    self._emit(seq, item, timestamp)
            else:
                for item in gen or ():
                    self._emit(seq, item, timestamp)
        except Exception as e:  # one input failed; the node may go on
            self._fail(seq, e)
            return
        self._send(fr.DONE, seq)

    async def _handle(self, f: fr.Frame) -> bool:
        """Processes one frame; False when the worker should stop (told to close)."""
        if self.failed is not None and f.msg != fr.CLOSE:
            # A node that failed for good answers nothing more; the worker waits to be closed
            # (exiting now could take its last frames with it before the runtime reads them).
            self._send(fr.ERROR, f.seq, error=f"the node failed earlier: {self.failed}")
            return True
        if f.msg == fr.DATA:
            await self._drive(f.seq, self.node.process(f.data), f.timestamp)
            return True
        if f.msg == fr.FLUSH:
            await self._drive(f.seq, self.node.flush(), f.timestamp)
            return True
        if f.msg == fr.CONTROL:
            await self._drive(f.seq, self.node.control(f.data), f.timestamp)
            return True
        if f.msg == fr.CLOSE:
            result = self.node.close()
            if inspect.isawaitable(result):
                await result
            self._send(fr.DONE, f.seq)
            return False
        self._send(fr.ERROR, f.seq, error=f"unexpected message type {f.msg}")
        return False

    def _control_readable(self) -> None:
        if not os.read(self.control_fd, 4096):
            print("remotemedia.worker: the runtime went away; exiting", file=sys.stderr, flush=True)
            os._exit(0)

    def _idle(self) -> bool:
        """Every frame received is answered and none is waiting."""
        return self.waiting

    async def _beat(self) -> None:
        """Beats while there is work; when idle, says so once and sleeps until the next frame
        (the runtime then expects beats again from the moment it sends one)."""
        while True:
            if self._idle():
                self.report({"type": "idle", "received": self.received})
                self.busy.clear()
                await self.busy.wait()
            self.report({"type": "heartbeat"})
            await asyncio.sleep(self.heartbeat)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        fd = self.link.fileno()

        def notified() -> None:
            self.link.clear_events()
            wake.set()

        # The listener's socket in the loop's own epoll: no thread hop per frame.
        loop.add_reader(fd, notified)
        # The runtime never writes to the control socket; end of file means it is gone.
        loop.add_reader(self.control_fd, self._control_readable)
        self.received, self.waiting, self.busy = 0, False, asyncio.Event()
        beat = asyncio.create_task(self._beat())
        try:
            while True:
                try:
                    f = self.link.receive()
                except ValueError as e:
                    self._send(fr.ERROR, 0, error=str(e))
                    return
                if f is None:
                    self.waiting = True
                    await wake.wait()
                    wake.clear()
                    continue
                self.received += 1
                self.waiting = False
                self.busy.set()
                if not await self._handle(fr.Frame(*f)):
                    return
                del f
        finally:
            beat.cancel()
            loop.remove_reader(fd)
            # Gives the shared memory back now, not whenever the interpreter gets to it.
            self.link = None


class _Session:
    """One session's node on a shared worker, on a thread and event loop of its own: a node
    that blocks holds its own session only."""

    def __init__(self, node: Node, name: str):
        self.node = node
        self.loop = asyncio.new_event_loop()

        def main() -> None:
            self.loop.run_forever()
            self.loop.close()

        threading.Thread(target=main, name=f"session-{name}", daemon=True).start()

    def run(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class SharedWorker(Worker):
    """One process for every session of a node type declared ``shared``: the model is loaded
    once (``load``), each session gets its own node instance (``Open`` and ``Close`` frames),
    and requests arrive in batches (consecutive frames, the last without ``FLAG_MORE``) from
    the runtime's scheduler. A node class with ``process_batch`` gets each batch's inputs in
    one call, on a pool thread; otherwise each input runs on its session's thread. The event
    loop here only moves frames and beats the heartbeat."""

    def __init__(self, cls: type, loaded: Any, params: Dict[str, Any], args, report):
        super().__init__(None, cls, args, report)
        self.cls = cls
        self.loaded = loaded
        self.params = params
        self.sessions: Dict[str, _Session] = {}
        self.batch = []
        self.batches = ThreadPoolExecutor(thread_name_prefix="batch")
        self.batched = callable(getattr(cls, "process_batch", None))
        self.lock = threading.Lock()
        self.outstanding = 0  # requests received and not yet answered

    def _send(self, msg: int, seq: int, **kw) -> None:
        # From the sessions' and batches' threads.
        with self.lock:
            self.link.send(msg, seq, **kw)
            self.link.notify()
            if msg in (fr.DONE, fr.ERROR):
                self.outstanding -= 1

    def _idle(self) -> bool:
        with self.lock:
            return self.waiting and self.outstanding <= 0

    async def _handle(self, f: fr.Frame) -> bool:
        if f.msg == fr.CLOSE and not f.session:
            for session in self.sessions.values():
                session.stop()
            return False
        with self.lock:
            self.outstanding += 1
        self.batch.append(f)
        if not f.flags & fr.FLAG_MORE:
            batch, self.batch = self.batch, []
            self._dispatch(batch)
        return True

    def _dispatch(self, frames: List[Any]) -> None:
        inputs = [f for f in frames if f.msg == fr.DATA and f.session in self.sessions]
        if self.batched and inputs:
            self.batches.submit(self._run_batch, inputs)
            frames = [f for f in frames if f not in inputs]
        for f in frames:
            self._one(f)

    def _one(self, f: Any) -> None:
        if f.msg == fr.OPEN:
            if f.session in self.sessions:
                self._send(fr.ERROR, f.seq, error=f"session {f.session!r} is already open")
                return
            node = self.cls()
            node.loaded = self.loaded
            session = self.sessions[f.session] = _Session(node, f.session)
            session.run(self._open(f, session))
            return
        session = self.sessions.get(f.session)
        if session is None:
            if f.msg == fr.CLOSE:
                self._send(fr.DONE, f.seq)
            else:
                self._send(fr.ERROR, f.seq, error=f"session {f.session!r} is not open on this worker")
            return
        node = session.node
        if f.msg == fr.DATA:
            session.run(self._drive(f.seq, node.process(f.data), f.timestamp))
        elif f.msg == fr.FLUSH:
            session.run(self._drive(f.seq, node.flush(), f.timestamp))
        elif f.msg == fr.CONTROL:
            session.run(self._drive(f.seq, node.control(f.data), f.timestamp))
        elif f.msg == fr.CLOSE:
            del self.sessions[f.session]
            session.run(self._close(f, session))
        else:
            self._send(fr.ERROR, f.seq, error=f"unexpected message type {f.msg}")

    async def _open(self, f: Any, session: _Session) -> None:
        try:
            result = session.node.setup(self.params)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._send(fr.ERROR, f.seq, error=f"setup failed: {type(e).__name__}: {e}")
            self.loop.call_soon_threadsafe(self._forget, f.session, session)
            return
        self._send(fr.DONE, f.seq)

    def _forget(self, name: str, session: _Session) -> None:
        if self.sessions.get(name) is session:
            del self.sessions[name]
        session.stop()

    async def _close(self, f: Any, session: _Session) -> None:
        try:
            result = session.node.close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            traceback.print_exc(file=sys.stderr)
        self._send(fr.DONE, f.seq)
        session.stop()

    def _run_batch(self, frames: List[Any]) -> None:
        """On a pool thread: one ``process_batch`` call for the batch's inputs."""
        nodes = [self.sessions[f.session].node for f in frames]
        try:
            results = self.cls.process_batch(nodes, [f.data for f in frames])
            if inspect.isawaitable(results):
                results = asyncio.run(results)
            results = list(results)
            if len(results) != len(frames):
                raise NodeError(
                    f"process_batch returned {len(results)} results for {len(frames)} inputs"
                )
        except Exception as e:  # the whole batch failed
            results = [e] * len(frames)
        for f, result in zip(frames, results):
            if isinstance(result, BaseException):
                self._fail(f.seq, result)
                continue
            try:
                for item in result or ():
                    self._emit(f.seq, item, f.timestamp)
            except Exception as e:
                self._fail(f.seq, e)
                continue
            self._send(fr.DONE, f.seq)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        await super().run()


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m remotemedia.worker",
        description="Runs one RemoteMedia Python node in this process (started by the runtime).",
    )
    p.add_argument("--list", action="store_true", help="print the registered node types as JSON")
    p.add_argument("--describe", metavar="TYPE", help="print one node type (name or module:Class) as JSON")
    p.add_argument("--modules", default="", help="comma-separated modules that register nodes")
    p.add_argument("--type", help="registered node type, or package.module:Class")
    p.add_argument("--params", default="{}", help="the node's params as JSON")
    p.add_argument("--session", default="")
    p.add_argument("--service", help="iceoryx2 service prefix created by the runtime")
    p.add_argument("--control-fd", type=int, default=3)
    p.add_argument("--max-frame", type=int, default=64 << 20)
    p.add_argument("--heartbeat-ms", type=int, default=500)
    p.add_argument("--shared", action="store_true", help="serve every session (a shared node)")
    return p.parse_args(argv)


def _modules(args: argparse.Namespace) -> List[str]:
    return [m for m in args.modules.split(",") if m]


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.list:
        load_builtins(_modules(args))
        json.dump([cls.describe() for cls in registered().values()], sys.stdout)
        print()
        return 0
    if args.describe:
        load_builtins(_modules(args))
        json.dump(resolve(args.describe).describe(), sys.stdout)
        print()
        return 0

    control = os.fdopen(args.control_fd, "w", buffering=1)

    def report(message: Dict[str, Any]) -> None:
        control.write(json.dumps(message) + "\n")

    def fail(stage: str, e: BaseException) -> int:
        traceback.print_exc(file=sys.stderr)
        report({"type": "error", "stage": stage, "message": f"{type(e).__name__}: {e}"})
        return 2

    try:
        load_builtins(_modules(args))
        cls = resolve(args.type)
        info = cls.describe()
        params = json.loads(args.params)
    except Exception as e:
        return fail("import", e)

    async def call(fn, *a):
        result = fn(*a)
        return await result if inspect.isawaitable(result) else result

    async def start() -> int:
        try:
            loaded = await call(cls.load, params)
            if not args.shared:
                node = cls()
                node.loaded = loaded
                await call(node.setup, params)
        except ValueError as e:
            return fail("params", e)
        except Exception as e:
            return fail("setup", e)
        try:
            if args.shared:
                worker = SharedWorker(cls, loaded, params, args, report)
            else:
                worker = Worker(node, cls, args, report)
        except Exception as e:
            return fail("connect", e)
        report({"type": "ready", "protocol": fr.PROTOCOL_VERSION, "pid": os.getpid(), "node": info})
        await worker.run()
        return 0

    return asyncio.run(start())


if __name__ == "__main__":
    sys.exit(main())
