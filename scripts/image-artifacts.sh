#!/usr/bin/env bash
# Stages what the server image holds into OUT (default target/docker): the `remotemedia` binary
# (stripped; built with WebRTC), the models (without the sample recordings), the `remotemedia`
# Python package with its compiled extension, the example manifests and the server
# configuration the image starts with (the Kubernetes base's, deploy/k8s/server.toml). The Dockerfile's build stage runs it from source; the container tests run it on
# the host and feed OUT to the Dockerfile (PREBUILT=target/docker), the same runtime stage.
#
#   ./scripts/image-artifacts.sh [OUT]          # release build
#   PROFILE=debug ./scripts/image-artifacts.sh  # the test build's binary (no release build)
#   FEATURES=webrtc,cuda ./scripts/image-artifacts.sh   # Dockerfile.cuda
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/target/docker}"
PROFILE="${PROFILE:-release}"
FEATURES="${FEATURES:-webrtc}"
cd "$ROOT"
./scripts/setup-models.sh >/dev/null
if [[ "$PROFILE" == release ]]; then
    cargo build --release --locked -p remotemedia-cli --features "$FEATURES"
else
    cargo build --locked --workspace --features remotemedia-server/webrtc --bin remotemedia
fi
# The Python package's extension module (remotemedia._native) is built by the Python setup.
./scripts/setup-python.sh >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/models" "$OUT/python" "$OUT/examples"
strip -o "$OUT/bin/remotemedia" "target/$PROFILE/remotemedia"
for m in models/*/; do
    [[ "$(basename "$m")" == samples ]] || cp -a "$m" "$OUT/models/"
done
cp -a python/remotemedia "$OUT/python/"
find "$OUT/python" -name __pycache__ -prune -exec rm -rf {} +
strip "$OUT"/python/remotemedia/_native*.so
cp examples/*.yaml "$OUT/examples/"
cp deploy/k8s/server.toml "$OUT/server.toml"
du -sh "$OUT" >&2
