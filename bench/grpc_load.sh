#!/usr/bin/env bash
# Serving under load: N concurrent StreamPipeline sessions on loopback, each on its own
# connection, each feeding 20 ms frames of 48 kHz audio in real time through a light pipeline
# (bench/grpc/vad.yaml: resample to 16 kHz + energy VAD). For every frame the client measures
# the time from sending it to receiving its output; the server's CPU time and resident memory
# are read from /proc over the same run. The client runs on the same machine and takes CPU
# from the server, so the figures are pessimistic for the server.
#
#   ./bench/grpc_load.sh                     # 200 sessions, then a sweep upwards
#   SESSIONS="200" SECONDS_PER_RUN=30 ./bench/grpc_load.sh
#   PIPELINE=bench/grpc/silero.yaml ./bench/grpc_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS="${SESSIONS:-200 400 600 800 1000 1200}"
SECS="${SECONDS_PER_RUN:-20}"
PIPELINE="${PIPELINE:-bench/grpc/vad.yaml}"
PORT="${PORT:-50151}"
cargo build --release --locked -q -p remotemedia-cli --bin remotemedia
cargo build --release --locked -q -p remotemedia-server --example loadgen
target/release/remotemedia serve --pipeline "load=$PIPELINE" --grpc "127.0.0.1:$PORT" --no-http \
    --max-sessions 100000 --log error &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
sleep 1
kill -0 $SERVER || { echo "the server did not start" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
printf '%-9s %-9s %-9s %-9s %-9s %-11s %-12s %-12s %s\n' sessions p50_ms p99_ms p999_ms max_ms cpu_%core cpu_%/sess rss_KiB/sess client_lag_p99_ms
IDLE_RSS=$(rss_kib)
for n in $SESSIONS; do
    c0=$(cpu); t0=$(date +%s.%N); peak=$IDLE_RSS
    target/release/examples/loadgen --addr "127.0.0.1:$PORT" --pipeline load --sessions "$n" \
        --seconds "$SECS" --warmup 3 > target/loadgen.json &
    LOAD=$!
    while kill -0 $LOAD 2>/dev/null; do
        r=$(rss_kib); (( r > peak )) && peak=$r
        sleep 0.5
    done
    wait $LOAD
    c1=$(cpu); t1=$(date +%s.%N)
    python3 - "$n" "$c0" "$c1" "$t0" "$t1" "$TICK" "$peak" "$IDLE_RSS" <<'PY'
import json, sys
n, c0, c1, t0, t1, tick, peak, idle = sys.argv[1:]
n = int(n)
r = json.load(open("target/loadgen.json"))
cpu = (float(c1) - float(c0)) / float(tick) / (float(t1) - float(t0)) * 100
lat = r["latency_ms"]
print(f"{n:<9} {lat['p50']:<9.2f} {lat['p99']:<9.2f} {lat['p999']:<9.2f} {lat['max']:<9.2f} "
      f"{cpu:<11.1f} {cpu / n:<12.3f} {(int(peak) - int(idle)) / n:<12.1f} "
      f"{r['client_send_lag_ms']['p99']:.2f}"
      + (f"   FAILED SESSIONS: {r['failed_sessions']} {r['failures']}" if r["failed_sessions"] else ""))
PY
done
