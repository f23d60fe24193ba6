"""The server image, built from a clean checkout as CI builds it and run as a user would.

The image is built by the Dockerfile from artifacts staged on the host (scripts/image-artifacts.sh;
the test build's binary unless IMAGE_PROFILE=release) on a base made by debootstrap
(scripts/docker-base.sh): no registry can be reached here. Containers publish their ports on
127.0.0.1 only and are removed afterwards.
"""

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import CLIENT, RECORDING, TOKEN, WORDS, sh


class Container:
    def __init__(self, image, *args, env=None, volumes=(), network=None):
        cmd = ["docker", "run", "-d", "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9090"]
        for k, v in (env or {"REMOTEMEDIA_TOKENS": TOKEN}).items():
            cmd += ["-e", f"{k}={v}"]
        for v in volumes:
            cmd += ["-v", v]
        if network:
            cmd += ["--network", network]
        self.id = sh(*cmd, image, *args).stdout.strip()

    def port(self, inside):
        out = sh("docker", "port", self.id, f"{inside}/tcp").stdout.split()[0]
        return out.rsplit(":", 1)[1]

    def inspect(self, template):
        return sh("docker", "inspect", "-f", template, self.id).stdout.strip()

    def wait_healthy(self, within=90):
        deadline = time.time() + within
        while time.time() < deadline:
            status = self.inspect("{{.State.Health.Status}}")
            if status == "healthy":
                return
            assert self.inspect("{{.State.Running}}") == "true", self.logs()
            time.sleep(0.5)
        raise AssertionError(f"not healthy within {within} s:\n{self.logs()}")

    def wait_ready(self, within=90):
        url = f"http://127.0.0.1:{self.port(9090)}/readyz"
        deadline = time.time() + within
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready within {within} s:\n{self.logs()}")

    def logs(self):
        r = sh("docker", "logs", self.id, check=False)
        return r.stdout + r.stderr

    def remove(self):
        sh("docker", "rm", "-f", self.id, check=False)


@pytest.fixture
def tag(image):
    return image[1]


@pytest.fixture
def containers():
    made = []
    yield lambda *a, **kw: made.append(Container(*a, **kw)) or made[-1]
    for c in made:
        c.remove()


def client(addr, pipeline, speed="4", timeout=120):
    return subprocess.run(
        [sys.executable, str(CLIENT), "--addr", addr, "--token", TOKEN, "--pipeline", pipeline,
         "--speed", speed, str(RECORDING)],
        capture_output=True, text=True, timeout=timeout,
    )


def test_the_image_serves_the_recording_as_a_non_root_user(tag, containers):
    c = containers(tag)
    c.wait_healthy()
    c.wait_ready()
    run = client(f"127.0.0.1:{c.port(50051)}", "transcribe")
    assert run.returncode == 0, run.stderr
    text = run.stdout.lower()
    for words in WORDS:
        assert words in text, run.stdout
    assert sh("docker", "exec", c.id, "id", "-u").stdout.strip() == "10001"
    # Ready means the configured pipelines' models are loaded: from the image, not a download.
    assert "loaded model model=/opt/remotemedia/models/" in c.logs()


def test_models_load_without_any_network(tag, containers):
    c = containers(tag, network="none")
    deadline = time.time() + 90
    probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/readyz').status)"
    while time.time() < deadline:
        r = sh("docker", "exec", c.id, "python3", "-c", probe, check=False)
        if r.stdout.strip() == "200":
            return
        time.sleep(0.5)
    raise AssertionError(c.logs())


def test_a_python_node_runs_in_the_container(tag, containers, tmp_path):
    manifest = tmp_path / "level.yaml"
    manifest.write_text("version: v1\nnodes:\n  - {id: level, type: AudioLevel}\n")
    manifest.chmod(0o644)
    c = containers(tag, "serve", "--config", "/etc/remotemedia/server.toml",
                   "--pipeline", "level=/etc/remotemedia/level.yaml",
                   volumes=[f"{manifest}:/etc/remotemedia/level.yaml:ro"])
    c.wait_ready()
    run = client(f"127.0.0.1:{c.port(50051)}", "level")
    assert run.returncode == 0, run.stderr + c.logs()
    levels = [line for line in run.stdout.splitlines() if "level.out" in line]
    assert len(levels) > 400, run.stdout[-2000:]
    assert "closed (closed)" in run.stderr


def test_without_tokens_it_refuses_to_start_and_says_why(tag):
    r = sh("docker", "run", "--rm", tag, check=False, timeout=60)
    assert r.returncode != 0
    assert "without API tokens" in r.stderr + r.stdout


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sigterm_drains_open_streams_and_exits_0(tag, containers):
    """What Kubernetes relies on: the streams metric the autoscaler reads, readiness turning
    503 at once on SIGTERM while the open stream goes on to its end, then exit 0."""
    c = containers(tag)
    c.wait_ready()
    http = c.port(9090)
    result = {}
    stream = threading.Thread(
        target=lambda: result.update(run=client(f"127.0.0.1:{c.port(50051)}", "transcribe",
                                                speed="1", timeout=60)))
    stream.start()
    time.sleep(2.0)  # the session is open and mid-recording
    assert "remotemedia_grpc_streams_active 1\n" in http_get(http, "/metrics")[1]
    stopped = time.time()
    sh("docker", "kill", "-s", "TERM", c.id)
    deadline = time.time() + 5
    while http_get(http, "/readyz")[0] != 503:
        assert time.time() < deadline, "still ready 5 s after SIGTERM"
        time.sleep(0.1)
    assert http_get(http, "/healthz")[0] == 200  # alive: a liveness probe must not kill it
    stream.join()
    run = result["run"]
    # The stream went on to its end during the drain: every word, a normal close.
    assert run.returncode == 0, run.stderr
    for words in WORDS:
        assert words in run.stdout.lower(), run.stdout
    sh("docker", "wait", c.id, timeout=40)
    assert time.time() - stopped < 30
    assert c.inspect("{{.State.ExitCode}}") == "0", c.logs()
    assert "draining" in c.logs()
