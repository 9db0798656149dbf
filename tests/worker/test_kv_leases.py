"""KV leases: a killed front end's KV is released on every stage within the lease, and
front-end replicas share stages without double-booking their KV."""

import asyncio
import json
import time
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
    write_endpoints,
    write_plan,
)

from helix_worker.envs import Settings
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.layouts import manual_plan
from helix_worker.frontend.coordinator import Coordinator, ModelLimits
from helix_worker.frontend.routes import RouteTable
from helix_worker.stage.lease import LeaseKeeper

LEASE = 1.0


def test_lease_runs_out_only_without_a_stream() -> None:
    owners = {"fe-1": ["r1", "r2"], "fe-2": ["r3"]}
    streams = {"fe-1"}
    released: list[str] = []
    keeper = LeaseKeeper(LEASE, lambda: owners, streams.__contains__, released.extend)
    assert keeper.sweep(now=0.0) == []  # fe-2 seen without a stream: its lease starts
    assert keeper.sweep(now=0.9) == []
    streams.add("fe-2")  # it reconnects in time: the lease starts over next time it leaves
    assert keeper.sweep(now=1.5) == []
    streams.discard("fe-2")
    streams.discard("fe-1")
    assert keeper.sweep(now=2.0) == []
    assert keeper.sweep(now=2.99) == []
    assert keeper.sweep(now=3.0) == ["r1", "r2", "r3"] == released


def test_ledger_counts_what_other_front_ends_hold() -> None:
    table = RouteTable(manual_plan(MODEL, NUM_LAYERS, [[("a", 0, 3), ("b", 3, NUM_LAYERS)]]), {"a": "h:1", "b": "h:2"})
    for node in table.nodes:
        table.set_capacity(node, 160, 16)  # 10 blocks
    route = table.routes[0]
    assert table.fits(route, 160)
    assert table.observe("a", used_tokens=64, mine_tokens=16)  # 3 of the 4 blocks used are another replica's
    assert table.fits(route, 112) and not table.fits(route, 113)
    assert not table.observe("a", used_tokens=64, mine_tokens=16)


def _generate_until_cut(url: str) -> None:
    body = json.dumps({"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 400, "ignore_eos": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=120).read()
    except OSError:
        pass  # the front end is killed under it


@pytest.mark.timeout(180)
async def test_killed_front_end_kv_released_within_lease(tmp_path: Path, checkpoint: Path) -> None:
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 3), ("b", 3, NUM_LAYERS)]])
    env = WORKER_ENV | {"HELIX_LEASE_SECONDS": str(LEASE), "HELIX_SLOWDOWN": "10"}
    with LocalFleet(tmp_path / "fleet", env=env) as fleet:
        endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
        started = fleet.start_frontend(plan_path, write_endpoints(tmp_path, endpoints), checkpoint,
                                       env={"HELIX_SLOWDOWN": "1"})
        frontend = await asyncio.to_thread(fleet.wait, started)
        tls = fleet.member_tls("probe")
        client = asyncio.create_task(asyncio.to_thread(_generate_until_cut, frontend.http_url))
        deadline = time.monotonic() + 60
        while not all([await kv_used(address, tls) for address in endpoints.values()]):
            assert time.monotonic() < deadline, "the request never held KV on both stages"
            await asyncio.sleep(0.05)
        fleet.kill(frontend)
        killed = time.monotonic()
        while held := [await kv_used(address, tls) for address in endpoints.values()]:
            if not any(held):
                break
            assert time.monotonic() - killed < 1.2 * LEASE + 2.0, f"KV still held {held} after the lease"
            await asyncio.sleep(0.05)
        released = time.monotonic() - killed
        await client
    assert released >= 0.5 * LEASE, f"released after {released:.2f}s, before the lease could run out"


@pytest.mark.timeout(240)
async def test_front_end_replicas_count_each_others_kv(tmp_path: Path, checkpoint: Path) -> None:
    # 384 KV tokens (24 blocks) per stage. Replica A's two requests take 2 x 7 blocks at once and
    # grow to 2 x 12; replica B's request needs 11 blocks for its prompt. A replica that assumed it
    # owned the stages would send it at once and leave it waiting there for A's requests, past the
    # step timeout (a failover, then a 503); counting what the stages report for A, B holds it in
    # its own queue until there is room.
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 3), ("b", 3, NUM_LAYERS)]])
    long_prompts = [[(7 * i + j) % 300 + 5 for j in range(100)] for i in range(2)]
    wide_prompt = [(3 * j) % 300 + 5 for j in range(170)]
    env = WORKER_ENV | {"HELIX_KV_CACHE_TOKENS": "384", "HELIX_SLOWDOWN": "10"}
    with LocalFleet(tmp_path / "fleet", env=env) as fleet:
        endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
        settings = Settings(heartbeat_seconds=0.1, step_timeout_seconds=2)
        replicas = [Coordinator(plan, endpoints, ModelLimits(380, 2048), settings,
                                tls=fleet.member_tls(f"frontend-{i}")) for i in range(2)]
        for replica in replicas:
            await replica.start()
            await replica.wait_ready(30)
        try:
            first = [asyncio.create_task(generate_with_logits(replicas[0], p, 80)) for p in long_prompts]
            deadline = time.monotonic() + 30
            while min(replicas[1].routes.others.values()) < 14:  # B has heard what A holds
                assert time.monotonic() < deadline, f"replica B never saw A's KV: {replicas[1].routes.others}"
                await asyncio.sleep(0.01)
            assert not any(task.done() for task in first), "A's requests finished before B's arrived"
            second = await generate_with_logits(replicas[1], wide_prompt, 5)
            runs = await asyncio.gather(*first)
        finally:
            for replica in replicas:
                await replica.close()
    assert_reference_runs(checkpoint, long_prompts, runs, 80)
    assert_reference_runs(checkpoint, [wide_prompt], [second], 5)
    assert [failovers(replica) for replica in replicas] == [0, 0]
