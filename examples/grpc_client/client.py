#!/usr/bin/env python3
"""Stream a WAV file through a RemoteMedia pipeline over gRPC and print what comes back.

This is the starting point for a Python client of the RemoteMedia gRPC service
(proto/remotemedia/v1/pipeline.proto). One call, ``PipelineService.StreamPipeline``, carries one
session as a bidirectional stream:

    client -> server   StreamRequest.open      which pipeline (a configured name or a manifest)
    server -> client   StreamResponse.ready    session id, versions, the limits granted
    client -> server   StreamRequest.data      one DataFrame per chunk of audio, paced in time
    server -> client   StreamResponse.output   whatever the pipeline produces, as it produces it
                       StreamResponse.error    a node failed on one input (or fatally)
    client -> server   StreamRequest.control   METRICS (optional), then CLOSE to end the input
    server -> client   StreamResponse.metrics  the metrics snapshot asked for
                       StreamResponse.closed   last message: reason and counts

Requests are produced by a generator that gRPC consumes on its own thread, so outputs are
printed while the audio is still being sent. Audio goes out at real time by default
(``--speed``): the server may refuse audio that runs faster than its limit allows.

The Python stubs are generated from the .proto at start (with grpc_tools.protoc, in-process)
into a cache directory and reused afterwards; other scripts can do the same with
``load_stubs()``:

    from client import load_stubs
    pb2, pb2_grpc = load_stubs()        # modules `pipeline_pb2` and `pipeline_pb2_grpc`

Examples (the server: ``remotemedia serve --config examples/server.toml``):

    python client.py --pipeline transcribe ../../models/samples/beckett.wav
    python client.py --manifest ../transcribe.yaml --speed 0 --metrics recording.wav
    REMOTEMEDIA_TOKEN=secret python client.py --addr host:50051 --pipeline transcribe a.wav
    python client.py --pipeline transcribe --json a.wav | jq .
    python client.py --tls-ca ca.pem --tls-cert me.pem --tls-key me.key --pipeline transcribe a.wav

Exit status: 0 when the session closed normally, 1 on a gRPC error (printed as
``error: <STATUS_CODE>: <details>``), when the session failed, or when the input cannot be
read; 2 for bad command-line usage.

Requires Python 3.10+, grpcio, grpcio-tools and numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
from google.protobuf import json_format

PROTOCOL_VERSION = "1.0"
DEFAULT_PROTO = Path(__file__).resolve().parent.parent.parent / "proto/remotemedia/v1/pipeline.proto"

# ---- stubs --------------------------------------------------------------------------------------

# The stubs are generated with the proto's own directory as the include root, so the modules are
# the top-level `pipeline_pb2` and `pipeline_pb2_grpc`. Generating from `proto/` instead would
# make them `remotemedia.v1.pipeline_pb2`, which the `remotemedia` Python package of this
# repository (python/) shadows when it is installed.
STUB_MODULES = ("pipeline_pb2", "pipeline_pb2_grpc")
STAMP_FILE = ".generated"


def _grpc_tools_version() -> str:
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _default_stubs_dir(proto_sha256: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "remotemedia-grpc-stubs" / proto_sha256[:16]


def _generate_stubs(proto: Path, stubs_dir: Path, stamp: str) -> None:
    """Runs protoc in-process into a scratch directory, then moves the modules into place.

    Each file is moved atomically and the stamp is written last, so a concurrent reader sees
    either no stamp (and generates too) or complete modules.
    """
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    stubs_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".protoc-", dir=stubs_dir))
    try:
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            proto.name,
        ])
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit status {status}; see above)")
        for generated in scratch.iterdir():
            os.replace(generated, stubs_dir / generated.name)
        (scratch / STAMP_FILE).write_text(stamp)
        os.replace(scratch / STAMP_FILE, stubs_dir / STAMP_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_stubs(proto_path: str | os.PathLike | None = None):
    """Returns the modules ``(pipeline_pb2, pipeline_pb2_grpc)`` generated from the .proto.

    ``proto_path`` defaults to proto/remotemedia/v1/pipeline.proto of this checkout. The modules
    are generated only when the cache holds none for this .proto text and grpcio-tools version.
    The cache is ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/remotemedia-grpc-stubs/<hash>``, or
    ``$REMOTEMEDIA_STUBS_DIR`` when set. The directory is added to ``sys.path``, so ``import
    pipeline_pb2`` works afterwards too.
    """
    proto = Path(proto_path).resolve() if proto_path else DEFAULT_PROTO
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    override = os.environ.get("REMOTEMEDIA_STUBS_DIR")
    stubs_dir = (Path(override) if override else _default_stubs_dir(digest)).resolve()

    stamp = f"{digest}\n{proto.name}\ngrpcio-tools {_grpc_tools_version()}\n"
    stamp_path = stubs_dir / STAMP_FILE
    if not (stamp_path.is_file() and stamp_path.read_text() == stamp):
        _generate_stubs(proto, stubs_dir, stamp)

    if str(stubs_dir) not in sys.path:
        sys.path.insert(0, str(stubs_dir))
    importlib.invalidate_caches()
    modules = tuple(importlib.import_module(name) for name in STUB_MODULES)
    for module in modules:
        origin = Path(module.__file__).resolve().parent
        if origin != stubs_dir:
            raise ImportError(
                f"module {module.__name__} was already imported from {origin}, not {stubs_dir}"
            )
    return modules


# ---- audio --------------------------------------------------------------------------------------


@dataclass
class Audio:
    samples: np.ndarray  # float32, interleaved, in [-1, 1]
    sample_rate: int
    channels: int

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return len(self.samples) // self.channels


def read_wav(path: str | os.PathLike) -> Audio:
    """Reads integer PCM (8, 16, 24 or 32 bits, any rate and channel count) as float32."""
    with wave.open(str(path), "rb") as wav:
        width = wav.getsampwidth()
        channels = wav.getnchannels()
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())

    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        # Put each 3-byte sample in the top of a 4-byte word, then shift back with the sign.
        packed = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        words = np.zeros((len(packed), 4), np.uint8)
        words[:, 1:] = packed
        samples = (words.view("<i4").ravel() >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        samples = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise ValueError(f"unsupported sample width: {8 * width} bits")
    return Audio(samples=samples, sample_rate=rate, channels=channels)


# ---- requests -----------------------------------------------------------------------------------


class SessionState:
    """What the response reader tells the request generator."""

    def __init__(self) -> None:
        self.ready = threading.Event()  # the server answered `ready`: start sending audio
        self.stop = threading.Event()  # the call is over: stop producing requests


def request_stream(
    pb2,
    audio: Audio,
    *,
    pipeline_name: str | None = None,
    manifest: str | None = None,
    frame_ms: float = 20.0,
    speed: float = 1.0,
    metrics: bool = False,
    state: SessionState | None = None,
) -> Iterator:
    """Yields the StreamRequests of one session: open, the audio frames, [METRICS], CLOSE.

    With a ``state``, the audio waits for the server's `ready` (so the time the server takes to
    load the pipeline does not bunch the frames up), and the generator stops early when
    ``state.stop`` is set. Frame ``i`` leaves at ``t0 + start_i / speed`` on the monotonic clock,
    where ``t0`` is when the first frame left: sleeping until an absolute deadline does not
    accumulate drift. ``speed`` 0 sends as fast as the stream takes them.
    """
    if (pipeline_name is None) == (manifest is None):
        raise ValueError("give exactly one of pipeline_name and manifest")
    if pipeline_name is not None:
        opening = pb2.OpenSession(
            pipeline_name=pipeline_name, protocol_version=PROTOCOL_VERSION, audio_out_f32le=True
        )
    else:
        opening = pb2.OpenSession(
            manifest=manifest, protocol_version=PROTOCOL_VERSION, audio_out_f32le=True
        )
    yield pb2.StreamRequest(open=opening)

    if state is not None:
        while not state.ready.wait(0.1):
            if state.stop.is_set():
                return

    step = max(1, round(audio.sample_rate * frame_ms / 1000.0))  # samples per channel per frame
    t0 = None
    for start in range(0, audio.frames, step):
        if speed > 0:
            now = time.monotonic()
            if t0 is None:
                t0 = now
            delay = t0 + start / audio.sample_rate / speed - now
            if delay > 0 and _sleep(delay, state):
                return
        elif state is not None and state.stop.is_set():
            return
        chunk = audio.samples[start * audio.channels : (start + step) * audio.channels]
        # Little-endian float32 bytes: one copy, no Python float per sample.
        buffer = pb2.AudioBuffer(
            samples_f32le=chunk.astype("<f4").tobytes(),
            sample_rate=audio.sample_rate,
            channels=audio.channels,
        )
        yield pb2.StreamRequest(
            data=pb2.DataFrame(
                data=pb2.Data(audio=buffer),
                timestamp_us=start * 1_000_000 // audio.sample_rate,
            )
        )

    Action = pb2.SessionControl.Action
    if metrics:
        yield pb2.StreamRequest(control=pb2.SessionControl(action=Action.METRICS))
    yield pb2.StreamRequest(control=pb2.SessionControl(action=Action.CLOSE, reason="end of file"))


def _sleep(seconds: float, state: SessionState | None) -> bool:
    """Sleeps; True when the session stopped meanwhile."""
    if state is None:
        time.sleep(seconds)
        return False
    return state.stop.wait(seconds)


# ---- responses ----------------------------------------------------------------------------------


def clock(us: int) -> str:
    """Microseconds as MM:SS.ss."""
    centis = round(us / 10_000)
    minutes, centis = divmod(centis, 6000)
    return f"{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}"


def _limit(value, unit: str = "") -> str:
    """A granted limit; 0 means none."""
    if not value:
        return "none"
    return (f"{value:g}" if isinstance(value, float) else str(value)) + unit


def describe_ready(ready) -> str:
    limits = ready.limits
    granted = ", ".join([
        f"duration {_limit(limits.max_duration_ms, ' ms')}",
        f"idle {_limit(limits.idle_timeout_ms, ' ms')}",
        f"message {_limit(limits.max_message_bytes, ' B')}",
        f"realtime factor {_limit(limits.max_realtime_factor, 'x')}",
        f"frames/s {_limit(limits.max_frames_per_second)}",
    ])
    return (
        f"session {ready.session_id} ready: pipeline {ready.pipeline or '-'}, "
        f"server {ready.server_version}, protocol {ready.protocol_version}; limits: {granted}"
    )


def audio_samples(audio) -> np.ndarray:
    """An AudioBuffer's interleaved samples as float32, from whichever form it came in (the
    session asks for little-endian bytes, which numpy reads without a per-sample loop)."""
    if audio.samples_f32le:
        return np.frombuffer(audio.samples_f32le, dtype="<f4")
    return np.asarray(audio.samples, dtype=np.float32)


def describe_output(output) -> str:
    data = output.data
    kind = data.WhichOneof("kind")
    where = f"{output.node}.{output.port}" if output.port else output.node
    if kind == "text":
        text = data.text
        if text.HasField("span"):
            when = f"[{clock(text.span.start_us)} → {clock(text.span.end_us)}]"
        else:
            when = f"[{clock(output.timestamp_us)}]"
        return f"{when} {text.text}" + ("" if text.is_final else " (interim)")

    when = f"[{clock(output.timestamp_us)}]"
    if kind == "audio":
        audio = data.audio
        channels = audio.channels or 1
        samples = audio_samples(audio)
        seconds = len(samples) / channels / audio.sample_rate if audio.sample_rate else 0.0
        size = f"{len(samples)} samples, {audio.sample_rate} Hz x{channels} ({seconds:.2f} s)"
    elif kind == "json":
        preview = " ".join(data.json.split())
        preview = preview if len(preview) <= 60 else preview[:57] + "..."
        size = f"{len(data.json.encode())} bytes: {preview}"
    elif kind == "binary":
        size = f"{len(data.binary)} bytes"
    elif kind == "image":
        image = data.image
        size = f"{image.width}x{image.height} {image.format}, {len(image.data)} bytes"
    elif kind == "control":
        control = data.control
        size = type(control).Kind.Name(control.kind)
        if control.reason:
            size += f" ({control.reason})"
    else:
        size = "empty"
    return f"{when} {kind or 'nothing'} {where}: {size}"


def describe_error(error) -> str:
    fatal = " [fatal]" if error.fatal else ""
    if error.node:
        node_type = f" ({error.node_type})" if error.node_type else ""
        return f"error from node {error.node}{node_type}{fatal}: {error.message}"
    return f"error from the session{fatal}: {error.message}"


def format_metrics(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


# ---- the session --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        pb2, pb2_grpc = load_stubs(args.proto)
    except (OSError, RuntimeError, ImportError) as err:
        print(f"error: cannot load the gRPC stubs: {err}", file=sys.stderr)
        return 1

    try:
        audio = read_wav(args.audio)
        manifest = Path(args.manifest).read_text() if args.manifest else None
        credentials = tls_credentials(args)
    except wave.Error as err:
        print(f"error: {args.audio}: {err} (only integer PCM WAV is supported)", file=sys.stderr)
        return 1
    except (OSError, EOFError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    token = args.token or os.environ.get("REMOTEMEDIA_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []

    state = SessionState()
    requests = request_stream(
        pb2,
        audio,
        pipeline_name=args.pipeline,
        manifest=manifest,
        frame_ms=args.frame_ms,
        speed=args.speed,
        metrics=args.metrics,
        state=state,
    )

    failed = False
    channel = (grpc.secure_channel(args.addr, credentials) if credentials
               else grpc.insecure_channel(args.addr))
    with channel:
        stub = pb2_grpc.PipelineServiceStub(channel)
        call = stub.StreamPipeline(requests, metadata=metadata)
        try:
            for response in call:
                kind = response.WhichOneof("message")
                if kind == "ready":
                    state.ready.set()
                elif kind == "error" and response.error.fatal:
                    failed = True
                elif kind == "closed" and response.closed.reason == "failed":
                    failed = True

                if args.json:
                    print(json.dumps(json_format.MessageToDict(
                        response, preserving_proto_field_name=True)), flush=True)
                elif kind == "ready":
                    print(describe_ready(response.ready), file=sys.stderr, flush=True)
                elif kind == "output":
                    print(describe_output(response.output), flush=True)
                elif kind == "error":
                    print(describe_error(response.error), file=sys.stderr, flush=True)
                elif kind == "metrics":
                    print("metrics: " + format_metrics(response.metrics.json), file=sys.stderr)
                elif kind == "closed":
                    closed = response.closed
                    print(f"session closed ({closed.reason}): {closed.inputs} inputs, "
                          f"{closed.outputs} outputs", file=sys.stderr, flush=True)
                    if args.metrics and closed.metrics_json:
                        print("final metrics: " + format_metrics(closed.metrics_json),
                              file=sys.stderr)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            call.cancel()
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            state.stop.set()
    return 1 if failed else 0


def tls_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls-ca/--tls-cert/--tls-key, or None for a plain channel."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key),
        certificate_chain=read(args.tls_cert),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stream a WAV file through a RemoteMedia pipeline over gRPC "
        "(PipelineService.StreamPipeline) and print the outputs as they arrive.",
        epilog="Text outputs go to stdout as '[MM:SS.ss → MM:SS.ss] text'; session messages "
        "(ready, errors, metrics, closed) go to stderr. Exit status: 0 when the session closed "
        "normally, 1 on a gRPC error, a failed session or unreadable input.",
    )
    parser.add_argument("audio", metavar="AUDIO.wav",
                        help="integer PCM WAV (8/16/24/32-bit, any rate and channel count)")
    parser.add_argument("--addr", default="127.0.0.1:50051",
                        help="server address, host:port (default: %(default)s)")
    parser.add_argument("--token", help="bearer token sent as 'authorization' metadata "
                        "(default: $REMOTEMEDIA_TOKEN; none when unset)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pipeline", metavar="NAME", help="a pipeline configured on the server")
    which.add_argument("--manifest", metavar="FILE",
                       help="send this manifest (YAML or JSON), where the server allows it")
    parser.add_argument("--frame-ms", type=_positive, default=20.0, metavar="MS",
                        help="audio per DataFrame, in milliseconds (default: %(default)g)")
    parser.add_argument("--speed", type=_non_negative, default=1.0,
                        help="pace as a multiple of real time: 1 = real time, 2 = twice as "
                        "fast, 0 = as fast as possible (default: %(default)g)")
    parser.add_argument("--json", action="store_true",
                        help="print each response as one JSON object per line on stdout")
    parser.add_argument("--metrics", action="store_true",
                        help="ask for the session's metrics before closing, and print them")
    parser.add_argument("--proto", metavar="FILE", default=None,
                        help=f"the pipeline.proto to generate stubs from (default: {DEFAULT_PROTO})")
    tls = parser.add_argument_group("TLS (a server with [tls] configured)")
    tls.add_argument("--tls", action="store_true",
                     help="connect over TLS, trusting the system's CAs")
    tls.add_argument("--tls-ca", metavar="PEM", help="trust the server certificate's CA from here")
    tls.add_argument("--tls-cert", metavar="PEM",
                     help="this client's certificate chain, for a server that asks for one")
    tls.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
