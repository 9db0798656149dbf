"""NetworkPolicies that fence a HelixCluster's pods: ingress only where the serving path needs it.

Two objects, one per component, because a policy's rules apply to every pod it selects and
the components reuse port names ("grpc" is a stage on a worker, KServe on the front end):
- workers take the stage gRPC port and the data channel from this cluster's front end and
  workers only, and their health/metrics port (8081: /healthz, /readyz, /metrics) from
  anywhere, for Prometheus;
- the front end takes its HTTP (OpenAI-style API, /metrics the operator reads) and KServe gRPC
  ports from anywhere: the Service decides who reaches them.
Egress stays open (weights downloads, DNS). Kubelet probes come from the node, which most
CNIs let through whatever the policy says; the probes here are TCP checks of the serving ports.
"""

from collections.abc import Mapping
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import child_metadata, dns_name, selector
from helix_operator.api.spec import ClusterSpec


def policy_name(cluster: str, component: str) -> str:
    return dns_name(cluster, component, limit=253)


def build_network_policies(owner: Mapping[str, Any], spec: ClusterSpec) -> list[dict[str, Any]]:
    """The workers' and the front end's policies, owned by the HelixCluster."""
    cluster = owner["metadata"]["name"]
    peers = [{"podSelector": {"matchLabels": selector(cluster, component)}}
             for component in (names.COMPONENT_FRONTEND, names.COMPONENT_WORKER)]
    workers = [{"from": peers, "ports": _tcp(spec.worker.port, names.WORKER_DATA_PORT)},
               {"ports": _tcp(names.WORKER_HTTP_PORT)}]
    frontend = [{"ports": _tcp(spec.frontend.http_port, spec.frontend.grpc_port)}]
    return [_policy(owner, names.COMPONENT_WORKER, workers), _policy(owner, names.COMPONENT_FRONTEND, frontend)]


def _policy(owner: Mapping[str, Any], component: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    cluster = owner["metadata"]["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, policy_name(cluster, component), component),
        "spec": {"podSelector": {"matchLabels": selector(cluster, component)}, "policyTypes": ["Ingress"],
                 "ingress": ingress},
    }


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]
