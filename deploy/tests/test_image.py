"""The server image, built from a clean checkout as CI builds it and run as a user would.

The image is built by the Dockerfile from artifacts staged on the host (scripts/image-artifacts.sh;
the test build's binary unless IMAGE_PROFILE=release) on a base made by debootstrap
(scripts/docker-base.sh): no registry can be reached here. Containers publish their ports on
127.0.0.1 only and are removed afterwards.
"""

import threading
import time
import urllib.error
import urllib.request

from conftest import WORDS, client, sh


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
