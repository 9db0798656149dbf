"""Tiny constructors for OpenAPI v3 schema fragments as Kubernetes CRDs accept them.

CRD schemas cannot use `$ref`, so shared shapes (a link, a resource block, a plan summary)
are Python functions that return fresh dicts; the generated YAML inlines them.
"""

from typing import Any

Schema = dict[str, Any]


def string(description: str = "", **rules: Any) -> Schema:
    return _with({"type": "string", **rules}, description)


def integer(description: str = "", **rules: Any) -> Schema:
    return _with({"type": "integer", **rules}, description)


def number(description: str = "", **rules: Any) -> Schema:
    return _with({"type": "number", **rules}, description)


def boolean(description: str = "", **rules: Any) -> Schema:
    return _with({"type": "boolean", **rules}, description)


def enum(values: list[str], description: str = "", **rules: Any) -> Schema:
    return string(description, enum=values, **rules)


def obj(properties: dict[str, Schema], description: str = "", *, required: list[str] | None = None,
        cel: list[tuple[str, str]] | None = None, **rules: Any) -> Schema:
    """An object; `cel` holds (rule, message) pairs checked by the API server (x-kubernetes-validations)."""
    schema: Schema = {"type": "object", **rules}
    if required:
        schema["required"] = required
    if cel:
        schema["x-kubernetes-validations"] = [{"rule": rule, "message": message} for rule, message in cel]
    schema["properties"] = properties
    return _with(schema, description)


def string_map(description: str = "") -> Schema:
    return _with({"type": "object", "additionalProperties": {"type": "string"}}, description)


def integer_map(description: str = "") -> Schema:
    return _with({"type": "object", "additionalProperties": {"type": "integer"}}, description)


def array(items: Schema, description: str = "", **rules: Any) -> Schema:
    return _with({"type": "array", **rules, "items": items}, description)


def map_list(items: Schema, keys: list[str], description: str = "", **rules: Any) -> Schema:
    """An array whose items the API server merges by `keys` (x-kubernetes-list-type: map)."""
    extensions: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": keys}
    return array(items, description, **rules, **extensions)


def int_or_string(pattern: str, description: str = "") -> Schema:
    """A quantity written as a number or a string (the form controller-gen emits)."""
    return _with({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": pattern,
                  "x-kubernetes-int-or-string": True}, description)


def free_form(description: str = "") -> Schema:
    """An object the API server keeps as given (pod template overrides, env entries)."""
    return _with({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, description)


def _with(schema: Schema, description: str) -> Schema:
    return {"description": description, **schema} if description else schema
