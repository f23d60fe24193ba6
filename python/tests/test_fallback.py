"""Runtime selection: the pure-Python implementations of the audio nodes give the native
nodes' results (within the tolerances stated in remotemedia.nodes.audio), `auto` falls back to
them with one warning when the native module is missing, and `rust` then fails clearly."""

import asyncio
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from remotemedia import Audio, Binary, NodeError, is_rust_runtime_available
from remotemedia.pipeline import (
    ManifestError,
    Pipeline,
    PipelineError,
    RunError,
    get_metrics,
    select_runtime,
)

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "models" / "samples" / "beckett.wav"


def speech() -> np.ndarray:
    """The sample recording (16 kHz mono), as float32."""
    with wave.open(str(SPEECH)) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768


def frames(samples: np.ndarray, rate: int, channels: int = 1, ms: int = 20):
    n = rate * ms // 1000 * channels
    return [Audio(samples[i : i + n], rate, channels) for i in range(0, len(samples), n)]


def both(node_type: str, params: dict, inputs: list):
    """The outputs of a one-node pipeline on the Rust runtime and on the Python one."""
    manifest = {"version": "v1", "nodes": [{"id": "n", "type": node_type, "params": params}]}
    rust = Pipeline.from_dict(manifest, runtime_hint="rust")
    python = Pipeline.from_dict(manifest, runtime_hint="python")
    assert (rust.runtime, python.runtime) == ("rust", "python")
    return [r.data for r in rust.run_sync(inputs)], [r.data for r in python.run_sync(inputs)]


def stereo() -> np.ndarray:
    x = speech()
    return np.stack([x, 0.5 * x[::-1]], axis=1).reshape(-1)


@pytest.mark.parametrize(
    "rate,channels,params",
    [
        (16000, 1, {"target_rate": 48000}),
        (16000, 1, {"target_rate": 8000, "quality": "high"}),
        (16000, 1, {"target_rate": 44100, "quality": "fast"}),
        (16000, 2, {"target_rate": 22050}),
        (16000, 1, {"target_rate": 16000}),
    ],
)
def test_resample_matches_the_native_node_within_1e_6(rate, channels, params):
    x = speech() if channels == 1 else stereo()
    native, fallback = both("AudioResample", params, frames(x, rate, channels))
    assert len(native) == len(fallback)
    a = np.concatenate([d.samples for d in native])
    b = np.concatenate([d.samples for d in fallback])
    assert len(a) == len(b) == -(-len(x) // channels * params["target_rate"] // rate) * channels
    assert np.max(np.abs(a - b)) < 1e-6
    assert {(d.sample_rate, d.channels) for d in fallback} == {(params["target_rate"], channels)}


@pytest.mark.parametrize(
    "params",
    [
        {"channels": 1},
        {"channels": 3},
        {"output": "pcm"},
        {"output": "pcm", "sample_format": "i32", "layout": "planar"},
        {"output": "pcm", "sample_format": "f32", "channels": 1},
    ],
)
def test_format_conversion_gives_the_same_samples_and_bytes(params):
    x = stereo() * 1.3  # some samples clip
    native, fallback = both("FormatConverter", params, frames(x, 16000, 2))
    assert len(native) == len(fallback) > 0
    for a, b in zip(native, fallback):
        if isinstance(a, Binary):
            assert a.data == b.data
        else:
            assert a.channels == b.channels and np.array_equal(a.samples, b.samples)


def test_raw_pcm_input_decodes_the_same():
    pcm = (stereo() * 20000).astype("<i2").tobytes()
    params = {"input": {"sample_format": "i16", "sample_rate": 16000, "channels": 2,
                        "layout": "planar"}}
    chunks = [Binary(pcm[i : i + 1280]) for i in range(0, len(pcm), 1280)]
    native, fallback = both("FormatConverter", params, chunks)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(native, fallback))
    with pytest.raises(RunError, match="not a whole number of 2-channel s16le frames"):
        Pipeline.from_dict(
            {"version": "v1", "nodes": [{"id": "n", "type": "FormatConverter", "params": params}]},
            runtime_hint="python",
        ).run_sync([Binary(b"\0" * 6)])


@pytest.mark.parametrize("params", [{"samples": 512}, {"samples": 333, "pad_tail": True}])
def test_chunking_gives_the_same_frames(params):
    native, fallback = both("AudioChunker", params, frames(stereo(), 16000, 2))
    assert len(native) == len(fallback)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(native, fallback))
    tail = params["samples"] if params.get("pad_tail") else len(stereo()) // 2 % params["samples"]
    assert len(fallback[-1].samples) == 2 * tail


@pytest.mark.parametrize(
    "params", [{}, {"emit_probability": True}, {"frame_ms": 10, "energy_threshold_db": -50}]
)
def test_energy_vad_finds_the_same_speech(params):
    native, fallback = both("EnergyVAD", params, frames(speech(), 16000))
    events = [[d.value for d in out if not isinstance(d, Audio)] for out in (native, fallback)]
    assert len(events[0]) == len(events[1]) >= 2
    frame_s = params.get("frame_ms", 20) / 1000
    for a, b in zip(*events):
        assert a["event"] == b["event"]
        # Inputs are stamped with the time since the session started, so the two runs start
        # a fraction of a millisecond apart; the stated tolerance is one analysis frame.
        assert abs(a["time"] - b["time"]) < frame_s
    assert sum(isinstance(d, Audio) for d in fallback) == len(frames(speech(), 16000))


def test_bad_params_name_the_field_on_the_python_runtime():
    for params, text in [
        ({"target_rate": 0}, "`target_rate`: 0 is less than the minimum of 1"),
        ({"target_rate": 16000, "quality": "best"}, "'best' is not one of fast, balanced, high"),
        ({}, "missing parameter `target_rate`"),
        ({"target_rate": 16000, "rate": 1}, "unknown parameter `rate`"),
    ]:
        manifest = {"version": "v1", "nodes": [
            {"id": "r", "type": "AudioResample", "params": params}]}
        with pytest.raises(ManifestError, match="nodes\\[0\\].params: node `r`") as e:
            Pipeline.from_dict(manifest, runtime_hint="python")
        assert text in str(e.value)


def test_a_node_hinted_python_runs_its_python_version_in_a_worker_process():
    x = speech()
    manifest = {
        "version": "v1",
        "nodes": [
            {"id": "r", "type": "AudioResample", "params": {"target_rate": 48000},
             "runtime_hint": "python"},
            {"id": "v", "type": "EnergyVAD"},
        ],
        "connections": [{"from": "r", "to": "v"}],
    }
    p = Pipeline.from_dict(manifest)
    assert p.runtime == "rust"
    with p.session() as s:
        s.send_sync(Audio(x[:320], 16000))
        assert s.recv_sync(timeout=30).node == "v"
        assert any("remotemedia.worker" in cmd for cmd in child_commands())
    native = Pipeline.from_dict(
        {**manifest, "nodes": [{**manifest["nodes"][0], "runtime_hint": "rust"},
                               manifest["nodes"][1]]}
    )
    inputs = frames(x, 16000)
    a = [r.data for r in p.run_sync(inputs)]
    b = [r.data for r in native.run_sync(inputs)]
    audio = [np.concatenate([d.samples for d in out if isinstance(d, Audio)]) for out in (a, b)]
    assert np.max(np.abs(audio[0] - audio[1])) < 1e-6


def child_commands():
    """Command lines of this process's children (started by any of its threads)."""
    tasks = Path(f"/proc/{os.getpid()}/task").glob("*/children")
    children = [c for t in tasks for c in t.read_text().split()]
    out = []
    for child in children:
        try:
            out.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except FileNotFoundError:
            pass
    return out


def test_auto_without_the_native_module_falls_back_with_one_warning(tmp_path):
    manifest = tmp_path / "vad.yaml"
    manifest.write_text(
        "version: v1\n"
        "nodes:\n"
        "  - {id: r, type: AudioResample, params: {target_rate: 16000}}\n"
        "  - {id: v, type: EnergyVAD}\n"
        "connections:\n"
        "  - {from: r, to: v}\n"
    )
    x = np.repeat(speech(), 3)  # 48 kHz
    np.save(tmp_path / "x.npy", x)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("no_native.py")), str(manifest),
         str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["available"] is False
    assert report["runtime"] == ["python", "python"]
    assert len(report["warnings"]) == 1, "one warning per process, not per pipeline"
    assert "pure-Python runtime" in report["warnings"][0]
    assert "runtime_hint='rust' needs the native runtime" in report["rust_error"]
    assert "`SileroVAD` has no Python implementation" in report["unknown_type_error"]
    assert "AudioResample" in report["unknown_type_error"]
    assert report["processed"]["AudioResample"] == len(frames(x, 48000))
    assert report["processed"]["EnergyVAD"] >= len(frames(x, 48000))
    # The same results as the Rust runtime in this process.
    results = Pipeline.from_yaml(manifest).run_sync(frames(x, 48000))
    audio = np.concatenate([r.data.samples for r in results if isinstance(r.data, Audio)])
    assert np.max(np.abs(audio - np.array(report["audio"], dtype=np.float32))) < 1e-6
    events = [r.data.value for r in results if not isinstance(r.data, Audio)]
    assert [e["event"] for e in events] == [e["event"] for e in report["events"]]
    assert all(abs(a["time"] - b["time"]) < 0.02 for a, b in zip(events, report["events"]))


def test_the_hint_is_checked():
    assert is_rust_runtime_available()
    assert select_runtime("auto") == "rust" and select_runtime("python") == "python"
    with pytest.raises(ValueError, match='"auto", "rust" or "python"'):
        select_runtime("gpu")
    with pytest.raises(ManifestError, match="runtime_hint `rust` needs the native runtime"):
        Pipeline.from_dict(
            {"version": "v1", "nodes": [{"id": "c", "type": "AudioChunker",
                                         "runtime_hint": "rust"}]},
            runtime_hint="python",
        )


def test_python_runtime_sessions_stream_and_report_failures():
    p = Pipeline.build().node("c", "AudioChunker", samples=4).pipeline(runtime_hint="python")
    with p.session() as s:
        s.send_sync(Audio(np.arange(6, dtype=np.float32), 16000))
        assert list(s.recv_sync(timeout=1).data.samples) == [0, 1, 2, 3]
        with pytest.raises(TimeoutError):
            s.recv_sync(timeout=0.01)
        s.flush_sync()
        assert list(s.recv_sync(timeout=1).data.samples) == [4, 5]
        assert s.metrics()["nodes"]["c"]["processed"] == 1
        with pytest.raises(PipelineError, match="no pipeline input takes text data"):
            s.send_sync("hello")
        s.send_sync(Audio(np.zeros(2, dtype=np.float32), 16000))
        s.send_sync(Audio(np.zeros(4, dtype=np.float32), 8000))
        with pytest.raises(RunError, match="audio format changed mid-stream"):
            s.recv_sync(timeout=1)
        assert s.recv_sync(timeout=1) is None
    snapshot = p.get_metrics()
    assert snapshot["runtime"] == "python"
    assert snapshot["node_types"]["AudioChunker"]["processed"] >= 2
    assert get_metrics("python") == snapshot


def test_python_runtime_async_iteration_and_non_fatal_errors():
    p = Pipeline.build().node("u", Picky).pipeline(runtime_hint="python")

    async def main():
        async with p.session() as s:
            for word in ["keep", "drop", "also"]:
                await s.send(word)
            s.close_input()
            return s, [r.data.text async for r in s]

    s, got = asyncio.run(main())
    assert got == ["KEEP", "ALSO"]
    assert [(f.node, f.message, f.fatal) for f in s.failures] == [("u", "no drops", False)]


from remotemedia import Node  # noqa: E402


class Picky(Node):
    """Upper-cases text, refusing the word "drop"."""

    inputs = ["text"]
    outputs = {"out": ["text"]}

    async def process(self, data):
        if data.text == "drop":
            raise NodeError("no drops")
        yield data.text.upper()


def test_the_example_gives_the_same_regions_on_either_runtime():
    lines = {}
    for runtime in ("rust", "python"):
        out = subprocess.run(
            [sys.executable, "python/examples/speech_regions.py", "--runtime", runtime,
             str(SPEECH)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        ).stdout.splitlines()
        assert out[0] == f"runtime: {runtime}"
        lines[runtime] = [line.split()[1:5:3] for line in out[1:]]
    assert len(lines["rust"]) == len(lines["python"]) >= 3
    for a, b in zip(lines["rust"], lines["python"]):
        assert all(abs(float(x) - float(y)) < 0.05 for x, y in zip(a, b)), (a, b)
