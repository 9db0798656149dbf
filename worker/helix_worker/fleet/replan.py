"""`helix up` replans from observed capacity: poll the serving front end's observed-capacity
document, track drift, and when it persists plan again with the capacity as observed.

Every `poll_seconds` the replanner reads `GET /v2/helix/observed` of the serving front end
(`helix_planner.observed`: the stages' recent step times and the links' measured throughput)
and turns it into ratios against the inputs the plan was made from: a node's step time over its
profile, a link's bandwidth over its description. The first document that measures the plan once it
has served for the debounce time (past a rollout's overlap with the plan before) is the reference
(`DriftTracker.settle`; a node or link measured only later, because routing sent nothing through it
until then, is referenced when first measured): the fleet as it served then, contention and all, so only
a change from there counts. A change beyond the tracker's threshold that lasts its
debounce is a sustained drift. The effective inputs scale the plan's inputs by each node's change
since the reference beyond the change all nodes share (`planning_reference`, `relative_to`), not
by the ratio to the catalog: where workers share cores, as on a machine emulating a fleet, every
step time carries the others' load, which moves with the placement (slowing one worker frees
time for the rest) and is no property of a node.

On a sustained drift the replanner makes the serving objective's candidates for the effective
inputs (drifted nodes on slowed-down types, drifted links at their observed bandwidth): the
max-flow plan of each stage floor, separate pipelines, and max flow without the slowest GPU types
(`ALTERNATIVES`, `helix_planner.serving_plan`). It judges them, and the serving plan, with the
simulator calibrated to the served fleet (`helix_planner.sim.calibration`: the stages' and front
end's metrics over the last one to two `LOAD_WINDOW_SECONDS`) under the load the front end held
then (requests in flight, their mean prompt and output), routed as the front end routes. Max flow
alone is no judge here: on a slowed fleet several placements tie on it and serve up to a third
apart. It returns the best candidate if it decodes at least `min_gain` more than the serving
plan, simulated alike. Either way it says what it saw and what it decided, and that drift
is settled, so it does not trigger again.
"""

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from helix_planner.cluster import Cluster
from helix_planner.errors import PlanningError
from helix_planner.observed import (
    LINK_SEPARATOR,
    Drift,
    DriftTracker,
    Observed,
    StepSample,
    effective_inputs,
    measured_ratios,
    parse_observed,
    plan_value,
    restore_gpu_types,
)
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions
from helix_planner.profiles import Catalog
from helix_planner.serving_plan import FASTEST, Candidate, ServingObjective, judge, plan_for_serving
from helix_planner.sim.calibration import Calibration, ServedLoad, ServedMetrics, calibrate
from helix_planner.sim.workload import LengthTrace, load_lengths
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.fleet.plans import FleetPlan, PlanInputs
from helix_worker.fleet.rollout import Generation
from helix_worker.fleet.served_metrics import fetch_observed

POLL_SECONDS = 2.0
LOAD_WINDOW_SECONDS = 60.0  # how often the served metrics are read for a drift's load and calibration
MIN_JUDGED_REQUESTS = 32  # a candidate's simulated closed loop runs at least this many requests
# Besides the stage floors: separate pipelines, and max flow without the slowest GPU types. Petals' and Swarm's
# layouts, whose routes enter a node's range midway, are left out: the calibration was validated on whole-range
# pipelines, and twice in the replan bench the simulator put a Petals plan first that served 6-11% below the
# fresh plan.
ALTERNATIVES = ("separate", FASTEST)


def planning_reference(ratios: list[Drift], baselines: Mapping[str, float]) -> tuple[Mapping[str, float], float]:
    """The reference to plan from: each node's baseline times the change every node shares (the low median of
    the nodes' changes since their baselines), and that change. Where workers share cores, slowing one frees
    time for the others, which all read faster since the reference; a placement turns on the nodes' speeds
    relative to each other, and the calibrated simulator that judges it carries the common change."""
    changes = [r.ratio / baselines[r.key] for r in ratios if not r.is_link and r.key in baselines]
    common = statistics.median_low(changes) if changes else 1.0
    return {key: value if LINK_SEPARATOR in key else value * common for key, value in baselines.items()}, common


def relative_to(observed: Observed, baselines: Mapping[str, float]) -> Observed:
    """`observed` as if each node and link had matched its description at the reference: step times
    divided by the node's reference ratio, frame times multiplied by the link's (its share of the
    described bandwidth), so that only the change since the reference remains."""
    def steps(samples: tuple[StepSample, ...], ratio: float) -> tuple[StepSample, ...]:
        return tuple(replace(s, seconds=s.seconds / ratio) for s in samples)

    nodes = {name: replace(n, decode=steps(n.decode, baselines.get(name, 1.0)),
                           prefill=steps(n.prefill, baselines.get(name, 1.0)))
             for name, n in observed.nodes.items()}
    links = {(src, dst): tuple(replace(s, seconds=s.seconds * baselines.get(f"{src}{LINK_SEPARATOR}{dst}", 1.0))
                               for s in samples)
             for (src, dst), samples in observed.links.items()}
    return replace(observed, nodes=nodes, links=links)


@dataclass(frozen=True)
class Judged:
    """How a replan was decided: the simulator's calibration and load, and what it made of each plan."""
    calibration: Calibration
    load: ServedLoad
    objective: ServingObjective
    lengths: LengthTrace
    serving: Candidate  # the serving plan, on the effective inputs
    chosen: Candidate
    candidates: list[Candidate]


@dataclass
class Replanner:
    measure: Callable[[Generation], ServedMetrics]  # the serving generation's metrics (`served_metrics.scrape`)
    tracker: DriftTracker = field(default_factory=DriftTracker)
    routing: str = Settings().routing  # the front end's HELIX_ROUTING: the simulator judges with its counterpart
    step_tokens: int = Settings().max_batch_tokens  # the workers' HELIX_MAX_BATCH_TOKENS
    poll_seconds: float = POLL_SECONDS
    source: Callable[[str], Any] = fetch_observed
    clock: Callable[[], float] = time.monotonic
    out: Callable[[str], None] = print
    detected: list[tuple[float, str]] = field(default_factory=list)  # each sustained drift: when (`clock`), what
    judged: list[Judged] = field(default_factory=list)  # each replan decided by the simulator
    _referenced: str = ""  # the plan whose reference ratios are settled
    _readings: list[ServedMetrics] = field(default_factory=list)  # the serving plan's last two metric readings
    _first_seen: dict[str, float] = field(default_factory=dict)  # plan hash -> when it was first polled
    _next_poll: float = 0.0
    _unreadable: str = ""  # the last failure said (`_say_once`)

    def referenced(self, serving: Generation) -> bool:
        """Whether the serving plan's reference is taken (drift counts from then on)."""
        return self._referenced == serving.fleet_plan.plan.plan_hash

    def check(self, serving: Generation) -> FleetPlan | None:
        """Poll if due; a better plan for the capacity observed, or None."""
        now = self.clock()
        inputs = serving.fleet_plan.inputs
        if now < self._next_poll or inputs is None:
            return None
        self._next_poll = now + self.poll_seconds
        plan = serving.fleet_plan.plan
        try:
            observed = parse_observed(self.source(serving.served.http_url))
        except (OSError, ValueError, PlanningError) as err:
            self._say_once(f"observed capacity: cannot read it ({err}); polling on")
            return None
        if observed.plan_hash != plan.plan_hash:  # a front end of another plan answered
            return None
        ratios = measured_ratios(inputs.cluster, inputs.catalog, inputs.spec, observed)
        if plan.plan_hash not in self._first_seen:  # a plan new to serving: its own fleet's metrics from now on
            self._first_seen[plan.plan_hash], self._readings = now, []
        self._keep_reading(serving, now)
        if self._referenced != plan.plan_hash:
            if now - self._first_seen[plan.plan_hash] >= self.tracker.debounce_seconds and ratios:
                self.tracker.update(ratios, now)
                self.tracker.settle()
                self._referenced = plan.plan_hash
                self.out("observed capacity, the reference from now on: "
                         + ", ".join(f"{r.key} {r.ratio:.2f}x" for r in ratios))
            return None
        # Nodes and links the router sent nothing through until now (adaptive routing may leave a slow
        # one idle) are referenced when first measured, not against their description.
        unseen = {r.key: r.ratio for r in ratios if r.key not in self.tracker.baselines}
        if unseen:
            self.tracker.baselines.update(unseen)
            self.out("observed capacity, first measured: " + ", ".join(f"{k} {v:.2f}x" for k, v in unseen.items()))
        sustained = self.tracker.update(ratios, now)
        if sustained is None:
            return None
        try:
            if not self._readings:
                raise ServingError("no earlier reading of the served metrics")
            window = self.measure(serving).since(self._readings[0])
            load = window.load(window.at - self._readings[0].at)
        except (OSError, ValueError, ServingError, PlanningError) as err:
            self._say_once(f"observed drift: {sustained.message}; cannot measure the served load yet ({err})")
            return None
        self.detected.append((now, sustained.message))
        self.out(f"observed drift: {sustained.message}")
        reference, common = planning_reference(ratios, self.tracker.baselines)
        if abs(common - 1.0) > 1e-9:
            self.out(f"  every node's steps changed x{common:.2f} since the reference: planning on the change "
                     "beyond that, the calibration carries it")
        effective = effective_inputs(inputs.cluster, inputs.catalog, inputs.spec, relative_to(observed, reference),
                                     self.tracker.threshold)
        self.tracker.settle()
        try:
            judged = self._judge(plan, inputs, effective.cluster, effective.catalog, window, load)
        except PlanningError as err:
            self.out(f"  not replanning: the observed capacity cannot be planned ({err})")
            return None
        self.judged.append(judged)
        now_value, new_value = judged.serving.decode_throughput, judged.chosen.decode_throughput
        if not self.tracker.worth_replanning(now_value, new_value):
            self.out(f"  not replanning: on the observed capacity the serving plan decodes {now_value:.1f} tok/s "
                     f"simulated, the best new one {new_value:.1f} (less than {self.tracker.min_gain:.0%} more)")
            return None
        self.out(f"  replanning: on the observed capacity the serving plan decodes {now_value:.1f} tok/s simulated, "
                 f"plan {judged.chosen.plan.plan_hash} {new_value:.1f}")
        return FleetPlan(restore_gpu_types(judged.chosen.plan, inputs.cluster), serving.fleet_plan.slowdowns, inputs)

    def _keep_reading(self, serving: Generation, now: float) -> None:
        """Read the served metrics every `LOAD_WINDOW_SECONDS`, keeping the last two: a drift's load is
        measured from the older one (one to two windows back), so it is the load of late."""
        if self._readings and now - self._readings[-1].at < LOAD_WINDOW_SECONDS:
            return
        try:
            self._readings = [*self._readings, self.measure(serving)][-2:]
        except (OSError, ValueError, ServingError, PlanningError) as err:
            self._say_once(f"served metrics: cannot read them ({err}); reading again at the next poll")

    def _say_once(self, line: str) -> None:
        """Say `line` unless it was the last thing said this way (a failure is not repeated at every poll)."""
        if line != self._unreadable:
            self.out(line)
        self._unreadable = line

    def _judge(self, plan: Plan, inputs: PlanInputs, cluster: Cluster, catalog: Catalog, window: ServedMetrics,
               load: ServedLoad) -> Judged:
        """The serving plan and the serving objective's candidates on `cluster` and `catalog` (the effective
        inputs), simulated with the calibration `window` gives under its load."""
        calibration = calibrate(window, cluster, inputs.spec, catalog, f"plan {plan.plan_hash}", self.step_tokens)
        clients = max(1, round(load.in_flight))
        lengths = load_lengths(f"fixed:{max(1, round(load.prompt_tokens))},{max(1, round(load.output_tokens))}",
                               Path())
        objective = ServingObjective(scheduler=self.routing, heuristics=ALTERNATIVES,
                                     window=calibration.config(clients, max(MIN_JUDGED_REQUESTS, 4 * clients), seed=1))
        self.out(f"  judging by the simulator: {calibration.describe()}; {clients} requests in flight of "
                 f"{lengths.inputs[0]} prompt and {lengths.outputs[0]} output tokens, routed by {self.routing}")
        current = restore_gpu_types(plan, cluster)  # the serving plan on the effective inputs' types
        serving = judge(current, 0.0, objective, cluster, inputs.spec, catalog, lengths)
        carried = plan_value(current, cluster, catalog, inputs.spec, PlannerOptions(throughput_model="profiled"))
        self.out(f"    serving plan {plan.plan_hash}: {_describe(serving, carried)}")
        options = PlannerOptions(time_limit=inputs.time_limit, throughput_model="profiled")
        chosen, candidates = plan_for_serving(cluster, inputs.spec, options, lengths, objective, catalog=catalog,
                                              previous=current)
        for candidate in candidates:
            self.out(f"    candidate {candidate.plan.plan_hash} ({candidate.label}): "
                     f"{_describe(candidate, candidate.plan.throughput)}")
        best = next(c for c in candidates if c.plan.layout == chosen.layout)
        return Judged(calibration, load, objective, lengths, serving, replace(best, plan=chosen), candidates)


def _describe(candidate: Candidate, max_flow: float) -> str:
    return (f"max flow {max_flow:.1f} tok/s, simulated decode "
            f"{candidate.decode_throughput:.1f} tok/s, p95 TTFT {candidate.ttft_p95:.2f} s")
