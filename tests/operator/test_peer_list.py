"""The workers' peer list (`children.peers`): one mutable ConfigMap per cluster, mounted as a
directory into every worker pod, naming the nodes of every plan a front end may still route
over. A replan adds the new plan's nodes for the workers it keeps (no restart), keeps the old
plan's while a front end of it runs, and drops them once none does."""

import json
from pathlib import Path
from typing import Any

import pytest
from opkit import fleet, fleet_spec, helixcluster
from test_manifests import OWNER

from helix_operator.api import names
from helix_operator.api.meta import labels
from helix_operator.api.spec import parse_spec
from helix_operator.children.peers import build_peers_configmap, digest, peer_nodes
from helix_operator.children.workers import Assignment, build_worker_pod
from helix_worker.security.peers import PlanPeers

NS = "inference"
HXC = "helix.dev/v1alpha1/helixclusters"
BASE = f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters"

pytestmark = pytest.mark.timeout(120)


def test_worker_pods_mount_the_peer_list_as_a_directory_and_read_it(tmp_path: Path) -> None:
    spec = parse_spec(fleet_spec())
    pod = build_worker_pod(OWNER, spec, Assignment("a", 0, 40), "h", "cm", peers_digest="d1")
    container = pod["spec"]["containers"][0]
    command = container["command"]
    assert command[command.index("--peers") + 1] == "/var/run/helix/peers/endpoints.json"
    assert not [arg for arg in command if arg.startswith("--endpoint")], "the plan's own list would go stale"
    assert {"name": "peers", "configMap": {"name": "llama-peers"}} in pod["spec"]["volumes"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "peers")
    assert mount == {"name": "peers", "mountPath": "/var/run/helix/peers", "readOnly": True}, \
        "a directory mount without subPath: the kubelet updates it in place"
    assert pod["metadata"]["annotations"][names.ANNOTATION_PEERS] == "d1"

    configmap = build_peers_configmap(OWNER, spec, ["b", "a", "b"])
    assert configmap["metadata"]["name"] == "llama-peers" and "immutable" not in configmap
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert configmap["metadata"]["labels"][names.LABEL_COMPONENT] == "peers", "not a plan: never collected as one"
    listed = json.loads(configmap["data"]["endpoints.json"])
    assert listed == {"a": "w-a.llama-workers.inference.svc:50051", "b": "w-b.llama-workers.inference.svc:50051"}
    assert digest(configmap) != digest(build_peers_configmap(OWNER, spec, ["a"]))
    # What the operator writes is what the worker reads.
    (tmp_path / "endpoints.json").write_text(configmap["data"]["endpoints.json"])
    peers = PlanPeers(peer_list=tmp_path / "endpoints.json")
    assert peers.problem("b", listed["b"]) is None
    assert peers.problem("c", "w-c.llama-workers.inference.svc:50051") is not None


def test_an_older_plans_nodes_stay_while_its_front_ends_run() -> None:
    assert peer_nodes(["a", "b"], ["x", "a"], frontend_current=False) == {"a", "b", "x"}
    assert peer_nodes(["a", "b"], ["x", "a"], frontend_current=True) == {"a", "b"}


def _frontend_pod(plan_hash: str) -> dict[str, Any]:
    """A front-end pod of `plan_hash` as its ReplicaSet would make it (kmock runs no Deployment controller)."""
    pod_labels = {**labels("llama", names.COMPONENT_FRONTEND), names.LABEL_PLAN_HASH: plan_hash}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llama-frontend-old", "namespace": NS,
                                                            "labels": pod_labels},
            "spec": {"containers": [{"name": "frontend", "image": "helix/worker:test"}]}}


async def test_a_replan_extends_the_peer_list_of_kept_workers_without_replacing_them(operator) -> None:
    for item in fleet():
        await operator.request("post", "/api/v1/nodes", item)
    await operator.request("post", BASE, helixcluster("llama", NS, fleet_spec()))

    def status() -> dict[str, Any]:
        return (operator.get(HXC, NS, "llama") or {}).get("status") or {}

    def plan(configmap: str) -> dict[str, Any]:
        return json.loads(operator.get("v1/configmaps", NS, configmap)["data"]["plan.json"])

    def listed() -> dict[str, str]:
        return json.loads(operator.get("v1/configmaps", NS, "llama-peers")["data"]["endpoints.json"])

    def workers() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in operator.live("v1/pods", NS)
                if p["metadata"]["labels"][names.LABEL_COMPONENT] == names.COMPONENT_WORKER
                and not p["metadata"].get("deletionTimestamp")}

    def stamped(pods: dict[str, dict[str, Any]]) -> bool:
        current = digest(operator.get("v1/configmaps", NS, "llama-peers"))
        return all(p["metadata"]["annotations"][names.ANNOTATION_PEERS] == current for p in pods.values())

    def complete() -> bool:
        return status().get("phase") == "Running" and (status().get("rollout") or {}).get("state") == "Complete"

    await operator.eventually(complete, explain=status)
    first = plan(status()["activePlan"]["configMap"])
    first_nodes = {n["name"] for n in first["nodes"]}
    assert set(listed()) == first_nodes and stamped(workers())
    before = {name: pod["metadata"]["uid"] for name, pod in workers().items()}

    # A front end of the first plan is still finishing requests when a node of it goes away.
    await operator.request("post", f"/api/v1/namespaces/{NS}/pods", _frontend_pod(first["planHash"]))
    gone = sorted(first_nodes)[0]
    await operator.request("delete", f"/api/v1/nodes/{gone}")

    def retargeted() -> bool:
        return (status().get("rollout") or {}).get("targetHash") not in (None, first["planHash"])

    await operator.eventually(retargeted, explain=status)
    second = plan(f"llama-plan-{status()['rollout']['targetHash']}")
    second_nodes = {n["name"] for n in second["nodes"]}
    layout = {(n["name"], f"{n['start']}-{n['end']}") for n in second["nodes"]}
    kept = {name for name, pod in workers().items() if name in before and
            (pod["metadata"]["annotations"][names.ANNOTATION_NODE],
             pod["metadata"]["annotations"][names.ANNOTATION_LAYERS]) in layout}
    assert kept and second_nodes - first_nodes, "the replan keeps some workers and brings in new nodes"

    def extended() -> bool:
        pods = workers()
        return set(listed()) == first_nodes | second_nodes and stamped({n: pods[n] for n in kept if n in pods})

    await operator.eventually(extended, explain=lambda: (sorted(listed()), status().get("rollout")))
    assert all(workers()[name]["metadata"]["uid"] == before[name] for name in kept), "kept workers are not replaced"
    assert listed()[sorted(second_nodes - first_nodes)[0]].endswith(".llama-workers.inference.svc:50051")

    # The old front end is gone: the list is the plan in service, and the kept workers are told so.
    await operator.request("delete", f"/api/v1/namespaces/{NS}/pods/llama-frontend-old")

    def shrunk() -> bool:
        return complete() and set(listed()) == second_nodes and stamped(workers())

    await operator.eventually(shrunk, explain=lambda: (sorted(listed()), status().get("rollout")))
    assert all(workers()[name]["metadata"]["uid"] == before[name] for name in kept)
