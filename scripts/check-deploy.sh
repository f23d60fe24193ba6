#!/usr/bin/env bash
# The deployment files, checked offline (no cluster can run here): the Kubernetes base is
# rendered with `kubectl kustomize` and every object validated, strictly, against the schemas of
# Kubernetes 1.32 (kubernetes-validate, from PyPI, into the project's venv); the server
# configuration it ships is parsed by the server's own tests (crates/server/src/config.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REMOTEMEDIA_VENV:-.venv}"
command -v kubectl >/dev/null || { echo "check-deploy: kubectl is needed (kubectl kustomize)" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
mkdir -p target
kubectl kustomize deploy/k8s > target/k8s.yaml
"$VENV/bin/kubernetes-validate" --strict --quiet -k 1.32.0 target/k8s.yaml
"$VENV/bin/python" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' deploy/k8s/prometheus-adapter-rules.yaml
echo "check-deploy: deploy/k8s renders and validates ($(grep -c '^kind:' target/k8s.yaml) objects)"
