"""Three servers behind HAProxy (deploy/compose.yaml), on the project's own container network,
the load balancer's port published on 127.0.0.1: streams spread over the servers, a killed
server's clients are told at once while the others go on and new streams go elsewhere, and a
rolling restart (docker stop, i.e. SIGTERM and drain, then start, server by server) loses no
utterance of clients that reopen a refused stream.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from conftest import CLIENT, RECORDING, ROOT, TOKEN, WORDS, Container, client, sh

sys.path.insert(0, str(CLIENT.parent))
from client import SessionState, load_stubs, read_wav, request_stream  # noqa: E402

pb2, pb2_grpc = load_stubs()
AUDIO = read_wav(RECORDING)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Compose:
    def __init__(self, base, tag):
        self.project = "rmtest" + uuid.uuid4().hex[:6]
        self.port = free_port()
        self.env = {
            **os.environ,
            "REMOTEMEDIA_TOKENS": TOKEN,
            "IMAGE": tag,
            "BASE": base,
            "LB_IMAGE": f"remotemedia-lb:{self.project}",
            "LB_PORT": str(self.port),
            "LB_STATS_PORT": str(free_port()),
        }

    def __call__(self, *args, check=True, timeout=300):
        cmd = ["docker-compose", "-p", self.project, "-f", str(ROOT / "deploy" / "compose.yaml")]
        return subprocess.run([*cmd, *args], env=self.env, check=check, capture_output=True,
                              text=True, timeout=timeout)

    def container(self, service):
        return f"{self.project}_{service}_1"

    def healthy(self, service, within=90):
        deadline = time.time() + within
        while time.time() < deadline:
            status = sh("docker", "inspect", "-f", "{{.State.Health.Status}}",
                        self.container(service), check=False).stdout.strip()
            if status == "healthy":
                return
            time.sleep(0.5)
        raise AssertionError(f"{service} not healthy:\n{self('logs', service).stdout[-3000:]}")

    def streams_now(self):
        """Streams in progress on each server, from HAProxy's Prometheus exporter."""
        url = f"http://127.0.0.1:{self.env['LB_STATS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        now = {}
        for line in text.splitlines():
            if line.startswith('haproxy_server_current_sessions{proxy="servers"'):
                server = line.split('server="')[1].split('"')[0]
                now[server] = int(float(line.rsplit(" ", 1)[1]))
        return now

    def served_by(self):
        """The server of each stream so far, from HAProxy's log, in order."""
        log = sh("docker", "logs", self.container("lb")).stdout
        return [line.split("servers/")[1].split()[0] for line in log.splitlines()
                if "StreamPipeline" in line and "servers/" in line]


@pytest.fixture(scope="module")
def compose(image):
    c = Compose(*image)
    c("up", "-d", "--build")
    try:
        for s in ("server1", "server2", "server3"):
            c.healthy(s)
        # HAProxy's checks have seen them ready (two good checks, 500 ms apart).
        time.sleep(1.5)
        yield c
    finally:
        if not os.environ.get("KEEP_COMPOSE"):
            c("down", "-t", "1", check=False)
        sh("docker", "image", "rm", "-f", c.env["LB_IMAGE"], check=False)


def transcribe(port, speed=1.0):
    """Streams the recording through the load balancer: (status code name, final text, when the
    call ended)."""
    state = SessionState()
    text = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.PipelineServiceStub(channel)
        requests = request_stream(pb2, AUDIO, pipeline_name="transcribe", speed=speed, state=state)
        try:
            for response in stub.StreamPipeline(requests, metadata=[("authorization", f"Bearer {TOKEN}")]):
                kind = response.WhichOneof("message")
                if kind == "ready":
                    state.ready.set()
                elif kind == "output" and response.output.data.WhichOneof("kind") == "text":
                    if response.output.data.text.is_final:
                        text.append(response.output.data.text.text.lower())
            return "OK", " ".join(text), time.time()
        except grpc.RpcError as e:
            return e.code().name, " ".join(text), time.time()
        finally:
            state.stop.set()


def in_threads(n, target):
    results = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, target(i)))
               for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    return threads, results


def test_streams_through_the_balancer_go_to_every_server(compose):
    before = len(compose.served_by())
    threads, results = in_threads(3, lambda i: transcribe(compose.port, speed=2.0))
    for t in threads:
        t.join()
    for code, text, _ in results:
        assert code == "OK", results
        for words in WORDS:
            assert words in text, text
    # Fewest streams first: three streams at once, one on each server.
    assert sorted(compose.served_by()[before:]) == ["server1", "server2", "server3"]


def test_a_remote_pipeline_runs_through_the_balancer(compose, tmp_path):
    """An edge server outside the stack whose pipeline is the servers' `transcribe`, reached
    through HAProxy as a remote pipeline."""
    (tmp_path / "edge.yaml").write_text("""version: v1
nodes:
  - id: speech
    type: RemotePipeline
    remote: {endpoint: "http://lb:50051", token_env: LB_TOKEN, pipeline: transcribe}
""")
    (tmp_path / "edge.toml").write_text("""[grpc]
listen = "0.0.0.0:50051"
[http]
listen = "0.0.0.0:9090"
[pipelines]
remote = "/etc/remotemedia/edge.yaml"
""")
    tmp_path.chmod(0o755)  # the server runs as user 10001
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    edge = Container(compose.env["IMAGE"], "serve", "--config", "/etc/remotemedia/edge.toml",
                     env={"REMOTEMEDIA_TOKENS": TOKEN, "LB_TOKEN": TOKEN},
                     volumes=[f"{tmp_path}:/etc/remotemedia:ro"],
                     network=f"{compose.project}_default")
    try:
        edge.wait_ready()
        before = len(compose.served_by())
        run = client(f"127.0.0.1:{edge.port(50051)}", "remote", speed="2")
        assert run.returncode == 0, run.stderr + edge.logs()[-3000:]
        for words in WORDS:
            assert words in run.stdout.lower(), run.stdout
        # The edge's warm-up session and the client's, each on one of the servers.
        assert len(compose.served_by()) > before
    finally:
        edge.remove()


def test_a_killed_server_s_clients_are_told_at_once_and_new_streams_go_elsewhere(compose):
    threads, results = in_threads(3, lambda i: transcribe(compose.port, speed=1.0))
    time.sleep(2.0)
    now = compose.streams_now()
    assert sorted(now.values()) == [1, 1, 1], now
    victim = "server2"
    killed = time.time()
    sh("docker", "kill", compose.container(victim))
    for t in threads:
        t.join()
    codes = sorted(code for code, _, _ in results)
    # HAProxy resets the streams of a server that died with RST_STREAM(CANCEL), which gRPC
    # reports as CANCELLED; a client connected to the server itself gets UNAVAILABLE.
    assert codes == ["CANCELLED", "OK", "OK"], results
    told = next(at for code, _, at in results if code == "CANCELLED")
    assert told - killed < 1.0, told - killed
    # New streams go to the servers left.
    code, text, _ = transcribe(compose.port, speed=4.0)
    assert code == "OK" and all(w in text for w in WORDS), (code, text)
    assert compose.served_by()[-1] != victim
    compose("start", victim)
    compose.healthy(victim)
    time.sleep(1.5)


def test_a_rolling_restart_loses_no_utterance(compose):
    """Clients stream the recording again and again while each server in turn is stopped
    (SIGTERM: it drains) and started again; a client whose stream is refused reopens it."""
    stop = threading.Event()
    outcomes = []

    def client(i):
        while not stop.is_set():
            code, text, _ = transcribe(compose.port, speed=2.0)
            outcomes.append((code, text))
            if code == "UNAVAILABLE":
                time.sleep(0.2)  # refused by a draining server: reopen

    threads, _ = in_threads(3, client)
    for server in ("server1", "server2", "server3"):
        time.sleep(2.0)
        sh("docker", "stop", "-t", "40", compose.container(server), timeout=60)
        compose("start", server)
        compose.healthy(server)
        time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    finished = [text for code, text in outcomes if code == "OK"]
    assert len(finished) >= 6, outcomes
    for text in finished:
        for words in WORDS:
            assert words in text, text
    bad = [(code, text) for code, text in outcomes if code not in ("OK", "UNAVAILABLE")]
    assert not bad, (bad, [code for code, _ in outcomes])
