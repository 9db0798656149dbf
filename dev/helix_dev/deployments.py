"""The Deployment controller, with the ReplicaSet layer folded in: pods are owned by the Deployment.

A pod template change is a rolling update as `strategy.rollingUpdate` says (maxSurge pods
above `replicas` may start; old pods go only while at least `replicas - maxUnavailable` stay
ready); failed pods are replaced; status reports replicas, updated, ready and available pods.
"""

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from helix_dev.client import Api, path_of, pod_path
from helix_operator.api.meta import condition_true

TEMPLATE_HASH = "pod-template-hash"
TERMINAL = ("Failed", "Succeeded")


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _ready(pod: Mapping[str, Any]) -> bool:
    return condition_true(pod.get("status"), "Ready")


def _count(value: Any, replicas: int, default: int) -> int:
    """maxSurge / maxUnavailable: an integer or a percentage of replicas."""
    if value is None:
        return default
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * float(value[:-1]) / 100)
    return int(value)


def build_pod(deployment: Mapping[str, Any], pod_hash: str) -> dict[str, Any]:
    metadata, template = deployment["metadata"], deployment["spec"]["template"]
    labels = {**(template.get("metadata") or {}).get("labels", {}), TEMPLATE_HASH: pod_hash}
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"], "uid": metadata["uid"],
             "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{metadata['name']}-{pod_hash}-{uuid.uuid4().hex[:5]}",
                         "namespace": metadata["namespace"], "labels": labels,
                         "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                         "ownerReferences": [owner]},
            "spec": dict(template.get("spec") or {})}


async def sync_deployment(api: Api, deployment: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
    metadata, spec = deployment["metadata"], deployment.get("spec") or {}
    if metadata.get("deletionTimestamp"):
        return
    owned = [p for p in pods
             if any(r.get("uid") == metadata["uid"] for r in p["metadata"].get("ownerReferences") or [])]
    live = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
    failed = [p for p in live if (p.get("status") or {}).get("phase") in TERMINAL]
    running = [p for p in live if p not in failed]
    pod_hash = template_hash(spec.get("template") or {})
    new = [p for p in running if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH) == pod_hash]
    old = [p for p in running if p not in new]
    want = int(spec.get("replicas", 1))
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge, unavailable = _count(rolling.get("maxSurge"), want, 1), _count(rolling.get("maxUnavailable"), want, 0)
    deletions = list(failed)
    room = want + max(surge, 0 if unavailable else 1) - len(running)
    creations = max(0, min(want - len(new), room))
    available = sum(map(_ready, running))
    for pod in sorted(old, key=_ready):
        if not _ready(pod) or available - 1 >= want - unavailable:
            deletions.append(pod)
            available -= _ready(pod)
    deletions += new[want:]
    for pod in deletions:
        await api.delete(pod_path(pod))
    for _ in range(creations):
        await api.create(path_of("v1", "pods", metadata["namespace"]), build_pod(deployment, pod_hash))
    kept = [p for p in running if p not in deletions]
    status = {"observedGeneration": metadata.get("generation", 1), "replicas": len(kept),
              "updatedReplicas": sum(p in new for p in kept), "readyReplicas": sum(map(_ready, kept)),
              "availableReplicas": sum(map(_ready, kept)), "unavailableReplicas": max(0, want - sum(map(_ready, kept)))}
    if {k: (deployment.get("status") or {}).get(k) for k in status} != status:
        await api.patch(path_of("apps/v1", "deployments", metadata["namespace"], metadata["name"], "status"),
                        {"status": status})
