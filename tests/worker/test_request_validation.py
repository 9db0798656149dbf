"""The edge checks both APIs share: JSON that later steps can take, sampling fields within what
the stage protocol carries, and one clear message naming the bad field on either API."""

import re

import numpy as np
import pytest
from dataplane_helpers import bytes_tensor, kserve_request

from helix_proto import grpc_service_pb2 as kserve
from helix_worker.errors import InvalidRequest
from helix_worker.frontend import validation
from helix_worker.frontend.kserve_codec import text_requests
from helix_worker.frontend.openai_request import parse_body


@pytest.mark.parametrize("raw, words", [
    (b'{"temperature": NaN}', "NaN is not a JSON number"),
    (b'{"temperature": Infinity}', "Infinity is not a JSON number"),
    (b'{"temperature": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"temperature": 1e999}', "out of range"),
    (b'{"prompt": "' + b"\\ud800" + b'"}', "lone surrogate"),
    (b'{"' + b"\\udfff" + b'": 1}', "lone surrogate"),
    (b"[" * 65 + b"]" * 65, "deeper than 64"),
    (b"[" * 100_000 + b"]" * 100_000, "deeper than 64"),
    (b'{"prompt": "\xff"}', "not JSON"),
    (b'{"seed": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"{nope", "not JSON"),
])
def test_json_the_later_steps_cannot_take_is_refused(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        validation.loads(raw, "the body")


def test_ordinary_json_passes() -> None:
    nested = b"[" * 64 + b"]" * 64
    assert validation.loads(nested, "the body") is not None
    assert validation.loads('{"prompt": "h\u00e9llo \U0001f600", "top_p": 0.5}'.encode(), "the body") == \
        {"prompt": "h\u00e9llo \U0001f600", "top_p": 0.5}


SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None, "logprobs": 0}


@pytest.mark.parametrize("field, value", [
    ("seed", -1), ("seed", 2**63), ("seed", 2**64), ("seed", 1.5), ("seed", "7"), ("seed", True),
    ("top_k", 2**31), ("top_k", -2), ("top_k", 2.5),
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -0.5), ("temperature", 1e39),
    ("temperature", 10**400), ("temperature", "hot"), ("temperature", [1.0]),
    ("top_p", 0), ("top_p", 1e-50), ("top_p", 1.5), ("top_p", float("nan")),
    ("logprobs", 21), ("logprobs", -1),
])
def test_sampling_fields_outside_the_wire_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=f"`{field}` must be"):
        validation.sampling(**SAMPLING | {field: value})


def test_sampling_edges_that_fit() -> None:
    tiny = validation.sampling(**SAMPLING | {"temperature": 1e-40})
    assert tiny.temperature == 0.0 and tiny.greedy  # 1e-40 would overflow the logits: greedy instead
    extreme = validation.sampling(temperature=3e38, top_p=1e-30, top_k=2**31 - 1, seed=2**63 - 1, logprobs=20)
    assert (extreme.top_k, extreme.seed) == (2**31 - 1, 2**63 - 1)
    assert validation.sampling(**SAMPLING | {"top_k": -1, "seed": 3.0}).top_k == 0
    assert validation.sampling(**SAMPLING | {"seed": 3.0}).seed == 3


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "n": "2"}, "n"), ({"prompt": "x", "n": [1]}, "n"), ({"prompt": "x", "n": 1e300}, "n"),
    ({"prompt": "x", "stop": 5}, "stop"), ({"prompt": "x", "stop": ["a", 1]}, "stop"),
    ({"prompt": "x", "stop": ["s"] * 17}, "stop"), ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"), ({"prompt": "x", "max_tokens": 2**63}, "max_tokens"),
    ({"prompt": "x", "stream": "yes"}, "stream"), ({"prompt": "x", "ignore_eos": 1}, "ignore_eos"),
    ({"prompt": "x", "echo": "no"}, "echo"), ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "seed": -1}, "seed"), ({"prompt": "x", "top_k": 2**31}, "top_k"),
    ({"prompt": "x", "presence_penalty": -2.5}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": "1"}, "frequency_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "logit_bias": [1]}, "logit_bias"), ({"prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"9" * 400: 1}}, "logit_bias"), ({"prompt": "x", "logit_bias": {"5": 101}},
                                                                      "logit_bias[5]"),
    ({"prompt": "x", "best_of": 0}, "best_of"), ({"prompt": "x", "user": 5}, "user"),
])
def test_openai_fields_of_the_wrong_type_or_range_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(f"`{field}` must be")):
        parse_body(body, chat=False)


def test_openai_chat_logprob_fields() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert parse_body({"messages": messages, "logprobs": True}, chat=True).text.sampling.logprobs == 1
    assert parse_body({"messages": messages, "top_logprobs": 5, "seed": None}, chat=True).text.sampling.logprobs == 5
    with pytest.raises(InvalidRequest, match="`top_logprobs` must be"):
        parse_body({"messages": messages, "top_logprobs": -1}, chat=True)
    with pytest.raises(InvalidRequest, match="`logprobs` must be"):
        parse_body({"messages": messages, "logprobs": 3}, chat=True)


TEXT = {"text_input": ("BYTES", [1], bytes_tensor(b"hello"))}


@pytest.mark.parametrize("request_, words", [
    (kserve_request({"text_input": ("BYTES", [0], b"")}), "at least one prompt"),
    (kserve_request({"text_input": ("INT32", [1], np.int32(5).tobytes())}), "must be BYTES"),
    (kserve_request({"text_input": ("BYTES", [1], bytes_tensor(b"\xed\xa0\x80"))}), "UTF-8"),
    (kserve_request({"input_ids": ("FP32", [2], np.float32([1.5, 2]).tobytes())}), "input_ids must be integers"),
    (kserve_request(TEXT | {"seed": ("UINT64", [1], np.uint64(2**64 - 1).tobytes())}), "`seed` must be"),
    (kserve_request(TEXT | {"temperature": ("FP32", [1], np.float32("nan").tobytes())}), "`temperature` must be"),
    (kserve_request(TEXT | {"top_k": ("INT64", [1], np.int64(2**31).tobytes())}), "`top_k` must be"),
    (kserve_request(TEXT | {"max_tokens": ("INT32", [2], np.int32([1, 2]).tobytes())}), "must hold one element"),
    (kserve_request(TEXT | {"sampling_parameters": ("BYTES", [1], bytes_tensor(b"[1, 2]"))}), "must be a JSON object"),
    (kserve_request(TEXT | {"sampling_parameters": ("BYTES", [1], bytes_tensor(b'{"temperature": NaN}'))}), "not JSON"),
    (kserve_request(TEXT | {"sampling_parameters": ("BYTES", [1], bytes_tensor(b'{"stop": 7}'))}), "`stop` must be"),
    (kserve_request(TEXT, temperature="nan"), "`temperature` must be"),
    (kserve_request(TEXT, seed=-1), "`seed` must be"),
    (kserve_request(TEXT, ignore_eos="maybe"), "`ignore_eos` must be"),
    (kserve_request(TEXT, exclude_input_in_output=3), "`exclude_input_in_output` must be"),
    (kserve_request(TEXT, stream=True), "needs a stream"),
    (kserve_request(TEXT | {"input_ids": ("INT64", [1], np.int64(5).tobytes())}), "not both"),
    (kserve_request(TEXT | {"sampling_parameters": ("BYTES", [1], bytes_tensor(b'{"best_of": 2}'))}),
     "unknown sampling parameter 'best_of'"),
    (kserve_request(TEXT | {"presence_penalty": ("FP32", [1], np.float32(3).tobytes())}), "`presence_penalty` must be"),
])
def test_malformed_kserve_requests_are_invalid_arguments(request_: kserve.ModelInferRequest, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        text_requests(request_, streaming=False)


def test_kserve_takes_sampling_values_as_text_as_tritons_vllm_backend_does() -> None:
    options = bytes_tensor(b'{"temperature": "0.5", "top_k": "3", "seed": "11", "ignore_eos": "true", "stop": ["a"]}')
    (text,) = text_requests(kserve_request(TEXT | {"sampling_parameters": ("BYTES", [1], options)}),
                            streaming=False).prompts
    assert (text.sampling.temperature, text.sampling.top_k, text.sampling.seed) == (0.5, 3, 11)
    assert text.ignore_eos and text.stop == ("a",)


def test_kserve_batches_stream_and_exclude_input_in_output() -> None:
    batch = text_requests(kserve_request({"text_input": ("BYTES", [2, 1], bytes_tensor(b"a", b"b"))},
                                         exclude_input_in_output=False), streaming=False)
    assert [p.prompt for p in batch.prompts] == ["a", "b"] and batch.echo and not batch.stream
    assert text_requests(kserve_request(TEXT), streaming=True).stream
    assert not text_requests(kserve_request(TEXT, stream=False), streaming=True).stream
    with pytest.raises(InvalidRequest, match="takes one prompt, not 2"):
        text_requests(kserve_request({"text_input": ("BYTES", [2], bytes_tensor(b"a", b"b"))}), streaming=True)
