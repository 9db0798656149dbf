"""One request's bad parameters cost only that request: poison values are refused at the edge
(400 / INVALID_ARGUMENT naming the field) or sampled safely on the stage, while the requests
sent with them finish with the reference tokens."""

import asyncio
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import torch
from dataplane_helpers import bytes_tensor, kserve_request

from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.reference import ReferenceModel
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.model.tokenizer import load_tokenizer
from helix_worker.protocol import Chunk, Hop, Phase, SamplingParams
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport.links import StreamLink

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


async def test_rows_whose_sampling_parameters_reach_the_stage_poisoned_fail_no_other_row(solo_stage,
                                                                                         checkpoint) -> None:
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


async def test_rows_whose_penalties_name_tokens_outside_the_vocabulary_are_refused_alone(solo_stage,
                                                                                          checkpoint) -> None:
    link, events, hop = solo_stage
    poison = [SamplingParams(logit_bias=((10**6, 1.0),)), SamplingParams(repetition_penalty=1.2,
                                                                        seen_prompt_ids=(10**6,))]
    rows = [("ok", SamplingParams(frequency_penalty=0.5, logit_bias=((3, 0.0),)), PROMPTS[0])]
    rows += [(f"bad{i}", s, PROMPTS[1]) for i, s in enumerate(poison)]
    chunks = [Chunk(rid, Phase.PREFILL, 0, len(p), (hop,), "fe", s) for rid, s, p in rows]
    link.send_batch(chunks, torch.tensor([t for _, _, p in rows for t in p]))
    tokens, errors = {}, {}
    while len(tokens) + len(errors) < len(rows):
        event = await asyncio.wait_for(events.get(), 20)
        tokens |= {r.request_id: r.token_id for r in event.results}
        errors |= {e.request_id: e.message for e in event.errors}
    assert sorted(errors) == ["bad0", "bad1"] and all("outside the vocabulary" in m for m in errors.values())
    assert tokens == {"ok": ReferenceModel(checkpoint).greedy(PROMPTS[0], 1).tokens[0]}
