"""Silero VAD per 32 ms frame: RemoteMedia (Rust, ONNX Runtime via `ort`) against the
`silero-vad` Python package, on the same model file, the same samples and one thread each.

Driven by bench/silero_vad.sh, which builds the Rust side and installs the Python side.

  python bench/silero_vad.py make-input MODELS_DIR OUT.wav
  python bench/silero_vad.py compare IN.wav RUST_BINARY WORK_DIR [ROUNDS]

`compare` alternates the two sides ROUNDS times (so load from other processes hits both alike)
and reports each side's best round. Rust side: the node's default model at 16 kHz (the
package's own 16 kHz export, `silero_vad_openvino_16k.onnx`, which scores like
`silero_vad.onnx`: see the decisions below) and, for the same-file figure, `silero_vad.onnx`.
Python side:
  model - `load_silero_vad(onnx=True)` (the package's OnnxWrapper on silero_vad.onnx), one call
          per 512-sample window, as the package's streaming API makes it;
  iter  - the package's VADIterator (its streaming state machine) per window;
  jit   - `load_silero_vad()`, the package's default (the same network as TorchScript), one
          call per window.
Decisions: per-window speech/non-speech at threshold 0.5 from both sides' probabilities, and the
speech segments from the package's get_speech_timestamps against the Rust node's events (both
with min_speech 250 ms, min_silence 100 ms, pad 30 ms).
"""

import json
import os
import subprocess
import sys
import time
import wave

import numpy as np

# This script shares its name with the package it measures: keep its own folder off the import
# path so `import silero_vad` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

RATE = 16000
WINDOW = 512


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def make_input(models, out):
    """beckett.wav three times, each with 1.5 s of quiet noise on both sides (~39 s)."""
    speech = read_wav(os.path.join(models, "samples", "beckett.wav"))
    rng = np.random.default_rng(7)
    pad = np.zeros(int(1.5 * RATE), np.float32)
    parts = []
    for _ in range(3):
        parts += [pad, speech, pad]
    audio = np.concatenate(parts)
    audio = audio + rng.normal(0.0, 0.001, audio.shape).astype(np.float32)
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def stats(times_ns):
    t = np.sort(np.asarray(times_ns, dtype=np.float64) / 1000.0)
    at = lambda q: float(t[int((len(t) - 1) * q)])
    return {"mean": float(t.mean()), "median": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def python_round(audio, passes):
    import torch
    from silero_vad import VADIterator, load_silero_vad

    torch.set_num_threads(1)
    model = load_silero_vad(onnx=True)
    x = torch.from_numpy(audio)
    n = len(audio) // WINDOW
    chunks = [x[i * WINDOW:(i + 1) * WINDOW] for i in range(n)]
    model_t, probs = [], []
    for p in range(passes):
        model.reset_states()
        for c in chunks:
            t0 = time.perf_counter_ns()
            prob = model(c, RATE).item()
            model_t.append(time.perf_counter_ns() - t0)
            if p == 0:
                probs.append(prob)
    iter_t = []
    for _ in range(passes):
        it = VADIterator(model, threshold=0.5, sampling_rate=RATE,
                         min_silence_duration_ms=100, speech_pad_ms=30)
        for c in chunks:
            t0 = time.perf_counter_ns()
            it(c, return_seconds=True)
            iter_t.append(time.perf_counter_ns() - t0)
    jit = load_silero_vad()
    jit_t, jit_probs = [], []
    for p in range(passes):
        jit.reset_states()
        for c in chunks:
            t0 = time.perf_counter_ns()
            prob = jit(c, RATE).item()
            jit_t.append(time.perf_counter_ns() - t0)
            if p == 0:
                jit_probs.append(prob)
    return {"model_us": stats(model_t), "iter_us": stats(iter_t), "jit_us": stats(jit_t),
            "probs": probs, "jit_probs": jit_probs}


def python_segments(audio):
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad(onnx=True)
    ts = get_speech_timestamps(torch.from_numpy(audio), model, threshold=0.5,
                               min_speech_duration_ms=250, min_silence_duration_ms=100,
                               speech_pad_ms=30)
    return [[t["start"] / RATE, t["end"] / RATE] for t in ts]


def compare(wav, rust_bin, work, rounds):
    audio = read_wav(wav)
    passes = 3
    rust_runs, py_runs = [], []
    for r in range(rounds):
        out = os.path.join(work, f"rust_{r}.json")
        subprocess.run([rust_bin, wav, out, str(passes)], check=True)
        with open(out) as f:
            rust_runs.append(json.load(f))
        py_runs.append(python_round(audio, passes))
    rust = min(rust_runs, key=lambda r: r["model_us"]["median"])
    rust_node = min(rust_runs, key=lambda r: r["node_us"]["median"])
    py = min(py_runs, key=lambda r: r["model_us"]["median"])
    py_iter = min(py_runs, key=lambda r: r["iter_us"]["median"])
    py_jit = min(py_runs, key=lambda r: r["jit_us"]["median"])

    rp, pp = np.asarray(rust["probs"]), np.asarray(py["probs"])
    n = min(len(rp), len(pp))
    agree = int(np.sum((rp[:n] >= 0.5) == (pp[:n] >= 0.5)))
    py_seg = python_segments(audio)
    rs_seg = rust["segments"]

    def fmt(s):
        return f"mean {s['mean']:7.1f}  median {s['median']:7.1f}  p90 {s['p90']:7.1f}  p99 {s['p99']:7.1f} us"

    print(f"samples: {wav} ({len(audio) / RATE:.1f} s, {n} windows of 32 ms), "
          f"{rounds} rounds x {passes} passes, 1 thread each side; best round shown")
    print(f"rust   model (SileroVad::probability)     {fmt(rust['model_us'])}")
    rust_same = min(rust_runs, key=lambda r: r["model_same_file_us"]["median"])
    print(f"rust   model on silero_vad.onnx           {fmt(rust_same['model_same_file_us'])}")
    print(f"python model (silero_vad OnnxWrapper)     {fmt(py['model_us'])}")
    print(f"rust   node  (SileroVAD, 32 ms frame)     {fmt(rust_node['node_us'])}")
    print(f"python iter  (silero_vad VADIterator)     {fmt(py_iter['iter_us'])}")
    print(f"python default (load_silero_vad(), TorchScript) {fmt(py_jit['jit_us'])}")
    print(f"speed-up, model per frame (median):  {py['model_us']['median'] / rust['model_us']['median']:.2f}x")
    print(f"speed-up, model per frame, both on silero_vad.onnx (median):  "
          f"{py['model_us']['median'] / rust_same['model_same_file_us']['median']:.2f}x")
    print(f"speed-up, model vs the package default (median): {py_jit['jit_us']['median'] / rust['model_us']['median']:.2f}x")
    jp = np.asarray(py_jit["jit_probs"])[:n]
    print(f"per-window decisions vs the package default identical: "
          f"{int(np.sum((rp[:n] >= 0.5) == (jp >= 0.5)))}/{n}; max |p diff| = {float(np.max(np.abs(rp[:n] - jp))):.2e}")
    print(f"speed-up, node vs VADIterator (median): {py_iter['iter_us']['median'] / rust_node['node_us']['median']:.2f}x")
    print(f"per-window decisions (p >= 0.5) identical: {agree}/{n}; "
          f"max |p_rust - p_python| = {float(np.max(np.abs(rp[:n] - pp[:n]))):.2e}")
    print(f"segments: rust {len(rs_seg)}, python {len(py_seg)}")
    worst = 0.0
    for a, b in zip(rs_seg, py_seg):
        worst = max(worst, abs(a[0] - b[0]), abs(a[1] - b[1]))
        print(f"  rust {a[0]:7.3f}-{a[1]:7.3f}   python {b[0]:7.3f}-{b[1]:7.3f}")
    print(f"largest segment boundary difference: {worst * 1000:.0f} ms")
    for label, runs, key in (("rust model", rust_runs, "model_us"), ("python model", py_runs, "model_us"),
                             ("rust node", rust_runs, "node_us"), ("python iter", py_runs, "iter_us"),
                             ("python default", py_runs, "jit_us")):
        print(f"  {label} medians per round: " + ", ".join(f"{r[key]['median']:.1f}" for r in runs))


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "make-input":
        make_input(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 3)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
