"""Stage liveness: a SIGSTOPped middle stage leaves rotation within the configured bound, its
requests finish on the other pipeline with the reference tokens, and it rejoins after SIGCONT
(its KV freed); an engine task that dies turns its stage unready, loudly."""

import asyncio
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dataplane_helpers import (
    MODEL,
    NUM_LAYERS,
    WORKER_ENV,
    assert_reference_runs,
    failovers,
    generate_with_logits,
    kv_used,
    start_workers,
    wait_for,
    write_plan,
)

from helix_proto import helix_stage_pb2 as pb
from helix_worker.envs import Settings
from helix_worker.errors import Unavailable
from helix_worker.fleet.layouts import manual_plan
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits
from helix_worker.frontend.health import verdict
from helix_worker.stage.main import StageOptions, serve_stage
from helix_worker.transport.links import StreamLink

HEARTBEAT, HUNG = 0.25, 1.5  # short bounds, yet a loaded two-core machine answers a heartbeat in time
PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45], [9], [300, 301, 302, 303]]
MAX_TOKENS = 48


def test_verdict_names_what_is_wrong() -> None:
    assert verdict(pb.StageInfo(ready=True, stalled_seconds=HUNG - 0.1), HUNG) is None
    assert "no step finished in 1.5s" in verdict(pb.StageInfo(ready=True, stalled_seconds=HUNG), HUNG)
    assert "not ready: the engine stopped" in verdict(pb.StageInfo(ready=False, problem="the engine stopped"), HUNG)


@pytest.mark.timeout(240)
async def test_stopped_stage_leaves_rotation_and_rejoins(tmp_path: Path, checkpoint: Path, fleet) -> None:
    # Two pipelines that differ only in their middle stage.
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 2), ("m1", 2, 4), ("z", 4, NUM_LAYERS)],
                                            [("a", 0, 2), ("m2", 2, 4), ("z", 4, NUM_LAYERS)]])
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    tls = fleet.member_tls("frontend")
    # IWRR puts every other request on m1 (adaptive routing may leave it idle: test_adaptive_routing)
    coordinator = Coordinator(plan, endpoints, ModelLimits(380, 2048),
                              Settings(reconnect_seconds=0.2, heartbeat_seconds=HEARTBEAT, hung_seconds=HUNG,
                                       routing="iwrr"), tls=tls)
    victim = next(c for c in fleet.children if c.name == "m1")
    progress: dict[int, list[float]] = {i: [] for i in range(len(PROMPTS))}  # when each token arrived
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        tasks = [asyncio.create_task(generate_with_logits(coordinator, p, MAX_TOKENS, times=progress[i]))
                 for i, p in enumerate(PROMPTS)]
        await wait_for(lambda: all(len(p) >= 2 for p in progress.values()), 60)
        on_victim = [i for i, t in enumerate(tasks) if not t.done()]  # IWRR put every other request on m1
        stopped = time.monotonic()
        os.kill(victim.process.pid, signal.SIGSTOP)
        try:
            left = await wait_for(lambda: not coordinator.routes.up["m1"], HEARTBEAT + HUNG + 5)
            runs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert coordinator.routes.choose(10).nodes == ("a", "m2", "z")
            assert coordinator.routes.choose(10).nodes == ("a", "m2", "z")
            during = await generate_with_logits(coordinator, PROMPTS[0], MAX_TOKENS)
            assert not coordinator.routes.up["m1"]
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
        await wait_for(lambda: coordinator.routes.up["m1"], 30)
        # A stop longer than HELIX_HUNG_SECONDS also cuts a's link to m1: that pipeline rejoins once a
        # reaches m1 again (it tries when a heartbeat asks).
        through_m1 = next(r for r in coordinator.routes.routes if "m1" in r.nodes)
        await wait_for(lambda: coordinator.routes.usable(through_m1), 10)
        assert {coordinator.routes.choose(10).nodes for _ in range(4)} == {("a", "m1", "z"), ("a", "m2", "z")}
        after = await asyncio.gather(*(generate_with_logits(coordinator, p, MAX_TOKENS) for p in PROMPTS[:2]))
        # What the stopped stage held for the requests moved away is released once it is back.
        deadline = time.monotonic() + 10
        while (held := await kv_used(endpoints["m1"], tls)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await coordinator.close()

    assert left <= HEARTBEAT + HUNG + 1.0, f"m1 left rotation {left:.2f}s after SIGSTOP"
    assert failovers(coordinator) >= 1
    assert held == 0
    # Requests that were stalled on m1 got their next token elsewhere within the bound (+ a re-prefill).
    resumed = [min(t for t in progress[i] if t > stopped) - stopped for i in on_victim
               if any(t > stopped for t in progress[i])]
    assert resumed and max(resumed) <= HEARTBEAT + HUNG + 2.0, resumed
    assert_reference_runs(checkpoint, PROMPTS + [PROMPTS[0]] + PROMPTS[:2], runs + [during] + after, MAX_TOKENS)


@pytest.mark.timeout(180)
async def test_engine_crash_turns_stage_unready(tmp_path: Path, checkpoint: Path, fleet, monkeypatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    plan = manual_plan(MODEL, NUM_LAYERS, [[("solo", 0, NUM_LAYERS)]])
    ready_file = tmp_path / "solo.ready.json"
    own, tls = fleet.member_tls("solo"), fleet.member_tls("frontend")  # the stage runs in this process
    settings = Settings.from_env(WORKER_ENV, tls_cert=str(own.cert), tls_key=str(own.key), tls_ca=str(own.ca))
    stage = asyncio.create_task(serve_stage(StageOptions(plan, "solo", checkpoint, ready_file=ready_file), settings))
    coordinator = None
    try:
        await wait_for(lambda: ready_file.exists() or stage.done(), 120)
        ports = json.loads(ready_file.read_text())
        address, http = f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['http']}"
        settings = Settings(heartbeat_seconds=HEARTBEAT, hung_seconds=HUNG, route_wait_seconds=1)
        coordinator = Coordinator(plan, {"solo": address}, ModelLimits(380, 2048), settings, tls=tls)
        await coordinator.start()
        await coordinator.wait_ready(30)
        assert await asyncio.to_thread(_status, http + "/readyz") == 200

        def broken(self, *args, **kwargs):
            raise RuntimeError("injected scheduler bug")

        monkeypatch.setattr("helix_worker.engine.scheduler.Scheduler.next_step", broken)
        with caplog.at_level(logging.ERROR, logger="helix_worker.stage.main"), pytest.raises(Unavailable):
            async for _ in coordinator.generate(GenerationRequest((1, 2, 3), 4)):
                pass
        assert not coordinator.ready and not coordinator.routes.up["solo"]
        info = await StreamLink(address, "probe", max_message_bytes=1 << 20, tls=tls).describe(timeout=5)
        assert not info.ready and "injected scheduler bug" in info.problem
        assert await asyncio.to_thread(_status, http + "/readyz") == 503
        assert await asyncio.to_thread(_status, http + "/healthz") == 503
        assert any("the engine stopped" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        if coordinator is not None:
            await coordinator.close()
        stage.cancel()
        await asyncio.gather(stage, return_exceptions=True)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
