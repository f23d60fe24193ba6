#!/usr/bin/env bash
# Subtitle dubbing of bench/dub/film.srt (26 cues, 2 minutes of film), every voice the bundled
# Piper voice, in one run, alternating:
#   rm-wN   `remotemedia dub --workers N` (release build; N = each of $WORKERS)
#   py-seq  the piper-tts package, cue after cue, one loaded voice (bench/dub_reference.py)
#   py-pN   piper-tts in a pool of N processes, each loading its own voice (seed 003's way)
# Reports the median wall time, its ratio to the film's length, the speed-up over one worker
# and peak RSS (/usr/bin/time: for the pool, its largest single process; each worker holds a
# voice of its own, so the pool as a whole holds about N times that), and checks that every
# remotemedia run wrote the same bytes.
#
#   ./bench/dub.sh                       # 3 rounds, workers 1 and 2
#   RUNS=5 WORKERS="1 2 4" ./bench/dub.sh
#
# Installs the models and, on first use, piper-tts into target/bench-venv (BENCH_VENV).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
RUNS="${RUNS:-3}"
WORKERS="${WORKERS:-1 2}"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
./scripts/setup-models.sh >/dev/null
MODELS="${REMOTEMEDIA_MODELS:-$ROOT/models}"
VOICE="$MODELS/piper-joe/en_US-joe-medium.onnx"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import piper, numpy" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check piper-tts==1.8.0 numpy
fi
cargo build -q --release --locked -p remotemedia-cli
BIN=target/release/remotemedia
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
SUBS=bench/dub/film.srt
FILM_S=120
ALL_PIPER=(--voice de=piper --character Alice=piper --character Bob=piper)

timed() { # name command...: one run, appended to results as "name wall_s rss_mib"
    local name="$1"
    shift
    /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" >/dev/null 2>"$OUT/stderr" || {
        cat "$OUT/stderr"
        exit 1
    }
    read -r wall rss <"$OUT/time"
    echo "$name $wall $((rss / 1024))" | tee -a "$OUT/results"
}

echo "run wall_s peak_rss_mib"
for run in $(seq "$RUNS"); do
    for w in $WORKERS; do
        timed "rm-w$w" "$BIN" dub "$SUBS" -o "$OUT/rm-w$w-$run.wav" --workers "$w" "${ALL_PIPER[@]}"
    done
    timed py-seq "$VENV/bin/python" bench/dub_reference.py "$SUBS" "$OUT/py.wav" --voice "$VOICE"
    timed py-p2 "$VENV/bin/python" bench/dub_reference.py "$SUBS" "$OUT/py.wav" --voice "$VOICE" --processes 2
done

echo
median() { awk -v n="$1" -v col="$2" '$1 == n {print $col}' "$OUT/results" | sort -n |
    awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(median rm-w1 2)
printf "%-8s %8s %9s %9s %9s\n" run "wall s" "× film" "speed-up" "RSS MiB"
for name in $(awk '{print $1}' "$OUT/results" | awk '!seen[$0]++'); do
    wall=$(median "$name" 2)
    printf "%-8s %8s %9s %9s %9s\n" "$name" "$wall" "$(echo "scale=3; $wall / $FILM_S" | bc)" \
        "$(echo "scale=2; $base / $wall" | bc)" "$(median "$name" 3)"
done
if [[ $(sha256sum "$OUT"/rm-*.wav | awk '{print $1}' | sort -u | wc -l) -eq 1 ]]; then
    echo "every remotemedia run wrote the same bytes"
else
    echo "REMOTEMEDIA RUNS DIFFER:"
    sha256sum "$OUT"/rm-*.wav
    exit 1
fi
