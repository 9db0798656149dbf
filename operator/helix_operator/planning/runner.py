"""The one place the operator calls the planner: in a worker thread, never on the event loop.

A plan for inputs that have since changed is superseded: its cancel flag interrupts the
solver, the controller stops waiting for it and throws its result away. hf:// weights are
pinned to a commit here too, before solving (`revision`): the plan carries the sha. With an
observed-capacity document the planner sees the effective inputs (`helix_planner.observed`):
drifted nodes on derived GPU types, drifted links at their observed bandwidth; the plan it
returns names the nodes' real GPU types again.
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
from helix_planner.cluster import Cluster
from helix_planner.observed import Observed, effective_inputs, plan_value, restore_gpu_types
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
    observed: Observed | None = None  # plan for the effective profiles it shows


def planning_inputs(request: PlanRequest) -> tuple[Cluster, Catalog]:
    """The cluster and catalog the planner sees: as described, or as observed."""
    cluster = build_cluster(request.name, request.spec, request.discovery)
    if request.observed is None:
        return cluster, request.catalog
    effective = effective_inputs(cluster, request.catalog, request.spec.model, request.observed,
                                 request.spec.planner.observed_capacity.drift_threshold)
    return effective.cluster, effective.catalog


def value_on_inputs(request: PlanRequest, plan: Plan) -> float:
    """Tokens/s `plan`'s placement carries on the request's planning inputs (blocking)."""
    cluster, catalog = planning_inputs(request)
    return plan_value(plan, cluster, catalog, request.spec.model, planner_options(request.spec.planner))


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
    cluster, catalog = planning_inputs(request)
    options = planner_options(spec.planner)
    if spec.planner.objective == "Serving":
        lengths = load_lengths(DEFAULT_LENGTHS, Path("."))
        # Candidates are judged with the simulator's counterpart of the front end's routing.
        objective = ServingObjective(scheduler=spec.frontend.routing, ttft_slo=spec.planner.slo_ttft)
        plan, _ = plan_for_serving(cluster, spec.model, options, lengths, objective, previous=request.previous,
                                   catalog=catalog, progress=progress, cancel=cancel)
    else:
        plan = plan_cluster(cluster, spec.model, options, previous=request.previous,
                            catalog=catalog, progress=progress, cancel=cancel)
    if request.observed is not None:
        plan = restore_gpu_types(plan, build_cluster(request.name, spec, request.discovery))
    return replace(plan, model={**plan.model, REVISION_KEY: revision}) if revision else plan


class PlanRunner:
    """Plans on a dedicated executor, so that slow solves never starve API calls."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def start(self, request: PlanRequest, cancel: threading.Event, logger: logging.Logger) -> "asyncio.Future[Plan]":
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, solve, request, cancel, logger)
