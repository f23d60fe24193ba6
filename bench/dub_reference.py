"""The way a user dubs subtitles with the `piper-tts` package: parse the cues, speak each with
Piper, place it at its start time, write a WAV. Sequential (one loaded voice, ONNX Runtime's own
threads), or with a process pool where every worker loads its own voice (seed 003's approach).
Tags like `[Alice]` are dropped; no fitting, no mixing. Used by bench/dub.sh for the same-run
comparison.

    python bench/dub_reference.py SUBS.srt OUT.wav --voice MODEL.onnx [--processes N]
"""

import argparse
import re
import wave
from concurrent.futures import ProcessPoolExecutor

import numpy as np

TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d\d\d) --> (\d+):(\d\d):(\d\d)[,.](\d\d\d)")
_VOICE = None


def cues(path):
    out = []
    for block in open(path, encoding="utf-8").read().strip().split("\n\n"):
        lines = block.strip().splitlines()
        for i, line in enumerate(lines):
            m = TIME.search(line)
            if m:
                h, mi, s, ms = map(int, m.groups()[:4])
                text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(lines[i + 1 :]))
                out.append(((h * 3600 + mi * 60 + s) * 1000 + ms, text))
                break
    return out


def _load(model, threads):
    global _VOICE
    import onnxruntime
    from piper import PiperVoice

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    _VOICE = PiperVoice.load(model)
    _VOICE.session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _speak(text):
    return np.concatenate([c.audio_float_array for c in _VOICE.synthesize(text)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("subs")
    p.add_argument("out")
    p.add_argument("--voice", required=True)
    p.add_argument("--processes", type=int, default=0)
    a = p.parse_args()
    todo = cues(a.subs)
    texts = [t for _, t in todo]
    if a.processes > 1:
        with ProcessPoolExecutor(a.processes, initializer=_load, initargs=(a.voice, 1)) as pool:
            audio = list(pool.map(_speak, texts))
    else:
        _load(a.voice, 0)
        audio = [_speak(t) for t in texts]
    rate = 22050
    end = max(start * rate // 1000 + len(x) for (start, _), x in zip(todo, audio))
    track = np.zeros(end, dtype=np.float32)
    for (start, _), x in zip(todo, audio):
        at = start * rate // 1000
        track[at : at + len(x)] += x
    with wave.open(a.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(track, -1, 1) * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
    main()
