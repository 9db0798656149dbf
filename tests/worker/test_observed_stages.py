"""Observed capacity from real stages: three gRPC stages on 127.0.0.1 (the middle one emulating a GPU
four times as slow, HELIX_SLOWDOWN=4), a coordinator whose heartbeat gathers their step and frame
windows, and the front end's `GET /v2/helix/observed` read back through the planner's parser."""

import asyncio
import statistics
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from dataplane_helpers import NUM_LAYERS, generate_with_logits, wait_for, write_plan

from helix_planner.observed import PATH, LinkSample, parse_observed
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.observations import Window
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, ModelLimits
from helix_worker.frontend.observed_capacity import add_observed_route
from helix_worker.security.peers import PlanPeers
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport.datachannel import TIMED_BYTES
from helix_worker.transport.http_base import start_site

pytestmark = pytest.mark.timeout(60)
STAGES = [("a", 0, 2, 1.0), ("b", 2, 4, 4.0), ("c", 4, NUM_LAYERS, 1.0)]
HEARTBEAT = 0.2


def quartile(values: Iterable[float]) -> float:
    return statistics.quantiles(values, n=4)[0]


def test_the_window_keeps_recent_items_only() -> None:
    now = [0.0]
    window: Window[int] = Window(size=3, seconds=10.0, clock=lambda: now[0])
    for item in range(5):
        now[0] = float(item)
        window.add(item)
    assert window.recent() == [2, 3, 4]  # bounded in count
    now[0] = 13.5
    assert window.recent() == [4]  # and in age


async def test_stages_report_step_times_and_frames(tmp_path: Path, checkpoint: Path) -> None:
    plan, _ = write_plan(tmp_path, [[(name, start, end) for name, start, end, _ in STAGES]])
    settings = Settings(heartbeat_seconds=HEARTBEAT, hung_seconds=5.0)
    endpoints: dict[str, str] = {}
    started: list[tuple[StageEndpoint, asyncio.Task[None]]] = []
    for name, start, end, slowdown in reversed(STAGES):  # next hops first, so each knows where they are
        model = await asyncio.to_thread(LayerSlice.load, checkpoint, start, end)
        engine = StageEngine(name, model, model.new_pool(200, 16), max_batch_tokens=512, slowdown=slowdown)
        stage = await StageEndpoint.start(engine, StageIdentity(name, "tiny-llama", plan.plan_hash), "127.0.0.1", 0,
                                          settings, peers=PlanPeers([n for n, *_ in STAGES], dict(endpoints)))
        started.append((stage, asyncio.create_task(engine.run())))
        endpoints[name] = f"127.0.0.1:{stage.port}"
    coordinator = Coordinator(plan, endpoints, ModelLimits(380, 2048), settings)
    app = web.Application()
    add_observed_route(app, coordinator.observed)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        await coordinator.start()
        await coordinator.wait_ready(20)
        long_prompt = [(7 * i) % 380 for i in range(300)]  # 300 rows of 64 floats: a frame worth timing
        await asyncio.gather(generate_with_logits(coordinator, long_prompt, 4),
                             *(generate_with_logits(coordinator, [i + 1, i + 2, i + 3], 24) for i in range(6)))
        await wait_for(lambda: len(coordinator.observed.observed().nodes) == 3, 10 * HEARTBEAT + 5)
        await asyncio.sleep(2 * HEARTBEAT)  # an answer given after the last step
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{PATH}") as response:
            assert response.status == 200
            observed = parse_observed(await response.json())
    finally:
        await coordinator.close()
        await runner.cleanup()
        for stage, task in started:
            task.cancel()
            await stage.stop(None)
    assert observed.plan_hash == plan.plan_hash
    a, b = observed.nodes["a"], observed.nodes["b"]
    assert a.layers == (0, 2) and b.layers == (2, 4) and a.gpu_type == plan.nodes[0].gpu_type
    assert len(a.decode) >= 10 and len(b.decode) >= 10 and a.prefill and b.prefill
    assert {s.layers for s in a.decode + b.decode} == {2.0}
    assert max(s.size for s in b.prefill) >= 300
    # The slow stage's steps take about four times as long. Each is its compute plus a sleep of three
    # times that, so the ratio holds on a loaded machine too, in the faster steps that other processes
    # did not preempt (their lower quartile). The bounds leave more than a factor of two for noise (a 2x slowdown
    # once read 1.39 on a loaded CI host); with HELIX_SLOWDOWN 1 on both stages the ratio is about 1.
    ratio = quartile(s.seconds for s in b.decode) / quartile(s.seconds for s in a.decode)
    assert 1.8 < ratio < 8.0, ratio
    gauges = coordinator.metrics.render().decode()
    assert 'helix_observed_step_seconds_per_layer{model_name="tiny-llama",node="b",phase="decode"}' in gauges
    assert 'helix_observed_link_bytes_per_second{from="a",model_name="tiny-llama",to="b"}' in gauges
    frames = observed.links[("a", "b")]
    assert frames and all(isinstance(f, LinkSample) and f.bytes >= TIMED_BYTES and f.seconds > 0 for f in frames)
    assert set(observed.links) <= {("a", "b"), ("b", "c")}  # the front end's own frames name no link of the plan
