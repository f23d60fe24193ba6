#!/usr/bin/env bash
# Latency of a WebRTC call as the browser page measures it: end of speech → final caption, and
# end of speech → first reply audio, for one headless Chromium caller speaking beckett.wav into
# the speak-back pipeline (examples/webrtc_speak_back.yaml) on loopback, release build.
#
#   ./bench/webrtc_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh --test
./scripts/setup-models.sh
cargo test --release --locked -p remotemedia-server --features webrtc --test webrtc \
    latency_of_one_caller -- --ignored --nocapture
