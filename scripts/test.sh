#!/usr/bin/env bash
# Every test of the workspace, with everything they need: the system packages (espeak-ng; for the
# WebRTC tests libopus-dev, Chromium and chromedriver; debootstrap for the image's base), the
# models (ONNX Runtime, Silero VAD, the sample recordings) and the Python environment of the
# python executor are installed first by the idempotent setup scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh --test
./scripts/setup-models.sh
./scripts/setup-python.sh
# The extension module remotemedia._native, rebuilt if the Rust changed (incremental): the Python
# SDK and the python executor's workers (their shared-memory link) use it.
VENV="${REMOTEMEDIA_VENV:-.venv}"
"$VENV/bin/python" -m pip install --quiet --no-deps --disable-pip-version-check -e python
# The server with its WebRTC endpoint, tested in a real browser.
cargo test --workspace --locked --features remotemedia-server/webrtc "$@"
# The Python SDK's tests.
"$VENV/bin/python" -m pytest python/tests -q
# The server image (Docker, built on a debootstrap base) serving real streams, and the
# Kubernetes base rendered and validated against the Kubernetes schemas.
"$VENV/bin/python" -m pytest deploy/tests -q
./scripts/check-deploy.sh
