"""One step of a rollout from the pods that exist towards the assignments of a target plan.

Surge: pods for new assignments on free nodes come up first (at most `max_surge` starting
at once while an older plan still serves). Switch: once they are ready the front end moves
to the target plan, and its old pods finish the requests they hold on the old pipelines.
Drain: once no front-end pod of an older plan is left, obsolete pods are deleted with the
drain timeout as grace period; replacements for nodes that change layers are created then
and start when the node frees.
"""

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from helix_operator import names
from helix_operator.workers import Assignment, pod_assignment

SURGING, SWITCHING, DRAINING, COMPLETE = "Surging", "Switching", "Draining", "Complete"


@dataclass(frozen=True)
class PodView:
    """What a rollout needs to know about one existing worker pod."""

    name: str
    key: tuple[str, int, int]
    plan_hash: str
    ready: bool
    deleting: bool
    failed: bool
    template: str = ""


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    key = pod_assignment(pod)
    if key is None:
        return None
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = metadata.get("labels") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodView(
        name=metadata["name"], key=key, plan_hash=labels.get(names.LABEL_PLAN_HASH, ""), ready=ready,
        deleting=bool(metadata.get("deletionTimestamp")), failed=status.get("phase") in ("Failed", "Succeeded"),
        template=labels.get(names.LABEL_TEMPLATE_HASH, ""),
    )


@dataclass(frozen=True)
class RolloutStep:
    create: tuple[Assignment, ...]
    delete: tuple[str, ...]
    relabel: tuple[str, ...]     # kept pods whose plan-hash label is to become the target's
    switch_frontend: bool        # the target plan's workers on free nodes are ready
    state: str
    desired: int
    ready: int
    draining: int

    def summary(self, target_hash: str) -> dict[str, Any]:
        return {"targetHash": target_hash, "state": self.state, "desiredWorkers": self.desired,
                "readyWorkers": self.ready, "drainingWorkers": self.draining}


def next_step(desired: Iterable[Assignment], pods: Iterable[PodView], target_hash: str,
              max_surge: int | None, template: str = "", frontend_current: bool = True) -> RolloutStep:
    """`max_surge` None means nothing older is serving, so every new pod may start at once; pods
    of another `template` (worker spec) count as obsolete. `frontend_current` says that no
    front-end pod of an older plan is left: until then obsolete pods stay, as old front ends
    may still be finishing requests on them."""
    desired = list(desired)
    wanted = {a.key for a in desired}
    live = [p for p in pods if not p.deleting]
    draining = [p for p in pods if p.deleting]
    failed = [p.name for p in live if p.failed]
    current = [p for p in live if not p.failed and p.template == template]
    by_key = {p.key: p for p in current}
    obsolete = [p for p in live if not p.failed and (p.template != template or p.key not in wanted)]
    busy_nodes = {p.key[0] for p in obsolete} | {p.key[0] for p in draining}
    missing = [a for a in desired if a.key not in by_key]
    free = [a for a in missing if a.node not in busy_nodes]
    blocked = [a for a in missing if a.node in busy_nodes]
    ours = [by_key[a.key] for a in desired if a.key in by_key]
    starting = [p for p in ours if not p.ready and p.key[0] not in busy_nodes]
    relabel = tuple(p.name for p in ours if p.plan_hash != target_hash)
    ready = sum(p.ready for p in ours)

    if free or starting:
        budget = len(free) if max_surge is None else max(0, max_surge - len(starting))
        return RolloutStep(tuple(free[:budget]), tuple(failed), relabel, False, SURGING, len(desired), ready,
                           len(draining))
    if obsolete and not frontend_current:
        return RolloutStep((), tuple(failed), relabel, True, SWITCHING, len(desired), ready, len(draining))
    done = not (obsolete or draining or blocked or failed) and ready == len(desired)
    return RolloutStep(tuple(blocked), tuple(failed) + tuple(p.name for p in obsolete), relabel, True,
                       COMPLETE if done else DRAINING, len(desired), ready, len(draining) + len(obsolete))
