"""WhisperNode's batch (several sessions' utterances in one pass) gives each utterance the text
it gets alone, and rejects or skips the inputs it would reject or skip alone."""

import wave
from pathlib import Path

import numpy as np
import pytest

from remotemedia import Audio, NodeError, Text
from remotemedia.nodes.whisper import WhisperNode

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


def _utterances():
    with wave.open(str(SAMPLES / "two_cities.wav")) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    audio = (audio.astype(np.float32) / 32768.0)[:: rate // 16000]
    return [audio[i : i + 48_000].copy() for i in range(0, 6 * 48_000, 48_000)]


@pytest.fixture(scope="module")
def nodes():
    params = {"threads": 1}
    loaded = WhisperNode.load(params)
    out = []
    for _ in range(3):
        node = WhisperNode()
        node.loaded = loaded
        node.setup(params)
        out.append(node)
    return out


def _alone(node, data):
    import asyncio

    async def run():
        return [t async for t in node.process(data)]

    return asyncio.run(run())


def test_a_batch_gives_each_utterance_its_text_alone(nodes):
    inputs = [Audio(u, 16_000, 1, timestamp=float(i)) for i, u in enumerate(_utterances())]
    owners = [nodes[i % len(nodes)] for i in range(len(inputs))]
    batched = WhisperNode.process_batch(owners, inputs)
    alone = [_alone(n, d) for n, d in zip(owners, inputs)]
    assert [[t.text for t in r] for r in batched] == [[t.text for t in r] for r in alone]
    assert all(r and isinstance(r[0], Text) and r[0].span[0] == d.timestamp for r, d in zip(batched, inputs))


def test_a_bad_input_or_silence_in_a_batch_affects_that_input_only(nodes):
    speech = _utterances()[0]
    inputs = [
        Audio(speech, 16_000, 1),
        Audio(speech, 48_000, 1),
        Audio(np.zeros(16_000, dtype=np.float32), 16_000, 1),
        Text("not audio"),
        Audio(speech, 16_000, 1),
    ]
    results = WhisperNode.process_batch([nodes[0]] * len(inputs), inputs)
    assert results[0][0].text == results[4][0].text == _alone(nodes[0], inputs[0])[0].text
    assert isinstance(results[1], NodeError) and "16000 Hz mono" in str(results[1])
    assert results[2] == []
    assert isinstance(results[3], NodeError)
