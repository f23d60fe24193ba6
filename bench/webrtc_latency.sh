#!/usr/bin/env bash
# Latency of a WebRTC call as the browser page measures it: end of speech → final caption, and
# end of speech → first reply audio, for one headless Chromium caller on loopback, release
# build: speaking beckett.wav into the speak-back pipeline (examples/webrtc_speak_back.yaml),
# then asking the voice agent (examples/voice_agent.yaml) four questions, waiting for each answer.
#
#   ./bench/webrtc_latency.sh            # both
#   ./bench/webrtc_latency.sh agent      # the voice agent only
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh --test
./scripts/setup-models.sh
for test in ${1:-latency_of_one_caller latency_of_the_agent_for_one_caller}; do
    [[ $test == agent ]] && test=latency_of_the_agent_for_one_caller
    cargo test --release --locked -p remotemedia-server --features webrtc --test webrtc \
        "$test" -- --ignored --exact --nocapture
done
