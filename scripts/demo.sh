#!/usr/bin/env bash
# The main job on the bundled default: transcribes the bundled recording through the default
# speech pipeline (resample to 16 kHz, Silero VAD, segmentation, Moonshine), printing each
# utterance with its start and end time as it is recognised. Installs what it needs first.
#
#   ./scripts/demo.sh                      # the bundled sample
#   ./scripts/demo.sh -i talk.mp3 -f srt   # any other recording, as subtitles
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh
./scripts/setup-models.sh
cargo build --release --locked -q -p remotemedia-cli
exec target/release/remotemedia run "$@"
