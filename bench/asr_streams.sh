#!/usr/bin/env bash
# Live captioning under load: N concurrent real-time streams of the bundled recordings through
# the default speech pipeline (examples/transcribe.yaml: resample, Silero VAD, segmenter,
# Moonshine) on one `remotemedia serve`, for each N in $STREAMS. Per N: streams admitted and
# refused, final texts, latency from the end of each utterance to its text (p50/p95/p99/max,
# including the VAD's 500 ms wait for silence), word error rate against the texts read
# (examples/transcripts/), and the server's CPU (% of one core) and peak resident memory. The
# load client runs on the same machine and takes CPU from the server.
# Each N runs once per model in $MODES: `shared` (examples/transcribe.yaml: one shared
# Moonshine, decoding batched across streams), `unbatched` (the same, one utterance at a time:
# bench/asr/unbatched.yaml) and `per_session` (a model per session, seed 001's option A, the
# way per-client systems work: bench/asr/per_session.yaml), so all are measured in one run.
# Ends with the largest N at p95 <= 1.0 s per model, and a plot of p95 against N
# ($PLOT, default target/asr_streams.png; NO_PLOT=1 skips it); the table is in
# target/asr_streams.csv.
#
#   ./bench/asr_streams.sh                              # 8 16 24 32 48 64 streams, 40 s each
#   STREAMS="16 32" SECONDS_PER_RUN=30 MODES=shared ./bench/asr_streams.sh
#   SERVE_ARGS="--config my.toml" ./bench/asr_streams.sh  # e.g. other capacity settings
#   LOAD_ARGS="--burst" STREAMS=32 SECONDS_PER_RUN=11 ./bench/asr_streams.sh  # ends together
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${STREAMS:-8 16 24 32 48 64}"
MODES="${MODES:-shared unbatched per_session}"
SECS="${SECONDS_PER_RUN:-40}"
PORT="${PORT:-50152}"
./scripts/setup-models.sh >/dev/null
cargo build --release --locked -q -p remotemedia-cli --bin remotemedia
cargo build --release --locked -q -p remotemedia-server --example asr_load
TICK=$(getconf CLK_TCK)
CSV=target/asr_streams.csv
echo "model,streams,admitted,refused,utterances,p50_ms,p95_ms,p99_ms,max_ms,wer_percent,cpu_percent,rss_mib" > "$CSV"
printf '%-12s %-8s %-9s %-8s %-11s %-8s %-8s %-8s %-8s %-6s %-10s %s\n' model streams admitted \
    refused utterances p50_ms p95_ms p99_ms max_ms wer_% cpu_%core rss_MiB
for n in $STREAMS; do
for mode in $MODES; do
    case $mode in
        shared) manifest=examples/transcribe.yaml ;;
        unbatched) manifest=bench/asr/unbatched.yaml ;;
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
    python3 - "$mode" "$n" "$c0" "$c1" "$t0" "$t1" "$TICK" "$peak" "$CSV" <<'PY'
import json, sys
mode, n, c0, c1, t0, t1, tick, peak, csv = sys.argv[1:]
r = json.load(open("target/asr_load.json"))
cpu = (float(c1) - float(c0)) / float(tick) / (float(t1) - float(t0)) * 100
l = r["latency_ms"]
row = [mode, n, r["admitted"], r["refused"], r["utterances"], l["p50"], l["p95"], l["p99"],
       l["max"], r["wer_percent"], round(cpu), round(int(peak) / 1024)]
print("".join(f"{v:<{w}} " for v, w in zip(row, [12, 8, 9, 8, 11, 8, 8, 8, 8, 6, 10, 0])))
open(csv, "a").write(",".join(map(str, row)) + "\n")
if r["failed"]:
    print("  failures:", r["failures"], file=sys.stderr)
PY
done
done
# The largest N at p95 <= 1 s per model, and the plot (matplotlib in the project's venv).
python3 - "$CSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for model in dict.fromkeys(r["model"] for r in rows):
    ok = [int(r["streams"]) for r in rows if r["model"] == model and float(r["p95_ms"]) <= 1000]
    print(f"{model}: largest N with p95 <= 1.0 s: {max(ok) if ok else 'none'} of those run")
PY
if [ -z "${NO_PLOT:-}" ]; then
    ./scripts/setup-python.sh >/dev/null
    .venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q matplotlib
    .venv/bin/python bench/asr_plot.py "$CSV" "${PLOT:-target/asr_streams.png}"
fi
