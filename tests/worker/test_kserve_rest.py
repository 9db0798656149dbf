"""KServe v2 REST on the front end's HTTP port: the real tritonclient.http client (binary and
JSON tensors, batched prompts, ModelConfig, statistics) and Triton's generate extension."""

import json

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from dataplane_helpers import MODEL
from tritonclient.utils import InferenceServerException

from helix_worker.engine.reference import ReferenceModel
from helix_worker.model.tokenizer import load_tokenizer

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(served):
    triton = httpclient.InferenceServerClient(url=served.http_url.removeprefix("http://"), network_timeout=120)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def expected(checkpoint):
    """The reference's greedy text and ids for a prompt, ignoring EOS."""
    reference, tokenizer = ReferenceModel(checkpoint), load_tokenizer(checkpoint)

    def greedy(prompt: str, max_tokens: int) -> tuple[str, list[int]]:
        ids = reference.greedy(tokenizer.encode(prompt), max_tokens).tokens
        return tokenizer.decode(ids), ids
    return greedy


def _inputs(prompts: list[str], max_tokens: int, *, binary: bool = True) -> list[httpclient.InferInput]:
    text = httpclient.InferInput("text_input", [len(prompts)], "BYTES")
    text.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_), binary_data=binary)
    limit = httpclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32), binary_data=binary)
    eos = httpclient.InferInput("ignore_eos", [1], "BOOL")
    eos.set_data_from_numpy(np.array([True]), binary_data=binary)
    return [text, limit, eos]


def test_health_metadata_and_config(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("other-model")
    assert client.get_server_metadata()["name"] == "helix"
    assert {"text_input", "max_tokens"} <= {t["name"] for t in client.get_model_metadata(MODEL)["inputs"]}
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["model_transaction_policy"] == {"decoupled": True}
    assert {"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1], "optional": True} in config["input"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("other-model")


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_reference_in_binary_and_json_tensors(client, expected, binary) -> None:
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("text_output", "output_ids")]
    result = client.infer(MODEL, _inputs([PROMPT], 6, binary=binary), outputs=outputs, request_id="rest-1")
    text, ids = expected(PROMPT, 6)
    assert result.as_numpy("text_output")[0] in (text, text.encode())  # JSON gives str, binary bytes
    assert result.as_numpy("output_ids").tolist() == ids
    assert result.get_response()["id"] == "rest-1"


def test_batched_prompts_and_statistics(client, expected) -> None:
    prompts = [PROMPT, "Helix"]
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    result = client.infer(MODEL, _inputs(prompts, 4))
    assert [t.decode() for t in result.as_numpy("text_output")] == [expected(p, 4)[0] for p in prompts]
    assert result.as_numpy("output_ids").tolist() == [expected(p, 4)[1] for p in prompts]
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 1
    assert {"batch_size": 2} .items() <= after["batch_stats"][-1].items()


def test_bad_requests_are_400_naming_the_field(client) -> None:
    inputs = _inputs([PROMPT], 2)
    temperature = httpclient.InferInput("temperature", [1], "FP32")
    temperature.set_data_from_numpy(np.array([-1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="`temperature` must be") as raised:
        client.infer(MODEL, inputs + [temperature])
    assert raised.value.status() == "400"


async def test_generate_and_generate_stream(served, expected) -> None:
    body = {"text_input": PROMPT, "max_tokens": 5, "ignore_eos": True, "parameters": {"temperature": 0}}
    text, ids = expected(PROMPT, 5)
    async with aiohttp.ClientSession(served.http_url) as session:
        async with session.post(f"/v2/models/{MODEL}/generate", json=body) as response:
            answer = await response.json()
        assert response.status == 200, answer
        assert (answer["text_output"], answer["output_ids"], answer["finish_reason"]) == (text, ids, "length")
        async with session.post(f"/v2/models/{MODEL}/generate_stream", json=body) as response:
            events = [json.loads(line.removeprefix(b"data: ")) async for line in response.content
                      if line.startswith(b"data: ")]
        assert "".join(e["text_output"] for e in events) == text
        assert [e["output_ids"] for e in events] == ids  # one token per event, as a scalar
        async with session.post(f"/v2/models/{MODEL}/generate", json=body | {"best_of": 2}) as response:
            assert response.status == 400 and "unknown input 'best_of'" in (await response.json())["error"]
        async with session.get("/v2/models/other-model/ready") as response:
            assert response.status == 404
