"""`tool_choice` "required" or a named function: calls the grammar enforces, parsed as vLLM does.

The output is constrained (`engine.grammar`) to JSON that is the call, so no model-specific
tool-call parser is needed: a named function's output is its arguments object; "required"
makes a list of one or more {"name", "parameters"} objects, one of the tools each (vLLM's
schema). The answer carries them as OpenAI `tool_calls` with content "" (finish_reason
"tool_calls" for "required", as vLLM's OpenAI server answers). "auto" would need a parser per
model family and is refused; "none" shows the tools to the chat template only.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from helix_worker.engine.grammar import schema_problem
from helix_worker.errors import InvalidRequest

_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolChoice:
    name: str | None  # the named function; None for "required" (any tools, one call or more)
    schema: str  # JSON Schema text the output is constrained to


def tool_choice_of(tools: Any, choice: Any) -> ToolChoice | None:
    """The constrained call `tools` and `tool_choice` ask for; None when the model answers in text."""
    functions = _functions(tools)
    if choice in (None, "auto"):
        if not functions:
            return None
        raise InvalidRequest("`tool_choice` \"auto\" (the default with `tools`) is not supported: this server has no "
                             "tool-call parser per model; give \"required\", a named function or \"none\"")
    if choice == "none":
        return None
    if not functions:
        raise InvalidRequest("`tool_choice` needs `tools`")
    if choice == "required":
        schema = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": [
            {"properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
             "required": ["name", "parameters"]} for name, parameters in functions.items()]}}
        return ToolChoice(None, _checked(json.dumps(schema), "`tools`"))
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str)):
        raise InvalidRequest("`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                             "\"function\": {\"name\": ...}}")
    if name not in functions:
        raise InvalidRequest(f"`tool_choice` names function {name!r}, which is not in `tools` "
                             f"({', '.join(map(repr, functions))})")
    return ToolChoice(name, _checked(json.dumps(functions[name]), f"`tools` function {name!r} `parameters`"))


def tool_calls(text: str, choice: ToolChoice) -> list[dict[str, Any]] | None:
    """OpenAI `tool_calls` from the constrained output; None when it is not whole (max_tokens cut it)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    calls = [(choice.name, text)] if choice.name else [
        (call["name"], json.dumps(call["parameters"], ensure_ascii=False)) for call in value]
    return [{"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
             "function": {"name": name, "arguments": arguments}} for name, arguments in calls]


def _functions(tools: Any) -> dict[str, dict[str, Any]]:
    """Function name -> its parameters schema, from OpenAI's `tools` list."""
    if tools is None:
        return {}
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidRequest("`tools` must be a list of objects")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequest(f"`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        parameters = function.get("parameters") or _NO_PARAMETERS
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"`tools[{i}].function.parameters` must be a JSON Schema object")
        functions[function["name"]] = parameters
    return functions


def _checked(schema: str, what: str) -> str:
    if problem := schema_problem(schema):
        raise InvalidRequest(f"{what} cannot constrain the output: {problem}")
    return schema
