#!/usr/bin/env bash
# Every test of the workspace. Installs nothing beyond the Rust toolchain today; later parts
# (models, Python, browser) add their setup here so this stays the one test command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
