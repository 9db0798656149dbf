"""OpenAI request bodies -> `OpenAIRequest`: every field is honoured or refused by name.

A client that sends a field this server would ignore (`suffix`, `tool_choice` "auto") gets a 400
naming it instead of an answer that silently lacks it; `response_format` JSON modes and
`tool_choice` "required" or a named function constrain the output by grammar
(`response_format`, `tool_calls`). Defaults follow vLLM's OpenAI
server: max_tokens absent means as many as the context leaves; `top_k`, `ignore_eos` and
`repetition_penalty` are its extensions. `user` is accepted as OpenAI's end-user tag, which
changes nothing in the answer.
"""

from dataclasses import dataclass, replace
from typing import Any

from helix_worker.errors import InvalidRequest
from helix_worker.frontend import validation as check
from helix_worker.frontend.response_format import json_schema_of
from helix_worker.frontend.service import TextRequest
from helix_worker.frontend.tool_calls import ToolChoice, tool_choice_of

MAX_CHOICES = 16
_COMMON = frozenset({"model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "top_k", "seed",
                     "stop", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty",
                     "logit_bias", "logprobs", "user", "response_format"})
FIELDS = {False: _COMMON | {"prompt", "echo", "best_of", "suffix"},
          True: _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice"}}


@dataclass(frozen=True)
class OpenAIRequest:
    text: TextRequest
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    tool_choice: ToolChoice | None = None  # the answer is a tool call, parsed from the constrained output


def parse_body(body: Any, *, chat: bool) -> OpenAIRequest:
    """OpenAI request fields -> OpenAIRequest; anything malformed or unsupported is an InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS[chat])
    if unknown:
        raise InvalidRequest(f"unknown field `{unknown[0]}`: this server takes {', '.join(sorted(FIELDS[chat]))}")
    n = check.integer("n", check.given(body, "n", 1), 1, MAX_CHOICES)
    stream = check.flag("stream", check.given(body, "stream", False))
    if not isinstance(check.given(body, "user", ""), str):
        raise InvalidRequest("`user` must be a string")
    _refuse_unsupported(body, n)
    if chat:
        wanted = 1 if check.flag("logprobs", check.given(body, "logprobs", False)) else 0
        logprobs = check.integer("top_logprobs", check.given(body, "top_logprobs", wanted), 0, check.MAX_LOGPROBS)
        max_tokens = check.given(body, "max_completion_tokens", body.get("max_tokens"))
    else:
        logprobs = check.integer("logprobs", check.given(body, "logprobs", 0), 0, check.MAX_LOGPROBS)
        max_tokens = body.get("max_tokens")
    sampling = check.sampling(temperature=check.given(body, "temperature", 1.0), top_p=check.given(body, "top_p", 1.0),
                              top_k=check.given(body, "top_k", 0), seed=body.get("seed"), logprobs=logprobs,
                              presence_penalty=check.given(body, "presence_penalty", 0.0),
                              frequency_penalty=check.given(body, "frequency_penalty", 0.0),
                              repetition_penalty=check.given(body, "repetition_penalty", 1.0),
                              logit_bias=body.get("logit_bias"))
    ignore_eos = check.flag("ignore_eos", check.given(body, "ignore_eos", False))
    schema = json_schema_of(check.given(body, "response_format", {"type": "text"}))
    tool = tool_choice_of(body.get("tools"), body.get("tool_choice")) if chat else None
    if tool:
        if schema:
            raise InvalidRequest("`response_format` cannot go with `tool_choice` \"required\" or a named function: "
                                 "both constrain the output")
        if stream:
            raise InvalidRequest("`stream` with `tool_choice` \"required\" or a named function is not supported: "
                                 "the calls are parsed from the whole output; ask without stream")
        schema = tool.schema
    if schema:
        if ignore_eos:
            raise InvalidRequest("`ignore_eos` cannot go with a JSON `response_format` or a tool call: the output "
                                 "ends with the end-of-sequence token once the JSON value is complete")
        sampling = replace(sampling, json_schema=schema)
    common: dict[str, Any] = {
        "max_tokens": None if max_tokens is None else check.integer("max_tokens", max_tokens, 1, check.MAX_TOKENS_MAX),
        "sampling": sampling, "stop": check.stop_strings(body.get("stop")), "ignore_eos": ignore_eos}
    text = _chat(body, common) if chat else _completion(body, common)
    return OpenAIRequest(text, n, stream, _include_usage(body, stream), tool)


def _refuse_unsupported(body: dict[str, Any], n: int) -> None:
    """Fields whose meaning this server lacks, refused unless they ask for the default."""
    if check.flag("echo", check.given(body, "echo", False)):
        raise InvalidRequest("`echo` is not supported: the answer never repeats the prompt")
    best_of = body.get("best_of")
    if best_of is not None and check.integer("best_of", best_of, 1, MAX_CHOICES) != n:
        raise InvalidRequest("`best_of` other than n is not supported: this server does not rank samples; use n")
    if body.get("suffix") is not None:
        raise InvalidRequest("`suffix` is not supported: this server does not fill in between a prompt and a suffix")


def _chat(body: dict[str, Any], common: dict[str, Any]) -> TextRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list")
    tools = body.get("tools")
    return TextRequest(messages=tuple(messages), tools=tuple(tools) if tools else None, **common)


def _completion(body: dict[str, Any], common: dict[str, Any]) -> TextRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return TextRequest(prompt=prompt, **common)
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return TextRequest(prompt_ids=tuple(prompt), **common)
    raise InvalidRequest("`prompt` must be a string or a list of token ids (one prompt per request)")


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """`stream_options.include_usage`: a last chunk with the token counts, as OpenAI sends it."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"include_usage"} \
            or not isinstance(options.get("include_usage", False), bool):
        raise InvalidRequest("`stream_options` must be an object whose include_usage is true or false")
    if not stream:
        raise InvalidRequest("`stream_options` is only allowed with stream true")
    return options.get("include_usage", False) is True
