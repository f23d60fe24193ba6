#!/usr/bin/env bash
# Scale-out: live-captioning streams through HAProxy (deploy/compose.yaml) to one server, then to
# three, each server container limited to $SERVER_CPUS CPUs (default 0.6). For each replica count
# and each N in its list, a fresh stack takes N real-time streams of the bundled recordings
# (asr_load, as bench/asr_streams.sh: latency from the end of an utterance to its final text,
# including the VAD's 500 ms wait for silence) for $SECONDS_PER_RUN seconds. Ends with the most
# streams each count holds with none refused and p95 <= 1 s, and their ratio. The table is in
# target/scale.csv. Then a server is killed under load (see KILL_STREAMS below). The load
# client and HAProxy run on the same machine as the servers.
#
#   ./bench/scale.sh
#   STREAMS_1="8 12" STREAMS_3="24 36" SECONDS_PER_RUN=30 ./bench/scale.sh
#
# Needs Docker and docker-compose; builds the release binary, the image (on the debootstrap base,
# as the tests do) and the load client.
set -euo pipefail
cd "$(dirname "$0")/.."
export SERVER_CPUS="${SERVER_CPUS:-0.6}"
SECS="${SECONDS_PER_RUN:-40}"
STREAMS_1="${STREAMS_1:-4 6 8 10 12 14}"
STREAMS_3="${STREAMS_3:-12 18 24 30 36 42}"
./scripts/setup-models.sh >/dev/null
BASE=$(./scripts/docker-base.sh)
PROFILE=release ./scripts/image-artifacts.sh >/dev/null
docker build -q -t remotemedia:scale-bench --build-arg "BASE=$BASE" --build-arg "BUILDER=$BASE" \
    --build-arg PREBUILT=target/docker . >/dev/null
cargo build --release --locked -q -p remotemedia-server --example asr_load
export BASE IMAGE=remotemedia:scale-bench LB_IMAGE=remotemedia-lb:scale-bench
export LB_PORT="${LB_PORT:-50171}" LB_STATS_PORT="${LB_STATS_PORT:-8471}"
REMOTEMEDIA_TOKENS="scale-bench-$(od -An -tx8 -N8 /dev/urandom | tr -d ' ')"
export REMOTEMEDIA_TOKENS REMOTEMEDIA_TOKEN="$REMOTEMEDIA_TOKENS"
compose() { docker-compose -p rmscale -f deploy/compose.yaml "$@"; }
trap 'compose down -t 1 >/dev/null 2>&1 || true' EXIT
# A fresh stack of HAProxy and the given servers (so one run's backlog is not the next one's),
# once each server is healthy and HAProxy's checks have seen it ready (two, 500 ms apart).
fresh_stack() {
    compose down -t 1 >/dev/null 2>&1
    compose up -d --build --no-deps "$@" lb >/dev/null 2>&1
    for s in "$@"; do
        for _ in $(seq 180); do
            [ "$(docker inspect -f '{{.State.Health.Status}}' "rmscale_${s}_1")" = healthy ] && break
            sleep 0.5
        done
    done
    sleep 2
}

CSV=target/scale.csv
echo "replicas,streams,admitted,refused,utterances,p50_ms,p95_ms,p99_ms,wer_percent" > "$CSV"
printf '%-9s %-8s %-9s %-8s %-11s %-8s %-8s %-8s %s\n' replicas streams admitted refused \
    utterances p50_ms p95_ms p99_ms wer_%
for replicas in 1 3; do
    list=STREAMS_$replicas
    for n in ${!list}; do
        if [ "$replicas" = 1 ]; then
            fresh_stack server1
        else
            fresh_stack server1 server2 server3
        fi
        target/release/examples/asr_load --addr "127.0.0.1:$LB_PORT" --streams "$n" \
            --seconds "$SECS" > target/scale_load.json
        python3 - "$replicas" "$n" "$CSV" <<'PY'
import json, sys
replicas, n, csv = sys.argv[1:]
r = json.load(open("target/scale_load.json"))
l = r["latency_ms"]
row = [replicas, n, r["admitted"], r["refused"], r["utterances"], l["p50"], l["p95"], l["p99"],
       r["wer_percent"]]
print("".join(f"{v:<{w}} " for v, w in zip(row, [9, 8, 9, 8, 11, 8, 8, 8, 0])))
open(csv, "a").write(",".join(map(str, row)) + "\n")
if r["failed"]:
    print("  failures:", r["failures"], file=sys.stderr)
PY
    done
done

# A server killed under load: $KILL_STREAMS streams on three servers, calm, then with server2
# killed ($KILL_AFTER s in): the latency of the other streams' utterances (asr_load drops a
# failed stream's) against the calm run's.
KILL_STREAMS="${KILL_STREAMS:-18}"
KILL_AFTER="${KILL_AFTER:-15}"
for run in calm kill; do
    fresh_stack server1 server2 server3
    if [ "$run" = kill ]; then
        (sleep "$KILL_AFTER"; docker kill rmscale_server2_1 >/dev/null) &
    fi
    target/release/examples/asr_load --addr "127.0.0.1:$LB_PORT" --streams "$KILL_STREAMS" \
        --seconds "$SECS" > "target/scale_$run.json"
    wait
done
python3 - <<'PY'
import json
calm, kill = (json.load(open(f"target/scale_{r}.json")) for r in ("calm", "kill"))
for name, r in (("calm", calm), ("server2 killed", kill)):
    l = r["latency_ms"]
    print(f"{name}: {r['streams']} streams, {r['failed']} ended by the kill, "
          f"{r['utterances']} utterances, p50 {l['p50']} ms, p95 {l['p95']} ms")
print(f"p95 with a server killed / calm: {kill['latency_ms']['p95'] / calm['latency_ms']['p95']:.2f}")
PY

python3 - "$CSV" "$SERVER_CPUS" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
held = {}
for r in rows:
    ok = int(r["refused"]) == 0 and int(r["admitted"]) == int(r["streams"]) \
        and r["p95_ms"] != "nan" and float(r["p95_ms"]) <= 1000
    if ok:
        held[r["replicas"]] = max(held.get(r["replicas"], 0), int(r["streams"]))
one, three = held.get("1", 0), held.get("3", 0)
print(f"held at p95 <= 1 s, {sys.argv[2]} CPU per server: 1 server {one}, 3 servers {three}"
      + (f", ratio {three / one:.2f}" if one else ""))
PY
