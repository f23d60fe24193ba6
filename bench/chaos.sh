#!/usr/bin/env bash
# Chaos under load, timed: CHAOS_VICTIMS live streams (default 24, half the 48 streams one server
# holds at p95 ≤ 1 s on 2 vCPUs, BENCHMARKS.md "Live captioning under load") of the sample
# recording through the speech pipeline for CHAOS_SECONDS (default 40), first alone, then while
# Python workers are SIGKILLed every 500 ms under sessions of a Python pipeline, clients reset
# their connections mid-utterance, silent connections and streams wait, 10 000 sessions open
# and close and oversized and truncated messages arrive (crates/server/tests/chaos.rs, in a
# release build; the server, the victims and the faults share one process and its two cores).
# Prints the test's report (every client's outcome) and the victims' p95 latency, calm and
# under chaos, with their ratio. The test itself fails if a victim loses words or is told of an
# error, a client goes unanswered, or anything is left behind.
#
#   ./bench/chaos.sh
#   CHAOS_VICTIMS=12 CHAOS_SECONDS=30 ./bench/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-models.sh >/dev/null
./scripts/setup-python.sh >/dev/null
export CHAOS_VICTIMS="${CHAOS_VICTIMS:-24}" CHAOS_SECONDS="${CHAOS_SECONDS:-40}"
log=target/chaos.log
cargo test --release --workspace --locked --features remotemedia-server/webrtc --test chaos \
    -- --nocapture 2>&1 | tee "$log" | grep -E "^test |test result"
python3 - "$log" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
report = json.loads(re.search(r"^\{\n.*?^\}$", text, re.S | re.M).group(0))
print(json.dumps(report, indent=1))
calm, chaos = report["calm"], report["chaos"]
print(f"victims' p95: calm {calm['p95_ms']} ms ({calm['utterances']} utterances), "
      f"under chaos {chaos['p95_ms']} ms ({chaos['utterances']}): "
      f"{chaos['p95_ms'] / calm['p95_ms']:.2f}x")
PY
