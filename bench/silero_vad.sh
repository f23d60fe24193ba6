#!/usr/bin/env bash
# Silero VAD per 32 ms frame: RemoteMedia's SileroVAD (Rust) against the silero-vad Python
# package, same model file, same samples, one thread each, alternating rounds in one run.
#
#   ./bench/silero_vad.sh [ROUNDS]
#
# Installs the models (scripts/setup-models.sh) and, on first use, a Python environment with
# silero-vad, onnxruntime and torch (the package imports torch; several GB, from PyPI) in
# target/bench-venv (override with BENCH_VENV). Prints timings, the speed-up and whether both
# sides make the same speech/non-speech decisions.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ROUNDS="${1:-3}"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
WORK="$ROOT/target/bench/silero_vad"

./scripts/setup-models.sh
MODELS="${REMOTEMEDIA_MODELS:-$ROOT/models}"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import silero_vad, onnxruntime, torch, numpy" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        silero-vad==6.2.3 onnxruntime==1.32.0 torch numpy
fi

cargo build --release --locked -p remotemedia-speech --example silero_vad_compare
mkdir -p "$WORK"
"$VENV/bin/python" bench/silero_vad.py make-input "$MODELS" "$WORK/input.wav"
"$VENV/bin/python" bench/silero_vad.py compare "$WORK/input.wav" \
    "$ROOT/target/release/examples/silero_vad_compare" "$WORK" "$ROUNDS"
