"""The NetworkPolicies: workers reachable on the stage ports from their own cluster only, the
front end from clients, each selecting exactly the pods the builders label."""

from typing import Any

from opkit import fleet_spec
from test_manifests import OWNER, PLAN

from helix_operator.api import names
from helix_operator.api.spec import parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.networkpolicy import build_network_policies
from helix_operator.children.workers import Assignment, build_worker_pod

RAW = fleet_spec()
RAW["worker"]["port"] = 9000
RAW["frontend"] = {"service": {"httpPort": 80, "grpcPort": 81}}
SPEC = parse_spec(RAW)
WORKERS, FRONTEND = build_network_policies(OWNER, SPEC)
WORKER_LABELS = build_worker_pod(OWNER, SPEC, Assignment("n", 0, 80), "h", "cm")["metadata"]["labels"]
FRONTEND_LABELS = build_frontend_deployment(OWNER, SPEC, PLAN, "cm")["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= pod_labels.items()


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule["ports"]}


def test_policies_are_owned_and_select_one_component_each() -> None:
    for policy in (WORKERS, FRONTEND):
        assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
        assert policy["metadata"]["namespace"] == "inference"
        assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open: weights downloads and DNS"
    assert WORKERS["metadata"]["name"] == "llama-worker" and FRONTEND["metadata"]["name"] == "llama-frontend"
    assert _selects(WORKERS["spec"]["podSelector"], WORKER_LABELS)
    assert not _selects(WORKERS["spec"]["podSelector"], FRONTEND_LABELS)
    assert _selects(FRONTEND["spec"]["podSelector"], FRONTEND_LABELS)
    assert not _selects(FRONTEND["spec"]["podSelector"], WORKER_LABELS)


def test_workers_take_stage_traffic_from_their_own_cluster_only() -> None:
    stages, health = WORKERS["spec"]["ingress"]
    assert _ports(stages) == {("TCP", 9000), ("TCP", names.WORKER_DATA_PORT)}
    peers = [peer["podSelector"] for peer in stages["from"]]
    assert all(set(peer) == {"podSelector"} for peer in stages["from"]), "no namespaceSelector: same namespace"
    assert any(_selects(peer, FRONTEND_LABELS) for peer in peers)
    assert any(_selects(peer, WORKER_LABELS) for peer in peers)
    other = {**WORKER_LABELS, names.LABEL_CLUSTER: "other"}
    assert not any(_selects(peer, other) for peer in peers), "another HelixCluster's pods are not peers"
    assert "from" not in health and _ports(health) == {("TCP", names.WORKER_HTTP_PORT)}


def test_frontend_takes_client_traffic_on_its_service_ports() -> None:
    clients, = FRONTEND["spec"]["ingress"]
    assert "from" not in clients and _ports(clients) == {("TCP", 80), ("TCP", 81)}


def test_policy_ports_are_the_pods_container_ports() -> None:
    worker = build_worker_pod(OWNER, SPEC, Assignment("n", 0, 80), "h", "cm")["spec"]["containers"][0]
    frontend = build_frontend_deployment(OWNER, SPEC, PLAN, "cm")["spec"]["template"]["spec"]["containers"][0]
    opened = {port for rule in WORKERS["spec"]["ingress"] for _, port in _ports(rule)}
    assert opened == {p["containerPort"] for p in worker["ports"]}
    clients = {port for _, port in _ports(FRONTEND["spec"]["ingress"][0])}
    assert clients == {p["containerPort"] for p in frontend["ports"]}
