"""`helix up` rolls a new plan out blue/green with no failed request, slows a worker down while
it runs, and replans on a sustained drift of observed capacity, not on a blip."""

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import ClientSession, ClientTimeout
from dataplane_helpers import MODEL, NUM_LAYERS, WORKER_ENV, write_plan

from helix_planner.cluster import Node
from helix_planner.models import get_model
from helix_planner.network import NetworkModel, build_cluster
from helix_planner.observed import Drift, DriftTracker, parse_observed
from helix_planner.profiles import load_catalog
from helix_planner.sim.calibration import RequestTotals, ServedLoad, ServedMetrics
from helix_planner.throughput.profiled import layer_curves
from helix_worker.fleet.delayline import stop_relays
from helix_worker.fleet.emulated import Served
from helix_worker.fleet.entry import start_loopback_entry
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.plans import FleetPlan, PlanInputs, plan_with
from helix_worker.fleet.replan import Replanner, planning_reference
from helix_worker.fleet.rollout import Generation, Launch, roll_out, start_generation, switch
from helix_worker.fleet.served_metrics import scrape

MAX_TOKENS = 12
PROMPT = [5, 6, 7, 8]


class Load:
    """Closed-loop streams of greedy requests over keep-alive HTTP, and KServe gRPC calls, until stopped."""

    def __init__(self, http_url: str, grpc_address: str, streams: int) -> None:
        self.http_url, self.grpc_address, self.streams = http_url, grpc_address, streams
        self.answers: list[list[int]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    async def _http(self, session: ClientSession) -> None:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
                "stream": True, "logprobs": 0}
        while not self.stop.is_set():
            try:
                tokens = 0
                async with session.post(self.http_url + "/v1/completions", json=body) as response:
                    if response.status != 200:
                        self.failures.append(f"HTTP {response.status}")
                        continue
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            tokens += len(json.loads(line[6:])["choices"][0]["text"]) >= 0
                self.answers.append([tokens])
            except Exception as err:  # every failure counts, whatever its kind
                self.failures.append(repr(err))

    async def _run(self) -> None:
        async with ClientSession(timeout=ClientTimeout(total=60)) as session:
            await asyncio.gather(*(self._http(session) for _ in range(self.streams)))

    def _grpc(self) -> None:
        with grpcclient.InferenceServerClient(url=self.grpc_address) as client:
            while not self.stop.is_set():
                inputs = [grpcclient.InferInput("input_ids", [len(PROMPT)], "INT64"),
                          grpcclient.InferInput("max_tokens", [1], "INT32"),
                          grpcclient.InferInput("ignore_eos", [1], "BOOL")]
                for tensor, value in zip(inputs, (np.array(PROMPT, dtype=np.int64),
                                                  np.array([MAX_TOKENS], dtype=np.int32), np.array([True]))):
                    tensor.set_data_from_numpy(value)
                try:
                    self.answers.append(client.infer(MODEL, inputs, client_timeout=60).as_numpy("output_ids").tolist())
                except Exception as err:
                    self.failures.append(f"{err!r} {getattr(err, 'status', lambda: '')()} {err}")

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=lambda: asyncio.run(self._run())), threading.Thread(target=self._grpc)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)


def _timed_request(url: str) -> float:
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "ignore_eos": True}).encode()
    began = time.monotonic()
    with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", body), timeout=60) as response:
        assert len(json.loads(response.read())["choices"][0]["text"]) > 0
    return time.monotonic() - began


@pytest.mark.timeout(120)
def test_a_slowed_worker_then_a_new_plan_rolled_out_under_load_fail_no_request(tmp_path: Path,
                                                                               checkpoint: Path) -> None:
    blue_plan, _ = write_plan(tmp_path, [[("a", 0, NUM_LAYERS)]])
    green_plan, _ = write_plan(tmp_path, [[("c", 0, NUM_LAYERS)]])
    relays, portals = start_loopback_entry(tmp_path / "entry", 0, 0)
    launch = Launch(tmp_path, checkpoint, MODEL, WORKER_ENV, None, portals, timeout=60)
    try:
        blue = start_generation(launch, 0, FleetPlan(blue_plan, {"a": 1.0}))
        switch(launch, blue)
        normal = min(_timed_request(portals.http_url) for _ in range(3))
        launch.slowdown_file("a").write_text("10")  # the running worker turns 10x slower
        assert _timed_request(portals.http_url) > normal + MAX_TOKENS * 0.005
        lines: list[str] = []
        with Load(portals.http_url, portals.grpc_address, 2) as load:
            deadline = time.monotonic() + 20
            while len(load.answers) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            served_by_blue = len(load.answers)
            green = roll_out(launch, blue, FleetPlan(green_plan, {"c": 1.0}), lines.append)
            time.sleep(1.0)
        assert load.failures == []
        assert served_by_blue > 0 and len(load.answers) > served_by_blue + 3
        assert lines[0].startswith(f"plan {green_plan.plan_hash} serves") and "rolled out" in lines[1]
        assert blue.served.frontend.process.poll() is not None and blue.fleet.children == []
        assert all(c.process.poll() is None for c in green.fleet.children)
        seen = scrape(green.fleet, None, green.served.ready_url)  # what the replanner calibrates with
        assert seen.stages["c"].steps > 0 and seen.stages["c"].chunks > 0 and seen.round_trips[("c",)][0] > 0
        assert seen.requests.finished > 0 and seen.requests.output_tokens >= MAX_TOKENS * seen.requests.finished
        assert seen.capacity.plan_hash == green_plan.plan_hash and seen.capacity.nodes["c"].decode
        green.fleet.stop()
    finally:
        stop_relays(relays)


class Observations:
    """A stand-in for the front end's observed-capacity document: every plan node's recent decode
    and prefill steps, each `ratio` times as long as its profile says, but for the `idle` ones (no steps)."""

    def __init__(self, fleet_plan: FleetPlan) -> None:
        self.fleet_plan, self.ratio = fleet_plan, {n.name: 1.5 for n in fleet_plan.plan.nodes}  # shared cores
        self.idle: set[str] = set()

    def __call__(self, http_url: str) -> dict[str, object]:
        inputs = self.fleet_plan.inputs
        assert inputs is not None
        nodes = {}
        for node in (n for n in self.fleet_plan.plan.nodes if n.name not in self.idle):
            gpu = inputs.catalog.gpu(inputs.cluster.node(node.name).gpu)
            prompt, decode = layer_curves(inputs.catalog, inputs.spec, gpu)
            layers, ratio = node.end - node.start, self.ratio[node.name]
            nodes[node.name] = {"gpuType": gpu.name, "layers": [node.start, node.end],
                                "decode": [[8, layers, decode(8) * layers * ratio]] * 6,
                                "prefill": [[256, layers, prompt(256) * layers * ratio]] * 6}
        return {"planHash": self.fleet_plan.plan.plan_hash, "nodes": nodes, "links": {}}


def test_the_loop_replans_on_a_sustained_drift_and_not_on_a_blip(tmp_path: Path) -> None:
    catalog, spec = load_catalog(), get_model("llama2-70b")
    cluster = build_cluster([Node(f"n{i}", "A100", "r") for i in range(8)], NetworkModel(), name="eight")
    inputs = PlanInputs(cluster, catalog, spec, 2.0)
    first = FleetPlan(plan_with(cluster, spec, 2.0, catalog, lambda _: None), {n.name: 1.0 for n in cluster.nodes},
                      inputs)
    observed, now, lines = Observations(first), [0.0], []

    unreachable: list[str] = []

    def metrics(_: Generation) -> ServedMetrics:
        """Two requests finish a second, each having taken 4 s: 8 in flight, of 100 prompt and 50 output tokens."""
        if unreachable:
            raise OSError(unreachable[0])
        done = 2 * now[0]
        return ServedMetrics(now[0], {}, {}, RequestTotals(done, 4 * done, 100 * done, 50 * done),
                             parse_observed(observed("")))

    replanner = Replanner(metrics, DriftTracker(threshold=0.25, debounce_seconds=5.0), routing="iwrr",
                          poll_seconds=1.0, source=observed, clock=lambda: now[0], out=lines.append)
    serving = Generation(0, first, LocalFleet(tmp_path / "logs"), Served({}, "http://stand-in", "", None, ""),
                         tmp_path / "plan.json")  # type: ignore[arg-type]

    def poll(seconds: int) -> list[FleetPlan]:
        plans = []
        for _ in range(seconds):
            now[0] += 1.0
            plans += filter(None, [replanner.check(serving)])
        return plans

    idle = next(n.name for n in first.plan.nodes if n.name != "n0")
    observed.idle = {idle}  # routing sends it nothing yet: the reference is taken without it
    unreachable.append("connection refused")  # nor can the served metrics be read for a while: said once
    assert poll(4) == [] and not replanner.referenced(serving)
    assert poll(3) == [] and replanner.referenced(serving)  # the reference, once it served for the debounce
    unreachable.clear()
    assert [line for line in lines if "connection refused" in line] == [
        "served metrics: cannot read them (connection refused); reading again at the next poll"]
    observed.idle = set()  # measured from now on, against its own first figure, not its description
    observed.ratio["n0"] = 4.5  # a blip: three slow seconds, then as before
    assert poll(3) == []
    observed.ratio["n0"] = 1.5
    assert poll(10) == [] and not any("drift" in line for line in lines)
    assert f"observed capacity, first measured: {idle} 1.50x" in lines
    observed.ratio["n0"] = 4.5  # sustained: 3x slower than at the reference
    began, plans = now[0], poll(10)
    assert len(plans) == 1 and replanner.detected and 5.0 <= replanner.detected[0][0] - began <= 7.0
    assert any(line.startswith("observed drift: n0 decodes 4.50x slower than its A100 profile") for line in lines)
    through_n0 = sum(p.tokens_per_second for p in plans[0].plan.pipelines if "n0" in {s.node for s in p.stages})
    assert through_n0 < plans[0].plan.throughput / 2  # the slow node no longer bounds every token
    assert {n.gpu_type for n in plans[0].plan.nodes} == {"A100"}  # planned on derived types, served on real ones
    # Planned on the change since the reference (n0 3x slower, the rest as described), not on the
    # shared cores' 1.5x, which the calibration carries instead; judged under the load served.
    judged = replanner.judged[0]
    assert {n.gpu_type for n in judged.serving.plan.nodes if n.name == "n0"} == {"A100@observed-3.00x"}
    assert (judged.calibration.compute_scale, judged.calibration.prompt_scale) == pytest.approx((1.5, 1.5))
    assert judged.load == ServedLoad(8.0, 100.0, 50.0) and judged.objective.window.clients == 8
    assert judged.chosen.decode_throughput >= judged.serving.decode_throughput * 1.1
    assert any(line.startswith(f"  replanning: on the observed capacity the serving plan decodes "
                               f"{judged.serving.decode_throughput:.1f} tok/s simulated") for line in lines), lines
    assert poll(10) == []  # settled: the same drift does not trigger again


def test_a_change_every_node_shares_is_left_to_the_calibration() -> None:
    """Where workers share cores, slowing one makes the rest read faster: planned as one node slower, not
    as one node slower and the rest faster."""
    baselines = {"a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0, "a>b": 0.9}
    now = [Drift("a", 3.0, ""), Drift("b", 1.5, ""), Drift("c", 1.5, ""), Drift("d", 1.52, ""), Drift("a>b", 0.5, "")]
    reference, common = planning_reference(now, baselines)
    assert common == pytest.approx(0.75)  # the low median of the nodes' changes: links do not count
    assert {k: now_ratio.ratio / reference[now_ratio.key] for k, now_ratio in zip("abcd", now)} == pytest.approx(
        {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.52 / 1.5})
    assert reference["a>b"] == 0.9  # a link's share is its own
    alone = [Drift("a", 4.0, ""), Drift("b", 2.0, ""), Drift("c", 2.0, "")]  # one node slower, the rest as they were
    assert planning_reference(alone, baselines) == ({**baselines}, 1.0)
