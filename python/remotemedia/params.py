"""Checks node params against the subset of JSON Schema that Python nodes use: ``type``,
``properties`` with ``default``, ``required``, ``enum``, ``minimum``, ``maximum``, nested
objects, and no properties beyond those listed. The Rust runtime validates params with a full
JSON Schema validator; the pure-Python runtime uses this one, with messages that name the
field."""

from __future__ import annotations

from typing import Any, Dict


def check_params(node: str, params: Dict[str, Any], schema: Dict[str, Any]) -> Dict[str, Any]:
    """``params`` with defaults filled in. Unknown keys (where ``additionalProperties`` is
    false), wrong types, values out of range or not in an enum raise ValueError naming the
    field."""
    if not isinstance(params, dict):
        raise ValueError(f"{node}: params must be an object, not {params!r}")
    props = schema.get("properties")
    if props is None:
        return dict(params)
    unknown = sorted(set(params) - set(props))
    if unknown and schema.get("additionalProperties") is False:
        raise ValueError(
            f"{node}: unknown parameter `{unknown[0]}`; known: {', '.join(sorted(props))}"
        )
    for name in schema.get("required", []):
        if name not in params:
            raise ValueError(f"{node}: missing parameter `{name}`")
    out = dict(params)
    for name, spec in props.items():
        value = params.get(name, spec.get("default"))
        if value is not None:
            _check_value(f"{node}: `{name}`", value, spec)
        out[name] = value
    return out


_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
}


def _check_value(what: str, value: Any, spec: Dict[str, Any]) -> None:
    kind = spec.get("type")
    if kind in _TYPES and not _TYPES[kind](value):
        raise ValueError(f"{what} must be {kind}, not {value!r}")
    if "enum" in spec and value not in spec["enum"]:
        raise ValueError(f"{what}: {value!r} is not one of {', '.join(map(str, spec['enum']))}")
    if "minimum" in spec and value < spec["minimum"]:
        raise ValueError(f"{what}: {value} is less than the minimum of {spec['minimum']}")
    if "maximum" in spec and value > spec["maximum"]:
        raise ValueError(f"{what}: {value} is greater than the maximum of {spec['maximum']}")
    if kind == "object":
        check_params(what, value, spec)
