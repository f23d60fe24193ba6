#!/usr/bin/env bash
# The voice agent (examples/voice_agent.yaml) against scripted callers speaking in real time:
# voice-to-voice (end of the caller's speech -> first answer audio out of the session) and
# barge-in (onset of speech over the answer -> the answer stopped), p50/p95.
#
#   ./bench/voice_agent.sh            # one caller, 8 rounds; then 8 callers at once, 2 rounds
#   ./bench/voice_agent.sh 4 3        # 4 callers, 3 rounds each
#
# Needs ./scripts/setup-system.sh and ./scripts/setup-models.sh. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 0 ]]; then
    cargo bench -q -p remotemedia-runtime --bench voice_agent -- "$@"
else
    cargo bench -q -p remotemedia-runtime --bench voice_agent -- 1 8
    cargo bench -q -p remotemedia-runtime --bench voice_agent -- 8 2
fi
