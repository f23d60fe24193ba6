"""dora-rs source: ping-pongs uint8 arrays through the echo node, one in flight, and prints
latency percentiles (µs) and round trips per second per size."""
import json
import os
import time

import numpy as np
import pyarrow as pa
from dora import Node

SIZES = [(4096, 5000), (65536, 2000), (1 << 20, 500), (4 << 20, 200)]
node = Node()


def echo():
    while True:
        event = node.next(timeout=10.0)
        if event is None or event["type"] in ("STOP", "ERROR"):
            raise RuntimeError(f"dataflow ended: {event}")
        if event["type"] == "INPUT" and event["id"] == "back":
            return event


for size, n in SIZES:
    arr = pa.array(np.zeros(size, dtype=np.uint8))
    for _ in range(n // 10):  # warm-up
        node.send_output("out", arr)
        echo()
    lat = np.empty(n)
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        node.send_output("out", arr)
        echo()
        lat[i] = (time.perf_counter() - t0) * 1e6
    total = time.perf_counter() - start
    p = np.percentile(lat, [50, 90, 99])
    print("RESULT", json.dumps({"bytes": size, "rounds": n, "p50": round(p[0], 1),
          "p90": round(p[1], 1), "p99": round(p[2], 1), "per_s": round(n / total)}), flush=True)
