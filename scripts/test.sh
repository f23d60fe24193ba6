#!/usr/bin/env bash
# Every test of the workspace, with everything they need: the models (ONNX Runtime, Silero VAD,
# the sample recordings) are installed first by the idempotent setup script.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh
./scripts/setup-models.sh
cargo test --workspace --locked "$@"
