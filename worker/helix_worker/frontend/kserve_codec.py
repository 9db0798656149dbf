"""KServe v2 tensors <-> `TextRequest`s / outputs, following Triton's LLM conventions.

Inputs (all optional but one of `text_input` / `input_ids`): text_input BYTES (one prompt per
element: a batch), input_ids INT32/INT64, max_tokens, temperature, top_p, top_k, seed,
logprobs, presence_penalty, frequency_penalty, repetition_penalty, stop BYTES, ignore_eos BOOL,
stream BOOL, exclude_input_in_output BOOL, and sampling_parameters (BYTES JSON, as Triton's
vLLM backend takes). The same fields may come as request parameters. Outputs: text_output
BYTES, output_ids INT64, finish_reason BYTES, logprobs FP32; for a batch of k prompts,
text_output and finish_reason hold k elements and output_ids / logprobs are [k, longest],
padded with -1 / 0 after each answer's end.
"""

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from helix_proto import grpc_service_pb2 as kserve
from helix_worker.errors import InvalidRequest
from helix_worker.frontend import validation as check
from helix_worker.frontend.service import TextRequest

INPUTS = {
    "text_input": ("BYTES", [-1]), "input_ids": ("INT64", [-1]), "max_tokens": ("INT32", [1]),
    "temperature": ("FP32", [1]), "top_p": ("FP32", [1]), "top_k": ("INT32", [1]), "seed": ("UINT64", [1]),
    "logprobs": ("INT32", [1]), "presence_penalty": ("FP32", [1]), "frequency_penalty": ("FP32", [1]),
    "repetition_penalty": ("FP32", [1]), "stop": ("BYTES", [-1]), "ignore_eos": ("BOOL", [1]),
    "stream": ("BOOL", [1]), "exclude_input_in_output": ("BOOL", [1]), "sampling_parameters": ("BYTES", [1]),
}
OUTPUTS = {"text_output": ("BYTES", [-1]), "output_ids": ("INT64", [-1]), "finish_reason": ("BYTES", [1]),
           "logprobs": ("FP32", [-1])}
_NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "FP32": np.float32, "FP64": np.float64}
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "logprobs", "stop", "ignore_eos",
                  "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "stream",
                  "exclude_input_in_output")
_TYPE_NAMES = {"BYTES": "TYPE_STRING", **{name: f"TYPE_{name}" for name in _NUMPY}}


@dataclass(frozen=True)
class KServeRequest:
    """One infer request: a TextRequest per prompt and how to answer it."""

    prompts: tuple[TextRequest, ...]
    stream: bool  # one response per token (on a stream); else one with the whole answer
    empty_final: bool  # Triton's triton_enable_empty_final_response: a last response without outputs
    echo: bool  # exclude_input_in_output false: text_output starts with the prompt text


def model_config(name: str) -> dict[str, Any]:
    """The model's configuration as Triton's REST API writes it (ModelConfig's JSON form): no
    batch dimension, decoupled since a stream answers one request with a response per token."""
    return {"name": name, "platform": "helix", "backend": "helix", "max_batch_size": 0,
            "input": [{"name": n, "data_type": _TYPE_NAMES[d], "dims": s, "optional": True}
                      for n, (d, s) in INPUTS.items()],
            "output": [{"name": n, "data_type": _TYPE_NAMES[d], "dims": s} for n, (d, s) in OUTPUTS.items()],
            "model_transaction_policy": {"decoupled": True}}


def decode_inputs(request: kserve.ModelInferRequest) -> dict[str, list[Any]]:
    """Every input tensor as a flat Python list; malformed tensors are one clear error."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest(f"{len(request.inputs)} inputs but {len(request.raw_input_contents)} raw contents")
    values = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in INPUTS:
            raise InvalidRequest(f"unknown input {tensor.name!r}; this model takes {', '.join(INPUTS)}")
        if tensor.datatype not in CONTENTS:
            raise InvalidRequest(f"input {tensor.name!r} has unsupported datatype {tensor.datatype!r}")
        count = int(np.prod(tensor.shape)) if tensor.shape else 1
        if request.raw_input_contents:
            items = from_raw(tensor.name, tensor.datatype, request.raw_input_contents[i])
        else:
            items = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
        if len(items) != count:
            raise InvalidRequest(f"input {tensor.name!r} has shape {list(tensor.shape)} but {len(items)} elements")
        values[tensor.name] = items
    return values


def from_raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype != "BYTES":
        width = np.dtype(_NUMPY[datatype]).itemsize
        if len(raw) % width:
            raise InvalidRequest(f"input {name!r}: {len(raw)} raw bytes is not a whole number of {datatype}")
        values: list[Any] = np.frombuffer(raw, dtype=_NUMPY[datatype]).tolist()
        return values
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"input {name!r}: BYTES element runs past the end of the tensor")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def _parameter(value: kserve.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def text_requests(request: kserve.ModelInferRequest, *, streaming: bool) -> KServeRequest:
    """The request as one `TextRequest` per prompt. Fields come from sampling_parameters (JSON),
    then request parameters, then input tensors, the later overriding the earlier;
    `validation` checks each as the OpenAI API does. `streaming`: it came on a stream, where
    `stream` defaults to true."""
    inputs = decode_inputs(request)
    options: dict[str, Any] = {}
    if "sampling_parameters" in inputs:
        parsed = check.loads(_text(_one("sampling_parameters", inputs["sampling_parameters"])), "sampling_parameters")
        if not isinstance(parsed, dict):
            raise InvalidRequest("sampling_parameters must be a JSON object")
        if unknown := sorted(set(parsed) - set(_SAMPLING_KEYS)):
            raise InvalidRequest(f"unknown sampling parameter {unknown[0]!r}; this model takes "
                                 f"{', '.join(_SAMPLING_KEYS)}")
        options |= parsed
    params = {k: _parameter(v) for k, v in request.parameters.items()}
    options |= {k: v for k, v in params.items() if k in _SAMPLING_KEYS}
    options |= {k: (v if k == "stop" else _one(k, v)) for k, v in inputs.items() if k in _SAMPLING_KEYS}

    def field(name: str, default: Any) -> Any:
        return _scalar(check.given(options, name, default))

    sampling = check.sampling(temperature=field("temperature", 0.0), top_p=field("top_p", 1.0),
                              top_k=field("top_k", 0), seed=field("seed", None), logprobs=field("logprobs", 0),
                              presence_penalty=field("presence_penalty", 0.0),
                              frequency_penalty=field("frequency_penalty", 0.0),
                              repetition_penalty=field("repetition_penalty", 1.0), logit_bias=options.get("logit_bias"))
    common: dict[str, Any] = {
        "max_tokens": check.integer("max_tokens", field("max_tokens", 16), 1, check.MAX_TOKENS_MAX),
        "sampling": sampling, "stop": check.stop_strings(_stops(options.get("stop"))),
        "ignore_eos": check.flag("ignore_eos", field("ignore_eos", False))}
    if "text_input" in inputs and "input_ids" in inputs:
        raise InvalidRequest("give `text_input` or `input_ids`, not both")
    if "text_input" in inputs:
        if not inputs["text_input"]:
            raise InvalidRequest("input 'text_input' must hold at least one prompt")
        prompts = tuple(TextRequest(prompt=_text(item), **common) for item in inputs["text_input"])
    elif "input_ids" in inputs:
        prompts = (TextRequest(prompt_ids=_token_ids(inputs["input_ids"]), **common),)
    else:
        raise InvalidRequest("give `text_input` (BYTES) or `input_ids` (INT64)")
    stream = check.flag("stream", field("stream", streaming))
    if stream and not streaming:
        raise InvalidRequest("`stream` true needs a stream: ModelStreamInfer (gRPC) or generate_stream (REST)")
    if stream and len(prompts) > 1:
        raise InvalidRequest(f"a streamed request takes one prompt, not {len(prompts)}: send one request per prompt")
    return KServeRequest(prompts, stream, bool(params.get("triton_enable_empty_final_response", False)),
                         not check.flag("exclude_input_in_output", field("exclude_input_in_output", True)))


def _one(name: str, items: list[Any]) -> Any:
    if len(items) != 1:
        raise InvalidRequest(f"input {name!r} must hold one element, not {len(items)}")
    return items[0]


def _scalar(value: Any) -> Any:
    """Numbers and booleans may come as text, as Triton's vLLM backend takes them in
    sampling_parameters ("0.7", "true"); other text is left for the checks to refuse."""
    if isinstance(value, bytes):
        value = _text(value)
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    for parse in (int, float):
        try:
            return parse(word)
        except ValueError:
            pass
    return value


def _stops(value: Any) -> Any:
    """`stop` with its BYTES elements decoded; its shape is for `check.stop_strings` to judge."""
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, list):
        return [_text(s) if isinstance(s, bytes) else s for s in value]
    return value


def _token_ids(items: list[Any]) -> tuple[int, ...]:
    if not all(type(t) is int for t in items):
        raise InvalidRequest("input_ids must be integers (INT32 or INT64)")
    return tuple(items)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        raise InvalidRequest(f"text inputs must be BYTES, not {type(value).__name__}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("text inputs must be UTF-8") from None


def requested_outputs(request: kserve.ModelInferRequest) -> list[str]:
    names = [o.name for o in request.outputs] or list(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidRequest(f"unknown output {unknown[0]!r}; this model returns {', '.join(OUTPUTS)}")
    return names


@dataclass(frozen=True)
class Answer:
    """What one prompt's response carries: the whole completion, or one streamed piece."""

    text: str
    token_ids: tuple[int, ...]
    finish: str | None
    logprobs: tuple[float, ...]


def response(request: kserve.ModelInferRequest, model: str, names: list[str], answers: list[Answer],
             final: bool | None = None) -> kserve.ModelInferResponse:
    """A response with the wanted outputs (as raw contents); `final` sets triton_final_response."""
    batch = len(answers) > 1
    longest = max(len(a.token_ids) for a in answers)
    ids = np.full((len(answers), longest), -1, dtype=np.int64)
    logprobs = np.zeros((len(answers), longest), dtype=np.float32)
    for row, answer in enumerate(answers):
        ids[row, :len(answer.token_ids)] = answer.token_ids
        logprobs[row, :len(answer.logprobs)] = answer.logprobs
    shape = list(ids.shape) if batch else [longest]
    values = {"text_output": ("BYTES", [len(answers)], _bytes_tensor([a.text.encode() for a in answers])),
              "output_ids": ("INT64", shape, ids.tobytes()),
              "finish_reason": ("BYTES", [len(answers)], _bytes_tensor([(a.finish or "").encode() for a in answers])),
              "logprobs": ("FP32", shape, logprobs.tobytes())}
    out = kserve.ModelInferResponse(model_name=model, model_version="1", id=request.id)
    for name in names:
        datatype, shape, raw = values[name]
        out.outputs.add(name=name, datatype=datatype, shape=shape)
        out.raw_output_contents.append(raw)
    if final is not None:
        out.parameters["triton_final_response"].bool_param = final
    return out


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)
