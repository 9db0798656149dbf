"""Adaptive routing: the router prefers the faster, less loaded, closer route and composes routes
across the plan's pipelines; served over real stages, its requests keep the reference tokens,
take a route that crosses two pipelines, and avoid a dead and a hung stage with no failed
request; IWRR stays selectable and routes over the plan's pipelines only."""

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_helpers import (
    WORKER_ENV,
    assert_reference_runs,
    failovers,
    generate_with_logits,
    start_workers,
    wait_for,
    write_plan,
)

from helix_planner.plan_format import Plan
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.layouts import manual_plan
from helix_worker.frontend.adaptive import BOUND, AdaptiveRouter
from helix_worker.frontend.coordinator import Coordinator, ModelLimits
from helix_worker.frontend.hop_graph import hop_graph
from helix_worker.frontend.routes import RouteTable
from helix_worker.transport.links import StreamLink

# Two pipelines that split the six layers differently: a composed route may run a [0, 3) then d [3, 6).
PIPELINES = [[("a", 0, 3), ("b", 3, 6)], [("c", 0, 2), ("d", 2, 6)]]
PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45], [9], [300, 301, 302, 303]]
MAX_TOKENS = 32
HEARTBEAT, HUNG = 0.25, 1.5


def _router(pipelines: list[list[tuple[str, int, int]]] = PIPELINES) -> AdaptiveRouter:
    plan = manual_plan("m", 6, pipelines)
    table = RouteTable(plan, {n.name: f"127.0.0.1:{9000 + i}" for i, n in enumerate(plan.nodes)})
    for node in table.nodes:
        table.up[node] = True
        table.set_capacity(node, 1024, 16)
    graph = hop_graph(plan.layout, {n: f"127.0.0.1:{9000 + i}" for i, n in enumerate(table.nodes)}, 6)
    return AdaptiveRouter(table, graph, {n: 1.0 for n in table.nodes})


def _route(router: AdaptiveRouter) -> list[tuple[str, int, int]]:
    route = router.choose(tokens=20, prompt=19, remaining=16)
    assert route is not None
    return [(h.node, h.start, h.end) for h in route.hops]


def test_router_prefers_less_loaded_faster_closer_routes() -> None:
    twins = [[("x1", 0, 3), ("y1", 3, 6)], [("x2", 0, 3), ("y2", 3, 6)]]
    router = _router(twins)
    first = router.choose(20, 19, 16)
    assert first is not None
    router.admitted(first)
    assert first.nodes == ("x1", "y1")
    assert _route(router) == [("x2", 0, 3), ("y2", 3, 6)]  # the less loaded twin

    router = _router(twins)
    slow, fast = router.table.routes
    for _ in range(10):  # x1 -> y1's steps take 50 ms, x2 -> y2's 10 ms: x1 and y1 are slower than planned
        router.observed(slow, 0.05)
        router.observed(fast, 0.01)
    assert router.correction["x1"] > 1 > router.correction["x2"]
    assert [n for n, _, _ in _route(router)] == ["x2", "y2"]
    for _ in range(40):  # x1 and y1 carry none of this front end's requests: their corrections fade
        router.heartbeat("x1", 0.002, 0, 0)
        router.heartbeat("y1", 0.002, 0, 0)
    assert router.correction["x1"] == pytest.approx(1.0, abs=0.01)

    router = _router(twins)
    for node, rtt in {"x1": 0.002, "y1": 0.002, "x2": 0.002, "y2": 0.020}.items():
        router.heartbeat(node, rtt, 0, 0)
    assert _route(router)[-1][0] == "y1"  # the far stage is avoided
    router.heartbeat("y1", 0.002, running=40, waiting=10)  # other front ends crowd y1
    assert _route(router)[-1][0] == "y2"


def test_router_composes_routes_over_the_hop_graph() -> None:
    router = _router()
    assert router.table.next_hops["a"] == (router.table.routes[0].hops[1],)  # the pipelines' own
    assert {h.node for h in router.graph.next_hops()["a"]} == {"b", "d"}  # what heartbeats then ask about
    router.correction |= {"b": 4.0, "c": 4.0}  # slow b and c: a [0, 3) then d [3, 6) crosses the pipelines
    assert _route(router) == [("a", 0, 3), ("d", 3, 6)]
    router.table.hop_problems["a"] = {"d": "cannot reach d"}  # a may not forward to d: only the pipelines
    assert _route(router) in ([("a", 0, 3), ("b", 3, 6)], [("c", 0, 2), ("d", 2, 6)])
    router.table.hop_problems["a"] = {}
    router.table.held["d"] = 63  # d's KV is full (64 blocks of 16 tokens, 2% kept free)
    assert _route(router) == [("a", 0, 3), ("b", 3, 6)]
    router.table.up["b"] = False
    assert router.choose(20, 19, 16) is None  # every route needs b or d


def test_unknown_routing_is_refused() -> None:
    with pytest.raises(ServingError, match="HELIX_ROUTING='fastest': use one of adaptive, iwrr"):
        Settings.from_env({"HELIX_ROUTING": "fastest"})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[tuple[Plan, dict[str, str],
                                                                                         LocalFleet]]:
    directory = tmp_path_factory.mktemp("adaptive")
    plan, plan_path = write_plan(directory, PIPELINES)
    with LocalFleet(directory / "fleet", env=WORKER_ENV) as fleet:
        yield plan, start_workers(fleet, plan, plan_path, checkpoint), fleet


def _steps(coordinator: Coordinator) -> dict[str, float]:
    """Decode steps observed per route name."""
    return {s.labels["pipeline"]: s.value for m in coordinator.metrics.registry.collect() for s in m.samples
            if s.name == "helix_pipeline_step_seconds_count" and s.value > 0}


def _coordinator(plan: Plan, endpoints: dict[str, str], fleet: LocalFleet, routing: str) -> Coordinator:
    settings = Settings(routing=routing, reconnect_seconds=0.2, heartbeat_seconds=HEARTBEAT, hung_seconds=HUNG)
    return Coordinator(plan, endpoints, ModelLimits(380, 2048), settings, tls=fleet.member_tls("frontend"))


@pytest.mark.timeout(120)
async def test_iwrr_still_routes_over_the_pipelines(served, checkpoint: Path) -> None:
    plan, endpoints, fleet = served
    coordinator = _coordinator(plan, endpoints, fleet, "iwrr")
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        assert coordinator.router is None
        runs = await asyncio.gather(*(generate_with_logits(coordinator, p, MAX_TOKENS) for p in PROMPTS))
    finally:
        await coordinator.close()
    assert set(_steps(coordinator)) == {"a->b", "c->d"}  # equal weights: both, and nothing composed
    assert_reference_runs(checkpoint, PROMPTS, runs, MAX_TOKENS)


@pytest.mark.timeout(120)
async def test_adaptive_avoids_dead_and_hung_stages_over_a_composed_route(served, checkpoint: Path) -> None:
    plan, endpoints, fleet = served
    coordinator = _coordinator(plan, endpoints, fleet, "adaptive")
    hung = next(c for c in fleet.children if c.name == "c")
    assert coordinator.router is not None
    coordinator.router.correction["a"] = BOUND  # a looked slow: the requests start on c -> d, which then hangs
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        progress: dict[int, list[float]] = {i: [] for i in range(len(PROMPTS))}
        tasks = [asyncio.create_task(generate_with_logits(coordinator, p, MAX_TOKENS, times=progress[i]))
                 for i, p in enumerate(PROMPTS)]
        while not all(len(p) >= 2 for p in progress.values()):
            await asyncio.sleep(0.01)
        probe = [StreamLink(endpoints[n], "probe", max_message_bytes=1 << 20, tls=fleet.member_tls("frontend"))
                 for n in "abcd"]
        infos = [await link.describe(timeout=5) for link in probe]  # what stages report to the router
        assert sum(i.running_requests for i in infos) >= 2 and not any(i.waiting_requests for i in infos)
        fleet.kill(next(c for c in fleet.children if c.name == "b"))
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:  # only a [0, 3) -> d [3, 6) is left, across the two pipelines
            runs = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            await wait_for(lambda: not (coordinator.routes.up["b"] or coordinator.routes.up["c"]), HEARTBEAT + HUNG + 5)
            after = await generate_with_logits(coordinator, PROMPTS[0], MAX_TOKENS)
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
    finally:
        await coordinator.close()
    assert failovers(coordinator) >= 1  # the requests on c moved, none failed
    assert _steps(coordinator).get("a->d", 0) >= MAX_TOKENS - 1
    assert_reference_runs(checkpoint, PROMPTS + PROMPTS[:1], [*runs, after], MAX_TOKENS)
