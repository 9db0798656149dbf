"""The one place the operator calls the planner: in a worker thread, never on the event loop.

A plan for inputs that have since changed is superseded: its cancel flag interrupts the
solver, the controller stops waiting for it and throws its result away. hf:// weights are
pinned to a commit here too, before solving (`revision`): the plan carries the sha.
"""

import asyncio
import logging
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

from helix_operator.api.spec import ClusterSpec, PlannerSpec
from helix_operator.api.weights_uri import REVISION_KEY
from helix_operator.fleet.discovery import Discovery
from helix_operator.planning.inputs import build_cluster
from helix_operator.planning.revision import HubAccess, resolve_revision
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog
from helix_planner.serving_plan import DEFAULT_LENGTHS, ServingObjective, plan_for_serving
from helix_planner.sim.workload import load_lengths


@dataclass(frozen=True)
class PlanRequest:
    name: str
    spec: ClusterSpec
    discovery: Discovery
    catalog: Catalog
    previous: Plan | None = None
    hub: HubAccess = HubAccess()


def planner_options(spec: PlannerSpec) -> PlannerOptions:
    return PlannerOptions(time_limit=spec.time_limit, mip_gap=spec.mip_gap, threads=spec.threads,
                          throughput_model=spec.throughput_model, churn_weight=spec.churn_weight)


def solve(request: PlanRequest, cancel: threading.Event, logger: logging.Logger) -> Plan:
    """Build the flow network and run the planner (blocking; a full mesh of 500 nodes is 250k
    links, so both belong in this thread); warm-started from the previous plan if any."""
    def progress(line: str) -> None:
        if not cancel.is_set():
            logger.info("planner: %s", line)

    spec = request.spec
    revision = resolve_revision(spec.weights_uri, request.hub)
    if revision:
        logger.info("%s is commit %s for this plan", spec.weights_uri, revision)
    cluster = build_cluster(request.name, spec, request.discovery)
    options = planner_options(spec.planner)
    if spec.planner.objective == "Serving":
        lengths = load_lengths(DEFAULT_LENGTHS, Path("."))
        objective = ServingObjective(ttft_slo=spec.planner.slo_ttft)
        plan, _ = plan_for_serving(cluster, spec.model, options, lengths, objective, previous=request.previous,
                                   catalog=request.catalog, progress=progress, cancel=cancel)
    else:
        plan = plan_cluster(cluster, spec.model, options, previous=request.previous,
                            catalog=request.catalog, progress=progress, cancel=cancel)
    return replace(plan, model={**plan.model, REVISION_KEY: revision}) if revision else plan


class PlanRunner:
    """Plans on a dedicated executor, so that slow solves never starve API calls."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def start(self, request: PlanRequest, cancel: threading.Event, logger: logging.Logger) -> "asyncio.Future[Plan]":
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, solve, request, cancel, logger)
