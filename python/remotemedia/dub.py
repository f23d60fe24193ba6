"""Subtitle dubbing: an SRT or WebVTT file to one timed speech track (``remotemedia dub``).

>>> import remotemedia
>>> d = remotemedia.dub("talk.srt", "talk.wav", characters={"Alice": "espeak:en-us+f3"})
>>> d.report["totals"]["overflowed"], d.samples.shape, d.sample_rate

Runs on the Rust runtime of this process (the voices load once and stay loaded for the next
job). The track is the same, sample for sample, whatever ``workers`` is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Dub:
    """A dubbed track: ``samples`` as float32 of shape (frames, channels)."""

    samples: np.ndarray
    sample_rate: int
    report: dict
    """Per cue: slot, natural length, speed used, position, overflow; and totals."""
    retimed: str
    """The subtitles re-timed to where their speech is, in the input's format."""


def _voices(mapping):
    return sorted((mapping or {}).items())


def dub(
    subtitles: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    lang: str = "en",
    voices: dict[str, str] | None = None,
    characters: dict[str, str] | None = None,
    max_speedup: float = 1.2,
    mix_with: str | os.PathLike | None = None,
    duck_db: float = 12.0,
    duration: float | None = None,
    sample_rate: int | None = None,
    cache: str | os.PathLike | None = None,
    format: str | None = None,
    report: str | os.PathLike | None = None,
    subs_out: str | os.PathLike | None = None,
) -> Dub:
    """Dubs ``subtitles``: a path to an .srt/.vtt file, or the file's text (several lines).

    Cues may start with ``[de:]``, ``[Alice]`` or ``[de:Alice]``. Voices: ``"piper"`` (the
    bundled voice), ``"piper:PATH"`` or a Piper ``.onnx`` path, ``"espeak:NAME"``. ``voices``
    maps a language to its voice, ``characters`` a character (``NAME`` or ``LANG:NAME``) to its
    voice. Speech longer than its slot is spoken at most ``max_speedup`` times faster, then
    runs on and delays the next cue. ``output`` (WAV or FLAC by extension or ``format``),
    ``report`` (JSON or Markdown) and ``subs_out`` are written when given.

    Raises :class:`remotemedia.DubError` (a ValueError) naming the cue and its line for bad
    subtitles, a cue without a voice or one that cannot be spoken; no output is left then.
    """
    from . import _native

    if isinstance(subtitles, os.PathLike) or "\n" not in subtitles:
        text = Path(subtitles).read_text(encoding="utf-8")
    else:
        text = subtitles
    fspath = lambda p: None if p is None else os.fspath(p)  # noqa: E731
    options = {
        "workers": workers,
        "lang": lang,
        "voices": _voices(voices),
        "characters": _voices(characters),
        "max_speedup": max_speedup,
        "duration": duration,
        "mix_with": fspath(mix_with),
        "duck_db": duck_db,
        "sample_rate": sample_rate,
        "cache": fspath(cache),
        "output": fspath(output),
        "format": format,
        "report": fspath(report),
        "subs_out": fspath(subs_out),
    }
    samples, channels, rate, report_json, retimed = _native.dub(text, json.dumps(options))
    return Dub(
        samples=samples.reshape(-1, channels),
        sample_rate=rate,
        report=json.loads(report_json),
        retimed=retimed,
    )
