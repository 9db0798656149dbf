"""KServe v2 REST bodies <-> the `ModelInferRequest` / `ModelInferResponse` the data plane takes.

Infer bodies are JSON tensors, optionally with Triton's binary tensor extension (what
tritonclient.http sends by default): the JSON header is `Inference-Header-Content-Length`
bytes long and each input with a `binary_data_size` parameter takes that many raw bytes
after it; outputs asked with `binary_data` (or the request's `binary_data_output`) come back
the same way. Generate bodies (Triton's generate extension) name inputs as top-level keys.
"""

import json
from typing import Any

from helix_proto import grpc_service_pb2 as kserve
from helix_worker.errors import InvalidRequest
from helix_worker.frontend import validation as check
from helix_worker.frontend.kserve_codec import CONTENTS, from_raw

HEADER_LENGTH = "Inference-Header-Content-Length"
_PARAMETER_SLOTS = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}


def infer_request(name: str, version: str, body: bytes, header_length: str | None) -> tuple[kserve.ModelInferRequest,
                                                                                             set[str] | None]:
    """The request, and the outputs to send as binary (None: all of them)."""
    split = _header_length(header_length, len(body))
    doc = check.loads(body[:split], "the request")
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if not isinstance(doc.get("inputs"), list):
        raise InvalidRequest("`inputs` must be a list of tensors")
    request = kserve.ModelInferRequest(model_name=name, model_version=version, id=_id(doc.get("id")))
    parameters = _parameters(request.parameters, doc.get("parameters"))
    binary, offset = body[split:], 0
    for tensor in doc["inputs"]:
        offset = _add_input(request, tensor, binary, offset)
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes after the last binary input")
    wanted: set[str] = set()
    for output in doc.get("outputs") or []:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidRequest("each of `outputs` must be an object with a `name`")
        request.outputs.add(name=output["name"])
        if _parameters(request.outputs[-1].parameters, output.get("parameters")).get("binary_data"):
            wanted.add(output["name"])
    return request, None if parameters.get("binary_data_output") else wanted


def generate_request(name: str, version: str, body: bytes) -> kserve.ModelInferRequest:
    """Triton's generate body: `{"text_input": "...", "max_tokens": 8, "parameters": {...}}`."""
    doc = check.loads(body, "the request")
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object")
    request = kserve.ModelInferRequest(model_name=name, model_version=version, id=_id(doc.get("id")))
    _parameters(request.parameters, doc.get("parameters"))
    for key, value in doc.items():
        if key in ("id", "parameters"):
            continue
        items = value if isinstance(value, list) else [value]
        kinds = {type(item) for item in items}
        datatype = {frozenset({str}): "BYTES", frozenset({bool}): "BOOL", frozenset({int}): "INT64",
                    frozenset({float}): "FP64", frozenset({int, float}): "FP64"}.get(frozenset(kinds))
        if datatype is None:
            raise InvalidRequest(f"`{key}` must be a string, boolean, number or a list of one of them")
        _add_input(request, {"name": key, "datatype": datatype, "shape": [len(items)], "data": items}, b"", 0)
    return request


def infer_response(response: kserve.ModelInferResponse, binary: set[str] | None) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs in `binary` (None: all) as raw bytes after the JSON."""
    outputs, tail = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary is None or tensor.name in binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_items(tensor.datatype, from_raw(tensor.name, tensor.datatype, raw))
        outputs.append(entry)
    header = json.dumps({"model_name": response.model_name, "model_version": response.model_version, "id": response.id,
                    "parameters": _parameters_json(response.parameters), "outputs": outputs}).encode()
    if not tail:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(tail), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def generate_response(response: kserve.ModelInferResponse) -> dict[str, Any]:
    """Triton's generate answer: each output by name, one element as a scalar, more as a list."""
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        answer["id"] = response.id
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        items = _json_items(tensor.datatype, from_raw(tensor.name, tensor.datatype, raw))
        answer[tensor.name] = items[0] if len(items) == 1 and list(tensor.shape) == [1] else items
    return answer


def _parameters_json(parameters: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice")}


def _header_length(value: str | None, size: int) -> int:
    if value is None:
        return size
    if not value.isdigit() or int(value) > size:
        raise InvalidRequest(f"{HEADER_LENGTH} must be a byte count within the body's {size} bytes")
    return int(value)


def _id(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest("`id` must be a string")
    return value or ""


def _parameters(target: Any, value: Any) -> dict[str, Any]:
    """Copy a JSON `parameters` object into a protobuf parameter map; returns it."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("`parameters` must be an object")
    for key, item in value.items():
        slot = _PARAMETER_SLOTS.get(type(item))
        if slot is None or (slot == "int64_param" and not -2**63 <= item < 2**63):
            raise InvalidRequest(f"parameter {key!r} must be a boolean, a number (integers within int64) or a string")
        setattr(target[key], slot, item)
    return value


def _add_input(request: kserve.ModelInferRequest, tensor: Any, binary: bytes, offset: int) -> int:
    """Add one JSON tensor (data inline, or `binary_data_size` bytes of `binary` from `offset`)."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InvalidRequest("each of `inputs` must be an object with a `name`")
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if datatype not in CONTENTS:
        raise InvalidRequest(f"input {name!r} has unsupported datatype {datatype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
        raise InvalidRequest(f"input {name!r} needs a `shape`: a list of non-negative integers")
    added = request.inputs.add(name=name, datatype=datatype, shape=shape)
    size = _parameters(added.parameters, tensor.get("parameters")).get("binary_data_size")
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(binary) - offset:
            raise InvalidRequest(f"input {name!r}: binary_data_size {size!r} runs past the body's end")
        items, offset = from_raw(name, datatype, binary[offset:offset + size]), offset + size
    elif "data" in tensor:
        items = _flat(tensor["data"])
    else:
        raise InvalidRequest(f"input {name!r} has neither `data` nor a binary_data_size parameter")
    if datatype == "BYTES":
        if not all(isinstance(item, (str, bytes)) for item in items):
            raise InvalidRequest(f"input {name!r} is BYTES: its elements must be strings")
        items = [item.encode() if isinstance(item, str) else item for item in items]
    try:
        getattr(added.contents, CONTENTS[datatype]).extend(items)
    except (TypeError, ValueError) as err:
        raise InvalidRequest(f"input {name!r}: the data is not {datatype}: {err}") from None
    return offset


def _flat(data: Any) -> list[Any]:
    """Row-major elements of a JSON tensor, nested or flat, without recursion."""
    out, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _json_items(datatype: str, items: list[Any]) -> list[Any]:
    return [item.decode("utf-8", "replace") for item in items] if datatype == "BYTES" else items
