"""Checks at the API edge: every request field within what the data plane can carry.

Both adapters (OpenAI HTTP, KServe gRPC) build requests through these functions, so a bad
field gets the same message, naming it, on either API. Nothing the stage protocol cannot
hold reaches a batch: seed travels as uint64 and top_k as int32, temperature and top_p as
float32, and one value that fails to serialize there would fail every request sent with it.
"""

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from helix_worker.errors import InvalidRequest
from helix_worker.protocol import GREEDY_BELOW, SamplingParams

SEED_MAX = 2**63 - 1  # the sampler mixes 63 bits of the seed (see sampling.step_generator)
TOP_K_MAX = 2**31 - 1  # int32 on the stage protocol
MAX_TOKENS_MAX = 2**31 - 1
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_JSON_DEPTH = 64
PENALTY_MAX = 2.0  # presence and frequency penalties, as OpenAI bounds them
BIAS_MAX = 100.0  # logit_bias values, as OpenAI bounds them
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBERS = {int, float, bool, type(None)}


def given(options: Mapping[str, Any], name: str, default: Any) -> Any:
    """The field's value; absent or null means the default, as OpenAI's API treats null."""
    value = options.get(name)
    return default if value is None else value


def integer(name: str, value: Any, low: int, high: int) -> int:
    """An int in [low, high]; integral floats (3.0) count, booleans do not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"`{name}` must be an integer in [{low}, {high}], not {_show(value)}")
    return value


def real(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    """A finite number in [low, high] (or (low, high]), checked as the float32 the stage gets."""
    carried = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        carried = float(np.float32(number)) if abs(number) <= FLOAT32_MAX else math.inf
    if not (math.isfinite(carried) and (low < carried if open_low else low <= carried) and carried <= high):
        raise InvalidRequest(f"`{name}` must be a number in {'(' if open_low else '['}{low:g}, {high:g}], "
                             f"not {_show(value)}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` must be true or false, not {_show(value)}")
    return value


def stop_strings(value: Any) -> tuple[str, ...]:
    """`stop`: null, a string, or a list of at most MAX_STOP_STRINGS strings."""
    stops = () if value is None else (value,) if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops) \
            or len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"`stop` must be a string or a list of at most {MAX_STOP_STRINGS} strings, "
                             f"not {_show(value)}")
    return tuple(stops)


def sampling(*, temperature: Any, top_p: Any, top_k: Any, seed: Any, logprobs: Any, presence_penalty: Any = 0.0,
             frequency_penalty: Any = 0.0, repetition_penalty: Any = 1.0, logit_bias: Any = None) -> SamplingParams:
    """SamplingParams from raw field values: top_k -1 or 0 is off (vLLM's and our convention),
    temperatures below GREEDY_BELOW are greedy."""
    heat = real("temperature", temperature, 0.0, FLOAT32_MAX)
    return SamplingParams(temperature=0.0 if heat < GREEDY_BELOW else heat,
                          top_p=real("top_p", top_p, 0.0, 1.0, open_low=True),
                          top_k=max(0, integer("top_k", top_k, -1, TOP_K_MAX)),
                          seed=None if seed is None else integer("seed", seed, 0, SEED_MAX),
                          logprobs=integer("logprobs", logprobs, 0, MAX_LOGPROBS),
                          presence_penalty=real("presence_penalty", presence_penalty, -PENALTY_MAX, PENALTY_MAX),
                          frequency_penalty=real("frequency_penalty", frequency_penalty, -PENALTY_MAX, PENALTY_MAX),
                          repetition_penalty=real("repetition_penalty", repetition_penalty, 0.0, FLOAT32_MAX,
                                                  open_low=True),
                          logit_bias=bias(logit_bias))


def bias(value: Any) -> tuple[tuple[int, float], ...]:
    """`logit_bias`: null or an object of token ids (as OpenAI sends them, strings of digits)
    to numbers in [-BIAS_MAX, BIAS_MAX]; whether the ids are in the vocabulary is the service's check."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest(f"`logit_bias` must be an object of token ids to numbers, not {_show(value)}")
    entries = {}
    for key, number in value.items():
        token = key if isinstance(key, int) else int(key) if isinstance(key, str) and key.isascii() \
            and key.isdigit() and len(key) <= 10 else None
        if token is None:
            raise InvalidRequest(f"`logit_bias` must be an object of token ids to numbers; {_show(key)} is not "
                                 "a token id")
        entries[integer("logit_bias", token, 0, TOP_K_MAX)] = real(f"logit_bias[{token}]", number,
                                                                             -BIAS_MAX, BIAS_MAX)
    return tuple(sorted(entries.items()))


def check_sampling(params: SamplingParams) -> None:
    """Raise unless `params` fits the stage protocol: the coordinator's last check before the
    wire, for requests that did not come through an API adapter."""
    real("temperature", params.temperature, 0.0, FLOAT32_MAX)
    real("top_p", params.top_p, 0.0, 1.0, open_low=True)
    integer("top_k", params.top_k, 0, TOP_K_MAX)
    if params.seed is not None:
        integer("seed", params.seed, 0, SEED_MAX)
    integer("logprobs", params.logprobs, 0, MAX_LOGPROBS)
    real("presence_penalty", params.presence_penalty, -PENALTY_MAX, PENALTY_MAX)
    real("frequency_penalty", params.frequency_penalty, -PENALTY_MAX, PENALTY_MAX)
    real("repetition_penalty", params.repetition_penalty, 0.0, FLOAT32_MAX, open_low=True)
    bias(dict(params.logit_bias))


def loads(raw: bytes | str, what: str) -> Any:
    """Parse JSON that every later step can take: UTF-8, finite numbers only (no NaN, Infinity
    or 1e999), at most MAX_JSON_DEPTH levels deep, and no lone surrogates (text that cannot
    be encoded, which the tokenizer would fail on)."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, and ours
        raise InvalidRequest(f"{what} is not JSON: {err}") from None
    _check_tree(value, what)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is out of range")
    return number


def _check_tree(value: Any, what: str) -> None:
    """Depth and string checks without recursion (a deep document must not exhaust the stack)."""
    if isinstance(value, str):
        _check_text(value, what)
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if set(map(type, children)) <= _NUMBERS:
            continue  # a list of token ids: nothing to check, and too long to step through
        for child in children:
            if isinstance(child, str):
                _check_text(child, what)
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def _check_text(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{what} holds a string with a lone surrogate (\\ud800-\\udfff), "
                                 "which is not text") from None


def _show(value: Any) -> str:
    shown = ascii(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
