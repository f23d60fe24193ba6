"""Cost of the Python SDK: one `run_sync` call of a one-node pass-through pipeline (the whole
call, and the FFI part alone), the per-frame cost of streaming 20 ms frames through a session
from Python, and the speed-up of the Rust runtime over the pure-Python fallback
(runtime_hint="python") on the same pipelines and audio.

    ./scripts/setup-python.sh && .venv/bin/python bench/python_sdk.py
"""

import statistics
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

from remotemedia import Audio
from remotemedia.pipeline import Pipeline

PASS = "version: v1\nnodes:\n  - {id: a, type: PassThrough}\n"
RECORDING = Path(__file__).resolve().parents[1] / "models" / "samples" / "two_cities.wav"
#: The pipelines of the Rust-against-Python comparison (nodes with a Python implementation).
FALLBACK_PIPELINES = {
    "AudioResample 48k→16k": [("r", "AudioResample", {"target_rate": 16000})],
    "AudioResample 48k→16k + EnergyVAD": [
        ("r", "AudioResample", {"target_rate": 16000}),
        ("v", "EnergyVAD", {}),
    ],
    "FormatConverter f32 → s16le PCM": [("f", "FormatConverter", {"output": "pcm"})],
    "AudioChunker 512": [("c", "AudioChunker", {"samples": 512})],
}


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
    m, p99 = timed(lambda: p._backend.node_ids(), 100_000)
    print(f"FFI call, trivial method (node_ids)                {m:8.2f} µs {p99:8.2f} µs")
    m, p99 = timed(lambda: p._backend.run(native_input), 3_000)
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
    rust_vs_python()


def rust_vs_python(runs=5):
    """Each pipeline over the whole recording in 20 ms frames, by run_sync, on both runtimes,
    alternating; median wall time of `runs`."""
    with wave.open(str(RECORDING)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    samples = pcm.astype(np.float32) / 32768
    step = rate // 50
    frames = [Audio(samples[i : i + step], rate) for i in range(0, len(samples), step)]
    seconds = len(samples) / rate
    print(f"\n{RECORDING.name}: {seconds:.1f} s at {rate} Hz, {len(frames)} frames of 20 ms")
    print("pipeline                              Rust        Python      speed-up  (x real time)")
    for name, nodes in FALLBACK_PIPELINES.items():
        b = Pipeline.build()
        for nid, node_type, params in nodes:
            b.node(nid, node_type, **params)
        for (a, *_), (c, *_) in zip(nodes, nodes[1:]):
            b.connect(a, c)
        pipelines = {hint: b.pipeline(runtime_hint=hint) for hint in ("rust", "python")}
        times = {hint: [] for hint in pipelines}
        for _ in range(runs):
            for hint, p in pipelines.items():
                t = time.perf_counter()
                p.run_sync(frames)
                times[hint].append(time.perf_counter() - t)
        rust, python = (statistics.median(times[h]) for h in ("rust", "python"))
        print(
            f"{name:36s} {rust * 1e3:7.1f} ms  {python * 1e3:8.1f} ms  {python / rust:6.1f}×"
            f"   ({seconds / rust:.0f}× / {seconds / python:.0f}×)",
            flush=True,
        )


if __name__ == "__main__":
    rust_vs_python() if sys.argv[1:] == ["--fallback"] else main()
