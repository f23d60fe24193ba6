"""A grpcio client of DubbingService.Dub: a track in WAV and in FLAC, and the refusals.

Run by crates/server/tests/dub.rs; writes the tracks into --out and prints one JSON object.
"""

import argparse
import json
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "examples" / "grpc_client"))
from client import load_stubs  # noqa: E402

pb2, pb2_grpc = load_stubs()

SRT = """1
00:00:00,500 --> 00:00:02,500
The weather will be sunny this afternoon.

2
00:00:03,000 --> 00:00:04,500
[de:] Guten Morgen.
"""


def status(call):
    try:
        call()
        return ["OK", ""]
    except grpc.RpcError as e:
        return [e.code().name, e.details()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    auth = [("authorization", "Bearer " + args.token)]
    channel = grpc.insecure_channel(
        args.addr, options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    stub = pb2_grpc.DubbingServiceStub(channel)
    out = {}
    for fmt in ["wav", "flac"]:
        r = stub.Dub(pb2.DubRequest(subtitles=SRT, format=fmt), metadata=auth)
        Path(args.out, "dub." + fmt).write_bytes(r.audio)
        out[fmt] = {
            "format": r.format,
            "sample_rate": r.sample_rate,
            "channels": r.channels,
            "report": json.loads(r.report_json)["totals"],
            "retimed": r.retimed,
        }
    dub = lambda **kw: stub.Dub(pb2.DubRequest(**kw), metadata=auth)  # noqa: E731
    out["no_token"] = status(lambda: stub.Dub(pb2.DubRequest(subtitles=SRT)))
    out["bad_time"] = status(lambda: dub(subtitles="1\n00:00:01,000 --> 00:00:0x,000\nHi.\n"))
    out["no_character"] = status(lambda: dub(subtitles=SRT.replace("[de:]", "[Bob]")))
    out["voice_file"] = status(lambda: dub(subtitles=SRT, voices={"en": "/etc/passwd.onnx"}))
    out["bad_format"] = status(lambda: dub(subtitles=SRT, format="mp3"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
