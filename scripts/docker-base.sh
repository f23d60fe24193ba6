#!/usr/bin/env bash
# Makes the base image the container tests build on, with no registry to pull one from:
# Debian bookworm (minbase) made by debootstrap from Debian's archive and imported as
# remotemedia-base:bookworm. With a registry, use debian:bookworm-slim instead (the
# Dockerfile's default BASE). Idempotent: an existing image is kept.
#
#   ./scripts/docker-base.sh            # prints the image name
set -euo pipefail
IMAGE="${BASE_IMAGE:-remotemedia-base:bookworm}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "docker-base: debootstrap is needed (./scripts/setup-system.sh --test)" >&2; exit 1; }
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
echo "docker-base: debootstrap bookworm from $MIRROR" >&2
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "$IMAGE"
