#!/usr/bin/env bash
# N concurrent WhisperNode sessions on one shared worker (batched and not) and on a worker per
# session, in one run: open times, worker memory, model loads, utterances/s, idle CPU.
#
#   ./bench/whisper_sessions.sh                              # 8 sessions, 6 utterances each
#   SESSIONS=16 UTTERANCES=4 MODES="shared per_session" ./bench/whisper_sessions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-python.sh
./scripts/setup-models.sh
cargo bench -p remotemedia-python-executor --bench whisper_sessions --locked 2>/dev/null | grep RESULT
