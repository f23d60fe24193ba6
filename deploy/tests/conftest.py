"""What the container tests share: the server image, built once per run, and helpers."""

import os
import subprocess
import sys
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
