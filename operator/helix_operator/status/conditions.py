"""Status conditions in the metav1.Condition shape, with an aggregate Ready.

`lastTransitionTime` moves only when a condition's status changes; `transitions` lists the
conditions whose status or reason changed, and each becomes an event.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

# Ready needs these True; Degraded and Progressing are informative, not required.
REQUIRED_FOR_READY = ("Validated", "NodesDiscovered", "Planned", "WorkersReady", "FrontendReady")
# A True value of these is bad news (a Warning event).
NEGATIVE = ("Degraded", "CapacityDrift")
# Reasons of a condition that is not (yet) True as a step of ordinary work: a rollout under way,
# the planner running, nothing planned yet, a user's suspend, DryRun or Manual approval. Their
# events are Normal; a Warning is kept for what someone may have to act on.
ROUTINE = frozenset({"RollingOut", "Starting", "Planning", "NotEvaluated", "NoPlan", "Pending", "Suspended",
                     "DryRun", "AwaitingApproval"})


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str

    @property
    def healthy(self) -> bool:
        """Whether this value is good or routine news (a Normal event) or not (a Warning)."""
        if self.type == "Progressing" or self.reason in ROUTINE:
            return True
        return (self.status == TRUE) != (self.type in NEGATIVE)


def aggregate_ready(conditions: Iterable[Condition]) -> Condition:
    """Ready is True when every required condition is; else it repeats the first that is not."""
    by_type = {c.type: c for c in conditions}
    for kind in REQUIRED_FOR_READY:
        cond = by_type.get(kind)
        if cond is None:
            return Condition("Ready", UNKNOWN, "Pending", f"{kind} has not been evaluated yet")
        if cond.status != TRUE:
            return Condition("Ready", FALSE if cond.status == FALSE else UNKNOWN, cond.reason, cond.message)
    return Condition("Ready", TRUE, "Serving", "the plan is deployed and every worker and front end is ready")


def merge(old: Iterable[Mapping[str, Any]], new: Iterable[Condition], generation: int,
          now: str) -> list[dict[str, Any]]:
    """The new conditions as status dicts, keeping transition times of unchanged statuses."""
    previous = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        before = previous.get(cond.type)
        moved = before is None or before.get("status") != cond.status
        out.append({
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if moved or before is None else before.get("lastTransitionTime", now),
            "observedGeneration": generation,
        })
    return out


def transitions(old: Iterable[Mapping[str, Any]], new: Iterable[Condition]) -> list[Condition]:
    """Conditions whose status or reason differ from before (new ones count when not Unknown)."""
    previous = {c.get("type"): c for c in old}
    changed = []
    for cond in new:
        before = previous.get(cond.type)
        if before is None:
            if cond.status != UNKNOWN:
                changed.append(cond)
        elif (before.get("status"), before.get("reason")) != (cond.status, cond.reason):
            changed.append(cond)
    return changed
