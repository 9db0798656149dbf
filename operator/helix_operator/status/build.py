"""The HelixCluster status, computed from what one reconcile observed (a pure function).

The controller fills an `Observation`; `build_status` turns it into conditions, phase and
the summaries the printer columns read. Tests build observations directly.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helix_operator.api.crd import ROLLOUT_STATES
from helix_operator.children.rollout import COMPLETE
from helix_operator.fleet.discovery import Discovery
from helix_operator.status.conditions import FALSE, TRUE, UNKNOWN, Condition, aggregate_ready, merge
from helix_planner.plan_format import Plan

Problem = tuple[str, str]  # (reason, message)
IN_PROGRESS = tuple(s for s in ROLLOUT_STATES if s != COMPLETE)


def plan_summary(plan: Plan, configmap: str, time: str) -> dict[str, Any]:
    gap = plan.gap
    summary: dict[str, Any] = {
        "hash": plan.plan_hash,
        "configMap": configmap,
        "tokensPerSecond": round(plan.throughput, 1),
        "solveSeconds": round(plan.solver.seconds, 2),
        "pipelines": len(plan.pipelines),
        "nodes": len(plan.nodes),
        "time": time,
    }
    if plan.upper_bound is not None:
        summary["upperBound"] = round(plan.upper_bound, 1)
    if gap is not None:
        summary["gap"] = round(gap, 4)
        summary["gapPercent"] = f"{gap * 100:.1f}%"
    return summary


@dataclass
class Observation:
    """Everything one reconcile learnt; None means "not evaluated" (left Unknown)."""

    generation: int
    mode: str = "Auto"
    suspended: bool = False
    spec_problem: Problem | None = None
    discovery: Discovery | None = None
    nodes_problem: Problem | None = None
    planning: bool = False
    plan_problem: Problem | None = None
    active: Mapping[str, Any] | None = None
    proposed: Mapping[str, Any] | None = None
    awaiting_approval: bool = False
    rollout: Mapping[str, Any] | None = None
    workers: Problem | None = None          # (reason, message) with reason "Ready" when ready
    frontend: Problem | None = None
    degraded: Problem | None = None
    last_replan: Mapping[str, Any] | None = None
    revision: str | None = None             # the commit of hf:// weights the active plan's pods fetch
    url: str | None = None                  # the front-end Service's address, once it exists
    capacity: tuple[bool | None, str, str] | None = None  # CapacityDrift (status, reason, message); None: off
    observed_capacity: Mapping[str, Any] | None = None     # the effective profiles


def conditions(obs: Observation) -> list[Condition]:
    out = [_validated(obs), _nodes(obs), _planned(obs),
           _children("WorkersReady", obs.workers, obs, "workers are stopped", "workers"),
           _children("FrontendReady", obs.frontend, obs, "the front end is scaled to zero", "front end")]
    out.append(aggregate_ready(out))
    if obs.capacity is not None:
        drifted, reason, message = obs.capacity
        out.append(Condition("CapacityDrift", UNKNOWN if drifted is None else TRUE if drifted else FALSE, reason,
                             message))
    degraded = obs.degraded
    out.append(Condition("Degraded", TRUE, *degraded) if degraded else
               Condition("Degraded", FALSE, "AsPlanned", "every node of the active plan is usable"))
    rollout = obs.rollout or {}
    rollout_state = rollout.get("state")
    if obs.planning:
        out.append(Condition("Progressing", TRUE, "Planning", "the planner is solving for the current nodes"))
    elif rollout_state in IN_PROGRESS:
        out.append(Condition("Progressing", TRUE, f"Rollout{rollout_state}",
                             f"rolling out plan {rollout['targetHash']}: {rollout_state.lower()}"))
    else:
        out.append(Condition("Progressing", FALSE, "Idle", "nothing is being planned or rolled out"))
    return out


def _validated(obs: Observation) -> Condition:
    if obs.spec_problem:
        return Condition("Validated", FALSE, *obs.spec_problem)
    return Condition("Validated", TRUE, "SpecValid", "the spec is valid")


def _nodes(obs: Observation) -> Condition:
    if obs.spec_problem:
        return Condition("NodesDiscovered", UNKNOWN, "NotEvaluated", "waiting for a valid spec")
    if obs.nodes_problem:
        return Condition("NodesDiscovered", FALSE, *obs.nodes_problem)
    found = obs.discovery
    if found is None:
        return Condition("NodesDiscovered", UNKNOWN, "NotEvaluated", "waiting for a valid spec")
    regions = len(found.count_by("region"))
    return Condition("NodesDiscovered", TRUE, "NodesFound",
                     f"{len(found.nodes)} usable GPU nodes in {regions} region(s): "
                     + ", ".join(f"{n}x{g}" for g, n in found.count_by("gpu_type").items()))


def _planned(obs: Observation) -> Condition:
    if obs.plan_problem:
        return Condition("Planned", FALSE, *obs.plan_problem)
    if obs.active:
        return Condition("Planned", TRUE, "PlanActive",
                         f"plan {obs.active['hash']}: {obs.active['tokensPerSecond']} tok/s over "
                         f"{obs.active['pipelines']} pipelines")
    if obs.proposed and obs.mode == "DryRun":
        return Condition("Planned", TRUE, "PlanProposed", f"DryRun: plan {obs.proposed['hash']} proposed, not applied")
    if obs.awaiting_approval and obs.proposed:
        return Condition("Planned", FALSE, "AwaitingApproval",
                         f"set spec.planner.approvedPlanHash to {obs.proposed['hash']} to roll out the proposed plan")
    if obs.planning:
        return Condition("Planned", UNKNOWN, "Planning", "the planner is running")
    return Condition("Planned", UNKNOWN, "NotEvaluated", "waiting for usable nodes")


def _children(kind: str, observed: Problem | None, obs: Observation, stopped: str, none: str) -> Condition:
    """WorkersReady or FrontendReady: stopped while suspended, absent in DryRun, else as observed."""
    if obs.suspended:
        return Condition(kind, FALSE, "Suspended", f"spec.suspend is true: {stopped}")
    if obs.mode == "DryRun":
        return Condition(kind, FALSE, "DryRun", f"DryRun mode starts no {none}")
    if observed is None:
        return Condition(kind, UNKNOWN, "NoPlan", "no plan is active yet")
    reason, message = observed
    return Condition(kind, TRUE if reason == "Ready" else FALSE, reason, message)


def phase(obs: Observation, conds: list[Condition]) -> str:
    by_type = {c.type: c for c in conds}
    if obs.suspended:
        return "Suspended"
    if any(by_type[t].status == FALSE for t in ("Validated", "NodesDiscovered")) or (
            by_type["Planned"].status == FALSE and by_type["Planned"].reason != "AwaitingApproval" and not obs.active):
        return "Failed"
    if obs.mode == "DryRun":
        return "DryRun" if obs.proposed else "Planning"
    if obs.awaiting_approval and not obs.active:
        return "AwaitingApproval"
    if by_type["Ready"].status == TRUE:
        return "Degraded" if by_type["Degraded"].status == TRUE else "Running"
    if by_type["Degraded"].status == TRUE:
        return "Degraded"
    if obs.planning and not obs.active:
        return "Planning"
    return "Deploying" if obs.active else "Pending"


# Status fields the controller writes; observedTokensPerSecond and observedAt are the observation timer's.
OWNED = ("observedGeneration", "phase", "conditions", "nodes", "activePlan", "proposedPlan", "lastReplan", "rollout",
         "model", "url", "observedCapacity")


def build_status(obs: Observation, old: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The operator's part of the status, complete: an absent owned key means "remove it"."""
    conds = conditions(obs)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase(obs, conds),
        "conditions": merge(old.get("conditions") or [], conds, obs.generation, now),
    }
    if obs.discovery is not None:
        found = obs.discovery
        status["nodes"] = {"discovered": len(found.nodes), "used": obs.active["nodes"] if obs.active else 0,
                           "byGpuType": found.count_by("gpu_type"), "byRegion": found.count_by("region")}
    elif old.get("nodes"):
        status["nodes"] = dict(old["nodes"])
    for key, value in (("activePlan", obs.active), ("proposedPlan", obs.proposed), ("rollout", obs.rollout),
                       ("lastReplan", obs.last_replan), ("observedCapacity", obs.observed_capacity)):
        if value:
            status[key] = dict(value)
    if obs.revision:
        status["model"] = {"revision": obs.revision}
    if obs.url or obs.spec_problem and old.get("url"):  # an invalid spec leaves the Service as it was
        status["url"] = obs.url or old["url"]
    return status
