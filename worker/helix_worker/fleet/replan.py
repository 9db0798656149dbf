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
debounce is a sustained drift; the replanner then plans the effective inputs (drifted nodes on
slowed-down types, drifted links at their observed bandwidth) and returns the new plan if it
carries at least `min_gain` more than the serving one on those same inputs. The effective inputs
scale the plan's inputs by the change since the reference (`relative_to`), not by the ratio to
the catalog: where workers share cores, as on a machine emulating a fleet, every step time
carries the others' load, which moves with the placement and is no property of a node. Either way it says
what it saw and what it decided, and that drift is settled, so it does not trigger again.
"""

import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from helix_planner.errors import PlanningError
from helix_planner.observed import (
    LINK_SEPARATOR,
    PATH,
    DriftTracker,
    Observed,
    StepSample,
    effective_inputs,
    measured_ratios,
    parse_observed,
    plan_value,
    restore_gpu_types,
)
from helix_planner.planner import PlannerOptions
from helix_worker.fleet.plans import FleetPlan, plan_with
from helix_worker.fleet.rollout import Generation

POLL_SECONDS = 2.0


def fetch_observed(http_url: str) -> Any:
    """The observed-capacity document of the front end at `http_url`."""
    with urllib.request.urlopen(http_url + PATH, timeout=5) as response:
        return json.loads(response.read())


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


@dataclass
class Replanner:
    tracker: DriftTracker = field(default_factory=DriftTracker)
    poll_seconds: float = POLL_SECONDS
    source: Callable[[str], Any] = fetch_observed
    clock: Callable[[], float] = time.monotonic
    out: Callable[[str], None] = print
    detected: list[tuple[float, str]] = field(default_factory=list)  # each sustained drift: when (`clock`), what
    _referenced: str = ""  # the plan whose reference ratios are settled
    _first_seen: dict[str, float] = field(default_factory=dict)  # plan hash -> when it was first polled
    _next_poll: float = 0.0
    _unreadable: str = ""  # why the last poll could not read the document

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
            if str(err) != self._unreadable:  # said once, not at every poll
                self.out(f"observed capacity: cannot read it ({err}); polling on")
            self._unreadable = str(err)
            return None
        self._unreadable = ""
        if observed.plan_hash != plan.plan_hash:  # a front end of another plan answered
            return None
        ratios = measured_ratios(inputs.cluster, inputs.catalog, inputs.spec, observed)
        if self._referenced != plan.plan_hash:
            settled = now - self._first_seen.setdefault(plan.plan_hash, now) >= self.tracker.debounce_seconds
            if settled and ratios:
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
        self.detected.append((now, sustained.message))
        self.out(f"observed drift: {sustained.message}")
        effective = effective_inputs(inputs.cluster, inputs.catalog, inputs.spec,
                                     relative_to(observed, self.tracker.baselines), self.tracker.threshold)
        self.tracker.settle()
        try:
            candidate = plan_with(effective.cluster, inputs.spec, inputs.time_limit, effective.catalog,
                                  lambda _: None)
        except PlanningError as err:
            self.out(f"  not replanning: the observed capacity cannot be planned ({err})")
            return None
        options = PlannerOptions(throughput_model="profiled")
        now_value = plan_value(plan, effective.cluster, effective.catalog, inputs.spec, options)
        new_value = plan_value(candidate, effective.cluster, effective.catalog, inputs.spec, options)
        if not self.tracker.worth_replanning(now_value, new_value):
            self.out(f"  not replanning: on the observed capacity the serving plan carries {now_value:.1f} tok/s, "
                     f"a new one {new_value:.1f} (less than {self.tracker.min_gain:.0%} more)")
            return None
        self.out(f"  replanning: on the observed capacity the serving plan carries {now_value:.1f} tok/s, "
                 f"plan {candidate.plan_hash} {new_value:.1f}")
        return FleetPlan(restore_gpu_types(candidate, inputs.cluster), serving.fleet_plan.slowdowns, inputs)
