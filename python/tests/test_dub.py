"""remotemedia.dub: the subtitle dubbing job from Python, on the native runtime."""

import json

import numpy as np
import pytest

import remotemedia

SRT = """1
00:00:00,500 --> 00:00:02,500
The weather will be sunny this afternoon.

2
00:00:03,000 --> 00:00:04,500
[Alice] Good morning.
"""


def test_dub_returns_the_track_and_writes_the_files(tmp_path):
    out, report, subs = tmp_path / "t.wav", tmp_path / "r.json", tmp_path / "t.vtt"
    src = tmp_path / "t.srt"
    src.write_text(SRT)
    d = remotemedia.dub(
        src,
        out,
        characters={"Alice": "espeak:en-us+f3"},
        report=report,
        subs_out=subs,
        workers=1,
    )
    assert d.sample_rate == 22050 and d.samples.dtype == np.float32
    assert d.samples.shape == (int(4.5 * 22050), 1)
    assert d.report["totals"]["spoken"] == 2
    assert json.loads(report.read_text())["cues"][1]["voice"] == "espeak:en-us+f3"
    assert subs.read_text().startswith("WEBVTT") and "Good morning." in d.retimed
    assert out.read_bytes()[:4] == b"RIFF"
    # Same samples with more workers, and from the text itself.
    again = remotemedia.dub(SRT, characters={"Alice": "espeak:en-us+f3"}, workers=2)
    assert np.array_equal(again.samples, d.samples)


def test_a_cue_without_a_voice_names_its_line_and_writes_nothing(tmp_path):
    out = tmp_path / "t.wav"
    with pytest.raises(remotemedia.DubError, match=r"cue 2 \(line 6\).*`Alice`") as e:
        remotemedia.dub(SRT, out)
    assert isinstance(e.value, ValueError)
    assert not out.exists()
    with pytest.raises(remotemedia.DubError, match="line 2"):
        remotemedia.dub("1\n00:00:01,000 --> 00:00:0x,000\nHi.\n")
