#!/usr/bin/env bash
# Subtitle dubbing: bench/dub/film.srt (26 cues, 2 minutes; a narrator and Bob on the bundled
# Piper voice, Alice on espeak-ng, two German cues) dubbed by the release binary with 1 worker
# and with N workers, alternating, each run on an empty cache. Reports wall time, the ratio to
# the audio's length, the speed-up over one worker and peak RSS (/usr/bin/time), and checks
# that every run wrote the same bytes.
#
#   ./bench/dub.sh           # workers 1 and 2, 3 runs each
#   RUNS=5 WORKERS="1 2 4" ./bench/dub.sh
#
# Needs ./scripts/setup-system.sh and ./scripts/setup-models.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
WORKERS="${WORKERS:-1 2}"
cargo build -q --release --locked -p remotemedia-cli
BIN=target/release/remotemedia
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
AUDIO_S=120
echo "workers run wall_s x_audio peak_rss_mib"
for run in $(seq "$RUNS"); do
    for w in $WORKERS; do
        /usr/bin/time -f "%e %M" -o "$OUT/time" "$BIN" dub bench/dub/film.srt \
            -o "$OUT/w$w-$run.wav" --workers "$w" \
            --character Bob=piper --character Alice=espeak:en-us+f3 2>/dev/null
        read -r wall rss <"$OUT/time"
        echo "$w $run $wall $(echo "scale=3; $wall / $AUDIO_S" | bc) $((rss / 1024))" | tee -a "$OUT/results"
    done
done
echo
echo "median per worker count (speed-up over 1 worker):"
base=""
for w in $WORKERS; do
    med=$(awk -v w="$w" '$1 == w {print $3}' "$OUT/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    rss=$(awk -v w="$w" '$1 == w {print $5}' "$OUT/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    [[ -z "$base" ]] && base="$med"
    echo "  workers $w: ${med} s ($(echo "scale=3; $med / $AUDIO_S" | bc)x audio), speed-up $(echo "scale=2; $base / $med" | bc), peak RSS ${rss} MiB"
done
if [[ $(sha256sum "$OUT"/*.wav | awk '{print $1}' | sort -u | wc -l) -eq 1 ]]; then
    echo "every run wrote the same bytes"
else
    echo "RUNS DIFFER:"; sha256sum "$OUT"/*.wav
    exit 1
fi
