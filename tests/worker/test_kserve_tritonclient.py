"""The real tritonclient.grpc client against the front end: unary, streaming, batched prompts,
ModelConfig and statistics, bad requests."""

import queue
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from dataplane_helpers import MODEL
from tritonclient.utils import InferenceServerException

from helix_worker.engine.reference import ReferenceModel
from helix_worker.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def client(served):
    with grpcclient.InferenceServerClient(url=served.grpc_address) as triton:
        yield triton


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ReferenceModel(checkpoint)


def _inputs(text: str, max_tokens: int, **extra) -> list[grpcclient.InferInput]:
    tensors = []
    text_input = grpcclient.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    tensors.append(text_input)
    values = {"max_tokens": (np.int32, max_tokens), **{k: v for k, v in extra.items()}}
    for name, (dtype, value) in values.items():
        tensor = grpcclient.InferInput(name, [1], {np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64",
                                                   np.bool_: "BOOL"}[dtype])
        tensor.set_data_from_numpy(np.array([value], dtype=dtype))
        tensors.append(tensor)
    return tensors


def test_health_and_metadata(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("other-model")
    metadata = client.get_model_metadata(MODEL)
    assert metadata.name == MODEL
    assert {"text_input", "input_ids", "max_tokens"} <= {t.name for t in metadata.inputs}
    assert client.get_server_metadata().name == "helix"


def test_unary_infer_matches_reference(client, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    prompt = "The quick brown fox"
    result = client.infer(MODEL, _inputs(prompt, 10), request_id="unary-1")
    ids = result.as_numpy("output_ids").tolist()
    expected = reference.greedy(tokenizer.encode(prompt), 10, stop_ids=reference.model.config.eos_token_ids)
    assert ids == expected.tokens
    assert result.as_numpy("text_output")[0].decode() == tokenizer.decode(ids)
    assert result.as_numpy("finish_reason")[0].decode() in ("length", "stop")
    assert result.get_response().id == "unary-1"


def test_streaming_infer_sends_each_token(client, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    responses: queue.Queue = queue.Queue()
    prompts = {"s-1": "Helix serves", "s-2": "tokens stream back to the client as"}
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), responses))
    try:
        for request_id, prompt in prompts.items():
            client.async_stream_infer(MODEL, _inputs(prompt, 6), request_id=request_id)
        got: dict[str, list[int]] = {k: [] for k in prompts}
        finals = set()
        while len(finals) < len(prompts):
            result, error = responses.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            got[response.id] += result.as_numpy("output_ids").tolist()
            if response.parameters["triton_final_response"].bool_param:
                finals.add(response.id)
    finally:
        client.stop_stream()
    for request_id, prompt in prompts.items():
        expected = reference.greedy(tokenizer.encode(prompt), 6, stop_ids=reference.model.config.eos_token_ids)
        assert got[request_id] == expected.tokens


def test_stream_error_is_reported_per_request(client) -> None:
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), responses))
    try:
        client.async_stream_infer(MODEL, _inputs("hello", 100_000), request_id="too-long")
        result, error = responses.get(timeout=30)
    finally:
        client.stop_stream()
    assert result is None and "context" in str(error)


@pytest.mark.parametrize("build, code, words", [
    (lambda: _inputs("hi", 0), "StatusCode.INVALID_ARGUMENT", "max_tokens"),
    (lambda: _inputs("hi", 4, temperature=(np.float32, -1.0)), "StatusCode.INVALID_ARGUMENT", "temperature"),
    (lambda: _inputs("hi", 1500), "StatusCode.INVALID_ARGUMENT", "never fit"),
    (lambda: [grpcclient.InferInput("prompt", [1], "BYTES")], "StatusCode.INVALID_ARGUMENT", "unknown input"),
])
def test_bad_requests_get_invalid_argument(client, build, code, words) -> None:
    inputs = build()
    if inputs[0].name() == "prompt":
        inputs[0].set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, inputs)
    assert raised.value.status() == code
    assert words in raised.value.message()


def test_unknown_model_is_not_found(client) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no-such-model", _inputs("hi", 2))
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_model_config_and_statistics(client) -> None:
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL and config.max_batch_size == 0 and config.model_transaction_policy.decoupled
    assert {"text_input", "max_tokens", "exclude_input_in_output"} <= {i.name for i in config.input}
    before = client.get_inference_statistics(MODEL).model_stats[0]
    client.infer(MODEL, _inputs("statistics", 2))
    after = client.get_inference_statistics(MODEL).model_stats[0]
    assert (after.name, after.version) == (MODEL, "1")
    assert after.inference_count == before.inference_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_config("no-such-model")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_batched_prompts_get_one_answer_each(client, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    prompts = ["The quick brown fox", "Helix"]
    inputs = _inputs("", 5, ignore_eos=(np.bool_, True))
    inputs[0] = grpcclient.InferInput("text_input", [2, 1], "BYTES")
    inputs[0].set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=np.object_))
    result = client.infer(MODEL, inputs)
    assert [t.decode() for t in result.as_numpy("text_output")] == \
        [tokenizer.decode(reference.greedy(tokenizer.encode(p), 5).tokens) for p in prompts]
    assert result.as_numpy("output_ids").tolist() == [reference.greedy(tokenizer.encode(p), 5).tokens for p in prompts]


def test_exclude_input_in_output_false_leads_with_the_prompt(client) -> None:
    alone = client.infer(MODEL, _inputs("Helix serves", 3)).as_numpy("text_output")[0].decode()
    echoed = client.infer(MODEL, _inputs("Helix serves", 3, exclude_input_in_output=(np.bool_, False)))
    assert echoed.as_numpy("text_output")[0].decode() == "Helix serves" + alone


def test_stream_false_on_a_stream_answers_once(client, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), responses))
    try:
        client.async_stream_infer(MODEL, _inputs("Helix serves", 4, stream=(np.bool_, False)), request_id="whole")
        result, error = responses.get(timeout=60)
    finally:
        client.stop_stream()
    assert error is None and result.get_response().parameters["triton_final_response"].bool_param
    assert result.as_numpy("output_ids").tolist() == reference.greedy(
        tokenizer.encode("Helix serves"), 4, stop_ids=reference.model.config.eos_token_ids).tokens
