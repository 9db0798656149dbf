"""The scheduler: binds each pending pod to a node it fits, or says why none does.

A node fits when it is Ready and schedulable, satisfies the pod's nodeSelector and required
node affinity, every NoSchedule/NoExecute taint is tolerated, and its allocatable extended
resources (GPUs) cover the pod's limits on top of every pod already bound there that has not
finished; a terminating pod holds its GPUs until its node agent has stopped it. Among
fitting nodes the least loaded wins.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from helix_dev.client import Api, pod_path
from helix_operator.api.meta import condition_true

TERMINAL = ("Failed", "Succeeded")
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")


def _ready(node: Mapping[str, Any]) -> bool:
    return condition_true(node.get("status"), "Ready")


def _matches(expression: Mapping[str, Any], value: str | None) -> bool:
    operator, values = expression["operator"], expression.get("values") or []
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    return False


def _affinity(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    required = ((((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True
    labels, fields = node["metadata"].get("labels") or {}, {"metadata.name": node["metadata"]["name"]}
    return any(all(_matches(e, labels.get(e["key"])) for e in term.get("matchExpressions") or [])
               and all(_matches(e, fields.get(e["key"])) for e in term.get("matchFields") or [])
               for term in required.get("nodeSelectorTerms") or [])


def _tolerated(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any((t.get("key") in (None, "", taint["key"]))
                   and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
                   and t.get("effect") in (None, "", taint["effect"]) for t in tolerations):
            return False
    return True


def _requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources (GPUs) the pod's containers ask for."""
    total: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("limits") or {}).items():
            if name not in STANDARD_RESOURCES and str(value).isdigit():
                total[name] = total.get(name, 0) + int(value)
    return total


def why_not(pod: Mapping[str, Any], node: Mapping[str, Any], bound: Iterable[Mapping[str, Any]]) -> str | None:
    """None if `pod` fits `node` next to the pods `bound` to it, else the reason."""
    spec, metadata = node.get("spec") or {}, node["metadata"]
    if not _ready(node) or spec.get("unschedulable") or metadata.get("deletionTimestamp"):
        return "not ready or cordoned"
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if not selector.items() <= (metadata.get("labels") or {}).items() or not _affinity(pod, node):
        return "node affinity or selector does not match"
    if not _tolerated(pod, node):
        return "untolerated taint"
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    used: dict[str, int] = {}
    for other in bound:
        if (other.get("status") or {}).get("phase") not in TERMINAL:
            for name, count in _requests(other).items():
                used[name] = used.get(name, 0) + count
    for name, count in _requests(pod).items():
        if used.get(name, 0) + count > int(allocatable.get(name, 0)):
            return f"insufficient {name}"
    return None


async def schedule(api: Api, pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """Bind every pending, unbound pod that fits somewhere; mark the others Unschedulable."""
    by_node: dict[str, list[dict[str, Any]]] = {n["metadata"]["name"]: [] for n in nodes}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node in by_node:
            by_node[node].append(pod)
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            continue
        reasons = {n["metadata"]["name"]: why_not(pod, n, by_node[n["metadata"]["name"]]) for n in nodes}
        fitting = sorted((len(by_node[name]), name) for name, reason in reasons.items() if reason is None)
        if fitting:
            name = fitting[0][1]
            await api.patch(pod_path(pod), {"spec": {"nodeName": name}})
            by_node[name].append({**pod, "spec": {**pod["spec"], "nodeName": name}})
            continue
        counts: dict[str, int] = {}
        for why in reasons.values():  # none is None: no node fits
            if why is not None:
                counts[why] = counts.get(why, 0) + 1
        message = f"0/{len(nodes)} nodes are available: " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        if condition not in ((pod.get("status") or {}).get("conditions") or []):
            await api.patch(pod_path(pod, "status"), {"status": {"phase": "Pending", "conditions": [condition]}})
