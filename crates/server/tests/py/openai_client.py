"""The official `openai` package against `remotemedia serve`'s OpenAI-compatible API:
/v1/chat/completions, /v1/audio/speech and /v1/audio/transcriptions.

argv: base URL (http://host:port/v1), a recording of Beckett's "Ever tried. Ever failed."
The API key comes from REMOTEMEDIA_TOKEN.
"""
import io
import os
import sys
import wave

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key=os.environ["REMOTEMEDIA_TOKEN"], max_retries=0)
messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]

# A whole answer, then the same one streamed: greedy decoding gives the same text.
whole = client.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                       max_tokens=40, seed=3)
text = whole.choices[0].message.content
assert text and text.strip(), whole
assert whole.choices[0].finish_reason in ("stop", "length"), whole
assert whole.object == "chat.completion" and whole.model == "smollm2", whole
assert whole.usage.prompt_tokens > 10 and 0 < whole.usage.completion_tokens <= 40, whole.usage
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

pieces, finish = [], None
for chunk in client.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                            max_tokens=40, seed=3, stream=True):
    delta = chunk.choices[0].delta
    if delta.content:
        pieces.append(delta.content)
    finish = chunk.choices[0].finish_reason or finish
assert len(pieces) > 3, pieces
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == whole.choices[0].finish_reason, finish

# The token budget ends a reply with "length".
short = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=2)
assert short.choices[0].finish_reason == "length", short
assert short.usage.completion_tokens == 2, short.usage

# Refusals, as OpenAI-shaped errors the package raises as its own exceptions.
try:
    openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0).chat.completions.create(
        model="smollm2", messages=messages)
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and "API key" in str(e), e
try:
    client.chat.completions.create(model="smollm2", messages=messages, temperature=5)
    raise SystemExit("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e), e
try:
    client.chat.completions.create(model="smollm2", messages=[])
    raise SystemExit("no messages was accepted")
except openai.BadRequestError as e:
    assert "at least one message" in str(e), e
try:
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "x" * (2 << 20)}])
    raise SystemExit("a 2 MiB request was accepted")
except openai.APIStatusError as e:
    assert e.status_code == 413 and "larger than" in str(e), e
    # The unread rest of the body ends the connection: the client must not reuse it.
    assert e.response.headers.get("connection") == "close", e.response.headers
long_text = "word " * 3000
try:
    client.chat.completions.create(model="smollm2",
                                   messages=[{"role": "user", "content": long_text}])
    raise SystemExit("a prompt over the context was accepted")
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded", e
# Speech: WAV by default, raw 24 kHz 16-bit PCM on request, the same speech in both.
text = "Hello there. The weather is fine today."
spoken = client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                    response_format="wav").content
with wave.open(io.BytesIO(spoken)) as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2), w.getparams()
    wav_seconds = w.getnframes() / w.getframerate()
    samples = w.readframes(w.getnframes())
assert 1.0 < wav_seconds < 10.0, wav_seconds
assert max(abs(int.from_bytes(samples[i:i + 2], "little", signed=True))
           for i in range(0, len(samples), 2)) > 3000, "the speech is not silence"
pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                 response_format="pcm").content
assert len(pcm) % 2 == 0
pcm_seconds = len(pcm) / 2 / 24000
assert abs(pcm_seconds - wav_seconds) < 0.05 * wav_seconds, (pcm_seconds, wav_seconds)
try:
    client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="mp3")
    raise SystemExit("mp3 was accepted")
except openai.BadRequestError as e:
    assert "wav or pcm" in str(e), e
try:
    client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    raise SystemExit("blank input was accepted")
except openai.BadRequestError as e:
    assert "some text" in str(e), e
# Transcriptions: the recording, as JSON, plain text, subtitles and segments.
recording = sys.argv[2]
with open(recording, "rb") as f:
    heard = client.audio.transcriptions.create(model="whisper-1", file=f)
assert "ever tried" in heard.text.lower(), heard
with open(recording, "rb") as f:
    srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
assert srt.startswith("1\n00:00:0") and " --> " in srt, srt
with open(recording, "rb") as f:
    vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
assert vtt.startswith("WEBVTT\n\n00:00:0"), vtt
with open(recording, "rb") as f:
    verbose = client.audio.transcriptions.create(model="whisper-1", file=f,
                                                 response_format="verbose_json")
assert verbose.duration > 1 and len(verbose.segments) >= 2, verbose
assert all(s.start < s.end for s in verbose.segments), verbose.segments
assert " ".join(s.text for s in verbose.segments) == verbose.text
# The speech this server made is heard again.
heard = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", spoken))
assert "weather" in heard.text.lower(), heard
try:
    client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"not audio at all"))
    raise SystemExit("text was accepted as audio")
except openai.BadRequestError as e:
    assert "not audio" in str(e) and "notes.txt" in str(e), e
try:
    client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\0" * (5 << 20)))
    raise SystemExit("an upload over the limit was accepted")
except openai.APIStatusError as e:
    assert e.status_code == 413, e
print("ok")
