"""Resampling side by side: RemoteMedia's AudioResample node against Python soxr (HQ) and
scipy.signal.resample_poly, on the same 60 s of 48 kHz mono, to 16 kHz.

Quality is the SNR against the analytic signal: the input is a linear sine sweep
(20 Hz -> 7 kHz, below the 8 kHz output Nyquist) plus a 1 kHz tone, and the reference is the
same formula evaluated at the output sample times. The first and last 0.5 s are excluded.

Run through bench/resample.sh, which builds the Rust side and installs the Python packages.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.signal
import soxr

IN_RATE, OUT_RATE, SECONDS, RUNS = 48_000, 16_000, 60, 7


def signal(rate: int) -> np.ndarray:
    t = np.arange(int(rate * SECONDS)) / rate
    f0, f1 = 20.0, 7_000.0
    sweep = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * SECONDS)))
    return (0.45 * sweep + 0.25 * np.sin(2 * np.pi * 1_000.0 * t)).astype(np.float64)


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    n = min(len(out), len(ref))
    edge = OUT_RATE // 2
    o, r = out[edge : n - edge].astype(np.float64), ref[edge : n - edge]
    return float(10 * np.log10(np.sum(r * r) / np.sum((o - r) ** 2)))


def timed(fn, x):
    times, out = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        out = fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], out


def main() -> None:
    binary = sys.argv[1]
    x = signal(IN_RATE).astype(np.float32)
    ref = signal(OUT_RATE)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "in.f32"
        x.astype("<f4").tofile(raw)
        cmd = [binary, str(raw), str(IN_RATE), str(OUT_RATE), str(RUNS), tmp]
        for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
            r = json.loads(line)
            out = np.fromfile(r["output"], dtype="<f4")
            rows.append((r["name"], r["median_ms"], snr_db(out, ref), len(out)))
    for name, fn in [
        ("soxr HQ", lambda s: soxr.resample(s, IN_RATE, OUT_RATE, quality="HQ")),
        ("soxr VHQ", lambda s: soxr.resample(s, IN_RATE, OUT_RATE, quality="VHQ")),
        ("scipy resample_poly", lambda s: scipy.signal.resample_poly(s, 1, 3)),
    ]:
        ms, out = timed(fn, x)
        rows.append((name, ms, snr_db(out, ref), len(out)))

    soxr_ms = next(ms for n, ms, _, _ in rows if n == "soxr HQ")
    print(f"{SECONDS} s mono {IN_RATE} Hz -> {OUT_RATE} Hz, median of {RUNS} runs, one thread each")
    print(f"{'implementation':<24}{'median ms':>10}{'x soxr HQ':>11}{'SNR dB':>9}{'samples':>9}")
    for name, ms, snr, n in rows:
        print(f"{name:<24}{ms:>10.1f}{soxr_ms / ms:>10.2f}x{snr:>9.1f}{n:>9}")


if __name__ == "__main__":
    main()
