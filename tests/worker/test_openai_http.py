"""The OpenAI-compatible HTTP API: completions, chat, SSE streaming, stop strings, errors."""

import asyncio
import json
import time

import aiohttp
import pytest
import torch
from dataplane_helpers import MODEL

from helix_worker.engine.reference import ReferenceModel
from helix_worker.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ReferenceModel(checkpoint)


async def _post(served, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(served.http_url + path, json=body) as response:
            return response.status, await response.json()


async def _stream(served, path: str, body: dict) -> list[tuple[float, dict]]:
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.post(served.http_url + path, json=body | {"stream": True}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                line = line.decode().strip()
                if line.startswith("data: "):
                    payload = line.removeprefix("data: ")
                    events.append((time.monotonic(), None if payload == "[DONE]" else json.loads(payload)))
    assert events[-1][1] is None, "stream must end with [DONE]"
    return events[:-1]


async def test_models_lists_the_served_model(served) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(served.http_url + "/v1/models") as response:
            body = await response.json()
    assert [m["id"] for m in body["data"]] == [MODEL]


async def test_completion_matches_reference_and_stream_matches_completion(served, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    prompt = "Helix places layers"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    status, done = await _post(served, "/v1/completions", body)
    assert status == 200, done
    expected = reference.greedy(tokenizer.encode(prompt), 12)
    assert done["choices"][0]["text"] == tokenizer.decode(expected.tokens)
    assert done["usage"] == {"prompt_tokens": len(tokenizer.encode(prompt)), "completion_tokens": 12,
                             "total_tokens": len(tokenizer.encode(prompt)) + 12}
    assert done["choices"][0]["finish_reason"] == "length"
    events = await _stream(served, "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for _, e in events) == done["choices"][0]["text"]
    assert len(events) == 12 and events[-1][1]["choices"][0]["finish_reason"] == "length"
    counted = await _stream(served, "/v1/completions", body | {"stream_options": {"include_usage": True}})
    assert all(e["usage"] is None for _, e in counted[:-1])
    assert counted[-1][1]["choices"] == [] and counted[-1][1]["usage"] == done["usage"]
    status, error = await _post(served, "/v1/completions",
                                body | {"stream": True, "stream_options": {"include_usage": 1}})
    assert status == 400 and "include_usage is true or false" in error["error"]["message"]


async def test_token_id_prompt_and_stop_string(served, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    ids = [72, 101, 108, 108, 111]
    full = tokenizer.decode(reference.greedy(ids, 16).tokens)
    stop = full[5:8]
    status, done = await _post(served, "/v1/completions", {"prompt": ids, "max_tokens": 16, "temperature": 0,
                                                            "stop": [stop], "ignore_eos": True})
    assert status == 200, done
    text = done["choices"][0]["text"]
    assert done["choices"][0]["finish_reason"] == "stop"
    assert text == full[:full.index(stop)]
    events = await _stream(served, "/v1/completions", {"prompt": ids, "max_tokens": 16, "temperature": 0,
                                                       "stop": stop, "ignore_eos": True})
    assert "".join(e["choices"][0]["text"] for _, e in events) == text


async def test_chat_completion_uses_the_chat_template(served, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    messages = [{"role": "user", "content": "hello there"}]
    status, done = await _post(served, "/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                                 "max_tokens": 6, "temperature": 0})
    assert status == 200, done
    rendered = "<|begin_of_text|><|start_header|>user<|end_header|>hello there<|end_of_text|>" \
               "<|start_header|>assistant<|end_header|>"
    expected = reference.greedy(tokenizer.encode(rendered, add_special=False), 6,
                                stop_ids=reference.model.config.eos_token_ids)
    assert done["choices"][0]["message"] == {"role": "assistant", "content": tokenizer.decode(expected.tokens)}
    events = await _stream(served, "/v1/chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 0})
    assert events[0][1]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for _, e in events)
    assert streamed == done["choices"][0]["message"]["content"]


async def test_completion_logprobs_match_the_reference(served, reference) -> None:
    ids = [40, 41, 42, 43]
    status, done = await _post(served, "/v1/completions", {"prompt": ids, "max_tokens": 4, "temperature": 0,
                                                            "logprobs": 3, "ignore_eos": True})
    assert status == 200, done
    listing = done["choices"][0]["logprobs"]
    expected = reference.greedy(ids, 4)
    for token_logprob, top, logits, token in zip(listing["token_logprobs"], listing["top_logprobs"],
                                                 expected.logits, expected.tokens):
        assert token_logprob == pytest.approx(float(torch.log_softmax(logits, -1)[token]), abs=1e-4)
        assert len(top) == 3 and max(top.values()) == pytest.approx(token_logprob, abs=1e-6)


async def test_seeded_sampling_is_reproducible(served) -> None:
    body = {"prompt": "The quick", "max_tokens": 10, "temperature": 1.5, "top_p": 0.95, "top_k": 50, "seed": 7,
            "ignore_eos": True}
    first = await _post(served, "/v1/completions", body)
    second = await _post(served, "/v1/completions", body)
    other = await _post(served, "/v1/completions", body | {"seed": 8})
    assert first[0] == second[0] == other[0] == 200
    assert first[1]["choices"][0]["text"] == second[1]["choices"][0]["text"]
    assert first[1]["choices"][0]["text"] != other[1]["choices"][0]["text"]


async def test_kv_admission_queues_requests_that_do_not_fit_together(served) -> None:
    # Each stage holds 1024 KV tokens; each request reserves 700, so they must run one after the other.
    body = {"prompt": [i % 370 + 5 for i in range(680)], "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    first, second = await asyncio.gather(_stream(served, "/v1/completions", body),
                                         _stream(served, "/v1/completions", body))
    assert len(first) == len(second) == 20
    (a_start, a_end), (b_start, b_end) = sorted([(first[0][0], first[-1][0]), (second[0][0], second[-1][0])])
    assert a_end <= b_start, "the second request decoded while the first still held its KV reservation"


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/completions", {"prompt": "x", "n": 17}, 400, "`n` must be"),
    ("/v1/completions", {"prompt": "x", "frequency": 1}, 400, "unknown field `frequency`"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1500}, 400, "never fit"),
    ("/v1/completions", {"prompt": {"a": 1}}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400, "vocabulary"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "content"),
])
async def test_bad_requests_get_one_clear_error(served, path, body, status, words) -> None:
    got, response = await _post(served, path, body)
    assert got == status
    assert words in response["error"]["message"]


async def test_body_that_is_not_json(served) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(served.http_url + "/v1/completions", data=b"{nope") as response:
            assert response.status == 400
            assert "not JSON" in (await response.json())["error"]["message"]
