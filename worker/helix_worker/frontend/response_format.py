"""OpenAI's `response_format` -> the JSON Schema the last stage constrains the output to.

{"type": "text"} is free text; {"type": "json_object"} is any JSON object (the schema
{"type": "object"}, as vLLM compiles it); {"type": "json_schema", "json_schema": {"name",
"schema", "description", "strict"}} is JSON valid against `schema`. The schema is compiled
here once (without the vocabulary, a few milliseconds), so one xgrammar cannot take is a 400
naming it, not a failure at the stage.
"""

import json
from typing import Any

from helix_worker.engine.grammar import JSON_OBJECT, schema_problem
from helix_worker.errors import InvalidRequest

_SCHEMA_FIELDS = frozenset({"name", "schema", "description", "strict"})


def json_schema_of(response_format: Any) -> str:
    """The JSON Schema text `response_format` asks for; "" for free text."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return ""
    if kind == "json_object":
        return JSON_OBJECT
    if kind != "json_schema":
        raise InvalidRequest(f"`response_format` type {ascii(kind)[:40]} is not supported: use \"text\", "
                             "\"json_object\" or \"json_schema\" (with a `json_schema` object)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("`response_format.json_schema` must be an object with `name` and `schema`")
    if unknown := sorted(set(spec) - _SCHEMA_FIELDS):
        raise InvalidRequest(f"unknown field `response_format.json_schema.{unknown[0]}`: it takes "
                             f"{', '.join(sorted(_SCHEMA_FIELDS))}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise InvalidRequest("`response_format.json_schema.name` must be a non-empty string")
    if not isinstance(spec.get("strict", False), bool) and spec["strict"] is not None:
        raise InvalidRequest("`response_format.json_schema.strict` must be true or false")
    if not isinstance(spec.get("description") or "", str):
        raise InvalidRequest("`response_format.json_schema.description` must be a string")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("`response_format.json_schema.schema` must be a JSON Schema object")
    text = json.dumps(schema)  # key order kept: properties come out in the order the schema gives
    if problem := schema_problem(text):
        raise InvalidRequest(f"`response_format.json_schema.schema` cannot constrain the output: {problem}")
    return text
