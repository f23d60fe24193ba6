"""What a plain grpcio client gets from the server where it should be refused.

Run by crates/server/tests/python_client.rs against a server with a token, client manifests
allowed and at most 2 sessions; prints one JSON object: scenario -> [status code name, details].
"""

import argparse
import json
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "examples" / "grpc_client"))
from client import load_stubs  # noqa: E402

pb2, pb2_grpc = load_stubs()


def code_of(call):
    """Runs `call`; returns [code name, details] of its error, or ["OK", repr of the result]."""
    try:
        result = call()
        return ["OK", str(result)[:200]]
    except grpc.RpcError as e:
        return [e.code().name, e.details()]


def first_response(stub, open_msg, metadata, extra=()):
    """Opens a stream with `open_msg` (and `extra` requests) and returns the first response."""
    requests = iter([pb2.StreamRequest(open=open_msg), *extra])
    return next(iter(stub.StreamPipeline(requests, metadata=metadata)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--token", required=True)
    args = p.parse_args()
    auth = [("authorization", "Bearer " + args.token)]
    channel = grpc.insecure_channel(args.addr)
    stub = pb2_grpc.PipelineServiceStub(channel)
    out = {}

    out["list_without_token"] = code_of(lambda: stub.ListPipelines(pb2.ListPipelinesRequest()))
    out["stream_without_token"] = code_of(
        lambda: first_response(stub, pb2.OpenSession(pipeline_name="transcribe"), None)
    )
    out["stream_wrong_token"] = code_of(
        lambda: first_response(
            stub,
            pb2.OpenSession(pipeline_name="transcribe"),
            [("authorization", "Bearer not-the-right-token-at-all")],
        )
    )
    out["list_pipelines"] = code_of(
        lambda: [p.name for p in stub.ListPipelines(pb2.ListPipelinesRequest(), metadata=auth).pipelines]
    )
    out["version_2"] = code_of(
        lambda: stub.GetVersion(pb2.VersionRequest(protocol_version="2.0"), metadata=auth)
    )
    out["open_version_2"] = code_of(
        lambda: first_response(
            stub, pb2.OpenSession(pipeline_name="transcribe", protocol_version="2.0"), auth
        )
    )
    bad = "version: v1\nnodes:\n  - id: vad\n    type: EnergyVAD\n    params: {min_silence_ms: -5}\n"
    out["bad_manifest"] = code_of(
        lambda: first_response(stub, pb2.OpenSession(manifest=bad, protocol_version="1.0"), auth)
    )

    # Two sessions held open fill the server; a third is refused.
    held, release = [], threading.Event()
    for _ in range(2):
        q = [pb2.StreamRequest(open=pb2.OpenSession(pipeline_name="transcribe"))]
        responses = stub.StreamPipeline(_hold(q, release), metadata=auth)
        held.append(responses)
        next(iter(responses))  # ready
    out["third_session"] = code_of(
        lambda: first_response(stub, pb2.OpenSession(pipeline_name="transcribe"), auth)
    )
    release.set()
    for r in held:
        r.cancel()

    # Bytes that are not a message.
    raw = channel.stream_stream(
        "/remotemedia.v1.PipelineService/StreamPipeline",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    opening = pb2.StreamRequest(open=pb2.OpenSession(pipeline_name="transcribe")).SerializeToString()
    out["malformed"] = code_of(
        lambda: list(raw(iter([opening, b"\xff\xff\xff\xff\xff\x07"]), metadata=auth))
    )

    health = health_pb2_grpc.HealthStub(channel)
    out["health"] = code_of(
        lambda: health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest(service="remotemedia.v1.PipelineService")).status
        )
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    out["reflection"] = code_of(
        lambda: sorted(
            s.name
            for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=auth
            )
            for s in r.list_services_response.service
        )
    )
    print(json.dumps(out))


def _hold(requests, release):
    """Sends `requests`, then keeps the stream open until `release` is set."""
    yield from requests
    release.wait()


if __name__ == "__main__":
    main()
