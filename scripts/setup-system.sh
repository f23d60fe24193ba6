#!/usr/bin/env bash
# Installs the system packages the runtime and its tests need, from Debian's archive:
#
#   libespeak-ng1 + espeak-ng-data   text to phonemes for PiperTTS, and EspeakTTS itself (run time)
#   cmake + libclang-dev             building llama.cpp, the LLM node's engine (build time)
#   with --test also:
#   libopus-dev                      Opus encoding of WebRTC replies (links the server with `webrtc`)
#   chromium + chromium-driver       the real browsers of the WebRTC end-to-end tests
#   + firefox-esr
#   debootstrap                      the container tests' base image (no registry to pull one)
#
#   ./scripts/setup-system.sh [--test]
#
# Idempotent: when everything is present it says so and changes nothing. Installs with apt-get
# (through sudo when not root); on a system without apt-get it names what to install instead.
set -euo pipefail

PACKAGES=(libespeak-ng1 espeak-ng-data cmake libclang-dev)
if [[ "${1:-}" == "--test" ]]; then
    PACKAGES+=(libopus-dev chromium chromium-driver firefox-esr debootstrap)
fi

log() { printf 'setup-system: %s\n' "$*" >&2; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Without dpkg, the run-time need can still be checked: the library and espeak-ng's data.
espeak_present() {
    { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libespeak-ng\.so\.1 ' || return 1
    local dir
    for dir in /usr/lib/*/espeak-ng-data /usr/lib/espeak-ng-data /usr/share/espeak-ng-data; do
        [[ -f "$dir/phontab" ]] && return 0
    done
    return 1
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    if [[ "${1:-}" != "--test" ]] && espeak_present && command -v cmake >/dev/null; then
        log "espeak-ng library and data, and cmake, present; nothing to do"
        exit 0
    fi
    log "error: not a Debian system; install with this system's package manager: ${PACKAGES[*]}"
    exit 1
fi

MISSING=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || MISSING+=("$p")
done
if [[ ${#MISSING[@]} -eq 0 ]]; then
    log "${PACKAGES[*]} present; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "error: apt-get is not available; install ${MISSING[*]}"
    exit 1
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "error: not root and sudo is not available; as root run: apt-get install ${MISSING[*]}"
        exit 1
    fi
    SUDO=(sudo)
fi

log "installing ${MISSING[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be empty or stale on a fresh machine; one refresh, then install.
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >&2

for p in "${MISSING[@]}"; do
    installed "$p" || { log "error: apt-get ran but $p is still not installed"; exit 1; }
done
log "installed ${MISSING[*]}"
