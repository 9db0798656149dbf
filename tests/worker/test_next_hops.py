"""Links between stages, as the front end sees them: a route runs only while each of its stages
can forward to the next. A stage whose peer list does not name a next hop yet (a worker kept
across a replan, before its ConfigMap volume is refreshed) keeps the routes over it out of
rotation until the list does, so no request fails meanwhile; and a link between two stages that
is cut while the front end still reaches both leaves rotation within heartbeat + hung seconds,
its requests re-prefilled elsewhere, and comes back once the stage reaches the next again."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from dataplane_helpers import (
    NUM_LAYERS,
    assert_reference_runs,
    failovers,
    generate_with_logits,
    wait_for,
    write_plan,
    write_volume,
)

from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, ModelLimits

HEARTBEAT, HUNG = 0.25, 1.5
LIVENESS = {"HELIX_HEARTBEAT_SECONDS": str(HEARTBEAT), "HELIX_HUNG_SECONDS": str(HUNG)}
PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45], [9], [300, 301, 302, 303]]
MAX_TOKENS = 48


def _start(fleet, plan_path: Path, checkpoint: Path, nodes: list[str], **kwargs) -> dict[str, str]:
    children = [fleet.start_worker(plan_path, node, checkpoint, **kwargs) for node in nodes]
    return {child.name: fleet.wait(child).grpc_address for child in children}


@pytest.mark.timeout(240)
async def test_routes_wait_until_a_kept_stage_admits_a_new_next_hop(tmp_path: Path, checkpoint: Path, fleet) -> None:
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 3), ("b", 3, NUM_LAYERS)], [("a", 0, 3), ("c", 3, NUM_LAYERS)]])
    endpoints = await asyncio.to_thread(_start, fleet, plan_path, checkpoint, ["b", "c"])
    volume = write_volume(tmp_path / "peers", {"endpoints.json": json.dumps({"b": endpoints["b"]})})
    endpoints |= await asyncio.to_thread(_start, fleet, plan_path, checkpoint, ["a"], peers=volume / "endpoints.json")
    coordinator = Coordinator(plan, endpoints, ModelLimits(380, 2048),
                              Settings(reconnect_seconds=0.2, heartbeat_seconds=HEARTBEAT, hung_seconds=HUNG),
                              tls=fleet.member_tls("frontend"))
    to_b, to_c = coordinator.routes.routes
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        # "c" joined after "a" was made: "a" refuses it, so only a->b serves, and nothing fails.
        assert coordinator.routes.usable(to_b) and not coordinator.routes.usable(to_c)
        assert "not in this stage's peer list" in coordinator.routes.hop_problems["a"]["c"]
        before = await asyncio.gather(*(generate_with_logits(coordinator, p, 16) for p in PROMPTS))
        # The operator publishes the new list; the stage reads it, the next heartbeat brings a->c in.
        write_volume(volume, {"endpoints.json": json.dumps({"b": endpoints["b"], "c": endpoints["c"]})})
        await wait_for(lambda: coordinator.routes.usable(to_c), 5 * HEARTBEAT + 2)
        assert {coordinator.routes.choose(10).nodes for _ in range(4)} == {("a", "b"), ("a", "c")}
        after = await asyncio.gather(*(generate_with_logits(coordinator, p, 16) for p in PROMPTS))
    finally:
        await coordinator.close()
    assert_reference_runs(checkpoint, PROMPTS + PROMPTS, before + after, 16)


class CuttableProxy:
    """A TCP proxy to a port whose connections, once `mark()` was called, can be cut: while cut
    they pass nothing either way (a partition: no FIN, no RST), nor do new ones; `heal()` then
    closes them and lets new connections through. Connections made before the mark stay whole."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._marked = False
        self._open = asyncio.Event()
        self._open.set()
        self._cuttable: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def mark(self) -> None:
        self._marked = True

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        for writer in self._cuttable:
            writer.close()
        self._cuttable.clear()
        self._open.set()

    async def close(self) -> None:
        self.heal()
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cuttable = self._marked
        if cuttable:
            self._cuttable.append(writer)
            await self._open.wait()
            if writer.is_closing():
                return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        if cuttable:
            self._cuttable.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, cuttable), self._pipe(up_reader, writer, cuttable),
                             return_exceptions=True)
        writer.close()
        up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cuttable: bool) -> None:
        while data := await reader.read(1 << 16):
            if cuttable and not self._open.is_set():
                await self._open.wait()
                return  # healed: this connection was cut, and is closed now
            writer.write(data)
            await writer.drain()


@pytest.mark.timeout(240)
async def test_a_cut_link_between_stages_leaves_rotation_within_the_bound(tmp_path: Path, checkpoint: Path,
                                                                         fleet) -> None:
    """a->b is cut while the front end still reaches a and b (the messages ride the gRPC stream, which
    the proxy carries): the requests on a->b get their next token from c within heartbeat + hung
    seconds, a->b stays out of rotation (b itself up) until the link heals, then serves again."""
    plan, plan_path = write_plan(tmp_path, [[("a", 0, 3), ("b", 3, NUM_LAYERS)], [("c", 0, NUM_LAYERS)]])
    env = LIVENESS | {"HELIX_DATA_CHANNEL": "grpc"}
    endpoints = await asyncio.to_thread(_start, fleet, plan_path, checkpoint, ["b", "c"], env=env)
    proxy = CuttableProxy(int(endpoints["b"].rsplit(":", 1)[1]))
    endpoints["b"] = await proxy.start()
    volume = write_volume(tmp_path / "peers", {"endpoints.json": json.dumps({"b": endpoints["b"]})})
    endpoints |= await asyncio.to_thread(_start, fleet, plan_path, checkpoint, ["a"], env=env,
                                         peers=volume / "endpoints.json")
    # IWRR puts every other request on a->b (adaptive routing would prefer c's single hop at this load)
    settings = Settings(reconnect_seconds=0.2, heartbeat_seconds=HEARTBEAT, hung_seconds=HUNG, data_channel="grpc",
                        routing="iwrr")
    coordinator = Coordinator(plan, endpoints, ModelLimits(380, 2048), settings, tls=fleet.member_tls("frontend"))
    a_to_b = next(r for r in coordinator.routes.routes if r.nodes == ("a", "b"))
    progress: dict[int, list[float]] = {i: [] for i in range(len(PROMPTS))}  # when each token arrived

    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        proxy.mark()  # from here on the proxy's connections are a's (the front end's to b is made)
        tasks = [asyncio.create_task(generate_with_logits(coordinator, p, MAX_TOKENS, times=progress[i]))
                 for i, p in enumerate(PROMPTS)]
        await wait_for(lambda: all(len(p) >= 2 for p in progress.values()), 60)
        cut = time.monotonic()
        proxy.cut()
        left = await wait_for(lambda: not coordinator.routes.usable(a_to_b), HEARTBEAT + HUNG + 5)
        runs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert coordinator.routes.up["b"] and coordinator.routes.up["a"], "both stages still answer"
        assert "b" in coordinator.routes.hop_problems["a"]
        assert {coordinator.routes.choose(10).nodes for _ in range(3)} == {("c",)}
        during = await generate_with_logits(coordinator, PROMPTS[0], MAX_TOKENS)
        proxy.heal()
        back = await wait_for(lambda: coordinator.routes.usable(a_to_b), 20)
        assert {coordinator.routes.choose(10).nodes for _ in range(4)} == {("a", "b"), ("c",)}
        after = await asyncio.gather(*(generate_with_logits(coordinator, p, MAX_TOKENS) for p in PROMPTS[:2]))
    finally:
        await coordinator.close()
        await proxy.close()

    assert left <= HEARTBEAT + HUNG + 1.0, f"a->b left rotation {left:.2f}s after the cut"
    assert back < 10, f"a->b came back {back:.2f}s after the link healed"
    # The requests on a->b were re-prefilled on c, none waiting longer than the bound (+ a re-prefill)
    # between two of its tokens after the cut.
    gaps = [max((b - a for a, b in zip(times, times[1:]) if b > cut), default=0.0) for times in progress.values()]
    print(f"cut link: out of rotation after {left:.2f} s (bound {HEARTBEAT + HUNG:g} s), longest wait for a token "
          f"after the cut {max(gaps):.2f} s, {failovers(coordinator):.0f} requests re-prefilled, back {back:.2f} s "
          "after the heal", flush=True)
    assert failovers(coordinator) >= 1, "no request was on a->b when the link was cut"
    assert max(gaps) <= HEARTBEAT + HUNG + 2.0, gaps
    assert_reference_runs(checkpoint, PROMPTS + [PROMPTS[0]] + PROMPTS[:2], runs + [during] + after, MAX_TOKENS)
