"""A remote node across two containers: an edge server runs the speech pipeline with its
recogniser on another server (`remote:` in the manifest), on a network of the test's own.
The transcript is the local pipeline's; killing the remote fails the session with an error
naming it, new sessions are refused with UNAVAILABLE while it is gone and served once it is
back.
"""

import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import CLIENT, RECORDING, ROOT, TOKEN, WORDS, Container, client, sh

ASR_TOKEN = "asr-token-" + uuid.uuid4().hex[:12]
SERVER_TOML = """[grpc]
listen = "0.0.0.0:50051"
[http]
listen = "0.0.0.0:9090"
"""


def final_lines(stdout):
    """The final texts with their spans, as the example client prints them."""
    return [line for line in stdout.splitlines() if "→" in line and "(interim)" not in line]


class Pair:
    """The recogniser's server (`asr-…`) and the edge server in front of it."""

    def __init__(self, tag, tmp):
        suffix = uuid.uuid4().hex[:6]
        self.network = "rmremote" + suffix
        self.asr_name = "asr-" + suffix
        self.endpoint = f"http://{self.asr_name}:50051"
        sh("docker", "network", "create", self.network)
        (tmp / "asr.toml").write_text(SERVER_TOML + """[limits]
# The edge sends each utterance as soon as it ends: faster than real time in bursts.
max_realtime_factor = 0
[client_manifests]
allow = true
allowed_types = ["MoonshineASR"]
""")
        manifest = (ROOT / "examples" / "transcribe.yaml").read_text().replace(
            "    params: {threads: 1}\n",
            f"    params: {{threads: 1}}\n"
            f"    remote: {{endpoint: \"{self.endpoint}\", token_env: ASR_TOKEN}}\n")
        assert "remote:" in manifest
        (tmp / "edge.yaml").write_text(manifest)
        (tmp / "edge.toml").write_text(SERVER_TOML + """[pipelines]
transcribe = "/opt/remotemedia/examples/transcribe.yaml"
remote = "/etc/remotemedia/edge.yaml"
""")
        tmp.chmod(0o755)  # the server runs as user 10001
        for f in tmp.iterdir():
            f.chmod(0o644)
        mount = [f"{tmp}:/etc/remotemedia:ro"]
        self.asr = self.edge = None
        try:
            self.start(tag, mount)
        except BaseException:
            self.remove()
            raise

    def start(self, tag, mount):
        self.asr = Container(tag, "serve", "--config", "/etc/remotemedia/asr.toml",
                             env={"REMOTEMEDIA_TOKENS": ASR_TOKEN}, volumes=mount,
                             network=self.network, name=self.asr_name)
        self.asr.wait_ready()
        self.edge = Container(
            tag, "serve", "--config", "/etc/remotemedia/edge.toml",
            env={"REMOTEMEDIA_TOKENS": TOKEN, "ASR_TOKEN": ASR_TOKEN},
            volumes=mount, network=self.network)
        self.edge.wait_ready()
        self.addr = f"127.0.0.1:{self.edge.port(50051)}"

    def remove(self):
        for c in (self.edge, self.asr):
            if c:
                c.remove()
        sh("docker", "network", "rm", self.network, check=False)


@pytest.fixture(scope="module")
def pair(image, tmp_path_factory):
    p = Pair(image[1], tmp_path_factory.mktemp("remote"))
    yield p
    p.remove()


def test_a_remote_recogniser_gives_the_local_pipelines_transcript(pair):
    local = client(pair.addr, "transcribe")
    remote = client(pair.addr, "remote")
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    lines = final_lines(local.stdout)
    assert len(lines) >= 3, local.stdout
    assert final_lines(remote.stdout) == lines
    for words in WORDS:
        assert words in remote.stdout.lower(), remote.stdout
    # The recogniser ran there, not here.
    assert "loaded model" in pair.asr.logs()


def test_killing_the_remote_names_it_and_new_sessions_reconnect(pair):
    run = subprocess.Popen(
        [sys.executable, str(CLIENT), "--addr", pair.addr, "--token", TOKEN,
         "--pipeline", "remote", "--speed", "1", str(RECORDING)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(run.stderr))
    reader.start()
    first = run.stdout.readline()  # the first utterance came back: the session is mid-stream
    assert "→" in first, first + "".join(stderr)
    killed = time.time()
    sh("docker", "kill", pair.asr.id)
    rest = run.stdout.read()
    run.wait(timeout=60)
    reader.join()
    told = "".join(stderr)
    assert (f"error from node asr (MoonshineASR) [fatal]: remote {pair.endpoint} failed "
            "mid-session") in told, told
    assert time.time() - killed < 20, told
    assert "fail again" not in rest.lower()  # the recording's end never came back

    # While it is down: refused at once, worth trying again, naming it.
    down = client(pair.addr, "remote")
    assert down.returncode != 0
    assert "UNAVAILABLE" in down.stderr and f"cannot reach {pair.endpoint}" in down.stderr, \
        down.stderr

    # Back: the next session connects again.
    sh("docker", "start", pair.asr.id)
    pair.asr.wait_ready()
    again = client(pair.addr, "remote")
    assert again.returncode == 0, again.stderr + pair.edge.logs()[-3000:]
    for words in WORDS:
        assert words in again.stdout.lower(), again.stdout
