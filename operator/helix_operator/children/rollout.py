"""One step of a rollout from the pods that exist towards the assignments of a target plan.

Surge: pods for new assignments on free nodes come up first (at most `max_surge` starting
at once while an older plan still serves); if no pipeline of the target can come up on free
nodes, the nodes of one are freed while the running plan keeps a pipeline (see `handover`).
Switch: once they are ready the front end moves to the target plan, and its old pods finish
the requests they hold on the old pipelines.
Drain: once no front-end pod of an older plan is left, obsolete pods are deleted with the
drain timeout as grace period; replacements for nodes that change layers are created then
and start when the node frees. Replace: pods whose layers stay but whose worker spec is
outdated are replaced a batch of nodes at a time (see `replacement`), never all at once.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from helix_operator.api import names
from helix_operator.api.crd import ROLLOUT_STATES
from helix_operator.api.meta import condition_true
from helix_operator.children.handover import Key, room_to_make
from helix_operator.children.replacement import Pipelines, replacement_batch
from helix_operator.children.workers import Assignment, pod_assignment

SURGING, SWITCHING, DRAINING, REPLACING, COMPLETE = ROLLOUT_STATES


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
    peers: str = ""  # digest of the peer list the pod was last stamped with


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    key = pod_assignment(pod)
    if key is None:
        return None
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = metadata.get("labels") or {}
    ready = condition_true(status, "Ready")
    return PodView(
        name=metadata["name"], key=key, plan_hash=labels.get(names.LABEL_PLAN_HASH, ""), ready=ready,
        deleting=bool(metadata.get("deletionTimestamp")), failed=status.get("phase") in ("Failed", "Succeeded"),
        template=labels.get(names.LABEL_TEMPLATE_HASH, ""),
        peers=(metadata.get("annotations") or {}).get(names.ANNOTATION_PEERS, ""),
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
              max_surge: int | None, template: str = "", frontend_current: bool = True, *,
              pipelines: Pipelines = (), max_replace: int = 1, running: Sequence[Sequence[Key]] = ()) -> RolloutStep:
    """`max_surge` None means nothing older is serving, so every new pod on a free node may start
    at once. `frontend_current` says that no front-end pod of an older plan is left: until then
    the front end does not switch while new pods start, and obsolete pods stay, as old front
    ends may still be finishing requests on them. Pods of
    another `template` (worker spec) holding wanted layers are replaced at most `max_replace`
    nodes at a time, keeping one of the target's `pipelines` whole where the plan allows.
    `running` is the pipelines (stage keys) of the plan the front end serves, if another."""
    desired = list(desired)
    wanted = {a.key for a in desired}
    live = [p for p in pods if not p.deleting]
    draining = [p for p in pods if p.deleting]
    failed = [p.name for p in live if p.failed]
    healthy = [p for p in live if not p.failed]
    current = [p for p in healthy if p.template == template]
    by_key = {p.key: p for p in current}
    obsolete = [p for p in healthy if p.key not in wanted]
    stale = [p for p in healthy if p.key in wanted and p.template != template]
    busy_nodes = {p.key[0] for p in obsolete + stale + draining}
    missing = [a for a in desired if a.key not in by_key]
    free = [a for a in missing if a.node not in busy_nodes]
    blocked = [a for a in missing if a.node in busy_nodes]
    ours = [by_key[a.key] for a in desired if a.key in by_key]
    starting = [p for p in ours if not p.ready and p.key[0] not in busy_nodes]
    relabel = tuple(p.name for p in ours if p.plan_hash != target_hash)
    ready = sum(p.ready for p in ours)

    def step(create: Iterable[Assignment], delete: Iterable[str], switch: bool, state: str,
             leaving: int = 0) -> RolloutStep:
        return RolloutStep(tuple(create), tuple(failed) + tuple(delete), relabel, switch, state, len(desired), ready,
                           len(draining) + leaving)

    if free or starting and not frontend_current:
        budget = len(free) if max_surge is None else max(0, max_surge - len(starting))
        return step(free[:budget], (), False, SURGING)
    if (obsolete or stale) and not frontend_current:
        room = room_to_make(pipelines, {p.key[0] for p in ours if p.ready}, {p.key[0] for p in ours if not p.ready},
                            {a.node for a in blocked}, running, {p.key for p in healthy if p.ready})
        if room is None:
            return step((), (), True, SWITCHING)
        leaving = [p.name for p in obsolete + stale if p.key[0] in room]
        return step([a for a in blocked if a.node in room], leaving, False, SURGING, len(leaving))
    stale_nodes = {p.key[0] for p in stale}
    serving = {p.key[0] for p in healthy if p.ready and p.key in wanted}
    under_way = sum(not p.ready for p in ours)
    batch = set(replacement_batch(stale_nodes, pipelines, {a.node for a in desired} - serving, under_way,
                                  max_replace))
    leaving = [p.name for p in obsolete] + [p.name for p in stale if p.key[0] in batch]
    if obsolete or stale:
        create = [a for a in blocked if a.node not in stale_nodes or a.node in batch]
        return step(create, leaving, True, DRAINING if obsolete else REPLACING, len(leaving))
    if draining or failed or blocked:
        return step(blocked, (), True, DRAINING)
    return step((), (), True, COMPLETE if ready == len(desired) else SURGING)
