"""Worker pods: one per node that holds layers, pinned to it, told its layers and plan.

Pinning uses required node affinity on the node's name rather than `nodeName`, so that a
replacement pod waits as Pending while the old one drains the node's GPUs (with `nodeName`
the kubelet would reject it outright).
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helix_operator.api import names, weights_uri
from helix_operator.api.meta import child_metadata, dns_name, peers_configmap_name, selector
from helix_operator.api.podsecurity import restrict
from helix_operator.api.spec import ClusterSpec
from helix_operator.children.certificates import cluster_tls_env, cluster_tls_mount, cluster_tls_volume
from helix_operator.children.podtemplate import merge_template
from helix_operator.children.probes import http_probes
from helix_operator.children.weights import weights_source
from helix_operator.fleet.discovery import Discovery
from helix_planner.plan_format import Plan

CONTAINER = "worker"
PLAN_VOLUME = "plan"
PEERS_VOLUME = "peers"


@dataclass(frozen=True)
class Assignment:
    """Layers [start, end) of the model on one node."""

    node: str
    start: int
    end: int
    gpus: int = 1
    tolerations: tuple[Mapping[str, Any], ...] = ()

    @property
    def layers(self) -> str:
        return f"{self.start}-{self.end}"

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.node, self.start, self.end)


def assignments(plan: Plan, discovery: Discovery, spec: ClusterSpec) -> list[Assignment]:
    """The plan's nodes with the GPU count and tolerations of their pools."""
    found = {n.name: n for n in discovery.nodes}
    tolerations = {p.name: p.tolerations for p in spec.pools}
    out = []
    for node in plan.nodes:
        facts = found.get(node.name)
        out.append(Assignment(node.name, node.start, node.end, facts.gpus if facts else 1,
                              tolerations.get(facts.pool, ()) if facts else ()))
    return out


def template_hash(spec: ClusterSpec, revision: str | None = None) -> str:
    """Identifies everything of a worker pod that is not its assignment: a change replaces the pods
    (`revision`, the plan's commit of hf:// weights, too: a pod is never relabelled onto other weights)."""
    worker = spec.worker
    body = [worker.image, worker.image_pull_policy, worker.port, worker.gpu_resource_name, worker.resources,
            worker.env, worker.template, spec.model.name, spec.weights_uri, spec.credentials_secret,
            spec.rollout.drain_timeout, spec.security.tls_secret, spec.liveness]
    if spec.weights_cache:
        body.append(spec.weights_cache)
    if revision:
        body.append(revision)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:10]


def worker_pod_name(cluster: str, assignment: Assignment, template: str) -> str:
    return dns_name(cluster, "w", assignment.node, assignment.layers, template, limit=63)


def workers_service_name(cluster: str) -> str:
    return dns_name(cluster, "workers")


def worker_hostname(node: str) -> str:
    """Stable per node (not per plan), so the front end's addresses survive layer changes."""
    return dns_name("w", node)


def worker_endpoint(namespace: str, cluster: str, node: str, port: int) -> str:
    """The DNS name a node's worker answers on, through the headless workers Service."""
    return f"{worker_hostname(node)}.{workers_service_name(cluster)}.{namespace}.svc:{port}"


def build_workers_service(owner: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Any]:
    """Headless Service giving every worker pod a DNS name (hostname.subdomain)."""
    cluster = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, workers_service_name(cluster), names.COMPONENT_WORKER),
        "spec": {"clusterIP": "None", "selector": selector(cluster, names.COMPONENT_WORKER),
                 "ports": [{"name": "grpc", "port": spec.worker.port, "targetPort": "grpc"}]},
    }


def build_worker_pod(owner: Mapping[str, Any], spec: ClusterSpec, assignment: Assignment, plan_hash: str,
                     configmap: str, *, peers_digest: str = "", revision: str | None = None) -> dict[str, Any]:
    """The worker dials only the next hops of the cluster's peer list (`children.peers`, mounted
    so that it follows replans; `peers_digest` names the list's current content), and the
    cluster's TLS Secret is mounted for mutual TLS on every hop. `revision`: the plan's commit
    of hf:// weights."""
    cluster = owner["metadata"]["name"]
    worker, template = spec.worker, template_hash(spec, revision)
    weights = weights_source(spec, worker.image, (assignment.start, assignment.end), revision)
    metadata = child_metadata(
        owner, worker_pod_name(cluster, assignment, template), names.COMPONENT_WORKER,
        labels={names.LABEL_PLAN_HASH: plan_hash, names.LABEL_NODE: dns_name(assignment.node),
                names.LABEL_TEMPLATE_HASH: template},
        annotations={names.ANNOTATION_NODE: assignment.node, names.ANNOTATION_LAYERS: assignment.layers,
                     names.ANNOTATION_PEERS: peers_digest},
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": worker.image,
        "imagePullPolicy": worker.image_pull_policy,
        "command": ["helix", "worker", "--plan", names.PLAN_PATH, "--node", assignment.node,
                    "--model", weights.path, "--host", "0.0.0.0", "--port", str(worker.port),
                    "--http-port", str(names.WORKER_HTTP_PORT), "--peers", names.PEERS_PATH],
        "env": [*_env(spec, assignment, plan_hash, worker.port, revision), *cluster_tls_env()],
        "ports": [{"name": "grpc", "containerPort": worker.port},
                  {"name": "http", "containerPort": names.WORKER_HTTP_PORT},
                  {"name": "data", "containerPort": names.WORKER_DATA_PORT}],
        "resources": _resources(worker.resources, worker.gpu_resource_name, assignment.gpus),
        **http_probes("http"),  # /readyz: its layers are loaded and it serves; this port has no TLS
        "volumeMounts": [{"name": PLAN_VOLUME, "mountPath": names.PLAN_MOUNT_DIR, "readOnly": True},
                         {"name": PEERS_VOLUME, "mountPath": names.PEERS_MOUNT_DIR, "readOnly": True}, *weights.mounts,
                         cluster_tls_mount()],
    }
    pod_spec: dict[str, Any] = {
        "hostname": worker_hostname(assignment.node),
        "subdomain": workers_service_name(cluster),
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [assignment.node]}]}]}}},
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": spec.rollout.drain_timeout,
        "containers": [container],
        "volumes": [{"name": PLAN_VOLUME, "configMap": {"name": configmap}},
                    {"name": PEERS_VOLUME, "configMap": {"name": peers_configmap_name(cluster)}}, *weights.volumes,
                    cluster_tls_volume(cluster, spec)],
    }
    if weights.init_containers:
        pod_spec["initContainers"] = weights.init_containers
    if assignment.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in assignment.tolerations]
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    pod = merge_template(pod, worker.template)
    pod["spec"] = restrict(pod["spec"])
    return pod


def _env(spec: ClusterSpec, assignment: Assignment, plan_hash: str, port: int,
         revision: str | None) -> list[dict[str, Any]]:
    values = {
        "HELIX_NODE": assignment.node,
        "HELIX_LAYER_START": str(assignment.start),
        "HELIX_LAYER_END": str(assignment.end),
        "HELIX_PLAN_HASH": plan_hash,
        "HELIX_MODEL": spec.model.name,
        "HELIX_WORKER_PORT": str(port),
        "HELIX_DATA_PORT": str(names.WORKER_DATA_PORT),
    }
    if spec.weights_uri:
        values["HELIX_WEIGHTS_URI"] = weights_uri.pinned(spec.weights_uri, revision)
    values |= {e["name"]: e["value"] for e in spec.liveness.env(lease=True)}
    given = {e["name"] for e in spec.worker.env}
    return [{"name": k, "value": v} for k, v in values.items() if k not in given] + [dict(e) for e in spec.worker.env]


def _resources(resources: Mapping[str, Any], gpu_resource: str, gpus: int) -> dict[str, Any]:
    """The spec's resources with the node's GPUs as a limit (the device plugin's contract)."""
    limits = {**dict(resources.get("limits") or {}), gpu_resource: gpus}
    out: dict[str, Any] = {"limits": limits}
    if resources.get("requests"):
        out["requests"] = dict(resources["requests"])
    return out


def pod_assignment(pod: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(node, start, end) a worker pod was built for, read back from its annotations."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    node, layers = annotations.get(names.ANNOTATION_NODE), annotations.get(names.ANNOTATION_LAYERS, "")
    start, _, end = layers.partition("-")
    if not node or not start.isdigit() or not end.isdigit():
        return None
    return node, int(start), int(end)
