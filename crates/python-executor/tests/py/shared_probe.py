"""Shared test nodes: one worker process for every session."""

import os
import signal
import sys
import time

from remotemedia import Json, Node, NodeError, Text

LOADS = 0


class Counter(Node):
    """Counts inputs per session; commands: ``sleep:S`` blocks the thread for S seconds
    (no ``to_thread``), ``kill`` kills the process, ``reject`` fails that input, ``stream:N``
    yields N texts half a second apart before the count."""

    shared = True
    params_schema = {
        "type": "object",
        "properties": {"refuse": {"type": "string"}},
        "additionalProperties": False,
    }

    @classmethod
    def load(cls, params):
        global LOADS
        LOADS += 1
        return {"pid": os.getpid()}

    def setup(self, params):
        self.count = 0

    async def process(self, data):
        cmd, _, arg = data.text.partition(":")
        if cmd == "sleep":
            time.sleep(float(arg))
        elif cmd == "kill":
            print("shared probe: about to be killed", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        elif cmd == "reject":
            raise NodeError("rejected on request")
        elif cmd == "stream":
            for i in range(int(arg)):
                if i:
                    time.sleep(0.5)
                yield Text(f"part {i}")
        self.count += 1
        yield Json({"pid": self.loaded["pid"], "loads": LOADS, "count": self.count, "text": data.text})


class Batcher(Node):
    """Answers each input with its text and the size of the batch it came in."""

    shared = True

    def setup(self, params):
        if params.get("refuse"):
            raise ValueError("refuse is set")

    @classmethod
    def process_batch(cls, nodes, inputs):
        time.sleep(0.05)
        return [
            [Text(f"{d.text}/{len(inputs)}")] if d.text != "bad" else NodeError("bad input")
            for d in inputs
        ]
