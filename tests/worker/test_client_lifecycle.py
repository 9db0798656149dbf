"""A client's lifecycle costs the server nothing once the client is gone: a non-streaming HTTP
request or a unary KServe call whose client leaves stops generating and frees its KV cache;
slow, oversized and unroutable requests are cut off with a JSON error."""

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from dataplane_helpers import kserve_request, write_plan

from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.envs import Settings
from helix_worker.frontend.main import FrontendOptions, build_service, http_app
from helix_worker.metrics import FrontendMetrics
from helix_worker.transport.http_base import start_site

RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"
GENERATED = "vllm:generation_tokens_total"


def _metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            family = name.partition("{")[0]  # summed over label sets
            values[family] = values.get(family, 0.0) + float(value)
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
        if metrics[RUNNING] == 0 and metrics[WAITING] == 0 and held == 0:
            return metrics
        assert time.monotonic() < deadline, f"still in flight or holding KV {seconds}s after the client left"
        await asyncio.sleep(0.05)


async def _started(session: aiohttp.ClientSession, url: str, before: float) -> None:
    """Wait until the front end has generated a few tokens beyond `before`."""
    for _ in range(400):
        if (await _frontend_metrics(session, url))[GENERATED] > before + 5:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the long request never started generating")


LONG = 1000  # prompt + max_tokens just fit the served stages' 1024 KV tokens
Leave = Callable[[], Awaitable[None]]


async def _leaving_frees_kv(url: str, begin: Callable[[], Awaitable[Leave]]) -> None:
    """Start a long generation with `begin`, which returns how its client leaves; leave once
    tokens flow; the generation must stop and release its KV. A generation that ran to the end
    before its client could leave (a stalled test process) is tried again, twice at most."""
    async with aiohttp.ClientSession() as watcher:
        for _ in range(3):
            before = (await _wait_released(watcher, url, 30))[GENERATED]
            leave = await begin()
            await _started(watcher, url, before)
            await leave()
            # Generous under a loaded machine: a release that never came would still fail here,
            # and one that came only because max_tokens ran out fails below.
            released = (await _wait_released(watcher, url, 20))[GENERATED]
            if released - before < LONG:
                await asyncio.sleep(0.3)
                assert (await _frontend_metrics(watcher, url))[GENERATED] == released
                return
    raise AssertionError("every generation ran to max_tokens although its client had left")


async def test_a_non_streaming_client_that_disconnects_frees_its_kv(served) -> None:
    body = {"prompt": [5, 6, 7], "max_tokens": LONG, "temperature": 0, "ignore_eos": True}

    async def begin() -> Leave:
        client = aiohttp.ClientSession()
        request = asyncio.create_task(client.post(served.http_url + "/v1/completions", json=body))

        async def leave() -> None:
            request.cancel()
            await client.close()  # the connection goes: the front end must stop the generation
        return leave

    await _leaving_frees_kv(served.http_url, begin)


async def test_a_unary_kserve_call_whose_client_cancels_frees_its_kv(served) -> None:
    request = kserve_request({"input_ids": ("INT64", [3], np.asarray([5, 6, 7], np.int64).tobytes()),
                              "max_tokens": ("INT32", [1], np.int32(LONG).tobytes()),
                              "ignore_eos": ("BOOL", [1], np.bool_(True).tobytes())})
    async with grpc.aio.insecure_channel(served.grpc_address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)

        async def begin() -> Leave:
            call = stub.ModelInfer(request)

            async def leave() -> None:
                call.cancel()
            return leave

        await _leaving_frees_kv(served.http_url, begin)


@pytest.fixture
async def offline_frontend(tmp_path: Path, checkpoint: Path):
    """The front end's HTTP app in process, with short client timeouts and a 64 KiB body limit;
    its stages are never reached (these requests fail before they would be)."""
    plan, _ = write_plan(tmp_path, [[("left", 0, 3), ("right", 3, 6)]])
    settings = Settings(http_idle_seconds=0.5, http_body_seconds=0.5, max_request_bytes=64 << 10)
    metrics = FrontendMetrics("m")
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
