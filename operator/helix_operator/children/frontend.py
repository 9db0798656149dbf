"""The front end: a Deployment that loads the active plan and routes requests over its
pipelines, and the Service clients call (HTTP OpenAI-style and KServe v2 gRPC).

The pod template names the plan ConfigMap, so switching plans is an ordinary rolling
update that brings new front-end pods up before old ones go (maxUnavailable 0).
"""

from collections.abc import Mapping
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import child_metadata, dns_name, labels, selector
from helix_operator.api.podsecurity import restrict
from helix_operator.api.spec import ClusterSpec
from helix_operator.children.certificates import client_side, cluster_tls_env, cluster_tls_mount, cluster_tls_volume
from helix_operator.children.podtemplate import merge_template
from helix_operator.children.probes import http_probes
from helix_operator.children.weights import plan_revision, weights_source
from helix_operator.children.workers import worker_endpoint
from helix_planner.plan_format import Plan


def frontend_name(cluster: str) -> str:
    return dns_name(cluster, "frontend")


def service_name(cluster: str) -> str:
    return dns_name(cluster)


# A deleted pod leaves its Service's endpoints a moment after it gets SIGTERM (kube-proxy, ingress
# and mesh proxies each learn of it on their own); the front end keeps accepting requests that long.
DRAIN_DELAY_SECONDS = 5


def build_frontend_deployment(owner: Mapping[str, Any], spec: ClusterSpec, plan: Plan, configmap: str,
                              *, replicas: int | None = None) -> dict[str, Any]:
    """`replicas` overrides the spec (zero while suspended); every plan node's worker is an --endpoint."""
    cluster, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    frontend, plan_hash = spec.frontend, plan.plan_hash
    weights = weights_source(spec, frontend.image, None, plan_revision(plan))
    endpoints = [f"--endpoint={n.name}={worker_endpoint(namespace, cluster, n.name, spec.worker.port)}"
                 for n in plan.nodes]
    client_volumes, client_mounts, client_env = client_side(spec)
    container: dict[str, Any] = {
        "name": "frontend",
        "image": frontend.image,
        "imagePullPolicy": spec.worker.image_pull_policy,
        "command": ["helix", "frontend", "--plan", names.PLAN_PATH, "--model", weights.path, "--host", "0.0.0.0",
                    "--http-port", str(frontend.http_port), "--grpc-port", str(frontend.grpc_port), *endpoints],
        "env": [
            {"name": "HELIX_PLAN_HASH", "value": plan_hash},
            {"name": "HELIX_MODEL", "value": spec.model.name},
            {"name": "HELIX_HTTP_PORT", "value": str(frontend.http_port)},
            {"name": "HELIX_GRPC_PORT", "value": str(frontend.grpc_port)},
            {"name": "HELIX_DRAIN_SECONDS", "value": str(spec.rollout.drain_timeout)},
            {"name": "HELIX_DRAIN_DELAY_SECONDS", "value": str(DRAIN_DELAY_SECONDS)},
            {"name": "HELIX_ROUTING", "value": frontend.routing},
            *spec.liveness.env(lease=False), *cluster_tls_env(), *client_env,
        ],
        "ports": [{"name": "http", "containerPort": frontend.http_port},
                  {"name": "grpc", "containerPort": frontend.grpc_port}],
        # Ready once it answers, not once it has pipelines (/readyz): a new plan's front end must be
        # ready before the old one goes (maxUnavailable 0), and that plan's workers may have to wait
        # for the old one to go (they take its workers' nodes). Requests wait for a pipeline meanwhile.
        **http_probes("http", ready_path="/healthz", tls=spec.security.client_tls_secret is not None),
        "volumeMounts": [{"name": "plan", "mountPath": names.PLAN_MOUNT_DIR, "readOnly": True}, *weights.mounts,
                         cluster_tls_mount(), *client_mounts],
    }
    if frontend.resources:
        container["resources"] = dict(frontend.resources)
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.rollout.drain_timeout + DRAIN_DELAY_SECONDS,
        "containers": [container],
        "volumes": [{"name": "plan", "configMap": {"name": configmap}}, *weights.volumes,
                    cluster_tls_volume(cluster, spec), *client_volumes],
    }
    if weights.init_containers:
        pod_spec["initContainers"] = weights.init_containers
    pod_labels = {**labels(cluster, names.COMPONENT_FRONTEND), names.LABEL_PLAN_HASH: plan_hash}
    template = merge_template({"metadata": {"labels": pod_labels}, "spec": pod_spec}, frontend.template)
    template["spec"] = restrict(template["spec"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, frontend_name(cluster), names.COMPONENT_FRONTEND,
                                   labels={names.LABEL_PLAN_HASH: plan_hash}),
        "spec": {
            "replicas": frontend.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector(cluster, names.COMPONENT_FRONTEND)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }


def frontend_url(owner: Mapping[str, Any], spec: ClusterSpec) -> str:
    """The in-cluster address of the Service's OpenAI HTTP port (https when it serves client TLS),
    for status.url and `kubectl get`."""
    scheme = "https" if spec.security.client_tls_secret else "http"
    host = f"{service_name(owner['metadata']['name'])}.{owner['metadata']['namespace']}.svc"
    return f"{scheme}://{host}:{spec.frontend.http_port}"


def build_frontend_service(owner: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Any]:
    cluster = owner["metadata"]["name"]
    frontend = spec.frontend
    extra: dict[str, Any] = {"annotations": dict(frontend.service_annotations)} if frontend.service_annotations else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, service_name(cluster), names.COMPONENT_FRONTEND, **extra),
        "spec": {
            "type": frontend.service_type,
            "selector": selector(cluster, names.COMPONENT_FRONTEND),
            "ports": [
                {"name": "http", "port": frontend.http_port, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": frontend.grpc_port, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def deployment_ready(deployment: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether the front end serves at its desired size and rollout generation, and a reason why not."""
    if deployment is None:
        return False, "the front-end Deployment does not exist yet"
    want = int((deployment.get("spec") or {}).get("replicas", 1))
    status = deployment.get("status") or {}
    ready, updated = int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0)
    if want == 0:
        return False, "the front end is scaled to zero"
    if ready >= want and updated >= want:
        return True, f"{ready}/{want} front-end replicas ready"
    return False, f"{ready}/{want} front-end replicas ready, {updated} updated"
