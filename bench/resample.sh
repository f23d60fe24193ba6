#!/usr/bin/env bash
# Resampling benchmark: RemoteMedia AudioResample vs Python soxr and scipy on the same samples.
# Usage: ./bench/resample.sh   (creates bench/.venv with numpy, scipy and soxr on first run)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet numpy scipy soxr
fi
cargo build --release --locked -p remotemedia-audio --example resample_bench
bench/.venv/bin/python bench/resample.py target/release/examples/resample_bench
