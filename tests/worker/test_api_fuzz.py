"""Property-based fuzz of both APIs against the served front end (a real two-stage pipeline):
whatever a client sends, the answer is a success or a client error in the API's own format,
never a 5xx or INTERNAL/UNKNOWN, and the server still serves exact greedy tokens afterwards."""

import http.client
import json
import queue

import grpc
import numpy as np
import pytest
from dataplane_helpers import MODEL, bytes_tensor, kserve_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_proto import grpc_service_pb2 as kserve
from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.engine.reference import ReferenceModel

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
small_ints = st.integers(-3, 6)
FIELDS = {  # each field: plausible values, edge values, and anything at all
    "model": st.sampled_from([MODEL, "gpt-4"]) | json_values,
    "prompt": st.text(max_size=24) | st.lists(st.integers(-5, 400), max_size=10) | json_values,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                "content": st.text(max_size=16) | json_values}), max_size=3)
    | json_values,
    # never null: an absent max_tokens fills the context, which would make the fuzz slow
    "max_tokens": small_ints | st.sampled_from([2**31, 2**63, 1500]) | json_values.filter(lambda v: v is not None),
    "max_completion_tokens": small_ints | json_values.filter(lambda v: v is not None),
    "temperature": st.floats() | st.sampled_from([1e-40, 1e39, 3e38]) | json_values,
    "top_p": st.floats() | st.sampled_from([1e-50, 1.0]) | json_values,
    "top_k": st.integers(-3, 2**32) | json_values,
    "seed": st.integers(-2**65, 2**65) | json_values,
    "n": small_ints | json_values,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20) | json_values,
    "logprobs": small_ints | st.sampled_from([20, 21]) | json_values,
    "top_logprobs": small_ints | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
    "ignore_eos": st.booleans() | json_values,
    "echo": st.booleans() | json_values,
    "presence_penalty": st.floats() | json_values,
    "frequency_penalty": st.floats() | json_values,
    "repetition_penalty": st.floats() | json_values,
    "logit_bias": st.dictionaries(st.text("0123456789", max_size=7), st.floats(-150, 150), max_size=3) | json_values,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | json_values,
}
short = st.integers(1, 6)  # valid max_tokens stay small, so the fuzz stays quick
VALID = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.05, 1), "top_k": st.integers(-1, 40),
    "seed": st.integers(0, 2**63 - 1), "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
    "logprobs": st.integers(0, 5), "stream": st.booleans(), "ignore_eos": st.booleans(), "model": st.just(MODEL),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2),
    "logit_bias": st.dictionaries(st.integers(0, 370).map(str), st.floats(-100, 100), max_size=3),
    "n": st.integers(1, 2),
}
completions = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=24) | st.lists(st.integers(0, 370), min_size=1, max_size=10),
     "max_tokens": short}, optional=VALID)
chats = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                 "content": st.text(max_size=16)}), min_size=1, max_size=2),
     "max_tokens": short}, optional=VALID | {"logprobs": st.booleans(), "top_logprobs": st.integers(0, 5)})
wild = st.sampled_from(sorted(FIELDS)).flatmap(lambda name: FIELDS[name].map(lambda value: {name: value}))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid body with up to two fields replaced by anything, or a body that is wrong throughout."""
    path, valid = draw(st.sampled_from([("/v1/completions", completions), ("/v1/chat/completions", chats)]))
    body = draw(valid)
    for field in draw(st.lists(wild, max_size=2)):
        body |= field
    raw = json.dumps(body, allow_nan=True).encode()  # NaN and Infinity as Python writes them
    return path, draw(st.just(raw) | st.just(raw) | st.one_of(
        st.fixed_dictionaries({}, optional=FIELDS).map(
            lambda other: json.dumps({"max_tokens": 2} | other, allow_nan=True).encode()),
        json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
        st.binary(max_size=40),
        st.integers(60, 3000).map(lambda depth: b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"),
        st.sampled_from([b'{"prompt": "\\ud800"}', b'{"prompt": "x", "stop": ["\\udfff"]}', b'{"\\ud83d": 1}',
                         b'{"prompt": "x", "max_tokens": 1e999}', b'{"prompt": "x"'])))


def _http(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes, str]:
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("Content-Type", "")


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ReferenceModel(checkpoint)


def _still_exact(served, reference: ReferenceModel) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        response = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(kserve_request({
            "input_ids": ("INT64", [3], np.asarray([3, 1, 4], np.int64).tobytes()),
            "max_tokens": ("INT32", [1], np.int32(8).tobytes()), "ignore_eos": ("BOOL", [1], b"\x01")}), timeout=60)
    ids = np.frombuffer(response.raw_output_contents[[o.name for o in response.outputs].index("output_ids")], np.int64)
    assert ids.tolist() == reference.greedy([3, 1, 4], 8).tokens


def test_openai_api_answers_every_body_without_a_server_error(served, reference) -> None:
    host, port = served.http_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)

    @FUZZ
    @given(request=requests())
    def answers(request: tuple[str, bytes]) -> None:
        status, payload, kind = _http(connection, *request)
        assert status < 500, (status, payload[:300])
        if kind.startswith("text/event-stream"):
            assert status == 200 and payload.rstrip().endswith(b"data: [DONE]"), payload[-300:]
        else:
            answer = json.loads(payload)
            assert ("error" in answer) == (status >= 400), answer

    try:
        answers()
    finally:
        connection.close()
    _still_exact(served, reference)


DATATYPES = ["BYTES", "BOOL", "INT32", "INT64", "UINT64", "FP32", "FP64", "INT8", "FP16", "NOPE"]
_NUMPY = {"BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64, "FP32": np.float32,
          "FP64": np.float64, "INT8": np.int8}


# Small integers or extremes: a valid max_tokens stays small, so the fuzz stays quick.
numbers = st.integers(-3, 8) | st.sampled_from([2**31, 2**63 - 1, 2**64 - 1, -2**63]) | st.floats(width=32)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, tuple[str, list[int], bytes]]:
    """One input: a known or unknown name, any datatype, a shape that may not match, and raw
    contents that are well-formed for the datatype, or arbitrary bytes."""
    name = draw(st.sampled_from(["text_input", "input_ids", "max_tokens", "temperature", "top_p", "top_k", "seed",
                                 "logprobs", "stop", "ignore_eos", "sampling_parameters", "stream", "bogus"]))
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(-2, 4), min_size=0, max_size=2))
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=12) | json_values.map(lambda v: json.dumps(v).encode())
                              | st.sampled_from([b"hi", b'{"temperature": "0.5"}', b"\xed\xa0\x80"]), max_size=3))
        raw = bytes_tensor(*items)
    elif datatype in _NUMPY:
        count = draw(st.integers(0, 3))
        values = draw(st.lists(numbers, min_size=count, max_size=count))
        raw = b"".join(_pack(datatype, v) for v in values)
    else:
        raw = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        raw = draw(st.binary(max_size=16))
    return name, (datatype, shape, raw)


def _pack(datatype: str, value: float | int) -> bytes:
    kind = np.dtype(_NUMPY[datatype])
    if kind.kind in "iub":
        info = np.iinfo(kind) if kind.kind != "b" else None
        value = int(value) if value == value and abs(value) != float("inf") else 0
        value = bool(value) if info is None else min(max(value, info.min), info.max)
    return np.array([value], dtype=kind).tobytes()


parameters = st.dictionaries(st.sampled_from(["temperature", "seed", "top_k", "max_tokens", "stop", "ignore_eos",
                                              "triton_enable_empty_final_response", "other"]),
                             st.booleans() | st.integers(-3, 8) | st.sampled_from([-2**63, 2**63 - 1])
                             | st.floats() | st.text(max_size=8),
                             max_size=3)


def _scalar(datatype: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda v: (datatype, [1], np.array([v], dtype=_NUMPY[datatype]).tobytes()))


KSERVE_VALID = {
    "temperature": _scalar("FP32", st.floats(0, 2)), "top_p": _scalar("FP32", st.floats(0.05, 1)),
    "top_k": _scalar("INT32", st.integers(-1, 40)), "seed": _scalar("UINT64", st.integers(0, 2**63 - 1)),
    "logprobs": _scalar("INT32", st.integers(0, 5)), "ignore_eos": _scalar("BOOL", st.booleans()),
    "stop": st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=2).map(
        lambda stops: ("BYTES", [len(stops)], bytes_tensor(*(x.encode() for x in stops)))),
}


@st.composite
def kserve_requests(draw: st.DrawFn) -> kserve.ModelInferRequest:
    """A valid request with up to two inputs replaced or added by anything, and maybe odd parameters."""
    prompt = draw(st.text(min_size=1, max_size=16).map(
                      lambda t: ("text_input", ("BYTES", [1], bytes_tensor(t.encode()))))
                  | st.lists(st.integers(0, 370), min_size=1, max_size=8).map(
                      lambda ids: ("input_ids", ("INT64", [len(ids)], np.asarray(ids, np.int64).tobytes()))))
    inputs = dict([prompt]) | {"max_tokens": draw(_scalar("INT32", short))}
    inputs |= draw(st.fixed_dictionaries({}, optional=KSERVE_VALID))
    inputs |= dict(draw(st.lists(tensors(), max_size=2)))
    model = draw(st.sampled_from([MODEL, MODEL, MODEL, "other"]))
    return kserve_request(inputs, model, **draw(st.just({}) | parameters))


def test_kserve_api_answers_every_request_without_a_server_error(served, reference) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        @FUZZ
        @given(request=kserve_requests() | kserve_requests() | st.binary(min_size=1, max_size=30))
        def answers(request: kserve.ModelInferRequest | bytes) -> None:
            try:
                if isinstance(request, bytes):
                    raw_call(request, timeout=60)  # bytes that may not even be a protobuf message
                else:
                    stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), \
                    (err.code(), err.details())

        answers()
    _still_exact(served, reference)


def test_kserve_stream_refuses_bad_requests_per_request_and_undecodable_ones_at_the_end(served) -> None:
    good = kserve_request({"text_input": ("BYTES", [1], bytes_tensor(b"hi")),
                           "max_tokens": ("INT32", [1], np.int32(3).tobytes())})
    bad = kserve_request({"text_input": ("BYTES", [1], bytes_tensor(b"hi")),
                          "seed": ("UINT64", [1], np.uint64(2**64 - 1).tobytes())})
    bad.id, good.id = "bad", "good"
    with grpc.insecure_channel(served.grpc_address) as channel:
        stream = kserve_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([bad, good]), timeout=60)
        responses = list(stream)
        errors = {r.infer_response.id: r.error_message for r in responses if r.error_message}
        assert list(errors) == ["bad"] and "`seed` must be" in errors["bad"]
        assert sum(r.infer_response.id == "good" for r in responses) == 3
        requests: queue.Queue = queue.Queue()
        raw = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter(requests.get, None),
                                                                                        timeout=60)
        requests.put(good.SerializeToString())
        requests.put(b"\xff\xff\xff")
        requests.put(None)
        answered = []
        with pytest.raises(grpc.RpcError) as refused:
            for message in raw:
                answered.append(kserve.ModelStreamInferResponse.FromString(message))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert len(answered) == 3 and not any(r.error_message for r in answered)  # the good request, answered first


def test_oversized_kserve_message_is_refused_before_it_is_read(served) -> None:
    huge = kserve_request({"text_input": ("BYTES", [1], bytes_tensor(b"x" * (5 << 20)))})
    with grpc.insecure_channel(served.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(huge, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@st.composite
def rest_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A KServe request as a REST infer body with binary tensors (as tritonclient.http sends
    them), a generate body with fields replaced by anything, or JSON of any shape."""
    request = draw(kserve_requests())
    model = f"/v2/models/{request.model_name}"
    header = {"id": request.id, "inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": {"binary_data_size": len(raw)}}
        for t, raw in zip(request.inputs, request.raw_input_contents)]}
    header |= {"parameters": {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in request.parameters.items()}}
    text = json.dumps(header, allow_nan=True).encode()
    generate = draw(st.fixed_dictionaries({"text_input": st.text(min_size=1, max_size=12) | json_values}, optional={
        "max_tokens": short | json_values.filter(lambda v: v is not None), "temperature": st.floats() | json_values,
        "parameters": json_values, "stream": json_values, "bogus": json_values}))
    generate.setdefault("max_tokens", 3)
    return draw(st.sampled_from([
        (model + "/infer", text + b"".join(request.raw_input_contents),
         {"Inference-Header-Content-Length": str(len(text))}),
        (model + "/infer", json.dumps(draw(json_values)).encode(), {}),
        (f"/v2/models/{MODEL}/generate", json.dumps(generate, allow_nan=True).encode(), {}),
        (f"/v2/models/{MODEL}/generate_stream", json.dumps(generate, allow_nan=True).encode(), {}),
    ]))


def test_kserve_rest_answers_every_body_without_a_server_error(served, reference) -> None:
    host, port = served.http_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)

    @FUZZ
    @given(request=rest_requests())
    def answers(request: tuple[str, bytes, dict[str, str]]) -> None:
        path, body, headers = request
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"} | headers)
        response = connection.getresponse()
        status, payload = response.status, response.read()
        assert status < 500, (status, payload[:300])
        kind = response.getheader("Content-Type", "")
        if kind.startswith("text/event-stream"):
            assert status == 200
        elif kind.startswith("application/json"):
            assert ("error" in json.loads(payload)) == (status >= 400), payload[:300]

    try:
        answers()
    finally:
        connection.close()
    _still_exact(served, reference)
