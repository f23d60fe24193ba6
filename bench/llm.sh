#!/usr/bin/env bash
# Speed of the LLM node's engine against llama-cpp-python, on the same GGUF and prompts, in one
# run: time to first token of a ~100-token prompt, and decode tokens per second.
#
#   ./bench/llm.sh
#
# The first run installs llama-cpp-python into target/llm-bench-venv; it builds llama.cpp from
# source (cmake, several minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
MODEL="$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VENV="${LLM_BENCH_VENV:-$ROOT/target/llm-bench-venv}"
[[ -f "$MODEL" ]] || ./scripts/setup-models.sh
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q llama-cpp-python==0.3.36
fi
echo "remotemedia LLM (llama.cpp through llama-cpp-2):"
cargo bench -q -p remotemedia-llm --bench llm
echo "llama-cpp-python $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'):"
"$VENV/bin/python" bench/llm_reference.py "$MODEL"
