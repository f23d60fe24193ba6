#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets, cargo-fuzz with libFuzzer and AddressSanitizer),
# each for SECONDS (default 60) or for RUNS executions, from its committed seed corpus
# (fuzz/corpus/TARGET; new inputs found go to target/fuzz-corpus, not into git). A crash, hang
# (over 10 s on one input) or allocation over 2 GiB fails the script and leaves the input in
# fuzz/artifacts/TARGET.
#
#   ./scripts/fuzz.sh                     # every target, 60 s each
#   SECONDS_PER_TARGET=20 ./scripts/fuzz.sh subtitles manifest
#   RUNS=10000000 ./scripts/fuzz.sh shm_frame
#
# Installs cargo-fuzz from crates.io on first use. Uses the nightly toolchain when rustup has
# one, else the stable one with RUSTC_BOOTSTRAP=1 (sanitizer flags are unstable options).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT/fuzz"
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    TARGETS=(subtitles manifest audio_decode shm_frame stream_request)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
LIMIT=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048)
if [[ -n "${RUNS:-}" ]]; then
    LIMIT+=(-runs="$RUNS")
else
    LIMIT+=(-max_total_time="${SECONDS_PER_TARGET:-60}")
fi
for t in "${TARGETS[@]}"; do
    work="$ROOT/target/fuzz-corpus/$t"
    mkdir -p "$work"
    log="$ROOT/target/fuzz-$t.log"
    echo "fuzz: $t"
    rc=0
    "${FUZZ[@]}" run -O "$t" "$work" "corpus/$t" -- "${LIMIT[@]}" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done|SUMMARY|ERROR|panicked" "$log" || true
    if [[ $rc -ne 0 ]]; then
        tail -40 "$log"
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t; log $log)"
        exit 1
    fi
done
