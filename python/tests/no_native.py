"""Runs the SDK as if the native module had not been built (test_fallback.py starts it in a
fresh interpreter): prints what it saw as one JSON object."""

import json
import sys
import warnings

sys.modules["remotemedia._native"] = None  # `from . import _native` now raises ImportError

import numpy as np  # noqa: E402

import remotemedia  # noqa: E402
from remotemedia import Audio  # noqa: E402
from remotemedia.pipeline import (  # noqa: E402
    ManifestError,
    Pipeline,
    RuntimeUnavailableError,
    get_metrics,
)

manifest, frames_path = sys.argv[1], sys.argv[2]
samples = np.load(frames_path)
report = {"available": remotemedia.is_rust_runtime_available()}

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = Pipeline.from_yaml(manifest)
    second = Pipeline.from_yaml(manifest)
report["warnings"] = [str(w.message) for w in caught if w.category is RuntimeWarning]
report["runtime"] = [first.runtime, second.runtime]

results = first.run_sync([Audio(samples[i : i + 960], 48000) for i in range(0, len(samples), 960)])
report["audio"] = np.concatenate(
    [r.data.samples for r in results if isinstance(r.data, Audio)]
).tolist()
report["events"] = [r.data.value for r in results if not isinstance(r.data, Audio)]
report["processed"] = {
    name: t["processed"] for name, t in get_metrics()["node_types"].items()
}

try:
    Pipeline.from_yaml(manifest, runtime_hint="rust")
except RuntimeUnavailableError as e:
    report["rust_error"] = str(e)

try:
    Pipeline.from_dict({"version": "v1", "nodes": [{"id": "s", "type": "SileroVAD"}]})
except ManifestError as e:
    report["unknown_type_error"] = str(e)

print(json.dumps(report))
