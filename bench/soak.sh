#!/usr/bin/env bash
# Soak run: SOAK_CLIENTS clients (default 6) open, stream through and close sessions of the
# speech pipeline and of a Python-node pipeline for SOAK_SECONDS (default 3600) in a release
# build, sampling RSS, file descriptors, threads, worker processes and shared-memory files every
# 2 s (crates/server/tests/soak.rs; it asserts RSS flat within ±5 % after warm-up and nothing
# left over). Figures in RELIABILITY.md.
#
#   ./bench/soak.sh                    # one hour
#   SOAK_SECONDS=300 ./bench/soak.sh   # five minutes
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-models.sh >/dev/null
./scripts/setup-python.sh >/dev/null
export SOAK_SECONDS="${SOAK_SECONDS:-3600}"
cargo test --release --workspace --locked --features remotemedia-server/webrtc --test soak -- --ignored --nocapture
