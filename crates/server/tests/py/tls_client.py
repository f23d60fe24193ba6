"""What grpcio and Python's ssl module get from a server on TLS.

Run by crates/server/tests/tls.rs. --certs is a folder with ca.pem (the server's CA),
client.pem/client.key (a client certificate from that CA), rogue-ca.pem and
rogue-client.pem/.key (a CA the server does not know, and a client certificate from it).
Prints one JSON object: scenario -> [status code name or HTTP status, details].
"""

import argparse
import http.client
import json
import ssl
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "examples" / "grpc_client"))
from client import load_stubs  # noqa: E402

pb2, pb2_grpc = load_stubs()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--certs", required=True, type=Path)
    p.add_argument("--token", required=True)
    args = p.parse_args()
    read = lambda name: (args.certs / name).read_bytes()  # noqa: E731
    auth = [("authorization", "Bearer " + args.token)]

    def grpc_call(credentials, call):
        channel = (grpc.secure_channel(args.addr, credentials) if credentials
                   else grpc.insecure_channel(args.addr))
        with channel:
            try:
                return ["OK", str(call(channel))[:200]]
            except grpc.RpcError as e:
                return [e.code().name, e.details()]

    def health(channel):
        stub = health_pb2_grpc.HealthStub(channel)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)

    def pipelines(metadata):
        def call(channel):
            stub = pb2_grpc.PipelineServiceStub(channel)
            reply = stub.ListPipelines(pb2.ListPipelinesRequest(), metadata=metadata, timeout=10)
            return [p.name for p in reply.pipelines]
        return call

    def creds(ca="ca.pem", client="client"):
        return grpc.ssl_channel_credentials(
            root_certificates=read(ca),
            private_key=read(client + ".key") if client else None,
            certificate_chain=read(client + ".pem") if client else None,
        )

    def https(path, client="client"):
        context = ssl.create_default_context(cadata=read("ca.pem").decode())
        if client:
            context.load_cert_chain(args.certs / (client + ".pem"), args.certs / (client + ".key"))
        host, port = args.http.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return [reply.status, reply.read().decode()[:200]]
        except (OSError, ssl.SSLError) as e:
            return ["ERROR", str(e)]
        finally:
            conn.close()

    out = {
        "health": grpc_call(creds(), health),
        "list_with_token": grpc_call(creds(), pipelines(auth)),
        "list_without_token": grpc_call(creds(), pipelines(None)),
        "no_client_cert": grpc_call(creds(client=None), health),
        "rogue_client_cert": grpc_call(creds(client="rogue-client"), health),
        "server_not_trusted": grpc_call(creds(ca="rogue-ca.pem"), health),
        "plaintext": grpc_call(None, health),
        "https_healthz": https("/healthz"),
        "https_without_client_cert": https("/healthz", client=None),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
