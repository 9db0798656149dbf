"""The peer list: the next hops a cluster's workers may dial, kept current across replans.

A worker dials a next hop only when its node is allowed and the address is that node's
endpoint (`helix_worker.security.peers`). A worker pod kept across a replan (same node, same
layers) was made for an older plan: had it kept that plan's nodes as its allowlist, it would
refuse the nodes that joined since, and every pipeline of the new plan through it would fail
until the pod was replaced. So the operator keeps one ConfigMap per cluster, `<cluster>-peers`,
whose `endpoints.json` maps the nodes of every plan a front end may still route over to their
workers' endpoints, and mounts it in every worker pod as a directory (no subPath: the kubelet
updates it in place, and the worker reads it again when it changes).

Which nodes: the target plan's join before any of its pods is created; an older plan's stay
while a front-end pod of another plan than the target still runs (old front ends finish their
requests on the old pipelines) and leave once none does, when their pods are deleted anyway.

Why not replace the kept pods instead: a restart is a model load (minutes for a large
checkpoint) and a re-prefill of every request the pod holds, all for a few lines of
configuration; the list reaches a running pod in seconds, and nothing else of it changes.

Why no new pipeline fails meanwhile: the list is published before the new plan's pods are
created, and the front end switches only once they are ready (a model load later); the kubelet
refreshes a pod's ConfigMap volumes when it syncs the pod, which a change to the pod starts at
once, so each worker pod is stamped with the list's digest (annotation `helix.dev/peers`;
otherwise the refresh waits for the kubelet's periodic sync, about a minute). And should a
stage still not have read the list, front ends leave the pipelines through it that need a hop
it does not list out of rotation, since they ask every stage at each heartbeat which next hops
of their routes it would refuse: requests wait for, or go to, pipelines that run.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import child_metadata, peers_configmap_name
from helix_operator.api.spec import ClusterSpec
from helix_operator.children.workers import worker_endpoint


def build_peers_configmap(owner: Mapping[str, Any], spec: ClusterSpec, nodes: Iterable[str]) -> dict[str, Any]:
    """The list of `nodes` at their workers' endpoints (mutable: it changes with the plans)."""
    cluster, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    endpoints = {node: worker_endpoint(namespace, cluster, node, spec.worker.port) for node in sorted(set(nodes))}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": child_metadata(owner, peers_configmap_name(cluster), names.COMPONENT_PEERS),
            "data": {names.PEERS_KEY: json.dumps(endpoints, indent=1)}}


def listed_nodes(configmap: Mapping[str, Any] | None) -> set[str]:
    """The nodes a live peer list names (none if it is missing or unreadable)."""
    try:
        return set(json.loads(((configmap or {}).get("data") or {}).get(names.PEERS_KEY) or "{}"))
    except (ValueError, TypeError):
        return set()


def peer_nodes(target: Iterable[str], listed: Iterable[str], frontend_current: bool) -> set[str]:
    """The target plan's nodes and, while front ends of older plans run, those listed before."""
    return set(target) | (set() if frontend_current else set(listed))


def digest(configmap: Mapping[str, Any]) -> str:
    """Names one content of the list (the pods' annotation)."""
    return hashlib.sha256(configmap["data"][names.PEERS_KEY].encode()).hexdigest()[:16]
