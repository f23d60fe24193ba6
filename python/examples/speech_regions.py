"""Find where people speak in a WAV file, with a pipeline built in code that mixes the runtime's
nodes and a node written here, streamed through an async session.

The same script runs on the Rust runtime or, without it, on the pure-Python one: nothing in it
changes but ``--runtime`` (``auto`` picks Rust when ``remotemedia._native`` is installed).

    .venv/bin/python python/examples/speech_regions.py models/samples/beckett.wav
    .venv/bin/python python/examples/speech_regions.py --runtime python models/samples/beckett.wav
"""

import argparse
import asyncio
import wave

import numpy as np

from remotemedia import Audio, Json, Node
from remotemedia.pipeline import Pipeline


class Regions(Node):
    """Turns speech start/end events into one region per utterance, with its loudness.

    Defined in the script itself: on the Rust runtime it runs in a worker process (which
    imports this file, hence the ``__main__`` guard below), on the Python runtime in-process."""

    inputs = ["audio", "json"]
    outputs = {"out": ["json"]}

    def setup(self, params):
        self.start = None
        self.energy = []

    async def process(self, data):
        if isinstance(data, Audio):
            if self.start is not None:
                self.energy.append(float(np.mean(np.square(data.samples))))
            return
        event = data.value
        if event["event"] == "speech_start":
            self.start, self.energy = event["time"], []
        elif event["event"] == "speech_end" and self.start is not None:
            level = 10 * np.log10(np.mean(self.energy) + 1e-12) if self.energy else None
            yield Json({"start": self.start, "end": event["time"], "level_db": level})
            self.start = None


def read_wav(path):
    """16-bit PCM WAV as float32 samples, interleaved, with its rate and channels."""
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0, w.getframerate(), w.getnchannels()


async def main(path, runtime):
    samples, rate, channels = read_wav(path)
    pipeline = (
        Pipeline.build("speech-regions")
        .node("resample", "AudioResample", target_rate=16000)
        .node("vad", "EnergyVAD", min_silence_ms=300)
        .node("regions", Regions)
        .connect("resample", "vad")
        .connect("vad", "regions")
        .pipeline(runtime_hint=runtime)
    )
    print(f"runtime: {pipeline.runtime}")
    step = rate // 50 * channels  # 20 ms frames
    async with pipeline.session() as session:

        async def feed():
            for i in range(0, len(samples), step):
                await session.send(Audio(samples[i : i + step], rate, channels))
            session.close_input()

        sending = asyncio.create_task(feed())
        async for result in session:
            r = result.data.value
            print(f"speech {r['start']:6.2f} s → {r['end']:6.2f} s  ({r['level_db']:.1f} dBFS)")
        await sending


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("wav", nargs="?", default="models/samples/beckett.wav")
    args.add_argument("--runtime", choices=["auto", "rust", "python"], default="auto")
    a = args.parse_args()
    asyncio.run(main(a.wav, a.runtime))
