"""The Python SDK on the Rust runtime: validation, runs, zero-copy audio, the GIL."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from remotemedia import Audio, Text
from remotemedia.pipeline import (
    ManifestError,
    Pipeline,
    PipelineError,
    PolicyError,
    as_float32,
    get_metrics,
)

PASS = "version: v1\nnodes:\n  - {id: a, type: PassThrough}\n"


def test_a_bad_manifest_raises_with_the_cli_message_and_location():
    with pytest.raises(ManifestError) as e:
        Pipeline("version: v1\nnodes:\n  - {id: g, type: AudioGian}\n", "mine.yaml")
    assert "mine.yaml:3:" in str(e.value)
    assert "did you mean `AudioGain`" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_from_dict_runs_text_through_the_runtime():
    p = Pipeline.from_dict(
        {
            "version": "v1",
            "nodes": [{"id": "shout", "type": "TextTransform", "params": {"op": "uppercase"}}],
        }
    )
    results = p.run_sync(["hello", Text("again")])
    assert [r.data.text for r in results] == ["HELLO", "AGAIN"]
    assert {r.node for r in results} == {"shout"}


def test_float32_audio_goes_in_and_comes_out_without_a_copy():
    samples = np.linspace(-1, 1, 320, dtype=np.float32)
    (result,) = Pipeline(PASS).run_sync([Audio(samples, 16000)])
    out = result.data.samples
    assert out.ctypes.data == samples.ctypes.data, "the output views the input's memory"
    assert not out.flags.writeable
    assert result.data.sample_rate == 16000 and result.data.channels == 1
    # A real node's output is a view of the runtime's buffer, not a copy made for Python.
    gain = Pipeline("version: v1\nnodes:\n  - {id: g, type: AudioGain, params: {gain_db: 0}}\n")
    (r,) = gain.run_sync([Audio(samples, 16000)])
    assert r.data.samples.base is not None and not r.data.samples.flags.owndata
    np.testing.assert_allclose(r.data.samples, samples)


def test_audio_with_an_impossible_shape_is_refused_before_it_runs():
    p = Pipeline(PASS)
    with pytest.raises(ValueError, match="rate must be"):
        p.run_sync([Audio(np.zeros(4, dtype=np.float32), 0)])
    with pytest.raises(ValueError, match="whole frames of 2"):
        p.run_sync([Audio(np.zeros(5, dtype=np.float32), 16000, channels=2)])


def test_other_sample_types_follow_the_stated_rule():
    pcm = np.array([0, 16384, -32768], dtype=np.int16)
    np.testing.assert_allclose(as_float32(pcm), [0.0, 0.5, -1.0])
    assert as_float32(np.zeros(4, dtype=np.float64)).dtype == np.float32
    with pytest.raises(TypeError, match="uint8"):
        as_float32(np.zeros(4, dtype=np.uint8))


def test_the_gil_is_released_while_the_runtime_works():
    p = Pipeline(
        "version: v1\nnodes:\n  - {id: r, type: AudioResample, params: {target_rate: 16000}}\n"
    )
    noise = np.random.default_rng(1).standard_normal(960).astype(np.float32)
    frames = [Audio(noise, 48000)] * 20000
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.01)
    before, started = ticks, time.monotonic()
    p.run_sync(frames)
    during, took = ticks - before, time.monotonic() - started
    stop.set()
    t.join()
    assert took > 0.1, f"the run should take a while to show anything ({took:.3f} s)"
    # Holding the GIL for the whole run would allow at most a tick or two.
    assert during >= 20, f"another thread ran only {during} times in {took:.2f} s"


def test_async_runs_do_not_block_the_event_loop():
    async def main():
        p = Pipeline(
            "version: v1\nnodes:\n  - {id: t, type: TextTransform, params: {op: uppercase}}\n"
        )
        a, b = await asyncio.gather(p.run(["x"]), p.run(["y"]))
        return a[0].data.text, b[0].data.text

    assert asyncio.run(main()) == ("X", "Y")


def test_metrics_are_the_runtimes_own_and_shaped_like_the_clis():
    import remotemedia

    assert remotemedia.is_rust_runtime_available()
    p = Pipeline(PASS)
    p.run_sync(["m"])
    m = p.get_metrics()
    assert m["node_types"]["PassThrough"]["processed"] >= 1
    # The same document as the CLI's --metrics (the test command builds the CLI first).
    root = Path(__file__).resolve().parents[2]
    cli = json.loads(
        subprocess.run(
            [str(root / "target/debug/remotemedia"), "run", "examples/uppercase.yaml"]
            + ["-i", "examples/lines.txt", "-o", "/dev/null", "--metrics", "-"],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stderr
    )
    assert set(m) == set(cli)
    assert set(m["node_types"]["PassThrough"]) == set(cli["node_types"]["TextTransform"])
    assert {"p50_us", "p95_us", "p99_us"} <= set(m["node_types"]["PassThrough"]["latency"])
    assert m["node_types"]["PassThrough"]["processed"] >= 1
    assert m["sessions_active"] == 0


def test_data_no_input_takes_raises_and_names_the_inputs():
    gain = Pipeline("version: v1\nnodes:\n  - {id: g, type: AudioGain}\n")
    with pytest.raises(PipelineError, match="g.in takes audio"):
        gain.run_sync(["text is not audio"])


UPPER = "version: v1\nnodes:\n  - {id: t, type: TextTransform, params: {op: uppercase}}\n"


def test_a_session_streams_outputs_as_inputs_arrive():
    p = Pipeline(UPPER)
    with p.session() as s:
        s.send_sync("one")
        assert s.recv_sync(timeout=10).data.text == "ONE", "an output before the input ends"
        s.send_sync(Text("two"), target="t")
        assert s.metrics()["inputs"] == 2
        s.close_input()
        assert [r.data.text for r in s] == ["TWO"]


def test_async_sessions_send_and_read_concurrently_without_copying_audio():
    async def main():
        frames = [np.full(320, i, dtype=np.float32) for i in range(100)]
        async with Pipeline(PASS).session() as s:

            async def feed():
                for f in frames:
                    await s.send(Audio(f, 16000))
                s.close_input()

            task = asyncio.create_task(feed())
            got = [r async for r in s]
            await task
        return frames, got

    frames, got = asyncio.run(main())
    assert len(got) == 100
    assert all(r.data.samples.ctypes.data == f.ctypes.data for r, f in zip(got, frames))


def test_cancel_from_another_thread_ends_a_waiting_reader():
    s = Pipeline(UPPER).session()
    ended = threading.Event()

    def read():
        assert s.recv_sync() is None
        ended.set()

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.05)
    assert not ended.is_set(), "the reader waits for output"
    s.cancel()
    t.join(timeout=10)
    assert ended.is_set(), "cancel ends the wait"
    with pytest.raises(PipelineError, match="closed"):
        s.send_sync("late")


SCRIPT = """
from remotemedia import Node, Text
from remotemedia.pipeline import Pipeline


class Shout(Node):
    async def process(self, data):
        yield Text(data.text.upper() + "!")


if __name__ == "__main__":
    p = Pipeline.from_dict(
        {"version": "v1", "nodes": [
            {"id": "trim", "type": "TextTransform", "params": {"op": "trim"}},
            {"id": "shout", "type": Shout},
        ], "connections": [{"from": "trim", "to": "shout"}]}
    )
    print([r.data.text for r in p.run_sync(["  hi ", "there"])])
"""


def test_a_node_class_from_the_users_script_runs_in_a_worker(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['HI!', 'THERE!']"


def test_only_node_classes_can_be_node_types():
    with pytest.raises(TypeError, match="not a remotemedia.Node subclass"):
        Pipeline.from_dict({"version": "v1", "nodes": [{"id": "x", "type": dict}]})


def test_a_pipeline_built_in_code_is_the_manifest_it_prints():
    b = (
        Pipeline.build("shout")
        .node("trim", "TextTransform", op="trim")
        .node("shout", "TextTransform", op="uppercase", suffix="!")
        .connect("trim", "shout")
    )
    assert b.manifest() == {
        "version": "v1",
        "metadata": {"name": "shout"},
        "nodes": [
            {"id": "trim", "type": "TextTransform", "params": {"op": "trim"}},
            {"id": "shout", "type": "TextTransform", "params": {"op": "uppercase", "suffix": "!"}},
        ],
        "connections": [{"from": "trim", "to": "shout"}],
    }
    assert [r.data.text for r in b.pipeline().run_sync([" hi "])] == ["HI!"]
    with pytest.raises(ManifestError, match="connections"):
        Pipeline.build().node("a", "PassThrough").connect("a", "nowhere").pipeline()


def test_the_transcribe_example_prints_the_recording_as_timed_text():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "python/examples/transcribe.py", "models/samples/beckett.wav"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.lower().splitlines()
    assert len(lines) == 6 and lines[0].startswith("[  0.")
    for words in ["ever tried", "ever failed", "no matter", "try again", "fail again"]:
        assert any(words in line for line in lines), done.stdout


def _children() -> set:
    """Processes whose parent is this one (any thread's)."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(stat.parent.name)
    return found


def test_an_untrusted_manifest_is_refused_before_anything_imports_or_starts(
    tmp_path, monkeypatch
):
    module = tmp_path / "marker_node.py"
    module.write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_suffix('.imported').touch()\n"
        "from remotemedia import Node\n\n"
        "class Marker(Node):\n"
        "    async def process(self, data):\n"
        "        yield data\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    text = "version: v1\nnodes:\n  - {id: m, type: 'marker_node:Marker'}\n"
    imported = tmp_path / "marker_node.imported"
    before = _children()
    seen = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(_children() - before)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(PolicyError, match="Python"):
            Pipeline(text, "client", runtime_hint="rust", policy={})
        with pytest.raises(PolicyError, match="at most 1"):
            Pipeline("version: v1\nnodes: [{id: a, type: PassThrough}, {id: b, type: PassThrough}]\n",
                     "client", runtime_hint="rust", policy={"max_nodes": 1})
    finally:
        stop.set()
        watcher.join()
    assert not imported.exists(), "the refused module was imported"
    assert not seen, f"processes started: {seen}"
    # The witness works: with Python allowed, resolving the type imports the module.
    Pipeline(text, "client", runtime_hint="rust", policy={"allow_python": True})
    assert imported.exists()
    # A native manifest within the policy loads.
    ok = Pipeline("version: v1\nnodes: [{id: a, type: PassThrough}]\n", "client",
                  runtime_hint="rust", policy={"max_nodes": 1})
    assert ok.node_ids == ["a"]
