"""Structural validation of a cluster definition against its JSON Schema.

The schema (`schemas/cluster.schema.json`) owns types, required keys, enums and
formats; this module only turns the validator's findings into `Problem`s that
name the line, the dotted path and, for a misspelt key, the closest valid one.
A schema node may carry `x-message`, which replaces the validator's wording.
Cross-field rules (duplicate IPs, members that are not nodes…) live in
`provision.spec.build`, which runs only on a structurally valid document.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from provision.errors import Problem, did_you_mean
from provision.spec.discovery import MODES, schema_keys
from provision.yamlmarks import MarkedDocument, dotted, value_kind

_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "empty",
}


@lru_cache(maxsize=1)
def cluster_schema() -> dict:
    """The schema file, with the discovery section made from the discovery modes."""
    text = resources.files("provision.spec").joinpath("schemas/cluster.schema.json").read_text()
    schema = json.loads(text)
    discovery = schema["properties"]["etcd"]["properties"]["discovery"]
    discovery["properties"] = {"mode": {"enum": list(MODES)}, **schema_keys()}
    return schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(cluster_schema())


def check_structure(doc: MarkedDocument) -> list[Problem]:
    """Every structural problem in `doc`, each with its position."""
    if not isinstance(doc.data, dict):
        return [doc.problem((), "a cluster definition must be a mapping with at least "
                                "`name` and `nodes`")]
    problems: list[Problem] = []
    for error in _validator().iter_errors(doc.data):
        problems.extend(_to_problems(doc, error))
    return problems


def _to_problems(doc: MarkedDocument, error: jsonschema.ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    where = dotted(path)
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    kind = error.validator

    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        allowed = set(known)
        extra = [k for k in error.instance if k not in allowed]
        scope = f" in `{where}`" if path else ""
        return [doc.problem(path + (key,), f"unknown key `{key}`{scope}"
                            f"{did_you_mean(key, known) or _known_list(known)}", key=True)
                for key in extra]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        scope = f"`{where}`" if path else "the cluster definition"
        return [doc.problem(path, f"{scope} is missing the required key `{missing}`")]
    if kind == "propertyNames":
        bad = error.instance
        message = custom or f"key `{bad}` is not allowed here"
        if isinstance(error.schema, dict) and "x-message" not in error.schema:
            sub = error.schema.get("propertyNames", {})
            message = sub.get("x-message", message)
        return [doc.problem(path + (bad,), f"`{where}`: key `{bad}`: {message}", key=True)]
    if custom:
        return [doc.problem(path, f"`{where}` {custom} (got {_show(error.instance)})")]
    message = _value_message(kind, error)
    if message is not None:
        return [doc.problem(path, f"`{where}` {message}")]
    if kind in ("anyOf", "oneOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _to_problems(doc, best)
    return [doc.problem(path, f"`{where}`: {error.message}")]


def _value_message(kind: str, error: jsonschema.ValidationError) -> str | None:
    """What is wrong with a value, after its key's name; None for a kind not worded here."""
    if kind == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else wanted
        names = " or ".join(_TYPE_NAMES.get(w, w) for w in wanted)
        return f"must be {names}, not {value_kind(error.instance)} ({_show(error.instance)})"
    if kind == "enum":
        options = [str(o) for o in error.validator_value]
        hint = did_you_mean(str(error.instance), options)
        return f"must be one of {', '.join(options)}; got {_show(error.instance)}{hint}"
    if kind == "const":
        return f"must be {_show(error.validator_value)}"
    if kind in ("minimum", "exclusiveMinimum"):
        word = "at least" if kind == "minimum" else "more than"
        return f"must be {word} {error.validator_value}; got {_show(error.instance)}"
    if kind in ("maximum", "exclusiveMaximum"):
        return f"must be at most {error.validator_value}; got {_show(error.instance)}"
    if kind == "minItems":
        return f"must list at least {error.validator_value} item(s)"
    if kind == "minLength":
        return "must not be empty"
    if kind == "pattern":
        return (f"has an invalid format: {_show(error.instance)} does not match "
                f"{error.validator_value}")
    return None


def _known_list(known: list[str]) -> str:
    return f"; known keys: {', '.join(known)}" if len(known) <= 12 else ""


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
