"""Slow a worker 2x while the emulated fleet serves: detection, replan, rollout, recovery.

    sudo python bench/closed_loop.py --part replan            # the 12-layer model, 8 streams of 128/64
    sudo python bench/closed_loop.py --part replan --quick    # 8 layers, 4 streams of 32/16

On closed_loop's emulated fleet (bench/closed_loop-fleet.yaml, real namespaces and shaped links,
this CPU measured), `helix up`'s own machinery serves the planner's max-flow plan behind its public
entry (`helix_worker.fleet.entry`), and closed-loop streams run through every phase without pause
(keep-alive HTTP, streamed, greedy, ignore_eos; every streamed token timed where it arrives):
  1. baseline: the plan as made; at its end the replanner (`helix_worker.fleet.replan`) takes
     its reference (it is not asked earlier, so that the baseline is one plan);
  2. degraded: the busiest fastest worker turns 2x slower (its HELIX_SLOWDOWN_FILE); the
     replanner, polled every second, reports the drift sustained, judges the serving objective's
     candidates for the observed capacity by the simulator calibrated to the served fleet under
     the load it served, and returns the best, which is held until the degraded window has been
     measured;
  3. recovered: that plan rolled out blue/green (`rollout`), measured once the old one is gone;
  4. fresh: the same planning from scratch with the truth: the serving objective for the
     degraded fleet (the slowed worker on a 2x slower type, nothing else changed), judged by the
     same calibrated simulator and load, rolled out the same way and measured alone.
Tok/s is streamed tokens over each window. The ratio recovered / fresh is what the replan
recovered of what planning with the truth gives (target >= 0.90); failed requests count every
request of every phase that raised, answered non-200 or came back short (target 0). Time to
detect: slowdown to the sustained drift (its debounce included); time to recover: that plus the
rollout's own time, to the new plan serving alone.
"""

import asyncio
import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from aiohttp import ClientSession, ClientTimeout
from closed_loop import MODEL, QUICK, WORKER_ENV, Mode, Setup, say
from engine import Load
from results import markdown_table

from helix_planner.cluster import Cluster, Node
from helix_planner.observed import DriftTracker
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions
from helix_planner.serving_plan import plan_for_serving
from helix_worker.fleet.emulated import Portals
from helix_worker.fleet.netem import EmulatedNetwork
from helix_worker.fleet.plans import FleetPlan, PlanInputs, plan_with
from helix_worker.fleet.replan import Judged, Replanner
from helix_worker.fleet.rollout import Generation, Launch, retire, start_generation, switch
from helix_worker.fleet.served_metrics import scrape

FACTOR = 2.0  # how much slower the chosen worker turns
DEBOUNCE_SECONDS = 10.0
SETTLE_SECONDS = 5.0  # after a change, before its window starts
PHASE_TIMEOUT = 180.0


@dataclass(frozen=True)
class Windows:
    measure: float  # seconds of each measured window
    warmup: float


QUICK_WINDOWS, FULL_WINDOWS = Windows(15.0, 5.0), Windows(30.0, 10.0)


@dataclass
class Traffic:
    """Closed-loop streams until `stop`: every streamed token's arrival time, every failed request."""
    url: str
    load: Load
    tokens: list[float] = field(default_factory=list)
    ttfts: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds to the first token)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def _stream(self, session: ClientSession, index: int) -> None:
        while not self.stop.is_set():
            index += self.load.concurrency
            body = {"model": MODEL, "prompt": [5 + (index * 7 + j) % 200 for j in range(self.load.prompt)],
                    "max_tokens": self.load.output, "temperature": 0, "ignore_eos": True, "stream": True}
            started, count = time.monotonic(), 0
            try:
                async with session.post(self.url + "/v1/completions", json=body) as response:
                    if response.status != 200:
                        self.failures.append(f"HTTP {response.status}: {(await response.text())[:200]}")
                        continue
                    async for line in response.content:
                        if line.startswith(b"data: {") and json.loads(line[6:]).get("choices"):
                            now = time.monotonic()
                            if count == 0:
                                self.ttfts.append((started, now - started))
                            self.tokens.append(now)
                            count += 1
                if count < self.load.output:
                    self.failures.append(f"{count} of {self.load.output} tokens")
            except Exception as err:  # a failed request is counted whatever failed
                self.failures.append(f"{type(err).__name__}: {err}")

    async def _run(self) -> None:
        async with ClientSession(timeout=ClientTimeout(total=PHASE_TIMEOUT)) as session:
            await asyncio.gather(*(self._stream(session, i) for i in range(self.load.concurrency)))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread

    def rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.tokens) / (end - start)

    def ttft_p95(self, start: float, end: float) -> float:
        seen = sorted(s for t, s in self.ttfts if start <= t < end)
        return statistics.quantiles(seen, n=20)[-1] if len(seen) > 1 else float("nan")


@dataclass(frozen=True)
class Timing:
    detect: float  # slowdown -> sustained drift reported
    switch: float  # rollout start -> the new plan's front end on the entry
    rollout: float  # rollout start -> the old plan drained and stopped
    trigger: str  # the sustained drift, as the replanner said it

    @property
    def recover(self) -> float:
        """Slowdown -> the new plan serving alone, had the rollout started at detection."""
        return self.detect + self.rollout


@dataclass(frozen=True)
class Phase:
    name: str
    plan: Plan
    start: float
    end: float
    simulated: float = math.nan  # decode tok/s the replanner's calibrated simulator gave it on the degraded fleet


def run(setup: Setup, net: EmulatedNetwork, portals: Portals) -> str:
    mode, workdir, cluster, spec, catalog = setup.mode, setup.workdir, setup.cluster, setup.spec, setup.catalog
    windows = QUICK_WINDOWS if mode == QUICK else FULL_WINDOWS
    types = {slowdown: name for name, slowdown in setup.slowdowns.items()}
    slowdowns = {node.name: setup.slowdowns[node.gpu] for node in cluster.nodes}
    inputs = PlanInputs(cluster, catalog, spec, mode.plan_seconds)
    first = FleetPlan(plan_with(cluster, spec, mode.plan_seconds, catalog, lambda _: None), slowdowns, inputs)
    slowed = busiest_fastest(first.plan, cluster)
    say(f"plan {first.plan.plan_hash}: {first.plan.throughput:.1f} tok/s planned; {slowed} will turn "
        f"{FACTOR:g}x slower")
    phases: list[Phase] = []
    launch = Launch(workdir, setup.checkpoint, MODEL, WORKER_ENV, net, portals, timeout=PHASE_TIMEOUT)
    serving = start_generation(launch, 0, first)
    try:
        switch(launch, serving)
        traffic = Traffic(portals.http_url, mode.load)
        client = traffic.start()
        replanner = Replanner(lambda generation: scrape(generation.fleet, net, generation.served.ready_url),
                              DriftTracker(debounce_seconds=DEBOUNCE_SECONDS), poll_seconds=1.0, out=say)
        replanner.check(serving)  # the plan is seen serving; its reference is taken at the baseline's end
        began = time.monotonic() + windows.warmup
        wait_until(lambda: time.monotonic() >= began + windows.measure, lambda: None, "the baseline's end")
        wait_until(lambda: replanner.referenced(serving), lambda: replanner.check(serving),
                   "the replanner's reference")
        phases.append(Phase("baseline", first.plan, began, began + windows.measure))
        say(f"baseline: {traffic.rate(began, began + windows.measure):.1f} tok/s")

        slowed_at = time.monotonic()
        launch.slowdown_file(slowed).write_text(str(slowdowns[slowed] * FACTOR))
        say(f"{slowed}: slowdown {slowdowns[slowed] * FACTOR:g} from now on")
        degraded_end = slowed_at + SETTLE_SECONDS + windows.measure
        better: list[FleetPlan] = []
        wait_until(lambda: bool(better) and time.monotonic() >= degraded_end,
                   lambda: better or better.extend(filter(None, [replanner.check(serving)])), "a replan")
        detected, trigger = replanner.detected[-1]
        judged = replanner.judged[-1]
        phases.append(Phase("degraded", first.plan, slowed_at + SETTLE_SECONDS, degraded_end,
                            judged.serving.decode_throughput))
        rollout_began = time.monotonic()
        serving, switched = roll_out(launch, serving, better[0])
        alone = time.monotonic()
        timing = Timing(detected - slowed_at, switched - rollout_began, alone - rollout_began, trigger)
        say(f"detected {timing.detect:.1f}s after the slowdown; the rollout put the new plan on the entry after "
            f"{timing.switch:.1f}s and had it serving alone after {timing.rollout:.1f}s")
        phases.append(measure(traffic, "recovered", serving.fleet_plan.plan, windows, judged.chosen.decode_throughput))

        degraded = Cluster(nodes=[Node(n.name, degraded_type(n, slowed, slowdowns, types), n.region)
                                  for n in cluster.nodes], links=cluster.links, name=cluster.name)
        fresh_plan, fresh_candidates = plan_for_serving(
            degraded, spec, PlannerOptions(time_limit=mode.plan_seconds, throughput_model="profiled"), judged.lengths,
            judged.objective, catalog=catalog)
        fresh = next(c for c in fresh_candidates if c.plan.layout == fresh_plan.layout)
        say(f"fresh plan for the degraded fleet: {fresh_plan.plan_hash}, {fresh_plan.throughput:.1f} tok/s planned, "
            f"{fresh.decode_throughput:.1f} simulated")
        serving, _ = roll_out(launch, serving, FleetPlan(fresh_plan, slowdowns, replace(inputs, cluster=degraded)))
        phases.append(measure(traffic, "fresh plan", fresh_plan, windows, fresh.decode_throughput))
        traffic.stop.set()
        client.join(PHASE_TIMEOUT)
    finally:
        serving.fleet.stop()
    return report(phases, traffic, slowed, mode, timing, judged)


def busiest_fastest(plan: Plan, cluster: Cluster) -> str:
    """The node of the fastest GPU type that carries the most layers' worth of flow: slowing it matters."""
    fastest = min(cluster.node(n.name).gpu for n in plan.nodes)  # CPU < CPU-x2 < CPU-x3
    candidates = [n for n in plan.nodes if cluster.node(n.name).gpu == fastest]
    return max(candidates, key=lambda n: (n.end - n.start) * sum(
        p.tokens_per_second for p in plan.pipelines if n.name in {s.node for s in p.stages})).name


def degraded_type(node: Node, slowed: str, slowdowns: dict[str, float], types: dict[float, str]) -> str:
    if node.name != slowed:
        return node.gpu
    factor = slowdowns[slowed] * FACTOR
    if factor not in types:
        raise SystemExit(f"no measured type is {factor:g}x slower: slow a worker whose type has one")
    return types[factor]


def wait_until(done: Callable[[], bool], poll: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} after {PHASE_TIMEOUT:.0f}s")
        poll()
        time.sleep(0.5)


def roll_out(launch: Launch, serving: Generation, fleet_plan: FleetPlan) -> tuple[Generation, float]:
    """The new generation, and when it took the entry (the old one is retired on return)."""
    new = start_generation(launch, serving.number + 1, fleet_plan)
    switch(launch, new)
    switched = time.monotonic()
    say(f"plan {fleet_plan.plan.plan_hash} serves; draining plan {serving.fleet_plan.plan.plan_hash}")
    retire(serving, 30.0)
    return new, switched


def measure(traffic: Traffic, name: str, plan: Plan, windows: Windows, simulated: float) -> Phase:
    start = time.monotonic() + SETTLE_SECONDS
    time.sleep(SETTLE_SECONDS + windows.measure)
    say(f"{name}: {traffic.rate(start, start + windows.measure):.1f} tok/s")
    return Phase(name, plan, start, start + windows.measure, simulated)


def report(phases: list[Phase], traffic: Traffic, slowed: str, mode: Mode, timing: Timing, judged: Judged) -> str:
    rates = {p.name: traffic.rate(p.start, p.end) for p in phases}
    table = markdown_table(
        ("phase", "plan", "window s", "served decode tok/s", "p95 TTFT s", "max flow tok/s (on its own inputs)",
         "simulated decode tok/s (calibrated, degraded)"),
        [(p.name, p.plan.plan_hash[:8], f"{p.end - p.start:.0f}", f"{rates[p.name]:.1f}",
          f"{traffic.ttft_p95(p.start, p.end):.2f}", f"{p.plan.throughput:.1f}",
          f"{p.simulated:.1f}" if math.isfinite(p.simulated) else "") for p in phases])
    served = judged.load
    judging = (f"The replanner judged the serving plan and {len(judged.candidates)} candidate(s) by the simulator "
               f"calibrated to the serving fleet ({judged.calibration.describe()}) under the load the front end "
               f"held ({served.in_flight:.1f} requests in flight, {served.prompt_tokens:.0f} prompt and "
               f"{served.output_tokens:.0f} output tokens each); the fresh plan is the same planning on the "
               f"degraded fleet as it is.")
    ratio = rates["recovered"] / rates["fresh plan"] if rates.get("fresh plan") else float("nan")
    load = mode.load
    return (f"{slowed} turned {FACTOR:g}x slower under {load.concurrency} closed-loop streams ({load.prompt}-token "
            f"prompts, {load.output} output tokens; model {mode.shape.num_layers} layers, hidden "
            f"{mode.shape.hidden_size}). Time to detect {timing.detect:.1f} s (debounce {DEBOUNCE_SECONDS:g} s "
            f"included); the rollout put the new plan on the entry after {timing.switch:.1f} s and had it serving "
            f"alone after {timing.rollout:.1f} s (the old plan drained), so time to recover {timing.recover:.1f} s "
            f"(held until the degraded window ended, the rollout started later). The drift that triggered the "
            f"replan: {timing.trigger}. Recovered / fresh plan: {ratio:.2f} "
            f"(target >= 0.90). Failed requests: {len(traffic.failures)} (target 0)"
            + (f", e.g. {traffic.failures[0]}" if traffic.failures else "") + f". {judging}\n\n" + table + "\n")
