"""Cost of the Python SDK: one `run_sync` call of a one-node pass-through pipeline (the whole
call, and the FFI part alone), and the per-frame cost of streaming 20 ms frames through a
session from Python.

    ./scripts/setup-python.sh && .venv/bin/python bench/python_sdk.py
"""

import statistics
import threading
import time

import numpy as np

from remotemedia import Audio
from remotemedia.pipeline import Pipeline

PASS = "version: v1\nnodes:\n  - {id: a, type: PassThrough}\n"


def timed(fn, n):
    """Median and p99 of n calls, in µs."""
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main():
    p = Pipeline(PASS)
    frame = np.zeros(320, dtype=np.float32)
    audio = Audio(frame, 16000)
    native_input = [("audio", frame, 16000, 1)]
    for _ in range(200):  # warm up
        p.run_sync([audio])

    print("figure                                              median      p99")
    m, p99 = timed(lambda: p._native.node_ids(), 100_000)
    print(f"FFI call, trivial method (node_ids)                {m:8.2f} µs {p99:8.2f} µs")
    m, p99 = timed(lambda: p._native.run(native_input), 3_000)
    print(f"native run: open session, 1 frame, close           {m:8.1f} µs {p99:8.1f} µs")
    m, p99 = timed(lambda: p.run_sync([audio]), 3_000)
    print(f"Pipeline.run_sync([Audio]) (the whole call)        {m:8.1f} µs {p99:8.1f} µs")

    n = 5_000
    with p.session() as s:
        t = time.perf_counter()
        for _ in range(n):
            s.send_sync(audio)
            s.recv_sync()
        per = (time.perf_counter() - t) / n * 1e6
    print(f"session: send + receive one 20 ms frame, in turn   {per:8.1f} µs")
    with p.session() as s:
        # A reader thread drains outputs while this one sends, as a live app would.
        got = []
        reader = threading.Thread(target=lambda: got.extend(s))
        t = time.perf_counter()
        reader.start()
        for _ in range(n):
            s.send_sync(audio)
        s.close_input()
        reader.join()
        per = (time.perf_counter() - t) / n * 1e6
    assert len(got) == n
    print(f"session: sending while another thread reads      {per:8.1f} µs per frame")


if __name__ == "__main__":
    main()
