#!/usr/bin/env bash
# The main job on the bundled default. Installs the models and builds what it needs, then runs.
# Today: finds the utterances of the bundled recording (format conversion, resampling, Silero
# VAD, segmentation) and prints each with its start and end time; the speech-models issue adds
# recognition, turning each utterance into timed text.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-system.sh
./scripts/setup-models.sh
cargo build --release --locked -q -p remotemedia-cli
exec target/release/remotemedia run examples/speech_segments.yaml --input models/samples/two_cities.wav "$@"
