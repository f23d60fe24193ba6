#!/usr/bin/env bash
# Installs the system libraries the runtime loads at run time (never at build time):
#
#   libespeak-ng1 + espeak-ng-data   text to phonemes for PiperTTS, and EspeakTTS itself
#
#   ./scripts/setup-system.sh
#
# Idempotent: when everything is present it says so and changes nothing. Installs with apt-get
# (through sudo when not root); on a system without apt-get it names what to install instead.
set -euo pipefail

PACKAGES=(libespeak-ng1 espeak-ng-data)

log() { printf 'setup-system: %s\n' "$*" >&2; }

# The library as the dynamic loader will find it.
have_library() {
    /sbin/ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so\.1 ' ||
        ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so\.1 '
}

# espeak-ng's data (phoneme tables, voices, dictionaries); the library is useless without it.
have_data() {
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' espeak-ng-data 2>/dev/null | grep -q 'install ok installed'
        return
    fi
    local dir
    for dir in /usr/lib/*/espeak-ng-data /usr/lib/espeak-ng-data /usr/share/espeak-ng-data; do
        [[ -f "$dir/phontab" ]] && return 0
    done
    return 1
}

if have_library && have_data; then
    log "espeak-ng library and data present; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "error: espeak-ng is missing and apt-get is not available; install the espeak-ng library"
    log "(libespeak-ng.so.1) and its data with this system's package manager"
    exit 1
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "error: not root and sudo is not available; as root run: apt-get install ${PACKAGES[*]}"
        exit 1
    fi
    SUDO=(sudo)
fi

log "installing ${PACKAGES[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be empty or stale on a fresh machine; one refresh, then install.
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2

if ! have_library || ! have_data; then
    log "error: installed ${PACKAGES[*]} but libespeak-ng.so.1 or its data is still not found"
    exit 1
fi
log "espeak-ng installed"
