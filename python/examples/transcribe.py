"""Transcribe a WAV file from Python on the Rust runtime, printing each utterance as it is
recognised: the SDK's streaming session with the repository's speech pipeline.

    ./scripts/setup-models.sh && ./scripts/setup-python.sh
    .venv/bin/python python/examples/transcribe.py models/samples/beckett.wav
"""

import sys
import threading
import wave
from pathlib import Path

import numpy as np

from remotemedia import Audio
from remotemedia.pipeline import Pipeline

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "transcribe.yaml"


def read_wav(path):
    """16-bit PCM WAV as float32 samples, interleaved, with its rate and channels."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV here")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0, w.getframerate(), w.getnchannels()


def main(path):
    samples, rate, channels = read_wav(path)
    step = rate // 50 * channels  # 20 ms frames
    pipeline = Pipeline.from_yaml(MANIFEST)
    with pipeline.session() as session:

        def feed():
            for start in range(0, len(samples), step):
                session.send_sync(Audio(samples[start : start + step], rate, channels))
            session.close_input()

        # Send on one thread, read here: outputs print while the audio is still going in.
        threading.Thread(target=feed, daemon=True).start()
        for result in session:
            text = result.data
            if text.span:
                start, end = text.span
                print(f"[{start:6.2f} → {end:6.2f}] {text.text}", flush=True)
            else:
                print(text.text, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/samples/beckett.wav")
