#!/usr/bin/env bash
# Round trip through a Python pass-through node, ours and dora-rs's, in one run on one machine.
#
#   ours:  Rust → Python worker (Echo) → Rust, over iceoryx2 shared memory (audio frames)
#   dora:  Python source → Python node → Python source, `dora run` (uint8 arrow arrays),
#          with a 64 MiB shared-memory pool (its default pool falls off a cliff above ~3 MiB)
#
#   ./bench/python_roundtrip.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-python.sh
echo "== remotemedia"
cargo bench -p remotemedia-python-executor --bench roundtrip --locked 2>/dev/null
VENV=target/bench-dora-venv
if [[ ! -x $VENV/bin/dora ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet dora-rs-cli==1.1.0 dora-rs==1.1.0 pyarrow==26.0.1 numpy==2.4.6
fi
echo "== dora-rs 1.1.0"
cd bench/dora
# VIRTUAL_ENV tells dora which Python runs the nodes.
VIRTUAL_ENV="$PWD/../../$VENV" PATH="$PWD/../../$VENV/bin:$PATH" DORA_NODE_SHM_POOL_SIZE=67108864 \
    dora run dataflow.yml 2>&1 | grep RESULT
