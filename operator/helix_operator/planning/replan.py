"""When to plan again, and whether a new plan replaces the active one.

Planning is level-triggered on input fingerprints (see `inputs`): a spec change replans at
once, a node change after the debounce and no sooner than `replanMinIntervalSeconds` after
the last replan, unless the active plan lost a node. A node-triggered plan replaces the
active one only if it is at least `minImprovementPercent` better or the active one broke.
Sustained drift of observed capacity (`capacity`) replans too; that plan replaces the active
one only if it beats it, both scored on the effective profiles, by `minGainPercent`.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from helix_operator.fleet.discovery import Discovery
from helix_operator.planning.inputs import InputsKey

CREATED, SPEC_CHANGED, NODES_CHANGED, PLAN_INFEASIBLE, APPROVED, CAPACITY_DRIFT = (
    "Created", "SpecChanged", "NodesChanged", "PlanInfeasible", "Approved", "CapacityDrift")
APPLIED, PROPOSED, KEPT, FAILED = "Applied", "Proposed", "Kept", "Failed"


def broken_nodes(plan_nodes: Iterable[tuple[str, str]], discovery: Discovery) -> list[str]:
    """Nodes of a plan, given as (name, GPU type), that are gone, unusable or now another type."""
    usable = {n.name: n.gpu_type for n in discovery.nodes}
    return sorted(name for name, gpu in plan_nodes if usable.get(name) != gpu)


@dataclass(frozen=True)
class ReplanDue:
    trigger: str | None          # None: nothing to do now
    not_before: float | None = None  # monotonic time when a deferred node replan becomes due


def replan_due(current: InputsKey, attempted: InputsKey | None, broken: bool, last_replan: float | None,
               now: float, min_interval: float) -> ReplanDue:
    """Whether inputs moved since the last attempt, and what that change counts as."""
    if attempted is None:
        return ReplanDue(CREATED)
    if current.spec != attempted.spec:
        return ReplanDue(SPEC_CHANGED)
    if current.nodes == attempted.nodes:
        return ReplanDue(None)
    if broken:
        return ReplanDue(PLAN_INFEASIBLE)
    if last_replan is not None and now - last_replan < min_interval:
        return ReplanDue(None, last_replan + min_interval)
    return ReplanDue(NODES_CHANGED)


@dataclass(frozen=True)
class Decision:
    outcome: str
    message: str


def decide(mode: str, trigger: str, active_tps: float | None, candidate_tps: float,
           min_improvement_percent: float) -> Decision:
    """Apply, keep the active plan, or only propose (DryRun, Manual)."""
    if mode == "DryRun":
        return Decision(PROPOSED, f"DryRun: proposed {candidate_tps:.1f} tok/s")
    if mode == "Manual":
        return Decision(PROPOSED, f"proposed {candidate_tps:.1f} tok/s; approve it with spec.planner.approvedPlanHash")
    if active_tps is None or trigger in (CREATED, SPEC_CHANGED, PLAN_INFEASIBLE):
        return Decision(APPLIED, f"{trigger}: applying {candidate_tps:.1f} tok/s")
    gain = (candidate_tps - active_tps) / active_tps * 100 if active_tps > 0 else float("inf")
    if gain >= min_improvement_percent:
        return Decision(APPLIED, f"{active_tps:.1f} -> {candidate_tps:.1f} tok/s (+{gain:.1f}%)")
    return Decision(KEPT, f"kept {active_tps:.1f} tok/s: the new plan's {candidate_tps:.1f} tok/s is {gain:+.1f}%, "
                          f"below the {min_improvement_percent:g}% threshold")
