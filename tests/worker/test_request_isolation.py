"""One request's bad parameters, early disconnect or slowness costs only that request: poison
values are refused at the edge or sampled safely on the stage while co-batched requests
finish with the reference tokens; a client that goes away frees its KV cache; slow and
oversized requests are cut off with a JSON error."""

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import torch
from dataplane_helpers import bytes_tensor, kserve_request, write_plan

from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.frontend.main import FrontendOptions, build_service, http_app
from helix_worker.http_base import start_site
from helix_worker.links import StreamLink
from helix_worker.metrics import FrontendMetrics
from helix_worker.protocol import Chunk, Hop, Phase, SamplingParams
from helix_worker.reference import ReferenceModel
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.tokenizer import load_tokenizer

PROMPTS = [[11 + i, 57 + i, 101 + i, 7 + i] for i in range(6)]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def reference_tokens(checkpoint: Path) -> list[list[int]]:
    reference = ReferenceModel(checkpoint)
    return [reference.greedy(p, MAX_TOKENS).tokens for p in PROMPTS]


async def _post_raw(session: aiohttp.ClientSession, url: str, body: str) -> tuple[int, dict]:
    async with session.post(url + "/v1/completions", data=body.encode(),
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def _kserve_ids(stub: kserve_grpc.GRPCInferenceServiceStub, prompt: list[int]) -> list[int]:
    request = kserve_request({"input_ids": ("INT64", [len(prompt)], np.asarray(prompt, np.int64).tobytes()),
                              "max_tokens": ("INT32", [1], np.int32(MAX_TOKENS).tobytes()),
                              "ignore_eos": ("BOOL", [1], np.bool_(True).tobytes())})
    response = await stub.ModelInfer(request, timeout=60)
    index = [o.name for o in response.outputs].index("output_ids")
    return np.frombuffer(response.raw_output_contents[index], np.int64).tolist()


async def _kserve_poison(stub: kserve_grpc.GRPCInferenceServiceStub, inputs: dict) -> str:
    """The refusal's message; the call must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(kserve_request({"text_input": ("BYTES", [1], bytes_tensor(b"hi"))} | inputs), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    return refused.value.details()


POISON_HTTP = [  # raw JSON fields beside a valid prompt, and what the 400 must name
    ('"seed": -1', "seed"), ('"seed": 18446744073709551616', "seed"), ('"top_k": 2147483648', "top_k"),
    ('"temperature": NaN', "NaN"), ('"temperature": Infinity', "Infinity"), ('"temperature": 1e39', "temperature"),
    ('"top_p": 1e-50', "top_p"), ('"max_tokens": 9223372036854775808', "max_tokens"), ('"logprobs": 21', "logprobs"),
    ('"n": "1"', "`n`"), ('"stop": 5', "stop"), ('"temperature": "0.5"', "temperature"),
]
POISON_KSERVE = [
    ({"seed": ("UINT64", [1], np.uint64(2**64 - 1).tobytes())}, "seed"),
    ({"temperature": ("FP32", [1], np.float32("nan").tobytes())}, "temperature"),
    ({"top_k": ("INT64", [1], np.int64(2**31).tobytes())}, "top_k"),
]


async def test_poison_requests_fail_alone_while_cobatched_requests_finish_exactly(served, checkpoint,
                                                                                   reference_tokens) -> None:
    """Valid requests on both APIs, poison ones, and extreme but valid ones (which run on the
    stage beside the valid ones), all sent at once, twice."""
    texts = [load_tokenizer(checkpoint).decode(tokens) for tokens in reference_tokens]
    valid = [f'{{"prompt": {p}, "max_tokens": {MAX_TOKENS}, "temperature": 0, "ignore_eos": true' for p in PROMPTS]
    extreme = [valid[0] + ', "temperature": 1e-40}',  # greedy, as temperature 0
               valid[1] + ', "temperature": 3e38, "top_k": 2147483647, "seed": 9223372036854775807, "top_p": 1e-30}']
    poison = [valid[i % len(valid)] + ", " + field + "}" for i, (field, _) in enumerate(POISON_HTTP)]
    async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(served.grpc_address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):
            http = asyncio.gather(*(_post_raw(session, served.http_url, body) for body in
                                    [v + "}" for v in valid] + extreme + poison))
            grpc_ids = asyncio.gather(*(_kserve_ids(stub, p) for p in PROMPTS))
            grpc_refusals = asyncio.gather(*(_kserve_poison(stub, inputs) for inputs, _ in POISON_KSERVE))
            answers, ids, refusals = await asyncio.gather(http, grpc_ids, grpc_refusals)
            assert ids == reference_tokens
            for (status, body), text in zip(answers[:len(valid)], texts, strict=True):
                assert status == 200 and body["choices"][0]["text"] == text, body
            (tiny_status, tiny), (hot_status, hot) = answers[len(valid):len(valid) + 2]
            assert tiny_status == 200 and tiny["choices"][0]["text"] == texts[0]
            assert hot_status == 200 and hot["usage"]["completion_tokens"] == MAX_TOKENS
            for (status, body), (_, words) in zip(answers[len(valid) + 2:], POISON_HTTP, strict=True):
                assert status == 400 and words in body["error"]["message"], body
            for message, (_, field) in zip(refusals, POISON_KSERVE, strict=True):
                assert f"`{field}` must be" in message


@pytest.fixture
async def solo_stage(checkpoint: Path):
    """The whole model as one in-process stage, and a front-end link to it."""
    model = LayerSlice.load(checkpoint, 0, 6)
    engine = StageEngine("solo", model, model.new_pool(129, 4), max_batch_tokens=256)
    settings = Settings(max_message_bytes=1 << 20, data_channel="grpc")
    endpoint = await StageEndpoint.start(engine, StageIdentity("solo", "tiny", "hash"), "127.0.0.1", 0, settings)
    runner = asyncio.create_task(engine.run())
    events: asyncio.Queue = asyncio.Queue()
    link = StreamLink(f"127.0.0.1:{endpoint.port}", "fe", max_message_bytes=1 << 20, on_event=events.put_nowait)
    await link.connect()
    try:
        yield link, events, Hop("solo", f"127.0.0.1:{endpoint.port}", 0, 6)
    finally:
        await link.close()
        runner.cancel()
        await endpoint.stop(None)


async def test_rows_whose_sampling_parameters_reach_the_stage_poisoned_fail_no_other_row(solo_stage, checkpoint) -> None:
    """Parameters no API lets through, sent straight to a stage in one batch with greedy rows:
    every row gets a token, and the greedy rows get the reference's."""
    link, events, hop = solo_stage
    tiny = float(torch.tensor(1e-40, dtype=torch.float32))  # a float32 denormal: logits / it overflow
    poison = [SamplingParams(temperature=float("nan")), SamplingParams(temperature=tiny),
              SamplingParams(temperature=float("inf")), SamplingParams(temperature=1.0, top_p=float("nan")),
              SamplingParams(temperature=1.0, top_k=2**31 - 1, seed=2**64 - 1)]
    rows = [(f"ok{i}", SamplingParams(), p) for i, p in enumerate(PROMPTS[:3])]
    rows += [(f"bad{i}", s, PROMPTS[3]) for i, s in enumerate(poison)]
    chunks = [Chunk(rid, Phase.PREFILL, 0, len(p), (hop,), "fe", s) for rid, s, p in rows]
    link.send_batch(chunks, torch.tensor([t for _, _, p in rows for t in p]))
    tokens, errors = {}, []
    while len(tokens) + len(errors) < len(rows):
        event = await asyncio.wait_for(events.get(), 20)
        tokens |= {r.request_id: r.token_id for r in event.results}
        errors += [(e.request_id, e.message) for e in event.errors]
    assert errors == []
    reference = ReferenceModel(checkpoint)
    assert [tokens[f"ok{i}"] for i in range(3)] == [reference.greedy(p, 1).tokens[0] for p in PROMPTS[:3]]
    assert tokens["bad0"] == tokens["bad1"] == reference.greedy(PROMPTS[3], 1).tokens[0]  # fell back to greedy


def _metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def _frontend_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as response:
        return _metrics(await response.text())


async def _wait_released(session: aiohttp.ClientSession, url: str, seconds: float) -> dict[str, float]:
    """Front-end metrics once no request is in flight and no KV is held, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        metrics = await _frontend_metrics(session, url)
        held = sum(v for k, v in metrics.items() if k.startswith("helix_kv_held_tokens"))
        if metrics["helix_requests_in_flight"] == 0 and held == 0:
            return metrics
        assert time.monotonic() < deadline, f"still in flight or holding KV {seconds}s after the client left"
        await asyncio.sleep(0.05)


async def _started(session: aiohttp.ClientSession, url: str, before: float) -> float:
    """Wait until the front end has generated tokens beyond `before`; returns the count."""
    for _ in range(400):
        generated = (await _frontend_metrics(session, url))["helix_generated_tokens_total"]
        if generated > before + 5:
            return generated
        await asyncio.sleep(0.02)
    raise AssertionError("the long request never started generating")


LONG = 1000  # prompt + max_tokens just fit the served stages' 1024 KV tokens


async def test_a_non_streaming_client_that_disconnects_frees_its_kv(served) -> None:
    url = served.http_url
    body = {"prompt": [5, 6, 7], "max_tokens": LONG, "temperature": 0, "ignore_eos": True}
    async with aiohttp.ClientSession() as watcher:
        before = (await _wait_released(watcher, url, 30))["helix_generated_tokens_total"]
        client = aiohttp.ClientSession()
        request = asyncio.create_task(client.post(url + "/v1/completions", json=body))
        await _started(watcher, url, before)
        request.cancel()
        await client.close()  # the connection goes: the front end must stop the generation
        released = await _wait_released(watcher, url, 5)
        assert released["helix_generated_tokens_total"] - before < LONG
        await asyncio.sleep(0.3)
        assert (await _frontend_metrics(watcher, url))["helix_generated_tokens_total"] == \
            released["helix_generated_tokens_total"]


async def test_a_unary_kserve_call_whose_client_cancels_frees_its_kv(served) -> None:
    url = served.http_url
    request = kserve_request({"input_ids": ("INT64", [3], np.asarray([5, 6, 7], np.int64).tobytes()),
                              "max_tokens": ("INT32", [1], np.int32(LONG).tobytes()),
                              "ignore_eos": ("BOOL", [1], np.bool_(True).tobytes())})
    async with aiohttp.ClientSession() as watcher, grpc.aio.insecure_channel(served.grpc_address) as channel:
        before = (await _wait_released(watcher, url, 30))["helix_generated_tokens_total"]
        call = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        await _started(watcher, url, before)
        call.cancel()
        released = await _wait_released(watcher, url, 5)
        assert released["helix_generated_tokens_total"] - before < LONG


@pytest.fixture
async def offline_frontend(tmp_path: Path, checkpoint: Path):
    """The front end's HTTP app in process, with short client timeouts and a 64 KiB body limit;
    its stages are never reached (these requests fail before they would be)."""
    plan, _ = write_plan(tmp_path, [[("left", 0, 3), ("right", 3, 6)]])
    settings = Settings(http_idle_seconds=0.5, http_body_seconds=0.5, max_request_bytes=64 << 10)
    metrics = FrontendMetrics()
    service = build_service(FrontendOptions(plan, {"left": "127.0.0.1:9", "right": "127.0.0.1:9"}, checkpoint),
                            settings, metrics)
    runner, port = await start_site(http_app(service, metrics, settings), "127.0.0.1", 0,
                                    shutdown_seconds=1, idle_seconds=settings.http_idle_seconds)
    try:
        yield port
    finally:
        await runner.cleanup()


def _exchange(port: int, data: bytes, seconds: float = 5.0) -> tuple[bytes, float]:
    """Send `data`, then read until the server closes; returns what came back and how long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


async def test_slow_clients_are_cut_off(offline_frontend) -> None:
    port = offline_frontend
    head, took = await asyncio.to_thread(_exchange, port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    assert head == b"" and took < 3, "a client that never finished its headers kept its connection"
    partial = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
              b"Content-Length: 100\r\n\r\n{\"prompt\""
    answer, took = await asyncio.to_thread(_exchange, port, partial)
    assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer and took < 3


async def test_oversized_and_unroutable_requests_get_json_errors(offline_frontend) -> None:
    url = f"http://127.0.0.1:{offline_frontend}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", data=b'{"prompt": "' + b"x" * (80 << 10) + b'"}') as response:
            assert response.status == 413 and "error" in await response.json()
        async with session.get(url + "/v1/completions") as response:
            assert response.status == 405 and "error" in await response.json()
        async with session.post(url + "/v1/nothing", json={}) as response:
            assert response.status == 404 and (await response.json())["error"]["type"] == "not_found_error"
