"""SIGTERM drains the front end: for HELIX_DRAIN_DELAY_SECONDS it still accepts new requests (while
a Service drops the pod), then new connections are refused; requests in flight (gRPC and HTTP
streaming) and those accepted in the delay finish with the reference tokens, and the process exits
once they are done."""

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from dataplane_helpers import MODEL, NUM_LAYERS, WORKER_ENV, start_workers, wait_http_ready, write_endpoints, write_plan

from helix_worker.engine.reference import ReferenceModel
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.model.tokenizer import load_tokenizer

PROMPT, MAX_TOKENS = "Helix serves", 40
DRAIN_DELAY = 1.5


def _triton(address: str) -> list[int]:
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("max_tokens", [1], "INT32"),
              grpcclient.InferInput("ignore_eos", [1], "BOOL")]
    for tensor, value in zip(inputs, (np.array([PROMPT.encode()], dtype=np.object_),
                                      np.array([MAX_TOKENS], dtype=np.int32), np.array([True]))):
        tensor.set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(url=address) as client:
        return client.infer(MODEL, inputs, client_timeout=60).as_numpy("output_ids").tolist()


def _sse(url: str, first_token: asyncio.Event, loop: asyncio.AbstractEventLoop) -> str:
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    pieces = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
                loop.call_soon_threadsafe(first_token.set)
    return "".join(pieces)


@pytest.mark.timeout(120)
async def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path, checkpoint: Path) -> None:
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 3), ("b", 3, NUM_LAYERS)]])
    # Slow stages (30x) so that each request is still running when the front end is told to stop.
    with LocalFleet(tmp_path / "fleet", env=WORKER_ENV | {"HELIX_SLOWDOWN": "30"}) as fleet:
        endpoints = write_endpoints(tmp_path,
                                    await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint))
        frontend = await asyncio.to_thread(fleet.wait, fleet.start_frontend(plan_path, endpoints, checkpoint,
                                                                          env={"HELIX_SLOWDOWN": "1",
                                                                               "HELIX_DRAIN_DELAY_SECONDS":
                                                                               str(DRAIN_DELAY)}))
        await asyncio.to_thread(wait_http_ready, frontend.http_url)
        first_token = asyncio.Event()
        loop = asyncio.get_running_loop()
        streamed = asyncio.create_task(asyncio.to_thread(_sse, frontend.http_url, first_token, loop))
        unary = asyncio.create_task(asyncio.to_thread(_triton, frontend.grpc_address))
        await asyncio.wait_for(first_token.wait(), 30)
        began = time.monotonic()
        frontend.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        late = asyncio.create_task(asyncio.to_thread(_triton, frontend.grpc_address))  # in the delay: accepted
        await asyncio.sleep(DRAIN_DELAY)
        with pytest.raises(urllib.error.URLError):  # the listener is closed: new clients go elsewhere
            urllib.request.urlopen(frontend.http_url + "/readyz", timeout=5)
        text, tokens, late_tokens = await asyncio.wait_for(asyncio.gather(streamed, unary, late), 60)
        code = await asyncio.to_thread(frontend.process.wait, 30)
    tokenizer = load_tokenizer(checkpoint)
    expected = ReferenceModel(checkpoint).greedy(tokenizer.encode(PROMPT), MAX_TOKENS).tokens
    assert tokens == late_tokens == expected and text == tokenizer.decode(expected)
    assert code == 0 and time.monotonic() - began > DRAIN_DELAY
