#!/usr/bin/env bash
# The main job on the bundled default. Builds what it needs, then runs.
# Today: the built-in text pipeline over the bundled lines (the speech pipeline replaces it when
# the speech nodes land; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p remotemedia-cli
exec target/release/remotemedia run examples/uppercase.yaml --input examples/lines.txt "$@"
