"""What the container tests share: the server image, built once per run, and helpers."""

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "image-test-token-" + uuid.uuid4().hex[:12]
CLIENT = ROOT / "examples" / "grpc_client" / "client.py"
RECORDING = ROOT / "models" / "samples" / "beckett.wav"
WORDS = ["ever tried", "ever failed", "no matter", "try again", "fail again"]


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def image():
    """The server image from this checkout (and its base, made once per machine)."""
    base = sh(str(ROOT / "scripts" / "docker-base.sh")).stdout.strip()
    profile = os.environ.get("IMAGE_PROFILE", "debug")
    sh(str(ROOT / "scripts" / "image-artifacts.sh"), env={**os.environ, "PROFILE": profile})
    tag = "remotemedia:test-" + uuid.uuid4().hex[:8]
    sh("docker", "build", "-q", "-t", tag, "--label", "remotemedia-test=1",
       "--build-arg", f"BASE={base}", "--build-arg", f"BUILDER={base}",
       "--build-arg", "PREBUILT=target/docker", str(ROOT), timeout=900)
    size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", tag).stdout)
    print(f"\nimage {tag}: {size / 2**20:.0f} MiB", file=sys.stderr)
    yield base, tag
    sh("docker", "image", "rm", "-f", tag, check=False)
    # The build stage the legacy builder leaves behind.
    sh("docker", "image", "prune", "-f", check=False)


class Container:
    def __init__(self, image, *args, env=None, volumes=(), network=None, name=None):
        cmd = ["docker", "run", "-d", "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9090"]
        if name:
            cmd += ["--name", name]
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
            assert self.inspect("{{.State.Running}}") == "true", self.logs()
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
