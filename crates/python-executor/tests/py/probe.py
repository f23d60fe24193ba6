"""Test nodes for the python executor's tests: they misbehave on request."""

import ctypes
import gc
import os
import signal
import sys
import time

from remotemedia import Audio, Control, FatalNodeError, Json, Node, NodeError, Output, Text


class Probe(Node):
    """Echoes its input, or does what a text command says."""

    outputs = {"out": ["audio", "text", "json", "binary", "image", "control"], "side": ["text"]}
    params_schema = {
        "type": "object",
        "properties": {"fail_setup": {"type": "string"}, "reject": {"type": "boolean"}},
        "additionalProperties": False,
    }

    def setup(self, params):
        if params.get("reject"):
            raise ValueError("reject is set, so these params are refused")
        if params.get("fail_setup"):
            raise RuntimeError(params["fail_setup"])

    async def process(self, data):
        if isinstance(data, Audio):
            # The array's base is the shared-memory sample it views (remotemedia._native).
            base = data.samples.base
            yield Json(
                {
                    "owndata": bool(data.samples.flags.owndata),
                    "writeable": bool(data.samples.flags.writeable),
                    "in_shared_memory": type(base).__name__ == "HeldSample",
                }
            )
            yield data
            return
        if not isinstance(data, Text):
            yield data
            return
        cmd, _, arg = data.text.partition(":")
        if cmd == "pid":
            yield Json({"pid": os.getpid()})
        elif cmd == "kill":
            print("probe: about to be killed", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        elif cmd == "segfault":
            print("probe: about to segfault", file=sys.stderr, flush=True)
            ctypes.string_at(0)
        elif cmd == "crash_after":
            for i in range(int(arg)):
                yield Text(f"{i}")
            ctypes.string_at(0)
        elif cmd == "exit":
            os._exit(int(arg or 3))
        elif cmd == "hang":
            time.sleep(float(arg or 3600))  # blocks the event loop: no heartbeat
            yield Text("woke")
        elif cmd == "reject":
            raise NodeError("asked to reject this input")
        elif cmd == "bug":
            raise KeyError("missing")
        elif cmd == "fatal":
            raise FatalNodeError("asked to fail for good")
        elif cmd == "many":
            for i in range(int(arg)):
                yield Text(f"{i}")
        elif cmd == "side":
            yield Output(Text("to the side"), port="side")
            yield Text("to the front")
        elif cmd == "big":
            yield b"x" * int(arg)
        elif cmd == "cancel":
            yield Control("cancel", "probe says stop")
        elif cmd == "garbage":
            worker = next(o for o in gc.get_objects() if type(o).__name__ == "Worker")
            worker.link.send_raw(b"XX" + bytes(38))
            worker.link.notify()
            yield Text("after garbage")
        else:
            yield data

    async def flush(self):
        yield Text("flushed")


class Buffered(Node):
    """Keeps every audio input (as the zero-copy view) and yields them all at flush."""

    def setup(self, params):
        self.kept = []

    async def process(self, data):
        self.kept.append(data.samples)
        return
        yield

    async def flush(self):
        total = sum(float(x.sum()) for x in self.kept)
        yield Json({"frames": len(self.kept), "sum": total})


class SyncProbe(Node):
    """A plain-generator ``process``: echoes text; ``reject`` fails that input, ``fatal`` ends
    the node, ``many:N`` yields N texts."""

    outputs = {"out": ["text"]}

    def process(self, data):
        cmd, _, arg = data.text.partition(":")
        if cmd == "reject":
            raise NodeError("rejected now")
        if cmd == "fatal":
            raise FatalNodeError("fatal now")
        if cmd == "many":
            for i in range(int(arg)):
                yield Text(f"{i}")
            return
        yield data

    async def flush(self):
        yield Text("flushed")
