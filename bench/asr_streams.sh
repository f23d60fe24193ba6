#!/usr/bin/env bash
# Live captioning under load: N concurrent real-time streams of the bundled recordings through
# the default speech pipeline (examples/transcribe.yaml: resample, Silero VAD, segmenter,
# Moonshine) on one `remotemedia serve`, for each N in $STREAMS. Per N: streams admitted and
# refused, final texts, latency from the end of each utterance to its text (p50/p95/p99/max,
# including the segmenter's 600 ms wait for silence), and the server's CPU (% of one core) and
# resident memory. The load client runs on the same machine and takes CPU from the server.
# Each N runs twice: with the shared model (`shared`, examples/transcribe.yaml) and with a model
# per session (`per_session`, bench/asr/per_session.yaml: seed 001's option A, the way
# per-client systems work), so both are measured in one run.
#
#   ./bench/asr_streams.sh                              # 8 16 24 32 48 64 streams, 40 s each
#   STREAMS="16 32" SECONDS_PER_RUN=30 MODES=shared ./bench/asr_streams.sh
#   SERVE_ARGS="--config my.toml" ./bench/asr_streams.sh  # e.g. other capacity settings
#   LOAD_ARGS="--burst" STREAMS=32 SECONDS_PER_RUN=11 ./bench/asr_streams.sh  # ends together
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${STREAMS:-8 16 24 32 48 64}"
MODES="${MODES:-shared per_session}"
SECS="${SECONDS_PER_RUN:-40}"
PORT="${PORT:-50152}"
./scripts/setup-models.sh >/dev/null
cargo build --release --locked -q -p remotemedia-cli --bin remotemedia
cargo build --release --locked -q -p remotemedia-server --example asr_load
TICK=$(getconf CLK_TCK)
printf '%-12s %-8s %-9s %-8s %-11s %-8s %-8s %-8s %-8s %-10s %s\n' model streams admitted \
    refused utterances p50_ms p95_ms p99_ms max_ms cpu_%core rss_MiB
for n in $STREAMS; do
for mode in $MODES; do
    case $mode in
        shared) manifest=examples/transcribe.yaml ;;
        per_session) manifest=bench/asr/per_session.yaml ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    # A fresh server per N, so one run's backlog is not the next one's.
    # shellcheck disable=SC2086
    target/release/remotemedia serve --pipeline "transcribe=$manifest" \
        --grpc "127.0.0.1:$PORT" --no-http --max-sessions 1000 --log error ${SERVE_ARGS:-} &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    sleep 2 # models load in the background after the port opens
    kill -0 $SERVER || { echo "the server did not start" >&2; exit 1; }
    c0=$(awk '{print $14 + $15}' "/proc/$SERVER/stat"); t0=$(date +%s.%N); peak=0
    # shellcheck disable=SC2086
    target/release/examples/asr_load --addr "127.0.0.1:$PORT" --streams "$n" \
        --seconds "$SECS" ${LOAD_ARGS:-} > target/asr_load.json &
    LOAD=$!
    while kill -0 $LOAD 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
        (( rss > peak )) && peak=$rss
        sleep 0.5
    done
    wait $LOAD
    c1=$(awk '{print $14 + $15}' "/proc/$SERVER/stat"); t1=$(date +%s.%N)
    kill $SERVER; wait $SERVER 2>/dev/null || true
    python3 - "$mode" "$n" "$c0" "$c1" "$t0" "$t1" "$TICK" "$peak" <<'PY'
import json, sys
mode, n, c0, c1, t0, t1, tick, peak = sys.argv[1:]
r = json.load(open("target/asr_load.json"))
cpu = (float(c1) - float(c0)) / float(tick) / (float(t1) - float(t0)) * 100
l = r["latency_ms"]
print(f'{mode:<12} {n:<8} {r["admitted"]:<9} {r["refused"]:<8} {r["utterances"]:<11} {l["p50"]:<8} '
      f'{l["p95"]:<8} {l["p99"]:<8} {l["max"]:<8} {cpu:<10.0f} {int(peak) / 1024:.0f}')
if r["failed"]:
    print("  failures:", r["failures"], file=sys.stderr)
PY
done
done
