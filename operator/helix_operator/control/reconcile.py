"""Reconcile a HelixCluster's children through the API: plan ConfigMaps, worker pods, front end.

Every function computes objects with the pure builders, then creates, patches or deletes
only what differs, so calling them on every wake-up is cheap and idempotent.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import peers_configmap_name, selector
from helix_operator.api.spec import ClusterSpec
from helix_operator.children.certificates import build_tls_secret, tls_secret_name
from helix_operator.children.frontend import build_frontend_deployment, build_frontend_service, deployment_ready
from helix_operator.children.networkpolicy import build_network_policies
from helix_operator.children.peers import build_peers_configmap, digest, listed_nodes, peer_nodes
from helix_operator.children.planmap import ANNOTATION_INPUTS, build_plan_configmap
from helix_operator.children.rollout import RolloutStep, next_step, pod_view
from helix_operator.children.weights import plan_revision
from helix_operator.children.workers import assignments, build_worker_pod, build_workers_service, template_hash
from helix_operator.control.kube import Kube, Ref, each
from helix_operator.fleet.discovery import Discovery
from helix_operator.planning.inputs import InputsKey
from helix_planner.errors import PlanningError
from helix_planner.plan_format import Plan, load_plan

Owner = Mapping[str, Any]


@dataclass(frozen=True)
class PlanRef:
    """A plan and the ConfigMap that holds it."""

    plan: Plan
    configmap: str
    inputs: InputsKey | None

    @property
    def hash(self) -> str:
        return self.plan.plan_hash


def _ns(owner: Owner) -> str:
    namespace: str = owner["metadata"]["namespace"]
    return namespace


def _owned(owner: Owner, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uid = owner["metadata"]["uid"]
    return [i for i in items if any(r.get("uid") == uid for r in i["metadata"].get("ownerReferences") or [])]


async def save_plan(kube: Kube, owner: Owner, plan: Plan, inputs: InputsKey, *, proposed: bool = False) -> PlanRef:
    configmap = build_plan_configmap(owner, plan, inputs.encode(), proposed=proposed)
    await kube.ensure(configmap)
    return PlanRef(plan, configmap["metadata"]["name"], inputs)


async def load_plan_ref(kube: Kube, owner: Owner, configmap: str | None) -> PlanRef | None:
    """The plan a ConfigMap holds, or None if it is gone or unreadable (then it is replanned)."""
    if not configmap:
        return None
    live = await kube.get(Ref("v1", "configmaps", _ns(owner), configmap))
    if live is None:
        return None
    try:
        plan = load_plan((live.get("data") or {}).get(names.PLAN_KEY, ""))
    except PlanningError:
        return None
    inputs = InputsKey.decode(((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_INPUTS))
    return PlanRef(plan, configmap, inputs)


async def worker_pods(kube: Kube, owner: Owner) -> list[dict[str, Any]]:
    labels = selector(owner["metadata"]["name"], names.COMPONENT_WORKER)
    pods = await kube.list_objects(Ref("v1", "pods", _ns(owner)), labels)
    return _owned(owner, pods)


async def frontend_plans(kube: Kube, owner: Owner) -> set[str]:
    """Plan hashes of the front-end pods that still run, terminating ones included (they may be
    finishing requests); the pods belong to the Deployment's ReplicaSets, so they go by label."""
    labels = selector(owner["metadata"]["name"], names.COMPONENT_FRONTEND)
    pods = await kube.list_objects(Ref("v1", "pods", _ns(owner)), labels)
    return {(p["metadata"].get("labels") or {}).get(names.LABEL_PLAN_HASH, "") for p in pods
            if (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")}


async def sync_workers(kube: Kube, owner: Owner, spec: ClusterSpec, discovery: Discovery, target: PlanRef,
                       active: Plan | None) -> RolloutStep:
    """Take one rollout step towards `target`; `active` is the plan the front end serves."""
    views = [v for pod in await worker_pods(kube, owner) if (v := pod_view(pod)) is not None]
    active_hash = active.plan_hash if active else None
    surge = None if active_hash in (None, target.hash) else spec.rollout.max_surge_nodes
    running = [] if active is None or active_hash == target.hash else \
        [[(s.node, s.start, s.end) for s in pipeline.stages] for pipeline in active.pipelines]
    frontend_current = await frontend_plans(kube, owner) <= {target.hash}
    pipelines = [[stage.node for stage in pipeline.stages] for pipeline in target.plan.pipelines]
    revision = plan_revision(target.plan)
    step = next_step(assignments(target.plan, discovery, spec), views, target.hash, surge,
                     template_hash(spec, revision), frontend_current, pipelines=pipelines,
                     max_replace=spec.rollout.max_surge_nodes, running=running)
    namespace, grace = _ns(owner), spec.rollout.drain_timeout
    peers = await sync_peers(kube, owner, spec, target.plan, frontend_current)
    patches: dict[str, dict[str, Any]] = {}
    for name in step.relabel:
        patches.setdefault(name, {})["labels"] = {names.LABEL_PLAN_HASH: target.hash}
    for view in views:  # a change to a pod makes its kubelet refresh the mounted peer list now
        if view.peers != peers and not view.deleting and view.name not in step.delete:
            patches.setdefault(view.name, {})["annotations"] = {names.ANNOTATION_PEERS: peers}
    pods = [build_worker_pod(owner, spec, a, target.hash, target.configmap, peers_digest=peers, revision=revision)
            for a in step.create]
    await each([kube.create_missing(pod) for pod in pods]
               + [kube.delete(Ref("v1", "pods", namespace, name), grace_seconds=grace) for name in step.delete]
               + [kube.patch(Ref("v1", "pods", namespace, name), {"metadata": patch})
                  for name, patch in patches.items()])
    return step


async def sync_peers(kube: Kube, owner: Owner, spec: ClusterSpec, target: Plan, frontend_current: bool) -> str:
    """Publish the peer list for `target` (see `children.peers`) before any pod is created for
    it; returns the digest of its content."""
    listed: set[str] = set()
    if not frontend_current:  # front ends of older plans run: what the list names stays
        ref = Ref("v1", "configmaps", _ns(owner), peers_configmap_name(owner["metadata"]["name"]))
        listed = listed_nodes(await kube.get(ref))
    nodes = peer_nodes((node.name for node in target.nodes), listed, frontend_current)
    configmap = build_peers_configmap(owner, spec, nodes)
    await kube.ensure(configmap)
    return digest(configmap)


async def stop_workers(kube: Kube, owner: Owner, spec: ClusterSpec) -> None:
    """Delete every worker pod (suspend), each with the drain timeout as grace period."""
    pods = [p for p in await worker_pods(kube, owner) if not p["metadata"].get("deletionTimestamp")]
    grace = spec.rollout.drain_timeout
    await each(kube.delete(Ref("v1", "pods", _ns(owner), p["metadata"]["name"]), grace_seconds=grace) for p in pods)


async def sync_frontend(kube: Kube, owner: Owner, spec: ClusterSpec, active: PlanRef | None,
                        suspended: bool) -> tuple[str, str] | None:
    """Ensure the Deployment and Service; (reason, message) of its readiness, None without a plan."""
    if active is None:
        return None
    replicas = 0 if suspended else None
    live = await kube.ensure(build_frontend_deployment(owner, spec, active.plan, active.configmap, replicas=replicas))
    await kube.ensure(build_frontend_service(owner, spec))
    await kube.ensure(build_workers_service(owner, spec))
    await each(kube.ensure(policy) for policy in build_network_policies(owner, spec))
    ready, message = deployment_ready(live)
    return ("Ready" if ready else "Starting"), message


async def collect_plans(kube: Kube, owner: Owner, keep: set[str]) -> None:
    """Delete plan ConfigMaps no pod mounts and no status names (old and superseded plans)."""
    namespace = _ns(owner)
    mounted = {volume["configMap"]["name"] for pod in await worker_pods(kube, owner)
               for volume in pod["spec"].get("volumes") or [] if "configMap" in volume}
    configmaps = await kube.list_objects(Ref("v1", "configmaps", namespace), selector(owner["metadata"]["name"],
                                                                              names.COMPONENT_PLAN))
    unused = [cm["metadata"]["name"] for cm in _owned(owner, configmaps)]
    await each(kube.delete(Ref("v1", "configmaps", namespace, name)) for name in unused
               if name not in keep and name not in mounted)


async def ensure_tls_secret(kube: Kube, owner: Mapping[str, Any], spec: ClusterSpec) -> None:
    """Issue the cluster's Secret once, when the spec names none and it does not exist yet
    (an issued one is never replaced: pods already trust its CA)."""
    if spec.security.tls_secret:
        return
    namespace, cluster = owner["metadata"]["namespace"], owner["metadata"]["name"]
    if await kube.get(Ref("v1", "secrets", namespace, tls_secret_name(cluster, spec))) is None:
        await kube.create_missing(build_tls_secret(owner, spec))
